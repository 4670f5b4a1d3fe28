//! The Kubernetes kit in `docs/kubernetes/`, checked against the real
//! binaries: every YAML document parses and is a named object; containers
//! run binaries the Dockerfile's images ship, with subcommands and flags that
//! `edgeplane --help` and `edgeplane-init --help` list; the init container is
//! root with NET_ADMIN and NET_RAW and its arguments pass a dry run; the
//! proxy runs as UID 1500, non-root and locked down, probed on `/ready` and
//! `/live` at the admin port its config binds, which interception leaves
//! alone; the interception ports are the config's transparent listeners; the
//! grace period outlasts the drain; the embedded configs pass
//! `edgeplane check`; the Dockerfile builds both images for TARGETARCH.
//!
//! Nothing here needs a cluster or Docker. The `edgeplane-init` checks are
//! skipped (with a printed reason) only while the `iptables-init` package
//! directory does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use edgeplane_tests::process;
use serde_json::Value;

/// The proxy's UID in osm-edge (`constants.SidecarUID`) and edgeplane-init's default.
const PROXY_UID: i64 = 1500;
/// Hang guard for each command run here.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The files the kit must have.
const KIT_FILES: [&str; 7] = [
    "Dockerfile",
    "README.md",
    "sidecar-configmap.yaml",
    "pod-with-sidecar.yaml",
    "pod-with-sidecar-classic.yaml",
    "job-with-sidecar.yaml",
    "gateway.yaml",
];
/// Largest memory limit a proxy container may ask for (small edge nodes).
const MAX_PROXY_MEMORY: f64 = 256.0 * 1024.0 * 1024.0;

// ---------------------------------------------------------------------------
// Loading

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

fn kit_dir() -> PathBuf {
    workspace().join("docs").join("kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One YAML document of one file.
struct Doc {
    file: String,
    index: usize,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        str_at(&self.value, &["kind"]).unwrap_or("")
    }

    fn name(&self) -> &str {
        str_at(&self.value, &["metadata", "name"]).unwrap_or("")
    }

    fn label(&self) -> String {
        format!("{}[{}] {} {}", self.file, self.index, self.kind(), self.name())
    }

    /// The pod spec of a workload.
    fn pod_spec(&self) -> Option<&Value> {
        match self.kind() {
            "Pod" => self.value.get("spec"),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                at(&self.value, &["spec", "template", "spec"])
            }
            "CronJob" => at(&self.value, &["spec", "jobTemplate", "spec", "template", "spec"]),
            _ => None,
        }
    }

    fn pod_labels(&self) -> Option<&serde_json::Map<String, Value>> {
        let path: &[&str] = match self.kind() {
            "Pod" => &["metadata", "labels"],
            _ => &["spec", "template", "metadata", "labels"],
        };
        at(&self.value, path).and_then(Value::as_object)
    }
}

/// Every document of every `docs/kubernetes/*.yaml`, in file-name order.
fn docs() -> &'static [Doc] {
    static DOCS: OnceLock<Vec<Doc>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(kit_dir())
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", kit_dir().display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for path in files {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let values: Vec<Value> =
                serde_saphyr::from_multiple(&read(&path)).unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
            for (index, value) in values.into_iter().enumerate() {
                docs.push(Doc { file: file.clone(), index, value });
            }
        }
        assert!(!docs.is_empty(), "no YAML documents in {}", kit_dir().display());
        docs
    })
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value.and_then(Value::as_array).map_or_else(Vec::new, |items| {
        items.iter().map(|item| item.as_str().map_or_else(|| item.to_string(), str::to_owned)).collect()
    })
}

/// Collects failures and panics once with all of them.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    fn push(&mut self, message: String) {
        self.0.push(message);
    }

    fn finish(self, what: &str) {
        assert!(self.0.is_empty(), "{what}:\n  - {}", self.0.join("\n  - "));
    }
}

// ---------------------------------------------------------------------------
// The Dockerfile

struct Stage {
    name: String,
    from: String,
    platform: Option<String>,
    /// `(INSTRUCTION, rest)`, continuation lines joined, comments dropped.
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.instructions.iter().filter(move |(k, _)| k == keyword).map(|(_, rest)| rest.as_str())
    }

    /// The last exec-form `ENTRYPOINT` / `CMD`.
    fn exec_form(&self, keyword: &str) -> Option<Vec<String>> {
        self.all(keyword).last().map(|rest| {
            serde_json::from_str(rest)
                .unwrap_or_else(|e| panic!("{keyword} of stage {} is not exec form: {e}", self.name))
        })
    }

    /// Destinations of `COPY`: the files the stage adds.
    fn copied(&self) -> Vec<String> {
        self.all("COPY").filter_map(|rest| rest.split_whitespace().last()).map(str::to_owned).collect()
    }

    /// `(source, destination)` of each `COPY`.
    fn copies(&self) -> Vec<(String, String)> {
        self.all("COPY")
            .map(|rest| {
                let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                (words.first().copied().unwrap_or("").to_owned(), words.last().copied().unwrap_or("").to_owned())
            })
            .collect()
    }

    /// Whether the base image has a shell and coreutils (`cp`, `sleep`).
    fn has_coreutils(&self) -> bool {
        let base = self.from.to_ascii_lowercase();
        ["debian", "ubuntu", "alpine", "busybox"].iter().any(|distro| base.contains(distro))
            && !base.contains("distroless")
    }
}

struct Dockerfile {
    /// `ARG`s before the first `FROM`, with defaults.
    global_args: BTreeMap<String, String>,
    stages: Vec<Stage>,
    text: String,
}

impl Dockerfile {
    fn stage(&self, name: &str) -> &Stage {
        self.stages
            .iter()
            .find(|stage| stage.name == name)
            .unwrap_or_else(|| panic!("the Dockerfile has no stage `{name}` (docker build --target {name})"))
    }
}

fn dockerfile() -> &'static Dockerfile {
    static DOCKERFILE: OnceLock<Dockerfile> = OnceLock::new();
    DOCKERFILE.get_or_init(|| {
        let text = read(&kit_dir().join("Dockerfile"));
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            let (body, continued) = match trimmed.strip_suffix('\\') {
                Some(body) => (body, true),
                None => (trimmed, false),
            };
            current.push_str(body);
            current.push(' ');
            if !continued {
                let joined = current.trim().to_owned();
                current.clear();
                if joined.is_empty() {
                    continue;
                }
                let (keyword, rest) = joined.split_once(char::is_whitespace).unwrap_or((&joined, ""));
                instructions.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
            }
        }
        let mut global_args = BTreeMap::new();
        let mut stages: Vec<Stage> = Vec::new();
        for (keyword, rest) in instructions {
            if keyword == "FROM" {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let platform = words.iter().find_map(|w| w.strip_prefix("--platform=")).map(str::to_owned);
                let image = words.iter().find(|w| !w.starts_with("--")).copied().unwrap_or("").to_owned();
                let name = match words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
                    Some(i) => words.get(i + 1).copied().unwrap_or("").to_owned(),
                    None => format!("#{}", stages.len()),
                };
                stages.push(Stage { name, from: image, platform, instructions: Vec::new() });
            } else if let Some(stage) = stages.last_mut() {
                stage.instructions.push((keyword, rest));
            } else if keyword == "ARG" {
                let (name, default) = rest.split_once('=').unwrap_or((&rest, ""));
                global_args.insert(name.trim().to_owned(), default.trim().to_owned());
            }
        }
        Dockerfile { global_args, stages, text }
    })
}

/// The Dockerfile stage that builds an image, by the image's repository name.
fn stage_of_image(image: &str) -> Option<&'static Stage> {
    match image_repo(image) {
        "edgeplane" => Some(dockerfile().stage("sidecar")),
        "edgeplane-init" => Some(dockerfile().stage("init")),
        _ => None,
    }
}

