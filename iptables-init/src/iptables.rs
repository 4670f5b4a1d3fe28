//! The iptables rendering (`iptables-restore --noflush` input) and the
//! `iptables-save` parser that finds what an earlier run left.
//!
//! Why `--noflush` plus explicit deletes: without `--noflush` a restore
//! replaces the whole nat table, erasing rules other tools (CNI plugins,
//! kube-proxy in host-network pods) put there. With it, a `:CHAIN - [0:0]`
//! line still empties our own chains, but an `-A PREROUTING …` jump would be
//! added a second time on each run; so the jumps (and our marked rules) an
//! earlier run left are deleted with `-D` in the same restore, which the
//! kernel applies as one transaction.

use std::fmt::Write as _;

use crate::rules::{Chain, DnatTo, Match, Op, Rule, RuleSet, Target, MARKER};
use crate::values::ChainPrefix;

/// The built-in chains of the nat table.
const NAT_BUILTINS: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];

fn render_rule(rule: &Rule, prefix: &ChainPrefix) -> String {
    let mut s = String::new();
    let op = match rule.op {
        Op::Append => "-A",
        Op::Insert => "-I",
    };
    let _ = write!(s, "{op} {}", rule.chain.name(prefix));
    for m in &rule.matches {
        let _ = match m {
            Match::Proto(p) => write!(s, " -p {}", p.name()),
            Match::InIface(i) => write!(s, " -i {}", i.iptables()),
            Match::OutIface(i) => write!(s, " -o {}", i.iptables()),
            Match::Dst { cidr, negate: false } => write!(s, " -d {cidr}"),
            Match::Dst { cidr, negate: true } => write!(s, " ! -d {cidr}"),
            Match::DPort(p) => write!(s, " --dport {p}"),
            Match::DPorts(ports) => {
                let list: Vec<String> = ports.iter().map(|p| p.iptables()).collect();
                write!(s, " --match multiport --dports {}", list.join(","))
            }
            Match::Uid { uid, negate: false } => write!(s, " -m owner --uid-owner {uid}"),
            Match::Uid { uid, negate: true } => write!(s, " -m owner ! --uid-owner {uid}"),
            Match::Gid(gid) => write!(s, " -m owner --gid-owner {gid}"),
            Match::Mark(mark) => write!(s, " -m mark --mark {}", mark.iptables()),
            Match::Marker => write!(s, " -m comment --comment \"{MARKER}\""),
        };
    }
    let _ = match &rule.target {
        Target::Return => write!(s, " -j RETURN"),
        Target::Accept => write!(s, " -j ACCEPT"),
        Target::Jump(c) => write!(s, " -j {}", c.name(prefix)),
        Target::Redirect(port) => write!(s, " -j REDIRECT --to-port {port}"),
        // SocketAddr prints IPv6 as `[addr]:port`, the form DNAT wants.
        Target::Dnat(DnatTo::AddrPort(sa)) => write!(s, " -j DNAT --to-destination {sa}"),
        Target::Dnat(DnatTo::Addr(ip)) => write!(s, " -j DNAT --to-destination {ip}"),
    };
    s
}

