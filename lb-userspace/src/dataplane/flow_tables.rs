//! The tenants' flow tables: one LRU hash map per tenant, reached by the XDP
//! program through the array of maps `LB_FLOWS` (tenant id -> table).
//!
//! A table of its own per tenant is what makes the flow table fair: when a
//! tenant's table is full, the kernel evicts that tenant's least recently
//! used flow, so no burst of new flows (a spray of spoofed ACKs, a SYN
//! flood) can push out another tenant's flows. Each table is created with
//! the tenant's size (`max_flows`, see `config`); a new size is applied by
//! building a new table, copying the most recent entries into it and
//! swapping it in, so a resize keeps the flows that fit.
//!
//! The inner maps live as long as the outer map refers to them: pinning
//! `LB_FLOWS` keeps every table across `lbd` restarts.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{ArrayOfMaps, HashMap, IterableMap as _, Map, MapData, MapError};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH;
use lb_common::{FlowKey, FlowValue, MAX_TENANTS};

use super::{DataplaneError, Result, ignore_missing, map_op};

/// A tenant's table.
pub(super) type FlowTable = HashMap<MapData, FlowKey, FlowValue>;

/// What [`FlowTables::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableChange {
    /// The table already had this size.
    Unchanged,
    /// A new table (the tenant had none).
    Created,
    /// The table was replaced by one of the new size; `kept` entries of
    /// the old one were carried over.
    Resized { kept: usize },
}

/// Handles on `LB_FLOWS` and the tables it holds.
pub(super) struct FlowTables {
    /// `LB_FLOWS` (an `ArrayOfMaps`, viewed as one by [`Self::outer`]).
    outer: Map,
    /// Tenant id -> (table, capacity).
    tables: BTreeMap<u32, (FlowTable, u32)>,
}

