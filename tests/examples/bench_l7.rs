//! `cargo xtask bench l7`: lbd's L7 proxy next to nginx and `HAProxy`, each
//! configured identically for two TLS tenants, one core each, in one run:
//!
//! - HTTPS keep-alive requests/s with p50/p99 latency, HTTP/1.1 (wrk) and
//!   h2 (h2load), 100-byte responses, both tenants at once;
//! - full TLS 1.3 handshakes (a new connection per request), per second and
//!   per proxy CPU-second;
//! - resident memory per idle TLS connection (about 9,000 of them).
//!
//! Topology ([`lb_tests::netns::LineTopology`]): the proxy's namespace
//! holds the listen address on its veth; the peer namespace holds the load
//! generators, the bench's clients and the backends. The proxy runs pinned
//! to CPU 0, everything else to CPU 1. See `l7/report.rs` (the markdown's
//! Method section) for every detail of what is measured and how.
//!
//! Everything the bench creates (namespaces, processes, the work directory,
//! the hosts file for wrk, lbd's pins) is owned by a guard and removed on
//! success, on error and on Ctrl-C (which raises a flag the bench checks
//! between steps; the load tools get the terminal's SIGINT themselves).

#[path = "l7/backend.rs"]
mod backend;
#[path = "l7/certs.rs"]
mod certs;
#[path = "common/cleanup.rs"]
mod cleanup;
#[path = "common/cpu.rs"]
mod cpu;
#[path = "l7/load.rs"]
mod load;
#[path = "l7/proxies.rs"]
mod proxies;
#[path = "l7/report.rs"]
mod report;

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use backend::{BackendSpec, Backends};
use cleanup::{DirGuard, NsProcesses, cleanup_stale};
use cpu::{CoreTicks, core_ticks};
use lb_tests::netns::{LINE_GEN_V4, LINE_LB_V4, LineTopology, Side, pin_thread, write_sysctls};
use load::Gen;
use proxies::{Env, Kind, Proxy, Tenant};
use report::{Candidate, Cpu, KeepAlive, Machine, Memory, Results, Round, Settings};

/// The proxy's core.
const PROXY_CPU: usize = 0;
/// The load generators', the clients' and the backends' core (and the
/// bench's own threads).
const GEN_CPU: usize = 1;
const LISTEN_PORT: u16 = 443;
/// `(tenant, host)`.
const TENANTS: [(&str, &str); 2] = [("alpha", "alpha.example"), ("beta", "beta.example")];
/// Backends per tenant; ports from 8081 on the generator's address.
const BACKENDS_PER_TENANT: u16 = 2;
/// How long a candidate gets to serve after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How much load, for how long.
#[derive(Clone, Debug)]
struct Plan {
    quick: bool,
    rounds: usize,
    window_s: u64,
    warm_s: u64,
    /// wrk connections per tenant.
    h1_conns: usize,
    /// h2load connections per tenant, and streams per connection.
    h2_conns: usize,
    h2_streams: usize,
    /// Handshake clients (both tenants together), and the most connections
    /// one window may open.
    hs_concurrency: usize,
    hs_max: u64,
    idle_conns: usize,
    idle_concurrency: usize,
    idle_settle: Duration,
    idle_limit: Duration,
}

impl Plan {
    fn full() -> Self {
        Self {
            quick: false,
            rounds: 3,
            window_s: 10,
            warm_s: 2,
            h1_conns: 16,
            h2_conns: 2,
            h2_streams: 16,
            hs_concurrency: 32,
            hs_max: 1_000_000,
            idle_conns: 9_000,
            idle_concurrency: 64,
            idle_settle: Duration::from_secs(2),
            idle_limit: Duration::from_mins(3),
        }
    }

    fn quick() -> Self {
        Self {
            quick: true,
            rounds: 1,
            window_s: 2,
            warm_s: 1,
            h1_conns: 8,
            h2_conns: 2,
            h2_streams: 8,
            hs_concurrency: 8,
            hs_max: 100_000,
            idle_conns: 500,
            idle_concurrency: 32,
            idle_settle: Duration::from_millis(500),
            idle_limit: Duration::from_mins(1),
        }
    }
}

