//! Runtime changes (`lbctl tenant add`, `backend drain`, ...) kept apart from
//! `lb.toml`, in `state_dir/overrides.json`.
//!
//! The configuration file is never rewritten. The effective configuration is
//! the file with the overrides applied in order, as edits of its TOML
//! document (so comments, positions and every validation rule of `config`
//! apply to the result unchanged). An override that no longer names an
//! existing object after the file changed is dropped and reported. The store
//! is shared by `lbd` and `lbctl --maps` under an exclusive `flock`.

use std::{
    fs::{self, File, OpenOptions},
    io,
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use crate::{
    api::BackendSelector,
    config::{self, BackendConf, Config},
    inspect::show,
};

/// One runtime change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Override {
    /// A tenant added at runtime: the TOML text of one `[[tenant]]`.
    AddTenant {
        name: String,
        toml: String,
    },
    RemoveTenant {
        name: String,
    },
    AddBackend {
        tenant: String,
        pool: String,
        backend: BackendConf,
    },
    RemoveBackend {
        backend: BackendSelector,
    },
    /// `weight = 0` drains the backend; `lbctl backend enable` removes the
    /// drain override again.
    SetWeight {
        backend: BackendSelector,
        weight: u32,
    },
    /// An L7 host name (SNI) added to one of a tenant's `[[tenant.l7]]`
    /// sites (by index, in file order).
    AddSniName {
        tenant: String,
        site: usize,
        name: String,
    },
    /// An L7 host name removed from whichever site has it.
    RemoveSniName {
        name: String,
    },
}

impl Override {
    /// A one-line description for `lbctl overrides list` and logs.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::AddTenant { name, .. } => format!("add tenant {name}"),
            Self::RemoveTenant { name } => format!("remove tenant {name}"),
            Self::AddBackend {
                tenant,
                pool,
                backend,
            } => format!(
                "add backend {} to {tenant}/{pool} (weight {})",
                show(backend.address, backend.port),
                backend.weight
            ),
            Self::RemoveBackend { backend } => format!("remove backend {}", show_sel(backend)),
            Self::SetWeight { backend, weight: 0 } => {
                format!("drain backend {}", show_sel(backend))
            }
            Self::SetWeight { backend, weight } => {
                format!("set weight {weight} on backend {}", show_sel(backend))
            }
            Self::AddSniName { tenant, site, name } => {
                format!("add host {name} to {tenant}'s l7[{site}]")
            }
            Self::RemoveSniName { name } => format!("remove host {name}"),
        }
    }
}

fn show_sel(b: &BackendSelector) -> String {
    format!("{} of {}/{}", show(b.address, b.port), b.tenant, b.pool)
}

/// Errors of the override store.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    /// The store could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The store's content is not valid.
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
}

/// The override file, locked while in use.
pub struct Store {
    path: PathBuf,
    /// Held for the store's lifetime: `flock` is released on close.
    _lock: File,
}

