//! Slow clients: a connection that sends half its headers (or nothing) and waits is closed
//! after `HTTP_HEADER_TIMEOUT`, and with every one of `HTTP_MAX_CONNECTIONS` held by such
//! clients, a well-behaved client is still served once they are cut off.

use super::common::*;
use integration_tests::{Aggregator, TestEnv};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Safety net for a slow connection to be closed by the server (never an assertion on time).
const CLOSE_PATIENCE: Duration = Duration::from_secs(60);

/// Opens a connection and sends `prefix` (then nothing more).
async fn stall(agg: &Aggregator, prefix: &[u8]) -> TcpStream {
    let addr = agg.base_url().trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(prefix).await.unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_senders_are_cut_off_and_others_still_served() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(
        &env,
        &[("HTTP_HEADER_TIMEOUT", "1s"), ("HTTP_MAX_CONNECTIONS", "4")],
    )
    .await;
    let host = agg.base_url().trim_start_matches("http://").to_string();
    let half_get = format!("GET /live HTTP/1.1\r\nHost: {host}\r\nX-Slow: ");
    let half_post =
        format!("POST /publish HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n");
    // Every connection slot taken by a stalled client.
    let prefixes: [&[u8]; 4] = [half_get.as_bytes(), half_post.as_bytes(), b"G", b""];
    let mut stalled = Vec::new();
    for prefix in prefixes {
        stalled.push((prefix, stall(&agg, prefix).await));
    }

    // A well-behaved client gets its answer (the reqwest 30 s timeout is the safety net).
    let (status, body) = agg.get("/live").await;
    assert_eq!(status, 200, "{body}");
    publish_ok(&agg, &event("slow.test", "ok", &ts(0)), 1).await;

    // Each stalled connection was closed by the server without a request being served.
    for (prefix, mut conn) in stalled {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(CLOSE_PATIENCE, conn.read_to_end(&mut answer)).await;
        let what = String::from_utf8_lossy(prefix);
        assert!(
            read.is_ok(),
            "{what:?}: the server never closed the connection"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains(" 200 "), "{what:?} was served: {answer}");
        assert!(!answer.contains(" 202 "), "{what:?} was served: {answer}");
    }
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
    assert_eq!(env.stream_messages().await, 1);
}
