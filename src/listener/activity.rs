//! What a client connection is doing, for its idle and header-read timeouts.
//!
//! hyper's own `header_read_timeout` starts when a keep-alive connection goes idle,
//! so it would also close every pooled connection an app keeps open for more than a
//! few seconds. breakwater separates the two, as Envoy does: the header timer starts
//! at the first byte of a request head, the idle timer when the last response ends.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const NONE: u64 = u64::MAX;
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Shared by a connection's I/O, its requests and its watchdog. Times are
/// milliseconds since the connection was accepted.
pub struct ConnActivity {
    accepted: Instant,
    active: AtomicU32,
    idle_since: AtomicU64,
    head_started: AtomicU64,
    http2: AtomicBool,
}

/// Why the watchdog wants a connection closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Expiry {
    /// A request head was started and not finished in time (slowloris).
    HeaderRead,
    /// No request in flight for the idle timeout.
    Idle,
}

impl ConnActivity {
    pub fn new() -> Self {
        ConnActivity {
            accepted: Instant::now(),
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            http2: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.accepted).as_millis() as u64
    }

    pub fn request_started(&self) {
        self.active.fetch_add(1, Relaxed);
        self.head_started.store(NONE, Relaxed);
    }

    /// A request ended at `now` (the caller's clock reading, spared another).
    pub fn request_finished(&self, now: Instant) {
        if self.active.fetch_sub(1, Relaxed) == 1 {
            self.idle_since.store(self.ms_at(now), Relaxed);
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// Called with the bytes of each read from the client.
    fn on_read(&self, first_read: bool, bytes: &[u8]) {
        if first_read && bytes.starts_with(H2_PREFACE_START) {
            // HTTP/2 frames (pings, settings) arrive between requests; only the
            // idle timer applies to it.
            self.http2.store(true, Relaxed);
        }
        if self.active.load(Relaxed) == 0
            && !self.http2.load(Relaxed)
            && self.head_started.load(Relaxed) == NONE
        {
            self.head_started.store(self.now_ms(), Relaxed);
        }
    }

    /// Resolves when the connection should be closed, re-arming its one timer as
    /// activity moves the deadlines.
    ///
    /// The timer never sleeps longer than the header timeout or the idle timeout.
    /// So a head that starts while it sleeps is seen before its own deadline and
    /// is cut off exactly then; and a request that ends while it sleeps leaves an
    /// idle deadline that is no earlier than the wake-up, so the connection is
    /// closed exactly then too. Requests never wake it: a wake-up per request
    /// would cost more than a busy connection's check every few seconds.
    pub async fn expired(&self, header_read: Duration, idle: Duration) -> Expiry {
        let (header_ms, idle_ms) = (header_read.as_millis() as u64, idle.as_millis() as u64);
        loop {
            let now = self.now_ms();
            let head = self.head_started.load(Relaxed);
            let idle_deadline = (self.active.load(Relaxed) == 0)
                .then(|| self.idle_since.load(Relaxed).saturating_add(idle_ms));
            let head_deadline = (head != NONE).then(|| head.saturating_add(header_ms));
            if head_deadline.is_some_and(|d| now >= d) {
                return Expiry::HeaderRead;
            }
            if idle_deadline.is_some_and(|d| now >= d) {
                return Expiry::Idle;
            }
            let recheck = now.saturating_add(header_ms.min(idle_ms));
            let next = [idle_deadline, head_deadline, Some(recheck)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(recheck);
            tokio::time::sleep(Duration::from_millis(next.saturating_sub(now).max(1))).await;
        }
    }
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self::new()
    }
}

pin_project_lite::pin_project! {
    /// A client socket that reports reads to its [`ConnActivity`].
    pub struct ActivityIo<T> {
        #[pin]
        inner: T,
        activity: std::sync::Arc<ConnActivity>,
        first_read: bool,
    }
}

impl<T> ActivityIo<T> {
    pub fn new(inner: T, activity: std::sync::Arc<ConnActivity>) -> Self {
        ActivityIo {
            inner,
            activity,
            first_read: true,
        }
    }
}

impl<T: AsyncRead> AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.activity.on_read(*this.first_read, read);
                *this.first_read = false;
            }
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn header_timer_starts_at_first_byte_not_at_idle() {
        let a = std::sync::Arc::new(ConnActivity::new());
        let (hdr, idle) = (Duration::from_secs(10), Duration::from_secs(300));
        let started = Instant::now();
        let watchdog = tokio::spawn({
            let a = a.clone();
            async move { a.expired(hdr, idle).await }
        });
        // Idle keep-alive: only the idle timer runs.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !watchdog.is_finished(),
            "idle for 60s must not trip the header timer"
        );
        // A head starts while the watchdog sleeps towards the idle deadline.
        a.on_read(true, b"GET / HT");
        assert_eq!(watchdog.await.ok(), Some(Expiry::HeaderRead));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(70) && took < Duration::from_secs(71),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_hold_off_the_idle_timer() {
        let a = ConnActivity::new();
        let (hdr, idle) = (Duration::from_secs(10), Duration::from_secs(30));
        a.on_read(true, b"GET / HTTP/1.1\r\n\r\n");
        a.request_started();
        let expiry = tokio::time::timeout(Duration::from_secs(120), a.expired(hdr, idle)).await;
        assert!(expiry.is_err(), "a long request is not idle");
        a.request_finished(Instant::now());
        assert_eq!(a.expired(hdr, idle).await, Expiry::Idle);
    }

    /// The watchdog first sees a request in flight; it ends while the watchdog
    /// sleeps: the connection closes one idle timeout after it, not at the next
    /// header-timeout check.
    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_counts_from_the_end_of_the_last_request() {
        let a = std::sync::Arc::new(ConnActivity::new());
        let (hdr, idle) = (Duration::from_secs(10), Duration::from_millis(300));
        a.on_read(true, b"GET / HTTP/1.1\r\n\r\n");
        a.request_started();
        let watchdog = tokio::spawn({
            let a = a.clone();
            async move { a.expired(hdr, idle).await }
        });
        tokio::time::sleep(Duration::from_millis(1234)).await;
        let finished = Instant::now();
        a.request_finished(finished);
        assert_eq!(watchdog.await.ok(), Some(Expiry::Idle));
        let took = finished.elapsed();
        assert!(
            took >= idle && took < idle + Duration::from_millis(5),
            "closed {took:?} after the request, idle timeout {idle:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_requests_are_not_a_slow_header() {
        let a = ConnActivity::new();
        a.on_read(true, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let (hdr, idle) = (Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(a.expired(hdr, idle).await, Expiry::Idle);
    }
}