impl Store {
    /// Opens (and locks) the store in `state_dir`, waiting for another
    /// holder (`lbctl --maps` or `lbd`) to finish.
    ///
    /// # Errors
    /// When the state directory cannot be created or locked.
    pub fn open(state_dir: &Path) -> Result<Self, OverrideError> {
        fs::create_dir_all(state_dir).map_err(|source| OverrideError::Io {
            what: "creating the state directory",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let lock_path = state_dir.join("overrides.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| OverrideError::Io {
                what: "opening",
                path: lock_path.clone(),
                source,
            })?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(OverrideError::Io {
                what: "locking",
                path: lock_path,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            path: state_dir.join("overrides.json"),
            _lock: lock,
        })
    }

    /// The stored overrides, oldest first (none when the file is absent).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(&self) -> Result<Vec<Override>, OverrideError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| OverrideError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(OverrideError::Io {
                what: "reading",
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Replaces the stored overrides (atomically: written beside, renamed).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, overrides: &[Override]) -> Result<(), OverrideError> {
        let tmp = self.path.with_extension("json.tmp");
        let io_err = |what, source| OverrideError::Io {
            what,
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(overrides)
            .map_err(|e| io_err("encoding", io::Error::other(e)))?;
        fs::write(&tmp, bytes).map_err(|e| io_err("writing", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io_err("replacing", e))
    }
}

/// The effective configuration: `text` (the file, named `file` in errors,
/// its relative paths relative to `dir`) with `overrides` applied in order. Returns it with the overrides that were
/// kept and descriptions of those dropped (they name objects the file no
/// longer has, or made the configuration invalid).
///
/// # Errors
/// When the file itself is invalid.
pub fn effective(
    text: &str,
    file: &str,
    dir: &Path,
    overrides: &[Override],
) -> Result<(Config, Vec<Override>, Vec<String>), config::ConfigError> {
    let mut config = config::parse_in(text, file, dir)?;
    let mut doc: DocumentMut = text.parse().map_err(|_| {
        // parse() above accepted the same text, so this cannot fail; keep a
        // defined error all the same.
        config::parse("\u{0}", file).expect_err("NUL is never valid TOML")
    })?;
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    let label = format!("{file} (with runtime overrides)");
    for o in overrides {
        let mut candidate = doc.clone();
        match edit(&mut candidate, o).and_then(|()| {
            config::parse_in(&candidate.to_string(), &label, dir).map_err(|e| e.to_string())
        }) {
            Ok(c) => {
                doc = candidate;
                config = c;
                kept.push(o.clone());
            }
            Err(why) => dropped.push(format!("{}: {why}", o.describe())),
        }
    }
    Ok((config, kept, dropped))
}

fn tenants(doc: &mut DocumentMut) -> Option<&mut ArrayOfTables> {
    doc.get_mut("tenant")?.as_array_of_tables_mut()
}

fn find_tenant<'a>(doc: &'a mut DocumentMut, name: &str) -> Result<&'a mut Table, String> {
    tenants(doc)
        .and_then(|ts| {
            ts.iter_mut()
                .find(|t| t.get("name").and_then(Item::as_str) == Some(name))
        })
        .ok_or_else(|| format!("no tenant named {name:?}"))
}

fn find_backends<'a>(
    doc: &'a mut DocumentMut,
    tenant: &str,
    pool: &str,
) -> Result<&'a mut Array, String> {
    let t = find_tenant(doc, tenant)?;
    let pool_table = t
        .get_mut("pool")
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|ps| {
            ps.iter_mut()
                .find(|p| p.get("name").and_then(Item::as_str) == Some(pool))
        })
        .ok_or_else(|| format!("tenant {tenant:?} has no pool named {pool:?}"))?;
    if pool_table.get("backends").is_none() {
        pool_table.insert("backends", Item::Value(Value::Array(Array::new())));
    }
    pool_table
        .get_mut("backends")
        .and_then(Item::as_array_mut)
        .ok_or_else(|| format!("pool {tenant}/{pool}: backends is not an array"))
}

fn backend_matches(v: &Value, address: IpAddr, port: Option<u16>) -> bool {
    let Some(t) = v.as_inline_table() else {
        return false;
    };
    let addr = t
        .get("address")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<IpAddr>().ok());
    let p = t
        .get("port")
        .and_then(Value::as_integer)
        .and_then(|p| u16::try_from(p).ok());
    addr == Some(address) && p == port
}

/// The highest document position of any table under `table`.
fn last_position(table: &Table) -> usize {
    let mut last = table.position().unwrap_or(0);
    for (_, item) in table {
        match item {
            Item::Table(t) => last = last.max(last_position(t)),
            Item::ArrayOfTables(ts) => {
                for t in ts {
                    last = last.max(last_position(t));
                }
            }
            _ => {}
        }
    }
    last
}

/// Gives `table` and every table under it consecutive positions from `next`.
fn renumber(table: &mut Table, next: &mut usize) {
    table.set_position(*next);
    *next += 1;
    for (_, item) in table.iter_mut() {
        match item {
            Item::Table(t) => renumber(t, next),
            Item::ArrayOfTables(ts) => {
                for t in ts.iter_mut() {
                    renumber(t, next);
                }
            }
            _ => {}
        }
    }
}

