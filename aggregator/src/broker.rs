//! NATS JetStream set-up: the stream, the durable pull consumer and the stream's identity.
//!
//! Creation is idempotent so that several replicas can start at once: each one gets the
//! stream/consumer if it exists and creates it otherwise; losing a creation race is followed
//! by another get.

use crate::config::Config;
use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use std::time::Duration;

/// The consumer and the identity of the stream incarnation it belongs to.
pub struct Subscription {
    pub consumer: consumer::PullConsumer,
    /// Stream name and creation time in nanoseconds: a deleted and re-created stream gets a
    /// new identity even though its sequence numbers start again at 1.
    pub stream_name: String,
    pub stream_created_ns: String,
}

pub async fn connect(config: &Config) -> anyhow::Result<async_nats::Client> {
    // A cluster is a comma-separated list; the client fails over between its servers.
    let servers = shared::subject::nats_servers(&config.nats_url)
        .into_iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("NATS_URL: {:?} is not a list of NATS URLs", config.nats_url))?;
    async_nats::ConnectOptions::new()
        .name("aggregator")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {}", config.nats_url))
}

pub fn stream_config(config: &Config) -> stream::Config {
    stream::Config {
        name: config.stream_name.clone(),
        subjects: vec![shared::subject::stream_subjects(&config.subject_prefix)],
        storage: stream::StorageType::File,
        num_replicas: usize::from(config.stream_replicas),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

pub fn consumer_config(config: &Config) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(config.consumer_name.clone()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        deliver_policy: consumer::DeliverPolicy::All,
        max_ack_pending: config.max_ack_pending(),
        max_deliver: -1,
        ..Default::default()
    }
}

/// Gets or creates the stream and the consumer, retrying briefly on creation races.
pub async fn subscribe(js: &jetstream::Context, config: &Config) -> anyhow::Result<Subscription> {
    let mut last_err = None;
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
        let stream = match js.get_or_create_stream(stream_config(config)).await {
            Ok(s) => s,
            Err(e) => {
                last_err = Some(
                    anyhow::Error::new(e)
                        .context(format!("getting or creating stream {}", config.stream_name)),
                );
                continue;
            }
        };
        let consumer = match stream
            .get_or_create_consumer(&config.consumer_name, consumer_config(config))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                last_err = Some(anyhow::Error::new(e).context(format!(
                    "getting or creating consumer {}",
                    config.consumer_name
                )));
                continue;
            }
        };
        let created = stream.cached_info().created.unix_timestamp_nanos();
        return Ok(Subscription {
            consumer,
            stream_name: config.stream_name.clone(),
            stream_created_ns: created.to_string(),
        });
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("JetStream set-up failed")))
}

/// Messages the consumer has not delivered yet, or `None` when NATS does not answer.
pub async fn consumer_pending(js: &jetstream::Context, config: &Config) -> Option<u64> {
    let fut = async {
        let mut c: consumer::PullConsumer = js
            .get_consumer_from_stream(&config.consumer_name, &config.stream_name)
            .await
            .ok()?;
        c.info().await.ok().map(|i| i.num_pending)
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}
