//! The telemetry event, its JSON wire format and its validation rules.
//!
//! ```json
//! {"topic": "telemetry.satellite.status", "event_id": "0190f0c2-...",
//!  "timestamp": "2026-11-23T10:30:45.123Z", "source": "SAT-0001",
//!  "payload": {"battery_charge_percent": 85.5}}
//! ```
//!
//! Rules (DESIGN.md):
//! * `topic`: 1..=255 chars, dot-separated non-empty tokens of `[A-Za-z0-9_-]`
//!   (a NATS subject without wildcards).
//! * `event_id`: 1..=255 chars, no control characters.
//! * `timestamp`: RFC 3339.
//! * `source`: 1..=255 chars, no control characters (Postgres text cannot hold NUL).
//! * `payload`: a JSON object of at most [`Limits::max_payload_bytes`] serialized bytes, with no
//!   NUL character in any string (Postgres `jsonb` cannot store `\u0000`).
//!
//! Decoding is split in two: a fast path that deserializes straight into typed fields (the
//! payload stays raw JSON text, never parsed into a tree), and, only when that fails, a slow
//! path that finds which field is wrong so the error can name it.

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// Maximum length, in characters, of `topic`, `event_id` and `source`.
pub const MAX_FIELD_CHARS: usize = 255;
/// Maximum length, in characters, of `timestamp`. RFC 3339 allows any number of fraction
/// digits (and chrono accepts them), but a real timestamp is under 40 characters; without a
/// bound one event could carry a megabyte in this field.
pub const MAX_TIMESTAMP_CHARS: usize = 64;
/// Deepest nesting of arrays/objects accepted inside `payload`. JSON parsers commonly stop at
/// 128 levels (serde_json does), so a deeper payload could be stored but never read back.
pub const MAX_PAYLOAD_DEPTH: usize = 64;
/// Default `MAX_PAYLOAD_BYTES`: 64 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Limits that are configurable per deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted serialized payload, in bytes.
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// Why an event was rejected: the field at fault and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The offending field (`topic`, `event_id`, `timestamp`, `source`, `payload`), or `body`
    /// when the input is not a JSON object at all.
    pub field: &'static str,
    pub reason: String,
}

impl ValidationError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// A validated telemetry event. Construct with [`Event::from_json`] or [`Event::new`].
#[derive(Clone)]
pub struct Event {
    topic: String,
    event_id: String,
    timestamp: DateTime<Utc>,
    /// The timestamp as it was sent, kept so re-serialization is lossless.
    timestamp_text: String,
    source: String,
    /// The payload as raw JSON text (always an object).
    payload: Box<RawValue>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.event_id == other.event_id
            && self.timestamp_text == other.timestamp_text
            && self.source == other.source
            && self.payload.get() == other.payload.get()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("topic", &self.topic)
            .field("event_id", &self.event_id)
            .field("timestamp", &self.timestamp_text)
            .field("source", &self.source)
            .field("payload", &self.payload.get())
            .finish()
    }
}

/// Fast-path wire shape: typed fields, raw payload.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    timestamp: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
    payload: Box<RawValue>,
}

#[derive(Serialize)]
struct WireOut<'a> {
    topic: &'a str,
    event_id: &'a str,
    timestamp: &'a str,
    source: &'a str,
    payload: &'a RawValue,
}

impl Event {
    /// Builds an event from parts, validating every field.
    pub fn new(
        topic: impl Into<String>,
        event_id: impl Into<String>,
        timestamp: &str,
        source: impl Into<String>,
        payload: &serde_json::Value,
        limits: &Limits,
    ) -> Result<Self, ValidationError> {
        let raw = serde_json::value::to_raw_value(payload)
            .map_err(|e| ValidationError::new("payload", e.to_string()))?;
        Self::validated(
            topic.into(),
            event_id.into(),
            timestamp,
            source.into(),
            raw,
            limits,
        )
    }

