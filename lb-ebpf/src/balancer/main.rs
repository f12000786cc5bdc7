//! The balancer: an XDP program that steers each packet for a VIP to a
//! backend of the VIP's tenant, read top to bottom in [`balance`]. The
//! benchmarks' programs (`lb_bench`, `lb_bench_null`, `lb_drop`,
//! `lb_bounce`) live in [`bench`]: they share the balancer's maps, so they
//! are in its object, but `lbd` never loads them.

#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]
#![allow(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take their context by value"
)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_lossless,
    reason = "packet offsets and lengths are bounded by the verifier-checked frame, helper results are small; \
              BPF has 64-bit pointers only"
)]
#![allow(
    clippy::inline_always,
    reason = "BPF code: helpers must be inlined into the program (the verifier limits calls and stack)"
)]
#![allow(
    clippy::must_use_candidate,
    clippy::missing_errors_doc,
    reason = "internal helpers of the eBPF programs, not a public API"
)]

mod bench;
mod forward;
mod icmp;
mod maps;
mod nexthop;
mod policy;
mod select;
mod stats;
mod verdict;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_coarse_ns,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{DropReason, FlowKey, NO_TENANT, Settings, VIP_F_LOCAL, VipInfo, global_counter};
use lb_ebpf::parse::{self, Packet, ParseError};

use crate::{
    forward::{Forwarded, TooBig},
    maps::{SCRATCH, SETTINGS, TENANT_STATS, VIP_STATS},
};

/// The balancer's entry point.
#[xdp]
pub fn lb_balancer(ctx: XdpContext) -> u32 {
    balance(&ctx)
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> u32 {
    stats::global(global_counter::RX);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    let pkt = unsafe { &mut *scratch };
    match parse::parse_into(ctx, pkt) {
        Ok(()) => {}
        Err(ParseError::NotIp) => {
            stats::global(global_counter::PASS_NOT_IP);
            return XDP_PASS;
        }
        Err(ParseError::BadL3) => {
            // Without a trustworthy header we cannot tell whose it is.
            stats::global(global_counter::MALFORMED);
            stats::drop(NO_TENANT, DropReason::MALFORMED);
            return XDP_DROP;
        }
    }
    let pkt: &Packet = pkt;
    if pkt.fragment {
        return fragment(pkt);
    }
    let settings = SETTINGS.get(0).copied().unwrap_or_default();
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if parse::is_icmp(pkt) {
        return icmp::handle(ctx, pkt, &settings, now);
    }
    if !parse::is_tcp_or_udp(pkt.proto) {
        return other_protocol(pkt);
    }
    let forwarded = steer(ctx, pkt, &settings, now);
    match forwarded.too_big_mtu() {
        Some(mtu) => icmp::send_too_big(ctx, pkt, mtu),
        None => forwarded.xdp_action(),
    }
}

/// A TCP or UDP packet: to its VIP's backend. Not inlined, so its stack
/// frame and the ICMP path's are siblings rather than one large frame.
#[inline(never)]
fn steer(ctx: &XdpContext, pkt: &Packet, settings: &Settings, now: u64) -> Forwarded {
    let Some(ports) = parse::parse_ports(ctx, pkt, pkt.l4_off, pkt.proto) else {
        return Forwarded::action(malformed_l4(pkt));
    };
    let Some(vip) = select::vip(&pkt.dst, pkt.family, ports.dport, pkt.proto) else {
        stats::global(global_counter::PASS_NOT_VIP);
        return Forwarded::action(XDP_PASS);
    };
    // The tenant's packet policy: ACL, then rate budgets.
    let syn = u32::from(
        pkt.proto == lb_common::PROTO_TCP
            && ports.tcp_flags & parse::TCP_SYN != 0
            && ports.tcp_flags & parse::TCP_ACK == 0,
    );
    if let Some(reason) = policy::check(pkt, &vip, syn, now).dropped() {
        return Forwarded::action(vip_drop(pkt, &vip, reason));
    }
    if vip.flags & VIP_F_LOCAL != 0 {
        return Forwarded::action(pass_local(pkt, &vip));
    }

    let key = FlowKey {
        src: pkt.src,
        dst: pkt.dst,
        sport: ports.sport,
        dport: ports.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    let choice = match select::backend(&key, &vip, settings, now) {
        Ok(choice) => choice,
        Err(reason) => return Forwarded::action(vip_drop(pkt, &vip, reason)),
    };
    stats::forwarded(
        vip.tenant_id,
        vip.vip_id,
        choice.id,
        pkt.ip_len,
        choice.new_flow,
    );
    forward::to_backend(
        ctx,
        pkt,
        vip.tenant_id,
        choice.id,
        choice.backend,
        settings,
        choice.hash,
        now,
        TooBig::Answer,
    )
}

/// A packet for `vip` dropped before it reached a backend: counted for the
/// VIP, and with its reason for the VIP's tenant.
#[inline(always)]
fn vip_drop(pkt: &Packet, vip: &VipInfo, reason: DropReason) -> u32 {
    stats::traffic(&VIP_STATS, vip.vip_id, pkt.ip_len, false);
    stats::drop(vip.tenant_id, reason);
    XDP_DROP
}

/// A packet for a local VIP, served by lbd on this node: counted for the
/// tenant and the VIP, passed to the stack.
#[inline(always)]
fn pass_local(pkt: &Packet, vip: &VipInfo) -> u32 {
    stats::traffic(&TENANT_STATS, vip.tenant_id, pkt.ip_len, false);
    stats::traffic(&VIP_STATS, vip.vip_id, pkt.ip_len, false);
    stats::global(global_counter::PASS_LOCAL);
    XDP_PASS
}

/// IP fragments carry no ports after the first, so they cannot be steered
/// consistently: dropped (and counted) when addressed to a VIP, else passed.
#[inline(always)]
fn fragment(pkt: &Packet) -> u32 {
    if let Some(tenant) = select::vip_addr_tenant(&pkt.dst, pkt.family) {
        stats::drop(tenant, DropReason::FRAGMENT);
        return XDP_DROP;
    }
    stats::global(global_counter::FRAGMENT_PASSED);
    XDP_PASS
}

/// Neither TCP, UDP nor ICMP: passed, except IPv6 extension headers on a VIP
/// address, which the balancer does not walk and so drops with a counter.
#[inline(always)]
fn other_protocol(pkt: &Packet) -> u32 {
    if pkt.family == lb_common::FAMILY_V6
        && parse::is_ipv6_extension(pkt.proto)
        && let Some(tenant) = select::vip_addr_tenant(&pkt.dst, pkt.family)
    {
        stats::drop(tenant, DropReason::UNSUPPORTED);
        return XDP_DROP;
    }
    stats::global(global_counter::PASS_NOT_VIP);
    XDP_PASS
}

/// A TCP, UDP or ICMP header that is truncated or inconsistent with the IP
/// length: dropped (counted for the VIP's tenant) when the packet is
/// addressed to a VIP address, else passed untouched.
#[inline(always)]
fn malformed_l4(pkt: &Packet) -> u32 {
    if let Some(tenant) = select::vip_addr_tenant(&pkt.dst, pkt.family) {
        stats::global(global_counter::MALFORMED);
        stats::drop(tenant, DropReason::MALFORMED);
        return XDP_DROP;
    }
    stats::global(global_counter::PASS_NOT_VIP);
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
