//! `cargo xtask bench l4`: packets per second through the balancer (`ipip`
//! and `l2dsr`), next to an `XDP_TX` ceiling and nftables DNAT in the same
//! place, and nanoseconds per packet inside the balancer for 1k, 100k and 1M
//! live flows, all in one run on one topology.
//!
//! Topology ([`lb_tests::netns::LineTopology`]): a generator namespace and an
//! LB namespace joined by one veth pair. The LB is one-armed, so every
//! candidate sends its output back out of the interface it came in on: the
//! balancer and the ceiling with `XDP_TX`, nftables through the kernel's
//! forwarding path. The generator's namespace holds the backends'
//! addresses; `lb_gen_sink` on its veth counts what arrives there (split
//! into encapsulated and plain frames, to prove which path ran) and drops
//! it. That count is "forwarded".
//!
//! Load: `lb_gen` under `BPF_PROG_TEST_RUN` with live frames on the
//! generator's veth (`XDP_TX` to the LB), 64-byte IPv4 UDP frames cycling
//! through N distinct flows (source port and address vary).
//!
//! Placement (2 cores): both veths use threaded NAPI. The LB's NAPI thread
//! (where the LB's XDP program, or the kernel's forwarding path, runs) is
//! pinned alone on CPU 1; the generator thread and the sink's NAPI thread
//! share CPU 0. Both NAPI threads get `SCHED_FIFO` (`--no-rt` turns that
//! off) so builds sharing the machine do not preempt them. The generator
//! usually saturates CPU 0 before the LB saturates CPU 1, so besides the
//! forwarded rate the bench reports the LB core's busy time (its NAPI
//! thread's CPU time) and the LB's capacity: packets it handled per
//! LB-core-second. Each candidate runs twice: unpaced (the most it
//! forwards) and paced below every candidate's maximum (so none pays for an
//! overloaded ring); the capacity ratios come from the paced windows. Each
//! window also counts the LB thread's wake-ups and what else ran on its CPU.
//!
//! The per-packet cost inside the balancer comes from the kernel's BPF
//! run-time statistics, enabled only for those windows (they add two clock
//! reads to every program run, so the packet rates are measured without).
//!
//! `bench_l4 gen ...` runs the generator alone against a sink in the peer
//! namespace and reports what it sent (see `--help`).

#[path = "l4/loadgen.rs"]
mod loadgen;
#[path = "l4/report.rs"]
mod report;

use std::{
    collections::BTreeSet,
    ffi::CString,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode, xdp::XdpLink},
};
use lb::{
    config,
    dataplane::{Dataplane, LoadOptions},
    neighbours,
    reconcile::Reconciler,
};
use lb_common::DropReason;
use lb_tests::netns::{
    LineTopology, Side, enter_netns_current_thread, line_v4, line_v6, pin_thread, set_fifo,
    thread_cpu_ns,
};
use loadgen::{FlowSpec, Generator, Limits, SinkCounts, XDP_TX, per_second};
use report::{Forwarded, Load, Machine, NsPerPacket, Results};

/// The generator thread and the sink's NAPI thread.
const GEN_CPU: usize = 0;
/// The LB's NAPI thread, alone.
const LB_CPU: usize = 1;
/// `SCHED_FIFO` priority of the NAPI threads.
const RT_PRIORITY: i32 = 50;
const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd79, 0, 0, 0, 0, 0, 0, 1);
const VIP_PORT: u16 = 80;
/// Backends: `10.78.0.100..` / `fd78::64..`, held by the generator's side.
const BACKENDS: u8 = 3;
/// Source address of flow 0 (flows beyond 50,000 add to its last word).
const CLIENT_V4: Ipv4Addr = line_v4(10);
const CLIENT_V6: Ipv6Addr = line_v6(10);
const NFT_TABLE: &str = "lbbench";
/// The paced load, as a share of the unpaced forwarded rate.
const PACED_SHARE: f64 = 0.7;

fn backend_addrs() -> Vec<IpAddr> {
    (0..BACKENDS)
        .flat_map(|i| {
            [
                IpAddr::V4(line_v4(100 + i)),
                IpAddr::V6(line_v6(0x64 + u16::from(i))),
            ]
        })
        .collect()
}

/// How long and with how many flows each figure is measured.
#[derive(Clone, Debug)]
struct Plan {
    quick: bool,
    /// One measurement window.
    window: Duration,
    /// Windows per figure (the median window is reported).
    rounds: usize,
    /// Load before the first window (after every flow was sent once).
    warm: Duration,
    /// Flows for the packet-rate figures.
    pps_flows: u32,
    /// Flow counts for the per-packet cost.
    flow_counts: Vec<u32>,
    /// The balancer's flow table: well above the largest flow count.
    flow_table: u32,
    /// Frame length.
    size: usize,
    /// Also measure IPv6 and TCP.
    variants: bool,
    /// `SCHED_FIFO` for the NAPI threads.
    rt: bool,
}

