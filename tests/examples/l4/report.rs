//! The L4 bench's results: a printed table, JSON, a markdown report and an
//! SVG bar chart, each labelled with the machine.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use serde_json::{Value, json};

#[path = "../common/machine.rs"]
mod machine;
#[path = "../common/results.rs"]
mod results;

pub use machine::Machine;

/// [`Placement::generator`] when the kernel ran the generator program.
pub const GENERATOR_LIVE: &str = "live frames";

/// Which CPU ran what, and how the generator sent.
#[derive(Clone, Debug)]
pub struct Placement {
    pub generator_cpu: usize,
    pub sink_cpu: usize,
    pub lb_cpu: usize,
    pub rt_priority: Option<i32>,
    /// `kernel.bpf_stats_enabled` when the bench started (the packet rates
    /// are measured without run-time stats unless something else enabled
    /// them).
    pub bpf_stats_enabled_before: String,
    /// How the generator sent: `live frames` (`BPF_PROG_TEST_RUN`) or
    /// `AF_PACKET` (the kernel refused live frames).
    pub generator: &'static str,
}

/// One load level on one candidate.
#[derive(Clone, Debug)]
pub struct Load {
    /// The paced rate; `None`: the generator ran flat out.
    pub offered_pps: Option<f64>,
    /// Frames the generator sent per second.
    pub sent_pps: f64,
    /// Frames per second that reached the backends' side.
    pub forwarded_pps: f64,
    /// Share of sent frames that never reached the LB's XDP program (its
    /// ring was full: the LB was saturated or not yet awake).
    pub lost_before_lb: f64,
    /// Share of the frames the LB handled that never reached the backends'
    /// side (the sink's ring was full).
    pub lost_after_lb: f64,
    /// CPU time of the LB's NAPI thread over wall time.
    pub lb_busy: f64,
    /// LB NAPI-thread CPU time per packet the LB handled.
    pub lb_ns_per_packet: f64,
    /// Packets the LB handled per time its NAPI thread slept and was woken
    /// again: every wake-up costs a context switch (microseconds in this
    /// VM), which a busier LB spreads over more packets.
    pub lb_packets_per_wakeup: f64,
    /// Share of the window the LB's CPU ran something else (other
    /// processes on a shared machine: they share its caches too).
    pub lb_core_other: f64,
    /// Share of the window the hypervisor took the LB's CPU away.
    pub lb_core_steal: f64,
    pub sink_busy: f64,
    pub gen_kernel_ns_per_frame: f64,
    pub encapsulated: u64,
    pub plain: u64,
    pub window_s: f64,
}

impl Load {
    fn to_json(&self) -> Value {
        json!({
            "offered_pps": self.offered_pps.map(|v| round(v, 0)),
            "sent_pps": round(self.sent_pps, 0),
            "forwarded_pps": round(self.forwarded_pps, 0),
            "lost_before_lb": round(self.lost_before_lb, 4),
            "lost_after_lb": round(self.lost_after_lb, 4),
            "lb_busy": round(self.lb_busy, 3),
            "lb_ns_per_packet": round(self.lb_ns_per_packet, 1),
            "lb_packets_per_wakeup": round(self.lb_packets_per_wakeup, 1),
            "lb_core_other_busy": round(self.lb_core_other, 3),
            "lb_core_steal": round(self.lb_core_steal, 3),
            "sink_busy": round(self.sink_busy, 3),
            "generator_kernel_ns_per_frame": round(self.gen_kernel_ns_per_frame, 1),
            "encapsulated": self.encapsulated,
            "plain": self.plain,
            "window_s": round(self.window_s, 3),
        })
    }
}

/// One candidate in the LB's place.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub name: &'static str,
    pub label: &'static str,
    pub packet: String,
    pub frame_bytes: usize,
    pub flows: u32,
    /// The generator unpaced: the most this candidate forwarded.
    pub max: Load,
    /// Paced below every candidate's maximum: the LB core's cost per packet.
    pub paced: Option<Load>,
}

impl Forwarded {
    /// Packets per LB-core-second, from the paced window (the unpaced one
    /// when there is none): the LB's capacity on one core.
    pub fn capacity_pps(&self) -> f64 {
        1e9 / self.paced.as_ref().unwrap_or(&self.max).lb_ns_per_packet
    }
}

