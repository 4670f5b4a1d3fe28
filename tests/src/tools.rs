//! Running programs nobody here wrote (curl, openssl, mosquitto clients) as
//! test peers: a missing program fails the test with how to install it, and
//! a hung one is killed.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;

/// Hang guard for one run of an external program (it is killed then).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(45);

/// Fails the test if `program` cannot be run.
pub async fn require(program: &str, install: &str) {
    let probe_arg = if program == "openssl" { "version" } else { "--version" };
    let probe = Command::new(program).arg(probe_arg).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
    match probe {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not installed, and this test needs it. Install it with: {install}")
        }
        Err(error) => panic!("cannot run `{program}`: {error}. Install it with: {install}"),
    }
}

/// Runs `program args…` to completion (killed after [`TOOL_TIMEOUT`]),
/// with stdin closed.
pub async fn run(program: &str, args: &[String], install: &str) -> Output {
    require(program, install).await;
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let started = Instant::now();
    let output = tokio::time::timeout(TOOL_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("`{program} {}` hung for {TOOL_TIMEOUT:?}", args.join(" ")))
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e}"));
    println!("{program} {args:?} ({:?}): {}", started.elapsed(), output.status);
    output
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
