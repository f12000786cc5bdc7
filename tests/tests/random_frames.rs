//! The balancer's invariants on any frame: a seeded stream of generated
//! frames (valid ones for three tenants' VIPs, and mutations of them: every
//! kind of `EtherType`, VLAN tags, IPv4 options, IPv6 extension headers,
//! fragments, ICMP errors quoting real and random flows, truncation at any
//! offset, flipped bytes, random bytes) runs through the real program with
//! `BPF_PROG_TEST_RUN`, against maps programmed from a configuration. On
//! every frame:
//!
//! - the action is `XDP_PASS`, `XDP_DROP`, `XDP_TX` or `XDP_REDIRECT`,
//!   never `XDP_ABORTED` nor anything else;
//! - a transmitted frame is the input's IP packet encapsulated to a backend
//!   of the tenant owning the packet's VIP (for an ICMP error, the quoted
//!   packet's source), never another tenant's, nor any other address.
//!
//! After the run, the counters account for every frame: `rx` is the number
//! sent, the pass counters add up to the passed frames, the drops of every
//! tenant (and of no tenant) to the dropped ones, `forwarded` to the
//! transmitted ones, and each tenant's traffic counter to the frames sent to
//! its backends.
//!
//! `LB_FRAMES` sets the number of frames (default 1,000,000) and
//! `LB_FRAME_SEED` the seed (default: from the clock, printed); a failure
//! names its seed and frame index, so `LB_FRAME_SEED=S` replays it.

#[allow(
    dead_code,
    reason = "the shared harness; this file uses only seed_nexthops"
)]
mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::programs::{TestRun as _, TestRunOptions};
use lb::{
    config,
    dataplane::{BALANCER_PROGRAM, Dataplane, LoadOptions},
    reconcile::Reconciler,
};
use lb_common::{DropReason, NO_TENANT, global_counter};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Tenant name, IPv4 VIP, IPv6 VIP, backends.
const TENANTS: [(&str, &str, &str, [&str; 2]); 3] = [
    (
        "a",
        "203.0.113.1",
        "2001:db8:100::1",
        ["10.0.1.1", "10.0.1.2"],
    ),
    (
        "b",
        "203.0.113.2",
        "2001:db8:100::2",
        ["10.0.2.1", "10.0.2.2"],
    ),
    (
        "c",
        "203.0.113.3",
        "2001:db8:100::3",
        ["10.0.3.1", "10.0.3.2"],
    ),
];

fn configuration() -> String {
    use std::fmt::Write as _;
    let mut text = String::from("[node]\ninterface = \"eth0\"\nflow_table_size = 4096\n");
    for (name, v4, v6, backends) in TENANTS {
        let _ = writeln!(text, "[[tenant]]\nname = \"{name}\"");
        match name {
            // Some generated sources fall in b's deny list; a and c have
            // budgets the stream exceeds now and then.
            "a" => text += "[tenant.limits]\nnew_flows_per_second = 20000\n",
            "b" => text += "[tenant.acl]\ndeny = [\"198.51.100.0/24\"]\n",
            "c" => text += "[tenant.limits]\npackets_per_second = 20000\n",
            _ => {}
        }
        let _ = writeln!(
            text,
            "[[tenant.pool]]\nname = \"web\"\nring_size = 257\nbackends = [{{ address = \"{}\" }}, \
             {{ address = \"{}\" }}]",
            backends[0], backends[1]
        );
        for vip in [v4, v6] {
            for (port, proto) in [(80, "tcp"), (53, "udp")] {
                let _ = writeln!(
                    text,
                    "[[tenant.l4]]\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\n\
                     pool = \"web\""
                );
            }
        }
    }
    text
}

// ---- A small seeded generator (splitmix64: reproducible, no dependency) ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("fits")
    }

    /// True with probability `percent` / 100.
    fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---- Frames ----

