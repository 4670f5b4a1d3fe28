//! The reference control plane: serves edgeplane configs from a directory,
//! the way a Pipy repo serves codebases to osm-edge sidecars, for tests,
//! demos and the bench.
//!
//! * `GET|HEAD /<path>`: a regular file inside the directory, with
//!   `ETag: "<16 hex of its SHA-256>"` and `Cache-Control: no-cache`;
//!   `If-None-Match` (a list, `*`, weak tags) that matches gives `304`.
//! * `GET|HEAD /<dir>/` (and `/`): the codebase manifest, one `/path` a
//!   line, sorted, recursive, whose ETag changes when any file does. A
//!   directory without the trailing slash is `404`, not a redirect.
//! * `Prefer: wait=<s>` with a matching `If-None-Match`: held until the ETag
//!   changes or the wait (capped by `max_wait`) passes.
//! * `POST /<any path>` with a JSON object: a status report, `201`.
//! * `GET /_status`: the reports and request counters as JSON.
//!
//! Hidden names (`.…`), `..`, and anything a symlink leads out of the
//! directory to are not served. HTTP/1.1 and HTTP/2 (h2c by prior knowledge,
//! or by ALPN over TLS) share the port; TLS, client certificates and a
//! bearer token are optional. The README's "Reference control plane" has
//! the details and a curl session.

mod files;
mod headers;
mod service;
mod status;
mod tls;
mod watch;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use files::Files;
use status::Status;

/// The default cap on `Prefer: wait`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);

/// A client that sends nothing this long after connecting (or after its
/// last request, on HTTP/1.1) is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RunningServer::shutdown`] lets requests in flight finish
/// before it cuts their connections.
const GRACE: Duration = Duration::from_secs(2);
/// After a failed accept (out of file descriptors, typically), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What [`start`] serves and how.
#[derive(Clone)]
pub struct ServerOptions {
    /// The served directory.
    pub dir: PathBuf,
    /// Port 0 picks a free one; [`RunningServer::addr`] tells which.
    pub listen: SocketAddr,
    /// TLS (HTTP/2 or HTTP/1.1 by ALPN); plain TCP when `None`.
    pub tls: Option<ServerTls>,
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The longest a `Prefer: wait` request is held.
    pub max_wait: Duration,
}

impl ServerOptions {
    /// Plain HTTP on a free loopback port, no token, [`DEFAULT_MAX_WAIT`].
    pub fn new(dir: impl Into<PathBuf>) -> ServerOptions {
        ServerOptions {
            dir: dir.into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: None,
            token: None,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("dir", &self.dir)
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

/// The server's certificate chain and key, and optionally the CA bundle
/// client certificates must chain to (which makes one required).
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("client_ca_pem", &self.client_ca_pem.as_ref().map(|pem| format!("{} bytes", pem.len())))
            .finish()
    }
}

/// What the request handlers share.
struct State {
    files: Files,
    status: Status,
    /// SHA-256 of the bearer token.
    token: Option<[u8; 32]>,
    max_wait: Duration,
    /// Bumped by the directory watcher; held requests wait on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Whether the watcher started (held requests re-check more often
    /// without it).
    watching: bool,
    /// Becomes `true` when the server stops.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Long polls being held now.
    waiting: AtomicUsize,
    http: auto::Builder<TokioExecutor>,
}

/// A server [`start`] started. Dropping it stops it too, abruptly;
/// [`RunningServer::shutdown`] lets requests in flight finish first.
pub struct RunningServer {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningServer").field("addr", &self.addr).field("tls", &self.tls).finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The address it listens on (with the port picked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// The document `GET /_status` answers (without counting a request).
    pub fn status_json(&self) -> serde_json::Value {
        self.state.status.json(self.state.waiting.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Stops accepting, answers held long polls at once, lets requests in
    /// flight finish (for up to 2 s) and closes every connection. The port
    /// is closed when this returns.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            // The task never panics; an error would only say it was aborted.
            let _ = task.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            // Dropping the accept task's set of connections aborts them.
            task.abort();
        }
    }
}

/// Binds `options.listen`, starts watching `options.dir` and serves it on
/// the current tokio runtime until the returned server is shut down or
/// dropped.
pub async fn start(options: ServerOptions) -> anyhow::Result<RunningServer> {
    let root = tokio::fs::canonicalize(&options.dir)
        .await
        .with_context(|| format!("the served directory {}", options.dir.display()))?;
    if !tokio::fs::metadata(&root).await.with_context(|| format!("{}", root.display()))?.is_dir() {
        bail!("{} is not a directory", options.dir.display());
    }
    let token = match &options.token {
        None => None,
        Some(token) => {
            // RFC 6750's token68 is narrower; refusing only what no client
            // could send in a header keeps odd but workable tokens usable.
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("the bearer token must be non-empty printable ASCII without spaces");
            }
            Some(headers::sha256(token.as_bytes()))
        }
    };
    let acceptor = match &options.tls {
        None => None,
        Some(tls) => Some(TlsAcceptor::from(tls::server_config(tls)?)),
    };
    let listener =
        TcpListener::bind(options.listen).await.with_context(|| format!("cannot listen on {}", options.listen))?;
    let addr = listener.local_addr()?;

