//! The benchmark load generator's maps (`lb-ebpf`'s `lb-gen` object):
//! program `lb_gen` writes one frame per `BPF_PROG_TEST_RUN` live-frames
//! iteration from [`GenConfig`], cycling through `flows` distinct flows;
//! program `lb_gen_sink` counts what reaches the backends' side and drops it.
//!
//! Flow `i` (`0 <= i < flows`) has source port
//! `sport_base + i % sport_span` and the last 16 bits of its source address
//! `addr_base + i / sport_span`; everything else is the template's. Both
//! checksums are finished from partial sums over the fixed words, so the
//! program adds only the two varying words per frame.

/// Name of the [`GenConfig`] array (one entry).
pub const MAP_GEN_CONFIG: &str = "LB_GEN_CONFIG";
/// Name of the per-CPU [`GenState`] array (one entry).
pub const MAP_GEN_STATE: &str = "LB_GEN_STATE";
/// Name of the per-CPU sink counters (`u64`, indexed by `sink_counter::*`).
pub const MAP_SINK_STATS: &str = "LB_SINK_STATS";

/// Room for the longest template header (Ethernet 14 + IPv6 40 + TCP 20 = 74)
/// rounded up to whole 8-byte words, which is how the program copies it.
pub const GEN_HDR_MAX: usize = 80;
/// At most this many distinct flows.
pub const GEN_MAX_FLOWS: u32 = 1_000_000;

/// [`GenConfig::kind`]: IPv4 UDP.
pub const GEN_V4_UDP: u32 = 0;
/// [`GenConfig::kind`]: IPv4 TCP.
pub const GEN_V4_TCP: u32 = 1;
/// [`GenConfig::kind`]: IPv6 UDP.
pub const GEN_V6_UDP: u32 = 2;
/// [`GenConfig::kind`]: IPv6 TCP.
pub const GEN_V6_TCP: u32 = 3;

/// Header length (Ethernet + IP + L4) of a [`GenConfig::kind`].
#[must_use]
pub const fn gen_header_len(kind: u32) -> usize {
    match kind {
        GEN_V4_UDP => 14 + 20 + 8,
        GEN_V4_TCP => 14 + 20 + 20,
        GEN_V6_UDP => 14 + 40 + 8,
        _ => 14 + 40 + 20,
    }
}

/// Bytes the program copies from the template for a kind: the header rounded
/// up to 8-byte words. Frames must be at least this long.
#[must_use]
pub const fn gen_copy_len(kind: u32) -> usize {
    gen_header_len(kind).next_multiple_of(8)
}

/// The single entry of [`MAP_GEN_CONFIG`].
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenConfig {
    /// Ethernet, IP and TCP/UDP header of flow 0 as on the wire, followed by
    /// the first payload bytes up to [`gen_copy_len`]: written into every
    /// frame (live-frame pages are recycled with whatever the receivers
    /// wrote into them).
    pub hdr: [u8; GEN_HDR_MAX],
    /// `GEN_V4_UDP`, `GEN_V4_TCP`, `GEN_V6_UDP` or `GEN_V6_TCP`.
    pub kind: u32,
    /// Distinct flows, `1..=GEN_MAX_FLOWS`.
    pub flows: u32,
    /// Source ports per source address, `1..=65535`.
    pub sport_span: u32,
    /// First source port (host order).
    pub sport_base: u16,
    /// Last 16 bits of the first source address (host order).
    pub addr_base: u16,
    /// IPv4 header checksum input: the one's-complement sum of its 16-bit
    /// words in memory order, with the checksum and the varying address
    /// word zero (unfolded). Unused for IPv6.
    pub ip_sum: u32,
    /// TCP/UDP checksum input (pseudo-header, header and payload) the same
    /// way, with the checksum, the source port and the varying address word
    /// zero.
    pub l4_sum: u32,
    /// XDP action for every frame: `XDP_TX` (out to the veth peer) or
    /// `XDP_PASS` (into the interface's own stack).
    pub action: u32,
    pub _pad: u32,
    /// Pacing: picoseconds between frames (`10^12 / rate`); 0 sends every
    /// frame as fast as the kernel runs the program.
    pub interval_ps: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            hdr: [0; GEN_HDR_MAX],
            kind: GEN_V4_UDP,
            flows: 1,
            sport_span: 1,
            sport_base: 0,
            addr_base: 0,
            ip_sum: 0,
            l4_sum: 0,
            action: 0,
            _pad: 0,
            interval_ps: 0,
        }
    }
}

/// The per-CPU entry of [`MAP_GEN_STATE`]: where this CPU is in the flow
/// cycle, and how many frames it wrote.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenState {
    /// Index of the next flow, `0..flows`.
    pub flow: u32,
    /// Source-port index of the next flow, `0..sport_span`.
    pub port_idx: u32,
    /// Address index of the next flow.
    pub addr_idx: u32,
    pub _pad: u32,
    /// Frames written (and sent with the configured action).
    pub frames: u64,
    /// Pacing: when the next frame is due, in picoseconds of
    /// `bpf_ktime_get_ns`.
    pub next_ps: u64,
    /// Pacing: frames dropped because their slot was too far away.
    pub skipped: u64,
}

/// Indexes into [`MAP_SINK_STATS`].
pub mod sink_counter {
    /// IPv4/IPv6 TCP, UDP or IPIP frames counted (and dropped).
    pub const PACKETS: u32 = 0;
    /// Their bytes (Ethernet header included).
    pub const BYTES: u32 = 1;
    /// Of those, IPIP / IP6IP6 (IP protocol 4 or 41).
    pub const ENCAPSULATED: u32 = 2;
    /// Of those, plain TCP or UDP.
    pub const PLAIN: u32 = 3;
    /// Anything else (ARP, neighbour discovery...), passed to the stack.
    pub const PASSED: u32 = 4;
    pub const COUNT: u32 = 8;
}

const _: () = assert!(size_of::<GenConfig>() == GEN_HDR_MAX + 40);
const _: () = assert!(size_of::<GenState>() == 40);
const _: () = assert!(gen_copy_len(GEN_V6_TCP) <= GEN_HDR_MAX);

#[cfg(feature = "user")]
mod pod {
    use super::{GenConfig, GenState};

    // SAFETY: `#[repr(C)]`, only integer and byte-array fields, padding
    // spelled out, so any bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for GenConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GenState {}
}
