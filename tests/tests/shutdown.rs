//! Probes and shutdown: `/ready` names what keeps a replica from taking traffic (NATS, a
//! database that is down while the WAL is full, draining), and SIGTERM drains the pipeline
//! while the HTTP API keeps answering; a second signal or `SHUTDOWN_TIMEOUT` cuts the drain
//! short without losing anything.
//!
//! A drain is made to last with the `hold-writes:PATH` failpoint: batches wait before their
//! write while the file exists, and Postgres keeps answering the API meanwhile.

use integration_tests::{
    assert_counts, event_json, eventually, int, run_publisher, Aggregator, TestEnv,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Outages play out in seconds.
const FAST: &[(&str, &str)] = integration_tests::FAST_FAULTS;

/// `GET path` over a connection of its own (a client without a pool), so an answer proves
/// the listener still accepts. Panics when the request fails (connection refused...).
async fn fresh_get(agg: &Aggregator, path: &str) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = client
        .get(format!("{}{path}", agg.base_url()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} over a new connection: {e}\n{}", agg.log_tail()));
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn wait_ready_body(agg: &Aggregator, code: u16, body: Value) {
    eventually(
        &format!("/ready answers {code} {body}"),
        Duration::from_secs(60),
        || async { fresh_get(agg, "/ready").await == (code, body.clone()) },
    )
    .await;
}

fn not_ready(reasons: &[&str]) -> Value {
    json!({ "ready": false, "reasons": reasons })
}

async fn wait_log(agg: &Aggregator, needle: &str) {
    eventually(
        &format!("log line {needle:?}"),
        Duration::from_secs(60),
        || async { log_text(agg).contains(needle) },
    )
    .await;
}

fn log_text(agg: &Aggregator) -> String {
    std::fs::read_to_string(agg.log_path()).unwrap_or_default()
}

/// The hold file (created) and the failpoint naming it.
fn hold_writes(env: &TestEnv) -> (PathBuf, String) {
    let hold = env.work_dir().join("hold-writes");
    std::fs::write(&hold, b"").unwrap();
    let spec = format!("hold-writes:{}", hold.display());
    (hold, spec)
}

fn release(hold: &Path) {
    std::fs::remove_file(hold).unwrap();
}

/// 300 events, 30% duplicates; returns (unique, duplicates).
async fn publish_300(env: &TestEnv, seed: &str) -> (i64, i64) {
    let summary = run_publisher(
        env,
        &["--count", "300", "--duplicate-rate", "0.3", "--seed", seed],
    )
    .await;
    assert_eq!(int(&summary, "published"), 300, "{summary}");
    (int(&summary, "unique"), int(&summary, "duplicates"))
}

/// Starts again without holding writes and checks every event is counted exactly once.
async fn restart_and_assert_counts(agg: &mut Aggregator, received: i64, unique: i64, dups: i64) {
    agg.restart().await;
    let stats = agg.wait_until_received(received).await;
    assert_counts(&stats, received, unique, dups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_keeps_the_api_answering_until_the_pipeline_has_drained() {
    let env = TestEnv::start().await;
    let (hold, spec) = hold_writes(&env);
    let mut agg = Aggregator::spawn(&env, &[("AGGREGATOR_FAILPOINT", &spec)]).await;
    let (unique, dups) = publish_300(&env, "81").await;
    wait_log(&agg, "failpoint hold-writes: holding a batch").await;

    agg.signal(Signal::SIGTERM).unwrap();
    wait_ready_body(&agg, 503, not_ready(&["draining"])).await;
    // Everything else answers as usual, over new connections: a load balancer sees "not
    // ready", never "connection refused".
    for path in ["/live", "/health", "/stats", "/metrics"] {
        let (code, body) = fresh_get(&agg, path).await;
        assert_eq!(code, 200, "GET {path} while draining: {body}");
    }
    // A publish goes to JetStream, not to this process's buffers: accepted while draining.
    let event: Value = serde_json::from_slice(&event_json(
        "telemetry.satellite.status",
        "published-while-draining",
        "SAT-0001",
    ))
    .unwrap();
    let (code, body) = agg.post_json("/publish", &event).await;
    assert_eq!(
        (code, body),
        (202, json!({"status": "accepted", "accepted": 1}))
    );
    assert!(agg.is_running(), "still draining\n{}", agg.log_tail());

    release(&hold);
    let status = agg.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", agg.log_tail());
    let log = log_text(&agg);
    assert!(
        log.contains("pipeline drained; closing the HTTP API"),
        "{log}"
    );
    restart_and_assert_counts(&mut agg, 301, unique + 1, dups).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_loses_nothing() {
    let env = TestEnv::start().await;
    let (hold, spec) = hold_writes(&env);
    // What the process held unacknowledged comes back after ACK_WAIT: keep it short.
    let vars = [("AGGREGATOR_FAILPOINT", spec.as_str()), ("ACK_WAIT", "3s")];
    let mut agg = Aggregator::spawn(&env, &vars).await;
    let (unique, dups) = publish_300(&env, "82").await;
    wait_log(&agg, "failpoint hold-writes: holding a batch").await;

    agg.signal(Signal::SIGTERM).unwrap();
    // The first signal is handled (two close together could be delivered as one).
    wait_ready_body(&agg, 503, not_ready(&["draining"])).await;
    agg.signal(Signal::SIGINT).unwrap();
    let status = agg.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{}", agg.log_tail());
    let log = log_text(&agg);
    assert!(log.contains("second signal (SIGINT) received"), "{log}");
    assert!(log.contains("drain cut short by a second signal"), "{log}");

    release(&hold);
    restart_and_assert_counts(&mut agg, 300, unique, dups).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_bounds_a_hung_drain() {
    let env = TestEnv::start().await;
    let (hold, spec) = hold_writes(&env);
    let vars = [
        ("AGGREGATOR_FAILPOINT", spec.as_str()),
        ("ACK_WAIT", "3s"),
        ("SHUTDOWN_TIMEOUT", "2s"),
    ];
    let mut agg = Aggregator::spawn(&env, &vars).await;
    let (unique, dups) = publish_300(&env, "83").await;
    wait_log(&agg, "failpoint hold-writes: holding a batch").await;

    agg.signal(Signal::SIGTERM).unwrap();
    // The held batch never finishes: the process gives the drain up by itself.
    let status = agg.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{}", agg.log_tail());
    let log = log_text(&agg);
    assert!(
        log.contains("drain cut short by SHUTDOWN_TIMEOUT (2s)"),
        "{log}"
    );

    release(&hold);
    restart_and_assert_counts(&mut agg, 300, unique, dups).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_nats_connection() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, FAST).await;
    assert_eq!(
        fresh_get(&agg, "/ready").await,
        (200, json!({"ready": true}))
    );

    env.nats.stop().await;
    wait_ready_body(&agg, 503, not_ready(&["nats disconnected"])).await;
    assert_eq!(
        fresh_get(&agg, "/live").await,
        (200, json!({"status": "alive"}))
    );

    env.nats.restart().await;
    wait_ready_body(&agg, 200, json!({"ready": true})).await;
    let (unique, dups) = publish_300(&env, "84").await;
    let stats = agg.wait_until_received(300).await;
    assert_counts(&stats, 300, unique, dups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_while_postgres_is_down_and_the_wal_takes_the_batches() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, FAST).await;
    env.pg.stop();
    let (unique, dups) = publish_300(&env, "85").await;
    eventually("all 300 in the WAL", Duration::from_secs(60), || async {
        agg.health().await.1["wal_record_count"] == 300
    })
    .await;
    let (_, health) = agg.health().await;
    assert_eq!(health["database_status"], "down", "{health}");
    assert_ne!(health["circuit_breaker"], "CLOSED", "{health}");
    // The WAL takes what the database cannot: still able to take traffic.
    assert_eq!(
        fresh_get(&agg, "/ready").await,
        (200, json!({"ready": true}))
    );

    env.pg.start().await;
    let stats = agg.wait_until_received(300).await;
    assert_counts(&stats, 300, unique, dups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_wal_while_postgres_is_down_is_not_ready() {
    let mut env = TestEnv::start().await;
    // Room for a hundred-odd records of at most 1 KiB (as in faults.rs).
    let mut vars = FAST.to_vec();
    vars.extend([
        ("WAL_MAX_SIZE", "60000"),
        ("BATCH_SIZE", "1"),
        ("MAX_PAYLOAD_BYTES", "1024"),
    ]);
    let mut agg = Aggregator::spawn(&env, &vars).await;
    env.pg.stop();
    let (unique, dups) = publish_300(&env, "86").await;
    wait_ready_body(&agg, 503, not_ready(&["database unreachable and WAL full"])).await;

    env.pg.start().await;
    wait_ready_body(&agg, 200, json!({"ready": true})).await;
    let stats = agg.wait_until_received(300).await;
    assert_counts(&stats, 300, unique, dups);
}
