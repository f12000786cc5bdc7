//! The L7 part of `lb.toml`: `[[tenant.l7]]` sites, the `[[listener]]`
//! settings of shared addresses, and the pool keys only the L7 proxy reads.
//!
//! A site is one tenant's presence on one listen address: its host names,
//! its certificate, its routes. Sites with the same `listen` share one
//! socket; `lbd` tells their tenants apart by SNI, Host or path prefix (in
//! the order the address's `[[listener]]` gives). Everything that could send
//! one tenant's request to another tenant is refused here: a host name on
//! two tenants, two names with the same SNI hash, a route naming another
//! tenant's pool.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    Ctx, FieldPath, Protocol, Tenant, VipLimits,
    duration::serialize_duration,
    raw::RawVipLimits,
    validate::{VipOwners, check_unicast, parse_prefix},
};

// ---- Defaults and bounds (the README lists these) ----

/// Default `timeouts.connect`: to open a backend connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default `timeouts.header`: for a client to send a request's headers.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `timeouts.idle`: an idle client connection is closed after this.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_mins(1);
/// Default `timeouts.request`: the whole exchange with the backend.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_mins(1);
/// Accepted range of every `timeouts` key: from 1ms to a day. Deadlines are
/// `now + timeout`, so the bound also keeps that arithmetic far from
/// overflowing.
pub const L7_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_hours(24);
/// Default `max_header_bytes`.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Accepted range of `max_header_bytes`: 1 KiB to 1 MiB.
pub const MAX_HEADER_BYTES_RANGE: RangeInclusive<usize> = 1024..=1024 * 1024;
/// Default `max_body_bytes`.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Accepted range of `max_body_bytes`: 0 (no request body) to 64 GiB.
pub const MAX_BODY_BYTES_RANGE: RangeInclusive<u64> = 0..=64 * 1024 * 1024 * 1024;
/// Default `retries`: extra attempts, on another backend, of an idempotent
/// request whose backend gave no response (refused, closed or reset).
pub const DEFAULT_RETRIES: u32 = 2;
/// Most `retries`.
pub const MAX_RETRIES: u32 = 10;
/// Default outlier detection: consecutive failures that eject a backend.
pub const DEFAULT_OUTLIER_FAILURES: u32 = 5;
/// Accepted range of `outlier.consecutive_failures`.
pub const OUTLIER_FAILURES_RANGE: RangeInclusive<u32> = 1..=1000;
/// Default outlier detection: the first ejection's length (doubled for each
/// further ejection, up to [`MAX_OUTLIER_EJECTION`]).
pub const DEFAULT_OUTLIER_EJECTION: Duration = Duration::from_secs(10);
/// Longest ejection.
pub const MAX_OUTLIER_EJECTION: Duration = Duration::from_mins(5);
/// Accepted range of `outlier.ejection`.
pub const OUTLIER_EJECTION_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(1)..=MAX_OUTLIER_EJECTION;
/// Default `node.drain_timeout`: how long a stopping `lbd` lets in-flight
/// requests and connections finish.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Accepted range of `node.drain_timeout`: 0 (cut every connection at once)
/// to a day.
pub const DRAIN_TIMEOUT_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_hours(24);
/// Most entries of a listener's `trusted_proxies` (each connection is
/// checked against all of them).
pub(super) const MAX_TRUSTED_PROXIES: usize = 1024;
/// Longest host name (RFC 1035, without the trailing dot).
const MAX_HOST_LEN: usize = 253;
/// Largest `hsts` max-age: two years, in seconds (what the HSTS preload
/// list asks for at most; a longer pin is a mistake that cannot be undone
/// before it expires in every browser that saw it).
pub(super) const MAX_HSTS_MAX_AGE: u64 = 2 * 365 * 24 * 60 * 60;

// ---- Public types ----

/// `[[tenant.l7]]`: one tenant's site on one listen address, served by `lbd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct L7Site {
    /// Address and port `lbd` listens on (shared with other tenants' sites
    /// that name the same one).
    pub listen: SocketAddr,
    /// What the listener speaks.
    pub protocol: L7Protocol,
    /// Normalised host names (lower case, no trailing dot); `*.x` matches one
    /// label left of `x`. Matched against SNI and Host.
    pub hosts: Vec<String>,
    /// Certificate and key (`https` only).
    pub tls: Option<TlsFiles>,
    /// Requests whose path starts with this prefix belong to this tenant
    /// (with `identify` containing `"path"`).
    pub path_prefix: Option<String>,
    /// Remove `path_prefix` from the path before proxying.
    pub strip_path_prefix: bool,
    /// Routes, tried in order (`http` and `https`).
    pub routes: Vec<Route>,
    /// The pool that receives the connections (`tls_passthrough` only).
    pub pool: Option<String>,
    pub timeouts: Timeouts,
    /// Largest request head (request line and headers) accepted; larger
    /// ones get 431.
    pub max_header_bytes: usize,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: u64,
    /// Extra attempts of an idempotent request whose backend could not be
    /// connected to, each on a backend not tried yet.
    pub retries: u32,
    /// Collapse runs of `/` in the path before routing.
    pub merge_slashes: bool,
    /// Let paths with `%2F` or `%5C` through (otherwise 400).
    pub allow_encoded_slashes: bool,
    /// `Upgrade` tokens proxied as tunnels (lower case); any other
    /// `Upgrade` is removed from the request.
    pub upgrades: Vec<String>,
    /// The `Strict-Transport-Security` value put on every response of the
    /// site (`https` only), e.g. `max-age=31536000; includeSubDomains`.
    pub hsts: Option<String>,
}

/// Default `upgrades`.
pub(super) const DEFAULT_UPGRADES: &[&str] = &["websocket"];
/// Most `upgrades` a site may list.
pub(super) const MAX_UPGRADES: usize = 16;

/// `l7.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L7Protocol {
    /// TLS terminated by `lbd`, then HTTP/1.1 or h2 (by ALPN).
    Https,
    /// Plain HTTP/1.1 (h2 with prior knowledge too).
    Http,
    /// TLS kept by the backend: `lbd` reads the `ClientHello`'s SNI and copies
    /// bytes. Shares a listener with `https` sites.
    TlsPassthrough,
}

/// `l7.tls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first. Relative paths are relative to the
    /// configuration file's directory.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// One of `l7.routes`: the conditions all hold -> the request goes to `pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Normalised host (exact or `*.` wildcard), one of the site's hosts.
    pub host: Option<String>,
    /// Path prefix, matched on whole segments (`/api` matches `/api` and
    /// `/api/x`, not `/apix`).
    pub path_prefix: Option<String>,
    /// Upper-case method.
    pub method: Option<String>,
    /// A header (lower-case name) and its exact value.
    pub header: Option<(String, String)>,
    /// Pool of the same tenant.
    pub pool: String,
    /// Remove the route's `path_prefix` before proxying.
    pub strip_prefix: bool,
}

