//! Connections that are plain TCP or TLS over TCP, for either side of the
//! proxy. Handlers take these instead of generics so that each handler is
//! compiled once; a plain connection pays one `match` per I/O call.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::io::WaitReadable;

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;
type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// `AsyncRead` + `AsyncWrite` for an enum whose variants all implement them.
macro_rules! delegate_io {
    ($type:ident $(<$lt:lifetime>)?, $($variant:ident),+) => {
        delegate_read!($type $(<$lt>)?, $($variant),+);
        delegate_write!($type $(<$lt>)?, $($variant),+);
    };
}

macro_rules! delegate_read {
    ($type:ident $(<$lt:lifetime>)?, $($variant:ident),+) => {
        impl$(<$lt>)? AsyncRead for $type$(<$lt>)? {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($type::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($type:ident $(<$lt:lifetime>)?, $($variant:ident),+) => {

        impl$(<$lt>)? AsyncWrite for $type$(<$lt>)? {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($type::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($type::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $($type::$variant(s) => s.is_write_vectored(),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($type::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($type::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

/// A client connection: plain, or TLS terminated by this proxy.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<ServerTls>),
}

delegate_io!(ClientStream, Plain, Tls);

impl ClientStream {
    /// Waits until a read would return bytes (or EOF) without taking a
    /// buffer. For TLS, bytes rustls has already decrypted count too.
    pub async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientStream::Plain(tcp) => tcp.poll_read_ready(cx),
            ClientStream::Tls(tls) => {
                let (tcp, session) = tls.get_mut();
                match session.process_new_packets() {
                    Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => Poll::Ready(Ok(())),
                    Ok(_) => tcp.poll_read_ready(cx),
                    // The read that follows reports the error.
                    Err(_) => Poll::Ready(Ok(())),
                }
            }
        }
    }

    /// Reads what is there now; `WouldBlock` when nothing is.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ClientStream::Plain(tcp) => tcp.try_read_buf(buf),
            ClientStream::Tls(tls) => try_read_now(&mut **tls, buf),
        }
    }

    pub fn split(&mut self) -> (ReadSide<'_>, WriteSide<'_>) {
        match self {
            ClientStream::Plain(tcp) => {
                let (read, write) = tcp.split();
                (ReadSide::Plain(read), WriteSide::Plain(write))
            }
            ClientStream::Tls(tls) => {
                let (read, write) = tokio::io::split(&mut **tls);
                (ReadSide::ServerTls(read), WriteSide::ServerTls(write))
            }
        }
    }
}

/// A poll with a no-op waker: the caller waits for readiness by other means
/// (`readable`), as with `TcpStream::try_read`.
fn try_read_now<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match tokio_util::io::poll_read_buf(Pin::new(stream), &mut cx, buf) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// An upstream connection: plain, or TLS originated by this proxy.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<ClientTls>),
}

delegate_io!(UpstreamIo, Plain, Tls);

impl UpstreamIo {
    pub fn split(&mut self) -> (ReadSide<'_>, WriteSide<'_>) {
        match self {
            UpstreamIo::Plain(tcp) => {
                let (read, write) = tcp.split();
                (ReadSide::Plain(read), WriteSide::Plain(write))
            }
            UpstreamIo::Tls(tls) => {
                let (read, write) = tokio::io::split(&mut **tls);
                (ReadSide::ClientTls(read), WriteSide::ClientTls(write))
            }
        }
    }

    /// Whether a pooled idle connection may still be used: the upstream
    /// has neither closed it nor sent anything unasked (for TLS, usually a
    /// close_notify). Looks without consuming.
    pub fn is_quiet(&mut self) -> bool {
        let tcp = match self {
            UpstreamIo::Plain(tcp) => tcp,
            UpstreamIo::Tls(tls) => tls.get_mut().0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        matches!(tcp.poll_peek(&mut cx, &mut probe), Poll::Pending)
    }
}

/// The read half of a split connection.
pub enum ReadSide<'a> {
    Plain(ReadHalf<'a>),
    ServerTls(tokio::io::ReadHalf<&'a mut ServerTls>),
    ClientTls(tokio::io::ReadHalf<&'a mut ClientTls>),
}

/// The write half of a split connection.
pub enum WriteSide<'a> {
    Plain(WriteHalf<'a>),
    ServerTls(tokio::io::WriteHalf<&'a mut ServerTls>),
    ClientTls(tokio::io::WriteHalf<&'a mut ClientTls>),
}

delegate_read!(ReadSide<'a>, Plain, ServerTls, ClientTls);
delegate_write!(WriteSide<'a>, Plain, ServerTls, ClientTls);

impl WaitReadable for ReadSide<'_> {
    async fn readable(&self) -> io::Result<()> {
        match self {
            ReadSide::Plain(read) => read.readable().await,
            // The halves of a TLS stream share it behind a lock, so its
            // socket's readiness cannot be waited on here: a TLS relay
            // keeps its read buffer while idle (rustls keeps its own
            // buffers anyway).
            ReadSide::ServerTls(_) | ReadSide::ClientTls(_) => Ok(()),
        }
    }
}
