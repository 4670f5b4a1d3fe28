//! Listening sockets and the first steps of every connection: accept,
//! detect the protocol, hand over to the protocol's handler.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use config_model::{ListenerProtocol, Unmatched};
use http::Version;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::detect::{detect, Detected};
use crate::http::forward::ConnContext;
use crate::http::h1;
use crate::http::server::{serve_http1, serve_http2};
use crate::io::{Metered, PrefixedIo};
use crate::mqtt;
use crate::policy::throttle::BandwidthLimits;
use crate::route::{ListenerTable, RouteTable};
use crate::state::Shared;
use crate::stream::ClientStream;
use crate::tcp;
use crate::tls::server::ServerTls;
use crate::tls::{ConnFacts, PeerIdentity};

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
async fn handle_connection(stream: TcpStream, client: SocketAddr, slot: usize, shared: Arc<Shared>) {
    let _connection = shared.connections.open();
    let table = shared.table.load_full();
    let Some(listener) = table.listener(slot).cloned() else { return };
    if let Some(limit) = &listener.connection_rate_limit {
        if !limit.admit() {
            // Over the rate: close at once, before reading anything.
            listener.metrics.local_reply("rate_limited");
            return;
        }
    }
    listener.metrics.active.inc();
    let _active = scopeguard(|| {
        listener.metrics.active.dec();
    });

    let mut facts = ConnFacts::default();
    if listener.routes_by_source {
        facts.source = Some(client.ip());
    }
    if let Some(transparent) = &listener.transparent {
        let destination = match crate::transparent::original_destination(&stream) {
            Ok(destination) => destination,
            Err(error) => {
                listener.metrics.local_reply("no_route");
                tracing::debug!(listener = %listener.name, %client, %error, "closing a connection on a transparent listener");
                return;
            }
        };
        if !listener.may_route(destination, client.ip()) {
            match transparent.unmatched {
                Unmatched::Passthrough => {
                    listener.metrics.accepted_unmatched.inc();
                    let relay = tcp::pass_through(stream, destination, client, transparent, &shared, &table, &listener);
                    Box::pin(relay).await;
                }
                Unmatched::Refuse => {
                    listener.metrics.local_reply("no_route");
                    tracing::debug!(listener = %listener.name, %client, %destination, "no route for the original destination; refused");
                }
            }
            return;
        }
        facts.destination = Some(destination);
    }
    if listener.passthrough {
        Box::pin(passthrough(stream, client, facts, &shared, &table, &listener)).await;
        return;
    }
    let mut negotiated = None;
    let mut stream = match &listener.tls {
        None => ClientStream::Plain(stream),
        // Boxed, like the handlers: a plaintext connection's task must not
        // carry the size of a handshake in progress.
        Some(tls) => match Box::pin(accept_tls(stream, client, tls, &listener)).await {
            Some(Accepted::Tls(tls_stream)) => {
                let session = tls_stream.get_ref().1;
                facts.terminated = true;
                facts.sni = session.server_name().map(Box::from);
                facts.peer =
                    session.peer_certificates().and_then(|chain| chain.first()).and_then(PeerIdentity::from_der);
                negotiated = match session.alpn_protocol() {
                    Some(b"h2") => Some(Detected::Http2),
                    Some(b"http/1.1") => Some(Detected::Http1),
                    _ => None,
                };
                ClientStream::Tls(tls_stream)
            }
            Some(Accepted::Plain(tcp)) => ClientStream::Plain(tcp),
            None => return,
        },
    };

    let mut buffer = BytesMut::new();
    let detected = match (listener.protocol, negotiated) {
        (ListenerProtocol::Tcp, _) => Detected::Tcp,
        (ListenerProtocol::Mqtt, _) => Detected::Mqtt,
        (_, Some(by_alpn)) => by_alpn,
        (ListenerProtocol::Auto | ListenerProtocol::Http, _) => {
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
    // The TLS facts move into whichever handler serves the connection: a
    // plaintext connection allocates nothing for them.
    let context = |downstream, tls| Arc::new(ConnContext { shared: shared.clone(), slot, client, downstream, tls });
    match detected {
        Detected::Closed => {}
        Detected::Http1 if listener.bandwidth.is_some() => {
            // The fast path writes to the socket itself; paced connections
            // are served by hyper over a throttled stream.
            listener.metrics.accepted_http1.inc();
            let io = PrefixedIo::new(buffer, stream);
            let io = Metered::new(io, listener.metrics.bytes_rx.clone(), listener.metrics.bytes_tx.clone());
            let io = BandwidthLimits::wrap(listener.bandwidth.as_ref(), io);
            Box::pin(serve_http1(io, context(Version::HTTP_11, facts), &listener.http)).await;
        }
        Detected::Http1 => {
            listener.metrics.accepted_http1.inc();
            Box::pin(h1::serve(stream, buffer, shared.clone(), slot, client, facts)).await;
        }
        Detected::Http2 => {
            listener.metrics.accepted_http2.inc();
            let io = PrefixedIo::new(buffer, stream);
            let io = Metered::new(io, listener.metrics.bytes_rx.clone(), listener.metrics.bytes_tx.clone());
            let io = BandwidthLimits::wrap(listener.bandwidth.as_ref(), io);
            Box::pin(serve_http2(io, context(Version::HTTP_2, facts), &listener.http)).await;
        }
        Detected::Mqtt if listener.protocol != ListenerProtocol::Http => {
            listener.metrics.accepted_mqtt.inc();
            Box::pin(mqtt::serve(stream, &facts, buffer, client, &shared, &table, &listener)).await;
        }
        Detected::Tcp | Detected::Mqtt if listener.protocol == ListenerProtocol::Http => {
            listener.metrics.local_reply("bad_request");
            let _ = crate::io::write_out(
                &mut stream,
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\nconnection: close\r\n\r\nbad request\n",
            )
            .await;
        }
        Detected::Tcp | Detected::Mqtt => {
            listener.metrics.accepted_tcp.inc();
            Box::pin(tcp::relay(stream, &facts, buffer, client, &shared, &table, &listener)).await;
        }
    }
}

enum Accepted {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A plaintext client from a range allowed to skip TLS (mixed mode).
    Plain(TcpStream),
}

/// The TLS handshake (or, in mixed mode, the decision that there is none).
/// Failures are counted by reason and logged; `None` closes the connection.
async fn accept_tls(tcp: TcpStream, client: SocketAddr, tls: &ServerTls, listener: &ListenerTable) -> Option<Accepted> {
    let results = &listener.metrics.tls_handshakes;
    let deadline = tokio::time::Instant::now() + tls.handshake_timeout;
    if tls.accepts_plaintext_from(client.ip()) {
        // A TLS client speaks first with a handshake record (0x16).
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == 0x16 => {}
            Ok(Ok(1)) => {
                results.inc("plaintext");
                return Some(Accepted::Plain(tcp));
            }
            // Silent (a server-first protocol) or closed: plaintext rules apply.
            Err(_) | Ok(Ok(_)) => {
                results.inc("plaintext");
                return Some(Accepted::Plain(tcp));
            }
            Ok(Err(_)) => return None,
        }
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.live.config.load_full());
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            results.inc("ok");
            Some(Accepted::Tls(Box::new(stream)))
        }
        Ok(Err(error)) => {
            let reason = crate::tls::handshake_failure_reason(&error);
            results.inc(reason);
            if matches!(reason, "closed" | "io_error") {
                tracing::debug!(listener = %listener.name, %client, %error, "TLS handshake failed");
            } else {
                tracing::info!(listener = %listener.name, %client, reason, %error, "TLS handshake failed");
            }
            None
        }
        Err(_) => {
            results.inc("timeout");
            tracing::debug!(listener = %listener.name, %client, "TLS handshake timed out");
            None
        }
    }
}

