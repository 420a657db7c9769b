//! Read and write scopes: `API_TOKEN` guards writes, `API_READ_TOKEN` guards `/events`,
//! `/stats` and `/dead-letters` (the write token is accepted there too); probes, `/metrics` and
//! the dashboard page stay open and show no event data.

use super::common::*;
use integration_tests::{eventually, Aggregator, TestEnv};
use serde_json::Value;

const READ: &str = "read-secret";
const WRITE: &str = "write-secret";

/// What a request presents, in the column order of [`CASES`].
const PRESENTED: [Option<&str>; 5] = [
    None,
    Some("Bearer wrong"),
    Some("Bearer read-secret"),
    Some("Bearer write-secret"),
    Some("Basic read-secret"),
];

/// (API_READ_TOKEN, API_TOKEN, [(request, status for each of PRESENTED)]).
type Case = (
    Option<&'static str>,
    Option<&'static str>,
    [(&'static str, [u16; 5]); 4],
);

const CASES: [Case; 3] = [
    (
        Some(READ),
        Some(WRITE),
        [
            ("GET /events", [401, 401, 200, 200, 401]),
            ("GET /stats", [401, 401, 200, 200, 401]),
            ("GET /dead-letters", [401, 401, 200, 200, 401]),
            ("POST /publish", [401, 401, 401, 202, 401]),
        ],
    ),
    // Only a read token: reads need it, publish stays open.
    (
        Some(READ),
        None,
        [
            ("GET /events", [401, 401, 200, 401, 401]),
            ("GET /stats", [401, 401, 200, 401, 401]),
            ("GET /dead-letters", [401, 401, 200, 401, 401]),
            ("POST /publish", [202, 202, 202, 202, 202]),
        ],
    ),
    // Only a write token (as before read tokens): /events and /stats open, dead letters
    // (raw message bytes) need the write token.
    (
        None,
        Some(WRITE),
        [
            ("GET /events", [200, 200, 200, 200, 200]),
            ("GET /stats", [200, 200, 200, 200, 200]),
            ("GET /dead-letters", [401, 401, 401, 200, 401]),
            ("POST /publish", [401, 401, 401, 202, 401]),
        ],
    ),
];

/// Sends `"<METHOD> <path>"` with an optional `Authorization` header; POST sends one event
/// with a fresh id. (status, body).
async fn send(agg: &Aggregator, request: &str, auth: Option<&str>, n: usize) -> (u16, Value) {
    let (method, path) = request.split_once(' ').unwrap();
    let url = format!("{}{path}", agg.base_url());
    let mut req = match method {
        "GET" => agg.http().get(url),
        _ => agg
            .http()
            .post(url)
            .json(&event("auth.scope", &format!("marker-{n}"), &ts(0))),
    };
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_and_write_tokens_guard_their_endpoints() {
    for (read, write, requests) in CASES {
        let env = TestEnv::start().await;
        let mut vars = Vec::new();
        vars.extend(read.map(|t| ("API_READ_TOKEN", t)));
        vars.extend(write.map(|t| ("API_TOKEN", t)));
        let agg = Aggregator::spawn(&env, &vars).await;
        let mut accepted = 0;
        for (request, statuses) in requests {
            for (auth, want) in PRESENTED.iter().zip(statuses) {
                let (status, body) = send(&agg, request, *auth, accepted).await;
                assert_eq!(status, want, "{vars:?} {request} {auth:?}: {body}");
                if status == 401 {
                    assert!(body["error"].is_string(), "{body}");
                }
                accepted += usize::from(status == 202);
            }
        }
        let expected: usize = requests[3].1.iter().filter(|s| **s == 202).count();
        assert_eq!(accepted, expected);
        assert_eq!(env.stream_messages().await, expected as u64, "{vars:?}");
        let e = &env;
        eventually("events stored", PATIENCE, || async move {
            e.event_rows().await == expected as i64
        })
        .await;
        probes_are_open_and_show_no_event_data(&agg).await;
    }
}

/// `/live`, `/ready`, `/health`, `/metrics` and `/` answer without a token and never carry an
/// event's id or payload (`marker-<n>`).
async fn probes_are_open_and_show_no_event_data(agg: &Aggregator) {
    for path in ["/live", "/ready", "/health", "/metrics", "/"] {
        let resp = agg
            .http()
            .get(format!("{}{path}", agg.base_url()))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        assert!(!text.contains("marker-"), "{path} shows event data: {text}");
    }
}
