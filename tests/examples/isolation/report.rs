//! The isolation bench's results: a printed table, JSON, a markdown report
//! and an SVG chart, each labelled with the machine.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    Plan,
    machine::Machine,
    paced::{Tally, quantile_ms},
    results,
};

/// B's p99 under the flood over its baseline: what the bench aims at.
pub const AIM_P99_RATIO: f64 = 1.5;

/// One measured window: B's tally and the LB's CPU share (L4: its NAPI
/// thread, where XDP runs; L7: lbd's processes).
#[derive(Clone, Debug)]
pub struct PhaseRun {
    pub tally: Tally,
    pub busy: f64,
    /// Share of the window the LB's threads spent runnable but waiting for
    /// their CPU (L4: mostly for each other, the flood's NAPI thread and
    /// B's; L7: for other work on lbd's core).
    pub wait: f64,
    /// Busy share of CPU 0 and CPU 1 over the window: everything that ran
    /// there, the bench's and other work on the machine.
    pub cores: [f64; 2],
}

impl PhaseRun {
    pub fn phase(&self) -> BPhase {
        BPhase::from_tally(&self.tally, self.busy, self.wait, self.cores)
    }
}

/// Tenant B in one phase (one window, or every round's pooled).
#[derive(Clone, Debug, Default)]
pub struct BPhase {
    pub ok: u64,
    /// Answered, but not with a success (L7: a status other than 2xx).
    pub refused: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Tokens that found every worker busy.
    pub late: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// The LB's CPU share and run-queue wait (see [`PhaseRun`]).
    pub busy: f64,
    pub wait: f64,
    pub cores: [f64; 2],
}

impl BPhase {
    pub fn from_tally(t: &Tally, busy: f64, wait: f64, cores: [f64; 2]) -> BPhase {
        BPhase {
            ok: t.ok(),
            refused: t.refused_total(),
            errors: t.errors,
            first_error: t.first_error.clone(),
            late: t.late,
            seconds: t.seconds,
            p50_ms: quantile_ms(t, 0.50),
            p99_ms: quantile_ms(t, 0.99),
            p999_ms: quantile_ms(t, 0.999),
            max_ms: quantile_ms(t, 1.0),
            busy,
            wait,
            cores,
        }
    }

