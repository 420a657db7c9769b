//! Start-up and the service's lifetime: wiring only.
//!
//! Order: open the WAL and bind HTTP (so a bad `WAL_PATH` or `HTTP_ADDR` fails at once, and
//! `/live` answers while `/ready` says false), connect to Postgres (creating the database and
//! applying migrations), connect to NATS and set up the stream and consumer, then start
//! intake, the workers, the health monitor and housekeeping and report ready. On shutdown the
//! same parts stop in reverse: `/ready` turns 503 at once, intake stops pulling, the workers
//! drain the buffers, pending acknowledgements are flushed to NATS, and only then does the
//! HTTP server close (letting requests in flight finish): until then every route answers as
//! usual, so a load balancer sees "not ready", never "connection refused", mid-drain.
//! [`run`] bounds the drain by `SHUTDOWN_TIMEOUT` and gives it up on a second signal.

use crate::api::state::{AppState, SharedState};
use crate::failpoint::Failpoint;
use crate::guard::WriteGuard;
use crate::intake::{BufferCount, Delivery, Intake};
use crate::replay::Monitor;
use crate::settings::{Settings, StoreSettings};
use crate::shutdown::{retry_unless_permanent, retry_until, CancellationToken};
use crate::source::JetStreamSource;
use crate::store::batch::COUNTER_SHARDS;
use crate::store::Store;
use crate::subscription::{self, Subscription};
use crate::telemetry::{names, TopicLabels};
use crate::wal::{Recovery, Wal};
use crate::worker::{self, Worker};
use crate::{api, broker, housekeeping, outbox};
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long an exit that gives up the drain waits for a WAL append in progress.
const WAL_FREEZE_LIMIT: Duration = Duration::from_secs(5);

/// The running service.
pub struct Service {
    /// Where the HTTP API listens (the port the system chose for `HTTP_ADDR` port 0).
    pub addr: SocketAddr,
    state: SharedState,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Waits until the service has stopped (after `shutdown` was cancelled and everything in
    /// flight was settled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the service task failed")?
    }

    /// [`Service::wait`], but the drain is given up when `force` is cancelled (a second
    /// signal) or `limit` has passed since `shutdown` was: then this returns an error saying
    /// what was abandoned, and the caller must exit without waiting for anything else.
    /// Nothing is lost by that: whatever was not acknowledged is redelivered by JetStream,
    /// and the WAL is left with whole appends (see [`WriteGuard::freeze_wal`]).
    pub async fn wait_bounded(
        mut self,
        shutdown: &CancellationToken,
        force: &CancellationToken,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(limit).await;
        };
        let why = tokio::select! {
            result = &mut self.task => return result.context("the service task failed")?,
            _ = force.cancelled() => "a second signal".to_owned(),
            _ = deadline => format!("SHUTDOWN_TIMEOUT ({limit:?})"),
        };
        self.abandon(&why).await
    }

    /// Gives up the drain: logs what is left behind, freezes the WAL, and reports it.
    async fn abandon(self, why: &str) -> anyhow::Result<()> {
        let buffered = self.state.buffer_size();
        tracing::warn!(
            buffered,
            "drain cut short by {why}: exiting with {buffered} messages still buffered and the \
             batches being written unacknowledged; JetStream redelivers them after ACK_WAIT"
        );
        if let Some(guard) = self.state.guard.get() {
            if !guard.freeze_wal(WAL_FREEZE_LIMIT).await {
                tracing::warn!(
                    "a WAL append did not finish within {WAL_FREEZE_LIMIT:?}; the next start \
                     cuts off what it wrote (it was never acknowledged)"
                );
            }
        }
        self.task.abort();
        anyhow::bail!("shutdown cut short by {why}; unacknowledged messages are redelivered")
    }
}

/// Runs the service until `shutdown` is cancelled and everything in flight is settled, or
/// until `force` or `SHUTDOWN_TIMEOUT` cuts the drain short (an error).
pub async fn run(
    settings: Settings,
    prometheus: Option<PrometheusHandle>,
    shutdown: CancellationToken,
    force: CancellationToken,
) -> anyhow::Result<()> {
    let limit = settings.shutdown_timeout;
    start(settings, prometheus, shutdown.clone())
        .await?
        .wait_bounded(&shutdown, &force, limit)
        .await
}

