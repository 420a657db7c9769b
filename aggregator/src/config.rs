//! Typed configuration, read once at start-up from flags and environment variables.
//!
//! Every setting is an environment variable with the same name as a `--kebab-case` flag
//! (DESIGN.md, "Aggregator configuration"). Values are parsed and checked here, so a bad one
//! stops start-up with one line naming the variable instead of failing later at run time.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use shared::logging::LogFormat;
use shared::secrets::{redact_url, SecretUrl};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Variables that may also be given as `<NAME>_FILE` (a mounted secret), read by
/// [`shared::secrets::load`] before the command line is parsed. Adding one is one line here.
pub const SECRETS_FROM_FILES: &[&str] = &[
    "DATABASE_URL",
    "API_TOKEN",
    "API_READ_TOKEN",
    "NATS_PASSWORD",
    "NATS_TOKEN",
];

/// `aggregator --version`; a test build says it has failpoints (the test harness checks).
const VERSION: &str = if cfg!(feature = "failpoints") {
    concat!(env!("CARGO_PKG_VERSION"), " (with failpoints)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// Command line of the `aggregator` binary.
#[derive(Debug, Parser)]
#[command(
    name = "aggregator",
    version = VERSION,
    about = "Consumes telemetry events from NATS JetStream and stores each distinct event \
             exactly once in PostgreSQL, with exact received/unique/duplicate counters.",
    after_help = "Every option can also be set through the environment variable shown.\n\
                  Durations accept 500ms, 5s, 2m, 1h."
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The command line with every setting global, so it is accepted after a subcommand too
    /// (`aggregator redrive --database-url ...`), as before it.
    pub fn command_with_global_settings() -> clap::Command {
        Cli::command().mut_args(|arg| arg.global(true))
    }

    /// Parses the process's arguments; exits with clap's message (naming the variable) on a
    /// bad one.
    pub fn parse_args() -> Cli {
        Cli::try_parse_args_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`Cli::parse_args`] over given arguments.
    pub fn try_parse_args_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command_with_global_settings().try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default when no subcommand is given).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Publish dead letters again (after a fix) so they go through the normal path.
    Redrive {
        /// Only these dead-letter ids (default: every one not redriven yet).
        #[arg(long = "id")]
        ids: Vec<i64>,
        /// List what would be redriven without publishing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The service's settings.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// NATS server URL(s), comma-separated for a cluster.
    /// May carry user:password (`--help` does not show the value).
    #[arg(long, env = "NATS_URL", hide_env_values = true, default_value = "nats://127.0.0.1:4222", value_parser = SecretUrl(parse_nats_url))]
    pub nats_url: String,

    /// NATS authentication and TLS (`NATS_CREDS`, `NATS_TOKEN`, `NATS_TLS_CA`, ...).
    #[command(flatten)]
    pub nats: shared::nats::NatsArgs,

    /// PostgreSQL URL; the database is created if it does not exist. TLS the libpq way:
    /// `?sslmode=verify-full&sslrootcert=ca.pem` (also `sslcert`, `sslkey`). Also read from
    /// the file DATABASE_URL_FILE (`--help` does not show the value).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = "postgres://postgres@127.0.0.1:5432/aggregator", value_parser = SecretUrl(parse_database_url))]
    pub database_url: String,

    /// Address the HTTP API listens on.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// JetStream stream holding the events.
    #[arg(long, env = "STREAM_NAME", default_value = "EVENTS", value_parser = parse_name)]
    pub stream_name: String,

    /// Subject prefix: events travel on `<prefix>.<topic>`.
    #[arg(long, env = "SUBJECT_PREFIX", default_value = "events", value_parser = parse_prefix)]
    pub subject_prefix: String,

    /// Durable pull consumer shared by every replica.
    #[arg(long, env = "CONSUMER_NAME", default_value = "aggregator", value_parser = parse_name)]
    pub consumer_name: String,

    /// Stream replicas when the stream is created (3 on a NATS cluster).
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,

    /// Oldest message the stream keeps (JetStream `max_age`, discard old): older ones are
    /// dropped whether processed or not. `0` = no limit; otherwise at least 2m (the stream's
    /// duplicate window). Applied to an existing stream at start-up.
    #[arg(long, env = "STREAM_MAX_AGE", default_value = "7d", value_parser = parse_stream_max_age)]
    pub stream_max_age: Duration,

    /// Largest size of the stream (JetStream `max_bytes`, discard old): the oldest messages
    /// are dropped to stay under it, whether processed or not. Bytes, or with KiB, MiB, GiB,
    /// TiB; `0` = no limit. Applied to an existing stream at start-up. JetStream reserves it
    /// from the server's storage up front (by default 75% of the free disk when the server
    /// started), so the default stays small enough for a small disk.
    #[arg(long, env = "STREAM_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub stream_max_bytes: u64,

    /// Largest message the stream accepts (JetStream `max_msg_size`, headers included); a
    /// larger one is refused by the server. At least MAX_PAYLOAD_BYTES + 48 KiB (one valid
    /// event); bytes, or with KiB, MiB; `0` = no limit. Applied to an existing stream at
    /// start-up.
    #[arg(long, env = "STREAM_MAX_MSG_SIZE", default_value = "256KiB", value_parser = parse_msg_size)]
    pub stream_max_msg_size: u32,

    /// When set, every event stored for the first time is published once to
    /// `<prefix>.<topic>` on the output stream (OUTPUT_STREAM_NAME): the duplicate-free stream
    /// out. Unset (the default) publishes nothing. Must not overlap SUBJECT_PREFIX.
    #[arg(long, env = "OUTPUT_SUBJECT_PREFIX", value_parser = parse_prefix)]
    pub output_subject_prefix: Option<String>,

    /// JetStream stream the stream out publishes to (created when missing).
    #[arg(long, env = "OUTPUT_STREAM_NAME", default_value = "UNIQUE", value_parser = parse_name)]
    pub output_stream_name: String,

    /// Replicas of the output stream when it is created (3 on a NATS cluster).
    #[arg(long, env = "OUTPUT_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub output_stream_replicas: u8,

    /// Oldest message the output stream keeps (JetStream `max_age`, discard old); `0` = no
    /// limit, otherwise at least 2m.
    #[arg(long, env = "OUTPUT_STREAM_MAX_AGE", default_value = "7d", value_parser = parse_stream_max_age)]
    pub output_stream_max_age: Duration,

    /// Largest size of the output stream (JetStream `max_bytes`, discard old); bytes or with
    /// KiB, MiB, GiB, TiB; `0` = no limit.
    #[arg(long, env = "OUTPUT_STREAM_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub output_stream_max_bytes: u64,

    /// Events published per round of the stream out (each round waits for every
    /// acknowledgement, then saves the cursor).
    #[arg(long, env = "OUTBOX_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub outbox_batch: u32,

    /// How often the stream out and the live tail (GET /events/stream) look for newly stored
    /// events when they have caught up.
    #[arg(long, env = "OUTBOX_POLL_INTERVAL", default_value = "100ms", value_parser = parse_positive_duration)]
    pub outbox_poll_interval: Duration,

    /// Live tails (GET /events/stream) open at once; one more gets 503 + Retry-After.
    #[arg(long, env = "MAX_EVENT_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_event_streams: u32,

    /// Concurrent batch writers.
    #[arg(long, env = "WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,

    /// Largest batch written in one transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Longest wait to fill a batch once its first message arrived.
    #[arg(long, env = "BATCH_TIMEOUT", default_value = "20ms", value_parser = parse_duration)]
    pub batch_timeout: Duration,

    /// Messages held in memory between intake and the workers.
    #[arg(long, env = "MAX_BUFFER_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_buffer_size: u32,

    /// Largest accepted serialized payload, in bytes.
    #[arg(long, env = "MAX_PAYLOAD_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(2..=16_777_216))]
    pub max_payload_bytes: u32,

    /// Directory of the write-ahead log.
    #[arg(long, env = "WAL_PATH", default_value = "./data/wal")]
    pub wal_path: PathBuf,

    /// WAL size at which the aggregator stops acknowledging (backpressure), in bytes; at least
    /// one full batch (BATCH_SIZE x (MAX_PAYLOAD_BYTES + 48 KiB)).
    #[arg(long, env = "WAL_MAX_SIZE", default_value_t = 104_857_600, value_parser = clap::value_parser!(u64).range(1..))]
    pub wal_max_size: u64,

    /// Attempts at the database per batch before it goes to the WAL (the first at once, then
    /// RETRY_DELAY doubling: 1s, 2s, 4s, 8s with the defaults).
    #[arg(long, env = "MAX_RETRIES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_retries: u32,

    /// Wait before the second attempt; doubles for each further one, with ±20% jitter.
    #[arg(long, env = "RETRY_DELAY", default_value = "1s", value_parser = parse_positive_duration)]
    pub retry_delay: Duration,

    /// Longest a batch write may take before it counts as failed (a hung database).
    #[arg(long, env = "WRITE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub write_timeout: Duration,

    /// Consecutive failures that open the circuit breaker.
    #[arg(long, env = "CIRCUIT_BREAKER_THRESHOLD", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub circuit_breaker_threshold: u32,

    /// Time the breaker stays open before one probe is let through (only the probe's success
    /// closes it).
    #[arg(long, env = "CIRCUIT_BREAKER_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub circuit_breaker_timeout: Duration,

    /// How often the health monitor pings the database.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    pub health_check_interval: Duration,

    /// WAL records replayed per transaction.
    #[arg(long, env = "REPLAY_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub replay_batch: u32,

    /// JetStream ack wait: an unacknowledged message is redelivered after this long.
    #[arg(long, env = "ACK_WAIT", default_value = "30s", value_parser = parse_positive_duration)]
    pub ack_wait: Duration,

    /// Keep events (and dead letters) this long after they were stored; unset keeps them
    /// forever. The dedup horizon equals the retention: a copy of an event arriving after the
    /// original was deleted is stored again.
    #[arg(long, env = "RETENTION", value_parser = parse_retention)]
    pub retention: Option<Duration>,

    /// How often the processed-message record is compacted.
    #[arg(long, env = "COMPACT_INTERVAL", default_value = "10s", value_parser = parse_positive_duration)]
    pub compact_interval: Duration,

    /// Largest accepted HTTP request body, in bytes (413 above it).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 10_485_760, value_parser = clap::value_parser!(u64).range(1..=1_073_741_824))]
    pub max_body_bytes: u64,

    /// Most events one POST /publish body may hold (413 above it); counted while parsing, so
    /// a body of millions of tiny elements is refused before they are built.
    #[arg(long, env = "MAX_EVENTS_PER_REQUEST", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_events_per_request: u32,

    /// Longest wait for the stream's acknowledgements of a POST /publish (503 after it).
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub publish_timeout: Duration,

    /// Distinct topic label values on metrics; further topics are counted as "other".
    #[arg(long, env = "METRICS_MAX_TOPICS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub metrics_max_topics: u32,

    /// Deliveries after which a message that still was not stored is a suspect (it may be
    /// crashing the process): it is written alone, once, with the attempt recorded in
    /// Postgres first; delivered again after that attempt, it is dead-lettered unprocessed.
    /// JetStream itself redelivers without limit.
    #[arg(long, env = "MAX_DELIVER", default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub max_deliver: i64,

    /// Longest time any HTTP request may take (then 408).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// Longest a client may take to send a request's headers (also how long an idle
    /// keep-alive connection stays open); the connection is closed after it.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub http_header_timeout: Duration,

    /// HTTP connections open at once; further clients wait in the listen backlog.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: u32,

    /// POST /publish requests handled at once; more wait for a slot (PUBLISH_QUEUE_TIMEOUT).
    #[arg(long, env = "MAX_CONCURRENT_PUBLISH", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_publish: u32,

    /// Longest a POST /publish request waits for a slot when MAX_CONCURRENT_PUBLISH are in
    /// progress (at most 4 x MAX_CONCURRENT_PUBLISH wait); then, or beyond that queue, 503 +
    /// Retry-After. 0 sheds at once. Shorter than REQUEST_TIMEOUT.
    #[arg(long, env = "PUBLISH_QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub publish_queue_timeout: Duration,

    /// Connections of the pool the API's reads (/events, /dead-letters, /stats) use, apart
    /// from the batch writers' pool.
    #[arg(long, env = "API_READ_POOL_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub api_read_pool_size: u32,

    /// Longest an API read query may run; Postgres cancels it after this (then 503).
    #[arg(long, env = "API_READ_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub api_read_timeout: Duration,

    /// Bearer token required, when set (never empty), by POST /publish, by GET /dead-letters
    /// unless API_READ_TOKEN is set, and accepted wherever API_READ_TOKEN is. Probes,
    /// /metrics and the dashboard page stay open.
    #[arg(long, env = "API_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub api_token: Option<String>,

    /// Bearer token required by GET /events, /stats and /dead-letters when set (never
    /// empty); API_TOKEN is accepted there too. Unset leaves /events and /stats open.
    #[arg(long, env = "API_READ_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub api_read_token: Option<String>,

    /// After SIGTERM/SIGINT, longest wait for the drain (buffered batches written and
    /// acknowledged, then the HTTP API closed); after it the process exits with status 1 and
    /// JetStream redelivers whatever was not acknowledged. Keep it below the orchestrator's
    /// grace period (compose: `stop_grace_period: 30s`), which ends in SIGKILL.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_positive_duration)]
    pub shutdown_timeout: Duration,

    /// Log lines as `text` (coloured only on a terminal) or `json`; RUST_LOG sets the levels
    /// (default "info,sqlx=warn,async_nats=warn").
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what no single value can: a bad combination names the variable to change.
    pub fn validate(&self) -> Result<(), String> {
        self.nats.check(&self.nats_url)?;
        if self.publish_queue_timeout >= self.request_timeout {
            return Err(format!(
                "PUBLISH_QUEUE_TIMEOUT ({:?}) must be shorter than REQUEST_TIMEOUT ({:?}): a \
                 request waiting for a publish slot would get 408 instead of 503 + Retry-After; \
                 lower PUBLISH_QUEUE_TIMEOUT or raise REQUEST_TIMEOUT",
                self.publish_queue_timeout, self.request_timeout
            ));
        }
        if let Some(out) = &self.output_subject_prefix {
            let overlaps = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}."));
            if overlaps(out, &self.subject_prefix) || overlaps(&self.subject_prefix, out) {
                return Err(format!(
                    "OUTPUT_SUBJECT_PREFIX ({out:?}) overlaps SUBJECT_PREFIX ({:?}): the stream \
                     out would publish into the stream it reads from; choose a prefix that is \
                     neither within nor above it (e.g. \"unique\")",
                    self.subject_prefix
                ));
            }
            if self.output_stream_name == self.stream_name {
                return Err(format!(
                    "OUTPUT_STREAM_NAME ({:?}) is STREAM_NAME: the stream out needs a stream of \
                     its own",
                    self.output_stream_name
                ));
            }
        }
        let batch_bytes = u64::from(self.batch_size)
            .saturating_mul(u64::from(self.max_payload_bytes) + WAL_ENTRY_OVERHEAD);
        if self.wal_max_size < batch_bytes {
            return Err(format!(
                "WAL_MAX_SIZE ({} bytes) cannot hold one batch, so the WAL would report full \
                 forever: BATCH_SIZE ({}) x (MAX_PAYLOAD_BYTES ({}) + {} bytes per record) = \
                 {batch_bytes} bytes; raise WAL_MAX_SIZE or lower BATCH_SIZE or MAX_PAYLOAD_BYTES",
                self.wal_max_size, self.batch_size, self.max_payload_bytes, WAL_ENTRY_OVERHEAD
            ));
        }
        let event_bytes = u64::from(self.max_payload_bytes) + WAL_ENTRY_OVERHEAD;
        if self.stream_max_msg_size != 0 && u64::from(self.stream_max_msg_size) < event_bytes {
            return Err(format!(
                "STREAM_MAX_MSG_SIZE ({} bytes) is smaller than one valid event can be: \
                 MAX_PAYLOAD_BYTES ({}) + {} bytes for the other fields = {event_bytes} bytes, \
                 so the stream would refuse valid events; raise STREAM_MAX_MSG_SIZE or lower \
                 MAX_PAYLOAD_BYTES",
                self.stream_max_msg_size, self.max_payload_bytes, WAL_ENTRY_OVERHEAD
            ));
        }
        if self.stream_max_bytes != 0 && self.stream_max_bytes < event_bytes {
            return Err(format!(
                "STREAM_MAX_BYTES ({} bytes) cannot hold one event of MAX_PAYLOAD_BYTES ({}) + \
                 {} bytes; raise STREAM_MAX_BYTES (0 = no limit)",
                self.stream_max_bytes, self.max_payload_bytes, WAL_ENTRY_OVERHEAD
            ));
        }
        Ok(())
    }
}

