//! Errors of the request path and the one place where they become responses.
//!
//! Each stage has a small error type; [`ProxyError`] gathers them and
//! [`ProxyError::reply`] decides the status, body and metric label, so HTTP/1
//! (both paths) and HTTP/2 answer a failure the same way.

use std::io;

use http::StatusCode;

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
}

/// A response made by the proxy itself.
pub struct LocalReply {
    pub status: StatusCode,
    pub body: &'static str,
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
            ProxyError::BadRequest("invalid request body")
        } else {
            ProxyError::Upstream(error.to_string())
        }
    }

    pub fn reply(&self) -> LocalReply {
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
        };
        LocalReply { status, body, reason, close }
    }
}
