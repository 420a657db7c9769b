//! The schedule: everything a run does, drawn from one seed before anything runs.
//!
//! [`Schedule::draw`] takes every random decision from one ChaCha8 generator seeded with the
//! seed, in a fixed order: the aggregator configuration (env vars passed to every replica),
//! the load plan (rates, topics, the invalid messages and the seeds of the load generators)
//! and the fault timeline: a list of `(offset from the start of the load, action)` steps.
//! The same seed always gives the same schedule, so a failing seed can be replayed; only the
//! timing of real processes differs between runs.
//!
//! Faults never overlap on one resource, so every injected fault is healed before the next
//! one on the same resource starts: Postgres faults (including the Postgres outage that puts
//! records in a WAL before it is damaged) never overlap each other, faults of one replica
//! never overlap each other, and at most one NATS node is down or paused at a time (the
//! cluster keeps its quorum).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The replicas' `MAX_PAYLOAD_BYTES` whenever a small `WAL_MAX_SIZE` is drawn.
pub const SMALL_WAL_MAX_PAYLOAD: u64 = 2048;
/// Per-record WAL overhead the product reserves: `WAL_MAX_SIZE >= BATCH_SIZE *
/// (MAX_PAYLOAD_BYTES + 49152)`.
pub const WAL_RECORD_OVERHEAD: u64 = 49_152;

/// Topic names the load uses (a prefix of a shuffled copy per seed).
const TOPICS: &[&str] = &[
    "telemetry.satellite.status",
    "telemetry.satellite.power",
    "comms.antenna.alert",
    "comms.link.quality",
    "ground.station.heartbeat",
    "payload.camera.frame",
    "orbit.position.update",
    "thermal.panel.reading",
];

/// How a WAL is damaged while its replica is SIGKILLed (only damage the product promises
/// to survive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalDamage {
    /// One byte inside one record's `rec` body flipped; the header stays intact.
    FlipByte,
    /// The last line of the newest segment cut short after its `"hcrc":"........"` field.
    CutLastLine,
    /// A torn partial line (a prefix of a real line, no newline) appended.
    TornAppend,
}

impl WalDamage {
    /// The fault-kind label of this damage.
    pub fn label(self) -> &'static str {
        match self {
            WalDamage::FlipByte => "wal_flip",
            WalDamage::CutLastLine => "wal_cut",
            WalDamage::TornAppend => "wal_torn",
        }
    }
}

/// One step of the fault timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL of the postmaster and every backend.
    PgKill,
    /// Clean (fast) shutdown.
    PgStop,
    /// Start after a kill or a stop.
    PgStart,
    /// SIGSTOP of the postmaster and every backend: connections hang.
    PgPause,
    /// SIGCONT after a pause.
    PgResume,
    /// SIGKILL of replica `r`.
    AggKill(usize),
    /// SIGTERM of replica `r` (it drains and exits).
    AggTerm(usize),
    /// Start replica `r` again (same HTTP port, same WAL directory).
    AggRestart(usize),
    /// SIGSTOP of replica `r`.
    AggPause(usize),
    /// SIGCONT of replica `r`.
    AggResume(usize),
    /// SIGKILL of NATS node `i`.
    NatsKill(usize),
    /// Start NATS node `i` again (same ports, same store).
    NatsRestart(usize),
    /// SIGSTOP of NATS node `i`.
    NatsPause(usize),
    /// SIGCONT of NATS node `i`.
    NatsResume(usize),
    /// Delete the durable consumer: the replicas re-create it and the stream is redelivered.
    ConsumerReset,
    /// Wait until replica `replica` holds WAL records (Postgres is down), SIGKILL it and
    /// damage its WAL; `pick` chooses the segment, line and byte deterministically.
    WalCrash {
        replica: usize,
        damage: WalDamage,
        pick: u64,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::PgKill => write!(f, "postgres SIGKILL"),
            Action::PgStop => write!(f, "postgres stop"),
            Action::PgStart => write!(f, "postgres start"),
            Action::PgPause => write!(f, "postgres SIGSTOP"),
            Action::PgResume => write!(f, "postgres SIGCONT"),
            Action::AggKill(r) => write!(f, "replica {r} SIGKILL"),
            Action::AggTerm(r) => write!(f, "replica {r} SIGTERM"),
            Action::AggRestart(r) => write!(f, "replica {r} restart"),
            Action::AggPause(r) => write!(f, "replica {r} SIGSTOP"),
            Action::AggResume(r) => write!(f, "replica {r} SIGCONT"),
            Action::NatsKill(i) => write!(f, "nats n{} SIGKILL", i + 1),
            Action::NatsRestart(i) => write!(f, "nats n{} restart", i + 1),
            Action::NatsPause(i) => write!(f, "nats n{} SIGSTOP", i + 1),
            Action::NatsResume(i) => write!(f, "nats n{} SIGCONT", i + 1),
            Action::ConsumerReset => write!(f, "delete consumer aggregator"),
            Action::WalCrash {
                replica,
                damage,
                pick,
            } => write!(
                f,
                "replica {replica} SIGKILL with WAL records, then {} (pick {pick:#x})",
                damage.label()
            ),
        }
    }
}

