//! `GET /metrics` by Prometheus conventions: a `# HELP` for every family, the build-info
//! gauge, the standard process metrics of the aggregator's own process, the breaker as one
//! series per state, and HTTP requests counted by route template, never by raw path.

use super::common::*;
use super::metrics::parse_prometheus;
use integration_tests::{eventually, workspace_root, Aggregator, TestEnv};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `name -> help` of every `# HELP` line, and the names of every `# TYPE` line.
fn help_and_types(text: &str) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut help = BTreeMap::new();
    let mut types = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_owned(), text.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            types.insert(rest.split(' ').next().unwrap().to_owned());
        }
    }
    (help, types)
}

/// The value of the one sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The aggregator's process as the kernel reports it: `(start time since the epoch, CPU
/// seconds)`, the same fields `telemetry::process` reads.
fn proc_stat(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let field = |n: usize| fields[n - 3].parse::<f64>().unwrap();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (boot + field(22) / ticks, (field(14) + field(15)) / ticks)
}

/// Whether `sha` names a commit of this repository. (Not necessarily HEAD: a commit that
/// changed no source, README say, does not rebuild the binary.)
fn is_commit(sha: &str) -> bool {
    std::process::Command::new("git")
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{sha}^{{commit}}"),
        ])
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("git")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_has_help_and_build_process_and_breaker_series_are_there() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    publish_ok(&agg, &event("conv.a", "c-1", &ts(0)), 1).await;
    agg.wait_until_received(1).await;

    let before = proc_stat(agg.pid());
    let text = agg.metrics_text().await;
    let after = proc_stat(agg.pid());
    parse_prometheus(&text);
    let (help, types) = help_and_types(&text);
    let undocumented: Vec<&String> = types.iter().filter(|t| !help.contains_key(*t)).collect();
    assert!(
        undocumented.is_empty(),
        "families without # HELP: {undocumented:?}\n{text}"
    );
    assert!(
        help.values().all(|h| !h.trim().is_empty()),
        "an empty # HELP: {help:#?}"
    );

    // Build info: the crate version and the commit this binary was built from.
    let build: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("aggregator_build_info"))
        .collect();
    assert_eq!(build.len(), 1, "{text}");
    let prefix = format!(
        "aggregator_build_info{{version=\"{}\",git_sha=\"",
        env!("CARGO_PKG_VERSION")
    );
    let (sha, value) = build[0]
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once("\"} "))
        .unwrap_or_else(|| panic!("{}", build[0]));
    assert_eq!(value, "1", "{}", build[0]);
    assert!(
        is_commit(sha),
        "git_sha {sha:?} is no commit of this repository"
    );

    // One series per breaker state, lowercase; the breaker is closed.
    for (state, value) in [("closed", 1.0), ("open", 0.0), ("half_open", 0.0)] {
        let series = format!("aggregator_circuit_breaker_state{{state=\"{state}\"}}");
        assert_eq!(sample(&text, &series), Some(value), "{series}\n{text}");
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("aggregator_circuit_breaker_state"))
            .count(),
        3,
        "{text}"
    );

    // The process metrics are the aggregator's own: the start time exactly as the kernel
    // has it, the CPU time between two readings taken around the scrape.
    assert_eq!(
        sample(&text, "process_start_time_seconds"),
        Some(before.0),
        "{text}"
    );
    let cpu = sample(&text, "process_cpu_seconds_total").expect("process_cpu_seconds_total");
    assert!(
        (before.1..=after.1).contains(&cpu),
        "cpu {cpu} outside [{}, {}]",
        before.1,
        after.1
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", agg.pid()))
        .unwrap()
        .count() as f64;
    let open_fds = sample(&text, "process_open_fds").expect("process_open_fds");
    // Connections come and go between the two readings; a handful is the slack.
    assert!(
        (open_fds - fds).abs() <= 8.0,
        "open fds {open_fds}, /proc has {fds}"
    );
    let rss_kb: f64 = std::fs::read_to_string(format!("/proc/{}/status", agg.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    let rss = sample(&text, "process_resident_memory_bytes").expect("rss");
    assert!(
        (rss / (rss_kb * 1024.0) - 1.0).abs() < 0.5,
        "rss {rss} vs VmRSS {rss_kb} kB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_counted_by_route_template_and_status() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[]).await;
    let http = agg.http();
    // Three distinct unknown paths: one series, route="unmatched".
    for path in ["/no/such/a", "/no/such/b", "/wp-admin.php"] {
        let resp = http
            .get(format!("{}{path}", agg.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
    }
    // A known route with a method it does not have.
    for _ in 0..2 {
        let resp = http
            .delete(format!("{}/stats", agg.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405);
    }
    // A bad query string on a templated route.
    let (status, _) = agg.get("/events?limit=0").await;
    assert_eq!(status, 400);

    let a = &agg;
    eventually(
        "the requests counted",
        Duration::from_secs(30),
        || async move {
            let text = a.metrics_text().await;
            sample(
                &text,
                "aggregator_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}",
            ) == Some(3.0)
        },
    )
    .await;
    let text = agg.metrics_text().await;
    for (series, want) in [
        (
            "aggregator_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}",
            3.0,
        ),
        (
            "aggregator_http_requests_total{route=\"/stats\",method=\"DELETE\",status=\"405\"}",
            2.0,
        ),
        (
            "aggregator_http_requests_total{route=\"/events\",method=\"GET\",status=\"400\"}",
            1.0,
        ),
        (
            "aggregator_http_request_duration_seconds_count{route=\"unmatched\",status=\"404\"}",
            3.0,
        ),
        (
            "aggregator_http_request_duration_seconds_bucket{route=\"unmatched\",status=\"404\",le=\"+Inf\"}",
            3.0,
        ),
        (
            "aggregator_http_request_duration_seconds_count{route=\"/events\",status=\"400\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series}\n{text}");
    }
    // No raw path became a label value.
    for raw in ["/no/such/a", "/no/such/b", "/wp-admin.php", "limit=0"] {
        assert!(!text.contains(raw), "{raw} in a label:\n{text}");
    }
}
