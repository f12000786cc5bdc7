//! The next hop towards a backend: MACs, egress interface, our source
//! address and the route MTU, from `bpf_fib_lookup`, cached per CPU for about
//! a second so the per-packet path does not pay for a FIB lookup.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SRC, bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{Backend, DropReason, FAMILY_V4, NextHop, global_counter};

use crate::{maps::NEXTHOPS, stats, verdict::Verdict};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// How long a FIB result is trusted.
const CACHE_NS: u64 = 1_000_000_000;

/// Returns the next hop towards `backend` (a pointer into this CPU's cache
/// entry, valid for the rest of the program run), refreshing it when stale.
/// Errors are `DropReason::*`.
#[inline(always)]
pub fn lookup(
    ctx: &XdpContext,
    id: u32,
    backend: &Backend,
    now: u64,
) -> Result<&'static NextHop, DropReason> {
    let cached = NEXTHOPS.get_ptr_mut(id).ok_or(DropReason::NO_ROUTE)?;
    if unsafe { (*cached).expires_ns } <= now
        && let Some(reason) = refresh(ctx, backend, cached, now).dropped()
    {
        return Err(reason);
    }
    Ok(unsafe { &*cached })
}

/// Refreshes `out` with a FIB lookup. Not inlined, so the lookup's 64-byte
/// parameter block lives in its own stack frame.
#[inline(never)]
fn refresh(ctx: &XdpContext, backend: &Backend, out: *mut NextHop, now: u64) -> Verdict {
    match fib_refresh(ctx, backend, out, now) {
        Ok(()) => Verdict::PASS,
        Err(reason) => Verdict::drop(reason),
    }
}

#[inline(always)]
fn fib_refresh(
    ctx: &XdpContext,
    backend: &Backend,
    out: *mut NextHop,
    now: u64,
) -> Result<(), DropReason> {
    stats::global(global_counter::FIB_LOOKUPS);
    let mut p: FibParams = unsafe { zeroed() };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "ifindex is a u32 in xdp_md"
    )]
    let ifindex = ctx.ingress_ifindex() as u32;
    p.ifindex = ifindex;
    if backend.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([
            backend.addr[0],
            backend.addr[1],
            backend.addr[2],
            backend.addr[3],
        ]);
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_4.ipv6_dst =
            unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(backend.addr) };
    }

    // First ask with the largest length: the kernel answers FRAG_NEEDED with
    // the route MTU before it looks at neighbours.
    p.__bindgen_anon_1.tot_len = u16::MAX;
    let mtu = match fib(ctx, &mut p) {
        r if r == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 => unsafe { p.__bindgen_anon_1.mtu_result },
        r if r == BPF_FIB_LKUP_RET_SUCCESS as i64 => u16::MAX,
        r if r == BPF_FIB_LKUP_RET_NO_NEIGH as i64 => return Err(DropReason::NO_NEIGH),
        _ => return Err(DropReason::NO_ROUTE),
    };
    p.__bindgen_anon_1.tot_len = 0;
    p.ifindex = ifindex;
    match fib(ctx, &mut p) {
        r if r == BPF_FIB_LKUP_RET_SUCCESS as i64 => {}
        r if r == BPF_FIB_LKUP_RET_NO_NEIGH as i64 => return Err(DropReason::NO_NEIGH),
        _ => return Err(DropReason::NO_ROUTE),
    }
    unsafe {
        if backend.family == FAMILY_V4 {
            let mut src = [0u8; 16];
            src[..4].copy_from_slice(&p.__bindgen_anon_3.ipv4_src.to_ne_bytes());
            (*out).src = src;
        } else {
            (*out).src = core::mem::transmute::<[u32; 4], [u8; 16]>(p.__bindgen_anon_3.ipv6_src);
        }
        (*out).expires_ns = now + CACHE_NS;
        (*out).ifindex = p.ifindex;
        (*out).mtu = mtu;
        (*out).dmac = p.dmac;
        (*out).smac = p.smac;
    }
    Ok(())
}

#[inline(always)]
fn fib(ctx: &XdpContext, p: &mut FibParams) -> i64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "the struct is 64 bytes"
    )]
    let len = size_of::<FibParams>() as i32;
    unsafe { bpf_fib_lookup(ctx.as_ptr(), p, len, BPF_FIB_LOOKUP_SRC) }
}
