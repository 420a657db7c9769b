//! Live dashboard (`GET /`): a real headless Chromium loads the page from the real aggregator
//! binary (private NATS and Postgres) and runs its JavaScript; once the page says it is ready
//! (a `/stats` poll shown, the live tail open), its DOM is read: the numbers it shows must
//! equal `GET /stats` exactly, its recent events `GET /events?limit=10`, and events stored
//! while the page is open arrive through the live tail, also across a restart of the service
//! (resumed with `Last-Event-ID`). A screenshot is kept in `target/dashboard.png` for a human
//! to look at.
//!
//! The browser is driven over the DevTools protocol ([`integration_tests::browser`]), not with
//! `--dump-dom --virtual-time-budget`: virtual time does not advance while the live tail's
//! streaming response is open, so such a run would never dump. Every wait is a safety net (60
//! s), never an assertion on timing.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use integration_tests::browser::{chromium, Browser, Page};
use integration_tests::{
    aggregator_bin, event_json, eventually, int, publish_raw, run_publisher, workspace_root,
    Aggregator, TestEnv,
};
use serde_json::Value;

/// Safety net for every wait on the page.
const WAIT: Duration = Duration::from_secs(60);

/// The page has shown a `/stats` poll and its recent events are live: the live tail is open
/// and the panel filled.
const SETTLED: &str = "document.body.dataset.loaded === '1' && \
    document.getElementById('tail_state').dataset.state === 'open'";

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A fresh browser with `url` open (1280 x 900), and the DOM once `SETTLED`.
async fn open_settled(url: &str) -> (Browser, Page, String) {
    let mut browser = Browser::launch(&chromium(), &[]).await;
    let page = browser.open(url, 1280, 900).await;
    let dom = browser
        .wait_for(&page, "the page loaded, its live tail open", SETTLED, WAIT)
        .await;
    (browser, page, dom)
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

/// The value of attribute `name` in the opening tag `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let at = tag.find(&needle)? + needle.len();
    Some(unescape(&tag[at..at + tag[at..].find('"')?]))
}

/// The cells the page shows for an event of `GET /events` or of the live tail.
fn shown_event(e: &Value) -> Vec<String> {
    let field = |k: &str| {
        e[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {e}"))
            .to_owned()
    };
    vec![
        field("topic"),
        field("event_id"),
        field("timestamp").replacen('T', " ", 1),
        field("source"),
    ]
}

/// The recent events rows, top first: (position, for a row the live tail brought; cells).
fn event_rows(dom: &str) -> Vec<(Option<String>, Vec<String>)> {
    rows(&tbody(dom, "events"))
        .into_iter()
        .map(|(open, cells)| (attr(&open, "data-position"), cells))
        .collect()
}

/// Asserts that the recent events panel shows exactly `page` (`GET /events?limit=10`), in
/// its order, none of them from the live tail.
fn assert_events_shown(dom: &str, page: &Value) {
    let want: Vec<(Option<String>, Vec<String>)> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| (None, shown_event(e)))
        .collect();
    assert_eq!(want.len(), 10, "{page}");
    assert_eq!(
        event_rows(dom),
        want,
        "recent events vs GET /events?limit=10"
    );
}

/// Asserts that the stream out tile shows `outbox` of `/stats` exactly, or "off" with no
/// figures when it is null.
fn assert_outbox_shown(dom: &str, outbox: &Value) {
    let (figures, _) = element(dom, "outbox_figures");
    let (note, _) = element(dom, "outbox_note");
    if outbox.is_null() {
        assert_eq!(text_of(dom, "outbox_state"), "off");
        assert!(figures.contains(" hidden"), "figures shown: {figures}");
        assert!(!note.contains(" hidden"), "note hidden: {note}");
        return;
    }
    assert_eq!(text_of(dom, "outbox_state"), "on");
    assert!(!figures.contains(" hidden"), "figures hidden: {figures}");
    assert!(note.contains(" hidden"), "note shown: {note}");
    assert_eq!(
        text_of(dom, "outbox_stream"),
        outbox["stream"].as_str().expect("stream")
    );
    for field in ["published", "lag_rows"] {
        assert_eq!(
            text_of(dom, &format!("outbox_{field}")),
            int(outbox, field).to_string(),
            "#outbox_{field} vs /stats outbox {outbox}"
        );
    }
    let lag = outbox["lag_seconds"].as_f64().expect("lag_seconds");
    assert_eq!(text_of(dom, "outbox_lag_seconds"), format!("{lag:.1} s"));
}

/// Publishes events `<prefix>-<n>` for n in `range` (topic `telemetry.satellite.status`,
/// source `SAT-LIVE`), each acknowledged by the stream.
async fn publish_live(env: &TestEnv, prefix: &str, range: std::ops::RangeInclusive<u32>) {
    let js = env.jetstream().await;
    let topic = "telemetry.satellite.status";
    for n in range {
        let id = format!("{prefix}-{n}");
        publish_raw(
            &js,
            &format!("events.{topic}"),
            event_json(topic, &id, "SAT-LIVE"),
        )
        .await;
    }
}

