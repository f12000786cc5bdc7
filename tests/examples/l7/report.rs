//! The L7 bench's results: a printed table, JSON, a markdown report and an
//! SVG chart, each labelled with the machine.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use serde_json::{Value, json};

use crate::load::{Checked, ToolRun};

#[path = "../common/machine.rs"]
mod machine;
#[path = "../common/results.rs"]
mod results;

pub use machine::Machine;

/// CPU use over one measured window.
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    pub window_s: f64,
    /// The proxy's processes: user + system seconds.
    pub proxy_s: f64,
    /// Busy share of the proxy's core (anything: the proxy, softirqs,
    /// other processes) and of the generator's core.
    pub proxy_core_busy: f64,
    /// Share of the proxy's core spent in softirqs (the network stack's
    /// receive work, which no process is charged for).
    pub proxy_core_softirq: f64,
    pub gen_core_busy: f64,
}

impl Cpu {
    pub fn proxy_busy(&self) -> f64 {
        self.proxy_s / self.window_s.max(1e-9)
    }

    /// `proxy / its core (softirq) / generator core`, as percentages.
    fn shares(&self) -> String {
        format!(
            "{} / {} ({}) / {}",
            pct(self.proxy_busy()),
            pct(self.proxy_core_busy),
            pct(self.proxy_core_softirq),
            pct(self.gen_core_busy)
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "window_s": round(self.window_s, 3),
            "proxy_cpu_s": round(self.proxy_s, 3),
            "proxy_busy": round(self.proxy_busy(), 3),
            "proxy_core_busy": round(self.proxy_core_busy, 3),
            "proxy_core_softirq": round(self.proxy_core_softirq, 3),
            "generator_core_busy": round(self.gen_core_busy, 3),
        })
    }
}

/// Keep-alive requests, both tenants at once.
#[derive(Clone, Debug)]
pub struct KeepAlive {
    pub protocol: &'static str,
    /// Connections per tenant.
    pub conns: usize,
    /// Concurrent streams per connection (h2; 1 for HTTP/1.1).
    pub streams: usize,
    pub tenants: Vec<ToolRun>,
    /// What the backends served during the window, per tenant.
    pub backend_requests: Vec<u64>,
    pub cpu: Cpu,
}

impl KeepAlive {
    pub fn rps(&self) -> f64 {
        self.tenants.iter().map(|t| t.rps).sum()
    }

    pub fn requests(&self) -> u64 {
        self.tenants.iter().map(|t| t.requests).sum()
    }

    pub fn errors(&self) -> u64 {
        self.tenants.iter().map(|t| t.errors).sum()
    }

    /// The worse tenant's median (the tenants' histograms are separate).
    pub fn p50_ms(&self) -> f64 {
        self.tenants.iter().map(|t| t.p50_ms).fold(0.0, f64::max)
    }

    pub fn p99_ms(&self) -> f64 {
        self.tenants.iter().map(|t| t.p99_ms).fold(0.0, f64::max)
    }

    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    pub fn per_cpu_s(&self) -> f64 {
        self.requests() as f64 / self.cpu.proxy_s.max(1e-9)
    }

    fn to_json(&self) -> Value {
        json!({
            "protocol": self.protocol,
            "connections_per_tenant": self.conns,
            "streams_per_connection": self.streams,
            "requests_per_s": round(self.rps(), 0),
            "p50_ms": round(self.p50_ms(), 3),
            "p99_ms": round(self.p99_ms(), 3),
            "requests": self.requests(),
            "errors": self.errors(),
            "requests_per_proxy_cpu_s": round(self.per_cpu_s(), 0),
            "cpu": self.cpu.to_json(),
            "backend_requests_per_tenant": self.backend_requests,
            "tenants": self.tenants.iter().map(|t| json!({
                "tenant": t.tenant,
                "protocol": t.protocol,
                "requests": t.requests,
                "seconds": round(t.seconds, 3),
                "requests_per_s": round(t.rps, 0),
                "p50_ms": round(t.p50_ms, 3),
                "p99_ms": round(t.p99_ms, 3),
                "errors": t.errors,
            })).collect::<Vec<_>>(),
        })
    }
}

