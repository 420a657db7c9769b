//! Housekeeping every `COMPACT_INTERVAL`: compaction of the processed-message record (see
//! [`crate::store::compact`]) and, with `RETENTION` set, deletion of old rows.

use crate::settings::HousekeepingSettings;
use crate::shutdown::CancellationToken;
use crate::store::compact::{Compaction, StreamHistory};
use crate::store::Store;
use std::sync::Arc;

pub async fn run(
    store: Store,
    history: Arc<dyn StreamHistory + Send>,
    settings: HousekeepingSettings,
    shutdown: CancellationToken,
) {
    let HousekeepingSettings {
        interval: every,
        retention,
    } = settings;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let ids = match store.stream_ids().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(error = %e, "compaction skipped");
                continue;
            }
        };
        for id in ids {
            match store
                .compact_stream(id, Compaction::default(), &*history)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(stream_id = id, deleted = n, "compacted processed record"),
                Err(e) => tracing::debug!(error = %e, "compaction failed"),
            }
        }
        // RETENTION is bounded at start-up, so the cutoff is always a representable time.
        if let Some(keep) = retention.and_then(|r| chrono::Duration::from_std(r).ok()) {
            let Some(cutoff) = chrono::Utc::now().checked_sub_signed(keep) else {
                continue;
            };
            match store.apply_retention(cutoff, 5_000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "retention: deleted old events"),
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    }
}