/// `registry/path/name:tag@digest` → `name`.
fn image_repo(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

// ---------------------------------------------------------------------------
// Running the binaries

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `program args` with the variables the binaries read removed (plus
/// `envs`), bounded by [`COMMAND_TIMEOUT`].
fn run(program: &Path, args: &[String], envs: &[(String, String)]) -> Output {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("EDGEPLANE_") || name == "POD_IP" {
            command.env_remove(&*name);
        }
    }
    for var in process::ENV_VARS {
        command.env_remove(var);
    }
    command.envs(envs.iter().map(|(k, v)| (k, v)));
    let shown = format!("{} {}", program.display(), args.join(" "));
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(COMMAND_TIMEOUT) {
        Ok(Ok(output)) => Output {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("{shown}: {e}"),
        Err(_) => {
            // Not reaped yet (its waiting thread is still blocked), so the
            // PID is still this child's.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits")),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{shown} hung for {COMMAND_TIMEOUT:?}");
        }
    }
}

/// What a `--help` text lists.
#[derive(Debug, Default)]
struct Help {
    subcommands: BTreeSet<String>,
    /// Long flag (`--config`) → whether it takes a value.
    flags: BTreeMap<String, bool>,
    /// Short flag (`-c`) → its long form.
    shorts: BTreeMap<String, String>,
}

impl Help {
    fn parse(text: &str) -> Help {
        let mut help = Help::default();
        let mut section = String::new();
        for line in text.lines() {
            if !line.starts_with(' ') && line.trim_end().ends_with(':') {
                section = line.trim_end().trim_end_matches(':').to_owned();
                continue;
            }
            let trimmed = line.trim_start();
            if section == "Commands" && line.starts_with("  ") && !line.starts_with("   ") {
                if let Some(word) = trimmed.split_whitespace().next() {
                    help.subcommands.insert(word.to_owned());
                }
            }
            // Flags are listed under `Options:` (not, say, in `Exit codes:` prose).
            if section != "Options" || !trimmed.starts_with('-') {
                continue;
            }
            // `-c, --config <CONFIG>  text` or `--dry-run  text`.
            let head = trimmed.split("  ").next().unwrap_or(trimmed);
            let words: Vec<&str> = head.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            let takes_value = words.iter().any(|w| w.starts_with('<'));
            let long = words
                .iter()
                .find(|w| {
                    w.strip_prefix("--")
                        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                })
                .map(|w| w.to_string());
            let short = words.iter().find(|w| w.len() == 2 && w.starts_with('-') && !w.starts_with("--"));
            if let Some(long) = long {
                if let Some(short) = short {
                    help.shorts.insert(short.to_string(), long.clone());
                }
                help.flags.insert(long, takes_value);
            }
        }
        help
    }

    /// Splits `args` into flags with their values and the other words,
    /// reporting flags the help does not list.
    fn parse_args(
        &self,
        args: &[String],
        what: &str,
        failures: &mut Failures,
    ) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
        let mut flags: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut words = Vec::new();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if arg == "--" {
                words.extend(iter.by_ref().cloned());
                break;
            }
            if !arg.starts_with('-') || arg == "-" {
                words.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let long = if name.starts_with("--") {
                name.clone()
            } else {
                self.shorts.get(&name).cloned().unwrap_or(name.clone())
            };
            let Some(&takes_value) = self.flags.get(&long) else {
                failures.push(format!("{what}: `{name}` is not a flag its --help lists ({:?})", self.flags.keys()));
                continue;
            };
            let value = match (takes_value, inline) {
                (true, Some(value)) => value,
                (true, None) => match iter.next() {
                    Some(value) => value.clone(),
                    None => {
                        failures.push(format!("{what}: `{long}` needs a value"));
                        String::new()
                    }
                },
                (false, Some(_)) => {
                    failures.push(format!("{what}: `{long}` takes no value"));
                    String::new()
                }
                (false, None) => String::new(),
            };
            flags.entry(long).or_default().push(value);
        }
        (flags, words)
    }
}

fn edgeplane() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(process::binary)
}

/// `edgeplane [SUBCOMMAND] --help`, parsed, once per subcommand.
fn edgeplane_help(subcommand: Option<&str>) -> &'static Help {
    static HELPS: OnceLock<std::sync::Mutex<BTreeMap<String, &'static Help>>> = OnceLock::new();
    let key = subcommand.unwrap_or("").to_owned();
    let mut helps = HELPS.get_or_init(Default::default).lock().unwrap();
    helps.entry(key).or_insert_with(|| {
        let mut args: Vec<String> = subcommand.into_iter().map(str::to_owned).collect();
        args.push("--help".into());
        let out = run(edgeplane(), &args, &[]);
        assert_eq!(out.code, Some(0), "edgeplane {}: {}", args.join(" "), out.stderr);
        Box::leak(Box::new(Help::parse(&out.stdout)))
    })
}

/// The `edgeplane-init` binary, or `None` (with the reason printed) while
/// the `iptables-init` package does not exist yet.
fn edgeplane_init() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let package = workspace().join("iptables-init");
        if !package.is_dir() {
            println!(
                "skipped: the edgeplane-init checks need the iptables-init package, and {} does not exist",
                package.display()
            );
            return None;
        }
        Some(process::init_binary())
    })
    .as_deref()
}

fn edgeplane_init_help() -> Option<&'static Help> {
    static HELP: OnceLock<Option<Help>> = OnceLock::new();
    HELP.get_or_init(|| {
        let bin = edgeplane_init()?;
        let out = run(bin, &["--help".to_owned()], &[]);
        assert_eq!(out.code, Some(0), "edgeplane-init --help: {}", out.stderr);
        let help = Help::parse(&out.stdout);
        assert!(
            help.flags.contains_key("--outbound-port"),
            "edgeplane-init --help lists no --outbound-port:\n{}",
            out.stdout
        );
        Some(help)
    })
    .as_ref()
}

// ---------------------------------------------------------------------------
// Pods and containers

/// A workload's pod.
struct Pod<'a> {
    doc: &'a Doc,
    spec: &'a Value,
}

impl<'a> Pod<'a> {
    fn label(&self) -> String {
        self.doc.label()
    }

    fn containers(&self) -> Vec<Ctr<'a>> {
        let init =
            array(self.spec, "initContainers").iter().enumerate().map(|(i, v)| Ctr { value: v, init: true, index: i });
        let main =
            array(self.spec, "containers").iter().enumerate().map(|(i, v)| Ctr { value: v, init: false, index: i });
        init.chain(main).collect()
    }

    fn init_container(&self) -> Option<Ctr<'a>> {
        self.containers().into_iter().find(|c| c.init && image_repo(c.image()) == "edgeplane-init")
    }

    /// The container running `edgeplane run` (the sidecar or the gateway).
    fn proxy(&self) -> Option<Ctr<'a>> {
        self.containers().into_iter().find(|c| c.runs_proxy())
    }

    fn volume(&self, name: &str) -> Option<&'a Value> {
        array(self.spec, "volumes").iter().find(|v| str_at(v, &["name"]) == Some(name))
    }

    fn grace_seconds(&self) -> i64 {
        // The Kubernetes default.
        self.spec.get("terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30)
    }

    fn pod_security(&self, key: &str) -> Option<&'a Value> {
        at(self.spec, &["securityContext", key])
    }
}

fn pods() -> Vec<Pod<'static>> {
    docs().iter().filter_map(|doc| doc.pod_spec().map(|spec| Pod { doc, spec })).collect()
}

fn pods_of(file: &str) -> Vec<Pod<'static>> {
    pods().into_iter().filter(|pod| pod.doc.file == file).collect()
}

#[derive(Clone, Copy)]
struct Ctr<'a> {
    value: &'a Value,
    init: bool,
    index: usize,
}

