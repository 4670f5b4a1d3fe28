//! Errors of the request path and the one place where they become responses.
//!
//! Each stage has a small error type; [`ProxyError`] gathers them and
//! [`ProxyError::reply`] decides the status, body and metric label, so HTTP/1
//! (both paths) and HTTP/2 answer a failure the same way.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::policy::request_limit::RequestLimiter;
use crate::policy::Overload;
use crate::route::BreakerPolicy;

/// Names the cluster limit that refused a request.
pub static OVERLOADED: HeaderName = HeaderName::from_static("x-edgeplane-overloaded");

/// Why an upstream connection could not be made.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error("connection refused")]
    Refused,
    #[error("connect failed: {0}")]
    Io(io::ErrorKind),
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// A cluster limit refused the attempt before it was made.
    #[error("cluster {} reached", .0.as_str())]
    Overloaded(Overload),
}

impl ConnectError {
    pub fn from_io(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            io::ErrorKind::TimedOut => ConnectError::Timeout,
            kind => ConnectError::Io(kind),
        }
    }

    /// Label for `edgeplane_upstream_connect_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Timeout => "timeout",
            ConnectError::Refused => "refused",
            ConnectError::Io(_) => "error",
            ConnectError::Handshake(_) => "handshake",
            ConnectError::Tls(_) => "tls",
            ConnectError::Overloaded(_) => "overloaded",
        }
    }
}

/// Everything that ends a request without an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matched")]
    NoRoute,
    #[error("no endpoint available in cluster")]
    NoEndpoint,
    #[error("upstream connect: {0}")]
    Connect(#[from] ConnectError),
    #[error("upstream response timed out")]
    UpstreamTimeout,
    #[error("upstream failed: {0}")]
    Upstream(String),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("request head not received in time")]
    RequestTimeout,
    #[error("listener no longer configured")]
    ListenerGone,
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    #[error("cluster {} reached", .0.as_str())]
    Overloaded(Overload),
    #[error("upstream refused the stream")]
    RefusedStream,
    #[error("circuit breaker open")]
    Degraded(Arc<BreakerPolicy>),
    #[error("rate limited")]
    RateLimited(Arc<RequestLimiter>, Duration),
    /// Access control refused the peer's identity (or its lack of one).
    #[error("access denied")]
    Forbidden,
    #[error("token refused: {0}")]
    Unauthorized(crate::policy::jwt::JwtError),
}

/// A response made by the proxy itself.
pub struct LocalReply {
    pub status: StatusCode,
    pub body: Bytes,
    /// Headers beyond `content-type` and framing; empty for most replies.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Metric label (`edgeplane_http_local_replies_total{reason}`).
    pub reason: &'static str,
    /// Whether the client connection must be closed after the reply.
    pub close: bool,
}

impl ProxyError {
    /// Classifies a failed upstream exchange. hyper reports a broken client
    /// request body (bad chunking, client gone) as a "user" error: that is
    /// the client's fault, not the upstream's.
    pub fn from_exchange(error: &hyper::Error) -> Self {
        if error.is_user() {
            return ProxyError::BadRequest("invalid request body");
        }
        let refused = std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<h2::Error>())
            .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        if refused {
            ProxyError::RefusedStream
        } else {
            ProxyError::Upstream(error.to_string())
        }
    }

    pub fn reply(&self) -> LocalReply {
        match self {
            ProxyError::Overloaded(limit) | ProxyError::Connect(ConnectError::Overloaded(limit)) => {
                return LocalReply {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    body: Bytes::from_static(b"upstream overloaded\n"),
                    headers: vec![(OVERLOADED.clone(), HeaderValue::from_static(limit.as_str()))],
                    reason: "overloaded",
                    close: false,
                };
            }
            ProxyError::Degraded(policy) => {
                return LocalReply {
                    status: policy.status,
                    body: policy.body.clone(),
                    headers: Vec::new(),
                    reason: "degraded",
                    close: false,
                };
            }
            ProxyError::RateLimited(limiter, retry_after) => return limiter.reply(*retry_after),
            ProxyError::Unauthorized(why) => {
                return LocalReply {
                    status: StatusCode::UNAUTHORIZED,
                    body: Bytes::from_static(b"unauthorized\n"),
                    headers: vec![(http::header::WWW_AUTHENTICATE, why.www_authenticate())],
                    reason: "unauthorized",
                    close: false,
                };
            }
            _ => {}
        }
        let (status, body, reason, close) = match self {
            ProxyError::NoRoute => (StatusCode::NOT_FOUND, "no route\n", "no_route", false),
            ProxyError::NoEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n", "no_endpoint", false),
            ProxyError::Connect(ConnectError::Timeout) => {
                (StatusCode::BAD_GATEWAY, "upstream connect timeout\n", "connect_timeout", false)
            }
            ProxyError::Connect(_) => (StatusCode::BAD_GATEWAY, "upstream connect error\n", "connect_error", false),
            ProxyError::UpstreamTimeout => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n", "upstream_timeout", false)
            }
            ProxyError::Upstream(_) => {
                (StatusCode::BAD_GATEWAY, "upstream connection failed\n", "upstream_error", false)
            }
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad request\n", "bad_request", true),
            ProxyError::HeadersTooLarge => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large\n", "headers_too_large", true)
            }
            ProxyError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request timeout\n", "request_timeout", true),
            ProxyError::ListenerGone => (StatusCode::SERVICE_UNAVAILABLE, "listener removed\n", "listener_gone", true),
            ProxyError::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "not supported\n", "unsupported", false),
            ProxyError::Forbidden => (StatusCode::FORBIDDEN, "access denied\n", "forbidden", false),
            ProxyError::RefusedStream => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream refused the stream\n", "upstream_error", false)
            }
            // Answered above, with their own status, body and headers.
            ProxyError::Overloaded(_)
            | ProxyError::Degraded(_)
            | ProxyError::RateLimited(..)
            | ProxyError::Unauthorized(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable\n", "overloaded", false),
        };
        LocalReply { status, body: Bytes::from_static(body.as_bytes()), headers: Vec::new(), reason, close }
    }
}
