//! The publisher: a satellite-telemetry load generator that sends an exactly known mix of new
//! events and intentional duplicates to JetStream (or to the aggregator's `POST /publish`),
//! and reports exactly what was accepted.
//!
//! * [`Config`]: the run's settings, parsed from the command line (`publisher --help`).
//! * [`simulator`]: turns a seed into the run's sends (which are duplicates, of what).
//! * `sender`: delivers sends with retries (JetStream with `Nats-Msg-Id`, or HTTP batches),
//!   each with a W3C `traceparent` (`trace`).
//! * [`run`]: drives a run (pacing, bounded in-flight window, progress on stderr: a bar on a
//!   terminal, a plain line a second otherwise, see [`progress`]) and returns its [`Summary`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = publisher::Config { count: 1_000, ..publisher::Config::default() };
//! let summary = publisher::run(config).await?;
//! assert_eq!(summary.published + summary.failed, 1_000);
//! # Ok(())
//! # }
//! ```

pub mod progress;
pub mod simulator;

mod pacer;
mod sender;

use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt};
use pacer::Pacer;
use progress::Mode as ProgressMode;
use sender::{Outcome, Sink};
use serde::Serialize;
use simulator::Simulator;
use std::io::IsTerminal as _;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

pub const DEFAULT_COUNT: u64 = 20_000;
pub const DEFAULT_DUPLICATE_RATE: f64 = 0.3;
pub const DEFAULT_TOPICS: usize = 10;
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
pub const DEFAULT_HTTP_BATCH: usize = 100;
pub const DEFAULT_HTTP_CONCURRENCY: usize = 8;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2048;
pub const DEFAULT_SOURCES: u32 = 100;

/// Where the events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// Publish to JetStream subjects `<subject-prefix>.<topic>`.
    Nats,
    /// POST JSON arrays to `<url>/publish`.
    Http,
}

/// How the summary is printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    /// A table of the counts, for people.
    Text,
    /// Exactly one JSON object and nothing else.
    Json,
}

/// Settings of one run. Every field is a `--kebab-case` flag.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "publisher",
    version,
    about = "Publish simulated satellite telemetry, with an exact share of intentional \
             duplicates, to JetStream or to the aggregator's POST /publish.",
    after_help = examples_help()
)]
pub struct Config {
    /// Total sends: new events plus intentional duplicates.
    #[arg(long, default_value_t = DEFAULT_COUNT)]
    pub count: u64,

    /// Share of sends that repeat an earlier event, in [0, 1). Exactly
    /// round(count * rate) sends are duplicates.
    #[arg(long, default_value_t = DEFAULT_DUPLICATE_RATE, value_parser = parse_duplicate_rate)]
    pub duplicate_rate: f64,

    /// Number of distinct topics (the first is telemetry.satellite.status).
    #[arg(long, default_value_t = DEFAULT_TOPICS, value_parser = parse_topics)]
    pub topics: usize,

    /// Seed of the run's shape (duplicate positions, topics, sources, payloads); random when
    /// absent. Event ids and timestamps always differ between runs.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Events per second (a plain number, `N/s` also accepted); absent or 0 = as fast as
    /// possible.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,

