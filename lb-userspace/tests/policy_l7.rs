//! The request policy of `lbd`'s L7 tier, end to end in network
//! namespaces: a client namespace, the LB namespace where `lbd` serves
//! four tenants on one plain-HTTP address (identified by Host, then
//! `X-Tenant-ID`, then a JWT's tenant claim), and one echoing backend per
//! tenant ([`Fixture`] lists the policies).
//!
//! Covered:
//! * `a_flood_gets_429s_while_a_steady_neighbour_gets_everything`: alpha
//!   at 10x its `requests_per_second` gets about its rate through and 429s
//!   (with `Retry-After` and `RateLimit-*`) for the rest, counted in the
//!   access log and `/metrics`, while beta at a steady rate loses nothing.
//! * `credentials_stay_with_their_tenant_and_bad_jwts_get_401`: API keys
//!   and JWTs accepted for their own tenant, refused (403) on another's
//!   routes, also behind a junk credential in the other header or beside
//!   the tenant's own key; two `X-API-Key` or two `Authorization` headers
//!   refused (400); expired, not-yet-valid, wrongly signed and
//!   wrong-audience JWTs refused with 401, `WWW-Authenticate` and the
//!   reason in the log; keys never logged.
//! * `x_tenant_id_and_jwt_identification_need_proof`: a spoofed
//!   `X-Tenant-ID` is refused (403) with or without credentials of another
//!   tenant, accepted with the named tenant's key; a JWT's claim identifies
//!   its tenant only when it verifies.
//! * `a_million_distinct_api_keys_leave_memory_bounded`: a million
//!   requests with distinct API keys against a per-key limit leave `lbd`'s
//!   RSS within a fixed ceiling.
//! * `free_tier_is_shed_before_premium`: with `max_inflight_requests =
//!   20` and slow backends, a free tenant's flood gets 503s while a premium
//!   tenant's requests all succeed.
//! * `connections_over_max_connections_get_429`: a tenant's third
//!   connection over `max_connections = 2` gets 429 and is closed.
//! * `limits_change_on_reload_without_resetting_their_state`: a reload
//!   that raises a tenant's rate and burst keeps the tokens it had spent.
//! * `check_refuses_unreadable_key_files`: `lbd --check` reads the JWT key
//!   files (missing, unusable, then good).
//!
//! Needs root (namespaces, BPF). Every test builds its own fixture and
//! tears it down, also when it fails.

#[path = "common/l7/mod.rs"]
#[expect(
    dead_code,
    reason = "the shared L7 harness: these tests use its backends, daemon guards and metrics \
              scraper, not its three-tenant TLS world"
)]
mod l7;

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use l7::{
    backend::{Backend, Front},
    daemon::{Lbd, Pins, WorkDir},
    metrics,
    world::join,
};
use lb_tests::netns::{Topology, TopologySpec, vip_v4};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;

/// The shared plain-HTTP listener of every tenant.
const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(vip_v4(61)), 80);
/// The backends' port.
const HTTP_PORT: u16 = 8080;
/// `lbd`'s metrics endpoint, inside the LB namespace.
const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
/// How long `lbd` gets to serve after it starts.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long to wait for an access-log line or a metric.
const LOG_LIMIT: Duration = Duration::from_secs(10);

/// alpha's request rate (and burst).
const ALPHA_RPS: u64 = 40;
/// `node.max_inflight_requests`.
const NODE_INFLIGHT: u64 = 20;
/// The JWT audience and issuer alpha accepts.
const AUDIENCE: &str = "api";
const ISSUER: &str = "https://id.alpha.example";

/// Lower-case hex SHA-256.
fn sha256_hex(key: &str) -> String {
    use std::fmt::Write as _;
    Sha256::digest(key.as_bytes())
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Seconds since the epoch.
fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("seconds")
}

/// Namespaces, backends and `lbd` with this configuration:
///
/// ```text
/// client c1 --> lbd on 10.77.100.61:80 (LB's lo), identify = host, header, jwt
///   alpha  standard  alpha.example  requests_per_second = 40
///          API key "ci"; JWTs: ES256 (JWKS), issuer and audience checked
///   beta   premium   beta.example   auth.required: API key "ops" or HS256 JWT
///   gamma  free      gamma.example  requests_per_second_per_api_key = 5, API key "app"
///   delta  standard  delta.example  max_connections = 2
/// node.max_inflight_requests = 20 (free shed from 10, standard from 16)
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
    /// alpha's ES256 signing key (PKCS#8), kid "a1".
    alpha_jwt: EncodingKey,
    /// beta's HS256 secret.
    beta_jwt: EncodingKey,
}

