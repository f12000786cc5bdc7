//! `lbd`: loads the XDP balancer, keeps its maps equal to `lb.toml` plus the
//! runtime overrides plus the backends' health, and serves the admin API,
//! until SIGTERM or SIGINT. The program stays attached and the maps stay
//! pinned when it exits, so traffic keeps flowing across restarts;
//! `lbd --config FILE --cleanup` removes them.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use lb::{
    api::Command,
    config::{self},
    daemon::Daemon,
    dataplane,
    l7::handoff,
};
use notify::Watcher as _;
use tokio::sync::mpsc;
use tracing::{info, warn};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Threads serving L7 connections and the control plane (default: one
    /// per CPU lbd may run on).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How often the MACs of backends without health checks are refreshed.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(10);
/// Editors write a file in several steps: reload once it has been quiet
/// this long.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);
/// How often certificate files are checked for changes (only changed files
/// are parsed again).
const CERT_REFRESH: Duration = Duration::from_secs(2);

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
    // JWT key files are part of the configuration: --check and a start
    // refuse broken ones like an invalid file (--cleanup does not care).
    let key_files = || {
        let dir = args
            .config
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        lb::l7::policy::check_key_files(&config, dir).map_err(|e| {
            eprintln!("error: {}: {e}", args.config.display());
            ExitCode::from(2)
        })
    };
    if args.check {
        if let Err(code) = key_files() {
            return code;
        }
        let pools: usize = config.tenants.iter().map(|t| t.pools.len()).sum();
        let vips: usize = config.tenants.iter().map(|t| t.l4.len()).sum();
        let sites: usize = config.tenants.iter().map(|t| t.l7.len()).sum();
        println!(
            "{}: ok ({} tenants, {pools} pools, {vips} L4 VIPs, {sites} L7 sites on {} listeners)",
            args.config.display(),
            config.tenants.len(),
            config.listeners.len()
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
    if let Err(code) = key_files() {
        return code;
    }
    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        usize::from,
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args.config, &config.node.state_dir)) {
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

/// Watches the configuration file's directory (editors replace files) and
/// sends a unit for every event that touches the file.
fn watch(path: &Path) -> anyhow::Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let file = path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only writes, creations, renames and removals: reading the file
        // (which every reload does) must not trigger another reload.
        if let Ok(event) = event
            && is_change(event.kind)
            && event.paths.iter().any(|p| p.file_name() == file.as_deref())
        {
            let _ = tx.send(());
        }
    })
    .context("starting the configuration file watcher")?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok((watcher, rx))
}

fn is_change(kind: notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    match kind {
        EventKind::Create(_)
        | EventKind::Remove(_)
        | EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Modify(m) => !matches!(m, ModifyKind::Metadata(_)),
        _ => false,
    }
}

async fn run(config_path: &Path, state_dir: &Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    // A running lbd hands over its listening sockets first, so that no
    // connection is refused while this one starts.
    let handoff_path = handoff::socket_path(state_dir);
    let asked = handoff_path.clone();
    let inherited = tokio::task::spawn_blocking(move || handoff::take_over(&asked))
        .await
        .context("asking the running lbd for its sockets")?
        .with_context(|| {
            format!(
                "taking over from the lbd running with {}",
                handoff_path.display()
            )
        })?;
    if let Some(sockets) = &inherited {
        info!(
            sockets = sockets.len(),
            "took over from the running lbd, which now drains"
        );
    }

    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let mut daemon = Daemon::start(config_path, health_tx, inherited.unwrap_or_default())?;
    let (commands_tx, mut commands) = mpsc::channel::<Command>(64);
    let admin = lb::admin::spawn(daemon.config(), commands_tx.clone())?;
    let metrics = lb::metrics::spawn(daemon.config(), commands_tx)?;
    let handoff_server = handoff::Server::bind(&handoff_path)
        .with_context(|| format!("creating {}", handoff_path.display()))?;
    let (_watcher, mut changes) = watch(config_path)?;
    let mut tick = tokio::time::interval(NEIGHBOUR_REFRESH);
    let mut certs = tokio::time::interval(CERT_REFRESH);

    let successor = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                daemon.reload();
            }
            Some(()) = changes.recv() => {
                // Let the editor finish writing, then reload once.
                tokio::time::sleep(RELOAD_DEBOUNCE).await;
                while changes.try_recv().is_ok() {}
                info!(config = %config_path.display(), "configuration file changed: reloading");
                daemon.reload();
            }
            Some(cmd) = commands.recv() => {
                let response = daemon.handle(cmd.request);
                if cmd.reply.send(response).is_err() {
                    warn!("an admin client went away before its answer");
                }
            }
            Some(event) = health_rx.recv() => daemon.on_health(&event),
            _ = tick.tick() => daemon.warm_neighbours(),
            _ = certs.tick() => daemon.refresh_certificates(),
            request = handoff_server.request() => match request {
                Ok(successor) => break Some(successor),
                Err(e) => warn!(error = %e, "ignoring a bad hand-off request"),
            },
        }
    };

    // Stop the control plane: health checks, then the admin API and the
    // metrics endpoint, whose address and socket a successor binds next.
    daemon.shutdown();
    drop(commands);
    let _ = admin.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    drop(handoff_server);
    if let Some(successor) = successor {
        let sockets = match daemon.l7() {
            Some(l7) => l7.sockets().context("duplicating the listening sockets")?,
            None => Vec::new(),
        };
        match tokio::task::spawn_blocking(move || successor.hand_over(&sockets)).await {
            Ok(Ok(())) => info!("handed the listening sockets to the new lbd"),
            Ok(Err(e)) => warn!(error = %e, "the hand-off failed; draining"),
            Err(e) => warn!(error = %e, "the hand-off failed; draining"),
        }
    }
    let open = daemon.l7().map_or(0, lb::l7::server::L7::open_connections);
    if open > 0 {
        info!(
            connections = open,
            timeout = %config::format_duration(daemon.config().node.drain_timeout),
            "draining L7 connections"
        );
    }
    let cut = daemon.drain_l7().await;
    if cut > 0 {
        warn!(
            connections = cut,
            "drain timeout: closing the connections still open"
        );
    }
    info!(
        health = ?daemon.health_summary(),
        "stopping; the balancer stays attached and keeps forwarding (`lbd --cleanup` removes it)"
    );
    Ok(())
}
