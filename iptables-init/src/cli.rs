//! Command line (every flag also from an `EDGEPLANE_INIT_*` variable) and
//! its resolution into a checked [`Config`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};

use crate::error::{Error, Result, EXIT_CODES_HELP};
use crate::values::{
    parse_chain_prefix, parse_cidr, parse_iface, parse_ip, parse_mark, parse_port, parse_port_spec, parse_socket_addr,
    ChainPrefix, Cidr, Family, Iface, Mark, PortSpec,
};

/// List items may be empty (`80,,443`, a trailing comma, or a variable
/// set to ""): Kubernetes manifests often template an empty value, and
/// that should mean "none", not a usage error.
fn listed<T>(s: &str, parse: fn(&str) -> std::result::Result<T, String>) -> std::result::Result<Option<T>, String> {
    if s.trim().is_empty() {
        Ok(None)
    } else {
        parse(s).map(Some)
    }
}

fn listed_port_spec(s: &str) -> std::result::Result<Option<PortSpec>, String> {
    listed(s, parse_port_spec)
}

fn listed_cidr(s: &str) -> std::result::Result<Option<Cidr>, String> {
    listed(s, parse_cidr)
}

fn listed_iface(s: &str) -> std::result::Result<Option<Iface>, String> {
    listed(s, parse_iface)
}

fn listed_ip(s: &str) -> std::result::Result<Option<IpAddr>, String> {
    listed(s, parse_ip)
}

/// How the sidecar reaches local services (osm-edge's `localProxyMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LocalProxyMode {
    /// The sidecar talks to the app on 127.0.0.1 (osm-edge's default).
    #[default]
    #[value(alias = "Localhost")]
    Localhost,
    /// The sidecar's connections to 127.0.0.1 are DNATed to the pod IP.
    #[value(alias = "PodIP", alias = "podip")]
    PodIp,
}

/// Whether to install IPv6 rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Ipv6Mode {
    /// On when the namespace has a global IPv6 address (read inside --netns).
    #[default]
    Auto,
    /// IPv4 and IPv6 rules.
    On,
    /// IPv4 rules only.
    Off,
}

/// Which program applies the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum BackendChoice {
    /// Pick the iptables variant that already has rules, else
    /// iptables-restore, else nft.
    #[default]
    Auto,
    /// `iptables-restore` / `ip6tables-restore` as installed.
    Iptables,
    /// `iptables-legacy-restore` (x_tables in the kernel).
    IptablesLegacy,
    /// `iptables-nft-restore` (iptables syntax on nf_tables).
    IptablesNft,
    /// Native nftables via `nft -f`.
    Nft,
}