/// `l7.timeouts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    #[serde(serialize_with = "serialize_duration")]
    pub connect: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub header: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub idle: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub request: Duration,
    /// How long a response may make no progress toward the client (a
    /// client that stopped reading) before it is abandoned. Defaults to
    /// `idle`.
    #[serde(serialize_with = "serialize_duration")]
    pub send: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            header: DEFAULT_HEADER_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
            send: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// `[[listener]]`, or its defaults for an address without one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub address: SocketAddr,
    /// How a request's tenant is found, in order.
    pub identify: Vec<Identify>,
    /// Tenant of requests that nothing identifies (and of handshakes with
    /// an unknown SNI).
    pub default_tenant: Option<String>,
    /// Plain-HTTP listener: answer every request with a redirect to the
    /// same URL over HTTPS.
    pub redirect_https: bool,
    /// The address's packet limits, enforced in XDP before `lbd` sees the
    /// packets.
    pub limits: VipLimits,
    /// Connections open at once from one client (an IPv4 address or an
    /// IPv6 /64), counted from `accept`; `None`: no limit.
    pub max_connections_per_source: Option<u32>,
    /// Source prefixes (network address, length) of the proxies in front
    /// of `lbd`: only connections from them have their `X-Forwarded-For`
    /// extended rather than replaced, or may carry a PROXY header.
    pub trusted_proxies: Vec<(IpAddr, u8)>,
    /// A connection from a trusted proxy starts with a PROXY protocol v2
    /// header, whose source becomes the client address
    /// (`proxy_protocol = "v2"`).
    pub proxy_protocol: bool,
}

/// Bounds of `listener.max_connections_per_source`.
pub(super) const MAX_CONNECTIONS_PER_SOURCE_RANGE: RangeInclusive<u32> = 1..=1_000_000;

/// One entry of `listener.identify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Identify {
    /// The TLS server name.
    Sni,
    /// The Host header (or h2 `:authority`).
    Host,
    /// A site's `path_prefix`.
    Path,
    /// The `X-Tenant-ID` header, trusted only when the request also
    /// authenticates as that tenant (its API key or JWT).
    Header,
    /// The tenant claim of a bearer JWT, which must verify with that
    /// tenant's keys.
    Jwt,
}

/// A pool's `balance`: how the L7 proxy picks a backend (the XDP path
/// always uses the pool's Maglev ring).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two random choices on in-flight requests.
    LeastRequest,
    /// Consistent hashing of `hash_on` (sticky).
    Maglev,
}

/// A pool's `hash_on` (with `balance = "maglev"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub enum HashOn {
    /// The client's IP address.
    #[default]
    ClientIp,
    /// A request header's value (lower-case name).
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

/// A pool's `backend_protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    #[default]
    Http1,
    /// h2 (with prior knowledge on plain connections, by ALPN over TLS).
    H2,
}

/// A pool's `backend_tls`: the proxy speaks TLS to the backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendTls {
    /// Name sent as SNI and verified; default: the backend's IP address.
    pub server_name: Option<String>,
    /// PEM file of the CAs to trust; default: none, which is an error —
    /// there is no system trust store on purpose (backends are private).
    pub ca: PathBuf,
}

/// The pool keys only the L7 proxy reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolL7 {
    pub balance: Balance,
    pub hash_on: HashOn,
    pub backend_protocol: BackendProtocol,
    pub backend_tls: Option<BackendTls>,
    /// Send a PROXY protocol v2 header first (`tls_passthrough` sites).
    pub proxy_protocol: bool,
    pub outlier: Outlier,
}

/// A pool's `outlier`: passive ejection of failing backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outlier {
    pub consecutive_failures: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub ejection: Duration,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: DEFAULT_OUTLIER_FAILURES,
            ejection: DEFAULT_OUTLIER_EJECTION,
        }
    }
}

/// `node.access_log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub enum AccessLog {
    /// One JSON line per request on standard output.
    #[default]
    Stdout,
    Stderr,
    /// Appended to a file (reopened on reload, for log rotation).
    File(PathBuf),
    Off,
}

/// One of a site's `upgrades`: an HTTP token, lower-cased. `h2c` is
/// refused: its tunnel would carry h2 straight to the backend, past every
/// route and policy of the proxy.
fn check_upgrade(token: &str) -> Result<String, String> {
    let valid = !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
    if !valid {
        return Err(format!(
            "{token:?} is not an Upgrade token (expected a protocol name like \"websocket\")"
        ));
    }
    let token = token.to_ascii_lowercase();
    if token == "h2c" || token.starts_with("h2c/") {
        return Err(
            "h2c cannot be an upgrade: its tunnel would bypass the proxy's routes and policy; \
             lbd speaks h2 to clients itself (ALPN, or prior knowledge on plain HTTP)"
                .to_owned(),
        );
    }
    Ok(token)
}

