//! The data plane: loads, attaches and pins the balancer, and is the only
//! code that writes its maps.
//!
//! Maps are pinned under `pin_path` (one file per map, named as in
//! `lb_common::ALL_MAPS`) and the XDP attachment is a pinned BPF link, so the
//! program keeps forwarding when `lbd` exits and the next `lbd` adopts the
//! same maps. Without a pin path (tests, benchmarks) everything is private to
//! the process and disappears with it.
//!
//! Rings live in one memory-mapped array (the ring arena): a new ring is
//! copied into a free region with plain stores and then published by
//! replacing the pool's entry in `LB_POOLS` (an RCU swap in the kernel), so a
//! packet sees either the old ring or the new one, never a mix. The old
//! region is reused only after a grace period.

use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    ptr::NonNull,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
    util::nr_cpus,
};
use lb_common::{
    ALL_MAPS, AclKey, Backend, DropCounters, FlowKey, FlowValue, LAYOUT_VERSION, MAP_ACL,
    MAP_BACKEND_STATS, MAP_BACKENDS, MAP_FLOWS, MAP_GLOBAL_STATS, MAP_NEXTHOPS, MAP_POOLS,
    MAP_RINGS, MAP_SETTINGS, MAP_SNI, MAP_TENANT_DROPS, MAP_TENANT_POLICY, MAP_TENANT_STATS,
    MAP_VIP_ADDRS, MAP_VIP_POLICY, MAP_VIP_STATS, MAP_VIPS, NextHop, PoolInfo, RING_ARENA_ENTRIES,
    Settings, TenantPolicy, TrafficCounters, VipAddrKey, VipInfo, VipKey, VipPolicy,
};

use crate::objects;

mod flow_tables;

use flow_tables::FlowTables;
pub use flow_tables::TableChange;

/// The balancer's XDP program, by its function name in `lb-ebpf`.
pub const BALANCER_PROGRAM: &str = "lb_balancer";
/// How long a released ring region stays untouched before reuse: far longer
/// than any XDP program run that may still read the old ring.
const RING_GRACE: Duration = Duration::from_secs(1);

/// Errors of the data plane, each naming what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The embedded eBPF object could not be loaded.
    #[error("loading the balancer's eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A map is missing from the object or the pin directory.
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// A map operation failed.
    #[error("{what}: {source}")]
    MapOp {
        what: String,
        #[source]
        source: MapError,
    },
    /// Loading or attaching the program failed.
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: ProgramError,
    },
    /// The pinned maps were written by an incompatible version of lb.
    #[error(
        "the maps pinned under {path} have layout version {found}, this lbd uses {expected}; \
         stop the old lbd and run `lbd --config FILE --cleanup` to remove them (this drops established flows)"
    )]
    Layout {
        path: PathBuf,
        found: u8,
        expected: u32,
    },
    /// The ring arena has no free region large enough.
    #[error(
        "the ring arena is full: no room for a ring of {0} slots (too many pools or pools too large)"
    )]
    ArenaFull(u32),
    /// A ring must have at least one slot (its size is a prime).
    #[error("pool {0}: a ring needs at least one slot")]
    EmptyRing(u32),
    /// File-system or mmap error.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn map_op(what: impl Into<String>) -> impl FnOnce(MapError) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::MapOp { what, source }
}

/// How to load the balancer.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Pin maps and the XDP link here; `None` keeps everything private.
    pub pin_path: Option<PathBuf>,
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Let the kernel pick (native when the driver supports it).
    Auto,
    /// Driver mode; fails when the driver has no XDP support.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// Sum of a per-CPU counter over all CPUs.
pub trait SumCpus {
    /// Adds `other` into `self`.
    fn add(&mut self, other: &Self);
}

impl SumCpus for TrafficCounters {
    fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.drops += o.drops;
    }
}

impl SumCpus for DropCounters {
    fn add(&mut self, o: &Self) {
        for (a, b) in self.by_reason.iter_mut().zip(o.by_reason.iter()) {
            *a += b;
        }
    }
}

