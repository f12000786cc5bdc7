//! Prometheus metrics at `GET /metrics` on `node.metrics_listen`, in the
//! text exposition format (0.0.4), written by hand: each scrape asks the
//! daemon for `Status` and `Stats` over the admin command channel and
//! renders the answers ([`render`]), so the numbers are the ones `lbctl
//! status` and `lbctl stats` show.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `lb_info` | gauge (1) | `version` |
//! | `lb_uptime_seconds` | gauge | |
//! | `lb_reloads_total` | counter | |
//! | `lb_last_reload_success` | gauge (1/0; absent before the first reload) | |
//! | `lb_last_reload_timestamp_seconds` | gauge | |
//! | `lb_overrides` | gauge | |
//! | `lb_objects` | gauge | `kind` (`tenants`, `vips`, `pools`, `backends`, `backends_down`) |
//! | `lb_node_events_total` | counter | `event` (the node-wide counters: rx, forwarded, ...) |
//! | `lb_tenant_packets_total`, `_bytes_total`, `_new_flows_total` | counter | `tenant` |
//! | `lb_tenant_drops_total` | counter | `tenant`, `reason` |
//! | `lb_tenant_flows`, `lb_tenant_max_flows` | gauge (entries in and size of the tenant's flow table; tenants with L4 VIPs) | `tenant` |
//! | `lb_vip_packets_total`, `_bytes_total`, `_new_flows_total`, `_drops_total` | counter | `tenant`, `vip`, `protocol` |
//! | `lb_backend_packets_total`, `_bytes_total`, `_new_flows_total` | counter | `tenant`, `pool`, `backend` |
//! | `lb_backend_up` | gauge (1 up or draining, 0 down) | `tenant`, `pool`, `backend` |
//! | `lb_backend_weight` | gauge | `tenant`, `pool`, `backend` |
//! | `lb_backend_flows` | gauge (flow-table entries) | `tenant`, `pool`, `backend` |
//! | `lb_l7_requests_total` | counter | `tenant`, `class` (`1xx` .. `5xx`) |
//! | `lb_l7_request_duration_seconds` | histogram | `tenant` |
//! | `lb_l7_bytes_total` | counter | `tenant`, `direction` (`in`, `out`) |
//! | `lb_l7_active_connections` | gauge | `tenant` |
//! | `lb_l7_tls_handshake_failures_total` | counter | `tenant` |
//! | `lb_l7_policy_refusals_total` | counter | `tenant`, `reason` (`rate_limit`, `jwt_expired`, `shed`, ...) |
//! | `lb_l7_listener_connections_total`, `_tls_handshake_failures_total`, `_bad_client_hellos_total`, `_refused_connections_total`, `_deadline_closes_total`, `_bad_proxy_headers_total` | counter | `listener` |
//! | `lb_l7_listener_open_connections` | gauge | `listener` |
//! | `lb_access_log_lost_total` | counter | |
//!
//! `vip` is `ADDRESS:PORT` (`[v6]:PORT`); `backend` is the address, with
//! `:PORT` when the backend has a port of its own.

