//! The batch write: one transaction stores a batch of stream messages exactly once.
//!
//! In one transaction, for the messages of a batch:
//! 1. `processed_messages` gets one row per (stream incarnation, sequence) not seen before and
//!    above the incarnation's compacted `floor_seq` (or in one of its `skipped_ranges`). Only
//!    those messages count: a message JetStream redelivers after a crash between commit and
//!    ack finds its row and is skipped. The same message twice in one call (a redelivery that
//!    reached the WAL twice) counts once: the statement keeps one copy per sequence itself.
//! 2. `events` gets `INSERT .. ON CONFLICT (topic, event_id) DO NOTHING` for the counted ones;
//!    the rows actually inserted are the unique ones, the rest are duplicates.
//! 3. `topic_counters` gets the per-topic received/unique increments on this worker's shard.
//! 4. Dead letters (messages that failed decoding or validation) are recorded the same way.
//!
//! Rows are sorted (events by `(topic, event_id)`, processed rows by sequence) so concurrent
//! batches always take row locks in the same order and cannot deadlock on each other.
//!
//! The transaction first takes the compaction lock in shared mode, so compaction (which holds
//! it exclusively) can never delete a processed row between this statement's snapshot and its
//! insert (which would let a redelivered message count twice).
//!
//! A record of a stream incarnation the database does not know (a WAL replayed against
//! another or a restored database) is an error, [`WriteError::UnknownStreams`], never a
//! message silently taken as already processed.

use super::Store;
use crate::message::{DeadLetter, Record};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Counter shards per topic (`topic_counters.shard` runs 0..COUNTER_SHARDS); each writer
/// adds to its own.
pub const COUNTER_SHARDS: u16 = 64;

/// Advisory lock key shared by batch writers (shared mode) and compaction (exclusive mode).
pub const COMPACTION_LOCK: i64 = 0x6167_6772_636f_6d70; // "aggrcomp"

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Records of stream incarnations this database has never registered: replaying them
    /// here would count them against the wrong (or no) processed record.
    #[error(
        "records of stream ids {0:?}, which this database does not know (a WAL written \
         against another or an older database?)"
    )]
    UnknownStreams(Vec<i32>),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Per-topic counts of a committed batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct TopicDelta {
    pub topic: String,
    pub received: i64,
    pub unique: i64,
}

/// What a committed batch changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Messages counted for the first time.
    pub received: i64,
    /// Of those, events stored for the first time.
    pub unique: i64,
    /// Dead letters recorded for the first time.
    pub dead_lettered: i64,
    /// Messages skipped because they had already been counted (redeliveries).
    pub already_processed: i64,
    /// The counted messages by topic.
    pub topics: Vec<TopicDelta>,
}

impl BatchOutcome {
    pub fn duplicates(&self) -> i64 {
        self.received - self.unique
    }

    /// Both outcomes together (two committed parts of one batch).
    pub fn merged(mut self, other: BatchOutcome) -> BatchOutcome {
        for t in other.topics {
            match self.topics.iter_mut().find(|u| u.topic == t.topic) {
                Some(u) => {
                    u.received += t.received;
                    u.unique += t.unique;
                }
                None => self.topics.push(t),
            }
        }
        BatchOutcome {
            received: self.received + other.received,
            unique: self.unique + other.unique,
            dead_lettered: self.dead_lettered + other.dead_lettered,
            already_processed: self.already_processed + other.already_processed,
            topics: self.topics,
        }
    }
}