/// A flow sent earlier, quoted by later ICMP errors (so some errors are
/// about flows the table holds).
#[derive(Clone, Copy)]
struct Flow {
    client: IpAddr,
    client_port: u16,
    vip: IpAddr,
    vip_port: u16,
    proto: u8,
}

struct Generator {
    rng: Rng,
    /// The VIP addresses of each family.
    vips4: Vec<IpAddr>,
    vips6: Vec<IpAddr>,
    recent: Vec<Flow>,
}

impl Generator {
    fn source(&mut self, v6: bool) -> IpAddr {
        let r = &mut self.rng;
        if v6 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            a[4..].copy_from_slice(&r.bytes(12));
            return IpAddr::from(a);
        }
        match r.below(4) {
            0 => IpAddr::from([198, 51, 100, r.byte()]), // denied by b
            1 => IpAddr::from(r.next().to_le_bytes()[..4].try_into().unwrap_or([0; 4])),
            _ => IpAddr::from([192, 0, 2, r.byte()]),
        }
    }

    /// A destination: mostly a VIP, else another address beside one (its
    /// last byte random, so sometimes another VIP).
    fn destination(&mut self, v6: bool) -> IpAddr {
        let vip = *self.rng.pick(if v6 { &self.vips6 } else { &self.vips4 });
        if self.rng.percent(85) {
            return vip;
        }
        match vip {
            IpAddr::V4(a) => {
                let mut o = a.octets();
                o[3] = self.rng.byte();
                IpAddr::V4(Ipv4Addr::from(o))
            }
            IpAddr::V6(a) => {
                let mut o = a.octets();
                o[15] = self.rng.byte();
                IpAddr::V6(Ipv6Addr::from(o))
            }
        }
    }

    /// A TCP or UDP header (checksum left zero: the balancer never reads it).
    fn l4(&mut self, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        if proto == 6 {
            h.extend_from_slice(&self.rng.bytes(8)); // seq, ack
            h.push(0x50);
            let any = self.rng.byte();
            h.push(*self.rng.pick(&[0x02, 0x10, 0x12, 0x11, 0x04, 0x18, any]));
            h.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
        } else {
            h.extend_from_slice(&[0, 8, 0, 0]);
        }
        let n = self.rng.below(64);
        h.extend_from_slice(&self.rng.bytes(n));
        if proto == 17 {
            let len = u16::try_from(h.len()).expect("short").to_be_bytes();
            h[4] = len[0];
            h[5] = len[1];
        }
        h
    }

    /// An IPv4 or IPv6 header for `payload`, with options, extension
    /// headers or fragment fields now and then.
    fn ip(&mut self, src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let options = if self.rng.percent(10) {
                    let words = 1 + self.rng.below(10);
                    self.rng.bytes(words * 4)
                } else {
                    Vec::new()
                };
                let ihl = 5 + options.len() / 4;
                let total = ihl * 4 + payload.len();
                let mut h = vec![0u8; 20];
                h[0] = 0x40 | u8::try_from(ihl).expect("ihl");
                h[2..4].copy_from_slice(&u16::try_from(total).expect("len").to_be_bytes());
                let frag: u16 = match self.rng.below(20) {
                    0 => 0x2000,                  // more fragments
                    1 => self.rng.u16() & 0x1fff, // an offset
                    2..=9 => 0x4000,              // DF
                    _ => 0,
                };
                h[6..8].copy_from_slice(&frag.to_be_bytes());
                h[8] = 64;
                h[9] = proto;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                h.extend_from_slice(&options);
                h.extend_from_slice(payload);
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                // Extension headers: hop-by-hop, routing, fragment, options.
                let mut ext = Vec::new();
                let mut next = proto;
                if self.rng.percent(10) {
                    for _ in 0..=self.rng.below(2) {
                        let kind = *self.rng.pick(&[0u8, 43, 44, 60]);
                        let mut e = vec![next, 0];
                        e.extend_from_slice(&self.rng.bytes(6));
                        e.extend_from_slice(&ext);
                        ext = e;
                        next = kind;
                    }
                }
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                let plen = u16::try_from(ext.len() + payload.len()).expect("len");
                h[4..6].copy_from_slice(&plen.to_be_bytes());
                h[6] = next;
                h[7] = 64;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                h.extend_from_slice(&ext);
                h.extend_from_slice(payload);
                h
            }
            _ => unreachable!("one family per packet"),
        }
    }

    /// A TCP or UDP packet from a client to a (mostly) VIP address.
    fn flow_packet(&mut self) -> Vec<u8> {
        let v6 = self.rng.percent(30);
        let src = self.source(v6);
        let dst = self.destination(v6);
        // Mostly a (protocol, port) the VIPs serve, else anything.
        let (any_proto, any_port) = (self.rng.byte(), self.rng.u16());
        let (proto, dport) = *self.rng.pick(&[
            (6u8, 80u16),
            (6, 80),
            (17, 53),
            (17, 53),
            (6, any_port),
            (17, 80),
            (any_proto, 80),
        ]);
        let sport = 1024 + self.rng.u16() % 60_000;
        if proto == 6 || proto == 17 {
            // Remembered for ICMP errors to quote: up to 4096 flows, then a
            // random one is replaced.
            let flow = Flow {
                client: src,
                client_port: sport,
                vip: dst,
                vip_port: dport,
                proto,
            };
            if self.recent.len() < 4096 {
                self.recent.push(flow);
            } else {
                let i = self.rng.below(self.recent.len());
                self.recent[i] = flow;
            }
        }
        let l4 = self.l4(proto, sport, dport);
        self.ip(src, dst, proto, &l4)
    }

    /// An ICMP error quoting a backend's packet of a recent flow (or of a
    /// made-up one), from a router, mostly to the quoted VIP.
    fn icmp_error(&mut self) -> Vec<u8> {
        let flow = if !self.recent.is_empty() && self.rng.percent(70) {
            *self.rng.pick(&self.recent)
        } else {
            let v6 = self.rng.percent(30);
            let (any_proto, any_port) = (self.rng.byte(), self.rng.u16());
            Flow {
                client: self.source(v6),
                client_port: self.rng.u16(),
                vip: self.destination(v6),
                vip_port: *self.rng.pick(&[80u16, 53, any_port]),
                proto: *self.rng.pick(&[6u8, 17, any_proto]),
            }
        };
        let v6 = flow.vip.is_ipv6();
        let l4 = self.l4(flow.proto, flow.vip_port, flow.client_port);
        let mut quoted = self.ip(flow.vip, flow.client, flow.proto, &l4);
        // Routers quote at least the header and 8 bytes; a forger need not.
        if self.rng.percent(20) {
            let len = self.rng.below(quoted.len() + 1);
            quoted.truncate(len);
        }
        let any_type = self.rng.byte();
        let (kind, code) = if v6 {
            *self
                .rng
                .pick(&[(1u8, 4u8), (2, 0), (3, 0), (128, 0), (any_type, 0)])
        } else {
            *self
                .rng
                .pick(&[(3u8, 4u8), (3, 3), (11, 0), (8, 0), (any_type, 0)])
        };
        let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0x78];
        icmp.extend_from_slice(&quoted);
        let router = self.source(v6);
        let to = if self.rng.percent(85) {
            flow.vip
        } else {
            self.destination(v6)
        };
        let proto = if v6 { 58 } else { 1 };
        self.ip(router, to, proto, &icmp)
    }

    /// The next frame: a valid packet or a mutation of one.
    fn frame(&mut self) -> Vec<u8> {
        if self.rng.percent(2) {
            let n = 14 + self.rng.below(200);
            return self.rng.bytes(n);
        }
        let l3 = if self.rng.percent(25) {
            self.icmp_error()
        } else {
            self.flow_packet()
        };
        let ether_type: u16 = match self.rng.below(50) {
            0 => 0x0806, // ARP
            1 => self.rng.u16(),
            2 => 0x0800 ^ 0x86dd ^ if l3[0] >> 4 == 4 { 0x0800 } else { 0x86dd },
            _ if l3[0] >> 4 == 4 => 0x0800,
            _ => 0x86dd,
        };
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 9];
        // VLAN tags: none, one, two (802.1ad outside), or an odd TPID.
        for _ in 0..*self.rng.pick(&[0usize, 0, 0, 0, 1, 1, 2]) {
            let tpid = *self.rng.pick(&[0x8100u16, 0x88a8, 0x8100]);
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(self.rng.u16() & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.extend_from_slice(&l3);
        self.mutate(&mut f);
        f
    }

    fn mutate(&mut self, f: &mut Vec<u8>) {
        match self.rng.below(10) {
            // Truncated at any offset (the kernel refuses frames shorter
            // than an Ethernet header, so those are not tried).
            0 => {
                let len = 14 + self.rng.below(f.len() - 13);
                f.truncate(len);
            }
            // A few bytes flipped anywhere.
            1 => {
                for _ in 0..=self.rng.below(4) {
                    let i = self.rng.below(f.len());
                    f[i] ^= 1 << self.rng.below(8);
                }
            }
            // A random byte in the first 64 (the headers).
            2 => {
                let i = self.rng.below(f.len().min(64));
                f[i] = self.rng.byte();
            }
            // Trailing bytes after the IP packet (Ethernet padding).
            3 => {
                let n = self.rng.below(40);
                f.extend_from_slice(&self.rng.bytes(n));
            }
            _ => {}
        }
    }
}

