//! The stream out and the live tail: each event stored for the first time reaches the output
//! stream exactly once, through a crash between publish and cursor, a SIGKILL mid-publish,
//! Postgres stopped, the NATS node restarted and two replicas; and a live tail resumed with
//! `Last-Event-ID` under load sees every event of its filter once, in order.

use integration_tests::downstream::{
    assert_each_stored_event_once, output_count, output_messages, stored_keys, SseClient,
};
use integration_tests::{
    eventually, int, publish_in_background, run_publisher, Aggregator, TestEnv, FAST_FAULTS,
};
use serde_json::Value;
use std::time::Duration;
use tokio::task::JoinHandle;

const PREFIX: &str = "unique";

/// The stream out on, in rounds of `batch` events (small rounds: more of them to interrupt).
fn stream_out(batch: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut v = FAST_FAULTS.to_vec();
    v.extend([("OUTPUT_SUBJECT_PREFIX", PREFIX), ("OUTBOX_BATCH", batch)]);
    v
}

/// Waits until the stream out has published a first 200 events.
async fn under_way(env: &TestEnv) {
    let js = env.jetstream().await;
    eventually(
        "the stream out under way",
        Duration::from_secs(60),
        || async { output_count(&js, "UNIQUE").await >= 200 },
    )
    .await;
}

/// The background publisher of 6,000 events (4,200 unique) done, every event counted on `agg`
/// and the stream out exact.
async fn finish(env: &TestEnv, agg: &mut Aggregator, publisher: JoinHandle<Value>) {
    let summary = publisher.await.unwrap();
    assert_eq!(int(&summary, "unique"), 4200);
    let stats = agg.wait_until_received(6000).await;
    assert_eq!(int(&stats, "unique_processed"), 4200, "{stats}");
    assert_stream_out_exact(env, agg, 4200).await;
}

