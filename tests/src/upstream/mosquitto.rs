//! A real MQTT broker (mosquitto) and the mosquitto command-line clients.
//!
//! [`Mosquitto`] runs `/usr/sbin/mosquitto` on a free loopback port with a
//! generated config; it is killed (by its PID) when dropped. Its log (stderr)
//! is collected line by line, so tests can see which connections it got.
//!
//! The clients ([`publish`], [`Subscriber`], [`retained_on`]) run
//! `mosquitto_pub` / `mosquitto_sub` with hard timeouts. A [`Subscriber`] is
//! known to be subscribed once its debug output shows the SUBACK (the output
//! is line-buffered with `stdbuf -oL`), never after a sleep.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The broker binary (Debian package `mosquitto`).
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// Longest wait for the broker to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports tried before giving up (another process may take the free port
/// between our probe and mosquitto's bind).
const START_TRIES: usize = 3;
/// Hard limit for one `mosquitto_pub` run, and the `-W` of subscribers.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines collected from a child's output stream.
type Lines = Arc<watch::Sender<Vec<String>>>;

/// Collects the lines of `reader` until its end; the task ends there.
fn collect_lines<R: AsyncRead + Unpin + Send + 'static>(reader: R) -> (Lines, JoinHandle<()>) {
    let lines: Lines = Arc::new(watch::channel(Vec::new()).0);
    let sink = lines.clone();
    let task = tokio::spawn(async move {
        let mut reader = BufReader::new(reader).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.send_modify(|lines| lines.push(line));
        }
    });
    (lines, task)
}

/// Waits until `lines` holds a line with `text` at index `since` or later.
async fn wait_for_line(lines: &Lines, since: usize, text: &str, timeout: Duration) -> Option<String> {
    let mut receiver = lines.subscribe();
    let found = tokio::time::timeout(timeout, receiver.wait_for(|l| l.iter().skip(since).any(|x| x.contains(text))))
        .await
        .ok()?
        .ok()?;
    found.iter().skip(since).find(|line| line.contains(text)).cloned()
}

/// A mosquitto broker on `127.0.0.1`, killed when dropped.
pub struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    log: Lines,
    /// Local addresses of the readiness probes (they show up in the log).
    probes: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker with anonymous access on a free port; returns once it
    /// accepts TCP connections.
    pub async fn start() -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).is_file(),
            "{MOSQUITTO} is missing: install mosquitto: apt-get install mosquitto mosquitto-clients"
        );
        let mut failures = Vec::new();
        for _ in 0..START_TRIES {
            match Self::try_start().await {
                Ok(broker) => return broker,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("mosquitto did not start in {START_TRIES} tries:\n{}", failures.join("\n---\n"));
    }

    async fn try_start() -> Result<Mosquitto, String> {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            probe.local_addr().expect("local_addr").port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
                 connection_messages true\n"
            ),
        )
        .expect("write mosquitto.conf");
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {MOSQUITTO}: {e}"));
        let (log, _) = collect_lines(child.stderr.take().expect("piped stderr"));
        let deadline = Instant::now() + START_TIMEOUT;
        let mut probes = Vec::new();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("mosquitto on port {port} exited ({status}):\n{}", log.borrow().join("\n")));
            }
            if let Ok(stream) = TcpStream::connect(addr).await {
                probes.push(stream.local_addr().expect("probe local_addr"));
                return Ok(Mosquitto { child, addr, log, probes, _dir: dir });
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                return Err(format!("mosquitto on port {port} not accepting within {START_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the broker (SIGKILL) and waits until it is gone: its port
    /// refuses connections from then on.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill mosquitto");
    }

    /// The broker's log so far.
    pub fn log(&self) -> Vec<String> {
        self.log.borrow().clone()
    }

    /// TCP connections the broker accepted, readiness probes excluded.
    pub fn connections(&self) -> usize {
        self.count_connections(&self.log.borrow())
    }

    fn count_connections(&self, log: &[String]) -> usize {
        log.iter()
            .filter(|line| line.contains("New connection from"))
            .filter(|line| !self.probes.iter().any(|probe| line.contains(&format!("{probe} "))))
            .count()
    }

    /// [`Mosquitto::connections`] once at least `n` are logged (the log is
    /// read asynchronously), or after [`CLIENT_TIMEOUT`]. A connection made
    /// before the `n`th one is logged before it, so an exact comparison with
    /// the result is race-free.
    pub async fn settled_connections(&self, n: usize) -> usize {
        let mut receiver = self.log.subscribe();
        let _ = tokio::time::timeout(CLIENT_TIMEOUT, receiver.wait_for(|log| self.count_connections(log) >= n)).await;
        self.connections()
    }

    /// Waits until the log has a line with `text`; panics with the log after `timeout`.
    pub async fn wait_for_log(&self, text: &str, timeout: Duration) -> String {
        wait_for_line(&self.log, 0, text, timeout)
            .await
            .unwrap_or_else(|| panic!("mosquitto logged no {text:?} within {timeout:?}:\n{}", self.log().join("\n")))
    }
}

/// The MQTT version a client speaks (`-V`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqttVersion {
    V31,
    V311,
    V5,
}

