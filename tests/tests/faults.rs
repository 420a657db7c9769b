//! Fault tolerance: Postgres killed, stopped and hung for real, the aggregator SIGKILLed with
//! records in its WAL, a damaged WAL, and a WAL too small for the outage. Every scenario ends
//! with exact counts and rows, the breaker CLOSED and the WAL empty.

use integration_tests::{
    eventually, int, publish_in_background, run_publisher, wait_compacted, Aggregator, TestEnv,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Outages play out in seconds.
const FAST: &[(&str, &str)] = integration_tests::FAST_FAULTS;

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = FAST.to_vec();
    v.extend_from_slice(extra);
    v
}

/// `(wal_record_count, circuit_breaker, status code)` from /health.
async fn guard_state(agg: &Aggregator) -> (i64, String, u16) {
    let (code, h) = agg.health().await;
    (
        h["wal_record_count"].as_i64().unwrap_or(-1),
        h["circuit_breaker"].as_str().unwrap_or("?").to_owned(),
        code,
    )
}

/// Waits for every event to be counted, the WAL to drain and the breaker to close, then
/// checks the exact figures against the database.
async fn assert_settled(env: &TestEnv, agg: &mut Aggregator, received: i64, unique: i64) {
    agg.wait_until_received(received).await;
    eventually(
        "WAL empty, breaker CLOSED, healthy",
        Duration::from_secs(90),
        || async { guard_state(agg).await == (0, "CLOSED".to_owned(), 200) },
    )
    .await;
    let stats = agg.stats().await;
    assert_eq!(int(&stats, "received"), received, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), unique, "{stats}");
    assert_eq!(
        int(&stats, "duplicate_dropped"),
        received - unique,
        "{stats}"
    );
    assert_eq!(int(&stats, "wal_record_count"), 0);
    assert_eq!(stats["circuit_breaker"], "CLOSED");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&env.db().await)
        .await
        .unwrap();
    assert_eq!(rows, unique);
}

/// Stops Postgres, publishes `count` events (`dup` duplicate rate, `seed`) and waits until
/// all of them are in the aggregator's WAL.
async fn outage_into_wal(env: &mut TestEnv, agg: &Aggregator, count: u32, dup: &str, seed: u32) {
    env.pg.stop();
    let summary = run_publisher(
        env,
        &[
            "--count",
            &count.to_string(),
            "--duplicate-rate",
            dup,
            "--seed",
            &seed.to_string(),
        ],
    )
    .await;
    assert_eq!(int(&summary, "published"), i64::from(count), "{summary}");
    eventually(
        &format!("all {count} in the WAL"),
        Duration::from_secs(60),
        || async { guard_state(agg).await.0 == i64::from(count) },
    )
    .await;
}

/// Damaged WAL records fetched again from the stream, and lost for good.
async fn assert_wal_salvage(agg: &Aggregator, recovered: f64, lost: f64) {
    let got = (
        agg.metric("aggregator_wal_recovered_from_stream_total")
            .await,
        agg.metric("aggregator_wal_unrecoverable_records_total")
            .await,
    );
    assert_eq!(got, (recovered, lost), "(recovered, unrecoverable)");
}

