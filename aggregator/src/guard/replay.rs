//! Health monitor and WAL replay.
//!
//! Every `HEALTH_CHECK_INTERVAL` the monitor pings Postgres. When it answers and the WAL holds
//! records, the monitor seals the active segment and replays the sealed ones, oldest first,
//! in `REPLAY_BATCH` chunks through the same idempotent, exactly-counted batch write the
//! workers use. A segment is deleted only after every one of its records is committed, so a
//! crash mid-replay just replays that segment again: records already committed are
//! recognised by the processed-message record and not counted twice.
//!
//! A WAL line whose body is damaged but whose header (stream incarnation + sequence) is
//! intact is recovered from JetStream by sequence, when the stream still holds it.

use super::wal::{CorruptEntry, WalEntry};
use super::{Durable, WriteGuard};
use crate::shutdown::CancellationToken;
use crate::startup::COUNTER_SHARDS;
use crate::state::SharedState;
use crate::store::batch::{DeadLetter, Record};
use crate::telemetry::names;
use async_nats::jetstream;
use futures::StreamExt;
use shared::Limits;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub struct Monitor {
    pub state: SharedState,
    pub guard: Arc<WriteGuard>,
    pub js: Option<jetstream::Context>,
    pub shard: i16,
}

impl Monitor {
    /// Runs until shutdown: the first check happens at once (start-up replays what a previous
    /// run left in the WAL).
    pub async fn run(self, shutdown: CancellationToken) {
        let every = self.state.config.health_check_interval;
        loop {
            self.tick().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One health check, and a replay when the database is up and the WAL is not empty.
    pub async fn tick(&self) {
        let up = self
            .guard
            .store()
            .ping(std::time::Duration::from_secs(2))
            .await;
        self.state.db_up.store(up, Ordering::Relaxed);
        if up && self.guard.wal_records() > 0 {
            if let Err(e) = self.replay().await {
                tracing::warn!(error = %e, "WAL replay interrupted; will retry");
            }
        }
    }

    /// Replays every sealed segment. Stops at the first failure (the rest waits for the next
    /// tick).
    pub async fn replay(&self) -> anyhow::Result<u64> {
        let started = Instant::now();
        self.guard.with_wal(|wal| wal.seal()).await?;
        let segments = self.guard.with_wal(|wal| Ok(wal.sealed_segments())).await?;
        let chunk = self.state.config.replay_batch as usize;
        let mut replayed = 0u64;
        for segment in segments {
            let read = self
                .guard
                .with_wal(move |wal| wal.read_segment(segment))
                .await?;
            let mut entries = read.entries;
            entries.extend(self.recover_from_stream(&read.corrupt).await);
            // Chunks are independent and idempotent: write several at once, each on its own
            // counter shard. The segment goes only when every chunk has committed.
            let parallel = usize::from(self.state.config.workers).max(1);
            let chunk_writes: Vec<_> = entries
                .chunks(chunk)
                .enumerate()
                .map(|(i, part)| self.write_chunk(i % parallel, part))
                .collect();
            let mut writes = futures::stream::iter(chunk_writes).buffer_unordered(parallel);
            let mut failure = None;
            while let Some((n, result)) = writes.next().await {
                match result {
                    Ok(settled) => {
                        if let Durable::Committed(o) = &settled.durable {
                            crate::worker::record_outcome_metrics(&self.state, o);
                        }
                        replayed += n as u64;
                        metrics::counter!(names::WAL_REPLAYED).increment(n as u64);
                    }
                    Err(e) => failure = Some(e.0),
                }
            }
            drop(writes);
            if let Some(e) = failure {
                self.guard.breaker.on_failure();
                anyhow::bail!("replay write failed: {e}");
            }
            self.guard.breaker.on_success();
            self.guard
                .with_wal(move |wal| wal.remove_segment(segment))
                .await?;
            tracing::info!(
                segment,
                records = entries.len(),
                "WAL segment replayed and removed"
            );
        }
        if replayed > 0 {
            let secs = started.elapsed().as_secs_f64();
            metrics::histogram!(names::WAL_REPLAY_SECONDS).record(secs);
            tracing::info!(
                replayed,
                seconds = secs,
                per_second = (replayed as f64 / secs.max(1e-9)) as u64,
                "WAL replay finished"
            );
        }
        Ok(replayed)
    }

    async fn write_chunk(
        &self,
        lane: usize,
        part: &[WalEntry],
    ) -> (usize, Result<super::Settled, super::WriteFailed>) {
        let (records, dead) = WalEntry::split(part.iter().cloned());
        let shard = ((self.shard as usize + lane) % usize::from(COUNTER_SHARDS)) as i16;
        (part.len(), self.guard.write(shard, &records, &dead).await)
    }

    /// Fetches damaged WAL records back from JetStream by sequence. Records that cannot be
    /// recovered are reported loudly; their lines stay in the WAL's quarantine file.
    pub async fn recover_from_stream(&self, corrupt: &[CorruptEntry]) -> Vec<WalEntry> {
        let mut recovered = Vec::new();
        for c in corrupt {
            metrics::counter!(names::WAL_CORRUPT).increment(1);
            let entry = match (c.sid, c.seq) {
                (Some(sid), Some(seq)) => self.fetch(sid, seq).await,
                _ => Err(anyhow::anyhow!("its header is damaged too")),
            };
            match entry {
                Ok(e) => {
                    metrics::counter!(names::WAL_RECOVERED).increment(1);
                    tracing::warn!(
                        segment = c.segment,
                        line = c.line_no,
                        stream_seq = c.seq,
                        "damaged WAL record recovered from JetStream"
                    );
                    recovered.push(e);
                }
                Err(e) => {
                    metrics::counter!(names::WAL_UNRECOVERABLE).increment(1);
                    tracing::error!(segment = c.segment, line = c.line_no, stream_id = c.sid, stream_seq = c.seq,
                        error = %format!("{e:#}"),
                        "damaged WAL record could not be recovered; its line is kept in quarantine.jsonl");
                }
            }
        }
        recovered
    }

    async fn fetch(&self, sid: i32, seq: i64) -> anyhow::Result<WalEntry> {
        let js = self
            .js
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("NATS is not connected"))?;
        let (name, created_ns): (String, String) =
            sqlx::query_as("SELECT name, created_ns FROM streams WHERE id = $1")
                .bind(sid)
                .fetch_one(self.guard.store().pool())
                .await?;
        let stream = js.get_stream(&name).await?;
        let current = stream
            .cached_info()
            .created
            .unix_timestamp_nanos()
            .to_string();
        anyhow::ensure!(
            current == created_ns,
            "stream {name} was re-created since; the message is gone"
        );
        let msg = stream.get_raw_message(seq as u64).await?;
        let limits = Limits {
            max_payload_bytes: self.state.config.max_payload_bytes as usize,
        };
        let prefix = &self.state.config.subject_prefix;
        let subject = msg.subject.to_string();
        let traceparent = crate::intake::traceparent_of(Some(&msg.headers));
        Ok(
            match crate::intake::decode(&msg.payload, &subject, prefix, &limits) {
                Ok(event) => WalEntry::Event(Record {
                    stream_id: sid,
                    seq,
                    event,
                    traceparent,
                }),
                Err(reason) => {
                    WalEntry::Dead(DeadLetter::new(sid, seq, subject, &msg.payload, reason))
                }
            },
        )
    }
}
