//! The output stream of the stream out (`OUTPUT_STREAM_NAME`, subjects
//! `<OUTPUT_SUBJECT_PREFIX>.>`): created when missing, with the settings' replicas and limits.

use super::retry_creation_race;
use crate::settings::OutboxSettings;
use anyhow::Context;
use async_nats::jetstream::{self, stream};

pub fn output_stream_config(o: &OutboxSettings) -> stream::Config {
    stream::Config {
        name: o.stream_name.clone(),
        description: Some(
            "each event stored for the first time, once (aggregator stream out)".into(),
        ),
        subjects: vec![shared::subject::stream_subjects(&o.subject_prefix)],
        storage: stream::StorageType::File,
        num_replicas: usize::from(o.stream_replicas),
        // The publisher does not rely on it (it fences with the expected last sequence), but a
        // consumer of the stream may: each message carries `Nats-Msg-Id` = `<topic>:<event_id>`.
        duplicate_window: crate::config::STREAM_DUPLICATE_WINDOW,
        max_age: o.stream_max_age,
        max_bytes: o.stream_max_bytes,
        max_message_size: o.stream_max_msg_size,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// Gets the output stream, or creates it.
pub async fn ensure_output_stream(
    js: &jetstream::Context,
    o: &OutboxSettings,
) -> anyhow::Result<stream::Stream> {
    retry_creation_race(|| async {
        js.get_or_create_stream(output_stream_config(o))
            .await
            .with_context(|| format!("getting or creating output stream {}", o.stream_name))
    })
    .await
}
