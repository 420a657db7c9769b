//! The `# HELP` line and unit of every metric this service records, and the series that
//! exist from start-up.
//!
//! Prometheus convention: a series should exist (at 0) before its first event, so that
//! `rate()` and alerts see a 0 rather than nothing, and a dashboard has no "no data" holes.
//! Every series without labels, or with a small fixed label set, is therefore registered
//! here; series labelled by topic, route or status appear with their first value. The
//! breaker's per-state gauge is set by the breaker itself (`guard::breaker`), which knows
//! its states.

use super::names::*;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// `(name, unit, help)` of every counter.
const COUNTERS: &[(&str, Unit, &str)] = &[
    (RECEIVED, Unit::Count, "Stream messages counted in Postgres (committed batches and replayed WAL records), by topic."),
    (UNIQUE, Unit::Count, "Events stored for the first time, by topic."),
    (DUPLICATE, Unit::Count, "Events dropped as duplicates of a stored (topic, event_id), by topic."),
    (DEAD_LETTERS, Unit::Count, "Messages recorded as dead letters (invalid, rejected by the database, or doomed after MAX_DELIVER)."),
    (REDELIVERED_SKIPPED, Unit::Count, "Redelivered stream messages recognised as already counted and skipped."),
    (BATCH_RETRIES, Unit::Count, "Batch write attempts after a batch's first one, each following a failed attempt (the retry schedule)."),
    (BATCH_FAILURES, Unit::Count, "Batches whose write attempts all failed (schedule exhausted, probe failed, database refused the stream, or shutdown), appended to the WAL instead."),
    (BREAKER_TRANSITIONS, Unit::Count, "Circuit breaker transitions, by the state entered (closed, open, half_open)."),
    (WAL_APPENDED, Unit::Count, "Records appended (fsynced) to the write-ahead log."),
    (WAL_REPLAYED, Unit::Count, "WAL records replayed into Postgres."),
    (WAL_TRUNCATED_BYTES, Unit::Bytes, "Bytes of torn WAL tails cut off when a segment was opened."),
    (WAL_CORRUPT, Unit::Count, "Damaged WAL lines found during replay."),
    (WAL_RECOVERED, Unit::Count, "Damaged WAL lines whose message was fetched again from the stream."),
    (WAL_UNRECOVERABLE, Unit::Count, "Damaged WAL lines whose message the stream no longer holds."),
    (WAL_FULL, Unit::Count, "WAL appends refused by WAL_MAX_SIZE (the batch waits unacknowledged: backpressure)."),
    (WAL_REPLAY_REFUSED, Unit::Count, "WAL segments the database refused (records of a stream it does not know); kept for an operator."),
    (POISON_ISOLATED, Unit::Count, "Events the database rejected, isolated from their batch and dead-lettered."),
    (MAX_DELIVER_EXCEEDED, Unit::Count, "Messages delivered more than MAX_DELIVER times and settled alone; verdict=solo: tried alone, verdict=dead_letter: came back after their solo attempt and dead-lettered unprocessed."),
    (PUBLISHED, Unit::Count, "Events accepted by POST /publish (acknowledged by the stream)."),
    (HTTP_REQUESTS, Unit::Count, "HTTP requests answered, by route template (unmatched for unknown paths), method and status."),
    (OUTBOX_PUBLISHED, Unit::Count, "Events this replica published to the output stream (the stream out), each acknowledged by it."),
    (EVENT_STREAMS_DROPPED, Unit::Count, "Live tails (GET /events/stream) closed because their client did not keep up."),
];

