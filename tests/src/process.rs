//! Runs the real `edgeplane` binary as a child process, for what only a
//! process has: signals, exit codes, the config-file watcher, the command
//! line, standard output and standard error.
//!
//! [`binary`] builds the binary once per test process. [`ProxyProcess`]
//! starts `edgeplane --log-format json run` on a config in a temp dir, with
//! `--admin 127.0.0.1:0`, and learns its addresses from the `edgeplane ready`
//! log line. Its stdout and stderr are collected line by line by background
//! tasks; tests wait for lines (event-driven, never by sleeping). The child
//! is killed, by its PID and nothing else, when the [`ProxyProcess`] drops.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Hang guard for a start-up (spawn until ready).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Hang guard for one-shot commands ([`run_command`]).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Hang guard for the nested `cargo build`.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// The environment variables the binary reads. They are removed from every
/// child's environment (tests add what they need), so the developer's shell
/// cannot change what a test sees.
pub const ENV_VARS: [&str; 10] = [
    "EDGEPLANE_CONFIG",
    "EDGEPLANE_CONTROL_PLANE",
    "EDGEPLANE_BOOTSTRAP",
    "EDGEPLANE_PERSIST",
    "EDGEPLANE_CONTROL_PLANE_TOKEN",
    "EDGEPLANE_WORKERS",
    "EDGEPLANE_ADMIN",
    "EDGEPLANE_LOG_LEVEL",
    "EDGEPLANE_LOG_FORMAT",
    "EDGEPLANE_NO_WATCH",
];

static BINARY: OnceLock<PathBuf> = OnceLock::new();
static INIT_BINARY: OnceLock<PathBuf> = OnceLock::new();

/// The path of the `edgeplane` binary, built on first use (once per test
/// process) with `cargo build -q -p edgeplane --bin edgeplane` into the
/// target dir the tests themselves were built in. Blocks while building;
/// from async code prefer [`binary_async`].
pub fn binary() -> PathBuf {
    BINARY.get_or_init(|| build("edgeplane", "edgeplane")).clone()
}

/// The path of the `edgeplane-init` binary (package `iptables-init`), built
/// on first use like [`binary`].
pub fn init_binary() -> PathBuf {
    INIT_BINARY.get_or_init(|| build("iptables-init", "edgeplane-init")).clone()
}

/// The path of the reference control plane's binary (`edgeplane-cp`),
/// built on first use like [`binary`].
pub fn cp_binary() -> PathBuf {
    CP_BINARY.get_or_init(|| build("controlplane-client", "edgeplane-cp")).clone()
}

static CP_BINARY: OnceLock<PathBuf> = OnceLock::new();

/// [`binary`] on a blocking thread. Call it before a test's hang guard
/// starts: the first build can take a while.
pub async fn binary_async() -> PathBuf {
    tokio::task::spawn_blocking(binary).await.expect("building edgeplane panicked")
}

fn workspace_dir() -> PathBuf {
    let tests_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests_crate.parent().expect("the tests crate lives in the workspace").to_path_buf()
}

/// `(target dir, profile dir name)`: from this test binary's location
/// (`<target>/<profile>/deps/<test>`), else `CARGO_TARGET_DIR`, else
/// `<workspace>/target`.
fn target_dir_and_profile() -> (PathBuf, String) {
    let derived = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        if deps.file_name()? != "deps" {
            return None;
        }
        let profile = deps.parent()?;
        Some((profile.parent()?.to_path_buf(), profile.file_name()?.to_str()?.to_owned()))
    });
    if let Some(derived) = derived {
        return derived;
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        // A relative CARGO_TARGET_DIR is taken relative to the workspace.
        Some(dir) => workspace_dir().join(dir),
        None => workspace_dir().join("target"),
    };
    (target, "debug".to_owned())
}

