//! The `edgeplane-init` binary: parse, check, run, map the outcome to an
//! exit code (see `edgeplane_init::error`).
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use edgeplane_init::{run, Cli, Config};

fn main() -> ExitCode {
    // Usage errors exit 2 from clap itself; --help and --version exit 0.
    let cli = Cli::parse();
    // osm-edge's init container gets the pod IP as POD_IP (from
    // status.podIP), so that name is accepted too.
    let pod_ip = std::env::var("POD_IP").ok();
    let result = Config::from_cli(cli, pod_ip.as_deref())
        .and_then(|cfg| run(&cfg, &mut std::io::stdout().lock(), &mut std::io::stderr().lock()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is gone.
            let _ = writeln!(std::io::stderr(), "edgeplane-init: error: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
