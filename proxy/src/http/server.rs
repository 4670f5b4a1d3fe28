//! Serving client connections with hyper (HTTP/2, and HTTP/1 when the fast
//! path hands a connection over).

use std::future::Future;
use std::pin::Pin;
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
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_header_size(settings.max_header_bytes)
        .max_headers(settings.max_headers)
        .max_buf_size(settings.max_header_bytes.max(MIN_BUF) * 2);
    let connection =
        builder.serve_connection(TokioIo::new(io), service_fn(|request| handle(request, conn.clone()))).with_upgrades();
    // On drain: `Connection: close` after the request in flight; idle
    // connections close at once.
    serve_until_drained(connection, &conn, "HTTP/1", |c| c.graceful_shutdown()).await;
}

pub async fn serve_http2<I>(io: I, conn: Arc<ConnContext>, settings: &HttpSettings)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .adaptive_window(true);
    let connection = builder.serve_connection(TokioIo::new(io), service_fn(|request| handle(request, conn.clone())));
    // On drain: GOAWAY; streams in flight finish, new ones go elsewhere.
    serve_until_drained(connection, &conn, "HTTP/2", |c| c.graceful_shutdown()).await;
}

/// Drives a hyper connection to its end, starting its graceful shutdown when
/// the proxy begins to drain.
async fn serve_until_drained<C, E>(
    connection: C,
    conn: &ConnContext,
    protocol: &str,
    shutdown: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut drain = conn.shared.lifecycle.drain_signal();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = draining(&mut drain) => {
            shutdown(connection.as_mut());
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(client = %conn.client, %error, "{protocol} connection ended with an error");
    }
}