impl<'a> Ctr<'a> {
    fn name(&self) -> &'a str {
        str_at(self.value, &["name"]).unwrap_or("?")
    }

    fn image(&self) -> &'a str {
        str_at(self.value, &["image"]).unwrap_or("")
    }

    fn label(&self, pod: &Pod) -> String {
        let list = if self.init { "initContainers" } else { "containers" };
        format!("{} {list}[{}] {}", pod.label(), self.index, self.name())
    }

    /// What the container executes: `command`/`args`, falling back to the
    /// image's ENTRYPOINT/CMD as Kubernetes does.
    fn argv(&self) -> Vec<String> {
        let stage = stage_of_image(self.image());
        let command = self.value.get("command");
        let args = self.value.get("args");
        let mut argv = match command {
            Some(_) => strings(command),
            None => stage.and_then(|s| s.exec_form("ENTRYPOINT")).unwrap_or_default(),
        };
        match (command, args) {
            (_, Some(_)) => argv.extend(strings(args)),
            (None, None) => argv.extend(stage.and_then(|s| s.exec_form("CMD")).unwrap_or_default()),
            (Some(_), None) => {}
        }
        argv
    }

    fn runs_proxy(&self) -> bool {
        let argv = self.argv();
        image_repo(self.image()) == "edgeplane"
            && argv.first().is_some_and(|p| basename(p) == "edgeplane")
            && first_word_after_globals(&argv[1..]) == Some("run")
    }

    /// Whether this is a native sidecar (KEP-753).
    fn native_sidecar(&self) -> bool {
        self.init && str_at(self.value, &["restartPolicy"]) == Some("Always")
    }

    /// Literal `env` values (`valueFrom` ones get a stand-in).
    fn env(&self) -> Vec<(String, String)> {
        array(self.value, "env")
            .iter()
            .filter_map(|e| {
                let name = str_at(e, &["name"])?.to_owned();
                let value = match (str_at(e, &["value"]), str_at(e, &["valueFrom", "fieldRef", "fieldPath"])) {
                    (Some(value), _) => value.to_owned(),
                    (None, Some("status.podIP")) => "10.0.0.10".to_owned(),
                    (None, _) => "stand-in".to_owned(),
                };
                Some((name, value))
            })
            .collect()
    }

    fn env_value(&self, name: &str) -> Option<String> {
        self.env().into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn security(&self, key: &str) -> Option<&'a Value> {
        at(self.value, &["securityContext", key])
    }

    /// The effective UID: the container's, else the pod's.
    fn uid(&self, pod: &Pod) -> Option<i64> {
        self.security("runAsUser").or_else(|| pod.pod_security("runAsUser")).and_then(Value::as_i64)
    }

    /// A port by number or by the name of one of the container's ports.
    fn resolve_port(&self, port: &Value) -> Option<u16> {
        if let Some(n) = port.as_u64() {
            return u16::try_from(n).ok();
        }
        let name = port.as_str()?;
        if let Ok(n) = name.parse() {
            return Some(n);
        }
        array(self.value, "ports")
            .iter()
            .find(|p| str_at(p, &["name"]) == Some(name))
            .and_then(|p| p.get("containerPort")?.as_u64())
            .and_then(|n| u16::try_from(n).ok())
    }

    fn mounts(&self) -> &'a [Value] {
        array(self.value, "volumeMounts")
    }

    /// The mount holding `path` (longest mount path first), with the path inside it.
    fn mount_of(&self, path: &str) -> Option<(&'a Value, String)> {
        self.mounts()
            .iter()
            .filter_map(|m| {
                let dir = str_at(m, &["mountPath"])?.trim_end_matches('/');
                let rest = path.strip_prefix(dir)?.strip_prefix('/')?;
                Some((m, dir.len(), rest.to_owned()))
            })
            .max_by_key(|(_, len, _)| *len)
            .map(|(m, _, rest)| (m, rest))
    }

    /// The shell script of `sh -c SCRIPT` / `bash -c SCRIPT`.
    fn script(&self) -> Option<String> {
        shell_script(&self.argv())
    }

    /// Every exec: the main process, then the lifecycle hooks.
    fn execs(&self) -> Vec<(String, Vec<String>)> {
        let mut execs = vec![("command".to_owned(), self.argv())];
        for hook in ["postStart", "preStop"] {
            let command = strings(at(self.value, &["lifecycle", hook, "exec", "command"]));
            if !command.is_empty() {
                execs.push((hook.to_owned(), command));
            }
        }
        execs
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The first word of an `edgeplane` command line that is not a global flag
/// or its value: the subcommand.
fn first_word_after_globals(args: &[String]) -> Option<&str> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--log-level" | "--log-format" => {
                iter.next();
            }
            a if a.starts_with('-') => {}
            a => return Some(a),
        }
    }
    None
}

fn shell_script(argv: &[String]) -> Option<String> {
    let shell = basename(argv.first()?);
    if !matches!(shell, "sh" | "bash" | "ash" | "dash") {
        return None;
    }
    let c = argv.iter().position(|a| a == "-c")?;
    argv.get(c + 1).cloned()
}

/// `edgeplane…` and `edgeplane-init…` command lines inside a shell script:
/// `(program as written, its arguments up to the end of the command)`.
fn script_invocations(script: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for line in script.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            // Quoted words are text (`echo "edgeplane quit failed"`), not commands.
            if word.starts_with(['"', '\'']) {
                continue;
            }
            if matches!(basename(word), "edgeplane" | "edgeplane-init") {
                let args = words[i + 1..]
                    .iter()
                    .take_while(|w| !matches!(**w, "||" | "&&" | "|" | ";" | ")" | "}") && !w.starts_with('#'))
                    .map(|w| w.trim_end_matches(';').to_owned())
                    .collect();
                found.push(((*word).to_owned(), args));
            }
        }
    }
    found
}

/// Tools a Debian-based image has.
const BASE_TOOLS: [&str; 5] = ["sh", "bash", "cp", "sleep", "cat"];

// ---------------------------------------------------------------------------
// The proxy's config

/// The edgeplane config a proxy container runs, from the ConfigMap mounted
/// where its `--config` points.
struct ProxyConfig {
    /// Where it came from, for messages.
    source: String,
    text: String,
    value: Value,
}

impl ProxyConfig {
    fn admin(&self) -> SocketAddr {
        let bind = str_at(&self.value, &["admin", "bind"]).unwrap_or("127.0.0.1:15000");
        bind.parse().unwrap_or_else(|e| panic!("{}: admin.bind {bind}: {e}", self.source))
    }

    fn drain_timeout(&self) -> Duration {
        let text = str_at(&self.value, &["drain_timeout"]).unwrap_or("30s");
        config_model::parse_duration(text).unwrap_or_else(|e| panic!("{}: drain_timeout {text}: {e}", self.source))
    }

    fn listeners(&self) -> &[Value] {
        array(&self.value, "listeners")
    }

    fn bind_of(listener: &Value) -> SocketAddr {
        let bind = str_at(listener, &["bind"]).unwrap_or("");
        bind.parse().unwrap_or_else(|e| panic!("listener bind {bind}: {e}"))
    }

    fn transparent_listener(&self, port: u16) -> Option<&Value> {
        self.listeners().iter().find(|l| l.get("transparent").is_some() && Self::bind_of(l).port() == port)
    }
}

/// The config of the proxy container of `pod`: `--config PATH` (or
/// EDGEPLANE_CONFIG) resolved through the volume mounts to a ConfigMap key.
fn proxy_config(pod: &Pod, proxy: &Ctr) -> Result<ProxyConfig, String> {
    let what = proxy.label(pod);
    let argv = proxy.argv();
    let help = edgeplane_help(Some("run"));
    let mut ignored = Failures::default();
    let run_at = argv.iter().position(|a| a == "run").ok_or_else(|| format!("{what}: no `run`"))?;
    let (flags, _) = help.parse_args(&argv[run_at + 1..], &what, &mut ignored);
    let path = flags
        .get("--config")
        .and_then(|v| v.last().cloned())
        .or_else(|| proxy.env_value("EDGEPLANE_CONFIG"))
        .ok_or_else(|| format!("{what}: runs without --config (or EDGEPLANE_CONFIG)"))?;
    let (mount, file) = proxy.mount_of(&path).ok_or_else(|| format!("{what}: nothing is mounted at {path}"))?;
    let volume_name = str_at(mount, &["name"]).unwrap_or("");
    let key = str_at(mount, &["subPath"]).map_or(file.clone(), str::to_owned);
    let volume =
        pod.volume(volume_name).ok_or_else(|| format!("{what}: mounts volume {volume_name}, which the pod lacks"))?;
    let config_map = str_at(volume, &["configMap", "name"])
        .ok_or_else(|| format!("{what}: volume {volume_name} (holding {path}) is not a ConfigMap"))?;
    let doc = docs()
        .iter()
        .find(|d| d.kind() == "ConfigMap" && d.name() == config_map)
        .ok_or_else(|| format!("{what}: ConfigMap {config_map} is in none of docs/kubernetes/*.yaml"))?;
    let text = str_at(&doc.value, &["data", key.as_str()])
        .ok_or_else(|| format!("{what}: ConfigMap {config_map} has no key {key} (for {path})"))?
        .to_owned();
    let value: Value =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: data.{key} is not YAML: {e}", doc.label()))?;
    Ok(ProxyConfig { source: format!("{} data.{key}", doc.label()), text, value })
}

fn proxy_config_or_fail(pod: &Pod, proxy: &Ctr, failures: &mut Failures) -> Option<ProxyConfig> {
    proxy_config(pod, proxy).map_err(|e| failures.push(e)).ok()
}

/// An `edgeplane-init` setting: its flag, else its EDGEPLANE_INIT_* variable.
fn init_setting(init: &Ctr, flags: &BTreeMap<String, Vec<String>>, flag: &str) -> Option<String> {
    if let Some(values) = flags.get(flag) {
        return Some(values.join(","));
    }
    let var = format!("EDGEPLANE_INIT_{}", flag.trim_start_matches("--").replace('-', "_").to_ascii_uppercase());
    init.env_value(&var)
}

/// The init container's flags, parsed with the real `--help` (or, without
/// the binary, with the flags the brief documents) and without reporting.
fn init_flags(pod: &Pod, init: &Ctr) -> BTreeMap<String, Vec<String>> {
    let args: Vec<String> = init.argv().into_iter().skip(1).collect();
    let mut ignored = Failures::default();
    match edgeplane_init_help() {
        Some(help) => help.parse_args(&args, &init.label(pod), &mut ignored).0,
        None => {
            // Every documented flag except these takes a value.
            let switches = ["--dry-run", "--cleanup"];
            let mut flags: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut iter = args.iter();
            while let Some(arg) = iter.next() {
                let (name, inline) = arg.split_once('=').map_or((arg.as_str(), None), |(n, v)| (n, Some(v)));
                let value = if switches.contains(&name) {
                    String::new()
                } else {
                    inline.map(str::to_owned).or_else(|| iter.next().cloned()).unwrap_or_default()
                };
                flags.entry(name.to_owned()).or_default().push(value);
            }
            flags
        }
    }
}

