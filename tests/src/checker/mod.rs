//! A seeded fault-schedule checker (Jepsen/FoundationDB style): from a `u64` seed it draws a
//! schedule mixing load with faults ([`schedule`]), runs it against real processes (a 3-node
//! NATS cluster with an R3 stream, Postgres, 2-3 aggregator replicas; [`load`] and
//! [`faults`]), heals everything, and checks every invariant at the end ([`invariants`]).
//!
//! [`run_seed`] runs one schedule and never panics: a panic inside (the harness gives up on
//! a process, say) is reported as a failed schedule with its seed. A failing seed replays the
//! same schedule with `CHECKER_SEED=<n>` (test `seeded_fault_schedules_keep_every_invariant`)
//! or `fault-checker --seed <n>`.

pub mod faults;
pub mod invariants;
pub mod load;
pub mod schedule;

use crate::{Aggregator, NatsCluster, TestEnv};
use faults::{FaultRun, Topology};
use schedule::Schedule;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The result of one schedule.
#[derive(Debug, Default)]
pub struct Outcome {
    pub seed: u64,
    pub replicas: usize,
    /// Violated invariants (and product problems seen while injecting faults).
    pub violations: Vec<String>,
    pub faults: BTreeMap<String, u64>,
    /// Acknowledged logical NATS sends / events in HTTP 202s / invalid messages.
    pub nats_published: u64,
    pub http_published: u64,
    pub invalid_published: u64,
    pub stream_msgs: u64,
    pub elapsed: Duration,
    /// The full report printed for a failure: schedule, executed timeline, log tails.
    pub details: String,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }

    /// `seed=7 replicas=3 published nats=.. http=.. invalid=.. stream_msgs=.. faults: ..
    /// ok in 48.2s`.
    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        format!(
            "seed={} replicas={} published nats={} http={} invalid={} stream_msgs={} \
             faults: {} {} in {:.1}s",
            self.seed,
            self.replicas,
            self.nats_published,
            self.http_published,
            self.invalid_published,
            self.stream_msgs,
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(" ")
            },
            if self.failed() {
                format!("FAILED ({} violations)", self.violations.len())
            } else {
                "ok".to_owned()
            },
            self.elapsed.as_secs_f64()
        )
    }

    /// `CHECKER FAILED seed=<n>: ...` followed by the details (empty when it passed).
    pub fn failure_report(&self) -> String {
        if !self.failed() {
            return String::new();
        }
        let mut out = format!(
            "CHECKER FAILED seed={}: {}\n",
            self.seed,
            self.violations.join(" | ")
        );
        out.push_str(&self.details);
        let _ = writeln!(
            out,
            "replay: CHECKER_SEED={seed} cargo nextest run -p integration-tests --test checker \
             (or: fault-checker --seed {seed})",
            seed = self.seed
        );
        out
    }
}

/// Totals over many schedules.
#[derive(Debug, Default)]
pub struct Totals {
    pub schedules: u64,
    pub faults: BTreeMap<String, u64>,
    pub nats_published: u64,
    pub http_published: u64,
    pub invalid_published: u64,
    pub stream_msgs: u64,
    /// (seed, violations) of every failed schedule.
    pub failures: Vec<(u64, Vec<String>)>,
}

impl Totals {
    pub fn add(&mut self, o: &Outcome) {
        self.schedules += 1;
        for (k, n) in &o.faults {
            *self.faults.entry(k.clone()).or_default() += n;
        }
        self.nats_published += o.nats_published;
        self.http_published += o.http_published;
        self.invalid_published += o.invalid_published;
        self.stream_msgs += o.stream_msgs;
        if o.failed() {
            self.failures.push((o.seed, o.violations.clone()));
        }
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        writeln!(f, "schedules run: {}", self.schedules)?;
        writeln!(
            f,
            "faults injected: {} ({})",
            self.faults.values().sum::<u64>(),
            faults.join(" ")
        )?;
        writeln!(
            f,
            "events published: nats={} http={} (+{} invalid)",
            self.nats_published, self.http_published, self.invalid_published
        )?;
        writeln!(f, "stream messages: {}", self.stream_msgs)?;
        if self.failures.is_empty() {
            write!(f, "failures: none")
        } else {
            let seeds: Vec<String> = self.failures.iter().map(|(s, _)| s.to_string()).collect();
            writeln!(
                f,
                "failures: {} (seeds {})",
                self.failures.len(),
                seeds.join(",")
            )?;
            for (seed, v) in &self.failures {
                // The headline of each violation; the failure report has the full text.
                let short: Vec<String> = v
                    .iter()
                    .map(|x| match x.char_indices().nth(140) {
                        Some((i, _)) => format!("{}...", &x[..i]),
                        None => x.clone(),
                    })
                    .collect();
                writeln!(f, "  seed={seed}: {}", short.join(" | "))?;
            }
            Ok(())
        }
    }
}

/// True when `CHECKER_VERBOSE=1`: progress of each phase on stderr.
fn verbose() -> bool {
    std::env::var_os("CHECKER_VERBOSE").is_some_and(|v| v == "1")
}

fn progress(seed: u64, t0: Instant, what: &str) {
    if verbose() {
        eprintln!(
            "[checker seed={seed} +{:.1}s] {what}",
            t0.elapsed().as_secs_f64()
        );
    }
}