    /// Successful exchanges per second.
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    pub fn per_s(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    fn to_json(&self) -> Value {
        json!({
            "ok": self.ok,
            "refused": self.refused,
            "errors": self.errors,
            "first_error": self.first_error,
            "late": self.late,
            "seconds": round(self.seconds, 3),
            "per_s": round(self.per_s(), 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "p999_ms": round(self.p999_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "lb_busy": round(self.busy, 3),
            "lb_run_queue_wait": round(self.wait, 4),
            "cpu0_busy": round(self.cores[0], 3),
            "cpu1_busy": round(self.cores[1], 3),
        })
    }
}

/// B's baseline and B under A's flood, pooled over the rounds, and each
/// round's pair.
#[derive(Clone, Debug)]
pub struct Compared {
    pub baseline: BPhase,
    pub flood: BPhase,
    pub rounds: Vec<(BPhase, BPhase)>,
}

impl Compared {
    pub fn from_rounds(rounds: &[(PhaseRun, PhaseRun)]) -> Compared {
        let pool = |pick: &dyn Fn(&(PhaseRun, PhaseRun)) -> &PhaseRun| {
            let mut t = Tally::default();
            let (mut busy, mut wait, mut cores) = (0.0, 0.0, [0.0; 2]);
            for r in rounds {
                let p = pick(r);
                t.merge(&p.tally);
                busy += p.busy;
                wait += p.wait;
                cores[0] += p.cores[0];
                cores[1] += p.cores[1];
            }
            #[expect(clippy::cast_precision_loss, reason = "a few rounds")]
            let n = rounds.len().max(1) as f64;
            BPhase::from_tally(&t, busy / n, wait / n, [cores[0] / n, cores[1] / n])
        };
        Compared {
            baseline: pool(&|r| &r.0),
            flood: pool(&|r| &r.1),
            rounds: rounds.iter().map(|(b, f)| (b.phase(), f.phase())).collect(),
        }
    }

    pub fn p50_ratio(&self) -> f64 {
        self.flood.p50_ms / self.baseline.p50_ms.max(1e-9)
    }

    pub fn p99_ratio(&self) -> f64 {
        self.flood.p99_ms / self.baseline.p99_ms.max(1e-9)
    }

    pub fn throughput_ratio(&self) -> f64 {
        self.flood.per_s() / self.baseline.per_s().max(1e-9)
    }

    fn to_json(&self) -> Value {
        json!({
            "baseline": self.baseline.to_json(),
            "flood": self.flood.to_json(),
            "rounds": self.rounds.iter().map(|(b, f)| json!({
                "baseline": b.to_json(),
                "flood": f.to_json(),
            })).collect::<Vec<_>>(),
        })
    }

    fn ratios_json(&self) -> Value {
        json!({
            "p50": round(self.p50_ratio(), 3),
            "p99": round(self.p99_ratio(), 3),
            "throughput": round(self.throughput_ratio(), 3),
        })
    }
}

/// Tenant A's L4 flood over B's window (the mean of the flood windows).
#[derive(Clone, Debug)]
pub struct L4Flood {
    /// The generator's paced rate.
    pub offered_pps: u64,
    pub flows: u32,
    pub frame_bytes: usize,
    pub pps_limit: u64,
    pub new_flows_limit: u64,
    /// What the generator sent, per second.
    pub sent_pps: f64,
    /// What reached the balancer for A (admitted + dropped).
    pub seen_pps: f64,
    pub admitted_pps: f64,
    /// New flow-table entries of A per second.
    pub new_flows_per_s: f64,
    /// A's admitted packets that arrived encapsulated at A's backend.
    pub reached_backend_pps: f64,
    /// A's drops per second by reason.
    pub drops_per_s: Vec<(&'static str, f64)>,
    /// B's packets XDP dropped during the flood windows (must be 0).
    pub b_xdp_drops: u64,
}

impl L4Flood {
    pub fn mean(all: &[L4Flood]) -> Option<L4Flood> {
        let first = all.first()?;
        #[expect(clippy::cast_precision_loss, reason = "a few rounds")]
        let n = all.len() as f64;
        let avg = |f: &dyn Fn(&L4Flood) -> f64| all.iter().map(f).sum::<f64>() / n;
        let mut drops: BTreeMap<&'static str, f64> = BTreeMap::new();
        for a in all {
            for (name, v) in &a.drops_per_s {
                *drops.entry(name).or_default() += v / n;
            }
        }
        Some(L4Flood {
            sent_pps: avg(&|a| a.sent_pps),
            seen_pps: avg(&|a| a.seen_pps),
            admitted_pps: avg(&|a| a.admitted_pps),
            new_flows_per_s: avg(&|a| a.new_flows_per_s),
            reached_backend_pps: avg(&|a| a.reached_backend_pps),
            drops_per_s: drops.into_iter().collect(),
            b_xdp_drops: all.iter().map(|a| a.b_xdp_drops).sum(),
            ..first.clone()
        })
    }

    /// Share of what the generator sent that never reached XDP (the LB's
    /// receive ring was full).
    pub fn lost_before_lb(&self) -> f64 {
        (1.0 - self.seen_pps / self.sent_pps.max(1e-9)).max(0.0)
    }

    fn to_json(&self) -> Value {
        let drops: serde_json::Map<String, Value> = self
            .drops_per_s
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(round(*v, 0))))
            .collect();
        json!({
            "offered_pps": self.offered_pps,
            "flows": self.flows,
            "frame_bytes": self.frame_bytes,
            "limits": {
                "packets_per_second": self.pps_limit,
                "new_flows_per_second": self.new_flows_limit,
            },
            "sent_pps": round(self.sent_pps, 0),
            "seen_by_xdp_pps": round(self.seen_pps, 0),
            "lost_before_lb": round(self.lost_before_lb(), 4),
            "admitted_pps": round(self.admitted_pps, 0),
            "new_flows_per_s": round(self.new_flows_per_s, 0),
            "reached_backend_pps": round(self.reached_backend_pps, 0),
            "drops_per_s": drops,
            "b_xdp_drops": self.b_xdp_drops,
        })
    }
}

/// The L4 half's figures.
#[derive(Clone, Debug)]
pub struct L4Result {
    pub b_rate: f64,
    pub b_workers: usize,
    pub b: Compared,
    pub a: L4Flood,
}

/// Tenant A's L7 flood (every flood window's measured part pooled).
#[derive(Clone, Debug)]
pub struct L7Flood {
    pub limit_rps: u64,
    pub factor: u64,
    pub conns: usize,
    /// Requests A's client made per second.
    pub sent_per_s: f64,
    pub ok_per_s: f64,
    pub limited_per_s: f64,
    /// Other refusals (statuses other than 2xx and 429) per second.
    pub other_per_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub late: u64,
    /// What A's backends served per second.
    pub backend_per_s: f64,
}

impl L7Flood {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    pub fn from_tally(t: &Tally, plan: &Plan, backend_per_s: f64) -> L7Flood {
        let s = t.seconds.max(1e-9);
        let limited = t.refused.get(&429).copied().unwrap_or(0);
        L7Flood {
            limit_rps: plan.l7_a_limit,
            factor: plan.l7_flood_factor,
            conns: plan.l7_a_conns,
            sent_per_s: t.attempts() as f64 / s,
            ok_per_s: t.ok() as f64 / s,
            limited_per_s: limited as f64 / s,
            other_per_s: (t.refused_total() - limited) as f64 / s,
            errors: t.errors,
            first_error: t.first_error.clone(),
            late: t.late,
            backend_per_s,
        }
    }

    pub fn offered_rps(&self) -> u64 {
        self.limit_rps * self.factor
    }

    /// Share of A's requests answered 429.
    pub fn limited_share(&self) -> f64 {
        self.limited_per_s / self.sent_per_s.max(1e-9)
    }

    fn to_json(&self) -> Value {
        json!({
            "requests_per_second_limit": self.limit_rps,
            "offered_per_s": self.offered_rps(),
            "connections": self.conns,
            "sent_per_s": round(self.sent_per_s, 0),
            "ok_per_s": round(self.ok_per_s, 0),
            "limited_per_s": round(self.limited_per_s, 0),
            "other_refused_per_s": round(self.other_per_s, 0),
            "limited_share": round(self.limited_share(), 4),
            "errors": self.errors,
            "first_error": self.first_error,
            "late": self.late,
            "backend_served_per_s": round(self.backend_per_s, 0),
        })
    }
}

/// The L7 half's figures.
#[derive(Clone, Debug)]
pub struct L7Result {
    pub b_rate: f64,
    pub b_conns: usize,
    pub b: Compared,
    pub a: L7Flood,
    pub lbd_version: String,
}

/// How the run was made.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub window_s: f64,
    pub warm_s: f64,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Results {
    pub machine: Machine,
    pub settings: Settings,
    pub l4: Option<L4Result>,
    pub l7: Option<L7Result>,
}

impl Results {
    pub fn to_json(&self) -> Value {
        let s = &self.settings;
        let mut ratios = serde_json::Map::new();
        let mut aim = serde_json::Map::new();
        aim.insert("p99_ratio_at_most".into(), json!(AIM_P99_RATIO));
        if let Some(l4) = &self.l4 {
            ratios.insert("l4_p99".into(), json!(round(l4.b.p99_ratio(), 3)));
            ratios.insert(
                "l4_throughput".into(),
                json!(round(l4.b.throughput_ratio(), 3)),
            );
            aim.insert("l4_met".into(), json!(l4.b.p99_ratio() <= AIM_P99_RATIO));
        }
        if let Some(l7) = &self.l7 {
            ratios.insert("l7_p99".into(), json!(round(l7.b.p99_ratio(), 3)));
            ratios.insert(
                "l7_throughput".into(),
                json!(round(l7.b.throughput_ratio(), 3)),
            );
            aim.insert("l7_met".into(), json!(l7.b.p99_ratio() <= AIM_P99_RATIO));
        }
        json!({
            "bench": "isolation",
            "quick": s.quick,
            "machine": {
                "cpu": self.machine.cpu,
                "cores": self.machine.cores,
                "kernel": self.machine.kernel,
                "date": self.machine.date,
                "loadavg_start": self.machine.load_start,
                "loadavg_end": self.machine.load_end,
            },
            "settings": {
                "rounds": s.rounds,
                "window_s": s.window_s,
                "warm_s": s.warm_s,
                "l4_placement": {
                    "lb_napi_cpu": crate::l4::LB_CPU,
                    "clients_backends_generator_cpu": crate::l4::WORLD_CPU,
                },
                "l7_placement": {
                    "lbd_cpu": crate::l7::PROXY_CPU,
                    "clients_backends_cpu": crate::l7::GEN_CPU,
                },
            },
            "l4": self.l4.as_ref().map(|l4| json!({
                "b": {
                    "what": "TCP exchange through B's XDP VIP: connect, the backend's name line, a 5-byte echo, close",
                    "rate_per_s": l4.b_rate,
                    "workers": l4.b_workers,
                    "phases": l4.b.to_json(),
                },
                "a": l4.a.to_json(),
                "ratios": l4.b.ratios_json(),
            })),
            "l7": self.l7.as_ref().map(|l7| json!({
                "lbd": l7.lbd_version,
                "b": {
                    "what": "HTTPS keep-alive GET / through lbd (TLS 1.3, HTTP/1.1), 100-byte responses",
                    "rate_per_s": l7.b_rate,
                    "connections": l7.b_conns,
                    "phases": l7.b.to_json(),
                },
                "a": l7.a.to_json(),
                "ratios": l7.b.ratios_json(),
            })),
            "ratios": ratios,
            "aim": aim,
        })
    }
}

pub fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    if v.is_finite() {
        (v * m).round() / m
    } else {
        0.0
    }
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

/// `12,345`.
fn thousands(v: f64) -> String {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive figure far below 2^63"
    )]
    let n = v.max(0.0).round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(v: f64) -> String {
    format!("{v:.3}")
}

fn verdict(ratio: f64) -> &'static str {
    if ratio <= AIM_P99_RATIO {
        "within"
    } else {
        "over"
    }
}