    /// Decodes and validates one event from JSON bytes.
    pub fn from_json(bytes: &[u8], limits: &Limits) -> Result<Self, ValidationError> {
        match serde_json::from_slice::<Wire<'_>>(bytes) {
            Ok(w) => Self::validated(
                w.topic.into_owned(),
                w.event_id.into_owned(),
                &w.timestamp,
                w.source.into_owned(),
                w.payload,
                limits,
            ),
            Err(_) => Err(diagnose(bytes, limits)),
        }
    }

    /// Validates an already-parsed JSON value (used by the HTTP API, which parses whole
    /// request bodies).
    pub fn from_value(value: &serde_json::Value, limits: &Limits) -> Result<Self, ValidationError> {
        let obj = value
            .as_object()
            .ok_or_else(|| ValidationError::new("body", "an event must be a JSON object"))?;
        let text = |field: &'static str| -> Result<String, ValidationError> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => {
                    Err(ValidationError::new(field, "is required"))
                }
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(ValidationError::new(field, "must be a string")),
            }
        };
        let topic = text("topic")?;
        let event_id = text("event_id")?;
        let timestamp = text("timestamp")?;
        let source = text("source")?;
        let payload = match obj.get("payload") {
            None | Some(serde_json::Value::Null) => {
                return Err(ValidationError::new("payload", "is required"))
            }
            Some(p @ serde_json::Value::Object(_)) => p,
            Some(_) => return Err(ValidationError::new("payload", "must be a JSON object")),
        };
        Self::new(topic, event_id, &timestamp, source, payload, limits)
    }

    fn validated(
        topic: String,
        event_id: String,
        timestamp: &str,
        source: String,
        payload: Box<RawValue>,
        limits: &Limits,
    ) -> Result<Self, ValidationError> {
        validate_topic(&topic)?;
        validate_text("event_id", &event_id)?;
        if timestamp.chars().count() > MAX_TIMESTAMP_CHARS {
            return Err(ValidationError::new(
                "timestamp",
                format!("must be at most {MAX_TIMESTAMP_CHARS} characters"),
            ));
        }
        let parsed = DateTime::<FixedOffset>::parse_from_rfc3339(timestamp).map_err(|e| {
            ValidationError::new(
                "timestamp",
                format!("must be RFC 3339 ({e}): {timestamp:?}"),
            )
        })?;
        validate_text("source", &source)?;
        validate_payload(&payload, limits)?;
        Ok(Self {
            topic,
            event_id,
            timestamp: parsed.with_timezone(&Utc),
            timestamp_text: timestamp.to_owned(),
            source,
            payload,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn event_id(&self) -> &str {
        &self.event_id
    }
    pub fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }
    pub fn source(&self) -> &str {
        &self.source
    }
    /// The payload as raw JSON text (an object).
    pub fn payload_json(&self) -> &str {
        self.payload.get()
    }

    /// The event in its wire format.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing borrowed strings and a raw value cannot fail.
        serde_json::to_vec(&WireOut {
            topic: &self.topic,
            event_id: &self.event_id,
            timestamp: &self.timestamp_text,
            source: &self.source,
            payload: &self.payload,
        })
        .unwrap_or_default()
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireOut {
            topic: &self.topic,
            event_id: &self.event_id,
            timestamp: &self.timestamp_text,
            source: &self.source,
            payload: &self.payload,
        }
        .serialize(s)
    }
}

/// Deserializing re-validates every rule except the payload size limit, which belongs to the
/// deployment that accepted the event (used to read events back from the aggregator's WAL).
impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let unlimited = Limits {
            max_payload_bytes: usize::MAX,
        };
        Event::validated(
            w.topic.into_owned(),
            w.event_id.into_owned(),
            &w.timestamp,
            w.source.into_owned(),
            w.payload,
            &unlimited,
        )
        .map_err(serde::de::Error::custom)
    }
}

/// Checks the topic rule: 1..=255 chars of dot-separated, non-empty `[A-Za-z0-9_-]` tokens.
pub fn validate_topic(topic: &str) -> Result<(), ValidationError> {
    if topic.is_empty() {
        return Err(ValidationError::new("topic", "must not be empty"));
    }
    if topic.len() > MAX_FIELD_CHARS {
        return Err(ValidationError::new(
            "topic",
            format!("must be at most {MAX_FIELD_CHARS} characters"),
        ));
    }
    for token in topic.split('.') {
        if token.is_empty() {
            return Err(ValidationError::new(
                "topic",
                "must be dot-separated non-empty tokens (no leading, trailing or double dots)",
            ));
        }
        if let Some(c) = token
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(ValidationError::new(
                "topic",
                format!("invalid character {c:?}: tokens may use only A-Z a-z 0-9 _ -"),
            ));
        }
    }
    Ok(())
}

/// The `source` rule: 1..=255 characters, no control characters.
pub fn validate_source(source: &str) -> Result<(), ValidationError> {
    validate_text("source", source)
}