/// Whether `port` is one of a comma-separated list of ports and ranges `a-b`.
fn port_listed(list: &str, port: u16) -> bool {
    list.split(',').map(str::trim).any(|spec| match spec.split_once('-') {
        Some((a, b)) => matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&port)),
        None => spec.parse() == Ok(port),
    })
}

/// A Kubernetes quantity (`25m`, `1`, `128Mi`, `1G`) in base units.
fn quantity(text: &str) -> Option<f64> {
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0f64.powi(4)),
        ("m", 1e-3),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("n", 1e-9),
        ("u", 1e-6),
        ("", 1.0),
    ];
    suffixes.iter().find_map(|(suffix, factor)| {
        let number = text.strip_suffix(suffix)?;
        number.parse::<f64>().ok().map(|n| n * factor)
    })
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn the_kit_is_complete_and_every_document_is_a_named_object() {
    let mut failures = Failures::default();
    for file in KIT_FILES {
        failures.check(kit_dir().join(file).is_file(), || format!("docs/kubernetes/{file} is missing"));
    }
    let known: BTreeMap<&str, &str> = [
        ("ConfigMap", "v1"),
        ("Service", "v1"),
        ("Namespace", "v1"),
        ("Deployment", "apps/v1"),
        ("Job", "batch/v1"),
        ("PodDisruptionBudget", "policy/v1"),
        ("NetworkPolicy", "networking.k8s.io/v1"),
    ]
    .into_iter()
    .collect();
    let mut names = BTreeSet::new();
    for doc in docs() {
        let label = doc.label();
        let api = str_at(&doc.value, &["apiVersion"]);
        failures.check(api.is_some_and(|a| !a.is_empty()), || format!("{label}: no apiVersion"));
        failures.check(!doc.kind().is_empty(), || format!("{label}: no kind"));
        failures.check(!doc.name().is_empty(), || format!("{label}: no metadata.name"));
        if let (Some(api), Some(expected)) = (api, known.get(doc.kind())) {
            failures.check(api == *expected, || format!("{label}: apiVersion {api}, expected {expected}"));
        }
        // Two files may both define demo-app (native and classic), one file may not.
        failures.check(names.insert((doc.file.clone(), doc.kind().to_owned(), doc.name().to_owned())), || {
            format!("{label}: defined twice in {}", doc.file)
        });
    }
    for (file, kind) in [
        ("sidecar-configmap.yaml", "ConfigMap"),
        ("pod-with-sidecar.yaml", "Deployment"),
        ("pod-with-sidecar-classic.yaml", "Deployment"),
        ("job-with-sidecar.yaml", "Job"),
        ("gateway.yaml", "Deployment"),
        ("gateway.yaml", "Service"),
    ] {
        failures.check(docs().iter().any(|d| d.file == file && d.kind() == kind), || format!("{file} has no {kind}"));
    }
    failures.finish("docs/kubernetes");
}

/// Kubernetes wants strings in `command`, `args`, `env[].value`, labels and
/// annotations; YAML 1.1 (which kubectl's parser follows) reads unquoted
/// `on`/`off`/`yes`/`no` as booleans, so those must be quoted.
#[test]
fn scalars_kubernetes_wants_as_strings_are_strings() {
    let mut failures = Failures::default();
    for pod in pods() {
        for ctr in pod.containers() {
            for key in ["command", "args"] {
                for item in array(ctr.value, key) {
                    failures
                        .check(item.is_string(), || format!("{}: {key} item {item} is not a string", ctr.label(&pod)));
                }
            }
            for env in array(ctr.value, "env") {
                if let Some(value) = env.get("value") {
                    failures.check(value.is_string(), || format!("{}: env {env} is not a string", ctr.label(&pod)));
                }
            }
        }
    }
    for doc in docs() {
        for path in [
            &["metadata", "labels"][..],
            &["metadata", "annotations"],
            &["spec", "template", "metadata", "annotations"],
        ] {
            if let Some(map) = at(&doc.value, path).and_then(Value::as_object) {
                for (key, value) in map {
                    failures.check(value.is_string(), || {
                        format!("{}: {} {key}: {value} is not a string", doc.label(), path.join("."))
                    });
                }
            }
        }
    }
    let yaml11_booleans = ["y", "n", "yes", "no", "on", "off"];
    for file in KIT_FILES.iter().filter(|f| f.ends_with(".yaml")) {
        let text = read(&kit_dir().join(file));
        // Lines of block scalars (`key: |`) are text, not YAML values.
        let mut block_indent: Option<usize> = None;
        for (n, line) in text.lines().enumerate() {
            let indent = line.len() - line.trim_start().len();
            if let Some(block) = block_indent {
                if line.trim().is_empty() || indent > block {
                    continue;
                }
                block_indent = None;
            }
            let code = line.split(" #").next().unwrap_or(line).trim_end();
            if code.ends_with('|') || code.ends_with("|-") || code.ends_with('>') || code.ends_with(">-") {
                block_indent = Some(indent);
            }
            let value = code.trim_start().trim_start_matches("- ").rsplit(": ").next().unwrap_or("").trim();
            failures.check(!yaml11_booleans.contains(&value.to_ascii_lowercase().as_str()), || {
                format!("{file}:{}: `{value}` is a boolean to kubectl (YAML 1.1); quote it", n + 1)
            });
        }
    }
    failures.finish("scalars");
}

#[test]
fn containers_run_binaries_their_images_ship() {
    let mut failures = Failures::default();
    let sidecar = dockerfile().stage("sidecar");
    let init = dockerfile().stage("init");
    failures.check(sidecar.copied().iter().any(|p| p == "/usr/local/bin/edgeplane"), || {
        format!("the sidecar stage does not COPY /usr/local/bin/edgeplane: {:?}", sidecar.copied())
    });
    failures.check(init.copied().iter().any(|p| p == "/usr/local/bin/edgeplane-init"), || {
        format!("the init stage does not COPY /usr/local/bin/edgeplane-init: {:?}", init.copied())
    });
    let mut proxies = 0;
    for pod in pods() {
        let containers = pod.containers();
        for ctr in &containers {
            let label = ctr.label(&pod);
            let stage = stage_of_image(ctr.image());
            for (hook, argv) in ctr.execs() {
                let Some(program) = argv.first() else {
                    failures.push(format!("{label}: {hook} runs nothing"));
                    continue;
                };
                match stage {
                    Some(stage) => {
                        // The image's own binaries (by path, or by name on PATH), or a base-image tool.
                        let ships = stage.copied().iter().any(|p| p == program || basename(p) == program);
                        let tool =
                            !program.contains('/') && BASE_TOOLS.contains(&program.as_str()) && stage.has_coreutils();
                        failures.check(ships || tool, || {
                            format!(
                                "{label}: {hook} runs `{program}`, which image {} (stage {}) does not have",
                                ctr.image(),
                                stage.name
                            )
                        });
                    }
                    None => {
                        failures.check(!matches!(basename(program), "edgeplane" | "edgeplane-init"), || {
                            format!(
                                "{label}: {hook} runs `{program}` in image {}, which is not an edgeplane image",
                                ctr.image()
                            )
                        });
                    }
                }
            }
            match image_repo(ctr.image()) {
                "edgeplane-init" => {
                    let argv = ctr.argv();
                    failures.check(argv.first().is_some_and(|p| basename(p) == "edgeplane-init"), || {
                        format!("{label}: the init image should run edgeplane-init, runs {argv:?}")
                    });
                }
                "edgeplane" if ctr.runs_proxy() => proxies += 1,
                _ => {}
            }
            // A binary called from a script (e.g. `edgeplane quit` in a Job)
            // must be there: the image's own, or copied into a shared volume
            // by an init container from an edgeplane image.
            if let Some(script) = ctr.script() {
                for (program, _) in script_invocations(&script) {
                    let shipped =
                        stage.is_some_and(|s| s.copied().iter().any(|p| *p == program || basename(p) == program));
                    let copied = ctr.mount_of(&program).is_some_and(|(mount, file)| {
                        let volume = str_at(mount, &["name"]).unwrap_or("");
                        containers.iter().filter(|c| c.init).any(|c| {
                            let argv = c.argv();
                            let Some(source_stage) = stage_of_image(c.image()) else { return false };
                            argv.len() == 3
                                && basename(&argv[0]) == "cp"
                                && source_stage.copied().contains(&argv[1])
                                && basename(&argv[1]) == basename(&program)
                                && c.mount_of(&argv[2])
                                    .is_some_and(|(m, f)| str_at(m, &["name"]) == Some(volume) && f == file)
                        })
                    });
                    failures.check(shipped || copied, || {
                        format!("{label}: its script runs {program}, which neither its image has nor an init container copies there")
                    });
                }
            }
        }
    }
    failures.check(proxies >= 5, || format!("expected a proxy in every workload, found {proxies}"));
    failures.finish("binaries");
}