const L4_BUSY: &str = "LB core busy (its two NAPI threads)";
const L4_WAIT: &str = "LB's NAPI threads waiting for the LB core (for each other)";
const L7_BUSY: &str = "lbd's CPU (share of its core)";
const L7_WAIT: &str = "lbd's threads waiting for their core (each other, other work)";

/// B's figures, baseline against flood, as a markdown table.
fn b_table(c: &Compared, unit: &str, busy: &str, wait: &str) -> String {
    let mut s = String::new();
    let (b, f) = (&c.baseline, &c.flood);
    let _ = writeln!(s, "| tenant B | baseline | A flooding | flood / baseline |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
    let _ = writeln!(
        s,
        "| {unit} per second | {} | {} | {:.2}x |",
        thousands(b.per_s()),
        thousands(f.per_s()),
        c.throughput_ratio()
    );
    let _ = writeln!(
        s,
        "| p50, ms | {} | {} | {:.2}x |",
        ms(b.p50_ms),
        ms(f.p50_ms),
        c.p50_ratio()
    );
    let _ = writeln!(
        s,
        "| **p99, ms** | {} | {} | **{:.2}x** |",
        ms(b.p99_ms),
        ms(f.p99_ms),
        c.p99_ratio()
    );
    let _ = writeln!(
        s,
        "| p99.9 / max, ms | {} / {} | {} / {} | |",
        ms(b.p999_ms),
        ms(b.max_ms),
        ms(f.p999_ms),
        ms(f.max_ms)
    );
    let _ = writeln!(
        s,
        "| {unit} measured (failed, refused, late) | {} ({}, {}, {}) | {} ({}, {}, {}) | |",
        thousands_u(b.ok + b.errors + b.refused),
        b.errors,
        b.refused,
        b.late,
        thousands_u(f.ok + f.errors + f.refused),
        f.errors,
        f.refused,
        f.late
    );
    let _ = writeln!(s, "| {busy} | {} | {} | |", pct(b.busy), pct(f.busy));
    let _ = writeln!(
        s,
        "| {wait}, ms per s | {:.1} | {:.1} | |",
        b.wait * 1000.0,
        f.wait * 1000.0
    );
    let _ = writeln!(
        s,
        "| CPU 0 / CPU 1 busy (everything, other work included) | {} / {} | {} / {} | |",
        pct(b.cores[0]),
        pct(b.cores[1]),
        pct(f.cores[0]),
        pct(f.cores[1])
    );
    s
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn thousands_u(n: u64) -> String {
    thousands(n as f64)
}

fn l4_a_lines(a: &L4Flood) -> String {
    let mut s = String::new();
    let drops = a
        .drops_per_s
        .iter()
        .map(|(k, v)| format!("`{k}` {}", thousands(*v)))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        s,
        "- Tenant A: `lb_gen` offered {} packets/s ({}-byte IPv4 TCP frames over {} flows), sent {}/s; \
         XDP saw {}/s for A ({} lost before the LB: its receive ring was full); admitted {}/s \
         (`packets_per_second = {}`), of which {} new flows/s (`new_flows_per_second = {}`); \
         {}/s reached A's backend encapsulated.",
        thousands(f64::from(u32::try_from(a.offered_pps).unwrap_or(u32::MAX))),
        a.frame_bytes,
        thousands(f64::from(a.flows)),
        thousands(a.sent_pps),
        thousands(a.seen_pps),
        pct(a.lost_before_lb()),
        thousands(a.admitted_pps),
        thousands_u(a.pps_limit),
        thousands(a.new_flows_per_s),
        thousands_u(a.new_flows_limit),
        thousands(a.reached_backend_pps),
    );
    let _ = writeln!(
        s,
        "- A's drops per second by reason: {drops}. B's packets dropped by XDP during the floods: {}.",
        a.b_xdp_drops
    );
    s
}

fn l7_a_lines(a: &L7Flood) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "- Tenant A: `requests_per_second = {}`, flooding at {}x ({} requests/s over {} keep-alive \
         connections): sent {}/s, answered {}/s with 2xx and {}/s with 429 (**{} 429**), {}/s \
         other refusals, {} failed; A's backends served {}/s.",
        thousands_u(a.limit_rps),
        a.factor,
        thousands_u(a.offered_rps()),
        a.conns,
        thousands(a.sent_per_s),
        thousands(a.ok_per_s),
        thousands(a.limited_per_s),
        pct(a.limited_share()),
        thousands(a.other_per_s),
        a.errors,
        thousands(a.backend_per_s),
    );
    if let Some(e) = &a.first_error {
        let _ = writeln!(s, "- A's first failure: {e}");
    }
    s
}

