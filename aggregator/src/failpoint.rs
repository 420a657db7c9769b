//! Test-only fault injection through `AGGREGATOR_FAILPOINT`, compiled in only with the
//! `failpoints` cargo feature (the test suite builds the binary with it): a release build has
//! no way for an environment variable to make it abort.
//!
//! * `abort-after-commit:N` aborts the process right after the N-th batch commit, before its
//!   messages are acknowledged (a crash between commit and ack must never double-count);
//! * `abort-on-event:ID` aborts whenever an event with that id is about to be written (a
//!   poison message that crashes the process must not loop forever);
//! * `abort-after-publish:N` aborts right after the N-th round of the stream out was
//!   acknowledged by the output stream, before its cursor is saved (a crash between publish
//!   and cursor must never publish an event twice);
//! * `hold-writes:PATH` holds every batch before its write for as long as the file PATH
//!   exists, whatever shutdown says: a write hung on the database while the database still
//!   answers the API (a drain that takes as long as the test wants).

use crate::message::Record;

#[cfg(feature = "failpoints")]
#[derive(Debug, Default)]
pub struct Failpoint {
    abort_after_commit: Option<u64>,
    abort_on_event: Option<String>,
    hold_writes: Option<std::path::PathBuf>,
    abort_after_publish: Option<u64>,
    commits: std::sync::atomic::AtomicU64,
    publishes: std::sync::atomic::AtomicU64,
}

#[cfg(feature = "failpoints")]
impl Failpoint {
    pub fn from_env() -> Self {
        let spec = std::env::var("AGGREGATOR_FAILPOINT").unwrap_or_default();
        Self {
            abort_after_commit: spec
                .strip_prefix("abort-after-commit:")
                .and_then(|n| n.parse().ok()),
            abort_on_event: spec.strip_prefix("abort-on-event:").map(str::to_owned),
            hold_writes: spec.strip_prefix("hold-writes:").map(Into::into),
            abort_after_publish: spec
                .strip_prefix("abort-after-publish:")
                .and_then(|n| n.parse().ok()),
            commits: std::sync::atomic::AtomicU64::new(0),
            publishes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn before_write(&self, records: &[Record]) {
        if let Some(id) = &self.abort_on_event {
            if records.iter().any(|r| r.event.event_id() == id) {
                tracing::error!("failpoint abort-on-event:{id} reached; aborting");
                std::process::abort();
            }
        }
    }

    pub async fn hold(&self, records: &[Record]) {
        let Some(path) = &self.hold_writes else {
            return;
        };
        if !path.exists() {
            return;
        }
        tracing::warn!(
            records = records.len(),
            "failpoint hold-writes: holding a batch until {} is removed",
            path.display()
        );
        while path.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tracing::warn!("failpoint hold-writes: batch released");
    }

    pub fn after_commit(&self) {
        use std::sync::atomic::Ordering;
        if let Some(n) = self.abort_after_commit {
            if self.commits.fetch_add(1, Ordering::SeqCst) + 1 == n {
                tracing::error!("failpoint abort-after-commit:{n} reached; aborting before ack");
                std::process::abort();
            }
        }
    }

    pub fn after_publish(&self) {
        use std::sync::atomic::Ordering;
        if let Some(n) = self.abort_after_publish {
            if self.publishes.fetch_add(1, Ordering::SeqCst) + 1 == n {
                tracing::error!(
                    "failpoint abort-after-publish:{n} reached; aborting before the cursor is saved"
                );
                std::process::abort();
            }
        }
    }
}

/// Without the feature: nothing, whatever the environment says.
#[cfg(not(feature = "failpoints"))]
#[derive(Debug, Default)]
pub struct Failpoint;

#[cfg(not(feature = "failpoints"))]
impl Failpoint {
    pub fn from_env() -> Self {
        if std::env::var_os("AGGREGATOR_FAILPOINT").is_some() {
            tracing::warn!(
                "AGGREGATOR_FAILPOINT is set, but this build has no failpoints (cargo feature \
                 `failpoints`); ignored"
            );
        }
        Self
    }

    pub fn before_write(&self, _records: &[Record]) {}

    pub async fn hold(&self, _records: &[Record]) {}

    pub fn after_commit(&self) {}

    pub fn after_publish(&self) {}
}