/// `(name, unit, help)` of every gauge.
const GAUGES: &[(&str, Unit, &str)] = &[
    (BUFFER_SIZE, Unit::Count, "Messages pulled from JetStream and not yet taken by a worker."),
    (CONSUMER_PENDING, Unit::Count, "Messages of the stream the durable consumer has not delivered yet."),
    (WAL_RECORDS, Unit::Count, "Records in the WAL (appended, not yet replayed)."),
    (WAL_BYTES, Unit::Bytes, "Bytes in the WAL."),
    (PUBLISH_QUEUED, Unit::Count, "POST /publish requests waiting for a slot (MAX_CONCURRENT_PUBLISH), at most PUBLISH_QUEUE_TIMEOUT each."),
    (BREAKER_STATE, Unit::Count, "Circuit breaker state: one series per state (closed, open, half_open), 1 for the current one, 0 for the others."),
    (OUTBOX_LAG_ROWS, Unit::Count, "Stored events not yet published to the output stream (counted up to 100,000)."),
    (OUTBOX_LAG_SECONDS, Unit::Seconds, "Age of the next stored event to publish to the output stream, the first not yet published in commit order (0 when none)."),
    (OUTBOX_PUBLISHER, Unit::Count, "1 while this replica is the one publisher of the stream out, else 0."),
    (EVENT_STREAMS, Unit::Count, "Live tails (GET /events/stream) open now."),
    (BUILD_INFO, Unit::Count, "Always 1; labels: version of the aggregator, git_sha of its build (unknown without git)."),
];

/// `(name, unit, help)` of every histogram.
const HISTOGRAMS: &[(&str, Unit, &str)] = &[
    (BATCH_SIZE, Unit::Count, "Messages per batch made durable."),
    (
        BATCH_WRITE_SECONDS,
        Unit::Seconds,
        "Duration of a committed batch transaction.",
    ),
    (
        LAG_SECONDS,
        Unit::Seconds,
        "Time from a message's publication in the stream to its durability (commit or WAL).",
    ),
    (
        WAL_REPLAY_SECONDS,
        Unit::Seconds,
        "Duration of one WAL replay pass.",
    ),
    (
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration, by route template and status.",
    ),
];

/// The version and git commit this binary was built from (`build.rs`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_SHA: &str = env!("AGGREGATOR_GIT_SHA");

/// Describes every metric, and registers the series that must exist from the start.
pub fn describe_all() {
    for &(name, unit, help) in COUNTERS {
        describe_counter!(name, unit, help);
    }
    for &(name, unit, help) in GAUGES {
        describe_gauge!(name, unit, help);
    }
    for &(name, unit, help) in HISTOGRAMS {
        describe_histogram!(name, unit, help);
    }
    for name in [
        DEAD_LETTERS,
        REDELIVERED_SKIPPED,
        BATCH_RETRIES,
        BATCH_FAILURES,
        WAL_APPENDED,
        WAL_REPLAYED,
        WAL_TRUNCATED_BYTES,
        WAL_CORRUPT,
        WAL_RECOVERED,
        WAL_UNRECOVERABLE,
        WAL_FULL,
        WAL_REPLAY_REFUSED,
        POISON_ISOLATED,
        PUBLISHED,
        OUTBOX_PUBLISHED,
        EVENT_STREAMS_DROPPED,
    ] {
        metrics::counter!(name).increment(0);
    }
    for to in ["closed", "open", "half_open"] {
        metrics::counter!(BREAKER_TRANSITIONS, "to" => to).increment(0);
    }
    for verdict in ["solo", "dead_letter"] {
        metrics::counter!(MAX_DELIVER_EXCEEDED, "verdict" => verdict).increment(0);
    }
    for name in [
        BUFFER_SIZE,
        CONSUMER_PENDING,
        WAL_RECORDS,
        WAL_BYTES,
        PUBLISH_QUEUED,
        OUTBOX_LAG_ROWS,
        OUTBOX_LAG_SECONDS,
        OUTBOX_PUBLISHER,
        EVENT_STREAMS,
    ] {
        // Registers at 0 without overwriting a value set earlier (the WAL's, at start-up).
        metrics::gauge!(name).increment(0.0);
    }
    metrics::gauge!(BUILD_INFO, "version" => VERSION, "git_sha" => GIT_SHA).set(1.0);
    for name in [
        BATCH_SIZE,
        BATCH_WRITE_SECONDS,
        LAG_SECONDS,
        WAL_REPLAY_SECONDS,
    ] {
        // An empty histogram renders as zero buckets, count 0 and sum 0.
        let _ = metrics::histogram!(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_described_once() {
        let all: Vec<&str> = COUNTERS
            .iter()
            .chain(GAUGES)
            .chain(HISTOGRAMS)
            .map(|(n, _, _)| *n)
            .collect();
        let unique: std::collections::HashSet<&str> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a name described twice: {all:?}");
        for (name, _, help) in COUNTERS {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
            assert!(!help.is_empty());
        }
    }
}
