//! The L7 listeners: sockets, the accept loops, TLS, and the drain.
//!
//! [`L7`] owns one accept loop per listen address of the configuration and
//! follows every reload: new addresses are bound, removed ones stop
//! accepting (their open connections finish), and the routing snapshot and
//! certificates are replaced without touching established connections.
//!
//! A connection on a TLS address starts with reading the `ClientHello`
//! ([`passthrough::read_client_hello`]): its SNI says whether the tenant
//! keeps its own TLS (the bytes are then copied to a backend of the
//! tenant's pool, [`passthrough::splice_report`]) or whether `lbd`
//! terminates it (the bytes read are replayed into rustls). Reading the SNI
//! first also lets a failed handshake be counted against its tenant.
//!
//! On a listener with `proxy_protocol = "v2"`, a connection from one of its
//! `trusted_proxies` starts with a PROXY protocol v2 header
//! ([`passthrough::read_proxy_v2`], before any HTTP or TLS byte); its source
//! address is the client from then on. A connection from anyone else is
//! read as if no header were expected: nothing a client sends changes its
//! address.
//!
//! Sockets are bound with `SO_REUSEPORT` and `IP_FREEBIND`: a second `lbd`
//! can bind beside this one, and an address can be bound before it is
//! assigned to the node. On a restart the listening sockets themselves are
//! handed to the next `lbd` ([`super::handoff`]), so no connection is
//! refused in between.

use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
    path::PathBuf,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
};
use tracing::{debug, info, warn};

use crate::{
    config::{AccessLog, Config, L7Protocol, Listener},
    reconcile::BackendKey,
};

use super::{
    access_log::{self, AccessLogger, Entry},
    admission::{self, Policy},
    caps::{SourceGuard, Sources},
    passthrough::{self, HelloError, ProxyHeader, ProxyHeaderError},
    proxy::{ConnInfo, ConnSlot, Proxy, now_ms},
    routing::{self, ListenerRouting, Routing},
    stats::{ActiveConnection, ListenerStats},
    tls::{self, CertSpec, CertStore},
};

/// Backlog of each listening socket.
const BACKLOG: i32 = 4096;
/// How often a connection with a response under way looks for responses
/// the client stopped taking.
const STALL_CHECK: Duration = Duration::from_secs(1);
/// The connection's clock never wakes sooner than this after a check.
const CLOCK_MIN: Duration = Duration::from_millis(10);
/// How often a draining connection looks for the moment to close.
const DRAIN_CHECK: Duration = Duration::from_millis(20);
/// A draining connection with no request ends after this long.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// [`DRAIN_GRACE`] in milliseconds, for the [`now_ms`] clock.
const DRAIN_GRACE_MS: u64 = 1000;

/// The L7 tier of one `lbd`.
pub struct L7 {
    proxy: Arc<Proxy>,
    certs: CertStore,
    seed: u32,
    listeners: HashMap<SocketAddr, Running>,
    /// Open client connections (all listeners).
    connections: Arc<Connections>,
    access_log: AccessLog,
    /// Whether the accept loops accept: a new `lbd` holds them until the
    /// previous one has stopped its own ([`super::handoff`]).
    accepting: watch::Sender<bool>,
}

/// One accept loop.
struct Running {
    /// The socket (kept to hand it over on a restart).
    socket: Arc<TcpListener>,
    stop: watch::Sender<bool>,
    stats: Arc<ListenerStats>,
    /// The listener's TLS settings (its default tenant may change on reload).
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
}

/// Counts open connections and tells the drain when the last one closes.
#[derive(Debug)]
pub(crate) struct Connections {
    open: AtomicUsize,
    /// `node.max_connections`.
    max: AtomicUsize,
    closed: Notify,
    /// Every connection's drain signal: set once to ask all of them to
    /// finish their current request and close.
    drain: watch::Sender<bool>,
}

/// Holds one count in [`Connections`].
struct ConnectionGuard(Arc<Connections>);

