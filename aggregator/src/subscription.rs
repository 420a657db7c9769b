//! Setting up what intake pulls from: the stream (with its identity, see [`crate::broker`]),
//! its incarnation registered in the database, and the durable consumer, both brought to the
//! settings when they exist already (see [`crate::broker::reconcile`]).

use crate::broker;
use crate::settings::BrokerSettings;
use crate::store::Store;

/// The durable consumer, and the id under which the database knows its stream's incarnation.
pub struct Subscription {
    pub consumer: async_nats::jetstream::consumer::PullConsumer,
    pub stream_id: i32,
}

/// Sets up the stream (with its identity, see [`broker`]), registers its incarnation in the
/// database and gets the consumer. Giving a stream its identity and registering it happen
/// under a lock shared by every replica, so replicas starting together agree on one
/// incarnation.
///
/// Refuses a stream whose sequences end below what was already processed under its identity:
/// it was re-created with a copied identity (or lost messages), and its new messages would be
/// taken as already counted.
pub async fn subscribe(
    client: &async_nats::Client,
    store: &Store,
    cfg: &BrokerSettings,
) -> anyhow::Result<Subscription> {
    let (mut stream, identity) = broker::ensure_stream(client, cfg).await?;
    let created_ns = stream
        .cached_info()
        .created
        .unix_timestamp_nanos()
        .to_string();
    let js = async_nats::jetstream::new(client.clone());
    // One lock scope for everything replicas must not interleave: the identity, its
    // registration, and bringing an existing stream and consumer to the settings (they keep
    // the configuration they were created with otherwise).
    let record = store
        .with_setup_lock(|| async {
            let (identity, adopt) = match identity {
                Some(identity) => (identity, None),
                None => (
                    broker::stamp_identity(client, cfg).await?,
                    Some(created_ns.as_str()),
                ),
            };
            let record = store
                .register_stream(&cfg.stream_name, &identity, adopt)
                .await?;
            let last_seq =
                i64::try_from(stream.info().await?.state.last_sequence).unwrap_or(i64::MAX);
            anyhow::ensure!(
                last_seq >= record.highest_seq,
                "stream {} ends at sequence {last_seq}, but sequences up to {} were already \
                 processed under its identity {identity}: it was re-created with a copied \
                 identity (or lost messages), and its new messages would be taken as counted. \
                 Remove the metadata key (or description tag) {} from the stream to give it a \
                 new identity.",
                cfg.stream_name,
                record.highest_seq,
                broker::IDENTITY_KEY,
            );
            broker::reconcile::reconcile(&js, cfg).await?;
            Ok(record)
        })
        .await?;
    let consumer = broker::ensure_consumer(&stream, cfg).await?;
    Ok(Subscription {
        consumer,
        stream_id: record.id,
    })
}
