//! Golden tests of the rendered rules: for the defaults, every option
//! alone and all of them together, IPv4 and IPv6, iptables and nft.
//!
//! The files in `tests/golden/` are the `--dry-run` output (with no
//! earlier rules installed). `UPDATE_GOLDEN=1 cargo test -p iptables-init
//! --test golden` rewrites them; review the diff before committing.

use std::collections::BTreeSet;
use std::path::PathBuf;

use edgeplane_init::backend::{Backend, Variant};
use edgeplane_init::cli::Ipv6Mode;
use edgeplane_init::iptables::NatState;
use edgeplane_init::{display_steps, families, plan_apply, Cli, Config};

/// osm-edge's exact `iptables-restore` input with no exclusions (the
/// reference doc, osm-edge-sidecar-contract.md section 3).
const OSM_EDGE_DEFAULT: &str = "\
# OSM sidecar interception rules
*nat
:OSM_PROXY_INBOUND - [0:0]
:OSM_PROXY_IN_REDIRECT - [0:0]
:OSM_PROXY_OUTBOUND - [0:0]
:OSM_PROXY_OUT_REDIRECT - [0:0]
-A OSM_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port 15003
-A PREROUTING -p tcp -j OSM_PROXY_INBOUND
-A OSM_PROXY_INBOUND -p tcp --dport 15010 -j RETURN
-A OSM_PROXY_INBOUND -p tcp --dport 15901 -j RETURN
-A OSM_PROXY_INBOUND -p tcp --dport 15902 -j RETURN
-A OSM_PROXY_INBOUND -p tcp --dport 15903 -j RETURN
-A OSM_PROXY_INBOUND -p tcp --dport 15904 -j RETURN
-A OSM_PROXY_INBOUND -p tcp -j OSM_PROXY_IN_REDIRECT
-A OSM_PROXY_OUT_REDIRECT -p tcp -j REDIRECT --to-port 15001
-A OSM_PROXY_OUT_REDIRECT -p tcp --dport 15000 -j ACCEPT
-A OUTPUT -p tcp -j OSM_PROXY_OUTBOUND
-A OSM_PROXY_OUTBOUND -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1500 -j OSM_PROXY_IN_REDIRECT
-A OSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner 1500 -j RETURN
-A OSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN
-A OSM_PROXY_OUTBOUND -d 127.0.0.1/32 -j RETURN
-A OSM_PROXY_OUTBOUND -j OSM_PROXY_OUT_REDIRECT
COMMIT
";

/// Every conditional rule of osm-edge's generator, in its order and form
/// (reference doc section 3, items 1-8), for these flags. The only
/// difference from osm-edge: the two DNATs in OUTPUT carry our marker
/// comment, and `$POD_IP` is expanded by us rather than by a shell.
const OSM_CONDITIONAL_ARGS: &[&str] = &[
    "--exclude-interfaces",
    "eth1",
    "--inbound-exclude-ports",
    "8080,9090",
    "--dns-redirect",
    "127.0.0.153:5300",
    "--local-proxy-mode",
    "pod-ip",
    "--pod-ip",
    "10.1.2.3",
    "--outbound-exclude-cidrs",
    "169.254.169.254/32",
    "--outbound-exclude-ports",
    "25,3306",
    "--outbound-include-cidrs",
    "10.0.0.0/8",
    "--ipv6",
    "off",
];
const OSM_CONDITIONAL: &str = "\
# OSM sidecar interception rules
*nat
:OSM_PROXY_INBOUND - [0:0]
:OSM_PROXY_IN_REDIRECT - [0:0]
:OSM_PROXY_OUTBOUND - [0:0]
:OSM_PROXY_OUT_REDIRECT - [0:0]
-A OSM_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port 15003
-A PREROUTING -p tcp -j OSM_PROXY_INBOUND
-A OSM_PROXY_INBOUND -p tcp --dport 15010 -j RETURN
-A OSM_PROXY_INBOUND -p tcp --dport 15901 -j RETURN
-A OSM_PROXY_INBOUND -p tcp --dport 15902 -j RETURN
-A OSM_PROXY_INBOUND -p tcp --dport 15903 -j RETURN
-A OSM_PROXY_INBOUND -p tcp --dport 15904 -j RETURN
-A OSM_PROXY_INBOUND -p tcp -j OSM_PROXY_IN_REDIRECT
-I OSM_PROXY_INBOUND -i eth1 -j RETURN
-I OSM_PROXY_INBOUND -p tcp --match multiport --dports 8080,9090 -j RETURN
-A OSM_PROXY_OUT_REDIRECT -p tcp -j REDIRECT --to-port 15001
-A OSM_PROXY_OUT_REDIRECT -p tcp --dport 15000 -j ACCEPT
-A OUTPUT -p tcp -j OSM_PROXY_OUTBOUND
-A OSM_PROXY_OUTBOUND -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1500 -j OSM_PROXY_IN_REDIRECT
-A OSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner 1500 -j RETURN
-A OSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN
-A OSM_PROXY_OUTBOUND -d 127.0.0.1/32 -j RETURN
-A OUTPUT -p udp -d 127.0.0.153 --dport 53 -m comment --comment \"edgeplane-init\" -j DNAT --to-destination 127.0.0.153:5300
-I OUTPUT -p tcp -o lo -d 127.0.0.1/32 -m owner --uid-owner 1500 -m comment --comment \"edgeplane-init\" -j DNAT --to-destination 10.1.2.3
-A OSM_PROXY_OUTBOUND -o eth1 -j RETURN
-A OSM_PROXY_OUTBOUND -d 169.254.169.254/32 -j RETURN
-A OSM_PROXY_OUTBOUND -p tcp --match multiport --dports 25,3306 -j RETURN
-A OSM_PROXY_OUTBOUND -d 10.0.0.0/8 -j OSM_PROXY_OUT_REDIRECT
-A OSM_PROXY_OUTBOUND -j RETURN
COMMIT
";

