//! The load: wrk (HTTP/1.1 keep-alive) and h2load (h2 keep-alive) as
//! child processes, and the bench's own rustls clients for what those
//! tools cannot do: new connections with full handshakes (wrk resumes TLS
//! sessions when it reconnects, h2load keeps its connections), the idle
//! connections, and the check that each tenant gets its own certificate.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, header::HOST};
use hyper_util::rt::TokioIo;
use lb_tests::netns::{enter_netns_current_thread, pin_thread};
use rustls::{
    ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
};
use tokio_rustls::TlsConnector;

use crate::proxies::Tenant;

/// Where the load comes from: the generator's namespace and CPU, and the
/// proxy's address.
#[derive(Clone, Debug)]
pub struct Gen {
    /// Namespace name (for `ip netns exec`, which also gives wrk the
    /// tenants' names in `/etc/netns/NAME/hosts`).
    pub ns: String,
    pub ns_path: PathBuf,
    pub cpu: usize,
    pub target: SocketAddr,
}

/// Every connect, handshake and read of the bench's clients.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---- wrk and h2load ----

/// One wrk or h2load run against one tenant.
#[derive(Clone, Debug, Default)]
pub struct ToolRun {
    pub tenant: &'static str,
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors, timeouts, failed or non-2xx responses.
    pub errors: u64,
    /// h2load's negotiated protocol ("h2"); wrk: "http/1.1".
    pub protocol: String,
}

/// Starts wrk (one thread, `conns` keep-alive connections) against the
/// tenant's host for `secs` seconds, pinned to the generator CPU.
pub fn spawn_wrk(g: &Gen, host: &str, conns: usize, secs: u64) -> Result<Child> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &g.ns, "wrk", "-t1"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "5s", "--latency"])
        .arg(format!("https://{host}/"));
    spawn_tool(cmd, g.cpu)
}

/// Starts h2load (one thread, `conns` h2 connections of `streams`
/// concurrent streams each) for `secs` seconds, logging every request's
/// latency to `log`.
pub fn spawn_h2load(
    g: &Gen,
    host: &str,
    conns: usize,
    streams: usize,
    secs: u64,
    log: &Path,
) -> Result<Child> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &g.ns, "h2load", "-t1"])
        .arg(format!("-c{conns}"))
        .arg(format!("-m{streams}"))
        .arg(format!("-D{secs}"))
        .arg(format!("--connect-to={}", g.target))
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("https://{host}/"));
    spawn_tool(cmd, g.cpu)
}

fn spawn_tool(mut cmd: Command, cpu: usize) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::proxies::confine(&mut cmd, cpu);
    cmd.spawn().with_context(|| format!("starting {cmd:?}"))
}