fn rounds_table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| layer | round | B baseline: per s, p50 / p99 ms | B under flood: per s, p50 / p99 ms | p99 ratio |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    let mut rows = |name: &str, c: &Compared| {
        for (i, (b, f)) in c.rounds.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {name} | {} | {}, {} / {} | {}, {} / {} | {:.2}x |",
                i + 1,
                thousands(b.per_s()),
                ms(b.p50_ms),
                ms(b.p99_ms),
                thousands(f.per_s()),
                ms(f.p50_ms),
                ms(f.p99_ms),
                f.p99_ms / b.p99_ms.max(1e-9)
            );
        }
    };
    if let Some(l4) = &r.l4 {
        rows("L4", &l4.b);
    }
    if let Some(l7) = &r.l7 {
        rows("L7", &l7.b);
    }
    s
}

fn verdict_line(r: &Results) -> String {
    let mut parts = Vec::new();
    if let Some(l4) = &r.l4 {
        parts.push(format!(
            "L4 {:.2}x ({})",
            l4.b.p99_ratio(),
            verdict(l4.b.p99_ratio())
        ));
    }
    if let Some(l7) = &r.l7 {
        parts.push(format!(
            "L7 {:.2}x ({})",
            l7.b.p99_ratio(),
            verdict(l7.b.p99_ratio())
        ));
    }
    format!(
        "B's p99 under A's flood / its baseline (aim: at most {AIM_P99_RATIO}x): {}",
        parts.join(", ")
    )
}