impl SumCpus for u64 {
    fn add(&mut self, o: &Self) {
        *self += o;
    }
}

/// Typed handles on every balancer map.
pub struct Dataplane {
    /// The loaded object, when this process loaded it (not for `open_pinned`).
    ebpf: Option<Ebpf>,
    pin_path: Option<PathBuf>,
    vips: HashMap<MapData, VipKey, VipInfo>,
    vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    pools: HashMap<MapData, u32, PoolInfo>,
    backends: Array<MapData, Backend>,
    flows: FlowTables,
    settings: Array<MapData, Settings>,
    nexthops: PerCpuArray<MapData, NextHop>,
    tenant_stats: PerCpuArray<MapData, TrafficCounters>,
    tenant_drops: PerCpuArray<MapData, DropCounters>,
    vip_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    global_stats: PerCpuArray<MapData, u64>,
    acl: LpmTrie<MapData, AclKey, u8>,
    tenant_policy: Array<MapData, TenantPolicy>,
    vip_policy: Array<MapData, VipPolicy>,
    sni: HashMap<MapData, u64, u32>,
    arena: RingArena,
    /// Maps without a typed handle (rate-limiter state): kept open because
    /// the loaded program refers to them by file descriptor.
    untyped: Vec<MapData>,
}

impl Dataplane {
    /// Loads the balancer object, creating its maps or adopting the ones
    /// pinned under `opts.pin_path`. The program is not attached yet.
    ///
    /// # Errors
    /// When the object does not load, a map is missing, or pinned maps have
    /// another layout version.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        let pin_paths: Vec<(&'static str, PathBuf)> = match &opts.pin_path {
            Some(dir) => {
                fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
                    what: format!("creating the pin directory {}", dir.display()),
                    source,
                })?;
                ALL_MAPS.iter().map(|n| (*n, dir.join(n))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(objects::BALANCER)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let take = |ebpf: &mut Ebpf, name: &'static str| -> Result<MapData> {
            match ebpf.take_map(name) {
                Some(m) => map_data(m).map_err(|source| DataplaneError::Map { name, source }),
                None => Err(DataplaneError::Map {
                    name,
                    source: MapError::InvalidName {
                        name: name.to_string(),
                    },
                }),
            }
        };
        let mut maps = Vec::with_capacity(ALL_MAPS.len());
        for name in ALL_MAPS {
            maps.push((name, take(&mut ebpf, name)?));
        }
        let mut dp = Self::from_maps(maps, opts.pin_path.clone())?;
        dp.ebpf = Some(ebpf);
        dp.check_layout()?;
        Ok(dp)
    }

    /// Opens the maps pinned under `pin_path` without loading a program
    /// (`lbctl --maps`).
    ///
    /// # Errors
    /// When a pin is missing or has another layout version.
    pub fn open_pinned(pin_path: &Path) -> Result<Self> {
        let mut maps = Vec::with_capacity(ALL_MAPS.len());
        for name in ALL_MAPS {
            let data = MapData::from_pin(pin_path.join(name))
                .map_err(|source| DataplaneError::Map { name, source })?;
            maps.push((name, data));
        }
        let dp = Self::from_maps(maps, Some(pin_path.to_path_buf()))?;
        dp.check_layout()?;
        Ok(dp)
    }

    fn from_maps(maps: Vec<(&'static str, MapData)>, pin_path: Option<PathBuf>) -> Result<Self> {
        let mut by_name: std::collections::HashMap<&'static str, MapData> =
            maps.into_iter().collect();
        let mut get = |name: &'static str| -> Result<Map> {
            let data = by_name.remove(name).ok_or(DataplaneError::Map {
                name,
                source: MapError::InvalidName {
                    name: name.to_string(),
                },
            })?;
            Map::from_map_data(data).map_err(|source| DataplaneError::Map { name, source })
        };
        macro_rules! typed {
            ($name:expr) => {{
                let name: &'static str = $name;
                get(name)?
                    .try_into()
                    .map_err(|source| DataplaneError::Map { name, source })?
            }};
        }
        let rings_map: Map = get(MAP_RINGS)?;
        let arena = RingArena::new(rings_map)?;
        let mut dp = Self {
            ebpf: None,
            pin_path,
            vips: typed!(MAP_VIPS),
            vip_addrs: typed!(MAP_VIP_ADDRS),
            pools: typed!(MAP_POOLS),
            backends: typed!(MAP_BACKENDS),
            flows: FlowTables::open(get(MAP_FLOWS)?)?,
            settings: typed!(MAP_SETTINGS),
            nexthops: typed!(MAP_NEXTHOPS),
            tenant_stats: typed!(MAP_TENANT_STATS),
            tenant_drops: typed!(MAP_TENANT_DROPS),
            vip_stats: typed!(MAP_VIP_STATS),
            backend_stats: typed!(MAP_BACKEND_STATS),
            global_stats: typed!(MAP_GLOBAL_STATS),
            acl: typed!(MAP_ACL),
            tenant_policy: typed!(MAP_TENANT_POLICY),
            vip_policy: typed!(MAP_VIP_POLICY),
            sni: typed!(MAP_SNI),
            arena,
            untyped: Vec::new(),
        };
        dp.untyped = by_name.into_values().collect();
        // Regions already holding a published ring are taken.
        let published: Vec<PoolInfo> = dp
            .pools
            .iter()
            .filter_map(|r| r.ok().map(|(_, v)| v))
            .collect();
        for p in published {
            dp.arena.reserve(p.ring_offset, p.ring_size);
        }
        Ok(dp)
    }

    fn check_layout(&self) -> Result<()> {
        let s = self.settings()?;
        if s.layout_version != 0 && u32::from(s.layout_version) != LAYOUT_VERSION {
            return Err(DataplaneError::Layout {
                path: self.pin_path.clone().unwrap_or_default(),
                found: s.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        Ok(())
    }

    /// The loaded object (to reach the benchmark helper programs).
    pub fn ebpf_mut(&mut self) -> Option<&mut Ebpf> {
        self.ebpf.as_mut()
    }

    /// The balancer program, loaded into the kernel.
    ///
    /// # Errors
    /// When this data plane was opened from pins (no program), or the
    /// verifier rejects the program.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let what = || format!("program {name}");
        let ebpf = self.ebpf.as_mut().ok_or_else(|| DataplaneError::Program {
            what: what(),
            source: ProgramError::NotLoaded,
        })?;
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| DataplaneError::Program {
                what: what(),
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DataplaneError::Program {
                what: what(),
                source,
            })?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| DataplaneError::Program {
                what: format!("loading {name} (verifier)"),
                source,
            })?;
        }
        Ok(prog)
    }

    /// Attaches the balancer to `interface`. With a pin path the attachment
    /// is a pinned link: an existing one (left by a previous `lbd`) gets the
    /// new program atomically, and it stays attached when this process exits.
    ///
    /// # Errors
    /// When the interface does not exist or the attach fails.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<()> {
        let link_pin = self.pin_path.as_ref().map(|d| link_pin_path(d, interface));
        let prog = self.program(BALANCER_PROGRAM)?;
        let err = |what: String| move |source| DataplaneError::Program { what, source };
        if let Some(pin) = &link_pin
            && pin.exists()
        {
            let pinned = PinnedLink::from_pin(pin).map_err(|e| DataplaneError::Io {
                what: format!("opening the pinned XDP link {}", pin.display()),
                source: io::Error::other(e),
            })?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| DataplaneError::Io {
                what: format!("{} is not an XDP link", pin.display()),
                source: io::Error::other(e),
            })?;
            prog.attach_to_link(link)
                .map_err(err(format!("replacing the program on {interface}")))?;
            return Ok(());
        }
        let flags = match mode {
            AttachMode::Auto => XdpMode::Default,
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        };
        let id = prog
            .attach(interface, flags)
            .map_err(err(format!("attaching XDP to {interface}")))?;
        if let Some(pin) = link_pin {
            let link = prog
                .take_link(id)
                .map_err(err("taking the XDP link".into()))?;
            let fd = FdLink::try_from(link).map_err(|e| DataplaneError::Io {
                what: "the kernel attached XDP without a BPF link, which cannot be pinned".into(),
                source: io::Error::other(e),
            })?;
            fd.pin(&pin).map_err(|e| DataplaneError::Io {
                what: format!("pinning the XDP link at {}", pin.display()),
                source: io::Error::other(e),
            })?;
        }
        Ok(())
    }

    /// The node-wide settings.
    ///
    /// # Errors
    /// On a failed map read.
    pub fn settings(&self) -> Result<Settings> {
        self.settings.get(&0, 0).map_err(map_op("reading settings"))
    }

    /// Writes the node-wide settings (stamping the layout version).
    ///
    /// # Errors
    /// On a failed map write.
    pub fn set_settings(&mut self, mut s: Settings) -> Result<()> {
        #[expect(clippy::cast_possible_truncation, reason = "layout versions are small")]
        {
            s.layout_version = LAYOUT_VERSION as u8;
        }
        self.settings
            .set(0, s, 0)
            .map_err(map_op("writing settings"))
    }

    /// Adds or replaces a VIP.
    ///
    /// # Errors
    /// On a failed map write (e.g. the VIP table is full).
    pub fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()> {
        self.vips
            .insert(key, info, 0)
            .map_err(map_op("writing a VIP"))
    }

    /// Removes a VIP; absent is fine.
    ///
    /// # Errors
    /// On a failed map operation other than "not found".
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        ignore_missing(self.vips.remove(key)).map_err(map_op("removing a VIP"))
    }

    /// All VIPs.
    pub fn vips(&self) -> Vec<(VipKey, VipInfo)> {
        self.vips
            .iter()
            .filter_map(std::result::Result::ok)
            .collect()
    }

    /// Marks `addr` as carrying VIPs of `tenant`.
    ///
    /// # Errors
    /// On a failed map write.
    pub fn set_vip_addr(&mut self, key: &VipAddrKey, tenant: u32) -> Result<()> {
        self.vip_addrs
            .insert(key, tenant, 0)
            .map_err(map_op("writing a VIP address"))
    }

    /// Removes a VIP address; absent is fine.
    ///
    /// # Errors
    /// On a failed map operation other than "not found".
    pub fn remove_vip_addr(&mut self, key: &VipAddrKey) -> Result<()> {
        ignore_missing(self.vip_addrs.remove(key)).map_err(map_op("removing a VIP address"))
    }

    /// All VIP addresses.
    pub fn vip_addrs(&self) -> Vec<(VipAddrKey, u32)> {
        self.vip_addrs
            .iter()
            .filter_map(std::result::Result::ok)
            .collect()
    }

    /// Maps an SNI hash to its tenant.
    ///
    /// # Errors
    /// On a failed map write (the map is full).
    pub fn set_sni(&mut self, hash: u64, tenant: u32) -> Result<()> {
        self.sni
            .insert(hash, tenant, 0)
            .map_err(map_op("writing an SNI name"))
    }

    /// Removes an SNI hash; absent is fine.
    ///
    /// # Errors
    /// On a failed map operation other than "not found".
    pub fn remove_sni(&mut self, hash: u64) -> Result<()> {
        ignore_missing(self.sni.remove(&hash)).map_err(map_op("removing an SNI name"))
    }

    /// Every SNI hash and its tenant.
    pub fn sni_entries(&self) -> Vec<(u64, u32)> {
        self.sni
            .iter()
            .filter_map(std::result::Result::ok)
            .collect()
    }

    /// Reads backend slot `id`.
    ///
    /// # Errors
    /// When `id` is out of range.
    pub fn backend(&self, id: u32) -> Result<Backend> {
        self.backends
            .get(&id, 0)
            .map_err(map_op(format!("reading backend {id}")))
    }

    /// Writes backend slot `id`.
    ///
    /// # Errors
    /// When `id` is out of range.
    pub fn set_backend(&mut self, id: u32, b: &Backend) -> Result<()> {
        self.backends
            .set(id, b, 0)
            .map_err(map_op(format!("writing backend {id}")))
    }

    /// Number of backend slots.
    #[must_use]
    pub fn backend_capacity(&self) -> u32 {
        self.backends.len()
    }

    /// The published ring location of a pool.
    #[must_use]
    pub fn pool(&self, pool_id: u32) -> Option<PoolInfo> {
        self.pools.get(&pool_id, 0).ok()
    }

    /// All pools.
    pub fn pools(&self) -> Vec<(u32, PoolInfo)> {
        self.pools
            .iter()
            .filter_map(std::result::Result::ok)
            .collect()
    }

    /// A copy of the ring a pool currently uses.
    #[must_use]
    pub fn ring(&self, pool_id: u32) -> Option<Vec<u32>> {
        let p = self.pool(pool_id)?;
        Some(self.arena.read(p.ring_offset, p.ring_size))
    }

    /// Replaces a pool's ring atomically: the new ring is written into a free
    /// region of the arena, then the pool entry is swapped to point at it.
    /// The ring size of a pool must not change during its lifetime (flows
    /// would move); the caller enforces that.
    ///
    /// # Errors
    /// When the arena is full or the pool entry cannot be written.
    pub fn write_ring(&mut self, pool_id: u32, tenant_id: u32, ring: &[u32]) -> Result<()> {
        if ring.is_empty() {
            return Err(DataplaneError::EmptyRing(pool_id));
        }
        let size = u32::try_from(ring.len()).map_err(|_| DataplaneError::ArenaFull(u32::MAX))?;
        let old = self.pool(pool_id);
        let offset = self
            .arena
            .alloc(size)
            .ok_or(DataplaneError::ArenaFull(size))?;
        self.arena.write(offset, ring);
        let info = PoolInfo {
            ring_offset: offset,
            ring_size: size,
            tenant_id,
            generation: old.map_or(1, |o| o.generation.wrapping_add(1)),
        };
        if let Err(e) = self.pools.insert(pool_id, info, 0) {
            self.arena.release(offset, size);
            return Err(map_op(format!("publishing the ring of pool {pool_id}"))(e));
        }
        if let Some(o) = old {
            self.arena.release(o.ring_offset, o.ring_size);
        }
        Ok(())
    }

    /// Removes a pool and frees its ring.
    ///
    /// # Errors
    /// On a failed map operation other than "not found".
    pub fn remove_pool(&mut self, pool_id: u32) -> Result<()> {
        let old = self.pool(pool_id);
        ignore_missing(self.pools.remove(&pool_id))
            .map_err(map_op(format!("removing pool {pool_id}")))?;
        if let Some(o) = old {
            self.arena.release(o.ring_offset, o.ring_size);
        }
        Ok(())
    }

    /// Seeds the next-hop cache of a backend on every CPU (tests and
    /// benchmarks use it to run the program without a FIB).
    ///
    /// # Errors
    /// On a failed map write.
    pub fn set_nexthop(&mut self, id: u32, nh: &NextHop) -> Result<()> {
        let cpus = nr_cpus().map_err(|(what, source)| DataplaneError::Io {
            what: what.to_string(),
            source,
        })?;
        let values =
            PerCpuValues::try_from(vec![*nh; cpus]).map_err(|source| DataplaneError::Io {
                what: "building per-CPU values".into(),
                source,
            })?;
        self.nexthops
            .set(id, values, 0)
            .map_err(map_op(format!("writing the next hop of backend {id}")))
    }

    /// A tenant's packet policy.
    ///
    /// # Errors
    /// When `tenant` is out of range.
    pub fn tenant_policy(&self, tenant: u32) -> Result<TenantPolicy> {
        self.tenant_policy
            .get(&tenant, 0)
            .map_err(map_op(format!("reading the policy of tenant {tenant}")))
    }

    /// Writes a tenant's packet policy.
    ///
    /// # Errors
    /// When `tenant` is out of range.
    pub fn set_tenant_policy(&mut self, tenant: u32, p: &TenantPolicy) -> Result<()> {
        self.tenant_policy
            .set(tenant, p, 0)
            .map_err(map_op(format!("writing the policy of tenant {tenant}")))
    }

    /// A VIP's packet policy.
    ///
    /// # Errors
    /// When `vip` is out of range.
    pub fn vip_policy(&self, vip: u32) -> Result<VipPolicy> {
        self.vip_policy
            .get(&vip, 0)
            .map_err(map_op(format!("reading the policy of VIP {vip}")))
    }

    /// Writes a VIP's packet policy.
    ///
    /// # Errors
    /// When `vip` is out of range.
    pub fn set_vip_policy(&mut self, vip: u32, p: &VipPolicy) -> Result<()> {
        self.vip_policy
            .set(vip, p, 0)
            .map_err(map_op(format!("writing the policy of VIP {vip}")))
    }

    /// Every ACL entry: (prefix length over the whole key, key, action).
    #[must_use]
    pub fn acl_entries(&self) -> Vec<(u32, AclKey, u8)> {
        self.acl
            .iter()
            .filter_map(std::result::Result::ok)
            .map(|(k, v)| (k.prefix_len(), k.data(), v))
            .collect()
    }

    /// Adds or replaces an ACL entry; `prefix_len` counts the key's fixed
    /// bits too (`ACL_KEY_FIXED_BITS` + the address prefix).
    ///
    /// # Errors
    /// On a failed map write (e.g. the ACL map is full).
    pub fn set_acl(&mut self, prefix_len: u32, key: AclKey, action: u8) -> Result<()> {
        self.acl
            .insert(&LpmKey::new(prefix_len, key), action, 0)
            .map_err(map_op("writing an ACL entry"))
    }

    /// Removes an ACL entry; absent is fine.
    ///
    /// # Errors
    /// On a failed map operation other than "not found".
    pub fn remove_acl(&mut self, prefix_len: u32, key: AclKey) -> Result<()> {
        ignore_missing(self.acl.remove(&LpmKey::new(prefix_len, key)))
            .map_err(map_op("removing an ACL entry"))
    }

    /// Every flow-table entry of every tenant.
    #[must_use]
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows.entries()
    }

    /// One entry of `tenant`'s flow table.
    #[must_use]
    pub fn flow(&self, tenant: u32, key: &FlowKey) -> Option<FlowValue> {
        self.flows.get(tenant, key)
    }

    /// Removes one entry of `tenant`'s flow table; absent is fine.
    ///
    /// # Errors
    /// On a failed map operation other than "not found".
    pub fn remove_flow(&mut self, tenant: u32, key: &FlowKey) -> Result<()> {
        self.flows.remove_entry(tenant, key)
    }

    /// Tenant id -> capacity of its flow table, for every tenant with one.
    #[must_use]
    pub fn flow_tables(&self) -> BTreeMap<u32, u32> {
        self.flows.capacities()
    }

    /// Gives `tenant` a flow table of `capacity` entries (see
    /// [`flow_tables`]): created, kept, or replaced keeping the newest flows.
    ///
    /// # Errors
    /// When the kernel refuses the table (memory) or the swap.
    pub fn set_flow_table(&mut self, tenant: u32, capacity: u32) -> Result<TableChange> {
        self.flows.set(tenant, capacity)
    }

    /// Removes `tenant`'s flow table and its flows; returns how many.
    ///
    /// # Errors
    /// When the kernel refuses the removal.
    pub fn remove_flow_table(&mut self, tenant: u32) -> Result<usize> {
        self.flows.remove(tenant)
    }

    /// Traffic counters of a tenant, summed over CPUs.
    #[must_use]
    pub fn tenant_stats(&self, id: u32) -> TrafficCounters {
        sum(&self.tenant_stats, id)
    }

    /// Drop counters of a tenant by reason, summed over CPUs.
    #[must_use]
    pub fn tenant_drops(&self, id: u32) -> DropCounters {
        sum(&self.tenant_drops, id)
    }

    /// Traffic counters of a VIP, summed over CPUs.
    #[must_use]
    pub fn vip_stats(&self, id: u32) -> TrafficCounters {
        sum(&self.vip_stats, id)
    }

    /// Traffic counters of a backend, summed over CPUs.
    #[must_use]
    pub fn backend_stats(&self, id: u32) -> TrafficCounters {
        sum(&self.backend_stats, id)
    }

    /// A node-wide counter (`global_counter::*`), summed over CPUs.
    #[must_use]
    pub fn global(&self, counter: u32) -> u64 {
        sum(&self.global_stats, counter)
    }

    /// Zeroes the per-tenant, per-VIP or per-backend counters of a slot that
    /// is handed to a new owner.
    ///
    /// # Errors
    /// On a failed map write.
    pub fn reset_counters(
        &mut self,
        tenant: Option<u32>,
        vip: Option<u32>,
        backend: Option<u32>,
    ) -> Result<()> {
        let cpus = nr_cpus().map_err(|(what, source)| DataplaneError::Io {
            what: what.to_string(),
            source,
        })?;
        let zero = || PerCpuValues::try_from(vec![TrafficCounters::default(); cpus]);
        let io = |source| DataplaneError::Io {
            what: "building per-CPU values".into(),
            source,
        };
        if let Some(t) = tenant {
            self.tenant_stats
                .set(t, zero().map_err(io)?, 0)
                .map_err(map_op("resetting tenant counters"))?;
            let drops = PerCpuValues::try_from(vec![DropCounters::default(); cpus]).map_err(io)?;
            self.tenant_drops
                .set(t, drops, 0)
                .map_err(map_op("resetting tenant drops"))?;
        }
        if let Some(v) = vip {
            self.vip_stats
                .set(v, zero().map_err(io)?, 0)
                .map_err(map_op("resetting VIP counters"))?;
        }
        if let Some(b) = backend {
            self.backend_stats
                .set(b, zero().map_err(io)?, 0)
                .map_err(map_op("resetting backend counters"))?;
        }
        Ok(())
    }
}