/// edgeplane-init: installs the transparent-interception rules for an
/// edgeplane sidecar (osm-edge/FSM compatible), with iptables or nftables.
#[derive(Debug, Parser)]
#[command(name = "edgeplane-init", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// UID of the proxy process; its traffic is not intercepted.
    #[arg(long, env = "EDGEPLANE_INIT_PROXY_UID", default_value_t = 1500, value_name = "UID")]
    pub proxy_uid: u32,

    /// GID of the proxy; when given, traffic of that GID is exempt too.
    #[arg(long, env = "EDGEPLANE_INIT_PROXY_GID", value_name = "GID")]
    pub proxy_gid: Option<u32>,

    /// Port of the proxy's outbound listener.
    #[arg(long, env = "EDGEPLANE_INIT_OUTBOUND_PORT", default_value = "15001", value_parser = parse_port, value_name = "PORT")]
    pub outbound_port: u16,

    /// Port of the proxy's inbound listener.
    #[arg(long, env = "EDGEPLANE_INIT_INBOUND_PORT", default_value = "15003", value_parser = parse_port, value_name = "PORT")]
    pub inbound_port: u16,

    /// Extra inbound ports (or ranges a-b) left alone, e.g. admin or probe
    /// ports. 15010 and 15901-15904 are always left alone, as in osm-edge.
    #[arg(long, env = "EDGEPLANE_INIT_INBOUND_EXCLUDE_PORTS", value_delimiter = ',', value_parser = listed_port_spec, value_name = "PORTS")]
    pub inbound_exclude_ports: Vec<Option<PortSpec>>,

    /// Outbound destination ports (or ranges a-b) not redirected.
    #[arg(long, env = "EDGEPLANE_INIT_OUTBOUND_EXCLUDE_PORTS", value_delimiter = ',', value_parser = listed_port_spec, value_name = "PORTS")]
    pub outbound_exclude_ports: Vec<Option<PortSpec>>,

    /// Outbound destination CIDRs not redirected (IPv4 and IPv6 mixed; each
    /// goes to its own family's rules).
    #[arg(long, env = "EDGEPLANE_INIT_OUTBOUND_EXCLUDE_CIDRS", value_delimiter = ',', value_parser = listed_cidr, value_name = "CIDRS")]
    pub outbound_exclude_cidrs: Vec<Option<Cidr>>,

    /// When non-empty, only these outbound destination CIDRs are redirected.
    /// A family with none of them listed gets nothing redirected.
    #[arg(long, env = "EDGEPLANE_INIT_OUTBOUND_INCLUDE_CIDRS", value_delimiter = ',', value_parser = listed_cidr, value_name = "CIDRS")]
    pub outbound_include_cidrs: Vec<Option<Cidr>>,

    /// Interfaces whose traffic (in and out) is left alone; `eth+` matches
    /// every name starting with `eth`.
    #[arg(long, env = "EDGEPLANE_INIT_EXCLUDE_INTERFACES", value_delimiter = ',', value_parser = listed_iface, value_name = "IFACES")]
    pub exclude_interfaces: Vec<Option<Iface>>,

    /// DNAT UDP DNS queries to --dns-server:53 to this ADDR:PORT (osm-edge's
    /// local DNS proxy: 127.0.0.153:5300). Off by default.
    #[arg(long, env = "EDGEPLANE_INIT_DNS_REDIRECT", value_parser = parse_socket_addr, value_name = "ADDR:PORT")]
    pub dns_redirect: Option<SocketAddr>,

    /// The DNS server address the pod's resolv.conf points at (used with
    /// --dns-redirect).
    #[arg(long, env = "EDGEPLANE_INIT_DNS_SERVER", default_value = "127.0.0.153", value_parser = parse_ip, value_name = "ADDR")]
    pub dns_server: IpAddr,

    /// osm-edge's localProxyMode: with pod-ip, the proxy's connections to
    /// 127.0.0.1 (or ::1) are DNATed to --pod-ip.
    #[arg(
        long,
        env = "EDGEPLANE_INIT_LOCAL_PROXY_MODE",
        value_enum,
        default_value_t,
        ignore_case = true,
        value_name = "MODE"
    )]
    pub local_proxy_mode: LocalProxyMode,

    /// The pod's IP(s) for --local-proxy-mode pod-ip (one per family,
    /// comma-separated). Also read from POD_IP, as osm-edge's init does.
    #[arg(long, env = "EDGEPLANE_INIT_POD_IP", value_delimiter = ',', value_parser = listed_ip, value_name = "IPS")]
    pub pod_ip: Vec<Option<IpAddr>>,

    /// Packets with this firewall mark (VALUE or VALUE/MASK) are not
    /// redirected, so the proxy can mark its own sockets instead of relying
    /// on its UID.
    #[arg(long, env = "EDGEPLANE_INIT_MARK", value_parser = parse_mark, value_name = "VALUE[/MASK]")]
    pub mark: Option<Mark>,

    /// Install IPv6 rules too (auto: when the namespace has a global IPv6 address).
    #[arg(long, env = "EDGEPLANE_INIT_IPV6", value_enum, default_value_t, value_name = "MODE")]
    pub ipv6: Ipv6Mode,

    /// Chain-name prefix: OSM gives osm-edge's chains, FSM gives FSM's.
    #[arg(long, env = "EDGEPLANE_INIT_CHAIN_PREFIX", default_value = "OSM", value_parser = parse_chain_prefix, value_name = "PREFIX")]
    pub chain_prefix: ChainPrefix,

    /// Which program applies the rules.
    #[arg(long, env = "EDGEPLANE_INIT_BACKEND", value_enum, default_value_t, value_name = "BACKEND")]
    pub backend: BackendChoice,

    /// Enter this network namespace (e.g. /var/run/netns/NAME) first.
    #[arg(long, env = "EDGEPLANE_INIT_NETNS", value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// Print what would be applied and change nothing.
    #[arg(long, env = "EDGEPLANE_INIT_DRY_RUN", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub dry_run: bool,

    /// Remove everything edgeplane-init added (idempotent).
    #[arg(long, env = "EDGEPLANE_INIT_CLEANUP", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub cleanup: bool,
}

