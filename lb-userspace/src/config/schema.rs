//! The validated configuration: the public types the daemon reads, and
//! the defaults and bounds of their keys.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::RangeInclusive,
    path::PathBuf,
    time::Duration,
};

use lb_common::{DEFAULT_RING_SIZE, PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Serialize};

use super::{
    duration::serialize_duration,
    l7::{AccessLog, L7Site, Listener, PoolL7, TlsFiles},
    policy::{Auth, RequestLimits, Tier},
};

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
pub(super) const SUGGESTED_RING_SIZES: [u32; 3] = [DEFAULT_RING_SIZE, 65_537, 655_373];

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
    /// `[tenant.limits]`: the packet limits (enforced in XDP), the flow
    /// table's size and the request limits (enforced by `lbd`).
    pub limits: TenantLimits,
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

/// `[tenant.limits]`, every key optional (absent = no limit), each at
/// least 1 when present. Serialized as written: absent keys left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TenantLimits {
    /// Packets per second to all the tenant's VIPs together (XDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets_per_second: Option<u64>,
    /// Bytes per second to all the tenant's VIPs together (XDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// New flows per second (XDP): flow-table inserts, spoofed ones too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_flows_per_second: Option<u64>,
    /// The size of the tenant's flow table as written; [`Tenant::max_flows`]
    /// is the size in use (this, or a share of `node.flow_table_size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_flows: Option<u32>,
    /// The request keys, enforced by `lbd`'s L7 tier.
    #[serde(flatten)]
    pub requests: RequestLimits,
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
