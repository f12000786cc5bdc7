//! `cargo xtask bench control`: the control plane's costs, measured in one
//! process against the real maps (loaded, not attached):
//!
//! - Maglev build time for M = 65537 and M = 655373 with 1,000 backends;
//! - ring write time (one pool's ring into the memory-mapped arena and the
//!   pool entry swapped);
//! - applying a configuration of N tenants (one VIP, one pool of four
//!   backends, `ring_size = 1021` each; N = 10,000 by default) from empty
//!   maps, and re-applying it with one tenant changed (what a reload costs),
//!   with the process's peak resident memory;
//! - health failure to removal: a backend whose port closes, checked every
//!   `interval` with `fall = 3`, until its ring no longer names it.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    time::{Duration, Instant},
};

use lb::{
    config::{self, HealthCheck, HealthKind},
    dataplane::{Dataplane, LoadOptions},
    health::{self, BackendRef, Checker, Health},
    maglev::{self, RingBackend},
    reconcile::Reconciler,
};

struct Args {
    tenants: usize,
    out: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        tenants: 10_000,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.tenants = 200,
            "--tenants" => a.tenants = it.next().and_then(|v| v.parse().ok()).expect("--tenants N"),
            "--out" => a.out = it.next().map(PathBuf::from),
            other => panic!("unknown argument {other}; use --quick, --tenants N, --out FILE"),
        }
    }
    a
}

/// Peak resident set of this process (`VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn maglev_ms(m: u32, n: u32) -> f64 {
    let keys: Vec<[u8; 6]> = (0..n)
        .map(|i| {
            let mut key = [10, 0, 0, 0, 0, 0];
            key[1..5].copy_from_slice(&i.to_be_bytes());
            key
        })
        .collect();
    let backends: Vec<RingBackend<'_>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| RingBackend {
            id: u32::try_from(i).expect("small"),
            key: k,
            weight: 1,
        })
        .collect();
    let start = Instant::now();
    let ring = maglev::build(&backends, m, 0).expect("maglev");
    let t = start.elapsed();
    assert_eq!(ring.len(), m as usize);
    ms(t)
}

fn tenants_config(n: usize, changed: bool) -> String {
    let mut s = String::from("[node]\ninterface = \"eth0\"\n");
    for t in 0..n {
        let [_, _, hi, lo] = u32::try_from(t).expect("small").to_be_bytes();
        let port = if changed && t == 0 { 8080 } else { 80 };
        let _ = write!(
            s,
            "[[tenant]]\nname = \"t{t}\"\n[[tenant.pool]]\nname = \"web\"\nring_size = 1021\nbackends = [\
             {{ address = \"10.{hi}.{lo}.1\" }}, {{ address = \"10.{hi}.{lo}.2\" }}, \
             {{ address = \"10.{hi}.{lo}.3\" }}, {{ address = \"10.{hi}.{lo}.4\" }}]\n\
             [[tenant.l4]]\nvip = \"172.{hi}.{lo}.1\"\nport = {port}\nprotocol = \"tcp\"\npool = \"web\"\n"
        );
    }
    s
}

/// Seconds from a backend's port closing to its ring entries disappearing.
fn health_removal(rt: &tokio::runtime::Runtime, dp: &mut Dataplane) -> (f64, Duration) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let cfg = config::parse(
        &format!(
            "[node]\ninterface = \"eth0\"\n[[tenant]]\nname = \"h\"\n[[tenant.pool]]\nname = \"web\"\n\
             backends = [{{ address = \"127.0.0.1\", port = {port} }}, {{ address = \"127.0.0.2\", port = {port} }}]\n\
             [[tenant.l4]]\nvip = \"192.0.2.1\"\nport = {port}\nprotocol = \"tcp\"\npool = \"web\"\n"
        ),
        "health.toml",
    )
    .expect("config");
    let mut reconciler = Reconciler::new();
    reconciler.apply(&cfg, dp).expect("apply");
    let pool = reconciler.ids().pool("h", "web").expect("pool id");
    let id = reconciler
        .ids()
        .backend("h", "web", "127.0.0.1".parse().expect("ip"), port)
        .expect("backend id");
    let interval = Duration::from_millis(500);
    let check = HealthCheck {
        kind: HealthKind::Tcp,
        path: None,
        interval,
        timeout: Duration::from_millis(200),
        rise: 2,
        fall: 3,
        port: None,
        expect_status: None,
        tls: false,
        initial_down: false,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _guard = rt.enter();
    let mut checker = Checker::new(tx);
    checker.update(
        vec![health::Target {
            backend: BackendRef {
                tenant: "h".into(),
                pool: "web".into(),
                address: "127.0.0.1".parse().expect("ip"),
                port,
            },
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            check,
        }],
        &|_| Health::Up,
    );
    drop(listener);
    let closed = Instant::now();
    let event = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
        .expect("a health event within 10 s")
        .expect("channel open");
    assert_eq!(event.health, Health::Down);
    let mut down = BTreeSet::new();
    down.insert((
        "h".to_string(),
        "web".to_string(),
        event.backend.address,
        port,
    ));
    reconciler
        .apply_with_health(&cfg, &down, dp)
        .expect("apply");
    let ring = dp.ring(pool).expect("ring");
    assert!(
        !ring.contains(&id),
        "the failed backend must leave the ring"
    );
    checker.shutdown();
    (closed.elapsed().as_secs_f64(), interval)
}

