//! Self-tests of the test upstreams and clients, used directly (no proxy).

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeplane_tests::client::{self, Http1Conn, Http2Conn};
use edgeplane_tests::upstream::{
    bytes_pattern, ws_roundtrip, FaultyUpstream, GrpcClient, GrpcUpstream, HttpProto, HttpUpstream, Mode, TcpEcho,
    WsEcho, CHUNKS, X_BODY_LEN, X_REQUEST_INDEX,
};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Hang guard only: every test must finish well within this.
const GUARD: Duration = Duration::from_secs(30);

async fn guard<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(GUARD, fut).await.expect("test hung (hang guard fired)")
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", "test.local").body(Full::new(Bytes::new())).unwrap()
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("JSON body")
}

#[tokio::test]
async fn http1_default_json_and_connection_reuse() {
    guard(async {
        let up = HttpUpstream::start("alpha", HttpProto::Http1).await;
        assert_eq!(up.name(), "alpha");
        let mut conn = Http1Conn::connect(up.addr()).await;
        let req = Request::post("/some/path?x=1&y=2")
            .header("host", "test.local")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .header("X-Single", "One")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let res = conn.send(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-upstream"], "alpha");
        assert_eq!(res.headers()["content-type"], "application/json");
        let body = json(res.body());
        assert_eq!(body["upstream"], "alpha");
        assert_eq!(body["method"], "POST");
        assert_eq!(body["path"], "/some/path?x=1&y=2");
        assert_eq!(body["version"], "HTTP/1.1");
        assert_eq!(body["headers"]["host"], "test.local");
        assert_eq!(body["headers"]["x-single"], "One");
        assert_eq!(body["headers"]["x-multi"], serde_json::json!(["a", "b"]));
        assert_eq!(body["body_len"], 5);

        let res = conn.send(get("/again")).await.unwrap();
        assert_eq!(json(res.body())["method"], "GET");
        assert_eq!(up.requests(), 2);
        assert_eq!(up.connections(), 1, "keep-alive reuses the connection");
        assert_eq!(up.max_concurrent_requests(), 1);
        assert_eq!(up.in_flight(), 0);
    })
    .await
}

#[tokio::test]
async fn h2_default_json() {
    guard(async {
        for proto in [HttpProto::Http2, HttpProto::Auto] {
            let up = HttpUpstream::start("beta", proto).await;
            let conn = Http2Conn::connect(up.addr()).await;
            let res = conn.send(get("/h2?q=1")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["x-upstream"], "beta");
            let body = json(res.body());
            assert_eq!(body["upstream"], "beta");
            assert_eq!(body["method"], "GET");
            assert_eq!(body["path"], "/h2?q=1");
            assert_eq!(body["version"], "HTTP/2.0");
            assert_eq!(body["body_len"], 0);
            assert_eq!(up.connections(), 1);
        }
    })
    .await
}

#[tokio::test]
async fn auto_also_speaks_http1() {
    guard(async {
        let up = HttpUpstream::start("auto", HttpProto::Auto).await;
        let (status, headers, body) = client::get(up.addr(), "example.test", "/x").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-upstream"], "auto");
        let body = json(&body);
        assert_eq!(body["version"], "HTTP/1.1");
        assert_eq!(body["headers"]["host"], "example.test");
    })
    .await
}

#[tokio::test]
async fn status_and_bytes() {
    guard(async {
        let up = HttpUpstream::start("s", HttpProto::Http1).await;
        let mut conn = Http1Conn::connect(up.addr()).await;

        let res = conn.send(get("/status/503?ignored=1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["x-upstream"], "s");
        assert!(res.body().is_empty());

        let res = conn.send(get("/bytes/100000")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-length"], "100000");
        assert_eq!(res.body().as_ref(), bytes_pattern(100_000).as_slice());

        let res = conn.send(get("/bytes/0")).await.unwrap();
        assert_eq!(res.headers()["content-length"], "0");
        assert!(res.body().is_empty());
    })
    .await
}

fn big_body() -> Bytes {
    (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect::<Vec<_>>().into()
}

fn echo_req(body: Bytes) -> Request<Full<Bytes>> {
    Request::post("/echo")
        .header("host", "test.local")
        .header("content-type", "application/x-test")
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test]
async fn echo_one_mib_http1_and_h2() {
    guard(async {
        let body = big_body();

        let up = HttpUpstream::start("e1", HttpProto::Http1).await;
        let mut conn = Http1Conn::connect(up.addr()).await;
        let res = conn.send(echo_req(body.clone())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/x-test");
        assert_eq!(res.body().len(), body.len());
        assert!(res.body() == &body);

        let up = HttpUpstream::start("e2", HttpProto::Http2).await;
        let conn = Http2Conn::connect(up.addr()).await;
        let res = conn.send(echo_req(body.clone())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/x-test");
        assert!(res.body() == &body);
    })
    .await
}

#[tokio::test]
async fn chunked_with_trailer() {
    guard(async {
        let expected = CHUNKS.concat();

        let up = HttpUpstream::start("c", HttpProto::Auto).await;
        let conn = Http2Conn::connect(up.addr()).await;
        let res = conn.send(get("/chunked")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.body().as_ref(), expected.as_bytes());
        let trailers = client::trailers(&res).expect("h2 response has trailers");
        assert_eq!(trailers["x-trailer"], "done");

        // HTTP/1.1: chunked encoding; trailers only when asked for.
        let mut conn = Http1Conn::connect(up.addr()).await;
        let req = Request::get("/chunked")
            .header("host", "test.local")
            .header("te", "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = conn.send(req).await.unwrap();
        assert_eq!(res.headers()["transfer-encoding"], "chunked");
        assert!(res.headers().get("content-length").is_none());
        assert_eq!(res.body().as_ref(), expected.as_bytes());
        assert_eq!(client::trailers(&res).unwrap()["x-trailer"], "done");
    })
    .await
}

#[tokio::test]
async fn abort_is_an_error_not_a_hang() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Auto).await;

        let mut conn = Http1Conn::connect(up.addr()).await;
        // hyper reports the truncated body (IncompleteBody).
        conn.send(get("/abort")).await.expect_err("a truncated HTTP/1 body is an error");

        let conn = Http2Conn::connect(up.addr()).await;
        conn.send(get("/abort")).await.expect_err("an aborted h2 stream is an error");
    })
    .await
}

#[tokio::test]
async fn abort_sends_head_and_partial_body_first() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let raw = client::raw_exchange(up.addr(), b"GET /abort HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-length: 1000\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n0123456789"), "{text}");
    })
    .await
}

