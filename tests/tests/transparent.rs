//! Transparent interception for real: network namespaces stand in for pods.
//!
//! An "app" namespace gets the sidecar rules from the real `edgeplane-init`
//! and runs the real `edgeplane` binary as UID 1500; a "server" namespace,
//! joined by a veth pair, holds the services the app talks to. Clients are
//! curl, run in the namespaces as an application would run. Every test
//! needs root, `ip`, `setpriv`, curl and the backend's binaries: without
//! them each test prints `SKIPPED: <reason>` and returns — unless
//! `EDGEPLANE_REQUIRE_ROOT_TESTS=1` (the suite's runner sets it), when a
//! missing prerequisite fails the test.
//!
//! Topology (N is unique per test):
//! ```text
//!  app ns (rules, edgeplane as uid 1500)      server ns
//!  10.201.N.1 / fd00:201:N::1  <-- veth -->  10.201.N.2, 10.201.N.3 / fd00:201:N::2
//!  app server :8000, :8001                    HTTP servers :8080, :9090, :7070
//! ```

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};

use edgeplane_tests::process::{binary, init_binary};
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};

/// The header the proxy's routes add, so the servers show who forwarded.
const VIA: &str = "x-intercepted";

static NEXT_TOPOLOGY: AtomicUsize = AtomicUsize::new(1);

/// Why these tests cannot run here, if they cannot.
fn missing_prerequisite(backend: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Some("needs root (network namespaces and netfilter rules)".into());
    }
    let tools: &[&str] = match backend {
        "nft" => &["ip", "setpriv", "curl", "nft", "mosquitto_pub"],
        _ => &["ip", "setpriv", "curl", "iptables-save", "iptables-restore", "ip6tables-restore", "mosquitto_pub"],
    };
    for tool in tools {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Returns from the test with a visible reason, or fails it when the
/// runner requires these tests.
macro_rules! require_root_setup {
    ($backend:expr) => {
        if let Some(reason) = missing_prerequisite($backend) {
            if std::env::var("EDGEPLANE_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
                panic!("EDGEPLANE_REQUIRE_ROOT_TESTS=1 but {reason}");
            }
            // Straight to stderr: the harness captures `eprintln!` of passing tests.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("SKIPPED: {} ({}): {reason}\n", module_path!(), $backend).as_bytes(),
            );
            return;
        }
    };
}

