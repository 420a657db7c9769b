//! The publisher: a satellite-telemetry load generator that sends an exactly known mix of new
//! events and intentional duplicates to JetStream (or to the aggregator's `POST /publish`),
//! and reports exactly what was accepted.
//!
//! * [`Config`]: the run's settings, parsed from the command line (`publisher --help`).
//! * [`simulator`]: turns a seed into the run's sends (which are duplicates, of what).
//! * `sender`: delivers sends with retries (JetStream with `Nats-Msg-Id`, or HTTP batches),
//!   each with a W3C `traceparent` (`shared::trace`).
//! * [`run`]: drives a run (pacing, bounded in-flight window, progress on stderr: a bar on a
//!   terminal, a plain line a second otherwise, see [`progress`]) and returns its [`Summary`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = publisher::Config { count: 1_000, ..publisher::Config::default() };
//! let summary = publisher::run(config).await?;
//! assert_eq!(summary.published + summary.failed, 1_000);
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod progress;
pub mod simulator;
pub mod summary;

mod pacer;
mod runner;
mod sender;

pub use config::*;
pub use runner::run;
pub use summary::Summary;
