//! Reading the data plane for people: the admin API's listings, stats,
//! flow dumps and `explain`, built from the maps and the id assignment, so
//! `lbd` and `lbctl --maps` (no daemon) give the same answers. Also the one
//! edit `lbctl --maps` makes without a daemon: a backend's weight.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_common::{
    BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UNUSED, BACKEND_UP, Backend, DropReason, FlowKey,
    FlowValue, PROTO_TCP, PROTO_UDP, RING_EMPTY, TrafficCounters, VipKey, global_counter,
    hash::flow_hash,
};

use crate::{
    api::{
        ApiError, BackendInfo, BackendSelector, Counters, Explain, FlowFilter, FlowInfo,
        FlowTableUsage, PoolDetail, PoolSummary, Request, Response, Stats, TenantDetail,
        TenantStats, TenantSummary, VipSummary,
    },
    config::{Config, Protocol},
    dataplane::Dataplane,
    maglev::{self, RingBackend},
    reconcile::{BackendKey, Ids, addr_bytes, ip_from_bytes},
};

/// Health-check detail per backend, as JSON (from the daemon's checker).
pub type HealthDetail = BTreeMap<BackendKey, serde_json::Value>;

/// What the read-only answers are built from: `lbd` passes its own state,
/// `lbctl --maps` the pinned maps, the ids file, no health and no config.
pub struct View<'a> {
    pub dp: &'a Dataplane,
    pub ids: &'a Ids,
    /// The health checker's detail, asked only by the answers that show it.
    pub health: &'a dyn Fn() -> HealthDetail,
    /// The configuration, which names the SNI map's hashes.
    pub config: Option<&'a Config>,
}

/// Answers a request that only reads the maps, the same way for `lbd`'s
/// admin API and for `lbctl --maps` (one answer, two transports); `None`
/// for a request that changes something or needs the daemon. `Stats`
/// here has no L7 part: `lbd` adds its own.
#[must_use]
pub fn answer(view: &View<'_>, request: &Request) -> Option<Response> {
    let json = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| ApiError::internal(e.to_string()))
    };
    let View {
        dp, ids, health, ..
    } = *view;
    Some(match request {
        Request::ListTenants => json(serde_json::to_value(tenants(dp, ids))),
        Request::ShowTenant { name } => {
            tenant_detail(dp, ids, name).and_then(|d| json(serde_json::to_value(d)))
        }
        Request::ListVips => json(serde_json::to_value(vips(dp, ids))),
        Request::ListPools => json(serde_json::to_value(pools(dp, ids))),
        Request::ShowPool { tenant, pool: name } => {
            pool(dp, ids, &health(), tenant, name).and_then(|d| json(serde_json::to_value(d)))
        }
        Request::ListBackends => json(serde_json::to_value(backends(dp, ids, &health()))),
        Request::Stats => json(serde_json::to_value(stats(dp, ids, &health()))),
        Request::Flows { filter } => json(serde_json::to_value(flows(dp, ids, filter))),
        Request::Explain {
            client,
            vip,
            protocol,
        } => explain(dp, ids, *client, *vip, *protocol).and_then(|e| json(serde_json::to_value(e))),
        Request::ListSni => json(serde_json::to_value(sni(dp, ids, view.config))),
        Request::Status
        | Request::AddTenant { .. }
        | Request::RemoveTenant { .. }
        | Request::AddBackend { .. }
        | Request::RemoveBackend { .. }
        | Request::DrainBackend { .. }
        | Request::EnableBackend { .. }
        | Request::Reload
        | Request::ListOverrides
        | Request::ClearOverrides
        | Request::AddSni { .. }
        | Request::RemoveSni { .. } => return None,
    })
}

/// `GET /tenants/{name}`: the tenant's summary, VIPs, pools and drops.
///
/// # Errors
/// 404 when the maps have no tenant `name`.
pub fn tenant_detail(dp: &Dataplane, ids: &Ids, name: &str) -> Result<TenantDetail, ApiError> {
    let summary = tenants(dp, ids)
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no tenant {name:?}")))?;
    Ok(TenantDetail {
        vips: vips(dp, ids)
            .into_iter()
            .filter(|v| v.tenant == name)
            .collect(),
        pools: pools(dp, ids)
            .into_iter()
            .filter(|p| p.tenant == name)
            .collect(),
        drops_by_reason: drops_by_reason(dp, summary.id),
        summary,
    })
}

