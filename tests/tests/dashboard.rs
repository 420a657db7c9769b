//! Live dashboard (`GET /`): a real headless Chromium loads the page from the real aggregator
//! binary (private NATS and Postgres), runs its JavaScript and dumps the resulting DOM; the
//! numbers it shows must equal `GET /stats` exactly. A screenshot is kept in
//! `target/dashboard.png` for a human to look at.
//!
//! Chromium is found on `PATH` (`chromium`, `chromium-browser`) or at `/usr/bin/chromium`
//! (`scripts/install-deps.sh --test` installs it): a missing browser fails the test, it never
//! skips it. Every Chromium run is killed after 60 s (a safety net, not
//! an assertion on timing).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use integration_tests::{
    aggregator_bin, int, run_publisher, workspace_root, Aggregator, TempDir, TestEnv,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Safety net for one Chromium run; it is then killed (with its whole process group).
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Chromium
// ---------------------------------------------------------------------------------------

fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let fixed = Path::new("/usr/bin/chromium");
    fixed.is_file().then(|| fixed.to_path_buf())
}

/// The Chromium binary; a missing browser fails the test (it never skips it). Installing it
/// is `scripts/install-deps.sh --test`'s job, never a test's.
fn chromium() -> PathBuf {
    find_chromium().expect(
        "chromium is not installed: run scripts/install-deps.sh --test (Debian package chromium)",
    )
}

