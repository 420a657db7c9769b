//! Duplicates through `POST /publish`: each distinct event stored once, every copy counted.

use super::common::*;
use futures::future::join_all;
use integration_tests::{Aggregator, TestEnv};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_twice_is_one_unique_one_duplicate() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let ev = event("dup.test", "dup-1", &ts(0));
    publish_ok(&agg, &ev, 1).await;
    publish_ok(&agg, &ev, 1).await;
    let stats = agg.wait_until_received(2).await;
    assert_counts(&stats, 2, 1, 1);
    assert_eq!(topic_counts(&stats)["dup.test"], (2, 1, 1));
    let (events, _) = events_page(&agg, &[]).await;
    assert_eq!(ids(&events), vec!["dup-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_copies_are_one_unique_nine_duplicates() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let ev = event("dup.many", "dup-10", &ts(0));
    for _ in 0..10 {
        publish_ok(&agg, &ev, 1).await;
    }
    let stats = agg.wait_until_received(10).await;
    assert_counts(&stats, 10, 1, 9);
    let (events, _) = events_page(&agg, &[]).await;
    assert_eq!(ids(&events), vec!["dup-10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_id_on_different_topics_is_two_uniques() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    publish_ok(&agg, &event("topic.one", "shared-id", &ts(0)), 1).await;
    publish_ok(&agg, &event("topic.two", "shared-id", &ts(0)), 1).await;
    let stats = agg.wait_until_received(2).await;
    assert_counts(&stats, 2, 2, 0);
    let topics = topic_counts(&stats);
    assert_eq!(topics["topic.one"], (1, 1, 0));
    assert_eq!(topics["topic.two"], (1, 1, 0));
    let (events, _) = events_page(&agg, &[]).await;
    assert_eq!(events.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_within_one_request_are_counted() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let a = event("dup.batch", "a", &ts(0));
    let b = event("dup.batch", "b", &ts(1));
    let c = event("dup.batch", "c", &ts(2));
    let batch = json!([a, a, b, a, c, b]);
    publish_ok(&agg, &batch, 6).await;
    let stats = agg.wait_until_received(6).await;
    assert_counts(&stats, 6, 3, 3);
    let (events, _) = events_page(&agg, &[]).await;
    assert_eq!(ids(&events), vec!["c", "b", "a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_identical_requests_are_one_unique() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let ev = event("concurrent.same", "same-1", &ts(0));
    let results = join_all((0..10).map(|_| publish(&agg, &ev))).await;
    for (status, body) in &results {
        assert_eq!(*status, 202, "{body}");
        assert_eq!(int(body, "accepted"), 1);
    }
    let stats = agg.wait_until_received(10).await;
    assert_counts(&stats, 10, 1, 9);
    assert_eq!(env.stream_messages().await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_different_requests_are_twenty_uniques() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let evs: Vec<Value> = (0..20)
        .map(|i| event("concurrent.diff", &format!("d-{i}"), &ts(i)))
        .collect();
    let results = join_all(evs.iter().map(|ev| publish(&agg, ev))).await;
    for (status, body) in &results {
        assert_eq!(*status, 202, "{body}");
    }
    let stats = agg.wait_until_received(20).await;
    assert_counts(&stats, 20, 20, 0);
    let (events, _) = events_page(&agg, &[]).await;
    assert_eq!(events.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_events_half_duplicates_are_counted_exactly() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    // 50 distinct events over two topics, each sent twice, in 10 requests of 10 with
    // the copies spread over different requests.
    let distinct: Vec<Value> = (0..50)
        .map(|i| event(&format!("half.t{}", i % 2), &format!("h-{i}"), &ts(i)))
        .collect();
    let sends: Vec<Value> = (0..100).map(|k| distinct[(k * 7) % 50].clone()).collect();
    for chunk in sends.chunks(10) {
        publish_ok(&agg, &Value::Array(chunk.to_vec()), 10).await;
    }
    let stats = agg.wait_until_received(100).await;
    assert_counts(&stats, 100, 50, 50);
    let topics = topic_counts(&stats);
    assert_eq!(topics["half.t0"], (50, 25, 25));
    assert_eq!(topics["half.t1"], (50, 25, 25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_accumulate_across_requests() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;

    publish_ok(&agg, &event("acc.a", "a-0", &ts(0)), 1).await;
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);

    let batch: Vec<Value> = (0..3)
        .map(|i| event("acc.b", &format!("b-{i}"), &ts(i)))
        .collect();
    publish_ok(&agg, &Value::Array(batch), 3).await;
    let stats = agg.wait_until_received(4).await;
    assert_counts(&stats, 4, 4, 0);

    let batch = json!([
        event("acc.a", "a-0", &ts(0)),
        event("acc.b", "b-1", &ts(1)),
        event("acc.a", "a-1", &ts(1)),
        event("acc.a", "a-2", &ts(2)),
        event("acc.a", "a-3", &ts(3)),
    ]);
    publish_ok(&agg, &batch, 5).await;
    let stats = agg.wait_until_received(9).await;
    assert_counts(&stats, 9, 7, 2);
    let topics = topic_counts(&stats);
    assert_eq!(topics.len(), 2);
    assert_eq!(topics["acc.a"], (5, 4, 1));
    assert_eq!(topics["acc.b"], (4, 3, 1));
}
