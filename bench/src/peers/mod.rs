//! The proxies under test and the configs the harness writes for them.
//!
//! Every peer gets an equivalent, fair config for the scenario: the same
//! number of worker threads, keep-alive pools to the upstream, access logs
//! off, no extra features (request ids, tracing, stats tags) switched on.
//! The "direct" baseline is not a peer: the runner points the load at the
//! upstream itself.

pub mod edgeplane;
pub mod envoy;
pub mod haproxy;
pub mod nginx;
pub mod pipy;

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::model::Skipped;

/// What travels on one side of the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1 (keep-alive unless the scenario says otherwise).
    Http1,
    /// HTTP/2 over cleartext, prior knowledge (h2c).
    Http2,
    /// Opaque TCP.
    Tcp,
    /// MQTT (3.1.1). edgeplane proxies it with its MQTT listener; the other
    /// peers relay it as opaque TCP, the way they would be deployed in front
    /// of a broker without an MQTT module.
    Mqtt,
}

/// What a proxy must do in a scenario.
#[derive(Clone, Debug)]
pub struct Topology {
    /// What clients speak to the proxy.
    pub downstream: Wire,
    /// What the proxy speaks to the upstream.
    pub upstream: Wire,
    /// Where the proxy must listen.
    pub listen: SocketAddr,
    /// The upstream server.
    pub upstream_addr: SocketAddr,
    /// Worker threads (or processes) the proxy may use.
    pub threads: usize,
    /// A free loopback address for an admin/stats port, for peers that need one.
    pub admin: SocketAddr,
    /// Most client connections the scenario holds open at once (idle
    /// scenarios hold thousands), for peers whose connection limits must be
    /// sized up front.
    pub clients: usize,
    /// TLS to terminate on the listener: the certificate and key to serve
    /// (the same for every peer), TLS 1.3 only, ALPN `http/1.1` only
    /// ([`crate::tls`]). `None`: plaintext.
    pub tls: Option<crate::tls::ServerFiles>,
}

/// How to start a peer for a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Files to write before starting (configs, scripts): absolute paths inside
    /// the scenario's work directory, and their contents.
    pub files: Vec<(PathBuf, String)>,
}

/// A proxy under test.
pub trait Peer: Send + Sync {
    /// `edgeplane`, `nginx`, `haproxy`, `envoy`, `pipy`.
    fn name(&self) -> &'static str;
    /// The binary that will be started.
    fn program(&self) -> &Path;
    /// `Err(reason)` when this peer cannot run the topology (reported as skipped).
    fn supports(&self, topology: &Topology) -> Result<(), String>;
    /// Config files and command line for the topology; files go under `dir`.
    fn launch(&self, topology: &Topology, dir: &Path) -> Launch;
}

/// Every peer's name, in the order peers are reported.
pub const PEER_NAMES: [&str; 5] = ["edgeplane", "nginx", "haproxy", "envoy", "pipy"];

/// Most concurrent streams a peer accepts on one HTTP/2 client connection (and,
/// where the peer has the knob, opens on one HTTP/2 upstream connection). The
/// same number for every peer: their defaults differ (edgeplane and HAProxy
/// 100, nginx 128, Envoy unlimited). Load generators should not open more.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;

/// Idle keep-alive connections each worker keeps to the upstream (where the
/// peer has the knob: nginx `keepalive`, edgeplane `max_idle_per_endpoint`).
pub const UPSTREAM_IDLE_POOL: u32 = 1024;

/// Idle timeout of client keep-alive connections and pooled upstream
/// connections, seconds, for every peer that has the knob.
pub const IDLE_TIMEOUT_SECS: u32 = 60;

/// Requests one keep-alive connection may carry before a peer closes it, for
/// peers that limit it by default (nginx: 1000).
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 1_000_000;

impl Wire {
    /// HTTP/1.1 or HTTP/2.
    pub fn is_http(self) -> bool {
        matches!(self, Wire::Http1 | Wire::Http2)
    }

    /// A byte stream a TCP-mode proxy relays as it is (TCP, MQTT).
    pub fn is_stream(self) -> bool {
        !self.is_http()
    }
}

impl std::fmt::Display for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Wire::Http1 => "HTTP/1.1",
            Wire::Http2 => "HTTP/2 (h2c)",
            Wire::Tcp => "TCP",
            Wire::Mqtt => "MQTT",
        })
    }
}

