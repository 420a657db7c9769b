//! Two thousand hostile HTTP requests get no 5xx.

use super::cases::*;
use super::common::*;
use futures::StreamExt;
use integration_tests::{count, eventually, int, Aggregator, TestEnv};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

#[derive(Clone)]
enum Wire {
    Http {
        method: Method,
        url: String,
        headers: Vec<(&'static str, String)>,
        body: Option<Vec<u8>>,
    },
    /// Raw bytes on a fresh TCP connection (the request says `Connection: close`).
    Raw(Vec<u8>),
}

#[derive(Clone)]
struct Probe {
    kind: &'static str,
    wire: Wire,
    /// The answer must be a JSON body (`{"error": ...}` for errors).
    json: bool,
}

struct Answer {
    kind: &'static str,
    /// The request line (shortened), for reports.
    what: String,
    /// 0: no HTTP answer at all.
    status: u16,
    body: Vec<u8>,
    json: bool,
    error: Option<String>,
}

/// Sends raw bytes and reads the HTTP/1.1 answer: (status, body, de-chunked).
async fn raw_exchange(addr: &str, request: &[u8]) -> Result<(u16, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The server may answer and close before reading everything.
    let _ = conn.write_all(request).await;
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer)).await {
        Err(_) => return Err("no answer within 30s".into()),
        Ok(Err(e)) if answer.is_empty() => return Err(format!("read: {e}")),
        Ok(_) => {}
    }
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(&answer)))?;
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let mut body = answer[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let len = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16)
                .map_err(|e| format!("bad chunk size: {e}"))?;
            if len == 0 || rest.len() < nl + 2 + len {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + len]);
            rest = &rest[(nl + 4 + len).min(rest.len())..];
        }
        body = out;
    }
    Ok((status, body))
}

async fn send_probe(client: reqwest::Client, base: String, addr: String, p: Probe) -> Answer {
    let what: String = match &p.wire {
        Wire::Http { method, url, .. } => format!("{method} {url}"),
        Wire::Raw(bytes) => String::from_utf8_lossy(bytes)
            .lines()
            .next()
            .unwrap_or("")
            .escape_debug()
            .to_string(),
    }
    .chars()
    .take(120)
    .collect();
    let result = match &p.wire {
        Wire::Http {
            method,
            url,
            headers,
            body,
        } => {
            let mut req = client.request(method.clone(), format!("{base}{url}"));
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            if let Some(b) = body {
                req = req.body(b.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(b) => Ok((status, b.to_vec())),
                        Err(e) => Err(format!("reading body of {status}: {e}")),
                    }
                }
                Err(e) => Err(format!("{e:?}")),
            }
        }
        Wire::Raw(bytes) => raw_exchange(&addr, bytes).await,
    };
    match result {
        Ok((status, body)) => Answer {
            kind: p.kind,
            what,
            status,
            body,
            json: p.json,
            error: None,
        },
        Err(e) => Answer {
            kind: p.kind,
            what,
            status: 0,
            body: Vec::new(),
            json: p.json,
            error: Some(e),
        },
    }
}

fn http(method: Method, url: impl Into<String>, body: Option<Vec<u8>>) -> Wire {
    Wire::Http {
        method,
        url: url.into(),
        headers: vec![("content-type", "application/json".into())],
        body,
    }
}

fn http_with(
    method: Method,
    url: impl Into<String>,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
) -> Wire {
    Wire::Http {
        method,
        url: url.into(),
        headers,
        body,
    }
}

/// `/events?<encoded params>`.
fn events_url(params: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://x/events").unwrap();
    url.query_pairs_mut().extend_pairs(params);
    format!("/events?{}", url.query().unwrap_or(""))
}

