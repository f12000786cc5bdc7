//! Map names, sizes, keys and values.

use core::mem::size_of;

/// Version of the pinned map layout. A binary that finds pinned maps of
/// another version refuses to adopt them (see `lbd --cleanup`).
pub const LAYOUT_VERSION: u32 = 5;

// ---- Address families and protocols (our own tags, not AF_* values) ----

/// `family` value of an IPv4 key.
pub const FAMILY_V4: u8 = 4;
/// `family` value of an IPv6 key.
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

// ---- Map names (also the file names of the pins under `pin_path`) ----

pub const MAP_VIPS: &str = "LB_VIPS";
pub const MAP_VIP_ADDRS: &str = "LB_VIP_ADDRS";
pub const MAP_POOLS: &str = "LB_POOLS";
pub const MAP_RINGS: &str = "LB_RINGS";
pub const MAP_BACKENDS: &str = "LB_BACKENDS";
pub const MAP_FLOWS: &str = "LB_FLOWS";
pub const MAP_SETTINGS: &str = "LB_SETTINGS";
pub const MAP_NEXTHOPS: &str = "LB_NEXTHOPS";
pub const MAP_TENANT_STATS: &str = "LB_TENANT_STATS";
pub const MAP_TENANT_DROPS: &str = "LB_TENANT_DROPS";
pub const MAP_VIP_STATS: &str = "LB_VIP_STATS";
pub const MAP_BACKEND_STATS: &str = "LB_BACKEND_STATS";
pub const MAP_GLOBAL_STATS: &str = "LB_GLOBAL_STATS";
pub const MAP_ACL: &str = "LB_ACL";
pub const MAP_TENANT_POLICY: &str = "LB_TENANT_POL";
pub const MAP_VIP_POLICY: &str = "LB_VIP_POLICY";
pub const MAP_RATES: &str = "LB_RATES";
pub const MAP_SNI: &str = "LB_SNI";

/// Every map the balancer pins, for cleanup and layout checks.
pub const ALL_MAPS: [&str; 18] = [
    MAP_VIPS,
    MAP_VIP_ADDRS,
    MAP_POOLS,
    MAP_RINGS,
    MAP_BACKENDS,
    MAP_FLOWS,
    MAP_SETTINGS,
    MAP_NEXTHOPS,
    MAP_TENANT_STATS,
    MAP_TENANT_DROPS,
    MAP_VIP_STATS,
    MAP_BACKEND_STATS,
    MAP_GLOBAL_STATS,
    MAP_ACL,
    MAP_TENANT_POLICY,
    MAP_VIP_POLICY,
    MAP_RATES,
    MAP_SNI,
];

// ---- Capacities ----

/// Tenant ids are indexes into the per-tenant counter arrays.
pub const MAX_TENANTS: u32 = 16_384;
pub const MAX_VIPS: u32 = 65_536;
pub const MAX_POOLS: u32 = 65_536;
/// Backend ids are indexes into [`MAP_BACKENDS`] and the per-backend arrays.
pub const MAX_BACKENDS: u32 = 65_536;
/// Ring slots (backend ids, `u32`) in the arena shared by every pool's
/// Maglev ring (64 MiB: e.g. 10,000 pools of 1021 slots, or 250 pools of
/// 65537). Each pool needs `ring_size` slots, twice while its ring is
/// replaced.
///
/// The kernel rounds array elements up to 8 bytes, so the map is an array of
/// `u64` holding two slots each: slot `s` is the low (`s` even) or high half
/// of element `s / 2`. In memory (little endian) that is exactly a packed
/// `u32` array, which is how `lbd` writes it through `mmap`.
pub const RING_ARENA_ENTRIES: u32 = 1 << 24;
/// Elements of the `LB_RINGS` map (two ring slots each).
pub const RING_ARENA_ELEMENTS: u32 = RING_ARENA_ENTRIES / 2;
/// Default flow-table capacity of the node (the sum over the tenants'
/// tables); `node.flow_table_size` overrides it.
pub const DEFAULT_FLOW_TABLE_ENTRIES: u32 = 1 << 20;
/// The smallest flow table a tenant gets: below this the kernel's LRU
/// evicts in batches comparable to the table itself. With the default node
/// size, every one of `MAX_TENANTS - 1` tenants still gets this many.
pub const MIN_TENANT_FLOWS: u32 = 64;
/// Default Maglev ring size: prime, good to ~160 backends at 1% imbalance.
pub const DEFAULT_RING_SIZE: u32 = 16_381;
/// Ring slot value meaning "no backend" (an empty pool).
pub const RING_EMPTY: u32 = u32::MAX;

