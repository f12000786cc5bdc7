//! From a validated configuration to map contents: assigns stable ids,
//! builds each pool's Maglev ring, and writes only what differs from what
//! the maps already hold.
//!
//! Ids: tenants, pools, VIPs and backends get small integer ids (indexes into
//! the BPF arrays) from [`Ids`], keyed by their names and addresses, so a
//! re-apply of the same objects keeps their ids and their flows. A backend
//! slot handed to a different backend gets a new generation, which makes the
//! XDP program ignore flow-table entries made for the previous occupant.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use lb_common::{
    ACL_ALLOW, ACL_DENY, ACL_KEY_FIXED_BITS, AclKey, BACKEND_DOWN, BACKEND_DRAINING,
    BACKEND_UNUSED, BACKEND_UP, Backend, FAMILY_V4, FAMILY_V6, FORWARD_IPIP, FORWARD_L2DSR,
    MAX_BACKENDS, MAX_POOLS, MAX_TENANTS, MAX_VIPS, NO_TENANT, POLICY_F_ACL, POLICY_F_DEFAULT_DENY,
    PROTO_TCP, RATE_WINDOW_NS, Settings, TenantPolicy, VIP_F_LOCAL, VipAddrKey, VipInfo, VipKey,
    VipPolicy,
};

use crate::{
    config::{Config, Forwarding},
    dataplane::{Dataplane, DataplaneError, TableChange},
    maglev::{self, RingBackend},
};

/// Errors while applying a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A map write failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The ring could not be built.
    #[error("pool {pool} of tenant {tenant}: {source}")]
    Maglev {
        tenant: String,
        pool: String,
        #[source]
        source: maglev::MaglevError,
    },
    /// More objects than the maps can hold.
    #[error("too many {what}: the maps hold at most {max}")]
    Capacity { what: &'static str, max: u32 },
}

/// Converts an address to the 16-byte, family-tagged form of the maps.
#[must_use]
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// Converts a 16-byte, family-tagged map address back to an `IpAddr`.
#[must_use]
pub fn ip_from_bytes(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(*addr)
    }
}

/// Allocates the lowest free id of one kind, keyed by a stable name.
#[derive(Debug, Default, Clone)]
struct IdSpace<K: Ord> {
    by_key: BTreeMap<K, u32>,
    used: BTreeSet<u32>,
    /// Released ids below `next`, reused lowest first.
    free: BTreeSet<u32>,
    /// Every id at or above this is unused.
    next: u32,
    first: u32,
    max: u32,
}

impl<K: Ord + Clone> IdSpace<K> {
    fn new(first: u32, max: u32) -> Self {
        Self {
            by_key: BTreeMap::new(),
            used: BTreeSet::new(),
            free: BTreeSet::new(),
            next: first,
            first,
            max,
        }
    }

    /// The key's id, or the lowest unused one (O(log n): thousands of
    /// tenants and backends are allocated in one apply).
    fn get_or_alloc(&mut self, key: &K, what: &'static str) -> Result<u32, ReconcileError> {
        if let Some(id) = self.by_key.get(key) {
            return Ok(*id);
        }
        let id = if let Some(id) = self.free.pop_first() {
            id
        } else if self.next < self.max {
            self.next += 1;
            self.next - 1
        } else {
            return Err(ReconcileError::Capacity {
                what,
                max: self.max,
            });
        };
        self.used.insert(id);
        self.by_key.insert(key.clone(), id);
        Ok(id)
    }

    /// Records a known assignment (read back from disk).
    fn insert(&mut self, key: K, id: u32) {
        if id < self.first || id >= self.max || self.used.contains(&id) {
            return;
        }
        // Ids skipped between the old watermark and this one are free.
        while self.next < id {
            self.free.insert(self.next);
            self.next += 1;
        }
        if self.next == id {
            self.next += 1;
        }
        self.free.remove(&id);
        self.used.insert(id);
        self.by_key.insert(key, id);
    }

    /// Releases every id whose key is not in `keep`; returns the released ids.
    fn retain(&mut self, keep: &BTreeSet<K>) -> Vec<u32> {
        let gone: Vec<K> = self
            .by_key
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        let released: Vec<u32> = gone.iter().filter_map(|k| self.by_key.remove(k)).collect();
        for id in &released {
            self.used.remove(id);
            self.free.insert(*id);
        }
        released
    }
}