#[test]
fn edgeplane_subcommands_flags_and_variables_are_real() {
    let mut failures = Failures::default();
    let top = edgeplane_help(None);
    for needed in ["run", "check", "wait-ready", "quit"] {
        failures.check(top.subcommands.contains(needed), || {
            format!("`edgeplane --help` lists no `{needed}`: {:?}", top.subcommands)
        });
    }
    let mut used = BTreeSet::new();
    for pod in pods() {
        for ctr in pod.containers() {
            let label = ctr.label(&pod);
            let mut invocations: Vec<(String, String, Vec<String>)> = ctr
                .execs()
                .into_iter()
                .filter(|(_, argv)| argv.first().is_some_and(|p| basename(p) == "edgeplane"))
                .map(|(hook, argv)| (hook, argv[0].clone(), argv[1..].to_vec()))
                .collect();
            if let Some(script) = ctr.script() {
                invocations.extend(
                    script_invocations(&script)
                        .into_iter()
                        .filter(|(p, _)| basename(p) == "edgeplane")
                        .map(|(p, args)| ("script".to_owned(), p, args)),
                );
            }
            for (hook, _, args) in invocations {
                let what = format!("{label} {hook}");
                let Some(subcommand) = first_word_after_globals(&args) else {
                    failures.push(format!("{what}: `edgeplane` without a subcommand"));
                    continue;
                };
                if !top.subcommands.contains(subcommand) {
                    failures
                        .push(format!("{what}: `edgeplane {subcommand}` is not a subcommand ({:?})", top.subcommands));
                    continue;
                }
                used.insert(subcommand.to_owned());
                let at = args.iter().position(|a| a == subcommand).unwrap();
                let help = edgeplane_help(Some(subcommand));
                let (flags, words) = help.parse_args(&args[at + 1..], &what, &mut failures);
                failures.check(words.is_empty(), || format!("{what}: stray words {words:?}"));
                // wait-ready and quit talk to the admin server; its POST
                // endpoints answer loopback callers only.
                if matches!(subcommand, "wait-ready" | "quit") {
                    let admin = flags
                        .get("--admin")
                        .and_then(|v| v.last())
                        .cloned()
                        .or_else(|| ctr.env_value("EDGEPLANE_ADMIN"));
                    match admin.as_deref().map(str::parse::<SocketAddr>) {
                        Some(Ok(addr)) => failures
                            .check(addr.ip().is_loopback(), || format!("{what}: --admin {addr} is not loopback")),
                        Some(Err(e)) => failures.push(format!("{what}: --admin: {e}")),
                        None => {}
                    }
                    if let Some(timeout) = flags.get("--timeout").and_then(|v| v.last()) {
                        failures.check(config_model::parse_duration(timeout).is_ok(), || {
                            format!("{what}: --timeout {timeout}")
                        });
                    }
                }
            }
            // The variables the binary reads.
            if image_repo(ctr.image()) == "edgeplane" {
                for (name, _) in ctr.env() {
                    if name.starts_with("EDGEPLANE_") {
                        failures.check(process::ENV_VARS.contains(&name.as_str()), || {
                            format!("{label}: env {name} is not a variable edgeplane reads ({:?})", process::ENV_VARS)
                        });
                    }
                }
                if let Some(format) = ctr.env_value("EDGEPLANE_LOG_FORMAT") {
                    failures.check(format == "json" || format == "text", || {
                        format!("{label}: EDGEPLANE_LOG_FORMAT={format}")
                    });
                }
                if let Some(workers) = ctr.env_value("EDGEPLANE_WORKERS") {
                    failures.check(workers.parse::<u32>().is_ok(), || format!("{label}: EDGEPLANE_WORKERS={workers}"));
                }
            }
        }
    }
    for needed in ["run", "wait-ready", "quit"] {
        failures.check(used.contains(needed), || format!("no manifest uses `edgeplane {needed}` (used: {used:?})"));
    }
    failures.finish("edgeplane command lines");
}

#[test]
fn init_container_is_root_with_net_admin_and_net_raw_and_nothing_else() {
    let mut failures = Failures::default();
    let mut seen = 0;
    for pod in pods() {
        let Some(init) = pod.init_container() else { continue };
        seen += 1;
        let label = init.label(&pod);
        failures.check(init.index == 0, || {
            format!("{label}: must be the first init container (the rules come before the sidecar)")
        });
        failures.check(init.uid(&pod) == Some(0), || format!("{label}: must run as UID 0"));
        failures.check(init.security("runAsNonRoot").and_then(Value::as_bool) != Some(true), || {
            format!("{label}: runAsNonRoot true cannot run a root init container")
        });
        failures.check(init.security("privileged").and_then(Value::as_bool) != Some(true), || {
            format!("{label}: needs NET_ADMIN and NET_RAW, not privileged")
        });
        let add: BTreeSet<String> =
            strings(init.security("capabilities").and_then(|c| c.get("add"))).into_iter().collect();
        let drop: BTreeSet<String> =
            strings(init.security("capabilities").and_then(|c| c.get("drop"))).into_iter().collect();
        let expected: BTreeSet<String> = ["NET_ADMIN", "NET_RAW"].map(str::to_owned).into();
        failures.check(add == expected, || format!("{label}: capabilities.add {add:?}, expected exactly {expected:?}"));
        failures.check(drop.contains("ALL"), || format!("{label}: capabilities.drop must contain ALL, is {drop:?}"));
        failures
            .check(!init.native_sidecar(), || format!("{label}: must run to completion, not restartPolicy: Always"));
    }
    failures.check(seen >= 4, || format!("expected the init container in 4 workloads, found {seen}"));
    failures.finish("init container");
}

#[test]
fn init_container_flags_are_the_real_edgeplane_init_flags_and_pass_a_dry_run() {
    let (Some(bin), Some(help)) = (edgeplane_init(), edgeplane_init_help()) else { return };
    let mut failures = Failures::default();
    let mut dry_runs: BTreeSet<Vec<String>> = BTreeSet::new();
    for pod in pods() {
        let Some(init) = pod.init_container() else { continue };
        let label = init.label(&pod);
        let args: Vec<String> = init.argv().into_iter().skip(1).collect();
        let (flags, words) = help.parse_args(&args, &label, &mut failures);
        failures.check(words.is_empty(), || format!("{label}: stray words {words:?}"));
        for (flag, _) in init.env() {
            if let Some(rest) = flag.strip_prefix("EDGEPLANE_INIT_") {
                let long = format!("--{}", rest.to_ascii_lowercase().replace('_', "-"));
                failures.check(help.flags.contains_key(&long), || {
                    format!("{label}: env {flag} matches no flag of edgeplane-init")
                });
            }
        }
        failures.check(!flags.contains_key("--dry-run") && !flags.contains_key("--cleanup"), || {
            format!("{label}: an init container that installs nothing")
        });
        if !dry_runs.insert(args.clone()) {
            continue;
        }
        // As written: the parser must accept it (exit 2 is a usage error).
        // 3 means this host lacks iptables/nft for `--backend auto`.
        let mut dry = args.clone();
        dry.push("--dry-run".into());
        let out = run(bin, &dry, &init.env());
        failures.check(matches!(out.code, Some(0) | Some(3)), || {
            format!("{label}: edgeplane-init {} exited {:?}: {}", dry.join(" "), out.code, out.stderr.trim())
        });
        // With the nft backend, which prints without running anything, the
        // rules must redirect to the ports and leave the exclusions alone.
        let mut nft = Vec::new();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if arg == "--backend" {
                iter.next();
            } else if !arg.starts_with("--backend=") {
                nft.push(arg.clone());
            }
        }
        nft.extend(["--backend", "nft", "--dry-run"].map(str::to_owned));
        let out = run(bin, &nft, &init.env());
        if out.code != Some(0) {
            failures.push(format!(
                "{label}: edgeplane-init {} exited {:?}: {}",
                nft.join(" "),
                out.code,
                out.stderr.trim()
            ));
            continue;
        }
        let outbound = init_setting(&init, &flags, "--outbound-port").unwrap_or_else(|| "15001".into());
        let inbound = init_setting(&init, &flags, "--inbound-port").unwrap_or_else(|| "15003".into());
        let uid = init_setting(&init, &flags, "--proxy-uid").unwrap_or_else(|| "1500".into());
        for needle in [format!("redirect to :{outbound}"), format!("redirect to :{inbound}"), format!("skuid {uid}")] {
            failures.check(out.stdout.contains(&needle), || {
                format!("{label}: the nft dry run has no `{needle}`:\n{}", out.stdout)
            });
        }
        for port in init_setting(&init, &flags, "--inbound-exclude-ports")
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let excluded = out.stdout.lines().any(|line| {
                line.contains("dport")
                    && line.contains("return")
                    && line.split([' ', '{', '}', ',']).any(|w| w == port.trim())
            });
            failures.check(excluded, || {
                format!("{label}: the nft dry run does not exempt inbound port {port}:\n{}", out.stdout)
            });
        }
    }
    failures.finish("edgeplane-init flags");
}

