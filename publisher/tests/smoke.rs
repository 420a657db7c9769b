//! End-to-end smoke test of the `publisher` binary against a real NATS server with JetStream
//! (`NATS_URL`, default `nats://127.0.0.1:4222`). Ignored by default because it needs that
//! server: `cargo test -p publisher --test smoke -- --ignored`.
//!
//! Each test creates a throwaway stream on a unique subject prefix, runs the binary with
//! `--summary json`, checks the stream holds exactly `published` messages (and, in one test,
//! that each carries its own W3C `traceparent` header), and deletes the stream again.

use async_nats::jetstream;
use std::process::Command;

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn unique_prefix() -> String {
    format!("smoke{}", uuid::Uuid::now_v7().simple())
}

fn publisher(prefix: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_publisher"))
        .args(["--subject-prefix", prefix, "--summary", "json"])
        .args(args)
        .env("NATS_URL", nats_url())
        .output()
        .expect("run the publisher binary")
}

#[tokio::test]
#[ignore = "needs a NATS server with JetStream"]
async fn every_published_send_is_one_stream_message() {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client);
    let prefix = unique_prefix();
    let name = prefix.to_uppercase();
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .unwrap();

    let count: u64 = std::env::var("SMOKE_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let output = publisher(
        &prefix,
        &[
            "--count",
            &count.to_string(),
            "--duplicate-rate",
            "0.3",
            "--topics",
            "10",
            "--seed",
            "42",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut stream = js.get_stream(&name).await.unwrap();
    let messages = stream.info().await.unwrap().state.messages;
    js.delete_stream(&name).await.unwrap();

    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    eprintln!("{stderr}{stdout}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let field = |k: &str| summary[k].as_u64().unwrap();
    let duplicates = (count as f64 * 0.3).round() as u64;
    assert_eq!(field("published"), count);
    assert_eq!(field("failed"), 0);
    assert_eq!(field("duplicates"), duplicates);
    assert_eq!(field("unique"), count - duplicates);
    assert_eq!(messages, count);
}

#[tokio::test]
#[ignore = "needs a NATS server with JetStream"]
async fn a_missing_stream_is_a_clear_error() {
    let prefix = unique_prefix();
    let started = std::time::Instant::now();
    let output = publisher(&prefix, &["--count", "100"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(
        stderr.contains("no JetStream stream captures subject"),
        "{stderr}"
    );
    assert!(started.elapsed().as_secs() < 10);
}

#[tokio::test]
#[ignore = "needs a NATS server with JetStream"]
async fn a_stream_missing_some_topics_stops_the_run_with_exact_counts() {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client);
    let prefix = unique_prefix();
    let name = prefix.to_uppercase();
    // Captures the first topic (so the start-up check passes) but not the others.
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.telemetry.>")],
        ..Default::default()
    })
    .await
    .unwrap();

    let started = std::time::Instant::now();
    let output = publisher(
        &prefix,
        &["--count", "3000", "--topics", "10", "--seed", "1"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut stream = js.get_stream(&name).await.unwrap();
    let messages = stream.info().await.unwrap().state.messages;
    js.delete_stream(&name).await.unwrap();

    eprintln!("{stderr}{stdout}");
    assert!(!output.status.success());
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("no JetStream stream captures subject"),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let field = |k: &str| summary[k].as_u64().unwrap();
    assert!(field("failed") > 0);
    assert_eq!(field("published") + field("failed"), 3000);
    assert_eq!(field("unique") + field("duplicates"), field("published"));
    assert_eq!(messages, field("published"));
}

#[tokio::test]
#[ignore = "needs a NATS server with JetStream"]
async fn every_stream_message_carries_its_own_traceparent() {
    use futures::StreamExt;
    use std::collections::{HashMap, HashSet};

    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client);
    let prefix = unique_prefix();
    let name = prefix.to_uppercase();
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .unwrap();

    let output = publisher(
        &prefix,
        &["--count", "1000", "--duplicate-rate", "0.3", "--seed", "7"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let n = stream.info().await.unwrap().state.messages;
    assert_eq!(n, 1000);
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(n as usize);
    let mut traceparents = HashSet::new();
    // Body -> the traceparents it was sent with: an intentional duplicate has its own.
    let mut by_body: HashMap<Vec<u8>, HashSet<String>> = HashMap::new();
    while let Some(msg) = messages.next().await {
        let msg = msg.unwrap();
        msg.ack().await.unwrap();
        let tp = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned())
            .expect("a traceparent header");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!((parts[0], parts[3]), ("00", "01"), "{tp}");
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{tp}");
        assert!(
            tp.bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{tp}"
        );
        assert!(traceparents.insert(tp.clone()), "repeated {tp}");
        by_body.entry(msg.payload.to_vec()).or_default().insert(tp);
    }
    js.delete_stream(&name).await.unwrap();

    assert_eq!(traceparents.len(), 1000);
    // 300 intentional duplicates: the 700 distinct bodies hold all 1000 distinct traceparents.
    assert_eq!(by_body.len(), 700);
    assert_eq!(by_body.values().map(HashSet::len).sum::<usize>(), 1000);
}
