//! `ReplayBody`: a request body that streams to the first attempt while keeping
//! up to `--retry-body-limit` bytes, so a retry can send it again.
//!
//! The body is never buffered before it is sent: the first attempt reads the
//! client's body frame by frame and each frame is kept on the side. A retry
//! replays the kept frames, then goes on reading the client's body where the
//! previous attempt left off. Past the limit nothing more is kept and, once a
//! frame has been sent, the body can no longer be replayed — but a body that was
//! never touched (a connect failure) can always be sent again.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use super::client_body::ClientBody;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct ReplayBody<B = ClientBody> {
    kind: Kind<B>,
}

enum Kind<B> {
    Empty,
    /// Retries are off: the client's body, untouched.
    Stream(B),
    Replay {
        shared: Arc<Mutex<Shared<B>>>,
        /// Frames of the body this copy has produced.
        pos: usize,
        trailers_sent: bool,
        size_hint: SizeHint,
    },
}

/// The client's body and what has been kept of it, shared by every copy.
struct Shared<B> {
    inner: Option<B>,
    kept: Vec<Bytes>,
    kept_len: usize,
    limit: usize,
    /// Frames read from the client so far.
    read: usize,
    /// More than `limit` bytes came: `kept` was dropped.
    overflowed: bool,
    trailers: Option<HeaderMap>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body was larger than --retry-body-limit and cannot be sent again")]
struct NotReplayable;

impl<B> ReplayBody<B> {
    /// No body at all.
    pub fn empty() -> Self {
        ReplayBody { kind: Kind::Empty }
    }
}

impl<B: Body + Unpin> ReplayBody<B> {
    /// A body that is sent once, as it comes.
    pub fn once(body: B) -> Self {
        if body.is_end_stream() {
            return Self::empty();
        }
        ReplayBody {
            kind: Kind::Stream(body),
        }
    }

    /// A body that keeps up to `limit` bytes for replay. A known length over the
    /// limit keeps nothing from the start.
    pub fn replayable(body: B, limit: usize) -> Self {
        if body.is_end_stream() {
            return Self::empty();
        }
        let size_hint = body.size_hint();
        let overflowed = size_hint.lower() > limit as u64;
        let shared = Shared {
            inner: Some(body),
            kept: Vec::new(),
            kept_len: 0,
            limit,
            read: 0,
            overflowed,
            trailers: None,
        };
        ReplayBody {
            kind: Kind::Replay {
                shared: Arc::new(Mutex::new(shared)),
                pos: 0,
                trailers_sent: false,
                size_hint,
            },
        }
    }

    /// A copy for the next attempt, starting from the first byte; `None` when the
    /// body cannot be sent again.
    pub fn try_clone(&self) -> Option<ReplayBody<B>> {
        match &self.kind {
            Kind::Empty => Some(Self::empty()),
            Kind::Stream(_) => None,
            Kind::Replay {
                shared, size_hint, ..
            } => {
                let s = lock(shared);
                if s.overflowed && s.read > 0 {
                    return None;
                }
                Some(ReplayBody {
                    kind: Kind::Replay {
                        shared: shared.clone(),
                        pos: 0,
                        trailers_sent: false,
                        size_hint: *size_hint,
                    },
                })
            }
        }
    }

    /// A copy from the first byte that will never read from the client: only
    /// when the whole body has been read and kept (a mirror's copy, sent while
    /// the original may still be streaming its answer). `None` otherwise.
    pub fn whole(&self) -> Option<ReplayBody<B>> {
        if let Kind::Replay {
            shared, size_hint, ..
        } = &self.kind
        {
            let s = lock(shared);
            let all_read = s.inner.is_none() || size_hint.exact() == Some(s.kept_len as u64);
            if s.overflowed || !all_read {
                return None;
            }
        }
        self.try_clone()
    }

