//! Value types of the flags and their parsers.
//!
//! The parsers return `Result<_, String>` so clap can use them directly as
//! value parsers: clap then reports `invalid value '…' for '--flag <…>': …`
//! and exits 2, which is exactly the contract for bad values.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An address family; IPv4 and IPv6 get separate rule sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// osm-edge's `127.0.0.1/32`, or its IPv6 equivalent `::1/128`.
    pub fn loopback(self) -> Cidr {
        match self {
            Family::V4 => Cidr { addr: IpAddr::V4(Ipv4Addr::LOCALHOST), prefix: Some(32) },
            Family::V6 => Cidr { addr: IpAddr::V6(Ipv6Addr::LOCALHOST), prefix: Some(128) },
        }
    }

    /// Human name, used in headers and messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The nftables family keyword (also the address selector, `ip daddr`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The iptables command stem for this family.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// A destination port or an inclusive range `a-b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSpec {
    One(u16),
    Range(u16, u16),
}

impl PortSpec {
    /// How many of iptables' multiport slots this takes (a range takes two;
    /// the kernel's limit is 15 slots per rule).
    pub fn multiport_slots(self) -> usize {
        match self {
            PortSpec::One(_) => 1,
            PortSpec::Range(..) => 2,
        }
    }

    /// iptables multiport syntax (`a:b`).
    pub fn iptables(self) -> String {
        match self {
            PortSpec::One(p) => p.to_string(),
            PortSpec::Range(a, b) => format!("{a}:{b}"),
        }
    }

    /// nftables syntax (`a-b`).
    pub fn nft(self) -> String {
        match self {
            PortSpec::One(p) => p.to_string(),
            PortSpec::Range(a, b) => format!("{a}-{b}"),
        }
    }
}

/// Parses a TCP port (1-65535).
pub fn parse_port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not a valid port (expected 1-65535)".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("`{s}` is not a port (expected a number 1-65535)")),
    }
}

/// Parses `p` or `a-b` (inclusive, a ≤ b).
pub fn parse_port_spec(s: &str) -> Result<PortSpec, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty port in the list".into());
    }
    match s.split_once('-') {
        None => parse_port(s).map(PortSpec::One),
        Some((a, b)) => {
            let (a, b) = (parse_port(a)?, parse_port(b)?);
            if a > b {
                return Err(format!("port range `{s}` is reversed (write {b}-{a})"));
            }
            // A one-port range is just that port; keeping it as `One` keeps
            // the rendered rules short and the slot count honest.
            Ok(if a == b { PortSpec::One(a) } else { PortSpec::Range(a, b) })
        }
    }
}

/// An address with an optional prefix length. The prefix is kept optional
/// because osm-edge renders what it was given: `-d 127.0.0.153` (DNS rule)
/// but `-d 127.0.0.1/32`, and the default output must be byte-identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: Option<u8>,
}

impl Cidr {
    /// The family of the address.
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// A bare host address (rendered without a prefix).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr { addr, prefix: None }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Parses `addr` or `addr/prefix`. Host bits are cleared (as iptables
/// itself would do) so the nft rendering, which refuses host bits, gets
/// the same network.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (addr_s, prefix_s) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr =
        addr_s.parse().map_err(|_| format!("`{s}` is not an IPv4/IPv6 address or CIDR (e.g. 10.0.0.0/8, fd00::/8)"))?;
    let family = Family::of(&addr);
    let prefix = match prefix_s {
        None => None,
        Some(p) => {
            let p: u8 = p.parse().map_err(|_| format!("`{s}`: prefix length `{p}` is not a number"))?;
            if p > family.max_prefix() {
                return Err(format!(
                    "`{s}`: prefix length {p} is too long for {} (max {})",
                    family.name(),
                    family.max_prefix()
                ));
            }
            Some(p)
        }
    };
    Ok(Cidr { addr: mask(addr, prefix), prefix })
}

