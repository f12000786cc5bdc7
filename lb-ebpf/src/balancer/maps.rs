//! The balancer's maps. Layouts and byte order are documented on the types in
//! `lb-common`; `lbd` creates and pins them (the object declares no pinning,
//! so tests can load private copies).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::{self, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use lb_common::{
    AclKey, Backend, BenchTemplate, DropCounters, FlowKey, FlowValue, MAX_ACL_ENTRIES,
    MAX_BACKENDS, MAX_POOLS, MAX_SNI_NAMES, MAX_TENANTS, MAX_VIPS, MIN_TENANT_FLOWS, NextHop,
    PoolInfo, RATE_ENTRIES, RING_ARENA_ELEMENTS, RateState, Settings, TenantPolicy,
    TrafficCounters, VipAddrKey, VipInfo, VipKey, VipPolicy, global_counter,
};
use lb_ebpf::parse::Packet;

/// VIP (address, port, protocol) -> owner tenant, pool and flags. No
/// preallocation: an update replaces the entry under RCU, so a reader never
/// sees a half-written value.
#[map(name = "LB_VIPS")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(MAX_VIPS, BPF_F_NO_PREALLOC);

/// Addresses that carry a VIP -> tenant id, for packets without ports.
#[map(name = "LB_VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<VipAddrKey, u32> =
    HashMap::with_max_entries(MAX_VIPS, BPF_F_NO_PREALLOC);

/// The SNI-derived tenant hash: FNV-1a 64 of a normalised L7 host name
/// (lower case, no trailing dot; `*.x` for wildcards) -> tenant id. Written
/// by `lbd` from the configuration and read by the L7 tier and `lbctl sni`,
/// so one tenant id keys the L7 path and the XDP maps. The program itself
/// never reads it (XDP never parses TLS).
#[map(name = "LB_SNI")]
pub static SNI: HashMap<u64, u32> = HashMap::with_max_entries(MAX_SNI_NAMES, BPF_F_NO_PREALLOC);

/// Pool id -> location of its ring. Swapped whole (RCU) to replace a ring.
#[map(name = "LB_POOLS")]
pub static POOLS: HashMap<u32, PoolInfo> = HashMap::with_max_entries(MAX_POOLS, BPF_F_NO_PREALLOC);

/// The ring arena: every pool's Maglev ring, as backend ids. Memory-mapped
/// by `lbd`, which writes a new ring into a free region and then swaps the
/// pool's entry, so no syscall per element and no half-written ring.
#[map(name = "LB_RINGS")]
pub static RINGS: Array<u64> = Array::with_max_entries(RING_ARENA_ELEMENTS, BPF_F_MMAPABLE);

/// Backend id -> address, owner and state.
#[map(name = "LB_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// One tenant's flow table: 5-tuple -> backend, so established flows keep
/// their backend when a ring changes. An LRU of its own per tenant, so a
/// tenant's new flows only ever evict that tenant's old ones. (The size here
/// is the template's: `lbd` creates each tenant's table with the tenant's
/// `max_flows`.)
pub type FlowTable = btf_maps::LruHashMap<FlowKey, FlowValue, { MIN_TENANT_FLOWS as usize }>;

/// Tenant id -> the tenant's flow table. `lbd` creates a table for every
/// tenant with an L4 VIP; a tenant without one gets no stickiness.
#[btf_map(name = "LB_FLOWS")]
pub static FLOWS: ArrayOfMaps<FlowTable, { MAX_TENANTS as usize }> = ArrayOfMaps::new();

/// Node-wide settings, index 0.
#[map(name = "LB_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Per-CPU cache of the FIB lookup towards each backend.
#[map(name = "LB_NEXTHOPS")]
pub static NEXTHOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "LB_TENANT_STATS")]
pub static TENANT_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_TENANTS, 0);

#[map(name = "LB_TENANT_DROPS")]
pub static TENANT_DROPS: PerCpuArray<DropCounters> = PerCpuArray::with_max_entries(MAX_TENANTS, 0);

#[map(name = "LB_VIP_STATS")]
pub static VIP_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map(name = "LB_BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "LB_GLOBAL_STATS")]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(global_counter::COUNT, 0);

/// Benchmarks only: the frame `lb_bench` restores after each iteration.
#[map(name = "LB_BENCH")]
pub static BENCH: Array<BenchTemplate> = Array::with_max_entries(1, 0);

/// Per-CPU scratch space for the parsed packet: keeps it off the BPF stack,
/// which the verifier limits to 512 bytes across nested calls.
#[map(name = "LB_SCRATCH")]
pub static SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// Per-tenant source ACLs: (tenant, family, source prefix) -> allow/deny.
#[map(name = "LB_ACL")]
pub static ACL: LpmTrie<AclKey, u8> = LpmTrie::with_max_entries(MAX_ACL_ENTRIES, 0);

/// Tenant id -> packet policy (rate budgets per window, ACL flags).
#[map(name = "LB_TENANT_POL")]
pub static TENANT_POLICY: Array<TenantPolicy> = Array::with_max_entries(MAX_TENANTS, 0);

/// VIP id -> packet policy (rate budgets per window).
#[map(name = "LB_VIP_POLICY")]
pub static VIP_POLICY: Array<VipPolicy> = Array::with_max_entries(MAX_VIPS, 0);

/// Rate-limiter state, shared by all CPUs (atomic adds): tenants first
/// (`RATES_PER_TENANT` each), then VIPs (`RATES_PER_VIP` each).
#[map(name = "LB_RATES")]
pub static RATES: Array<RateState> = Array::with_max_entries(RATE_ENTRIES, 0);
