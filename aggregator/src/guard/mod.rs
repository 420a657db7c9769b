//! The write guard: what stands between a batch and the database.
//!
//! [`WriteGuard::make_durable`] returns only once a batch is durable: committed in Postgres,
//! or appended to the WAL and fsynced. Only then may the worker acknowledge it.
//!
//! * [`breaker`]: circuit breaker; while OPEN, batches go straight to the WAL.
//! * [`retry`]: backoff schedule (immediate, 1s, 2s, 4s, 8s, ±20% jitter).
//! * [`wal`]: the write-ahead log on local disk.
//! * [`replay`]: the health monitor that pings the database and replays the WAL.
//!
//! A write that fails because of the data (a Postgres data exception, not a connection
//! problem) says nothing about the database's health: the batch is split in halves until the
//! offending message is alone, and that message becomes a dead letter. Its batch-mates are
//! stored normally.

pub mod breaker;
pub mod replay;
pub mod retry;
pub mod wal;

use crate::shutdown::CancellationToken;
use crate::store::batch::{self, BatchOutcome, DeadLetter, Record};
use crate::store::{is_transient, Store};
use crate::telemetry::names;
use breaker::{CircuitBreaker, Permit};
use retry::Backoff;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wal::{Wal, WalEntry, WalError};

/// How a batch became durable.
#[derive(Debug)]
pub enum Durable {
    /// Committed in Postgres.
    Committed(BatchOutcome),
    /// Appended to the WAL (to be replayed and counted later).
    Logged,
}

/// The outcome of [`WriteGuard::make_durable`].
#[derive(Debug)]
pub struct Settled {
    pub durable: Durable,
    /// Messages that ended as dead letters (to terminate rather than acknowledge), including
    /// any the database rejected.
    pub dead: Vec<(i32, i64)>,
}

pub struct WriteGuard {
    store: Store,
    subject_prefix: String,
    pub breaker: CircuitBreaker,
    backoff: Backoff,
    write_timeout: Duration,
    wal: Arc<Mutex<Wal>>,
    wal_bytes: AtomicU64,
    wal_records: AtomicU64,
}

/// A transient failure: the database (or the connection to it) did not work.
#[derive(Debug)]
pub struct WriteFailed(pub String);

impl WriteGuard {
    pub fn new(
        store: Store,
        subject_prefix: String,
        breaker: CircuitBreaker,
        backoff: Backoff,
        write_timeout: Duration,
        wal: Wal,
    ) -> Self {
        let guard = Self {
            store,
            subject_prefix,
            breaker,
            backoff,
            write_timeout,
            wal: Arc::new(Mutex::new(wal)),
            wal_bytes: AtomicU64::new(0),
            wal_records: AtomicU64::new(0),
        };
        guard.refresh_wal_stats();
        guard
    }

