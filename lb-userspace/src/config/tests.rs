use std::time::Duration;

use lb_common::{DEFAULT_FLOW_TABLE_ENTRIES, DEFAULT_RING_SIZE, RING_ARENA_ENTRIES};

use super::{validate::is_prime, *};

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
    assert_eq!(acme.limits.packets_per_second, Some(200_000));
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
    // [tenant.limits] as written: its keys, no others.
    assert_eq!(
        json["tenants"][0]["limits"],
        serde_json::json!({"packets_per_second": 200_000, "requests_per_second": 1000})
    );
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
    assert_eq!(c.tenants[0].limits, TenantLimits::default());
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
        format!("[[tenant.l4]]\nvip = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n")
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
    let line_of =
        |text: &str, needle: &str| text[..text.find(needle).expect("needle")].lines().count() + 1;
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
