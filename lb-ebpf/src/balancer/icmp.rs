//! ICMP: errors about VIP flows go to the backend that owns the flow (when
//! the tenant's policy admits them), and packets that would be too big once
//! encapsulated are answered with fragmentation-needed / packet-too-big.

use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    DropReason, FAMILY_V4, FlowKey, NO_TENANT, PROTO_TCP, PROTO_UDP, Settings, global_counter,
};
use lb_ebpf::{
    csum, l2,
    parse::{ETH_P_IP, ETH_P_IPV6, Packet, ptr_at},
};
use network_types::eth::EthHdr;

use crate::{
    forward::{self, TooBig},
    policy, select, stats,
};

/// Bytes of the offending packet quoted in a too-big answer: enough for its
/// IP header and ports (RFC 792 asks for the header plus 64 bits).
const QUOTE_LEN: usize = 64;

/// Handles an ICMP or `ICMPv6` packet. Not inlined: a separate BPF function
/// keeps its stack apart from the main path's.
#[inline(never)]
pub fn handle(ctx: &XdpContext, pkt: &Packet, settings: &Settings, now: u64) -> u32 {
    let Some(hdr) = ptr_at::<[u8; 8]>(ctx, pkt.l4_off) else {
        return crate::malformed_l4(pkt);
    };
    let icmp_type = unsafe { (*hdr)[0] };
    let is_error = if pkt.family == FAMILY_V4 {
        // Destination unreachable (incl. fragmentation needed), time exceeded.
        icmp_type == 3 || icmp_type == 11
    } else {
        // Destination unreachable, packet too big, time exceeded.
        icmp_type == 1 || icmp_type == 2 || icmp_type == 3
    };
    if !is_error {
        stats::global(global_counter::PASS_NOT_VIP);
        return XDP_PASS;
    }

    // The quoted packet is one a backend sent from the VIP to the client:
    // the flow's key is its reverse, read straight into place (a copy of
    // the addresses would push this frame past the verifier's stack limit).
    let mut key = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        proto: 0,
        family: pkt.family,
        _pad: [0; 2],
    };
    let Some(ports_off) = quoted_header(ctx, pkt.l4_off + 8, &mut key) else {
        return crate::malformed_l4(pkt);
    };
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        stats::global(global_counter::PASS_NOT_VIP);
        return XDP_PASS;
    }
    let Some(ports) = ptr_at::<[u8; 4]>(ctx, ports_off) else {
        return crate::malformed_l4(pkt);
    };
    let ports = unsafe { *ports };
    key.dport = u16::from_ne_bytes([ports[0], ports[1]]);
    key.sport = u16::from_ne_bytes([ports[2], ports[3]]);
    let Some(vip) = select::vip(&key.dst, pkt.family, key.dport, key.proto) else {
        stats::global(global_counter::PASS_NOT_VIP);
        return XDP_PASS;
    };
    // From here on the error is about a VIP flow and costs its tenant: a
    // router sends it to the quoted packet's source, the VIP. Another
    // destination is a forgery aimed at the backends behind this node.
    if pkt.dst != key.dst {
        return crate::vip_drop(pkt, &vip, DropReason::ICMP_DST_MISMATCH);
    }
    // The same ACL and budgets as the tenant's TCP and UDP (the outer
    // source is the router that sent the error).
    if let Some(reason) = policy::check(pkt, &vip, 0, now).dropped() {
        return crate::vip_drop(pkt, &vip, reason);
    }
    if vip.flags & lb_common::VIP_F_LOCAL != 0 {
        return crate::pass_local(pkt, &vip);
    }
    // Only a flow the table holds has a backend that sent the quoted
    // packet; the ring's choice for an unknown flow would be a stranger.
    let choice = match select::flow(&key, &vip, settings, now) {
        select::Entry::Valid(choice) => choice,
        select::Entry::Stale => return crate::vip_drop(pkt, &vip, DropReason::ICMP_NO_BACKEND),
        select::Entry::Missing => return crate::vip_drop(pkt, &vip, DropReason::ICMP_NO_FLOW),
    };
    stats::forwarded(vip.tenant_id, vip.vip_id, choice.id, pkt.ip_len, false);
    stats::global(global_counter::ICMP_FORWARDED);
    forward::to_backend(
        ctx,
        pkt,
        vip.tenant_id,
        choice.id,
        choice.backend,
        settings,
        choice.hash,
        now,
        TooBig::Drop,
    )
    .xdp_action()
}

