//! `GET /metrics`: Prometheus text exposition of everything recorded through `metrics`.
//!
//! Gauges that describe current state (buffer, WAL, breaker, consumer backlog) are refreshed
//! at scrape time; the process metrics are read and appended then (`telemetry::process`).

use super::state::SharedState;
use crate::broker;
use crate::guard::breaker;
use crate::telemetry::{names, process};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

pub async fn render(State(state): State<SharedState>) -> Response {
    metrics::gauge!(names::BUFFER_SIZE).set(state.buffer_size() as f64);
    let guard = state.guard_status();
    metrics::gauge!(names::WAL_BYTES).set(guard.wal_bytes as f64);
    metrics::gauge!(names::WAL_RECORDS).set(guard.wal_records as f64);
    breaker::record_state(guard.breaker);
    if let Some(js) = state.jetstream().filter(|_| state.nats_up()) {
        if let Some(pending) = broker::consumer_pending(&js, &state.broker).await {
            metrics::gauge!(names::CONSUMER_PENDING).set(pending as f64);
        }
    }
    match &state.prometheus {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render() + &process::render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}
