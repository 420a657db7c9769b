//! Delivery of the simulator's sends: to JetStream (default) or to the aggregator's
//! `POST /publish`, each with retries and exponential backoff.
//!
//! **JetStream.** Every logical send carries `Nats-Msg-Id: <run-id>-<index>`. A publish that
//! is retried after a timeout or broker error reuses that id, so JetStream's duplicate window
//! turns the retry into a no-op if the first attempt was in fact stored: a retry never becomes
//! two stream messages. An intentional duplicate has a different index, hence a different
//! id, and is a separate stream message, which is what the aggregator must then de-duplicate.
//! The run id is fresh randomness per process, never derived from `--seed`: two runs with the
//! same seed inside the duplicate window must not swallow each other's messages.
//!
//! **HTTP.** Sends are posted as JSON arrays of up to `--http-batch` events. 2xx means the
//! whole batch was accepted. 429, 5xx and transport errors are retried (honouring
//! `Retry-After`); 400/422 fail that batch (its body is logged); any other status (401, 404,
//! 413, ...) means every later batch would fail the same way, so it stops the run. The batch
//! carries an `Idempotency-Key: <run-id>-<first index>` header, reused on retries, for a server
//! that wants to de-duplicate retried requests.
//!
//! **Tracing.** Every JetStream message carries a W3C `traceparent` header, fresh per logical
//! send (an intentional duplicate gets its own), and every `POST /publish` batch carries one
//! as an HTTP header; retries reuse it, like the message id or idempotency key. See
//! [`crate::trace`].
//!
//! A send given up after its retries also stops the run (the target stayed unavailable for
//! the whole retry budget, so the rest would fail the same way): see [`Outcome::fatal`].

use crate::simulator::Outgoing;
use crate::{Config, Via};
use anyhow::{bail, Context as _};
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::Subject;
use bytes::Bytes;
use futures::future::BoxFuture;
use shared::backoff::Backoff;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, error, warn};

/// Attempts per send before it is given up: with the backoff below, about a minute, which
/// rides out a JetStream leader election (seen taking 4.5-10 s on a 3-node cluster) and stays
/// inside the stream's 2-minute duplicate window, so a retry can never store a send twice.
const MAX_ATTEMPTS: u32 = 35;
/// Attempts for a publish answered with "no responders" (no stream captures the subject).
/// A stream missing from the start is caught before the first publish; mid-run, "no
/// responders" is what a stream without a leader answers, so it gets the full budget.
const NO_STREAM_ATTEMPTS: u32 = MAX_ATTEMPTS;
/// Exponential backoff between attempts: 50 ms doubling up to 2 s, ±20% jitter so that
/// thousands of sends failing together do not retry in lockstep.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long an HTTP request may take, including the server waiting for JetStream.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of one chunk of sends.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Sends accepted (PubAck or 2xx) that were new events.
    pub unique: u64,
    /// Sends accepted that were intentional duplicates.
    pub duplicates: u64,
    /// Sends given up on.
    pub failed: u64,
    /// JetStream publishes attempted again after a failed attempt (0 over HTTP).
    pub retries: u64,
    /// Set when the run should stop: the reason, one line.
    pub fatal: Option<String>,
}

impl Outcome {
    fn accepted(sends: &[Outgoing]) -> Self {
        let duplicates = sends.iter().filter(|s| s.duplicate).count() as u64;
        Self {
            unique: sends.len() as u64 - duplicates,
            duplicates,
            ..Self::default()
        }
    }

    fn failed(sends: &[Outgoing], fatal: Option<String>) -> Self {
        Self {
            failed: sends.len() as u64,
            fatal,
            ..Self::default()
        }
    }

    pub(crate) fn add(&mut self, other: Outcome) {
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.failed += other.failed;
        self.retries += other.retries;
        if self.fatal.is_none() {
            self.fatal = other.fatal;
        }
    }
}

/// Where sends go.
#[derive(Clone)]
pub(crate) enum Sink {
    Nats(Arc<NatsSink>),
    Http(Arc<HttpSink>),
}

impl Sink {
    /// Connects to the target named by `config` and checks it can take the run's sends.
    pub(crate) async fn connect(
        config: &Config,
        topics: &[String],
        run_id: &str,
    ) -> anyhow::Result<Self> {
        Ok(match config.via {
            Via::Nats => Sink::Nats(Arc::new(NatsSink::connect(config, topics, run_id).await?)),
            Via::Http => Sink::Http(Arc::new(HttpSink::connect(config, run_id).await?)),
        })
    }

    /// Most sends in one chunk (one future).
    pub(crate) fn chunk_size(&self) -> usize {
        match self {
            Sink::Nats(_) => 1,
            Sink::Http(h) => h.batch,
        }
    }

    /// Most chunks in flight at once.
    pub(crate) fn max_in_flight(&self) -> usize {
        match self {
            Sink::Nats(n) => n.max_in_flight,
            Sink::Http(h) => h.concurrency,
        }
    }

