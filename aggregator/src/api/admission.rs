//! Admission control for `POST /publish`: at most `MAX_CONCURRENT_PUBLISH` requests are
//! handled at once; a request arriving when every slot is taken waits for one, in arrival
//! order, for at most `PUBLISH_QUEUE_TIMEOUT`, with at most [`QUEUE_PER_SLOT`] x
//! `MAX_CONCURRENT_PUBLISH` requests waiting. Beyond that queue, or after the wait, or at
//! once with `PUBLISH_QUEUE_TIMEOUT=0`, the request is refused (503 + `Retry-After`).
//!
//! A short queue absorbs the bursts of many clients without think time (each request holds
//! its slot for well under a millisecond of work plus the broker's round trip), so only real
//! overload is shed. Memory stays bounded: a waiting request has not read its body yet.
//! The number of waiting requests is the gauge `aggregator_http_publish_queued`.

use crate::telemetry::names;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Requests that may wait per slot.
pub const QUEUE_PER_SLOT: usize = 4;

/// Slots for requests in progress and places for requests waiting for one.
#[derive(Debug)]
pub struct Admission {
    slots: Semaphore,
    slot_count: usize,
    places: Semaphore,
    queue_len: usize,
    timeout: Duration,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot taken and no waiting allowed (`PUBLISH_QUEUE_TIMEOUT=0`), or the queue full.
    Busy,
    /// Waited `PUBLISH_QUEUE_TIMEOUT` without getting a slot.
    TimedOut,
}

impl Admission {
    /// `slots` requests at once (at least 1), `slots` x [`QUEUE_PER_SLOT`] waiting at most
    /// `timeout` each (none with a zero timeout).
    pub fn new(slots: usize, timeout: Duration) -> Self {
        let slots = slots.max(1);
        let queue_len = if timeout.is_zero() {
            0
        } else {
            slots.saturating_mul(QUEUE_PER_SLOT)
        };
        Self {
            slots: Semaphore::new(slots),
            slot_count: slots,
            places: Semaphore::new(queue_len),
            queue_len,
            timeout,
        }
    }

    /// A slot, held until the permit is dropped: at once when one is free, else after
    /// waiting in the queue (cancel-safe: a request dropped while waiting leaves the queue).
    /// The semaphore is fair, so a newcomer never overtakes a waiting request.
    pub async fn admit(&self) -> Result<SemaphorePermit<'_>, Refusal> {
        if let Ok(slot) = self.slots.try_acquire() {
            return Ok(slot);
        }
        let Ok(_place) = self.places.try_acquire() else {
            return Err(Refusal::Busy);
        };
        let _queued = Queued::enter();
        match tokio::time::timeout(self.timeout, self.slots.acquire()).await {
            Ok(Ok(slot)) => Ok(slot),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(Refusal::TimedOut),
        }
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queue_len - self.places.available_permits()
    }

    /// Requests holding a slot now.
    pub fn in_progress(&self) -> usize {
        self.slot_count - self.slots.available_permits()
    }

    pub fn queue_len(&self) -> usize {
        self.queue_len
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// One request counted in `aggregator_http_publish_queued` while it waits.
struct Queued;

impl Queued {
    fn enter() -> Self {
        metrics::gauge!(names::PUBLISH_QUEUED).increment(1.0);
        Self
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        metrics::gauge!(names::PUBLISH_QUEUED).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Lets spawned tasks (on this single-threaded test runtime) run until they block.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// A request waiting for a slot of `a`, on its own task.
    fn spawn_admit(a: &Arc<Admission>) -> tokio::task::JoinHandle<Result<(), Refusal>> {
        let a = a.clone();
        tokio::spawn(async move { a.admit().await.map(drop) })
    }

    #[tokio::test]
    async fn a_free_slot_admits_at_once() {
        let a = Admission::new(2, Duration::from_secs(1));
        let s1 = a.admit().await.unwrap();
        let _s2 = a.admit().await.unwrap();
        assert_eq!(a.in_progress(), 2);
        assert_eq!(a.queued(), 0);
        drop(s1);
        assert_eq!(a.in_progress(), 1);
    }

    #[tokio::test]
    async fn zero_timeout_sheds_at_once() {
        let a = Admission::new(1, Duration::ZERO);
        assert_eq!(a.queue_len(), 0);
        let _held = a.admit().await.unwrap();
        assert_eq!(a.admit().await.unwrap_err(), Refusal::Busy);
        assert_eq!(a.queued(), 0);
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_slot_when_it_is_released() {
        let a = Arc::new(Admission::new(1, Duration::from_secs(10)));
        let held = a.admit().await.unwrap();
        let waiter = spawn_admit(&a);
        settle().await;
        assert_eq!(a.queued(), 1);
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(a.queued(), 0);
        assert_eq!(a.in_progress(), 0);
    }

    // Paused time: the clock moves only when every task waits, so the timeout cannot pass
    // before the waiter is seen queued, however slow the machine.
    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_past_the_timeout_is_refused() {
        let a = Arc::new(Admission::new(1, Duration::from_millis(50)));
        let _held = a.admit().await.unwrap();
        let waiter = spawn_admit(&a);
        settle().await;
        assert_eq!(a.queued(), 1);
        assert_eq!(waiter.await.unwrap(), Err(Refusal::TimedOut));
        assert_eq!(a.queued(), 0);
    }

    #[tokio::test]
    async fn beyond_the_queue_requests_are_shed_at_once() {
        let a = Arc::new(Admission::new(2, Duration::from_secs(10)));
        assert_eq!(a.queue_len(), 2 * QUEUE_PER_SLOT);
        let held = [a.admit().await.unwrap(), a.admit().await.unwrap()];
        let waiters: Vec<_> = (0..2 * QUEUE_PER_SLOT)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    let slot = a.admit().await?;
                    drop(slot);
                    Ok::<_, Refusal>(())
                })
            })
            .collect();
        settle().await;
        assert_eq!(a.queued(), 2 * QUEUE_PER_SLOT);
        assert_eq!(a.admit().await.unwrap_err(), Refusal::Busy);
        drop(held);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert_eq!(a.queued(), 0);
        assert_eq!(a.in_progress(), 0);
    }

    #[tokio::test]
    async fn waiting_requests_are_served_in_arrival_order_and_newcomers_queue_behind() {
        let a = Arc::new(Admission::new(1, Duration::from_secs(10)));
        let held = a.admit().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (a, order) = (a.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _slot = a.admit().await.unwrap();
                order.lock().unwrap().push(i);
                tokio::task::yield_now().await;
            }));
            settle().await;
        }
        assert_eq!(a.queued(), 3);
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn a_request_dropped_while_waiting_leaves_the_queue() {
        let a = Arc::new(Admission::new(1, Duration::from_secs(10)));
        let held = a.admit().await.unwrap();
        let waiter = spawn_admit(&a);
        settle().await;
        assert_eq!(a.queued(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(a.queued(), 0);
        drop(held);
        assert_eq!(a.in_progress(), 0);
        let _again = a.admit().await.unwrap();
    }
}
