//! The end of a schedule: wait until the system has settled, establish the truth from the
//! stream itself, and check every invariant against it.
//!
//! Settled means: every replica's `/stats` answers, the durable consumer has nothing pending
//! and nothing awaiting an ack, every WAL is empty, every breaker CLOSED, and `received` has
//! stopped changing. The waits are safety nets only; nothing here asserts on timing.
//!
//! The truth is read back from the stream, every message from the first to the last sequence,
//! and each body is classified (valid event on its own subject, or invalid). The publishers'
//! bookkeeping is only used for invariant 4 (every acknowledged key is stored), because a
//! publish that timed out may or may not have been stored.
//!
//! Invariants (each violation names its number):
//! 1. `received` == valid stream messages, `dead_lettered` == invalid ones.
//! 2. `unique_processed` == distinct valid keys == rows in `events`, no key missing or extra.
//! 3. `received == unique_processed + duplicate_dropped`, per-topic figures sum to the
//!    totals and match the stream, every replica reports the same totals.
//! 4. Every acknowledged event (PubAck or 202) is in `events`.
//! 5. The processed record compacts: one row in `streams`, `floor_seq` == the stream's last
//!    sequence and nothing left in `processed_messages`.
//! 6. Every WAL is empty (`wal_record_count` 0 and no segment file holding records) and every
//!    breaker CLOSED.
//! 7. The stream out (on in every schedule): once its publisher has caught up, the output
//!    stream holds each row of `events` exactly once and nothing else, in commit order
//!    ([`stream_out`]).

use super::faults::{self, Topology};
use super::load::{self, Key, LoadOutcome};
use crate::downstream::{output_count, output_messages, stream_out_problems};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Safety net for settling.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(180);
/// Safety net for compaction to catch up once settled.
pub const COMPACTION_LIMIT: Duration = Duration::from_secs(60);

/// What the stream holds.
#[derive(Debug, Default)]
pub struct Truth {
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub valid: u64,
    pub invalid: u64,
    /// Valid messages per topic.
    pub received_by_topic: BTreeMap<String, u64>,
    /// Distinct valid keys.
    pub keys: HashSet<Key>,
    /// Messages whose classification disagrees with what the checker meant to send.
    pub surprises: Vec<String>,
    /// Per sequence: (subject, message id, valid), for diagnostics.
    pub by_seq: HashMap<u64, (String, String, bool)>,
    /// Stream sequences of each valid key, for diagnostics.
    pub seqs_of: HashMap<Key, Vec<u64>>,
}

impl Truth {
    /// `seq 123 (n-45 on events.a.b, valid)`, for reports.
    pub fn describe(&self, seq: u64) -> String {
        match self.by_seq.get(&seq) {
            Some((subject, id, valid)) => format!(
                "seq {seq} ({id} on {subject}, {})",
                if *valid { "valid" } else { "invalid" }
            ),
            None => format!("seq {seq} (not read)"),
        }
    }

    /// Up to `n` keys with the stream sequences carrying them, for reports.
    pub fn keys_with_seqs<'a>(&self, keys: impl IntoIterator<Item = &'a Key>, n: usize) -> String {
        let mut out: Vec<String> = Vec::new();
        for k in keys.into_iter().take(n) {
            let seqs = self.seqs_of.get(k).cloned().unwrap_or_default();
            out.push(format!("{}/{} at seq {seqs:?}", k.0, k.1));
        }
        out.join(", ")
    }
}

