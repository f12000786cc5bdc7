//! `cargo xtask bench isolation`: tenant B's latency and throughput at a
//! steady, modest rate, alone and while tenant A floods, at both layers,
//! in one run, as ratios (the aim: B's p99 under the flood within 1.5x of
//! its baseline):
//!
//! - **L4** (`isolation/l4.rs`): B's short TCP exchanges through its XDP
//!   VIP while the live-frames generator floods A's VIP far above A's
//!   `[tenant.limits]` (`packets_per_second`, `new_flows_per_second`);
//!   A's offered, seen and admitted rates and its drops by reason from the
//!   balancer's maps.
//! - **L7** (`isolation/l7.rs`): B's HTTPS keep-alive requests through lbd
//!   while A sends ten times its `requests_per_second`; A's 429 share.
//!
//! It reuses the other benches' parts rather than copies: the end-to-end
//! tests' namespace harness and the L4 bench's generator for L4; the L7
//! bench's certificates, backends, lbd configuration and TLS clients for
//! L7; shared report and cleanup helpers in `common/`. Both halves build
//! their own namespaces and remove them (and lbd, its pins, the backends'
//! link pins) at the end, on error and on Ctrl-C.

#[path = "l7/backend.rs"]
mod backend;
#[path = "l7/certs.rs"]
mod certs;
#[path = "common/cleanup.rs"]
mod cleanup;
#[path = "common/cpu.rs"]
#[allow(dead_code, reason = "the L7 bench also reads the softirq share")]
mod cpu;
#[path = "../tests/common/mod.rs"]
#[allow(
    dead_code,
    reason = "the end-to-end tests' harness; this bench uses its topology and balancer"
)]
mod harness;
#[path = "isolation/l4.rs"]
mod l4;
#[path = "isolation/l7.rs"]
mod l7;
#[path = "l7/load.rs"]
#[allow(
    dead_code,
    reason = "the L7 bench's clients; this bench uses the TLS client parts"
)]
mod load;
#[path = "l4/loadgen.rs"]
#[allow(
    dead_code,
    reason = "the L4 bench's generator; this bench needs no frame checks of its own"
)]
mod loadgen;
#[path = "common/machine.rs"]
mod machine;
#[path = "isolation/paced.rs"]
mod paced;
#[path = "l7/proxies.rs"]
#[allow(
    dead_code,
    reason = "the L7 bench's candidates; this bench runs lbd only"
)]
mod proxies;
#[path = "isolation/report.rs"]
mod report;
#[path = "common/results.rs"]
mod results;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use lb_tests::netns::pin_thread;
use machine::Machine;
use report::{Results, Settings};

/// How much load, for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    quick: bool,
    rounds: usize,
    /// B's measured window, per phase and round.
    window: Duration,
    /// Load before each window (A's budgets and B's connections settle).
    warm: Duration,
    /// B's TCP exchanges per second, and how many may be in flight.
    l4_b_rate: f64,
    l4_b_workers: usize,
    /// A's flood: paced packets per second over this many flows.
    l4_flood_pps: u64,
    l4_flood_flows: u32,
    /// A's `[tenant.limits]` at L4.
    l4_a_pps_limit: u64,
    l4_a_new_flows_limit: u64,
    /// B's HTTPS requests per second over this many connections.
    l7_b_rate: f64,
    l7_b_conns: usize,
    /// A's `requests_per_second`, its flood as a multiple of it, and its
    /// connections.
    l7_a_limit: u64,
    l7_flood_factor: u64,
    l7_a_conns: usize,
}

impl Plan {
    fn full() -> Self {
        Self {
            quick: false,
            rounds: 5,
            window: Duration::from_secs(5),
            warm: Duration::from_secs(1),
            l4_b_rate: 500.0,
            l4_b_workers: 32,
            l4_flood_pps: 1_000_000,
            l4_flood_flows: 200_000,
            l4_a_pps_limit: 20_000,
            l4_a_new_flows_limit: 2_000,
            l7_b_rate: 500.0,
            l7_b_conns: 8,
            l7_a_limit: 1_000,
            l7_flood_factor: 10,
            l7_a_conns: 16,
        }
    }

    fn quick() -> Self {
        Self {
            quick: true,
            rounds: 1,
            window: Duration::from_secs(2),
            warm: Duration::from_millis(500),
            ..Self::full()
        }
    }
}

const USAGE: &str = "usage: bench_isolation [--quick] [--out FILE.json] [--lbd PATH] [--only l4|l7]
  FILE.md and FILE.svg are written next to FILE.json.
  --lbd   the lbd binary (default: target/release/lbd of this workspace)
  --only  one half (both by default)";

struct Opts {
    plan: Plan,
    out: Option<PathBuf>,
    lbd: PathBuf,
    l4: bool,
    l7: bool,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        plan: Plan::full(),
        out: None,
        lbd: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/lbd"),
        l4: true,
        l7: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => o.plan = Plan::quick(),
            "--out" => o.out = Some(PathBuf::from(value()?)),
            "--lbd" => o.lbd = PathBuf::from(value()?),
            "--only" => match value()?.as_str() {
                "l4" => o.l7 = false,
                "l7" => o.l4 = false,
                other => bail!("--only l4 or l7, not {other:?}\n{USAGE}"),
            },
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(o)
}

