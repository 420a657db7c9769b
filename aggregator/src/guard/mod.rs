//! The write guard: what stands between a batch and the database.
//!
//! [`WriteGuard::make_durable`] returns only once a batch is durable: committed in Postgres,
//! or appended to the WAL and fsynced. Only then may the worker acknowledge it.
//!
//! * [`breaker`]: circuit breaker; while OPEN, batches go straight to the WAL.
//! * [`retry`]: the attempt schedule (at once, then 1s, 2s, 4s, 8s, ±20% jitter).
//! * the database is [`crate::store`], the write-ahead log [`crate::wal`]; replaying the WAL
//!   once the database is back is [`crate::replay`]'s job, above this one.
//!
//! Per the seed design (DESIGN.md): a batch first asks the breaker. CLOSED: it gets the whole
//! attempt schedule, every failure counted by the breaker (which may open meanwhile; the
//! batch still finishes its schedule), then goes to the WAL. OPEN: straight to the WAL.
//! HALF_OPEN: the one probe gets one attempt; its result closes or reopens the breaker.
//!
//! A write that fails because of the data (a Postgres data exception, not a connection
//! problem) says nothing about the database's health: the batch is split in halves until the
//! offending message is alone, and that message becomes a dead letter. Its batch-mates are
//! stored normally. A write of records whose stream the database does not know says nothing
//! about its health either: it is [`WriteFailure::UnknownStreams`], never retried as an
//! outage and never taken as "already processed".

pub mod breaker;
pub mod retry;

use crate::message::{DeadLetter, MessageKey, Record};
use crate::settings::GuardSettings;
use crate::shutdown::CancellationToken;
use crate::store::batch::{BatchOutcome, WriteError};
use crate::store::{is_transient, Store};
use crate::telemetry::names;
use crate::wal::{Wal, WalEntry, WalError};
use breaker::{CircuitBreaker, Permit};
use retry::RetryPolicy;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A batch committed in Postgres.
#[derive(Debug)]
pub struct Commit {
    /// What it counted.
    pub outcome: BatchOutcome,
    /// Messages that ended as dead letters (to terminate rather than acknowledge), including
    /// any the database rejected.
    pub dead: Vec<MessageKey>,
}

/// How a batch became durable: the outcome of [`WriteGuard::make_durable`].
#[derive(Debug)]
pub enum Durable {
    Committed(Commit),
    /// Appended to the WAL (to be replayed and counted later); `dead`: its dead letters.
    Logged {
        dead: Vec<MessageKey>,
    },
}

impl Durable {
    /// Messages to terminate rather than acknowledge.
    pub fn dead(&self) -> &[MessageKey] {
        match self {
            Durable::Committed(c) => &c.dead,
            Durable::Logged { dead } => dead,
        }
    }
}

pub struct WriteGuard {
    store: Store,
    subject_prefix: String,
    pub breaker: CircuitBreaker,
    retry: RetryPolicy,
    write_timeout: Duration,
    wal: Arc<Mutex<Wal>>,
    wal_bytes: AtomicU64,
    wal_records: AtomicU64,
    /// How the latest append ended, a [`WalAppends`] as `u8`: readiness asks it without
    /// touching the WAL's lock.
    wal_appends: AtomicU8,
}

/// Why a write did not commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFailure {
    /// The database (or the connection to it) did not work: worth retrying, and counted by
    /// the breaker.
    Unavailable(String),
    /// Records of stream incarnations the database does not know (a WAL replayed against
    /// another or a restored database): retrying cannot help and the database is fine; the
    /// records stay where they are and an operator must look.
    UnknownStreams(Vec<i32>),
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFailure::Unavailable(e) => f.write_str(e),
            WriteFailure::UnknownStreams(ids) => {
                write!(f, "{}", WriteError::UnknownStreams(ids.clone()))
            }
        }
    }
}

/// Whether the WAL takes batches, as the latest append found it (nothing is known before
/// the first append, which is taken as accepting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalAppends {
    Accepting,
    /// `WAL_MAX_SIZE` reached: batches wait unacknowledged (backpressure).
    Full,
    /// Any other failure (the disk, permissions).
    Failing,
}

impl WalAppends {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => WalAppends::Accepting,
            1 => WalAppends::Full,
            _ => WalAppends::Failing,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            WalAppends::Accepting => 0,
            WalAppends::Full => 1,
            WalAppends::Failing => 2,
        }
    }
}

