//! `cargo xtask bench xdp`: nanoseconds per packet of the balancer under
//! `BPF_PROG_TEST_RUN`, next to a trivial `XDP_DROP` program measured in the
//! same run, printed as ratios to that floor.
//!
//! `repeat` reruns the program on one buffer without restoring it, so the
//! balancer is measured through `lb_bench`, which puts the template frame
//! back after each run; `lb_bench_null` (restore only) calibrates that:
//! balancer ≈ `lb_bench` − `lb_bench_null` + floor. The next hop is seeded in
//! the cache, as on a node where it was resolved within the last second.
//! Every run's action is checked, so a figure never comes from a wrong path.

#[path = "../tests/common/mod.rs"]
#[allow(
    dead_code,
    reason = "shared with the end-to-end tests, which use all of it"
)]
mod common;

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use aya::{
    maps::Array,
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb::{
    config,
    dataplane::{Dataplane, LoadOptions},
    reconcile::Reconciler,
};
use lb_common::{BENCH_FRAME_LEN, BenchTemplate, DEFAULT_FLOW_TABLE_ENTRIES, MAP_BENCH};
use lb_tests::{
    netns::TopologySpec,
    servers::{Proto, spread},
};

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;

struct Args {
    repeat: u32,
    rounds: usize,
    /// TCP connections through the namespace topology for the live figure.
    connections: usize,
    out: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        repeat: 1_000_000,
        rounds: 5,
        connections: 3000,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => {
                a.repeat = 20_000;
                a.rounds = 3;
                a.connections = 200;
            }
            "--repeat" => a.repeat = it.next().and_then(|v| v.parse().ok()).expect("--repeat N"),
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--out" => a.out = it.next().map(PathBuf::from),
            other => {
                panic!("unknown argument {other}; use --quick, --repeat N, --rounds N, --out FILE")
            }
        }
    }
    a
}

fn frame(syn: bool) -> [u8; BENCH_FRAME_LEN] {
    let mut pkt = Vec::new();
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 51, 100, 7], [203, 0, 113, 10], 64)
        .tcp(40000, 80, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    b.write(&mut pkt, &[]).expect("building the packet");
    let mut f = [0u8; BENCH_FRAME_LEN];
    f[..pkt.len()].copy_from_slice(&pkt);
    f
}

/// Median nanoseconds per run of `prog` over `rounds` runs of `repeat`.
fn measure(prog: &Xdp, frame: &[u8], repeat: u32, rounds: usize, expect: u32, what: &str) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat,
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("{what}: test run failed: {e}"));
            assert_eq!(r.return_value, expect, "{what}: unexpected XDP action");
            duration_ns(r.duration)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn duration_ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn set_template(dp: &mut Dataplane, frame: [u8; BENCH_FRAME_LEN], vary_sport: bool) {
    let ebpf = dp.ebpf_mut().expect("loaded object");
    let mut map: Array<_, BenchTemplate> = ebpf
        .map_mut(MAP_BENCH)
        .expect("LB_BENCH map")
        .try_into()
        .expect("LB_BENCH is an array");
    map.set(
        0,
        BenchTemplate {
            frame,
            vary_sport: u32::from(vary_sport),
            counter: 0,
        },
        0,
    )
    .expect("writing the template");
}

