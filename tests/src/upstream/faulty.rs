//! An HTTP/1.1 and h2c upstream whose failures a test switches at run time.
//! See [`FaultyUpstream`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use super::{bind_loopback, InFlight, ServerTask, X_UPSTREAM};

/// How a [`FaultyUpstream`] answers requests (every path but `/healthz`).
///
/// "Request `i`" counts the requests that arrived since the mode was last
/// set, from 0, over all connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200.
    Ok,
    /// This status for every request.
    Status(u16),
    /// Request `i` gets `status` when `i % every < first`, else 200.
    FailPattern { every: usize, first: usize, status: u16 },
    /// Never answers (until [`FaultyUpstream::release_hung`], then 200).
    Hang,
    /// Requests `0..n` hang like [`Mode::Hang`]; later ones get 200.
    HangFirst(usize),
    /// Waits this long, then 200.
    Delay(Duration),
}

/// Header with the upstream's count of the request (0-based, over its whole life).
pub const X_REQUEST_INDEX: &str = "x-request-index";
/// Header with the length of the request body the upstream received.
pub const X_BODY_LEN: &str = "x-body-len";

/// A test HTTP server (HTTP/1.1 and h2c, detected per connection) that
/// answers according to a [`Mode`] the test changes at run time.
///
/// `GET /healthz` is answered apart with the status set by
/// [`FaultyUpstream::set_health`] (200 at first) and is not counted as a
/// request. Every response carries `x-upstream: <name>`, [`X_REQUEST_INDEX`]
/// and [`X_BODY_LEN`] (health answers only the first).
pub struct FaultyUpstream {
    name: Arc<str>,
    addr: SocketAddr,
    state: Arc<State>,
    task: Mutex<Option<ServerTask>>,
}

struct State {
    name: Arc<str>,
    connections: Arc<AtomicUsize>,
    /// The mode and the number of requests since it was set, under one lock
    /// so that a request is counted in the mode it is answered by.
    mode: Mutex<(Mode, usize)>,
    requests: AtomicUsize,
    methods: Mutex<HashMap<String, usize>>,
    health: AtomicU16,
    health_checks: AtomicUsize,
    in_flight: InFlight,
    arrived: Notify,
    /// Bumped by `release_hung`; hanging requests wait for a change.
    release: watch::Sender<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FaultyUpstream {
    /// Starts the server on an ephemeral loopback port, in [`Mode::Ok`].
    pub async fn start(name: &str) -> FaultyUpstream {
        let (listener, addr) = bind_loopback().await;
        let name: Arc<str> = Arc::from(name);
        let state = Arc::new(State {
            name: name.clone(),
            connections: Arc::new(AtomicUsize::new(0)),
            mode: Mutex::new((Mode::Ok, 0)),
            requests: AtomicUsize::new(0),
            methods: Mutex::new(HashMap::new()),
            health: AtomicU16::new(200),
            health_checks: AtomicUsize::new(0),
            in_flight: InFlight::default(),
            arrived: Notify::new(),
            release: watch::Sender::new(0),
        });
        let task = spawn(listener, &state);
        FaultyUpstream { name, addr, state, task: Mutex::new(Some(task)) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Switches the mode; the request count of the new mode starts at 0.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state.mode) = (mode, 0);
    }

    /// The status `/healthz` answers with from now on.
    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
    }

    /// Lets every request hanging in [`Mode::Hang`] / [`Mode::HangFirst`] answer 200.
    pub fn release_hung(&self) {
        self.state.release.send_modify(|generation| *generation += 1);
    }

    /// Requests received so far (counted when the head arrives), `/healthz` excluded.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests received with this method.
    pub fn requests_by_method(&self, method: &str) -> usize {
        lock(&self.state.methods).get(method).copied().unwrap_or(0)
    }

    /// `/healthz` requests received so far.
    pub fn health_checks(&self) -> usize {
        self.state.health_checks.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests not answered yet.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.current()
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        super::wait_for_count(&self.state.arrived, || self.requests(), n).await;
    }

    /// Closes the listener and every connection, and waits until they are
    /// closed: connecting to [`FaultyUpstream::addr`] is refused from now on.
    pub async fn die(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            task.shutdown().await;
        }
    }

    /// Listens on the same port again after [`FaultyUpstream::die`].
    pub async fn revive(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap_or_else(|e| panic!("rebind {}: {e}", self.addr));
        let task = spawn(listener, &self.state);
        *lock(&self.task) = Some(task);
    }
}

fn spawn(listener: TcpListener, state: &Arc<State>) -> ServerTask {
    let conn_state = state.clone();
    ServerTask::spawn_accept_loop(listener, state.connections.clone(), move |stream| {
        serve_connection(conn_state.clone(), stream)
    })
}

async fn serve_connection(state: Arc<State>, stream: TcpStream) {
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn respond(state: &State, status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut().insert(X_UPSTREAM, HeaderValue::from_str(&state.name).expect("valid upstream name"));
    res
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        state.health_checks.fetch_add(1, Ordering::SeqCst);
        return respond(&state, state.health.load(Ordering::SeqCst), "health\n");
    }
    // Subscribed before the request counts, so a release the test sends
    // once it has seen the request cannot be missed.
    let mut release = state.release.subscribe();
    let _guard = state.in_flight.enter();
    let (mode, since_mode) = {
        let mut mode = lock(&state.mode);
        let index = mode.1;
        mode.1 += 1;
        (mode.0, index)
    };
    let index = state.requests.fetch_add(1, Ordering::SeqCst);
    *lock(&state.methods).entry(req.method().as_str().to_owned()).or_insert(0) += 1;
    state.arrived.notify_waiters();

    let body_len = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => return respond(&state, 400, "bad body\n"),
    };
    let status = match mode {
        Mode::Ok => 200,
        Mode::Status(status) => status,
        Mode::FailPattern { every, first, status } => {
            if since_mode % every.max(1) < first {
                status
            } else {
                200
            }
        }
        Mode::Hang => {
            let _ = release.changed().await;
            200
        }
        Mode::HangFirst(n) => {
            if since_mode < n {
                let _ = release.changed().await;
            }
            200
        }
        Mode::Delay(delay) => {
            tokio::time::sleep(delay).await;
            200
        }
    };
    let mut res = respond(&state, status, format!("{} {status}\n", state.name));
    res.headers_mut().insert(X_REQUEST_INDEX, HeaderValue::from(index));
    res.headers_mut().insert(X_BODY_LEN, HeaderValue::from(body_len));
    res
}
