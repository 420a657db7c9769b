//! Intake: pulls messages from the durable JetStream consumer, decodes and validates them, and
//! routes each to a worker's bounded buffer.
//!
//! Routing is by a hash of `(topic, event_id)`: every copy of an event goes to the same
//! worker, so two workers never insert the same key at the same time (which would make one
//! transaction wait for the other's commit). Undecodable messages are routed by sequence.
//!
//! The buffers (`MAX_BUFFER_SIZE` in all) are bounded channels: when a worker falls behind,
//! `send` waits and intake stops pulling, so memory stays bounded and JetStream keeps the rest.
//! Each message is tagged with the id of the stream incarnation it came from. When the
//! consumer disappears (stream deleted and re-created) intake sets everything up again and
//! registers the new incarnation.

use crate::settings::{BrokerSettings, IntakeSettings};
use crate::shutdown::{self, CancellationToken};
use crate::store::Store;
use crate::subscription::{self, Subscription};
use async_nats::jetstream::consumer::pull::{MessagesErrorKind, Stream as Messages};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use shared::Event;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A message taken from the stream, waiting to be written.
pub struct Delivery {
    pub msg: jetstream::Message,
    pub stream_id: i32,
    pub seq: i64,
    /// When JetStream stored the message (Unix seconds), for the end-to-end lag metric.
    pub published_unix: f64,
    /// How many times JetStream has delivered this message (1 the first time).
    pub delivered: i64,
    /// The decoded, validated event, or why it is invalid.
    pub decoded: Result<Event, String>,
    /// The message's W3C `traceparent` header, when present and well formed.
    pub traceparent: Option<String>,
}

/// Messages handed to the workers' buffers and not yet taken by a worker (shared with the
/// workers, who take them out, and the API, which reports it).
#[derive(Debug, Clone, Default)]
pub struct BufferCount(Arc<AtomicI64>);

impl BufferCount {
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n as i64, Ordering::Relaxed);
    }

    pub fn sub(&self, n: usize) {
        self.0.fetch_sub(n as i64, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed).max(0)
    }
}

/// Which of `n` workers handles a message: by event key when it decodes, else by sequence.
pub fn route(decoded: &Result<Event, String>, seq: i64, n: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match decoded {
        Ok(e) => (e.topic(), e.event_id()).hash(&mut h),
        Err(_) => seq.hash(&mut h),
    }
    (h.finish() % n.max(1) as u64) as usize
}

/// How a pull ended.
enum PullEnded {
    /// The pull request is gone (error, end of stream): start a new one.
    Lost,
    /// Shutting down; prefetched messages were handed back.
    Shutdown,
}

pub struct Intake {
    pub settings: IntakeSettings,
    pub broker: BrokerSettings,
    pub client: async_nats::Client,
    pub store: Store,
    pub buffers: Vec<mpsc::Sender<Delivery>>,
    pub buffered: BufferCount,
    pub shutdown: CancellationToken,
}

impl Intake {
    /// Runs until `shutdown` is cancelled, then drops the buffers so the workers drain and
    /// stop. `subscription`: the one start-up already set up.
    pub async fn run(self, mut subscription: Option<Subscription>) {
        while !self.shutdown.is_cancelled() {
            let sub = match subscription.take() {
                Some(s) => s,
                None => {
                    let set_up = shutdown::retry_until("JetStream set-up", &self.shutdown, || {
                        subscription::subscribe(&self.client, &self.store, &self.broker)
                    });
                    match set_up.await {
                        Some(s) => s,
                        None => return,
                    }
                }
            };
            let messages = sub
                .consumer
                .stream()
                .max_messages_per_batch(self.settings.pull_batch)
                // Short heartbeats: a pull lost with its server is noticed within seconds.
                .heartbeat(Duration::from_secs(2))
                .expires(Duration::from_secs(10))
                .messages()
                .await;
            let messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start pulling; setting up again");
                    shutdown::pause(&self.shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(stream_id = sub.stream_id, stream = %self.broker.stream_name, "pulling messages");
            match self.forward(messages, sub.stream_id).await {
                PullEnded::Shutdown => return,
                PullEnded::Lost => {
                    shutdown::pause(&self.shutdown, Duration::from_millis(200)).await
                }
            }
        }
    }

    /// Hands every message of one pull to its worker's buffer, until the pull is lost or
    /// shutdown.
    async fn forward(&self, mut messages: Messages, stream_id: i32) -> PullEnded {
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    release_prefetched(messages, None).await;
                    return PullEnded::Shutdown;
                }
                next = messages.next() => next,
            };
            let msg = match next {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    // A missed heartbeat means the pull request is gone (our server or the
                    // consumer leader died): the client would only send a new one when the
                    // old one expires, so start a fresh pull at once.
                    let lost = matches!(
                        e.kind(),
                        MessagesErrorKind::ConsumerDeleted
                            | MessagesErrorKind::NoResponders
                            | MessagesErrorKind::MissingHeartbeat
                    );
                    tracing::warn!(error = %e, fatal = lost, "pull error");
                    if lost {
                        return PullEnded::Lost;
                    }
                    continue;
                }
                None => return PullEnded::Lost,
            };
            let Some(delivery) = self.delivery(msg, stream_id) else {
                continue;
            };
            let tx = &self.buffers[route(&delivery.decoded, delivery.seq, self.buffers.len())];
            // Wait for room in the buffer first, so that on shutdown the message is still in
            // hand and can be returned.
            let permit = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    release_prefetched(messages, Some(delivery.msg)).await;
                    return PullEnded::Shutdown;
                }
                permit = tx.reserve() => match permit {
                    Ok(p) => p,
                    // The workers are gone: only on shutdown.
                    Err(_) => return PullEnded::Shutdown,
                },
            };
            self.buffered.add(1);
            permit.send(delivery);
        }
    }

    /// Decodes a message into what a worker needs; `None` for one without JetStream metadata
    /// (not from a stream, nothing to acknowledge).
    fn delivery(&self, msg: jetstream::Message, stream_id: i32) -> Option<Delivery> {
        let info = match msg.info() {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, subject = %msg.subject, "message without JetStream metadata; ignoring");
                return None;
            }
        };
        let (seq, published_unix, delivered) = (
            info.stream_sequence as i64,
            info.published.unix_timestamp_nanos() as f64 / 1e9,
            info.delivered,
        );
        let decoded = shared::subject::decode_message(
            &msg.payload,
            msg.subject.as_str(),
            &self.settings.subject_prefix,
            &self.settings.limits,
        );
        let traceparent = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(shared::trace::HEADER))
            .and_then(|v| shared::trace::parse(v.as_str()));
        Some(Delivery {
            msg,
            stream_id,
            seq,
            published_unix,
            delivered,
            decoded,
            traceparent,
        })
    }
}

/// On shutdown, messages already pulled into the client's prefetch are handed back at once
/// (negative ack) instead of waiting out ACK_WAIT, so another replica or the next start gets
/// them without delay. The pull subscription is dropped *before* the naks: naking while still
/// subscribed would have JetStream redeliver them straight back to us, over and over.
async fn release_prefetched(mut messages: Messages, in_hand: Option<jetstream::Message>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut held: Vec<jetstream::Message> = in_hand.into_iter().collect();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(
        deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
        messages.next(),
    )
    .await
    {
        held.push(msg);
    }
    drop(messages);
    for msg in &held {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    }
    if !held.is_empty() {
        tracing::info!(
            released = held.len(),
            "returned prefetched messages to JetStream"
        );
    }
}