const USAGE: &str =
    "usage: bench_l7 [--quick] [--out FILE.json] [--lbd PATH] [--proxies lbd,nginx,haproxy] [--idle N]
       bench_l7 --hold lbd|nginx|haproxy [--lbd PATH]
  FILE.md and FILE.svg are written next to FILE.json.
  --lbd      the lbd binary (default: target/release/lbd of this workspace)
  --proxies  which candidates (default: all three; also BENCH_L7_PROXIES)
  --idle N   idle connections for the memory figure (default 9000, --quick 500)
  --hold     set everything up with one candidate running, print how to load
             it by hand (e.g. to profile it), and wait for Ctrl-C";

struct Opts {
    plan: Plan,
    hold: Option<Kind>,
    out: Option<PathBuf>,
    lbd: PathBuf,
    proxies: Vec<Kind>,
}

fn parse_args() -> Result<Opts> {
    let mut plan = Plan::full();
    let mut out = None;
    let mut lbd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/lbd");
    let mut proxies = std::env::var("BENCH_L7_PROXIES").ok();
    let mut hold = None;
    let mut idle = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => plan = Plan::quick(),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--lbd" => lbd = PathBuf::from(value()?),
            "--proxies" => proxies = Some(value()?),
            "--idle" => idle = Some(value()?.parse().context("--idle N")?),
            "--hold" => {
                let v = value()?;
                hold =
                    Some(Kind::parse(&v).ok_or_else(|| anyhow!("unknown proxy {v:?}\n{USAGE}"))?);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if let Some(n) = idle {
        plan.idle_conns = n;
    }
    if let Some(k) = hold {
        proxies = Some(k.name().to_owned());
    }
    let proxies = match proxies.filter(|p| !p.trim().is_empty()) {
        None => Kind::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|p| Kind::parse(p.trim()).ok_or_else(|| anyhow!("unknown proxy {p:?}\n{USAGE}")))
            .collect::<Result<_>>()?,
    };
    Ok(Opts {
        plan,
        hold,
        out,
        lbd,
        proxies,
    })
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            eprintln!("\nbench l7: interrupted, cleaning up");
            stop.store(true, Ordering::SeqCst);
        })
        .context("installing the Ctrl-C handler")?;
    }
    let started = Instant::now();
    let Some(results) = bench(&opts, &stop)? else {
        return Ok(());
    };
    report::print(&results);
    if let Some(out) = &opts.out {
        report::write(&results, out)?;
    }
    println!("bench l7 took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Installs the peers and the load generators when missing (apt-get).
fn ensure_tools(proxies: &[Kind]) -> Result<()> {
    let mut missing = Vec::new();
    let mut want = |bin: &str, pkg: &'static str| {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(bin).exists());
        if !found {
            missing.push(pkg);
        }
    };
    if proxies.contains(&Kind::Nginx) {
        want("nginx", "nginx");
    }
    if proxies.contains(&Kind::Haproxy) {
        want("haproxy", "haproxy");
    }
    want("wrk", "wrk");
    want("h2load", "nghttp2-client");
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "==> installing {} (apt-get): the L7 bench's peers and load generators",
        missing.join(", ")
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if !install().is_ok_and(|s| s.success()) {
        let s = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .context("apt-get update")?;
        ensure!(s.success(), "apt-get update failed ({s})");
        let s = install().context("apt-get install")?;
        ensure!(
            s.success(),
            "apt-get install {} failed ({s})",
            missing.join(" ")
        );
    }
    Ok(())
}

/// Raises this process's open-file limit to the hard limit (children
/// inherit it): about 9,000 idle connections need as many descriptors.
fn raise_nofile() -> Result<u64> {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0,
            "getrlimit"
        );
        lim.rlim_cur = lim.rlim_max;
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) == 0,
            "setrlimit(RLIMIT_NOFILE, {})",
            lim.rlim_max
        );
        Ok(lim.rlim_max)
    }
}

