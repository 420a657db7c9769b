//! RETENTION: old events and dead letters are deleted in small batches, counters stay, and
//! the dedup horizon equals the retention.

use integration_tests::{event_json, eventually, publish_raw, Aggregator, TestEnv};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_rows_and_the_dedup_horizon_follows_it() {
    let env = TestEnv::start().await;
    let mut agg =
        Aggregator::spawn(&env, &[("RETENTION", "2s"), ("COMPACT_INTERVAL", "300ms")]).await;
    let js = env.jetstream().await;
    for i in 0..50 {
        publish_raw(
            &js,
            "events.a.b",
            event_json("a.b", &format!("e-{i}"), "SAT-0001"),
        )
        .await;
    }
    publish_raw(&js, "events.a.b", bytes::Bytes::from_static(b"not json")).await;
    let stats = agg.wait_until_received(50).await;
    assert_eq!(stats["unique_processed"], 50);

    let db = env.db().await;
    eventually(
        "old events and dead letters deleted",
        Duration::from_secs(60),
        || async {
            integration_tests::count(&db, "SELECT count(*) FROM events").await == 0
                && integration_tests::count(&db, "SELECT count(*) FROM dead_letters").await == 0
        },
    )
    .await;
    // Counters are totals of what was received: retention does not change them.
    let stats = agg.stats().await;
    assert_eq!(stats["received"], 50);
    assert_eq!(stats["unique_processed"], 50);
    assert_eq!(stats["dead_lettered"], 1);

    // Past the retention, a copy of an old event is new again (dedup horizon = retention),
    // while a copy of a recent one is still a duplicate.
    publish_raw(&js, "events.a.b", event_json("a.b", "e-0", "SAT-0001")).await;
    publish_raw(&js, "events.a.b", event_json("a.b", "e-0", "SAT-0001")).await;
    let stats = agg.wait_until_received(52).await;
    assert_eq!(stats["received"], 52);
    assert_eq!(stats["unique_processed"], 51);
    assert_eq!(stats["duplicate_dropped"], 1);
}
