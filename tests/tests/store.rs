//! The store's statements on their own, against a private Postgres: the batch write and
//! compaction must be exact whatever their callers do (duplicates in one batch, two replicas
//! compacting at once, a record of a stream the database does not know).

use aggregator::message::{DeadLetter, Record};
use aggregator::store::compact::{self, Compaction, NoHistory};
use aggregator::store::Store;
use integration_tests::Postgres;
use shared::{Event, Limits};

async fn store(pg: &Postgres) -> Store {
    Store::connect(&pg.url("aggregator"), 4).await.unwrap()
}

fn record(stream_id: i32, seq: i64, event_id: &str) -> Record {
    let event = Event::new(
        "telemetry.satellite.status",
        event_id.to_owned(),
        "2026-11-23T10:30:45.123Z",
        "SAT-0001",
        &serde_json::json!({"battery_charge_percent": 85.5}),
        &Limits::default(),
    )
    .unwrap();
    Record {
        stream_id,
        seq,
        event,
        traceparent: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_stream_message_twice_in_one_batch_counts_once() {
    let pg = Postgres::new().await;
    let store = store(&pg).await;
    let sid = store.register_stream("EVENTS", "1", None).await.unwrap().id;
    let batch = [
        record(sid, 5, "a"),
        record(sid, 5, "a"),
        record(sid, 6, "a"),
    ];
    let dead = [
        DeadLetter::new(sid, 7, "events.x".into(), b"{", "bad".into()),
        DeadLetter::new(sid, 7, "events.x".into(), b"{", "bad".into()),
    ];
    let outcome = store.write_batch(0, &batch, &dead).await.unwrap();
    // Two stream messages (5 and 6) carrying one event: 2 received, 1 unique.
    assert_eq!((outcome.received, outcome.unique), (2, 1), "{outcome:?}");
    assert_eq!(outcome.dead_lettered, 1, "{outcome:?}");
    let totals = store.totals().await.unwrap();
    assert_eq!((totals.received, totals.unique_processed), (2, 1));
    assert_eq!(totals.dead_lettered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_a_stream_the_database_does_not_know_is_an_error() {
    let pg = Postgres::new().await;
    let store = store(&pg).await;
    store.register_stream("EVENTS", "1", None).await.unwrap();
    // A WAL written against another (or an older, restored) database.
    let result = store.write_batch(0, &[record(424_242, 1, "a")], &[]).await;
    let err = result.expect_err("an unknown stream must not look already processed");
    assert!(err.to_string().contains("424242"), "{err}");
    // Mixed with records of a known stream, and a dead letter of another unknown one: the
    // error names every unknown id and nothing of the batch is kept.
    let sid = store.register_stream("EVENTS", "2", None).await.unwrap().id;
    let dead = [DeadLetter::new(
        515_151,
        9,
        "events.x".into(),
        b"{",
        "bad".into(),
    )];
    let result = store
        .write_batch(0, &[record(sid, 1, "b"), record(424_242, 2, "c")], &dead)
        .await;
    let err = result.expect_err("unknown streams in a mixed batch");
    assert!(err.to_string().contains("[424242, 515151]"), "{err}");
    let totals = store.totals().await.unwrap();
    assert_eq!((totals.received, totals.dead_lettered), (0, 0));
    assert_eq!(
        store
            .write_batch(0, &[record(sid, 1, "b")], &[])
            .await
            .unwrap()
            .received,
        1
    );
}

/// Waits (bounded) until `n` sessions wait for an advisory lock.
async fn advisory_waiters(pool: &sqlx::PgPool, n: i64) {
    for _ in 0..200 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_compacting_at_once_never_lose_a_record_above_the_floor() {
    let pg = Postgres::new().await;
    let store = store(&pg).await;
    let sid = store.register_stream("EVENTS", "1", None).await.unwrap().id;
    let pool = pg.pool("aggregator").await;
    let insert = |from: i64, to: i64| {
        sqlx::query(
            "INSERT INTO processed_messages (stream_id, stream_seq)
             SELECT $1, g FROM generate_series($2::bigint, $3::bigint) g",
        )
        .bind(sid)
        .bind(from)
        .bind(to)
    };
    insert(1, 100).execute(&pool).await.unwrap();

    // A writer holds the compaction lock; replica A plans its step (floor 0 -> 100) and waits.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(aggregator::store::batch::COMPACTION_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let a = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .compact_stream(sid, Compaction::default(), &NoHistory)
                .await
        }
    });
    advisory_waiters(&pool, 1).await;
    // More messages are processed; replica B plans from the same floor (0 -> 150) and waits.
    insert(101, 150).execute(&pool).await.unwrap();
    let b = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .compact_stream(sid, Compaction::default(), &NoHistory)
                .await
        }
    });
    advisory_waiters(&pool, 2).await;
    holder.commit().await.unwrap();
    let _ = a.await.unwrap();
    let _ = b.await.unwrap();

    // Whatever order they ran in: every processed sequence is at or below the floor or
    // still recorded above it.
    let floor: i64 = sqlx::query_scalar("SELECT floor_seq FROM streams WHERE id = $1")
        .bind(sid)
        .fetch_one(&pool)
        .await
        .unwrap();
    let above: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_messages WHERE stream_id = $1 AND stream_seq > $2",
    )
    .bind(sid)
    .bind(floor)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        above,
        150 - floor,
        "floor {floor}: records above it were deleted"
    );
    // And compaction goes on from there.
    store
        .compact_stream(sid, Compaction::default(), &NoHistory)
        .await
        .unwrap();
    let floor: i64 = sqlx::query_scalar("SELECT floor_seq FROM streams WHERE id = $1")
        .bind(sid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(floor, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_with_text_postgres_cannot_hold_is_still_recorded() {
    let pg = Postgres::new().await;
    let store = store(&pg).await;
    let sid = store.register_stream("EVENTS", "1", None).await.unwrap().id;
    // NATS subjects and error texts may carry NUL, which a Postgres `text` column refuses.
    let dead = [DeadLetter::new(
        sid,
        1,
        "events.a\0b".into(),
        b"\0{}",
        "topic \"a\0b\" is not valid".into(),
    )];
    let outcome = store.write_batch(0, &[], &dead).await.unwrap();
    assert_eq!(outcome.dead_lettered, 1);
    let (subject, raw): (String, Vec<u8>) =
        sqlx::query_as("SELECT subject, raw FROM dead_letters WHERE stream_seq = 1")
            .fetch_one(&pg.pool("aggregator").await)
            .await
            .unwrap();
    assert!(
        subject.starts_with("events.a") && !subject.contains('\0'),
        "{subject:?}"
    );
    assert_eq!(raw, b"\0{}", "the raw bytes are kept exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_writer_does_not_queue_every_writer_behind_compaction() {
    let pg = Postgres::new().await;
    let store = store(&pg).await;
    let sid = store.register_stream("EVENTS", "1", None).await.unwrap().id;
    store
        .write_batch(0, &[record(sid, 1, "a")], &[])
        .await
        .unwrap();
    // A session left idle in a transaction that holds the writers' (shared) lock.
    let pool = pg.pool("aggregator").await;
    let mut stuck = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(aggregator::store::batch::COMPACTION_LOCK)
        .execute(&mut *stuck)
        .await
        .unwrap();
    let compactor = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .compact_stream(sid, Compaction::default(), &NoHistory)
                .await
        }
    });
    advisory_waiters(&pool, 1).await;
    // Writers must go on while compaction waits for the stuck session.
    let write = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        store.write_batch(0, &[record(sid, 2, "b")], &[]),
    )
    .await
    .expect("a writer queued behind the waiting compactor");
    assert_eq!(write.unwrap().received, 1);
    stuck.rollback().await.unwrap();
    let _ = compactor.await.unwrap();
}