/// Measures one window: the proxy's CPU time and both cores' busy shares.
struct Window {
    t0: Instant,
    proxy0: f64,
    core0: [CoreTicks; 2],
}

impl Window {
    fn start(p: &mut Proxy) -> Window {
        Window {
            t0: Instant::now(),
            proxy0: p.cpu_seconds(),
            core0: [core_ticks(PROXY_CPU), core_ticks(GEN_CPU)],
        }
    }

    #[expect(clippy::cast_precision_loss, reason = "tick counts far below 2^52")]
    fn end(self, p: &mut Proxy) -> Cpu {
        let window_s = self.t0.elapsed().as_secs_f64();
        let proxy_s = p.cpu_seconds() - self.proxy0;
        let [p1, g1] = [core_ticks(PROXY_CPU), core_ticks(GEN_CPU)];
        let [p0, g0] = self.core0;
        let total = |a: CoreTicks, b: CoreTicks| b.total.saturating_sub(a.total).max(1) as f64;
        Cpu {
            window_s,
            proxy_s,
            proxy_core_busy: p1.busy_since(&p0),
            proxy_core_softirq: p1.softirq.saturating_sub(p0.softirq) as f64 / total(p0, p1),
            gen_core_busy: g1.busy_since(&g0),
        }
    }
}

/// Everything a measurement needs.
struct Bench<'a> {
    plan: &'a Plan,
    env: Env,
    load_gen: Gen,
    backends: Backends,
    stop: &'a AtomicBool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

