//! The soak: `cargo xtask soak [--minutes N]` (CI runs 3 minutes). One node
//! in network namespaces serves two tenants, alpha and beta, three backends
//! each: L4 TCP and UDP through XDP (new connections and long-lived ones)
//! and L7 HTTPS through `lbd` (HTTP/1.1 and h2, pooled clients). Every
//! cycle of 20 s, on a fixed schedule:
//!
//! | at | what |
//! | --- | --- |
//! | 0 s | a backend is killed (its TCP, UDP and HTTP servers stop) |
//! | 4 s | it is restarted |
//! | 7 s | another backend is drained (`lbctl backend drain`) |
//! | 10 s | it is enabled again |
//! | 12 s | a reload adds tenant gamma (even cycles) or removes it (odd) |
//! | 15 s | alpha's (even) or beta's (odd) certificate is replaced on disk |
//! | 18 s | in the first third of the run, `lbd` is restarted: by hand-over (odd cycles) or SIGKILL and a new start (even) |
//!
//! It asserts: no L7 request fails except while `lbd` is down after a
//! SIGKILL (every pool keeps two live backends, and `lbd` retries an
//! idempotent request on another backend); a new L4 connection or UDP
//! exchange fails only if it overlaps the health checks' detection bound
//! after a backend of its pool is killed (an exchange sent just before the
//! bound can time out after it); no long-lived L4 connection breaks unless
//! its own backend was killed; `lbd`'s RSS, sampled at the end of each
//! cycle, grows by less than 5 % from its warm-up (the second cycle after
//! the last restart: a new `lbd` reaches its working set over its first
//! cycle of kills, drains, reloads and rotations) to the end; its open
//! file descriptors (the fewest over 2 s with the load paused) come back,
//! within 2,
//! to that cycle's count; the data plane's
//! counters (pinned, so they outlive every `lbd`) never decrease. It prints
//! a summary and writes `LB_SOAK_RESULTS` (JSON).
//!
//! Ignored by a plain `cargo test`: `cargo xtask soak` runs it with
//! `--ignored`, the length in `LB_SOAK_MINUTES`.

#[allow(dead_code, reason = "the shared helpers: the soak uses lbctl_in")]
mod common;
#[path = "common/l7/mod.rs"]
#[expect(
    dead_code,
    reason = "the shared L7 harness: the soak uses its certificates, backends, client and daemon"
)]
mod l7;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{LBCTL, lbctl_in};
use http_body_util::{BodyExt as _, Full};
use l7::{
    backend::{Backend, Front},
    certs::Ca,
    client::{Http, Pooled, pooled},
    daemon::{Lbd, Pins, WorkDir},
};
use lb_tests::{
    netns::{Topology, TopologySpec, run_in_netns, vip_v4},
    servers::{LongLived, Proto, TcpNameServer, UdpNameServer, ask_name},
};
use rustls::pki_types::CertificateDer;

/// One cycle of the schedule.
const CYCLE: Duration = Duration::from_secs(20);
/// The shared HTTPS listener.
const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(vip_v4(50)), 443);
/// The backends' HTTP port (L4 uses 80/tcp and 53/udp).
const HTTP_PORT: u16 = 8080;
/// Health checks of every pool: a dead backend leaves its ring within
/// fall x interval + interval + timeout.
const HEALTH: &str =
    "health = { kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2 }";
/// How long after a kill new L4 connections to its pool may fail: the
/// health checks' bound (2 x 200 + 200 + 150 ms) plus a second of slack.
const DETECTION: Duration = Duration::from_millis(1750);
/// How long after the successor of a killed `lbd` serves again L7 requests
/// may still fail (pooled connections to the dead one).
const RESTART_SLACK: Duration = Duration::from_secs(1);
/// Open fds the end may hold over the warm-up's: runs of 3 and 30 minutes
/// end 1 above or below it (a runtime or pooled fd of the moment), while a
/// leak of one fd per fault would add dozens even in 3 minutes.
const FD_SLACK: usize = 2;
/// RSS growth allowed after warm-up.
const RSS_GROWTH_LIMIT: f64 = 0.05;
/// Long-lived connections per tenant.
const LONG_LIVED: usize = 4;
/// Failures kept for the report (the counts are exact).
const KEEP_FAILURES: usize = 200;

fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 100, n)
}

/// A long-lived connection that broke: (tenant label, backend, opened at,
/// broken at, error).
type Broken = (String, String, Instant, Instant, String);

/// The tenants under load: (name, backend label, VIP, SNI host).
const TENANTS: [(&str, &str, u8, &str); 2] = [
    ("alpha", "a", 1, "alpha.soak.example"),
    ("beta", "b", 2, "beta.soak.example"),
];