/// The exactly-once rule, written once for both statements: records the messages of CTE
/// `source` (columns `stream_id`, `seq`) in `processed_messages` and returns those recorded
/// now, which are the ones to count. A message may be counted when its sequence is above
/// its stream's floor, or at or below it in a range that was skipped without being
/// processed. Every stream id is known: [`write_batch`] checked them first.
fn fresh_cte(source: &str) -> String {
    format!(
        r#"fresh AS (
    INSERT INTO processed_messages (stream_id, stream_seq)
    SELECT b.stream_id, b.seq FROM {source} b JOIN streams s ON s.id = b.stream_id
    WHERE b.seq > s.floor_seq OR EXISTS (
        SELECT 1 FROM skipped_ranges k
        WHERE k.stream_id = b.stream_id AND b.seq BETWEEN k.first_seq AND k.last_seq)
    ORDER BY b.stream_id, b.seq
    ON CONFLICT DO NOTHING
    RETURNING stream_id, stream_seq
)"#
    )
}

fn insert_events_sql() -> String {
    format!(
        r#"
WITH batch AS (
    -- One copy per stream message: the same message twice in one call counts once.
    SELECT DISTINCT ON (stream_id, seq) *
    FROM unnest($2::int[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[],
                $7::text[], $8::text[], $9::text[])
        AS b(stream_id, seq, topic, event_id, ts, source, payload, traceparent)
    ORDER BY stream_id, seq
), {fresh}, counted AS (
    SELECT b.* FROM batch b JOIN fresh f ON f.stream_id = b.stream_id AND f.stream_seq = b.seq
), stored AS (
    INSERT INTO events (topic, event_id, ts, source, payload, traceparent)
    SELECT topic, event_id, ts, source, payload::jsonb, traceparent FROM counted
    ORDER BY topic, event_id
    ON CONFLICT (topic, event_id) DO NOTHING
    RETURNING topic
), counts AS (
    SELECT r.topic, r.n AS received, coalesce(u.n, 0) AS uniq
    FROM (SELECT topic, count(*) AS n FROM counted GROUP BY topic) r
    LEFT JOIN (SELECT topic, count(*) AS n FROM stored GROUP BY topic) u USING (topic)
), bump AS (
    INSERT INTO topic_counters AS c (topic, shard, received, unique_processed)
    SELECT topic, $1, received, uniq FROM counts ORDER BY topic
    ON CONFLICT (topic, shard) DO UPDATE
        SET received = c.received + excluded.received,
            unique_processed = c.unique_processed + excluded.unique_processed
)
SELECT topic, received, uniq AS "unique" FROM counts
"#,
        fresh = fresh_cte("batch")
    )
}

fn insert_dead_letters_sql() -> String {
    format!(
        r#"
WITH dl AS (
    SELECT DISTINCT ON (stream_id, seq) *
    FROM unnest($2::int[], $3::bigint[], $4::text[], $5::bytea[], $6::int[], $7::text[])
        AS d(stream_id, seq, subject, raw, raw_size, reason)
    ORDER BY stream_id, seq
), {fresh}, ins AS (
    INSERT INTO dead_letters (stream_id, stream_seq, subject, raw, raw_size, reason)
    SELECT d.stream_id, d.seq, d.subject, d.raw, d.raw_size, d.reason
    FROM dl d JOIN fresh f ON f.stream_id = d.stream_id AND f.stream_seq = d.seq
    ORDER BY d.stream_id, d.seq
    ON CONFLICT DO NOTHING
    RETURNING 1
), bump AS (
    INSERT INTO dead_letter_counters AS c (shard, count)
    SELECT $1, count(*) FROM ins HAVING count(*) > 0
    ON CONFLICT (shard) DO UPDATE SET count = c.count + excluded.count
)
SELECT count(*)::bigint FROM ins
"#,
        fresh = fresh_cte("dl")
    )
}

/// The statements, built once.
fn statements() -> &'static (String, String) {
    static SQL: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    SQL.get_or_init(|| (insert_events_sql(), insert_dead_letters_sql()))
}

impl Store {
    /// Writes one batch in one transaction. `shard` is the caller's counter shard.
    ///
    /// Safe to call again with the same records (after an ambiguous failure, or from WAL
    /// replay): anything already counted is skipped and reported in `already_processed`.
    pub async fn write_batch(
        &self,
        shard: i16,
        records: &[Record],
        dead: &[DeadLetter],
    ) -> Result<BatchOutcome, WriteError> {
        write_batch(&self.pool, shard, records, dead).await
    }
}

