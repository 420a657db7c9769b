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

use crate::broker;
use crate::shutdown::CancellationToken;
use crate::state::SharedState;
use crate::store::Store;
use async_nats::jetstream::{self, consumer::pull::MessagesErrorKind};
use futures::StreamExt;
use shared::{Event, Limits};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// The durable consumer, and the id under which the database knows its stream's incarnation.
pub struct Subscription {
    pub consumer: async_nats::jetstream::consumer::PullConsumer,
    pub stream_id: i32,
}

/// Sets up the stream (with its identity, see [`broker`]), registers its incarnation in the
/// database and gets the consumer. Giving a stream its identity and registering it happen
/// under a lock shared by every replica, so replicas starting together agree on one
/// incarnation.
///
/// Refuses a stream whose sequences end below what was already processed under its identity:
/// it was re-created with a copied identity (or lost messages), and its new messages would be
/// taken as already counted.
pub async fn subscribe(
    client: &async_nats::Client,
    store: &Store,
    cfg: &crate::config::Config,
) -> anyhow::Result<Subscription> {
    let (mut stream, identity) = broker::ensure_stream(client, cfg).await?;
    let created_ns = stream
        .cached_info()
        .created
        .unix_timestamp_nanos()
        .to_string();
    let record = store
        .with_setup_lock(|| async {
            let (identity, adopt) = match identity {
                Some(identity) => (identity, None),
                None => (
                    broker::stamp_identity(client, cfg).await?,
                    Some(created_ns.as_str()),
                ),
            };
            let record = store
                .register_stream(&cfg.stream_name, &identity, adopt)
                .await?;
            Ok((identity, record))
        })
        .await;
    let (identity, record) = record?;
    let last_seq = i64::try_from(stream.info().await?.state.last_sequence).unwrap_or(i64::MAX);
    anyhow::ensure!(
        last_seq >= record.highest_seq,
        "stream {} ends at sequence {last_seq}, but sequences up to {} were already processed \
         under its identity {identity}: it was re-created with a copied identity (or lost \
         messages), and its new messages would be taken as counted. Remove the metadata key \
         (or description tag) {} from the stream to give it a new identity.",
        cfg.stream_name,
        record.highest_seq,
        broker::IDENTITY_KEY,
    );
    let consumer = broker::ensure_consumer(&stream, cfg).await?;
    Ok(Subscription {
        consumer,
        stream_id: record.id,
    })
}

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

/// The message's `traceparent` header, when present and well formed.
pub fn traceparent_of(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    shared::trace::parse(headers?.get(shared::trace::HEADER)?.as_str())
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

/// Runs until `shutdown` is cancelled, then drops the sender so the workers drain and stop.
pub async fn run(
    state: SharedState,
    client: async_nats::Client,
    store: Store,
    txs: Vec<mpsc::Sender<Delivery>>,
    shutdown: CancellationToken,
    mut subscription: Option<Subscription>,
) {
    let cfg = &state.config;
    let limits = Limits {
        max_payload_bytes: cfg.max_payload_bytes as usize,
    };
    while !shutdown.is_cancelled() {
        let sub = match subscription.take() {
            Some(s) => s,
            None => match subscribe(&client, &store, cfg).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "JetStream set-up failed; retrying");
                    pause(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let stream_id = sub.stream_id;
        let batch = (cfg.batch_size as usize).clamp(100, 2000);
        let mut messages = match sub
            .consumer
            .stream()
            .max_messages_per_batch(batch)
            // Short heartbeats: a pull lost with its server is noticed within seconds.
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(10))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start pulling; retrying");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(stream_id, stream = %cfg.stream_name, "pulling messages");
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    release_prefetched(messages, None).await;
                    return;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) => {
                    let (seq, published_unix, delivered) = match msg.info() {
                        Ok(info) => (
                            info.stream_sequence as i64,
                            info.published.unix_timestamp_nanos() as f64 / 1e9,
                            info.delivered,
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, subject = %msg.subject, "message without JetStream metadata; ignoring");
                            continue;
                        }
                    };
                    let decoded = shared::subject::decode_message(
                        &msg.payload,
                        msg.subject.as_str(),
                        &cfg.subject_prefix,
                        &limits,
                    );
                    let traceparent = traceparent_of(msg.headers.as_ref());
                    let tx = &txs[route(&decoded, seq, txs.len())];
                    // Wait for room in the buffer first, so that on shutdown the message is
                    // still in hand and can be returned.
                    let permit = tokio::select! {
                        _ = shutdown.cancelled() => {
                            release_prefetched(messages, Some(msg)).await;
                            return;
                        }
                        permit = tx.reserve() => match permit {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                    };
                    state.buffered.fetch_add(1, Ordering::Relaxed);
                    permit.send(Delivery {
                        msg,
                        stream_id,
                        seq,
                        published_unix,
                        delivered,
                        decoded,
                        traceparent,
                    });
                }
                Some(Err(e)) => {
                    // A missed heartbeat means the pull request is gone (our server or the
                    // consumer leader died): the client would only send a new one when the old
                    // one expires, so start a fresh pull at once.
                    let fatal = matches!(
                        e.kind(),
                        MessagesErrorKind::ConsumerDeleted
                            | MessagesErrorKind::NoResponders
                            | MessagesErrorKind::MissingHeartbeat
                    );
                    tracing::warn!(error = %e, fatal, "pull error");
                    if fatal {
                        break;
                    }
                }
                None => break,
            }
        }
        pause(&shutdown, Duration::from_millis(200)).await;
    }
}

/// On shutdown, messages already pulled into the client's prefetch are handed back at once
/// (negative ack) instead of waiting out ACK_WAIT, so another replica or the next start gets
/// them without delay. The pull subscription is dropped *before* the naks: naking while still
/// subscribed would have JetStream redeliver them straight back to us, over and over.
async fn release_prefetched(
    mut messages: async_nats::jetstream::consumer::pull::Stream,
    in_hand: Option<jetstream::Message>,
) {
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
        let _ = msg.ack_with(jetstream::AckKind::Nak(None)).await;
    }
    if !held.is_empty() {
        tracing::info!(
            released = held.len(),
            "returned prefetched messages to JetStream"
        );
    }
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