/// The last octet of the VIP of the tenant that owns backend `name` (its
/// label's first letter: alpha's `a1`, beta's `b2`, gamma's `g1`).
fn tenant_vip(name: &str) -> u8 {
    TENANTS
        .iter()
        .find(|(_, label, _, _)| name.starts_with(label))
        .map_or(3, |(_, _, n, _)| *n)
}

/// A backend's three servers; all stop together ("killed").
struct Servers {
    tcp: TcpNameServer,
    udp: UdpNameServer,
    http: Backend,
}

impl Servers {
    fn start(topo: &Topology, name: &str) -> Servers {
        let b = topo.backend(name);
        // The UDP server binds its tenant's VIP: bound to 0.0.0.0, its
        // replies would leave from the backend's own address, and the
        // client's connected socket would discard them.
        let udp = SocketAddr::new(IpAddr::V4(vip(tenant_vip(name))), 53);
        Servers {
            tcp: TcpNameServer::start(&b.path(), "0.0.0.0:80".parse().expect("addr"), name)
                .expect("tcp server"),
            udp: UdpNameServer::start(&b.path(), udp, name).expect("udp server"),
            http: Backend::start(
                &b.path(),
                SocketAddr::new(IpAddr::V4(b.v4), HTTP_PORT),
                name,
                Front::Plain,
            ),
        }
    }

    fn stop(self) {
        self.tcp.stop();
        self.udp.stop();
        self.http.stop();
    }
}

/// What happened when, for attributing failures.
#[derive(Default)]
struct Timeline {
    /// (backend, killed at, restarted at).
    kills: Vec<(String, Instant, Option<Instant>)>,
    /// (SIGKILL at, successor serving at).
    lbd_down: Vec<(Instant, Option<Instant>)>,
}

impl Timeline {
    /// An attempt of `tenant_label` that ran over `span` may fail if it
    /// overlaps a detection window after a kill of that tenant's backend
    /// (one that began just before the window can time out after it).
    fn l4_failure_allowed(&self, tenant_label: &str, span: Span) -> bool {
        self.kills
            .iter()
            .any(|(b, k, _)| b.starts_with(tenant_label) && span.overlaps(*k, Some(*k + DETECTION)))
    }

    fn l7_failure_allowed(&self, span: Span) -> bool {
        self.lbd_down
            .iter()
            .any(|(k, up)| span.overlaps(*k, up.map(|u| u + RESTART_SLACK)))
    }

    /// Whether `backend` was killed (or was being killed) while a
    /// connection to it lived, from `opened` to `broken`: one opened while
    /// its servers were still stopping counts too.
    fn killed_during(&self, backend: &str, opened: Instant, broken: Instant) -> bool {
        self.kills.iter().any(|(b, k, restarted)| {
            b == backend && *k <= broken && restarted.is_none_or(|r| r >= opened)
        })
    }
}

/// When one attempt (a connection, an exchange, a request) started and
/// ended.
#[derive(Clone, Copy)]
struct Span {
    start: Instant,
    end: Instant,
}

impl Span {
    /// Whether the attempt overlaps `[from, to]` (`to` none: still open).
    fn overlaps(self, from: Instant, to: Option<Instant>) -> bool {
        self.end >= from && to.is_none_or(|t| self.start <= t)
    }
}

/// Outcomes of one kind of traffic.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// (tenant label, when, error), the first [`KEEP_FAILURES`].
    failures: Mutex<Vec<(String, Span, String)>>,
}

impl Tally {
    /// The outcome of an attempt of `tenant` that started at `start`.
    fn record(&self, tenant: &str, start: Instant, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Relaxed);
                let mut f = self.failures.lock().expect("failures");
                if f.len() < KEEP_FAILURES {
                    let end = Instant::now();
                    f.push((tenant.to_owned(), Span { start, end }, e));
                }
            }
        }
    }
}

/// The load's shared state.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    paused: AtomicBool,
    tcp: Tally,
    udp: Tally,
    l7: Tally,
    long_probes: AtomicU64,
    /// (tenant label, backend, opened at, broken at, error).
    long_broken: Mutex<Vec<Broken>>,
}

impl Load {
    fn running(&self) -> bool {
        !self.stop.load(Relaxed)
    }

    /// Sleeps while paused; false once stopped.
    fn wait_unpaused(&self) -> bool {
        while self.paused.load(Relaxed) && self.running() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.running()
    }
}

