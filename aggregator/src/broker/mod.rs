//! NATS JetStream set-up: the stream, its identity and the durable pull consumer.
//!
//! Creation is idempotent so that several replicas can start at once: each one gets the
//! stream/consumer if it exists and creates it otherwise; losing a creation race is followed
//! by another get. An existing stream and consumer are then brought to the settings by
//! [`reconcile`].
//!
//! # Stream identity
//!
//! Processed messages are keyed by (stream incarnation, sequence): a deleted and re-created
//! stream restarts its sequences at 1 and must not be mistaken for the old one. The
//! incarnation is a random token the aggregator stamps into the stream's own configuration
//! when it creates the stream (or first meets one without it): metadata key
//! [`IDENTITY_KEY`] on nats-server 2.10 and later, a `[aggregator.incarnation=...]` tag in
//! the description on older servers, which drop metadata. Every node of a cluster answers
//! with the same configuration, a restore or an upgrade keeps it, and a stream created anew
//! gets a new one. The stream's `created` time is none of these: nodes, restores and
//! idempotent re-creates have been seen to report different ones for the same stream.

use crate::settings::BrokerSettings;
use crate::shutdown::{retry_unless_permanent, CancellationToken, Permanent};
use anyhow::Context;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, consumer, stream};
use std::time::Duration;

pub mod output;
pub mod reconcile;

/// Metadata key (and description tag) holding a stream's incarnation token.
pub const IDENTITY_KEY: &str = "aggregator.incarnation";

/// Connects to NATS, retrying for as long as the server is unreachable (NATS may start after
/// the aggregator) but failing at once, with one line naming the variable, when retrying
/// cannot help: credentials refused, an untrusted certificate, a bad TLS set-up. `None` when
/// `shutdown` comes first. Once connected, the client reconnects by itself.
pub async fn connect(
    config: &BrokerSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<async_nats::Client>> {
    retry_unless_permanent("NATS", shutdown, || connect_once(config)).await
}

/// One pass over the servers (no `retry_on_initial_connect`, which would retry refused
/// credentials forever); a failure retrying cannot fix is [`Permanent`].
async fn connect_once(config: &BrokerSettings) -> anyhow::Result<async_nats::Client> {
    let connecting = config.nats.connect(&config.nats_url, |o| {
        o.name("aggregator")
            .connection_timeout(Duration::from_secs(5))
    });
    connecting.await.map_err(|failure| match failure {
        Ok(transient) => anyhow::Error::msg(transient),
        Err(line) => anyhow::Error::new(Permanent(line)),
    })
}

pub fn stream_config(config: &BrokerSettings) -> stream::Config {
    stream::Config {
        name: config.stream_name.clone(),
        subjects: vec![shared::subject::stream_subjects(&config.subject_prefix)],
        storage: stream::StorageType::File,
        num_replicas: usize::from(config.stream_replicas),
        duplicate_window: crate::config::STREAM_DUPLICATE_WINDOW,
        max_age: config.stream_max_age,
        max_bytes: config.stream_max_bytes,
        max_message_size: config.stream_max_msg_size,
        // The stream is a buffer in front of Postgres: at a limit the oldest messages go,
        // never the new ones publishers are sending.
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

pub fn consumer_config(config: &BrokerSettings) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(config.consumer_name.clone()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        deliver_policy: consumer::DeliverPolicy::All,
        max_ack_pending: config.max_ack_pending,
        max_deliver: -1,
        ..Default::default()
    }
}

/// The incarnation token a stream configuration carries, if any.
pub fn identity_of(config: &stream::Config) -> Option<String> {
    if let Some(token) = config.metadata.get(IDENTITY_KEY) {
        return Some(token.clone());
    }
    let description = config.description.as_deref()?;
    let start = description.find(&format!("[{IDENTITY_KEY}="))? + IDENTITY_KEY.len() + 2;
    let len = description[start..].find(']')?;
    Some(description[start..start + len].to_owned()).filter(|t| !t.is_empty())
}

/// Whether the server keeps stream metadata (nats-server 2.10 and later).
fn keeps_metadata(client: &async_nats::Client) -> bool {
    let version = client.server_info().version;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 10),
        _ => true,
    }
}

/// `config` carrying `token` as its identity, where this server keeps it.
fn stamped(client: &async_nats::Client, mut config: stream::Config, token: &str) -> stream::Config {
    if keeps_metadata(client) {
        config
            .metadata
            .insert(IDENTITY_KEY.to_owned(), token.to_owned());
    } else {
        let tag = format!("[{IDENTITY_KEY}={token}]");
        config.description = Some(match config.description.take() {
            Some(d) if !d.is_empty() => format!("{d} {tag}"),
            _ => tag,
        });
    }
    config
}

fn new_token() -> String {
    shared::id::new_id()
}

