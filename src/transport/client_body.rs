//! The client's request body, watched: when an exchange fails, whose fault was
//! it? A malformed chunk, an upload the client abandoned, or a client too slow
//! to send its body are the client's doing, and must not count against the
//! upstream: five of them in a row would otherwise open the circuit for every
//! other caller. The watch is shared with the pipeline, which asks it after a
//! failed attempt and before anything is recorded. A client that sends no body
//! bytes for `--stream-idle-timeout` is cut off: its stall, its fault.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::stream_idle::IdleTimer;

/// The client's body, reporting to a [`BodyWatch`].
pub struct ClientBody {
    inner: Incoming,
    watch: Option<Arc<BodyWatch>>,
    idle: Option<IdleTimer>,
}

/// Why the client's body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error(transparent)]
    Read(#[from] hyper::Error),
    #[error("the client sent no body bytes for {} (--stream-idle-timeout)", crate::units::format_duration(*.0))]
    Idle(std::time::Duration),
}

/// How far the client's body got, as last seen by whoever reads it.
#[derive(Debug, Default)]
pub struct BodyWatch {
    state: AtomicU8,
    cause: OnceLock<String>,
}

/// Whose fault a failed body read was: the client's, by what it sent or by
/// going away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFault {
    /// The body broke the framing rules: a bad chunk size, chunk data without
    /// its CRLF, bytes after the declared length.
    Malformed,
    /// The client closed or reset before its body ended.
    Gone,
    /// The client sent no body bytes for `--stream-idle-timeout`.
    Stalled,
}

/// A frame was handed on; the reader decides when to ask for the next.
const FLOWING: u8 = 0;
/// The reader asked and the client has not sent the next bytes yet.
const AWAITING_CLIENT: u8 = 1;
const ENDED: u8 = 2;
const MALFORMED: u8 = 3;
const GONE: u8 = 4;
const STALLED: u8 = 5;

impl ClientBody {
    /// Wraps a request body; the watch is `None` for a body that has already
    /// ended (no body at all, `Content-Length: 0`), where nothing can go wrong.
    /// `idle`: `--stream-idle-timeout`.
    pub fn new(
        inner: Incoming,
        idle: Option<std::time::Duration>,
    ) -> (Self, Option<Arc<BodyWatch>>) {
        let watch = (!inner.is_end_stream()).then(|| Arc::new(BodyWatch::default()));
        let body = ClientBody {
            idle: watch.as_ref().and(idle).map(IdleTimer::new),
            inner,
            watch: watch.clone(),
        };
        (body, watch)
    }
}

impl BodyWatch {
    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Relaxed);
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    /// The body was read to its end.
    pub fn ended(&self) -> bool {
        self.state() == ENDED
    }

    /// The body failed on the client's side, and how.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.state() {
            MALFORMED => Some(ClientFault::Malformed),
            GONE => Some(ClientFault::Gone),
            STALLED => Some(ClientFault::Stalled),
            _ => None,
        }
    }

    /// The reader is waiting for the client's next bytes: a deadline that
    /// passes now was spent waiting on the client, not on the upstream.
    pub fn awaiting_client(&self) -> bool {
        self.state() == AWAITING_CLIENT
    }

    /// What the body's error said, for the client's answer and the log.
    pub fn cause(&self) -> &str {
        self.cause.get().map_or("", String::as_str)
    }

    fn failed(&self, err: &hyper::Error) {
        let fault = classify(err);
        let _ = self.cause.set(crate::error::causes(err));
        self.set(match fault {
            ClientFault::Malformed => MALFORMED,
            ClientFault::Gone | ClientFault::Stalled => GONE,
        });
    }
}

/// A body error from the client's connection: the framing rules broken
/// (hyper reports those as `InvalidData`/`InvalidInput`), or the client gone.
fn classify(err: &hyper::Error) -> ClientFault {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    ClientFault::Malformed
                }
                _ => ClientFault::Gone,
            };
        }
        source = e.source();
    }
    if err.is_parse() {
        ClientFault::Malformed
    } else {
        ClientFault::Gone
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(idle) = &mut this.idle {
            if polled.is_ready() {
                idle.progress();
            } else if idle.expired(cx) {
                let after = idle.after();
                this.idle = None;
                if let Some(watch) = &this.watch {
                    let _ = watch.cause.set(format!(
                        "{} (--stream-idle-timeout: no body bytes for that long)",
                        crate::units::format_duration(after)
                    ));
                    watch.set(STALLED);
                }
                return Poll::Ready(Some(Err(ClientBodyError::Idle(after))));
            }
        }
        if let Some(watch) = &self.watch {
            match &polled {
                Poll::Pending => watch.set(AWAITING_CLIENT),
                Poll::Ready(Some(Ok(_))) => watch.set(if self.inner.is_end_stream() {
                    ENDED
                } else {
                    FLOWING
                }),
                Poll::Ready(None) => watch.set(ENDED),
                Poll::Ready(Some(Err(e))) => watch.failed(e),
            }
        }
        polled.map(|f| f.map(|f| f.map_err(ClientBodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds_tell_malformed_from_gone() {
        let watch = BodyWatch::default();
        assert!(!watch.ended() && watch.fault().is_none());
        watch.set(AWAITING_CLIENT);
        assert!(watch.awaiting_client());
        watch.set(ENDED);
        assert!(watch.ended() && !watch.awaiting_client());
        watch.set(MALFORMED);
        assert_eq!(watch.fault(), Some(ClientFault::Malformed));
        watch.set(GONE);
        assert_eq!(watch.fault(), Some(ClientFault::Gone));
    }
}
