//! Bounds-checked packet parsing: Ethernet with at most one 802.1Q tag, IPv4
//! (options skipped by IHL), IPv6 (no extension headers except a Fragment
//! header, which marks the packet as a fragment), TCP, UDP, ICMP and `ICMPv6`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IPv6 next header: Fragment.
const IPV6_FRAGMENT: u8 = 44;
/// IPv6 next headers that are extension headers we do not walk.
const IPV6_EXT_HEADERS: [u8; 5] = [0, 43, 50, 51, 60];

/// Why a packet could not be parsed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4 or IPv6 (ARP, LLDP, a second VLAN tag...): passed.
    NotIp,
    /// The L3 header is truncated or inconsistent: the destination is unknown.
    BadL3,
}

/// No header the programs read starts further into the packet than this.
pub const MAX_HEADER_OFFSET: usize = 512;

/// Returns a pointer to a `T` at `offset` from the start of the packet, or
/// `None` when it does not fit: the one place packet bounds are checked.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    // Offsets may come from a map (the parsed packet lives in one); this
    // bound lets the verifier accept the pointer arithmetic.
    if offset > MAX_HEADER_OFFSET {
        return None;
    }
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// What the balancer needs to know about a packet, host order unless noted.
#[derive(Clone, Copy, Default)]
pub struct Packet {
    /// Length of the L2 header: 14, or 18 with a VLAN tag.
    pub l2_len: usize,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// The VLAN tag's TCI, when the frame carries one.
    pub vlan_tci: Option<u16>,
    /// The VLAN tag's TPID (802.1Q or 802.1ad), kept when re-writing L2.
    pub vlan_tpid: u16,
    pub family: u8,
    /// L4 protocol (IPv4 protocol or IPv6 next header).
    pub proto: u8,
    /// Network order, IPv4 in the first four bytes.
    pub src: [u8; 16],
    /// Network order, IPv4 in the first four bytes.
    pub dst: [u8; 16],
    /// Length of the whole IP packet (header included) from its header.
    pub ip_len: usize,
    /// IPv4 TOS or IPv6 traffic class (DSCP and ECN).
    pub tos: u8,
    /// IPv4 "don't fragment"; always true for IPv6 (routers never fragment).
    pub dont_fragment: bool,
    /// Fragmented (IPv4 MF or offset, IPv6 Fragment header).
    pub fragment: bool,
}

