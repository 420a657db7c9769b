//! `GET /health` (dependencies), `GET /live` (process alive), `GET /ready` (can take traffic).

use super::state::SharedState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::time::Duration;

#[derive(Serialize)]
pub struct Health {
    pub status: &'static str,
    pub timestamp: String,
    pub database_status: &'static str,
    pub nats_status: &'static str,
    pub wal_size_bytes: u64,
    pub wal_record_count: u64,
    pub buffer_size: i64,
    pub circuit_breaker: &'static str,
}

fn up_down(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

pub async fn health(State(state): State<SharedState>) -> (StatusCode, Json<Health>) {
    let db_up = match state.store.get() {
        Some(store) => store.ping(Duration::from_secs(2)).await,
        None => false,
    };
    let nats_up = state.nats_up();
    let guard = state.guard_status();
    let healthy = db_up && nats_up;
    let body = Health {
        status: if healthy { "healthy" } else { "degraded" },
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        database_status: up_down(db_up),
        nats_status: up_down(nats_up),
        wal_size_bytes: guard.wal_bytes,
        wal_record_count: guard.wal_records,
        buffer_size: state.buffer_size(),
        circuit_breaker: guard.breaker.as_str(),
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "alive" }))
}

/// 200 `{"ready":true}` when migrations are applied, NATS is connected, a batch can be made
/// durable (the database takes writes or the WAL does) and the process is not draining for
/// shutdown; else 503 `{"ready":false,"reasons":[...]}` naming each failing condition.
pub async fn ready(State(state): State<SharedState>) -> (StatusCode, Json<serde_json::Value>) {
    let reasons = state.not_ready_reasons();
    if reasons.is_empty() {
        return (StatusCode::OK, Json(serde_json::json!({ "ready": true })));
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "ready": false, "reasons": reasons })),
    )
}
