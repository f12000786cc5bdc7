//! `lbctl`'s tables and fields: how each answer is shown to a person
//! (`--json` prints the answer as it came instead).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use lb::{
    api::{
        self, BackendInfo, BackendSelector, Explain, FlowInfo, OverrideInfo, PoolDetail,
        PoolSummary, ReloadResult, SniEntry, Stats, Status, TenantDetail, TenantSummary,
        VipSummary,
    },
    config::Protocol,
    inspect,
};
use serde_json::Value;

/// Columns aligned: numbers to the right, text to the left.
struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn print_or(&self, empty: &str) {
        if self.rows.is_empty() {
            println!("{empty}");
        } else {
            self.print();
        }
    }

    fn print_if_rows(&self) {
        if !self.rows.is_empty() {
            self.print();
        }
    }

    fn print(&self) {
        print!("{}", self.render());
    }

    fn render(&self) -> String {
        let columns = self.headers.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .chain(std::iter::once(&self.headers[i]))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let numeric: Vec<bool> = (0..columns)
            .map(|i| {
                let mut cells = self.rows.iter().filter_map(|r| r.get(i));
                cells.clone().next().is_some() && cells.all(|c| is_number(c))
            })
            .collect();
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut l = String::new();
            for (i, cell) in cells.iter().enumerate().take(columns) {
                let pad = widths[i].saturating_sub(cell.chars().count());
                let last = i + 1 == columns;
                if numeric[i] {
                    l.push_str(&" ".repeat(pad));
                    l.push_str(cell);
                } else {
                    l.push_str(cell);
                    if !last {
                        l.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    l.push_str("  ");
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&self.headers);
        for r in &self.rows {
            line(r);
        }
        out
    }
}

/// Numbers and placeholders (`-`) align to the right (addresses do not).
fn is_number(cell: &str) -> bool {
    let digits = cell.trim_end_matches('%');
    cell == "-"
        || (!digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && digits.matches('.').count() <= 1)
}

fn key_values(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        println!("{k:<width$}  {v}");
    }
}

fn drops_text(drops: &BTreeMap<String, u64>) -> String {
    if drops.is_empty() {
        return "-".into();
    }
    drops
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, ..) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

fn ago(at_unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format!(
        "{} ago",
        human_duration(now.saturating_sub(at_unix_ms) / 1000)
    )
}

pub(crate) fn status(s: &Status) {
    let last = s.last_reload.as_ref().map_or_else(
        || "none yet".to_owned(),
        |r| {
            let verdict = if r.ok { "ok" } else { "FAILED" };
            let message = if r.message.is_empty() {
                String::new()
            } else {
                format!(": {}", r.message)
            };
            format!("{verdict}, {}{message}", ago(r.at_unix_ms))
        },
    );
    key_values(&[
        ("lbd", format!("{} (pid {})", s.version, s.pid)),
        ("uptime", human_duration(s.uptime_secs)),
        ("config", s.config.clone()),
        ("interface", s.interface.clone()),
        ("pin path", s.pin_path.clone()),
        ("forwarding", s.forwarding.clone()),
        ("tenants", s.tenants.to_string()),
        ("vips", s.vips.to_string()),
        ("pools", s.pools.to_string()),
        (
            "backends",
            format!("{} ({} down)", s.backends, s.backends_down),
        ),
        ("reloads", s.reloads.to_string()),
        ("last reload", last),
        ("overrides", s.overrides.to_string()),
    ]);
    if let Some(r) = &s.last_reload {
        for d in &r.dropped_overrides {
            println!("  dropped override: {d}");
        }
    }
}