/// TLS passthrough: read the ClientHello (without decrypting anything), route
/// on its server name, relay the bytes as they are.
async fn passthrough(
    mut tcp: TcpStream,
    client: SocketAddr,
    mut facts: ConnFacts,
    shared: &Shared,
    table: &RouteTable,
    listener: &ListenerTable,
) {
    use crate::tls::client_hello::{peek, Peek, MAX_PEEK};
    use tokio::io::AsyncReadExt;
    let results = &listener.metrics.tls_handshakes;
    let deadline = tokio::time::Instant::now() + listener.detect_timeout;
    let mut buffer = BytesMut::with_capacity(2048);
    let sni = loop {
        match peek(&buffer) {
            Peek::Hello(hello) => break hello.server_name.map(|name| Box::<str>::from(name.to_ascii_lowercase())),
            Peek::NotTls(why) => {
                results.inc("not_tls");
                tracing::info!(listener = %listener.name, %client, why, "not a TLS ClientHello on a passthrough listener");
                return;
            }
            // `peek` decides by MAX_PEEK bytes; more is never needed.
            Peek::Incomplete if buffer.len() >= MAX_PEEK => {
                results.inc("not_tls");
                return;
            }
            Peek::Incomplete => {}
        }
        buffer.reserve(2048.min(MAX_PEEK - buffer.len()));
        match tokio::time::timeout_at(deadline, (&mut tcp).take((MAX_PEEK - buffer.len()) as u64).read_buf(&mut buffer))
            .await
        {
            Ok(Ok(0)) => {
                results.inc("closed");
                return;
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                results.inc("io_error");
                return;
            }
            Err(_) => {
                results.inc("timeout");
                return;
            }
        }
    };
    results.inc("ok");
    listener.metrics.accepted_tcp.inc();
    facts.sni = sni;
    tcp::relay(ClientStream::Plain(tcp), &facts, buffer, client, shared, table, listener).await;
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
