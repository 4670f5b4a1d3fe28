//! The proxies under test and the configs the harness writes for them.
//!
//! Every peer gets an equivalent, fair config for the scenario: the same
//! number of worker threads, keep-alive pools to the upstream, access logs
//! off, no extra features (request ids, tracing, stats tags) switched on.
//! The "direct" baseline is not a peer: the runner points the load at the
//! upstream itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What travels on one side of the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1 (keep-alive unless the scenario says otherwise).
    Http1,
    /// HTTP/2 over cleartext, prior knowledge (h2c).
    Http2,
    /// Opaque TCP.
    Tcp,
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