impl ConnectionGuard {
    fn new(c: &Arc<Connections>) -> Self {
        c.open.fetch_add(1, Relaxed);
        Self(Arc::clone(c))
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Relaxed) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl L7 {
    /// Starts the listeners of `config`. `inherited` are listening sockets
    /// handed over by the previous `lbd`, by address; the ones not used are
    /// closed. With `hold`, the listeners do not accept until
    /// [`L7::start_accepting`] (the previous `lbd` still accepts from the
    /// same sockets until it has been told that this one started).
    ///
    /// # Errors
    /// When a listen address cannot be bound or the access log cannot be
    /// opened.
    pub fn start(
        config: &Config,
        down: &BTreeSet<BackendKey>,
        mut inherited: HashMap<SocketAddr, OwnedFd>,
        hold: bool,
    ) -> anyhow::Result<Self> {
        let log = AccessLogger::start(&config.node.access_log)?;
        let mut l7 = Self {
            proxy: Arc::new(Proxy {
                routing: Arc::new(ArcSwap::from_pointee(Routing::default())),
                log: ArcSwap::from_pointee(log),
                policy: Arc::new(Policy::new()),
            }),
            certs: CertStore::new(),
            seed: config.node.hash_seed,
            listeners: HashMap::new(),
            connections: Arc::new(Connections {
                open: AtomicUsize::new(0),
                max: AtomicUsize::new(usize::MAX),
                closed: Notify::new(),
                drain: watch::channel(false).0,
            }),
            access_log: config.node.access_log.clone(),
            accepting: watch::channel(!hold).0,
        };
        l7.update_with(config, down, &mut inherited)?;
        if !inherited.is_empty() {
            let addrs: Vec<_> = inherited.keys().collect();
            info!(
                ?addrs,
                "closing handed-over sockets this configuration no longer listens on"
            );
        }
        Ok(l7)
    }

    /// Lets held listeners accept (see [`L7::start`]).
    pub fn start_accepting(&self) {
        self.accepting.send_replace(true);
    }

    /// Follows a new configuration or health state.
    ///
    /// # Errors
    /// When a new listen address cannot be bound (the others are updated).
    pub fn update(&mut self, config: &Config, down: &BTreeSet<BackendKey>) -> anyhow::Result<()> {
        self.update_with(config, down, &mut HashMap::new())
    }

    /// Rebuilds only the routing snapshot (a health change).
    pub fn update_health(&self, config: &Config, down: &BTreeSet<BackendKey>) {
        let previous = self.proxy.routing.load();
        let routing = Routing::build(config, down, Some(&previous), self.seed);
        self.proxy.routing.store(Arc::new(routing));
    }

    fn update_with(
        &mut self,
        config: &Config,
        down: &BTreeSet<BackendKey>,
        inherited: &mut HashMap<SocketAddr, OwnedFd>,
    ) -> anyhow::Result<()> {
        self.connections.max.store(
            usize::try_from(config.node.max_connections).unwrap_or(usize::MAX),
            Relaxed,
        );
        if config.node.access_log != self.access_log {
            match AccessLogger::start(&config.node.access_log) {
                Ok(log) => {
                    self.proxy.log.store(Arc::new(log));
                    self.access_log = config.node.access_log.clone();
                }
                Err(e) => warn!(error = %e, "keeping the old access log"),
            }
        }
        // Policy before routing: a new tenant is routable only with its
        // limits and credentials in place.
        for e in self.proxy.policy.update(config) {
            warn!(error = %e, "key file not loaded (the tenant keeps its previous keys, if any)");
        }
        // Certificates first: a site must never be routable before its
        // certificate is served.
        let report = self.certs.load(&Self::cert_specs(config));
        for e in &report.errors {
            warn!(error = %e, "certificate not loaded (the previous one, if any, keeps serving)");
        }
        self.update_health(config, down);

        let wanted: BTreeSet<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
        let gone: Vec<SocketAddr> = self
            .listeners
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(r) = self.listeners.remove(&addr) {
                let _ = r.stop.send(true);
                info!(%addr, "L7 listener removed; its open connections finish");
            }
        }
        let mut failed = Vec::new();
        for l in &config.listeners {
            let addr = l.address;
            let tls = self
                .certs
                .server_config(addr, l.default_tenant.as_deref(), true);
            if let Some(running) = self.listeners.get(&addr) {
                running.tls.store(tls);
                continue;
            }
            let tls = Arc::new(ArcSwap::new(tls));
            let socket = match inherited.remove(&addr) {
                Some(fd) => adopt(fd, addr),
                None => bind(addr),
            };
            match socket {
                Ok(socket) => {
                    let socket = Arc::new(socket);
                    let (stop, stop_rx) = watch::channel(false);
                    let stats = Arc::new(ListenerStats::default());
                    tokio::spawn(accept_loop(
                        Arc::clone(&socket),
                        addr,
                        stop_rx,
                        self.accepting.subscribe(),
                        Shared {
                            proxy: Arc::clone(&self.proxy),
                            connections: Arc::clone(&self.connections),
                            stats: Arc::clone(&stats),
                            tls: Arc::clone(&tls),
                            sources: Arc::new(Sources::default()),
                        },
                    ));
                    info!(%addr, "L7 listener accepting");
                    self.listeners.insert(
                        addr,
                        Running {
                            socket,
                            stop,
                            stats,
                            tls,
                        },
                    );
                }
                Err(e) => failed.push(format!("{addr}: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("cannot listen on {}", failed.join("; "))
        }
    }

    fn cert_specs(config: &Config) -> Vec<CertSpec> {
        let mut specs = Vec::new();
        for t in &config.tenants {
            for s in &t.l7 {
                if s.protocol != L7Protocol::Https {
                    continue;
                }
                let Some(tls) = &s.tls else { continue };
                specs.push(CertSpec {
                    listen: s.listen,
                    tenant: t.name.clone(),
                    names: s.hosts.clone(),
                    cert: tls.cert.clone(),
                    key: tls.key.clone(),
                });
            }
        }
        specs
    }

    /// Re-reads certificate files that changed on disk.
    pub fn refresh_certificates(&self) {
        let report = self.certs.refresh();
        for e in &report.errors {
            warn!(error = %e, "certificate not reloaded (the previous one keeps serving)");
        }
    }

    /// Every certificate file (to watch their directories).
    #[must_use]
    pub fn certificate_files(&self) -> Vec<PathBuf> {
        self.certs.files()
    }

    /// The routing snapshot now (for status and metrics).
    #[must_use]
    pub fn routing(&self) -> Arc<Routing> {
        self.proxy.routing.load_full()
    }

    /// Per-listener counters.
    #[must_use]
    pub fn listener_stats(&self) -> Vec<(SocketAddr, Arc<ListenerStats>)> {
        self.listeners
            .iter()
            .map(|(a, r)| (*a, Arc::clone(&r.stats)))
            .collect()
    }

    /// Duplicates of the listening sockets, for the next `lbd`.
    ///
    /// # Errors
    /// When a descriptor cannot be duplicated.
    pub fn sockets(&self) -> io::Result<Vec<(SocketAddr, OwnedFd)>> {
        self.listeners
            .iter()
            .map(|(a, r)| {
                let fd: RawFd = r.socket.as_raw_fd();
                // SAFETY: `fd` is open for as long as `r.socket` lives,
                // which outlasts this borrow.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                Ok((*a, borrowed.try_clone_to_owned()?))
            })
            .collect()
    }

    /// Stops accepting on every listener, asks every connection to finish
    /// its current request and close, and waits until all are closed or
    /// `timeout` passes. Returns how many were still open.
    pub async fn drain(&mut self, timeout: Duration) -> usize {
        for (_, r) in self.listeners.drain() {
            let _ = r.stop.send(true);
        }
        self.connections.drain.send_replace(true);
        let deadline = later(tokio::time::Instant::now(), timeout);
        loop {
            let closed = self.connections.closed.notified();
            let open = self.connections.open.load(Relaxed);
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.connections.open.load(Relaxed);
            }
        }
    }

    /// Adds the L7 counters to `GET /stats`: tenants with sites, listeners.
    pub fn add_stats(&self, config: &Config, stats: &mut crate::api::Stats) {
        let routing = self.routing();
        for t in config.tenants.iter().filter(|t| !t.l7.is_empty()) {
            if let Some(s) = routing.tenants.get(&t.name) {
                stats.l7_tenants.push(crate::api::L7TenantStats {
                    tenant: t.name.clone(),
                    counters: s.view(),
                });
            }
        }
        let mut listeners = self.listener_stats();
        listeners.sort_by_key(|(a, _)| *a);
        for (address, s) in listeners {
            stats.l7_listeners.push(crate::api::L7ListenerStats {
                address,
                connections: s.connections.load(Relaxed),
                tls_handshake_failures: s.tls_handshake_failures.load(Relaxed),
                bad_client_hellos: s.bad_client_hellos.load(Relaxed),
                bad_proxy_headers: s.bad_proxy_headers.load(Relaxed),
                refused_connections: s.refused_connections.load(Relaxed),
                deadline_closes: s.deadline_closes.load(Relaxed),
                open_connections: self.connections.open.load(Relaxed) as u64,
            });
        }
        stats.access_log_lost = self.access_log_lost();
    }

    /// Open client connections.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.connections.open.load(Relaxed)
    }

    /// Access-log lines lost because the writer fell behind.
    #[must_use]
    pub fn access_log_lost(&self) -> u64 {
        self.proxy.log.load().lost()
    }
}

/// A listening socket bound with `SO_REUSEADDR`, `SO_REUSEPORT` and
/// `IP_FREEBIND`.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_ipv6(true)?;
    } else {
        socket.set_freebind(true)?;
    }
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A socket handed over by the previous `lbd`.
fn adopt(fd: OwnedFd, addr: SocketAddr) -> io::Result<TcpListener> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    let local = std.local_addr()?;
    if local != addr {
        return Err(io::Error::other(format!(
            "the handed-over socket listens on {local}, not {addr}"
        )));
    }
    info!(%addr, "L7 listener taken over from the previous lbd");
    TcpListener::from_std(std)
}

