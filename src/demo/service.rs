//! The demo's upstream: one small HTTP service on loopback whose faults a scene
//! chooses (503s, dropped connections, stalls, a fixed number of slots with a
//! queue), that counts what it was sent, and that can go down and come back on
//! the same port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// What the service does with a request. Percentages are of all requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Behaviour {
    /// Answered 503 at once.
    pub unavailable: u32,
    /// The connection dropped without an answer.
    pub reset: u32,
    /// Answered 200 after `stall_for`.
    pub stall: u32,
    pub stall_for: Duration,
    /// Requests served at once; the rest wait in a FIFO queue. `None`: no limit.
    pub slots: Option<usize>,
    /// Time each request holds its slot.
    pub work: Duration,
}

/// What the service saw.
#[derive(Debug, Default)]
pub struct Seen {
    requests: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

impl Seen {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The most requests it held at once (served and queued) since the last call.
    pub fn take_peak(&self) -> u64 {
        self.peak_in_flight.swap(0, Ordering::Relaxed)
    }
}

/// The fault a request meets, drawn at random.
enum Fate {
    Ok,
    Unavailable,
    Reset,
    Stall,
}

impl Behaviour {
    fn draw(&self) -> Fate {
        let roll = fastrand::u32(0..100);
        if roll < self.unavailable {
            Fate::Unavailable
        } else if roll < self.unavailable + self.reset {
            Fate::Reset
        } else if roll < self.unavailable + self.reset + self.stall {
            Fate::Stall
        } else {
            Fate::Ok
        }
    }
}

/// The service dropped the connection instead of answering.
#[derive(Debug, thiserror::Error)]
#[error("the demo service dropped the connection")]
struct Dropped;

/// Counts a request in flight until dropped, answered or not.
struct InFlight(Arc<Seen>);

impl InFlight {
    fn new(seen: &Arc<Seen>) -> Self {
        seen.requests.fetch_add(1, Ordering::Relaxed);
        let now = seen.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        seen.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(seen.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running service. Dropping it stops it.
pub struct Service {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    behaviour: Behaviour,
    slots: Option<Arc<Semaphore>>,
    state: State,
}

enum State {
    Up(Serving),
    /// Down: the port holds a listener that never accepts, with its backlog
    /// full, so that connects to it hang like those to a host that is gone.
    Down {
        _listener: TcpListener,
        _queued: Vec<TcpStream>,
        /// The connections it was closing when it went.
        _draining: Option<Serving>,
    },
    /// Between the two.
    Gone,
}

/// A listener and its connections, served by one task.
struct Serving {
    stop: watch::Sender<bool>,
    /// Told once the listener is closed and the port free.
    closed: Option<oneshot::Receiver<()>>,
    task: JoinHandle<()>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Service {
    pub async fn spawn(behaviour: Behaviour) -> std::io::Result<Service> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)), 1024)?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let slots = behaviour.slots.map(|n| Arc::new(Semaphore::new(n)));
        let serving = serve(listener, behaviour, seen.clone(), slots.clone());
        Ok(Service {
            addr,
            seen,
            behaviour,
            slots,
            state: State::Up(serving),
        })
    }

    /// Goes away: it stops listening, finishes what it was answering and
    /// closes its connections, as a process told to stop does; then its address
    /// goes dark, as when its pod or node is gone: new connects hang unanswered
    /// until the client's connect timeout (a refused connect would be the gentle
    /// case, failing at once).
    pub async fn go_down(&mut self) -> std::io::Result<()> {
        let draining = match std::mem::replace(&mut self.state, State::Gone) {
            State::Up(mut serving) => {
                let _ = serving.stop.send(true);
                if let Some(closed) = serving.closed.take() {
                    let _ = closed.await;
                }
                Some(serving)
            }
            _ => None,
        };
        // A stand-in with a backlog of none: Linux drops a SYN to a listener
        // whose accept queue is full, so once one connection waits in it, a
        // client's connect waits for an answer that never comes. (A client
        // that gets into the queue before ours waits until `come_back` resets it.)
        let listener = listen(self.addr, 0)?;
        let mut queued = Vec::new();
        while queued.len() < 8 {
            let connect = TcpStream::connect(self.addr);
            match tokio::time::timeout(Duration::from_millis(100), connect).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        self.state = State::Down {
            _listener: listener,
            _queued: queued,
            _draining: draining,
        };
        Ok(())
    }

    /// Comes back on the same port.
    pub fn come_back(&mut self) -> std::io::Result<()> {
        // The stand-in closes first (its queued connections are reset).
        self.state = State::Gone;
        let listener = listen(self.addr, 1024)?;
        let serving = serve(
            listener,
            self.behaviour,
            self.seen.clone(),
            self.slots.clone(),
        );
        self.state = State::Up(serving);
        Ok(())
    }
}

/// A listener on `addr` that may take the port over from one just closed.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accepts and serves until told to stop; then closes the listener, lets each
/// connection finish the request it is answering and closes it.
fn serve(
    listener: TcpListener,
    behaviour: Behaviour,
    seen: Arc<Seen>,
    slots: Option<Arc<Semaphore>>,
) -> Serving {
    let (stop, stopped) = watch::channel(false);
    let (tell_closed, closed) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        let mut stopping = stopped.clone();
        loop {
            let stream = tokio::select! {
                _ = stopping.wait_for(|s| *s) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                Some(_) = connections.join_next() => continue,
            };
            let _ = stream.set_nodelay(true);
            let (seen, slots, mut stopping) = (seen.clone(), slots.clone(), stopped.clone());
            connections.spawn(async move {
                let service = service_fn(move |_req| {
                    let counted = InFlight::new(&seen);
                    let slots = slots.clone();
                    async move {
                        let _counted = counted;
                        answer(behaviour, slots).await
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    // The guard `wait_for` returns is not Send: drop it here.
                    () = async { let _ = stopping.wait_for(|s| *s).await; } => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
        drop(listener);
        let _ = tell_closed.send(());
        while connections.join_next().await.is_some() {}
    });
    Serving {
        stop,
        closed: Some(closed),
        task,
    }
}

async fn answer(
    behaviour: Behaviour,
    slots: Option<Arc<Semaphore>>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (status, body) = match behaviour.draw() {
        Fate::Ok => (StatusCode::OK, "ok\n"),
        Fate::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n"),
        // An error from the service makes hyper close the connection without
        // a response: a dropped request.
        Fate::Reset => return Err(Dropped),
        Fate::Stall => {
            tokio::time::sleep(behaviour.stall_for).await;
            (StatusCode::OK, "ok, eventually\n")
        }
    };
    if !behaviour.work.is_zero() {
        // The semaphore is fair: a FIFO queue in front of the slots.
        let _slot = match &slots {
            Some(s) => Some(s.acquire().await.map_err(|_| Dropped)?),
            None => None,
        };
        tokio::time::sleep(behaviour.work).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    Ok(resp)
}
