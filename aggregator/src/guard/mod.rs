//! The write guard: what stands between a batch and the database.
//!
//! * [`retry`]: the backoff schedule for retried batch writes.

pub mod retry;