/// What every connection of a listener shares.
#[derive(Clone)]
struct Shared {
    proxy: Arc<Proxy>,
    connections: Arc<Connections>,
    stats: Arc<ListenerStats>,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    /// Open connections per source, for `max_connections_per_source`.
    sources: Arc<Sources>,
}

/// A connection's places in the caps counted from `accept`, held until it
/// (and any tunnel made of it) is gone.
struct Open {
    _node: ConnectionGuard,
    _source: Option<SourceGuard>,
}

impl Shared {
    /// The connection's places under `node.max_connections` and the
    /// listener's `max_connections_per_source`, or `None` (counted and
    /// logged) when it is over either.
    fn admit(&self, listen: SocketAddr, client: SocketAddr) -> Option<Open> {
        let node = ConnectionGuard::new(&self.connections);
        let max = self.connections.max.load(Relaxed);
        let over = if node.0.open.load(Relaxed) > max {
            Some("node.max_connections")
        } else {
            None
        };
        let per_source = self
            .proxy
            .routing
            .load()
            .listeners
            .get(&listen)
            .and_then(|l| l.listener.max_connections_per_source);
        let source = match (over, per_source) {
            (None, Some(limit)) => match self.sources.take(client.ip(), limit) {
                Some(g) => Some(g),
                None => {
                    return self.refuse(client, listen, "listener.max_connections_per_source");
                }
            },
            (None, None) => None,
            (Some(rule), _) => return self.refuse(client, listen, rule),
        };
        Some(Open {
            _node: node,
            _source: source,
        })
    }

    fn refuse(&self, client: SocketAddr, listen: SocketAddr, rule: &'static str) -> Option<Open> {
        self.stats.refused_connections.fetch_add(1, Relaxed);
        debug!(%client, %listen, rule, "connection over a cap closed at accept");
        self.proxy.log.load().log(&Entry {
            time: access_log::now(),
            client: Some(client),
            listener: Some(listen),
            decision: "connection_limit",
            rule: Some(rule.to_owned()),
            ..Entry::default()
        });
        None
    }
}

