//! End-to-end tests in network namespaces with real kernel TCP and UDP: a
//! client, the LB node running the XDP balancer, and backends of two tenants
//! that decapsulate IPIP in XDP and answer with their own name.
//!
//! The balancer is driven through the library (`Dataplane` + `Reconciler`),
//! as `lbd` does, so the tests can change pools between steps. Everything is
//! removed on drop, also when an assertion fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use lb::{
    config::{self, Config},
    dataplane::{AttachMode, Dataplane, LoadOptions},
    decap::{self, BackendProgram},
    neighbours,
    reconcile::Reconciler,
};
use lb_tests::{
    netns::{Topology, TopologySpec, run_in_netns},
    servers::{LongLived, Proto, TcpNameServer, UdpNameServer, spread},
};

const VIP_A: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
const VIP_B: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 2);
const VIP_A6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0x100, 0, 0, 0, 0, 0, 1);

/// Removes the link pins of the backends' programs.
struct LinkDir(PathBuf);

impl Drop for LinkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    // Field order is drop order: the balancer, then servers, pins, namespaces.
    dp: Dataplane,
    reconciler: Reconciler,
    _tcp: Vec<TcpNameServer>,
    _udp: Vec<UdpNameServer>,
    _links: LinkDir,
    topo: Topology,
}

