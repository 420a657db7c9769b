//! Each component's settings, derived once at start-up from the [`Config`] the operator
//! gave: a component sees what it needs and nothing else, and a value derived from several
//! variables (the pull batch, the consumer's ack-pending limit, the WAL segment size) is
//! computed in one place, with the reason next to it.

use crate::config::Config;
use shared::Limits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Every component's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreSettings,
    pub broker: BrokerSettings,
    pub intake: IntakeSettings,
    pub worker: WorkerSettings,
    pub guard: GuardSettings,
    pub wal: WalSettings,
    pub replay: ReplaySettings,
    pub housekeeping: HousekeepingSettings,
    pub api: ApiSettings,
    /// The stream out, when `OUTPUT_SUBJECT_PREFIX` turns it on.
    pub outbox: Option<OutboxSettings>,
    /// Longest wait for the drain after SIGTERM/SIGINT (`SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: Duration,
}

/// PostgreSQL.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub database_url: String,
    /// Connections the pool may open.
    pub pool_size: u32,
    /// The API's read pool: its connections and their `statement_timeout`.
    pub read_pool_size: u32,
    pub read_timeout: Duration,
}

/// NATS and the JetStream stream and consumer.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub nats_url: String,
    /// Authentication and TLS of the connection.
    pub nats: shared::nats::NatsArgs,
    pub stream_name: String,
    pub subject_prefix: String,
    pub consumer_name: String,
    pub stream_replicas: u8,
    /// The stream's limits as JetStream takes them: `max_age` 0, `max_bytes` and
    /// `max_msg_size` -1 mean no limit.
    pub stream_max_age: Duration,
    pub stream_max_bytes: i64,
    pub stream_max_msg_size: i32,
    pub ack_wait: Duration,
    /// Messages the consumer may have delivered but not had acknowledged.
    pub max_ack_pending: i64,
}

/// Pulling, decoding and routing messages to the workers.
#[derive(Debug, Clone)]
pub struct IntakeSettings {
    pub subject_prefix: String,
    pub limits: Limits,
    /// Messages asked for per pull request.
    pub pull_batch: usize,
    /// Workers, one buffer each.
    pub workers: usize,
    /// Capacity of each worker's buffer (`MAX_BUFFER_SIZE` shared out).
    pub buffer_per_worker: usize,
}

/// Batching and settling messages.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    pub batch_size: usize,
    pub batch_timeout: Duration,
    /// Deliveries after which a message is a suspect (tried alone).
    pub max_deliver: i64,
}

/// The write guard: breaker, retries, write timeout.
#[derive(Debug, Clone)]
pub struct GuardSettings {
    /// For the subject of an event the database rejected (it becomes a dead letter).
    pub subject_prefix: String,
    pub breaker_threshold: u32,
    pub breaker_timeout: Duration,
    /// Attempts per batch (`MAX_RETRIES`) and the first delay between them.
    pub attempts: u32,
    pub retry_delay: Duration,
    pub write_timeout: Duration,
}

/// The write-ahead log.
#[derive(Debug, Clone)]
pub struct WalSettings {
    pub path: PathBuf,
    /// Size at which the active segment is sealed and a new one started.
    pub segment_bytes: u64,
    pub max_bytes: u64,
}

/// The health monitor and WAL replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySettings {
    pub interval: Duration,
    /// Records per transaction.
    pub chunk: usize,
    /// Chunks written at once.
    pub lanes: usize,
}

/// Compaction and retention.
#[derive(Debug, Clone, Copy)]
pub struct HousekeepingSettings {
    pub interval: Duration,
    pub retention: Option<Duration>,
}

/// The stream out: its output stream and how the publisher reads the stored events.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub subject_prefix: String,
    pub stream_name: String,
    pub stream_replicas: u8,
    /// As JetStream takes them: `max_age` 0 and `max_bytes` -1 mean no limit.
    pub stream_max_age: Duration,
    pub stream_max_bytes: i64,
    pub stream_max_msg_size: i32,
    /// Events per publishing round.
    pub batch: usize,
    pub poll_interval: Duration,
}

/// The HTTP API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub http_addr: SocketAddr,
    pub max_body_bytes: usize,
    pub max_events_per_request: usize,
    pub publish_timeout: Duration,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_publish: usize,
    /// Longest wait of a `POST /publish` for a slot; zero sheds at once.
    pub publish_queue_timeout: Duration,
    pub api_token: Option<String>,
    pub api_read_token: Option<String>,
    pub metrics_max_topics: usize,
    pub subject_prefix: String,
    pub limits: Limits,
    /// The output stream whose lag `/stats` reports, when the stream out is on.
    pub outbox_stream: Option<String>,
    /// Live tails: how many at once, and how often each looks for new events.
    pub max_event_streams: usize,
    pub tail_poll_interval: Duration,
}

