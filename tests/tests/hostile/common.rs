//! Helpers the hostile-input suites share: consumer and dead-letter reads, the aggregator
//! run as a command, redrive.

use async_nats::jetstream;
use integration_tests::{aggregator_bin, Aggregator, TestEnv};
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

/// Safety net for waits (never an assertion on timing).
pub(crate) const PATIENCE: Duration = Duration::from_secs(90);

/// A fixed, valid RFC 3339 timestamp.
pub(crate) const TS: &str = "2026-11-23T10:30:45.123Z";

/// Raw bytes of a dead letter kept for inspection (aggregator's `MAX_DEAD_LETTER_BYTES`).
pub(crate) const DEAD_LETTER_KEEP: usize = 8 * 1024;

/// The durable consumer's info (`num_pending`, `num_ack_pending`, `num_redelivered`).
pub(crate) async fn consumer_info(env: &TestEnv) -> jetstream::consumer::Info {
    let js = env.jetstream().await;
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("aggregator", "EVENTS")
        .await
        .unwrap();
    consumer.info().await.unwrap().clone()
}

/// `GET <path>` with an optional bearer token → (status, body as JSON or `Value::String`).
pub(crate) async fn get_with_token(
    agg: &Aggregator,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = agg.http().get(format!("{}{path}", agg.base_url()));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", agg.log_tail()));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Standard base64 (with padding), decoded strictly.
pub(crate) fn base64_decode(s: &str) -> Vec<u8> {
    assert!(
        s.len().is_multiple_of(4),
        "base64 length {} is not padded",
        s.len()
    );
    let val = |c: u8| -> u32 {
        u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not a base64 character: {c:?} in {s:?}"),
        })
    };
    let data: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// Every page of `GET /dead-letters` (with `extra` params) at `limit`, following `next`.
/// Returns the page sizes and all items in order.
pub(crate) async fn all_dead_letters(
    agg: &Aggregator,
    limit: usize,
    extra: &str,
    token: Option<&str>,
) -> (Vec<usize>, Vec<Value>) {
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/dead-letters?limit={limit}{extra}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (status, body) = get_with_token(agg, &path, token).await;
        assert_eq!(status, 200, "GET {path} -> {status} {body}");
        assert!(
            body.as_object().is_some_and(|o| o.contains_key("next")),
            "next missing: {body}"
        );
        let items = body["dead_letters"]
            .as_array()
            .unwrap_or_else(|| panic!("dead_letters missing: {body}"))
            .clone();
        assert!(items.len() <= limit, "page larger than limit {limit}");
        sizes.push(items.len());
        all.extend(items);
        assert!(sizes.len() < 10_000, "pagination does not end");
        match &body["next"] {
            Value::Null => return (sizes, all),
            Value::String(s) => after = Some(s.clone()),
            other => panic!("next is neither a string nor null: {other}"),
        }
    }
}

/// Runs the aggregator binary with `args`, env cleared but PATH, plus `vars`; waits up to
/// `timeout` (then kills it). Returns (exit status, stdout, stderr).
pub(crate) async fn run_aggregator_cmd(
    args: &[&str],
    vars: &[(&str, &str)],
    timeout: Duration,
) -> (std::process::ExitStatus, String, String) {
    let bin = aggregator_bin().await;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("aggregator {args:?} {vars:?}: {e}"),
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => panic!("aggregator {args:?} {vars:?} did not exit within {timeout:?}"),
    }
}

/// `aggregator redrive <args>` against the env; asserts exit 0; returns stdout.
pub(crate) async fn redrive(env: &TestEnv, args: &[&str]) -> String {
    let mut all = vec!["redrive"];
    all.extend_from_slice(args);
    let (nats, db) = (env.nats_url(), env.database_url());
    let (status, stdout, stderr) = run_aggregator_cmd(
        &all,
        &[
            ("NATS_URL", nats.as_str()),
            ("DATABASE_URL", db.as_str()),
            ("RUST_LOG", "warn"),
        ],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        status.success(),
        "aggregator {all:?} -> {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}