fn raw(host: &str, request_line: &[u8], extra_headers: &[u8], body: &[u8]) -> Wire {
    let mut r = request_line.to_vec();
    r.extend_from_slice(format!("\r\nHost: {host}\r\nConnection: close\r\n").as_bytes());
    r.extend_from_slice(extra_headers);
    if !body.is_empty() {
        r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    Wire::Raw(r)
}

/// SQL-looking strings for fields and parameters.
const SQL: [&str; 4] = [
    "'; DROP TABLE events; --",
    "\" OR 1=1",
    "1; DELETE FROM topic_counters",
    "x' UNION SELECT * FROM pg_shadow --",
];

/// A valid event of topic `hostile.http` with event id `id`.
fn ev(id: String) -> Value {
    json!({"topic": "hostile.http", "event_id": id, "timestamp": TS, "source": "SAT-0001",
           "payload": {"battery_charge_percent": 50.0}})
}

/// `POST /publish` with `body`.
fn post(body: Vec<u8>) -> Wire {
    http(Method::POST, "/publish", Some(body))
}

/// Where a request of the mix stands: its index, its number within its kind, the target.
struct Ctx<'a> {
    i: usize,
    v: usize,
    host: &'a str,
}

/// One kind of hostile request: its name in the report, whether the answer must be JSON (a
/// request the HTTP parser itself rejects gets a bare 400), and how to build one.
struct Case {
    kind: &'static str,
    json: bool,
    wire: fn(&Ctx) -> Wire,
}

