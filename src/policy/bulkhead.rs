//! The bulkhead of one destination: at most `--max-concurrent` requests in
//! flight, at most `--max-queue` more waiting in FIFO order for up to
//! `--queue-timeout`, the rest refused at once. One slow destination then
//! fills its own bulkhead, not the proxy's memory or every caller's patience.
//!
//! This is mechanism, a thin layer over tokio's fair semaphore, rather than a
//! state machine: waiting is the one thing a policy cannot do without the
//! runtime. The limit may move (`--max-concurrent auto`, see `adaptive`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Reason;

/// Why a request got no slot; also its `x-breakwater-reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every slot and every queue place is taken.
    #[error("bulkhead full")]
    Full,
    /// It waited `--queue-timeout` in the queue without getting a slot.
    #[error("timed out in the bulkhead queue")]
    QueueTimeout,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => Reason::BulkheadFull.as_str(),
            Refusal::QueueTimeout => Reason::QueueTimeout.as_str(),
        }
    }
}

/// What `/upstreams` shows of a bulkhead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BulkheadSnapshot {
    pub limit: usize,
    pub in_flight: usize,
    pub queued: usize,
}

#[derive(Debug)]
pub struct Bulkhead {
    semaphore: Arc<Semaphore>,
    max_queue: usize,
    queue_timeout: Duration,
    limit: Mutex<usize>,
    /// Slots to take out of circulation as their permits come back: a shrink
    /// cannot revoke permits that requests hold.
    debt: AtomicUsize,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
}

impl Bulkhead {
    pub fn new(limit: usize, max_queue: usize, queue_timeout: Duration) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Bulkhead {
            semaphore: Arc::new(Semaphore::new(limit)),
            max_queue,
            queue_timeout,
            limit: Mutex::new(limit),
            debt: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
        }
    }

    /// A slot, at once or after waiting in the queue. Cancel-safe: a caller
    /// that gives up leaves the queue.
    pub async fn acquire(self: &Arc<Self>) -> Result<BulkheadPermit, Refusal> {
        // The semaphore hands returned permits to waiters first, so this
        // cannot overtake the queue.
        if let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned() {
            return Ok(self.grant(permit));
        }
        let place = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queue).then_some(q + 1)
            });
        if place.is_err() {
            return Err(Refusal::Full);
        }
        let _leave = QueuePlace(&self.queued);
        let wait = Arc::clone(&self.semaphore).acquire_owned();
        match tokio::time::timeout(self.queue_timeout, wait).await {
            Ok(Ok(permit)) => Ok(self.grant(permit)),
            // The semaphore is never closed; were it, no slot would ever come.
            Ok(Err(_)) | Err(_) => Err(Refusal::QueueTimeout),
        }
    }

    /// A slot only if one is free now: for an observed bulkhead, which never
    /// makes a request wait.
    pub fn try_acquire(self: &Arc<Self>) -> Option<BulkheadPermit> {
        Arc::clone(&self.semaphore)
            .try_acquire_owned()
            .ok()
            .map(|permit| self.grant(permit))
    }

    /// Whether a request that finds no free slot would wait (else it is refused).
    pub fn queues(&self) -> bool {
        self.max_queue > 0
    }

    fn grant(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> BulkheadPermit {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        BulkheadPermit {
            bulkhead: Arc::clone(self),
            permit: Some(permit),
        }
    }

    /// Moves the limit. Growing adds slots now (first cancelling any debt);
    /// shrinking removes free slots now and the rest as requests finish, so
    /// permits held stay valid and in flight briefly exceeds the new limit.
    pub fn set_limit(&self, limit: usize) {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        let mut current = self.limit.lock().unwrap_or_else(PoisonError::into_inner);
        if limit > *current {
            let grow = limit - *current;
            let cancelled = take_up_to(&self.debt, grow);
            self.semaphore.add_permits(grow - cancelled);
        } else {
            let shrink = *current - limit;
            let removed = self.semaphore.forget_permits(shrink);
            self.debt.fetch_add(shrink - removed, Ordering::AcqRel);
        }
        *current = limit;
    }

    pub fn limit(&self) -> usize {
        *self.limit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> BulkheadSnapshot {
        BulkheadSnapshot {
            limit: self.limit(),
            in_flight: self.in_flight(),
            queued: self.queued(),
        }
    }
}

/// Subtracts up to `n` from `counter`; returns how much it took.
fn take_up_to(counter: &AtomicUsize, n: usize) -> usize {
    match counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| Some(d - d.min(n))) {
        Ok(before) | Err(before) => before.min(n),
    }
}

