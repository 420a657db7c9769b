//! `aggregator redrive` after a fix: dead letters go through the normal path once.

use super::cases::*;
use super::common::*;
use bytes::Bytes;
use integration_tests::{count, event_json, eventually, int, publish_raw, Aggregator, TestEnv};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_after_a_fix_counts_dead_letters_exactly_once() {
    let env = TestEnv::start().await;
    let mut strict = Aggregator::spawn(&env, &[("MAX_PAYLOAD_BYTES", "100")]).await;
    let js = env.jetstream().await;
    let topic = "redrive.test";
    for i in 0..5 {
        let ev = json!({"topic": topic, "event_id": format!("big-{i}"), "timestamp": TS,
                        "source": "SAT-0001", "payload": {"pad": "p".repeat(500)}});
        publish_raw(&js, &format!("events.{topic}"), Bytes::from(to_bytes(&ev))).await;
    }
    for i in 0..3 {
        publish_raw(
            &js,
            &format!("events.{topic}"),
            event_json(topic, &format!("small-{i}"), "SAT-0002"),
        )
        .await;
    }
    eventually("3 received and 5 dead-lettered", PATIENCE, || async {
        let s = strict.stats().await;
        int(&s, "received") >= 3 && int(&s, "dead_lettered") >= 5
    })
    .await;
    let stats = strict.stats().await;
    assert_eq!(int(&stats, "received"), 3, "{stats}");
    assert_eq!(int(&stats, "dead_lettered"), 5, "{stats}");
    let (_, pending) = all_dead_letters(&strict, 100, "", None).await;
    assert_eq!(pending.len(), 5);
    for d in &pending {
        assert!(
            d["reason"].as_str().unwrap().contains("payload"),
            "reason names the payload: {d}"
        );
    }
    assert!(strict.terminate().await.success(), "SIGTERM exits 0");
    drop(strict);

    // The fix: the default limit (64 KiB).
    let mut agg = Aggregator::spawn(&env, &[]).await;
    assert_eq!(env.stream_messages().await, 8);

    // A dry run lists them and changes nothing.
    let out = redrive(&env, &["--dry-run"]).await;
    assert_eq!(out.matches("would redrive").count(), 5, "{out}");
    assert_eq!(env.stream_messages().await, 8, "dry run publishes nothing");
    let (_, still) = all_dead_letters(&agg, 100, "", None).await;
    assert_eq!(still.len(), 5, "dry run marks nothing");

    let out = redrive(&env, &[]).await;
    assert!(out.contains("redriven: 5"), "{out}");
    assert_eq!(env.stream_messages().await, 13);
    let stats = agg.wait_until_received(8).await;
    assert_eq!(int(&stats, "received"), 8, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), 8, "{stats}");
    assert_eq!(int(&stats, "duplicate_dropped"), 0, "{stats}");
    assert_eq!(int(&stats, "dead_lettered"), 5, "history is kept: {stats}");
    let db = env.db().await;
    assert_eq!(count(&db, "SELECT count(*) FROM events").await, 8);
    assert_eq!(
        count(&db, "SELECT count(*) FROM events WHERE event_id LIKE 'big-%' AND length(payload::text) > 500").await,
        5,
        "the redriven events are stored whole"
    );

    let (status, body) = agg.get("/dead-letters").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dead_letters"], json!([]), "none pending: {body}");
    assert!(body["next"].is_null(), "{body}");
    let (_, all) = all_dead_letters(&agg, 100, "&include_redriven=true", None).await;
    assert_eq!(all.len(), 5);
    for d in &all {
        let at = d["redriven_at"]
            .as_str()
            .unwrap_or_else(|| panic!("redriven_at set: {d}"));
        chrono::DateTime::parse_from_rfc3339(at).unwrap();
    }

    // Again: nothing to do, nothing published, counts unchanged.
    let out = redrive(&env, &[]).await;
    assert!(!out.contains("redrove"), "{out}");
    assert_eq!(env.stream_messages().await, 13);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = agg.stats().await;
    assert_eq!(int(&stats, "received"), 8, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), 8, "{stats}");
    assert_eq!(int(&stats, "dead_lettered"), 5, "{stats}");
    let info = consumer_info(&env).await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
}