/// Prints the tables.
pub fn print(r: &Results) {
    println!();
    println!(
        "bench isolation on {} ({}); load average {} -> {}",
        r.machine.label(),
        if r.settings.quick {
            "quick: short windows, noisy"
        } else {
            "full"
        },
        r.machine.load_start,
        r.machine.load_end
    );
    if let Some(l4) = &r.l4 {
        println!(
            "L4: B's TCP exchanges at {:.0}/s through its XDP VIP; A flooding its own VIP",
            l4.b_rate
        );
        print!("{}", b_table(&l4.b, "exchanges", L4_BUSY, L4_WAIT));
        print!("{}", l4_a_lines(&l4.a));
    }
    if let Some(l7) = &r.l7 {
        println!(
            "L7: B's HTTPS keep-alive requests at {:.0}/s through lbd; A flooding at {}x its limit",
            l7.b_rate, l7.a.factor
        );
        print!("{}", b_table(&l7.b, "requests", L7_BUSY, L7_WAIT));
        print!("{}", l7_a_lines(&l7.a));
    }
    println!("{}", verdict_line(r));
}

/// Writes `out` (JSON) and, next to it, the markdown report and the chart.
pub fn write(r: &Results, out: &Path) -> Result<()> {
    results::write(out, &r.to_json(), &svg(r), |svg_name| markdown(r, svg_name))
}