fn sum<V: aya::Pod + Default + SumCpus>(map: &PerCpuArray<MapData, V>, id: u32) -> V {
    let mut total = V::default();
    if let Ok(values) = map.get(&id, 0) {
        for v in values.iter() {
            total.add(v);
        }
    }
    total
}

fn ignore_missing(r: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn map_data(map: Map) -> std::result::Result<MapData, MapError> {
    match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::ArrayOfMaps(d)
        | Map::LpmTrie(d) => Ok(d),
        _ => Err(MapError::InvalidName {
            name: "a map of an unexpected type".into(),
        }),
    }
}

/// Where the XDP link of `interface` is pinned.
#[must_use]
pub fn link_pin_path(pin_path: &Path, interface: &str) -> PathBuf {
    pin_path.join(format!("link_xdp_{interface}"))
}

/// Detaches the balancer from every interface it is pinned on and removes
/// every pin under `pin_path` (`lbd --cleanup`). Returns what was removed.
///
/// # Errors
/// When a pin exists but cannot be removed.
pub fn cleanup(pin_path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(pin_path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("link_xdp_") {
            // Detach now: the link itself is freed asynchronously after its
            // last reference goes, so unlinking alone could leave the
            // program running for a moment after `--cleanup` returns.
            detach_pinned_link(&path)?;
        }
        let ours = name.starts_with("link_xdp_") || ALL_MAPS.contains(&name);
        if ours {
            // Unlinking the pin of a link detaches the program once no
            // process holds it; unlinking a map pin frees the map.
            fs::remove_file(&path)?;
            removed.push(path);
        }
    }
    // Leave the directory if something else lives there.
    let _ = fs::remove_dir(pin_path);
    Ok(removed)
}