fn build(package: &str, bin: &str) -> PathBuf {
    let (target, profile) = target_dir_and_profile();
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(workspace_dir())
        .args(["build", "-q", "-p", package, "--bin", bin, "--target-dir"])
        .arg(&target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(BUILD_TIMEOUT) {
        Ok(Ok(output)) if output.status.success() => {}
        Ok(Ok(output)) => {
            panic!("cargo build of {bin} failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr))
        }
        Ok(Err(error)) => panic!("cargo build of {bin}: {error}"),
        Err(_) => {
            // Not reaped yet (its waiting thread is still blocked), so the
            // PID is still this cargo's.
            send_signal(pid, Signal::Kill);
            panic!("cargo build of {bin} hung for {BUILD_TIMEOUT:?}");
        }
    }
    let exe = target.join(&profile).join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(exe.is_file(), "cargo build succeeded but {} does not exist", exe.display());
    exe
}

/// A Unix signal to send to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Graceful shutdown (drain); a second one exits at once.
    Term,
    /// Same as `Term`.
    Int,
    /// Reload the config.
    Hup,
    /// Cannot be handled.
    Kill,
}

impl Signal {
    /// The name without `SIG`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Kill => "KILL",
        }
    }
}

/// Sends `signal` to exactly `pid` (kill(2)).
fn send_signal(pid: u32, signal: Signal) {
    use nix::sys::signal::{kill, Signal as Sig};
    let sig = match signal {
        Signal::Term => Sig::SIGTERM,
        Signal::Int => Sig::SIGINT,
        Signal::Hup => Sig::SIGHUP,
        Signal::Kill => Sig::SIGKILL,
    };
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("PIDs fit in i32"));
    kill(target, sig).unwrap_or_else(|e| panic!("kill({pid}, SIG{}): {e}", signal.name()));
}

/// Lines read so far from one output stream of the child.
#[derive(Default)]
struct Captured {
    lines: Vec<String>,
    /// End of stream (the child closed it, normally by exiting).
    closed: bool,
}

type Sink = Arc<watch::Sender<Captured>>;

fn capture<R: AsyncRead + Unpin + Send + 'static>(reader: R, sink: Sink) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_owned();
                    sink.send_modify(|captured| captured.lines.push(text));
                }
            }
        }
        sink.send_modify(|captured| captured.closed = true);
    })
}

/// Why waiting for a line failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitFailed {
    TimedOut,
    Closed,
}

/// Waits until a line at index `since` or later satisfies `matches`.
async fn wait_line(
    sink: &Sink,
    since: usize,
    timeout: Duration,
    mut matches: impl FnMut(&str) -> bool,
) -> Result<String, WaitFailed> {
    let mut receiver = sink.subscribe();
    let waited = tokio::time::timeout(
        timeout,
        receiver.wait_for(|c| c.closed || c.lines.iter().skip(since).any(|line| matches(line))),
    )
    .await;
    match waited {
        Err(_) => Err(WaitFailed::TimedOut),
        // The sender lives as long as the sink, which the caller holds.
        Ok(Err(_)) => Err(WaitFailed::Closed),
        Ok(Ok(captured)) => {
            captured.lines.iter().skip(since).find(|line| matches(line)).cloned().ok_or(WaitFailed::Closed)
        }
    }
}

/// A JSON log event's `message` field, if the line is one.
fn message_of(line: &str) -> Option<String> {
    let value: Value = serde_json::from_str(line).ok()?;
    value.get("message")?.as_str().map(str::to_owned)
}

/// A proxy process that exited (or hung) before it was ready.
#[derive(Debug)]
pub struct StartFailure {
    /// `None` if it did not exit by itself (it was killed after the guard).
    pub status: Option<ExitStatus>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub reason: String,
}

impl StartFailure {
    /// The whole standard error, one string.
    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }
}

impl fmt::Display for StartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "edgeplane did not become ready: {} (exit status: ", self.reason)?;
        match self.status {
            Some(status) => write!(f, "{status})")?,
            None => write!(f, "none, killed)")?,
        }
        write!(f, "\n--- stderr ---\n{}\n--- stdout ---\n{}", self.stderr.join("\n"), self.stdout.join("\n"))
    }
}

