//! The L4 half: tenant B's short TCP exchanges through its XDP VIP, alone
//! and while tenant A's VIP takes a packet flood from the live-frames
//! generator far above A's `[tenant.limits]`.
//!
//! ```text
//!   c1: B's client ------\
//!                         bridge --- eth0 \
//!   b1, b2: B's backends -/                 lb: the balancer (XDP) on both
//!   (decap, name servers)           l<id> /
//!                                     |  veth
//!   gen: lb_gen (A's flood), and A's backend (lb_gen_sink counts, drops)
//! ```
//!
//! B's side is the end-to-end tests' harness (`tests/tests/common`: the
//! bridge topology, backends with the decapsulation program, the name
//! servers of `lb_tests::servers`, the balancer attached to the LB's
//! `eth0`). A's side is the L4 bench's line and generator
//! (`lb_tests::netns::LineTopology`, `l4/loadgen.rs`): a second veth into
//! the same LB namespace, with the same balancer attached, so the flood
//! reaches XDP as frames from a NIC would, not as skbs from a bridge (they
//! cost the LB core about four times as much per packet here, and measure the
//! bridge). A's pool is an address of the generator's namespace, where
//! `lb_gen_sink` counts what XDP admitted.
//!
//! Placement (2 cores), as in the L4 bench: both of the LB's NAPI threads
//! (where XDP runs, one per interface) on CPU 1 with `SCHED_FIFO`: the LB
//! core. The rest of the world on CPU 0: B's client and backends, A's
//! sink's NAPI thread, and A's generator with `SCHED_IDLE`, so it only
//! ever takes what the others leave (on a real network they are other
//! machines).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::programs::XdpMode;
use lb::{dataplane::AttachMode, neighbours};
use lb_common::{DropCounters, DropReason, TrafficCounters};
use lb_tests::{
    netns::{
        LineTopology, Side, TopologySpec, enter_netns_current_thread, line_v4, napi_threads,
        pin_thread, run_in_netns, set_fifo, thread_cpu_ns, vip_v4, write_sysctls,
    },
    servers::Proto,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{
    Plan, Stop,
    cpu::{CoreTicks, core_ticks},
    harness::Harness,
    load::{Gen, on_gen},
    loadgen::{FlowSpec, Generator, Limits, XDP_TX, per_second},
    paced::{self, Exchange, Pace},
    report::{Compared, L4Flood, L4Result, PhaseRun},
    run_queue_wait_ns, set_idle,
};

/// Everything but the LB: B's client and backends, the generator.
pub const WORLD_CPU: usize = 0;
/// The LB's NAPI threads.
pub const LB_CPU: usize = 1;
/// `SCHED_FIFO` priority of the LB's NAPI threads (as in the L4 bench).
const RT_PRIORITY: i32 = 50;
const VIP_A: Ipv4Addr = vip_v4(1);
const VIP_B: Ipv4Addr = vip_v4(2);
const PORT: u16 = 80;
/// A's backend: an address of the generator's namespace.
const A_BACKEND: Ipv4Addr = line_v4(100);
/// Source address of the flood's first flow (flows beyond 50,000 use the
/// next addresses): nobody answers it.
const FLOOD_SRC: Ipv4Addr = Ipv4Addr::new(10, 78, 64, 1);
/// Connect, greeting, echo: each step of one exchange.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The generator runs this much longer than B's window.
const FLOOD_TAIL: Duration = Duration::from_millis(300);

/// B's client: one TCP exchange per token through B's VIP.
struct TcpExchange {
    target: SocketAddr,
    backends: Arc<BTreeSet<String>>,
}

impl Exchange for TcpExchange {
    /// Connect, read the backend's name line, send a line, read its echo,
    /// close: `200` when every step worked and a backend of B answered.
    async fn once(&mut self) -> Result<u16> {
        let io = async {
            let mut s = TcpStream::connect(self.target).await.context("connect")?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; 128];
            let mut n = 0;
            while !buf[..n].contains(&b'\n') {
                ensure!(n < buf.len(), "no name line in {n} bytes");
                let k = s.read(&mut buf[n..]).await.context("reading the name")?;
                ensure!(k > 0, "closed before the name line");
                n += k;
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let name = line.split('\n').next().unwrap_or("").trim();
            ensure!(
                self.backends.contains(name),
                "answered by {name:?}, not one of B's backends"
            );
            s.write_all(b"ping\n").await.context("writing")?;
            let mut echo = [0u8; 5];
            s.read_exact(&mut echo).await.context("reading the echo")?;
            ensure!(&echo == b"ping\n", "echo {echo:?}");
            Ok(200)
        };
        tokio::time::timeout(IO_TIMEOUT, io)
            .await
            .map_err(|_| anyhow!("an exchange step took over {IO_TIMEOUT:?}"))?
    }
}

/// Counters read at the edges of B's window.
#[derive(Clone, Copy)]
struct Snap {
    at: Instant,
    cores: [CoreTicks; 2],
    lb_cpu_ns: u64,
    lb_wait_ns: u64,
    a: TrafficCounters,
    a_drops: DropCounters,
    b_drops: DropCounters,
}

/// B's topology with the balancer, A's line and generator. Field order is
/// drop order: the generator (and its sink) first, then A's line (its
/// namespace and veth pair), then the harness (the balancer, B's servers,
/// the namespaces).
pub struct L4 {
    generator: Generator,
    line: LineTopology,
    h: Harness,
    plan: Plan,
    spec: FlowSpec,
    /// The LB's NAPI threads: `eth0` (B) and the line's end (A).
    lb_napi: [i32; 2],
    alpha: u32,
    beta: u32,
}

fn config(topo: &lb_tests::netns::Topology, plan: &Plan) -> String {
    let b: Vec<String> = ["b1", "b2"]
        .iter()
        .map(|n| format!("{{ address = \"{}\" }}", topo.backend(n).v4))
        .collect();
    format!(
        "[node]\ninterface = \"eth0\"\n\
         [[tenant]]\nname = \"alpha\"\n\
         [tenant.limits]\npackets_per_second = {pps}\nnew_flows_per_second = {flows}\n\
         [[tenant.pool]]\nname = \"flood\"\nbackends = [{{ address = \"{A_BACKEND}\" }}]\n\
         [[tenant.l4]]\nvip = \"{VIP_A}\"\nport = {PORT}\nprotocol = \"tcp\"\npool = \"flood\"\n\
         [[tenant]]\nname = \"beta\"\n\
         [[tenant.pool]]\nname = \"web\"\nbackends = [{b}]\n\
         [[tenant.l4]]\nvip = \"{VIP_B}\"\nport = {PORT}\nprotocol = \"tcp\"\npool = \"web\"\n",
        pps = plan.l4_a_pps_limit,
        flows = plan.l4_a_new_flows_limit,
        b = b.join(", "),
    )
}

/// Runs `f` on a new thread in the namespace at `path`, borrowing freely.
fn in_ns<T: Send>(path: &std::path::Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns_current_thread(path)?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in {} panicked", path.display()))?
    })
}

