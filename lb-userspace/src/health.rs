//! Active health checks of backends.
//!
//! A [`Checker`] runs one tokio task per checked backend (no thread per
//! backend: thousands of checks share the runtime's threads). Each task
//! checks its backend every `interval`, each check bounded by `timeout`:
//!
//! - `kind = "tcp"`: a TCP connect that succeeds is healthy;
//! - `kind = "http"`: an HTTP/1.1 `GET path` (hyper), optionally over TLS
//!   (rustls), whose response status lies within `expect_status`.
//!
//! An up backend goes down after `fall` consecutive failures, a down one
//! comes up after `rise` consecutive successes. Every such change is sent as
//! one [`Event`] on the channel given to [`Checker::new`]; nothing is sent
//! for checks that leave the state as it was. This module never touches the
//! BPF maps: the daemon turns events into map writes.
//!
//! **HTTPS checks do not authenticate the backend.** Backends usually carry
//! certificates of a private CA, or self-signed ones, for names the checker
//! does not know, so the TLS client accepts any certificate (it still checks
//! that the server holds the presented certificate's key). A health check
//! asks "does this backend answer?", not "is this backend who it claims to
//! be?"; it sends nothing secret.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::config::{HEALTH_INTERVAL_RANGE, HealthCheck, HealthKind, format_duration};

/// Identity of a backend: (tenant, pool, address, port as configured or 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BackendRef {
    /// Tenant name.
    pub tenant: String,
    /// Pool name within the tenant.
    pub pool: String,
    /// The backend's address.
    pub address: IpAddr,
    /// The backend's port as configured, or 0 when it has none (the VIP's).
    pub port: u16,
}

/// One backend to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Which backend this is.
    pub backend: BackendRef,
    /// Where to connect.
    pub addr: SocketAddr,
    /// How to check it.
    pub check: HealthCheck,
}

/// A backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Takes new flows.
    Up,
    /// Out of its pool's ring.
    Down,
}

impl Health {
    /// `"up"` or `"down"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the checker knows about one backend.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Current state.
    pub health: Health,
    /// Successes in a row (0 after a failure).
    pub consecutive_ok: u32,
    /// Failures in a row (0 after a success).
    pub consecutive_fail: u32,
    /// The most recent failure's message; kept after the backend recovers.
    pub last_error: Option<String>,
    /// When the last check finished (milliseconds since the Unix epoch).
    pub last_check_unix_ms: Option<u64>,
    /// Checks done since this target's task started.
    pub checks: u64,
}

/// A change of a backend's health.
#[derive(Debug, Clone)]
pub struct Event {
    /// The backend that changed.
    pub backend: BackendRef,
    /// Its new state.
    pub health: Health,
    /// Why, for people ("3 consecutive failures: connect ...: connection refused").
    pub reason: String,
}

impl Status {
    fn new(health: Health) -> Self {
        Self {
            health,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_error: None,
            last_check_unix_ms: None,
            checks: 0,
        }
    }

    /// Counts one check's result; returns the new state and the reason when
    /// it changed.
    fn record(
        &mut self,
        result: Result<(), String>,
        rise: u32,
        fall: u32,
        now_unix_ms: u64,
    ) -> Option<(Health, String)> {
        self.checks = self.checks.saturating_add(1);
        self.last_check_unix_ms = Some(now_unix_ms);
        match result {
            Ok(()) => {
                self.consecutive_ok = self.consecutive_ok.saturating_add(1);
                self.consecutive_fail = 0;
                if self.health == Health::Down && self.consecutive_ok >= rise {
                    self.health = Health::Up;
                    return Some((
                        Health::Up,
                        in_a_row(self.consecutive_ok, "success", "successes"),
                    ));
                }
            }
            Err(error) => {
                self.consecutive_fail = self.consecutive_fail.saturating_add(1);
                self.consecutive_ok = 0;
                let change =
                    (self.health == Health::Up && self.consecutive_fail >= fall).then(|| {
                        let n = in_a_row(self.consecutive_fail, "failure", "failures");
                        (Health::Down, format!("{n}: {error}"))
                    });
                self.last_error = Some(error);
                if let Some((health, _)) = &change {
                    self.health = *health;
                }
                return change;
            }
        }
        None
    }
}

