//! Real upstream servers for end-to-end tests.
//!
//! Every server binds `127.0.0.1:0`, runs as tasks on the caller's tokio
//! runtime and stops when dropped: the listener is closed and every
//! connection task is aborted. `shutdown().await` does the same but returns
//! only once the listener is closed and the connections are gone, for tests
//! that need "the upstream is down now" without racing.

mod faulty;
mod grpc;
mod http;
mod mosquitto;
mod mqtt_stub;
mod rumqttd;
mod tcp;
mod ws;

pub use self::faulty::{FaultyUpstream, Mode, X_BODY_LEN, X_REQUEST_INDEX};
pub use self::grpc::{CountRequest, EchoReply, EchoRequest, GrpcClient, GrpcUpstream, SERVICE_NAME as GRPC_SERVICE};
pub use self::http::{bytes_pattern, HttpProto, HttpUpstream, CHUNKS, X_UPSTREAM};
pub use self::mosquitto::{
    publish, retained_on, try_publish, ClientOptions, Message, Mosquitto, MqttVersion, PubOutput, Subscriber,
    CLIENT_TIMEOUT as MQTT_CLIENT_TIMEOUT,
};
pub use self::mqtt_stub::MqttStub;
pub use self::rumqttd::Rumqttd;
pub use self::tcp::TcpEcho;
pub use self::ws::{ws_roundtrip, WsEcho};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Binds an ephemeral loopback port.
pub(crate) async fn bind_loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener local_addr");
    (listener, addr)
}

/// Waits until `count()` reaches `n`; `arrived` is notified on every
/// arrival (registered before each check, so none is missed).
pub(crate) async fn wait_for_count(arrived: &tokio::sync::Notify, count: impl Fn() -> usize, n: usize) {
    loop {
        let notified = arrived.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if count() >= n {
            return;
        }
        notified.await;
    }
}

/// The accept loop of one server and the tasks of its connections.
///
/// Dropping it aborts everything (asynchronously, as tokio aborts do);
/// [`ServerTask::shutdown`] waits until the listener and all connections are
/// closed.
pub(crate) struct ServerTask {
    cancel: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl ServerTask {
    /// Spawns an accept loop: every accepted connection is counted in
    /// `connections` and handed to `handler` in its own task.
    pub(crate) fn spawn_accept_loop<F, Fut>(listener: TcpListener, connections: Arc<AtomicUsize>, handler: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let handle = tokio::spawn(async move {
            // Owned by this task so that aborting the task also aborts every
            // connection (dropping a JoinSet aborts its tasks).
            let mut conns = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, _peer)) => {
                        connections.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.set_nodelay(true);
                        conns.spawn(handler(stream));
                    }
                    // E.g. EMFILE: back off instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
                // Reap finished connections so the set does not grow forever.
                while conns.try_join_next().is_some() {}
            }
            drop(listener);
            conns.shutdown().await;
        });
        Self { cancel, handle: Some(handle) }
    }

    /// Wraps an already spawned task (used by the gRPC server, whose
    /// connection tasks are spawned by tonic and killed through `cancel`).
    pub(crate) fn from_parts(cancel: CancellationToken, handle: JoinHandle<()>) -> Self {
        Self { cancel, handle: Some(handle) }
    }

    /// Stops accepting, closes every connection and waits until that is done.
    pub(crate) async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Tracks requests in flight and the highest concurrency seen.
#[derive(Clone, Default)]
pub(crate) struct InFlight {
    current: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl InFlight {
    pub(crate) fn enter(&self) -> InFlightGuard {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        InFlightGuard { current: self.current.clone() }
    }

    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    pub(crate) fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

pub(crate) struct InFlightGuard {
    current: Arc<AtomicUsize>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.current.fetch_sub(1, Ordering::SeqCst);
    }
}
