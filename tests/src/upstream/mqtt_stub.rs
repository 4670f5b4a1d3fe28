//! A minimal MQTT "broker" that never times anything out. See [`MqttStub`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{bind_loopback, ServerTask};

/// Answers a CONNECT with a CONNACK (accepted; v5-shaped for a v5 CONNECT)
/// and a PINGREQ with a PINGRESP; ignores everything else and never closes a
/// connection by itself (no keep-alive enforcement, unlike a real broker), so
/// a close seen by the client is the proxy's doing. Records every byte it
/// receives.
pub struct MqttStub {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
    _task: ServerTask,
}

impl MqttStub {
    pub async fn start() -> MqttStub {
        let (listener, addr) = bind_loopback().await;
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task =
            ServerTask::spawn_accept_loop(listener, connections.clone(), move |stream| serve(stream, sink.clone()));
        MqttStub { addr, connections, received, _task: task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every byte received so far, all connections together.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().expect("stub lock").clone()
    }
}

async fn serve(mut stream: TcpStream, received: Arc<Mutex<Vec<u8>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        received.lock().expect("stub lock").extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = whole_packet(&buf) {
            let packet: Vec<u8> = buf.drain(..len).collect();
            let reply: &[u8] = match packet[0] >> 4 {
                1 if is_v5_connect(&packet) => &[0x20, 0x03, 0x00, 0x00, 0x00],
                1 => &[0x20, 0x02, 0x00, 0x00],
                12 => &[0xd0, 0x00],
                _ => &[],
            };
            if stream.write_all(reply).await.is_err() {
                return;
            }
        }
    }
}

/// The length of the whole packet at the start of `buf`, once it is all there.
fn whole_packet(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = 2 + i + remaining;
            return (buf.len() >= len).then_some(len);
        }
    }
    None
}

fn is_v5_connect(packet: &[u8]) -> bool {
    let header = 1 + packet.iter().skip(1).take(4).position(|b| b & 0x80 == 0).unwrap_or(0) + 1;
    packet.get(header..header + 7) == Some(b"\x00\x04MQTT\x05")
}
