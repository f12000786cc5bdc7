//! The benchmark load generator and its sink (`cargo xtask bench l4`).
//!
//! `lb_gen` runs under `BPF_PROG_TEST_RUN` with live frames: the kernel
//! hands it one frame per iteration and sends it on with the returned action
//! (`XDP_TX`: out of the context's ingress veth to its peer). Live-frame
//! pages are recycled without being re-initialised, with whatever the
//! receivers wrote into them (MACs, TTL, an outer header), so every run
//! writes the whole header (Ethernet, IP with TTL, lengths and checksum, TCP
//! or UDP) from the template in `LB_GEN_CONFIG`, then the flow's source port
//! and source-address word and both checksums. The payload is never written
//! by anything downstream, so the kernel's initial copy of the input frame
//! stays valid. See `lb_common::loadgen` for the flow numbering.
//!
//! With `interval_ps` set, the program paces itself: each run waits for
//! its frame's slot by reading the clock (dropping the frame only when the
//! slot is further away than a few microseconds, i.e. at low rates). The
//! kernel flushes the sent frames to the peer every 64 runs, so the
//! receiver still polls full batches, and hardly any frame is dropped:
//! dropping costs a page-pool return, which contends with the receiver's.
//!
//! `lb_gen_sink` sits on the backends' side of the benchmark topology: it
//! counts TCP, UDP and IPIP/IP6IP6 frames (split by kind) and drops them, and
//! passes everything else (ARP, neighbour discovery) to the stack.

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
    clippy::cast_possible_truncation,
    reason = "flow indexes are below 2^16 per field and lengths below a page, checked by userspace"
)]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    GEN_V4_TCP, GEN_V4_UDP, GEN_V6_UDP, GenConfig, GenState, gen_copy_len, sink_counter,
};
use lb_ebpf::{csum, parse::ptr_at};

/// The frame template and flow parameters (one entry, written by userspace).
#[map(name = "LB_GEN_CONFIG")]
static CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

/// Per CPU: the next flow and the frames written.
#[map(name = "LB_GEN_STATE")]
static STATE: PerCpuArray<GenState> = PerCpuArray::with_max_entries(1, 0);

/// The sink's counters, indexed by `sink_counter::*`.
#[map(name = "LB_SINK_STATS")]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(sink_counter::COUNT, 0);

const ETH_LEN: usize = 14;
/// Offsets in an untagged frame.
const V4_CSUM: usize = ETH_LEN + 10;
const V4_SRC_LOW: usize = ETH_LEN + 12 + 2;
const V6_SRC_LOW: usize = ETH_LEN + 8 + 14;
const V4_L4: usize = ETH_LEN + 20;
const V6_L4: usize = ETH_LEN + 40;

/// Writes one frame of the next flow and returns the configured action.
#[xdp]
pub fn lb_gen(ctx: XdpContext) -> u32 {
    let (Some(cfg), Some(st)) = (CONFIG.get(0), STATE.get_ptr_mut(0)) else {
        return XDP_ABORTED;
    };
    let st = unsafe { &mut *st };
    if cfg.interval_ps != 0 && !due(st, cfg) {
        st.skipped += 1;
        return XDP_DROP;
    }
    let sport = cfg.sport_base.wrapping_add(st.port_idx as u16);
    let addr = cfg.addr_base.wrapping_add(st.addr_idx as u16);
    next_flow(st, cfg);
    let written = match cfg.kind {
        GEN_V4_UDP => {
            write::<{ gen_copy_len(GEN_V4_UDP) / 8 }, false, false>(&ctx, cfg, sport, addr)
        }
        GEN_V4_TCP => {
            write::<{ gen_copy_len(GEN_V4_TCP) / 8 }, false, true>(&ctx, cfg, sport, addr)
        }
        GEN_V6_UDP => {
            write::<{ gen_copy_len(GEN_V6_UDP) / 8 }, true, false>(&ctx, cfg, sport, addr)
        }
        _ => {
            write::<{ gen_copy_len(lb_common::GEN_V6_TCP) / 8 }, true, true>(&ctx, cfg, sport, addr)
        }
    };
    if written.is_none() {
        return XDP_ABORTED;
    }
    st.frames += 1;
    cfg.action
}

/// Most clock reads a frame waits for its slot (some 20 microseconds);
/// past that it is dropped, and the next iteration waits again.
const SPIN: u32 = 1024;
/// Pacing: at most this much lost time (200 µs, in picoseconds) is made up
/// by sending back to back; longer gaps (between test runs) are forgotten.
const CATCH_UP_PS: u64 = 200_000_000;

