//! A future that is polled only after its own wake-up.
//!
//! A client connection's task `select!`s the connection itself with the drain
//! signal and the connection's watchdog. `select!` polls every branch whenever the
//! task wakes, and a busy connection wakes several times per request, so the two
//! idle branches were re-checked each time: more instructions per request than
//! adding `X-Forwarded-For`. Wrapped in [`PollWhenWoken`], they cost an atomic
//! swap instead until their own event (a drain, a timer) arrives.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Set by the inner future's waker; passes the wake-up on to the task.
struct Signal {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

pin_project_lite::pin_project! {
    /// Polls `inner` the first time, then only once its waker has been called.
    pub struct PollWhenWoken<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
        waker: Waker,
    }
}

impl<F> PollWhenWoken<F> {
    pub fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        PollWhenWoken {
            inner,
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for PollWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        // The task's waker is stored before the inner future can register ours,
        // so no wake-up from then on is lost.
        {
            let mut task = this.signal.task.lock().unwrap_or_else(|p| p.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set (by whoever then wakes it).
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn the_inner_future_is_polled_only_after_its_own_wake_up() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None::<Waker>));
        let gated = PollWhenWoken::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        });
        tokio::pin!(gated);
        // Another branch wakes the task a hundred times: one poll of the probe.
        let other = async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        };
        tokio::pin!(other);
        tokio::select! {
            _ = &mut gated => panic!("not ready yet"),
            _ = &mut other => {}
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Its own wake-up, from another task: polled again, and done.
        let (ready2, waker2) = (ready.clone(), waker.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            ready2.store(true, Ordering::Release);
            if let Some(w) = waker2.lock().unwrap().take() {
                w.wake();
            }
        });
        tokio::time::timeout(Duration::from_secs(5), &mut gated)
            .await
            .expect("the wake-up reaches the task");
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
