//! `lb.toml` built from structure: the fuzzer picks one of the `config`
//! target's seed configurations ([`BASES`]) and edits it with tables, keys
//! and values from the schema's own names (and a few wrong ones), so that
//! inputs start valid, have real keys and reach validation, rather than
//! stopping at a syntax error as raw text mostly does. The text goes to
//! `lb::fuzzing::config`, the same function as the `config` target; a crash
//! here is committed as the TOML it generated, under
//! `fuzz/regressions/config/` (print it with `cargo fuzz fmt`).
#![no_main]

use std::fmt;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use toml::{Table, Value};

const NODE_KEYS: &[&str] = &[
    "interface",
    "xdp_mode",
    "forwarding",
    "pin_path",
    "admin_socket",
    "admin_listen",
    "admin_token_file",
    "admin_tls",
    "metrics_listen",
    "state_dir",
    "hash_seed",
    "flow_table_size",
    "flow_idle_timeout",
    "access_log",
    "drain_timeout",
    "max_connections",
];
const TENANT_KEYS: &[&str] = &["name", "limits", "acl", "auth", "tiers", "policy"];
const LIMIT_KEYS: &[&str] = &[
    "packets_per_second",
    "bytes_per_second",
    "new_flows_per_second",
    "syn_per_second",
    "requests_per_second",
    "burst",
    "max_concurrent",
    "max_connections",
];
const ACL_KEYS: &[&str] = &["allow", "deny"];
const POOL_KEYS: &[&str] = &[
    "name",
    "ring_size",
    "backends",
    "health",
    "balance",
    "hash_on",
    "backend_protocol",
    "backend_tls",
    "proxy_protocol",
    "outlier",
];
const BACKEND_KEYS: &[&str] = &["address", "port", "weight"];
const HEALTH_KEYS: &[&str] = &[
    "kind", "path", "interval", "timeout", "rise", "fall", "port", "expect", "tls", "initial",
];
const L4_KEYS: &[&str] = &["vip", "port", "protocol", "pool", "limits"];
const L7_KEYS: &[&str] = &[
    "listen",
    "protocol",
    "hosts",
    "tls",
    "routes",
    "pool",
    "path_prefix",
    "strip_path_prefix",
    "timeouts",
    "upgrades",
    "allow_encoded_slashes",
    "merge_slashes",
    "max_header_bytes",
    "max_body_bytes",
    "hsts",
    "retries",
];
const ROUTE_KEYS: &[&str] = &[
    "path_prefix",
    "host",
    "method",
    "header",
    "pool",
    "strip_prefix",
];
const TIMEOUT_KEYS: &[&str] = &["header", "idle", "send", "request", "connect"];
const LISTENER_KEYS: &[&str] = &[
    "address",
    "identify",
    "default_tenant",
    "redirect_https",
    "limits",
    "max_connections_per_source",
    "trusted_proxies",
    "proxy_protocol",
];
/// Strings the schema knows (enum names, addresses, durations, paths) and
/// near misses.
const WORDS: &[&str] = &[
    "eth0",
    "lo",
    "auto",
    "native",
    "generic",
    "ipip",
    "l2dsr",
    "tcp",
    "udp",
    "http",
    "https",
    "h2",
    "http1",
    "tls_passthrough",
    "round_robin",
    "least_request",
    "maglev",
    "sni",
    "host",
    "path",
    "header",
    "jwt",
    "down",
    "up",
    "stdout",
    "off",
    "acme",
    "globex",
    "web",
    "api",
    "/",
    "/v2",
    "/a/../b",
    "%2F",
    "*.acme.example",
    "acme.example",
    "API.Acme.Example.",
    "203.0.113.10",
    "10.0.1.11",
    "2001:db8::1",
    "::",
    "0.0.0.0",
    "203.0.113.20:443",
    "[2001:db8::1]:443",
    "127.0.0.1:9465",
    "10.0.0.0/8",
    "2001:db8::/32",
    "0.0.0.0/0",
    "1ms",
    "1s",
    "2s",
    "10m",
    "24h",
    "8760h",
    "8761h",
    "0s",
    "-1s",
    "1.5s",
    "",
    " ",
    "websocket",
    "max-age=31536000",
    "a.pem",
    "a.key",
    "X-Canary",
    "GET",
    "DELETE",
    "source_ip",
    "cookie",
    "/sys/fs/bpf/lb",
    "/run/lb/admin.sock",
    "16381",
    "é",
    "a\u{0}b",
];

/// An index into one of the lists above.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Pick(u8);

impl Pick {
    fn of(self, list: &'static [&'static str]) -> &'static str {
        list[usize::from(self.0) % list.len()]
    }
}

#[derive(Arbitrary, Debug)]
enum Scalar {
    Word(Pick),
    Small(u16),
    Int(i64),
    Boundary(Boundary),
    Bool(bool),
    Float(f64),
    Text(String),
}

/// Integers around the schema's bounds.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Boundary {
    Zero,
    One,
    Prime257,
    Prime655373,
    Ring65537,
    Big(u8),
    Negative,
}

impl Scalar {
    fn value(&self) -> Value {
        match self {
            Self::Word(p) => Value::String(p.of(WORDS).to_owned()),
            Self::Small(n) => Value::Integer(i64::from(*n)),
            Self::Int(n) => Value::Integer(*n),
            Self::Boundary(b) => Value::Integer(match b {
                Boundary::Zero => 0,
                Boundary::One => 1,
                Boundary::Prime257 => 257,
                Boundary::Prime655373 => 655_373,
                Boundary::Ring65537 => 65_537,
                Boundary::Big(shift) => 1_i64 << (shift % 63),
                Boundary::Negative => -1,
            }),
            Self::Bool(b) => Value::Boolean(*b),
            Self::Float(f) => Value::Float(*f),
            Self::Text(s) => Value::String(s.clone()),
        }
    }
}