/// The guard's state as operators see it (`/health`, `/stats`, `/metrics`, `/ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardStatus {
    pub wal_bytes: u64,
    pub wal_records: u64,
    pub breaker: breaker::State,
    pub wal_appends: WalAppends,
}

impl Default for GuardStatus {
    fn default() -> Self {
        Self {
            wal_bytes: 0,
            wal_records: 0,
            breaker: breaker::State::Closed,
            wal_appends: WalAppends::Accepting,
        }
    }
}

impl GuardStatus {
    /// Whether a batch can be made durable now: the database takes writes (the breaker is
    /// CLOSED), or the WAL takes them meanwhile. `None` when it can; else why not.
    pub fn refusal(&self) -> Option<&'static str> {
        if self.breaker == breaker::State::Closed {
            return None;
        }
        match self.wal_appends {
            WalAppends::Accepting => None,
            WalAppends::Full => Some("database unreachable and WAL full"),
            WalAppends::Failing => Some("database unreachable and WAL failing"),
        }
    }
}

impl WriteGuard {
    pub fn new(store: Store, settings: &GuardSettings, wal: Wal) -> Self {
        let guard = Self {
            store,
            subject_prefix: settings.subject_prefix.clone(),
            breaker: CircuitBreaker::new(settings.breaker_threshold, settings.breaker_timeout),
            retry: RetryPolicy::new(settings.attempts, settings.retry_delay),
            write_timeout: settings.write_timeout,
            wal: Arc::new(Mutex::new(wal)),
            wal_bytes: AtomicU64::new(0),
            wal_records: AtomicU64::new(0),
            wal_appends: AtomicU8::new(WalAppends::Accepting.as_u8()),
        };
        guard.refresh_wal_stats();
        guard
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn status(&self) -> GuardStatus {
        GuardStatus {
            wal_bytes: self.wal_bytes(),
            wal_records: self.wal_records(),
            breaker: self.breaker.state(),
            wal_appends: WalAppends::from_u8(self.wal_appends.load(Ordering::Relaxed)),
        }
    }

    /// Bytes currently in the WAL.
    pub fn wal_bytes(&self) -> u64 {
        self.wal_bytes.load(Ordering::Relaxed)
    }

    /// Records currently in the WAL (appended and not yet replayed).
    pub fn wal_records(&self) -> u64 {
        self.wal_records.load(Ordering::Relaxed)
    }

    fn refresh_wal_stats(&self) {
        if let Ok(wal) = self.wal.lock() {
            let s = wal.stats();
            self.wal_bytes.store(s.bytes, Ordering::Relaxed);
            self.wal_records.store(s.records, Ordering::Relaxed);
            metrics::gauge!(names::WAL_BYTES).set(s.bytes as f64);
            metrics::gauge!(names::WAL_RECORDS).set(s.records as f64);
        }
    }

    /// Runs blocking WAL work off the async runtime.
    pub async fn with_wal<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Wal) -> Result<T, WalError> + Send + 'static,
    ) -> Result<T, WalError> {
        let wal = self.wal.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = wal.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .unwrap_or_else(|e| {
            Err(WalError::Io {
                path: std::path::PathBuf::from("<wal task>"),
                source: std::io::Error::other(e.to_string()),
            })
        });
        self.refresh_wal_stats();
        result
    }

    /// Makes a batch durable; see the module docs. `keepalive` is called while the batch
    /// waits between attempts (the worker resets the messages' ack deadline there).
    ///
    /// Returns `None` only during shutdown when the batch could be made durable nowhere:
    /// the caller must then leave the messages unacknowledged.
    pub async fn make_durable<'a>(
        &self,
        shard: i16,
        records: &[Record],
        dead: &[DeadLetter],
        keepalive: &(dyn Fn() -> futures::future::BoxFuture<'a, ()> + Sync),
        shutdown: &CancellationToken,
    ) -> Option<Durable> {
        let mut wal_failures = 0u32;
        loop {
            let attempts = match self.breaker.permit() {
                Permit::Write => self.retry.attempts,
                Permit::Probe => 1,
                Permit::Refused => 0,
            };
            if let Some(commit) = self
                .attempt(shard, records, dead, attempts, keepalive, shutdown)
                .await
            {
                return Some(Durable::Committed(commit));
            }
            match self.append_to_wal(records, dead).await {
                Ok(()) => {
                    return Some(Durable::Logged {
                        dead: dead.iter().map(DeadLetter::key).collect(),
                    })
                }
                Err(e) => {
                    wal_failures += 1;
                    if matches!(e, WalError::Full { .. }) {
                        metrics::counter!(names::WAL_FULL).increment(1);
                    }
                    if wal_failures == 1 || wal_failures.is_multiple_of(30) {
                        tracing::error!(error = %e, "cannot append to the WAL; holding the batch unacknowledged (backpressure)");
                    }
                    if shutdown.is_cancelled() {
                        return None;
                    }
                    keepalive().await;
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Up to `attempts` attempts at the database, on the retry schedule, each result reported
    /// to the breaker. `None` when none committed (the batch goes to the WAL).
    ///
    /// Metrics: every attempt after the first is a retry (`aggregator_batch_retries_total`);
    /// a batch whose attempts all failed is one failure (`aggregator_batch_failures_total`),
    /// whatever ended them: the schedule ran out, the half-open probe failed, the database
    /// refused the batch's streams, or shutdown. A batch the open breaker sends straight to
    /// the WAL made no attempt and is neither. So failed attempts = retries + failures. A
    /// batch the WAL cannot take (full) comes through here again and counts again. WAL
    /// replay writes through [`WriteGuard::write`] and is not counted here.
    async fn attempt<'a>(
        &self,
        shard: i16,
        records: &[Record],
        dead: &[DeadLetter],
        attempts: u32,
        keepalive: &(dyn Fn() -> futures::future::BoxFuture<'a, ()> + Sync),
        shutdown: &CancellationToken,
    ) -> Option<Commit> {
        let failed = || metrics::counter!(names::BATCH_FAILURES).increment(1);
        for attempt in 1..=attempts {
            if attempt > 1 {
                metrics::counter!(names::BATCH_RETRIES).increment(1);
            }
            match self.write(shard, records, dead).await {
                Ok(commit) => {
                    self.breaker.on_success();
                    return Some(commit);
                }
                Err(WriteFailure::Unavailable(err)) => {
                    self.breaker.on_failure();
                    let next = self
                        .retry
                        .delay(attempt)
                        .filter(|_| attempt < attempts && !shutdown.is_cancelled());
                    let Some(delay) = next else {
                        tracing::warn!(batch_len = records.len(), attempt, error = %err,
                            breaker = self.breaker.state().as_str(), "batch write failed; writing to the WAL");
                        failed();
                        return None;
                    };
                    tracing::warn!(batch_len = records.len(), attempt, error = %err,
                        delay_ms = delay.as_millis() as u64, "batch write failed; retrying");
                    keepalive().await;
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            failed();
                            return None;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(failure @ WriteFailure::UnknownStreams(_)) => {
                    // No verdict on the database's health.
                    self.breaker.release_probe();
                    tracing::error!(batch_len = records.len(), error = %failure,
                        "batch refused by the database; writing to the WAL");
                    failed();
                    return None;
                }
            }
        }
        None
    }

    /// One attempt to commit, bounded by `WRITE_TIMEOUT`, isolating poison messages.
    pub async fn write(
        &self,
        shard: i16,
        records: &[Record],
        dead: &[DeadLetter],
    ) -> Result<Commit, WriteFailure> {
        match tokio::time::timeout(
            self.write_timeout,
            write_isolating(&self.store, &self.subject_prefix, shard, records, dead),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(WriteFailure::Unavailable(format!(
                "batch write timed out after {:?}",
                self.write_timeout
            ))),
        }
    }

    async fn append_to_wal(&self, records: &[Record], dead: &[DeadLetter]) -> Result<(), WalError> {
        let entries: Vec<WalEntry> = records
            .iter()
            .cloned()
            .map(WalEntry::Event)
            .chain(dead.iter().cloned().map(WalEntry::Dead))
            .collect();
        let n = entries.len() as u64;
        let result = self
            .with_wal(move |wal| wal.append(&entries).map(|_| ()))
            .await;
        let appends = match &result {
            Ok(()) => WalAppends::Accepting,
            Err(WalError::Full { .. }) => WalAppends::Full,
            Err(_) => WalAppends::Failing,
        };
        self.wal_appends.store(appends.as_u8(), Ordering::Relaxed);
        result?;
        metrics::counter!(names::WAL_APPENDED).increment(n);
        Ok(())
    }

    /// For an exit that cannot wait for the drain: waits (at most `limit`) until no append
    /// is in progress, then keeps any other from starting until the process exits, so the
    /// WAL is left with whole, fsynced appends only. `false` when an append did not finish
    /// within `limit` (a stalled disk): what it wrote is then at worst a torn tail, which the
    /// next start cuts off (it was never acknowledged).
    pub async fn freeze_wal(&self, limit: Duration) -> bool {
        let wal = self.wal.clone();
        let (held, frozen) = tokio::sync::oneshot::channel();
        // A thread of its own, not the runtime's blocking pool: it never returns, and the
        // runtime's shutdown must not wait for it.
        let spawned = std::thread::Builder::new()
            .name("wal-freeze".into())
            .spawn(move || {
                let _lock = wal.lock().unwrap_or_else(|p| p.into_inner());
                let _ = held.send(());
                loop {
                    std::thread::park();
                }
            });
        if spawned.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, frozen).await, Ok(Ok(())))
    }
}

/// Writes a batch; on a data error, splits it until the offending records are alone and
/// turns them into dead letters. Each part is its own (idempotent) transaction. Borrows the
/// records: nothing is copied unless a record has to become a dead letter.
fn write_isolating<'a>(
    store: &'a Store,
    prefix: &'a str,
    shard: i16,
    records: &'a [Record],
    dead: &'a [DeadLetter],
) -> Pin<Box<dyn Future<Output = Result<Commit, WriteFailure>> + Send + 'a>> {
    Box::pin(async move {
        let started = std::time::Instant::now();
        let committed = |outcome: BatchOutcome, dead: &[DeadLetter]| Commit {
            outcome,
            dead: dead.iter().map(DeadLetter::key).collect(),
        };
        let err = match store.write_batch(shard, records, dead).await {
            Ok(outcome) => {
                metrics::histogram!(names::BATCH_WRITE_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                return Ok(committed(outcome, dead));
            }
            Err(WriteError::UnknownStreams(ids)) => return Err(WriteFailure::UnknownStreams(ids)),
            Err(WriteError::Db(e)) if is_transient(&e) => {
                return Err(WriteFailure::Unavailable(e.to_string()))
            }
            Err(WriteError::Db(e)) => e,
        };
        if records.len() > 1 {
            let (left, right) = records.split_at(records.len() / 2);
            let a = write_isolating(store, prefix, shard, left, dead).await?;
            let b = write_isolating(store, prefix, shard, right, &[]).await?;
            return Ok(merge(a, b));
        }
        // The data is at fault. A lone record becomes a dead letter; with no records left,
        // the dead letters themselves are at fault, which their construction (text Postgres
        // can hold) and our own schema should make impossible: report it as a failure rather
        // than drop anything.
        let Some(r) = records.first() else {
            return Err(WriteFailure::Unavailable(format!(
                "dead letters rejected: {err}"
            )));
        };
        metrics::counter!(names::POISON_ISOLATED).increment(1);
        tracing::warn!(stream_seq = r.seq, topic = r.event.topic(), error = %err,
            "database rejected one event; dead-lettering it");
        let mut dead = dead.to_vec();
        dead.push(DeadLetter::new(
            r.stream_id,
            r.seq,
            shared::subject::subject_for(prefix, r.event.topic()),
            &r.event.to_json(),
            format!("rejected by the database: {err}"),
        ));
        match store.write_batch(shard, &[], &dead).await {
            Ok(outcome) => Ok(committed(outcome, &dead)),
            Err(WriteError::UnknownStreams(ids)) => Err(WriteFailure::UnknownStreams(ids)),
            Err(WriteError::Db(e)) => Err(WriteFailure::Unavailable(format!(
                "dead letters rejected: {e}"
            ))),
        }
    })
}

/// Two committed parts of a split batch as one commit.
fn merge(a: Commit, b: Commit) -> Commit {
    let mut dead = a.dead;
    dead.extend(b.dead);
    Commit {
        outcome: a.outcome.merged(b.outcome),
        dead,
    }
}
