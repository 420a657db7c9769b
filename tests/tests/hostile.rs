//! Bad input, dead letters and hardening: malformed stream messages are dead-lettered (never
//! redelivered, never blocking their batch-mates), `GET /dead-letters` shows them exactly,
//! `aggregator redrive` puts them back through the normal path once, a message that crashes
//! the process is dead-lettered instead of looping, hostile HTTP requests never get a 5xx, and
//! bad configuration stops start-up with a line naming the variable.
//!
//! Every test runs the real aggregator binary against its own private NATS and Postgres.
//! Counting is asynchronous: tests wait for the pipeline to settle, then assert exact values.
//! Timeouts are safety nets only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use integration_tests::{
    aggregator_bin, count, create_stream, event_json, eventually, free_port, int, publish_raw,
    Aggregator, TempDir, TestEnv,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

/// Safety net for waits (never an assertion on timing).
const PATIENCE: Duration = Duration::from_secs(90);

/// A fixed, valid RFC 3339 timestamp.
const TS: &str = "2026-11-23T10:30:45.123Z";

/// Raw bytes of a dead letter kept for inspection (aggregator's `MAX_DEAD_LETTER_BYTES`).
const DEAD_LETTER_KEEP: usize = 8 * 1024;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The durable consumer's info (`num_pending`, `num_ack_pending`, `num_redelivered`).
async fn consumer_info(env: &TestEnv) -> jetstream::consumer::Info {
    let js = env.jetstream().await;
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("aggregator", "EVENTS")
        .await
        .unwrap();
    consumer.info().await.unwrap().clone()
}

