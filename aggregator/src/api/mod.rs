//! HTTP API (axum): one module per route.
//!
//! | route | module |
//! |---|---|
//! | `GET /stats` | [`stats`] |
//! | `GET /health`, `GET /live`, `GET /ready` | [`health`] |
//! | `GET /metrics` | [`metrics`] |
//!
//! The API never writes SQL itself: it calls the `store` module.

pub mod health;
pub mod metrics;
pub mod stats;

use crate::state::SharedState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/stats", get(stats::get_stats))
        .route("/health", get(health::health))
        .route("/live", get(health::live))
        .route("/ready", get(health::ready))
        .route("/metrics", get(metrics::render))
        .with_state(state)
}

/// An error answer: `{"error": "..."}` with a status code.
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}
