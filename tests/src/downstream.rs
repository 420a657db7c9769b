//! What downstream sees: the output stream of the stream out, read whole, and a minimal
//! Server-Sent Events client for the live tail.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// One message of the output stream.
#[derive(Debug, Clone)]
pub struct OutputMessage {
    pub seq: u64,
    pub subject: String,
    /// `Nats-Msg-Id`: `<topic>:<event_id>`.
    pub msg_id: String,
    /// `Aggregator-Position`.
    pub position: String,
    pub body: Value,
}

/// Messages the output stream `name` holds (0 when it does not exist).
pub async fn output_count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message of the output stream `name`, in stream order.
pub async fn output_messages(js: &jetstream::Context, name: &str) -> Vec<OutputMessage> {
    let mut stream = js.get_stream(name).await.expect("output stream");
    let total = stream.info().await.unwrap().state.messages;
    let reader = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::with_capacity(total as usize);
    while (out.len() as u64) < total {
        let mut batch = reader
            .batch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let before = out.len();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            let header = |k: async_nats::HeaderName| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(k))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            out.push(OutputMessage {
                seq: m.info().unwrap().stream_sequence,
                subject: m.subject.to_string(),
                msg_id: header(async_nats::header::NATS_MESSAGE_ID),
                position: header("Aggregator-Position".parse().unwrap()),
                body: serde_json::from_slice(&m.payload).expect("output message is JSON"),
            });
        }
        assert!(
            out.len() > before,
            "output stream stopped delivering at {}/{total}",
            out.len()
        );
    }
    out
}

/// The stream out's promise: the output stream holds each key of `stored` (the events
/// table's `(topic, event_id)`s) exactly once, nothing else, under `<prefix>.<topic>`, in
/// strictly increasing positions. Panics naming what is wrong.
pub fn assert_each_stored_event_once(
    messages: &[OutputMessage],
    stored: &[(String, String)],
    prefix: &str,
) {
    let problems = stream_out_problems(messages, stored, prefix);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What breaks the stream out's promise (see [`assert_each_stored_event_once`]), if anything.
pub fn stream_out_problems(
    messages: &[OutputMessage],
    stored: &[(String, String)],
    prefix: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    let mut repeated = Vec::new();
    for m in messages {
        if let Some(first) = seen.insert(&m.msg_id, m.seq) {
            repeated.push(format!("{} (seq {first} and {})", m.msg_id, m.seq));
        }
    }
    if !repeated.is_empty() {
        problems.push(format!(
            "{} published more than once, e.g. {:?}",
            repeated.len(),
            &repeated[..repeated.len().min(5)]
        ));
    }
    let want: std::collections::BTreeSet<String> =
        stored.iter().map(|(t, e)| format!("{t}:{e}")).collect();
    let got: std::collections::BTreeSet<String> = seen.keys().map(|k| (*k).to_owned()).collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    if !missing.is_empty() || !extra.is_empty() {
        problems.push(format!(
            "output stream: {} keys for {} stored events; {} missing (e.g. {:?}), {} not stored \
             (e.g. {:?})",
            got.len(),
            want.len(),
            missing.len(),
            &missing[..missing.len().min(5)],
            extra.len(),
            &extra[..extra.len().min(5)]
        ));
    }
    let mut last = (0i64, 0i64);
    for m in messages {
        let topic = m.body["topic"].as_str().unwrap_or_default();
        let event_id = m.body["event_id"].as_str().unwrap_or_default();
        let mut wrong = Vec::new();
        if m.msg_id != format!("{topic}:{event_id}") {
            wrong.push("Nats-Msg-Id is not <topic>:<event_id> of the body");
        }
        if m.subject != format!("{prefix}.{topic}") {
            wrong.push("subject is not <prefix>.<topic>");
        }
        if !m.body["stored_at"].is_string() {
            wrong.push("no stored_at");
        }
        let position = m
            .position
            .split_once('-')
            .and_then(|(x, i)| Some((x.parse::<i64>().ok()?, i.parse::<i64>().ok()?)));
        match position {
            Some(p) if p > last => last = p,
            Some(p) => wrong.push(if p == last {
                "position repeated"
            } else {
                "position goes back"
            }),
            None => wrong.push("no Aggregator-Position"),
        }
        if !wrong.is_empty() {
            problems.push(format!(
                "output seq {} ({}): {}",
                m.seq,
                m.msg_id,
                wrong.join(", ")
            ));
            break;
        }
    }
    problems
}

/// Every `(topic, event_id)` in the events table.
pub async fn stored_keys(db: &sqlx::PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT topic, event_id FROM events")
        .fetch_all(db)
        .await
        .unwrap()
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub data: Value,
}

/// A live tail being read.
pub struct SseClient {
    response: reqwest::Response,
    pending: String,
    /// The last `id` received, with or without data (the tail opens with its position).
    pub last_id: Option<String>,
}

impl SseClient {
    /// Opens `url` (`Last-Event-ID` when `resume` is set); panics unless it answers 200
    /// with `text/event-stream`.
    pub async fn open(url: &str, resume: Option<&str>) -> SseClient {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut req = client.get(url);
        if let Some(id) = resume {
            req = req.header("Last-Event-ID", id);
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        SseClient {
            response,
            pending: String::new(),
            last_id: None,
        }
    }

    /// The next event (keep-alive comments skipped); `None` when the stream ended or nothing
    /// came for `idle`.
    pub async fn next(&mut self, idle: Duration) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut id = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !id.is_empty() {
                    self.last_id = Some(id.clone());
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).expect("SSE data is JSON");
                return Some(SseEvent { id, data });
            }
            match tokio::time::timeout(idle, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.pending.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }
}