#[test]
fn proxy_runs_as_uid_1500_non_root_locked_down_and_sized_for_small_nodes() {
    let mut failures = Failures::default();
    for pod in pods() {
        for ctr in pod.containers() {
            let label = ctr.label(&pod);
            let resources = ctr.value.get("resources");
            for kind in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    let q = resources.and_then(|r| at(r, &[kind, resource])).and_then(|v| match v {
                        Value::String(s) => quantity(s),
                        Value::Number(n) => n.as_f64(),
                        _ => None,
                    });
                    failures
                        .check(q.is_some_and(|q| q > 0.0), || format!("{label}: no valid resources.{kind}.{resource}"));
                }
            }
            for resource in ["cpu", "memory"] {
                let request = resources.and_then(|r| str_at(r, &["requests", resource])).and_then(quantity);
                let limit = resources.and_then(|r| str_at(r, &["limits", resource])).and_then(quantity);
                if let (Some(request), Some(limit)) = (request, limit) {
                    failures.check(request <= limit, || format!("{label}: {resource} request above its limit"));
                }
            }
            if image_repo(ctr.image()) != "edgeplane" {
                continue;
            }
            failures.check(ctr.uid(&pod) == Some(PROXY_UID), || format!("{label}: must run as UID {PROXY_UID}"));
            let gid = ctr.security("runAsGroup").or_else(|| pod.pod_security("runAsGroup")).and_then(Value::as_i64);
            failures.check(gid == Some(PROXY_UID), || format!("{label}: must run as GID {PROXY_UID}"));
            for (key, expected) in
                [("runAsNonRoot", true), ("readOnlyRootFilesystem", true), ("allowPrivilegeEscalation", false)]
            {
                failures.check(ctr.security(key).and_then(Value::as_bool) == Some(expected), || {
                    format!("{label}: securityContext.{key} must be {expected}")
                });
            }
            let capabilities = ctr.security("capabilities");
            failures.check(strings(capabilities.and_then(|c| c.get("drop"))).contains(&"ALL".to_owned()), || {
                format!("{label}: capabilities.drop must contain ALL")
            });
            failures.check(strings(capabilities.and_then(|c| c.get("add"))).is_empty(), || {
                format!("{label}: adds capabilities")
            });
            if ctr.runs_proxy() {
                let memory =
                    resources.and_then(|r| str_at(r, &["limits", "memory"])).and_then(quantity).unwrap_or(f64::MAX);
                failures.check(memory <= MAX_PROXY_MEMORY, || {
                    format!("{label}: memory limit above 256Mi for an edge proxy")
                });
            }
        }
        // The app must not share the proxy's UID: its traffic would bypass interception.
        if pod.init_container().is_some() {
            for ctr in pod
                .containers()
                .iter()
                .filter(|c| image_repo(c.image()) != "edgeplane" && image_repo(c.image()) != "edgeplane-init")
            {
                failures.check(ctr.uid(&pod) != Some(PROXY_UID), || {
                    format!("{}: runs as the proxy UID, so its traffic is not intercepted", ctr.label(&pod))
                });
            }
        }
    }
    failures.finish("security contexts and resources");
}

#[test]
fn probes_use_ready_and_live_on_the_admin_port_interception_leaves_alone() {
    let mut failures = Failures::default();
    for pod in pods() {
        let Some(proxy) = pod.proxy() else { continue };
        let label = proxy.label(&pod);
        let Some(config) = proxy_config_or_fail(&pod, &proxy, &mut failures) else { continue };
        // --admin / EDGEPLANE_ADMIN override the config.
        let argv = proxy.argv();
        let admin_flag = argv.windows(2).find(|w| w[0] == "--admin").map(|w| w[1].clone());
        let admin: SocketAddr = match admin_flag.or_else(|| proxy.env_value("EDGEPLANE_ADMIN")) {
            Some(text) => text.parse().unwrap_or_else(|e| panic!("{label}: admin {text}: {e}")),
            None => config.admin(),
        };
        failures.check(!admin.ip().is_loopback(), || {
            format!("{label}: admin binds {admin}; kubelet probes come to the pod IP, so bind 0.0.0.0 or [::]")
        });
        for (probe, path) in [("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/live")] {
            let Some(get) = at(proxy.value, &[probe, "httpGet"]) else {
                failures.push(format!("{label}: no {probe}.httpGet"));
                continue;
            };
            failures.check(str_at(get, &["path"]) == Some(path), || format!("{label}: {probe} must GET {path}"));
            let port = get.get("port").and_then(|p| proxy.resolve_port(p));
            failures.check(port == Some(admin.port()), || {
                format!("{label}: {probe} port {port:?} is not the admin port {}", admin.port())
            });
        }
        failures.check(
            array(proxy.value, "ports")
                .iter()
                .any(|p| p.get("containerPort").and_then(Value::as_u64) == Some(u64::from(admin.port()))),
            || format!("{label}: does not declare the admin port {} in ports", admin.port()),
        );
        if let Some(init) = pod.init_container() {
            let flags = init_flags(&pod, &init);
            let excluded = init_setting(&init, &flags, "--inbound-exclude-ports").unwrap_or_default();
            failures.check(port_listed(&excluded, admin.port()), || {
                format!(
                    "{}: --inbound-exclude-ports `{excluded}` lacks the admin/probe port {}",
                    init.label(&pod),
                    admin.port()
                )
            });
        }
    }
    failures.finish("probes");
}

#[test]
fn interception_ports_and_uid_match_the_sidecar_config() {
    let mut failures = Failures::default();
    let mut seen = 0;
    for pod in pods() {
        let (Some(init), Some(proxy)) = (pod.init_container(), pod.proxy()) else { continue };
        seen += 1;
        let label = init.label(&pod);
        let Some(config) = proxy_config_or_fail(&pod, &proxy, &mut failures) else { continue };
        let flags = init_flags(&pod, &init);
        let port = |flag: &str, default: u16| -> u16 {
            init_setting(&init, &flags, flag)
                .map_or(default, |v| v.parse().unwrap_or_else(|e| panic!("{label}: {flag} {v}: {e}")))
        };
        let outbound = port("--outbound-port", 15001);
        let inbound = port("--inbound-port", 15003);
        let uid: i64 =
            init_setting(&init, &flags, "--proxy-uid").map_or(PROXY_UID, |v| v.parse().expect("--proxy-uid"));
        failures.check(proxy.uid(&pod) == Some(uid), || format!("{label}: --proxy-uid {uid} is not the sidecar's UID"));
        match config.transparent_listener(outbound) {
            Some(listener) => failures.check(
                str_at(listener, &["transparent", "unmatched"]).unwrap_or("passthrough") == "passthrough",
                || {
                    format!(
                        "{}: the outbound listener on {outbound} should pass unmatched connections through",
                        config.source
                    )
                },
            ),
            None => failures.push(format!("{}: no transparent listener on --outbound-port {outbound}", config.source)),
        }
        match config.transparent_listener(inbound) {
            Some(listener) => {
                // Each inbound route takes the app on loopback.
                for route in array(listener, "routes") {
                    let Some(cluster) = str_at(route, &["cluster"]) else { continue };
                    let endpoints = array(&config.value, "clusters")
                        .iter()
                        .find(|c| str_at(c, &["name"]) == Some(cluster))
                        .map(|c| strings(c.get("endpoints")))
                        .unwrap_or_default();
                    failures.check(
                        !endpoints.is_empty()
                            && endpoints.iter().all(|e| e.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback())),
                        || {
                            format!(
                                "{}: inbound cluster {cluster} should be the app on loopback, is {endpoints:?}",
                                config.source
                            )
                        },
                    );
                }
            }
            None => failures.push(format!("{}: no transparent listener on --inbound-port {inbound}", config.source)),
        }
        // IPv4-only listeners with IPv6 rules would refuse redirected IPv6 connections.
        let ipv4_only = [outbound, inbound]
            .iter()
            .any(|p| config.transparent_listener(*p).is_some_and(|l| ProxyConfig::bind_of(l).is_ipv4()));
        let ipv6 = init_setting(&init, &flags, "--ipv6").unwrap_or_else(|| "auto".into());
        failures.check(!ipv4_only || ipv6 == "off", || {
            format!("{label}: the sidecar binds IPv4 only, so --ipv6 must be off (is {ipv6}); or bind [::]")
        });
        // The admin port must not collide with the interception ports.
        failures.check(![outbound, inbound].contains(&config.admin().port()), || {
            format!("{label}: admin on an interception port")
        });
    }
    failures.check(seen >= 4, || format!("expected 4 intercepted workloads, found {seen}"));
    failures.finish("interception ports");
}