/// The golden cases: a name and the flags. `--ipv6 off` is added unless
/// the case sets `--ipv6`, so the output does not depend on this host.
const CASES: &[(&str, &[&str])] = &[
    ("default", &[]),
    ("proxy-uid", &["--proxy-uid", "1337"]),
    ("proxy-gid", &["--proxy-gid", "1501"]),
    ("outbound-port", &["--outbound-port", "15101"]),
    ("inbound-port", &["--inbound-port", "15103"]),
    ("inbound-exclude-ports", &["--inbound-exclude-ports", "15000,8000-8010"]),
    (
        "inbound-exclude-ports-many",
        &["--inbound-exclude-ports", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20-30"],
    ),
    ("outbound-exclude-ports", &["--outbound-exclude-ports", "25,3306-3310"]),
    ("outbound-exclude-cidrs", &["--outbound-exclude-cidrs", "169.254.169.254/32,10.96.0.0/12"]),
    ("outbound-include-cidrs", &["--outbound-include-cidrs", "10.0.0.0/8,192.168.0.0/16"]),
    ("exclude-interfaces", &["--exclude-interfaces", "eth1,veth+"]),
    ("dns-redirect", &["--dns-redirect", "127.0.0.153:5300"]),
    ("dns-server", &["--dns-server", "169.254.20.10", "--dns-redirect", "127.0.0.1:5300"]),
    ("local-proxy-mode-pod-ip", &["--local-proxy-mode", "pod-ip", "--pod-ip", "10.1.2.3"]),
    ("mark", &["--mark", "0x10"]),
    ("mark-mask", &["--mark", "0x100/0xf00"]),
    ("chain-prefix-fsm", &["--chain-prefix", "FSM"]),
    ("ipv6", &["--ipv6", "on"]),
    (
        "ipv6-cidrs",
        &[
            "--ipv6",
            "on",
            "--outbound-exclude-cidrs",
            "169.254.169.254/32,fd00:ec2::254/128",
            "--outbound-include-cidrs",
            "10.0.0.0/8",
        ],
    ),
    ("ipv6-include-cidrs", &["--ipv6", "on", "--outbound-include-cidrs", "10.0.0.0/8,fd00::/8"]),
    ("ipv6-pod-ip", &["--ipv6", "on", "--local-proxy-mode", "pod-ip", "--pod-ip", "fd00::1:2:3"]),
    ("ipv6-dual-pod-ip", &["--ipv6", "on", "--local-proxy-mode", "pod-ip", "--pod-ip", "10.1.2.3,fd00::1:2:3"]),
    ("ipv6-dns", &["--ipv6", "on", "--dns-server", "fd00::53", "--dns-redirect", "[fd00::53]:5300"]),
    (
        "all",
        &[
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337",
            "--outbound-port",
            "15101",
            "--inbound-port",
            "15103",
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
            "--dns-redirect",
            "127.0.0.153:5300",
            "--local-proxy-mode",
            "pod-ip",
            "--pod-ip",
            "10.1.2.3,fd00::1:2:3",
            "--mark",
            "0x10/0xff",
            "--ipv6",
            "on",
            "--chain-prefix",
            "FSM",
        ],
    ),
];

fn config(args: &[&str]) -> Config {
    let mut argv = vec!["edgeplane-init"];
    argv.extend_from_slice(args);
    if !args.contains(&"--ipv6") {
        argv.extend_from_slice(&["--ipv6", "off"]);
    }
    let cli = Cli::try_parse_ignoring_env(&argv).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    Config::from_cli(cli, None).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn render(cfg: &Config, backend: Backend) -> String {
    let fams = families(cfg.ipv6 == Ipv6Mode::On);
    display_steps(&plan_apply(cfg, backend, &fams, &|_| NatState::default()))
}

/// The IPv4 restore input alone (no dry-run header).
fn v4_restore(cfg: &Config) -> String {
    let steps = plan_apply(cfg, Backend::Iptables(Variant::Plain), &families(false), &|_| NatState::default());
    steps[0].input.clone().expect("an apply step has input")
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn default_is_osm_edge_byte_for_byte() {
    assert_eq!(v4_restore(&config(&[])), OSM_EDGE_DEFAULT);
    assert_eq!(v4_restore(&Config::default()), OSM_EDGE_DEFAULT, "the built-in defaults too");
}

#[test]
fn conditional_rules_in_osm_edge_order_and_form() {
    assert_eq!(v4_restore(&config(OSM_CONDITIONAL_ARGS)), OSM_CONDITIONAL);
}

#[test]
fn fsm_prefix_only_renames() {
    let fsm = v4_restore(&config(&["--chain-prefix", "FSM"]));
    assert_eq!(fsm, OSM_EDGE_DEFAULT.replace("OSM_", "FSM_").replace("# OSM ", "# FSM "));
}

#[test]
fn golden_files() {
    let dir = golden_dir();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut expected_files = BTreeSet::new();
    let mut mismatches = Vec::new();
    for (name, args) in CASES {
        let cfg = config(args);
        for (suffix, backend) in [("iptables", Backend::Iptables(Variant::Plain)), ("nft", Backend::Nft)] {
            let file = format!("{name}.{suffix}.txt");
            let path = dir.join(&file);
            let got = render(&cfg, backend);
            expected_files.insert(file.clone());
            if update {
                std::fs::create_dir_all(&dir).expect("create tests/golden");
                std::fs::write(&path, &got).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(want) if want == got => {}
                Ok(want) => mismatches.push(format!("{file} differs:\n--- expected\n{want}--- got\n{got}")),
                Err(e) => mismatches.push(format!("{file}: {e}")),
            }
        }
    }
    // A golden file no case produces is a renamed or dropped case.
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    for stray in on_disk.difference(&expected_files) {
        if update {
            std::fs::remove_file(dir.join(stray)).expect("remove a stale golden file");
        } else {
            mismatches.push(format!("{stray}: no case renders it"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} golden mismatch(es); if the change is intended, run `UPDATE_GOLDEN=1 cargo test -p iptables-init --test golden` \
         and review the diff:\n\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn default_golden_is_osm_edge_too() {
    // The golden file is what `--dry-run` prints: a header, then the input.
    // (While golden_files rewrites it, check the rendering instead.)
    let text = if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        render(&config(&[]), Backend::Iptables(Variant::Plain))
    } else {
        std::fs::read_to_string(golden_dir().join("default.iptables.txt")).expect("default golden")
    };
    let body = text.split_once('\n').map(|(_, b)| b).expect("a header line");
    assert_eq!(text.lines().next(), Some("### IPv4: iptables-restore --noflush --wait"));
    assert_eq!(body, OSM_EDGE_DEFAULT);
}

#[test]
fn added_options_do_not_change_the_osm_lines() {
    // gid, mark and IPv6 only add lines: the default IPv4 lines stay, in order.
    for args in [&["--proxy-gid", "7"][..], &["--mark", "0x10"][..], &["--ipv6", "on"][..]] {
        let got = v4_restore(&config(args));
        let mut rest = got.lines();
        for want in OSM_EDGE_DEFAULT.lines() {
            assert!(rest.any(|l| l == want), "{args:?}: `{want}` missing or out of order in\n{got}");
        }
    }
}

#[test]
fn ipv6_never_gets_ipv4_values_and_vice_versa() {
    let cfg = config(CASES.iter().find(|(n, _)| *n == "all").expect("all case").1);
    let steps = plan_apply(&cfg, Backend::Iptables(Variant::Plain), &families(true), &|_| NatState::default());
    let (v4, v6) = (steps[0].input.as_deref().unwrap(), steps[1].input.as_deref().unwrap());
    for line in v4.lines().filter(|l| l.contains(" -d ") || l.contains("--to-destination")) {
        assert!(!line.contains("::"), "IPv6 value in IPv4 rules: {line}");
    }
    for line in v6.lines().filter(|l| l.contains(" -d ") || l.contains("--to-destination")) {
        let addr_words = line.split_whitespace().skip_while(|w| *w != "-d" && *w != "--to-destination").nth(1).unwrap();
        assert!(addr_words.contains(':'), "IPv4 value in IPv6 rules: {line}");
    }
    assert!(v6.contains("-d ::1/128 -j RETURN"));
}