// ---- Keys and values ----

/// Key of [`MAP_VIPS`]: a virtual service. `port == 0` is the any-port
/// wildcard, tried when the exact port has no entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    /// Network order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// Network order (the wire bytes).
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`], [`PROTO_UDP`]).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// [`VipInfo::flags`]: the VIP is served by `lbd` on this node (L7): after
/// packet policy the XDP program passes it to the local stack.
pub const VIP_F_LOCAL: u32 = 1;

/// Value of [`MAP_VIPS`]: who owns the VIP and where it goes. Host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    pub tenant_id: u32,
    pub pool_id: u32,
    /// Index into [`MAP_VIP_STATS`].
    pub vip_id: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
}

/// Key of [`MAP_VIP_ADDRS`]: an address that carries at least one VIP, so
/// that packets without ports (fragments, ICMP errors) can be recognised.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipAddrKey {
    /// Network order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of [`MAP_POOLS`] (keyed by pool id): where the pool's Maglev ring
/// lives in [`MAP_RINGS`]. Replaced as a whole (the map is allocated without
/// preallocation, so the kernel swaps entries under RCU): this is what makes
/// ring replacement atomic for the XDP program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolInfo {
    /// First slot of the ring in the arena.
    pub ring_offset: u32,
    /// Prime number of slots, fixed for the pool's lifetime.
    pub ring_size: u32,
    pub tenant_id: u32,
    /// Bumped on every ring replacement (diagnostics).
    pub generation: u32,
}

/// [`Backend::state`]: slot unused.
pub const BACKEND_UNUSED: u8 = 0;
/// [`Backend::state`]: serving; in its pool's ring when its weight is > 0.
pub const BACKEND_UP: u8 = 1;
/// [`Backend::state`]: weight 0: out of the ring, established flows stay.
pub const BACKEND_DRAINING: u8 = 2;
/// [`Backend::state`]: failed health checks: out of the ring, and flow-table
/// hits on it are re-steered.
pub const BACKEND_DOWN: u8 = 3;

/// Value of [`MAP_BACKENDS`] (an array indexed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Network order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// The tenant owning the backend's pool; the XDP program drops a packet
    /// whose VIP belongs to another tenant (defence in depth).
    pub tenant_id: u32,
    pub pool_id: u32,
    /// Bumped each time the slot is released, so flow entries made for a
    /// previous occupant of the slot never match the new one.
    pub generation: u32,
    /// The configured port (host order), 0 when the backend has none. Part
    /// of the backend's identity in the Maglev permutation, kept here so
    /// `lbctl --maps` can rebuild a ring without the configuration.
    pub port: u16,
    /// The configured weight (0 = draining).
    pub weight: u16,
    pub family: u8,
    /// `BACKEND_*`.
    pub state: u8,
    pub _pad: [u8; 2],
}

/// Key of [`MAP_FLOWS`]: a flow as seen from the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Client address, network order.
    pub src: [u8; 16],
    /// VIP address, network order.
    pub dst: [u8; 16],
    /// Network order.
    pub sport: u16,
    /// Network order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of [`MAP_FLOWS`]. A hit counts only when the backend slot still has
/// this `generation`, still belongs to `pool_id` (the VIP's current pool) and
/// is not down; otherwise the flow is re-steered through the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend_id: u32,
    pub pool_id: u32,
    pub generation: u32,
    pub tenant_id: u32,
    /// `bpf_ktime_get_coarse_ns` (`CLOCK_MONOTONIC_COARSE`) of the last packet.
    pub last_seen_ns: u64,
}

/// [`Settings::forwarding`]: IPIP / IP6IP6 encapsulation.
pub const FORWARD_IPIP: u8 = 0;
/// [`Settings::forwarding`]: destination MAC rewrite on the same L2 segment.
pub const FORWARD_L2DSR: u8 = 1;

/// The single entry (index 0) of [`MAP_SETTINGS`]: node-wide knobs that
/// `lbd` may change without reloading the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// A flow-table entry idle for longer than this is treated as a miss.
    pub flow_idle_ns: u64,
    /// Seed of the flow hash; the same on every node behind one ECMP group.
    pub hash_seed: u32,
    /// `FORWARD_*`.
    pub forwarding: u8,
    /// Layout version of the pinned maps ([`LAYOUT_VERSION`]).
    pub layout_version: u8,
    pub _pad: [u8; 2],
}

/// Value of [`MAP_NEXTHOPS`] (per-CPU array indexed by backend id): the
/// result of `bpf_fib_lookup` towards a backend, cached for about a second
/// so the per-packet path does not pay for a FIB lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// `bpf_ktime_get_coarse_ns` after which the entry must be refreshed.
    pub expires_ns: u64,
    /// Our source address towards the backend (outer IP source), network order.
    pub src: [u8; 16],
    pub ifindex: u32,
    /// MTU of the route towards the backend.
    pub mtu: u16,
    pub _pad: u16,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub _pad2: [u8; 4],
}

/// Per-CPU traffic counters, one per tenant, VIP and backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows that went through the ring (flow-table misses).
    pub new_flows: u64,
    /// Packets dropped for any reason (reasons are in [`MAP_TENANT_DROPS`]).
    pub drops: u64,
}

/// Why the balancer dropped (or answered instead of forwarding) a packet:
/// the index into [`DropCounters::by_reason`]. One `u32` wide
/// (`#[repr(transparent)]`), so the eBPF code keeps it in one register.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DropReason(u32);

