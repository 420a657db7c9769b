//! Helpers shared by the API suites: event builders, publish and page helpers, assertions.

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeDelta, Utc};
use integration_tests::Aggregator;
pub(crate) use integration_tests::{assert_counts, int};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Safety net for `eventually` (never an assertion on timing).
pub(crate) const PATIENCE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `2026-01-01T00:00:00Z` + `secs` seconds, as RFC 3339 with milliseconds and `Z`.
pub(crate) fn ts(secs: i64) -> String {
    let base = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    (base + TimeDelta::seconds(secs)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A valid event with source `SAT-0001` and a small payload.
pub(crate) fn event(topic: &str, id: &str, timestamp: &str) -> Value {
    event_from(topic, id, timestamp, "SAT-0001")
}

/// A valid event from `source`.
pub(crate) fn event_from(topic: &str, id: &str, timestamp: &str, source: &str) -> Value {
    json!({
        "topic": topic,
        "event_id": id,
        "timestamp": timestamp,
        "source": source,
        "payload": {"battery_charge_percent": 85.5, "is_anomaly": false, "id": id},
    })
}

/// The event with one field replaced.
pub(crate) fn with(mut ev: Value, field: &str, value: Value) -> Value {
    ev[field] = value;
    ev
}

/// The event without `field`.
pub(crate) fn without(mut ev: Value, field: &str) -> Value {
    ev.as_object_mut().unwrap().remove(field);
    ev
}

pub(crate) fn instant(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("not RFC 3339: {s:?}: {e}"))
}

/// `POST /publish` of a JSON value (content-type application/json).
pub(crate) async fn publish(agg: &Aggregator, body: &Value) -> (u16, Value) {
    agg.post_json("/publish", body).await
}

/// `POST /publish` that must answer `202 {"status":"accepted","accepted":n}`.
pub(crate) async fn publish_ok(agg: &Aggregator, body: &Value, n: i64) {
    let (status, resp) = publish(agg, body).await;
    assert_eq!(status, 202, "POST /publish -> {status} {resp}");
    assert_eq!(resp["status"], "accepted", "{resp}");
    assert_eq!(int(&resp, "accepted"), n, "{resp}");
}

/// `POST /publish` with a raw body and extra headers; (status, headers, body as JSON or
/// `Value::String`).
pub(crate) async fn post_raw(
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
pub(crate) async fn post_with(
    agg: &Aggregator,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let (status, _, resp) = post_raw(agg, serde_json::to_vec(body).unwrap(), &all).await;
    (status, resp)
}

/// Sends a raw HTTP/1.1 request (it should say `Connection: close`) and returns the
/// status code of the answer.
pub(crate) async fn raw_http(agg: &Aggregator, request: &[u8]) -> u16 {
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
pub(crate) async fn get_events(agg: &Aggregator, params: &[(&str, &str)]) -> (u16, Value) {
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
pub(crate) async fn events_page(
    agg: &Aggregator,
    params: &[(&str, &str)],
) -> (Vec<Value>, Option<String>) {
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
pub(crate) async fn all_pages(
    agg: &Aggregator,
    params: &[(&str, &str)],
) -> (Vec<usize>, Vec<Value>) {
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

pub(crate) fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// Per-topic counters from `/stats`: topic -> (received, unique, duplicates).
pub(crate) fn topic_counts(stats: &Value) -> BTreeMap<String, (i64, i64, i64)> {
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
pub(crate) fn details(body: &Value) -> Vec<(Option<i64>, String)> {
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
