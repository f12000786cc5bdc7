//! Reconcile against the real maps (loaded privately, not attached), with
//! packets run through the balancer by `BPF_PROG_TEST_RUN`:
//!
//! - removing a tenant leaves nothing of it in the maps (VIPs, VIP
//!   addresses, pools, backend slots, counters, flow-table entries), and a
//!   VIP re-created for another tenant never reaches the old tenant's
//!   backends, not even through a flow the old tenant had established;
//! - L7 listen addresses become local VIPs (a shared one owned by no
//!   tenant, a single tenant's one by that tenant) whose packet limits XDP
//!   enforces, every L7 host name is in the SNI map under its tenant, and
//!   pools only the proxy uses take no ring;
//! - every tenant with an L4 VIP gets a flow table of its share of
//!   `node.flow_table_size`, and a new size (or a new tenant's arrival)
//!   resizes the tables without losing their flows;
//! - a re-apply of the same configuration writes nothing;
//! - pinned maps of another layout version are refused with what to do.

#[allow(
    dead_code,
    reason = "the shared harness; this file uses only seed_nexthops"
)]
mod common;

use std::{collections::BTreeSet, fmt::Write as _, net::Ipv4Addr, path::PathBuf};

use aya::programs::{TestRun, TestRunOptions};
use lb::{
    config,
    dataplane::{Dataplane, DataplaneError, LoadOptions},
    reconcile::Reconciler,
};
use lb_common::{BACKEND_UNUSED, Settings};

const XDP_TX: u32 = 3;

fn config(tenants: &[(&str, &str, [&str; 2])]) -> config::Config {
    sized_config(lb_common::DEFAULT_FLOW_TABLE_ENTRIES, tenants)
}

/// [`config`] with `node.flow_table_size`.
fn sized_config(flow_table_size: u32, tenants: &[(&str, &str, [&str; 2])]) -> config::Config {
    let mut s = format!("[node]\ninterface = \"eth0\"\nflow_table_size = {flow_table_size}\n");
    for (name, vip, backends) in tenants {
        let _ = write!(
            s,
            "[[tenant]]\nname = \"{name}\"\n[[tenant.pool]]\nname = \"web\"\nring_size = 257\n\
             backends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\
             [[tenant.l4]]\nvip = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n",
            backends[0], backends[1]
        );
    }
    config::parse(&s, "reconcile.toml").unwrap_or_else(|e| panic!("test config: {e}"))
}

/// Runs a SYN from `client_port` to `vip:80`; returns the action and the
/// outer destination address when encapsulated.
fn send(dp: &mut Dataplane, vip: Ipv4Addr, client_port: u16) -> (u32, Option<Ipv4Addr>) {
    let mut pkt = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
        .ipv4([198, 51, 100, 7], vip.octets(), 64)
        .tcp(client_port, 80, 1, 64240)
        .syn()
        .write(&mut pkt, &[])
        .expect("packet");
    let mut out = vec![0u8; 256];
    let prog = dp.program("lb_balancer").expect("program");
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&pkt),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("test run");
    let outer =
        (r.return_value == XDP_TX).then(|| Ipv4Addr::new(out[30], out[31], out[32], out[33]));
    (r.return_value, outer)
}