#[expect(
    clippy::too_many_lines,
    reason = "one linear benchmark script: set up, measure, report"
)]
fn main() {
    let args = args();
    let cfg = config::parse(
        r#"
[node]
interface = "eth0"
[[tenant]]
name = "bench"
[[tenant.pool]]
name = "web"
backends = [{ address = "10.0.1.11" }, { address = "10.0.1.12" }, { address = "10.0.1.13" }]
[[tenant.l4]]
vip = "203.0.113.10"
port = 80
protocol = "tcp"
pool = "web"
"#,
        "bench.toml",
    )
    .expect("bench config");
    let mut dp = Dataplane::load(&LoadOptions::default()).expect("loading the balancer");
    Reconciler::new()
        .apply(&cfg, &mut dp)
        .expect("programming the maps");
    common::seed_nexthops(&mut dp, 0..3);
    for p in ["lb_drop", "lb_bench", "lb_bench_null"] {
        dp.program(p).expect("loading a program");
    }

    let ack = frame(false);
    let syn = frame(true);
    let (r, n) = (args.repeat, args.rounds);

    set_template(&mut dp, ack, false);
    let floor = measure(
        dp.program("lb_drop").expect("prog"),
        &ack,
        r,
        n,
        XDP_DROP,
        "XDP_DROP floor",
    );
    let null = measure(
        dp.program("lb_bench_null").expect("prog"),
        &ack,
        r,
        n,
        XDP_TX,
        "restore only",
    );
    let est = measure(
        dp.program("lb_bench").expect("prog"),
        &ack,
        r,
        n,
        XDP_TX,
        "established flow",
    );
    let flows_before = dp.flows().len();
    set_template(&mut dp, syn, true);
    // New flows while the table has room: all rounds together stay under
    // half of its capacity, so no insert has to evict.
    let room_repeat = r.min(DEFAULT_FLOW_TABLE_ENTRIES / 2 / u32::try_from(n).unwrap_or(1));
    let new = measure(
        dp.program("lb_bench").expect("prog"),
        &syn,
        room_repeat,
        n,
        XDP_TX,
        "new flow (SYN)",
    );
    let inserted = dp.flows().len() - flows_before;
    assert!(
        inserted > 1000,
        "the SYN runs should insert new flows, inserted {inserted}"
    );
    // New flows into a full table: every insert evicts the least recently
    // used entry (a SYN flood's cost).
    let full = measure(
        dp.program("lb_bench").expect("prog"),
        &syn,
        (DEFAULT_FLOW_TABLE_ENTRIES / 2).max(room_repeat),
        n,
        XDP_TX,
        "new flow into a full table (SYN)",
    );

    let est_net = est - null + floor;
    let new_net = new - null + floor;
    let full_net = full - null + floor;
    println!("bench xdp: BPF_PROG_TEST_RUN, repeat {r}, median of {n} rounds, IPv4 TCP, ipip");
    println!("{:<34} {:>10} {:>12}", "program", "ns/packet", "x XDP_DROP");
    println!("{:<34} {floor:>10.1} {:>12.2}", "XDP_DROP (floor)", 1.0);
    println!("{:<34} {null:>10.1} {:>12}", "restore wrapper only", "-");
    println!(
        "{:<34} {est_net:>10.1} {:>12.2}",
        "balancer, established flow",
        est_net / floor
    );
    println!(
        "{:<34} {new_net:>10.1} {:>12.2}",
        "balancer, new flow (SYN + insert)",
        new_net / floor
    );
    println!(
        "{:<34} {full_net:>10.1} {:>12.2}",
        "  ... into a full table (eviction)",
        full_net / floor
    );
    println!("reference (Katran on this machine kind): established 6.1x, SYN 13.5x");
    let (live_ns, live_packets) = live(args.connections);
    println!(
        "{:<34} {live_ns:>10.1} {:>12}   ({live_packets} packets of {} TCP connections, kernel.bpf_stats)",
        "balancer under live traffic", "-", args.connections
    );
    let json = format!(
        "{{\"bench\":\"xdp\",\"repeat\":{r},\"rounds\":{n},\"floor_ns\":{floor:.2},\"restore_ns\":{null:.2},\
         \"established_ns\":{est_net:.2},\"new_flow_ns\":{new_net:.2},\"established_ratio\":{:.3},\
         \"new_flow_ratio\":{:.3},\"new_flow_full_table_ns\":{full_net:.2},\"flows_inserted\":{inserted},\"live_ns\":{live_ns:.2},\
         \"live_packets\":{live_packets}}}",
        est_net / floor,
        new_net / floor
    );
    if let Some(out) = args.out {
        fs::write(&out, format!("{json}\n"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
        println!("results written to {}", out.display());
    }
}

/// The balancer's own cost per packet under live traffic: real TCP
/// connections through the namespace topology, measured by the kernel
/// (`BPF_ENABLE_STATS`, the same counters as `kernel.bpf_stats_enabled`).
fn live(connections: usize) -> (f64, u64) {
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
    let mut h = common::Harness::start(
        &TopologySpec::new().with_clients(1).with_tenant("a", 3),
        &[IpAddr::V4(VIP)],
        &[(Proto::Tcp, "0.0.0.0:80".parse().expect("addr"))],
        &|topo| {
            format!(
                "[node]\ninterface = \"eth0\"\n[[tenant]]\nname = \"bench\"\n[[tenant.pool]]\nname = \"web\"\n\
                 backends = [{}]\n[[tenant.l4]]\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n",
                common::pool_entries(topo, &["a1", "a2", "a3"], false)
            )
        },
    );
    let _stats =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enabling BPF run-time stats");
    let prog = h.dp.program("lb_balancer").expect("balancer");
    let before = prog.info().expect("program info");
    let counts = spread(
        &h.topo.client_path(0),
        SocketAddr::new(VIP.into(), 80),
        connections,
        Proto::Tcp,
    )
    .expect("live traffic");
    assert_eq!(counts.values().sum::<usize>(), connections, "{counts:?}");
    let after =
        h.dp.program("lb_balancer")
            .expect("balancer")
            .info()
            .expect("program info");
    let packets = after.run_count() - before.run_count();
    let ns = after
        .run_time()
        .saturating_sub(before.run_time())
        .as_nanos();
    #[expect(
        clippy::cast_precision_loss,
        reason = "nanosecond totals are far below 2^52"
    )]
    let per_packet = ns as f64 / packets.max(1) as f64;
    (per_packet, packets)
}