fn in_a_row(n: u32, one: &str, many: &str) -> String {
    format!("{n} consecutive {}", if n == 1 { one } else { many })
}

/// State shared by a check task and the [`Checker`].
struct Shared {
    status: Status,
    /// Set (under the lock) when the task is stopped: no event is sent after.
    stopped: bool,
}

/// A running check.
struct Running {
    addr: SocketAddr,
    check: HealthCheck,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops the task; returns the health it had. Once this returns the
    /// task sends no more events.
    fn stop(self) -> Health {
        let health = {
            let mut shared = lock(&self.shared);
            shared.stopped = true;
            shared.status.health
        };
        self.task.abort();
        health
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // The lock is never held across a panic point that matters; a poisoned
    // status is still a valid status.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the health checks of a set of backends and reports state changes.
pub struct Checker {
    events: UnboundedSender<Event>,
    running: HashMap<BackendRef, Running>,
}

impl Checker {
    /// `events` receives one Event per state change (never for unchanged state).
    #[must_use]
    pub fn new(events: UnboundedSender<Event>) -> Checker {
        Checker {
            events,
            running: HashMap::new(),
        }
    }

    /// Makes the running checks match `targets`: starts new ones, stops
    /// removed ones, restarts ones whose address or check changed. A target
    /// whose (backend, addr, check) is unchanged keeps its task and its state
    /// (a reload must not reset health). `initial` gives the starting state
    /// of NEW targets. A restarted target (same backend, other address or
    /// check) keeps its current health, with its counters reset. When
    /// `targets` names a backend twice, the first one counts.
    ///
    /// Once this returns, stopped targets send no more events (events they
    /// sent before may still be queued in the channel).
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn update(&mut self, targets: Vec<Target>, initial: &dyn Fn(&BackendRef) -> Health) {
        let mut old = std::mem::take(&mut self.running);
        let mut next = HashMap::with_capacity(targets.len());
        let (mut kept, mut started, mut restarted) = (0_usize, 0_usize, 0_usize);
        for target in targets {
            if next.contains_key(&target.backend) {
                warn!(
                    tenant = %target.backend.tenant,
                    pool = %target.backend.pool,
                    backend = %target.backend.address,
                    port = target.backend.port,
                    "health check target listed twice; the first one counts"
                );
                continue;
            }
            let running = match old.remove(&target.backend) {
                Some(run) if run.addr == target.addr && run.check == target.check => {
                    kept += 1;
                    run
                }
                Some(run) => {
                    restarted += 1;
                    let health = run.stop();
                    self.spawn(target.clone(), health)
                }
                None => {
                    started += 1;
                    let health = initial(&target.backend);
                    self.spawn(target.clone(), health)
                }
            };
            next.insert(target.backend, running);
        }
        let stopped = old.len();
        for (_, run) in old {
            run.stop();
        }
        self.running = next;
        debug!(kept, started, restarted, stopped, "health checks updated");
    }

    fn spawn(&self, target: Target, health: Health) -> Running {
        let shared = Arc::new(Mutex::new(Shared {
            status: Status::new(health),
            stopped: false,
        }));
        let addr = target.addr;
        let check = target.check.clone();
        let task = tokio::spawn(run_checks(target, Arc::clone(&shared), self.events.clone()));
        Running {
            addr,
            check,
            shared,
            task,
        }
    }

    /// Current status of every checked backend.
    #[must_use]
    pub fn statuses(&self) -> BTreeMap<BackendRef, Status> {
        self.running
            .iter()
            .map(|(backend, run)| (backend.clone(), lock(&run.shared).status.clone()))
            .collect()
    }

    /// Stops every check.
    pub fn shutdown(&mut self) {
        for (_, run) in self.running.drain() {
            run.stop();
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The first check waits up to min(interval, 1 s), spread by a hash of the
/// backend so that thousands of checks started together do not fire at once.
fn first_delay(backend: &BackendRef, interval: Duration) -> Duration {
    let spread = u64::try_from(interval.min(Duration::from_secs(1)).as_micros()).unwrap_or(0);
    if spread == 0 {
        return Duration::ZERO;
    }
    let mut hasher = DefaultHasher::new();
    backend.hash(&mut hasher);
    Duration::from_micros(hasher.finish() % spread)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One target's check loop; runs until aborted.
async fn run_checks(target: Target, shared: Arc<Mutex<Shared>>, events: UnboundedSender<Event>) {
    let check = &target.check;
    let backend = &target.backend;
    // `tokio::time::interval` panics on a zero period, and on a period so
    // long that the next tick overflows; validated configs never have
    // either, hand-made targets might.
    let interval = check
        .interval
        .clamp(*HEALTH_INTERVAL_RANGE.start(), *HEALTH_INTERVAL_RANGE.end());
    tokio::time::sleep(first_delay(backend, interval)).await;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = match tokio::time::timeout(check.timeout, probe(&target)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{}: no answer within {}",
                describe(&target),
                format_duration(check.timeout)
            )),
        };
        debug!(
            tenant = %backend.tenant,
            pool = %backend.pool,
            backend = %target.addr,
            ok = result.is_ok(),
            error = result.as_ref().err().map(String::as_str),
            "health check"
        );
        let change = {
            let mut shared = lock(&shared);
            if shared.stopped {
                return;
            }
            let change = shared
                .status
                .record(result, check.rise, check.fall, unix_ms());
            if let Some((health, reason)) = &change {
                // Sent under the lock, so that `Running::stop` guarantees no
                // event after it returns. A closed channel means the daemon
                // is going away; nothing to do.
                let _ = events.send(Event {
                    backend: backend.clone(),
                    health: *health,
                    reason: reason.clone(),
                });
            }
            change
        };
        if let Some((health, reason)) = change {
            info!(
                tenant = %backend.tenant,
                pool = %backend.pool,
                backend = %target.addr,
                health = %health,
                reason = %reason,
                "backend health changed"
            );
        }
    }
}

/// What a check does, for messages: `connect 10.0.0.1:80`, `GET http://10.0.0.1:80/health`.
fn describe(target: &Target) -> String {
    match target.check.kind {
        HealthKind::Tcp => format!("connect {}", target.addr),
        HealthKind::Http => format!("GET {}", url(target)),
    }
}

fn url(target: &Target) -> String {
    let scheme = if target.check.tls { "https" } else { "http" };
    let path = target.check.path.as_deref().unwrap_or("/");
    format!("{scheme}://{}{path}", target.addr)
}

/// The Host header: the backend's address (IPv6 in brackets), with the port
/// unless it is the scheme's default.
fn host_header(target: &Target) -> String {
    let default_port = if target.check.tls { 443 } else { 80 };
    let host = match target.backend.address {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    if target.addr.port() == default_port {
        host
    } else {
        format!("{host}:{}", target.addr.port())
    }
}

/// One check, unbounded in time (the caller applies the timeout).
async fn probe(target: &Target) -> Result<(), String> {
    let stream = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {}", target.addr, io_error(&e)))?;
    match target.check.kind {
        HealthKind::Tcp => Ok(()),
        HealthKind::Http => {
            // Small requests, answered at once: no Nagle delay.
            let _ = stream.set_nodelay(true);
            let status = if target.check.tls {
                let connector = tls_connector()?;
                let name = ServerName::IpAddress(target.backend.address.into());
                let tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake with {}: {}", target.addr, io_error(&e)))?;
                http_status(tls, target).await?
            } else {
                http_status(stream, target).await?
            };
            let (low, high) = target.check.expect_status.unwrap_or((200, 399));
            if (low..=high).contains(&status) {
                Ok(())
            } else {
                Err(format!(
                    "GET {}: status {status}, expected {low}-{high}",
                    url(target)
                ))
            }
        }
    }
}

/// Sends the GET on `io` and returns the response's status; the body is
/// not read.
async fn http_status<S>(io: S, target: &Target) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let fail = |what: &str, e: &dyn std::error::Error| {
        format!("GET {}: {what}{}", url(target), error_chain(e))
    };
    let request = Request::get(target.check.path.as_deref().unwrap_or("/"))
        .header(header::HOST, host_header(target))
        .header(header::USER_AGENT, "lb-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail("invalid request: ", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        // Limits on what a backend may send back: the response head must
        // fit in 16 KiB with at most 64 headers.
        .max_buf_size(16 * 1024)
        .max_headers(64)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| fail("", &e))?;
    // The connection is driven here rather than in a spawned task, so that
    // a check cancelled by its timeout leaves nothing running.
    let mut connection = std::pin::pin!(connection);
    let mut response = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        done = &mut connection => {
            done.map_err(|e| fail("", &e))?;
            // The connection ended; the response, if any, was delivered.
            response.await
        }
    };
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| fail("", &e))
}

/// An I/O error's message without the " (os error N)" suffix, starting in
/// lower case: "connection refused".
fn io_error(e: &std::io::Error) -> String {
    let text = error_chain(e);
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "unknown error".to_owned(),
    }
}