impl Bench<'_> {
    fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Starts a candidate and waits until it passes the TLS check.
    fn start(&self, kind: Kind) -> Result<(Proxy, Vec<load::Checked>)> {
        self.check_stop()?;
        let mut p = Proxy::start(kind, &self.env)?;
        let mut checked = Vec::new();
        p.wait_ready(START_TIMEOUT, || {
            checked = load::check(&self.load_gen, &self.env.tenants)?;
            Ok(())
        })?;
        for c in &checked {
            ensure!(
                c.version == "TLSv1_3",
                "{}: tenant {} negotiated {} instead of TLS 1.3",
                kind.name(),
                c.tenant,
                c.version
            );
        }
        Ok((p, checked))
    }

    /// Backend requests per tenant since `before`, failing on any request
    /// that reached another tenant's backend or a backend left idle.
    fn served(&self, before: &backend::Snapshot, what: &str) -> Result<Vec<u64>> {
        let (per, misrouted) = backend::delta(before, &self.backends.snapshot());
        ensure!(
            misrouted == 0,
            "{what}: {misrouted} requests reached a backend of another tenant"
        );
        let mut out = Vec::new();
        for (tenant, _) in TENANTS {
            let mine: Vec<u64> = self
                .backends
                .specs
                .iter()
                .zip(&per)
                .filter(|(s, _)| s.tenant == tenant)
                .map(|(_, n)| *n)
                .collect();
            ensure!(
                mine.iter().all(|n| *n > 0),
                "{what}: a backend of tenant {tenant} served nothing: {mine:?}"
            );
            out.push(mine.iter().sum());
        }
        Ok(out)
    }

    /// Both tenants' tools at once for `secs`; `None` for the log paths
    /// means wrk.
    fn tools(&self, proto: Proto, secs: u64) -> Result<Vec<load::ToolRun>> {
        let plan = self.plan;
        let mut children = Vec::new();
        for (tenant, host) in TENANTS {
            let log = self.env.work.join(format!("h2load-{tenant}.log"));
            let child = match proto {
                Proto::H1 => load::spawn_wrk(&self.load_gen, host, plan.h1_conns, secs)?,
                Proto::H2 => load::spawn_h2load(
                    &self.load_gen,
                    host,
                    plan.h2_conns,
                    plan.h2_streams,
                    secs,
                    &log,
                )?,
            };
            children.push((tenant, child, log));
        }
        let limit = Duration::from_secs(secs + 30);
        let mut runs = Vec::new();
        let mut first_err = None;
        for (tenant, child, log) in children {
            let what = if proto == Proto::H1 { "wrk" } else { "h2load" };
            match load::finish(child, what, limit).and_then(|out| match proto {
                Proto::H1 => load::parse_wrk(tenant, &out),
                Proto::H2 => load::parse_h2load(tenant, &out, &log),
            }) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.check_stop()?;
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(runs)
    }

    fn keepalive(&self, p: &mut Proxy, proto: Proto) -> Result<KeepAlive> {
        let name = if proto == Proto::H1 { "HTTP/1.1" } else { "h2" };
        self.tools(proto, self.plan.warm_s)
            .with_context(|| format!("{} {name} warm-up", p.kind.name()))?;
        let before = self.backends.snapshot();
        let w = Window::start(p);
        let runs = self.tools(proto, self.plan.window_s)?;
        let cpu = w.end(p);
        let what = format!("{} {name}", p.kind.name());
        let backend_requests = self.served(&before, &what)?;
        for (r, served) in runs.iter().zip(&backend_requests) {
            ensure!(
                *served >= r.requests,
                "{what}: the client counted {} responses for {} but its backends served {served}",
                r.requests,
                r.tenant
            );
            #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let bad = r.errors as f64 / r.requests.max(1) as f64;
            ensure!(
                bad <= 0.001,
                "{what}: {} errors for {} requests of {}",
                r.errors,
                r.requests,
                r.tenant
            );
            if proto == Proto::H2 {
                ensure!(
                    r.protocol == "h2",
                    "{what}: h2load negotiated {:?}, not h2",
                    r.protocol
                );
            }
        }
        let (conns, streams) = match proto {
            Proto::H1 => (self.plan.h1_conns, 1),
            Proto::H2 => (self.plan.h2_conns, self.plan.h2_streams),
        };
        Ok(KeepAlive {
            protocol: if proto == Proto::H1 { "http/1.1" } else { "h2" },
            conns,
            streams,
            tenants: runs,
            backend_requests,
            cpu,
        })
    }

    fn handshakes(&self, p: &mut Proxy) -> Result<report::Handshakes> {
        let plan = self.plan;
        let tenants = &self.env.tenants;
        load::handshakes(
            &self.load_gen,
            tenants,
            plan.hs_concurrency,
            Duration::from_secs(plan.warm_s),
            plan.hs_max,
            self.stop,
        )?;
        let before = self.backends.snapshot();
        let w = Window::start(p);
        let hs = load::handshakes(
            &self.load_gen,
            tenants,
            plan.hs_concurrency,
            Duration::from_secs(plan.window_s),
            plan.hs_max,
            self.stop,
        )?;
        let cpu = w.end(p);
        let what = format!("{} handshakes", p.kind.name());
        let served: u64 = self.served(&before, &what)?.iter().sum();
        ensure!(
            hs.errors * 1000 <= hs.ok,
            "{what}: {} failed connections of {} (first: {})",
            hs.errors,
            hs.ok + hs.errors,
            hs.first_error.as_deref().unwrap_or("-")
        );
        ensure!(
            hs.not_full == 0,
            "{what}: {} handshakes were not full ones",
            hs.not_full
        );
        ensure!(
            served >= hs.ok,
            "{what}: {} responses but the backends served {served}",
            hs.ok
        );
        Ok(report::Handshakes {
            concurrency: plan.hs_concurrency,
            ok: hs.ok,
            errors: hs.errors,
            not_full: hs.not_full,
            seconds: hs.seconds,
            p50_ms: hs.p50_ms,
            p99_ms: hs.p99_ms,
            backend_requests: served,
            cpu,
        })
    }

    /// One round on one candidate: HTTP/1.1, h2, handshakes.
    fn round(&self, kind: Kind) -> Result<(Round, Vec<load::Checked>)> {
        let (mut p, checked) = self.start(kind)?;
        let h1 = self.keepalive(&mut p, Proto::H1)?;
        println!(
            "  {:<8} HTTP/1.1 {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  {:>7.0} req per proxy CPU-s (proxy {:.0}% busy, generator core {:.0}%)",
            kind.name(),
            h1.rps(),
            h1.p50_ms(),
            h1.p99_ms(),
            h1.per_cpu_s(),
            h1.cpu.proxy_busy() * 100.0,
            h1.cpu.gen_core_busy * 100.0
        );
        let h2 = self.keepalive(&mut p, Proto::H2)?;
        println!(
            "  {:<8} h2       {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  {:>7.0} req per proxy CPU-s (proxy {:.0}% busy, generator core {:.0}%)",
            kind.name(),
            h2.rps(),
            h2.p50_ms(),
            h2.p99_ms(),
            h2.per_cpu_s(),
            h2.cpu.proxy_busy() * 100.0,
            h2.cpu.gen_core_busy * 100.0
        );
        let hs = self.handshakes(&mut p)?;
        println!(
            "  {:<8} TLS 1.3 {:>8.0} handshakes/s, {:>7.0} per proxy CPU-s (proxy {:.0}% busy, generator core {:.0}%)",
            kind.name(),
            hs.per_s(),
            hs.per_cpu_s(),
            hs.cpu.proxy_busy() * 100.0,
            hs.cpu.gen_core_busy * 100.0
        );
        p.stop()?;
        Ok((
            Round {
                h1,
                h2,
                handshakes: hs,
            },
            checked,
        ))
    }

    /// `--hold`: one candidate serving until Ctrl-C.
    fn hold(&self, kind: Kind) -> Result<()> {
        let (mut p, checked) = self.start(kind)?;
        let g = &self.load_gen;
        println!(
            "{} serves {} (pids {:?}, CPU {PROXY_CPU}); TLS: {checked:?}\n\
             configuration and logs: {}\n\
             load it from the generator's namespace, e.g.:\n  \
             ip netns exec {ns} taskset -c {GEN_CPU} wrk -t1 -c32 -d10s --latency https://{h}/\n  \
             ip netns exec {ns} taskset -c {GEN_CPU} h2load -t1 -c4 -m16 -D10 --connect-to={t} https://{h}/\n\
             Ctrl-C stops it and cleans up.",
            kind.name(),
            g.target,
            p.pids(),
            self.env.work.join(kind.name()).display(),
            ns = g.ns,
            h = TENANTS[0].1,
            t = g.target,
        );
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        p.stop()
    }

    /// Resident memory per idle connection on a freshly started candidate.
    fn memory(&self, kind: Kind) -> Result<Memory> {
        let plan = self.plan;
        let (mut p, _) = self.start(kind)?;
        // Warm: lazily built state (session-ticket keys, backend pools)
        // belongs in the "before" figure.
        load::handshakes(
            &self.load_gen,
            &self.env.tenants,
            8,
            Duration::from_secs(1),
            300,
            self.stop,
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let rss_before_kib = p.rss_kib();
        let (idle, (rss_after_kib, processes, threads)) = load::idle(
            &self.load_gen,
            &self.env.tenants,
            load::IdlePlan {
                count: plan.idle_conns,
                concurrency: plan.idle_concurrency,
                settle: plan.idle_settle,
                limit: plan.idle_limit,
            },
            self.stop,
            || {
                let rss = p.rss_kib();
                (rss, p.pids().len(), p.threads())
            },
        )?;
        let m = Memory {
            wanted: idle.wanted,
            opened: idle.opened,
            failed: idle.failed,
            rss_before_kib,
            rss_after_kib,
            alive_after: idle.alive_after,
            closed: idle.closed.clone(),
            probed: idle.probed,
            probed_ok: idle.probed_ok,
            open_seconds: idle.open_seconds,
            processes,
            threads,
        };
        for (why, n) in &idle.closed {
            println!(
                "  {:<8} {n} idle connections ended before the end: {why}",
                kind.name()
            );
        }
        ensure!(
            idle.failed == 0,
            "{}: {} of {} idle connections failed to open (first: {})",
            kind.name(),
            idle.failed,
            idle.wanted,
            idle.first_error.as_deref().unwrap_or("-")
        );
        println!(
            "  {:<8} {} idle TLS connections: RSS {:.1} -> {:.1} MiB, {:.1} KiB per connection ({} still open after, {}/{} probes answered)",
            kind.name(),
            m.opened,
            report::round(
                f64::from(u32::try_from(m.rss_before_kib).unwrap_or(u32::MAX)) / 1024.0,
                1
            ),
            report::round(
                f64::from(u32::try_from(m.rss_after_kib).unwrap_or(u32::MAX)) / 1024.0,
                1
            ),
            m.bytes_per_conn() / 1024.0,
            m.alive_after,
            m.probed_ok,
            m.probed
        );
        p.stop()?;
        Ok(m)
    }
}

fn version(kind: Kind, lbd: &Path) -> String {
    let (prog, args): (&Path, &[&str]) = match kind {
        Kind::Lbd => {
            let workers = if proxies::lbd_has_workers_flag(lbd) {
                "--workers 1"
            } else {
                "no --workers flag: its default runtime"
            };
            return format!("{} ({workers})", tool_version(lbd, &["--version"]));
        }
        Kind::Nginx => (Path::new("nginx"), &["-v"]),
        Kind::Haproxy => (Path::new("haproxy"), &["-v"]),
    };
    tool_version(prog, args)
}

/// The first line a tool prints about its version (stdout or stderr).
fn tool_version(prog: &Path, args: &[&str]) -> String {
    Command::new(prog).args(args).output().map_or_else(
        |_| "unknown".into(),
        |o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_owned()
        },
    )
}

