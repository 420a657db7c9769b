//! Health monitor and WAL replay.
//!
//! Every `HEALTH_CHECK_INTERVAL` the monitor pings Postgres. When it answers and the WAL holds
//! records, the monitor seals the active segment and replays the sealed ones, oldest first,
//! in `REPLAY_BATCH` chunks through the same idempotent, exactly-counted batch write the
//! workers use, and through the same circuit breaker: nothing is written while it is OPEN,
//! and once its timeout has passed the first chunk is the HALF_OPEN probe (so replay never
//! closes the breaker early, and still closes it when no live traffic comes to probe).
//!
//! A segment is deleted only after every one of its records is committed, so a crash
//! mid-replay just replays that segment again: records already committed are recognised by
//! the processed-message record and not counted twice.
//!
//! A damaged WAL line whose header (stream incarnation + sequence) is intact is fetched again
//! from the stream ([`MessageSource`]) and written with the rest before the segment goes. When
//! the stream cannot be asked right now the segment waits for a later tick; only a message
//! the stream no longer holds (or a line whose header is damaged too) is reported lost.
//! Records of a stream incarnation the database does not know keep their segment, loudly.

use crate::guard::breaker::{Permit, State};
use crate::guard::{Commit, WriteFailure, WriteGuard};
use crate::settings::ReplaySettings;
use crate::shutdown::CancellationToken;
use crate::store::batch::{BatchOutcome, COUNTER_SHARDS};
use crate::telemetry::names;
use crate::wal::{CorruptEntry, Damaged, WalEntry};
use futures::future::BoxFuture;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a message could not be fetched again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The stream no longer holds it (deleted, expired, or the stream re-created): lost.
    Gone(String),
    /// The stream cannot be asked right now: try again later.
    Unavailable(String),
}

/// Where damaged WAL records are fetched again from: the stream, by sequence.
pub trait MessageSource: Send + Sync {
    /// Stream message `seq` of incarnation `stream_id`, as a WAL entry.
    fn fetch(&self, stream_id: i32, seq: i64) -> BoxFuture<'_, Result<WalEntry, FetchError>>;
}

pub struct Monitor {
    pub guard: Arc<WriteGuard>,
    pub source: Arc<dyn MessageSource>,
    /// Called with what each replayed chunk committed (metrics).
    pub on_commit: Arc<dyn Fn(&BatchOutcome) + Send + Sync>,
    pub settings: ReplaySettings,
    /// The first of this monitor's counter shards (one per lane, after it).
    pub first_shard: i16,
}

/// How a segment's replay ended.
enum SegmentReplay {
    /// Committed and removed: how many records.
    Done(u64),
    /// Not now (breaker OPEN, database or stream unavailable): stop, try next tick.
    Later,
    /// This segment cannot be replayed here (unknown stream): keep it, go on with the next.
    Kept,
}

