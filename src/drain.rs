//! The drain signal: one sender held by the app, one watch held by every listener,
//! connection and tunnel. Draining ends when every watch has been dropped.

use tokio::sync::{mpsc, watch};

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

    /// Resolves once every [`DrainWatch`] has been dropped.
    pub async fn finished(&self) {
        self.tx.closed().await;
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

/// Asks the proxy to drain: SIGTERM, SIGINT and `POST /shutdown` all end here.
/// A second request ends a drain that is under way at once.
#[derive(Clone)]
pub struct ShutdownHandle {
    tx: mpsc::Sender<()>,
}

/// The proxy's side of [`ShutdownHandle`].
pub struct ShutdownRequests {
    rx: mpsc::Receiver<()>,
}

pub fn shutdown_channel() -> (ShutdownHandle, ShutdownRequests) {
    let (tx, rx) = mpsc::channel(4);
    (ShutdownHandle { tx }, ShutdownRequests { rx })
}

impl ShutdownHandle {
    pub fn request(&self) {
        // A full channel already holds enough requests to end everything.
        let _ = self.tx.try_send(());
    }
}

impl ShutdownRequests {
    /// Resolves at the next request. With every handle gone no request can come,
    /// so this never resolves.
    pub async fn next(&mut self) {
        if self.rx.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal) starts the drain.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops breakwater");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        let finished = |secs| tokio::time::timeout(Duration::from_secs(secs), drain.finished());
        assert!(finished(1).await.is_err());
        assert!(finished(5).await.is_ok());
        assert_eq!(drain.remaining(), 0);
        let _ = task.await;
    }
}