use std::{
    fmt::{Display, Write as _},
    io,
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use hyper::{Method, StatusCode, body::Incoming};
use serde::de::DeserializeOwned;
use tokio::{net::TcpListener, sync::mpsc};
use tracing::info;

use crate::{
    admin::{self, HttpResponse, Listeners, Peer},
    api::{self, BackendInfo, Command, Counters, Request, Stats, Status},
    config::Config,
    l7::stats::{LATENCY_BUCKETS, TenantStatsView},
};

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long the daemon gets to answer each of the two questions of a
/// scrape (Prometheus' default scrape timeout is 10 s).
const ASK_TIMEOUT: Duration = Duration::from_secs(4);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint on {addr}: {error}")]
pub struct MetricsError {
    addr: SocketAddr,
    error: io::Error,
}

/// Binds `addr` (before the runtime starts, if wanted).
///
/// # Errors
///
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, MetricsError> {
    let err = |error| MetricsError { addr, error };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Binds `config.node.metrics_listen` (nothing when unset) and serves it in
/// a background task until the daemon drops the receiving end of
/// `commands`.
///
/// Must be called inside a tokio runtime.
///
/// # Errors
///
/// When the address cannot be bound.
pub fn spawn(
    config: &Config,
    commands: mpsc::Sender<Command>,
) -> Result<Option<tokio::task::JoinHandle<()>>, MetricsError> {
    let Some(addr) = config.node.metrics_listen else {
        return Ok(None);
    };
    let listener = bind(addr)?;
    let closed = commands.clone();
    Ok(Some(tokio::spawn(async move {
        let stopped = async move { closed.closed().await };
        if let Err(e) = serve(listener, commands, stopped).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    })))
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
///
/// # Errors
///
/// When the listener cannot be registered with the runtime.
pub async fn serve(
    listener: std::net::TcpListener,
    commands: mpsc::Sender<Command>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let listener = TcpListener::from_std(listener).map_err(|error| MetricsError { addr, error })?;
    info!(%addr, "metrics endpoint listening (GET /metrics)");
    let listeners = Listeners {
        unix: None,
        tcp: Some(&listener),
        tls: None,
    };
    admin::run(listeners, Arc::new(Scraper { commands }), shutdown).await;
    Ok(())
}

struct Scraper {
    commands: mpsc::Sender<Command>,
}

impl admin::Handler for Scraper {
    async fn handle(&self, request: hyper::Request<Incoming>, _peer: Peer) -> HttpResponse {
        let text =
            |status, body: &str| admin::text_response(status, "text/plain", format!("{body}\n"));
        if request.uri().path() != "/metrics" {
            return text(StatusCode::NOT_FOUND, "not found: metrics are at /metrics");
        }
        if request.method() != Method::GET {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics");
            r.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("GET"),
            );
            return r;
        }
        match self.scrape().await {
            Ok(body) => admin::text_response(StatusCode::OK, CONTENT_TYPE, body),
            Err(e) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot collect metrics: {}", e.message),
            ),
        }
    }
}

impl Scraper {
    async fn scrape(&self) -> Result<String, api::ApiError> {
        let daemon: Status = self.ask(Request::Status).await?;
        let traffic: Stats = self.ask(Request::Stats).await?;
        Ok(render(&traffic, &daemon))
    }

    async fn ask<T: DeserializeOwned>(&self, request: Request) -> Result<T, api::ApiError> {
        let value = admin::ask(&self.commands, request, ASK_TIMEOUT).await?;
        serde_json::from_value(value)
            .map_err(|e| api::ApiError::internal(format!("unexpected answer from the daemon: {e}")))
    }
}

/// Renders the daemon's `Stats` and `Status` answers in the text
/// exposition format.
#[must_use]
pub fn render(stats: &Stats, daemon: &Status) -> String {
    let mut m = Exposition::default();
    m.daemon(daemon);
    m.node_and_tenants(stats);
    m.vips(stats);
    m.backends(stats);
    m.l7(stats);
    m.out
}

/// `10.0.1.11`, or `10.0.1.11:8080` / `[2001:db8::1]:80` with a port.
fn backend_label(b: &BackendInfo) -> String {
    match b.port {
        Some(p) => SocketAddr::new(b.address, p).to_string(),
        None => b.address.to_string(),
    }
}

/// A sample's labels and its traffic counters.
type Row<'a> = (Vec<(&'a str, &'a str)>, &'a Counters);
/// A metric name suffix, its help text, and the counter it shows.
type CounterFamily = (&'static str, &'static str, fn(&Counters) -> u64);

