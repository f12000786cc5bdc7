//! `lbd`'s core: owns the data plane and keeps it equal to the desired
//! state, the configuration file plus the runtime overrides plus the health
//! of the backends. Reloads (SIGHUP, a file change, `lbctl reload`), health
//! changes and admin commands all end in the same [`Daemon::apply`], which
//! writes only what differs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::{
    api::{self, ApiError, BackendSelector, Request, Response},
    config::{Config, XdpMode},
    dataplane::{AttachMode, Dataplane, LoadOptions},
    health::{self, BackendRef, Checker, Health},
    inspect::{self, HealthDetail},
    l7::L7,
    neighbours,
    overrides::{self, Override, Store},
    reconcile::{ApplyReport, BackendKey, Ids, Reconciler},
};

/// What an apply follows.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// The effective configuration (file, overrides) may have changed.
    Config,
    /// Only the backends' health changed.
    Health,
}

/// The daemon's state.
pub struct Daemon {
    config_path: PathBuf,
    /// The last configuration file text that was valid.
    file_text: String,
    /// The effective configuration (file + overrides).
    config: Config,
    overrides: Vec<Override>,
    dp: Dataplane,
    reconciler: Reconciler,
    checker: Checker,
    /// Backends whose health checks failed.
    down: BTreeSet<BackendKey>,
    reloads: u64,
    last_reload: Option<api::ReloadResult>,
    started: Instant,
    /// The L7 listeners (started after the first apply).
    l7: Option<L7>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn key_of(b: &BackendRef) -> BackendKey {
    (b.tenant.clone(), b.pool.clone(), b.address, b.port)
}

/// `bpf_fib_lookup` answers only on interfaces that forward.
fn enable_forwarding(interface: &str) -> anyhow::Result<()> {
    for path in [
        format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"),
        format!("/proc/sys/net/ipv6/conf/{interface}/forwarding"),
    ] {
        match fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => {
                fs::write(&path, "1")
                    .with_context(|| format!("enabling forwarding: writing 1 to {path}"))?;
                info!(%path, "enabled forwarding (the balancer's FIB lookups need it)");
            }
            Err(e) => anyhow::bail!(
                "interface {interface}: cannot read {path}: {e} (does the interface exist in this network namespace?)"
            ),
        }
    }
    Ok(())
}