/// A value: a scalar, a list of scalars, or a table of one of the schema's
/// sub-tables (limits, health, timeouts, a backend, a route, TLS files).
#[derive(Arbitrary, Debug)]
enum Val {
    Scalar(Scalar),
    List(Vec<Scalar>),
    Table(Sub, Vec<(Pick, Scalar)>),
    Tables(Sub, Vec<Vec<(Pick, Scalar)>>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sub {
    Limits,
    Acl,
    Health,
    Backend,
    Route,
    Timeouts,
    Tls,
}

impl Sub {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Self::Limits => LIMIT_KEYS,
            Self::Acl => ACL_KEYS,
            Self::Health => HEALTH_KEYS,
            Self::Backend => BACKEND_KEYS,
            Self::Route => ROUTE_KEYS,
            Self::Timeouts => TIMEOUT_KEYS,
            Self::Tls => &["cert", "key"],
        }
    }
}

fn table(keys: &'static [&'static str], entries: &[(Pick, Val)]) -> Table {
    let mut t = Table::new();
    for (k, v) in entries {
        t.insert(k.of(keys).to_owned(), v.value());
    }
    t
}

fn flat(keys: &'static [&'static str], entries: &[(Pick, Scalar)]) -> Value {
    let mut t = Table::new();
    for (k, v) in entries {
        t.insert(k.of(keys).to_owned(), v.value());
    }
    Value::Table(t)
}

impl Val {
    fn value(&self) -> Value {
        match self {
            Self::Scalar(s) => s.value(),
            Self::List(l) => Value::Array(l.iter().map(Scalar::value).collect()),
            Self::Table(sub, e) => flat(sub.keys(), e),
            Self::Tables(sub, ts) => Value::Array(ts.iter().map(|e| flat(sub.keys(), e)).collect()),
        }
    }
}

/// Edits of one tenant: merged into the base's tenant `which` (modulo their
/// count) when there is one, else a new tenant; its tables replace or
/// extend the base's pools, L4 VIPs and L7 sites by position.
#[derive(Arbitrary, Debug)]
struct TenantDoc {
    which: Option<u8>,
    entries: Vec<(Pick, Val)>,
    pools: Vec<(Option<u8>, Vec<(Pick, Val)>)>,
    l4: Vec<(Option<u8>, Vec<(Pick, Val)>)>,
    l7: Vec<(Option<u8>, Vec<(Pick, Val)>)>,
}

/// The configurations the repository ships, which the edits start from:
/// an input of a few bytes is a real, valid configuration, and each edit a
/// small step away from one, where validation has the most to check.
const BASES: [&str; 3] = [
    include_str!("../corpus/config/lb.example.toml"),
    include_str!("../corpus/config/readme-0.toml"),
    include_str!("../corpus/config/two-tenants-l7.toml"),
];

#[derive(Arbitrary)]
struct Doc {
    base: Pick,
    node: Vec<(Pick, Val)>,
    tenants: Vec<TenantDoc>,
    listeners: Vec<(Option<u8>, Vec<(Pick, Val)>)>,
}

/// `entries` merged into `t`, keys named from `keys`.
fn merge(t: &mut Table, keys: &'static [&'static str], entries: &[(Pick, Val)]) {
    for (k, v) in entries {
        t.insert(k.of(keys).to_owned(), v.value());
    }
}

/// The array of tables `name` in `parent`, created when absent.
fn tables_of<'a>(parent: &'a mut Table, name: &str) -> &'a mut Vec<Value> {
    let slot = parent
        .entry(name)
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("made an array above")
}

/// Each edit merged into the table at its position, or appended.
fn edit_tables(
    list: &mut Vec<Value>,
    keys: &'static [&'static str],
    edits: &[(Option<u8>, Vec<(Pick, Val)>)],
) {
    for (which, entries) in edits {
        let existing = which
            .filter(|_| !list.is_empty())
            .map(|i| usize::from(i) % list.len());
        match existing.and_then(|i| list[i].as_table_mut()) {
            Some(t) => merge(t, keys, entries),
            None => list.push(Value::Table(table(keys, entries))),
        }
    }
}

impl Doc {
    fn text(&self) -> String {
        let mut root: Table = toml::from_str(self.base.of(&BASES)).unwrap_or_default();
        let node = root
            .entry("node")
            .or_insert_with(|| Value::Table(Table::new()));
        if let Some(node) = node.as_table_mut() {
            merge(node, NODE_KEYS, &self.node);
        }
        let tenants = tables_of(&mut root, "tenant");
        for edit in &self.tenants {
            let existing = edit
                .which
                .filter(|_| !tenants.is_empty())
                .map(|i| usize::from(i) % tenants.len());
            if existing.is_none() {
                tenants.push(Value::Table(Table::new()));
            }
            let i = existing.unwrap_or(tenants.len() - 1);
            let Some(tenant) = tenants[i].as_table_mut() else {
                continue;
            };
            merge(tenant, TENANT_KEYS, &edit.entries);
            edit_tables(tables_of(tenant, "pool"), POOL_KEYS, &edit.pools);
            edit_tables(tables_of(tenant, "l4"), L4_KEYS, &edit.l4);
            edit_tables(tables_of(tenant, "l7"), L7_KEYS, &edit.l7);
        }
        edit_tables(
            tables_of(&mut root, "listener"),
            LISTENER_KEYS,
            &self.listeners,
        );
        toml::to_string(&root).unwrap_or_default()
    }
}

/// `cargo fuzz fmt config_structured FILE` prints the generated TOML.
impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

fuzz_target!(|doc: Doc| lb::fuzzing::config(&doc.text()));