impl Truth {
    fn unique_by_topic(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for (topic, _) in &self.keys {
            *m.entry(topic.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// (num_pending, num_ack_pending) of the durable consumer.
async fn consumer_backlog(topo: &Topology) -> Result<(u64, u64), String> {
    let info = topo
        .cluster
        .js_request("$JS.API.CONSUMER.INFO.EVENTS.aggregator", &Value::Null)
        .await?;
    Ok((
        info["num_pending"].as_u64().unwrap_or(u64::MAX),
        info["num_ack_pending"].as_u64().unwrap_or(u64::MAX),
    ))
}

/// Waits until the system has settled (see the module docs). `Err` describes the last state
/// seen when the safety net ran out.
pub async fn settle(topo: &mut Topology) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last_received: Option<i64> = None;
    let mut stable = 0;
    loop {
        let mut state = Vec::new();
        let mut ok = true;
        let mut received = Vec::new();
        for (r, agg) in topo.aggs.iter_mut().enumerate() {
            if !agg.is_running() {
                ok = false;
                state.push(format!("replica {r} not running"));
                continue;
            }
            match agg.try_get("/stats").await {
                Some((200, s)) => received.push(s["received"].as_i64().unwrap_or(-1)),
                other => {
                    ok = false;
                    state.push(format!("replica {r} /stats: {other:?}"));
                }
            }
            match faults::health(agg).await {
                Some((0, b)) if b == "CLOSED" => {}
                other => {
                    ok = false;
                    state.push(format!("replica {r} (wal, breaker) = {other:?}"));
                }
            }
        }
        match consumer_backlog(topo).await {
            Ok((0, 0)) => {}
            Ok((p, a)) => {
                ok = false;
                state.push(format!("consumer num_pending={p} num_ack_pending={a}"));
            }
            Err(e) => {
                ok = false;
                state.push(format!("consumer info: {e}"));
            }
        }
        let same = received.windows(2).all(|w| w[0] == w[1]);
        if !same {
            ok = false;
            state.push(format!("replicas disagree on received: {received:?}"));
        }
        let now = received.first().copied();
        if ok && now.is_some() && now == last_received {
            stable += 1;
            if stable >= 3 {
                return Ok(started.elapsed());
            }
        } else {
            stable = 0;
        }
        last_received = now;
        if started.elapsed() >= SETTLE_LIMIT {
            state.push(format!("received {received:?}"));
            return Err(state.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads every message of stream EVENTS back and classifies it.
pub async fn read_stream(nats_urls: &str, max_payload_bytes: usize) -> Result<Truth, String> {
    let js = load::jetstream(nats_urls).await?;
    let mut stream = js
        .get_stream("EVENTS")
        .await
        .map_err(|e| format!("get stream EVENTS: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("stream info: {e}"))?;
    let (first_seq, last_seq, messages) = (
        info.state.first_sequence,
        info.state.last_sequence,
        info.state.messages,
    );
    let mut truth = Truth {
        first_seq,
        last_seq,
        messages,
        ..Truth::default()
    };
    if messages == 0 {
        return Ok(truth);
    }
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create a reading consumer: {e}"))?;
    let mut msgs = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await
        .map_err(|e| format!("read the stream: {e}"))?;
    let limits = shared::Limits { max_payload_bytes };
    let mut seen = HashSet::new();
    while (seen.len() as u64) < messages {
        let msg = match tokio::time::timeout(Duration::from_secs(30), msgs.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(format!("reading the stream: {e}")),
            Ok(None) => return Err("the reading consumer ended early".into()),
            Err(_) => {
                return Err(format!(
                    "reading the stream: nothing for 30 s after {} of {messages} messages",
                    seen.len()
                ))
            }
        };
        let seq = msg
            .info()
            .map_err(|e| format!("message without metadata: {e}"))?
            .stream_sequence;
        if seq > last_seq || !seen.insert(seq) {
            continue;
        }
        let msg_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let subject = msg.subject.as_str();
        let valid = shared::Event::from_json(&msg.payload, &limits)
            .ok()
            .filter(|e| shared::subject::topic_of("events", subject) == Some(e.topic()));
        let meant_valid = !msg_id.starts_with("bad-");
        let is_valid = valid.is_some();
        match valid {
            Some(event) => {
                truth.valid += 1;
                *truth
                    .received_by_topic
                    .entry(event.topic().to_owned())
                    .or_insert(0) += 1;
                let key = (event.topic().to_owned(), event.event_id().to_owned());
                truth.seqs_of.entry(key.clone()).or_default().push(seq);
                truth.keys.insert(key);
            }
            None => truth.invalid += 1,
        }
        truth
            .by_seq
            .insert(seq, (subject.to_owned(), msg_id.clone(), is_valid));
        if is_valid != meant_valid {
            truth.surprises.push(format!(
                "seq {seq} (msg id {msg_id:?}) was sent as {} but classifies as {}",
                if meant_valid { "valid" } else { "invalid" },
                if is_valid { "valid" } else { "invalid" }
            ));
        }
    }
    Ok(truth)
}

/// A replica's `/stats`, reduced to what the invariants compare.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Figures {
    received: i64,
    unique: i64,
    duplicates: i64,
    dead: i64,
    /// topic -> (received, unique, duplicates)
    topics: BTreeMap<String, (i64, i64, i64)>,
    wal: i64,
    breaker: String,
}

fn figures(s: &Value) -> Figures {
    let i = |v: &Value, k: &str| v[k].as_i64().unwrap_or(-1);
    let topics = s["topics"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    (
                        t["topic"].as_str().unwrap_or("?").to_owned(),
                        (
                            i(t, "received"),
                            i(t, "unique_processed"),
                            i(t, "duplicate_dropped"),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Figures {
        received: i(s, "received"),
        unique: i(s, "unique_processed"),
        duplicates: i(s, "duplicate_dropped"),
        dead: i(s, "dead_lettered"),
        topics,
        wal: i(s, "wal_record_count"),
        breaker: s["circuit_breaker"].as_str().unwrap_or("?").to_owned(),
    }
}

fn sample<T: std::fmt::Debug>(items: impl IntoIterator<Item = T>, n: usize) -> String {
    let v: Vec<T> = items.into_iter().take(n).collect();
    format!("{v:?}")
}

/// Checks every invariant; returns the violations (empty when all hold).
pub async fn check(topo: &mut Topology, truth: &Truth, load: &LoadOutcome) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in &truth.surprises {
        v.push(format!("[1] stream content: {s}"));
    }
    if truth.first_seq != 1 || truth.messages != truth.last_seq {
        v.push(format!(
            "[1] the stream is not gap-free: first_seq={} last_seq={} messages={}",
            truth.first_seq, truth.last_seq, truth.messages
        ));
    }

    // Replica figures.
    let mut all: Vec<(usize, Figures)> = Vec::new();
    for (r, agg) in topo.aggs.iter().enumerate() {
        match agg.try_get("/stats").await {
            Some((200, s)) => all.push((r, figures(&s))),
            other => v.push(format!("[3] replica {r} GET /stats: {other:?}")),
        }
    }
    if let Some((r0, f)) = all.first() {
        let r0 = *r0;
        if f.received != truth.valid as i64 {
            v.push(format!(
                "[1] received={} but the stream holds {} valid event messages (replica {r0}; \
                 {:+})",
                f.received,
                truth.valid,
                f.received - truth.valid as i64
            ));
        }
        if f.dead != truth.invalid as i64 {
            v.push(format!(
                "[1] dead_lettered={} but the stream holds {} invalid messages (replica {r0})",
                f.dead, truth.invalid
            ));
        }
        if f.unique != truth.keys.len() as i64 {
            v.push(format!(
                "[2] unique_processed={} but the stream holds {} distinct valid keys \
                 (replica {r0}; {:+})",
                f.unique,
                truth.keys.len(),
                f.unique - truth.keys.len() as i64
            ));
        }
        if f.received != f.unique + f.duplicates {
            v.push(format!(
                "[3] received={} != unique_processed={} + duplicate_dropped={} (replica {r0})",
                f.received, f.unique, f.duplicates
            ));
        }
        let sum = |k: fn(&(i64, i64, i64)) -> i64| f.topics.values().map(k).sum::<i64>();
        let (tr, tu, td) = (sum(|t| t.0), sum(|t| t.1), sum(|t| t.2));
        if (tr, tu, td) != (f.received, f.unique, f.duplicates) {
            v.push(format!(
                "[3] per-topic sums (received {tr}, unique {tu}, duplicates {td}) differ from \
                 the totals ({}, {}, {})",
                f.received, f.unique, f.duplicates
            ));
        }
        let unique_by_topic = truth.unique_by_topic();
        let topics: HashSet<&String> = f
            .topics
            .keys()
            .chain(truth.received_by_topic.keys())
            .collect();
        for t in topics {
            let got = f.topics.get(t).copied().unwrap_or((0, 0, 0));
            let want_r = truth.received_by_topic.get(t).copied().unwrap_or(0) as i64;
            let want_u = unique_by_topic.get(t).copied().unwrap_or(0) as i64;
            if got.0 != want_r || got.1 != want_u || got.0 != got.1 + got.2 {
                v.push(format!(
                    "[3] topic {t}: received {} unique {} duplicates {}, the stream says \
                     received {want_r} unique {want_u}",
                    got.0, got.1, got.2
                ));
            }
        }
        for (r, other) in all.iter().skip(1) {
            let strip =
                |x: &Figures| (x.received, x.unique, x.duplicates, x.dead, x.topics.clone());
            if strip(other) != strip(f) {
                v.push(format!(
                    "[3] replica {r} reports received={} unique={} dead={} but replica {r0} \
                     received={} unique={} dead={}",
                    other.received, other.unique, other.dead, f.received, f.unique, f.dead
                ));
            }
        }
    }
    for (r, f) in &all {
        if f.wal != 0 || f.breaker != "CLOSED" {
            v.push(format!(
                "[6] replica {r} /stats: wal_record_count={} circuit_breaker={}",
                f.wal, f.breaker
            ));
        }
    }
    for (r, agg) in topo.aggs.iter().enumerate() {
        match faults::health(agg).await {
            Some((0, b)) if b == "CLOSED" => {}
            other => v.push(format!("[6] replica {r} /health (wal, breaker): {other:?}")),
        }
        let mut holding = Vec::new();
        for seg in faults::segments(agg.wal_path()) {
            let lines = std::fs::read(&seg)
                .map(|b| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count())
                .unwrap_or(0);
            if lines > 0 {
                holding.push(format!(
                    "{} ({lines} lines)",
                    seg.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                ));
            }
        }
        if !holding.is_empty() {
            v.push(format!(
                "[6] replica {r} WAL directory still holds records: {}",
                holding.join(", ")
            ));
        }
    }

    // Postgres.
    let pool = topo.env.db().await;
    let rows: Result<Vec<(String, String)>, _> =
        sqlx::query_as("SELECT topic, event_id FROM events")
            .fetch_all(&pool)
            .await;
    match rows {
        Ok(rows) => {
            let n = rows.len();
            let stored: HashSet<Key> = rows.into_iter().collect();
            if stored.len() != n {
                v.push(format!(
                    "[2] events holds {} rows but {} distinct keys",
                    n,
                    stored.len()
                ));
            }
            if n != truth.keys.len() {
                v.push(format!(
                    "[2] events holds {n} rows but the stream {} distinct valid keys",
                    truth.keys.len()
                ));
            }
            let missing: Vec<&Key> = truth.keys.difference(&stored).collect();
            if !missing.is_empty() {
                v.push(format!(
                    "[2] {} keys of the stream are not in events, e.g. {}",
                    missing.len(),
                    truth.keys_with_seqs(missing.iter().copied(), 5)
                ));
            }
            let extra: Vec<&Key> = stored.difference(&truth.keys).collect();
            if !extra.is_empty() {
                v.push(format!(
                    "[2] {} rows of events are not in the stream, e.g. {}",
                    extra.len(),
                    sample(extra, 5)
                ));
            }
            let lost: Vec<&Key> = load.acked_keys.difference(&stored).collect();
            if !lost.is_empty() {
                let in_stream = lost.iter().filter(|k| truth.keys.contains(**k)).count();
                v.push(format!(
                    "[4] {} acknowledged events are not in events ({in_stream} of them are in \
                     the stream), e.g. {}",
                    lost.len(),
                    truth.keys_with_seqs(lost.iter().copied(), 5)
                ));
            }
        }
        Err(e) => v.push(format!("[2] SELECT FROM events: {e}")),
    }
    match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dead_letters")
        .fetch_one(&pool)
        .await
    {
        Ok(n) if n == truth.invalid as i64 => {}
        Ok(n) => v.push(format!(
            "[1] dead_letters holds {n} rows but the stream {} invalid messages",
            truth.invalid
        )),
        Err(e) => v.push(format!("[1] SELECT FROM dead_letters: {e}")),
    }
    if let Err(e) = compaction(&pool, truth.last_seq).await {
        v.push(format!("[5] {e}{}", gaps(&pool, truth).await));
    }
    pool.close().await;
    v
}

/// The first sequences above the floor missing from `processed_messages` (what stops
/// compaction), with what the stream holds there.
async fn gaps(pool: &sqlx::PgPool, truth: &Truth) -> String {
    let missing: Result<Vec<i64>, _> = sqlx::query_scalar(
        "SELECT g FROM streams s, generate_series(s.floor_seq + 1, $1) g
         WHERE NOT EXISTS (SELECT 1 FROM processed_messages p
                           WHERE p.stream_id = s.id AND p.stream_seq = g)
         ORDER BY g",
    )
    .bind(truth.last_seq as i64)
    .fetch_all(pool)
    .await;
    match missing {
        Ok(m) if m.is_empty() => String::new(),
        Ok(m) => format!(
            "; {} sequences above the floor have no processed record, first: {}",
            m.len(),
            m.iter()
                .take(8)
                .map(|s| truth.describe(*s as u64))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => format!("; gap query failed: {e}"),
    }
}

/// Waits (safety net [`COMPACTION_LIMIT`]) until the processed record is fully compacted.
async fn compaction(pool: &sqlx::PgPool, last_seq: u64) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let state = async {
            let streams: Vec<(i32, String, i64)> =
                sqlx::query_as("SELECT id, name, floor_seq FROM streams ORDER BY id")
                    .fetch_all(pool)
                    .await?;
            let per: Vec<(i32, i64, i64)> = sqlx::query_as(
                "SELECT p.stream_id,
                        count(*) FILTER (WHERE p.stream_seq <= s.floor_seq),
                        count(*) FILTER (WHERE p.stream_seq > s.floor_seq)
                 FROM processed_messages p JOIN streams s ON s.id = p.stream_id
                 GROUP BY p.stream_id",
            )
            .fetch_all(pool)
            .await?;
            Ok::<_, sqlx::Error>((streams, per))
        };
        let problem = match state.await {
            Ok((streams, per)) => {
                let by_id: HashMap<i32, (i64, i64)> =
                    per.into_iter().map(|(id, a, b)| (id, (a, b))).collect();
                let mut p = Vec::new();
                if streams.len() != 1 {
                    p.push(format!("{} rows in streams: {streams:?}", streams.len()));
                }
                for (id, name, floor) in &streams {
                    let (below, above) = by_id.get(id).copied().unwrap_or((0, 0));
                    if *floor != last_seq as i64 || below != 0 || above != 0 {
                        p.push(format!(
                            "stream {id} ({name}): floor_seq={floor}, stream last_seq={last_seq}, \
                             processed_messages at/below the floor={below}, above it={above}"
                        ));
                    }
                }
                p.join("; ")
            }
            Err(e) => format!("querying the processed record: {e}"),
        };
        if problem.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= COMPACTION_LIMIT {
            return Err(format!(
                "not compacted after {}s: {problem}",
                COMPACTION_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The output stream every schedule's replicas publish to (`OUTPUT_SUBJECT_PREFIX`).
pub const OUTPUT_STREAM: &str = "UNIQUE";
pub const OUTPUT_PREFIX: &str = "unique";

/// Safety net for the stream out to catch up once everything else has settled.
const STREAM_OUT_LIMIT: Duration = Duration::from_secs(120);

/// Invariant 7: waits until the output stream holds as many messages as `events` has rows
/// and a replica reports no lag, then checks every message against `events`.
pub async fn stream_out(topo: &Topology, nats_urls: &str) -> Vec<String> {
    let js = match load::jetstream(nats_urls).await {
        Ok(js) => js,
        Err(e) => return vec![format!("[7] cannot connect to read the output stream: {e}")],
    };
    let pool = topo.env.db().await;
    let stored: Vec<(String, String)> = match sqlx::query_as("SELECT topic, event_id FROM events")
        .fetch_all(&pool)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return vec![format!("[7] SELECT FROM events: {e}")],
    };
    pool.close().await;
    let started = Instant::now();
    loop {
        let held = output_count(&js, OUTPUT_STREAM).await;
        let mut lag = None;
        for agg in &topo.aggs {
            if let Some((200, s)) = agg.try_get("/stats").await {
                lag = s["outbox"]["lag_rows"].as_i64();
                break;
            }
        }
        if (held == stored.len() as u64 && lag == Some(0)) || held > stored.len() as u64 {
            break;
        }
        if started.elapsed() >= STREAM_OUT_LIMIT {
            return vec![format!(
                "[7] the stream out did not catch up within {}s: the output stream holds {held} \
                 messages for {} stored events, lag_rows {lag:?}",
                STREAM_OUT_LIMIT.as_secs(),
                stored.len()
            )];
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let messages = output_messages(&js, OUTPUT_STREAM).await;
    stream_out_problems(&messages, &stored, OUTPUT_PREFIX)
        .into_iter()
        .map(|p| format!("[7] {p}"))
        .collect()
}
