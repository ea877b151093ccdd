//! The drain signal: one sender held by the app, one watch held by every listener,
//! connection and tunnel. Draining ends when every watch has been dropped.

use std::time::Duration;

use tokio::sync::watch;

/// Starts a drain and waits for it to finish.
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// Held by everything that must finish before the process exits.
#[derive(Clone)]
pub struct DrainWatch {
    rx: watch::Receiver<bool>,
}

impl Drain {
    pub fn new() -> (Drain, DrainWatch) {
        let (tx, rx) = watch::channel(false);
        (Drain { tx }, DrainWatch { rx })
    }

    /// Tells every watch to wind down: listeners stop accepting, connections close
    /// once their in-flight requests are done.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    /// Waits until every [`DrainWatch`] is dropped, or `timeout`. Returns whether
    /// everything finished in time.
    pub async fn finished(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.tx.closed())
            .await
            .is_ok()
    }

    /// How many watches (connections, tunnels, listeners) are still alive.
    pub fn remaining(&self) -> usize {
        self.tx.receiver_count()
    }
}

impl DrainWatch {
    /// Resolves once a drain has started (at once if it already has).
    pub async fn signaled(&mut self) {
        // An error means the Drain is gone, which only happens at exit: treat as drained.
        let _ = self.rx.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_watches_and_times_out() {
        let (drain, watch) = Drain::new();
        let mut held = watch.clone();
        drop(watch);
        let task = tokio::spawn(async move {
            held.signaled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(held);
        });
        drain.start();
        assert!(!drain.finished(Duration::from_secs(1)).await);
        assert!(drain.finished(Duration::from_secs(5)).await);
        assert_eq!(drain.remaining(), 0);
        let _ = task.await;
    }
}
