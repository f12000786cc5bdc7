//! Per-tenant packet policy in XDP, through `BPF_PROG_TEST_RUN` with the
//! maps programmed from a configuration: source ACLs (allow and deny lists,
//! IPv4 and IPv6), tenant and VIP packet budgets, the SYN budget of a VIP,
//! and the tenant's new-flow budget that keeps a flood out of the flow
//! table (a 20,000-source SYN flood against a 1,024-entry table leaves every
//! one of another tenant's 300 established flows in place; without the
//! budget it evicts them all). ICMP errors about a tenant's flows pass the
//! same ACL and budgets, and only when sent to the quoted VIP about a flow
//! the table holds. Another tenant on the same node is never affected.
//!
//! Budgets are per 100 ms window; a loop of test runs may cross one window
//! boundary, so counts are asserted between one and two windows' worth.

#[allow(
    dead_code,
    reason = "the shared harness; this file uses only seed_nexthops"
)]
mod common;

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use lb::{
    config,
    dataplane::{Dataplane, LoadOptions},
    reconcile::Reconciler,
};
use lb_common::DropReason;

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;

struct Node {
    dp: Dataplane,
    reconciler: Reconciler,
    /// The frame the last run wrote out.
    out: Vec<u8>,
}

impl Node {
    fn new(tenants: &str) -> Node {
        Self::with_flow_table(tenants, lb_common::DEFAULT_FLOW_TABLE_ENTRIES)
    }

    fn with_flow_table(tenants: &str, flow_table_size: u32) -> Node {
        let text =
            format!("[node]\ninterface = \"eth0\"\nflow_table_size = {flow_table_size}\n{tenants}");
        let cfg = config::parse(&text, "policy.toml").unwrap_or_else(|e| panic!("config: {e}"));
        let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
        let mut reconciler = Reconciler::new();
        reconciler.apply(&cfg, &mut dp).expect("apply");
        common::seed_nexthops(&mut dp, 0..8);
        dp.program("lb_balancer").expect("verifier");
        Node {
            dp,
            reconciler,
            out: Vec::new(),
        }
    }