impl DropReason {
    /// A header was truncated or inconsistent (bad IHL, lengths).
    pub const MALFORMED: Self = Self(0);
    /// The VIP's pool is missing or has no backend in its ring.
    pub const NO_BACKEND: Self = Self(1);
    /// The ring or flow table named a backend of another tenant.
    pub const TENANT_MISMATCH: Self = Self(2);
    /// `bpf_fib_lookup` found no route to the backend.
    pub const NO_ROUTE: Self = Self(3);
    /// The backend's MAC is not resolved yet.
    pub const NO_NEIGH: Self = Self(4);
    /// An IP fragment addressed to a VIP.
    pub const FRAGMENT: Self = Self(5);
    /// Too big once encapsulated and not allowed to fragment: answered with
    /// ICMP fragmentation-needed / packet-too-big.
    pub const TOO_BIG: Self = Self(6);
    /// Too big once encapsulated, DF clear: dropped.
    pub const TOO_BIG_NO_DF: Self = Self(7);
    /// Growing or shrinking the packet failed.
    pub const ENCAP_FAILED: Self = Self(8);
    /// An ICMP error about a VIP flow whose flow-table entry is stale (its
    /// backend is gone, down or moved).
    pub const ICMP_NO_BACKEND: Self = Self(9);
    /// An IPv6 packet for a VIP address with an extension header the
    /// balancer does not walk (hop-by-hop, routing, destination options).
    pub const UNSUPPORTED: Self = Self(10);
    /// The source address is not allowed by the tenant's ACL.
    pub const ACL_DENY: Self = Self(11);
    /// Over the tenant's packets or bytes per second.
    pub const TENANT_RATE: Self = Self(12);
    /// Over the VIP's packets or bytes per second.
    pub const VIP_RATE: Self = Self(13);
    /// A TCP SYN over the VIP's new-connection rate.
    pub const SYN_RATE: Self = Self(14);
    /// A new flow over the tenant's new-flow rate: dropped before it takes
    /// a flow-table entry, so one tenant cannot evict another's flows.
    pub const NEW_FLOW_RATE: Self = Self(15);
    /// An ICMP error quoting a VIP's packet but addressed elsewhere than
    /// that VIP: not what a router sends, so a forgery.
    pub const ICMP_DST_MISMATCH: Self = Self(16);
    /// An ICMP error about a VIP flow the flow table does not hold: no
    /// backend sent the quoted packet.
    pub const ICMP_NO_FLOW: Self = Self(17);
    /// Number of reasons; the size of [`DropCounters::by_reason`].
    pub const COUNT: usize = 18;
    /// Every reason, in counter order.
    pub const ALL: [Self; Self::COUNT] = {
        let mut all = [Self(0); Self::COUNT];
        let mut i = 0;
        while i < Self::COUNT {
            #[expect(clippy::cast_possible_truncation, reason = "i < COUNT")]
            {
                all[i] = Self(i as u32);
            }
            i += 1;
        }
        all
    };

