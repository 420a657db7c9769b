//! Fault injection: runs a schedule's timeline of steps against the real processes, and
//! heals whatever is still broken at the end.
//!
//! Steps run one after the other, in schedule order, each no earlier than its offset from the
//! start of the load (a slow step, such as a NATS node restart, delays the ones after it but
//! never reorders them). Every executed step is logged with its real offset and a note.
//!
//! Harness helpers missing for a fault (SIGSTOP of a NATS node or a replica) are implemented
//! here with `pid()` and `nix`. WAL damage (only of kinds the product promises to survive) is
//! applied to the segment files of a SIGKILLed replica.

use super::schedule::{Action, Step, WalDamage};
use crate::{Aggregator, NatsCluster, TestEnv};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The processes of one schedule: Postgres (from the env; its single NATS is unused), the
/// NATS cluster and the aggregator replicas.
pub struct Topology {
    pub env: TestEnv,
    pub cluster: NatsCluster,
    pub aggs: Vec<Aggregator>,
}

/// One executed step.
#[derive(Debug, Clone)]
pub struct Executed {
    /// Real offset from the start of the load.
    pub at: Duration,
    pub action: String,
    pub note: String,
}

/// What the fault executor did.
#[derive(Debug, Default)]
pub struct FaultRun {
    pub timeline: Vec<Executed>,
    /// Faults injected, by kind.
    pub injected: BTreeMap<String, u64>,
    /// Things that went wrong with the product while injecting or healing (a replica that
    /// exited by itself, a non-zero exit after SIGTERM...).
    pub problems: Vec<String>,
}

impl FaultRun {
    fn log(&mut self, at: Duration, action: impl Into<String>, note: impl Into<String>) {
        self.timeline.push(Executed {
            at,
            action: action.into(),
            note: note.into(),
        });
    }

    /// The executed timeline, one line per step.
    pub fn timeline_text(&self) -> String {
        let mut out = String::new();
        for e in &self.timeline {
            let _ = write!(out, "    +{:>7.3}s {}", e.at.as_secs_f64(), e.action);
            if !e.note.is_empty() {
                let _ = write!(out, " -- {}", e.note);
            }
            out.push('\n');
        }
        out
    }
}

/// Sends `sig` to `pid` (a process this checker started).
pub fn signal(pid: u32, sig: Signal) -> Result<(), String> {
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    kill(Pid::from_raw(raw), sig).map_err(|e| format!("{sig} to {pid}: {e}"))
}

/// Runs a blocking harness call (Postgres kill/stop poll with thread sleeps, briefly).
///
/// Deliberately on the calling runtime thread: `block_in_place` or `spawn_blocking` would
/// run it on (or turn this worker into) a blocking-pool thread, which exits when idle, and
/// every child a harness spawned from that thread would die with it (`PR_SET_PDEATHSIG`).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// `/health` of a replica: (wal_record_count, circuit_breaker), or `None` if it does not answer.
pub async fn health(agg: &Aggregator) -> Option<(i64, String)> {
    let resp = agg
        .http()
        .get(format!("{}/health", agg.base_url()))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    let body: Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
    Some((
        body["wal_record_count"].as_i64()?,
        body["circuit_breaker"].as_str()?.to_owned(),
    ))
}

/// A WAL crash waiting for its replica to hold WAL records (Postgres is down).
struct Armed {
    replica: usize,
    damage: WalDamage,
    pick: u64,
    /// The step's planned offset and when it was armed.
    action: String,
    since: tokio::time::Instant,
    records: i64,
}

/// How long an armed WAL crash waits for records before it gives up (and only kills).
const ARMED_LIMIT: Duration = Duration::from_secs(10);

/// True when `action` touches Postgres or replica `r` (so it must wait for an armed crash).
fn touches(action: &Action, r: usize) -> bool {
    match action {
        Action::PgKill | Action::PgStop | Action::PgStart | Action::PgPause | Action::PgResume => {
            true
        }
        Action::AggKill(x)
        | Action::AggTerm(x)
        | Action::AggRestart(x)
        | Action::AggPause(x)
        | Action::AggResume(x) => *x == r,
        Action::WalCrash { .. } => true,
        _ => false,
    }
}