async fn accept_loop(
    socket: Arc<TcpListener>,
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
    mut accepting: watch::Receiver<bool>,
    shared: Shared,
) {
    tokio::select! {
        biased;
        _ = stop.changed() => return,
        held = accepting.wait_for(|a| *a) => if held.is_err() { return },
    }
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = socket.accept() => match accepted {
                Ok((stream, client)) => {
                    shared.stats.connections.fetch_add(1, Relaxed);
                    // Over a cap: closed at once (the stream drops here).
                    let Some(open) = shared.admit(addr, client) else { continue };
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    tokio::spawn(connection(stream, client, addr, shared, open));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    debug!(%addr, "accept loop stopped");
}

/// Whether `ip` is in one of the listener's `trusted_proxies`.
fn trusted_proxy(listener: &Listener, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    listener
        .trusted_proxies
        .iter()
        .any(|&(net, len)| admission::prefix_contains(net, len, ip))
}

/// The client address of a connection from `peer`, and whether `peer` is
/// a trusted proxy: the source of its PROXY header on a `proxy_protocol`
/// listener, else `peer` itself. `None`: a trusted proxy sent no valid
/// header (counted and logged; the connection is to be closed).
async fn client_of(
    stream: &mut TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
    listener: &ListenerRouting,
    shared: &Shared,
) -> Option<(SocketAddr, bool)> {
    let trusted = trusted_proxy(&listener.listener, peer.ip());
    if !(trusted && listener.listener.proxy_protocol) {
        return Some((peer, trusted));
    }
    match passthrough::read_proxy_v2(stream, listener.header_timeout).await {
        Ok(ProxyHeader::Proxy { source, .. }) => Some((
            SocketAddr::new(source.ip().to_canonical(), source.port()),
            trusted,
        )),
        Ok(ProxyHeader::Local) => Some((peer, trusted)),
        Err(e) => {
            shared.stats.bad_proxy_headers.fetch_add(1, Relaxed);
            log_bad_proxy_header(shared, peer, listen, &e);
            None
        }
    }
}

/// One client connection, from accept to close. `peer` is the TCP peer;
/// the client is that, or the source of a trusted proxy's PROXY header.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
    shared: Shared,
    open: Open,
) {
    let routing = shared.proxy.routing.load_full();
    let Some(listener) = routing.listeners.get(&listen).cloned() else {
        return;
    };
    let started = tokio::time::Instant::now();
    let header_timeout = listener.header_timeout;
    let Some((client, trusted)) = client_of(&mut stream, peer, listen, &listener, &shared).await
    else {
        return;
    };
    if !listener.tls {
        // The tenant (and its connection count) comes with the first
        // request.
        let mut info = ConnInfo::new(client, listen, None, false);
        info.from_trusted_proxy = trusted;
        let info = info.holding(open);
        let deadlines = Deadlines::of_listener(&listener);
        let fd = stream.as_raw_fd();
        serve_http(stream, info, (false, fd), deadlines, &listener, &shared).await;
        return;
    }

    // One header timeout for the PROXY header and the ClientHello together.
    let hello_timeout = header_timeout.saturating_sub(started.elapsed());
    let hello =
        passthrough::read_client_hello(&mut stream, passthrough::MAX_CLIENT_HELLO, hello_timeout)
            .await;
    let (first_bytes, sni) = match hello {
        Ok((bytes, hello)) => (bytes, hello.sni),
        Err(e) => {
            shared.stats.bad_client_hellos.fetch_add(1, Relaxed);
            shared.stats.tls_handshake_failures.fetch_add(1, Relaxed);
            if matches!(e, HelloError::Timeout) {
                shared.stats.deadline_closes.fetch_add(1, Relaxed);
                reset_on_close(stream.as_raw_fd());
            }
            log_refused(&shared, client, listen, None, &e);
            return;
        }
    };
    let site = sni.as_deref().and_then(|s| listener.site_for_host(s));
    if let Some(id) = site
        && listener.sites[id].config.protocol == L7Protocol::TlsPassthrough
    {
        passthrough_to_pool(
            stream,
            (first_bytes, sni),
            client,
            listen,
            &listener,
            id,
            &routing,
            &shared,
        )
        .await;
        return;
    }

    let tenant_stats = site.map(|id| Arc::clone(&listener.sites[id].stats));
    // The SNI names the tenant: count the connection now, and close it
    // before the handshake when the tenant is at its max_connections.
    let slot = site.map(|id| ConnSlot::take(&shared.proxy.policy, &listener.sites[id].tenant));
    if let (Some(ConnSlot::Refused { tenant }), Some(stats)) = (&slot, &tenant_stats) {
        refuse_connection(&shared, client, listen, sni, tenant, stats);
        return;
    }
    let replay = Replay::new(first_bytes, stream);
    let Some(tls) = handshake(replay, header_timeout, &shared, tenant_stats.as_deref()).await
    else {
        debug!(%client, %listen, sni = ?sni, "TLS handshake failed or timed out");
        return;
    };
    let mut info = ConnInfo::new(client, listen, sni, true);
    info.from_trusted_proxy = trusted;
    // In the tenant's active connections for as long as the connection
    // or a tunnel made of it lives, like its place in max_connections.
    let active = tenant_stats.map(ActiveConnection::new);
    let info = info.holding((open, active));
    if let Some(slot) = slot {
        let _ = info.slot.set(slot);
    }
    // An h2 session has no request heads to time, from its start.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    // The SNI's tenant owns the session: its site's timeouts apply.
    let deadlines = site.map_or_else(
        || Deadlines::of_listener(&listener),
        |id| Deadlines::of_site(&listener.sites[id].config.timeouts),
    );
    let fd = tls.get_ref().0.inner.as_raw_fd();
    serve_http(tls, info, (h2, fd), deadlines, &listener, &shared).await;
}

/// The TLS handshake of a terminated connection, within `timeout`; a
/// failure is counted (for the listener and the SNI's tenant).
async fn handshake(
    replay: Replay<TcpStream>,
    timeout: Duration,
    shared: &Shared,
    tenant_stats: Option<&super::stats::TenantStats>,
) -> Option<tokio_rustls::server::TlsStream<Replay<TcpStream>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.load_full());
    let mut accept = acceptor.accept(replay);
    let result = tokio::time::timeout(timeout, &mut accept).await;
    if let Ok(Ok(tls)) = result {
        return Some(tls);
    }
    shared.stats.tls_handshake_failures.fetch_add(1, Relaxed);
    if let Some(s) = tenant_stats {
        s.tls_handshake_failures.fetch_add(1, Relaxed);
    }
    if let Ok(Err(e)) = result {
        debug!(error = %e, reason = tls::handshake_failure_reason(&e), "TLS handshake failed");
    } else {
        shared.stats.deadline_closes.fetch_add(1, Relaxed);
        // Too slow to take the server's handshake (a tiny window, say): a
        // reset frees the socket, a FIN would wait behind it.
        if let Some(io) = accept.get_ref() {
            reset_on_close(io.inner.as_raw_fd());
        }
    }
    None
}