#[test]
fn grace_period_outlasts_the_drain_and_pre_stop() {
    let mut failures = Failures::default();
    for pod in pods() {
        let Some(proxy) = pod.proxy() else { continue };
        let Some(config) = proxy_config_or_fail(&pod, &proxy, &mut failures) else { continue };
        let pre_stop = strings(at(proxy.value, &["lifecycle", "preStop", "exec", "command"]));
        let sleep = match pre_stop.as_slice() {
            [sleep, seconds] if sleep == "sleep" => {
                seconds.parse::<u64>().unwrap_or_else(|e| panic!("preStop sleep {seconds}: {e}"))
            }
            [] => at(proxy.value, &["lifecycle", "preStop", "sleep", "seconds"]).and_then(Value::as_u64).unwrap_or(0),
            other => panic!("{}: unexpected preStop {other:?}", proxy.label(&pod)),
        };
        let needed = config.drain_timeout() + Duration::from_secs(sleep);
        let grace = Duration::from_secs(u64::try_from(pod.grace_seconds()).unwrap_or(0));
        failures.check(grace > needed, || {
            format!(
                "{}: terminationGracePeriodSeconds {grace:?} must exceed drain_timeout {:?} + preStop {sleep}s",
                pod.label(),
                config.drain_timeout()
            )
        });
    }
    failures.finish("termination");
}

#[test]
fn embedded_configs_pass_edgeplane_check() {
    let mut failures = Failures::default();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = 0;
    for doc in docs().iter().filter(|d| d.kind() == "ConfigMap") {
        let Some(data) = at(&doc.value, &["data"]).and_then(Value::as_object) else { continue };
        for (key, text) in
            data.iter().filter(|(k, _)| k.ends_with(".yaml") || k.ends_with(".yml") || k.ends_with(".json"))
        {
            let text = text.as_str().unwrap_or_else(|| panic!("{}: data.{key} is not a string", doc.label()));
            let file = dir.path().join(format!("{}-{key}", doc.name()));
            std::fs::write(&file, text).expect("write config");
            let out = run(edgeplane(), &["check".into(), "--config".into(), file.display().to_string()], &[]);
            checked += 1;
            failures.check(out.code == Some(0), || {
                format!(
                    "{}: data.{key} fails `edgeplane check` (exit {:?}):\n{}{}",
                    doc.label(),
                    out.code,
                    out.stdout,
                    out.stderr
                )
            });
        }
    }
    // Every proxy's config is one of those, and the same text.
    for pod in pods() {
        if let Some(proxy) = pod.proxy() {
            if let Some(config) = proxy_config_or_fail(&pod, &proxy, &mut failures) {
                failures.check(!config.text.trim().is_empty(), || format!("{}: empty", config.source));
            }
        }
    }
    failures.check(checked >= 2, || format!("expected the sidecar and gateway configs, checked {checked}"));
    failures.finish("edgeplane check");
}

#[test]
fn native_classic_job_and_gateway_layouts() {
    let mut failures = Failures::default();
    let single = |file: &str, failures: &mut Failures| -> Vec<Pod<'static>> {
        let pods = pods_of(file);
        failures.check(!pods.is_empty(), || format!("{file}: no workload"));
        pods
    };
    // Native: the sidecar is an init container after edgeplane-init, with a
    // startupProbe that holds the app back.
    let native_ok = |pod: &Pod, failures: &mut Failures| {
        let Some(proxy) = pod.proxy() else {
            failures.push(format!("{}: no edgeplane sidecar", pod.label()));
            return;
        };
        let label = proxy.label(pod);
        failures
            .check(proxy.native_sidecar(), || format!("{label}: must be an init container with restartPolicy: Always"));
        failures.check(pod.init_container().is_some_and(|i| i.index < proxy.index), || {
            format!("{label}: must come after edgeplane-init")
        });
        failures.check(proxy.value.get("startupProbe").is_some(), || format!("{label}: needs a startupProbe"));
    };
    // Classic: the first container, held back by `edgeplane wait-ready`.
    let classic_ok = |pod: &Pod, failures: &mut Failures| {
        let Some(proxy) = pod.proxy() else {
            failures.push(format!("{}: no edgeplane sidecar", pod.label()));
            return;
        };
        let label = proxy.label(pod);
        failures.check(!proxy.init && proxy.index == 0, || format!("{label}: must be the first container"));
        let post_start = strings(at(proxy.value, &["lifecycle", "postStart", "exec", "command"]));
        failures.check(
            post_start.first().is_some_and(|p| basename(p) == "edgeplane")
                && post_start.get(1).map(String::as_str) == Some("wait-ready"),
            || format!("{label}: postStart must run `edgeplane wait-ready`, runs {post_start:?}"),
        );
        failures.check(pod.init_container().is_some(), || format!("{}: no edgeplane-init", pod.label()));
    };
    for pod in single("pod-with-sidecar.yaml", &mut failures) {
        native_ok(&pod, &mut failures);
    }
    for pod in single("pod-with-sidecar-classic.yaml", &mut failures) {
        classic_ok(&pod, &mut failures);
    }
    let jobs = single("job-with-sidecar.yaml", &mut failures);
    for pod in &jobs {
        failures.check(pod.doc.kind() == "Job", || format!("{}: not a Job", pod.label()));
        let restart = str_at(pod.spec, &["restartPolicy"]).unwrap_or("Always");
        failures.check(restart == "Never" || restart == "OnFailure", || {
            format!("{}: Job pods need restartPolicy Never/OnFailure", pod.label())
        });
        let Some(proxy) = pod.proxy() else {
            failures.push(format!("{}: no sidecar", pod.label()));
            continue;
        };
        if proxy.native_sidecar() {
            native_ok(pod, &mut failures);
        } else {
            // Nothing stops a classic sidecar but the work's `edgeplane quit`.
            classic_ok(pod, &mut failures);
            failures.check(restart == "Never", || {
                format!("{}: a classic sidecar Job needs restartPolicy: Never", pod.label())
            });
            let quits = pod.containers().iter().filter(|c| !c.init && !c.runs_proxy()).any(|c| {
                c.script().is_some_and(|s| {
                    script_invocations(&s)
                        .iter()
                        .any(|(p, args)| basename(p) == "edgeplane" && args.first().map(String::as_str) == Some("quit"))
                })
            });
            failures.check(quits, || {
                format!("{}: no container ends the classic sidecar with `edgeplane quit`", pod.label())
            });
        }
    }
    failures.check(jobs.iter().any(|p| p.proxy().is_some_and(|c| c.native_sidecar())), || {
        "no Job with a native sidecar".into()
    });
    failures.check(jobs.iter().any(|p| p.proxy().is_some_and(|c| !c.native_sidecar())), || {
        "no Job with a classic sidecar".into()
    });
    for pod in single("gateway.yaml", &mut failures) {
        failures.check(pod.init_container().is_none(), || format!("{}: a gateway needs no interception", pod.label()));
        match pod.proxy() {
            Some(proxy) => {
                failures.check(!proxy.init, || format!("{}: the gateway is the main container", pod.label()))
            }
            None => failures.push(format!("{}: does not run `edgeplane run`", pod.label())),
        }
    }
    failures.finish("layouts");
}

