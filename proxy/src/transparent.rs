//! Transparent listeners: connections netfilter redirected here (iptables
//! or nftables `REDIRECT`, as `edgeplane-init` installs for a sidecar). The
//! kernel rewrote their destination to the listener; conntrack still knows
//! where the client was going, and `SO_ORIGINAL_DST` reads it back.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// Why a connection on a transparent listener has no usable original destination.
#[derive(Debug, thiserror::Error)]
pub enum OriginalDestinationError {
    #[error("no original destination (the connection was not redirected by netfilter): {0}")]
    Unavailable(nix::Error),
    /// Without a redirect conntrack reports the listener's own address;
    /// relaying there would loop back into the listener.
    #[error("connection made to the listener itself ({0}), not redirected to it")]
    NotRedirected(SocketAddr),
    #[error("cannot read the local address: {0}")]
    Local(std::io::Error),
}

/// Where the client was going before the redirect.
pub fn original_destination(stream: &TcpStream) -> Result<SocketAddr, OriginalDestinationError> {
    let local = stream.local_addr().map_err(OriginalDestinationError::Local)?;
    // A dual-stack socket's IPv4 clients are tracked by IPv4 conntrack.
    let ipv4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let destination = if ipv4 {
        let raw = getsockopt(stream, sockopt::OriginalDst).map_err(OriginalDestinationError::Unavailable)?;
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)), u16::from_be(raw.sin_port)))
    } else {
        let raw = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(OriginalDestinationError::Unavailable)?;
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(raw.sin6_addr.s6_addr), u16::from_be(raw.sin6_port), 0, 0))
    };
    if same_address(destination, local) {
        return Err(OriginalDestinationError::NotRedirected(local));
    }
    Ok(destination)
}

fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |addr: SocketAddr| (addr.ip().to_canonical(), addr.port());
    canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // With conntrack loaded the kernel answers with the listener's own
        // address; without it, an error. Either way: not usable.
        match original_destination(&accepted) {
            Err(OriginalDestinationError::NotRedirected(local)) => assert_eq!(local, addr),
            Err(OriginalDestinationError::Unavailable(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_same_address() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert!(same_address(mapped, "10.0.0.1:80".parse().unwrap()));
        assert!(!same_address(mapped, "10.0.0.1:81".parse().unwrap()));
    }
}
