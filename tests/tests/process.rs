//! The real `edgeplane` binary as a child process: graceful drain on
//! SIGTERM (HTTP/1 and HTTP/2), the drain deadline, a second SIGTERM, SIGHUP
//! and file-watch reloads, start-up failures, the `check` and `schema`
//! subcommands, environment fallbacks and the access log on stdout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeplane_tests::client::{self, Http1Conn};
use edgeplane_tests::harness::{cluster, guard};
use edgeplane_tests::mqtt_wire::{connect_as, connect_packet};
use edgeplane_tests::process::{binary_async, run_command, ProxyProcess, Signal};
use edgeplane_tests::upstream::{publish, ClientOptions, HttpProto, HttpUpstream, Mosquitto, MqttVersion};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Hang guard for waits on the process (log lines, exit); a test's overall
/// guard is [`guard`].
const WAIT: Duration = Duration::from_secs(20);

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", "test.local").body(Full::new(Bytes::new())).unwrap()
}

/// One listener `web` sending everything to cluster `app` at `upstream`.
fn config(top: &str, upstream: SocketAddr) -> String {
    format!(
        "{top}listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n      - cluster: app\nclusters:\n{}",
        cluster("app", &[upstream])
    )
}

/// Sends `GET path` on its own new HTTP/1.1 connection, from a task.
fn spawn_request(addr: SocketAddr, path: &'static str) -> JoinHandle<Result<Response<Bytes>, String>> {
    tokio::spawn(async move {
        let mut conn = Http1Conn::try_connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        conn.send(get(path)).await.map_err(|e| format!("send: {e}"))
    })
}

/// Asserts that a TCP connection to `addr` is refused.
async fn assert_refused(addr: SocketAddr, when: &str) {
    match TcpStream::connect(addr).await {
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "{when}: {error}"),
        Ok(_) => panic!("{when}: a new connection to {addr} was accepted"),
    }
}