/// Nanoseconds per packet inside an XDP program, from BPF run-time stats.
#[derive(Clone, Debug)]
#[expect(
    clippy::struct_field_names,
    reason = "`lb_ns_per_packet` is the LB core's figure, named as in `Load`"
)]
pub struct NsPerPacket {
    pub program: &'static str,
    pub mode: &'static str,
    pub packet: String,
    pub flows: u32,
    pub ns: f64,
    pub runs: u64,
    /// New flow-table entries while every flow was sent once.
    pub new_flows_primed: u64,
    /// New flow-table entries during the measured window (0: all hits).
    pub new_flows_in_window: u64,
    pub forwarded_pps: f64,
    pub lb_ns_per_packet: f64,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Results {
    pub quick: bool,
    pub machine: Machine,
    pub placement: Placement,
    pub window_s: f64,
    pub rounds: usize,
    pub forwarding: Vec<Forwarded>,
    pub ns_per_packet: Vec<NsPerPacket>,
}

impl Results {
    fn get(&self, name: &str) -> Option<&Forwarded> {
        self.forwarding.iter().find(|f| f.name == name)
    }

    /// Each balancer mode against the ceiling and against nftables:
    /// `(mode, peer, capacity ratio from the paced windows, LB-core cost
    /// ratio unpaced, max forwarded-rate ratio)`.
    pub fn ratios(&self) -> Vec<(String, String, f64, f64, f64)> {
        let mut out = Vec::new();
        for mode in ["balancer_ipip", "balancer_l2dsr"] {
            for peer in ["xdp_tx_ceiling", "nftables_dnat"] {
                if let (Some(a), Some(b)) = (self.get(mode), self.get(peer)) {
                    out.push((
                        mode.to_owned(),
                        peer.to_owned(),
                        a.capacity_pps() / b.capacity_pps(),
                        b.max.lb_ns_per_packet / a.max.lb_ns_per_packet,
                        a.max.forwarded_pps / b.max.forwarded_pps,
                    ));
                }
            }
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let p = &self.placement;
        let ratios: serde_json::Map<String, Value> = self
            .ratios()
            .into_iter()
            .flat_map(|(a, b, cap, unpaced, pps)| {
                let short = |s: &str| {
                    s.trim_start_matches("balancer_")
                        .replace("xdp_tx_ceiling", "ceiling")
                        .replace("nftables_dnat", "nftables")
                };
                [
                    (
                        format!("{}_vs_{}", short(&a), short(&b)),
                        json!(round(cap, 3)),
                    ),
                    (
                        format!("{}_vs_{}_unpaced_cost", short(&a), short(&b)),
                        json!(round(unpaced, 3)),
                    ),
                    (
                        format!("{}_vs_{}_forwarded_pps", short(&a), short(&b)),
                        json!(round(pps, 3)),
                    ),
                ]
            })
            .collect();
        json!({
            "bench": "l4",
            "quick": self.quick,
            "machine": {
                "cpu": self.machine.cpu,
                "cores": self.machine.cores,
                "kernel": self.machine.kernel,
                "date": self.machine.date,
                "loadavg_start": self.machine.load_start,
                "loadavg_end": self.machine.load_end,
            },
            "placement": {
                "generator_cpu": p.generator_cpu,
                "sink_cpu": p.sink_cpu,
                "lb_cpu": p.lb_cpu,
                "threaded_napi": true,
                "rt_priority": p.rt_priority,
                "bpf_stats_enabled_before": p.bpf_stats_enabled_before,
                "generator": p.generator,
            },
            "window_s": self.window_s,
            "rounds": self.rounds,
            "forwarding": self.forwarding.iter().map(|f| json!({
                "name": f.name,
                "label": f.label,
                "packet": f.packet,
                "frame_bytes": f.frame_bytes,
                "flows": f.flows,
                "forwarded_pps": round(f.max.forwarded_pps, 0),
                "lb_capacity_pps": round(f.capacity_pps(), 0),
                "unpaced": f.max.to_json(),
                "paced": f.paced.as_ref().map(Load::to_json),
            })).collect::<Vec<_>>(),
            "ratios": ratios,
            "ns_per_packet": self.ns_per_packet.iter().map(|n| json!({
                "program": n.program,
                "mode": n.mode,
                "packet": n.packet,
                "flows": n.flows,
                "ns": round(n.ns, 2),
                "runs": n.runs,
                "new_flows_primed": n.new_flows_primed,
                "new_flows_in_window": n.new_flows_in_window,
                "forwarded_pps_with_stats": round(n.forwarded_pps, 0),
                "lb_ns_per_packet_with_stats": round(n.lb_ns_per_packet, 1),
            })).collect::<Vec<_>>(),
        })
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    if v.is_finite() {
        (v * m).round() / m
    } else {
        0.0
    }
}

fn mpps(v: f64) -> String {
    format!("{:.2}", v / 1e6)
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

fn flows(n: u32) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn forwarding_table(r: &Results) -> String {
    let mut s = String::new();
    let ceiling = r.get("xdp_tx_ceiling").map(Forwarded::capacity_pps);
    let _ = writeln!(
        s,
        "| in the LB's place | max forwarded, Mpps | LB core busy | LB ns/packet | packets per wake-up \
         | lost before / after the LB | paced at, Mpps | LB core busy (other) | LB ns/packet \
         | packets per wake-up | LB capacity, Mpps per core | vs ceiling |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for f in &r.forwarding {
        let m = &f.max;
        let paced = f.paced.as_ref().map_or_else(
            || "- | - | - | -".to_owned(),
            |p| {
                format!(
                    "{} | {} ({}) | {:.1} | {:.0}",
                    mpps(p.forwarded_pps),
                    pct(p.lb_busy),
                    pct(p.lb_core_other + p.lb_core_steal),
                    p.lb_ns_per_packet,
                    p.lb_packets_per_wakeup
                )
            },
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.0} | {} / {} | {paced} | {} | {} |",
            f.label,
            mpps(m.forwarded_pps),
            pct(m.lb_busy),
            m.lb_ns_per_packet,
            m.lb_packets_per_wakeup,
            pct(m.lost_before_lb),
            pct(m.lost_after_lb),
            mpps(f.capacity_pps()),
            ceiling.map_or_else(|| "-".into(), |c| pct(f.capacity_pps() / c)),
        );
    }
    s
}

fn ns_table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| program | mode | packet | live flows | ns/packet in the program | new flows during the window | LB ns/packet (stats on) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | ---: | ---: | ---: | ---: |");
    for n in &r.ns_per_packet {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {} | {:.1} |",
            n.program,
            n.mode,
            n.packet,
            flows(n.flows),
            n.ns,
            n.new_flows_in_window,
            n.lb_ns_per_packet
        );
    }
    s
}

fn ratio_lines(r: &Results) -> String {
    let mut s = String::new();
    for (a, b, cap, unpaced, pps) in r.ratios() {
        let _ = writeln!(
            s,
            "- {a} / {b}: **{cap:.2}x** on LB capacity (paced); {unpaced:.2}x on LB-core cost per \
             packet unpaced; {pps:.2}x on max forwarded rate"
        );
    }
    s
}

/// Prints the tables.
pub fn print(r: &Results) {
    println!();
    println!(
        "bench l4 on {} ({})",
        r.machine.label(),
        if r.quick {
            "quick: tiny counts, noisy"
        } else {
            "full"
        }
    );
    if let Some(f) = r.forwarding.first() {
        println!(
            "forwarding: {} {}-byte frames, {} flows, {} windows of {:.1} s each (unpaced: median; \
             paced at 70% of the slowest XDP candidate's maximum, nftables of its own: least disturbed)",
            f.packet,
            f.frame_bytes,
            flows(f.flows),
            r.rounds,
            r.window_s
        );
    }
    print!("{}", forwarding_table(r));
    print!("{}", ratio_lines(r));
    println!("cost inside the XDP program (BPF run-time stats):");
    print!("{}", ns_table(r));
}

/// Writes `out` (JSON) and, next to it, the markdown report and the chart.
pub fn write(r: &Results, out: &Path) -> Result<()> {
    results::write(out, &r.to_json(), &svg(r), |svg_name| markdown(r, svg_name))
}

fn markdown(r: &Results, svg_name: &str) -> String {
    let mut s = String::new();
    let p = &r.placement;
    let _ = writeln!(s, "# L4 benchmark: `cargo xtask bench l4`\n");
    let _ = writeln!(
        s,
        "Machine: **{}**. Run: {}{}. Load average at start / end: {} / {} (other work on \
         the machine raises every per-packet figure).\n",
        r.machine.label(),
        r.machine.date,
        if r.quick {
            " (`--quick`: tiny counts, not representative)"
        } else {
            ""
        },
        r.machine.load_start,
        r.machine.load_end,
    );
    if p.generator != GENERATOR_LIVE {
        let _ = writeln!(
            s,
            "**The generator sent through {}**: this kernel refuses `BPF_PROG_TEST_RUN` live \
             frames, and the userspace sender is slower, so the maximum rates may be the \
             generator's, not the LB's; the LB-core figures and the paced runs stand.\n",
            p.generator
        );
    }
    let _ = writeln!(s, "![L4 benchmark chart]({svg_name})\n");
    if let Some(f) = r.forwarding.first() {
        let _ = writeln!(
            s,
            "## Forwarding\n\n{} frames of {} bytes, {} distinct flows; {} windows of {:.1} s each \
             per figure: unpaced, the window with the median forwarded rate; paced, the window with \
             the lowest LB-core time per packet (interference from the rest of the machine only \
             adds).\n",
            f.packet,
            f.frame_bytes,
            flows(f.flows),
            r.rounds,
            r.window_s
        );
    }
    s.push_str(&forwarding_table(r));
    s.push('\n');
    s.push_str(&ratio_lines(r));
    let _ = writeln!(
        s,
        "\n## Cost inside the balancer\n\nNanoseconds per packet inside the XDP program under the \
         same load, from the kernel's BPF run-time statistics (enabled only for these windows; \
         they add two clock reads per run, so the last column is higher than in the table above). \
         Every flow is sent once before the window, so the window's packets are flow-table hits \
         (the new-flow column shows it).\n"
    );
    s.push_str(&ns_table(r));
    let _ = writeln!(
        s,
        "\n## Method\n\n\
         - **Topology**: two network namespaces joined by one veth pair (no bridge). The LB is \
         one-armed: the generator's namespace also holds the three backends' addresses, so the \
         balancer sends with `XDP_TX` back out of the interface the packet came in on, exactly \
         like the ceiling. Backends are `10.78.0.100-102` / `fd78::64-66`; the VIP \
         `10.79.0.1:80` (and `[fd79::1]:80`), one tenant.\n\
         - **Load**: `lb_gen` (`lb-ebpf/src/gen`) under `BPF_PROG_TEST_RUN` with live frames on \
         the generator's veth: each frame gets its whole header written from a template, then \
         the flow's source port and address and both checksums; `XDP_TX` sends it to the LB.\n\
         - **Forwarded**: `lb_gen_sink` on the generator's veth counts every TCP/UDP/IPIP frame \
         that comes back from the LB (split into encapsulated and plain frames, checked against \
         the mode) and drops it. Lost = sent but never counted (a ring was full).\n\
         - **Candidates** in the LB's place, swapped atomically into one XDP link: `lb_bounce` \
         (swap MACs, `XDP_TX`: the ceiling), `lb_balancer` in `ipip` and in `l2dsr` mode, and \
         `lb_pass` with an nftables table doing `dnat to numgen inc mod 3` over the same \
         backends (conntrack, kernel forwarding).\n\
         - **Placement**: threaded NAPI on both veths. The LB's NAPI thread (where the LB's XDP \
         program or the kernel's forwarding runs) is pinned alone on CPU {lb}; the generator \
         thread and the sink's NAPI thread share CPU {gen}. NAPI threads run {rt}. \
         **LB core busy** is the LB NAPI thread's CPU time over the window; **LB capacity** is \
         forwarded packets per second of that CPU time, the comparable figure when the generator \
         saturates its core first (two cores: it usually does), and the ratios use it. It is \
         measured paced, at 70% of the slowest XDP candidate's unpaced maximum (nftables at 70% \
         of its own): each generated frame waits for its time slot and the kernel flushes them \
         to the LB 64 at a time, so no candidate runs overloaded (a veth ring kept full by the \
         generator makes the receiver slower) and the LB still polls batches. **Packets per \
         wake-up** is how many packets the LB's NAPI thread handled per time it ran dry, slept \
         and was woken: each wake-up is a context switch of some microseconds in this VM, which \
         a saturated LB (the balancer unpaced) hardly pays and a half-idle one (the ceiling) \
         pays often, so compare candidates at similar packets per wake-up. **(other)** is the \
         share of the LB core that went to anything else (other processes, hypervisor steal): \
         on a shared machine they also evict the LB's caches, which raises its ns/packet.\n\
         - `kernel.bpf_stats_enabled` was `{stats}` when the bench started.\n",
        lb = p.lb_cpu,
        gen = p.generator_cpu,
        rt = p
            .rt_priority
            .map_or_else(|| "as normal threads".to_owned(), |x| format!("SCHED_FIFO priority {x}")),
        stats = p.bpf_stats_enabled_before,
    );
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Two horizontal bar panels: LB capacity and forwarded rate per
/// candidate; ns/packet inside the balancer per flow count.
fn svg(r: &Results) -> String {
    const W: f64 = 820.0;
    const LEFT: f64 = 250.0;
    const BAR_W: f64 = 470.0;
    const ROW: f64 = 26.0;
    let mut body = String::new();
    let mut y = 30.0;
    let _ = writeln!(
        body,
        r#"<text x="10" y="{y}" font-size="16" font-weight="bold">lb L4 benchmark: forwarding on one LB core (Mpps)</text>"#
    );
    y += 14.0;
    let _ = writeln!(
        body,
        r##"<rect x="{LEFT}" y="{y}" width="12" height="10" fill="#2f6db5"/><text x="{}" y="{}" font-size="11">LB capacity (packets per LB-core-second)</text><rect x="{}" y="{y}" width="12" height="10" fill="#9dbbe0"/><text x="{}" y="{}" font-size="11">max forwarded rate (unpaced generator)</text>"##,
        LEFT + 16.0,
        y + 9.0,
        LEFT + 270.0,
        LEFT + 286.0,
        y + 9.0
    );
    y += 20.0;
    let max = r
        .forwarding
        .iter()
        .map(|f| f.capacity_pps().max(f.max.forwarded_pps))
        .fold(1.0, f64::max);
    for f in &r.forwarding {
        let cap = f.capacity_pps() / max * BAR_W;
        let fwd = f.max.forwarded_pps / max * BAR_W;
        let _ = writeln!(
            body,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text><rect x="{LEFT}" y="{y}" width="{cap:.1}" height="11" fill="#2f6db5"/><rect x="{LEFT}" y="{}" width="{fwd:.1}" height="9" fill="#9dbbe0"/><text x="{:.1}" y="{}" font-size="11">{} / {}</text>"##,
            LEFT - 8.0,
            y + 14.0,
            esc(f.label),
            y + 11.0,
            LEFT + cap.max(fwd) + 6.0,
            y + 14.0,
            mpps(f.capacity_pps()),
            mpps(f.max.forwarded_pps),
        );
        y += ROW;
    }
    y += 20.0;
    let _ = writeln!(
        body,
        r#"<text x="10" y="{y}" font-size="16" font-weight="bold">ns per packet inside the XDP program (BPF run-time stats)</text>"#
    );
    y += 14.0;
    let nmax = r.ns_per_packet.iter().map(|n| n.ns).fold(1.0, f64::max);
    for n in &r.ns_per_packet {
        let w = n.ns / nmax * BAR_W;
        let label = format!(
            "{} {} {}, {} flows",
            n.program,
            n.mode,
            n.packet,
            flows(n.flows)
        );
        let color = if n.program == "lb_balancer" {
            "#d9822b"
        } else {
            "#999999"
        };
        let _ = writeln!(
            body,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text><rect x="{LEFT}" y="{y}" width="{w:.1}" height="14" fill="{color}"/><text x="{:.1}" y="{}" font-size="11">{:.1} ns</text>"#,
            LEFT - 8.0,
            y + 12.0,
            esc(&label),
            LEFT + w + 6.0,
            y + 12.0,
            n.ns
        );
        y += ROW - 4.0;
    }
    y += 16.0;
    let _ = writeln!(
        body,
        r##"<text x="10" y="{y}" font-size="11" fill="#555">{}{} | {}</text>"##,
        esc(&r.machine.label()),
        if r.quick { " | --quick run" } else { "" },
        esc(&r.machine.date)
    );
    y += 12.0;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{y}\" viewBox=\"0 0 {W} {y}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}