fn mask(addr: IpAddr, prefix: Option<u8>) -> IpAddr {
    let Some(p) = prefix else { return addr };
    match addr {
        IpAddr::V4(a) => {
            let m = if p == 0 { 0 } else { u32::MAX << (32 - u32::from(p)) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if p == 0 { 0 } else { u128::MAX << (128 - u32::from(p)) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// Parses a plain IP address (for `--pod-ip`, `--dns-server`).
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let s = s.trim();
    s.parse().map_err(|_| format!("`{s}` is not an IPv4 or IPv6 address"))
}

/// Parses `ADDR:PORT` (`[v6]:port` for IPv6).
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let sa: SocketAddr =
        s.parse().map_err(|_| format!("`{s}` is not ADDR:PORT (e.g. 127.0.0.153:5300 or [fd00::53]:5300)"))?;
    if sa.port() == 0 {
        return Err(format!("`{s}`: port 0 is not a valid port"));
    }
    Ok(sa)
}

/// A network interface name, possibly with iptables' trailing `+` wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface(String);

impl Iface {
    /// `lo`, used by the static osm-edge rules.
    pub fn lo() -> Iface {
        Iface("lo".into())
    }

    /// iptables form (`eth+` stays `eth+`).
    pub fn iptables(&self) -> &str {
        &self.0
    }

    /// nftables form: a quoted string, `+` becomes nft's `*` wildcard.
    pub fn nft(&self) -> String {
        match self.0.strip_suffix('+') {
            Some(stem) => format!("\"{stem}*\""),
            None => format!("\"{}\"", self.0),
        }
    }
}

/// Parses an interface name: 1-15 characters (the kernel's IFNAMSIZ-1) of
/// letters, digits and `_ . - :`, with an optional trailing `+` wildcard.
/// Anything else (spaces, quotes, `/`) would break one renderer or the other.
pub fn parse_iface(s: &str) -> Result<Iface, String> {
    let s = s.trim();
    let stem = s.strip_suffix('+').unwrap_or(s);
    if s.is_empty() || s.len() > 15 {
        return Err(format!("`{s}` is not an interface name (1-15 characters)"));
    }
    if stem.is_empty() && s != "+" {
        return Err(format!("`{s}` is not an interface name"));
    }
    if !stem.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':')) {
        return Err(format!("`{s}` is not an interface name (letters, digits, `_.-:` and a trailing `+` only)"));
    }
    if stem == "." || stem == ".." {
        return Err(format!("`{s}` is not an interface name"));
    }
    Ok(Iface(s.to_owned()))
}

/// A firewall mark, optionally with a mask (`VALUE[/MASK]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub value: u32,
    pub mask: Option<u32>,
}