    /// The reason's counter in [`DropCounters::by_reason`].
    #[must_use]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The reason as one `u32`, for a BPF function's scalar return.
    #[must_use]
    pub const fn code(self) -> u32 {
        self.0
    }

    /// The reason whose [`DropReason::code`] is `code`, if any.
    #[must_use]
    pub const fn from_code(code: u32) -> Option<Self> {
        if (code as usize) < Self::COUNT {
            Some(Self(code))
        } else {
            None
        }
    }

    /// The reason's name in metrics and `lbctl`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "malformed",
            1 => "no_backend",
            2 => "tenant_mismatch",
            3 => "no_route",
            4 => "no_neigh",
            5 => "fragment",
            6 => "too_big",
            7 => "too_big_no_df",
            8 => "encap_failed",
            9 => "icmp_no_backend",
            10 => "unsupported",
            11 => "acl_deny",
            12 => "tenant_rate_limit",
            13 => "vip_rate_limit",
            14 => "syn_rate_limit",
            15 => "new_flow_limit",
            16 => "icmp_dst_mismatch",
            17 => "icmp_no_flow",
            _ => "unknown",
        }
    }
}

/// Per-CPU drop counters by reason, one per tenant ([`MAP_TENANT_DROPS`]).
/// Index [`NO_TENANT`] holds drops that belong to no tenant (malformed
/// packets whose VIP could not be determined).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropCounters {
    pub by_reason: [u64; DropReason::COUNT],
}

impl Default for DropCounters {
    fn default() -> Self {
        Self {
            by_reason: [0; DropReason::COUNT],
        }
    }
}

/// Tenant slot for drops that cannot be attributed to a tenant; tenant ids
/// handed out by `lbd` start at 1.
pub const NO_TENANT: u32 = 0;

/// Node-wide counters ([`MAP_GLOBAL_STATS`], a per-CPU `u64` array).
pub mod global_counter {
    /// Every packet the balancer looked at.
    pub const RX: u32 = 0;
    /// Not for a VIP: passed untouched.
    pub const PASS_NOT_VIP: u32 = 1;
    /// Malformed packets (also per tenant when the VIP is known).
    pub const MALFORMED: u32 = 2;
    /// Packets forwarded to a backend with `XDP_TX`.
    pub const FORWARDED: u32 = 3;
    /// VIP packets of local (L7) VIPs passed to the stack.
    pub const PASS_LOCAL: u32 = 4;
    /// IP fragments not addressed to a VIP, passed.
    pub const FRAGMENT_PASSED: u32 = 5;
    /// ICMP errors about a VIP flow forwarded to the flow's backend.
    pub const ICMP_FORWARDED: u32 = 6;
    /// ICMP fragmentation-needed / packet-too-big answers sent to clients.
    pub const ICMP_TOO_BIG_SENT: u32 = 7;
    /// Flow-table hits that were stale (backend gone, down or moved).
    pub const FLOW_STALE: u32 = 8;
    /// Next-hop cache refreshes (`bpf_fib_lookup` calls).
    pub const FIB_LOOKUPS: u32 = 9;
    /// Not IPv4 or IPv6 (ARP, LLDP, other EtherTypes): passed untouched.
    pub const PASS_NOT_IP: u32 = 10;
    pub const COUNT: u32 = 16;
    /// Names for metrics and `lbctl`, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "rx",
        "pass_not_vip",
        "malformed",
        "forwarded",
        "pass_local",
        "fragment_passed",
        "icmp_forwarded",
        "icmp_too_big_sent",
        "flow_stale",
        "fib_lookups",
        "pass_not_ip",
        "reserved11",
        "reserved12",
        "reserved13",
        "reserved14",
        "reserved15",
    ];
}