    /// Runs one TCP packet (SYN unless `ack`) and returns the action.
    fn send(&mut self, src: IpAddr, sport: u16, vip: IpAddr, ack: bool) -> u32 {
        let mut pkt = Vec::new();
        let eth = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1]);
        let ip = match (src, vip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
            _ => panic!("mixed families"),
        };
        let tcp = ip.tcp(sport, 80, 1, 64240);
        let tcp = if ack { tcp.ack(1) } else { tcp.syn() };
        tcp.write(&mut pkt, &[]).expect("packet");
        self.run(&pkt)
    }

    /// Runs an ICMP fragmentation-needed from `router` to `to` quoting the
    /// start of a TCP packet a backend sent from `vip`:80 to `client`.
    fn send_frag_needed(&mut self, router: &str, to: &str, vip: &str, client: (&str, u16)) -> u32 {
        let mut quoted = Vec::new();
        let v4 = |s: &str| match ip(s) {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(_) => panic!("IPv4 only"),
        };
        etherparse::PacketBuilder::ipv4(v4(vip), v4(client.0), 64)
            .tcp(80, client.1, 1, 64240)
            .ack(1)
            .write(&mut quoted, &[0; 32])
            .expect("quoted packet");
        let mut pkt = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
            .ipv4(v4(router), v4(to), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400,
                },
            ))
            .write(&mut pkt, &quoted[..48])
            .expect("icmp packet");
        self.run(&pkt)
    }

    fn run(&mut self, pkt: &[u8]) -> u32 {
        let mut out = vec![0u8; 256];
        let result = self
            .dp
            .program("lb_balancer")
            .expect("program")
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("test run");
        out.truncate(usize::try_from(result.data_size_out).expect("output size"));
        self.out = out;
        result.return_value
    }

    /// The outer IPv4 destination of the last frame out (an IPIP packet).
    fn last_outer_dst(&self) -> IpAddr {
        let d = &self.out[30..34];
        IpAddr::from([d[0], d[1], d[2], d[3]])
    }

    fn drops(&self, tenant: &str, reason: DropReason) -> u64 {
        let id = self.reconciler.ids().tenant(tenant).expect("tenant id");
        self.dp.tenant_drops(id).by_reason[reason.index()]
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn tenant(name: &str, vip: &str, backend: &str, extra: &str, vip_limits: &str) -> String {
    format!(
        "[[tenant]]\nname = \"{name}\"\n{extra}\n[[tenant.pool]]\nname = \"web\"\nring_size = 257\n\
         backends = [{{ address = \"{backend}\" }}]\n[[tenant.l4]]\nvip = \"{vip}\"\nport = 80\n\
         protocol = \"tcp\"\npool = \"web\"\n{vip_limits}\n"
    )
}

#[test]
fn acls_allow_and_deny_sources_per_tenant() {
    let mut node = Node::new(
        &(tenant(
            "denies",
            "203.0.113.10",
            "10.0.1.1",
            "[tenant.acl]\ndeny = [\"198.51.100.0/24\", \"2001:db8:bad::/48\"]",
            "",
        ) + &tenant(
            "allows",
            "203.0.113.20",
            "10.0.2.1",
            "[tenant.acl]\nallow = [\"10.0.0.0/8\"]\ndeny = [\"10.66.0.0/16\"]",
            "",
        ) + &tenant(
            "v6",
            "2001:db8:100::10",
            "2001:db8:1::1",
            "[tenant.acl]\ndeny = [\"2001:db8:bad::/48\"]",
            "",
        )),
    );
    // Deny list: the listed prefix is dropped, everything else passes.
    assert_eq!(
        node.send(ip("198.51.100.7"), 1000, ip("203.0.113.10"), false),
        XDP_DROP
    );
    assert_eq!(
        node.send(ip("192.0.2.7"), 1001, ip("203.0.113.10"), false),
        XDP_TX
    );
    assert_eq!(node.drops("denies", DropReason::ACL_DENY), 1);
    // Allow list: only the listed prefix, minus its longer deny.
    assert_eq!(
        node.send(ip("10.1.2.3"), 1002, ip("203.0.113.20"), false),
        XDP_TX
    );
    assert_eq!(
        node.send(ip("10.66.1.1"), 1003, ip("203.0.113.20"), false),
        XDP_DROP
    );
    assert_eq!(
        node.send(ip("198.51.100.7"), 1004, ip("203.0.113.20"), false),
        XDP_DROP
    );
    assert_eq!(node.drops("allows", DropReason::ACL_DENY), 2);
    // IPv6.
    assert_eq!(
        node.send(ip("2001:db8:bad::1"), 1005, ip("2001:db8:100::10"), false),
        XDP_DROP
    );
    assert_eq!(
        node.send(ip("2001:db8:600d::1"), 1006, ip("2001:db8:100::10"), false),
        XDP_TX
    );
    // The first tenant's deny list does not apply to the second tenant.
    assert_eq!(node.drops("denies", DropReason::ACL_DENY), 1);
}

#[test]
fn a_tenant_over_its_packet_budget_is_limited_and_its_neighbour_is_not() {
    // 1000 packets/s = 100 per 100 ms window.
    let mut node = Node::new(
        &(tenant(
            "noisy",
            "203.0.113.10",
            "10.0.1.1",
            "[tenant.limits]\npackets_per_second = 1000",
            "",
        ) + &tenant("quiet", "203.0.113.20", "10.0.2.1", "", "")),
    );
    let mut passed = 0;
    for i in 0..500u16 {
        if node.send(ip("192.0.2.7"), 2000 + i, ip("203.0.113.10"), true) == XDP_TX {
            passed += 1;
        }
    }
    assert!(
        (100..=200).contains(&passed),
        "noisy got {passed} of 500 through (budget 100 per window)"
    );
    assert_eq!(node.drops("noisy", DropReason::TENANT_RATE), 500 - passed);
    for i in 0..300u16 {
        assert_eq!(
            node.send(ip("192.0.2.8"), 3000 + i, ip("203.0.113.20"), true),
            XDP_TX,
            "the quiet tenant loses nothing"
        );
    }
}

#[test]
fn vip_budgets_limit_syns_and_packets() {
    // 50 SYN/s = 5 per window; the VIP's other packets are not SYN-limited.
    let mut node = Node::new(&tenant(
        "acme",
        "203.0.113.10",
        "10.0.1.1",
        "",
        "limits = { syn_per_second = 50, packets_per_second = 100000 }",
    ));
    let mut syns = 0;
    for i in 0..100u16 {
        if node.send(ip("192.0.2.7"), 4000 + i, ip("203.0.113.10"), false) == XDP_TX {
            syns += 1;
        }
    }
    assert!(
        (5..=10).contains(&syns),
        "{syns} SYNs of 100 passed (budget 5 per window)"
    );
    assert_eq!(node.drops("acme", DropReason::SYN_RATE), 100 - syns);
    for i in 0..100u16 {
        assert_eq!(
            node.send(ip("192.0.2.7"), 5000 + i, ip("203.0.113.10"), true),
            XDP_TX
        );
    }
}

#[test]
fn new_flows_over_the_tenant_budget_never_enter_the_flow_table() {
    // 100 new flows/s = 10 per window.
    let mut node = Node::new(
        &(tenant(
            "flood",
            "203.0.113.10",
            "10.0.1.1",
            "[tenant.limits]\nnew_flows_per_second = 100",
            "",
        ) + &tenant("calm", "203.0.113.20", "10.0.2.1", "", "")),
    );
    let flood_id = node.reconciler.ids().tenant("flood").expect("id");
    for i in 0..200u16 {
        node.send(ip("192.0.2.7"), 6000 + i, ip("203.0.113.10"), false);
    }
    let entries = node
        .dp
        .flows()
        .iter()
        .filter(|(_, v)| v.tenant_id == flood_id)
        .count();
    assert!(
        (10..=20).contains(&entries),
        "flood inserted {entries} flows (budget 10 per window)"
    );
    assert_eq!(
        node.drops("flood", DropReason::NEW_FLOW_RATE),
        200 - entries as u64
    );
    for i in 0..50u16 {
        assert_eq!(
            node.send(ip("192.0.2.8"), 7000 + i, ip("203.0.113.20"), false),
            XDP_TX
        );
    }
}

#[test]
fn a_syn_flood_from_many_sources_never_evicts_another_tenants_flows() {
    // A flow table of 1024 entries: without the flooding tenant's new-flow
    // budget, its 20,000 SYNs would evict every established flow.
    let mut node = Node::with_flow_table(
        &(tenant(
            "flood",
            "203.0.113.10",
            "10.0.1.1",
            "[tenant.limits]\nnew_flows_per_second = 100",
            "",
        ) + &tenant("calm", "203.0.113.20", "10.0.2.1", "", "")),
        1024,
    );
    let calm_id = node.reconciler.ids().tenant("calm").expect("id");
    // The calm tenant's 300 long-lived connections.
    let clients: Vec<(IpAddr, u16)> = (0..300u16)
        .map(|i| (ip(&format!("198.51.100.{}", 1 + i % 200)), 20_000 + i))
        .collect();
    for &(src, port) in &clients {
        assert_eq!(node.send(src, port, ip("203.0.113.20"), false), XDP_TX);
    }
    let calm_flows = |node: &Node| -> std::collections::BTreeSet<(Vec<u8>, u16)> {
        node.dp
            .flows()
            .iter()
            .filter(|(_, v)| v.tenant_id == calm_id)
            .map(|(k, _)| (k.src.to_vec(), u16::from_be(k.sport)))
            .collect()
    };
    let before = calm_flows(&node);
    assert_eq!(before.len(), 300);
    // The flood: 20,000 SYNs from 20,000 sources (bounded by count).
    for i in 0..20_000u32 {
        let [_, _, b, c] = i.to_be_bytes();
        let src = IpAddr::from([10, 99, b, c]);
        node.send(src, 1024 + (i % 60_000) as u16, ip("203.0.113.10"), false);
    }
    assert_eq!(calm_flows(&node), before, "a calm flow was evicted");
    // And every calm connection still reaches its backend.
    for &(src, port) in &clients {
        assert_eq!(node.send(src, port, ip("203.0.113.20"), true), XDP_TX);
    }
    assert!(node.drops("flood", DropReason::NEW_FLOW_RATE) > 19_000);
}

/// Tenant "a" (VIP 203.0.113.10, one backend) and tenant "b" (VIP
/// 203.0.113.20, backends 10.0.2.1 and 10.0.2.2, `drained` at weight 0).
fn spray_tenants(drained: Option<IpAddr>) -> String {
    let weight = |b: &str| u8::from(drained != Some(ip(b)));
    tenant("a", "203.0.113.10", "10.0.1.1", "", "")
        + &format!(
            "[[tenant]]\nname = \"b\"\n[[tenant.pool]]\nname = \"web\"\nring_size = 257\n\
             backends = [{{ address = \"10.0.2.1\", weight = {} }}, {{ address = \"10.0.2.2\", weight = {} }}]\n\
             [[tenant.l4]]\nvip = \"203.0.113.20\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n",
            weight("10.0.2.1"),
            weight("10.0.2.2"),
        )
}

#[test]
fn a_flow_table_spray_evicts_only_the_spraying_tenants_flows() {
    // 1024 flows for the node: 512 per tenant by default, no new-flow
    // budget set. A flow of b's on a backend then drained lives only in
    // the flow table (the ring no longer has the backend): were it evicted,
    // b's client would be re-steered to the other backend mid-connection.
    let mut node = Node::with_flow_table(&spray_tenants(None), 1024);
    let ids = node.reconciler.ids().clone();
    let (id_a, id_b) = (ids.tenant("a").expect("a"), ids.tenant("b").expect("b"));
    assert_eq!(node.dp.flow_tables().get(&id_a), Some(&512));
    assert_eq!(node.dp.flow_tables().get(&id_b), Some(&512));

    let client = ip("198.51.100.20");
    assert_eq!(node.send(client, 40_000, ip("203.0.113.20"), false), XDP_TX);
    let pinned = node.last_outer_dst();
    let cfg = config::parse(
        &format!(
            "[node]\ninterface = \"eth0\"\nflow_table_size = 1024\n{}",
            spray_tenants(Some(pinned))
        ),
        "policy.toml",
    )
    .expect("config");
    node.reconciler.apply(&cfg, &mut node.dp).expect("drain");
    assert_eq!(node.send(client, 40_000, ip("203.0.113.20"), true), XDP_TX);
    assert_eq!(
        node.last_outer_dst(),
        pinned,
        "the drained backend keeps its flow"
    );
    // A new flow of b's goes to the other backend: the flow table is all
    // that keeps the client on the drained one.
    assert_eq!(node.send(client, 40_001, ip("203.0.113.20"), false), XDP_TX);
    assert_ne!(node.last_outer_dst(), pinned);

    // The spray: ACKs from 4096 random sources to a's VIP, each a miss that
    // takes a flow-table entry (bounded by count, seeded for repeatability).
    // Each is sent twice: the kernel's LRU gives entries hit since their
    // insertion a second chance, so a spray of one-packet flows would be
    // evicted before b's flow even in one shared table; repeated, it
    // evicts b's flow there.
    let mut state = 0x9e37_79b9_u32;
    for _ in 0..4096 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [w, x, y, z] = state.to_be_bytes();
        let src = IpAddr::from([10, w, x, y]);
        let port = 1024 + u16::from(z) * 200;
        for _ in 0..2 {
            assert_eq!(node.send(src, port, ip("203.0.113.10"), true), XDP_TX);
        }
    }
    let per_tenant = |t: u32| {
        node.dp
            .flows()
            .iter()
            .filter(|(_, v)| v.tenant_id == t)
            .count()
    };
    assert!(
        per_tenant(id_a) <= 512,
        "a holds {} flows",
        per_tenant(id_a)
    );
    assert_eq!(per_tenant(id_b), 2, "b's flows are untouched");

    assert_eq!(node.send(client, 40_000, ip("203.0.113.20"), true), XDP_TX);
    assert_eq!(
        node.last_outer_dst(),
        pinned,
        "b's client was re-steered off its drained backend"
    );
}

