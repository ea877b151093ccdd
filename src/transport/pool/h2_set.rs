//! The HTTP/2 connections to one endpoint: up to `limit`, opened as requests
//! come and then taken in turn.
//!
//! Why several: behind a ClusterIP, kube-proxy picks a pod per TCP connection,
//! so every call on one HTTP/2 connection lands on one pod. Why in turn and not
//! by the fewest streams: what matters for spreading is each connection's
//! share of the calls, which a turn makes equal, and it needs no count of
//! streams per connection (a guard on every response body, decremented at its
//! end) nor any change to what a sent request returns. HTTP/2 multiplexes, so a
//! long stream on one connection does not hold up the calls that follow it.
//!
//! Why opened as requests come and not only when the others are busy: with
//! HTTP/2 "busy" means hundreds of streams, so a light client would stay on one
//! pod forever. The first request opens one and waits for it; while one is
//! open, each further request (up to `limit`) opens one more in the background
//! and goes on an open one meanwhile, so no request waits for a connection
//! that only spreads the load, and a pod that cannot be reached costs a
//! background attempt a second, not a request's time. A destination never
//! called costs none.

use tokio::time::Instant;

/// What the set needs of a connection's handle.
pub(super) trait Handle: Clone {
    fn is_closed(&self) -> bool;
}

impl<B> Handle for hyper::client::conn::http2::SendRequest<B> {
    fn is_closed(&self) -> bool {
        hyper::client::conn::http2::SendRequest::is_closed(self)
    }
}

/// What a request should do.
#[derive(Debug)]
pub(super) enum Choice<S> {
    /// Send on this connection.
    Use(S),
    /// Open one more: room is kept for it until [`H2Set::opened`] or
    /// [`H2Set::abandon`]. With `fallback`, a live connection, the request goes
    /// on that one and the new one is opened beside it.
    Open { fallback: Option<S> },
    /// None is live and all the room is being opened by other requests.
    Wait,
}

pub(super) struct H2Set<S> {
    /// Live connections, each with when it stops taking new streams.
    conns: Vec<(S, Option<Instant>)>,
    /// The turn: index of the connection used last.
    next: usize,
    /// Connections being opened for this set.
    opening: usize,
    limit: usize,
    /// After a failed opening beside live connections: no other before this.
    open_after: Option<Instant>,
}

impl<S: Handle> H2Set<S> {
    pub fn new(limit: usize) -> Self {
        H2Set {
            conns: Vec::new(),
            next: 0,
            opening: 0,
            limit: limit.max(1),
            open_after: None,
        }
    }

    /// Drops closed and retired connections (a retired one finishes the
    /// streams it has: it goes when the last of them ends), then chooses.
    pub fn choose(&mut self, now: Instant) -> Choice<S> {
        self.conns
            .retain(|(s, retire)| !s.is_closed() && retire.is_none_or(|at| now < at));
        let room = self.conns.len() + self.opening < self.limit;
        let due = self.conns.is_empty() || self.open_after.is_none_or(|at| now >= at);
        if room && due {
            self.opening += 1;
            return Choice::Open {
                fallback: self.take_turn(),
            };
        }
        match self.take_turn() {
            Some(s) => Choice::Use(s),
            None => Choice::Wait,
        }
    }

    fn take_turn(&mut self) -> Option<S> {
        if self.conns.is_empty() {
            return None;
        }
        self.next = (self.next + 1) % self.conns.len();
        Some(self.conns[self.next].0.clone())
    }

    /// A connection opened in the room [`Choice::Open`] kept.
    pub fn opened(&mut self, s: S, retire_at: Option<Instant>) {
        self.opening = self.opening.saturating_sub(1);
        self.open_after = None;
        self.offer(s, retire_at);
    }

    /// An opening beside live connections failed: the next waits till `at`.
    pub fn back_off(&mut self, at: Instant) {
        self.open_after = Some(at);
    }

    /// The room kept for an opening that failed or was given up.
    pub fn abandon(&mut self) {
        self.opening = self.opening.saturating_sub(1);
    }

    /// A connection opened without room kept: kept if there is room, else it
    /// serves the one request that opened it and closes after.
    pub fn offer(&mut self, s: S, retire_at: Option<Instant>) {
        if self.conns.len() < self.limit {
            self.conns.push((s, retire_at));
        }
    }