impl Plan {
    fn full() -> Self {
        Self {
            quick: false,
            window: Duration::from_secs(3),
            rounds: 3,
            warm: Duration::from_secs(1),
            pps_flows: 100_000,
            flow_counts: vec![1_000, 100_000, 1_000_000],
            flow_table: 1 << 21,
            size: 64,
            variants: true,
            rt: true,
        }
    }

    fn quick() -> Self {
        Self {
            quick: true,
            window: Duration::from_millis(300),
            rounds: 1,
            warm: Duration::from_millis(100),
            pps_flows: 1_000,
            flow_counts: vec![100, 1_000, 10_000],
            flow_table: 1 << 15,
            size: 64,
            variants: false,
            rt: true,
        }
    }
}

struct GenArgs {
    v6: bool,
    tcp: bool,
    flows: u32,
    size: usize,
    count: u64,
    duration: Duration,
    rate: Option<u64>,
}

enum Mode {
    Bench { plan: Plan, out: Option<PathBuf> },
    Gen(GenArgs),
}

const USAGE: &str = "usage:
  bench_l4 [--quick] [--no-rt] [--out FILE.json]
      the L4 benchmark; FILE.md and FILE.svg are written next to FILE.json
  bench_l4 gen [--v6] [--tcp] [--flows N] [--size BYTES] [--count N] [--duration SECS] [--rate PPS]
      the load generator alone, into a counting sink in a peer namespace
      (defaults: IPv4 UDP, 1000 flows, 64 bytes, 10,000,000 frames, 5 s, as fast as possible)";

fn parse_args() -> Result<Mode> {
    let mut it = std::env::args().skip(1).peekable();
    let value = |it: &mut dyn Iterator<Item = String>, flag: &str| -> Result<String> {
        it.next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))
    };
    if it.peek().map(String::as_str) == Some("gen") {
        it.next();
        let mut g = GenArgs {
            v6: false,
            tcp: false,
            flows: 1000,
            size: 64,
            count: 10_000_000,
            duration: Duration::from_secs(5),
            rate: None,
        };
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--v6" => g.v6 = true,
                "--tcp" => g.tcp = true,
                "--flows" => g.flows = value(&mut it, &arg)?.parse()?,
                "--size" => g.size = value(&mut it, &arg)?.parse()?,
                "--count" => g.count = value(&mut it, &arg)?.parse()?,
                "--duration" => {
                    g.duration = Duration::from_secs_f64(value(&mut it, &arg)?.parse()?);
                }
                "--rate" => g.rate = Some(value(&mut it, &arg)?.parse()?),
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}\n{USAGE}"),
            }
        }
        ensure!(
            g.duration <= Duration::from_mins(10),
            "--duration is at most 600 s"
        );
        return Ok(Mode::Gen(g));
    }
    let mut plan = Plan::full();
    let mut out = None;
    let mut rt = true;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => plan = Plan::quick(),
            "--no-rt" => rt = false,
            "--out" => out = Some(PathBuf::from(value(&mut it, &arg)?)),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    plan.rt = rt;
    Ok(Mode::Bench { plan, out })
}

fn main() -> Result<()> {
    match parse_args()? {
        Mode::Gen(g) => gen_only(&g),
        Mode::Bench { plan, out } => {
            let started = Instant::now();
            let results = bench(&plan)?;
            report::print(&results);
            if let Some(out) = out {
                report::write(&results, &out)?;
            }
            println!("bench l4 took {:.0} s", started.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

/// Owns the LB side's XDP attachment (a BPF link) and swaps programs into
/// it atomically, so the veth keeps its NAPI context (and its pinned
/// thread) from one candidate to the next. Dropping it detaches.
struct XdpSlot {
    link: Option<XdpLink>,
}

impl XdpSlot {
    fn put(&mut self, prog: &mut Xdp) -> Result<()> {
        let link = self.link.take().context("the XDP link is gone")?;
        let id = prog
            .attach_to_link(link)
            .context("replacing the LB's XDP program")?;
        self.link = Some(prog.take_link(id)?);
        Ok(())
    }
}

/// Deletes the nftables table when dropped (also on error).
struct NftTable {
    ns: String,
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let r = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "delete", "table", "ip", NFT_TABLE,
            ])
            .output();
        match r {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "bench l4: deleting the nftables table: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("bench l4: deleting the nftables table: {e}"),
        }
    }
}

/// What sits in the LB's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Candidate {
    Ceiling,
    Ipip,
    L2dsr,
    Nftables,
}

impl Candidate {
    fn name(self) -> &'static str {
        match self {
            Self::Ceiling => "xdp_tx_ceiling",
            Self::Ipip => "balancer_ipip",
            Self::L2dsr => "balancer_l2dsr",
            Self::Nftables => "nftables_dnat",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ceiling => "XDP_TX ceiling (lb_bounce)",
            Self::Ipip => "balancer, ipip",
            Self::L2dsr => "balancer, l2dsr",
            Self::Nftables => "nftables DNAT + conntrack",
        }
    }

    /// Whether the sink should see encapsulated frames.
    fn encapsulates(self) -> bool {
        self == Self::Ipip
    }
}