/// Every kind of request of the hostile mix; request `i` is of kind `i % 32`, the `v`-th of
/// its kind (`v = i / 32`).
const CASES: [Case; 32] = [
    Case {
        kind: "truncated json",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let full = to_bytes(&ev(format!("trunc-{i}")));
            post(full[..(v * 7) % full.len()].to_vec())
        },
    },
    Case {
        kind: "10k [ nesting",
        json: true,
        wire: |_| post(vec![b'['; 10_000]),
    },
    Case {
        kind: "deep payload",
        json: true,
        wire: |c| {
            let i = c.i;
            let text = format!(
                r#"{{"topic":"hostile.http","event_id":"deep-{i}","timestamp":"{TS}","source":"S","payload":{{"a":{}1{}}}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            );
            post(text.into_bytes())
        },
    },
    Case {
        kind: "huge exponent",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let number = ["1e999999", "-1e999999", "1e-999999", "123456789e999"][v % 4];
            let text = format!(
                r#"{{"topic":"hostile.http","event_id":"num-{i}","timestamp":"{TS}","source":"S","payload":{{"n":{number}}}}}"#
            );
            post(text.into_bytes())
        },
    },
    Case {
        kind: "400-digit integer",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let digits = format!(
                "{}{}",
                if v.is_multiple_of(2) { "" } else { "-" },
                "9".repeat(400)
            );
            let text = format!(
                r#"{{"topic":"hostile.http","event_id":"digits-{i}","timestamp":"{TS}","source":"S","payload":{{"n":{digits},"m":[{digits}]}}}}"#
            );
            post(text.into_bytes())
        },
    },
    Case {
        kind: "control chars in fields",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let controls = [
                "\u{0}", "\u{1}", "\n", "\u{1b}", "\u{7f}", "\u{85}", "\u{1f}",
            ];
            let c = controls[v % controls.len()];
            let field = ["topic", "event_id", "timestamp", "source"][v % 4];
            let mut e = ev(format!("ctl-{i}"));
            e[field] = json!(format!("{}{c}x", e[field].as_str().unwrap()));
            post(to_bytes(&e))
        },
    },
    Case {
        kind: "NUL in payload",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let mut e = ev(format!("nul-{i}"));
            e["payload"] = if v.is_multiple_of(2) {
                json!({"s": "a\u{0}b"})
            } else {
                json!({"k\u{0}": [1, {"x": "\u{0}"}]})
            };
            post(to_bytes(&e))
        },
    },
    Case {
        kind: "SQL in topic",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let mut e = ev(format!("sqltopic-{i}"));
            e["topic"] = json!(SQL[v % SQL.len()]);
            post(to_bytes(&e))
        },
    },
    Case {
        kind: "SQL in event_id/source",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let mut e = ev(format!("{} {i}", SQL[v % SQL.len()]));
            e["topic"] = json!("hostile.sql");
            e["source"] = json!(SQL[(v + 1) % SQL.len()]);
            post(to_bytes(&e))
        },
    },
    Case {
        kind: "SQL in /events query",
        json: true,
        wire: |c| {
            let v = c.v;
            let s = SQL[v % SQL.len()];
            let params: &[(&str, &str)] = match v % 6 {
                0 => &[("topic", s)],
                1 => &[("source", s)],
                2 => &[("after", s)],
                3 => &[("since", s)],
                4 => &[("limit", "1; DROP TABLE events")],
                _ => &[("source", s), ("limit", "5")],
            };
            http(Method::GET, events_url(params), None)
        },
    },
    Case {
        kind: "wrong content type",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let ct = [
                "text/plain",
                "application/xml",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json; charset=latin1",
                "",
            ][v % 6];
            let body = to_bytes(&ev(format!("ct-{i}")));
            let headers = if ct.is_empty() {
                Vec::new()
            } else {
                vec![("content-type", ct.to_string())]
            };
            http_with(Method::POST, "/publish", headers, Some(body))
        },
    },
    Case {
        kind: "empty body",
        json: true,
        wire: |c| {
            let v = c.v;
            let headers = if v.is_multiple_of(2) {
                vec![("content-type", "application/json".to_string())]
            } else {
                Vec::new()
            };
            http_with(Method::POST, "/publish", headers, Some(Vec::new()))
        },
    },
    Case {
        kind: "70 KiB body",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let body = if v.is_multiple_of(2) {
                let one = ev(format!("big-{i}"));
                let n = 70 * 1024 / to_bytes(&one).len() + 1;
                to_bytes(&Value::Array(vec![one; n]))
            } else {
                vec![b'x'; 70 * 1024]
            };
            assert!(body.len() >= 70 * 1024);
            post(body)
        },
    },
    Case {
        kind: "invalid UTF-8 body",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let mut body = to_bytes(&ev(format!("utf8-{i}-MARK")));
            body = splice(&body, b"MARK", &[[0xff, 0xc0, 0xed, 0xe9][v % 4], 0xa0]);
            post(body)
        },
    },
    Case {
        kind: "unknown route",
        json: true,
        wire: |c| {
            let v = c.v;
            let path = [
                "/nope",
                "/admin",
                "/events/1",
                "/publish/x",
                "/.env",
                "/stats/",
                "/dead-letters/1",
                "/%2e%2e/%2e%2e/etc/passwd",
                "/metrics.json",
                "//events",
            ][v % 10];
            http(Method::GET, path, None)
        },
    },
    Case {
        kind: "wrong method",
        json: true,
        wire: |c| {
            let v = c.v;
            let (method, path) = [
                (Method::GET, "/publish"),
                (Method::PUT, "/publish"),
                (Method::DELETE, "/events"),
                (Method::POST, "/health"),
                (Method::PATCH, "/stats"),
                (Method::DELETE, "/dead-letters"),
                (Method::POST, "/events"),
                (Method::PUT, "/metrics"),
            ][v % 8]
                .clone();
            http(method, path, Some(b"{}".to_vec()))
        },
    },
    Case {
        kind: "1000 query params",
        json: true,
        wire: |c| {
            let v = c.v;
            let route = ["/events", "/dead-letters", "/stats", "/health"][v % 4];
            let query: Vec<String> = (0..1000).map(|k| format!("p{k}={k}")).collect();
            http(Method::GET, format!("{route}?{}", query.join("&")), None)
        },
    },
    Case {
        kind: "1000 repeated params",
        json: true,
        wire: |c| {
            let v = c.v;
            let query: Vec<String> = (0..1000).map(|k| format!("limit={}", k + 1)).collect();
            let route = ["/events", "/dead-letters"][v % 2];
            http(Method::GET, format!("{route}?{}", query.join("&")), None)
        },
    },
    Case {
        kind: "percent garbage",
        json: true,
        wire: |c| {
            let (v, host) = (c.v, c.host);
            let target: &[u8] = [
                &b"/events?topic=%ZZ%00%FF%C0%AF&source=%E2%82"[..],
                b"/events?%%%%=%%&limit=%",
                b"/dead-letters?after=%FF%FE&limit=%31%30",
                b"/events?topic=a%2E%2Eb",
                b"/%FF%FE%00",
                b"/events%00",
                b"/events?source=%00",
                b"/events?=&&=&",
            ][v % 8];
            let line = [&b"GET "[..], target, b" HTTP/1.1"].concat();
            raw(host, &line, b"", b"")
        },
    },
    Case {
        kind: "raw protocol garbage",
        json: false,
        wire: |c| {
            let (v, host) = (c.v, c.host);
            // Bytes the HTTP parser itself rejects (no JSON expected from the app).
            let line: &[u8] = [
                &b"GET /events?topic=\xff\xfe HTTP/1.1"[..],
                b"GET /\x00 HTTP/1.1",
                b"G\xffT /events HTTP/1.1",
                b"GET /events HTTP/9.9",
                b"GET events HTTP/1.1",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            ][v % 6];
            raw(host, line, b"", b"")
        },
    },
    Case {
        kind: "odd header bytes",
        // A header the parser rejects gets its bare 400.
        json: false,
        wire: |c| {
            let (i, v, host) = (c.i, c.v, c.host);
            let headers: &[u8] = [
                &b"X-Bad: \xff\xfe\r\n"[..],
                b"Idempotency-Key: \xc3\xa9t\xc3\xa9\r\n",
                b"Content-Type: application/json\r\nContent-Type: text/plain\r\n",
                b"Authorization: Bearer \xff\r\n",
            ][v % 4];
            let body = to_bytes(&ev(format!("hdr-{i}")));
            raw(host, b"POST /publish HTTP/1.1", headers, &body)
        },
    },
    Case {
        kind: "odd Idempotency-Key",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let key = match v % 3 {
                0 => "k".repeat(300),
                1 => String::new(),
                _ => format!("key {i} with spaces"),
            };
            http_with(
                Method::POST,
                "/publish",
                vec![
                    ("content-type", "application/json".into()),
                    ("idempotency-key", key),
                ],
                Some(to_bytes(&ev(format!("idem-{i}")))),
            )
        },
    },
    Case {
        kind: "batch with one bad event",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let mut events: Vec<Value> = (0..200).map(|k| ev(format!("batch-{i}-{k}"))).collect();
            events[100 + v % 100]["timestamp"] = json!("not a time");
            post(to_bytes(&Value::Array(events)))
        },
    },
    Case {
        kind: "odd shapes",
        json: true,
        wire: |c| {
            let v = c.v;
            let body: &[u8] = [
                &br#"{"events": 5}"#[..],
                br#"{"events": {"topic": "a.b"}}"#,
                br#"{"events": [null, 1, "x"]}"#,
                br#"{"events": [], "topic": "a.b"}"#,
                br#"[[], {}, null]"#,
                br#"{"__proto__": {"topic": "a.b"}}"#,
            ][v % 6];
            post(body.to_vec())
        },
    },
    Case {
        kind: "odd but valid",
        json: true,
        wire: |c| {
            let i = c.i;
            let e = json!({"topic": "hostile.odd", "event_id": format!("\u{1f6f0}\\u0000\"'{i}"),
                            "timestamp": "2026-11-23T10:30:45+14:00", "source": "%00%27--",
                            "payload": {"s": "\\u0000", "n": -0.0, "e": 1e-300, "u": "\u{fffd}"}});
            post(to_bytes(&e))
        },
    },
    Case {
        kind: "bad /dead-letters params",
        json: true,
        wire: |c| {
            let v = c.v;
            let q = [
                "limit=abc",
                "limit=0",
                "after=zzz",
                "include_redriven=maybe",
                "after=dl-1",
                "after=dl99999999999999999999",
            ][v % 6];
            http(Method::GET, format!("/dead-letters?{q}"), None)
        },
    },
    Case {
        kind: "bad /events cursor",
        json: true,
        wire: |c| {
            let v = c.v;
            let a = [
                "AAAA",
                "not-a-cursor",
                "%00",
                "MTIzNDU2Nzg5MA",
                "ffffffffffffffffffffffffffffffffffffffffffffffffffff",
            ][v % 5];
            http(Method::GET, events_url(&[("after", a)]), None)
        },
    },
    Case {
        kind: "edge timestamps",
        json: true,
        wire: |c| {
            let (i, v) = (c.i, c.v);
            let t = [
                "+99999-01-01T00:00:00Z",
                "2026-11-23T10:30:45.1234567890123Z",
                "9999-12-31T23:59:59Z",
                "0000-01-01T00:00:00Z",
                "2026-11-23T10:30:45-23:59",
            ][v % 5];
            let mut e = ev(format!("edge-ts-{i}"));
            e["timestamp"] = json!(t);
            post(to_bytes(&e))
        },
    },
    Case {
        kind: "edge /events times",
        json: true,
        wire: |c| {
            let v = c.v;
            let t = [
                "9999-12-31T23:59:59Z",
                "0001-01-01T00:00:00Z",
                "2026-02-30T00:00:00Z",
            ][v % 3];
            http(Method::GET, events_url(&[("since", t), ("until", t)]), None)
        },
    },
    Case {
        kind: "long /events params",
        json: true,
        wire: |c| {
            let v = c.v;
            let long = "a".repeat(300);
            let params: &[(&str, &str)] = match v % 3 {
                0 => &[("topic", long.as_str())],
                1 => &[("source", long.as_str())],
                _ => &[("topic", "a.b"), ("topic", "c.d")],
            };
            http(Method::GET, events_url(params), None)
        },
    },
    Case {
        kind: "HEAD/OPTIONS",
        json: false,
        wire: |c| {
            let v = c.v;
            // HEAD, OPTIONS: no body expected.
            let (method, path) = [
                (Method::HEAD, "/stats"),
                (Method::OPTIONS, "/publish"),
                (Method::HEAD, "/events?limit=0"),
            ][v % 3]
                .clone();
            http(method, path, None)
        },
    },
    Case {
        kind: "huge URI",
        json: false,
        wire: |c| {
            let (v, host) = (c.v, c.host);
            let path = format!(
                "/{}",
                "a".repeat(if v.is_multiple_of(2) { 70_000 } else { 9_000 })
            );
            raw(host, format!("GET {path} HTTP/1.1").as_bytes(), b"", b"")
        },
    },
];