/// Name of the benchmark-only map holding [`BenchTemplate`] (not pinned).
pub const MAP_BENCH: &str = "LB_BENCH";
/// Size of the benchmark packet template: every benchmark frame is padded to it.
pub const BENCH_FRAME_LEN: usize = 64;

/// The single entry of [`MAP_BENCH`]: the frame the benchmark wrappers
/// (`lb_bench`, `lb_bench_null`) put back after each `BPF_PROG_TEST_RUN`
/// iteration, so every iteration measures the same path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchTemplate {
    pub frame: [u8; BENCH_FRAME_LEN],
    /// Non-zero: write `counter` into the TCP/UDP source port and the last
    /// two bytes of the source address after each restore, so every
    /// iteration is a new flow (ring lookup and insert).
    pub vary_sport: u32,
    /// Incremented by the wrapper (per iteration, when `vary_sport`).
    pub counter: u32,
}

impl Default for BenchTemplate {
    fn default() -> Self {
        Self {
            frame: [0; BENCH_FRAME_LEN],
            vary_sport: 0,
            counter: 0,
        }
    }
}

const _: () = assert!(size_of::<BenchTemplate>() == BENCH_FRAME_LEN + 8);
/// Data of a [`MAP_ACL`] key (an LPM trie): the prefix length counts bits
/// from the start of this struct, so the tenant id and family (64 bits)
/// always match exactly and the address's prefix follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclKey {
    /// Big-endian (LPM tries compare bytes in order).
    pub tenant_be: [u8; 4],
    pub family: u8,
    pub _pad: [u8; 3],
    /// Network order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
}

/// Capacity of [`MAP_ACL`] (prefixes over all tenants).
pub const MAX_ACL_ENTRIES: u32 = 65_536;

/// Bits of [`AclKey`] before the address.
pub const ACL_KEY_FIXED_BITS: u32 = 64;
/// [`MAP_ACL`] value: let the packet through.
pub const ACL_ALLOW: u8 = 1;
/// [`MAP_ACL`] value: drop it.
pub const ACL_DENY: u8 = 2;

/// [`TenantPolicy::flags`]: the tenant has ACL entries; look them up.
pub const POLICY_F_ACL: u32 = 1;
/// [`TenantPolicy::flags`]: sources matching no ACL entry are denied (the
/// tenant has an allow list).
pub const POLICY_F_DEFAULT_DENY: u32 = 2;

/// Length of a rate-limit window: limits are enforced per window, each
/// allowing `ceil(rate / 10)` (a burst of at most a tenth of a second).
pub const RATE_WINDOW_NS: u64 = 100_000_000;

/// Value of [`MAP_TENANT_POLICY`] (an array indexed by tenant id). Budgets
/// are per [`RATE_WINDOW_NS`]; 0 = unlimited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantPolicy {
    pub packets_per_window: u64,
    pub bytes_per_window: u64,
    pub new_flows_per_window: u64,
    /// `POLICY_F_*`.
    pub flags: u32,
    pub _pad: u32,
}

/// Value of [`MAP_VIP_POLICY`] (an array indexed by VIP id). Budgets are
/// per [`RATE_WINDOW_NS`]; 0 = unlimited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipPolicy {
    pub packets_per_window: u64,
    pub bytes_per_window: u64,
    pub syns_per_window: u64,
}

/// One rate limiter's state in [`MAP_RATES`] (a shared, not per-CPU,
/// array): the current window and what it used. CPUs add with atomic adds;
/// the reset at a window change is a plain store, so a packet counted by
/// another CPU in the same instant can be lost: the documented tolerance is
/// one packet per CPU per window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub window: u64,
    pub used: u64,
}

/// Entries of [`MAP_SNI`]: the L7 host names of every tenant.
pub const MAX_SNI_NAMES: u32 = 262_144;

