//! Per-CPU counters: node-wide, per tenant, per VIP and per backend.

use aya_ebpf::maps::PerCpuArray;
use lb_common::{DropReason, TrafficCounters};

use crate::maps::{BACKEND_STATS, GLOBAL_STATS, TENANT_DROPS, TENANT_STATS, VIP_STATS};

/// Bumps a node-wide counter (`global_counter::*`).
#[inline(always)]
pub fn global(counter: u32) {
    if let Some(c) = GLOBAL_STATS.get_ptr_mut(counter) {
        unsafe { *c += 1 };
    }
}

/// Counts one packet of `bytes` (and a new flow when `new_flow`) against
/// entry `id` of a traffic-counter array.
#[inline(always)]
pub fn traffic(map: &PerCpuArray<TrafficCounters>, id: u32, bytes: usize, new_flow: bool) {
    if let Some(c) = map.get_ptr_mut(id) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
            if new_flow {
                (*c).new_flows += 1;
            }
        }
    }
}

/// Counts one packet of `bytes` sent to backend `backend` for the tenant,
/// the VIP and the backend (a new flow when `new_flow`).
#[inline(always)]
pub fn forwarded(tenant: u32, vip: u32, backend: u32, bytes: usize, new_flow: bool) {
    traffic(&TENANT_STATS, tenant, bytes, new_flow);
    traffic(&VIP_STATS, vip, bytes, new_flow);
    traffic(&BACKEND_STATS, backend, bytes, new_flow);
}

/// Counts a drop for `tenant` with `reason`.
#[inline(always)]
pub fn drop(tenant: u32, reason: DropReason) {
    let i = reason.index();
    // Checked again for the verifier, which cannot know the type's bound.
    if let Some(c) = TENANT_DROPS.get_ptr_mut(tenant)
        && i < DropReason::COUNT
    {
        unsafe { (*c).by_reason[i] += 1 };
    }
    if let Some(c) = TENANT_STATS.get_ptr_mut(tenant) {
        unsafe { (*c).drops += 1 };
    }
}