/// Detaches the BPF link pinned at `path` from its hook right away
/// (`BPF_LINK_DETACH`), whoever else holds it; the pin stays until removed.
///
/// # Errors
/// When the pin cannot be opened or the kernel refuses the detach.
pub fn detach_pinned_link(path: &Path) -> io::Result<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};

    /// `union bpf_attr` for `BPF_OBJ_GET`.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    /// `union bpf_attr` for `BPF_LINK_DETACH`.
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;

    let name = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let get = ObjGet {
        pathname: name.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: the bpf syscall with a correctly laid out attribute block that
    // lives across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const get,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    let detach = LinkDetach {
        link_fd: u32::try_from(fd).map_err(io::Error::other)?,
        _pad: 0,
    };
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &raw const detach,
            std::mem::size_of::<LinkDetach>(),
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: closing the fd BPF_OBJ_GET gave us.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(())
}

/// The memory-mapped ring arena and its allocator.
struct RingArena {
    ptr: NonNull<u32>,
    len: u32,
    map_len: usize,
    /// Kept so the mapping's map stays alive.
    _map: Map,
    /// Taken regions: offset -> size.
    used: BTreeMap<u32, u32>,
    /// Released regions not yet reusable: (offset, released at).
    grace: Vec<(u32, Instant)>,
}

