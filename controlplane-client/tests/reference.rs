//! The reference control plane over real sockets, with curl as the client
//! (one nobody here wrote): ETags and conditional requests, manifests, path
//! safety, long polls, status reports, tokens, TLS, mTLS, HTTP/2, and the
//! `edgeplane-cp` binary itself.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use controlplane_client::reference::{self, RunningServer, ServerOptions, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Every test finishes well inside this, or fails instead of hanging.
const HANG_GUARD: Duration = Duration::from_secs(20);

async fn guarded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, test).await.expect("the test hung")
}

/// Polls `done` until it holds, failing after a few seconds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ETag the protocol promises for a file with these bytes.
fn etag_of(content: &[u8]) -> String {
    format!("\"{}\"", &hex(&Sha256::digest(content))[..16])
}

/// What curl saw: the last response's status, HTTP version (`1.1`, `2`),
/// headers (names lowercased) and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Runs curl; `Err` holds its exit code and stderr when it failed.
async fn try_curl(args: &[&str]) -> Result<Reply, (i32, String)> {
    let out = tempfile::tempdir().expect("temp dir");
    let (headers, body) = (out.path().join("headers"), out.path().join("body"));
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "18", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run curl");
    if !output.status.success() {
        return Err((output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    let written = String::from_utf8_lossy(&output.stdout).into_owned();
    let (status, version) = written.split_once(' ').expect("curl -w output");
    let raw = std::fs::read_to_string(&headers).unwrap_or_default();
    // Interim responses (100 Continue) come first; the last block counts.
    let block = raw.split("\r\n\r\n").filter(|b| !b.trim().is_empty()).last().unwrap_or_default();
    let headers = block
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(Reply {
        status: status.parse().expect("status"),
        version: version.trim().to_owned(),
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    })
}

async fn curl(args: &[&str]) -> Reply {
    match try_curl(args).await {
        Ok(reply) => reply,
        Err((code, stderr)) => panic!("curl {args:?} failed with {code}: {stderr}"),
    }
}

/// A served temporary directory.
struct Served {
    dir: tempfile::TempDir,
    server: RunningServer,
}

impl Served {
    async fn start(files: &[(&str, &str)]) -> Served {
        Served::start_with(files, |_| {}).await
    }

    async fn start_with(files: &[(&str, &str)], configure: impl FnOnce(&mut ServerOptions)) -> Served {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, content) in files {
            write(&dir.path().join(path), content);
        }
        let mut options = ServerOptions::new(dir.path());
        configure(&mut options);
        let server = reference::start(options).await.expect("start the server");
        Served { dir, server }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn requests(&self, key: &str) -> u64 {
        self.server.status_json()["requests"][key].as_u64().unwrap_or(0)
    }

    fn waiting(&self) -> u64 {
        self.server.status_json()["waiting"].as_u64().unwrap_or(0)
    }
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

fn if_none_match(etag: &str) -> String {
    format!("If-None-Match: {etag}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_carry_content_etags_and_conditional_gets_get_304() {
    guarded(async {
        let config = r#"{"listeners":[]}"#;
        let served = Served::start(&[("config.json", config)]).await;
        let url = served.url("/config.json");

        let reply = curl(&[&url]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), config);
        let etag = etag_of(config.as_bytes());
        assert_eq!(reply.header("etag"), Some(etag.as_str()));
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("content-length"), Some(config.len().to_string().as_str()));
        assert_eq!(reply.header("cache-control"), Some("no-cache"));

        let weak = format!("W/{etag}");
        let listed = format!("\"0000000000000000\", {etag}");
        for condition in [etag.as_str(), weak.as_str(), "*", listed.as_str()] {
            let reply = curl(&["-H", &if_none_match(condition), &url]).await;
            assert_eq!(reply.status, 304, "If-None-Match: {condition}");
            assert_eq!(reply.header("etag"), Some(etag.as_str()), "a 304 carries the ETag");
            assert!(reply.body.is_empty());
            assert_eq!(reply.header("preference-applied"), None);
        }
        // A tag for another version, or one that does not parse: the body.
        for condition in ["\"0000000000000000\"", "no-quotes"] {
            let reply = curl(&["-H", &if_none_match(condition), &url]).await;
            assert_eq!(reply.status, 200, "If-None-Match: {condition}");
            assert_eq!(reply.text(), config);
        }
        assert_eq!(served.requests("GET 304"), 4);
        assert_eq!(served.requests("GET 200"), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_the_get_headers_and_no_body() {
    guarded(async {
        let config = "listeners: []\n";
        let served = Served::start(&[("config.yaml", config)]).await;
        let url = served.url("/config.yaml");
        let reply = curl(&["-I", &url]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("etag"), Some(etag_of(config.as_bytes()).as_str()));
        assert_eq!(reply.header("content-length"), Some(config.len().to_string().as_str()));
        assert_eq!(reply.header("content-type"), Some("application/yaml"));
        assert_eq!(reply.header("cache-control"), Some("no-cache"));
        let reply = curl(&["-I", "-H", &if_none_match(&etag_of(config.as_bytes())), &url]).await;
        assert_eq!(reply.status, 304);
        let reply = curl(&["-I", "--http2-prior-knowledge", &url]).await;
        assert_eq!((reply.status, reply.version.as_str()), (200, "2"));
        assert_eq!(reply.header("content-length"), Some(config.len().to_string().as_str()));

        // curl does not read a body after HEAD, so look at the raw bytes: the
        // headers must be all there is.
        let mut stream = tokio::net::TcpStream::connect(served.server.addr()).await.expect("connect");
        stream.write_all(b"HEAD /config.yaml HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        let raw = String::from_utf8(raw).expect("UTF-8");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "", "HEAD sent a body");
        assert_eq!(served.requests("HEAD 200"), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_follow_the_extension() {
    guarded(async {
        let files = [("a.json", "{}"), ("b.yaml", "b: 1"), ("c.yml", "c: 1"), ("main.js", "x"), ("README", "r")];
        let served = Served::start(&files).await;
        let expected = [
            ("/a.json", "application/json"),
            ("/b.yaml", "application/yaml"),
            ("/c.yml", "application/yaml"),
            ("/main.js", "text/plain; charset=utf-8"),
            ("/README", "text/plain; charset=utf-8"),
        ];
        for (path, content_type) in expected {
            let reply = curl(&[&served.url(path)]).await;
            assert_eq!(reply.status, 200, "{path}");
            assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        }
    })
    .await
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_directory_are_refused() {
    guarded(async {
        let served = Served::start(&[("config.json", "{}"), ("sub/a.json", "{}")]).await;
        let outside = tempfile::tempdir().expect("temp dir");
        write(&outside.path().join("secret.txt"), "secret");
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), served.path("leak.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path(), served.path("leakdir")).unwrap();
        std::os::unix::fs::symlink(served.path("config.json"), served.path("inside.json")).unwrap();

        let refused = [
            ("/../etc/passwd", 404),
            ("/sub/../../etc/passwd", 404),
            ("/%2e%2e/%2e%2e/etc/passwd", 404),
            ("/sub/..%2f..%2fetc%2fpasswd", 404),
            ("/%2E%2E%2F", 404),
            ("/leak.txt", 404),
            ("/leakdir/secret.txt", 404),
            ("/leakdir/", 404),
            ("/config.json%00.txt", 400),
            ("/%zz", 400),
            ("/%ff", 400),
        ];
        for (path, status) in refused {
            let reply = curl(&["--path-as-is", &served.url(path)]).await;
            assert_eq!(reply.status, status, "{path}: {}", reply.text());
            assert!(!reply.text().contains("secret") && !reply.text().contains("root:"), "{path} leaked");
        }
        // A symlink that stays inside is served, under its own name.
        let reply = curl(&[&served.url("/inside.json")]).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "{}"));

        let manifest = curl(&[&served.url("/")]).await;
        assert_eq!(manifest.text(), "/config.json\n/inside.json\n/sub/a.json\n");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_files_and_the_reserved_name_are_not_served() {
    guarded(async {
        let files = [
            ("config.json", "{}"),
            (".env", "TOKEN=x"),
            (".git/config", "[core]"),
            ("sub/.config.json.swp", "swap"),
            ("sub/config.json", "{}"),
            ("_status", "a file"),
            ("sub/_status", "only the top-level name is reserved"),
        ];
        let served = Served::start(&files).await;
        for path in ["/.env", "/%2eenv", "/.git/config", "/.git/", "/sub/.config.json.swp", "/_status/"] {
            let reply = curl(&[&served.url(path)]).await;
            assert_eq!(reply.status, 404, "{path}");
        }
        let status = curl(&[&served.url("/_status")]).await;
        assert_eq!(status.header("content-type"), Some("application/json"));
        assert!(status.json()["instances"].is_object(), "{}", status.text());
        let reply = curl(&[&served.url("/sub/_status")]).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "only the top-level name is reserved"));

        let manifest = curl(&[&served.url("/")]).await;
        assert_eq!(manifest.text(), "/config.json\n/sub/_status\n/sub/config.json\n");
        let manifest = curl(&[&served.url("/sub/")]).await;
        assert_eq!(manifest.text(), "/_status\n/config.json\n");
    })
    .await
}

/// The manifest ETag as the README documents it: SHA-256 over each listed
/// path, a NUL and the file's SHA-256, in order.
fn manifest_etag(files: &[(&str, &str)]) -> String {
    let mut version = Sha256::new();
    for (path, content) in files {
        version.update(path.as_bytes());
        version.update([0]);
        version.update(Sha256::digest(content.as_bytes()));
    }
    format!("\"{}\"", &hex(&version.finalize())[..16])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codebase_manifests_list_files_and_change_with_any_of_them() {
    guarded(async {
        let files = [
            ("config.json", "{}"),
            ("modules/a.js", "a"),
            ("modules/deep/b.js", "b1"),
            ("modules/.b.js.swp", "swap"),
            ("repo/cb/main.js", "main"),
        ];
        let served = Served::start(&files).await;

        let root = curl(&[&served.url("/")]).await;
        assert_eq!(root.status, 200);
        assert_eq!(root.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(root.text(), "/config.json\n/modules/a.js\n/modules/deep/b.js\n/repo/cb/main.js\n");
        let listed = [
            ("/config.json", "{}"),
            ("/modules/a.js", "a"),
            ("/modules/deep/b.js", "b1"),
            ("/repo/cb/main.js", "main"),
        ];
        assert_eq!(root.header("etag"), Some(manifest_etag(&listed).as_str()));

        let url = served.url("/modules/");
        let modules = curl(&[&url]).await;
        assert_eq!(modules.text(), "/a.js\n/deep/b.js\n");
        let etag = modules.header("etag").expect("an ETag").to_owned();
        assert_eq!(etag, manifest_etag(&[("/a.js", "a"), ("/deep/b.js", "b1")]));
        let head = curl(&["-I", &url]).await;
        assert_eq!(head.header("etag"), Some(etag.as_str()));
        assert_eq!(head.header("content-length"), Some("17"));
        let nested = curl(&[&served.url("/repo/cb/")]).await;
        assert_eq!(nested.text(), "/main.js\n");

        // Unchanged: one 304, whatever the method.
        assert_eq!(curl(&["-H", &if_none_match(&etag), &url]).await.status, 304);
        assert_eq!(curl(&["-I", "-H", &if_none_match(&etag), &url]).await.status, 304);
        assert_eq!(served.requests("GET 304"), 1);

        // A hidden file changing is no change.
        write(&served.path("modules/.b.js.swp"), "other swap");
        assert_eq!(curl(&["-H", &if_none_match(&etag), &url]).await.status, 304);

        // A nested file changing, even to bytes of the same length, is.
        write(&served.path("modules/deep/b.js"), "b2");
        let changed = curl(&["-H", &if_none_match(&etag), &url]).await;
        assert_eq!(changed.status, 200);
        let changed_etag = changed.header("etag").expect("an ETag").to_owned();
        assert_eq!(changed_etag, manifest_etag(&[("/a.js", "a"), ("/deep/b.js", "b2")]));
        assert_ne!(curl(&[&served.url("/")]).await.header("etag"), root.header("etag"));

        // So is a new file.
        write(&served.path("modules/c.js"), "c");
        let added = curl(&["-H", &if_none_match(&changed_etag), &url]).await;
        assert_eq!((added.status, added.text().as_str()), (200, "/a.js\n/c.js\n/deep/b.js\n"));

        // A directory without its slash, a file with one, nothing: 404.
        for path in ["/modules", "/config.json/", "/nothing/"] {
            assert_eq!(curl(&[&served.url(path)]).await.status, 404, "{path}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_as_soon_as_the_file_changes() {
    guarded(async {
        let served = Served::start(&[("config.json", r#"{"v":1}"#), ("cb/modules/x.js", "x1")]).await;

        let url = served.url("/config.json");
        let condition = if_none_match(&etag_of(br#"{"v":1}"#));
        let poll = tokio::spawn(async move { curl(&["-H", &condition, "-H", "Prefer: wait=30", &url]).await });
        until("the GET to be held", || served.waiting() == 1).await;
        write(&served.path("config.json"), r#"{"v":2}"#);
        let reply = poll.await.expect("the poll");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), r#"{"v":2}"#);
        assert_eq!(reply.header("etag"), Some(etag_of(br#"{"v":2}"#).as_str()));
        assert_eq!(reply.header("preference-applied"), Some("wait=30"));

        // The same for a codebase, polled with HEAD over HTTP/2, and a
        // change deep inside it.
        let url = served.url("/cb/");
        let etag = curl(&["-I", &url]).await.header("etag").expect("an ETag").to_owned();
        let condition = if_none_match(&etag);
        let poll = tokio::spawn(async move {
            curl(&["-I", "--http2-prior-knowledge", "-H", &condition, "-H", "Prefer: wait=30", &url]).await
        });
        until("the HEAD to be held", || served.waiting() == 1).await;
        write(&served.path("cb/modules/x.js"), "x2");
        let reply = poll.await.expect("the poll");
        assert_eq!((reply.status, reply.version.as_str()), (200, "2"));
        assert_eq!(reply.header("etag"), Some(manifest_etag(&[("/modules/x.js", "x2")]).as_str()));
        assert_eq!(reply.header("preference-applied"), Some("wait=30"));
        assert_eq!(served.waiting(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_ends_with_404_when_the_file_goes() {
    guarded(async {
        let served = Served::start(&[("config.json", "{}")]).await;
        let url = served.url("/config.json");
        let condition = if_none_match(&etag_of(b"{}"));
        let poll = tokio::spawn(async move { curl(&["-H", &condition, "-H", "Prefer: wait=30", &url]).await });
        until("the GET to be held", || served.waiting() == 1).await;
        std::fs::remove_file(served.path("config.json")).unwrap();
        assert_eq!(poll.await.expect("the poll").status, 404);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_304_at_its_deadline() {
    guarded(async {
        let served = Served::start_with(&[("config.json", "{}")], |options| {
            options.max_wait = Duration::from_secs(1);
        })
        .await;
        let url = served.url("/config.json");
        let condition = if_none_match(&etag_of(b"{}"));

        // Asked for 1 s, and asked for 30 s but capped at 1 s.
        for prefer in ["Prefer: wait=1", "Prefer: wait=30"] {
            let started = Instant::now();
            let reply = curl(&["-H", &condition, "-H", prefer, &url]).await;
            assert_eq!(reply.status, 304, "{prefer}");
            assert_eq!(reply.header("preference-applied"), Some("wait=1"), "{prefer}");
            assert!(started.elapsed() >= Duration::from_millis(900), "{prefer}: answered before the deadline");
        }

        // Not held: no `Prefer`, `wait=0`, `*`, or a version the client
        // does not have yet.
        let not_held: [&[&str]; 4] = [
            &["-H", &condition],
            &["-H", &condition, "-H", "Prefer: wait=0"],
            &["-H", "If-None-Match: *", "-H", "Prefer: wait=30"],
            &["-H", "If-None-Match: \"0000000000000000\"", "-H", "Prefer: wait=30"],
        ];
        for (args, status) in not_held.iter().zip([304, 304, 304, 200]) {
            let started = Instant::now();
            let reply = curl(&[*args, &[url.as_str()]].concat()).await;
            assert_eq!(reply.status, status, "{args:?}");
            assert_eq!(reply.header("preference-applied"), None, "{args:?}");
            assert!(started.elapsed() < Duration::from_millis(900), "{args:?} was held");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_are_recorded_and_shown() {
    guarded(async {
        let served = Served::start(&[]).await;
        let post = |body: String, path: &'static str| {
            let url = served.url(path);
            async move { curl(&["-H", "Content-Type: application/json", "--data-binary", &body, &url]).await }
        };
        let reply = post(json!({"instance": "sidecar-1", "version": "v1"}).to_string(), "/repo/a/").await;
        assert_eq!(reply.status, 201);
        assert_eq!(post(json!({"instance": "sidecar-1", "version": "v2"}).to_string(), "/repo/a/").await.status, 201);
        assert_eq!(post(json!({"state": "nack", "instance": 7}).to_string(), "/status").await.status, 201);

        let status = curl(&[&served.url("/_status")]).await;
        assert_eq!(status.status, 200);
        let status = status.json();
        // The library's view is the same document (this GET has been counted since).
        let in_process = served.server.status_json();
        assert_eq!((&status["instances"], &status["history"]), (&in_process["instances"], &in_process["history"]));
        let sidecar = &status["instances"]["sidecar-1"];
        assert_eq!(sidecar["reports"], 2);
        assert_eq!(sidecar["last"], json!({"instance": "sidecar-1", "version": "v2"}));
        assert_eq!(sidecar["path"], "/repo/a/");
        assert!(sidecar["remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{sidecar}");
        let received_at = sidecar["received_at"].as_str().unwrap();
        assert!(received_at.len() == 24 && received_at.ends_with('Z') && received_at.contains('T'), "{received_at}");
        // Without a string `instance`, the remote address is the key.
        assert_eq!(status["instances"]["127.0.0.1"]["last"]["state"], "nack");
        let history = status["history"].as_array().unwrap();
        let versions: Vec<&Value> = history.iter().map(|r| &r["report"]["version"]).collect();
        assert_eq!(versions, [&json!("v1"), &json!("v2"), &Value::Null]);
        assert_eq!(history[2]["path"], "/status");
        assert_eq!(status["requests"]["POST 201"], 3);

        // Too big (declared, or chunked), not JSON, not an object.
        let big = json!({"pad": "x".repeat(70 * 1024)}).to_string();
        let file = served.path("big.json");
        std::fs::write(&file, &big).unwrap();
        let at_file = format!("@{}", file.display());
        let reply = curl(&["--data-binary", &at_file, &served.url("/r")]).await;
        assert_eq!(reply.status, 413, "{}", reply.text());
        let reply = curl(&["-H", "Transfer-Encoding: chunked", "--data-binary", &at_file, &served.url("/r")]).await;
        assert_eq!(reply.status, 413, "{}", reply.text());
        for body in ["{\"instance\":", "[1, 2]", "\"text\"", ""] {
            let reply = curl(&["--data-binary", body, &served.url("/r")]).await;
            assert_eq!(reply.status, 400, "{body:?}: {}", reply.text());
        }
        assert_eq!(served.server.status_json()["history"].as_array().unwrap().len(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_set() {
    guarded(async {
        let served =
            Served::start_with(&[("config.json", "{}")], |options| options.token = Some("s3cret-t0ken".into())).await;
        let good = "Authorization: Bearer s3cret-t0ken";
        for path in ["/config.json", "/", "/_status"] {
            let url = served.url(path);
            for header in [None, Some("Authorization: Bearer wrong"), Some("Authorization: Basic czNjcmV0")] {
                let args: Vec<&str> = header.into_iter().flat_map(|h| ["-H", h]).chain([url.as_str()]).collect();
                let reply = curl(&args).await;
                assert_eq!(reply.status, 401, "{path} with {header:?}");
                assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
            }
            assert_eq!(curl(&["-H", good, &url]).await.status, 200, "{path}");
        }
        let post = curl(&["--data-binary", "{}", &served.url("/r")]).await;
        assert_eq!(post.status, 401);
        assert_eq!(curl(&["-H", good, "--data-binary", "{}", &served.url("/r")]).await.status, 201);
        assert_eq!(served.requests("GET 401"), 9);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_get_405_with_allow() {
    guarded(async {
        let served = Served::start(&[("config.json", "{}")]).await;
        for method in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
            let reply = curl(&["-X", method, &served.url("/config.json")]).await;
            assert_eq!(reply.status, 405, "{method}");
            assert_eq!(reply.header("allow"), Some("GET, HEAD, POST"), "{method}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_counted_as_http2() {
    guarded(async {
        let served = Served::start(&[("config.json", "{}")]).await;
        let reply = curl(&["--http2-prior-knowledge", &served.url("/config.json")]).await;
        assert_eq!((reply.status, reply.version.as_str(), reply.text().as_str()), (200, "2", "{}"));
        let reply = curl(&["--http1.1", &served.url("/config.json")]).await;
        assert_eq!((reply.status, reply.version.as_str()), (200, "1.1"));
        let status = curl(&["--http2-prior-knowledge", &served.url("/_status")]).await.json();
        assert_eq!(status["versions"], json!({"HTTP/1.1": 1, "HTTP/2.0": 1}));
    })
    .await
}

/// A CA, a server certificate for `localhost`/127.0.0.1, and a client
/// certificate, as PEM (certificate, key).
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "edgeplane-cp test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate");
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &ca).expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        server: leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf("sidecar", ExtendedKeyUsagePurpose::ClientAuth),
        ca: ca.pem(),
    }
}

fn pem_file(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http2_and_http1_by_alpn() {
    guarded(async {
        let pki = pki();
        let tls = ServerTls {
            cert_pem: pki.server.0.clone().into_bytes(),
            key_pem: pki.server.1.clone().into_bytes(),
            client_ca_pem: None,
        };
        let served = Served::start_with(&[("config.json", "{}")], |options| options.tls = Some(tls)).await;
        assert!(served.server.url().starts_with("https://"));
        let pems = tempfile::tempdir().unwrap();
        let ca = pem_file(pems.path(), "ca.pem", &pki.ca);
        let url = served.url("/config.json");

        let reply = curl(&["--cacert", &ca, "--http2", &url]).await;
        assert_eq!((reply.status, reply.version.as_str(), reply.text().as_str()), (200, "2", "{}"));
        assert_eq!(reply.header("etag"), Some(etag_of(b"{}").as_str()));
        let reply = curl(&["--cacert", &ca, "--http1.1", &url]).await;
        assert_eq!((reply.status, reply.version.as_str()), (200, "1.1"));
        // By name, too.
        let port = served.server.addr().port();
        let by_name = format!("https://localhost:{port}/config.json");
        let resolve = format!("localhost:{port}:127.0.0.1");
        assert_eq!(curl(&["--cacert", &ca, "--resolve", &resolve, &by_name]).await.status, 200);
        // A client that does not trust the CA gives up.
        assert!(try_curl(&[&url]).await.is_err());
        assert_eq!(served.server.status_json()["versions"], json!({"HTTP/1.1": 1, "HTTP/2.0": 2}));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_client_without_a_certificate() {
    guarded(async {
        let pki = pki();
        let tls = ServerTls {
            cert_pem: pki.server.0.clone().into_bytes(),
            key_pem: pki.server.1.clone().into_bytes(),
            client_ca_pem: Some(pki.ca.clone().into_bytes()),
        };
        let served = Served::start_with(&[("config.json", "{}")], |options| options.tls = Some(tls)).await;
        let pems = tempfile::tempdir().unwrap();
        let ca = pem_file(pems.path(), "ca.pem", &pki.ca);
        let cert = pem_file(pems.path(), "client.pem", &pki.client.0);
        let key = pem_file(pems.path(), "client.key", &pki.client.1);
        let url = served.url("/config.json");

        let refused = try_curl(&["--cacert", &ca, &url]).await;
        assert!(refused.is_err(), "served without a client certificate: {refused:?}");
        let reply = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &url]).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "{}"));
        assert_eq!(served.requests("GET 200"), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_held_polls_and_closes_the_port() {
    guarded(async {
        let served = Served::start(&[("config.json", "{}")]).await;
        let url = served.url("/config.json");
        let condition = if_none_match(&etag_of(b"{}"));
        let poll = tokio::spawn(async move { curl(&["-H", &condition, "-H", "Prefer: wait=30", &url]).await });
        until("the GET to be held", || served.waiting() == 1).await;
        let addr: SocketAddr = served.server.addr();
        let started = Instant::now();
        served.server.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(5), "shutdown waited for the long poll");
        let reply = poll.await.expect("the poll");
        assert_eq!((reply.status, reply.header("preference-applied")), (304, Some("wait=30")));
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_stops_it() {
    guarded(async {
        let served = Served::start(&[("config.json", "{}")]).await;
        let addr = served.server.addr();
        assert_eq!(curl(&[&served.url("/config.json")]).await.status, 200);
        drop(served.server);
        // The accept task is aborted, which the runtime carries out soon after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after drop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_bad_options() {
    guarded(async {
        let dir = tempfile::tempdir().unwrap();
        let missing = ServerOptions::new(dir.path().join("missing"));
        assert!(reference::start(missing).await.is_err());
        write(&dir.path().join("file"), "x");
        assert!(reference::start(ServerOptions::new(dir.path().join("file"))).await.is_err());
        let mut spaced = ServerOptions::new(dir.path());
        spaced.token = Some("two words".into());
        assert!(reference::start(spaced).await.is_err());
        let mut bad_tls = ServerOptions::new(dir.path());
        bad_tls.tls = Some(ServerTls { cert_pem: b"nope".to_vec(), key_pem: b"nope".to_vec(), client_ca_pem: None });
        assert!(reference::start(bad_tls).await.is_err());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    guarded(async {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("served/config.json"), r#"{"from":"binary"}"#);
        write(&dir.path().join("token"), "bin-token\n");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgeplane-cp"))
            .arg("--dir")
            .arg(dir.path().join("served"))
            .args(["--listen", "127.0.0.1:0", "--max-wait", "2s", "--token-file"])
            .arg(dir.path().join("token"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start edgeplane-cp");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next_line().await.expect("read stdout").expect("a first line");
        let addr: SocketAddr = first.strip_prefix("listening on ").expect(&first).parse().expect("an address");

        let url = format!("http://{addr}/config.json");
        let reply = curl(&["-H", "Authorization: Bearer bin-token", &url]).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, r#"{"from":"binary"}"#));
        assert_eq!(curl(&[&url]).await.status, 401);

        let pid = child.id().expect("a pid").to_string();
        let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.expect("run kill");
        assert!(killed.success());
        let exit = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exit").expect("wait");
        assert!(exit.success(), "edgeplane-cp exited with {exit}");
    })
    .await
}
