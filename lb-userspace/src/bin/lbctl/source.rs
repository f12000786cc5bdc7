//! Where `lbctl`'s answers come from: `lbd`'s admin API, or, with
//! `--maps`, the pinned maps read through the same `inspect::answer` as
//! `lbd`'s (and the one edit made without a daemon, a backend's weight).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use lb::{
    api::{BackendSelector, Request},
    client::Client,
    dataplane::Dataplane,
    inspect::{self, HealthDetail},
    overrides::{Override, Store},
    reconcile::Ids,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where requests go.
pub(crate) enum Source {
    Api(Client),
    Maps {
        pin_path: PathBuf,
        state_dir: PathBuf,
    },
}

impl Source {
    /// Carries out `request` and returns the JSON answer.
    pub(crate) async fn call(&self, request: Request) -> anyhow::Result<Value> {
        match self {
            Self::Api(client) => Ok(client.call(&request).await?),
            Self::Maps {
                pin_path,
                state_dir,
            } => maps_call(pin_path, state_dir, &request),
        }
    }

    /// Carries out `request` and decodes the answer as `T`.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        request: Request,
    ) -> anyhow::Result<(T, Value)> {
        let value = self.call(request).await?;
        let typed = serde_json::from_value(value.clone()).with_context(|| {
            format!(
                "unexpected answer (do lbctl and lbd have the same version?): {}",
                shorten(&value.to_string())
            )
        })?;
        Ok((typed, value))
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 300 {
        format!("{}...", s.chars().take(300).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// Opens the maps `lbd` pinned under `pin_path`.
fn open_maps(pin_path: &Path) -> anyhow::Result<Dataplane> {
    Dataplane::open_pinned(pin_path).with_context(|| {
        format!(
            "opening the maps pinned under {} (was lbd run with this pin_path?)",
            pin_path.display()
        )
    })
}

/// Reads `lbd`'s id assignment (empty, with a warning, when there is none:
/// the answers then show ids instead of names).
fn load_ids(state_dir: &Path) -> anyhow::Result<Ids> {
    let path = Ids::path(state_dir);
    if !path.exists() {
        eprintln!(
            "warning: {} does not exist: tenant, pool and backend names are unknown \
             (pass --state-dir, lbd's node.state_dir)",
            path.display()
        );
    }
    Ids::load(&path).with_context(|| format!("reading {}", path.display()))
}

/// What `lbctl --maps` answers: every read-only request, from the pinned
/// maps through `inspect::answer` (the same JSON as lbd's), and a
/// backend's drain or enable; the rest needs lbd.
fn maps_call(pin_path: &Path, state_dir: &Path, request: &Request) -> anyhow::Result<Value> {
    let needs_lbd = match request {
        Request::DrainBackend { backend } => {
            return maps_set_weight(pin_path, state_dir, backend, WeightChange::Drain);
        }
        Request::EnableBackend { backend } => {
            return maps_set_weight(pin_path, state_dir, backend, WeightChange::Enable(None));
        }
        Request::Status => "status",
        Request::AddTenant { .. } => "tenant add",
        Request::RemoveTenant { .. } => "tenant remove",
        Request::AddBackend { .. } => "backend add",
        Request::RemoveBackend { .. } => "backend remove",
        Request::Reload => "reload",
        Request::ListOverrides | Request::ClearOverrides => "overrides",
        Request::AddSni { .. } | Request::RemoveSni { .. } => "sni add and remove",
        Request::ListTenants
        | Request::ShowTenant { .. }
        | Request::ListVips
        | Request::ListPools
        | Request::ShowPool { .. }
        | Request::ListBackends
        | Request::Stats
        | Request::Flows { .. }
        | Request::Explain { .. }
        | Request::ListSni => {
            let view = inspect::View {
                dp: &open_maps(pin_path)?,
                ids: &load_ids(state_dir)?,
                health: &HealthDetail::new,
                config: None,
            };
            return match inspect::answer(&view, request) {
                Some(answer) => answer.map_err(|e| anyhow!(e.message)),
                None => bail!("lbctl and its library disagree on {request:?}"),
            };
        }
    };
    bail!(
        "{needs_lbd} needs lbd (its admin API); --maps only reads the pinned maps and drains or \
         enables backends"
    )
}

#[derive(Clone, Copy)]
pub(crate) enum WeightChange {
    Drain,
    /// Enable with this weight (`None`: 1, and lbd restores the configured
    /// weight when it next starts or reloads).
    Enable(Option<u32>),
}

/// `backend drain|enable` without lbd: edits the backend in the maps and
/// records the change in the override store, holding the store's lock
/// throughout so that a starting lbd sees both or neither.
pub(crate) fn maps_set_weight(
    pin_path: &Path,
    state_dir: &Path,
    sel: &BackendSelector,
    change: WeightChange,
) -> anyhow::Result<Value> {
    let store = Store::open(state_dir)?;
    let mut dp = open_maps(pin_path)?;
    let ids = load_ids(state_dir)?;
    let weight = match change {
        WeightChange::Drain => 0,
        WeightChange::Enable(w) => w.unwrap_or(1),
    };
    inspect::set_backend_weight(&mut dp, &ids, sel, weight).map_err(|e| anyhow!(e.message))?;
    let mut list = store.load()?;
    list.retain(|o| !matches!(o, Override::SetWeight { backend, .. } if backend == sel));
    match change {
        WeightChange::Drain => list.push(Override::SetWeight {
            backend: sel.clone(),
            weight: 0,
        }),
        WeightChange::Enable(Some(w)) => list.push(Override::SetWeight {
            backend: sel.clone(),
            weight: w,
        }),
        WeightChange::Enable(None) => {}
    }
    store.save(&list)?;
    drop(store);
    let info =
        inspect::backend(&dp, &ids, &HealthDetail::new(), sel).map_err(|e| anyhow!(e.message))?;
    Ok(serde_json::to_value(info)?)
}