/// A timeline step: `action` runs `at` after the load starts (or as soon as the step before
/// it is done, if that took longer). `fault` labels the step that injects a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
    pub fault: Option<&'static str>,
}

/// An invalid message the load publishes raw (it must end as a dead letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKind {
    /// Bytes that are not JSON at all.
    NotJson,
    /// A valid event's JSON cut in half.
    TruncatedJson,
    /// An event without `event_id`.
    MissingEventId,
    /// A valid event whose body topic differs from its subject's topic.
    TopicMismatch,
    /// An event whose timestamp is not RFC 3339.
    BadTimestamp,
    /// An event whose payload is a string, not an object.
    PayloadNotObject,
}

const INVALID_KINDS: [InvalidKind; 6] = [
    InvalidKind::NotJson,
    InvalidKind::TruncatedJson,
    InvalidKind::MissingEventId,
    InvalidKind::TopicMismatch,
    InvalidKind::BadTimestamp,
    InvalidKind::PayloadNotObject,
];

/// One planned invalid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSend {
    pub at: Duration,
    pub kind: InvalidKind,
    /// Topic index of the subject.
    pub subject_topic: usize,
    /// Topic index of the body (differs from `subject_topic` for `TopicMismatch`).
    pub body_topic: usize,
}

/// What the load does.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadPlan {
    pub duration: Duration,
    pub topics: Vec<String>,
    /// Logical NATS sends per second.
    pub nats_rate: u32,
    /// HTTP requests per second.
    pub http_rps: u32,
    /// Events per HTTP request: 1..=this.
    pub http_max_batch: u32,
    /// Fraction of sends that re-send an earlier (topic, event_id) with a new message id.
    pub duplicate_rate: f64,
    pub invalid: Vec<InvalidSend>,
    /// Seeds of the NATS and HTTP generators (drawn from the schedule's generator).
    pub nats_seed: u64,
    pub http_seed: u64,
}

/// A complete schedule for one seed.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub seed: u64,
    pub replicas: usize,
    /// Env vars passed to every replica (besides NATS_URL and STREAM_REPLICAS).
    pub vars: Vec<(String, String)>,
    /// `MAX_PAYLOAD_BYTES` in effect (the product default unless a small WAL was drawn).
    pub max_payload_bytes: usize,
    pub load: LoadPlan,
    pub steps: Vec<Step>,
}

/// A duration as the aggregator parses it (`<n>ms`).
fn ms(d: u64) -> String {
    format!("{d}ms")
}

/// Log-uniform draw in `lo..=hi` (so short values come up as often as long ones).
fn log_uniform(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
    let x = rng.random_range(l..=h).exp().round() as u64;
    x.clamp(lo, hi)
}

