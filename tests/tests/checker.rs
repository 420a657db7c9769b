//! The seeded fault-schedule checker's short run for the test suite (DESIGN.md invariant 6):
//! a few fixed seeds, each a schedule of load and faults against a 3-node NATS cluster,
//! Postgres and 2-3 aggregator replicas, checked against every invariant at the end.
//!
//! `CHECKER_SEEDS=1,2,3` picks the seeds; `CHECKER_SEED=n` replays one failing seed (the same
//! schedule `fault-checker --seed n` runs). Longer runs: `scripts/soak.sh --minutes N`.

use integration_tests::checker::{run_seed, Totals};

/// Seeds run by default: together they plan every fault kind (Postgres kill/stop/pause,
/// replica kill/pause/term, NATS node kill/pause, consumer reset, the three WAL damages) on
/// 2 and 3 replicas with about 70 s of load in all (`fault-checker --seed n --dry-run` prints
/// a schedule).
const DEFAULT_SEEDS: &[u64] = &[60, 171, 245];

fn seeds() -> Vec<u64> {
    let parse = |var: &str| -> Option<Vec<u64>> {
        let v = std::env::var(var).ok()?;
        Some(
            v.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("{var}: {s:?} is not a seed"))
                })
                .collect(),
        )
    };
    parse("CHECKER_SEED")
        .or_else(|| parse("CHECKER_SEEDS"))
        .unwrap_or_else(|| DEFAULT_SEEDS.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_fault_schedules_keep_every_invariant() {
    let mut totals = Totals::default();
    let mut reports = Vec::new();
    for seed in seeds() {
        let outcome = run_seed(seed).await;
        println!("{}", outcome.summary());
        if outcome.failed() {
            let report = outcome.failure_report();
            eprintln!("{report}");
            reports.push(report);
        }
        totals.add(&outcome);
    }
    println!("{totals}");
    assert!(
        totals.failures.is_empty(),
        "{} of {} schedules violated invariants:\n{}",
        totals.failures.len(),
        totals.schedules,
        totals
            .failures
            .iter()
            .map(|(seed, v)| format!("CHECKER FAILED seed={seed}: {}", v.join(" | ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
