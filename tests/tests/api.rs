//! HTTP API: `POST /publish`, `GET /events`, `GET /stats`, `GET /health` and `GET /metrics`
//! (DESIGN.md, "HTTP API"). Every test runs the real aggregator binary against its own
//! private NATS and Postgres. Counting is asynchronous, so tests wait with
//! `wait_until_received(n)` and then assert exact values; nothing asserts on timing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeDelta, Utc};
use futures::future::join_all;
use integration_tests::{eventually, run_publisher, Aggregator, TestEnv};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde_json::{json, Value};

/// Safety net for `eventually` (never an assertion on timing).
const PATIENCE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `2026-01-01T00:00:00Z` + `secs` seconds, as RFC 3339 with milliseconds and `Z`.
fn ts(secs: i64) -> String {
    let base = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    (base + TimeDelta::seconds(secs)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A valid event with source `SAT-0001` and a small payload.
fn event(topic: &str, id: &str, timestamp: &str) -> Value {
    event_from(topic, id, timestamp, "SAT-0001")
}

/// A valid event from `source`.
fn event_from(topic: &str, id: &str, timestamp: &str, source: &str) -> Value {
    json!({
        "topic": topic,
        "event_id": id,
        "timestamp": timestamp,
        "source": source,
        "payload": {"battery_charge_percent": 85.5, "is_anomaly": false, "id": id},
    })
}

/// The event with one field replaced.
fn with(mut ev: Value, field: &str, value: Value) -> Value {
    ev[field] = value;
    ev
}

/// The event without `field`.
fn without(mut ev: Value, field: &str) -> Value {
    ev.as_object_mut().unwrap().remove(field);
    ev
}

fn int(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("integer {field} missing in {v}"))
}

fn instant(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("not RFC 3339: {s:?}: {e}"))
}

/// `POST /publish` of a JSON value (content-type application/json).
async fn publish(agg: &Aggregator, body: &Value) -> (u16, Value) {
    agg.post_json("/publish", body).await
}

/// `POST /publish` that must answer `202 {"status":"accepted","accepted":n}`.
async fn publish_ok(agg: &Aggregator, body: &Value, n: i64) {
    let (status, resp) = publish(agg, body).await;
    assert_eq!(status, 202, "POST /publish -> {status} {resp}");
    assert_eq!(resp["status"], "accepted", "{resp}");
    assert_eq!(int(&resp, "accepted"), n, "{resp}");
}

