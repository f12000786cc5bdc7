//! `lb.toml`: the schema, its defaults, and its validation.
//!
//! [`parse`] turns the text into a [`Config`] or into the first
//! [`ConfigError`], which always names the file and, whenever the problem
//! can be pinned to a place, the line, column and field path, e.g.
//! `lb.toml:14:8: tenant[0] ("acme").l4[1].pool: no pool named "wbe" in
//! tenant "acme" (pools: web, api)`. Nothing is applied before the whole
//! file has been checked, so an invalid reload changes nothing.
//!
//! The text is read twice. `toml_edit` keeps the byte span of every key and
//! value; that span tree turns a byte offset into `line:col` and a field path
//! (for the errors serde reports: syntax, unknown keys, wrong types), and a
//! field path into a position (for the errors validation reports). serde then
//! decodes the text into private `Raw*` structures (`deny_unknown_fields`
//! everywhere), and validation turns those into the public types, filling in
//! defaults. Keeping spans out of the public types keeps those plain values
//! that the rest of the daemon can compare and clone freely.
//!
//! The L7 sections (`[[tenant.l7]]`, `[[listener]]` and the pool keys only
//! the proxy reads) are validated in [`l7`](self::l7); the request policy
//! (`tier`, the request keys of `[tenant.limits]`, `[tenant.auth]`,
//! `node.max_inflight_requests`) in [`policy`](self::policy).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::{Range, RangeInclusive},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{
    DEFAULT_FLOW_TABLE_ENTRIES, DEFAULT_RING_SIZE, MAX_BACKENDS, MAX_POOLS, MAX_TENANTS, MAX_VIPS,
    MIN_TENANT_FLOWS, PROTO_TCP, PROTO_UDP, RING_ARENA_ENTRIES,
};
use serde::{Deserialize, Serialize, Serializer};
use toml_edit::{ImDocument, Item};

mod l7;
pub use l7::{
    AccessLog, BackendProtocol, BackendTls, Balance, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_OUTLIER_EJECTION, DEFAULT_OUTLIER_FAILURES,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRIES, DRAIN_TIMEOUT_RANGE, HashOn, Identify,
    L7_TIMEOUT_RANGE, L7Protocol, L7Site, Listener, MAX_BODY_BYTES_RANGE, MAX_HEADER_BYTES_RANGE,
    MAX_OUTLIER_EJECTION, MAX_RETRIES, OUTLIER_EJECTION_RANGE, OUTLIER_FAILURES_RANGE, Outlier,
    PoolL7, Route, Timeouts, TlsFiles, normalise_host, sni_hash,
};
mod policy;
pub use policy::{
    ApiKey, Auth, DEFAULT_JWT_LEEWAY, DEFAULT_TENANT_CLAIM, JwtAuth, MAX_CONNECTIONS,
    MAX_INFLIGHT_REQUESTS, MAX_JWT_LEEWAY, MAX_KEYED_RATE, MAX_REQUEST_RATE, REQUEST_LIMIT_KEYS,
    RequestLimits, Tier, hex,
};

// ---- Defaults and limits (the README lists these) ----

/// Default `node.pin_path`: where the BPF maps and programs are pinned.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";
/// Default `node.admin_socket`.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/lb/admin.sock";
/// Default `node.metrics_listen`.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
/// Default `node.state_dir`: where runtime overrides are persisted.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lb";
/// Default `node.flow_idle_timeout`.
pub const DEFAULT_FLOW_IDLE_TIMEOUT: Duration = Duration::from_mins(10);
/// Smallest accepted `node.flow_idle_timeout`: below a second, idle but
/// healthy TCP connections would be re-steered between packets.
pub const MIN_FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest accepted `node.flow_idle_timeout`: a day, far beyond any TCP
/// keep-alive, while the LRU table evicts older entries anyway.
pub const MAX_FLOW_IDLE_TIMEOUT: Duration = Duration::from_hours(24);
/// Longest duration [`parse_duration`] reads (365 days). Every key has a
/// tighter bound of its own; this one only keeps absurd values (which
/// would overflow deadline arithmetic) out of every caller.
pub const MAX_DURATION: Duration = Duration::from_hours(365 * 24);
/// Accepted range of `node.flow_table_size`.
pub const FLOW_TABLE_SIZE_RANGE: RangeInclusive<u32> = 1024..=67_108_864;
/// Accepted range of a pool's `ring_size` (which must also be prime).
pub const RING_SIZE_RANGE: RangeInclusive<u32> = 257..=655_373;
/// Maglev spreads load evenly only when the ring is much larger than the
/// backend set: a pool may have at most `ring_size / RING_PER_BACKEND`
/// backends with a non-zero weight.
pub const RING_PER_BACKEND: u32 = 10;
/// Largest backend `weight`.
pub const MAX_WEIGHT: u32 = 1000;
/// Default health-check `interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Accepted health-check `interval`: from 1ms to a day.
pub const HEALTH_INTERVAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_hours(24);
/// Default health-check `timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Accepted health-check `timeout` (which must also be shorter than the
/// interval).
pub const HEALTH_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_hours(24);
/// Default health-check `rise` (successes before a down backend is up).
pub const DEFAULT_HEALTH_RISE: u32 = 2;
/// Default health-check `fall` (failures before an up backend is down).
pub const DEFAULT_HEALTH_FALL: u32 = 3;
/// Accepted health-check `rise` and `fall`.
pub const HEALTH_COUNT_RANGE: RangeInclusive<u32> = 1..=1000;
/// Highest `packets_per_second` of a tenant, a VIP or a listener (a node
/// forwards well under 10^9 packets per second).
pub const MAX_PACKET_RATE: u64 = 1_000_000_000;
/// Highest `bytes_per_second` of a tenant, a VIP or a listener: 10^12
/// bytes (8 Tbit/s).
pub const MAX_BYTE_RATE: u64 = 1_000_000_000_000;
/// Highest `new_flows_per_second` of a tenant and `syn_per_second` of a VIP
/// or a listener.
pub const MAX_FLOW_RATE: u64 = 1_000_000_000;
/// Default HTTP health-check `path`.
pub const DEFAULT_HEALTH_PATH: &str = "/";
/// Default HTTP health-check `expect` (inclusive status range).
pub const DEFAULT_HEALTH_EXPECT: (u16, u16) = (200, 399);

/// Ring sizes to suggest, smallest first: primes with well-known capacity.
const SUGGESTED_RING_SIZES: [u32; 3] = [DEFAULT_RING_SIZE, 65_537, 655_373];

// ---- Public API ----

/// Reads and validates the configuration file at `path`.
///
/// # Errors
///
/// When the file cannot be read (the error names the path) or is invalid
/// (see [`parse`]).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: None,
        column: None,
        field: None,
        message: format!("cannot read the configuration: {e}"),
    })?;
    parse(&text, &file)
}

/// A path of the configuration: relative ones are relative to the
/// directory of `lb.toml`.
#[must_use]
pub fn resolve_path(config_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        config_dir.join(path)
    }
}

/// Parses and validates the text of a configuration; `file` is the name used
/// in error messages.
///
/// # Errors
///
/// The first syntax error, unknown key, wrongly typed value or failed
/// validation rule, with its position and field path.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let doc = ImDocument::parse(text).map_err(|e| {
        let mut err = ConfigError::at(file, text, e.span(), None, one_line(e.message()));
        err.message = format!("syntax error: {}", err.message);
        err
    })?;
    let ctx = Ctx {
        file,
        text,
        root: doc.as_item(),
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.serde_error(&e))?;
    ctx.validate(raw)
}

/// Parses a duration written as a whole number and a unit: `ms`, `s`, `m` or
/// `h` (e.g. `"500ms"`, `"2s"`, `"10m"`, `"1h"`), at most [`MAX_DURATION`].
///
/// # Errors
///
/// A message naming the text and the accepted form, or the longest
/// duration when the text is longer.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    read_duration(text).map_err(|e| e.message(text))
}

/// Why [`read_duration`] refused a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DurationError {
    /// Not a whole number and a unit.
    Syntax,
    /// Well formed, but longer than [`MAX_DURATION`] (or than `u64` holds).
    TooLong,
}

impl DurationError {
    fn message(self, text: &str) -> String {
        match self {
            Self::Syntax => format!(
                "invalid duration {text:?}: expected a whole number followed by ms, s, m or h, \
                 like \"500ms\", \"2s\", \"10m\" or \"1h\""
            ),
            Self::TooLong => format!(
                "duration {text:?} is too long: at most {} (365 days)",
                format_duration(MAX_DURATION)
            ),
        }
    }
}

fn read_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() || !matches!(unit, "ms" | "s" | "m" | "h") {
        return Err(DurationError::Syntax);
    }
    // Only digits: the one way to fail is a number beyond u64.
    let n: u64 = number.parse().map_err(|_| DurationError::TooLong)?;
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => n.checked_mul(3600).map(Duration::from_secs),
    };
    d.filter(|d| *d <= MAX_DURATION)
        .ok_or(DurationError::TooLong)
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest
/// unit that represents it exactly.
#[must_use]
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Why a configuration was rejected, and where.
///
/// Displays as `FILE:LINE:COL: FIELD: message`, leaving out the parts that
/// are unknown (`FILE: message` when the problem has no position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    field: Option<String>,
    message: String,
}

impl ConfigError {
    /// The file name given to [`parse`] (or the path given to [`load`]).
    #[must_use]
    pub fn file(&self) -> &str {
        &self.file
    }

    /// 1-based line of the offending key or value, when known.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// 1-based column (in characters) of the offending key or value, when
    /// known.
    #[must_use]
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// Field path, e.g. `tenant[0] ("acme").l4[1].pool`, when known.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// What is wrong, without the position.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    fn at(
        file: &str,
        text: &str,
        span: Option<Range<usize>>,
        field: Option<String>,
        message: String,
    ) -> Self {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = line_col(text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Self {
            file: file.to_owned(),
            line,
            column,
            field,
            message,
        }
    }

    fn render(&self) -> String {
        let mut out = self.file.clone();
        if let Some(line) = self.line {
            let _ = write!(out, ":{line}");
            if let Some(col) = self.column {
                let _ = write!(out, ":{col}");
            }
        }
        out.push_str(": ");
        if let Some(field) = self.field.as_deref().filter(|f| !f.is_empty()) {
            out.push_str(field);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

/// A validated configuration: the node settings and every tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// `[node]`: settings of this edge node.
    pub node: Node,
    /// `[[tenant]]`, in file order.
    pub tenants: Vec<Tenant>,
    /// One entry per L7 listen address (from `[[listener]]`, or its
    /// defaults), sorted by address.
    pub listeners: Vec<Listener>,
}

impl Config {
    /// The tenant called `name`.
    #[must_use]
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }
}

/// `[node]`: where and how this node runs the data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Interface the XDP program attaches to (required).
    pub interface: String,
    /// How the XDP program is attached.
    pub xdp_mode: XdpMode,
    /// How packets reach backends.
    pub forwarding: Forwarding,
    /// bpffs directory holding the pinned maps and programs.
    pub pin_path: PathBuf,
    /// Unix socket of the admin API.
    pub admin_socket: PathBuf,
    /// Optional TCP address of the admin API (bearer token required).
    pub admin_listen: Option<SocketAddr>,
    /// File holding the bearer token of `admin_listen` (set whenever
    /// `admin_listen` is).
    pub admin_token_file: Option<PathBuf>,
    /// Certificate and key of the TCP admin API (TLS when set; only with
    /// `admin_listen`). Relative paths are relative to the configuration
    /// file's directory.
    pub admin_tls: Option<TlsFiles>,
    /// Address of the Prometheus `/metrics` endpoint. Always `Some` when
    /// read from a file today (an absent key means the default).
    pub metrics_listen: Option<SocketAddr>,
    /// Directory of the persisted runtime overrides.
    pub state_dir: PathBuf,
    /// Seed of the flow hash and the Maglev permutations: must be equal on
    /// all nodes behind one ECMP group so that they pick the same backends.
    pub hash_seed: u32,
    /// Capacity of the flow table (LRU entries).
    pub flow_table_size: u32,
    /// How long an idle flow keeps its backend.
    #[serde(serialize_with = "serialize_duration")]
    pub flow_idle_timeout: Duration,
    /// Where `lbd` writes one JSON line per L7 request.
    pub access_log: AccessLog,
    /// How long a stopping `lbd` lets in-flight L7 requests finish.
    #[serde(serialize_with = "serialize_duration")]
    pub drain_timeout: Duration,
    /// L7 requests in flight at which `lbd` sheds tiers (free from 50 %,
    /// standard from 80 %, premium at 100 %); `None`: never.
    pub max_inflight_requests: Option<u64>,
    /// L7 client connections open at once, all listeners together, counted
    /// from `accept` (before TLS); more are closed at once.
    pub max_connections: u64,
}

