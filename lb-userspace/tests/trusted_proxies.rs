//! A listener's `trusted_proxies` and `proxy_protocol = "v2"`, end to end
//! in network namespaces: the client namespace plays the proxy in front of
//! `lbd` ([`Fixture`] lists the listeners).
//!
//! Covered:
//! * `a_trusted_proxy_s_proxy_header_sets_the_client`: a PROXY v2 header
//!   naming 192.0.2.77, then plain HTTP or TLS: the backend's
//!   `X-Forwarded-For` ends in 192.0.2.77 (after the proxy's own list), the
//!   access log's client is 192.0.2.77, and a tenant whose ACL denies
//!   192.0.2.77 answers 403; LOCAL keeps the peer's address.
//! * `a_trusted_peer_without_a_header_is_closed`: plain HTTP or TLS straight
//!   away from a trusted peer is closed, counted and logged
//!   (`bad_proxy_header`).
//! * `an_untrusted_client_cannot_change_its_address`: without
//!   `trusted_proxies` a client's `X-Forwarded-For` is replaced, and a
//!   PROXY header it sends is a bad request; a trusted peer's
//!   `X-Forwarded-For` is extended.
//!
//! Needs root (namespaces, BPF). Every test builds its own fixture and
//! tears it down, also when it fails.

#[path = "common/l7/mod.rs"]
#[expect(
    dead_code,
    reason = "the shared L7 harness: these tests use its backends, certificates and daemon \
              guards, not its three-tenant world"
)]
mod l7;

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use l7::{
    backend::{Backend, Front},
    certs::{Ca, client_config},
    daemon::{Lbd, Pins, WorkDir},
    metrics,
    world::join,
};
use lb::l7::proxy_v2_header;
use lb_tests::netns::{Topology, TopologySpec, vip_v4};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

/// The LB's address for every listener.
const LB_IP: IpAddr = IpAddr::V4(vip_v4(70));
/// Plain HTTP; the client is trusted and must send a PROXY v2 header.
const PP_HTTP: SocketAddr = SocketAddr::new(LB_IP, 80);
/// HTTPS; the client is trusted and must send a PROXY v2 header.
const PP_TLS: SocketAddr = SocketAddr::new(LB_IP, 443);
/// Plain HTTP; the client is trusted, no PROXY protocol.
const TRUSTED: SocketAddr = SocketAddr::new(LB_IP, 8080);
/// Plain HTTP without `trusted_proxies`.
const UNTRUSTED: SocketAddr = SocketAddr::new(LB_IP, 8081);
/// The client address the PROXY headers claim.
const PROXIED: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));
/// The backends' port.
const HTTP_PORT: u16 = 8080;
/// `lbd`'s metrics endpoint, inside the LB namespace.
const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
/// How long `lbd` gets to serve after it starts.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long to wait for an access-log line, a metric or an answer.
const LIMIT: Duration = Duration::from_secs(10);

/// Namespaces, backends and `lbd` with this configuration:
///
/// ```text
/// client c1 (the "proxy") --> lbd on 10.77.100.70 (LB's lo)
///   :80    http   trusted_proxies = [c1], proxy_protocol = "v2"
///   :443   https  trusted_proxies = [c1], proxy_protocol = "v2"
///   :8080  http   trusted_proxies = [c1]
///   :8081  http   (nothing trusted)
///   alpha  [pp.|trusted.|untrusted.]alpha.example on :80, :8080, :8081,
///          alpha.example (TLS) on :443: pool web = a1
///   beta   beta.example on :80, acl.deny = ["192.0.2.77"]: pool web = b1
/// ```
///
/// Dropping it stops `lbd`, the backends, removes the pins and the work
/// directory, and deletes the namespaces, in that order.
struct Fixture {
    lbd: Lbd,
    _backends: Vec<Backend>,
    _pins: Pins,
    dir: PathBuf,
    _work: WorkDir,
    topo: Topology,
    /// alpha's CA (the client's trust anchor on :443).
    alpha_ca: CertificateDer<'static>,
}

