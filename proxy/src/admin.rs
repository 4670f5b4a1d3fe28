//! The admin server: readiness, liveness, metrics, config and cluster dumps,
//! and loopback-only controls (drain, quit, reload).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::app::Control;
use crate::policy::breaker::BreakerState;
use crate::policy::outlier::{EJECTED, HEALTH_CHECK_FAILED};
use crate::state::{Shared, SourceInfo};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, control: mpsc::UnboundedSender<Control>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let control = control.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, peer, &shared, &control);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
    control: &mpsc::UnboundedSender<Control>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let method = request.method();
    let post_only = matches!(path, "/drain" | "/quitquitquit" | "/reload");
    if post_only {
        if method != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        }
        // The admin API has no authentication; mutating calls must come
        // from this host.
        if !peer.ip().is_loopback() {
            return text(StatusCode::FORBIDDEN, "only loopback callers may do this\n");
        }
        let command = match path {
            "/drain" => Control::Drain,
            "/quitquitquit" => Control::Shutdown,
            _ => Control::Reload(None),
        };
        let _ = control.send(command);
        return text(StatusCode::OK, "OK\n");
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match path {
        "/ready" => {
            if shared.lifecycle.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if shared.lifecycle.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/metrics" | "/stats/prometheus" => {
            let mut response = Response::new(Full::new(Bytes::from(shared.metrics.encode())));
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(OPENMETRICS));
            response
        }
        "/config" => {
            let table = shared.table.load();
            json_response(&*table.config)
        }
        "/config/source" => json_response(&config_source(shared)),
        "/clusters" => json_response(&clusters(shared)),
        "/certs" => json_response(&certs(shared)),
        "/" => text(
            StatusCode::OK,
            "GET  /ready /live /metrics /config /config/source /clusters /certs\nPOST /drain /quitquitquit /reload (loopback only)\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Where the live config came from and, with a control plane, how the
/// client stands (live version, last rejection, last fetch error).
fn config_source(shared: &Shared) -> serde_json::Value {
    let table = shared.table.load();
    let mut source = match &shared.source {
        SourceInfo::File(path) => json!({ "kind": "file", "path": path.display().to_string() }),
        SourceInfo::ControlPlane(sync) => {
            let mut state = serde_json::to_value(sync.state()).unwrap_or_default();
            state["kind"] = json!("control_plane");
            state
        }
    };
    source["generation"] = json!(table.generation);
    source["config_hash"] = json!(format!("{:016x}", table.config_hash));
    source["config_version"] = json!(table.config.version);
    source
}

/// Every certificate in use: where, its names and how long it has left.
pub(crate) fn certs(shared: &Shared) -> serde_json::Value {
    let now = crate::tls::certs::unix_now();
    let certificates: Vec<_> = crate::tls::watch::certificates(shared)
        .into_iter()
        .map(|info| {
            serde_json::json!({
                "used_by": info.used_by,
                "source": info.source,
                "subject": info.subject,
                "names": info.names,
                "serial": info.serial,
                "not_before": crate::tls::certs::rfc3339(info.not_before),
                "not_after": crate::tls::certs::rfc3339(info.not_after),
                "seconds_left": info.seconds_left(now),
            })
        })
        .collect();
    serde_json::json!({ "certificates": certificates })
}

fn clusters(shared: &Shared) -> serde_json::Value {
    let table = shared.table.load();
    let now = tokio::time::Instant::now();
    let clusters: Vec<_> = table
        .clusters
        .iter()
        .map(|cluster| {
            let priorities: std::collections::HashMap<u32, u32> = cluster
                .levels
                .iter()
                .flat_map(|level| level.members.iter().map(move |member| (*member, level.priority)))
                .collect();
            let endpoints: Vec<_> = cluster
                .endpoints
                .iter()
                .zip(cluster.weights.iter())
                .enumerate()
                .map(|(index, (endpoint, weight))| {
                    let flags = endpoint.health.flags();
                    let state = if flags & EJECTED != 0 {
                        "ejected"
                    } else if flags & HEALTH_CHECK_FAILED != 0 {
                        "unhealthy"
                    } else {
                        "active"
                    };
                    json!({
                        "address": endpoint.addr.to_string(),
                        "weight": weight,
                        "priority": priorities.get(&(index as u32)).copied().unwrap_or(0),
                        "state": state,
                        "health_check": if cluster.health_check.is_none() {
                            "none"
                        } else if flags & HEALTH_CHECK_FAILED != 0 {
                            "failing"
                        } else {
                            "passing"
                        },
                        "times_ejected": endpoint.health.times_ejected(),
                        "active_requests": endpoint.active_requests.load(Ordering::Relaxed),
                        "connections": endpoint.connections.load(Ordering::Relaxed),
                        "idle_connections": endpoint.idle.load(Ordering::Relaxed),
                    })
                })
                .collect();
            let breaker = cluster.breaker.as_ref().map(|policy| {
                let state = match policy.breaker.state(now) {
                    BreakerState::Closed => "closed",
                    BreakerState::Open => "open",
                    BreakerState::HalfOpen => "half_open",
                };
                json!({ "state": state, "opened_total": policy.breaker.opened_total() })
            });
            let load = &cluster.state;
            json!({
                "name": &*cluster.name,
                "protocol": cluster.protocol,
                "lb": cluster.lb,
                "active_requests": load.requests.load(Ordering::Relaxed),
                "pending_requests": load.pending.load(Ordering::Relaxed),
                "active_retries": load.retries.load(Ordering::Relaxed),
                "connections": load.connections.load(Ordering::Relaxed),
                "breaker": breaker,
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({ "generation": table.generation, "clusters": clusters })
}

pub(crate) fn json_response<T: serde::Serialize + ?Sized>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    response
}