/// Ctrl-C, checked between windows (the guards then clean up).
struct Stop(Arc<AtomicBool>);

impl Stop {
    fn check(&self) -> Result<()> {
        if self.0.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }
}

/// Gives thread `tid` (0: the calling thread; a kernel thread too)
/// `SCHED_IDLE`: it runs only when nothing else on its CPU wants to (the
/// floods' sources, so they never delay B's endpoints on the shared core).
fn set_idle(tid: i32) -> Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall with a valid parameter block.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &raw const param) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("SCHED_IDLE for thread {tid}"));
    }
    Ok(())
}

/// Time the threads of `pids` (every task of each process) and `tids`
/// (single threads) spent runnable but waiting for a CPU, in nanoseconds
/// (`/proc/.../schedstat`, second field): how much other work on their CPU
/// delayed them.
fn run_queue_wait_ns(pids: &[i32], tids: &[i32]) -> u64 {
    let field = |path: &Path| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let mut total = 0;
    for pid in pids {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            total += tasks
                .flatten()
                .map(|t| field(&t.path().join("schedstat")))
                .sum::<u64>();
        }
    }
    total
        + tids
            .iter()
            .map(|t| field(Path::new(&format!("/proc/{t}/schedstat"))))
            .sum::<u64>()
}

/// `lbd --version`, and its worker setting.
fn lbd_version(lbd: &Path) -> String {
    let version = Command::new(lbd).arg("--version").output().map_or_else(
        |_| "lbd (version unknown)".to_owned(),
        |o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        },
    );
    if proxies::lbd_has_workers_flag(lbd) {
        format!("{version} (--workers 1)")
    } else {
        format!("{version} (no --workers flag: its default runtime)")
    }
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            eprintln!("\nbench isolation: interrupted, cleaning up");
            stop.store(true, Ordering::SeqCst);
        })
        .context("installing the Ctrl-C handler")?;
    }
    let started = Instant::now();
    let results = bench(&opts, &Stop(stop))?;
    report::print(&results);
    if let Some(out) = &opts.out {
        report::write(&results, out)?;
    }
    println!(
        "bench isolation took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench(opts: &Opts, stop: &Stop) -> Result<Results> {
    let plan = &opts.plan;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    ensure!(
        cpus >= 2,
        "bench isolation needs two CPUs (the LB on one, clients and backends on the other)"
    );
    if opts.l7 && !opts.lbd.is_file() {
        bail!(
            "lbd not found at {} (build it with `cargo build --release -p lb-userspace`)",
            opts.lbd.display()
        );
    }
    // SAFETY: plain syscall; on Linux it sets this thread's nice value,
    // which the threads it creates inherit: builds sharing the machine
    // then take less of a window.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, proxies::NICE) };
    cleanup::cleanup_stale();
    let mut machine = Machine::probe();
    println!(
        "bench isolation ({}): {} | kernel {} | {} cores | load average {}",
        if plan.quick { "quick" } else { "full" },
        machine.cpu,
        machine.kernel,
        machine.cores,
        machine.load_start
    );

    let l4 = if opts.l4 {
        // B's name servers inherit this thread's CPU.
        pin_thread(0, l4::WORLD_CPU)?;
        println!(
            "L4: B's TCP exchanges at {:.0}/s; A's VIP flooded at {} packets/s (limits: {} packets/s, {} new flows/s)",
            plan.l4_b_rate, plan.l4_flood_pps, plan.l4_a_pps_limit, plan.l4_a_new_flows_limit
        );
        let mut half = l4::L4::start(plan).context("setting up the L4 half")?;
        let r = half.run(stop).context("L4 half")?;
        let prefix = half.prefix();
        drop(half);
        println!("  namespaces {prefix}-* removed");
        Some(r)
    } else {
        None
    };

    let l7 = if opts.l7 {
        stop.check()?;
        pin_thread(0, l7::GEN_CPU)?;
        println!(
            "L7: B's HTTPS requests at {:.0}/s; A at {}x its {} requests/s",
            plan.l7_b_rate, plan.l7_flood_factor, plan.l7_a_limit
        );
        let mut half = l7::L7::start(plan, opts.lbd.clone()).context("setting up the L7 half")?;
        let r = match half.run(stop) {
            Ok(r) => r,
            Err(e) => {
                return Err(e.context(format!("L7 half; lbd's log:\n{}", half.log_tail())));
            }
        };
        let prefix = half.prefix();
        drop(half);
        println!("  namespaces {prefix}-* removed");
        Some(r)
    } else {
        None
    };
    machine.finish();
    Ok(Results {
        machine,
        settings: Settings {
            quick: plan.quick,
            rounds: plan.rounds,
            window_s: plan.window.as_secs_f64(),
            warm_s: plan.warm.as_secs_f64(),
        },
        l4,
        l7,
    })
}
