//! `fault-checker`: runs seeded fault schedules against real processes (see
//! `integration_tests::checker`) and prints one summary line per schedule plus totals.
//!
//! ```text
//! fault-checker --seed N                      # one schedule (replays a failing seed)
//! fault-checker --minutes M [--first-seed S]  # consecutive seeds until M minutes pass
//! fault-checker --seed N --dry-run            # print the schedule of N, run nothing
//! ```
//!
//! Exits 1 if any schedule failed, 2 on bad arguments. Build the workspace binaries first
//! (`cargo build --workspace --bins`); set `IT_SKIP_BUILD=1` to never build from here.

use integration_tests::checker::schedule::Schedule;
use integration_tests::checker::{run_seed, Totals};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: fault-checker --seed N [--dry-run] | --minutes M [--first-seed S]";

enum Mode {
    One(u64),
    DryRun(u64),
    Soak { minutes: f64, first: u64 },
}

fn parse(args: &[String]) -> Result<Mode, String> {
    let mut seed = None;
    let mut minutes = None;
    let mut first = None;
    let mut dry_run = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--seed" => seed = Some(value("--seed")?),
            "--minutes" => minutes = Some(value("--minutes")?),
            "--first-seed" => first = Some(value("--first-seed")?),
            "--dry-run" => dry_run = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let num = |name: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{name}: {v:?} is not a non-negative integer"))
    };
    match (seed, minutes) {
        (Some(s), None) if first.is_none() && dry_run => Ok(Mode::DryRun(num("--seed", &s)?)),
        (Some(s), None) if first.is_none() => Ok(Mode::One(num("--seed", &s)?)),
        (None, Some(m)) => {
            let minutes: f64 = m
                .parse()
                .ok()
                .filter(|m: &f64| m.is_finite() && *m > 0.0)
                .ok_or_else(|| format!("--minutes: {m:?} is not a positive number"))?;
            let first = match first {
                Some(f) => num("--first-seed", &f)?,
                // A fresh range each run unless told otherwise (printed, so it can be repeated).
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() % 1_000_000)
                    .unwrap_or(1),
            };
            Ok(Mode::Soak { minutes, first })
        }
        _ => Err("give either --seed N or --minutes M [--first-seed S]".into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse(&args) {
        Ok(m) => m,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("fault-checker: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (first, deadline) = match mode {
        Mode::DryRun(seed) => {
            print!("{}", Schedule::draw(seed));
            return ExitCode::SUCCESS;
        }
        Mode::One(seed) => (seed, None),
        Mode::Soak { minutes, first } => {
            println!("fault-checker: seeds from {first} for {minutes} minutes");
            (
                first,
                Some(Instant::now() + Duration::from_secs_f64(minutes * 60.0)),
            )
        }
    };
    let mut totals = Totals::default();
    let mut seed = first;
    loop {
        let outcome = run_seed(seed).await;
        println!("{}", outcome.summary());
        if outcome.failed() {
            eprintln!("{}", outcome.failure_report());
        }
        totals.add(&outcome);
        seed = seed.wrapping_add(1);
        match deadline {
            Some(d) if Instant::now() < d => {}
            _ => break,
        }
    }
    println!("---- totals ----\n{totals}");
    if totals.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
