//! The messages of the malformed-input test: five hundred malformed ones of ten kinds, and
//! valid ones with tricky but legal values.

use super::common::*;
use serde_json::{json, Value};

/// One message published straight to the stream.
pub(crate) struct Msg {
    pub(crate) subject: String,
    pub(crate) bytes: Vec<u8>,
    /// `None`: valid. `Some((kind, substring))`: must be dead-lettered with a reason
    /// containing `substring` (empty: any non-empty reason).
    pub(crate) dead: Option<(&'static str, String)>,
}

pub(crate) const FIELDS: [&str; 5] = ["topic", "event_id", "timestamp", "source", "payload"];

/// A valid event as a JSON value (topic `hostile.bad`, the given id).
pub(crate) fn bad_base(id: &str) -> Value {
    json!({
        "topic": "hostile.bad",
        "event_id": id,
        "timestamp": TS,
        "source": "SAT-0666",
        "payload": {"battery_charge_percent": 12.5, "is_anomaly": true},
    })
}

pub(crate) fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// A message of exactly `len` bytes whose payload is `{"pad":"xxx..."}` (topic
/// `hostile.bad`).
pub(crate) fn padded_event(id: &str, len: usize) -> Vec<u8> {
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
pub(crate) fn splice(bytes: &[u8], marker: &[u8], with: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker present");
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(with);
    out.extend_from_slice(&bytes[at + marker.len()..]);
    out
}

/// The subject most malformed messages are published on.
const BAD_SUBJECT: &str = "events.hostile.bad";

/// `(kind, reason substring)` of a message that must be dead-lettered.
fn dead(kind: &'static str, reason: &str) -> Option<(&'static str, String)> {
    Some((kind, reason.to_string()))
}

/// The ten kinds of malformed message, fifty of each: kind `k` builds its `v`-th message from
/// its event id `bad-<k>-<v>`.
const MALFORMED: [fn(&str, usize) -> Msg; 10] = [
    // Not UTF-8.
    |id, v| {
        let subject = BAD_SUBJECT.to_string();
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
                let mut b = to_bytes(&bad_base(id));
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
    },
    // Not JSON: truncated and otherwise broken.
    |id, v| {
        let subject = BAD_SUBJECT.to_string();
        let full = to_bytes(&bad_base(id));
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
    },
    // JSON, but not an object.
    |id, v| {
        let subject = BAD_SUBJECT.to_string();
        let one = String::from_utf8(to_bytes(&bad_base(id))).unwrap();
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
    },
    // A field missing (absent or null).
    |id, v| {
        let subject = BAD_SUBJECT.to_string();
        let field = FIELDS[v % 5];
        let mut ev = bad_base(id);
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
    },
    // A field of the wrong type.
    |id, v| {
        let subject = BAD_SUBJECT.to_string();
        let field = FIELDS[v % 5];
        let values = if field == "payload" {
            [json!(5), json!([]), json!("text"), json!(true), json!(1.5)]
        } else {
            [json!(5), json!([]), json!({}), json!(true), json!(1.5)]
        };
        let mut ev = bad_base(id);
        ev[field] = values[(v / 5) % 5].clone();
        Msg {
            subject,
            bytes: to_bytes(&ev),
            dead: dead("wrong type", &format!("{field}:")),
        }
    },
    // Topic rule broken.
    |id, v| {
        let subject = BAD_SUBJECT.to_string();
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
        let mut ev = bad_base(id);
        ev["topic"] = json!(topics[v % topics.len()]);
        Msg {
            subject,
            bytes: to_bytes(&ev),
            dead: dead("bad topic", "topic:"),
        }
    },
    // Timestamp not RFC 3339.
    |id, v| {
        let subject = BAD_SUBJECT.to_string();
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
        let mut ev = bad_base(id);
        ev["timestamp"] = json!(stamps[v % stamps.len()]);
        Msg {
            subject,
            bytes: to_bytes(&ev),
            dead: dead("bad timestamp", "timestamp:"),
        }
    },
    // Control characters, NUL, empty and over-long strings.
    |id, v| {
        let subject = BAD_SUBJECT.to_string();
        let controls = ["\u{0}", "\n", "\u{1b}", "\u{7f}", "\u{85}", "\r", "\t"];
        let c = controls[v % controls.len()];
        let mut ev = bad_base(id);
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
    },
    // Payload over MAX_PAYLOAD_BYTES=1024; one message of 20 KiB.
    |id, v| {
        let subject = BAD_SUBJECT.to_string();
        let bytes = if v == 49 {
            padded_event(id, 20 * 1024)
        } else {
            // payload `{"pad":"x.."}` = 10 + n bytes.
            let mut ev = bad_base(id);
            ev["payload"] = json!({"pad": "x".repeat(1025 + v * 100 - 10)});
            to_bytes(&ev)
        };
        Msg {
            subject,
            bytes,
            dead: dead("payload over limit", "payload:"),
        }
    },
    // Topic/subject mismatch, wildcard body topic, deeply nested payload.
    |id, v| {
        let subject = BAD_SUBJECT.to_string();
        match v {
            0..=19 => {
                let (body_topic, subject) = if v.is_multiple_of(2) {
                    ("hostile.mismatch.body", "events.hostile.mismatch.subject")
                } else {
                    ("hostile.valid.a", "events.hostile.valid.a.extra")
                };
                let mut ev = bad_base(id);
                ev["topic"] = json!(body_topic);
                Msg {
                    subject: subject.to_string(),
                    bytes: to_bytes(&ev),
                    dead: dead("topic/subject mismatch", "does not match"),
                }
            }
            20..=34 => {
                let topics = ["hostile.*", "hostile.>", "*", ">", "hostile.*.x"];
                let mut ev = bad_base(id);
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
        }
    },
];

/// Malformed message number `i` (0..500): ten kinds of fifty each.
pub(crate) fn malformed(i: usize) -> Msg {
    let (kind, v) = (i / 50, i % 50);
    MALFORMED[kind](&format!("bad-{kind}-{v}"), v)
}

/// Valid event number `k` (0..800), tricky but legal values included.
pub(crate) fn valid(k: usize) -> Msg {
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