/// Reads the IP header quoted in an ICMP error at `off` into `key`, reversed
/// (its destination is the flow's source) with its protocol; returns the
/// offset of its L4 header. `key.family` says which IP version to expect.
#[inline(always)]
fn quoted_header(ctx: &XdpContext, off: usize, key: &mut FlowKey) -> Option<usize> {
    if key.family == FAMILY_V4 {
        let h = unsafe { &*ptr_at::<[u8; 20]>(ctx, off)? };
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        key.dst[..4].copy_from_slice(&h[12..16]);
        key.src[..4].copy_from_slice(&h[16..20]);
        key.proto = h[9];
        Some(off + ihl)
    } else {
        let h = unsafe { &*ptr_at::<[u8; 40]>(ctx, off)? };
        if h[0] >> 4 != 6 {
            return None;
        }
        key.dst.copy_from_slice(&h[8..24]);
        key.src.copy_from_slice(&h[24..40]);
        key.proto = h[6];
        Some(off + 40)
    }
}

/// Turns `pkt` into an ICMP fragmentation-needed (IPv4) or packet-too-big
/// (IPv6) answer from the VIP to the client, quoting the start of the packet,
/// and sends it back out of the interface it came in on.
#[inline(never)]
pub fn send_too_big(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> u32 {
    let result = if pkt.family == FAMILY_V4 {
        too_big_v4(ctx, pkt, mtu)
    } else {
        too_big_v6(ctx, pkt, mtu)
    };
    if result.is_ok() {
        return XDP_TX;
    }
    stats::drop(NO_TENANT, DropReason::ENCAP_FAILED);
    XDP_DROP
}

/// Writes the reply's L2 header at offset 0: the original MACs swapped, the
/// VLAN tag kept.
#[inline(always)]
fn reply_l2(
    ctx: &XdpContext,
    pkt: &Packet,
    old_dst: [u8; 6],
    old_src: [u8; 6],
    ip_type: u16,
) -> Result<(), ()> {
    l2::write(ctx, pkt, old_src, old_dst, ip_type)
}

#[inline(always)]
fn old_macs(ctx: &XdpContext) -> Result<([u8; 6], [u8; 6]), ()> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(())?;
    Ok(unsafe { ((*eth).dst_addr, (*eth).src_addr) })
}

/// Cuts the packet to `len` bytes.
#[inline(always)]
fn truncate(ctx: &XdpContext, len: usize) -> Result<(), ()> {
    let cur = ctx.data_end() - ctx.data();
    if cur < len {
        return Err(());
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "packet lengths fit in i32"
    )]
    let delta = len as i32 - cur as i32;
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.as_ptr().cast(), delta) } != 0 {
        return Err(());
    }
    Ok(())
}