impl Fixture {
    /// Builds everything and waits until `lbd` serves every tenant.
    /// `access_log`: whether `lbd` writes one (the memory test turns it
    /// off: a million lines would only measure the disk).
    fn start(access_log: bool) -> Fixture {
        let topo = Topology::create(
            &TopologySpec::new()
                .with_clients(1)
                .with_tenant("a", 1)
                .with_tenant("b", 1)
                .with_tenant("g", 1)
                .with_tenant("d", 1),
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
        let dir = std::env::temp_dir().join(format!("lb-policy-{}", topo.prefix()));
        std::fs::create_dir_all(&dir).expect("work dir");
        let work = WorkDir(dir.clone());
        let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/{}-lb", topo.prefix())));

        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
        let point = ec.public_key_raw();
        let jwks = json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": "a1", "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]});
        std::fs::write(dir.join("alpha.jwks"), jwks.to_string()).expect("JWKS");
        let secret = b"beta-hs256-secret-of-at-least-32-bytes".to_vec();
        std::fs::write(dir.join("beta.secret"), &secret).expect("secret");

        let backends = topo
            .backends()
            .iter()
            .map(|b| {
                let bind = SocketAddr::new(IpAddr::V4(b.v4), HTTP_PORT);
                Backend::start(&b.path(), bind, &b.name, Front::Plain)
            })
            .collect();
        std::fs::write(
            dir.join("lb.toml"),
            config(&topo, &dir, &pins.0, access_log),
        )
        .expect("lb.toml");
        let lbd = Lbd::start(&topo.lb_path(), &dir.join("lb.toml"), dir.join("lbd.log"));
        let mut f = Fixture {
            lbd,
            _backends: backends,
            _pins: pins,
            dir,
            _work: work,
            topo,
            alpha_jwt: EncodingKey::from_ec_der(&ec.serialize_der()),
            beta_jwt: EncodingKey::from_secret(&secret),
        };
        f.wait_ready();
        f
    }

    /// Polls until a request to alpha answers 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            self.lbd.assert_running();
            let ok = self.client(|| async {
                let Ok(tcp) = TcpStream::connect(LISTEN).await else {
                    return false;
                };
                let Ok(mut h1) = H1::over(tcp).await else {
                    return false;
                };
                h1.get("alpha.example", "/", &[])
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

    /// The value of a series of `lbd`'s `/metrics`.
    fn metric(&self, series: &str) -> Option<f64> {
        let text = l7::scrape_in(&self.topo.lb_path(), METRICS);
        metrics::value(&text, series)
    }

    /// Polls `/metrics` until `series` satisfies `pred`.
    fn wait_for_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + LOG_LIMIT;
        loop {
            let v = self.metric(series);
            if let Some(v) = v.filter(|v| pred(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {v:?} after {LOG_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The access log's text.
    fn access_log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Polls the access log until a line satisfies `pred`; returns it.
    fn wait_for_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LOG_LIMIT;
        loop {
            let text = self.access_log_text();
            let found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| pred(l));
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line {what} within {LOG_LIMIT:?}; the log ends:\n{}",
                &text[text.len().saturating_sub(4000)..]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `lbd`'s pid: the process running it with this fixture's config
    /// (`nsenter` execs `lbd`, so it is the child itself).
    fn lbd_pid(&self) -> u32 {
        let config = self.dir.join("lb.toml");
        let config = config.to_str().expect("UTF-8 path");
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"/lbd"))
                    && args.contains(&config.as_bytes())
            })
            .expect("the lbd process")
    }

    /// An ES256 token of alpha's issuer with `claims` (exp, iss, aud and the
    /// tenant claim default to valid values).
    fn alpha_token(&self, overrides: &Value) -> String {
        let mut claims = json!({
            "tenant": "alpha", "sub": "alice", "iss": ISSUER, "aud": AUDIENCE,
            "exp": unix_now() + 600, "nbf": unix_now() - 10,
        });
        for (k, v) in overrides.as_object().expect("object") {
            claims[k] = v.clone();
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("a1".into());
        jsonwebtoken::encode(&header, &claims, &self.alpha_jwt).expect("signing")
    }

    /// An HS256 token of beta.
    fn beta_token(&self) -> String {
        let claims = json!({ "tenant": "beta", "sub": "bob", "exp": unix_now() + 600 });
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.beta_jwt)
            .expect("signing")
    }
}

/// `lb.toml`: see [`Fixture`].
fn config(topo: &Topology, dir: &std::path::Path, pins: &std::path::Path, log: bool) -> String {
    let backend = |n: &str| {
        format!(
            "[ {{ address = \"{}\", port = {HTTP_PORT} }} ]",
            topo.backend(n).v4
        )
    };
    let access_log = if log {
        format!("{}/access.log", dir.display())
    } else {
        "off".to_owned()
    };
    format!(
        r#"[node]
interface = "eth0"
xdp_mode = "generic"
pin_path = "{pins}"
state_dir = "{dir}/state"
admin_socket = "{dir}/admin.sock"
metrics_listen = "{METRICS}"
access_log = "{access_log}"
drain_timeout = "2s"
max_inflight_requests = {NODE_INFLIGHT}

[[tenant]]
name = "alpha"
[tenant.limits]
requests_per_second = {ALPHA_RPS}
[tenant.auth]
api_keys = [ {{ name = "ci", sha256 = "{alpha_key}" }} ]
jwt = {{ jwks_file = "alpha.jwks", issuer = "{ISSUER}", audience = "{AUDIENCE}", leeway = "5s" }}
[[tenant.pool]]
name = "web"
backends = {a1}
[[tenant.l7]]
listen = "{LISTEN}"
hosts = ["alpha.example"]
routes = [ {{ pool = "web" }} ]

[[tenant]]
name = "beta"
tier = "premium"
[tenant.auth]
required = true
api_keys = [ {{ name = "ops", sha256 = "{beta_key}" }} ]
jwt = {{ hs256_secret_file = "beta.secret" }}
[[tenant.pool]]
name = "web"
backends = {b1}
[[tenant.l7]]
listen = "{LISTEN}"
hosts = ["beta.example"]
routes = [ {{ pool = "web" }} ]

[[tenant]]
name = "gamma"
tier = "free"
[tenant.limits]
requests_per_second_per_api_key = 5
[tenant.auth]
api_keys = [ {{ name = "app", sha256 = "{gamma_key}" }} ]
[[tenant.pool]]
name = "web"
backends = {g1}
[[tenant.l7]]
listen = "{LISTEN}"
hosts = ["gamma.example"]
routes = [ {{ pool = "web" }} ]

[[tenant]]
name = "delta"
[tenant.limits]
max_connections = 2
[[tenant.pool]]
name = "web"
backends = {d1}
[[tenant.l7]]
listen = "{LISTEN}"
hosts = ["delta.example"]
routes = [ {{ pool = "web" }} ]

[[listener]]
address = "{LISTEN}"
identify = ["host", "header", "jwt"]
"#,
        pins = pins.display(),
        dir = dir.display(),
        alpha_key = sha256_hex("alpha-key"),
        beta_key = sha256_hex("beta-key"),
        gamma_key = sha256_hex("gamma-key"),
        a1 = backend("a1"),
        b1 = backend("b1"),
        g1 = backend("g1"),
        d1 = backend("d1"),
    )
}

/// A response, read to the end.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The backend that answered (from its echo), or the proxy's error.
    fn who(&self) -> String {
        let v = self.json();
        v["backend"]
            .as_str()
            .or_else(|| v["error"].as_str())
            .unwrap_or("?")
            .to_owned()
    }
}

