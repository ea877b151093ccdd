//! What an endpoint was learned to speak, never assumed from the client.
//!
//! An HTTP/2 client in front of an HTTP/1.1-only app is the common case in a
//! pod (gunicorn, Rails, Express and Spring MVC speak HTTP/1.1 on their
//! defaults), so `auto` tries HTTP/2 once per endpoint and remembers the answer:
//! over TLS from ALPN, in plaintext from the first bytes the server sends on a
//! prior-knowledge connection. An HTTP/2 server opens with a SETTINGS frame
//! (RFC 9113 §3.4); an HTTP/1.x server answers the preface with a status line,
//! or closes. Until that first frame has arrived no request is sent on the
//! connection, so a refusal costs the request nothing: it goes out as HTTP/1.1.
//!
//! The answer holds until the endpoint cannot be reached: a connect failure
//! forgets it, since what comes back after a restart may be another build.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// Whether an endpoint speaks HTTP/2: not tried yet, yes, or no.
#[derive(Debug, Default)]
pub struct Speaks {
    h2: AtomicU8,
    /// An HTTP/1.1 exchange got a response from it.
    http1: AtomicU8,
}

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

impl Speaks {
    /// `Some(true)` when HTTP/2 was spoken, `Some(false)` when it was refused.
    pub fn h2(&self) -> Option<bool> {
        decode(self.h2.load(Ordering::Relaxed))
    }

    pub fn learned_h2(&self, yes: bool) {
        self.h2.store(if yes { YES } else { NO }, Ordering::Relaxed);
    }

    pub fn learned_http1(&self) {
        // A relaxed load first: the store happens once, the load per request.
        if self.http1.load(Ordering::Relaxed) != YES {
            self.http1.store(YES, Ordering::Relaxed);
        }
    }

    /// The endpoint could not be reached: what comes back may differ.
    pub fn forget(&self) {
        self.h2.store(UNKNOWN, Ordering::Relaxed);
    }

    /// What `/upstreams` shows: `{"http/1.1": true|null, "h2": true|false|null}`,
    /// null for not learned yet.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "http/1.1": decode(self.http1.load(Ordering::Relaxed)),
            "h2": self.h2(),
        })
    }
}

fn decode(v: u8) -> Option<bool> {
    match v {
        YES => Some(true),
        NO => Some(false),
        _ => None,
    }
}

/// The server's first bytes, judged: an HTTP/2 SETTINGS frame, or not.
pub type Verdict = oneshot::Receiver<bool>;

/// Reads through to the inner stream and judges the first nine bytes it gets:
/// a frame header of type SETTINGS (4), without ACK, on stream 0, is an
/// HTTP/2 server; anything else (`HTTP/1.1 400`, an early close, an error) is
/// not. Past the verdict it adds one branch per read.
pub struct ServerPreface<T> {
    inner: T,
    head: [u8; 9],
    seen: usize,
    verdict: Option<oneshot::Sender<bool>>,
}

impl<T> ServerPreface<T> {
    pub fn new(inner: T) -> (Self, Verdict) {
        let (tx, rx) = oneshot::channel();
        let watch = ServerPreface {
            inner,
            head: [0; 9],
            seen: 0,
            verdict: Some(tx),
        };
        (watch, rx)
    }

    fn judge(&mut self, fresh: &[u8], eof: bool) {
        let Some(tx) = self.verdict.take() else {
            return;
        };
        let take = fresh.len().min(self.head.len() - self.seen);
        self.head[self.seen..self.seen + take].copy_from_slice(&fresh[..take]);
        self.seen += take;
        if self.seen < self.head.len() {
            if eof {
                let _ = tx.send(false);
            } else {
                self.verdict = Some(tx);
            }
            return;
        }
        let _ = tx.send(is_settings_frame(&self.head));
    }
}

/// An HTTP/2 frame header announcing a SETTINGS frame that is not an ACK, on
/// the connection's stream (RFC 9113 §4.1, §6.5): a server's preface.
pub fn is_settings_frame(head: &[u8; 9]) -> bool {
    const SETTINGS: u8 = 0x4;
    const ACK: u8 = 0x1;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    head[3] == SETTINGS && head[4] & ACK == 0 && stream == 0 && length.is_multiple_of(6)
}

impl<T: AsyncRead + Unpin> AsyncRead for ServerPreface<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.verdict.is_some() {
            match &polled {
                Poll::Ready(Ok(())) => {
                    let fresh = buf.filled()[before..].to_vec();
                    this.judge(&fresh, fresh.is_empty());
                }
                Poll::Ready(Err(_)) => this.judge(&[], true),
                Poll::Pending => {}
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ServerPreface<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn verdict_for(server_sends: &'static [u8], close: bool) -> bool {
        let (client, mut server) = tokio::io::duplex(64);
        let (mut watched, verdict) = ServerPreface::new(client);
        tokio::spawn(async move {
            // Sent in two pieces: the verdict must wait for nine bytes.
            let (a, b) = server_sends.split_at(server_sends.len().min(4));
            let _ = server.write_all(a).await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let _ = server.write_all(b).await;
            if !close {
                std::future::pending::<()>().await;
            }
        });
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok(n) = watched.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        verdict.await.unwrap_or(false)
    }

    #[tokio::test]
    async fn an_http2_server_preface_is_recognised() {
        // SETTINGS, 6 bytes of payload (one setting), stream 0.
        let settings: &[u8] = &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert!(verdict_for(settings, false).await);
        let empty_settings: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
        assert!(verdict_for(empty_settings, false).await);
    }

    #[tokio::test]
    async fn an_http1_answer_or_a_close_is_a_refusal() {
        assert!(!verdict_for(b"HTTP/1.1 400 Bad Request\r\n\r\n", true).await);
        assert!(!verdict_for(b"HTTP/1.0 505", true).await);
        assert!(!verdict_for(b"", true).await);
        assert!(!verdict_for(b"\0\0", true).await);
    }

    #[test]
    fn a_settings_ack_or_another_frame_is_no_preface() {
        assert!(!is_settings_frame(&[0, 0, 0, 4, 1, 0, 0, 0, 0]), "ACK");
        assert!(!is_settings_frame(&[0, 0, 0, 1, 4, 0, 0, 0, 1]), "HEADERS");
        assert!(!is_settings_frame(&[0, 0, 5, 4, 0, 0, 0, 0, 0]), "length");
        assert!(!is_settings_frame(&[0, 0, 0, 4, 0, 0, 0, 0, 3]), "stream");
    }

    #[test]
    fn learning_and_forgetting() {
        let s = Speaks::default();
        assert_eq!(s.h2(), None);
        s.learned_h2(false);
        assert_eq!(s.h2(), Some(false));
        s.learned_http1();
        assert_eq!(s.snapshot()["http/1.1"], true);
        s.forget();
        assert_eq!(s.h2(), None);
    }
}