async fn wait_breaker(agg: &Aggregator, state: &str) {
    eventually(
        &format!("breaker {state}"),
        Duration::from_secs(60),
        || async { guard_state(agg).await.1 == state },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_for_ten_seconds_under_load_loses_nothing() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &with(&[])).await;
    let publisher = publish_in_background(&env.nats_url(), 20_000, 1_000, 21);
    agg.wait_received_at_least(2_000).await;

    env.pg.kill();
    eventually(
        "WAL in use during the outage",
        Duration::from_secs(30),
        || async { guard_state(&agg).await.0 > 0 },
    )
    .await;
    let (code, health) = agg.health().await;
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["database_status"], "down");
    tokio::time::sleep(Duration::from_secs(10)).await;
    env.pg.start().await;

    let summary = publisher.await.unwrap();
    assert_eq!(int(&summary, "published"), 20_000);
    assert_eq!(int(&summary, "unique"), 14_000);
    assert_settled(&env, &mut agg, 20_000, 14_000).await;
    assert!(agg.metric("aggregator_wal_appended_records_total").await > 0.0);
    assert_eq!(
        agg.metric("aggregator_wal_appended_records_total").await,
        agg.metric("aggregator_wal_replayed_records_total").await,
        "everything logged was replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_longer_than_the_breaker_timeout_loses_nothing() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &with(&[])).await;
    let publisher = publish_in_background(&env.nats_url(), 10_000, 1_000, 22);
    agg.wait_received_at_least(1_000).await;

    env.pg.stop();
    wait_breaker(&agg, "OPEN").await;
    // Longer than CIRCUIT_BREAKER_TIMEOUT: the half-open probe fails and the breaker reopens.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (wal_records, breaker, code) = guard_state(&agg).await;
    assert!(wal_records > 0);
    assert_ne!(breaker, "CLOSED");
    assert_eq!(code, 503);
    assert!(
        agg.metric("aggregator_circuit_breaker_transitions_total")
            .await
            >= 3.0
    );
    env.pg.start().await;

    let summary = publisher.await.unwrap();
    assert_eq!(int(&summary, "published"), 10_000);
    assert_settled(&env, &mut agg, 10_000, 7_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_postgres_connections_lose_nothing() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &with(&[])).await;
    let publisher = publish_in_background(&env.nats_url(), 10_000, 1_000, 23);
    agg.wait_received_at_least(1_000).await;

    // Connections hang instead of being refused.
    env.pg.pause();
    eventually(
        "WAL in use while Postgres hangs",
        Duration::from_secs(60),
        || async { guard_state(&agg).await.0 > 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    env.pg.resume();

    let summary = publisher.await.unwrap();
    assert_eq!(int(&summary, "published"), 10_000);
    assert_settled(&env, &mut agg, 10_000, 7_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_killed_while_the_wal_holds_records_replays_after_restart() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &with(&[])).await;
    outage_into_wal(&mut env, &agg, 3000, "0.3", 24).await;
    // Every message is acknowledged (it is durable in the WAL): the stream has nothing
    // pending for the consumer.
    let js = env.jetstream().await;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("aggregator", "EVENTS")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));

    agg.kill();
    env.pg.start().await;
    agg.restart().await;
    assert_settled(&env, &mut agg, 3000, 2100).await;
    assert_eq!(
        agg.metric("aggregator_wal_replayed_records_total").await,
        3000.0
    );
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.starts_with("wal-") && name.ends_with(".jsonl")
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_and_flipped_byte_in_the_wal_lose_nothing() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &with(&[])).await;
    outage_into_wal(&mut env, &agg, 2000, "0.3", 25).await;
    agg.kill();

    let segs = segments(agg.wal_path());
    assert!(!segs.is_empty());
    // A flipped byte inside one record's body, in the middle of the first segment.
    let first = &segs[0];
    let text = std::fs::read_to_string(first).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 20, "expected a populated segment");
    let target = lines.len() / 2;
    let damaged = lines[target].replacen("\"source\":\"SAT-", "\"source\":\"SAX-", 1);
    assert_ne!(damaged, lines[target]);
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        out.push_str(if i == target { &damaged } else { l });
        out.push('\n');
    }
    std::fs::write(first, out).unwrap();
    // A torn tail: an append interrupted half-way (never acknowledged).
    let last = segs.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(br#"{"crc":"00000000","sid":1,"seq":999999,"hcrc":"0000"#);
    std::fs::write(last, bytes).unwrap();

    env.pg.start().await;
    agg.restart().await;
    assert_settled(&env, &mut agg, 2000, 1400).await;
    assert_wal_salvage(&agg, 1.0, 0.0).await;
    assert!(agg.metric("aggregator_wal_truncated_bytes_total").await > 0.0);
    // The damaged line is kept for inspection.
    let quarantine = std::fs::read_to_string(agg.wal_path().join("quarantine.jsonl")).unwrap();
    assert!(quarantine.contains("SAX-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_wal_applies_backpressure_instead_of_dropping() {
    let mut env = TestEnv::start().await;
    // Room for a hundred-odd records only: the smallest WAL that holds one batch of one record
    // of at most 1 KiB (WAL_MAX_SIZE is checked against BATCH_SIZE x MAX_PAYLOAD_BYTES).
    let mut agg = Aggregator::spawn(
        &env,
        &with(&[
            ("WAL_MAX_SIZE", "60000"),
            ("BATCH_SIZE", "1"),
            ("MAX_PAYLOAD_BYTES", "1024"),
        ]),
    )
    .await;
    env.pg.stop();
    let summary = run_publisher(
        &env,
        &["--count", "3000", "--duplicate-rate", "0.3", "--seed", "26"],
    )
    .await;
    assert_eq!(int(&summary, "published"), 3000);
    eventually("WAL full", Duration::from_secs(60), || async {
        agg.metric("aggregator_wal_full_total").await > 0.0
    })
    .await;
    // The aggregator stopped acknowledging: JetStream still holds most of the messages.
    let (wal_records, _, _) = guard_state(&agg).await;
    assert!(wal_records < 3000, "{wal_records}");
    let js = env.jetstream().await;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("aggregator", "EVENTS")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.num_pending + info.num_ack_pending as u64 + wal_records as u64,
        3000,
        "every message is either in the WAL or still held by JetStream: {info:?}"
    );

    env.pg.start().await;
    assert_settled(&env, &mut agg, 3000, 2100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_aggregator_on_the_same_wal_path_refuses_to_start() {
    let env = TestEnv::start().await;
    let mut first = Aggregator::spawn(&env, &with(&[])).await;
    let wal = first.wal_path().to_string_lossy().into_owned();
    // A copy-pasted configuration: the same WAL directory for a second replica.
    let mut vars: Vec<(&str, &str)> = FAST.to_vec();
    vars.push(("WAL_PATH", &wal));
    let mut second = Aggregator::spawn_no_wait(&env, &vars).await;
    let status = second.wait_exit().await;
    assert!(
        !status.success(),
        "the second one must not run\n{}",
        second.log_tail()
    );
    let log = second.log_tail();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("WAL_PATH") && errors[0].contains(&wal),
        "{log}"
    );
    // The first one is untouched.
    run_publisher(
        &env,
        &["--count", "200", "--duplicate-rate", "0", "--seed", "41"],
    )
    .await;
    assert_settled(&env, &mut first, 200, 200).await;
}

/// Flips one byte inside the body of line `line` (1-based) of `path`, in place (the process
/// appending to it keeps its file descriptor).
fn flip_body_byte(path: &Path, line: usize) {
    use std::os::unix::fs::FileExt;
    let bytes = std::fs::read(path).unwrap();
    let start: usize = bytes
        .split(|&b| b == b'\n')
        .take(line - 1)
        .map(|l| l.len() + 1)
        .sum();
    let end = start + bytes[start..].iter().position(|&b| b == b'\n').unwrap();
    let at = start
        + bytes[start..end]
            .windows(5)
            .position(|w| w == b"SAT-0")
            .expect("a source in the body")
        + 2;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_at(&[bytes[at] ^ 0x01], at as u64).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_wal_record_waits_while_the_stream_cannot_be_asked() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &with(&[])).await;
    outage_into_wal(&mut env, &agg, 2000, "0.3", 42).await;
    let segs = segments(agg.wal_path());
    flip_body_byte(&segs[0], 1000);

    // The database is back, but the stream does not answer: the damaged record must not be
    // given up (nor its line dropped) because of that.
    env.nats.pause();
    env.pg.start().await;
    let log = agg.log_path().to_path_buf();
    eventually(
        "a replay met the damaged record",
        Duration::from_secs(60),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("the segment waits") || text.contains("could not be recovered")
        },
    )
    .await;
    env.nats.resume();

    assert_settled(&env, &mut agg, 2000, 1400).await;
    assert_wal_salvage(&agg, 1.0, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_records_of_a_stream_the_database_does_not_know_keep_the_wal() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &with(&[])).await;
    outage_into_wal(&mut env, &agg, 500, "0", 43).await;
    agg.kill();

    // The WAL now meets another database (a restored or a wrong one), which has never seen
    // the stream incarnation its records belong to (the stream was re-created meanwhile).
    env.jetstream().await.delete_stream("EVENTS").await.unwrap();
    env.pg.start().await;
    let admin = env.pg.pool("postgres").await;
    sqlx::query("DROP DATABASE aggregator")
        .execute(&admin)
        .await
        .unwrap();
    agg.restart().await;
    eventually(
        "the replay refused, loudly",
        Duration::from_secs(60),
        || async { agg.metric("aggregator_wal_replay_refused_total").await >= 1.0 },
    )
    .await;
    assert!(
        agg.log_tail().contains("does not know"),
        "{}",
        agg.log_tail()
    );

    // The records are kept, not counted against the new incarnation (whose own sequences
    // restart at 1 and must all count).
    run_publisher(
        &env,
        &["--count", "100", "--duplicate-rate", "0", "--seed", "44"],
    )
    .await;
    let stats = agg.wait_until_received(100).await;
    assert_eq!(int(&stats, "received"), 100, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), 100, "{stats}");
    assert_eq!(guard_state(&agg).await.0, 500, "the WAL keeps its records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_postgres_could_not_store_as_sent_does_not_stop_the_pipeline() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &with(&[])).await;
    let js = env.jetstream().await;
    // A subject carrying NUL, which a Postgres text column refuses; its body is no event.
    integration_tests::publish_raw(&js, "events.bad\0subject", bytes::Bytes::from_static(b"{}"))
        .await;
    run_publisher(
        &env,
        &["--count", "300", "--duplicate-rate", "0", "--seed", "45"],
    )
    .await;
    eventually(
        "the dead letter recorded",
        Duration::from_secs(60),
        || async { matches!(agg.get("/stats").await, (200, s) if s["dead_lettered"] == 1) },
    )
    .await;
    assert_settled(&env, &mut agg, 300, 300).await;
    let subject: String = sqlx::query_scalar("SELECT subject FROM dead_letters")
        .fetch_one(&env.db().await)
        .await
        .unwrap();
    assert!(subject.starts_with("events.bad"), "{subject:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_gone_from_the_stream_do_not_stop_compaction() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &with(&[("COMPACT_INTERVAL", "200ms")])).await;
    assert!(agg.terminate().await.success());
    run_publisher(
        &env,
        &["--count", "100", "--duplicate-rate", "0", "--seed", "46"],
    )
    .await;
    // Before the aggregator sees them: the first 20 purged, two in the middle deleted.
    let client = env.nats.connect().await;
    let api = integration_tests::cluster::js_api;
    api(
        &client,
        "$JS.API.STREAM.PURGE.EVENTS",
        &serde_json::json!({"seq": 21}),
    )
    .await
    .unwrap();
    for seq in [50, 70] {
        api(
            &client,
            "$JS.API.STREAM.MSG.DELETE.EVENTS",
            &serde_json::json!({"seq": seq}),
        )
        .await
        .unwrap();
    }
    agg.restart().await;
    let stats = agg.wait_until_received(78).await;
    assert_eq!(int(&stats, "received"), 78, "{stats}");
    // The floor passes the gaps, to the end of the stream.
    wait_compacted(&env.db().await, 100).await;
    assert_eq!(int(&agg.stats().await, "received"), 78);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_gets_every_attempt_of_the_schedule_even_after_the_breaker_opens() {
    let mut env = TestEnv::start().await;
    // Five attempts; the breaker opens at the third failure.
    let mut agg = Aggregator::spawn(
        &env,
        &with(&[
            ("MAX_RETRIES", "5"),
            ("CIRCUIT_BREAKER_THRESHOLD", "3"),
            ("WORKERS", "1"),
        ]),
    )
    .await;
    outage_into_wal(&mut env, &agg, 1, "0", 47).await;
    // One batch, five failed attempts before the WAL: the first and four retries, and one
    // failure (the batch that went to the WAL).
    assert_eq!(
        (
            agg.metric("aggregator_batch_retries_total").await,
            agg.metric("aggregator_batch_failures_total").await,
        ),
        (4.0, 1.0),
        "(retries, failures)"
    );
    // The breaker opened at the third failure and cannot close while Postgres is down (the
    // replayer's probe may be making it half-open right now): one series per state, exactly
    // one of them 1, and not `closed`.
    let series = breaker_series(&agg).await;
    let states: Vec<&str> = series.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(states, ["closed", "half_open", "open"], "{series:?}");
    assert_eq!(
        series.iter().map(|(_, v)| v).sum::<f64>(),
        1.0,
        "{series:?}"
    );
    assert_eq!(
        series[0].1, 0.0,
        "closed while Postgres is down: {series:?}"
    );
    env.pg.start().await;
    assert_settled(&env, &mut agg, 1, 1).await;
}

/// `aggregator_circuit_breaker_state{state}` as `(state, value)`, sorted by state.
async fn breaker_series(agg: &Aggregator) -> Vec<(String, f64)> {
    let text = agg.metrics_text().await;
    let mut series: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("aggregator_circuit_breaker_state{state=\"")?;
            let (state, value) = rest.split_once("\"} ")?;
            Some((state.to_owned(), value.trim().parse().ok()?))
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    series
}

/// `(from, to, when)` of every breaker transition in a JSON log.
fn breaker_transitions(log: &Path) -> Vec<(String, String, chrono::DateTime<chrono::Utc>)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "circuit breaker")
        .map(|v| {
            let when = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc);
            let s = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
            (s("from"), s("to"), when)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_closes_only_through_its_probe_after_the_timeout() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(
        &env,
        &with(&[("CIRCUIT_BREAKER_TIMEOUT", "4s"), ("LOG_FORMAT", "json")]),
    )
    .await;
    env.pg.stop();
    run_publisher(
        &env,
        &["--count", "200", "--duplicate-rate", "0", "--seed", "48"],
    )
    .await;
    wait_breaker(&agg, "OPEN").await;
    // The database is back at once; the WAL is replayed through the breaker all the same.
    env.pg.start().await;
    assert_settled(&env, &mut agg, 200, 200).await;

    let transitions = breaker_transitions(agg.log_path());
    let path: Vec<(&str, &str)> = transitions
        .iter()
        .map(|(f, t, _)| (f.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        path,
        [
            ("CLOSED", "OPEN"),
            ("OPEN", "HALF_OPEN"),
            ("HALF_OPEN", "CLOSED")
        ],
        "{transitions:?}"
    );
    // The product's own clock: the probe came no earlier than CIRCUIT_BREAKER_TIMEOUT.
    let open_for = transitions[1].2 - transitions[0].2;
    assert!(
        open_for >= chrono::Duration::milliseconds(4000 - 20),
        "half-open {open_for} after opening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hung_while_messages_wait_past_ack_wait_counts_each_message_once() {
    let mut env = TestEnv::start().await;
    // Messages held by a hung write are redelivered after ACK_WAIT and logged to the WAL a
    // second time: each must still count once.
    let mut agg =
        Aggregator::spawn(&env, &with(&[("ACK_WAIT", "1s"), ("WRITE_TIMEOUT", "3s")])).await;
    let publisher = publish_in_background(&env.nats_url(), 6_000, 1_000, 49);
    agg.wait_received_at_least(1_000).await;
    env.pg.pause();
    tokio::time::sleep(Duration::from_secs(12)).await;
    env.pg.resume();
    let summary = publisher.await.unwrap();
    assert_eq!(int(&summary, "published"), 6_000);
    let unique = int(&summary, "unique");
    assert_settled(&env, &mut agg, 6_000, unique).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_with_nothing_left_to_replay_still_closes_after_its_timeout() {
    let mut env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(
        &env,
        &[
            ("WORKERS", "1"),
            ("MAX_RETRIES", "5"),
            ("RETRY_DELAY", "500ms"),
            ("WRITE_TIMEOUT", "1s"),
            ("CIRCUIT_BREAKER_THRESHOLD", "2"),
            ("CIRCUIT_BREAKER_TIMEOUT", "2s"),
            ("HEALTH_CHECK_INTERVAL", "300ms"),
        ],
    )
    .await;
    // A hung database: the batch's attempts time out and open the breaker...
    env.pg.pause();
    run_publisher(
        &env,
        &["--count", "1", "--duplicate-rate", "0", "--seed", "51"],
    )
    .await;
    wait_breaker(&agg, "OPEN").await;
    // ...then a later attempt of the same batch commits while it is OPEN, and nothing else
    // comes: no batch, no WAL record. The health check must be the probe.
    env.pg.resume();
    assert_settled(&env, &mut agg, 1, 1).await;
    assert_eq!(
        agg.metric("aggregator_wal_appended_records_total").await,
        0.0,
        "the batch committed on a retry, never went to the WAL"
    );
}

/// A segment whose replay stops part-way (one chunk's write times out after earlier chunks
/// committed) is written again in full later. Its records are counted as replayed once, not
/// once per attempt: before the fix, `aggregator_wal_replayed_records_total` grew by every
/// committed chunk, so it ended above `aggregator_wal_appended_records_total` (seen as
/// 28,787 replayed for 16,369 appended in a loaded run of the Postgres-kill test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_replayed_again_after_a_failed_chunk_counts_its_records_once() {
    let mut env = TestEnv::start().await;
    // One lane, chunks of 100: the replay's insert statements come in a known order.
    let mut agg =
        Aggregator::spawn(&env, &with(&[("WORKERS", "1"), ("REPLAY_BATCH", "100")])).await;
    // The third insert into `events` from now on hangs past WRITE_TIMEOUT (2s), once: a
    // sequence, because the timed-out transaction's own changes are rolled back.
    sqlx::raw_sql(
        "CREATE SEQUENCE it_insert_statements;
         CREATE FUNCTION it_slow_third_insert() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('it_insert_statements') = 3 THEN PERFORM pg_sleep(3); END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER it_slow_third_insert BEFORE INSERT ON events
           FOR EACH STATEMENT EXECUTE FUNCTION it_slow_third_insert();",
    )
    .execute(&env.db().await)
    .await
    .unwrap();

    outage_into_wal(&mut env, &agg, 1000, "0", 31).await;
    env.pg.start().await;
    assert_settled(&env, &mut agg, 1000, 1000).await;

    let log = std::fs::read_to_string(agg.log_path()).unwrap();
    assert!(
        log.contains("WAL replay write failed; will retry"),
        "the third chunk's write did not fail: the test proves nothing\n{}",
        agg.log_tail()
    );
    assert_eq!(
        agg.metric("aggregator_wal_appended_records_total").await,
        1000.0
    );
    assert_eq!(
        agg.metric("aggregator_wal_replayed_records_total").await,
        1000.0
    );
}
