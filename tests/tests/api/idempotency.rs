//! `Idempotency-Key`: the same events resent with the key are stored once (202 each time);
//! the key reused for other events is a 409 and none of those events is published, so one
//! client's key can never make another client's events vanish behind a 202.

use super::common::*;
use integration_tests::{Aggregator, TestEnv};
use serde_json::{json, Value};

fn batch(prefix: &str, n: i64) -> Value {
    Value::Array(
        (0..n)
            .map(|i| event("idem.scope", &format!("{prefix}-{i}"), &ts(i)))
            .collect(),
    )
}

/// Every event id in the stream, in stream order.
async fn stream_ids(env: &TestEnv) -> Vec<String> {
    let js = env.jetstream().await;
    let stream = js.get_stream("EVENTS").await.unwrap();
    let mut ids = Vec::new();
    for seq in 1..=env.stream_messages().await {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let body: Value = serde_json::from_slice(&msg.payload).unwrap();
        ids.push(body["event_id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_same_events_is_a_retry_other_events_a_409() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let key = [("Idempotency-Key", "shared-key")];
    let first = batch("a", 3);
    // (body, status): the first claims the key; resends of the same events (in any body
    // shape) are retries; other events under the key are refused, even when only the last
    // event differs or when they are a subset.
    let mut last_differs = first.clone();
    last_differs[2] = event("idem.scope", "other", &ts(2));
    let cases: Vec<(Value, u16)> = vec![
        (first.clone(), 202),
        (first.clone(), 202),
        (json!({"events": first.clone()}), 202),
        (batch("b", 2), 409),
        (last_differs, 409),
        (batch("a", 2), 409),
        (first.clone(), 202),
    ];
    for (body, want) in &cases {
        let (status, resp) = post_with(&agg, body, &key).await;
        assert_eq!(status, *want, "{body}: {resp}");
        if status == 409 {
            assert_eq!(details(&resp), vec![(None, "Idempotency-Key".to_string())]);
            let error = resp["error"].as_str().unwrap();
            assert!(error.contains("Idempotency-Key"), "{resp}");
        } else {
            assert_eq!(resp, json!({"status": "accepted", "accepted": 3}));
        }
    }
    assert_eq!(stream_ids(&env).await, ["a-0", "a-1", "a-2"]);

    // The refused events go through under a key of their own.
    let (status, resp) = post_with(&agg, &batch("b", 2), &[("Idempotency-Key", "key-b")]).await;
    assert_eq!(status, 202, "{resp}");
    let stats = agg.wait_until_received(5).await;
    assert_counts(&stats, 5, 5, 0);
    let (events, _) = events_page(&agg, &[]).await;
    let mut stored = ids(&events);
    stored.sort();
    assert_eq!(stored, ["a-0", "a-1", "a-2", "b-0", "b-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_racing_for_one_key_one_wins_one_gets_409() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    for round in 0..5 {
        let key = format!("race-{round}");
        let key = [("Idempotency-Key", key.as_str())];
        let (x, y) = (
            batch(&format!("x{round}"), 4),
            batch(&format!("y{round}"), 4),
        );
        let ((sx, rx), (sy, ry)) =
            tokio::join!(post_with(&agg, &x, &key), post_with(&agg, &y, &key));
        let mut statuses = [sx, sy];
        statuses.sort();
        assert_eq!(statuses, [202, 409], "round {round}: {rx} / {ry}");
    }
    // Exactly the winners' events: 5 rounds x 4.
    assert_eq!(env.stream_messages().await, 20);
    let stats = agg.wait_until_received(20).await;
    assert_counts(&stats, 20, 20, 0);
    let mut prefixes: Vec<String> = stream_ids(&env)
        .await
        .iter()
        .map(|id| id.split('-').next().unwrap().to_string())
        .collect();
    prefixes.dedup();
    assert_eq!(
        prefixes.len(),
        5,
        "one request's events per round: {prefixes:?}"
    );
}