/// The check every peer makes first: both sides HTTP, or both the same byte
/// stream protocol (TCP, MQTT).
pub(crate) fn check_sides(topology: &Topology) -> Result<(), String> {
    if topology.downstream != topology.upstream && !(topology.downstream.is_http() && topology.upstream.is_http()) {
        return Err(format!(
            "{} clients to a {} upstream is not a proxy topology any peer is benchmarked on",
            topology.downstream, topology.upstream
        ));
    }
    if topology.threads == 0 {
        return Err("0 worker threads".into());
    }
    if topology.tls.is_some() && (topology.downstream != Wire::Http1 || topology.upstream != Wire::Http1) {
        return Err("TLS is benchmarked with HTTP/1.1 clients and upstreams only".into());
    }
    Ok(())
}

/// The soft and hard limits on open files of this process (inherited by the
/// peers it starts). Falls back to the common 1024/4096 when unknown.
pub fn open_files_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 4096))
}

/// Raises this process's open-files limit (inherited by the peers and the
/// broker it starts afterwards) to at least `wanted` if it can: the soft
/// limit up to the hard one, and the hard one too when privileged. Returns
/// the limits in force afterwards.
pub fn raise_open_files_limit(wanted: u64) -> (u64, u64) {
    use nix::sys::resource::{setrlimit, Resource};
    let (soft, hard) = open_files_limit();
    if soft >= wanted {
        return (soft, hard);
    }
    if hard < wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return open_files_limit();
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, wanted.min(hard), hard);
    open_files_limit()
}

/// Looks a program up in `PATH`, then in the sbin directories (where Debian
/// puts nginx and haproxy, often outside a non-root `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// What [`discover`] finds: the peers to run, and the ones that cannot be.
pub type Discovered = (Vec<Box<dyn Peer>>, Vec<Skipped>);

/// The peers to benchmark, and the ones that cannot be (with the reason).
///
/// - edgeplane: always, from `edgeplane_bin`;
/// - nginx, haproxy: found in `PATH` or `/usr/sbin`, else skipped with the
///   install command;
/// - envoy, pipy: only when given as `--peer envoy=PATH` / `--peer pipy=PATH`.
///
/// `user_peers` may also point nginx, haproxy or edgeplane at another binary.
/// Errors: an unknown peer name, a name given twice, a path that is not an
/// executable file.
pub fn discover(edgeplane_bin: PathBuf, user_peers: &[(String, PathBuf)]) -> anyhow::Result<Discovered> {
    let mut given: Vec<(&str, PathBuf)> = Vec::new();
    for (name, path) in user_peers {
        let Some(known) = PEER_NAMES.iter().find(|known| **known == name.as_str()) else {
            bail!("unknown peer {name:?} in --peer {name}=...: known peers are {}", PEER_NAMES.join(", "));
        };
        if given.iter().any(|(seen, _)| seen == known) {
            bail!("--peer {name}=... given twice");
        }
        if !path.exists() {
            bail!("--peer {name}={}: no such file", path.display());
        }
        if !is_executable(path) {
            bail!("--peer {name}={}: not an executable file", path.display());
        }
        given.push((known, path.clone()));
    }
    let user = |name: &str| given.iter().find(|(known, _)| *known == name).map(|(_, path)| path.clone());

    let mut peers: Vec<Box<dyn Peer>> = Vec::new();
    let mut skipped = Vec::new();
    let skip = |peer: &str, reason: String| Skipped { peer: peer.into(), reason };

    let edgeplane_bin = user("edgeplane").unwrap_or(edgeplane_bin);
    if !is_executable(&edgeplane_bin) {
        bail!(
            "the edgeplane binary {} is not an executable file (cargo build --release -p edgeplane)",
            edgeplane_bin.display()
        );
    }
    peers.push(Box::new(edgeplane::Edgeplane::new(edgeplane_bin.clone())));
    peers.push(Box::new(edgeplane::Edgeplane::with_policies(edgeplane_bin)));

    match user("nginx").or_else(|| find_program("nginx")) {
        Some(path) => peers.push(Box::new(nginx::Nginx::new(path))),
        None => skipped.push(skip("nginx", "not installed: apt-get install -y nginx-light".into())),
    }
    match user("haproxy").or_else(|| find_program("haproxy")) {
        Some(path) => peers.push(Box::new(haproxy::Haproxy::new(path))),
        None => skipped.push(skip("haproxy", "not installed: apt-get install -y haproxy".into())),
    }
    match user("envoy") {
        Some(path) => peers.push(Box::new(envoy::Envoy::new(path))),
        None => skipped.push(skip("envoy", "no binary given: pass --peer envoy=PATH".into())),
    }
    match user("pipy") {
        Some(path) => peers.push(Box::new(pipy::Pipy::new(path))),
        None => skipped.push(skip("pipy", "no binary given: pass --peer pipy=PATH".into())),
    }
    Ok((peers, skipped))
}

