//! The admin API's vocabulary: what `lbctl` (or any client) can ask `lbd`,
//! and the JSON shapes of the answers. The HTTP layer (`admin`) maps routes
//! to [`Request`]s and sends them to the daemon as [`Command`]s; the daemon
//! answers each with a [`Response`]. `lbctl --maps` builds the same shapes
//! from the pinned maps without a daemon (see `inspect`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use crate::config::{BackendConf, Protocol};

/// A backend named by the user: tenant, pool, address and optional port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSelector {
    pub tenant: String,
    pub pool: String,
    pub address: IpAddr,
    /// The configured port; absent = the backend has no port of its own.
    #[serde(default)]
    pub port: Option<u16>,
}

/// Narrows a flow-table dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    #[serde(default)]
    pub tenant: Option<String>,
    /// `address:port` of a VIP.
    #[serde(default)]
    pub vip: Option<SocketAddr>,
    #[serde(default)]
    pub backend: Option<IpAddr>,
    /// At most this many entries (default 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Everything the admin API can be asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    ListTenants,
    ShowTenant {
        name: String,
    },
    /// `toml` holds exactly one `[[tenant]]` table (with its pools and VIPs).
    AddTenant {
        toml: String,
    },
    RemoveTenant {
        name: String,
    },
    ListVips,
    ListPools,
    ShowPool {
        tenant: String,
        pool: String,
    },
    ListBackends,
    AddBackend {
        tenant: String,
        pool: String,
        backend: BackendConf,
    },
    RemoveBackend {
        backend: BackendSelector,
    },
    DrainBackend {
        backend: BackendSelector,
    },
    EnableBackend {
        backend: BackendSelector,
    },
    Stats,
    Flows {
        filter: FlowFilter,
    },
    Explain {
        client: SocketAddr,
        vip: SocketAddr,
        protocol: Protocol,
    },
    Reload,
    ListOverrides,
    ClearOverrides,
    /// The SNI map: every L7 host name's hash and tenant.
    ListSni,
    /// Adds host `name` to the tenant's `l7[site]` (an override).
    AddSni {
        tenant: String,
        site: usize,
        name: String,
    },
    /// Removes host `name` from its site (an override).
    RemoveSni {
        name: String,
    },
}

/// One entry of the SNI map in `GET /sni`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SniEntry {
    /// The normalised host name, when the configuration names it (a map read
    /// without lbd knows only hashes).
    pub name: Option<String>,
    /// The SNI-derived tenant hash (FNV-1a 64), in hex.
    pub hash: String,
    pub tenant: String,
    pub tenant_id: u32,
    /// The listen address of the site that has the name.
    pub listen: Option<SocketAddr>,
    /// Whether the map holds the entry (false: configured, not yet written).
    pub in_map: bool,
}

/// An API error: an HTTP status and a message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
    /// 404: it names something that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: 404,
            message: message.into(),
        }
    }
    /// 409: it conflicts with the current state (e.g. a tenant that exists).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: 409,
            message: message.into(),
        }
    }
    /// 500: the daemon failed to carry it out.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
        }
    }
}

/// The daemon's answer: a JSON document (one of the types below) or an error.
pub type Response = Result<serde_json::Value, ApiError>;

/// A request on its way to the daemon, with where to send the answer.
#[derive(Debug)]
pub struct Command {
    pub request: Request,
    pub reply: tokio::sync::oneshot::Sender<Response>,
}

/// Traffic counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
}

/// The outcome of the last configuration reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    pub ok: bool,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub message: String,
    /// Overrides that no longer name an existing object and were dropped.
    pub dropped_overrides: Vec<String>,
}

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub config: String,
    pub interface: String,
    pub pin_path: String,
    pub forwarding: String,
    pub uptime_secs: u64,
    pub tenants: usize,
    pub vips: usize,
    pub pools: usize,
    pub backends: usize,
    pub backends_down: usize,
    pub reloads: u64,
    pub last_reload: Option<ReloadResult>,
    pub overrides: usize,
}

/// One tenant in `GET /tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSummary {
    pub name: String,
    pub id: u32,
    pub vips: usize,
    pub pools: usize,
    pub backends: usize,
    pub counters: Counters,
    pub flow_table: FlowTableUsage,
}

