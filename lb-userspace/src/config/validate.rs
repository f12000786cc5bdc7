//! Validation: the `Raw*` structures to the public types, with defaults
//! filled in and every rule checked, the first failure reported with its
//! place.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::{self, Write as _},
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    path::PathBuf,
    time::Duration,
};

use lb_common::{
    DEFAULT_FLOW_TABLE_ENTRIES, DEFAULT_RING_SIZE, MAX_BACKENDS, MAX_POOLS, MAX_TENANTS, MAX_VIPS,
    MIN_TENANT_FLOWS, RING_ARENA_ENTRIES,
};
use toml_edit::Item;

use super::{
    ConfigError,
    duration::{DurationError, format_duration, read_duration},
    l7::{self, AccessLog, DEFAULT_DRAIN_TIMEOUT, DRAIN_TIMEOUT_RANGE, TlsFiles},
    raw::{
        Initial, RawAdminTls, RawBackend, RawConfig, RawHealth, RawL4, RawNode, RawPool, RawTenant,
        RawVipLimits,
    },
    schema::{
        Acl, BackendConf, Config, DEFAULT_ADMIN_SOCKET, DEFAULT_FLOW_IDLE_TIMEOUT,
        DEFAULT_HEALTH_EXPECT, DEFAULT_HEALTH_FALL, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_PATH,
        DEFAULT_HEALTH_RISE, DEFAULT_HEALTH_TIMEOUT, DEFAULT_METRICS_LISTEN,
        DEFAULT_NODE_MAX_CONNECTIONS, DEFAULT_PIN_PATH, DEFAULT_STATE_DIR, FLOW_TABLE_SIZE_RANGE,
        HEALTH_COUNT_RANGE, HEALTH_INTERVAL_RANGE, HEALTH_TIMEOUT_RANGE, HealthCheck, HealthKind,
        L4Vip, MAX_BYTE_RATE, MAX_FLOW_IDLE_TIMEOUT, MAX_FLOW_RATE, MAX_PACKET_RATE, MAX_WEIGHT,
        MIN_FLOW_IDLE_TIMEOUT, NODE_MAX_CONNECTIONS_RANGE, Node, Pool, Protocol, RING_PER_BACKEND,
        RING_SIZE_RANGE, SUGGESTED_RING_SIZES, TENANT_LIMIT_KEYS, Tenant, TenantLimits, VipLimits,
    },
    span::{FieldPath, Seg, line_col, locate, one_line, path_at},
};

/// What every check needs to report an error.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    pub(super) root: &'a Item,
}

/// A pool as the cross-tenant checks see it.
pub(super) struct PoolRef<'a> {
    pub(super) index: usize,
    pub(super) pool: &'a Pool,
}

/// The (vip, port, protocol) identity of an L4 VIP.
pub(super) type VipKey = (IpAddr, u16, Protocol);

/// Each L4 VIP's place: (tenant index, index in the tenant's `l4`).
pub(super) type VipOwners = HashMap<VipKey, (usize, usize)>;

impl Ctx<'_> {
    pub(super) fn error(&self, path: &FieldPath, message: impl Into<String>) -> ConfigError {
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
    pub(super) fn duration_in(
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
    pub(super) fn count_in<T: PartialOrd + Default + fmt::Display>(
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

    pub(super) fn place(&self, what: &str, path: &FieldPath) -> String {
        match locate(self.root, path) {
            Some(s) => format!("{what} (line {})", line_col(self.text, s.start).0),
            None => what.to_owned(),
        }
    }

    pub(super) fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
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

    pub(super) fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
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
    pub(super) fn tenant(
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
        let limits = self.tenant_limits(rt.limits.as_ref(), &tpath.key("limits"))?;
        let auth = self.auth(rt.auth, &tpath.key("auth"))?;
        let tenant = Tenant {
            name: rt.name,
            limits,
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
    pub(super) fn vips(
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

    pub(super) fn node(&self, raw: Option<RawNode>, path: &FieldPath) -> Result<Node, ConfigError> {
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
    pub(super) fn node_l7(
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
    pub(super) fn admin_tcp(
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
    pub(super) fn admin_tls(
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

    pub(super) fn pool(&self, raw: RawPool, path: &FieldPath) -> Result<Pool, ConfigError> {
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

    pub(super) fn backend(
        &self,
        raw: &RawBackend,
        path: &FieldPath,
    ) -> Result<BackendConf, ConfigError> {
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

    pub(super) fn health(
        &self,
        raw: RawHealth,
        path: &FieldPath,
    ) -> Result<HealthCheck, ConfigError> {
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

    pub(super) fn l4(
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

    /// `[tenant.limits]`: every key known, every value at least 1 and
    /// within its bound.
    fn tenant_limits(
        &self,
        raw: Option<&BTreeMap<String, u64>>,
        path: &FieldPath,
    ) -> Result<TenantLimits, ConfigError> {
        let Some(raw) = raw else {
            return Ok(TenantLimits::default());
        };
        for (name, value) in raw {
            let lpath = path.key(name);
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
        let get = |key: &str| raw.get(key).copied();
        Ok(TenantLimits {
            packets_per_second: get("packets_per_second"),
            bytes_per_second: get("bytes_per_second"),
            new_flows_per_second: get("new_flows_per_second"),
            // At most FLOW_TABLE_SIZE_RANGE's end, checked above.
            max_flows: get("max_flows").map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            requests: self.request_limits(raw, path)?,
        })
    }

    /// A VIP's or a listener's `limits`.
    pub(super) fn vip_limits(
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
    pub(super) fn flow_tables(
        &self,
        tenants: &mut [Tenant],
        node_size: u32,
    ) -> Result<(), ConfigError> {
        let root = FieldPath::default();
        let node_path = root.key("node").key("flow_table_size");
        let explicit = |t: &Tenant| t.limits.max_flows;
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
    pub(super) fn capacity(&self, tenants: &[Tenant], vips: usize) -> Result<(), ConfigError> {
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
pub(super) fn packet_limit_max(name: &str) -> Option<u64> {
    match name {
        "packets_per_second" => Some(MAX_PACKET_RATE),
        "bytes_per_second" => Some(MAX_BYTE_RATE),
        "new_flows_per_second" | "syn_per_second" => Some(MAX_FLOW_RATE),
        "max_flows" => Some(u64::from(*FLOW_TABLE_SIZE_RANGE.end())),
        _ => None,
    }
}

/// Whether `path` names a key present in the document.
pub(super) fn locate_key_exists(root: &Item, path: &FieldPath) -> bool {
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
pub(super) fn check_name(name: &str, what: &str) -> Result<(), String> {
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
pub(super) fn check_interface(name: &str) -> Result<(), String> {
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

pub(super) fn is_prime(n: u32) -> bool {
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

pub(super) fn check_ring_size(n: u32) -> Result<(), String> {
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

pub(super) fn parse_ip(text: &str, what: &str) -> Result<IpAddr, String> {
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
pub(super) fn parse_prefix(text: &str) -> Result<(IpAddr, u8), String> {
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

pub(super) fn check_unicast(ip: IpAddr, what: &str) -> Result<(), String> {
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
pub(super) fn parse_status_range(text: &str) -> Result<(u16, u16), String> {
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

pub(super) fn show_backend(b: &BackendConf) -> String {
    match b.port {
        Some(p) => SocketAddr::new(b.address, p).to_string(),
        None => b.address.to_string(),
    }
}
