//! `lbctl`: manages a running `lbd` through its admin API, inspects and
//! edits the pinned maps directly when no daemon runs (`--maps DIR`), and
//! manages the backends' XDP programs.

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Read as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use lb::{
    api::{
        self, BackendInfo, BackendSelector, Explain, FlowFilter, FlowInfo, OverrideInfo,
        PoolDetail, PoolSummary, ReloadResult, Request, SniEntry, Stats, Status, TenantDetail,
        TenantSummary, VipSummary,
    },
    client::{self, Client, Target},
    config::{self, BackendConf, Protocol},
    dataplane::Dataplane,
    decap::{self, BackendProgram},
    inspect::{self, HealthDetail},
    overrides::{Override, Store},
    reconcile::Ids,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The id assignment `lbd` keeps in its state directory (`lbctl --maps`
/// needs it to name tenants, pools and backends).
const IDS_FILE: &str = "ids.json";

/// Manage lb: a running lbd through its admin API, the pinned maps without
/// a daemon (--maps), and the backends' XDP programs.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version)]
struct Args {
    /// lbd's admin socket (`node.admin_socket`).
    #[arg(long, global = true, value_name = "PATH", default_value = client::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Use lbd's TCP admin listener (`node.admin_listen`) instead of the
    /// socket; needs --token-file.
    #[arg(
        long,
        global = true,
        value_name = "http://HOST:PORT",
        requires = "token_file"
    )]
    url: Option<String>,
    /// File holding the bearer token for --url (`node.admin_token_file`).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the raw JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Read and edit the maps pinned under DIR (`node.pin_path`) directly,
    /// without lbd: stats, flows, explain, tenant/vip/pool/backend list and
    /// show, backend drain|enable.
    #[arg(long, global = true, value_name = "DIR")]
    maps: Option<PathBuf>,
    /// lbd's state directory (`node.state_dir`), for --maps: the id
    /// assignment and the override store that drain/enable record into.
    #[arg(long, global = true, value_name = "DIR", default_value = config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The daemon: version, configuration, object counts, last reload.
    Status,
    /// Tenants.
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
    /// L4 VIPs.
    Vip {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Backend pools.
    Pool {
        #[command(subcommand)]
        action: PoolAction,
    },
    /// Backends.
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// L7 host names (SNI) and the tenants they map to: the SNI-derived
    /// tenant hash map that keys the L7 path and the XDP maps alike.
    Sni {
        #[command(subcommand)]
        action: SniAction,
    },
    /// Counters per tenant, VIP and backend, and drops by reason.
    Stats {
        /// Refresh every SECS seconds (with per-second rates) until Ctrl-C.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
    },
    /// Dump the flow table.
    Flows {
        /// Only this tenant's flows.
        #[arg(long)]
        tenant: Option<String>,
        /// Only flows to this VIP (IP:PORT).
        #[arg(long, value_name = "IP:PORT")]
        vip: Option<SocketAddr>,
        /// Only flows to this backend address.
        #[arg(long, value_name = "IP")]
        backend: Option<IpAddr>,
        /// At most N entries (default 1000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Which backend a flow hits, and why (flow-table entry or ring slot).
    Explain {
        /// The client's address, e.g. 198.51.100.7:40000.
        #[arg(value_name = "CLIENT_IP:PORT")]
        client: SocketAddr,
        /// The VIP, e.g. 203.0.113.10:80/tcp (the protocol defaults to tcp).
        #[arg(value_name = "VIP_IP:PORT/PROTO", value_parser = parse_vip)]
        vip: (SocketAddr, Protocol),
    },
    /// Reload the configuration file (and re-apply the overrides).
    Reload,
    /// Runtime changes kept apart from the configuration file.
    Overrides {
        #[command(subcommand)]
        action: OverridesAction,
    },
    /// The IPIP / IP6IP6 decapsulator for backends without a kernel ipip module.
    Decap {
        #[command(subcommand)]
        action: AttachAction,
    },
    /// A plain `XDP_PASS` program: a veth accepts frames its peer sent with
    /// `XDP_TX` only when it runs an XDP program itself (test topologies).
    Pass {
        #[command(subcommand)]
        action: AttachAction,
    },
}

#[derive(Debug, Subcommand)]
enum TenantAction {
    /// Every tenant with its counters.
    List,
    /// One tenant: VIPs, pools, drops by reason.
    Show { name: String },
    /// Add a tenant from a TOML file holding one [[tenant]] (with its
    /// [[tenant.pool]] and [[tenant.l4]] tables); `-` reads stdin.
    Add {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Remove a tenant with its VIPs, pools and backends.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
enum SniAction {
    /// Every host name with its hash and tenant (with --maps: hashes only).
    List,
    /// Add a host name to one of a tenant's L7 sites (a runtime override;
    /// the site's certificate must cover it).
    Add {
        /// The host name, e.g. shop.acme.example or *.acme.example.
        name: String,
        /// The tenant that owns the name.
        #[arg(long)]
        tenant: String,
        /// Which of the tenant's [[tenant.l7]] sites, in file order.
        #[arg(long, default_value_t = 0)]
        site: usize,
    },
    /// Remove a host name from its site (a runtime override).
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
enum ListAction {
    /// All of them.
    List,
}

#[derive(Debug, Subcommand)]
enum PoolAction {
    /// Every pool.
    List,
    /// One pool: its backends and their share of the ring.
    Show { tenant: String, pool: String },
}

#[derive(Debug, Subcommand)]
enum BackendAction {
    /// Every backend with its state, flows and counters.
    List,
    /// One backend, with the flows still pointing at it (is a drain done?).
    Show(Selector),
    /// Add a backend to a pool.
    Add {
        #[command(flatten)]
        backend: Selector,
        /// Share of new flows, 0 (draining) to 1000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend from its pool.
    Remove(Selector),
    /// Stop new flows to a backend (weight 0); established flows continue.
    Drain(Selector),
    /// Undo a drain.
    Enable {
        #[command(flatten)]
        backend: Selector,
        /// With --maps: the weight to restore (lbd restores the configured
        /// weight by itself; lbctl --maps cannot know it and uses 1).
        #[arg(long)]
        weight: Option<u32>,
    },
}

/// A backend: tenant, pool, address (and port).
#[derive(Debug, Clone, ClapArgs)]
struct Selector {
    tenant: String,
    pool: String,
    /// The backend's address (IP, or IP:PORT).
    #[arg(value_name = "ADDR")]
    address: String,
    /// The backend's own port, when it has one.
    #[arg(long)]
    port: Option<u16>,
}

impl Selector {
    fn resolve(&self) -> anyhow::Result<BackendSelector> {
        let (address, port) = if let Ok(sa) = self.address.parse::<SocketAddr>() {
            if self.port.is_some_and(|p| p != sa.port()) {
                bail!(
                    "{} has port {} but --port says {}",
                    self.address,
                    sa.port(),
                    self.port.unwrap_or(0)
                );
            }
            (sa.ip(), Some(sa.port()))
        } else {
            let ip = self.address.parse::<IpAddr>().map_err(|_| {
                anyhow!(
                    "invalid backend address {:?}: expected an IP address (or IP:PORT)",
                    self.address
                )
            })?;
            (ip, self.port)
        };
        if port == Some(0) {
            bail!("port 0 is not a port: leave --port out for the VIP's port");
        }
        Ok(BackendSelector {
            tenant: self.tenant.clone(),
            pool: self.pool.clone(),
            address,
            port,
        })
    }
}

#[derive(Debug, Subcommand)]
enum OverridesAction {
    /// The runtime changes in force, oldest first.
    List,
    /// Forget every runtime change (back to the configuration file).
    Clear,
}

#[derive(Debug, Subcommand)]
enum AttachAction {
    /// Attach to an interface of the current network namespace and pin the link.
    Attach {
        /// Interface name.
        iface: String,
        /// Directory on bpffs for the link pin.
        #[arg(long, value_name = "DIR", default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach from an interface (removes the link pin).
    Detach {
        /// Interface name.
        iface: String,
        /// Directory on bpffs for the link pin.
        #[arg(long, value_name = "DIR", default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

/// `203.0.113.10:80/tcp`, `[2001:db8::1]:53/udp`, or without `/PROTO` (tcp).
fn parse_vip(text: &str) -> Result<(SocketAddr, Protocol), String> {
    let (addr, proto) = match text.rsplit_once('/') {
        Some((a, p)) => (a, p),
        None => (text, "tcp"),
    };
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(format!("unknown protocol {proto:?}: expected tcp or udp")),
    };
    let addr = addr.parse().map_err(|_| {
        format!("invalid VIP {addr:?}: expected IP:PORT/PROTO, like 203.0.113.10:80/tcp")
    })?;
    Ok((addr, protocol))
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Decap { action } => return attach_action(BackendProgram::Decap, action),
        Command::Pass { action } => return attach_action(BackendProgram::Pass, action),
        _ => {}
    }
    let source = if let Some(dir) = &args.maps {
        Source::Maps {
            pin_path: dir.clone(),
            state_dir: args.state_dir.clone(),
        }
    } else {
        let target = match (&args.url, &args.token_file) {
            (Some(url), Some(token_file)) => Target::from_url(url, token_file)?,
            (Some(_), None) => bail!("--url needs --token-file"),
            (None, _) => Target::Unix(args.socket.clone()),
        };
        Source::Api(Client::new(target))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let out = Output { json: args.json };
    rt.block_on(command(&source, &out, args.command))
}

fn attach_action(program: BackendProgram, action: AttachAction) -> anyhow::Result<()> {
    match action {
        AttachAction::Attach { iface, pin_dir } => {
            let pin = decap::attach(&pin_dir, program, &iface)?;
            println!("attached to {iface} (link pinned at {})", pin.display());
        }
        AttachAction::Detach { iface, pin_dir } => {
            decap::detach(&pin_dir, program, &iface)?;
            println!("detached from {iface}");
        }
    }
    Ok(())
}

// ---- Where answers come from: lbd's API or the pinned maps ----

enum Source {
    Api(Client),
    Maps {
        pin_path: PathBuf,
        state_dir: PathBuf,
    },
}

impl Source {
    /// Carries out `request` and returns the JSON answer.
    async fn call(&self, request: Request) -> anyhow::Result<Value> {
        match self {
            Self::Api(client) => Ok(client.call(&request).await?),
            Self::Maps {
                pin_path,
                state_dir,
            } => maps_call(pin_path, state_dir, request),
        }
    }

    /// Carries out `request` and decodes the answer as `T`.
    async fn get<T: DeserializeOwned>(&self, request: Request) -> anyhow::Result<(T, Value)> {
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

/// The subset of requests `lbctl --maps` answers from the pinned maps,
/// with the same JSON as lbd's.
fn maps_call(pin_path: &Path, state_dir: &Path, request: Request) -> anyhow::Result<Value> {
    let open = || {
        Dataplane::open_pinned(pin_path).with_context(|| {
            format!(
                "opening the maps pinned under {} (was lbd run with this pin_path?)",
                pin_path.display()
            )
        })
    };
    let ids_path = state_dir.join(IDS_FILE);
    let load_ids = || -> anyhow::Result<Ids> {
        if !ids_path.exists() {
            eprintln!(
                "warning: {} does not exist: tenant, pool and backend names are unknown \
                 (pass --state-dir, lbd's node.state_dir)",
                ids_path.display()
            );
        }
        Ids::load(&ids_path).with_context(|| format!("reading {}", ids_path.display()))
    };
    let health = HealthDetail::new();
    let api = |r: Result<Value, api::ApiError>| r.map_err(|e| anyhow!(e.message));
    let value = |v: Result<Value, serde_json::Error>| v.map_err(anyhow::Error::from);
    match request {
        Request::Stats => value(serde_json::to_value(inspect::stats(
            &open()?,
            &load_ids()?,
            &health,
        ))),
        Request::Flows { filter } => value(serde_json::to_value(inspect::flows(
            &open()?,
            &load_ids()?,
            &filter,
        ))),
        Request::Explain {
            client,
            vip,
            protocol,
        } => {
            let explain = inspect::explain(&open()?, &load_ids()?, client, vip, protocol);
            api(explain.and_then(|e| {
                serde_json::to_value(e).map_err(|e| api::ApiError::internal(e.to_string()))
            }))
        }
        Request::ListTenants => value(serde_json::to_value(inspect::tenants(
            &open()?,
            &load_ids()?,
        ))),
        Request::ShowTenant { name } => value(serde_json::to_value(tenant_detail(
            &open()?,
            &load_ids()?,
            &name,
        )?)),
        Request::ListVips => value(serde_json::to_value(inspect::vips(&open()?, &load_ids()?))),
        Request::ListSni => value(serde_json::to_value(inspect::sni(
            &open()?,
            &load_ids()?,
            None,
        ))),
        Request::ListPools => value(serde_json::to_value(inspect::pools(&open()?, &load_ids()?))),
        Request::ShowPool { tenant, pool } => {
            let detail = inspect::pool(&open()?, &load_ids()?, &health, &tenant, &pool);
            api(detail.and_then(|d| {
                serde_json::to_value(d).map_err(|e| api::ApiError::internal(e.to_string()))
            }))
        }
        Request::ListBackends => value(serde_json::to_value(inspect::backends(
            &open()?,
            &load_ids()?,
            &health,
        ))),
        Request::DrainBackend { backend } => {
            maps_set_weight(pin_path, state_dir, &backend, WeightChange::Drain, load_ids)
        }
        Request::EnableBackend { backend } => maps_set_weight(
            pin_path,
            state_dir,
            &backend,
            WeightChange::Enable(None),
            load_ids,
        ),
        other => bail!(
            "{} needs lbd (its admin API); --maps only reads the pinned maps and drains or \
             enables backends",
            describe(&other)
        ),
    }
}

#[derive(Clone, Copy)]
enum WeightChange {
    Drain,
    /// Enable with this weight (`None`: 1, and lbd restores the configured
    /// weight when it next starts or reloads).
    Enable(Option<u32>),
}

/// `backend drain|enable` without lbd: edits the backend in the maps and
/// records the change in the override store, holding the store's lock
/// throughout so that a starting lbd sees both or neither.
fn maps_set_weight(
    pin_path: &Path,
    state_dir: &Path,
    sel: &BackendSelector,
    change: WeightChange,
    load_ids: impl FnOnce() -> anyhow::Result<Ids>,
) -> anyhow::Result<Value> {
    let store = Store::open(state_dir)?;
    let mut dp = Dataplane::open_pinned(pin_path).with_context(|| {
        format!(
            "opening the maps pinned under {} (was lbd run with this pin_path?)",
            pin_path.display()
        )
    })?;
    let ids = load_ids()?;
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

/// `GET /tenants/{name}` from the maps, as lbd builds it.
fn tenant_detail(dp: &Dataplane, ids: &Ids, name: &str) -> anyhow::Result<TenantDetail> {
    let summary = inspect::tenants(dp, ids)
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| anyhow!("no tenant {name:?} in the maps"))?;
    Ok(TenantDetail {
        vips: inspect::vips(dp, ids)
            .into_iter()
            .filter(|v| v.tenant == name)
            .collect(),
        pools: inspect::pools(dp, ids)
            .into_iter()
            .filter(|p| p.tenant == name)
            .collect(),
        drops_by_reason: inspect::tenant_drops(dp, summary.id),
        summary,
    })
}

fn describe(request: &Request) -> &'static str {
    match request {
        Request::Status => "status",
        Request::AddTenant { .. } => "tenant add",
        Request::RemoveTenant { .. } => "tenant remove",
        Request::AddBackend { .. } => "backend add",
        Request::RemoveBackend { .. } => "backend remove",
        Request::Reload => "reload",
        Request::ListOverrides | Request::ClearOverrides => "overrides",
        _ => "this command",
    }
}

// ---- Commands ----

struct Output {
    json: bool,
}

impl Output {
    /// Prints `value` as JSON when asked; returns whether it did.
    fn raw(&self, value: &Value) -> bool {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
            );
        }
        self.json
    }
}

async fn command(source: &Source, out: &Output, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status => {
            let (status, raw) = source.get::<Status>(Request::Status).await?;
            if !out.raw(&raw) {
                print_status(&status);
            }
        }
        Command::Tenant { action } => tenant(source, out, action).await?,
        Command::Vip {
            action: ListAction::List,
        } => {
            let (vips, raw) = source.get::<Vec<VipSummary>>(Request::ListVips).await?;
            if !out.raw(&raw) {
                print_vips(&vips, None);
            }
        }
        Command::Pool { action } => pool(source, out, action).await?,
        Command::Backend { action } => backend(source, out, action).await?,
        Command::Sni { action } => sni(source, out, action).await?,
        Command::Stats { watch } => stats(source, out, watch).await?,
        Command::Flows {
            tenant,
            vip,
            backend,
            limit,
        } => {
            let filter = FlowFilter {
                tenant,
                vip,
                backend,
                limit: limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            };
            let (flows, raw) = source
                .get::<Vec<FlowInfo>>(Request::Flows { filter })
                .await?;
            if !out.raw(&raw) {
                print_flows(&flows);
            }
        }
        Command::Explain {
            client,
            vip: (vip, protocol),
        } => {
            let request = Request::Explain {
                client,
                vip,
                protocol,
            };
            let (explain, raw) = source.get::<Explain>(request).await?;
            if !out.raw(&raw) {
                print_explain(&explain, client, vip, protocol);
            }
        }
        Command::Reload => {
            let raw = source.call(Request::Reload).await?;
            if !out.raw(&raw) {
                match serde_json::from_value::<ReloadResult>(raw.clone()) {
                    Ok(r) => print_reload(&r),
                    Err(_) => print_done(&raw),
                }
            }
        }
        Command::Overrides { action } => {
            let request = match action {
                OverridesAction::List => Request::ListOverrides,
                OverridesAction::Clear => Request::ClearOverrides,
            };
            let raw = source.call(request.clone()).await?;
            if out.raw(&raw) {
                return Ok(());
            }
            if request == Request::ListOverrides {
                let list: Vec<OverrideInfo> = serde_json::from_value(raw)?;
                if list.is_empty() {
                    println!("no overrides: the configuration file applies as written");
                }
                let mut t = Table::new(&["#", "OVERRIDE"]);
                for o in &list {
                    t.row(vec![o.index.to_string(), o.description.clone()]);
                }
                t.print_if_rows();
            } else {
                print_done(&raw);
            }
        }
        Command::Decap { .. } | Command::Pass { .. } => unreachable!("handled before"),
    }
    Ok(())
}

async fn sni(source: &Source, out: &Output, action: SniAction) -> anyhow::Result<()> {
    let request = match action {
        SniAction::List => {
            let (list, raw) = source.get::<Vec<SniEntry>>(Request::ListSni).await?;
            if !out.raw(&raw) {
                print_sni(&list);
            }
            return Ok(());
        }
        SniAction::Add { name, tenant, site } => Request::AddSni { tenant, site, name },
        SniAction::Remove { name } => Request::RemoveSni { name },
    };
    let raw = source.call(request).await?;
    if !out.raw(&raw) {
        print_done(&raw);
    }
    Ok(())
}

fn print_sni(list: &[SniEntry]) {
    let mut t = Table::new(&["HOST", "HASH", "TENANT", "LISTEN", "IN_MAP"]);
    for e in list {
        t.row(vec![
            e.name.clone().unwrap_or_else(|| "-".to_owned()),
            e.hash.clone(),
            e.tenant.clone(),
            e.listen.map_or_else(|| "-".to_owned(), |l| l.to_string()),
            if e.in_map { "yes" } else { "no" }.to_owned(),
        ]);
    }
    t.print_or("no L7 host names");
}

async fn tenant(source: &Source, out: &Output, action: TenantAction) -> anyhow::Result<()> {
    match action {
        TenantAction::List => {
            let (tenants, raw) = source
                .get::<Vec<TenantSummary>>(Request::ListTenants)
                .await?;
            if out.raw(&raw) {
                return Ok(());
            }
            let mut t = Table::new(&[
                "TENANT",
                "ID",
                "VIPS",
                "POOLS",
                "BACKENDS",
                "PACKETS",
                "BYTES",
                "NEW_FLOWS",
                "DROPS",
                "FLOWS",
                "MAX_FLOWS",
            ]);
            for s in &tenants {
                t.row(vec![
                    s.name.clone(),
                    s.id.to_string(),
                    s.vips.to_string(),
                    s.pools.to_string(),
                    s.backends.to_string(),
                    s.counters.packets.to_string(),
                    s.counters.bytes.to_string(),
                    s.counters.new_flows.to_string(),
                    s.counters.drops.to_string(),
                    s.flow_table.flows.to_string(),
                    s.flow_table.max_flows.to_string(),
                ]);
            }
            t.print_or("no tenants");
        }
        TenantAction::Show { name } => {
            let (d, raw) = source
                .get::<TenantDetail>(Request::ShowTenant { name })
                .await?;
            if out.raw(&raw) {
                return Ok(());
            }
            let s = &d.summary;
            print_fields(&[
                ("tenant", s.name.clone()),
                ("id", s.id.to_string()),
                ("backends", s.backends.to_string()),
                ("packets", s.counters.packets.to_string()),
                ("bytes", s.counters.bytes.to_string()),
                ("new flows", s.counters.new_flows.to_string()),
                ("drops", s.counters.drops.to_string()),
                ("drops by reason", drops_text(&d.drops_by_reason)),
            ]);
            println!();
            print_vips(&d.vips, None);
            println!();
            print_pools(&d.pools);
        }
        TenantAction::Add { file } => {
            let toml = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the tenant from stdin")?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let raw = source.call(Request::AddTenant { toml }).await?;
            if !out.raw(&raw) {
                print_done(&raw);
            }
        }
        TenantAction::Remove { name } => {
            let raw = source.call(Request::RemoveTenant { name }).await?;
            if !out.raw(&raw) {
                print_done(&raw);
            }
        }
    }
    Ok(())
}

async fn pool(source: &Source, out: &Output, action: PoolAction) -> anyhow::Result<()> {
    match action {
        PoolAction::List => {
            let (pools, raw) = source.get::<Vec<PoolSummary>>(Request::ListPools).await?;
            if !out.raw(&raw) {
                print_pools(&pools);
            }
        }
        PoolAction::Show { tenant, pool } => {
            let (d, raw) = source
                .get::<PoolDetail>(Request::ShowPool { tenant, pool })
                .await?;
            if out.raw(&raw) {
                return Ok(());
            }
            let s = &d.summary;
            print_fields(&[
                ("pool", format!("{}/{}", s.tenant, s.name)),
                ("id", s.id.to_string()),
                ("ring size", s.ring_size.to_string()),
                ("backends", format!("{} ({} up)", s.backends, s.up)),
            ]);
            println!();
            print_backends(&d.backends, None);
            if !d.ring_share.is_empty() {
                println!();
                let mut t = Table::new(&["BACKEND", "RING_SLOTS", "SHARE"]);
                for (backend, slots) in &d.ring_share {
                    let share = f64::from(*slots) * 100.0 / f64::from(s.ring_size.max(1));
                    t.row(vec![
                        backend.clone(),
                        slots.to_string(),
                        format!("{share:.1}%"),
                    ]);
                }
                t.print();
            }
        }
    }
    Ok(())
}

async fn backend(source: &Source, out: &Output, action: BackendAction) -> anyhow::Result<()> {
    let request = match action {
        BackendAction::List => {
            let (backends, raw) = source
                .get::<Vec<BackendInfo>>(Request::ListBackends)
                .await?;
            if !out.raw(&raw) {
                print_backends(&backends, None);
            }
            return Ok(());
        }
        BackendAction::Show(sel) => {
            let sel = sel.resolve()?;
            let (backends, raw) = source
                .get::<Vec<BackendInfo>>(Request::ListBackends)
                .await?;
            let found = backends
                .iter()
                .zip(raw.as_array().into_iter().flatten())
                .find(|(b, _)| {
                    b.tenant == sel.tenant
                        && b.pool == sel.pool
                        && b.address == sel.address
                        && b.port == sel.port
                });
            let Some((info, raw)) = found else {
                bail!(
                    "no backend {} in {}/{}",
                    inspect::show(sel.address, sel.port),
                    sel.tenant,
                    sel.pool
                );
            };
            if !out.raw(raw) {
                print_backend(info);
            }
            return Ok(());
        }
        BackendAction::Add { backend, weight } => {
            let sel = backend.resolve()?;
            Request::AddBackend {
                tenant: sel.tenant,
                pool: sel.pool,
                backend: BackendConf {
                    address: sel.address,
                    port: sel.port,
                    weight,
                },
            }
        }
        BackendAction::Remove(sel) => Request::RemoveBackend {
            backend: sel.resolve()?,
        },
        BackendAction::Drain(sel) => Request::DrainBackend {
            backend: sel.resolve()?,
        },
        BackendAction::Enable { backend, weight } => {
            let backend = backend.resolve()?;
            if let Source::Maps {
                pin_path,
                state_dir,
            } = source
            {
                let ids_path = state_dir.join(IDS_FILE);
                let raw = maps_set_weight(
                    pin_path,
                    state_dir,
                    &backend,
                    WeightChange::Enable(weight),
                    || {
                        Ids::load(&ids_path)
                            .with_context(|| format!("reading {}", ids_path.display()))
                    },
                )?;
                if !out.raw(&raw) {
                    print_done(&raw);
                }
                return Ok(());
            }
            if weight.is_some() {
                bail!("--weight only applies with --maps (lbd restores the configured weight)");
            }
            Request::EnableBackend { backend }
        }
    };
    let raw = source.call(request).await?;
    if !out.raw(&raw) {
        print_done(&raw);
    }
    Ok(())
}

/// Samples of the previous refresh, for rates.
struct Previous {
    at: Instant,
    stats: Stats,
}

async fn stats(source: &Source, out: &Output, watch: Option<u64>) -> anyhow::Result<()> {
    let Some(secs) = watch else {
        let (stats, raw) = source.get::<Stats>(Request::Stats).await?;
        if !out.raw(&raw) {
            print_stats(&stats, None);
        }
        return Ok(());
    };
    let mut previous: Option<Previous> = None;
    let clear = std::io::stdout().is_terminal();
    loop {
        let (stats, raw) = source.get::<Stats>(Request::Stats).await?;
        let now = Instant::now();
        if out.json {
            // One document per line, for scripts.
            println!("{raw}");
        } else {
            if clear {
                print!("\x1b[2J\x1b[H");
            }
            println!("lbctl stats, every {secs} s (Ctrl-C to stop)\n");
            let rates = previous.as_ref().map(|p| Rates {
                secs: now.duration_since(p.at).as_secs_f64(),
                before: &p.stats,
            });
            print_stats(&stats, rates.as_ref());
            if !clear {
                println!();
            }
        }
        previous = Some(Previous { at: now, stats });
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(secs)) => {}
        }
    }
}

// ---- Rendering ----

/// Columns aligned: numbers to the right, text to the left.
struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn print_or(&self, empty: &str) {
        if self.rows.is_empty() {
            println!("{empty}");
        } else {
            self.print();
        }
    }

    fn print_if_rows(&self) {
        if !self.rows.is_empty() {
            self.print();
        }
    }

    fn print(&self) {
        print!("{}", self.render());
    }

    fn render(&self) -> String {
        let columns = self.headers.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .chain(std::iter::once(&self.headers[i]))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let numeric: Vec<bool> = (0..columns)
            .map(|i| {
                let mut cells = self.rows.iter().filter_map(|r| r.get(i));
                cells.clone().next().is_some() && cells.all(|c| is_number(c))
            })
            .collect();
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut l = String::new();
            for (i, cell) in cells.iter().enumerate().take(columns) {
                let pad = widths[i].saturating_sub(cell.chars().count());
                let last = i + 1 == columns;
                if numeric[i] {
                    l.push_str(&" ".repeat(pad));
                    l.push_str(cell);
                } else {
                    l.push_str(cell);
                    if !last {
                        l.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    l.push_str("  ");
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&self.headers);
        for r in &self.rows {
            line(r);
        }
        out
    }
}

/// Numbers and placeholders (`-`) align to the right (addresses do not).
fn is_number(cell: &str) -> bool {
    let digits = cell.trim_end_matches('%');
    cell == "-"
        || (!digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && digits.matches('.').count() <= 1)
}

fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        println!("{k:<width$}  {v}");
    }
}

fn drops_text(drops: &BTreeMap<String, u64>) -> String {
    if drops.is_empty() {
        return "-".into();
    }
    drops
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, ..) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

fn ago(at_unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format!(
        "{} ago",
        human_duration(now.saturating_sub(at_unix_ms) / 1000)
    )
}

fn print_status(s: &Status) {
    let last = s.last_reload.as_ref().map_or_else(
        || "none yet".to_owned(),
        |r| {
            let verdict = if r.ok { "ok" } else { "FAILED" };
            let message = if r.message.is_empty() {
                String::new()
            } else {
                format!(": {}", r.message)
            };
            format!("{verdict}, {}{message}", ago(r.at_unix_ms))
        },
    );
    print_fields(&[
        ("lbd", format!("{} (pid {})", s.version, s.pid)),
        ("uptime", human_duration(s.uptime_secs)),
        ("config", s.config.clone()),
        ("interface", s.interface.clone()),
        ("pin path", s.pin_path.clone()),
        ("forwarding", s.forwarding.clone()),
        ("tenants", s.tenants.to_string()),
        ("vips", s.vips.to_string()),
        ("pools", s.pools.to_string()),
        (
            "backends",
            format!("{} ({} down)", s.backends, s.backends_down),
        ),
        ("reloads", s.reloads.to_string()),
        ("last reload", last),
        ("overrides", s.overrides.to_string()),
    ]);
    if let Some(r) = &s.last_reload {
        for d in &r.dropped_overrides {
            println!("  dropped override: {d}");
        }
    }
}

fn print_vips(vips: &[VipSummary], rates: Option<&Rates<'_>>) {
    let mut headers = vec![
        "VIP",
        "PROTO",
        "TENANT",
        "POOL",
        "PACKETS",
        "BYTES",
        "NEW_FLOWS",
        "DROPS",
    ];
    if rates.is_some() {
        headers.extend(["PKT/S", "BYTES/S"]);
    }
    let mut t = Table::new(&headers);
    for v in vips {
        let mut row = vec![
            SocketAddr::new(v.address, v.port).to_string(),
            v.protocol.to_string(),
            v.tenant.clone(),
            v.pool.clone(),
            v.counters.packets.to_string(),
            v.counters.bytes.to_string(),
            v.counters.new_flows.to_string(),
            v.counters.drops.to_string(),
        ];
        if let Some(r) = rates {
            let before =
                r.before.vips.iter().find(|b| {
                    b.address == v.address && b.port == v.port && b.protocol == v.protocol
                });
            row.extend(r.columns(&v.counters, before.map(|b| &b.counters)));
        }
        t.row(row);
    }
    t.print_or("no VIPs");
}

fn print_pools(pools: &[PoolSummary]) {
    let mut t = Table::new(&["TENANT", "POOL", "ID", "RING_SIZE", "BACKENDS", "UP"]);
    for p in pools {
        t.row(vec![
            p.tenant.clone(),
            p.name.clone(),
            p.id.to_string(),
            p.ring_size.to_string(),
            p.backends.to_string(),
            p.up.to_string(),
        ]);
    }
    t.print_or("no pools");
}

/// The health checker's view of a backend, in a few words.
fn health_text(b: &BackendInfo) -> String {
    b.health
        .as_ref()
        .and_then(|h| h.get("health"))
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_owned()
}

fn last_seen_text(b: &BackendInfo) -> String {
    b.last_seen_secs_ago
        .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"))
}

fn print_backends(backends: &[BackendInfo], rates: Option<&Rates<'_>>) {
    let mut headers = vec![
        "TENANT",
        "POOL",
        "BACKEND",
        "ID",
        "WEIGHT",
        "STATE",
        "HEALTH",
        "FLOWS",
        "LAST_SEEN_S",
        "PACKETS",
        "BYTES",
        "NEW_FLOWS",
    ];
    if rates.is_some() {
        headers.extend(["PKT/S", "BYTES/S"]);
    }
    let mut t = Table::new(&headers);
    for b in backends {
        let mut row = vec![
            b.tenant.clone(),
            b.pool.clone(),
            inspect::show(b.address, b.port),
            b.id.to_string(),
            b.weight.to_string(),
            b.state.clone(),
            health_text(b),
            b.flows.to_string(),
            last_seen_text(b),
            b.counters.packets.to_string(),
            b.counters.bytes.to_string(),
            b.counters.new_flows.to_string(),
        ];
        if let Some(r) = rates {
            let before = r.before.backends.iter().find(|o| {
                o.tenant == b.tenant
                    && o.pool == b.pool
                    && o.address == b.address
                    && o.port == b.port
            });
            row.extend(r.columns(&b.counters, before.map(|o| &o.counters)));
        }
        t.row(row);
    }
    t.print_or("no backends");
}

fn print_backend(b: &BackendInfo) {
    let mut fields = vec![
        ("backend", inspect::show(b.address, b.port)),
        ("pool", format!("{}/{}", b.tenant, b.pool)),
        ("id", b.id.to_string()),
        ("weight", b.weight.to_string()),
        ("state", b.state.clone()),
        ("flows", b.flows.to_string()),
        (
            "last seen",
            b.last_seen_secs_ago
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s ago")),
        ),
        ("packets", b.counters.packets.to_string()),
        ("bytes", b.counters.bytes.to_string()),
        ("new flows", b.counters.new_flows.to_string()),
    ];
    if let Some(h) = &b.health {
        fields.push(("health", health_text(b)));
        if let Some(e) = h.get("last_error").and_then(Value::as_str) {
            fields.push(("last check error", e.to_owned()));
        }
        if let Some(at) = h.get("last_check_unix_ms").and_then(Value::as_u64) {
            fields.push(("last check", ago(at)));
        }
    }
    print_fields(&fields);
    if b.state == "draining" {
        if b.flows == 0 {
            println!("\ndrain complete: no flow-table entry points at this backend");
        } else {
            println!(
                "\ndraining: {} flow(s) still point at this backend; wait until none is left \
                 (or they have been idle longer than flow_idle_timeout)",
                b.flows
            );
        }
    }
}

fn print_flows(flows: &[FlowInfo]) {
    let mut t = Table::new(&[
        "CLIENT", "VIP", "PROTO", "TENANT", "BACKEND", "ID", "VALID", "IDLE_S",
    ]);
    for f in flows {
        t.row(vec![
            f.client.to_string(),
            f.vip.to_string(),
            f.protocol.clone(),
            f.tenant.clone(),
            f.backend.map_or_else(|| "?".to_owned(), |b| b.to_string()),
            f.backend_id.to_string(),
            if f.valid { "yes" } else { "stale" }.to_owned(),
            format!("{:.1}", f.idle_secs),
        ]);
    }
    t.print_or("no flows");
}

fn print_explain(e: &Explain, client: SocketAddr, vip: SocketAddr, protocol: Protocol) {
    let backend = match (e.backend, e.backend_id) {
        (Some(b), Some(id)) => format!("{b} (id {id})"),
        (Some(b), None) => b.to_string(),
        (None, Some(id)) => format!("id {id} (address unknown)"),
        (None, None) => "none (the pool has no usable backend: the packet is dropped)".into(),
    };
    let why = match e.decision.as_str() {
        "flow_table" => "an established flow: its flow-table entry is honoured".to_owned(),
        "ring" => format!(
            "a new flow: Maglev ring slot {} = hash {} mod the ring size",
            e.ring_slot, e.hash
        ),
        other => other.to_owned(),
    };
    print_fields(&[
        ("flow", format!("{client} -> {vip}/{protocol}")),
        ("tenant", e.tenant.clone()),
        ("pool", e.pool.clone()),
        ("backend", backend),
        ("decision", why),
        ("flow hash", e.hash.to_string()),
        ("ring slot", e.ring_slot.to_string()),
    ]);
    if let Some(note) = &e.note {
        println!("note: {note}");
    }
}

fn print_reload(r: &ReloadResult) {
    if r.ok {
        if r.message.is_empty() {
            println!("reloaded");
        } else {
            println!("{}", r.message);
        }
    } else {
        println!("reload FAILED: {}", r.message);
    }
    for d in &r.dropped_overrides {
        println!("dropped override (names something the file no longer has): {d}");
    }
}

/// The answer of a change: `added: acme`, or a backend's new state.
fn print_done(value: &Value) {
    if let Ok(b) = serde_json::from_value::<BackendInfo>(value.clone()) {
        let flows = if b.flows > 0 {
            format!(", {} flow(s) still point at it", b.flows)
        } else {
            String::new()
        };
        println!(
            "backend {} in {}/{}: {} (weight {}){flows}",
            inspect::show(b.address, b.port),
            b.tenant,
            b.pool,
            b.state,
            b.weight
        );
        return;
    }
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let v = match v {
                    Value::Number(n) if k == "cleared" => format!("{n} override(s)"),
                    Value::String(s) => s.clone(),
                    Value::Object(o) if o.contains_key("address") => {
                        let sel: Option<BackendSelector> = serde_json::from_value(v.clone()).ok();
                        sel.map_or_else(
                            || v.to_string(),
                            |s| {
                                format!(
                                    "backend {} in {}/{}",
                                    inspect::show(s.address, s.port),
                                    s.tenant,
                                    s.pool
                                )
                            },
                        )
                    }
                    other => other.to_string(),
                };
                println!("{k}: {v}");
            }
        }
        Value::String(s) => println!("{}", s.trim_end()),
        _ => println!("ok"),
    }
}