/// A stream history that has lost exactly the sequences given.
struct Lost(Vec<i64>);

impl compact::StreamHistory for Lost {
    fn gone_prefix(&self, _: i32, first: i64, last: i64) -> futures::future::BoxFuture<'_, i64> {
        let n = (first..=last).take_while(|s| self.0.contains(s)).count() as i64;
        Box::pin(async move { n })
    }
}

async fn floor_and_rows(pool: &sqlx::PgPool, sid: i32) -> (i64, i64) {
    sqlx::query_as(
        "SELECT floor_seq, (SELECT count(*) FROM processed_messages WHERE stream_id = $1)
         FROM streams WHERE id = $1",
    )
    .bind(sid)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_passes_gaps_the_stream_no_longer_holds_and_late_copies_still_count_once() {
    let pg = Postgres::new().await;
    let store = store(&pg).await;
    let sid = store.register_stream("EVENTS", "1", None).await.unwrap().id;
    let pool = pg.pool("aggregator").await;
    // Sequences 1..=10 processed except 4 (purged from the stream while a replica held it in
    // its WAL) and 7 (still in flight).
    let seqs: Vec<i64> = (1..=10).filter(|s| ![4, 7].contains(s)).collect();
    let batch: Vec<Record> = seqs
        .iter()
        .map(|&s| record(sid, s, &format!("e{s}")))
        .collect();
    store.write_batch(0, &batch, &[]).await.unwrap();

    // Without knowing the stream's past, the floor stops at the first gap.
    store
        .compact_stream(sid, Compaction::default(), &NoHistory)
        .await
        .unwrap();
    assert_eq!(floor_and_rows(&pool, sid).await, (3, 5));
    // Knowing 4 is gone from the stream, it passes 4 and stops at 7 (still held).
    store
        .compact_stream(sid, Compaction::default(), &Lost(vec![4]))
        .await
        .unwrap();
    assert_eq!(floor_and_rows(&pool, sid).await, (6, 3));

    // The WAL copy of 4 arrives after all: below the floor, but in a skipped range, so it is
    // counted, once.
    let late = [record(sid, 4, "e4")];
    assert_eq!(store.write_batch(0, &late, &[]).await.unwrap().received, 1);
    assert_eq!(store.write_batch(0, &late, &[]).await.unwrap().received, 0);
    // 7 comes, the floor moves to the end, and only the record of 4 stays (it is what says 4
    // was counted).
    store
        .write_batch(0, &[record(sid, 7, "e7")], &[])
        .await
        .unwrap();
    store
        .compact_stream(sid, Compaction::default(), &Lost(vec![4]))
        .await
        .unwrap();
    assert_eq!(floor_and_rows(&pool, sid).await, (10, 1));
    // Redelivery of everything (a consumer reset) counts nothing again.
    let all: Vec<Record> = (1..=10).map(|s| record(sid, s, &format!("e{s}"))).collect();
    assert_eq!(store.write_batch(0, &all, &[]).await.unwrap().received, 0);
    let totals = store.totals().await.unwrap();
    assert_eq!((totals.received, totals.unique_processed), (10, 10));
}