fn request(
    version: Version,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Empty<Bytes>> {
    let mut b = match version {
        Version::HTTP_2 => Request::get(format!("http://{host}{path}")).version(Version::HTTP_2),
        _ => Request::get(path).header(http::header::HOST, host),
    };
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Empty::new()).expect("request")
}

async fn read(resp: http::Response<hyper::body::Incoming>) -> hyper::Result<Reply> {
    let (parts, body) = resp.into_parts();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// One plain HTTP/1.1 connection.
struct H1(http1::SendRequest<Empty<Bytes>>);

impl H1 {
    async fn over(tcp: TcpStream) -> hyper::Result<H1> {
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(H1(sender))
    }

    async fn open() -> H1 {
        let tcp = TcpStream::connect(LISTEN).await.expect("connecting");
        H1::over(tcp).await.expect("HTTP/1.1")
    }

    async fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> hyper::Result<Reply> {
        self.0.ready().await?;
        let resp = self
            .0
            .send_request(request(Version::HTTP_11, host, path, headers))
            .await?;
        read(resp).await
    }

    async fn fetch(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.get(host, path, headers)
            .await
            .unwrap_or_else(|e| panic!("GET http://{host}{path}: {e:?}"))
    }
}

/// One plain h2 connection (prior knowledge); cheap to clone, requests
/// multiplexed.
#[derive(Clone)]
struct H2(http2::SendRequest<Empty<Bytes>>);

impl H2 {
    async fn open() -> H2 {
        let tcp = TcpStream::connect(LISTEN).await.expect("connecting");
        tcp.set_nodelay(true).expect("nodelay");
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2");
        tokio::spawn(conn);
        H2(sender)
    }

    async fn fetch(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let got = async {
            self.0.ready().await?;
            let resp = self
                .0
                .send_request(request(Version::HTTP_2, host, path, headers))
                .await?;
            read(resp).await
        }
        .await;
        got.unwrap_or_else(|e| panic!("h2 GET http://{host}{path}: {e:?}"))
    }
}

/// Statuses seen, by code.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    too_many: u64,
    unavailable: u64,
    other: Vec<String>,
}

impl Tally {
    fn add(&mut self, r: &Reply) {
        match r.status {
            StatusCode::OK => self.ok += 1,
            StatusCode::TOO_MANY_REQUESTS => self.too_many += 1,
            StatusCode::SERVICE_UNAVAILABLE => self.unavailable += 1,
            s => self
                .other
                .push(format!("{s} {}", String::from_utf8_lossy(&r.body))),
        }
    }
}

