//! JetStream settings (issue 14): the stream's limits (`STREAM_MAX_AGE`, `STREAM_MAX_BYTES`,
//! `STREAM_MAX_MSG_SIZE`, discard old) and their reconciliation at start-up. A setting changed
//! between two starts reaches the existing stream and consumer (read back from the server),
//! the stream keeps its identity, counts stay exact, and what JetStream cannot change is
//! named in a warning. Runs against nats-server 2.9 and 2.10+ alike (the identity lives in
//! the description on 2.9, in metadata later).

use aggregator::broker::identity_of;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use integration_tests::{
    assert_counts, event_json, eventually, publish_raw, strip_ansi, Aggregator, NatsCluster,
    TestEnv,
};
use std::time::Duration;

const KIB: i64 = 1024;
const MIB: i64 = 1024 * KIB;
const GIB: i64 = 1024 * MIB;

async fn stream_config(js: &jetstream::Context) -> stream::Config {
    let mut s = js.get_stream("EVENTS").await.expect("stream EVENTS");
    s.info().await.expect("stream info").config.clone()
}

async fn consumer_config(js: &jetstream::Context) -> consumer::Config {
    let s = js.get_stream("EVENTS").await.expect("stream EVENTS");
    s.consumer_info("aggregator")
        .await
        .expect("consumer info")
        .config
}

/// Lines of the aggregator's log (every run) containing `needle`.
fn log_lines(agg: &Aggregator, needle: &str) -> Vec<String> {
    std::fs::read_to_string(agg.log_path())
        .unwrap_or_default()
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains(needle))
        .collect()
}

async fn publish(js: &jetstream::Context, ids: &[&str]) {
    for id in ids {
        publish_raw(js, "events.a.b", event_json("a.b", id, "SAT-0001")).await;
    }
}