/// A tenant's flow table in XDP: entries held and the table's size (its
/// `max_flows`; 0 for a tenant without L4 VIPs, which has no table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableUsage {
    pub flows: u64,
    pub max_flows: u32,
}

/// A VIP in listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSummary {
    pub tenant: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub pool: String,
    pub id: u32,
    pub counters: Counters,
}

/// A backend in listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub tenant: String,
    pub pool: String,
    pub address: IpAddr,
    pub port: Option<u16>,
    pub id: u32,
    pub weight: u32,
    /// `up`, `draining` or `down` (as the XDP program sees it).
    pub state: String,
    /// Health-check detail (the checker's status as JSON), when the pool
    /// has checks.
    pub health: Option<serde_json::Value>,
    /// Flow-table entries that still point at this backend.
    pub flows: u64,
    /// Seconds since the most recent of those flows saw a packet.
    pub last_seen_secs_ago: Option<f64>,
    pub counters: Counters,
}

/// A pool in listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSummary {
    pub tenant: String,
    pub name: String,
    pub id: u32,
    pub ring_size: u32,
    pub backends: usize,
    pub up: usize,
}

/// `GET /pools/{tenant}/{pool}`: the pool, its backends and how the ring
/// is shared among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolDetail {
    pub summary: PoolSummary,
    pub backends: Vec<BackendInfo>,
    /// Ring slots per backend address.
    pub ring_share: BTreeMap<String, u32>,
}

/// `GET /tenants/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantDetail {
    pub summary: TenantSummary,
    pub vips: Vec<VipSummary>,
    pub pools: Vec<PoolSummary>,
    pub drops_by_reason: BTreeMap<String, u64>,
}

/// Per-tenant counters in `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStats {
    pub name: String,
    pub id: u32,
    pub counters: Counters,
    pub drops_by_reason: BTreeMap<String, u64>,
    pub flow_table: FlowTableUsage,
}

/// `GET /stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub global: BTreeMap<String, u64>,
    pub tenants: Vec<TenantStats>,
    pub vips: Vec<VipSummary>,
    pub backends: Vec<BackendInfo>,
    /// The L7 tier's per-tenant counters (tenants with L7 sites).
    #[serde(default)]
    pub l7_tenants: Vec<L7TenantStats>,
    /// The L7 listeners' counters.
    #[serde(default)]
    pub l7_listeners: Vec<L7ListenerStats>,
    /// Access-log lines dropped because the writer fell behind.
    #[serde(default)]
    pub access_log_lost: u64,
}

/// One tenant's L7 counters in `GET /stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct L7TenantStats {
    pub tenant: String,
    #[serde(flatten)]
    pub counters: crate::l7::TenantStatsView,
}

/// One L7 listener's counters in `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7ListenerStats {
    pub address: SocketAddr,
    pub connections: u64,
    pub tls_handshake_failures: u64,
    pub bad_client_hellos: u64,
    /// Closed at accept, over `node.max_connections` or the listener's
    /// `max_connections_per_source`.
    #[serde(default)]
    pub refused_connections: u64,
    /// Closed by a header or send deadline.
    #[serde(default)]
    pub deadline_closes: u64,
    /// L7 connections open on the node now.
    #[serde(default)]
    pub open_connections: u64,
    /// Connections from trusted proxies without a valid PROXY v2 header.
    #[serde(default)]
    pub bad_proxy_headers: u64,
}

/// One flow-table entry in `GET /flows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub protocol: String,
    pub tenant: String,
    pub backend: Option<IpAddr>,
    pub backend_id: u32,
    /// Whether the XDP program would still honour the entry.
    pub valid: bool,
    pub idle_secs: f64,
}

/// `GET /explain`: which backend a flow hits, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explain {
    pub tenant: String,
    pub pool: String,
    /// `flow_table` (an established flow's entry) or `ring` (a new flow).
    pub decision: String,
    pub backend: Option<IpAddr>,
    pub backend_id: Option<u32>,
    pub hash: u32,
    pub ring_slot: u32,
    /// Why a flow-table entry exists but is not used, if so.
    pub note: Option<String>,
}

/// One runtime override in `GET /overrides`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideInfo {
    pub index: usize,
    pub description: String,
}
