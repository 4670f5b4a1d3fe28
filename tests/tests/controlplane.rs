//! Config from a control plane: the reference control plane
//! (`edgeplane-cp`, in-process) and nginx serving a file, conditional
//! polls, the Pipy-repo layout, status reports (ACK/NACK), persistence,
//! TLS/mTLS/token to the control plane, and every fault the issue lists:
//! down at start, gone mid-run, broken configs, huge and truncated bodies,
//! slow answers, flapping.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use config_model::ControlPlane;
use controlplane_client::reference::{self, RunningServer, ServerOptions, ServerTls};
use edgeplane_tests::client::{simple_request, Http1Conn};
use edgeplane_tests::harness::{cluster, eventually, find_metric, guard, TestProxy};
use edgeplane_tests::pki::{self, Ca};
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long a change may take to apply: one poll interval (200 ms, with
/// its jitter; see [`settings`]) plus generous slack for this shared
/// 2-core machine.
const APPLY_WITHIN: Duration = Duration::from_secs(5);

/// A config serving `x-config: <tag>` from `up`, labelled `version: <tag>`.
fn config(up: SocketAddr, tag: &str) -> String {
    format!(
        "version: {tag}\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n      - cluster: app\n        response_headers: {{ set: {{ x-config: {tag} }} }}\nclusters:\n{}",
        cluster("app", &[up])
    )
}

/// The reference control plane on a temp dir.
struct Cp {
    dir: tempfile::TempDir,
    server: Option<RunningServer>,
    addr: SocketAddr,
}

impl Cp {
    async fn start() -> Cp {
        let dir = tempfile::tempdir().unwrap();
        let server = reference::start(ServerOptions::new(dir.path())).await.expect("reference control plane");
        let addr = server.addr();
        Cp { dir, server: Some(server), addr }
    }

    /// Replaces a served file atomically (the temp name is hidden from the server).
    fn write(&self, name: &str, text: &str) {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let temp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &path).unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn status(&self) -> Value {
        self.server.as_ref().expect("control plane running").status_json()
    }

    fn requests(&self, key: &str) -> u64 {
        self.status()["requests"][key].as_u64().unwrap_or(0)
    }

    /// The last status report of the one instance that reported.
    fn last_report(&self) -> Value {
        let status = self.status();
        let instances = status["instances"].as_object().cloned().unwrap_or_default();
        assert!(instances.len() <= 1, "one proxy reports: {status}");
        instances.values().next().map(|i| i["last"].clone()).unwrap_or(Value::Null)
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Starts again on the same port and directory.
    async fn restart(&mut self) {
        let mut options = ServerOptions::new(self.dir.path());
        options.listen = self.addr;
        self.server = Some(reference::start(options).await.expect("restart on the same port"));
    }
}

fn settings(url: String, persist: &Path) -> ControlPlane {
    let mut settings = ControlPlane::new(url);
    settings.interval = config_model::Duration::from("200ms");
    settings.retry_initial = config_model::Duration::from("50ms");
    settings.retry_max = config_model::Duration::from("200ms");
    settings.timeout = config_model::Duration::from("2s");
    settings.connect_timeout = config_model::Duration::from("1s");
    settings.persist = Some(persist.join("last-config.json").display().to_string());
    settings.instance_id = Some("sidecar-1".into());
    settings
}

/// The `x-config` header of GET / on a new connection, or why it failed.
async fn served(addr: SocketAddr) -> Result<String, String> {
    let mut conn = Http1Conn::try_connect(addr).await.map_err(|e| e.to_string())?;
    let res = conn.send(simple_request("GET", "/", "cp.test", &[])).await.map_err(|e| e.to_string())?;
    if res.status() != 200 {
        return Err(format!("status {}", res.status()));
    }
    Ok(res.headers().get("x-config").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default())
}

async fn source(proxy: &TestProxy) -> Value {
    serde_json::from_str(&proxy.admin_get("/config/source").await.1).expect("/config/source is JSON")
}

async fn live_version(proxy: &TestProxy) -> String {
    source(proxy).await["config_version"].as_str().unwrap_or_default().to_owned()
}

/// Waits until config `tag` is live and the client has recorded every
/// config it fetched (state, persisted file, counters).
async fn wait_version(proxy: &TestProxy, tag: &str) {
    let what = format!("config {tag} live");
    eventually(&what, APPLY_WITHIN, || async {
        // The version first: its fetch was counted before it went live.
        if live_version(proxy).await != tag {
            return false;
        }
        let text = proxy.admin_get("/metrics").await.1;
        let count = |name: &str, result: &str| find_metric(&text, name, &[("result", result)]).unwrap_or(0.0);
        let changed = count("edgeplane_controlplane_fetches_total", "changed");
        let handled = count("edgeplane_controlplane_applies_total", "applied")
            + count("edgeplane_controlplane_applies_total", "rejected");
        changed == handled
    })
    .await;
}

async fn cp_metric(proxy: &TestProxy, name: &str, result: &str) -> f64 {
    proxy.metric(name, &[("result", result)]).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_from_the_control_plane_applies_and_follows_changes() {
    guard(async {
        let (a, b) =
            (HttpUpstream::start("a", HttpProto::Http1).await, HttpUpstream::start("b", HttpProto::Http1).await);
        let cp = Cp::start().await;
        cp.write("sidecar/edgeplane.yaml", &config(a.addr(), "v1"));
        let state = tempfile::tempdir().unwrap();
        let proxy =
            TestProxy::start_control_plane(settings(cp.url("sidecar/edgeplane.yaml"), state.path())).await.unwrap();
        assert!(proxy.handle().is_ready(), "a fetched config makes the proxy ready");
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v1");

        let shown = source(&proxy).await;
        assert_eq!(shown["kind"], "control_plane", "{shown}");
        assert_eq!(shown["live"]["origin"], "control_plane", "{shown}");
        assert_eq!(shown["live"]["location"], cp.url("sidecar/edgeplane.yaml"), "{shown}");
        let first_etag = shown["live"]["version"].as_str().unwrap().to_owned();
        assert_eq!(first_etag.len(), 16, "the reference control plane's content ETag: {shown}");
        // The ACK names the version that applied.
        eventually("ACK recorded", APPLY_WITHIN, || async { cp.last_report()["version"] == first_etag.as_str() }).await;
        let report = cp.last_report();
        assert_eq!(report["instance"], "sidecar-1", "{report}");
        assert_eq!(report["state"], "applied", "{report}");
        assert!(report["error"].is_null(), "{report}");
        assert!(report["timestamp"].as_u64().unwrap() >= report["since"].as_u64().unwrap(), "{report}");

        // A change applies within a poll interval (plus slack).
        cp.write("sidecar/edgeplane.yaml", &config(b.addr(), "v2"));
        wait_version(&proxy, "v2").await;
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v2");
        assert!(b.requests() >= 1);
        assert_eq!(cp_metric(&proxy, "edgeplane_controlplane_applies_total", "applied").await, 2.0);
        let info = proxy.metric("edgeplane_controlplane_config_version", &[("origin", "control_plane")]).await;
        assert_eq!(info, Some(1.0));
        let age = proxy.metric("edgeplane_controlplane_seconds_since_last_sync", &[]).await.unwrap();
        assert!(age < 5.0, "just synced: {age}");

        // What applied is on disk for the next start.
        let persisted = std::fs::read_to_string(state.path().join("last-config.json")).unwrap();
        assert!(persisted.contains("version: v2"), "{persisted}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_config_costs_one_conditional_request_and_no_parse() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let cp = Cp::start().await;
        cp.write("c.yaml", &config(up.addr(), "v1"));
        let state = tempfile::tempdir().unwrap();
        let proxy = TestProxy::start_control_plane(settings(cp.url("c.yaml"), state.path())).await.unwrap();
        eventually("five 304s", APPLY_WITHIN, || async { cp.requests("GET 304") >= 5 }).await;
        assert_eq!(cp.requests("GET 200"), 1, "only the first fetch has a body: {}", cp.status());
        assert!(cp_metric(&proxy, "edgeplane_controlplane_fetches_total", "not_modified").await >= 5.0);
        assert_eq!(cp_metric(&proxy, "edgeplane_controlplane_fetches_total", "changed").await, 1.0);
        // Nothing reached the reload path after the first config.
        assert_eq!(proxy.handle().table().generation, 2, "generation 1 is the empty start");
        assert_eq!(proxy.metric("edgeplane_config_reloads_total", &[("result", "success")]).await, Some(1.0));
        assert_eq!(proxy.metric("edgeplane_config_reloads_total", &[("result", "unchanged")]).await, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipy_repo_codebase_serves_the_config_through_its_manifest() {
    guard(async {
        let (a, b) =
            (HttpUpstream::start("a", HttpProto::Http1).await, HttpUpstream::start("b", HttpProto::Http1).await);
        let cp = Cp::start().await;
        let codebase = "repo/edgeplane-sidecar/uuid-1.sidecar.sa.ns";
        cp.write(&format!("{codebase}/main.js"), "// not ours\n");
        let as_json = |yaml: &str| serde_json::to_string(&config_model::from_yaml_str(yaml).unwrap()).unwrap();
        cp.write(&format!("{codebase}/config.json"), &as_json(&config(a.addr(), "v1")));
        let state = tempfile::tempdir().unwrap();
        let url = cp.url(&format!("{codebase}/"));
        let proxy = TestProxy::start_control_plane(settings(url.clone(), state.path())).await.unwrap();
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v1");
        let shown = source(&proxy).await;
        assert_eq!(shown["live"]["location"], format!("{url}config.json"), "{shown}");

        // Polled with HEAD, as Pipy sidecars poll a repo; a change of the
        // codebase (any file) changes its version.
        eventually("HEAD polls", APPLY_WITHIN, || async { cp.requests("HEAD 200") + cp.requests("HEAD 304") >= 3 })
            .await;
        cp.write(&format!("{codebase}/config.json"), &as_json(&config(b.addr(), "v2")));
        wait_version(&proxy, "v2").await;
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v2");
        // The ACK went to the codebase URL.
        eventually("ACK", APPLY_WITHIN, || async {
            let status = cp.status();
            status["instances"]["sidecar-1"]["path"] == format!("/{codebase}/")
                && cp.last_report()["state"] == "applied"
        })
        .await;
    })
    .await;
}

/// With `report_every_poll` (the Pipy form's setting) a report follows
/// every poll, not only a change; after a rejection they keep saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_follow_every_poll_when_asked_and_keep_a_rejection_visible() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let cp = Cp::start().await;
        cp.write("c.yaml", &config(up.addr(), "v1"));
        let state = tempfile::tempdir().unwrap();
        let mut every_poll = settings(cp.url("c.yaml"), state.path());
        every_poll.report_every_poll = true;
        let proxy = TestProxy::start_control_plane(every_poll).await.unwrap();
        let reports = || cp.status()["instances"]["sidecar-1"]["reports"].as_u64().unwrap_or(0);
        eventually("a report per poll", APPLY_WITHIN * 5, || async { reports() >= 4 }).await;
        let last = cp.last_report();
        assert_eq!((last["state"].as_str(), last["uuid"].as_str()), (Some("applied"), Some("sidecar-1")), "{last}");
        assert!(last["name"].as_str().is_some_and(|n| !n.is_empty()), "{last}");

        cp.write("c.yaml", &config(up.addr(), "v2").replace("      - cluster: app\n", "      - cluster: nope\n"));
        eventually("rejected", APPLY_WITHIN, || async {
            cp_metric(&proxy, "edgeplane_controlplane_applies_total", "rejected").await == 1.0
        })
        .await;
        let after_rejection = reports();
        eventually("more reports", APPLY_WITHIN * 5, || async { reports() >= after_rejection + 3 }).await;
        let last = cp.last_report();
        assert_eq!(last["state"], "rejected", "a heartbeat after a rejection: {last}");
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_configs_are_reported_and_never_apply_partly() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let cp = Cp::start().await;
        let good = config(up.addr(), "v1");
        cp.write("c.yaml", &good);
        let state = tempfile::tempdir().unwrap();
        let proxy = TestProxy::start_control_plane(settings(cp.url("c.yaml"), state.path())).await.unwrap();
        let web = proxy.addr("web");
        let cases = [
            ("syntax", good.replace("      - cluster: app\n", "      - { cluster: app\n"), "line "),
            (
                "semantics",
                good.replace("      - cluster: app\n", "      - cluster: nope\n"),
                "listeners[0].routes[0].cluster",
            ),
            // A new listener that is fine but arrives with a broken cluster:
            // nothing of it may be bound.
            (
                "partial",
                format!(
                    "{}  - name: extra\n    bind: 127.0.0.1:0\n    routes: [ {{ cluster: app }} ]\n",
                    good.replace("clusters:\n", "").split("  - name: app").next().unwrap()
                ) + "clusters:\n  - name: app\n    endpoints: [ \"not an address\" ]\n",
                "clusters[0].endpoints[0]",
            ),
        ];
        for (n, (what, text, names)) in cases.iter().enumerate() {
            cp.write("c.yaml", text);
            let rejected = n as f64 + 1.0;
            eventually(what, APPLY_WITHIN, || async {
                cp_metric(&proxy, "edgeplane_controlplane_applies_total", "rejected").await == rejected
            })
            .await;
            eventually("this NACK recorded", APPLY_WITHIN, || async {
                let report = cp.last_report();
                report["state"] == "rejected" && report["error"].as_str().is_some_and(|e| e.contains(names))
            })
            .await;
            let report = cp.last_report();
            let error = report["error"].as_str().unwrap_or_default();
            assert!(error.contains(names), "{what}: NACK names the problem ({names}): {report}");
            assert_eq!(report["version"].as_str().map(str::len), Some(16), "the live version stays: {report}");
            assert_ne!(report["attempted"], report["version"], "{report}");
            assert_eq!(served(web).await.unwrap(), "v1", "{what}: the old config serves");
            assert!(proxy.try_addr("extra").is_none(), "{what}: nothing of a rejected config is bound");
            let shown = source(&proxy).await;
            assert!(shown["last_rejected"]["error"].as_str().unwrap().contains(names), "{shown}");
            // The broken version is not fetched and rejected again on every poll.
            let before = cp.requests("GET 304");
            eventually("304s for the rejected version", APPLY_WITHIN, || async {
                cp.requests("GET 304") >= before + 3
            })
            .await;
            assert_eq!(cp_metric(&proxy, "edgeplane_controlplane_applies_total", "rejected").await, rejected);
        }
        // The persisted config is still the good one.
        let persisted = std::fs::read_to_string(state.path().join("last-config.json")).unwrap();
        assert!(persisted.contains("version: v1"), "{persisted}");
        cp.write("c.yaml", &config(up.addr(), "v2"));
        wait_version(&proxy, "v2").await;
        eventually("ACK", APPLY_WITHIN, || async { cp.last_report()["state"] == "applied" }).await;
    })
    .await;
}

/// A one-shot HTTP server that answers every request with `response`
/// (after reading the request head), for the faults a real control plane
/// should not produce.
async fn fault_server(response: Vec<u8>, hold: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let response = response.clone();
            let count = count.clone();
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_none() {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                if hold {
                    // Never answer; the client's timeout must end it.
                    let _ = stream.read(&mut [0u8; 4096]).await;
                    return;
                }
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_truncated_and_slow_answers_are_refused() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let good = config(up.addr(), "v1");
        let truncated = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/yaml\r\netag: \"t1\"\r\ncontent-length: {}\r\n\r\n{}",
            good.len(),
            &good[..good.len() / 2]
        );
        let chunked_huge = {
            let chunk = "#".repeat(4000) + "\n";
            let mut text = String::from("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\netag: \"h1\"\r\n\r\n");
            for _ in 0..4 {
                text.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
            }
            text + "0\r\n\r\n"
        };
        let declared_huge =
            "HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\netag: \"d1\"\r\n\r\nversion: x\n".to_owned();
        let cases = [
            ("truncated", truncated, false, "truncated"),
            ("chunked body over the cap", chunked_huge, false, "too_large"),
            ("declared length over the cap", declared_huge, false, "too_large"),
            ("never answers", String::new(), true, "timeout"),
        ];
        for (what, response, hold, kind) in cases {
            let (addr, hits) = fault_server(response.into_bytes(), hold).await;
            let state = tempfile::tempdir().unwrap();
            let mut settings = settings(format!("http://{addr}/c.yaml"), state.path());
            settings.max_body_bytes = 8 << 10;
            settings.timeout = config_model::Duration::from("300ms");
            settings.report_status = false;
            let proxy = TestProxy::start_control_plane(settings).await.unwrap();
            assert!(!proxy.handle().is_ready(), "{what}: nothing applied, not ready");
            assert!(proxy.try_addr("web").is_none(), "{what}: no listener from a bad body");
            eventually(what, APPLY_WITHIN, || async {
                proxy.metric("edgeplane_controlplane_fetches_total", &[("result", kind)]).await.unwrap_or(0.0) >= 2.0
            })
            .await;
            assert!(hits.load(Ordering::SeqCst) >= 2, "{what}: retried");
            assert_eq!(cp_metric(&proxy, "edgeplane_controlplane_applies_total", "applied").await, 0.0, "{what}");
            let shown = source(&proxy).await;
            assert!(shown["last_fetch_error"]["consecutive"].as_u64().unwrap() >= 1, "{what}: {shown}");
            assert!(!state.path().join("last-config.json").exists(), "{what}: nothing persisted");
            assert_eq!(proxy.admin_get("/ready").await.0, 503, "{what}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_mid_run_keeps_serving_and_a_flapping_control_plane_converges() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let mut cp = Cp::start().await;
        cp.write("c.yaml", &config(up.addr(), "v1"));
        let state = tempfile::tempdir().unwrap();
        let proxy = TestProxy::start_control_plane(settings(cp.url("c.yaml"), state.path())).await.unwrap();
        let web = proxy.addr("web");

        // Continuous traffic through the whole test.
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let load = {
            let (stop, failures) = (stop.clone(), failures.clone());
            tokio::spawn(async move {
                let mut conn = Http1Conn::connect(web).await;
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    match conn.send(simple_request("GET", "/", "cp.test", &[])).await {
                        Ok(res) if res.status() == 200 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    sent += 1;
                }
                sent
            })
        };

        for round in 0..3 {
            cp.stop().await;
            let errors = cp_metric(&proxy, "edgeplane_controlplane_fetches_total", "connect_error").await;
            eventually("fetch errors while down", APPLY_WITHIN, || async {
                cp_metric(&proxy, "edgeplane_controlplane_fetches_total", "connect_error").await >= errors + 2.0
            })
            .await;
            assert_eq!(served(web).await.unwrap(), format!("v{}", round + 1), "serves through the outage");
            assert!(proxy.handle().is_ready(), "an outage does not take readiness away");
            let shown = source(&proxy).await;
            assert!(shown["last_fetch_error"]["consecutive"].as_u64().unwrap() >= 2, "{shown}");
            let tag = format!("v{}", round + 2);
            cp.write("c.yaml", &config(up.addr(), &tag));
            cp.restart().await;
            wait_version(&proxy, &tag).await;
        }
        stop.store(true, Ordering::Relaxed);
        let sent = load.await.unwrap();
        assert_eq!(failures.load(Ordering::SeqCst), 0, "no failed request in {sent} across outages");
        assert_eq!(source(&proxy).await["last_fetch_error"]["consecutive"], 0);
        eventually("ACK after recovery", APPLY_WITHIN, || async { cp.last_report()["state"] == "applied" }).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_an_outage_serves_the_persisted_config() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let mut cp = Cp::start().await;
        cp.write("c.yaml", &config(up.addr(), "v1"));
        let state = tempfile::tempdir().unwrap();
        let first = TestProxy::start_control_plane(settings(cp.url("c.yaml"), state.path())).await.unwrap();
        assert_eq!(served(first.addr("web")).await.unwrap(), "v1");
        drop(first);
        cp.stop().await;

        // Default policy: the persisted config makes the proxy ready.
        let proxy = TestProxy::start_control_plane(settings(cp.url("c.yaml"), state.path())).await.unwrap();
        assert!(proxy.handle().is_ready());
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v1");
        let shown = source(&proxy).await;
        assert_eq!(shown["live"]["origin"], "persisted", "{shown}");
        assert_eq!(shown["live"]["confirmed"], false, "{shown}");
        assert_eq!(proxy.metric("edgeplane_controlplane_config_version", &[("origin", "persisted")]).await, Some(1.0));
        drop(proxy);

        // `ready: fresh`: the persisted config serves, but /ready waits for
        // the control plane.
        let mut fresh = settings(cp.url("c.yaml"), state.path());
        fresh.ready = config_model::ReadyPolicy::Fresh;
        let proxy = TestProxy::start_control_plane(fresh).await.unwrap();
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v1");
        assert_eq!(proxy.admin_get("/ready").await.0, 503);
        // The control plane comes back with the same config: confirmed, ready.
        cp.restart().await;
        eventually("ready once confirmed", APPLY_WITHIN, || async { proxy.admin_get("/ready").await.0 == 200 }).await;
        assert_eq!(source(&proxy).await["live"]["confirmed"], true);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_at_start_with_nothing_persisted_waits_then_applies() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let mut cp = Cp::start().await;
        cp.write("c.yaml", &config(up.addr(), "v1"));
        cp.stop().await;
        let state = tempfile::tempdir().unwrap();
        let proxy = TestProxy::start_control_plane(settings(cp.url("c.yaml"), state.path())).await.unwrap();
        assert!(!proxy.handle().is_ready());
        assert_eq!(proxy.admin_get("/ready").await.0, 503);
        assert!(proxy.try_addr("web").is_none());
        cp.restart().await;
        eventually("applied once the control plane is up", APPLY_WITHIN, || async {
            proxy.try_addr("web").is_some() && proxy.handle().is_ready()
        })
        .await;
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_persisted_file_is_ignored() {
    guard(async {
        let state = tempfile::tempdir().unwrap();
        let (addr, _) =
            fault_server(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec(), false).await;
        for damage in ["", "{\"envelope\":1,", "not json at all"] {
            std::fs::write(state.path().join("last-config.json"), damage).unwrap();
            let proxy =
                TestProxy::start_control_plane(settings(format!("http://{addr}/c.yaml"), state.path())).await.unwrap();
            assert!(!proxy.handle().is_ready(), "{damage:?}");
            assert!(source(&proxy).await["live"].is_null());
            assert!(cp_metric(&proxy, "edgeplane_controlplane_fetches_total", "http_error").await >= 1.0);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_versions_apply_under_load_without_a_failed_request() {
    guard(async {
        let (a, b) =
            (HttpUpstream::start("a", HttpProto::Http1).await, HttpUpstream::start("b", HttpProto::Http1).await);
        let cp = Cp::start().await;
        cp.write("c.yaml", &config(a.addr(), "v0"));
        let state = tempfile::tempdir().unwrap();
        let mut settings = settings(cp.url("c.yaml"), state.path());
        // The reference control plane holds polls until a change.
        settings.long_poll = Some(config_model::Duration::from("1s"));
        let proxy = TestProxy::start_control_plane(settings).await.unwrap();
        let web = proxy.addr("web");
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (stop, failures) = (stop.clone(), failures.clone());
            clients.push(tokio::spawn(async move {
                let mut conn = Http1Conn::connect(web).await;
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    match conn.send(simple_request("GET", "/", "cp.test", &[])).await {
                        Ok(res) if res.status() == 200 => {}
                        Ok(res) => failures.lock().unwrap().push(format!("status {}", res.status())),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                    sent += 1;
                }
                sent
            }));
        }
        for n in 1..=100 {
            let tag = format!("v{n}");
            cp.write("c.yaml", &config(if n % 2 == 0 { a.addr() } else { b.addr() }, &tag));
            wait_version(&proxy, &tag).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut sent = 0;
        for client in clients {
            sent += client.await.unwrap();
        }
        let failures = std::mem::take(&mut *failures.lock().unwrap());
        assert!(failures.is_empty(), "{} of {sent} requests failed, first: {}", failures.len(), failures[0]);
        assert_eq!(cp_metric(&proxy, "edgeplane_controlplane_applies_total", "applied").await, 101.0);
        assert!(cp.status()["requests"]["GET 200"].as_u64().unwrap() >= 101);
        eprintln!("{sent} requests during 100 versions");
    })
    .await;
}

/// The proxy's CA, the control plane's certificate, and a client
/// certificate for the proxy.
struct ControlPlanePki {
    ca: Ca,
    server: pki::Issued,
    client: pki::Issued,
}

impl ControlPlanePki {
    fn new() -> Self {
        let ca = Ca::new("control plane CA");
        let server = ca.server(&["cp.mesh.test"]);
        let client = ca.identity("sidecar", "shop");
        ControlPlanePki { ca, server, client }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_http2_and_a_rotated_token_to_the_control_plane() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let keys = ControlPlanePki::new();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.yaml"), config(up.addr(), "v1")).unwrap();
        let mut options = ServerOptions::new(dir.path());
        options.tls = Some(ServerTls {
            cert_pem: keys.server.cert_pem.clone().into_bytes(),
            key_pem: keys.server.key_pem.clone().into_bytes(),
            client_ca_pem: Some(keys.ca.pem().into_bytes()),
        });
        options.token = Some("first-token".into());
        let server = reference::start(options).await.unwrap();
        let url = format!("https://localhost:{}/c.yaml", server.addr().port());
        let state = tempfile::tempdir().unwrap();
        let token_file = state.path().join("token");
        std::fs::write(&token_file, "first-token\n").unwrap();
        let with_tls = |client: bool| {
            let mut settings = settings(url.clone(), state.path());
            settings.token_file = Some(token_file.display().to_string());
            settings.tls = Some(config_model::ControlPlaneTls {
                ca: Some(config_model::PemSource::Pem(keys.ca.pem())),
                cert: client.then(|| config_model::PemSource::Pem(keys.client.cert_pem.clone())),
                key: client.then(|| config_model::KeySource::Pem(keys.client.key_pem.clone())),
                server_name: Some("cp.mesh.test".into()),
            });
            settings
        };

        // Without a client certificate the control plane refuses the handshake.
        let refused = TestProxy::start_control_plane(with_tls(false)).await.unwrap();
        assert!(!refused.handle().is_ready());
        assert!(cp_metric(&refused, "edgeplane_controlplane_fetches_total", "connect_error").await >= 1.0);
        drop(refused);

        let proxy = TestProxy::start_control_plane(with_tls(true)).await.unwrap();
        assert!(proxy.handle().is_ready(), "{}", source(&proxy).await);
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v1");
        let versions = server.status_json()["versions"].clone();
        assert!(versions["HTTP/2.0"].as_u64().unwrap_or(0) >= 1, "ALPN chose HTTP/2: {versions}");
        assert_eq!(versions["HTTP/1.1"].as_u64().unwrap_or(0), 0, "{versions}");

        // A wrong token is refused (401, counted as an HTTP error) …
        std::fs::write(&token_file, "stale-token\n").unwrap();
        eventually("401s", APPLY_WITHIN, || async {
            cp_metric(&proxy, "edgeplane_controlplane_fetches_total", "http_error").await >= 1.0
        })
        .await;
        // … and the rotated one is used at the next poll.
        std::fs::write(&token_file, "first-token\n").unwrap();
        std::fs::write(dir.path().join("c.yaml"), config(up.addr(), "v2")).unwrap();
        wait_version(&proxy, "v2").await;
        assert!(server.status_json()["requests"]["GET 401"].as_u64().unwrap_or(0) >= 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_by_prior_knowledge() {
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let cp = Cp::start().await;
        cp.write("c.yaml", &config(up.addr(), "v1"));
        let state = tempfile::tempdir().unwrap();
        let mut settings = settings(cp.url("c.yaml"), state.path());
        settings.http_version = config_model::ControlPlaneHttp::Http2;
        let proxy = TestProxy::start_control_plane(settings).await.unwrap();
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v1");
        let versions = cp.status()["versions"].clone();
        assert!(versions["HTTP/2.0"].as_u64().unwrap_or(0) >= 1, "{versions}");
        assert_eq!(versions["HTTP/1.1"].as_u64().unwrap_or(0), 0, "{versions}");
    })
    .await;
}

/// A TLS listener whose certificate and key arrive inline in the config,
/// as osm-edge sends them: a new config rotates them for new handshakes.
fn tls_config(issued: &pki::Issued, tag: &str) -> String {
    serde_json::json!({
        "version": tag,
        "listeners": [{
            "name": "https",
            "bind": "127.0.0.1:0",
            "tls": { "certificates": [ { "cert": { "pem": issued.cert_pem }, "key": { "pem": issued.key_pem } } ] },
            "routes": [ { "direct_response": { "status": 200, "body": tag } } ]
        }]
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_inside_the_config_rotate_with_it() {
    guard(async {
        let ca = Ca::new("mesh CA");
        let (first, second) = (ca.server(&["shop.mesh.test"]), ca.server(&["shop.mesh.test"]));
        let cp = Cp::start().await;
        cp.write("c.json", &tls_config(&first, "v1"));
        let state = tempfile::tempdir().unwrap();
        let proxy = TestProxy::start_control_plane(settings(cp.url("c.json"), state.path())).await.unwrap();
        let addr = proxy.addr("https");
        let presented = || async {
            let config = pki::client_config(&ca.pem(), None, &["http/1.1"]);
            let tls = pki::connect(addr, "shop.mesh.test", config).await.unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        };
        assert_eq!(presented().await, first.chain()[0].to_vec());
        let config = pki::client_config(&ca.pem(), None, &["http/1.1"]);
        assert_eq!(pki::https_get(addr, "shop.mesh.test", config, "/").await.unwrap(), (200, "v1".into()));

        cp.write("c.json", &tls_config(&second, "v2"));
        wait_version(&proxy, "v2").await;
        assert_eq!(presented().await, second.chain()[0].to_vec(), "new handshakes get the new certificate");
        let certs: Value = serde_json::from_str(&proxy.admin_get("/certs").await.1).unwrap();
        assert_eq!(certs["certificates"].as_array().unwrap().len(), 1, "{certs}");
        // Keys from the control plane never show in /config, nor in the persisted file's listing.
        let dump = proxy.admin_get("/config").await.1;
        assert!(!dump.contains("PRIVATE KEY"), "{dump}");
    })
    .await;
}

/// nginx, a static file server nobody here wrote, serving the config with
/// its own ETags (mtime and size) and 304s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_the_config_with_etags() {
    edgeplane_tests::tools::require("nginx", "apt-get install -y nginx-light").await;
    guard(async {
        let (a, b) =
            (HttpUpstream::start("a", HttpProto::Http1).await, HttpUpstream::start("b", HttpProto::Http1).await);
        let nginx = Nginx::start().await;
        let file = nginx.root.join("edgeplane.yaml");
        std::fs::write(&file, config(a.addr(), "v1")).unwrap();
        let state = tempfile::tempdir().unwrap();
        let proxy =
            TestProxy::start_control_plane(settings(format!("http://{}/edgeplane.yaml", nginx.addr), state.path()))
                .await
                .unwrap();
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v1");
        eventually("304s from nginx", APPLY_WITHIN, || async { nginx.log_count("GET 304") >= 3 }).await;
        assert_eq!(nginx.log_count("GET 200"), 1, "{}", nginx.log());
        // nginx answers the status POST with 405: counted, harmless.
        assert!(cp_metric(&proxy, "edgeplane_controlplane_status_reports_total", "failed").await >= 1.0);

        // nginx's ETag is mtime and size; move the mtime on so that an edit
        // within the same second is seen too.
        std::fs::write(&file, config(b.addr(), "v2")).unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        wait_version(&proxy, "v2").await;
        assert_eq!(served(proxy.addr("web")).await.unwrap(), "v2");
    })
    .await;
}

struct Nginx {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
    root: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    async fn start() -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        std::fs::create_dir(&root).unwrap();
        let log = dir.path().join("access.log");
        // A free port: bind, read, release (nginx binds it right after).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  types {{ application/yaml yaml; }}\n  log_format brief '$request_method $status';\n  access_log {log} brief;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n  server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
                dir = dir.path().display(),
                log = log.display(),
                root = root.display(),
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new("nginx")
            .args(["-e", &dir.path().join("error.log").display().to_string(), "-c"])
            .arg(&conf)
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        eventually("nginx listening", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        Nginx { child, _dir: dir, root, log, addr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_count(&self, line: &str) -> usize {
        self.log().lines().filter(|l| *l == line).count()
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master (by its PID), which stops its workers; a
    /// SIGKILL would orphan them.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.start_kill();
    }
}

/// The real binary, across a real restart: `--control-plane` and
/// `--persist` on the command line; the second process starts while the
/// control plane is down and serves what the first one persisted. A damaged
/// file and a missing one each get a clear log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_restarted_during_an_outage_serves_the_persisted_config() {
    use edgeplane_tests::process::{ProxyProcess, Signal};
    edgeplane_tests::process::binary_async().await;
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let mut cp = Cp::start().await;
        let port = edgeplane_tests::harness::free_port();
        cp.write("c.yaml", &config(up.addr(), "v1").replace("127.0.0.1:0", &format!("127.0.0.1:{port}")));
        let state = tempfile::tempdir().unwrap();
        let persist = state.path().join("last.json").display().to_string();
        let url = cp.url("c.yaml");
        let args = ["--control-plane", url.as_str(), "--persist", persist.as_str()];
        let web: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

        // Each process ends (and frees the port) before the next starts.
        async fn stop(mut process: ProxyProcess) {
            process.signal(Signal::Term);
            assert!(process.wait_exit(Duration::from_secs(30)).await.is_some_and(|s| s.success()));
        }
        let first = ProxyProcess::spawn_source(&args, &[], true).await.unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(served(web).await.unwrap(), "v1");
        stop(first).await;
        cp.stop().await;

        let second = ProxyProcess::spawn_source(&args, &[], true).await.unwrap_or_else(|f| panic!("{f}"));
        second.wait_for_stderr("starting from the persisted config", Duration::from_secs(10)).await;
        assert_eq!(served(web).await.unwrap(), "v1", "the persisted config serves");
        stop(second).await;

        // Damaged: ignored with a line that names the file; nothing served.
        let text = std::fs::read_to_string(&persist).unwrap();
        std::fs::write(&persist, text.replace("v1", "v9")).unwrap();
        let third = ProxyProcess::spawn_source(&args, &[], false).await.unwrap_or_else(|f| panic!("{f}"));
        let line = third.wait_for_stderr("is damaged", Duration::from_secs(10)).await;
        assert!(line.contains(&persist) && line.contains("checksum mismatch"), "{line}");
        let (status, _, _) = edgeplane_tests::client::get(third.admin(), "localhost", "/ready").await;
        assert_eq!(status, 503);
        stop(third).await;

        // None at all: said plainly, and the control plane is asked again.
        std::fs::remove_file(&persist).unwrap();
        let fourth = ProxyProcess::spawn_source(&args, &[], false).await.unwrap_or_else(|f| panic!("{f}"));
        fourth.wait_for_stderr("none persisted yet; serving nothing until it answers", Duration::from_secs(10)).await;
        cp.restart().await;
        eventually("applied after the outage", APPLY_WITHIN, || async { served(web).await.is_ok() }).await;
    })
    .await;
}

/// A Pipy repo as osm-edge/FSM controllers serve one: the manifest (with
/// the codebase's ETag, for GET and HEAD) and `config.json.gz`.
struct PipyRepo {
    addr: SocketAddr,
    /// The ETag and the `config.json.gz` body.
    served: Arc<std::sync::Mutex<(String, Vec<u8>)>>,
    gz_fetches: Arc<AtomicUsize>,
}

const PIPY_CODEBASE: &str = "/repo/osm-edge-sidecar/x/";

impl PipyRepo {
    async fn start(etag: &str, body: Vec<u8>) -> PipyRepo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(std::sync::Mutex::new((etag.to_owned(), body)));
        let gz_fetches = Arc::new(AtomicUsize::new(0));
        let (state, count) = (served.clone(), gz_fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let (state, count) = (state.clone(), count.clone());
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut stream).await else { return };
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
                    let (etag, gz) = state.lock().unwrap().clone();
                    let (status, body) = if path == PIPY_CODEBASE {
                        ("200 OK", b"/main.js\n/config.json.gz\n".to_vec())
                    } else if path == format!("{PIPY_CODEBASE}config.json.gz") {
                        count.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", gz)
                    } else {
                        ("404 Not Found", Vec::new())
                    };
                    let mut response = format!(
                        "HTTP/1.1 {status}\r\netag: \"{etag}\"\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    if method != "HEAD" {
                        response.extend_from_slice(&body);
                    }
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        PipyRepo { addr, served, gz_fetches }
    }

    fn serve(&self, etag: &str, body: Vec<u8>) {
        *self.served.lock().unwrap() = (etag.to_owned(), body);
    }

    fn url(&self) -> String {
        format!("http://{}{PIPY_CODEBASE}", self.addr)
    }
}

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

/// An edgeplane config as JSON (what a `config.json.gz` may hold besides a
/// PipyConf), its listener `web` on `port`.
fn json_config(up: SocketAddr, tag: &str, port: u16) -> String {
    let yaml = config(up, tag).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    serde_json::to_string(&config_model::from_yaml_str(&yaml).unwrap()).unwrap()
}

/// `edgeplane --log-level=info --admin-port=PORT URL`, as osm-edge starts
/// its Pipy sidecar (JSON logs by the environment, for the ready line).
async fn spawn_pipy_sidecar(repo: &PipyRepo, admin_port: u16) -> edgeplane_tests::process::ProxyProcess {
    spawn_pipy_sidecar_with(repo, admin_port, &[]).await
}

/// [`spawn_pipy_sidecar`] with more environment (later entries win).
async fn spawn_pipy_sidecar_with(
    repo: &PipyRepo,
    admin_port: u16,
    more: &[(&str, &str)],
) -> edgeplane_tests::process::ProxyProcess {
    let admin_flag = format!("--admin-port={admin_port}");
    let url = repo.url();
    let args = ["--log-level=info", admin_flag.as_str(), url.as_str()];
    // osm-edge's stats, Prometheus and probe ports, on free ports: tests share the host.
    let mut envs = vec![
        ("EDGEPLANE_LOG_FORMAT", "json"),
        ("EDGEPLANE_OSM_STATS_BIND", "127.0.0.1:0"),
        ("EDGEPLANE_OSM_PROMETHEUS_BIND", "127.0.0.1:0"),
        ("EDGEPLANE_OSM_LIVENESS_BIND", "127.0.0.1:0"),
        ("EDGEPLANE_OSM_READINESS_BIND", "127.0.0.1:0"),
        ("EDGEPLANE_OSM_STARTUP_BIND", "127.0.0.1:0"),
        ("EDGEPLANE_OSM_HEALTHCHECK_BIND", "127.0.0.1:0"),
    ];
    envs.extend_from_slice(more);
    let process = edgeplane_tests::process::ProxyProcess::spawn_args(&args, &envs, false)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(process.admin(), SocketAddr::from(([127, 0, 0, 1], admin_port)), "--admin-port is the admin server");
    process
}

async fn admin_status(admin: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = edgeplane_tests::client::get(admin, "localhost", path).await;
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

/// Pipy's polls are 5 s apart: a change shows within two, plus slack.
const PIPY_APPLY_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipy_command_line_runs_the_sidecar_from_a_gzipped_repo_config() {
    edgeplane_tests::process::binary_async().await;
    guard(async {
        let (a, b) =
            (HttpUpstream::start("a", HttpProto::Http1).await, HttpUpstream::start("b", HttpProto::Http1).await);
        let (port, admin_port) = (edgeplane_tests::harness::free_port(), edgeplane_tests::harness::free_port());
        let repo = PipyRepo::start("1000", gzip(&json_config(a.addr(), "v1", port))).await;
        let process = spawn_pipy_sidecar(&repo, admin_port).await;
        let admin = process.admin();
        eventually("ready", PIPY_APPLY_WITHIN, || async { admin_status(admin, "/ready").await.0 == 200 }).await;
        let (_, shown) = admin_status(admin, "/config").await;
        assert!(shown.contains(&format!("127.0.0.1:{port}")) && shown.contains("\"web\""), "{shown}");
        let web: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(served(web).await.unwrap(), "v1");
        let (_, source) = admin_status(admin, "/config/source").await;
        let source: Value = serde_json::from_str(&source).unwrap();
        assert_eq!(source["live"]["version"], "1000", "the codebase's ETag: {source}");
        assert_eq!(source["live"]["location"], format!("{}config.json.gz", repo.url()), "{source}");

        // A new codebase version (new ETag) applies at a later HEAD poll.
        repo.serve("1001", gzip(&json_config(b.addr(), "v2", port)));
        eventually("v2 applied", PIPY_APPLY_WITHIN, || async {
            let shown = admin_status(admin, "/config").await.1;
            serde_json::from_str::<Value>(&shown).is_ok_and(|config| config["version"] == "v2")
        })
        .await;
        assert_eq!(served(web).await.unwrap(), "v2");
        assert!(b.requests() >= 1);
        assert_eq!(repo.gz_fetches.load(Ordering::SeqCst), 2, "fetched once per version; HEAD otherwise");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_gzip_from_the_pipy_repo_is_an_error_not_a_config() {
    edgeplane_tests::process::binary_async().await;
    guard(async {
        let up = HttpUpstream::start("a", HttpProto::Http1).await;
        let (port, admin_port) = (edgeplane_tests::harness::free_port(), edgeplane_tests::harness::free_port());
        let repo = PipyRepo::start("1000", b"{\"not\": \"gzip\"}".to_vec()).await;
        let process = spawn_pipy_sidecar(&repo, admin_port).await;
        let admin = process.admin();
        let line = process.wait_for_stderr("cannot decompress", PIPY_APPLY_WITHIN).await;
        assert!(line.contains("config.json.gz") && line.contains("not valid gzip"), "{line}");
        assert_eq!(admin_status(admin, "/ready").await.0, 503, "no config yet");

        // A good one applies; a later bad one leaves it serving.
        repo.serve("1001", gzip(&json_config(up.addr(), "v1", port)));
        eventually("ready", PIPY_APPLY_WITHIN, || async { admin_status(admin, "/ready").await.0 == 200 }).await;
        let web: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(served(web).await.unwrap(), "v1");
        let mark = process.stderr_mark();
        let truncated = gzip(&json_config(up.addr(), "v2", port));
        repo.serve("1002", truncated[..truncated.len() / 2].to_vec());
        let line = process.wait_for_stderr_since(mark, "cannot decompress", PIPY_APPLY_WITHIN).await;
        assert!(line.contains("the current config stays"), "{line}");
        assert_eq!(served(web).await.unwrap(), "v1");
        assert_eq!(admin_status(admin, "/ready").await.0, 200);
        assert!(!process.stderr_lines().iter().any(|line| line.contains("panicked")), "no panic");
    })
    .await;
}

/// The Pipy form beside the subcommands: nothing at all is help and exit 2,
/// as before; a global option may still precede a subcommand; a repo URL
/// with a subcommand, or `--admin-port` without a URL, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipy_form_and_the_subcommands_share_the_command_line() {
    use edgeplane_tests::process::run_command;
    guard(async {
        let none = run_command(&[], &[]).await;
        assert_eq!(none.status.code(), Some(2), "{none:?}");
        assert!(none.stdout.contains("<REPO_URL>") && none.stdout.contains("Commands:"), "{none:?}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, config("127.0.0.1:9".parse().unwrap(), "v1")).unwrap();
        let path = path.to_str().unwrap();
        let check = run_command(&["--log-level=warning", "check", "--config", path], &[]).await;
        assert!(check.status.success(), "{check:?}");

        for refused in [&["http://127.0.0.1:1/repo/x/", "check", "--config", path][..], &["--admin-port=6060"][..]] {
            let out = run_command(refused, &[]).await;
            assert_eq!(out.status.code(), Some(2), "{refused:?}: {out:?}");
        }
    })
    .await;
}

/// A request head read off a raw connection; `None` if it closes first.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// A PipyConf with only probes, as the injector rewrites them: liveness an
/// HTTP probe of the app's `port` at `path`, readiness a TCP probe of the
/// app's port by the health check; no startup probe.
fn probes_only_conf(version: &str, port: u16, path: &str) -> String {
    serde_json::json!({
        "Version": version,
        "Spec": { "Probes": {
            "LivenessProbes": [{ "httpGet": { "path": "/osm-liveness-probe", "port": 15901, "scheme": "HTTP",
                "httpHeaders": [ { "name": "Original-Http-Port", "value": port.to_string() },
                                 { "name": "Original-Http-Path", "value": path } ] } }],
            "ReadinessProbes": [{ "httpGet": { "path": "/osm-healthcheck", "port": 15902, "scheme": "HTTP",
                "httpHeaders": [ { "name": "Original-Tcp-Port", "value": port.to_string() } ] } }],
        } },
    })
    .to_string()
}

/// A probe request as the kubelet sends it; `None` when the connection is
/// refused, reset or closed without an answer.
async fn probe(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut conn = Http1Conn::try_connect(addr).await.ok()?;
    let mut all = vec![("user-agent", "kube-probe/1.29")];
    all.extend_from_slice(headers);
    let response = conn.send(simple_request("GET", path, &addr.to_string(), &all)).await.ok()?;
    Some((response.status().as_u16(), String::from_utf8_lossy(response.body()).into_owned()))
}

/// osm-edge's probe proxies: liveness forwarded to the app's probe path,
/// readiness answered by the TCP health check, no startup probe refused,
/// `:15904` by the request's `Original-Tcp-Port`; a new PipyConf moves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_proxies_send_the_kubelets_probes_where_the_pipyconf_says() {
    edgeplane_tests::process::binary_async().await;
    guard(async {
        use edgeplane_tests::harness::free_port;
        let app = HttpUpstream::start("app", HttpProto::Http1).await;
        let app_port = app.addr().port();
        let repo = PipyRepo::start("1", gzip(&probes_only_conf("1", app_port, "/healthz"))).await;
        let ports: Vec<SocketAddr> = (0..4).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
        let binds: Vec<String> = ports.iter().map(ToString::to_string).collect();
        let envs = [
            ("EDGEPLANE_OSM_LIVENESS_BIND", binds[0].as_str()),
            ("EDGEPLANE_OSM_READINESS_BIND", binds[1].as_str()),
            ("EDGEPLANE_OSM_STARTUP_BIND", binds[2].as_str()),
            ("EDGEPLANE_OSM_HEALTHCHECK_BIND", binds[3].as_str()),
        ];
        let process = spawn_pipy_sidecar_with(&repo, free_port(), &envs).await;
        let admin = process.admin();
        eventually("ready", PIPY_APPLY_WITHIN, || async { admin_status(admin, "/ready").await.0 == 200 }).await;
        let (liveness, readiness, startup, health_check) = (ports[0], ports[1], ports[2], ports[3]);
        let original_tcp_port = app_port.to_string();

        // Liveness: the kubelet's request, on the app's probe path.
        let (status, body) = probe(liveness, "/osm-liveness-probe", &[]).await.expect("an answer");
        let echoed: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status} {body}"));
        assert_eq!(
            (status, echoed["upstream"].as_str(), echoed["path"].as_str()),
            (200, Some("app"), Some("/healthz"))
        );
        assert_eq!(echoed["headers"]["user-agent"], "kube-probe/1.29");
        let (status, _) = probe(liveness, "/osm-liveness-probe", &[]).await.unwrap();
        assert_eq!(status, 200, "every probe, not just the first");

        // Readiness: the TCP health check of the app's port.
        let header = [("Original-Tcp-Port", original_tcp_port.as_str())];
        let (status, body) = probe(readiness, "/osm-healthcheck", &header).await.expect("an answer");
        assert_eq!((status, body), (200, format!("Successfully established connection to 127.0.0.1:{app_port}")));
        // Startup: no probe and no inbound port to send it to.
        assert_eq!(probe(startup, "/osm-startup-probe", &[]).await, None, "refused");

        // :15904 as osm-healthcheck: by the request's header.
        assert_eq!(probe(health_check, "/osm-healthcheck", &header).await.unwrap().0, 200);
        let closed = free_port().to_string();
        let (status, body) = probe(health_check, "/osm-healthcheck", &[("Original-Tcp-Port", &closed)]).await.unwrap();
        assert_eq!((status, body), (404, format!("Failed to establish connection to 127.0.0.1:{closed}")));
        assert_eq!(probe(health_check, "/osm-healthcheck", &[]).await.unwrap().0, 400);
        assert_eq!(probe(health_check, "/", &[("Original-Tcp-Port", "http")]).await.unwrap().0, 400);

        // The probe ports are open to the pod's network: 64 connections
        // each, the next one reset; free again once they close.
        let mut held = Vec::new();
        for _ in 0..64 {
            held.push(tokio::net::TcpStream::connect(health_check).await.unwrap());
        }
        eventually("the 65th refused", PIPY_APPLY_WITHIN, || async {
            probe(health_check, "/osm-healthcheck", &header).await.is_none()
        })
        .await;
        drop(held);
        eventually("served again", PIPY_APPLY_WITHIN, || async {
            probe(health_check, "/osm-healthcheck", &header).await.is_some_and(|(status, _)| status == 200)
        })
        .await;

        // A new PipyConf moves the liveness probe; an app that stops
        // answering fails it (502) instead of hanging the kubelet.
        repo.serve("2", gzip(&probes_only_conf("2", app_port, "/alive")));
        eventually("new probe path", PIPY_APPLY_WITHIN, || async {
            let answer = probe(liveness, "/osm-liveness-probe", &[]).await;
            answer.is_some_and(|(_, body)| body.contains("\"path\":\"/alive\""))
        })
        .await;
        drop(app);
        let (status, body) = probe(liveness, "/osm-liveness-probe", &[]).await.expect("an answer");
        assert_eq!(status, 502, "{body}");
        let (status, _) = probe(readiness, "/osm-healthcheck", &header).await.unwrap();
        assert_eq!(status, 404, "the app's port is closed");
        assert!(!process.stderr_lines().iter().any(|line| line.contains("panicked")), "no panic");
    })
    .await;
}
