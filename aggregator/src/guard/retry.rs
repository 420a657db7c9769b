//! Retry schedule for batch writes (DESIGN.md, from the seed design): `MAX_RETRIES` attempts
//! at the database, the first at once, each further one after `RETRY_DELAY` doubling (1s,
//! 2s, 4s, 8s with the defaults 5 and 1s), each delay with ±20% jitter so replicas that
//! failed together do not retry together.

use rand::Rng;
use std::time::Duration;

/// Backoff schedule: `attempts` attempts in all.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    pub base: Duration,
}

impl Backoff {
    /// The nominal delay after failed attempt number `attempt` (1-based) before the next one,
    /// without jitter; `None` when that was the last attempt.
    pub fn nominal(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt >= self.attempts {
            return None;
        }
        let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
        Some(
            self.base
                .saturating_mul(factor)
                .min(Duration::from_secs(300)),
        )
    }

    /// The delay after failed attempt number `attempt`, with ±20% jitter.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        self.nominal(attempt).map(|d| jitter(d, &mut rand::rng()))
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
    fn default_schedule_is_five_attempts_one_two_four_eight_seconds_apart() {
        let b = Backoff {
            attempts: 5,
            base: Duration::from_secs(1),
        };
        let got: Vec<_> = (1..=5).map(|a| b.nominal(a)).collect();
        assert_eq!(
            got,
            vec![
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(8)),
                None
            ]
        );
        assert_eq!(b.nominal(0), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let b = Backoff {
            attempts: 5,
            base: Duration::from_secs(1),
        };
        for _ in 0..1000 {
            let d = b.delay(3).unwrap();
            assert!(
                d >= Duration::from_millis(3200) && d <= Duration::from_millis(4800),
                "{d:?}"
            );
        }
        assert_eq!(b.delay(5), None);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let b = Backoff {
            attempts: 100,
            base: Duration::from_secs(1),
        };
        assert_eq!(b.nominal(99), Some(Duration::from_secs(300)));
    }
}