/// Ports and flags of a TCP or UDP header.
#[derive(Clone, Copy)]
pub struct Ports {
    /// Network order.
    pub sport: u16,
    /// Network order.
    pub dport: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Parses L2 and L3 headers into `out` (the balancer keeps it in a per-CPU
/// scratch map rather than on its 512-byte stack).
#[inline(always)]
pub fn parse_into(ctx: &XdpContext, out: &mut Packet) -> Result<(), ParseError> {
    *out = parse(ctx)?;
    Ok(())
}

/// Parses L2 and L3 headers.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, ParseError> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(ParseError::NotIp)?;
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l2_len = EthHdr::LEN;
    let mut vlan_tci = None;
    let vlan_tpid = ether_type;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: *const VlanHdr = ptr_at(ctx, EthHdr::LEN).ok_or(ParseError::NotIp)?;
        vlan_tci = Some(u16::from_be_bytes(unsafe { (*vlan).tci }));
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l2_len += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, l2_len, vlan_tci, vlan_tpid),
        ETH_P_IPV6 => parse_ipv6(ctx, l2_len, vlan_tci, vlan_tpid),
        _ => Err(ParseError::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(
    ctx: &XdpContext,
    l2_len: usize,
    vlan_tci: Option<u16>,
    vlan_tpid: u16,
) -> Result<Packet, ParseError> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l2_len).ok_or(ParseError::BadL3)?;
    let (vihl, tos, tot_len, frags, proto, src4, dst4) = unsafe {
        (
            (*ip).vihl,
            (*ip).tos,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    let frame_ip_len = ctx.data_end() - ctx.data() - l2_len;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || tot_len > frame_ip_len {
        return Err(ParseError::BadL3);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&src4);
    dst[..4].copy_from_slice(&dst4);
    Ok(Packet {
        l2_len,
        l4_off: l2_len + ihl,
        vlan_tci,
        vlan_tpid,
        family: FAMILY_V4,
        proto,
        src,
        dst,
        ip_len: tot_len,
        tos,
        dont_fragment: frags & 0x4000 != 0,
        fragment: frags & 0x3fff != 0,
    })
}

#[inline(always)]
fn parse_ipv6(
    ctx: &XdpContext,
    l2_len: usize,
    vlan_tci: Option<u16>,
    vlan_tpid: u16,
) -> Result<Packet, ParseError> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l2_len).ok_or(ParseError::BadL3)?;
    let (vcf, payload_len, next_hdr, src, dst) = unsafe {
        (
            (*ip).vcf,
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_hdr,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    let frame_ip_len = ctx.data_end() - ctx.data() - l2_len;
    let ip_len = Ipv6Hdr::LEN + payload_len;
    if vcf[0] >> 4 != 6 || ip_len > frame_ip_len {
        return Err(ParseError::BadL3);
    }
    let fragment = next_hdr == IPV6_FRAGMENT;
    // Other extension headers are reported as their own protocol number, which
    // the balancer treats as "not TCP/UDP/ICMP" (see `is_ipv6_extension`).
    Ok(Packet {
        l2_len,
        l4_off: l2_len + Ipv6Hdr::LEN,
        vlan_tci,
        vlan_tpid,
        family: FAMILY_V6,
        proto: next_hdr,
        src,
        dst,
        ip_len,
        tos: (vcf[0] << 4) | (vcf[1] >> 4),
        dont_fragment: true,
        fragment,
    })
}

/// An IPv6 extension header the balancer does not walk.
#[inline(always)]
pub fn is_ipv6_extension(proto: u8) -> bool {
    IPV6_EXT_HEADERS.contains(&proto)
}

/// Reads TCP or UDP ports at `off`; `None` when the header is truncated or
/// the IP length cannot hold it.
#[inline(always)]
pub fn parse_ports(ctx: &XdpContext, pkt: &Packet, off: usize, proto: u8) -> Option<Ports> {
    if proto == PROTO_TCP {
        // Ports (4) + seq (4) + ack (4) + data offset (1) + flags (1).
        let hdr: *const [u8; 14] = ptr_at(ctx, off)?;
        if pkt.l2_len + pkt.ip_len < off + 20 {
            return None;
        }
        let h = unsafe { *hdr };
        if (h[12] >> 4) < 5 {
            return None;
        }
        Some(Ports {
            sport: u16::from_ne_bytes([h[0], h[1]]),
            dport: u16::from_ne_bytes([h[2], h[3]]),
            tcp_flags: h[13],
        })
    } else {
        let hdr: *const [u8; 8] = ptr_at(ctx, off)?;
        let h = unsafe { *hdr };
        let udp_len = u16::from_be_bytes([h[4], h[5]]) as usize;
        if udp_len < 8 || pkt.l2_len + pkt.ip_len < off + udp_len {
            return None;
        }
        Some(Ports {
            sport: u16::from_ne_bytes([h[0], h[1]]),
            dport: u16::from_ne_bytes([h[2], h[3]]),
            tcp_flags: 0,
        })
    }
}

/// True for the L4 protocols the balancer steers.
#[inline(always)]
pub fn is_tcp_or_udp(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP
}

/// True for ICMP of the packet's family.
#[inline(always)]
pub fn is_icmp(pkt: &Packet) -> bool {
    (pkt.family == FAMILY_V4 && pkt.proto == PROTO_ICMP)
        || (pkt.family == FAMILY_V6 && pkt.proto == PROTO_ICMPV6)
}