/// Default `node.max_connections`.
pub const DEFAULT_NODE_MAX_CONNECTIONS: u64 = 100_000;
/// Bounds of `node.max_connections`.
pub const NODE_MAX_CONNECTIONS_RANGE: RangeInclusive<u64> = 1..=10_000_000;

/// `node.xdp_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode when the driver supports it, else generic.
    #[default]
    Auto,
    /// Driver mode only; attaching fails if unsupported.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// `node.forwarding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// IPIP / IP6IP6 encapsulation to the backend, direct server return.
    #[default]
    Ipip,
    /// Destination-MAC rewrite on the same L2 segment, direct server return.
    L2dsr,
}

impl Forwarding {
    /// Whether backends answer clients directly, so that a backend must
    /// serve the VIP's own port (no port translation is possible).
    #[must_use]
    pub fn is_direct_server_return(self) -> bool {
        match self {
            Self::Ipip | Self::L2dsr => true,
        }
    }
}

/// `[[tenant]]`: one customer; owns its pools and VIPs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tenant {
    /// Unique name (`^[a-z0-9][a-z0-9_-]{0,62}$`).
    pub name: String,
    /// `[tenant.limits]`: rate limits by name (`packets_per_second`,
    /// `bytes_per_second`, `requests_per_second`, ...), each at least 1.
    /// The packet keys are read from here by the XDP policy; the request
    /// keys are also in `request_limits`.
    pub limits: Option<BTreeMap<String, u64>>,
    /// The request keys of `[tenant.limits]`, typed (enforced by `lbd`).
    pub request_limits: RequestLimits,
    /// `tier`: who an overloaded `lbd` sheds first.
    pub tier: Tier,
    /// `[tenant.auth]`: API keys and JWTs that authenticate requests.
    pub auth: Auth,
    /// `[tenant.acl]`: source prefixes the tenant accepts or refuses.
    pub acl: Acl,
    /// `[[tenant.pool]]`, in file order.
    pub pools: Vec<Pool>,
    /// `[[tenant.l4]]`: VIPs served by XDP, in file order.
    pub l4: Vec<L4Vip>,
    /// `[[tenant.l7]]`: sites served by `lbd`, in file order.
    pub l7: Vec<L7Site>,
    /// The size of the tenant's flow table in XDP: `limits.max_flows`, or
    /// its share of `node.flow_table_size`; 0 for a tenant without L4 VIPs
    /// (it needs no table).
    pub max_flows: u32,
}

impl Tenant {
    /// The pool called `name`.
    #[must_use]
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// `[[tenant.pool]]`: a set of backends behind one Maglev ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    /// Unique within the tenant.
    pub name: String,
    /// Maglev ring size: prime, fixed for the pool's lifetime.
    pub ring_size: u32,
    /// In file order (the ring is built from them sorted by address).
    pub backends: Vec<BackendConf>,
    /// Active health check, if any.
    pub health: Option<HealthCheck>,
    /// How the L7 proxy uses the pool.
    pub l7: PoolL7,
}

/// One entry of a pool's `backends`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BackendConf {
    /// Where packets are sent.
    pub address: IpAddr,
    /// The port the backend serves; `None` = the VIP's port. In the direct
    /// server return modes it must equal the VIP's port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Share of new flows, `0..=1000`; 0 = draining (no new flows).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A pool's `health = { ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// TCP connect or HTTP request.
    pub kind: HealthKind,
    /// HTTP path (`Some` exactly for HTTP checks).
    pub path: Option<String>,
    /// Time between checks of one backend.
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// Time a check may take; shorter than `interval`.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that bring an up backend down.
    pub fall: u32,
    /// Port to check instead of the backend's.
    pub port: Option<u16>,
    /// Inclusive range of HTTP statuses that count as healthy (`Some`
    /// exactly for HTTP checks).
    pub expect_status: Option<(u16, u16)>,
    /// HTTPS instead of HTTP.
    pub tls: bool,
    /// New backends start down (`initial = "down"`) until `rise` checks
    /// pass, instead of up.
    pub initial_down: bool,
}

/// `health.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP(S) request whose status is checked.
    Http,
}

/// `[[tenant.l4]]`: a VIP served by XDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct L4Vip {
    /// The virtual IP address.
    pub vip: IpAddr,
    /// Destination port; 0 = any port (tried when no exact port matches).
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Name of a pool of the same tenant.
    pub pool: String,
    /// `limits = { ... }`: the VIP's packet limits, enforced in XDP.
    pub limits: VipLimits,
}

/// `[[tenant.l4]] limits`: per-VIP packet limits (absent = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VipLimits {
    pub packets_per_second: Option<u64>,
    pub bytes_per_second: Option<u64>,
    /// New TCP connections (SYNs) per second.
    pub syn_per_second: Option<u64>,
}

/// `[tenant.acl]`: source prefixes a tenant accepts or refuses, enforced in
/// XDP. The longest matching prefix decides; with an `allow` list, sources
/// matching nothing are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Acl {
    /// (network address, prefix length)
    pub allow: Vec<(IpAddr, u8)>,
    pub deny: Vec<(IpAddr, u8)>,
}

/// Names `[tenant.limits]` accepts. The packet limits are enforced in XDP;
/// the request limits ([`REQUEST_LIMIT_KEYS`]) by `lbd`'s L7 tier.
pub const TENANT_LIMIT_KEYS: [&str; 10] = [
    "packets_per_second",
    "bytes_per_second",
    "new_flows_per_second",
    "max_flows",
    "requests_per_second",
    "requests_burst",
    "requests_per_second_per_client_ip",
    "requests_per_second_per_api_key",
    "max_connections",
    "max_inflight_requests",
];

/// `l4.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
}

impl Protocol {
    /// The IP protocol number, as the data plane keys VIPs.
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }
}

/// The config spelling of each enum, for messages and tables.
macro_rules! display_as_config {
    ($($ty:ty { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        impl $ty {
            /// The value as written in `lb.toml`.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

display_as_config! {
    XdpMode { Auto => "auto", Native => "native", Generic => "generic" }
    Forwarding { Ipip => "ipip", L2dsr => "l2dsr" }
    HealthKind { Tcp => "tcp", Http => "http" }
    Protocol { Tcp => "tcp", Udp => "udp" }
}

fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

// ---- What serde decodes: the file as written, before defaults ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    // Optional so that a missing section gets our message, not serde's.
    node: Option<RawNode>,
    #[serde(default)]
    tenant: Vec<RawTenant>,
    #[serde(default)]
    listener: Vec<l7::RawListener>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    interface: Option<String>,
    xdp_mode: Option<XdpMode>,
    forwarding: Option<Forwarding>,
    pin_path: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
    // Strings rather than typed values so that a bad value gets a message
    // that says what the value should look like.
    admin_listen: Option<String>,
    admin_token_file: Option<PathBuf>,
    admin_tls: Option<RawAdminTls>,
    metrics_listen: Option<String>,
    state_dir: Option<PathBuf>,
    hash_seed: Option<u32>,
    flow_table_size: Option<u32>,
    flow_idle_timeout: Option<String>,
    access_log: Option<String>,
    drain_timeout: Option<String>,
    max_inflight_requests: Option<u64>,
    max_connections: Option<u64>,
}

/// `node.admin_tls`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    tier: Option<Tier>,
    limits: Option<BTreeMap<String, u64>>,
    acl: Option<RawAcl>,
    auth: Option<policy::RawAuth>,
    #[serde(default)]
    pool: Vec<RawPool>,
    #[serde(default)]
    l4: Vec<RawL4>,
    #[serde(default)]
    l7: Vec<l7::RawL7>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: String,
    ring_size: Option<u32>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    health: Option<RawHealth>,
    // The L7 keys (serde cannot flatten with deny_unknown_fields).
    balance: Option<Balance>,
    hash_on: Option<String>,
    backend_protocol: Option<BackendProtocol>,
    backend_tls: Option<l7::RawBackendTls>,
    proxy_protocol: Option<String>,
    outlier: Option<l7::RawOutlier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: String,
    port: Option<u16>,
    weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: HealthKind,
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
    port: Option<u16>,
    expect: Option<String>,
    tls: Option<bool>,
    initial: Option<Initial>,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Initial {
    Up,
    Down,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawL4 {
    vip: String,
    port: u16,
    protocol: Protocol,
    pool: String,
    limits: Option<RawVipLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(
    clippy::struct_field_names,
    reason = "the field names are the configuration keys"
)]
struct RawVipLimits {
    packets_per_second: Option<u64>,
    bytes_per_second: Option<u64>,
    syn_per_second: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcl {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

// ---- Field paths ----

/// One step of a field path.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    /// Array index, with the element's `name` when it has one: shown in
    /// messages because `tenant[3]` alone is hard to find in a long file.
    Index(usize, Option<String>),
}

/// A field path such as `tenant[0] ("acme").pool[1].backends[2].port`.
#[derive(Debug, Clone, Default)]
struct FieldPath(Vec<Seg>);

impl FieldPath {
    fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_owned()));
        p
    }

    fn index(&self, i: usize, name: Option<&str>) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i, name.map(str::to_owned)));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n, None) => write!(f, "[{n}]")?,
                Seg::Index(n, Some(name)) => write!(f, "[{n}] ({name:?})")?,
            }
        }
        Ok(())
    }
}

/// The element's `name`, for [`Seg::Index`].
fn element_name(item: &Item) -> Option<String> {
    item.as_table_like()?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// The position of `path` in the document: the span of its value, else of
/// its key, else of the deepest ancestor that exists (so that a missing key
/// points at the table that lacks it).
fn locate(root: &Item, path: &FieldPath) -> Option<Range<usize>> {
    let mut best = root.span();
    let mut item = root;
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => {
                let Some((key, child)) = item.as_table_like().and_then(|t| t.get_key_value(k))
                else {
                    break;
                };
                if let Some(s) = key.span() {
                    best = Some(s);
                }
                child
            }
            Seg::Index(i, _) => match item.get(*i) {
                Some(child) => child,
                None => break,
            },
        };
        if let Some(s) = next.span() {
            best = Some(s);
        }
        item = next;
    }
    best
}

/// The field path at byte `offset`: the deepest key or value whose span
/// contains it. Every node is visited because the span of a `[[table]]`
/// element covers only its header, not the keys below it.
fn path_at(root: &Item, offset: usize) -> FieldPath {
    struct Search {
        offset: usize,
        cur: Vec<Seg>,
        // Best path so far and the length of its span (shorter wins a tie).
        best: Option<(Vec<Seg>, usize)>,
    }
    impl Search {
        fn consider(&mut self, span: Option<Range<usize>>) {
            let Some(s) = span else { return };
            // An empty span (at the end of the file) still "contains" its start.
            if s.start > self.offset || self.offset >= s.end.max(s.start + 1) {
                return;
            }
            let better = match &self.best {
                None => true,
                Some((p, len)) => {
                    self.cur.len() > p.len() || (self.cur.len() == p.len() && s.len() < *len)
                }
            };
            if better {
                self.best = Some((self.cur.clone(), s.len()));
            }
        }
        fn walk(&mut self, item: &Item) {
            if let Some(table) = item.as_table_like() {
                for (name, child) in table.iter() {
                    self.cur.push(Seg::Key(name.to_owned()));
                    self.consider(table.get_key_value(name).and_then(|(k, _)| k.span()));
                    self.consider(child.span());
                    self.walk(child);
                    self.cur.pop();
                }
            } else {
                let len = item
                    .as_array_of_tables()
                    .map(toml_edit::ArrayOfTables::len)
                    .or_else(|| item.as_array().map(toml_edit::Array::len))
                    .unwrap_or(0);
                for i in 0..len {
                    let Some(child) = item.get(i) else { continue };
                    self.cur.push(Seg::Index(i, element_name(child)));
                    self.consider(child.span());
                    self.walk(child);
                    self.cur.pop();
                }
            }
        }
    }
    let mut search = Search {
        offset,
        cur: Vec::new(),
        best: None,
    };
    search.walk(root);
    FieldPath(search.best.map(|(p, _)| p).unwrap_or_default())
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// toml's messages may span lines; ours are one line each.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

// ---- Validation ----

/// What every check needs to report an error.
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    root: &'a Item,
}

/// A pool as the cross-tenant checks see it.
struct PoolRef<'a> {
    index: usize,
    pool: &'a Pool,
}