/// New connections with full TLS 1.3 handshakes.
#[derive(Clone, Debug)]
pub struct Handshakes {
    pub concurrency: usize,
    pub ok: u64,
    pub errors: u64,
    pub not_full: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub backend_requests: u64,
    pub cpu: Cpu,
}

impl Handshakes {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    pub fn per_s(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    pub fn per_cpu_s(&self) -> f64 {
        self.ok as f64 / self.cpu.proxy_s.max(1e-9)
    }

    fn to_json(&self) -> Value {
        json!({
            "concurrency": self.concurrency,
            "handshakes_per_s": round(self.per_s(), 0),
            "handshakes_per_proxy_cpu_s": round(self.per_cpu_s(), 0),
            "connections": self.ok,
            "errors": self.errors,
            "not_full_handshakes": self.not_full,
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "backend_requests": self.backend_requests,
            "cpu": self.cpu.to_json(),
        })
    }
}

/// Resident memory per idle TLS connection.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub wanted: usize,
    pub opened: usize,
    pub failed: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub alive_after: usize,
    /// How the connections that did not stay open ended.
    pub closed: Vec<(String, usize)>,
    pub probed: usize,
    pub probed_ok: usize,
    pub open_seconds: f64,
    pub processes: usize,
    pub threads: usize,
}

impl Memory {
    #[expect(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
    pub fn bytes_per_conn(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib) * 1024) as f64
            / self.opened.max(1) as f64
    }

    fn to_json(&self) -> Value {
        json!({
            "connections": self.opened,
            "wanted": self.wanted,
            "failed": self.failed,
            "rss_before_kib": self.rss_before_kib,
            "rss_after_kib": self.rss_after_kib,
            "bytes_per_connection": round(self.bytes_per_conn(), 0),
            "alive_after_measurement": self.alive_after,
            "closed": self.closed.iter().map(|(why, n)| json!({"reason": why, "count": n})).collect::<Vec<_>>(),
            "probed": self.probed,
            "probed_ok": self.probed_ok,
            "open_seconds": round(self.open_seconds, 2),
            "processes": self.processes,
            "threads": self.threads,
        })
    }
}

/// One round of the load figures on one candidate.
#[derive(Clone, Debug)]
pub struct Round {
    pub h1: KeepAlive,
    pub h2: KeepAlive,
    pub handshakes: Handshakes,
}

/// Everything measured on one candidate.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub name: &'static str,
    pub version: String,
    pub tls: Vec<Checked>,
    pub rounds: Vec<Round>,
    pub memory: Memory,
}

impl Candidate {
    fn median<T: Clone>(&self, get: impl Fn(&Round) -> T, key: impl Fn(&T) -> f64) -> T {
        let mut v: Vec<T> = self.rounds.iter().map(get).collect();
        v.sort_by(|a, b| key(a).total_cmp(&key(b)));
        v[v.len() / 2].clone()
    }

    /// The round with the median rate, for each figure.
    pub fn h1(&self) -> KeepAlive {
        self.median(|r| r.h1.clone(), KeepAlive::rps)
    }

    pub fn h2(&self) -> KeepAlive {
        self.median(|r| r.h2.clone(), KeepAlive::rps)
    }

    /// The round with the median per-CPU-second rate.
    pub fn handshakes(&self) -> Handshakes {
        self.median(|r| r.handshakes.clone(), Handshakes::per_cpu_s)
    }
}

/// The run's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub window_s: u64,
    pub warm_s: u64,
    pub proxy_cpu: usize,
    pub gen_cpu: usize,
    pub body_bytes: usize,
    pub tools: Vec<String>,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Results {
    pub machine: Machine,
    pub settings: Settings,
    pub candidates: Vec<Candidate>,
}