/// Executes the steps of a schedule; `start` is when the load started.
///
/// Steps run in order. The one exception: a WAL crash is *armed* at its offset and fires as
/// soon as its replica reports WAL records (at most [`ARMED_LIMIT`] later, at once if the
/// replica is not ready); meanwhile later steps that touch neither Postgres nor that replica
/// go ahead (say, the SIGCONT of the NATS node the replica is stuck on), and the first step
/// that touches one of them waits for it.
pub async fn run_steps(
    topo: &mut Topology,
    steps: &[Step],
    start: tokio::time::Instant,
) -> FaultRun {
    let mut run = FaultRun::default();
    // Replicas the schedule has taken down (killed, terminated) and not restarted yet.
    let mut down = vec![false; topo.aggs.len()];
    let mut armed: Option<Armed> = None;
    for step in steps {
        let due = start + step.at;
        // While waiting for the step, give an armed crash its chance.
        while let Some(a) = &mut armed {
            if tokio::time::Instant::now() >= due {
                break;
            }
            if poll_armed(topo, a).await {
                fire(topo, armed.take(), &mut down, &mut run, start).await;
            } else {
                tokio::time::sleep_until(
                    due.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                )
                .await;
            }
        }
        tokio::time::sleep_until(due).await;
        if armed
            .as_ref()
            .is_some_and(|a| touches(&step.action, a.replica))
        {
            if let Some(a) = &mut armed {
                while !poll_armed(topo, a).await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            fire(topo, armed.take(), &mut down, &mut run, start).await;
        }
        check_replicas(topo, &down, &mut run, start.elapsed());
        let at = start.elapsed();
        let mut fault = step.fault.map(str::to_owned);
        let note = match &step.action {
            Action::PgKill => {
                blocking(|| topo.env.pg.kill());
                String::new()
            }
            Action::PgStop => {
                blocking(|| topo.env.pg.stop());
                String::new()
            }
            Action::PgStart => {
                if topo.env.pg.pid().is_none() {
                    topo.env.pg.start().await;
                    format!("up after {:.1}s", (start.elapsed() - at).as_secs_f64())
                } else {
                    "already running".into()
                }
            }
            Action::PgPause => {
                topo.env.pg.pause();
                String::new()
            }
            Action::PgResume => {
                topo.env.pg.resume();
                String::new()
            }
            Action::AggKill(r) => {
                topo.aggs[*r].kill();
                down[*r] = true;
                String::new()
            }
            Action::AggTerm(r) => {
                down[*r] = true;
                terminate(&mut topo.aggs[*r], *r, &mut run).await
            }
            Action::AggRestart(r) => {
                topo.aggs[*r].restart_no_wait();
                down[*r] = false;
                format!("pid {}", topo.aggs[*r].pid())
            }
            Action::AggPause(r) => note_of(topo.aggs[*r].signal(Signal::SIGSTOP)),
            Action::AggResume(r) => note_of(topo.aggs[*r].signal(Signal::SIGCONT)),
            Action::NatsKill(i) => {
                topo.cluster.kill(*i);
                String::new()
            }
            Action::NatsRestart(i) => {
                topo.cluster.restart(*i).await;
                format!("up after {:.1}s", (start.elapsed() - at).as_secs_f64())
            }
            Action::NatsPause(i) => match topo.cluster.pid(*i) {
                Some(pid) => note_of(signal(pid, Signal::SIGSTOP)),
                None => "not running".into(),
            },
            Action::NatsResume(i) => match topo.cluster.pid(*i) {
                Some(pid) => note_of(signal(pid, Signal::SIGCONT)),
                None => "not running".into(),
            },
            Action::ConsumerReset => {
                let before = processed_record(&topo.env.database_url()).await;
                match topo
                    .cluster
                    .js_request("$JS.API.CONSUMER.DELETE.EVENTS.aggregator", &Value::Null)
                    .await
                {
                    Ok(_) => format!("deleted; before it {before}"),
                    Err(e) => {
                        fault = Some("consumer_reset_unanswered".into());
                        format!("no success answer (the consumer may or may not be gone): {e}")
                    }
                }
            }
            Action::WalCrash {
                replica,
                damage,
                pick,
            } => {
                // Counted when it fires.
                fault = None;
                armed = Some(Armed {
                    replica: *replica,
                    damage: *damage,
                    pick: *pick,
                    action: step.action.to_string(),
                    since: tokio::time::Instant::now(),
                    records: 0,
                });
                "armed: fires once the replica holds WAL records".into()
            }
        };
        if let Some(kind) = fault {
            *run.injected.entry(kind).or_default() += 1;
        }
        run.log(at, step.action.to_string(), note);
    }
    if let Some(a) = &mut armed {
        while !poll_armed(topo, a).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        fire(topo, armed.take(), &mut down, &mut run, start).await;
    }
    check_replicas(topo, &down, &mut run, start.elapsed());
    run
}

/// True when the armed crash should fire now: its replica holds WAL records, it is not
/// ready (a replica started while Postgres is down cannot get ready, let alone log
/// records), or it has waited [`ARMED_LIMIT`].
async fn poll_armed(topo: &Topology, a: &mut Armed) -> bool {
    let agg = &topo.aggs[a.replica];
    if let Some((n, _)) = health(agg).await {
        a.records = n;
        if n > 0 {
            return true;
        }
    }
    let ready = agg
        .http()
        .get(format!("{}/ready", agg.base_url()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 200);
    !ready || a.since.elapsed() >= ARMED_LIMIT
}

/// SIGKILLs the armed crash's replica and damages its WAL.
async fn fire(
    topo: &mut Topology,
    armed: Option<Armed>,
    down: &mut [bool],
    run: &mut FaultRun,
    start: tokio::time::Instant,
) {
    let Some(a) = armed else { return };
    check_replicas(topo, down, run, start.elapsed());
    let agg = &mut topo.aggs[a.replica];
    agg.kill();
    down[a.replica] = true;
    let (kind, note) = match damage_wal(agg.wal_path(), a.damage, a.pick) {
        Ok(what) => (
            a.damage.label(),
            format!("{} WAL records at the kill; {what}", a.records),
        ),
        Err(why) => (
            "wal_skipped",
            format!(
                "{} WAL records at the kill; nothing damaged: {why}",
                a.records
            ),
        ),
    };
    *run.injected.entry(kind.to_owned()).or_default() += 1;
    run.log(start.elapsed(), format!("fired: {}", a.action), note);
}

/// The processed record right now, for notes: the floor, the highest recorded sequence and
/// the holes between them (sequences without a record: in flight, or lost to a bug).
async fn processed_record(database_url: &str) -> String {
    let query = async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(database_url).await?;
        sqlx::query_as::<_, (i64, Option<i64>, i64)>(
            "SELECT s.floor_seq, max(p.stream_seq),
                    coalesce(max(p.stream_seq) - s.floor_seq - count(p.stream_seq), 0)
             FROM streams s LEFT JOIN processed_messages p
                  ON p.stream_id = s.id AND p.stream_seq > s.floor_seq
             GROUP BY s.id, s.floor_seq ORDER BY s.id LIMIT 1",
        )
        .fetch_one(&mut conn)
        .await
    };
    match tokio::time::timeout(Duration::from_secs(3), query).await {
        Ok(Ok((floor, max, holes))) => format!(
            "processed record: floor_seq={floor}, highest={}, {holes} holes between",
            max.map_or("none".to_owned(), |m| m.to_string())
        ),
        Ok(Err(e)) => format!("processed record unknown ({e})"),
        Err(_) => "processed record unknown (Postgres did not answer)".to_owned(),
    }
}

fn note_of(r: Result<(), String>) -> String {
    r.err().unwrap_or_default()
}

/// Records a problem for every replica that should be running but has exited by itself.
fn check_replicas(topo: &mut Topology, down: &[bool], run: &mut FaultRun, at: Duration) {
    for (r, agg) in topo.aggs.iter_mut().enumerate() {
        if !down[r] && !agg.is_running() {
            let msg = format!(
                "replica {r} exited by itself (noticed at +{:.1}s); restarted",
                at.as_secs_f64()
            );
            run.problems.push(msg.clone());
            run.log(at, format!("replica {r} restart (unplanned)"), msg);
            agg.restart_no_wait();
        }
    }
}

/// SIGTERM, then waits (up to 60 s) for a clean exit; a hang or a non-zero exit is a problem.
async fn terminate(agg: &mut Aggregator, r: usize, run: &mut FaultRun) -> String {
    if let Err(e) = signal(agg.pid(), Signal::SIGTERM) {
        return e;
    }
    let asked = tokio::time::Instant::now();
    while agg.is_running() && asked.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if agg.is_running() {
        agg.kill();
        run.problems.push(format!(
            "replica {r} did not exit within 60 s of SIGTERM (SIGKILLed)"
        ));
        return "hung after SIGTERM; SIGKILLed".into();
    }
    // Exited: `terminate` returns the recorded status at once.
    let status = agg.terminate().await;
    if !status.success() {
        run.problems
            .push(format!("replica {r} exited with {status} after SIGTERM"));
    }
    format!(
        "exited with {status} after {:.1}s",
        asked.elapsed().as_secs_f64()
    )
}

/// Brings everything back: Postgres resumed or started, every NATS node running and not
/// stopped, every replica running and not stopped.
pub async fn heal_all(topo: &mut Topology, run: &mut FaultRun, start: tokio::time::Instant) {
    let mut healed = Vec::new();
    if topo.env.pg.is_paused() {
        topo.env.pg.resume();
        healed.push("postgres resumed".to_owned());
    }
    if topo.env.pg.pid().is_none() {
        topo.env.pg.start().await;
        healed.push("postgres started".to_owned());
    }
    for i in 0..topo.cluster.len() {
        match topo.cluster.pid(i) {
            Some(pid) => {
                let _ = signal(pid, Signal::SIGCONT);
            }
            None => {
                topo.cluster.restart(i).await;
                healed.push(format!("nats n{} restarted", i + 1));
            }
        }
    }
    for (r, agg) in topo.aggs.iter_mut().enumerate() {
        if agg.signal(Signal::SIGCONT).is_err() {
            run.problems.push(format!(
                "replica {r} was not running when the schedule ended; restarted"
            ));
            agg.restart_no_wait();
            healed.push(format!("replica {r} restarted"));
        }
    }
    let note = if healed.is_empty() {
        "nothing left to heal".to_owned()
    } else {
        healed.join(", ")
    };
    run.log(start.elapsed(), "heal everything", note);
}

/// `wal-*.jsonl` segment files of a WAL directory, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".jsonl"))
        })
        .collect();
    v.sort();
    v
}