// ---- Reading frames (the test's own parser) ----

/// The offset of the IP header and the `EtherType`, past any VLAN tags.
fn l3_of(f: &[u8]) -> Option<(usize, u16)> {
    let mut off = 12;
    loop {
        let t = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
        if t == 0x8100 || t == 0x88a8 {
            off += 4;
        } else {
            return Some((off + 2, t));
        }
    }
}

/// (source, destination, protocol, header length) of an IP header.
fn ip_header(p: &[u8]) -> Option<(IpAddr, IpAddr, u8, usize)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let src: [u8; 4] = p[12..16].try_into().ok()?;
            let dst: [u8; 4] = p[16..20].try_into().ok()?;
            Some((src.into(), dst.into(), p[9], usize::from(p[0] & 0x0f) * 4))
        }
        6 if p.len() >= 40 => {
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            Some((src.into(), dst.into(), p[6], 40))
        }
        _ => None,
    }
}

/// The VIP a packet is about: its destination, or for an ICMP error the
/// source of the quoted packet.
fn vip_of(packet: &[u8]) -> Option<IpAddr> {
    let (_, dst, proto, hlen) = ip_header(packet)?;
    if proto == 1 || proto == 58 {
        let (quoted_src, _, _, _) = ip_header(packet.get(hlen + 8..)?)?;
        return Some(quoted_src);
    }
    Some(dst)
}

