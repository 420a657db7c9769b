//! Rate pacing for `--rate N`: a token bucket refilled on a 10 ms tick, so sends go out in
//! small bursts at the requested average rate instead of one sleep per event (which could
//! not exceed a few thousand events per second and would drift).
//!
//! Without a rate the pacer is a no-op: [`Pacer::available`] is unbounded and
//! [`Pacer::wait`] returns at once.

use std::time::Duration;
use tokio::time::{interval, Instant, Interval, MissedTickBehavior};

/// How often tokens are added.
const TICK: Duration = Duration::from_millis(10);
/// The bucket holds at most this much time's worth of tokens, so a stall (for example a full
/// in-flight window) is not followed by a burst far above the requested rate.
const BURST_WINDOW: f64 = 0.05;

pub(crate) struct Pacer {
    limit: Option<Limit>,
}

struct Limit {
    per_second: f64,
    tokens: f64,
    burst: f64,
    last: Instant,
    tick: Interval,
}

impl Pacer {
    /// A pacer for `rate` events per second; `None` (or a non-positive rate) means unpaced.
    pub(crate) fn new(rate: Option<f64>) -> Self {
        let limit = rate
            .filter(|r| *r > 0.0 && r.is_finite())
            .map(|per_second| {
                let mut tick = interval(TICK);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let burst = (per_second * BURST_WINDOW).max(1.0);
                Limit {
                    per_second,
                    tokens: 1.0,
                    burst,
                    last: Instant::now(),
                    tick,
                }
            });
        Self { limit }
    }

    /// How many sends may go out right now.
    pub(crate) fn available(&mut self) -> usize {
        match &mut self.limit {
            None => usize::MAX,
            Some(l) => {
                l.refill();
                // tokens is within [0, burst], so the cast is exact enough and cannot wrap.
                l.tokens.floor() as usize
            }
        }
    }

    /// Spends `n` tokens (at most what [`Pacer::available`] returned).
    pub(crate) fn take(&mut self, n: usize) {
        if let Some(l) = &mut self.limit {
            l.tokens = (l.tokens - n as f64).max(0.0);
        }
    }

    /// Resolves once at least one send may go out. Cancel-safe.
    pub(crate) async fn wait(&mut self) {
        let Some(l) = &mut self.limit else {
            return;
        };
        loop {
            l.refill();
            if l.tokens >= 1.0 {
                return;
            }
            l.tick.tick().await;
        }
    }
}

impl Limit {
    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_to_the_requested_rate() {
        let mut pacer = Pacer::new(Some(2_000.0));
        let start = Instant::now();
        let mut sent = 0;
        while sent < 600 {
            pacer.wait().await;
            let n = pacer.available().min(600 - sent);
            pacer.take(n);
            sent += n;
        }
        // 599 tokens at 2000/s take 0.2995 s; allow a slow, busy machine on the upper side.
        let secs = start.elapsed().as_secs_f64();
        assert!((0.28..=1.5).contains(&secs), "took {secs}s");
    }

    #[tokio::test]
    async fn unpaced_is_unbounded() {
        let mut pacer = Pacer::new(None);
        pacer.wait().await;
        assert_eq!(pacer.available(), usize::MAX);
        let mut zero = Pacer::new(Some(0.0));
        assert_eq!(zero.available(), usize::MAX);
    }
}