pub(crate) fn vips(vips: &[VipSummary], rates: Option<&Rates<'_>>) {
    let mut headers = vec![
        "VIP",
        "PROTO",
        "TENANT",
        "POOL",
        "PACKETS",
        "BYTES",
        "NEW_FLOWS",
        "DROPS",
    ];
    if rates.is_some() {
        headers.extend(["PKT/S", "BYTES/S"]);
    }
    let mut t = Table::new(&headers);
    for v in vips {
        let mut row = vec![
            SocketAddr::new(v.address, v.port).to_string(),
            v.protocol.to_string(),
            v.tenant.clone(),
            v.pool.clone(),
            v.counters.packets.to_string(),
            v.counters.bytes.to_string(),
            v.counters.new_flows.to_string(),
            v.counters.drops.to_string(),
        ];
        if let Some(r) = rates {
            let before =
                r.before.vips.iter().find(|b| {
                    b.address == v.address && b.port == v.port && b.protocol == v.protocol
                });
            row.extend(r.columns(&v.counters, before.map(|b| &b.counters)));
        }
        t.row(row);
    }
    t.print_or("no VIPs");
}

pub(crate) fn pools(pools: &[PoolSummary]) {
    let mut t = Table::new(&["TENANT", "POOL", "ID", "RING_SIZE", "BACKENDS", "UP"]);
    for p in pools {
        t.row(vec![
            p.tenant.clone(),
            p.name.clone(),
            p.id.to_string(),
            p.ring_size.to_string(),
            p.backends.to_string(),
            p.up.to_string(),
        ]);
    }
    t.print_or("no pools");
}

/// The health checker's view of a backend, in a few words.
fn health_text(b: &BackendInfo) -> String {
    b.health
        .as_ref()
        .and_then(|h| h.get("health"))
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_owned()
}

fn last_seen_text(b: &BackendInfo) -> String {
    b.last_seen_secs_ago
        .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"))
}

pub(crate) fn backends(backends: &[BackendInfo], rates: Option<&Rates<'_>>) {
    let mut headers = vec![
        "TENANT",
        "POOL",
        "BACKEND",
        "ID",
        "WEIGHT",
        "STATE",
        "HEALTH",
        "FLOWS",
        "LAST_SEEN_S",
        "PACKETS",
        "BYTES",
        "NEW_FLOWS",
    ];
    if rates.is_some() {
        headers.extend(["PKT/S", "BYTES/S"]);
    }
    let mut t = Table::new(&headers);
    for b in backends {
        let mut row = vec![
            b.tenant.clone(),
            b.pool.clone(),
            inspect::show(b.address, b.port),
            b.id.to_string(),
            b.weight.to_string(),
            b.state.clone(),
            health_text(b),
            b.flows.to_string(),
            last_seen_text(b),
            b.counters.packets.to_string(),
            b.counters.bytes.to_string(),
            b.counters.new_flows.to_string(),
        ];
        if let Some(r) = rates {
            let before = r.before.backends.iter().find(|o| {
                o.tenant == b.tenant
                    && o.pool == b.pool
                    && o.address == b.address
                    && o.port == b.port
            });
            row.extend(r.columns(&b.counters, before.map(|o| &o.counters)));
        }
        t.row(row);
    }
    t.print_or("no backends");
}

pub(crate) fn backend(b: &BackendInfo) {
    let mut fields = vec![
        ("backend", inspect::show(b.address, b.port)),
        ("pool", format!("{}/{}", b.tenant, b.pool)),
        ("id", b.id.to_string()),
        ("weight", b.weight.to_string()),
        ("state", b.state.clone()),
        ("flows", b.flows.to_string()),
        (
            "last seen",
            b.last_seen_secs_ago
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s ago")),
        ),
        ("packets", b.counters.packets.to_string()),
        ("bytes", b.counters.bytes.to_string()),
        ("new flows", b.counters.new_flows.to_string()),
    ];
    if let Some(h) = &b.health {
        fields.push(("health", health_text(b)));
        if let Some(e) = h.get("last_error").and_then(Value::as_str) {
            fields.push(("last check error", e.to_owned()));
        }
        if let Some(at) = h.get("last_check_unix_ms").and_then(Value::as_u64) {
            fields.push(("last check", ago(at)));
        }
    }
    key_values(&fields);
    if b.state == "draining" {
        if b.flows == 0 {
            println!("\ndrain complete: no flow-table entry points at this backend");
        } else {
            println!(
                "\ndraining: {} flow(s) still point at this backend; wait until none is left \
                 (or they have been idle longer than flow_idle_timeout)",
                b.flows
            );
        }
    }
}