async fn write_batch(
    pool: &PgPool,
    shard: i16,
    records: &[Record],
    dead: &[DeadLetter],
) -> Result<BatchOutcome, WriteError> {
    let mut outcome = BatchOutcome::default();
    if records.is_empty() && dead.is_empty() {
        return Ok(outcome);
    }
    let mut stream_ids: Vec<i32> = records
        .iter()
        .map(|r| r.stream_id)
        .chain(dead.iter().map(|d| d.stream_id))
        .collect();
    stream_ids.sort_unstable();
    stream_ids.dedup();
    let mut tx = pool.begin().await?;
    // One round trip: the compaction lock (shared), and the batch's stream ids this database
    // does not know (stream rows are never deleted, so a check at the start holds to the end).
    let unknown: Vec<i32> = sqlx::query_scalar(
        "SELECT array(SELECT x FROM unnest($2::int[]) x
                      WHERE NOT EXISTS (SELECT 1 FROM streams WHERE id = x) ORDER BY x)
         FROM pg_advisory_xact_lock_shared($1)",
    )
    .bind(COMPACTION_LOCK)
    .bind(&stream_ids)
    .fetch_one(&mut *tx)
    .await?;
    if !unknown.is_empty() {
        return Err(WriteError::UnknownStreams(unknown));
    }
    if !records.is_empty() {
        let topics = insert_events(&mut tx, shard, records).await?;
        outcome.received = topics.iter().map(|t| t.received).sum();
        outcome.unique = topics.iter().map(|t| t.unique).sum();
        outcome.already_processed = records.len() as i64 - outcome.received;
        outcome.topics = topics;
    }
    if !dead.is_empty() {
        let n = insert_dead_letters(&mut tx, shard, dead).await?;
        outcome.dead_lettered = n;
        outcome.already_processed += dead.len() as i64 - n;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// The events statement, column by column: what it counted, per topic.
async fn insert_events(
    tx: &mut sqlx::PgConnection,
    shard: i16,
    records: &[Record],
) -> sqlx::Result<Vec<TopicDelta>> {
    let n = records.len();
    let mut stream_ids = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut topics = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut ts: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut traces = Vec::with_capacity(n);
    for r in records {
        stream_ids.push(r.stream_id);
        seqs.push(r.seq);
        topics.push(r.event.topic());
        ids.push(r.event.event_id());
        ts.push(r.event.timestamp());
        sources.push(r.event.source());
        payloads.push(r.event.payload_json());
        traces.push(r.traceparent.as_deref());
    }
    sqlx::query_as(&statements().0)
        .bind(shard)
        .bind(&stream_ids)
        .bind(&seqs)
        .bind(&topics)
        .bind(&ids)
        .bind(&ts)
        .bind(&sources)
        .bind(&payloads)
        .bind(&traces)
        .fetch_all(tx)
        .await
}

/// The dead-letter statement: how many dead letters were recorded for the first time.
async fn insert_dead_letters(
    tx: &mut sqlx::PgConnection,
    shard: i16,
    dead: &[DeadLetter],
) -> sqlx::Result<i64> {
    let stream_ids: Vec<i32> = dead.iter().map(|d| d.stream_id).collect();
    let seqs: Vec<i64> = dead.iter().map(|d| d.seq).collect();
    let subjects: Vec<&str> = dead.iter().map(|d| d.subject.as_str()).collect();
    let raws: Vec<&[u8]> = dead.iter().map(|d| d.raw.as_slice()).collect();
    let sizes: Vec<i32> = dead.iter().map(|d| d.raw_size).collect();
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    sqlx::query_scalar(&statements().1)
        .bind(shard)
        .bind(&stream_ids)
        .bind(&seqs)
        .bind(&subjects)
        .bind(&raws)
        .bind(&sizes)
        .bind(&reasons)
        .fetch_one(tx)
        .await
}
