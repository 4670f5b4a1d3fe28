//! Active health checks of one upstream endpoint, in the spirit of Envoy's `health_checks` and nginx plus
//! `health_check`: a TCP connect probe or an HTTP/1.1 `GET` whose status must fall in configured ranges, run on a
//! jittered interval, with consecutive-result thresholds deciding when the endpoint's state flips.
//!
//! The state machine ([`Thresholds`]) and the scheduler ([`run_with`]) are independent of sockets so they can be
//! tested under paused tokio time; [`run`] only glues them to [`probe`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Status ranges accepted when a probe configures none: any success or redirect, as nginx does by default.
pub const DEFAULT_EXPECTED: [(u16, u16); 1] = [(200, 399)];

/// A response head beyond this is not a health endpoint we want to keep buffering for.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// A hostile upstream could otherwise keep us parsing `100 Continue` heads until the timeout.
const MAX_INTERIM: usize = 16;
/// A zero interval would turn the loop into a busy-spin hammering the upstream.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const USER_AGENT: &str = "edgeplane-health-check";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// Healthy when a TCP connect succeeds within the timeout.
    Tcp,
    /// Healthy when `GET {path}` answers with a status inside one of the inclusive `expected` ranges
    /// (an empty list means [`DEFAULT_EXPECTED`]).
    Http { path: String, host: Option<String>, expected: Vec<(u16, u16)> },
}

