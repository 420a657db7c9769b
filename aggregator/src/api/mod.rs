//! HTTP API (axum): one module per route.
//!
//! | route | module |
//! |---|---|
//! | `POST /publish` | [`publish`] (bearer token when `API_TOKEN` is set: [`auth`]; a slot from [`admission`]) |
//! | `GET /events` | [`events`] (bearer token when `API_READ_TOKEN` is set) |
//! | `GET /events/stream` | [`tail`] (the live tail, Server-Sent Events; the same token) |
//! | `GET /dead-letters` | [`dead_letters`] (bearer token when `API_READ_TOKEN` or `API_TOKEN` is set) |
//! | `GET /stats` | [`stats`] (bearer token when `API_READ_TOKEN` is set) |
//! | `GET /health`, `GET /live`, `GET /ready` | [`health`] |
//! | `GET /metrics` | [`metrics`] |
//! | `GET /` (live dashboard page, no token) | [`dashboard`] |
//!
//! The API never writes SQL itself: it calls the `store` module. Every request gets a tracing
//! span with method, path, status and latency, and is counted and timed by route template
//! ([`http_metrics`]).

pub mod admission;
pub mod auth;
pub mod body;
pub mod dashboard;
pub mod dead_letters;
pub mod events;
pub mod health;
pub mod http_metrics;
pub mod idempotency;
pub mod metrics;
pub mod publish;
pub mod query;
pub mod server;
pub mod state;
pub mod stats;
pub mod tail;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde::Serialize;
use state::SharedState;
use std::time::Duration;
use tower_http::trace::TraceLayer;

pub fn router(state: SharedState) -> Router {
    let body_limit = state.settings.max_body_bytes;
    let writes = Router::new()
        .route("/publish", post(publish::publish))
        .layer(DefaultBodyLimit::max(body_limit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            publish::admit,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let private_reads = Router::new()
        .route("/dead-letters", get(dead_letters::list))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_private_read_token,
        ));
    let reads = Router::new()
        .route("/events", get(events::list))
        .route("/events/stream", get(tail::stream))
        .route("/stats", get(stats::get_stats))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_read_token,
        ));
    Router::new()
        .merge(writes)
        .merge(private_reads)
        .merge(reads)
        .route("/health", get(health::health))
        .route("/live", get(health::live))
        .route("/ready", get(health::ready))
        .route("/metrics", get(metrics::render))
        .route("/", get(dashboard::page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.settings.request_timeout,
        ))
        // Outside the timeout, so a 408 is counted too. `Router::layer` wraps each route
        // after routing, so the matched route template is known here.
        .layer(middleware::from_fn(http_metrics::record))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    tracing::info_span!(target: "aggregator::http", "http", method = %req.method(), path = %req.uri().path(), status = tracing::field::Empty)
                })
                .on_response(|resp: &Response, latency: Duration, span: &tracing::Span| {
                    span.record("status", resp.status().as_u16());
                    // A target of its own: `RUST_LOG=info,aggregator::http=debug` shows one line per request.
                    tracing::debug!(target: "aggregator::http", status = resp.status().as_u16(), latency_ms = latency.as_secs_f64() * 1e3, "request");
                }),
        )
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// One problem with a request: which event (for bodies with several), which field, why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Detail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub reason: String,
}

/// An error answer: `{"error": "...", "details": [...]}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<Detail>,
    /// How many problems there were when `details` lists only the first ones (publish bodies).
    pub details_total: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: Vec::new(),
            details_total: None,
        }
    }

    /// The first `details` of `total` problems.
    pub fn with_details(mut self, details: Vec<Detail>, total: usize) -> Self {
        self.details = details;
        self.details_total = Some(total);
        self
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// A failed query: 503 when the database is unreachable (retry later), 500 otherwise
    /// (parameters are validated first, so anything else is a bug worth a loud answer).
    pub fn from_db(e: sqlx::Error) -> Self {
        if crate::store::is_transient(&e) {
            Self::unavailable(format!("database unavailable: {e}"))
        } else {
            tracing::error!(error = %e, "query failed");
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("query failed: {e}"),
            )
        }
    }

    /// 400 naming one field (a query parameter, or `body`).
    pub fn bad_field(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("invalid {field}: {reason}"),
            details: vec![Detail {
                index: None,
                field: field.to_owned(),
                reason,
            }],
            details_total: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = if self.details.is_empty() {
            serde_json::json!({ "error": self.message })
        } else {
            serde_json::json!({ "error": self.message, "details": self.details })
        };
        if let Some(total) = self.details_total {
            body["details_total"] = total.into();
        }
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}
