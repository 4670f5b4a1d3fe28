//! The nftables rendering (`nft -f` input).
//!
//! Layout: one table per family, `table ip osm_proxy` and
//! `table ip6 osm_proxy` (the prefix in lower case), rather than one `inet`
//! table, because
//! * the IPv4 and IPv6 rule sets differ (CIDRs, loopback, pod IP) exactly as
//!   the iptables ones do, so each table is one [`RuleSet`] and the two
//!   renderings stay parallel;
//! * NAT in the `inet` family needs Linux 5.2; `ip`/`ip6` NAT works on every
//!   kernel with nftables;
//! * `--ipv6 off` then simply means no `ip6` table.
//!
//! Inside, the four regular chains carry the iptables names and contents;
//! two base chains stand for the built-ins: `prerouting` (hook prerouting,
//! priority dstnat) and `output` (hook output, priority -100, iptables'
//! nat OUTPUT priority).
//!
//! Idempotency: the script starts with `add table` + `delete table`, so
//! the table is gone whether or not it existed, then declares it again; the
//! whole file is one nftables transaction, so there is no moment without
//! rules. (`destroy table` would do the same in one line but needs nft
//! 1.0.8 and Linux 6.3; Debian 12 ships nft 1.0.6.)

use std::fmt::Write as _;

use crate::rules::{Chain, DnatTo, Match, Proto, Rule, RuleSet, Target};
use crate::values::{ChainPrefix, Family};

fn render_rule(rule: &Rule, rs: &RuleSet) -> String {
    let fam = rs.family.nft();
    let proto = rule.matches.iter().find_map(|m| match m {
        Match::Proto(p) => Some(*p),
        _ => None,
    });
    let has_ports = rule.matches.iter().any(|m| matches!(m, Match::DPort(_) | Match::DPorts(_)));
    let pname = proto.unwrap_or(Proto::Tcp).name();
    let mut words: Vec<String> = Vec::new();
    for m in &rule.matches {
        match m {
            // `tcp dport …` already implies the protocol.
            Match::Proto(p) if !has_ports => words.push(format!("meta l4proto {}", p.name())),
            Match::Proto(_) => {}
            Match::InIface(i) => words.push(format!("iifname {}", i.nft())),
            Match::OutIface(i) => words.push(format!("oifname {}", i.nft())),
            Match::Dst { cidr, negate: false } => words.push(format!("{fam} daddr {cidr}")),
            Match::Dst { cidr, negate: true } => words.push(format!("{fam} daddr != {cidr}")),
            Match::DPort(p) => words.push(format!("{pname} dport {p}")),
            Match::DPorts(ports) => {
                let list: Vec<String> = ports.iter().map(|p| p.nft()).collect();
                words.push(format!("{pname} dport {{ {} }}", list.join(", ")));
            }
            // iptables' `! --uid-owner` also matches packets without a
            // socket, where nft's `meta skuid` does not match at all; such
            // packets (kernel-made resets) never open a NAT mapping, so
            // the difference does not show.
            Match::Uid { uid, negate: false } => words.push(format!("meta skuid {uid}")),
            Match::Uid { uid, negate: true } => words.push(format!("meta skuid != {uid}")),
            Match::Gid(gid) => words.push(format!("meta skgid {gid}")),
            Match::Mark(mark) => match mark.mask {
                None => words.push(format!("meta mark {:#x}", mark.value)),
                Some(mask) => words.push(format!("meta mark and {mask:#x} == {:#x}", mark.value)),
            },
            // The whole table is ours, so there is nothing to mark.
            Match::Marker => {}
        }
    }
    words.push(match &rule.target {
        Target::Return => "return".into(),
        Target::Accept => "accept".into(),
        Target::Jump(c) => format!("jump {}", c.name(&rs.prefix)),
        Target::Redirect(port) => format!("redirect to :{port}"),
        Target::Dnat(DnatTo::AddrPort(sa)) => format!("dnat {fam} to {sa}"),
        Target::Dnat(DnatTo::Addr(ip)) => format!("dnat {fam} to {ip}"),
    });
    words.join(" ")
}

fn table_header(s: &mut String, family: Family, prefix: &ChainPrefix) {
    // `add` then `delete`: removes the table whether or not it exists.
    let _ = writeln!(s, "add table {} {}", family.nft(), prefix.table());
    let _ = writeln!(s, "delete table {} {}", family.nft(), prefix.table());
}

/// The `nft -f` script installing `sets` (one per family), atomically.
pub fn render_nft(sets: &[RuleSet]) -> String {
    let mut s = String::new();
    let Some(first) = sets.first() else { return s };
    let _ = writeln!(s, "# {} sidecar interception rules (nftables)", first.prefix.as_str());
    for rs in sets {
        let prefix = &rs.prefix;
        table_header(&mut s, rs.family, prefix);
        let _ = writeln!(s, "table {} {} {{", rs.family.nft(), prefix.table());
        // Jump targets first: a chain must be declared before a rule jumps
        // to it.
        let chains = [
            (Chain::InRedirect, None),
            (Chain::OutRedirect, None),
            (Chain::Inbound, None),
            (Chain::Outbound, None),
            (Chain::Prerouting, Some("type nat hook prerouting priority dstnat; policy accept;")),
            (Chain::Output, Some("type nat hook output priority -100; policy accept;")),
        ];
        for (i, (chain, base)) in chains.into_iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            let name = match chain {
                Chain::Prerouting => "prerouting".to_owned(),
                Chain::Output => "output".to_owned(),
                c => c.name(prefix),
            };
            let _ = writeln!(s, "\tchain {name} {{");
            if let Some(base) = base {
                let _ = writeln!(s, "\t\t{base}");
            }
            for rule in rs.chain(chain) {
                let _ = writeln!(s, "\t\t{}", render_rule(rule, rs));
            }
            s.push_str("\t}\n");
        }
        s.push_str("}\n");
    }
    s
}

/// The `nft -f` script removing our tables of `families` (succeeds when
/// they do not exist).
pub fn render_nft_cleanup(families: &[Family], prefix: &ChainPrefix) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {} sidecar interception rules (nftables): removal", prefix.as_str());
    for &f in families {
        table_header(&mut s, f, prefix);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Config;
    use crate::rules::build;

    #[test]
    fn default_script_shape() {
        let rs = build(&Config::default(), Family::V4);
        let s = render_nft(&[rs]);
        assert!(s.starts_with(
            "# OSM sidecar interception rules (nftables)\nadd table ip osm_proxy\ndelete table ip osm_proxy\n"
        ));
        assert!(s.contains("\tchain OSM_PROXY_IN_REDIRECT {\n\t\tmeta l4proto tcp redirect to :15003\n\t}\n"));
        assert!(s.contains("\t\toifname \"lo\" ip daddr != 127.0.0.1/32 meta skuid 1500 jump OSM_PROXY_IN_REDIRECT\n"));
        assert!(s.contains(
            "type nat hook prerouting priority dstnat; policy accept;\n\t\tmeta l4proto tcp jump OSM_PROXY_INBOUND\n"
        ));
        assert!(s.find("chain OSM_PROXY_IN_REDIRECT").unwrap() < s.find("chain OSM_PROXY_INBOUND").unwrap());
    }

    #[test]
    fn cleanup_script() {
        let s = render_nft_cleanup(&[Family::V4, Family::V6], &ChainPrefix::default());
        assert!(s.contains("add table ip6 osm_proxy\ndelete table ip6 osm_proxy\n"));
    }
}
