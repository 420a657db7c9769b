//! `GET /dead-letters?limit=&after=&include_redriven=`: messages that could not be stored,
//! newest first, keyset paged. Needs a bearer token (see `auth`).
//!
//! Raw bytes are shown safely: `raw_text` is the bytes as UTF-8 with invalid sequences
//! replaced (JSON escaping takes care of control characters), `raw_base64` is exact.
//! `raw_truncated` says whether only the first 8 KiB were kept.

use super::state::SharedState;
use super::{query, ApiError};
use crate::store::queries::StoredDeadLetter;
use axum::extract::{RawQuery, State};
use axum::Json;
use base64::Engine;
use chrono::SecondsFormat;
use serde::Serialize;

#[derive(Serialize)]
pub struct DeadLetterItem {
    pub id: i64,
    pub stream_seq: i64,
    pub subject: String,
    pub reason: String,
    pub created_at: String,
    pub redriven_at: Option<String>,
    pub raw_size: i32,
    pub raw_truncated: bool,
    pub raw_text: String,
    pub raw_base64: String,
}

#[derive(Serialize)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetterItem>,
    pub next: Option<String>,
}

pub async fn list(
    State(state): State<SharedState>,
    RawQuery(raw_query): RawQuery,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let (limit, after, include_redriven) = parse_query(raw_query.as_deref())?;
    let rows = state
        .store()?
        .list_dead_letters(after, limit + 1, include_redriven)
        .await
        .map_err(ApiError::from_db)?;
    let (rows, next) = query::page(rows, limit, |r| format!("dl{}", r.id));
    let dead_letters = rows.into_iter().map(item).collect();
    Ok(Json(DeadLetterPage { dead_letters, next }))
}

/// `(limit, after, include_redriven)` from the query string.
fn parse_query(raw_query: Option<&str>) -> Result<(i64, Option<i64>, bool), ApiError> {
    let (mut limit, mut after, mut include_redriven) = (query::DEFAULT_LIMIT, None, false);
    for (key, value) in query::pairs(raw_query)? {
        match key.as_str() {
            "limit" => limit = query::limit(&value)?,
            "after" => {
                after = Some(
                    value
                        .strip_prefix("dl")
                        .and_then(|v| v.parse::<i64>().ok())
                        // `next` names a stored id (from 1), written as digits only.
                        .filter(|id| *id >= 1 && !value.starts_with("dl+"))
                        .ok_or_else(|| {
                            ApiError::bad_field("after", "is not a cursor returned as `next`")
                        })?,
                )
            }
            "include_redriven" => {
                include_redriven = value
                    .parse()
                    .map_err(|_| ApiError::bad_field("include_redriven", "must be true or false"))?
            }
            other => {
                return Err(ApiError::bad_field(
                    other,
                    "unknown parameter (expected limit, after, include_redriven)",
                ))
            }
        }
    }
    Ok((limit, after, include_redriven))
}

fn item(r: StoredDeadLetter) -> DeadLetterItem {
    DeadLetterItem {
        id: r.id,
        stream_seq: r.stream_seq,
        subject: r.subject,
        reason: r.reason,
        created_at: r.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        redriven_at: r
            .redriven_at
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        raw_size: r.raw_size,
        raw_truncated: (r.raw.len() as i64) < i64::from(r.raw_size),
        raw_text: String::from_utf8_lossy(&r.raw).into_owned(),
        raw_base64: base64::engine::general_purpose::STANDARD.encode(&r.raw),
    }
}
