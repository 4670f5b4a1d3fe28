//! HTTP/1.1 keep-alive pool of hyper client connections.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::idle::{IdleStack, Reusable};
use super::POOLS;
use crate::error::ProxyError;
use crate::http::body::ProxyBody;
use crate::route::{EndpointState, PoolSettings};
use crate::upstream;

type Sender = http1::SendRequest<ProxyBody>;

pub type EndpointPool = IdleStack<Sender>;

impl Reusable for Sender {
    fn is_reusable(&mut self) -> bool {
        !self.is_closed()
    }
}

/// A connection lent to one request; back to the pool when dropped.
pub struct Lease {
    sender: Option<Sender>,
    endpoint: Arc<EndpointState>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else { return };
        // A connection whose response was abandoned mid-body is closed by
        // hyper; one that is merely still finishing is checked with `ready()`
        // at the next checkout.
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        // The thread-local may be gone while the worker thread shuts down.
        let _ = POOLS.try_with(|pools| pools.borrow_mut().http1(self.endpoint.id).put(sender, now));
    }
}

pub async fn send(
    endpoint: &Arc<EndpointState>,
    settings: &PoolSettings,
    connect_timeout: Duration,
    mut request: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Lease), ProxyError> {
    loop {
        let pooled = POOLS.with_borrow_mut(|pools| {
            let pool = pools.http1(endpoint.id);
            pool.configure(endpoint, settings);
            pool.take(Instant::now())
        });
        let Some(mut sender) = pooled else { break };
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, lease(sender, endpoint))),
            // The connection died before the request was written (the
            // upstream closed it while idle): safe to try another.
            Err(mut error) => match error.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(ProxyError::from_exchange(&error.into_error())),
            },
        }
    }

    let mut sender = connect(endpoint, connect_timeout, false).await?;
    match sender.send_request(request).await {
        Ok(response) => Ok((response, lease(sender, endpoint))),
        Err(error) => Err(ProxyError::from_exchange(&error)),
    }
}

fn lease(sender: Sender, endpoint: &Arc<EndpointState>) -> Lease {
    Lease { sender: Some(sender), endpoint: endpoint.clone() }
}

async fn connect(endpoint: &Arc<EndpointState>, timeout: Duration, upgrades: bool) -> Result<Sender, ProxyError> {
    let stream = upstream::connect(endpoint, timeout).await?;
    let (sender, connection) =
        http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|e| ProxyError::Upstream(e.to_string()))?;
    tokio::spawn(async move {
        let result = if upgrades { connection.with_upgrades().await } else { connection.await };
        if let Err(error) = result {
            tracing::debug!(%error, "upstream HTTP/1 connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends an upgrade request (WebSocket) on a connection of its own: after a
/// `101` the connection belongs to the tunnel and never returns to the pool.
pub async fn send_upgrade(
    endpoint: &Arc<EndpointState>,
    connect_timeout: Duration,
    request: Request<ProxyBody>,
) -> Result<Response<Incoming>, ProxyError> {
    let mut sender = connect(endpoint, connect_timeout, true).await?;
    sender.send_request(request).await.map_err(|e| ProxyError::from_exchange(&e))
}