/// The topology with everything loaded. Field order is drop order: the
/// LB's XDP link first, the namespaces last.
struct Bench {
    slot: XdpSlot,
    dp: Dataplane,
    reconciler: Reconciler,
    tenant: u32,
    pass: Ebpf,
    generator: Generator,
    gen_ifindex: u32,
    lb_napi: i32,
    sink_napi: i32,
    lb_cpu: usize,
    plan: Plan,
    line: LineTopology,
}

/// One measurement window.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    sent: u64,
    sink: SinkCounts,
    wall: Duration,
    /// Frames the LB's XDP program (whichever candidate) received.
    lb_rx: u64,
    lb_cpu_ns: u64,
    /// Times the LB's NAPI thread went to sleep (ran out of frames).
    lb_wakeups: u64,
    sink_cpu_ns: u64,
    gen_kernel_ns: f64,
    /// The LB core's time busy with anything and stolen by the hypervisor
    /// (`/proc/stat`), in nanoseconds: what else ran there.
    lb_core_busy_ns: u64,
    lb_core_steal_ns: u64,
    /// `(runs, ns)` of the LB's program, when run-time stats are on.
    prog: Option<(u64, u64)>,
    new_flows: u64,
    drops: u64,
}

impl Window {
    fn forwarded_pps(&self) -> f64 {
        per_second(self.sink.packets, self.wall)
    }
}

fn lb_config(iface: &str, l2dsr: bool, flow_table: u32) -> String {
    let pool = |v6: bool| {
        (0..BACKENDS)
            .map(|i| {
                let a = if v6 {
                    IpAddr::V6(line_v6(0x64 + u16::from(i)))
                } else {
                    IpAddr::V4(line_v4(100 + i))
                };
                format!("{{ address = \"{a}\" }}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "[node]\ninterface = \"{iface}\"\nforwarding = \"{}\"\nflow_table_size = {flow_table}\n\
         [[tenant]]\nname = \"bench\"\n\
         [[tenant.pool]]\nname = \"web4\"\nbackends = [{}]\n\
         [[tenant.pool]]\nname = \"web6\"\nbackends = [{}]\n",
        if l2dsr { "l2dsr" } else { "ipip" },
        pool(false),
        pool(true)
    );
    for (vip, pool) in [(IpAddr::V4(VIP_V4), "web4"), (IpAddr::V6(VIP_V6), "web6")] {
        for proto in ["udp", "tcp"] {
            let _ = write!(
                s,
                "[[tenant.l4]]\nvip = \"{vip}\"\nport = {VIP_PORT}\nprotocol = \"{proto}\"\npool = \"{pool}\"\n"
            );
        }
    }
    s
}

/// Runs `f` on a new thread in the namespace at `path`, borrowing freely.
fn in_ns<T: Send>(path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns_current_thread(path)?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in {} panicked", path.display()))?
    })
}

fn if_index(name: &str) -> Result<u32> {
    let c = CString::new(name)?;
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(idx != 0, "no interface {name} in this namespace");
    Ok(idx)
}

/// Voluntary context switches of a thread: for a NAPI thread, how often it
/// ran out of frames and slept until the next ones woke it.
fn thread_wakeups(tid: i32) -> Result<u64> {
    let path = format!("/proc/{tid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{path}: no voluntary_ctxt_switches"))
}

/// `(busy, steal)` nanoseconds of `cpu` since boot, from `/proc/stat`.
fn cpu_times(cpu: usize) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("{name} missing from /proc/stat"))?;
    let t: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    ensure!(t.len() >= 8, "short {name} line in /proc/stat");
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let ns = |ticks: u64| ticks * 1_000_000_000 / hz.max(1);
    // user nice system idle iowait irq softirq steal
    Ok((ns(t[0] + t[1] + t[2] + t[5] + t[6]), ns(t[7])))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