/// The stream's duplicate window (`broker::stream_config`): JetStream refuses a `max_age`
/// shorter than it, and `Nats-Msg-Id` idempotency needs it whole.
pub const STREAM_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Room a WAL record takes besides its payload, at most: the other event fields (255
/// characters each, escaped), or a dead letter's 8 KiB of raw bytes written as numbers plus
/// its subject and reason.
pub const WAL_ENTRY_OVERHEAD: u64 = 48 * 1024;

/// The longest `RETENTION` (100 years): beyond it the cutoff time is not representable.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A duration that must not be zero (a zero timeout fails everything, a zero interval spins).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(d)
}

fn parse_retention(s: &str) -> Result<Duration, String> {
    let d = parse_positive_duration(s)?;
    if d > MAX_RETENTION {
        return Err(format!(
            "{s:?} is longer than 100 years (36500d); unset RETENTION to keep everything"
        ));
    }
    Ok(d)
}

/// `STREAM_MAX_AGE`: `0` (no limit) or at least the duplicate window, which JetStream
/// refuses to exceed `max_age`.
fn parse_stream_max_age(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !d.is_zero() && d < STREAM_DUPLICATE_WINDOW {
        return Err(format!(
            "{s:?} is shorter than the stream's 2m duplicate window; use at least 2m, or 0 for \
             no limit"
        ));
    }
    Ok(d)
}

