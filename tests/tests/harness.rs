//! Smoke test of the harness itself (needs no aggregator binary): private NATS and
//! Postgres start, survive kill/restart, stop/start and pause/resume with their data.

use std::time::Duration;

use async_nats::jetstream::stream;
use integration_tests::{event_json, eventually, publish_raw, TestEnv};

#[tokio::test]
async fn harness_smoke() {
    let started = std::time::Instant::now();
    let mut env = TestEnv::start().await;
    assert_ne!(env.nats.port(), 4222, "must not use the shared NATS");
    assert_ne!(env.pg.port(), 5432, "must not use the shared Postgres");

    // NATS: a stream with one message.
    let js = env.jetstream().await;
    js.create_stream(stream::Config {
        name: "SMOKE".into(),
        subjects: vec!["smoke.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let ack = publish_raw(
        &js,
        "smoke.test",
        event_json("smoke.test", "id-1", "SAT-0001"),
    )
    .await;
    assert_eq!(ack.sequence, 1);

    // Postgres: a table with one row in the aggregator database.
    let pool = env.db().await;
    sqlx::query("CREATE TABLE smoke (id int PRIMARY KEY, note text NOT NULL)")
        .execute(&pool)
        .await
        .expect("create table");
    sqlx::query("INSERT INTO smoke VALUES (1, 'hello')")
        .execute(&pool)
        .await
        .expect("insert");

    // Crash (SIGKILL of the postmaster and its children) and crash recovery.
    env.pg.kill();
    env.pg.start().await;
    let pool = env.db().await;
    assert_eq!(
        integration_tests::count(&pool, "SELECT count(*) FROM smoke").await,
        1,
        "row must survive a crash"
    );

    // Fast shutdown and start.
    pool.close().await;
    env.pg.stop();
    env.pg.start().await;
    let pool = env.db().await;
    assert_eq!(
        integration_tests::count(&pool, "SELECT count(*) FROM smoke").await,
        1,
        "row must survive a restart"
    );

    // Pause: queries hang; resume: they work again.
    env.pg.pause();
    let hung = tokio::time::timeout(
        Duration::from_secs(1),
        integration_tests::count(&pool, "SELECT count(*) FROM smoke"),
    )
    .await;
    assert!(hung.is_err(), "a query against a paused Postgres must hang");
    env.pg.resume();
    eventually("query works after resume", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            matches!(
                tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM smoke").fetch_one(&pool)
                )
                .await,
                Ok(Ok(1))
            )
        }
    })
    .await;

    // NATS crash and restart: the stream and its message persist.
    drop(js);
    env.nats.kill();
    env.nats.restart().await;
    let js = env.jetstream().await;
    let mut stream = js.get_stream("SMOKE").await.expect("stream after restart");
    let info = stream.info().await.expect("stream info");
    assert_eq!(
        info.state.messages, 1,
        "message must survive a NATS restart"
    );

    eprintln!("harness_smoke took {:?}", started.elapsed());
}

#[tokio::test]
async fn free_ports_are_unique() {
    let ports: std::collections::HashSet<u16> =
        (0..50).map(|_| integration_tests::free_port()).collect();
    assert_eq!(ports.len(), 50);
}