/// Lower case, without one trailing dot: how host names, SNI and Host
/// headers are compared.
#[must_use]
pub fn normalise_host(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The SNI-derived tenant hash of a normalised name (FNV-1a, 64 bits): the
/// key of the `LB_SNI` map. Stable across versions and nodes.
#[must_use]
pub fn sni_hash(normalised: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in normalised.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---- What serde decodes ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawL7 {
    listen: String,
    protocol: Option<L7Protocol>,
    #[serde(default)]
    hosts: Vec<String>,
    tls: Option<RawTls>,
    path_prefix: Option<String>,
    strip_path_prefix: Option<bool>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    pool: Option<String>,
    timeouts: Option<RawTimeouts>,
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    retries: Option<u32>,
    merge_slashes: Option<bool>,
    allow_encoded_slashes: Option<bool>,
    upgrades: Option<Vec<String>>,
    hsts: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<String>,
    path_prefix: Option<String>,
    method: Option<String>,
    header: Option<RawHeaderMatch>,
    pool: String,
    strip_prefix: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<String>,
    header: Option<String>,
    idle: Option<String>,
    request: Option<String>,
    send: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    address: String,
    identify: Option<Vec<Identify>>,
    default_tenant: Option<String>,
    redirect_https: Option<bool>,
    limits: Option<RawVipLimits>,
    max_connections_per_source: Option<u32>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    proxy_protocol: Option<String>,
}

/// The L7 keys of `[[tenant.pool]]`, flattened into `RawPool`.
pub(super) struct RawPoolL7 {
    pub balance: Option<Balance>,
    pub hash_on: Option<String>,
    pub backend_protocol: Option<BackendProtocol>,
    pub backend_tls: Option<RawBackendTls>,
    pub proxy_protocol: Option<String>,
    pub outlier: Option<RawOutlier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendTls {
    server_name: Option<String>,
    ca: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    consecutive_failures: Option<u32>,
    ejection: Option<String>,
}

// ---- Validation ----

/// Where a host name was first seen: (tenant index, site index, host index).
type HostOwner = (usize, usize, usize);

impl Ctx<'_> {
    /// The L7 keys of one pool.
    pub(super) fn pool_l7(
        &self,
        raw: RawPoolL7,
        path: &FieldPath,
    ) -> Result<PoolL7, super::ConfigError> {
        let balance = raw.balance.unwrap_or_default();
        let hash_on = match raw.hash_on {
            None => HashOn::ClientIp,
            Some(_) if balance != Balance::Maglev => {
                return Err(self.error(
                    &path.key("hash_on"),
                    "hash_on applies only to balance = \"maglev\"",
                ));
            }
            Some(text) => parse_hash_on(&text).map_err(|m| self.error(&path.key("hash_on"), m))?,
        };
        let proxy_protocol = match raw.proxy_protocol.as_deref() {
            None => false,
            Some("v2") => true,
            Some(other) => {
                return Err(self.error(
                    &path.key("proxy_protocol"),
                    format!("unsupported proxy_protocol {other:?}: the only version is \"v2\""),
                ));
            }
        };
        let backend_tls = match raw.backend_tls {
            None => None,
            Some(t) => {
                if let Some(name) = &t.server_name {
                    check_host(name, false)
                        .map_err(|m| self.error(&path.key("backend_tls").key("server_name"), m))?;
                }
                Some(BackendTls {
                    server_name: t.server_name.as_deref().map(normalise_host),
                    ca: t.ca,
                })
            }
        };
        let mut outlier = Outlier::default();
        if let Some(o) = raw.outlier {
            let opath = path.key("outlier");
            if let Some(n) = o.consecutive_failures {
                outlier.consecutive_failures = self.count_in(
                    &opath.key("consecutive_failures"),
                    "consecutive_failures",
                    n,
                    &OUTLIER_FAILURES_RANGE,
                    "",
                )?;
            }
            if let Some(text) = o.ejection {
                outlier.ejection = self.duration_in(
                    &opath.key("ejection"),
                    "ejection",
                    &text,
                    &OUTLIER_EJECTION_RANGE,
                )?;
            }
        }
        Ok(PoolL7 {
            balance,
            hash_on,
            backend_protocol: raw.backend_protocol.unwrap_or_default(),
            backend_tls,
            proxy_protocol,
            outlier,
        })
    }

    /// Every tenant's sites (pass 2, once every pool is known), then the
    /// listeners. Checks that host names and their SNI hashes are unique
    /// across tenants.
    pub(super) fn l7(
        &self,
        tenants: &mut [Tenant],
        raw_l7: Vec<Vec<RawL7>>,
        raw_listeners: Vec<RawListener>,
        l4: &VipOwners,
    ) -> Result<Vec<Listener>, super::ConfigError> {
        let tenants_path = FieldPath::default().key("tenant");
        let mut hosts: HashMap<String, HostOwner> = HashMap::new();
        let mut hashes: HashMap<u64, (String, HostOwner)> = HashMap::new();
        let names: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
        let host_path = |(t, s, h): HostOwner| {
            tenants_path
                .index(t, Some(&names[t]))
                .key("l7")
                .index(s, None)
                .key("hosts")
                .index(h, None)
        };
        // listen address -> protocol family of the first site there.
        let mut addresses: BTreeMap<SocketAddr, (L7Protocol, usize, usize)> = BTreeMap::new();
        for (ti, sites) in raw_l7.into_iter().enumerate() {
            let tpath = tenants_path.index(ti, Some(&tenants[ti].name));
            let mut built = Vec::with_capacity(sites.len());
            for (si, raw) in sites.into_iter().enumerate() {
                let spath = tpath.key("l7").index(si, None);
                let site = self.site(raw, &spath, &tenants[ti])?;

                // One address speaks one protocol (TLS ones may mix
                // terminated and passthrough sites).
                let tls = |p: L7Protocol| p != L7Protocol::Http;
                match addresses.get(&site.listen) {
                    Some(&(p, t0, s0)) if tls(p) != tls(site.protocol) => {
                        let other = tenants_path
                            .index(t0, None)
                            .key("l7")
                            .index(s0, None)
                            .key("listen");
                        return Err(self.error(
                            &spath.key("protocol"),
                            format!(
                                "{} is already a {} listener ({}); plain HTTP and TLS cannot share an address",
                                site.listen,
                                if tls(p) { "TLS" } else { "plain HTTP" },
                                self.place(&format!("tenant[{t0}].l7[{s0}]"), &other)
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        addresses.insert(site.listen, (site.protocol, ti, si));
                    }
                }
                let vip_key = (site.listen.ip(), site.listen.port(), Protocol::Tcp);
                if let Some(&(t, v)) = l4.get(&vip_key) {
                    return Err(self.error(
                        &spath.key("listen"),
                        format!(
                            "{} is also an L4 VIP ({}); an address and port is served either by XDP or by lbd",
                            site.listen,
                            self.place(
                                &format!("tenant[{t}].l4[{v}]"),
                                &tenants_path.index(t, None).key("l4").index(v, None)
                            )
                        ),
                    ));
                }

                for (hi, host) in site.hosts.iter().enumerate() {
                    let here = (ti, si, hi);
                    if let Some(&first) = hosts.get(host) {
                        let whose = if first.0 == ti {
                            format!("tenant {:?}", tenants[ti].name)
                        } else {
                            format!(
                                "tenant {:?}; a host name belongs to exactly one tenant",
                                tenants[first.0].name
                            )
                        };
                        return Err(self.error(
                            &host_path(here),
                            format!(
                                "host {host:?} is already used at {} by {whose}",
                                self.place("that place", &host_path(first)),
                            ),
                        ));
                    }
                    let hash = sni_hash(host);
                    if let Some((other, at)) = hashes.get(&hash) {
                        return Err(self.error(
                            &host_path(here),
                            format!(
                                "host {host:?} has the same SNI hash ({hash:#018x}) as {other:?} at {}; \
                                 rename one of them",
                                self.place("that place", &host_path(*at))
                            ),
                        ));
                    }
                    hosts.insert(host.clone(), here);
                    hashes.insert(hash, (host.clone(), here));
                }
                built.push(site);
            }
            tenants[ti].l7 = built;
        }
        self.listeners(tenants, raw_listeners, &addresses)
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one site's rules, read top to bottom like the README's table of its keys"
    )]
    fn site(
        &self,
        raw: RawL7,
        path: &FieldPath,
        tenant: &Tenant,
    ) -> Result<L7Site, super::ConfigError> {
        let listen = raw.listen.parse::<SocketAddr>().map_err(|_| {
            self.error(
                &path.key("listen"),
                format!(
                    "invalid listen address {:?}: expected an IP address and a port, like \
                     \"203.0.113.20:443\" or \"[2001:db8::20]:443\"",
                    raw.listen
                ),
            )
        })?;
        if listen.port() == 0 {
            return Err(self.error(&path.key("listen"), "port 0 is not a port"));
        }
        check_unicast(listen.ip(), "a listen address")
            .map_err(|m| self.error(&path.key("listen"), m))?;
        let protocol = raw.protocol.unwrap_or(if raw.tls.is_some() {
            L7Protocol::Https
        } else {
            L7Protocol::Http
        });

        let mut hosts = Vec::with_capacity(raw.hosts.len());
        for (i, h) in raw.hosts.iter().enumerate() {
            check_host(h, true).map_err(|m| self.error(&path.key("hosts").index(i, None), m))?;
            hosts.push(normalise_host(h));
        }

        let tls = match (protocol, raw.tls) {
            (L7Protocol::Https, Some(t)) => Some(TlsFiles {
                cert: t.cert,
                key: t.key,
            }),
            (L7Protocol::Https, None) => {
                return Err(self.error(
                    &path.key("tls"),
                    "an https site needs tls = { cert = \"FILE.pem\", key = \"FILE.key\" }",
                ));
            }
            (_, Some(_)) => {
                return Err(self.error(
                    &path.key("tls"),
                    format!(
                        "tls applies only to protocol = \"https\" (this site is {:?})",
                        protocol_name(protocol)
                    ),
                ));
            }
            (_, None) => None,
        };
        if protocol != L7Protocol::Http && hosts.is_empty() {
            return Err(self.error(
                &path.key("hosts"),
                "a TLS site needs at least one host name: its SNI picks the site",
            ));
        }

        let pool = match (protocol, raw.pool) {
            (L7Protocol::TlsPassthrough, Some(p)) => {
                self.own_pool(tenant, &p, &path.key("pool"))?;
                Some(p)
            }
            (L7Protocol::TlsPassthrough, None) => {
                return Err(self.error(
                    &path.key("pool"),
                    "a tls_passthrough site needs `pool`: where its connections go",
                ));
            }
            (_, Some(_)) => {
                return Err(self.error(
                    &path.key("pool"),
                    "`pool` applies only to tls_passthrough sites; HTTP sites name pools in `routes`",
                ));
            }
            (_, None) => None,
        };
        if protocol == L7Protocol::TlsPassthrough && !raw.routes.is_empty() {
            return Err(self.error(
                &path.key("routes"),
                "a tls_passthrough site has no routes: lbd cannot read its requests",
            ));
        }
        if protocol != L7Protocol::TlsPassthrough && raw.routes.is_empty() {
            return Err(self.error(
                &path.key("routes"),
                "a site needs at least one route, e.g. routes = [ { path_prefix = \"/\", pool = \"web\" } ]",
            ));
        }

        let mut routes = Vec::with_capacity(raw.routes.len());
        for (ri, r) in raw.routes.into_iter().enumerate() {
            let rpath = path.key("routes").index(ri, None);
            routes.push(self.route(r, &rpath, tenant, protocol, &hosts)?);
        }

        if let Some(p) = &raw.path_prefix {
            check_path_prefix(p).map_err(|m| self.error(&path.key("path_prefix"), m))?;
            if p == "/" {
                return Err(self.error(
                    &path.key("path_prefix"),
                    "path_prefix \"/\" matches every request; use default_tenant instead",
                ));
            }
        }
        let strip_path_prefix = raw.strip_path_prefix.unwrap_or(false);
        if strip_path_prefix && raw.path_prefix.is_none() {
            return Err(self.error(
                &path.key("strip_path_prefix"),
                "strip_path_prefix needs path_prefix",
            ));
        }

        let timeouts = self.timeouts(raw.timeouts, &path.key("timeouts"))?;
        let max_header_bytes = self.count_in(
            &path.key("max_header_bytes"),
            "max_header_bytes",
            raw.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
            &MAX_HEADER_BYTES_RANGE,
            " (1 MiB)",
        )?;
        let max_body_bytes = self.count_in(
            &path.key("max_body_bytes"),
            "max_body_bytes",
            raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            &MAX_BODY_BYTES_RANGE,
            " (64 GiB)",
        )?;
        let retries = self.count_in(
            &path.key("retries"),
            "retries",
            raw.retries.unwrap_or(DEFAULT_RETRIES),
            &(0..=MAX_RETRIES),
            "",
        )?;
        let upgrades = match raw.upgrades {
            None => DEFAULT_UPGRADES.iter().map(|&t| t.to_owned()).collect(),
            Some(tokens) => {
                if tokens.len() > MAX_UPGRADES {
                    return Err(self.error(
                        &path.key("upgrades"),
                        format!(
                            "upgrades lists {} protocols; at most {MAX_UPGRADES}",
                            tokens.len()
                        ),
                    ));
                }
                let mut upgrades = Vec::with_capacity(tokens.len());
                for (i, t) in tokens.iter().enumerate() {
                    let at = path.key("upgrades").index(i, None);
                    upgrades.push(check_upgrade(t).map_err(|m| self.error(&at, m))?);
                }
                upgrades
            }
        };
        let strict_transport = match raw.hsts {
            None => None,
            Some(_) if protocol != L7Protocol::Https => {
                let why = if protocol == L7Protocol::Http {
                    "browsers ignore Strict-Transport-Security over plain HTTP; set it on the \
                     https site (and redirect_https on this listener)"
                } else {
                    "lbd does not see the responses of a passthrough site; its backends must \
                     send the header"
                };
                return Err(self.error(
                    &path.key("hsts"),
                    format!(
                        "hsts applies only to protocol = \"https\" (this site is {:?}): {why}",
                        protocol_name(protocol)
                    ),
                ));
            }
            Some(value) => Some(check_hsts(&value).map_err(|m| self.error(&path.key("hsts"), m))?),
        };
        Ok(L7Site {
            listen,
            protocol,
            hosts,
            tls,
            path_prefix: raw.path_prefix,
            strip_path_prefix,
            routes,
            pool,
            timeouts,
            max_header_bytes,
            max_body_bytes,
            retries,
            merge_slashes: raw.merge_slashes.unwrap_or(false),
            allow_encoded_slashes: raw.allow_encoded_slashes.unwrap_or(false),
            upgrades,
            hsts: strict_transport,
        })
    }

    /// One of a site's `routes`.
    fn route(
        &self,
        r: RawRoute,
        rpath: &FieldPath,
        tenant: &Tenant,
        protocol: L7Protocol,
        hosts: &[String],
    ) -> Result<Route, super::ConfigError> {
        self.own_pool(tenant, &r.pool, &rpath.key("pool"))?;
        let host = match r.host {
            None => None,
            Some(h) => {
                check_host(&h, true).map_err(|m| self.error(&rpath.key("host"), m))?;
                let h = normalise_host(&h);
                if protocol != L7Protocol::Http && !covered(hosts, &h) {
                    return Err(self.error(
                        &rpath.key("host"),
                        format!(
                            "host {h:?} is not one of the site's hosts ({})",
                            hosts.join(", ")
                        ),
                    ));
                }
                Some(h)
            }
        };
        if let Some(p) = &r.path_prefix {
            check_path_prefix(p).map_err(|m| self.error(&rpath.key("path_prefix"), m))?;
        }
        let method = match r.method {
            None => None,
            Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Some(m.to_ascii_uppercase())
            }
            Some(m) => {
                return Err(self.error(
                    &rpath.key("method"),
                    format!("invalid method {m:?}: expected a word such as \"GET\""),
                ));
            }
        };
        let header = match r.header {
            None => None,
            Some(h) => {
                hyper::header::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    self.error(
                        &rpath.key("header").key("name"),
                        format!("{:?} is not a valid header name", h.name),
                    )
                })?;
                Some((h.name.to_ascii_lowercase(), h.value))
            }
        };
        let strip_prefix = r.strip_prefix.unwrap_or(false);
        if strip_prefix && r.path_prefix.is_none() {
            return Err(self.error(
                &rpath.key("strip_prefix"),
                "strip_prefix needs the route's path_prefix",
            ));
        }
        Ok(Route {
            host,
            path_prefix: r.path_prefix,
            method,
            header,
            pool: r.pool,
            strip_prefix,
        })
    }

    /// A pool a site names: the tenant's own, with ports on its backends.
    fn own_pool(
        &self,
        tenant: &Tenant,
        name: &str,
        at: &FieldPath,
    ) -> Result<(), super::ConfigError> {
        let Some(pool) = tenant.pool(name) else {
            let names: Vec<&str> = tenant.pools.iter().map(|p| p.name.as_str()).collect();
            return Err(self.error(
                at,
                format!(
                    "no pool named {name:?} in tenant {:?} (pools: {}); a tenant can only use its own pools",
                    tenant.name,
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        };
        if let Some(b) = pool.backends.iter().find(|b| b.port.is_none()) {
            return Err(self.error(
                at,
                format!(
                    "backend {} of pool {name:?} has no port; backends of a pool that lbd proxies \
                     to need one",
                    b.address
                ),
            ));
        }
        Ok(())
    }

    fn timeouts(
        &self,
        raw: Option<RawTimeouts>,
        path: &FieldPath,
    ) -> Result<Timeouts, super::ConfigError> {
        let mut t = Timeouts::default();
        let Some(raw) = raw else { return Ok(t) };
        let send_given = raw.send.is_some();
        for (key, value, out) in [
            ("connect", raw.connect, &mut t.connect),
            ("header", raw.header, &mut t.header),
            ("idle", raw.idle, &mut t.idle),
            ("request", raw.request, &mut t.request),
            ("send", raw.send, &mut t.send),
        ] {
            if let Some(text) = value {
                *out = self.duration_in(&path.key(key), key, &text, &L7_TIMEOUT_RANGE)?;
            }
        }
        if !send_given {
            t.send = t.idle;
        }
        Ok(t)
    }

    /// A listener's `identify`: its default for the protocol, or a list
    /// without repeats whose methods the address can use.
    fn listener_identify(
        &self,
        tenants: &[Tenant],
        identify: Option<Vec<Identify>>,
        address: SocketAddr,
        protocol: L7Protocol,
        lpath: &FieldPath,
    ) -> Result<Vec<Identify>, super::ConfigError> {
        Ok(match identify {
            None => default_identify(protocol),
            Some(list) => {
                if list.is_empty() {
                    return Err(self.error(
                        &lpath.key("identify"),
                        "identify needs at least one of \"sni\", \"host\", \"path\", \
                         \"header\", \"jwt\"",
                    ));
                }
                for (i, id) in list.iter().enumerate() {
                    if list[..i].contains(id) {
                        return Err(self.error(
                            &lpath.key("identify").index(i, None),
                            format!("{id:?} is listed twice"),
                        ));
                    }
                    if *id == Identify::Sni && protocol == L7Protocol::Http {
                        return Err(self.error(
                            &lpath.key("identify").index(i, None),
                            "\"sni\" needs TLS; this is a plain HTTP listener",
                        ));
                    }
                    self.identify_credentials(
                        tenants,
                        address,
                        *id,
                        &lpath.key("identify").index(i, None),
                    )?;
                }
                list
            }
        })
    }

    /// `"header"` and `"jwt"` identification trust only authenticated
    /// requests: some tenant on the address must have the credentials.
    fn identify_credentials(
        &self,
        tenants: &[Tenant],
        address: SocketAddr,
        id: Identify,
        at: &FieldPath,
    ) -> Result<(), super::ConfigError> {
        let mut here = tenants
            .iter()
            .filter(|t| t.l7.iter().any(|s| s.listen == address));
        let (name, what, ok) = match id {
            Identify::Header => (
                "header",
                "[tenant.auth] (API keys or a JWT)",
                here.any(|t| t.auth.is_configured()),
            ),
            Identify::Jwt => ("jwt", "auth.jwt", here.any(|t| t.auth.jwt.is_some())),
            Identify::Sni | Identify::Host | Identify::Path => return Ok(()),
        };
        if ok {
            return Ok(());
        }
        Err(self.error(
            at,
            format!(
                "\"{name}\" identification trusts only authenticated requests, and no tenant on \
                 {address} has {what}"
            ),
        ))
    }

    /// A listener's `trusted_proxies` (prefixes) and `proxy_protocol`
    /// (whether a PROXY v2 header is expected from them).
    fn trusted_proxies(
        &self,
        raw: &[String],
        proxy_protocol: Option<&str>,
        lpath: &FieldPath,
    ) -> Result<(Vec<(IpAddr, u8)>, bool), super::ConfigError> {
        if raw.len() > MAX_TRUSTED_PROXIES {
            return Err(self.error(
                &lpath.key("trusted_proxies"),
                format!(
                    "{} trusted_proxies: at most {MAX_TRUSTED_PROXIES} (list the proxies' \
                     networks as prefixes)",
                    raw.len()
                ),
            ));
        }
        let mut trusted_proxies = Vec::with_capacity(raw.len());
        for (i, text) in raw.iter().enumerate() {
            let at = lpath.key("trusted_proxies").index(i, None);
            let prefix = parse_prefix(text).map_err(|m| self.error(&at, m))?;
            if trusted_proxies.contains(&prefix) {
                return Err(self.error(&at, format!("{text:?} is listed twice")));
            }
            trusted_proxies.push(prefix);
        }
        let proxy_protocol = match proxy_protocol {
            None => false,
            // Any listener: on a TLS one the header comes before the
            // ClientHello, so passthrough sites get the client too.
            Some("v2") => {
                if trusted_proxies.is_empty() {
                    return Err(self.error(
                        &lpath.key("proxy_protocol"),
                        "proxy_protocol needs trusted_proxies: only the proxies listed \
                         there may send a PROXY header (anyone else could forge their \
                         address)",
                    ));
                }
                true
            }
            Some(other) => {
                return Err(self.error(
                    &lpath.key("proxy_protocol"),
                    format!("unsupported proxy_protocol {other:?}: the only version is \"v2\""),
                ));
            }
        };
        Ok((trusted_proxies, proxy_protocol))
    }

    /// `[[listener]]` entries, plus defaults for every site address without
    /// one.
    fn listeners(
        &self,
        tenants: &[Tenant],
        raw: Vec<RawListener>,
        addresses: &BTreeMap<SocketAddr, (L7Protocol, usize, usize)>,
    ) -> Result<Vec<Listener>, super::ConfigError> {
        let root = FieldPath::default().key("listener");
        let mut out: BTreeMap<SocketAddr, Listener> = BTreeMap::new();
        for (li, r) in raw.into_iter().enumerate() {
            let lpath = root.index(li, None);
            let address = r.address.parse::<SocketAddr>().map_err(|_| {
                self.error(
                    &lpath.key("address"),
                    format!(
                        "invalid address {:?}: expected an IP address and a port",
                        r.address
                    ),
                )
            })?;
            let Some(&(protocol, ..)) = addresses.get(&address) else {
                return Err(self.error(
                    &lpath.key("address"),
                    format!("no [[tenant.l7]] site listens on {address}"),
                ));
            };
            if out.contains_key(&address) {
                return Err(self.error(
                    &lpath.key("address"),
                    format!("a [[listener]] for {address} is already defined"),
                ));
            }
            let identify =
                self.listener_identify(tenants, r.identify, address, protocol, &lpath)?;
            if let Some(t) = &r.default_tenant {
                let on_address = tenants
                    .iter()
                    .any(|x| &x.name == t && x.l7.iter().any(|s| s.listen == address));
                if !on_address {
                    return Err(self.error(
                        &lpath.key("default_tenant"),
                        format!("tenant {t:?} has no [[tenant.l7]] site on {address}"),
                    ));
                }
            }
            let redirect_https = r.redirect_https.unwrap_or(false);
            if redirect_https && protocol != L7Protocol::Http {
                return Err(self.error(
                    &lpath.key("redirect_https"),
                    "redirect_https applies to plain HTTP listeners",
                ));
            }
            let limits = self.vip_limits(r.limits, &lpath.key("limits"))?;
            let max_connections_per_source = match r.max_connections_per_source {
                None => None,
                Some(n) => Some(self.count_in(
                    &lpath.key("max_connections_per_source"),
                    "max_connections_per_source",
                    n,
                    &MAX_CONNECTIONS_PER_SOURCE_RANGE,
                    "",
                )?),
            };
            let (trusted_proxies, proxy_protocol) =
                self.trusted_proxies(&r.trusted_proxies, r.proxy_protocol.as_deref(), &lpath)?;
            out.insert(
                address,
                Listener {
                    address,
                    identify,
                    default_tenant: r.default_tenant,
                    redirect_https,
                    limits,
                    max_connections_per_source,
                    trusted_proxies,
                    proxy_protocol,
                },
            );
        }
        for (&address, &(protocol, ..)) in addresses {
            out.entry(address).or_insert_with(|| Listener {
                address,
                identify: default_identify(protocol),
                default_tenant: None,
                redirect_https: false,
                limits: VipLimits::default(),
                max_connections_per_source: None,
                trusted_proxies: Vec::new(),
                proxy_protocol: false,
            });
        }
        Ok(out.into_values().collect())
    }
}

/// Whether `host` (exact or wildcard) is one of `hosts` or under one of
/// their wildcards.
fn covered(hosts: &[String], host: &str) -> bool {
    hosts.iter().any(|p| {
        p == host
            || p.strip_prefix("*.").is_some_and(|parent| {
                host.split_once('.').is_some_and(|(label, rest)| {
                    label != "*" && !label.is_empty() && rest == parent
                })
            })
    })
}

fn default_identify(protocol: L7Protocol) -> Vec<Identify> {
    match protocol {
        L7Protocol::Http => vec![Identify::Host, Identify::Path],
        L7Protocol::Https | L7Protocol::TlsPassthrough => {
            vec![Identify::Sni, Identify::Host, Identify::Path]
        }
    }
}

fn protocol_name(p: L7Protocol) -> &'static str {
    match p {
        L7Protocol::Https => "https",
        L7Protocol::Http => "http",
        L7Protocol::TlsPassthrough => "tls_passthrough",
    }
}

/// A host name as written: letters, digits, `-`, `_` and dots, labels of 1
/// to 63 bytes, at most 253 bytes; `*.` only as the whole first label when
/// `wildcard` is allowed.
fn check_host(name: &str, wildcard: bool) -> Result<(), String> {
    let n = name.strip_suffix('.').unwrap_or(name);
    let body = match n.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        Some(_) => return Err(format!("{name:?}: a wildcard is not allowed here")),
        None => n,
    };
    let bad = || {
        format!(
            "invalid host name {name:?}: use letters, digits, '-' and dots, like \"api.example.com\" \
             or \"*.example.com\""
        )
    };
    if body.is_empty() || n.len() > MAX_HOST_LEN {
        return Err(bad());
    }
    for label in body.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad());
        }
    }
    if body.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{name:?} is an IP address, not a host name"));
    }
    Ok(())
}