/// Leaves the queue however the wait ends, the caller's cancellation included.
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot in the bulkhead, given back on drop. It rides on the response body,
/// so a streamed response holds its slot until the last byte.
#[must_use = "the slot is given back when the permit drops"]
#[derive(Debug)]
pub struct BulkheadPermit {
    bulkhead: Arc<Bulkhead>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        self.bulkhead.in_flight.fetch_sub(1, Ordering::Relaxed);
        if take_up_to(&self.bulkhead.debt, 1) == 1
            && let Some(permit) = self.permit.take()
        {
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulkhead(limit: usize, max_queue: usize) -> Arc<Bulkhead> {
        Arc::new(Bulkhead::new(limit, max_queue, Duration::from_secs(1)))
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_queue_a_full_bulkhead_refuses_at_once() {
        let b = bulkhead(2, 0);
        let first = b.acquire().await.expect("slot");
        let _second = b.acquire().await.expect("slot");
        assert_eq!(b.acquire().await.err(), Some(Refusal::Full));
        assert_eq!(Refusal::Full.reason(), "bulkhead-full");
        assert_eq!(b.in_flight(), 2);
        drop(first);
        assert_eq!(b.in_flight(), 1);
        let _third = b.acquire().await.expect("the slot came back");
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_and_served_in_order() {
        let b = bulkhead(1, 2);
        let held = b.acquire().await.expect("slot");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for name in ["first", "second"] {
            let (b, tx) = (Arc::clone(&b), tx.clone());
            tokio::spawn(async move {
                let permit = b.acquire().await;
                let _ = tx.send((name, permit.is_ok()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            });
            tokio::task::yield_now().await;
        }
        assert_eq!(b.queued(), 2);
        assert_eq!(b.acquire().await.err(), Some(Refusal::Full), "queue full");
        drop(held);
        assert_eq!(rx.recv().await, Some(("first", true)));
        assert_eq!(rx.recv().await, Some(("second", true)));
        assert_eq!(b.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_queue_timeout_is_refused() {
        let b = bulkhead(1, 1);
        let _held = b.acquire().await.expect("slot");
        let start = tokio::time::Instant::now();
        assert_eq!(b.acquire().await.err(), Some(Refusal::QueueTimeout));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(b.queued(), 0);
        assert_eq!(Refusal::QueueTimeout.reason(), "queue-timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_leaves_the_queue() {
        let b = bulkhead(1, 1);
        let _held = b.acquire().await.expect("slot");
        let gave_up = tokio::time::timeout(Duration::from_millis(10), b.acquire()).await;
        assert!(gave_up.is_err());
        assert_eq!(b.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn growing_the_limit_adds_slots_at_once() {
        let b = bulkhead(1, 0);
        let _a = b.acquire().await.expect("slot");
        b.set_limit(3);
        let _b = b.acquire().await.expect("new slot");
        let _c = b.acquire().await.expect("new slot");
        assert_eq!(b.acquire().await.err(), Some(Refusal::Full));
        assert_eq!(
            b.snapshot(),
            BulkheadSnapshot {
                limit: 3,
                in_flight: 3,
                queued: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_keeps_held_permits_and_retires_them_as_they_return() {
        let b = bulkhead(4, 0);
        let mut held: Vec<_> = Vec::new();
        for _ in 0..3 {
            held.push(b.acquire().await.expect("slot"));
        }
        b.set_limit(1);
        assert_eq!(b.limit(), 1);
        assert_eq!(b.in_flight(), 3, "nothing revoked");
        assert_eq!(b.acquire().await.err(), Some(Refusal::Full));
        held.pop();
        held.pop();
        assert_eq!(
            b.acquire().await.err(),
            Some(Refusal::Full),
            "one still in flight fills a limit of one"
        );
        held.pop();
        let _one = b.acquire().await.expect("slot");
        assert_eq!(b.acquire().await.err(), Some(Refusal::Full));
    }

    #[tokio::test(start_paused = true)]
    async fn growing_cancels_a_pending_shrink_first() {
        let b = bulkhead(2, 0);
        let first = b.acquire().await.expect("slot");
        let second = b.acquire().await.expect("slot");
        b.set_limit(0);
        b.set_limit(1);
        drop(first);
        drop(second);
        let _a = b.acquire().await.expect("slot");
        assert_eq!(b.acquire().await.err(), Some(Refusal::Full), "limit is one");
    }
}
