//! What serde decodes: the file as written, before defaults. Validation
//! (in [`validate`](super::validate)) turns these into the public types.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use super::{
    l7::{self, BackendProtocol, Balance},
    policy::{self, Tier},
    schema::{Forwarding, HealthKind, Protocol, XdpMode},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    // Optional so that a missing section gets our message, not serde's.
    pub(super) node: Option<RawNode>,
    #[serde(default)]
    pub(super) tenant: Vec<RawTenant>,
    #[serde(default)]
    pub(super) listener: Vec<l7::RawListener>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) interface: Option<String>,
    pub(super) xdp_mode: Option<XdpMode>,
    pub(super) forwarding: Option<Forwarding>,
    pub(super) pin_path: Option<PathBuf>,
    pub(super) admin_socket: Option<PathBuf>,
    // Strings rather than typed values so that a bad value gets a message
    // that says what the value should look like.
    pub(super) admin_listen: Option<String>,
    pub(super) admin_token_file: Option<PathBuf>,
    pub(super) admin_tls: Option<RawAdminTls>,
    pub(super) metrics_listen: Option<String>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) hash_seed: Option<u32>,
    pub(super) flow_table_size: Option<u32>,
    pub(super) flow_idle_timeout: Option<String>,
    pub(super) access_log: Option<String>,
    pub(super) drain_timeout: Option<String>,
    pub(super) max_inflight_requests: Option<u64>,
    pub(super) max_connections: Option<u64>,
}

/// `node.admin_tls`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdminTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub(super) name: String,
    pub(super) tier: Option<Tier>,
    pub(super) limits: Option<BTreeMap<String, u64>>,
    pub(super) acl: Option<RawAcl>,
    pub(super) auth: Option<policy::RawAuth>,
    #[serde(default)]
    pub(super) pool: Vec<RawPool>,
    #[serde(default)]
    pub(super) l4: Vec<RawL4>,
    #[serde(default)]
    pub(super) l7: Vec<l7::RawL7>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) name: String,
    pub(super) ring_size: Option<u32>,
    #[serde(default)]
    pub(super) backends: Vec<RawBackend>,
    pub(super) health: Option<RawHealth>,
    // The L7 keys (serde cannot flatten with deny_unknown_fields).
    pub(super) balance: Option<Balance>,
    pub(super) hash_on: Option<String>,
    pub(super) backend_protocol: Option<BackendProtocol>,
    pub(super) backend_tls: Option<l7::RawBackendTls>,
    pub(super) proxy_protocol: Option<String>,
    pub(super) outlier: Option<l7::RawOutlier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: String,
    pub(super) port: Option<u16>,
    pub(super) weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) kind: HealthKind,
    pub(super) path: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
    pub(super) port: Option<u16>,
    pub(super) expect: Option<String>,
    pub(super) tls: Option<bool>,
    pub(super) initial: Option<Initial>,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Initial {
    Up,
    Down,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawL4 {
    pub(super) vip: String,
    pub(super) port: u16,
    pub(super) protocol: Protocol,
    pub(super) pool: String,
    pub(super) limits: Option<RawVipLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(
    clippy::struct_field_names,
    reason = "the field names are the configuration keys"
)]
pub(super) struct RawVipLimits {
    pub(super) packets_per_second: Option<u64>,
    pub(super) bytes_per_second: Option<u64>,
    pub(super) syn_per_second: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcl {
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) deny: Vec<String>,
}