/// Per-second rates against the previous refresh of `stats --watch`.
struct Rates<'a> {
    secs: f64,
    before: &'a Stats,
}

impl Rates<'_> {
    #[expect(
        clippy::cast_precision_loss,
        reason = "rates are shown rounded; counters far beyond 2^52 lose nothing visible"
    )]
    fn columns(&self, now: &api::Counters, before: Option<&api::Counters>) -> [String; 2] {
        let Some(before) = before.filter(|_| self.secs > 0.0) else {
            return ["-".into(), "-".into()];
        };
        let rate = |n: u64, b: u64| format!("{:.0}", n.saturating_sub(b) as f64 / self.secs);
        [
            rate(now.packets, before.packets),
            rate(now.bytes, before.bytes),
        ]
    }
}

fn print_stats(stats: &Stats, rates: Option<&Rates<'_>>) {
    let node: Vec<(&str, String)> = stats
        .global
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_string()))
        .collect();
    println!("node");
    let width = node.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &node {
        println!("  {k:<width$}  {v}");
    }
    println!();
    let mut headers = vec!["TENANT", "PACKETS", "BYTES", "NEW_FLOWS", "DROPS"];
    if rates.is_some() {
        headers.extend(["PKT/S", "BYTES/S"]);
    }
    headers.push("DROPS_BY_REASON");
    let mut t = Table::new(&headers);
    for s in &stats.tenants {
        let mut row = vec![
            s.name.clone(),
            s.counters.packets.to_string(),
            s.counters.bytes.to_string(),
            s.counters.new_flows.to_string(),
            s.counters.drops.to_string(),
        ];
        if let Some(r) = rates {
            let before = r.before.tenants.iter().find(|b| b.name == s.name);
            row.extend(r.columns(&s.counters, before.map(|b| &b.counters)));
        }
        row.push(drops_text(&s.drops_by_reason));
        t.row(row);
    }
    t.print_or("no tenants");
    println!();
    print_vips(&stats.vips, rates);
    println!();
    print_backends(&stats.backends, rates);
    if !stats.l7_tenants.is_empty() {
        println!();
        print_l7(stats);
    }
}