impl Fixture {
    /// Builds everything and waits until `lbd` serves every listener.
    fn start() -> Fixture {
        let topo = Topology::create(
            &TopologySpec::new()
                .with_clients(1)
                .with_tenant("a", 1)
                .with_tenant("b", 1),
        )
        .expect("topology");
        topo.run_ok(
            topo.lb_ns(),
            &["ip", "addr", "add", &format!("{LB_IP}/32"), "dev", "lo"],
        )
        .expect("the listen address on the LB's lo");
        let dir = std::env::temp_dir().join(format!("lb-proxies-{}", topo.prefix()));
        std::fs::create_dir_all(&dir).expect("work dir");
        let work = WorkDir(dir.clone());
        let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/{}-lb", topo.prefix())));
        let ca = Ca::new("alpha");
        ca.issue(&["alpha.example"])
            .write(&dir.join("alpha.pem"), &dir.join("alpha.key"));
        let backends = topo
            .backends()
            .iter()
            .map(|b| {
                let bind = SocketAddr::new(IpAddr::V4(b.v4), HTTP_PORT);
                Backend::start(&b.path(), bind, &b.name, Front::Plain)
            })
            .collect();
        std::fs::write(dir.join("lb.toml"), config(&topo, &dir, &pins.0)).expect("lb.toml");
        let lbd = Lbd::start(&topo.lb_path(), &dir.join("lb.toml"), dir.join("lbd.log"));
        let mut f = Fixture {
            lbd,
            _backends: backends,
            _pins: pins,
            dir,
            _work: work,
            topo,
            alpha_ca: ca.der(),
        };
        f.wait_ready();
        f
    }

