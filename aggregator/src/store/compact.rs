//! Compaction of the processed-message record, and retention.
//!
//! Every counted stream message leaves a row in `processed_messages`, which would grow forever.
//! For each stream incarnation, the run of consecutive processed sequences above `floor_seq`
//! is folded into `floor_seq` and its rows deleted: a message at or below the floor is known
//! to be counted already.
//!
//! A gap in the run is either a message still to be counted (in flight, or held in some
//! replica's WAL until the database comes back), which stops the floor, or a sequence the
//! stream no longer holds (purged, expired, deleted), which would stop it for good. Such gaps
//! are skipped when [`StreamHistory`] says they are gone, and recorded in `skipped_ranges`:
//! a copy that still arrives later (from a WAL written before the stream dropped it) is then
//! checked against the record instead of being taken as counted.
//!
//! A step is planned outside any lock ([`plan`]: reading the rows, asking about gaps) and
//! applied in one short transaction ([`apply`]) holding the compaction lock exclusively (see
//! [`super::batch::COMPACTION_LOCK`]), which also checks that the floor is still the one the
//! plan started from: two replicas compacting at once never delete records above the floor
//! that wins. The lock is waited for at most `lock_timeout`: a stuck holder of the shared
//! lock makes compaction skip a round instead of queueing every writer behind it.

use super::batch::COMPACTION_LOCK;
use super::Store;
use futures::future::BoxFuture;
use sqlx::PgPool;
use std::time::Duration;

/// What compaction may ask about a stream's past.
pub trait StreamHistory: Sync {
    /// How many sequences from `first` on (up to `last`) the stream of incarnation
    /// `stream_id` no longer holds and never will again. 0 when unsure.
    fn gone_prefix(&self, stream_id: i32, first: i64, last: i64) -> BoxFuture<'_, i64>;
}

/// Knows nothing of the streams: gaps are never skipped.
pub struct NoHistory;

impl StreamHistory for NoHistory {
    fn gone_prefix(&self, _: i32, _: i64, _: i64) -> BoxFuture<'_, i64> {
        Box::pin(async { 0 })
    }
}

/// One compaction step of one stream incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub stream_id: i32,
    /// The floor the step starts from.
    pub floor: i64,
    /// The floor it moves to.
    pub new_floor: i64,
    /// Gaps folded in without having been processed (inclusive ranges).
    pub skipped: Vec<(i64, i64)>,
}

/// Plans the next step: the run of processed sequences right above the floor (at most
/// `chunk` rows), across gaps that `history` says are gone. `None` when the floor cannot move.
async fn plan(
    pool: &PgPool,
    stream_id: i32,
    chunk: i64,
    history: &dyn StreamHistory,
) -> sqlx::Result<Option<Plan>> {
    let floor: i64 = sqlx::query_scalar("SELECT floor_seq FROM streams WHERE id = $1")
        .bind(stream_id)
        .fetch_one(pool)
        .await?;
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT stream_seq FROM processed_messages
         WHERE stream_id = $1 AND stream_seq > $2 ORDER BY stream_seq LIMIT $3",
    )
    .bind(stream_id)
    .bind(floor)
    .bind(chunk)
    .fetch_all(pool)
    .await?;
    let mut next = floor + 1;
    let mut skipped = Vec::new();
    for seq in seqs {
        if seq > next {
            let gone = history.gone_prefix(stream_id, next, seq - 1).await;
            if gone > 0 {
                skipped.push((next, next + gone - 1));
            }
            if next + gone < seq {
                next += gone;
                break;
            }
        }
        next = seq + 1;
    }
    let new_floor = next - 1;
    Ok((new_floor > floor).then_some(Plan {
        stream_id,
        floor,
        new_floor,
        skipped,
    }))
}

/// Applies a planned step. Returns the rows deleted, or `None` when the step was not applied:
/// the floor moved since the plan (another replica compacted) or the lock was not granted
/// within `lock_timeout`.
async fn apply(pool: &PgPool, plan: &Plan, lock_timeout: Duration) -> sqlx::Result<Option<u64>> {
    let mut tx = pool.begin().await?;
    if !lock_exclusively(&mut tx, lock_timeout).await? {
        tracing::warn!(
            stream_id = plan.stream_id,
            "compaction skipped: the compaction lock was not granted in time (a writer holds \
             it; a session left idle in a transaction?)"
        );
        return Ok(None);
    }
    let moved = sqlx::query("UPDATE streams SET floor_seq = $2 WHERE id = $1 AND floor_seq = $3")
        .bind(plan.stream_id)
        .bind(plan.new_floor)
        .bind(plan.floor)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if moved != 1 {
        // Another replica moved the floor since this plan was made: its rows may already be
        // gone, and deleting by this plan could delete rows above the floor that won.
        tx.rollback().await?;
        return Ok(None);
    }
    record_skipped(&mut tx, plan).await?;
    // A record inside a skipped range (a late copy counted after the plan was made) stays:
    // at or below the floor, only it tells that copy was counted.
    let deleted = sqlx::query(
        "DELETE FROM processed_messages p
         WHERE p.stream_id = $1 AND p.stream_seq > $2 AND p.stream_seq <= $3
           AND NOT EXISTS (SELECT 1 FROM skipped_ranges k WHERE k.stream_id = $1
                           AND p.stream_seq BETWEEN k.first_seq AND k.last_seq)",
    )
    .bind(plan.stream_id)
    .bind(plan.floor)
    .bind(plan.new_floor)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Some(deleted))
}