impl Bench {
    fn start(plan: &Plan, nft: bool) -> Result<Bench> {
        let line = LineTopology::create().context("building the namespaces")?;
        line.add_addresses(Side::Gen, &backend_addrs())?;
        // This thread becomes the generator: it lives in the generator's
        // namespace (the live frames' ingress interface is looked up
        // there) on its own CPU.
        enter_netns_current_thread(&line.path(Side::Gen))?;
        let (gen_cpu, lb_cpu) = if cpus() > LB_CPU {
            (GEN_CPU, LB_CPU)
        } else {
            (0, 0)
        };
        pin_thread(0, gen_cpu)?;

        let mut generator = Generator::load()?;
        let gen_if = line.ifname(Side::Gen).to_owned();
        generator
            .program_mut("lb_gen_sink")?
            .attach(&gen_if, XdpMode::Default)
            .context("attaching the sink")?;
        let gen_ifindex = if_index(&gen_if)?;

        let lb_if = line.ifname(Side::Lb).to_owned();
        let cfg = config::parse(&lb_config(&lb_if, false, plan.flow_table), "bench-l4.toml")
            .map_err(|e| anyhow!("bench config: {e}"))?;
        let mut dp = Dataplane::load(&LoadOptions::default()).context("loading the balancer")?;
        let mut reconciler = Reconciler::new();
        reconciler
            .apply(&cfg, &mut dp)
            .context("programming the balancer")?;
        let tenant = reconciler.ids().tenant("bench").context("tenant id")?;
        dp.program("lb_bounce")?;
        dp.program("lb_balancer")?;
        let mut pass = EbpfLoader::new()
            .load(lb::objects::DECAP)
            .context("loading lb_pass")?;
        let pass_prog: &mut Xdp = pass.program_mut("lb_pass").context("lb_pass")?.try_into()?;
        pass_prog.load()?;
        // The LB side starts with lb_pass, so the kernel can resolve the
        // backends' neighbours through it.
        let xdp_link = in_ns(&line.path(Side::Lb), || {
            let id = pass_prog
                .attach(&lb_if, XdpMode::Default)
                .context("attaching XDP on the LB")?;
            Ok(pass_prog.take_link(id)?)
        })?;
        let mut bench = Bench {
            slot: XdpSlot {
                link: Some(xdp_link),
            },
            dp,
            reconciler,
            tenant,
            pass,
            generator,
            gen_ifindex,
            lb_napi: 0,
            sink_napi: 0,
            lb_cpu,
            plan: plan.clone(),
            line,
        };
        bench.resolve_neighbours()?;
        bench.place_napi(gen_cpu, lb_cpu)?;
        if nft {
            bench.line.run_ok(Side::Lb, &["nft", "--version"])?;
        }
        Ok(bench)
    }