impl MqttVersion {
    pub const ALL: [MqttVersion; 3] = [MqttVersion::V31, MqttVersion::V311, MqttVersion::V5];

    pub fn arg(self) -> &'static str {
        match self {
            MqttVersion::V31 => "mqttv31",
            MqttVersion::V311 => "mqttv311",
            MqttVersion::V5 => "mqttv5",
        }
    }
}

/// Options shared by `mosquitto_pub` and `mosquitto_sub`.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub version: MqttVersion,
    pub qos: u8,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `--cafile`, and `--cert`/`--key` when a client certificate is given.
    pub tls: Option<(String, Option<(String, String)>)>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { version: MqttVersion::V311, qos: 0, client_id: None, username: None, password: None, tls: None }
    }
}

impl ClientOptions {
    pub fn version(mut self, version: MqttVersion) -> Self {
        self.version = version;
        self
    }

    pub fn qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }

    pub fn id(mut self, client_id: &str) -> Self {
        self.client_id = Some(client_id.to_owned());
        self
    }

    pub fn user(mut self, username: &str) -> Self {
        self.username = Some(username.to_owned());
        self
    }

    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// TLS trusting `cafile`, presenting `cert_key` when given.
    pub fn tls(mut self, cafile: &str, cert_key: Option<(&str, &str)>) -> Self {
        self.tls = Some((cafile.to_owned(), cert_key.map(|(c, k)| (c.to_owned(), k.to_owned()))));
        self
    }

    fn args(&self, addr: SocketAddr) -> Vec<String> {
        let mut args = vec![
            "-h".into(),
            addr.ip().to_string(),
            "-p".into(),
            addr.port().to_string(),
            "-V".into(),
            self.version.arg().into(),
            "-q".into(),
            self.qos.to_string(),
        ];
        if let Some(id) = &self.client_id {
            args.extend(["-i".into(), id.clone()]);
        }
        if let Some(user) = &self.username {
            args.extend(["-u".into(), user.clone()]);
        }
        if let Some(password) = &self.password {
            args.extend(["-P".into(), password.clone()]);
        }
        if let Some((cafile, cert_key)) = &self.tls {
            args.extend(["--cafile".into(), cafile.clone()]);
            if let Some((cert, key)) = cert_key {
                args.extend(["--cert".into(), cert.clone(), "--key".into(), key.clone()]);
            }
        }
        args
    }
}

/// What a `mosquitto_pub` run came to.
#[derive(Debug)]
pub struct PubOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl PubOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `mosquitto_pub` once (`-r` when `retain`); panics if it runs longer
/// than [`CLIENT_TIMEOUT`] (it is then killed).
pub async fn try_publish(
    addr: SocketAddr,
    options: &ClientOptions,
    topic: &str,
    payload: &str,
    retain: bool,
) -> PubOutput {
    let mut args = options.args(addr);
    args.extend(["-t".into(), topic.into(), "-m".into(), payload.into()]);
    if retain {
        args.push("-r".into());
    }
    let output = tokio::time::timeout(
        CLIENT_TIMEOUT,
        Command::new("mosquitto_pub").args(&args).stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("mosquitto_pub {} hung for {CLIENT_TIMEOUT:?}", args.join(" ")))
    .unwrap_or_else(|e| panic!("cannot run mosquitto_pub (apt-get install mosquitto-clients): {e}"));
    PubOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// [`try_publish`] that must succeed (the broker acknowledged per the QoS).
pub async fn publish(addr: SocketAddr, options: &ClientOptions, topic: &str, payload: &str, retain: bool) {
    let output = try_publish(addr, options, topic, payload, retain).await;
    assert!(
        output.success(),
        "mosquitto_pub to {addr} ({options:?}, topic {topic}) failed: {}\n{}{}",
        output.status,
        output.stdout,
        output.stderr
    );
}

/// A message a [`Subscriber`] printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: String,
    pub retained: bool,
}

/// Prefix of message lines in a subscriber's output (`-F`); the debug lines
/// (`-d`) start with `Client ` or `Subscribed`.
const MESSAGE_PREFIX: &str = "MSG ";

fn parse_message(line: &str) -> Option<Message> {
    let mut parts = line.strip_prefix(MESSAGE_PREFIX)?.splitn(3, ' ');
    let retained = parts.next()? == "1";
    let topic = parts.next()?.to_owned();
    let payload = parts.next().unwrap_or("").to_owned();
    Some(Message { topic, payload, retained })
}

