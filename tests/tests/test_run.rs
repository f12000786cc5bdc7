//! Table-driven `BPF_PROG_TEST_RUN` tests of the balancer XDP program
//! (`lb_balancer`).
//!
//! # The harness
//!
//! Every test function loads one private [`Dataplane`] (no pins, ~50 ms) and
//! fills its maps with the same small world ([`Env::new`]):
//!
//! - tenant 1: pool 1 with IPv4 backends 0-2 (`10.1.0.1`-`3`), pool 3 with
//!   IPv6 backends 6-7 (`2001:db8:b1::1`-`2`); VIPs `203.0.113.10` TCP 80 and
//!   UDP 53 (pool 1), `203.0.113.10` TCP 443 served locally (`VIP_F_LOCAL`),
//!   `203.0.113.11` TCP any port (port 0, pool 1), `[2001:db8::10]` TCP 443
//!   (pool 3), and `203.0.113.12` TCP 80 whose pool (9) does not exist;
//! - tenant 2: pool 2 with IPv4 backends 3-5 (`10.2.0.1`-`3`); VIP
//!   `203.0.113.20` TCP 80;
//! - rings of 13 slots (prime) filled round-robin with the pool's backend ids
//!   (no Maglev: the tests compute the slot themselves);
//! - a next hop seeded for every backend in the per-CPU cache with
//!   `expires_ns = u64::MAX`, MTU 1500 and ifindex 1 (`lo`, the ingress
//!   interface of a test run without a context), so the program never calls
//!   `bpf_fib_lookup` and forwards with `XDP_TX`.
//!
//! A test is a table of [`Case`]s run in order against that data plane, so a
//! case sees the flow table, rings and backends the previous cases left. For
//! each case the harness
//!
//! 1. runs the case's `setup` (map writes: rings, backend states...);
//! 2. works out which backend the case must reach ([`To`]) from the maps as
//!    they are before the run: the ring slot `flow_hash(key, seed) %
//!    ring_size` of the VIP's pool, or the flow-table entry;
//! 3. snapshots every counter (global, per tenant, per VIP, per backend,
//!    drops by reason for tenants 0-2) and the number of flow-table entries;
//! 4. runs the packet once through `BPF_PROG_TEST_RUN`;
//! 5. checks the XDP action, which backend the output went to, and the output
//!    frame ([`Output`]) field by field;
//! 6. checks that every counter moved by exactly what the case lists
//!    (anything not listed must not move; `rx` always moves by one);
//! 7. for a steered TCP/UDP packet, checks the flow-table entry.
//!
//! Every assertion message starts with the case name.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::{
    Icmpv4Type, Icmpv6Type, IpHeaders, PacketBuilder, PacketBuilderStep, VlanId,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
};
use lb::dataplane::{BALANCER_PROGRAM, Dataplane, LoadOptions};
use lb_common::{
    BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UNUSED, BACKEND_UP, Backend, DropReason, FAMILY_V4,
    FAMILY_V6, FORWARD_IPIP, FORWARD_L2DSR, FlowKey, FlowValue, NO_TENANT, NextHop, PROTO_TCP,
    PROTO_UDP, RING_EMPTY, Settings, TrafficCounters, VIP_F_LOCAL, VipAddrKey, VipInfo, VipKey,
    global_counter, hash::flow_hash,
};

// ---- XDP actions ----

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "not an XDP action",
    }
}

// ---- The world every test starts from ----

const SEED: u32 = 0x5eed_1234;
const RING_SIZE: usize = 13;
const MTU: u16 = 1500;
/// `lo`: the ingress interface of a test run without a context.
const LO_IFINDEX: u32 = 1;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Source MAC of the seeded next hops (distinct from [`LB_MAC`], so a
/// rewritten source is told apart from an untouched destination).
const NH_SMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const NH_SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NH_SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1));
/// A router that sends ICMP errors about VIP flows.
const ROUTER4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 254));
const ROUTER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0xfe));
/// Addresses that carry no VIP.
const OTHER4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));
const OTHER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 1));

const VIP4_A: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
const VIP4_ANY: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 11));
const VIP4_NOPOOL: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 12));
const VIP4_T2: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));

const TENANT_1: u32 = 1;
const TENANT_2: u32 = 2;
/// Tenant 1, IPv4 backends 0-2.
const POOL_1: u32 = 1;
/// Tenant 2, IPv4 backends 3-5.
const POOL_2: u32 = 2;
/// Tenant 1, IPv6 backends 6-7.
const POOL_V6: u32 = 3;
/// Named by a VIP, never published.
const POOL_MISSING: u32 = 9;

const T1_BACKENDS: &[u32] = &[0, 1, 2];
const T2_BACKENDS: &[u32] = &[3, 4, 5];
const V6_BACKENDS: &[u32] = &[6, 7];

const VIP_HTTP: u32 = 1;
const VIP_DNS: u32 = 2;
const VIP_ANY: u32 = 3;
const VIP_V6: u32 = 4;
const VIP_T2: u32 = 5;
const VIP_NOPOOL: u32 = 6;
/// Served by `lbd` on the node (L7): passed to the stack.
const VIP_LOCAL: u32 = 7;

/// Counter slots the harness watches.
const TENANTS_WATCHED: u32 = 3;
const VIPS_WATCHED: u32 = 8;
const BACKENDS_WATCHED: u32 = 10;

struct VipDef {
    id: u32,
    addr: IpAddr,
    port: u16,
    proto: u8,
    tenant: u32,
    pool: u32,
    flags: u32,
}

const VIPS: [VipDef; 7] = [
    VipDef {
        id: VIP_HTTP,
        addr: VIP4_A,
        port: 80,
        proto: PROTO_TCP,
        tenant: TENANT_1,
        pool: POOL_1,
        flags: 0,
    },
    VipDef {
        id: VIP_DNS,
        addr: VIP4_A,
        port: 53,
        proto: PROTO_UDP,
        tenant: TENANT_1,
        pool: POOL_1,
        flags: 0,
    },
    VipDef {
        id: VIP_ANY,
        addr: VIP4_ANY,
        port: 0,
        proto: PROTO_TCP,
        tenant: TENANT_1,
        pool: POOL_1,
        flags: 0,
    },
    VipDef {
        id: VIP_V6,
        addr: VIP6,
        port: 443,
        proto: PROTO_TCP,
        tenant: TENANT_1,
        pool: POOL_V6,
        flags: 0,
    },
    VipDef {
        id: VIP_T2,
        addr: VIP4_T2,
        port: 80,
        proto: PROTO_TCP,
        tenant: TENANT_2,
        pool: POOL_2,
        flags: 0,
    },
    VipDef {
        id: VIP_NOPOOL,
        addr: VIP4_NOPOOL,
        port: 80,
        proto: PROTO_TCP,
        tenant: TENANT_1,
        pool: POOL_MISSING,
        flags: 0,
    },
    VipDef {
        id: VIP_LOCAL,
        addr: VIP4_A,
        port: 443,
        proto: PROTO_TCP,
        tenant: TENANT_1,
        pool: POOL_1,
        flags: VIP_F_LOCAL,
    },
];

/// The address of backend `id` in the initial world.
fn backend_addr(id: u32) -> IpAddr {
    let low = u8::try_from(id).expect("small backend id");
    match id {
        0..=2 => IpAddr::V4(Ipv4Addr::new(10, 1, 0, low + 1)),
        3..=5 => IpAddr::V4(Ipv4Addr::new(10, 2, 0, low - 2)),
        6..=7 => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xb1,
            0,
            0,
            0,
            0,
            u16::from(low) - 5,
        )),
        _ => panic!("backend {id} is not part of the test world"),
    }
}

fn backend_tenant_pool(id: u32) -> (u32, u32) {
    match id {
        0..=2 => (TENANT_1, POOL_1),
        3..=5 => (TENANT_2, POOL_2),
        _ => (TENANT_1, POOL_V6),
    }
}

/// The MAC of backend `id` (the seeded next hop's destination MAC).
fn backend_mac(id: u32) -> [u8; 6] {
    [
        0x02,
        0,
        0,
        0,
        0x10,
        u8::try_from(id).expect("small backend id"),
    ]
}

/// An address as the maps hold it: network order, IPv4 in the first four
/// bytes, and its family tag.
fn addr16(addr: IpAddr) -> ([u8; 16], u8) {
    match addr {
        IpAddr::V4(a) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(a) => (a.octets(), FAMILY_V6),
    }
}

fn backend(id: u32, addr: IpAddr, state: u8, generation: u32) -> Backend {
    let (addr, family) = addr16(addr);
    let (tenant_id, pool_id) = backend_tenant_pool(id);
    Backend {
        addr,
        tenant_id,
        pool_id,
        generation,
        port: 0,
        weight: 1,
        family,
        state,
        _pad: [0; 2],
    }
}

fn nexthop(id: u32) -> NextHop {
    let src = match backend_addr(id) {
        IpAddr::V4(_) => addr16(IpAddr::V4(NH_SRC4)).0,
        IpAddr::V6(_) => NH_SRC6.octets(),
    };
    NextHop {
        expires_ns: u64::MAX,
        src,
        ifindex: LO_IFINDEX,
        mtu: MTU,
        dmac: backend_mac(id),
        smac: NH_SMAC,
        ..NextHop::default()
    }
}

/// A ring of [`RING_SIZE`] slots filled round-robin with `ids`.
fn ring(ids: &[u32]) -> Vec<u32> {
    ids.iter().copied().cycle().take(RING_SIZE).collect()
}

/// One loaded balancer with its maps.
struct Env {
    dp: Dataplane,
}