pub(crate) fn flows(flows: &[FlowInfo]) {
    let mut t = Table::new(&[
        "CLIENT", "VIP", "PROTO", "TENANT", "BACKEND", "ID", "VALID", "IDLE_S",
    ]);
    for f in flows {
        t.row(vec![
            f.client.to_string(),
            f.vip.to_string(),
            f.protocol.clone(),
            f.tenant.clone(),
            f.backend.map_or_else(|| "?".to_owned(), |b| b.to_string()),
            f.backend_id.to_string(),
            if f.valid { "yes" } else { "stale" }.to_owned(),
            format!("{:.1}", f.idle_secs),
        ]);
    }
    t.print_or("no flows");
}

pub(crate) fn explain(e: &Explain, client: SocketAddr, vip: SocketAddr, protocol: Protocol) {
    let backend = match (e.backend, e.backend_id) {
        (Some(b), Some(id)) => format!("{b} (id {id})"),
        (Some(b), None) => b.to_string(),
        (None, Some(id)) => format!("id {id} (address unknown)"),
        (None, None) => "none (the pool has no usable backend: the packet is dropped)".into(),
    };
    let why = match e.decision.as_str() {
        "flow_table" => "an established flow: its flow-table entry is honoured".to_owned(),
        "ring" => format!(
            "a new flow: Maglev ring slot {} = hash {} mod the ring size",
            e.ring_slot, e.hash
        ),
        other => other.to_owned(),
    };
    key_values(&[
        ("flow", format!("{client} -> {vip}/{protocol}")),
        ("tenant", e.tenant.clone()),
        ("pool", e.pool.clone()),
        ("backend", backend),
        ("decision", why),
        ("flow hash", e.hash.to_string()),
        ("ring slot", e.ring_slot.to_string()),
    ]);
    if let Some(note) = &e.note {
        println!("note: {note}");
    }
}

pub(crate) fn reload(r: &ReloadResult) {
    if r.ok {
        if r.message.is_empty() {
            println!("reloaded");
        } else {
            println!("{}", r.message);
        }
    } else {
        println!("reload FAILED: {}", r.message);
    }
    for d in &r.dropped_overrides {
        println!("dropped override (names something the file no longer has): {d}");
    }
}

/// The answer of a change: `added: acme`, or a backend's new state.
pub(crate) fn done(value: &Value) {
    if let Ok(b) = serde_json::from_value::<BackendInfo>(value.clone()) {
        let flows = if b.flows > 0 {
            format!(", {} flow(s) still point at it", b.flows)
        } else {
            String::new()
        };
        println!(
            "backend {} in {}/{}: {} (weight {}){flows}",
            inspect::show(b.address, b.port),
            b.tenant,
            b.pool,
            b.state,
            b.weight
        );
        return;
    }
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let v = match v {
                    Value::Number(n) if k == "cleared" => format!("{n} override(s)"),
                    Value::String(s) => s.clone(),
                    Value::Object(o) if o.contains_key("address") => {
                        let sel: Option<BackendSelector> = serde_json::from_value(v.clone()).ok();
                        sel.map_or_else(
                            || v.to_string(),
                            |s| {
                                format!(
                                    "backend {} in {}/{}",
                                    inspect::show(s.address, s.port),
                                    s.tenant,
                                    s.pool
                                )
                            },
                        )
                    }
                    other => other.to_string(),
                };
                println!("{k}: {v}");
            }
        }
        Value::String(s) => println!("{}", s.trim_end()),
        _ => println!("ok"),
    }
}

