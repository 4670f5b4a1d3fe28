//! Body types of the hyper path, without boxing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::http::h1::client::UpstreamBody;
use crate::pool::PoolGuard;
use crate::route::InFlight;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body passing through the proxy: a request body on its way upstream, a
/// response body from an upstream, or one the proxy made.
pub enum ProxyBody {
    /// From hyper: a client's request body, or an HTTP/2 upstream's response.
    Incoming(Incoming),
    /// Whole in memory.
    Full(Option<Bytes>),
    /// An HTTP/1 upstream's response, read from a pooled connection.
    Upstream(UpstreamBody),
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn text(text: &'static str) -> Self {
        ProxyBody::Full(Some(Bytes::from_static(text.as_bytes())))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Incoming(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(upstream) => Pin::new(upstream).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(incoming) => incoming.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream(upstream) => upstream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Incoming(incoming) => incoming.size_hint(),
            ProxyBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream(upstream) => upstream.size_hint(),
        }
    }
}

/// A response body on its way to the client. Holds the upstream connection's
/// pool lease and the endpoint's in-flight count until the body is done, so
/// the connection returns to the pool exactly when it is free again.
pub struct ResponseBody {
    inner: ProxyBody,
    lease: Option<(PoolGuard, InFlight)>,
}

impl ResponseBody {
    pub fn local(body: ProxyBody) -> Self {
        ResponseBody { inner: body, lease: None }
    }

    pub fn upstream(body: ProxyBody, pool: PoolGuard, in_flight: InFlight) -> Self {
        ResponseBody { inner: body, lease: Some((pool, in_flight)) }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // Done: hand the connection back now rather than when hyper gets
            // around to dropping the body.
            this.lease = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
