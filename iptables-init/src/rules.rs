//! The interception rules as data, built in osm-edge's order.
//!
//! [`build`] follows osm-edge's `GenerateIptablesCommands`
//! (`pkg/injector/iptables.go`) statement by statement, including its use
//! of `-I` (insert at the top) for some rules, so the iptables rendering can
//! print the operations as they are and match osm-edge byte for byte. The
//! nftables rendering has no "insert" in a freshly built table, so it uses
//! [`RuleSet::chain`], which replays the operations into final order.

use std::net::{IpAddr, SocketAddr};

use crate::cli::{Config, LocalProxyMode};
use crate::values::{ChainPrefix, Cidr, Family, Iface, Mark, PortSpec};

/// osm-edge's fixed ports: Prometheus (15010), the probes (15901-15903)
/// and the TCP health check (15904); always left alone inbound.
pub const OSM_STATIC_INBOUND_EXCLUDES: [u16; 5] = [15010, 15901, 15902, 15903, 15904];
/// The sidecar admin port of osm-edge's (dead) ACCEPT rule.
pub const OSM_ADMIN_PORT: u16 = 15000;
/// The iptables comment that marks rules we put in built-in chains (other
/// than the two jumps), so re-runs and `--cleanup` can find them.
pub const MARKER: &str = "edgeplane-init";
/// The kernel's limit of ports per multiport match (a range counts twice).
const MULTIPORT_SLOTS: usize = 15;

/// A chain of the nat table: the two built-ins we hook, and our four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Chain {
    Prerouting,
    Output,
    Inbound,
    InRedirect,
    Outbound,
    OutRedirect,
}

impl Chain {
    /// Our own chains, in osm-edge's declaration order.
    pub const OURS: [Chain; 4] = [Chain::Inbound, Chain::InRedirect, Chain::Outbound, Chain::OutRedirect];

    /// The iptables name (`PREROUTING`, `OSM_PROXY_INBOUND`, …).
    pub fn name(self, prefix: &ChainPrefix) -> String {
        let p = prefix.as_str();
        match self {
            Chain::Prerouting => "PREROUTING".into(),
            Chain::Output => "OUTPUT".into(),
            Chain::Inbound => format!("{p}_PROXY_INBOUND"),
            Chain::InRedirect => format!("{p}_PROXY_IN_REDIRECT"),
            Chain::Outbound => format!("{p}_PROXY_OUTBOUND"),
            Chain::OutRedirect => format!("{p}_PROXY_OUT_REDIRECT"),
        }
    }

    /// Whether this is one of the kernel's built-in chains.
    pub fn is_builtin(self) -> bool {
        matches!(self, Chain::Prerouting | Chain::Output)
    }
}

/// `-A` or `-I` (insert at position 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Append,
    Insert,
}

/// A layer-4 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One match of a rule. The order in [`Rule::matches`] is the order they
/// are printed in, which is osm-edge's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `-p tcp`
    Proto(Proto),
    /// `-i IFACE`
    InIface(Iface),
    /// `-o IFACE`
    OutIface(Iface),
    /// `-d CIDR` or `! -d CIDR`
    Dst { cidr: Cidr, negate: bool },
    /// `--dport P` (needs a [`Match::Proto`] before it)
    DPort(u16),
    /// `--match multiport --dports …` (needs a [`Match::Proto`] before it)
    DPorts(Vec<PortSpec>),
    /// `-m owner [!] --uid-owner UID`
    Uid { uid: u32, negate: bool },
    /// `-m owner --gid-owner GID`
    Gid(u32),
    /// `-m mark --mark VALUE[/MASK]`
    Mark(Mark),
    /// `-m comment --comment "edgeplane-init"` (see [`MARKER`])
    Marker,
}

/// What a matching packet gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Return,
    Accept,
    Jump(Chain),
    /// `-j REDIRECT --to-port P`
    Redirect(u16),
    /// `-j DNAT --to-destination ADDR[:PORT]`
    Dnat(DnatTo),
}

/// A DNAT destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnatTo {
    Addr(IpAddr),
    AddrPort(SocketAddr),
}

/// One rule operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub op: Op,
    pub chain: Chain,
    pub matches: Vec<Match>,
    pub target: Target,
}

/// The rules of one family, in emission order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub family: Family,
    pub prefix: ChainPrefix,
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// The final contents of `chain` after replaying the `-A`/`-I`
    /// operations in order (an insert goes to the top, as in iptables).
    pub fn chain(&self, chain: Chain) -> Vec<&Rule> {
        let mut out: Vec<&Rule> = Vec::new();
        for r in self.rules.iter().filter(|r| r.chain == chain) {
            match r.op {
                Op::Append => out.push(r),
                Op::Insert => out.insert(0, r),
            }
        }
        out
    }
}

fn rule(op: Op, chain: Chain, matches: Vec<Match>, target: Target) -> Rule {
    Rule { op, chain, matches, target }
}