impl ProbeKind {
    /// An HTTP probe with the default Host (the endpoint address) and the default expected statuses.
    pub fn http(path: impl Into<String>) -> Self {
        ProbeKind::Http { path: path.into(), host: None, expected: DEFAULT_EXPECTED.to_vec() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSettings {
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub jitter: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFailure {
    /// Connect plus exchange did not finish within the probe timeout.
    Timeout,
    Connect(io::ErrorKind),
    /// A final response arrived but its status is outside the expected ranges.
    Status(u16),
    /// The upstream spoke something other than a usable HTTP/1.x response head (or broke the connection mid-way).
    Protocol(&'static str),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Timeout => f.write_str("health check timed out"),
            ProbeFailure::Connect(kind) => write!(f, "health check connect failed: {kind}"),
            ProbeFailure::Status(status) => write!(f, "health check got unexpected status {status}"),
            ProbeFailure::Protocol(what) => write!(f, "health check protocol error: {what}"),
        }
    }
}

impl std::error::Error for ProbeFailure {}

/// Probes `addr` once from a socket with `mark` (`SO_MARK`, 0 for none).
/// The whole probe, connect included, is bounded by `timeout`.
pub async fn probe(addr: SocketAddr, mark: u32, kind: &ProbeKind, timeout: Duration) -> Result<(), ProbeFailure> {
    tokio::time::timeout(timeout, probe_unbounded(addr, mark, kind)).await.unwrap_or(Err(ProbeFailure::Timeout))
}

async fn probe_unbounded(addr: SocketAddr, mark: u32, kind: &ProbeKind) -> Result<(), ProbeFailure> {
    let stream = crate::upstream::connect_tcp(addr, mark).await.map_err(|e| ProbeFailure::Connect(e.kind()))?;
    match kind {
        ProbeKind::Tcp => Ok(()),
        ProbeKind::Http { path, host, expected } => http_exchange(stream, addr, path, host.as_deref(), expected).await,
    }
}

async fn http_exchange(
    mut stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    expected: &[(u16, u16)],
) -> Result<(), ProbeFailure> {
    let request = build_request(addr, path, host)?;
    // Only a latency nicety for the single small write; a socket that refuses it fails the write below anyway.
    let _ = stream.set_nodelay(true);
    stream.write_all(request.as_bytes()).await.map_err(|e| io_failure("request write failed", &e))?;
    // The body is deliberately left unread: the status is the verdict and dropping the socket ends the exchange.
    let status = read_final_status(&mut stream).await?;
    if status_expected(status, expected) {
        Ok(())
    } else {
        Err(ProbeFailure::Status(status))
    }
}

fn io_failure(what: &'static str, err: &io::Error) -> ProbeFailure {
    // The enum keeps an ErrorKind only for connect; the mid-exchange kind is still worth a debug line.
    tracing::debug!(error = %err, "{what}");
    ProbeFailure::Protocol(what)
}

/// Rejects control characters and spaces because config-supplied values would otherwise split or smuggle the
/// request line.
fn header_safe(value: &str) -> bool {
    !value.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

fn build_request(addr: SocketAddr, path: &str, host: Option<&str>) -> Result<String, ProbeFailure> {
    let path = if path.is_empty() { "/" } else { path };
    if !header_safe(path) {
        return Err(ProbeFailure::Protocol("invalid probe path"));
    }
    let host = match host {
        Some(h) if !h.is_empty() => {
            if !header_safe(h) {
                return Err(ProbeFailure::Protocol("invalid probe host"));
            }
            h.to_owned()
        }
        // SocketAddr's Display brackets IPv6 literals, which is exactly the Host header syntax.
        _ => addr.to_string(),
    };
    Ok(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n"))
}

/// Reads heads until a final (non-1xx) one and returns its status.
async fn read_final_status<R: AsyncRead + Unpin>(reader: &mut R) -> Result<u16, ProbeFailure> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut interim = 0usize;
    loop {
        if let Some((status, len)) = parse_head(&buf)? {
            // 101 is final for this exchange (the connection stops being HTTP), so it is judged, not skipped.
            if (100..200).contains(&status) && status != 101 {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(ProbeFailure::Protocol("too many interim responses"));
                }
                // The next head may already be buffered behind this one.
                buf.drain(..len);
                continue;
            }
            return Ok(status);
        }
        let room = MAX_HEAD.saturating_sub(buf.len());
        if room == 0 {
            return Err(ProbeFailure::Protocol("response head too large"));
        }
        let want = room.min(chunk.len());
        let n = reader.read(&mut chunk[..want]).await.map_err(|e| io_failure("response read failed", &e))?;
        if n == 0 {
            return Err(ProbeFailure::Protocol("connection closed before response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `Ok(None)` means the head is still incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize)>, ProbeFailure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = response.code.ok_or(ProbeFailure::Protocol("missing status code"))?;
            Ok(Some((status, len)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ProbeFailure::Protocol("too many response headers")),
        Err(_) => Err(ProbeFailure::Protocol("malformed response head")),
    }
}

fn status_expected(status: u16, expected: &[(u16, u16)]) -> bool {
    // An empty list would otherwise fail every probe, which is never what a config meant.
    let ranges = if expected.is_empty() { &DEFAULT_EXPECTED[..] } else { expected };
    ranges.iter().any(|&(low, high)| (low..=high).contains(&status))
}

/// Consecutive-result hysteresis: one blip must not flap an endpoint in or out of rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    healthy: bool,
    successes: u32,
    failures: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl Thresholds {
    /// Thresholds of 0 act as 1, since "flip after zero results" has no meaning.
    pub fn new(initially_healthy: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        Thresholds {
            healthy: initially_healthy,
            successes: 0,
            failures: 0,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe result; returns the new state only when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.healthy && self.successes >= self.healthy_threshold {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= self.unhealthy_threshold {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

fn random_up_to(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Runs health checks against `addr` forever; abort the task to stop it. `on_change` fires only on transitions,
/// with the failure that caused a transition to unhealthy.
pub async fn run(
    addr: SocketAddr,
    mark: impl Fn() -> u32 + Send,
    settings: CheckSettings,
    initially_healthy: bool,
    on_change: impl FnMut(bool, Option<&ProbeFailure>) + Send,
) {
    let kind = &settings.kind;
    let limit = settings.timeout;
    let prober = || {
        let mark = mark();
        async move {
            let result = probe(addr, mark, kind, limit).await;
            if let Err(failure) = &result {
                tracing::debug!(%addr, %failure, "health probe failed");
            }
            result
        }
    };
    run_with(&settings, initially_healthy, prober, on_change).await
}

/// The scheduler behind [`run`], generic over the probe so it can be driven without sockets. Only the timing and
/// threshold fields of `settings` are used; the kind and timeout belong to `prober`.
///
/// The interval is counted from the end of a probe, so a slow upstream is never probed concurrently with itself.
pub async fn run_with<P, F>(
    settings: &CheckSettings,
    initially_healthy: bool,
    mut prober: P,
    mut on_change: impl FnMut(bool, Option<&ProbeFailure>),
) where
    P: FnMut() -> F,
    F: Future<Output = Result<(), ProbeFailure>>,
{
    let mut state = Thresholds::new(initially_healthy, settings.healthy_threshold, settings.unhealthy_threshold);
    let interval = settings.interval.max(MIN_INTERVAL);
    // Spreads the first probes of endpoints configured at the same moment so they don't stay in lockstep.
    tokio::time::sleep(random_up_to(settings.jitter)).await;
    loop {
        let result = prober().await;
        if let Some(healthy) = state.observe(result.is_ok()) {
            on_change(healthy, result.as_ref().err());
        }
        tokio::time::sleep(interval.saturating_add(random_up_to(settings.jitter))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, oneshot};
    use tokio::time::Instant;

    const GENEROUS: Duration = Duration::from_secs(5);

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    async fn closed_port() -> SocketAddr {
        listener().await.1
    }

    /// Serves one connection: reads the request head, reports it, writes `parts` with small pauses between them
    /// (so the client sees separate reads), then holds the socket until the client hangs up.
    async fn http_server(parts: Vec<Vec<u8>>) -> (SocketAddr, oneshot::Receiver<Vec<u8>>) {
        let (listener, addr) = listener().await;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && request.len() < 8192 {
                match sock.read(&mut byte).await {
                    Ok(1) => request.push(byte[0]),
                    _ => break,
                }
            }
            let _ = tx.send(request);
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if sock.write_all(part).await.is_err() {
                    return;
                }
            }
            let _ = sock.read(&mut byte).await;
        });
        (addr, rx)
    }

    async fn http_probe(parts: Vec<Vec<u8>>, kind: &ProbeKind) -> Result<(), ProbeFailure> {
        let (addr, _request) = http_server(parts).await;
        probe(addr, 0, kind, GENEROUS).await
    }

    fn parts(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[tokio::test]
    async fn http_200_is_healthy_and_request_is_well_formed() {
        let (addr, request) = http_server(parts(&["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])).await;
        assert_eq!(probe(addr, 0, &ProbeKind::http("/healthz"), GENEROUS).await, Ok(()));
        let request = String::from_utf8(request.await.unwrap()).unwrap();
        let expected = format!(
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: edgeplane-health-check\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(request, expected);
    }

    #[tokio::test]
    async fn http_custom_host_header_is_sent() {
        let (addr, request) = http_server(parts(&["HTTP/1.1 204 No Content\r\n\r\n"])).await;
        let kind = ProbeKind::Http { path: "/".into(), host: Some("svc.internal".into()), expected: vec![] };
        assert_eq!(probe(addr, 0, &kind, GENEROUS).await, Ok(()));
        let request = String::from_utf8(request.await.unwrap()).unwrap();
        assert!(request.contains("\r\nHost: svc.internal\r\n"), "{request}");
    }

    #[tokio::test]
    async fn http_503_is_status_failure() {
        let result = http_probe(parts(&["HTTP/1.1 503 Service Unavailable\r\n\r\n"]), &ProbeKind::http("/")).await;
        assert_eq!(result, Err(ProbeFailure::Status(503)));
    }

    #[tokio::test]
    async fn http_expected_ranges_are_respected() {
        let only_200 = ProbeKind::Http { path: "/".into(), host: None, expected: vec![(200, 200)] };
        let result = http_probe(parts(&["HTTP/1.1 204 No Content\r\n\r\n"]), &only_200).await;
        assert_eq!(result, Err(ProbeFailure::Status(204)));

        let several = ProbeKind::Http { path: "/".into(), host: None, expected: vec![(200, 200), (418, 418)] };
        assert_eq!(http_probe(parts(&["HTTP/1.1 418 Teapot\r\n\r\n"]), &several).await, Ok(()));
        // The default range admits redirects but not client errors.
        assert_eq!(http_probe(parts(&["HTTP/1.1 302 Found\r\n\r\n"]), &ProbeKind::http("/")).await, Ok(()));
        let result = http_probe(parts(&["HTTP/1.1 404 Not Found\r\n\r\n"]), &ProbeKind::http("/")).await;
        assert_eq!(result, Err(ProbeFailure::Status(404)));
    }

    #[tokio::test]
    async fn http_interim_heads_are_skipped() {
        // Same segment: the final head is already buffered behind the interim one.
        let joined = parts(&["HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"]);
        assert_eq!(http_probe(joined, &ProbeKind::http("/")).await, Ok(()));
        let split = parts(&[
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
        ]);
        assert_eq!(http_probe(split, &ProbeKind::http("/")).await, Ok(()));
        let then_503 = parts(&["HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 503 Unavailable\r\n\r\n"]);
        assert_eq!(http_probe(then_503, &ProbeKind::http("/")).await, Err(ProbeFailure::Status(503)));
        // Switching protocols is a final answer, not an interim one.
        let switching = parts(&["HTTP/1.1 101 Switching Protocols\r\n\r\n"]);
        assert_eq!(http_probe(switching, &ProbeKind::http("/")).await, Err(ProbeFailure::Status(101)));
    }

    #[tokio::test]
    async fn http_endless_interim_heads_are_protocol_failure() {
        let flood = vec!["HTTP/1.1 100 Continue\r\n\r\n".repeat(100).into_bytes()];
        let result = http_probe(flood, &ProbeKind::http("/")).await;
        assert_eq!(result, Err(ProbeFailure::Protocol("too many interim responses")));
    }

    #[tokio::test]
    async fn http_garbage_is_protocol_failure() {
        let garbage = vec![b"\x00\xff\x13garbage\r\n\r\n".to_vec()];
        assert!(matches!(http_probe(garbage, &ProbeKind::http("/")).await, Err(ProbeFailure::Protocol(_))));
        let not_http = parts(&["SSH-2.0-OpenSSH_9.6\r\n"]);
        assert!(matches!(http_probe(not_http, &ProbeKind::http("/")).await, Err(ProbeFailure::Protocol(_))));
    }

    #[tokio::test]
    async fn http_too_many_headers_is_protocol_failure() {
        let head = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X-A: b\r\n".repeat(MAX_HEADERS + 1));
        let result = http_probe(vec![head.into_bytes()], &ProbeKind::http("/")).await;
        assert_eq!(result, Err(ProbeFailure::Protocol("too many response headers")));
    }

    #[tokio::test]
    async fn http_oversized_head_is_protocol_failure() {
        let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_HEAD + 100));
        let result = http_probe(vec![big.into_bytes()], &ProbeKind::http("/")).await;
        assert_eq!(result, Err(ProbeFailure::Protocol("response head too large")));
    }

    #[tokio::test]
    async fn http_head_cut_short_is_protocol_failure() {
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nContent-").await;
        });
        let result = probe(addr, 0, &ProbeKind::http("/"), GENEROUS).await;
        assert!(matches!(result, Err(ProbeFailure::Protocol(_))), "{result:?}");
    }

    #[tokio::test]
    async fn http_silent_server_times_out_within_timeout() {
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut sink = [0u8; 1024];
            while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let started = std::time::Instant::now();
        let result = probe(addr, 0, &ProbeKind::http("/"), Duration::from_millis(200)).await;
        let took = started.elapsed();
        assert_eq!(result, Err(ProbeFailure::Timeout));
        assert!(took >= Duration::from_millis(190) && took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn http_server_closing_immediately_fails_without_panic() {
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            for _ in 0..2 {
                drop(listener.accept().await.unwrap());
            }
        });
        for kind in [ProbeKind::http("/"), ProbeKind::http("/again")] {
            let result = probe(addr, 0, &kind, GENEROUS).await;
            assert!(matches!(result, Err(ProbeFailure::Protocol(_))), "{result:?}");
        }
    }

    #[tokio::test]
    async fn http_closed_port_is_connection_refused() {
        let result = probe(closed_port().await, 0, &ProbeKind::http("/"), GENEROUS).await;
        assert_eq!(result, Err(ProbeFailure::Connect(io::ErrorKind::ConnectionRefused)));
    }

    #[tokio::test]
    async fn http_unsafe_path_or_host_is_refused_before_sending() {
        let (_listener, addr) = listener().await;
        let split = ProbeKind::Http { path: "/x\r\nEvil: 1".into(), host: None, expected: vec![] };
        assert_eq!(probe(addr, 0, &split, GENEROUS).await, Err(ProbeFailure::Protocol("invalid probe path")));
        let host = ProbeKind::Http { path: "/".into(), host: Some("a\nb".into()), expected: vec![] };
        assert_eq!(probe(addr, 0, &host, GENEROUS).await, Err(ProbeFailure::Protocol("invalid probe host")));
    }

    #[tokio::test]
    async fn tcp_probe_listening_is_ok_and_closed_is_refused() {
        let (_listener, addr) = listener().await;
        assert_eq!(probe(addr, 0, &ProbeKind::Tcp, GENEROUS).await, Ok(()));
        let result = probe(closed_port().await, 0, &ProbeKind::Tcp, GENEROUS).await;
        assert_eq!(result, Err(ProbeFailure::Connect(io::ErrorKind::ConnectionRefused)));
    }

    #[test]
    fn failure_display_is_readable() {
        assert_eq!(ProbeFailure::Timeout.to_string(), "health check timed out");
        assert_eq!(ProbeFailure::Status(503).to_string(), "health check got unexpected status 503");
        assert!(ProbeFailure::Connect(io::ErrorKind::ConnectionRefused).to_string().contains("refused"));
        assert_eq!(ProbeFailure::Protocol("x").to_string(), "health check protocol error: x");
    }

    #[test]
    fn unhealthy_after_threshold_failures_and_back_after_threshold_successes() {
        let mut t = Thresholds::new(true, 2, 3);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert!(t.is_healthy());
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(true));
        assert_eq!(t.observe(true), None);
        assert!(t.is_healthy());
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut t = Thresholds::new(true, 2, 3);
        for ok in [false, false, true, false, false] {
            assert_eq!(t.observe(ok), None);
        }
        assert_eq!(t.observe(false), Some(false));
    }

    #[test]
    fn alternating_results_never_flip() {
        for start in [true, false] {
            let mut t = Thresholds::new(start, 2, 2);
            for i in 0..1000 {
                assert_eq!(t.observe(i % 2 == 0), None);
            }
            assert_eq!(t.is_healthy(), start);
        }
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut t = Thresholds::new(true, 0, 0);
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.observe(true), Some(true));
    }

    fn schedule(
        interval: Duration,
        jitter: Duration,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> CheckSettings {
        CheckSettings {
            kind: ProbeKind::Tcp,
            interval,
            timeout: GENEROUS,
            healthy_threshold,
            unhealthy_threshold,
            jitter,
        }
    }

    fn gaps(times: &[Instant]) -> Vec<Duration> {
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn probes_every_interval_without_jitter() {
        let settings = schedule(Duration::from_secs(1), Duration::ZERO, 1, 1);
        let start = Instant::now();
        let mut times = Vec::new();
        let prober = || {
            times.push(Instant::now());
            async { Ok(()) }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), run_with(&settings, true, prober, |_, _| {})).await;
        assert!(times.len() == 10 || times.len() == 11, "{}", times.len());
        assert_eq!(times[0], start);
        assert!(gaps(&times).iter().all(|g| *g == Duration::from_secs(1)), "{:?}", gaps(&times));
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_bounds() {
        fastrand::seed(0x5eed);
        let jitter = Duration::from_millis(500);
        let settings = schedule(Duration::from_secs(1), jitter, 1, 1);
        let start = Instant::now();
        let mut times = Vec::new();
        let prober = || {
            times.push(Instant::now());
            async { Ok(()) }
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), run_with(&settings, true, prober, |_, _| {})).await;
        assert!(times[0] - start <= jitter);
        let gaps = gaps(&times);
        assert!(gaps.len() >= 38, "{}", gaps.len());
        assert!(gaps.iter().all(|g| (Duration::from_secs(1)..=Duration::from_millis(1500)).contains(g)), "{gaps:?}");
        assert!(gaps.iter().any(|g| *g != gaps[0]), "jitter was never applied");
    }

    #[tokio::test(start_paused = true)]
    async fn interval_counts_from_the_end_of_a_slow_probe() {
        let settings = schedule(Duration::from_secs(1), Duration::ZERO, 1, 1);
        let mut times = Vec::new();
        let prober = || {
            times.push(Instant::now());
            async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Err(ProbeFailure::Timeout)
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(20), run_with(&settings, true, prober, |_, _| {})).await;
        assert!(gaps(&times).iter().all(|g| *g == Duration::from_secs(4)), "{:?}", gaps(&times));
    }

    #[tokio::test(start_paused = true)]
    async fn on_change_fires_only_on_transitions() {
        let settings = schedule(Duration::from_secs(1), Duration::ZERO, 2, 3);
        let refused = ProbeFailure::Connect(io::ErrorKind::ConnectionRefused);
        let mut script: VecDeque<Result<(), ProbeFailure>> = [
            Err(ProbeFailure::Timeout),
            Err(ProbeFailure::Status(500)),
            Ok(()),
            Err(ProbeFailure::Timeout),
            Err(ProbeFailure::Timeout),
            Err(refused),
            Err(refused),
            Ok(()),
            Err(refused),
            Ok(()),
            Ok(()),
            Ok(()),
        ]
        .into_iter()
        .collect();
        let mut changes = Vec::new();
        let prober = || std::future::ready(script.pop_front().unwrap_or(Ok(())));
        let on_change = |healthy: bool, failure: Option<&ProbeFailure>| changes.push((healthy, failure.copied()));
        let _ = tokio::time::timeout(Duration::from_secs(30), run_with(&settings, true, prober, on_change)).await;
        assert_eq!(changes, vec![(false, Some(refused)), (true, None)]);
    }

    #[tokio::test]
    async fn run_reports_real_transitions_and_is_spawnable() {
        let settings = CheckSettings {
            kind: ProbeKind::Tcp,
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            jitter: Duration::from_millis(5),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let down = tokio::spawn(run(closed_port().await, || 0, settings.clone(), true, {
            let tx = tx.clone();
            move |healthy, failure| {
                let _ = tx.send((healthy, failure.copied()));
            }
        }));
        let change = tokio::time::timeout(GENEROUS, rx.recv()).await.unwrap();
        assert_eq!(change, Some((false, Some(ProbeFailure::Connect(io::ErrorKind::ConnectionRefused)))));
        down.abort();

        let (_listener, addr) = listener().await;
        let up = tokio::spawn(run(
            addr,
            || 0,
            settings,
            false,
            move |healthy, failure| {
                let _ = tx.send((healthy, failure.copied()));
            },
        ));
        assert_eq!(tokio::time::timeout(GENEROUS, rx.recv()).await.unwrap(), Some((true, None)));
        up.abort();
    }
}