/// Per-second rates against the previous refresh of `stats --watch`.
pub(crate) struct Rates<'a> {
    pub(crate) secs: f64,
    pub(crate) before: &'a Stats,
}

impl Rates<'_> {
    #[expect(
        clippy::cast_precision_loss,
        reason = "rates are shown rounded; counters far beyond 2^52 lose nothing visible"
    )]
    fn columns(&self, now: &api::Counters, before: Option<&api::Counters>) -> [String; 2] {
        let Some(before) = before.filter(|_| self.secs > 0.0) else {
            return ["-".into(), "-".into()];
        };
        let rate = |n: u64, b: u64| format!("{:.0}", n.saturating_sub(b) as f64 / self.secs);
        [
            rate(now.packets, before.packets),
            rate(now.bytes, before.bytes),
        ]
    }
}

pub(crate) fn stats(stats: &Stats, rates: Option<&Rates<'_>>) {
    let node: Vec<(&str, String)> = stats
        .global
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_string()))
        .collect();
    println!("node");
    let width = node.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &node {
        println!("  {k:<width$}  {v}");
    }
    println!();
    let mut headers = vec!["TENANT", "PACKETS", "BYTES", "NEW_FLOWS", "DROPS"];
    if rates.is_some() {
        headers.extend(["PKT/S", "BYTES/S"]);
    }
    headers.push("DROPS_BY_REASON");
    let mut t = Table::new(&headers);
    for s in &stats.tenants {
        let mut row = vec![
            s.name.clone(),
            s.counters.packets.to_string(),
            s.counters.bytes.to_string(),
            s.counters.new_flows.to_string(),
            s.counters.drops.to_string(),
        ];
        if let Some(r) = rates {
            let before = r.before.tenants.iter().find(|b| b.name == s.name);
            row.extend(r.columns(&s.counters, before.map(|b| &b.counters)));
        }
        row.push(drops_text(&s.drops_by_reason));
        t.row(row);
    }
    t.print_or("no tenants");
    println!();
    vips(&stats.vips, rates);
    println!();
    backends(&stats.backends, rates);
    if !stats.l7_tenants.is_empty() {
        println!();
        l7(stats);
    }
}

/// The L7 tier's per-tenant requests and per-listener refusals.
fn l7(stats: &Stats) {
    let mut t = Table::new(&[
        "L7_TENANT",
        "2XX",
        "3XX",
        "4XX",
        "5XX",
        "BYTES_IN",
        "BYTES_OUT",
        "CONNS",
        "TLS_FAIL",
        "POLICY_REFUSALS",
    ]);
    for s in &stats.l7_tenants {
        let c = &s.counters;
        let refused: BTreeMap<String, u64> = c
            .policy_refusals
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        t.row(vec![
            s.tenant.clone(),
            c.responses[1].to_string(),
            c.responses[2].to_string(),
            c.responses[3].to_string(),
            c.responses[4].to_string(),
            c.bytes_in.to_string(),
            c.bytes_out.to_string(),
            c.active_connections.to_string(),
            c.tls_handshake_failures.to_string(),
            drops_text(&refused),
        ]);
    }
    t.print_or("no L7 tenants");
    println!();
    let mut t = Table::new(&[
        "LISTENER",
        "CONNECTIONS",
        "TLS_FAILURES",
        "BAD_HELLOS",
        "REFUSED",
        "DEADLINE_CLOSES",
    ]);
    for l in &stats.l7_listeners {
        t.row(vec![
            l.address.to_string(),
            l.connections.to_string(),
            l.tls_handshake_failures.to_string(),
            l.bad_client_hellos.to_string(),
            l.refused_connections.to_string(),
            l.deadline_closes.to_string(),
        ]);
    }
    t.print_or("no L7 listeners");
}

