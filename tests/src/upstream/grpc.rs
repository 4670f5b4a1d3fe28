//! A gRPC upstream (tonic over h2c) with a hand-written `test.Echo` service,
//! and a matching client. See [`GrpcUpstream`] and [`GrpcClient`].
//!
//! No protoc: the messages are hand-written prost structs and the service
//! and client plumbing is what tonic-build would generate, written out. The
//! service is equivalent to:
//!
//! ```proto
//! package test;
//! message EchoRequest { string message = 1; bool fail = 2; }
//! message EchoReply { string message = 1; }
//! message CountRequest { uint32 count = 1; }
//! service Echo {
//!   rpc Unary(EchoRequest) returns (EchoReply);
//!   rpc ServerStream(CountRequest) returns (stream EchoReply);
//!   rpc Chat(stream EchoRequest) returns (stream EchoReply);
//! }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::HeaderValue;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, BoxStream, Service, StdError};
use tonic::metadata::MetadataMap;
use tonic::server::{NamedService, ServerStreamingService, StreamingService, UnaryService};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::{bind_loopback, ServerTask};

/// Fully qualified name of the test service.
pub const SERVICE_NAME: &str = "test.Echo";

const UNARY_PATH: &str = "/test.Echo/Unary";
const SERVER_STREAM_PATH: &str = "/test.Echo/ServerStream";
const CHAT_PATH: &str = "/test.Echo/Chat";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Ask `Unary` to fail with `INVALID_ARGUMENT "asked to fail"`.
    #[prost(bool, tag = "2")]
    pub fail: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    #[prost(uint32, tag = "1")]
    pub count: u32,
}

/// A tonic server over cleartext HTTP/2 serving `test.Echo`:
///
/// - `Unary(EchoRequest) -> EchoReply`: echoes `message`, or fails with
///   `INVALID_ARGUMENT "asked to fail"` when `fail` is set;
/// - `ServerStream(CountRequest) -> stream EchoReply`: messages `"0"`, `"1"`,
///   … `"count-1"`;
/// - `Chat(stream EchoRequest) -> stream EchoReply`: echoes each message.
///
/// Every response has the header `x-upstream: grpc` and the trailer
/// `x-trailer: <method>` (`Unary`, `ServerStream`, `Chat`). For
/// trailers-only responses (errors before any message) `x-trailer` is in the
/// single header block, which is where the trailers are then.
pub struct GrpcUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: ServerTask,
}

impl GrpcUpstream {
    pub async fn start() -> GrpcUpstream {
        let (listener, addr) = bind_loopback().await;
        let connections = Arc::new(AtomicUsize::new(0));
        // tonic spawns the connection tasks itself, so they are killed through
        // their sockets instead (see `KillableIo`).
        let kill = CancellationToken::new();
        let incoming =
            stream::unfold((listener, connections.clone(), kill.clone()), |(listener, connections, kill)| async move {
                let accepted = listener.accept().await.map(|(stream, _peer)| {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_nodelay(true);
                    KillableIo::new(stream, &kill)
                });
                Some((accepted, (listener, connections, kill)))
            });
        let stop = kill.clone().cancelled_owned();
        let handle = tokio::spawn(async move {
            // With a shutdown signal tonic stops accepting, drops the listener
            // and then waits for its connections, which the same token kills.
            let _ = Server::builder().add_service(EchoService).serve_with_incoming_shutdown(incoming, stop).await;
        });
        GrpcUpstream { addr, connections, task: ServerTask::from_parts(kill, handle) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stops the server and waits until its listener and connections are closed.
    pub async fn shutdown(self) {
        self.task.shutdown().await;
    }
}

/// The `test.Echo` service as tonic-build would generate it, plus the
/// `x-upstream` header and `x-trailer` trailer (tonic has no API for custom
/// trailers on success, so the response body is wrapped to add them).
#[derive(Clone)]
struct EchoService;

impl NamedService for EchoService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for EchoService
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            UNARY_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
                Ok(decorate(grpc.unary(UnaryHandler, req).await, "Unary"))
            }),
            SERVER_STREAM_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, CountRequest>::default());
                Ok(decorate(grpc.server_streaming(ServerStreamHandler, req).await, "ServerStream"))
            }),
            CHAT_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
                Ok(decorate(grpc.streaming(ChatHandler, req).await, "Chat"))
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

struct UnaryHandler;

impl UnaryService<EchoRequest> for UnaryHandler {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let request = request.into_inner();
            if request.fail {
                return Err(Status::invalid_argument("asked to fail"));
            }
            Ok(Response::new(EchoReply { message: request.message }))
        })
    }
}

struct ServerStreamHandler;

impl ServerStreamingService<CountRequest> for ServerStreamHandler {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<CountRequest>) -> Self::Future {
        Box::pin(async move {
            let count = request.into_inner().count;
            let replies = stream::iter(0..count).map(|i| Ok(EchoReply { message: i.to_string() }));
            Ok(Response::new(Box::pin(replies) as Self::ResponseStream))
        })
    }
}

struct ChatHandler;

impl StreamingService<EchoRequest> for ChatHandler {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        Box::pin(async move {
            let replies =
                request.into_inner().map(|request| request.map(|request| EchoReply { message: request.message }));
            Ok(Response::new(Box::pin(replies) as Self::ResponseStream))
        })
    }
}

fn decorate(response: http::Response<Body>, method: &'static str) -> http::Response<Body> {
    let (mut parts, body) = response.into_parts();
    parts.headers.insert("x-upstream", HeaderValue::from_static("grpc"));
    if parts.headers.contains_key("grpc-status") {
        // Trailers-only response: this header block is the trailers.
        parts.headers.insert("x-trailer", HeaderValue::from_static(method));
    }
    http::Response::from_parts(parts, Body::new(WithTrailer { inner: body, method }))
}

