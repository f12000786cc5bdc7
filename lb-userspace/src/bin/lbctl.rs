//! `lbctl`: inspects the balancer's pinned maps and manages the backends'
//! XDP programs.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb::{
    dataplane::Dataplane,
    decap::{self, BackendProgram},
    reconcile::ip_from_bytes,
};
use lb_common::{drop_reason, global_counter};

/// Inspect lb's maps and manage the backends' XDP programs.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Counters read from the pinned maps (no daemon needed).
    Stats {
        /// Directory of the pinned maps (`node.pin_path`).
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/lb")]
        maps: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Dump the flow table from the pinned maps.
    Flows {
        /// Directory of the pinned maps (`node.pin_path`).
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/lb")]
        maps: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
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
        Command::Decap { action } => attach_action(BackendProgram::Decap, action),
        Command::Pass { action } => attach_action(BackendProgram::Pass, action),
        Command::Stats { maps, json } => stats(&maps, json),
        Command::Flows { maps, json } => flows(&maps, json),
    }
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

fn open(maps: &std::path::Path) -> anyhow::Result<Dataplane> {
    Dataplane::open_pinned(maps).with_context(|| {
        format!(
            "opening the maps pinned under {} (is lbd running, or was it run with this pin_path?)",
            maps.display()
        )
    })
}

fn stats(maps: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let dp = open(maps)?;
    let global: Vec<(&str, u64)> = global_counter::NAMES
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.starts_with("reserved"))
        .map(|(i, n)| (*n, dp.global(u32::try_from(i).unwrap_or(0))))
        .collect();
    let mut tenants = std::collections::BTreeSet::new();
    for (_, info) in dp.vips() {
        tenants.insert(info.tenant_id);
    }
    let rows: Vec<serde_json::Value> = tenants
        .iter()
        .map(|&t| {
            let s = dp.tenant_stats(t);
            let d = dp.tenant_drops(t);
            let drops: serde_json::Map<String, serde_json::Value> = drop_reason::NAMES
                .iter()
                .zip(d.by_reason.iter())
                .filter(|(_, n)| **n > 0)
                .map(|(name, n)| ((*name).to_string(), (*n).into()))
                .collect();
            serde_json::json!({"tenant_id": t, "packets": s.packets, "bytes": s.bytes,
                "new_flows": s.new_flows, "drops": s.drops, "drops_by_reason": drops})
        })
        .collect();
    if json {
        let g: serde_json::Map<String, serde_json::Value> = global
            .iter()
            .map(|(n, v)| ((*n).to_string(), (*v).into()))
            .collect();
        println!("{}", serde_json::json!({"global": g, "tenants": rows}));
        return Ok(());
    }
    println!("node");
    for (n, v) in &global {
        println!("  {n:<20} {v}");
    }
    println!(
        "\n{:<8} {:>12} {:>14} {:>10} {:>10}  drops by reason",
        "tenant", "packets", "bytes", "new_flows", "drops"
    );
    for r in &rows {
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        println!(
            "{:<8} {:>12} {:>14} {:>10} {:>10}  {}",
            n("tenant_id"),
            n("packets"),
            n("bytes"),
            n("new_flows"),
            n("drops"),
            r["drops_by_reason"]
        );
    }
    Ok(())
}

fn flows(maps: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let dp = open(maps)?;
    let rows: Vec<serde_json::Value> = dp
        .flows()
        .iter()
        .map(|(k, v)| {
            let backend = dp.backend(v.backend_id).ok();
            serde_json::json!({
                "client": format!("{}", std::net::SocketAddr::new(ip_from_bytes(&k.src, k.family), u16::from_be(k.sport))),
                "vip": format!("{}", std::net::SocketAddr::new(ip_from_bytes(&k.dst, k.family), u16::from_be(k.dport))),
                "proto": k.proto,
                "tenant_id": v.tenant_id,
                "backend_id": v.backend_id,
                "backend": backend.map(|b| ip_from_bytes(&b.addr, b.family).to_string()),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<44} {:<44} {:>5} {:>6} backend",
        "client", "vip", "proto", "tenant"
    );
    for r in &rows {
        println!(
            "{:<44} {:<44} {:>5} {:>6} {} (id {})",
            r["client"].as_str().unwrap_or(""),
            r["vip"].as_str().unwrap_or(""),
            r["proto"],
            r["tenant_id"],
            r["backend"].as_str().unwrap_or("?"),
            r["backend_id"]
        );
    }
    Ok(())
}