/// Serves HTTP/1.1 and h2 on `io` until the client closes, the connection
/// idles out, a deadline passes, or the drain asks it to finish.
///
/// The connection's clock, checked by one timer:
/// * **head**: an HTTP/1 request head must arrive within the header
///   timeout of its first byte (of the connection's start, for the first
///   one): a slowloris client is closed. Between requests nothing is due.
/// * **idle**: with no request or response under way, the connection
///   closes after the idle timeout. Only requests count as activity, so an
///   h2 client that keeps sending `PING`, `SETTINGS` or `WINDOW_UPDATE` frames
///   idles out like any other.
/// * **send**: a response that the client has not taken for the send
///   timeout is abandoned ([`ConnInfo::abandon_stalled`]): an HTTP/1
///   connection then closes; an h2 stream is reset when next polled, and
///   the connection closes too when nothing at all reached the client for
///   that long.
async fn serve_http<S>(
    io: S,
    info: ConnInfo,
    (h2, fd): (bool, RawFd),
    timeouts: Deadlines,
    listener: &ListenerRouting,
    shared: &Shared,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = Arc::new(Requests::new(fd));
    requests.h2.store(h2, Relaxed);
    let io = Activity {
        inner: io,
        requests: Arc::clone(&requests),
    };
    let builder = http_builder(listener.max_header_bytes);
    let proxy = Arc::clone(&shared.proxy);
    let client = info.client;
    let info = Arc::new(info);
    let conn_info = Arc::clone(&info);
    let counted = Arc::clone(&requests);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let proxy = Arc::clone(&proxy);
        let info = Arc::clone(&info);
        let guard = RequestGuard::new(&counted, req.version() == http::Version::HTTP_2);
        let h1 = req.version() < http::Version::HTTP_2;
        async move {
            let mut resp = proxy.handle(req, info).await;
            // A draining HTTP/1.1 connection ends after this response, at
            // a moment both sides agree on: closing it between requests
            // could cut the client's next request on the wire.
            if h1
                && guard.0.closing.load(Relaxed)
                && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            drop(guard);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    let mut conn = pin!(conn);
    let mut drain = shared.connections.drain.subscribe();
    // Set once the drain (or the idle timeout) asked the connection to end:
    // when.
    let mut closing: Option<tokio::time::Instant> = None;
    if *drain.borrow() {
        requests.closing.store(true, Relaxed);
        closing = Some(tokio::time::Instant::now());
    }
    let mut shut = false;
    // When the connection was asked to close: it then has the send timeout
    // to flush and go (a client that stopped reading would hold it open).
    let mut shut_at: Option<u64> = None;
    // Nothing can be due before the first head, idle or stall deadline.
    let first = STALL_CHECK
        .min(timeouts.header)
        .min(timeouts.idle)
        .min(timeouts.send);
    let mut clock = pin!(tokio::time::sleep(first));
    let mut drain_tick = tokio::time::interval(DRAIN_CHECK);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%client, error = %e, "connection ended with an error");
                }
                break;
            }
            changed = drain.changed(), if closing.is_none() => {
                if changed.is_ok() {
                    requests.closing.store(true, Relaxed);
                    closing = Some(tokio::time::Instant::now());
                }
            }
            () = clock.as_mut() => {
                let busy = requests.inflight.load(Relaxed) > 0 || conn_info.responses_open() > 0;
                if shut && !busy {
                    shut_at.get_or_insert_with(now_ms);
                }
                match timeouts.check(&requests, &conn_info, busy, shut_at) {
                    Due::Nothing(next) => {
                        clock.as_mut().reset(later(tokio::time::Instant::now(), next));
                    }
                    Due::Idle => {
                        shut = true;
                        closing.get_or_insert_with(tokio::time::Instant::now);
                        conn.as_mut().graceful_shutdown();
                        clock.as_mut().reset(later(tokio::time::Instant::now(), CLOCK_MIN));
                    }
                    Due::Close(why) => {
                        debug!(%client, why, "connection closed");
                        shared.stats.deadline_closes.fetch_add(1, Relaxed);
                        // A reset, not a FIN queued behind bytes the client
                        // is not taking: the kernel would keep the socket
                        // and its buffers for minutes after we let go.
                        reset_on_close(fd);
                        break;
                    }
                }
            }
            _ = drain_tick.tick(), if closing.is_some() && !shut => {
                if closing.is_some_and(|since| requests.may_end_draining(since)) {
                    shut = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Makes closing `fd` send a reset and drop what is queued (`SO_LINGER`
/// on, zero seconds).
fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let Ok(len) = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()) else {
        return;
    };
    // SAFETY: `fd` is the connection's socket, open until the caller drops
    // it right after; `linger` is a valid `struct linger` of `len` bytes.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            len,
        );
    }
}