fn counters(c: TrafficCounters) -> Counters {
    Counters {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
        drops: c.drops,
    }
}

fn state_name(state: u8) -> &'static str {
    match state {
        BACKEND_UP => "up",
        BACKEND_DRAINING => "draining",
        BACKEND_DOWN => "down",
        BACKEND_UNUSED => "unused",
        _ => "unknown",
    }
}

fn protocol(proto: u8) -> Option<Protocol> {
    match proto {
        PROTO_TCP => Some(Protocol::Tcp),
        PROTO_UDP => Some(Protocol::Udp),
        _ => None,
    }
}

/// Monotonic-coarse "now" in the clock the XDP program stamps flows with.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn drops_by_reason(dp: &Dataplane, tenant: u32) -> BTreeMap<String, u64> {
    let d = dp.tenant_drops(tenant);
    DropReason::ALL
        .iter()
        .zip(d.by_reason.iter())
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| (reason.name().to_string(), *n))
        .collect()
}

/// Whether the XDP program would honour `flow` (the same rules as
/// `select.rs`), and why not.
fn flow_validity(
    dp: &Dataplane,
    flow: &FlowValue,
    vip_pool: Option<u32>,
    idle_ns: u64,
) -> Result<Backend, String> {
    let b = dp
        .backend(flow.backend_id)
        .map_err(|e| format!("backend slot unreadable: {e}"))?;
    if b.generation != flow.generation {
        return Err("its backend slot was reused since (generation changed)".into());
    }
    if Some(flow.pool_id) != vip_pool || b.pool_id != flow.pool_id {
        return Err("its backend no longer belongs to the VIP's pool".into());
    }
    if b.state != BACKEND_UP && b.state != BACKEND_DRAINING {
        return Err(format!("its backend is {}", state_name(b.state)));
    }
    let settings = dp.settings().map_err(|e| e.to_string())?;
    if settings.flow_idle_ns != 0 && idle_ns > settings.flow_idle_ns {
        return Err("it has been idle longer than flow_idle_timeout".into());
    }
    Ok(b)
}

/// What one walk of every flow table finds: per backend, its flows and
/// the most recent activity among them; per tenant, its flows. (The walk
/// reads every entry: do it once per request.)
#[derive(Default)]
struct FlowCensus {
    by_backend: BTreeMap<u32, (u64, u64)>,
    by_tenant: BTreeMap<u32, u64>,
}

impl FlowCensus {
    fn take(dp: &Dataplane) -> FlowCensus {
        let mut census = FlowCensus::default();
        for (_, v) in dp.flows() {
            let e = census.by_backend.entry(v.backend_id).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(v.last_seen_ns);
            *census.by_tenant.entry(v.tenant_id).or_insert(0) += 1;
        }
        census
    }

    /// A tenant's flows and the size of its table (0 without one).
    fn flow_table(&self, tables: &BTreeMap<u32, u32>, tenant: u32) -> FlowTableUsage {
        FlowTableUsage {
            flows: self.by_tenant.get(&tenant).copied().unwrap_or(0),
            max_flows: tables.get(&tenant).copied().unwrap_or(0),
        }
    }
}

fn backend_info(
    dp: &Dataplane,
    id: u32,
    key: &BackendKey,
    flows: &BTreeMap<u32, (u64, u64)>,
    health: &HealthDetail,
    now: u64,
) -> Option<BackendInfo> {
    let b = dp.backend(id).ok()?;
    if b.state == BACKEND_UNUSED {
        return None;
    }
    let (n, last) = flows.get(&id).copied().unwrap_or((0, 0));
    let last_seen = (n > 0).then(|| Duration::from_nanos(now.saturating_sub(last)).as_secs_f64());
    Some(BackendInfo {
        tenant: key.0.clone(),
        pool: key.1.clone(),
        address: key.2,
        port: (key.3 != 0).then_some(key.3),
        id,
        weight: u32::from(b.weight),
        state: state_name(b.state).to_string(),
        health: health.get(key).cloned(),
        flows: n,
        last_seen_secs_ago: last_seen.map(|s| (s * 10.0).round() / 10.0),
        counters: counters(dp.backend_stats(id)),
    })
}