/// Runs the schedule of `seed` and checks it. Never panics.
pub async fn run_seed(seed: u64) -> Outcome {
    let schedule = Schedule::draw(seed);
    let started = Instant::now();
    let task = tokio::spawn({
        let schedule = schedule.clone();
        async move { run_schedule(&schedule).await }
    });
    match task.await {
        Ok(outcome) => outcome,
        Err(e) => {
            let why = if e.is_panic() {
                let p = e.into_panic();
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".to_owned())
            } else {
                e.to_string()
            };
            let first_line = why.lines().next().unwrap_or("").to_owned();
            Outcome {
                seed,
                replicas: schedule.replicas,
                violations: vec![format!("schedule aborted: {first_line}")],
                elapsed: started.elapsed(),
                details: format!("{schedule}\nabort message:\n{why}\n"),
                ..Outcome::default()
            }
        }
    }
}

async fn start_topology(schedule: &Schedule) -> Topology {
    let (cluster, env) = tokio::join!(NatsCluster::start(3), TestEnv::start());
    let urls = cluster.urls();
    let mut vars: Vec<(&str, &str)> = vec![
        ("NATS_URL", urls.as_str()),
        ("STREAM_REPLICAS", "3"),
        ("OUTPUT_SUBJECT_PREFIX", invariants::OUTPUT_PREFIX),
        ("OUTPUT_STREAM_NAME", invariants::OUTPUT_STREAM),
        ("OUTPUT_STREAM_REPLICAS", "3"),
    ];
    vars.extend(schedule.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let aggs: Vec<Aggregator> =
        futures::future::join_all((0..schedule.replicas).map(|_| Aggregator::spawn(&env, &vars)))
            .await;
    Topology { env, cluster, aggs }
}

async fn run_schedule(schedule: &Schedule) -> Outcome {
    let t0 = Instant::now();
    let seed = schedule.seed;
    progress(seed, t0, &format!("starting\n{schedule}"));
    let mut topo = start_topology(schedule).await;
    progress(seed, t0, "topology up; load and faults start");
    let urls = topo.cluster.urls();
    let replica_urls: Vec<String> = topo.aggs.iter().map(Aggregator::base_url).collect();

    let load_start = tokio::time::Instant::now();
    let (load, mut run) = tokio::join!(
        load::run(&schedule.load, &urls, replica_urls),
        faults::run_steps(&mut topo, &schedule.steps, load_start)
    );
    progress(seed, t0, "load done, healing");
    faults::heal_all(&mut topo, &mut run, load_start).await;
    let mut violations: Vec<String> = run.problems.iter().map(|p| format!("[0] {p}")).collect();
    let load = match load {
        Ok(l) => l,
        Err(e) => {
            violations.push(format!("load could not run: {e}"));
            load::LoadOutcome::default()
        }
    };
    for e in &load.errors {
        violations.push(format!("[load] {e}"));
    }

    progress(seed, t0, "settling");
    let settle = invariants::settle(&mut topo).await;
    let settle_note = match &settle {
        Ok(d) => format!("settled in {:.1}s", d.as_secs_f64()),
        Err(state) => {
            violations.push(format!(
                "[6] not settled within {}s: {state}",
                invariants::SETTLE_LIMIT.as_secs()
            ));
            "not settled".to_owned()
        }
    };
    run.timeline.push(faults::Executed {
        at: load_start.elapsed(),
        action: "settle".into(),
        note: settle_note,
    });
    progress(seed, t0, "reading the stream back and checking");
    let truth = match invariants::read_stream(&urls, schedule.max_payload_bytes).await {
        Ok(t) => Some(t),
        Err(e) => {
            violations.push(format!("[1] cannot read the stream back: {e}"));
            None
        }
    };
    if let Some(truth) = &truth {
        violations.extend(invariants::check(&mut topo, truth, &load).await);
    }
    violations.extend(invariants::stream_out(&topo, &urls).await);
    progress(
        seed,
        t0,
        &format!("checked; executed:\n{}", run.timeline_text()),
    );

    let outcome = Outcome {
        seed,
        replicas: schedule.replicas,
        violations,
        faults: run.injected.clone(),
        nats_published: load.nats_acked,
        http_published: load.http_events_acked,
        invalid_published: load.invalid_acked,
        stream_msgs: truth.as_ref().map_or(0, |t| t.messages),
        elapsed: t0.elapsed(),
        details: String::new(),
    };
    let details = if outcome.failed() {
        details(schedule, &run, &load, truth.as_ref(), &topo)
    } else {
        String::new()
    };
    Outcome { details, ..outcome }
}

fn details(
    schedule: &Schedule,
    run: &FaultRun,
    load: &load::LoadOutcome,
    truth: Option<&invariants::Truth>,
    topo: &Topology,
) -> String {
    let mut out = String::new();
    let _ = write!(out, "{schedule}");
    let _ = writeln!(out, "  executed:");
    out.push_str(&run.timeline_text());
    let _ = writeln!(
        out,
        "  load: nats sent={} acked={} abandoned={} retries={}; http requests={} acked={} \
         abandoned={} retries={} events acked={}; invalid acked={} abandoned={}; {} distinct \
         acknowledged keys",
        load.nats_sent,
        load.nats_acked,
        load.nats_abandoned,
        load.nats_retries,
        load.http_requests,
        load.http_acked_requests,
        load.http_abandoned,
        load.http_retries,
        load.http_events_acked,
        load.invalid_acked,
        load.invalid_abandoned,
        load.acked_keys.len()
    );
    if let Some(t) = truth {
        let _ = writeln!(
            out,
            "  stream: seq {}..={} ({} messages): {} valid, {} invalid, {} distinct keys",
            t.first_seq,
            t.last_seq,
            t.messages,
            t.valid,
            t.invalid,
            t.keys.len()
        );
    }
    for (r, agg) in topo.aggs.iter().enumerate() {
        let _ = writeln!(out, "replica {r} ({}):", agg.base_url());
        let _ = writeln!(out, "{}", agg.log_tail());
    }
    out
}