fn secs_ms(rng: &mut ChaCha8Rng, lo_ms: u64, hi_ms: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo_ms..=hi_ms))
}

/// Occupied intervals of one resource (start, end), to keep faults on it from overlapping.
#[derive(Default)]
struct Lane(Vec<(Duration, Duration)>);

impl Lane {
    fn free(&self, from: Duration, to: Duration) -> bool {
        self.0.iter().all(|&(a, b)| to <= a || from >= b)
    }
    fn take(&mut self, from: Duration, to: Duration) {
        self.0.push((from, to));
    }
}

/// Fault kinds with their weights.
const FAULT_KINDS: &[(&str, u32)] = &[
    ("pg_kill", 2),
    ("pg_stop", 2),
    ("pg_pause", 2),
    ("agg_kill", 3),
    ("agg_pause", 2),
    ("agg_term", 2),
    ("nats_kill", 2),
    ("nats_pause", 2),
    ("consumer_reset", 2),
    ("wal_damage", 3),
];

/// Time a healed process needs to come back, kept free after each fault on its lane.
const MARGIN: Duration = Duration::from_secs(2);

impl Schedule {
    /// Draws the schedule of `seed`. Pure: the same seed gives the same schedule.
    pub fn draw(seed: u64) -> Schedule {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);

        // 1. Topology and aggregator configuration.
        let replicas = rng.random_range(2..=3usize);
        let workers = rng.random_range(1..=3u32);
        let small_wal = rng.random_bool(0.3);
        let batch_size: u64 = if small_wal {
            rng.random_range(10..=40)
        } else {
            rng.random_range(10..=500)
        };
        let compact = log_uniform(&mut rng, 100, 10_000);
        let ack_wait = rng.random_range(2_000..=30_000u64);
        let breaker = rng.random_range(1_000..=5_000u64);
        let health = rng.random_range(200..=1_000u64);
        let retry = rng.random_range(50..=200u64);
        let max_retries = rng.random_range(2..=5u32);
        let write_timeout = rng.random_range(1_000..=3_000u64);
        let mut vars: Vec<(String, String)> = vec![
            ("WORKERS".into(), workers.to_string()),
            ("BATCH_SIZE".into(), batch_size.to_string()),
            ("COMPACT_INTERVAL".into(), ms(compact)),
            ("ACK_WAIT".into(), ms(ack_wait)),
            ("CIRCUIT_BREAKER_TIMEOUT".into(), ms(breaker)),
            ("HEALTH_CHECK_INTERVAL".into(), ms(health)),
            ("RETRY_DELAY".into(), ms(retry)),
            ("MAX_RETRIES".into(), max_retries.to_string()),
            ("WRITE_TIMEOUT".into(), ms(write_timeout)),
        ];
        let mut max_payload_bytes = 65_536;
        if small_wal {
            let bound = batch_size * (SMALL_WAL_MAX_PAYLOAD + WAL_RECORD_OVERHEAD);
            let size = rng.random_range(bound..=2 * bound);
            vars.push((
                "MAX_PAYLOAD_BYTES".into(),
                SMALL_WAL_MAX_PAYLOAD.to_string(),
            ));
            vars.push(("WAL_MAX_SIZE".into(), size.to_string()));
            max_payload_bytes = SMALL_WAL_MAX_PAYLOAD as usize;
        }