/// A backend's identity: (tenant, pool, address, configured port or 0).
pub type BackendKey = (String, String, IpAddr, u16);

/// Id assignment for every object kind.
#[derive(Debug, Clone)]
pub struct Ids {
    tenants: IdSpace<String>,
    pools: IdSpace<(String, String)>,
    vips: IdSpace<VipKey>,
    backends: IdSpace<BackendKey>,
}

impl Default for Ids {
    fn default() -> Self {
        Self {
            // Tenant 0 is the "no tenant" slot of the drop counters.
            tenants: IdSpace::new(1, MAX_TENANTS),
            pools: IdSpace::new(1, MAX_POOLS),
            vips: IdSpace::new(0, MAX_VIPS),
            backends: IdSpace::new(0, MAX_BACKENDS),
        }
    }
}

impl Ids {
    /// The id of a tenant, if it has one.
    #[must_use]
    pub fn tenant(&self, name: &str) -> Option<u32> {
        self.tenants.by_key.get(name).copied()
    }

    /// The id of a pool of a tenant, if it has one.
    #[must_use]
    pub fn pool(&self, tenant: &str, pool: &str) -> Option<u32> {
        self.pools
            .by_key
            .get(&(tenant.to_string(), pool.to_string()))
            .copied()
    }

    /// The id of a backend, if it has one.
    #[must_use]
    pub fn backend(&self, tenant: &str, pool: &str, addr: IpAddr, port: u16) -> Option<u32> {
        self.backends
            .by_key
            .get(&(tenant.to_string(), pool.to_string(), addr, port))
            .copied()
    }

    /// The id of a VIP, if it has one.
    #[must_use]
    pub fn vip(&self, key: &VipKey) -> Option<u32> {
        self.vips.by_key.get(key).copied()
    }

    /// Tenant names by id.
    #[must_use]
    pub fn tenant_names(&self) -> BTreeMap<u32, String> {
        self.tenants
            .by_key
            .iter()
            .map(|(k, v)| (*v, k.clone()))
            .collect()
    }
}

impl Ids {
    /// (tenant, pool) names by pool id.
    #[must_use]
    pub fn pool_names(&self) -> BTreeMap<u32, (String, String)> {
        self.pools
            .by_key
            .iter()
            .map(|(k, v)| (*v, k.clone()))
            .collect()
    }

    /// Backend identities by backend id.
    #[must_use]
    pub fn backend_keys(&self) -> BTreeMap<u32, BackendKey> {
        self.backends
            .by_key
            .iter()
            .map(|(k, v)| (*v, k.clone()))
            .collect()
    }

    /// VIP keys by VIP id.
    #[must_use]
    pub fn vip_keys(&self) -> BTreeMap<u32, VipKey> {
        self.vips.by_key.iter().map(|(k, v)| (*v, *k)).collect()
    }

    /// Writes the assignment to `path` (atomically: a temporary file renamed
    /// over it), so the next `lbd` and `lbctl --maps` use the same ids.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let file = IdsFile {
            tenants: self
                .tenants
                .by_key
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            pools: self
                .pools
                .by_key
                .iter()
                .map(|((t, p), v)| (t.clone(), p.clone(), *v))
                .collect(),
            vips: self
                .vips
                .by_key
                .iter()
                .map(|(k, v)| {
                    (
                        ip_from_bytes(&k.addr, k.family),
                        u16::from_be(k.port),
                        k.proto,
                        *v,
                    )
                })
                .collect(),
            backends: self
                .backends
                .by_key
                .iter()
                .map(|((t, p, a, port), v)| (t.clone(), p.clone(), *a, *port, *v))
                .collect(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, path)
    }

    /// The file under `node.state_dir` where `lbd` keeps the assignment
    /// (`lbctl --maps` reads it to name tenants, pools and backends).
    pub const FILE: &str = "ids.json";

    /// [`Ids::FILE`] under `state_dir`.
    #[must_use]
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(Self::FILE)
    }

    /// Reads an assignment written by [`Ids::save`]; a missing file gives an
    /// empty assignment.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        let file: IdsFile = serde_json::from_slice(&text)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        let mut ids = Self::default();
        for (name, id) in file.tenants {
            ids.tenants.insert(name, id);
        }
        for (t, p, id) in file.pools {
            ids.pools.insert((t, p), id);
        }
        for (addr, port, proto, id) in file.vips {
            let (addr, family) = addr_bytes(addr);
            let key = VipKey {
                addr,
                port: port.to_be(),
                proto,
                family,
            };
            ids.vips.insert(key, id);
        }
        for (t, p, a, port, id) in file.backends {
            ids.backends.insert((t, p, a, port), id);
        }
        Ok(ids)
    }
}

