//! The stream out: every event stored for the first time, published once to
//! `<OUTPUT_SUBJECT_PREFIX>.<topic>` on the output stream.
//!
//! The events table is the outbox: the batch write stores an event and its commit-order
//! position in one transaction, so what is published is exactly what was stored
//! ([`crate::store::outbox`] explains why the order has no late arrivals). One replica at a
//! time publishes: it holds a Postgres advisory lock on a session of its own, which a replica
//! that dies loses with its connection, so another takes over within `OUTBOX_POLL_INTERVAL`
//! plus a second.
//!
//! # Exactly once into the output stream
//! Each message is published with `Nats-Expected-Last-Sequence` = the output stream's sequence
//! of the message before it. The server stores it only if nothing else was stored in between,
//! so the messages of a publisher land contiguously and in order, and a second publisher (one
//! that lost its lease and does not know it yet) is refused instead of interleaving. The
//! cursor (position, output sequence, count) is saved after the acknowledgements. After any
//! failure, and when a publisher takes over, the output stream itself says what was stored:
//! the messages after the saved sequence carry their position (`Aggregator-Position`), and the
//! cursor moves past the last of them. So an event is never published twice, however long the
//! gap between a publish and the cursor's save, and never skipped. `Nats-Msg-Id` =
//! `<topic>:<event_id>` is set as well, for consumers and as a second guard.

use crate::failpoint::Failpoint;
use crate::settings::OutboxSettings;
use crate::shutdown::{pause, CancellationToken};
use crate::store::outbox::{OrderedEvent, OutboxCursor, OutboxLease, Position};
use crate::store::Store;
use crate::telemetry::names;
use anyhow::Context;
use async_nats::jetstream::context::Publish;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use std::time::{Duration, Instant};

/// Header carrying a message's commit-order position (`<xid>-<id>`).
pub const POSITION_HEADER: &str = "Aggregator-Position";

/// How often a replica that does not publish tries to take over, and how often lag is measured.
const LEASE_RETRY: Duration = Duration::from_secs(1);

pub struct Publisher {
    pub store: Store,
    pub js: jetstream::Context,
    pub settings: OutboxSettings,
    pub shutdown: CancellationToken,
    pub failpoint: Failpoint,
}