struct World {
    dp: Dataplane,
    /// Tenant id by name.
    ids: BTreeMap<&'static str, u32>,
    /// Owner of each VIP address and backend address.
    vip_owner: BTreeMap<IpAddr, u32>,
    backend_owner: BTreeMap<IpAddr, u32>,
}

fn world() -> World {
    let cfg = config::parse(&configuration(), "random_frames.toml")
        .unwrap_or_else(|e| panic!("config: {e}"));
    let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
    let mut reconciler = Reconciler::new();
    reconciler.apply(&cfg, &mut dp).expect("apply");
    common::seed_nexthops(&mut dp, 0..16);
    dp.program(BALANCER_PROGRAM).expect("verifier");
    let mut w = World {
        dp,
        ids: BTreeMap::new(),
        vip_owner: BTreeMap::new(),
        backend_owner: BTreeMap::new(),
    };
    for (name, v4, v6, backends) in TENANTS {
        let id = reconciler.ids().tenant(name).expect("tenant id");
        w.ids.insert(name, id);
        for vip in [v4, v6] {
            w.vip_owner.insert(vip.parse().expect("vip"), id);
        }
        for b in backends {
            w.backend_owner.insert(b.parse().expect("backend"), id);
        }
    }
    w
}

/// Actions seen, and the frames transmitted per tenant.
#[derive(Default)]
struct Tally {
    by_action: BTreeMap<u32, u64>,
    to_tenant: BTreeMap<u32, u64>,
}

