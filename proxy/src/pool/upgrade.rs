//! Connections for protocol upgrades (WebSocket): each gets a connection of
//! its own, driven by hyper, which after a `101` belongs to the tunnel and
//! never returns to a pool.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::error::ProxyError;
use crate::http::body::ProxyBody;
use crate::route::EndpointState;
use crate::upstream;

pub async fn send_upgrade(
    endpoint: &Arc<EndpointState>,
    connect_timeout: Duration,
    request: Request<ProxyBody>,
) -> Result<Response<Incoming>, ProxyError> {
    let stream = upstream::connect(endpoint, connect_timeout).await?;
    let (mut sender, connection) =
        http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|e| ProxyError::Upstream(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upgraded upstream connection ended with an error");
        }
    });
    sender.send_request(request).await.map_err(|e| ProxyError::from_exchange(&e))
}