impl Monitor {
    /// Runs until shutdown: the first check happens at once (start-up replays what a previous
    /// run left in the WAL).
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            self.tick().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
    }

    /// One health check, and a replay when the database is up and the WAL is not empty.
    pub async fn tick(&self) {
        if self.guard.wal_records() == 0 && self.guard.wal_bytes() == 0 {
            self.probe_if_due().await;
            return;
        }
        if !self.guard.store().ping(Duration::from_secs(2)).await {
            return;
        }
        if let Err(e) = self.replay().await {
            tracing::warn!(error = %format!("{e:#}"), "WAL replay interrupted; will retry");
        }
    }

    /// With nothing to replay and no batch waiting, nobody else may come to probe a breaker
    /// whose timeout has passed (writes that started before it opened and then succeeded do
    /// not close it): the health check is the probe then.
    async fn probe_if_due(&self) {
        if self.guard.breaker.state() == State::Closed {
            return;
        }
        if self.guard.breaker.permit() == Permit::Probe {
            if self.guard.store().ping(Duration::from_secs(2)).await {
                self.guard.breaker.on_success();
            } else {
                self.guard.breaker.on_failure();
            }
        }
    }

    /// Replays every sealed segment it can now. Returns the records replayed.
    pub async fn replay(&self) -> anyhow::Result<u64> {
        let started = Instant::now();
        self.guard.with_wal(|wal| wal.seal()).await?;
        let segments = self.guard.with_wal(|wal| Ok(wal.sealed_segments())).await?;
        let mut replayed = 0u64;
        for segment in segments {
            match self.replay_segment(segment).await? {
                SegmentReplay::Done(n) => replayed += n,
                SegmentReplay::Kept => {}
                SegmentReplay::Later => break,
            }
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

    async fn replay_segment(&self, segment: u64) -> anyhow::Result<SegmentReplay> {
        let read = self
            .guard
            .with_wal(move |wal| wal.read_segment(segment))
            .await?;
        let mut entries = read.entries;
        let Some(salvage) = self.salvage(&read.damaged).await else {
            return Ok(SegmentReplay::Later);
        };
        entries.extend(salvage.recovered.iter().cloned());
        if let Err(ended) = self.write_entries(segment, &entries).await {
            return Ok(ended);
        }
        // Everything is committed: the damaged lines can leave the segment now.
        let damaged = read.damaged;
        let corrupt = damaged.len() as u64;
        self.guard
            .with_wal(move |wal| {
                wal.quarantine(&damaged)?;
                wal.remove_segment(segment)
            })
            .await?;
        salvage.report(corrupt);
        // Counted here, once per record, not per committed chunk: a segment whose replay
        // stopped part-way is written again in full next time (its committed chunks count
        // nothing twice in the store), and must not count its records twice here either.
        metrics::counter!(names::WAL_REPLAYED).increment(entries.len() as u64);
        tracing::info!(
            segment,
            records = entries.len(),
            corrupt,
            "WAL segment replayed and removed"
        );
        Ok(SegmentReplay::Done(entries.len() as u64))
    }

    /// Writes a segment's entries in chunks, through the breaker as a live batch would be: OPEN
    /// writes nothing, the HALF_OPEN probe goes alone. `Err`: how the segment's replay ends
    /// for now.
    async fn write_entries(&self, segment: u64, entries: &[WalEntry]) -> Result<(), SegmentReplay> {
        let mut chunks = entries.chunks(self.settings.chunk.max(1));
        match self.guard.breaker.permit() {
            Permit::Refused => return Err(SegmentReplay::Later),
            Permit::Probe => match chunks.next() {
                Some(first) => match self.write_chunk(0, first).await {
                    Ok(commit) => {
                        self.guard.breaker.on_success();
                        self.committed(&commit);
                    }
                    Err(failure) => return Err(self.failed(segment, failure, true)),
                },
                None => self.guard.breaker.release_probe(),
            },
            Permit::Write => {}
        }
        // Chunks are independent and idempotent: write several at once, each on its own
        // counter shard. The segment goes only when every chunk has committed.
        let lanes = self.settings.lanes.max(1);
        let writes: Vec<_> = chunks
            .enumerate()
            .map(|(i, part)| async move { self.write_chunk(i % lanes, part).await })
            .collect();
        let mut writes = futures::stream::iter(writes).buffer_unordered(lanes);
        let mut failure = None;
        while let Some(result) = writes.next().await {
            match result {
                Ok(commit) => {
                    self.guard.breaker.on_success();
                    self.committed(&commit);
                }
                Err(f) => failure = Some(f),
            }
        }
        match failure {
            Some(f) => Err(self.failed(segment, f, false)),
            None => Ok(()),
        }
    }

    /// Reports a failed write of a segment's chunk.
    fn failed(&self, segment: u64, failure: WriteFailure, probe: bool) -> SegmentReplay {
        match failure {
            WriteFailure::Unavailable(e) => {
                self.guard.breaker.on_failure();
                tracing::warn!(segment, error = %e, "WAL replay write failed; will retry");
                SegmentReplay::Later
            }
            f @ WriteFailure::UnknownStreams(_) => {
                if probe {
                    self.guard.breaker.release_probe();
                }
                metrics::counter!(names::WAL_REPLAY_REFUSED).increment(1);
                tracing::error!(segment, error = %f,
                    "WAL segment cannot be replayed into this database; it is kept (check DATABASE_URL)");
                SegmentReplay::Kept
            }
        }
    }

    fn committed(&self, commit: &Commit) {
        (self.on_commit)(&commit.outcome);
    }

    async fn write_chunk(&self, lane: usize, part: &[WalEntry]) -> Result<Commit, WriteFailure> {
        let (records, dead) = WalEntry::split(part.iter().cloned());
        let shard = ((self.first_shard as usize + lane) % usize::from(COUNTER_SHARDS)) as i16;
        self.guard.write(shard, &records, &dead).await
    }

    /// Fetches the messages of damaged lines again. `None` when the stream cannot be asked
    /// now (the segment waits).
    async fn salvage(&self, damaged: &[Damaged]) -> Option<Salvage> {
        let mut out = Salvage::default();
        for d in damaged {
            let at = &d.at;
            let fetched = match (at.sid, at.seq) {
                (Some(sid), Some(seq)) => self.source.fetch(sid, seq).await,
                _ => Err(FetchError::Gone("its header is damaged too".into())),
            };
            match fetched {
                Ok(entry) => {
                    tracing::warn!(
                        segment = at.segment,
                        line = at.line_no,
                        stream_seq = at.seq,
                        "damaged WAL record fetched again from JetStream"
                    );
                    out.recovered.push(entry);
                }
                Err(FetchError::Unavailable(e)) => {
                    tracing::warn!(segment = at.segment, line = at.line_no, stream_seq = at.seq, error = %e,
                        "cannot fetch a damaged WAL record from JetStream now; the segment waits");
                    return None;
                }
                Err(FetchError::Gone(e)) => out.lost.push((at.clone(), e)),
            }
        }
        Some(out)
    }
}

/// What could be fetched again of a segment's damaged lines.
#[derive(Default)]
struct Salvage {
    recovered: Vec<WalEntry>,
    /// Damaged pieces whose message is gone for good, and why.
    lost: Vec<(CorruptEntry, String)>,
}

impl Salvage {
    /// Once the segment is replayed: `corrupt` damaged pieces, what was recovered and lost.
    fn report(&self, corrupt: u64) {
        metrics::counter!(names::WAL_CORRUPT).increment(corrupt);
        metrics::counter!(names::WAL_RECOVERED).increment(self.recovered.len() as u64);
        metrics::counter!(names::WAL_UNRECOVERABLE).increment(self.lost.len() as u64);
        for (at, why) in &self.lost {
            tracing::error!(segment = at.segment, line = at.line_no, stream_id = at.sid,
                stream_seq = at.seq, error = %why,
                "damaged WAL record could not be recovered; its line is in quarantine.jsonl");
        }
    }
}