/// Waits until the output stream holds `unique` messages and `/stats` reports no lag, then
/// checks every message against the events table.
async fn assert_stream_out_exact(env: &TestEnv, agg: &Aggregator, unique: i64) {
    let js = env.jetstream().await;
    eventually(
        "the stream out caught up",
        Duration::from_secs(120),
        || async {
            let stats = agg.stats().await;
            output_count(&js, "UNIQUE").await == unique as u64
                && stats["outbox"]["lag_rows"] == 0
                && stats["outbox"]["published"] == unique
        },
    )
    .await;
    let stored = stored_keys(&env.db().await).await;
    assert_eq!(stored.len() as i64, unique);
    let messages = output_messages(&js, "UNIQUE").await;
    assert_each_stored_event_once(&messages, &stored, PREFIX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stored_event_is_published_once_with_its_json_headers_and_lag() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &stream_out("500")).await;
    run_publisher(
        &env,
        &["--count", "2000", "--duplicate-rate", "0.3", "--seed", "61"],
    )
    .await;
    let stats = agg.wait_until_received(2000).await;
    assert_eq!(int(&stats, "unique_processed"), 1400, "{stats}");
    assert_stream_out_exact(&env, &agg, 1400).await;

    let stats = agg.stats().await;
    assert_eq!(stats["outbox"]["stream"], "UNIQUE", "{stats}");
    assert_eq!(stats["outbox"]["lag_seconds"], 0.0, "{stats}");
    assert_eq!(
        agg.metric("aggregator_outbox_published_total").await,
        1400.0
    );
    assert_eq!(agg.metric("aggregator_outbox_publisher").await, 1.0);
    assert_eq!(agg.metric("aggregator_outbox_lag_rows").await, 0.0);

    // A message is the event as GET /events gives it, under the same keys.
    let js = env.jetstream().await;
    let first = &output_messages(&js, "UNIQUE").await[0];
    let (_, page) = agg
        .get(&format!(
            "/events?topic={}&limit=1000",
            first.body["topic"].as_str().unwrap()
        ))
        .await;
    let same = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == first.body["event_id"])
        .expect("the published event is stored");
    assert_eq!(&first.body, same);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_out_is_off_unless_an_output_prefix_is_set() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    run_publisher(&env, &["--count", "100", "--seed", "62"]).await;
    let stats = agg.wait_until_received(100).await;
    assert!(stats["outbox"].is_null(), "{stats}");
    let js = env.jetstream().await;
    assert!(js.get_stream("UNIQUE").await.is_err(), "no output stream");
    assert_eq!(agg.metric("aggregator_outbox_published_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_acknowledgements_and_the_cursor_publishes_nothing_twice() {
    let env = TestEnv::start().await;
    let mut vars = stream_out("100");
    vars.push(("AGGREGATOR_FAILPOINT", "abort-after-publish:3"));
    let mut agg = Aggregator::spawn(&env, &vars).await;
    run_publisher(
        &env,
        &["--count", "2000", "--duplicate-rate", "0.3", "--seed", "63"],
    )
    .await;
    // The third round was acknowledged by the output stream, and its cursor never saved.
    let status = agg.wait_exit().await;
    assert!(!status.success(), "the failpoint aborts");
    // The output stream holds the third round; the saved cursor accounts for two.
    let js = env.jetstream().await;
    let (saved_seq, saved_published): (i64, i64) =
        sqlx::query_as("SELECT stream_seq, published FROM outbox_cursors WHERE stream = 'UNIQUE'")
            .fetch_one(&env.db().await)
            .await
            .unwrap();
    let held = output_count(&js, "UNIQUE").await as i64;
    assert_eq!(saved_seq, saved_published);
    assert!(
        held > saved_seq && saved_seq > 0,
        "held {held}, saved {saved_seq}"
    );

    agg.set_env("AGGREGATOR_FAILPOINT", None);
    agg.restart().await;
    agg.wait_until_received(2000).await;
    assert_stream_out_exact(&env, &agg, 1400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_publish_loses_and_repeats_nothing() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &stream_out("20")).await;
    let publisher = publish_in_background(&env.nats_url(), 6000, 3000, 64);
    under_way(&env).await;
    agg.kill();
    agg.restart().await;
    finish(&env, &mut agg, publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_publish_loses_and_repeats_nothing() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &stream_out("20")).await;
    let publisher = publish_in_background(&env.nats_url(), 6000, 2000, 65);
    under_way(&env).await;
    env.pg.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.pg.start().await;
    finish(&env, &mut agg, publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_node_restarted_mid_publish_loses_and_repeats_nothing() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &stream_out("20")).await;
    run_publisher(
        &env,
        &["--count", "4000", "--duplicate-rate", "0.3", "--seed", "66"],
    )
    .await;
    under_way(&env).await;
    env.nats.restart().await;
    run_publisher(
        &env,
        &["--count", "2000", "--duplicate-rate", "0.3", "--seed", "67"],
    )
    .await;
    let stats = agg.wait_until_received(6000).await;
    assert_eq!(int(&stats, "unique_processed"), 4200, "{stats}");
    assert_stream_out_exact(&env, &agg, 4200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_publish_through_one_publisher_and_the_other_takes_over() {
    let env = TestEnv::start().await;
    let vars = stream_out("20");
    let mut a = Aggregator::spawn(&env, &vars).await;
    let mut b = Aggregator::spawn(&env, &vars).await;
    let publisher = publish_in_background(&env.nats_url(), 6000, 2000, 68);
    under_way(&env).await;
    // One publisher at a time; kill it, and the other one takes over.
    let (pa, pb) = (
        a.metric("aggregator_outbox_publisher").await,
        b.metric("aggregator_outbox_publisher").await,
    );
    assert_eq!(pa + pb, 1.0, "exactly one publisher: {pa} + {pb}");
    let (leader, other) = if pa == 1.0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    leader.kill();
    eventually(
        "the other replica publishes",
        Duration::from_secs(30),
        || async { other.metric("aggregator_outbox_publisher").await == 1.0 },
    )
    .await;
    finish(&env, other, publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tail_resumed_with_last_event_id_under_load_sees_each_event_once_in_order() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[("OUTBOX_POLL_INTERVAL", "50ms")]).await;
    let topic = "telemetry.satellite.status";
    let url = format!("{}/events/stream?topic={topic}", agg.base_url());
    // From now on: nothing stored yet, so the tail sees everything.
    let mut tail = SseClient::open(&url, None).await;
    let publisher = publish_in_background(&env.nats_url(), 6000, 2000, 69);

    let mut seen = Vec::new();
    // Read some, leave, come back with the last id while the load goes on; three times.
    for _ in 0..3 {
        for _ in 0..100 {
            let e = tail.next(Duration::from_secs(30)).await.expect("an event");
            seen.push(e);
        }
        drop(tail);
        tokio::time::sleep(Duration::from_millis(300)).await;
        tail = SseClient::open(&url, Some(&seen.last().unwrap().id)).await;
    }
    publisher.await.unwrap();
    let db = env.db().await;
    eventually("every event counted", Duration::from_secs(60), || async {
        agg.received().await == Some(6000)
    })
    .await;
    let want: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM events WHERE topic = $1 ORDER BY xid, id")
            .bind(topic)
            .fetch_all(&db)
            .await
            .unwrap();
    while seen.len() < want.len() {
        match tail.next(Duration::from_secs(10)).await {
            Some(e) => seen.push(e),
            None => break,
        }
    }
    let got: Vec<String> = seen
        .iter()
        .map(|e| e.data["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got.len(), want.len(), "events of the filter, once each");
    assert_eq!(got, want, "in commit order, no gap, no repeat");
    assert!(seen.iter().all(|e| e.data["topic"] == topic));
    assert!(want.len() > 300, "the filter saw load: {}", want.len());
}
