//! `GET /stats`: durable totals from Postgres plus live pipeline figures.

use super::state::SharedState;
use super::ApiError;
use crate::broker;
use crate::guard::breaker::State as BreakerState;
use crate::store::queries::TopicCounts;
use axum::extract::State;
use axum::Json;
use serde::Serialize;

#[derive(Serialize)]
pub struct Stats {
    pub received: i64,
    pub unique_processed: i64,
    pub duplicate_dropped: i64,
    pub duplicate_rate: f64,
    pub dead_lettered: i64,
    pub topics: Vec<TopicCounts>,
    pub uptime_seconds: u64,
    pub consumer_pending: u64,
    pub buffer_size: i64,
    pub wal_record_count: u64,
    pub circuit_breaker: &'static str,
    pub status: &'static str,
    /// The stream out, when `OUTPUT_SUBJECT_PREFIX` turns it on (null otherwise).
    pub outbox: Option<OutboxStats>,
}

#[derive(Serialize)]
pub struct OutboxStats {
    pub stream: String,
    /// Events published to the output stream, by every replica, ever.
    pub published: i64,
    /// Stored events not published yet (counted up to 100,000), and the age of the next one
    /// to publish (the first of them in commit order).
    pub lag_rows: i64,
    pub lag_seconds: f64,
}

pub async fn get_stats(State(state): State<SharedState>) -> Result<Json<Stats>, ApiError> {
    let store = state.store()?;
    let totals = store.totals().await.map_err(ApiError::from_db)?;
    let outbox = match &state.settings.outbox_stream {
        Some(stream) => {
            let lag = store.outbox_lag(stream).await.map_err(ApiError::from_db)?;
            Some(OutboxStats {
                stream: stream.clone(),
                published: lag.published,
                lag_rows: lag.rows,
                lag_seconds: lag.seconds,
            })
        }
        None => None,
    };
    let pending = match state.jetstream() {
        Some(js) => broker::consumer_pending(&js, &state.broker).await,
        None => None,
    };
    let duplicate_rate = if totals.received > 0 {
        totals.duplicate_dropped as f64 / totals.received as f64
    } else {
        0.0
    };
    let guard = state.guard_status();
    let healthy = pending.is_some() && state.is_ready() && guard.breaker == BreakerState::Closed;
    Ok(Json(Stats {
        received: totals.received,
        unique_processed: totals.unique_processed,
        duplicate_dropped: totals.duplicate_dropped,
        duplicate_rate,
        dead_lettered: totals.dead_lettered,
        topics: totals.topics,
        uptime_seconds: state.started.elapsed().as_secs(),
        consumer_pending: pending.unwrap_or(0),
        buffer_size: state.buffer_size(),
        wal_record_count: guard.wal_records,
        circuit_breaker: guard.breaker.as_str(),
        status: if healthy { "healthy" } else { "degraded" },
        outbox,
    }))
}
