//! Admission of `POST /publish`: with every `MAX_CONCURRENT_PUBLISH` slot taken, a request
//! waits in a short queue (at most 4 per slot) for up to `PUBLISH_QUEUE_TIMEOUT`, counted by
//! the gauge `aggregator_http_publish_queued`; after the wait, beyond the queue, or at once
//! with `PUBLISH_QUEUE_TIMEOUT=0`, it gets 503 + `Retry-After`.
//!
//! A slot is held by a real slow client: it sends its headers with `Expect: 100-continue`,
//! reads the server's `100 Continue` (hyper sends it when the handler first asks for the
//! body, which is after admission) and withholds the body until the test releases it.
//! Nothing asserts on timing: the tests wait for the gauge, then assert exact counts.

use super::common::*;
use integration_tests::{Aggregator, TestEnv};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const QUEUED: &str = "aggregator_http_publish_queued";

/// Safety net for the server's answers on the held connection (never an assertion on time).
const ANSWER_PATIENCE: Duration = Duration::from_secs(60);

/// A `POST /publish` that holds its slot: admitted, its body not sent yet.
struct Held {
    conn: TcpStream,
    body: Vec<u8>,
}

impl Held {
    /// Sends the headers of a publish of `ev` and waits for `100 Continue`: the request holds
    /// a slot from then on.
    async fn take_slot(agg: &Aggregator, ev: &Value) -> Held {
        let host = agg.base_url().trim_start_matches("http://").to_string();
        let body = serde_json::to_vec(ev).unwrap();
        let mut conn = TcpStream::connect(&host).await.unwrap();
        let head = format!(
            "POST /publish HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(ANSWER_PATIENCE, conn.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no 100 Continue\n{}", agg.log_tail()))
                .unwrap();
            assert!(n > 0, "connection closed before 100 Continue: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        let interim = String::from_utf8_lossy(&got);
        assert!(
            interim.starts_with("HTTP/1.1 100 "),
            "expected 100 Continue, got {interim:?}"
        );
        Held { conn, body }
    }

    /// Sends the body: the request completes and frees its slot. Returns its status.
    async fn release(mut self) -> u16 {
        self.conn.write_all(&self.body).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(ANSWER_PATIENCE, self.conn.read_to_end(&mut answer))
            .await
            .expect("no answer after the body")
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        text.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
    }
}

/// An aggregator with one publish slot and the given `PUBLISH_QUEUE_TIMEOUT`.
async fn one_slot(queue_timeout: &str) -> (TestEnv, Aggregator) {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(
        &env,
        &[
            ("MAX_CONCURRENT_PUBLISH", "1"),
            ("PUBLISH_QUEUE_TIMEOUT", queue_timeout),
        ],
    )
    .await;
    (env, agg)
}

/// `n` publishes of new events of `topic` behind a held slot, once all of them wait.
async fn queue_behind(
    agg: &mut Aggregator,
    topic: &str,
    n: i64,
) -> Vec<JoinHandle<(u16, HeaderMap, Value)>> {
    let waiters = (0..n)
        .map(|i| spawn_publish(agg, &event(topic, &format!("w{i}"), &ts(i))))
        .collect();
    agg.wait_metric(QUEUED, n as f64).await;
    waiters
}

/// `POST /publish` of `ev` in a task of its own: (status, headers, body).
fn spawn_publish(agg: &Aggregator, ev: &Value) -> JoinHandle<(u16, HeaderMap, Value)> {
    let http = agg.http().clone();
    let url = format!("{}/publish", agg.base_url());
    let ev = ev.clone();
    tokio::spawn(async move {
        let resp = http
            .post(url)
            .json(&ev)
            .send()
            .await
            .expect("POST /publish");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
}

/// A 503 that tells the client when to come back.
fn assert_shed(status: u16, headers: &HeaderMap, body: &Value, says: &str) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()),
        Some("1"),
        "503 without Retry-After: {headers:?} {body}"
    );
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(says), "the error must name {says}: {body}");
}