// SAFETY: the arena owns its mapping; all access goes through `&mut self` or
// `&self` reads of plain integers, so moving it to another thread is sound.
unsafe impl Send for RingArena {}

impl RingArena {
    fn new(map: Map) -> Result<Self> {
        let Map::Array(data) = &map else {
            return Err(DataplaneError::Map {
                name: MAP_RINGS,
                source: MapError::InvalidName {
                    name: "LB_RINGS is not an array".into(),
                },
            });
        };
        let info = data.info().map_err(|source| DataplaneError::Map {
            name: MAP_RINGS,
            source,
        })?;
        // Two u32 slots per 8-byte element: the mapping is a packed u32 array.
        let len = info.max_entries() * 2;
        debug_assert_eq!(len, RING_ARENA_ENTRIES);
        let map_len = (len as usize * 4).next_multiple_of(page_size());
        // SAFETY: mapping a BPF_F_MMAPABLE array map by its fd; the kernel
        // checks the length and flags.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::Io {
                what: "memory-mapping the ring arena (LB_RINGS)".into(),
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u32>()).ok_or_else(|| DataplaneError::Io {
            what: "mmap returned null".into(),
            source: io::Error::other("null mapping"),
        })?;
        Ok(Self {
            ptr,
            len,
            map_len,
            _map: map,
            used: BTreeMap::new(),
            grace: Vec::new(),
        })
    }

    fn reserve(&mut self, offset: u32, size: u32) {
        if offset.checked_add(size).is_some_and(|end| end <= self.len) {
            self.used.insert(offset, size);
        }
    }

    /// First fit, after returning regions whose grace period is over.
    fn alloc(&mut self, size: u32) -> Option<u32> {
        if size == 0 {
            return None;
        }
        let now = Instant::now();
        let used = &mut self.used;
        self.grace.retain(|(off, at)| {
            if now.duration_since(*at) >= RING_GRACE {
                used.remove(off);
                false
            } else {
                true
            }
        });
        let mut start = 0u32;
        for (&off, &len) in &self.used {
            if off.saturating_sub(start) >= size {
                break;
            }
            start = start.max(off + len);
        }
        if start.checked_add(size)? > self.len {
            return None;
        }
        self.used.insert(start, size);
        Some(start)
    }

    fn release(&mut self, offset: u32, _size: u32) {
        self.grace.push((offset, Instant::now()));
    }

    fn write(&mut self, offset: u32, ring: &[u32]) {
        assert!(
            offset as usize + ring.len() <= self.len as usize,
            "ring outside the arena"
        );
        // SAFETY: in bounds (checked above) of a live shared mapping; the
        // region is ours (allocated, not yet published).
        unsafe {
            std::ptr::copy_nonoverlapping(
                ring.as_ptr(),
                self.ptr.as_ptr().add(offset as usize),
                ring.len(),
            );
        }
        // The ring must be visible before the pool entry that publishes it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    fn read(&self, offset: u32, size: u32) -> Vec<u32> {
        let end = (offset as usize + size as usize).min(self.len as usize);
        let start = (offset as usize).min(end);
        // SAFETY: in bounds of a live mapping of u32s.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), end - start).to_vec() }
    }
}

impl Drop for RingArena {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.map_len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}