/// An error and its sources, joined by ": " (sources already quoted in the
/// message are left out).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The TLS client of every HTTPS check (built once).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS client setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
        .map(tokio_rustls::TlsConnector::from)
}

/// Accepts every server certificate, whoever issued it and whatever name
/// it carries: HTTPS health checks do NOT authenticate the backend (see the
/// module documentation for why). The handshake signatures are still
/// verified, so the server must hold the key of the certificate it shows.
/// The L7 tests use it too, to reach certificates of names they do not
/// verify.
#[derive(Debug)]
pub(crate) struct AcceptAnyCertificate(pub(crate) Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Deliberately no chain, name or validity check: see above.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn tcp_check(interval_ms: u64, rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            kind: HealthKind::Tcp,
            path: None,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(interval_ms * 4 / 5),
            rise,
            fall,
            port: None,
            expect_status: None,
            tls: false,
            initial_down: false,
        }
    }

    fn http_check(interval_ms: u64, rise: u32, fall: u32, expect: (u16, u16)) -> HealthCheck {
        HealthCheck {
            kind: HealthKind::Http,
            path: Some("/healthz".to_owned()),
            expect_status: Some(expect),
            ..tcp_check(interval_ms, rise, fall)
        }
    }

    fn target(pool: &str, port: u16, check: HealthCheck) -> Target {
        Target {
            backend: BackendRef {
                tenant: "acme".to_owned(),
                pool: pool.to_owned(),
                address: LOCALHOST,
                port,
            },
            addr: SocketAddr::new(LOCALHOST, port),
            check,
        }
    }

    fn up(_: &BackendRef) -> Health {
        Health::Up
    }

    fn down(_: &BackendRef) -> Health {
        Health::Down
    }

    /// The next event, failing the test after `within`.
    async fn next_event(rx: &mut UnboundedReceiver<Event>, within: Duration) -> Event {
        tokio::time::timeout(within, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no health event within {within:?}"))
            .expect("event channel closed")
    }

    fn status(checker: &Checker, backend: &BackendRef) -> Status {
        checker
            .statuses()
            .remove(backend)
            .expect("backend is checked")
    }

    /// Waits until `backend` has done `n` more checks than now.
    async fn more_checks(checker: &Checker, backend: &BackendRef, n: u64, within: Duration) {
        let goal = status(checker, backend).checks + n;
        let deadline = Instant::now() + within;
        while status(checker, backend).checks < goal {
            assert!(
                Instant::now() < deadline,
                "{n} more checks took over {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn assert_no_event(rx: &mut UnboundedReceiver<Event>) {
        if let Ok(event) = rx.try_recv() {
            panic!("unexpected event {event:?}");
        }
    }

    /// A port on 127.0.0.1 that nothing listens on.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    }

    fn listen(port: u16) -> TcpListener {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::new(LOCALHOST, port)).unwrap();
        socket.listen(1024).unwrap()
    }

    /// Accepts and closes connections until aborted.
    fn serve_tcp(listener: TcpListener) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    drop(stream);
                }
            }
        })
    }

    /// Aborts a server task and waits until its listener is closed.
    async fn stop(server: JoinHandle<()>) {
        server.abort();
        let _ = server.await;
    }

    /// What the test HTTP server answers: a status, or one of these.
    const GARBAGE: u16 = 0;
    const SILENT: u16 = 1;
    /// A plain-HTTP 200 sent at once, before reading anything (to a TLS
    /// client: not a TLS record).
    const AT_ONCE: u16 = 2;

    struct HttpServer {
        port: u16,
        status: Arc<AtomicU16>,
        last_request: Arc<Mutex<String>>,
        task: JoinHandle<()>,
    }

    /// A minimal HTTP/1.1 server answering every request with `status`,
    /// over TLS when `tls` is given.
    async fn http_server(status: u16, tls: Option<tokio_rustls::TlsAcceptor>) -> HttpServer {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(status));
        let last_request = Arc::new(Mutex::new(String::new()));
        let (answer, seen) = (Arc::clone(&status), Arc::clone(&last_request));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (answer, seen, tls) = (Arc::clone(&answer), Arc::clone(&seen), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                respond(stream, &answer, &seen).await;
                            }
                        }
                        None => respond(stream, &answer, &seen).await,
                    }
                });
            }
        });
        HttpServer {
            port,
            status,
            last_request,
            task,
        }
    }

    async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        answer: &AtomicU16,
        seen: &Mutex<String>,
    ) {
        if answer.load(Ordering::SeqCst) == AT_ONCE {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
            let _ = stream.shutdown().await;
            return;
        }
        let mut head = Vec::new();
        let mut buf = [0_u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        *seen.lock().unwrap() = String::from_utf8_lossy(&head).into_owned();
        let response = match answer.load(Ordering::SeqCst) {
            GARBAGE => "\x00\x01 not http at all\r\n\r\n".to_owned(),
            SILENT => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            code => format!(
                "HTTP/1.1 {code} Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
            ),
        };
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    #[test]
    fn rise_and_fall_count_consecutive_results() {
        let mut s = Status::new(Health::Up);
        assert_eq!(s.record(Err("boom".into()), 2, 3, 1), None);
        assert_eq!(s.record(Err("boom".into()), 2, 3, 2), None);
        assert_eq!(
            s.record(Err("connect x: connection refused".into()), 2, 3, 3),
            Some((
                Health::Down,
                "3 consecutive failures: connect x: connection refused".to_owned()
            ))
        );
        assert_eq!(s.record(Err("boom".into()), 2, 3, 4), None);
        assert_eq!(s.record(Ok(()), 2, 3, 5), None);
        assert_eq!(
            s.record(Err("again".into()), 2, 3, 6),
            None,
            "a failure resets the rise count"
        );
        assert_eq!(s.record(Ok(()), 2, 3, 7), None);
        assert_eq!(
            s.record(Ok(()), 2, 3, 8),
            Some((Health::Up, "2 consecutive successes".to_owned()))
        );
        assert_eq!(s.record(Ok(()), 2, 3, 9), None);
        assert_eq!(s.health, Health::Up);
        assert_eq!((s.consecutive_ok, s.consecutive_fail, s.checks), (3, 0, 9));
        assert_eq!(s.last_error.as_deref(), Some("again"));
        assert_eq!(s.last_check_unix_ms, Some(9));

        let mut s = Status::new(Health::Up);
        assert_eq!(
            s.record(Err("x".into()), 1, 1, 0),
            Some((Health::Down, "1 consecutive failure: x".to_owned()))
        );
        assert_eq!(
            s.record(Ok(()), 1, 1, 0),
            Some((Health::Up, "1 consecutive success".to_owned()))
        );
    }

    #[test]
    fn first_checks_are_spread_within_a_second() {
        let delays: BTreeSet<Duration> = (1..=100)
            .map(|port| {
                first_delay(
                    &target("p", port, tcp_check(5000, 1, 1)).backend,
                    Duration::from_secs(5),
                )
            })
            .collect();
        assert!(delays.iter().all(|d| *d < Duration::from_secs(1)));
        assert!(delays.len() > 90, "delays are spread: {delays:?}");
        let short = first_delay(
            &target("p", 1, tcp_check(50, 1, 1)).backend,
            Duration::from_millis(50),
        );
        assert!(short < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn tcp_backend_goes_down_and_comes_back() {
        let (tx, mut rx) = unbounded_channel();
        let mut checker = Checker::new(tx);
        let listener = listen(0);
        let port = listener.local_addr().unwrap().port();
        let server = serve_tcp(listener);
        let (interval, rise, fall) = (Duration::from_millis(100), 2, 3);
        let t = target("web", port, tcp_check(100, rise, fall));
        checker.update(vec![t.clone()], &up);

        more_checks(&checker, &t.backend, 5, Duration::from_secs(5)).await;
        assert_no_event(&mut rx);
        let s = status(&checker, &t.backend);
        assert_eq!(s.health, Health::Up);
        assert_eq!(s.consecutive_fail, 0);
        assert!(s.last_check_unix_ms.is_some());

        stop(server).await;
        let since = Instant::now();
        let bound = interval * (fall + 1) + Duration::from_secs(1);
        let event = next_event(&mut rx, bound).await;
        assert_eq!(
            (event.backend.clone(), event.health),
            (t.backend.clone(), Health::Down)
        );
        assert!(
            event.reason.starts_with(&format!(
                "3 consecutive failures: connect 127.0.0.1:{port}: connection refused"
            )),
            "{}",
            event.reason
        );
        assert!(since.elapsed() >= interval * (fall - 1), "down too early");
        more_checks(&checker, &t.backend, 3, Duration::from_secs(5)).await;
        assert_no_event(&mut rx);
        assert_eq!(status(&checker, &t.backend).health, Health::Down);

        let server = serve_tcp(listen(port));
        let event = next_event(&mut rx, interval * (rise + 1) + Duration::from_secs(1)).await;
        assert_eq!(
            (event.backend.clone(), event.health),
            (t.backend.clone(), Health::Up)
        );
        assert_eq!(event.reason, "2 consecutive successes");
        more_checks(&checker, &t.backend, 3, Duration::from_secs(5)).await;
        assert_no_event(&mut rx);
        checker.shutdown();
        assert!(checker.statuses().is_empty());
        stop(server).await;
    }

    #[tokio::test]
    async fn http_status_decides() {
        let (tx, mut rx) = unbounded_channel();
        let mut checker = Checker::new(tx);
        let server = http_server(200, None).await;
        let t = target("web", server.port, http_check(50, 1, 2, (200, 399)));
        checker.update(vec![t.clone()], &down);

        let event = next_event(&mut rx, Duration::from_secs(5)).await;
        assert_eq!(event.health, Health::Up, "{event:?}");
        let request = server.last_request.lock().unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("get /healthz http/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", server.port)),
            "{request}"
        );

        server.status.store(500, Ordering::SeqCst);
        let event = next_event(&mut rx, Duration::from_secs(5)).await;
        assert_eq!(event.health, Health::Down);
        assert_eq!(
            event.reason,
            format!(
                "2 consecutive failures: GET http://127.0.0.1:{}/healthz: status 500, expected 200-399",
                server.port
            )
        );
        server.status.store(204, Ordering::SeqCst);
        assert_eq!(
            next_event(&mut rx, Duration::from_secs(5)).await.health,
            Health::Up
        );
        more_checks(&checker, &t.backend, 3, Duration::from_secs(5)).await;
        assert_no_event(&mut rx);
        stop(server.task).await;
    }

    #[tokio::test]
    async fn http_expect_range_and_bad_answers() {
        let (tx, mut rx) = unbounded_channel();
        let mut checker = Checker::new(tx);
        let redirect = http_server(301, None).await;
        let garbage = http_server(GARBAGE, None).await;
        let silent = http_server(SILENT, None).await;
        let tls_on_plain = http_server(AT_ONCE, None).await;
        let check = http_check(100, 1, 1, (200, 299));
        let mut to_tls_on_plain = target("tls", tls_on_plain.port, check.clone());
        to_tls_on_plain.check.tls = true;
        let targets = vec![
            target("redirect", redirect.port, check.clone()),
            target("garbage", garbage.port, check.clone()),
            target("silent", silent.port, check),
            to_tls_on_plain,
        ];
        checker.update(targets.clone(), &up);

        let mut reasons = BTreeMap::new();
        for _ in 0..targets.len() {
            let event = next_event(&mut rx, Duration::from_secs(5)).await;
            assert_eq!(event.health, Health::Down, "{event:?}");
            reasons.insert(event.backend.pool, event.reason);
        }
        let reason = |pool: &str| reasons[pool].as_str();
        assert!(
            reason("redirect").ends_with(&format!(
                "GET http://127.0.0.1:{}/healthz: status 301, expected 200-299",
                redirect.port
            )),
            "{reasons:?}"
        );
        assert!(
            reason("garbage").starts_with("1 consecutive failure: GET http://"),
            "{reasons:?}"
        );
        assert!(
            reason("silent").ends_with("no answer within 80ms"),
            "{reasons:?}"
        );
        assert!(
            reason("tls").contains("TLS handshake with 127.0.0.1:"),
            "{reasons:?}"
        );
        for server in [redirect, garbage, silent, tls_on_plain] {
            stop(server.task).await;
        }
    }

    /// A self-signed certificate (EC P-256, CN and SAN `backend.test`, valid
    /// until 2126): the checker must accept it although nothing vouches for it.
    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBnjCCAUSgAwIBAgIUEL06y7Jycs9XrWkjaT7G15CDXkUwCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMYmFja2VuZC50ZXN0MCAXDTI2MTEyNzE3NTQwMloYDzIxMjYx
MTAzMTc1NDAyWjAXMRUwEwYDVQQDDAxiYWNrZW5kLnRlc3QwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAAThY4t8CJyaZmJz4E398VHzEh11m1f3oJmv+IXamwIkyEav
l6AvO6USpgQuBeglsMUdDPtmwYuNU5GDHWIfMIE+o2wwajAdBgNVHQ4EFgQU+m/t
JlZacNmlT/WvU1f/mVtEzrYwHwYDVR0jBBgwFoAU+m/tJlZacNmlT/WvU1f/mVtE
zrYwDwYDVR0TAQH/BAUwAwEB/zAXBgNVHREEEDAOggxiYWNrZW5kLnRlc3QwCgYI
KoZIzj0EAwIDSAAwRQIgXN3OkeQbWahqxunW7b0Dcza62OMXYvJDmDIw2eB4SdkC
IQCt1JQvLuqQBfSMWZVtNFOaT2ztit1jHAazmzf84siIaQ==
-----END CERTIFICATE-----
";
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgUGMoWlfPReh27HQK
0cNoxAPSROaB7S6CLspaqvLK0w+hRANCAAThY4t8CJyaZmJz4E398VHzEh11m1f3
oJmv+IXamwIkyEavl6AvO6USpgQuBeglsMUdDPtmwYuNU5GDHWIfMIE+
-----END PRIVATE KEY-----
";

    fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    #[tokio::test]
    async fn https_check_accepts_a_self_signed_backend() {
        let (tx, mut rx) = unbounded_channel();
        let mut checker = Checker::new(tx);
        let server = http_server(200, Some(tls_acceptor())).await;
        let mut t = target("secure", server.port, http_check(100, 1, 1, (200, 399)));
        t.check.tls = true;
        checker.update(vec![t.clone()], &down);
        let event = next_event(&mut rx, Duration::from_secs(5)).await;
        assert_eq!(
            event.health,
            Health::Up,
            "{:?}",
            status(&checker, &t.backend)
        );
        let request = server.last_request.lock().unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("get /healthz http/1.1\r\n"),
            "{request}"
        );

        server.status.store(503, Ordering::SeqCst);
        let event = next_event(&mut rx, Duration::from_secs(5)).await;
        assert_eq!(event.health, Health::Down);
        assert!(
            event.reason.contains("https://127.0.0.1:"),
            "{}",
            event.reason
        );
        stop(server.task).await;
    }

    #[tokio::test]
    async fn initial_down_comes_up_after_rise() {
        let (tx, mut rx) = unbounded_channel();
        let mut checker = Checker::new(tx);
        let listener = listen(0);
        let port = listener.local_addr().unwrap().port();
        let server = serve_tcp(listener);
        let t = target("web", port, tcp_check(50, 3, 2));
        checker.update(vec![t.clone()], &down);
        assert_eq!(status(&checker, &t.backend).health, Health::Down);

        let event = next_event(&mut rx, Duration::from_secs(5)).await;
        assert_eq!(
            (event.backend, event.health),
            (t.backend.clone(), Health::Up)
        );
        assert_eq!(event.reason, "3 consecutive successes");
        let s = status(&checker, &t.backend);
        assert!(s.checks >= 3 && s.consecutive_ok >= 3, "{s:?}");
        stop(server).await;
    }

    #[tokio::test]
    async fn update_keeps_unchanged_restarts_changed_and_stops_removed() {
        let (tx, mut rx) = unbounded_channel();
        let mut checker = Checker::new(tx);
        let dead = target("dead", closed_port(), tcp_check(50, 2, 2));
        let listener = listen(0);
        let live = target(
            "live",
            listener.local_addr().unwrap().port(),
            tcp_check(50, 2, 2),
        );
        let server = serve_tcp(listener);
        let calls = Cell::new(0);
        let counting_up = |_: &BackendRef| {
            calls.set(calls.get() + 1);
            Health::Up
        };
        checker.update(vec![dead.clone(), live.clone()], &counting_up);
        assert_eq!(calls.get(), 2);
        let event = next_event(&mut rx, Duration::from_secs(5)).await;
        assert_eq!(
            (event.backend, event.health),
            (dead.backend.clone(), Health::Down)
        );
        let before = status(&checker, &dead.backend);

        // Same targets (in another order): tasks and state kept, `initial`
        // not asked, no event.
        checker.update(vec![live.clone(), dead.clone()], &counting_up);
        assert_eq!(calls.get(), 2, "initial is only asked for new targets");
        let after = status(&checker, &dead.backend);
        assert_eq!(after.health, Health::Down);
        assert!(after.checks >= before.checks, "{before:?} -> {after:?}");
        more_checks(&checker, &live.backend, 5, Duration::from_secs(5)).await;
        assert_no_event(&mut rx);
        assert_eq!(status(&checker, &dead.backend).health, Health::Down);

        // A changed check restarts the task (counters from 0) but keeps the
        // health.
        let mut dead_slower = dead.clone();
        dead_slower.check.interval = Duration::from_millis(60);
        checker.update(vec![dead_slower.clone(), live.clone()], &counting_up);
        assert_eq!(calls.get(), 2);
        let restarted = status(&checker, &dead.backend);
        assert_eq!((restarted.health, restarted.checks), (Health::Down, 0));
        more_checks(&checker, &dead.backend, 3, Duration::from_secs(5)).await;
        assert_no_event(&mut rx);

        // Removed: no more checks, no event even though its server dies.
        checker.update(vec![dead_slower.clone()], &counting_up);
        assert_eq!(
            checker.statuses().keys().collect::<Vec<_>>(),
            vec![&dead.backend]
        );
        stop(server).await;
        more_checks(&checker, &dead.backend, 5, Duration::from_secs(5)).await;
        assert_no_event(&mut rx);

        // Added back: a new target, with the state `initial` gives.
        checker.update(vec![dead_slower, live.clone()], &down);
        assert_eq!(status(&checker, &live.backend).health, Health::Down);
        assert_eq!(status(&checker, &live.backend).checks, 0);
    }

    fn threads() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    #[tokio::test]
    async fn a_thousand_backends_on_tasks() {
        let (tx, mut rx) = unbounded_channel();
        let mut checker = Checker::new(tx);
        let port = closed_port();
        let mut check = tcp_check(1000, 1, 1);
        check.timeout = Duration::from_millis(500);
        let targets: Vec<Target> = (0..1000)
            .map(|i| {
                let mut t = target(&format!("pool{i}"), port, check.clone());
                t.backend.port = 0;
                t
            })
            .collect();
        let threads_before = threads();
        checker.update(targets, &up);
        assert_eq!(checker.statuses().len(), 1000);

        let mut down = BTreeSet::new();
        let deadline = Duration::from_secs(20);
        let start = Instant::now();
        while down.len() < 1000 {
            let left = deadline.saturating_sub(start.elapsed());
            let event = next_event(&mut rx, left).await;
            assert_eq!(event.health, Health::Down);
            assert!(down.insert(event.backend), "one event per backend");
        }
        // Other tests may run threads meanwhile; a thread per backend would
        // add a thousand.
        assert!(
            threads() < threads_before + 100,
            "{threads_before} -> {}",
            threads()
        );
        assert!(
            checker
                .statuses()
                .values()
                .all(|s| s.health == Health::Down)
        );
        checker.shutdown();
        assert!(checker.statuses().is_empty());
    }
}