impl Mark {
    /// iptables `-m mark --mark` argument.
    pub fn iptables(&self) -> String {
        match self.mask {
            Some(m) => format!("{:#x}/{m:#x}", self.value),
            None => format!("{:#x}", self.value),
        }
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses `VALUE` or `VALUE/MASK` (decimal or 0x-hex, 32 bits). Mark 0 is
/// refused: every unmarked packet carries it, so it would exempt everything.
pub fn parse_mark(s: &str) -> Result<Mark, String> {
    let s = s.trim();
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    };
    let value = parse_u32(v).ok_or_else(|| format!("`{s}`: `{v}` is not a 32-bit number (decimal or 0x-hex)"))?;
    let mask = match m {
        None => None,
        Some(m) => Some(parse_u32(m).ok_or_else(|| format!("`{s}`: mask `{m}` is not a 32-bit number"))?),
    };
    if value & mask.unwrap_or(u32::MAX) == 0 {
        return Err(format!("`{s}`: the mark must be non-zero (unmarked packets have mark 0)"));
    }
    if let Some(m) = mask {
        if value & !m != 0 {
            return Err(format!("`{s}`: the value has bits outside the mask"));
        }
    }
    Ok(Mark { value, mask })
}

/// The chain-name prefix (`OSM` or `FSM`), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPrefix(String);

/// The longest suffix we append; iptables chain names are at most 28
/// characters (XT_EXTENSION_MAXNAMELEN minus the NUL), so the prefix may be
/// at most 28 - 19 = 9 characters.
const LONGEST_SUFFIX: &str = "_PROXY_OUT_REDIRECT";
const MAX_CHAIN_NAME: usize = 28;

impl ChainPrefix {
    /// The prefix itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The nftables table name (`osm_proxy`): lower case, so it cannot be
    /// mistaken for an iptables-nft table (those are `nat`, `filter`, …).
    pub fn table(&self) -> String {
        format!("{}_proxy", self.0.to_ascii_lowercase())
    }
}

impl Default for ChainPrefix {
    fn default() -> Self {
        ChainPrefix("OSM".into())
    }
}

/// Parses a chain prefix: ASCII letters, digits and `_`, starting with a
/// letter, short enough that every chain name stays within 28 characters.
pub fn parse_chain_prefix(s: &str) -> Result<ChainPrefix, String> {
    let s = s.trim();
    let max = MAX_CHAIN_NAME - LONGEST_SUFFIX.len();
    if s.is_empty() || s.len() > max {
        return Err(format!(
            "`{s}` must be 1-{max} characters so that `{s}{LONGEST_SUFFIX}` fits iptables' 28-character chain names"
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`{s}` may contain only ASCII letters, digits and `_`, and must start with a letter"));
    }
    Ok(ChainPrefix(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges() {
        assert_eq!(parse_port_spec("80"), Ok(PortSpec::One(80)));
        assert_eq!(parse_port_spec(" 8000-8080 "), Ok(PortSpec::Range(8000, 8080)));
        assert_eq!(parse_port_spec("9-9"), Ok(PortSpec::One(9)));
        assert!(parse_port_spec("0").unwrap_err().contains("port 0"));
        assert!(parse_port_spec("65536").is_err());
        assert!(parse_port_spec("90-80").unwrap_err().contains("reversed"));
        assert!(parse_port_spec("a-b").is_err());
        assert!(parse_port_spec("1-").is_err());
        assert!(parse_port_spec("").is_err());
        assert_eq!(PortSpec::Range(1, 3).iptables(), "1:3");
        assert_eq!(PortSpec::Range(1, 3).nft(), "1-3");
    }

    #[test]
    fn cidrs() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(c.family(), Family::V4);
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8", "host bits are cleared");
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3", "a bare address stays bare");
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        let v6 = parse_cidr("fd00:1::5/32").unwrap();
        assert_eq!(v6.to_string(), "fd00:1::/32");
        assert_eq!(v6.family(), Family::V6);
        assert!(parse_cidr("10.0.0.0/33").unwrap_err().contains("too long"));
        assert!(parse_cidr("::/129").is_err());
        assert!(parse_cidr("10.0.0/8").is_err());
        assert!(parse_cidr("10.0.0.0/x").is_err());
        assert!(parse_cidr("").is_err());
    }

    #[test]
    fn ifaces() {
        assert_eq!(parse_iface("eth0").unwrap().nft(), "\"eth0\"");
        assert_eq!(parse_iface("veth+").unwrap().nft(), "\"veth*\"");
        assert_eq!(parse_iface("veth+").unwrap().iptables(), "veth+");
        assert!(parse_iface("").is_err());
        assert!(parse_iface("a-very-long-interface").is_err());
        assert!(parse_iface("eth 0").is_err());
        assert!(parse_iface("eth\"0").is_err());
        assert!(parse_iface("a/b").is_err());
        assert!(parse_iface("e+th").is_err());
    }

    #[test]
    fn marks() {
        assert_eq!(parse_mark("0x10"), Ok(Mark { value: 16, mask: None }));
        assert_eq!(parse_mark("16/0xff"), Ok(Mark { value: 16, mask: Some(255) }));
        assert_eq!(parse_mark("0x10/0xff").unwrap().iptables(), "0x10/0xff");
        assert!(parse_mark("0").unwrap_err().contains("non-zero"));
        assert!(parse_mark("0x100/0xff").is_err());
        assert!(parse_mark("0x1ffffffff").is_err());
        assert!(parse_mark("mark").is_err());
    }

    #[test]
    fn chain_prefixes() {
        assert_eq!(parse_chain_prefix("FSM").unwrap().table(), "fsm_proxy");
        assert!(parse_chain_prefix("ABCDEFGHI").is_ok(), "9 characters fit");
        assert!(parse_chain_prefix("ABCDEFGHIJ").unwrap_err().contains("28"));
        assert!(parse_chain_prefix("").is_err());
        assert!(parse_chain_prefix("O-SM").is_err());
        assert!(parse_chain_prefix("1OSM").is_err());
        assert!(parse_chain_prefix("O SM").is_err());
    }

    #[test]
    fn socket_addrs() {
        assert_eq!(parse_socket_addr("127.0.0.153:5300").unwrap().port(), 5300);
        assert!(parse_socket_addr("[fd00::53]:5300").is_ok());
        assert!(parse_socket_addr("127.0.0.153").is_err());
        assert!(parse_socket_addr("127.0.0.153:0").is_err());
    }
}
