//! The Grafana dashboard (`deploy/grafana/dashboards/aggregator.json`) queries only metrics
//! that exist: every metric name in every panel's `expr` is checked against a live
//! aggregator's `/metrics` (after events, requests and a scrape went through) and a live
//! `postgres_exporter` (Debian's `prometheus-postgres-exporter`) on the test's Postgres.
//! NATS's exporter (`prometheus-nats-exporter`) has no Debian package, so its names are
//! checked against the list below, taken from its documentation.

use integration_tests::{eventually, workspace_root, Aggregator, Sidecar, TestEnv};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// Metrics of `prometheus-nats-exporter -varz -connz -jsz=all` (default prefix `gnatsd`),
/// which cannot run here: no package of it is at hand.
const NATS_EXPORTER: &[&str] = &[
    "gnatsd_varz_in_msgs",
    "gnatsd_varz_out_msgs",
    "gnatsd_varz_connections",
    "gnatsd_varz_slow_consumers",
    "gnatsd_varz_mem",
    "gnatsd_varz_cpu",
    "jetstream_stream_total_messages",
    "jetstream_consumer_num_pending",
    "jetstream_consumer_num_ack_pending",
    "jetstream_consumer_num_redelivered",
];

/// Series Prometheus makes itself for every target.
const PROMETHEUS: &[&str] = &["up"];

/// PromQL's grouping and matching clauses: each takes a parenthesised label list.
const CLAUSES: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other PromQL words that are not metric names.
const KEYWORDS: &[&str] = &["offset", "bool", "and", "or", "unless", "inf", "nan"];

fn dashboard() -> Value {
    let path = workspace_root().join("deploy/grafana/dashboards/aggregator.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}"))
}

/// Every panel, nested rows included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dash["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner);
        }
        out.push(p);
    }
    out
}

/// Removes every `open ... close` span (not nested: PromQL label matchers, range selectors
/// and strings do not nest).
fn strip(text: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in text.chars() {
        match (inside, c) {
            (false, c) if c == open => inside = true,
            (true, c) if c == close => inside = false,
            (false, c) => out.push(c),
            _ => {}
        }
    }
    out
}

/// The metric names a PromQL expression selects: identifiers that are not functions (before
/// `(`), not keywords, not in a `by (...)`-style label list, not inside `{...}`, `[...]` or a
/// string.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut text = strip(&strip(&strip(expr, '"', '"'), '{', '}'), '[', ']');
    for clause in CLAUSES {
        while let Some(at) = find_word(&text, clause) {
            let after = &text[at + clause.len()..];
            // The clause and its `(label, ...)` list; a bare word (no list) goes alone.
            let has_list = after
                .find('(')
                .is_some_and(|i| after[..i].trim().is_empty());
            let end = if has_list {
                at + clause.len() + after.find(')').expect("unclosed label list") + 1
            } else {
                at + clause.len()
            };
            text.replace_range(at..end, " ");
        }
    }
    let mut names = BTreeSet::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let preceded_by_digit = start > 0 && chars[start - 1].is_ascii_digit();
            if next != Some(&'(')
                && !KEYWORDS.contains(&word.as_str())
                && !CLAUSES.contains(&word.as_str())
                && !preceded_by_digit
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The byte index of `word` standing alone in `text`.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.match_indices(word).map(|(i, _)| i).find(|&i| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Sample names (`_bucket`, `_sum`, `_count` included) of a Prometheus text exposition.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[test]
fn promql_names_are_extracted() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names("histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{route=\"/x\"}[$__rate_interval])))"),
        ["a_seconds_bucket"]
    );
    assert_eq!(
        names("sum(rate(a_total[5m])) / sum without (topic) (b_total offset 5m) > bool 1e3"),
        ["a_total", "b_total"]
    );
    assert_eq!(
        names("time() - process_start_time_seconds{job=\"by\"}"),
        ["process_start_time_seconds"]
    );
    assert_eq!(names("max by (state) (x)"), ["x"]);
}

