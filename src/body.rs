//! `ProxyBody`, the one response body type: an upstream's streamed body or a short
//! local answer, carrying the request's [`InFlight`] guard until the body ends.
//! An upstream body that breaks off or stands still for `--stream-idle-timeout`
//! ends the client's body abruptly and counts as the endpoint's failure.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::accounting::InFlight;
use crate::forward::Hold;
use crate::transport::stream_idle::IdleTimer;

/// Why a response body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Upstream(#[from] hyper::Error),
    #[error("the upstream sent no body bytes for {} (--stream-idle-timeout)", crate::units::format_duration(*.0))]
    Idle(std::time::Duration),
}

pin_project! {
    /// Streams frame by frame; nothing is buffered here.
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
        in_flight: Option<InFlight>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Upstream {
            first: Option<Result<Frame<Bytes>, hyper::Error>>,
            #[pin] body: Incoming,
            hold: Option<Hold>,
            idle: Option<IdleTimer>,
        },
        Local { data: Option<Bytes> },
    }
}

impl ProxyBody {
    /// An upstream's body; `first` is a frame already read from it (a peek);
    /// `idle`: `--stream-idle-timeout`.
    pub fn upstream(
        body: Incoming,
        first: Option<Result<Frame<Bytes>, hyper::Error>>,
        hold: Hold,
        idle: Option<std::time::Duration>,
    ) -> Self {
        // An empty body is never polled: the connection is free already.
        let hold = if first.is_none() && body.is_end_stream() {
            hold.release();
            None
        } else {
            Some(hold)
        };
        let idle = hold.as_ref().and(idle).map(IdleTimer::new);
        ProxyBody {
            kind: Kind::Upstream {
                first,
                body,
                hold,
                idle,
            },
            in_flight: None,
        }
    }

    pub fn local(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        ProxyBody {
            kind: Kind::Local { data },
            in_flight: None,
        }
    }

    pub fn empty() -> Self {
        Self::local(Bytes::new())
    }

    /// Attaches the guard that records the request when this body ends or is dropped.
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = Some(in_flight);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        // The last frame is handed out: the request is over now, not when
        // the server gets round to dropping the body.
        let last;
        let frame = match this.kind.project() {
            KindProj::Upstream {
                first,
                mut body,
                hold,
                idle,
            } => {
                let frame = match first.take() {
                    Some(frame) => Some(frame),
                    None => match body.as_mut().poll_frame(cx) {
                        Poll::Ready(frame) => {
                            if let Some(idle) = idle {
                                idle.progress();
                            }
                            frame
                        }
                        Poll::Pending => {
                            let Some(after) =
                                idle.as_mut().and_then(|i| i.expired(cx).then(|| i.after()))
                            else {
                                return Poll::Pending;
                            };
                            // Stalled: the endpoint's failure, and the end.
                            *idle = None;
                            if let Some(hold) = hold.take() {
                                hold.broke();
                            }
                            if let Some(mut f) = this.in_flight.take() {
                                f.broken_body();
                            }
                            return Poll::Ready(Some(Err(BodyError::Idle(after))));
                        }
                    },
                };
                // Read to its end (a body of known length ends with its last
                // frame; hyper polls no further): the connection is free again.
                let ended = frame.is_none() || (first.is_none() && body.is_end_stream());
                if ended && let Some(hold) = hold.take() {
                    hold.release();
                }
                last = ended;
                if matches!(frame, Some(Err(_)))
                    && let Some(hold) = hold.take()
                {
                    hold.broke();
                }
                frame.map(|f| f.map_err(BodyError::from))
            }
            KindProj::Local { data } => {
                last = true;
                data.take().map(|d| Ok(Frame::data(d)))
            }
        };
        match &frame {
            Some(Ok(_)) if last => drop(this.in_flight.take()),
            Some(Ok(_)) => {}
            // The end, or an upstream that broke off mid-body: the request is over.
            None => drop(this.in_flight.take()),
            Some(Err(_)) => {
                if let Some(mut f) = this.in_flight.take() {
                    f.broken_body();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { first, body, .. } => first.is_none() && body.is_end_stream(),
            Kind::Local { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream {
                first: None, body, ..
            } => body.size_hint(),
            // A peeked frame was taken out of the body's own count.
            Kind::Upstream { .. } => SizeHint::default(),
            Kind::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
