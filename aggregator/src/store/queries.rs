//! Read side for the HTTP API and `aggregator redrive`: durable totals, events and dead
//! letters.

use super::Store;
use crate::message::EventItem;
use chrono::SecondsFormat;
use serde::Serialize;

/// Per-topic durable counters (sums over shards).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct TopicCounts {
    pub topic: String,
    pub received: i64,
    pub unique_processed: i64,
    pub duplicate_dropped: i64,
}

/// Durable totals.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Totals {
    pub received: i64,
    pub unique_processed: i64,
    pub duplicate_dropped: i64,
    pub dead_lettered: i64,
    pub topics: Vec<TopicCounts>,
}

/// Filters and position for [`Store::list_events`].
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub topic: Option<String>,
    pub source: Option<String>,
    /// Inclusive lower bound on the event timestamp.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Exclusive upper bound on the event timestamp.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Keyset position: return rows strictly after (older than) this `(ts, id)`.
    pub after: Option<(chrono::DateTime<chrono::Utc>, i64)>,
    pub limit: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub id: i64,
    pub topic: String,
    pub event_id: String,
    pub ts: chrono::DateTime<chrono::Utc>,
    pub source: String,
    /// The payload as JSON text (not parsed: it is passed through to the client as is).
    pub payload: String,
    pub stored_at: chrono::DateTime<chrono::Utc>,
    pub traceparent: Option<String>,
}

impl StoredEvent {
    /// The event as readers get it; `None` only if the payload were not JSON (`jsonb` text
    /// output always is).
    pub fn into_item(self) -> Option<EventItem> {
        let payload = serde_json::value::RawValue::from_string(self.payload).ok()?;
        Some(EventItem {
            topic: self.topic,
            event_id: self.event_id,
            timestamp: self.ts.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            source: self.source,
            payload,
            stored_at: self.stored_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            traceparent: self.traceparent,
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub stream_seq: i64,
    pub subject: String,
    pub raw: Vec<u8>,
    pub raw_size: i32,
    pub reason: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub redriven_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Store {
    /// Durable totals (for `/stats`).
    pub async fn totals(&self) -> sqlx::Result<Totals> {
        let pool = &self.reads;
        let topics: Vec<TopicCounts> = sqlx::query_as(
            "SELECT topic,
                    sum(received)::bigint AS received,
                    sum(unique_processed)::bigint AS unique_processed,
                    (sum(received) - sum(unique_processed))::bigint AS duplicate_dropped
             FROM topic_counters GROUP BY topic ORDER BY topic",
        )
        .fetch_all(pool)
        .await?;
        let dead_lettered: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(count), 0)::bigint FROM dead_letter_counters")
                .fetch_one(pool)
                .await?;
        let mut t = Totals {
            dead_lettered,
            ..Totals::default()
        };
        for row in &topics {
            t.received += row.received;
            t.unique_processed += row.unique_processed;
            t.duplicate_dropped += row.duplicate_dropped;
        }
        t.topics = topics;
        Ok(t)
    }

    /// Events newest timestamp first (ties: newest ingest first), by keyset pagination. Only the
    /// filters that are set become SQL conditions, so each shape of query gets a plan that uses
    /// the matching `(…, ts, id)` index.
    pub async fn list_events(&self, f: &EventFilter) -> sqlx::Result<Vec<StoredEvent>> {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT id, topic, event_id, ts, source, payload::text AS payload, stored_at, \
             traceparent FROM events WHERE true",
        );
        if let Some(topic) = &f.topic {
            q.push(" AND topic = ").push_bind(topic);
        }
        if let Some(source) = &f.source {
            q.push(" AND source = ").push_bind(source);
        }
        if let Some(since) = f.since {
            q.push(" AND ts >= ").push_bind(since);
        }
        if let Some(until) = f.until {
            q.push(" AND ts < ").push_bind(until);
        }
        if let Some((ts, id)) = f.after {
            q.push(" AND (ts, id) < (")
                .push_bind(ts)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        q.push(" ORDER BY ts DESC, id DESC LIMIT ")
            .push_bind(f.limit);
        q.build_query_as().fetch_all(&self.reads).await
    }

    /// Dead letters, newest first, by keyset pagination on `id`.
    pub async fn list_dead_letters(
        &self,
        after_id: Option<i64>,
        limit: i64,
        include_redriven: bool,
    ) -> sqlx::Result<Vec<StoredDeadLetter>> {
        sqlx::query_as(
            "SELECT id, stream_seq, subject, raw, raw_size, reason, created_at, redriven_at
             FROM dead_letters
             WHERE ($1::bigint IS NULL OR id < $1) AND ($3 OR redriven_at IS NULL)
             ORDER BY id DESC LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .bind(include_redriven)
        .fetch_all(&self.reads)
        .await
    }

    /// Dead letters not redriven yet, oldest first (optionally only the given ids).
    pub async fn pending_dead_letters(
        &self,
        ids: Option<&[i64]>,
    ) -> sqlx::Result<Vec<StoredDeadLetter>> {
        sqlx::query_as(
            "SELECT id, stream_seq, subject, raw, raw_size, reason, created_at, redriven_at
             FROM dead_letters
             WHERE redriven_at IS NULL AND ($1::bigint[] IS NULL OR id = ANY($1))
             ORDER BY id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
    }

    /// Marks a dead letter as published again.
    pub async fn mark_redriven(&self, id: i64) -> sqlx::Result<()> {
        sqlx::query("UPDATE dead_letters SET redriven_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}