/// Runs headless Chromium with the common flags plus `extra`, in a fresh profile directory
/// and its own process group; returns its stdout. Panics (with stderr) when it fails or
/// does not finish within [`CHROMIUM_TIMEOUT`].
async fn run_chromium(bin: &Path, extra: &[String]) -> String {
    let profile = TempDir::new("chromium");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg("--virtual-time-budget=10000")
    .args(extra)
    .env_remove("http_proxy")
    .env_remove("https_proxy")
    .env_remove("HTTP_PROXY")
    .env_remove("HTTPS_PROXY")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let pgid = Pid::from_raw(child.id().expect("chromium pid") as i32);
    let result = tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await;
    // The browser's helpers (renderer, zygote, crashpad) share its process group: make sure
    // none outlives this run, whatever happened.
    let _ = killpg(pgid, Signal::SIGKILL);
    let out = match result {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("chromium {extra:?}: {e}"),
        Err(_) => panic!("chromium {extra:?} did not finish within {CHROMIUM_TIMEOUT:?}; killed"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium {extra:?} failed ({}):\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    );
    stdout
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// The aggregator binary must serve the page that is on disk
// ---------------------------------------------------------------------------------------

fn asset_path() -> PathBuf {
    workspace_root().join("aggregator/assets/dashboard.html")
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
}

/// The harness rebuilds the aggregator when its `src/` changes; the page is compiled in
/// from `assets/`, so rebuild here too when it is newer than the binary (unless
/// `IT_SKIP_BUILD=1`; the test then still fails if the served page differs from the file).
async fn build_aggregator_with_current_page() {
    let bin = aggregator_bin().await;
    if std::env::var_os("IT_SKIP_BUILD").is_some_and(|v| v == "1")
        || mtime(&asset_path()) <= mtime(&bin)
    {
        return;
    }
    let profile = match bin
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
    {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("dashboard test: page changed, cargo build -p aggregator --profile {profile}");
    let out = tokio::process::Command::new(&cargo)
        .args(["build", "-p", "aggregator", "--bin", "aggregator"])
        .args(["--profile", &profile])
        .current_dir(workspace_root())
        .output()
        .await
        .unwrap_or_else(|e| panic!("spawn {cargo}: {e}"));
    assert!(
        out.status.success(),
        "cargo build -p aggregator failed:\n{}",
        tail(&String::from_utf8_lossy(&out.stderr), 60)
    );
}

// ---------------------------------------------------------------------------------------
// Reading the dumped DOM (Chromium serialises it as plain HTML)
// ---------------------------------------------------------------------------------------

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Text of `s` with every tag removed.
fn strip_tags(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(out.trim())
}

/// The opening tag (`<... id="id" ...>`) of the element with that id and what follows it.
fn element<'a>(dom: &'a str, id: &str) -> (&'a str, &'a str) {
    let needle = format!(" id=\"{id}\"");
    let at = dom
        .find(&needle)
        .unwrap_or_else(|| panic!("no element with id=\"{id}\" in the DOM:\n{dom}"));
    let start = dom[..at].rfind('<').expect("tag start");
    let end = at + dom[at..].find('>').expect("tag end") + 1;
    (&dom[start..end], &dom[end..])
}

/// The text of a leaf element (everything up to the next tag).
fn text_of(dom: &str, id: &str) -> String {
    let (_, rest) = element(dom, id);
    unescape(rest[..rest.find('<').unwrap_or(rest.len())].trim())
}

/// The content of the `<tbody id="id">`.
fn tbody(dom: &str, id: &str) -> String {
    let (_, rest) = element(dom, id);
    rest[..rest.find("</tbody>").expect("</tbody>")].to_string()
}

/// Rows of a tbody: (opening `<tr ...>` tag, texts of its cells).
fn rows(body: &str) -> Vec<(String, Vec<String>)> {
    body.split("<tr")
        .skip(1)
        .map(|row| {
            let open = format!("<tr{}", &row[..=row.find('>').expect("tr end")]);
            let cells = row
                .split("<td")
                .skip(1)
                .map(|c| {
                    let inner = &c[c.find('>').expect("td end") + 1..];
                    strip_tags(&inner[..inner.find("</td>").expect("</td>")])
                })
                .collect();
            (open, cells)
        })
        .collect()
}

/// Asserts that the dashboard DOM shows exactly `stats` (totals, rate, every topic).
fn assert_dom_matches(dom: &str, stats: &Value) {
    let at = dom.find("<body").expect("<body> in the DOM");
    let body_tag = &dom[at..at + dom[at..].find('>').expect("body tag end") + 1];
    assert!(
        body_tag.contains("data-loaded=\"1\""),
        "the page never completed a poll: {body_tag}\n{dom}"
    );
    for field in [
        "received",
        "unique_processed",
        "duplicate_dropped",
        "dead_lettered",
    ] {
        assert_eq!(
            text_of(dom, field),
            int(stats, field).to_string(),
            "#{field} vs /stats {stats}"
        );
    }
    let rate = stats["duplicate_rate"].as_f64().expect("duplicate_rate");
    assert_eq!(
        text_of(dom, "duplicate_rate"),
        format!("{:.1}%", rate * 100.0)
    );

    let topics = stats["topics"].as_array().expect("topics");
    let shown = rows(&tbody(dom, "topics"));
    assert_eq!(shown.len(), topics.len(), "topic rows: {shown:?}\n{stats}");
    for t in topics {
        let name = t["topic"].as_str().expect("topic name");
        let (_, cells) = shown
            .iter()
            .find(|(open, _)| open.contains(&format!("data-topic=\"{name}\"")))
            .unwrap_or_else(|| panic!("no <tr data-topic=\"{name}\"> in {shown:?}"));
        let want = [
            name.to_string(),
            int(t, "received").to_string(),
            int(t, "unique_processed").to_string(),
            int(t, "duplicate_dropped").to_string(),
        ];
        assert_eq!(&cells[..4], &want[..], "row of {name}");
    }
}

// ---------------------------------------------------------------------------------------
// Test
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium_shows_exact_stats() {
    let browser = chromium();
    eprintln!("dashboard test: using {}", browser.display());
    build_aggregator_with_current_page().await;

    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    run_publisher(
        &env,
        &[
            "--count",
            "3000",
            "--duplicate-rate",
            "0.3",
            "--topics",
            "5",
            "--seed",
            "9",
        ],
    )
    .await;
    agg.wait_until_received(3000).await;
    let stats = agg.stats().await;
    assert_eq!(int(&stats, "received"), 3000, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), 2100, "{stats}");
    assert_eq!(int(&stats, "duplicate_dropped"), 900, "{stats}");
    assert_eq!(int(&stats, "dead_lettered"), 0, "{stats}");
    assert_eq!(stats["topics"].as_array().map(Vec::len), Some(5), "{stats}");

    // The page: HTML, never cached, exactly the file on disk, no token needed.
    let base = agg.base_url();
    let resp = agg.http().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-cache");
    let page = resp.text().await.unwrap();
    let on_disk = std::fs::read_to_string(asset_path()).unwrap();
    assert!(
        page == on_disk,
        "GET / does not serve aggregator/assets/dashboard.html (stale aggregator binary?)"
    );
    for external in ["http://", "https://", "//fonts.", "<link", "src=\"http"] {
        assert!(
            !page.contains(external),
            "the page must be self-contained, found {external:?}"
        );
    }

    // Headless Chromium runs the page's JavaScript; the DOM must show exactly /stats.
    let dom = run_chromium(&browser, &["--dump-dom".into(), format!("{base}/")]).await;
    let (_, health) = agg.health().await;
    assert_dom_matches(&dom, &stats);
    assert_eq!(text_of(&dom, "received"), "3000");
    assert_eq!(text_of(&dom, "unique_processed"), "2100");
    assert_eq!(text_of(&dom, "duplicate_rate"), "30.0%");
    assert_eq!(text_of(&dom, "dead_lettered"), "0");
    assert_eq!(text_of(&dom, "status"), health["status"].as_str().unwrap());
    assert_eq!(text_of(&dom, "circuit_breaker"), "CLOSED");
    assert_eq!(rows(&tbody(&dom, "events")).len(), 10, "recent events");
    assert_eq!(text_of(&dom, "dead_letters_note"), "No dead letters.");

    // A screenshot for human eyes.
    let shot = workspace_root().join("target").join("dashboard.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".into(),
            format!("{base}/"),
        ],
    )
    .await;
    let size = std::fs::metadata(&shot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()))
        .len();
    assert!(
        size > 10 * 1024,
        "screenshot {} is only {size} bytes",
        shot.display()
    );
    println!("dashboard screenshot: {}", shot.display());

    // With API_TOKEN set the page still loads without a token; dead letters say so.
    let secured = Aggregator::spawn(&env, &[("API_TOKEN", "s3cret")]).await;
    let (status, _) = secured.get("/dead-letters?limit=10").await;
    assert_eq!(status, 401);
    let dom = run_chromium(
        &browser,
        &["--dump-dom".into(), format!("{}/", secured.base_url())],
    )
    .await;
    assert_dom_matches(&dom, &secured.stats().await);
    assert_eq!(
        text_of(&dom, "dead_letters_note"),
        "dead letters: token required"
    );
    drop(secured);

    // With API_READ_TOKEN set, reads need it: opened as `/#token=<token>`, the page sends it
    // and shows the exact stats; opened without it, the page says the reads were refused.
    let read_only = Aggregator::spawn(&env, &[("API_READ_TOKEN", "r3ad")]).await;
    let stats: Value = read_only
        .http()
        .get(format!("{}/stats", read_only.base_url()))
        .bearer_auth("r3ad")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page = format!("{}/#token=r3ad", read_only.base_url());
    let dom = run_chromium(&browser, &["--dump-dom".into(), page]).await;
    assert_dom_matches(&dom, &stats);
    let page = format!("{}/", read_only.base_url());
    let dom = run_chromium(&browser, &["--dump-dom".into(), page]).await;
    let banner = text_of(&dom, "error");
    assert!(banner.contains("/stats answered HTTP 401"), "{banner}");
}
