//! Scale-out (DESIGN.md "Scale-out"): a 3-node NATS cluster with an R3 stream losing its
//! stream leader, then a follower node together with an aggregator, under load; a rolling
//! restart of two replicas under load; four replicas racing to create the stream and the
//! consumer. Every scenario ends with exact counts in /stats and exact rows in Postgres.
//! Timeouts are safety nets only; recovery times are printed, never asserted.

use integration_tests::cluster::js_api;
use integration_tests::{eventually, int, run_publisher, Aggregator, NatsCluster, TestEnv};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Messages held by a SIGKILLed replica come back after ACK_WAIT: keep it short.
const ACK_WAIT: (&str, &str) = ("ACK_WAIT", "5s");

/// The publisher running in the background at a steady rate (30% duplicates).
struct Publisher {
    handle: Option<tokio::task::JoinHandle<Value>>,
    summary: Option<Value>,
}

impl Publisher {
    fn start(nats_url: &str, count: u32, rate: u32, seed: u32) -> Publisher {
        // The task panics with the publisher's stderr if it exits non-zero (a send failed).
        let handle = integration_tests::publish_in_background(nats_url, count, rate, seed);
        Publisher {
            handle: Some(handle),
            summary: None,
        }
    }

    /// True once the publisher process has exited.
    fn is_done(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// If the publisher has exited, collects its summary; if it failed, fails the test at
    /// once with the publisher's own error.
    async fn check(&mut self) {
        if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            let handle = self.handle.take().expect("handle");
            self.summary = Some(match handle.await {
                Ok(summary) => summary,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            });
        }
    }

    /// Waits for the publisher to exit; its summary (the test fails if it failed).
    async fn finish(mut self) -> Value {
        if let Some(handle) = self.handle.take() {
            self.summary = Some(match handle.await {
                Ok(summary) => summary,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            });
        }
        self.summary.take().expect("summary")
    }
}

/// Waits until `first` has counted all `published` events, then checks the exact figures
/// on every replica and the rows in Postgres.
async fn assert_exact(
    env: &TestEnv,
    replicas: &mut [&mut Aggregator],
    published: i64,
    unique: i64,
) {
    let stats = replicas[0].wait_until_received(published).await;
    assert_eq!(int(&stats, "received"), published, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), unique, "{stats}");
    assert_eq!(
        int(&stats, "duplicate_dropped"),
        published - unique,
        "{stats}"
    );
    assert_eq!(int(&stats, "dead_lettered"), 0, "{stats}");
    for other in replicas.iter().skip(1) {
        let s = other.stats().await;
        assert_eq!(int(&s, "received"), published, "{s}");
        assert_eq!(int(&s, "unique_processed"), unique, "{s}");
    }
    assert_eq!(env.event_rows().await, unique, "rows in events");
}

/// How the survivor's `received` evolved after a kill.
#[derive(Debug)]
struct Recovery {
    /// From the kill to the first sample above the figure at the kill.
    first_growth: Option<Duration>,
    /// Longest time without growth between the kill and `caught_up`.
    longest_stall: Duration,
    /// From the kill until the target was counted.
    caught_up: Duration,
}

