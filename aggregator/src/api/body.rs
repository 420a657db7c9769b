//! Parsing a `POST /publish` body with memory bounded by the request, not by what it claims.
//!
//! A 10 MiB body `[1,1,1,...]` holds five million elements. Built as one `serde_json::Value`
//! with one error detail each, it took gigabytes. So the top-level array is split into
//! borrowed raw elements (`&RawValue`, a slice of the body each) and counted while it is
//! parsed: past `MAX_EVENTS_PER_REQUEST` parsing stops with a 413. Each element is then
//! parsed and validated alone, and only the first [`MAX_DETAILS`] problems are kept, with the
//! total in `details_total`.

use super::{ApiError, Detail};
use axum::http::StatusCode;
use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use shared::{Event, Limits};
use std::cell::Cell;
use std::fmt;

/// Details listed in a 422; the rest are only counted (`details_total`).
pub const MAX_DETAILS: usize = 100;

/// Parses and validates a publish body: 400 when it is not a JSON event, list of events or
/// `{"events": [...]}`, 413 past `max_events`, 422 listing the first invalid events.
pub fn parse(body: &[u8], limits: &Limits, max_events: usize) -> Result<Vec<Event>, ApiError> {
    let items = split(body, max_events)?;
    if items.is_empty() {
        return Err(ApiError::bad_field("body", "contains no events"));
    }
    let mut events = Vec::with_capacity(items.len());
    let mut details = Vec::new();
    let mut invalid = 0usize;
    for (index, raw) in items.iter().enumerate() {
        let checked = if raw.get().len() > max_event_json(limits) {
            Err(too_big(raw.get().len(), limits))
        } else {
            // The raw text was scanned but not fully checked (a number out of f64 range): a
            // 400 like any body that is not JSON.
            let value: Value = serde_json::from_str(raw.get()).map_err(not_json)?;
            Event::from_value(&value, limits)
        };
        match checked {
            Ok(e) if invalid == 0 => events.push(e),
            Ok(_) => {}
            Err(e) => {
                invalid += 1;
                if details.len() < MAX_DETAILS {
                    details.push(Detail {
                        index: Some(index),
                        field: e.field.to_owned(),
                        reason: e.reason,
                    });
                }
            }
        }
    }
    if invalid > 0 {
        let message = format!(
            "{invalid} of {} events are invalid; none were published{}",
            items.len(),
            if invalid > MAX_DETAILS {
                format!(" (the first {MAX_DETAILS} are listed)")
            } else {
                String::new()
            }
        );
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message).with_details(details, invalid)
        );
    }
    Ok(events)
}

/// The most JSON text one event may take: its payload (at most `MAX_PAYLOAD_BYTES` once
/// re-serialized) and other fields, with ample room for whitespace and escapes. A larger
/// element cannot be valid, and is refused before it is built: one 10 MiB element as a
/// `Value` took 200 MB.
fn max_event_json(limits: &Limits) -> usize {
    16 * (limits.max_payload_bytes + 8 * 1024)
}

fn too_big(len: usize, limits: &Limits) -> shared::event::ValidationError {
    shared::event::ValidationError {
        field: "body",
        reason: format!(
            "the event is {len} bytes of JSON, more than any event within MAX_PAYLOAD_BYTES \
             ({}) can take ({})",
            limits.max_payload_bytes,
            max_event_json(limits)
        ),
    }
}

/// The events of a body as raw slices of it, without building them: the elements of an
/// array, of `{"events": [...]}`, or the one event object.
fn split(body: &[u8], max_events: usize) -> Result<Vec<&RawValue>, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => array(body, max_events),
        Some(b'{') => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let (events, has_topic) =
                serde::Deserializer::deserialize_map(&mut de, TopKeys).map_err(not_json)?;
            de.end().map_err(not_json)?;
            match events {
                // An object with `topic` is an event, whatever other members it has.
                Some(list) if !has_topic => {
                    if !list.get().starts_with('[') {
                        return Err(ApiError::bad_field("events", "must be an array of events"));
                    }
                    array(list.get().as_bytes(), max_events)
                }
                _ => Ok(vec![serde_json::from_slice(body).map_err(not_json)?]),
            }
        }
        _ => {
            let _: IgnoredAny = serde_json::from_slice(body).map_err(not_json)?;
            Err(ApiError::bad_field(
                "body",
                "must be an event object, an array of events, or {\"events\": [...]}",
            ))
        }
    }
}

/// The elements of a JSON array, at most `max`: 413 as soon as there is one more.
fn array(json: &[u8], max: usize) -> Result<Vec<&RawValue>, ApiError> {
    let too_many = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed = Elements {
        max,
        too_many: &too_many,
    }
    .deserialize(&mut de)
    .and_then(|items| de.end().map(|()| items));
    match parsed {
        Ok(items) => Ok(items),
        Err(_) if too_many.get() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request has more than MAX_EVENTS_PER_REQUEST ({max}) events; send them in \
                 several requests"
            ),
        )),
        Err(e) => Err(not_json(e)),
    }
}

fn not_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_field("body", format!("not valid JSON: {e}"))
}