impl Cli {
    /// Parses `argv` like [`Parser::try_parse_from`] but ignores the
    /// `EDGEPLANE_INIT_*` variables, so tests and [`Config::default`] do not
    /// depend on the caller's environment.
    pub fn try_parse_ignoring_env<I, T>(argv: I) -> std::result::Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cmd = <Cli as clap::CommandFactory>::command().mut_args(|a| a.env(None::<&str>));
        let matches = cmd.try_get_matches_from(argv)?;
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
    }
}

/// DNS capture: queries to `server:53` go to `redirect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dns {
    pub server: IpAddr,
    pub redirect: SocketAddr,
}

/// The checked configuration the rule builder works from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub inbound_exclude_ports: Vec<PortSpec>,
    pub outbound_exclude_ports: Vec<PortSpec>,
    pub outbound_exclude_cidrs: Vec<Cidr>,
    pub outbound_include_cidrs: Vec<Cidr>,
    pub exclude_interfaces: Vec<Iface>,
    pub dns: Option<Dns>,
    /// Pod IPs, at most one per family; empty unless the mode is pod-ip.
    pub pod_ips: Vec<IpAddr>,
    pub local_proxy_mode: LocalProxyMode,
    pub mark: Option<Mark>,
    pub ipv6: Ipv6Mode,
    pub chain_prefix: ChainPrefix,
    pub backend: BackendChoice,
    pub netns: Option<PathBuf>,
    pub dry_run: bool,
    pub cleanup: bool,
}

impl Default for Config {
    /// osm-edge's defaults (no exclusions, localhost mode, no DNS).
    fn default() -> Self {
        let cli = Cli::try_parse_ignoring_env(["edgeplane-init"]).expect("no arguments always parse");
        Config::from_cli(cli, None).expect("the defaults are valid")
    }
}

impl Config {
    /// Checks what clap cannot check one value at a time. `pod_ip_env` is
    /// the `POD_IP` variable, used when `--pod-ip` is not given.
    pub fn from_cli(cli: Cli, pod_ip_env: Option<&str>) -> Result<Config> {
        let dns = match cli.dns_redirect {
            None => None,
            Some(redirect) => {
                // DNAT cannot change the address family, so the server and
                // the target must be of the same one.
                if Family::of(&cli.dns_server) != Family::of(&redirect.ip()) {
                    return Err(Error::usage(
                        "--dns-redirect",
                        format!(
                            "{redirect} is {} but --dns-server {} is {}; DNAT cannot change the address family",
                            Family::of(&redirect.ip()).name(),
                            cli.dns_server,
                            Family::of(&cli.dns_server).name()
                        ),
                    ));
                }
                Some(Dns { server: cli.dns_server, redirect })
            }
        };

        let mut pod_ips: Vec<IpAddr> = cli.pod_ip.into_iter().flatten().collect();
        if pod_ips.is_empty() {
            if let Some(env) = pod_ip_env.map(str::trim).filter(|s| !s.is_empty()) {
                for part in env.split(',').filter(|p| !p.trim().is_empty()) {
                    pod_ips.push(parse_ip(part).map_err(|e| Error::usage("POD_IP", e))?);
                }
            }
        }
        if cli.local_proxy_mode == LocalProxyMode::PodIp {
            if pod_ips.is_empty() {
                return Err(Error::usage(
                    "--pod-ip",
                    "--local-proxy-mode pod-ip needs the pod's IP (--pod-ip, EDGEPLANE_INIT_POD_IP or POD_IP)",
                ));
            }
            for fam in [Family::V4, Family::V6] {
                if pod_ips.iter().filter(|ip| Family::of(ip) == fam).count() > 1 {
                    return Err(Error::usage("--pod-ip", format!("more than one {} address given", fam.name())));
                }
            }
        } else {
            // Only the pod-ip mode uses them; keeping them would make two
            // configs that render the same rules compare unequal.
            pod_ips.clear();
        }

        if cli.netns.as_deref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(Error::usage("--netns", "empty path"));
        }

