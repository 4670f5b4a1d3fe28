//! Runs the proxy in-process from a YAML config, on ephemeral ports.
//!
//! Configs are written with `127.0.0.1:0` binds; [`TestProxy::addr`] gives
//! the port each listener got. The proxy runs its own worker threads and
//! control thread, exactly as the binary does; only signal handling and the
//! config-file watcher are off (tests ask for reloads directly).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use edgeplane::{Options, ProxyHandle, ReloadOutcome, StartError};

/// Hang guard for whole tests; never used to synchronise.
pub const GUARD: Duration = Duration::from_secs(60);

pub async fn guard<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(GUARD, future).await.expect("test hung (hang guard fired)")
}

pub struct TestProxy {
    handle: ProxyHandle,
    config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestProxy {
    /// Starts a proxy with two workers (so cross-worker behaviour is exercised).
    pub fn start(yaml: &str) -> TestProxy {
        Self::try_start(yaml, 2).unwrap_or_else(|error| panic!("proxy failed to start: {error}\nconfig:\n{yaml}"))
    }

    pub fn start_with_workers(yaml: &str, workers: usize) -> TestProxy {
        Self::try_start(yaml, workers).unwrap_or_else(|error| panic!("proxy failed to start: {error}\nconfig:\n{yaml}"))
    }

    pub fn try_start(yaml: &str, workers: usize) -> Result<TestProxy, StartError> {
        Self::try_start_with_admin(yaml, workers, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts a proxy with two workers whose admin server binds `admin`
    /// (e.g. `0.0.0.0:0` to reach it from a non-loopback address).
    pub fn start_with_admin(yaml: &str, admin: SocketAddr) -> TestProxy {
        Self::try_start_with_admin(yaml, 2, admin)
            .unwrap_or_else(|error| panic!("proxy failed to start: {error}\nconfig:\n{yaml}"))
    }

    pub fn try_start_with_admin(yaml: &str, workers: usize, admin: SocketAddr) -> Result<TestProxy, StartError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("edgeplane.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let handle = edgeplane::start(Options {
            source: edgeplane::ConfigSource::File(config_path.clone()),
            workers,
            admin: Some(admin),
            watch_config: false,
            handle_signals: false,
            runtime: edgeplane::RuntimeModel::default(),
            osm: None,
        })?;
        Ok(TestProxy { handle, config_path, _dir: dir })
    }

    /// Starts a proxy (two workers, admin on an ephemeral port) fed by a
    /// control plane: returns after the client's first attempt, whether or
    /// not a config applied.
    pub async fn start_control_plane(settings: config_model::ControlPlane) -> Result<TestProxy, StartError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = Options {
            source: edgeplane::ConfigSource::ControlPlane { settings: Box::new(settings), token: None },
            workers: 2,
            admin: Some("127.0.0.1:0".parse().unwrap()),
            watch_config: false,
            handle_signals: false,
            runtime: edgeplane::RuntimeModel::default(),
            osm: None,
        };
        // Start-up blocks until the client's first attempt is over.
        let handle = tokio::task::spawn_blocking(move || edgeplane::start(options)).await.expect("start panicked")?;
        Ok(TestProxy { handle, config_path: dir.path().join("no-config-file"), _dir: dir })
    }

    /// The bound address of a listener, if it is bound (a proxy fed by a
    /// control plane may not have it yet).
    pub fn try_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.handle.listener_addr(listener)
    }

    /// The bound address of a listener.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.handle.listener_addr(listener).unwrap_or_else(|| panic!("no listener {listener:?}"))
    }

    pub fn admin(&self) -> SocketAddr {
        self.handle.admin_addr()
    }

    /// The admin address to connect to from this host: [`TestProxy::admin`],
    /// with an unspecified IP (`0.0.0.0`) replaced by 127.0.0.1.
    pub fn admin_loopback(&self) -> SocketAddr {
        let admin = self.admin();
        if admin.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), admin.port())
        } else {
            admin
        }
    }

    /// The path of the config file the proxy reads on reload.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    pub fn handle(&self) -> &ProxyHandle {
        &self.handle
    }

    /// Writes a new config file and reloads it, as SIGHUP would.
    pub async fn reload(&self, yaml: &str) -> Result<ReloadOutcome, String> {
        std::fs::write(&self.config_path, yaml).expect("write config");
        self.handle.reload().await
    }

    /// GET on the admin server: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = crate::client::get(self.admin_loopback(), "localhost", path).await;
        (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
    }

    /// Any method on the admin server, from loopback: (status, headers, body).
    pub async fn admin_request(&self, method: &str, path: &str) -> (u16, http::HeaderMap, String) {
        let (status, headers, body) = crate::client::call(self.admin_loopback(), method, "localhost", path).await;
        (status.as_u16(), headers, String::from_utf8_lossy(&body).into_owned())
    }

    /// The value of one metric series from `/metrics`, matched by its full
    /// name and a label subset such as `listener="web",class="2xx"`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, text) = self.admin_get("/metrics").await;
        find_metric(&text, name, labels)
    }
}

/// Polls `check` every 10 ms until it holds; panics after `within`. For
/// state the proxy changes on its own (a health verdict, an ejection's end):
/// the poll is the synchronisation, never a fixed sleep.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Finds a sample in Prometheus/OpenMetrics text.
pub fn find_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

/// A cluster entry for configs: `name` with these endpoint addresses.
pub fn cluster(name: &str, endpoints: &[SocketAddr]) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!("  - name: {name}\n    endpoints: [ {} ]\n", list.join(", "))
}

/// A loopback port that was free a moment ago, for a config that must name
/// its port before the process that binds it starts (across restarts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}