/// A segment file: its path, bytes and complete lines.
type Segment = (PathBuf, Vec<u8>, Vec<(usize, usize)>);

/// Complete lines (ending in `\n`) of a segment: (start, end) byte ranges without the `\n`.
fn lines(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            if i > start {
                out.push((start, i));
            }
            start = i + 1;
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `"seq":N` of a WAL line, for the notes.
fn seq_of(line: &[u8]) -> String {
    find(line, br#""seq":"#)
        .map(|i| {
            line[i + 6..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| b as char)
                .collect()
        })
        .unwrap_or_else(|| "?".into())
}

/// Damages the WAL in `dir` (its replica must be dead). `pick` chooses the segment, line,
/// position and bit pattern. Returns what was done, or why nothing could be.
pub fn damage_wal(dir: &Path, damage: WalDamage, pick: u64) -> Result<String, String> {
    let segs: Vec<Segment> = segments(dir)
        .into_iter()
        .filter_map(|p| {
            let bytes = std::fs::read(&p).ok()?;
            let l = lines(&bytes);
            (!l.is_empty()).then_some((p, bytes, l))
        })
        .collect();
    if segs.is_empty() {
        return Err(format!("no segment with records in {}", dir.display()));
    }
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    match damage {
        WalDamage::FlipByte => {
            let (path, mut bytes, ls) = segs[(pick % segs.len() as u64) as usize].clone();
            let li = ((pick >> 8) % ls.len() as u64) as usize;
            let (s, e) = ls[li];
            let rec = find(&bytes[s..e], br#""rec":"#)
                .map(|i| s + i + 6)
                .ok_or_else(|| format!("line {} of {} has no rec", li + 1, name(&path)))?;
            // The body is rec..e-1 (the line ends with the entry's closing brace).
            let body_len = (e - 1).saturating_sub(rec);
            if body_len == 0 {
                return Err("empty rec body".into());
            }
            let at = rec + ((pick >> 24) % body_len as u64) as usize;
            let old = bytes[at];
            let mut mask = ((pick >> 48) as u8) | 1;
            while matches!(old ^ mask, b'\n' | b'\r') {
                mask = mask.rotate_left(1) | 1;
            }
            bytes[at] = old ^ mask;
            std::fs::write(&path, &bytes).map_err(|e| io(&path, e))?;
            Ok(format!(
                "flipped byte {} of line {}/{} (seq {}{}) in {}: {:?} -> {:?}",
                at - s,
                li + 1,
                ls.len(),
                seq_of(&bytes[s..e]),
                if li + 1 == ls.len() {
                    ", the segment's last line"
                } else {
                    ""
                },
                name(&path),
                old as char,
                (old ^ mask) as char
            ))
        }
        WalDamage::CutLastLine => {
            let (path, bytes, ls) = segs[segs.len() - 1].clone();
            let (s, e) = ls[ls.len() - 1];
            let hcrc = find(&bytes[s..e], br#""hcrc":""#)
                .map(|i| s + i + 8 + 8 + 1)
                .ok_or_else(|| format!("last line of {} has no hcrc", name(&path)))?;
            if hcrc >= e {
                return Err("last line ends at its hcrc".into());
            }
            let cut = hcrc + (pick % (e - hcrc) as u64) as usize;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            file.set_len(cut as u64).map_err(|e| io(&path, e))?;
            Ok(format!(
                "cut the last line (seq {}, {} of {} lines) of {} to {} of its {} bytes",
                seq_of(&bytes[s..e]),
                ls.len(),
                ls.len(),
                name(&path),
                cut - s,
                e - s
            ))
        }
        WalDamage::TornAppend => {
            let (path, bytes, ls) = segs[segs.len() - 1].clone();
            let (s, e) = ls[ls.len() - 1];
            let len = 1 + (pick % (e - s - 1).max(1) as u64) as usize;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            use std::io::Write;
            file.write_all(&bytes[s..s + len])
                .map_err(|e| io(&path, e))?;
            Ok(format!(
                "appended a torn copy ({len} of {} bytes) of the last line (seq {}) to {}",
                e - s,
                seq_of(&bytes[s..e]),
                name(&path)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, body: &str) -> String {
        format!(
            "{{\"crc\":\"0badc0de\",\"sid\":1,\"seq\":{seq},\"hcrc\":\"12345678\",\"kind\":\"event\",\"rec\":{body}}}\n"
        )
    }

    fn wal_dir(name: &str, content: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("checker-wal-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test WAL dir");
        std::fs::write(dir.join("wal-00000000000000000001.jsonl"), content)
            .expect("write the test segment");
        dir
    }

    #[test]
    fn each_damage_keeps_the_header_intact() {
        let content = format!(
            "{}{}",
            line(1, r#"{"a":"xxxxxxxx"}"#),
            line(2, r#"{"a":"yyyyyyyy"}"#)
        );
        for pick in [0u64, 1, 7, 0xdead_beef_1234_5678, u64::MAX] {
            for damage in [
                WalDamage::FlipByte,
                WalDamage::CutLastLine,
                WalDamage::TornAppend,
            ] {
                let dir = wal_dir("dmg", &content);
                let note = damage_wal(&dir, damage, pick)
                    .unwrap_or_else(|e| panic!("{damage:?} {pick}: {e}"));
                let after = std::fs::read(dir.join("wal-00000000000000000001.jsonl"))
                    .expect("read the damaged segment");
                assert_ne!(after, content.as_bytes(), "{damage:?} {pick}: {note}");
                match damage {
                    WalDamage::FlipByte => {
                        assert_eq!(after.len(), content.len());
                        let diff: Vec<usize> = (0..after.len())
                            .filter(|&i| after[i] != content.as_bytes()[i])
                            .collect();
                        assert_eq!(diff.len(), 1);
                        let line_start = if diff[0] >= content.len() / 2 {
                            content.len() / 2
                        } else {
                            0
                        };
                        let rec = line_start
                            + content[line_start..].find("\"rec\":").expect("rec in line")
                            + 6;
                        assert!(diff[0] >= rec, "{note}");
                        assert!(!matches!(after[diff[0]], b'\n' | b'\r'));
                    }
                    WalDamage::CutLastLine => {
                        let second = &content[content.len() / 2..];
                        let keep =
                            content.len() / 2 + second.find("\"kind\"").expect("kind in line") - 1;
                        assert!(
                            after.len() >= keep && after.len() < content.len() - 1,
                            "{note}"
                        );
                    }
                    WalDamage::TornAppend => {
                        assert!(after.starts_with(content.as_bytes()));
                        assert!(!after.ends_with(b"\n"));
                    }
                }
                std::fs::remove_dir_all(&dir).expect("remove the test WAL dir");
            }
        }
    }

    #[test]
    fn nothing_to_damage_in_an_empty_wal() {
        let dir = wal_dir("empty", "");
        assert!(damage_wal(&dir, WalDamage::FlipByte, 3).is_err());
        std::fs::remove_dir_all(&dir).expect("remove the test WAL dir");
    }
}
