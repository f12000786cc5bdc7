//! The benchmarks' programs. `lb_drop` (drop everything) and `lb_bounce`
//! (swap the MACs, send back) are the floor and ceiling any XDP program is
//! measured against. `lb_bench` and `lb_bench_null` make
//! `BPF_PROG_TEST_RUN` with `repeat` measure the real path: the kernel runs
//! every iteration on the same buffer without restoring it, so after the
//! balancer encapsulates a packet the next iteration would see its own
//! output. `lb_bench` runs the
//! balancer and then puts the template frame back; `lb_bench_null` only puts
//! it back, so its cost calibrates the restore.

use aya_ebpf::{
    EbpfContext as _,
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    helpers::bpf_xdp_adjust_head,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::BENCH_FRAME_LEN;
use lb_ebpf::parse::ptr_at;
use network_types::eth::EthHdr;

use crate::maps::BENCH;

/// Offset of the TCP/UDP source port in the (untagged IPv4 or IPv6) template.
const SPORT_V4: usize = 14 + 20;
const SPORT_V6: usize = 14 + 40;
/// Offset of the last two bytes of the source address.
const SRC_TAIL_V4: usize = 14 + 12 + 2;
const SRC_TAIL_V6: usize = 14 + 8 + 14;

/// Benchmark wrapper: the balancer, then the template frame is put back
/// (see `bench`). Returns the balancer's action so the run proves its path.
#[xdp]
pub fn lb_bench(ctx: XdpContext) -> u32 {
    let action = crate::balance(&ctx);
    restore(&ctx);
    action
}

/// Benchmark calibration: only puts the template frame back.
#[xdp]
pub fn lb_bench_null(ctx: XdpContext) -> u32 {
    restore(&ctx);
    XDP_TX
}

/// The test-run floor for benchmarks: drops everything.
#[xdp]
pub fn lb_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

/// The forwarding ceiling for benchmarks: swaps the MACs and sends the frame
/// back out (`XDP_TX`), the least any XDP forwarder can do.
#[xdp]
pub fn lb_bounce(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return XDP_DROP;
    };
    unsafe { core::mem::swap(&mut (*eth).dst_addr, &mut (*eth).src_addr) };
    XDP_TX
}

#[inline(always)]
fn restore(ctx: &XdpContext) {
    let Some(t) = BENCH.get_ptr_mut(0) else {
        return;
    };
    // The balancer only grows the head (encapsulation): shrink it back.
    let cur = ctx.data_end() - ctx.data();
    if cur > BENCH_FRAME_LEN {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_possible_wrap,
            reason = "at most 40 bytes"
        )]
        let grown = (cur - BENCH_FRAME_LEN) as i32;
        if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), grown) } != 0 {
            return;
        }
    }
    let Some(frame) = ptr_at::<[u8; BENCH_FRAME_LEN]>(ctx, 0) else {
        return;
    };
    unsafe {
        *frame = (*t).frame;
        if (*t).vary_sport != 0 {
            // A new 5-tuple every run: the low 16 bits of the counter in the
            // source port, the high 16 in the last two bytes of the source
            // address (the balancer does not check checksums).
            (*t).counter = (*t).counter.wrapping_add(1);
            let counter = (*t).counter.to_be_bytes();
            let v6 = (*frame)[12] == 0x86;
            let sport = if v6 { SPORT_V6 } else { SPORT_V4 };
            let src_tail = if v6 { SRC_TAIL_V6 } else { SRC_TAIL_V4 };
            if let Some(p) = ptr_at::<[u8; 2]>(ctx, sport) {
                *p = [counter[2], counter[3]];
            }
            if let Some(p) = ptr_at::<[u8; 2]>(ctx, src_tail) {
                *p = [counter[0], counter[1]];
            }
        }
    }
}
