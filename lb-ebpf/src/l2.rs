//! Writing the L2 header of a packet whose L3 header moved or changed
//! (encapsulation, decapsulation, an ICMP answer): new MACs, the original
//! VLAN tag (TPID and TCI) kept, the ether type of the new L3 header.

use aya_ebpf::programs::XdpContext;
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::parse::{Packet, ptr_at};

/// Writes the L2 header at the start of the packet; `ip_type` is the ether
/// type of the L3 header that follows (`ETH_P_IP` or `ETH_P_IPV6`). Fails
/// when the frame is shorter than the header.
#[inline(always)]
#[expect(
    clippy::result_unit_err,
    reason = "the only failure is a short frame; every caller drops the packet"
)]
pub fn write(
    ctx: &XdpContext,
    pkt: &Packet,
    dst: [u8; 6],
    src: [u8; 6],
    ip_type: u16,
) -> Result<(), ()> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(())?;
    unsafe {
        (*eth).dst_addr = dst;
        (*eth).src_addr = src;
    }
    if let Some(tci) = pkt.vlan_tci {
        let vlan: *mut VlanHdr = ptr_at(ctx, EthHdr::LEN).ok_or(())?;
        unsafe {
            (*eth).ether_type = pkt.vlan_tpid.to_be();
            (*vlan).tci = tci.to_be_bytes();
            (*vlan).ether_type = ip_type.to_be();
        }
    } else {
        unsafe { (*eth).ether_type = ip_type.to_be() };
    }
    Ok(())
}