/// Gets the stream, or creates it carrying a new identity. Returns the stream (with fresh
/// info) and its identity, `None` when it exists without one (see [`stamp_identity`]).
pub async fn ensure_stream(
    client: &async_nats::Client,
    config: &BrokerSettings,
) -> anyhow::Result<(stream::Stream, Option<String>)> {
    let js = jetstream::new(client.clone());
    retry_creation_race(|| async {
        // A create racing another replica's fails (the configurations differ in their
        // identity): the next get finds the winner's stream.
        let wanted = stamped(client, stream_config(config), &new_token());
        let stream = js
            .get_or_create_stream(wanted)
            .await
            .map_err(|e| stream_error(e, config))?;
        let identity = identity_of(&stream.cached_info().config);
        Ok((stream, identity))
    })
    .await
}

/// A failed get-or-create of the stream, with what to change when the server cannot reserve
/// its size: JetStream reserves `max_bytes` up front, and a small disk (or a low
/// `max_file_store`) refuses the default.
fn stream_error(
    e: impl std::error::Error + Send + Sync + 'static,
    config: &BrokerSettings,
) -> anyhow::Error {
    let hint = if e.to_string().contains("insufficient storage") {
        format!(
            " (the server cannot reserve STREAM_MAX_BYTES = {} bytes of JetStream storage: \
             lower STREAM_MAX_BYTES or give the server more, jetstream.max_file_store)",
            config.stream_max_bytes
        )
    } else {
        String::new()
    };
    anyhow::Error::new(e).context(format!(
        "getting or creating stream {}{hint}",
        config.stream_name
    ))
}

/// Runs a get-or-create up to five times, 100 ms longer apart each time: one that lost a
/// creation race to another replica finds the winner's on the next try. The last error when
/// none succeeded.
async fn retry_creation_race<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut last = attempt().await;
    for n in 1..5u64 {
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 * n)).await;
        last = attempt().await;
    }
    last
}

/// Gives an existing stream without an identity one (a stream created by an operator, or by
/// an earlier version). Call it holding a lock shared by every replica: two replicas stamping
/// at once would each believe its own token. Returns the identity the stream carries now.
pub async fn stamp_identity(
    client: &async_nats::Client,
    config: &BrokerSettings,
) -> anyhow::Result<String> {
    let js = jetstream::new(client.clone());
    let mut stream = js
        .get_stream(&config.stream_name)
        .await
        .with_context(|| format!("reading stream {}", config.stream_name))?;
    let current = stream.info().await?.config.clone();
    if let Some(token) = identity_of(&current) {
        return Ok(token);
    }
    let token = new_token();
    js.update_stream(stamped(client, current, &token))
        .await
        .with_context(|| format!("stamping an identity into stream {}", config.stream_name))?;
    let info = stream.info().await?;
    identity_of(&info.config).with_context(|| {
        format!(
            "stream {} did not keep its identity (metadata {IDENTITY_KEY} or its description tag)",
            config.stream_name
        )
    })
}

/// Gets or creates the durable consumer, retrying briefly on creation races.
pub async fn ensure_consumer(
    stream: &stream::Stream,
    config: &BrokerSettings,
) -> anyhow::Result<consumer::PullConsumer> {
    retry_creation_race(|| async {
        stream
            .get_or_create_consumer(&config.consumer_name, consumer_config(config))
            .await
            .with_context(|| format!("getting or creating consumer {}", config.consumer_name))
    })
    .await
}

/// How many sequences from `first` on (up to `last`) the incarnation `identity` of stream
/// `name` no longer holds: everything when the stream was re-created, the part below its
/// first sequence (purged or expired), then message by message (deleted ones), at most
/// `max_lookups` lookups. 0 when unsure: NATS does not answer, or the stream is not found
/// (which a cluster may also answer for a moment during an election). Only compaction asks,
/// and a wrong "gone" costs nothing but a record kept below the floor (see
/// `store::compact`).
pub async fn gone_prefix(
    js: &jetstream::Context,
    name: &str,
    identity: &str,
    first: i64,
    last: i64,
    max_lookups: u32,
) -> i64 {
    let len = last - first + 1;
    let Ok(stream) = js.get_stream(name).await else {
        return 0;
    };
    let info = stream.cached_info();
    if identity_of(&info.config).as_deref() != Some(identity) {
        return len;
    }
    let first_held = i64::try_from(info.state.first_sequence).unwrap_or(i64::MAX);
    let mut gone = (first_held - first).clamp(0, len);
    for _ in 0..max_lookups {
        if gone == len {
            break;
        }
        let seq = u64::try_from(first + gone).unwrap_or(0);
        match stream.get_raw_message(seq).await {
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => gone += 1,
            _ => break,
        }
    }
    gone
}

/// Messages the consumer has not delivered yet, or `None` when NATS does not answer.
pub async fn consumer_pending(js: &jetstream::Context, config: &BrokerSettings) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_read_from_metadata_or_the_description_tag() {
        let mut c = stream::Config::default();
        assert_eq!(identity_of(&c), None);
        c.description = Some("telemetry [aggregator.incarnation=abc-1] kept".into());
        assert_eq!(identity_of(&c).as_deref(), Some("abc-1"));
        c.metadata.insert(IDENTITY_KEY.into(), "meta".into());
        assert_eq!(identity_of(&c).as_deref(), Some("meta"));
        c.metadata.clear();
        c.description = Some("[aggregator.incarnation=]".into());
        assert_eq!(identity_of(&c), None);
    }
}