/// The stored events of source `SAT-LIVE`, newest commit first, as the page shows events of
/// the live tail: (position `<xid>-<id>`, cells of the event as `GET /events` gives it).
async fn live_rows_newest_first(
    env: &TestEnv,
    agg: &Aggregator,
) -> Vec<(Option<String>, Vec<String>)> {
    let db = env.db().await;
    let order: Vec<(String, String)> = sqlx::query_as(
        "SELECT xid::text || '-' || id::text, event_id FROM events \
         WHERE source = 'SAT-LIVE' ORDER BY xid DESC, id DESC",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let (status, page) = agg.get("/events?source=SAT-LIVE&limit=100").await;
    assert_eq!(status, 200, "{page}");
    let items = page["events"].as_array().expect("events");
    assert_eq!(items.len(), order.len(), "{page}");
    order
        .into_iter()
        .map(|(position, event_id)| {
            let e = items
                .iter()
                .find(|e| e["event_id"] == event_id.as_str())
                .unwrap_or_else(|| panic!("{event_id} not in {page}"));
            (Some(position), shown_event(e))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// 3000 events (2100 unique, 5 topics) through an aggregator with `vars`.
async fn aggregator_with_events(env: &TestEnv, vars: &[(&str, &str)]) -> (Aggregator, Value) {
    let mut agg = Aggregator::spawn(env, vars).await;
    run_publisher(
        env,
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
    (agg, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium_shows_exact_stats() {
    let browser = chromium();
    eprintln!("dashboard test: using {}", browser.display());
    build_aggregator_with_current_page().await;

    let env = TestEnv::start().await;
    let (agg, stats) = aggregator_with_events(&env, &[]).await;
    assert!(stats["outbox"].is_null(), "the stream out is off: {stats}");

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
    assert!(
        !page.contains("new EventSource"),
        "the live tail is read with fetch(): EventSource cannot send the Authorization header"
    );

    // Headless Chromium runs the page's JavaScript; the DOM must show exactly /stats, the
    // stream out as off, and the 10 events of GET /events?limit=10.
    let (mut browser, tab, dom) = open_settled(&format!("{base}/")).await;
    let (_, health) = agg.health().await;
    let (_, recent) = agg.get("/events?limit=10").await;
    assert_dom_matches(&dom, &stats);
    assert_eq!(text_of(&dom, "received"), "3000");
    assert_eq!(text_of(&dom, "unique_processed"), "2100");
    assert_eq!(text_of(&dom, "duplicate_rate"), "30.0%");
    assert_eq!(text_of(&dom, "dead_lettered"), "0");
    assert_eq!(text_of(&dom, "status"), health["status"].as_str().unwrap());
    assert_eq!(text_of(&dom, "circuit_breaker"), "CLOSED");
    assert_eq!(text_of(&dom, "tail_state"), "live");
    assert_events_shown(&dom, &recent);
    assert_outbox_shown(&dom, &Value::Null);
    assert_eq!(text_of(&dom, "dead_letters_note"), "No dead letters.");

    // A screenshot for human eyes, once a second poll gave the chart a rate.
    browser
        .wait_for(
            &tab,
            "a second /stats poll",
            "document.getElementById('rate').textContent !== '\\u2013'",
            WAIT,
        )
        .await;
    let shot = workspace_root().join("target").join("dashboard.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    browser.screenshot(&tab, &shot).await;
    drop(browser);
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
    let (_, _, dom) = open_settled(&format!("{}/", secured.base_url())).await;
    assert_dom_matches(&dom, &secured.stats().await);
    assert_eq!(
        text_of(&dom, "dead_letters_note"),
        "dead letters: token required"
    );
    drop(secured);

    // With API_READ_TOKEN set, reads need it: opened as `/#token=<token>`, the page sends it
    // (the live tail too) and shows the exact stats; opened without it, the page says the
    // reads were refused, and the live tail as well.
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
    let (_, _, dom) = open_settled(&format!("{}/#token=r3ad", read_only.base_url())).await;
    assert_dom_matches(&dom, &stats);
    assert_eq!(text_of(&dom, "tail_state"), "live");
    let mut browser = Browser::launch(&chromium(), &[]).await;
    let tab = browser
        .open(&format!("{}/", read_only.base_url()), 1280, 900)
        .await;
    let dom = browser
        .wait_for(
            &tab,
            "the page shows its reads refused",
            "document.getElementById('error').textContent !== '' && \
             document.getElementById('tail_state').dataset.state === 'retrying'",
            WAIT,
        )
        .await;
    let banner = text_of(&dom, "error");
    assert!(banner.contains("/stats answered HTTP 401"), "{banner}");
    assert_eq!(text_of(&dom, "tail_state"), "unavailable (HTTP 401)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_the_live_tail_and_shows_the_stream_out() {
    build_aggregator_with_current_page().await;
    let env = TestEnv::start().await;
    let (mut agg, _) = aggregator_with_events(&env, &[("OUTPUT_SUBJECT_PREFIX", "unique")]).await;
    eventually(
        "the stream out caught up",
        Duration::from_secs(120),
        || async {
            let stats = agg.stats().await;
            stats["outbox"]["lag_rows"] == 0 && stats["outbox"]["published"] == 2100
        },
    )
    .await;
    let stats = agg.stats().await;
    assert_eq!(stats["outbox"]["stream"], "UNIQUE", "{stats}");
    assert_eq!(stats["outbox"]["lag_seconds"], 0.0, "{stats}");
    assert_eq!(
        stats["outbox"]["published"], stats["unique_processed"],
        "{stats}"
    );

    // Loaded: the exact stats, the stream out's figures, the 10 events of GET /events.
    let base = agg.base_url();
    let (mut browser, tab, dom) = open_settled(&format!("{base}/")).await;
    let (_, recent) = agg.get("/events?limit=10").await;
    assert_dom_matches(&dom, &stats);
    assert_outbox_shown(&dom, &stats["outbox"]);
    assert_eq!(text_of(&dom, "outbox_published"), "2100");
    assert_eq!(text_of(&dom, "outbox_lag_rows"), "0");
    assert_eq!(text_of(&dom, "outbox_lag_seconds"), "0.0 s");
    assert_events_shown(&dom, &recent);
    let first_fill = event_rows(&dom);
    // From now on (the tail open) the page must not read GET /events again: note the page's
    // clock, and keep every resource timing entry.
    let live_since = browser
        .eval(
            &tab,
            "performance.setResourceTimingBufferSize(100000), performance.now()",
        )
        .await
        .expect("performance.now()");

    // Four events stored while the page is open come through the live tail, newest on top,
    // each with its position; the panel keeps 10 rows.
    publish_live(&env, "live", 1..=4).await;
    let dom = browser
        .wait_for(
            &tab,
            "4 events of the live tail shown",
            "document.querySelectorAll('#events tr[data-position]').length >= 4",
            WAIT,
        )
        .await;
    let live = live_rows_newest_first(&env, &agg).await;
    assert_eq!(live.len(), 4);
    let mut want = live.clone();
    want.extend_from_slice(&first_fill[..6]);
    assert_eq!(
        event_rows(&dom),
        want,
        "live events on top of the first fill"
    );

    // The service restarts: the tail breaks, the page reconnects with Last-Event-ID and gets
    // exactly the events stored since the last one it had (three, published while the
    // service was down), none missed, none twice.
    agg.restart_no_wait();
    publish_live(&env, "live", 5..=7).await;
    agg.wait_ready().await;
    let dom = browser
        .wait_for(
            &tab,
            "7 events of the live tail shown",
            "document.querySelectorAll('#events tr[data-position]').length >= 7",
            WAIT,
        )
        .await;
    let live = live_rows_newest_first(&env, &agg).await;
    assert_eq!(live.len(), 7);
    let mut want = live.clone();
    want.extend_from_slice(&first_fill[..3]);
    assert_eq!(event_rows(&dom), want, "resumed after the restart");
    let dom = browser
        .wait_for(&tab, "the tail live again", SETTLED, WAIT)
        .await;
    assert_eq!(text_of(&dom, "tail_state"), "live");

    // The stream out published them too: the tile follows /stats.
    eventually(
        "the stream out caught up again",
        Duration::from_secs(120),
        || async {
            let stats = agg.stats().await;
            stats["outbox"]["lag_rows"] == 0 && stats["outbox"]["published"] == 2107
        },
    )
    .await;
    let stats = agg.stats().await;
    let dom = browser
        .wait_for(
            &tab,
            "the stream out tile at 2107",
            "document.getElementById('outbox_published').textContent === '2107'",
            WAIT,
        )
        .await;
    assert_outbox_shown(&dom, &stats["outbox"]);
    assert_eq!(event_rows(&dom).len(), 10);

    // The live tail alone kept the panel: no GET /events since it opened, through the new
    // events, the restart and the reconnection, while /stats was read (the tile above came
    // from a read after the restart).
    let requests_since = |path: &str| {
        format!(
            "performance.getEntriesByType('resource').filter(function (e) {{ \
                return new URL(e.name).pathname === '{path}' && e.startTime >= {live_since}; \
             }}).length"
        )
    };
    let events_reads = browser.eval(&tab, &requests_since("/events")).await;
    assert_eq!(events_reads, Ok(Value::from(0)), "GET /events while live");
    let stats_reads = browser.eval(&tab, &requests_since("/stats")).await;
    assert!(
        stats_reads.as_ref().is_ok_and(|n| n.as_u64() > Some(0)),
        "GET /stats while live: {stats_reads:?}"
    );

    // A screenshot for human eyes: the live tail's rows and the stream out tile.
    let shot = workspace_root().join("target").join("dashboard-live.png");
    let _ = std::fs::remove_file(&shot);
    browser.screenshot(&tab, &shot).await;
    println!("dashboard screenshot: {}", shot.display());
}
