//! `GET /`: the live dashboard, one self-contained HTML page (inline CSS and JS, no external
//! resources) compiled into the binary. It polls `/stats`, `/health`, `/events?limit=10` and
//! `/dead-letters?limit=10` every 2 s from the browser; the page itself needs no token. When
//! reads need one (`API_READ_TOKEN`), the page is opened as `/#token=<token>`: the fragment is
//! never sent to the server, and the page keeps the token in the tab's sessionStorage.

use axum::http::header;
use axum::response::IntoResponse;

/// The page, `aggregator/assets/dashboard.html`.
pub const PAGE: &str = include_str!("../../assets/dashboard.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}