/// The client socket's send side, from the kernel: bytes still held for
/// the client (written, not acknowledged: `SIOCOUTQ`), and every byte it
/// acknowledged so far (`TCP_INFO`). A client that stopped reading leaves
/// the first non-zero and the second still, however small the response.
fn send_queue(fd: RawFd) -> Option<(u64, u64)> {
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is a TCP socket the caller keeps open for this call;
    // SIOCOUTQ writes one c_int through the pointer, which is valid.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut queued) } != 0 {
        return None;
    }
    // SAFETY: an all-zero tcp_info is a valid value of the plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).ok()?;
    // SAFETY: `info` and `len` are valid for writes of `len` bytes; the
    // kernel writes at most that many (older kernels fewer, leaving zeros).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    (rc == 0).then(|| (u64::try_from(queued).unwrap_or(0), info.tcpi_bytes_acked))
}

/// `at + after`, or decades from `at` when that is not representable (no
/// panic, whatever the configuration says).
fn later(at: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    at.checked_add(after)
        .unwrap_or_else(|| at + Duration::from_hours(30 * 365 * 24))
}

/// The HTTP/1.1 and h2 server settings of a listener's connections.
fn http_builder(
    max_header: usize,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // No hyper header timeout: its timer also runs while a keep-alive
    // connection waits for its next request, which would make it the idle
    // timeout. The connection's own head deadline starts at a head's first
    // byte.
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(max_header.max(8192) * 2)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// A connection's deadlines (see [`serve_http`]).
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    header: Duration,
    idle: Duration,
    send: Duration,
}

/// What the connection's clock found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Look again this much later.
    Nothing(Duration),
    /// Idle: close gracefully.
    Idle,
    /// A deadline passed: close now.
    Close(&'static str),
}

impl Deadlines {
    /// Before the tenant is known: the longest of the listener's sites.
    fn of_listener(l: &ListenerRouting) -> Self {
        Self {
            header: l.header_timeout,
            idle: l.idle_timeout,
            send: l.send_timeout,
        }
    }

    /// A site's own.
    fn of_site(t: &crate::config::Timeouts) -> Self {
        Self {
            header: t.header,
            idle: t.idle,
            send: t.send,
        }
    }

    fn check(&self, r: &Requests, info: &ConnInfo, busy: bool, shut_at: Option<u64>) -> Due {
        let now = now_ms();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let left = |since: u64, limit: Duration| {
            Duration::from_millis(since.saturating_add(ms(limit)).saturating_sub(now))
        };
        let queue = r.kernel_queue(now, ms(self.send));
        if queue == Queue::Stalled {
            return Due::Close("send_timeout");
        }
        if let (Some(at), false) = (shut_at, busy) {
            // Asked to close, nothing under way: it has the send timeout.
            let remaining = left(at, self.send);
            if remaining.is_zero() {
                return Due::Close("close_timeout");
            }
            return Due::Nothing(remaining.min(STALL_CHECK).max(CLOCK_MIN));
        }
        if busy {
            // Activity: the idle time starts again when this ends.
            r.last_change_ms.store(now, Relaxed);
            let abandoned = info.abandon_stalled(self.send);
            if abandoned.http1 > 0 {
                return Due::Close("send_timeout");
            }
            if abandoned.h2_streams > 0
                && now.saturating_sub(r.last_write_ms.load(Relaxed)) >= ms(self.send)
            {
                return Due::Close("send_timeout");
            }
            return Due::Nothing(STALL_CHECK.min(self.send));
        }
        let head = r.head_since_ms.load(Relaxed);
        if head != 0 && !r.h2.load(Relaxed) {
            let remaining = left(head, self.header);
            if remaining.is_zero() {
                return Due::Close("header_timeout");
            }
            return Due::Nothing(remaining.max(CLOCK_MIN));
        }
        let remaining = left(r.last_change_ms.load(Relaxed), self.idle);
        if remaining.is_zero() {
            // Idle with the last answers still unread in the kernel: the
            // client is not coming back for more, and a graceful close
            // would wait behind those bytes.
            if queue == Queue::Empty {
                Due::Idle
            } else {
                Due::Close("idle_unread")
            }
        } else if queue == Queue::Moving {
            // Bytes still on their way to the client: watched every
            // second. An idle connection with none sleeps to its deadline.
            Due::Nothing(remaining.min(STALL_CHECK).max(CLOCK_MIN))
        } else {
            Due::Nothing(remaining.max(CLOCK_MIN))
        }
    }
}

