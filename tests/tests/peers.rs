//! Clients nobody here wrote, against the in-process proxy: curl (HTTP/1.1,
//! and HTTP/2 with prior knowledge) and h2load (nghttp2's load generator,
//! over h2c and HTTP/1.1). A missing program fails the test, with how to
//! install it.

use std::collections::HashMap;
use std::process::Output;

use edgeplane_tests::harness::{cluster, guard, TestProxy};
use edgeplane_tests::tools::args;
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};
use serde_json::Value;

const INSTALL: &str = "apt-get install -y curl nghttp2-client";

async fn require(program: &str) {
    edgeplane_tests::tools::require(program, INSTALL).await
}

async fn run(program: &str, args: &[String]) -> Output {
    edgeplane_tests::tools::run(program, args, INSTALL).await
}

/// A proxy with listener `web` sending everything to `upstream`.
fn proxy_for(upstream: &HttpUpstream) -> TestProxy {
    TestProxy::start(&format!(
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n      - cluster: app\nclusters:\n{}",
        cluster("app", &[upstream.addr()])
    ))
}

/// Deterministic bytes that are not a short repeating pattern (xorshift).
fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// curl's `-w "\n%{http_code} %{http_version}"` after the body on stdout:
/// `(body, status, version)`.
fn split_curl(output: &Output) -> (String, u16, String) {
    assert!(output.status.success(), "curl failed: {}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, trailer) = stdout.rsplit_once('\n').unwrap_or_else(|| panic!("no -w trailer in {stdout:?}"));
    let (code, version) = trailer.split_once(' ').unwrap_or_else(|| panic!("bad -w trailer {trailer:?}"));
    (body.to_owned(), code.parse().unwrap_or_else(|_| panic!("bad status {code:?}")), version.to_owned())
}

/// POSTs `len` bytes to `/echo` with curl (extra flags choose the
/// protocol) and checks the echoed body byte for byte.
async fn curl_echo(url: &str, len: usize, protocol: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (sent_path, received_path) = (dir.path().join("sent.bin"), dir.path().join("received.bin"));
    let sent = payload(len);
    std::fs::write(&sent_path, &sent).unwrap();
    let mut curl = args(&["-sS", "--max-time", "30"]);
    curl.extend(args(protocol));
    curl.extend(args(&["-H", "content-type: application/octet-stream", "--data-binary"]));
    curl.push(format!("@{}", sent_path.display()));
    curl.extend(args(&["-o", received_path.to_str().unwrap(), "-w", "%{http_code} %{http_version} %{size_upload}"]));
    curl.push(format!("{url}/echo"));
    let output = run("curl", &curl).await;
    assert!(output.status.success(), "curl failed: {}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    let summary = String::from_utf8_lossy(&output.stdout).into_owned();
    let fields: Vec<&str> = summary.split(' ').collect();
    assert_eq!(fields.first(), Some(&"200"), "curl -w: {summary}");
    assert_eq!(fields.get(2), Some(&len.to_string().as_str()), "uploaded bytes; curl -w: {summary}");
    let received = std::fs::read(&received_path).expect("curl wrote the response body");
    assert_eq!(received.len(), sent.len(), "echoed length");
    if let Some(at) = received.iter().zip(&sent).position(|(r, s)| r != s) {
        panic!("echoed body differs from the sent one at byte {at}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http1_get_and_5mib_post_echo() {
    require("curl").await;
    guard(async {
        let upstream = HttpUpstream::start("app", HttpProto::Http1).await;
        let proxy = proxy_for(&upstream);
        let url = format!("http://{}", proxy.addr("web"));

        let output = run(
            "curl",
            &[
                args(&["-sS", "--http1.1", "--max-time", "30", "-w", "\n%{http_code} %{http_version}"]),
                vec![format!("{url}/hello?x=1")],
            ]
            .concat(),
        )
        .await;
        let (body, status, version) = split_curl(&output);
        assert_eq!((status, version.as_str()), (200, "1.1"));
        let seen: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
        assert_eq!(seen["upstream"], "app");
        assert_eq!(seen["method"], "GET");
        assert_eq!(seen["path"], "/hello?x=1");
        assert!(seen["headers"]["user-agent"].as_str().is_some_and(|ua| ua.starts_with("curl/")), "{seen}");

        curl_echo(&url, 5 * 1024 * 1024, &["--http1.1"]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_prior_knowledge() {
    require("curl").await;
    guard(async {
        let upstream = HttpUpstream::start("app", HttpProto::Http1).await;
        let proxy = proxy_for(&upstream);
        let url = format!("http://{}", proxy.addr("web"));
        let output = run(
            "curl",
            &[
                args(&["-sS", "--http2-prior-knowledge", "--max-time", "30", "-w", "\n%{http_code} %{http_version}"]),
                vec![format!("{url}/over/h2")],
            ]
            .concat(),
        )
        .await;
        let (body, status, version) = split_curl(&output);
        assert_eq!((status, version.as_str()), (200, "2"), "curl -w %{{http_version}}");
        let seen: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
        assert_eq!(seen["upstream"], "app");
        assert_eq!(seen["path"], "/over/h2");

        curl_echo(&url, 5 * 1024 * 1024, &["--http2-prior-knowledge"]).await;
    })
    .await;
}

/// The numbers of h2load's summary, e.g. `succeeded` from `requests: …`
/// and `2xx` from `status codes: …`, plus the application protocol.
fn h2load_summary(stdout: &str) -> (String, HashMap<String, u64>) {
    let protocol = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Application protocol: "))
        .unwrap_or_else(|| panic!("no `Application protocol` line:\n{stdout}"))
        .trim()
        .to_owned();
    let mut numbers = HashMap::new();
    for prefix in ["requests: ", "status codes: "] {
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line:\n{stdout}"));
        for part in line.split(", ") {
            let (count, name) = part.trim().split_once(' ').unwrap_or_else(|| panic!("bad h2load field {part:?}"));
            let count = count.parse().unwrap_or_else(|_| panic!("bad h2load count {part:?}"));
            numbers.insert(name.to_owned(), count);
        }
    }
    (protocol, numbers)
}

async fn h2load(extra: &[&str], expected_protocol: &str) {
    require("h2load").await;
    guard(async {
        let upstream = HttpUpstream::start("app", HttpProto::Http1).await;
        let proxy = proxy_for(&upstream);
        let mut h2load_args = args(extra);
        h2load_args.extend(args(&["-n", "2000", "-c", "10"]));
        h2load_args.push(format!("http://{}/", proxy.addr("web")));
        let output = run("h2load", &h2load_args).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "h2load: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let (protocol, numbers) = h2load_summary(&stdout);
        println!("{}", stdout.lines().filter(|l| l.starts_with("finished in")).collect::<String>());
        assert_eq!(protocol, expected_protocol, "{stdout}");
        for (name, want) in [
            ("total", 2000),
            ("done", 2000),
            ("succeeded", 2000),
            ("failed", 0),
            ("errored", 0),
            ("timeout", 0),
            ("2xx", 2000),
        ] {
            assert_eq!(numbers.get(name), Some(&want), "h2load `{name}`:\n{stdout}");
        }
        assert_eq!(upstream.requests(), 2000, "requests that reached the upstream");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_h2c_2000_requests() {
    h2load(&["-m", "10"], "h2c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_http1_2000_requests() {
    h2load(&["--h1"], "http/1.1").await;
}