/// Every backend with its state, flows and counters.
#[must_use]
pub fn backends(dp: &Dataplane, ids: &Ids, health: &HealthDetail) -> Vec<BackendInfo> {
    backends_counted(dp, ids, health, &FlowCensus::take(dp).by_backend)
}

fn backends_counted(
    dp: &Dataplane,
    ids: &Ids,
    health: &HealthDetail,
    flows: &BTreeMap<u32, (u64, u64)>,
) -> Vec<BackendInfo> {
    let now = now_ns();
    ids.backend_keys()
        .iter()
        .filter_map(|(id, key)| backend_info(dp, *id, key, flows, health, now))
        .collect()
}

/// One backend.
///
/// # Errors
/// 404 when it does not exist.
pub fn backend(
    dp: &Dataplane,
    ids: &Ids,
    health: &HealthDetail,
    sel: &BackendSelector,
) -> Result<BackendInfo, ApiError> {
    let (id, port) = backend_id(ids, sel)?;
    let key = (sel.tenant.clone(), sel.pool.clone(), sel.address, port);
    backend_info(
        dp,
        id,
        &key,
        &FlowCensus::take(dp).by_backend,
        health,
        now_ns(),
    )
    .ok_or_else(|| ApiError::not_found(format!("backend {} is not in the maps", sel.address)))
}

/// The id (and configured port, 0 for none) of a selected backend.
fn backend_id(ids: &Ids, sel: &BackendSelector) -> Result<(u32, u16), ApiError> {
    let port = sel.port.unwrap_or(0);
    ids.backend(&sel.tenant, &sel.pool, sel.address, port)
        .map(|id| (id, port))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no backend {} in {}/{}",
                show(sel.address, sel.port),
                sel.tenant,
                sel.pool
            ))
        })
}

