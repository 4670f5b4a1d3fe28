//! What edgeplane-init asks of the host: capabilities, the network
//! namespace, and whether IPv6 is in use.

use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};

/// CAP_NET_ADMIN's bit number (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
/// CAP_NET_RAW's bit number: iptables-legacy talks to the kernel through a
/// raw socket, so it needs this one too (iptables-nft and nft do not).
const CAP_NET_RAW: u32 = 13;

/// Whether CAP_NET_RAW is effective (`None`: cannot tell).
pub fn has_net_raw() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status).map(|caps| caps & (1 << CAP_NET_RAW) != 0)
}

/// The exit-4 error for the legacy variant without CAP_NET_RAW.
pub fn net_raw_error(program: &str) -> Error {
    Error::Permission {
        what: format!(
            "{program} (the iptables-legacy variant) needs CAP_NET_RAW as well as CAP_NET_ADMIN; \
             in Kubernetes add both: securityContext.capabilities.add: [NET_ADMIN, NET_RAW]"
        ),
    }
}

/// The effective capability set from `/proc/self/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Fails with exit 4 unless CAP_NET_ADMIN is effective. Checked before
/// anything runs so a non-root run says what is missing instead of
/// surfacing whatever iptables prints. Where the status file cannot be read
/// (not Linux-like /proc), the backends' own errors are relied on.
pub fn check_net_admin() -> Result<()> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return Ok(()) };
    check_net_admin_in(&status)
}

/// [`check_net_admin`] on given status text (for the unit tests).
pub fn check_net_admin_in(status: &str) -> Result<()> {
    match parse_cap_eff(status) {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) == 0 => Err(Error::Permission {
            what: format!(
                "edgeplane-init needs CAP_NET_ADMIN to change the firewall, and this process does not have it \
                 (CapEff {caps:#018x}). Run it as root; in Kubernetes give the init container \
                 securityContext.capabilities.add: [NET_ADMIN, NET_RAW] (and runAsUser: 0)"
            ),
        }),
        _ => Ok(()),
    }
}

/// Moves this thread (and the programs it starts) into the network
/// namespace at `path`, e.g. `/var/run/netns/NAME` or `/proc/PID/ns/net`.
pub fn enter_netns(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::Netns { path: path.to_owned(), reason: e.to_string() })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| match errno {
        Errno::EPERM => Error::Permission {
            what: format!("entering the network namespace {} needs CAP_SYS_ADMIN (run as root)", path.display()),
        },
        Errno::EINVAL => Error::Netns { path: path.to_owned(), reason: "not a network namespace".into() },
        e => Error::Netns { path: path.to_owned(), reason: e.desc().into() },
    })
}

/// `--ipv6 auto`: whether the namespace has a global IPv6 address. `::1`
/// and link-local `fe80::` addresses exist in nearly every pod, IPv4-only
/// ones included; redirecting IPv6 there would only send it to ports an
/// IPv4-only sidecar config does not listen on. Read via thread-self so it
/// is the namespace this thread entered with --netns (/proc/net follows the
/// process's main thread).
pub fn ipv6_in_use() -> bool {
    ["/proc/thread-self/net/if_inet6", "/proc/net/if_inet6"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|text| has_global_ipv6(&text))
}

/// Lines of `if_inet6`: address, interface index, prefix length, scope,
/// flags, name; scope `00` is global (ULAs included), `10` host, `20` link.
fn has_global_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|line| line.split_whitespace().nth(3) == Some("00"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert_eq!(parse_cap_eff(root), Some(0x1fffeffffff));
        assert!(check_net_admin_in(root).is_ok());
        let nobody = "CapEff:\t0000000000000000\n";
        let e = check_net_admin_in(nobody).unwrap_err();
        assert_eq!(e.exit_code(), 4);
        assert!(e.to_string().contains("CAP_NET_ADMIN"));
        // Exactly NET_ADMIN is enough.
        assert!(check_net_admin_in("CapEff:\t0000000000001000\n").is_ok());
        assert!(check_net_admin_in("no caps line").is_ok());
    }

    #[test]
    fn only_a_global_ipv6_address_means_ipv6_is_in_use() {
        let lo = "00000000000000000000000000000001 01 80 10 80       lo\n";
        let link = "fe80000000000000b0a1c2fffe3d4e5f 02 40 20 80     eth0\n";
        let ula = "fd000201000100000000000000000001 02 40 00 80     eth0\n";
        assert!(!has_global_ipv6(""));
        assert!(!has_global_ipv6(&format!("{lo}{link}")));
        assert!(has_global_ipv6(&format!("{lo}{link}{ula}")));
    }

    #[test]
    fn bad_netns_paths_exit_6() {
        let e = enter_netns(Path::new("/nonexistent/netns")).unwrap_err();
        assert_eq!(e.exit_code(), 6);
        assert!(e.to_string().contains("/nonexistent/netns"));
        // A regular file is refused before any permission check.
        let e = enter_netns(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(e.exit_code(), 6, "{e}");
        assert!(e.to_string().contains("not a network namespace"), "{e}");
    }
}
