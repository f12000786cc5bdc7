//! End-to-end tests in network namespaces with real kernel TCP and UDP: a
//! client, the LB node running the XDP balancer, and backends of two tenants
//! that decapsulate IPIP in XDP and answer with their own name.
//!
//! The balancer is driven through the library (`Dataplane` + `Reconciler`),
//! as `lbd` does, so the tests can change pools between steps. Everything is
//! removed on drop, also when an assertion fails.

#[allow(
    dead_code,
    reason = "the shared harness; this file does not seed next hops"
)]
mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use common::{Harness, parse, pool_entries, wait_neighbours};
use lb_tests::{
    netns::{Topology, TopologySpec},
    servers::{LongLived, Proto, spread},
};

const VIP_A: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
const VIP_B: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 2);
const VIP_A6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0x100, 0, 0, 0, 0, 0, 1);

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

fn setup() -> Harness {
    Harness::start(
        &TopologySpec::new()
            .with_clients(1)
            .with_tenant("a", 3)
            .with_tenant("b", 3)
            .with_extra_backend("a4"),
        &[IpAddr::V4(VIP_A), IpAddr::V4(VIP_B), IpAddr::V6(VIP_A6)],
        &[
            (Proto::Tcp, "0.0.0.0:80".parse().expect("addr")),
            (Proto::Tcp, "[::]:80".parse().expect("addr")),
            // Bound to the VIP so replies leave from it (a wildcard UDP
            // socket would answer from the backend's own address).
            (Proto::Udp, SocketAddr::new(VIP_A.into(), 53)),
        ],
        &|topo| config_text(topo, &["a1", "a2", "a3"]),
    )
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
