//! PostgreSQL: the only place that writes SQL.
//!
//! * [`batch`]: the batch write, one transaction per batch (events, counters, processed record,
//!   dead letters), the heart of exactly-once counting.
//! * [`queries`]: read side for the API (`/stats`, `/events`, `/dead-letters`), on the read
//!   pool when [`Store::with_read_pool`] gave it one.
//! * [`compact`]: keeps the processed-message record from growing forever.
//! * [`outbox`]: stored events in commit order, for the stream out and the live tail.
//!
//! [`Store::connect`] creates the database when it is missing and applies the migrations in
//! `migrations/`, so a fresh Postgres needs no manual step.

pub mod batch;
pub mod compact;
pub mod outbox;
pub mod queries;

use crate::shutdown::Permanent;
use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub use batch::BatchOutcome;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// The API's reads (`queries`): the same pool until [`Store::with_read_pool`] gives them
    /// their own.
    reads: PgPool,
    options: PgConnectOptions,
}

impl Store {
    /// Connects (creating the database if needed), and applies pending migrations.
    pub async fn connect(database_url: &str, pool_size: u32) -> anyhow::Result<Self> {
        let options = connect_options(database_url)?;
        // The maintenance connection is a clone of these options: same TLS mode, certificates
        // and credentials as every pool connection.
        create_database_if_missing(&options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .map_err(connect_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .context("applying database migrations")?;
        Ok(Self {
            reads: pool.clone(),
            pool,
            options,
        })
    }

    /// The same store with the API's reads (`/events`, `/dead-letters`, `/stats`) on a pool
    /// of their own, `size` connections whose statements the server cancels after
    /// `statement_timeout`: a flood of slow reads then waits for those few connections (or
    /// gets a 503) instead of taking the connections the batch writers need.
    pub fn with_read_pool(self, size: u32, statement_timeout: Duration) -> Self {
        let timeout = format!("{}ms", statement_timeout.as_millis());
        let options = self
            .options
            .clone()
            .options([("statement_timeout", timeout.as_str())]);
        let reads = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Self { reads, ..self }
    }

    /// A cheap round trip, bounded in time: is the database answering?
    pub async fn ping(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&self.pool)).await,
            Ok(Ok(_))
        )
    }

    /// Registers a stream incarnation on first sight and returns what the database knows of
    /// it. `adopt_created_ns`: the stream was just given its identity; a row registered for it
    /// by an earlier version (keyed by its creation time) is taken over, so its processed
    /// record carries on.
    pub async fn register_stream(
        &self,
        name: &str,
        incarnation: &str,
        adopt_created_ns: Option<&str>,
    ) -> sqlx::Result<StreamRecord> {
        let mut id: Option<i32> = None;
        if let Some(created_ns) = adopt_created_ns {
            id = sqlx::query_scalar(
                "UPDATE streams SET incarnation = $3
                 WHERE name = $1 AND created_ns = $2 AND incarnation IS NULL RETURNING id",
            )
            .bind(name)
            .bind(created_ns)
            .bind(incarnation)
            .fetch_optional(&self.pool)
            .await?;
        }
        // The id is derived from the identity (see the migration); a clash with another
        // incarnation's id moves on to the next candidate.
        let mut candidate = stream_id_for(name, incarnation);
        while id.is_none() {
            sqlx::query(
                "INSERT INTO streams (id, name, incarnation) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(candidate)
            .bind(name)
            .bind(incarnation)
            .execute(&self.pool)
            .await?;
            id = sqlx::query_scalar("SELECT id FROM streams WHERE name = $1 AND incarnation = $2")
                .bind(name)
                .bind(incarnation)
                .fetch_optional(&self.pool)
                .await?;
            candidate = if candidate == i32::MAX {
                1
            } else {
                candidate + 1
            };
        }
        let id = id.unwrap_or_default();
        let (floor_seq, highest_seq): (i64, i64) = sqlx::query_as(
            "SELECT floor_seq, greatest(floor_seq, coalesce(
                 (SELECT max(stream_seq) FROM processed_messages WHERE stream_id = $1), 0))
             FROM streams WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(StreamRecord {
            id,
            floor_seq,
            highest_seq,
        })
    }

    /// The name and identity of a registered stream incarnation.
    pub async fn stream_identity(&self, id: i32) -> sqlx::Result<Option<(String, Option<String>)>> {
        sqlx::query_as("SELECT name, incarnation FROM streams WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Every registered stream incarnation's id.
    pub async fn stream_ids(&self) -> sqlx::Result<Vec<i32>> {
        sqlx::query_scalar("SELECT id FROM streams ORDER BY id")
            .fetch_all(&self.pool)
            .await
    }

    /// Runs `f` while holding the cluster-wide set-up lock (a transaction-scoped advisory
    /// lock), so that replicas starting together take turns at one-time set-up steps.
    pub async fn with_setup_lock<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut tx = self.pool.begin().await.context("set-up lock")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SETUP_LOCK)
            .execute(&mut *tx)
            .await
            .context("set-up lock")?;
        let result = f().await;
        // Ending the transaction releases the lock; if that fails the session is gone, and
        // the lock with it.
        let _ = tx.rollback().await;
        result
    }
}

/// What the database knows of a stream incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRecord {
    pub id: i32,
    /// Every sequence at or below it is processed (or gone from the stream).
    pub floor_seq: i64,
    /// The highest sequence processed so far.
    pub highest_seq: i64,
}

