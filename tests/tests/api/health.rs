//! `GET /health` and `GET /stats`.

use super::common::*;
use integration_tests::{eventually, Aggregator, TestEnv};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_healthy_with_everything_up() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[]).await;
    let (status, body) = agg.health().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["database_status"], "up", "{body}");
    assert_eq!(body["nats_status"], "up", "{body}");
    assert_eq!(body["circuit_breaker"], "CLOSED", "{body}");
    for field in [
        "timestamp",
        "wal_size_bytes",
        "wal_record_count",
        "buffer_size",
    ] {
        assert!(body.get(field).is_some(), "{field} missing: {body}");
    }
    instant(body["timestamp"].as_str().expect("timestamp string"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_while_postgres_is_down() {
    let mut env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[]).await;
    assert_eq!(agg.health().await.0, 200);

    env.pg.stop();
    let a = &agg;
    eventually(
        "GET /health -> 503 database down",
        PATIENCE,
        || async move {
            let (status, body) = a.health().await;
            status == 503 && body["database_status"] == "down"
        },
    )
    .await;
    let (status, body) = agg.health().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["database_status"], "down", "{body}");
    assert_eq!(body["nats_status"], "up", "{body}");

    env.pg.start().await;
    eventually("GET /health -> 200 again", PATIENCE, || async move {
        let (status, body) = a.health().await;
        status == 200 && body["status"] == "healthy" && body["database_status"] == "up"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_start_at_zero_with_no_topics() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[]).await;
    let stats = agg.stats().await;
    assert_counts(&stats, 0, 0, 0);
    assert_eq!(stats["topics"], json!([]), "{stats}");
    assert_eq!(int(&stats, "consumer_pending"), 0, "{stats}");
    assert_eq!(int(&stats, "buffer_size"), 0, "{stats}");
    assert_eq!(int(&stats, "wal_record_count"), 0, "{stats}");
    assert!(stats["uptime_seconds"].as_f64().unwrap() >= 0.0, "{stats}");
    assert_eq!(stats["circuit_breaker"], "CLOSED", "{stats}");
    assert_eq!(stats["status"], "healthy", "{stats}");

    let (events, next) = events_page(&agg, &[]).await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(next, None);
}
