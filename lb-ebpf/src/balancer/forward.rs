//! Sending a packet to its backend: IPIP / IP6IP6 encapsulation or an L2
//! destination-MAC rewrite, out of the interface the FIB chose.

use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{Backend, DropReason, FAMILY_V4, FORWARD_L2DSR, NextHop, Settings, global_counter};
use lb_ebpf::{
    csum, l2,
    parse::{ETH_P_IP, ETH_P_IPV6, Packet, ptr_at},
};

use crate::{nexthop, stats};

/// IP protocol number of IPv4-in-IP.
const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6-in-IP.
const IPPROTO_IPV6: u8 = 41;
const OUTER_TTL: u8 = 64;

/// Whether a packet too big to encapsulate may be answered with an ICMP
/// error (never for a packet that is itself an ICMP error).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TooBig {
    Answer,
    Drop,
}

/// Forwards `pkt` to backend `id`.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into the packet path; a struct would cost stack"
)]
pub fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    tenant: u32,
    id: u32,
    backend: &Backend,
    settings: &Settings,
    hash: u32,
    now: u64,
    too_big: TooBig,
) -> Forwarded {
    let nh = match nexthop::lookup(ctx, id, backend, now) {
        Ok(nh) => nh,
        Err(reason) => return dropped(tenant, reason),
    };
    if settings.forwarding == FORWARD_L2DSR {
        if write_l2(ctx, pkt, nh, pkt.family).is_err() {
            return dropped(tenant, DropReason::MALFORMED);
        }
        return Forwarded::action(send(ctx, nh));
    }

    let overhead = if backend.family == FAMILY_V4 { 20 } else { 40 };
    if pkt.ip_len + overhead > nh.mtu as usize {
        if pkt.dont_fragment && too_big == TooBig::Answer {
            stats::drop(tenant, DropReason::TOO_BIG);
            stats::global(global_counter::ICMP_TOO_BIG_SENT);
            return Forwarded::too_big(nh.mtu);
        }
        return dropped(tenant, DropReason::TOO_BIG_NO_DF);
    }
    if encapsulate(ctx, pkt, backend, nh, hash).is_err() {
        return dropped(tenant, DropReason::ENCAP_FAILED);
    }
    Forwarded::action(send(ctx, nh))
}

/// What forwarding decided: an XDP action, or to answer the client that
/// its packet is too big for the path, with the route MTU. The answer is
/// built at the top of the program, outside the nested calls, so the stack
/// frames of the steering path and of the ICMP builder are never stacked.
/// One `u32` (`#[repr(transparent)]`): it crosses a BPF function's return.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Forwarded(u32);

impl Forwarded {
    /// Values from this up are a too-big answer, the MTU in the low 16
    /// bits; XDP actions are far below.
    const TOO_BIG: u32 = 0x1_0000;

    /// The XDP action `action` (`XDP_TX`, `XDP_DROP`, ...).
    #[inline(always)]
    pub const fn action(action: u32) -> Self {
        Self(action)
    }

    #[inline(always)]
    const fn too_big(mtu: u16) -> Self {
        Self(Self::TOO_BIG | mtu as u32)
    }

    /// The MTU to announce when the client is to be told its packet is too
    /// big; `None` for an XDP action.
    #[inline(always)]
    pub const fn too_big_mtu(self) -> Option<u16> {
        if self.0 >= Self::TOO_BIG {
            Some(self.0 as u16)
        } else {
            None
        }
    }

    /// The XDP action; `XDP_DROP` for a too-big answer nobody builds (the
    /// ICMP path forwards with [`TooBig::Drop`] and never gets one).
    #[inline(always)]
    pub const fn xdp_action(self) -> u32 {
        if self.0 >= Self::TOO_BIG {
            XDP_DROP
        } else {
            self.0
        }
    }
}

#[inline(always)]
fn dropped(tenant: u32, reason: DropReason) -> Forwarded {
    stats::drop(tenant, reason);
    Forwarded::action(XDP_DROP)
}