impl Daemon {
    /// Loads the configuration and overrides, loads the balancer (adopting
    /// pinned maps and link), programs the maps, starts health checks and
    /// attaches. Health events go to `events`. `inherited` are the
    /// listening sockets of a running `lbd` this one takes over from: then
    /// the L7 listeners do not accept until [`Daemon::start_accepting`].
    ///
    /// # Errors
    /// When the configuration is invalid or the data plane cannot be loaded.
    pub fn start(
        config_path: &Path,
        events: UnboundedSender<health::Event>,
        inherited: Option<HashMap<SocketAddr, OwnedFd>>,
    ) -> anyhow::Result<Self> {
        let file_text = fs::read_to_string(config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let label = config_path.display().to_string();
        let base = crate::config::parse(&file_text, &label)?;
        let state_dir = base.node.state_dir.clone();
        let stored = Store::open(&state_dir)?.load()?;
        let dir = crate::config::base_dir(config_path);
        let (config, kept, dropped) = overrides::effective(&file_text, &label, dir, &stored)?;
        for d in &dropped {
            warn!(dropped = %d, "runtime override no longer applies");
        }
        if !dropped.is_empty() {
            Store::open(&state_dir)?.save(&kept)?;
        }
        let node = &config.node;
        enable_forwarding(&node.interface)?;
        let dp = Dataplane::load(&LoadOptions {
            pin_path: Some(node.pin_path.clone()),
        })?;
        let ids = Ids::load(&Ids::path(&state_dir)).context("reading the id assignment")?;
        // Health survives restarts: backends the maps mark down start down.
        let down = inspect::down_backends(&dp, &ids);
        let reconciler = Reconciler::with_ids(ids);
        let mode = match node.xdp_mode {
            XdpMode::Auto => AttachMode::Auto,
            XdpMode::Native => AttachMode::Native,
            XdpMode::Generic => AttachMode::Generic,
        };
        let interface = node.interface.clone();
        let hold = inherited.is_some();
        let mut daemon = Self {
            config_path: config_path.to_path_buf(),
            file_text,
            config,
            overrides: kept,
            // Attached only after the first apply: the new program must
            // not run on maps that do not hold this configuration yet.
            dp,
            reconciler,
            checker: Checker::new(events),
            down,
            reloads: 0,
            last_reload: None,
            started: Instant::now(),
            l7: None,
        };
        let report = daemon.apply().context("programming the maps")?;
        info!(?report, "maps programmed");
        daemon.update_checks();
        daemon.warm_neighbours();
        daemon.dp.attach(&interface, mode)?;
        daemon.l7 = Some(
            L7::start(
                &daemon.config,
                &daemon.down,
                inherited.unwrap_or_default(),
                hold,
            )
            .context("starting the L7 listeners")?,
        );
        info!(
            interface = %interface,
            pin_path = %daemon.config.node.pin_path.display(),
            tenants = daemon.config.tenants.len(),
            overrides = daemon.overrides.len(),
            "balancer attached"
        );
        Ok(daemon)
    }

    /// The effective configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Writes the desired state into the maps and persists the ids.
    ///
    /// # Errors
    /// When a map write fails.
    pub fn apply(&mut self) -> anyhow::Result<ApplyReport> {
        self.apply_after(Change::Config)
    }

    fn apply_after(&mut self, change: Change) -> anyhow::Result<ApplyReport> {
        let report = self
            .reconciler
            .apply_with_health(&self.config, &self.down, &mut self.dp)?;
        if let Some(l7) = &mut self.l7 {
            match change {
                // Listeners and certificates follow the configuration.
                Change::Config => l7.update(&self.config, &self.down)?,
                // Only which backends are up changed: the routing snapshot.
                Change::Health => l7.update_health(&self.config, &self.down),
            }
        }
        let path = Ids::path(&self.config.node.state_dir);
        self.reconciler
            .ids()
            .save(&path)
            .with_context(|| format!("saving {}", path.display()))?;
        Ok(report)
    }

    /// Health-check targets for every backend of a pool with checks. The
    /// port: the check's, else the backend's, else the port of the pool's
    /// first L4 VIP (direct server return keeps the VIP's port).
    fn targets(&self) -> Vec<health::Target> {
        let mut out = Vec::new();
        for t in &self.config.tenants {
            for p in &t.pools {
                let Some(check) = &p.health else { continue };
                let vip_port =
                    t.l4.iter()
                        .filter(|v| v.pool == p.name && v.port != 0)
                        .map(|v| v.port)
                        .next();
                for b in &p.backends {
                    let Some(port) = check.port.or(b.port).or(vip_port) else {
                        warn!(tenant = %t.name, pool = %p.name, backend = %b.address,
                              "no port to health-check (set health.port)");
                        continue;
                    };
                    out.push(health::Target {
                        backend: BackendRef {
                            tenant: t.name.clone(),
                            pool: p.name.clone(),
                            address: b.address,
                            port: b.port.unwrap_or(0),
                        },
                        addr: SocketAddr::new(b.address, port),
                        check: check.clone(),
                    });
                }
            }
        }
        out
    }

    fn update_checks(&mut self) {
        let targets = self.targets();
        let checked: BTreeSet<BackendKey> = targets.iter().map(|t| key_of(&t.backend)).collect();
        // Backends without checks are never down.
        self.down.retain(|k| checked.contains(k));
        let down = self.down.clone();
        let initial_down: BTreeSet<(String, String)> = self
            .config
            .tenants
            .iter()
            .flat_map(|t| {
                t.pools
                    .iter()
                    .filter(|p| p.health.as_ref().is_some_and(|h| h.initial_down))
                    .map(|p| (t.name.clone(), p.name.clone()))
            })
            .collect();
        self.checker.update(targets, &|b| {
            if down.contains(&key_of(b))
                || initial_down.contains(&(b.tenant.clone(), b.pool.clone()))
            {
                Health::Down
            } else {
                Health::Up
            }
        });
        // New backends of `initial = "down"` pools start out of the ring.
        for (k, status) in self.checker.statuses() {
            if status.health == Health::Down {
                self.down.insert(key_of(&k));
            }
        }
    }

    /// Applies a health change reported by the checker.
    pub fn on_health(&mut self, event: &health::Event) {
        let key = key_of(&event.backend);
        let changed = match event.health {
            Health::Down => self.down.insert(key),
            Health::Up => self.down.remove(&key),
        };
        if !changed {
            return;
        }
        info!(backend = %event.backend.address, tenant = %event.backend.tenant,
              pool = %event.backend.pool, health = %event.health, reason = %event.reason,
              "backend health changed");
        if let Err(e) = self.apply_after(Change::Health) {
            warn!(error = %format!("{e:#}"), "applying a health change failed");
        }
    }

    /// Keeps the MACs of backends without health checks resolved.
    pub fn warm_neighbours(&self) {
        let checked: BTreeSet<IpAddr> = self.targets().iter().map(|t| t.backend.address).collect();
        let all: BTreeSet<IpAddr> = self
            .config
            .tenants
            .iter()
            .flat_map(|t| t.pools.iter())
            .flat_map(|p| p.backends.iter().map(|b| b.address))
            .filter(|a| !checked.contains(a))
            .collect();
        neighbours::warm(&all);
    }

    fn label(&self) -> String {
        self.config_path.display().to_string()
    }

    /// The configuration file's `text` with `list` applied
    /// ([`overrides::effective`]).
    fn effective(
        &self,
        text: &str,
        list: &[Override],
    ) -> Result<(Config, Vec<Override>, Vec<String>), crate::config::ConfigError> {
        let dir = crate::config::base_dir(&self.config_path);
        overrides::effective(text, &self.label(), dir, list)
    }

    /// Re-reads the configuration file and applies it with the overrides.
    /// An invalid file changes nothing.
    pub fn reload(&mut self) -> api::ReloadResult {
        self.reloads += 1;
        let result = match self.try_reload() {
            Ok((report, dropped)) => {
                info!(?report, dropped = dropped.len(), "configuration reloaded");
                api::ReloadResult {
                    ok: true,
                    at_unix_ms: now_ms(),
                    message: format!(
                        "reloaded: {} tenants; wrote {} backends, {} rings, {} VIPs; removed {} VIPs, {} pools",
                        self.config.tenants.len(),
                        report.backends_written,
                        report.rings_written,
                        report.vips_written,
                        report.vips_removed,
                        report.pools_removed
                    ),
                    dropped_overrides: dropped,
                }
            }
            Err(e) => {
                warn!(error = %e, "reload refused; the running configuration is unchanged");
                api::ReloadResult {
                    ok: false,
                    at_unix_ms: now_ms(),
                    message: e,
                    dropped_overrides: Vec::new(),
                }
            }
        };
        self.last_reload = Some(result.clone());
        result
    }

    fn try_reload(&mut self) -> Result<(ApplyReport, Vec<String>), String> {
        let label = self.label();
        let text =
            fs::read_to_string(&self.config_path).map_err(|e| format!("reading {label}: {e}"))?;
        let store = Store::open(&self.config.node.state_dir).map_err(|e| e.to_string())?;
        let stored = store.load().map_err(|e| e.to_string())?;
        let (config, kept, dropped) = self.effective(&text, &stored).map_err(|e| e.to_string())?;
        self.check_compatible(&config)?;
        Self::check_key_files(&config)?;
        if !dropped.is_empty() {
            store.save(&kept).map_err(|e| e.to_string())?;
        }
        drop(store);
        self.file_text = text;
        self.config = config;
        self.overrides = kept;
        self.update_checks();
        let report = self.apply().map_err(|e| format!("{e:#}"))?;
        Ok((report, dropped))
    }

    /// The tenants' JWT key files must all be usable before a
    /// configuration is applied.
    fn check_key_files(new: &Config) -> Result<(), String> {
        crate::l7::check_key_files(new)
    }

    /// Settings a reload cannot change without a restart, and ring sizes,
    /// which are fixed for a pool's lifetime.
    fn check_compatible(&self, new: &Config) -> Result<(), String> {
        let (old, n) = (&self.config.node, &new.node);
        for (what, same) in [
            ("node.interface", old.interface == n.interface),
            ("node.pin_path", old.pin_path == n.pin_path),
            ("node.state_dir", old.state_dir == n.state_dir),
            ("node.xdp_mode", old.xdp_mode == n.xdp_mode),
        ] {
            if !same {
                return Err(format!("{what} changed: restart lbd to apply it"));
            }
        }
        for t in &new.tenants {
            for p in &t.pools {
                if let Some(old) = self.config.tenant(&t.name).and_then(|ot| ot.pool(&p.name))
                    && old.ring_size != p.ring_size
                {
                    return Err(format!(
                        "tenant {:?} pool {:?}: ring_size changed from {} to {}; it is fixed for the pool's \
                         lifetime (flows would move): keep it, or remove the pool and add it under a new name",
                        t.name, p.name, old.ring_size, p.ring_size
                    ));
                }
            }
        }
        Ok(())
    }

    /// Replaces the override list (validated: nothing may be dropped),
    /// persists it and applies the result.
    fn set_overrides(&mut self, list: &[Override]) -> Result<(), ApiError> {
        let (config, kept, dropped) = self
            .effective(&self.file_text, list)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if let Some(why) = dropped.into_iter().next() {
            return Err(ApiError::bad_request(why));
        }
        self.check_compatible(&config)
            .map_err(ApiError::bad_request)?;
        Self::check_key_files(&config).map_err(ApiError::bad_request)?;
        let store = Store::open(&self.config.node.state_dir)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        store
            .save(&kept)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        drop(store);
        self.config = config;
        self.overrides = kept;
        self.update_checks();
        self.apply()
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        Ok(())
    }

    fn health_detail(&self) -> HealthDetail {
        self.checker
            .statuses()
            .into_iter()
            .filter_map(|(k, s)| Some((key_of(&k), serde_json::to_value(s).ok()?)))
            .collect()
    }

    fn ids(&self) -> &Ids {
        self.reconciler.ids()
    }

    fn find_backend(&self, sel: &BackendSelector) -> Result<u32, ApiError> {
        let pool = self
            .config
            .tenant(&sel.tenant)
            .ok_or_else(|| ApiError::not_found(format!("no tenant {:?}", sel.tenant)))?
            .pool(&sel.pool)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "tenant {:?} has no pool {:?}",
                    sel.tenant, sel.pool
                ))
            })?;
        pool.backends
            .iter()
            .find(|b| b.address == sel.address && b.port == sel.port)
            .map(|b| b.weight)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no backend {} in {}/{}",
                    inspect::show(sel.address, sel.port),
                    sel.tenant,
                    sel.pool
                ))
            })
    }

    fn status(&self) -> api::Status {
        let node = &self.config.node;
        let backends: usize = self
            .config
            .tenants
            .iter()
            .flat_map(|t| t.pools.iter())
            .map(|p| p.backends.len())
            .sum();
        api::Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            config: self.label(),
            interface: node.interface.clone(),
            pin_path: node.pin_path.display().to_string(),
            forwarding: node.forwarding.as_str().to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            tenants: self.config.tenants.len(),
            vips: self.config.tenants.iter().map(|t| t.l4.len()).sum(),
            pools: self.config.tenants.iter().map(|t| t.pools.len()).sum(),
            backends,
            backends_down: self.down.len(),
            reloads: self.reloads,
            last_reload: self.last_reload.clone(),
            overrides: self.overrides.len(),
        }
    }

    /// Answers one admin request.
    ///
    /// # Errors
    /// An [`ApiError`] (status and message for the client) when the request
    /// names something unknown or would make the configuration invalid;
    /// nothing changes then.
    pub fn handle(&mut self, request: Request) -> Response {
        let json = |v: Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| ApiError::internal(e.to_string()))
        };
        if let Request::Stats = request {
            let mut stats = inspect::stats(&self.dp, self.ids(), &self.health_detail());
            if let Some(l7) = &self.l7 {
                l7.add_stats(&self.config, &mut stats);
            }
            return json(serde_json::to_value(stats));
        }
        let view = inspect::View {
            dp: &self.dp,
            ids: self.ids(),
            health: &|| self.health_detail(),
            config: Some(&self.config),
        };
        if let Some(answer) = inspect::answer(&view, &request) {
            return answer;
        }
        match request {
            Request::Status => json(serde_json::to_value(self.status())),
            Request::AddTenant { toml } => self.add_tenant(toml),
            Request::RemoveTenant { name } => self.remove_tenant(&name),
            Request::AddBackend {
                tenant,
                pool,
                backend,
            } => self.add_backend(tenant, pool, backend),
            Request::RemoveBackend { backend: sel } => self.remove_backend(&sel),
            Request::DrainBackend { backend: sel } => self.set_weight(&sel, Some(0)),
            Request::EnableBackend { backend: sel } => self.set_weight(&sel, None),
            Request::Reload => {
                let r = self.reload();
                if r.ok {
                    json(serde_json::to_value(r))
                } else {
                    Err(ApiError::bad_request(r.message))
                }
            }
            Request::ListOverrides => {
                let list: Vec<api::OverrideInfo> = self
                    .overrides
                    .iter()
                    .enumerate()
                    .map(|(index, o)| api::OverrideInfo {
                        index,
                        description: o.describe(),
                    })
                    .collect();
                json(serde_json::to_value(list))
            }
            Request::AddSni { tenant, site, name } => self.add_sni(tenant, site, name),
            Request::RemoveSni { name } => self.remove_sni(&name),
            Request::ClearOverrides => {
                let n = self.overrides.len();
                self.set_overrides(&[])?;
                Ok(serde_json::json!({ "cleared": n }))
            }
            // Answered above by `inspect::answer`, which lists them too.
            Request::ListTenants
            | Request::ShowTenant { .. }
            | Request::ListVips
            | Request::ListPools
            | Request::ShowPool { .. }
            | Request::ListBackends
            | Request::Stats
            | Request::Flows { .. }
            | Request::Explain { .. }
            | Request::ListSni => Err(ApiError::internal(
                "a read-only request reached the daemon's writers",
            )),
        }
    }

    fn add_tenant(&mut self, toml: String) -> Response {
        let name = tenant_name(&toml)?;
        if self.config.tenant(&name).is_some() {
            return Err(ApiError::conflict(format!(
                "tenant {name:?} already exists"
            )));
        }
        let mut list = self.overrides.clone();
        list.retain(|o| !matches!(o, Override::RemoveTenant { name: n } if *n == name));
        list.push(Override::AddTenant {
            name: name.clone(),
            toml,
        });
        self.set_overrides(&list)?;
        Ok(serde_json::json!({ "added": name }))
    }

    fn remove_tenant(&mut self, name: &str) -> Response {
        if self.config.tenant(name).is_none() {
            return Err(ApiError::not_found(format!("no tenant {name:?}")));
        }
        let mut list = self.overrides.clone();
        let added_at_runtime = list
            .iter()
            .any(|o| matches!(o, Override::AddTenant { name: n, .. } if n == name));
        // Forget every override about the tenant; a tenant from the file
        // needs an explicit removal.
        list.retain(|o| !names_tenant(o, name));
        if !added_at_runtime {
            list.push(Override::RemoveTenant {
                name: name.to_string(),
            });
        }
        self.set_overrides(&list)?;
        Ok(serde_json::json!({ "removed": name }))
    }

    fn add_backend(
        &mut self,
        tenant: String,
        pool: String,
        backend: crate::config::BackendConf,
    ) -> Response {
        let sel = BackendSelector {
            tenant: tenant.clone(),
            pool: pool.clone(),
            address: backend.address,
            port: backend.port,
        };
        if self.find_backend(&sel).is_ok() {
            return Err(ApiError::conflict(format!(
                "{tenant}/{pool} already has backend {}",
                inspect::show(backend.address, backend.port)
            )));
        }
        let mut list = self.overrides.clone();
        list.retain(|o| !matches!(o, Override::RemoveBackend { backend: b } if *b == sel));
        list.push(Override::AddBackend {
            tenant,
            pool,
            backend,
        });
        self.set_overrides(&list)?;
        Ok(serde_json::json!({ "added": sel }))
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "the values come out of the request, which is consumed"
    )]
    fn add_sni(&mut self, tenant: String, site: usize, name: String) -> Response {
        let normalised = crate::config::normalise_host(&name);
        let mut list = self.overrides.clone();
        let undone = list.len();
        // Adding back a name an override removed just drops that override.
        list.retain(|o| {
            !matches!(o, Override::RemoveSniName { name: n }
                if crate::config::normalise_host(n) == normalised)
        });
        if list.len() == undone {
            list.push(Override::AddSniName {
                tenant: tenant.clone(),
                site,
                name: name.clone(),
            });
        }
        self.set_overrides(&list)?;
        Ok(serde_json::json!({ "added": name, "tenant": tenant, "site": site }))
    }

    fn remove_sni(&mut self, name: &str) -> Response {
        let normalised = crate::config::normalise_host(name);
        let owned = self
            .config
            .tenants
            .iter()
            .any(|t| t.l7.iter().any(|s| s.hosts.contains(&normalised)));
        if !owned {
            return Err(ApiError::not_found(format!("no L7 site has host {name:?}")));
        }
        let mut list = self.overrides.clone();
        let before = list.len();
        list.retain(|o| {
            !matches!(o, Override::AddSniName { name: n, .. }
                if crate::config::normalise_host(n) == normalised)
        });
        if list.len() == before {
            list.push(Override::RemoveSniName {
                name: name.to_owned(),
            });
        }
        self.set_overrides(&list)?;
        Ok(serde_json::json!({ "removed": name }))
    }

    fn remove_backend(&mut self, sel: &BackendSelector) -> Response {
        self.find_backend(sel)?;
        let mut list = self.overrides.clone();
        let added_at_runtime = list.iter().any(|o| {
            matches!(o, Override::AddBackend { tenant, pool, backend }
                if *tenant == sel.tenant && *pool == sel.pool
                    && backend.address == sel.address && backend.port == sel.port)
        });
        list.retain(|o| !names_backend(o, sel));
        if !added_at_runtime {
            list.push(Override::RemoveBackend {
                backend: sel.clone(),
            });
        }
        self.set_overrides(&list)?;
        Ok(serde_json::json!({ "removed": sel }))
    }

    /// Drain (`Some(0)`) or enable (`None`: back to the file's weight, or 1
    /// when the file itself says 0).
    fn set_weight(&mut self, sel: &BackendSelector, weight: Option<u32>) -> Response {
        self.find_backend(sel)?;
        let mut list = self.overrides.clone();
        list.retain(|o| !matches!(o, Override::SetWeight { backend, .. } if backend == sel));
        let (without, _, _) = self
            .effective(&self.file_text, &list)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let base_weight = without
            .tenant(&sel.tenant)
            .and_then(|t| t.pool(&sel.pool))
            .and_then(|p| {
                p.backends
                    .iter()
                    .find(|b| b.address == sel.address && b.port == sel.port)
            })
            .map(|b| b.weight);
        match weight {
            Some(w) => list.push(Override::SetWeight {
                backend: sel.clone(),
                weight: w,
            }),
            None if base_weight == Some(0) => list.push(Override::SetWeight {
                backend: sel.clone(),
                weight: 1,
            }),
            None => {}
        }
        self.set_overrides(&list)?;
        let info = inspect::backend(&self.dp, self.ids(), &self.health_detail(), sel)?;
        serde_json::to_value(info).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Counts of the checked backends by health, for logs.
    #[must_use]
    pub fn health_summary(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for s in self.checker.statuses().values() {
            *m.entry(s.health.as_str()).or_insert(0) += 1;
        }
        m
    }

    /// Stops the health checks (the program stays attached).
    pub fn shutdown(&mut self) {
        self.checker.shutdown();
    }

    /// Re-reads certificate files that changed on disk.
    pub fn refresh_certificates(&self) {
        if let Some(l7) = &self.l7 {
            l7.refresh_certificates();
        }
    }

    /// Lets the L7 listeners accept (after a take-over, once the previous
    /// `lbd` has released).
    pub fn start_accepting(&self) {
        if let Some(l7) = &self.l7 {
            l7.start_accepting();
        }
    }

    /// The L7 tier, when it runs.
    #[must_use]
    pub fn l7(&self) -> Option<&L7> {
        self.l7.as_ref()
    }

    /// Stops accepting L7 connections and lets the open ones finish, for
    /// at most `node.drain_timeout`. Returns how many were cut.
    pub async fn drain_l7(&mut self) -> usize {
        let timeout = self.config.node.drain_timeout;
        match &mut self.l7 {
            Some(l7) => l7.drain(timeout).await,
            None => 0,
        }
    }
}

