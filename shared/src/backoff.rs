//! Exponential backoff with jitter: the one schedule every retry loop uses (the aggregator's
//! batch writes and its waits for Postgres and JetStream at start-up, the publisher's sends).
//! A first delay doubles after each failed attempt up to a cap; each delay is scaled by a
//! random factor in [0.8, 1.2] so that many callers that failed together do not retry
//! together. How many attempts a caller makes is the caller's business.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failed attempt.
    pub first: Duration,
    /// No delay is longer than this (before jitter).
    pub max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The delay after failed attempt number `attempt` (1-based), without jitter:
    /// `first * 2^(attempt - 1)`, at most `max`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// [`Backoff::nominal`] with ±20% jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        jitter(self.nominal(attempt), &mut rand::rng())
    }
}

/// `d` scaled by a uniform factor in [0.8, 1.2].
pub fn jitter(d: Duration, rng: &mut impl Rng) -> Duration {
    d.mul_f64(rng.random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let got: Vec<u64> = (1..=5).map(|a| b.nominal(a).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16]);
        assert_eq!(b.nominal(100), Duration::from_secs(300));
        let b = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        assert_eq!(b.nominal(7), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..1000 {
            let d = b.delay(3);
            assert!(
                d >= Duration::from_millis(3200) && d <= Duration::from_millis(4800),
                "{d:?}"
            );
        }
    }
}
