//! `lbctl`: manages a running `lbd` through its admin API, inspects and
//! edits the pinned maps directly when no daemon runs (`--maps DIR`), and
//! manages the backends' XDP programs.

mod args;
mod print;
mod source;

use std::{
    io::{IsTerminal as _, Read as _},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use lb::{
    api::{
        BackendInfo, Explain, FlowFilter, FlowInfo, OverrideInfo, PoolDetail, PoolSummary,
        ReloadResult, Request, SniEntry, Stats, Status, TenantDetail, TenantSummary, VipSummary,
    },
    client::{Client, Target},
    config::BackendConf,
    decap::{self, BackendProgram},
    inspect,
};

use crate::{
    args::{
        Args, AttachAction, BackendAction, Command, ListAction, OverridesAction, PoolAction,
        SniAction, TenantAction,
    },
    print::Rates,
    source::Source,
};
use serde_json::Value;

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
                print::status(&status);
            }
        }
        Command::Tenant { action } => tenant(source, out, action).await?,
        Command::Vip {
            action: ListAction::List,
        } => {
            let (vips, raw) = source.get::<Vec<VipSummary>>(Request::ListVips).await?;
            if !out.raw(&raw) {
                print::vips(&vips, None);
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
                print::flows(&flows);
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
                print::explain(&explain, client, vip, protocol);
            }
        }
        Command::Reload => {
            let raw = source.call(Request::Reload).await?;
            if !out.raw(&raw) {
                match serde_json::from_value::<ReloadResult>(raw.clone()) {
                    Ok(r) => print::reload(&r),
                    Err(_) => print::done(&raw),
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
                print::overrides(&serde_json::from_value::<Vec<OverrideInfo>>(raw)?);
            } else {
                print::done(&raw);
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
                print::sni(&list);
            }
            return Ok(());
        }
        SniAction::Add { name, tenant, site } => Request::AddSni { tenant, site, name },
        SniAction::Remove { name } => Request::RemoveSni { name },
    };
    let raw = source.call(request).await?;
    if !out.raw(&raw) {
        print::done(&raw);
    }
    Ok(())
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
            print::tenants(&tenants);
        }
        TenantAction::Show { name } => {
            let (d, raw) = source
                .get::<TenantDetail>(Request::ShowTenant { name })
                .await?;
            if out.raw(&raw) {
                return Ok(());
            }
            print::tenant_detail(&d);
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
                print::done(&raw);
            }
        }
        TenantAction::Remove { name } => {
            let raw = source.call(Request::RemoveTenant { name }).await?;
            if !out.raw(&raw) {
                print::done(&raw);
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
                print::pools(&pools);
            }
        }
        PoolAction::Show { tenant, pool } => {
            let (d, raw) = source
                .get::<PoolDetail>(Request::ShowPool { tenant, pool })
                .await?;
            if out.raw(&raw) {
                return Ok(());
            }
            print::pool_detail(&d);
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
                print::backends(&backends, None);
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
                print::backend(info);
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
                let raw = source::maps_set_weight(
                    pin_path,
                    state_dir,
                    &backend,
                    source::WeightChange::Enable(weight),
                )?;
                if !out.raw(&raw) {
                    print::done(&raw);
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
        print::done(&raw);
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
            print::stats(&stats, None);
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
            print::stats(&stats, rates.as_ref());
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
