//! Bad input, dead letters and hardening: malformed stream messages are dead-lettered (never
//! redelivered, never blocking their batch-mates), `GET /dead-letters` shows them exactly,
//! `aggregator redrive` puts them back through the normal path once, a message that crashes
//! the process is dead-lettered instead of looping, hostile HTTP requests never get a 5xx, and
//! bad configuration stops start-up with a line naming the variable.
//!
//! Every test runs the real aggregator binary against its own private NATS and Postgres.
//! Counting is asynchronous: tests wait for the pipeline to settle, then assert exact values.
//! Timeouts are safety nets only.
//!
//! One module per concern: `cases` (the malformed and valid messages), `malformed`, `redrive`,
//! `poison`, `http`, `config`, `dead_letters`; `common` holds what they share.

mod cases;
mod common;
mod config;
mod dead_letters;
mod http;
mod malformed;
mod poison;
mod redrive;