async fn stop(agg: &mut Aggregator) {
    let status = agg.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", agg.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_settings_reach_the_existing_stream_and_consumer_on_restart() {
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    let mut first = Aggregator::spawn(&env, &[]).await;
    publish(&js, &["e1", "e2", "e1"]).await;
    assert_counts(&first.wait_until_received(3).await, 3, 2, 1);

    let created = stream_config(&js).await;
    assert_eq!(created.max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(created.max_bytes, GIB);
    assert_eq!(created.max_message_size, 256 * KIB as i32);
    assert_eq!(created.discard, stream::DiscardPolicy::Old);
    let identity = identity_of(&created).expect("the stream carries an identity");
    let c = consumer_config(&js).await;
    assert_eq!(c.ack_wait, Duration::from_secs(30));
    // MAX_BUFFER_SIZE + 2 x WORKERS x BATCH_SIZE with the defaults.
    assert_eq!(c.max_ack_pending, 10_000 + 2 * 4 * 500);
    stop(&mut first).await;

    let changed = [
        ("ACK_WAIT", "45s"),
        ("MAX_BUFFER_SIZE", "2000"),
        ("WORKERS", "2"),
        ("BATCH_SIZE", "100"),
        ("STREAM_MAX_AGE", "1h"),
        ("STREAM_MAX_BYTES", "512MiB"),
        ("STREAM_MAX_MSG_SIZE", "128KiB"),
    ];
    let mut second = Aggregator::spawn(&env, &changed).await;
    let updated = stream_config(&js).await;
    assert_eq!(updated.max_age, Duration::from_secs(3600));
    assert_eq!(updated.max_bytes, 512 * MIB);
    assert_eq!(updated.max_message_size, 128 * KIB as i32);
    assert_eq!(updated.discard, stream::DiscardPolicy::Old);
    assert_eq!(updated.num_replicas, 1);
    assert_eq!(updated.subjects, created.subjects);
    // The update started from the server's configuration: the identity is the same, in the
    // same place.
    assert_eq!(identity_of(&updated).as_deref(), Some(identity.as_str()));
    assert_eq!(updated.description, created.description);
    assert_eq!(
        updated.metadata.get(aggregator::broker::IDENTITY_KEY),
        created.metadata.get(aggregator::broker::IDENTITY_KEY)
    );
    let c = consumer_config(&js).await;
    assert_eq!(c.ack_wait, Duration::from_secs(45));
    assert_eq!(c.max_ack_pending, 2000 + 2 * 2 * 100);
    assert_eq!(c.max_deliver, -1);
    assert_eq!(c.ack_policy, consumer::AckPolicy::Explicit);
    assert_eq!(c.deliver_policy, consumer::DeliverPolicy::All);
    let updates = log_lines(&second, "setting updated");
    assert_eq!(updates.len(), 5, "{updates:#?}");
    for setting in [
        "STREAM_MAX_AGE",
        "STREAM_MAX_BYTES",
        "STREAM_MAX_MSG_SIZE",
        "ACK_WAIT",
        "MAX_BUFFER_SIZE",
    ] {
        assert!(
            updates.iter().any(|l| l.contains(setting)),
            "{setting}: {updates:#?}"
        );
    }

    // Reconciling again changes nothing.
    stop(&mut second).await;
    second.restart().await;
    assert_eq!(log_lines(&second, "setting updated").len(), 5);
    assert!(
        log_lines(&second, " WARN ").is_empty(),
        "{}",
        second.log_tail()
    );
    assert_eq!(stream_config(&js).await, updated);

    // The same incarnation: messages counted before are not counted again.
    publish(&js, &["e3", "e2", "e4"]).await;
    assert_counts(&second.wait_until_received(6).await, 6, 4, 2);
    let db = env.db().await;
    assert_eq!(
        integration_tests::count(&db, "SELECT count(*) FROM streams").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_lifts_a_limit() {
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    let mut limited = Aggregator::spawn(&env, &[]).await;
    publish(&js, &["e1"]).await;
    assert_counts(&limited.wait_until_received(1).await, 1, 1, 0);
    stop(&mut limited).await;

    let unlimited = [
        ("STREAM_MAX_AGE", "0"),
        ("STREAM_MAX_BYTES", "0"),
        ("STREAM_MAX_MSG_SIZE", "0"),
    ];
    let mut agg = Aggregator::spawn(&env, &unlimited).await;
    let config = stream_config(&js).await;
    assert_eq!(config.max_age, Duration::ZERO);
    assert_eq!(config.max_bytes, -1);
    assert_eq!(config.max_message_size, -1);
    assert_eq!(log_lines(&agg, "setting updated").len(), 3);
    // The server's -1 is the same "no limit" as the settings' 0: nothing to update again.
    agg.restart().await;
    assert_eq!(
        log_lines(&agg, "setting updated").len(),
        3,
        "{}",
        agg.log_tail()
    );
    publish(&js, &["e2", "e1"]).await;
    assert_counts(&agg.wait_until_received(3).await, 3, 2, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_jetstream_cannot_change_are_named_in_a_warning() {
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    // Made by an operator: memory storage, and a consumer delivering only new messages.
    let stream = js
        .create_stream(stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["events.>".into()],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("create stream");
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("aggregator".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .expect("create consumer");
    // A memory stream reserves its limit in memory: keep it small for small machines.
    let settings = [("STREAM_MAX_BYTES", "64MiB"), ("STREAM_REPLICAS", "3")];
    let mut agg = Aggregator::spawn(&env, &settings).await;

    let warnings = log_lines(&agg, " WARN ");
    let named = |needle: &str| warnings.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(named("Memory storage"), 1, "{warnings:#?}");
    assert_eq!(named("`nats stream rm EVENTS`"), 1, "{warnings:#?}");
    assert_eq!(named("deliver policy New"), 1, "{warnings:#?}");
    assert_eq!(
        named("`nats consumer rm EVENTS aggregator`"),
        1,
        "{warnings:#?}"
    );
    // A single server holds one replica: named, and the stream keeps working.
    assert_eq!(
        named("STREAM_REPLICAS=3 could not be applied"),
        1,
        "{warnings:#?}"
    );
    assert_eq!(warnings.len(), 3, "{warnings:#?}");

    // What can be changed was, around what cannot.
    let config = stream_config(&js).await;
    assert_eq!(config.storage, stream::StorageType::Memory);
    assert_eq!(config.num_replicas, 1);
    assert_eq!(config.max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(config.max_bytes, 64 * MIB);
    assert_eq!(config.max_message_size, 256 * KIB as i32);
    assert!(identity_of(&config).is_some(), "{config:?}");
    let c = consumer_config(&js).await;
    assert_eq!(c.deliver_policy, consumer::DeliverPolicy::New);
    assert_eq!(c.ack_wait, Duration::from_secs(30));
    assert_eq!(c.max_ack_pending, 10_000 + 2 * 4 * 500);

    publish(&js, &["e1", "e1"]).await;
    assert_counts(&agg.wait_until_received(2).await, 2, 1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_stream_limit_is_refused_not_lost() {
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;

    // 1 MiB of junk straight to a subject (the server's default max_payload lets it through
    // to the stream): JetStream refuses it with an error the publisher sees.
    let junk = Bytes::from(vec![b'x'; 1024 * 1024]);
    let refused = async {
        js.publish("events.x", junk)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    }
    .await
    .expect_err("the stream stores a message over STREAM_MAX_MSG_SIZE");
    assert!(refused.contains("maximum"), "{refused}");
    assert_eq!(env.stream_messages().await, 0);

    // An event after it is counted alone: the junk reached nothing.
    publish(&js, &["e1"]).await;
    assert_counts(&agg.wait_until_received(1).await, 1, 1, 0);

    // A stream whose limit was lowered under a running aggregator (by hand, or by a replica
    // started with a smaller STREAM_MAX_MSG_SIZE): POST /publish answers with the server's
    // refusal, nothing is taken in silently.
    let mut lowered = stream_config(&js).await;
    lowered.max_message_size = 4 * KIB as i32;
    js.update_stream(&lowered).await.expect("lower the limit");
    let big = serde_json::json!({
        "topic": "a.b",
        "event_id": "big",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "source": "SAT-0001",
        "payload": {"blob": "y".repeat(8 * 1024)},
    });
    let (status, body) = agg.post_json("/publish", &big).await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("did not accept") && error.contains("maximum"),
        "{body}"
    );
    assert_eq!(env.stream_messages().await, 1);
    publish(&js, &["e2"]).await;
    assert_counts(&agg.wait_until_received(2).await, 2, 2, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_replicas_grow_from_one_to_three_on_a_cluster() {
    let (cluster, env) = tokio::join!(NatsCluster::start(3), TestEnv::start());
    let urls = cluster.urls();
    let client = cluster.connect().await.expect("connect to the cluster");
    let js = jetstream::new(client);
    let mut first = Aggregator::spawn(&env, &[("NATS_URL", &urls)]).await;
    // The stream was just created through another node, which nats-server 2.9 may not know
    // yet: "no stream" stored nothing, so the first event is sent again until one answers.
    eventually(
        "the new stream answers",
        Duration::from_secs(30),
        || async {
            match js
                .publish("events.a.b", event_json("a.b", "e1", "SAT-0001"))
                .await
            {
                Ok(ack) => match ack.await {
                    Ok(_) => true,
                    Err(e) if e.to_string().contains("no stream") => false,
                    Err(e) => panic!("PubAck: {e}"),
                },
                Err(e) => panic!("publish: {e}"),
            }
        },
    )
    .await;
    publish(&js, &["e2"]).await;
    assert_counts(&first.wait_until_received(2).await, 2, 2, 0);
    let created = stream_config(&js).await;
    assert_eq!(created.num_replicas, 1);
    stop(&mut first).await;

    let mut second =
        Aggregator::spawn(&env, &[("NATS_URL", &urls), ("STREAM_REPLICAS", "3")]).await;
    let grown = stream_config(&js).await;
    assert_eq!(grown.num_replicas, 3, "{}", second.log_tail());
    assert_eq!(identity_of(&grown), identity_of(&created));
    assert_eq!(
        log_lines(&second, "STREAM_REPLICAS").len(),
        1,
        "{}",
        second.log_tail()
    );
    // Growing a stream moves it to a new group that elects a leader: a publish in that
    // moment is not answered. Wait until the three replicas are current.
    eventually(
        "three current replicas",
        Duration::from_secs(60),
        || async {
            let Ok(mut s) = js.get_stream("EVENTS").await else {
                return false;
            };
            let Ok(info) = s.info().await else {
                return false;
            };
            info.cluster.as_ref().is_some_and(|c| {
                c.leader.is_some() && c.replicas.len() == 2 && c.replicas.iter().all(|p| p.current)
            })
        },
    )
    .await;
    // The consumer (created with the stream's replica count) follows it: its acks survive
    // a node too.
    eventually(
        "the consumer on three nodes",
        Duration::from_secs(60),
        || async {
            let Ok(s) = js.get_stream("EVENTS").await else {
                return false;
            };
            s.consumer_info("aggregator")
                .await
                .is_ok_and(|i| i.cluster.is_some_and(|c| c.replicas.len() == 2))
        },
    )
    .await;
    publish(&js, &["e3", "e1"]).await;
    assert_counts(&second.wait_until_received(4).await, 4, 3, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_stream_dropped_before_they_were_counted_are_reported() {
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    let settings = [("COMPACT_INTERVAL", "200ms")];
    let mut agg = Aggregator::spawn(&env, &settings).await;
    publish(&js, &["e1", "e2", "e3"]).await;
    assert_counts(&agg.wait_until_received(3).await, 3, 3, 0);
    stop(&mut agg).await;
    // While the aggregator is down two events arrive and leave the stream again, as a
    // STREAM_MAX_AGE or STREAM_MAX_BYTES reached during an outage would take them.
    publish(&js, &["e4", "e5"]).await;
    let mut stream = js.get_stream("EVENTS").await.expect("stream");
    stream.purge().await.expect("purge");
    publish(&js, &["e6"]).await;

    agg.restart().await;
    assert_counts(&agg.wait_until_received(4).await, 4, 4, 0);
    let reported = || log_lines(&agg, "stream sequences 4..=5 left the stream");
    eventually("the loss is reported", Duration::from_secs(30), || async {
        !reported().is_empty()
    })
    .await;
    let lines = reported();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(" WARN "), "{}", lines[0]);
    assert_eq!(stream.info().await.expect("info").state.first_sequence, 6);
}
