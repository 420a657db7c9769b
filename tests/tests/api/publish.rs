//! `POST /publish`: accepted shapes and counting, validation, limits, auth, broker outages, idempotency.

use super::common::*;
use integration_tests::{eventually, Aggregator, TestEnv};
use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_single_event_is_counted_and_listed() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let ev = event_from(
        "telemetry.satellite.status",
        "single-1",
        "2026-11-23T10:30:45.123Z",
        "SAT-0042",
    );
    publish_ok(&agg, &ev, 1).await;
    assert_eq!(env.stream_messages().await, 1);

    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
    assert_eq!(
        stats["topics"],
        json!([{"topic": "telemetry.satellite.status", "received": 1,
                "unique_processed": 1, "duplicate_dropped": 0}]),
        "{stats}"
    );

    let (events, next) = events_page(&agg, &[]).await;
    assert_eq!(next, None);
    assert_eq!(events.len(), 1, "{events:?}");
    let got = &events[0];
    assert_eq!(got["topic"], ev["topic"]);
    assert_eq!(got["event_id"], ev["event_id"]);
    assert_eq!(got["source"], ev["source"]);
    assert_eq!(got["payload"], ev["payload"]);
    assert_eq!(
        instant(got["timestamp"].as_str().unwrap()),
        instant("2026-11-23T10:30:45.123Z"),
        "{got}"
    );
    instant(got["stored_at"].as_str().expect("stored_at"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batch_as_array_and_as_events_object() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let array: Vec<Value> = (0..5)
        .map(|i| event("batch.array", &format!("a-{i}"), &ts(i)))
        .collect();
    publish_ok(&agg, &Value::Array(array), 5).await;
    let wrapped: Vec<Value> = (0..3)
        .map(|i| event("batch.wrapped", &format!("w-{i}"), &ts(i)))
        .collect();
    publish_ok(&agg, &json!({ "events": wrapped }), 3).await;
    assert_eq!(env.stream_messages().await, 8);

    let stats = agg.wait_until_received(8).await;
    assert_counts(&stats, 8, 8, 0);
    let topics = topic_counts(&stats);
    assert_eq!(topics["batch.array"], (5, 5, 0));
    assert_eq!(topics["batch.wrapped"], (3, 3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_event_batch_is_accepted_and_counted() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let batch: Vec<Value> = (0..500)
        .map(|i| event(&format!("big.batch.t{}", i % 5), &format!("e-{i}"), &ts(i)))
        .collect();
    publish_ok(&agg, &Value::Array(batch), 500).await;
    assert_eq!(env.stream_messages().await, 500);

    let stats = agg.wait_until_received(500).await;
    assert_counts(&stats, 500, 500, 0);
    let topics = topic_counts(&stats);
    assert_eq!(topics.len(), 5, "{stats}");
    for t in 0..5 {
        assert_eq!(topics[&format!("big.batch.t{t}")], (100, 100, 0), "{stats}");
    }
    let (events, next) = events_page(&agg, &[("limit", "1000")]).await;
    assert_eq!(events.len(), 500);
    assert_eq!(next, None);
    let unique: BTreeSet<String> = ids(&events).into_iter().collect();
    assert_eq!(unique.len(), 500);
}

// ---------------------------------------------------------------------------------------
// POST /publish: validation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_field_is_rejected_with_422_naming_it() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let good = event("schema.test", "s-1", &ts(0));
    for field in ["topic", "event_id", "timestamp", "source", "payload"] {
        let (status, body) = publish(&agg, &without(good.clone(), field)).await;
        assert_eq!(status, 422, "missing {field}: {body}");
        assert_eq!(
            details(&body),
            vec![(Some(0), field.to_string())],
            "missing {field}: {body}"
        );
    }
    assert_eq!(env.stream_messages().await, 0, "nothing may be published");

    // The service still accepts a valid event, and only that one is counted.
    publish_ok(&agg, &good, 1).await;
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
    assert_eq!(env.stream_messages().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_timestamp_is_rejected_with_422() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    for bad in [
        json!("not-a-timestamp"),
        json!("yesterday"),
        json!("2026-13-01T00:00:00Z"),
        json!("2026-01-01"),
        json!(""),
        json!(1_767_225_600),
        json!(null),
    ] {
        let ev = with(event("ts.test", "t-1", &ts(0)), "timestamp", bad.clone());
        let (status, body) = publish(&agg, &ev).await;
        assert_eq!(status, 422, "timestamp {bad}: {body}");
        assert_eq!(
            details(&body),
            vec![(Some(0), "timestamp".to_string())],
            "timestamp {bad}: {body}"
        );
    }
    assert_eq!(env.stream_messages().await, 0);

    // RFC 3339 with an offset is valid.
    let ev = event("ts.test", "t-offset", "2026-01-01T12:00:00.5+02:00");
    publish_ok(&agg, &ev, 1).await;
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_rule_is_enforced_and_named() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("MAX_PAYLOAD_BYTES", "1024")]).await;
    let good = event("rules.test", "r-1", &ts(0));
    let long = "x".repeat(256);
    let big_payload = json!({ "blob": "y".repeat(2000) });
    let cases: Vec<(&str, Value)> = vec![
        ("topic", json!("")),
        ("topic", json!("a..b")),
        ("topic", json!(".a")),
        ("topic", json!("a.")),
        ("topic", json!("a b")),
        ("topic", json!("a.*")),
        ("topic", json!("a.>")),
        ("topic", json!("caf\u{e9}")),
        ("topic", json!(long.clone())),
        ("topic", json!(42)),
        ("event_id", json!("")),
        ("event_id", json!("a\u{1}b")),
        ("event_id", json!("line\nbreak")),
        ("event_id", json!(long.clone())),
        ("event_id", json!(7)),
        ("source", json!("")),
        ("source", json!("tab\there")),
        ("source", json!(long.clone())),
        ("source", json!(null)),
        ("payload", json!([1, 2, 3])),
        ("payload", json!("text")),
        ("payload", json!(null)),
        ("payload", big_payload),
        ("payload", json!({"text": "nul\u{0}byte"})),
    ];
    for (field, value) in &cases {
        let ev = with(good.clone(), field, value.clone());
        let (status, body) = publish(&agg, &ev).await;
        assert_eq!(status, 422, "{field} = {value}: {body}");
        assert_eq!(
            details(&body),
            vec![(Some(0), field.to_string())],
            "{field} = {value}: {body}"
        );
    }

    // All of them in one batch, each after a valid event: one detail per invalid event,
    // at its index.
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for (i, (field, value)) in cases.iter().enumerate() {
        batch.push(event("rules.test", &format!("ok-{i}"), &ts(0)));
        expected.push((Some(batch.len() as i64), field.to_string()));
        batch.push(with(
            event("rules.test", &format!("bad-{i}"), &ts(0)),
            field,
            value.clone(),
        ));
    }
    let (status, body) = publish(&agg, &Value::Array(batch)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(details(&body), expected, "{body}");
    assert_eq!(env.stream_messages().await, 0, "nothing may be published");

    // Boundary values are accepted: 255-char topic token, event_id and source, a
    // payload of exactly 1024 bytes serialized.
    let max = "m".repeat(255);
    let mut payload = json!({ "p": "" });
    let base = serde_json::to_vec(&payload).unwrap().len();
    payload["p"] = json!("z".repeat(1024 - base));
    assert_eq!(serde_json::to_vec(&payload).unwrap().len(), 1024);
    let ok = vec![
        with(good.clone(), "topic", json!(max.clone())),
        with(good.clone(), "event_id", json!(max.clone())),
        with(
            event("rules.test", "r-src", &ts(0)),
            "source",
            json!(max.clone()),
        ),
        with(event("rules.test", "r-pay", &ts(0)), "payload", payload),
        event("Rules_1.x-Y.z_9", "r-chars", &ts(0)),
    ];
    publish_ok(&agg, &Value::Array(ok), 5).await;
    let stats = agg.wait_until_received(5).await;
    assert_counts(&stats, 5, 5, 0);
    assert_eq!(env.stream_messages().await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_event_in_three_publishes_nothing() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let batch = json!([
        event("atomic.test", "a-0", &ts(0)),
        with(
            event("atomic.test", "a-1", &ts(1)),
            "timestamp",
            json!("not a time")
        ),
        event("atomic.test", "a-2", &ts(2)),
    ]);
    let (status, body) = publish(&agg, &batch).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(details(&body), vec![(Some(1), "timestamp".to_string())]);

    // The same through the {"events": [...]} shape, with two invalid events.
    let wrapped = json!({"events": [
        without(event("atomic.test", "b-0", &ts(0)), "source"),
        event("atomic.test", "b-1", &ts(1)),
        with(event("atomic.test", "b-2", &ts(2)), "topic", json!("bad topic")),
    ]});
    let (status, body) = publish(&agg, &wrapped).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        details(&body),
        vec![
            (Some(0), "source".to_string()),
            (Some(2), "topic".to_string())
        ]
    );
    assert_eq!(env.stream_messages().await, 0, "nothing may be published");

    // A later valid event is the only thing ever counted.
    publish_ok(&agg, &event("atomic.test", "sentinel", &ts(3)), 1).await;
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
    assert_eq!(env.stream_messages().await, 1);
    let (events, _) = events_page(&agg, &[]).await;
    assert_eq!(ids(&events), vec!["sentinel"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_and_empty_lists_are_400() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let json_ct = [("content-type", "application/json")];
    for raw in [
        "not json",
        "{\"topic\": ",
        "",
        "[]",
        "{\"events\": []}",
        "42",
        "\"event\"",
        "null",
        "true",
    ] {
        let (status, _, body) = post_raw(&agg, raw.to_string(), &json_ct).await;
        assert_eq!(status, 400, "body {raw:?}: {body}");
        assert_eq!(
            details(&body),
            vec![(None, "body".to_string())],
            "body {raw:?}: {body}"
        );
    }
    // `events` that is not a list: a 400 naming the body (or the `events` member).
    for raw in ["{\"events\": 3}", "{\"events\": {\"topic\": \"a.b\"}}"] {
        let (status, _, body) = post_raw(&agg, raw.to_string(), &json_ct).await;
        assert_eq!(status, 400, "body {raw:?}: {body}");
        let fields: Vec<String> = details(&body).into_iter().map(|(_, f)| f).collect();
        assert!(
            fields == ["body"] || fields == ["events"],
            "body {raw:?}: {body}"
        );
    }
    assert_eq!(env.stream_messages().await, 0);

    publish_ok(&agg, &event("body.test", "ok", &ts(0)), 1).await;
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_bytes_is_413() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("MAX_BODY_BYTES", "1024")]).await;

    // A body of exactly `len` bytes: one event padded in its payload.
    let body_of = |id: &str, len: usize| -> String {
        let mut ev = event("limit.test", id, &ts(0));
        ev["payload"] = json!({ "pad": "" });
        let base = serde_json::to_string(&ev).unwrap().len();
        ev["payload"]["pad"] = json!("p".repeat(len - base));
        let s = serde_json::to_string(&ev).unwrap();
        assert_eq!(s.len(), len);
        s
    };
    let json_ct = [("content-type", "application/json")];

    let (status, _, body) = post_raw(&agg, body_of("exact", 1024), &json_ct).await;
    assert_eq!(status, 202, "1024 bytes is within the limit: {body}");
    let (status, _, body) = post_raw(&agg, body_of("over-1", 1025), &json_ct).await;
    assert_eq!(status, 413, "1025 bytes: {body}");
    let big: Vec<Value> = (0..500)
        .map(|i| event("limit.test", &format!("big-{i}"), &ts(i)))
        .collect();
    let (status, body) = publish(&agg, &Value::Array(big)).await;
    assert_eq!(status, 413, "large batch: {body}");
    // Without Content-Length (chunked), the limit holds too.
    let chunked = body_of("chunked", 2000);
    let request = format!(
        "POST /publish HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {len:x}\r\n{chunked}\r\n0\r\n\r\n",
        host = agg.base_url().trim_start_matches("http://"),
        len = chunked.len(),
    );
    let status = raw_http(&agg, request.as_bytes()).await;
    assert_eq!(status, 413, "chunked body of 2000 bytes");

    assert_eq!(env.stream_messages().await, 1);
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_is_required_for_publish_only() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("API_TOKEN", "secret")]).await;
    let ev = event("auth.test", "auth-1", &ts(0));

    for headers in [
        vec![],
        vec![(AUTHORIZATION.as_str(), "Bearer wrong")],
        vec![(AUTHORIZATION.as_str(), "Bearer secret-and-more")],
        vec![(AUTHORIZATION.as_str(), "Bearer ")],
        vec![(AUTHORIZATION.as_str(), "Basic secret")],
        vec![(AUTHORIZATION.as_str(), "secret")],
    ] {
        let (status, body) = post_with(&agg, &ev, &headers).await;
        assert_eq!(status, 401, "{headers:?}: {body}");
        assert!(body["error"].as_str().is_some(), "{headers:?}: {body}");
    }
    assert_eq!(env.stream_messages().await, 0);

    let (status, body) = post_with(&agg, &ev, &[(AUTHORIZATION.as_str(), "Bearer secret")]).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"status": "accepted", "accepted": 1}));

    // GET endpoints need no token.
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
    assert_eq!(agg.health().await.0, 200);
    let (events, _) = events_page(&agg, &[]).await;
    assert_eq!(ids(&events), vec!["auth-1"]);
    let (status, _) = agg.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(env.stream_messages().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_503_with_retry_after_while_nats_is_down() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("PUBLISH_TIMEOUT", "2s")]).await;
    publish_ok(&agg, &event("outage.test", "before", &ts(0)), 1).await;
    agg.wait_until_received(1).await;

    env.nats.kill();
    let during = json!([event("outage.test", "during", &ts(1))]);
    let key = [("Idempotency-Key", "outage-retry-1")];
    // The client's own 30 s timeout is the "no hang" safety net (PUBLISH_TIMEOUT is 2 s).
    let (status, headers, body) = post_raw(
        &agg,
        serde_json::to_vec(&during).unwrap(),
        &[key[0], ("content-type", "application/json")],
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let retry_after = headers
        .get(RETRY_AFTER)
        .unwrap_or_else(|| panic!("503 without Retry-After: {headers:?} {body}"))
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        retry_after.trim().parse::<u64>().is_ok() || retry_after.contains("GMT"),
        "Retry-After is neither seconds nor an HTTP date: {retry_after:?}"
    );

    let a = &agg;
    eventually("GET /health -> 503 nats down", PATIENCE, || async move {
        let (status, body) = a.health().await;
        status == 503 && body["status"] == "degraded" && body["nats_status"] == "down"
    })
    .await;

    env.nats.restart().await;
    // A client retries the same request with the same key until it is accepted; the key
    // keeps anything the failed attempt might have left in flight from counting twice.
    eventually("POST /publish -> 202 after NATS restart", PATIENCE, || {
        let body = during.clone();
        async move { post_with(a, &body, &key).await.0 == 202 }
    })
    .await;
    publish_ok(&agg, &event("outage.test", "after", &ts(2)), 1).await;
    let stats = agg.wait_until_received(3).await;
    assert_counts(&stats, 3, 3, 0);
    assert_eq!(env.stream_messages().await, 3);
    let a = &agg;
    eventually("GET /health -> 200 again", PATIENCE, || async move {
        a.health().await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_503_instead_of_hanging_when_nats_is_frozen() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("PUBLISH_TIMEOUT", "2s")]).await;
    publish_ok(&agg, &event("frozen.test", "before", &ts(0)), 1).await;
    agg.wait_until_received(1).await;

    // SIGSTOP: the connection stays open, but no PubAck ever comes.
    env.nats.pause();
    let during = json!(event("frozen.test", "during", &ts(1)));
    let key = [("Idempotency-Key", "frozen-1")];
    // The client's own 30 s timeout is the "no hang" safety net (PUBLISH_TIMEOUT is 2 s).
    let (status, headers, body) = post_raw(
        &agg,
        serde_json::to_vec(&during).unwrap(),
        &[key[0], ("content-type", "application/json")],
    )
    .await;
    env.nats.resume();
    assert_eq!(status, 503, "{body}");
    assert!(headers.get(RETRY_AFTER).is_some(), "{headers:?}");

    // Retrying with the same key is accepted once NATS answers, and counted once even
    // though the first attempt reached the server after the resume.
    let a = &agg;
    eventually("POST /publish -> 202 after resume", PATIENCE, || {
        let body = during.clone();
        async move { post_with(a, &body, &key).await.0 == 202 }
    })
    .await;
    publish_ok(&agg, &event("frozen.test", "after", &ts(2)), 1).await;
    let stats = agg.wait_until_received(3).await;
    assert_counts(&stats, 3, 3, 0);
    assert_eq!(env.stream_messages().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_resend_is_counted_once() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let batch = json!([
        event("idem.test", "i-0", &ts(0)),
        event("idem.test", "i-1", &ts(1)),
        event("idem.test", "i-2", &ts(2)),
    ]);
    for _ in 0..2 {
        let (status, body) = post_with(&agg, &batch, &[("Idempotency-Key", "k1")]).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body, json!({"status": "accepted", "accepted": 3}));
    }
    assert_eq!(
        env.stream_messages().await,
        3,
        "the resend must not be stored"
    );
    publish_ok(&agg, &event("idem.test", "sentinel", &ts(3)), 1).await;
    let stats = agg.wait_until_received(4).await;
    assert_counts(&stats, 4, 4, 0);

    // Another key is another request: its events are real (counted) duplicates.
    let (status, body) = post_with(&agg, &batch, &[("Idempotency-Key", "k2")]).await;
    assert_eq!(status, 202, "{body}");
    let stats = agg.wait_until_received(7).await;
    assert_counts(&stats, 7, 4, 3);
    assert_eq!(env.stream_messages().await, 7);

    // Event i of a keyed request carries Nats-Msg-Id "<key>:<i>".
    let js = env.jetstream().await;
    let stream = js.get_stream("EVENTS").await.unwrap();
    let mut msg_ids = Vec::new();
    for seq in 1..=7 {
        let msg = stream.get_raw_message(seq).await.unwrap();
        if let Some(id) = msg.headers.get(async_nats::header::NATS_MESSAGE_ID) {
            if id.as_str().starts_with('k') {
                msg_ids.push(id.as_str().to_string());
            }
        }
        assert!(
            msg.subject.as_str().starts_with("events.idem.test"),
            "{}",
            msg.subject
        );
    }
    assert_eq!(msg_ids, ["k1:0", "k1:1", "k1:2", "k2:0", "k2:1", "k2:2"]);
}