fn tenant_name(toml: &str) -> Result<String, ApiError> {
    let doc: toml::Table = toml
        .parse()
        .map_err(|e| ApiError::bad_request(format!("tenant fragment: {e}")))?;
    let tenants = doc
        .get("tenant")
        .and_then(toml::Value::as_array)
        .filter(|a| a.len() == 1)
        .ok_or_else(|| {
            ApiError::bad_request("the fragment must hold exactly one [[tenant]] table")
        })?;
    tenants[0]
        .get("name")
        .and_then(toml::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("the [[tenant]] table has no name"))
}

fn names_tenant(o: &Override, name: &str) -> bool {
    match o {
        Override::AddTenant { name: n, .. } | Override::RemoveTenant { name: n } => n == name,
        Override::AddBackend { tenant, .. } | Override::AddSniName { tenant, .. } => tenant == name,
        Override::RemoveBackend { backend } | Override::SetWeight { backend, .. } => {
            backend.tenant == name
        }
        Override::RemoveSniName { .. } => false,
    }
}

fn names_backend(o: &Override, sel: &BackendSelector) -> bool {
    match o {
        Override::AddBackend {
            tenant,
            pool,
            backend,
        } => {
            *tenant == sel.tenant
                && *pool == sel.pool
                && backend.address == sel.address
                && backend.port == sel.port
        }
        Override::RemoveBackend { backend } | Override::SetWeight { backend, .. } => backend == sel,
        Override::AddTenant { .. }
        | Override::RemoveTenant { .. }
        | Override::AddSniName { .. }
        | Override::RemoveSniName { .. } => false,
    }
}
