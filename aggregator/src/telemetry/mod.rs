//! Logging and metrics set-up.
//!
//! Logs go to stderr, JSON with `LOG_FORMAT=json`, human-readable otherwise (coloured only on
//! a terminal); `RUST_LOG` selects levels (default [`DEFAULT_LOG_FILTER`]). Metrics are recorded through the `metrics` facade into a
//! Prometheus recorder whose handle renders `GET /metrics`.
//!
//! * [`names`]: every metric name (Prometheus conventions: `_total` counters, base units).
//! * [`describe`]: the `# HELP` text and unit of each, and the series registered at start-up.
//! * [`process`]: the standard `process_*` metrics, read from `/proc/self` at scrape time.

pub mod describe;
pub mod process;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use shared::logging::LogFormat;

/// Levels when `RUST_LOG` is unset: the libraries' chatter kept to warnings.
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn,async_nats=warn";

pub fn init_logging(format: LogFormat) {
    shared::logging::init(format, DEFAULT_LOG_FILTER, std::io::stderr);
}

/// Installs the global Prometheus recorder and returns the handle that renders it.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("aggregator_batch_size".to_owned()),
            &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0],
        )?
        .install_recorder()?;
    describe::describe_all();
    Ok(handle)
}

/// Bounds the distinct values of the `topic` metric label: the first `max` topics seen get
/// their own series, the rest share `topic="other"`, so a flood of topics cannot grow the
/// metrics registry without limit.
pub struct TopicLabels {
    max: usize,
    admitted: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl TopicLabels {
    pub const OTHER: &'static str = "other";

    pub fn new(max: usize) -> Self {
        Self {
            max,
            admitted: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The label value to use for `topic`.
    pub fn label(&self, topic: &str) -> String {
        let Ok(mut admitted) = self.admitted.lock() else {
            return Self::OTHER.to_owned();
        };
        if admitted.contains(topic) {
            return topic.to_owned();
        }
        if admitted.len() < self.max && topic != Self::OTHER {
            admitted.insert(topic.to_owned());
            return topic.to_owned();
        }
        Self::OTHER.to_owned()
    }
}

/// Names of the metrics this service records (Prometheus conventions).
pub mod names {
    pub const RECEIVED: &str = "aggregator_events_received_total";
    pub const UNIQUE: &str = "aggregator_events_unique_total";
    pub const DUPLICATE: &str = "aggregator_events_duplicate_total";
    pub const DEAD_LETTERS: &str = "aggregator_dead_letters_total";
    pub const REDELIVERED_SKIPPED: &str = "aggregator_redelivered_skipped_total";
    pub const BATCH_SIZE: &str = "aggregator_batch_size";
    pub const BATCH_WRITE_SECONDS: &str = "aggregator_batch_write_seconds";
    pub const BATCH_RETRIES: &str = "aggregator_batch_retries_total";
    pub const BATCH_FAILURES: &str = "aggregator_batch_failures_total";
    pub const LAG_SECONDS: &str = "aggregator_end_to_end_lag_seconds";
    pub const BUFFER_SIZE: &str = "aggregator_buffer_size";
    pub const CONSUMER_PENDING: &str = "aggregator_consumer_pending";
    pub const WAL_RECORDS: &str = "aggregator_wal_records";
    pub const WAL_BYTES: &str = "aggregator_wal_bytes";
    pub const BREAKER_STATE: &str = "aggregator_circuit_breaker_state";
    pub const BREAKER_TRANSITIONS: &str = "aggregator_circuit_breaker_transitions_total";
    pub const WAL_APPENDED: &str = "aggregator_wal_appended_records_total";
    pub const WAL_REPLAYED: &str = "aggregator_wal_replayed_records_total";
    pub const WAL_REPLAY_SECONDS: &str = "aggregator_wal_replay_seconds";
    pub const WAL_TRUNCATED_BYTES: &str = "aggregator_wal_truncated_bytes_total";
    pub const WAL_CORRUPT: &str = "aggregator_wal_corrupt_records_total";
    pub const WAL_RECOVERED: &str = "aggregator_wal_recovered_from_stream_total";
    pub const WAL_UNRECOVERABLE: &str = "aggregator_wal_unrecoverable_records_total";
    pub const WAL_FULL: &str = "aggregator_wal_full_total";
    pub const WAL_REPLAY_REFUSED: &str = "aggregator_wal_replay_refused_total";
    pub const POISON_ISOLATED: &str = "aggregator_poison_messages_total";
    pub const MAX_DELIVER_EXCEEDED: &str = "aggregator_max_deliver_exceeded_total";
    pub const PUBLISHED: &str = "aggregator_http_published_events_total";
    pub const PUBLISH_QUEUED: &str = "aggregator_http_publish_queued";
    pub const HTTP_REQUESTS: &str = "aggregator_http_requests_total";
    pub const HTTP_DURATION: &str = "aggregator_http_request_duration_seconds";
    pub const BUILD_INFO: &str = "aggregator_build_info";
    pub const OUTBOX_PUBLISHED: &str = "aggregator_outbox_published_total";
    pub const OUTBOX_LAG_ROWS: &str = "aggregator_outbox_lag_rows";
    pub const OUTBOX_LAG_SECONDS: &str = "aggregator_outbox_lag_seconds";
    pub const OUTBOX_PUBLISHER: &str = "aggregator_outbox_publisher";
    pub const EVENT_STREAMS: &str = "aggregator_event_streams";
    pub const EVENT_STREAMS_DROPPED: &str = "aggregator_event_streams_dropped_total";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_labels_are_capped() {
        let l = TopicLabels::new(2);
        assert_eq!(l.label("a"), "a");
        assert_eq!(l.label("b"), "b");
        assert_eq!(l.label("c"), "other");
        assert_eq!(l.label("a"), "a");
        assert_eq!(TopicLabels::new(0).label("a"), "other");
    }
}