fn check_path_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path_prefix {p:?} must start with '/'"));
    }
    if p.len() > 1 && p.ends_with('/') {
        return Err(format!(
            "path_prefix {p:?}: leave out the trailing '/' (prefixes match whole path segments)"
        ));
    }
    if p.bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
    {
        return Err(format!(
            "path_prefix {p:?} has characters a path cannot hold"
        ));
    }
    Ok(())
}

/// A site's `hsts`: `max-age=SECONDS` (at most [`MAX_HSTS_MAX_AGE`]), then
/// optionally `; includeSubDomains` and `; preload`, each at most once
/// (directive names in any case, RFC 6797). Returns the value as sent:
/// `max-age=N[; includeSubDomains][; preload]`.
fn check_hsts(text: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "invalid hsts {text:?}: {why}; expected \"max-age=SECONDS\" with optional \
             \"; includeSubDomains\" and \"; preload\", e.g. \"max-age=31536000; includeSubDomains\""
        )
    };
    let mut parts = text.split(';').map(str::trim);
    let age = parts
        .next()
        .and_then(|first| first.strip_prefix("max-age="))
        .ok_or_else(|| bad("it must start with max-age="))?;
    if age.is_empty() || !age.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("max-age must be a number of seconds"));
    }
    let age = age
        .parse::<u64>()
        .ok()
        .filter(|a| *a <= MAX_HSTS_MAX_AGE)
        .ok_or_else(|| {
            bad(&format!(
                "max-age must be at most {MAX_HSTS_MAX_AGE} (two years)"
            ))
        })?;
    let (mut subdomains, mut preload) = (false, false);
    for directive in parts {
        let seen = if directive.eq_ignore_ascii_case("includeSubDomains") {
            &mut subdomains
        } else if directive.eq_ignore_ascii_case("preload") {
            &mut preload
        } else {
            return Err(bad(&format!("unknown directive {directive:?}")));
        };
        if std::mem::replace(seen, true) {
            return Err(bad(&format!("{directive:?} is given twice")));
        }
    }
    let mut value = format!("max-age={age}");
    if subdomains {
        value.push_str("; includeSubDomains");
    }
    if preload {
        value.push_str("; preload");
    }
    Ok(value)
}

