//! HTTP: the client-facing servers and the forwarding logic.

pub mod body;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod server;
