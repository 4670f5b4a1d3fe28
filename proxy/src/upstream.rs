//! Opening upstream TCP connections.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::ConnectError;
use crate::io::UpstreamStream;
use crate::route::EndpointState;

/// Connects to an endpoint within `timeout`, with Nagle off (requests and
/// responses are written whole; delaying them only adds latency).
///
/// The cluster's `max_connections` and `max_pending_requests` apply here: the
/// caller is a request waiting for this connection.
pub async fn connect(endpoint: &Arc<EndpointState>, timeout: Duration) -> Result<UpstreamStream, ConnectError> {
    let cluster = &endpoint.cluster_state;
    cluster.admit_connect().map_err(ConnectError::Overloaded)?;
    let result = match tokio::time::timeout(timeout, TcpStream::connect(endpoint.addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(ConnectError::from_io(&error)),
        Err(_) => Err(ConnectError::Timeout),
    };
    cluster.connect_done();
    match result {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            Ok(UpstreamStream::new(stream, endpoint.clone()))
        }
        Err(error) => {
            endpoint.metrics.connect_error(error.reason());
            tracing::debug!(cluster = %endpoint.cluster, endpoint = %endpoint.addr, %error, "upstream connect failed");
            Err(error)
        }
    }
}
