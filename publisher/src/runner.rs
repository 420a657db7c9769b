//! Drives a run: pacing, a bounded window of sends in flight, progress on stderr (a bar on a
//! terminal, a plain line a second otherwise), and the exact counts at the end.

use crate::config::{Config, Via};
use crate::pacer::Pacer;
use crate::progress::{self, Mode as ProgressMode};
use crate::sender::{Outcome, Sink};
use crate::simulator::Simulator;
use crate::summary::Summary;
use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt};
use std::io::IsTerminal as _;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

/// Runs one publishing session: connects, sends `config.count` events (pacing them to
/// `config.rate` and keeping at most the sink's in-flight window outstanding), waits for every
/// answer and returns what happened.
///
/// Fails (before sending anything) when the configuration is inconsistent, the target cannot
/// be reached or no JetStream stream captures the subjects. A send given up after its retries
/// stops the run; that is reported in [`Summary::aborted`] and [`Summary::failed`], not as an
/// error, so the caller still gets the exact counts.
pub async fn run(config: Config) -> anyhow::Result<Summary> {
    let seed = config.seed.unwrap_or_else(rand::random);
    // Fresh per process, never from the seed: see `sender` on why.
    let run_id = uuid::Uuid::now_v7().to_string();
    let mut sim = Simulator::new(
        config.count,
        config.duplicate_rate,
        config.topics,
        config.sources,
        seed,
        rand::random(),
    )?;
    let sink = Sink::connect(&config, sim.topics(), &run_id).await?;
    info!(
        run_id,
        seed,
        count = config.count,
        duplicates = sim.duplicates(),
        topics = config.topics,
        "publishing"
    );

    let started = Instant::now();
    let mut pacer = Pacer::new(config.rate);
    let mode = ProgressMode::choose(config.progress, std::io::stderr().is_terminal());
    // Cleared from the screen when dropped, however this function returns.
    let bar = (mode == ProgressMode::Bar).then(|| progress::Bar::new(config.count));
    let mut progress_tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    progress_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut last_tick, mut last_published) = (started, 0u64);

    let chunk = sink.chunk_size();
    let window = sink.max_in_flight();
    let mut in_flight = FuturesUnordered::new();
    let mut tally = Outcome::default();

    loop {
        let can_issue = tally.fatal.is_none() && sim.remaining() > 0 && in_flight.len() < window;
        if !can_issue && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            // Answers first, so slots are freed before new sends are issued.
            biased;
            Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                let outcome: Outcome = outcome;
                if let (None, Some(reason)) = (&tally.fatal, &outcome.fatal) {
                    warn!(in_flight = in_flight.len(), "stopping the run: {reason}");
                }
                tally.add(outcome);
                if let Some(bar) = &bar {
                    bar.update(tally.unique + tally.duplicates, tally.failed);
                }
            }
            now = progress_tick.tick(), if mode == ProgressMode::Lines => {
                let published = tally.unique + tally.duplicates;
                let secs = now.duration_since(last_tick).as_secs_f64();
                let rate = if secs > 0.0 { (published - last_published) as f64 / secs } else { 0.0 };
                eprintln!("{}", progress::line(published, config.count, rate));
                (last_tick, last_published) = (now, published);
            }
            () = pacer.wait(), if can_issue => {
                while tally.fatal.is_none() && in_flight.len() < window {
                    let remaining = usize::try_from(sim.remaining()).unwrap_or(usize::MAX);
                    let n = chunk.min(pacer.available()).min(remaining);
                    if n == 0 {
                        break;
                    }
                    pacer.take(n);
                    let sends = sim
                        .by_ref()
                        .take(n)
                        .collect::<Result<Vec<_>, _>>()
                        .context("the simulator generated an invalid event")?;
                    in_flight.push(sink.send(sends));
                }
            }
        }
    }

    let elapsed = started.elapsed().as_secs_f64();
    drop(bar);
    // Sends never attempted because the run stopped are given up on too.
    let failed = tally.failed + sim.remaining();
    let published = tally.unique + tally.duplicates;
    let events_per_s = if elapsed > 0.0 {
        published as f64 / elapsed
    } else {
        0.0
    };
    Ok(Summary {
        published,
        unique: tally.unique,
        duplicates: tally.duplicates,
        failed,
        elapsed_s: (elapsed * 1_000.0).round() / 1_000.0,
        events_per_s: (events_per_s * 10.0).round() / 10.0,
        seed,
        count: config.count,
        retries: (config.via == Via::Nats).then_some(tally.retries),
        run_id,
        aborted: tally.fatal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_target_is_an_error_not_a_hang() {
        let config = Config {
            count: 10,
            nats_url: "nats://127.0.0.1:1".into(),
            progress: false,
            ..Config::default()
        };
        let err = run(config).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot connect to NATS"),
            "{err:#}"
        );
        let config = Config {
            count: 10,
            via: Via::Http,
            url: "http://127.0.0.1:1".into(),
            progress: false,
            ..Config::default()
        };
        let err = run(config).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot reach the aggregator"),
            "{err:#}"
        );
    }
}
