//! Retry schedule for batch writes (DESIGN.md, from the seed design): `MAX_RETRIES` attempts
//! at the database, the first at once, each further one after `RETRY_DELAY` doubling (1s,
//! 2s, 4s, 8s with the defaults 5 and 1s), each delay with ±20% jitter so replicas that
//! failed together do not retry together.

use shared::backoff::Backoff;
use std::time::Duration;

/// The longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(300);

/// `attempts` attempts in all, `first_delay` doubling between them.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    backoff: Backoff,
}

impl RetryPolicy {
    pub fn new(attempts: u32, first_delay: Duration) -> Self {
        Self {
            attempts,
            backoff: Backoff::new(first_delay, MAX_DELAY),
        }
    }

    /// The nominal delay after failed attempt number `attempt` (1-based) before the next one,
    /// without jitter; `None` when that was the last attempt.
    pub fn nominal(&self, attempt: u32) -> Option<Duration> {
        (attempt >= 1 && attempt < self.attempts).then(|| self.backoff.nominal(attempt))
    }

    /// The delay after failed attempt number `attempt`, with ±20% jitter.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        (attempt >= 1 && attempt < self.attempts).then(|| self.backoff.delay(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_five_attempts_one_two_four_eight_seconds_apart() {
        let b = RetryPolicy::new(5, Duration::from_secs(1));
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
        assert_eq!(b.delay(5), None);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let b = RetryPolicy::new(100, Duration::from_secs(1));
        assert_eq!(b.nominal(99), Some(Duration::from_secs(300)));
    }
}
