//! Serving client connections with hyper (HTTP/2, and HTTP/1 when the fast
//! path hands a connection over).

use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::forward::{handle, ConnContext};
use crate::route::HttpSettings;
use crate::state::draining;

/// hyper refuses buffers below this size.
const MIN_BUF: usize = 8192;

pub async fn serve_http1<I>(io: I, conn: Arc<ConnContext>, settings: &HttpSettings)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut drain = conn.shared.lifecycle.drain_signal();
    let service = {
        let conn = conn.clone();
        service_fn(move |request| handle(request, conn.clone()))
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_header_size(settings.max_header_bytes)
        .max_headers(settings.max_headers)
        .max_buf_size(settings.max_header_bytes.max(MIN_BUF) * 2);
    let connection = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = draining(&mut drain) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(client = %conn.client, %error, "HTTP/1 connection ended with an error");
    }
}

pub async fn serve_http2<I>(io: I, conn: Arc<ConnContext>, settings: &HttpSettings)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut drain = conn.shared.lifecycle.drain_signal();
    let service = {
        let conn = conn.clone();
        service_fn(move |request| handle(request, conn.clone()))
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .adaptive_window(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = draining(&mut drain) => {
            // GOAWAY: in-flight streams finish, new ones go elsewhere.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(client = %conn.client, %error, "HTTP/2 connection ended with an error");
    }
}
