//! The fixture every test starts from: namespaces, three tenants with
//! their own CAs and certificates, their backends, and `lbd` serving them
//! on one shared HTTPS address.
//!
//! ```text
//! client c1 (10.77.0.10) --> LB namespace: lbd on 10.77.100.50:443 (on lo)
//!   alpha  alpha.example, api.alpha.example, *.alpha.example (hsts)
//!          pool web = a1, a2 (round robin, no health checks)
//!          pool api = a3: Host api.alpha.example, /v2 (stripped), X-Canary: 1
//!   beta   beta.example: pool web = b1, b2 (HTTP health checks)
//!          (its certificate also covers b.alpha.example, for a test that
//!          gives beta that name under alpha's wildcard)
//!   gamma  gamma.example: pool web = g1
//!          raw.gamma.example, *.raw.gamma.example: passthrough to g2:8443
//!            (g2 terminates TLS with a certificate of its own CA)
//!          pp.gamma.example: passthrough to g2:9443 with PROXY v2
//! ```
//!
//! Dropping a [`World`] stops `lbd` (SIGTERM, its log printed if the test
//! is failing), the backends, removes the pins and the work directory, and
//! deletes the namespaces, in that order, also while a test unwinds.

use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_tests::netns::{Topology, TopologySpec, join_netns, vip_v4};
use rustls::pki_types::CertificateDer;

use super::{
    backend::{Backend, Front},
    certs::{Ca, Leaf},
    client::{Conn, Http},
    daemon::{Lbd, Pins, WorkDir, cleanup_stale},
    metrics,
};

/// The shared HTTPS listener of every tenant.
pub const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(vip_v4(50)), 443);
/// The plain-HTTP address on the same IP, which redirects to HTTPS.
pub const PLAIN: SocketAddr = SocketAddr::new(IpAddr::V4(vip_v4(50)), 80);
/// alpha's `hsts`: its `Strict-Transport-Security` (beta and gamma have
/// none).
pub const ALPHA_HSTS: &str = "max-age=31536000; includeSubDomains";
/// Work directories are `<tmp>/<WORK_PREFIX><topology prefix>`.
const WORK_PREFIX: &str = "lb-l7-";
/// The port of the plain HTTP backends.
const HTTP_PORT: u16 = 8080;
/// g2's TLS port (passthrough without PROXY protocol).
const TLS_PORT: u16 = 8443;
/// g2's PROXY v2 + TLS port.
const PROXY_TLS_PORT: u16 = 9443;
/// `lbd`'s metrics endpoint, inside the LB namespace.
const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
/// How long `lbd` gets to serve every tenant after it starts.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long to wait for an access-log line or a metric.
const LOG_LIMIT: Duration = Duration::from_secs(10);

/// The trust anchors a client may use: each tenant's CA, and the CA of
/// gamma's TLS backend (which `lbd` never sees).
#[derive(Clone)]
pub struct Pki {
    pub alpha: CertificateDer<'static>,
    pub beta: CertificateDer<'static>,
    pub gamma: CertificateDer<'static>,
    pub gamma_backend: CertificateDer<'static>,
}

/// See the module documentation.
pub struct World {
    // Fields drop in this order: lbd first, the namespaces last.
    lbds: Vec<Lbd>,
    backends: BTreeMap<String, Backend>,
    _pins: Pins,
    pub pki: Pki,
    alpha_ca: Ca,
    /// The work directory: the configuration, certificates, logs.
    pub dir: PathBuf,
    _work: WorkDir,
    topo: Topology,
}

impl World {
    /// Builds everything and waits until `lbd` serves every tenant.
    pub fn start() -> World {
        World::start_with(|config| config)
    }