#[test]
fn a_flood_gets_429s_while_a_steady_neighbour_gets_everything() {
    const FLOOD: Duration = Duration::from_secs(3);
    let f = Fixture::start(true);
    let (alpha, beta, elapsed, sample) = f.client(|| async {
        let alpha_conn = H2::open().await;
        let mut beta_conn = H2::open().await;
        let start = Instant::now();
        // alpha: 10x its rate, paced, every request on its own stream.
        let flood = tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_nanos(1_000_000_000 / (10 * ALPHA_RPS)));
            let mut requests = Vec::new();
            while start.elapsed() < FLOOD {
                tick.tick().await;
                let mut c = alpha_conn.clone();
                requests.push(tokio::spawn(async move {
                    c.fetch("alpha.example", "/flood", &[]).await
                }));
            }
            let mut tally = Tally::default();
            let mut sample = None;
            for r in requests {
                let reply = r.await.expect("flood request");
                tally.add(&reply);
                if reply.status == StatusCode::TOO_MANY_REQUESTS && sample.is_none() {
                    sample = Some(reply);
                }
            }
            (tally, sample)
        });
        // beta: a steady 20 requests per second during the flood.
        let mut beta = Tally::default();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while start.elapsed() < FLOOD {
            tick.tick().await;
            let r = beta_conn
                .fetch("beta.example", "/steady", &[("x-api-key", "beta-key")])
                .await;
            beta.add(&r);
        }
        let (alpha, sample) = flood.await.expect("flood task");
        (alpha, beta, start.elapsed(), sample)
    });

    // beta lost nothing.
    assert!(beta.ok >= 40, "beta sent too little: {beta:?}");
    assert_eq!(
        (beta.too_many, beta.unavailable, beta.other.len()),
        (0, 0, 0),
        "beta must not be affected by alpha's flood: {beta:?}"
    );
    // alpha: its burst plus its rate over the flood got through (within
    // a tolerance for the pacing), the excess got 429.
    let sent = alpha.ok + alpha.too_many;
    assert!(alpha.other.is_empty(), "alpha: {alpha:?}");
    assert_eq!(alpha.unavailable, 0, "alpha: {alpha:?}");
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let budget = ALPHA_RPS as f64 * (1.0 + elapsed.as_secs_f64());
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let (ok, sent_f) = (alpha.ok as f64, sent as f64);
    assert!(
        sent_f > 5.0 * budget,
        "the flood was too slow to test anything: {alpha:?} in {elapsed:?}"
    );
    assert!(
        ok <= budget + 5.0 && ok >= 0.7 * budget,
        "alpha got {ok} through, its budget over {elapsed:?} is {budget}: {alpha:?}"
    );
    let sample = sample.expect("a 429");
    assert!(
        sample
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= 1),
        "{sample:?}"
    );
    assert_eq!(sample.header("ratelimit-limit"), Some("40"), "{sample:?}");
    assert_eq!(
        sample.header("ratelimit-remaining"),
        Some("0"),
        "{sample:?}"
    );
    assert!(sample.header("ratelimit-reset").is_some(), "{sample:?}");
    assert_eq!(sample.json()["error"], "rate_limit");

    // Visible per tenant: the access log and /metrics.
    let line = f.wait_for_log("with alpha's rate_limit", |l| {
        l["tenant"] == "alpha" && l["decision"] == "rate_limit"
    });
    assert_eq!(line["status"], 429);
    assert_eq!(line["rule"], "limits.requests_per_second");
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let refused = alpha.too_many as f64;
    f.wait_for_metric(
        "lb_l7_policy_refusals_total{tenant=\"alpha\",reason=\"rate_limit\"}",
        |v| (v - refused).abs() < 0.5,
    );
    assert_eq!(
        f.metric("lb_l7_policy_refusals_total{tenant=\"beta\",reason=\"rate_limit\"}"),
        Some(0.0)
    );
}

