//! Stored events in commit order: what the stream out publishes and the live tail streams.
//!
//! A row's [`Position`] is `(xid, id)`: the id of the transaction that stored it and its ingest
//! id. Transactions commit in another order than they assign ids, so "every row after id N"
//! can pass over a row that commits late with a smaller id (the classic outbox gap). Here a
//! reader only goes up to the *horizon*, the oldest transaction still running
//! (`pg_snapshot_xmin(pg_current_snapshot())`): every transaction below it has ended, and a
//! transaction that writes later gets a larger id, so no row can ever appear below the horizon
//! behind a reader's position. Walking positions up to the horizon therefore sees every row
//! once, in the same order for every reader (see the migration `commit_order_and_outbox`).
//!
//! A long transaction holds the horizon back: the stream out and the tail wait for it (they
//! never skip past it).

use super::queries::StoredEvent;
use super::Store;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::fmt;
use std::str::FromStr;

/// Lag is counted up to this many rows: a backlog larger than that reads as this many, and a
/// look at the lag never scans more than this.
pub const LAG_COUNT_CAP: i64 = 100_000;

/// Advisory lock (session scope) held by the one publisher of the stream out.
pub const OUTBOX_LOCK: i64 = 0x6167_6772_6f75_7462; // "aggroutb"

/// A stored event's place in commit order; `Position::START` is before every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub xid: i64,
    pub id: i64,
}

impl Position {
    pub const START: Position = Position { xid: 0, id: 0 };
}

/// `<xid>-<id>`: the SSE event id and the stream out's `Aggregator-Position` header.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.xid, self.id)
    }
}

impl FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an event position (<xid>-<id>, as sent)");
        if !s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(bad());
        }
        let (xid, id) = s.split_once('-').ok_or_else(bad)?;
        let xid: i64 = xid.parse().map_err(|_| bad())?;
        let id: i64 = id.parse().map_err(|_| bad())?;
        if xid < 0 || id < 0 {
            return Err(bad());
        }
        Ok(Position { xid, id })
    }
}

/// A stored event and its place in commit order.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderedEvent {
    pub xid: i64,
    #[sqlx(flatten)]
    pub event: StoredEvent,
}

impl OrderedEvent {
    pub fn position(&self) -> Position {
        Position {
            xid: self.xid,
            id: self.event.id,
        }
    }
}

/// Filters of the live tail (those of `GET /events` that make sense for a stream).
#[derive(Debug, Clone, Default)]
pub struct TailFilter {
    pub topic: Option<String>,
    pub source: Option<String>,
}

/// Where the publisher of one output stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxCursor {
    /// The last event published.
    pub position: Position,
    /// The output stream's sequence of the last message this cursor accounts for.
    pub stream_seq: i64,
    /// Events published in all.
    pub published: i64,
}

/// How far the stream out is behind what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OutboxLag {
    pub rows: i64,
    /// Age of the next event to publish, the first not published in commit order (0 when
    /// none).
    pub seconds: f64,
    pub published: i64,
}

/// The session that holds [`OUTBOX_LOCK`]: the lock goes with the connection, so a publisher
/// that dies (or loses its connection) lets another one take over at once.
pub struct OutboxLease {
    conn: PgConnection,
}

impl OutboxLease {
    /// Whether the session (and so the lock) is still there.
    pub async fn alive(&mut self) -> bool {
        // The lock is never released while the session lives, so a live session holds it.
        sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .is_ok()
    }

    /// Gives the lock up now (a clean shutdown: the next publisher need not wait).
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}

/// The table is aliased and every order qualified: `ORDER BY xid` would name the bigint output
/// column, not the index's `xid8`, and turn an index range scan into a full sort.
const SELECT_ORDERED: &str = "SELECT e.xid::text::bigint AS xid, e.id, e.topic, e.event_id, \
     e.ts, e.source, e.payload::text AS payload, e.stored_at, e.traceparent FROM events e";