    /// [`World::start`] with `edit` applied to the generated `lb.toml`
    /// text first (extra keys, a `[[listener]]`, other timeouts).
    pub fn start_with(edit: impl FnOnce(String) -> String) -> World {
        let topo = Topology::create(
            &TopologySpec::new()
                .with_clients(1)
                .with_tenant("a", 3)
                .with_tenant("b", 2)
                .with_tenant("g", 2),
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
        .expect("the listen address on the LB's lo");
        cleanup_stale(WORK_PREFIX);
        let dir = std::env::temp_dir().join(format!("{WORK_PREFIX}{}", topo.prefix()));
        std::fs::create_dir_all(&dir).expect("work dir");
        let work = WorkDir(dir.clone());
        let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/{}-lb", topo.prefix())));

        let alpha_ca = Ca::new("alpha");
        let beta_ca = Ca::new("beta");
        let gamma_ca = Ca::new("gamma");
        let gamma_backend_ca = Ca::new("gamma backend");
        alpha_ca
            .issue(&["alpha.example", "*.alpha.example"])
            .write(&dir.join("alpha.pem"), &dir.join("alpha.key"));
        // b.alpha.example too: a name under alpha's wildcard that a test
        // may give beta (tests/hostile.rs), which beta's certificate must
        // then cover. Unused otherwise: SNI b.alpha.example is alpha's.
        beta_ca
            .issue(&["beta.example", "b.alpha.example"])
            .write(&dir.join("beta.pem"), &dir.join("beta.key"));
        gamma_ca
            .issue(&["gamma.example"])
            .write(&dir.join("gamma.pem"), &dir.join("gamma.key"));
        let passthrough_leaf = gamma_backend_ca.issue(&[
            "raw.gamma.example",
            "*.raw.gamma.example",
            "pp.gamma.example",
        ]);
        std::fs::write(dir.join("gamma-backend-ca.pem"), gamma_backend_ca.pem())
            .expect("writing the gamma backends' CA");
        let pki = Pki {
            alpha: alpha_ca.der(),
            beta: beta_ca.der(),
            gamma: gamma_ca.der(),
            gamma_backend: gamma_backend_ca.der(),
        };

        let mut backends = BTreeMap::new();
        for b in topo.backends() {
            let bind = SocketAddr::new(IpAddr::V4(b.v4), HTTP_PORT);
            backends.insert(
                b.name.clone(),
                Backend::start(&b.path(), bind, &b.name, Front::Plain),
            );
        }
        let g2 = topo.backend("g2");
        backends.insert(
            "g2-tls".to_owned(),
            Backend::start(
                &g2.path(),
                SocketAddr::new(IpAddr::V4(g2.v4), TLS_PORT),
                "g2-tls",
                Front::Tls(passthrough_leaf.server_config()),
            ),
        );
        backends.insert(
            "g2-pp".to_owned(),
            Backend::start(
                &g2.path(),
                SocketAddr::new(IpAddr::V4(g2.v4), PROXY_TLS_PORT),
                "g2-pp",
                Front::ProxyV2Tls(passthrough_leaf.server_config()),
            ),
        );

        std::fs::write(dir.join("lb.toml"), edit(config(&topo, &dir, &pins.0))).expect("lb.toml");
        let mut world = World {
            lbds: Vec::new(),
            backends,
            _pins: pins,
            pki,
            alpha_ca,
            dir,
            _work: work,
            topo,
        };
        world.start_lbd();
        world.wait_ready();
        world
    }

    /// Starts an `lbd` with the world's configuration (a second one takes
    /// over from the first); returns its index for [`World::lbd`].
    pub fn start_lbd(&mut self) -> usize {
        self.start_lbd_with_env(&[])
    }

    /// [`World::start_lbd`] with extra environment variables (test hooks).
    pub fn start_lbd_with_env(&mut self, env: &[(&str, &str)]) -> usize {
        let i = self.lbds.len();
        let (ns, config) = (self.topo.lb_path(), self.dir.join("lb.toml"));
        let log = self.dir.join(format!("lbd{i}.log"));
        self.lbds.push(match env {
            [] => Lbd::start(&ns, &config, log),
            env => Lbd::start_with_env(&ns, &config, log, env),
        });
        i
    }

    /// The `i`-th `lbd` started.
    pub fn lbd(&mut self, i: usize) -> &mut Lbd {
        &mut self.lbds[i]
    }

    /// Polls until an HTTPS request to each tenant's host answers 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            for lbd in &mut self.lbds {
                lbd.assert_running();
            }
            let pki = self.pki.clone();
            if self.client(move || serves_every_tenant(pki)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "lbd did not serve every tenant within {READY_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `f` to completion on a new thread inside the client namespace
    /// (a single-threaded runtime, so every socket is the client's).
    pub fn client<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        join(self.spawn_client(f))
    }