/// The (vip, port, protocol) identity of an L4 VIP.
type VipKey = (IpAddr, u16, Protocol);

/// Each L4 VIP's place: (tenant index, index in the tenant's `l4`).
type VipOwners = HashMap<VipKey, (usize, usize)>;

impl Ctx<'_> {
    fn error(&self, path: &FieldPath, message: impl Into<String>) -> ConfigError {
        ConfigError::at(
            self.file,
            self.text,
            locate(self.root, path),
            Some(path.to_string()),
            message.into(),
        )
    }

    /// `what (line N)`, for messages that point at a second place.
    /// The duration `text` of `key` (at `path`), which must lie in `range`.
    /// A value outside it, however long, is refused with a message naming
    /// both bounds.
    fn duration_in(
        &self,
        path: &FieldPath,
        key: &str,
        text: &str,
        range: &RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let (lo, hi) = (range.start(), range.end());
        let what = match read_duration(text) {
            Ok(d) if range.contains(&d) => return Ok(d),
            Err(DurationError::Syntax) => {
                return Err(self.error(path, DurationError::Syntax.message(text)));
            }
            Ok(d) if d < *lo => "too short",
            Ok(_) | Err(DurationError::TooLong) => "too long",
        };
        let bounds = if lo.is_zero() {
            format!("at most {}", format_duration(*hi))
        } else {
            format!(
                "between {} and {}",
                format_duration(*lo),
                format_duration(*hi)
            )
        };
        Err(self.error(path, format!("{key} must be {bounds}; {text:?} is {what}")))
    }

    /// The number `value` of `key` (at `path`), which must lie in `range`;
    /// `note` follows the upper bound in the message (e.g. " (1 MiB)").
    fn count_in<T: PartialOrd + Default + fmt::Display>(
        &self,
        path: &FieldPath,
        key: &str,
        value: T,
        range: &RangeInclusive<T>,
        note: &str,
    ) -> Result<T, ConfigError> {
        if range.contains(&value) {
            return Ok(value);
        }
        let (lo, hi) = (range.start(), range.end());
        let what = if value < *lo {
            "too small"
        } else {
            "too large"
        };
        let bounds = if *lo == T::default() {
            format!("at most {hi}{note}")
        } else {
            format!("between {lo} and {hi}{note}")
        };
        Err(self.error(path, format!("{key} must be {bounds}; {value} is {what}")))
    }

    fn place(&self, what: &str, path: &FieldPath) -> String {
        match locate(self.root, path) {
            Some(s) => format!("{what} (line {})", line_col(self.text, s.start).0),
            None => what.to_owned(),
        }
    }

    fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let path = span
            .as_ref()
            .map(|s| path_at(self.root, s.start))
            .unwrap_or_default();
        let mut message = one_line(e.message());
        // serde speaks of fields; the file has keys.
        for (from, to) in [
            ("unknown field", "unknown key"),
            ("missing field", "missing required key"),
        ] {
            if let Some(rest) = message.strip_prefix(from) {
                message = format!("{to}{rest}");
            }
        }
        if let Some(Seg::Key(last)) = path.0.last() {
            if matches!(last.as_str(), "tenant" | "pool" | "l4" | "l7" | "listener")
                && message.contains("expected a sequence")
            {
                // The header of one entry: `[[tenant.pool]]` for `tenant[0].pool`.
                let header: Vec<&str> = path
                    .0
                    .iter()
                    .filter_map(|s| match s {
                        Seg::Key(k) => Some(k.as_str()),
                        Seg::Index(..) => None,
                    })
                    .collect();
                let _ = write!(
                    message,
                    " (write one [[{}]] table per entry, with double brackets)",
                    header.join(".")
                );
            }
            if matches!(last.as_str(), "interval" | "timeout" | "flow_idle_timeout")
                && message.contains("expected a string")
            {
                message.push_str(" (durations are strings with a unit, like \"2s\" or \"500ms\")");
            }
        }
        ConfigError::at(self.file, self.text, span, Some(path.to_string()), message)
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let node = self.node(raw.node, &FieldPath::default().key("node"))?;

        // Pass 1: each tenant on its own (names, pools, backends, checks).
        let mut tenants: Vec<Tenant> = Vec::with_capacity(raw.tenant.len());
        let mut raw_l4 = Vec::with_capacity(raw.tenant.len());
        let mut raw_l7 = Vec::with_capacity(raw.tenant.len());
        let mut tenant_index: HashMap<String, usize> = HashMap::new();
        for (ti, rt) in raw.tenant.into_iter().enumerate() {
            let (tenant, l4, l7) = self.tenant(rt, ti, &mut tenant_index)?;
            tenants.push(tenant);
            raw_l4.push(l4);
            raw_l7.push(l7);
        }

        self.unique_api_keys(&tenants)?;

        // Pass 2: VIPs, which refer to pools and must be unique across
        // tenants, so they need every tenant's pools first.
        let (all_l4, l4_vips) = self.vips(&tenants, raw_l4, &node)?;
        for (tenant, l4) in tenants.iter_mut().zip(all_l4) {
            tenant.l4 = l4;
        }
        // Pass 3: L7 sites, which must not collide with L4 VIPs.
        let listeners = self.l7(&mut tenants, raw_l7, raw.listener, &l4_vips)?;

        self.capacity(&tenants, l4_vips.len() + listeners.len())?;
        self.flow_tables(&mut tenants, node.flow_table_size)?;
        Ok(Config {
            node,
            tenants,
            listeners,
        })
    }

    /// One tenant without its VIPs (returned raw for pass 2).
    fn tenant(
        &self,
        rt: RawTenant,
        ti: usize,
        tenant_index: &mut HashMap<String, usize>,
    ) -> Result<(Tenant, Vec<RawL4>, Vec<l7::RawL7>), ConfigError> {
        let tenants_path = FieldPath::default().key("tenant");
        let tpath = tenants_path.index(ti, Some(&rt.name));
        let name_path = tpath.key("name");
        check_name(&rt.name, "tenant").map_err(|m| self.error(&name_path, m))?;
        if let Some(&first) = tenant_index.get(&rt.name) {
            let first_path = tenants_path.index(first, None).key("name");
            return Err(self.error(
                &name_path,
                format!(
                    "tenant name {:?} is already used by {}",
                    rt.name,
                    self.place(&format!("tenant[{first}]"), &first_path)
                ),
            ));
        }
        tenant_index.insert(rt.name.clone(), ti);

        let mut pools: Vec<Pool> = Vec::with_capacity(rt.pool.len());
        for (pi, rp) in rt.pool.into_iter().enumerate() {
            let ppath = tpath.key("pool").index(pi, Some(&rp.name));
            if let Some(first) = pools.iter().position(|p| p.name == rp.name) {
                let first_path = tpath.key("pool").index(first, None).key("name");
                return Err(self.error(
                    &ppath.key("name"),
                    format!(
                        "pool name {:?} is already used by {} of tenant {:?}",
                        rp.name,
                        self.place(&format!("pool[{first}]"), &first_path),
                        rt.name
                    ),
                ));
            }
            pools.push(self.pool(rp, &ppath)?);
        }

        if let Some(limits) = &rt.limits {
            for (name, value) in limits {
                let lpath = tpath.key("limits").key(name);
                if !TENANT_LIMIT_KEYS.contains(&name.as_str()) {
                    return Err(self.error(
                        &lpath,
                        format!(
                            "unknown limit {name:?}; known: {}",
                            TENANT_LIMIT_KEYS.join(", ")
                        ),
                    ));
                }
                if *value == 0 {
                    return Err(
                        self.error(&lpath, "a limit must be at least 1 (leave it out for none)")
                    );
                }
                // The request keys are bounded with the request policy.
                if let Some(max) = packet_limit_max(name)
                    && *value > max
                {
                    return Err(self.error(&lpath, format!("{name} must be at most {max}")));
                }
            }
        }
        let mut acl = Acl::default();
        if let Some(raw) = rt.acl {
            for (list, entries, out) in [
                ("allow", raw.allow, &mut acl.allow),
                ("deny", raw.deny, &mut acl.deny),
            ] {
                for (i, text) in entries.iter().enumerate() {
                    let epath = tpath.key("acl").key(list).index(i, None);
                    out.push(parse_prefix(text).map_err(|m| self.error(&epath, m))?);
                }
            }
        }
        let request_limits = self.request_limits(rt.limits.as_ref(), &tpath.key("limits"))?;
        let auth = self.auth(rt.auth, &tpath.key("auth"))?;
        let tenant = Tenant {
            name: rt.name,
            limits: rt.limits,
            request_limits,
            tier: rt.tier.unwrap_or_default(),
            auth,
            acl,
            pools,
            l4: Vec::new(),
            l7: Vec::new(),
            max_flows: 0,
        };
        Ok((tenant, rt.l4, rt.l7))
    }

    /// Every tenant's VIPs, and how many there are in all.
    fn vips(
        &self,
        tenants: &[Tenant],
        raw_l4: Vec<Vec<RawL4>>,
        node: &Node,
    ) -> Result<(Vec<Vec<L4Vip>>, VipOwners), ConfigError> {
        let tenants_path = FieldPath::default().key("tenant");
        let pools_by_tenant: Vec<HashMap<&str, PoolRef<'_>>> = tenants
            .iter()
            .map(|t| {
                let pools = t.pools.iter().enumerate();
                pools
                    .map(|(index, pool)| (pool.name.as_str(), PoolRef { index, pool }))
                    .collect()
            })
            .collect();
        let mut seen: HashMap<VipKey, (usize, usize)> = HashMap::new();
        let mut all_l4 = Vec::with_capacity(tenants.len());
        for (ti, vips) in raw_l4.into_iter().enumerate() {
            let tpath = tenants_path.index(ti, Some(&tenants[ti].name));
            let mut l4 = Vec::with_capacity(vips.len());
            for (vi, rv) in vips.into_iter().enumerate() {
                let vpath = tpath.key("l4").index(vi, None);
                let vip = self.l4(rv, &vpath, (ti, vi), tenants, &pools_by_tenant, node)?;
                let key = (vip.vip, vip.port, vip.protocol);
                if let Some(&(other_t, other_v)) = seen.get(&key) {
                    let other = tenants_path
                        .index(other_t, None)
                        .key("l4")
                        .index(other_v, None)
                        .key("vip");
                    let shown = format!(
                        "VIP {}/{}",
                        SocketAddr::new(vip.vip, vip.port),
                        vip.protocol
                    );
                    let message = if other_t == ti {
                        format!(
                            "{shown} is defined twice in tenant {:?}: also at {}",
                            tenants[ti].name,
                            self.place(&format!("l4[{other_v}]"), &other)
                        )
                    } else {
                        format!(
                            "{shown} of tenant {:?} is already defined by tenant {:?} at {}; \
                             a VIP belongs to exactly one tenant",
                            tenants[ti].name,
                            tenants[other_t].name,
                            self.place(&format!("tenant[{other_t}].l4[{other_v}]"), &other)
                        )
                    };
                    return Err(self.error(&vpath.key("vip"), message));
                }
                seen.insert(key, (ti, vi));
                l4.push(vip);
            }
            all_l4.push(l4);
        }
        Ok((all_l4, seen))
    }

    fn node(&self, raw: Option<RawNode>, path: &FieldPath) -> Result<Node, ConfigError> {
        let Some(raw) = raw else {
            return Err(self.error(
                path,
                "missing [node] section: it needs at least `interface`, the network interface the XDP \
                 program attaches to",
            ));
        };
        let interface = raw.interface.ok_or_else(|| {
            self.error(
                &path.key("interface"),
                "missing required key `interface`: the network interface the XDP program attaches to, \
                 e.g. interface = \"eth0\"",
            )
        })?;
        check_interface(&interface).map_err(|m| self.error(&path.key("interface"), m))?;

        let dir = |key: &str, value: Option<PathBuf>, default: &str| match value {
            Some(p) if p.as_os_str().is_empty() => {
                Err(self.error(&path.key(key), format!("{key} is empty")))
            }
            Some(p) => Ok(p),
            None => Ok(PathBuf::from(default)),
        };
        let pin_path = dir("pin_path", raw.pin_path, DEFAULT_PIN_PATH)?;
        let admin_socket = dir("admin_socket", raw.admin_socket, DEFAULT_ADMIN_SOCKET)?;
        let state_dir = dir("state_dir", raw.state_dir, DEFAULT_STATE_DIR)?;

        let metrics_listen = match raw.metrics_listen {
            None => DEFAULT_METRICS_LISTEN,
            Some(s) => s.parse::<SocketAddr>().map_err(|_| {
                self.error(
                    &path.key("metrics_listen"),
                    format!(
                        "invalid address {s:?}: expected an IP address and a port, like \"127.0.0.1:9464\" \
                         or \"[::1]:9464\""
                    ),
                )
            })?,
        };

        let (admin_listen, admin_token_file) =
            self.admin_tcp(raw.admin_listen, raw.admin_token_file, path)?;
        let admin_tls = self.admin_tls(raw.admin_tls, admin_listen.is_some(), path)?;

        let flow_table_size = raw.flow_table_size.unwrap_or(DEFAULT_FLOW_TABLE_ENTRIES);
        if !FLOW_TABLE_SIZE_RANGE.contains(&flow_table_size) {
            return Err(self.error(
                &path.key("flow_table_size"),
                format!(
                    "flow_table_size {flow_table_size} is out of range: must be between {} and {}",
                    FLOW_TABLE_SIZE_RANGE.start(),
                    FLOW_TABLE_SIZE_RANGE.end()
                ),
            ));
        }

        let flow_idle_timeout = match raw.flow_idle_timeout {
            None => DEFAULT_FLOW_IDLE_TIMEOUT,
            Some(s) => self.duration_in(
                &path.key("flow_idle_timeout"),
                "flow_idle_timeout",
                &s,
                &(MIN_FLOW_IDLE_TIMEOUT..=MAX_FLOW_IDLE_TIMEOUT),
            )?,
        };

        let access_log = match raw.access_log {
            None => AccessLog::default(),
            Some(text) => {
                l7::parse_access_log(&text).map_err(|m| self.error(&path.key("access_log"), m))?
            }
        };
        let (drain_timeout, max_inflight_requests, max_connections) = self.node_l7(
            raw.drain_timeout,
            raw.max_inflight_requests,
            raw.max_connections,
            path,
        )?;

        Ok(Node {
            interface,
            xdp_mode: raw.xdp_mode.unwrap_or_default(),
            forwarding: raw.forwarding.unwrap_or_default(),
            pin_path,
            admin_socket,
            admin_listen,
            admin_token_file,
            admin_tls,
            metrics_listen: Some(metrics_listen),
            state_dir,
            hash_seed: raw.hash_seed.unwrap_or(0),
            flow_table_size,
            flow_idle_timeout,
            access_log,
            drain_timeout,
            max_inflight_requests,
            max_connections,
        })
    }

    /// The node's L7 keys: `drain_timeout`, `max_inflight_requests` and
    /// `max_connections`.
    fn node_l7(
        &self,
        drain_timeout: Option<String>,
        max_inflight: Option<u64>,
        max_connections: Option<u64>,
        path: &FieldPath,
    ) -> Result<(Duration, Option<u64>, u64), ConfigError> {
        let drain_timeout = match drain_timeout {
            None => DEFAULT_DRAIN_TIMEOUT,
            Some(text) => self.duration_in(
                &path.key("drain_timeout"),
                "drain_timeout",
                &text,
                &DRAIN_TIMEOUT_RANGE,
            )?,
        };
        let max_inflight_requests = self.max_inflight(max_inflight, path)?;
        let max_connections = self.count_in(
            &path.key("max_connections"),
            "max_connections",
            max_connections.unwrap_or(DEFAULT_NODE_MAX_CONNECTIONS),
            &NODE_MAX_CONNECTIONS_RANGE,
            "",
        )?;
        Ok((drain_timeout, max_inflight_requests, max_connections))
    }

    /// `admin_listen` and `admin_token_file`. The TCP admin listener is only
    /// ever opened with a token: without one, anybody who can reach the port
    /// could reconfigure the node.
    fn admin_tcp(
        &self,
        listen: Option<String>,
        token_file: Option<PathBuf>,
        path: &FieldPath,
    ) -> Result<(Option<SocketAddr>, Option<PathBuf>), ConfigError> {
        let admin_listen = match listen {
            None => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
                self.error(
                    &path.key("admin_listen"),
                    format!(
                        "invalid address {s:?}: expected an IP address and a port, like \"127.0.0.1:9465\" \
                         or \"[::1]:9465\""
                    ),
                )
            })?),
        };
        let admin_token_file = match token_file {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(self.error(&path.key("admin_token_file"), "admin_token_file is empty"));
            }
            other => other,
        };
        if admin_listen.is_some() && admin_token_file.is_none() {
            return Err(self.error(
                &path.key("admin_listen"),
                "admin_listen needs admin_token_file: the file holding the bearer token that TCP \
                 clients must send, e.g. admin_token_file = \"/etc/lb/admin.token\"",
            ));
        }
        Ok((admin_listen, admin_token_file))
    }

    /// `admin_tls`: only with the TCP listener, both files named.
    fn admin_tls(
        &self,
        raw: Option<RawAdminTls>,
        tcp: bool,
        path: &FieldPath,
    ) -> Result<Option<TlsFiles>, ConfigError> {
        let Some(t) = raw else { return Ok(None) };
        if !tcp {
            return Err(self.error(
                &path.key("admin_tls"),
                "admin_tls is the TLS of the TCP admin API: it needs admin_listen",
            ));
        }
        for (key, file) in [("cert", &t.cert), ("key", &t.key)] {
            if file.as_os_str().is_empty() {
                return Err(self.error(
                    &path.key("admin_tls").key(key),
                    format!("admin_tls.{key} is empty"),
                ));
            }
        }
        Ok(Some(TlsFiles {
            cert: t.cert,
            key: t.key,
        }))
    }

    fn pool(&self, raw: RawPool, path: &FieldPath) -> Result<Pool, ConfigError> {
        check_name(&raw.name, "pool").map_err(|m| self.error(&path.key("name"), m))?;

        let ring_size = raw.ring_size.unwrap_or(DEFAULT_RING_SIZE);
        check_ring_size(ring_size).map_err(|m| self.error(&path.key("ring_size"), m))?;

        let mut backends: Vec<BackendConf> = Vec::with_capacity(raw.backends.len());
        for (bi, rb) in raw.backends.into_iter().enumerate() {
            let bpath = path.key("backends").index(bi, None);
            let backend = self.backend(&rb, &bpath)?;
            if let Some(first) = backends
                .iter()
                .position(|b| b.address == backend.address && b.port == backend.port)
            {
                return Err(self.error(
                    &bpath.key("address"),
                    format!(
                        "backend {} appears twice in pool {:?}: also {}",
                        show_backend(&backend),
                        raw.name,
                        self.place(
                            &format!("backends[{first}]"),
                            &path.key("backends").index(first, None).key("address")
                        )
                    ),
                ));
            }
            backends.push(backend);
        }

        // Maglev's balance depends on the ring being much larger than the
        // number of backends that take new flows.
        let active = backends.iter().filter(|b| b.weight > 0).count();
        let most = ring_size / RING_PER_BACKEND;
        if u32::try_from(active).map_or(true, |n| n > most) {
            let needed = u64::try_from(active)
                .unwrap_or(u64::MAX)
                .saturating_mul(u64::from(RING_PER_BACKEND));
            let advice = SUGGESTED_RING_SIZES
                .iter()
                .find(|&&s| u64::from(s) >= needed)
                .map_or_else(
                    || "split the pool: even the largest ring_size is too small".to_owned(),
                    |s| format!("use a larger ring_size such as {s}"),
                );
            let at = if locate_key_exists(self.root, &path.key("ring_size")) {
                "ring_size"
            } else {
                "backends"
            };
            return Err(self.error(
                &path.key(at),
                format!(
                    "pool {:?} has {active} backends with a non-zero weight but ring_size {ring_size} serves \
                     at most {most} (Maglev needs at least {RING_PER_BACKEND} ring slots per backend); {advice}",
                    raw.name
                ),
            ));
        }

        let health = raw
            .health
            .map(|h| self.health(h, &path.key("health")))
            .transpose()?;
        let l7 = self.pool_l7(
            l7::RawPoolL7 {
                balance: raw.balance,
                hash_on: raw.hash_on,
                backend_protocol: raw.backend_protocol,
                backend_tls: raw.backend_tls,
                proxy_protocol: raw.proxy_protocol,
                outlier: raw.outlier,
            },
            path,
        )?;
        Ok(Pool {
            name: raw.name,
            ring_size,
            backends,
            health,
            l7,
        })
    }

    fn backend(&self, raw: &RawBackend, path: &FieldPath) -> Result<BackendConf, ConfigError> {
        let apath = path.key("address");
        let address =
            parse_ip(&raw.address, "backend address").map_err(|m| self.error(&apath, m))?;
        check_unicast(address, "a backend address").map_err(|m| self.error(&apath, m))?;
        if raw.port == Some(0) {
            return Err(self.error(
                &path.key("port"),
                "port 0 is not a port; leave `port` out to use the VIP's port",
            ));
        }
        let weight = raw.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            return Err(self.error(
                &path.key("weight"),
                format!(
                    "weight {weight} is too large: at most {MAX_WEIGHT} (0 drains the backend)"
                ),
            ));
        }
        Ok(BackendConf {
            address,
            port: raw.port,
            weight,
        })
    }

    fn health(&self, raw: RawHealth, path: &FieldPath) -> Result<HealthCheck, ConfigError> {
        let http = raw.kind == HealthKind::Http;
        let http_only = |key: &str, what: &str| {
            self.error(
                &path.key(key),
                format!("`{key}` applies only to kind = \"http\" checks ({what}); a tcp check only connects"),
            )
        };

        let health_path = match (raw.path, http) {
            (Some(_), false) => return Err(http_only("path", "the request path")),
            (Some(p), true) if !p.starts_with('/') => {
                return Err(
                    self.error(&path.key("path"), format!("path {p:?} must start with '/'"))
                );
            }
            (Some(p), true) => Some(p),
            (None, true) => Some(DEFAULT_HEALTH_PATH.to_owned()),
            (None, false) => None,
        };
        let expect_status = match (raw.expect, http) {
            (Some(_), false) => return Err(http_only("expect", "the accepted HTTP statuses")),
            (Some(e), true) => {
                Some(parse_status_range(&e).map_err(|m| self.error(&path.key("expect"), m))?)
            }
            (None, true) => Some(DEFAULT_HEALTH_EXPECT),
            (None, false) => None,
        };
        let tls = raw.tls.unwrap_or(false);
        if tls && !http {
            return Err(http_only("tls", "HTTPS"));
        }

        let duration = |key: &str,
                        value: Option<String>,
                        default: Duration,
                        range: &RangeInclusive<Duration>|
         -> Result<Duration, ConfigError> {
            match value {
                None => Ok(default),
                Some(s) => self.duration_in(&path.key(key), key, &s, range),
            }
        };
        let timeout_written = raw.timeout.is_some();
        let interval = duration(
            "interval",
            raw.interval,
            DEFAULT_HEALTH_INTERVAL,
            &HEALTH_INTERVAL_RANGE,
        )?;
        let timeout = duration(
            "timeout",
            raw.timeout,
            DEFAULT_HEALTH_TIMEOUT,
            &HEALTH_TIMEOUT_RANGE,
        )?;
        if timeout >= interval {
            // Point at the timeout when it was written, else at the interval
            // that made the default timeout too long.
            let (at, which) = if timeout_written {
                ("timeout", "timeout")
            } else {
                ("interval", "the default timeout")
            };
            return Err(self.error(
                &path.key(at),
                format!(
                    "{which} {} must be shorter than interval {}, or checks would overlap; \
                     set a shorter timeout",
                    format_duration(timeout),
                    format_duration(interval)
                ),
            ));
        }

        let count = |key: &str, value: Option<u32>, default: u32| match value {
            Some(0) => Err(self.error(
                &path.key(key),
                format!(
                    "{key} must be at least 1 (and at most {})",
                    HEALTH_COUNT_RANGE.end()
                ),
            )),
            Some(n) => self.count_in(&path.key(key), key, n, &HEALTH_COUNT_RANGE, ""),
            None => Ok(default),
        };
        let rise = count("rise", raw.rise, DEFAULT_HEALTH_RISE)?;
        let fall = count("fall", raw.fall, DEFAULT_HEALTH_FALL)?;
        if raw.port == Some(0) {
            return Err(self.error(
                &path.key("port"),
                "port 0 is not a port; leave `port` out to check each backend's own port",
            ));
        }

        Ok(HealthCheck {
            kind: raw.kind,
            path: health_path,
            interval,
            timeout,
            rise,
            fall,
            port: raw.port,
            expect_status,
            tls,
            initial_down: raw.initial == Some(Initial::Down),
        })
    }

    fn l4(
        &self,
        raw: RawL4,
        path: &FieldPath,
        (ti, vi): (usize, usize),
        tenants: &[Tenant],
        pools_by_tenant: &[HashMap<&str, PoolRef<'_>>],
        node: &Node,
    ) -> Result<L4Vip, ConfigError> {
        let tenant = &tenants[ti];
        let vpath = path.key("vip");
        let vip = parse_ip(&raw.vip, "VIP").map_err(|m| self.error(&vpath, m))?;
        check_unicast(vip, "a VIP").map_err(|m| self.error(&vpath, m))?;

        let Some(pool) = pools_by_tenant[ti].get(raw.pool.as_str()) else {
            let mut message = format!("no pool named {:?} in tenant {:?}", raw.pool, tenant.name);
            if let Some(owner) = tenants
                .iter()
                .find(|t| t.name != tenant.name && t.pool(&raw.pool).is_some())
            {
                let _ = write!(
                    message,
                    "; a pool of that name belongs to tenant {:?}, and a tenant can only use its own pools",
                    owner.name
                );
            }
            if tenant.pools.is_empty() {
                let _ = write!(message, " (tenant {:?} has no pools)", tenant.name);
            } else {
                let names: Vec<&str> = tenant.pools.iter().map(|p| p.name.as_str()).collect();
                let _ = write!(message, " (pools: {})", names.join(", "));
            }
            return Err(self.error(&path.key("pool"), message));
        };

        // Direct server return: the backend answers the client itself, from
        // the address and port the client sent to, so no port translation
        // can happen anywhere.
        if node.forwarding.is_direct_server_return() && raw.port != 0 {
            for (bi, b) in pool.pool.backends.iter().enumerate() {
                if let Some(port) = b.port.filter(|&p| p != raw.port) {
                    let bpath = FieldPath::default()
                        .key("tenant")
                        .index(ti, Some(&tenant.name))
                        .key("pool")
                        .index(pool.index, Some(&pool.pool.name))
                        .key("backends")
                        .index(bi, None)
                        .key("port");
                    return Err(self.error(
                        &bpath,
                        format!(
                            "backend {} listens on port {port} but VIP {} of {} forwards by direct \
                             server return, which keeps the VIP's port; set the backend port to {} or remove it",
                            SocketAddr::new(b.address, port),
                            SocketAddr::new(vip, raw.port),
                            self.place(&format!("tenant[{ti}].l4[{vi}]"), &vpath),
                            raw.port
                        ),
                    ));
                }
            }
        }

        let limits = self.vip_limits(raw.limits, &path.key("limits"))?;
        Ok(L4Vip {
            vip,
            port: raw.port,
            protocol: raw.protocol,
            pool: raw.pool,
            limits,
        })
    }

    /// A VIP's or a listener's `limits`.
    fn vip_limits(
        &self,
        raw: Option<RawVipLimits>,
        path: &FieldPath,
    ) -> Result<VipLimits, ConfigError> {
        let Some(l) = raw else {
            return Ok(VipLimits::default());
        };
        for (name, value) in [
            ("packets_per_second", l.packets_per_second),
            ("bytes_per_second", l.bytes_per_second),
            ("syn_per_second", l.syn_per_second),
        ] {
            if value == Some(0) {
                return Err(self.error(
                    &path.key(name),
                    "a limit must be at least 1 (leave it out for none)",
                ));
            }
            if let (Some(v), Some(max)) = (value, packet_limit_max(name))
                && v > max
            {
                return Err(self.error(&path.key(name), format!("{name} must be at most {max}")));
            }
        }
        Ok(VipLimits {
            packets_per_second: l.packets_per_second,
            bytes_per_second: l.bytes_per_second,
            syn_per_second: l.syn_per_second,
        })
    }

    /// Sizes every L4 tenant's flow table (`Tenant::max_flows`): its
    /// `limits.max_flows`, else an equal share of what `node.flow_table_size`
    /// leaves after the tenants that set one. The sizes add up to at most
    /// `node.flow_table_size`, so the node's flow memory stays what the
    /// operator chose however many tenants it serves.
    fn flow_tables(&self, tenants: &mut [Tenant], node_size: u32) -> Result<(), ConfigError> {
        let root = FieldPath::default();
        let node_path = root.key("node").key("flow_table_size");
        let explicit = |t: &Tenant| {
            t.limits
                .as_ref()
                .and_then(|l| l.get("max_flows"))
                .map(|v| u32::try_from(*v).unwrap_or(u32::MAX))
        };
        let (mut reserved, mut shared) = (0u64, 0u32);
        for (ti, t) in tenants.iter().enumerate() {
            let Some(n) = explicit(t) else {
                shared += u32::from(!t.l4.is_empty());
                continue;
            };
            let path = root
                .key("tenant")
                .index(ti, Some(&t.name))
                .key("limits")
                .key("max_flows");
            if n < MIN_TENANT_FLOWS {
                return Err(self.error(
                    &path,
                    format!("max_flows must be at least {MIN_TENANT_FLOWS}"),
                ));
            }
            if t.l4.is_empty() {
                continue;
            }
            reserved += u64::from(n);
            if reserved > u64::from(node_size) {
                return Err(self.error(
                    &path,
                    format!(
                        "the tenants' max_flows add up to {reserved} so far, more than \
                         node.flow_table_size ({node_size}); raise node.flow_table_size or lower max_flows"
                    ),
                ));
            }
        }
        let share = if shared == 0 {
            0
        } else {
            // `reserved <= node_size`, so this fits.
            u32::try_from((u64::from(node_size) - reserved) / u64::from(shared)).unwrap_or(0)
        };
        if shared > 0 && share < MIN_TENANT_FLOWS {
            return Err(self.error(
                &node_path,
                format!(
                    "node.flow_table_size ({node_size}) leaves {share} flows to each of the {shared} \
                     tenants with L4 VIPs and no limits.max_flows; each needs at least \
                     {MIN_TENANT_FLOWS}: raise node.flow_table_size or lower the tenants' max_flows"
                ),
            ));
        }
        for t in tenants.iter_mut() {
            t.max_flows = if t.l4.is_empty() {
                0
            } else {
                explicit(t).unwrap_or(share)
            };
        }
        Ok(())
    }

    /// Limits of the data plane's maps, checked now so that a config that
    /// cannot fit is rejected before anything is written.
    fn capacity(&self, tenants: &[Tenant], vips: usize) -> Result<(), ConfigError> {
        // Tenant and pool ids start at 1 (see `reconcile`): one fewer fits.
        const TENANTS: u32 = MAX_TENANTS - 1;
        const POOLS: u32 = MAX_POOLS - 1;
        let root = FieldPath::default();
        let too_many = |path: &FieldPath, what: &str, max: u32| {
            self.error(
                path,
                format!("too many {what}: the data plane holds at most {max}"),
            )
        };
        if tenants.len() > TENANTS as usize {
            return Err(too_many(
                &root.key("tenant").index(TENANTS as usize, None),
                "tenants",
                TENANTS,
            ));
        }
        if vips > MAX_VIPS as usize {
            return Err(too_many(
                &root.key("tenant"),
                "VIPs (L4 VIPs plus L7 listen addresses)",
                MAX_VIPS,
            ));
        }
        let (mut pools, mut backends, mut ring_slots, mut largest) = (0usize, 0usize, 0u64, 0u64);
        for (ti, t) in tenants.iter().enumerate() {
            for (pi, p) in t.pools.iter().enumerate() {
                let ppath = root
                    .key("tenant")
                    .index(ti, Some(&t.name))
                    .key("pool")
                    .index(pi, Some(&p.name));
                pools += 1;
                backends += p.backends.len();
                // Only pools behind an L4 VIP get a ring in the data plane.
                if t.l4.iter().any(|v| v.pool == p.name) {
                    ring_slots += u64::from(p.ring_size);
                    largest = largest.max(u64::from(p.ring_size));
                }
                if pools > POOLS as usize {
                    return Err(too_many(&ppath, "pools", POOLS));
                }
                if backends > MAX_BACKENDS as usize {
                    return Err(too_many(&ppath.key("backends"), "backends", MAX_BACKENDS));
                }
                // Rings are replaced one at a time, the new one written
                // beside the old: the arena needs room for one more.
                if ring_slots + largest > u64::from(RING_ARENA_ENTRIES) {
                    return Err(self.error(
                        &ppath.key("ring_size"),
                        format!(
                            "the pools' Maglev rings need {ring_slots} slots so far, plus {largest} to replace \
                             the largest, more than the {RING_ARENA_ENTRIES} the data plane holds; use \
                             smaller ring_size values or fewer pools"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The highest value of a packet limit (of a tenant, a VIP or a listener),
/// by key; `None` for the request keys, which the request policy bounds.
fn packet_limit_max(name: &str) -> Option<u64> {
    match name {
        "packets_per_second" => Some(MAX_PACKET_RATE),
        "bytes_per_second" => Some(MAX_BYTE_RATE),
        "new_flows_per_second" | "syn_per_second" => Some(MAX_FLOW_RATE),
        "max_flows" => Some(u64::from(*FLOW_TABLE_SIZE_RANGE.end())),
        _ => None,
    }
}

/// Whether `path` names a key present in the document.
fn locate_key_exists(root: &Item, path: &FieldPath) -> bool {
    let mut item = root;
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => item.as_table_like().and_then(|t| t.get(k)),
            Seg::Index(i, _) => item.get(*i),
        };
        match next {
            Some(n) => item = n,
            None => return false,
        }
    }
    true
}

/// Tenant and pool names: they appear in metrics labels, URLs and file
/// names, so they are kept to a portable alphabet.
fn check_name(name: &str, what: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name {name:?}: use 1 to 63 lowercase letters, digits, '_' or '-', starting with a \
             letter or digit"
        ))
    }
}

/// The rules the kernel applies to interface names (`dev_valid_name`).
fn check_interface(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(
            "interface is empty: name the network interface the XDP program attaches to".to_owned(),
        );
    }
    if name.len() > 15 {
        return Err(format!(
            "interface name {name:?} is longer than 15 bytes, the kernel's limit"
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

fn check_ring_size(n: u32) -> Result<(), String> {
    let (lo, hi) = (*RING_SIZE_RANGE.start(), *RING_SIZE_RANGE.end());
    if !RING_SIZE_RANGE.contains(&n) {
        return Err(format!(
            "ring_size {n} is out of range: must be a prime between {lo} and {hi} (usual sizes: {} and {})",
            SUGGESTED_RING_SIZES[0], SUGGESTED_RING_SIZES[1]
        ));
    }
    if !is_prime(n) {
        // The bounds are prime, so both searches end inside the range.
        let below = (lo..n).rev().find(|&k| is_prime(k)).unwrap_or(lo);
        let above = (n..=hi).find(|&k| is_prime(k)).unwrap_or(hi);
        return Err(format!(
            "ring_size {n} is not prime; try {below} or {above} (the nearest primes; usual sizes are {} and {})",
            SUGGESTED_RING_SIZES[0], SUGGESTED_RING_SIZES[1]
        ));
    }
    Ok(())
}

fn parse_ip(text: &str, what: &str) -> Result<IpAddr, String> {
    text.parse::<IpAddr>().map_err(|_| {
        if text.parse::<SocketAddr>().is_ok() {
            format!("invalid {what} {text:?}: write the address alone and the port in `port`")
        } else {
            format!("invalid {what} {text:?}: expected an IPv4 or IPv6 address, like \"192.0.2.10\" or \"2001:db8::10\"")
        }
    })
}

/// Addresses that can never be one host's: a VIP or a backend there is a
/// mistake, never an intent.
/// Parses `address/length` (a bare address is a host prefix); the address
/// must be the network address of the prefix.
fn parse_prefix(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let ip: IpAddr = addr.trim().parse().map_err(|_| {
        format!("{text:?} is not a prefix like \"10.0.0.0/8\" or \"2001:db8::/32\"")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
    };
    let value: u128 = match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let host_bits = u32::from(max - len);
    let host_mask = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    if value & host_mask != 0 {
        return Err(format!(
            "{text:?}: bits are set past the /{len} prefix; write the network address of the prefix"
        ));
    }
    Ok((ip, len))
}

fn check_unicast(ip: IpAddr, what: &str) -> Result<(), String> {
    let problem = match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            return Err(format!(
                "{ip} is an IPv4-mapped IPv6 address, which never appears on the wire; write {} instead",
                v6.to_ipv4_mapped()
                    .map_or_else(String::new, |v4| v4.to_string())
            ));
        }
        _ => None,
    };
    match problem {
        Some(p) => Err(format!("{ip} is {p}, not usable as {what}")),
        None => Ok(()),
    }
}

/// `"200-399"` or `"204"`.
fn parse_status_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "invalid expect {text:?}: expected an HTTP status or an inclusive range, like \"200\" or \"200-399\""
        )
    };
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(format!(
            "invalid expect {text:?}: statuses are 100 to 599, the lower one first"
        ));
    }
    Ok((lo, hi))
}

fn show_backend(b: &BackendConf) -> String {
    match b.port {
        Some(p) => SocketAddr::new(b.address, p).to_string(),
        None => b.address.to_string(),
    }
}

#[cfg(test)]
mod bounds_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "[node]\ninterface = \"eth0\"\n";

    fn ok(text: &str) -> Config {
        parse(text, "lb.toml").unwrap_or_else(|e| panic!("expected a valid config, got: {e}"))
    }

    fn err(text: &str) -> ConfigError {
        match parse(text, "lb.toml") {
            Ok(c) => panic!("expected an error, got a valid config: {c:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the error's line, field path and a fragment of its message.
    #[track_caller]
    fn assert_err(text: &str, line: usize, field: &str, fragment: &str) -> ConfigError {
        let e = err(text);
        let shown = e.to_string();
        assert_eq!(e.line(), Some(line), "wrong line in: {shown}");
        assert_eq!(e.field(), Some(field), "wrong field in: {shown}");
        assert!(
            e.message().contains(fragment),
            "message lacks {fragment:?}: {shown}"
        );
        assert!(
            shown.starts_with(&format!("lb.toml:{line}:")),
            "bad prefix: {shown}"
        );
        e
    }

    /// The example of design.md, with a second tenant and a listener.
    const FULL: &str = r#"
[node]
interface = "eth0"          # where the XDP program attaches
xdp_mode = "auto"           # auto | native | generic
forwarding = "ipip"         # ipip | l2dsr
pin_path = "/sys/fs/bpf/lb"
admin_socket = "/run/lb/admin.sock"
metrics_listen = "127.0.0.1:9464"

[[tenant]]
name = "acme"
[tenant.limits]             # all optional
packets_per_second = 200000
requests_per_second = 1000

[[tenant.pool]]
name = "web"
backends = [ { address = "10.0.1.11", port = 80, weight = 1 } ]
health = { kind = "http", path = "/healthz", interval = "1s", timeout = "500ms", rise = 2, fall = 3 }

[[tenant.l4]]               # served by XDP
vip = "203.0.113.10"
port = 80
protocol = "tcp"
pool = "web"

[[tenant.l7]]               # served by lbd
listen = "203.0.113.20:443"
hosts = ["api.acme.example", "*.acme.example"]
tls = { cert = "certs/acme.pem", key = "certs/acme.key" }
routes = [ { path_prefix = "/", pool = "web" } ]

[[tenant]]
name = "globex"

[[tenant.pool]]
name = "dns"
ring_size = 65537
backends = [ { address = "2001:db8::53" }, { address = "2001:db8::54", weight = 0 } ]
health = { kind = "tcp", port = 53, initial = "down" }

[[tenant.l4]]
vip = "2001:db8:ffff::53"
port = 53
protocol = "udp"
pool = "dns"

[[listener]]                # optional: settings shared by all tenants on an address
address = "203.0.113.20:443"
identify = ["sni", "host"]  # order of tenant identification
default_tenant = "acme"     # optional
"#;

    #[test]
    fn full_example_parses() {
        let c = ok(FULL);
        assert_eq!(c.node.interface, "eth0");
        assert_eq!(c.tenants.len(), 2);
        let acme = c.tenant("acme").expect("tenant acme");
        let limits = acme.limits.as_ref().expect("acme has limits");
        assert_eq!(limits.get("packets_per_second"), Some(&200_000));
        let web = acme.pool("web").expect("pool web");
        assert_eq!(web.ring_size, DEFAULT_RING_SIZE);
        assert_eq!(
            web.backends,
            vec![BackendConf {
                address: "10.0.1.11".parse().expect("ip"),
                port: Some(80),
                weight: 1
            }]
        );
        let h = web.health.as_ref().expect("web has a health check");
        assert_eq!(h.kind, HealthKind::Http);
        assert_eq!(h.path.as_deref(), Some("/healthz"));
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(1), Duration::from_millis(500))
        );
        assert_eq!(h.expect_status, Some((200, 399)));
        assert!(!h.initial_down && !h.tls);
        assert_eq!(
            acme.l4,
            vec![L4Vip {
                vip: "203.0.113.10".parse().expect("ip"),
                port: 80,
                protocol: Protocol::Tcp,
                pool: "web".into(),
                limits: VipLimits::default(),
            }]
        );
        assert_eq!(acme.l7.len(), 1);
        let site = &acme.l7[0];
        assert_eq!(site.listen, "203.0.113.20:443".parse().expect("addr"));
        assert_eq!(site.protocol, L7Protocol::Https);
        assert_eq!(site.hosts, ["api.acme.example", "*.acme.example"]);
        assert_eq!(
            site.tls.as_ref().map(|t| t.cert.clone()),
            Some("certs/acme.pem".into())
        );
        assert_eq!(site.routes[0].pool, "web");
        assert_eq!(site.timeouts, Timeouts::default());
        assert_eq!(web.l7, PoolL7::default());

        let globex = c.tenant("globex").expect("tenant globex");
        let dns = globex.pool("dns").expect("pool dns");
        assert_eq!(dns.ring_size, 65_537);
        assert_eq!(dns.backends[0].weight, 1);
        assert_eq!(dns.backends[1].weight, 0);
        let h = dns.health.as_ref().expect("dns has a health check");
        assert_eq!(
            (h.kind, h.path.as_deref(), h.expect_status),
            (HealthKind::Tcp, None, None)
        );
        assert_eq!(h.port, Some(53));
        assert!(h.initial_down);
        assert_eq!(globex.l4[0].protocol.number(), 17);
        assert_eq!(c.listeners.len(), 1);

        // It serializes for `lbctl --json`, durations as config strings.
        let json = serde_json::to_value(&c).expect("config serializes");
        assert_eq!(json["tenants"][0]["pools"][0]["health"]["timeout"], "500ms");
        assert_eq!(json["node"]["flow_idle_timeout"], "10m");
    }

    #[test]
    fn defaults_are_applied() {
        let c = ok(NODE);
        let n = &c.node;
        assert_eq!(n.xdp_mode, XdpMode::Auto);
        assert_eq!(n.forwarding, Forwarding::Ipip);
        assert_eq!(n.pin_path, PathBuf::from("/sys/fs/bpf/lb"));
        assert_eq!(n.admin_socket, PathBuf::from("/run/lb/admin.sock"));
        assert_eq!((n.admin_listen, n.admin_token_file.as_ref()), (None, None));
        assert_eq!(
            n.metrics_listen,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
        assert_eq!(n.state_dir, PathBuf::from("/var/lib/lb"));
        assert_eq!(n.hash_seed, 0);
        assert_eq!(n.flow_table_size, DEFAULT_FLOW_TABLE_ENTRIES);
        assert_eq!(n.flow_idle_timeout, Duration::from_mins(10));
        assert!(c.tenants.is_empty() && c.listeners.is_empty());

        let c = ok(&format!(
            "{NODE}[[tenant]]\nname = \"a\"\n[[tenant.pool]]\nname = \"p\"\n\
             backends = [{{ address = \"10.0.0.1\" }}]\nhealth = {{ kind = \"http\" }}\n"
        ));
        let p = &c.tenants[0].pools[0];
        assert_eq!(p.ring_size, 16_381);
        assert_eq!(p.backends[0].port, None);
        assert_eq!(p.backends[0].weight, 1);
        let h = p.health.as_ref().expect("health");
        assert_eq!(h.path.as_deref(), Some("/"));
        assert_eq!(
            (h.interval, h.timeout, h.rise, h.fall),
            (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
        );
        assert_eq!(h.expect_status, Some((200, 399)));
        assert!(c.tenants[0].limits.is_none());
    }

    #[test]
    fn node_settings_are_read() {
        let c = ok(
            "[node]\ninterface = \"veth0\"\nxdp_mode = \"generic\"\nforwarding = \"l2dsr\"\n\
                    hash_seed = 42\nflow_table_size = 4096\nflow_idle_timeout = \"30s\"\n\
                    metrics_listen = \"[::1]:9000\"\nstate_dir = \"/tmp/lb\"\n",
        );
        assert_eq!(c.node.xdp_mode, XdpMode::Generic);
        assert_eq!(c.node.forwarding, Forwarding::L2dsr);
        assert_eq!(c.node.hash_seed, 42);
        assert_eq!(c.node.flow_table_size, 4096);
        assert_eq!(c.node.flow_idle_timeout, Duration::from_secs(30));
        assert_eq!(
            c.node.metrics_listen,
            Some("[::1]:9000".parse().expect("addr"))
        );
        assert_eq!(c.node.state_dir, PathBuf::from("/tmp/lb"));
    }

    #[test]
    fn admin_tcp_listener_needs_a_token_file() {
        let c = ok(&format!(
            "{NODE}admin_listen = \"127.0.0.1:9465\"\nadmin_token_file = \"/etc/lb/admin.token\"\n"
        ));
        assert_eq!(
            c.node.admin_listen,
            Some("127.0.0.1:9465".parse().expect("addr"))
        );
        assert_eq!(
            c.node.admin_token_file,
            Some(PathBuf::from("/etc/lb/admin.token"))
        );
        // A token file alone is harmless (the listener is off).
        let c = ok(&format!(
            "{NODE}admin_token_file = \"/etc/lb/admin.token\"\n"
        ));
        assert_eq!(c.node.admin_listen, None);
        assert_err(
            &format!("{NODE}admin_listen = \"127.0.0.1:9465\"\n"),
            3,
            "node.admin_listen",
            "admin_listen needs admin_token_file",
        );
        assert_err(
            &format!("{NODE}admin_listen = \"localhost\"\nadmin_token_file = \"/t\"\n"),
            3,
            "node.admin_listen",
            "invalid address \"localhost\"",
        );
        assert_err(
            &format!("{NODE}admin_listen = \"[::1]:9465\"\nadmin_token_file = \"\"\n"),
            4,
            "node.admin_token_file",
            "empty",
        );
        assert_err(
            &format!("{NODE}admin_listen = 9465\n"),
            3,
            "node.admin_listen",
            "expected a string",
        );
    }

    /// A tenant with one pool and, when `vip` is set, an L4 VIP on it.
    fn flow_tenant(name: &str, vip: Option<&str>, limits: &str) -> String {
        let l4 = vip.map_or(String::new(), |vip| {
            format!(
                "[[tenant.l4]]\nvip = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n"
            )
        });
        format!(
            "[[tenant]]\nname = \"{name}\"\n{limits}[[tenant.pool]]\nname = \"web\"\n\
             backends = [{{ address = \"10.0.0.1\" }}]\n{l4}"
        )
    }

    #[test]
    fn flow_tables_share_the_node_size_after_explicit_max_flows() {
        let node = format!("{NODE}flow_table_size = 4096\n");
        // Three L4 tenants share equally; a tenant without L4 VIPs gets none.
        let c = ok(&format!(
            "{node}{}{}{}{}",
            flow_tenant("a", Some("192.0.2.1"), ""),
            flow_tenant("b", Some("192.0.2.2"), ""),
            flow_tenant("c", Some("192.0.2.3"), ""),
            flow_tenant("pools-only", None, ""),
        ));
        let sizes: Vec<u32> = c.tenants.iter().map(|t| t.max_flows).collect();
        assert_eq!(sizes, [1365, 1365, 1365, 0]);
        // An explicit max_flows is taken off the top; the rest is shared.
        let c = ok(&format!(
            "{node}{}{}{}",
            flow_tenant(
                "a",
                Some("192.0.2.1"),
                "[tenant.limits]\nmax_flows = 2048\n"
            ),
            flow_tenant("b", Some("192.0.2.2"), ""),
            flow_tenant("c", Some("192.0.2.3"), ""),
        ));
        let sizes: Vec<u32> = c.tenants.iter().map(|t| t.max_flows).collect();
        assert_eq!(sizes, [2048, 1024, 1024]);
        // Without L4 VIPs, max_flows reserves nothing.
        let c = ok(&format!(
            "{node}{}{}",
            flow_tenant("a", Some("192.0.2.1"), ""),
            flow_tenant("l7", None, "[tenant.limits]\nmax_flows = 4096\n"),
        ));
        assert_eq!(c.tenants[0].max_flows, 4096);
        assert_eq!(c.tenants[1].max_flows, 0);
    }

    #[test]
    fn flow_tables_that_do_not_fit_the_node_are_refused() {
        let node = format!("{NODE}flow_table_size = 4096\n");
        let line_of = |text: &str, needle: &str| {
            text[..text.find(needle).expect("needle")].lines().count() + 1
        };
        let text = format!(
            "{node}{}{}",
            flow_tenant(
                "a",
                Some("192.0.2.1"),
                "[tenant.limits]\nmax_flows = 3000\n"
            ),
            flow_tenant(
                "b",
                Some("192.0.2.2"),
                "[tenant.limits]\nmax_flows = 1097\n"
            ),
        );
        assert_err(
            &text,
            line_of(&text, "max_flows = 1097"),
            "tenant[1] (\"b\").limits.max_flows",
            "add up to 4097 so far, more than node.flow_table_size (4096)",
        );
        let text = format!(
            "{node}{}",
            flow_tenant("a", Some("192.0.2.1"), "[tenant.limits]\nmax_flows = 63\n")
        );
        assert_err(
            &text,
            line_of(&text, "max_flows = 63"),
            "tenant[0] (\"a\").limits.max_flows",
            "at least 64",
        );
        // 4096 - 4000 = 96 left for two tenants: 48 each is too few.
        let text = format!(
            "{node}{}{}{}",
            flow_tenant(
                "a",
                Some("192.0.2.1"),
                "[tenant.limits]\nmax_flows = 4000\n"
            ),
            flow_tenant("b", Some("192.0.2.2"), ""),
            flow_tenant("c", Some("192.0.2.3"), ""),
        );
        assert_err(
            &text,
            3,
            "node.flow_table_size",
            "leaves 48 flows to each of the 2 tenants",
        );
    }

    #[test]
    fn admin_tls_needs_the_tcp_listener_and_both_files() {
        let tcp = "admin_listen = \"0.0.0.0:9465\"\nadmin_token_file = \"/etc/lb/admin.token\"\n";
        let c = ok(&format!(
            "{NODE}{tcp}admin_tls = {{ cert = \"admin.pem\", key = \"/etc/lb/admin.key\" }}\n"
        ));
        assert_eq!(
            c.node.admin_tls,
            Some(TlsFiles {
                cert: PathBuf::from("admin.pem"),
                key: PathBuf::from("/etc/lb/admin.key"),
            })
        );
        assert_eq!(ok(&format!("{NODE}{tcp}")).node.admin_tls, None);
        assert_err(
            &format!("{NODE}admin_tls = {{ cert = \"a.pem\", key = \"a.key\" }}\n"),
            3,
            "node.admin_tls",
            "needs admin_listen",
        );
        assert_err(
            &format!("{NODE}{tcp}admin_tls = {{ cert = \"a.pem\" }}\n"),
            5,
            "node.admin_tls",
            "missing required key `key`",
        );
        assert_err(
            &format!("{NODE}{tcp}admin_tls = {{ cert = \"\", key = \"a.key\" }}\n"),
            5,
            "node.admin_tls.cert",
            "empty",
        );
    }

    #[test]
    fn node_errors() {
        let e = err("[[tenant]]\nname = \"a\"\n");
        assert_eq!(e.field(), Some("node"));
        assert!(e.message().contains("missing [node]"), "{e}");
        assert_err(
            "[node]\nxdp_mode = \"auto\"\n",
            1,
            "node.interface",
            "missing required key `interface`",
        );
        assert_err(
            "[node]\ninterface = \"a-very-long-name0\"\n",
            2,
            "node.interface",
            "longer than 15",
        );
        assert_err(
            &format!("{NODE}xdp_mode = \"fast\"\n"),
            3,
            "node.xdp_mode",
            "unknown variant `fast`",
        );
        assert_err(
            &format!("{NODE}forwarding = \"nat\"\n"),
            3,
            "node.forwarding",
            "unknown variant `nat`",
        );
        assert_err(
            &format!("{NODE}metrics_listen = \"9464\"\n"),
            3,
            "node.metrics_listen",
            "invalid address",
        );
        assert_err(
            &format!("{NODE}flow_table_size = 100\n"),
            3,
            "node.flow_table_size",
            "out of range",
        );
        assert_err(
            &format!("{NODE}hash_seed = -1\n"),
            3,
            "node.hash_seed",
            "expected u32",
        );
        assert_err(
            &format!("{NODE}flow_idle_timeout = \"5 parsecs\"\n"),
            3,
            "node.flow_idle_timeout",
            "5 parsecs",
        );
        assert_err(
            &format!("{NODE}flow_idle_timeout = 600\n"),
            3,
            "node.flow_idle_timeout",
            "durations are strings",
        );
        assert_err(
            &format!("{NODE}flow_idle_timeout = \"10ms\"\n"),
            3,
            "node.flow_idle_timeout",
            "too short",
        );
        assert_err(
            &format!("{NODE}pin_path = \"\"\n"),
            3,
            "node.pin_path",
            "empty",
        );
    }

    #[test]
    fn syntax_error_reports_line_and_column() {
        let e = err("[node]\ninterface = \"eth0\"\nhash_seed = = 3\n");
        assert_eq!((e.line(), e.column()), (Some(3), Some(13)), "{e}");
        assert!(e.message().starts_with("syntax error"), "{e}");
        assert!(
            e.to_string().starts_with("lb.toml:3:13: syntax error"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'), "one line: {e}");
    }

    #[test]
    fn unknown_keys_report_line_and_name() {
        let e = assert_err(
            &format!("{NODE}colour = \"blue\"\n"),
            3,
            "node.colour",
            "unknown key `colour`",
        );
        assert_eq!(e.column(), Some(1));
        assert_err(
            &format!("{NODE}[nodes]\nx = 1\n"),
            3,
            "nodes",
            "unknown key `nodes`",
        );
        let text = format!(
            "{NODE}[[tenant]]\nname = \"acme\"\n[[tenant.pool]]\nname = \"web\"\n\
             backends = [ {{ address = \"10.0.0.1\", wieght = 2 }} ]\n"
        );
        assert_err(
            &text,
            7,
            "tenant[0] (\"acme\").pool[0] (\"web\").backends[0].wieght",
            "unknown key `wieght`",
        );
        let text = format!(
            "{NODE}[[tenant]]\nname = \"acme\"\n[[tenant.pool]]\nname = \"web\"\n\
             [tenant.pool.health]\nkind = \"tcp\"\nintervall = \"1s\"\n"
        );
        assert_err(
            &text,
            9,
            "tenant[0] (\"acme\").pool[0] (\"web\").health.intervall",
            "unknown key `intervall`",
        );
        let text = format!(
            "{NODE}[[tenant]]\nname = \"acme\"\n[[tenant.l4]]\nvip = \"192.0.2.1\"\nprot = 80\n"
        );
        assert_err(
            &text,
            7,
            "tenant[0] (\"acme\").l4[0].prot",
            "unknown key `prot`",
        );
    }

    #[test]
    fn wrong_types_report_position() {
        let text = format!(
            "{NODE}[[tenant]]\nname = \"acme\"\n[[tenant.pool]]\nname = \"web\"\nring_size = \"big\"\n"
        );
        assert_err(
            &text,
            7,
            "tenant[0] (\"acme\").pool[0] (\"web\").ring_size",
            "expected u32",
        );
        let text = format!("{NODE}[tenant]\nname = \"acme\"\n");
        assert_err(&text, 3, "tenant", "write one [[tenant]] table per entry");
        let text = format!("{NODE}[[tenant]]\nname = \"acme\"\npool = 3\n");
        assert_err(
            &text,
            5,
            "tenant[0] (\"acme\").pool",
            "write one [[tenant.pool]] table",
        );
        let text = format!(
            "{NODE}[[tenant]]\nname = \"acme\"\n[tenant.limits]\npackets_per_second = \"lots\"\n"
        );
        assert_err(
            &text,
            6,
            "tenant[0] (\"acme\").limits.packets_per_second",
            "expected u64",
        );
        let text = format!("{NODE}[[tenant]]\nname = \"acme\"\n[[tenant.pool]]\n");
        assert_err(
            &text,
            5,
            "tenant[0] (\"acme\").pool[0]",
            "missing required key `name`",
        );
    }

    #[test]
    fn tenant_names() {
        assert_err(
            &format!("{NODE}[[tenant]]\nname = \"Acme\"\n"),
            4,
            "tenant[0] (\"Acme\").name",
            "invalid tenant name",
        );
        assert_err(
            &format!("{NODE}[[tenant]]\nname = \"-x\"\n"),
            4,
            "tenant[0] (\"-x\").name",
            "invalid tenant name",
        );
        let long = "a".repeat(64);
        assert_err(
            &format!("{NODE}[[tenant]]\nname = \"{long}\"\n"),
            4,
            &format!("tenant[0] (\"{long}\").name"),
            "1 to 63",
        );
        ok(&format!(
            "{NODE}[[tenant]]\nname = \"{}\"\n[[tenant]]\nname = \"0_a-b\"\n",
            "a".repeat(63)
        ));
        let e = assert_err(
            &format!("{NODE}[[tenant]]\nname = \"acme\"\n[[tenant]]\nname = \"acme\"\n"),
            6,
            "tenant[1] (\"acme\").name",
            "already used by tenant[0] (line 4)",
        );
        assert_eq!(e.column(), Some(8));
    }

    fn pool_text(pool_body: &str) -> String {
        format!("{NODE}[[tenant]]\nname = \"acme\"\n[[tenant.pool]]\nname = \"web\"\n{pool_body}")
    }
    const WEB: &str = "tenant[0] (\"acme\").pool[0] (\"web\")";

    #[test]
    fn pool_names() {
        assert_err(
            &pool_text("[[tenant.pool]]\nname = \"web\"\n"),
            8,
            "tenant[0] (\"acme\").pool[1] (\"web\").name",
            "already used by pool[0] (line 6)",
        );
        assert_err(
            &format!("{NODE}[[tenant]]\nname = \"acme\"\n[[tenant.pool]]\nname = \"W\"\n"),
            6,
            "tenant[0] (\"acme\").pool[0] (\"W\").name",
            "invalid pool name",
        );
        // The same pool name in two tenants is fine.
        ok(&format!(
            "{}[[tenant]]\nname = \"b\"\n[[tenant.pool]]\nname = \"web\"\n",
            pool_text("")
        ));
    }

    #[test]
    fn ring_size_must_be_prime_and_in_range() {
        let e = assert_err(
            &pool_text("ring_size = 16384\n"),
            7,
            &format!("{WEB}.ring_size"),
            "ring_size 16384 is not prime; try 16381 or 16411",
        );
        assert_eq!(e.column(), Some(13));
        assert_err(
            &pool_text("ring_size = 101\n"),
            7,
            &format!("{WEB}.ring_size"),
            "out of range",
        );
        assert_err(
            &pool_text("ring_size = 655379\n"),
            7,
            &format!("{WEB}.ring_size"),
            "out of range",
        );
        ok(&pool_text("ring_size = 257\n"));
        ok(&pool_text("ring_size = 655373\n"));
    }

    #[test]
    fn ring_must_be_large_for_its_backends() {
        // 257 / 10 = 25 active backends at most; draining ones do not count.
        let mut backends: Vec<String> = (1..=26)
            .map(|i| format!("{{ address = \"10.0.0.{i}\" }}"))
            .collect();
        let text = pool_text(&format!(
            "ring_size = 257\nbackends = [{}]\n",
            backends.join(", ")
        ));
        assert_err(
            &text,
            7,
            &format!("{WEB}.ring_size"),
            "use a larger ring_size such as 16381",
        );
        backends[25] = "{ address = \"10.0.0.26\", weight = 0 }".into();
        ok(&pool_text(&format!(
            "ring_size = 257\nbackends = [{}]\n",
            backends.join(", ")
        )));
        // Without ring_size the error points at the backends.
        let many: Vec<String> = (0..1639)
            .map(|i| format!("{{ address = \"10.1.{}.{}\" }}", i / 256, i % 256))
            .collect();
        let text = pool_text(&format!("backends = [{}]\n", many.join(", ")));
        assert_err(
            &text,
            7,
            &format!("{WEB}.backends"),
            "use a larger ring_size such as 65537",
        );
    }

    #[test]
    fn rings_must_fit_the_arena() {
        // As many rings of 655373 slots as fit with room to replace one;
        // one more does not. Only pools behind a VIP have a ring.
        let fit = (RING_ARENA_ENTRIES / 655_373 - 1) as usize;
        let pools = |n: usize| {
            let pool = |i| format!("[[tenant.pool]]\nname = \"p{i}\"\nring_size = 655373\n");
            (0..n).map(pool).collect::<Vec<_>>().concat()
        };
        let vips = |n: usize| {
            let vip = |i| {
                format!(
                    "[[tenant.l4]]\nvip = \"10.1.0.{}\"\nport = 80\nprotocol = \"tcp\"\npool = \"p{i}\"\n",
                    i + 1
                )
            };
            (0..n).map(vip).collect::<Vec<_>>().concat()
        };
        let text = format!(
            "{NODE}[[tenant]]\nname = \"big\"\n{}{}",
            pools(fit + 1),
            vips(fit + 1)
        );
        assert_err(
            &text,
            5 + fit * 3 + 2,
            &format!("tenant[0] (\"big\").pool[{fit}] (\"p{fit}\").ring_size"),
            &format!("more than the {RING_ARENA_ENTRIES} the data plane holds"),
        );
        ok(&format!(
            "{NODE}[[tenant]]\nname = \"big\"\n{}{}",
            pools(fit),
            vips(fit)
        ));
        // Pools only the L7 proxy uses take no ring slots.
        ok(&format!(
            "{NODE}[[tenant]]\nname = \"big\"\n{}",
            pools(fit + 5)
        ));
    }

    #[test]
    fn backend_rules() {
        let b = |body: &str| {
            pool_text(&format!(
                "backends = [\n  {{ address = \"10.0.0.1\" }},\n  {body},\n]\n"
            ))
        };
        let at = format!("{WEB}.backends[1]");
        assert_err(
            &b("{ address = \"10.0.0.1\" }"),
            9,
            &format!("{at}.address"),
            "backend 10.0.0.1 appears twice in pool \"web\": also backends[0] (line 8)",
        );
        ok(&b("{ address = \"10.0.0.1\", port = 8080 }"));
        assert_err(
            &b("{ address = \"10.0.0.2\", weight = 1001 }"),
            9,
            &format!("{at}.weight"),
            "at most 1000",
        );
        ok(&b("{ address = \"10.0.0.2\", weight = 1000 }"));
        assert_err(
            &b("{ address = \"10.0.0.2\", port = 0 }"),
            9,
            &format!("{at}.port"),
            "port 0",
        );
        assert_err(
            &b("{ address = \"10.0.0.2\", port = 70000 }"),
            9,
            &format!("{at}.port"),
            "expected u16",
        );
        assert_err(
            &b("{ address = \"10.0.0.x\" }"),
            9,
            &format!("{at}.address"),
            "invalid backend address",
        );
        assert_err(
            &b("{ address = \"10.0.0.2:80\" }"),
            9,
            &format!("{at}.address"),
            "port in `port`",
        );
        assert_err(
            &b("{ address = \"0.0.0.0\" }"),
            9,
            &format!("{at}.address"),
            "unspecified",
        );
        assert_err(
            &b("{ port = 80 }"),
            9,
            &at,
            "missing required key `address`",
        );
    }

    #[test]
    fn health_rules() {
        let h = |body: &str| pool_text(&format!("health = {{ {body} }}\n"));
        let at = format!("{WEB}.health");
        assert_err(
            &h("kind = \"tcp\", path = \"/x\""),
            7,
            &format!("{at}.path"),
            "only to kind = \"http\"",
        );
        assert_err(
            &h("kind = \"tcp\", expect = \"200\""),
            7,
            &format!("{at}.expect"),
            "only to kind = \"http\"",
        );
        assert_err(
            &h("kind = \"http\", path = \"x\""),
            7,
            &format!("{at}.path"),
            "must start with '/'",
        );
        assert_err(
            &h("kind = \"http\", timeout = \"2s\", interval = \"1s\""),
            7,
            &format!("{at}.timeout"),
            "timeout 2s must be shorter than interval 1s",
        );
        // Only the interval written: the default timeout (1s) is too long.
        assert_err(
            &h("kind = \"http\", interval = \"1s\""),
            7,
            &format!("{at}.interval"),
            "the default timeout 1s must be shorter than interval 1s",
        );
        assert_err(
            &h("kind = \"http\", interval = \"5 parsecs\""),
            7,
            &format!("{at}.interval"),
            "invalid duration \"5 parsecs\"",
        );
        assert_err(
            &h("kind = \"http\", rise = 0"),
            7,
            &format!("{at}.rise"),
            "at least 1",
        );
        assert_err(
            &h("kind = \"http\", expect = \"500-200\""),
            7,
            &format!("{at}.expect"),
            "lower one first",
        );
        assert_err(
            &h("kind = \"icmp\""),
            7,
            &format!("{at}.kind"),
            "unknown variant `icmp`",
        );
        assert_err(
            &h("kind = \"http\", initial = \"maybe\""),
            7,
            &format!("{at}.initial"),
            "unknown variant `maybe`",
        );
        assert_err(&h("path = \"/\""), 7, &at, "missing required key `kind`");
        let c = ok(&h(
            "kind = \"http\", expect = \"204\", tls = true, port = 8443",
        ));
        let hc = c.tenants[0].pools[0].health.clone().expect("health");
        assert_eq!(
            (hc.expect_status, hc.tls, hc.port),
            (Some((204, 204)), true, Some(8443))
        );
    }

    /// Two tenants with pools `web`; acme also has `api`.
    fn two_tenants(l4_acme: &str, l4_beta: &str) -> String {
        format!(
            "{NODE}\
             [[tenant]]\n\
             name = \"acme\"\n\
             [[tenant.pool]]\n\
             name = \"web\"\n\
             backends = [ {{ address = \"10.0.1.11\", port = 80 }}, {{ address = \"10.0.1.12\", port = 8080 }} ]\n\
             [[tenant.pool]]\n\
             name = \"api\"\n\
             {l4_acme}\
             [[tenant]]\n\
             name = \"beta\"\n\
             [[tenant.pool]]\n\
             name = \"db\"\n\
             {l4_beta}"
        )
    }

    fn l4(vip: &str, port: u16, proto: &str, pool: &str) -> String {
        format!(
            "[[tenant.l4]]\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\npool = \"{pool}\"\n"
        )
    }

    #[test]
    fn l4_pool_must_exist_in_the_same_tenant() {
        // Lines: acme's l4[0] starts at 10, l4[1] at 15; `pool` is the 5th line.
        let text = two_tenants(
            &(l4("203.0.113.10", 443, "tcp", "api") + &l4("203.0.113.10", 80, "tcp", "wbe")),
            "",
        );
        let e = assert_err(
            &text,
            19,
            "tenant[0] (\"acme\").l4[1].pool",
            "no pool named \"wbe\" in tenant \"acme\" (pools: web, api)",
        );
        assert_eq!(
            e.to_string(),
            "lb.toml:19:8: tenant[0] (\"acme\").l4[1].pool: no pool named \"wbe\" in tenant \"acme\" (pools: web, api)"
        );

        // beta names acme's pool: rejected, and the message says why.
        let text = two_tenants("", &l4("203.0.113.30", 80, "tcp", "web"));
        let e = assert_err(
            &text,
            18,
            "tenant[1] (\"beta\").l4[0].pool",
            "no pool named \"web\" in tenant \"beta\"",
        );
        assert!(
            e.message()
                .contains("belongs to tenant \"acme\", and a tenant can only use its own pools"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_vip_across_tenants_names_both() {
        let text = two_tenants(
            &l4("203.0.113.10", 5432, "tcp", "api"),
            &l4("203.0.113.10", 5432, "tcp", "db"),
        );
        let e = assert_err(
            &text,
            20,
            "tenant[1] (\"beta\").l4[0].vip",
            "VIP 203.0.113.10:5432/tcp of tenant \"beta\" is already defined by tenant \"acme\"",
        );
        assert!(e.message().contains("at tenant[0].l4[0] (line 11)"), "{e}");
        // Another protocol or port is another VIP.
        ok(&two_tenants(
            &l4("203.0.113.10", 5432, "tcp", "api"),
            &l4("203.0.113.10", 5432, "udp", "db"),
        ));
        ok(&two_tenants(
            &l4("203.0.113.10", 5432, "tcp", "api"),
            &l4("203.0.113.10", 0, "tcp", "db"),
        ));
        // Twice in one tenant.
        let text = two_tenants(
            &(l4("2001:db8::1", 0, "udp", "api") + &l4("2001:db8::1", 0, "udp", "api")),
            "",
        );
        assert_err(
            &text,
            16,
            "tenant[0] (\"acme\").l4[1].vip",
            "VIP [2001:db8::1]:0/udp is defined twice in tenant \"acme\": also at l4[0] (line 11)",
        );
    }

    #[test]
    fn dsr_backend_port_must_match_the_vip() {
        let text = two_tenants(&l4("203.0.113.10", 80, "tcp", "web"), "");
        let e = assert_err(
            &text,
            7,
            "tenant[0] (\"acme\").pool[0] (\"web\").backends[1].port",
            "backend 10.0.1.12:8080 listens on port 8080 but VIP 203.0.113.10:80 of tenant[0].l4[0] (line 11) forwards",
        );
        assert!(
            e.message().contains("forwards by direct server return, which keeps the VIP's port; set the backend port to 80 or remove it"),
            "{e}"
        );
        // An any-port VIP keeps every port: nothing to compare.
        ok(&two_tenants(&l4("203.0.113.10", 0, "tcp", "web"), ""));
        let l2 = two_tenants(&l4("203.0.113.10", 8080, "tcp", "web"), "").replace(
            NODE,
            "[node]\ninterface = \"eth0\"\nforwarding = \"l2dsr\"\n",
        );
        assert_err(
            &l2,
            8,
            "tenant[0] (\"acme\").pool[0] (\"web\").backends[0].port",
            "set the backend port to 8080",
        );
    }

    #[test]
    fn vip_address_rules() {
        let at = "tenant[0] (\"acme\").l4[0].vip";
        assert_err(
            &two_tenants(&l4("0.0.0.0", 80, "tcp", "api"), ""),
            11,
            at,
            "unspecified",
        );
        assert_err(
            &two_tenants(&l4("::", 80, "tcp", "api"), ""),
            11,
            at,
            "unspecified",
        );
        assert_err(
            &two_tenants(&l4("239.1.1.1", 80, "tcp", "api"), ""),
            11,
            at,
            "multicast",
        );
        assert_err(
            &two_tenants(&l4("ff02::1", 80, "tcp", "api"), ""),
            11,
            at,
            "multicast",
        );
        assert_err(
            &two_tenants(&l4("::ffff:192.0.2.1", 80, "tcp", "api"), ""),
            11,
            at,
            "write 192.0.2.1 instead",
        );
        assert_err(
            &two_tenants(&l4("example.com", 80, "tcp", "api"), ""),
            11,
            at,
            "invalid VIP",
        );
        assert_err(
            &two_tenants(&l4("192.0.2.1", 80, "sctp", "api"), ""),
            13,
            "tenant[0] (\"acme\").l4[0].protocol",
            "unknown variant `sctp`",
        );
        assert_err(
            &two_tenants(
                &l4("192.0.2.1", 80, "tcp", "api").replace("port = 80\n", ""),
                "",
            ),
            10,
            "tenant[0] (\"acme\").l4[0]",
            "missing required key `port`",
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_hours(1)));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
        for bad in ["5 parsecs", "", "s", "1.5s", "-1s", "10", "1d", "1 s"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX)).is_err());
        for (d, s) in [
            (500, "500ms"),
            (1000, "1s"),
            (90_000, "90s"),
            (120_000, "2m"),
            (3_600_000, "1h"),
            (0, "0ms"),
        ] {
            assert_eq!(format_duration(Duration::from_millis(d)), s);
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(d)));
        }
    }

    #[test]
    fn primes() {
        for p in [2, 3, 257, 16_381, 16_411, 65_537, 655_373] {
            assert!(is_prime(p), "{p}");
        }
        for n in [0, 1, 4, 16_384, 65_536, 257 * 257] {
            assert!(!is_prime(n), "{n}");
        }
    }

    #[test]
    fn positions_count_characters_and_lines() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
        assert_eq!(line_col("aé=", 3), (1, 3));
        assert_eq!(line_col("abc", 99), (1, 4));
    }

    #[test]
    fn error_display_without_position() {
        let e = load(Path::new("/nonexistent/lb.toml")).expect_err("no such file");
        assert_eq!(e.file(), "/nonexistent/lb.toml");
        assert_eq!(e.line(), None);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/lb.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = std::env::temp_dir().join(format!("lb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("lb.toml");
        std::fs::write(&path, FULL).expect("write config");
        let c = load(&path).expect("valid file");
        assert_eq!(c.tenants.len(), 2);
        std::fs::write(&path, "[node]\n").expect("write config");
        let e = load(&path).expect_err("invalid file");
        assert!(
            e.to_string()
                .starts_with(&format!("{}:1:1: node.interface:", path.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