fn markdown(r: &Results, svg_name: &str) -> String {
    let mut s = String::new();
    let st = &r.settings;
    let _ = writeln!(s, "# Isolation benchmark: `cargo xtask bench isolation`\n");
    let _ = writeln!(
        s,
        "Machine: **{}**. Run: {}{}. Load average at start / end: {} / {} (other work on the \
         machine adds to both phases' latencies, unevenly).\n",
        r.machine.label(),
        r.machine.date,
        if st.quick {
            " (`--quick`: short windows, not representative)"
        } else {
            ""
        },
        r.machine.load_start,
        r.machine.load_end,
    );
    let _ = writeln!(s, "![isolation benchmark chart]({svg_name})\n");
    let _ = writeln!(s, "**{}**\n", verdict_line(r));
    let _ = writeln!(
        s,
        "Tenant B sends at a fixed, modest rate; each figure pools {} windows of {:.0} s per \
         phase (after {:.1} s of warm-up each), baseline and flood windows alternating, all in \
         one run.\n",
        st.rounds, st.window_s, st.warm_s
    );
    if let Some(l4) = &r.l4 {
        let _ = writeln!(
            s,
            "## L4: XDP\n\nB: TCP exchanges at {:.0}/s ({} workers) through its VIP: connect, the \
             backend's name line, a 5-byte echo, close. A: a packet flood at its own VIP.\n",
            l4.b_rate, l4.b_workers
        );
        s.push_str(&b_table(&l4.b, "exchanges", L4_BUSY, L4_WAIT));
        s.push('\n');
        s.push_str(&l4_a_lines(&l4.a));
        s.push('\n');
    }
    if let Some(l7) = &r.l7 {
        let _ = writeln!(
            s,
            "## L7: lbd\n\nB: HTTPS keep-alive `GET /` at {:.0}/s over {} connections (TLS 1.3, \
             HTTP/1.1, 100-byte responses). A: {}x its `requests_per_second` over {} \
             connections. {}.\n",
            l7.b_rate, l7.b_conns, l7.a.factor, l7.a.conns, l7.lbd_version
        );
        s.push_str(&b_table(&l7.b, "requests", L7_BUSY, L7_WAIT));
        s.push('\n');
        s.push_str(&l7_a_lines(&l7.a));
        s.push('\n');
    }
    let _ = writeln!(s, "## Rounds\n");
    s.push_str(&rounds_table(r));
    s.push_str(&method());
    s
}