/// The version line a peer's binary prints (`nginx version: nginx/1.22.1`,
/// `HAProxy version 2.6.12-1+deb12u3 ...`), or `None` when it prints none
/// within a few seconds.
pub fn version(program: &Path, name: &str) -> Option<String> {
    let flag = match name {
        "nginx" => "-v",
        "haproxy" => "-v",
        _ => "--version",
    };
    let output = run_briefly(program, &[flag], Duration::from_secs(5)).ok()?;
    let line = output.lines().map(str::trim).find(|line| !line.is_empty())?;
    Some(version_number(line).unwrap_or(line).to_owned())
}

/// The first word that looks like a version (`1.22.1`, `v1.32.0`,
/// `2.6.12-1+deb12u3`) in a version line, without a `name/` prefix.
fn version_number(line: &str) -> Option<&str> {
    line.split_whitespace().map(|word| word.rsplit('/').next().unwrap_or(word).trim_start_matches('v')).find(|word| {
        let mut parts = word.split('.');
        parts.next().is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && parts.next().is_some_and(|p| p.bytes().next().is_some_and(|b| b.is_ascii_digit()))
    })
}

/// Runs a program to completion and returns its standard output followed by
/// its standard error; kills it after `limit`.
pub(crate) fn run_briefly(program: &Path, args: &[&str], limit: Duration) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    // Small outputs only (version lines, `nginx -V`): the pipes do not fill up
    // before the program exits.
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} {} did not finish within {limit:?}", program.display(), args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut text)?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut text)?;
    }
    Ok(text)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A topology on loopback with arbitrary fixed ports.
    pub fn topology(downstream: Wire, upstream: Wire, threads: usize) -> Topology {
        Topology {
            downstream,
            upstream,
            listen: "127.0.0.1:18080".parse().unwrap(),
            upstream_addr: "127.0.0.1:19090".parse().unwrap(),
            threads,
            admin: "127.0.0.1:18099".parse().unwrap(),
            clients: 64,
            tls: None,
        }
    }

    /// [`topology`] terminating TLS with `files`.
    pub fn tls_topology(files: &crate::tls::ServerFiles) -> Topology {
        Topology { tls: Some(files.clone()), ..topology(Wire::Http1, Wire::Http1, 1) }
    }

    /// Certificates and keys made as a run makes them, in a directory that
    /// lives as long as the returned guard.
    pub fn tls_material() -> (tempfile::TempDir, crate::tls::Material) {
        let dir = tempfile::tempdir().unwrap();
        let material = crate::tls::Material::generate(dir.path()).unwrap();
        (dir, material)
    }

    /// Made-up TLS file paths, for configs that are only read.
    pub fn fake_tls_files() -> crate::tls::ServerFiles {
        crate::tls::ServerFiles {
            cert: "/tmp/bench-tls/cert.pem".into(),
            key: "/tmp/bench-tls/key.pem".into(),
            cert_and_key: "/tmp/bench-tls/cert-and-key.pem".into(),
        }
    }

    /// Every topology the scenarios use.
    pub fn all_topologies() -> Vec<Topology> {
        [
            (Wire::Http1, Wire::Http1),
            (Wire::Http2, Wire::Http1),
            (Wire::Http1, Wire::Http2),
            (Wire::Tcp, Wire::Tcp),
            (Wire::Mqtt, Wire::Mqtt),
        ]
        .into_iter()
        .map(|(down, up)| topology(down, up, 2))
        .collect()
    }

    /// A peer's binary for tests that run it: `Some` when installed. When it
    /// is not, the test is skipped with a message, or fails with the install
    /// command when `BENCH_REQUIRE_PEERS=1`.
    pub fn installed(name: &str, install: &str) -> Option<PathBuf> {
        let found = find_program(name);
        if found.is_none() {
            if std::env::var("BENCH_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
                panic!("{name} is required (BENCH_REQUIRE_PEERS=1) but not installed: {install}");
            }
            eprintln!("skipped: {name} is not installed ({install}; BENCH_REQUIRE_PEERS=1 makes this a failure)");
        }
        found
    }

    /// Whether missing optional parts (an nginx module) fail the test.
    pub fn peers_required() -> bool {
        std::env::var("BENCH_REQUIRE_PEERS").is_ok_and(|v| v == "1")
    }

    /// Writes a launch's files as the runner does.
    pub fn write_files(launch: &Launch) {
        for (path, contents) in &launch.files {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
    }
}

#[cfg(test)]
mod version_tests {
    use super::version_number;

