//! Runtime state shared by the pipeline and the HTTP API.
//!
//! The HTTP server starts before the database and NATS are reachable (so `/live` and
//! `/ready` answer during start-up); the connections are filled in once they exist.

use crate::config::Config;
use crate::guard::WriteGuard;
use crate::store::Store;
use crate::telemetry::TopicLabels;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub struct AppState {
    pub config: Config,
    pub started: Instant,
    pub store: OnceLock<Store>,
    pub nats: OnceLock<async_nats::Client>,
    pub prometheus: Option<PrometheusHandle>,
    /// Start-up (migrations, stream, consumer) finished and the pipeline is running.
    pub ready: AtomicBool,
    /// Messages pulled from JetStream and not yet taken by a worker.
    pub buffered: AtomicI64,
    pub topic_labels: TopicLabels,
    /// The write guard (breaker, WAL), once start-up created it.
    pub guard: OnceLock<Arc<WriteGuard>>,
    /// Admission control for `POST /publish` (`MAX_CONCURRENT_PUBLISH`).
    pub publish_slots: tokio::sync::Semaphore,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(config: Config, prometheus: Option<PrometheusHandle>) -> SharedState {
        let topic_labels = TopicLabels::new(config.metrics_max_topics as usize);
        Arc::new(Self {
            topic_labels,
            guard: OnceLock::new(),
            publish_slots: tokio::sync::Semaphore::new(config.max_concurrent_publish as usize),
            config,
            started: Instant::now(),
            store: OnceLock::new(),
            nats: OnceLock::new(),
            prometheus,
            ready: AtomicBool::new(false),
            buffered: AtomicI64::new(0),
        })
    }

    /// WAL bytes, WAL records and breaker state, for `/health` and `/stats`.
    pub fn guard_status(&self) -> (u64, u64, &'static str) {
        match self.guard.get() {
            Some(g) => (g.wal_bytes(), g.wal_records(), g.breaker.state().as_str()),
            None => (0, 0, "CLOSED"),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn buffer_size(&self) -> i64 {
        self.buffered.load(Ordering::Relaxed).max(0)
    }

    pub fn jetstream(&self) -> Option<async_nats::jetstream::Context> {
        self.nats
            .get()
            .map(|c| async_nats::jetstream::new(c.clone()))
    }

    pub fn nats_up(&self) -> bool {
        self.nats
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }
}