#[test]
fn icmp_errors_obey_the_tenants_policy() {
    // 1000 packets/s = 100 per 100 ms window for "limited".
    let mut node = Node::new(
        &(tenant(
            "denies",
            "203.0.113.10",
            "10.0.1.1",
            "[tenant.acl]\ndeny = [\"198.51.100.0/24\"]",
            "",
        ) + &tenant("other", "203.0.113.20", "10.0.2.1", "", "")
            + &tenant(
                "limited",
                "203.0.113.30",
                "10.0.3.1",
                "[tenant.limits]\npackets_per_second = 1000",
                "",
            )),
    );
    let vip = "203.0.113.10";
    assert_eq!(node.send(ip("192.0.2.7"), 1000, ip(vip), false), XDP_TX);

    // A router's frag-needed about the real flow still reaches its backend.
    let router = "192.0.2.254";
    let flow = ("192.0.2.7", 1000);
    assert_eq!(node.send_frag_needed(router, vip, vip, flow), XDP_TX);
    // From a source the tenant denies: dropped like its TCP would be.
    assert_eq!(
        node.send_frag_needed("198.51.100.1", vip, vip, flow),
        XDP_DROP
    );
    assert_eq!(node.drops("denies", DropReason::ACL_DENY), 1);
    // Sent to another tenant's VIP (or any address but the quoted VIP).
    for to in ["203.0.113.20", "192.0.2.1"] {
        assert_eq!(node.send_frag_needed(router, to, vip, flow), XDP_DROP);
    }
    assert_eq!(node.drops("denies", DropReason::ICMP_DST_MISMATCH), 2);
    assert_eq!(node.drops("other", DropReason::ICMP_DST_MISMATCH), 0);
    // About a flow the table does not hold: no backend sent that packet.
    for port in 1001..1011 {
        assert_eq!(
            node.send_frag_needed(router, vip, vip, ("192.0.2.7", port)),
            XDP_DROP
        );
    }
    assert_eq!(node.drops("denies", DropReason::ICMP_NO_FLOW), 10);

    // The tenant's packet budget counts ICMP errors too.
    let vip = "203.0.113.30";
    assert_eq!(node.send(ip("192.0.2.8"), 2000, ip(vip), false), XDP_TX);
    let mut passed = 0;
    for _ in 0..500 {
        if node.send_frag_needed(router, vip, vip, ("192.0.2.8", 2000)) == XDP_TX {
            passed += 1;
        }
    }
    assert!(
        (99..=200).contains(&passed),
        "{passed} of 500 ICMP errors passed (budget 100 per window)"
    );
    assert_eq!(node.drops("limited", DropReason::TENANT_RATE), 500 - passed);
}

#[test]
fn policy_configuration_errors_name_the_field() {
    let bad_limit = format!(
        "[node]\ninterface = \"eth0\"\n{}",
        tenant(
            "acme",
            "203.0.113.10",
            "10.0.1.1",
            "[tenant.limits]\npackets_per_secnd = 5",
            ""
        )
    );
    let e = config::parse(&bad_limit, "lb.toml").expect_err("unknown limit");
    assert!(
        e.to_string().contains("packets_per_secnd") && e.to_string().contains("known:"),
        "{e}"
    );
    let bad_prefix = format!(
        "[node]\ninterface = \"eth0\"\n{}",
        tenant(
            "acme",
            "203.0.113.10",
            "10.0.1.1",
            "[tenant.acl]\ndeny = [\"10.0.0.1/8\"]",
            ""
        )
    );
    let e = config::parse(&bad_prefix, "lb.toml").expect_err("host bits");
    assert!(e.to_string().contains("acl.deny[0]"), "{e}");
}
