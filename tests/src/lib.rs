//! Shared integration-test harness for the telemetry aggregator.
//!
//! Every test gets PRIVATE servers on free ports ([`TestEnv`]: a `nats-server -js` and a
//! PostgreSQL cluster), so it may kill, stop, pause and restart them freely and tests
//! can run in parallel (threads of `cargo test` and nextest processes). The shared
//! services on 4222/5432 are never touched.
//!
//! - [`Nats`], [`Postgres`], [`TestEnv`]: the private infrastructure.
//! - [`Aggregator`]: the `aggregator` binary as a child process, plus HTTP helpers.
//! - [`run_publisher`], [`publish_raw`], [`event_json`]: ways to feed events in.
//! - [`downstream`]: the output stream of the stream out read whole, and an SSE client.
//! - [`Security`]: TLS and authorization for a private NATS server or cluster
//!   ([`Nats::secured`], [`NatsCluster::start_secured`], [`TestEnv::start_secured`]).
//! - [`eventually`], [`free_port`]: utilities.
//!
//! Every child process is SIGKILLed on drop (also when a test panics) and gets
//! `PR_SET_PDEATHSIG` so even a killed test process leaves nothing behind. Panic
//! messages include the relevant log tail. Timeouts are safety nets only.
//!
//! Environment knobs: `IT_KEEP_DIRS=1` keeps temp dirs (logs, data) for inspection;
//! `IT_SKIP_BUILD=1` never runs `cargo build` for the binaries; `NATS_SERVER_BIN=<path>` runs
//! every private NATS server from that binary instead of the pinned current one
//! ([`nats_server`]).

pub mod aggregator;
pub mod binaries;
pub mod browser;
pub mod checker;
pub mod cluster;
pub mod downstream;
pub mod env;
pub mod nats;
pub mod nats_server;
pub mod pki;
pub mod postgres;
pub mod publish;
pub mod secure;
pub mod sidecar;
pub mod util;

pub use aggregator::{Aggregator, FAST_FAULTS};
pub use binaries::{aggregator_bin, publisher_bin, workspace_root};
pub use cluster::NatsCluster;
pub use env::{TestEnv, AGGREGATOR_DB};
pub use nats::Nats;
pub use nats_server::{nats_server, pinned_version};
pub use postgres::{PgTls, Postgres};
pub use publish::{
    event_json, publish_in_background, publish_raw, publisher_output, run_publisher,
    run_publisher_at, run_publisher_with,
};
pub use secure::{AuthMode, Security};
pub use sidecar::Sidecar;
pub use util::{
    assert_consistent, assert_counts, count, create_stream, eventually, file_tail, free_port, int,
    metric_sum, strip_ansi, wait_compacted, TempDir,
};