/// One request of `credentials_stay_with_their_tenant_and_bad_jwts_get_401`
/// and what it must get.
#[derive(Clone)]
struct Case {
    what: &'static str,
    host: &'static str,
    /// (header, value), sent in this order
    credentials: Vec<(&'static str, String)>,
    status: u16,
    /// The backend that answers, or the refusal's reason.
    who: &'static str,
}

fn case(
    what: &'static str,
    host: &'static str,
    credentials: Vec<(&'static str, String)>,
    status: u16,
    who: &'static str,
) -> Case {
    Case {
        what,
        host,
        credentials,
        status,
        who,
    }
}

/// alpha's token signed by a key that is not alpha's.
fn forged_alpha_token() -> String {
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("a1".into());
    let claims =
        json!({ "tenant": "alpha", "iss": ISSUER, "aud": AUDIENCE, "exp": unix_now() + 600 });
    let key = EncodingKey::from_ec_der(&other.serialize_der());
    jsonwebtoken::encode(&header, &claims, &key).expect("signing")
}

/// The requests of `credentials_stay_with_their_tenant_and_bad_jwts_get_401`;
/// `good` is a valid token of alpha.
fn credential_cases(f: &Fixture, good: &str) -> Vec<Case> {
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    let key = |k: &str| vec![("x-api-key", k.to_owned())];
    let (a, b) = ("alpha.example", "beta.example");
    let cases = vec![
        case("alpha: its key", a, key("alpha-key"), 200, "a1"),
        case("alpha: its JWT", a, bearer(good), 200, "a1"),
        case("alpha: anonymous", a, vec![], 200, "a1"),
        case("beta: its key as bearer", b, bearer("beta-key"), 200, "b1"),
        case("beta: its JWT", b, bearer(&f.beta_token()), 200, "b1"),
        case("beta: nothing", b, vec![], 401, "credentials_missing"),
        case(
            "beta: alpha's key",
            b,
            key("alpha-key"),
            403,
            "foreign_credentials",
        ),
        case(
            "beta: alpha's JWT",
            b,
            bearer(good),
            403,
            "foreign_credentials",
        ),
        case(
            "alpha: beta's key",
            a,
            key("beta-key"),
            403,
            "foreign_credentials",
        ),
        case(
            "alpha: beta's JWT",
            a,
            bearer(&f.beta_token()),
            403,
            "foreign_credentials",
        ),
        case(
            "alpha: a wrong key",
            a,
            key("guess"),
            401,
            "api_key_invalid",
        ),
        case(
            "alpha: expired JWT",
            a,
            bearer(&f.alpha_token(&json!({ "exp": unix_now() - 600 }))),
            401,
            "jwt_expired",
        ),
        case(
            "alpha: not-yet-valid JWT",
            a,
            bearer(&f.alpha_token(&json!({ "nbf": unix_now() + 600 }))),
            401,
            "jwt_not_yet_valid",
        ),
        case(
            "alpha: wrongly signed JWT",
            a,
            bearer(&forged_alpha_token()),
            401,
            "jwt_signature",
        ),
        case(
            "alpha: wrong-audience JWT",
            a,
            bearer(&f.alpha_token(&json!({ "aud": "another-api" }))),
            401,
            "jwt_audience",
        ),
    ];
    cases
}

/// The requests of `credentials_stay_with_their_tenant_and_bad_jwts_get_401`
/// with two credentials: every one counts, a junk one first hides nothing,
/// and two of the same header are refused.
fn mixed_credential_cases(f: &Fixture, good: &str) -> Vec<Case> {
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    let key = |k: &str| vec![("x-api-key", k.to_owned())];
    let (a, b) = ("alpha.example", "beta.example");
    vec![
        case(
            "alpha: a junk key, then beta's key as bearer",
            a,
            [key("junk"), bearer("beta-key")].concat(),
            403,
            "foreign_credentials",
        ),
        case(
            "beta: alpha's key, then a junk bearer",
            b,
            [key("alpha-key"), bearer("junk")].concat(),
            403,
            "foreign_credentials",
        ),
        case(
            "alpha: its key, and beta's JWT",
            a,
            [key("alpha-key"), bearer(&f.beta_token())].concat(),
            403,
            "foreign_credentials",
        ),
        case(
            "alpha: two X-API-Key headers",
            a,
            [key("junk"), key("alpha-key")].concat(),
            400,
            "duplicate_credentials",
        ),
        case(
            "alpha: two Authorization headers",
            a,
            [bearer("junk"), bearer(good)].concat(),
            400,
            "duplicate_credentials",
        ),
    ]
}

#[test]
fn credentials_stay_with_their_tenant_and_bad_jwts_get_401() {
    let f = Fixture::start(true);
    let good = f.alpha_token(&json!({}));
    let mut cases = credential_cases(&f, &good);
    cases.extend(mixed_credential_cases(&f, &good));
    let sent = cases.clone();
    let replies = f.client(move || async move {
        let mut out = Vec::new();
        for (i, c) in sent.iter().enumerate() {
            let request_id = format!("case-{i}");
            let mut headers = vec![("x-request-id", request_id.as_str())];
            headers.extend(c.credentials.iter().map(|(k, v)| (*k, v.as_str())));
            out.push(H1::open().await.fetch(c.host, "/", &headers).await);
        }
        out
    });
    for (i, (c, reply)) in cases.iter().zip(&replies).enumerate() {
        let what = c.what;
        assert_eq!(reply.status.as_u16(), c.status, "{what}: {reply:?}");
        assert_eq!(reply.who(), c.who, "{what}: {reply:?}");
        if c.status == 401 {
            let challenge = reply.header("www-authenticate").unwrap_or_default();
            assert!(challenge.starts_with("Bearer realm="), "{what}: {reply:?}");
            if c.who != "credentials_missing" {
                let described = format!("error_description=\"{}\"", c.who);
                assert!(challenge.contains(&described), "{what}: {challenge}");
            }
        }
        if c.status != 200 {
            // The reason is in the access log, with the request's id.
            let id = format!("case-{i}");
            let line = f.wait_for_log(&format!("for {what}"), |l| l["request_id"] == *id);
            assert_eq!(line["decision"], c.who, "{what}: {line}");
            assert_eq!(line["status"], c.status, "{what}: {line}");
        }
    }
    let line = f.wait_for_log("for alpha's key", |l| l["request_id"] == "case-0");
    assert_eq!(line["auth"], "api_key:ci");
    let line = f.wait_for_log("for alpha's JWT", |l| l["request_id"] == "case-1");
    assert_eq!(line["auth"], "jwt:alice");
    // Keys and tokens are never logged.
    let log = f.access_log_text();
    for secret in ["alpha-key", "beta-key", good.as_str()] {
        assert!(!log.contains(secret), "the access log holds {secret:?}");
    }
}

#[test]
fn x_tenant_id_and_jwt_identification_need_proof() {
    let f = Fixture::start(true);
    let alpha_jwt = f.alpha_token(&json!({}));
    let forged = {
        // alpha's claim, beta's key.
        let claims = json!({ "tenant": "alpha", "exp": unix_now() + 600 });
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &f.beta_jwt).expect("sign")
    };
    let replies = f.client(move || async move {
        // A connection per request: a keep-alive connection stays with the
        // first tenant it served (another tenant's request on it gets 421).
        let ask = async |host: &str, headers: &[(&str, &str)]| {
            H1::open().await.fetch(host, "/", headers).await
        };
        vec![
            // Nothing identifies: 404.
            ask("unknown.example", &[]).await,
            // The header alone is a claim, not proof.
            ask("unknown.example", &[("x-tenant-id", "beta")]).await,
            // Proof of another tenant.
            ask(
                "unknown.example",
                &[("x-tenant-id", "beta"), ("x-api-key", "alpha-key")],
            )
            .await,
            // The named tenant's key: served by beta.
            ask(
                "unknown.example",
                &[("x-tenant-id", "beta"), ("x-api-key", "beta-key")],
            )
            .await,
            // Host says alpha, the header beta: refused whatever the key.
            ask(
                "alpha.example",
                &[("x-tenant-id", "beta"), ("x-api-key", "beta-key")],
            )
            .await,
            // A JWT whose claim names alpha and that verifies: alpha.
            ask(
                "unknown.example",
                &[("authorization", &format!("Bearer {alpha_jwt}"))],
            )
            .await,
            // alpha's claim signed with another key: 401, never alpha.
            ask(
                "unknown.example",
                &[("authorization", &format!("Bearer {forged}"))],
            )
            .await,
        ]
    });
    let got: Vec<(u16, String)> = replies
        .iter()
        .map(|r| (r.status.as_u16(), r.who()))
        .collect();
    assert_eq!(
        got,
        [
            (404, "unknown_host".to_owned()),
            (403, "tenant_unproven".to_owned()),
            (403, "foreign_credentials".to_owned()),
            (200, "b1".to_owned()),
            (403, "tenant_mismatch".to_owned()),
            (200, "a1".to_owned()),
            (401, "jwt_algorithm".to_owned()),
        ],
        "{replies:#?}"
    );
    // The backend sees the tenant lbd decided, not the client's header.
    let echo = replies[3].json();
    assert_eq!(echo["headers"]["x-tenant-id"], json!(["beta"]));
}

/// Requests pipelined per write in [`pipelined_keys`].
const PIPELINE: u64 = 128;

/// Sends GETs to gamma with the API keys `flood-key-{from..to}` over one
/// HTTP/1.1 connection, `PIPELINE` requests per write, and counts the
/// answers: [401, 429, other].
async fn pipelined_keys(from: u64, to: u64) -> [u64; 3] {
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = TcpStream::connect(LISTEN).await.expect("connecting");
    let mut counts = [0; 3];
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut next = from;
    while next < to {
        let batch = (to - next).min(PIPELINE);
        let mut out = String::with_capacity(usize::try_from(batch).expect("small") * 128);
        for i in next..next + batch {
            // A request id of our own spares lbd generating one.
            let _ = write!(
                out,
                "GET / HTTP/1.1\r\nhost: gamma.example\r\nx-api-key: flood-key-{i:08}\r\n\
                 x-request-id: k{i}\r\n\r\n"
            );
        }
        tcp.write_all(out.as_bytes()).await.expect("writing");
        next += batch;
        let mut answered = 0;
        while answered < batch {
            // One whole response at the front of `buf`: head, then a
            // content-length body.
            let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
            let parsed = head_end.and_then(|end| {
                let head = std::str::from_utf8(&buf[..end]).expect("ASCII head");
                let status: u16 = head.get(9..12)?.parse().ok()?;
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))?
                    .parse()
                    .ok()?;
                (buf.len() >= end + 4 + length).then_some((status, end + 4 + length))
            });
            if let Some((status, used)) = parsed {
                counts[match status {
                    401 => 0,
                    429 => 1,
                    _ => 2,
                }] += 1;
                buf.drain(..used);
                answered += 1;
            } else {
                let n = tcp.read_buf(&mut buf).await.expect("reading");
                assert!(
                    n > 0,
                    "lbd closed the connection after {answered} of {batch}"
                );
            }
        }
    }
    counts
}