/// `"client_ip"`, `"header:NAME"` or `"cookie:NAME"`.
fn parse_hash_on(text: &str) -> Result<HashOn, String> {
    let bad = || {
        format!(
            "invalid hash_on {text:?}: expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\""
        )
    };
    if text == "client_ip" {
        return Ok(HashOn::ClientIp);
    }
    let (kind, name) = text.split_once(':').ok_or_else(bad)?;
    if name.is_empty() {
        return Err(bad());
    }
    match kind {
        "header" => {
            hyper::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            Ok(HashOn::Header(name.to_ascii_lowercase()))
        }
        "cookie"
            if name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';') =>
        {
            Ok(HashOn::Cookie(name.to_owned()))
        }
        _ => Err(bad()),
    }
}

/// Parses `node.access_log`.
pub(super) fn parse_access_log(text: &str) -> Result<AccessLog, String> {
    match text {
        "" => Err(
            "access_log is empty: use \"stdout\", \"stderr\", \"off\" or a file path".to_owned(),
        ),
        "stdout" => Ok(AccessLog::Stdout),
        "stderr" => Ok(AccessLog::Stderr),
        "off" => Ok(AccessLog::Off),
        path => Ok(AccessLog::File(PathBuf::from(path))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tenants sharing one TLS address, with a pool each.
    fn two_tenants(extra_acme: &str, extra: &str) -> String {
        format!(
            r#"[node]
interface = "eth0"

[[tenant]]
name = "acme"
[[tenant.pool]]
name = "web"
backends = [ {{ address = "10.0.1.11", port = 8080 }} ]
[[tenant.l7]]
listen = "203.0.113.20:443"
hosts = ["api.acme.example", "*.acme.example"]
tls = {{ cert = "acme.pem", key = "acme.key" }}
routes = [ {{ path_prefix = "/", pool = "web" }} ]
{extra_acme}
[[tenant]]
name = "globex"
[[tenant.pool]]
name = "app"
backends = [ {{ address = "10.0.2.11", port = 8080 }} ]
[[tenant.l7]]
listen = "203.0.113.20:443"
hosts = ["globex.example"]
tls = {{ cert = "globex.pem", key = "globex.key" }}
routes = [ {{ path_prefix = "/", pool = "app" }} ]
{extra}"#
        )
    }

    fn parse_err(text: &str) -> super::super::ConfigError {
        match super::super::parse(text, "lb.toml") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_hardening_keys_have_their_defaults_and_bounds() {
        let c = super::super::parse(&two_tenants("", ""), "lb.toml").expect("valid");
        let site = &c.tenants[0].l7[0];
        assert_eq!(site.upgrades, ["websocket"]);
        assert!(!site.merge_slashes && !site.allow_encoded_slashes);
        assert_eq!(
            site.timeouts.send, site.timeouts.idle,
            "send defaults to idle"
        );
        assert_eq!(
            c.node.max_connections,
            super::super::DEFAULT_NODE_MAX_CONNECTIONS
        );
        assert_eq!(c.listeners[0].max_connections_per_source, None);

        let c = super::super::parse(
            &two_tenants(
                "upgrades = [\"WebSocket\", \"foo/2\"]\ntimeouts = { idle = \"5s\" }\nmerge_slashes = true",
                "",
            ),
            "lb.toml",
        )
        .expect("valid");
        let site = &c.tenants[0].l7[0];
        assert_eq!(site.upgrades, ["websocket", "foo/2"]);
        assert_eq!(
            site.timeouts.send,
            Duration::from_secs(5),
            "send follows idle"
        );
        assert!(site.merge_slashes);

        let e = parse_err(&two_tenants("upgrades = [\"h2c\"]", ""));
        assert!(e.message().contains("h2c cannot be an upgrade"), "{e}");
        assert_eq!(e.field(), Some("tenant[0] (\"acme\").l7[0].upgrades[0]"));
        let many: Vec<String> = (0..17).map(|i| format!("\"p{i}\"")).collect();
        let e = parse_err(&two_tenants(
            &format!("upgrades = [{}]", many.join(", ")),
            "",
        ));
        assert!(e.message().contains("at most 16"), "{e}");
        let e = parse_err(&two_tenants("upgrades = [\"web socket\"]", ""));
        assert!(e.message().contains("not an Upgrade token"), "{e}");

        let e = parse_err(&two_tenants(
            "",
            "[[listener]]\naddress = \"203.0.113.20:443\"\nmax_connections_per_source = 0\n",
        ));
        assert!(e.message().contains("between 1 and 1000000"), "{e}");
        let e = parse_err(&two_tenants("", "").replace(
            "interface = \"eth0\"",
            "interface = \"eth0\"\nmax_connections = 0",
        ));
        assert!(
            e.message()
                .contains("max_connections must be between 1 and"),
            "{e}"
        );
    }

    #[test]
    fn shared_listener_gets_defaults() {
        let c = super::super::parse(&two_tenants("", ""), "lb.toml").expect("valid");
        assert_eq!(c.listeners.len(), 1);
        let l = &c.listeners[0];
        assert_eq!(l.identify, [Identify::Sni, Identify::Host, Identify::Path]);
        assert_eq!(l.default_tenant, None);
    }

    #[test]
    fn a_host_belongs_to_one_tenant() {
        let text = two_tenants("", "").replace(
            r#"hosts = ["globex.example"]"#,
            r#"hosts = ["globex.example", "API.acme.example."]"#,
        );
        let e = parse_err(&text);
        assert!(
            e.message().contains("\"api.acme.example\" is already used"),
            "{e}"
        );
        assert!(e.message().contains("tenant \"acme\""), "{e}");
        assert_eq!(e.field(), Some("tenant[1] (\"globex\").l7[0].hosts[1]"));
    }

    #[test]
    fn routes_use_own_pools_only() {
        let text = two_tenants("", "").replace(
            r#"routes = [ { path_prefix = "/", pool = "app" } ]"#,
            r#"routes = [ { path_prefix = "/", pool = "web" } ]"#,
        );
        let e = parse_err(&text);
        assert!(
            e.message()
                .contains("no pool named \"web\" in tenant \"globex\""),
            "{e}"
        );
    }

    #[test]
    fn site_rules() {
        for (from, to, fragment) in [
            (
                r#"tls = { cert = "globex.pem", key = "globex.key" }"#,
                r#"protocol = "https""#,
                "needs tls",
            ),
            (
                r#"listen = "203.0.113.20:443"
hosts = ["globex.example"]"#,
                r#"listen = "203.0.113.20:443"
protocol = "http"
hosts = ["globex.example"]"#,
                "tls applies only",
            ),
            (
                r#"{ path_prefix = "/", pool = "app" }"#,
                r#"{ pool = "app", strip_prefix = true }"#,
                "needs the route's path_prefix",
            ),
            (
                r#"path_prefix = "/", pool = "app""#,
                r#"path_prefix = "api", pool = "app""#,
                "must start with '/'",
            ),
            (
                r#"address = "10.0.2.11", port = 8080"#,
                r#"address = "10.0.2.11""#,
                "has no port",
            ),
        ] {
            let text = two_tenants("", "").replacen(from, to, 1);
            assert_ne!(
                text,
                two_tenants("", ""),
                "replacement of {from:?} did nothing"
            );
            let e = parse_err(&text);
            assert!(e.message().contains(fragment), "{fragment:?} not in: {e}");
        }
    }

    #[test]
    fn listener_rules() {
        let bad_default =
            "[[listener]]\naddress = \"203.0.113.20:443\"\ndefault_tenant = \"nobody\"\n";
        let e = parse_err(&two_tenants("", bad_default));
        assert!(e.message().contains("no [[tenant.l7]] site on"), "{e}");
        let unknown = "[[listener]]\naddress = \"203.0.113.21:443\"\n";
        let e = parse_err(&two_tenants("", unknown));
        assert!(
            e.message().contains("no [[tenant.l7]] site listens on"),
            "{e}"
        );
        let good = "[[listener]]\naddress = \"203.0.113.20:443\"\nidentify = [\"host\"]\ndefault_tenant = \"acme\"\nlimits = { syn_per_second = 1000 }\n";
        let c = super::super::parse(&two_tenants("", good), "lb.toml").expect("valid");
        assert_eq!(c.listeners[0].identify, [Identify::Host]);
        assert_eq!(c.listeners[0].default_tenant.as_deref(), Some("acme"));
        assert_eq!(c.listeners[0].limits.syn_per_second, Some(1000));
    }

    #[test]
    fn trusted_proxies_and_proxy_protocol() {
        let listener = |keys: &str| {
            two_tenants(
                "",
                &format!("[[listener]]\naddress = \"203.0.113.20:443\"\n{keys}\n"),
            )
        };
        let c = super::super::parse(
            &listener(
                "trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\nproxy_protocol = \"v2\"",
            ),
            "lb.toml",
        )
        .expect("valid");
        let l = &c.listeners[0];
        let ip = |t: &str| t.parse::<IpAddr>().expect("ip");
        assert_eq!(
            l.trusted_proxies,
            [
                (ip("10.0.0.0"), 8),
                (ip("2001:db8::"), 32),
                (ip("192.0.2.7"), 32)
            ]
        );
        assert!(l.proxy_protocol);
        let c = super::super::parse(&two_tenants("", ""), "lb.toml").expect("valid");
        assert!(c.listeners[0].trusted_proxies.is_empty() && !c.listeners[0].proxy_protocol);

        let many: Vec<String> = (0..=MAX_TRUSTED_PROXIES)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect();
        let too_many = format!("trusted_proxies = [{}]", many.join(", "));
        for (keys, field, fragment) in [
            (
                too_many.as_str(),
                "listener[0].trusted_proxies",
                "at most 1024",
            ),
            (
                "proxy_protocol = \"v2\"",
                "listener[0].proxy_protocol",
                "needs trusted_proxies",
            ),
            (
                "trusted_proxies = []\nproxy_protocol = \"v2\"",
                "listener[0].proxy_protocol",
                "needs trusted_proxies",
            ),
            (
                "trusted_proxies = [\"10.0.0.1\"]\nproxy_protocol = \"v1\"",
                "listener[0].proxy_protocol",
                "the only version is \"v2\"",
            ),
            (
                "trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]",
                "listener[0].trusted_proxies[1]",
                "bits are set past the /8 prefix",
            ),
            (
                "trusted_proxies = [\"proxy.example\"]",
                "listener[0].trusted_proxies[0]",
                "is not a prefix",
            ),
            (
                "trusted_proxies = [\"10.0.0.0/33\"]",
                "listener[0].trusted_proxies[0]",
                "0 to 32",
            ),
            (
                "trusted_proxies = [\"10.0.0.1\", \"10.0.0.1/32\"]",
                "listener[0].trusted_proxies[1]",
                "listed twice",
            ),
        ] {
            let text = listener(keys);
            let e = parse_err(&text);
            assert!(e.message().contains(fragment), "{fragment:?} not in: {e}");
            assert_eq!(e.field(), Some(field), "{e}");
            let key = if field.ends_with("proxy_protocol") {
                "proxy_protocol ="
            } else {
                "trusted_proxies ="
            };
            let line = text.lines().position(|l| l.starts_with(key)).expect("key") + 1;
            assert_eq!(e.line(), Some(line), "{e}");
        }
    }

    #[test]
    fn passthrough_and_http_cannot_share() {
        let passthrough = "[[tenant.l7]]\nlisten = \"203.0.113.20:443\"\nprotocol = \"tls_passthrough\"\nhosts = [\"raw.acme.example\"]\npool = \"web\"\n";
        let c = super::super::parse(&two_tenants(passthrough, ""), "lb.toml").expect("valid");
        let acme = c.tenant("acme").expect("acme");
        assert_eq!(acme.l7[1].protocol, L7Protocol::TlsPassthrough);
        let http = "[[tenant.l7]]\nlisten = \"203.0.113.20:443\"\nprotocol = \"http\"\nroutes = [ { pool = \"web\" } ]\n";
        let e = parse_err(&two_tenants(http, ""));
        assert!(e.message().contains("cannot share an address"), "{e}");
    }

    #[test]
    fn pool_l7_keys() {
        let text = two_tenants("", "").replace(
            r#"backends = [ { address = "10.0.2.11", port = 8080 } ]"#,
            r#"backends = [ { address = "10.0.2.11", port = 8080 } ]
balance = "maglev"
hash_on = "cookie:session"
outlier = { consecutive_failures = 3, ejection = "5s" }"#,
        );
        let c = super::super::parse(&text, "lb.toml").expect("valid");
        let p = &c.tenant("globex").expect("globex").pools[0].l7;
        assert_eq!(p.balance, Balance::Maglev);
        assert_eq!(p.hash_on, HashOn::Cookie("session".into()));
        assert_eq!(p.outlier.consecutive_failures, 3);
        let e = parse_err(&text.replace("balance = \"maglev\"\n", ""));
        assert!(e.message().contains("only to balance = \"maglev\""), "{e}");
    }

    #[test]
    fn hsts_forms() {
        for (text, sent) in [
            ("max-age=31536000", "max-age=31536000"),
            ("max-age=0", "max-age=0"),
            ("max-age=63072000", "max-age=63072000"),
            (
                "max-age=600;includesubdomains ; PRELOAD",
                "max-age=600; includeSubDomains; preload",
            ),
            ("max-age=600; preload", "max-age=600; preload"),
        ] {
            assert_eq!(check_hsts(text).as_deref(), Ok(sent), "{text:?}");
        }
        for (text, fragment) in [
            ("", "must start with max-age="),
            ("includeSubDomains; max-age=1", "must start with max-age="),
            ("Max-Age=1", "must start with max-age="),
            ("max-age=", "a number of seconds"),
            ("max-age=-1", "a number of seconds"),
            ("max-age=\"1\"", "a number of seconds"),
            ("max-age=63072001", "at most 63072000"),
            ("max-age=99999999999999999999999", "at most 63072000"),
            (
                "max-age=1; includeSubDomains; includeSubDomains",
                "given twice",
            ),
            ("max-age=1;", "unknown directive \"\""),
            ("max-age=1; secure", "unknown directive \"secure\""),
        ] {
            let e = check_hsts(text).expect_err(text);
            assert!(e.contains(fragment), "{text:?}: {fragment:?} not in {e}");
        }
    }

    #[test]
    fn hsts_only_on_https_sites() {
        let with = |hsts: &str| {
            two_tenants("", "").replacen(
                "routes = [ { path_prefix = \"/\", pool = \"app\" } ]",
                &format!("routes = [ {{ path_prefix = \"/\", pool = \"app\" }} ]\nhsts = {hsts:?}"),
                1,
            )
        };
        let c = super::super::parse(&with("max-age=31536000; includeSubDomains"), "lb.toml")
            .expect("valid");
        assert_eq!(
            c.tenant("globex").expect("globex").l7[0].hsts.as_deref(),
            Some("max-age=31536000; includeSubDomains")
        );
        assert_eq!(c.tenant("acme").expect("acme").l7[0].hsts, None, "default");
        let e = parse_err(&with("max-age=1; secure"));
        assert!(e.message().contains("unknown directive"), "{e}");
        assert!(
            e.field().is_some_and(|f| f.ends_with("l7[0].hsts")),
            "names the field: {e}"
        );

        let plain = "[[tenant.l7]]\nlisten = \"203.0.113.20:80\"\nprotocol = \"http\"\nroutes = [ { pool = \"web\" } ]\nhsts = \"max-age=600\"\n";
        let e = parse_err(&two_tenants(plain, ""));
        assert!(
            e.message()
                .contains("hsts applies only to protocol = \"https\" (this site is \"http\")"),
            "{e}"
        );
        assert!(e.message().contains("over plain HTTP"), "{e}");
        let passthrough = "[[tenant.l7]]\nlisten = \"203.0.113.20:443\"\nprotocol = \"tls_passthrough\"\nhosts = [\"raw.acme.example\"]\npool = \"web\"\nhsts = \"max-age=600\"\n";
        let e = parse_err(&two_tenants(passthrough, ""));
        assert!(
            e.message().contains("responses of a passthrough site"),
            "{e}"
        );
    }

    #[test]
    fn hosts_normalise_and_validate() {
        assert_eq!(normalise_host("API.Example.COM."), "api.example.com");
        assert!(check_host("*.example.com", true).is_ok());
        assert!(check_host("*.example.com", false).is_err());
        assert!(check_host("a.*.example.com", true).is_err());
        assert!(check_host("a..b", true).is_err());
        assert!(check_host("", true).is_err());
        assert!(check_host("10.0.0.1", true).is_err());
        assert!(check_host(&"a".repeat(64), true).is_err());
    }

    #[test]
    fn sni_hash_is_fnv1a() {
        // Reference values of FNV-1a 64.
        assert_eq!(sni_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(sni_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn hash_on_forms() {
        assert_eq!(parse_hash_on("client_ip"), Ok(HashOn::ClientIp));
        assert_eq!(
            parse_hash_on("header:X-User"),
            Ok(HashOn::Header("x-user".into()))
        );
        assert_eq!(
            parse_hash_on("cookie:sid"),
            Ok(HashOn::Cookie("sid".into()))
        );
        assert!(parse_hash_on("cookie:").is_err());
        assert!(parse_hash_on("ip").is_err());
    }
}