    /// Subjects are `<prefix>.<topic>`.
    #[arg(long, env = "SUBJECT_PREFIX", default_value = shared::subject::DEFAULT_PREFIX,
          value_parser = parse_subject_prefix)]
    pub subject_prefix: String,

    /// Send through JetStream (nats) or through the aggregator's HTTP API (http).
    #[arg(long, value_enum, default_value_t = Via::Nats)]
    pub via: Via,

    /// Base URL of the aggregator's HTTP API (with --via http).
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: String,

    /// Events per POST /publish request (with --via http).
    #[arg(long, default_value_t = DEFAULT_HTTP_BATCH, value_parser = parse_positive)]
    pub http_batch: usize,

    /// Requests in flight at once (with --via http).
    #[arg(long, default_value_t = DEFAULT_HTTP_CONCURRENCY, value_parser = parse_positive)]
    pub http_concurrency: usize,

    /// Bearer token for POST /publish (with --via http).
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Most JetStream publishes awaiting their PubAck at once.
    #[arg(long, default_value_t = DEFAULT_MAX_IN_FLIGHT, value_parser = parse_positive)]
    pub max_in_flight: usize,

    /// Number of satellites, SAT-0001 ..= SAT-<sources>.
    #[arg(long, default_value_t = DEFAULT_SOURCES,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sources: u32,

    /// Summary format on stdout.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub summary: SummaryFormat,

    /// Show no progress on stderr (by default a progress bar on a terminal, otherwise a
    /// plain line about once a second).
    #[arg(long = "no-progress", action = clap::ArgAction::SetFalse)]
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            count: DEFAULT_COUNT,
            duplicate_rate: DEFAULT_DUPLICATE_RATE,
            topics: DEFAULT_TOPICS,
            seed: None,
            rate: None,
            nats_url: DEFAULT_NATS_URL.to_owned(),
            subject_prefix: shared::subject::DEFAULT_PREFIX.to_owned(),
            via: Via::Nats,
            url: DEFAULT_URL.to_owned(),
            http_batch: DEFAULT_HTTP_BATCH,
            http_concurrency: DEFAULT_HTTP_CONCURRENCY,
            api_token: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            sources: DEFAULT_SOURCES,
            summary: SummaryFormat::Text,
            progress: true,
        }
    }
}

/// The examples shown after the options by `--help`.
const EXAMPLES: &str = "\
\x20 # 20,000 events, 30% of them intentional duplicates, over 10 topics, reproducible shape
  publisher --count 20000 --duplicate-rate 0.3 --topics 10 --seed 42

  # Paced at 2,000 events per second
  publisher --count 150000 --duplicate-rate 0.3 --rate 2000 --seed 42

  # Through the aggregator's POST /publish, with a bearer token (or set API_TOKEN)
  publisher --via http --url http://127.0.0.1:8080 --api-token \"$API_TOKEN\" --count 5000

  # For scripts: exactly one JSON object on stdout, nothing else
  publisher --count 20000 --duplicate-rate 0.3 --summary json --no-progress
  # {\"published\":20000,\"unique\":14000,\"duplicates\":6000,\"failed\":0,
  #  \"elapsed_s\":1.234,\"events_per_s\":16207.5}";

/// "Examples:" styled like clap's own headings (clap drops the styling when stdout is not a
/// terminal), then [`EXAMPLES`].
fn examples_help() -> String {
    let heading = *clap::builder::styling::Styles::default().get_header();
    format!("{heading}Examples:{heading:#}\n{EXAMPLES}")
}

fn parse_duplicate_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("must be in [0, 1), got {s}"))
    }
}

fn parse_topics(s: &str) -> Result<usize, String> {
    let k: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if (1..=simulator::MAX_TOPICS).contains(&k) {
        Ok(k)
    } else {
        Err(format!(
            "must be between 1 and {}, got {k}",
            simulator::MAX_TOPICS
        ))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let rate: f64 = t
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (events per second)"))?;
    if rate.is_finite() && rate >= 0.0 {
        Ok(rate)
    } else {
        Err(format!("must be a non-negative number, got {s}"))
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("must be a whole number >= 1, got {s:?}")),
    }
}

fn parse_subject_prefix(s: &str) -> Result<String, String> {
    shared::event::validate_topic(s)
        .map(|()| s.to_owned())
        .map_err(|e| format!("not a valid subject prefix: {}", e.reason))
}

/// What a run did. The first six fields are the `--summary json` object, in that order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Sends accepted by the target (PubAck, or 2xx over HTTP).
    pub published: u64,
    /// Accepted sends that were new events.
    pub unique: u64,
    /// Accepted sends that were intentional duplicates.
    pub duplicates: u64,
    /// Sends given up on, including those never attempted because the run stopped early.
    pub failed: u64,
    /// Seconds from the first send to the last answer.
    pub elapsed_s: f64,
    /// `published / elapsed_s`.
    pub events_per_s: f64,
    /// The seed of the run's shape (given, or drawn when `--seed` was absent).
    #[serde(skip)]
    pub seed: u64,
    /// Sends planned (`--count`).
    #[serde(skip)]
    pub count: u64,
    /// JetStream publishes attempted again after a failed attempt; `None` with `--via http`.
    #[serde(skip)]
    pub retries: Option<u64>,
    /// This run's id, the prefix of every `Nats-Msg-Id`.
    #[serde(skip)]
    pub run_id: String,
    /// Why the run stopped before sending everything, if it did.
    #[serde(skip)]
    pub aborted: Option<String>,
}