    /// Whether the body grew past the replay limit after part of it was sent:
    /// the one reason a retry-worthy request is not retried because of its body.
    pub fn too_large(&self) -> bool {
        match &self.kind {
            Kind::Replay { shared, .. } => {
                let s = lock(shared);
                s.overflowed && s.read > 0
            }
            _ => false,
        }
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (shared, pos, trailers_sent) = match &mut self.get_mut().kind {
            Kind::Empty => return Poll::Ready(None),
            Kind::Stream(body) => {
                return Pin::new(body).poll_frame(cx).map_err(Into::into);
            }
            Kind::Replay {
                shared,
                pos,
                trailers_sent,
                ..
            } => (shared, pos, trailers_sent),
        };
        let mut s = lock(shared);
        if *pos < s.read {
            // Replaying what an earlier attempt already read.
            let Some(chunk) = s.kept.get(*pos).cloned() else {
                return Poll::Ready(Some(Err(NotReplayable.into())));
            };
            *pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        loop {
            let Some(inner) = s.inner.as_mut() else {
                // The client's body has ended: its trailers, if any, then the end.
                if !*trailers_sent && let Some(t) = s.trailers.clone() {
                    *trailers_sent = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                return Poll::Ready(None);
            };
            let frame = match ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    s.inner = None;
                    continue;
                }
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    s.read += 1;
                    *pos += 1;
                    if !s.overflowed {
                        if s.kept_len + data.len() <= s.limit {
                            s.kept_len += data.len();
                            s.kept.push(data.clone());
                        } else {
                            s.overflowed = true;
                            s.kept = Vec::new();
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Err(frame) => frame,
            };
            if let Ok(trailers) = frame.into_trailers() {
                s.trailers = Some(trailers.clone());
                s.inner = None;
                *trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            // Any other frame kind means nothing to an HTTP body; skip it.
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Stream(body) => body.is_end_stream(),
            Kind::Replay { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Stream(body) => body.size_hint(),
            Kind::Replay { size_hint, .. } => *size_hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Frames = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    fn body(chunks: &[&'static str], trailers: bool) -> Frames {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read_all(b: ReplayBody<Frames>) -> (String, bool) {
        let collected = b.collect().await.map_err(|e| e.to_string());
        match collected {
            Ok(c) => {
                let trailers = c.trailers().is_some();
                (
                    String::from_utf8_lossy(&c.to_bytes()).into_owned(),
                    trailers,
                )
            }
            Err(e) => (format!("error: {e}"), false),
        }
    }

    #[tokio::test]
    async fn every_copy_sends_the_whole_body_and_trailers() {
        let first = ReplayBody::replayable(body(&["hello ", "world"], true), 1024);
        let second = first.try_clone();
        assert_eq!(read_all(first).await, ("hello world".into(), true));
        let second = second.map(read_all);
        assert_eq!(
            second.expect("replayable").await,
            ("hello world".into(), true)
        );
    }

    #[tokio::test]
    async fn a_copy_made_midway_replays_then_continues() {
        let mut first = ReplayBody::replayable(body(&["a", "b", "c"], false), 1024);
        let frame = first
            .frame()
            .await
            .and_then(Result::ok)
            .and_then(|f| f.into_data().ok());
        assert_eq!(frame.as_deref(), Some(&b"a"[..]));
        let second = first.try_clone().expect("still replayable");
        drop(first);
        assert_eq!(read_all(second).await.0, "abc");
    }

    #[tokio::test]
    async fn past_the_limit_only_an_untouched_body_can_be_resent() {
        let first = ReplayBody::replayable(body(&["12345", "67890"], false), 6);
        let untouched = first.try_clone();
        assert!(
            untouched.is_some(),
            "nothing sent yet: a connect failure may retry"
        );
        assert_eq!(read_all(first).await.0, "1234567890");
        assert!(untouched.as_ref().is_some_and(|u| u.too_large()));
        assert!(untouched.as_ref().and_then(|u| u.try_clone()).is_none());
    }

    #[tokio::test]
    async fn only_a_body_read_to_its_end_is_whole() {
        let first = ReplayBody::replayable(body(&["ab", "cd"], true), 1024);
        let held = first.try_clone().expect("untouched");
        assert!(held.whole().is_none(), "nothing read yet");
        assert_eq!(read_all(first).await, ("abcd".into(), true));
        let whole = held.whole().expect("read to its end");
        assert_eq!(read_all(whole).await, ("abcd".into(), true));
        let big = ReplayBody::replayable(body(&["12345", "67890"], false), 6);
        let held = big.try_clone().expect("untouched");
        read_all(big).await;
        assert!(held.whole().is_none(), "past the limit");
        assert!(ReplayBody::<Frames>::empty().whole().is_some());
    }

    #[tokio::test]
    async fn a_once_body_cannot_be_resent() {
        let once = ReplayBody::once(body(&["x"], false));
        assert!(once.try_clone().is_none());
        assert_eq!(read_all(once).await.0, "x");
    }
}
