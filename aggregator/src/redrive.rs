//! `aggregator redrive`: publish dead letters again after a fix, through the normal path.
//!
//! Each dead letter not redriven yet (or only the given ids) is published again to its
//! original subject with `Nats-Msg-Id: redrive-<id>`, so running the command twice, or again
//! after a crash half-way, never creates the message twice within JetStream's duplicate
//! window; once the stream acknowledged it, the row is marked `redriven_at`. The aggregator
//! then consumes it like any other message: validated again, counted exactly once, stored or
//! dead-lettered anew. Dead letters whose raw bytes were truncated (over 8 KiB) cannot be
//! redriven and are reported.

use crate::broker;
use crate::settings::Settings;
use crate::shutdown::{self, CancellationToken};
use crate::store::Store;
use anyhow::Context;

pub async fn run(settings: &Settings, ids: &[i64], dry_run: bool) -> anyhow::Result<()> {
    let store = Store::connect(&settings.store.database_url, 2).await?;
    let rows = store
        .pending_dead_letters((!ids.is_empty()).then_some(ids))
        .await
        .context("reading dead letters")?;
    if rows.is_empty() {
        println!("no dead letters to redrive");
        return Ok(());
    }
    // Waits while NATS is unreachable; Ctrl-C ends the wait.
    let interrupted = CancellationToken::new();
    shutdown::cancel_on_signal(interrupted.clone());
    let Some(client) = broker::connect(&settings.broker, &interrupted).await? else {
        anyhow::bail!("interrupted while waiting for NATS");
    };
    let js = async_nats::jetstream::new(client.clone());
    let (mut sent, mut skipped) = (0u64, 0u64);
    for row in rows {
        if (row.raw.len() as i64) < i64::from(row.raw_size) {
            println!(
                "skip {}: only {} of {} bytes were kept",
                row.id,
                row.raw.len(),
                row.raw_size
            );
            skipped += 1;
            continue;
        }
        if dry_run {
            println!(
                "would redrive {} to {} ({})",
                row.id, row.subject, row.reason
            );
            continue;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("redrive-{}", row.id).as_str());
        js.publish_with_headers(row.subject.clone(), headers, row.raw.clone().into())
            .await
            .with_context(|| format!("publishing dead letter {}", row.id))?
            .await
            .with_context(|| {
                format!(
                    "waiting for the stream to acknowledge dead letter {}",
                    row.id
                )
            })?;
        store.mark_redriven(row.id).await?;
        println!("redrove {} to {}", row.id, row.subject);
        sent += 1;
    }
    println!("redriven: {sent}, skipped: {skipped}");
    Ok(())
}