#[test]
fn a_million_distinct_api_keys_leave_memory_bounded() {
    const KEYS: u64 = 1_000_000;
    const WARM_UP: u64 = 20_000;
    const CONNECTIONS: u64 = 4;
    /// Growth allowed from the warmed-up RSS. The keyed table is 128 KiB
    /// whatever the number of keys; a map holding a million keys (about 40
    /// bytes each, plus its buckets) would need far more than this.
    const GROWTH_CEILING_KIB: u64 = 16 * 1024;
    let f = Fixture::start(false);
    let pid = f.lbd_pid();
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .expect("VmRSS")
    };
    // Every request carries a new key: the per-key bucket admits it (a new
    // key's bucket is full), then authentication refuses it (401).
    let run = |from: u64, to: u64| {
        f.client(move || async move {
            let per = (to - from).div_ceil(CONNECTIONS);
            let tasks: Vec<_> = (0..CONNECTIONS)
                .map(|c| {
                    let start = from + c * per;
                    tokio::spawn(pipelined_keys(start, (start + per).min(to)))
                })
                .collect();
            let mut total = [0; 3];
            for t in tasks {
                let counts = t.await.expect("connection task");
                for (sum, n) in total.iter_mut().zip(counts) {
                    *sum += n;
                }
            }
            total
        })
    };
    let warm = run(0, WARM_UP);
    assert_eq!(warm[2], 0, "only 401s and 429s: {warm:?}");
    let before = rss();
    let started = Instant::now();
    let flood = run(WARM_UP, WARM_UP + KEYS);
    let took = started.elapsed();
    let after = rss();
    eprintln!(
        "a million keys in {took:?}: lbd RSS {before} kB -> {after} kB ({:+} kB); 401/429/other {flood:?}",
        i128::from(after) - i128::from(before)
    );
    assert_eq!(flood.iter().sum::<u64>(), KEYS);
    assert_eq!(flood[2], 0, "only 401s and 429s: {flood:?}");
    assert!(
        flood[0] > KEYS / 2,
        "most new keys get a full bucket, then 401: {flood:?}"
    );
    assert!(
        after <= before + GROWTH_CEILING_KIB,
        "lbd's RSS grew from {before} kB to {after} kB over a million keys (ceiling +{GROWTH_CEILING_KIB} kB)"
    );
    // gamma's own key still works after the flood.
    let reply = f.client(|| async {
        H1::open()
            .await
            .fetch("gamma.example", "/", &[("x-api-key", "gamma-key")])
            .await
    });
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

