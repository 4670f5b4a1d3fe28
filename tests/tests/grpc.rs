//! gRPC through the proxy: an `auto` listener in front of an HTTP/2 cluster
//! of a tonic server. Trailers must stay trailers, statuses and streams must
//! pass unchanged, and many calls must share few upstream connections.

use std::time::Duration;

use edgeplane_tests::harness::{guard, TestProxy};
use edgeplane_tests::upstream::{EchoReply, EchoRequest, GrpcClient, GrpcUpstream};
use futures_util::stream;
use http::uri::PathAndQuery;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;
use tonic_prost::ProstCodec;

/// Workers of the test proxy ([`TestProxy::start`]).
const PROXY_WORKERS: usize = 2;
/// How long a test waits for a streamed reply before calling it a hang.
const LIMIT: Duration = Duration::from_secs(10);

fn start_proxy(upstream: &GrpcUpstream) -> TestProxy {
    let yaml = format!(
        r#"
listeners:
  - name: grpc
    bind: 127.0.0.1:0
    protocol: auto
    routes:
      - cluster: grpc
clusters:
  - name: grpc
    protocol: http2
    endpoints: [ "{}" ]
"#,
        upstream.addr()
    );
    TestProxy::start(&yaml)
}

async fn client(proxy: &TestProxy) -> GrpcClient {
    GrpcClient::connect(proxy.addr("grpc")).await.expect("gRPC channel to the proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_keeps_headers_and_trailers() {
    guard(async {
        let upstream = GrpcUpstream::start().await;
        let proxy = start_proxy(&upstream);
        let mut client = client(&proxy).await;

        let (reply, trailers) = client.unary("hello via proxy", false).await.expect("unary call");
        assert_eq!(reply, "hello via proxy");
        assert_eq!(trailers.get("x-trailer").map(|v| v.to_str().unwrap()), Some("Unary"));
        assert_eq!(trailers.get("grpc-status").map(|v| v.to_str().unwrap()), Some("0"));

        let response = client.unary_response("headers").await.expect("unary call");
        assert_eq!(response.get_ref().message, "headers");
        assert_eq!(response.metadata().get("x-upstream").map(|v| v.to_str().unwrap()), Some("grpc"));
        assert!(response.metadata().get("x-trailer").is_none(), "the x-trailer trailer was moved into the headers");
        assert_eq!(upstream.connections(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_message_and_trailers_pass_through() {
    guard(async {
        let upstream = GrpcUpstream::start().await;
        let proxy = start_proxy(&upstream);
        let mut client = client(&proxy).await;

        let status = client.unary("please fail", true).await.expect_err("the upstream fails this call");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), "asked to fail");
        assert_eq!(status.metadata().get("x-trailer").map(|v| v.to_str().unwrap()), Some("Unary"));

        // The channel is fine after an error status.
        let (reply, _) = client.unary("after the error", false).await.expect("unary call");
        assert_eq!(reply, "after the error");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_of_100_messages_with_trailer() {
    guard(async {
        let upstream = GrpcUpstream::start().await;
        let proxy = start_proxy(&upstream);
        let mut client = client(&proxy).await;

        let (messages, trailers) = client.server_stream(100).await.expect("server streaming call");
        let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(messages, expected);
        assert_eq!(trailers.get("x-trailer").map(|v| v.to_str().unwrap()), Some("ServerStream"));
        assert_eq!(trailers.get("grpc-status").map(|v| v.to_str().unwrap()), Some("0"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_chat_of_50_messages() {
    guard(async {
        let upstream = GrpcUpstream::start().await;
        let proxy = start_proxy(&upstream);
        let mut client = client(&proxy).await;

        let sent: Vec<String> = (0..50).map(|i| format!("chat message {i}")).collect();
        let (echoes, trailers) = client.chat(sent.clone()).await.expect("bidi streaming call");
        assert_eq!(echoes, sent);
        assert_eq!(trailers.get("x-trailer").map(|v| v.to_str().unwrap()), Some("Chat"));
        assert_eq!(trailers.get("grpc-status").map(|v| v.to_str().unwrap()), Some("0"));

        // In lockstep: each message is sent only after the previous echo came
        // back, so the proxy must stream both directions as they go rather
        // than wait for the end of the request.
        let channel = Channel::from_shared(format!("http://{}", proxy.addr("grpc")))
            .expect("valid URI")
            .connect()
            .await
            .expect("gRPC channel to the proxy");
        let mut grpc = tonic::client::Grpc::new(channel);
        let (outgoing, requests) = mpsc::channel::<EchoRequest>(1);
        let requests = stream::unfold(requests, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        grpc.ready().await.expect("channel ready");
        let response = grpc
            .streaming(
                tonic::Request::new(requests),
                PathAndQuery::from_static("/test.Echo/Chat"),
                ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
            .expect("Chat call");
        let mut replies = response.into_inner();
        for i in 0..50 {
            let message = format!("lockstep {i}");
            outgoing.send(EchoRequest { message: message.clone(), fail: false }).await.expect("request stream open");
            let reply = tokio::time::timeout(LIMIT, replies.message())
                .await
                .unwrap_or_else(|_| panic!("no echo of message {i} while the request stream is still open"))
                .expect("reply")
                .expect("a reply, not the end of the stream");
            assert_eq!(reply.message, message);
        }
        drop(outgoing);
        assert!(replies.message().await.expect("clean end").is_none());
        let trailers = replies.trailers().await.expect("trailers").expect("some trailers");
        assert_eq!(trailers.get("x-trailer").map(|v| v.to_str().unwrap()), Some("Chat"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_unary_calls_share_few_upstream_connections() {
    guard(async {
        let upstream = GrpcUpstream::start().await;
        let proxy = start_proxy(&upstream);
        // Several client connections, so that both proxy workers take calls.
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(client(&proxy).await);
        }
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..100 {
            let mut client = clients[i % clients.len()].clone();
            calls.spawn(async move {
                let message = format!("call {i}");
                let (reply, trailers) = client.unary(&message, false).await.map_err(|s| format!("call {i}: {s:?}"))?;
                if reply != message {
                    return Err(format!("call {i}: reply {reply:?}"));
                }
                if trailers.get("x-trailer").is_none() {
                    return Err(format!("call {i}: no x-trailer trailer"));
                }
                Ok::<_, String>(i)
            });
        }
        let mut done = Vec::new();
        while let Some(result) = calls.join_next().await {
            done.push(result.expect("call task").unwrap_or_else(|e| panic!("{e}")));
        }
        done.sort_unstable();
        assert_eq!(done, (0..100).collect::<Vec<_>>());
        let connections = upstream.connections();
        assert!(connections >= 1);
        assert!(
            connections <= 2 * PROXY_WORKERS,
            "{connections} upstream connections for 100 calls (expected HTTP/2 multiplexing)"
        );
    })
    .await;
}