/// Every VIP with its counters.
#[must_use]
pub fn vips(dp: &Dataplane, ids: &Ids) -> Vec<VipSummary> {
    let tenants = ids.tenant_names();
    let pools = ids.pool_names();
    let mut out: Vec<VipSummary> = dp
        .vips()
        .into_iter()
        .filter_map(|(k, v)| {
            Some(VipSummary {
                tenant: tenants.get(&v.tenant_id)?.clone(),
                address: ip_from_bytes(&k.addr, k.family),
                port: u16::from_be(k.port),
                protocol: protocol(k.proto)?,
                pool: pools
                    .get(&v.pool_id)
                    .map(|p| p.1.clone())
                    .unwrap_or_default(),
                id: v.vip_id,
                counters: counters(dp.vip_stats(v.vip_id)),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.tenant, a.address, a.port).cmp(&(&b.tenant, b.address, b.port)));
    out
}

/// Every pool.
#[must_use]
pub fn pools(dp: &Dataplane, ids: &Ids) -> Vec<PoolSummary> {
    let backend_keys = ids.backend_keys();
    ids.pool_names()
        .into_iter()
        .filter_map(|(id, (tenant, name))| {
            let info = dp.pool(id)?;
            let members: Vec<Backend> = backend_keys
                .iter()
                .filter(|(_, k)| k.0 == tenant && k.1 == name)
                .filter_map(|(bid, _)| dp.backend(*bid).ok())
                .filter(|b| b.state != BACKEND_UNUSED)
                .collect();
            Some(PoolSummary {
                tenant,
                name,
                id,
                ring_size: info.ring_size,
                backends: members.len(),
                up: members.iter().filter(|b| b.state == BACKEND_UP).count(),
            })
        })
        .collect()
}

/// One pool, its backends and their share of the ring.
///
/// # Errors
/// 404 when it does not exist.
pub fn pool(
    dp: &Dataplane,
    ids: &Ids,
    health: &HealthDetail,
    tenant: &str,
    name: &str,
) -> Result<PoolDetail, ApiError> {
    let summary = pools(dp, ids)
        .into_iter()
        .find(|p| p.tenant == tenant && p.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no pool {name:?} in tenant {tenant:?}")))?;
    let backends: Vec<BackendInfo> = backends(dp, ids, health)
        .into_iter()
        .filter(|b| b.tenant == tenant && b.pool == name)
        .collect();
    let mut ring_share = BTreeMap::new();
    if let Some(ring) = dp.ring(summary.id) {
        let names: BTreeMap<u32, String> = backends
            .iter()
            .map(|b| (b.id, b.address.to_string()))
            .collect();
        for slot in ring {
            let key = if slot == RING_EMPTY {
                "(empty)".to_string()
            } else {
                names
                    .get(&slot)
                    .cloned()
                    .unwrap_or_else(|| format!("id {slot}"))
            };
            *ring_share.entry(key).or_insert(0) += 1;
        }
    }
    Ok(PoolDetail {
        summary,
        backends,
        ring_share,
    })
}

/// Tenants with their counters; `vips`, `pools` and `backends` count what
/// the maps hold for each.
#[must_use]
pub fn tenants(dp: &Dataplane, ids: &Ids) -> Vec<TenantSummary> {
    let vips = vips(dp, ids);
    let pools = pools(dp, ids);
    let (census, tables) = (FlowCensus::take(dp), dp.flow_tables());
    ids.tenant_names()
        .into_iter()
        .map(|(id, name)| TenantSummary {
            vips: vips.iter().filter(|v| v.tenant == name).count(),
            pools: pools.iter().filter(|p| p.tenant == name).count(),
            backends: pools
                .iter()
                .filter(|p| p.tenant == name)
                .map(|p| p.backends)
                .sum(),
            counters: counters(dp.tenant_stats(id)),
            flow_table: census.flow_table(&tables, id),
            id,
            name,
        })
        .collect()
}

/// Node, tenant, VIP and backend counters.
#[must_use]
pub fn stats(dp: &Dataplane, ids: &Ids, health: &HealthDetail) -> Stats {
    let global = global_counter::NAMES
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.starts_with("reserved"))
        .map(|(i, n)| ((*n).to_string(), dp.global(u32::try_from(i).unwrap_or(0))))
        .collect();
    let (census, tables) = (FlowCensus::take(dp), dp.flow_tables());
    let mut tenants: Vec<TenantStats> = ids
        .tenant_names()
        .into_iter()
        .map(|(id, name)| TenantStats {
            counters: counters(dp.tenant_stats(id)),
            drops_by_reason: drops_by_reason(dp, id),
            flow_table: census.flow_table(&tables, id),
            id,
            name,
        })
        .collect();
    // Drops that belong to no tenant (malformed packets).
    let unattributed = drops_by_reason(dp, lb_common::NO_TENANT);
    if !unattributed.is_empty() {
        tenants.push(TenantStats {
            name: "(none)".into(),
            id: lb_common::NO_TENANT,
            counters: counters(dp.tenant_stats(lb_common::NO_TENANT)),
            drops_by_reason: unattributed,
            flow_table: FlowTableUsage::default(),
        });
    }
    Stats {
        global,
        tenants,
        vips: vips(dp, ids),
        backends: backends_counted(dp, ids, health, &census.by_backend),
        l7_tenants: Vec::new(),
        l7_listeners: Vec::new(),
        access_log_lost: 0,
    }
}

/// The SNI map, with the host names of `config` when there is one.
#[must_use]
pub fn sni(
    dp: &Dataplane,
    ids: &Ids,
    config: Option<&crate::config::Config>,
) -> Vec<crate::api::SniEntry> {
    let tenants = ids.tenant_names();
    let in_map: BTreeMap<u64, u32> = dp.sni_entries().into_iter().collect();
    let mut out = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    for t in config.map(|c| c.tenants.as_slice()).unwrap_or_default() {
        for s in &t.l7 {
            for h in &s.hosts {
                let hash = crate::config::sni_hash(h);
                named.insert(hash);
                out.push(crate::api::SniEntry {
                    name: Some(h.clone()),
                    hash: format!("{hash:016x}"),
                    tenant: t.name.clone(),
                    tenant_id: ids.tenant(&t.name).unwrap_or(0),
                    listen: Some(s.listen),
                    in_map: in_map.contains_key(&hash),
                });
            }
        }
    }
    for (hash, id) in &in_map {
        if !named.contains(hash) {
            out.push(crate::api::SniEntry {
                name: None,
                hash: format!("{hash:016x}"),
                tenant: tenants.get(id).cloned().unwrap_or_else(|| format!("#{id}")),
                tenant_id: *id,
                listen: None,
                in_map: true,
            });
        }
    }
    out.sort_by(|a, b| (&a.tenant, &a.name, &a.hash).cmp(&(&b.tenant, &b.name, &b.hash)));
    out
}

/// The flow table, filtered.
#[must_use]
pub fn flows(dp: &Dataplane, ids: &Ids, filter: &FlowFilter) -> Vec<FlowInfo> {
    let tenants = ids.tenant_names();
    let vip_pools: BTreeMap<VipKey, u32> =
        dp.vips().into_iter().map(|(k, v)| (k, v.pool_id)).collect();
    let now = now_ns();
    let limit = filter.limit.unwrap_or(1000);
    let mut out = Vec::new();
    for (k, v) in dp.flows() {
        if out.len() >= limit {
            break;
        }
        let tenant = tenants
            .get(&v.tenant_id)
            .cloned()
            .unwrap_or_else(|| format!("id {}", v.tenant_id));
        if filter.tenant.as_ref().is_some_and(|t| *t != tenant) {
            continue;
        }
        let vip = SocketAddr::new(ip_from_bytes(&k.dst, k.family), u16::from_be(k.dport));
        if filter.vip.is_some_and(|f| f != vip) {
            continue;
        }
        let backend = dp
            .backend(v.backend_id)
            .ok()
            .map(|b| ip_from_bytes(&b.addr, b.family));
        if filter.backend.is_some() && filter.backend != backend {
            continue;
        }
        let vip_key = VipKey {
            addr: k.dst,
            port: k.dport,
            proto: k.proto,
            family: k.family,
        };
        let vip_pool = vip_pools
            .get(&vip_key)
            .or_else(|| vip_pools.get(&VipKey { port: 0, ..vip_key }))
            .copied();
        let idle = now.saturating_sub(v.last_seen_ns);
        #[expect(clippy::cast_precision_loss, reason = "display precision")]
        let idle_secs = (idle as f64 / 1e8).round() / 10.0;
        out.push(FlowInfo {
            client: SocketAddr::new(ip_from_bytes(&k.src, k.family), u16::from_be(k.sport)),
            vip,
            protocol: protocol(k.proto)
                .map_or_else(|| k.proto.to_string(), |p| format!("{p:?}").to_lowercase()),
            tenant,
            backend,
            backend_id: v.backend_id,
            valid: flow_validity(dp, &v, vip_pool, idle).is_ok(),
            idle_secs,
        });
    }
    out
}

/// Which backend a flow from `client` to `vip` hits, and why.
///
/// # Errors
/// 404 when `vip` is not a VIP; 400 for mixed address families.
pub fn explain(
    dp: &Dataplane,
    ids: &Ids,
    client: SocketAddr,
    vip: SocketAddr,
    proto: Protocol,
) -> Result<Explain, ApiError> {
    let (caddr, cfam) = addr_bytes(client.ip());
    let (vaddr, vfam) = addr_bytes(vip.ip());
    if cfam != vfam {
        return Err(ApiError::bad_request(
            "client and VIP must be of the same address family",
        ));
    }
    let key = VipKey {
        addr: vaddr,
        port: vip.port().to_be(),
        proto: proto.number(),
        family: vfam,
    };
    let vips: BTreeMap<VipKey, lb_common::VipInfo> = dp.vips().into_iter().collect();
    // The exact port first, then the any-port wildcard, as the XDP program.
    let info = *vips
        .get(&key)
        .or_else(|| vips.get(&VipKey { port: 0, ..key }))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "{vip}/{} is not a VIP",
                format!("{proto:?}").to_lowercase()
            ))
        })?;
    let tenant = ids
        .tenant_names()
        .get(&info.tenant_id)
        .cloned()
        .unwrap_or_default();
    let pool = ids
        .pool_names()
        .get(&info.pool_id)
        .map(|p| p.1.clone())
        .unwrap_or_default();
    let flow_key = FlowKey {
        src: caddr,
        dst: vaddr,
        sport: client.port().to_be(),
        dport: vip.port().to_be(),
        proto: proto.number(),
        family: vfam,
        _pad: [0; 2],
    };
    let settings = dp
        .settings()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let hash = flow_hash(&flow_key, settings.hash_seed);
    let pool_info = dp.pool(info.pool_id);
    let ring_slot = pool_info.map_or(0, |p| {
        if p.ring_size == 0 {
            0
        } else {
            hash % p.ring_size
        }
    });
    let mut note = None;
    if let Some(flow) = dp.flow(info.tenant_id, &flow_key) {
        let idle = now_ns().saturating_sub(flow.last_seen_ns);
        match flow_validity(dp, &flow, Some(info.pool_id), idle) {
            Ok(b) => {
                return Ok(Explain {
                    tenant,
                    pool,
                    decision: "flow_table".into(),
                    backend: Some(ip_from_bytes(&b.addr, b.family)),
                    backend_id: Some(flow.backend_id),
                    hash,
                    ring_slot,
                    note: None,
                });
            }
            Err(why) => note = Some(format!("a flow-table entry exists but is not used: {why}")),
        }
    }
    let id = dp
        .ring(info.pool_id)
        .and_then(|r| r.get(ring_slot as usize).copied())
        .filter(|id| *id != RING_EMPTY);
    let backend = id
        .and_then(|id| dp.backend(id).ok())
        .map(|b| ip_from_bytes(&b.addr, b.family));
    if id.is_none() {
        note =
            Some("the pool has no backend in its ring: the packet is dropped (no_backend)".into());
    }
    Ok(Explain {
        tenant,
        pool,
        decision: "ring".into(),
        backend,
        backend_id: id,
        hash,
        ring_slot,
        note,
    })
}