impl Env {
    /// The flow-table entry of `key`, in whichever tenant's table.
    fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        [TENANT_1, TENANT_2]
            .into_iter()
            .find_map(|t| self.dp.flow(t, key))
    }

    fn new(forwarding: u8) -> Self {
        Self::with_idle(forwarding, 0)
    }

    /// The world with `flow_idle_ns` set (0: flows never expire).
    fn with_idle(forwarding: u8, flow_idle_ns: u64) -> Self {
        let mut dp = Dataplane::load(&LoadOptions::default()).expect("loading the balancer object");
        dp.program(BALANCER_PROGRAM)
            .expect("the verifier accepts lb_balancer");
        dp.set_settings(Settings {
            flow_idle_ns,
            hash_seed: SEED,
            forwarding,
            ..Settings::default()
        })
        .expect("writing settings");
        for tenant in [TENANT_1, TENANT_2] {
            dp.set_flow_table(tenant, 1024)
                .expect("creating a flow table");
        }
        let mut env = Self { dp };
        for &id in T1_BACKENDS.iter().chain(T2_BACKENDS).chain(V6_BACKENDS) {
            env.set_backend(id, backend(id, backend_addr(id), BACKEND_UP, 1));
            env.dp
                .set_nexthop(id, &nexthop(id))
                .expect("seeding a next hop");
        }
        env.write_ring(POOL_1, TENANT_1, T1_BACKENDS);
        env.write_ring(POOL_2, TENANT_2, T2_BACKENDS);
        env.write_ring(POOL_V6, TENANT_1, V6_BACKENDS);
        for v in &VIPS {
            let (addr, family) = addr16(v.addr);
            let key = VipKey {
                addr,
                port: v.port.to_be(),
                proto: v.proto,
                family,
            };
            let info = VipInfo {
                tenant_id: v.tenant,
                pool_id: v.pool,
                vip_id: v.id,
                flags: v.flags,
            };
            env.dp.set_vip(&key, &info).expect("writing a VIP");
            let akey = VipAddrKey {
                addr,
                family,
                _pad: [0; 3],
            };
            env.dp
                .set_vip_addr(&akey, v.tenant)
                .expect("writing a VIP address");
        }
        env
    }

    fn set_backend(&mut self, id: u32, b: Backend) {
        self.dp.set_backend(id, &b).expect("writing a backend");
    }

    fn backend(&self, id: u32) -> Backend {
        self.dp.backend(id).expect("reading a backend")
    }

    fn set_state(&mut self, id: u32, state: u8) {
        let mut b = self.backend(id);
        b.state = state;
        self.set_backend(id, b);
    }

    /// Publishes a ring of [`RING_SIZE`] slots filled round-robin with `ids`.
    fn write_ring(&mut self, pool: u32, tenant: u32, ids: &[u32]) {
        self.dp
            .write_ring(pool, tenant, &ring(ids))
            .expect("writing a ring");
    }

    /// The VIP a flow key addresses: the exact port, else the any-port entry.
    fn vip_of(&self, key: &FlowKey) -> Option<VipInfo> {
        let vips = self.dp.vips();
        let find = |port: u16| {
            vips.iter()
                .find(|(k, _)| {
                    k.addr == key.dst
                        && k.family == key.family
                        && k.proto == key.proto
                        && k.port == port
                })
                .map(|(_, v)| *v)
        };
        find(key.dport).or_else(|| find(0))
    }

    /// The backend the ring names for `key`, as the kernel must compute it.
    fn ring_choice(&self, key: &FlowKey) -> u32 {
        let vip = self.vip_of(key).expect("the flow's VIP exists");
        let ring = self
            .dp
            .ring(vip.pool_id)
            .expect("the VIP's pool has a ring");
        let size = u32::try_from(ring.len()).expect("ring size fits u32");
        assert!(size > 0, "ring of pool {} is empty", vip.pool_id);
        ring[usize::try_from(flow_hash(key, SEED) % size).expect("slot index")]
    }

    /// A client port of `client` towards `vip`:`dport` (TCP) that the current
    /// ring sends to `backend`.
    fn port_landing_on(&self, client: IpAddr, vip: IpAddr, dport: u16, backend: u32) -> u16 {
        (40_000..60_000)
            .find(|&port| {
                let key = make_key(client, vip, port, dport, PROTO_TCP);
                self.ring_choice(&key) == backend
            })
            .unwrap_or_else(|| panic!("no client port lands on backend {backend}"))
    }

    /// Runs `packet` once through the balancer: (action, output frame).
    fn run(&mut self, name: &str, packet: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 4096];
        let prog = self
            .dp
            .program(BALANCER_PROGRAM)
            .expect("the balancer is loaded");
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("{name}: BPF_PROG_TEST_RUN failed: {e}"));
        out.truncate(usize::try_from(result.data_size_out).expect("output size"));
        (result.return_value, out)
    }

    fn counters(&self) -> Counters {
        Counters {
            global: (0..global_counter::COUNT)
                .map(|c| self.dp.global(c))
                .collect(),
            drops: (0..TENANTS_WATCHED)
                .map(|t| self.dp.tenant_drops(t).by_reason.to_vec())
                .collect(),
            tenants: (0..TENANTS_WATCHED)
                .map(|t| self.dp.tenant_stats(t))
                .collect(),
            vips: (0..VIPS_WATCHED).map(|v| self.dp.vip_stats(v)).collect(),
            backends: (0..BACKENDS_WATCHED)
                .map(|b| self.dp.backend_stats(b))
                .collect(),
            flows: self.dp.flows().len(),
        }
    }
}

fn make_key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> FlowKey {
    let (src, family) = addr16(src);
    let (dst, _) = addr16(dst);
    FlowKey {
        src,
        dst,
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        family,
        _pad: [0; 2],
    }
}

// ---- Counters ----

#[derive(Clone, Debug, PartialEq, Eq)]
struct Counters {
    global: Vec<u64>,
    /// `[tenant][reason]`.
    drops: Vec<Vec<u64>>,
    tenants: Vec<TrafficCounters>,
    vips: Vec<TrafficCounters>,
    backends: Vec<TrafficCounters>,
    flows: usize,
}

fn idx(i: u32) -> usize {
    usize::try_from(i).expect("index fits usize")
}

fn count(c: &mut TrafficCounters, bytes: u64, new_flow: bool) {
    c.packets += 1;
    c.bytes += bytes;
    c.new_flows += u64::from(new_flow);
}

/// Lists every difference between `want` and `got`, by counter name.
fn counter_diffs(want: &Counters, got: &Counters) -> Vec<String> {
    let mut diffs = Vec::new();
    for (i, (w, g)) in want.global.iter().zip(&got.global).enumerate() {
        if w != g {
            diffs.push(format!(
                "global {}: want {w}, got {g}",
                global_counter::NAMES[i]
            ));
        }
    }
    for (t, (wt, gt)) in want.drops.iter().zip(&got.drops).enumerate() {
        for (r, (w, g)) in wt.iter().zip(gt).enumerate() {
            if w != g {
                diffs.push(format!(
                    "tenant {t} drops {}: want {w}, got {g}",
                    DropReason::ALL[r].name()
                ));
            }
        }
    }
    let traffic = [
        ("tenant", &want.tenants, &got.tenants),
        ("vip", &want.vips, &got.vips),
        ("backend", &want.backends, &got.backends),
    ];
    for (what, w, g) in traffic {
        for (i, (w, g)) in w.iter().zip(g.iter()).enumerate() {
            if w != g {
                diffs.push(format!("{what} {i} traffic: want {w:?}, got {g:?}"));
            }
        }
    }
    if want.flows != got.flows {
        diffs.push(format!(
            "flow-table entries: want {}, got {}",
            want.flows, got.flows
        ));
    }
    diffs
}

// ---- Cases ----

/// What the output frame must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// Not looked at (dropped packets).
    NotChecked,
    /// Byte-identical to the input.
    Unchanged,
    /// IPIP / IP6IP6 to the case's backend ([`Case::to`]).
    Encap,
    /// L2 DSR to the case's backend: only the MACs differ from the input.
    L2Rewrite,
    /// An ICMP fragmentation-needed / packet-too-big answer to the client
    /// announcing this next-hop MTU.
    TooBig(u32),
}

/// Which backend the case must reach, resolved just before the run.
#[derive(Clone, Copy, Debug)]
enum To {
    /// The ring slot `flow_hash(key, seed) % ring_size` of the VIP's pool.
    Ring,
    /// [`To::Ring`], and that backend must be one of these.
    RingWithin(&'static [u32]),
    /// The backend of the flow's current flow-table entry.
    Flow,
    /// This backend.
    Id(u32),
}

/// Which traffic counters the packet moves (by one packet of its IP length).
#[derive(Clone, Copy, Debug)]
enum Counted {
    Nothing,
    /// The VIP's counters only (a packet dropped before a backend was chosen).
    Vip(u32),
    /// Tenant and VIP, no backend, no new flow (a local VIP's packet).
    Local {
        tenant: u32,
        vip: u32,
    },
    /// Tenant, VIP and the chosen backend; `new_flow` when it went through
    /// the ring.
    Flow {
        tenant: u32,
        vip: u32,
        new_flow: bool,
    },
}

struct Case {
    name: String,
    /// Map writes before the packet runs.
    setup: Box<dyn Fn(&mut Env)>,
    packet: Vec<u8>,
    action: u32,
    output: Output,
    to: Option<To>,
    counted: Counted,
    /// Drops counted, as (tenant, reason).
    drops: Vec<(u32, DropReason)>,
    /// Global counters bumped once each, besides `rx`.
    globals: Vec<u32>,
}

impl Case {
    fn new(name: impl Into<String>, packet: Vec<u8>, action: u32) -> Self {
        Self {
            name: name.into(),
            setup: Box::new(|_| {}),
            packet,
            action,
            output: Output::NotChecked,
            to: None,
            counted: Counted::Nothing,
            drops: Vec::new(),
            globals: Vec::new(),
        }
    }

    /// Passed untouched; `globals` are the counters it bumps.
    fn pass(name: impl Into<String>, packet: Vec<u8>, globals: &[u32]) -> Self {
        Self::new(name, packet, XDP_PASS)
            .output(Output::Unchanged)
            .globals(globals)
    }

    /// Dropped with one `(tenant, reason)`, plus `globals`.
    fn drop(
        name: impl Into<String>,
        packet: Vec<u8>,
        tenant: u32,
        reason: DropReason,
        globals: &[u32],
    ) -> Self {
        Self::new(name, packet, XDP_DROP)
            .drops(&[(tenant, reason)])
            .globals(globals)
    }

    /// Forwarded with `XDP_TX` (encapsulated or L2-rewritten per `output`).
    fn forward(name: impl Into<String>, packet: Vec<u8>, output: Output, to: To) -> Self {
        Self::new(name, packet, XDP_TX)
            .output(output)
            .to(to)
            .globals(&[global_counter::FORWARDED])
    }

    fn setup(mut self, setup: impl Fn(&mut Env) + 'static) -> Self {
        self.setup = Box::new(setup);
        self
    }

    fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    fn to(mut self, to: To) -> Self {
        self.to = Some(to);
        self
    }

    fn counted(mut self, counted: Counted) -> Self {
        self.counted = counted;
        self
    }

    /// Counted for tenant 1's TCP VIP 203.0.113.10:80.
    fn http(self, new_flow: bool) -> Self {
        self.counted(Counted::Flow {
            tenant: TENANT_1,
            vip: VIP_HTTP,
            new_flow,
        })
    }

    fn drops(mut self, drops: &[(u32, DropReason)]) -> Self {
        self.drops.extend_from_slice(drops);
        self
    }