/// The result of [`run_command`].
#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `edgeplane <args>` to completion with these extra environment
/// variables (the `EDGEPLANE_*` ones of the test process are removed).
/// Panics if it cannot start or runs longer than [`COMMAND_TIMEOUT`] (it is
/// then killed).
pub async fn run_command(args: &[&str], envs: &[(&str, &str)]) -> CommandOutput {
    let binary = binary_async().await;
    let mut command = Command::new(&binary);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for var in ENV_VARS {
        command.env_remove(var);
    }
    command.envs(envs.iter().copied());
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("`edgeplane {}` hung for {COMMAND_TIMEOUT:?}", args.join(" ")))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    CommandOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `edgeplane run` child process.
pub struct ProxyProcess {
    child: Child,
    pid: u32,
    exited: Option<ExitStatus>,
    admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
    config_path: PathBuf,
    startup: Duration,
    stdout: Sink,
    stderr: Sink,
    readers: [JoinHandle<()>; 2],
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Writes `yaml` to a temp dir and runs
    /// `edgeplane --log-format json run --config FILE --workers 2 --admin 127.0.0.1:0 EXTRA_ARGS…`;
    /// returns once it is ready. Panics with its output if it does not get ready.
    pub async fn spawn(yaml: &str, extra_args: &[&str]) -> ProxyProcess {
        Self::try_spawn(yaml, extra_args).await.unwrap_or_else(|failure| panic!("{failure}\n--- config ---\n{yaml}"))
    }

    /// Like [`ProxyProcess::spawn`], but a process that exits before it is
    /// ready (or hangs for [`READY_TIMEOUT`]) is an `Err` with its output.
    ///
    /// Ready means: the `edgeplane ready` log line arrived on stderr, and
    /// then the admin server answered `GET /ready` with 200. The second step
    /// matters: the proxy logs its ready line while its control thread is
    /// still starting, and that thread installs the signal handlers and the
    /// config watcher before it serves its first admin request.
    pub async fn try_spawn(yaml: &str, extra_args: &[&str]) -> Result<ProxyProcess, StartFailure> {
        Self::start(yaml, extra_args, true).await
    }

    /// Like [`ProxyProcess::spawn`], but returns as soon as the `edgeplane
    /// ready` line arrives, without asking the admin server: for tests of
    /// what that line promises.
    pub async fn spawn_at_ready_line(yaml: &str, extra_args: &[&str]) -> ProxyProcess {
        Self::start(yaml, extra_args, false).await.unwrap_or_else(|failure| panic!("{failure}\n--- config ---\n{yaml}"))
    }

    async fn start(yaml: &str, extra_args: &[&str], confirm_with_admin: bool) -> Result<ProxyProcess, StartFailure> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("edgeplane.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let source = vec!["--config".to_owned(), config_path.display().to_string()];
        Self::start_args(dir, config_path, run_args(&source, extra_args), &[], confirm_with_admin).await
    }