/// Checks one transmitted frame; returns the tenant whose backend got it.
fn check_transmitted(w: &World, input: &[u8], out: &[u8]) -> Result<u32, String> {
    let (in_l3, _) = l3_of(input).ok_or("input has no L3")?;
    let (out_l3, _) = l3_of(out).ok_or("output has no L3")?;
    let (_, outer_dst, outer_proto, outer_len) =
        ip_header(&out[out_l3..]).ok_or("output has no IP header")?;
    if outer_proto != 4 && outer_proto != 41 {
        return Err(format!(
            "transmitted without encapsulation (protocol {outer_proto}) to {outer_dst}"
        ));
    }
    let backend_tenant = *w
        .backend_owner
        .get(&outer_dst)
        .ok_or_else(|| format!("encapsulated to {outer_dst}, which is no backend"))?;
    let inner = &out[out_l3 + outer_len..];
    let original = &input[in_l3..];
    if inner.len() > original.len() || inner != &original[..inner.len()] {
        return Err("the encapsulated packet is not the input's IP packet".into());
    }
    let vip = vip_of(inner).ok_or("the encapsulated packet has no VIP")?;
    let vip_tenant = *w
        .vip_owner
        .get(&vip)
        .ok_or_else(|| format!("forwarded a packet about {vip}, which is no VIP"))?;
    if vip_tenant != backend_tenant {
        return Err(format!(
            "a packet for tenant {vip_tenant}'s VIP {vip} went to tenant {backend_tenant}'s \
             backend {outer_dst}"
        ));
    }
    Ok(backend_tenant)
}

fn hex(f: &[u8]) -> String {
    use std::fmt::Write as _;
    f.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[test]
fn every_frame_keeps_the_invariants_and_every_frame_is_counted() {
    let frames: u64 = std::env::var("LB_FRAMES")
        .ok()
        .map_or(1_000_000, |v| v.parse().expect("LB_FRAMES is a number"));
    let seed: u64 = std::env::var("LB_FRAME_SEED").ok().map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .subsec_nanos()
                .into()
        },
        |v| v.parse().expect("LB_FRAME_SEED is a number"),
    );
    println!("random frames: {frames} frames, LB_FRAME_SEED={seed}");
    let mut w = world();
    let mut generator = Generator {
        rng: Rng(seed),
        vips4: w
            .vip_owner
            .keys()
            .copied()
            .filter(IpAddr::is_ipv4)
            .collect(),
        vips6: w
            .vip_owner
            .keys()
            .copied()
            .filter(IpAddr::is_ipv6)
            .collect(),
        recent: Vec::new(),
    };
    let mut tally = Tally::default();
    let mut out = vec![0u8; 4096];
    for i in 0..frames {
        let frame = generator.frame();
        let prog = w.dp.program(BALANCER_PROGRAM).expect("loaded");
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| {
                panic!(
                    "seed {seed} frame {i}: test run failed: {e}; frame {}",
                    hex(&frame)
                )
            });
        let action = result.return_value;
        *tally.by_action.entry(action).or_default() += 1;
        match action {
            XDP_PASS | XDP_DROP => {}
            XDP_TX | XDP_REDIRECT => {
                let len = usize::try_from(result.data_size_out).expect("size");
                let tenant = check_transmitted(&w, &frame, &out[..len]).unwrap_or_else(|e| {
                    panic!(
                        "seed {seed} frame {i}: {e}\n  in:  {}\n  out: {}",
                        hex(&frame),
                        hex(&out[..len])
                    )
                });
                *tally.to_tenant.entry(tenant).or_default() += 1;
            }
            other => panic!(
                "seed {seed} frame {i}: action {other} (0 is XDP_ABORTED); frame {}",
                hex(&frame)
            ),
        }
    }
    check_counters(&w, &tally, frames, seed);
    println!("random frames: actions {:?}", tally.by_action);
    let globals: Vec<String> = (0..global_counter::COUNT)
        .filter(|&c| w.dp.global(c) > 0)
        .map(|c| format!("{} {}", global_counter::NAMES[c as usize], w.dp.global(c)))
        .collect();
    println!("random frames: counters {}", globals.join(", "));
    let mut tenants: Vec<(&str, u32)> = w.ids.iter().map(|(n, &id)| (*n, id)).collect();
    tenants.push(("(none)", NO_TENANT));
    for (name, id) in tenants {
        let by_reason = w.dp.tenant_drops(id).by_reason;
        let drops: Vec<String> = (0..DropReason::COUNT)
            .filter(|&r| by_reason[r] > 0)
            .map(|r| format!("{} {}", DropReason::ALL[r].name(), by_reason[r]))
            .collect();
        println!("random frames: tenant {name} drops: {}", drops.join(", "));
    }
}

