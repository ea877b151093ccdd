//! `--stream-idle-timeout`: a body or a tunnel that moves no bytes for that
//! long is cut. breakwater never cuts a stream for being long (a download of
//! an hour is fine), only for standing still: a stalled upstream or client
//! would otherwise hold a connection, a bulkhead slot and the caller's
//! patience forever. Envoy's `stream_idle_timeout` is the same idea, with the
//! same default of five minutes.
//!
//! Cheap on the path every request takes: the timer is made only when a body
//! first has to wait, and the clock is read per frame only after that.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, copy_bidirectional};
use tokio::time::{Instant, Sleep};

pin_project_lite::pin_project! {
    /// A body's idle clock once it has had to wait: boxed, so that a body
    /// that never waits (most small ones) carries one pointer.
    struct Armed {
        #[pin]
        sleep: Sleep,
        // The last frame since the clock was armed.
        last: Instant,
    }
}

/// The idle clock of one body: 16 bytes in the body, since every request
/// and response body carries one and bodies are moved about.
#[derive(Debug)]
pub struct IdleTimer {
    after_ms: u32,
    armed: Option<Pin<Box<Armed>>>,
}

impl std::fmt::Debug for Armed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed").field("last", &self.last).finish()
    }
}

impl IdleTimer {
    pub fn new(after: Duration) -> Self {
        IdleTimer {
            after_ms: u32::try_from(after.as_millis()).unwrap_or(u32::MAX).max(1),
            armed: None,
        }
    }

    pub fn after(&self) -> Duration {
        Duration::from_millis(u64::from(self.after_ms))
    }

    /// A frame came: the clock starts over (read only once the body has waited).
    pub fn progress(&mut self) {
        if let Some(armed) = &mut self.armed {
            *armed.as_mut().project().last = Instant::now();
        }
    }

    /// The body is waiting: whether it has waited `after` since its last
    /// frame. Registers the waker for when it will have.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let after = self.after();
        let armed = self.armed.get_or_insert_with(|| {
            let now = Instant::now();
            Box::pin(Armed {
                sleep: tokio::time::sleep_until(now + after),
                last: now,
            })
        });
        loop {
            let mut a = armed.as_mut().project();
            if a.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = *a.last + after;
            if due <= Instant::now() {
                return true;
            }
            // Bytes came since the timer was set: wait from the last of them.
            a.sleep.reset(due);
        }
    }
}

/// When a tunnel last moved a byte, in nanoseconds since it opened.
struct Activity {
    opened: Instant,
    last_ns: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ns = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(ns, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }
}

/// One side of a tunnel, noting every byte that moves.
struct Watched<'a, S> {
    io: &'a mut S,
    activity: &'a Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Relays bytes both ways until either side closes, or until no byte has
/// moved either way for `idle` (then an error of kind `TimedOut`); `None`:
/// no idle limit. Returns the bytes sent each way, as `copy_bidirectional`.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Option<Duration>) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let Some(idle) = idle else {
        return copy_bidirectional(a, b).await;
    };
    let activity = Activity {
        opened: Instant::now(),
        last_ns: AtomicU64::new(0),
    };
    let mut a = Watched {
        io: a,
        activity: &activity,
    };
    let mut b = Watched {
        io: b,
        activity: &activity,
    };
    let copy = copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let due = activity.last() + idle;
        tokio::select! {
            done = &mut copy => return done,
            () = tokio::time::sleep_until(due) => {
                if activity.last() + idle <= Instant::now() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no bytes either way for {} (--stream-idle-timeout)",
                            crate::units::format_duration(idle)
                        ),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_only_after_a_quiet_spell() {
        let mut t = IdleTimer::new(Duration::from_secs(10));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!t.expired(&mut cx), "armed, not due");
        tokio::time::advance(Duration::from_secs(6)).await;
        t.progress();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!t.expired(&mut cx), "bytes came 6 s ago: 4 s to go");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(t.expired(&mut cx));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_cut_when_nothing_moves_and_kept_while_bytes_do() {
        let (mut client, mut near) = tokio::io::duplex(64);
        let (mut far, mut upstream) = tokio::io::duplex(64);
        let relay =
            tokio::spawn(
                async move { relay(&mut near, &mut far, Some(Duration::from_secs(30))).await },
            );
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            client.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            upstream.read_exact(&mut buf).await.unwrap();
        }
        assert!(!relay.is_finished(), "100 s of traffic every 20 s: kept");
        tokio::time::sleep(Duration::from_secs(31)).await;
        let err = relay.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