impl Store {
    /// The publisher's lease, when no other session holds it (`None`).
    pub async fn try_outbox_lease(&self) -> sqlx::Result<Option<OutboxLease>> {
        // A connection of its own, outside the pools: it lives as long as the lease.
        let mut conn = PgConnection::connect_with(&self.options).await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(OUTBOX_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(OutboxLease { conn }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Up to `limit` events after `after`, below the horizon, in commit order.
    pub async fn outbox_batch(
        &self,
        after: Position,
        limit: i64,
    ) -> sqlx::Result<Vec<OrderedEvent>> {
        self.tail(&self.pool, after, &TailFilter::default(), None, limit)
            .await
    }

    /// The live tail's read: up to `limit` events of `filter` after `after` and at or before
    /// `upto` (a [`Store::tail_head`] answer), in commit order.
    pub async fn tail_events(
        &self,
        after: Position,
        upto: Position,
        filter: &TailFilter,
        limit: i64,
    ) -> sqlx::Result<Vec<OrderedEvent>> {
        self.tail(&self.reads, after, filter, Some(upto), limit)
            .await
    }

    async fn tail(
        &self,
        pool: &sqlx::PgPool,
        after: Position,
        filter: &TailFilter,
        upto: Option<Position>,
        limit: i64,
    ) -> sqlx::Result<Vec<OrderedEvent>> {
        let mut q = sqlx::QueryBuilder::new(SELECT_ORDERED);
        q.push(" WHERE (e.xid, e.id) > (")
            .push_bind(after.xid.to_string())
            .push("::xid8, ")
            .push_bind(after.id)
            .push(")");
        match upto {
            Some(upto) => {
                q.push(" AND (e.xid, e.id) <= (")
                    .push_bind(upto.xid.to_string())
                    .push("::xid8, ")
                    .push_bind(upto.id)
                    .push(")");
            }
            None => {
                q.push(" AND e.xid < pg_snapshot_xmin(pg_current_snapshot())");
            }
        }
        if let Some(topic) = &filter.topic {
            q.push(" AND e.topic = ").push_bind(topic);
        }
        if let Some(source) = &filter.source {
            q.push(" AND e.source = ").push_bind(source);
        }
        q.push(" ORDER BY e.xid, e.id LIMIT ").push_bind(limit);
        q.build_query_as().fetch_all(pool).await
    }

    /// The last event below the horizon, and the horizon as a position (every event at or
    /// before the first is final; a tail that starts "now" starts after it).
    pub async fn tail_head(&self) -> sqlx::Result<Position> {
        let (xid, id, horizon): (Option<i64>, Option<i64>, i64) = sqlx::query_as(
            "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x)
             SELECT e.xid::text::bigint, e.id, h.x::text::bigint
             FROM h LEFT JOIN LATERAL (
                 SELECT xid, id FROM events WHERE xid < h.x ORDER BY xid DESC, id DESC LIMIT 1
             ) e ON true",
        )
        .fetch_one(&self.reads)
        .await?;
        // Nothing stored yet: everything from the horizon on is still to come.
        Ok(xid
            .zip(id)
            .map(|(xid, id)| Position { xid, id })
            .unwrap_or(Position {
                xid: horizon.saturating_sub(1),
                id: i64::MAX,
            }))
    }

    /// Where the publisher of `stream` stands (the start when it never published).
    pub async fn outbox_cursor(&self, stream: &str) -> sqlx::Result<OutboxCursor> {
        cursor_of(&self.pool, stream).await
    }

    /// Saves where the publisher of `stream` stands. The position never goes back: a
    /// publisher that lost its lease and saves late cannot undo its successor's progress.
    pub async fn save_outbox_cursor(&self, stream: &str, c: &OutboxCursor) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO outbox_cursors AS o (stream, xid, id, stream_seq, published)
             VALUES ($1, $2::text::xid8, $3, $4, $5)
             ON CONFLICT (stream) DO UPDATE
                 SET xid = excluded.xid, id = excluded.id, stream_seq = excluded.stream_seq,
                     published = excluded.published, updated_at = now()
                 WHERE (o.xid, o.id, o.stream_seq) <= (excluded.xid, excluded.id, excluded.stream_seq)",
        )
        .bind(stream)
        .bind(c.position.xid.to_string())
        .bind(c.position.id)
        .bind(c.stream_seq)
        .bind(c.published)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// How far the publisher of `stream` is behind what is stored (rows counted up to
    /// [`LAG_COUNT_CAP`], so a large backlog costs a bounded scan).
    pub async fn outbox_lag(&self, stream: &str) -> sqlx::Result<OutboxLag> {
        let c = cursor_of(&self.reads, stream).await?;
        // The cursor as parameters, not joined in: a join hides the range from the planner,
        // which then scans the index from its start.
        let (rows, seconds): (i64, f64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM (
                         SELECT 1 FROM events WHERE (xid, id) > ($1::xid8, $2) LIMIT $3
                     ) pending),
                    coalesce((SELECT extract(epoch FROM now() - stored_at) FROM events
                              WHERE (xid, id) > ($1::xid8, $2)
                              ORDER BY xid, id LIMIT 1), 0)::float8",
        )
        .bind(c.position.xid.to_string())
        .bind(c.position.id)
        .bind(LAG_COUNT_CAP)
        .fetch_one(&self.reads)
        .await?;
        Ok(OutboxLag {
            rows,
            seconds: seconds.max(0.0),
            published: c.published,
        })
    }
}

/// Where the publisher of `stream` stands, read on `pool`.
async fn cursor_of(pool: &sqlx::PgPool, stream: &str) -> sqlx::Result<OutboxCursor> {
    let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT xid::text::bigint, id, stream_seq, published FROM outbox_cursors
         WHERE stream = $1",
    )
    .bind(stream)
    .fetch_optional(pool)
    .await?;
    Ok(row
        .map(|(xid, id, stream_seq, published)| OutboxCursor {
            position: Position { xid, id },
            stream_seq,
            published,
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_print_and_parse_back_and_order_by_xid_then_id() {
        let p = Position { xid: 812, id: 40 };
        assert_eq!(p.to_string(), "812-40");
        assert_eq!("812-40".parse::<Position>(), Ok(p));
        assert!(Position { xid: 811, id: 90 } < p);
        assert!(Position { xid: 812, id: 41 } > p);
        for bad in [
            "", "812", "812-", "-40", "a-1", "1-b", "1--2", "1-2-3", " 1-2", "+1-2",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }
}
