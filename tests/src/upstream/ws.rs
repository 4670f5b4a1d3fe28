//! A WebSocket echo server and a one-shot client. See [`WsEcho`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{bind_loopback, ServerTask};

/// Accepts WebSocket upgrades over HTTP/1.1 and echoes text and binary
/// messages. Pings are answered and close handshakes completed by
/// tungstenite itself.
pub struct WsEcho {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    task: ServerTask,
}

impl WsEcho {
    pub async fn start() -> WsEcho {
        let (listener, addr) = bind_loopback().await;
        let connections = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counter = handshakes.clone();
        let task =
            ServerTask::spawn_accept_loop(listener, connections.clone(), move |stream| echo(stream, counter.clone()));
        WsEcho { addr, connections, handshakes, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://<addr>/`
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Successful WebSocket handshakes so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Stops the server and waits until its listener and connections are closed.
    pub async fn shutdown(self) {
        self.task.shutdown().await;
    }
}

async fn echo(stream: TcpStream, handshakes: Arc<AtomicUsize>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    handshakes.fetch_add(1, Ordering::SeqCst);
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
        // Close: tungstenite queued the reply; the next read flushes it
        // and then ends the stream.
    }
}

/// Connects to `url`, sends each message as a text message and waits for its
/// echo, then closes the connection cleanly (close handshake completed).
/// Returns the echoed messages in order.
pub async fn ws_roundtrip(url: &str, messages: &[&str]) -> Result<Vec<String>, WsError> {
    let (mut ws, _response) = tokio_tungstenite::connect_async(url).await?;
    let mut echoes = Vec::with_capacity(messages.len());
    for message in messages {
        ws.send(Message::text(*message)).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    echoes.push(text.as_str().to_owned());
                    break;
                }
                Some(Ok(Message::Binary(data))) => {
                    echoes.push(String::from_utf8_lossy(&data).into_owned());
                    break;
                }
                // Ping/pong/raw frames: keep waiting for the echo.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Err(WsError::ConnectionClosed),
                Some(Err(e)) => return Err(e),
            }
        }
    }
    ws.close(None).await?;
    // Drain until the server's close reply ends the stream.
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(_) => {}
            Err(WsError::ConnectionClosed) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(echoes)
}
