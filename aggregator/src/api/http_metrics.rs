//! Request metrics: `aggregator_http_requests_total{route,method,status}` and
//! `aggregator_http_request_duration_seconds{route,status}`.
//!
//! `route` is the matched route template (axum's `MatchedPath`, e.g. `/events`), never the
//! raw path: a client probing random paths would otherwise create a series per path. A
//! request no route matched is `route="unmatched"`; a method outside the standard set is
//! `method="other"`, for the same reason.

use crate::telemetry::names;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

pub const UNMATCHED: &str = "unmatched";

pub async fn record(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let method = method_label(req.method());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(names::HTTP_REQUESTS, "route" => route.clone(), "method" => method,
        "status" => status.clone())
    .increment(1);
    metrics::histogram!(names::HTTP_DURATION, "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    resp
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}