#[test]
fn free_tier_is_shed_before_premium() {
    const RUN: Duration = Duration::from_secs(3);
    const FREE_WORKERS: usize = 40;
    const PREMIUM_WORKERS: usize = 4;
    let f = Fixture::start(true);
    let (free, premium) = f.client(|| async {
        let free_conn = H2::open().await;
        let premium_conn = H2::open().await;
        let start = Instant::now();
        let worker = |mut c: H2, host: &'static str, key: Option<&'static str>| {
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while start.elapsed() < RUN {
                    let headers: Vec<(&str, &str)> =
                        key.iter().map(|k| ("x-api-key", *k)).collect();
                    let r = c.fetch(host, "/delay/200", &headers).await;
                    tally.add(&r);
                    if r.status != StatusCode::OK {
                        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
                        // Back off a little instead of spinning on 503s.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                tally
            })
        };
        let free: Vec<_> = (0..FREE_WORKERS)
            .map(|_| worker(free_conn.clone(), "gamma.example", None))
            .collect();
        let premium: Vec<_> = (0..PREMIUM_WORKERS)
            .map(|_| worker(premium_conn.clone(), "beta.example", Some("beta-key")))
            .collect();
        let mut totals = (Tally::default(), Tally::default());
        for (tasks, total) in [(free, &mut totals.0), (premium, &mut totals.1)] {
            for t in tasks {
                let t = t.await.expect("worker");
                total.ok += t.ok;
                total.too_many += t.too_many;
                total.unavailable += t.unavailable;
                total.other.extend(t.other);
            }
        }
        totals
    });
    assert!(
        premium.ok >= 20,
        "premium made too few requests to test: {premium:?}"
    );
    assert_eq!(
        (premium.unavailable, premium.too_many, premium.other.len()),
        (0, 0, 0),
        "premium must never be shed: {premium:?}"
    );
    assert!(free.unavailable > 0, "free was never shed: {free:?}");
    assert!(free.ok > 0, "free keeps its share: {free:?}");
    assert_eq!((free.too_many, free.other.len()), (0, 0), "{free:?}");
    let line = f.wait_for_log("of gamma shed", |l| {
        l["tenant"] == "gamma" && l["decision"] == "shed"
    });
    assert_eq!(line["status"], 503);
    assert!(
        line["rule"]
            .as_str()
            .is_some_and(|r| r.contains("free tier: 10 of 20")),
        "{line}"
    );
    f.wait_for_metric(
        "lb_l7_policy_refusals_total{tenant=\"gamma\",reason=\"shed\"}",
        |v| v >= 1.0,
    );
}

