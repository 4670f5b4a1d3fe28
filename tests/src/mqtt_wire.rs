//! MQTT test support: configs with one `mqtt` listener, and raw packets
//! built by hand and read back, for tests that need exact bytes (refusal
//! codes, bad input) rather than a client library.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::harness::TestProxy;

// Configs.

/// A config with one listener `mqtt` (protocol and extra listener lines as
/// given; routes are YAML flow mappings) and these clusters (YAML list items).
pub fn config(protocol: &str, listener_extra: &str, routes: &[&str], clusters: &str) -> String {
    let routes: String = routes.iter().map(|route| format!("      - {route}\n")).collect();
    format!(
        "listeners:\n  - name: mqtt\n    bind: 127.0.0.1:0\n    protocol: {protocol}\n{listener_extra}    routes:\n{routes}clusters:\n{clusters}"
    )
}

/// A cluster list item with extra `key: value` settings.
pub fn cluster(name: &str, endpoints: &[SocketAddr], settings: &[&str]) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let mut yaml = format!("  - name: {name}\n    endpoints: [ {} ]\n", list.join(", "));
    for line in settings {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml
}

/// A proxy with listener `mqtt` (`protocol`, extra listener lines) sending
/// everything to one broker.
pub fn one_broker_proxy(protocol: &str, listener_extra: &str, broker: SocketAddr) -> TestProxy {
    TestProxy::start(&config(protocol, listener_extra, &["{ cluster: broker }"], &cluster("broker", &[broker], &[])))
}

/// Longest wait for a message, a reply or a close that should come at once.
pub const LIMIT: Duration = Duration::from_secs(5);

/// A CONNECT with clean session, this keep-alive and client id; the
/// protocol name follows the level (`MQIsdp` for 3, else `MQTT`).
pub fn connect_packet(level: u8, client_id: &str, keep_alive: u16) -> Vec<u8> {
    connect_packet_as(level, client_id, keep_alive, None, None)
}

/// [`connect_packet`] with a user name and password.
pub fn connect_packet_as(
    level: u8,
    client_id: &str,
    keep_alive: u16,
    username: Option<&str>,
    password: Option<&str>,
) -> Vec<u8> {
    let name: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
    let mut body = vec![0x00, name.len() as u8];
    body.extend_from_slice(name);
    body.push(level);
    body.push(0x02 | if username.is_some() { 0x80 } else { 0 } | if password.is_some() { 0x40 } else { 0 });
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0x00);
    }
    for field in [Some(client_id), username, password].into_iter().flatten() {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    packet(0x10, &body)
}

/// A PUBLISH at `qos` (packet id `id` unless QoS 0). For v5, `properties`
/// is the property list without its length (`Some(&[])` for none).
pub fn publish_qos(topic: &str, payload: &[u8], qos: u8, id: u16, properties: Option<&[u8]>) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if let Some(properties) = properties {
        body.push(properties.len() as u8);
        body.extend_from_slice(properties);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// The v5 Topic Alias property.
pub fn topic_alias(alias: u16) -> [u8; 3] {
    let [high, low] = alias.to_be_bytes();
    [0x23, high, low]
}

/// A SUBSCRIBE of these (filter, QoS) pairs.
pub fn subscribe_packet(id: u16, filters: &[(&str, u8)], v5: bool) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    if v5 {
        body.push(0x00);
    }
    for (filter, qos) in filters {
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter.as_bytes());
        body.push(*qos);
    }
    packet(0x82, &body)
}

/// Connects with a CONNECT as given and returns the stream and the CONNACK.
pub async fn connect_as(addr: SocketAddr, connect: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut stream = self::connect(addr).await;
    stream.write_all(connect).await.expect("write CONNECT");
    let connack = read_packet(&mut stream).await;
    assert_eq!(connack[0], 0x20, "not a CONNACK: {connack:02x?}");
    (stream, connack)
}

/// A packet with this first byte and body (remaining length < 128).
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128, "test packets are small");
    let mut packet = vec![first, body.len() as u8];
    packet.extend_from_slice(body);
    packet
}

/// A QoS 0 PUBLISH (with an empty property list for v5).
pub fn publish_packet(topic: &str, payload: &[u8], v5: bool) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    if v5 {
        body.push(0x00);
    }
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Reads one whole packet; panics on a close or after [`LIMIT`].
pub async fn read_packet(stream: &mut TcpStream) -> Vec<u8> {
    tokio::time::timeout(LIMIT, async {
        let mut packet = vec![stream.read_u8().await?];
        let mut remaining = 0usize;
        for shift in (0..4).map(|i| 7 * i) {
            let byte = stream.read_u8().await?;
            packet.push(byte);
            remaining |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let start = packet.len();
        packet.resize(start + remaining, 0);
        stream.read_exact(&mut packet[start..]).await?;
        Ok::<_, std::io::Error>(packet)
    })
    .await
    .unwrap_or_else(|_| panic!("no whole packet within {LIMIT:?}"))
    .unwrap_or_else(|e| panic!("reading a packet: {e}"))
}

/// Reads until the peer closes (EOF or reset); panics after [`LIMIT`].
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("not closed within {LIMIT:?} (received {received:02x?})"),
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Connects, sends `bytes` and returns everything received until the close.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr).await;
    stream.write_all(bytes).await.expect("write");
    read_to_close(&mut stream).await
}

/// A connection whose CONNECT (at `level`) was accepted by the broker.
pub async fn connected(addr: SocketAddr, level: u8, client_id: &str) -> TcpStream {
    let (stream, connack) = connect_as(addr, &connect_packet(level, client_id, 60)).await;
    // v3: 20 02 flags code; v5: 20 len flags reason properties.
    assert_eq!(connack[3], 0, "CONNECT refused: {connack:02x?}");
    stream
}

/// Sends `bytes` on an accepted connection and returns everything received
/// until the proxy closes it.
pub async fn after_connect(addr: SocketAddr, level: u8, client_id: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connected(addr, level, client_id).await;
    stream.write_all(bytes).await.expect("write");
    read_to_close(&mut stream).await
}
