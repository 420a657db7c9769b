//! `GET /events/stream`, the live tail, at its edges: a bad `Last-Event-ID` or parameter is a
//! 400 naming it, the read token applies, `MAX_EVENT_STREAMS` turns one more away with 503 +
//! `Retry-After`, and a tail resumed from an id gets exactly what was stored after it.
//! (The tail under load, resumed again and again: `tests/tests/downstream.rs`.)

use super::common::*;
use integration_tests::downstream::SseClient;
use integration_tests::{Aggregator, TestEnv};
use std::time::Duration;

/// `GET /events/stream<query>`: status, body (read only when it is not a stream) and the
/// `Retry-After` header.
async fn open(agg: &Aggregator, query: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = agg
        .http()
        .get(format!("{}/events/stream{query}", agg.base_url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = if status == 200 {
        String::new()
    } else {
        resp.text().await.unwrap()
    };
    (status, body, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_what_is_wrong_and_the_read_token_applies() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[("API_READ_TOKEN", "read-secret")]).await;
    let auth = ("authorization", "Bearer read-secret");
    for (query, header, field) in [
        ("", Some("12"), "Last-Event-ID"),
        ("", Some("12-x"), "Last-Event-ID"),
        ("", Some("-1-5"), "Last-Event-ID"),
        ("?after=1-2", None, "after"),
        ("?topic=a..b", None, "topic"),
        ("?limit=5", None, "limit"),
    ] {
        let mut headers = vec![auth];
        headers.extend(header.map(|h| ("last-event-id", h)));
        let (status, body, _) = open(&agg, query, &headers).await;
        assert_eq!(status, 400, "{query} {header:?}: {body}");
        assert!(
            body.contains(field),
            "{query} {header:?}: {body} must name {field}"
        );
    }
    assert_eq!(open(&agg, "", &[]).await.0, 401);
    assert_eq!(
        open(&agg, "", &[("authorization", "Bearer wrong")]).await.0,
        401
    );
    assert_eq!(open(&agg, "?topic=a.b", &[auth]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tail_past_max_event_streams_gets_503_and_a_closed_one_frees_its_place() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[("MAX_EVENT_STREAMS", "2")]).await;
    let url = format!("{}/events/stream", agg.base_url());
    let first = SseClient::open(&url, None).await;
    let _second = SseClient::open(&url, None).await;
    let (status, body, retry) = open(&agg, "", &[]).await;
    assert_eq!((status, retry.as_str()), (503, "1"), "{body}");
    assert!(body.contains("MAX_EVENT_STREAMS"), "{body}");
    assert_eq!(agg.metric("aggregator_event_streams").await, 2.0);
    drop(first);
    integration_tests::eventually(
        "the closed tail's place is free",
        Duration::from_secs(30),
        || async { open(&agg, "", &[]).await.0 == 200 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_resumed_from_an_id_gets_exactly_the_events_stored_after_it() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("OUTBOX_POLL_INTERVAL", "50ms")]).await;
    let batch = |from: usize, n: usize| {
        let events: Vec<_> = (from..from + n)
            .map(|i| event_from("tail.resume", &format!("e-{i:03}"), &ts(i as i64), "S-1"))
            .collect();
        serde_json::Value::Array(events)
    };
    // Three requests, three batch transactions: three commit-ordered groups.
    for k in 0..3 {
        publish_ok(&agg, &batch(k * 10, 10), 10).await;
        agg.wait_until_received(((k + 1) * 10) as i64).await;
    }
    // The whole history from the start ("0-0"), in commit order, then the rest after the 12th.
    let url = format!("{}/events/stream?topic=tail.resume", agg.base_url());
    let mut all = SseClient::open(&url, Some("0-0")).await;
    let mut seen = Vec::new();
    for _ in 0..30 {
        seen.push(all.next(Duration::from_secs(30)).await.expect("an event"));
    }
    let ids: Vec<&str> = seen
        .iter()
        .map(|e| e.data["event_id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted.len(), 30);
    sorted.dedup();
    assert_eq!(sorted.len(), 30, "each once: {ids:?}");
    let mut rest = SseClient::open(&url, Some(&seen[11].id)).await;
    for want in &seen[12..] {
        let got = rest.next(Duration::from_secs(30)).await.expect("an event");
        assert_eq!((&got.id, &got.data), (&want.id, &want.data));
    }
    // Then live: a new event arrives on both, once.
    publish_ok(&agg, &batch(30, 1), 1).await;
    for tail in [&mut all, &mut rest] {
        let e = tail
            .next(Duration::from_secs(30))
            .await
            .expect("the new event");
        assert_eq!(e.data["event_id"], "e-030");
        assert!(
            tail.next(Duration::from_millis(500)).await.is_none(),
            "nothing more"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_lost_before_its_first_event_resumes_from_the_position_it_opened_at() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("OUTBOX_POLL_INTERVAL", "50ms")]).await;
    publish_ok(&agg, &event("tail.open", "before", &ts(0)), 1).await;
    agg.wait_until_received(1).await;
    let url = format!("{}/events/stream?topic=tail.open", agg.base_url());
    let mut first = SseClient::open(&url, None).await;
    // Nothing stored after it opened: no event, but the opening position.
    assert!(first.next(Duration::from_millis(300)).await.is_none());
    let opened = first
        .last_id
        .clone()
        .expect("the tail opens with its position");
    drop(first);
    for i in 0..5 {
        publish_ok(&agg, &event("tail.open", &format!("after-{i}"), &ts(i)), 1).await;
    }
    agg.wait_until_received(6).await;
    let mut resumed = SseClient::open(&url, Some(&opened)).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = resumed
            .next(Duration::from_secs(30))
            .await
            .expect("an event");
        got.push(e.data["event_id"].as_str().unwrap().to_owned());
    }
    // Separate batches on separate workers: commit order need not be publish order.
    got.sort();
    assert_eq!(got, ["after-0", "after-1", "after-2", "after-3", "after-4"]);
    assert!(
        resumed.next(Duration::from_millis(300)).await.is_none(),
        "nothing more"
    );
}
