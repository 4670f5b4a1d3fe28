//! edgeplane: a sidecar data plane and edge gateway.
//!
//! The modules follow a connection's path:
//! [`listen`] (accept) → [`detect`] (protocol) → [`http`] / [`tcp`] (handlers)
//! → [`route`] (match, split) → [`balance`] (endpoint) → [`pool`] (connection)
//! → [`upstream`] (connect). [`app`] runs the process around them: workers,
//! reloads, signals, the [`admin`] server and graceful shutdown.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod balance;
pub mod buffers;
pub mod detect;
pub mod error;
pub mod health;
pub mod http;
pub mod io;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod osm;
pub mod policy;
pub mod pool;
pub mod route;
pub mod state;
pub mod stream;
pub mod tcp;
pub mod tls;
pub mod transparent;
pub mod upstream;
pub mod worker;

pub use app::{start, ConfigSource, Options, ProxyHandle, ReloadOutcome, RuntimeModel, StartError};