/// A tenant's rate limiters in [`MAP_RATES`], by slot.
pub mod tenant_rate {
    /// Packets to the tenant's VIPs.
    pub const PACKETS: u32 = 0;
    /// Bytes to the tenant's VIPs.
    pub const BYTES: u32 = 1;
    /// New flows (flow-table inserts).
    pub const NEW_FLOWS: u32 = 2;
    /// Slots per tenant.
    pub const COUNT: u32 = 3;
}

/// A VIP's rate limiters in [`MAP_RATES`], by slot.
pub mod vip_rate {
    /// Packets to the VIP.
    pub const PACKETS: u32 = 0;
    /// Bytes to the VIP.
    pub const BYTES: u32 = 1;
    /// TCP SYNs (new connections) to the VIP.
    pub const SYNS: u32 = 2;
    /// Slots per VIP.
    pub const COUNT: u32 = 3;
}

/// Rate limiters per tenant in [`MAP_RATES`] ([`tenant_rate`]).
pub const RATES_PER_TENANT: u32 = tenant_rate::COUNT;
/// Rate limiters per VIP in [`MAP_RATES`] ([`vip_rate`]), after the
/// tenants' block.
pub const RATES_PER_VIP: u32 = vip_rate::COUNT;
/// Entries of [`MAP_RATES`].
pub const RATE_ENTRIES: u32 = MAX_TENANTS * RATES_PER_TENANT + MAX_VIPS * RATES_PER_VIP;

/// The [`MAP_RATES`] entry of `tenant`'s limiter `slot` ([`tenant_rate`]).
#[must_use]
pub const fn tenant_rate_index(tenant: u32, slot: u32) -> u32 {
    tenant * RATES_PER_TENANT + slot
}

/// The [`MAP_RATES`] entry of `vip`'s limiter `slot` ([`vip_rate`]).
#[must_use]
pub const fn vip_rate_index(vip: u32, slot: u32) -> u32 {
    MAX_TENANTS * RATES_PER_TENANT + vip * RATES_PER_VIP + slot
}

const _: () = assert!(size_of::<AclKey>() == 24);
const _: () = assert!(size_of::<TenantPolicy>() == 32);
const _: () = assert!(size_of::<VipPolicy>() == 24);
const _: () = assert!(size_of::<RateState>() == 16);
const _: () = assert!(size_of::<VipKey>() == 20);
const _: () = assert!(size_of::<VipInfo>() == 16);
const _: () = assert!(size_of::<VipAddrKey>() == 20);
const _: () = assert!(size_of::<PoolInfo>() == 16);
const _: () = assert!(size_of::<Backend>() == 36);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FlowValue>() == 24);
const _: () = assert!(size_of::<Settings>() == 16);
const _: () = assert!(size_of::<NextHop>() == 48);
const _: () = assert!(size_of::<TrafficCounters>() == 32);
const _: () = assert!(size_of::<DropCounters>() == 8 * DropReason::COUNT);

#[cfg(feature = "user")]
mod pod {
    use super::{
        AclKey, Backend, BenchTemplate, DropCounters, FlowKey, FlowValue, NextHop, PoolInfo,
        RateState, Settings, TenantPolicy, TrafficCounters, VipAddrKey, VipInfo, VipKey, VipPolicy,
    };

    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: `#[repr(C)]`, only integer and byte-array fields, every
            // padding byte is an explicit field, so any bit pattern is valid
            // and the type has no uninitialised bytes.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        AclKey,
        RateState,
        TenantPolicy,
        VipPolicy,
        BenchTemplate,
        VipKey,
        VipInfo,
        VipAddrKey,
        PoolInfo,
        Backend,
        FlowKey,
        FlowValue,
        Settings,
        NextHop,
        TrafficCounters,
        DropCounters,
    );
}

#[cfg(test)]
mod tests {
    use super::DropReason;

    #[test]
    fn every_drop_reason_has_its_own_name_and_counter() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(DropReason::from_code(r.code()), Some(*r));
            assert_ne!(r.name(), "unknown", "reason {i}");
            for other in &DropReason::ALL[..i] {
                assert_ne!(r.name(), other.name());
            }
        }
        let past = u32::try_from(DropReason::COUNT).expect("small");
        assert_eq!(DropReason::from_code(past), None);
    }
}