/// A rate per second as a budget per `RATE_WINDOW_NS` window (rounded up,
/// so a small rate still lets something through); 0 = unlimited.
fn per_window(rate: Option<u64>) -> u64 {
    let windows_per_second = 1_000_000_000 / RATE_WINDOW_NS;
    rate.map_or(0, |r| r.div_ceil(windows_per_second))
}

impl Reconciler {
    /// Writes the tenants' and VIPs' packet policies and the ACL entries
    /// that differ, and clears the slots nobody uses any more.
    fn apply_policy(
        &mut self,
        dp: &mut Dataplane,
        tenants: &BTreeMap<u32, TenantPolicy>,
        vips: &BTreeMap<u32, VipPolicy>,
        acl: &BTreeMap<(u32, AclKey), u8>,
    ) -> Result<(), ReconcileError> {
        for (&id, p) in tenants {
            if dp.tenant_policy(id)? != *p {
                dp.set_tenant_policy(id, p)?;
            }
        }
        for (&id, p) in vips {
            if dp.vip_policy(id)? != *p {
                dp.set_vip_policy(id, p)?;
            }
        }
        // Slots of tenants and VIPs that are gone go back to "no policy".
        for id in std::mem::take(&mut self.policy_slots.0) {
            if !tenants.contains_key(&id) {
                dp.set_tenant_policy(id, &TenantPolicy::default())?;
            }
        }
        for id in std::mem::take(&mut self.policy_slots.1) {
            if !vips.contains_key(&id) {
                dp.set_vip_policy(id, &VipPolicy::default())?;
            }
        }
        self.policy_slots = (
            tenants.keys().copied().collect(),
            vips.keys().copied().collect(),
        );
        let current: BTreeMap<(u32, AclKey), u8> = dp
            .acl_entries()
            .into_iter()
            .map(|(len, key, action)| ((len, key), action))
            .collect();
        for (len, key) in current.keys() {
            if !acl.contains_key(&(*len, *key)) {
                dp.remove_acl(*len, *key)?;
            }
        }
        for ((len, key), action) in acl {
            if current.get(&(*len, *key)) != Some(action) {
                dp.set_acl(*len, *key, *action)?;
            }
        }
        Ok(())
    }
}

/// The on-disk form of [`Ids`] (`state_dir/ids.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct IdsFile {
    tenants: Vec<(String, u32)>,
    pools: Vec<(String, String, u32)>,
    /// (address, port, protocol number, id)
    vips: Vec<(IpAddr, u16, u8, u32)>,
    /// (tenant, pool, address, port, id)
    backends: Vec<(String, String, IpAddr, u16, u32)>,
}

/// What one apply changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub backends_written: usize,
    pub rings_written: usize,
    pub vips_written: usize,
    pub vips_removed: usize,
    pub pools_removed: usize,
    pub backends_released: usize,
    /// Tenants' flow tables created or resized.
    pub flow_tables_written: usize,
    /// Flows dropped with the flow table of a removed tenant.
    pub flows_removed: usize,
}

struct DesiredPool {
    id: u32,
    tenant_id: u32,
    tenant: String,
    name: String,
    ring_size: u32,
    /// (backend id, map value, weight, identity key bytes)
    backends: Vec<(u32, Backend, u32, Vec<u8>)>,
    /// Whether an L4 VIP uses the pool. Only those get a Maglev ring: the
    /// L7 proxy balances in `lbd` and needs only the backends' state.
    in_xdp: bool,
}

