//! The run's settings, parsed from the command line (`publisher --help`), with their
//! defaults and the checks that refuse an inconsistent run before anything is sent.

use crate::simulator;
use shared::logging::LogFormat;

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
    // It may carry a password (nats://user:password@host): --help does not print it.
    #[arg(long, env = "NATS_URL", hide_env_values = true, default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,

    /// NATS authentication and TLS (`NATS_CREDS`, `NATS_TOKEN`, `NATS_TLS_CA`, ...), as for
    /// the aggregator.
    #[command(flatten)]
    pub nats: shared::nats::NatsArgs,

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

    /// Log lines on stderr as `text` (coloured only on a terminal) or `json`; RUST_LOG sets
    /// the levels (default "warn").
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
            nats: shared::nats::NatsArgs::default(),
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
            log_format: LogFormat::Text,
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

  # To a NATS server with TLS and a password (or NATS_CREDS, NATS_NKEY, NATS_TOKEN)
  NATS_PASSWORD=\"$SECRET\" publisher --nats-url tls://nats.example:4222 --nats-tls-ca ca.pem \\
    --nats-user publisher --count 5000

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
    fn help_ends_with_examples() {
        use clap::CommandFactory;
        let help = Config::command().render_help().to_string();
        let examples = help.split("Examples:").nth(1).expect("an Examples section");
        for needle in [
            "--count 20000 --duplicate-rate 0.3 --topics 10 --seed 42",
            "--rate 2000",
            "--via http --url http://127.0.0.1:8080 --api-token",
            "--nats-url tls://nats.example:4222 --nats-tls-ca ca.pem",
            "--summary json",
        ] {
            assert!(
                examples.contains(needle),
                "{needle:?} missing from:\n{help}"
            );
        }
    }
}
