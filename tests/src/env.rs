//! `TestEnv`: one private NATS server plus one private Postgres cluster and a work
//! directory (WAL directories, logs) for a single test.

use std::path::Path;

use sqlx::PgPool;

use crate::nats::Nats;
use crate::postgres::Postgres;
use crate::util::TempDir;

/// The aggregator's database name inside the private cluster.
pub const AGGREGATOR_DB: &str = "aggregator";

/// A private NATS + Postgres pair for one test; everything is killed and removed on
/// drop. Fields are public so tests can kill/stop/pause/restart each server.
#[derive(Debug)]
pub struct TestEnv {
    /// The private NATS server.
    pub nats: Nats,
    /// The private Postgres cluster.
    pub pg: Postgres,
    work: TempDir,
}

impl TestEnv {
    /// Starts NATS and Postgres concurrently and waits until both are ready.
    pub async fn start() -> TestEnv {
        let (nats, pg) = tokio::join!(Nats::new(), Postgres::new());
        TestEnv {
            nats,
            pg,
            work: TempDir::new("env"),
        }
    }

    /// Starts a private NATS server beside `pg` (e.g. a [`Postgres::with_tls`] cluster).
    pub async fn with_postgres(pg: Postgres) -> TestEnv {
        TestEnv {
            nats: Nats::new().await,
            pg,
            work: TempDir::new("env"),
        }
    }

    /// Like [`TestEnv::start`] with a NATS server secured by `security` (TLS, authorization).
    pub async fn start_secured(security: std::sync::Arc<crate::secure::Security>) -> TestEnv {
        let (nats, pg) = tokio::join!(Nats::secured(security), Postgres::new());
        TestEnv {
            nats,
            pg,
            work: TempDir::new("env"),
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/aggregator` (the aggregator creates the
    /// database if it is missing).
    pub fn database_url(&self) -> String {
        self.pg.url(AGGREGATOR_DB)
    }

    /// The NATS URL.
    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// A pool on the aggregator database, creating the database first if missing.
    pub async fn db(&self) -> PgPool {
        self.pg.create_database(AGGREGATOR_DB).await;
        self.pg.pool(AGGREGATOR_DB).await
    }

    /// A JetStream context on a new connection to the private NATS server.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        self.nats.jetstream().await
    }

    /// Messages in stream `EVENTS`: exact and synchronous (every acknowledged publish is in
    /// it), so it proves what was (not) published.
    pub async fn stream_messages(&self) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js.get_stream("EVENTS").await.expect("stream EVENTS");
        stream.info().await.expect("stream info").state.messages
    }

    /// Rows in table `events`.
    pub async fn event_rows(&self) -> i64 {
        crate::util::count(&self.db().await, "SELECT count(*) FROM events").await
    }

    /// A per-env scratch directory (WAL directories, aggregator logs).
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }
}
