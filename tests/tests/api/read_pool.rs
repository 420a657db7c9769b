//! API reads have a pool of their own (`API_READ_POOL_SIZE`) whose statements Postgres cancels
//! after `API_READ_TIMEOUT`: a flood of reads that cannot finish never takes the batch
//! writers' connections, so publishing goes on, exactly counted, with the breaker closed.

use super::common::*;
use integration_tests::{eventually, Aggregator, TestEnv};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Concurrent readers in the flood.
const READERS: usize = 40;

/// One reader: GETs `path` until `stop`; returns every status it got.
async fn read_until(agg: Arc<Aggregator>, path: &'static str, stop: Arc<AtomicBool>) -> Vec<u16> {
    let mut statuses = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let resp = agg
            .http()
            .get(format!("{}{path}", agg.base_url()))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_reads_do_not_starve_the_batch_writers() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(
        &env,
        &[("API_READ_POOL_SIZE", "2"), ("API_READ_TIMEOUT", "1s")],
    )
    .await;
    let agg = Arc::new(agg);
    // Every /dead-letters query now waits for the lock until its statement timeout. The
    // batch writers never touch dead_letters for valid events.
    let db = env.db().await;
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE dead_letters IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let path = [
                "/dead-letters",
                "/dead-letters",
                "/events?limit=1000",
                "/stats",
            ][i % 4];
            tokio::spawn(read_until(agg.clone(), path, stop.clone()))
        })
        .collect();
    for b in 0..20 {
        let batch: Vec<Value> = (0..100)
            .map(|i| event("pool.test", &format!("p-{b}-{i}"), &ts(i)))
            .collect();
        publish_ok(&agg, &Value::Array(batch), 100).await;
    }
    // Stored while the flood goes on (read straight from Postgres: /stats is flooded too).
    let e = &env;
    eventually(
        "2000 events stored during the flood",
        PATIENCE,
        || async move { e.event_rows().await == 2000 },
    )
    .await;
    stop.store(true, Ordering::Release);
    for (i, reader) in readers.into_iter().enumerate() {
        let statuses = reader.await.unwrap();
        let allowed: &[u16] = if i % 4 < 2 { &[503] } else { &[200, 503] };
        assert!(
            statuses.iter().all(|s| allowed.contains(s)),
            "reader {i}: {statuses:?}"
        );
    }
    lock.rollback().await.unwrap();

    // No batch write failed for want of a connection: no retry, breaker closed, WAL empty.
    assert_eq!(agg.metric("aggregator_batch_retries_total").await, 0.0);
    assert_eq!(agg.metric("aggregator_batch_failures_total").await, 0.0);
    let (status, health) = agg.health().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["circuit_breaker"], "CLOSED", "{health}");
    assert_eq!(health["wal_record_count"], 0, "{health}");
    let mut agg = Arc::into_inner(agg).unwrap();
    let stats = agg.wait_until_received(2000).await;
    assert_counts(&stats, 2000, 2000, 0);
    let (status, body) = agg.get("/dead-letters").await;
    assert_eq!(status, 200, "{body}");
}
