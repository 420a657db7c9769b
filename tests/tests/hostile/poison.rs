//! A message that crashes the aggregator is dead-lettered, not looped.

use super::common::*;
use integration_tests::{count, create_stream, event_json, int, publish_raw, Aggregator, TestEnv};
use serde_json::Value;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_crashes_the_aggregator_is_dead_lettered_not_looped() {
    const MAX_RESTARTS: usize = 12;
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    create_stream(&js).await;
    let topic = "poison.test";
    let subject = format!("events.{topic}");
    for i in 0..10 {
        publish_raw(&js, &subject, event_json(topic, &format!("p-{i}"), "SAT-1")).await;
    }
    publish_raw(&js, &subject, event_json(topic, "poison", "SAT-1")).await;
    for i in 10..20 {
        publish_raw(&js, &subject, event_json(topic, &format!("p-{i}"), "SAT-1")).await;
    }

    let mut agg = Aggregator::spawn_no_wait(
        &env,
        &[
            ("MAX_DELIVER", "2"),
            ("ACK_WAIT", "1s"),
            ("AGGREGATOR_FAILPOINT", "abort-on-event:poison"),
        ],
    )
    .await;
    let mut crashes = 0;
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(
            Instant::now() < deadline,
            "did not settle after {crashes} crashes\n{}",
            agg.log_tail()
        );
        if !agg.is_running() {
            crashes += 1;
            assert!(
                crashes <= MAX_RESTARTS,
                "the poison message crashed the aggregator {crashes} times\n{}",
                agg.log_tail()
            );
            agg.restart_no_wait();
            continue;
        }
        if let Some((200, s)) = agg.try_get("/stats").await {
            if int(&s, "received") + int(&s, "dead_lettered") >= 21 {
                let info = consumer_info(&env).await;
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It stays up: nothing is redelivered to crash it again (well past ACK_WAIT).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        agg.is_running(),
        "crashed again after settling\n{}",
        agg.log_tail()
    );
    eprintln!("poison message: {crashes} crash(es) before it was dead-lettered");
    assert!(crashes >= 1, "the failpoint never fired");

    let stats = agg.stats().await;
    let db = env.db().await;
    let dead: Vec<(String, String)> =
        sqlx::query_as("SELECT reason, convert_from(raw, 'UTF8') FROM dead_letters ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    let dead_ids: Vec<String> = dead
        .iter()
        .map(|(_, raw)| {
            serde_json::from_str::<Value>(raw).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        dead_ids,
        vec!["poison"],
        "only the poison message is a dead letter (reasons: {dead:?}); stats {stats}"
    );
    assert!(
        dead[0].0.contains("delivered"),
        "reason mentions deliveries: {:?}",
        dead[0].0
    );
    assert_eq!(int(&stats, "received"), 20, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), 20, "{stats}");
    assert_eq!(int(&stats, "duplicate_dropped"), 0, "{stats}");
    assert_eq!(int(&stats, "dead_lettered"), 1, "{stats}");
    // The process that settled it counted it under the MAX_DELIVER mechanism's own counter,
    // not as a message the database rejected. (Its batch-mates, redelivered by the crashes,
    // may have been tried alone too: `verdict="solo"` depends on the crash timing.)
    let metrics = agg.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "aggregator_max_deliver_exceeded_total{verdict=\"dead_letter\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        agg.metric("aggregator_poison_messages_total").await,
        0.0,
        "no event was rejected by the database"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM events").await, 20);
    assert_eq!(
        count(&db, "SELECT count(*) FROM events WHERE event_id = 'poison'").await,
        0
    );
}
