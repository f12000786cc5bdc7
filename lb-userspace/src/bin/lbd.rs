//! `lbd`: loads the XDP balancer, programs its maps from `lb.toml`, and keeps
//! running until SIGTERM or SIGINT. The program stays attached and the maps
//! stay pinned when it exits, so traffic keeps flowing across restarts;
//! `lbd --config FILE --cleanup` removes them.

use std::{
    collections::BTreeSet, fs, net::IpAddr, path::PathBuf, process::ExitCode, time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use lb::{
    config::{self, Config, XdpMode},
    dataplane::{self, AttachMode, Dataplane, LoadOptions},
    neighbours,
    reconcile::Reconciler,
};
use tracing::info;

/// lb's daemon: programs the XDP balancer from a configuration file.
#[derive(Debug, Parser)]
#[command(name = "lbd", version)]
struct Args {
    /// The configuration file (lb.toml).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration and exit: 0 when valid, 2 with the file,
    /// line and field of the first error otherwise.
    #[arg(long, conflicts_with = "cleanup")]
    check: bool,
    /// Detach the balancer and remove every pin under the configured
    /// `pin_path`, then exit (drops established flows).
    #[arg(long)]
    cleanup: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How often the backends' neighbour entries are refreshed (see `lb::neighbours`).
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(args.log_format);
    let config = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        let pools: usize = config.tenants.iter().map(|t| t.pools.len()).sum();
        let vips: usize = config.tenants.iter().map(|t| t.l4.len()).sum();
        println!(
            "{}: ok ({} tenants, {pools} pools, {vips} L4 VIPs)",
            args.config.display(),
            config.tenants.len()
        );
        return ExitCode::SUCCESS;
    }
    if args.cleanup {
        return match dataplane::cleanup(&config.node.pin_path) {
            Ok(removed) => {
                for p in &removed {
                    println!("removed {}", p.display());
                }
                println!(
                    "{} pins removed under {}",
                    removed.len(),
                    config.node.pin_path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cleaning up {}: {e}", config.node.pin_path.display());
                ExitCode::FAILURE
            }
        };
    }
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    let node = &config.node;
    enable_forwarding(&node.interface)?;
    let mut dp = Dataplane::load(&LoadOptions {
        pin_path: Some(node.pin_path.clone()),
        flow_table_size: node.flow_table_size,
    })?;
    let mut reconciler = Reconciler::new();
    let report = reconciler.apply(config, &mut dp)?;
    info!(?report, "maps programmed");
    let backends = backend_addresses(config);
    neighbours::warm(&backends);
    let mode = match node.xdp_mode {
        XdpMode::Auto => AttachMode::Auto,
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
    };
    dp.attach(&node.interface, mode)?;
    info!(
        interface = %node.interface,
        pin_path = %node.pin_path.display(),
        tenants = config.tenants.len(),
        "balancer attached"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut tick = tokio::time::interval(NEIGHBOUR_REFRESH);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tick.tick() => neighbours::warm(&backends),
            }
        }
        anyhow::Ok(())
    })?;
    info!(
        pin_path = %node.pin_path.display(),
        "stopping; the balancer stays attached and keeps forwarding (`lbd --cleanup` removes it)"
    );
    Ok(())
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
                info!(%path, "enabled forwarding (needed for the FIB lookups of the balancer)");
            }
            Err(e) => anyhow::bail!(
                "interface {interface}: cannot read {path}: {e} (does the interface exist in this network namespace?)"
            ),
        }
    }
    Ok(())
}

fn backend_addresses(config: &Config) -> BTreeSet<IpAddr> {
    config
        .tenants
        .iter()
        .flat_map(|t| t.pools.iter())
        .flat_map(|p| p.backends.iter().map(|b| b.address))
        .collect()
}