/// Takes the compaction lock exclusively for the transaction, waiting at most
/// `lock_timeout`; `false` when it was not granted in time.
async fn lock_exclusively(
    tx: &mut sqlx::PgConnection,
    lock_timeout: Duration,
) -> sqlx::Result<bool> {
    // SET cannot take a parameter; the value is a number we format ourselves.
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = {}",
        lock_timeout.as_millis().max(1)
    ))
    .execute(&mut *tx)
    .await?;
    match sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(COMPACTION_LOCK)
        .execute(&mut *tx)
        .await
    {
        Ok(_) => Ok(true),
        // 55P03 lock_not_available.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Records the plan's skipped gaps.
async fn record_skipped(tx: &mut sqlx::PgConnection, plan: &Plan) -> sqlx::Result<()> {
    if plan.skipped.is_empty() {
        return Ok(());
    }
    let (firsts, lasts): (Vec<i64>, Vec<i64>) = plan.skipped.iter().copied().unzip();
    sqlx::query(
        "INSERT INTO skipped_ranges (stream_id, first_seq, last_seq)
         SELECT $1, f, l FROM unnest($2::bigint[], $3::bigint[]) AS r(f, l)
         ON CONFLICT DO NOTHING",
    )
    .bind(plan.stream_id)
    .bind(&firsts)
    .bind(&lasts)
    .execute(tx)
    .await
    .map(|_| ())
}

/// Settings of a compaction pass.
#[derive(Debug, Clone, Copy)]
pub struct Compaction {
    /// Rows read per step.
    pub chunk: i64,
    /// Longest wait for the compaction lock.
    pub lock_timeout: Duration,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            chunk: 50_000,
            lock_timeout: Duration::from_millis(500),
        }
    }
}

impl Store {
    /// Compacts one stream incarnation as far as it goes now. Returns how many rows were
    /// deleted.
    pub async fn compact_stream(
        &self,
        stream_id: i32,
        settings: Compaction,
        history: &dyn StreamHistory,
    ) -> sqlx::Result<u64> {
        compact_stream(&self.pool, stream_id, settings, history).await
    }

    /// Deletes rows stored before `cutoff` (see [`apply_retention`]); returns the events
    /// deleted.
    pub async fn apply_retention(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        chunk: i64,
    ) -> sqlx::Result<u64> {
        apply_retention(&self.pool, cutoff, chunk).await
    }
}

async fn compact_stream(
    pool: &PgPool,
    stream_id: i32,
    settings: Compaction,
    history: &dyn StreamHistory,
) -> sqlx::Result<u64> {
    let mut deleted = 0;
    while let Some(plan) = plan(pool, stream_id, settings.chunk, history).await? {
        match apply(pool, &plan, settings.lock_timeout).await? {
            Some(n) => deleted += n,
            None => break,
        }
        // Reported once, by the replica whose step was applied: nothing else says that the
        // stream's limits (or a purge) took messages nobody counted.
        for (first, last) in &plan.skipped {
            tracing::warn!(
                stream_id,
                first,
                last,
                "stream sequences {first}..={last} left the stream before they were counted \
                 (STREAM_MAX_AGE or STREAM_MAX_BYTES reached while the aggregator was down or \
                 behind, or a purge): unless a replica's WAL still holds them, those events \
                 are lost; size the stream limits for the longest outage to survive"
            );
        }
        if plan.new_floor - plan.floor < settings.chunk {
            break;
        }
    }
    Ok(deleted)
}

/// Deletes rows stored before `cutoff` from `events`, `dead_letters` and `suspect_attempts`,
/// `chunk` rows per statement so no long lock is held. Counters are not touched: they are
/// totals of what was received. Returns the events deleted.
async fn apply_retention(
    pool: &PgPool,
    cutoff: chrono::DateTime<chrono::Utc>,
    chunk: i64,
) -> sqlx::Result<u64> {
    const STATEMENTS: [&str; 3] = [
        "DELETE FROM events WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM events WHERE stored_at < $1 LIMIT $2))",
        "DELETE FROM dead_letters WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM dead_letters WHERE created_at < $1 LIMIT $2))",
        "DELETE FROM suspect_attempts WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM suspect_attempts WHERE last_at < $1 LIMIT $2))",
    ];
    let mut events_deleted = 0;
    for (i, sql) in STATEMENTS.iter().enumerate() {
        loop {
            let n = sqlx::query(sql)
                .bind(cutoff)
                .bind(chunk)
                .execute(pool)
                .await?
                .rows_affected();
            if i == 0 {
                events_deleted += n;
            }
            if (n as i64) < chunk {
                break;
            }
        }
    }
    Ok(events_deleted)
}