/// Opens the WAL and binds the HTTP listener (an error names the variable), then runs the
/// rest in the background.
pub async fn start(
    settings: Settings,
    prometheus: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<Service> {
    let wal_path = &settings.wal.path;
    let (wal, recovery) =
        Wal::open(wal_path, settings.wal.segment_bytes, settings.wal.max_bytes)
            .with_context(|| format!("WAL_PATH: cannot use {}", wal_path.display()))?;
    report_recovery(&recovery);
    let http_addr = settings.api.http_addr;
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("HTTP_ADDR: cannot listen on {http_addr}"))?;
    let addr = listener
        .local_addr()
        .with_context(|| format!("HTTP_ADDR: cannot listen on {http_addr}"))?;
    tracing::info!(%addr, "HTTP API listening");
    if settings.api.api_read_token.is_some() && settings.api.api_token.is_none() {
        // A read token alone looks like "the API is secured", but writes stay open.
        tracing::warn!("API_READ_TOKEN is set but API_TOKEN is not: POST /publish is open");
    }

    let buffered = BufferCount::default();
    let state = AppState::new(
        settings.api.clone(),
        settings.broker.clone(),
        buffered.clone(),
        prometheus,
        shutdown.clone(),
    );
    let limits = api::server::ConnectionLimits {
        header_read_timeout: settings.api.header_read_timeout,
        max_connections: settings.api.max_connections,
    };
    // Not `shutdown`: the API keeps answering while the pipeline drains.
    let close_http = CancellationToken::new();
    let server = api::server::serve(
        listener,
        api::router(state.clone()),
        limits,
        close_http.clone(),
    );
    let service_state = state.clone();
    let task = tokio::spawn(async move {
        let http = tokio::spawn(server);
        let result = run_pipeline(settings, &state, wal, buffered, &shutdown).await;
        // Also when the pipeline failed: everything stops.
        shutdown.cancel();
        close_http.cancel();
        if let Err(e) = http.await {
            tracing::warn!(error = %e, "HTTP server task failed");
        }
        tracing::info!("shutdown complete");
        result
    });
    Ok(Service {
        addr,
        state: service_state,
        task,
    })
}

/// The API's store: its reads on a small pool of their own with a statement timeout, so they
/// never take the batch writers' connections.
fn api_store(store: &Store, settings: &StoreSettings) -> Store {
    store
        .clone()
        .with_read_pool(settings.read_pool_size, settings.read_timeout)
}

/// The store, once Postgres answers (`None` when shutdown came first). Postgres still starting
/// is waited for; a refusal that will not change (TLS, a certificate, credentials,
/// pg_hba.conf) stops start-up with its reason.
async fn connect_store(
    settings: &StoreSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Store>> {
    retry_unless_permanent("PostgreSQL", shutdown, || {
        Store::connect(&settings.database_url, settings.pool_size)
    })
    .await
}

/// Connects to Postgres and NATS, runs the pipeline until shutdown, then drains it.
async fn run_pipeline(
    settings: Settings,
    state: &SharedState,
    wal: Wal,
    buffered: BufferCount,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(store) = connect_store(&settings.store, shutdown).await? else {
        return Ok(());
    };
    let _ = state.store.set(api_store(&store, &settings.store));
    let guard = Arc::new(WriteGuard::new(store.clone(), &settings.guard, wal));
    let _ = state.guard.set(guard.clone());

    let Some(client) = broker::connect(&settings.broker, shutdown).await? else {
        return Ok(());
    };
    let _ = state.nats.set(client.clone());
    let Some(subscription) = retry_until("JetStream", shutdown, || {
        subscription::subscribe(&client, &store, &settings.broker)
    })
    .await
    else {
        return Ok(());
    };

    let components = Components::start(
        &settings,
        &client,
        store,
        guard,
        buffered,
        shutdown,
        subscription,
    )
    .await;
    state.running.store(true, Ordering::Release);
    tracing::info!(
        workers = settings.intake.workers,
        batch_size = settings.worker.batch_size,
        "aggregator ready"
    );

    shutdown.cancelled().await;
    tracing::info!(
        "draining: /ready answers 503, intake stopped, finishing buffered batches; the HTTP \
         API answers until the drain is done (a second SIGTERM/SIGINT exits at once)"
    );
    components.drain().await;
    // Acks are fire-and-forget publishes: make sure they have left before exiting.
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        tracing::warn!(error = %e, "timed out flushing acknowledgements to NATS");
    }
    tracing::info!("pipeline drained; closing the HTTP API");
    Ok(())
}

/// The pipeline's running tasks.
struct Components {
    intake: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
    monitor: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
    /// The stream out's publisher, when it is on.
    outbox: Option<JoinHandle<()>>,
}