struct Soak {
    // Drop order: lbd first, the namespaces last.
    lbd: Option<Lbd>,
    lbd_starts: usize,
    servers: BTreeMap<String, Servers>,
    _pins: Pins,
    pin_path: PathBuf,
    links: PathBuf,
    cas: BTreeMap<&'static str, Ca>,
    dir: PathBuf,
    _work: WorkDir,
    topo: Topology,
}

impl Soak {
    fn new() -> Soak {
        let topo = Topology::create(
            &TopologySpec::new()
                .with_clients(1)
                .with_tenant("a", 3)
                .with_tenant("b", 3)
                .with_tenant("g", 1),
        )
        .expect("topology");
        topo.run_ok(
            topo.lb_ns(),
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/32", LISTEN.ip()),
                "dev",
                "lo",
            ],
        )
        .expect("the listen address");
        let dir = std::env::temp_dir().join(format!("lb-soak-{}", topo.prefix()));
        std::fs::create_dir_all(&dir).expect("work dir");
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/{}-lb", topo.prefix()));
        let links = PathBuf::from(format!("/sys/fs/bpf/{}-links", topo.prefix()));
        let links_arg = links.to_str().expect("utf-8").to_owned();
        for (ns, iface) in topo.fabric_ports() {
            lbctl_in(
                &lb_tests::netns::netns_path(&ns),
                &["pass", "attach", &iface, "--pin-dir", &links_arg],
            );
        }
        let vips: Vec<IpAddr> = (1..=3).map(|n| IpAddr::V4(vip(n))).collect();
        topo.add_vip_to_backends(&vips).expect("VIPs on backends");
        let mut servers = BTreeMap::new();
        for b in topo.backends() {
            lbctl_in(
                &b.path(),
                &["decap", "attach", "eth0", "--pin-dir", &links_arg],
            );
            servers.insert(b.name.clone(), Servers::start(&topo, &b.name));
        }
        let mut cas = BTreeMap::new();
        for (name, _, _, host) in TENANTS {
            let ca = Ca::new(name);
            ca.issue(&[host]).write(
                &dir.join(format!("{name}.pem")),
                &dir.join(format!("{name}.key")),
            );
            cas.insert(name, ca);
        }
        let soak = Soak {
            lbd: None,
            lbd_starts: 0,
            servers,
            _pins: Pins(pin_path.clone()),
            pin_path,
            links,
            cas,
            _work: WorkDir(dir.clone()),
            dir,
            topo,
        };
        soak.write_config(false);
        soak
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("lb.toml")
    }

    /// `lb.toml`: alpha and beta (L4 TCP and UDP VIPs, an L7 site each on
    /// the shared listener), and gamma (one L4 VIP) when `gamma`.
    fn write_config(&self, gamma: bool) {
        let mut s = format!(
            "[node]\ninterface = \"eth0\"\npin_path = \"{}\"\nstate_dir = \"{}/state\"\n\
             admin_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:9464\"\naccess_log = \"off\"\n\
             drain_timeout = \"5s\"\n",
            self.pin_path.display(),
            self.dir.display(),
            self.socket().display()
        );
        let members = |label: &str, port: Option<u16>| -> String {
            let list: Vec<String> = self
                .topo
                .backends()
                .iter()
                .filter(|b| b.name.starts_with(label))
                .map(|b| match port {
                    Some(p) => format!("{{ address = \"{}\", port = {p} }}", b.v4),
                    None => format!("{{ address = \"{}\" }}", b.v4),
                })
                .collect();
            format!("[{}]", list.join(", "))
        };
        for (name, label, n, host) in TENANTS {
            let _ = write!(
                s,
                "\n[[tenant]]\nname = \"{name}\"\n\
                 [[tenant.pool]]\nname = \"l4\"\nbackends = {}\n{HEALTH}\n\
                 [[tenant.pool]]\nname = \"web\"\nbackends = {}\n{HEALTH}\n\
                 [[tenant.l4]]\nvip = \"{v}\"\nport = 80\nprotocol = \"tcp\"\npool = \"l4\"\n\
                 [[tenant.l4]]\nvip = \"{v}\"\nport = 53\nprotocol = \"udp\"\npool = \"l4\"\n\
                 [[tenant.l7]]\nlisten = \"{LISTEN}\"\nhosts = [\"{host}\"]\n\
                 tls = {{ cert = \"{name}.pem\", key = \"{name}.key\" }}\n\
                 routes = [ {{ path_prefix = \"/\", pool = \"web\" }} ]\n",
                members(label, None),
                members(label, Some(HTTP_PORT)),
                v = vip(n),
            );
        }
        if gamma {
            let _ = write!(
                s,
                "\n[[tenant]]\nname = \"gamma\"\n[[tenant.pool]]\nname = \"l4\"\nbackends = {}\n\
                 [[tenant.l4]]\nvip = \"{}\"\nport = 80\nprotocol = \"tcp\"\npool = \"l4\"\n",
                members("g", None),
                vip(3)
            );
        }
        std::fs::write(self.config_path(), s).expect("writing lb.toml");
    }

    fn lbctl(&self, args: &[&str]) -> Output {
        Command::new(LBCTL)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("running lbctl")
    }

    fn lbctl_ok(&self, args: &[&str]) -> String {
        let out = self.lbctl(args);
        assert!(out.status.success(), "lbctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts an `lbd` (a hand-over when one runs) and waits until it
    /// answers on its admin socket and serves both tenants' L7 sites.
    fn start_lbd(&mut self) -> Lbd {
        self.lbd_starts += 1;
        let log = self.dir.join(format!("lbd{}.log", self.lbd_starts));
        let mut lbd = Lbd::start(&self.topo.lb_path(), &self.config_path(), log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.lbctl(&["status"]).status.success() && self.l7_serves()) {
            lbd.assert_running();
            assert!(Instant::now() < deadline, "lbd did not serve within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        lbd
    }

    /// One HTTPS request per tenant, from the client namespace.
    fn l7_serves(&self) -> bool {
        let cas: Vec<(&'static str, CertificateDer<'static>)> = TENANTS
            .iter()
            .map(|(name, _, _, host)| (*host, self.cas[name].der()))
            .collect();
        l7::world::join(l7::spawn_in(
            &self.topo.client_path(0),
            move || async move {
                for (host, ca) in cas {
                    let client = pooled(host, &ca, Http::H1);
                    if l7_get(&client, Http::H1, host).await.is_err() {
                        return false;
                    }
                }
                true
            },
        ))
    }

    fn lbd_pid(&self) -> u32 {
        self.lbd.as_ref().expect("lbd").pid()
    }

    fn kill_backend(&mut self, name: &str) {
        self.servers
            .remove(name)
            .unwrap_or_else(|| panic!("{name} is not running"))
            .stop();
    }

    fn restart_backend(&mut self, name: &str) {
        let s = Servers::start(&self.topo, name);
        self.servers.insert(name.to_owned(), s);
    }
}

impl Drop for Soak {
    fn drop(&mut self) {
        if let Some(mut lbd) = self.lbd.take() {
            lbd.signal(libc::SIGTERM);
            let _ = lbd.wait_exit(Duration::from_secs(15));
        }
        let _ = std::fs::remove_dir_all(&self.links);
    }
}

/// A GET of `/` for `host` through a pooled client, read to its end.
async fn l7_get(client: &Pooled, http: Http, host: &str) -> Result<(), String> {
    let mut req = http::Request::get(format!("https://{LISTEN}/"));
    if http == Http::H1 {
        req = req.header(http::header::HOST, host);
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?;
    if status == http::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// New TCP connections (80) or UDP exchanges (53), alternating tenants;
/// each kind on its own thread so one's timeouts do not thin the other.
fn l4_load(proto: Proto, client: PathBuf, load: Arc<Load>, deadline: Instant) -> JoinHandle<()> {
    std::thread::spawn(move || {
        run_in_netns(&client, move || {
            let (port, timeout, tally) = match proto {
                Proto::Tcp => (80, Duration::from_secs(2), &load.tcp),
                Proto::Udp => (53, Duration::from_secs(1), &load.udp),
            };
            let mut i = 0usize;
            while load.wait_unpaused() && Instant::now() < deadline {
                let (_, label, n, _) = TENANTS[i % TENANTS.len()];
                i += 1;
                let addr = SocketAddr::new(IpAddr::V4(vip(n)), port);
                let start = Instant::now();
                let r = ask_name(proto, addr, timeout).map(drop);
                tally.record(label, start, r.map_err(|e| format!("{e:#}")));
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .expect("L4 load");
    })
}

/// Long-lived connections, probed every 250 ms; a broken one is recorded
/// and replaced.
fn long_lived_load(client: PathBuf, load: Arc<Load>, deadline: Instant) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let open = |n: u8| {
            let addr = SocketAddr::new(IpAddr::V4(vip(n)), 80);
            // The pool may be missing a backend being detected: retry.
            for _ in 0..20 {
                if let Ok(c) = LongLived::open_with_timeout(&client, addr, Duration::from_secs(2)) {
                    return (c, Instant::now());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("no long-lived connection to {addr} in 20 tries");
        };
        let mut conns: Vec<(&str, u8, LongLived, Instant)> = Vec::new();
        for (_, label, n, _) in TENANTS {
            for _ in 0..LONG_LIVED {
                let (c, at) = open(n);
                conns.push((label, n, c, at));
            }
        }
        while load.running() && Instant::now() < deadline {
            for slot in &mut conns {
                let (label, n, conn, opened) = slot;
                load.long_probes.fetch_add(1, Relaxed);
                if let Err(e) = conn.probe() {
                    load.long_broken.lock().expect("broken").push((
                        (*label).to_owned(),
                        conn.backend_name().to_owned(),
                        *opened,
                        Instant::now(),
                        format!("{e:#}"),
                    ));
                    let (c, at) = open(*n);
                    *conn = c;
                    *opened = at;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
}

/// HTTPS requests, HTTP/1.1 and h2 for each tenant, through pooled
/// clients dropped while the load is paused (so their connections close).
fn l7_load(
    client: &Path,
    cas: Vec<(&'static str, &'static str, CertificateDer<'static>)>,
    load: Arc<Load>,
    deadline: Instant,
) -> JoinHandle<anyhow::Result<()>> {
    l7::spawn_in(client, move || async move {
        let mut tasks = tokio::task::JoinSet::new();
        for (label, host, ca) in cas {
            for http in [Http::H1, Http::H2] {
                let (load, ca) = (Arc::clone(&load), ca.clone());
                tasks.spawn(async move {
                    while load.running() && Instant::now() < deadline {
                        let client = pooled(host, &ca, http);
                        while load.running()
                            && !load.paused.load(Relaxed)
                            && Instant::now() < deadline
                        {
                            let start = Instant::now();
                            let r = l7_get(&client, http, host).await;
                            load.l7.record(label, start, r);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        drop(client);
                        while load.paused.load(Relaxed) && load.running() {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    })
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `lbd`'s open file descriptors, each described (a TCP socket by its
/// addresses and state), less its pooled connections to the backends'
/// HTTP port: the pool keeps idle ones for 90 s (bounded per backend), so
/// their number follows the recent load, not a leak.
fn open_fds(pid: u32) -> Vec<String> {
    // /proc/PID/net/tcp lists the sockets of lbd's namespace: "sl local
    // rem st tx:rx tr:when retr uid timeout inode", addresses in hex.
    let mut sockets = std::collections::HashMap::new();
    let mut pooled = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) =
                (f.get(1), f.get(2), f.get(3), f.get(9))
            else {
                continue;
            };
            let link = format!("socket:[{inode}]");
            let port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if port == Some(HTTP_PORT) {
                pooled.insert(link);
            } else {
                sockets.insert(link, format!("{table} {local} -> {remote} state {state}"));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or_else(
        |_| Vec::new(),
        |dir| {
            let mut fds: Vec<String> = dir
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .filter(|l| !pooled.contains(l))
                .map(|l| sockets.get(&l).cloned().unwrap_or(l))
                .collect();
            fds.sort();
            fds
        },
    )
}

/// With the load paused, `lbd`'s fewest open fds over 2 s (after 1 s for
/// the load's connections to close), and what they were: a health check
/// or an accept in flight holds a socket for a moment, a leak holds it
/// for good.
fn settled_fds(pid: u32, load: &Load) -> Vec<String> {
    load.paused.store(true, Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    let mut fewest = open_fds(pid);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let now = open_fds(pid);
        if now.len() < fewest.len() {
            fewest = now;
        }
    }
    load.paused.store(false, Relaxed);
    fewest
}

/// The data plane's drop counters by name (node-wide `flow_stale`, and
/// each tenant's drops by reason), sampled with their time to explain a
/// failure: what the data plane counted while it ran.
struct DropSamples {
    names: Vec<String>,
    samples: Vec<(Instant, Vec<u64>)>,
}

impl DropSamples {
    fn new(tenants: &[(String, u32)]) -> Self {
        let mut names = vec!["flow_stale".to_owned()];
        for (name, _) in tenants {
            names.extend(
                lb_common::DropReason::ALL
                    .iter()
                    .map(|r| format!("{name} {}", r.name())),
            );
        }
        Self {
            names,
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, dp: &lb::dataplane::Dataplane, tenants: &[(String, u32)]) {
        let mut v = vec![dp.global(lb_common::global_counter::FLOW_STALE)];
        for (_, id) in tenants {
            v.extend(dp.tenant_drops(*id).by_reason);
        }
        self.samples.push((Instant::now(), v));
    }

    /// The counters that moved from the last sample before `span` to the
    /// first after it, e.g. `alpha no_neigh +1`.
    fn during(&self, span: Span) -> String {
        let before = self.samples.iter().rev().find(|(t, _)| *t <= span.start);
        let after = self.samples.iter().find(|(t, _)| *t >= span.end);
        let (Some((_, a)), Some((_, b))) = (before, after) else {
            return "no samples around it".to_owned();
        };
        let moved: Vec<String> = self
            .names
            .iter()
            .zip(a.iter().zip(b))
            .filter(|(_, (x, y))| y > x)
            .map(|(n, (x, y))| format!("{n} +{}", y - x))
            .collect();
        if moved.is_empty() {
            "the data plane counted no drop".to_owned()
        } else {
            format!("the data plane counted {}", moved.join(", "))
        }
    }
}

/// The data plane's counters that must never decrease: every node-wide
/// counter, and alpha's and beta's traffic counters.
fn counters(dp: &lb::dataplane::Dataplane, tenants: &[u32]) -> Vec<u64> {
    let mut out: Vec<u64> = (0..lb_common::global_counter::COUNT)
        .map(|i| dp.global(i))
        .collect();
    for &t in tenants {
        let c = dp.tenant_stats(t);
        out.extend([c.packets, c.bytes, c.new_flows]);
    }
    out
}

#[test]
#[ignore = "a soak of minutes: run by `cargo xtask soak`"]
#[expect(
    clippy::too_many_lines,
    reason = "the schedule and its checks, read top to bottom"
)]
fn soak() {
    let minutes: u64 = std::env::var("LB_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(3);
    let cycles = u32::try_from((minutes * 60 / CYCLE.as_secs()).max(6)).unwrap_or(u32::MAX);
    // Restarts in the first third; the rest measures memory.
    let restart_cycles = (cycles / 3).max(2);
    let mut soak = Soak::new();
    let lbd = soak.start_lbd();
    soak.lbd = Some(lbd);
    let start = Instant::now();
    let deadline = start + CYCLE * cycles + Duration::from_mins(2);

    let dp = lb::dataplane::Dataplane::open_pinned(&soak.pin_path).expect("the pinned maps");
    let ids: serde_json::Value =
        serde_json::from_str(&soak.lbctl_ok(&["--json", "tenant", "list"])).expect("JSON");
    let named_ids: Vec<(String, u32)> = ids
        .as_array()
        .expect("tenants")
        .iter()
        .filter_map(|t| {
            let id = t["id"].as_u64().and_then(|i| u32::try_from(i).ok())?;
            Some((t["name"].as_str()?.to_owned(), id))
        })
        .collect();
    let tenant_ids: Vec<u32> = named_ids.iter().map(|(_, id)| *id).collect();
    assert_eq!(tenant_ids.len(), 2, "{ids}");
    let mut drops = DropSamples::new(&named_ids);

    let load = Arc::new(Load::default());
    let client = soak.topo.client_path(0);
    let tcp = l4_load(Proto::Tcp, client.clone(), Arc::clone(&load), deadline);
    let udp = l4_load(Proto::Udp, client.clone(), Arc::clone(&load), deadline);
    let long = long_lived_load(client.clone(), Arc::clone(&load), deadline);
    let cas = TENANTS
        .iter()
        .map(|(name, label, _, host)| (*label, *host, soak.cas[name].der()))
        .collect();
    let l7 = l7_load(&client, cas, Arc::clone(&load), deadline);

    let backends: Vec<String> = soak
        .topo
        .backends()
        .iter()
        .filter(|b| !b.name.starts_with('g'))
        .map(|b| b.name.clone())
        .collect();
    let mut timeline = Timeline::default();
    let mut rss: Vec<(u32, u64)> = Vec::new();
    let mut last_counters = counters(&dp, &tenant_ids);
    let mut counter_regressions = Vec::new();
    let mut baseline_fds = None;
    let mut events = 0usize;
    // The last restart ends cycle `restart_cycles`; its lbd has served one
    // whole cycle by the end of the next.
    let warm = restart_cycles + 2;
    for cycle in 0..cycles {
        let t0 = start + CYCLE * cycle;
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut wait_until = |t: Instant,
                              dp: &lb::dataplane::Dataplane,
                              last: &mut Vec<u64>,
                              bad: &mut Vec<String>| {
            while Instant::now() < t {
                drops.sample(dp, &named_ids);
                let now = counters(dp, &tenant_ids);
                for (i, (a, b)) in last.iter().zip(&now).enumerate() {
                    if b < a {
                        bad.push(format!("counter {i}: {a} -> {b}"));
                    }
                }
                *last = now;
                std::thread::sleep(
                    Duration::from_millis(250).min(t.saturating_duration_since(Instant::now())),
                );
            }
        };
        let killed = backends[cycle as usize % backends.len()].clone();
        let drained = backends[(cycle as usize + 3) % backends.len()].clone();

        // Recorded before the servers stop: stopping takes a while, and
        // connections refused meanwhile belong to the kill.
        timeline.kills.push((killed.clone(), Instant::now(), None));
        soak.kill_backend(&killed);
        wait_until(at(4), &dp, &mut last_counters, &mut counter_regressions);
        soak.restart_backend(&killed);
        if let Some(k) = timeline.kills.last_mut() {
            k.2 = Some(Instant::now());
        }
        wait_until(at(7), &dp, &mut last_counters, &mut counter_regressions);
        let (tenant, addr) = (
            if drained.starts_with('a') {
                "alpha"
            } else {
                "beta"
            },
            soak.topo.backend(&drained).v4.to_string(),
        );
        soak.lbctl_ok(&["backend", "drain", tenant, "l4", &addr]);
        wait_until(at(10), &dp, &mut last_counters, &mut counter_regressions);
        soak.lbctl_ok(&["backend", "enable", tenant, "l4", &addr]);
        wait_until(at(12), &dp, &mut last_counters, &mut counter_regressions);
        let gamma = cycle % 2 == 0;
        soak.write_config(gamma);
        soak.lbctl_ok(&["reload"]);
        let listed = soak.lbctl_ok(&["tenant", "list"]);
        assert_eq!(
            listed.contains("gamma"),
            gamma,
            "after the reload:\n{listed}"
        );
        wait_until(at(15), &dp, &mut last_counters, &mut counter_regressions);
        let (name, _, _, host) = TENANTS[cycle as usize % 2];
        soak.cas[name].issue(&[host]).write(
            &soak.dir.join(format!("{name}.pem")),
            &soak.dir.join(format!("{name}.key")),
        );
        wait_until(at(18), &dp, &mut last_counters, &mut counter_regressions);
        events += 6;
        if (1..=restart_cycles).contains(&cycle) {
            let mut old = soak.lbd.take().expect("lbd");
            if cycle % 2 == 1 {
                // Hand-over: the new lbd takes the sockets, the old drains.
                let new = soak.start_lbd();
                assert!(
                    old.wait_exit(Duration::from_secs(30)).is_some(),
                    "the replaced lbd did not exit"
                );
                soak.lbd = Some(new);
            } else {
                let down = Instant::now();
                old.signal(libc::SIGKILL);
                let _ = old.wait_exit(Duration::from_secs(10));
                let new = soak.start_lbd();
                timeline.lbd_down.push((down, Some(Instant::now())));
                soak.lbd = Some(new);
            }
            events += 1;
        }
        wait_until(at(19), &dp, &mut last_counters, &mut counter_regressions);
        if cycle >= warm {
            let pid = soak.lbd_pid();
            rss.push((cycle, rss_kib(pid)));
            if baseline_fds.is_none() {
                baseline_fds = Some(settled_fds(pid, &load));
            }
        }
        wait_until(at(20), &dp, &mut last_counters, &mut counter_regressions);
    }
    let pid = soak.lbd_pid();
    let final_fds = settled_fds(pid, &load);
    load.stop.store(true, Relaxed);
    tcp.join().expect("TCP load");
    udp.join().expect("UDP load");
    long.join().expect("long-lived load");
    l7::world::join(l7);

    // Attribute the failures.
    let unexplained = |tally: &Tally, l4: bool| -> Vec<String> {
        tally
            .failures
            .lock()
            .expect("failures")
            .iter()
            .filter(|(label, span, _)| {
                if l4 {
                    !timeline.l4_failure_allowed(label, *span)
                } else {
                    !timeline.l7_failure_allowed(*span)
                }
            })
            .map(|(label, span, e)| {
                format!(
                    "{label} at {:.1}-{:.1} s: {e} ({})",
                    (span.start - start).as_secs_f64(),
                    (span.end - start).as_secs_f64(),
                    drops.during(*span)
                )
            })
            .collect()
    };
    let bad_tcp = unexplained(&load.tcp, true);
    let bad_udp = unexplained(&load.udp, true);
    let bad_l7 = unexplained(&load.l7, false);
    let broken = load.long_broken.lock().expect("broken");
    let bad_long: Vec<String> = broken
        .iter()
        .filter(|(_, backend, opened, broken, _)| {
            !timeline.killed_during(backend, *opened, *broken)
        })
        .map(|(label, backend, _, at, e)| {
            format!(
                "{label} on {backend} at {:.1} s: {e}",
                (*at - start).as_secs_f64()
            )
        })
        .collect();
    let (rss_first, rss_last) = (
        rss.first().map_or(0, |r| r.1),
        rss.last().map_or(0, |r| r.1),
    );
    #[expect(clippy::cast_precision_loss, reason = "KiB figures")]
    let growth = if rss_first == 0 {
        0.0
    } else {
        (rss_last as f64 - rss_first as f64) / rss_first as f64
    };
    let baseline_list = baseline_fds.unwrap_or_default();
    let (baseline_fds, final_list) = (baseline_list.len(), final_fds);
    let final_fds = final_list.len();
    let count = |t: &Tally| (t.ok.load(Relaxed), t.failed.load(Relaxed));

    // The summary, then the verdict.
    let rows = [
        (
            "L4 TCP connections (ok, failed)",
            count(&load.tcp),
            bad_tcp.len(),
        ),
        (
            "L4 UDP exchanges (ok, failed)",
            count(&load.udp),
            bad_udp.len(),
        ),
        (
            "L7 HTTPS requests (ok, failed)",
            count(&load.l7),
            bad_l7.len(),
        ),
        (
            "long-lived probes (ok, broken)",
            (load.long_probes.load(Relaxed), broken.len() as u64),
            bad_long.len(),
        ),
    ];
    println!(
        "soak: {minutes} min, {cycles} cycles, {events} scheduled events, {} lbd starts",
        soak.lbd_starts
    );
    println!(
        "{:<34} {:>10} {:>8} {:>12}",
        "traffic", "ok", "failed", "unexplained"
    );
    for (what, (ok, failed), bad) in &rows {
        println!("{what:<34} {ok:>10} {failed:>8} {bad:>12}");
    }
    println!(
        "lbd RSS after warm-up: {rss_first} KiB -> {rss_last} KiB ({:+.1} %), samples {rss:?}",
        growth * 100.0
    );
    println!("lbd open fds (load paused): {baseline_fds} after warm-up, {final_fds} at the end");
    println!(
        "data-plane counter regressions: {}",
        counter_regressions.len()
    );

    let report = serde_json::json!({
        "minutes": minutes,
        "cycles": cycles,
        "events": events,
        "lbd_starts": soak.lbd_starts,
        "traffic": rows.iter().map(|(what, (ok, failed), bad)| serde_json::json!({
            "what": what, "ok": ok, "failed": failed, "unexplained": bad,
        })).collect::<Vec<_>>(),
        "rss_kib": rss.iter().map(|(c, k)| serde_json::json!({"cycle": c, "kib": k})).collect::<Vec<_>>(),
        "rss_growth": growth,
        "fds": { "after_warm_up": baseline_fds, "end": final_fds },
        "counter_regressions": counter_regressions.len(),
    });
    if let Ok(path) = std::env::var("LB_SOAK_RESULTS") {
        if let Some(parent) = Path::new(&path).parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(&path, serde_json::to_string_pretty(&report).expect("JSON"))
            .unwrap_or_else(|e| panic!("writing {path}: {e}"));
        println!("wrote {path}");
    }

    assert!(
        bad_tcp.is_empty(),
        "TCP failures outside a detection window: {bad_tcp:#?}"
    );
    assert!(
        bad_udp.is_empty(),
        "UDP failures outside a detection window: {bad_udp:#?}"
    );
    assert!(
        bad_l7.is_empty(),
        "L7 failures while lbd was up: {bad_l7:#?}"
    );
    assert!(
        bad_long.is_empty(),
        "long-lived connections broken on live backends: {bad_long:#?}"
    );
    assert!(
        growth < RSS_GROWTH_LIMIT,
        "lbd's RSS grew {:.1} % after warm-up: {rss:?}",
        growth * 100.0
    );
    // Each kind of fd at the end, less as many of it as after warm-up.
    let mut extra = final_list.clone();
    for f in &baseline_list {
        if let Some(i) = extra.iter().position(|e| e == f) {
            extra.remove(i);
        }
    }
    assert!(
        final_fds <= baseline_fds + FD_SLACK,
        "lbd holds {final_fds} fds at the end, {baseline_fds} after warm-up; more: {extra:#?}"
    );
    assert!(
        counter_regressions.is_empty(),
        "counters went back: {counter_regressions:?}"
    );
    for (_, (ok, _), _) in &rows {
        assert!(*ok > 0, "a kind of traffic never succeeded: {rows:?}");
    }
}
