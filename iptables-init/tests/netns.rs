//! Real tests: the built binary applies, re-applies and removes its rules
//! in a fresh network namespace per test, with each backend
//! (iptables-legacy, iptables-nft, nft), and the kernel's view is checked
//! with `iptables-save` / `nft list` inside the namespace.
//!
//! They need root, `ip` (iproute2) and the backend's binaries. Without
//! them each test prints `SKIPPED: <reason>` and passes, unless
//! `EDGEPLANE_REQUIRE_ROOT_TESTS=1` (set by the project's test runner),
//! where a missing prerequisite fails the test: never silently green.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_edgeplane-init");

/// Flags exercising the marked rules (DNS and pod-IP DNAT in OUTPUT), both
/// families, multiport and CIDR rules, so the kernel sees every rule form.
const RICH: &[&str] = &[
    "--ipv6",
    "on",
    "--dns-redirect",
    "127.0.0.153:5300",
    "--local-proxy-mode",
    "pod-ip",
    "--pod-ip",
    "10.1.2.3,fd00::1:2:3",
    "--inbound-exclude-ports",
    "15000,8000-8010",
    "--outbound-exclude-ports",
    "25,3306-3310",
    "--outbound-exclude-cidrs",
    "169.254.169.254/32,fd00:ec2::254/128",
    "--outbound-include-cidrs",
    "10.0.0.0/8,fd00::/8",
    "--exclude-interfaces",
    "eth1,veth+",
    "--proxy-gid",
    "1500",
    "--mark",
    "0x10/0xff",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Be {
    Legacy,
    IptNft,
    Nft,
}

impl Be {
    fn flag(self) -> &'static str {
        match self {
            Be::Legacy => "iptables-legacy",
            Be::IptNft => "iptables-nft",
            Be::Nft => "nft",
        }
    }

    fn binaries(self) -> &'static [&'static str] {
        match self {
            Be::Legacy => &[
                "iptables-legacy",
                "iptables-legacy-save",
                "iptables-legacy-restore",
                "ip6tables-legacy-save",
                "ip6tables-legacy-restore",
            ],
            Be::IptNft => &[
                "iptables-nft",
                "iptables-nft-save",
                "iptables-nft-restore",
                "ip6tables-nft-save",
                "ip6tables-nft-restore",
            ],
            Be::Nft => &["nft"],
        }
    }

    /// The iptables command stem (`iptables-legacy`); not for nft.
    fn ipt(self, v6: bool) -> String {
        let fam = if v6 { "ip6tables" } else { "iptables" };
        match self {
            Be::Legacy => format!("{fam}-legacy"),
            Be::IptNft => format!("{fam}-nft"),
            Be::Nft => unreachable!("nft has no iptables command"),
        }
    }
}

fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p)
            .any(|d| std::fs::metadata(d.join(name)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    })
}

fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Why the test cannot run here, if it cannot.
fn missing(binaries: &[&str]) -> Option<String> {
    if euid() != Some(0) {
        return Some("not running as root (network namespaces and firewall rules need it)".into());
    }
    for b in std::iter::once(&"ip").chain(binaries) {
        if !on_path(b) {
            return Some(format!("`{b}` is not installed"));
        }
    }
    None
}

/// Prints SKIPPED, or fails under EDGEPLANE_REQUIRE_ROOT_TESTS=1.
fn skip(reason: &str) {
    if std::env::var_os("EDGEPLANE_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!("EDGEPLANE_REQUIRE_ROOT_TESTS=1 but a prerequisite is missing: {reason}");
    }
    // Straight to the stderr handle: libtest captures print!/eprint! of
    // passing tests, and a skip must be visible in a plain `cargo test`.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {}: {reason}", std::thread::current().name().unwrap_or("test"));
}