impl Components {
    /// Starts intake, one worker per buffer, the health monitor (after a first check, so a
    /// WAL left by an earlier run is replayed before new work) and housekeeping.
    async fn start(
        settings: &Settings,
        client: &async_nats::Client,
        store: Store,
        guard: Arc<WriteGuard>,
        buffered: BufferCount,
        shutdown: &CancellationToken,
        subscription: Subscription,
    ) -> Components {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..settings.intake.workers)
            .map(|_| mpsc::channel::<Delivery>(settings.intake.buffer_per_worker))
            .unzip();
        let intake = Intake {
            settings: settings.intake.clone(),
            broker: settings.broker.clone(),
            client: client.clone(),
            store: store.clone(),
            buffers: txs,
            buffered: buffered.clone(),
            shutdown: shutdown.clone(),
        };
        let intake = tokio::spawn(intake.run(Some(subscription)));

        // Each writer adds to counter shards of its own; a random offset keeps replicas apart.
        let offset = rand::random::<u16>() % COUNTER_SHARDS;
        let shard = |i: usize| ((usize::from(offset) + i) % usize::from(COUNTER_SHARDS)) as i16;
        let labels = Arc::new(TopicLabels::new(settings.api.metrics_max_topics));
        let workers = spawn_workers(settings, rxs, &guard, &buffered, &labels, shutdown, shard);
        let source = Arc::new(JetStreamSource::new(
            async_nats::jetstream::new(client.clone()),
            store.clone(),
            settings.intake.subject_prefix.clone(),
            settings.intake.limits,
        ));
        let monitor = Monitor {
            guard,
            source: source.clone(),
            on_commit: Arc::new(move |o| worker::record_outcome_metrics(&labels, o)),
            settings: settings.replay,
            first_shard: shard(settings.intake.workers),
        };
        monitor.tick().await;
        let monitor = tokio::spawn(monitor.run(shutdown.clone()));
        let outbox = settings.outbox.clone().map(|settings| {
            tokio::spawn(
                outbox::Publisher {
                    store: store.clone(),
                    js: async_nats::jetstream::new(client.clone()),
                    settings,
                    shutdown: shutdown.clone(),
                    failpoint: Failpoint::from_env(),
                }
                .run(),
            )
        });
        let housekeeping = tokio::spawn(housekeeping::run(
            store,
            source,
            settings.housekeeping,
            shutdown.clone(),
        ));
        Components {
            intake,
            workers,
            monitor,
            housekeeping,
            outbox,
        }
    }

    /// Waits for every task, in pipeline order, after shutdown was cancelled.
    async fn drain(self) {
        let _ = self.intake.await;
        for w in self.workers {
            let _ = w.await;
        }
        let _ = self.housekeeping.await;
        let _ = self.monitor.await;
        if let Some(outbox) = self.outbox {
            let _ = outbox.await;
        }
    }
}

/// One worker per buffer, each on its own counter shard.
fn spawn_workers(
    settings: &Settings,
    buffers: Vec<mpsc::Receiver<Delivery>>,
    guard: &Arc<WriteGuard>,
    buffered: &BufferCount,
    labels: &Arc<TopicLabels>,
    shutdown: &CancellationToken,
    shard: impl Fn(usize) -> i16,
) -> Vec<JoinHandle<()>> {
    // Shared by every worker: one failpoint set-up, one lock for a suspect's solo attempt.
    let failpoint = Arc::new(Failpoint::from_env());
    let solo = Arc::new(tokio::sync::RwLock::new(()));
    buffers
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let worker = Worker {
                id: i as u16,
                shard: shard(i),
                settings: settings.worker,
                buffered: buffered.clone(),
                labels: labels.clone(),
                guard: guard.clone(),
                rx,
                shutdown: shutdown.clone(),
                failpoint: failpoint.clone(),
                solo: solo.clone(),
            };
            tokio::spawn(worker.run())
        })
        .collect()
}

fn report_recovery(r: &Recovery) {
    if r.truncated_tail_bytes > 0 {
        metrics::counter!(names::WAL_TRUNCATED_BYTES).increment(r.truncated_tail_bytes);
        tracing::warn!(
            bytes = r.truncated_tail_bytes,
            "WAL: cut off a torn tail (an append interrupted by a crash; never acknowledged)"
        );
    }
    if !r.corrupt.is_empty() {
        tracing::warn!(
            records = r.corrupt.len(),
            "WAL: damaged records found; replay fetches them again from JetStream"
        );
    }
    tracing::info!(
        segments = r.segments,
        records = r.records,
        bytes = r.bytes,
        "WAL opened"
    );
}
