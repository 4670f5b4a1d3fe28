//! edgeplane's benchmark harness. See `docs/benchmarks.md`.
#![forbid(unsafe_code)]

pub mod model;
pub mod peers;
pub mod report;