    fn globals(mut self, globals: &[u32]) -> Self {
        self.globals.extend_from_slice(globals);
        self
    }
}

/// Runs `cases` in order against `env`.
fn run_table(env: &mut Env, cases: &[Case]) {
    let mut names = std::collections::HashSet::new();
    for case in cases {
        assert!(
            names.insert(case.name.as_str()),
            "duplicate case name {}",
            case.name
        );
    }
    for case in cases {
        run_case(env, case);
    }
}

fn run_case(env: &mut Env, case: &Case) {
    let name = case.name.as_str();
    (case.setup)(env);
    let key = flow_key(&case.packet);
    let entry_before = key.and_then(|k| env.flow(&k));
    let chosen = case
        .to
        .map(|to| resolve(env, name, to, key, entry_before.as_ref()));
    let before = env.counters();

    let (action, out) = env.run(name, &case.packet);
    if action != case.action {
        // Show what the program counted: it usually says why.
        let moved = counter_diffs(&before, &env.counters());
        panic!(
            "{name}: XDP action: want {}, got {}; counters that moved \
             (want = before, got = after):\n  {}",
            action_name(case.action),
            action_name(action),
            moved.join("\n  ")
        );
    }

    if let (Some(want), Some(got)) = (
        chosen,
        backend_reached(env, &case.packet, &out, case.output),
    ) {
        assert_eq!(
            got, want,
            "{name}: the packet went to backend {got}, want backend {want}"
        );
    }
    let need = |what: &str| chosen.unwrap_or_else(|| panic!("{name}: {what} needs a backend"));
    match case.output {
        Output::NotChecked => {}
        Output::Unchanged => assert_same_bytes(name, "output bytes", &out, &case.packet, 0),
        Output::Encap => check_encap(name, env, &case.packet, &out, need("Output::Encap"), key),
        Output::L2Rewrite => check_l2_rewrite(name, &case.packet, &out, need("Output::L2Rewrite")),
        Output::TooBig(mtu) => check_too_big(name, &case.packet, &out, mtu),
    }

    let want = expected_counters(case, &before, chosen, entry_before.is_none());
    let diffs = counter_diffs(&want, &env.counters());
    assert!(
        diffs.is_empty(),
        "{name}: counters:\n  {}",
        diffs.join("\n  ")
    );

    // The flow-table entry of a steered TCP/UDP packet names the backend.
    if let (Some(id), Some(key), Counted::Flow { tenant, .. }) = (chosen, key, case.counted)
        && is_tcp_or_udp(&case.packet)
    {
        let entry = env
            .flow(&key)
            .unwrap_or_else(|| panic!("{name}: no flow-table entry after the run"));
        let b = env.backend(id);
        assert_eq!(entry.backend_id, id, "{name}: flow entry backend");
        assert_eq!(entry.pool_id, b.pool_id, "{name}: flow entry pool");
        assert_eq!(
            entry.generation, b.generation,
            "{name}: flow entry generation"
        );
        assert_eq!(entry.tenant_id, tenant, "{name}: flow entry tenant");
    }
}

/// The backend a case must reach, from the maps as they are before the run.
fn resolve(env: &Env, name: &str, to: To, key: Option<FlowKey>, entry: Option<&FlowValue>) -> u32 {
    let key = key.unwrap_or_else(|| {
        panic!("{name}: the case names a backend but the packet has no flow key")
    });
    match to {
        To::Ring => env.ring_choice(&key),
        To::RingWithin(allowed) => {
            let id = env.ring_choice(&key);
            assert!(
                allowed.contains(&id),
                "{name}: the ring names backend {id}, not one of {allowed:?}"
            );
            id
        }
        To::Flow => {
            entry
                .unwrap_or_else(|| {
                    panic!("{name}: the flow has no flow-table entry before the run")
                })
                .backend_id
        }
        To::Id(id) => id,
    }
}

/// The counters after `case` ran: `before` moved by what the case lists.
/// `no_entry_before`: the packet's flow had no flow-table entry.
fn expected_counters(
    case: &Case,
    before: &Counters,
    chosen: Option<u32>,
    no_entry_before: bool,
) -> Counters {
    let ip_len = u64::try_from(ip_len(&case.packet)).expect("length");
    let mut want = before.clone();
    want.global[idx(global_counter::RX)] += 1;
    for &g in &case.globals {
        want.global[idx(g)] += 1;
    }
    for &(tenant, reason) in &case.drops {
        want.drops[idx(tenant)][reason.index()] += 1;
        want.tenants[idx(tenant)].drops += 1;
    }
    match case.counted {
        Counted::Nothing => {}
        Counted::Vip(vip) => {
            want.vips[idx(vip)].packets += 1;
            want.vips[idx(vip)].bytes += ip_len;
        }
        Counted::Local { tenant, vip } => {
            count(&mut want.tenants[idx(tenant)], ip_len, false);
            count(&mut want.vips[idx(vip)], ip_len, false);
        }
        Counted::Flow {
            tenant,
            vip,
            new_flow,
        } => {
            let id =
                chosen.unwrap_or_else(|| panic!("{}: Counted::Flow needs a backend", case.name));
            count(&mut want.tenants[idx(tenant)], ip_len, new_flow);
            count(&mut want.vips[idx(vip)], ip_len, new_flow);
            count(&mut want.backends[idx(id)], ip_len, new_flow);
            // A new flow adds an entry unless it replaced a stale one.
            want.flows += usize::from(new_flow && no_entry_before);
        }
    }
    want
}

// ---- Reading packets (the harness's own parser, independent of the program's) ----

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn l2_len(frame: &[u8]) -> usize {
    if frame.len() >= 14 && matches!(be16(frame, 12), 0x8100 | 0x88a8) {
        18
    } else {
        14
    }
}

/// The IP packet's length from its header (IPv4 total length, IPv6 40 +
/// payload length); 0 when there is none.
fn ip_len(frame: &[u8]) -> usize {
    let l2 = l2_len(frame);
    let Some(ip) = frame.get(l2..) else { return 0 };
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 4 && be16(frame, l2 - 2) == 0x0800 => usize::from(be16(ip, 2)),
        Some(6) if ip.len() >= 6 && be16(frame, l2 - 2) == 0x86dd => 40 + usize::from(be16(ip, 4)),
        _ => 0,
    }
}

/// (family, protocol, L3 offset, L4 offset) of a well-formed IP frame.
fn l3(frame: &[u8]) -> Option<(u8, u8, usize, usize)> {
    let l2 = l2_len(frame);
    let ip = frame.get(l2..)?;
    match be16(frame, l2 - 2) {
        0x0800 if ip.len() >= 20 => {
            Some((FAMILY_V4, ip[9], l2, l2 + usize::from(ip[0] & 0x0f) * 4))
        }
        0x86dd if ip.len() >= 40 => Some((FAMILY_V6, ip[6], l2, l2 + 40)),
        _ => None,
    }
}

fn ip_of(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

fn is_tcp_or_udp(frame: &[u8]) -> bool {
    matches!(l3(frame), Some((_, PROTO_TCP | PROTO_UDP, _, _)))
}

/// The flow a frame belongs to, as the client sees it: its own 5-tuple for
/// TCP/UDP, the reversed quoted 5-tuple for an ICMP error.
fn flow_key(frame: &[u8]) -> Option<FlowKey> {
    let (family, proto, l3_off, l4) = l3(frame)?;
    let (src, dst) = addrs(frame, family, l3_off)?;
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let p = frame.get(l4..l4 + 4)?;
            Some(make_key(src, dst, be16(p, 0), be16(p, 2), proto))
        }
        1 | 58 => {
            let q = l4 + 8;
            let (q_proto, q_l4) = if family == FAMILY_V4 {
                let h = frame.get(q..q + 20)?;
                (h[9], q + usize::from(h[0] & 0x0f) * 4)
            } else {
                (frame.get(q..q + 40)?[6], q + 40)
            };
            let (vip, client) = addrs(frame, family, q)?;
            let p = frame.get(q_l4..q_l4 + 4)?;
            Some(make_key(client, vip, be16(p, 2), be16(p, 0), q_proto))
        }
        _ => None,
    }
}

/// (source, destination) of the IP header at `off`.
fn addrs(frame: &[u8], family: u8, off: usize) -> Option<(IpAddr, IpAddr)> {
    if family == FAMILY_V4 {
        let h = frame.get(off..off + 20)?;
        let a = |i: usize| IpAddr::V4(Ipv4Addr::new(h[i], h[i + 1], h[i + 2], h[i + 3]));
        Some((a(12), a(16)))
    } else {
        let h = frame.get(off..off + 40)?;
        let a = |i: usize| {
            IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&h[i..i + 16]).expect("16 bytes"),
            ))
        };
        Some((a(8), a(24)))
    }
}

/// TOS (IPv4) or traffic class (IPv6) of the frame's IP header.
fn tos(frame: &[u8]) -> u8 {
    let l2 = l2_len(frame);
    match frame[l2] >> 4 {
        4 => frame[l2 + 1],
        _ => (frame[l2] << 4) | (frame[l2 + 1] >> 4),
    }
}

/// The destination of the outer IP header of an encapsulated output.
fn outer_dst(input: &[u8], out: &[u8]) -> IpAddr {
    let l2 = l2_len(input);
    let family = if out[l2] >> 4 == 4 {
        FAMILY_V4
    } else {
        FAMILY_V6
    };
    addrs(out, family, l2).expect("an outer IP header").1
}

// ---- Checksums ----

/// One's-complement sum of big-endian 16-bit words (odd tail zero-padded).
fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// The checksum `data` should carry in its 16-bit field at `field`.
fn checksum_of(data: &[u8], field: usize, seed: u32) -> u16 {
    let mut copy = data.to_vec();
    copy[field] = 0;
    copy[field + 1] = 0;
    fold(ones_sum(&copy, seed))
}

fn ipv4_header_checksum(h: &[u8]) -> u16 {
    checksum_of(h, 10, 0)
}

/// The sum of the IPv6 pseudo-header of an ICMP for IPv6 message (RFC 8200, 8.1).
fn icmpv6_pseudo_sum(src: &[u8], dst: &[u8], len: usize) -> u32 {
    let mut sum = ones_sum(src, 0);
    sum = ones_sum(dst, sum);
    sum += u32::try_from(len).expect("length");
    sum + 58
}

// ---- Checking outputs ----