        // 2. Load.
        let duration = secs_ms(&mut rng, 20_000, 40_000);
        let n_topics = rng.random_range(2..=6usize);
        let mut pool: Vec<&str> = TOPICS.to_vec();
        for i in (1..pool.len()).rev() {
            let j = rng.random_range(0..=i);
            pool.swap(i, j);
        }
        let topics: Vec<String> = pool[..n_topics].iter().map(|s| s.to_string()).collect();
        let nats_rate = rng.random_range(300..=1_000u32);
        let http_rps = rng.random_range(4..=15u32);
        let http_max_batch = rng.random_range(1..=20u32);
        let n_invalid = rng.random_range(3..=10usize);
        let mut invalid = Vec::with_capacity(n_invalid);
        for _ in 0..n_invalid {
            let at = Duration::from_millis(rng.random_range(0..duration.as_millis() as u64));
            let kind = INVALID_KINDS[rng.random_range(0..INVALID_KINDS.len())];
            let subject_topic = rng.random_range(0..n_topics);
            let body_topic = if kind == InvalidKind::TopicMismatch {
                (subject_topic + rng.random_range(1..n_topics)) % n_topics
            } else {
                subject_topic
            };
            invalid.push(InvalidSend {
                at,
                kind,
                subject_topic,
                body_topic,
            });
        }
        invalid.sort_by_key(|s| s.at);
        let nats_seed: u64 = rng.random();
        let http_seed: u64 = rng.random();
        let load = LoadPlan {
            duration,
            topics,
            nats_rate,
            http_rps,
            http_max_batch,
            duplicate_rate: 0.3,
            invalid,
            nats_seed,
            http_seed,
        };

        // 3. Faults.
        let steps = draw_faults(&mut rng, replicas, duration);

        Schedule {
            seed,
            replicas,
            vars,
            max_payload_bytes,
            load,
            steps,
        }
    }

    /// The fault kinds the schedule plans to inject, one entry per fault.
    pub fn planned_faults(&self) -> Vec<&'static str> {
        self.steps.iter().filter_map(|s| s.fault).collect()
    }
}

