//! Workers: take a batch from the buffer, decode it, write it in one transaction, and only
//! then acknowledge it to JetStream.
//!
//! Each worker owns one buffer (intake routes messages to it by event key) and closes a batch
//! at `BATCH_SIZE` messages or `BATCH_TIMEOUT` after its first message; `WORKERS` batches are
//! in the database at once, never two with the same event key.
//!
//! A message that fails to decode or validate becomes a dead letter, recorded in the same
//! transaction as its batch-mates and terminated (never redelivered). The write itself goes
//! through the [`WriteGuard`]: retries, circuit breaker, WAL. Nothing is acknowledged before
//! it is durable (committed, or fsynced to the WAL).

use crate::failpoint::Failpoint;
use crate::guard::{Durable, WriteGuard};
use crate::intake::BufferCount;
use crate::intake::Delivery;
use crate::message::{DeadLetter, MessageKey, Record};
use crate::settings::WorkerSettings;
use crate::shutdown::CancellationToken;
use crate::store::batch::BatchOutcome;
use crate::telemetry::names;
use crate::telemetry::TopicLabels;
use async_nats::jetstream::AckKind;
use futures::future::BoxFuture;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct Worker {
    pub id: u16,
    pub shard: i16,
    pub settings: WorkerSettings,
    /// Messages waiting in the buffers, which this worker takes out.
    pub buffered: BufferCount,
    /// `topic` label values of the counters.
    pub labels: Arc<TopicLabels>,
    pub guard: Arc<WriteGuard>,
    pub rx: mpsc::Receiver<Delivery>,
    pub shutdown: CancellationToken,
    pub failpoint: Arc<Failpoint>,
    /// Shared by all workers: normal batches hold it for reading, a suspect's solo attempt
    /// holds it for writing, so nothing else runs while a suspect is tried (if the process
    /// dies then, the suspect is the culprit).
    pub solo: Arc<tokio::sync::RwLock<()>>,
}

impl Worker {
    /// Runs until the buffer is closed and empty.
    pub async fn run(mut self) {
        let max = self.settings.batch_size;
        let mut batch = Vec::with_capacity(max);
        loop {
            batch.clear();
            if collect(&mut self.rx, &mut batch, max, self.settings.batch_timeout).await == 0 {
                tracing::debug!(worker = self.id, "buffer closed; worker done");
                return;
            }
            self.buffered.sub(batch.len());
            self.process(&mut batch).await;
        }
    }

    /// Writes a batch. Messages JetStream has delivered more than `MAX_DELIVER` times are
    /// suspects (processing them may have crashed the process): after their batch-mates are
    /// settled, each is tried alone, once; a suspect that comes back after its solo attempt
    /// is dead-lettered without being processed again. The attempt is recorded in Postgres
    /// before it is made, so the verdict survives the crash it may cause.
    async fn process(&self, batch: &mut [Delivery]) {
        // A message delivered twice into one batch is written once (and acked twice).
        batch.sort_unstable_by_key(|d| (d.stream_id, d.seq));
        let max = self.settings.max_deliver;
        let (suspects, normal): (Vec<&mut Delivery>, Vec<&mut Delivery>) =
            batch.iter_mut().partition(|d| d.delivered > max);
        {
            let _shared = self.solo.read().await;
            self.settle(normal, None).await;
        }
        for suspect in suspects {
            let _exclusive = self.solo.write().await;
            let doomed = match self
                .guard
                .store()
                .record_suspect_attempt(suspect.stream_id, suspect.seq)
                .await
            {
                Ok(before) => before >= 1,
                // Without the database the attempt cannot be recorded; the write guard will
                // put it in the WAL anyway.
                Err(_) => false,
            };
            let reason = doomed.then(|| {
                format!(
                    "delivered {} times without being stored, and a solo attempt did not \
                     finish (it may crash the aggregator)",
                    suspect.delivered
                )
            });
            tracing::warn!(
                stream_seq = suspect.seq,
                delivered = suspect.delivered,
                doomed,
                "message redelivered more than MAX_DELIVER times; settling it alone"
            );
            // Its own counter: a crash loop is not the database rejecting data
            // (`aggregator_poison_messages_total`).
            let verdict = if doomed { "dead_letter" } else { "solo" };
            let recorded = self.settle(vec![suspect], reason).await;
            // A doomed message counts once, when its dead letter is first recorded: a copy
            // redelivered before its Term reached the server (ACK_WAIT passed meanwhile) is
            // settled again and finds it already recorded.
            if !(doomed && recorded == Some(0)) {
                metrics::counter!(names::MAX_DELIVER_EXCEEDED, "verdict" => verdict).increment(1);
            }
        }
    }