impl L4 {
    /// Builds both sides (this thread must already be on [`WORLD_CPU`]:
    /// the name servers' threads inherit its CPU), loads and attaches
    /// everything, and places the NAPI threads.
    pub fn start(plan: &Plan) -> Result<L4> {
        let mut h = Harness::start(
            &TopologySpec::new().with_clients(1).with_tenant("b", 2),
            &[IpAddr::V4(VIP_B)],
            &[(
                Proto::Tcp,
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT),
            )],
            &|topo| config(topo, plan),
        );
        let ids = h.reconciler.ids();
        let alpha = ids.tenant("alpha").context("tenant id of alpha")?;
        let beta = ids.tenant("beta").context("tenant id of beta")?;
        write_sysctls(
            &h.topo.client_path(0),
            &[
                ("net.ipv4.ip_local_port_range", "10000 65000"),
                ("net.ipv4.tcp_tw_reuse", "1"),
            ],
        )?;

        let line = LineTopology::create_into(h.topo.lb_ns()).context("A's line")?;
        line.add_addresses(Side::Gen, &[IpAddr::V4(A_BACKEND)])?;
        let lb_if = line.ifname(Side::Lb).to_owned();
        let dp = &mut h.dp;
        in_ns(&line.path(Side::Lb), || {
            dp.attach(&lb_if, AttachMode::Auto)
                .with_context(|| format!("attaching the balancer to {lb_if}"))
        })?;
        let mut generator = Generator::load()?;
        let gen_if = line.ifname(Side::Gen).to_owned();
        let sink = generator.program_mut("lb_gen_sink")?;
        in_ns(&line.path(Side::Gen), || {
            sink.attach(&gen_if, XdpMode::Default)
                .context("attaching the sink")?;
            Ok(())
        })?;
        let spec = FlowSpec {
            tcp: true,
            flows: plan.l4_flood_flows,
            size: 64,
            src_mac: line.mac(Side::Gen),
            dst_mac: line.mac(Side::Lb),
            src: IpAddr::V4(FLOOD_SRC),
            dst: IpAddr::V4(VIP_A),
            dport: PORT,
            action: XDP_TX,
        };
        generator.configure(&spec)?;

