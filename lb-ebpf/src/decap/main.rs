//! The backends' decapsulation: strips the outer IPv4 or IPv6 header of an
//! IPIP / IP6IP6 (or mixed) packet from the balancer and passes the inner
//! packet to the stack, so a backend without a kernel ipip module can serve
//! a VIP it holds on a local interface. Everything else passes untouched.

#![no_std]
#![no_main]
#![allow(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take their context by value"
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

use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_ebpf::parse::{self, ETH_P_IP, ETH_P_IPV6, ptr_at};
use network_types::eth::EthHdr;

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;

/// Decap counters: 0 = decapsulated, 1 = passed untouched, 2 = dropped
/// (an encapsulated packet whose inner header is truncated).
#[map(name = "LB_DECAP_STATS")]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

#[inline(always)]
fn count(i: u32) {
    if let Some(c) = DECAP_STATS.get_ptr_mut(i) {
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    match decap(&ctx) {
        Ok(true) => {
            count(0);
            XDP_PASS
        }
        Ok(false) => {
            count(1);
            XDP_PASS
        }
        Err(()) => {
            count(2);
            XDP_DROP
        }
    }
}

/// Returns whether the packet was decapsulated.
#[inline(always)]
fn decap(ctx: &XdpContext) -> Result<bool, ()> {
    let Ok(pkt) = parse::parse(ctx) else {
        return Ok(false);
    };
    if pkt.fragment {
        return Ok(false);
    }
    let inner_type = match pkt.proto {
        IPPROTO_IPIP => ETH_P_IP,
        IPPROTO_IPV6 => ETH_P_IPV6,
        _ => return Ok(false),
    };
    let outer_len = pkt.l4_off - pkt.l2_len;
    // The inner header must be there before we commit to stripping.
    if ptr_at::<[u8; 20]>(ctx, pkt.l4_off).is_none() {
        return Err(());
    }
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(())?;
    let (dst, src) = unsafe { ((*eth).dst_addr, (*eth).src_addr) };

    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "at most 60 bytes"
    )]
    let shrink = outer_len as i32;
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), shrink) } != 0 {
        return Err(());
    }
    lb_ebpf::l2::write(ctx, &pkt, dst, src, inner_type)?;
    Ok(true)
}

/// A plain `XDP_PASS` program. veth delivers frames that its peer sent with
/// `XDP_TX` only when it runs an XDP program itself, so test and benchmark
/// topologies attach this to every port that receives such frames.
#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
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
