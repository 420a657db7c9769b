//! `GET /metrics`: a Prometheus exposition parser, and the series against `/stats`.

use super::common::*;
use integration_tests::{eventually, Aggregator, TestEnv};
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug)]
pub(crate) struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
pub(crate) struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// `label value -> sample value` of every sample of `name` (one label `label`).
    fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| {
                assert_eq!(
                    s.labels.len(),
                    1,
                    "{name} must only have label {label}: {s:?}"
                );
                let v = s
                    .labels
                    .get(label)
                    .unwrap_or_else(|| panic!("{name} without label {label}: {s:?}"));
                (v.clone(), s.value)
            })
            .collect()
    }
}

pub(crate) fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

pub(crate) fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `k="v",k2="v2"` (escapes `\\`, `\"`, `\n`); panics naming `line` on error.
pub(crate) fn parse_labels(text: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels in {line:?}"));
        assert!(is_label_name(name), "bad label name {name:?} in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "repeated label {name} in {line:?}"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

/// Parses Prometheus text: every non-comment line is `name{labels} value` (optionally a
/// timestamp) with a float value, and every sample belongs to a family with a `# TYPE`.
pub(crate) fn parse_prometheus(text: &str) -> Exposition {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let parts: Vec<&str> = comment.split_whitespace().collect();
            if parts.first() == Some(&"TYPE") {
                assert_eq!(parts.len(), 3, "bad TYPE line {line:?}");
                assert!(is_metric_name(parts[1]), "bad TYPE line {line:?}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&parts[2]),
                    "bad type in {line:?}"
                );
                assert!(
                    types
                        .insert(parts[1].to_string(), parts[2].to_string())
                        .is_none(),
                    "second TYPE for {}",
                    parts[1]
                );
            }
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close], line),
                    &line[close + 1..],
                )
            }
            None => {
                let space = line
                    .find(' ')
                    .unwrap_or_else(|| panic!("no value in {line:?}"));
                (&line[..space], BTreeMap::new(), &line[space..])
            }
        };
        assert!(is_metric_name(name), "bad metric name in {line:?}");
        assert!(
            rest.starts_with(' '),
            "no space before the value in {line:?}"
        );
        let fields: Vec<&str> = rest.split_whitespace().collect();
        assert!(
            fields.len() == 1 || (fields.len() == 2 && fields[1].parse::<i64>().is_ok()),
            "expected `value [timestamp]` in {line:?}"
        );
        let value: f64 = fields[0]
            .parse()
            .unwrap_or_else(|_| panic!("value is not a float in {line:?}"));
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for s in &samples {
        let family_type = types.get(&s.name).map(|t| (s.name.as_str(), t.as_str()));
        let found = family_type.or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let family = s.name.strip_suffix(suffix)?;
                let t = types.get(family)?.as_str();
                let ok = match *suffix {
                    "_bucket" => t == "histogram",
                    _ => t == "histogram" || t == "summary",
                };
                ok.then_some((family, t))
            })
        });
        assert!(
            found.is_some(),
            "sample {} has no `# TYPE` for its family:\n{text}",
            s.name
        );
    }
    Exposition { types, samples }
}

