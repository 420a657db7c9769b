//! `GET /metrics`: Prometheus text exposition of everything recorded through `metrics`.

use crate::state::SharedState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

pub async fn render(State(state): State<SharedState>) -> Response {
    metrics::gauge!("aggregator_buffer_size").set(state.buffer_size() as f64);
    match &state.prometheus {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}