    /// The balancer forwards only to backends whose MAC the kernel knows.
    fn resolve_neighbours(&self) -> Result<()> {
        let addrs: BTreeSet<IpAddr> = backend_addrs().into_iter().collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let a = addrs.clone();
            in_ns(&self.line.path(Side::Lb), move || {
                neighbours::warm(&a);
                Ok(())
            })?;
            let table = self.line.run_ok(Side::Lb, &["ip", "neigh", "show"])?;
            let missing: Vec<_> = addrs
                .iter()
                .filter(|a| {
                    !table
                        .lines()
                        .any(|l| l.starts_with(&format!("{a} ")) && l.contains("lladdr"))
                })
                .collect();
            if missing.is_empty() {
                return self.pin_neighbours(&addrs);
            }
            ensure!(
                Instant::now() < deadline,
                "backends' neighbours not resolved after 10 s: {missing:?}\n{table}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Makes the resolved neighbour entries permanent. Under overload the
    /// generator keeps the LB's veth ring full, so the generator side's
    /// ARP/ND answers to the kernel's re-probes get dropped with the excess
    /// frames and the entries would fail (the balancer then drops as
    /// `no_neigh`, nftables stalls); a test bed with static neighbours
    /// measures forwarding, not ARP under loss.
    fn pin_neighbours(&self, addrs: &BTreeSet<IpAddr>) -> Result<()> {
        let mac = self
            .line
            .mac(Side::Gen)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let dev = self.line.ifname(Side::Lb);
        for a in addrs {
            self.line.run_ok(
                Side::Lb,
                &[
                    "ip",
                    "neigh",
                    "replace",
                    &a.to_string(),
                    "lladdr",
                    &mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ],
            )?;
        }
        Ok(())
    }

    /// Threaded NAPI on both veths; the LB's thread alone on `lb_cpu`, the
    /// sink's next to the generator.
    fn place_napi(&mut self, gen_cpu: usize, lb_cpu: usize) -> Result<()> {
        for side in [Side::Lb, Side::Gen] {
            self.line.set_threaded(side, true)?;
        }
        let one = |side: Side| -> Result<i32> {
            let t = self.line.napi_threads(side)?;
            ensure!(
                t.len() == 1,
                "expected one NAPI thread for {}, found {t:?}",
                self.line.ifname(side)
            );
            Ok(t[0])
        };
        self.lb_napi = one(Side::Lb)?;
        self.sink_napi = one(Side::Gen)?;
        pin_thread(self.lb_napi, lb_cpu)?;
        pin_thread(self.sink_napi, gen_cpu)?;
        if self.plan.rt {
            set_fifo(self.lb_napi, Some(RT_PRIORITY))?;
            set_fifo(self.sink_napi, Some(RT_PRIORITY))?;
        }
        Ok(())
    }

    fn select(&mut self, c: Candidate) -> Result<()> {
        match c {
            Candidate::Ceiling => {
                let p = self.dp.program("lb_bounce")?;
                self.slot.put(p)
            }
            Candidate::Ipip | Candidate::L2dsr => {
                let cfg = config::parse(
                    &lb_config(
                        self.line.ifname(Side::Lb),
                        c == Candidate::L2dsr,
                        self.plan.flow_table,
                    ),
                    "bench-l4.toml",
                )
                .map_err(|e| anyhow!("bench config: {e}"))?;
                self.reconciler.apply(&cfg, &mut self.dp)?;
                let p = self.dp.program("lb_balancer")?;
                self.slot.put(p)
            }
            Candidate::Nftables => {
                let p: &mut Xdp = self
                    .pass
                    .program_mut("lb_pass")
                    .context("lb_pass")?
                    .try_into()?;
                self.slot.put(p)
            }
        }
    }

    fn spec(&self, flows: u32, v6: bool, tcp: bool) -> FlowSpec {
        FlowSpec {
            tcp,
            flows,
            size: self.plan.size.max(if v6 && tcp { 80 } else { 64 }),
            src_mac: self.line.mac(Side::Gen),
            dst_mac: self.line.mac(Side::Lb),
            src: if v6 {
                IpAddr::V6(CLIENT_V6)
            } else {
                IpAddr::V4(CLIENT_V4)
            },
            dst: if v6 {
                IpAddr::V6(VIP_V6)
            } else {
                IpAddr::V4(VIP_V4)
            },
            dport: VIP_PORT,
            action: XDP_TX,
        }
    }

    /// Sends every flow once (so the flow table / conntrack hold them all),
    /// then loads for the warm-up time.
    fn prime(&mut self, flows: u32) -> Result<()> {
        self.generator.run(
            self.gen_ifindex,
            Limits {
                count: u64::from(flows),
                duration: Duration::from_mins(1),
                rate: None,
            },
        )?;
        self.generator.run(
            self.gen_ifindex,
            Limits {
                count: u64::MAX,
                duration: self.plan.warm,
                rate: None,
            },
        )?;
        Ok(())
    }

    /// Frames the XDP program on the LB's veth has received (veth's
    /// `rx_queue_0_xdp_packets`).
    fn lb_rx(&self) -> Result<u64> {
        let ifname = self.line.ifname(Side::Lb);
        let out = self.line.run_ok(Side::Lb, &["ethtool", "-S", ifname])?;
        out.lines()
            .filter_map(|l| l.trim().split_once(':'))
            .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_packets"))
            .map(|(_, v)| v.trim().parse::<u64>().context("ethtool -S value"))
            .sum::<Result<u64>>()
    }

    fn prog_stats(&mut self, name: Option<&str>) -> Result<Option<(u64, u64)>> {
        let Some(name) = name else { return Ok(None) };
        let info = self.dp.program(name)?.info()?;
        Ok(Some((
            info.run_count(),
            u64::try_from(info.run_time().as_nanos())?,
        )))
    }

    fn window(&mut self, stats_prog: Option<&str>, rate: Option<u64>) -> Result<Window> {
        let sink0 = self.generator.sink()?;
        let rx0 = self.lb_rx()?;
        let lb0 = thread_cpu_ns(self.lb_napi)?;
        let wake0 = thread_wakeups(self.lb_napi)?;
        let core0 = cpu_times(self.lb_cpu)?;
        let sk0 = thread_cpu_ns(self.sink_napi)?;
        let p0 = self.prog_stats(stats_prog)?;
        let t0 = self.dp.tenant_stats(self.tenant);
        let d0: u64 = self.dp.tenant_drops(self.tenant).by_reason.iter().sum();
        let start = Instant::now();
        let sent = self.generator.run(
            self.gen_ifindex,
            Limits {
                count: 50_000_000 * self.plan.window.as_secs().max(1),
                duration: self.plan.window,
                rate,
            },
        )?;
        // Let the rings drain before reading the counters.
        std::thread::sleep(Duration::from_millis(2));
        let wall = start.elapsed();
        let sink = self.generator.sink()?.since(&sink0);
        let lb_cpu_ns = thread_cpu_ns(self.lb_napi)? - lb0;
        let lb_wakeups = thread_wakeups(self.lb_napi)? - wake0;
        let core1 = cpu_times(self.lb_cpu)?;
        let sink_cpu_ns = thread_cpu_ns(self.sink_napi)? - sk0;
        let lb_rx = self.lb_rx()? - rx0;
        let p1 = self.prog_stats(stats_prog)?;
        let t1 = self.dp.tenant_stats(self.tenant);
        let d1: u64 = self.dp.tenant_drops(self.tenant).by_reason.iter().sum();
        Ok(Window {
            sent: sent.frames,
            sink,
            wall,
            lb_rx,
            lb_cpu_ns,
            lb_wakeups,
            sink_cpu_ns,
            lb_core_busy_ns: core1.0 - core0.0,
            lb_core_steal_ns: core1.1 - core0.1,
            gen_kernel_ns: sent.kernel_ns_per_frame,
            prog: p0.zip(p1).map(|(a, b)| (b.0 - a.0, b.1 - a.1)),
            new_flows: t1.new_flows - t0.new_flows,
            drops: d1 - d0,
        })
    }

    /// `rounds` windows. Unpaced: the one with the median forwarded rate.
    /// Paced (the rate is fixed, the cost is the figure): the one where the
    /// LB core spent the least per packet, the least disturbed by whatever
    /// else shares the machine (disturbance only ever adds).
    fn median_window(
        &mut self,
        c: Candidate,
        stats_prog: Option<&str>,
        rate: Option<u64>,
    ) -> Result<Window> {
        let mut ws = Vec::new();
        for _ in 0..self.plan.rounds {
            let w = self.window(stats_prog, rate)?;
            self.check_path(c, &w)?;
            ws.push(w);
        }
        if rate.is_some() {
            ws.sort_by(|a, b| lb_ns_per_packet(a).total_cmp(&lb_ns_per_packet(b)));
            return Ok(ws[0]);
        }
        ws.sort_by(|a, b| a.forwarded_pps().total_cmp(&b.forwarded_pps()));
        Ok(ws[ws.len() / 2])
    }

    /// Candidate `c` in the LB's place: the most it forwards with the
    /// generator unpaced, then (`paced`) its LB-core cost at that offered
    /// rate.
    fn forwarding(&mut self, c: Candidate, paced: Option<u64>) -> Result<(FlowSpec, Window)> {
        self.select(c)?;
        let _nft = if c == Candidate::Nftables {
            Some(self.install_nft()?)
        } else {
            None
        };
        let spec = self.spec(self.plan.pps_flows, false, false);
        self.generator.configure(&spec)?;
        self.prime(spec.flows)?;
        let w = self.median_window(c, None, paced)?;
        Ok((spec, w))
    }

    /// Proves the window measured the intended path: frames arrived, of the
    /// expected kind, and the balancer dropped nothing.
    fn check_path(&self, c: Candidate, w: &Window) -> Result<()> {
        ensure!(
            w.sink.packets > 0,
            "{}: nothing reached the backends (sent {}); balancer drops: {}",
            c.label(),
            w.sent,
            self.drop_summary()
        );
        let expected = if c.encapsulates() {
            w.sink.encapsulated
        } else {
            w.sink.plain
        };
        ensure!(
            expected * 100 >= w.sink.packets * 99,
            "{}: the backends got the wrong kind of frames: {:?}",
            c.label(),
            w.sink
        );
        if matches!(c, Candidate::Ipip | Candidate::L2dsr) {
            ensure!(
                w.drops == 0,
                "{}: the balancer dropped {} packets: {}",
                c.label(),
                w.drops,
                self.drop_summary()
            );
        }
        Ok(())
    }

    fn drop_summary(&self) -> String {
        let d = self.dp.tenant_drops(self.tenant);
        d.by_reason
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| format!("{}={n}", DropReason::ALL[i].name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn install_nft(&self) -> Result<NftTable> {
        let backends: Vec<String> = (0..BACKENDS)
            .map(|i| format!("{i} : {}", line_v4(100 + i)))
            .collect();
        let map = backends.join(", ");
        let rules = format!(
            "table ip {NFT_TABLE} {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tip daddr {VIP_V4} udp dport {VIP_PORT} dnat to numgen inc mod {BACKENDS} map {{ {map} }}\n\
             \t\tip daddr {VIP_V4} tcp dport {VIP_PORT} dnat to numgen inc mod {BACKENDS} map {{ {map} }}\n\
             \t}}\n\
             }}\n"
        );
        let file = std::env::temp_dir().join(format!("{}-nft.conf", self.line.prefix()));
        std::fs::write(&file, rules).context("writing the nftables rules")?;
        let table = NftTable {
            ns: self.line.ns(Side::Lb).to_owned(),
        };
        let r = self
            .line
            .run_ok(Side::Lb, &["nft", "-f", &file.display().to_string()]);
        let _ = std::fs::remove_file(&file);
        r.context("loading the nftables rules")?;
        Ok(table)
    }

    /// ns/packet inside the program under load (run-time stats on).
    fn ns_per_packet(
        &mut self,
        c: Candidate,
        flows: u32,
        v6: bool,
        tcp: bool,
    ) -> Result<NsPerPacket> {
        self.select(c)?;
        let spec = self.spec(flows, v6, tcp);
        self.generator.configure(&spec)?;
        let t0 = self.dp.tenant_stats(self.tenant);
        self.prime(flows)?;
        let primed = self.dp.tenant_stats(self.tenant).new_flows - t0.new_flows;
        let program = if c == Candidate::Ceiling {
            "lb_bounce"
        } else {
            "lb_balancer"
        };
        let w = self.median_window(c, Some(program), None)?;
        let (runs, ns) = w.prog.context("no run-time statistics")?;
        ensure!(runs > 0, "{program} did not run");
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let per = ns as f64 / runs as f64;
        Ok(NsPerPacket {
            program,
            mode: match c {
                Candidate::Ceiling => "xdp_tx",
                Candidate::L2dsr => "l2dsr",
                _ => "ipip",
            },
            packet: spec.label(),
            flows,
            ns: per,
            runs,
            new_flows_primed: primed,
            new_flows_in_window: w.new_flows,
            forwarded_pps: w.forwarded_pps(),
            lb_ns_per_packet: lb_ns_per_packet(&w),
        })
    }
}

/// LB-core time per packet the LB handled (whether or not the next ring
/// had room for it).
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn lb_ns_per_packet(w: &Window) -> f64 {
    w.lb_cpu_ns as f64 / w.lb_rx.max(1) as f64
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn load(w: &Window, offered: Option<u64>) -> Load {
    let wall_ns = w.wall.as_secs_f64() * 1e9;
    Load {
        offered_pps: offered.map(|r| r as f64),
        sent_pps: per_second(w.sent, w.wall),
        forwarded_pps: w.forwarded_pps(),
        lost_before_lb: 1.0 - w.lb_rx.min(w.sent) as f64 / w.sent.max(1) as f64,
        lost_after_lb: 1.0 - w.sink.packets.min(w.lb_rx) as f64 / w.lb_rx.max(1) as f64,
        lb_busy: w.lb_cpu_ns as f64 / wall_ns,
        lb_ns_per_packet: lb_ns_per_packet(w),
        lb_packets_per_wakeup: w.lb_rx as f64 / w.lb_wakeups.max(1) as f64,
        lb_core_other: w.lb_core_busy_ns.saturating_sub(w.lb_cpu_ns) as f64 / wall_ns,
        lb_core_steal: w.lb_core_steal_ns as f64 / wall_ns,
        sink_busy: w.sink_cpu_ns as f64 / wall_ns,
        gen_kernel_ns_per_frame: w.gen_kernel_ns,
        encapsulated: w.sink.encapsulated,
        plain: w.sink.plain,
        window_s: w.wall.as_secs_f64(),
    }
}

fn stats_sysctl() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[expect(
    clippy::too_many_lines,
    reason = "one linear benchmark script: set up, measure, report"
)]
fn bench(plan: &Plan) -> Result<Results> {
    ensure_nft()?;
    let machine = Machine::probe();
    println!(
        "bench l4 ({}): {} | kernel {} | {} cores",
        if plan.quick { "quick" } else { "full" },
        machine.cpu,
        machine.kernel,
        machine.cores
    );
    let bpf_stats_before = stats_sysctl();
    let mut b = Bench::start(plan, true)?;
    let candidates = [
        Candidate::Ceiling,
        Candidate::Ipip,
        Candidate::L2dsr,
        Candidate::Nftables,
    ];
    let mut fwd: Vec<Forwarded> = Vec::new();
    for c in candidates {
        let (spec, w) = b.forwarding(c, None)?;
        let max = load(&w, None);
        println!(
            "  {:<28} unpaced: forwarded {:>6.2} Mpps, LB core {:>3.0}% busy, {:>6.1} ns/packet on it",
            c.label(),
            max.forwarded_pps / 1e6,
            max.lb_busy * 100.0,
            max.lb_ns_per_packet
        );
        fwd.push(Forwarded {
            name: c.name(),
            label: c.label(),
            packet: spec.label(),
            frame_bytes: spec.size,
            flows: spec.flows,
            max,
            paced: None,
        });
    }
    // The LB-core cost at one offered rate below every XDP candidate's
    // maximum (nftables at a rate below its own): no candidate is
    // overloaded, so none pays for a full ring hammered by the generator.
    let slowest_xdp = fwd
        .iter()
        .filter(|f| f.name != Candidate::Nftables.name())
        .map(|f| f.max.forwarded_pps)
        .fold(f64::INFINITY, f64::min);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive packet rate"
    )]
    let rate_of = |pps: f64| (pps * PACED_SHARE).max(1000.0) as u64;
    for (f, c) in fwd.iter_mut().zip(candidates) {
        let rate = if c == Candidate::Nftables {
            rate_of(f.max.forwarded_pps)
        } else {
            rate_of(slowest_xdp)
        };
        let (_, w) = b.forwarding(c, Some(rate))?;
        let at = load(&w, Some(rate));
        println!(
            "  {:<28} paced at {:>5.2} Mpps: LB core {:>3.0}% busy, {:>6.1} ns/packet on it, {:.1}% lost before the LB",
            c.label(),
            at.forwarded_pps / 1e6,
            at.lb_busy * 100.0,
            at.lb_ns_per_packet,
            at.lost_before_lb * 100.0
        );
        f.paced = Some(at);
    }

    let stats =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time stats")?;
    let mut ns = Vec::new();
    // Flow counts in increasing order, the other cases at the packet-rate
    // flow count right after it: the flow table then holds the same
    // entries for all of them (the largest count comes last).
    let mut cases: Vec<(Candidate, u32, bool, bool)> = Vec::new();
    let mut counts = plan.flow_counts.clone();
    counts.sort_unstable();
    for f in counts {
        cases.push((Candidate::Ipip, f, false, false));
        if f == plan.pps_flows {
            cases.push((Candidate::L2dsr, f, false, false));
            cases.push((Candidate::Ceiling, f, false, false));
            if plan.variants {
                cases.push((Candidate::Ipip, f, true, false));
                cases.push((Candidate::Ipip, f, false, true));
                cases.push((Candidate::Ipip, f, true, true));
            }
        }
    }
    for (c, flows, v6, tcp) in cases {
        let n = b.ns_per_packet(c, flows, v6, tcp)?;
        println!(
            "  {:<12} {:<6} {:<9} {:>8} flows: {:>6.1} ns/packet in the program",
            n.program, n.mode, n.packet, n.flows, n.ns
        );
        ns.push(n);
    }
    drop(stats);
    let placement = report::Placement {
        generator_cpu: GEN_CPU,
        sink_cpu: GEN_CPU,
        lb_cpu: LB_CPU,
        rt_priority: plan.rt.then_some(RT_PRIORITY),
        bpf_stats_enabled_before: bpf_stats_before,
        generator: if b.generator.sends_from_userspace() {
            "an AF_PACKET socket"
        } else {
            report::GENERATOR_LIVE
        },
    };
    let line = b.line.prefix().to_owned();
    drop(b);
    let mut machine = machine;
    machine.finish();
    println!("  namespaces {line}-* removed");
    Ok(Results {
        quick: plan.quick,
        machine,
        placement,
        window_s: plan.window.as_secs_f64(),
        rounds: plan.rounds,
        forwarding: fwd,
        ns_per_packet: ns,
    })
}

/// nftables is the kernel peer; install it when missing.
fn ensure_nft() -> Result<()> {
    let found = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .any(|p| Path::new(p).exists());
    if found {
        return Ok(());
    }
    println!("==> installing nftables (apt-get), the kernel peer of the L4 bench");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "nftables"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if !install().is_ok_and(|s| s.success()) {
        let s = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .context("apt-get update")?;
        ensure!(s.success(), "apt-get update failed ({s})");
        let s = install().context("apt-get install nftables")?;
        ensure!(s.success(), "apt-get install nftables failed ({s})");
    }
    Ok(())
}

/// `bench_l4 gen`: the generator alone, into a sink on the peer veth.
fn gen_only(g: &GenArgs) -> Result<()> {
    let line = LineTopology::create()?;
    enter_netns_current_thread(&line.path(Side::Gen))?;
    let (gen_cpu, rx_cpu) = if cpus() > LB_CPU {
        (GEN_CPU, LB_CPU)
    } else {
        (0, 0)
    };
    pin_thread(0, gen_cpu)?;
    let mut generator = Generator::load()?;
    let peer_if = line.ifname(Side::Lb).to_owned();
    let sink = generator.program_mut("lb_gen_sink")?;
    in_ns(&line.path(Side::Lb), || {
        sink.attach(&peer_if, XdpMode::Default)
            .context("attaching the sink")?;
        Ok(())
    })?;
    line.set_threaded(Side::Lb, true)?;
    for t in line.napi_threads(Side::Lb)? {
        pin_thread(t, rx_cpu)?;
        set_fifo(t, Some(RT_PRIORITY))?;
    }
    let spec = FlowSpec {
        tcp: g.tcp,
        flows: g.flows,
        size: g.size,
        src_mac: line.mac(Side::Gen),
        dst_mac: line.mac(Side::Lb),
        src: if g.v6 {
            IpAddr::V6(CLIENT_V6)
        } else {
            IpAddr::V4(CLIENT_V4)
        },
        dst: if g.v6 {
            IpAddr::V6(VIP_V6)
        } else {
            IpAddr::V4(VIP_V4)
        },
        dport: VIP_PORT,
        action: XDP_TX,
    };
    generator.configure(&spec)?;
    let ifindex = if_index(line.ifname(Side::Gen))?;
    let xmit = || -> Result<(u64, u64)> {
        let out = line.run_ok(Side::Gen, &["ethtool", "-S", line.ifname(Side::Gen)])?;
        let get = |key: &str| {
            out.lines()
                .filter_map(|l| l.trim().split_once(':'))
                .filter(|(k, _)| k.starts_with("tx_queue_") && k.ends_with(key))
                .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
                .sum::<u64>()
        };
        Ok((get("_xdp_xmit"), get("_xdp_xmit_errors")))
    };
    let xmit0 = xmit()?;
    let before = generator.sink()?;
    let sent = generator.run(
        ifindex,
        Limits {
            count: g.count,
            duration: g.duration,
            rate: g.rate,
        },
    )?;
    std::thread::sleep(Duration::from_millis(20));
    let got = generator.sink()?.since(&before);
    let xmit1 = xmit()?;
    println!(
        "sent {} {} frames of {} bytes over {} flows in {:.3} s: {:.3} Mpps ({:.1} ns per frame in the kernel)",
        sent.frames,
        spec.label(),
        spec.size,
        spec.flows,
        sent.elapsed.as_secs_f64(),
        sent.pps() / 1e6,
        sent.kernel_ns_per_frame
    );
    let (_, skipped) = generator.state()?;
    if g.rate.is_some() {
        println!("pacing dropped {skipped} frames whose slot was too far away");
    }
    println!(
        "the veth took {} of them into the peer's ring and refused {} (ring full); \
         the sink on the peer counted {} ({} bytes)",
        xmit1.0 - xmit0.0,
        xmit1.1 - xmit0.1,
        got.packets,
        got.bytes
    );
    drop(generator);
    line.destroy()
}