/// The restore input installing `rules`. `deletes` are the `-D` lines from
/// [`NatState::stale`]; with none, the IPv4 output for the defaults is
/// osm-edge's text byte for byte.
pub fn render_restore(rules: &RuleSet, deletes: &[String]) -> String {
    let prefix = &rules.prefix;
    let mut s = String::new();
    let _ = writeln!(s, "# {} sidecar interception rules", prefix.as_str());
    s.push_str("*nat\n");
    for chain in Chain::OURS {
        let _ = writeln!(s, ":{} - [0:0]", chain.name(prefix));
    }
    for d in deletes {
        s.push_str(d);
        s.push('\n');
    }
    for rule in &rules.rules {
        s.push_str(&render_rule(rule, prefix));
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// The restore input removing what `state` shows we installed, or `None`
/// when there is nothing (an empty restore would still take the lock).
pub fn render_cleanup(state: &NatState, prefix: &ChainPrefix) -> Option<String> {
    if state.stale.is_empty() && state.chains.is_empty() {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(s, "# {} sidecar interception rules: removal", prefix.as_str());
    s.push_str("*nat\n");
    for d in &state.stale {
        s.push_str(d);
        s.push('\n');
    }
    // Flush all before deleting any: our chains jump to each other, and a
    // chain that is still referenced cannot be deleted.
    for c in &state.chains {
        let _ = writeln!(s, "-F {c}");
    }
    for c in &state.chains {
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// What `iptables-save` shows of ours in the nat table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    /// Our chains that exist, in declaration order.
    pub chains: Vec<String>,
    /// `-D …` lines deleting rules in built-in chains that jump to our
    /// chains or carry our marker, one per occurrence (duplicates from an
    /// older tool that appended twice are all removed).
    pub stale: Vec<String>,
}

impl NatState {
    /// Whether anything of ours is installed.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.stale.is_empty()
    }
}

/// Splits a saved rule into words, honouring iptables-save's double quotes
/// (`--comment "two words"`, with `\"` inside).
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Finds our chains and our rules in built-in chains in `iptables-save`
/// output (all tables or `-t nat`; only the nat table is looked at).
pub fn parse_save(text: &str, prefix: &ChainPrefix) -> NatState {
    let ours: Vec<String> = Chain::OURS.iter().map(|c| c.name(prefix)).collect();
    let mut state = NatState::default();
    let mut in_nat = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if line == "COMMIT" {
            in_nat = false;
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if ours.iter().any(|o| o == name) && !state.chains.iter().any(|c| c == name) {
                state.chains.push(name.to_owned());
            }
            continue;
        }
        // `iptables-save -c` prefixes rules with `[packets:bytes]`.
        let rule = match line.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map(|(_, r)| r.trim_start()).unwrap_or(line),
            None => line,
        };
        let Some(rest) = rule.strip_prefix("-A ") else { continue };
        let Some((chain, spec)) = rest.trim_start().split_once(char::is_whitespace) else { continue };
        if !NAT_BUILTINS.contains(&chain) {
            continue;
        }
        let words = split_words(spec);
        let jumps_to_ours = words
            .windows(2)
            .any(|w| matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto") && ours.contains(&w[1]));
        let marked = words.windows(2).any(|w| w[0] == "--comment" && w[1] == MARKER);
        if jumps_to_ours || marked {
            // The saved spec is canonical iptables syntax, so it can be fed
            // back verbatim (quotes included) to delete exactly that rule.
            state.stale.push(format!("-D {chain} {}", spec.trim()));
        }
    }
    state
}

/// Counts rule lines (`-A …`) in `-save` output, for backend detection.
/// Table headers, chain declarations and `COMMIT` are printed even for
/// empty tables, so only rules say which variant is in use (the same test
/// as Kubernetes' iptables-wrapper and Istio).
pub fn count_rules(text: &str) -> usize {
    // `[` starts a rule printed with counters (`-save -c`).
    text.lines().filter(|l| l.trim_start().starts_with(['-', '['])).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::parse_chain_prefix;

    const SAVED: &str = r#"# Generated by iptables-save v1.8.9 on Wed Dec  2 21:04:23 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j OSM_PROXY_INBOUND
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:OSM_PROXY_INBOUND - [0:0]
:OSM_PROXY_IN_REDIRECT - [0:0]
:OSM_PROXY_OUTBOUND - [0:0]
:OSM_PROXY_OUT_REDIRECT - [0:0]
:USER_CHAIN - [0:0]
-A PREROUTING -p tcp -j OSM_PROXY_INBOUND
-A PREROUTING -p tcp -j OSM_PROXY_INBOUND
-A PREROUTING -p tcp -j USER_CHAIN
-A OUTPUT -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1500 -m comment --comment edgeplane-init -j DNAT --to-destination 10.1.1.1
-A OUTPUT -p tcp -m comment --comment "edgeplane-init is not this" -j RETURN
-A OUTPUT -p tcp -j OSM_PROXY_OUTBOUND
[3:180] -A POSTROUTING -j OSM_PROXY_OUT_REDIRECT
-A OSM_PROXY_INBOUND -p tcp -j OSM_PROXY_IN_REDIRECT
-A USER_CHAIN -j OSM_PROXY_INBOUND
COMMIT
"#;

    #[test]
    fn finds_our_rules_and_chains() {
        let st = parse_save(SAVED, &ChainPrefix::default());
        assert_eq!(
            st.chains,
            ["OSM_PROXY_INBOUND", "OSM_PROXY_IN_REDIRECT", "OSM_PROXY_OUTBOUND", "OSM_PROXY_OUT_REDIRECT"]
        );
        assert_eq!(
            st.stale,
            [
                "-D PREROUTING -p tcp -j OSM_PROXY_INBOUND",
                "-D PREROUTING -p tcp -j OSM_PROXY_INBOUND",
                "-D OUTPUT -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1500 -m comment --comment edgeplane-init -j DNAT --to-destination 10.1.1.1",
                "-D OUTPUT -p tcp -j OSM_PROXY_OUTBOUND",
                "-D POSTROUTING -j OSM_PROXY_OUT_REDIRECT",
            ]
        );
    }

    #[test]
    fn other_prefix_sees_nothing() {
        let st = parse_save(SAVED, &parse_chain_prefix("FSM").unwrap());
        assert_eq!(st.chains.len(), 0);
        // Only the marked rule, which is prefix-independent.
        assert_eq!(st.stale.len(), 1);
    }

    #[test]
    fn empty_and_foreign_output() {
        assert!(parse_save("", &ChainPrefix::default()).is_empty());
        let st = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", &ChainPrefix::default());
        assert!(st.is_empty());
        assert_eq!(render_cleanup(&st, &ChainPrefix::default()), None);
    }

    #[test]
    fn cleanup_flushes_before_deleting() {
        let st = parse_save(SAVED, &ChainPrefix::default());
        let text = render_cleanup(&st, &ChainPrefix::default()).unwrap();
        let first_x = text.find("-X ").unwrap();
        assert!(text.rfind("-F ").unwrap() < first_x);
        assert!(text.find("-D ").unwrap() < text.find("-F ").unwrap());
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn words_and_counts() {
        assert_eq!(
            split_words(r#"-m comment --comment "a \"b\" c" -j X"#),
            ["-m", "comment", "--comment", "a \"b\" c", "-j", "X"]
        );
        assert_eq!(split_words("  -p   tcp "), ["-p", "tcp"]);
        assert_eq!(split_words(r#"--comment """#), ["--comment", ""]);
        assert_eq!(count_rules(SAVED), 10);
        assert_eq!(count_rules("# x\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"), 0);
    }
}
