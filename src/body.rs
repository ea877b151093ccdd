//! `ProxyBody`, the one response body type: an upstream's streamed body or a short
//! local answer, carrying the request's [`InFlight`] guard until the body ends.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::accounting::InFlight;
use crate::forward::Hold;

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
        },
        Local { data: Option<Bytes> },
    }
}

impl ProxyBody {
    /// An upstream's body; `first` is a frame already read from it (a peek).
    pub fn upstream(
        body: Incoming,
        first: Option<Result<Frame<Bytes>, hyper::Error>>,
        hold: Hold,
    ) -> Self {
        // An empty body is never polled: the connection is free already.
        let hold = if first.is_none() && body.is_end_stream() {
            hold.release();
            None
        } else {
            Some(hold)
        };
        ProxyBody {
            kind: Kind::Upstream { first, body, hold },
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = match this.kind.project() {
            KindProj::Upstream {
                first,
                mut body,
                hold,
            } => {
                let frame = match first.take() {
                    Some(frame) => Some(frame),
                    None => ready!(body.as_mut().poll_frame(cx)),
                };
                // Read to its end (a body of known length ends with its last
                // frame; hyper polls no further): the connection is free again.
                let ended = frame.is_none() || (first.is_none() && body.is_end_stream());
                if ended && let Some(hold) = hold.take() {
                    hold.release();
                }
                frame
            }
            KindProj::Local { data } => data.take().map(|d| Ok(Frame::data(d))),
        };
        match &frame {
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
