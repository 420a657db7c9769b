//! The messages the pipeline makes durable, as every layer sees them: a stream message
//! (identified by its [`MessageKey`]) that carries a valid event ([`Record`]) or could not be
//! stored ([`DeadLetter`]). The store writes them, the WAL logs them, the worker and the
//! replayer hand them over; none of those owns them.

use serde::{Deserialize, Serialize};
use shared::Event;

/// A stored event as readers get it (`GET /events`, the live tail, the stream out): the event
/// plus when it was stored and the trace context it was published with.
#[derive(Debug, Serialize)]
pub struct EventItem {
    pub topic: String,
    pub event_id: String,
    pub timestamp: String,
    pub source: String,
    pub payload: Box<serde_json::value::RawValue>,
    pub stored_at: String,
    /// W3C trace context the event was published with (null when it had none).
    pub traceparent: Option<String>,
}

/// Where a message sits: its stream incarnation (`streams.id`) and stream sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageKey {
    pub stream_id: i32,
    pub seq: i64,
}

/// A valid stream message to store: where it came from and the event it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Id of the stream incarnation (`streams.id`).
    pub stream_id: i32,
    /// Stream sequence of the message.
    pub seq: i64,
    pub event: Event,
    /// W3C trace context the message was published with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A stream message that could not be stored, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stream_id: i32,
    pub seq: i64,
    pub subject: String,
    /// The raw bytes, truncated to [`MAX_DEAD_LETTER_BYTES`].
    pub raw: Vec<u8>,
    /// Size of the original message in bytes.
    pub raw_size: i32,
    pub reason: String,
}

/// Raw bytes of a dead letter kept for inspection.
pub const MAX_DEAD_LETTER_BYTES: usize = 8 * 1024;

/// Characters of a dead letter's reason kept.
pub const MAX_REASON_CHARS: usize = 1024;

impl Record {
    pub fn key(&self) -> MessageKey {
        MessageKey {
            stream_id: self.stream_id,
            seq: self.seq,
        }
    }
}

impl DeadLetter {
    pub fn key(&self) -> MessageKey {
        MessageKey {
            stream_id: self.stream_id,
            seq: self.seq,
        }
    }

    /// A dead letter for the message `raw`, keeping at most [`MAX_DEAD_LETTER_BYTES`] of it
    /// and its original size. The subject and reason become text Postgres can hold (NUL is
    /// the one character a `text` column refuses: a subject may carry it), the reason at
    /// most [`MAX_REASON_CHARS`] long; the raw bytes are kept exactly.
    pub fn new(stream_id: i32, seq: i64, subject: String, raw: &[u8], reason: String) -> Self {
        Self {
            stream_id,
            seq,
            subject: storable_text(subject, usize::MAX),
            raw: raw[..raw.len().min(MAX_DEAD_LETTER_BYTES)].to_vec(),
            raw_size: i32::try_from(raw.len()).unwrap_or(i32::MAX),
            reason: storable_text(reason, MAX_REASON_CHARS),
        }
    }
}

/// `s` without NUL (replaced by U+FFFD) and cut to `max_chars` characters.
fn storable_text(s: String, max_chars: usize) -> String {
    let cut = s.char_indices().nth(max_chars).map(|(i, _)| i);
    if !s.contains('\0') && cut.is_none() {
        return s;
    }
    let s = cut.map_or(s.as_str(), |i| &s[..i]);
    s.replace('\0', "\u{fffd}")
}
