//! edgeplane's benchmark harness. See `docs/benchmarks.md`.
#![forbid(unsafe_code)]

pub mod broker;
pub mod external;
pub mod histogram;
pub mod load;
pub mod machine;
pub mod model;
pub mod pair;
pub mod peers;
pub mod procstat;
pub mod report;
pub mod run;
pub mod scenario;
pub mod threads;
pub mod tls;
pub mod upstream;