/// Pacing: waits (reading the clock) until the frame's slot, one interval
/// after the previous frame's; a frame whose slot is further away than the
/// wait allows is dropped instead (only at low rates). Time lost to an
/// interruption is made up, up to [`CATCH_UP_PS`].
#[inline(always)]
fn due(st: &mut GenState, cfg: &GenConfig) -> bool {
    let mut now = unsafe { bpf_ktime_get_ns() }.wrapping_mul(1000);
    let mut spins = 0;
    while now < st.next_ps {
        if spins == SPIN {
            return false;
        }
        spins += 1;
        now = unsafe { bpf_ktime_get_ns() }.wrapping_mul(1000);
    }
    // Behind (the run was interrupted: a flush, an interrupt): catch up by
    // sending back to back, but for at most CATCH_UP_PS of lost time.
    let floor = now.saturating_sub(CATCH_UP_PS);
    let slot = if st.next_ps < floor {
        floor
    } else {
        st.next_ps
    };
    st.next_ps = slot.wrapping_add(cfg.interval_ps);
    true
}

/// Steps to the next flow: ports first, then addresses, wrapping at `flows`.
#[inline(always)]
fn next_flow(st: &mut GenState, cfg: &GenConfig) {
    st.flow += 1;
    st.port_idx += 1;
    if st.flow >= cfg.flows {
        st.flow = 0;
        st.port_idx = 0;
        st.addr_idx = 0;
    } else if st.port_idx >= cfg.sport_span {
        st.port_idx = 0;
        st.addr_idx += 1;
    }
}

/// Copies the template's first `WORDS` 8-byte words over the frame, then sets
/// the flow's source port and address word and both checksums.
#[inline(always)]
fn write<const WORDS: usize, const V6: bool, const TCP: bool>(
    ctx: &XdpContext,
    cfg: &GenConfig,
    sport: u16,
    addr: u16,
) -> Option<()> {
    // Live-frame data starts 8-byte aligned (XDP_PACKET_HEADROOM into the
    // page's data area), and the template is an 8-byte-aligned map value.
    let frame: *mut [u64; WORDS] = ptr_at(ctx, 0)?;
    let l4 = if V6 { V6_L4 } else { V4_L4 };
    let l4_csum = l4 + if TCP { 16 } else { 6 };
    let p = frame.cast::<u8>();
    unsafe {
        *frame = *cfg.hdr.as_ptr().cast::<[u64; WORDS]>();
        let addr_be = addr.to_be_bytes();
        let sport_be = sport.to_be_bytes();
        let low = if V6 { V6_SRC_LOW } else { V4_SRC_LOW };
        *p.add(low) = addr_be[0];
        *p.add(low + 1) = addr_be[1];
        *p.add(l4) = sport_be[0];
        *p.add(l4 + 1) = sport_be[1];
        // Checksums over memory-order words (see `csum`): the varying words
        // are added to the template's partial sums.
        let addr_word = u64::from(u16::from_ne_bytes(addr_be));
        let sport_word = u64::from(u16::from_ne_bytes(sport_be));
        if !V6 {
            let c = csum::fold(u64::from(cfg.ip_sum) + addr_word).to_ne_bytes();
            *p.add(V4_CSUM) = c[0];
            *p.add(V4_CSUM + 1) = c[1];
        }
        let mut c = csum::fold(u64::from(cfg.l4_sum) + addr_word + sport_word);
        if !TCP && c == 0 {
            // UDP sends a computed zero as all ones (zero means "none").
            c = 0xffff;
        }
        let c = c.to_ne_bytes();
        *p.add(l4_csum) = c[0];
        *p.add(l4_csum + 1) = c[1];
    }
    Some(())
}

/// Counts TCP/UDP/IPIP frames and drops them; passes everything else.
#[xdp]
pub fn lb_gen_sink(ctx: XdpContext) -> u32 {
    // Ethernet header and the IPv4 protocol / IPv6 next-header byte.
    let Some(h) = ptr_at::<[u8; 24]>(&ctx, 0) else {
        return passed();
    };
    let h = unsafe { *h };
    let proto = match (h[12], h[13]) {
        (0x08, 0x00) => h[23],
        (0x86, 0xdd) => h[20],
        _ => return passed(),
    };
    let class = match proto {
        4 | 41 => sink_counter::ENCAPSULATED,
        6 | 17 => sink_counter::PLAIN,
        _ => return passed(),
    };
    count(sink_counter::PACKETS, 1);
    count(sink_counter::BYTES, (ctx.data_end() - ctx.data()) as u64);
    count(class, 1);
    XDP_DROP
}

#[inline(always)]
fn passed() -> u32 {
    count(sink_counter::PASSED, 1);
    XDP_PASS
}

#[inline(always)]
fn count(i: u32, n: u64) {
    if let Some(c) = SINK.get_ptr_mut(i) {
        unsafe { *c += n };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
