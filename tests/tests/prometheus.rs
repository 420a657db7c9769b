//! A real Prometheus scrapes the aggregator's /metrics; its query API must report the dedup
//! and WAL series with the values /stats reports, the breaker as one series per state, the
//! build info and the requests by route.

use integration_tests::{eventually, run_publisher, Aggregator, Sidecar, TestEnv};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

fn prometheus_binary() -> String {
    for candidate in ["/usr/bin/prometheus", "prometheus"] {
        if Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return candidate.to_owned();
        }
    }
    panic!("prometheus is not installed: run scripts/install-deps.sh (Debian package prometheus)");
}

/// A private Prometheus scraping `target` every second.
fn start_prometheus(target: &str) -> Sidecar {
    Sidecar::start("prometheus", &prometheus_binary(), |cmd, dir, port| {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: aggregator\n    \
                 metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    })
}

/// The single value of an instant query, if Prometheus has one.
async fn query(http: &reqwest::Client, prom: &str, q: &str) -> Option<f64> {
    let resp: Value = http
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    resp["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The label sets (`__name__` included) of an instant query's series.
async fn series(http: &reqwest::Client, prom: &str, q: &str) -> Vec<Value> {
    let resp: Value = http
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{q}: {resp}"))
        .iter()
        .map(|r| r["metric"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_dedup_and_wal_series_that_stats_reports() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let target = agg.base_url().trim_start_matches("http://").to_owned();
    let prom = start_prometheus(&target);

    run_publisher(
        &env,
        &[
            "--count",
            "2000",
            "--duplicate-rate",
            "0.3",
            "--topics",
            "4",
            "--seed",
            "8",
        ],
    )
    .await;
    let stats = agg.wait_until_received(2000).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let expect = [
        (
            "sum(aggregator_events_received_total)",
            stats["received"].as_f64().unwrap(),
        ),
        (
            "sum(aggregator_events_unique_total)",
            stats["unique_processed"].as_f64().unwrap(),
        ),
        (
            "sum(aggregator_events_duplicate_total)",
            stats["duplicate_dropped"].as_f64().unwrap(),
        ),
        (
            "aggregator_wal_records",
            stats["wal_record_count"].as_f64().unwrap(),
        ),
        // One series per breaker state, lowercase, exactly one of them 1.
        ("aggregator_circuit_breaker_state{state=\"closed\"}", 1.0),
        ("aggregator_circuit_breaker_state{state=\"open\"}", 0.0),
        ("aggregator_circuit_breaker_state{state=\"half_open\"}", 0.0),
        ("count(aggregator_circuit_breaker_state)", 3.0),
        ("aggregator_build_info", 1.0),
        // Requests by route template: Prometheus's own scrapes of /metrics are among them.
        (
            "count(aggregator_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"})",
            1.0,
        ),
    ];
    assert_eq!(expect[0].1, 2000.0);
    assert_eq!(expect[2].1, 600.0);
    eventually(
        "Prometheus reports what /stats reports",
        Duration::from_secs(60),
        || async {
            let mut all = true;
            for (q, want) in &expect {
                all &= query(&http, &prom.base_url(), q).await == Some(*want);
            }
            all
        },
    )
    .await;
    // Build info: its labels are the version and the commit of the build.
    let build = series(&http, &prom.base_url(), "aggregator_build_info").await;
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0]["version"], env!("CARGO_PKG_VERSION"), "{build:?}");
    // A commit of this repository (not necessarily HEAD: a commit that changed no source
    // does not rebuild the binary).
    let sha = build[0]["git_sha"].as_str().unwrap();
    assert!(
        Command::new("git")
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{sha}^{{commit}}")
            ])
            .current_dir(integration_tests::workspace_root())
            .stdout(Stdio::null())
            .status()
            .expect("git")
            .success(),
        "git_sha {sha:?} is no commit of this repository"
    );
    // Per topic too.
    for t in stats["topics"].as_array().unwrap() {
        let q = format!(
            "aggregator_events_received_total{{topic=\"{}\"}}",
            t["topic"].as_str().unwrap()
        );
        assert_eq!(
            query(&http, &prom.base_url(), &q).await,
            t["received"].as_f64(),
            "{q}"
        );
    }
}