fn main() {
    let args = args();
    let n = args.tenants;
    let m1 = maglev_ms(65_537, 1000);
    let m2 = maglev_ms(655_373, 1000);

    let mut dp = Dataplane::load(&LoadOptions::default()).expect("loading the balancer");
    let ring: Vec<u32> = (0..65_537u32).map(|i| i % 1000).collect();
    let start = Instant::now();
    dp.write_ring(1_000, 1, &ring).expect("ring write");
    let ring_write = ms(start.elapsed());
    dp.remove_pool(1_000).expect("remove");

    let text = tenants_config(n, false);
    let start = Instant::now();
    let cfg = config::parse(&text, "bench.toml").expect("config");
    let parse = ms(start.elapsed());
    let mut reconciler = Reconciler::new();
    let start = Instant::now();
    let report = reconciler.apply(&cfg, &mut dp).expect("first apply");
    let first_apply = ms(start.elapsed());
    assert_eq!(report.rings_written, n);
    let changed = config::parse(&tenants_config(n, true), "bench.toml").expect("config");
    let start = Instant::now();
    let report = reconciler.apply(&changed, &mut dp).expect("reload apply");
    let reload_apply = ms(start.elapsed());
    assert_eq!(
        report.vips_written, 1,
        "a reload writes only what changed: {report:?}"
    );
    let peak = peak_rss_mib();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (removal, interval) = health_removal(&rt, &mut dp);

    println!("bench control");
    println!("{:<58} {:>12}", "what", "value");
    println!(
        "{:<58} {m1:>9.1} ms",
        "Maglev build, M=65537, 1000 backends"
    );
    println!(
        "{:<58} {m2:>9.1} ms",
        "Maglev build, M=655373, 1000 backends"
    );
    println!(
        "{:<58} {ring_write:>9.2} ms",
        "ring write (65537 slots, mmap + pool swap)"
    );
    println!(
        "{:<58} {parse:>9.1} ms",
        format!("parse + validate {n} tenants")
    );
    println!(
        "{:<58} {first_apply:>9.1} ms",
        format!("first apply, {n} tenants (4 backends, ring 1021)")
    );
    println!(
        "{:<58} {reload_apply:>9.1} ms",
        format!("reload apply, {n} tenants, one changed")
    );
    println!(
        "{:<58} {peak:>9.1} MiB",
        "peak resident memory (whole process)"
    );
    println!(
        "{:<58} {removal:>9.2} s",
        format!("health failure to removal (interval {interval:?}, fall 3)")
    );
    let json = format!(
        "{{\"bench\":\"control\",\"tenants\":{n},\"maglev_65537_ms\":{m1:.2},\"maglev_655373_ms\":{m2:.2},\
         \"ring_write_ms\":{ring_write:.3},\"parse_ms\":{parse:.1},\"first_apply_ms\":{first_apply:.1},\
         \"reload_apply_ms\":{reload_apply:.1},\"peak_rss_mib\":{peak:.1},\"health_removal_s\":{removal:.3}}}"
    );
    if let Some(out) = args.out {
        fs::write(&out, format!("{json}\n"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
        println!("results written to {}", out.display());
    }
}