/// An HTTP/1.1 upstream that holds every request until the test opens the
/// gate: a request stays in flight exactly as long as a test needs, with no
/// timing involved. Answers `200 released\n` with `x-upstream: gated`.
struct Gate {
    addr: SocketAddr,
    arrivals: Arc<watch::Sender<usize>>,
    open: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Gate {
    async fn start() -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate upstream");
        let addr = listener.local_addr().unwrap();
        let arrivals = Arc::new(watch::Sender::new(0usize));
        let open = Arc::new(watch::Sender::new(false));
        let (count, gate) = (arrivals.clone(), open.clone());
        let task = tokio::spawn(async move {
            // Dropping the set (when the task is aborted) aborts the connections.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (count, gate) = (count.clone(), gate.clone());
                let service = service_fn(move |_request: Request<Incoming>| {
                    let (count, gate) = (count.clone(), gate.clone());
                    async move {
                        count.send_modify(|n| *n += 1);
                        let _ = gate.subscribe().wait_for(|open| *open).await;
                        let response = Response::builder()
                            .header("x-upstream", "gated")
                            .body(Full::new(Bytes::from_static(b"released\n")))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                connections.spawn(async move {
                    let io = TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Gate { addr, arrivals, open, task }
    }

    async fn wait_for_arrivals(&self, n: usize) {
        let _ = self.arrivals.subscribe().wait_for(|count| *count >= n).await;
    }

    fn arrivals(&self) -> usize {
        *self.arrivals.borrow()
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_without_failures() {
    binary_async().await;
    guard(async {
        let upstream = HttpUpstream::start("app", HttpProto::Http1).await;
        // `/held` goes to a gate: it keeps the process alive (draining) until
        // the test has checked that the listener refuses new connections.
        let gate = Gate::start().await;
        let yaml = format!(
            r#"listeners:
  - name: web
    bind: 127.0.0.1:0
    routes:
      - match: {{ path: {{ prefix: /held }} }}
        cluster: gate
      - cluster: app
clusters:
{}{}"#,
            cluster("app", &[upstream.addr()]),
            cluster("gate", &[gate.addr])
        );
        let mut proxy = ProxyProcess::spawn(&yaml, &[]).await;
        let addr = proxy.addr("web");
        let held = spawn_request(addr, "/held");
        let requests: Vec<_> = (0..20).map(|_| spawn_request(addr, "/delay/500")).collect();
        // All of them reached their upstreams, so the proxy has accepted all 21 connections.
        upstream.wait_for_requests(20).await;
        gate.wait_for_arrivals(1).await;

        proxy.signal(Signal::Term);
        for (i, request) in requests.into_iter().enumerate() {
            let response = request.await.unwrap().unwrap_or_else(|e| panic!("request {i} failed during drain: {e}"));
            assert_eq!(response.status(), StatusCode::OK, "request {i}");
            let body: Value = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(body["path"], "/delay/500");
        }
        // The listener is closed by the workers some time after the signal,
        // asynchronously, and nothing the proxy shows marks that moment (its
        // `draining` log line can come before it: measured up to several ms
        // under load). Half a second after the signal, with the process held
        // alive by the `/held` request, it must be closed.
        assert_eq!(proxy.exit_status(), None, "the held request should keep edgeplane draining");
        assert_refused(addr, "during the drain, after the 20 responses").await;
        let (status, _, _) = client::get(proxy.admin(), "localhost", "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "still draining");

        gate.open();
        let response = held.await.unwrap().expect("the held request completes");
        assert_eq!(response.status(), StatusCode::OK);
        let status = proxy.wait_exit(WAIT).await.expect("edgeplane did not exit after the drain");
        assert!(status.success(), "exit status after a graceful drain: {status}");
        assert_eq!(upstream.requests(), 20);
        assert_eq!(gate.arrivals(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_while_draining() {
    binary_async().await;
    guard(async {
        // A request held by the gate keeps the drain going for as long as
        // the test looks at it (a `/delay/1500` request would too, but only
        // for as long as 1.5 s happens to be enough).
        let gate = Gate::start().await;
        let mut proxy = ProxyProcess::spawn(&config("", gate.addr), &[]).await;
        let (status, _, body) = client::get(proxy.admin(), "localhost", "/ready").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ready\n"[..]));

        let in_flight = spawn_request(proxy.addr("web"), "/held");
        gate.wait_for_arrivals(1).await;
        let mark = proxy.stderr_mark();
        proxy.signal(Signal::Term);
        // The flip to "draining" happens on the proxy's control thread after
        // the signal arrives, i.e. asynchronously. Rather than re-asking
        // `/ready` until it changes, wait for the `draining` log event: the
        // control thread logs it only after it has set the draining state
        // that `/ready` reports, so one request afterwards must see 503.
        proxy.wait_for_log(mark, "draining", WAIT).await;
        let (status, _, body) = client::get(proxy.admin(), "localhost", "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "/ready during the drain");
        assert_eq!(&body[..], b"draining\n");
        let (status, _, _) = client::get(proxy.admin(), "localhost", "/live").await;
        assert_eq!(status, StatusCode::OK, "/live during the drain");

        gate.open();
        let response = in_flight.await.unwrap().expect("the request in flight completes");
        assert_eq!(response.status(), StatusCode::OK);
        let status = proxy.wait_exit(WAIT).await.expect("edgeplane did not exit after the drain");
        assert!(status.success(), "{status}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_response_during_drain_has_connection_close() {
    binary_async().await;
    guard(async {
        let gate = Gate::start().await;
        let mut proxy = ProxyProcess::spawn(&config("", gate.addr), &[]).await;
        let addr = proxy.addr("web");
        let request = tokio::spawn(async move {
            let mut conn = Http1Conn::connect(addr).await;
            let response = conn.send(get("/held")).await;
            (response, conn)
        });
        gate.wait_for_arrivals(1).await;
        let mark = proxy.stderr_mark();
        proxy.signal(Signal::Term);
        // The response head is made after this point: the gate opens below.
        proxy.wait_for_log(mark, "draining", WAIT).await;
        gate.open();

        let (response, mut conn) = request.await.unwrap();
        let response = response.expect("the request in flight completes");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(&response.body()[..], b"released\n");
        assert_eq!(
            response.headers().get("connection").map(|v| v.to_str().unwrap().to_ascii_lowercase()),
            Some("close".to_owned()),
            "response headers: {:?}",
            response.headers()
        );
        // The connection is not reused: a second request cannot be sent on it.
        let again = conn.send(get("/again")).await;
        assert!(again.is_err(), "a second request on a `connection: close` connection: {again:?}");
        assert_eq!(gate.arrivals(), 1);
        let status = proxy.wait_exit(WAIT).await.expect("edgeplane did not exit after the drain");
        assert!(status.success(), "{status}");
    })
    .await;
}

/// A minimal HTTP/2 client on raw frames, to see exactly what the proxy
/// sends (GOAWAY, its last stream id) and to open a stream after it.
mod h2raw {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;

    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;

    pub const NO_ERROR: u32 = 0x0;
    pub const REFUSED_STREAM: u32 = 0x7;

    #[derive(Debug, Clone)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The header block of a HEADERS frame (padding and priority removed).
        pub fn header_block(&self) -> &[u8] {
            let mut block = &self.payload[..];
            let mut padding = 0;
            if self.flags & PADDED != 0 {
                padding = usize::from(block[0]);
                block = &block[1..];
            }
            if self.flags & PRIORITY != 0 {
                block = &block[5..];
            }
            &block[..block.len() - padding]
        }

        /// `:status` of a response HEADERS frame, when it is the first field
        /// and encoded from the static table, as every HPACK encoder does
        /// for 200 (index 8).
        pub fn status(&self) -> Option<u16> {
            let first = *self.header_block().first()?;
            if first & 0x80 == 0 {
                return None;
            }
            [(8, 200), (9, 204), (10, 206), (11, 304), (12, 400), (13, 404), (14, 500)]
                .iter()
                .find(|(index, _)| *index == first & 0x7f)
                .map(|(_, status)| *status)
        }

        /// A 32-bit big-endian word of the payload.
        pub fn word(&self, at: usize) -> u32 {
            u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
        }
    }

    pub struct RawH2 {
        stream: TcpStream,
    }

    impl RawH2 {
        /// Connects and sends the client preface and an empty SETTINGS frame.
        pub async fn connect(addr: SocketAddr) -> RawH2 {
            let stream = TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).unwrap();
            let mut client = RawH2 { stream };
            client.stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
            client.send(SETTINGS, 0, 0, &[]).await.unwrap();
            client
        }

        pub async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> std::io::Result<()> {
            let len = u32::try_from(payload.len()).unwrap();
            let mut frame = Vec::with_capacity(9 + payload.len());
            frame.extend_from_slice(&len.to_be_bytes()[1..]);
            frame.extend_from_slice(&[kind, flags]);
            frame.extend_from_slice(&stream.to_be_bytes());
            frame.extend_from_slice(payload);
            self.stream.write_all(&frame).await
        }

        /// `GET path` on a new stream, without a body.
        pub async fn get(&mut self, stream: u32, authority: &str, path: &str) {
            // HPACK: `:method GET` and `:scheme http` from the static table
            // (indexes 2 and 6), `:path` and `:authority` as literals
            // without indexing with a static-table name (indexes 4 and 1).
            let mut block = vec![0x82, 0x86];
            for (name_index, value) in [(0x04, path), (0x01, authority)] {
                assert!(value.len() < 127);
                block.extend_from_slice(&[name_index, value.len() as u8]);
                block.extend_from_slice(value.as_bytes());
            }
            self.send(HEADERS, END_STREAM | END_HEADERS, stream, &block).await.expect("send HEADERS");
        }

        /// The next frame, or `None` once the connection is closed (EOF or
        /// reset). SETTINGS and PING frames are acknowledged here, as a
        /// client must, and returned too.
        pub async fn next(&mut self) -> Option<Frame> {
            let mut head = [0u8; 9];
            self.stream.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.ok()?;
            let frame = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
                payload,
            };
            // The peer may have closed already; then the next read says so.
            if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                let _ = self.send(SETTINGS, ACK, 0, &[]).await;
            }
            if frame.kind == PING && frame.flags & ACK == 0 {
                let _ = self.send(PING, ACK, 0, &frame.payload).await;
            }
            Some(frame)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_in_flight_completes_and_new_stream_after_goaway_is_refused() {
    use h2raw::*;
    binary_async().await;
    guard(async {
        let gate = Gate::start().await;
        let mut proxy = ProxyProcess::spawn(&config("", gate.addr), &[]).await;
        let mut h2 = RawH2::connect(proxy.addr("web")).await;
        h2.get(1, "test.local", "/first").await;
        gate.wait_for_arrivals(1).await;
        proxy.signal(Signal::Term);

        // A graceful GOAWAY comes in two steps (RFC 9113 §6.8): first with
        // last-stream-id 2^31-1 and a PING, then, once the PING is answered,
        // with the id of the last stream the server will process.
        let mut frames = Vec::new();
        let mut goaways = Vec::new();
        loop {
            let frame = h2.next().await.unwrap_or_else(|| panic!("connection closed before GOAWAY: {frames:?}"));
            if frame.kind == GOAWAY {
                let (last, code) = (frame.word(0) & 0x7fff_ffff, frame.word(4));
                goaways.push((last, code));
                if last < 3 {
                    break;
                }
            } else {
                frames.push(frame);
            }
        }
        assert_eq!(goaways.last(), Some(&(1, NO_ERROR)), "GOAWAY frames (last stream id, error): {goaways:?}");

        // A new stream after GOAWAY. The PING's ACK tells that the proxy has
        // read the HEADERS (frames are processed in order) before the stream
        // in flight completes and the connection may close.
        h2.get(3, "test.local", "/after-goaway").await;
        h2.send(PING, 0, 0, b"after-ga").await.expect("send PING");
        loop {
            let frame = h2.next().await.unwrap_or_else(|| panic!("connection closed early: {frames:?}"));
            if frame.kind == PING && frame.flags & ACK != 0 && frame.payload == b"after-ga" {
                break;
            }
            frames.push(frame);
        }

        gate.open();
        // Until the proxy closes the connection (the hang guard catches a proxy that does not).
        while let Some(frame) = h2.next().await {
            frames.push(frame);
        }

        let on = |stream: u32| frames.iter().filter(move |f| f.stream == stream);
        let headers: Vec<_> = on(1).filter(|f| f.kind == HEADERS).collect();
        assert_eq!(headers.len(), 1, "stream 1 frames: {:?}", on(1).collect::<Vec<_>>());
        assert_eq!(headers[0].status(), Some(200), "stream 1 HEADERS: {:?}", headers[0]);
        let body: Vec<u8> = on(1).filter(|f| f.kind == DATA).flat_map(|f| f.payload.clone()).collect();
        assert_eq!(body, b"released\n");
        assert!(
            on(1).any(|f| matches!(f.kind, DATA | HEADERS) && f.flags & END_STREAM != 0),
            "stream 1 never ended: {:?}",
            on(1).collect::<Vec<_>>()
        );
        // Stream 3: no response; if it was reset, with REFUSED_STREAM.
        assert!(!on(3).any(|f| f.kind == HEADERS), "stream 3 opened after GOAWAY got a response: {frames:?}");
        for reset in on(3).filter(|f| f.kind == RST_STREAM) {
            assert_eq!(reset.word(0), REFUSED_STREAM, "stream 3 reset: {reset:?}");
        }
        assert_eq!(gate.arrivals(), 1, "the stream opened after GOAWAY reached the upstream");
        let status = proxy.wait_exit(WAIT).await.expect("edgeplane did not exit after the drain");
        assert!(status.success(), "{status}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_closes_hung_requests() {
    binary_async().await;
    guard(async {
        let upstream = HttpUpstream::start("app", HttpProto::Http1).await;
        let mut proxy = ProxyProcess::spawn(&config("drain_timeout: 500ms\n", upstream.addr()), &[]).await;
        let hung = spawn_request(proxy.addr("web"), "/hang");
        upstream.wait_for_requests(1).await;

        let signalled = Instant::now();
        proxy.signal(Signal::Term);
        let status = proxy.wait_exit(WAIT).await.expect("edgeplane did not exit at the drain deadline");
        let elapsed = signalled.elapsed();
        println!("exit {elapsed:?} after SIGTERM with drain_timeout 500ms");
        assert!(status.success(), "{status}");
        // The drain timer starts after the signal, so this bound is safe.
        assert!(elapsed >= Duration::from_millis(450), "exited before the drain deadline: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "exited long after the drain deadline: {elapsed:?}");
        assert!(
            proxy.log_events().iter().any(|e| e["message"] == "drain timeout: closing remaining connections"),
            "no drain timeout warning"
        );
        let result = tokio::time::timeout(WAIT, hung).await.expect("the hung client's connection stayed open");
        let result = result.unwrap();
        assert!(result.is_err(), "the hung request got a response: {result:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_exits_at_once() {
    binary_async().await;
    guard(async {
        let upstream = HttpUpstream::start("app", HttpProto::Http1).await;
        let mut proxy = ProxyProcess::spawn(&config("drain_timeout: 30s\n", upstream.addr()), &[]).await;
        let hung = spawn_request(proxy.addr("web"), "/hang");
        upstream.wait_for_requests(1).await;

        let mark = proxy.stderr_mark();
        proxy.signal(Signal::Term);
        // The first signal has been handled (two pending signals of one kind
        // would merge into one).
        proxy.wait_for_log(mark, "draining", WAIT).await;
        let signalled = Instant::now();
        proxy.signal(Signal::Term);
        let status = proxy.wait_exit(Duration::from_secs(5)).await.expect("no exit within 5 s of the second SIGTERM");
        println!("exit {:?} after the second SIGTERM", signalled.elapsed());
        assert!(status.success(), "{status}");
        assert!(
            proxy.log_events().iter().any(|e| e["message"] == "second shutdown signal: exiting now"),
            "no log of the second signal"
        );
        let result = tokio::time::timeout(WAIT, hung).await.expect("the hung client's connection stayed open");
        assert!(result.unwrap().is_err(), "the hung request got a response");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_right_after_the_ready_line_are_handled() {
    binary_async().await;
    guard(async {
        // The ready line tells supervisors and scripts that the process is
        // up; a SIGTERM or SIGHUP sent at once must then be handled (drain,
        // reload), not kill the process. Whether a proxy gets this wrong
        // depends on timing, so try a number of times: a correct proxy
        // passes every time.
        const ATTEMPTS: usize = 40;
        let mut failures = Vec::new();
        for attempt in 0..ATTEMPTS {
            let mut proxy = ProxyProcess::spawn_at_ready_line(&valid_config(), &["--no-watch"]).await;
            proxy.signal(Signal::Term);
            let status = proxy.wait_exit(WAIT).await.expect("no exit after SIGTERM");
            if !status.success() {
                failures.push(format!("SIGTERM attempt {attempt}: {status}"));
            }

            let mut proxy = ProxyProcess::spawn_at_ready_line(&valid_config(), &["--no-watch"]).await;
            let mark = proxy.stderr_mark();
            proxy.signal(Signal::Hup);
            if proxy.try_wait_for_log(mark, "signal received", WAIT).await.is_none() {
                let status = proxy.wait_exit(WAIT).await.expect("no `signal received` log, and no exit either");
                failures.push(format!("SIGHUP attempt {attempt}: {status}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} signals sent right after `edgeplane ready` ended the process:\n{}",
            failures.len(),
            2 * ATTEMPTS,
            failures.join("\n")
        );
    })
    .await;
}

/// `GET /` through the proxy on a fresh connection: the `x-upstream` that answered.
async fn answered_by(addr: SocketAddr) -> String {
    let (status, headers, _) = client::get(addr, "test.local", "/").await;
    assert_eq!(status, StatusCode::OK);
    headers.get("x-upstream").expect("x-upstream").to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_with_no_watch() {
    binary_async().await;
    guard(async {
        let a = HttpUpstream::start("a", HttpProto::Http1).await;
        let b = HttpUpstream::start("b", HttpProto::Http1).await;
        let mut proxy = ProxyProcess::spawn(&config("", a.addr()), &["--no-watch"]).await;
        let addr = proxy.addr("web");
        assert_eq!(answered_by(addr).await, "a");

        let mark = proxy.stderr_mark();
        proxy.write_config(&config("", b.addr()));
        proxy.signal(Signal::Hup);
        let event = proxy.wait_for_log(mark, "config reloaded", WAIT).await;
        assert_eq!(event["generation"], 2, "{event}");
        assert_eq!(answered_by(addr).await, "b");
        assert_eq!(proxy.addr("web"), addr);
        let (_, _, clusters) = client::get(proxy.admin(), "localhost", "/clusters").await;
        let clusters: Value = serde_json::from_slice(&clusters).unwrap();
        assert_eq!(clusters["clusters"][0]["endpoints"][0]["address"], b.addr().to_string());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_change_is_reloaded_without_a_signal() {
    binary_async().await;
    guard(async {
        let a = HttpUpstream::start("a", HttpProto::Http1).await;
        let b = HttpUpstream::start("b", HttpProto::Http1).await;
        let proxy = ProxyProcess::spawn(&config("", a.addr()), &[]).await;
        let addr = proxy.addr("web");
        assert_eq!(answered_by(addr).await, "a");

        let mark = proxy.stderr_mark();
        proxy.write_config(&config("", b.addr()));
        let event = proxy.wait_for_log(mark, "config reloaded", WAIT).await;
        assert_eq!(event["generation"], 2, "{event}");
        assert_eq!(answered_by(addr).await, "b");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_fails_at_start_naming_the_path() {
    binary_async().await;
    guard(async {
        let yaml = "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n      - cluster: missing\n";
        let failure = match ProxyProcess::try_spawn(yaml, &[]).await {
            Ok(proxy) => panic!("edgeplane started with an invalid config (pid {})", proxy.pid()),
            Err(failure) => failure,
        };
        let status = failure.status.expect("edgeplane exited by itself");
        assert!(!status.success(), "exit status: {status}");
        let stderr = failure.stderr_text();
        assert!(
            stderr.contains("listeners[0].routes[0].cluster: unknown cluster \"missing\""),
            "stderr does not name the bad path:\n{stderr}"
        );
    })
    .await;
}

const SEVERAL_ERRORS: &str = r#"
drain_timeout: soon
listeners:
  - name: web
    bind: nonsense
    routes:
      - cluster: missing
clusters:
  - name: "bad name!"
    endpoints: [ "127.0.0.1:1" ]
"#;

fn valid_config() -> String {
    config("", "127.0.0.1:1".parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_a_valid_file() {
    binary_async().await;
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("good.yaml");
        std::fs::write(&path, valid_config()).unwrap();
        let out = run_command(&["check", "--config", path.to_str().unwrap()], &[]).await;
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(out.stdout.trim_end(), format!("{}: ok", path.display()), "{out:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_error_with_its_path() {
    binary_async().await;
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, SEVERAL_ERRORS).unwrap();
        let out = run_command(&["check", "--config", path.to_str().unwrap()], &[]).await;
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stderr.contains(&format!("{}: 4 error(s)", path.display())), "{}", out.stderr);
        let expected = [
            "drain_timeout: invalid duration \"soon\"",
            "listeners[0].bind: invalid address \"nonsense\"",
            "listeners[0].routes[0].cluster: unknown cluster \"missing\"",
            "clusters[0].name: invalid name \"bad name!\"",
        ];
        for error in expected {
            assert!(
                out.stderr.lines().any(|line| line.trim_start().starts_with(error)),
                "missing {error:?} in:\n{}",
                out.stderr
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_prints_the_json_schema() {
    binary_async().await;
    guard(async {
        let out = run_command(&["schema"], &[]).await;
        assert!(out.status.success(), "{out:?}");
        let schema: Value = serde_json::from_str(&out.stdout).expect("schema output is JSON");
        assert!(schema["properties"]["listeners"].is_object(), "no properties.listeners in {schema:#}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_path_from_environment() {
    binary_async().await;
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        std::fs::write(&good, valid_config()).unwrap();
        let out = run_command(&["check"], &[("EDGEPLANE_CONFIG", good.to_str().unwrap())]).await;
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(out.stdout.contains(": ok"), "{out:?}");
        // The variable is really read: a bad file named by it fails.
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, SEVERAL_ERRORS).unwrap();
        let out = run_command(&["check"], &[("EDGEPLANE_CONFIG", bad.to_str().unwrap())]).await;
        assert_eq!(out.status.code(), Some(1), "{out:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    binary_async().await;
    guard(async {
        let upstream = HttpUpstream::start("app", HttpProto::Http1).await;
        let yaml = format!(
            r#"access_log: {{ enabled: true }}
listeners:
  - name: web
    bind: 127.0.0.1:0
    routes:
      - match: {{ path: {{ prefix: /api/ }} }}
        cluster: api
      - match: {{ path: {{ prefix: /status/ }} }}
        cluster: site
clusters:
{}{}"#,
            cluster("api", &[upstream.addr()]),
            cluster("site", &[upstream.addr()])
        );
        let proxy = ProxyProcess::spawn(&yaml, &[]).await;
        let addr = proxy.addr("web");
        // (path, status, cluster)
        let cases = [("/api/users?page=2", 200, "api"), ("/status/418", 418, "site"), ("/nowhere", 404, "")];
        for (path, status, _) in cases {
            let (got, _, _) = client::get(addr, "test.local", path).await;
            assert_eq!(got.as_u16(), status, "{path}");
        }
        // Each line is queued before its response is sent, so all three exist now or soon.
        let lines = proxy.wait_for_stdout_lines(cases.len(), WAIT).await;
        assert_eq!(lines.len(), cases.len(), "{lines:#?}");
        let records: Vec<Value> =
            lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
        for (path, status, cluster) in cases {
            let matching: Vec<_> = records.iter().filter(|r| r["path"] == path).collect();
            assert_eq!(matching.len(), 1, "lines for {path}: {records:#?}");
            let record = matching[0];
            assert_eq!(record["kind"], "http", "{record}");
            assert_eq!(record["status"], status, "{record}");
            assert_eq!(record["listener"], "web", "{record}");
            assert_eq!(record["cluster"], cluster, "{record}");
            assert_eq!(record["method"], "GET", "{record}");
            assert_eq!(record["authority"], "test.local", "{record}");
            if cluster.is_empty() {
                assert_eq!(record["local_reply"], "no_route", "{record}");
                assert!(record["upstream"].is_null(), "{record}");
            } else {
                assert_eq!(record["upstream"], upstream.addr().to_string(), "{record}");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_line_per_mqtt_connection() {
    binary_async().await;
    guard(async {
        let broker = Mosquitto::start().await;
        let yaml = format!(
            r#"access_log: {{ enabled: true }}
listeners:
  - name: mqtt
    bind: 127.0.0.1:0
    protocol: mqtt
    mqtt:
      client_ids: {{ deny: [ {{ prefix: "banned-" }} ] }}
      # An ACL puts the broker's side through the ACL relay; it counts too.
      acl: {{ rules: [ {{ permission: deny, topics: ["secret/#"] }} ] }}
    routes: [ {{ cluster: broker }} ]
clusters:
{}"#,
            cluster("broker", &[broker.addr()])
        );
        let proxy = ProxyProcess::spawn(&yaml, &[]).await;
        let addr = proxy.addr("mqtt");
        let options = ClientOptions::default().version(MqttVersion::V5).qos(1).id("meter-1").user("alice");
        publish(addr, &options, "meters/1", "42", false).await;
        let (_, connack) = connect_as(addr, &connect_packet(4, "banned-2", 60)).await;
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x02]);
        let lines = proxy.wait_for_stdout_lines(2, WAIT).await;
        let records: Vec<Value> =
            lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
        let by_id = |id: &str| {
            records.iter().find(|r| r["client_id"] == id).unwrap_or_else(|| panic!("no line for {id}: {records:#?}"))
        };
        let relayed = by_id("meter-1");
        assert_eq!(relayed["kind"], "mqtt", "{relayed}");
        assert_eq!(relayed["username"], "alice", "{relayed}");
        assert_eq!(relayed["protocol"], "5", "{relayed}");
        assert_eq!(relayed["cluster"], "broker", "{relayed}");
        assert_eq!(relayed["upstream"], broker.addr().to_string(), "{relayed}");
        // CONNECT, PUBLISH, DISCONNECT in; CONNACK, PUBACK out.
        assert_eq!((relayed["packets_in"].as_u64(), relayed["publishes_in"].as_u64()), (Some(3), Some(1)), "{relayed}");
        assert_eq!(relayed["packets_out"], 2, "{relayed}");
        assert!(relayed["error"].is_null(), "{relayed}");
        let refused = by_id("banned-2");
        assert_eq!(refused["protocol"], "3.1.1", "{refused}");
        assert_eq!(refused["error"], "client_id_denied", "{refused}");
        assert!(refused["upstream"].is_null(), "{refused}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_time_is_reported() {
    binary_async().await;
    guard(async {
        for run in 1..=3 {
            let proxy = ProxyProcess::spawn(&valid_config(), &[]).await;
            // Reported only: timing depends on the machine.
            println!("start-up {run}: spawn → ready in {:?} (pid {})", proxy.startup_time(), proxy.pid());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_holds_until_ready_and_quit_ends_the_proxy() {
    binary_async().await;
    guard(async {
        // Nothing listening: wait-ready gives up after its timeout with the reason.
        let free = edgeplane_tests::harness::free_port();
        let admin = format!("127.0.0.1:{free}");
        let out = run_command(&["wait-ready", "--admin", &admin, "--timeout", "300ms"], &[]).await;
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stderr.contains("not ready after") && out.stderr.contains("connect"), "{}", out.stderr);

        let upstream = HttpUpstream::start("app", HttpProto::Http1).await;
        let mut proxy = ProxyProcess::spawn(&config("", upstream.addr()), &[]).await;
        let admin = proxy.admin().to_string();
        let out = run_command(&["wait-ready", "--admin", &admin, "--timeout", "10s"], &[]).await;
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.contains("is ready"), "{}", out.stdout);

        // A Job's last step: the sidecar exits at once, successfully.
        let out = run_command(&["quit", "--admin", &admin], &[]).await;
        assert!(out.status.success(), "{out:?}");
        let status = proxy.wait_exit(Duration::from_secs(10)).await.expect("no exit after quit");
        assert!(status.success(), "{status}");
    })
    .await;
}
