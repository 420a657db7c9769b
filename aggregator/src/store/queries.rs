//! Read side for the HTTP API: durable totals for `/stats`.

use serde::Serialize;
use sqlx::PgPool;

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

pub async fn totals(pool: &PgPool) -> sqlx::Result<Totals> {
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