    /// Polls until alpha answers 200 on the listener that trusts no one.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            self.lbd.assert_running();
            let ok = self.client(|| async {
                let Ok(tcp) = TcpStream::connect(UNTRUSTED).await else {
                    return false;
                };
                get(tcp, "untrusted.alpha.example", &[])
                    .await
                    .is_ok_and(|r| r.status == StatusCode::OK)
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "lbd did not serve within {READY_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `f` on a new thread inside the client namespace, on a
    /// single-threaded runtime.
    fn client<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        join(l7::spawn_in(&self.topo.client_path(0), f))
    }

    /// The client namespace's address (the "proxy").
    fn client_ip(&self) -> IpAddr {
        IpAddr::V4(self.topo.client_addr_v4(0))
    }

    /// Polls `/metrics` until `series` satisfies `pred`.
    fn wait_for_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let text = l7::scrape_in(&self.topo.lb_path(), METRICS);
            let v = metrics::value(&text, series);
            if let Some(v) = v.filter(|v| pred(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {v:?} after {LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls the access log until a line satisfies `pred`; returns it.
    fn wait_for_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            let found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| pred(l));
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line {what} within {LIMIT:?}; the log ends:\n{}",
                &text[text.len().saturating_sub(4000)..]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The access-log line of the request with this `X-Request-ID`.
    fn log_of(&self, request_id: &str) -> Value {
        self.wait_for_log(&format!("for request {request_id}"), |l| {
            l["request_id"] == request_id
        })
    }
}

/// `lb.toml`: see [`Fixture`].
fn config(topo: &Topology, dir: &std::path::Path, pins: &std::path::Path) -> String {
    let backend = |n: &str| {
        format!(
            "[ {{ address = \"{}\", port = {HTTP_PORT} }} ]",
            topo.backend(n).v4
        )
    };
    let client = topo.client_addr_v4(0);
    format!(
        r#"[node]
interface = "eth0"
xdp_mode = "generic"
pin_path = "{pins}"
state_dir = "{dir}/state"
admin_socket = "{dir}/admin.sock"
metrics_listen = "{METRICS}"
access_log = "{dir}/access.log"
drain_timeout = "2s"

[[tenant]]
name = "alpha"
[[tenant.pool]]
name = "web"
backends = {a1}
[[tenant.l7]]
listen = "{PP_HTTP}"
hosts = ["pp.alpha.example"]
routes = [ {{ pool = "web" }} ]
timeouts = {{ header = "2s" }}
[[tenant.l7]]
listen = "{PP_TLS}"
hosts = ["alpha.example"]
tls = {{ cert = "alpha.pem", key = "alpha.key" }}
routes = [ {{ pool = "web" }} ]
timeouts = {{ header = "2s" }}
[[tenant.l7]]
listen = "{TRUSTED}"
hosts = ["trusted.alpha.example"]
routes = [ {{ pool = "web" }} ]
[[tenant.l7]]
listen = "{UNTRUSTED}"
hosts = ["untrusted.alpha.example"]
routes = [ {{ pool = "web" }} ]

[[tenant]]
name = "beta"
[tenant.acl]
deny = ["{PROXIED}"]
[[tenant.pool]]
name = "web"
backends = {b1}
[[tenant.l7]]
listen = "{PP_HTTP}"
hosts = ["beta.example"]
routes = [ {{ pool = "web" }} ]
timeouts = {{ header = "2s" }}

[[listener]]
address = "{PP_HTTP}"
trusted_proxies = ["{client}/32"]
proxy_protocol = "v2"

[[listener]]
address = "{PP_TLS}"
trusted_proxies = ["{client}"]
proxy_protocol = "v2"

[[listener]]
address = "{TRUSTED}"
trusted_proxies = ["{client}/32"]
"#,
        pins = pins.display(),
        dir = dir.display(),
        a1 = backend("a1"),
        b1 = backend("b1"),
    )
}

/// A response, read to the end.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The values of request header `name` as the backend received it.
    fn seen(&self, name: &str) -> Vec<String> {
        assert_eq!(self.status, StatusCode::OK, "{}", self.json());
        l7::client::echoed(&self.json(), name)
    }
}

/// One HTTP/1.1 GET of `/` on `io`.
async fn get<S>(io: S, host: &str, headers: &[(&str, &str)]) -> hyper::Result<Reply>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let mut req = Request::get("/").header(http::header::HOST, host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
        .await?;
    let (parts, body) = resp.into_parts();
    Ok(Reply {
        status: parts.status,
        body: body.collect().await?.to_bytes(),
    })
}

/// A connection to `to` that starts with `header`.
async fn connect_with(to: SocketAddr, header: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(to).await.expect("connecting");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.write_all(header).await.expect("the PROXY header");
    tcp
}

/// TLS for alpha.example over `tcp`, trusting `ca`.
async fn tls(
    tcp: TcpStream,
    ca: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from("alpha.example").expect("name");
    tokio_rustls::TlsConnector::from(client_config(ca, &[b"http/1.1"]))
        .connect(name, tcp)
        .await
}

/// Sends `bytes` on a new connection to `to` and reads until the server
/// closes (bounded by [`LIMIT`]); returns what it answered.
async fn raw_exchange(to: SocketAddr, bytes: Vec<u8>) -> Vec<u8> {
    let mut tcp = connect_with(to, &bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(LIMIT, async {
        let mut buf = [0; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server did not close within {LIMIT:?}");
    answer
}

#[test]
fn a_trusted_proxy_s_proxy_header_sets_the_client() {
    let f = Fixture::start();
    let proxied = SocketAddr::new(PROXIED, 40000);

    // Plain HTTP: the header's source is the client; the proxy's own list
    // is kept in front of it.
    let header = proxy_v2_header(proxied, PP_HTTP);
    let r = f.client(move || async move {
        let tcp = connect_with(PP_HTTP, &header).await;
        get(
            tcp,
            "pp.alpha.example",
            &[
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Request-ID", "pp-http-1"),
            ],
        )
        .await
        .expect("an answer")
    });
    assert_eq!(r.seen("x-forwarded-for"), ["203.0.113.9, 192.0.2.77"]);
    let line = f.log_of("pp-http-1");
    assert_eq!(line["client"], "192.0.2.77:40000", "{line}");
    assert_eq!(line["decision"], "route", "{line}");

    // TLS: the header comes before the ClientHello.
    let header = proxy_v2_header(proxied, PP_TLS);
    let ca = f.alpha_ca.clone();
    let r = f.client(move || async move {
        let tcp = connect_with(PP_TLS, &header).await;
        let tls = tls(tcp, &ca).await.expect("TLS after the PROXY header");
        get(tls, "alpha.example", &[("X-Request-ID", "pp-tls-1")])
            .await
            .expect("an answer")
    });
    assert_eq!(r.seen("x-forwarded-for"), ["192.0.2.77"]);
    let line = f.log_of("pp-tls-1");
    assert_eq!(line["client"], "192.0.2.77:40000", "{line}");
    assert_eq!(line["tenant"], "alpha", "{line}");

    // beta's ACL denies 192.0.2.77: judged on the header's source, not on
    // the peer (which beta's ACL allows).
    let header = proxy_v2_header(proxied, PP_HTTP);
    let r = f.client(move || async move {
        let tcp = connect_with(PP_HTTP, &header).await;
        get(tcp, "beta.example", &[("X-Request-ID", "pp-acl-1")])
            .await
            .expect("an answer")
    });
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json());
    assert_eq!(r.json()["error"], "acl_denied");
    let line = f.log_of("pp-acl-1");
    assert_eq!(line["client"], "192.0.2.77:40000", "{line}");
    let other = proxy_v2_header(SocketAddr::new([192, 0, 2, 78].into(), 40000), PP_HTTP);
    let r = f.client(move || async move {
        let tcp = connect_with(PP_HTTP, &other).await;
        get(tcp, "beta.example", &[]).await.expect("an answer")
    });
    assert_eq!(
        r.seen("x-forwarded-for"),
        ["192.0.2.78"],
        "another source passes"
    );

    // LOCAL: the peer's own address stands.
    let mut local = proxy_v2_header(proxied, PP_HTTP)[..16].to_vec();
    local[12] = 0x20;
    local[13] = 0x00;
    local[14..16].copy_from_slice(&[0, 0]);
    let r = f.client(move || async move {
        let tcp = connect_with(PP_HTTP, &local).await;
        get(tcp, "pp.alpha.example", &[]).await.expect("an answer")
    });
    assert_eq!(r.seen("x-forwarded-for"), [f.client_ip().to_string()]);
}

#[test]
fn a_trusted_peer_without_a_header_is_closed() {
    let f = Fixture::start();
    let answer = f.client(|| {
        raw_exchange(
            PP_HTTP,
            b"GET / HTTP/1.1\r\nHost: pp.alpha.example\r\nX-Request-ID: no-header\r\n\r\n".to_vec(),
        )
    });
    assert!(
        answer.is_empty(),
        "closed without an answer, got: {}",
        String::from_utf8_lossy(&answer)
    );
    let ca = f.alpha_ca.clone();
    let handshake = f.client(move || async move {
        let tcp = TcpStream::connect(PP_TLS).await.expect("connecting");
        tls(tcp, &ca).await.map(drop)
    });
    assert!(handshake.is_err(), "TLS without a PROXY header must fail");

    let series =
        |l: SocketAddr| format!("lb_l7_listener_bad_proxy_headers_total{{listener=\"{l}\"}}");
    f.wait_for_metric(&series(PP_HTTP), |v| v >= 1.0);
    f.wait_for_metric(&series(PP_TLS), |v| v >= 1.0);
    let client = f.client_ip().to_string();
    let line = f.wait_for_log("bad_proxy_header on :80", |l| {
        l["decision"] == "bad_proxy_header" && l["listener"] == PP_HTTP.to_string()
    });
    let logged = line["client"].as_str().unwrap_or_default();
    assert!(logged.starts_with(&format!("{client}:")), "{line}");
    assert!(
        line["rule"]
            .as_str()
            .is_some_and(|r| r.contains("no PROXY protocol v2 signature")),
        "{line}"
    );
    assert!(
        !std::fs::read_to_string(f.dir.join("access.log"))
            .unwrap_or_default()
            .contains("\"no-header\""),
        "the request never reached the proxy"
    );
}

#[test]
fn an_untrusted_client_cannot_change_its_address() {
    let f = Fixture::start();
    let client = f.client_ip().to_string();

    // No trusted_proxies: the client's X-Forwarded-For is replaced.
    let r = f.client(|| async {
        let tcp = TcpStream::connect(UNTRUSTED).await.expect("connecting");
        get(
            tcp,
            "untrusted.alpha.example",
            &[
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-For", "198.51.100.1"),
            ],
        )
        .await
        .expect("an answer")
    });
    assert_eq!(r.seen("x-forwarded-for"), [client.as_str()], "replaced");

    // A PROXY header sent there is just a bad request.
    let mut bytes = proxy_v2_header(SocketAddr::new(PROXIED, 40000), UNTRUSTED);
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: untrusted.alpha.example\r\n\r\n");
    let answer = f.client(move || raw_exchange(UNTRUSTED, bytes));
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains(" 200 "), "served: {answer}");
    assert!(!answer.contains("192.0.2.77"), "{answer}");

    // Trusted without proxy_protocol: the client's list is extended with
    // its own address, and a PROXY header is a bad request too.
    let r = f.client(|| async {
        let tcp = TcpStream::connect(TRUSTED).await.expect("connecting");
        get(
            tcp,
            "trusted.alpha.example",
            &[("X-Forwarded-For", "203.0.113.9")],
        )
        .await
        .expect("an answer")
    });
    assert_eq!(
        r.seen("x-forwarded-for"),
        [format!("203.0.113.9, {client}")],
        "extended"
    );
    let mut bytes = proxy_v2_header(SocketAddr::new(PROXIED, 40000), TRUSTED);
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: trusted.alpha.example\r\n\r\n");
    let answer = f.client(move || raw_exchange(TRUSTED, bytes));
    assert!(
        !String::from_utf8_lossy(&answer).contains(" 200 "),
        "no PROXY protocol on this listener"
    );
    assert!(
        !std::fs::read_to_string(f.dir.join("access.log"))
            .unwrap_or_default()
            .contains("192.0.2.77"),
        "no client ever became 192.0.2.77"
    );
}