/// A connection's requests, for its clock and the drain.
#[derive(Debug)]
struct Requests {
    started: AtomicU64,
    /// Requests whose response head is not sent yet.
    inflight: AtomicUsize,
    /// When a request last started or ended ([`now_ms`]).
    last_change_ms: AtomicU64,
    /// When the first byte of a request head not complete yet arrived; 0
    /// when none is being read.
    head_since_ms: AtomicU64,
    /// When bytes were last written to the client.
    last_write_ms: AtomicU64,
    /// The connection speaks h2 (no request heads to time).
    h2: AtomicBool,
    /// The connection is draining: HTTP/1.1 responses say
    /// `Connection: close`.
    closing: AtomicBool,
    /// The client's socket's send queue, watched for a client that stopped
    /// reading.
    unacked: Unacked,
}

/// What [`send_queue`] last said, and since when the client has
/// acknowledged nothing while bytes waited for it.
#[derive(Debug)]
struct Unacked {
    /// The client's socket (open while the connection is).
    fd: RawFd,
    /// Bytes the client had acknowledged at the last look.
    acked: AtomicU64,
    /// Since when bytes have waited with no new acknowledgement (0: none
    /// waiting, or the client is taking them).
    stuck_since_ms: AtomicU64,
}

/// The client socket's send queue, as the clock last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// Nothing waits for the client (or the socket cannot say).
    Empty,
    /// Bytes wait, and the client took some lately.
    Moving,
    /// Bytes have waited for the send timeout with none acknowledged.
    Stalled,
}

impl Requests {
    /// The kernel's queue for the client: [`Queue::Stalled`] once bytes
    /// have waited for `send_ms` while the client acknowledged none.
    fn kernel_queue(&self, now: u64, send_ms: u64) -> Queue {
        let Some((queued, acked)) = send_queue(self.unacked.fd) else {
            return Queue::Empty;
        };
        let u = &self.unacked;
        let before = u.acked.swap(acked, Relaxed);
        if queued == 0 {
            u.stuck_since_ms.store(0, Relaxed);
            return Queue::Empty;
        }
        if acked > before {
            u.stuck_since_ms.store(0, Relaxed);
            return Queue::Moving;
        }
        let since = u.stuck_since_ms.load(Relaxed);
        if since == 0 {
            u.stuck_since_ms.store(now, Relaxed);
            return Queue::Moving;
        }
        if now.saturating_sub(since) >= send_ms {
            Queue::Stalled
        } else {
            Queue::Moving
        }
    }
}

impl Requests {
    /// Whether a connection draining since `since` may be shut now. h2
    /// says goodbye with GOAWAY, which no request can cross. Closing an
    /// HTTP/1.1 connection between requests can cut a request the client
    /// is sending at that instant, so a draining one ends after its next
    /// response (which carries `Connection: close`), or once it has had no
    /// request for a grace period and is not receiving a head.
    fn may_end_draining(&self, since: tokio::time::Instant) -> bool {
        self.h2.load(Relaxed)
            || self.inflight.load(Relaxed) > 0
            || (since.elapsed() >= DRAIN_GRACE
                && self.head_since_ms.load(Relaxed) == 0
                && now_ms().saturating_sub(self.last_change_ms.load(Relaxed)) >= DRAIN_GRACE_MS)
    }

    fn new(fd: RawFd) -> Self {
        let now = now_ms();
        Self {
            started: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(now),
            // The first request is due from the start.
            head_since_ms: AtomicU64::new(now),
            last_write_ms: AtomicU64::new(now),
            h2: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            unacked: Unacked {
                fd,
                acked: AtomicU64::new(0),
                stuck_since_ms: AtomicU64::new(0),
            },
        }
    }
}

/// Counts one request as started and in flight until dropped.
struct RequestGuard(Arc<Requests>);