/// Debian's `prometheus-postgres-exporter` on `database_url`.
fn start_postgres_exporter(database_url: &str) -> Sidecar {
    let binary = "/usr/bin/prometheus-postgres-exporter";
    assert!(
        std::path::Path::new(binary).exists(),
        "{binary} is missing: run scripts/install-deps.sh --test (Debian package \
         prometheus-postgres-exporter)"
    );
    let sep = if database_url.contains('?') { '&' } else { '?' };
    Sidecar::start("pg-exporter", binary, |cmd, _dir, port| {
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .env(
                "DATA_SOURCE_NAME",
                format!("{database_url}{sep}sslmode=disable"),
            );
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_a_metric_that_exists() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "telemetry-aggregator");
    // Every query goes to the provisioned datasource (uid `prometheus`).
    let provisioning = std::fs::read_to_string(
        workspace_root().join("deploy/grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    assert!(provisioning.contains("uid: prometheus"), "{provisioning}");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels(&dash) {
        let id = p["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("panel without id: {p}"));
        assert!(ids.insert(id), "panel id {id} twice");
        for key in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][key].is_i64(), "panel {id} gridPos.{key}");
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "prometheus", "panel {id}: {t}");
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {id}: no expr"));
            exprs.push((
                p["title"].as_str().unwrap_or("?").to_owned(),
                expr.to_owned(),
            ));
        }
    }
    assert!(exprs.len() >= 40, "only {} queries", exprs.len());

    // A live aggregator, after events and HTTP requests went through.
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    integration_tests::run_publisher(
        &env,
        &[
            "--count",
            "200",
            "--duplicate-rate",
            "0.3",
            "--topics",
            "3",
            "--seed",
            "9",
        ],
    )
    .await;
    agg.wait_until_received(200).await;
    let mut live = exposed(&agg.metrics_text().await);
    live.extend(exposed(&agg.metrics_text().await));

    let exporter = start_postgres_exporter(&env.database_url());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let scrape = || async {
        let resp = http
            .get(format!("{}/metrics", exporter.base_url()))
            .send()
            .await
            .ok()?;
        resp.text().await.ok()
    };
    eventually(
        "postgres_exporter answers with pg_up 1",
        Duration::from_secs(60),
        || async {
            scrape()
                .await
                .is_some_and(|t| t.lines().any(|l| l == "pg_up 1"))
        },
    )
    .await;
    let pg = exposed(&scrape().await.expect("postgres_exporter /metrics"));

    let mut unknown = Vec::new();
    let mut checked = BTreeSet::new();
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr:?}");
        for name in names {
            let known = if name.starts_with("aggregator_") || name.starts_with("process_") {
                live.contains(&name)
            } else if name.starts_with("pg_") {
                pg.contains(&name)
            } else {
                NATS_EXPORTER.contains(&name.as_str()) || PROMETHEUS.contains(&name.as_str())
            };
            if !known {
                unknown.push(format!("{title}: {name} in {expr}"));
            }
            checked.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "unknown metrics in the dashboard:\n{}",
        unknown.join("\n")
    );
    // What the embedded dashboard shows is covered.
    for name in [
        "aggregator_events_received_total",
        "aggregator_events_unique_total",
        "aggregator_events_duplicate_total",
        "aggregator_dead_letters_total",
        "aggregator_consumer_pending",
        "aggregator_buffer_size",
        "aggregator_wal_records",
        "aggregator_circuit_breaker_state",
        "aggregator_http_request_duration_seconds_bucket",
        "aggregator_batch_write_seconds_bucket",
        "aggregator_end_to_end_lag_seconds_bucket",
        "aggregator_outbox_lag_rows",
        "aggregator_outbox_lag_seconds",
        "aggregator_outbox_published_total",
        "pg_up",
        "gnatsd_varz_in_msgs",
        "jetstream_consumer_num_pending",
    ] {
        assert!(checked.contains(name), "the dashboard does not show {name}");
    }
}