/// The markdown report's Method section.
fn method() -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Method\n\n\
         - **Load.** Both tenants' clients are open-loop and paced: a ticker hands out the tokens \
         due every millisecond and a fixed set of workers (B's L4 exchange slots, or keep-alive \
         connections) takes them. Latency is measured per exchange, from the moment a worker \
         takes its token; a token that finds every worker busy is counted as **late** (none \
         should be: the workers outnumber what the rate needs), so a slow server cannot hide \
         behind a client that sends less. Only exchanges that start after the warm-up count; \
         p50/p99 pool every round's samples of a phase. Throughput is B's successful exchanges \
         per second of window (at a fixed offered rate, 1.00x means nothing was lost or \
         delayed past the window). A ratio below 1 is no error: on this virtual machine a CPU \
         that has gone idle takes tens of microseconds to wake up for the next packet, and a \
         core kept busy by A's flood answers B's packets without that.\n\
         - **L4 topology.** B's side is the end-to-end tests' harness (`tests/tests/common`): \
         namespaces on a bridge, the balancer (`lb_balancer`, `ipip`) attached to the LB's \
         `eth0`, B's two backends with the decapsulation program and the TCP name servers of \
         `lb_tests::servers`, B's client `c1`. A's side is the L4 bench's line and generator: a \
         second veth from a generator namespace into the same LB namespace, with the same \
         balancer attached, so A's frames reach XDP as frames from a NIC would (through the \
         bridge they would arrive as copied skbs, about four times the LB's cost per packet here). `lb_gen` \
         sends paced 64-byte TCP frames over many flows, each new to the balancer when first \
         seen; A's pool is an address of the generator's namespace, where `lb_gen_sink` counts \
         what XDP admitted (encapsulated). A has `[tenant.limits] packets_per_second` and \
         `new_flows_per_second`, B has no limits. A's rates and drops by reason come from the \
         balancer's per-tenant maps over B's window; A's admitted rate grows over the run as \
         the flows it admitted come round again (flow-table hits, within the packet budget). \
         The LB's neighbours are static, as in the L4 bench.\n\
         - **L4 placement**: threaded NAPI on both of the LB's interfaces, their threads (where \
         XDP runs, for B and for A) on CPU {lb} with `SCHED_FIFO`, as in the L4 bench: the LB \
         core, where B's packets wait while the flood's thread works (its wait is in the table). \
         B's client, B's backends, the sink's NAPI thread and the generator on CPU {world}, the \
         generator with `SCHED_IDLE`, so it takes only what the others leave (on a real network \
         they are other machines). **LB core busy** is the two NAPI threads' CPU time over B's \
         window.\n\
         - **L7 topology and placement** (the L7 bench's world, `l7/`): lbd with `--workers 1` \
         pinned to CPU {proxy} in the LB namespace, two TLS tenants (ECDSA P-256 certificates \
         from their own CAs) on one address, two hyper backends each; the clients and backends \
         on CPU {gen}. A has `[tenant.limits] requests_per_second` (burst = rate) and its client \
         runs with `SCHED_IDLE`, B has no limits. A's 429 share and B's latencies come from the \
         clients; A's backends count what lbd let through, and every backend checks that \
         nothing of the other tenant reached it. **lbd's CPU** is its processes' user + system \
         time over B's window.\n\
         - **Cleanup**: namespaces, processes (lbd, by pid), lbd's pins and the backends' link \
         pins are removed at the end, on error and on Ctrl-C; leftovers of killed runs are \
         removed by the next run.\n",
        lb = crate::l4::LB_CPU,
        world = crate::l4::WORLD_CPU,
        proxy = crate::l7::PROXY_CPU,
        gen = crate::l7::GEN_CPU,
    );
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// B's p50 and p99, baseline next to flood, per layer, as horizontal bars
/// with the ratio.
fn svg(r: &Results) -> String {
    const W: f64 = 820.0;
    const LEFT: f64 = 230.0;
    const BAR_W: f64 = 440.0;
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    if let Some(l4) = &r.l4 {
        rows.push(("L4 B p50".into(), l4.b.baseline.p50_ms, l4.b.flood.p50_ms));
        rows.push(("L4 B p99".into(), l4.b.baseline.p99_ms, l4.b.flood.p99_ms));
    }
    if let Some(l7) = &r.l7 {
        rows.push(("L7 B p50".into(), l7.b.baseline.p50_ms, l7.b.flood.p50_ms));
        rows.push(("L7 B p99".into(), l7.b.baseline.p99_ms, l7.b.flood.p99_ms));
    }
    let mut body = String::new();
    let mut y = 30.0;
    let _ = writeln!(
        body,
        r#"<text x="10" y="{y}" font-size="16" font-weight="bold">lb isolation: tenant B's latency (ms), alone and while tenant A floods</text>"#
    );
    y += 14.0;
    let _ = writeln!(
        body,
        r##"<rect x="{LEFT}" y="{y}" width="12" height="10" fill="#9dbbe0"/><text x="{}" y="{}" font-size="11">baseline</text><rect x="{}" y="{y}" width="12" height="10" fill="#d9822b"/><text x="{}" y="{}" font-size="11">A flooding</text>"##,
        LEFT + 16.0,
        y + 9.0,
        LEFT + 100.0,
        LEFT + 116.0,
        y + 9.0
    );
    y += 22.0;
    for (label, base, flood) in &rows {
        // Each row on its own scale: p50 and p99 differ by orders of
        // magnitude, the ratio is the point.
        let max = base.max(*flood).max(1e-9);
        let (wb, wf) = (base / max * BAR_W, flood / max * BAR_W);
        let _ = writeln!(
            body,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text><rect x="{LEFT}" y="{y}" width="{wb:.1}" height="11" fill="#9dbbe0"/><text x="{:.1}" y="{}" font-size="11">{}</text><rect x="{LEFT}" y="{}" width="{wf:.1}" height="11" fill="#d9822b"/><text x="{:.1}" y="{}" font-size="11">{} ({:.2}x)</text>"##,
            LEFT - 8.0,
            y + 16.0,
            esc(label),
            LEFT + wb + 6.0,
            y + 10.0,
            ms(*base),
            y + 13.0,
            LEFT + wf + 6.0,
            y + 23.0,
            ms(*flood),
            flood / base.max(1e-9),
        );
        y += 34.0;
    }
    y += 6.0;
    let _ = writeln!(
        body,
        r#"<text x="10" y="{y}" font-size="12">{}</text>"#,
        esc(&verdict_line(r))
    );
    y += 18.0;
    let _ = writeln!(
        body,
        r##"<text x="10" y="{y}" font-size="11" fill="#555">{}{} | {} | load average {} / {}</text>"##,
        esc(&r.machine.label()),
        if r.settings.quick {
            " | --quick run"
        } else {
            ""
        },
        esc(&r.machine.date),
        esc(&r.machine.load_start),
        esc(&r.machine.load_end)
    );
    y += 12.0;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{y}\" viewBox=\"0 0 {W} {y}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}