/// Runs a command to completion; its stdout, or a panic with its stderr.
async fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let program = program.as_ref().to_owned();
    let output = tokio::process::Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"));
    assert!(
        output.status.success(),
        "{program:?} {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Two namespaces joined by a veth pair; deleted (with their rules and
/// every socket in them) when dropped.
struct Topology {
    n: usize,
    app: String,
    server: String,
}

impl Topology {
    async fn create() -> Topology {
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let topology = Topology { n, app: format!("ep-app-{id}"), server: format!("ep-srv-{id}") };
        let (veth_app, veth_server) =
            (format!("epa{}x{n}", std::process::id() % 100_000), format!("eps{}x{n}", std::process::id() % 100_000));
        run("ip", &["netns", "add", &topology.app]).await;
        run("ip", &["netns", "add", &topology.server]).await;
        run(
            "ip",
            &[
                "link",
                "add",
                &veth_app,
                "netns",
                &topology.app,
                "type",
                "veth",
                "peer",
                "name",
                &veth_server,
                "netns",
                &topology.server,
            ],
        )
        .await;
        for (ns, dev, addrs) in [
            (&topology.app, &veth_app, vec![topology.v4(1) + "/24", topology.v6(1) + "/64"]),
            (
                &topology.server,
                &veth_server,
                vec![topology.v4(2) + "/24", topology.v4(3) + "/24", topology.v6(2) + "/64"],
            ),
        ] {
            topology.exec_in(ns, &["ip", "link", "set", "lo", "up"]).await;
            for addr in &addrs {
                let mut args = vec!["ip", "addr", "add", addr.as_str(), "dev", dev.as_str()];
                if addr.contains(':') {
                    // No duplicate address detection: usable at once.
                    args.push("nodad");
                }
                topology.exec_in(ns, &args).await;
            }
            topology.exec_in(ns, &["ip", "link", "set", dev, "up"]).await;
        }
        topology
    }

    fn v4(&self, host: u8) -> String {
        format!("10.201.{}.{host}", self.n)
    }

    fn v6(&self, host: u8) -> String {
        format!("fd00:201:{}::{host}", self.n)
    }

    async fn exec_in(&self, ns: &str, command: &[&str]) -> String {
        let mut args = vec!["netns", "exec", ns];
        args.extend_from_slice(command);
        run("ip", &args).await
    }

    /// A plain GET with curl from inside `ns`; the response body.
    async fn curl(&self, ns: &str, url: &str) -> String {
        self.exec_in(ns, &["curl", "-sS", "-g", "--max-time", "10", url]).await
    }

    /// Like [`Self::curl`], but a failure is the result, not a panic.
    async fn try_curl(&self, ns: &str, url: &str) -> Result<String, String> {
        let output = tokio::process::Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sS", "-g", "--max-time", "10", url])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run curl");
        match output.status.success() {
            true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
        }
    }

    /// A listening socket made inside `ns` (a socket keeps the namespace
    /// it was created in, so the test serves it from its own runtime).
    fn bind_in(ns: &str, addr: &str) -> std::net::TcpListener {
        let path = PathBuf::from(format!("/var/run/netns/{ns}"));
        let addr = addr.to_owned();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            std::net::TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        })
        .join()
        .expect("the binding thread")
    }

    async fn serve(&self, ns: &str, name: &str, addr: &str) -> HttpUpstream {
        HttpUpstream::start_on(name, HttpProto::Http1, Self::bind_in(ns, addr)).await
    }

    /// `edgeplane-init` in the app namespace with `args`.
    async fn init(&self, args: &[&str]) -> String {
        self.init_in(&self.app, args).await
    }

    /// `edgeplane-init` in namespace `ns` with `args`.
    async fn init_in(&self, ns: &str, args: &[&str]) -> String {
        let netns = format!("/var/run/netns/{ns}");
        let mut all = vec!["--netns", netns.as_str()];
        all.extend_from_slice(args);
        run(init_binary(), &all).await
    }

    async fn metrics(&self) -> String {
        self.curl(&self.app, "http://127.0.0.1:15000/metrics").await
    }

    /// Connections a listener accepted, by the protocol they turned out to be.
    async fn accepted(&self, listener: &str, protocol: &str) -> u64 {
        let prefix =
            format!("edgeplane_downstream_connections_total{{listener=\"{listener}\",protocol=\"{protocol}\"}} ");
        let metrics = self.metrics().await;
        metrics.lines().find_map(|line| line.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse().unwrap())
    }

    async fn rules(&self, backend: &str) -> String {
        match backend {
            "nft" => self.exec_in(&self.app, &["nft", "list", "ruleset"]).await,
            _ => {
                let v4 = self.exec_in(&self.app, &["iptables-save", "-t", "nat"]).await;
                let v6 = self.exec_in(&self.app, &["ip6tables-save", "-t", "nat"]).await;
                v4 + &v6
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.app, &self.server] {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// mosquitto listening on port 1883 inside a namespace; killed when dropped.
struct Broker {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    async fn start(ns: &str) -> Broker {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            "listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type all\n",
        )
        .unwrap();
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", ns, "/usr/sbin/mosquitto", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto");
        // It logs "running" once its listener accepts connections.
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let running = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let running = line.contains(" running");
                seen.push(line);
                if running {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(running, Ok(true)), "mosquitto did not start in {ns}:\n{}", seen.join("\n"));
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Broker { _child: child, _dir: dir }
    }
}

/// The real proxy in the app namespace, as UID 1500; killed when dropped.
struct Sidecar {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// As UID 1500, exempt from interception by its UID.
    async fn start(topology: &Topology) -> Sidecar {
        Self::start_as(topology, Some(1500), "").await
    }

    /// As `uid` (`None`: root), with `top` added to the config's top level.
    async fn start_as(topology: &Topology, uid: Option<u32>, top: &str) -> Sidecar {
        let dir = tempfile::tempdir().expect("temp dir");
        // UID 1500 must be able to read the config.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let config = dir.path().join("sidecar.yaml");
        std::fs::write(&config, format!("{top}{}", sidecar_config(topology))).unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let log = std::fs::File::create(dir.path().join("edgeplane.log")).unwrap();
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", &topology.app]);
        if let Some(uid) = uid {
            let uid = uid.to_string();
            command.args(["setpriv", "--reuid", &uid, "--regid", &uid, "--clear-groups"]);
        }
        let child = command
            .arg(binary())
            .args(["run", "--no-watch", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn edgeplane");
        let sidecar = Sidecar { child, _dir: dir };
        let edgeplane = binary();
        let ready = tokio::process::Command::new("ip")
            .args(["netns", "exec", &topology.app])
            .arg(&edgeplane)
            .args(["wait-ready", "--admin", "127.0.0.1:15000", "--timeout", "30s"])
            .output()
            .await
            .unwrap();
        assert!(
            ready.status.success(),
            "edgeplane never got ready: {}\n{}",
            String::from_utf8_lossy(&ready.stderr),
            sidecar.log()
        );
        sidecar
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("edgeplane.log")).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn sidecar_config(t: &Topology) -> String {
    format!(
        r#"
admin: {{ bind: "127.0.0.1:15000" }}
listeners:
  - name: outbound
    bind: "[::]:15001"
    transparent: {{ unmatched: passthrough }}
    routes:
      - name: svc
        match: {{ destination: {{ addresses: ["{svc4}/32", "{svc6}/128"], ports: [8080] }} }}
        cluster: svc
        request_headers: {{ set: {{ {VIA}: outbound }} }}
      - name: mqtt
        match: {{ destination: {{ addresses: ["{svc4}/32"], ports: [1883] }} }}
        cluster: broker
  - name: inbound
    bind: "[::]:15003"
    transparent: {{ unmatched: refuse }}
    routes:
      - name: app
        match: {{ destination: {{ ports: [8000] }} }}
        cluster: app
        request_headers: {{ set: {{ {VIA}: inbound }} }}
clusters:
  - {{ name: svc, endpoints: ["{svc4}:8080"] }}
  - {{ name: app, endpoints: ["127.0.0.1:8000"] }}
  - {{ name: broker, endpoints: ["{svc4}:1883"] }}
"#,
        svc4 = t.v4(2),
        svc6 = t.v6(2),
    )
}

/// What a test server saw of the request: the proxy's header, if any.
fn via(body: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    json["headers"][VIA].as_str().map(str::to_owned)
}

fn upstream(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    json["upstream"].as_str().unwrap_or_default().to_owned()
}

/// The rules without counters (`iptables-save` prints packet counts of
/// the built-in chains, which traffic changes).
fn rule_lines(rules: &str) -> Vec<String> {
    rules
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(':'))
        .map(str::to_owned)
        .collect()
}

async fn intercepts_for_real(backend: &str) {
    let t = Topology::create().await;
    let _svc = t.serve(&t.server, "svc", "[::]:8080").await;
    let _other = t.serve(&t.server, "other", "[::]:9090").await;
    let _excluded = t.serve(&t.server, "excluded-port", "[::]:7070").await;
    let _app = t.serve(&t.app, "app", "0.0.0.0:8000").await;
    let _app_admin = t.serve(&t.app, "app-8001", "0.0.0.0:8001").await;

    let excluded_cidr = format!("{}/32", t.v4(3));
    let args = [
        "--backend",
        backend,
        "--ipv6",
        "on",
        "--outbound-exclude-ports",
        "7070",
        "--outbound-exclude-cidrs",
        excluded_cidr.as_str(),
        "--inbound-exclude-ports",
        "8001",
    ];
    t.init(&args).await;
    let sidecar = Sidecar::start(&t).await;

    // Outbound, IPv4 and IPv6: the app's plain curl goes through the proxy,
    // which routes by the original destination and forwards to it.
    let body = t.curl(&t.app, &format!("http://{}:8080/hello", t.v4(2))).await;
    assert_eq!((upstream(&body), via(&body)), ("svc".into(), Some("outbound".into())), "{}", sidecar.log());
    let body = t.curl(&t.app, &format!("http://[{}]:8080/hello", t.v6(2))).await;
    assert_eq!((upstream(&body), via(&body)), ("svc".into(), Some("outbound".into())), "IPv6");

    // MQTT is detected on intercepted connections too: mosquitto_pub in the
    // app reaches mosquitto in the other namespace through the proxy.
    let _broker = Broker::start(&t.server).await;
    let mqtt = t.accepted("outbound", "mqtt").await;
    let published =
        t.exec_in(&t.app, &["mosquitto_pub", "-h", &t.v4(2), "-p", "1883", "-q", "1", "-t", "t/1", "-m", "hi"]).await;
    assert_eq!(published, "");
    assert_eq!(t.accepted("outbound", "mqtt").await, mqtt + 1, "the MQTT connection went through the proxy");

    // No route for port 9090: passed through to the original destination.
    let before = t.accepted("outbound", "unmatched_passthrough").await;
    let body = t.curl(&t.app, &format!("http://{}:9090/", t.v4(2))).await;
    assert_eq!((upstream(&body), via(&body)), ("other".into(), None));
    assert_eq!(t.accepted("outbound", "unmatched_passthrough").await, before + 1);

    // Excluded port and CIDR: straight to the server, the proxy never sees them.
    let http1 = t.accepted("outbound", "http1").await;
    let body = t.curl(&t.app, &format!("http://{}:7070/", t.v4(2))).await;
    assert_eq!((upstream(&body), via(&body)), ("excluded-port".into(), None));
    let body = t.curl(&t.app, &format!("http://{}:8080/", t.v4(3))).await;
    assert_eq!((upstream(&body), via(&body)), ("svc".into(), None), "excluded CIDR");
    assert_eq!(t.accepted("outbound", "http1").await, http1, "excluded traffic bypasses the proxy");

    // Inbound: a client in the other namespace reaches the app through 15003;
    // an excluded inbound port reaches the app directly.
    let body = t.curl(&t.server, &format!("http://{}:8000/", t.v4(1))).await;
    assert_eq!((upstream(&body), via(&body)), ("app".into(), Some("inbound".into())));
    let body = t.curl(&t.server, &format!("http://[{}]:8000/", t.v6(1))).await;
    assert_eq!((upstream(&body), via(&body)), ("app".into(), Some("inbound".into())), "inbound IPv6");
    let body = t.curl(&t.server, &format!("http://{}:8001/", t.v4(1))).await;
    assert_eq!((upstream(&body), via(&body)), ("app-8001".into(), None));
    // The inbound listener refuses what no route takes (`unmatched: refuse`),
    // even where the app listens.
    let _unrouted = t.serve(&t.app, "app-8002", "0.0.0.0:8002").await;
    let refused = t.try_curl(&t.server, &format!("http://{}:8002/", t.v4(1))).await;
    assert!(refused.is_err(), "an unrouted inbound port reached the app: {refused:?}");

    // Re-running replaces the rules: the same rule set (no duplicated
    // jumps), and traffic still flows.
    let first = rule_lines(&t.rules(backend).await);
    t.init(&args).await;
    let again = rule_lines(&t.rules(backend).await);
    assert_eq!(again, first, "a re-run changed the rules");
    if backend != "nft" {
        let jumps = again.iter().filter(|l| *l == "-A OUTPUT -p tcp -j OSM_PROXY_OUTBOUND").count();
        assert_eq!(jumps, 2, "one OUTPUT jump per family:\n{}", again.join("\n"));
    }
    let body = t.curl(&t.app, &format!("http://{}:8080/", t.v4(2))).await;
    assert_eq!(via(&body).as_deref(), Some("outbound"));

    // Cleanup restores the namespace: nothing of ours left, traffic direct.
    t.init(&["--backend", backend, "--ipv6", "on", "--cleanup"]).await;
    let rules = t.rules(backend).await;
    assert!(!rules.contains("OSM_PROXY") && !rules.contains("osm_proxy"), "left after cleanup:\n{rules}");
    let body = t.curl(&t.app, &format!("http://{}:8080/", t.v4(2))).await;
    assert_eq!((upstream(&body), via(&body)), ("svc".into(), None));
    drop(sidecar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_rules_intercept_outbound_and_inbound_traffic() {
    require_root_setup!("iptables");
    intercepts_for_real("iptables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_rules_intercept_outbound_and_inbound_traffic() {
    require_root_setup!("nft");
    intercepts_for_real("nft").await;
}

/// The proxy as root (not exempt by UID): only the mark on its own upstream
/// sockets (`socket_mark`, matched by `edgeplane-init --mark`) keeps its
/// connections from being intercepted again. Without it they would loop
/// back into the outbound listener and the request would never arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_mark_exempts_the_proxys_own_connections() {
    require_root_setup!("iptables");
    let t = Topology::create().await;
    let _svc = t.serve(&t.server, "svc", "[::]:8080").await;
    let _other = t.serve(&t.server, "other", "[::]:9090").await;
    t.init(&["--backend", "iptables", "--ipv6", "off", "--mark", "0x2a"]).await;
    let rules = t.rules("iptables").await;
    assert!(rules.contains("--mark 0x2a"), "no mark rule:\n{rules}");
    let sidecar = Sidecar::start_as(&t, None, "socket_mark: 42\n").await;

    let body = t.curl(&t.app, &format!("http://{}:8080/", t.v4(2))).await;
    assert_eq!((upstream(&body), via(&body)), ("svc".into(), Some("outbound".into())), "{}", sidecar.log());
    // Passed-through connections carry the mark too.
    let body = t.curl(&t.app, &format!("http://{}:9090/", t.v4(2))).await;
    assert_eq!((upstream(&body), via(&body)), ("other".into(), None));
    assert_eq!(t.accepted("outbound", "unmatched_passthrough").await, 1, "exactly one pass-through, no loop");
}

/// The sidecar as osm-edge runs it: `edgeplane --log-level=… --admin-port=…
/// <repo URL>` pulls the controller's `config.json` (a PipyConf) from the
/// reference control plane serving a Pipy-repo layout, translates it, and
/// serves the app's outbound and inbound traffic under edgeplane-init's rules.
struct PipySidecar {
    child: tokio::process::Child,
    _cp: tokio::process::Child,
    _repo: tempfile::TempDir,
    codebase: PathBuf,
    log: PathBuf,
}

const ADMIN_PORT: &str = "6060";

/// Where a sidecar runs and whose it is.
struct Pod<'a> {
    netns: &'a str,
    namespace: &'a str,
    service_account: &'a str,
    /// Where its controller's repo runs: a namespace and an address there.
    repo_netns: &'a str,
    repo_listen: String,
}

impl PipySidecar {
    /// The bookbuyer's sidecar, in the app namespace.
    async fn start(t: &Topology, config: &str) -> PipySidecar {
        let pod = Pod {
            netns: &t.app,
            namespace: "bookbuyer",
            service_account: "bookbuyer",
            repo_netns: &t.server,
            repo_listen: format!("{}:6060", t.v4(2)),
        };
        Self::start_in(&pod, config).await
    }

    async fn start_in(pod: &Pod<'_>, config: &str) -> PipySidecar {
        let repo = tempfile::tempdir().expect("temp dir");
        let name = format!("uuid-1.sidecar.{}.{}", pod.service_account, pod.namespace);
        let codebase = repo.path().join("repo/osm-edge-sidecar").join(&name);
        std::fs::create_dir_all(&codebase).unwrap();
        std::fs::write(codebase.join("main.js"), "// the Pipy script edgeplane does not run\n").unwrap();
        std::fs::write(codebase.join("config.json"), config).unwrap();
        // The repo is the controller's, in another namespace; the sidecar's
        // own connections (UID 1500) are not intercepted.
        let listen = &pod.repo_listen;
        let cp_binary = tokio::task::spawn_blocking(edgeplane_tests::process::cp_binary).await.unwrap();
        let cp = tokio::process::Command::new("ip")
            .args(["netns", "exec", pod.repo_netns])
            .arg(cp_binary)
            .args(["--listen", listen, "--dir"])
            .arg(repo.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn edgeplane-cp");
        let url = format!("http://{listen}/repo/osm-edge-sidecar/{name}/");
        // As the sidecar will see it: from its namespace, as UID 1500.
        let as_sidecar = ["setpriv", "--reuid", "1500", "--regid", "1500", "--clear-groups"];
        let mut reachable = false;
        for _ in 0..200 {
            let mut probe = vec!["netns", "exec", pod.netns];
            probe.extend_from_slice(&as_sidecar);
            probe.extend_from_slice(&["curl", "-sS", "-o", "/dev/null", "--max-time", "2", &url]);
            let probed = tokio::process::Command::new("ip").args(&probe).stdin(Stdio::null()).output().await;
            if probed.is_ok_and(|output| output.status.success()) {
                reachable = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(reachable, "the repo at {url} never answered");
        let log = repo.path().join("edgeplane.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new("ip")
            .args(["netns", "exec", pod.netns])
            .args(as_sidecar)
            .arg(binary())
            .args(["--log-level=info", &format!("--admin-port={ADMIN_PORT}"), &url])
            .env("POD_NAMESPACE", pod.namespace)
            .env("SERVICE_ACCOUNT", pod.service_account)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn edgeplane");
        let sidecar = PipySidecar { child, _cp: cp, _repo: repo, codebase, log };
        let ready = tokio::process::Command::new("ip")
            .args(["netns", "exec", pod.netns])
            .arg(binary())
            .args(["wait-ready", "--admin", &format!("127.0.0.1:{ADMIN_PORT}"), "--timeout", "30s"])
            .output()
            .await
            .unwrap();
        assert!(ready.status.success(), "never ready: {}\n{}", String::from_utf8_lossy(&ready.stderr), sidecar.log());
        sidecar
    }

    fn publish(&self, config: &str) {
        let path = self.codebase.join("config.json");
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, config).unwrap();
        std::fs::rename(&temp, &path).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PipySidecar {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A PipyConf as osm-edge's controller would write it for this pod: the
/// app (bookbuyer) calls bookstore at `.2:14001`, split 80/20 between v1
/// (`.2`) and v2 (`.3`); `/status/…` goes to a cluster with a degrade
/// breaker; inbound, the app on :8000 admits the bookbuyer identity only,
/// and `/limited` allows two requests a minute.
fn pipy_conf(t: &Topology, version: &str, v1: u32, v2: u32) -> String {
    let (service_ip, v1_ip, v2_ip, peer) = (t.v4(2), t.v4(2), t.v4(3), t.v4(2));
    serde_json::json!({
        "Ts": "2026-12-03T05:00:00Z",
        "Version": version,
        "Spec": { "SidecarLogLevel": "info", "SidecarTimeout": 60,
                  "Traffic": { "EnableEgress": false, "HTTP1PerRequestLoadBalancing": true },
                  // The app's probes as the injector rewrites them; no startup probe.
                  "Probes": {
                      "LivenessProbes": [{ "httpGet": { "path": "/osm-liveness-probe", "port": 15901, "scheme": "HTTP",
                          "httpHeaders": [ { "name": "Original-Http-Port", "value": "8000" },
                                           { "name": "Original-Http-Path", "value": "/healthz" } ] },
                          "timeoutSeconds": 1 }],
                      "ReadinessProbes": [{ "httpGet": { "path": "/osm-healthcheck", "port": 15902, "scheme": "HTTP",
                          "httpHeaders": [ { "name": "Original-Tcp-Port", "value": "8000" } ] } }] } },
        "Outbound": {
            "TrafficMatches": { "14001": [ {
                "DestinationIPRanges": { format!("{service_ip}/32"): null },
                "Port": 14001, "Protocol": "http",
                "HttpHostPort2Service": { "bookstore.bookstore": "bookstore.bookstore.svc.cluster.local" },
                "HttpServiceRouteRules": { "bookstore.bookstore.svc.cluster.local": {
                    "RouteRules": [
                        { "Path": "/status/", "Type": "Prefix", "Methods": null,
                          "TargetClusters": { "bookstore/bookstore-fragile|14001": 100 }, "AllowedServices": null },
                        { "Path": ".*", "Type": "Regex", "Headers": null, "Methods": null,
                          "TargetClusters": { "bookstore/bookstore-v1|14001": v1, "bookstore/bookstore-v2|14001": v2 },
                          "AllowedServices": null } ],
                    "ServiceIdentity": "bookbuyer.bookbuyer", "Plugins": null } },
                "TcpServiceRouteRules": null } ] },
            "ClustersConfigs": {
                "bookstore/bookstore-v1|14001": { "Endpoints": { format!("{v1_ip}:14001"): { "Weight": 100 } } },
                "bookstore/bookstore-v2|14001": { "Endpoints": { format!("{v2_ip}:14001"): { "Weight": 100 } } },
                "bookstore/bookstore-fragile|14001": {
                    "Endpoints": { format!("{v1_ip}:14001"): { "Weight": 100 } },
                    "ConnectionSettings": { "http": { "CircuitBreaking": {
                        "StatTimeWindow": 30, "MinRequestAmount": 3, "ErrorAmountThreshold": 3,
                        "DegradedTimeWindow": 30, "DegradedStatusCode": 409 } } } } } },
        "Inbound": {
            "TrafficMatches": { "8000": {
                "Port": 8000, "Protocol": "http", "SourceIPRanges": null,
                "HttpHostPort2Service": { "bookbuyer": "bookbuyer.bookbuyer.svc.cluster.local" },
                "HttpServiceRouteRules": { "bookbuyer.bookbuyer.svc.cluster.local": {
                    "RouteRules": [
                        { "Path": "/limited", "Type": "Prefix", "Methods": ["GET"],
                          "TargetClusters": { "bookbuyer/bookbuyer|8000|local": 100 },
                          "AllowedServices": ["bookbuyer.bookbuyer"],
                          "RateLimit": { "Local": { "Requests": 2, "StatTimeWindow": 60, "ResponseStatusCode": 429 } } },
                        { "Path": ".*", "Type": "Regex", "Methods": null,
                          "TargetClusters": { "bookbuyer/bookbuyer|8000|local": 100 },
                          "AllowedServices": ["bookbuyer.bookbuyer"] } ],
                    "AllowedEndpoints": { peer.clone(): "bookbuyer.bookbuyer" } } } } },
            "ClustersConfigs": { "bookbuyer/bookbuyer|8000|local": { "127.0.0.1:8000": 100 } } },
        "AllowedEndpoints": { peer: "bookbuyer.bookbuyer-pod" },
    })
    .to_string()
}

/// Status and body of a curl from `ns` with extra curl arguments.
async fn curl_status(t: &Topology, ns: &str, args: &[&str]) -> (u16, String) {
    let mut command = vec!["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}"];
    command.extend_from_slice(args);
    let out = t.exec_in(ns, &command).await;
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_osm_edge_sidecar_config_from_a_pipy_repo_serves_the_pod() {
    require_root_setup!("iptables");
    let t = Topology::create().await;
    let _v1 = t.serve(&t.server, "v1", &format!("{}:14001", t.v4(2))).await;
    let _v2 = t.serve(&t.server, "v2", &format!("{}:14001", t.v4(3))).await;
    let _app = t.serve(&t.app, "app", "0.0.0.0:8000").await;
    t.init(&["--backend", "iptables", "--ipv6", "off"]).await;
    let sidecar = PipySidecar::start(&t, &pipy_conf(&t, "1000", 80, 20)).await;
    let bookstore = format!("http://{}:14001/books", t.v4(2));

    // Outbound: the TrafficSplit's 80/20, with osm-edge's identity header.
    let mut v1 = 0;
    for _ in 0..100 {
        let body = t.curl(&t.app, &bookstore).await;
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}\n{}", sidecar.log()));
        assert_eq!(json["headers"]["serviceidentity"], "bookbuyer.bookbuyer");
        v1 += usize::from(upstream(&body) == "v1");
    }
    // Targets are drawn at random by weight: 80 ± 5 standard deviations.
    assert!((60..=96).contains(&v1), "{v1} of 100 to v1 with an 80/20 split");

    // The degrade breaker: three errors open it, then osm-edge's 409.
    for _ in 0..3 {
        let (status, _) = curl_status(&t, &t.app, &[&format!("http://{}:14001/status/500", t.v4(2))]).await;
        assert_eq!(status, 500);
    }
    let (status, body) = curl_status(&t, &t.app, &[&format!("http://{}:14001/status/200", t.v4(2))]).await;
    assert_eq!((status, body.as_str()), (409, "Coming soon ..."), "{}", sidecar.log());

    // Inbound: AllowedServices by the `serviceidentity` header.
    let app = format!("http://{}:8000/", t.v4(1));
    let (status, body) = curl_status(&t, &t.server, &["-H", "serviceidentity: bookbuyer.bookbuyer", &app]).await;
    assert_eq!((status, upstream(&body)), (200, "app".into()));
    let (status, body) = curl_status(&t, &t.server, &["-H", "serviceidentity: bookthief.bookthief", &app]).await;
    assert_eq!((status, body.as_str()), (403, "Access denied"), "the bookthief is refused");
    let (status, _) = curl_status(&t, &t.server, &[&app]).await;
    assert_eq!(status, 403, "no identity, no access");
    // The route's local rate limit: two a minute, then 429.
    let limited = format!("http://{}:8000/limited", t.v4(1));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(curl_status(&t, &t.server, &["-H", "serviceidentity: bookbuyer.bookbuyer", &limited]).await.0);
    }
    assert_eq!(statuses, [200, 200, 429]);
    // The pod's identity for the caller's sidecar, as osm-edge's inbound side sends it.
    let identity = "serviceidentity: bookbuyer.bookbuyer";
    let (status, head) = curl_status(&t, &t.server, &["-D", "-", "-o", "/dev/null", "-H", identity, &app]).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("\nosm-stats: bookbuyer,deployment,bookbuyer,\r\n"), "{head}");

    // The kubelet's probes (from the host side, as the rewritten probes send
    // them): liveness to the app's /healthz, readiness by the TCP health
    // check, startup (none configured) relayed to the app's port; :15904
    // by the request's Original-Tcp-Port.
    let pod = t.v4(1);
    let kubelet = |port: u16, path: &str| format!("http://{pod}:{port}{path}");
    let liveness = kubelet(15901, "/osm-liveness-probe");
    let (status, body) = curl_status(
        &t,
        &t.server,
        &["-A", "kube-probe/1.29", "-H", "Original-Http-Port: 8000", "-H", "Original-Http-Path: /healthz", &liveness],
    )
    .await;
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status} {body}"));
    assert_eq!((status, echoed["upstream"].as_str(), echoed["path"].as_str()), (200, Some("app"), Some("/healthz")));
    let readiness = kubelet(15902, "/osm-healthcheck");
    let (status, body) = curl_status(&t, &t.server, &["-H", "Original-Tcp-Port: 8000", &readiness]).await;
    assert_eq!((status, body.as_str()), (200, "Successfully established connection to 127.0.0.1:8000"));
    let (status, body) = curl_status(&t, &t.server, &[&kubelet(15903, "/osm-startup-probe")]).await;
    assert_eq!((status, upstream(&body)), (200, "app".into()), "relayed to the inbound port");
    let health_check = kubelet(15904, "/osm-healthcheck");
    let (status, _) = curl_status(&t, &t.server, &["-H", "Original-Tcp-Port: 8000", &health_check]).await;
    assert_eq!(status, 200);
    let (status, _) = curl_status(&t, &t.server, &["-H", "Original-Tcp-Port: 8001", &health_check]).await;
    assert_eq!(status, 404, "nothing listens on 8001");

    // A new config (new ETag) applies at the next poll, with no failed
    // request while it does: all traffic moves to v2.
    sidecar.publish(&pipy_conf(&t, "2000", 0, 100));
    let started = std::time::Instant::now();
    let mut consecutive_v2 = 0;
    while consecutive_v2 < 10 {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "not applied in 20 s:\n{}", sidecar.log());
        let (status, body) = curl_status(&t, &t.app, &[&bookstore]).await;
        assert_eq!(status, 200, "a request failed during the change: {body}");
        consecutive_v2 = if upstream(&body) == "v2" { consecutive_v2 + 1 } else { 0 };
    }
    let source = t.curl(&t.app, &format!("http://127.0.0.1:{ADMIN_PORT}/config")).await;
    assert!(source.contains("\"version\": \"2000\""), "{source}");
    // As a Pipy sidecar, it reports its status to the codebase URL after
    // every poll: the repo lists it with the live version (the ETag).
    let source = t.curl(&t.app, &format!("http://127.0.0.1:{ADMIN_PORT}/config/source")).await;
    let source: serde_json::Value = serde_json::from_str(&source).unwrap();
    let live_etag = source["live"]["version"].clone();
    let started = std::time::Instant::now();
    let instance = loop {
        let status = t.curl(&t.server, &format!("http://{}:6060/_status", t.v4(2))).await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let (id, instance) = status["instances"].as_object().and_then(|i| i.iter().next()).expect("an instance");
        assert_eq!(instance["last"]["uuid"].as_str(), Some(id.as_str()), "{instance}");
        // The report about the new config may still be on its way.
        if instance["last"]["version"] == live_etag || started.elapsed() > std::time::Duration::from_secs(12) {
            break instance.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(instance["path"], "/repo/osm-edge-sidecar/uuid-1.sidecar.bookbuyer.bookbuyer/");
    assert_eq!(instance["last"]["version"], live_etag, "the repo's ETag of the live config: {instance}");
    assert_eq!(instance["last"]["state"], "applied");
    assert!(instance["reports"].as_u64() > Some(1), "a report per poll: {instance}");

    // osm-edge's ports: the metric families its dashboards query on 15010,
    // the stats paths on 15000.
    let metrics = t.curl(&t.app, "http://127.0.0.1:15010/stats/prometheus").await;
    let v1_total = "sidecar_cluster_upstream_rq_total{source_namespace=\"bookbuyer\",source_workload_kind=\"Deployment\",source_workload_name=\"bookbuyer\",source_workload_pod=\"\",sidecar_cluster_name=\"bookstore/bookstore-v1|14001\"} ";
    let v1_requests: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix(v1_total))
        .unwrap_or_else(|| panic!("no {v1_total} in\n{metrics}"))
        .parse()
        .unwrap();
    assert!(v1_requests >= v1 as f64, "{v1_requests} < {v1}");
    for family in [
        "sidecar_server_live 1",
        "sidecar_cluster_upstream_rq_xx{",
        "sidecar_response_code_class=\"4\"",
        "sidecar_cluster_upstream_cx_active{sidecar_cluster_name=\"bookstore/bookstore-v2|14001\"}",
        "sidecar_cluster_upstream_rq_pending_overflow{",
        "sidecar_cluster_upstream_rq_timeout{sidecar_cluster_name=\"bookstore/bookstore-v2|14001\"} 0\n",
        "sidecar_cluster_upstream_rq_rx_reset{sidecar_cluster_name=\"bookstore/bookstore-v2|14001\"} 0\n",
        "sidecar_cluster_upstream_rq_tx_reset{sidecar_cluster_name=\"bookstore/bookstore-v2|14001\"} 0\n",
        "sidecar_cluster_upstream_rq_pending_failure_eject{sidecar_cluster_name=\"bookstore/bookstore-v2|14001\"} 0\n",
        "sidecar_cluster_upstream_cx_destroy_local_with_active_rq{sidecar_cluster_name=\"bookstore/bookstore-v2|14001\"} 0\n",
        "sidecar_cluster_upstream_cx_destroy_remote_with_active_rq{sidecar_cluster_name=\"bookstore/bookstore-v2|14001\"} 0\n",
        // The one 429 of `/limited`, a route's limit.
        "http_local_rate_limiter{http_local_rate_limit=\"throttle-route\"} 1\n",
        "http_local_rate_limiter{http_local_rate_limit=\"throttle-service\"} 0\n",
        "sidecar_cluster_external_upstream_rq{sidecar_cluster_name=\"bookstore/bookstore-fragile|14001\",sidecar_response_code=\"500\"} 3\n",
        // (v1 left the config with the change to 0/100, and its per-code series with it.)
        "sidecar_cluster_external_upstream_rq{sidecar_cluster_name=\"bookstore/bookstore-v2|14001\",sidecar_response_code=\"200\"}",
        "sidecar_cluster_external_upstream_rq_xx{sidecar_cluster_name=\"bookstore/bookstore-v2|14001\",sidecar_response_code_class=\"2\"}",
        "sidecar_cluster_external_upstream_rq_completed{sidecar_cluster_name=\"bookstore/bookstore-v2|14001\"}",
        "osm_request_duration_ms_bucket{",
        "destination_namespace=\"bookstore\",destination_kind=\"\",destination_name=\"bookstore-v2\"",
        "le=\"60000\"",
        "le=\"3600000\"",
        "osm_request_duration_ms_count{",
    ] {
        assert!(metrics.contains(family), "no {family} in\n{metrics}");
    }
    assert_eq!(t.curl(&t.app, "http://127.0.0.1:15000/ready").await, "LIVE");
    let listeners = t.curl(&t.app, "http://127.0.0.1:15000/listeners").await;
    assert_eq!(listeners, "outbound-listener::0.0.0.0:15001\ninbound-listener::0.0.0.0:15003\n");
    let dump = t.curl(&t.app, "http://127.0.0.1:15000/config_dump").await;
    assert!(dump.contains("bookstore/bookstore-v2|14001"), "{dump}");
    let stats = t.curl(&t.app, "http://127.0.0.1:15000/stats").await;
    assert!(stats.contains("cluster.bookstore/bookstore-v2|14001.upstream_rq_retry: 0\n"), "{stats}");
    assert!(stats.contains("http_local_rate_limiter.http_local_rate_limit.rate_limited: 1\n"), "{stats}");
    let osm_stat = |l: &str| l.contains("sidecar_cluster") || l.starts_with("cluster.") || l.starts_with("http_local_");
    assert!(stats.lines().all(osm_stat), "{stats}");
    let (status, body) = curl_status(&t, &t.app, &["http://127.0.0.1:15000/nothing"]).await;
    assert_eq!((status, body.as_str()), (404, "Not Found"));
    // Called at the pod's own address (not loopback): refused. (From other
    // pods, the interception rules send port 15000 to the inbound listener.)
    let own_address = format!("http://{}:15000/quitquitquit", t.v4(1));
    let (status, _) = curl_status(&t, &t.app, &["-X", "POST", &own_address]).await;
    assert_eq!(status, 403, "only loopback callers may stop the sidecar");
    let (status, body) = curl_status(&t, &t.app, &["-X", "POST", "http://127.0.0.1:15000/quitquitquit"]).await;
    assert_eq!((status, body.as_str()), (200, "DONE"));
    let mut sidecar = sidecar;
    let exited = tokio::time::timeout(std::time::Duration::from_secs(40), sidecar.child.wait()).await;
    assert!(exited.is_ok_and(|status| status.is_ok()), "the sidecar did not exit after /quitquitquit");
}

/// Two sidecars from PipyConfs, as osm-edge's bookstore demo: bookbuyer's
/// (app namespace) splits 80/20 between bookstore v1 and v2 and sends its
/// identity; bookstore's (server namespace; v1 on :14001 and v2 on :14002
/// share it) admits only bookbuyer, over mTLS with rcgen certificates in
/// the PipyConfs' `Certificate`, and rate-limits `/limited`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_osm_edge_sidecars_carry_bookbuyer_to_bookstore_over_mtls() {
    require_root_setup!("iptables");
    let t = Topology::create().await;
    let _v1 = t.serve(&t.server, "v1", "0.0.0.0:14001").await;
    let _v2 = t.serve(&t.server, "v2", "0.0.0.0:14002").await;
    let ca = edgeplane_tests::pki::Ca::new("osm-ca");
    let (buyer, store, thief) = (
        ca.identity("bookbuyer", "bookbuyer"),
        ca.identity("bookstore", "bookstore"),
        ca.identity("bookthief", "bookthief"),
    );
    // Each sidecar's controller repo runs in the other pod's namespace (in a
    // cluster it is a pod of its own), so that namespace leaves its port alone.
    t.init(&["--backend", "iptables", "--ipv6", "off", "--inbound-exclude-ports", "6061"]).await;
    t.init_in(&t.server, &["--backend", "iptables", "--ipv6", "off", "--inbound-exclude-ports", "6060"]).await;
    let store_pod = Pod {
        netns: &t.server,
        namespace: "bookstore",
        service_account: "bookstore",
        repo_netns: &t.app,
        repo_listen: format!("{}:6061", t.v4(1)),
    };
    let bookstore = PipySidecar::start_in(&store_pod, &bookstore_conf(&t, &ca, &store)).await;
    let bookbuyer = PipySidecar::start(&t, &bookbuyer_conf(&t, "1", &ca, &buyer, 80, 20)).await;
    let books = format!("http://{}:14001/books", t.v4(2));

    // bookbuyer's plain HTTP leaves its pod as mTLS and reaches the app
    // behind bookstore's sidecar with bookbuyer's identity header.
    let mut v1 = 0;
    for _ in 0..100 {
        let (status, body) = curl_status(&t, &t.app, &[&books]).await;
        assert_eq!(status, 200, "{body}\n{}\n{}", bookbuyer.log(), bookstore.log());
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["headers"]["serviceidentity"], "bookbuyer.bookbuyer");
        v1 += usize::from(json["upstream"] == "v1");
    }
    assert!((60..=96).contains(&v1), "{v1} of 100 to v1 with an 80/20 split");
    // bookstore's sidecar labels its answers with `osm-stats`; bookbuyer's keeps it from the app.
    let (status, head) = curl_status(&t, &t.app, &["-D", "-", "-o", "/dev/null", &books]).await;
    assert_eq!(status, 200);
    assert!(!head.to_ascii_lowercase().contains("osm-stats"), "{head}");

    // B3 trace headers pass through both sidecars as the app sent them.
    let b3 = [
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
    ];
    let headers: Vec<String> = b3.iter().map(|(name, value)| format!("{name}: {value}")).collect();
    let mut args: Vec<&str> = headers.iter().flat_map(|h| ["-H", h.as_str()]).collect();
    args.push(&books);
    let (status, body) = curl_status(&t, &t.app, &args).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status} {body}"));
    for (name, value) in b3 {
        assert_eq!(json["headers"][name], value, "{body}");
    }

    // bookstore's local rate limit on /limited (all of it to v1).
    let limited = format!("http://{}:14001/limited", t.v4(2));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(curl_status(&t, &t.app, &[&limited]).await.0);
    }
    assert_eq!(statuses, [200, 200, 429]);

    // Around bookbuyer's sidecar (UID 1500 is not intercepted): plaintext
    // gets nothing from bookstore's; a bookthief with a mesh certificate
    // gets osm-edge's 403.
    let around = |args: &[&str]| {
        let mut all = vec!["setpriv", "--reuid", "1500", "--regid", "1500", "--clear-groups"];
        all.extend_from_slice(&["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let plain = around(&[&books]);
    let output =
        tokio::process::Command::new("ip").args(["netns", "exec", &t.app]).args(&plain).output().await.unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(!out.contains("\"upstream\""), "plaintext reached the app: {out}");
    let files = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (thief_cert, thief_key) = thief.write(files.path(), "bookthief");
    let ca_file = edgeplane_tests::pki::write_pem(files.path(), "ca", &ca.pem());
    for file in [&thief_cert, &thief_key, &ca_file] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let resolve = format!("bookstore.bookstore.cluster.local:14001:{}", t.v4(2));
    let (cert, key, cacert) = (thief_cert.to_str().unwrap(), thief_key.to_str().unwrap(), ca_file.to_str().unwrap());
    let thief_curl = around(&[
        "--cacert",
        cacert,
        "--cert",
        cert,
        "--key",
        key,
        "--resolve",
        &resolve,
        "-H",
        "serviceidentity: bookthief.bookthief",
        "https://bookstore.bookstore.cluster.local:14001/books",
    ]);
    let thief_args: Vec<&str> = thief_curl.iter().map(String::as_str).collect();
    let out = t.exec_in(&t.app, &thief_args).await;
    let (body, code) = out.rsplit_once('\n').unwrap();
    assert_eq!((code, body), ("403", "Access denied"), "{}", bookstore.log());

    // A new bookbuyer config (new ETag): everything to v2, no failed request.
    // Polls are 5 s ± 10% apart: the change shows at the next one, well
    // before a second poll could have come (9 s).
    bookbuyer.publish(&bookbuyer_conf(&t, "2", &ca, &buyer, 0, 100));
    let started = std::time::Instant::now();
    // (Ten v2 answers in a row by chance under 80/20: 1 in 10^7.)
    let mut streak_started = started.elapsed();
    let mut consecutive_v2 = 0;
    while consecutive_v2 < 10 {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "not applied in 20 s:\n{}", bookbuyer.log());
        let sent = started.elapsed();
        let (status, body) = curl_status(&t, &t.app, &[&books]).await;
        assert_eq!(status, 200, "a request failed during the change: {body}");
        if upstream(&body) != "v2" {
            consecutive_v2 = 0;
        } else {
            if consecutive_v2 == 0 {
                streak_started = sent;
            }
            consecutive_v2 += 1;
        }
    }
    assert!(streak_started < std::time::Duration::from_secs(9), "applied after {streak_started:?}: more than one poll");
}

fn certificate(ca: &edgeplane_tests::pki::Ca, issued: &edgeplane_tests::pki::Issued, cn: &str) -> serde_json::Value {
    serde_json::json!({ "CommonName": cn, "CertChain": issued.cert_pem, "PrivateKey": issued.key_pem,
                        "IssuingCA": ca.pem(), "Expiration": "2036-01-01 00:00:00" })
}

/// bookbuyer's PipyConf: bookstore (`.2:14001`) split `v1`/`v2` between
/// the v1 (`:14001`) and v2 (`:14002`) clusters; `/limited` all to v1.
fn bookbuyer_conf(
    t: &Topology,
    version: &str,
    ca: &edgeplane_tests::pki::Ca,
    cert: &edgeplane_tests::pki::Issued,
    v1: u32,
    v2: u32,
) -> String {
    let store = t.v4(2);
    serde_json::json!({
        "Version": version,
        "Spec": { "SidecarTimeout": 60, "Traffic": { "EnableEgress": false } },
        "Certificate": certificate(ca, cert, "bookbuyer.bookbuyer.cluster.local"),
        "Outbound": {
            "TrafficMatches": { "14001": [ {
                "DestinationIPRanges": { format!("{store}/32"): null },
                "Port": 14001, "Protocol": "http",
                "HttpHostPort2Service": { "bookstore.bookstore": "bookstore.bookstore.svc.cluster.local" },
                "HttpServiceRouteRules": { "bookstore.bookstore.svc.cluster.local": {
                    "RouteRules": [
                        { "Path": "/limited", "Type": "Prefix", "Methods": null,
                          "TargetClusters": { "bookstore/bookstore-v1|14001": 100 } },
                        { "Path": ".*", "Type": "Regex", "Methods": null,
                          "TargetClusters": { "bookstore/bookstore-v1|14001": v1, "bookstore/bookstore-v2|14002": v2 } } ],
                    "ServiceIdentity": "bookbuyer.bookbuyer" } } } ] },
            "ClustersConfigs": {
                "bookstore/bookstore-v1|14001": { "Endpoints": { format!("{store}:14001"): { "Weight": 100 } } },
                "bookstore/bookstore-v2|14002": { "Endpoints": { format!("{store}:14002"): { "Weight": 100 } } } } },
    })
    .to_string()
}

/// bookstore's PipyConf: v1 on :14001 and v2 on :14002, both for the
/// bookbuyer identity from the bookbuyer pod only; `/limited` on v1 allows
/// two requests a minute.
fn bookstore_conf(t: &Topology, ca: &edgeplane_tests::pki::Ca, cert: &edgeplane_tests::pki::Issued) -> String {
    let buyer_pod = t.v4(1);
    let service = |port: u16, version: &str, limited: bool| {
        let cluster = format!("bookstore/bookstore-{version}|{port}|local");
        let mut rules = Vec::new();
        if limited {
            rules.push(serde_json::json!({ "Path": "/limited", "Type": "Prefix", "Methods": ["GET"],
                "TargetClusters": { &cluster: 100 }, "AllowedServices": ["bookbuyer.bookbuyer"],
                "RateLimit": { "Local": { "Requests": 2, "StatTimeWindow": 60, "ResponseStatusCode": 429 } } }));
        }
        rules.push(serde_json::json!({ "Path": ".*", "Type": "Regex", "Methods": null,
            "TargetClusters": { &cluster: 100 }, "AllowedServices": ["bookbuyer.bookbuyer"] }));
        serde_json::json!({
            "Port": port, "Protocol": "http", "SourceIPRanges": null,
            "HttpHostPort2Service": { "bookstore": "bookstore.bookstore.svc.cluster.local" },
            "HttpServiceRouteRules": { "bookstore.bookstore.svc.cluster.local": {
                "RouteRules": rules, "AllowedEndpoints": { buyer_pod.clone(): "bookbuyer.bookbuyer" } } } })
    };
    serde_json::json!({
        "Version": "1",
        "Spec": { "SidecarTimeout": 60, "Traffic": { "EnableEgress": false } },
        "Certificate": certificate(ca, cert, "bookstore.bookstore.cluster.local"),
        "Inbound": {
            "TrafficMatches": { "14001": service(14001, "v1", true), "14002": service(14002, "v2", false) },
            "ClustersConfigs": {
                "bookstore/bookstore-v1|14001|local": { "127.0.0.1:14001": 100 },
                "bookstore/bookstore-v2|14002|local": { "127.0.0.1:14002": 100 } } },
        "AllowedEndpoints": { buyer_pod: "bookbuyer.bookbuyer-pod" },
    })
    .to_string()
}