/// The text being written.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family; its samples must follow.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn daemon(&mut self, status: &Status) {
        self.family("lb_info", "gauge", "lbd's version (always 1).");
        self.sample("lb_info", &[("version", &status.version)], 1);
        self.family("lb_uptime_seconds", "gauge", "Seconds since lbd started.");
        self.sample("lb_uptime_seconds", &[], status.uptime_secs);
        self.family(
            "lb_reloads_total",
            "counter",
            "Configuration reloads attempted (SIGHUP, lbctl reload, file changes).",
        );
        self.sample("lb_reloads_total", &[], status.reloads);
        if let Some(last) = &status.last_reload {
            self.family(
                "lb_last_reload_success",
                "gauge",
                "Whether the last reload succeeded (1) or was refused (0).",
            );
            self.sample("lb_last_reload_success", &[], u8::from(last.ok));
            self.family(
                "lb_last_reload_timestamp_seconds",
                "gauge",
                "When the last reload finished, in seconds since the Unix epoch.",
            );
            self.sample(
                "lb_last_reload_timestamp_seconds",
                &[],
                format_args!("{}.{:03}", last.at_unix_ms / 1000, last.at_unix_ms % 1000),
            );
        }
        self.family("lb_overrides", "gauge", "Runtime overrides in force.");
        self.sample("lb_overrides", &[], status.overrides);
        self.family("lb_objects", "gauge", "Configured objects by kind.");
        for (kind, n) in [
            ("tenants", status.tenants),
            ("vips", status.vips),
            ("pools", status.pools),
            ("backends", status.backends),
            ("backends_down", status.backends_down),
        ] {
            self.sample("lb_objects", &[("kind", kind)], n);
        }
    }

    fn node_and_tenants(&mut self, stats: &Stats) {
        self.family(
            "lb_node_events_total",
            "counter",
            "Node-wide data-plane counters, by event.",
        );
        for (event, n) in &stats.global {
            self.sample("lb_node_events_total", &[("event", event)], n);
        }
        let tenants: Vec<Row<'_>> = stats
            .tenants
            .iter()
            .map(|t| (vec![("tenant", t.name.as_str())], &t.counters))
            .collect();
        self.traffic("lb_tenant", "tenant", &tenants, false);
        self.family(
            "lb_tenant_drops_total",
            "counter",
            "Packets of a tenant dropped by the data plane, by reason.",
        );
        for t in &stats.tenants {
            for (reason, n) in &t.drops_by_reason {
                self.sample(
                    "lb_tenant_drops_total",
                    &[("tenant", &t.name), ("reason", reason)],
                    n,
                );
            }
        }
        // Only tenants with a flow table (L4 VIPs) have these.
        let tables: Vec<&api::TenantStats> = stats
            .tenants
            .iter()
            .filter(|t| t.flow_table.max_flows > 0)
            .collect();
        self.family(
            "lb_tenant_flows",
            "gauge",
            "Entries in the tenant's flow table.",
        );
        for t in &tables {
            self.sample(
                "lb_tenant_flows",
                &[("tenant", &t.name)],
                t.flow_table.flows,
            );
        }
        self.family(
            "lb_tenant_max_flows",
            "gauge",
            "Size of the tenant's flow table (its max_flows): when full, its own oldest flows are evicted.",
        );
        for t in &tables {
            self.sample(
                "lb_tenant_max_flows",
                &[("tenant", &t.name)],
                t.flow_table.max_flows,
            );
        }
    }

    /// The L7 tier: per-tenant requests, latency, bytes, connections and
    /// TLS failures; per-listener connections and refusals.
    fn l7(&mut self, stats: &Stats) {
        if stats.l7_tenants.is_empty() && stats.l7_listeners.is_empty() {
            return;
        }
        self.family(
            "lb_l7_requests_total",
            "counter",
            "L7 requests of a tenant answered, by status class.",
        );
        for t in &stats.l7_tenants {
            for (class, n) in ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .iter()
                .zip(t.counters.responses)
            {
                self.sample(
                    "lb_l7_requests_total",
                    &[("tenant", &t.tenant), ("class", class)],
                    n,
                );
            }
        }
        self.family(
            "lb_l7_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to the end of its response.",
        );
        for t in &stats.l7_tenants {
            let labels = [("tenant", t.tenant.as_str())];
            for (i, count) in t.counters.latency_cumulative.iter().enumerate() {
                let le = LATENCY_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), ToString::to_string);
                self.sample(
                    "lb_l7_request_duration_seconds_bucket",
                    &[labels[0], ("le", &le)],
                    count,
                );
            }
            self.sample(
                "lb_l7_request_duration_seconds_sum",
                &labels,
                t.counters.latency_sum_seconds,
            );
            let count = t.counters.latency_cumulative.last().copied().unwrap_or(0);
            self.sample("lb_l7_request_duration_seconds_count", &labels, count);
        }
        self.family(
            "lb_l7_bytes_total",
            "counter",
            "L7 body bytes of a tenant, by direction (in: from clients).",
        );
        for t in &stats.l7_tenants {
            for (direction, n) in [("in", t.counters.bytes_in), ("out", t.counters.bytes_out)] {
                self.sample(
                    "lb_l7_bytes_total",
                    &[("tenant", &t.tenant), ("direction", direction)],
                    n,
                );
            }
        }
        for (name, kind, help, value) in [
            (
                "lb_l7_active_connections",
                "gauge",
                "Client connections open now whose SNI names the tenant.",
                (|c: &TenantStatsView| c.active_connections) as fn(&TenantStatsView) -> i64,
            ),
            (
                "lb_l7_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed after their SNI named the tenant.",
                |c| i64::try_from(c.tls_handshake_failures).unwrap_or(i64::MAX),
            ),
        ] {
            self.family(name, kind, help);
            for t in &stats.l7_tenants {
                self.sample(name, &[("tenant", &t.tenant)], value(&t.counters));
            }
        }
        self.family(
            "lb_l7_policy_refusals_total",
            "counter",
            "Requests and connections of a tenant refused by its request policy, by reason.",
        );
        for t in &stats.l7_tenants {
            for (reason, n) in &t.counters.policy_refusals {
                self.sample(
                    "lb_l7_policy_refusals_total",
                    &[("tenant", &t.tenant), ("reason", reason)],
                    n,
                );
            }
        }
        self.l7_listeners(stats);
    }

    fn l7_listeners(&mut self, stats: &Stats) {
        type Family = (&'static str, &'static str, fn(&api::L7ListenerStats) -> u64);
        let names: Vec<String> = stats
            .l7_listeners
            .iter()
            .map(|l| l.address.to_string())
            .collect();
        let families: [Family; 7] = [
            (
                "lb_l7_listener_connections_total",
                "Connections accepted by an L7 listener.",
                |l| l.connections,
            ),
            (
                "lb_l7_listener_tls_handshake_failures_total",
                "Failed TLS handshakes on an L7 listener, whatever their SNI (bad ClientHellos included).",
                |l| l.tls_handshake_failures,
            ),
            (
                "lb_l7_listener_bad_client_hellos_total",
                "Connections closed because their first bytes were not a well-formed TLS ClientHello.",
                |l| l.bad_client_hellos,
            ),
            (
                "lb_l7_listener_bad_proxy_headers_total",
                "Connections from trusted proxies closed because they did not start with a valid PROXY protocol v2 header.",
                |l| l.bad_proxy_headers,
            ),
            (
                "lb_l7_listener_refused_connections_total",
                "Connections closed at accept: over node.max_connections or the listener's max_connections_per_source.",
                |l| l.refused_connections,
            ),
            (
                "lb_l7_listener_deadline_closes_total",
                "Connections closed by a deadline: a request head slower than the header timeout, a response the client stopped reading.",
                |l| l.deadline_closes,
            ),
            (
                "lb_l7_listener_open_connections",
                "L7 connections open on the node (all listeners; the same value on each).",
                |l| l.open_connections,
            ),
        ];
        for (family, help, value) in families {
            let kind = if family.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            self.family(family, kind, help);
            for (l, name) in stats.l7_listeners.iter().zip(&names) {
                self.sample(family, &[("listener", name)], value(l));
            }
        }
        self.family(
            "lb_access_log_lost_total",
            "counter",
            "Access-log lines dropped because the writer fell behind.",
        );
        self.sample("lb_access_log_lost_total", &[], stats.access_log_lost);
    }

    fn vips(&mut self, stats: &Stats) {
        let names: Vec<String> = stats
            .vips
            .iter()
            .map(|v| SocketAddr::new(v.address, v.port).to_string())
            .collect();
        let rows: Vec<Row<'_>> = stats
            .vips
            .iter()
            .zip(&names)
            .map(|(v, name)| {
                let labels = vec![
                    ("tenant", v.tenant.as_str()),
                    ("vip", name.as_str()),
                    ("protocol", v.protocol.as_str()),
                ];
                (labels, &v.counters)
            })
            .collect();
        self.traffic("lb_vip", "VIP", &rows, true);
    }

    fn backends(&mut self, stats: &Stats) {
        let names: Vec<String> = stats.backends.iter().map(backend_label).collect();
        let backends: Vec<(Vec<(&str, &str)>, &BackendInfo)> = stats
            .backends
            .iter()
            .zip(&names)
            .map(|(b, name)| {
                let labels = vec![
                    ("tenant", b.tenant.as_str()),
                    ("pool", b.pool.as_str()),
                    ("backend", name.as_str()),
                ];
                (labels, b)
            })
            .collect();
        let rows: Vec<Row<'_>> = backends
            .iter()
            .map(|(l, b)| (l.clone(), &b.counters))
            .collect();
        self.traffic("lb_backend", "backend", &rows, false);
        self.family(
            "lb_backend_up",
            "gauge",
            "Whether the data plane may use the backend (1: up or draining, 0: down).",
        );
        for (labels, b) in &backends {
            let up = matches!(b.state.as_str(), "up" | "draining");
            self.sample("lb_backend_up", labels, u8::from(up));
        }
        self.family(
            "lb_backend_weight",
            "gauge",
            "The backend's weight (0: draining).",
        );
        for (labels, b) in &backends {
            self.sample("lb_backend_weight", labels, b.weight);
        }
        self.family(
            "lb_backend_flows",
            "gauge",
            "Flow-table entries that point at the backend.",
        );
        for (labels, b) in &backends {
            self.sample("lb_backend_flows", labels, b.flows);
        }
    }

    /// `PREFIX_packets_total`, `_bytes_total`, `_new_flows_total` (and
    /// `_drops_total` when `drops`), one sample per row.
    fn traffic(&mut self, prefix: &str, what: &str, rows: &[Row<'_>], drops: bool) {
        let mut families: Vec<CounterFamily> = vec![
            ("packets_total", "Packets", |c| c.packets),
            ("bytes_total", "Bytes", |c| c.bytes),
            ("new_flows_total", "New flows", |c| c.new_flows),
        ];
        if drops {
            families.push(("drops_total", "Dropped packets", |c| c.drops));
        }
        for (suffix, help, get) in families {
            let name = format!("{prefix}_{suffix}");
            self.family(&name, "counter", &format!("{help} per {what}."));
            for (labels, counters) in rows {
                self.sample(&name, labels, get(counters));
            }
        }
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::{
        api::{ReloadResult, TenantStats, VipSummary},
        config::Protocol,
    };

    fn counters(packets: u64) -> Counters {
        Counters {
            packets,
            bytes: packets * 100,
            new_flows: packets / 10,
            drops: 1,
        }
    }

    fn backend(address: &str, port: Option<u16>, state: &str, weight: u32) -> BackendInfo {
        BackendInfo {
            tenant: "acme".into(),
            pool: "web".into(),
            address: address.parse().expect("ip"),
            port,
            id: 1,
            weight,
            state: state.into(),
            health: None,
            flows: 7,
            last_seen_secs_ago: Some(1.5),
            counters: counters(50),
        }
    }

    fn sample() -> (Stats, Status) {
        let stats = Stats {
            global: BTreeMap::from([("rx".into(), 1000), ("forwarded".into(), 990)]),
            tenants: vec![
                TenantStats {
                    name: "acme".into(),
                    id: 1,
                    counters: counters(100),
                    drops_by_reason: BTreeMap::from([("no_neigh".into(), 3)]),
                    flow_table: api::FlowTableUsage {
                        flows: 40,
                        max_flows: 512,
                    },
                },
                TenantStats {
                    // Not a valid tenant name: only here to test escaping.
                    name: "we\"ird\\na\nme".into(),
                    id: 2,
                    counters: counters(0),
                    drops_by_reason: BTreeMap::new(),
                    flow_table: api::FlowTableUsage::default(),
                },
            ],
            vips: vec![VipSummary {
                tenant: "acme".into(),
                address: "2001:db8::10".parse().expect("ip"),
                port: 443,
                protocol: Protocol::Tcp,
                pool: "web".into(),
                id: 1,
                counters: counters(100),
            }],
            backends: vec![
                backend("10.0.1.11", None, "up", 1),
                backend("10.0.1.12", Some(80), "draining", 0),
                backend("2001:db8::2", Some(443), "down", 2),
            ],
            l7_tenants: vec![api::L7TenantStats {
                tenant: "acme".into(),
                counters: {
                    let s = crate::l7::TenantStats::default();
                    s.record(200, Duration::from_millis(3));
                    s.record(503, Duration::from_millis(30));
                    s.refused(crate::l7::Reason::RateLimit);
                    s.view()
                },
            }],
            l7_listeners: vec![api::L7ListenerStats {
                address: "203.0.113.20:443".parse().expect("addr"),
                connections: 9,
                tls_handshake_failures: 2,
                bad_client_hellos: 1,
                refused_connections: 3,
                deadline_closes: 4,
                open_connections: 5,
                bad_proxy_headers: 0,
            }],
            access_log_lost: 0,
        };
        let daemon = Status {
            version: "0.1.0".into(),
            pid: 42,
            config: "/etc/lb/lb.toml".into(),
            interface: "eth0".into(),
            pin_path: "/sys/fs/bpf/lb".into(),
            forwarding: "ipip".into(),
            uptime_secs: 3600,
            tenants: 2,
            vips: 1,
            pools: 1,
            backends: 3,
            backends_down: 1,
            reloads: 4,
            last_reload: Some(ReloadResult {
                ok: false,
                at_unix_ms: 1_700_000_000_042,
                message: "lb.toml:3:1: bad".into(),
                dropped_overrides: Vec::new(),
            }),
            overrides: 2,
        };
        (stats, daemon)
    }

    #[test]
    fn renders_every_family_with_labels() {
        let (stats, daemon) = sample();
        let text = render(&stats, &daemon);
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "lb_info{version=\"0.1.0\"} 1",
            "lb_uptime_seconds 3600",
            "lb_reloads_total 4",
            "lb_last_reload_success 0",
            "lb_last_reload_timestamp_seconds 1700000000.042",
            "lb_overrides 2",
            "lb_objects{kind=\"backends_down\"} 1",
            "lb_node_events_total{event=\"rx\"} 1000",
            "lb_tenant_packets_total{tenant=\"acme\"} 100",
            "lb_tenant_bytes_total{tenant=\"acme\"} 10000",
            "lb_tenant_flows{tenant=\"acme\"} 40",
            "lb_tenant_max_flows{tenant=\"acme\"} 512",
            "lb_tenant_new_flows_total{tenant=\"acme\"} 10",
            "lb_tenant_drops_total{tenant=\"acme\",reason=\"no_neigh\"} 3",
            "lb_tenant_packets_total{tenant=\"we\\\"ird\\\\na\\nme\"} 0",
            "lb_vip_packets_total{tenant=\"acme\",vip=\"[2001:db8::10]:443\",protocol=\"tcp\"} 100",
            "lb_vip_drops_total{tenant=\"acme\",vip=\"[2001:db8::10]:443\",protocol=\"tcp\"} 1",
            "lb_backend_packets_total{tenant=\"acme\",pool=\"web\",backend=\"10.0.1.11\"} 50",
            "lb_backend_up{tenant=\"acme\",pool=\"web\",backend=\"10.0.1.11\"} 1",
            "lb_backend_up{tenant=\"acme\",pool=\"web\",backend=\"10.0.1.12:80\"} 1",
            "lb_backend_up{tenant=\"acme\",pool=\"web\",backend=\"[2001:db8::2]:443\"} 0",
            "lb_backend_weight{tenant=\"acme\",pool=\"web\",backend=\"10.0.1.12:80\"} 0",
            "lb_backend_flows{tenant=\"acme\",pool=\"web\",backend=\"10.0.1.11\"} 7",
            "lb_l7_requests_total{tenant=\"acme\",class=\"2xx\"} 1",
            "lb_l7_requests_total{tenant=\"acme\",class=\"5xx\"} 1",
            "lb_l7_request_duration_seconds_bucket{tenant=\"acme\",le=\"0.005\"} 1",
            "lb_l7_request_duration_seconds_bucket{tenant=\"acme\",le=\"+Inf\"} 2",
            "lb_l7_request_duration_seconds_count{tenant=\"acme\"} 2",
            "lb_l7_listener_tls_handshake_failures_total{listener=\"203.0.113.20:443\"} 2",
            "lb_l7_policy_refusals_total{tenant=\"acme\",reason=\"rate_limit\"} 1",
            "lb_l7_policy_refusals_total{tenant=\"acme\",reason=\"shed\"} 0",
            "# TYPE lb_l7_request_duration_seconds histogram",
            "# TYPE lb_tenant_drops_total counter",
            "# TYPE lb_backend_up gauge",
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected:?} in:\n{text}"
            );
        }
        // The escaped name is one line: a raw newline would break the format.
        assert!(!lines.contains(&"me\"} 0"), "{text}");
        // Every family's samples are contiguous and announced once.
        let mut seen_types = Vec::new();
        let mut current = "";
        for line in &lines {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("name");
                assert!(!seen_types.contains(&name), "{name} declared twice");
                seen_types.push(name);
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("name");
                let histogram_part = ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(current));
                assert!(
                    name == current || histogram_part,
                    "sample outside its family: {line}"
                );
            }
        }
        // Without a reload yet, the reload result is absent.
        let daemon = Status {
            last_reload: None,
            ..daemon
        };
        let text = render(&stats, &daemon);
        assert!(!text.contains("lb_last_reload_success"), "{text}");
    }

    #[tokio::test]
    async fn serves_metrics_from_the_daemon() {
        let (stats, daemon) = sample();
        let (tx, mut rx) = mpsc::channel::<Command>(4);
        let answers = (json!(stats), json!(daemon));
        tokio::spawn(async move {
            while let Some(Command { request, reply }) = rx.recv().await {
                let answer = match request {
                    Request::Stats => Ok(answers.0.clone()),
                    Request::Status => Ok(answers.1.clone()),
                    _ => Err(api::ApiError::bad_request("unexpected")),
                };
                let _ = reply.send(answer);
            }
        });
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, tx, async {
            let _ = stopped.await;
        }));
        let client = crate::client::Client::new(crate::client::Target::Tcp {
            authority: addr.to_string(),
            token: None,
        });
        let (code, headers, body) = client
            .raw(Method::GET, "/metrics", None, &[])
            .await
            .expect("scrape");
        assert_eq!(code, 200);
        assert_eq!(
            headers
                .get("content-type")
                .map(hyper::header::HeaderValue::as_bytes),
            Some(CONTENT_TYPE.as_bytes())
        );
        let body = String::from_utf8(body.to_vec()).expect("utf-8");
        assert_eq!(body, render(&stats, &daemon));
        let (code, _, _) = client
            .raw(Method::GET, "/nope", None, &[])
            .await
            .expect("404");
        assert_eq!(code, 404);
        let (code, _, _) = client
            .raw(Method::POST, "/metrics", None, &[])
            .await
            .expect("405");
        assert_eq!(code, 405);
        let _ = stop.send(());
        server.await.expect("task").expect("serve");
    }
}