/// Adds `x-trailer: <method>` to the trailers tonic writes at the end of a
/// response body.
struct WithTrailer {
    inner: Body,
    method: &'static str,
}

impl HttpBody for WithTrailer {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let method = self.method;
        Pin::new(&mut self.inner).poll_frame(cx).map_ok(|mut frame| {
            if let Some(trailers) = frame.trailers_mut() {
                trailers.insert("x-trailer", HeaderValue::from_static(method));
            }
            frame
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A server-side TCP stream that fails every operation once `kill` is
/// cancelled, so that hyper drops the connection even though the task
/// serving it is owned by tonic.
struct KillableIo {
    inner: TcpStream,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableIo {
    fn new(inner: TcpStream, kill: &CancellationToken) -> Self {
        Self { inner, killed: Box::pin(kill.clone().cancelled_owned()) }
    }

    /// Also registers the waker, so a parked connection wakes up to die.
    fn poll_killed(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.killed
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::ConnectionAborted, "test upstream shut down"))
    }
}

impl Connected for KillableIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(err) = this.poll_killed(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(err) = this.poll_killed(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(err) = this.poll_killed(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(err) = this.poll_killed(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(err) = this.poll_killed(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// A client for `test.Echo` over one tonic [`Channel`] (`http://addr`, h2c).
///
/// Every call returns the response *trailers* separately from the headers,
/// so tests can check that a proxy forwards trailers as trailers. When the
/// server fails a call, the returned [`Status`] carries the trailers (or the
/// trailers-only header block) in its metadata.
#[derive(Clone)]
pub struct GrpcClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl GrpcClient {
    /// Connects eagerly to `http://addr`.
    pub async fn connect(addr: SocketAddr) -> Result<GrpcClient, tonic::transport::Error> {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a socket address makes a valid URI")
            .connect()
            .await?;
        Ok(Self::with_channel(channel))
    }

    /// Uses an existing channel (e.g. one with custom timeouts or origin).
    pub fn with_channel(channel: Channel) -> GrpcClient {
        GrpcClient { grpc: tonic::client::Grpc::new(channel) }
    }

    /// Calls `Unary`; returns the echoed message and the trailers.
    ///
    /// Made as a streaming call with one request: tonic's own `unary` merges
    /// the trailers into the response headers, which would hide whether
    /// `x-trailer` really arrived as a trailer.
    pub async fn unary(&mut self, message: &str, fail: bool) -> Result<(String, MetadataMap), Status> {
        let request = EchoRequest { message: message.to_owned(), fail };
        let (mut replies, _headers) = self.call_streaming(UNARY_PATH, stream::iter([request])).await?;
        let reply = replies.message().await?.ok_or_else(|| Status::internal("no reply to the unary call"))?;
        let trailers = trailers_of(&mut replies).await?;
        Ok((reply.message, trailers))
    }

    /// Calls `ServerStream`; returns the messages and the trailers.
    pub async fn server_stream(&mut self, count: u32) -> Result<(Vec<String>, MetadataMap), Status> {
        let (replies, _headers) =
            self.call_streaming::<_, CountRequest>(SERVER_STREAM_PATH, stream::iter([CountRequest { count }])).await?;
        collect_replies(replies).await
    }

    /// Calls `Chat` with all of `messages` (then half-closes); returns the
    /// echoes and the trailers.
    pub async fn chat(&mut self, messages: Vec<String>) -> Result<(Vec<String>, MetadataMap), Status> {
        let requests = stream::iter(messages).map(|message| EchoRequest { message, fail: false });
        let (replies, _headers) = self.call_streaming(CHAT_PATH, requests).await?;
        collect_replies(replies).await
    }

    /// Calls `Unary` and returns the whole response (headers in its
    /// metadata), for tests that look at response headers such as
    /// `x-upstream`. The reply's trailers are *not* merged in.
    pub async fn unary_response(&mut self, message: &str) -> Result<Response<EchoReply>, Status> {
        let request = EchoRequest { message: message.to_owned(), fail: false };
        let (mut replies, headers) = self.call_streaming(UNARY_PATH, stream::iter([request])).await?;
        let reply = replies.message().await?.ok_or_else(|| Status::internal("no reply to the unary call"))?;
        // Drain to the end so that a trailing error status is reported.
        trailers_of(&mut replies).await?;
        let mut response = Response::new(reply);
        *response.metadata_mut() = headers;
        Ok(response)
    }

    async fn call_streaming<S, M>(
        &mut self,
        path: &'static str,
        requests: S,
    ) -> Result<(Streaming<EchoReply>, MetadataMap), Status>
    where
        S: futures_util::Stream<Item = M> + Send + 'static,
        M: prost::Message + Send + Sync + 'static,
    {
        self.grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
        let response = self
            .grpc
            .streaming(
                Request::new(requests),
                http::uri::PathAndQuery::from_static(path),
                ProstCodec::<M, EchoReply>::default(),
            )
            .await?;
        let (headers, replies, _extensions) = response.into_parts();
        Ok((replies, headers))
    }
}

async fn collect_replies(mut replies: Streaming<EchoReply>) -> Result<(Vec<String>, MetadataMap), Status> {
    let mut messages = Vec::new();
    while let Some(reply) = replies.message().await? {
        messages.push(reply.message);
    }
    let trailers = trailers_of(&mut replies).await?;
    Ok((messages, trailers))
}

async fn trailers_of(replies: &mut Streaming<EchoReply>) -> Result<MetadataMap, Status> {
    replies.trailers().await?.ok_or_else(|| Status::internal("response ended without trailers"))
}
