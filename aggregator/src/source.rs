//! The stream as the lower layers need to see it, behind the small traits they define: a
//! source of messages to fetch again by sequence (WAL replay, [`MessageSource`]) and of which
//! sequences are gone from it for good (compaction, [`StreamHistory`]).
//!
//! A stream id of the database is mapped to the stream's name and identity (see
//! [`crate::broker`]); a stream that was deleted or re-created since no longer holds that
//! incarnation's messages.

use crate::broker;
use crate::message::{DeadLetter, Record};
use crate::replay::{FetchError, MessageSource};
use crate::store::compact::StreamHistory;
use crate::store::Store;
use crate::wal::WalEntry;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, ErrorCode};
use futures::future::BoxFuture;
use shared::Limits;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Message lookups compaction may make per gap.
const MAX_LOOKUPS_PER_GAP: u32 = 256;
/// A gap is looked up in the stream only once it has been there this long: most gaps are
/// messages in flight, filled within a batch's time.
const MIN_GAP_AGE: Duration = Duration::from_secs(1);
/// Gaps remembered at most (beyond it the memory starts over).
const MAX_GAPS_REMEMBERED: usize = 10_000;

pub struct JetStreamSource {
    js: jetstream::Context,
    store: Store,
    subject_prefix: String,
    limits: Limits,
    /// Stream id -> (name, identity), for ids that have an identity (it never changes).
    identities: Mutex<HashMap<i32, (String, String)>>,
    /// (stream id, first sequence) of gaps compaction met, and when it first did.
    gaps: Mutex<HashMap<(i32, i64), Instant>>,
}

impl JetStreamSource {
    pub fn new(
        js: jetstream::Context,
        store: Store,
        subject_prefix: String,
        limits: Limits,
    ) -> Self {
        Self {
            js,
            store,
            subject_prefix,
            limits,
            identities: Mutex::new(HashMap::new()),
            gaps: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the gap starting at `first` has been seen for at least [`MIN_GAP_AGE`].
    fn gap_is_old(&self, stream_id: i32, first: i64) -> bool {
        let Ok(mut gaps) = self.gaps.lock() else {
            return false;
        };
        if gaps.len() >= MAX_GAPS_REMEMBERED {
            gaps.clear();
        }
        let seen = *gaps.entry((stream_id, first)).or_insert_with(Instant::now);
        seen.elapsed() >= MIN_GAP_AGE
    }

    async fn identity(&self, stream_id: i32) -> Result<(String, String), FetchError> {
        if let Some(known) = self.cached(stream_id) {
            return Ok(known);
        }
        match self.store.stream_identity(stream_id).await {
            Ok(Some((name, Some(identity)))) => {
                if let Ok(mut cache) = self.identities.lock() {
                    cache.insert(stream_id, (name.clone(), identity.clone()));
                }
                Ok((name, identity))
            }
            Ok(Some((name, None))) => Err(FetchError::Gone(format!(
                "stream {name} (id {stream_id}) was registered without an identity by an \
                 earlier version: whether it still holds that incarnation cannot be told"
            ))),
            Ok(None) => Err(FetchError::Unavailable(format!(
                "stream id {stream_id} is not registered in this database"
            ))),
            Err(e) => Err(FetchError::Unavailable(e.to_string())),
        }
    }

    fn cached(&self, stream_id: i32) -> Option<(String, String)> {
        self.identities.lock().ok()?.get(&stream_id).cloned()
    }

    async fn fetch_entry(&self, stream_id: i32, seq: i64) -> Result<WalEntry, FetchError> {
        let (name, identity) = self.identity(stream_id).await?;
        let stream = match self.js.get_stream(&name).await {
            Ok(s) => s,
            Err(e) => {
                let not_found = matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND);
                return Err(if not_found {
                    FetchError::Gone(format!("stream {name} was deleted"))
                } else {
                    FetchError::Unavailable(e.to_string())
                });
            }
        };
        if broker::identity_of(&stream.cached_info().config).as_deref() != Some(&identity) {
            return Err(FetchError::Gone(format!(
                "stream {name} was re-created since; incarnation {identity} is gone"
            )));
        }
        let msg = match stream
            .get_raw_message(u64::try_from(seq).unwrap_or(0))
            .await
        {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => {
                return Err(FetchError::Gone(format!(
                    "stream {name} no longer holds sequence {seq}"
                )))
            }
            Err(e) => return Err(FetchError::Unavailable(e.to_string())),
        };
        let subject = msg.subject.to_string();
        let traceparent = msg
            .headers
            .get(shared::trace::HEADER)
            .and_then(|v| shared::trace::parse(v.as_str()));
        Ok(
            match shared::subject::decode_message(
                &msg.payload,
                &subject,
                &self.subject_prefix,
                &self.limits,
            ) {
                Ok(event) => WalEntry::Event(Record {
                    stream_id,
                    seq,
                    event,
                    traceparent,
                }),
                Err(reason) => WalEntry::Dead(DeadLetter::new(
                    stream_id,
                    seq,
                    subject,
                    &msg.payload,
                    reason,
                )),
            },
        )
    }
}

impl MessageSource for JetStreamSource {
    fn fetch(&self, stream_id: i32, seq: i64) -> BoxFuture<'_, Result<WalEntry, FetchError>> {
        Box::pin(self.fetch_entry(stream_id, seq))
    }
}

impl StreamHistory for JetStreamSource {
    fn gone_prefix(&self, stream_id: i32, first: i64, last: i64) -> BoxFuture<'_, i64> {
        Box::pin(async move {
            if !self.gap_is_old(stream_id, first) {
                return 0;
            }
            let Ok((name, identity)) = self.identity(stream_id).await else {
                return 0;
            };
            broker::gone_prefix(&self.js, &name, &identity, first, last, MAX_LOOKUPS_PER_GAP).await
        })
    }
}