    let (changes, _) = tokio::sync::watch::channel(0);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let watcher = watch::start(&root, changes.clone());
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    http.http2().timer(TokioTimer::new());
    tracing::info!(%addr, dir = %root.display(), tls = acceptor.is_some(), token = token.is_some(), "listening on {addr}");
    let state = Arc::new(State {
        files: Files::new(root),
        status: Status::default(),
        token,
        max_wait: options.max_wait,
        changes,
        watching: watcher.is_some(),
        shutdown: stopped.clone(),
        waiting: AtomicUsize::new(0),
        http,
    });
    let tls = acceptor.is_some();
    let task = tokio::spawn(accept(listener, acceptor, state.clone(), stopped, watcher));
    Ok(RunningServer { addr, tls, state, stop, task: Some(task) })
}

/// The accept loop; owns the connections (and the watcher), so ending it
/// ends them.
async fn accept(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    state: Arc<State>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    _watcher: Option<notify::RecommendedWatcher>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    // Small responses; waiting for more to send only adds latency.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(stream, remote, acceptor.clone(), state.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(GRACE, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::debug!(open = connections.len(), "closing connections still busy after the grace period");
    }
    connections.shutdown().await;
    tracing::info!(dir = %state.files.root().display(), "stopped serving");
}

/// Resolves once the server is stopping (or its handle is gone). The
/// watch guard is dropped here, so callers may await after it.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn connection(stream: TcpStream, remote: SocketAddr, acceptor: Option<TlsAcceptor>, state: Arc<State>) {
    let Some(acceptor) = acceptor else {
        return serve(TokioIo::new(stream), remote, &state).await;
    };
    let mut stop = state.shutdown.clone();
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => handshake,
        () = stopped(&mut stop) => return,
    };
    match handshake {
        Ok(Ok(stream)) => serve(TokioIo::new(stream), remote, &state).await,
        Ok(Err(error)) => tracing::debug!(%remote, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
    }
}

async fn serve<I>(io: I, remote: SocketAddr, state: &Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let handler_state = state.clone();
    let service = service_fn(move |request| service::handle(handler_state.clone(), remote, request));
    let connection = state.http.serve_connection(io, service);
    tokio::pin!(connection);
    let mut stop = state.shutdown.clone();
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%remote, %error, "connection ended with an error");
            }
            return;
        }
        () = stopped(&mut stop) => {}
    }
    connection.as_mut().graceful_shutdown();
    if let Err(error) = connection.await {
        tracing::debug!(%remote, %error, "connection ended with an error");
    }
}