/// The L7 tier's per-tenant requests and per-listener refusals.
fn print_l7(stats: &Stats) {
    let mut t = Table::new(&[
        "L7_TENANT",
        "2XX",
        "3XX",
        "4XX",
        "5XX",
        "BYTES_IN",
        "BYTES_OUT",
        "CONNS",
        "TLS_FAIL",
        "POLICY_REFUSALS",
    ]);
    for s in &stats.l7_tenants {
        let c = &s.counters;
        let refused: BTreeMap<String, u64> = c
            .policy_refusals
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        t.row(vec![
            s.tenant.clone(),
            c.responses[1].to_string(),
            c.responses[2].to_string(),
            c.responses[3].to_string(),
            c.responses[4].to_string(),
            c.bytes_in.to_string(),
            c.bytes_out.to_string(),
            c.active_connections.to_string(),
            c.tls_handshake_failures.to_string(),
            drops_text(&refused),
        ]);
    }
    t.print_or("no L7 tenants");
    println!();
    let mut t = Table::new(&[
        "LISTENER",
        "CONNECTIONS",
        "TLS_FAILURES",
        "BAD_HELLOS",
        "REFUSED",
        "DEADLINE_CLOSES",
    ]);
    for l in &stats.l7_listeners {
        t.row(vec![
            l.address.to_string(),
            l.connections.to_string(),
            l.tls_handshake_failures.to_string(),
            l.bad_client_hellos.to_string(),
            l.refused_connections.to_string(),
            l.deadline_closes.to_string(),
        ]);
    }
    t.print_or("no L7 listeners");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_arguments() {
        assert_eq!(
            parse_vip("203.0.113.10:80/tcp"),
            Ok(("203.0.113.10:80".parse().expect("addr"), Protocol::Tcp))
        );
        assert_eq!(
            parse_vip("[2001:db8::1]:53/udp"),
            Ok(("[2001:db8::1]:53".parse().expect("addr"), Protocol::Udp))
        );
        assert_eq!(
            parse_vip("203.0.113.10:80"),
            Ok(("203.0.113.10:80".parse().expect("addr"), Protocol::Tcp))
        );
        assert!(parse_vip("203.0.113.10:80/sctp").is_err());
        assert!(parse_vip("203.0.113.10/tcp").is_err());
    }

    #[test]
    fn selectors() {
        let s = |address: &str, port: Option<u16>| Selector {
            tenant: "t".into(),
            pool: "p".into(),
            address: address.into(),
            port,
        };
        let r = s("10.0.0.1:80", None).resolve().expect("ip:port");
        assert_eq!(
            (r.address.to_string(), r.port),
            ("10.0.0.1".into(), Some(80))
        );
        let r = s("2001:db8::1", Some(443)).resolve().expect("ip --port");
        assert_eq!(r.port, Some(443));
        assert!(s("10.0.0.1:80", Some(81)).resolve().is_err());
        assert!(s("10.0.0.x", None).resolve().is_err());
        assert!(s("10.0.0.1", Some(0)).resolve().is_err());
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["NAME", "BACKEND", "PACKETS", "NOTE"]);
        t.row(vec![
            "acme".into(),
            "10.0.0.1".into(),
            "5".into(),
            "x".into(),
        ]);
        t.row(vec![
            "globex-long".into(),
            "10.0.0.12".into(),
            "12345".into(),
            String::new(),
        ]);
        assert_eq!(
            t.render(),
            "NAME         BACKEND    PACKETS  NOTE\n\
             acme         10.0.0.1         5  x\n\
             globex-long  10.0.0.12    12345\n"
        );
    }

    #[test]
    fn arguments_parse() {
        let a = Args::try_parse_from([
            "lbctl", "backend", "add", "acme", "web", "10.0.0.1", "--port", "80", "--weight", "3",
            "--json",
        ])
        .expect("backend add");
        assert!(a.json);
        assert!(matches!(
            a.command,
            Command::Backend {
                action: BackendAction::Add { weight: 3, .. }
            }
        ));
        let a = Args::try_parse_from(["lbctl", "stats", "--maps", "/sys/fs/bpf/lb", "--json"])
            .expect("stats --maps");
        assert_eq!(a.maps, Some(PathBuf::from("/sys/fs/bpf/lb")));
        assert!(Args::try_parse_from(["lbctl", "stats", "--watch", "0"]).is_err());
        assert!(
            Args::try_parse_from(["lbctl", "--url", "http://127.0.0.1:9465", "status"]).is_err()
        );
        let a = Args::try_parse_from(["lbctl", "explain", "10.0.0.1:5555", "203.0.113.10:80/udp"])
            .expect("explain");
        assert!(matches!(
            a.command,
            Command::Explain {
                vip: (_, Protocol::Udp),
                ..
            }
        ));
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m01s");
        assert_eq!(human_duration(7322), "2h02m");
        assert_eq!(human_duration(90_000), "1d01h");
    }
}
