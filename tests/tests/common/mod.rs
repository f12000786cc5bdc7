//! The namespace harness shared by the end-to-end tests and the live
//! benchmark (`examples/bench_xdp.rs` includes this file by path): a
//! topology from `lb_tests::netns`, the backends' XDP programs, name servers
//! on the backends, and the balancer loaded and attached in the LB namespace
//! through the library, as `lbd` does. Everything is removed on drop.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
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
    netns::{Topology, TopologySpec, netns_path, run_in_netns},
    servers::{Proto, TcpNameServer, UdpNameServer},
};

/// Removes the link pins of the backends' programs.
pub struct LinkDir(pub PathBuf);

impl Drop for LinkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running topology with the balancer attached.
pub struct Harness {
    // Field order is drop order: the balancer, then servers, pins, namespaces.
    pub dp: Dataplane,
    pub reconciler: Reconciler,
    _tcp: Vec<TcpNameServer>,
    _udp: Vec<UdpNameServer>,
    _links: LinkDir,
    pub topo: Topology,
}

/// Seeds the next-hop cache of backend slots `ids` as resolved for good, on
/// `lo`: test runs enter on `lo`, so the balancer answers `XDP_TX` without a
/// FIB lookup.
pub fn seed_nexthops(dp: &mut Dataplane, ids: std::ops::Range<u32>) {
    for id in ids {
        dp.set_nexthop(
            id,
            &lb_common::NextHop {
                expires_ns: u64::MAX,
                src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ifindex: 1,
                mtu: 9000,
                dmac: [2, 0, 0, 0, 0, 2],
                smac: [2, 0, 0, 0, 0, 1],
                ..lb_common::NextHop::default()
            },
        )
        .expect("seeding a next hop");
    }
}

/// Parses a test configuration, panicking with the validation error.
pub fn parse(text: &str) -> Config {
    config::parse(text, "harness.toml").unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

/// `{ address = ".." }` entries for the named backends.
pub fn pool_entries(topo: &Topology, names: &[&str], v6: bool) -> String {
    names
        .iter()
        .map(|n| format!("{{ address = \"{}\" }}", topo.backend(n).addr(v6)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn backend_addrs(topo: &Topology) -> BTreeSet<IpAddr> {
    topo.backends()
        .iter()
        .flat_map(|b| [b.addr(false), b.addr(true)])
        .collect()
}

/// Waits until the LB node has a MAC for every backend address (the XDP
/// program cannot resolve neighbours itself).
pub fn wait_neighbours(topo: &Topology) {
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

impl Harness {
    /// Builds `spec`, puts `vips` on every backend's loopback, starts a name
    /// server per backend for each of `servers` (protocol, bind address),
    /// and loads the balancer with the configuration `config` renders.
    pub fn start(
        spec: &TopologySpec,
        vips: &[IpAddr],
        servers: &[(Proto, SocketAddr)],
        config: &dyn Fn(&Topology) -> String,
    ) -> Harness {
        let topo = Topology::create(spec).expect("topology");
        let links = LinkDir(PathBuf::from(format!(
            "/sys/fs/bpf/{}-links",
            topo.prefix()
        )));
        for (ns, iface) in topo.fabric_ports() {
            let dir = links.0.clone();
            run_in_netns(&netns_path(&ns), move || {
                decap::attach(&dir, BackendProgram::Pass, &iface)
            })
            .expect("enter fabric")
            .expect("attach pass program to a bridge port");
        }
        topo.add_vip_to_backends(vips).expect("VIPs on backends");
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for b in topo.backends() {
            let dir = links.0.clone();
            run_in_netns(&b.path(), move || {
                decap::attach(&dir, BackendProgram::Decap, "eth0")
            })
            .expect("enter backend")
            .expect("attach decap");
            for &(proto, bind) in servers {
                match proto {
                    Proto::Tcp => tcp
                        .push(TcpNameServer::start(&b.path(), bind, &b.name).expect("tcp server")),
                    Proto::Udp => udp
                        .push(UdpNameServer::start(&b.path(), bind, &b.name).expect("udp server")),
                }
            }
        }
        let cfg = parse(&config(&topo));
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
}
