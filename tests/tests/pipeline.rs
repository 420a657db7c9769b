//! Core pipeline: publisher -> JetStream -> worker pool -> Postgres, idempotent, with exact
//! counts. Every test runs the real binaries against private NATS and Postgres instances.

use async_nats::jetstream;
use integration_tests::{
    assert_consistent, create_stream, event_json, int, metric_sum, publish_raw, run_publisher,
    Aggregator, TestEnv,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_with_thirty_percent_duplicates_are_counted_exactly() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;

    let summary = run_publisher(
        &env,
        &[
            "--count",
            "20000",
            "--duplicate-rate",
            "0.3",
            "--topics",
            "10",
            "--seed",
            "42",
        ],
    )
    .await;
    assert_eq!(int(&summary, "published"), 20_000);
    assert_eq!(int(&summary, "unique"), 14_000);
    assert_eq!(int(&summary, "duplicates"), 6_000);
    assert_eq!(int(&summary, "failed"), 0);

    let stats = agg.wait_until_received(20_000).await;
    assert_eq!(int(&stats, "received"), 20_000);
    assert_eq!(int(&stats, "unique_processed"), 14_000);
    assert_eq!(int(&stats, "duplicate_dropped"), 6_000);
    assert_eq!(int(&stats, "dead_lettered"), 0);
    assert!((stats["duplicate_rate"].as_f64().unwrap() - 0.3).abs() < 1e-9);
    assert_eq!(stats["topics"].as_array().unwrap().len(), 10);
    assert_consistent(&stats);
    assert_eq!(env.event_rows().await, 14_000);

    let js = env.jetstream().await;
    let info = js.get_stream("EVENTS").await.unwrap().cached_info().clone();
    assert_eq!(info.state.messages, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_id_on_different_topics_is_stored_once_per_topic() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let js = env.jetstream().await;
    for topic in ["telemetry.satellite.status", "power.battery.reading"] {
        publish_raw(
            &js,
            &format!("events.{topic}"),
            event_json(topic, "shared-id-1", "SAT-0001"),
        )
        .await;
    }
    // And the same pair again on the first topic: a true duplicate.
    publish_raw(
        &js,
        "events.telemetry.satellite.status",
        event_json("telemetry.satellite.status", "shared-id-1", "SAT-0002"),
    )
    .await;

    let stats = agg.wait_until_received(3).await;
    assert_eq!(int(&stats, "received"), 3);
    assert_eq!(int(&stats, "unique_processed"), 2);
    assert_eq!(int(&stats, "duplicate_dropped"), 1);
    assert_consistent(&stats);
    let db = env.db().await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT topic, source FROM events WHERE event_id = 'shared-id-1' ORDER BY topic",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("power.battery.reading".to_owned(), "SAT-0001".to_owned()),
            // The first copy wins; the duplicate changed nothing.
            (
                "telemetry.satellite.status".to_owned(),
                "SAT-0001".to_owned()
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_inside_one_batch_are_counted_once() {
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    create_stream(&js).await;
    // 10 copies of one event interleaved with 5 distinct others, all waiting in the stream
    // before the aggregator starts.
    for i in 0..15 {
        let id = if i % 3 != 2 {
            "dup".to_owned()
        } else {
            format!("other-{i}")
        };
        publish_raw(&js, "events.a.b.c", event_json("a.b.c", &id, "SAT-0001")).await;
    }
    let mut agg = Aggregator::spawn(
        &env,
        &[
            ("WORKERS", "1"),
            ("BATCH_SIZE", "500"),
            ("BATCH_TIMEOUT", "2s"),
        ],
    )
    .await;
    let stats = agg.wait_until_received(15).await;
    assert_eq!(int(&stats, "received"), 15);
    assert_eq!(int(&stats, "unique_processed"), 6);
    assert_eq!(int(&stats, "duplicate_dropped"), 9);
    let metrics = agg.metrics_text().await;
    assert_eq!(
        metric_sum(&metrics, "aggregator_batch_size_count"),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric_sum(&metrics, "aggregator_batch_size_sum"), 15.0);
    assert_eq!(env.event_rows().await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_publishers_of_one_event_yield_one_unique() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = env.nats_url();
        tasks.push(tokio::spawn(async move {
            let client = async_nats::connect(url).await.unwrap();
            let js = jetstream::new(client);
            let body = event_json(
                "telemetry.satellite.status",
                "same-event",
                &format!("SAT-{i:04}"),
            );
            publish_raw(&js, "events.telemetry.satellite.status", body).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = agg.wait_until_received(10).await;
    assert_eq!(int(&stats, "received"), 10);
    assert_eq!(int(&stats, "unique_processed"), 1);
    assert_eq!(int(&stats, "duplicate_dropped"), 9);
    assert_eq!(env.event_rows().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_under_load_keeps_counts_exact() {
    let env = TestEnv::start().await;
    // Messages the server had already sent to the stopped process but it never received come
    // back after ACK_WAIT; keep that short so the test does not wait the default 30 s.
    let mut agg = Aggregator::spawn(&env, &[("ACK_WAIT", "3s")]).await;
    // Publish at a steady rate and stop the aggregator gracefully in the middle.
    let publisher = {
        let args = [
            "--count",
            "6000",
            "--duplicate-rate",
            "0.25",
            "--rate",
            "3000",
            "--seed",
            "7",
        ];
        let env_ref = &env;
        async move { run_publisher(env_ref, &args).await }
    };
    let restart = async {
        integration_tests::eventually(
            "some events counted",
            std::time::Duration::from_secs(60),
            || async { int(&agg.stats().await, "received") >= 1000 },
        )
        .await;
        let status = agg.terminate().await;
        assert!(
            status.success(),
            "graceful shutdown must exit 0: {status:?}"
        );
        let stopped = agg_stats_from_db(&env).await;
        agg.restart().await;
        stopped
    };
    let (summary, stopped_at) = tokio::join!(publisher, restart);
    assert_eq!(int(&summary, "published"), 6000);
    assert_eq!(int(&summary, "duplicates"), 1500);
    // Counts survived the restart (durable), and nothing was counted twice afterwards.
    assert!(stopped_at >= 1000);
    let stats = agg.wait_until_received(6000).await;
    assert_eq!(int(&stats, "received"), 6000);
    assert_eq!(int(&stats, "unique_processed"), 4500);
    assert_eq!(int(&stats, "duplicate_dropped"), 1500);
    assert_eq!(int(&stats, "dead_lettered"), 0);
    assert_consistent(&stats);
    assert_eq!(env.event_rows().await, 4500);
}

async fn agg_stats_from_db(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(received), 0)::bigint FROM topic_counters")
        .fetch_one(&env.db().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_redelivered_after_crash_between_commit_and_ack_is_counted_once() {
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    create_stream(&js).await;
    let summary = run_publisher(
        &env,
        &["--count", "3000", "--duplicate-rate", "0.3", "--seed", "11"],
    )
    .await;
    assert_eq!(int(&summary, "published"), 3000);

    // The first aggregator commits one batch and aborts before acknowledging it.
    let mut crashing = Aggregator::spawn_no_wait(
        &env,
        &[
            ("AGGREGATOR_FAILPOINT", "abort-after-commit:1"),
            ("WORKERS", "1"),
            ("ACK_WAIT", "2s"),
        ],
    )
    .await;
    let status = crashing.wait_exit().await;
    assert!(!status.success(), "the failpoint must abort the process");
    let committed = agg_stats_from_db(&env).await;
    assert!(
        committed > 0 && committed <= 500,
        "one batch committed: {committed}"
    );
    drop(crashing);

    // The restarted aggregator gets the unacknowledged batch again and must skip it.
    let mut agg = Aggregator::spawn(&env, &[("ACK_WAIT", "2s")]).await;
    let stats = agg.wait_until_received(3000).await;
    assert_eq!(int(&stats, "received"), 3000);
    assert_eq!(int(&stats, "unique_processed"), 2100);
    assert_eq!(int(&stats, "duplicate_dropped"), 900);
    assert_eq!(env.event_rows().await, 2100);
    let metrics = agg.metrics_text().await;
    assert_eq!(
        metric_sum(&metrics, "aggregator_redelivered_skipped_total"),
        committed as f64,
        "every message of the committed batch was redelivered and skipped\n{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "aggregator_events_received_total"),
        (3000 - committed) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_stream_does_not_confuse_the_processed_record() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    run_publisher(
        &env,
        &["--count", "500", "--duplicate-rate", "0", "--seed", "1"],
    )
    .await;
    agg.wait_until_received(500).await;
    assert!(agg.terminate().await.success());

    // Deleting and re-creating the stream restarts its sequence numbers at 1.
    let js = env.jetstream().await;
    js.delete_stream("EVENTS").await.unwrap();
    agg.restart().await;
    run_publisher(
        &env,
        &["--count", "300", "--duplicate-rate", "0", "--seed", "2"],
    )
    .await;
    let stats = agg.wait_until_received(800).await;
    assert_eq!(int(&stats, "received"), 800);
    assert_eq!(int(&stats, "unique_processed"), 800);
    assert_eq!(int(&stats, "duplicate_dropped"), 0);
    let db = env.db().await;
    assert_eq!(
        integration_tests::count(&db, "SELECT count(*) FROM events").await,
        800
    );
    let incarnations: i64 = sqlx::query_scalar("SELECT count(*) FROM streams")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(incarnations, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_consumer_stay_exact() {
    let env = TestEnv::start().await;
    let (mut a, b) = tokio::join!(
        Aggregator::spawn(&env, &[("WORKERS", "2")]),
        Aggregator::spawn(&env, &[("WORKERS", "2")])
    );
    let summary = run_publisher(
        &env,
        &["--count", "20000", "--duplicate-rate", "0.3", "--seed", "5"],
    )
    .await;
    assert_eq!(int(&summary, "unique"), 14_000);
    let stats = a.wait_until_received(20_000).await;
    assert_eq!(int(&stats, "received"), 20_000);
    assert_eq!(int(&stats, "unique_processed"), 14_000);
    assert_eq!(int(&stats, "duplicate_dropped"), 6_000);
    assert_eq!(b.stats().await["received"], stats["received"]);
    assert_eq!(env.event_rows().await, 14_000);
    // Both replicas took part, and between them counted each message exactly once.
    let (ma, mb) = (a.metrics_text().await, b.metrics_text().await);
    let (ra, rb) = (
        metric_sum(&ma, "aggregator_events_received_total"),
        metric_sum(&mb, "aggregator_events_received_total"),
    );
    assert!(ra > 0.0 && rb > 0.0, "both replicas consumed: {ra} {rb}");
    assert_eq!(ra + rb, 20_000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_record_is_compacted_and_still_rejects_redelivery() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("COMPACT_INTERVAL", "200ms")]).await;
    run_publisher(
        &env,
        &["--count", "2000", "--duplicate-rate", "0.1", "--seed", "3"],
    )
    .await;
    agg.wait_until_received(2000).await;
    integration_tests::wait_compacted(&env.db().await, 2000).await;
    assert!(agg.terminate().await.success());

    // A consumer re-created from scratch redelivers the whole stream: below the floor,
    // every message is recognised as already counted.
    let js = env.jetstream().await;
    js.get_stream("EVENTS")
        .await
        .unwrap()
        .delete_consumer("aggregator")
        .await
        .unwrap();
    agg.restart().await;
    run_publisher(
        &env,
        &["--count", "100", "--duplicate-rate", "0", "--seed", "4"],
    )
    .await;
    let stats = agg.wait_until_received(2100).await;
    assert_eq!(int(&stats, "received"), 2100);
    assert_eq!(int(&stats, "unique_processed"), 1900);
    assert_eq!(int(&stats, "duplicate_dropped"), 200);
    // Redelivered batches may still be settling after the new ones committed.
    agg.wait_metric("aggregator_redelivered_skipped_total", 2000.0)
        .await;
    let stats = agg.stats().await;
    assert_eq!(int(&stats, "received"), 2100);
}

/// Rewrites the creation time a nats-server keeps for stream `name` in its store (the stream's
/// `meta.inf`, and `meta.sum`: HighwayHash-64 keyed by the SHA-256 of the stream name, which
/// the server checks before loading the stream). The server must be stopped.
fn rewrite_created(store_dir: &std::path::Path, name: &str, created: &str) {
    use highway::{HighwayHash, HighwayHasher, Key};
    use sha2::Digest;
    let dir = store_dir
        .join("jetstream")
        .join("$G")
        .join("streams")
        .join(name);
    let meta_path = dir.join("meta.inf");
    let mut meta: Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["Created"] = Value::String(created.to_owned());
    let bytes = serde_json::to_vec(&meta).unwrap();
    let digest = sha2::Sha256::digest(name.as_bytes());
    let mut key = [0u64; 4];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u64::from_le_bytes(digest[i * 8..i * 8 + 8].try_into().unwrap());
    }
    let mut hasher = HighwayHasher::new(Key(key));
    hasher.append(&bytes);
    let sum: String = hasher
        .finalize64()
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(&meta_path, &bytes).unwrap();
    std::fs::write(dir.join("meta.sum"), sum).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_identity_does_not_depend_on_the_creation_time_the_server_reports() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    run_publisher(
        &env,
        &["--count", "500", "--duplicate-rate", "0.2", "--seed", "7"],
    )
    .await;
    agg.wait_until_received(500).await;
    assert!(agg.terminate().await.success());

    // The same stream, its sequences carrying on, reported with another creation time (as
    // another node of a cluster, a restore or an idempotent re-create may report it).
    env.nats.stop().await;
    rewrite_created(&env.nats.store_dir(), "EVENTS", "2020-01-01T00:00:00Z");
    env.nats.restart().await;
    let js = env.jetstream().await;
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.created.year(), 2020, "the server reports the new time");
    assert_eq!(info.state.last_sequence, 500);

    // Everything is delivered again (the consumer is reset), then 100 new events.
    stream.delete_consumer("aggregator").await.unwrap();
    agg.restart().await;
    run_publisher(
        &env,
        &["--count", "100", "--duplicate-rate", "0", "--seed", "8"],
    )
    .await;
    let stats = agg.wait_until_received(600).await;
    agg.wait_metric("aggregator_redelivered_skipped_total", 500.0)
        .await;
    let stats_after = agg.stats().await;
    assert_eq!(
        int(&stats_after, "received"),
        600,
        "{stats_after} (was {stats})"
    );
    assert_eq!(int(&stats_after, "unique_processed"), 500, "{stats_after}");
    let incarnations: i64 = sqlx::query_scalar("SELECT count(*) FROM streams")
        .fetch_one(&env.db().await)
        .await
        .unwrap();
    assert_eq!(incarnations, 1, "one stream, one incarnation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_compacting_under_load_then_a_consumer_reset_count_nothing_twice() {
    let env = TestEnv::start().await;
    let vars = [("WORKERS", "2"), ("COMPACT_INTERVAL", "20ms")];
    let (mut a, b) = tokio::join!(
        Aggregator::spawn(&env, &vars),
        Aggregator::spawn(&env, &vars)
    );
    let summary = run_publisher(
        &env,
        &[
            "--count",
            "20000",
            "--duplicate-rate",
            "0.3",
            "--seed",
            "50",
        ],
    )
    .await;
    let unique = int(&summary, "unique");
    a.wait_until_received(20_000).await;
    let db = env.db().await;
    integration_tests::wait_compacted(&db, 20_000).await;

    // The durable consumer deleted and created again: the whole stream comes back.
    let js = env.jetstream().await;
    js.get_stream("EVENTS")
        .await
        .unwrap()
        .delete_consumer("aggregator")
        .await
        .unwrap();
    integration_tests::eventually(
        "every message delivered again and skipped",
        std::time::Duration::from_secs(90),
        || async {
            let skipped = metric_sum(
                &a.metrics_text().await,
                "aggregator_redelivered_skipped_total",
            ) + metric_sum(
                &b.metrics_text().await,
                "aggregator_redelivered_skipped_total",
            );
            skipped >= 20_000.0
        },
    )
    .await;
    let stats = a.stats().await;
    assert_eq!(int(&stats, "received"), 20_000, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), unique, "{stats}");
    assert_eq!(
        integration_tests::count(&db, "SELECT count(*) FROM events").await,
        unique
    );
}