impl Publisher {
    /// Publishes while it holds the lease, tries to take it over while another replica does,
    /// until shutdown.
    pub async fn run(self) {
        let mut last_lag = Instant::now() - LEASE_RETRY;
        while !self.shutdown.is_cancelled() {
            // Every step may wait on a hung database or NATS; shutdown never waits for it.
            // Cutting a round short anywhere is safe: it is the crash the catch-up handles.
            let Some(mut lease) = self.until_shutdown(self.take_lease()).await.flatten() else {
                self.until_shutdown(self.measure_lag(&mut last_lag)).await;
                pause(&self.shutdown, LEASE_RETRY).await;
                continue;
            };
            metrics::gauge!(names::OUTBOX_PUBLISHER).set(1.0);
            tracing::info!(stream = %self.settings.stream_name, "stream out: this replica publishes");
            let result = self
                .until_shutdown(self.lead(&mut lease, &mut last_lag))
                .await
                .unwrap_or(Ok(()));
            metrics::gauge!(names::OUTBOX_PUBLISHER).set(0.0);
            // Closing tells Postgres at once; a hung one gets the lease back when the session
            // ends anyway.
            let _ = tokio::time::timeout(LEASE_RETRY, lease.release()).await;
            if let Err(e) = result {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "stream out: publishing stopped; retrying"
                );
                pause(&self.shutdown, LEASE_RETRY).await;
            }
        }
    }

    /// `f`, or `None` once shutdown is cancelled.
    async fn until_shutdown<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            v = f => Some(v),
            _ = self.shutdown.cancelled() => None,
        }
    }

    /// The publisher's lease, `None` while another replica holds it (or Postgres is away).
    async fn take_lease(&self) -> Option<OutboxLease> {
        match self.store.try_outbox_lease().await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::debug!(error = %e, "stream out: cannot ask for the publisher lease");
                None
            }
        }
    }

    /// Publishes for as long as the lease holds.
    async fn lead(&self, lease: &mut OutboxLease, last_lag: &mut Instant) -> anyhow::Result<()> {
        let name = &self.settings.stream_name;
        let mut stream =
            crate::broker::output::ensure_output_stream(&self.js, &self.settings).await?;
        let saved = self.store.outbox_cursor(name).await?;
        let mut cursor = catch_up(&mut stream, saved).await?;
        if cursor != saved {
            self.store.save_outbox_cursor(name, &cursor).await?;
        }
        while !self.shutdown.is_cancelled() {
            if !lease.alive().await {
                anyhow::bail!("lost the publisher lease (its Postgres session ended)");
            }
            self.measure_lag(last_lag).await;
            let rows = self
                .store
                .outbox_batch(cursor.position, self.settings.batch as i64)
                .await
                .context("reading stored events")?;
            if rows.is_empty() {
                pause(&self.shutdown, self.settings.poll_interval).await;
                continue;
            }
            let (acked, failure) = self.publish(&rows, cursor.stream_seq).await;
            self.failpoint.after_publish();
            if acked > 0 {
                cursor.position = rows[acked - 1].position();
                cursor.stream_seq += acked as i64;
                cursor.published += acked as i64;
                metrics::counter!(names::OUTBOX_PUBLISHED).increment(acked as u64);
            }
            if let Some(why) = failure {
                // The output stream says what it holds: maybe more than was acknowledged
                // (an acknowledgement lost), maybe another publisher's messages.
                tracing::debug!(%why, "stream out: a publish was not acknowledged as expected");
                cursor = catch_up(&mut stream, cursor).await?;
            }
            self.store
                .save_outbox_cursor(name, &cursor)
                .await
                .context("saving the stream out's cursor")?;
        }
        Ok(())
    }

    /// Publishes `rows` in order, message `i` expecting the output stream's last sequence to
    /// be `last_seq + i`. Returns how many were stored as expected, in an unbroken prefix, and
    /// why the rest were not.
    async fn publish(&self, rows: &[OrderedEvent], last_seq: i64) -> (usize, Option<String>) {
        let mut pending = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let expected = u64::try_from(last_seq).unwrap_or(0) + i as u64;
            let Some(item) = row.event.clone().into_item() else {
                return (
                    0,
                    Some(format!(
                        "event {} has a payload that is not JSON",
                        row.event.id
                    )),
                );
            };
            let body = match serde_json::to_vec(&item) {
                Ok(body) => body,
                Err(e) => return (0, Some(e.to_string())),
            };
            let mut headers = HeaderMap::new();
            headers.insert(POSITION_HEADER, row.position().to_string().as_str());
            if let Some(tp) = &row.event.traceparent {
                headers.insert("traceparent", tp.as_str());
            }
            let publish = Publish::build()
                .headers(headers)
                .message_id(format!("{}:{}", row.event.topic, row.event.event_id))
                .expected_last_sequence(expected)
                .payload(body.into());
            let subject = format!("{}.{}", self.settings.subject_prefix, row.event.topic);
            match self.js.send_publish(subject, publish).await {
                Ok(ack) => pending.push((expected, ack)),
                // The acknowledgements already pending still count, in their prefix.
                Err(e) => return self.settle(pending, Some(e.to_string())).await,
            }
        }
        self.settle(pending, None).await
    }

    /// Awaits the acknowledgements in order; the first one that is not "stored right after the
    /// one before" ends the prefix.
    async fn settle(
        &self,
        pending: Vec<(u64, jetstream::context::PublishAckFuture)>,
        send_failure: Option<String>,
    ) -> (usize, Option<String>) {
        let mut acked = 0;
        for (expected, ack) in pending {
            match ack.await {
                Ok(a) if !a.duplicate && a.sequence == expected + 1 => acked += 1,
                Ok(a) => {
                    return (
                        acked,
                        Some(format!(
                            "stored as sequence {} (duplicate: {}), expected {}",
                            a.sequence,
                            a.duplicate,
                            expected + 1
                        )),
                    )
                }
                Err(e) => return (acked, Some(e.to_string())),
            }
        }
        (acked, send_failure)
    }

    /// Sets the lag gauges, at most once per [`LEASE_RETRY`].
    async fn measure_lag(&self, last: &mut Instant) {
        if last.elapsed() < LEASE_RETRY {
            return;
        }
        *last = Instant::now();
        if let Ok(lag) = self.store.outbox_lag(&self.settings.stream_name).await {
            metrics::gauge!(names::OUTBOX_LAG_ROWS).set(lag.rows as f64);
            metrics::gauge!(names::OUTBOX_LAG_SECONDS).set(lag.seconds);
        }
    }
}

/// `cursor` moved past what the output stream holds after `cursor.stream_seq`: the messages
/// there were stored (by this publisher, with an acknowledgement lost, or by one before it)
/// and must not be published again. A stream that holds less than the cursor says (purged,
/// or deleted and created anew) is taken as it is: nothing stored is published again.
async fn catch_up(
    stream: &mut stream::Stream,
    mut cursor: OutboxCursor,
) -> anyhow::Result<OutboxCursor> {
    let info = stream
        .info()
        .await
        .context("reading the output stream's state")?;
    let last = i64::try_from(info.state.last_sequence).unwrap_or(i64::MAX);
    let first = i64::try_from(info.state.first_sequence).unwrap_or(0);
    if last < cursor.stream_seq {
        tracing::warn!(
            stream = %info.config.name,
            last,
            expected = cursor.stream_seq,
            "stream out: the output stream holds fewer messages than were published to it \
             (purged, or deleted and created anew); publishing goes on after the last event \
             published"
        );
        cursor.stream_seq = last;
        return Ok(cursor);
    }
    let mut seq = (cursor.stream_seq + 1).max(first);
    while seq <= last {
        let message = match stream.get_raw_message(seq as u64).await {
            Ok(m) => Some(m),
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
                ) =>
            {
                None
            }
            Err(e) => return Err(e).context("reading the output stream"),
        };
        let position = message.as_ref().and_then(|m| {
            m.headers
                .get(POSITION_HEADER)
                .and_then(|v| v.as_str().parse::<Position>().ok())
        });
        if let Some(p) = position.filter(|p| *p > cursor.position) {
            cursor.position = p;
            cursor.published += 1;
        }
        seq += 1;
    }
    if last > cursor.stream_seq {
        tracing::info!(
            found = last - cursor.stream_seq,
            "stream out: the output stream already held messages after the saved cursor; \
             moved past them"
        );
    }
    cursor.stream_seq = last;
    Ok(cursor)
}