    /// Makes a group of messages durable, then acknowledges them. With `doom`, every message
    /// of the group becomes a dead letter with that reason. Returns how many dead letters a
    /// commit recorded for the first time (`None`: not committed, the WAL took the group or
    /// shutdown left it to JetStream).
    async fn settle(&self, mut group: Vec<&mut Delivery>, doom: Option<String>) -> Option<i64> {
        if group.is_empty() {
            return None;
        }
        let (records, dead) = take_records(&mut group, doom);
        let group: Vec<&Delivery> = group.into_iter().map(|d| &*d).collect();
        self.failpoint.before_write(&records);
        self.failpoint.hold(&records).await;

        // While the group waits for the database or the WAL, keep its messages ours.
        let keepalive = || -> BoxFuture<'_, ()> {
            Box::pin(async {
                for d in &group {
                    let _ = d.msg.ack_with(AckKind::Progress).await;
                }
            })
        };
        let durable = self
            .guard
            .make_durable(self.shard, &records, &dead, &keepalive, &self.shutdown)
            .await;
        let Some(durable) = durable else {
            // Shutting down with nowhere durable to put the batch: JetStream keeps it.
            for d in &group {
                let _ = d.msg.ack_with(AckKind::Nak(None)).await;
            }
            return None;
        };
        let mut recorded = None;
        if let Durable::Committed(commit) = &durable {
            self.failpoint.after_commit();
            record_outcome_metrics(&self.labels, &commit.outcome);
            recorded = Some(commit.outcome.dead_lettered);
        }
        trace_durable(&records, &durable);
        record_batch_metrics(&group);
        acknowledge(&group, durable.dead()).await;
        recorded
    }
}

/// Follows each event from publish to commit: its trace context is on this log line (and in
/// its stored row). Debug level: cheap when disabled.
fn trace_durable(records: &[Record], durable: &Durable) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let how = match durable {
        Durable::Committed(_) => "committed",
        Durable::Logged { .. } => "logged to WAL",
    };
    for r in records {
        tracing::debug!(
            topic = r.event.topic(),
            event_id = r.event.event_id(),
            stream_seq = r.seq,
            traceparent = r.traceparent.as_deref().unwrap_or(""),
            how,
            "event durable"
        );
    }
}

/// Acknowledges a durable group: dead letters are terminated (never redelivered), the rest
/// acknowledged.
async fn acknowledge(group: &[&Delivery], dead: &[MessageKey]) {
    let dead: HashSet<&MessageKey> = dead.iter().collect();
    for d in group {
        let key = MessageKey {
            stream_id: d.stream_id,
            seq: d.seq,
        };
        let kind = if dead.contains(&key) {
            AckKind::Term
        } else {
            AckKind::Ack
        };
        if let Err(e) = d.msg.ack_with(kind).await {
            // The message is durable; if the ack is lost it is redelivered and then
            // recognised as already processed.
            tracing::debug!(error = %e, seq = d.seq, "ack failed");
        }
    }
}

/// Waits for the first message, then gathers more until `max` or `timeout`. Returns how many
/// were gathered; 0 only when the buffer is closed and empty.
async fn collect(
    rx: &mut mpsc::Receiver<Delivery>,
    batch: &mut Vec<Delivery>,
    max: usize,
    timeout: Duration,
) -> usize {
    if rx.recv_many(batch, max).await == 0 {
        return 0;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, rx.recv_many(batch, max - batch.len())).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    batch.len()
}

/// Moves the decoded events out of a group (sorted by stream position) into records to
/// store, and turns the rest into dead letters.
fn take_records(
    group: &mut [&mut Delivery],
    doom: Option<String>,
) -> (Vec<Record>, Vec<DeadLetter>) {
    let mut records = Vec::with_capacity(group.len());
    let mut dead = Vec::new();
    let mut last = None;
    for d in group.iter_mut() {
        if last == Some((d.stream_id, d.seq)) {
            continue;
        }
        last = Some((d.stream_id, d.seq));
        let decoded = std::mem::replace(&mut d.decoded, Err(String::new()));
        let reason = match (decoded, &doom) {
            (Ok(event), None) => {
                records.push(Record {
                    stream_id: d.stream_id,
                    seq: d.seq,
                    event,
                    traceparent: d.traceparent.take(),
                });
                continue;
            }
            (_, Some(reason)) => reason.clone(),
            (Err(e), None) => e,
        };
        tracing::warn!(stream_seq = d.seq, subject = %d.msg.subject, %reason, "dead-lettering message");
        dead.push(DeadLetter::new(
            d.stream_id,
            d.seq,
            d.msg.subject.to_string(),
            &d.msg.payload,
            reason,
        ));
    }
    (records, dead)
}

/// Counters of a committed batch (or replayed WAL chunk), per topic.
pub fn record_outcome_metrics(labels: &TopicLabels, o: &BatchOutcome) {
    for t in &o.topics {
        let label = labels.label(&t.topic);
        metrics::counter!(names::RECEIVED, "topic" => label.clone()).increment(t.received as u64);
        metrics::counter!(names::UNIQUE, "topic" => label.clone()).increment(t.unique as u64);
        metrics::counter!(names::DUPLICATE, "topic" => label)
            .increment((t.received - t.unique) as u64);
    }
    metrics::counter!(names::DEAD_LETTERS).increment(o.dead_lettered as u64);
    metrics::counter!(names::REDELIVERED_SKIPPED).increment(o.already_processed as u64);
}

/// Batch size and publish-to-durable lag of each message.
fn record_batch_metrics(batch: &[&Delivery]) {
    metrics::histogram!(names::BATCH_SIZE).record(batch.len() as f64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let lag = metrics::histogram!(names::LAG_SECONDS);
    for d in batch {
        lag.record((now - d.published_unix).max(0.0));
    }
}
