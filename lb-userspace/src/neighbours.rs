//! Keeping the backends' MAC addresses resolved.
//!
//! The XDP program forwards only to backends whose neighbour entry the kernel
//! already holds (`bpf_fib_lookup` cannot wait for ARP or ND; such packets
//! are dropped and counted as `no_neigh`). Sending each backend an empty
//! datagram to the discard port makes the kernel resolve the entry and keep
//! it fresh. Health checks, where configured, do the same.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use tracing::warn;

/// Sends one empty UDP datagram to port 9 of every backend.
pub fn warm(backends: &BTreeSet<IpAddr>) {
    let v4 = UdpSocket::bind("0.0.0.0:0");
    let v6 = UdpSocket::bind("[::]:0");
    for addr in backends {
        let sock = match addr {
            IpAddr::V4(_) => v4.as_ref(),
            IpAddr::V6(_) => v6.as_ref(),
        };
        if let Ok(sock) = sock
            && let Err(e) = sock.send_to(&[], SocketAddr::new(*addr, 9))
        {
            warn!(backend = %addr, error = %e, "cannot reach backend to resolve its MAC address");
        }
    }
}