/// Applies one override to the TOML document.
fn edit(doc: &mut DocumentMut, o: &Override) -> Result<(), String> {
    match o {
        Override::AddTenant { name, toml } => {
            let fragment: DocumentMut =
                toml.parse().map_err(|e| format!("tenant fragment: {e}"))?;
            let table = fragment
                .get("tenant")
                .and_then(Item::as_array_of_tables)
                .filter(|ts| ts.len() == 1)
                .and_then(|ts| ts.get(0))
                .ok_or("the fragment must hold exactly one [[tenant]] table")?
                .clone();
            if find_tenant(doc, name).is_ok() {
                return Err(format!("tenant {name:?} already exists"));
            }
            if tenants(doc).is_none() {
                doc.insert("tenant", Item::ArrayOfTables(ArrayOfTables::new()));
            }
            // Tables render in the order of their document positions; the
            // fragment's own positions would interleave it with the file's
            // tables, so place all of it after everything already there.
            let mut table = table;
            let mut next = last_position(doc.as_table()) + 1;
            renumber(&mut table, &mut next);
            tenants(doc)
                .ok_or("tenant is not an array of tables")?
                .push(table);
            Ok(())
        }
        Override::RemoveTenant { name } => {
            let ts = tenants(doc).ok_or_else(|| format!("no tenant named {name:?}"))?;
            let idx = (0..ts.len())
                .find(|&i| {
                    ts.get(i).and_then(|t| t.get("name")).and_then(Item::as_str) == Some(name)
                })
                .ok_or_else(|| format!("no tenant named {name:?}"))?;
            ts.remove(idx);
            Ok(())
        }
        Override::AddBackend {
            tenant,
            pool,
            backend,
        } => {
            let list = find_backends(doc, tenant, pool)?;
            if list
                .iter()
                .any(|v| backend_matches(v, backend.address, backend.port))
            {
                return Err(format!(
                    "{tenant}/{pool} already has backend {}",
                    show(backend.address, backend.port)
                ));
            }
            let mut t = InlineTable::new();
            t.insert("address", backend.address.to_string().into());
            if let Some(p) = backend.port {
                t.insert("port", i64::from(p).into());
            }
            t.insert("weight", i64::from(backend.weight).into());
            list.push(Value::InlineTable(t));
            Ok(())
        }
        Override::RemoveBackend { backend: b } => {
            let list = find_backends(doc, &b.tenant, &b.pool)?;
            let idx = list
                .iter()
                .position(|v| backend_matches(v, b.address, b.port))
                .ok_or_else(|| format!("no backend {}", show_sel(b)))?;
            list.remove(idx);
            Ok(())
        }
        Override::SetWeight { backend: b, weight } => {
            let list = find_backends(doc, &b.tenant, &b.pool)?;
            let v = list
                .iter_mut()
                .find(|v| backend_matches(v, b.address, b.port))
                .ok_or_else(|| format!("no backend {}", show_sel(b)))?;
            if let Some(t) = v.as_inline_table_mut() {
                t.insert("weight", i64::from(*weight).into());
            }
            Ok(())
        }
        Override::AddSniName { tenant, site, name } => add_host(doc, tenant, *site, name),
        Override::RemoveSniName { name } => remove_host(doc, name),
    }
}

/// Adds host `name` to the tenant's `l7[site]`.
fn add_host(doc: &mut DocumentMut, tenant: &str, site: usize, name: &str) -> Result<(), String> {
    let t = find_tenant(doc, tenant)?;
    let sites = t.get_mut("l7").and_then(Item::as_array_of_tables_mut);
    let count = sites.as_ref().map_or(0, |s| s.len());
    let s = sites.and_then(|s| s.get_mut(site)).ok_or_else(|| {
        format!("tenant {tenant:?} has {count} [[tenant.l7]] sites, no l7[{site}]")
    })?;
    if s.get("hosts").is_none() {
        s.insert("hosts", Item::Value(Value::Array(Array::new())));
    }
    let hosts = s
        .get_mut("hosts")
        .and_then(Item::as_array_mut)
        .ok_or("hosts is not an array")?;
    hosts.push(name);
    // Validation (uniqueness across tenants, the hash) happens when
    // the edited document is parsed.
    Ok(())
}