pub(crate) fn tenants(tenants: &[TenantSummary]) {
    let mut t = Table::new(&[
        "TENANT",
        "ID",
        "VIPS",
        "POOLS",
        "BACKENDS",
        "PACKETS",
        "BYTES",
        "NEW_FLOWS",
        "DROPS",
        "FLOWS",
        "MAX_FLOWS",
    ]);
    for s in tenants {
        t.row(vec![
            s.name.clone(),
            s.id.to_string(),
            s.vips.to_string(),
            s.pools.to_string(),
            s.backends.to_string(),
            s.counters.packets.to_string(),
            s.counters.bytes.to_string(),
            s.counters.new_flows.to_string(),
            s.counters.drops.to_string(),
            s.flow_table.flows.to_string(),
            s.flow_table.max_flows.to_string(),
        ]);
    }
    t.print_or("no tenants");
}

pub(crate) fn tenant_detail(d: &TenantDetail) {
    let s = &d.summary;
    key_values(&[
        ("tenant", s.name.clone()),
        ("id", s.id.to_string()),
        ("backends", s.backends.to_string()),
        ("packets", s.counters.packets.to_string()),
        ("bytes", s.counters.bytes.to_string()),
        ("new flows", s.counters.new_flows.to_string()),
        ("drops", s.counters.drops.to_string()),
        ("drops by reason", drops_text(&d.drops_by_reason)),
    ]);
    println!();
    vips(&d.vips, None);
    println!();
    pools(&d.pools);
}

pub(crate) fn pool_detail(d: &PoolDetail) {
    let s = &d.summary;
    key_values(&[
        ("pool", format!("{}/{}", s.tenant, s.name)),
        ("id", s.id.to_string()),
        ("ring size", s.ring_size.to_string()),
        ("backends", format!("{} ({} up)", s.backends, s.up)),
    ]);
    println!();
    backends(&d.backends, None);
    if !d.ring_share.is_empty() {
        println!();
        let mut t = Table::new(&["BACKEND", "RING_SLOTS", "SHARE"]);
        for (backend, slots) in &d.ring_share {
            let share = f64::from(*slots) * 100.0 / f64::from(s.ring_size.max(1));
            t.row(vec![
                backend.clone(),
                slots.to_string(),
                format!("{share:.1}%"),
            ]);
        }
        t.print();
    }
}

pub(crate) fn overrides(list: &[OverrideInfo]) {
    if list.is_empty() {
        println!("no overrides: the configuration file applies as written");
    }
    let mut t = Table::new(&["#", "OVERRIDE"]);
    for o in list {
        t.row(vec![o.index.to_string(), o.description.clone()]);
    }
    t.print_if_rows();
}

pub(crate) fn sni(list: &[SniEntry]) {
    let mut t = Table::new(&["HOST", "HASH", "TENANT", "LISTEN", "IN_MAP"]);
    for e in list {
        t.row(vec![
            e.name.clone().unwrap_or_else(|| "-".to_owned()),
            e.hash.clone(),
            e.tenant.clone(),
            e.listen.map_or_else(|| "-".to_owned(), |l| l.to_string()),
            if e.in_map { "yes" } else { "no" }.to_owned(),
        ]);
    }
    t.print_or("no L7 host names");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["NAME", "BACKEND", "PACKETS", "NOTE"]);
        t.row(vec![
            "acme".into(),
            "10.0.0.1".into(),
            "5".into(),
            "x".into(),
        ]);
        t.row(vec![
            "globex-long".into(),
            "10.0.0.12".into(),
            "12345".into(),
            String::new(),
        ]);
        assert_eq!(
            t.render(),
            "NAME         BACKEND    PACKETS  NOTE\n\
             acme         10.0.0.1         5  x\n\
             globex-long  10.0.0.12    12345\n"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m01s");
        assert_eq!(human_duration(7322), "2h02m");
        assert_eq!(human_duration(90_000), "1d01h");
    }
}