/// Advisory lock key for one-time set-up steps shared by replicas ("aggrsetu").
const SETUP_LOCK: i64 = 0x6167_6772_7365_7475;

/// The preferred `streams.id` of an incarnation: a hash of its identity in 1..=i32::MAX.
fn stream_id_for(name: &str, incarnation: &str) -> i32 {
    let mut h = crc32fast::Hasher::new();
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(incarnation.as_bytes());
    ((h.finalize() & 0x7fff_ffff) as i32).max(1)
}

impl Store {
    /// Records one more solo attempt at a suspect message; returns how many came before.
    pub async fn record_suspect_attempt(&self, stream_id: i32, seq: i64) -> sqlx::Result<i32> {
        sqlx::query_scalar(
            "INSERT INTO suspect_attempts AS s (stream_id, stream_seq, attempts) VALUES ($1, $2, 1)
             ON CONFLICT (stream_id, stream_seq)
             DO UPDATE SET attempts = s.attempts + 1, last_at = now()
             RETURNING attempts - 1",
        )
        .bind(stream_id)
        .bind(seq)
        .fetch_one(&self.pool)
        .await
    }
}

/// A failed connection, marked [`Permanent`] when retrying cannot help, so start-up stops with
/// it (naming `DATABASE_URL`) instead of waiting forever.
fn connect_error(err: sqlx::Error) -> anyhow::Error {
    if is_permanent_connect_error(&err) {
        // One message, not a chain: sqlx's error repeats its source in its own text.
        anyhow::Error::new(Permanent(format!(
            "DATABASE_URL: PostgreSQL refused the connection and retrying cannot help \
             (check sslmode, sslrootcert, sslcert/sslkey, the credentials, pg_hba.conf): {err}"
        )))
    } else {
        anyhow::Error::new(err).context("connecting to PostgreSQL (DATABASE_URL)")
    }
}

/// Whether a failed connection attempt will fail the same way every time: TLS the server does
/// not offer, a certificate not trusted or not valid for the host, an unusable key or
/// certificate file, or the server refusing the client (SQLSTATE class 28: bad credentials,
/// no `pg_hba.conf` entry, e.g. plaintext where only `hostssl` is allowed). A refused or
/// reset connection (Postgres starting or restarting) and everything else are retried.
pub fn is_permanent_connect_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => true,
        // rustls reports a failed handshake (unknown issuer, wrong name, an alert from the
        // server rejecting our certificate) as invalid data on the socket.
        sqlx::Error::Io(e) => e.kind() == std::io::ErrorKind::InvalidData,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("28")),
        _ => false,
    }
}

/// How every connection is opened: the session settings each pool starts from.
fn connect_options(database_url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(database_url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("aggregator")
        .options([
            // Every statement here has the same good plan whatever its parameters (batch
            // writes over UNNEST arrays, index lookups): plan once per connection instead
            // of re-planning each batch (planning was ~15% of a batch write).
            ("plan_cache_mode", "force_generic_plan"),
            // A transaction abandoned mid-way (a write that timed out, a task cancelled)
            // keeps its locks until its connection is used again; the server ends such
            // a session after a minute so it cannot hold the compaction lock for good.
            ("idle_in_transaction_session_timeout", "60s"),
        ])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2)))
}

/// `CREATE DATABASE` when the target database does not exist yet. Several replicas may race
/// here; losing the race is fine.
async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(db) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let admin = options.clone().database("postgres");
    let mut conn = match admin.connect().await {
        Ok(c) => c,
        // No access to the maintenance database: assume the target exists and let the real
        // connection report any problem.
        Err(e) => {
            tracing::debug!(error = %e, "cannot reach the postgres database to check for {db}");
            return Ok(());
        }
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&mut conn)
            .await
            .context("checking whether the database exists")?;
    if !exists {
        let quoted = format!("\"{}\"", db.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %db, "created database"),
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e).context(format!("creating database {db}")),
        }
    }
    Ok(())
}

/// Whether a failed write may succeed if retried unchanged (the database or the connection
/// is the problem), as opposed to a problem with the data itself (which retrying cannot fix:
/// the batch is split to isolate the offending message instead).
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let class = code.as_deref().map(|c| &c[..c.len().min(2)]);
            // 08 connection, 40 serialization/deadlock, 53 resources, 55 lock not available,
            // 57 operator intervention (shutdown, cancel, timeout), 58 system error, XX internal.
            matches!(
                class,
                Some("08" | "40" | "53" | "55" | "57" | "58" | "XX") | None
            )
        }
        sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::RowNotFound
        | sqlx::Error::InvalidArgument(_) => false,
        // Io, Tls, Protocol, PoolTimedOut, PoolClosed, WorkerCrashed, Configuration, ...
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::is_permanent_connect_error;
    use std::io::{Error, ErrorKind};

    #[test]
    fn a_refused_connection_is_retried_a_refused_certificate_is_not() {
        let io = |kind| sqlx::Error::Io(Error::new(kind, "x"));
        assert!(!is_permanent_connect_error(&io(
            ErrorKind::ConnectionRefused
        )));
        assert!(!is_permanent_connect_error(&io(ErrorKind::ConnectionReset)));
        assert!(!is_permanent_connect_error(&sqlx::Error::PoolTimedOut));
        assert!(is_permanent_connect_error(&io(ErrorKind::InvalidData)));
        assert!(is_permanent_connect_error(&sqlx::Error::Tls(
            "server does not support TLS".into()
        )));
    }
}
