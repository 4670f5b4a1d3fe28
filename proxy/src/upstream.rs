//! Opening upstream connections: TCP, then TLS when the cluster asks for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::ConnectError;
use crate::io::UpstreamStream;
use crate::route::EndpointState;
use crate::stream::UpstreamIo;

/// Connects to an endpoint within `timeout` (TCP and TLS handshakes
/// together), with Nagle off (requests and responses are written whole;
/// delaying them only adds latency).
///
/// The cluster's `max_connections` and `max_pending_requests` apply here: the
/// caller is a request waiting for this connection.
pub async fn connect(endpoint: &Arc<EndpointState>, timeout: Duration) -> Result<UpstreamStream, ConnectError> {
    let cluster = &endpoint.cluster_state;
    cluster.admit_connect().map_err(ConnectError::Overloaded)?;
    let result = tokio::time::timeout(timeout, open(endpoint)).await.unwrap_or(Err(ConnectError::Timeout));
    cluster.connect_done();
    match result {
        Ok(io) => Ok(UpstreamStream::new(io, endpoint.clone())),
        Err(error) => {
            endpoint.metrics.connect_error(error.reason());
            tracing::debug!(cluster = %endpoint.cluster, endpoint = %endpoint.addr, %error, "upstream connect failed");
            Err(error)
        }
    }
}

/// A TCP connection to `addr`, its socket marked with `mark` (`SO_MARK`)
/// first unless `mark` is 0 (no mark, as the kernel sees it too).
pub async fn connect_tcp(addr: std::net::SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    if mark == 0 {
        return TcpStream::connect(addr).await;
    }
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket2::SockRef::from(&socket).set_mark(mark)?;
    socket.connect(addr).await
}

async fn open(endpoint: &EndpointState) -> Result<UpstreamIo, ConnectError> {
    let mark = endpoint.socket_mark.load(std::sync::atomic::Ordering::Relaxed);
    let stream = connect_tcp(endpoint.addr, mark).await.map_err(|error| ConnectError::from_io(&error))?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = endpoint.tls.load_full() else { return Ok(UpstreamIo::Plain(stream)) };
    let connector = tokio_rustls::TlsConnector::from(tls.tls.live.config.load_full());
    match connector.connect(tls.server_name.clone(), stream).await {
        Ok(stream) => Ok(UpstreamIo::Tls(Box::new(stream))),
        Err(error) => {
            tls.handshake_errors.inc();
            Err(ConnectError::Tls(error.to_string()))
        }
    }
}
