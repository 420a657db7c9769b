//! Start-up and the service's lifetime.
//!
//! Order: bind HTTP (so `/live` answers at once and `/ready` says false), connect to Postgres
//! (creating the database and applying migrations), connect to NATS and set up the stream and
//! consumer, then start intake, the workers and compaction and report ready. On shutdown the
//! same parts stop in reverse: intake stops pulling, the workers drain the buffer, pending
//! acknowledgements are flushed to NATS, and the HTTP server closes.

use crate::config::Config;
use crate::guard::breaker::CircuitBreaker;
use crate::guard::retry::Backoff;
use crate::guard::WriteGuard;
use crate::intake::{self, Delivery};
use crate::replay::{Monitor, ReplaySettings};
use crate::shutdown::CancellationToken;
use crate::source::JetStreamSource;
use crate::state::{AppState, SharedState};
use crate::store::batch::COUNTER_SHARDS;
use crate::store::Store;
use crate::telemetry::names;
use crate::wal::{Recovery, Wal};
use crate::worker::{Failpoint, Worker};
use crate::{api, broker, housekeeping};
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Runs the service until `shutdown` is cancelled and everything in flight is settled.
pub async fn run(
    config: Config,
    prometheus: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Configuration problems that only show when used: fail now, naming the variable.
    let segment_bytes = (config.wal_max_size / 8).clamp(64 * 1024, 16 * 1024 * 1024);
    let (wal, recovery) = Wal::open(&config.wal_path, segment_bytes, config.wal_max_size)
        .with_context(|| format!("WAL_PATH: cannot use {}", config.wal_path.display()))?;
    report_recovery(&recovery);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("HTTP_ADDR: cannot listen on {}", config.http_addr))?;
    let state = AppState::new(config, prometheus);
    tracing::info!(addr = %state.config.http_addr, "HTTP API listening");
    let server = axum::serve(listener, api::router(state.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let http = tokio::spawn(async move { server.await });

    let result = run_pipeline(&state, &shutdown, wal).await;
    shutdown.cancel();
    match http.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server error"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    result
}

async fn run_pipeline(
    state: &SharedState,
    shutdown: &CancellationToken,
    wal: Wal,
) -> anyhow::Result<()> {
    let cfg = &state.config;
    let Some(store) = retry_until("PostgreSQL", shutdown, || {
        Store::connect(&cfg.database_url, cfg.pool_size())
    })
    .await
    else {
        return Ok(());
    };
    let _ = state.store.set(store.clone());
    let guard = Arc::new(WriteGuard::new(
        store.clone(),
        cfg.subject_prefix.clone(),
        CircuitBreaker::new(cfg.circuit_breaker_threshold, cfg.circuit_breaker_timeout),
        Backoff {
            attempts: cfg.max_retries,
            base: cfg.retry_delay,
        },
        cfg.write_timeout,
        wal,
    ));
    let _ = state.guard.set(guard.clone());

    let client = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        c = broker::connect(cfg) => c?,
    };
    let _ = state.nats.set(client.clone());
    let js = async_nats::jetstream::new(client.clone());
    let Some(subscription) = retry_until("JetStream", shutdown, || {
        intake::subscribe(&client, &store, cfg)
    })
    .await
    else {
        return Ok(());
    };

    // One bounded buffer per worker; MAX_BUFFER_SIZE in all.
    let per_worker = (cfg.max_buffer_size as usize / usize::from(cfg.workers)).max(1);
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..cfg.workers)
        .map(|_| mpsc::channel::<Delivery>(per_worker))
        .unzip();
    let intake = tokio::spawn(intake::run(
        state.clone(),
        client.clone(),
        store.clone(),
        txs,
        shutdown.clone(),
        Some(subscription),
    ));
    let failpoint = Arc::new(Failpoint::from_env());
    let solo = Arc::new(tokio::sync::RwLock::new(()));
    let offset: u16 = rand::random::<u16>() % COUNTER_SHARDS;
    let source = Arc::new(JetStreamSource::new(
        js.clone(),
        store.clone(),
        cfg.subject_prefix.clone(),
        shared::Limits {
            max_payload_bytes: cfg.max_payload_bytes as usize,
        },
    ));
    let metrics_state = state.clone();
    let monitor = Monitor {
        guard: guard.clone(),
        source: source.clone(),
        on_commit: Arc::new(move |o| crate::worker::record_outcome_metrics(&metrics_state, o)),
        settings: ReplaySettings {
            interval: cfg.health_check_interval,
            chunk: cfg.replay_batch as usize,
            lanes: usize::from(cfg.workers),
            shards: (
                ((offset + cfg.workers) % COUNTER_SHARDS) as i16,
                COUNTER_SHARDS as i16,
            ),
        },
    };
    monitor.tick().await;
    let monitor_task = tokio::spawn(monitor.run(shutdown.clone()));
    let workers: Vec<_> = (0..cfg.workers)
        .zip(rxs)
        .map(|(id, rx)| {
            let worker = Worker {
                id,
                shard: ((offset + id) % COUNTER_SHARDS) as i16,
                state: state.clone(),
                guard: guard.clone(),
                rx,
                shutdown: shutdown.clone(),
                failpoint: failpoint.clone(),
                solo: solo.clone(),
            };
            tokio::spawn(worker.run())
        })
        .collect();
    let compactor = tokio::spawn(housekeeping::run(
        store.clone(),
        source,
        cfg.compact_interval,
        cfg.retention,
        shutdown.clone(),
    ));
    state.ready.store(true, Ordering::Release);
    tracing::info!(
        workers = cfg.workers,
        batch_size = cfg.batch_size,
        "aggregator ready"
    );

    shutdown.cancelled().await;
    state.ready.store(false, Ordering::Release);
    tracing::info!("draining: intake stopped, finishing buffered batches");
    let _ = intake.await;
    for w in workers {
        let _ = w.await;
    }
    let _ = compactor.await;
    let _ = monitor_task.await;
    // Acks are fire-and-forget publishes: make sure they have left before exiting.
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        tracing::warn!(error = %e, "timed out flushing acknowledgements to NATS");
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Calls `f` until it succeeds (logging each failure) or `shutdown` is cancelled.
async fn retry_until<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = f() => r,
        };
        match attempt {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "{what} not available yet");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
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