    /// Live connections (closed ones not yet noticed included).
    pub fn len(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[derive(Clone, Debug)]
    struct Fake(u8, Arc<AtomicBool>);

    impl Handle for Fake {
        fn is_closed(&self) -> bool {
            self.1.load(Ordering::Relaxed)
        }
    }

    fn fake(id: u8) -> Fake {
        Fake(id, Arc::new(AtomicBool::new(false)))
    }

    fn used(c: Choice<Fake>) -> u8 {
        match c {
            Choice::Use(f) => f.0,
            other => panic!("expected a connection, got {other:?}"),
        }
    }

    #[test]
    fn opens_up_to_the_limit_then_takes_turns() {
        let now = Instant::now();
        let mut set = H2Set::new(3);
        assert!(matches!(set.choose(now), Choice::Open { fallback: None }));
        set.opened(fake(0), None);
        let Choice::Open {
            fallback: Some(first),
        } = set.choose(now)
        else {
            panic!("a second one is opened, the first to fall back on");
        };
        assert_eq!(first.0, 0);
        set.opened(fake(1), None);
        assert!(matches!(set.choose(now), Choice::Open { .. }));
        set.opened(fake(2), None);
        assert_eq!(set.len(), 3);
        let turns: Vec<u8> = (0..6).map(|_| used(set.choose(now))).collect();
        let mut seen = turns.clone();
        seen.sort_unstable();
        assert_eq!(seen, [0, 0, 1, 1, 2, 2], "each in turn: {turns:?}");
    }

    #[test]
    fn requests_wait_while_the_only_room_is_being_opened() {
        let now = Instant::now();
        let mut set = H2Set::<Fake>::new(1);
        assert!(matches!(set.choose(now), Choice::Open { .. }));
        assert!(matches!(set.choose(now), Choice::Wait));
        set.abandon();
        assert!(matches!(set.choose(now), Choice::Open { .. }), "room again");
    }

    #[test]
    fn closed_and_retired_connections_are_replaced() {
        let t0 = Instant::now();
        let mut set = H2Set::new(2);
        let _ = set.choose(t0);
        let broken = fake(0);
        set.opened(broken.clone(), None);
        let _ = set.choose(t0);
        set.opened(fake(1), Some(t0 + Duration::from_secs(1)));
        let mut both: Vec<u8> = (0..2).map(|_| used(set.choose(t0))).collect();
        both.sort_unstable();
        assert_eq!(both, [0, 1]);
        broken.1.store(true, Ordering::Relaxed);
        let Choice::Open {
            fallback: Some(live),
        } = set.choose(t0)
        else {
            panic!("the broken one's room is opened again");
        };
        assert_eq!(live.0, 1);
        set.opened(fake(2), None);
        let later = t0 + Duration::from_secs(1);
        let Choice::Open {
            fallback: Some(young),
        } = set.choose(later)
        else {
            panic!("the retired one's room is opened again");
        };
        assert_eq!(young.0, 2, "the retired one takes no new stream");
    }

    #[test]
    fn after_a_failed_opening_beside_live_ones_the_next_waits() {
        let t0 = Instant::now();
        let mut set = H2Set::new(2);
        let _ = set.choose(t0);
        set.opened(fake(0), None);
        assert!(matches!(set.choose(t0), Choice::Open { fallback: Some(_) }));
        set.abandon();
        set.back_off(t0 + Duration::from_secs(1));
        assert_eq!(used(set.choose(t0)), 0, "the live one, no opening");
        let later = t0 + Duration::from_secs(1);
        assert!(matches!(set.choose(later), Choice::Open { .. }));
        // With none live, a request opens whatever the wait.
        let mut lone = H2Set::<Fake>::new(1);
        lone.back_off(later + Duration::from_secs(1));
        assert!(matches!(
            lone.choose(later),
            Choice::Open { fallback: None }
        ));
    }

    #[test]
    fn a_connection_beyond_the_limit_is_not_kept() {
        let now = Instant::now();
        let mut set = H2Set::new(1);
        set.offer(fake(0), None);
        set.offer(fake(1), None);
        assert_eq!(set.len(), 1);
        assert_eq!(used(set.choose(now)), 0);
    }
}
