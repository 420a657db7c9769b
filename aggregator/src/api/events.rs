//! `GET /events?topic=&source=&since=&until=&limit=&after=`: stored events, newest event
//! timestamp first (ties: newest ingest first), by keyset pagination.
//!
//! `next` is an opaque cursor for the following page (null on the last page); pass it back as
//! `after`. Parameters are parsed strictly: an unknown or repeated parameter, or a bad value,
//! is a 400 naming it.

use super::state::SharedState;
use super::{query, ApiError};
use crate::message::EventItem;
use crate::store::queries::{EventFilter, StoredEvent};
use axum::extract::{RawQuery, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Serialize)]
pub struct EventPage {
    pub events: Vec<EventItem>,
    pub next: Option<String>,
}

pub async fn list(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
) -> Result<Json<EventPage>, ApiError> {
    let filter = parse_query(query.as_deref().unwrap_or(""))?;
    let mut want = filter.clone();
    want.limit = filter.limit + 1;
    let rows = state
        .store()?
        .list_events(&want)
        .await
        .map_err(ApiError::from_db)?;
    let (rows, next) = query::page(rows, filter.limit, |r| encode_cursor(r.ts, r.id));
    Ok(Json(EventPage {
        events: rows
            .into_iter()
            .filter_map(StoredEvent::into_item)
            .collect(),
        next,
    }))
}

fn parse_query(query: &str) -> Result<EventFilter, ApiError> {
    let mut f = EventFilter {
        limit: query::DEFAULT_LIMIT,
        ..EventFilter::default()
    };
    for (key, value) in query::pairs(Some(query))? {
        match key.as_str() {
            "topic" => f.topic = Some(query::topic(value)?),
            "source" => f.source = Some(query::source(value)?),
            "since" => f.since = Some(parse_time("since", &value)?),
            "until" => f.until = Some(parse_time("until", &value)?),
            "limit" => f.limit = query::limit(&value)?,
            "after" => {
                f.after = Some(decode_cursor(&value).ok_or_else(|| {
                    ApiError::bad_field("after", "is not a cursor returned as `next`")
                })?)
            }
            other => {
                return Err(ApiError::bad_field(
                    other,
                    "unknown parameter (expected topic, source, since, until, limit, after)",
                ))
            }
        }
    }
    Ok(f)
}

fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| ApiError::bad_field(name, format!("must be RFC 3339 ({e}): {value:?}")))
}

/// Cursor: hex of `v1:<timestamp micros>:<id>`. Opaque to clients; stable across versions
/// that keep the `v1` prefix.
pub fn encode_cursor(ts: DateTime<Utc>, id: i64) -> String {
    format!("v1:{}:{}", ts.timestamp_micros(), id)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn decode_cursor(s: &str) -> Option<(DateTime<Utc>, i64)> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.strip_prefix("v1:")?.split(':');
    let micros: i64 = parts.next()?.parse().ok()?;
    let id: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    // A cursor comes from a stored row: an RFC 3339 timestamp (years 0000 to 9999) and an
    // ingest id from 1. Anything else was made up, and some of it (a time outside Postgres'
    // range) would fail in the query as a 500 instead of a 400.
    let ts = DateTime::from_timestamp_micros(micros)?;
    let years = DateTime::parse_from_rfc3339("0000-01-01T00:00:00Z").ok()?
        ..DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999Z").ok()?;
    (years.start <= ts && ts <= years.end && id >= 1).then_some((ts, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let ts = DateTime::parse_from_rfc3339("2026-11-23T10:30:45.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = encode_cursor(ts, 42);
        assert_eq!(decode_cursor(&c), Some((ts, 42)));
        let huge = encode_cursor(
            DateTime::from_timestamp_micros(-6_249_223_209_600_000_000).unwrap(),
            1,
        );
        let zero_id = encode_cursor(ts, 0);
        for bad in [
            "",
            "zz",
            "abc",
            "76313a",
            "garbage",
            &c[..c.len() - 4],
            &huge,
            &zero_id,
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_parsing_is_strict() {
        assert_eq!(parse_query("").unwrap().limit, 100);
        assert_eq!(parse_query("limit=1000&topic=a.b").unwrap().limit, 1000);
        for (q, field) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=abc", "limit"),
            ("since=yesterday", "since"),
            ("until=2026-13-01T00:00:00Z", "until"),
            ("after=garbage", "after"),
            ("topic=a..b", "topic"),
            ("foo=1", "foo"),
            ("limit=1&limit=2", "limit"),
        ] {
            let err = parse_query(q).unwrap_err();
            assert_eq!(err.details[0].field, field, "{q}");
        }
    }
}