/// The L2 header the program wrote for backend `id`: destination = the next
/// hop's MAC, source = the next hop's source MAC, the input's VLAN tag kept,
/// the ether type of `family`.
fn check_l2_towards(name: &str, input: &[u8], out: &[u8], id: u32, family: u8) {
    let nh = nexthop(id);
    assert_eq!(
        out[0..6],
        nh.dmac,
        "{name}: Ethernet destination (the next hop's MAC)"
    );
    assert_eq!(
        out[6..12],
        nh.smac,
        "{name}: Ethernet source (the next hop's source MAC)"
    );
    let ether_type = if family == FAMILY_V4 { 0x0800 } else { 0x86dd };
    if l2_len(input) == 18 {
        assert_eq!(
            be16(out, 12),
            be16(input, 12),
            "{name}: VLAN TPID (want the input's {:#06x}, got {:#06x})",
            be16(input, 12),
            be16(out, 12)
        );
        assert_eq!(be16(out, 14), be16(input, 14), "{name}: VLAN TCI");
        assert_eq!(
            be16(out, 16),
            ether_type,
            "{name}: ether type inside the VLAN tag"
        );
    } else {
        assert_eq!(be16(out, 12), ether_type, "{name}: ether type");
    }
}

/// Which backend of the world an encapsulated (by outer destination) or
/// L2-rewritten (by destination MAC) output went to.
fn backend_reached(env: &Env, input: &[u8], out: &[u8], output: Output) -> Option<u32> {
    match output {
        Output::Encap => {
            let dst = outer_dst(input, out);
            (0..BACKENDS_WATCHED).find(|&id| {
                let b = env.backend(id);
                b.state != BACKEND_UNUSED && ip_of(&b.addr, b.family) == dst
            })
        }
        Output::L2Rewrite => (0..BACKENDS_WATCHED).find(|&id| out[0..6] == backend_mac(id)),
        _ => None,
    }
}

/// IPIP / IP6IP6 towards backend `id`, checked field by field.
fn check_encap(name: &str, env: &Env, input: &[u8], out: &[u8], id: u32, key: Option<FlowKey>) {
    let b = env.backend(id);
    let nh = nexthop(id);
    let l2 = l2_len(input);
    let inner_len = ip_len(input);
    let inner_family = l3(input).expect("the input is IP").0;
    let inner_proto = if inner_family == FAMILY_V4 { 4 } else { 41 };
    check_l2_towards(name, input, out, id, b.family);
    if b.family == FAMILY_V4 {
        assert_eq!(
            out.len(),
            input.len() + 20,
            "{name}: output length (input + 20-byte outer IPv4 header)"
        );
        let o = &out[l2..l2 + 20];
        assert_eq!(o[0], 0x45, "{name}: outer IPv4 version/IHL");
        assert_eq!(
            o[1],
            tos(input),
            "{name}: outer IPv4 TOS (inner DSCP and ECN copied)"
        );
        assert_eq!(
            usize::from(be16(o, 2)),
            inner_len + 20,
            "{name}: outer IPv4 total length"
        );
        assert_eq!(
            be16(o, 6) & 0x3fff,
            0,
            "{name}: outer IPv4 is not a fragment (MF, offset)"
        );
        assert_eq!(o[8], 64, "{name}: outer IPv4 TTL");
        assert_eq!(o[9], inner_proto, "{name}: outer IPv4 protocol");
        assert_eq!(
            be16(o, 10),
            ipv4_header_checksum(o),
            "{name}: outer IPv4 header checksum"
        );
        assert_eq!(
            o[12..16],
            nh.src[..4],
            "{name}: outer IPv4 source (the next hop's source)"
        );
        assert_eq!(
            o[16..20],
            b.addr[..4],
            "{name}: outer IPv4 destination (backend {id})"
        );
        assert_same_bytes(
            name,
            "inner packet bytes",
            &out[l2 + 20..],
            &input[l2..],
            l2,
        );
    } else {
        assert_eq!(
            out.len(),
            input.len() + 40,
            "{name}: output length (input + 40-byte outer IPv6 header)"
        );
        let o = &out[l2..l2 + 40];
        assert_eq!(o[0] >> 4, 6, "{name}: outer IPv6 version");
        let tclass = (o[0] << 4) | (o[1] >> 4);
        assert_eq!(
            tclass,
            tos(input),
            "{name}: outer IPv6 traffic class (inner DSCP and ECN copied)"
        );
        let label = (u32::from(o[1] & 0x0f) << 16) | u32::from(be16(o, 2));
        let key = key.unwrap_or_else(|| panic!("{name}: no flow key"));
        assert_eq!(
            label,
            flow_hash(&key, SEED) & 0xf_ffff,
            "{name}: outer IPv6 flow label (the flow hash)"
        );
        assert_eq!(
            usize::from(be16(o, 4)),
            inner_len,
            "{name}: outer IPv6 payload length"
        );
        assert_eq!(o[6], inner_proto, "{name}: outer IPv6 next header");
        assert_eq!(o[7], 64, "{name}: outer IPv6 hop limit");
        assert_eq!(
            o[8..24],
            nh.src,
            "{name}: outer IPv6 source (the next hop's source)"
        );
        assert_eq!(
            o[24..40],
            b.addr,
            "{name}: outer IPv6 destination (backend {id})"
        );
        assert_same_bytes(
            name,
            "inner packet bytes",
            &out[l2 + 40..],
            &input[l2..],
            l2,
        );
    }
}

/// L2 DSR towards backend `id`: the MACs rewritten, everything else as is.
fn check_l2_rewrite(name: &str, input: &[u8], out: &[u8], id: u32) {
    assert_eq!(out.len(), input.len(), "{name}: output length");
    let nh = nexthop(id);
    assert_eq!(
        out[0..6],
        nh.dmac,
        "{name}: Ethernet destination (backend {id}'s MAC)"
    );
    assert_eq!(
        out[6..12],
        nh.smac,
        "{name}: Ethernet source (the next hop's source MAC)"
    );
    assert_same_bytes(name, "bytes after the MACs", &out[12..], &input[12..], 12);
}

/// Asserts `got == want`, naming the first differing byte (at `base` + its
/// index in the frame) rather than dumping both.
fn assert_same_bytes(name: &str, what: &str, got: &[u8], want: &[u8], base: usize) {
    assert_eq!(got.len(), want.len(), "{name}: {what}: length");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!(
            "{name}: {what} differ from the input, first at frame byte {}: got {:#04x}, want {:#04x}",
            base + i,
            got[i],
            want[i]
        );
    }
}

/// An ICMP fragmentation-needed (IPv4) or packet-too-big (IPv6) answer from
/// the VIP to the client, sent back where the input came from.
fn check_too_big(name: &str, input: &[u8], out: &[u8], mtu: u32) {
    const QUOTE: usize = 64;
    let l2 = l2_len(input);
    let (family, _, _, _) = l3(input).expect("the input is IP");
    let (client, vip) = addrs(input, family, l2).expect("the input has addresses");
    assert_eq!(
        out[0..6],
        input[6..12],
        "{name}: answer's Ethernet destination (the client's MAC)"
    );
    assert_eq!(
        out[6..12],
        input[0..6],
        "{name}: answer's Ethernet source (our MAC the client used)"
    );
    assert_eq!(
        out[12..l2],
        input[12..l2],
        "{name}: answer's ether type / VLAN tag"
    );
    if family == FAMILY_V4 {
        assert_eq!(out.len(), l2 + 20 + 8 + QUOTE, "{name}: answer length");
        let ip = &out[l2..l2 + 20];
        assert_eq!(ip[0], 0x45, "{name}: answer IPv4 version/IHL");
        assert_eq!(
            usize::from(be16(ip, 2)),
            20 + 8 + QUOTE,
            "{name}: answer IPv4 total length"
        );
        assert_eq!(
            be16(ip, 6) & 0x3fff,
            0,
            "{name}: answer IPv4 is not a fragment"
        );
        assert!(ip[8] > 1, "{name}: answer IPv4 TTL {}", ip[8]);
        assert_eq!(ip[9], 1, "{name}: answer IPv4 protocol (ICMP)");
        assert_eq!(
            be16(ip, 10),
            ipv4_header_checksum(ip),
            "{name}: answer IPv4 header checksum"
        );
        assert_eq!(
            addrs(out, FAMILY_V4, l2),
            Some((vip, client)),
            "{name}: answer IPv4 addresses (VIP -> client)"
        );
        let icmp = &out[l2 + 20..];
        assert_eq!(icmp[0], 3, "{name}: ICMP type (destination unreachable)");
        assert_eq!(icmp[1], 4, "{name}: ICMP code (fragmentation needed)");
        assert_eq!(
            be16(icmp, 2),
            checksum_of(icmp, 2, 0),
            "{name}: ICMP checksum"
        );
        assert_eq!(be16(icmp, 4), 0, "{name}: ICMP unused bytes 4-5");
        assert_eq!(
            u32::from(be16(icmp, 6)),
            mtu,
            "{name}: ICMP next-hop MTU (bytes 6-7)"
        );
        assert_eq!(
            icmp[8..],
            input[l2..l2 + QUOTE],
            "{name}: ICMP quote (the start of the original IP packet)"
        );
    } else {
        assert_eq!(out.len(), l2 + 40 + 8 + QUOTE, "{name}: answer length");
        let ip = &out[l2..l2 + 40];
        assert_eq!(ip[0] >> 4, 6, "{name}: answer IPv6 version");
        assert_eq!(
            usize::from(be16(ip, 4)),
            8 + QUOTE,
            "{name}: answer IPv6 payload length"
        );
        assert_eq!(ip[6], 58, "{name}: answer IPv6 next header (ICMPv6)");
        assert!(ip[7] > 1, "{name}: answer IPv6 hop limit {}", ip[7]);
        assert_eq!(
            addrs(out, FAMILY_V6, l2),
            Some((vip, client)),
            "{name}: answer IPv6 addresses (VIP -> client)"
        );
        let icmp = &out[l2 + 40..];
        assert_eq!(icmp[0], 2, "{name}: ICMPv6 type (packet too big)");
        assert_eq!(icmp[1], 0, "{name}: ICMPv6 code");
        let pseudo = icmpv6_pseudo_sum(&ip[8..24], &ip[24..40], icmp.len());
        assert_eq!(
            be16(icmp, 2),
            checksum_of(icmp, 2, pseudo),
            "{name}: ICMPv6 checksum (with pseudo-header)"
        );
        let got_mtu = u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]);
        assert_eq!(got_mtu, mtu, "{name}: ICMPv6 MTU");
        assert_eq!(
            icmp[8..],
            input[l2..l2 + QUOTE],
            "{name}: ICMPv6 quote (the start of the original packet)"
        );
    }
}

// ---- Building packets ----

enum L4 {
    Syn(u16, u16),
    Ack(u16, u16),
    Udp(u16, u16),
    Icmp4(Icmpv4Type),
    Icmp6(Icmpv6Type),
}

