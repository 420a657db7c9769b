//! Bearer-token checks: `API_TOKEN` for writes, `API_READ_TOKEN` for reads.
//!
//! | route | token |
//! |---|---|
//! | `POST /publish` | `API_TOKEN` when set (the read token is refused) |
//! | `GET /events`, `GET /stats` | `API_READ_TOKEN` or `API_TOKEN` when `API_READ_TOKEN` is set; else open |
//! | `GET /dead-letters` | `API_READ_TOKEN` or `API_TOKEN` when `API_READ_TOKEN` is set; else `API_TOKEN` when set |
//!
//! Dead letters hold raw message bytes, so without a read token they keep needing the write
//! token, as before read tokens existed. Probes, `/metrics` and the dashboard page carry no
//! event data and stay open.

use super::state::SharedState;
use super::ApiError;
use crate::settings::ApiSettings;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

/// Middleware for writes: when `API_TOKEN` is set, the request needs
/// `Authorization: Bearer <API_TOKEN>`.
pub async fn require_token(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = state.settings.api_token.as_deref() {
        if !constant_time_eq(bearer(&request).as_bytes(), expected.as_bytes()) {
            return Err(unauthorized("API_TOKEN"));
        }
    }
    Ok(next.run(request).await)
}

/// Middleware for `/events` and `/stats`: open unless `API_READ_TOKEN` is set.
pub async fn require_read_token(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_read(&state.settings, &request, false)?;
    Ok(next.run(request).await)
}

/// Middleware for `/dead-letters`: like [`require_read_token`], but without a read token it
/// falls back to `API_TOKEN` (raw message bytes are not for anyone who can reach the port).
pub async fn require_private_read_token(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_read(&state.settings, &request, true)?;
    Ok(next.run(request).await)
}

/// Whether a read may go ahead: with `API_READ_TOKEN` set, either token; else the write token
/// for a `private` route when one is set, and nothing otherwise.
fn check_read(settings: &ApiSettings, request: &Request, private: bool) -> Result<(), ApiError> {
    let (read, write) = (
        settings.api_read_token.as_deref(),
        settings.api_token.as_deref(),
    );
    let presented = bearer(request).as_bytes();
    let matches = |t: Option<&str>| t.is_some_and(|t| constant_time_eq(presented, t.as_bytes()));
    match (read, write) {
        // Both compared every time (`|`, not `||`): which token matched does not show in the
        // answer time.
        (Some(_), _) if matches(read) | matches(write) => Ok(()),
        (Some(_), _) => Err(unauthorized("API_READ_TOKEN or API_TOKEN")),
        (None, Some(_)) if private && !matches(write) => Err(unauthorized("API_TOKEN")),
        _ => Ok(()),
    }
}

/// The token of `Authorization: Bearer <token>`, empty when there is none.
fn bearer(request: &Request) -> &str {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

fn unauthorized(which: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!("missing or invalid bearer token (Authorization: Bearer <{which}>)"),
    )
}

/// Equality whose running time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_whole_inputs() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
        assert!(!super::constant_time_eq(b"", b"x"));
    }
}