impl FlowTables {
    /// Adopts `LB_FLOWS` and every table it already holds.
    ///
    /// # Errors
    /// When a table's info cannot be read.
    pub(super) fn open(outer: Map) -> Result<Self> {
        let mut tables = BTreeMap::new();
        let view = ArrayOfMaps::<&MapData, FlowTable>::try_from(&outer)
            .map_err(map_op("opening LB_FLOWS as an array of maps"))?;
        for tenant in 0..MAX_TENANTS.min(view.len()) {
            let table = match view.get(&tenant, 0) {
                Ok(t) => t,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_op(format!("reading tenant {tenant}'s flow table"))(e)),
            };
            let capacity = capacity_of(&table)?;
            tables.insert(tenant, (table, capacity));
        }
        Ok(Self { outer, tables })
    }

    /// Tenant id -> table capacity, for every tenant that has a table.
    #[must_use]
    pub(super) fn capacities(&self) -> BTreeMap<u32, u32> {
        self.tables.iter().map(|(t, (_, c))| (*t, *c)).collect()
    }

    /// Gives `tenant` a table of `capacity` entries, replacing a table of
    /// another size (its most recently used entries are carried over).
    ///
    /// # Errors
    /// When the kernel refuses the new table (memory) or the swap.
    pub(super) fn set(&mut self, tenant: u32, capacity: u32) -> Result<TableChange> {
        let old = match self.tables.get(&tenant) {
            Some((_, c)) if *c == capacity => return Ok(TableChange::Unchanged),
            Some((t, _)) => Some(t),
            None => None,
        };
        // 40 and 24 bytes (asserted in lb-common).
        #[expect(clippy::cast_possible_truncation, reason = "key and value are small")]
        let obj = aya_obj::Map::new_from_params(
            BPF_MAP_TYPE_LRU_HASH as u32,
            size_of::<FlowKey>() as u32,
            size_of::<FlowValue>() as u32,
            capacity,
            0,
        );
        let what = || format!("creating a flow table of {capacity} entries for tenant {tenant}");
        let data =
            MapData::create(obj, &format!("lb_flows_{tenant}"), None).map_err(map_op(what()))?;
        let mut new =
            FlowTable::try_from(aya::maps::Map::LruHashMap(data)).map_err(map_op(what()))?;
        let mut kept = 0;
        if let Some(old) = old {
            kept = copy_newest(old, &mut new, capacity as usize);
        }
        ArrayOfMaps::<&mut MapData, FlowTable>::try_from(&mut self.outer)
            .and_then(|mut outer| outer.set(tenant, &new, 0))
            .map_err(map_op(format!("installing tenant {tenant}'s flow table")))?;
        let change = if let Some(old) = old {
            // Flows the program added to the old table while the copy ran.
            for (key, value) in old.iter().filter_map(std::result::Result::ok) {
                if kept < capacity as usize
                    && new
                        .insert(key, value, u64::from(aya_obj::generated::BPF_NOEXIST))
                        .is_ok()
                {
                    kept += 1;
                }
            }
            TableChange::Resized { kept }
        } else {
            TableChange::Created
        };
        self.tables.insert(tenant, (new, capacity));
        Ok(change)
    }

    /// Removes `tenant`'s table (its flows go with it); returns how many
    /// flows it held. Absent is fine.
    ///
    /// # Errors
    /// When the kernel refuses the removal.
    pub(super) fn remove(&mut self, tenant: u32) -> Result<usize> {
        let Some((table, _)) = self.tables.remove(&tenant) else {
            return Ok(0);
        };
        let flows = table.keys().count();
        delete_slot(&self.outer, tenant).map_err(|source| DataplaneError::Io {
            what: format!("removing tenant {tenant}'s flow table"),
            source,
        })?;
        Ok(flows)
    }

    /// Every entry of every table.
    #[must_use]
    pub(super) fn entries(&self) -> Vec<(FlowKey, FlowValue)> {
        self.tables
            .values()
            .flat_map(|(t, _)| t.iter().filter_map(std::result::Result::ok))
            .collect()
    }

    /// One entry of `tenant`'s table.
    #[must_use]
    pub(super) fn get(&self, tenant: u32, key: &FlowKey) -> Option<FlowValue> {
        self.tables.get(&tenant)?.0.get(key, 0).ok()
    }

    /// Removes one entry of `tenant`'s table; absent is fine.
    ///
    /// # Errors
    /// On a failed map operation other than "not found".
    pub(super) fn remove_entry(&mut self, tenant: u32, key: &FlowKey) -> Result<()> {
        let Some((table, _)) = self.tables.get_mut(&tenant) else {
            return Ok(());
        };
        ignore_missing(table.remove(key)).map_err(map_op("removing a flow"))
    }
}

fn capacity_of(table: &FlowTable) -> Result<u32> {
    let map: &MapData = table.map();
    map.info()
        .map(|i| i.max_entries())
        .map_err(map_op("reading a flow table's size"))
}

/// Copies up to `limit` entries of `from` into `to`, most recently seen
/// first; returns how many.
fn copy_newest(from: &FlowTable, to: &mut FlowTable, limit: usize) -> usize {
    let mut entries: Vec<(FlowKey, FlowValue)> =
        from.iter().filter_map(std::result::Result::ok).collect();
    entries.sort_unstable_by_key(|(_, v)| std::cmp::Reverse(v.last_seen_ns));
    entries
        .into_iter()
        .take(limit)
        .filter(|(k, v)| to.insert(k, v, 0).is_ok())
        .count()
}

/// `BPF_MAP_DELETE_ELEM` on the outer array (aya 0.14's `ArrayOfMaps` can
/// set a slot but not clear it).
fn delete_slot(outer: &Map, index: u32) -> io::Result<()> {
    /// The `BPF_MAP_*_ELEM` member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    let Map::ArrayOfMaps(data) = outer else {
        return Err(io::Error::other("LB_FLOWS is not an array of maps"));
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let attr = ElemAttr {
        map_fd: fd.cast_unsigned(),
        _pad: 0,
        key: std::ptr::from_ref(&index) as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix for this command and
    // outlives the call; the key pointer refers to a live u32.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOENT) {
        return Ok(());
    }
    Err(err)
}