/// Applies configurations to the maps, remembering id assignments between
/// applies.
#[derive(Debug, Default)]
pub struct Reconciler {
    ids: Ids,
    /// Whether every backend slot was checked for leftovers once.
    scanned: bool,
    /// What each pool's published ring was built from (members, ring size,
    /// seed): an apply that finds the same inputs skips the Maglev build.
    ring_inputs: BTreeMap<u32, RingInputs>,
    /// Tenant and VIP ids whose policy slots the last apply wrote.
    policy_slots: (BTreeSet<u32>, BTreeSet<u32>),
}

/// The inputs of one ring: (id, identity key, weight) of the members, the
/// ring size and the hash seed.
type RingInputs = (Vec<(u32, Vec<u8>, u32)>, u32, u32);

impl Reconciler {
    /// A reconciler with no ids assigned yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A reconciler that continues an earlier id assignment (see [`Ids::load`]).
    #[must_use]
    pub fn with_ids(ids: Ids) -> Self {
        Self {
            ids,
            scanned: false,
            ring_inputs: BTreeMap::new(),
            policy_slots: (BTreeSet::new(), BTreeSet::new()),
        }
    }

    /// The current id assignment.
    #[must_use]
    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    /// Makes the maps match `config`: writes what differs, removes what the
    /// config no longer names (and the flow-table entries of removed
    /// tenants). Other tenants' entries are not touched unless they changed.
    ///
    /// # Errors
    /// When a map write fails or the maps are full; the maps may then be
    /// partly updated, and a later apply completes the job.
    pub fn apply(
        &mut self,
        config: &Config,
        dp: &mut Dataplane,
    ) -> Result<ApplyReport, ReconcileError> {
        self.apply_with_health(config, &BTreeSet::new(), dp)
    }

