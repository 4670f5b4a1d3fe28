//! Opaque TCP through the proxy: `protocol: tcp` listeners, `auto` listeners
//! falling back to TCP, half-close, idle timeout, and byte counters.

use std::net::SocketAddr;
use std::time::Duration;

use edgeplane_tests::harness::{cluster, guard, TestProxy};
use edgeplane_tests::upstream::TcpEcho;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a test waits for data or a close before calling it a hang.
const LIMIT: Duration = Duration::from_secs(10);

const GREETING: &[u8] = b"220 hello\r\n";

/// A proxy with one listener `front` (protocol and extra listener settings as
/// given) whose only route goes to cluster `echo` with these endpoints.
fn start_proxy(protocol: &str, extra: &str, endpoints: &[SocketAddr]) -> TestProxy {
    let yaml = format!(
        "listeners:\n  - name: front\n    bind: 127.0.0.1:0\n    protocol: {protocol}\n{extra}    routes:\n      - cluster: echo\nclusters:\n{}",
        cluster("echo", endpoints)
    );
    TestProxy::start(&yaml)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    stream
}

async fn read_exact_within(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    tokio::time::timeout(LIMIT, stream.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no {len} bytes within {LIMIT:?}"))
        .unwrap_or_else(|e| panic!("reading {len} bytes: {e}"));
    buf
}

/// Reads until EOF; panics on a hang. Returns what was read and whether the
/// end was a clean EOF (`true`) or an error such as a reset (`false`).
async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("connection not closed within {LIMIT:?} ({} bytes read)", received.len()),
            Ok(Ok(0)) => return (received, true),
            Ok(Err(_)) => return (received, false),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Bytes that catch reordering and loss (not a short repeating pattern).
fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

async fn tcp_bytes(proxy: &TestProxy, direction: &str) -> Option<f64> {
    proxy
        .metric("edgeplane_tcp_bytes_total", &[("listener", "front"), ("cluster", "echo"), ("direction", direction)])
        .await
}

/// Client connections of listener `front` accepted as this protocol.
async fn accepted(proxy: &TestProxy, protocol: &str) -> Option<f64> {
    proxy.metric("edgeplane_downstream_connections_total", &[("listener", "front"), ("protocol", protocol)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_echoes_a_small_message() {
    guard(async {
        let echo = TcpEcho::start().await;
        let proxy = start_proxy("tcp", "", &[echo.addr()]);
        let mut stream = connect(proxy.addr("front")).await;
        stream.write_all(b"hello through the proxy").await.unwrap();
        assert_eq!(read_exact_within(&mut stream, 23).await, b"hello through the proxy");
        stream.write_all(b"again").await.unwrap();
        assert_eq!(read_exact_within(&mut stream, 5).await, b"again");
        assert_eq!(echo.connections(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_both_ways_arrive_intact() {
    guard(async {
        let echo = TcpEcho::start().await;
        let proxy = start_proxy("tcp", "", &[echo.addr()]);
        let sent = payload(8 * 1024 * 1024);
        let (mut reader, mut writer) = connect(proxy.addr("front")).await.into_split();
        let to_send = sent.clone();
        // Write while reading, so that neither direction's buffers fill up.
        let write = tokio::spawn(async move {
            writer.write_all(&to_send).await.expect("write 8 MiB");
            writer.shutdown().await.expect("half-close");
            writer
        });
        let mut received = Vec::with_capacity(sent.len());
        tokio::time::timeout(LIMIT * 3, reader.read_to_end(&mut received))
            .await
            .expect("8 MiB echo did not finish")
            .expect("read echo");
        let _writer = write.await.unwrap();
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "echoed bytes differ from the bytes sent");
        assert_eq!(echo.bytes(), sent.len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_still_delivers_every_echoed_byte() {
    guard(async {
        let echo = TcpEcho::start().await;
        let proxy = start_proxy("tcp", "", &[echo.addr()]);
        let mut stream = connect(proxy.addr("front")).await;
        // Small enough to sit in socket buffers: everything is written and
        // our side shut down before a single byte is read back.
        let sent = payload(128 * 1024);
        stream.write_all(&sent).await.unwrap();
        stream.shutdown().await.unwrap();
        let (received, clean) = read_to_close(&mut stream).await;
        assert!(clean, "connection reset instead of a clean EOF after {} bytes", received.len());
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "echoed bytes differ from the bytes sent");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_listener_silent_client_gets_server_first_greeting() {
    guard(async {
        let echo = TcpEcho::start_server_first(GREETING).await;
        let proxy = start_proxy("auto", "    detect_timeout: 200ms\n", &[echo.addr()]);
        let started = Instant::now();
        let mut stream = connect(proxy.addr("front")).await;
        // Send nothing: detection must give up and relay as TCP.
        assert_eq!(read_exact_within(&mut stream, GREETING.len()).await, GREETING);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200), "greeting after {waited:?}, before the detect timeout");
        // And the connection is a working relay.
        stream.write_all(b"EHLO test\r\n").await.unwrap();
        assert_eq!(read_exact_within(&mut stream, 11).await, b"EHLO test\r\n");
        assert_eq!(accepted(&proxy, "tcp").await, Some(1.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_listener_relays_binary_client_bytes_as_tcp() {
    guard(async {
        let echo = TcpEcho::start().await;
        let proxy = start_proxy("auto", "", &[echo.addr()]);
        let mut stream = connect(proxy.addr("front")).await;
        // A TLS-ClientHello-like start, with NUL and high bytes.
        let first: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\xff binary";
        stream.write_all(first).await.unwrap();
        assert_eq!(read_exact_within(&mut stream, first.len()).await, first);
        stream.write_all(b"\x00\x01\x02more").await.unwrap();
        assert_eq!(read_exact_within(&mut stream, 7).await, b"\x00\x01\x02more");
        assert_eq!(accepted(&proxy, "tcp").await, Some(1.0));
        assert_eq!(accepted(&proxy, "http1").await, Some(0.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_relayed_connection_is_closed_after_idle_timeout() {
    guard(async {
        let echo = TcpEcho::start().await;
        let proxy = start_proxy("tcp", "    tcp: { idle_timeout: 300ms }\n", &[echo.addr()]);
        let mut stream = connect(proxy.addr("front")).await;
        // Taken before the last bytes move: the proxy's idle clock starts later.
        let last_activity = Instant::now();
        stream.write_all(b"ping").await.unwrap();
        assert_eq!(read_exact_within(&mut stream, 4).await, b"ping");
        let (rest, _) = read_to_close(&mut stream).await;
        let idle = last_activity.elapsed();
        assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
        // The proxy keeps its activity clock in whole milliseconds, so allow
        // for truncation.
        let at_least = Duration::from_millis(300 - 2);
        assert!(idle >= at_least, "closed after {idle:?} idle, before the 300ms idle timeout");
        assert!(idle < Duration::from_secs(5), "closed only after {idle:?} idle");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_without_endpoints_closes_the_client_connection() {
    guard(async {
        let proxy = start_proxy("tcp", "", &[]);
        let mut stream = connect(proxy.addr("front")).await;
        let (received, _) = read_to_close(&mut stream).await;
        assert!(received.is_empty(), "unexpected bytes: {received:?}");
        // The proxy keeps accepting (and closing) after that.
        let mut again = connect(proxy.addr("front")).await;
        let (received, _) = read_to_close(&mut again).await;
        assert!(received.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_byte_counters_match_the_bytes_relayed() {
    guard(async {
        // Server-first, so the two directions carry different byte counts.
        let echo = TcpEcho::start_server_first(GREETING).await;
        let proxy = start_proxy("tcp", "", &[echo.addr()]);
        let mut stream = connect(proxy.addr("front")).await;
        assert_eq!(read_exact_within(&mut stream, GREETING.len()).await, GREETING);
        let sent = payload(100_000);
        stream.write_all(&sent).await.unwrap();
        stream.shutdown().await.unwrap();
        let (received, clean) = read_to_close(&mut stream).await;
        assert!(clean, "reset instead of EOF");
        assert!(received == sent, "echo differs ({} bytes of {})", received.len(), sent.len());
        // The client saw EOF, so the relay is done in both directions.
        let rx = tcp_bytes(&proxy, "rx").await;
        let tx = tcp_bytes(&proxy, "tx").await;
        assert_eq!(rx, Some(sent.len() as f64), "rx: bytes from the client");
        assert_eq!(tx, Some((GREETING.len() + sent.len()) as f64), "tx: bytes to the client");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_ends_the_relay_without_waiting_for_the_upstream() {
    guard(async {
        let echo = TcpEcho::start().await;
        let proxy = start_proxy("tcp", "", &[echo.addr()]);
        let mut client = connect(proxy.addr("front")).await;
        client.write_all(b"ping").await.unwrap();
        assert_eq!(read_exact_within(&mut client, 4).await, b"ping");
        let active = || proxy.metric("edgeplane_downstream_connections_active", &[("listener", "front")]);
        assert_eq!(active().await, Some(1.0));
        // An abortive close (RST): the upstream stays silent, so only the
        // reset can end the relay, long before the one-hour idle timeout.
        client.set_zero_linger().unwrap();
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        while active().await != Some(0.0) {
            assert!(Instant::now() < deadline, "the relay outlived its client's reset");
            tokio::task::yield_now().await;
        }
    })
    .await;
}