    pub fn store(&self) -> &Store {
        &self.store
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
    ) -> Option<Settled> {
        let mut retry = 0;
        let mut wal_failures = 0u32;
        loop {
            let permit = self.breaker.permit();
            let mut go_to_wal = permit == Permit::Refused;
            if !go_to_wal {
                match self.write(shard, records, dead).await {
                    Ok(settled) => {
                        self.breaker.on_success();
                        return Some(settled);
                    }
                    Err(WriteFailed(err)) => {
                        self.breaker.on_failure();
                        retry += 1;
                        metrics::counter!(names::BATCH_RETRIES).increment(1);
                        match self.backoff.delay(retry) {
                            Some(delay)
                                if !shutdown.is_cancelled()
                                    && self.breaker.state() == breaker::State::Closed =>
                            {
                                tracing::warn!(batch_len = records.len(), retry, error = %err,
                                    delay_ms = delay.as_millis() as u64, "batch write failed; retrying");
                                keepalive().await;
                                tokio::time::sleep(delay).await;
                                continue;
                            }
                            _ => {
                                tracing::warn!(batch_len = records.len(), error = %err,
                                    breaker = self.breaker.state().as_str(), "batch write failed; writing to the WAL");
                                go_to_wal = true;
                            }
                        }
                    }
                }
            }
            debug_assert!(go_to_wal);
            match self.append_to_wal(records, dead).await {
                Ok(()) => {
                    return Some(Settled {
                        durable: Durable::Logged,
                        dead: dead.iter().map(|d| (d.stream_id, d.seq)).collect(),
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
                    retry = 0;
                    keepalive().await;
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// One attempt to commit, bounded by `WRITE_TIMEOUT`, isolating poison messages.
    pub async fn write(
        &self,
        shard: i16,
        records: &[Record],
        dead: &[DeadLetter],
    ) -> Result<Settled, WriteFailed> {
        match tokio::time::timeout(
            self.write_timeout,
            write_isolating(&self.store, &self.subject_prefix, shard, records, dead),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(WriteFailed(format!(
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
        self.with_wal(move |wal| wal.append(&entries).map(|_| ()))
            .await?;
        metrics::counter!(names::WAL_APPENDED).increment(n);
        Ok(())
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
) -> Pin<Box<dyn Future<Output = Result<Settled, WriteFailed>> + Send + 'a>> {
    Box::pin(async move {
        let started = std::time::Instant::now();
        let committed = |outcome: BatchOutcome, dead: &[DeadLetter]| Settled {
            durable: Durable::Committed(outcome),
            dead: dead.iter().map(|d| (d.stream_id, d.seq)).collect(),
        };
        match batch::write_batch(store.pool(), shard, records, dead).await {
            Ok(outcome) => {
                metrics::histogram!(names::BATCH_WRITE_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                Ok(committed(outcome, dead))
            }
            Err(e) if is_transient(&e) => Err(WriteFailed(e.to_string())),
            Err(e) if records.len() <= 1 => {
                // The data is at fault. A lone record becomes a dead letter; with no records
                // left, the dead letters themselves are at fault, which our own schema should
                // make impossible: report it as a failure rather than drop anything.
                let Some(r) = records.first() else {
                    return Err(WriteFailed(format!("dead letters rejected: {e}")));
                };
                metrics::counter!(names::POISON_ISOLATED).increment(1);
                tracing::warn!(stream_seq = r.seq, topic = r.event.topic(), error = %e,
                    "database rejected one event; dead-lettering it");
                let mut dead = dead.to_vec();
                dead.push(DeadLetter::new(
                    r.stream_id,
                    r.seq,
                    shared::subject::subject_for(prefix, r.event.topic()),
                    &r.event.to_json(),
                    format!("rejected by the database: {e}"),
                ));
                match batch::write_batch(store.pool(), shard, &[], &dead).await {
                    Ok(outcome) => Ok(committed(outcome, &dead)),
                    Err(e) => Err(WriteFailed(format!("dead letters rejected: {e}"))),
                }
            }
            Err(_) => {
                let (left, right) = records.split_at(records.len() / 2);
                let a = write_isolating(store, prefix, shard, left, dead).await?;
                let b = write_isolating(store, prefix, shard, right, &[]).await?;
                Ok(merge(a, b))
            }
        }
    })
}

fn merge(a: Settled, b: Settled) -> Settled {
    let outcome = match (a.durable, b.durable) {
        (Durable::Committed(x), Durable::Committed(y)) => {
            let mut topics = x.topics;
            for t in y.topics {
                match topics.iter_mut().find(|u| u.topic == t.topic) {
                    Some(u) => {
                        u.received += t.received;
                        u.unique += t.unique;
                    }
                    None => topics.push(t),
                }
            }
            BatchOutcome {
                received: x.received + y.received,
                unique: x.unique + y.unique,
                dead_lettered: x.dead_lettered + y.dead_lettered,
                already_processed: x.already_processed + y.already_processed,
                topics,
            }
        }
        // write_isolating only ever commits.
        _ => BatchOutcome::default(),
    };
    let mut dead = a.dead;
    dead.extend(b.dead);
    Settled {
        durable: Durable::Committed(outcome),
        dead,
    }
}
