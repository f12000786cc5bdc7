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
    l7::{L7, handoff},
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
    // JWT key files and the TCP admin API's token and certificate are part
    // of the configuration: --check and a start refuse broken ones like an
    // invalid file (--cleanup does not care).
    let key_files = || {
        let fail = |e: &dyn std::fmt::Display| {
            eprintln!("error: {}: {e}", args.config.display());
            ExitCode::from(2)
        };
        lb::l7::check_key_files(&config).map_err(|e| fail(&e))?;
        lb::admin::check_files(&config.node).map_err(|e| fail(&e))
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

/// The directory relative paths of the configuration start from.
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

    let handoff_path = handoff::socket_path(state_dir);
    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let mut daemon = start(config_path, &handoff_path, health_tx).await?;
    let (commands_tx, mut commands) = mpsc::channel::<Command>(64);
    let admin = lb::admin::spawn(daemon.config(), commands_tx.clone())?;
    let metrics = lb::metrics::spawn(daemon.config(), commands_tx)?;
    let handoff_server = handoff::Server::bind(&handoff_path)
        .with_context(|| format!("creating {}", handoff_path.display()))?;
    // The hand-off socket has its own task: a client that sends nothing
    // never delays this loop.
    let (handoff_tx, mut handoff_events) = mpsc::channel(4);
    let handoff_task = tokio::spawn(handoff_server.serve(handoff_tx));
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
            Some(event) = handoff_events.recv() => match event {
                handoff::Event::Sockets(reply) => {
                    let sockets = daemon.l7().map_or_else(|| Ok(Vec::new()), L7::sockets);
                    let _ = reply.send(sockets);
                }
                handoff::Event::Confirmed(successor) => {
                    info!("the new lbd has started: stopping the control plane, then draining");
                    break Some(successor);
                }
            },
        }
    };

    // No other hand-off from here on; dropping the server removes the
    // socket file before a successor binds its own.
    handoff_task.abort();
    let _ = handoff_task.await;
    // Stop the control plane: health checks, then the admin API and the
    // metrics endpoint, whose address and socket a successor binds next.
    daemon.shutdown();
    drop(commands);
    let _ = admin.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    if let Some(successor) = successor {
        match successor.release().await {
            Ok(()) => info!("released the control plane to the new lbd"),
            Err(e) => warn!(error = %e, "telling the new lbd that it may go on failed"),
        }
    }
    let open = daemon.l7().map_or(0, L7::open_connections);
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

/// Starts the daemon, taking over from a running `lbd` if there is one: it
/// hands over its listening sockets first, so that no connection is
/// refused while this one starts, and keeps serving until this one has
/// started and confirmed. Returns once this one accepts.
async fn start(
    config_path: &Path,
    handoff_path: &Path,
    health_tx: mpsc::UnboundedSender<lb::health::Event>,
) -> anyhow::Result<Daemon> {
    let asked = handoff_path.to_owned();
    let taken = tokio::task::spawn_blocking(move || handoff::take_over(&asked))
        .await
        .context("asking the running lbd for its sockets")?
        .with_context(|| {
            format!(
                "taking over from the lbd running with {}",
                handoff_path.display()
            )
        })?;
    let abort = TestAbort::from_env();
    let (predecessor, inherited) = match taken {
        Some((predecessor, sockets)) => {
            info!(
                sockets = sockets.len(),
                "received the running lbd's listening sockets; starting (it keeps serving until \
                 this start succeeds)"
            );
            abort.at(TestAbort::AfterReceive);
            (Some(predecessor), Some(sockets))
        }
        None => (None, None),
    };
    let daemon = Daemon::start(config_path, health_tx, inherited)?;
    if let Some(predecessor) = predecessor {
        abort.at(TestAbort::BeforeConfirm);
        tokio::task::spawn_blocking(move || predecessor.confirm())
            .await
            .context("confirming the start to the running lbd")?
            .context("confirming the start to the running lbd")?;
        info!("took over from the previous lbd, which now drains");
    }
    daemon.start_accepting();
    Ok(daemon)
}

/// A test hook: `LB_TEST_HANDOFF_ABORT` makes a new `lbd` that takes over
/// from a running one exit (status 3) at one step of the hand-off, to test
/// that the running one keeps serving. `after_receive`: right after
/// receiving the sockets; `before_confirm`: after a full start, before
/// confirming it. Unset (or any other value) in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TestAbort {
    Never,
    AfterReceive,
    BeforeConfirm,
}

impl TestAbort {
    const VAR: &str = "LB_TEST_HANDOFF_ABORT";

    fn from_env() -> Self {
        match std::env::var(Self::VAR).as_deref() {
            Ok("after_receive") => Self::AfterReceive,
            Ok("before_confirm") => Self::BeforeConfirm,
            _ => Self::Never,
        }
    }

    /// Exits if the hook asks for it at `step`.
    fn at(self, step: Self) {
        if self == step {
            warn!(
                hook = Self::VAR,
                ?step,
                "test hook: exiting in the middle of the hand-off"
            );
            std::process::exit(3);
        }
    }
}
