//! The aggregator: consumes telemetry events from NATS JetStream and stores each distinct
//! `(topic, event_id)` exactly once in PostgreSQL with exact counters.
//!
//! Data flows one way: [`intake`] (JetStream -> buffer) -> [`worker`] (batch, ack once
//! durable) -> [`guard`] (the database, else the WAL) -> [`store`] (the only SQL) / [`wal`].
//! [`replay`] brings the WAL back once the database is; [`api`] serves operators;
//! [`startup`] wires the parts together and [`shutdown`] stops them in order. The layers,
//! the arrows allowed between them and the owner of each invariant: ARCHITECTURE.md.

pub mod api;
pub mod broker;
pub mod config;
pub mod failpoint;
pub mod guard;
pub mod housekeeping;
pub mod intake;
pub mod message;
pub mod outbox;
pub mod redrive;
pub mod replay;
pub mod settings;
pub mod shutdown;
pub mod source;
pub mod startup;
pub mod store;
pub mod subscription;
pub mod telemetry;
pub mod wal;
pub mod worker;