/// A size in bytes: a bare number, or with a binary unit (`KiB`, `MiB`, `GiB`, `TiB`; `K`, `M`,
/// `G`, `T` mean the same).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (use e.g. 262144, 256KiB, 10GiB)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => {
            return Err(format!(
                "{s:?} has unknown unit {other:?} (use KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .filter(|b| i64::try_from(*b).is_ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `STREAM_MAX_MSG_SIZE`: JetStream holds it in 32 bits.
fn parse_msg_size(s: &str) -> Result<u32, String> {
    let b = parse_bytes(s)?;
    u32::try_from(b)
        .ok()
        .filter(|b| i32::try_from(*b).is_ok())
        .ok_or_else(|| format!("{s:?} is larger than JetStream allows (2 GiB - 1)"))
}

/// A bearer token: an empty one would silently switch authentication off.
fn parse_token(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the token is empty; unset the variable to leave the endpoints open".into());
    }
    Ok(s.to_owned())
}

/// Parses `500ms`, `5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (use e.g. 500ms, 5s, 2m, 1h)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => {
            return Err(format!(
                "{s:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(d)
}

fn parse_nats_url(s: &str) -> Result<String, String> {
    for part in s.split(',') {
        let part = part.trim();
        let rest = part
            .strip_prefix("nats://")
            .or_else(|| part.strip_prefix("tls://"))
            .unwrap_or(part);
        let hostport = rest.rsplit('@').next().unwrap_or(rest);
        let ok = !hostport.is_empty()
            && hostport
                .rsplit_once(':')
                .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                .unwrap_or(!hostport.contains('/'));
        if !ok {
            return Err(format!(
                "{:?} is not a NATS URL (expected nats://host:port, comma-separated for a cluster)",
                redact_url(part)
            ));
        }
    }
    Ok(s.to_owned())
}

fn parse_database_url(s: &str) -> Result<String, String> {
    use std::str::FromStr;
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err(format!("{:?} is not a postgres:// URL", redact_url(s)));
    }
    sqlx::postgres::PgConnectOptions::from_str(s)
        .map_err(|e| format!("{:?} is not a valid PostgreSQL URL: {e}", redact_url(s)))?;
    check_tls_files(s)?;
    Ok(s.to_owned())
}

/// The certificate and key files named in a PostgreSQL URL can be read: otherwise every
/// connection attempt would fail with a bare "No such file or directory", retried forever.
fn check_tls_files(s: &str) -> Result<(), String> {
    const FILE_KEYS: &[&str] = &[
        "sslrootcert",
        "ssl-root-cert",
        "ssl-ca",
        "sslcert",
        "ssl-cert",
        "sslkey",
        "ssl-key",
    ];
    let Ok(url) = url::Url::parse(s) else {
        return Ok(());
    };
    for (key, value) in url.query_pairs() {
        // sqlx also takes the PEM text itself in place of a file name.
        if FILE_KEYS.contains(&key.as_ref()) && !value.starts_with("-----BEGIN") {
            std::fs::File::open(value.as_ref())
                .map_err(|e| format!("{key}={value}: cannot read the file: {e}"))?;
        }
    }
    Ok(())
}

fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "{s:?} must be non-empty and use only A-Z a-z 0-9 _ -"
        ));
    }
    Ok(s.to_owned())
}