/// Removes host `name` from whichever site has it.
fn remove_host(doc: &mut DocumentMut, name: &str) -> Result<(), String> {
    let normalised = crate::config::normalise_host(name);
    let ts = tenants(doc).ok_or_else(|| format!("no site has host {name:?}"))?;
    for t in ts.iter_mut() {
        let Some(sites) = t.get_mut("l7").and_then(Item::as_array_of_tables_mut) else {
            continue;
        };
        for s in sites.iter_mut() {
            let Some(hosts) = s.get_mut("hosts").and_then(Item::as_array_mut) else {
                continue;
            };
            let found = hosts.iter().position(|v| {
                v.as_str()
                    .is_some_and(|h| crate::config::normalise_host(h) == normalised)
            });
            if let Some(i) = found {
                hosts.remove(i);
                return Ok(());
            }
        }
    }
    Err(format!("no site has host {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[node]
interface = "eth0"

[[tenant]]
name = "acme"
[[tenant.pool]]
name = "web"
backends = [{ address = "10.0.0.1" }, { address = "10.0.0.2" }]
[[tenant.l4]]
vip = "10.1.0.1"
port = 80
protocol = "tcp"
pool = "web"
"#;

    fn sel(addr: &str) -> BackendSelector {
        BackendSelector {
            tenant: "acme".into(),
            pool: "web".into(),
            address: addr.parse().expect("addr"),
            port: None,
        }
    }

    #[test]
    fn overrides_apply_in_order_and_unknown_objects_are_dropped() {
        let fragment = "[[tenant]]\nname = \"globex\"\n[[tenant.pool]]\nname = \"web\"\n\
                        backends = [{ address = \"10.0.1.1\" }]\n[[tenant.l4]]\nvip = \"10.1.0.2\"\n\
                        port = 80\nprotocol = \"tcp\"\npool = \"web\"\n";
        let overrides = vec![
            Override::SetWeight {
                backend: sel("10.0.0.2"),
                weight: 0,
            },
            Override::AddTenant {
                name: "globex".into(),
                toml: fragment.into(),
            },
            Override::RemoveBackend {
                backend: sel("10.9.9.9"),
            },
            Override::AddBackend {
                tenant: "acme".into(),
                pool: "web".into(),
                backend: BackendConf {
                    address: "10.0.0.3".parse().expect("addr"),
                    port: None,
                    weight: 2,
                },
            },
        ];
        let (c, kept, dropped) =
            effective(BASE, "lb.toml", Path::new("."), &overrides).expect("valid");
        assert_eq!(kept.len(), 3, "{dropped:?}");
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(dropped[0].contains("10.9.9.9"), "{dropped:?}");
        let acme = c.tenant("acme").expect("acme");
        let web = acme.pool("web").expect("web");
        assert_eq!(web.backends.len(), 3);
        assert_eq!(web.backends[1].weight, 0, "drained");
        assert_eq!(web.backends[2].weight, 2);
        assert!(c.tenant("globex").is_some());
    }

    #[test]
    fn invalid_results_are_rejected_with_the_reason() {
        // A second tenant claiming acme's VIP.
        let fragment = "[[tenant]]\nname = \"evil\"\n[[tenant.pool]]\nname = \"web\"\n\
                        backends = [{ address = \"10.0.1.1\" }]\n[[tenant.l4]]\nvip = \"10.1.0.1\"\n\
                        port = 80\nprotocol = \"tcp\"\npool = \"web\"\n";
        let o = Override::AddTenant {
            name: "evil".into(),
            toml: fragment.into(),
        };
        let dropped = |o: Override| {
            let (_, kept, dropped) =
                effective(BASE, "lb.toml", Path::new("."), &[o]).expect("the file is valid");
            assert!(kept.is_empty(), "{kept:?}");
            dropped
                .into_iter()
                .next()
                .expect("the override is dropped with a reason")
        };
        let why = dropped(o);
        assert!(why.contains("acme"), "{why}");
        let why = dropped(Override::RemoveTenant {
            name: "nope".into(),
        });
        assert!(why.contains("nope"), "{why}");
    }

    #[test]
    fn store_round_trips_under_a_lock() {
        let dir = std::env::temp_dir().join(format!("lb-overrides-{}", std::process::id()));
        let o = vec![Override::SetWeight {
            backend: sel("10.0.0.1"),
            weight: 0,
        }];
        {
            let store = Store::open(&dir).expect("open");
            assert!(store.load().expect("load").is_empty());
            store.save(&o).expect("save");
        }
        let store = Store::open(&dir).expect("reopen");
        assert_eq!(store.load().expect("load"), o);
        drop(store);
        let _ = fs::remove_dir_all(&dir);
    }
}
