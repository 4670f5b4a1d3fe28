//! Listening sockets and the first steps of every connection: accept,
//! detect the protocol, hand over to the protocol's handler.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use config_model::ListenerProtocol;
use http::Version;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::detect::{detect, Detected};
use crate::http::forward::ConnContext;
use crate::http::h1;
use crate::http::server::{serve_http1, serve_http2};
use crate::io::{Metered, PrefixedIo};
use crate::mqtt;
use crate::policy::throttle::BandwidthLimits;
use crate::state::Shared;
use crate::tcp;

/// Pending-connection queue length (the kernel caps it at `somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds one socket per worker on `addr`, all with `SO_REUSEPORT` so the
/// kernel spreads new connections across workers. With port 0 the first
/// socket picks the port and the others join it.
///
/// `SO_REUSEPORT` is set even for one worker so that a reload can bind a
/// listener's new socket before closing the old one.
pub fn bind_group(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_one(addr)?;
    let actual = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind_one(actual)?);
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY on Linux.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accepts connections until the task is aborted.
pub async fn accept_loop(listener: TcpListener, slot: usize, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, client)) => {
                tokio::spawn(handle_connection(stream, client, slot, shared.clone()));
            }
            Err(error) => {
                // Out of file descriptors or memory: back off briefly rather
                // than spin on a listener that stays readable.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// Each protocol's serving future is boxed: inline, the task of every
/// connection would be as large as the largest of them (hyper's), and an
/// idle MQTT or TCP connection would pay for HTTP state it never uses.
async fn handle_connection(mut stream: TcpStream, client: SocketAddr, slot: usize, shared: Arc<Shared>) {
    let _connection = shared.connections.open();
    let table = shared.table.load_full();
    let Some(listener) = table.listener(slot).cloned() else { return };
    if let Some(bucket) = &listener.connection_rate_limit {
        if bucket.try_acquire(tokio::time::Instant::now()).is_err() {
            // Over the rate: close at once, before reading anything.
            listener.metrics.local_reply("rate_limited");
            return;
        }
    }
    listener.metrics.active.inc();
    let _active = scopeguard(|| {
        listener.metrics.active.dec();
    });

    let mut buffer = BytesMut::new();
    let detected = match listener.protocol {
        ListenerProtocol::Tcp => Detected::Tcp,
        ListenerProtocol::Mqtt => Detected::Mqtt,
        ListenerProtocol::Auto | ListenerProtocol::Http => {
            buffer = crate::buffers::bytes();
            buffer.reserve(4096);
            match detect(&mut stream, &mut buffer, listener.detect_timeout).await {
                Ok(detected) => detected,
                Err(error) => {
                    tracing::debug!(%client, %error, "read failed during protocol detection");
                    return;
                }
            }
        }
    };
    let context = |downstream| Arc::new(ConnContext { shared: shared.clone(), slot, client, downstream });
    match detected {
        Detected::Closed => {}
        Detected::Http1 if listener.bandwidth.is_some() => {
            // The fast path writes to the socket itself; paced connections
            // are served by hyper over a throttled stream.
            listener.metrics.accepted_http1.inc();
            let io = PrefixedIo::new(buffer, stream);
            let io = Metered::new(io, listener.metrics.bytes_rx.clone(), listener.metrics.bytes_tx.clone());
            let io = BandwidthLimits::wrap(listener.bandwidth.as_ref(), io);
            Box::pin(serve_http1(io, context(Version::HTTP_11), &listener.http)).await;
        }
        Detected::Http1 => {
            listener.metrics.accepted_http1.inc();
            Box::pin(h1::serve(stream, buffer, shared.clone(), slot, client)).await;
        }
        Detected::Http2 => {
            listener.metrics.accepted_http2.inc();
            let io = PrefixedIo::new(buffer, stream);
            let io = Metered::new(io, listener.metrics.bytes_rx.clone(), listener.metrics.bytes_tx.clone());
            let io = BandwidthLimits::wrap(listener.bandwidth.as_ref(), io);
            Box::pin(serve_http2(io, context(Version::HTTP_2), &listener.http)).await;
        }
        Detected::Mqtt if listener.protocol != ListenerProtocol::Http => {
            listener.metrics.accepted_mqtt.inc();
            Box::pin(mqtt::serve(stream, buffer, client, &shared, &table, &listener)).await;
        }
        Detected::Tcp | Detected::Mqtt if listener.protocol == ListenerProtocol::Http => {
            listener.metrics.local_reply("bad_request");
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\nconnection: close\r\n\r\nbad request\n")
                .await;
        }
        Detected::Tcp | Detected::Mqtt => {
            listener.metrics.accepted_tcp.inc();
            Box::pin(tcp::relay(stream, buffer, client, &shared, &table, &listener)).await;
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