fn parse_prefix(s: &str) -> Result<String, String> {
    shared::event::validate_topic(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{s:?} is not a valid subject prefix: {}", e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Cli::try_parse_args_from(["aggregator", "--batch-timeout", "soon"]).unwrap_err();
        assert!(err.to_string().contains("BATCH_TIMEOUT"), "{err}");
        let err =
            Cli::try_parse_args_from(["aggregator", "--database-url", "mysql://x"]).unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
        let err = Cli::try_parse_args_from(["aggregator", "--workers", "0"]).unwrap_err();
        assert!(err.to_string().contains("WORKERS"), "{err}");
        let err = Cli::try_parse_args_from(["aggregator", "--nats-url", "nats://:x"]).unwrap_err();
        assert!(err.to_string().contains("NATS_URL"), "{err}");
        let url = "postgres://u:s3cret@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem";
        let err = Cli::try_parse_args_from(["aggregator", "--database-url", url]).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("DATABASE_URL") && err.contains("sslrootcert"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        let err = Cli::try_parse_args_from(["aggregator", "--nats-url", "nats://u:s3cret@:x"])
            .unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        for var in [
            "write-timeout",
            "request-timeout",
            "health-check-interval",
            "ack-wait",
            "shutdown-timeout",
        ] {
            let err =
                Cli::try_parse_args_from(["aggregator", &format!("--{var}"), "0ms"]).unwrap_err();
            assert!(err.to_string().contains("more than zero"), "{err}");
        }
        let err = Cli::try_parse_args_from(["aggregator", "--retention", "40000d"]).unwrap_err();
        assert!(err.to_string().contains("RETENTION"), "{err}");
        let err = Cli::try_parse_args_from(["aggregator", "--api-token", ""]).unwrap_err();
        assert!(err.to_string().contains("API_TOKEN"), "{err}");
        let err = Cli::try_parse_args_from(["aggregator", "--api-read-token", " "]).unwrap_err();
        assert!(err.to_string().contains("API_READ_TOKEN"), "{err}");
        let err = Cli::try_parse_args_from(["aggregator", "--shutdown-timeout", "0"]).unwrap_err();
        assert!(err.to_string().contains("SHUTDOWN_TIMEOUT"), "{err}");
        let err = Cli::try_parse_args_from(["aggregator", "--max-retries", "0"]).unwrap_err();
        assert!(err.to_string().contains("MAX_RETRIES"), "{err}");
    }

    #[test]
    fn the_publish_queue_timeout_is_shorter_than_the_request_timeout() {
        let config = |args: &[&str]| {
            let mut all = vec!["aggregator"];
            all.extend_from_slice(args);
            Cli::try_parse_args_from(all).unwrap().config
        };
        let c = config(&[]);
        assert_eq!(c.publish_queue_timeout, Duration::from_secs(1));
        c.validate().unwrap();
        let c = config(&["--publish-queue-timeout", "0"]);
        assert_eq!(c.publish_queue_timeout, Duration::ZERO);
        c.validate().unwrap();
        config(&["--publish-queue-timeout", "29s"])
            .validate()
            .unwrap();
        for args in [
            &["--publish-queue-timeout", "30s"][..],
            &["--publish-queue-timeout", "2s", "--request-timeout", "1s"][..],
        ] {
            let err = config(args).validate().unwrap_err();
            assert!(
                err.starts_with("PUBLISH_QUEUE_TIMEOUT") && err.contains("REQUEST_TIMEOUT"),
                "{args:?}: {err}"
            );
        }
        let err = Cli::try_parse_args_from(["aggregator", "--publish-queue-timeout", "soon"])
            .unwrap_err();
        assert!(err.to_string().contains("PUBLISH_QUEUE_TIMEOUT"), "{err}");
    }

    #[test]
    fn a_wal_too_small_for_one_batch_is_refused() {
        let cli = Cli::try_parse_args_from(["aggregator", "--wal-max-size", "1000"]).unwrap();
        let err = cli.config.validate().unwrap_err();
        assert!(err.starts_with("WAL_MAX_SIZE"), "{err}");
        let fits = [
            "aggregator",
            "--wal-max-size",
            "1024000",
            "--batch-size",
            "20",
            "--max-payload-bytes",
            "2048",
        ];
        Cli::try_parse_args_from(fits)
            .unwrap()
            .config
            .validate()
            .unwrap();
        Cli::try_parse_args_from(["aggregator"])
            .unwrap()
            .config
            .validate()
            .unwrap();
    }

    #[test]
    fn settings_are_accepted_after_a_subcommand() {
        let cli = Cli::try_parse_args_from([
            "aggregator",
            "redrive",
            "--database-url",
            "postgres://u@db:5432/x",
            "--dry-run",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.config.database_url, "postgres://u@db:5432/x");
        assert_eq!(cli.config.log_format, LogFormat::Json);
        assert!(matches!(
            cli.command,
            Some(Command::Redrive { dry_run: true, .. })
        ));
        let cli = Cli::try_parse_args_from(["aggregator", "migrate", "--workers", "7"]).unwrap();
        assert_eq!(cli.config.workers, 7);
        // Still checked there: a bad value names its variable.
        let err =
            Cli::try_parse_args_from(["aggregator", "migrate", "--workers", "0"]).unwrap_err();
        assert!(err.to_string().contains("WORKERS"), "{err}");
    }

    #[test]
    fn a_log_format_typo_is_an_error() {
        let err = Cli::try_parse_args_from(["aggregator", "--log-format", "jsn"]).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("LOG_FORMAT") && err.contains("json"), "{err}");
    }

    #[test]
    fn stream_limits_parse_with_zero_for_no_limit() {
        let c = Cli::try_parse_args_from(["aggregator"]).unwrap().config;
        assert_eq!(c.stream_max_age, Duration::from_secs(7 * 86_400));
        assert_eq!(c.stream_max_bytes, 1024 * 1024 * 1024);
        assert_eq!(c.stream_max_msg_size, 256 * 1024);
        let c = Cli::try_parse_args_from([
            "aggregator",
            "--stream-max-age",
            "0",
            "--stream-max-bytes",
            "0",
            "--stream-max-msg-size",
            "0",
        ])
        .unwrap()
        .config;
        assert_eq!(c.stream_max_age, Duration::ZERO);
        assert_eq!(c.stream_max_bytes, 0);
        assert_eq!(c.stream_max_msg_size, 0);
        c.validate().unwrap();
        let c = Cli::try_parse_args_from([
            "aggregator",
            "--stream-max-age",
            "2m",
            "--stream-max-bytes",
            "512MiB",
            "--stream-max-msg-size",
            "1048576",
        ])
        .unwrap()
        .config;
        assert_eq!(c.stream_max_age, Duration::from_secs(120));
        assert_eq!(c.stream_max_bytes, 512 * 1024 * 1024);
        assert_eq!(c.stream_max_msg_size, 1_048_576);
        assert_eq!(parse_bytes("3K"), Ok(3072));
        assert_eq!(parse_bytes("1TiB"), Ok(1 << 40));
    }

    #[test]
    fn bad_stream_limits_name_the_variable() {
        for (flag, value, var) in [
            ("--stream-max-age", "90s", "STREAM_MAX_AGE"),
            ("--stream-max-age", "soon", "STREAM_MAX_AGE"),
            ("--stream-max-bytes", "10GB", "STREAM_MAX_BYTES"),
            ("--stream-max-bytes", "1.5GiB", "STREAM_MAX_BYTES"),
            ("--stream-max-bytes", "99999999TiB", "STREAM_MAX_BYTES"),
            ("--stream-max-msg-size", "2GiB", "STREAM_MAX_MSG_SIZE"),
        ] {
            let err = Cli::try_parse_args_from(["aggregator", flag, value]).unwrap_err();
            assert!(err.to_string().contains(var), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn a_stream_message_limit_below_one_event_is_refused() {
        // The default payload limit (64 KiB) + 48 KiB for the other fields = 112 KiB.
        let small = ["aggregator", "--stream-max-msg-size", "114687"];
        let err = Cli::try_parse_args_from(small)
            .unwrap()
            .config
            .validate()
            .unwrap_err();
        assert!(
            err.starts_with("STREAM_MAX_MSG_SIZE") && err.contains("MAX_PAYLOAD_BYTES (65536)"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let fits = ["aggregator", "--stream-max-msg-size", "114688"];
        Cli::try_parse_args_from(fits)
            .unwrap()
            .config
            .validate()
            .unwrap();
        let bigger_payload = [
            "aggregator",
            "--max-payload-bytes",
            "262144",
            "--batch-size",
            "100",
        ];
        let err = Cli::try_parse_args_from(bigger_payload)
            .unwrap()
            .config
            .validate()
            .unwrap_err();
        assert!(err.starts_with("STREAM_MAX_MSG_SIZE"), "{err}");
        let err = Cli::try_parse_args_from(["aggregator", "--stream-max-bytes", "1KiB"])
            .unwrap()
            .config
            .validate()
            .unwrap_err();
        assert!(err.starts_with("STREAM_MAX_BYTES"), "{err}");
    }

    #[test]
    fn defaults_match_design() {
        let cli = Cli::try_parse_args_from(["aggregator"]).unwrap();
        let c = cli.config;
        assert_eq!(c.workers, 4);
        assert_eq!(c.batch_size, 500);
        assert_eq!(c.batch_timeout, Duration::from_millis(20));
        assert_eq!(c.max_buffer_size, 10_000);
        assert_eq!(c.wal_max_size, 104_857_600);
        assert_eq!(c.circuit_breaker_timeout, Duration::from_secs(30));
        assert_eq!(c.stream_name, "EVENTS");
        assert_eq!(c.max_events_per_request, 10_000);
        assert_eq!(c.api_read_token, None);
        assert_eq!(c.api_read_pool_size, 4);
        assert_eq!(c.api_read_timeout, Duration::from_secs(5));
        assert_eq!(c.http_header_timeout, Duration::from_secs(10));
        assert_eq!(c.http_max_connections, 1024);
        // Below compose's `stop_grace_period: 30s`, so the drain ends before a SIGKILL.
        assert_eq!(c.shutdown_timeout, Duration::from_secs(25));
    }
}