    /// Runs `edgeplane --log-format json run SOURCE_ARGS… --workers 2 --admin 127.0.0.1:0 EXTRA_ARGS…`
    /// for a proxy fed by a control plane (`--control-plane URL`, `--bootstrap FILE`).
    /// With `confirm_ready`, `GET /ready` must answer 200 right after the
    /// ready line (the proxy got a config); without, only the line is awaited.
    pub async fn spawn_source(
        source_args: &[&str],
        extra_args: &[&str],
        confirm_ready: bool,
    ) -> Result<ProxyProcess, StartFailure> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("no-config-file");
        let source: Vec<String> = source_args.iter().map(|arg| (*arg).to_owned()).collect();
        Self::start_args(dir, config_path, run_args(&source, extra_args), &[], confirm_ready).await
    }

    /// Runs `edgeplane ARGS…` exactly as given (no `run`, no `--admin`),
    /// with `envs` added: for other command lines, such as the Pipy form
    /// `edgeplane --admin-port=PORT URL`. Its log must be JSON
    /// (`EDGEPLANE_LOG_FORMAT=json` in `envs`, or `--log-format json`) for
    /// the `edgeplane ready` line to be found.
    pub async fn spawn_args(
        args: &[&str],
        envs: &[(&str, &str)],
        confirm_ready: bool,
    ) -> Result<ProxyProcess, StartFailure> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("no-config-file");
        let args = args.iter().map(|arg| (*arg).to_owned()).collect();
        Self::start_args(dir, config_path, args, envs, confirm_ready).await
    }

    async fn start_args(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        args: Vec<String>,
        envs: &[(&str, &str)],
        confirm_with_admin: bool,
    ) -> Result<ProxyProcess, StartFailure> {
        let binary = binary_async().await;
        let mut command = Command::new(&binary);
        command.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        for var in ENV_VARS {
            command.env_remove(var);
        }
        command.envs(envs.iter().copied());
        let started = Instant::now();
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let pid = child.id().expect("a child that was just spawned has a PID");
        let stdout: Sink = Arc::new(watch::Sender::new(Captured::default()));
        let stderr: Sink = Arc::new(watch::Sender::new(Captured::default()));
        let readers = [
            capture(child.stdout.take().expect("piped stdout"), stdout.clone()),
            capture(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];

        let ready = wait_line(&stderr, 0, READY_TIMEOUT, |line| message_of(line).as_deref() == Some("edgeplane ready"))
            .await
            .map_err(|failed| match failed {
                WaitFailed::TimedOut => (true, format!("no `edgeplane ready` line within {READY_TIMEOUT:?}")),
                WaitFailed::Closed => (false, "stderr closed before the `edgeplane ready` line".to_owned()),
            })
            .and_then(|line| parse_ready(&line).map_err(|reason| (true, reason)));
        let (admin, listeners) = match ready {
            Ok(addrs) => addrs,
            Err((hung, reason)) => {
                // A process that closed stderr is exiting: give it a moment.
                let exited = if hung {
                    None
                } else {
                    tokio::time::timeout(Duration::from_secs(10), child.wait()).await.ok().and_then(Result::ok)
                };
                let status = match exited {
                    Some(status) => Some(status),
                    None => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        None
                    }
                };
                // The readers end at EOF, now that the process is gone.
                for reader in readers {
                    let _ = reader.await;
                }
                let failure = StartFailure {
                    status,
                    stdout: stdout.borrow().lines.clone(),
                    stderr: stderr.borrow().lines.clone(),
                    reason,
                };
                return Err(failure);
            }
        };
        let mut process = ProxyProcess {
            child,
            pid,
            exited: None,
            admin,
            listeners,
            config_path,
            startup: Duration::ZERO,
            stdout,
            stderr,
            readers,
            _dir: dir,
        };
        if confirm_with_admin {
            let (status, _, body) =
                tokio::time::timeout(READY_TIMEOUT, crate::client::get(admin, "localhost", "/ready"))
                    .await
                    .unwrap_or_else(|_| panic!("admin server {admin} did not answer GET /ready"));
            assert_eq!(status.as_u16(), 200, "GET /ready right after start: {}", String::from_utf8_lossy(&body));
        }
        process.startup = started.elapsed();
        Ok(process)
    }

    /// The admin server's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The bound address of a listener (from the ready line).
    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self.listeners.get(listener).unwrap_or_else(|| panic!("no listener {listener:?}: {:?}", self.listeners))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Time from spawning the process until it was ready (see [`ProxyProcess::try_spawn`]).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Sends a signal to the process. Panics if it has already exited (its
    /// PID may then belong to someone else).
    pub fn signal(&mut self, signal: Signal) {
        if let Some(status) = self.exit_status() {
            panic!("cannot send SIG{}: edgeplane (pid {}) already exited: {status}", signal.name(), self.pid);
        }
        // Not exited and not reaped: the PID is still our child's.
        send_signal(self.pid, signal);
    }

    /// The exit status if the process has exited (reaps it), without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }

    /// Replaces the config file atomically (write a temp file in the same
    /// directory, rename it over the config), as editors and Kubernetes do,
    /// so the proxy never reads a half-written file.
    pub fn write_config(&self, yaml: &str) {
        let temp = self.config_path.with_extension("yaml.tmp");
        std::fs::write(&temp, yaml).expect("write temp config");
        std::fs::rename(&temp, &self.config_path).expect("rename config into place");
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited {
            return Some(status);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exited = Some(status);
                Some(status)
            }
            Ok(Err(error)) => panic!("waiting for edgeplane (pid {}): {error}", self.pid),
            Err(_) => None,
        }
    }

    /// Lines written to stdout so far (the access log).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.borrow().lines.clone()
    }

    /// Lines written to stderr so far (JSON process logs).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.borrow().lines.clone()
    }

    /// The stderr lines that are JSON log events, parsed.
    pub fn log_events(&self) -> Vec<Value> {
        self.stderr.borrow().lines.iter().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// How many stderr lines there are now: pass it to the `*_since`
    /// methods to wait only for lines written after this point.
    pub fn stderr_mark(&self) -> usize {
        self.stderr.borrow().lines.len()
    }

    /// Waits for a stderr line containing `text` (from the start of the
    /// process) and returns it. Panics, with the stderr so far, on timeout
    /// or if stderr closes first.
    pub async fn wait_for_stderr(&self, text: &str, timeout: Duration) -> String {
        self.wait_for_stderr_since(0, text, timeout).await
    }

    /// Waits for a stderr line containing `text` at index `since` or later.
    pub async fn wait_for_stderr_since(&self, since: usize, text: &str, timeout: Duration) -> String {
        let found = wait_line(&self.stderr, since, timeout, |line| line.contains(text)).await;
        found.unwrap_or_else(|failed| self.fail_wait(&format!("a stderr line containing {text:?}"), failed))
    }

    /// Waits for a JSON log event whose `message` is exactly `message`, at
    /// stderr line `since` or later, and returns it parsed.
    pub async fn wait_for_log(&self, since: usize, message: &str, timeout: Duration) -> Value {
        let found = wait_line(&self.stderr, since, timeout, |line| message_of(line).as_deref() == Some(message)).await;
        let line = found.unwrap_or_else(|failed| self.fail_wait(&format!("the log event {message:?}"), failed));
        serde_json::from_str(&line).expect("matched lines are JSON")
    }

    /// Like [`ProxyProcess::wait_for_log`], but `None` instead of a panic
    /// when stderr closes first (the process exited) or on timeout.
    pub async fn try_wait_for_log(&self, since: usize, message: &str, timeout: Duration) -> Option<Value> {
        let found = wait_line(&self.stderr, since, timeout, |line| message_of(line).as_deref() == Some(message)).await;
        found.ok().and_then(|line| serde_json::from_str(&line).ok())
    }

    /// Waits until stdout has at least `n` lines and returns all of them.
    pub async fn wait_for_stdout_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let mut receiver = self.stdout.subscribe();
        let waited = tokio::time::timeout(timeout, receiver.wait_for(|c| c.closed || c.lines.len() >= n)).await;
        let lines = self.stdout_lines();
        match waited {
            Ok(Ok(_)) if lines.len() >= n => lines,
            Err(_) => self.fail_wait(&format!("{n} stdout lines (have {})", lines.len()), WaitFailed::TimedOut),
            _ => self.fail_wait(&format!("{n} stdout lines (have {})", lines.len()), WaitFailed::Closed),
        }
    }

    fn fail_wait(&self, what: &str, failed: WaitFailed) -> ! {
        let why = match failed {
            WaitFailed::TimedOut => "timed out",
            WaitFailed::Closed => "the stream closed (process exited?)",
        };
        panic!(
            "waiting for {what}: {why}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.stderr_lines().join("\n"),
            self.stdout_lines().join("\n")
        );
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            // SIGKILL to this child's PID only (tokio's `start_kill`); the
            // runtime reaps it afterwards.
            let _ = self.child.start_kill();
        }
        for reader in &self.readers {
            reader.abort();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- edgeplane (pid {}) stderr ---\n{}\n--- edgeplane stdout ---\n{}",
                self.pid,
                self.stderr_lines().join("\n"),
                self.stdout_lines().join("\n")
            );
        }
    }
}

