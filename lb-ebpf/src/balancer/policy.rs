//! Per-tenant packet policy, applied after the VIP lookup: the tenant's
//! source ACL, then rate budgets (tenant packets/bytes, VIP packets/bytes,
//! SYNs per VIP). The new-flow budget is checked in `select` on a flow-table
//! miss, before anything is inserted.
//!
//! Rate limits count per fixed window of `RATE_WINDOW_NS` in a map shared by
//! all CPUs: each packet adds its cost atomically and is dropped when the
//! window's total exceeds the budget. A window change resets the count with
//! a plain store, so a packet another CPU counts at that instant can be
//! lost: at most one per CPU per window.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    ACL_DENY, ACL_KEY_FIXED_BITS, AclKey, DropReason, POLICY_F_ACL, POLICY_F_DEFAULT_DENY,
    RATE_WINDOW_NS, VipInfo, tenant_rate, tenant_rate_index, vip_rate, vip_rate_index,
};
use lb_ebpf::parse::Packet;

use crate::{
    maps::{ACL, RATES, TENANT_POLICY, VIP_POLICY},
    verdict::Verdict,
};

/// `*ptr += value` as one atomic instruction (BPF `XADD`): the target has
/// no atomic read-modify-write in `core`, so it is written out.
#[inline(always)]
unsafe fn atomic_add(ptr: *mut u64, value: u64) {
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({ptr} + 0) += {value}",
            ptr = in(reg) ptr,
            value = in(reg) value,
        );
    }
}

/// Charges `cost` to rate limiter `index`; false when over `budget`.
#[inline(always)]
fn charge(index: u32, budget: u64, cost: u64, now: u64) -> bool {
    if budget == 0 {
        return true;
    }
    let Some(state) = RATES.get_ptr_mut(index) else {
        return true;
    };
    let window = now / RATE_WINDOW_NS;
    unsafe {
        if (*state).window != window {
            (*state).window = window;
            (*state).used = 0;
        }
        atomic_add(&raw mut (*state).used, cost);
        core::ptr::read_volatile(&raw const (*state).used) <= budget
    }
}

/// Charges one packet of `bytes` to a (packets, bytes) pair of limiters;
/// false when over either budget (the bytes are not charged then).
#[inline(always)]
fn charge_traffic(slots: (u32, u32), budgets: (u64, u64), bytes: u64, now: u64) -> bool {
    charge(slots.0, budgets.0, 1, now) && charge(slots.1, budgets.1, bytes, now)
}

/// The tenant's new-flow budget; false when a new flow must be dropped.
#[inline(always)]
pub fn new_flow_allowed(tenant: u32, now: u64) -> bool {
    let Some(p) = TENANT_POLICY.get(tenant) else {
        return true;
    };
    charge(
        tenant_rate_index(tenant, tenant_rate::NEW_FLOWS),
        p.new_flows_per_window,
        1,
        now,
    )
}

/// Applies the tenant's and the VIP's packet policy. Not inlined: its own
/// stack frame, beside the steering path's.
#[inline(never)]
pub fn check(pkt: &Packet, vip: &VipInfo, syn: u32, now: u64) -> Verdict {
    let tenant = vip.tenant_id;
    if let Some(p) = TENANT_POLICY.get(tenant) {
        if p.flags & POLICY_F_ACL != 0 {
            let key = Key::new(
                ACL_KEY_FIXED_BITS + 128,
                AclKey {
                    tenant_be: tenant.to_be_bytes(),
                    family: pkt.family,
                    _pad: [0; 3],
                    addr: pkt.src,
                },
            );
            let denied = match ACL.get(&key) {
                Some(action) => *action == ACL_DENY,
                None => p.flags & POLICY_F_DEFAULT_DENY != 0,
            };
            if denied {
                return Verdict::drop(DropReason::ACL_DENY);
            }
        }
        let slots = (
            tenant_rate_index(tenant, tenant_rate::PACKETS),
            tenant_rate_index(tenant, tenant_rate::BYTES),
        );
        let budgets = (p.packets_per_window, p.bytes_per_window);
        if !charge_traffic(slots, budgets, pkt.ip_len as u64, now) {
            return Verdict::drop(DropReason::TENANT_RATE);
        }
    }
    if let Some(p) = VIP_POLICY.get(vip.vip_id) {
        let slot = |s| vip_rate_index(vip.vip_id, s);
        let slots = (slot(vip_rate::PACKETS), slot(vip_rate::BYTES));
        let budgets = (p.packets_per_window, p.bytes_per_window);
        if !charge_traffic(slots, budgets, pkt.ip_len as u64, now) {
            return Verdict::drop(DropReason::VIP_RATE);
        }
        if syn != 0 && !charge(slot(vip_rate::SYNS), p.syns_per_window, 1, now) {
            return Verdict::drop(DropReason::SYN_RATE);
        }
    }
    Verdict::PASS
}