/// Visits a top-level array, keeping each element as a raw slice and stopping at `max + 1`.
struct Elements<'c> {
    max: usize,
    too_many: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&RawValue>()? {
            if items.len() == self.max {
                self.too_many.set(true);
                return Err(A::Error::custom("too many events"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Visits a top-level object for what decides its shape: its `events` member (raw) and
/// whether it has a `topic`. Nothing else is kept.
struct TopKeys;

impl<'de> Visitor<'de> for TopKeys {
    type Value = (Option<&'de RawValue>, bool);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event or {\"events\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut events, mut has_topic) = (None, false);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "events" => events = Some(map.next_value::<&RawValue>()?),
                "topic" => {
                    has_topic = true;
                    map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((events, has_topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, ts: &str) -> Value {
        serde_json::json!({"topic": "a.b", "event_id": id, "timestamp": ts, "source": "s", "payload": {}})
    }

    #[test]
    fn three_body_shapes_are_accepted() {
        let l = Limits::default();
        let one = ev("1", "2026-01-01T00:00:00Z");
        let b = serde_json::to_vec(&one).unwrap();
        assert_eq!(parse(&b, &l, 10).unwrap().len(), 1);
        let b =
            serde_json::to_vec(&serde_json::json!([one, ev("2", "2026-01-01T00:00:00Z")])).unwrap();
        assert_eq!(parse(&b, &l, 10).unwrap().len(), 2);
        let b = serde_json::to_vec(&serde_json::json!({"events": [one]})).unwrap();
        assert_eq!(parse(&b, &l, 10).unwrap().len(), 1);
        let b = format!(" \n{{ \"x\": 1, \"events\" : [ {one} ] }} \n");
        assert_eq!(parse(b.as_bytes(), &l, 10).unwrap().len(), 1);
    }

    #[test]
    fn invalid_events_are_reported_by_index() {
        let l = Limits::default();
        let b = serde_json::to_vec(&serde_json::json!([
            ev("1", "2026-01-01T00:00:00Z"),
            ev("2", "not a time"),
            ev("", "2026-01-01T00:00:00Z"),
        ]))
        .unwrap();
        let err = parse(&b, &l, 10).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        let got: Vec<_> = err
            .details
            .iter()
            .map(|d| (d.index, d.field.as_str()))
            .collect();
        assert_eq!(got, vec![(Some(1), "timestamp"), (Some(2), "event_id")]);
        assert_eq!(err.details_total, Some(2));
    }

    #[test]
    fn details_are_capped_and_counted() {
        let body = format!("[{}1]", "1,".repeat(999));
        let err = parse(body.as_bytes(), &Limits::default(), 1000).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.details.len(), MAX_DETAILS);
        assert_eq!(err.details_total, Some(1000));
        assert_eq!(err.details.last().unwrap().index, Some(MAX_DETAILS - 1));
    }

    #[test]
    fn an_element_too_large_for_any_event_is_refused_unbuilt() {
        let l = Limits {
            max_payload_bytes: 1024,
        };
        let max = max_event_json(&l);
        let big = format!("[1,{{\"payload\": [{}1]}}]", "1,".repeat(max / 2));
        let err = parse(big.as_bytes(), &l, 10).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        let got: Vec<_> = err
            .details
            .iter()
            .map(|d| (d.index, d.field.as_str()))
            .collect();
        assert_eq!(got, vec![(Some(0), "body"), (Some(1), "body")]);
        assert!(
            err.details[1].reason.contains("MAX_PAYLOAD_BYTES"),
            "{:?}",
            err.details
        );
        // A payload just over the limit still gets its own detail, naming `payload`.
        let over = serde_json::json!({"topic": "a.b", "event_id": "1", "timestamp":
            "2026-01-01T00:00:00Z", "source": "s", "payload": {"p": "x".repeat(1100)}});
        let err = parse(over.to_string().as_bytes(), &l, 10).unwrap_err();
        assert_eq!(err.details[0].field, "payload");
    }

    #[test]
    fn more_events_than_the_limit_is_413_in_either_list_shape() {
        let l = Limits::default();
        let list = format!("[{}1]", "1,".repeat(10));
        for body in [list.clone(), format!("{{\"events\": {list}}}")] {
            let err = parse(body.as_bytes(), &l, 10).unwrap_err();
            assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
            assert!(
                err.message.contains("MAX_EVENTS_PER_REQUEST"),
                "{}",
                err.message
            );
        }
        // Exactly the limit is parsed (and here rejected as invalid events, not as too many).
        let body = format!("[{}1]", "1,".repeat(9));
        assert_eq!(
            parse(body.as_bytes(), &l, 10).unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    #[test]
    fn malformed_bodies_are_400() {
        let l = Limits::default();
        for body in [
            &b"{"[..],
            b"",
            b"[]",
            b"42",
            b"\"x\"",
            br#"{"events": 3}"#,
            br#"{"events": []}"#,
            b"[1,",
            b"[1] x",
            b"{} x",
            b"[1e999]",
            b"[\"\xff\"]",
        ] {
            let err = parse(body, &l, 10).unwrap_err();
            assert_eq!(
                err.status,
                StatusCode::BAD_REQUEST,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