impl Settings {
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            store: StoreSettings::from_config(c),
            broker: BrokerSettings::from_config(c),
            intake: IntakeSettings::from_config(c),
            worker: WorkerSettings {
                batch_size: c.batch_size as usize,
                batch_timeout: c.batch_timeout,
                max_deliver: c.max_deliver,
            },
            guard: GuardSettings {
                subject_prefix: c.subject_prefix.clone(),
                breaker_threshold: c.circuit_breaker_threshold,
                breaker_timeout: c.circuit_breaker_timeout,
                attempts: c.max_retries,
                retry_delay: c.retry_delay,
                write_timeout: c.write_timeout,
            },
            wal: WalSettings::from_config(c),
            replay: ReplaySettings {
                interval: c.health_check_interval,
                chunk: c.replay_batch as usize,
                lanes: usize::from(c.workers),
            },
            housekeeping: HousekeepingSettings {
                interval: c.compact_interval,
                retention: c.retention,
            },
            api: ApiSettings::from_config(c),
            outbox: OutboxSettings::from_config(c),
            shutdown_timeout: c.shutdown_timeout,
        }
    }
}

fn limits(c: &Config) -> Limits {
    Limits {
        max_payload_bytes: c.max_payload_bytes as usize,
    }
}

impl StoreSettings {
    fn from_config(c: &Config) -> Self {
        Self {
            database_url: c.database_url.clone(),
            // One connection per worker plus room for the monitor, housekeeping and the
            // health checks (API reads have a pool of their own: `read_pool_size`).
            pool_size: u32::from(c.workers) + 6,
            read_pool_size: c.api_read_pool_size,
            read_timeout: c.api_read_timeout,
        }
    }
}

impl BrokerSettings {
    fn from_config(c: &Config) -> Self {
        Self {
            nats_url: c.nats_url.clone(),
            nats: c.nats.clone(),
            stream_name: c.stream_name.clone(),
            subject_prefix: c.subject_prefix.clone(),
            consumer_name: c.consumer_name.clone(),
            stream_replicas: c.stream_replicas,
            stream_max_age: c.stream_max_age,
            // `0` (no limit) in the configuration; both are range-checked there.
            stream_max_bytes: no_limit_is_minus_one(c.stream_max_bytes),
            stream_max_msg_size: max_msg_size(c),
            ack_wait: c.ack_wait,
            // The buffer plus every worker's batch in flight, with room to spare so intake
            // never starves the workers.
            max_ack_pending: i64::from(c.max_buffer_size)
                + 2 * i64::from(c.workers) * i64::from(c.batch_size),
        }
    }
}

/// `0` (no limit) in the configuration is -1 for JetStream.
fn no_limit_is_minus_one(n: u64) -> i64 {
    match n {
        0 => -1,
        n => i64::try_from(n).unwrap_or(i64::MAX),
    }
}

/// `STREAM_MAX_MSG_SIZE` as JetStream takes it (-1: no limit), for both streams.
fn max_msg_size(c: &Config) -> i32 {
    match c.stream_max_msg_size {
        0 => -1,
        n => i32::try_from(n).unwrap_or(i32::MAX),
    }
}

impl OutboxSettings {
    fn from_config(c: &Config) -> Option<Self> {
        Some(Self {
            subject_prefix: c.output_subject_prefix.clone()?,
            stream_name: c.output_stream_name.clone(),
            stream_replicas: c.output_stream_replicas,
            stream_max_age: c.output_stream_max_age,
            stream_max_bytes: no_limit_is_minus_one(c.output_stream_max_bytes),
            // An output message is a stored event plus a few fields: the input's limit holds it
            // with room to spare.
            stream_max_msg_size: max_msg_size(c),
            batch: c.outbox_batch as usize,
            poll_interval: c.outbox_poll_interval,
        })
    }
}

impl IntakeSettings {
    fn from_config(c: &Config) -> Self {
        let workers = usize::from(c.workers);
        Self {
            subject_prefix: c.subject_prefix.clone(),
            limits: limits(c),
            // A pull batch near a worker batch, within what one pull request sensibly
            // carries: tiny pulls cost a round trip each, huge ones hold messages no worker
            // can take yet.
            pull_batch: (c.batch_size as usize).clamp(100, 2000),
            workers,
            buffer_per_worker: (c.max_buffer_size as usize / workers).max(1),
        }
    }
}

impl WalSettings {
    fn from_config(c: &Config) -> Self {
        Self {
            path: c.wal_path.clone(),
            // Eight segments to the limit, so replay can free space segment by segment long
            // before the limit; never tiny, never huge.
            segment_bytes: (c.wal_max_size / 8).clamp(64 * 1024, 16 * 1024 * 1024),
            max_bytes: c.wal_max_size,
        }
    }
}

impl ApiSettings {
    fn from_config(c: &Config) -> Self {
        Self {
            http_addr: c.http_addr,
            max_body_bytes: usize::try_from(c.max_body_bytes).unwrap_or(usize::MAX),
            max_events_per_request: c.max_events_per_request as usize,
            publish_timeout: c.publish_timeout,
            request_timeout: c.request_timeout,
            header_read_timeout: c.http_header_timeout,
            max_connections: c.http_max_connections as usize,
            max_concurrent_publish: c.max_concurrent_publish as usize,
            publish_queue_timeout: c.publish_queue_timeout,
            api_token: c.api_token.clone(),
            api_read_token: c.api_read_token.clone(),
            metrics_max_topics: c.metrics_max_topics as usize,
            subject_prefix: c.subject_prefix.clone(),
            limits: limits(c),
            outbox_stream: c
                .output_subject_prefix
                .as_ref()
                .map(|_| c.output_stream_name.clone()),
            max_event_streams: c.max_event_streams as usize,
            tail_poll_interval: c.outbox_poll_interval,
        }
    }
}