#[inline(always)]
fn too_big_v4(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Result<(), ()> {
    const HDRS: usize = 20 + 8;
    let (old_dst, old_src) = old_macs(ctx)?;
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), -(HDRS as i32)) } != 0 {
        return Err(());
    }
    truncate(ctx, pkt.l2_len + HDRS + QUOTE_LEN)?;
    reply_l2(ctx, pkt, old_dst, old_src, ETH_P_IP)?;

    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    #[expect(clippy::cast_possible_truncation, reason = "constant 92")]
    let total = ((HDRS + QUOTE_LEN) as u16).to_be_bytes();
    ip[2] = total[0];
    ip[3] = total[1];
    ip[8] = 64;
    ip[9] = lb_common::PROTO_ICMP;
    ip[12..16].copy_from_slice(&pkt.dst[..4]);
    ip[16..20].copy_from_slice(&pkt.src[..4]);
    let check = csum::ipv4_header(&ip).to_ne_bytes();
    ip[10] = check[0];
    ip[11] = check[1];
    let ip_ptr: *mut [u8; 20] = ptr_at(ctx, pkt.l2_len).ok_or(())?;
    unsafe { ip_ptr.write_unaligned(ip) };

    // Type 3 code 4, checksum, unused, next-hop MTU (RFC 1191).
    let next_mtu = mtu.saturating_sub(20).to_be_bytes();
    let icmp = [3u8, 4, 0, 0, 0, 0, next_mtu[0], next_mtu[1]];
    let icmp_ptr: *mut [u8; 8] = ptr_at(ctx, pkt.l2_len + 20).ok_or(())?;
    unsafe { icmp_ptr.write_unaligned(icmp) };
    let body: *mut [u8; 8 + QUOTE_LEN] = ptr_at(ctx, pkt.l2_len + 20).ok_or(())?;
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            body.cast(),
            (8 + QUOTE_LEN) as u32,
            0,
        )
    };
    #[expect(clippy::cast_sign_loss, reason = "csum_diff returns the 32-bit sum")]
    let check = csum::fold(sum as u32 as u64).to_ne_bytes();
    unsafe {
        (*body)[2] = check[0];
        (*body)[3] = check[1];
    }
    Ok(())
}

#[inline(always)]
fn too_big_v6(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Result<(), ()> {
    const HDRS: usize = 40 + 8;
    let (old_dst, old_src) = old_macs(ctx)?;
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), -(HDRS as i32)) } != 0 {
        return Err(());
    }
    truncate(ctx, pkt.l2_len + HDRS + QUOTE_LEN)?;
    reply_l2(ctx, pkt, old_dst, old_src, ETH_P_IPV6)?;

    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    #[expect(clippy::cast_possible_truncation, reason = "constant 72")]
    let plen = ((8 + QUOTE_LEN) as u16).to_be_bytes();
    ip[4] = plen[0];
    ip[5] = plen[1];
    ip[6] = lb_common::PROTO_ICMPV6;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&pkt.dst);
    ip[24..40].copy_from_slice(&pkt.src);
    let ip_ptr: *mut [u8; 40] = ptr_at(ctx, pkt.l2_len).ok_or(())?;
    unsafe { ip_ptr.write_unaligned(ip) };

    let next_mtu = u32::from(mtu.saturating_sub(40)).to_be_bytes();
    let icmp = [
        2u8,
        0,
        0,
        0,
        next_mtu[0],
        next_mtu[1],
        next_mtu[2],
        next_mtu[3],
    ];
    let icmp_ptr: *mut [u8; 8] = ptr_at(ctx, pkt.l2_len + 40).ok_or(())?;
    unsafe { icmp_ptr.write_unaligned(icmp) };

    // Pseudo-header: addresses, upper-layer length, next header.
    let mut sum: u64 = 0;
    let mut i = 8;
    while i < 40 {
        sum += u64::from(u16::from_ne_bytes([ip[i], ip[i + 1]]));
        i += 2;
    }
    sum += u64::from(u16::from_ne_bytes(plen));
    sum += u64::from(u16::from_ne_bytes([0, lb_common::PROTO_ICMPV6]));
    let body: *mut [u8; 8 + QUOTE_LEN] = ptr_at(ctx, pkt.l2_len + 40).ok_or(())?;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a folded 16-bit partial sum"
    )]
    let seed = (csum_partial(sum)) as u32;
    let total = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            body.cast(),
            (8 + QUOTE_LEN) as u32,
            seed,
        )
    };
    #[expect(clippy::cast_sign_loss, reason = "csum_diff returns the 32-bit sum")]
    let check = csum::fold(total as u32 as u64).to_ne_bytes();
    unsafe {
        (*body)[2] = check[0];
        (*body)[3] = check[1];
    }
    Ok(())
}

/// Folds a sum to 16 bits without complementing it (a seed for `csum_diff`).
#[inline(always)]
fn csum_partial(mut sum: u64) -> u64 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (sum & 0xffff) + (sum >> 16)
}