    #[test]
    fn versions() {
        assert_eq!(version_number("nginx version: nginx/1.22.1"), Some("1.22.1"));
        assert_eq!(
            version_number("HAProxy version 2.6.12-1+deb12u3 2025/10/03 - https://haproxy.org/"),
            Some("2.6.12-1+deb12u3")
        );
        assert_eq!(version_number("edgeplane 0.1.0"), Some("0.1.0"));
        assert_eq!(version_number("envoy  version: 6a4b4c/1.32.0/Clean/RELEASE/BoringSSL"), None);
        assert_eq!(version_number("Version: 1.5.10"), Some("1.5.10"));
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn mixed_sides_are_refused() {
        let topology = topology(Wire::Tcp, Wire::Http1, 1);
        let reason = check_sides(&topology).unwrap_err();
        assert!(reason.contains("TCP clients to a HTTP/1.1 upstream"), "{reason}");
        assert!(check_sides(&super::test_support::topology(Wire::Http2, Wire::Http1, 1)).is_ok());
        assert!(check_sides(&super::test_support::topology(Wire::Http1, Wire::Http1, 0)).is_err());
        assert!(check_sides(&super::test_support::topology(Wire::Mqtt, Wire::Mqtt, 1)).is_ok());
        assert!(check_sides(&super::test_support::topology(Wire::Mqtt, Wire::Tcp, 1)).is_err());
        let tls = tls_topology(&fake_tls_files());
        assert!(check_sides(&tls).is_ok());
        let tls_h2 = Topology { downstream: Wire::Http2, ..tls };
        assert!(check_sides(&tls_h2).unwrap_err().contains("TLS"));
    }

    fn fake_binary(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\necho \"$0 version 1.2.3\" >&2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn discovery_takes_user_peers_and_explains_the_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let edgeplane = fake_binary(dir.path(), "edgeplane");
        let envoy = fake_binary(dir.path(), "envoy");
        let (peers, skipped) = discover(edgeplane.clone(), &[("envoy".into(), envoy.clone())]).unwrap();
        let names: Vec<&str> = peers.iter().map(|peer| peer.name()).collect();
        assert_eq!(names[0], "edgeplane");
        assert_eq!(peers[0].program(), edgeplane);
        assert!(names.contains(&"envoy"));
        let envoy_peer = peers.iter().find(|peer| peer.name() == "envoy").unwrap();
        assert_eq!(envoy_peer.program(), envoy);
        let pipy = skipped.iter().find(|skip| skip.peer == "pipy").unwrap();
        assert_eq!(pipy.reason, "no binary given: pass --peer pipy=PATH");
        assert!(!skipped.iter().any(|skip| skip.peer == "envoy"));
        // nginx and haproxy: either found or skipped with the install command.
        for (name, package) in [("nginx", "nginx-light"), ("haproxy", "haproxy")] {
            let found = names.contains(&name);
            let skip = skipped.iter().find(|skip| skip.peer == name);
            assert!(found != skip.is_some(), "{name}: found {found}, skipped {skip:?}");
            if let Some(skip) = skip {
                assert_eq!(skip.reason, format!("not installed: apt-get install -y {package}"));
            }
        }
    }

    #[test]
    fn discovery_refuses_bad_peer_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let edgeplane = fake_binary(dir.path(), "edgeplane");
        let error = discover(edgeplane.clone(), &[("traefik".into(), edgeplane.clone())]).err().unwrap();
        assert!(error.to_string().contains("unknown peer \"traefik\""), "{error}");
        let error = discover(edgeplane.clone(), &[("envoy".into(), dir.path().join("nope"))]).err().unwrap();
        assert!(error.to_string().contains("no such file"), "{error}");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let error = discover(edgeplane.clone(), &[("pipy".into(), plain)]).err().unwrap();
        assert!(error.to_string().contains("not an executable"), "{error}");
        let twice = [("pipy".into(), edgeplane.clone()), ("pipy".into(), edgeplane.clone())];
        assert!(discover(edgeplane.clone(), &twice).is_err());
        assert!(discover(dir.path().join("missing-edgeplane"), &[]).is_err());
    }

    #[test]
    fn version_reads_the_first_line_from_either_stream() {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_binary(dir.path(), "envoy");
        assert_eq!(version(&fake, "envoy").as_deref(), Some("1.2.3"));
        assert_eq!(version(&dir.path().join("missing"), "envoy"), None);
    }

    #[test]
    fn version_of_installed_peers() {
        if let Some(nginx) = installed("nginx", "apt-get install -y nginx-light") {
            let number = version(&nginx, "nginx").unwrap();
            assert!(number.starts_with("1."), "{number}");
        }
        if let Some(haproxy) = installed("haproxy", "apt-get install -y haproxy") {
            let number = version(&haproxy, "haproxy").unwrap();
            assert!(number.starts_with('2') || number.starts_with('3'), "{number}");
        }
    }

    #[test]
    fn open_files_limit_is_sane() {
        let (soft, hard) = open_files_limit();
        assert!(soft > 0 && soft <= hard, "{soft} {hard}");
        // Asking for no more than is there changes nothing.
        assert_eq!(raise_open_files_limit(soft), (soft, hard));
    }
}