fn draw_faults(rng: &mut ChaCha8Rng, replicas: usize, load: Duration) -> Vec<Step> {
    let total_weight: u32 = FAULT_KINDS.iter().map(|(_, w)| w).sum();
    let n_faults = rng.random_range(2..=6usize);
    let mut pg = Lane::default();
    let mut nats = Lane::default();
    let mut aggs: Vec<Lane> = (0..replicas).map(|_| Lane::default()).collect();
    let mut steps = Vec::new();
    let step =
        |at: Duration, action: Action, fault: Option<&'static str>| Step { at, action, fault };
    let latest_start = load.saturating_sub(Duration::from_secs(2));
    for _ in 0..n_faults {
        // Draw the kind, then up to 20 placements until one fits its lanes.
        let mut w = rng.random_range(0..total_weight);
        let kind = FAULT_KINDS
            .iter()
            .find(|(_, weight)| {
                if w < *weight {
                    true
                } else {
                    w -= weight;
                    false
                }
            })
            .map_or("agg_kill", |(k, _)| *k);
        for _attempt in 0..20 {
            let start = secs_ms(rng, 1_000, latest_start.as_millis() as u64);
            let placed = match kind {
                "pg_kill" | "pg_stop" | "pg_pause" => {
                    let hold = if kind == "pg_pause" {
                        secs_ms(rng, 1_000, 12_000)
                    } else {
                        secs_ms(rng, 1_000, 8_000)
                    };
                    let end = start + hold;
                    if !pg.free(start, end + MARGIN) {
                        continue;
                    }
                    pg.take(start, end + MARGIN);
                    let (inject, heal) = match kind {
                        "pg_kill" => (Action::PgKill, Action::PgStart),
                        "pg_stop" => (Action::PgStop, Action::PgStart),
                        _ => (Action::PgPause, Action::PgResume),
                    };
                    steps.push(step(start, inject, Some(kind)));
                    steps.push(step(end, heal, None));
                    true
                }
                "agg_kill" | "agg_pause" | "agg_term" => {
                    let r = rng.random_range(0..replicas);
                    let hold = match kind {
                        "agg_kill" => secs_ms(rng, 500, 5_000),
                        "agg_pause" => secs_ms(rng, 1_000, 10_000),
                        _ => secs_ms(rng, 0, 3_000),
                    };
                    let end = start + hold;
                    if !aggs[r].free(start, end + MARGIN) {
                        continue;
                    }
                    aggs[r].take(start, end + MARGIN);
                    let (inject, heal) = match kind {
                        "agg_kill" => (Action::AggKill(r), Action::AggRestart(r)),
                        "agg_pause" => (Action::AggPause(r), Action::AggResume(r)),
                        _ => (Action::AggTerm(r), Action::AggRestart(r)),
                    };
                    steps.push(step(start, inject, Some(kind)));
                    steps.push(step(end, heal, None));
                    true
                }
                "nats_kill" | "nats_pause" => {
                    let i = rng.random_range(0..3usize);
                    let hold = if kind == "nats_kill" {
                        secs_ms(rng, 1_000, 8_000)
                    } else {
                        secs_ms(rng, 1_000, 6_000)
                    };
                    let end = start + hold;
                    if !nats.free(start, end + MARGIN) {
                        continue;
                    }
                    nats.take(start, end + MARGIN);
                    let (inject, heal) = if kind == "nats_kill" {
                        (Action::NatsKill(i), Action::NatsRestart(i))
                    } else {
                        (Action::NatsPause(i), Action::NatsResume(i))
                    };
                    steps.push(step(start, inject, Some(kind)));
                    steps.push(step(end, heal, None));
                    true
                }
                "consumer_reset" => {
                    steps.push(step(start, Action::ConsumerReset, Some(kind)));
                    true
                }
                _ => {
                    // wal_damage: a Postgres outage, replica r SIGKILLed once its WAL holds
                    // records, its WAL damaged, Postgres and the replica back (in a drawn order).
                    let r = rng.random_range(0..replicas);
                    let damage = match rng.random_range(0..3u32) {
                        0 => WalDamage::FlipByte,
                        1 => WalDamage::CutLastLine,
                        _ => WalDamage::TornAppend,
                    };
                    let pick: u64 = rng.random();
                    let kill_pg = rng.random_bool(0.5);
                    let lead = secs_ms(rng, 1_000, 3_000);
                    let after = secs_ms(rng, 500, 3_000);
                    let gap = secs_ms(rng, 0, 2_000);
                    let replica_first = rng.random_bool(0.3);
                    let crash = start + lead;
                    let first = crash + after;
                    let second = first + gap;
                    // The crash step waits for WAL records: keep extra room on the lanes.
                    let end = second + Duration::from_secs(8);
                    if !pg.free(start, end) || !aggs[r].free(start, end) {
                        continue;
                    }
                    pg.take(start, end);
                    aggs[r].take(start, end);
                    let outage = if kill_pg {
                        (Action::PgKill, "pg_kill")
                    } else {
                        (Action::PgStop, "pg_stop")
                    };
                    steps.push(step(start, outage.0, Some(outage.1)));
                    steps.push(step(
                        crash,
                        Action::WalCrash {
                            replica: r,
                            damage,
                            pick,
                        },
                        Some(damage.label()),
                    ));
                    let (a, b) = if replica_first {
                        (Action::AggRestart(r), Action::PgStart)
                    } else {
                        (Action::PgStart, Action::AggRestart(r))
                    };
                    steps.push(step(first, a, None));
                    steps.push(step(second, b, None));
                    true
                }
            };
            if placed {
                break;
            }
        }
    }
    // Stable: steps drawn at the same offset keep their drawing order (inject before heal).
    steps.sort_by_key(|s| s.at);
    steps
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vars: Vec<String> = self.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(f, "schedule seed={}:", self.seed)?;
        writeln!(
            f,
            "  topology: NATS cluster of 3 (stream R3), {} aggregator replicas",
            self.replicas
        )?;
        writeln!(f, "  config: {}", vars.join(" "))?;
        let l = &self.load;
        writeln!(
            f,
            "  load: {:.1}s, nats {}/s, http {} req/s x 1..={} events, {:.0}% duplicates, \
             {} invalid, topics {:?}",
            l.duration.as_secs_f64(),
            l.nats_rate,
            l.http_rps,
            l.http_max_batch,
            l.duplicate_rate * 100.0,
            l.invalid.len(),
            l.topics
        )?;
        for s in &l.invalid {
            writeln!(
                f,
                "    +{:>7.3}s invalid {:?} on {}",
                s.at.as_secs_f64(),
                s.kind,
                l.topics[s.subject_topic]
            )?;
        }
        let mut planned: BTreeMap<&str, u32> = BTreeMap::new();
        for kind in self.planned_faults() {
            *planned.entry(kind).or_default() += 1;
        }
        let planned: Vec<String> = planned.iter().map(|(k, n)| format!("{k}={n}")).collect();
        writeln!(
            f,
            "  faults ({} steps; planned: {}):",
            self.steps.len(),
            planned.join(" ")
        )?;
        for s in &self.steps {
            writeln!(f, "    +{:>7.3}s {}", s.at.as_secs_f64(), s.action)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule() {
        for seed in 0..50 {
            let a = Schedule::draw(seed);
            let b = Schedule::draw(seed);
            assert_eq!(a.to_string(), b.to_string());
            assert_eq!(a.steps, b.steps);
        }
        assert_ne!(Schedule::draw(1).to_string(), Schedule::draw(2).to_string());
    }

    #[test]
    fn small_wal_respects_the_bound_and_durations_are_positive() {
        for seed in 0..500 {
            let s = Schedule::draw(seed);
            let get = |k: &str| s.vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            if let Some(size) = get("WAL_MAX_SIZE") {
                let num = |v: Option<String>, what: &str| -> u64 {
                    v.and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| panic!("seed {seed}: {what} missing or not a number"))
                };
                let size = num(Some(size), "WAL_MAX_SIZE");
                let batch = num(get("BATCH_SIZE"), "BATCH_SIZE");
                let payload = num(get("MAX_PAYLOAD_BYTES"), "MAX_PAYLOAD_BYTES");
                assert!(
                    size >= batch * (payload + WAL_RECORD_OVERHEAD),
                    "seed {seed}"
                );
            }
            for (k, v) in &s.vars {
                if let Some(n) = v.strip_suffix("ms") {
                    assert!(
                        n.parse::<u64>().is_ok_and(|n| n > 0),
                        "seed {seed}: {k}={v}"
                    );
                }
            }
        }
    }

    #[test]
    fn faults_on_one_resource_never_overlap() {
        for seed in 0..500 {
            let s = Schedule::draw(seed);
            // Replaying the steps in order: a resource is never faulted twice before healing.
            let mut pg_down = false;
            let mut nats_down: Option<usize> = None;
            let mut agg_down = vec![false; s.replicas];
            for step in &s.steps {
                match &step.action {
                    Action::PgKill | Action::PgStop | Action::PgPause => {
                        assert!(!pg_down, "seed {seed}\n{s}");
                        pg_down = true;
                    }
                    Action::PgStart | Action::PgResume => pg_down = false,
                    Action::AggKill(r)
                    | Action::AggTerm(r)
                    | Action::AggPause(r)
                    | Action::WalCrash { replica: r, .. } => {
                        assert!(!agg_down[*r], "seed {seed}\n{s}");
                        agg_down[*r] = true;
                    }
                    Action::AggRestart(r) | Action::AggResume(r) => agg_down[*r] = false,
                    Action::NatsKill(i) | Action::NatsPause(i) => {
                        assert!(nats_down.is_none(), "seed {seed}\n{s}");
                        nats_down = Some(*i);
                    }
                    Action::NatsRestart(_) | Action::NatsResume(_) => nats_down = None,
                    Action::ConsumerReset => {}
                }
            }
            assert!(!pg_down && nats_down.is_none() && !agg_down.contains(&true));
        }
    }
}
