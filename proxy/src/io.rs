//! Stream adapters: replaying bytes read during protocol detection, and
//! counting upstream connections for as long as they are open; and reads
//! that hold no buffer while a connection is idle.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::ReadHalf;

use crate::policy::bandwidth::Throttled;

use crate::route::EndpointState;
use crate::stream::UpstreamIo;

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

        write_through_inner!(@rest);
    };
    (@rest) => {
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
    // As `()`, showing each write's result to the wrapper's `$observe` method first.
    ($observe:ident) => {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let result = Pin::new(&mut self.inner).poll_write(cx, buf);
            self.$observe(&result);
            result
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            self.$observe(&result);
            result
        }

        write_through_inner!(@rest);
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

/// An upstream connection (TCP, or TLS over TCP), counted as open (per endpoint and in its
/// cluster's `upstream_connections_active` gauge) until it is dropped.
pub struct UpstreamStream {
    inner: UpstreamIo,
    endpoint: Arc<EndpointState>,
    /// Requests started on this connection (for `max_requests_per_connection`).
    served: u32,
    /// A request was started and its exchange has not ended cleanly.
    mid_request: bool,
    /// A read saw the end of the stream or an error, or a write failed: the
    /// upstream closed its side.
    peer_closed: bool,
}

impl UpstreamStream {
    pub fn new(inner: UpstreamIo, endpoint: Arc<EndpointState>) -> Self {
        endpoint.connections.fetch_add(1, Ordering::Relaxed);
        endpoint.cluster_state.connections.fetch_add(1, Ordering::Relaxed);
        endpoint.metrics.connections_active.inc();
        endpoint.metrics.connections_total.inc();
        UpstreamStream { inner, endpoint, served: 0, mid_request: false, peer_closed: false }
    }

    pub fn io_mut(&mut self) -> &mut UpstreamIo {
        &mut self.inner
    }

    /// Counts a request started on this connection.
    pub fn start_request(&mut self) {
        self.served = self.served.saturating_add(1);
        self.mid_request = true;
    }

    /// The exchange ended cleanly (the response was read to its end, even
    /// when the end was the upstream closing): dropping the connection now
    /// cuts no request.
    pub fn finish_request(&mut self) {
        self.mid_request = false;
    }

    fn saw_write(&mut self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Err(_))) {
            self.peer_closed = true;
        }
    }

    /// Whether the cluster lets this connection serve another request.
    pub fn may_serve_more(&self) -> bool {
        self.endpoint.cluster_state.connection_reusable(self.served)
    }
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        if self.mid_request {
            self.endpoint.metrics.closed_mid_request(self.peer_closed);
        }
        self.endpoint.connections.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.cluster_state.connections.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.metrics.connections_active.dec();
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if room > 0 && buf.filled().len() == before => self.peer_closed = true,
            Poll::Ready(Err(_)) => self.peer_closed = true,
            _ => {}
        }
        result
    }
}

impl AsyncWrite for UpstreamStream {
    write_through_inner!(saw_write);
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

    fn count_written(&self, result: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = result {
            self.tx.inc_by(*n as u64);
        }
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
    write_through_inner!(count_written);
}

/// Writes all of `bytes` and flushes. Over TLS a write can leave records in
/// rustls's buffer when the socket is full; only a flush is sure to push
/// them out, and a relay that goes back to reading would otherwise strand
/// them. On plain TCP the flush costs nothing.
pub async fn write_out<W: AsyncWrite + Unpin + ?Sized>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// A read side that can wait for bytes without a buffer to read them into.
pub trait WaitReadable {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>>;
}

impl WaitReadable for ReadHalf<'_> {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> {
        ReadHalf::readable(self)
    }
}

impl<S: WaitReadable> WaitReadable for Throttled<S> {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> {
        self.get_ref().readable()
    }
}

/// How much one read asks for: little for the small messages most
/// connections carry, doubling while reads fill what they were offered
/// (bulk transfers), halving again when they use a fraction of it.
#[derive(Clone, Copy, Debug)]
pub struct ReadSize {
    current: usize,
    min: usize,
    max: usize,
}

impl ReadSize {
    pub fn new(min: usize, max: usize) -> Self {
        ReadSize { current: min, min, max }
    }

    pub fn current(&self) -> usize {
        self.current
    }

    fn after(&mut self, read: usize, offered: usize) {
        if read >= offered && self.current < self.max {
            self.current *= 2;
        } else if read < self.current / 4 && self.current > self.min {
            self.current /= 2;
        }
    }
}

/// Waits until `reader` has bytes, then reads them into `buf`. An empty
/// `buf` goes back to the worker's buffer pool first and one is taken only
/// once bytes are there, grown to the size the traffic has shown: an idle connection holds no read buffer, and
/// small messages never cost large short-lived buffers that fragment the
/// heap between long-lived connection state (a few KiB per connection matter
/// with 10,000 idle clients on a small box).
pub async fn read_when_ready<R>(reader: &mut R, buf: &mut BytesMut, size: &mut ReadSize) -> io::Result<usize>
where
    R: AsyncRead + WaitReadable + Unpin,
{
    if buf.is_empty() {
        // Back to the worker's pool while waiting; a busy connection gets
        // one straight back, so steady traffic allocates nothing.
        crate::buffers::recycle_bytes(std::mem::take(buf));
        reader.readable().await?;
        *buf = crate::buffers::bytes();
    }
    buf.reserve(size.current);
    let offered = buf.capacity() - buf.len();
    let read = reader.read_buf(buf).await?;
    size.after(read, offered);
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::ReadSize;

    #[test]
    fn read_size_follows_the_traffic() {
        let mut size = ReadSize::new(512, 64 * 1024);
        // Full reads: bulk traffic, up to the maximum.
        for _ in 0..20 {
            let offered = size.current();
            size.after(offered, offered);
        }
        assert_eq!(size.current(), 64 * 1024);
        // Small reads (pings, small messages): back down to the minimum.
        for _ in 0..20 {
            size.after(2, size.current());
        }
        assert_eq!(size.current(), 512);
    }
}