/// Returns from the test (after [`skip`]) when a prerequisite is missing.
macro_rules! require {
    ($bins:expr) => {{
        let bins: &[&str] = $bins;
        if let Some(reason) = missing(bins) {
            skip(&reason);
            return;
        }
        match Netns::new() {
            Ok(ns) => ns,
            Err(reason) => {
                skip(&reason);
                return;
            }
        }
    }};
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh network namespace, deleted on drop (also when the test fails).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Result<Netns, String> {
        let name = format!("edgeplane-init-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let out =
            Command::new("ip").args(["netns", "add", &name]).output().map_err(|e| format!("ip netns add: {e}"))?;
        if !out.status.success() {
            return Err(format!("`ip netns add {name}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Netns { name })
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace.
    fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.name]).args(cmd).output().expect("run ip netns exec")
    }

    /// Runs a command inside the namespace, which must succeed.
    fn ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs edgeplane-init on this namespace with a clean environment (no
    /// stray EDGEPLANE_INIT_* or POD_IP from the caller).
    fn init(&self, args: &[&str]) -> Output {
        self.init_as(&[], args)
    }

    fn init_as(&self, prefix: &[&str], args: &[&str]) -> Output {
        let (program, pre_args) = match prefix.split_first() {
            Some((p, rest)) => (*p, rest),
            None => (BIN, &[][..]),
        };
        let mut cmd = Command::new(program);
        cmd.args(pre_args);
        if !prefix.is_empty() {
            cmd.arg(BIN);
        }
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["--netns", &self.path()])
            .args(args)
            .output()
            .expect("run edgeplane-init")
    }

    /// The kernel's view: every save (IPv4, IPv6) or the nft ruleset,
    /// without the timestamped comment lines.
    fn snapshot(&self, be: Be) -> String {
        match be {
            Be::Nft => self.ok(&["nft", "list", "ruleset"]),
            _ => format!("{}\n{}", self.save(be, false), self.save(be, true)),
        }
    }

    fn save(&self, be: Be, v6: bool) -> String {
        let text = self.ok(&[&format!("{}-save", be.ipt(v6))]);
        text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
    }

    /// An unrelated rule another tool owns, which we must never touch.
    fn add_user_rules(&self, be: Be) {
        match be {
            Be::Nft => {
                self.ok(&["nft", "add table ip user_keep; add chain ip user_keep c { type nat hook prerouting priority 50; }; add rule ip user_keep c udp dport 9999 return"]);
            }
            _ => {
                for v6 in [false, true] {
                    let ipt = be.ipt(v6);
                    // -w: the legacy lock is shared by all namespaces and
                    // the tests run in parallel.
                    self.ok(&[&ipt, "-w", "-t", "nat", "-N", "USER_KEEP"]);
                    self.ok(&[&ipt, "-w", "-t", "nat", "-A", "USER_KEEP", "-j", "RETURN"]);
                    self.ok(&[
                        &ipt,
                        "-w",
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-p",
                        "udp",
                        "--dport",
                        "9999",
                        "-j",
                        "USER_KEEP",
                    ]);
                    self.ok(&[&ipt, "-w", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-j", "RETURN"]);
                }
            }
        }
    }

    fn assert_user_rules(&self, be: Be) {
        match be {
            Be::Nft => {
                let t = self.ok(&["nft", "list", "table", "ip", "user_keep"]);
                assert!(t.contains("udp dport 9999 return"), "user table changed:\n{t}");
            }
            _ => {
                for v6 in [false, true] {
                    let s = self.save(be, v6);
                    for want in [
                        ":USER_KEEP - [0:0]",
                        "-A PREROUTING -p udp -m udp --dport 9999 -j USER_KEEP",
                        "-A OUTPUT -p udp -m udp --dport 9999 -j RETURN",
                        "-A USER_KEEP -j RETURN",
                    ] {
                        assert!(s.lines().any(|l| l == want), "user rule `{want}` gone (v6: {v6}):\n{s}");
                    }
                }
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).output();
    }
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}

fn apply_reapply_cleanup(be: Be) {
    let ns = require!(be.binaries());
    let mut args = vec!["--backend", be.flag()];
    args.extend_from_slice(RICH);
    ns.add_user_rules(be);

    let out = ns.init(&args);
    assert_exit(&out, 0, "apply");
    let first = ns.snapshot(be);
    match be {
        Be::Nft => {
            for want in [
                "table ip osm_proxy",
                "table ip6 osm_proxy",
                "meta l4proto tcp redirect to :15001",
                "meta l4proto tcp jump OSM_PROXY_INBOUND",
                "dnat to 127.0.0.153:5300",
                "dnat to fd00::1:2:3",
                "ip6 daddr ::1 return",
            ] {
                assert!(first.contains(want), "`{want}` missing:\n{first}");
            }
        }
        _ => {
            let v4 = ns.save(be, false);
            let v6 = ns.save(be, true);
            for want in [
                ":OSM_PROXY_INBOUND - [0:0]",
                ":OSM_PROXY_OUT_REDIRECT - [0:0]",
                "-A PREROUTING -p tcp -j OSM_PROXY_INBOUND",
                "-A OUTPUT -p tcp -j OSM_PROXY_OUTBOUND",
                "-A OSM_PROXY_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-A OSM_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15003",
            ] {
                assert_eq!(count(&v4, want), 1, "`{want}` in IPv4:\n{v4}");
                assert_eq!(count(&v6, want), 1, "`{want}` in IPv6:\n{v6}");
            }
            assert_eq!(v4.matches("--comment edgeplane-init").count(), 2, "DNS and pod-IP DNAT:\n{v4}");
            assert_eq!(v6.matches("--comment edgeplane-init").count(), 1, "pod-IP DNAT:\n{v6}");
            assert!(!v4.contains("fd00"), "IPv6 value in IPv4 rules:\n{v4}");
            assert!(v6.contains("-d ::1/128") && !v6.contains("127.0.0.1"), "IPv6 rules:\n{v6}");
        }
    }
    ns.assert_user_rules(be);

    // Re-applying replaces our rules: nothing is duplicated, the whole
    // view is exactly the same.
    let out = ns.init(&args);
    assert_exit(&out, 0, "re-apply");
    let second = ns.snapshot(be);
    assert_eq!(first, second, "re-applying changed the rules");
    if be != Be::Nft {
        assert_eq!(count(&second, "-A PREROUTING -p tcp -j OSM_PROXY_INBOUND"), 2, "one jump per family");
    }
    ns.assert_user_rules(be);

    let out = ns.init(&["--backend", be.flag(), "--cleanup"]);
    assert_exit(&out, 0, "cleanup");
    let after = ns.snapshot(be);
    assert!(!after.contains("OSM_PROXY") && !after.contains("osm_proxy"), "our rules remain:\n{after}");
    assert!(!after.contains("edgeplane-init"), "marked rules remain:\n{after}");
    ns.assert_user_rules(be);

    let out = ns.init(&["--backend", be.flag(), "--cleanup"]);
    assert_exit(&out, 0, "cleanup again");
    assert_eq!(ns.snapshot(be), after, "a second cleanup changed something");
}

fn dry_run_changes_nothing(be: Be) {
    let ns = require!(be.binaries());
    ns.add_user_rules(be);
    let before = ns.snapshot(be);
    let out = ns.init(&["--backend", be.flag(), "--ipv6", "on", "--dry-run"]);
    assert_exit(&out, 0, "dry run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match be {
        Be::Nft => assert!(stdout.starts_with("### IPv4+IPv6: nft -f -\n"), "{stdout}"),
        _ => {
            let header = format!("### IPv4: {}-restore --noflush --wait\n", be.ipt(false));
            assert!(stdout.starts_with(&header), "{stdout}");
            assert!(stdout.contains(&format!("### IPv6: {}-restore --noflush --wait\n", be.ipt(true))), "{stdout}");
        }
    }
    assert!(stdout.contains("OSM_PROXY_OUTBOUND"), "{stdout}");
    assert_eq!(ns.snapshot(be), before, "--dry-run changed the rules");

    // With rules installed, the dry run shows the deletes a re-run makes,
    // and a dry cleanup changes nothing either.
    assert_exit(&ns.init(&["--backend", be.flag(), "--ipv6", "on"]), 0, "apply");
    let installed = ns.snapshot(be);
    let out = ns.init(&["--backend", be.flag(), "--ipv6", "on", "--dry-run"]);
    assert_exit(&out, 0, "dry run over installed rules");
    if be != Be::Nft {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(count(&stdout, "-D PREROUTING -p tcp -j OSM_PROXY_INBOUND"), 2, "{stdout}");
    }
    let out = ns.init(&["--backend", be.flag(), "--cleanup", "--dry-run"]);
    assert_exit(&out, 0, "dry cleanup");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OSM_PROXY") || be == Be::Nft);
    assert_eq!(ns.snapshot(be), installed, "a dry cleanup changed the rules");
}

fn non_root_fails_with_exit_4(be: Be) {
    let mut bins: Vec<&str> = be.binaries().to_vec();
    bins.push("setpriv");
    let ns = require!(&bins);
    let before = ns.snapshot(be);
    let nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"];
    for args in [&["--backend", be.flag()][..], &["--backend", be.flag(), "--cleanup"][..]] {
        let out = ns.init_as(&nobody, args);
        assert_exit(&out, 4, "as uid 65534");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("CAP_NET_ADMIN") && stderr.contains("root"), "unclear message: {stderr}");
    }
    assert_eq!(ns.snapshot(be), before);
}

macro_rules! per_backend {
    ($($name:ident => $be:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn apply_reapply_cleanup() { super::apply_reapply_cleanup($be) }
            #[test]
            fn dry_run_changes_nothing() { super::dry_run_changes_nothing($be) }
            #[test]
            fn non_root_fails_with_exit_4() { super::non_root_fails_with_exit_4($be) }
        }
    )*};
}

per_backend! {
    iptables_legacy => Be::Legacy,
    iptables_nft => Be::IptNft,
    nft => Be::Nft,
}

/// `--backend auto` follows the variant that already has rules, and
/// `--ipv6 auto` follows the namespace's addresses: `::1` alone is not
/// IPv6 in use, a global (here a ULA) address is.
#[test]
fn auto_detection_follows_existing_rules() {
    let ns = require!(&[
        "iptables-legacy",
        "iptables-legacy-save",
        "iptables-nft-save",
        "ip6tables-legacy-save",
        "ip6tables-nft-save"
    ]);
    ns.ok(&["ip", "link", "set", "lo", "up"]);
    ns.ok(&["iptables-legacy", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-j", "RETURN"]);
    let out = ns.init(&["--dry-run"]);
    assert_exit(&out, 0, "auto dry run with only ::1");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("IPv6"), "::1 alone turned IPv6 on");
    ns.ok(&["ip", "addr", "add", "fd00:77::1/64", "dev", "lo", "nodad"]);
    let out = ns.init(&[]);
    assert_exit(&out, 0, "auto apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("using iptables-legacy"), "{stderr}");
    assert!(ns.save(Be::Legacy, false).contains(":OSM_PROXY_INBOUND"));
    assert!(ns.save(Be::Legacy, true).contains(":OSM_PROXY_INBOUND"), "IPv6 auto-enabled by a global address");
    assert!(!ns.save(Be::IptNft, false).contains("OSM_PROXY"));

    // Cleanup with auto looks at every installed backend.
    assert_exit(&ns.init(&["--cleanup"]), 0, "auto cleanup");
    assert!(!ns.save(Be::Legacy, false).contains("OSM_PROXY"));
    assert!(!ns.save(Be::Legacy, true).contains("OSM_PROXY"));
}

#[test]
fn ipv6_auto_is_off_without_addresses() {
    let ns = require!(&["iptables-nft-save", "ip6tables-nft-save", "iptables-nft-restore"]);
    // A fresh namespace's lo is down: no IPv6 address at all.
    assert_exit(&ns.init(&["--backend", "iptables-nft"]), 0, "apply");
    assert!(ns.save(Be::IptNft, false).contains(":OSM_PROXY_INBOUND"));
    assert!(!ns.save(Be::IptNft, true).contains("OSM_PROXY"));
}

#[test]
fn a_referenced_chain_makes_cleanup_fail_atomically_with_exit_5() {
    let ns = require!(&["iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore"]);
    assert_exit(&ns.init(&["--backend", "iptables-legacy", "--ipv6", "off"]), 0, "apply");
    // Another tool's chain jumps into ours, so ours cannot be deleted.
    ns.ok(&["iptables-legacy", "-w", "-t", "nat", "-N", "OTHER"]);
    ns.ok(&["iptables-legacy", "-w", "-t", "nat", "-A", "OTHER", "-j", "OSM_PROXY_INBOUND"]);
    let before = ns.save(Be::Legacy, false);
    let out = ns.init(&["--backend", "iptables-legacy", "--ipv6", "off", "--cleanup"]);
    assert_exit(&out, 5, "cleanup of a referenced chain");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("iptables-legacy-restore") && stderr.contains("input line"), "{stderr}");
    assert!(stderr.contains("-X OSM_PROXY_INBOUND"), "names the failing line: {stderr}");
    assert_eq!(ns.save(Be::Legacy, false), before, "a failed restore must change nothing");
}

#[test]
fn missing_binary_exits_3_and_names_it() {
    let ns = require!(&[]);
    let out = Command::new(BIN)
        .env_clear()
        .env("PATH", "/nonexistent-edgeplane-test")
        .args(["--netns", &ns.path(), "--backend", "nft"])
        .output()
        .expect("run");
    assert_exit(&out, 3, "no nft on PATH");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`nft`") && stderr.contains("nftables"), "{stderr}");
    let out = Command::new(BIN)
        .env_clear()
        .env("PATH", "/nonexistent-edgeplane-test")
        .args(["--netns", &ns.path(), "--backend", "iptables-legacy", "--ipv6", "off"])
        .output()
        .expect("run");
    assert_exit(&out, 3, "no iptables-legacy on PATH");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("iptables-legacy-save") && stderr.contains("package `iptables`"), "{stderr}");
}

#[test]
fn bad_netns_exits_6() {
    if let Some(reason) = missing(&[]) {
        skip(&reason);
        return;
    }
    for path in ["/nonexistent/netns", "/proc/self/status"] {
        let out = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["--netns", path, "--dry-run", "--backend", "nft"])
            .output()
            .expect("run");
        assert_exit(&out, 6, path);
        assert!(String::from_utf8_lossy(&out.stderr).contains(path));
    }
}

#[test]
fn usage_errors_exit_2() {
    // No root needed: the arguments are refused before anything runs.
    for args in [&["--outbound-exclude-ports", "80,99999"][..], &["--local-proxy-mode", "pod-ip"][..], &["--bogus"][..]]
    {
        let out = Command::new(BIN).env_clear().args(args).output().expect("run");
        assert_exit(&out, 2, &format!("{args:?}"));
    }
}

#[test]
fn legacy_without_net_raw_exits_4() {
    let ns = require!(&["iptables-legacy-save", "iptables-legacy-restore", "setpriv"]);
    // NET_ADMIN (and SYS_ADMIN for --netns) but no NET_RAW, which the
    // legacy variant's raw socket needs.
    let caps = ["setpriv", "--bounding-set", "-all,+net_admin,+sys_admin", "--inh-caps", "-all"];
    let before = ns.save(Be::Legacy, false);
    let out = ns.init_as(&caps, &["--backend", "iptables-legacy", "--ipv6", "off"]);
    assert_exit(&out, 4, "legacy without CAP_NET_RAW");
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_NET_RAW"));
    assert_eq!(ns.save(Be::Legacy, false), before);
    // The nft-based backends do not need it.
    let out = ns.init_as(&caps, &["--backend", "nft", "--ipv6", "off"]);
    assert_exit(&out, 0, "nft without CAP_NET_RAW");
}

/// Every golden file, fed as-is to the kernel through each backend: the
/// rendered text is not only what we expect but also what the kernel
/// accepts.
#[test]
fn golden_files_are_accepted_by_the_kernel() {
    let ns = require!(&[
        "iptables-legacy-restore",
        "ip6tables-legacy-restore",
        "iptables-nft-restore",
        "ip6tables-nft-restore",
        "nft"
    ]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("golden dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(files.len() > 10, "golden files missing in {}", dir.display());
    let feed = |cmd: &[&str], input: &str, what: &str| {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(cmd)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{what}: {cmd:?} rejected it: {}\n{input}", String::from_utf8_lossy(&out.stderr));
    };
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read golden");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Sections start with `### <families>: <program> <args>`.
        for section in text.split("### ").filter(|s| !s.is_empty()) {
            let (header, input) = section.split_once('\n').expect("header line");
            let program = header.split_whitespace().nth(1).expect("program in header");
            match program {
                "nft" => feed(&["nft", "-f", "-"], input, &name),
                p => {
                    let stem = p.strip_suffix("-restore").expect("a restore program");
                    for variant in ["legacy", "nft"] {
                        let bin = format!("{stem}-{variant}-restore");
                        feed(&[&bin, "--noflush", "--wait"], input, &name);
                    }
                }
            }
        }
    }
}