pub(crate) async fn metrics(agg: &Aggregator) -> Exposition {
    let resp = agg
        .http()
        .get(format!("{}/metrics", agg.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .expect("content-type")
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/plain"), "content-type {ct}");
    parse_prometheus(&resp.text().await.unwrap())
}

pub(crate) const RECEIVED: &str = "aggregator_events_received_total";
pub(crate) const UNIQUE: &str = "aggregator_events_unique_total";
pub(crate) const DUPLICATE: &str = "aggregator_events_duplicate_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn metrics_parse_and_match_stats_per_topic() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    // 300 sends over 3 topics: topic t has 100 sends of 100 - 20 (t + 1) distinct events.
    let mut sends = Vec::new();
    for t in 0..3 {
        let topic = format!("metrics.topic{t}");
        let distinct = 100 - 20 * (t + 1);
        for k in 0..100 {
            sends.push(event(&topic, &format!("m-{}", k % distinct), &ts(k)));
        }
    }
    for chunk in sends.chunks(50) {
        publish_ok(&agg, &Value::Array(chunk.to_vec()), 50).await;
    }
    let stats = agg.wait_until_received(300).await;
    assert_counts(&stats, 300, 80 + 60 + 40, 20 + 40 + 60);

    // Process counters are updated after the commit that /stats reads.
    let a = &agg;
    eventually("metrics count 300 received", PATIENCE, || async move {
        let m = metrics(a).await;
        m.by_label(RECEIVED, "topic").values().sum::<f64>() == 300.0
            && m.by_label(UNIQUE, "topic").values().sum::<f64>() == 180.0
            && m.by_label(DUPLICATE, "topic").values().sum::<f64>() == 120.0
    })
    .await;
    let m = metrics(&agg).await;

    let mut missing = Vec::new();
    for (name, t) in [
        (RECEIVED, "counter"),
        (UNIQUE, "counter"),
        (DUPLICATE, "counter"),
        ("aggregator_dead_letters_total", "counter"),
        ("aggregator_batch_size", "histogram"),
        ("aggregator_batch_write_seconds", "histogram"),
        ("aggregator_end_to_end_lag_seconds", "histogram"),
        ("aggregator_buffer_size", "gauge"),
        ("aggregator_consumer_pending", "gauge"),
        ("aggregator_wal_records", "gauge"),
        ("aggregator_wal_bytes", "gauge"),
        ("aggregator_circuit_breaker_state", "gauge"),
    ] {
        let has_sample = m
            .samples
            .iter()
            .any(|s| s.name == name || s.name.starts_with(&format!("{name}_")));
        if m.types.get(name).map(String::as_str) != Some(t) || !has_sample {
            missing.push(format!(
                "{name}: want {t}, TYPE {:?}, samples: {has_sample}",
                m.types.get(name)
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "metric families wrong or missing: {missing:#?}"
    );
    // Histograms: the +Inf bucket equals the count.
    for name in [
        "aggregator_batch_size",
        "aggregator_batch_write_seconds",
        "aggregator_end_to_end_lag_seconds",
    ] {
        let count = m.value(&format!("{name}_count"), &[]);
        let inf = m.value(&format!("{name}_bucket"), &[("le", "+Inf")]);
        assert!(count.is_some_and(|c| c > 0.0), "{name}_count: {count:?}");
        assert_eq!(count, inf, "{name}: +Inf bucket vs count");
    }
    assert_eq!(
        m.value("aggregator_dead_letters_total", &[]),
        Some(int(&stats, "dead_lettered") as f64)
    );

    let per_topic = topic_counts(&stats);
    let received = m.by_label(RECEIVED, "topic");
    let unique = m.by_label(UNIQUE, "topic");
    let duplicate = m.by_label(DUPLICATE, "topic");
    let names: BTreeSet<&String> = per_topic.keys().collect();
    assert_eq!(received.keys().collect::<BTreeSet<_>>(), names);
    for (topic, (r, u, d)) in &per_topic {
        assert_eq!(received[topic], *r as f64, "received {topic}");
        assert_eq!(
            unique.get(topic).copied(),
            Some(*u as f64),
            "unique {topic}"
        );
        assert_eq!(
            duplicate.get(topic).copied().unwrap_or(0.0),
            *d as f64,
            "duplicate {topic}"
        );
    }
    assert_eq!(per_topic["metrics.topic0"], (100, 80, 20));
    assert_eq!(per_topic["metrics.topic1"], (100, 60, 40));
    assert_eq!(per_topic["metrics.topic2"], (100, 40, 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn metrics_topic_labels_are_capped() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("METRICS_MAX_TOPICS", "2")]).await;
    // cap.a and cap.b are seen first (each counted before the next topic is sent).
    publish_ok(&agg, &event("cap.a", "a-1", &ts(0)), 1).await;
    agg.wait_until_received(1).await;
    publish_ok(
        &agg,
        &json!([event("cap.b", "b-1", &ts(0)), event("cap.b", "b-2", &ts(1))]),
        2,
    )
    .await;
    agg.wait_until_received(3).await;
    let later = json!([
        event("cap.c", "c-1", &ts(0)),
        event("cap.c", "c-1", &ts(0)),
        event("cap.d", "d-1", &ts(0)),
        event("cap.d", "d-2", &ts(0)),
        event("cap.e", "e-1", &ts(0)),
        event("cap.a", "a-2", &ts(1)),
    ]);
    publish_ok(&agg, &later, 6).await;
    let stats = agg.wait_until_received(9).await;
    assert_counts(&stats, 9, 8, 1);
    assert_eq!(topic_counts(&stats).len(), 5, "/stats is not capped");

    let a = &agg;
    eventually("metrics count 9 received", PATIENCE, || async move {
        metrics(a)
            .await
            .by_label(RECEIVED, "topic")
            .values()
            .sum::<f64>()
            == 9.0
    })
    .await;
    let m = metrics(&agg).await;
    let expect = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    assert_eq!(
        m.by_label(RECEIVED, "topic"),
        expect(&[("cap.a", 2.0), ("cap.b", 2.0), ("other", 5.0)])
    );
    assert_eq!(
        m.by_label(UNIQUE, "topic"),
        expect(&[("cap.a", 2.0), ("cap.b", 2.0), ("other", 4.0)])
    );
    let dups: BTreeMap<String, f64> = m
        .by_label(DUPLICATE, "topic")
        .into_iter()
        .filter(|(_, v)| *v != 0.0)
        .collect();
    assert_eq!(dups, expect(&[("other", 1.0)]));
}