        let mut l4 = L4 {
            generator,
            line,
            h,
            plan: plan.clone(),
            spec,
            lb_napi: [0; 2],
            alpha,
            beta,
        };
        l4.pin_neighbours()?;
        l4.place_napi()?;
        Ok(l4)
    }

    /// Resolves the LB's neighbours (B's backends, A's backend) and makes
    /// them permanent, as the L4 bench does: an ARP answer lost in a full
    /// ring would make an entry fail, and the balancer then drops as
    /// `no_neigh`; the bench measures the balancer, not ARP under loss.
    fn pin_neighbours(&self) -> Result<()> {
        let topo = &self.h.topo;
        let mut addrs: BTreeSet<IpAddr> = ["b1", "b2"]
            .iter()
            .map(|n| IpAddr::V4(topo.backend(n).v4))
            .collect();
        addrs.insert(IpAddr::V4(A_BACKEND));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let a = addrs.clone();
            run_in_netns(&topo.lb_path(), move || neighbours::warm(&a))?;
            let table = topo.run_ok(topo.lb_ns(), &["ip", "-4", "neigh", "show"])?;
            // "10.77.0.100 dev eth0 lladdr 02:.. REACHABLE"
            let resolved: Vec<(IpAddr, String, String)> = addrs
                .iter()
                .filter_map(|a| {
                    let line = table.lines().find(|l| l.starts_with(&format!("{a} ")))?;
                    let w: Vec<&str> = line.split_whitespace().collect();
                    let dev = w.iter().position(|x| *x == "dev")?;
                    let mac = w.iter().position(|x| *x == "lladdr")?;
                    Some((
                        *a,
                        (*w.get(dev + 1)?).to_owned(),
                        (*w.get(mac + 1)?).to_owned(),
                    ))
                })
                .collect();
            if resolved.len() == addrs.len() {
                for (a, dev, mac) in resolved {
                    topo.run_ok(
                        topo.lb_ns(),
                        &[
                            "ip",
                            "neigh",
                            "replace",
                            &a.to_string(),
                            "lladdr",
                            &mac,
                            "dev",
                            &dev,
                            "nud",
                            "permanent",
                        ],
                    )?;
                }
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the LB's neighbours not resolved after 10 s:\n{table}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Threaded NAPI on the LB's two interfaces (their threads on
    /// [`LB_CPU`] with `SCHED_FIFO`) and on the generator's end (the sink,
    /// on [`WORLD_CPU`]).
    fn place_napi(&mut self) -> Result<()> {
        let topo = &self.h.topo;
        // Every bridge topology's LB interface is called eth0: the LB's
        // thread is the one that appears.
        let before = napi_threads("eth0")?;
        topo.run_ok(
            topo.lb_ns(),
            &["sh", "-c", "echo 1 > /sys/class/net/eth0/threaded"],
        )?;
        let new: Vec<i32> = napi_threads("eth0")?
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect();
        let one = |t: Vec<i32>, what: &str| -> Result<i32> {
            ensure!(
                t.len() == 1,
                "expected one NAPI thread for {what}, found {t:?}"
            );
            Ok(t[0])
        };
        let eth0 = one(new, "the LB's eth0")?;
        for side in [Side::Lb, Side::Gen] {
            self.line.set_threaded(side, true)?;
        }
        let flood = one(
            self.line.napi_threads(Side::Lb)?,
            "the LB's end of A's line",
        )?;
        let sink = one(self.line.napi_threads(Side::Gen)?, "the generator's end")?;
        for t in [eth0, flood] {
            pin_thread(t, LB_CPU)?;
            set_fifo(t, Some(RT_PRIORITY))?;
        }
        // The sink keeps its normal policy: starved behind the generator,
        // its ring would overflow and A's admitted frames never count.
        pin_thread(sink, WORLD_CPU)?;
        self.lb_napi = [eth0, flood];
        Ok(())
    }

    /// One window of B's exchanges, with A's flood (`flood`) or without:
    /// B's tally with the LB core's figures over B's window, and what
    /// happened to A's flood.
    #[expect(
        clippy::too_many_lines,
        reason = "one window: start both loads, read the counters at its edges, sum up"
    )]
    fn phase(&mut self, flood: bool, stop: &Stop) -> Result<(PhaseRun, Option<L4Flood>)> {
        stop.check()?;
        let plan = self.plan.clone();
        let pace = Pace {
            rate: plan.l4_b_rate,
            duration: plan.warm + plan.window,
            measure_from: plan.warm,
        };
        let topo = &self.h.topo;
        let b_client = Gen {
            ns: topo.client_ns(0).to_owned(),
            ns_path: topo.client_path(0),
            cpu: WORLD_CPU,
            target: SocketAddr::new(IpAddr::V4(VIP_B), PORT),
        };
        let backends: Arc<BTreeSet<String>> =
            Arc::new(["b1", "b2"].iter().map(|s| (*s).to_owned()).collect());
        let gen_ns = self.line.path(Side::Gen);
        let gen_if = self.line.ifname(Side::Gen).to_owned();
        let sink0 = self.generator.sink()?;
        let flood_for = plan.warm + plan.window + FLOOD_TAIL;
        let (generator, h, lb_napi, alpha, beta) = (
            &mut self.generator,
            &self.h,
            self.lb_napi,
            self.alpha,
            self.beta,
        );
        let snap = || -> Result<Snap> {
            let dp = &h.dp;
            Ok(Snap {
                at: Instant::now(),
                cores: [core_ticks(0), core_ticks(1)],
                lb_cpu_ns: thread_cpu_ns(lb_napi[0])? + thread_cpu_ns(lb_napi[1])?,
                lb_wait_ns: run_queue_wait_ns(&[], &lb_napi),
                a: dp.tenant_stats(alpha),
                a_drops: dp.tenant_drops(alpha),
                b_drops: dp.tenant_drops(beta),
            })
        };
        let (tally, s0, s1, sent) = std::thread::scope(|s| -> Result<_> {
            let gen_thread = flood.then(|| {
                s.spawn(|| -> Result<_> {
                    enter_netns_current_thread(&gen_ns)?;
                    pin_thread(0, WORLD_CPU)?;
                    set_idle(0)?;
                    let ifindex = if_index(&gen_if)?;
                    generator.run(
                        ifindex,
                        Limits {
                            count: plan.l4_flood_pps.saturating_mul(flood_for.as_secs() + 1),
                            duration: flood_for,
                            rate: Some(plan.l4_flood_pps),
                        },
                    )
                })
            });
            let b_thread = s.spawn(|| {
                on_gen(&b_client, || async {
                    let workers = (0..plan.l4_b_workers)
                        .map(|_| TcpExchange {
                            target: b_client.target,
                            backends: backends.clone(),
                        })
                        .collect();
                    Ok(paced::run(workers, pace).await)
                })
            });
            std::thread::sleep(plan.warm);
            let s0 = snap();
            std::thread::sleep(plan.window);
            let s1 = snap();
            let tally = b_thread
                .join()
                .map_err(|_| anyhow!("B's client panicked"))?;
            let sent = match gen_thread {
                Some(t) => Some(t.join().map_err(|_| anyhow!("the generator panicked"))??),
                None => None,
            };
            Ok((tally?, s0?, s1?, sent))
        })?;
        // Let the rings drain before reading the sink.
        std::thread::sleep(Duration::from_millis(20));
        let sink = self.generator.sink()?.since(&sink0);
        let wall = s1.at.duration_since(s0.at);
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds far below 2^52")]
        let lb_busy = (s1.lb_cpu_ns - s0.lb_cpu_ns) as f64 / wall.as_nanos().max(1) as f64;
        let b_drops: u64 = (0..DropReason::COUNT)
            .map(|i| s1.b_drops.by_reason[i] - s0.b_drops.by_reason[i])
            .sum();
        let a = sent.map(|sent| {
            let drops: Vec<(&'static str, f64)> = (0..DropReason::COUNT)
                .filter_map(|i| {
                    let n = s1.a_drops.by_reason[i] - s0.a_drops.by_reason[i];
                    (n > 0).then(|| (DropReason::ALL[i].name(), per_second(n, wall)))
                })
                .collect();
            let dropped: u64 = (0..DropReason::COUNT)
                .map(|i| s1.a_drops.by_reason[i] - s0.a_drops.by_reason[i])
                .sum();
            let admitted = s1.a.packets - s0.a.packets;
            L4Flood {
                offered_pps: plan.l4_flood_pps,
                flows: self.spec.flows,
                frame_bytes: self.spec.size,
                pps_limit: plan.l4_a_pps_limit,
                new_flows_limit: plan.l4_a_new_flows_limit,
                sent_pps: sent.pps(),
                seen_pps: per_second(admitted + dropped, wall),
                admitted_pps: per_second(admitted, wall),
                new_flows_per_s: per_second(s1.a.new_flows - s0.a.new_flows, wall),
                reached_backend_pps: per_second(sink.encapsulated, sent.elapsed),
                drops_per_s: drops,
                b_xdp_drops: b_drops,
            }
        });
        if let Some(a) = &a {
            ensure!(
                sink.plain == 0,
                "A's admitted packets reached its backend unencapsulated: {sink:?}"
            );
            ensure!(a.admitted_pps > 0.0, "XDP admitted nothing of A's flood");
        }
        if b_drops > 0 {
            eprintln!(
                "bench isolation: XDP dropped {b_drops} of B's packets ({})",
                self.drop_summary(self.beta)
            );
        }
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds far below 2^52")]
        let wait = (s1.lb_wait_ns - s0.lb_wait_ns) as f64 / wall.as_nanos().max(1) as f64;
        let run = PhaseRun {
            tally,
            busy: lb_busy,
            wait,
            cores: [
                s1.cores[0].busy_since(&s0.cores[0]),
                s1.cores[1].busy_since(&s0.cores[1]),
            ],
        };
        Ok((run, a))
    }

    fn drop_summary(&self, tenant: u32) -> String {
        let d = self.h.dp.tenant_drops(tenant);
        d.by_reason
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| format!("{}={n}", DropReason::ALL[i].name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `plan.rounds` pairs of windows (baseline and flood, alternating
    /// which goes first), pooled per phase.
    pub fn run(&mut self, stop: &Stop) -> Result<L4Result> {
        let mut rounds = Vec::new();
        let mut floods = Vec::new();
        for r in 0..self.plan.rounds {
            let mut base = None;
            let mut fl = None;
            let order = if r % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for flood in order {
                let (run, a) = self.phase(flood, stop)?;
                let p = run.phase();
                println!(
                    "  L4 round {} {:<9} B: {:>6.0} exchanges/s  p50 {:>6.3} ms  p99 {:>7.3} ms  errors {}  LB core {:>3.0}% busy (waited {:.1} ms/s){}",
                    r + 1,
                    if flood { "flood" } else { "baseline" },
                    p.per_s(),
                    p.p50_ms,
                    p.p99_ms,
                    p.errors,
                    run.busy * 100.0,
                    run.wait * 1000.0,
                    a.as_ref().map_or_else(String::new, |a| format!(
                        "  A: sent {:.2} Mpps, XDP saw {:.2} Mpps, admitted {:.0}/s",
                        a.sent_pps / 1e6,
                        a.seen_pps / 1e6,
                        a.admitted_pps
                    ))
                );
                if let Some(e) = &run.tally.first_error {
                    println!("    first error of B: {e}");
                }
                if flood {
                    fl = Some(run);
                    floods.extend(a);
                } else {
                    base = Some(run);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            let (Some(base), Some(fl)) = (base, fl) else {
                bail!("a round without both windows");
            };
            rounds.push((base, fl));
        }
        let b = Compared::from_rounds(&rounds);
        Ok(L4Result {
            b_rate: self.plan.l4_b_rate,
            b_workers: self.plan.l4_b_workers,
            b,
            a: L4Flood::mean(&floods).context("no flood window")?,
        })
    }

    /// The namespaces' prefixes (for the "removed" line).
    pub fn prefix(&self) -> String {
        format!("{}-*, {}", self.h.topo.prefix(), self.line.prefix())
    }
}

fn if_index(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(idx != 0, "no interface {name} in this namespace");
    Ok(idx)
}
