//! Circuit breaker for the database write path.
//!
//! * CLOSED: writes go through; `threshold` consecutive failures open it.
//! * OPEN: writes are refused (the caller sends batches to the WAL) until `timeout` has
//!   passed since it opened; then the next caller becomes the single probe and the breaker is
//!   HALF_OPEN. Results of writes that started before it opened change nothing: a late
//!   failure does not push the probe back (a steady stream of them would keep it OPEN
//!   forever), a late success does not close it (only the probe does, DESIGN.md).
//! * HALF_OPEN: only the probe writes; its success closes the breaker, its failure opens it
//!   again for another `timeout`.
//!
//! The breaker keeps workers from hammering a database that is down (each attempt would wait
//! for a connection timeout) and lets batches go straight to the WAL instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
        }
    }

    pub const ALL: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

    /// The metric label value (Prometheus convention: lowercase).
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// Sets `aggregator_circuit_breaker_state{state}`: one series per state, 1 for `current`,
/// 0 for the others, so `aggregator_circuit_breaker_state{state="open"} == 1` is an alert and
/// no one has to remember what a number meant.
pub fn record_state(current: State) {
    for s in State::ALL {
        metrics::gauge!(crate::telemetry::names::BREAKER_STATE, "state" => s.label())
            .set(if s == current { 1.0 } else { 0.0 });
    }
}

/// What the breaker allows a caller to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Write normally.
    Write,
    /// Write as the single HALF_OPEN probe.
    Probe,
    /// Do not write to the database.
    Refused,
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    timeout: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, timeout: Duration) -> Self {
        record_state(State::Closed);
        Self {
            threshold: threshold.max(1),
            timeout,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive_failures: 0,
                opened_at: None,
                probe_in_flight: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state inconsistent (every update
        // is a few plain assignments), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Asks to write now.
    pub fn permit(&self) -> Permit {
        self.permit_at(Instant::now())
    }

    pub fn permit_at(&self, now: Instant) -> Permit {
        let mut s = self.lock();
        match s.state {
            State::Closed => Permit::Write,
            State::Open => {
                let elapsed = s.opened_at.map_or(self.timeout, |t| now.duration_since(t));
                if elapsed >= self.timeout {
                    transition(&mut s, State::HalfOpen);
                    s.probe_in_flight = true;
                    Permit::Probe
                } else {
                    Permit::Refused
                }
            }
            State::HalfOpen => {
                if s.probe_in_flight {
                    Permit::Refused
                } else {
                    s.probe_in_flight = true;
                    Permit::Probe
                }
            }
        }
    }

    /// A write succeeded: resets the failure count; the probe's success closes the breaker.
    pub fn on_success(&self) {
        let mut s = self.lock();
        match s.state {
            State::Closed => s.consecutive_failures = 0,
            State::HalfOpen => {
                s.consecutive_failures = 0;
                s.probe_in_flight = false;
                s.opened_at = None;
                transition(&mut s, State::Closed);
            }
            // Only the probe may close it.
            State::Open => {}
        }
    }

    /// A write failed because of the database (not because of the data).
    pub fn on_failure(&self) {
        self.on_failure_at(Instant::now())
    }

    pub fn on_failure_at(&self, now: Instant) {
        let mut s = self.lock();
        match s.state {
            State::HalfOpen => {
                s.probe_in_flight = false;
                s.opened_at = Some(now);
                transition(&mut s, State::Open);
            }
            State::Closed => {
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                if s.consecutive_failures >= self.threshold {
                    s.opened_at = Some(now);
                    transition(&mut s, State::Open);
                }
            }
            // A write that started before the breaker opened: the timer stays.
            State::Open => {}
        }
    }

    /// A probe that ended without a verdict (e.g. cancelled): let another caller probe.
    pub fn release_probe(&self) {
        self.lock().probe_in_flight = false;
    }
}

fn transition(s: &mut Inner, to: State) {
    tracing::warn!(from = s.state.as_str(), to = to.as_str(), "circuit breaker");
    metrics::counter!(crate::telemetry::names::BREAKER_TRANSITIONS, "to" => to.label())
        .increment(1);
    s.state = to;
    record_state(to);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (CircuitBreaker, Instant) {
        (
            CircuitBreaker::new(3, Duration::from_secs(30)),
            Instant::now(),
        )
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let (b, t) = breaker();
        b.on_failure_at(t);
        b.on_failure_at(t);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.permit_at(t), Permit::Write);
        b.on_failure_at(t);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.permit_at(t + Duration::from_secs(29)), Permit::Refused);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let (b, t) = breaker();
        b.on_failure_at(t);
        b.on_failure_at(t);
        b.on_success();
        b.on_failure_at(t);
        b.on_failure_at(t);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let (b, t) = breaker();
        for _ in 0..3 {
            b.on_failure_at(t);
        }
        let later = t + Duration::from_secs(30);
        assert_eq!(b.permit_at(later), Permit::Probe);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.permit_at(later), Permit::Refused);
        assert_eq!(b.permit_at(later), Permit::Refused);
        b.on_success();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.permit_at(later), Permit::Write);
    }

    #[test]
    fn failed_probe_reopens_for_another_timeout() {
        let (b, t) = breaker();
        for _ in 0..3 {
            b.on_failure_at(t);
        }
        let t1 = t + Duration::from_secs(31);
        assert_eq!(b.permit_at(t1), Permit::Probe);
        b.on_failure_at(t1);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.permit_at(t1 + Duration::from_secs(29)), Permit::Refused);
        assert_eq!(b.permit_at(t1 + Duration::from_secs(30)), Permit::Probe);
    }

    #[test]
    fn failures_while_open_do_not_push_the_probe_back() {
        let (b, t) = breaker();
        for _ in 0..3 {
            b.on_failure_at(t);
        }
        // Writes that started before it opened keep failing, every few seconds.
        for s in 1..30 {
            b.on_failure_at(t + Duration::from_secs(s));
        }
        assert_eq!(b.permit_at(t + Duration::from_secs(30)), Permit::Probe);
    }

    #[test]
    fn only_the_probe_closes_an_open_breaker() {
        let (b, t) = breaker();
        for _ in 0..3 {
            b.on_failure_at(t);
        }
        // A write that started before it opened succeeds: still OPEN until the probe.
        b.on_success();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.permit_at(t + Duration::from_secs(1)), Permit::Refused);
        assert_eq!(b.permit_at(t + Duration::from_secs(30)), Permit::Probe);
        b.on_success();
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn released_probe_can_be_taken_again() {
        let (b, t) = breaker();
        for _ in 0..3 {
            b.on_failure_at(t);
        }
        let t1 = t + Duration::from_secs(30);
        assert_eq!(b.permit_at(t1), Permit::Probe);
        b.release_probe();
        assert_eq!(b.permit_at(t1), Permit::Probe);
    }
}