#[expect(
    clippy::too_many_lines,
    reason = "one linear benchmark script: set up, measure, report"
)]
fn bench(opts: &Opts, stop: &AtomicBool) -> Result<Option<Results>> {
    let plan = &opts.plan;
    ensure_tools(&opts.proxies)?;
    // Every thread of the bench (and what it spawns unless told otherwise)
    // stays off the proxy's core.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    ensure!(
        cpus > GEN_CPU,
        "bench l7 needs at least two CPUs (the proxy on CPU {PROXY_CPU}, the load on CPU {GEN_CPU})"
    );
    pin_thread(0, GEN_CPU)?;
    // SAFETY: plain syscall; on Linux it sets this thread's nice value,
    // which the threads it creates inherit.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, proxies::NICE) };
    let nofile = raise_nofile()?;
    let idle_conns = plan
        .idle_conns
        .min(usize::try_from(nofile.saturating_sub(500)).unwrap_or(usize::MAX));
    cleanup_stale();
    let mut machine = Machine::probe();
    println!(
        "bench l7 ({}): {} | kernel {} | {} cores | candidates: {}",
        if plan.quick { "quick" } else { "full" },
        machine.cpu,
        machine.kernel,
        machine.cores,
        opts.proxies
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let line = LineTopology::create().context("building the namespaces")?;
    let _procs = NsProcesses(vec![
        line.ns(Side::Gen).to_owned(),
        line.ns(Side::Lb).to_owned(),
    ]);
    write_sysctls(
        &line.path(Side::Gen),
        &[
            ("net.ipv4.ip_local_port_range", "10000 65000"),
            ("net.ipv4.tcp_tw_reuse", "1"),
        ],
    )?;
    write_sysctls(
        &line.path(Side::Lb),
        &[
            ("net.core.somaxconn", "8192"),
            ("net.ipv4.tcp_max_syn_backlog", "8192"),
        ],
    )?;
    let work = std::env::temp_dir().join(format!("lb-bench-l7-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _work = DirGuard(work.clone());
    // wrk takes the tenant's name from its URL (its SNI and Host): `ip
    // netns exec` shows it this namespace's own /etc/hosts.
    let hosts_dir = Path::new("/etc/netns").join(line.ns(Side::Gen));
    std::fs::create_dir_all(&hosts_dir)?;
    let _hosts = DirGuard(hosts_dir.clone());
    let mut hosts = "127.0.0.1 localhost\n".to_owned();
    for (_, host) in TENANTS {
        let _ = writeln!(hosts, "{LINE_LB_V4} {host}");
    }
    std::fs::write(hosts_dir.join("hosts"), hosts)?;

    let mut tenants = Vec::new();
    let mut specs = Vec::new();
    let mut port = 8081;
    for (name, host) in TENANTS {
        let cert = certs::generate(&work, name, host)?;
        let mut backends = Vec::new();
        for i in 1..=BACKENDS_PER_TENANT {
            let addr = SocketAddr::new(IpAddr::V4(LINE_GEN_V4), port);
            port += 1;
            specs.push(BackendSpec {
                tenant: name,
                host,
                name: format!("{name}-{i}"),
                addr,
            });
            backends.push(addr);
        }
        tenants.push(Tenant {
            name,
            host,
            cert,
            backends,
            lbd_policy: String::new(),
        });
    }
    let backends = Backends::start(line.path(Side::Gen), GEN_CPU, specs)?;
    let listen = SocketAddr::new(IpAddr::V4(LINE_LB_V4), LISTEN_PORT);
    let env = Env {
        work: work.clone(),
        lb_ns: line.path(Side::Lb),
        lb_if: line.ifname(Side::Lb).to_owned(),
        listen,
        tenants,
        lbd: opts.lbd.clone(),
        pin_path: PathBuf::from(format!("/sys/fs/bpf/{}-l7", line.prefix())),
        cpu: PROXY_CPU,
        max_conns: idle_conns + 200,
    };
    let load_gen = Gen {
        ns: line.ns(Side::Gen).to_owned(),
        ns_path: line.path(Side::Gen),
        cpu: GEN_CPU,
        target: listen,
    };
    let plan = Plan {
        idle_conns,
        ..plan.clone()
    };
    let b = Bench {
        plan: &plan,
        env,
        load_gen,
        backends,
        stop,
    };

    if let Some(kind) = opts.hold {
        b.hold(kind)?;
        return Ok(None);
    }
    let mut cands: Vec<Candidate> = opts
        .proxies
        .iter()
        .map(|k| Candidate {
            name: k.name(),
            version: version(*k, &opts.lbd),
            tls: Vec::new(),
            rounds: Vec::new(),
            memory: Memory::default(),
        })
        .collect();
    for r in 0..plan.rounds {
        println!("round {} of {}:", r + 1, plan.rounds);
        // Each round starts with the next candidate, so a disturbance on
        // the machine does not always hit the same one.
        for i in 0..cands.len() {
            let i = (i + r) % cands.len();
            let kind = opts.proxies[i];
            let (round, checked) = b
                .round(kind)
                .with_context(|| format!("candidate {}", kind.name()))?;
            cands[i].rounds.push(round);
            cands[i].tls = checked;
        }
    }
    println!(
        "memory per idle TLS connection ({} connections):",
        plan.idle_conns
    );
    for (i, kind) in opts.proxies.iter().enumerate() {
        cands[i].memory = b
            .memory(*kind)
            .with_context(|| format!("candidate {}", kind.name()))?;
    }
    drop(b);
    let line_name = line.prefix().to_owned();
    drop(line);
    machine.finish();
    println!("  namespaces {line_name}-* removed");
    Ok(Some(Results {
        machine,
        settings: Settings {
            quick: plan.quick,
            rounds: plan.rounds,
            window_s: plan.window_s,
            warm_s: plan.warm_s,
            proxy_cpu: PROXY_CPU,
            gen_cpu: GEN_CPU,
            body_bytes: backend::BODY_BYTES,
            tools: vec![
                tool_version(Path::new("wrk"), &["-v"]),
                tool_version(Path::new("h2load"), &["--version"]),
                "rustls 0.23 (ring) client: handshakes, idle connections".into(),
            ],
        },
        candidates: cands,
    }))
}
