//! `GET /`: the live dashboard, one self-contained HTML page (inline CSS and JS, no external
//! resources) compiled into the binary. From the browser it polls `/stats` (the stream out
//! tile shows its `outbox`: published, lag in events and seconds, or "off" when it is null),
//! `/health` and `/dead-letters?limit=10` every 2 s. Recent events are filled from
//! `/events?limit=10`, then kept by the live tail: the page reads `/events/stream` with
//! `fetch()` (EventSource cannot send the Authorization header), puts each event on top and
//! shows the 10 most recent, and stops polling `/events` once the tail is open. After an
//! error or the end of the stream it reconnects after 2 s with `Last-Event-ID` = the last
//! event received, so nothing is missed or shown twice. The page itself needs no token. When
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