impl Results {
    fn get(&self, name: &str) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.name == name)
    }

    /// lbd against each peer: `(figure, peer, lbd / peer)`; for latency
    /// and memory lower is better, so below 1 is a win there.
    pub fn ratios(&self) -> Vec<(&'static str, &'static str, f64)> {
        let Some(lbd) = self.get("lbd") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for peer in ["nginx", "haproxy"] {
            let Some(p) = self.get(peer) else { continue };
            let (a1, b1, a2, b2) = (lbd.h1(), p.h1(), lbd.h2(), p.h2());
            let (ah, bh) = (lbd.handshakes(), p.handshakes());
            for (fig, v) in [
                ("h1_requests_per_s", a1.rps() / b1.rps()),
                ("h1_p99", a1.p99_ms() / b1.p99_ms()),
                (
                    "h1_requests_per_proxy_cpu_s",
                    a1.per_cpu_s() / b1.per_cpu_s(),
                ),
                ("h2_requests_per_s", a2.rps() / b2.rps()),
                ("h2_p99", a2.p99_ms() / b2.p99_ms()),
                (
                    "h2_requests_per_proxy_cpu_s",
                    a2.per_cpu_s() / b2.per_cpu_s(),
                ),
                ("handshakes_per_s", ah.per_s() / bh.per_s()),
                (
                    "handshakes_per_proxy_cpu_s",
                    ah.per_cpu_s() / bh.per_cpu_s(),
                ),
                (
                    "memory_per_idle_connection",
                    lbd.memory.bytes_per_conn() / p.memory.bytes_per_conn(),
                ),
            ] {
                out.push((fig, peer, v));
            }
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let s = &self.settings;
        let mut ratios = serde_json::Map::new();
        for (fig, peer, v) in self.ratios() {
            ratios.insert(format!("lbd_vs_{peer}_{fig}"), json!(round(v, 3)));
        }
        json!({
            "bench": "l7",
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
                "proxy_cpu": s.proxy_cpu,
                "generator_cpu": s.gen_cpu,
                "response_body_bytes": s.body_bytes,
                "tools": s.tools,
            },
            "candidates": self.candidates.iter().map(|c| {
                let (h1, h2, hs) = (c.h1(), c.h2(), c.handshakes());
                json!({
                    "name": c.name,
                    "version": c.version,
                    "tls": c.tls.iter().map(|t| json!({
                        "tenant": t.tenant,
                        "version": t.version,
                        "suite": t.suite,
                        "group": t.group,
                        "alpn": t.alpn,
                    })).collect::<Vec<_>>(),
                    "h1": h1.to_json(),
                    "h2": h2.to_json(),
                    "handshakes": hs.to_json(),
                    "memory": c.memory.to_json(),
                    "rounds": c.rounds.iter().map(|r| json!({
                        "h1_requests_per_s": round(r.h1.rps(), 0),
                        "h1_p99_ms": round(r.h1.p99_ms(), 3),
                        "h2_requests_per_s": round(r.h2.rps(), 0),
                        "h2_p99_ms": round(r.h2.p99_ms(), 3),
                        "handshakes_per_s": round(r.handshakes.per_s(), 0),
                        "handshakes_per_proxy_cpu_s": round(r.handshakes.per_cpu_s(), 0),
                    })).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
            "ratios": ratios,
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

fn thousands(v: f64) -> String {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive rate, rounded"
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

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

/// The main table: one row per figure, one column per candidate.
fn table(r: &Results) -> String {
    let mut s = String::new();
    let names: Vec<&str> = r.candidates.iter().map(|c| c.name).collect();
    let _ = writeln!(s, "| figure | {} |", names.join(" | "));
    let _ = writeln!(s, "| --- |{}", " ---: |".repeat(names.len()));
    let row = |s: &mut String, label: &str, f: &dyn Fn(&Candidate) -> String| {
        let cells: Vec<String> = r.candidates.iter().map(f).collect();
        let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
    };
    row(&mut s, "HTTP/1.1 keep-alive, requests/s", &|c| {
        thousands(c.h1().rps())
    });
    row(&mut s, "HTTP/1.1 p50 / p99, ms", &|c| {
        let h = c.h1();
        format!("{:.2} / {:.2}", h.p50_ms(), h.p99_ms())
    });
    row(&mut s, "HTTP/1.1 requests per proxy CPU-s", &|c| {
        thousands(c.h1().per_cpu_s())
    });
    row(
        &mut s,
        "HTTP/1.1 CPU: proxy / its core (softirq) / generator core",
        &|c| c.h1().cpu.shares(),
    );
    row(&mut s, "h2 keep-alive, requests/s", &|c| {
        thousands(c.h2().rps())
    });
    row(&mut s, "h2 p50 / p99, ms", &|c| {
        let h = c.h2();
        format!("{:.2} / {:.2}", h.p50_ms(), h.p99_ms())
    });
    row(&mut s, "h2 requests per proxy CPU-s", &|c| {
        thousands(c.h2().per_cpu_s())
    });
    row(
        &mut s,
        "h2 CPU: proxy / its core (softirq) / generator core",
        &|c| c.h2().cpu.shares(),
    );
    row(&mut s, "full TLS 1.3 handshakes/s", &|c| {
        thousands(c.handshakes().per_s())
    });
    row(&mut s, "handshakes per proxy CPU-s", &|c| {
        thousands(c.handshakes().per_cpu_s())
    });
    row(
        &mut s,
        "handshakes CPU: proxy / its core (softirq) / generator core",
        &|c| c.handshakes().cpu.shares(),
    );
    row(&mut s, "memory per idle TLS connection, KiB", &|c| {
        format!("{:.1}", c.memory.bytes_per_conn() / 1024.0)
    });
    row(&mut s, "idle connections (open after / probed ok)", &|c| {
        format!(
            "{} ({} / {} of {})",
            thousands(usize_f64(c.memory.opened)),
            thousands(usize_f64(c.memory.alive_after)),
            c.memory.probed_ok,
            c.memory.probed
        )
    });
    row(&mut s, "RSS before / after, MiB", &|c| {
        format!(
            "{:.1} / {:.1}",
            kib_mib(c.memory.rss_before_kib),
            kib_mib(c.memory.rss_after_kib)
        )
    });
    s
}

#[expect(clippy::cast_precision_loss, reason = "small counts")]
fn usize_f64(n: usize) -> f64 {
    n as f64
}

#[expect(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
fn kib_mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

fn ratio_lines(r: &Results) -> String {
    let mut s = String::new();
    let ratios = r.ratios();
    for peer in ["nginx", "haproxy"] {
        let get = |fig: &str| {
            ratios
                .iter()
                .find(|(f, p, _)| *f == fig && *p == peer)
                .map(|x| x.2)
        };
        let Some(h1) = get("h1_requests_per_s") else {
            continue;
        };
        let _ = writeln!(
            s,
            "- lbd / {peer}: HTTP/1.1 {h1:.2}x requests/s (p99 {:.2}x, per proxy CPU-s {:.2}x); \
             h2 {:.2}x requests/s (p99 {:.2}x, per proxy CPU-s {:.2}x); handshakes {:.2}x per s, \
             **{:.2}x per proxy CPU-s**; memory per idle connection {:.2}x",
            get("h1_p99").unwrap_or(0.0),
            get("h1_requests_per_proxy_cpu_s").unwrap_or(0.0),
            get("h2_requests_per_s").unwrap_or(0.0),
            get("h2_p99").unwrap_or(0.0),
            get("h2_requests_per_proxy_cpu_s").unwrap_or(0.0),
            get("handshakes_per_s").unwrap_or(0.0),
            get("handshakes_per_proxy_cpu_s").unwrap_or(0.0),
            get("memory_per_idle_connection").unwrap_or(0.0),
        );
    }
    s
}

/// Prints the tables.
pub fn print(r: &Results) {
    println!();
    println!(
        "bench l7 on {} ({}; load average {} -> {})",
        r.machine.label(),
        if r.settings.quick {
            "quick: tiny counts, noisy"
        } else {
            "full"
        },
        r.machine.load_start,
        r.machine.load_end
    );
    print!("{}", table(r));
    print!("{}", ratio_lines(r));
}

/// Writes `out` (JSON) and, next to it, the markdown report and the chart.
pub fn write(r: &Results, out: &Path) -> Result<()> {
    results::write(out, &r.to_json(), &svg(r), |svg_name| markdown(r, svg_name))
}

#[expect(
    clippy::too_many_lines,
    reason = "one report, section by section; the method is one long text"
)]
fn markdown(r: &Results, svg_name: &str) -> String {
    let s_ = &r.settings;
    let mut s = String::new();
    let _ = writeln!(s, "# L7 benchmark: `cargo xtask bench l7`\n");
    let _ = writeln!(
        s,
        "Machine: **{}**. Run: {}{}. Load average at start / end: {} / {} (other work on the \
         machine lowers every figure).\n",
        r.machine.label(),
        r.machine.date,
        if s_.quick {
            " (`--quick`: tiny counts, not representative)"
        } else {
            ""
        },
        r.machine.load_start,
        r.machine.load_end,
    );
    let _ = writeln!(s, "![L7 benchmark chart]({svg_name})\n");
    let _ = writeln!(
        s,
        "Each figure is the median of {} rounds of {} s (after {} s of warm-up), the candidates \
         taking turns within each round, all in one run.\n",
        s_.rounds, s_.window_s, s_.warm_s
    );
    s.push_str(&table(r));
    s.push('\n');
    s.push_str(&ratio_lines(r));
    let _ = writeln!(s, "\n## Candidates and TLS\n");
    let _ = writeln!(
        s,
        "| candidate | version | tenant | TLS | suite | group | ALPN (offered h2, http/1.1) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for c in &r.candidates {
        for t in &c.tls {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                c.name, c.version, t.tenant, t.version, t.suite, t.group, t.alpn
            );
        }
    }
    let _ = writeln!(s, "\n## Rounds\n");
    let _ = writeln!(
        s,
        "| candidate | round | HTTP/1.1 req/s | p99 ms | h2 req/s | p99 ms | handshakes/s | per proxy CPU-s |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in &r.candidates {
        for (i, rd) in c.rounds.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} | {} | {:.2} | {} | {} |",
                c.name,
                i + 1,
                thousands(rd.h1.rps()),
                rd.h1.p99_ms(),
                thousands(rd.h2.rps()),
                rd.h2.p99_ms(),
                thousands(rd.handshakes.per_s()),
                thousands(rd.handshakes.per_cpu_s()),
            );
        }
    }
    let first = r.candidates.first();
    let h1 = first.map(Candidate::h1);
    let h2 = first.map(Candidate::h2);
    let hs = first.map(Candidate::handshakes);
    let _ = writeln!(
        s,
        "\n## Method\n\n\
         - **Topology**: two network namespaces joined by one veth pair. The proxy's namespace \
         holds the listen address `10.78.0.2:443` on its veth; the other holds the load \
         generators, the bench's own clients and the backends (`10.78.0.1:8081-8084`). \
         Traffic never leaves the two namespaces. lbd attaches its XDP program to its \
         namespace's veth (the listen address is passed up to the local stack); nginx and \
         HAProxy run without one, as they would be deployed.\n\
         - **Tenants**: `alpha.example` and `beta.example`, each with its own ECDSA P-256 \
         certificate signed by its own CA (rcgen), TLS 1.2 and 1.3 enabled (every client here \
         negotiates 1.3), ALPN h2 and http/1.1, and two backends each, round robin. Every \
         candidate adds `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-ID` and \
         `X-Tenant-ID` (what lbd does), reuses keep-alive connections to the backends across \
         client connections (nginx `keepalive 64`, HAProxy `http-reuse always`, lbd's pooled \
         client), and writes no access log. nginx: `worker_processes 1`, \
         `keepalive_requests` raised so no client connection is closed during a window; \
         HAProxy: `nbthread 1`; lbd: `--workers 1` (the version column says whether this lbd \
         has the flag; without it lbd runs its default runtime, pinned to the same core). Before measuring, each candidate must \
         pass a check: each tenant's name gets a certificate that verifies against that \
         tenant's CA only, over TLS 1.3, and a request reaches that tenant's backends.\n\
         - **Placement**: the proxy (all its processes and threads) is pinned to CPU {pc}; \
         wrk, h2load, the bench's clients and the backends to CPU {gc}. Two cores: the \
         generator's core usually saturates first (its busy share is in the table), so the \
         per-proxy-CPU-second figures are the comparable ones. Proxy CPU is user + system \
         time of all its processes (nginx: master and worker) from `/proc/PID/stat` over the \
         window; the network stack's softirq work is charged to no process, so the table \
         also gives the proxy core's whole busy share and its softirq part. Everything the \
         bench runs (candidates, load tools, its own threads) runs at nice {nice}, so other \
         work on a shared machine (builds) takes less of the two cores during a window; the \
         load average at start and end is above.\n\
         - **Backends**: one hyper server per backend (HTTP/1.1 and h2c), all on one \
         current-thread runtime in the bench process on CPU {gc}, answering every request \
         with a {body}-byte body naming its tenant. They count what they serve and any \
         request carrying another tenant's host, so every window proves the requests went \
         through the proxy to the right tenant's backends (a window fails otherwise). A Rust \
         server in the bench process rather than a second nginx: it needs no extra process \
         that could be mistaken for the candidate, it adds the same small, known cost on the \
         generator's core for every candidate, and it can check the routing.\n\
         - **HTTP/1.1 keep-alive**: two wrk processes at once, one per tenant (wrk takes one \
         URL, whose host is its SNI), {h1c} connections each, one thread each, `--latency`. \
         Requests/s is their sum; p50/p99 is the worse of the two tenants' (their histograms \
         are separate). Responses are {body} bytes.\n\
         - **h2 keep-alive**: two h2load processes at once, one per tenant, {h2c} connections \
         each with {h2s} concurrent streams; p50/p99 from h2load's per-request log.\n\
         - **Full TLS 1.3 handshakes**: the bench's own client (rustls, ring), {hsc} \
         connections at a time, half per tenant: connect, full handshake (session resumption \
         off; each handshake is checked to be a full one), one `Connection: close` request, \
         read until the proxy closes, next. wrk cannot be used: it resumes the TLS session \
         when it reconnects (checked with nginx's `$ssl_session_reused`), which skips the \
         certificate signature. Handshakes per proxy CPU-second = completed connections / \
         proxy CPU seconds in the window.\n\
         - **Memory per idle TLS connection**: each candidate freshly started, warmed with a \
         few hundred connections, then the bench's client opens the connections (full \
         handshake, one HTTP/1.1 request each, alternating tenants) and leaves them idle; \
         (RSS after - RSS before) / connections, RSS being `VmRSS` summed over the \
         candidate's processes. After measuring, the bench checks the connections are still \
         open and sends a second request on a sample of them. The open-file limit is raised \
         to the hard limit for the client and the proxies (nginx `worker_rlimit_nofile` and \
         `worker_connections`, HAProxy `maxconn`).\n\
         - **Tools**: {tools}.\n",
        nice = crate::proxies::NICE,
        pc = s_.proxy_cpu,
        gc = s_.gen_cpu,
        body = s_.body_bytes,
        h1c = h1.map_or(0, |h| h.conns),
        h2c = h2.as_ref().map_or(0, |h| h.conns),
        h2s = h2.as_ref().map_or(0, |h| h.streams),
        hsc = hs.map_or(0, |h| h.concurrency),
        tools = s_.tools.join("; "),
    );
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel per figure, a bar per candidate.
#[expect(
    clippy::too_many_lines,
    reason = "the figures' table and the drawing, in one place"
)]
fn svg(r: &Results) -> String {
    const W: f64 = 820.0;
    const LEFT: f64 = 150.0;
    const BAR_W: f64 = 520.0;
    const ROW: f64 = 22.0;
    type Figure<'a> = (
        &'a str,
        Box<dyn Fn(&Candidate) -> f64>,
        Box<dyn Fn(f64) -> String>,
    );
    let panels: Vec<Figure> = vec![
        (
            "HTTP/1.1 keep-alive requests/s",
            Box::new(|c| c.h1().rps()),
            Box::new(thousands),
        ),
        (
            "HTTP/1.1 requests per proxy CPU-second",
            Box::new(|c| c.h1().per_cpu_s()),
            Box::new(thousands),
        ),
        (
            "HTTP/1.1 p99 latency, ms (lower is better)",
            Box::new(|c| c.h1().p99_ms()),
            Box::new(|v| format!("{v:.2}")),
        ),
        (
            "h2 keep-alive requests/s",
            Box::new(|c| c.h2().rps()),
            Box::new(thousands),
        ),
        (
            "h2 requests per proxy CPU-second",
            Box::new(|c| c.h2().per_cpu_s()),
            Box::new(thousands),
        ),
        (
            "h2 p99 latency, ms (lower is better)",
            Box::new(|c| c.h2().p99_ms()),
            Box::new(|v| format!("{v:.2}")),
        ),
        (
            "full TLS 1.3 handshakes/s",
            Box::new(|c| c.handshakes().per_s()),
            Box::new(thousands),
        ),
        (
            "full TLS 1.3 handshakes per proxy CPU-second",
            Box::new(|c| c.handshakes().per_cpu_s()),
            Box::new(thousands),
        ),
        (
            "KiB per idle TLS connection (lower is better)",
            Box::new(|c| c.memory.bytes_per_conn() / 1024.0),
            Box::new(|v| format!("{v:.1}")),
        ),
    ];
    let color = |name: &str| match name {
        "lbd" => "#2f6db5",
        "nginx" => "#4a9a4a",
        _ => "#d9822b",
    };
    let mut body = String::new();
    let mut y = 28.0;
    let _ = writeln!(
        body,
        r#"<text x="10" y="{y}" font-size="16" font-weight="bold">lb L7 benchmark: lbd, nginx and HAProxy, one core each, two TLS tenants</text>"#
    );
    y += 16.0;
    for (title, get, fmt) in &panels {
        y += 14.0;
        let _ = writeln!(
            body,
            r#"<text x="10" y="{y}" font-size="13" font-weight="bold">{}</text>"#,
            esc(title)
        );
        y += 6.0;
        let max = r.candidates.iter().map(&**get).fold(1e-9, f64::max);
        for c in &r.candidates {
            let v = get(c);
            let w = (v / max * BAR_W).max(0.0);
            let _ = writeln!(
                body,
                r#"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text><rect x="{LEFT}" y="{y}" width="{w:.1}" height="14" fill="{}"/><text x="{:.1}" y="{}" font-size="11">{}</text>"#,
                LEFT - 8.0,
                y + 12.0,
                c.name,
                color(c.name),
                LEFT + w + 6.0,
                y + 12.0,
                esc(&fmt(v)),
            );
            y += ROW - 4.0;
        }
        y += 6.0;
    }
    y += 14.0;
    let _ = writeln!(
        body,
        r##"<text x="10" y="{y}" font-size="11" fill="#555">{}{} | {}</text>"##,
        esc(&r.machine.label()),
        if r.settings.quick {
            " | --quick run"
        } else {
            ""
        },
        esc(&r.machine.date)
    );
    y += 12.0;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{y}\" viewBox=\"0 0 {W} {y}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}