#[tokio::test]
async fn delay_then_default() {
    guard(async {
        let up = HttpUpstream::start("d", HttpProto::Http1).await;
        let mut conn = Http1Conn::connect(up.addr()).await;
        let started = Instant::now();
        let res = conn.send(get("/delay/200")).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(json(res.body())["path"], "/delay/200");
    })
    .await
}

#[tokio::test]
async fn hang_counts_concurrency_and_dies_with_the_upstream() {
    guard(async {
        let up = HttpUpstream::start("h", HttpProto::Http2).await;
        let conn = std::sync::Arc::new(Http2Conn::connect(up.addr()).await);
        let pending: Vec<_> = (0..3)
            .map(|_| {
                let conn = conn.clone();
                tokio::spawn(async move { conn.send(get("/hang")).await })
            })
            .collect();
        up.wait_for_requests(3).await;
        assert_eq!(up.in_flight(), 3);
        assert_eq!(up.max_concurrent_requests(), 3);
        assert_eq!(up.connections(), 1);

        up.shutdown().await;
        for request in pending {
            request.await.unwrap().expect_err("a request to a dead upstream fails");
        }
    })
    .await
}

#[tokio::test]
async fn close_ends_the_http1_connection() {
    guard(async {
        let up = HttpUpstream::start("cl", HttpProto::Http1).await;
        let mut conn = Http1Conn::connect(up.addr()).await;
        let res = conn.send(get("/close")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["connection"], "close");
        assert_eq!(json(res.body())["path"], "/close");
        conn.send(get("/")).await.expect_err("the connection was closed");
    })
    .await
}