/// A recognisable payload of `n` bytes.
fn payload(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| u8::try_from(i % 251).expect("< 251"))
        .collect()
}

fn write(ip: PacketBuilderStep<IpHeaders>, l4: L4, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match l4 {
        L4::Syn(sport, dport) => ip
            .tcp(sport, dport, 1000, 64240)
            .syn()
            .write(&mut out, payload),
        L4::Ack(sport, dport) => ip
            .tcp(sport, dport, 1001, 64240)
            .ack(1)
            .write(&mut out, payload),
        L4::Udp(sport, dport) => ip.udp(sport, dport).write(&mut out, payload),
        L4::Icmp4(t) => ip.icmpv4(t).write(&mut out, payload),
        L4::Icmp6(t) => ip.icmpv6(t).write(&mut out, payload),
    }
    .expect("etherparse builds the packet");
    out
}

/// An Ethernet frame client MAC -> balancer MAC, with an optional 802.1Q tag.
fn frame(vlan: Option<u16>, src: IpAddr, dst: IpAddr, l4: L4, payload: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let ip = match (vlan, src, dst) {
        (None, IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (None, IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        (Some(v), IpAddr::V4(s), IpAddr::V4(d)) => eth
            .single_vlan(VlanId::try_new(v).expect("VLAN id"))
            .ipv4(s.octets(), d.octets(), 64),
        (Some(v), IpAddr::V6(s), IpAddr::V6(d)) => eth
            .single_vlan(VlanId::try_new(v).expect("VLAN id"))
            .ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    };
    write(ip, l4, payload)
}

/// A bare IP packet (no L2), e.g. to be quoted in an ICMP error.
fn ip_packet(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    };
    write(ip, l4, &[])
}

fn syn(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    frame(None, src, dst, L4::Syn(sport, dport), &payload(32))
}

fn ack(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    frame(None, src, dst, L4::Ack(sport, dport), &payload(100))
}

fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    frame(None, src, dst, L4::Udp(sport, dport), &payload(40))
}

/// A TCP frame whose IP packet is exactly `ip_len` bytes.
fn tcp_sized(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, ip_len: usize) -> Vec<u8> {
    let headers = if src.is_ipv4() { 40 } else { 60 };
    frame(
        None,
        src,
        dst,
        L4::Ack(sport, dport),
        &payload(ip_len - headers),
    )
}

/// The bare IP packet a backend sent as `vip`:`vip_port` ->
/// `client`:`client_port` (quoted in ICMP errors about the flow).
fn backend_reply(vip: IpAddr, vip_port: u16, client: IpAddr, client_port: u16) -> Vec<u8> {
    ip_packet(vip, client, L4::Ack(vip_port, client_port))
}

/// An ICMP fragmentation-needed from a router to `to`, quoting `quoted`.
fn icmp4_frag_needed(to: IpAddr, quoted: &[u8]) -> Vec<u8> {
    let t = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    });
    frame(None, ROUTER4, to, L4::Icmp4(t), quoted)
}

/// An ICMP for IPv6 packet-too-big from a router to `to`, quoting `quoted`.
fn icmp6_too_big(to: IpAddr, quoted: &[u8]) -> Vec<u8> {
    frame(
        None,
        ROUTER6,
        to,
        L4::Icmp6(Icmpv6Type::PacketTooBig { mtu: 1280 }),
        quoted,
    )
}

/// Inserts an 802.1Q tag with `tci` into an untagged frame.
fn tagged(frame: &[u8], tci: u16) -> Vec<u8> {
    tagged_with(frame, 0x8100, tci)
}

/// Inserts an 802.1ad (S-)tag with `tci` into an untagged frame.
fn s_tagged(frame: &[u8], tci: u16) -> Vec<u8> {
    tagged_with(frame, 0x88a8, tci)
}

fn tagged_with(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&tci.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// Recomputes the IPv4 header checksum of a frame (when the header is whole).
fn fix_ipv4_checksum(frame: &mut [u8]) {
    let l2 = l2_len(frame);
    let ihl = usize::from(frame[l2] & 0x0f) * 4;
    let ihl = if ihl < 20 { 20 } else { ihl };
    if frame.len() >= l2 + ihl {
        let check = ipv4_header_checksum(&frame[l2..l2 + ihl]);
        frame[l2 + 10..l2 + 12].copy_from_slice(&check.to_be_bytes());
    }
}

/// Edits a frame's IPv4 header (bytes from the start of the IP header) and
/// fixes its checksum.
fn edit_ipv4(mut frame: Vec<u8>, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let l2 = l2_len(&frame);
    edit(&mut frame[l2..]);
    fix_ipv4_checksum(&mut frame);
    frame
}

fn set_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Inserts IPv4 options (a multiple of 4 bytes) after the fixed header.
fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert!(
        options.len().is_multiple_of(4),
        "IPv4 options are 32-bit words"
    );
    let l2 = l2_len(frame);
    let mut out = frame[..l2 + 20].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[l2 + 20..]);
    let extra = u16::try_from(options.len()).expect("short options");
    let ihl = u8::try_from((20 + options.len()) / 4).expect("IHL");
    edit_ipv4(out, |ip| {
        ip[0] = 0x40 | ihl;
        let total = be16(ip, 2) + extra;
        set_be16(ip, 2, total);
    })
}

/// Inserts an 8-byte IPv6 extension header `code` (whose first byte, the
/// next header, is filled in) after the fixed header.
fn with_ipv6_ext(frame: &[u8], code: u8, rest: [u8; 7]) -> Vec<u8> {
    let l2 = l2_len(frame);
    let mut out = frame[..l2 + 40].to_vec();
    out.push(frame[l2 + 6]);
    out.extend_from_slice(&rest);
    out.extend_from_slice(&frame[l2 + 40..]);
    out[l2 + 6] = code;
    let plen = be16(&out, l2 + 4) + 8;
    set_be16(&mut out, l2 + 4, plen);
    out
}

fn with_ipv6_tclass(mut frame: Vec<u8>, tclass: u8) -> Vec<u8> {
    let l2 = l2_len(&frame);
    frame[l2] = 0x60 | (tclass >> 4);
    frame[l2 + 1] = (tclass << 4) | (frame[l2 + 1] & 0x0f);
    frame
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06]);
    // Ethernet/IPv4, request, sender 198.51.100.1, target 203.0.113.10.
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[198, 51, 100, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[203, 0, 113, 10]);
    f
}

// ---- The tables ----

/// PCP 5, VLAN 42 (0x02a).
const TCI: u16 = (5 << 13) | 0x02a;