/// `XDP_TX` when the next hop is behind the interface the packet came in on,
/// else a redirect to the FIB's egress interface.
#[inline(always)]
fn send(ctx: &XdpContext, nh: &NextHop) -> u32 {
    stats::global(global_counter::FORWARDED);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "ifindex is a u32 in xdp_md"
    )]
    if nh.ifindex == ctx.ingress_ifindex() as u32 {
        XDP_TX
    } else {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "bpf_redirect returns an XDP action"
        )]
        let action = unsafe { bpf_redirect(nh.ifindex, 0) } as u32;
        action
    }
}

/// Writes the L2 header at the start of the packet for the next hop, keeping
/// the VLAN tag of the original packet. `shift` is how far the L2 header moved
/// (unused: the header is rewritten whole), `family` that of the L3 header.
#[inline(always)]
fn write_l2(ctx: &XdpContext, pkt: &Packet, nh: &NextHop, family: u8) -> Result<(), ()> {
    let ip_type = if family == FAMILY_V4 {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    l2::write(ctx, pkt, nh.dmac, nh.smac, ip_type)
}

/// Prepends an outer IPv4 or IPv6 header addressed to the backend.
#[inline(never)]
fn encapsulate(
    ctx: &XdpContext,
    pkt: &Packet,
    backend: &Backend,
    nh: &NextHop,
    hash: u32,
) -> Result<(), ()> {
    let inner_proto = if pkt.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    if backend.family == FAMILY_V4 {
        let total = pkt.ip_len + 20;
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[1] = pkt.tos;
        #[expect(clippy::cast_possible_truncation, reason = "bounded by the MTU check")]
        let total = (total as u16).to_be_bytes();
        h[2] = total[0];
        h[3] = total[1];
        h[8] = OUTER_TTL;
        h[9] = inner_proto;
        h[12..16].copy_from_slice(&nh.src[..4]);
        h[16..20].copy_from_slice(&backend.addr[..4]);
        let check = csum::ipv4_header(&h).to_ne_bytes();
        h[10] = check[0];
        h[11] = check[1];
        grow(ctx, 20)?;
        write_l2(ctx, pkt, nh, FAMILY_V4)?;
        let outer: *mut [u8; 20] = ptr_at(ctx, pkt.l2_len).ok_or(())?;
        unsafe { outer.write_unaligned(h) };
    } else {
        let mut h = [0u8; 40];
        // Version 6, the inner traffic class, and the flow hash as flow label
        // so that ECMP between us and the backend keeps a flow on one path.
        h[0] = 0x60 | (pkt.tos >> 4);
        #[expect(clippy::cast_possible_truncation, reason = "byte extraction")]
        {
            h[1] = (pkt.tos << 4) | ((hash >> 16) as u8 & 0x0f);
            h[2] = (hash >> 8) as u8;
            h[3] = hash as u8;
        }
        #[expect(clippy::cast_possible_truncation, reason = "bounded by the MTU check")]
        let plen = (pkt.ip_len as u16).to_be_bytes();
        h[4] = plen[0];
        h[5] = plen[1];
        h[6] = inner_proto;
        h[7] = OUTER_TTL;
        h[8..24].copy_from_slice(&nh.src);
        h[24..40].copy_from_slice(&backend.addr);
        grow(ctx, 40)?;
        write_l2(ctx, pkt, nh, lb_common::FAMILY_V6)?;
        let outer: *mut [u8; 40] = ptr_at(ctx, pkt.l2_len).ok_or(())?;
        unsafe { outer.write_unaligned(h) };
    }
    Ok(())
}

/// Makes room for `len` bytes of outer header between L2 and L3.
#[inline(always)]
fn grow(ctx: &XdpContext, len: i32) -> Result<(), ()> {
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), -len) } != 0 {
        return Err(());
    }
    Ok(())
}