#[test]
fn a_new_flow_table_size_resizes_the_tables_and_keeps_their_flows() {
    let vip: Ipv4Addr = "203.0.113.20".parse().expect("ip");
    let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
    let mut r = Reconciler::new();
    let two = [
        ("other", "203.0.113.10", ["10.0.1.1", "10.0.1.2"]),
        ("keep", "203.0.113.20", ["10.0.2.1", "10.0.2.2"]),
    ];
    r.apply(&sized_config(4096, &two), &mut dp).expect("apply");
    common::seed_nexthops(&mut dp, 0..16);
    let keep = r.ids().tenant("keep").expect("id");
    let other = r.ids().tenant("other").expect("id");
    assert_eq!(
        dp.flow_tables().into_iter().collect::<Vec<_>>(),
        [(other, 2048), (keep, 2048)]
    );
    let before: Vec<Option<Ipv4Addr>> = (40_000..40_020).map(|p| send(&mut dp, vip, p).1).collect();
    assert!(before.iter().all(Option::is_some));

    // Half the node's size and a third tenant: three tables of 682.
    let three = [
        two[0],
        two[1],
        ("third", "203.0.113.30", ["10.0.3.1", "10.0.3.2"]),
    ];
    let report = r
        .apply(&sized_config(2048, &three), &mut dp)
        .expect("apply");
    assert_eq!(report.flow_tables_written, 3, "{report:?}");
    let third = r.ids().tenant("third").expect("id");
    assert_eq!(
        dp.flow_tables().into_iter().collect::<Vec<_>>(),
        [(other, 682), (keep, 682), (third, 682)]
    );
    let kept = dp
        .flows()
        .iter()
        .filter(|(_, v)| v.tenant_id == keep)
        .count();
    assert_eq!(kept, 20, "flows lost in the resize");
    let summary = lb::inspect::tenants(&dp, r.ids());
    let keep_summary = summary.iter().find(|t| t.id == keep).expect("keep");
    assert_eq!(
        (
            keep_summary.flow_table.flows,
            keep_summary.flow_table.max_flows
        ),
        (20, 682),
        "what lbctl tenant list shows"
    );
    let after: Vec<Option<Ipv4Addr>> = (40_000..40_020).map(|p| send(&mut dp, vip, p).1).collect();
    assert_eq!(after, before, "a flow changed backend");
    // The same configuration again changes no table.
    let report = r
        .apply(&sized_config(2048, &three), &mut dp)
        .expect("apply");
    assert_eq!(report.flow_tables_written, 0, "{report:?}");
}

#[test]
fn removing_a_tenant_leaves_nothing_and_its_vip_reused_never_reaches_it() {
    let vip: Ipv4Addr = "203.0.113.10".parse().expect("ip");
    let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
    let mut r = Reconciler::new();
    let both = config(&[
        ("old", "203.0.113.10", ["10.0.1.1", "10.0.1.2"]),
        ("keep", "203.0.113.20", ["10.0.2.1", "10.0.2.2"]),
    ]);
    r.apply(&both, &mut dp).expect("apply");
    common::seed_nexthops(&mut dp, 0..16);
    let old_id = r.ids().tenant("old").expect("old id");
    let old_pool = r.ids().pool("old", "web").expect("old pool");
    let old_backends: Vec<u32> = ["10.0.1.1", "10.0.1.2"]
        .iter()
        .map(|a| {
            r.ids()
                .backend("old", "web", a.parse().expect("ip"), 0)
                .expect("id")
        })
        .collect();
    // Traffic of the old tenant: counters and flow-table entries.
    for port in 40_000..40_020 {
        let (action, outer) = send(&mut dp, vip, port);
        assert_eq!(action, XDP_TX);
        assert!(
            outer.is_some_and(|o| o.octets()[..3] == [10, 0, 1]),
            "{outer:?}"
        );
    }
    assert!(dp.tenant_stats(old_id).packets >= 20);
    assert!(dp.flows().iter().any(|(_, v)| v.tenant_id == old_id));

    // Remove "old"; a new tenant takes over its VIP with other backends.
    let after = config(&[
        ("keep", "203.0.113.20", ["10.0.2.1", "10.0.2.2"]),
        ("new", "203.0.113.10", ["10.0.3.1", "10.0.3.2"]),
    ]);
    let report = r.apply(&after, &mut dp).expect("apply");
    assert!(report.flows_removed >= 20, "{report:?}");
    assert!(
        dp.flows().iter().all(|(_, v)| v.tenant_id != old_id),
        "old flows remain"
    );
    assert!(
        !dp.flow_tables().contains_key(&old_id),
        "the old tenant's flow table remains"
    );
    assert_eq!(dp.tenant_stats(old_id).packets, 0, "old counters remain");
    assert!(dp.pool(old_pool).is_none() || r.ids().pool("new", "web") == Some(old_pool));
    for id in &old_backends {
        let b = dp.backend(*id).expect("slot");
        let new_ids: BTreeSet<u32> = ["10.0.3.1", "10.0.3.2"]
            .iter()
            .filter_map(|a| r.ids().backend("new", "web", a.parse().expect("ip"), 0))
            .collect();
        assert!(
            b.state == BACKEND_UNUSED || new_ids.contains(id),
            "slot {id} of the old tenant still in use: {b:?}"
        );
    }
    let names = r.ids().tenant_names();
    assert!(!names.values().any(|n| n == "old"));
    for (_, info) in dp.vips() {
        assert_ne!(
            info.tenant_id, old_id,
            "a VIP of the old tenant remains: {info:?}"
        );
    }
    // The same client ports (the old flows' 5-tuples) and new ones reach
    // only the new tenant's backends.
    for port in 40_000..40_060 {
        let (action, outer) = send(&mut dp, vip, port);
        assert_eq!(action, XDP_TX, "port {port}");
        let outer = outer.expect("encapsulated");
        assert_eq!(
            outer.octets()[..3],
            [10, 0, 3],
            "port {port} reached {outer}"
        );
    }

    // A re-apply of the same configuration writes nothing.
    let report = r.apply(&after, &mut dp).expect("apply");
    assert_eq!(
        report,
        lb::reconcile::ApplyReport::default(),
        "a no-op apply wrote: {report:?}"
    );
}