/// Requests answered 503 by `POST /publish`, from `aggregator_http_requests_total`.
async fn publish_503s(agg: &Aggregator) -> usize {
    agg.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("aggregator_http_requests_total{"))
        .filter(|l| l.contains("route=\"/publish\"") && l.contains("status=\"503\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as usize)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_a_busy_slot_and_is_served_when_it_frees() {
    let (env, mut agg) = one_slot("20s").await;
    assert_eq!(
        agg.metric(QUEUED).await,
        0.0,
        "registered at 0 from start-up"
    );
    let a = event("admission.wait", "a", &ts(0));
    let b = event("admission.wait", "b", &ts(1));
    let held = Held::take_slot(&agg, &a).await;
    // Two requests queue behind it: a new event and a re-send of the held one.
    let first = spawn_publish(&agg, &b);
    agg.wait_metric(QUEUED, 1.0).await;
    let second = spawn_publish(&agg, &a);
    agg.wait_metric(QUEUED, 2.0).await;
    assert!(!first.is_finished() && !second.is_finished());
    assert_eq!(
        env.stream_messages().await,
        0,
        "nothing published while waiting"
    );

    assert_eq!(held.release().await, 202);
    for waiter in [first, second] {
        let (status, _, body) = waiter.await.unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(int(&body, "accepted"), 1, "{body}");
    }
    assert_eq!(agg.metric(QUEUED).await, 0.0);
    assert_eq!(publish_503s(&agg).await, 0);
    let stats = agg.wait_until_received(3).await;
    assert_counts(&stats, 3, 2, 1);
    assert_eq!(env.stream_messages().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_zero_queue_timeout_a_busy_slot_sheds_at_once() {
    let (env, mut agg) = one_slot("0").await;
    let held = Held::take_slot(&agg, &event("admission.zero", "held", &ts(0))).await;
    let (status, headers, body) = post_raw(
        &agg,
        serde_json::to_vec(&event("admission.zero", "shed", &ts(1))).unwrap(),
        &[("content-type", "application/json")],
    )
    .await;
    assert_shed(status, &headers, &body, "MAX_CONCURRENT_PUBLISH");
    assert_eq!(
        agg.metric(QUEUED).await,
        0.0,
        "nothing waits with a zero timeout"
    );

    assert_eq!(held.release().await, 202);
    publish_ok(&agg, &event("admission.zero", "after", &ts(2)), 1).await;
    assert_eq!(publish_503s(&agg).await, 1);
    let stats = agg.wait_until_received(2).await;
    assert_counts(&stats, 2, 2, 0);
    assert_eq!(env.stream_messages().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_past_the_queue_timeout_is_shed() {
    // Long enough for the test to see the gauge while they wait.
    let (env, mut agg) = one_slot("10s").await;
    let held = Held::take_slot(&agg, &event("admission.timeout", "held", &ts(0))).await;
    let waiters = queue_behind(&mut agg, "admission.timeout", 2).await;
    for waiter in waiters {
        let (status, headers, body) = waiter.await.unwrap();
        assert_shed(status, &headers, &body, "PUBLISH_QUEUE_TIMEOUT");
    }
    assert_eq!(agg.metric(QUEUED).await, 0.0);
    assert_eq!(
        env.stream_messages().await,
        0,
        "a shed request publishes nothing"
    );

    assert_eq!(held.release().await, 202);
    assert_eq!(publish_503s(&agg).await, 2);
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
    assert_eq!(env.stream_messages().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_four_waiting_requests_per_slot_a_request_sheds_at_once() {
    let (env, mut agg) = one_slot("20s").await;
    let held = Held::take_slot(&agg, &event("admission.full", "held", &ts(0))).await;
    let waiters = queue_behind(&mut agg, "admission.full", 4).await;
    let (status, body) = publish(&agg, &event("admission.full", "fifth", &ts(9))).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("waiting"),
        "{body}"
    );
    assert_eq!(agg.metric(QUEUED).await, 4.0, "the queue is unchanged");

    assert_eq!(held.release().await, 202);
    for waiter in waiters {
        let (status, _, body) = waiter.await.unwrap();
        assert_eq!(status, 202, "{body}");
    }
    assert_eq!(agg.metric(QUEUED).await, 0.0);
    assert_eq!(publish_503s(&agg).await, 1);
    let stats = agg.wait_until_received(5).await;
    assert_counts(&stats, 5, 5, 0);
    assert_eq!(env.stream_messages().await, 5);
}
