//! The sidecar-pair scenarios (`sidecar-pair-max`, `mtls-sidecar-pair`):
//! what a pair of edgeplane sidecars costs, with mTLS between them and
//! without.
//!
//! ```text
//! client ──HTTP/1.1──▶ outbound sidecar ──(plaintext | mTLS)──▶ inbound sidecar ──HTTP/1.1──▶ upstream
//!                      bookbuyer.default                        bookstore.default
//! ```
//!
//! Two pairs are started, each two `edgeplane run` processes with one
//! config each ([`crate::peers::edgeplane::sidecar_config`]): [`PLAIN`],
//! plaintext HTTP/1.1 between the sidecars, and [`MTLS`], the same with the
//! outbound's cluster and the inbound's listener on `tls: { mesh: true }`
//! (TLS 1.3, the identities of [`crate::tls::MeshFiles`], the outbound
//! verifying the inbound as `bookstore.default`, the inbound requiring a
//! client certificate of the mesh CA). The outbound keeps its connections to
//! the inbound in its keep-alive pool, so handshakes are rare and the figure
//! is what encrypting the hop costs per request. Both sidecars of a pair run
//! on the proxy CPUs (on a real mesh they would be on two hosts); CPU and
//! memory are the two processes' together.

use std::net::SocketAddr;
use std::path::Path;

use crate::peers::edgeplane::{sidecar_config, Edgeplane, Side};
use crate::peers::{Launch, Topology, Wire};
use crate::tls::MeshFiles;

/// The pair with plaintext between the sidecars.
pub const PLAIN: &str = "edgeplane-pair";

/// The pair with mTLS between the sidecars.
pub const MTLS: &str = "edgeplane-mtls-pair";

/// Where a pair's two sidecars listen and what they forward to.
#[derive(Clone, Debug)]
pub struct Sidecars {
    /// The client's sidecar: `listen` takes the load, `upstream_addr` is
    /// the inbound sidecar's `listen`.
    pub outbound: Topology,
    /// The server's sidecar: `upstream_addr` is the upstream.
    pub inbound: Topology,
    /// mTLS between them with these identities; `None`: plaintext.
    pub mesh: Option<MeshFiles>,
}

impl Sidecars {
    /// A pair in front of `upstream`, on the given free loopback addresses
    /// (`[outbound listen, outbound admin, inbound listen, inbound admin]`).
    pub fn new(addrs: [SocketAddr; 4], upstream: SocketAddr, threads: usize, mesh: Option<MeshFiles>) -> Sidecars {
        let [outbound_listen, outbound_admin, inbound_listen, inbound_admin] = addrs;
        let sidecar = |listen, admin, upstream_addr| Topology {
            downstream: Wire::Http1,
            upstream: Wire::Http1,
            listen,
            upstream_addr,
            threads,
            admin,
            clients: 0,
            tls: None,
        };
        Sidecars {
            outbound: sidecar(outbound_listen, outbound_admin, inbound_listen),
            inbound: sidecar(inbound_listen, inbound_admin, upstream),
            mesh,
        }
    }

    /// The two processes to start, inbound first (the outbound forwards to
    /// it): each sidecar's topology and launch, its files under `dir/<side>`.
    pub fn launches(&self, edgeplane: &Edgeplane, dir: &Path) -> [(Topology, Launch); 2] {
        [(Side::Inbound, &self.inbound, "inbound"), (Side::Outbound, &self.outbound, "outbound")].map(
            |(side, topology, name)| {
                let launch = edgeplane.launch_config(topology, &dir.join(name), sidecar_config(self, side));
                (topology.clone(), launch)
            },
        )
    }
}
