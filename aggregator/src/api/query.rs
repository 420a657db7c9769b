//! Strict query-string parsing shared by the paged read endpoints: every parameter at most
//! once, `limit` within bounds; each problem is a 400 naming the parameter.

use super::ApiError;

/// Largest `limit` of a page.
pub const MAX_LIMIT: i64 = 1000;
/// `limit` when none is given.
pub const DEFAULT_LIMIT: i64 = 100;

/// The decoded `(name, value)` pairs of a query string; a repeated name is a 400.
pub fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_field("query", format!("cannot be decoded: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    for (key, _) in &pairs {
        if !seen.insert(key.as_str()) {
            return Err(ApiError::bad_field(key, "given more than once"));
        }
    }
    Ok(pairs)
}

/// One page of `rows` fetched with `limit + 1` (the extra row only tells whether there is a
/// next page): the rows kept, and the cursor of the next page made by `cursor` from the last
/// row kept.
pub fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() <= limit {
        return (rows, None);
    }
    rows.truncate(limit);
    let next = rows.last().map(cursor);
    (rows, next)
}

/// A page size: an integer from 1 to [`MAX_LIMIT`].
pub fn limit(value: &str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::bad_field(
                "limit",
                format!("must be an integer from 1 to {MAX_LIMIT}, got {value:?}"),
            )
        })
}

/// A `topic` filter: a valid topic, else a 400 naming `topic`.
pub fn topic(value: String) -> Result<String, ApiError> {
    shared::event::validate_topic(&value).map_err(|e| ApiError::bad_field("topic", e.reason))?;
    Ok(value)
}

/// A `source` filter: a valid source, else a 400 naming `source`.
pub fn source(value: String) -> Result<String, ApiError> {
    shared::event::validate_source(&value).map_err(|e| ApiError::bad_field("source", e.reason))?;
    Ok(value)
}