/// `GET <path>` that never panics: `None` when the request fails (process down, ...).
async fn try_get(agg: &Aggregator, path: &str) -> Option<(u16, Value)> {
    let resp = agg
        .http()
        .get(format!("{}{path}", agg.base_url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let text = resp.text().await.ok()?;
    Some((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// `GET <path>` with an optional bearer token → (status, body as JSON or `Value::String`).
async fn get_with_token(agg: &Aggregator, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = agg.http().get(format!("{}{path}", agg.base_url()));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", agg.log_tail()));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Standard base64 (with padding), decoded strictly.
fn base64_decode(s: &str) -> Vec<u8> {
    assert!(
        s.len().is_multiple_of(4),
        "base64 length {} is not padded",
        s.len()
    );
    let val = |c: u8| -> u32 {
        u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not a base64 character: {c:?} in {s:?}"),
        })
    };
    let data: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// Every page of `GET /dead-letters` (with `extra` params) at `limit`, following `next`.
/// Returns the page sizes and all items in order.
async fn all_dead_letters(
    agg: &Aggregator,
    limit: usize,
    extra: &str,
    token: Option<&str>,
) -> (Vec<usize>, Vec<Value>) {
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/dead-letters?limit={limit}{extra}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (status, body) = get_with_token(agg, &path, token).await;
        assert_eq!(status, 200, "GET {path} -> {status} {body}");
        assert!(
            body.as_object().is_some_and(|o| o.contains_key("next")),
            "next missing: {body}"
        );
        let items = body["dead_letters"]
            .as_array()
            .unwrap_or_else(|| panic!("dead_letters missing: {body}"))
            .clone();
        assert!(items.len() <= limit, "page larger than limit {limit}");
        sizes.push(items.len());
        all.extend(items);
        assert!(sizes.len() < 10_000, "pagination does not end");
        match &body["next"] {
            Value::Null => return (sizes, all),
            Value::String(s) => after = Some(s.clone()),
            other => panic!("next is neither a string nor null: {other}"),
        }
    }
}

/// Runs the aggregator binary with `args`, env cleared but PATH, plus `vars`; waits up to
/// `timeout` (then kills it). Returns (exit status, stdout, stderr).
async fn run_aggregator_cmd(
    args: &[&str],
    vars: &[(&str, &str)],
    timeout: Duration,
) -> (std::process::ExitStatus, String, String) {
    let bin = aggregator_bin().await;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("aggregator {args:?} {vars:?}: {e}"),
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => panic!("aggregator {args:?} {vars:?} did not exit within {timeout:?}"),
    }
}

/// `aggregator redrive <args>` against the env; asserts exit 0; returns stdout.
async fn redrive(env: &TestEnv, args: &[&str]) -> String {
    let mut all = vec!["redrive"];
    all.extend_from_slice(args);
    let (nats, db) = (env.nats_url(), env.database_url());
    let (status, stdout, stderr) = run_aggregator_cmd(
        &all,
        &[
            ("NATS_URL", nats.as_str()),
            ("DATABASE_URL", db.as_str()),
            ("RUST_LOG", "warn"),
        ],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        status.success(),
        "aggregator {all:?} -> {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

// ---------------------------------------------------------------------------------------
// 1. Five hundred malformed messages among a thousand valid ones
// ---------------------------------------------------------------------------------------

/// One message published straight to the stream.
struct Msg {
    subject: String,
    bytes: Vec<u8>,
    /// `None`: valid. `Some((kind, substring))`: must be dead-lettered with a reason
    /// containing `substring` (empty: any non-empty reason).
    dead: Option<(&'static str, String)>,
}

const FIELDS: [&str; 5] = ["topic", "event_id", "timestamp", "source", "payload"];

/// A valid event as a JSON value (topic `hostile.bad`, the given id).
fn bad_base(id: &str) -> Value {
    json!({
        "topic": "hostile.bad",
        "event_id": id,
        "timestamp": TS,
        "source": "SAT-0666",
        "payload": {"battery_charge_percent": 12.5, "is_anomaly": true},
    })
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// A message of exactly `len` bytes whose payload is `{"pad":"xxx..."}` (topic
/// `hostile.bad`).
fn padded_event(id: &str, len: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"topic":"hostile.bad","event_id":"{id}","timestamp":"{TS}","source":"SAT-0666","payload":{{"pad":""#
    );
    let tail = r#""}}"#;
    assert!(len > head.len() + tail.len());
    let mut s = head;
    s.push_str(&"x".repeat(len - s.len() - tail.len()));
    s.push_str(tail);
    assert_eq!(s.len(), len);
    s.into_bytes()
}

/// Replaces the first occurrence of `marker` in `bytes` with `with`.
fn splice(bytes: &[u8], marker: &[u8], with: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker present");
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(with);
    out.extend_from_slice(&bytes[at + marker.len()..]);
    out
}

/// Malformed message number `i` (0..500): ten kinds of fifty each.
fn malformed(i: usize) -> Msg {
    let (cat, v) = (i / 50, i % 50);
    let id = format!("bad-{cat}-{v}");
    let subject = "events.hostile.bad".to_string();
    let dead = |kind: &'static str, reason: &str| Some((kind, reason.to_string()));
    match cat {
        // Not UTF-8.
        0 => {
            let bytes = match v % 6 {
                0 => vec![0xff, 0xfe, 0x00, 0x01, 0x80, b'{', b'}', v as u8],
                1 => splice(
                    &to_bytes(&bad_base(&format!("{id}-MARK"))),
                    b"MARK",
                    &[0xff],
                ),
                2 => splice(
                    &to_bytes(
                        &json!({"topic": "hostile.bad", "event_id": id, "timestamp": TS,
                                      "source": "SRC-MARK", "payload": {}}),
                    ),
                    b"MARK",
                    &[0xc0, 0xaf], // overlong "/"
                ),
                3 => splice(
                    &to_bytes(
                        &json!({"topic": "hostile.bad", "event_id": id, "timestamp": TS,
                                      "source": "S", "payload": {"s": "MARK"}}),
                    ),
                    b"MARK",
                    &[0xed, 0xa0, 0x80], // UTF-16 surrogate
                ),
                4 => {
                    let mut b = to_bytes(&bad_base(&id));
                    b.extend_from_slice(&[0xe2, 0x82]); // truncated sequence
                    b
                }
                _ => splice(
                    &to_bytes(&bad_base(&format!("{id}-caf\u{e9}"))),
                    "\u{e9}".as_bytes(),
                    &[0xe9], // Latin-1
                ),
            };
            Msg {
                subject,
                bytes,
                dead: dead("invalid utf-8", "UTF-8"),
            }
        }
        // Not JSON: truncated and otherwise broken.
        1 => {
            let full = to_bytes(&bad_base(&id));
            let bytes = match v {
                0 => Vec::new(),
                1 => b"not json".to_vec(),
                2 => b"{".to_vec(),
                3 => [full.as_slice(), b"}"].concat(),
                4 => [full.as_slice(), full.as_slice()].concat(),
                5 => b"{'topic': 'hostile.bad'}".to_vec(),
                6 => format!(
                    r#"{{"topic":"hostile.bad","event_id":"{id}","timestamp":"{TS}","source":"S","payload":{{"x":NaN}}}}"#
                )
                .into_bytes(),
                7 => format!(
                    r#"{{"topic":"hostile.bad","event_id":"{id}","timestamp":"{TS}","source":"S","payload":{{}},}}"#
                )
                .into_bytes(),
                8 => format!(
                    "{{\"topic\":\"hostile.bad\",\"event_id\":\"{id}\",\"timestamp\":\"{TS}\",\"source\":\"S\",\"payload\":{{\"t\":\"raw\ttab\"}}}}"
                )
                .into_bytes(),
                9 => b"   ".to_vec(),
                _ => full[..1 + (v * 37) % (full.len() - 1)].to_vec(),
            };
            Msg {
                subject,
                bytes,
                dead: dead("not json", "body"),
            }
        }
        // JSON, but not an object.
        2 => {
            let one = String::from_utf8(to_bytes(&bad_base(&id))).unwrap();
            let text = match v % 10 {
                0 => "[]".to_string(),
                1 => "[1,2]".to_string(),
                2 => "42".to_string(),
                3 => "-0.5e3".to_string(),
                4 => "\"event\"".to_string(),
                5 => "null".to_string(),
                6 => "true".to_string(),
                7 => "false".to_string(),
                8 => format!("[{one}]"),
                _ => "[[[]]]".to_string(),
            };
            Msg {
                subject,
                bytes: text.into_bytes(),
                dead: dead("not an object", "body"),
            }
        }
        // A field missing (absent or null).
        3 => {
            let field = FIELDS[v % 5];
            let mut ev = bad_base(&id);
            if (v / 5).is_multiple_of(2) {
                ev.as_object_mut().unwrap().remove(field);
            } else {
                ev[field] = Value::Null;
            }
            Msg {
                subject,
                bytes: to_bytes(&ev),
                dead: dead("missing field", &format!("{field}:")),
            }
        }
        // A field of the wrong type.
        4 => {
            let field = FIELDS[v % 5];
            let values = if field == "payload" {
                [json!(5), json!([]), json!("text"), json!(true), json!(1.5)]
            } else {
                [json!(5), json!([]), json!({}), json!(true), json!(1.5)]
            };
            let mut ev = bad_base(&id);
            ev[field] = values[(v / 5) % 5].clone();
            Msg {
                subject,
                bytes: to_bytes(&ev),
                dead: dead("wrong type", &format!("{field}:")),
            }
        }
        // Topic rule broken.
        5 => {
            let topics = [
                String::new(),
                "a..b".into(),
                ".a".into(),
                "a.".into(),
                "a b".into(),
                "a.*".into(),
                "a.>".into(),
                ">".into(),
                "*".into(),
                "a/b".into(),
                "\u{e9}t\u{e9}.b".into(),
                "a".repeat(256),
                "a\tb".into(),
                "a.b\u{0}".into(),
                "a,b".into(),
                "$SYS.x".into(),
                "hostile.bad;DROP".into(),
            ];
            let mut ev = bad_base(&id);
            ev["topic"] = json!(topics[v % topics.len()]);
            Msg {
                subject,
                bytes: to_bytes(&ev),
                dead: dead("bad topic", "topic:"),
            }
        }
        // Timestamp not RFC 3339.
        6 => {
            let stamps = [
                "yesterday",
                "",
                "2026-13-01T00:00:00Z",
                "2026-11-23 10:30:45",
                "2026-11-23",
                "2026-11-23T25:00:00Z",
                "2026-02-30T00:00:00Z",
                "1700000000",
                "2026-11-23T10:30:45",
                "2026-11-23T10:30:45.123+25:00",
                "now()",
            ];
            let mut ev = bad_base(&id);
            ev["timestamp"] = json!(stamps[v % stamps.len()]);
            Msg {
                subject,
                bytes: to_bytes(&ev),
                dead: dead("bad timestamp", "timestamp:"),
            }
        }
        // Control characters, NUL, empty and over-long strings.
        7 => {
            let controls = ["\u{0}", "\n", "\u{1b}", "\u{7f}", "\u{85}", "\r", "\t"];
            let c = controls[v % controls.len()];
            let mut ev = bad_base(&id);
            let field = match v % 10 {
                0..=3 => {
                    ev["event_id"] = json!(format!("{id}{c}x"));
                    "event_id:"
                }
                4 => {
                    ev["event_id"] = json!("e".repeat(256));
                    "event_id:"
                }
                5 => {
                    ev["source"] = json!(format!("SAT{c}0001"));
                    "source:"
                }
                6 => {
                    ev["source"] = json!(if v < 25 {
                        String::new()
                    } else {
                        "s".repeat(256)
                    });
                    "source:"
                }
                7 => {
                    ev["payload"] = json!({"note": "NUL\u{0}here"});
                    "payload:"
                }
                8 => {
                    ev["payload"] = json!({"k\u{0}ey": 1});
                    "payload:"
                }
                _ => {
                    ev["payload"] = json!({"deep": [1, {"s": ["\u{0}"]}]});
                    "payload:"
                }
            };
            Msg {
                subject,
                bytes: to_bytes(&ev),
                dead: dead("field rule", field),
            }
        }
        // Payload over MAX_PAYLOAD_BYTES=1024; one message of 20 KiB.
        8 => {
            let bytes = if v == 49 {
                padded_event(&id, 20 * 1024)
            } else {
                // payload `{"pad":"x.."}` = 10 + n bytes.
                let mut ev = bad_base(&id);
                ev["payload"] = json!({"pad": "x".repeat(1025 + v * 100 - 10)});
                to_bytes(&ev)
            };
            Msg {
                subject,
                bytes,
                dead: dead("payload over limit", "payload:"),
            }
        }
        // Topic/subject mismatch, wildcard body topic, deeply nested payload.
        _ => match v {
            0..=19 => {
                let (body_topic, subject) = if v.is_multiple_of(2) {
                    ("hostile.mismatch.body", "events.hostile.mismatch.subject")
                } else {
                    ("hostile.valid.a", "events.hostile.valid.a.extra")
                };
                let mut ev = bad_base(&id);
                ev["topic"] = json!(body_topic);
                Msg {
                    subject: subject.to_string(),
                    bytes: to_bytes(&ev),
                    dead: dead("topic/subject mismatch", "does not match"),
                }
            }
            20..=34 => {
                let topics = ["hostile.*", "hostile.>", "*", ">", "hostile.*.x"];
                let mut ev = bad_base(&id);
                ev["topic"] = json!(topics[v % topics.len()]);
                Msg {
                    subject: "events.hostile.x".to_string(),
                    bytes: to_bytes(&ev),
                    dead: dead("wildcard body topic", "topic:"),
                }
            }
            _ => {
                let depth = [200, 300, 500][v % 3];
                let text = format!(
                    r#"{{"topic":"hostile.bad","event_id":"{id}","timestamp":"{TS}","source":"S","payload":{{"a":{}1{}}}}}"#,
                    "[".repeat(depth),
                    "]".repeat(depth)
                );
                Msg {
                    subject,
                    bytes: text.into_bytes(),
                    dead: dead("deeply nested payload", ""),
                }
            }
        },
    }
}

/// Valid event number `k` (0..800), tricky but legal values included.
fn valid(k: usize) -> Msg {
    let topics = [
        "hostile.valid.a",
        "hostile.valid.b",
        "telemetry.satellite.status",
        "x",
    ];
    let topic = topics[k % topics.len()];
    let event_id = match k % 8 {
        0 => format!("\u{e9}v\u{e8}nement-{k}"),
        1 => format!("quote\"'`-{k}"),
        2 => format!("back\\slash-{k}"),
        3 => format!("sat\u{1f6f0}-{k}"),
        4 => format!("{k}-{}", "l".repeat(240)),
        5 => format!("'; DROP TABLE events; -- {k}"),
        _ => format!("v-{k}"),
    };
    let bytes = to_bytes(&json!({
        "topic": topic,
        "event_id": event_id,
        "timestamp": TS,
        "source": format!("SAT-{:04}", k % 37),
        "payload": {
            "n": k,
            "s": "\\u0000 is a backslash, not a NUL",
            "emoji": "\u{1f6f0}",
            "nested": {"deep": [1, [2, [3, {"x": null}]]]},
            "big": 1e300,
        },
    }));
    assert!(bytes.len() < 1024);
    Msg {
        subject: format!("events.{topic}"),
        bytes,
        dead: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_malformed_messages_are_dead_lettered_and_valid_ones_counted_exactly() {
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    create_stream(&js).await;

    // 1,000 valid sends (800 distinct, then 200 re-sends of earlier ones, interleaved)
    // merged at random positions with 500 malformed messages.
    let mut rng = StdRng::seed_from_u64(7);
    let mut valid_msgs: Vec<Msg> = Vec::with_capacity(1000);
    let mut originals: Vec<usize> = Vec::new();
    for j in 0..1000 {
        if j % 5 == 4 {
            let k = originals[rng.random_range(0..originals.len())];
            let m = valid(k);
            valid_msgs.push(m);
        } else {
            let k = originals.len();
            originals.push(k);
            valid_msgs.push(valid(k));
        }
    }
    assert_eq!(originals.len(), 800);
    let mut bad_msgs: Vec<Msg> = (0..500).map(malformed).collect();
    bad_msgs.reverse();
    valid_msgs.reverse();
    let mut msgs: Vec<Msg> = Vec::with_capacity(1500);
    while !valid_msgs.is_empty() || !bad_msgs.is_empty() {
        let (nv, nb) = (valid_msgs.len(), bad_msgs.len());
        let take_valid = nb == 0 || (nv > 0 && rng.random_range(0..nv + nb) < nv);
        msgs.push(if take_valid {
            valid_msgs.pop().unwrap()
        } else {
            bad_msgs.pop().unwrap()
        });
    }

    // Publish straight to the stream (pipelined), remembering each message's sequence.
    let mut seqs: Vec<u64> = Vec::with_capacity(msgs.len());
    for chunk in msgs.chunks(100) {
        let mut acks = Vec::with_capacity(chunk.len());
        for m in chunk {
            acks.push(
                js.publish(m.subject.clone(), Bytes::from(m.bytes.clone()))
                    .await
                    .unwrap_or_else(|e| panic!("publish to {}: {e}", m.subject)),
            );
        }
        for ack in acks {
            seqs.push(ack.await.expect("PubAck").sequence);
        }
    }
    let by_seq: HashMap<u64, &Msg> = seqs.iter().copied().zip(msgs.iter()).collect();
    assert_eq!(by_seq.len(), 1500);
    let bad_seqs: BTreeSet<u64> = by_seq
        .iter()
        .filter(|(_, m)| m.dead.is_some())
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(bad_seqs.len(), 500);

    let agg = Aggregator::spawn(&env, &[("MAX_PAYLOAD_BYTES", "1024")]).await;

    // Settled: every message counted or dead-lettered, nothing pending or unacknowledged.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = agg.stats().await;
        let info = consumer_info(&env).await;
        if int(&stats, "received") + int(&stats, "dead_lettered") >= 1500
            && info.num_pending == 0
            && info.num_ack_pending == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {stats}; consumer pending {} ack-pending {}\n{}",
            info.num_pending,
            info.num_ack_pending,
            agg.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let db = env.db().await;
    // Which malformed messages were stored as events (by kind), if any.
    let stored_bad: Vec<(String, String)> = sqlx::query_as(
        "SELECT topic, event_id FROM events WHERE event_id LIKE 'bad-%' ORDER BY event_id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let stats = agg.stats().await;
    let (events_status, events_body) = agg.get("/events?limit=1000").await;
    let events_text: String = events_body.to_string().chars().take(300).collect();
    assert!(
        stored_bad.is_empty(),
        "{} malformed messages were stored as events instead of dead-lettered, e.g. {:?}; \
         stats {stats}; GET /events?limit=1000 now answers {events_status} {events_text}",
        stored_bad.len(),
        &stored_bad[..stored_bad.len().min(5)]
    );
    assert_eq!(int(&stats, "dead_lettered"), 500, "{stats}");
    assert_eq!(int(&stats, "received"), 1000, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), 800, "{stats}");
    assert_eq!(int(&stats, "duplicate_dropped"), 200, "{stats}");
    assert_eq!(agg.metric("aggregator_dead_letters_total").await, 500.0);
    assert_eq!(count(&db, "SELECT count(*) FROM events").await, 800);
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 500);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM dead_letters WHERE btrim(reason) <> ''"
        )
        .await,
        500,
        "every dead letter has a reason"
    );

    // Nothing was redelivered and nothing waits for an ack; the stream keeps everything.
    let info = consumer_info(&env).await;
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    assert_eq!(info.num_pending, 0, "{info:?}");
    assert_eq!(env.stream_messages().await, 1500);

    // The table holds exactly the malformed messages, with the right reason and bytes.
    let rows: Vec<(i64, String, Vec<u8>, i32, String)> = sqlx::query_as(
        "SELECT stream_seq, subject, raw, raw_size, reason FROM dead_letters ORDER BY stream_seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let row_seqs: BTreeSet<u64> = rows.iter().map(|r| r.0 as u64).collect();
    assert_eq!(
        row_seqs, bad_seqs,
        "dead letters are exactly the malformed messages"
    );
    let mut wrong_reasons = Vec::new();
    for (seq, subject, raw, raw_size, reason) in &rows {
        let m = by_seq[&(*seq as u64)];
        let (kind, want) = m.dead.as_ref().unwrap();
        assert_eq!(subject, &m.subject, "seq {seq}");
        assert_eq!(*raw_size as usize, m.bytes.len(), "seq {seq} ({kind})");
        assert_eq!(
            raw.as_slice(),
            &m.bytes[..m.bytes.len().min(DEAD_LETTER_KEEP)],
            "seq {seq} ({kind}): raw bytes"
        );
        if !reason.contains(want.as_str()) {
            wrong_reasons.push(format!("{kind}: want {want:?} in {reason:?}"));
        }
    }
    assert!(
        wrong_reasons.is_empty(),
        "{} reasons do not name the problem: {:#?}",
        wrong_reasons.len(),
        &wrong_reasons[..wrong_reasons.len().min(10)]
    );

    // GET /dead-letters: 500 in pages of 200, newest first, each exactly once.
    let (sizes, items) = all_dead_letters(&agg, 200, "", None).await;
    assert_eq!(sizes, vec![200, 200, 100]);
    let ids: Vec<i64> = items.iter().map(|d| int(d, "id")).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "ids must be strictly decreasing across pages"
    );
    let api_seqs: BTreeSet<u64> = items.iter().map(|d| int(d, "stream_seq") as u64).collect();
    assert_eq!(api_seqs, bad_seqs);
    let mut checked_binary = false;
    let mut checked_big = false;
    let mut checked_over_limit = 0;
    for d in &items {
        let seq = int(d, "stream_seq") as u64;
        let m = by_seq[&seq];
        let (kind, _) = m.dead.as_ref().unwrap();
        let kept = &m.bytes[..m.bytes.len().min(DEAD_LETTER_KEEP)];
        assert_eq!(d["subject"], m.subject.as_str(), "{d}");
        assert!(d["reason"].as_str().is_some_and(|r| !r.is_empty()), "{d}");
        assert!(d["redriven_at"].is_null(), "{d}");
        chrono::DateTime::parse_from_rfc3339(d["created_at"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("created_at not RFC 3339 ({e}): {d}"));
        assert_eq!(int(d, "raw_size") as usize, m.bytes.len(), "{kind}: {d}");
        assert_eq!(
            d["raw_truncated"],
            m.bytes.len() > DEAD_LETTER_KEEP,
            "{kind}: {d}"
        );
        let raw = base64_decode(d["raw_base64"].as_str().unwrap());
        assert_eq!(
            raw, kept,
            "{kind}: raw_base64 must decode to the exact bytes"
        );
        assert_eq!(
            d["raw_text"].as_str().unwrap(),
            String::from_utf8_lossy(kept),
            "{kind}"
        );
        if m.bytes.starts_with(&[0xff, 0xfe, 0x00]) {
            checked_binary = true;
        }
        if *kind == "payload over limit" {
            if m.bytes.len() == 20 * 1024 {
                assert_eq!(int(d, "raw_size"), 20 * 1024);
                assert_eq!(d["raw_truncated"], true);
                assert_eq!(raw.len(), DEAD_LETTER_KEEP);
                checked_big = true;
            } else {
                assert_eq!(d["raw_truncated"], false, "{d}");
                checked_over_limit += 1;
            }
        }
    }
    assert!(checked_binary && checked_big && checked_over_limit == 49);

    // Valid events are all there, stored with their exact (tricky) ids, and listed.
    let expected: BTreeSet<(String, String)> = msgs
        .iter()
        .filter(|m| m.dead.is_none())
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.bytes).unwrap();
            (
                v["topic"].as_str().unwrap().to_owned(),
                v["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(expected.len(), 800);
    assert_eq!(events_status, 200, "GET /events?limit=1000: {events_text}");
    assert!(events_body["next"].is_null(), "{events_text}");
    let listed: BTreeSet<(String, String)> = events_body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_owned(),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed, expected,
        "GET /events lists exactly the valid events"
    );
    let sql_ids = count(
        &db,
        "SELECT count(*) FROM events WHERE event_id LIKE '''; DROP TABLE events; -- %'",
    )
    .await;
    assert_eq!(
        sql_ids, 100,
        "event ids that look like SQL are stored verbatim"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Redrive after a fix
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_after_a_fix_counts_dead_letters_exactly_once() {
    let env = TestEnv::start().await;
    let mut strict = Aggregator::spawn(&env, &[("MAX_PAYLOAD_BYTES", "100")]).await;
    let js = env.jetstream().await;
    let topic = "redrive.test";
    for i in 0..5 {
        let ev = json!({"topic": topic, "event_id": format!("big-{i}"), "timestamp": TS,
                        "source": "SAT-0001", "payload": {"pad": "p".repeat(500)}});
        publish_raw(&js, &format!("events.{topic}"), Bytes::from(to_bytes(&ev))).await;
    }
    for i in 0..3 {
        publish_raw(
            &js,
            &format!("events.{topic}"),
            event_json(topic, &format!("small-{i}"), "SAT-0002"),
        )
        .await;
    }
    eventually("3 received and 5 dead-lettered", PATIENCE, || async {
        let s = strict.stats().await;
        int(&s, "received") >= 3 && int(&s, "dead_lettered") >= 5
    })
    .await;
    let stats = strict.stats().await;
    assert_eq!(int(&stats, "received"), 3, "{stats}");
    assert_eq!(int(&stats, "dead_lettered"), 5, "{stats}");
    let (_, pending) = all_dead_letters(&strict, 100, "", None).await;
    assert_eq!(pending.len(), 5);
    for d in &pending {
        assert!(
            d["reason"].as_str().unwrap().contains("payload"),
            "reason names the payload: {d}"
        );
    }
    assert!(strict.terminate().await.success(), "SIGTERM exits 0");
    drop(strict);

    // The fix: the default limit (64 KiB).
    let mut agg = Aggregator::spawn(&env, &[]).await;
    assert_eq!(env.stream_messages().await, 8);

    // A dry run lists them and changes nothing.
    let out = redrive(&env, &["--dry-run"]).await;
    assert_eq!(out.matches("would redrive").count(), 5, "{out}");
    assert_eq!(env.stream_messages().await, 8, "dry run publishes nothing");
    let (_, still) = all_dead_letters(&agg, 100, "", None).await;
    assert_eq!(still.len(), 5, "dry run marks nothing");

    let out = redrive(&env, &[]).await;
    assert!(out.contains("redriven: 5"), "{out}");
    assert_eq!(env.stream_messages().await, 13);
    let stats = agg.wait_until_received(8).await;
    assert_eq!(int(&stats, "received"), 8, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), 8, "{stats}");
    assert_eq!(int(&stats, "duplicate_dropped"), 0, "{stats}");
    assert_eq!(int(&stats, "dead_lettered"), 5, "history is kept: {stats}");
    let db = env.db().await;
    assert_eq!(count(&db, "SELECT count(*) FROM events").await, 8);
    assert_eq!(
        count(&db, "SELECT count(*) FROM events WHERE event_id LIKE 'big-%' AND length(payload::text) > 500").await,
        5,
        "the redriven events are stored whole"
    );

    let (status, body) = agg.get("/dead-letters").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dead_letters"], json!([]), "none pending: {body}");
    assert!(body["next"].is_null(), "{body}");
    let (_, all) = all_dead_letters(&agg, 100, "&include_redriven=true", None).await;
    assert_eq!(all.len(), 5);
    for d in &all {
        let at = d["redriven_at"]
            .as_str()
            .unwrap_or_else(|| panic!("redriven_at set: {d}"));
        chrono::DateTime::parse_from_rfc3339(at).unwrap();
    }

    // Again: nothing to do, nothing published, counts unchanged.
    let out = redrive(&env, &[]).await;
    assert!(!out.contains("redrove"), "{out}");
    assert_eq!(env.stream_messages().await, 13);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = agg.stats().await;
    assert_eq!(int(&stats, "received"), 8, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), 8, "{stats}");
    assert_eq!(int(&stats, "dead_lettered"), 5, "{stats}");
    let info = consumer_info(&env).await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
}

// ---------------------------------------------------------------------------------------
// 3. A message that crashes the aggregator
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_crashes_the_aggregator_is_dead_lettered_not_looped() {
    const MAX_RESTARTS: usize = 12;
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    create_stream(&js).await;
    let topic = "poison.test";
    let subject = format!("events.{topic}");
    for i in 0..10 {
        publish_raw(&js, &subject, event_json(topic, &format!("p-{i}"), "SAT-1")).await;
    }
    publish_raw(&js, &subject, event_json(topic, "poison", "SAT-1")).await;
    for i in 10..20 {
        publish_raw(&js, &subject, event_json(topic, &format!("p-{i}"), "SAT-1")).await;
    }

    let mut agg = Aggregator::spawn_no_wait(
        &env,
        &[
            ("MAX_DELIVER", "2"),
            ("ACK_WAIT", "1s"),
            ("AGGREGATOR_FAILPOINT", "abort-on-event:poison"),
        ],
    )
    .await;
    let mut crashes = 0;
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(
            Instant::now() < deadline,
            "did not settle after {crashes} crashes\n{}",
            agg.log_tail()
        );
        if !agg.is_running() {
            crashes += 1;
            assert!(
                crashes <= MAX_RESTARTS,
                "the poison message crashed the aggregator {crashes} times\n{}",
                agg.log_tail()
            );
            agg.restart_no_wait();
            continue;
        }
        if let Some((200, s)) = try_get(&agg, "/stats").await {
            if int(&s, "received") + int(&s, "dead_lettered") >= 21 {
                let info = consumer_info(&env).await;
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It stays up: nothing is redelivered to crash it again (well past ACK_WAIT).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        agg.is_running(),
        "crashed again after settling\n{}",
        agg.log_tail()
    );
    eprintln!("poison message: {crashes} crash(es) before it was dead-lettered");
    assert!(crashes >= 1, "the failpoint never fired");

    let stats = agg.stats().await;
    let db = env.db().await;
    let dead: Vec<(String, String)> =
        sqlx::query_as("SELECT reason, convert_from(raw, 'UTF8') FROM dead_letters ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    let dead_ids: Vec<String> = dead
        .iter()
        .map(|(_, raw)| {
            serde_json::from_str::<Value>(raw).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        dead_ids,
        vec!["poison"],
        "only the poison message is a dead letter (reasons: {dead:?}); stats {stats}"
    );
    assert!(
        dead[0].0.contains("delivered"),
        "reason mentions deliveries: {:?}",
        dead[0].0
    );
    assert_eq!(int(&stats, "received"), 20, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), 20, "{stats}");
    assert_eq!(int(&stats, "duplicate_dropped"), 0, "{stats}");
    assert_eq!(int(&stats, "dead_lettered"), 1, "{stats}");
    assert_eq!(count(&db, "SELECT count(*) FROM events").await, 20);
    assert_eq!(
        count(&db, "SELECT count(*) FROM events WHERE event_id = 'poison'").await,
        0
    );
}

// ---------------------------------------------------------------------------------------
// 4. Two thousand hostile HTTP requests
// ---------------------------------------------------------------------------------------

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

/// Request number `i` of the hostile mix.
fn probe(i: usize, host: &str) -> Probe {
    const SQL: [&str; 4] = [
        "'; DROP TABLE events; --",
        "\" OR 1=1",
        "1; DELETE FROM topic_counters",
        "x' UNION SELECT * FROM pg_shadow --",
    ];
    let ev = |id: String| -> Value {
        json!({"topic": "hostile.http", "event_id": id, "timestamp": TS, "source": "SAT-0001",
               "payload": {"battery_charge_percent": 50.0}})
    };
    let v = i / 32;
    let post = |body: Vec<u8>| http(Method::POST, "/publish", Some(body));
    let p = |kind: &'static str, wire: Wire| Probe {
        kind,
        wire,
        json: true,
    };
    match i % 32 {
        0 => {
            let full = to_bytes(&ev(format!("trunc-{i}")));
            p(
                "truncated json",
                post(full[..(v * 7) % full.len()].to_vec()),
            )
        }
        1 => p("10k [ nesting", post(vec![b'['; 10_000])),
        2 => {
            let text = format!(
                r#"{{"topic":"hostile.http","event_id":"deep-{i}","timestamp":"{TS}","source":"S","payload":{{"a":{}1{}}}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            );
            p("deep payload", post(text.into_bytes()))
        }
        3 => {
            let number = ["1e999999", "-1e999999", "1e-999999", "123456789e999"][v % 4];
            let text = format!(
                r#"{{"topic":"hostile.http","event_id":"num-{i}","timestamp":"{TS}","source":"S","payload":{{"n":{number}}}}}"#
            );
            p("huge exponent", post(text.into_bytes()))
        }
        4 => {
            let digits = format!(
                "{}{}",
                if v.is_multiple_of(2) { "" } else { "-" },
                "9".repeat(400)
            );
            let text = format!(
                r#"{{"topic":"hostile.http","event_id":"digits-{i}","timestamp":"{TS}","source":"S","payload":{{"n":{digits},"m":[{digits}]}}}}"#
            );
            p("400-digit integer", post(text.into_bytes()))
        }
        5 => {
            let controls = [
                "\u{0}", "\u{1}", "\n", "\u{1b}", "\u{7f}", "\u{85}", "\u{1f}",
            ];
            let c = controls[v % controls.len()];
            let field = ["topic", "event_id", "timestamp", "source"][v % 4];
            let mut e = ev(format!("ctl-{i}"));
            e[field] = json!(format!("{}{c}x", e[field].as_str().unwrap()));
            p("control chars in fields", post(to_bytes(&e)))
        }
        6 => {
            let mut e = ev(format!("nul-{i}"));
            e["payload"] = if v.is_multiple_of(2) {
                json!({"s": "a\u{0}b"})
            } else {
                json!({"k\u{0}": [1, {"x": "\u{0}"}]})
            };
            p("NUL in payload", post(to_bytes(&e)))
        }
        7 => {
            let mut e = ev(format!("sqltopic-{i}"));
            e["topic"] = json!(SQL[v % SQL.len()]);
            p("SQL in topic", post(to_bytes(&e)))
        }
        8 => {
            let mut e = ev(format!("{} {i}", SQL[v % SQL.len()]));
            e["topic"] = json!("hostile.sql");
            e["source"] = json!(SQL[(v + 1) % SQL.len()]);
            p("SQL in event_id/source", post(to_bytes(&e)))
        }
        9 => {
            let s = SQL[v % SQL.len()];
            let params: &[(&str, &str)] = match v % 6 {
                0 => &[("topic", s)],
                1 => &[("source", s)],
                2 => &[("after", s)],
                3 => &[("since", s)],
                4 => &[("limit", "1; DROP TABLE events")],
                _ => &[("source", s), ("limit", "5")],
            };
            p(
                "SQL in /events query",
                http(Method::GET, events_url(params), None),
            )
        }
        10 => {
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
            p(
                "wrong content type",
                http_with(Method::POST, "/publish", headers, Some(body)),
            )
        }
        11 => {
            let headers = if v.is_multiple_of(2) {
                vec![("content-type", "application/json".to_string())]
            } else {
                Vec::new()
            };
            p(
                "empty body",
                http_with(Method::POST, "/publish", headers, Some(Vec::new())),
            )
        }
        12 => {
            let body = if v.is_multiple_of(2) {
                let one = ev(format!("big-{i}"));
                let n = 70 * 1024 / to_bytes(&one).len() + 1;
                to_bytes(&Value::Array(vec![one; n]))
            } else {
                vec![b'x'; 70 * 1024]
            };
            assert!(body.len() >= 70 * 1024);
            p("70 KiB body", post(body))
        }
        13 => {
            let mut body = to_bytes(&ev(format!("utf8-{i}-MARK")));
            body = splice(&body, b"MARK", &[[0xff, 0xc0, 0xed, 0xe9][v % 4], 0xa0]);
            p("invalid UTF-8 body", post(body))
        }
        14 => {
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
            p("unknown route", http(Method::GET, path, None))
        }
        15 => {
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
            p("wrong method", http(method, path, Some(b"{}".to_vec())))
        }
        16 => {
            let route = ["/events", "/dead-letters", "/stats", "/health"][v % 4];
            let query: Vec<String> = (0..1000).map(|k| format!("p{k}={k}")).collect();
            p(
                "1000 query params",
                http(Method::GET, format!("{route}?{}", query.join("&")), None),
            )
        }
        17 => {
            let query: Vec<String> = (0..1000).map(|k| format!("limit={}", k + 1)).collect();
            let route = ["/events", "/dead-letters"][v % 2];
            p(
                "1000 repeated params",
                http(Method::GET, format!("{route}?{}", query.join("&")), None),
            )
        }
        18 => {
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
            p("percent garbage", raw(host, &line, b"", b""))
        }
        19 => {
            // Bytes the HTTP parser itself rejects (no JSON expected from the app).
            let line: &[u8] = [
                &b"GET /events?topic=\xff\xfe HTTP/1.1"[..],
                b"GET /\x00 HTTP/1.1",
                b"G\xffT /events HTTP/1.1",
                b"GET /events HTTP/9.9",
                b"GET events HTTP/1.1",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            ][v % 6];
            Probe {
                kind: "raw protocol garbage",
                wire: raw(host, line, b"", b""),
                json: false,
            }
        }
        20 => {
            let headers: &[u8] = [
                &b"X-Bad: \xff\xfe\r\n"[..],
                b"Idempotency-Key: \xc3\xa9t\xc3\xa9\r\n",
                b"Content-Type: application/json\r\nContent-Type: text/plain\r\n",
                b"Authorization: Bearer \xff\r\n",
            ][v % 4];
            let body = to_bytes(&ev(format!("hdr-{i}")));
            Probe {
                kind: "odd header bytes",
                wire: raw(host, b"POST /publish HTTP/1.1", headers, &body),
                // A header the parser rejects gets its bare 400.
                json: false,
            }
        }
        21 => {
            let key = match v % 3 {
                0 => "k".repeat(300),
                1 => String::new(),
                _ => format!("key {i} with spaces"),
            };
            p(
                "odd Idempotency-Key",
                http_with(
                    Method::POST,
                    "/publish",
                    vec![
                        ("content-type", "application/json".into()),
                        ("idempotency-key", key),
                    ],
                    Some(to_bytes(&ev(format!("idem-{i}")))),
                ),
            )
        }
        22 => {
            let mut events: Vec<Value> = (0..200).map(|k| ev(format!("batch-{i}-{k}"))).collect();
            events[100 + v % 100]["timestamp"] = json!("not a time");
            p(
                "batch with one bad event",
                post(to_bytes(&Value::Array(events))),
            )
        }
        23 => {
            let body: &[u8] = [
                &br#"{"events": 5}"#[..],
                br#"{"events": {"topic": "a.b"}}"#,
                br#"{"events": [null, 1, "x"]}"#,
                br#"{"events": [], "topic": "a.b"}"#,
                br#"[[], {}, null]"#,
                br#"{"__proto__": {"topic": "a.b"}}"#,
            ][v % 6];
            p("odd shapes", post(body.to_vec()))
        }
        24 => {
            let e = json!({"topic": "hostile.odd", "event_id": format!("\u{1f6f0}\\u0000\"'{i}"),
                            "timestamp": "2026-11-23T10:30:45+14:00", "source": "%00%27--",
                            "payload": {"s": "\\u0000", "n": -0.0, "e": 1e-300, "u": "\u{fffd}"}});
            p("odd but valid", post(to_bytes(&e)))
        }
        25 => {
            let q = [
                "limit=abc",
                "limit=0",
                "after=zzz",
                "include_redriven=maybe",
                "after=dl-1",
                "after=dl99999999999999999999",
            ][v % 6];
            p(
                "bad /dead-letters params",
                http(Method::GET, format!("/dead-letters?{q}"), None),
            )
        }
        26 => {
            let a = [
                "AAAA",
                "not-a-cursor",
                "%00",
                "MTIzNDU2Nzg5MA",
                "ffffffffffffffffffffffffffffffffffffffffffffffffffff",
            ][v % 5];
            p(
                "bad /events cursor",
                http(Method::GET, events_url(&[("after", a)]), None),
            )
        }
        27 => {
            let t = [
                "+99999-01-01T00:00:00Z",
                "2026-11-23T10:30:45.1234567890123Z",
                "9999-12-31T23:59:59Z",
                "0000-01-01T00:00:00Z",
                "2026-11-23T10:30:45-23:59",
            ][v % 5];
            let mut e = ev(format!("edge-ts-{i}"));
            e["timestamp"] = json!(t);
            p("edge timestamps", post(to_bytes(&e)))
        }
        28 => {
            let t = [
                "9999-12-31T23:59:59Z",
                "0001-01-01T00:00:00Z",
                "2026-02-30T00:00:00Z",
            ][v % 3];
            p(
                "edge /events times",
                http(Method::GET, events_url(&[("since", t), ("until", t)]), None),
            )
        }
        29 => {
            let long = "a".repeat(300);
            let params: &[(&str, &str)] = match v % 3 {
                0 => &[("topic", long.as_str())],
                1 => &[("source", long.as_str())],
                _ => &[("topic", "a.b"), ("topic", "c.d")],
            };
            p(
                "long /events params",
                http(Method::GET, events_url(params), None),
            )
        }
        30 => {
            // HEAD, OPTIONS: no body expected.
            let (method, path) = [
                (Method::HEAD, "/stats"),
                (Method::OPTIONS, "/publish"),
                (Method::HEAD, "/events?limit=0"),
            ][v % 3]
                .clone();
            Probe {
                kind: "HEAD/OPTIONS",
                wire: http(method, path, None),
                json: false,
            }
        }
        _ => {
            let path = format!(
                "/{}",
                "a".repeat(if v.is_multiple_of(2) { 70_000 } else { 9_000 })
            );
            Probe {
                kind: "huge URI",
                wire: raw(host, format!("GET {path} HTTP/1.1").as_bytes(), b"", b""),
                json: false,
            }
        }
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

// ---------------------------------------------------------------------------------------
// 5. Bad configuration
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_with_one_line_naming_the_variable() {
    let env = TestEnv::start().await;
    let dir = TempDir::new("hostile-config");
    let not_a_dir = dir.path().join("wal-is-a-file");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let not_a_dir = not_a_dir.to_string_lossy().into_owned();
    let cases: Vec<(&str, &str)> = vec![
        ("BATCH_TIMEOUT", "soon"),
        ("DATABASE_URL", "mysql://x"),
        ("NATS_URL", "nats://:x"),
        ("WAL_MAX_SIZE", "-5"),
        ("WORKERS", "0"),
        ("WAL_PATH", not_a_dir.as_str()),
        ("HTTP_ADDR", "nonsense"),
        ("MAX_DELIVER", "0"),
        ("REQUEST_TIMEOUT", "5 parsecs"),
        ("MAX_PAYLOAD_BYTES", "lots"),
        ("ACK_WAIT", "-1s"),
        ("MAX_CONCURRENT_PUBLISH", "0"),
        ("BATCH_SIZE", "1e3"),
        ("STREAM_NAME", "EVENTS.>"),
        ("SUBJECT_PREFIX", "events.>"),
        // Values that parse but would break the service silently.
        ("WRITE_TIMEOUT", "0"),
        ("REQUEST_TIMEOUT", "0ms"),
        ("HEALTH_CHECK_INTERVAL", "0s"),
        ("COMPACT_INTERVAL", "0"),
        ("CIRCUIT_BREAKER_TIMEOUT", "0s"),
        ("PUBLISH_TIMEOUT", "0"),
        ("ACK_WAIT", "0"),
        ("RETRY_DELAY", "0"),
        ("RETENTION", "100000000d"),
        ("WAL_MAX_SIZE", "1000"),
        ("MAX_RETRIES", "0"),
        ("API_TOKEN", ""),
    ];
    let nats = env.nats_url();
    let db = env.database_url();
    for (var, value) in cases {
        let wal = dir.path().join(format!("wal-{var}"));
        let wal = wal.to_string_lossy().into_owned();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut vars: Vec<(&str, &str)> = vec![
            ("NATS_URL", nats.as_str()),
            ("DATABASE_URL", db.as_str()),
            ("WAL_PATH", wal.as_str()),
            ("HTTP_ADDR", addr.as_str()),
        ];
        match vars.iter_mut().find(|(k, _)| *k == var) {
            Some(slot) => slot.1 = value,
            None => vars.push((var, value)),
        }
        let (status, _stdout, stderr) =
            run_aggregator_cmd(&[], &vars, Duration::from_secs(20)).await;
        assert!(
            !status.success() && status.code().is_some(),
            "{var}={value:?}: must exit non-zero by itself, got {status}\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{var}={value:?}: panic\n{stderr}"
        );
        let error_lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.trim_start().to_ascii_lowercase().starts_with("error"))
            .collect();
        assert_eq!(
            error_lines.len(),
            1,
            "{var}={value:?}: one error line expected\n{stderr}"
        );
        eprintln!("{var}={value:?} -> {status}: {}", error_lines[0]);
        assert!(
            error_lines[0].contains(var),
            "{var}={value:?}: the error line must name {var}: {:?}\n{stderr}",
            error_lines[0]
        );
    }
}

// ---------------------------------------------------------------------------------------
// 6. GET /dead-letters: token and parameters
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_endpoint_requires_the_token_and_rejects_bad_parameters() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[("API_TOKEN", "secret")]).await;
    let js = env.jetstream().await;
    publish_raw(
        &js,
        "events.token.test",
        Bytes::from_static(b"{\"not\": \"an event\""),
    )
    .await;
    eventually("one dead letter", PATIENCE, || async {
        int(&agg.stats().await, "dead_lettered") >= 1
    })
    .await;

    for token in [None, Some("wrong"), Some("secret-and-more"), Some("")] {
        let (status, body) = get_with_token(&agg, "/dead-letters", token).await;
        assert_eq!(status, 401, "token {token:?}: {body}");
        assert!(body["error"].is_string(), "token {token:?}: {body}");
        assert!(body.get("dead_letters").is_none(), "{body}");
    }
    // Not "Bearer": still refused.
    let resp = agg
        .http()
        .get(format!("{}/dead-letters", agg.base_url()))
        .header("authorization", "Basic secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // The token is checked before the parameters.
    let (status, body) = get_with_token(&agg, "/dead-letters?foo=1", None).await;
    assert_eq!(status, 401, "{body}");

    let (status, body) = get_with_token(&agg, "/dead-letters", Some("secret")).await;
    assert_eq!(status, 200, "{body}");
    let items = body["dead_letters"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["subject"], "events.token.test");
    assert!(body["next"].is_null(), "{body}");

    let cases: &[(&str, &str)] = &[
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("after=zzz", "after"),
        ("after=", "after"),
        ("foo=1", "foo"),
        ("include_redriven=maybe", "include_redriven"),
        ("limit=1&limit=2", "limit"),
    ];
    for (query, field) in cases {
        let path = format!("/dead-letters?{query}");
        let (status, body) = get_with_token(&agg, &path, Some("secret")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"].is_string(), "{query}: {body}");
        let fields: Vec<&str> = body["details"]
            .as_array()
            .unwrap_or_else(|| panic!("{query}: details missing: {body}"))
            .iter()
            .filter_map(|d| d["field"].as_str())
            .collect();
        assert!(
            fields.contains(field),
            "{query}: details must name {field}: {body}"
        );
    }
    for ok in [
        "limit=1",
        "limit=1000",
        "include_redriven=true",
        "include_redriven=false",
    ] {
        let (status, body) =
            get_with_token(&agg, &format!("/dead-letters?{ok}"), Some("secret")).await;
        assert_eq!(status, 200, "{ok}: {body}");
    }
    // The token protects this endpoint, not the read-only ones.
    assert_eq!(agg.get("/stats").await.0, 200);
    assert_eq!(agg.get("/events").await.0, 200);
}
