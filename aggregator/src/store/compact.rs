//! Compaction of the processed-message record.
//!
//! Every counted stream message leaves a row in `processed_messages`, which would grow forever.
//! For each stream incarnation, the longest run of consecutive processed sequences above
//! `floor_seq` is folded into `floor_seq` and its rows deleted: a message at or below the floor
//! is known to be counted already. A gap (a message still in flight, or held in some replica's
//! WAL until the database comes back) stops the floor, so nothing that is yet to be counted is
//! ever folded in. Each step runs under the compaction lock in exclusive mode (see
//! [`super::batch::COMPACTION_LOCK`]) and deletes at most `chunk` rows, so writers pause only
//! briefly.

use super::batch::COMPACTION_LOCK;
use sqlx::PgPool;

/// Folds the contiguous processed prefix of one stream incarnation into its floor.
/// Returns how many rows were deleted.
pub async fn compact_stream(pool: &PgPool, stream_id: i32, chunk: i64) -> sqlx::Result<u64> {
    let mut deleted = 0;
    loop {
        let floor: i64 = sqlx::query_scalar("SELECT floor_seq FROM streams WHERE id = $1")
            .bind(stream_id)
            .fetch_one(pool)
            .await?;
        // The end of the run of consecutive sequences starting right above the floor: in a
        // gap-free run, seq - row_number() is constant (= floor).
        let new_floor: Option<i64> = sqlx::query_scalar(
            "SELECT max(stream_seq) FROM (
                 SELECT stream_seq, stream_seq - row_number() OVER (ORDER BY stream_seq) AS grp
                 FROM (SELECT stream_seq FROM processed_messages
                       WHERE stream_id = $1 AND stream_seq > $2
                       ORDER BY stream_seq LIMIT $3) head
             ) runs WHERE grp = $2",
        )
        .bind(stream_id)
        .bind(floor)
        .bind(chunk)
        .fetch_one(pool)
        .await?;
        let Some(new_floor) = new_floor else {
            return Ok(deleted);
        };
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(COMPACTION_LOCK)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query(
            "DELETE FROM processed_messages
             WHERE stream_id = $1 AND stream_seq > $2 AND stream_seq <= $3",
        )
        .bind(stream_id)
        .bind(floor)
        .bind(new_floor)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE streams SET floor_seq = $2 WHERE id = $1 AND floor_seq = $3")
            .bind(stream_id)
            .bind(new_floor)
            .bind(floor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        deleted += n;
        if (n as i64) < chunk {
            return Ok(deleted);
        }
    }
}

/// Deletes rows stored before `cutoff` from `events`, `dead_letters` and `suspect_attempts`,
/// `chunk` rows per statement so no long lock is held. Counters are not touched: they are
/// totals of what was received. Returns the events deleted.
pub async fn apply_retention(
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