fn check_counters(w: &World, tally: &Tally, frames: u64, seed: u64) {
    use global_counter::{
        FORWARDED, FRAGMENT_PASSED, ICMP_TOO_BIG_SENT, PASS_LOCAL, PASS_NOT_IP, PASS_NOT_VIP, RX,
    };
    let g = |c| w.dp.global(c);
    let got = |a| tally.by_action.get(&a).copied().unwrap_or(0);
    let mut tenants: Vec<u32> = w.ids.values().copied().collect();
    tenants.push(NO_TENANT);
    let drops: u64 = tenants
        .iter()
        .map(|&t| w.dp.tenant_drops(t).by_reason.iter().sum::<u64>())
        .sum();
    // A too-big answer is counted as a drop of the packet and sent as TX.
    let too_big: u64 = tenants
        .iter()
        .map(|&t| w.dp.tenant_drops(t).by_reason[DropReason::TOO_BIG.index()])
        .sum();
    assert_eq!(g(RX), frames, "seed {seed}: rx counts every frame");
    assert_eq!(
        g(PASS_NOT_IP) + g(PASS_NOT_VIP) + g(PASS_LOCAL) + g(FRAGMENT_PASSED),
        got(XDP_PASS),
        "seed {seed}: the pass counters add up to the passed frames"
    );
    assert_eq!(
        drops - too_big,
        got(XDP_DROP),
        "seed {seed}: the drop counters add up to the dropped frames"
    );
    assert_eq!(
        g(FORWARDED) + g(ICMP_TOO_BIG_SENT),
        got(XDP_TX) + got(XDP_REDIRECT),
        "seed {seed}: forwarded adds up to the transmitted frames"
    );
    for (name, &id) in &w.ids {
        let sent = tally.to_tenant.get(&id).copied().unwrap_or(0);
        assert_eq!(
            w.dp.tenant_stats(id).packets,
            sent,
            "seed {seed}: tenant {name}'s traffic counter adds up to the frames sent to its backends"
        );
        assert!(sent > 0, "seed {seed}: tenant {name} got no traffic at all");
    }
    // The stream reaches the paths it is meant to: each outcome happens.
    for action in [XDP_PASS, XDP_DROP, XDP_TX] {
        assert!(got(action) > 0, "seed {seed}: no frame got action {action}");
    }
}
