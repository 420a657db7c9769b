//! HTTP API: `POST /publish`, `GET /events`, `GET /stats`, `GET /health` and `GET /metrics`
//! (DESIGN.md, "HTTP API"). Every test runs the real aggregator binary against its own
//! private NATS and Postgres. Counting is asynchronous, so tests wait with
//! `wait_until_received(n)` and then assert exact values; nothing asserts on timing.
//!
//! One module per endpoint; `common` holds the helpers they share.

mod admission;
mod auth;
mod bounded;
mod common;
mod conventions;
mod cursor;
mod duplicates;
mod events;
mod health;
mod idempotency;
mod in_process;
mod metrics;
mod publish;
mod publisher;
mod read_pool;
mod slow_clients;
mod tail;