#[tokio::test]
async fn raw_exchange_and_shutdown_refuses() {
    guard(async {
        let up = HttpUpstream::start("r", HttpProto::Http1).await;
        let addr = up.addr();
        let raw = client::raw_exchange(addr, b"GET /status/204 HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(text.contains("x-upstream: r\r\n"), "{text}");

        let raw = client::raw_exchange(addr, b"NOT HTTP AT ALL\r\n\r\n").await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");

        up.shutdown().await;
        TcpStream::connect(addr).await.expect_err("nothing listens after shutdown");
    })
    .await
}

#[tokio::test]
async fn tcp_echo_half_close() {
    guard(async {
        let echo = TcpEcho::start().await;
        let stream = TcpStream::connect(echo.addr()).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let sent = big_body();
        let to_send = sent.clone();
        // Write concurrently with reading so neither side's buffers fill up.
        let writer = tokio::spawn(async move {
            wr.write_all(&to_send).await.unwrap();
            wr.shutdown().await.unwrap();
            wr
        });
        let mut received = Vec::new();
        rd.read_to_end(&mut received).await.unwrap();
        let _wr = writer.await.unwrap();
        assert_eq!(received.len(), sent.len());
        assert!(received == sent.as_ref());
        // EOF came after the server's last write and count.
        assert_eq!(echo.bytes(), sent.len());
        assert_eq!(echo.connections(), 1);
    })
    .await
}

#[tokio::test]
async fn tcp_server_first_greeting() {
    guard(async {
        let echo = TcpEcho::start_server_first(b"220 hello\r\n").await;
        let mut stream = TcpStream::connect(echo.addr()).await.unwrap();
        let mut greeting = [0u8; 11];
        stream.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"220 hello\r\n");

        stream.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        stream.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"ping");

        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(echo.bytes(), 4);
    })
    .await
}

#[tokio::test]
async fn tcp_echo_shutdown_closes_connections() {
    guard(async {
        let echo = TcpEcho::start().await;
        let addr = echo.addr();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        stream.read_exact(&mut one).await.unwrap();

        echo.shutdown().await;
        let mut rest = Vec::new();
        // EOF or reset, but not a hang.
        let _ = stream.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        TcpStream::connect(addr).await.expect_err("not listening");
    })
    .await
}

#[tokio::test]
async fn grpc_unary_with_trailer_and_failure() {
    guard(async {
        let up = GrpcUpstream::start().await;
        let mut client = GrpcClient::connect(up.addr()).await.unwrap();

        let (reply, trailers) = client.unary("hi", false).await.unwrap();
        assert_eq!(reply, "hi");
        assert_eq!(trailers.get("x-trailer").unwrap(), "Unary");

        let response = client.unary_response("hey").await.unwrap();
        assert_eq!(response.get_ref().message, "hey");
        assert_eq!(response.metadata().get("x-upstream").unwrap(), "grpc");
        assert!(response.metadata().get("x-trailer").is_none(), "x-trailer is a trailer, not a header");

        let status = client.unary("boom", true).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "asked to fail");
        assert_eq!(status.metadata().get("x-trailer").unwrap(), "Unary");

        assert_eq!(up.connections(), 1);
    })
    .await
}

#[tokio::test]
async fn grpc_server_stream_of_100() {
    guard(async {
        let up = GrpcUpstream::start().await;
        let mut client = GrpcClient::connect(up.addr()).await.unwrap();
        let (messages, trailers) = client.server_stream(100).await.unwrap();
        let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(messages, expected);
        assert_eq!(trailers.get("x-trailer").unwrap(), "ServerStream");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    })
    .await
}