#[test]
fn services_reach_ports_the_proxy_serves() {
    let mut failures = Failures::default();
    let mut seen = 0;
    for service in docs().iter().filter(|d| d.kind() == "Service") {
        let Some(selector) = at(&service.value, &["spec", "selector"]).and_then(Value::as_object) else { continue };
        // The workloads of the same file that the selector picks.
        let selected: Vec<Pod> = pods_of(&service.file)
            .into_iter()
            .filter(|pod| {
                pod.doc.pod_labels().is_some_and(|labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            })
            .collect();
        failures
            .check(!selected.is_empty(), || format!("{}: selects no workload of {}", service.label(), service.file));
        for pod in selected {
            let Some(proxy) = pod.proxy() else { continue };
            let Some(config) = proxy_config_or_fail(&pod, &proxy, &mut failures) else { continue };
            for port in array(at(&service.value, &["spec"]).unwrap(), "ports") {
                seen += 1;
                let target = port.get("targetPort").or_else(|| port.get("port")).unwrap();
                let resolved = pod
                    .containers()
                    .iter()
                    .filter(|c| !c.init || c.native_sidecar())
                    .find_map(|c| c.resolve_port(target));
                let Some(resolved) = resolved else {
                    failures.push(format!("{}: targetPort {target} is no container's port", service.label()));
                    continue;
                };
                if let Some(init) = pod.init_container() {
                    // Intercepted: the inbound listener takes the connection by its destination port.
                    let flags = init_flags(&pod, &init);
                    let inbound = init_setting(&init, &flags, "--inbound-port").map_or(15003, |v| v.parse().unwrap());
                    let Some(listener) = config.transparent_listener(inbound) else { continue };
                    let routed = array(listener, "routes").iter().any(|r| {
                        let ports = strings(at(r, &["match", "destination", "ports"]));
                        ports.is_empty() || ports.contains(&resolved.to_string())
                    });
                    let passthrough =
                        str_at(listener, &["transparent", "unmatched"]).unwrap_or("passthrough") == "passthrough";
                    failures.check(routed || passthrough, || {
                        format!(
                            "{}: port {resolved} has no inbound route in {} and unmatched ports are refused",
                            service.label(),
                            config.source
                        )
                    });
                } else {
                    let bound = config.listeners().iter().any(|l| ProxyConfig::bind_of(l).port() == resolved);
                    failures.check(bound, || {
                        format!("{}: targetPort {resolved} is no listener of {}", service.label(), config.source)
                    });
                }
            }
        }
    }
    failures.check(seen >= 3, || format!("expected Services for demo-app and the gateway, checked {seen} ports"));
    failures.finish("services");
}

#[test]
fn dockerfile_builds_both_images_for_targetarch() {
    let mut failures = Failures::default();
    let file = dockerfile();
    let sidecar = file.stage("sidecar");
    let init = file.stage("init");
    let builders: Vec<&Stage> =
        file.stages.iter().filter(|s| s.all("RUN").any(|r| r.contains("cargo build"))).collect();
    failures.check(builders.len() == 1, || format!("expected one cargo build stage, found {}", builders.len()));
    for builder in builders {
        let label = format!("stage {}", builder.name);
        failures.check(builder.platform.as_deref() == Some("$BUILDPLATFORM"), || {
            format!("{label}: should run on the build machine (FROM --platform=$BUILDPLATFORM) and cross-compile")
        });
        failures.check(builder.all("ARG").any(|a| a.split('=').next() == Some("TARGETARCH")), || {
            format!("{label}: no ARG TARGETARCH")
        });
        let runs: String = builder.all("RUN").collect::<Vec<_>>().join("\n");
        for needle in [
            "TARGETARCH",
            "amd64)",
            "arm64)",
            "x86_64-unknown-linux-gnu",
            "aarch64-unknown-linux-gnu",
            "gcc-aarch64-linux-gnu",
        ] {
            failures.check(runs.contains(needle), || format!("{label}: its RUN steps never mention `{needle}`"));
        }
        let build = builder.all("RUN").find(|r| r.contains("cargo build")).unwrap();
        for needle in [
            "-p edgeplane ",
            "--bin edgeplane ",
            "-p iptables-init",
            "--bin edgeplane-init",
            "--target",
            "--release",
            "--locked",
        ] {
            failures.check(build.contains(needle), || format!("{label}: `cargo build` lacks `{needle}`: {build}"));
        }
        // The packages and binaries it names exist.
        let proxy_manifest = read(&workspace().join("proxy/Cargo.toml"));
        failures.check(proxy_manifest.contains("name = \"edgeplane\""), || {
            "proxy/Cargo.toml: no package/bin edgeplane".into()
        });
        let init_manifest = workspace().join("iptables-init/Cargo.toml");
        if init_manifest.is_file() {
            let text = read(&init_manifest);
            failures
                .check(text.contains("name = \"iptables-init\"") && text.contains("name = \"edgeplane-init\""), || {
                    "iptables-init/Cargo.toml: no package iptables-init with bin edgeplane-init".into()
                });
        } else {
            println!("skipped: iptables-init/Cargo.toml does not exist yet");
        }
        // The toolchain is new enough for the workspace's rust-version.
        let workspace_manifest = read(&workspace().join("Cargo.toml"));
        let msrv = workspace_manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("rust-version"))
            .map(|rest| rest.trim_start_matches([' ', '=']).trim().trim_matches('"').to_owned())
            .expect("rust-version in Cargo.toml");
        let image =
            builder.from.replace("${RUST_VERSION}", file.global_args.get("RUST_VERSION").map_or("", String::as_str));
        let version = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
        let tag = image.split(':').nth(1).unwrap_or("").split('-').next().unwrap_or("").to_owned();
        failures.check(image.starts_with("rust:") && !tag.is_empty() && version(&tag) >= version(&msrv), || {
            format!("{label}: builder image {image} is older than the workspace's rust-version {msrv}")
        });
    }
    // The final images: one binary each, the right user, no fixed platform.
    for stage in [sidecar, init] {
        failures.check(stage.platform.is_none(), || {
            format!("stage {}: must take the target platform, has --platform", stage.name)
        });
        let sources: Vec<String> = stage.copies().into_iter().map(|(src, _)| src).collect();
        failures.check(sources.iter().all(|s| !s.contains("x86_64") && !s.contains("amd64")), || {
            format!("stage {}: copies an x86-specific path: {sources:?}", stage.name)
        });
    }
    failures.check(sidecar.copied().iter().all(|p| basename(p) != "edgeplane-init"), || {
        "the sidecar image ships edgeplane-init".into()
    });
    failures
        .check(init.copied().iter().all(|p| basename(p) != "edgeplane"), || "the init image ships edgeplane".into());
    failures.check(sidecar.all("USER").last().is_some_and(|u| u.split(':').next() == Some("1500")), || {
        "the sidecar stage must end with USER 1500".into()
    });
    failures.check(
        sidecar.exec_form("ENTRYPOINT").is_some_and(|e| e.first().is_some_and(|p| basename(p) == "edgeplane")),
        || "the sidecar's ENTRYPOINT must be edgeplane".into(),
    );
    failures.check(
        init.exec_form("ENTRYPOINT").is_some_and(|e| e.first().is_some_and(|p| basename(p) == "edgeplane-init")),
        || "the init image's ENTRYPOINT must be edgeplane-init".into(),
    );
    let installs: String = init
        .all("RUN")
        .filter(|r| r.contains("apt-get install") || r.contains("apk add"))
        .collect::<Vec<_>>()
        .join(" ");
    for package in ["iptables", "nftables"] {
        failures.check(installs.split_whitespace().any(|w| w.trim_end_matches([';', '&', '|']) == package), || {
            format!("the init stage does not install {package}")
        });
    }
    failures.check(file.text.contains("linux/amd64,linux/arm64"), || {
        "the Dockerfile should show the multi-platform buildx command".into()
    });
    failures.check(!file.text.contains("--platform=linux/amd64"), || "the Dockerfile pins linux/amd64".into());
    failures.finish("Dockerfile");
}

/// osm-edge's injector starts the sidecar as `pipy …`: the sidecar image
/// has a `pipy` on its PATH, written by the build stage, that runs edgeplane
/// with the same arguments. The script the Dockerfile writes is run here.
#[test]
fn the_sidecar_image_answers_to_pipy() {
    let file = dockerfile();
    let sidecar = file.stage("sidecar");
    assert!(
        sidecar.copies().iter().any(|(src, dst)| src == "/out/pipy" && dst == "/usr/local/bin/pipy"),
        "the sidecar stage does not COPY /out/pipy to /usr/local/bin/pipy: {:?}",
        sidecar.copies()
    );
    let build = file
        .stages
        .iter()
        .flat_map(|s| s.all("RUN"))
        .find(|r| r.contains("/out/pipy"))
        .expect("a RUN writes /out/pipy");
    let printf =
        build.split("; ").find(|step| step.trim_start().starts_with("printf")).expect("printf writes the script");
    // The step writes /out/pipy; here it writes into a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("pipy");
    let command = printf.trim().replace("/out/pipy", &script_path.display().to_string());
    let status = Command::new("sh").arg("-c").arg(&command).status().unwrap();
    assert!(status.success(), "{command}");
    let script = std::fs::read_to_string(&script_path).unwrap();
    assert_eq!(script, "#!/bin/sh\nexec /usr/local/bin/edgeplane \"$@\"\n");
    // With the binary where this test has it: arguments pass through.
    let local = dir.path().join("pipy-local");
    std::fs::write(&local, script.replace("/usr/local/bin/edgeplane", &edgeplane().display().to_string())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&local, &["--version".to_owned()], &[]);
    assert!(
        out.code == Some(0) && out.stdout.starts_with("edgeplane "),
        "{:?} {} {}",
        out.code,
        out.stdout,
        out.stderr
    );
    let out = run(&local, &["--admin-port=6060".to_owned()], &[]);
    assert_ne!(out.code, Some(0), "the Pipy flags reach edgeplane, which wants a repo URL with them: {}", out.stderr);
}
