//! Retry schedule for batch writes: the first retry is immediate, then exponential from
//! `RETRY_DELAY` (1s, 2s, 4s, 8s by default), each delay with ±20% jitter so replicas that
//! failed together do not retry together.

use rand::Rng;
use std::time::Duration;

/// Backoff schedule for up to `max_retries` retries.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub max_retries: u32,
    pub base: Duration,
}

impl Backoff {
    /// The nominal delay before retry number `retry` (1-based), without jitter; `None` when
    /// retries are exhausted.
    pub fn nominal(&self, retry: u32) -> Option<Duration> {
        if retry == 0 || retry > self.max_retries {
            return None;
        }
        if retry == 1 {
            return Some(Duration::ZERO);
        }
        let factor = 1u32.checked_shl(retry - 2).unwrap_or(u32::MAX);
        Some(
            self.base
                .saturating_mul(factor)
                .min(Duration::from_secs(300)),
        )
    }

    /// The delay before retry number `retry`, with ±20% jitter.
    pub fn delay(&self, retry: u32) -> Option<Duration> {
        self.nominal(retry).map(|d| jitter(d, &mut rand::rng()))
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
    fn default_schedule_is_immediate_then_doubling() {
        let b = Backoff {
            max_retries: 5,
            base: Duration::from_secs(1),
        };
        let got: Vec<_> = (1..=6).map(|r| b.nominal(r)).collect();
        assert_eq!(
            got,
            vec![
                Some(Duration::ZERO),
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
            max_retries: 5,
            base: Duration::from_secs(1),
        };
        for _ in 0..1000 {
            let d = b.delay(4).unwrap();
            assert!(
                d >= Duration::from_millis(3200) && d <= Duration::from_millis(4800),
                "{d:?}"
            );
        }
        assert_eq!(b.delay(1), Some(Duration::ZERO));
    }

    #[test]
    fn huge_retry_counts_do_not_overflow() {
        let b = Backoff {
            max_retries: 100,
            base: Duration::from_secs(1),
        };
        assert_eq!(b.nominal(100), Some(Duration::from_secs(300)));
    }
}