impl Summary {
    /// The `--summary json` object, on one line.
    pub fn to_json(&self) -> String {
        // A struct of numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `--summary text` table: a line naming the run, then one row per figure.
    ///
    /// ```text
    /// run 0197a3c4-5b1e-7c2d-9f00-123456789abc, seed 42, 20,000 planned
    /// metric          value
    /// -----------  --------
    /// published      20,000
    /// unique         14,000
    /// duplicates      6,000
    /// failed              0
    /// retries             3
    /// elapsed (s)     1.234
    /// events/s     16,207.5
    /// ```
    ///
    /// `retries` (JetStream publishes attempted again) appears only for `--via nats`.
    pub fn to_text(&self) -> String {
        let mut rows: Vec<[String; 2]> = vec![
            ["published".into(), group_thousands(self.published)],
            ["unique".into(), group_thousands(self.unique)],
            ["duplicates".into(), group_thousands(self.duplicates)],
            ["failed".into(), group_thousands(self.failed)],
        ];
        if let Some(retries) = self.retries {
            rows.push(["retries".into(), group_thousands(retries)]);
        }
        rows.push(["elapsed (s)".into(), format!("{:.3}", self.elapsed_s)]);
        rows.push(["events/s".into(), format_rate(self.events_per_s)]);
        format!(
            "run {}, seed {}, {} planned\n{}",
            self.run_id,
            self.seed,
            group_thousands(self.count),
            render_table(["metric", "value"], &rows)
        )
    }

    /// True when every planned send was accepted.
    pub fn is_success(&self) -> bool {
        self.failed == 0 && self.aborted.is_none() && self.published == self.count
    }
}

/// A two-column table: labels left-aligned, values right-aligned, a header and a rule under
/// it; no trailing spaces.
fn render_table(header: [&str; 2], rows: &[[String; 2]]) -> String {
    let width = |col: usize| {
        rows.iter()
            .map(|r| r[col].chars().count())
            .chain(std::iter::once(header[col].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    let mut out = format!("{:<w0$}  {:>w1$}\n", header[0], header[1]);
    out.push_str(&format!("{}  {}", "-".repeat(w0), "-".repeat(w1)));
    for [label, value] in rows {
        out.push_str(&format!("\n{label:<w0$}  {value:>w1$}"));
    }
    out
}

/// `20000` as `20,000`.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with one decimal and grouped thousands: `16207.53` as `16,207.5`.
fn format_rate(rate: f64) -> String {
    if !rate.is_finite() || rate < 0.0 {
        return format!("{rate:.1}");
    }
    let tenths = (rate * 10.0).round() as u64;
    format!("{}.{}", group_thousands(tenths / 10), tenths % 10)
}

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
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("publisher").chain(args.iter().copied()))
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        let c = parse(&["--count", "5", "--seed", "42", "--rate", "100/s"]).unwrap();
        assert_eq!(c.count, 5);
        assert_eq!(c.seed, Some(42));
        assert_eq!(c.rate, Some(100.0));
        assert_eq!(c.duplicate_rate, DEFAULT_DUPLICATE_RATE);
        assert_eq!(c.topics, DEFAULT_TOPICS);
        assert_eq!(c.via, Via::Nats);
        assert_eq!(c.summary, SummaryFormat::Text);
        assert_eq!(c.http_batch, 100);
        assert_eq!(c.max_in_flight, 2048);
        assert_eq!(c.sources, 100);
        assert!(c.progress);
        let c = parse(&["--via", "http", "--summary", "json", "--no-progress"]).unwrap();
        assert_eq!(c.via, Via::Http);
        assert_eq!(c.summary, SummaryFormat::Json);
        assert!(!c.progress);
    }

    #[test]
    fn out_of_range_flags_are_rejected() {
        for args in [
            &["--duplicate-rate", "1"][..],
            &["--duplicate-rate", "-0.1"],
            &["--duplicate-rate", "x"],
            &["--topics", "0"],
            &["--rate", "-5"],
            &["--max-in-flight", "0"],
            &["--http-batch", "0"],
            &["--sources", "0"],
            &["--subject-prefix", "a.*"],
            &["--via", "carrier-pigeon"],
        ] {
            assert!(parse(args).is_err(), "{args:?} should be rejected");
        }
        assert_eq!(
            parse(&["--duplicate-rate", "0"]).unwrap().duplicate_rate,
            0.0
        );
        assert_eq!(
            parse(&["--duplicate-rate", "0.999"])
                .unwrap()
                .duplicate_rate,
            0.999
        );
    }

    #[test]
    fn json_summary_has_exactly_the_contract_fields() {
        let s = Summary {
            published: 10,
            unique: 7,
            duplicates: 3,
            failed: 0,
            elapsed_s: 0.5,
            events_per_s: 20.0,
            seed: 1,
            count: 10,
            retries: Some(2),
            run_id: "r".into(),
            aborted: None,
        };
        assert_eq!(
            s.to_json(),
            r#"{"published":10,"unique":7,"duplicates":3,"failed":0,"elapsed_s":0.5,"events_per_s":20.0}"#
        );
        assert!(s.is_success());
        assert!(s.to_text().contains("duplicates"));
    }

    fn sample_summary() -> Summary {
        Summary {
            published: 20_000,
            unique: 14_000,
            duplicates: 6_000,
            failed: 0,
            elapsed_s: 1.234,
            events_per_s: 16_207.5,
            seed: 42,
            count: 20_000,
            retries: Some(3),
            run_id: "0197a3c4-5b1e-7c2d-9f00-123456789abc".into(),
            aborted: None,
        }
    }

    #[test]
    fn text_summary_is_an_aligned_table() {
        let text = sample_summary().to_text();
        assert_eq!(
            text,
            "run 0197a3c4-5b1e-7c2d-9f00-123456789abc, seed 42, 20,000 planned\n\
             metric          value\n\
             -----------  --------\n\
             published      20,000\n\
             unique         14,000\n\
             duplicates      6,000\n\
             failed              0\n\
             retries             3\n\
             elapsed (s)     1.234\n\
             events/s     16,207.5"
        );
        // Every row of the table ends in the same column, and none has trailing spaces.
        let table: Vec<&str> = text.lines().skip(1).collect();
        let width = table[0].len();
        assert!(table.iter().all(|l| l.len() == width), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn text_summary_shows_retries_only_for_nats() {
        let http = Summary {
            retries: None,
            ..sample_summary()
        };
        assert!(!http.to_text().contains("retries"));
        assert!(sample_summary().to_text().contains("\nretries "));
        // The JSON object is the contract either way: retries is never in it.
        assert_eq!(http.to_json(), sample_summary().to_json());
        assert!(!http.to_json().contains("retries"));
    }

    #[test]
    fn table_columns_grow_with_their_widest_cell() {
        let rows = [
            ["a".to_owned(), "1".to_owned()],
            ["a much longer label".to_owned(), "123,456,789".to_owned()],
        ];
        let t = render_table(["metric", "value"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "metric                     value");
        assert_eq!(lines[1], "-------------------  -----------");
        assert_eq!(lines[2], "a                              1");
        assert_eq!(lines[3], "a much longer label  123,456,789");
        assert_eq!(
            render_table(["metric", "value"], &[]),
            "metric  value\n------  -----"
        );
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1_000), "1,000");
        assert_eq!(group_thousands(20_000), "20,000");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(group_thousands(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(format_rate(0.0), "0.0");
        assert_eq!(format_rate(3.25), "3.3");
        assert_eq!(format_rate(16_207.53), "16,207.5");
        assert_eq!(format_rate(999.96), "1,000.0");
    }

    #[test]
    fn help_ends_with_examples() {
        use clap::CommandFactory;
        let help = Config::command().render_help().to_string();
        let examples = help.split("Examples:").nth(1).expect("an Examples section");
        for needle in [
            "--count 20000 --duplicate-rate 0.3 --topics 10 --seed 42",
            "--rate 2000",
            "--via http --url http://127.0.0.1:8080 --api-token",
            "--summary json",
        ] {
            assert!(
                examples.contains(needle),
                "{needle:?} missing from:\n{help}"
            );
        }
    }

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