/// Sets a backend's weight directly in the maps and rebuilds its pool's
/// ring, as `lbd` would (`lbctl --maps backend drain|enable`). Returns the
/// backend's new state name.
///
/// # Errors
/// 404 when the backend is unknown; 500 when a map write fails.
pub fn set_backend_weight(
    dp: &mut Dataplane,
    ids: &Ids,
    sel: &BackendSelector,
    weight: u32,
) -> Result<String, ApiError> {
    let (id, _) = backend_id(ids, sel)?;
    let pool_id = ids
        .pool(&sel.tenant, &sel.pool)
        .ok_or_else(|| ApiError::not_found(format!("no pool {}/{}", sel.tenant, sel.pool)))?;
    let internal = |e: crate::dataplane::DataplaneError| ApiError::internal(e.to_string());
    let mut b = dp.backend(id).map_err(internal)?;
    b.weight = u16::try_from(weight).unwrap_or(u16::MAX);
    b.state = match (weight, b.state) {
        (_, BACKEND_DOWN) => BACKEND_DOWN,
        (0, _) => BACKEND_DRAINING,
        _ => BACKEND_UP,
    };
    dp.set_backend(id, &b).map_err(internal)?;
    let info = dp.pool(pool_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "pool {}/{} has no ring in the maps",
            sel.tenant, sel.pool
        ))
    })?;
    let seed = dp.settings().map_err(internal)?.hash_seed;
    let members: Vec<(u32, Vec<u8>, u32)> = ids
        .backend_keys()
        .into_iter()
        .filter(|(_, k)| k.0 == sel.tenant && k.1 == sel.pool)
        .filter_map(|(bid, _)| dp.backend(bid).ok().map(|b| (bid, b)))
        .filter(|(_, b)| b.state == BACKEND_UP && b.pool_id == pool_id)
        .map(|(bid, b)| {
            let mut identity = b.addr.to_vec();
            identity.push(b.family);
            identity.extend_from_slice(&b.port.to_be_bytes());
            (bid, identity, u32::from(b.weight))
        })
        .collect();
    let ring_members: Vec<RingBackend<'_>> = members
        .iter()
        .map(|(bid, key, w)| RingBackend {
            id: *bid,
            key,
            weight: *w,
        })
        .collect();
    let ring = maglev::build(&ring_members, info.ring_size, seed)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    dp.write_ring(pool_id, info.tenant_id, &ring)
        .map_err(internal)?;
    Ok(state_name(b.state).to_string())
}

/// Backends (by identity) whose slot the maps mark down: health state read
/// back after a restart.
#[must_use]
pub fn down_backends(dp: &Dataplane, ids: &Ids) -> BTreeSet<BackendKey> {
    ids.backend_keys()
        .into_iter()
        .filter(|(id, _)| dp.backend(*id).is_ok_and(|b| b.state == BACKEND_DOWN))
        .map(|(_, k)| k)
        .collect()
}

/// Converts an address to a display string with its port, for tables.
#[must_use]
pub fn show(addr: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(p) => SocketAddr::new(addr, p).to_string(),
        None => addr.to_string(),
    }
}