    /// Delivers one chunk, retrying as needed; never fails, the outcome says what happened.
    pub(crate) fn send(&self, chunk: Vec<Outgoing>) -> BoxFuture<'static, Outcome> {
        match self {
            Sink::Nats(n) => {
                let n = Arc::clone(n);
                Box::pin(async move {
                    let mut outcome = Outcome::default();
                    for s in chunk {
                        outcome.add(n.send(s).await);
                    }
                    outcome
                })
            }
            Sink::Http(h) => {
                let h = Arc::clone(h);
                Box::pin(async move { h.send(chunk).await })
            }
        }
    }
}

/// Publishes to JetStream subjects `<prefix>.<topic>`.
pub(crate) struct NatsSink {
    js: async_nats::jetstream::Context,
    /// The subject of each topic, by topic index.
    subjects: Vec<Subject>,
    run_id: String,
    prefix: String,
    max_in_flight: usize,
}

fn no_stream_message(subject: &str, prefix: &str) -> String {
    format!(
        "no JetStream stream captures subject {subject}; start the aggregator first or create \
         stream EVENTS with subjects {}",
        shared::subject::stream_subjects(prefix)
    )
}

impl NatsSink {
    async fn connect(config: &Config, topics: &[String], run_id: &str) -> anyhow::Result<Self> {
        let url = config.nats_url.as_str();
        // A cluster is a comma-separated list of servers. A bad setting, refused credentials
        // or an untrusted certificate is one line naming the variable.
        let connecting = config.nats.connect(url, |o| {
            o.name("publisher").connection_timeout(CONNECT_TIMEOUT)
        });
        let client = connecting.await.map_err(|failure| match failure {
            Err(permanent) => anyhow::anyhow!(permanent),
            Ok(reason) => anyhow::anyhow!(
                "cannot connect to NATS at {}: {reason}",
                shared::secrets::redact_url(url)
            ),
        })?;
        let js = async_nats::jetstream::new(client);
        let prefix = config.subject_prefix.clone();
        let subjects: Vec<Subject> = topics
            .iter()
            .map(|t| Subject::from(shared::subject::subject_for(&prefix, t)))
            .collect();

        // Fail before the first publish when nothing would store it, instead of letting
        // every send run through its retries.
        if let Some(first) = subjects.first() {
            match js.stream_by_subject(first.to_string()).await {
                Ok(stream) => debug!(%stream, subject = %first, "stream found"),
                Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                    bail!(no_stream_message(first, &prefix))
                }
                // The lookup needs permissions a publisher may lack: let the publishes decide.
                Err(e) => warn!(error = %e, subject = %first, "could not look up the stream"),
            }
        }
        Ok(Self {
            js,
            subjects,
            run_id: run_id.to_owned(),
            prefix,
            max_in_flight: config.max_in_flight,
        })
    }

    async fn send(&self, s: Outgoing) -> Outcome {
        let Some(subject) = self.subjects.get(s.topic_index) else {
            let reason = format!("send {} has unknown topic index {}", s.index, s.topic_index);
            return Outcome::failed(std::slice::from_ref(&s), Some(reason));
        };
        let msg_id = format!("{}-{}", self.run_id, s.index);
        let traceparent = shared::trace::new_traceparent();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .publish_once(subject, &msg_id, &traceparent, s.bytes.clone())
                .await;
            let retries = u64::from(attempt - 1);
            match result {
                Ok(ack) => {
                    if ack.duplicate {
                        // An earlier attempt was stored after all; the stream holds it once.
                        debug!(
                            msg_id,
                            seq = ack.sequence,
                            "retry de-duplicated by JetStream"
                        );
                    }
                    return Outcome {
                        retries,
                        ..Outcome::accepted(std::slice::from_ref(&s))
                    };
                }
                Err(e) => {
                    let no_stream = e.kind() == PublishErrorKind::StreamNotFound;
                    let limit = if no_stream {
                        NO_STREAM_ATTEMPTS
                    } else {
                        MAX_ATTEMPTS
                    };
                    if attempt >= limit {
                        let reason = if no_stream {
                            no_stream_message(subject, &self.prefix)
                        } else {
                            format!(
                                "publish to {subject} failed {attempt} times (last error: {e}); \
                                 giving up"
                            )
                        };
                        debug!(msg_id, %subject, error = %e, attempt, "giving up on send");
                        return Outcome {
                            retries,
                            ..Outcome::failed(std::slice::from_ref(&s), Some(reason))
                        };
                    }
                    let delay = BACKOFF.delay(attempt);
                    debug!(msg_id, %subject, error = %e, attempt, ?delay, "publish failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn publish_once(
        &self,
        subject: &Subject,
        msg_id: &str,
        traceparent: &str,
        payload: Bytes,
    ) -> Result<
        async_nats::jetstream::publish::PublishAck,
        async_nats::jetstream::context::PublishError,
    > {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        headers.insert(shared::trace::HEADER, traceparent);
        self.js
            .publish_with_headers(subject.clone(), headers, payload)
            .await?
            .await
    }
}

/// Posts batches to `<url>/publish`.
pub(crate) struct HttpSink {
    client: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    run_id: String,
    batch: usize,
    concurrency: usize,
}

/// What one failed HTTP attempt means.
enum Attempt {
    /// Worth retrying, after at least this long (from `Retry-After`) if given.
    Retry(String, Option<Duration>),
    /// This batch failed; later ones may succeed.
    Reject(String),
    /// Every batch would fail the same way.
    Fatal(String),
}

impl HttpSink {
    async fn connect(config: &Config, run_id: &str) -> anyhow::Result<Self> {
        let base = config.url.trim_end_matches('/');
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            .user_agent(concat!("publisher/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        // Any answer at all proves the server is there; only a transport error is fatal.
        let live = format!("{base}/live");
        client
            .get(&live)
            .send()
            .await
            .with_context(|| format!("cannot reach the aggregator at {base} (GET {live})"))?;
        Ok(Self {
            client,
            endpoint: format!("{base}/publish"),
            token: config.api_token.clone(),
            run_id: run_id.to_owned(),
            batch: config.http_batch,
            concurrency: config.http_concurrency,
        })
    }

    async fn send(&self, sends: Vec<Outgoing>) -> Outcome {
        let Some(first) = sends.first() else {
            return Outcome::default();
        };
        let key = format!("{}-{}", self.run_id, first.index);
        let traceparent = shared::trace::new_traceparent();
        let body = json_array(&sends);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .post_once(&key, &traceparent, body.clone(), sends.len())
                .await
            {
                Ok(()) => return Outcome::accepted(&sends),
                Err(Attempt::Reject(reason)) => {
                    error!(endpoint = %self.endpoint, "{reason}");
                    return Outcome::failed(&sends, None);
                }
                Err(Attempt::Fatal(reason)) => {
                    // The run stops and prints this reason once; no need to log every batch.
                    debug!(key, "{reason}");
                    return Outcome::failed(&sends, Some(reason));
                }
                Err(Attempt::Retry(reason, retry_after)) => {
                    if attempt >= MAX_ATTEMPTS {
                        let reason = format!(
                            "POST {} failed {attempt} times (last: {reason}); giving up",
                            self.endpoint
                        );
                        debug!(key, "{reason}");
                        return Outcome::failed(&sends, Some(reason));
                    }
                    let delay = BACKOFF.delay(attempt).max(retry_after.unwrap_or_default());
                    debug!(key, attempt, ?delay, "{reason}; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn post_once(
        &self,
        key: &str,
        traceparent: &str,
        body: Bytes,
        len: usize,
    ) -> Result<(), Attempt> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .header(shared::trace::HEADER, traceparent)
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Attempt::Retry(format!("request failed: {e}"), None))?;
        let status = response.status();
        if status.is_success() {
            // The contract answers {"status":"accepted","accepted":N}; check N when present.
            if let Ok(v) = response.json::<serde_json::Value>().await {
                if let Some(n) = v.get("accepted").and_then(serde_json::Value::as_u64) {
                    if n != len as u64 {
                        warn!(
                            sent = len,
                            accepted = n,
                            "server accepted a different count"
                        );
                    }
                }
            }
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = response.text().await.unwrap_or_default();
        let text = truncate(text.trim(), 2_000);
        let reason = format!("POST {} answered {status}: {text}", self.endpoint);
        Err(match status.as_u16() {
            429 | 500..=599 => Attempt::Retry(reason, retry_after),
            400 | 422 => Attempt::Reject(reason),
            _ => Attempt::Fatal(reason),
        })
    }
}

/// The sends as one JSON array, copying the event bytes as they are.
fn json_array(sends: &[Outgoing]) -> Bytes {
    let size = sends.iter().map(|s| s.bytes.len() + 1).sum::<usize>() + 2;
    let mut body = Vec::with_capacity(size);
    body.push(b'[');
    for (i, s) in sends.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&s.bytes);
    }
    body.push(b']');
    Bytes::from(body)
}

/// `Retry-After` as delay-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default()
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<Duration> = (1..=8).map(|attempt| BACKOFF.delay(attempt)).collect();
        assert!(delays[0] >= Duration::from_millis(40) && delays[0] <= Duration::from_millis(60));
        assert!(delays[1] >= Duration::from_millis(80) && delays[1] <= Duration::from_millis(120));
        for d in &delays[6..] {
            assert!(*d >= Duration::from_millis(1_600) && *d <= Duration::from_millis(2_400));
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn batches_are_json_arrays_of_the_event_bytes() {
        let sends: Vec<Outgoing> = crate::simulator::Simulator::new(5, 0.4, 2, 2, 1, 0)
            .unwrap()
            .map(|s| s.unwrap())
            .collect();
        let body = json_array(&sends);
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.len(), 5);
        for (v, s) in parsed.iter().zip(&sends) {
            assert_eq!(serde_json::to_vec(v).unwrap().len(), s.bytes.len());
            shared::Event::from_value(v, &shared::Limits::default()).unwrap();
        }
        assert_eq!(&json_array(&[])[..], b"[]");
    }
}
