//! Publishing helpers: the `publisher` binary, raw JetStream publishes and event JSON.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::binaries::publisher_bin;
use crate::env::TestEnv;

const PUBLISHER_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `publisher --nats-url <env nats> --summary json <args...>`, asserts it exits
/// successfully (panics with its stderr otherwise) and returns the JSON summary it
/// prints on stdout. On a secured server it authenticates as the publisher's user.
pub async fn run_publisher(env: &TestEnv, args: &[&str]) -> Value {
    let vars = env
        .nats
        .security()
        .map(|s| s.env_for(crate::secure::PUB_USER))
        .unwrap_or_default();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run_publisher_with(&env.nats.url(), &vars, args).await
}

/// Runs the publisher in the background at a steady `rate` (events/s), 30% duplicates, and
/// returns its `--summary json` (the task panics with stderr if the publisher fails).
pub fn publish_in_background(
    nats_url: &str,
    count: u32,
    rate: u32,
    seed: u32,
) -> tokio::task::JoinHandle<Value> {
    let args = [
        "--count".to_owned(),
        count.to_string(),
        "--duplicate-rate".to_owned(),
        "0.3".to_owned(),
        "--rate".to_owned(),
        rate.to_string(),
        "--seed".to_owned(),
        seed.to_string(),
    ];
    let nats_url = nats_url.to_owned();
    tokio::spawn(async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_publisher_at(&nats_url, &refs).await
    })
}

/// [`run_publisher`] against a NATS URL, for tasks that do not hold the [`TestEnv`].
pub async fn run_publisher_at(nats_url: &str, args: &[&str]) -> Value {
    run_publisher_with(nats_url, &[], args).await
}

/// The NATS connection variables of the publisher, never taken from the test's environment.
const NATS_VARS: [&str; 9] = [
    "NATS_URL",
    "NATS_CREDS",
    "NATS_NKEY",
    "NATS_TOKEN",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TLS_CA",
    "NATS_TLS_CERT",
    "NATS_TLS_KEY",
];

/// Runs `publisher --nats-url <nats_url> --summary json <args...>` with environment `vars`
/// (nothing else of the `NATS_*` variables) and returns its output, whatever its exit.
pub async fn publisher_output(
    nats_url: &str,
    vars: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let bin = publisher_bin().await;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--nats-url")
        .arg(nats_url)
        .arg("--summary")
        .arg("json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in NATS_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(vars.iter().copied());
    crate::util::die_with_parent(cmd.as_std_mut());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    match tokio::time::timeout(PUBLISHER_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("publisher {args:?}: {e}"),
        Err(_) => panic!("publisher {args:?} did not finish within {PUBLISHER_TIMEOUT:?}"),
    }
}

/// [`run_publisher_at`] with environment `vars` (the secured server's `NATS_*` variables).
pub async fn run_publisher_with(nats_url: &str, vars: &[(&str, &str)], args: &[&str]) -> Value {
    let out = publisher_output(nats_url, vars, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "publisher {args:?} failed ({}):\nstderr:\n{}\nstdout:\n{}",
        out.status,
        tail(&stderr, 60),
        tail(&stdout, 20)
    );
    let trimmed = stdout.trim();
    serde_json::from_str::<Value>(trimmed)
        .ok()
        .or_else(|| {
            trimmed
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .and_then(|l| serde_json::from_str(l.trim()).ok())
        })
        .filter(Value::is_object)
        .unwrap_or_else(|| {
            panic!(
                "publisher {args:?}: stdout is not one JSON object:\n{}\nstderr:\n{}",
                tail(&stdout, 20),
                tail(&stderr, 20)
            )
        })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Publishes `payload` to `subject` on JetStream and waits for the stream's PubAck;
/// panics on any error. Returns the ack (stream, sequence, duplicate flag).
pub async fn publish_raw(
    js: &async_nats::jetstream::Context,
    subject: &str,
    payload: Bytes,
) -> async_nats::jetstream::publish::PublishAck {
    js.publish(subject.to_string(), payload)
        .await
        .unwrap_or_else(|e| panic!("publish to {subject}: {e}"))
        .await
        .unwrap_or_else(|e| panic!("PubAck for {subject}: {e}"))
}

/// A valid event JSON: the given topic, event id and source, `timestamp` = now
/// (RFC 3339, milliseconds, `Z`) and payload `{"battery_charge_percent": 50.0}`.
pub fn event_json(topic: &str, event_id: &str, source: &str) -> Bytes {
    let event = serde_json::json!({
        "topic": topic,
        "event_id": event_id,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "source": source,
        "payload": {"battery_charge_percent": 50.0},
    });
    Bytes::from(serde_json::to_vec(&event).expect("serialize event"))
}
