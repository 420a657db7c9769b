//! PostgreSQL: the only place that writes SQL.
//!
//! * [`batch`]: the batch write, one transaction per batch (events, counters, processed record,
//!   dead letters), the heart of exactly-once counting.
//! * [`queries`]: read side for the API (`/stats`).
//! * [`compact`]: keeps the processed-message record from growing forever.
//!
//! [`Store::connect`] creates the database when it is missing and applies the migrations in
//! `migrations/`, so a fresh Postgres needs no manual step.

pub mod batch;
pub mod compact;
pub mod queries;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub use batch::{BatchOutcome, DeadLetter, Record};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects (creating the database if needed), and applies pending migrations.
    pub async fn connect(database_url: &str, pool_size: u32) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(database_url)
            .context("DATABASE_URL is not a valid PostgreSQL URL")?
            .application_name("aggregator")
            // Every statement here has the same good plan whatever its parameters (batch
            // writes over UNNEST arrays, index lookups): plan once per connection instead of
            // re-planning each batch (planning was ~15% of a batch write).
            .options([("plan_cache_mode", "force_generic_plan")])
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
        create_database_if_missing(&options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .context("connecting to PostgreSQL")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("applying database migrations")?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A cheap round trip, bounded in time: is the database answering?
    pub async fn ping(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&self.pool)).await,
            Ok(Ok(_))
        )
    }

    /// The id of a stream incarnation (name + creation time), registering it on first sight.
    pub async fn register_stream(&self, name: &str, created_ns: &str) -> sqlx::Result<i32> {
        sqlx::query_scalar(
            "INSERT INTO streams (name, created_ns) VALUES ($1, $2)
             ON CONFLICT (name, created_ns) DO UPDATE SET name = excluded.name
             RETURNING id",
        )
        .bind(name)
        .bind(created_ns)
        .fetch_one(&self.pool)
        .await
    }
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
