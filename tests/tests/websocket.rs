//! WebSocket upgrades through the proxy to an HTTP/1 cluster.

use std::net::SocketAddr;
use std::time::Duration;

use edgeplane_tests::harness::{cluster, guard, TestProxy};
use edgeplane_tests::upstream::{ws_roundtrip, WsEcho};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for an echo before calling it a hang.
const LIMIT: Duration = Duration::from_secs(10);

fn start_proxy(protocol: &str, upstream: SocketAddr) -> TestProxy {
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    protocol: {protocol}\n    routes:\n      - cluster: ws\nclusters:\n{}",
        cluster("ws", &[upstream])
    );
    TestProxy::start(&yaml)
}

async fn open(addr: SocketAddr, path: &str) -> Ws {
    let (ws, response) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake via {addr}: {e}"));
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn send(ws: &mut Ws, message: Message) {
    tokio::time::timeout(LIMIT, ws.send(message)).await.expect("send hung").expect("send");
}

/// The next text or binary message (pings and pongs skipped).
async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("no echo in time")
            .expect("connection ended before the echo")
            .expect("WebSocket error");
        if message.is_text() || message.is_binary() {
            return message;
        }
        assert!(!message.is_close(), "closed before the echo");
    }
}

async fn close(mut ws: Ws) {
    ws.close(None).await.expect("send close");
    // The server's close reply ends the stream.
    while let Some(message) = tokio::time::timeout(LIMIT, ws.next()).await.expect("close handshake hung") {
        if message.is_err() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_messages_round_trip_through_auto_listener() {
    guard(async {
        let upstream = WsEcho::start().await;
        let proxy = start_proxy("auto", upstream.addr());
        let url = format!("ws://{}/chat", proxy.addr("web"));
        let messages = ["hello", "", "ünïcödé ✓", "a longer message with spaces and numbers 1234567890"];
        let echoes = ws_roundtrip(&url, &messages).await.expect("WebSocket round trip via the proxy");
        assert_eq!(echoes, messages);
        assert_eq!(upstream.handshakes(), 1);

        // A large binary message crosses the tunnel intact too.
        let mut ws = open(proxy.addr("web"), "/bin").await;
        let big: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
        send(&mut ws, Message::binary(big.clone())).await;
        let echoed = next_data(&mut ws).await;
        assert!(echoed.is_binary());
        assert!(echoed.into_data() == big, "binary echo differs");
        close(ws).await;
        assert_eq!(upstream.handshakes(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_sessions_stay_separate() {
    guard(async {
        let upstream = WsEcho::start().await;
        let proxy = start_proxy("auto", upstream.addr());
        let addr = proxy.addr("web");
        // Both sessions are open at once and used in turn.
        let mut a = open(addr, "/a").await;
        let mut b = open(addr, "/b").await;
        assert_eq!(upstream.handshakes(), 2);
        for round in 0..10 {
            send(&mut a, Message::text(format!("a-{round}"))).await;
            send(&mut b, Message::text(format!("b-{round}"))).await;
            // Read B first: A's echo waits in its own tunnel meanwhile.
            assert_eq!(next_data(&mut b).await.into_text().unwrap().as_str(), format!("b-{round}"));
            assert_eq!(next_data(&mut a).await.into_text().unwrap().as_str(), format!("a-{round}"));
        }
        close(a).await;
        // B still works after A is gone.
        send(&mut b, Message::text("b-last")).await;
        assert_eq!(next_data(&mut b).await.into_text().unwrap().as_str(), "b-last");
        close(b).await;
        assert_eq!(upstream.connections(), 2, "one upstream connection per WebSocket session");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_works_on_http_listener() {
    guard(async {
        let upstream = WsEcho::start().await;
        let proxy = start_proxy("http", upstream.addr());
        let url = format!("ws://{}/", proxy.addr("web"));
        let echoes = ws_roundtrip(&url, &["one", "two", "three"]).await.expect("WebSocket round trip via the proxy");
        assert_eq!(echoes, ["one", "two", "three"]);
        assert_eq!(upstream.handshakes(), 1);
    })
    .await;
}
