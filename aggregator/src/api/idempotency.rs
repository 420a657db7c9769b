//! `Idempotency-Key` on `POST /publish`: a retry is accepted once, a reused key is a 409.
//!
//! Event `i` of a keyed request goes out with `Nats-Msg-Id: <key>:<i>`, so JetStream drops a
//! resend within its 2-minute duplicate window. On its own that would also drop the events of
//! another request that happened to use the same key (another client, or a client bug) while
//! answering it 202. So every keyed message also carries `Idempotency-Body-Sha256`, the hash
//! of the request's events, and event 0 is published alone first: it claims the key. When
//! its PubAck says `duplicate`, the message the key first stored (the ack names its sequence)
//! is fetched and its hash compared: the same events are a retry (go on, 202), other events a
//! conflict (409, nothing of this request published).

use super::ApiError;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use shared::Event;

const HEADER: &str = "idempotency-key";
const MAX_KEY: usize = 200;
/// The hash of a keyed request's events, on each of its messages.
pub const BODY_HASH: &str = "Idempotency-Body-Sha256";

/// The `Idempotency-Key` header, if any; a 400 when it is empty, too long or not ASCII.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY => Ok(Some(k.to_owned())),
        _ => Err(ApiError::bad_field(
            "Idempotency-Key",
            format!("must be 1..={MAX_KEY} visible ASCII characters"),
        )),
    }
}

/// `Nats-Msg-Id` of event `i` of a request with `key`.
pub fn msg_id(key: &str, i: usize) -> String {
    format!("{key}:{i}")
}

/// SHA-256 (hex) of the events as published: the same events give the same hash whatever
/// the body's shape or whitespace, so a client re-serializing its retry is still a retry.
pub fn body_hash(events: &[Event]) -> String {
    let mut h = Sha256::new();
    for e in events {
        let json = e.to_json();
        h.update((json.len() as u64).to_be_bytes());
        h.update(&json);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the message stored at `seq` (the one a duplicate event 0 was dropped for) came
/// from the same events: by its hash header, or by its payload when it has none (published
/// before the header existed).
pub async fn is_retry(
    js: &async_nats::jetstream::Context,
    stream: &str,
    seq: u64,
    hash: &str,
    first_payload: &[u8],
) -> Result<bool, async_nats::Error> {
    let original = js.get_stream(stream).await?.get_raw_message(seq).await?;
    Ok(match original.headers.get(BODY_HASH) {
        Some(h) => h.as_str() == hash,
        None => original.payload.as_ref() == first_payload,
    })
}

/// The 409 for a key already used with other events.
pub fn conflict(key: &str) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        message: format!(
            "Idempotency-Key {key:?} was used in the last 2 minutes for different events; \
             nothing was published (use a new key for new events)"
        ),
        details: vec![super::Detail {
            index: None,
            field: "Idempotency-Key".to_owned(),
            reason: "already used for different events".to_owned(),
        }],
        details_total: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> Event {
        let v = serde_json::json!({"topic": "a.b", "event_id": id,
            "timestamp": "2026-01-01T00:00:00Z", "source": "s", "payload": {}});
        Event::from_value(&v, &shared::Limits::default()).unwrap()
    }

    #[test]
    fn the_hash_depends_on_the_events_and_their_order() {
        let (a, b) = (ev("a"), ev("b"));
        let ab = body_hash(&[a.clone(), b.clone()]);
        assert_eq!(ab.len(), 64);
        assert_eq!(ab, body_hash(&[a.clone(), b.clone()]));
        assert_ne!(ab, body_hash(&[b.clone(), a.clone()]));
        assert_ne!(ab, body_hash(&[a]));
    }
}
