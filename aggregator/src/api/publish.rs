//! `POST /publish`: validate every event, publish each to JetStream, answer after the stream
//! acknowledged all of them.
//!
//! The body is one event, a JSON array of events, or `{"events": [...]}`. Validation comes
//! first and is all-or-nothing: if any event is invalid the answer is 422 with one detail per
//! invalid event (the first 100, and their total) and nothing is published; the parsing with
//! bounded memory is in [`super::body`]. Then each event goes to `<prefix>.<topic>` and the
//! handler waits (at most `PUBLISH_TIMEOUT`) for every PubAck before answering 202.
//!
//! With an `Idempotency-Key` header, event `i` is published with `Nats-Msg-Id: <key>:<i>`, so
//! a client retrying a request whose answer it lost does not create the messages twice
//! (within the stream's 2-minute duplicate window); the same key with other events is a 409
//! ([`idempotency`]). Without it, a retried request that had partly succeeded re-publishes
//! those events; they are then counted as duplicates, never stored twice.

use super::admission::Refusal;
use super::idempotency;
use super::state::{AppState, SharedState};
use super::ApiError;
use crate::telemetry::names;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use futures::future::try_join_all;
use serde_json::Value;
use shared::Event;
use std::future::IntoFuture;

/// Middleware in front of [`publish`], before the body is read: at most
/// `MAX_CONCURRENT_PUBLISH` requests at once; a request finding every slot taken waits in a
/// short queue for at most `PUBLISH_QUEUE_TIMEOUT` ([`super::admission`]), and beyond the queue or
/// after the wait gets 503 + Retry-After. The bound on waiting keeps memory bounded under a
/// flood (each body may be 10 MiB, and a waiting request has not read its body).
pub async fn admit(
    State(state): State<SharedState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let _slot = match state.admission.admit().await {
        Ok(slot) => slot,
        Err(Refusal::Busy) => {
            return Err(ApiError::unavailable(
                "too many publish requests in progress (MAX_CONCURRENT_PUBLISH) and waiting \
                 (PUBLISH_QUEUE_TIMEOUT); retry later",
            ))
        }
        Err(Refusal::TimedOut) => {
            return Err(ApiError::unavailable(format!(
                "no publish slot (MAX_CONCURRENT_PUBLISH) freed within PUBLISH_QUEUE_TIMEOUT \
                 ({:?}); retry later",
                state.admission.timeout()
            )))
        }
    };
    Ok(next.run(request).await)
}

pub async fn publish(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.map_err(|rejection| body_error(&rejection, state.settings.max_body_bytes))?;
    let events = super::body::parse(
        &body,
        &state.settings.limits,
        state.settings.max_events_per_request,
    )?;
    let key = idempotency::key(&headers)?;
    let Some(js) = state.jetstream().filter(|_| state.nats_up()) else {
        return Err(ApiError::unavailable("NATS is unavailable; retry later"));
    };
    let trace_id = trace_id(&headers);
    let publishing = publish_all(&js, &state, &events, key.as_deref(), &trace_id);
    match tokio::time::timeout(state.settings.publish_timeout, publishing).await {
        Ok(Ok(Outcome::Published)) => {}
        Ok(Ok(Outcome::Conflict)) => {
            return Err(idempotency::conflict(key.as_deref().unwrap_or_default()))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "publish to JetStream failed");
            return Err(ApiError::unavailable(format!(
                "the broker did not accept the events: {e}"
            )));
        }
        Err(_) => {
            return Err(ApiError::unavailable(format!(
                "the broker did not acknowledge within {:?}",
                state.settings.publish_timeout
            )))
        }
    }
    metrics::counter!(names::PUBLISHED).increment(events.len() as u64);
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"status": "accepted", "accepted": events.len()})),
    ))
}

/// A body that could not be read: 413 over `MAX_BODY_BYTES`, else 400.
fn body_error(rejection: &BytesRejection, max_body_bytes: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than MAX_BODY_BYTES ({max_body_bytes} bytes)"),
        )
    } else {
        ApiError::bad_field("body", rejection.body_text())
    }
}

/// W3C trace context: the caller's trace id when it sent a `traceparent`, else a new one.
fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get(shared::trace::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(shared::trace::parse)
        .map(|t| t[3..35].to_owned())
        .unwrap_or_else(|| random_hex(16))
}

/// What became of a request's events.
enum Outcome {
    /// Every event acknowledged by the stream (stored now, or by the request this retries).
    Published,
    /// The key was used for other events: nothing of this request was published.
    Conflict,
}

/// Publishes every event to its subject, each with its own span id in the trace so it can be
/// followed to its stored row, and waits for every PubAck. With a key, event 0 goes first and
/// alone to claim it (see [`idempotency`]).
async fn publish_all(
    js: &async_nats::jetstream::Context,
    state: &AppState,
    events: &[Event],
    key: Option<&str>,
    trace_id: &str,
) -> Result<Outcome, async_nats::Error> {
    let prefix = &state.settings.subject_prefix;
    let keyed = key.map(|k| (k, idempotency::body_hash(events)));
    let keyed = keyed.as_ref().map(|(k, h)| (*k, h.as_str()));
    let mut rest = events.iter().enumerate();
    if let Some((k, hash)) = keyed {
        let (i, first) = rest.next().expect("a parsed body holds at least one event");
        let ack = publish_one(js, prefix, first, Some((k, i, hash)), trace_id)
            .await?
            .await?;
        if ack.duplicate {
            let stream = &state.broker.stream_name;
            let first_payload = first.to_json();
            if !idempotency::is_retry(js, stream, ack.sequence, hash, &first_payload).await? {
                return Ok(Outcome::Conflict);
            }
        }
    }
    let mut acks = Vec::with_capacity(events.len());
    for (i, event) in rest {
        let keyed = keyed.map(|(k, hash)| (k, i, hash));
        acks.push(publish_one(js, prefix, event, keyed, trace_id).await?);
    }
    try_join_all(acks.into_iter().map(|a| a.into_future())).await?;
    Ok(Outcome::Published)
}

/// Publishes one event; with `(key, index, hash)` it carries `Nats-Msg-Id` and the hash.
async fn publish_one(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    event: &Event,
    keyed: Option<(&str, usize, &str)>,
    trace_id: &str,
) -> Result<async_nats::jetstream::context::PublishAckFuture, async_nats::Error> {
    let subject = shared::subject::subject_for(prefix, event.topic());
    let mut headers = async_nats::HeaderMap::new();
    if let Some((key, i, hash)) = keyed {
        headers.insert("Nats-Msg-Id", idempotency::msg_id(key, i).as_str());
        headers.insert(idempotency::BODY_HASH, hash);
    }
    headers.insert(
        shared::trace::HEADER,
        format!("00-{trace_id}-{}-01", random_hex(8)).as_str(),
    );
    Ok(js
        .publish_with_headers(subject, headers, event.to_json().into())
        .await?)
}

/// `n` random bytes as lowercase hex (never all zeros, which W3C reserves as invalid).
fn random_hex(n: usize) -> String {
    loop {
        let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
        if bytes.iter().any(|b| *b != 0) {
            return bytes.iter().map(|b| format!("{b:02x}")).collect();
        }
    }
}