#[test]
fn connections_over_max_connections_get_429() {
    let f = Fixture::start(true);
    let (first, third, fourth) = f.client(|| async {
        let mut one = H1::open().await;
        let mut two = H1::open().await;
        let mut three = H1::open().await;
        let first = (
            one.fetch("delta.example", "/", &[]).await.status,
            two.fetch("delta.example", "/", &[]).await.status,
        );
        // The third connection is over the limit: 429, and closed.
        let third = three.fetch("delta.example", "/", &[]).await;
        let closed = three.get("delta.example", "/", &[]).await.is_err();
        // Once the first one closes, a new connection gets its place (the
        // server notices the close asynchronously: poll, bounded).
        drop(one);
        let deadline = Instant::now() + Duration::from_secs(5);
        let fourth = loop {
            let r = H1::open().await.fetch("delta.example", "/", &[]).await;
            if r.status == StatusCode::OK || Instant::now() > deadline {
                break r.status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (first, (third, closed), fourth)
    });
    assert_eq!(first, (StatusCode::OK, StatusCode::OK));
    let (third, closed) = third;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS, "{third:?}");
    assert_eq!(third.who(), "connection_limit");
    assert_eq!(third.header("connection"), Some("close"));
    assert!(closed, "the connection over the limit is closed");
    assert_eq!(fourth, StatusCode::OK);
    f.wait_for_log("of delta's connection_limit", |l| {
        l["tenant"] == "delta" && l["decision"] == "connection_limit" && l["status"] == 429
    });
}

impl Fixture {
    /// Rewrites alpha's limits in `lb.toml` (`lbd` reloads on the write)
    /// and waits until the reload is done.
    fn set_alpha_limits(&self, limits: &str) {
        let path = self.dir.join("lb.toml");
        let text = std::fs::read_to_string(&path).expect("lb.toml");
        let start = text.find("[tenant.limits]\n").expect("alpha's limits") + 16;
        let end = start + text[start..].find("[tenant.auth]").expect("alpha's auth");
        let before = self.metric("lb_reloads_total").unwrap_or(0.0);
        let new = format!("{}{limits}\n{}", &text[..start], &text[end..]);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, new).expect("writing lb.toml");
        std::fs::rename(&tmp, &path).expect("replacing lb.toml");
        self.wait_for_metric("lb_reloads_total", |n| n > before);
        self.wait_for_metric("lb_last_reload_success", |ok| ok > 0.5);
    }
}

#[test]
fn limits_change_on_reload_without_resetting_their_state() {
    /// Sends `n` requests to alpha back to back (not at once: that would
    /// cross the node's shedding threshold); returns (200s, 429s).
    fn burst(f: &Fixture, n: usize) -> (usize, usize) {
        f.client(move || async move {
            let mut conn = H2::open().await;
            let (mut ok, mut limited) = (0, 0);
            for _ in 0..n {
                match conn.fetch("alpha.example", "/", &[]).await.status {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => limited += 1,
                    s => panic!("unexpected {s}"),
                }
            }
            (ok, limited)
        })
    }
    let f = Fixture::start(true);
    // A slow rate, a bucket of 20: the full bucket (40) is clamped to 20.
    f.set_alpha_limits("requests_per_second = 1\nrequests_burst = 20");
    let (ok, _) = burst(&f, 30);
    assert!((20..=22).contains(&ok), "{ok} of 30 with a bucket of 20");
    // A bigger rate and bucket: the tokens alpha has (about none) stay;
    // a reset would admit 30 at once.
    f.set_alpha_limits("requests_per_second = 2\nrequests_burst = 30");
    let (ok, limited) = burst(&f, 10);
    assert!(
        ok <= 4 && limited >= 6,
        "{ok} of 10 admitted right after the reload: the bucket was reset"
    );
    // And the new rate applies: about 2 per second from now on.
    let line = f.wait_for_log("of alpha limited after the reload", |l| {
        l["tenant"] == "alpha" && l["decision"] == "rate_limit"
    });
    assert_eq!(line["rule"], "limits.requests_per_second");
}

#[test]
fn check_refuses_unreadable_key_files() {
    let dir = std::env::temp_dir().join(format!("lb-policy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let _work = WorkDir(dir.clone());
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        "[node]\ninterface = \"eth0\"\n[[tenant]]\nname = \"acme\"\n[tenant.auth]\n\
         jwt = { jwks_file = \"keys.json\" }\n",
    )
    .expect("lb.toml");
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lbd"))
            .arg("--config")
            .arg(&config)
            .arg("--check")
            .output()
            .expect("running lbd --check")
    };
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tenant \"acme\" auth.jwt") && err.contains("keys.json"),
        "{err}"
    );
    std::fs::write(
        dir.join("keys.json"),
        r#"{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}"#,
    )
    .expect("keys.json");
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 32"),
        "{out:?}"
    );
    let key = URL_SAFE_NO_PAD.encode(b"a-secret-of-at-least-thirty-two-bytes");
    std::fs::write(
        dir.join("keys.json"),
        format!(r#"{{"keys":[{{"kty":"oct","k":"{key}"}}]}}"#),
    )
    .expect("keys.json");
    let out = check();
    assert!(out.status.success(), "{out:?}");
}
