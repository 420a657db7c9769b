//! Types and rules shared by the publisher and the aggregator.
//!
//! * [`event`]: the telemetry [`Event`](event::Event), its wire format and the validation rules
//!   from DESIGN.md. An `Event` value can only be built through validation, so an invalid one
//!   cannot exist past the edge of either program.
//! * [`subject`]: how a topic maps to a NATS subject (`<prefix>.<topic>`).
//! * [`id`]: event id generation (UUIDv7, time ordered).
//! * [`trace`]: the W3C `traceparent` carried from publisher to stored event.
//! * [`backoff`]: the retry schedule every retry loop of both programs uses.
//! * [`nats`]: NATS authentication and TLS settings, the connection options built from them.
//! * [`logging`]: `LOG_FORMAT` and the log set-up both programs use.

pub mod backoff;
pub mod event;
pub mod id;
pub mod logging;
pub mod nats;
pub mod secrets;
pub mod subject;
pub mod trace;

pub use event::{Event, Limits, ValidationError};