impl RequestGuard {
    fn new(r: &Arc<Requests>, h2: bool) -> Self {
        r.started.fetch_add(1, Relaxed);
        r.inflight.fetch_add(1, Relaxed);
        r.head_since_ms.store(0, Relaxed);
        r.last_change_ms.store(now_ms(), Relaxed);
        if h2 && !r.h2.load(Relaxed) {
            r.h2.store(true, Relaxed);
        }
        Self(Arc::clone(r))
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.last_change_ms.store(now_ms(), Relaxed);
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

/// A passthrough connection: to a backend of the site's pool.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the arguments are the connection's facts"
)]
async fn passthrough_to_pool(
    mut stream: TcpStream,
    (first_bytes, sni): (Vec<u8>, Option<String>),
    client: SocketAddr,
    listen: SocketAddr,
    listener: &ListenerRouting,
    site: usize,
    routing: &Routing,
    shared: &Shared,
) {
    let start = Instant::now();
    let s = &listener.sites[site];
    // No request to answer: a connection the tenant's ACL refuses, or one
    // over its max_connections, is closed.
    let policy = &shared.proxy.policy;
    let slot = policy
        .check_acl(&s.tenant, client.ip())
        .and_then(|()| policy.connect(&s.tenant));
    let _slot = match slot {
        Ok(guard) => guard,
        Err(r) => {
            s.stats.refused(r.reason);
            s.stats.refused_connections.fetch_add(1, Relaxed);
            shared.proxy.log.load().log(&Entry {
                time: access_log::now(),
                tenant: Some(s.tenant.clone()),
                client: Some(client),
                listener: Some(listen),
                sni: sni.clone(),
                protocol: Some("tls"),
                decision: r.reason.code(),
                rule: Some(r.rule),
                total_ms: start.elapsed().as_secs_f64() * 1e3,
                ..Entry::default()
            });
            return;
        }
    };
    let _active = ActiveConnection::new(Arc::clone(&s.stats));
    let mut entry = Entry {
        time: access_log::now(),
        tenant: Some(s.tenant.clone()),
        client: Some(client),
        listener: Some(listen),
        sni,
        protocol: Some("tls"),
        pool: s.config.pool.clone(),
        decision: "passthrough",
        ..Entry::default()
    };
    let pool = s
        .config
        .pool
        .as_deref()
        .and_then(|p| routing.pool(&s.tenant, p));
    let Some(pool) = pool else {
        entry.decision = "no_backend";
        shared.proxy.log.load().log(&entry);
        return;
    };
    let key = routing::hash_key(&pool.l7.hash_on, client, &http::HeaderMap::new());
    let mut tried = Vec::new();
    let (backend, picked) = loop {
        let Some(picked) = pool.balancer.pick(key.as_deref(), &tried) else {
            entry.decision = "no_backend";
            entry.attempts = u32::try_from(tried.len()).unwrap_or(u32::MAX);
            entry.total_ms = start.elapsed().as_secs_f64() * 1e3;
            shared.proxy.log.load().log(&entry);
            s.stats.refused_connections.fetch_add(1, Relaxed);
            return;
        };
        tried.push(picked.addr);
        match tokio::time::timeout(s.config.timeouts.connect, TcpStream::connect(picked.addr)).await
        {
            Ok(Ok(b)) => break (b, picked),
            _ => picked.failure(),
        }
    };
    picked.success();
    let _ = backend.set_nodelay(true);
    entry.upstream = Some(picked.addr);
    entry.attempts = u32::try_from(tried.len()).unwrap_or(u32::MAX);
    entry.upstream_ms = Some(start.elapsed().as_secs_f64() * 1e3);
    let header = pool
        .l7
        .proxy_protocol
        .then(|| passthrough::proxy_v2_header(client, listen));
    let spliced = passthrough::splice_report(
        &mut stream,
        backend,
        header.as_deref(),
        &first_bytes,
        s.config.timeouts.idle,
    )
    .await;
    s.stats
        .bytes_in
        .fetch_add(spliced.client_to_backend, Relaxed);
    s.stats
        .bytes_out
        .fetch_add(spliced.backend_to_client, Relaxed);
    entry.bytes_in = spliced.client_to_backend;
    entry.bytes_out = spliced.backend_to_client;
    entry.total_ms = start.elapsed().as_secs_f64() * 1e3;
    match &spliced.end {
        passthrough::SpliceEnd::Closed => {}
        passthrough::SpliceEnd::Idle => debug!("passthrough connection idled out"),
        passthrough::SpliceEnd::Error(e) => debug!(error = %e, "passthrough connection failed"),
    }
    shared.proxy.log.load().log(&entry);
}

/// A TLS connection over its tenant's `max_connections`: counted, logged
/// and closed before the handshake.
fn refuse_connection(
    shared: &Shared,
    client: SocketAddr,
    listen: SocketAddr,
    sni: Option<String>,
    tenant: &str,
    stats: &super::stats::TenantStats,
) {
    let r = super::admission::Refusal::connection_limit();
    stats.refused(r.reason);
    stats.refused_connections.fetch_add(1, Relaxed);
    debug!(%client, %listen, tenant, "connection over the tenant's max_connections closed");
    shared.proxy.log.load().log(&Entry {
        time: access_log::now(),
        tenant: Some(tenant.to_owned()),
        client: Some(client),
        listener: Some(listen),
        sni,
        protocol: Some("tls"),
        decision: r.reason.code(),
        rule: Some(r.rule),
        ..Entry::default()
    });
}

fn log_refused(
    shared: &Shared,
    client: SocketAddr,
    listen: SocketAddr,
    sni: Option<String>,
    e: &HelloError,
) {
    debug!(%client, %listen, error = %e, "connection closed before TLS");
    shared.proxy.log.load().log(&Entry {
        time: access_log::now(),
        client: Some(client),
        listener: Some(listen),
        sni,
        protocol: Some("tls"),
        decision: "bad_client_hello",
        rule: Some(e.to_string()),
        ..Entry::default()
    });
}

/// A connection from a trusted proxy without a valid PROXY header: closed,
/// and logged with the proxy's address.
fn log_bad_proxy_header(
    shared: &Shared,
    peer: SocketAddr,
    listen: SocketAddr,
    e: &ProxyHeaderError,
) {
    debug!(%peer, %listen, error = %e, "connection from a trusted proxy closed: bad PROXY header");
    shared.proxy.log.load().log(&Entry {
        time: access_log::now(),
        client: Some(peer),
        listener: Some(listen),
        decision: "bad_proxy_header",
        rule: Some(e.to_string()),
        ..Entry::default()
    });
}

/// A stream that first yields bytes already read from it.
struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Replay<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream that tells the connection's clock when a request head starts
/// arriving and when bytes last reached the client.
struct Activity<S> {
    inner: S,
    requests: Arc<Requests>,
}

impl<S> Activity<S> {
    fn wrote(&self) {
        self.requests.last_write_ms.store(now_ms(), Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let r = &self.requests;
        // Bytes between requests start the next head (HTTP/1; bytes during
        // a request are its body).
        if buf.filled().len() > before
            && r.inflight.load(Relaxed) == 0
            && r.head_since_ms.load(Relaxed) == 0
        {
            r.head_since_ms.store(now_ms(), Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