#[tokio::test]
async fn grpc_bidi_chat() {
    guard(async {
        let up = GrpcUpstream::start().await;
        let mut client = GrpcClient::connect(up.addr()).await.unwrap();
        let sent: Vec<String> = (0..20).map(|i| format!("message {i}")).collect();
        let (messages, trailers) = client.chat(sent.clone()).await.unwrap();
        assert_eq!(messages, sent);
        assert_eq!(trailers.get("x-trailer").unwrap(), "Chat");

        let (messages, _) = client.chat(Vec::new()).await.unwrap();
        assert!(messages.is_empty());
    })
    .await
}

#[tokio::test]
async fn grpc_shutdown_closes_everything() {
    guard(async {
        let up = GrpcUpstream::start().await;
        let addr = up.addr();
        let mut client = GrpcClient::connect(addr).await.unwrap();
        client.unary("before", false).await.unwrap();
        up.shutdown().await;
        TcpStream::connect(addr).await.expect_err("not listening");
        client.unary("after", false).await.expect_err("the upstream is gone");
    })
    .await
}

#[tokio::test]
async fn websocket_roundtrip() {
    guard(async {
        let ws = WsEcho::start().await;
        let echoes = ws_roundtrip(&ws.url(), &["hello", "world", ""]).await.unwrap();
        assert_eq!(echoes, ["hello", "world", ""]);
        assert_eq!(ws.connections(), 1);
        assert_eq!(ws.handshakes(), 1);

        let echoes = ws_roundtrip(&format!("ws://{}/some/path", ws.addr()), &["again"]).await.unwrap();
        assert_eq!(echoes, ["again"]);
        assert_eq!(ws.connections(), 2);
    })
    .await
}

#[tokio::test]
async fn faulty_upstream_modes() {
    guard(async {
        let up = FaultyUpstream::start("flaky").await;
        let mut conn = Http1Conn::connect(up.addr()).await;
        let res = conn.send(get("/any")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-upstream"], "flaky");
        assert_eq!(res.headers()[X_REQUEST_INDEX], "0");

        // Requests i % 10 < 3 of the mode fail, counted from when it was set.
        up.set_mode(Mode::FailPattern { every: 10, first: 3, status: 503 });
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(conn.send(get("/p")).await.unwrap().status().as_u16());
        }
        let expected: Vec<u16> = (0..20).map(|i| if i % 10 < 3 { 503 } else { 200 }).collect();
        assert_eq!(statuses, expected);

        up.set_mode(Mode::Status(500));
        let req = Request::post("/post").header("host", "t").body(Full::new(Bytes::from_static(b"12345"))).unwrap();
        let res = conn.send(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()[X_BODY_LEN], "5");
        assert_eq!(up.requests_by_method("POST"), 1);
        assert_eq!(up.requests_by_method("GET"), 21);

        // /healthz is answered apart and not counted.
        up.set_health(503);
        assert_eq!(conn.send(get("/healthz")).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(up.health_checks(), 1);
        assert_eq!(up.requests(), 22);

        // The first request hangs until released; the next one answers (over HTTP/2).
        up.set_mode(Mode::HangFirst(1));
        let addr = up.addr();
        let hung = tokio::spawn(async move { Http1Conn::connect(addr).await.send(get("/hang")).await.unwrap() });
        up.wait_for_requests(23).await;
        assert_eq!(up.in_flight(), 1);
        let h2 = Http2Conn::connect(addr).await;
        assert_eq!(h2.send(get("/next")).await.unwrap().status(), StatusCode::OK);
        assert!(!hung.is_finished());
        up.release_hung();
        assert_eq!(hung.await.unwrap().status(), StatusCode::OK);

        up.set_mode(Mode::Delay(Duration::from_millis(100)));
        let started = Instant::now();
        assert_eq!(conn.send(get("/slow")).await.unwrap().status(), StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(100));

        // Dies (connections refused) and comes back on the same port.
        up.die().await;
        TcpStream::connect(addr).await.expect_err("not listening");
        up.revive().await;
        up.set_mode(Mode::Ok);
        let res = Http1Conn::connect(addr).await.send(get("/back")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[X_REQUEST_INDEX], "25");
    })
    .await
}