/// Request number `i` of the hostile mix.
fn probe(i: usize, host: &str) -> Probe {
    let case = &CASES[i % CASES.len()];
    let ctx = Ctx {
        i,
        v: i / CASES.len(),
        host,
    };
    Probe {
        kind: case.kind,
        wire: (case.wire)(&ctx),
        json: case.json,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_hostile_http_requests_get_no_5xx() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[("MAX_BODY_BYTES", "65536")]).await;
    let base = agg.base_url();
    let addr = base.trim_start_matches("http://").to_string();
    let probes: Vec<Probe> = (0..2000).map(|i| probe(i, &addr)).collect();

    let client = agg.http().clone();
    let started = Instant::now();
    let answers: Vec<Answer> = futures::stream::iter(probes)
        .map(|p| send_probe(client.clone(), base.clone(), addr.clone(), p))
        .buffer_unordered(16)
        .collect()
        .await;
    let elapsed = started.elapsed();
    assert_eq!(answers.len(), 2000);

    let mut histogram: BTreeMap<u16, usize> = BTreeMap::new();
    let mut by_kind: BTreeMap<&str, BTreeMap<u16, usize>> = BTreeMap::new();
    let mut server_errors = BTreeSet::new();
    let mut not_json = BTreeSet::new();
    let mut no_answer = BTreeSet::new();
    let mut accepted = 0i64;
    for a in &answers {
        *histogram.entry(a.status).or_default() += 1;
        *by_kind
            .entry(a.kind)
            .or_default()
            .entry(a.status)
            .or_default() += 1;
        let text = String::from_utf8_lossy(&a.body);
        let snippet: String = text.chars().take(200).collect();
        if a.status == 0 {
            no_answer.insert(format!(
                "{} [{}]: {}",
                a.kind,
                a.what,
                a.error.as_deref().unwrap_or("")
            ));
            continue;
        }
        if a.status >= 500 {
            server_errors.insert(format!("{} [{}] -> {} {snippet}", a.kind, a.what, a.status));
        }
        let parsed = serde_json::from_slice::<Value>(&a.body).ok();
        if a.status == 202 {
            accepted += parsed.as_ref().map_or(0, |b| int(b, "accepted"));
        }
        if a.json {
            match parsed {
                Some(body) if a.status >= 400 && !body["error"].is_string() => {
                    not_json.insert(format!(
                        "{} [{}] -> {} without error: {snippet}",
                        a.kind, a.what, a.status
                    ));
                }
                Some(_) => {}
                None => {
                    not_json.insert(format!(
                        "{} [{}] -> {} {snippet:?}",
                        a.kind, a.what, a.status
                    ));
                }
            }
        }
    }
    eprintln!("2000 hostile requests in {elapsed:?}; status histogram: {histogram:?}");
    for (kind, h) in &by_kind {
        eprintln!("  {kind:<28} {h:?}");
    }
    eprintln!("events accepted by hostile requests: {accepted}");

    // The service is intact: healthy, tables there, a normal publish is counted.
    let (status, health) = agg.health().await;
    assert_eq!(status, 200, "{health}");
    let db = env.db().await;
    for table in [
        "events",
        "dead_letters",
        "topic_counters",
        "processed_messages",
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&db)
            .await
            .unwrap();
        assert!(exists, "table {table} still exists");
    }
    let stored_before = count(&db, "SELECT count(*) FROM events").await;
    let (status, body) = agg
        .post_json(
            "/publish",
            &json!({"topic": "hostile.final", "event_id": "final-1", "timestamp": TS,
                    "source": "SAT-0001", "payload": {"ok": true}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let want = accepted + 1;
    eventually("every accepted event counted", PATIENCE, || async {
        let s = agg.stats().await;
        int(&s, "received") + int(&s, "dead_lettered") >= want
    })
    .await;
    let stats = agg.stats().await;
    assert_eq!(int(&stats, "received"), want, "{stats}");
    assert_eq!(
        int(&stats, "dead_lettered"),
        0,
        "an event accepted over HTTP was dead-lettered: {stats}"
    );
    let (status, page) = agg.get("/events?topic=hostile.final").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"][0]["event_id"], "final-1", "{page}");
    assert!(count(&db, "SELECT count(*) FROM events").await > stored_before);
    // Strings that look like SQL were stored verbatim, and are found verbatim.
    let sql_stored = count(
        &db,
        "SELECT count(*) FROM events WHERE topic = 'hostile.sql' AND event_id LIKE '''; DROP TABLE events; -- %'",
    )
    .await;
    assert!(
        sql_stored > 0,
        "SQL-looking event ids were accepted and stored"
    );
    let (status, page) = agg
        .get(&events_url(&[
            ("topic", "hostile.sql"),
            ("source", "\" OR 1=1"),
            ("limit", "1000"),
        ]))
        .await;
    assert_eq!(status, 200, "{page}");
    let found = page["events"].as_array().unwrap();
    assert!(!found.is_empty(), "{page}");
    assert!(found.iter().all(|e| e["source"] == "\" OR 1=1"), "{page}");

    // Every violation at once (distinct requests), so one run shows them all.
    let mut problems = Vec::new();
    if !server_errors.is_empty() {
        problems.push(format!(
            "answers with status >= 500 (503 included: none expected at concurrency 16): {server_errors:#?}"
        ));
    }
    if !no_answer.is_empty() {
        problems.push(format!("requests without an HTTP answer: {no_answer:#?}"));
    }
    if !not_json.is_empty() {
        problems.push(format!("answers without a JSON body: {not_json:#?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