fn validate_text(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.chars().count() > MAX_FIELD_CHARS {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_FIELD_CHARS} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn validate_payload(payload: &RawValue, limits: &Limits) -> Result<(), ValidationError> {
    let text = payload.get();
    if !text.starts_with('{') {
        return Err(ValidationError::new("payload", "must be a JSON object"));
    }
    if text.len() > limits.max_payload_bytes {
        return Err(ValidationError::new(
            "payload",
            format!(
                "is {} bytes, more than the limit of {} bytes",
                text.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    if nesting_depth(text) > MAX_PAYLOAD_DEPTH {
        return Err(ValidationError::new(
            "payload",
            format!("is nested more than {MAX_PAYLOAD_DEPTH} levels deep"),
        ));
    }
    if has_escaped_nul(text) {
        return Err(ValidationError::new(
            "payload",
            "strings must not contain the NUL character (\\u0000)",
        ));
    }
    // Numbers must be finite 64-bit floats and strings valid Unicode (no lone surrogates):
    // what other JSON readers, and Postgres jsonb, can take. A full parse checks both.
    if let Err(e) = serde_json::from_str::<Checked>(text) {
        return Err(ValidationError::new("payload", e.to_string()));
    }
    Ok(())
}

/// A JSON value parsed and thrown away as it is read: every number converted and every string
/// decoded exactly as a `serde_json::Value` parse would (so the same errors), without building
/// a tree. The payload stays raw text; building a `Value` only to drop it was most of the
/// aggregator's decoding cost.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// Whether valid JSON text holds a `\u0000` escape inside a string (an escaped backslash
/// followed by `u0000` is not one). Scans the text as sent, so a NUL hidden under a duplicate
/// key is found too.
fn has_escaped_nul(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(&b"0000"[..]) {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// Deepest array/object nesting of valid JSON text (brackets inside strings don't count).
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Slow path: the fast decode failed; find out why, naming the field where possible.
fn diagnose(bytes: &[u8], limits: &Limits) -> ValidationError {
    if std::str::from_utf8(bytes).is_err() {
        return ValidationError::new("body", "is not valid UTF-8");
    }
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Err(e) => ValidationError::new("body", format!("is not valid JSON: {e}")),
        Ok(value) => match Event::from_value(&value, limits) {
            Err(e) => e,
            // The tree parsed and validated, but the typed decode did not: report the decode.
            Ok(_) => match serde_json::from_slice::<Wire<'_>>(bytes) {
                Err(e) => ValidationError::new("body", e.to_string()),
                Ok(_) => ValidationError::new("body", "could not be decoded"),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(topic: &str, id: &str, ts: &str, source: &str, payload: &str) -> Vec<u8> {
        format!(
            r#"{{"topic":{},"event_id":{},"timestamp":{},"source":{},"payload":{}}}"#,
            serde_json::to_string(topic).unwrap(),
            serde_json::to_string(id).unwrap(),
            serde_json::to_string(ts).unwrap(),
            serde_json::to_string(source).unwrap(),
            payload
        )
        .into_bytes()
    }

    fn err_field(bytes: &[u8]) -> &'static str {
        Event::from_json(bytes, &Limits::default())
            .unwrap_err()
            .field
    }

    #[test]
    fn valid_event_round_trips() {
        let b = ev(
            "telemetry.satellite.status",
            "abc",
            "2026-11-23T10:30:45.123Z",
            "SAT-0001",
            r#"{"battery_charge_percent":85.5}"#,
        );
        let e = Event::from_json(&b, &Limits::default()).unwrap();
        assert_eq!(e.topic(), "telemetry.satellite.status");
        assert_eq!(e.payload_json(), r#"{"battery_charge_percent":85.5}"#);
        let again = Event::from_json(&e.to_json(), &Limits::default()).unwrap();
        assert_eq!(again, e);
        assert_eq!(serde_json::to_vec(&e).unwrap(), e.to_json());
    }

    #[test]
    fn each_rule_names_its_field() {
        let ok_ts = "2026-11-23T10:30:45Z";
        assert_eq!(err_field(&ev("", "a", ok_ts, "s", "{}")), "topic");
        assert_eq!(err_field(&ev("a..b", "a", ok_ts, "s", "{}")), "topic");
        assert_eq!(err_field(&ev("a.*", "a", ok_ts, "s", "{}")), "topic");
        assert_eq!(err_field(&ev("a.>", "a", ok_ts, "s", "{}")), "topic");
        assert_eq!(err_field(&ev("a b", "a", ok_ts, "s", "{}")), "topic");
        assert_eq!(
            err_field(&ev(&"a".repeat(256), "a", ok_ts, "s", "{}")),
            "topic"
        );
        let long_ts = format!("2026-11-23T10:30:45.{}Z", "1".repeat(1000));
        assert_eq!(err_field(&ev("t", "a", &long_ts, "s", "{}")), "timestamp");
        assert_eq!(err_field(&ev("t", "", ok_ts, "s", "{}")), "event_id");
        assert_eq!(err_field(&ev("t", "a\nb", ok_ts, "s", "{}")), "event_id");
        assert_eq!(
            err_field(&ev("t", &"é".repeat(256), ok_ts, "s", "{}")),
            "event_id"
        );
        assert_eq!(
            err_field(&ev("t", "a", "yesterday", "s", "{}")),
            "timestamp"
        );
        assert_eq!(
            err_field(&ev("t", "a", "2026-11-23 10:30:45", "s", "{}")),
            "timestamp"
        );
        assert_eq!(err_field(&ev("t", "a", ok_ts, "", "{}")), "source");
        assert_eq!(err_field(&ev("t", "a", ok_ts, "a\u{0}", "{}")), "source");
        assert_eq!(err_field(&ev("t", "a", ok_ts, "s", "[1]")), "payload");
        assert_eq!(err_field(&ev("t", "a", ok_ts, "s", "3")), "payload");
        assert_eq!(
            err_field(&ev("t", "a", ok_ts, "s", r#"{"x":"\u0000"}"#)),
            "payload"
        );
        assert_eq!(err_field(br#"{"event_id":"a"}"#), "topic");
        assert_eq!(err_field(br#"{"topic":5}"#), "topic");
        assert_eq!(err_field(b"not json"), "body");
        assert_eq!(err_field(b"[1,2]"), "body");
        assert_eq!(err_field(&[0xff, 0xfe]), "body");
    }

    #[test]
    fn boundaries_are_inclusive() {
        let ok_ts = "2026-11-23T10:30:45+07:00";
        let long = "é".repeat(255);
        let topic = format!("{}.{}", "a".repeat(127), "b".repeat(127));
        assert!(
            Event::from_json(&ev(&topic, &long, ok_ts, &long, "{}"), &Limits::default()).is_ok()
        );
        // An escaped backslash followed by u0000 is not a NUL.
        assert!(Event::from_json(
            &ev("t", "a", ok_ts, "s", r#"{"x":"\\u0000"}"#),
            &Limits::default()
        )
        .is_ok());
    }

    #[test]
    fn payloads_postgres_cannot_store_are_rejected() {
        let ts = "2026-11-23T10:30:45Z";
        for payload in [
            r#"{"a":"\u0000","a":1}"#,
            r#"{"n":1e999999}"#,
            r#"{"s":"\ud800"}"#,
            r#"{"k\u0000":1}"#,
        ] {
            let e = Event::from_json(&ev("t", "a", ts, "s", payload), &Limits::default());
            assert_eq!(e.unwrap_err().field, "payload", "{payload}");
        }
        assert!(Event::from_json(
            &ev("t", "a", ts, "s", r#"{"n":1e300,"s":"\ud83d\ude00"}"#),
            &Limits::default()
        )
        .is_ok());
    }

    #[test]
    fn payload_nesting_is_limited() {
        let ts = "2026-11-23T10:30:45Z";
        let nested = |n: usize| format!("{}{}{}", "{\"a\":".repeat(n - 1) + "{", "", "}".repeat(n));
        assert_eq!(nesting_depth(&nested(64)), 64);
        assert!(Event::from_json(&ev("t", "a", ts, "s", &nested(64)), &Limits::default()).is_ok());
        let e =
            Event::from_json(&ev("t", "a", ts, "s", &nested(65)), &Limits::default()).unwrap_err();
        assert_eq!(e.field, "payload");
        // Brackets inside strings do not count.
        assert_eq!(nesting_depth(r#"{"k":"[[[[{{{{\"]]"}"#), 1);
    }

    #[test]
    fn payload_limit_is_enforced() {
        let limits = Limits {
            max_payload_bytes: 16,
        };
        let ts = "2026-11-23T10:30:45Z";
        assert!(Event::from_json(&ev("t", "a", ts, "s", r#"{"k":"01234567"}"#), &limits).is_ok());
        let e =
            Event::from_json(&ev("t", "a", ts, "s", r#"{"k":"012345678"}"#), &limits).unwrap_err();
        assert_eq!(e.field, "payload");
    }
}