/// Encapsulating data plane (IPIP / IP6IP6): the packet path top to bottom.
#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn ipip_forwarding() {
    use global_counter::{
        FORWARDED, FRAGMENT_PASSED, ICMP_FORWARDED, ICMP_TOO_BIG_SENT, MALFORMED, PASS_LOCAL,
        PASS_NOT_VIP,
    };
    let mut env = Env::new(FORWARD_IPIP);
    let dns = Counted::Flow {
        tenant: TENANT_1,
        vip: VIP_DNS,
        new_flow: true,
    };
    let v6 = |new_flow| Counted::Flow {
        tenant: TENANT_1,
        vip: VIP_V6,
        new_flow,
    };
    let malformed = |name: &str, packet| {
        Case::drop(name, packet, NO_TENANT, DropReason::MALFORMED, &[MALFORMED])
    };
    let malformed_l4 = |name: &str, packet| {
        Case::drop(name, packet, TENANT_1, DropReason::MALFORMED, &[MALFORMED])
    };
    let l2 = 14;
    let cases = vec![
        // -- Steering to a backend --
        Case::forward(
            "tcp syn to vip (dscp ef, ecn ect1): ipip to the ring's backend",
            edit_ipv4(syn(CLIENT4, 40_001, VIP4_A, 80), |ip| ip[1] = (46 << 2) | 1),
            Output::Encap,
            To::RingWithin(T1_BACKENDS),
        )
        .http(true),
        Case::forward(
            "same flow again (ack): flow-table hit, same backend",
            ack(CLIENT4, 40_001, VIP4_A, 80),
            Output::Encap,
            To::Flow,
        )
        .http(false),
        Case::forward(
            "udp to the udp vip",
            udp(CLIENT4, 5353, VIP4_A, 53),
            Output::Encap,
            To::Ring,
        )
        .counted(dns),
        Case::forward(
            "ipv6 tcp to the ipv6 vip (traffic class 0xb8): ip6ip6",
            with_ipv6_tclass(syn(CLIENT6, 40_002, VIP6, 443), 0xb8),
            Output::Encap,
            To::RingWithin(V6_BACKENDS),
        )
        .counted(v6(true)),
        Case::forward(
            "ipv6 same flow again: flow-table hit",
            ack(CLIENT6, 40_002, VIP6, 443),
            Output::Encap,
            To::Flow,
        )
        .counted(v6(false)),
        Case::forward(
            "port-wildcard vip hit on an arbitrary port",
            syn(CLIENT4, 40_003, VIP4_ANY, 8443),
            Output::Encap,
            To::Ring,
        )
        .counted(Counted::Flow {
            tenant: TENANT_1,
            vip: VIP_ANY,
            new_flow: true,
        }),
        Case::forward(
            "vlan-tagged tcp to vip: tag kept, outer ipv4 after it",
            tagged(&syn(CLIENT4, 40_004, VIP4_A, 80), TCI),
            Output::Encap,
            To::Ring,
        )
        .http(true),
        Case::forward(
            "ipv4 with options (ihl 7) to vip: inner bytes identical incl. options",
            with_ipv4_options(
                &syn(CLIENT4, 40_005, VIP4_A, 80),
                &[0x94, 0x04, 0, 0, 1, 1, 1, 0],
            ),
            Output::Encap,
            To::Ring,
        )
        .http(true),
        Case::forward(
            "short udp frame with ethernet padding: padding carried after the inner packet",
            {
                let mut f = frame(None, CLIENT4, VIP4_A, L4::Udp(5354, 53), &[1, 2]);
                f.resize(60, 0);
                f
            },
            Output::Encap,
            To::Ring,
        )
        .counted(dns),
        Case::forward(
            "1480-byte ipv4 with df: exactly the mtu once encapsulated, forwarded",
            tcp_sized(CLIENT4, 40_012, VIP4_A, 80, 1480),
            Output::Encap,
            To::Ring,
        )
        .http(true),
        Case::forward(
            "1460-byte ipv6: exactly the mtu once encapsulated, forwarded",
            tcp_sized(CLIENT6, 40_013, VIP6, 443, 1460),
            Output::Encap,
            To::Ring,
        )
        .counted(v6(true)),
        // -- Not for a VIP --
        Case::pass(
            "vip address, wrong port, no wildcard: passed",
            syn(CLIENT4, 40_006, VIP4_A, 81),
            &[PASS_NOT_VIP],
        ),
        Case::pass(
            "udp to the tcp-only wildcard vip address: passed",
            udp(CLIENT4, 40_007, VIP4_ANY, 9999),
            &[PASS_NOT_VIP],
        ),
        Case::pass(
            "tcp to a non-vip address: passed",
            syn(CLIENT4, 40_008, OTHER4, 80),
            &[PASS_NOT_VIP],
        ),
        Case::pass(
            "ipv6 tcp to a non-vip address: passed",
            syn(CLIENT6, 40_008, OTHER6, 443),
            &[PASS_NOT_VIP],
        ),
        Case::pass(
            "arp request: passed",
            arp_request(),
            &[global_counter::PASS_NOT_IP],
        ),
        // -- Too big once encapsulated --
        Case::new(
            "1500-byte ipv4 tcp with df: icmp frag-needed (mtu 1480) to the client",
            tcp_sized(CLIENT4, 40_009, VIP4_A, 80, 1500),
            XDP_TX,
        )
        .output(Output::TooBig(1480))
        .to(To::Ring)
        .http(true)
        .drops(&[(TENANT_1, DropReason::TOO_BIG)])
        .globals(&[ICMP_TOO_BIG_SENT]),
        Case::new(
            "1500-byte vlan-tagged ipv4 tcp with df: answer keeps the tag",
            tagged(&tcp_sized(CLIENT4, 40_010, VIP4_A, 80, 1500), TCI),
            XDP_TX,
        )
        .output(Output::TooBig(1480))
        .to(To::Ring)
        .http(true)
        .drops(&[(TENANT_1, DropReason::TOO_BIG)])
        .globals(&[ICMP_TOO_BIG_SENT]),
        Case::new(
            "1500-byte ipv4 tcp without df: dropped",
            edit_ipv4(tcp_sized(CLIENT4, 40_011, VIP4_A, 80, 1500), |ip| {
                set_be16(ip, 6, 0);
            }),
            XDP_DROP,
        )
        .to(To::Ring)
        .http(true)
        .drops(&[(TENANT_1, DropReason::TOO_BIG_NO_DF)]),
        Case::new(
            "1500-byte ipv6 tcp: icmpv6 packet-too-big (mtu 1460) to the client",
            tcp_sized(CLIENT6, 40_014, VIP6, 443, 1500),
            XDP_TX,
        )
        .output(Output::TooBig(1460))
        .to(To::Ring)
        .counted(v6(true))
        .drops(&[(TENANT_1, DropReason::TOO_BIG)])
        .globals(&[ICMP_TOO_BIG_SENT]),
        // -- ICMP --
        Case::forward(
            "icmp frag-needed about an established flow: to the flow's backend",
            icmp4_frag_needed(VIP4_A, &backend_reply(VIP4_A, 80, CLIENT4, 40_001)),
            Output::Encap,
            To::Flow,
        )
        .globals(&[ICMP_FORWARDED])
        .http(false),
        Case::forward(
            "icmpv6 packet-too-big about an established flow: to the flow's backend",
            icmp6_too_big(VIP6, &backend_reply(VIP6, 443, CLIENT6, 40_002)),
            Output::Encap,
            To::Flow,
        )
        .globals(&[ICMP_FORWARDED])
        .counted(Counted::Flow {
            tenant: TENANT_1,
            vip: VIP_V6,
            new_flow: false,
        }),
        Case::drop(
            "icmp frag-needed about a flow not in the table: dropped, no backend sent it",
            icmp4_frag_needed(VIP4_A, &backend_reply(VIP4_A, 80, CLIENT4, 40_100)),
            TENANT_1,
            DropReason::ICMP_NO_FLOW,
            &[],
        )
        .counted(Counted::Vip(VIP_HTTP)),
        Case::drop(
            "icmp frag-needed about a vip flow sent to another address: dropped",
            icmp4_frag_needed(VIP4_T2, &backend_reply(VIP4_A, 80, CLIENT4, 40_001)),
            TENANT_1,
            DropReason::ICMP_DST_MISMATCH,
            &[],
        )
        .counted(Counted::Vip(VIP_HTTP)),
        Case::pass(
            "icmp echo request to a vip address: passed",
            frame(
                None,
                CLIENT4,
                VIP4_A,
                L4::Icmp4(Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader {
                    id: 1,
                    seq: 1,
                })),
                &payload(56),
            ),
            &[PASS_NOT_VIP],
        ),
        Case::pass(
            "icmpv6 echo request to a vip address: passed",
            frame(
                None,
                CLIENT6,
                VIP6,
                L4::Icmp6(Icmpv6Type::EchoRequest(etherparse::IcmpEchoHeader {
                    id: 1,
                    seq: 1,
                })),
                &payload(56),
            ),
            &[PASS_NOT_VIP],
        ),
        Case::pass(
            "icmp error quoting a non-vip address: passed",
            icmp4_frag_needed(VIP4_A, &backend_reply(OTHER4, 80, CLIENT4, 40_001)),
            &[PASS_NOT_VIP],
        ),
        Case::pass(
            "icmp error quoting a vip address on a port without vip: passed",
            icmp4_frag_needed(VIP4_A, &backend_reply(VIP4_A, 81, CLIENT4, 40_001)),
            &[PASS_NOT_VIP],
        ),
        malformed_l4(
            "icmp error to a vip address quoting a truncated header: dropped",
            icmp4_frag_needed(VIP4_A, &backend_reply(VIP4_A, 80, CLIENT4, 40_001)[..10]),
        ),
        // -- Fragments --
        Case::drop(
            "ipv4 first fragment (mf) to a vip address: dropped",
            edit_ipv4(udp(CLIENT4, 5355, VIP4_A, 53), |ip| set_be16(ip, 6, 0x2000)),
            TENANT_1,
            DropReason::FRAGMENT,
            &[],
        ),
        Case::drop(
            "ipv4 last fragment (offset, no mf) to a vip address: dropped",
            edit_ipv4(udp(CLIENT4, 5355, VIP4_A, 53), |ip| set_be16(ip, 6, 185)),
            TENANT_1,
            DropReason::FRAGMENT,
            &[],
        ),
        Case::pass(
            "ipv4 fragment to a non-vip address: passed",
            edit_ipv4(udp(CLIENT4, 5355, OTHER4, 53), |ip| set_be16(ip, 6, 0x2000)),
            &[FRAGMENT_PASSED],
        ),
        Case::drop(
            "ipv6 fragment header to a vip address: dropped",
            with_ipv6_ext(&syn(CLIENT6, 40_015, VIP6, 443), 44, [0, 0, 1, 0, 0, 0, 1]),
            TENANT_1,
            DropReason::FRAGMENT,
            &[],
        ),
        Case::pass(
            "ipv6 fragment header to a non-vip address: passed",
            with_ipv6_ext(
                &syn(CLIENT6, 40_015, OTHER6, 443),
                44,
                [0, 0, 1, 0, 0, 0, 1],
            ),
            &[FRAGMENT_PASSED],
        ),
        // -- IPv6 extension headers --
        Case::drop(
            "ipv6 hop-by-hop header to a vip address: dropped as unsupported",
            with_ipv6_ext(&syn(CLIENT6, 40_016, VIP6, 443), 0, [0, 1, 4, 0, 0, 0, 0]),
            TENANT_1,
            DropReason::UNSUPPORTED,
            &[],
        ),
        Case::drop(
            "ipv6 routing header to a vip address: dropped as unsupported",
            with_ipv6_ext(&syn(CLIENT6, 40_016, VIP6, 443), 43, [0, 0, 0, 0, 0, 0, 0]),
            TENANT_1,
            DropReason::UNSUPPORTED,
            &[],
        ),
        Case::pass(
            "ipv6 hop-by-hop header to a non-vip address: passed",
            with_ipv6_ext(&syn(CLIENT6, 40_016, OTHER6, 443), 0, [0, 1, 4, 0, 0, 0, 0]),
            &[PASS_NOT_VIP],
        ),
        // -- Malformed --
        Case::pass(
            "802.1q tag cut off (14-byte frame): passed",
            {
                let mut f = syn(CLIENT4, 40_017, VIP4_A, 80);
                f.truncate(14);
                set_be16(&mut f, 12, 0x8100);
                f
            },
            &[global_counter::PASS_NOT_IP],
        ),
        malformed(
            "ethernet header only, ether type ipv4: dropped",
            syn(CLIENT4, 40_017, VIP4_A, 80)[..14].to_vec(),
        ),
        malformed(
            "ipv4 header truncated (frame ends inside it): dropped",
            syn(CLIENT4, 40_017, VIP4_A, 80)[..l2 + 10].to_vec(),
        ),
        malformed(
            "ipv4 ihl 4: dropped",
            edit_ipv4(syn(CLIENT4, 40_017, VIP4_A, 80), |ip| ip[0] = 0x44),
        ),
        malformed(
            "ipv4 version 5 in an ipv4 ether type: dropped",
            edit_ipv4(syn(CLIENT4, 40_017, VIP4_A, 80), |ip| ip[0] = 0x55),
        ),
        malformed(
            "ipv4 total length beyond the frame: dropped",
            edit_ipv4(syn(CLIENT4, 40_017, VIP4_A, 80), |ip| {
                let t = be16(ip, 2) + 1;
                set_be16(ip, 2, t);
            }),
        ),
        malformed(
            "ipv4 total length below the header length: dropped",
            edit_ipv4(syn(CLIENT4, 40_017, VIP4_A, 80), |ip| set_be16(ip, 2, 16)),
        ),
        malformed(
            "ipv6 header truncated: dropped",
            syn(CLIENT6, 40_017, VIP6, 443)[..l2 + 30].to_vec(),
        ),
        malformed("ipv6 payload length beyond the frame: dropped", {
            let mut f = syn(CLIENT6, 40_017, VIP6, 443);
            let plen = be16(&f, l2 + 4) + 1;
            set_be16(&mut f, l2 + 4, plen);
            f
        }),
        malformed_l4(
            "tcp header truncated (frame ends after 10 bytes) to a vip: dropped",
            {
                let f = frame(None, CLIENT4, VIP4_A, L4::Syn(40_018, 80), &[]);
                edit_ipv4(f[..l2 + 30].to_vec(), |ip| set_be16(ip, 2, 30))
            },
        ),
        malformed_l4(
            "tcp header cut by the ip total length (frame padded) to a vip: dropped",
            {
                let f = frame(None, CLIENT4, VIP4_A, L4::Syn(40_018, 80), &[]);
                edit_ipv4(f, |ip| set_be16(ip, 2, 34))
            },
        ),
        Case::pass(
            "tcp header truncated to a non-vip address: passed",
            {
                let f = frame(None, CLIENT4, OTHER4, L4::Syn(40_018, 80), &[]);
                edit_ipv4(f[..l2 + 30].to_vec(), |ip| set_be16(ip, 2, 30))
            },
            &[PASS_NOT_VIP],
        ),
        malformed_l4("tcp data offset 4 to a vip: dropped", {
            let mut f = syn(CLIENT4, 40_018, VIP4_A, 80);
            f[l2 + 20 + 12] = 0x40;
            f
        }),
        malformed_l4("udp length beyond the ip payload to a vip: dropped", {
            let mut f = udp(CLIENT4, 5356, VIP4_A, 53);
            let len = be16(&f, l2 + 20 + 4) + 1;
            set_be16(&mut f, l2 + 20 + 4, len);
            f
        }),
        malformed_l4("udp length below 8 to a vip: dropped", {
            let mut f = udp(CLIENT4, 5356, VIP4_A, 53);
            set_be16(&mut f, l2 + 20 + 4, 7);
            f
        }),
        // -- Local (L7) VIPs --
        Case::pass(
            "tcp to a local (l7) vip: passed to the stack, counted",
            syn(CLIENT4, 40_019, VIP4_A, 443),
            &[PASS_LOCAL],
        )
        .counted(Counted::Local {
            tenant: TENANT_1,
            vip: VIP_LOCAL,
        }),
        Case::pass(
            "icmp error about a local vip flow: passed to the stack",
            icmp4_frag_needed(VIP4_A, &backend_reply(VIP4_A, 443, CLIENT4, 40_019)),
            &[PASS_LOCAL],
        )
        .counted(Counted::Local {
            tenant: TENANT_1,
            vip: VIP_LOCAL,
        }),
        // -- More ICMP errors --
        Case::forward(
            "icmp time exceeded about an established flow: to the flow's backend",
            frame(
                None,
                ROUTER4,
                VIP4_A,
                L4::Icmp4(Icmpv4Type::TimeExceeded(
                    TimeExceededCode::TtlExceededInTransit,
                )),
                &backend_reply(VIP4_A, 80, CLIENT4, 40_001),
            ),
            Output::Encap,
            To::Flow,
        )
        .globals(&[ICMP_FORWARDED])
        .http(false),
        Case::forward(
            "vlan-tagged icmp frag-needed about an established flow: tag kept",
            tagged(
                &icmp4_frag_needed(VIP4_A, &backend_reply(VIP4_A, 80, CLIENT4, 40_001)),
                TCI,
            ),
            Output::Encap,
            To::Flow,
        )
        .globals(&[ICMP_FORWARDED])
        .http(false),
        // -- Next hop behind another interface (last: changes the next hops) --
        Case::new(
            "next hop behind another interface than the ingress: encapsulated, XDP_REDIRECT",
            syn(CLIENT4, 40_020, VIP4_A, 80),
            XDP_REDIRECT,
        )
        .output(Output::Encap)
        .to(To::Ring)
        .http(true)
        .globals(&[FORWARDED])
        .setup(|env| {
            for &id in T1_BACKENDS {
                let nh = NextHop {
                    ifindex: 7,
                    ..nexthop(id)
                };
                env.dp.set_nexthop(id, &nh).expect("seeding a next hop");
            }
        }),
    ];
    run_table(&mut env, &cases);
}

