//! Test support for edgeplane end-to-end tests: real upstream servers to put
//! behind the proxy ([`upstream`]) and low-level clients ([`client`]).

pub mod client;
pub mod harness;
pub mod mqtt_wire;
pub mod pki;
pub mod process;
pub mod tools;
pub mod upstream;