        Ok(Config {
            proxy_uid: cli.proxy_uid,
            proxy_gid: cli.proxy_gid,
            outbound_port: cli.outbound_port,
            inbound_port: cli.inbound_port,
            inbound_exclude_ports: cli.inbound_exclude_ports.into_iter().flatten().collect(),
            outbound_exclude_ports: cli.outbound_exclude_ports.into_iter().flatten().collect(),
            outbound_exclude_cidrs: cli.outbound_exclude_cidrs.into_iter().flatten().collect(),
            outbound_include_cidrs: cli.outbound_include_cidrs.into_iter().flatten().collect(),
            exclude_interfaces: cli.exclude_interfaces.into_iter().flatten().collect(),
            dns,
            pod_ips,
            local_proxy_mode: cli.local_proxy_mode,
            mark: cli.mark,
            ipv6: cli.ipv6,
            chain_prefix: cli.chain_prefix,
            backend: cli.backend,
            netns: cli.netns,
            dry_run: cli.dry_run,
            cleanup: cli.cleanup,
        })
    }

    /// Values given for a family that gets no rules, for a warning: with
    /// IPv6 off, an IPv6 CIDR is silently useless otherwise.
    pub fn unused_for(&self, families: &[Family]) -> Vec<String> {
        let mut out = Vec::new();
        let off = |f: Family| !families.contains(&f);
        for c in self.outbound_exclude_cidrs.iter().filter(|c| off(c.family())) {
            out.push(format!("--outbound-exclude-cidrs {c}"));
        }
        for c in self.outbound_include_cidrs.iter().filter(|c| off(c.family())) {
            out.push(format!("--outbound-include-cidrs {c}"));
        }
        for ip in self.pod_ips.iter().filter(|ip| off(Family::of(ip))) {
            out.push(format!("--pod-ip {ip}"));
        }
        if let Some(dns) = self.dns.filter(|d| off(Family::of(&d.server))) {
            out.push(format!("--dns-redirect {}", dns.redirect));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_ignoring_env(std::iter::once("edgeplane-init").chain(args.iter().copied()))
    }

    fn config(args: &[&str]) -> Result<Config> {
        Config::from_cli(parse(args).expect("parses"), None)
    }

    #[test]
    fn defaults_are_osm_edge() {
        let c = Config::default();
        assert_eq!((c.proxy_uid, c.outbound_port, c.inbound_port), (1500, 15001, 15003));
        assert_eq!(c.chain_prefix.as_str(), "OSM");
        assert!(c.dns.is_none() && c.pod_ips.is_empty() && c.mark.is_none() && c.proxy_gid.is_none());
        assert_eq!(c.ipv6, Ipv6Mode::Auto);
        assert_eq!(c.backend, BackendChoice::Auto);
    }

    #[test]
    fn lists_and_ranges() {
        let c = config(&[
            "--inbound-exclude-ports",
            "80,8000-8080",
            "--inbound-exclude-ports=9",
            "--outbound-exclude-cidrs",
            "10.0.0.0/8, fd00::/8",
        ])
        .unwrap();
        assert_eq!(c.inbound_exclude_ports, vec![PortSpec::One(80), PortSpec::Range(8000, 8080), PortSpec::One(9)]);
        assert_eq!(c.outbound_exclude_cidrs.len(), 2);
    }

    #[test]
    fn environment_is_ignored_when_asked() {
        // try_parse_ignoring_env must not see variables; the real parser
        // does (checked through clap's own metadata, without touching the
        // process environment, which other tests share).
        let cmd = <Cli as clap::CommandFactory>::command();
        let uid = cmd.get_arguments().find(|a| a.get_id() == "proxy_uid").unwrap();
        assert_eq!(uid.get_env(), Some(std::ffi::OsStr::new("EDGEPLANE_INIT_PROXY_UID")));
        let every_flag_has_env = cmd
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .all(|a| a.get_env().is_some_and(|e| e.to_string_lossy().starts_with("EDGEPLANE_INIT_")));
        assert!(every_flag_has_env);
    }

    #[test]
    fn empty_list_items_mean_none() {
        let c = config(&["--outbound-exclude-ports", "", "--outbound-exclude-cidrs", "10.0.0.0/8,,", "--pod-ip", ""])
            .unwrap();
        assert!(c.outbound_exclude_ports.is_empty());
        assert_eq!(c.outbound_exclude_cidrs.len(), 1);
    }

    #[test]
    fn bad_values_name_the_flag_and_exit_2() {
        for (args, flag) in [
            (&["--inbound-exclude-ports", "80,x"][..], "--inbound-exclude-ports"),
            (&["--outbound-exclude-ports", "90-80"][..], "--outbound-exclude-ports"),
            (&["--outbound-exclude-cidrs", "10.0.0.0/40"][..], "--outbound-exclude-cidrs"),
            (&["--outbound-include-cidrs", "nope"][..], "--outbound-include-cidrs"),
            (&["--exclude-interfaces", "bad name"][..], "--exclude-interfaces"),
            (&["--outbound-port", "0"][..], "--outbound-port"),
            (&["--proxy-uid=-1"][..], "--proxy-uid"),
            (&["--proxy-gid", "x"][..], "--proxy-gid"),
            (&["--pod-ip", "10.0.0.300"][..], "--pod-ip"),
            (&["--dns-server", "localhost"][..], "--dns-server"),
            (&["--local-proxy-mode", "tproxy"][..], "--local-proxy-mode"),
            (&["--mark", "0"][..], "--mark"),
            (&["--chain-prefix", "TOO_LONG_PREFIX"][..], "--chain-prefix"),
            (&["--dns-redirect", "127.0.0.153"][..], "--dns-redirect"),
            (&["--backend", "pf"][..], "--backend"),
            (&["--ipv6", "maybe"][..], "--ipv6"),
        ] {
            let err = parse(args).expect_err("must be rejected");
            assert_eq!(err.exit_code(), 2, "{args:?}");
            let text = err.to_string();
            assert!(text.contains(flag), "{args:?}: {text}");
        }
    }

    #[test]
    fn cross_checks_exit_2() {
        let e = config(&["--local-proxy-mode", "pod-ip"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--pod-ip"), "{e}");
        let e = config(&["--dns-redirect", "[::1]:5300"]).unwrap_err();
        assert!(e.to_string().contains("--dns-redirect"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = config(&["--local-proxy-mode", "pod-ip", "--pod-ip", "10.0.0.1,10.0.0.2"]).unwrap_err();
        assert!(e.to_string().contains("more than one IPv4"), "{e}");
    }

    #[test]
    fn pod_ip_from_env_and_osm_spelling() {
        let c = Config::from_cli(parse(&["--local-proxy-mode", "PodIP"]).unwrap(), Some("10.1.2.3")).unwrap();
        assert_eq!(c.pod_ips, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        let e = Config::from_cli(parse(&["--local-proxy-mode", "pod-ip"]).unwrap(), Some("bogus")).unwrap_err();
        assert!(e.to_string().contains("POD_IP"), "{e}");
        // The flag wins over the variable.
        let c = Config::from_cli(
            parse(&["--local-proxy-mode", "pod-ip", "--pod-ip", "fd00::2"]).unwrap(),
            Some("10.1.2.3"),
        )
        .unwrap();
        assert_eq!(c.pod_ips, vec!["fd00::2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn unused_values_are_reported() {
        let c = config(&["--outbound-exclude-cidrs", "10.0.0.0/8,fd00::/8"]).unwrap();
        assert_eq!(c.unused_for(&[Family::V4]), vec!["--outbound-exclude-cidrs fd00::/8".to_string()]);
        assert!(c.unused_for(&[Family::V4, Family::V6]).is_empty());
    }
}