/// `BPF_PROG_TEST_RUN` refuses frames shorter than an Ethernet header, so
/// the program never sees them (the table covers a 14-byte frame cut after
/// its 802.1Q ether type instead).
#[test]
fn frames_shorter_than_ethernet_never_reach_the_program() {
    let mut env = Env::new(FORWARD_IPIP);
    let mut out = vec![0u8; 64];
    let prog = env
        .dp
        .program(BALANCER_PROGRAM)
        .expect("the balancer is loaded");
    let err = prog
        .test_run(TestRunOptions {
            data_in: Some(&syn(CLIENT4, 40_000, VIP4_A, 80)[..10]),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .expect_err("a 10-byte frame is refused");
    assert!(
        err.to_string().contains("bpf_prog_test_run"),
        "10-byte frame: unexpected error {err}"
    );
    assert_eq!(
        env.dp.global(global_counter::RX),
        0,
        "10-byte frame: the program ran"
    );
}

/// L2 DSR: the frame goes to the backend's MAC unchanged otherwise.
#[test]
fn l2dsr_forwarding() {
    use global_counter::ICMP_FORWARDED;
    let mut env = Env::new(FORWARD_L2DSR);
    let v6 = Counted::Flow {
        tenant: TENANT_1,
        vip: VIP_V6,
        new_flow: true,
    };
    let cases = vec![
        Case::forward(
            "l2dsr: tcp syn to vip, only the macs change",
            syn(CLIENT4, 41_001, VIP4_A, 80),
            Output::L2Rewrite,
            To::RingWithin(T1_BACKENDS),
        )
        .http(true),
        Case::forward(
            "l2dsr: same flow again, same backend",
            ack(CLIENT4, 41_001, VIP4_A, 80),
            Output::L2Rewrite,
            To::Flow,
        )
        .http(false),
        Case::forward(
            "l2dsr: udp to the udp vip",
            udp(CLIENT4, 41_002, VIP4_A, 53),
            Output::L2Rewrite,
            To::Ring,
        )
        .counted(Counted::Flow {
            tenant: TENANT_1,
            vip: VIP_DNS,
            new_flow: true,
        }),
        Case::forward(
            "l2dsr: ipv6 tcp to the ipv6 vip",
            with_ipv6_tclass(syn(CLIENT6, 41_003, VIP6, 443), 0x28),
            Output::L2Rewrite,
            To::RingWithin(V6_BACKENDS),
        )
        .counted(v6),
        Case::forward(
            "l2dsr: vlan-tagged tcp, tag kept",
            tagged(&syn(CLIENT4, 41_004, VIP4_A, 80), TCI),
            Output::L2Rewrite,
            To::Ring,
        )
        .http(true),
        Case::forward(
            "l2dsr: 1500-byte packet with df, nothing added so not too big",
            tcp_sized(CLIENT4, 41_005, VIP4_A, 80, 1500),
            Output::L2Rewrite,
            To::Ring,
        )
        .http(true),
        Case::forward(
            "l2dsr: tenant 2 vip, a tenant 2 backend",
            syn(CLIENT4, 41_006, VIP4_T2, 80),
            Output::L2Rewrite,
            To::RingWithin(T2_BACKENDS),
        )
        .counted(Counted::Flow {
            tenant: TENANT_2,
            vip: VIP_T2,
            new_flow: true,
        }),
        Case::forward(
            "l2dsr: icmp frag-needed about an established flow, to the flow's backend",
            icmp4_frag_needed(VIP4_A, &backend_reply(VIP4_A, 80, CLIENT4, 41_001)),
            Output::L2Rewrite,
            To::Flow,
        )
        .globals(&[ICMP_FORWARDED])
        .http(false),
        Case::pass(
            "l2dsr: non-vip address, passed",
            syn(CLIENT4, 41_007, OTHER4, 80),
            &[global_counter::PASS_NOT_VIP],
        ),
    ];
    run_table(&mut env, &cases);
}

/// A tenant's VIP only ever reaches that tenant's backends.
#[test]
fn tenant_isolation() {
    let mut env = Env::new(FORWARD_IPIP);
    let mut cases: Vec<Case> = (0..200u16)
        .map(|i| {
            let client = IpAddr::V4(Ipv4Addr::new(
                198,
                51,
                100,
                u8::try_from(i % 100 + 1).expect("< 101"),
            ));
            Case::forward(
                format!("tenant 2 vip, flow {i}: a tenant 2 backend"),
                syn(client, 20_000 + i, VIP4_T2, 80),
                Output::Encap,
                To::RingWithin(T2_BACKENDS),
            )
            .counted(Counted::Flow {
                tenant: TENANT_2,
                vip: VIP_T2,
                new_flow: true,
            })
        })
        .collect();
    cases.push(
        Case::drop(
            "tenant 1's ring (wrongly) naming tenant 2's backend 3: dropped",
            syn(CLIENT4, 42_001, VIP4_A, 80),
            TENANT_1,
            DropReason::TENANT_MISMATCH,
            &[],
        )
        .setup(|env| env.write_ring(POOL_1, TENANT_1, &[3]))
        .counted(Counted::Vip(VIP_HTTP)),
    );
    cases.push(
        Case::drop(
            "tenant 1's ring naming tenant 2's backend 4: dropped",
            syn(CLIENT4, 42_002, VIP4_A, 80),
            TENANT_1,
            DropReason::TENANT_MISMATCH,
            &[],
        )
        .setup(|env| env.write_ring(POOL_1, TENANT_1, &[4]))
        .counted(Counted::Vip(VIP_HTTP)),
    );
    run_table(&mut env, &cases);

    // Tenant 2's flows spread over all of its backends and none of tenant 1's.
    for &id in T2_BACKENDS {
        assert!(
            env.dp.backend_stats(id).packets > 0,
            "tenant 2 backend {id} got no flow of 200"
        );
    }
    for &id in T1_BACKENDS.iter().chain(V6_BACKENDS) {
        assert_eq!(
            env.dp.backend_stats(id).packets,
            0,
            "tenant 1 backend {id} got tenant 2 traffic"
        );
    }
}

/// The flow table: established flows keep their backend across ring
/// changes, and are re-steered when their backend goes away.
#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn flow_table() {
    use global_counter::{FLOW_STALE, FORWARDED, ICMP_FORWARDED};
    let mut env = Env::new(FORWARD_IPIP);
    // A client port whose flow the initial ring sends to backend 0.
    let port = env.port_landing_on(CLIENT4, VIP4_A, 80, 0);
    let key = make_key(CLIENT4, VIP4_A, port, 80, PROTO_TCP);
    let flow = || ack(CLIENT4, port, VIP4_A, 80);
    let stale = |name: &str, to: u32| {
        Case::new(name, flow(), XDP_TX)
            .output(Output::Encap)
            .to(To::Id(to))
            .http(true)
            .globals(&[FLOW_STALE, FORWARDED])
    };
    let kept =
        |name: &str, to: u32| Case::forward(name, flow(), Output::Encap, To::Id(to)).http(false);
    let mut cases = vec![
        Case::forward(
            "first syn: through the ring to backend 0",
            syn(CLIENT4, port, VIP4_A, 80),
            Output::Encap,
            To::Id(0),
        )
        .http(true),
        kept(
            "ring now names only backend 1: established flow stays on backend 0",
            0,
        )
        .setup(|env| env.write_ring(POOL_1, TENANT_1, &[1])),
        stale("backend 0 down: flow re-steered to the ring's backend 1", 1)
            .setup(|env| env.set_state(0, BACKEND_DOWN)),
        stale(
            "backend slot 1 reused (generation bumped): stale entry ignored, ring's backend 2",
            2,
        )
        .setup(|env| {
            env.set_state(0, BACKEND_UP);
            let mut b = env.backend(1);
            b.generation += 1;
            b.addr = addr16(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 101))).0;
            env.set_backend(1, b);
            env.write_ring(POOL_1, TENANT_1, &[2]);
        }),
        kept(
            "backend 2 draining, ring without it: its established flow stays",
            2,
        )
        .setup(|env| {
            env.set_state(2, BACKEND_DRAINING);
            env.write_ring(POOL_1, TENANT_1, &[0, 1]);
        }),
    ];
    cases.extend((0..20u16).map(|i| {
        Case::forward(
            format!("backend 2 draining: new flow {i} lands on backend 0 or 1"),
            syn(CLIENT4, 30_000 + i, VIP4_A, 80),
            Output::Encap,
            To::RingWithin(&[0, 1]),
        )
        .http(true)
    }));
    cases.extend([
        Case::drop(
            "new flow while the ring still names draining backend 2: dropped",
            syn(CLIENT4, 31_000, VIP4_A, 80),
            TENANT_1,
            DropReason::NO_BACKEND,
            &[],
        )
        .setup(|env| env.write_ring(POOL_1, TENANT_1, &[2]))
        .counted(Counted::Vip(VIP_HTTP)),
        kept(
            "established flow on draining backend 2 while the ring names it: still forwarded",
            2,
        ),
        stale(
            "backend 2 down: its established flow re-steered to backend 0",
            0,
        )
        .setup(|env| {
            env.set_state(2, BACKEND_DOWN);
            env.write_ring(POOL_1, TENANT_1, &[0]);
        }),
        stale(
            "backend 0 handed to tenant 2 (same generation): entry ignored, ring's backend 1",
            1,
        )
        .setup(|env| {
            let mut b = env.backend(0);
            b.tenant_id = TENANT_2;
            b.pool_id = POOL_2;
            env.set_backend(0, b);
            env.write_ring(POOL_1, TENANT_1, &[1]);
        }),
        Case::forward(
            "flow entry removed by userspace: through the ring again, a new flow, not stale",
            flow(),
            Output::Encap,
            To::Id(0),
        )
        .http(true)
        .setup(move |env| {
            env.set_backend(0, backend(0, backend_addr(0), BACKEND_UP, 1));
            env.write_ring(POOL_1, TENANT_1, &[0]);
            env.dp.remove_flow(TENANT_1, &key).expect("removing a flow");
        }),
        kept("and it sticks again", 0).setup(|env| env.write_ring(POOL_1, TENANT_1, &[1])),
        Case::forward(
            "icmp frag-needed about the flow: to the flow's backend 0, not the ring's 1",
            icmp4_frag_needed(VIP4_A, &backend_reply(VIP4_A, 80, CLIENT4, port)),
            Output::Encap,
            To::Id(0),
        )
        .globals(&[ICMP_FORWARDED])
        .http(false),
        Case::drop(
            "icmp frag-needed about the flow after its backend went down: dropped",
            icmp4_frag_needed(VIP4_A, &backend_reply(VIP4_A, 80, CLIENT4, port)),
            TENANT_1,
            DropReason::ICMP_NO_BACKEND,
            &[],
        )
        .setup(|env| env.set_state(0, BACKEND_DOWN))
        .counted(Counted::Vip(VIP_HTTP)),
    ]);
    run_table(&mut env, &cases);
}