/// `(admin, listeners)` from the `edgeplane ready` line, whose fields are
/// `admin=ADDR` and `listeners=name=ADDR,name2=ADDR`.
/// `--log-format json run SOURCE… --workers 2 --admin 127.0.0.1:0 EXTRA…`
fn run_args(source: &[String], extra_args: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--log-format", "json", "run"].map(str::to_owned).to_vec();
    args.extend(source.iter().cloned());
    args.extend(["--workers", "2", "--admin", "127.0.0.1:0"].map(str::to_owned));
    args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
    args
}

fn parse_ready(line: &str) -> Result<(SocketAddr, HashMap<String, SocketAddr>), String> {
    let event: Value = serde_json::from_str(line).map_err(|e| format!("ready line is not JSON ({e}): {line}"))?;
    let admin = event["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("ready line without a valid `admin` field: {line}"))?;
    let listeners_text =
        event["listeners"].as_str().ok_or_else(|| format!("ready line without `listeners`: {line}"))?;
    let mut listeners = HashMap::new();
    for pair in listeners_text.split(',').filter(|pair| !pair.is_empty()) {
        let (name, addr) = pair.split_once('=').ok_or_else(|| format!("bad listener entry {pair:?} in: {line}"))?;
        let addr = addr.parse().map_err(|_| format!("bad listener address {addr:?} in: {line}"))?;
        listeners.insert(name.to_owned(), addr);
    }
    Ok((admin, listeners))
}