    /// [`Reconciler::apply`], with the backends that failed their health
    /// checks (`down`): they are marked down (flow-table hits on them are
    /// re-steered) and left out of their pool's ring.
    ///
    /// # Errors
    /// As [`Reconciler::apply`].
    #[expect(
        clippy::too_many_lines,
        reason = "one pass in the order the writes must happen: ids, backends, rings, VIPs, removals"
    )]
    pub fn apply_with_health(
        &mut self,
        config: &Config,
        down: &BTreeSet<BackendKey>,
        dp: &mut Dataplane,
    ) -> Result<ApplyReport, ReconcileError> {
        let mut report = ApplyReport::default();
        let settings = Settings {
            flow_idle_ns: u64::try_from(config.node.flow_idle_timeout.as_nanos())
                .unwrap_or(u64::MAX),
            hash_seed: config.node.hash_seed,
            forwarding: match config.node.forwarding {
                Forwarding::Ipip => FORWARD_IPIP,
                Forwarding::L2dsr => FORWARD_L2DSR,
            },
            ..Settings::default()
        };
        let mut current = dp.settings()?;
        current.layout_version = 0;
        if current != settings {
            dp.set_settings(settings)?;
        }

        // Ids for everything the config names; release the rest.
        let mut keep_tenants = BTreeSet::new();
        let mut keep_pools = BTreeSet::new();
        let mut keep_vips = BTreeSet::new();
        let mut keep_backends = BTreeSet::new();
        let mut pools = Vec::new();
        let mut vips: BTreeMap<VipKey, VipInfo> = BTreeMap::new();
        let mut vip_addrs: BTreeMap<VipAddrKey, u32> = BTreeMap::new();
        let mut tenant_policies: BTreeMap<u32, TenantPolicy> = BTreeMap::new();
        let mut vip_policies: BTreeMap<u32, VipPolicy> = BTreeMap::new();
        let mut acl: BTreeMap<(u32, AclKey), u8> = BTreeMap::new();
        let mut flow_tables: BTreeMap<u32, u32> = BTreeMap::new();
        for t in &config.tenants {
            let tenant_id = self.ids.tenants.get_or_alloc(&t.name, "tenants")?;
            keep_tenants.insert(t.name.clone());
            for p in &t.pools {
                let pkey = (t.name.clone(), p.name.clone());
                let pool_id = self.ids.pools.get_or_alloc(&pkey, "pools")?;
                keep_pools.insert(pkey);
                let mut backends = Vec::new();
                for b in &p.backends {
                    let port = b.port.unwrap_or(0);
                    let bkey = (t.name.clone(), p.name.clone(), b.address, port);
                    let id = self.ids.backends.get_or_alloc(&bkey, "backends")?;
                    let (addr, family) = addr_bytes(b.address);
                    let state = if b.weight == 0 {
                        BACKEND_DRAINING
                    } else if down.contains(&bkey) {
                        BACKEND_DOWN
                    } else {
                        BACKEND_UP
                    };
                    let value = Backend {
                        addr,
                        tenant_id,
                        pool_id,
                        generation: 0,
                        port,
                        weight: u16::try_from(b.weight).unwrap_or(u16::MAX),
                        family,
                        state,
                        _pad: [0; 2],
                    };
                    let mut identity = addr.to_vec();
                    identity.push(family);
                    identity.extend_from_slice(&port.to_be_bytes());
                    keep_backends.insert(bkey);
                    backends.push((id, value, b.weight, identity));
                }
                pools.push(DesiredPool {
                    id: pool_id,
                    tenant_id,
                    tenant: t.name.clone(),
                    name: p.name.clone(),
                    ring_size: p.ring_size,
                    backends,
                    in_xdp: t.l4.iter().any(|v| v.pool == p.name),
                });
            }
            for v in &t.l4 {
                let (addr, family) = addr_bytes(v.vip);
                let key = VipKey {
                    addr,
                    port: v.port.to_be(),
                    proto: v.protocol.number(),
                    family,
                };
                let vip_id = self.ids.vips.get_or_alloc(&key, "VIPs")?;
                keep_vips.insert(key);
                let pool_id = self
                    .ids
                    .pool(&t.name, &v.pool)
                    .ok_or(ReconcileError::Capacity {
                        what: "pools",
                        max: 0,
                    })?;
                vips.insert(
                    key,
                    VipInfo {
                        tenant_id,
                        pool_id,
                        vip_id,
                        flags: 0,
                    },
                );
                vip_addrs.insert(
                    VipAddrKey {
                        addr,
                        family,
                        _pad: [0; 3],
                    },
                    tenant_id,
                );
                vip_policies.insert(
                    vip_id,
                    VipPolicy {
                        packets_per_window: per_window(v.limits.packets_per_second),
                        bytes_per_window: per_window(v.limits.bytes_per_second),
                        syns_per_window: per_window(v.limits.syn_per_second),
                    },
                );
            }
            if t.max_flows > 0 {
                flow_tables.insert(tenant_id, t.max_flows);
            }
            let mut flags = 0;
            if !t.acl.allow.is_empty() || !t.acl.deny.is_empty() {
                flags |= POLICY_F_ACL;
            }
            if !t.acl.allow.is_empty() {
                flags |= POLICY_F_DEFAULT_DENY;
            }
            tenant_policies.insert(
                tenant_id,
                TenantPolicy {
                    packets_per_window: per_window(t.limits.packets_per_second),
                    bytes_per_window: per_window(t.limits.bytes_per_second),
                    new_flows_per_window: per_window(t.limits.new_flows_per_second),
                    flags,
                    _pad: 0,
                },
            );
            // Deny after allow: the same prefix in both lists is denied.
            for (list, action) in [(&t.acl.allow, ACL_ALLOW), (&t.acl.deny, ACL_DENY)] {
                for (ip, len) in list {
                    let (addr, family) = addr_bytes(*ip);
                    let key = AclKey {
                        tenant_be: tenant_id.to_be_bytes(),
                        family,
                        _pad: [0; 3],
                        addr,
                    };
                    // IPv4 addresses sit in the first four bytes, so the
                    // prefix counts from the address's start for both.
                    acl.insert((ACL_KEY_FIXED_BITS + u32::from(*len), key), action);
                }
            }
        }

        // The SNI-derived tenant hashes of every L7 host name (the
        // configuration guarantees they are unique).
        let mut sni: BTreeMap<u64, u32> = BTreeMap::new();
        for t in &config.tenants {
            let Some(id) = self.ids.tenant(&t.name) else {
                continue;
            };
            for host in t.l7.iter().flat_map(|s| &s.hosts) {
                sni.insert(crate::config::sni_hash(host), id);
            }
        }
        let current: BTreeMap<u64, u32> = dp.sni_entries().into_iter().collect();
        for hash in current.keys().filter(|h| !sni.contains_key(h)) {
            dp.remove_sni(*hash)?;
        }
        for (hash, id) in &sni {
            if current.get(hash) != Some(id) {
                dp.set_sni(*hash, *id)?;
            }
        }

        // L7 listen addresses: XDP applies their packet policy and passes
        // them to the local stack, where lbd listens. An address of one
        // tenant gets that tenant's ACL and budgets too; a shared one only
        // its own limits (lbd applies per-tenant policy once it knows the
        // tenant).
        for l in &config.listeners {
            let owners: BTreeSet<&str> = config
                .tenants
                .iter()
                .filter(|t| t.l7.iter().any(|s| s.listen == l.address))
                .map(|t| t.name.as_str())
                .collect();
            let tenant_id = match owners.iter().next() {
                Some(only) if owners.len() == 1 => self.ids.tenant(only).unwrap_or(NO_TENANT),
                _ => NO_TENANT,
            };
            let (addr, family) = addr_bytes(l.address.ip());
            let key = VipKey {
                addr,
                port: l.address.port().to_be(),
                proto: PROTO_TCP,
                family,
            };
            let vip_id = self.ids.vips.get_or_alloc(&key, "VIPs")?;
            keep_vips.insert(key);
            vips.insert(
                key,
                VipInfo {
                    tenant_id,
                    pool_id: 0,
                    vip_id,
                    flags: VIP_F_LOCAL,
                },
            );
            vip_addrs
                .entry(VipAddrKey {
                    addr,
                    family,
                    _pad: [0; 3],
                })
                .or_insert(tenant_id);
            vip_policies.insert(
                vip_id,
                VipPolicy {
                    packets_per_window: per_window(l.limits.packets_per_second),
                    bytes_per_window: per_window(l.limits.bytes_per_second),
                    syns_per_window: per_window(l.limits.syn_per_second),
                },
            );
        }

        // Backends first (so a ring never names a slot not yet written),
        // then rings, then VIPs that point at the pools. A backend that
        // stops taking new flows (up to draining or down) is written after
        // the rings: the data plane refuses a new flow the ring gives to a
        // backend not up, so writing it first would drop every new flow
        // hashed to it until its pool's new ring is published.
        let mut demoted: Vec<(u32, Backend)> = Vec::new();
        for pool in &mut pools {
            for (id, value, _, _) in &mut pool.backends {
                let cur = dp.backend(*id)?;
                let same_occupant = cur.state != BACKEND_UNUSED
                    && cur.addr == value.addr
                    && cur.family == value.family
                    && cur.tenant_id == value.tenant_id
                    && cur.pool_id == value.pool_id;
                value.generation = if same_occupant {
                    cur.generation
                } else {
                    cur.generation.wrapping_add(1)
                };
                if cur != *value {
                    if !same_occupant {
                        dp.reset_counters(None, None, Some(*id))?;
                    }
                    if same_occupant && cur.state == BACKEND_UP && value.state != BACKEND_UP {
                        demoted.push((*id, *value));
                    } else {
                        dp.set_backend(*id, value)?;
                    }
                    report.backends_written += 1;
                }
            }
            let inputs: RingInputs = (
                pool.backends
                    .iter()
                    .filter(|(_, v, _, _)| v.state == BACKEND_UP)
                    .map(|(id, _, weight, key)| (*id, key.clone(), *weight))
                    .collect(),
                pool.ring_size,
                config.node.hash_seed,
            );
            let published = dp
                .pool(pool.id)
                .is_some_and(|p| p.tenant_id == pool.tenant_id);
            if !pool.in_xdp {
                // No VIP points at the pool: free its ring, if it had one.
                if dp.pool(pool.id).is_some() {
                    dp.remove_pool(pool.id)?;
                }
                self.ring_inputs.remove(&pool.id);
                continue;
            }
            if published && self.ring_inputs.get(&pool.id) == Some(&inputs) {
                // Built from the same inputs last time: the ring is the same.
                continue;
            }
            let members: Vec<RingBackend<'_>> = inputs
                .0
                .iter()
                .map(|(id, key, weight)| RingBackend {
                    id: *id,
                    key,
                    weight: *weight,
                })
                .collect();
            let ring = maglev::build(&members, pool.ring_size, config.node.hash_seed).map_err(
                |source| ReconcileError::Maglev {
                    tenant: pool.tenant.clone(),
                    pool: pool.name.clone(),
                    source,
                },
            )?;
            if !(published && dp.ring(pool.id).as_deref() == Some(ring.as_slice())) {
                dp.write_ring(pool.id, pool.tenant_id, &ring)?;
                report.rings_written += 1;
            }
            self.ring_inputs.insert(pool.id, inputs);
        }
        for (id, value) in &demoted {
            dp.set_backend(*id, value)?;
        }
        // Flow tables before the VIPs, so a VIP's first packets find their
        // tenant's table.
        for (&tenant, &capacity) in &flow_tables {
            if dp.set_flow_table(tenant, capacity)? != TableChange::Unchanged {
                report.flow_tables_written += 1;
            }
        }
        let current_vips: BTreeMap<VipKey, VipInfo> = dp.vips().into_iter().collect();
        for (key, info) in &vips {
            if current_vips.get(key) != Some(info) {
                dp.set_vip(key, info)?;
                report.vips_written += 1;
            }
        }
        let current_addrs: BTreeMap<VipAddrKey, u32> = dp.vip_addrs().into_iter().collect();
        for (key, tenant) in &vip_addrs {
            if current_addrs.get(key) != Some(tenant) {
                dp.set_vip_addr(key, *tenant)?;
            }
        }

        // Removals: VIPs first (no new packets reach the pools), then pools,
        // then backend slots, then the flow tables of removed tenants.
        for key in current_vips.keys() {
            if !vips.contains_key(key) {
                dp.remove_vip(key)?;
                report.vips_removed += 1;
            }
        }
        for key in current_addrs.keys() {
            if !vip_addrs.contains_key(key) {
                dp.remove_vip_addr(key)?;
            }
        }
        self.ids.vips.retain(&keep_vips);
        let desired_pools: BTreeSet<u32> = pools.iter().map(|p| p.id).collect();
        for (id, _) in dp.pools() {
            if !desired_pools.contains(&id) {
                self.ring_inputs.remove(&id);
                dp.remove_pool(id)?;
                report.pools_removed += 1;
            }
        }
        self.ids.pools.retain(&keep_pools);
        let desired_backends: BTreeSet<u32> = pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|(id, ..)| *id))
            .collect();
        let released = self.ids.backends.retain(&keep_backends);
        // The first apply of a process scans every slot (the maps may hold
        // backends of an earlier configuration); later ones only the slots
        // this apply released.
        let candidates: Vec<u32> = if self.scanned {
            released
        } else {
            (0..dp.backend_capacity()).collect()
        };
        self.scanned = true;
        for id in candidates {
            if desired_backends.contains(&id) {
                continue;
            }
            let cur = dp.backend(id)?;
            if cur.state != BACKEND_UNUSED {
                dp.set_backend(
                    id,
                    &Backend {
                        generation: cur.generation.wrapping_add(1),
                        ..Backend::default()
                    },
                )?;
                report.backends_released += 1;
            }
        }
        self.apply_policy(dp, &tenant_policies, &vip_policies, &acl)?;
        let removed_tenants = self.ids.tenants.retain(&keep_tenants);
        // Flow tables of tenants gone or without L4 VIPs now (also those an
        // earlier configuration left in pinned maps).
        for tenant in dp.flow_tables().into_keys() {
            if !flow_tables.contains_key(&tenant) {
                report.flows_removed += dp.remove_flow_table(tenant)?;
            }
        }
        for t in removed_tenants {
            dp.reset_counters(Some(t), None, None)?;
        }
        Ok(report)
    }
}