/// Pools with nothing to send to.
#[test]
fn no_backend() {
    let mut env = Env::new(FORWARD_IPIP);
    let no_backend = |name: &str, packet, tenant, vip| {
        Case::drop(name, packet, tenant, DropReason::NO_BACKEND, &[]).counted(Counted::Vip(vip))
    };
    let cases = vec![
        no_backend(
            "ring of empty slots",
            syn(CLIENT4, 43_001, VIP4_A, 80),
            TENANT_1,
            VIP_HTTP,
        )
        .setup(|env| env.write_ring(POOL_1, TENANT_1, &[RING_EMPTY])),
        no_backend(
            "vip whose pool does not exist",
            syn(CLIENT4, 43_002, VIP4_NOPOOL, 80),
            TENANT_1,
            VIP_NOPOOL,
        ),
        no_backend(
            "pool published under another tenant than its vip's",
            syn(CLIENT4, 43_003, VIP4_T2, 80),
            TENANT_2,
            VIP_T2,
        )
        .setup(|env| env.write_ring(POOL_2, TENANT_1, T2_BACKENDS)),
        no_backend(
            "ring naming a backend id beyond the backend table",
            syn(CLIENT4, 43_004, VIP4_A, 80),
            TENANT_1,
            VIP_HTTP,
        )
        .setup(|env| env.write_ring(POOL_1, TENANT_1, &[70_000])),
        no_backend(
            "ring naming a down backend",
            syn(CLIENT4, 43_005, VIP4_A, 80),
            TENANT_1,
            VIP_HTTP,
        )
        .setup(|env| {
            env.set_state(0, BACKEND_DOWN);
            env.write_ring(POOL_1, TENANT_1, &[0]);
        }),
    ];
    run_table(&mut env, &cases);
}

/// Flows idle for longer than `flow_idle_ns` lose their backend.
#[test]
fn flow_idle_timeout() {
    use global_counter::FLOW_STALE;
    let mut env = Env::with_idle(FORWARD_IPIP, 1_000_000_000);
    let port = env.port_landing_on(CLIENT4, VIP4_A, 80, 0);
    let flow = || ack(CLIENT4, port, VIP4_A, 80);
    let cases = vec![
        Case::forward(
            "idle 1s: first syn to backend 0",
            syn(CLIENT4, port, VIP4_A, 80),
            Output::Encap,
            To::Id(0),
        )
        .http(true),
        Case::forward(
            "idle 1s: ring moved to backend 1, flow active: stays on backend 0",
            flow(),
            Output::Encap,
            To::Id(0),
        )
        .http(false)
        .setup(|env| env.write_ring(POOL_1, TENANT_1, &[1])),
        Case::forward(
            "idle 1s: after 1.3 s of silence the entry is stale: ring's backend 1",
            flow(),
            Output::Encap,
            To::Id(1),
        )
        .http(true)
        .globals(&[FLOW_STALE])
        .setup(|_| std::thread::sleep(Duration::from_millis(1300))),
    ];
    run_table(&mut env, &cases);
}

/// An active flow must not expire: with `flow_idle_ns` = 1 s (the smallest
/// `lbd` accepts) and a packet every 0.7 s, the flow is never idle for 1 s.
#[test]
fn active_flow_survives_the_minimum_idle_timeout() {
    let mut env = Env::with_idle(FORWARD_IPIP, 1_000_000_000);
    let port = env.port_landing_on(CLIENT4, VIP4_A, 80, 0);
    let flow = || ack(CLIENT4, port, VIP4_A, 80);
    let gap = || std::thread::sleep(Duration::from_millis(700));
    let cases = vec![
        Case::forward(
            "idle 1s: first syn to backend 0",
            syn(CLIENT4, port, VIP4_A, 80),
            Output::Encap,
            To::Id(0),
        )
        .http(true)
        .setup(|env| env.write_ring(POOL_1, TENANT_1, &[0])),
        Case::forward(
            "idle 1s: ring moved to backend 1; packet after 0.7 s stays on backend 0",
            flow(),
            Output::Encap,
            To::Id(0),
        )
        .http(false)
        .setup(move |env| {
            env.write_ring(POOL_1, TENANT_1, &[1]);
            gap();
        }),
        Case::forward(
            "idle 1s: next packet 0.7 s later still on backend 0",
            flow(),
            Output::Encap,
            To::Id(0),
        )
        .http(false)
        .setup(move |_| gap()),
    ];
    run_table(&mut env, &cases);
}

/// 802.1ad (S-tag, TPID 0x88a8) frames, which the parser accepts as the one
/// tag, must keep their TPID in L2 DSR mode.
#[test]
fn l2dsr_keeps_an_802_1ad_tag() {
    let mut env = Env::new(FORWARD_L2DSR);
    let cases = vec![
        Case::forward(
            "l2dsr: 802.1ad-tagged tcp: only the macs change",
            s_tagged(&syn(CLIENT4, 44_001, VIP4_A, 80), TCI),
            Output::L2Rewrite,
            To::Ring,
        )
        .http(true),
    ];
    run_table(&mut env, &cases);
}

/// 802.1ad frames keep their TPID when encapsulated or answered.
#[test]
fn ipip_keeps_an_802_1ad_tag() {
    let mut env = Env::new(FORWARD_IPIP);
    let cases = vec![
        Case::forward(
            "ipip: 802.1ad-tagged tcp: tag kept",
            s_tagged(&syn(CLIENT4, 44_002, VIP4_A, 80), TCI),
            Output::Encap,
            To::Ring,
        )
        .http(true),
        Case::new(
            "ipip: 802.1ad-tagged 1500-byte tcp: too-big answer keeps the tag",
            s_tagged(&tcp_sized(CLIENT4, 44_003, VIP4_A, 80, 1500), TCI),
            XDP_TX,
        )
        .output(Output::TooBig(1480))
        .to(To::Ring)
        .http(true)
        .drops(&[(TENANT_1, DropReason::TOO_BIG)])
        .globals(&[global_counter::ICMP_TOO_BIG_SENT]),
    ];
    run_table(&mut env, &cases);
}

/// Publishing an empty ring is refused and does not disturb the rings of
/// other pools.
#[test]
fn empty_ring_publication_keeps_other_rings() {
    let mut env = Env::new(FORWARD_IPIP);
    let cases = vec![
        Case::forward(
            "tenant 1 vip after an empty ring for pool 9 and tenant 2's ring rewritten",
            syn(CLIENT4, 45_001, VIP4_A, 80),
            Output::Encap,
            To::RingWithin(T1_BACKENDS),
        )
        .http(true)
        .setup(|env| {
            // An empty ring is refused and leaves the arena untouched.
            env.dp
                .write_ring(POOL_MISSING, TENANT_1, &[])
                .expect_err("an empty ring must be refused");
            env.write_ring(POOL_2, TENANT_2, &[5, 4, 3]);
        }),
    ];
    run_table(&mut env, &cases);
}
