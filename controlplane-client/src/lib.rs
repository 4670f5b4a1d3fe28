//! edgeplane's control-plane client and a reference control plane.
//!
//! The proxy pulls its config over plain HTTP(S) the way osm-edge's Pipy
//! sidecars pull theirs from a Pipy repo: fetch with an ETag, then ask
//! every few seconds whether it changed (a conditional GET answered `304`,
//! or a `HEAD` for a Pipy-repo codebase), and on a change fetch, hand the
//! body to the proxy to validate, compile and swap, persist what applied
//! and POST a status report (an ACK or a NACK) back.
//!
//! ```text
//!  Syncer ── fetch ──▶ Transport (hyper, rustls) ──▶ control plane
//!    │  ◀─ Snapshot (body, version)
//!    ├── ConfigSink::apply ──▶ the proxy's reload path (all or nothing)
//!    ├── Persisted::save (temp, fsync, rename)     after an ACK
//!    └── status::post (ACK/NACK)                   after each attempt
//! ```
//!
//! [`reference`] is a small control plane serving a directory; the
//! `edgeplane-cp` binary runs it.
#![forbid(unsafe_code)]

pub mod persist;
pub mod reference;
pub mod source;
pub mod stats;
pub mod sync;
pub mod transport;

pub use source::Snapshot;
pub use stats::Stats;
pub use sync::{ConfigSink, Origin, SyncHandle, SyncState, Syncer, Update};
pub use transport::{FetchError, SetupError};