#[test]
fn pinned_maps_of_another_layout_are_refused() {
    let pins = PathBuf::from(format!("/sys/fs/bpf/lb-layout-test-{}", std::process::id()));
    let cleanup = || {
        let _ = lb::dataplane::cleanup(&pins);
    };
    cleanup();
    {
        let mut dp = Dataplane::load(&LoadOptions {
            pin_path: Some(pins.clone()),
        })
        .expect("load with pins");
        dp.set_settings(Settings::default()).expect("settings");
    }
    // Adopting our own layout works.
    Dataplane::load(&LoadOptions {
        pin_path: Some(pins.clone()),
    })
    .expect("adopting pins of the same layout");
    // Pretend an older binary wrote them.
    {
        let dp = Dataplane::open_pinned(&pins).expect("open");
        let mut s = dp.settings().expect("settings");
        s.layout_version = 99;
        drop(dp);
        let mut map: aya::maps::Array<aya::maps::MapData, Settings> =
            aya::maps::Map::from_map_data(
                aya::maps::MapData::from_pin(pins.join(lb_common::MAP_SETTINGS)).expect("pin"),
            )
            .expect("map")
            .try_into()
            .expect("array");
        map.set(0, s, 0).expect("write");
    }
    let err = Dataplane::load(&LoadOptions {
        pin_path: Some(pins.clone()),
    })
    .err()
    .expect("another layout must be refused");
    assert!(
        matches!(err, DataplaneError::Layout { found: 99, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("--cleanup"),
        "the error says what to do: {err}"
    );
    cleanup();
}

/// A SYN from `client_port` to `vip:port`; the XDP action.
fn syn_to(dp: &mut Dataplane, vip: Ipv4Addr, port: u16, client_port: u16) -> u32 {
    let mut pkt = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
        .ipv4([198, 51, 100, 7], vip.octets(), 64)
        .tcp(client_port, port, 1, 64240)
        .syn()
        .write(&mut pkt, &[])
        .expect("packet");
    let mut out = vec![0u8; 256];
    let prog = dp.program("lb_balancer").expect("program");
    prog.test_run(TestRunOptions {
        data_in: Some(&pkt),
        data_out: Some(&mut out),
        ..Default::default()
    })
    .expect("test run")
    .return_value
}

#[test]
fn l7_addresses_are_local_vips_with_their_limits_and_hosts_fill_the_sni_map() {
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    let text = r#"[node]
interface = "eth0"
[[tenant]]
name = "acme"
[[tenant.pool]]
name = "web"
backends = [ { address = "10.0.1.1", port = 8080 } ]
[[tenant.l7]]
listen = "203.0.113.30:443"
hosts = ["acme.example", "*.acme.example"]
tls = { cert = "a.pem", key = "a.key" }
routes = [ { pool = "web" } ]
[[tenant.l7]]
listen = "203.0.113.31:443"
hosts = ["own.acme.example"]
tls = { cert = "a.pem", key = "a.key" }
routes = [ { pool = "web" } ]
[[tenant]]
name = "globex"
[[tenant.pool]]
name = "web"
backends = [ { address = "10.0.2.1", port = 8080 } ]
[[tenant.l7]]
listen = "203.0.113.30:443"
hosts = ["globex.example"]
tls = { cert = "g.pem", key = "g.key" }
routes = [ { pool = "web" } ]
[[listener]]
address = "203.0.113.30:443"
limits = { syn_per_second = 50 }
"#;
    let config = config::parse(text, "l7.toml").unwrap_or_else(|e| panic!("{e}"));
    let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
    let mut r = Reconciler::new();
    r.apply(&config, &mut dp).expect("apply");
    let acme = r.ids().tenant("acme").expect("acme id");
    let globex = r.ids().tenant("globex").expect("globex id");

    let vips = dp.vips();
    let local = |ip: [u8; 4]| {
        vips.iter()
            .find(|(k, _)| k.addr[..4] == ip && u16::from_be(k.port) == 443)
            .map_or_else(|| panic!("no VIP for {ip:?}: {vips:?}"), |(_, v)| *v)
    };

    let shared = local([203, 0, 113, 30]);
    assert_eq!(shared.flags, lb_common::VIP_F_LOCAL);
    assert_eq!(
        shared.tenant_id,
        lb_common::NO_TENANT,
        "a shared address belongs to no one tenant"
    );
    let own = local([203, 0, 113, 31]);
    assert_eq!((own.flags, own.tenant_id), (lb_common::VIP_F_LOCAL, acme));
    assert_eq!(
        dp.vip_policy(shared.vip_id)
            .expect("policy")
            .syns_per_window,
        5,
        "50 SYN/s is 5 per 100 ms window"
    );

    // Every host name in the SNI map, under its tenant.
    let sni: std::collections::BTreeMap<u64, u32> = dp.sni_entries().into_iter().collect();
    for (host, tenant) in [
        ("acme.example", acme),
        ("*.acme.example", acme),
        ("own.acme.example", acme),
        ("globex.example", globex),
    ] {
        assert_eq!(sni.get(&config::sni_hash(host)), Some(&tenant), "{host}");
    }
    assert_eq!(sni.len(), 4);
    // Pools only the proxy uses take no ring.
    let pool = r.ids().pool("acme", "web").expect("pool id");
    assert!(dp.pool(pool).is_none(), "an L7-only pool got a ring");

    // XDP passes the address's SYNs to the stack within its budget and
    // drops the rest.
    let vip = Ipv4Addr::new(203, 0, 113, 30);
    let actions: Vec<u32> = (0..20)
        .map(|i| syn_to(&mut dp, vip, 443, 40_000 + i))
        .collect();
    let passed = actions.iter().filter(|&&a| a == XDP_PASS).count();
    let dropped = actions.iter().filter(|&&a| a == XDP_DROP).count();
    assert_eq!(passed + dropped, 20, "{actions:?}");
    assert!(
        (5..=10).contains(&passed),
        "budget 5 per window (maybe two windows): {actions:?}"
    );
}
