//! Backend selection: VIP lookup, the flow table, and the pool's Maglev ring.

use lb_common::{
    BACKEND_DRAINING, BACKEND_UP, Backend, DropReason, FlowKey, FlowValue, RING_EMPTY, Settings,
    VipAddrKey, VipInfo, VipKey, global_counter, hash::flow_hash,
};

use crate::{
    maps::{BACKENDS, FLOWS, POOLS, RINGS, VIP_ADDRS, VIPS},
    stats,
};

/// Refresh a flow entry's `last_seen_ns` at most this often, so a busy flow
/// does not write its (shared) entry on every packet.
const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// Finds the VIP for (address, port, protocol), falling back to the
/// any-port entry (port 0).
#[inline(always)]
pub fn vip(addr: &[u8; 16], family: u8, port: u16, proto: u8) -> Option<VipInfo> {
    let mut key = VipKey {
        addr: *addr,
        port,
        proto,
        family,
    };
    if let Some(v) = unsafe { VIPS.get(key) } {
        return Some(*v);
    }
    key.port = 0;
    unsafe { VIPS.get(key) }.copied()
}

/// The tenant owning any VIP on `addr`, for packets that carry no port.
#[inline(always)]
pub fn vip_addr_tenant(addr: &[u8; 16], family: u8) -> Option<u32> {
    let key = VipAddrKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    };
    unsafe { VIP_ADDRS.get(key) }.copied()
}

/// The flow hash as a BPF function of its own: called from two places, and
/// inlining it twice would push the steering path over the 512-byte stack.
#[inline(never)]
fn hash_of(key: &FlowKey, seed: u32) -> u32 {
    flow_hash(key, seed)
}

/// The backend chosen for a flow.
pub struct Choice {
    pub id: u32,
    /// Points into the backend array (valid for the program run).
    pub backend: &'static Backend,
    /// Chosen through the ring (a flow-table miss).
    pub new_flow: bool,
    /// The flow hash; computed on a flow-table hit only when the backend is
    /// IPv6 (its outer header carries it as the flow label).
    pub hash: u32,
}

/// What the flow table says about a flow.
pub enum Entry {
    /// A valid entry: its backend.
    Valid(Choice),
    /// An entry whose backend is gone, down, moved or idle too long.
    Stale,
    /// No entry.
    Missing,
}

/// Looks `key` up in the flow table and checks the entry against `vip` and
/// the backend's current state, refreshing `last_seen_ns` of a valid entry.
#[inline(always)]
pub fn flow(key: &FlowKey, vip: &VipInfo, settings: &Settings, now: u64) -> Entry {
    // A tenant without a table (no L4 VIP when lbd last applied) has no
    // entries either.
    let Some(entry) = FLOWS.get_value_ptr_mut(vip.tenant_id, key) else {
        return Entry::Missing;
    };
    let flow = unsafe { *entry };
    let Some(b) = BACKENDS.get(flow.backend_id) else {
        return Entry::Stale;
    };
    let idle = now.saturating_sub(flow.last_seen_ns);
    if b.generation != flow.generation
        || flow.pool_id != vip.pool_id
        || b.pool_id != vip.pool_id
        || b.tenant_id != vip.tenant_id
        || (b.state != BACKEND_UP && b.state != BACKEND_DRAINING)
        || (settings.flow_idle_ns != 0 && idle > settings.flow_idle_ns)
    {
        return Entry::Stale;
    }
    // Refresh often enough that an active flow never looks idle: at most
    // every second, and at least four times per timeout.
    let granularity =
        if settings.flow_idle_ns != 0 && settings.flow_idle_ns / 4 < LAST_SEEN_GRANULARITY_NS {
            settings.flow_idle_ns / 4
        } else {
            LAST_SEEN_GRANULARITY_NS
        };
    if idle > granularity {
        unsafe { (*entry).last_seen_ns = now };
    }
    Entry::Valid(Choice {
        id: flow.backend_id,
        backend: b,
        new_flow: false,
        // Only an IPv6 outer header uses the hash (flow label): an
        // established IPv4 flow skips hashing altogether.
        hash: if b.family == lb_common::FAMILY_V6 {
            hash_of(key, settings.hash_seed)
        } else {
            0
        },
    })
}

/// Picks the backend for `key` on `vip`: a valid flow-table entry first,
/// else the pool's ring, whose choice is inserted. Errors are
/// `DropReason::*`.
#[inline(always)]
pub fn backend(
    key: &FlowKey,
    vip: &VipInfo,
    settings: &Settings,
    now: u64,
) -> Result<Choice, DropReason> {
    match flow(key, vip, settings, now) {
        Entry::Valid(choice) => return Ok(choice),
        Entry::Stale => stats::global(global_counter::FLOW_STALE),
        Entry::Missing => {}
    }

    let hash = hash_of(key, settings.hash_seed);
    let pool = unsafe { POOLS.get(vip.pool_id) }
        .copied()
        .ok_or(DropReason::NO_BACKEND)?;
    if pool.ring_size == 0 || pool.tenant_id != vip.tenant_id {
        return Err(DropReason::NO_BACKEND);
    }
    let slot = pool.ring_offset + hash % pool.ring_size;
    // Two slots per 8-byte array element (see `RING_ARENA_ENTRIES`).
    let pair = *RINGS.get(slot >> 1).ok_or(DropReason::NO_BACKEND)?;
    #[expect(clippy::cast_possible_truncation, reason = "picking one u32 half")]
    let id = if slot & 1 == 0 {
        pair as u32
    } else {
        (pair >> 32) as u32
    };
    if id == RING_EMPTY {
        return Err(DropReason::NO_BACKEND);
    }
    let b = BACKENDS.get(id).ok_or(DropReason::NO_BACKEND)?;
    if b.tenant_id != vip.tenant_id || b.pool_id != vip.pool_id {
        return Err(DropReason::TENANT_MISMATCH);
    }
    if b.state != BACKEND_UP {
        // lbd publishes a ring without a leaving backend before marking it
        // draining or down, so a ring names one only if edited by hand.
        return Err(DropReason::NO_BACKEND);
    }
    // A new flow over the tenant's budget takes no flow-table entry: one
    // tenant's SYN flood cannot evict another tenant's flows.
    if !crate::policy::new_flow_allowed(vip.tenant_id, now) {
        return Err(DropReason::NEW_FLOW_RATE);
    }
    let value = FlowValue {
        backend_id: id,
        pool_id: vip.pool_id,
        generation: b.generation,
        tenant_id: vip.tenant_id,
        last_seen_ns: now,
    };
    // The tenant's own table: when full, it evicts the tenant's least
    // recently used entry, never another tenant's. Failure to insert (no
    // table yet) only costs stickiness, so the packet still goes out.
    if let Some(table) = FLOWS.get(vip.tenant_id) {
        let _ = table.insert(key, value, 0);
    }
    Ok(Choice {
        id,
        backend: b,
        new_flow: true,
        hash,
    })
}
