//! Stream adapters: replaying bytes read during protocol detection, and
//! counting upstream connections for as long as they are open.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::route::EndpointState;

/// `AsyncWrite` for a wrapper whose writes go straight to its `inner` stream
/// (vectored writes included: hyper relies on them).
macro_rules! write_through_inner {
    () => {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    };
}

/// A stream whose first bytes were already read (by protocol detection); reads
/// return those bytes first.
pub struct PrefixedIo<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> PrefixedIo<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        PrefixedIo { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<S> {
    write_through_inner!();
}

/// An upstream TCP connection, counted as open (per endpoint and in its
/// cluster's `upstream_connections_active` gauge) until it is dropped.
pub struct UpstreamStream {
    inner: TcpStream,
    endpoint: Arc<EndpointState>,
    /// Requests started on this connection (for `max_requests_per_connection`).
    served: u32,
}

impl UpstreamStream {
    pub fn new(inner: TcpStream, endpoint: Arc<EndpointState>) -> Self {
        endpoint.connections.fetch_add(1, Ordering::Relaxed);
        endpoint.cluster_state.connections.fetch_add(1, Ordering::Relaxed);
        endpoint.metrics.connections_active.inc();
        endpoint.metrics.connections_total.inc();
        UpstreamStream { inner, endpoint, served: 0 }
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.inner
    }

    /// Counts a request started on this connection.
    pub fn start_request(&mut self) {
        self.served = self.served.saturating_add(1);
    }

    /// Whether the cluster lets this connection serve another request.
    pub fn may_serve_more(&self) -> bool {
        self.endpoint.cluster_state.connection_reusable(self.served)
    }
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        self.endpoint.connections.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.cluster_state.connections.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.metrics.connections_active.dec();
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamStream {
    write_through_inner!();
}

/// Counts the bytes read from and written to a client connection into the
/// listener's `downstream_bytes` counters.
pub struct Metered<S> {
    inner: S,
    rx: Counter,
    tx: Counter,
}

impl<S> Metered<S> {
    pub fn new(inner: S, rx: Counter, tx: Counter) -> Self {
        Metered { inner, rx, tx }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.rx.inc_by(read as u64);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.tx.inc_by(n as u64);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.tx.inc_by(n as u64);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