/// Splits a port list into multiport-sized groups: osm-edge puts all ports
/// in one rule, which the kernel refuses beyond 15 slots.
fn multiport_groups(ports: &[PortSpec]) -> Vec<Vec<PortSpec>> {
    let mut groups: Vec<Vec<PortSpec>> = Vec::new();
    let mut used = 0;
    for &p in ports {
        if groups.is_empty() || used + p.multiport_slots() > MULTIPORT_SLOTS {
            groups.push(Vec::new());
            used = 0;
        }
        used += p.multiport_slots();
        groups.last_mut().expect("pushed above").push(p);
    }
    groups
}

/// Builds the rules of `family` from `cfg`, in osm-edge's order.
pub fn build(cfg: &Config, family: Family) -> RuleSet {
    use Chain::*;
    use Match::*;
    use Op::*;

    let tcp = || Proto(self::Proto::Tcp);
    let uid = cfg.proxy_uid;
    let lo = family.loopback();
    let mut r = Vec::new();

    // osm-edge's inbound static rules.
    r.push(rule(Append, InRedirect, vec![tcp()], Target::Redirect(cfg.inbound_port)));
    r.push(rule(Append, Prerouting, vec![tcp()], Target::Jump(Inbound)));
    for port in OSM_STATIC_INBOUND_EXCLUDES {
        r.push(rule(Append, Inbound, vec![tcp(), DPort(port)], Target::Return));
    }
    r.push(rule(Append, Inbound, vec![tcp()], Target::Jump(InRedirect)));

    // 1. Interface exclusions, inbound (osm-edge inserts them at the top).
    for iface in &cfg.exclude_interfaces {
        r.push(rule(Insert, Inbound, vec![InIface(iface.clone())], Target::Return));
    }
    // 2. Inbound port exclusions.
    for group in multiport_groups(&cfg.inbound_exclude_ports) {
        r.push(rule(Insert, Inbound, vec![tcp(), DPorts(group)], Target::Return));
    }

    // osm-edge's outbound static rules. The ACCEPT for the admin port sits
    // after the (terminating) REDIRECT, so it never matches; it is kept
    // because osm-edge emits it and the default output must be identical.
    r.push(rule(Append, OutRedirect, vec![tcp()], Target::Redirect(cfg.outbound_port)));
    r.push(rule(Append, OutRedirect, vec![tcp(), DPort(OSM_ADMIN_PORT)], Target::Accept));
    r.push(rule(Append, Output, vec![tcp()], Target::Jump(Outbound)));
    // The proxy's own traffic to a non-loopback address over lo (the app
    // calling its own Service through the proxy) goes to the inbound side.
    r.push(rule(
        Append,
        Outbound,
        vec![OutIface(Iface::lo()), Dst { cidr: lo, negate: true }, Uid { uid, negate: false }],
        Target::Jump(InRedirect),
    ));
    r.push(rule(Append, Outbound, vec![OutIface(Iface::lo()), Uid { uid, negate: true }], Target::Return));
    r.push(rule(Append, Outbound, vec![Uid { uid, negate: false }], Target::Return));
    // Not in osm-edge: exemptions by GID and by mark, next to the UID one.
    if let Some(gid) = cfg.proxy_gid {
        r.push(rule(Append, Outbound, vec![Gid(gid)], Target::Return));
    }
    if let Some(mark) = cfg.mark {
        r.push(rule(Append, Outbound, vec![Mark(mark)], Target::Return));
    }
    r.push(rule(Append, Outbound, vec![Dst { cidr: lo, negate: false }], Target::Return));

    // 3. The local DNS proxy. The server is printed bare, as osm-edge does
    // (`-d 127.0.0.153`); the marker is our addition so we can find it.
    if let Some(dns) = cfg.dns.filter(|d| Family::of(&d.server) == family) {
        r.push(rule(
            Append,
            Output,
            vec![
                self::Match::Proto(self::Proto::Udp),
                Dst { cidr: Cidr::host(dns.server), negate: false },
                DPort(53),
                Marker,
            ],
            Target::Dnat(DnatTo::AddrPort(dns.redirect)),
        ));
    }
    // 4. localProxyMode PodIP: the proxy's connections to loopback go to
    // the pod IP instead.
    if cfg.local_proxy_mode == LocalProxyMode::PodIp {
        if let Some(&pod_ip) = cfg.pod_ips.iter().find(|ip| Family::of(ip) == family) {
            r.push(rule(
                Insert,
                Output,
                vec![tcp(), OutIface(Iface::lo()), Dst { cidr: lo, negate: false }, Uid { uid, negate: false }, Marker],
                Target::Dnat(DnatTo::Addr(pod_ip)),
            ));
        }
    }
    // 5. Interface exclusions, outbound.
    for iface in &cfg.exclude_interfaces {
        r.push(rule(Append, Outbound, vec![OutIface(iface.clone())], Target::Return));
    }
    // 6. Outbound CIDR exclusions of this family.
    for cidr in cfg.outbound_exclude_cidrs.iter().filter(|c| c.family() == family) {
        r.push(rule(Append, Outbound, vec![Dst { cidr: *cidr, negate: false }], Target::Return));
    }
    // 7. Outbound port exclusions.
    for group in multiport_groups(&cfg.outbound_exclude_ports) {
        r.push(rule(Append, Outbound, vec![tcp(), DPorts(group)], Target::Return));
    }
    // 8. Inclusions. The test is on the whole list, not this family's part:
    // "only these are redirected" with only IPv4 CIDRs listed means no IPv6
    // destination is redirected, not all of them.
    if cfg.outbound_include_cidrs.is_empty() {
        r.push(rule(Append, Outbound, vec![], Target::Jump(OutRedirect)));
    } else {
        for cidr in cfg.outbound_include_cidrs.iter().filter(|c| c.family() == family) {
            r.push(rule(Append, Outbound, vec![Dst { cidr: *cidr, negate: false }], Target::Jump(OutRedirect)));
        }
        r.push(rule(Append, Outbound, vec![], Target::Return));
    }

    RuleSet { family, prefix: cfg.chain_prefix.clone(), rules: r }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::{parse_cidr, parse_port_spec};

    fn cfg(f: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        f(&mut c);
        c
    }

    fn dsts(rs: &RuleSet) -> Vec<String> {
        rs.rules
            .iter()
            .flat_map(|r| r.matches.iter())
            .filter_map(|m| match m {
                Match::Dst { cidr, .. } => Some(cidr.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn cidrs_are_split_by_family() {
        let c = cfg(|c| {
            c.outbound_exclude_cidrs = ["10.0.0.0/8", "fd00::/8"].map(|s| parse_cidr(s).unwrap()).to_vec();
            c.outbound_include_cidrs = ["192.168.0.0/16", "2001:db8::/32"].map(|s| parse_cidr(s).unwrap()).to_vec();
        });
        let v4 = dsts(&build(&c, Family::V4));
        let v6 = dsts(&build(&c, Family::V6));
        assert!(v4.iter().all(|d| !d.contains(':')), "{v4:?}");
        assert!(v6.iter().all(|d| d.contains(':')), "{v6:?}");
        assert!(v4.contains(&"10.0.0.0/8".into()) && v4.contains(&"192.168.0.0/16".into()));
        assert!(v6.contains(&"fd00::/8".into()) && v6.contains(&"2001:db8::/32".into()));
        assert!(v6.contains(&"::1/128".into()), "osm's 127.0.0.1/32 becomes ::1/128");
    }

    #[test]
    fn include_list_of_other_family_redirects_nothing() {
        let c = cfg(|c| c.outbound_include_cidrs = vec![parse_cidr("10.0.0.0/8").unwrap()]);
        let v6 = build(&c, Family::V6);
        let last = v6.chain(Chain::Outbound).last().copied().unwrap().clone();
        assert_eq!(last.target, Target::Return);
        assert!(!v6.rules.iter().any(|r| r.chain == Chain::Outbound && r.target == Target::Jump(Chain::OutRedirect)));
    }

    #[test]
    fn pod_ip_and_dns_go_to_their_family() {
        let c = cfg(|c| {
            c.local_proxy_mode = LocalProxyMode::PodIp;
            c.pod_ips = vec!["fd00::2".parse().unwrap()];
            c.dns = Some(crate::cli::Dns {
                server: "127.0.0.153".parse().unwrap(),
                redirect: "127.0.0.153:5300".parse().unwrap(),
            });
        });
        let v4 = build(&c, Family::V4);
        let v6 = build(&c, Family::V6);
        let dnat = |rs: &RuleSet| rs.rules.iter().filter(|r| matches!(r.target, Target::Dnat(_))).count();
        assert_eq!(dnat(&v4), 1, "only the DNS rule in IPv4");
        assert_eq!(dnat(&v6), 1, "only the pod-IP rule in IPv6");
        assert_eq!(v6.chain(Chain::Output)[0].target, Target::Dnat(DnatTo::Addr("fd00::2".parse().unwrap())));
    }

    #[test]
    fn inserts_replay_to_the_top() {
        let c = cfg(|c| {
            c.exclude_interfaces = vec![crate::values::parse_iface("eth1").unwrap()];
            c.inbound_exclude_ports = vec![parse_port_spec("8080").unwrap()];
        });
        let rs = build(&c, Family::V4);
        let inbound = rs.chain(Chain::Inbound);
        assert!(matches!(inbound[0].matches[1], Match::DPorts(_)), "ports were inserted last, so they are first");
        assert!(matches!(inbound[1].matches[0], Match::InIface(_)));
        assert_eq!(inbound.last().unwrap().target, Target::Jump(Chain::InRedirect));
    }

    #[test]
    fn multiport_groups_respect_the_kernel_limit() {
        let ports: Vec<PortSpec> = (1..=20).map(PortSpec::One).collect();
        let groups = multiport_groups(&ports);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![15, 5]);
        let ranges: Vec<PortSpec> = (0..8).map(|i| PortSpec::Range(i * 10 + 1, i * 10 + 5)).collect();
        assert_eq!(multiport_groups(&ranges).iter().map(Vec::len).collect::<Vec<_>>(), vec![7, 1]);
        assert!(multiport_groups(&[]).is_empty());
    }
}
