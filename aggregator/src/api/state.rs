//! What the HTTP handlers share: their settings and handles to the running service.
//!
//! The HTTP server starts before the database and NATS are reachable (so `/live` and
//! `/ready` answer during start-up); the connections are filled in once they exist. It also
//! outlives the pipeline's drain on shutdown, which `shutdown` tells it about.

use crate::guard::{GuardStatus, WriteGuard};
use crate::intake::BufferCount;
use crate::settings::{ApiSettings, BrokerSettings};
use crate::shutdown::CancellationToken;
use crate::store::outbox::Position;
use crate::store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub struct AppState {
    pub settings: ApiSettings,
    /// The stream and consumer, for the backlog in `/stats` and `/metrics`.
    pub broker: BrokerSettings,
    pub started: Instant,
    pub store: OnceLock<Store>,
    pub nats: OnceLock<async_nats::Client>,
    pub prometheus: Option<PrometheusHandle>,
    /// Start-up (migrations, stream, consumer) finished and the pipeline was started.
    pub running: AtomicBool,
    /// Cancelled on SIGTERM/SIGINT: the pipeline drains while the API still answers.
    pub shutdown: CancellationToken,
    /// Messages pulled from JetStream and not yet taken by a worker.
    pub buffered: BufferCount,
    /// The write guard (breaker, WAL), once start-up created it.
    pub guard: OnceLock<Arc<WriteGuard>>,
    /// Admission control for `POST /publish` (`MAX_CONCURRENT_PUBLISH`, a bounded wait of
    /// `PUBLISH_QUEUE_TIMEOUT` for a slot).
    pub admission: super::admission::Admission,
    /// Live tails open (`MAX_EVENT_STREAMS` permits).
    pub event_streams: Arc<tokio::sync::Semaphore>,
    /// The live tails' shared head, polled by one task from the first tail on (`api::tail`).
    pub tail_head: OnceLock<tokio::sync::watch::Receiver<Position>>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(
        settings: ApiSettings,
        broker: BrokerSettings,
        buffered: BufferCount,
        prometheus: Option<PrometheusHandle>,
        shutdown: CancellationToken,
    ) -> SharedState {
        let settings_max_streams = settings.max_event_streams;
        Arc::new(Self {
            admission: super::admission::Admission::new(
                settings.max_concurrent_publish,
                settings.publish_queue_timeout,
            ),
            settings,
            broker,
            started: Instant::now(),
            store: OnceLock::new(),
            nats: OnceLock::new(),
            prometheus,
            running: AtomicBool::new(false),
            shutdown,
            buffered,
            guard: OnceLock::new(),
            event_streams: Arc::new(tokio::sync::Semaphore::new(settings_max_streams)),
            tail_head: OnceLock::new(),
        })
    }

    /// WAL size and breaker state, for `/health`, `/stats` and `/metrics` (an empty WAL and a
    /// closed breaker before start-up created the guard).
    pub fn guard_status(&self) -> GuardStatus {
        self.guard
            .get()
            .map_or_else(GuardStatus::default, |g| g.status())
    }

    /// The database, or a 503 while start-up has not connected it yet.
    pub fn store(&self) -> Result<&Store, super::ApiError> {
        self.store
            .get()
            .ok_or_else(|| super::ApiError::unavailable("starting up: database not connected yet"))
    }

    /// Why this replica cannot take traffic now (empty: it can). Cheap enough for every
    /// probe: flags and counters only, no round trip to the database or NATS. Whether the
    /// database answers is the breaker's verdict from the latest writes (CLOSED: they
    /// commit), whether the WAL takes batches the latest append's.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.store.get().is_none() {
            reasons.push("database not connected (migrations not applied)");
        }
        if !self.nats_up() {
            reasons.push("nats disconnected");
        }
        if reasons.is_empty() && !self.running.load(Ordering::Acquire) {
            reasons.push("stream and consumer not set up");
        }
        if let Some(refusal) = self.guard_status().refusal() {
            reasons.push(refusal);
        }
        if self.shutdown.is_cancelled() {
            reasons.push("draining");
        }
        reasons
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready_reasons().is_empty()
    }

    pub fn buffer_size(&self) -> i64 {
        self.buffered.get()
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
