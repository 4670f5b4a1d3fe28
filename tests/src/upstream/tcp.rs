//! A raw TCP echo server, optionally speaking first. See [`TcpEcho`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{bind_loopback, ServerTask};

/// Echoes every byte it reads. When the client half-closes, it writes what
/// is left, shuts down its own write side and closes the connection.
pub struct TcpEcho {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    task: ServerTask,
}

impl TcpEcho {
    /// Starts a plain echo server.
    pub async fn start() -> TcpEcho {
        Self::start_inner(None).await
    }

    /// Starts an echo server that writes `greeting` as soon as it accepts a
    /// connection, before reading anything (like SMTP or MySQL servers).
    pub async fn start_server_first(greeting: &'static [u8]) -> TcpEcho {
        Self::start_inner(Some(greeting)).await
    }

    async fn start_inner(greeting: Option<&'static [u8]>) -> TcpEcho {
        let (listener, addr) = bind_loopback().await;
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let counter = bytes.clone();
        let task = ServerTask::spawn_accept_loop(listener, connections.clone(), move |stream| {
            echo(stream, greeting, counter.clone())
        });
        TcpEcho { addr, connections, bytes, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Total bytes echoed back (the greeting is not counted).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Stops the server and waits until its listener and connections are closed.
    pub async fn shutdown(self) {
        self.task.shutdown().await;
    }
}

async fn echo(mut stream: TcpStream, greeting: Option<&'static [u8]>, bytes: Arc<AtomicUsize>) {
    // Any I/O error (reset by the peer, …) just ends the connection.
    let _ = async {
        if let Some(greeting) = greeting {
            stream.write_all(greeting).await?;
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                // The client half-closed: everything read has been written,
                // so answer with our own FIN.
                stream.shutdown().await?;
                return Ok::<_, std::io::Error>(());
            }
            stream.write_all(&buf[..n]).await?;
            bytes.fetch_add(n, Ordering::SeqCst);
        }
    }
    .await;
}