/// `POST /publish` with a raw body and extra headers; (status, headers, body as JSON or
/// `Value::String`).
async fn post_raw(
    agg: &Aggregator,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, Value) {
    let mut req = agg
        .http()
        .post(format!("{}/publish", agg.base_url()))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /publish: {e}\n{}", agg.log_tail()));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

/// `POST /publish` of JSON with extra headers.
async fn post_with(agg: &Aggregator, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let (status, _, resp) = post_raw(agg, serde_json::to_vec(body).unwrap(), &all).await;
    (status, resp)
}

/// Sends a raw HTTP/1.1 request (it should say `Connection: close`) and returns the
/// status code of the answer.
async fn raw_http(agg: &Aggregator, request: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = agg.base_url().trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The server may answer and close before reading everything; that is fine.
    let _ = conn.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// `GET /events` with query parameters (properly URL-encoded).
async fn get_events(agg: &Aggregator, params: &[(&str, &str)]) -> (u16, Value) {
    let resp = agg
        .http()
        .get(format!("{}/events", agg.base_url()))
        .query(params)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /events {params:?}: {e}\n{}", agg.log_tail()));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One page of `GET /events` that must be 200: (events, next cursor).
async fn events_page(agg: &Aggregator, params: &[(&str, &str)]) -> (Vec<Value>, Option<String>) {
    let (status, body) = get_events(agg, params).await;
    assert_eq!(status, 200, "GET /events {params:?} -> {status} {body}");
    let events = body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array: {body}"))
        .clone();
    let next = match &body["next"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("next is neither a string nor null: {other} in {body}"),
    };
    assert!(
        body.as_object().unwrap().contains_key("next"),
        "next missing: {body}"
    );
    (events, next)
}

/// Follows `next` from the first page to the last; returns the sizes of the pages and
/// all events in order.
async fn all_pages(agg: &Aggregator, params: &[(&str, &str)]) -> (Vec<usize>, Vec<Value>) {
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut p: Vec<(&str, &str)> = params.to_vec();
        if let Some(c) = &cursor {
            p.push(("after", c.as_str()));
        }
        let (events, next) = events_page(agg, &p).await;
        sizes.push(events.len());
        all.extend(events);
        assert!(sizes.len() <= 10_000, "pagination does not end");
        match next {
            None => return (sizes, all),
            Some(n) => cursor = Some(n),
        }
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// Number of messages in the stream: exact and synchronous (every 202 waited for its
/// PubAck), so it proves what was (not) published.
async fn stream_messages(env: &TestEnv) -> u64 {
    let js = env.jetstream().await;
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

fn assert_counts(stats: &Value, received: i64, unique: i64, duplicates: i64) {
    assert_eq!(int(stats, "received"), received, "received: {stats}");
    assert_eq!(int(stats, "unique_processed"), unique, "unique: {stats}");
    assert_eq!(
        int(stats, "duplicate_dropped"),
        duplicates,
        "duplicates: {stats}"
    );
    assert_eq!(int(stats, "dead_lettered"), 0, "dead_lettered: {stats}");
    let rate = stats["duplicate_rate"].as_f64().expect("duplicate_rate");
    let expected = if received == 0 {
        0.0
    } else {
        duplicates as f64 / received as f64
    };
    assert!((rate - expected).abs() < 1e-9, "duplicate_rate: {stats}");
    assert_consistent(stats);
}

/// Totals equal the sums over topics; topics are sorted by name.
fn assert_consistent(stats: &Value) {
    assert_eq!(
        int(stats, "received"),
        int(stats, "unique_processed") + int(stats, "duplicate_dropped"),
        "{stats}"
    );
    let topics = stats["topics"].as_array().expect("topics array");
    let sum = |f: &str| topics.iter().map(|t| int(t, f)).sum::<i64>();
    assert_eq!(sum("received"), int(stats, "received"), "{stats}");
    assert_eq!(sum("unique_processed"), int(stats, "unique_processed"));
    assert_eq!(sum("duplicate_dropped"), int(stats, "duplicate_dropped"));
    let names: Vec<&str> = topics
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "topics must be sorted by topic: {stats}");
}

/// Per-topic counters from `/stats`: topic -> (received, unique, duplicates).
fn topic_counts(stats: &Value) -> BTreeMap<String, (i64, i64, i64)> {
    stats["topics"]
        .as_array()
        .expect("topics array")
        .iter()
        .map(|t| {
            (
                t["topic"].as_str().unwrap().to_string(),
                (
                    int(t, "received"),
                    int(t, "unique_processed"),
                    int(t, "duplicate_dropped"),
                ),
            )
        })
        .collect()
}

/// `(index, field)` of every entry of `details`.
fn details(body: &Value) -> Vec<(Option<i64>, String)> {
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error message missing: {body}"
    );
    body["details"]
        .as_array()
        .unwrap_or_else(|| panic!("details missing: {body}"))
        .iter()
        .map(|d| {
            assert!(
                d["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "reason missing in {d} ({body})"
            );
            (
                d.get("index").and_then(Value::as_i64),
                d["field"]
                    .as_str()
                    .unwrap_or_else(|| panic!("field missing in {d} ({body})"))
                    .to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// GET /health, GET /stats
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_healthy_with_everything_up() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[]).await;
    let (status, body) = agg.health().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["database_status"], "up", "{body}");
    assert_eq!(body["nats_status"], "up", "{body}");
    assert_eq!(body["circuit_breaker"], "CLOSED", "{body}");
    for field in [
        "timestamp",
        "wal_size_bytes",
        "wal_record_count",
        "buffer_size",
    ] {
        assert!(body.get(field).is_some(), "{field} missing: {body}");
    }
    instant(body["timestamp"].as_str().expect("timestamp string"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_while_postgres_is_down() {
    let mut env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[]).await;
    assert_eq!(agg.health().await.0, 200);

    env.pg.stop();
    let a = &agg;
    eventually(
        "GET /health -> 503 database down",
        PATIENCE,
        || async move {
            let (status, body) = a.health().await;
            status == 503 && body["database_status"] == "down"
        },
    )
    .await;
    let (status, body) = agg.health().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["database_status"], "down", "{body}");
    assert_eq!(body["nats_status"], "up", "{body}");

    env.pg.start().await;
    eventually("GET /health -> 200 again", PATIENCE, || async move {
        let (status, body) = a.health().await;
        status == 200 && body["status"] == "healthy" && body["database_status"] == "up"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_start_at_zero_with_no_topics() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[]).await;
    let stats = agg.stats().await;
    assert_counts(&stats, 0, 0, 0);
    assert_eq!(stats["topics"], json!([]), "{stats}");
    assert_eq!(int(&stats, "consumer_pending"), 0, "{stats}");
    assert_eq!(int(&stats, "buffer_size"), 0, "{stats}");
    assert_eq!(int(&stats, "wal_record_count"), 0, "{stats}");
    assert!(stats["uptime_seconds"].as_f64().unwrap() >= 0.0, "{stats}");
    assert_eq!(stats["circuit_breaker"], "CLOSED", "{stats}");
    assert_eq!(stats["status"], "healthy", "{stats}");

    let (events, next) = events_page(&agg, &[]).await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(next, None);
}

// ---------------------------------------------------------------------------------------
// POST /publish: accepted shapes and counting
// ---------------------------------------------------------------------------------------

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
    assert_eq!(stream_messages(&env).await, 1);

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
    assert_eq!(stream_messages(&env).await, 8);

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
    assert_eq!(stream_messages(&env).await, 500);

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
    assert_eq!(stream_messages(&env).await, 0, "nothing may be published");

    // The service still accepts a valid event, and only that one is counted.
    publish_ok(&agg, &good, 1).await;
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
    assert_eq!(stream_messages(&env).await, 1);
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
    assert_eq!(stream_messages(&env).await, 0);

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
    assert_eq!(stream_messages(&env).await, 0, "nothing may be published");

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
    assert_eq!(stream_messages(&env).await, 5);
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
    assert_eq!(stream_messages(&env).await, 0, "nothing may be published");

    // A later valid event is the only thing ever counted.
    publish_ok(&agg, &event("atomic.test", "sentinel", &ts(3)), 1).await;
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
    assert_eq!(stream_messages(&env).await, 1);
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
    assert_eq!(stream_messages(&env).await, 0);

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

    assert_eq!(stream_messages(&env).await, 1);
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
    assert_eq!(stream_messages(&env).await, 0);

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
    assert_eq!(stream_messages(&env).await, 1);
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
    assert_eq!(stream_messages(&env).await, 3);
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
    assert_eq!(stream_messages(&env).await, 3);
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
        stream_messages(&env).await,
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
    assert_eq!(stream_messages(&env).await, 7);

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

// ---------------------------------------------------------------------------------------
// Duplicates through POST /publish
// ---------------------------------------------------------------------------------------

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
    assert_eq!(stream_messages(&env).await, 10);
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

// ---------------------------------------------------------------------------------------
// GET /events
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_paginated_with_default_and_explicit_limits() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let batch: Vec<Value> = (0..105)
        .map(|i| event("page.test", &format!("p-{i:03}"), &ts(i)))
        .collect();
    publish_ok(&agg, &Value::Array(batch), 105).await;
    agg.wait_until_received(105).await;
    let newest_first: Vec<String> = (0..105).rev().map(|i| format!("p-{i:03}")).collect();

    // Default limit: 100.
    let (first, next) = events_page(&agg, &[]).await;
    assert_eq!(first.len(), 100);
    let next = next.expect("a second page");
    let (second, last) = events_page(&agg, &[("after", &next)]).await;
    assert_eq!(second.len(), 5);
    assert_eq!(last, None);
    let mut got = ids(&first);
    got.extend(ids(&second));
    assert_eq!(got, newest_first);

    // limit=10: 10 pages of 10 and one of 5.
    let (sizes, all) = all_pages(&agg, &[("limit", "10")]).await;
    assert_eq!(sizes, [10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 5]);
    assert_eq!(ids(&all), newest_first);

    // An exact multiple: the last full page already says there is no more.
    let (sizes, all) = all_pages(&agg, &[("limit", "35")]).await;
    assert_eq!(sizes, [35, 35, 35]);
    assert_eq!(ids(&all), newest_first);
    let (events, next) = events_page(&agg, &[("limit", "1000")]).await;
    assert_eq!(events.len(), 105);
    assert_eq!(next, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pagination_visits_250_events_once_in_timestamp_order() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    // Distinct timestamps, published in an order unrelated to them (i -> 97 i mod 250 is
    // a permutation), in 5 requests.
    let order: Vec<i64> = (0..250).map(|i| (i * 97) % 250).collect();
    for chunk in order.chunks(50) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|&i| event("keyset.test", &format!("k-{i:03}"), &ts(i * 60)))
            .collect();
        publish_ok(&agg, &Value::Array(batch), 50).await;
    }
    agg.wait_until_received(250).await;

    let (page1, next1) = events_page(&agg, &[("limit", "100")]).await;
    assert_eq!(page1.len(), 100);
    let next1 = next1.expect("page 2");

    // Newer events arriving between page requests neither shift nor repeat later pages.
    let newer: Vec<Value> = (0..10)
        .map(|i| event("keyset.test", &format!("new-{i}"), &ts(1_000_000 + i)))
        .collect();
    publish_ok(&agg, &Value::Array(newer), 10).await;
    agg.wait_until_received(260).await;

    let (page2, next2) = events_page(&agg, &[("limit", "100"), ("after", &next1)]).await;
    assert_eq!(page2.len(), 100);
    let next2 = next2.expect("page 3");
    let (page3, next3) = events_page(&agg, &[("limit", "100"), ("after", &next2)]).await;
    assert_eq!(page3.len(), 50);
    assert_eq!(next3, None, "next must be null on the last page");

    let all: Vec<Value> = page1.into_iter().chain(page2).chain(page3).collect();
    let expected: Vec<String> = (0..250).rev().map(|i| format!("k-{i:03}")).collect();
    assert_eq!(ids(&all), expected);
    let times: Vec<DateTime<FixedOffset>> = all
        .iter()
        .map(|e| instant(e["timestamp"].as_str().unwrap()))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] > w[1]),
        "timestamps must strictly decrease"
    );
    for (i, e) in all.iter().enumerate() {
        let n: i64 = e["event_id"].as_str().unwrap()[2..].parse().unwrap();
        assert_eq!(times[i], instant(&ts(n * 60)), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_timestamps_are_ordered_newest_ingested_first() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let same = ts(100);
    // One at a time, each counted before the next is sent: a definite ingest order.
    for (n, id) in ["first", "second", "third"].iter().enumerate() {
        publish_ok(&agg, &event("tie.test", id, &same), 1).await;
        agg.wait_until_received(n as i64 + 1).await;
    }
    publish_ok(&agg, &event("tie.test", "older", &ts(50)), 1).await;
    publish_ok(&agg, &event("tie.test", "newer", &ts(150)), 1).await;
    agg.wait_until_received(5).await;

    let expected = ["newer", "third", "second", "first", "older"];
    let (events, next) = events_page(&agg, &[]).await;
    assert_eq!(ids(&events), expected);
    assert_eq!(next, None);
    // The cursor breaks ties too: limit=1 visits each exactly once.
    let (sizes, all) = all_pages(&agg, &[("limit", "1")]).await;
    assert_eq!(sizes, [1, 1, 1, 1, 1]);
    assert_eq!(ids(&all), expected);
    let (sizes, all) = all_pages(&agg, &[("limit", "2")]).await;
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(ids(&all), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filter_by_topic_and_source() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let mut batch = Vec::new();
    for (topic, n) in [("filter.a", 3), ("filter.b", 5), ("filter.c", 7)] {
        for i in 0..n {
            let source = if i % 2 == 0 { "SAT-EVEN" } else { "SAT-ODD" };
            batch.push(event_from(topic, &format!("{topic}-{i}"), &ts(i), source));
        }
    }
    publish_ok(&agg, &Value::Array(batch), 15).await;
    agg.wait_until_received(15).await;

    let (_, all) = all_pages(&agg, &[]).await;
    assert_eq!(all.len(), 15);
    let (_, b) = all_pages(&agg, &[("topic", "filter.b")]).await;
    assert_eq!(b.len(), 5);
    assert!(b.iter().all(|e| e["topic"] == "filter.b"), "{b:?}");
    let (_, odd) = all_pages(&agg, &[("source", "SAT-ODD")]).await;
    assert_eq!(odd.len(), 1 + 2 + 3);
    assert!(odd.iter().all(|e| e["source"] == "SAT-ODD"), "{odd:?}");
    let (_, c_even) = all_pages(&agg, &[("topic", "filter.c"), ("source", "SAT-EVEN")]).await;
    assert_eq!(
        ids(&c_even),
        ["filter.c-6", "filter.c-4", "filter.c-2", "filter.c-0"]
    );
    // A prefix of a topic is not a match, nor is an unknown topic.
    let (none, next) = events_page(&agg, &[("topic", "filter")]).await;
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(next, None);
    let (none, _) = events_page(&agg, &[("topic", "filter.zzz")]).await;
    assert!(none.is_empty(), "{none:?}");
    // Filters and pagination combine.
    let (sizes, c) = all_pages(&agg, &[("topic", "filter.c"), ("limit", "3")]).await;
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(
        ids(&c),
        (0..7)
            .rev()
            .map(|i| format!("filter.c-{i}"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_since_is_inclusive_and_until_exclusive() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    // e0..e9 at 00:00..00:09 on 2026-03-01 (UTC), and "late" at 05:00Z written as +02:00.
    let t = |m: u32| format!("2026-03-01T00:{m:02}:00Z");
    let mut batch: Vec<Value> = (0..10)
        .map(|m| event("window.test", &format!("e{m}"), &t(m)))
        .collect();
    batch.push(event("window.test", "late", "2026-03-01T07:00:00+02:00"));
    publish_ok(&agg, &Value::Array(batch), 11).await;
    agg.wait_until_received(11).await;

    let query = |params: Vec<(&'static str, String)>| {
        let agg = &agg;
        async move {
            let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (events, next) = events_page(agg, &p).await;
            assert_eq!(next, None);
            ids(&events)
        }
    };
    assert_eq!(
        query(vec![("since", t(3)), ("until", t(7))]).await,
        ["e6", "e5", "e4", "e3"]
    );
    assert_eq!(
        query(vec![("since", t(3))]).await,
        ["late", "e9", "e8", "e7", "e6", "e5", "e4", "e3"]
    );
    assert_eq!(query(vec![("until", t(3))]).await, ["e2", "e1", "e0"]);
    assert_eq!(
        query(vec![("since", t(3)), ("until", t(3))]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        query(vec![("since", "2026-03-01T00:03:00.001Z".into())]).await,
        ["late", "e9", "e8", "e7", "e6", "e5", "e4"]
    );
    // Offsets denote instants: 07:00+02:00 is 05:00Z.
    assert_eq!(
        query(vec![("since", "2026-03-01T05:00:00Z".into())]).await,
        ["late"]
    );
    assert_eq!(
        query(vec![("since", "2026-03-01T07:00:00+02:00".into())]).await,
        ["late"]
    );
    assert_eq!(
        query(vec![
            ("since", t(8)),
            ("until", "2026-03-01T07:00:00+02:00".into())
        ])
        .await,
        ["e9", "e8"]
    );
    assert_eq!(
        query(vec![
            ("since", t(0)),
            ("until", t(10)),
            ("topic", "window.test".into())
        ])
        .await,
        ["e9", "e8", "e7", "e6", "e5", "e4", "e3", "e2", "e1", "e0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_query_parameters_are_400_naming_them() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    publish_ok(&agg, &event("query.test", "q-1", &ts(0)), 1).await;
    agg.wait_until_received(1).await;

    let cases: &[(&str, &str, &str)] = &[
        ("limit", "0", "limit"),
        ("limit", "1001", "limit"),
        ("limit", "-1", "limit"),
        ("limit", "abc", "limit"),
        ("limit", "1.5", "limit"),
        ("limit", "99999999999999999999", "limit"),
        ("since", "yesterday", "since"),
        ("since", "2026-13-01T00:00:00Z", "since"),
        ("until", "tomorrow", "until"),
        ("until", "2026-01-01", "until"),
        ("after", "garbage", "after"),
        ("after", "!!!", "after"),
        ("foo", "1", "foo"),
        ("offset", "10", "offset"),
    ];
    for (param, value, field) in cases {
        let (status, body) = get_events(&agg, &[(param, value)]).await;
        assert_eq!(status, 400, "{param}={value}: {body}");
        let fields: Vec<String> = details(&body).into_iter().map(|(_, f)| f).collect();
        assert!(
            fields.iter().any(|f| f == field),
            "{param}={value}: details must name {field}: {body}"
        );
    }

    // The limits of the valid range are accepted.
    for limit in ["1", "1000", "100"] {
        let (events, next) = events_page(&agg, &[("limit", limit)]).await;
        assert_eq!(ids(&events), ["q-1"]);
        assert_eq!(next, None);
    }
    let (events, _) = events_page(
        &agg,
        &[
            ("topic", "query.test"),
            ("source", "SAT-0001"),
            ("since", "2025-01-01T00:00:00Z"),
            ("until", "2027-01-01T00:00:00+01:00"),
            ("limit", "5"),
        ],
    )
    .await;
    assert_eq!(ids(&events), ["q-1"]);
}

// ---------------------------------------------------------------------------------------
// GET /metrics
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// `label value -> sample value` of every sample of `name` (one label `label`).
    fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| {
                assert_eq!(
                    s.labels.len(),
                    1,
                    "{name} must only have label {label}: {s:?}"
                );
                let v = s
                    .labels
                    .get(label)
                    .unwrap_or_else(|| panic!("{name} without label {label}: {s:?}"));
                (v.clone(), s.value)
            })
            .collect()
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `k="v",k2="v2"` (escapes `\\`, `\"`, `\n`); panics naming `line` on error.
fn parse_labels(text: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels in {line:?}"));
        assert!(is_label_name(name), "bad label name {name:?} in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "repeated label {name} in {line:?}"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

/// Parses Prometheus text: every non-comment line is `name{labels} value` (optionally a
/// timestamp) with a float value, and every sample belongs to a family with a `# TYPE`.
fn parse_prometheus(text: &str) -> Exposition {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let parts: Vec<&str> = comment.split_whitespace().collect();
            if parts.first() == Some(&"TYPE") {
                assert_eq!(parts.len(), 3, "bad TYPE line {line:?}");
                assert!(is_metric_name(parts[1]), "bad TYPE line {line:?}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&parts[2]),
                    "bad type in {line:?}"
                );
                assert!(
                    types
                        .insert(parts[1].to_string(), parts[2].to_string())
                        .is_none(),
                    "second TYPE for {}",
                    parts[1]
                );
            }
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close], line),
                    &line[close + 1..],
                )
            }
            None => {
                let space = line
                    .find(' ')
                    .unwrap_or_else(|| panic!("no value in {line:?}"));
                (&line[..space], BTreeMap::new(), &line[space..])
            }
        };
        assert!(is_metric_name(name), "bad metric name in {line:?}");
        assert!(
            rest.starts_with(' '),
            "no space before the value in {line:?}"
        );
        let fields: Vec<&str> = rest.split_whitespace().collect();
        assert!(
            fields.len() == 1 || (fields.len() == 2 && fields[1].parse::<i64>().is_ok()),
            "expected `value [timestamp]` in {line:?}"
        );
        let value: f64 = fields[0]
            .parse()
            .unwrap_or_else(|_| panic!("value is not a float in {line:?}"));
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for s in &samples {
        let family_type = types.get(&s.name).map(|t| (s.name.as_str(), t.as_str()));
        let found = family_type.or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let family = s.name.strip_suffix(suffix)?;
                let t = types.get(family)?.as_str();
                let ok = match *suffix {
                    "_bucket" => t == "histogram",
                    _ => t == "histogram" || t == "summary",
                };
                ok.then_some((family, t))
            })
        });
        assert!(
            found.is_some(),
            "sample {} has no `# TYPE` for its family:\n{text}",
            s.name
        );
    }
    Exposition { types, samples }
}

async fn metrics(agg: &Aggregator) -> Exposition {
    let resp = agg
        .http()
        .get(format!("{}/metrics", agg.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .expect("content-type")
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/plain"), "content-type {ct}");
    parse_prometheus(&resp.text().await.unwrap())
}

const RECEIVED: &str = "aggregator_events_received_total";
const UNIQUE: &str = "aggregator_events_unique_total";
const DUPLICATE: &str = "aggregator_events_duplicate_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_match_stats_per_topic() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    // 300 sends over 3 topics: topic t has 100 sends of 100 - 20 (t + 1) distinct events.
    let mut sends = Vec::new();
    for t in 0..3 {
        let topic = format!("metrics.topic{t}");
        let distinct = 100 - 20 * (t + 1);
        for k in 0..100 {
            sends.push(event(&topic, &format!("m-{}", k % distinct), &ts(k)));
        }
    }
    for chunk in sends.chunks(50) {
        publish_ok(&agg, &Value::Array(chunk.to_vec()), 50).await;
    }
    let stats = agg.wait_until_received(300).await;
    assert_counts(&stats, 300, 80 + 60 + 40, 20 + 40 + 60);

    // Process counters are updated after the commit that /stats reads.
    let a = &agg;
    eventually("metrics count 300 received", PATIENCE, || async move {
        let m = metrics(a).await;
        m.by_label(RECEIVED, "topic").values().sum::<f64>() == 300.0
            && m.by_label(UNIQUE, "topic").values().sum::<f64>() == 180.0
            && m.by_label(DUPLICATE, "topic").values().sum::<f64>() == 120.0
    })
    .await;
    let m = metrics(&agg).await;

    let mut missing = Vec::new();
    for (name, t) in [
        (RECEIVED, "counter"),
        (UNIQUE, "counter"),
        (DUPLICATE, "counter"),
        ("aggregator_dead_letters_total", "counter"),
        ("aggregator_batch_size", "histogram"),
        ("aggregator_batch_write_seconds", "histogram"),
        ("aggregator_end_to_end_lag_seconds", "histogram"),
        ("aggregator_buffer_size", "gauge"),
        ("aggregator_consumer_pending", "gauge"),
        ("aggregator_wal_records", "gauge"),
        ("aggregator_wal_bytes", "gauge"),
        ("aggregator_circuit_breaker_state", "gauge"),
    ] {
        let has_sample = m
            .samples
            .iter()
            .any(|s| s.name == name || s.name.starts_with(&format!("{name}_")));
        if m.types.get(name).map(String::as_str) != Some(t) || !has_sample {
            missing.push(format!(
                "{name}: want {t}, TYPE {:?}, samples: {has_sample}",
                m.types.get(name)
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "metric families wrong or missing: {missing:#?}"
    );
    // Histograms: the +Inf bucket equals the count.
    for name in [
        "aggregator_batch_size",
        "aggregator_batch_write_seconds",
        "aggregator_end_to_end_lag_seconds",
    ] {
        let count = m.value(&format!("{name}_count"), &[]);
        let inf = m.value(&format!("{name}_bucket"), &[("le", "+Inf")]);
        assert!(count.is_some_and(|c| c > 0.0), "{name}_count: {count:?}");
        assert_eq!(count, inf, "{name}: +Inf bucket vs count");
    }
    assert_eq!(
        m.value("aggregator_dead_letters_total", &[]),
        Some(int(&stats, "dead_lettered") as f64)
    );

    let per_topic = topic_counts(&stats);
    let received = m.by_label(RECEIVED, "topic");
    let unique = m.by_label(UNIQUE, "topic");
    let duplicate = m.by_label(DUPLICATE, "topic");
    let names: BTreeSet<&String> = per_topic.keys().collect();
    assert_eq!(received.keys().collect::<BTreeSet<_>>(), names);
    for (topic, (r, u, d)) in &per_topic {
        assert_eq!(received[topic], *r as f64, "received {topic}");
        assert_eq!(
            unique.get(topic).copied(),
            Some(*u as f64),
            "unique {topic}"
        );
        assert_eq!(
            duplicate.get(topic).copied().unwrap_or(0.0),
            *d as f64,
            "duplicate {topic}"
        );
    }
    assert_eq!(per_topic["metrics.topic0"], (100, 80, 20));
    assert_eq!(per_topic["metrics.topic1"], (100, 60, 40));
    assert_eq!(per_topic["metrics.topic2"], (100, 40, 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_topic_labels_are_capped() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("METRICS_MAX_TOPICS", "2")]).await;
    // cap.a and cap.b are seen first (each counted before the next topic is sent).
    publish_ok(&agg, &event("cap.a", "a-1", &ts(0)), 1).await;
    agg.wait_until_received(1).await;
    publish_ok(
        &agg,
        &json!([event("cap.b", "b-1", &ts(0)), event("cap.b", "b-2", &ts(1))]),
        2,
    )
    .await;
    agg.wait_until_received(3).await;
    let later = json!([
        event("cap.c", "c-1", &ts(0)),
        event("cap.c", "c-1", &ts(0)),
        event("cap.d", "d-1", &ts(0)),
        event("cap.d", "d-2", &ts(0)),
        event("cap.e", "e-1", &ts(0)),
        event("cap.a", "a-2", &ts(1)),
    ]);
    publish_ok(&agg, &later, 6).await;
    let stats = agg.wait_until_received(9).await;
    assert_counts(&stats, 9, 8, 1);
    assert_eq!(topic_counts(&stats).len(), 5, "/stats is not capped");

    let a = &agg;
    eventually("metrics count 9 received", PATIENCE, || async move {
        metrics(a)
            .await
            .by_label(RECEIVED, "topic")
            .values()
            .sum::<f64>()
            == 9.0
    })
    .await;
    let m = metrics(&agg).await;
    let expect = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    assert_eq!(
        m.by_label(RECEIVED, "topic"),
        expect(&[("cap.a", 2.0), ("cap.b", 2.0), ("other", 5.0)])
    );
    assert_eq!(
        m.by_label(UNIQUE, "topic"),
        expect(&[("cap.a", 2.0), ("cap.b", 2.0), ("other", 4.0)])
    );
    let dups: BTreeMap<String, f64> = m
        .by_label(DUPLICATE, "topic")
        .into_iter()
        .filter(|(_, v)| *v != 0.0)
        .collect();
    assert_eq!(dups, expect(&[("other", 1.0)]));
}

// ---------------------------------------------------------------------------------------
// The publisher through HTTP
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_via_http_is_counted_exactly() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let url = agg.base_url();
    let summary = run_publisher(
        &env,
        &[
            "--via",
            "http",
            "--url",
            &url,
            "--count",
            "1000",
            "--duplicate-rate",
            "0.2",
            "--seed",
            "7",
        ],
    )
    .await;
    assert_eq!(int(&summary, "published"), 1000, "{summary}");
    assert_eq!(int(&summary, "unique"), 800, "{summary}");
    assert_eq!(int(&summary, "duplicates"), 200, "{summary}");
    assert_eq!(int(&summary, "failed"), 0, "{summary}");

    let stats = agg.wait_until_received(1000).await;
    assert_counts(&stats, 1000, 800, 200);
    assert_eq!(stream_messages(&env).await, 1000);
}