    /// Like [`World::client`] without waiting: [`join`] the handle.
    pub fn spawn_client<T, F, Fut>(&self, f: F) -> JoinHandle<anyhow::Result<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        super::spawn_in(&self.topo.client_path(0), f)
    }

    /// Scrapes `lbd`'s metrics (from inside the LB namespace) until
    /// `series` (see [`metrics::value`]) satisfies `pred`; returns its value.
    pub fn wait_for_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + LOG_LIMIT;
        loop {
            let text = super::scrape_in(&self.topo.lb_path(), METRICS);
            let value = metrics::value(&text, series);
            if let Some(v) = value.filter(|v| pred(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {value:?} after {LOG_LIMIT:?}; /metrics:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The LB's fabric address (the source of its backend connections).
    pub fn lb_ip(&self) -> IpAddr {
        IpAddr::V4(self.topo.lb_addr_v4())
    }

    /// The client's address.
    pub fn client_ip(&self) -> IpAddr {
        IpAddr::V4(self.topo.client_addr_v4(0))
    }

    /// The client's namespace, `/run/netns/NAME`, to run a command in with
    /// `nsenter --net=...`.
    #[allow(
        dead_code,
        reason = "only the tests that run a tool there (tls_scan, slow_clients)"
    )]
    pub fn client_netns(&self) -> PathBuf {
        self.topo.client_path(0)
    }

    /// The LB namespace, `/run/netns/NAME` (for `nsenter --net=...`).
    #[allow(dead_code, reason = "only the tests that inspect lbd's sockets")]
    pub fn lb_netns(&self) -> PathBuf {
        self.topo.lb_path()
    }

    /// alpha's CA certificate as PEM, for tools that read trust anchors
    /// from a file.
    #[allow(dead_code, reason = "only tests/tls_scan.rs needs it as a file")]
    pub fn alpha_ca_pem(&self) -> String {
        self.alpha_ca.pem()
    }

    /// A backend's fabric address.
    pub fn backend_addr(&self, name: &str, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.topo.backend(name).v4), port)
    }

    /// Stops a backend's server and closes its connections.
    pub fn stop_backend(&mut self, name: &str) {
        self.backends
            .remove(name)
            .unwrap_or_else(|| panic!("no running backend {name}"))
            .stop();
    }

    /// A new certificate for alpha (same CA and names, new key) and the
    /// files `lbd` serves alpha's certificate from: [`Rotation::apply`]
    /// writes it over them.
    pub fn next_alpha_certificate(&self) -> Rotation {
        Rotation {
            leaf: self.alpha_ca.issue(&["alpha.example", "*.alpha.example"]),
            cert: self.dir.join("alpha.pem"),
            key: self.dir.join("alpha.key"),
        }
    }

    /// Every access-log line so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Polls the access log until a line satisfies `pred`; returns it.
    pub fn wait_for_log(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + LOG_LIMIT;
        loop {
            let lines = self.access_log();
            if let Some(line) = lines.iter().find(|l| pred(l)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line {what} within {LOG_LIMIT:?}; the log:\n{}",
                lines
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A certificate to rotate in (see [`World::next_alpha_certificate`]).
pub struct Rotation {
    pub leaf: Leaf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Rotation {
    /// Writes the new certificate and key over the served files.
    pub fn apply(&self) {
        self.leaf.write(&self.cert, &self.key);
    }
}

/// Waits for a [`World::spawn_client`] thread, turning its panic into ours.
pub fn join<T>(handle: JoinHandle<anyhow::Result<T>>) -> T {
    join_netns(handle).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Every site on the shared listener gets `timeouts` instead of its own:
/// a TLS session runs on its SNI site's timeouts.
#[allow(dead_code, reason = "for the tests that shorten timeouts")]
pub fn timeouts_everywhere(config: &str, timeouts: &str) -> String {
    let listen_line = format!("listen = \"{LISTEN}\"");
    let mut out = String::new();
    for line in config.lines() {
        if line.starts_with("timeouts = ") {
            // alpha's own: replaced below.
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line == listen_line {
            out.push_str(timeouts);
            out.push('\n');
        }
    }
    out
}

/// One request per tenant host; whether all answered 200.
async fn serves_every_tenant(pki: Pki) -> bool {
    for (host, ca) in [
        ("alpha.example", &pki.alpha),
        ("beta.example", &pki.beta),
        ("gamma.example", &pki.gamma),
    ] {
        let Ok(mut conn) = Conn::open(LISTEN, host, ca, Http::H1).await else {
            return false;
        };
        let req = conn.get(host, "/", &[]);
        match conn.send(req).await {
            Ok(reply) if reply.status == http::StatusCode::OK => {}
            _ => return false,
        }
    }
    true
}

/// `lb.toml`: see the module documentation.
#[expect(
    clippy::too_many_lines,
    reason = "the world's whole lb.toml, kept as one document to read"
)]
fn config(topo: &Topology, dir: &std::path::Path, pins: &std::path::Path) -> String {
    let backends = |names: &[&str], port: u16| {
        let list: Vec<String> = names
            .iter()
            .map(|n| format!("{{ address = \"{}\", port = {port} }}", topo.backend(n).v4))
            .collect();
        format!("[ {} ]", list.join(", "))
    };
    format!(
        r#"[node]
interface = "eth0"
xdp_mode = "generic"
pin_path = "{pins}"
state_dir = "{dir}/state"
admin_socket = "{dir}/admin.sock"
metrics_listen = "{METRICS}"
access_log = "{dir}/access.log"
drain_timeout = "5s"

[[tenant]]
name = "alpha"
[[tenant.pool]]
name = "web"
backends = {alpha_web}
balance = "round_robin"
[[tenant.pool]]
name = "api"
backends = {alpha_api}
[[tenant.l7]]
listen = "{LISTEN}"
hosts = ["alpha.example", "api.alpha.example", "*.alpha.example"]
tls = {{ cert = "alpha.pem", key = "alpha.key" }}
routes = [
  {{ host = "api.alpha.example", pool = "api" }},
  {{ path_prefix = "/v2", pool = "api", strip_prefix = true }},
  {{ header = {{ name = "X-Canary", value = "1" }}, pool = "api" }},
  {{ path_prefix = "/", pool = "web" }},
]
retries = 2
timeouts = {{ connect = "1s", header = "5s", idle = "30s", request = "10s" }}
hsts = "{ALPHA_HSTS}"

[[tenant.l7]]
listen = "{PLAIN}"
protocol = "http"
routes = [ {{ path_prefix = "/", pool = "web" }} ]

[[listener]]
address = "{PLAIN}"
redirect_https = true

[[tenant]]
name = "beta"
[[tenant.pool]]
name = "web"
backends = {beta_web}
health = {{ kind = "http", path = "/healthz", interval = "200ms", timeout = "100ms", rise = 1, fall = 1 }}
[[tenant.l7]]
listen = "{LISTEN}"
hosts = ["beta.example"]
tls = {{ cert = "beta.pem", key = "beta.key" }}
routes = [ {{ path_prefix = "/", pool = "web" }} ]

[[tenant]]
name = "gamma"
[[tenant.pool]]
name = "web"
backends = {gamma_web}
[[tenant.pool]]
name = "tls"
backends = {gamma_tls}
[[tenant.pool]]
name = "tls_pp"
backends = {gamma_tls_pp}
proxy_protocol = "v2"
[[tenant.pool]]
name = "secure"
backends = {gamma_tls}
backend_tls = {{ ca = "gamma-backend-ca.pem", server_name = "raw.gamma.example" }}
[[tenant.l7]]
listen = "{LISTEN}"
hosts = ["gamma.example"]
tls = {{ cert = "gamma.pem", key = "gamma.key" }}
routes = [
  {{ path_prefix = "/secure", pool = "secure", strip_prefix = true }},
  {{ path_prefix = "/", pool = "web" }},
]
max_body_bytes = 1024
[[tenant.l7]]
listen = "{LISTEN}"
protocol = "tls_passthrough"
hosts = ["raw.gamma.example", "*.raw.gamma.example"]
pool = "tls"
[[tenant.l7]]
listen = "{LISTEN}"
protocol = "tls_passthrough"
hosts = ["pp.gamma.example"]
pool = "tls_pp"
"#,
        pins = pins.display(),
        dir = dir.display(),
        alpha_web = backends(&["a1", "a2"], HTTP_PORT),
        alpha_api = backends(&["a3"], HTTP_PORT),
        beta_web = backends(&["b1", "b2"], HTTP_PORT),
        gamma_web = backends(&["g1"], HTTP_PORT),
        gamma_tls = backends(&["g2"], TLS_PORT),
        gamma_tls_pp = backends(&["g2"], PROXY_TLS_PORT),
    )
}
