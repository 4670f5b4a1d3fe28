//! osm-edge's probe proxies. The injector points the app's probes at the
//! sidecar (liveness `:15901`, readiness `:15902`, startup `:15903`, TCP
//! probes `:15904`) because the inbound listener would refuse the kubelet:
//! it has no mesh identity. Where each probe goes comes from the live
//! PipyConf (`config_model::pipy::Probes`), read once per connection.
//!
//! These run on the control thread's runtime, not the workers: a probe every
//! few seconds needs no data-path machinery, and a busy data path must not
//! make the pod look dead.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use config_model::pipy::ProbeTarget;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::admin::text;
use crate::state::Shared;

/// How long a probe may wait to connect to the app: on loopback a connect
/// is answered at once, so this only bounds a wedged app.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for an HTTP probe's response; the kubelet's own
/// `timeoutSeconds` is normally much shorter and ends the connection first.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// The header the injector puts on TCP (and HTTPS) probes.
const ORIGINAL_TCP_PORT: &str = "original-tcp-port";
/// The probe ports are open to the pod's network, not just the kubelet: a
/// bound on the connections each holds, on the wait for a request head and
/// on a relayed connection's life keeps a flood from piling up tasks. The
/// kubelet opens one connection per probe and closes it.
const MAX_CONNECTIONS: usize = 64;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const RELAY_LIMIT: Duration = Duration::from_secs(60);

/// Which of osm-edge's probe ports a listener is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbePort {
    Liveness,
    Readiness,
    Startup,
    /// `:15904`: the TCP health check, always by `Original-Tcp-Port`.
    HealthCheck,
}

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, port: ProbePort) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            reset(stream);
            continue;
        };
        let target = {
            let probes = shared.osm_probes.load();
            match port {
                ProbePort::Liveness => probes.liveness.clone(),
                ProbePort::Readiness => probes.readiness.clone(),
                ProbePort::Startup => probes.startup.clone(),
                ProbePort::HealthCheck => ProbeTarget::HealthCheck,
            }
        };
        tokio::spawn(async move {
            handle(stream, target).await;
            drop(slot);
        });
    }
}

fn http1() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT);
    builder
}

async fn handle(stream: TcpStream, target: ProbeTarget) {
    match target {
        ProbeTarget::Refuse => reset(stream),
        ProbeTarget::Tcp { target } => relay(stream, target).await,
        ProbeTarget::Http { target, path } => {
            // Origin form only (`/path?query`): never a scheme or an authority.
            let path: Option<Uri> =
                path.parse().ok().filter(|uri: &Uri| uri.scheme().is_none() && uri.authority().is_none());
            let service = service_fn(move |request| {
                let path = path.clone();
                async move { Ok::<_, Infallible>(forward(request, target, path).await) }
            });
            let _ = http1().serve_connection(TokioIo::new(stream), service).await;
        }
        ProbeTarget::HealthCheck => {
            let service = service_fn(|request| async move { Ok::<_, Infallible>(health_check(&request).await) });
            let _ = http1().serve_connection(TokioIo::new(stream), service).await;
        }
    }
}

/// Closes with a reset, so the probe fails at once rather than on a timeout.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

/// A TCP (or HTTPS) probe without a health-check header: the app's port,
/// byte for byte. A port nobody listens on resets the probe's connection.
async fn relay(mut stream: TcpStream, target: SocketAddr) {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(mut app)) => {
            let _ = tokio::time::timeout(RELAY_LIMIT, tokio::io::copy_bidirectional(&mut stream, &mut app)).await;
        }
        _ => reset(stream),
    }
}

/// An HTTP probe: the kubelet's request, its path replaced by the app's
/// probe path, to the app's port on loopback.
async fn forward(
    mut request: Request<Incoming>,
    target: SocketAddr,
    path: Option<Uri>,
) -> Response<Either<Incoming, Full<Bytes>>> {
    let failed = |status, message: String| text(status, message).map(Either::Right);
    let Some(path) = path else {
        return failed(StatusCode::BAD_GATEWAY, "the probe's Original-Http-Path is not a path".into());
    };
    *request.uri_mut() = path;
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return failed(StatusCode::BAD_GATEWAY, format!("cannot connect to {target}: {error}")),
        Err(_) => return failed(StatusCode::GATEWAY_TIMEOUT, format!("no connection to {target} in time")),
    };
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(handshake) => handshake,
        Err(error) => return failed(StatusCode::BAD_GATEWAY, format!("{target}: {error}")),
    };
    tokio::spawn(connection);
    match tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(request)).await {
        Ok(Ok(response)) => response.map(Either::Left),
        Ok(Err(error)) => failed(StatusCode::BAD_GATEWAY, format!("{target}: {error}")),
        Err(_) => failed(StatusCode::GATEWAY_TIMEOUT, format!("{target} did not answer in time")),
    }
}

/// osm-edge's `osm-healthcheck`: whether something accepts TCP connections
/// on loopback at the port the request's `Original-Tcp-Port` names (200),
/// or not (404); a request without the header is a 400. Like osm-healthcheck
/// it answers any caller: it only tells open ports from closed ones.
async fn health_check(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let port = request.headers().get(ORIGINAL_TCP_PORT).map(|v| v.to_str().map(|s| s.trim().parse::<u16>()));
    let port = match port {
        None => return text(StatusCode::BAD_REQUEST, "Header Original-Tcp-Port not found in request"),
        Some(Ok(Ok(port))) if port != 0 => port,
        Some(_) => return text(StatusCode::BAD_REQUEST, "Header Original-Tcp-Port is not a port number"),
    };
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(_)) => text(StatusCode::OK, format!("Successfully established connection to {address}")),
        _ => text(StatusCode::NOT_FOUND, format!("Failed to establish connection to {address}")),
    }
}