/// A running `mosquitto_sub`, subscribed (its SUBACK arrived) once
/// [`Subscriber::start`] returns; killed when dropped.
pub struct Subscriber {
    child: Child,
    stdout: Lines,
    stderr: Lines,
    /// Ends when the child's stdout does: after an exit, every line is in.
    stdout_reader: Option<JoinHandle<()>>,
    what: String,
}

impl Subscriber {
    /// `mosquitto_sub -d -t FILTER EXTRA…` with a `-W` of [`CLIENT_TIMEOUT`].
    pub async fn start(addr: SocketAddr, options: &ClientOptions, filter: &str, extra: &[&str]) -> Subscriber {
        let mut subscriber = Self::spawn(addr, options, filter, extra);
        subscriber.wait_subscribed().await;
        subscriber
    }

    fn spawn(addr: SocketAddr, options: &ClientOptions, filter: &str, extra: &[&str]) -> Subscriber {
        let mut args: Vec<String> = vec!["-oL".into(), "mosquitto_sub".into()];
        args.extend(options.args(addr));
        args.extend(["-d".into(), "-t".into(), filter.into(), "-F".into(), format!("{MESSAGE_PREFIX}%r %t %p")]);
        args.extend(["-W".into(), CLIENT_TIMEOUT.as_secs().to_string()]);
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let what = format!("mosquitto_sub {}", args[2..].join(" "));
        // stdbuf: the debug lines (SUBACK) are printed with stdio, which a
        // pipe would otherwise block-buffer.
        let mut child = Command::new("stdbuf")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let (stdout, stdout_reader) = collect_lines(child.stdout.take().expect("piped stdout"));
        let (stderr, _) = collect_lines(child.stderr.take().expect("piped stderr"));
        Subscriber { child, stdout, stderr, stdout_reader: Some(stdout_reader), what }
    }

    async fn wait_subscribed(&mut self) {
        if wait_for_line(&self.stdout, 0, "received SUBACK", CLIENT_TIMEOUT).await.is_none() {
            let status = self.child.try_wait().ok().flatten();
            panic!("{} got no SUBACK (exit: {status:?}):\n{}", self.what, self.output());
        }
    }

    /// Everything it printed so far, both streams.
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.borrow().join("\n"),
            self.stderr.borrow().join("\n")
        )
    }

    /// The messages printed so far.
    pub fn messages(&self) -> Vec<Message> {
        self.stdout.borrow().iter().filter_map(|line| parse_message(line)).collect()
    }

    /// Waits until `n` messages arrived; returns them all.
    pub async fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Message> {
        let mut receiver = self.stdout.subscribe();
        let count = |lines: &Vec<String>| lines.iter().filter(|line| line.starts_with(MESSAGE_PREFIX)).count();
        if tokio::time::timeout(timeout, receiver.wait_for(|lines| count(lines) >= n)).await.is_err() {
            panic!("{}: fewer than {n} messages within {timeout:?}:\n{}", self.what, self.output());
        }
        self.messages()
    }

    /// Waits for the process to exit (e.g. after `-C`) and for the last of
    /// its output to be collected; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let reader = self.stdout_reader.take();
        let exited = tokio::time::timeout(timeout, async {
            let status = self.child.wait().await.expect("wait for mosquitto_sub");
            if let Some(reader) = reader {
                let _ = reader.await;
            }
            status
        })
        .await;
        exited.unwrap_or_else(|_| panic!("{} did not exit within {timeout:?}:\n{}", self.what, self.output()))
    }

    /// Kills the client abruptly (SIGKILL): no DISCONNECT is sent.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill mosquitto_sub");
    }
}

/// The retained messages under `prefix/#` on one broker (connected to
/// directly), as `(topic, payload)` sorted by topic.
///
/// A `--retained-only` subscriber gets the retained messages right after
/// its SUBACK and exits at the first non-retained message; a marker
/// published after the SUBACK is that message, so absence is known without
/// waiting for a timeout.
pub async fn retained_on(broker: SocketAddr, prefix: &str) -> Vec<(String, String)> {
    let options = ClientOptions::default().qos(1);
    let mut subscriber = Subscriber::start(broker, &options, &format!("{prefix}/#"), &["--retained-only"]).await;
    let marker = format!("{prefix}/~end-of-retained");
    publish(broker, &options, &marker, "end", false).await;
    subscriber.wait_exit(CLIENT_TIMEOUT).await;
    let mut found: Vec<(String, String)> = subscriber
        .messages()
        .into_iter()
        .inspect(|m| assert!(m.retained && m.topic != marker, "--retained-only printed {m:?}"))
        .map(|m| (m.topic, m.payload))
        .collect();
    found.sort();
    found
}