/// Waits for a tool, at most `limit`, and returns its stdout.
pub fn finish(child: Child, what: &str, limit: Duration) -> Result<String> {
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(limit) else {
        // SAFETY: our own child, still unreaped (its waiter is blocked).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        bail!("{what} did not finish within {limit:?}");
    };
    let out = out.with_context(|| format!("waiting for {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// `1.23ms`, `456.00us`, `2.01s`, `1.5m` in milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Parses wrk's report (with `--latency`).
pub fn parse_wrk(tenant: &'static str, text: &str) -> Result<ToolRun> {
    let mut r = ToolRun {
        tenant,
        protocol: "http/1.1".into(),
        ..ToolRun::default()
    };
    let mut p50 = None;
    let mut p99 = None;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("50%") {
            p50 = duration_ms(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = duration_ms(v);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("wrk Requests/sec")?;
        } else if line.contains(" requests in ") {
            // "123456 requests in 10.00s, 12.34MB read"
            let mut it = line.split_whitespace();
            r.requests = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            r.seconds = line
                .split(" requests in ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(duration_ms)
                .map_or(0.0, |ms| ms / 1000.0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.errors += v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    r.p50_ms = p50.ok_or_else(|| anyhow!("no 50% line in wrk's report:\n{text}"))?;
    r.p99_ms = p99.ok_or_else(|| anyhow!("no 99% line in wrk's report:\n{text}"))?;
    ensure!(r.requests > 0, "wrk made no request:\n{text}");
    Ok(r)
}

/// Parses h2load's report and its per-request log (latency percentiles).
pub fn parse_h2load(tenant: &'static str, text: &str, log: &Path) -> Result<ToolRun> {
    let mut r = ToolRun {
        tenant,
        ..ToolRun::default()
    };
    let num = |s: &str, word: &str| -> u64 {
        // "123 succeeded" within "requests: 1 total, 1 started, ..."
        s.split(',')
            .find_map(|part| {
                let mut it = part.split_whitespace().rev();
                (it.next() == Some(word))
                    .then(|| it.next()?.parse().ok())
                    .flatten()
            })
            .unwrap_or(0)
    };
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("finished in ") {
            // "10.00s, 12345.60 req/s, 1.23MB/s"
            let mut parts = v.split(',');
            r.seconds = parts
                .next()
                .and_then(duration_ms)
                .map_or(0.0, |ms| ms / 1000.0);
            r.rps = parts
                .next()
                .and_then(|p| p.trim().strip_suffix("req/s"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("requests:") {
            r.requests = num(v, "succeeded");
            r.errors += num(v, "failed") + num(v, "errored") + num(v, "timeout");
        } else if let Some(v) = line.strip_prefix("status codes:") {
            r.errors += num(v, "3xx") + num(v, "4xx") + num(v, "5xx");
        } else if let Some(v) = line.strip_prefix("Application protocol:") {
            v.trim().clone_into(&mut r.protocol);
        }
    }
    ensure!(r.requests > 0, "h2load made no request:\n{text}");
    let log_text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut us: Vec<u32> = log_text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    ensure!(!us.is_empty(), "h2load's log {} is empty", log.display());
    us.sort_unstable();
    r.p50_ms = percentile(&us, 0.50) / 1000.0;
    r.p99_ms = percentile(&us, 0.99) / 1000.0;
    Ok(r)
}

/// The `q` quantile of sorted microsecond samples.
pub fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a slice"
    )]
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

// ---- the bench's own TLS clients ----

/// Accepts any certificate: the load generators measure the proxy, not
/// certificate verification (wrk and h2load do not verify either);
/// [`check`] verifies each tenant's certificate once per candidate.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS 1.3 only, no session resumption (every handshake is a full one),
/// ring's default groups (X25519 first, like OpenSSL's) and suites.
pub fn client_config(roots: Option<RootCertStore>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut cfg = match roots {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    cfg.resumption = Resumption::disabled();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Runs `f` on a thread in the generator's namespace, pinned to its CPU,
/// inside a current-thread runtime; `f` may borrow.
pub fn on_gen<T: Send, F>(g: &Gen, f: impl FnOnce() -> F + Send) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns_current_thread(&g.ns_path)?;
            pin_thread(0, g.cpu)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(f())
        })
        .join()
        .map_err(|_| anyhow!("a client thread panicked"))?
    })
}

async fn timed<T>(
    what: &str,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T> {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("{what}: timed out after {IO_TIMEOUT:?}"))?
        .with_context(|| what.to_owned())
}

pub async fn connect(
    target: SocketAddr,
    host: &'static str,
    cfg: &Arc<ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = timed("connect", TcpStream::connect(target)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host)?;
    timed(
        "TLS handshake",
        TlsConnector::from(cfg.clone()).connect(name, tcp),
    )
    .await
}

fn request(host: &str, close: bool) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench-l7\r\nConnection: {}\r\n\r\n",
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes()
}

/// A complete `200` response from a backend of `tenant`.
fn response_ok(buf: &[u8], tenant: &str) -> bool {
    let marker = format!("tenant={tenant} ");
    buf.starts_with(b"HTTP/1.1 200") && buf.windows(marker.len()).any(|w| w == marker.as_bytes())
}

/// What the verified check of one candidate found, per tenant.
#[derive(Clone, Debug)]
pub struct Checked {
    pub tenant: &'static str,
    pub version: String,
    pub suite: String,
    pub group: String,
    /// ALPN chosen when the client offers `h2, http/1.1`.
    pub alpn: String,
}

/// Each tenant's SNI gets a certificate that verifies against that
/// tenant's CA only, TLS 1.3, ALPN h2 offered, and an HTTP/1.1 request is
/// answered by that tenant's backends.
pub fn check(g: &Gen, tenants: &[Tenant]) -> Result<Vec<Checked>> {
    on_gen(g, || async {
        let mut out = Vec::new();
        for t in tenants {
            let mut roots = RootCertStore::empty();
            roots.add(t.cert.ca_der.clone())?;
            let cfg = client_config(Some(roots.clone()), &[b"h2", b"http/1.1"])?;
            let tls = connect(g.target, t.host, &cfg)
                .await
                .with_context(|| format!("verified TLS handshake for {}", t.host))?;
            let conn = tls.get_ref().1;
            let c = Checked {
                tenant: t.name,
                version: format!("{:?}", conn.protocol_version().context("no version")?),
                suite: format!(
                    "{:?}",
                    conn.negotiated_cipher_suite().context("no suite")?.suite()
                ),
                group: conn
                    .negotiated_key_exchange_group()
                    .map_or_else(|| "?".into(), |kx| format!("{:?}", kx.name())),
                alpn: conn.alpn_protocol().map_or_else(
                    || "none".into(),
                    |p| String::from_utf8_lossy(p).into_owned(),
                ),
            };
            drop(tls);
            let cfg = client_config(Some(roots), &[b"http/1.1"])?;
            let mut tls = connect(g.target, t.host, &cfg).await?;
            tls.write_all(&request(t.host, true)).await?;
            let mut buf = Vec::new();
            let _ = timed("reading the response", read_all(&mut tls, &mut buf)).await;
            ensure!(
                response_ok(&buf, t.name),
                "{}: not a 200 from tenant {}'s backends: {:?}",
                t.host,
                t.name,
                String::from_utf8_lossy(&buf)
            );
            out.push(c);
        }
        Ok(out)
    })
}

/// Reads until EOF (or an error after data: a peer closing without
/// `close_notify`), at most 64 KiB.
async fn read_all(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    loop {
        match tls.read(&mut chunk).await {
            Ok(0) => return Ok(()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 65_536 {
                    return Ok(());
                }
            }
            Err(e) if !buf.is_empty() => {
                let _ = e;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// New TLS connections, one request each.
#[derive(Clone, Debug, Default)]
pub struct Handshakes {
    /// Connections that completed a full handshake and got a 200 from the
    /// right tenant's backend.
    pub ok: u64,
    pub errors: u64,
    /// Handshakes that were not full ones (must stay 0).
    pub not_full: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// Connect to the end of the response.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `concurrency` clients (half per tenant), each opening a connection,
/// making one `Connection: close` request and waiting for the proxy to
/// close, then the next; for `duration`, at most `max` connections.
pub fn handshakes(
    g: &Gen,
    tenants: &[Tenant],
    concurrency: usize,
    duration: Duration,
    max: u64,
    stop: &AtomicBool,
) -> Result<Handshakes> {
    let cfg = client_config(None, &[b"http/1.1"])?;
    on_gen(g, || async {
        let started = Instant::now();
        let deadline = started + duration;
        let left = Arc::new(AtomicU64::new(max));
        let mut set = JoinSet::new();
        for i in 0..concurrency {
            let t = &tenants[i % tenants.len()];
            let (host, name) = (t.host, t.name);
            let (cfg, left, target) = (cfg.clone(), left.clone(), g.target);
            set.spawn(async move {
                let mut r = Handshakes::default();
                let mut lat = Vec::new();
                let req = request(host, true);
                while Instant::now() < deadline
                    && left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                {
                    let t0 = Instant::now();
                    let one = async {
                        let mut tls = connect(target, host, &cfg).await?;
                        let full = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Full);
                        tls.write_all(&req).await?;
                        let mut buf = Vec::with_capacity(512);
                        timed("reading the response", read_all(&mut tls, &mut buf)).await?;
                        ensure!(
                            response_ok(&buf, name),
                            "not a 200 from {name}'s backends: {:?}",
                            String::from_utf8_lossy(&buf)
                        );
                        Ok(full)
                    };
                    match one.await {
                        Ok(full) => {
                            r.ok += 1;
                            r.not_full += u64::from(!full);
                            lat.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                        }
                        Err(e) => {
                            r.errors += 1;
                            r.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (r, lat)
            });
        }
        let mut total = Handshakes::default();
        let mut lat = Vec::new();
        while let Some(res) = set.join_next().await {
            let (r, l) = res?;
            total.ok += r.ok;
            total.errors += r.errors;
            total.not_full += r.not_full;
            if total.first_error.is_none() {
                total.first_error = r.first_error;
            }
            lat.extend(l);
        }
        total.seconds = started.elapsed().as_secs_f64();
        lat.sort_unstable();
        total.p50_ms = percentile(&lat, 0.50) / 1000.0;
        total.p99_ms = percentile(&lat, 0.99) / 1000.0;
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(total)
    })
}

/// The idle-connection test's client side.
#[derive(Clone, Debug, Default)]
pub struct Idle {
    pub wanted: usize,
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub open_seconds: f64,
    /// Still open after the measurement.
    pub alive_after: usize,
    /// How the others ended (the client saw the proxy close them, or an
    /// error), with counts.
    pub closed: Vec<(String, usize)>,
    /// A second request on a sample of them.
    pub probed: usize,
    pub probed_ok: usize,
}

type Held = (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
);

/// How many idle connections, how fast, how long.
#[derive(Clone, Copy, Debug)]
pub struct IdlePlan {
    pub count: usize,
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Wait after the last one is open, before measuring.
    pub settle: Duration,
    /// Opening them all must take less.
    pub limit: Duration,
}

/// Opens `plan.count` TLS connections (alternating tenants), each with a
/// full handshake and one request, keeps them idle, waits, calls
/// `measure`, then checks they are still open and that a sample still
/// answers, and closes them all.
pub fn idle<T: Send>(
    g: &Gen,
    tenants: &[Tenant],
    plan: IdlePlan,
    stop: &AtomicBool,
    measure: impl FnOnce() -> T + Send,
) -> Result<(Idle, T)> {
    let IdlePlan {
        count,
        concurrency,
        settle,
        limit,
    } = plan;
    let cfg = client_config(None, &[b"http/1.1"])?;
    on_gen(g, || async {
        let started = Instant::now();
        let deadline = started + limit;
        let mut r = Idle {
            wanted: count,
            ..Idle::default()
        };
        let mut held: Vec<(Held, &'static str, &'static str)> = Vec::with_capacity(count);
        let closed: Closed = Arc::default();
        let mut set = JoinSet::new();
        let mut next = 0usize;
        while next < count || !set.is_empty() {
            while next < count && set.len() < concurrency {
                let t = &tenants[next % tenants.len()];
                let (host, name, cfg, target) = (t.host, t.name, cfg.clone(), g.target);
                let closed = closed.clone();
                set.spawn(async move {
                    let res = open_idle(target, host, name, &cfg, closed).await;
                    (res, host, name)
                });
                next += 1;
            }
            let Some(done) = set.join_next().await else {
                break;
            };
            let (res, host, name) = done?;
            match res {
                Ok(h) => held.push((h, host, name)),
                Err(e) => {
                    r.failed += 1;
                    r.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            if Instant::now() > deadline || stop.load(Ordering::SeqCst) {
                set.abort_all();
                bail!(
                    "opening idle connections: stopped after {} of {count} ({})",
                    held.len(),
                    if stop.load(Ordering::SeqCst) {
                        "interrupted".to_owned()
                    } else {
                        format!("over {limit:?}")
                    }
                );
            }
        }
        r.opened = held.len();
        r.open_seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(settle).await;
        let m = measure();
        // Let the connections' tasks see any close that happened meanwhile.
        tokio::time::sleep(Duration::from_millis(200)).await;
        r.alive_after = held
            .iter()
            .filter(|((_, task), _, _)| !task.is_finished())
            .count();
        let every = (held.len() / 100).max(1);
        for ((sender, _), host, name) in held.iter_mut().step_by(every) {
            r.probed += 1;
            if probe(sender, host, name).await.is_ok() {
                r.probed_ok += 1;
            }
        }
        drop(held);
        Ok((r, m))
    })
}

/// How idle connections ended: reason -> count.
type Closed = Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>;

async fn open_idle(
    target: SocketAddr,
    host: &'static str,
    tenant: &'static str,
    cfg: &Arc<ClientConfig>,
    closed: Closed,
) -> Result<Held> {
    let tls = connect(target, host, cfg).await?;
    ensure!(
        tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Full),
        "not a full handshake"
    );
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls)).await?;
    let task = tokio::spawn(async move {
        let why = match conn.await {
            Ok(()) => "closed by the proxy".to_owned(),
            Err(e) => format!("{e}"),
        };
        if let Ok(mut m) = closed.lock() {
            *m.entry(why).or_default() += 1;
        }
    });
    probe(&mut sender, host, tenant).await?;
    Ok((sender, task))
}

async fn probe(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    tenant: &str,
) -> Result<()> {
    let req = Request::get("/")
        .header(HOST, host)
        .header("user-agent", "bench-l7")
        .body(Empty::new())?;
    let fut = async {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, body))
    };
    let (status, body) = tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("request timed out"))??;
    let marker = format!("tenant={tenant} ");
    ensure!(
        status == 200 && body.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "{host}: {status} {:?}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}