fn pool_entries(topo: &Topology, names: &[&str], v6: bool) -> String {
    names
        .iter()
        .map(|n| format!("{{ address = \"{}\" }}", topo.backend(n).addr(v6)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn config_text(topo: &Topology, a_backends: &[&str]) -> String {
    format!(
        r#"
[node]
interface = "eth0"

[[tenant]]
name = "acme"
[[tenant.pool]]
name = "web"
backends = [{a4}]
[[tenant.pool]]
name = "web6"
backends = [{a6}]
[[tenant.l4]]
vip = "{VIP_A}"
port = 80
protocol = "tcp"
pool = "web"
[[tenant.l4]]
vip = "{VIP_A}"
port = 53
protocol = "udp"
pool = "web"
[[tenant.l4]]
vip = "{VIP_A6}"
port = 80
protocol = "tcp"
pool = "web6"

[[tenant]]
name = "globex"
[[tenant.pool]]
name = "web"
backends = [{b4}]
[[tenant.l4]]
vip = "{VIP_B}"
port = 80
protocol = "tcp"
pool = "web"
"#,
        a4 = pool_entries(topo, a_backends, false),
        a6 = pool_entries(topo, &["a1", "a2", "a3"], true),
        b4 = pool_entries(topo, &["b1", "b2", "b3"], false),
    )
}

fn parse(text: &str) -> Config {
    config::parse(text, "e2e.toml").unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

fn backend_addrs(topo: &Topology) -> BTreeSet<IpAddr> {
    topo.backends()
        .iter()
        .flat_map(|b| [b.addr(false), b.addr(true)])
        .collect()
}

/// Waits until the LB node has a MAC for every backend address (the XDP
/// program cannot resolve neighbours itself).
fn wait_neighbours(topo: &Topology) {
    let addrs = backend_addrs(topo);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = addrs.clone();
        run_in_netns(&topo.lb_path(), move || neighbours::warm(&a)).expect("warm neighbours");
        let table = topo
            .run_ok(topo.lb_ns(), &["ip", "neigh", "show"])
            .expect("ip neigh");
        let missing: Vec<_> = addrs
            .iter()
            .filter(|a| {
                !table
                    .lines()
                    .any(|l| l.starts_with(&format!("{a} ")) && l.contains("lladdr"))
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "neighbours not resolved after 10 s: {missing:?}\n{table}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn setup() -> Harness {
    let topo = Topology::create(
        &TopologySpec::new()
            .with_clients(1)
            .with_tenant("a", 3)
            .with_tenant("b", 3)
            .with_extra_backend("a4"),
    )
    .expect("topology");
    let links = LinkDir(PathBuf::from(format!(
        "/sys/fs/bpf/{}-links",
        topo.prefix()
    )));
    for (ns, iface) in topo.fabric_ports() {
        let dir = links.0.clone();
        run_in_netns(&lb_tests::netns::netns_path(&ns), move || {
            decap::attach(&dir, BackendProgram::Pass, &iface)
        })
        .expect("enter fabric")
        .expect("attach pass program to a bridge port");
    }
    let vips = [IpAddr::V4(VIP_A), IpAddr::V4(VIP_B), IpAddr::V6(VIP_A6)];
    topo.add_vip_to_backends(&vips).expect("VIPs on backends");
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for b in topo.backends() {
        let dir = links.0.clone();
        run_in_netns(&b.path(), move || {
            decap::attach(&dir, BackendProgram::Decap, "eth0")
        })
        .expect("enter backend")
        .expect("attach decap");
        tcp.push(
            TcpNameServer::start(&b.path(), "0.0.0.0:80".parse().expect("addr"), &b.name)
                .expect("tcp server"),
        );
        tcp.push(
            TcpNameServer::start(&b.path(), "[::]:80".parse().expect("addr"), &b.name)
                .expect("tcp6 server"),
        );
        udp.push(
            UdpNameServer::start(&b.path(), SocketAddr::new(VIP_A.into(), 53), &b.name)
                .expect("udp server"),
        );
    }
    let cfg = parse(&config_text(&topo, &["a1", "a2", "a3"]));
    let (dp, reconciler) = run_in_netns(&topo.lb_path(), move || {
        let mut dp = Dataplane::load(&LoadOptions::default()).expect("load balancer");
        let mut reconciler = Reconciler::new();
        reconciler.apply(&cfg, &mut dp).expect("apply config");
        dp.attach("eth0", AttachMode::Auto)
            .expect("attach balancer");
        (dp, reconciler)
    })
    .expect("enter LB namespace");
    wait_neighbours(&topo);
    Harness {
        dp,
        reconciler,
        _tcp: tcp,
        _udp: udp,
        _links: links,
        topo,
    }
}

/// Asserts that `counts` only names backends starting with `prefix`, that
/// there are `expect_backends` of them, each within ±20 % of an even share.
fn assert_even(
    what: &str,
    counts: &BTreeMap<String, usize>,
    n: usize,
    prefix: &str,
    expect_backends: usize,
) {
    let total: usize = counts.values().sum();
    assert_eq!(total, n, "{what}: {counts:?}");
    for name in counts.keys() {
        assert!(
            name.starts_with(prefix),
            "{what}: reached {name}, not a backend of this tenant: {counts:?}"
        );
    }
    assert_eq!(
        counts.len(),
        expect_backends,
        "{what}: backends reached: {counts:?}"
    );
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let even = n as f64 / expect_backends as f64;
    for (name, &c) in counts {
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let c = c as f64;
        assert!(
            (c - even).abs() <= 0.2 * even,
            "{what}: {name} got {c}, even share {even:.0} ±20%: {counts:?}"
        );
    }
}

#[test]
fn connections_spread_over_the_tenants_own_backends() {
    let h = setup();
    let client = h.topo.client_path(0);
    let tcp =
        spread(&client, SocketAddr::new(VIP_A.into(), 80), 1000, Proto::Tcp).expect("tcp spread");
    assert_even("tenant acme, TCP", &tcp, 1000, "a", 3);
    let udp =
        spread(&client, SocketAddr::new(VIP_A.into(), 53), 1000, Proto::Udp).expect("udp spread");
    assert_even("tenant acme, UDP", &udp, 1000, "a", 3);
    let v6 = spread(
        &client,
        SocketAddr::new(VIP_A6.into(), 80),
        1000,
        Proto::Tcp,
    )
    .expect("ipv6 spread");
    assert_even("tenant acme, IPv6 TCP", &v6, 1000, "a", 3);
    let b = spread(&client, SocketAddr::new(VIP_B.into(), 80), 1000, Proto::Tcp)
        .expect("tenant b spread");
    assert_even("tenant globex, TCP", &b, 1000, "b", 3);

    let acme = h.reconciler.ids().tenant("acme").expect("acme id");
    let stats = h.dp.tenant_stats(acme);
    // 3000 connections and datagrams; an ephemeral port reused for the same
    // VIP is the same 5-tuple, a flow-table hit rather than a new flow.
    assert!(
        stats.packets >= 3000 && stats.new_flows >= 2900,
        "acme counters: {stats:?}"
    );
}

#[test]
fn pool_changes_keep_established_flows_and_respect_removal() {
    let mut h = setup();
    let client = h.topo.client_path(0);
    let vip = SocketAddr::new(VIP_A.into(), 80);
    let long = LongLived::open(&client, vip).expect("long-lived connection");
    long.probe().expect("probe before the change");
    let first = long.backend_name().to_string();

    // Add a fourth backend to the pool: the established connection stays
    // on its backend, new connections also reach the new one.
    let cfg = parse(&config_text(&h.topo, &["a1", "a2", "a3", "a4"]));
    h.reconciler.apply(&cfg, &mut h.dp).expect("apply with a4");
    wait_neighbours(&h.topo);
    long.probe().expect("long-lived connection after adding a4");
    let after_add = spread(&client, vip, 400, Proto::Tcp).expect("spread with a4");
    assert!(
        after_add.get("a4").copied().unwrap_or(0) > 0,
        "a4 got no new connections: {after_add:?}"
    );
    assert!(
        after_add.keys().all(|k| k.starts_with('a')),
        "{after_add:?}"
    );

    // Remove a backend other than the one holding the long-lived connection:
    // it gets no new connections, and the long-lived connection survives.
    let removed = ["a1", "a2", "a3", "a4"]
        .into_iter()
        .find(|n| *n != first)
        .expect("a backend");
    let keep: Vec<&str> = ["a1", "a2", "a3", "a4"]
        .into_iter()
        .filter(|n| *n != removed)
        .collect();
    let cfg = parse(&config_text(&h.topo, &keep));
    h.reconciler
        .apply(&cfg, &mut h.dp)
        .expect("apply without one backend");
    let after_remove = spread(&client, vip, 400, Proto::Tcp).expect("spread after removal");
    assert_eq!(
        after_remove.get(removed),
        None,
        "removed backend {removed} still got connections: {after_remove:?}"
    );
    assert_eq!(
        after_remove.values().sum::<usize>(),
        400,
        "{after_remove:?}"
    );
    long.probe()
        .expect("long-lived connection after removing another backend");
    assert_eq!(long.backend_name(), first);
}