/// Samples `agg`'s `received` every 100 ms from `killed_at` until it reaches `target`
/// (safety net: 120 s, then the test fails with the log tail). Fails at once with the
/// publisher's own error if the publisher fails meanwhile.
async fn watch_recovery(
    agg: &Aggregator,
    publisher: &mut Publisher,
    killed_at: Instant,
    base: i64,
    target: i64,
) -> Recovery {
    let deadline = killed_at + Duration::from_secs(120);
    let mut last = base;
    let mut last_growth = killed_at;
    let mut first_growth = None;
    let mut longest_stall = Duration::ZERO;
    loop {
        let now = Instant::now();
        if let Some(r) = agg.received().await {
            if r > last {
                first_growth.get_or_insert(now - killed_at);
                longest_stall = longest_stall.max(now - last_growth);
                last = r;
                last_growth = now;
            }
            if r >= target {
                return Recovery {
                    first_growth,
                    longest_stall,
                    caught_up: now - killed_at,
                };
            }
        }
        publisher.check().await;
        assert!(
            Instant::now() < deadline,
            "received did not reach {target} after the kill (received {last}, {base} at \
             the kill)\n{}",
            agg.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `agg` has counted `n` events or the publisher has exited (then fails at
/// once if the publisher failed).
async fn wait_received_or_publisher_done(agg: &Aggregator, publisher: &mut Publisher, n: i64) {
    eventually(
        &format!("received >= {n} or the publisher done"),
        Duration::from_secs(90),
        || async { publisher.is_done() || agg.received().await.is_some_and(|r| r >= n) },
    )
    .await;
    publisher.check().await;
}

/// The client port of the NATS server `agg` is connected to now, from its log (async-nats
/// logs `connected successfully server=<port>` on every (re)connect).
fn connected_port(agg: &Aggregator) -> Option<u16> {
    let text = std::fs::read_to_string(agg.log_path()).ok()?;
    text.lines()
        .rev()
        .map(integration_tests::strip_ansi)
        .find(|l| l.contains("connected successfully"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("server=")?.parse().ok())
}

/// Polls the stream leader until it is a node other than `old` (any node for `""`), or
/// 60 s pass (`None`).
async fn wait_new_stream_leader(cluster: &NatsCluster, old: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(leader) = cluster.stream_leader("EVENTS").await {
            if leader != old {
                return Some(leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

fn print_recovery(what: &str, extra: i64, r: &Recovery) {
    eprintln!(
        "recovery after {what}: received grew again after {:?}, longest stall {:?}, \
         {extra} more counted after {:?}",
        r.first_growth, r.longest_stall, r.caught_up
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_keeps_counts_exact() {
    let (mut cluster, env) = tokio::join!(NatsCluster::start(3), TestEnv::start());
    // The env's own single NATS server is not used: every client gets the cluster's URLs.
    let urls = cluster.urls();
    let vars = [
        ("NATS_URL", urls.as_str()),
        ("STREAM_REPLICAS", "3"),
        ("WORKERS", "2"),
        ACK_WAIT,
    ];
    let (mut a, mut b) = tokio::join!(
        Aggregator::spawn(&env, &vars),
        Aggregator::spawn(&env, &vars)
    );
    let info = cluster
        .js_request("$JS.API.STREAM.INFO.EVENTS", &Value::Null)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.all_log_tails()));
    assert_eq!(info["config"]["num_replicas"], 3, "{info}");

    // Each phase has its own publisher run (20,000 at 2,000/s), so each kill happens under
    // load however long the previous phase took. Event ids never repeat across runs.
    const COUNT: i64 = 20_000;

    // 1. A follower node (not the stream leader; preferably the one aggregator A is
    // connected to, so A has to reconnect) and aggregator B, together. B stays down until A
    // alone has counted 4,000 more.
    let mut publisher = Publisher::start(&urls, COUNT as u32, 2_000, 31);
    wait_received_or_publisher_done(&a, &mut publisher, 4_000).await;
    let stream_leader = cluster.stream_leader("EVENTS").await;
    let consumer_leader = cluster.consumer_leader("EVENTS", "aggregator").await;
    let is_stream_leader = |i: usize| stream_leader.as_deref() == Ok(cluster.name(i));
    let follower = connected_port(&a)
        .and_then(|p| cluster.index_of_port(p))
        .filter(|&i| !is_stream_leader(i))
        .or_else(|| (0..cluster.len()).find(|&i| !is_stream_leader(i)))
        .expect("a node that is not the stream leader");
    let base = a.received().await.expect("stats before the kill");
    eprintln!(
        "killing NATS node {} (A connected to it: {}; stream leader {stream_leader:?}, \
         consumer leader {consumer_leader:?}) and aggregator B at received={base} (so far A \
         counted {}, B {})",
        cluster.name(follower),
        connected_port(&a) == Some(cluster.port(follower)),
        a.metric("aggregator_events_received_total").await as i64,
        b.metric("aggregator_events_received_total").await as i64,
    );
    let killed_at = Instant::now();
    cluster.kill(follower);
    b.kill();
    let target = (base + 4_000).min(COUNT);
    let (recovery, ()) = tokio::join!(
        watch_recovery(&a, &mut publisher, killed_at, base, target),
        async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            cluster.restart(follower).await;
            eprintln!(
                "NATS node {} back after {:?}",
                cluster.name(follower),
                killed_at.elapsed()
            );
        }
    );
    print_recovery(
        &format!(
            "killing follower {} and aggregator B",
            cluster.name(follower)
        ),
        target - base,
        &recovery,
    );
    b.restart().await;
    let first = publisher.finish().await;
    eprintln!("publisher run 1: {first}");
    assert_eq!(int(&first, "failed"), 0, "{first}");
    assert_eq!(int(&first, "published"), COUNT, "{first}");

    // 2. The stream leader, kept down until the other two have elected a new one.
    let mut publisher = Publisher::start(&urls, COUNT as u32, 2_000, 32);
    wait_received_or_publisher_done(&a, &mut publisher, COUNT + 4_000).await;
    let leader = wait_new_stream_leader(&cluster, "")
        .await
        .unwrap_or_else(|| panic!("the stream has no leader\n{}", cluster.all_log_tails()));
    let victim = cluster.index_of(&leader).expect("leader is a node");
    let base = a.received().await.expect("stats before the kill");
    eprintln!(
        "killing the stream leader {leader} (consumer leader {:?}) at received={base}",
        cluster.consumer_leader("EVENTS", "aggregator").await,
    );
    let killed_at = Instant::now();
    cluster.kill(victim);
    let target = (base + 4_000).min(2 * COUNT);
    let (recovery, ()) = tokio::join!(
        watch_recovery(&a, &mut publisher, killed_at, base, target),
        async {
            let elected = wait_new_stream_leader(&cluster, &leader).await;
            eprintln!(
                "new stream leader {elected:?} after {:?}",
                killed_at.elapsed()
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.restart(victim).await;
            eprintln!("NATS node {leader} back after {:?}", killed_at.elapsed());
        }
    );
    print_recovery(
        &format!("killing the stream leader {leader}"),
        target - base,
        &recovery,
    );
    let second = publisher.finish().await;
    eprintln!("publisher run 2: {second}");
    assert_eq!(int(&second, "failed"), 0, "{second}");
    assert_eq!(int(&second, "published"), COUNT, "{second}");

    let published = 2 * COUNT;
    let unique = int(&first, "unique") + int(&second, "unique");
    // One stream, one incarnation, whichever node answered each replica's set-up.
    let incarnations: Vec<(i32, String)> =
        sqlx::query_as("SELECT id, incarnation FROM streams ORDER BY id")
            .fetch_all(&env.db().await)
            .await
            .unwrap();
    eprintln!("stream incarnations: {incarnations:?}");
    assert_exact(&env, &mut [&mut a, &mut b], published, unique).await;
    assert_eq!(
        incarnations.len(),
        1,
        "stream incarnations: {incarnations:?}"
    );
}

/// SIGTERMs `agg` (must exit 0), waits until the other replica counts on alone (while the
/// publisher runs), then starts `agg` again and waits until it is ready.
async fn roll(name: &str, agg: &mut Aggregator, other: &Aggregator, publisher_done: bool) {
    let before = other.received().await.expect("stats of the other replica");
    let status = agg.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "aggregator {name} exited with {status} after SIGTERM\n{}",
        agg.log_tail()
    );
    // While it is down the other replica keeps counting.
    if !publisher_done {
        other.wait_received_at_least(before + 1).await;
    }
    agg.restart().await;
    eprintln!(
        "aggregator {name} restarted (publisher still running: {})",
        !publisher_done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_both_aggregators_under_load_keeps_counts_exact() {
    let env = TestEnv::start().await;
    let vars = [("WORKERS", "2"), ACK_WAIT];
    let (mut a, mut b) = tokio::join!(
        Aggregator::spawn(&env, &vars),
        Aggregator::spawn(&env, &vars)
    );
    let mut publisher = Publisher::start(&env.nats_url(), 24_000, 2_000, 32);
    wait_received_or_publisher_done(&a, &mut publisher, 2_000).await;

    roll("A", &mut a, &b, publisher.is_done()).await;
    publisher.check().await;
    roll("B", &mut b, &a, publisher.is_done()).await;

    let summary = publisher.finish().await;
    assert_eq!(int(&summary, "failed"), 0, "{summary}");
    assert_eq!(int(&summary, "published"), 24_000, "{summary}");
    let unique = int(&summary, "unique");
    assert_exact(&env, &mut [&mut a, &mut b], 24_000, unique).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_create_stream_and_consumer_once() {
    let env = TestEnv::start().await;
    let vars = [("WORKERS", "2"), ACK_WAIT];
    let (mut a, mut b, mut c, mut d) = tokio::join!(
        Aggregator::spawn(&env, &vars),
        Aggregator::spawn(&env, &vars),
        Aggregator::spawn(&env, &vars),
        Aggregator::spawn(&env, &vars),
    );

    let client = env.nats.connect().await;
    let streams = js_api(&client, "$JS.API.STREAM.NAMES", &json!({}))
        .await
        .unwrap();
    assert_eq!(streams["streams"], json!(["EVENTS"]), "{streams}");
    let consumers = js_api(&client, "$JS.API.CONSUMER.NAMES.EVENTS", &json!({}))
        .await
        .unwrap();
    assert_eq!(consumers["consumers"], json!(["aggregator"]), "{consumers}");
    // Created once: a single stream incarnation was registered by all four.
    let incarnations: i64 = sqlx::query_scalar("SELECT count(*) FROM streams")
        .fetch_one(&env.db().await)
        .await
        .unwrap();
    assert_eq!(incarnations, 1, "stream incarnations registered");

    let summary = run_publisher(
        &env,
        &["--count", "2000", "--duplicate-rate", "0.3", "--seed", "33"],
    )
    .await;
    assert_eq!(int(&summary, "published"), 2_000, "{summary}");
    let unique = int(&summary, "unique");
    assert_exact(&env, &mut [&mut a, &mut b, &mut c, &mut d], 2_000, unique).await;
    let mut per_replica = Vec::new();
    for agg in [&a, &b, &c, &d] {
        per_replica.push(agg.metric("aggregator_events_received_total").await);
    }
    eprintln!("messages counted per replica: {per_replica:?}");
    assert_eq!(per_replica.iter().sum::<f64>(), 2_000.0, "{per_replica:?}");
}
