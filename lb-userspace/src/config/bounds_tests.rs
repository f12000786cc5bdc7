//! Every bounded key: its bound is accepted, one step past it is refused
//! at the key's line and field with a message naming the bound.

use super::*;

/// Where a case's snippet goes in [`config`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Node,
    Tenant,
    Pool,
    Site,
    Vip,
    Listener,
}

/// A configuration with one of each section; `snippet` is written into
/// `slot` (one line, so that its line is the error's).
fn config(slot: Slot, snippet: &str) -> String {
    let at = |s: Slot| if s == slot { snippet } else { "" };
    format!(
        r#"[node]
interface = "eth0"
{node}
[[tenant]]
name = "acme"
{tenant}
[[tenant.pool]]
name = "web"
backends = [ {{ address = "10.0.1.11", port = 8080 }} ]
{pool}
[[tenant.l4]]
vip = "203.0.113.10"
port = 8080
protocol = "tcp"
pool = "web"
{vip}
[[tenant.l7]]
listen = "203.0.113.20:80"
routes = [ {{ pool = "web" }} ]
{site}
[[listener]]
address = "203.0.113.20:80"
{listener}
"#,
        node = at(Slot::Node),
        tenant = at(Slot::Tenant),
        pool = at(Slot::Pool),
        vip = at(Slot::Vip),
        site = at(Slot::Site),
        listener = at(Slot::Listener),
    )
}

/// (slot, accepted snippet, refused snippet, field, fragment of the
/// message). The accepted snippet holds the bound itself.
type Case = (Slot, &'static str, &'static str, &'static str, &'static str);

const CASES: &[Case] = &[
    // [node]
    (
        Slot::Node,
        "flow_idle_timeout = \"24h\"",
        "flow_idle_timeout = \"86400001ms\"",
        "node.flow_idle_timeout",
        "flow_idle_timeout must be between 1s and 24h",
    ),
    (
        Slot::Node,
        "flow_idle_timeout = \"1s\"",
        "flow_idle_timeout = \"999ms\"",
        "node.flow_idle_timeout",
        "flow_idle_timeout must be between 1s and 24h; \"999ms\" is too short",
    ),
    (
        Slot::Node,
        "flow_table_size = 67108864",
        "flow_table_size = 67108865",
        "node.flow_table_size",
        "between 1024 and 67108864",
    ),
    (
        Slot::Node,
        "drain_timeout = \"24h\"",
        "drain_timeout = \"1441m\"",
        "node.drain_timeout",
        "drain_timeout must be at most 24h",
    ),
    (
        Slot::Node,
        "drain_timeout = \"0s\"",
        "drain_timeout = \"18446744073709551615s\"",
        "node.drain_timeout",
        "drain_timeout must be at most 24h",
    ),
    (
        Slot::Node,
        "max_inflight_requests = 100000000",
        "max_inflight_requests = 100000001",
        "node.max_inflight_requests",
        "max_inflight_requests must be at most 100000000",
    ),
    // [tenant.limits] and [tenant.auth]
    (
        Slot::Tenant,
        "limits = { packets_per_second = 1000000000 }",
        "limits = { packets_per_second = 1000000001 }",
        "tenant[0] (\"acme\").limits.packets_per_second",
        "packets_per_second must be at most 1000000000",
    ),
    (
        Slot::Tenant,
        "limits = { bytes_per_second = 1000000000000 }",
        "limits = { bytes_per_second = 1000000000001 }",
        "tenant[0] (\"acme\").limits.bytes_per_second",
        "bytes_per_second must be at most 1000000000000",
    ),
    (
        Slot::Tenant,
        "limits = { new_flows_per_second = 1000000000 }",
        "limits = { new_flows_per_second = 1000000001 }",
        "tenant[0] (\"acme\").limits.new_flows_per_second",
        "new_flows_per_second must be at most 1000000000",
    ),
    (
        Slot::Tenant,
        "limits = { requests_per_second = 1000000000 }",
        "limits = { requests_per_second = 1000000001 }",
        "tenant[0] (\"acme\").limits.requests_per_second",
        "requests_per_second must be at most 1000000000",
    ),
    (
        Slot::Tenant,
        "limits = { requests_per_second = 1, requests_burst = 1000000000 }",
        "limits = { requests_per_second = 1, requests_burst = 1000000001 }",
        "tenant[0] (\"acme\").limits.requests_burst",
        "requests_burst must be at most 1000000000",
    ),
    (
        Slot::Tenant,
        "limits = { requests_per_second_per_client_ip = 1000000 }",
        "limits = { requests_per_second_per_client_ip = 1000001 }",
        "tenant[0] (\"acme\").limits.requests_per_second_per_client_ip",
        "must be at most 1000000",
    ),
    (
        Slot::Tenant,
        "limits = { requests_per_second_per_api_key = 1000000 }",
        "limits = { requests_per_second_per_api_key = 1000001 }",
        "tenant[0] (\"acme\").limits.requests_per_second_per_api_key",
        "must be at most 1000000",
    ),
    (
        Slot::Tenant,
        "limits = { max_connections = 100000000 }",
        "limits = { max_connections = 100000001 }",
        "tenant[0] (\"acme\").limits.max_connections",
        "max_connections must be at most 100000000",
    ),
    (
        Slot::Tenant,
        "limits = { max_inflight_requests = 100000000 }",
        "limits = { max_inflight_requests = 100000001 }",
        "tenant[0] (\"acme\").limits.max_inflight_requests",
        "max_inflight_requests must be at most 100000000",
    ),
    (
        Slot::Tenant,
        "auth = { jwt = { jwks_file = \"k.json\", leeway = \"5m\" } }",
        "auth = { jwt = { jwks_file = \"k.json\", leeway = \"300001ms\" } }",
        "tenant[0] (\"acme\").auth.jwt.leeway",
        "leeway must be at most 5m",
    ),
    (
        Slot::Tenant,
        "auth = { jwt = { jwks_file = \"k.json\", leeway = \"0s\" } }",
        "auth = { jwt = { jwks_file = \"k.json\", leeway = \"99999999999999999999999h\" } }",
        "tenant[0] (\"acme\").auth.jwt.leeway",
        "leeway must be at most 5m",
    ),
    // [[tenant.pool]]
    (
        Slot::Pool,
        "health = { kind = \"tcp\", interval = \"24h\" }",
        "health = { kind = \"tcp\", interval = \"86401s\" }",
        "tenant[0] (\"acme\").pool[0] (\"web\").health.interval",
        "interval must be between 1ms and 24h",
    ),
    (
        Slot::Pool,
        "health = { kind = \"tcp\", interval = \"2ms\", timeout = \"1ms\" }",
        "health = { kind = \"tcp\", interval = \"2ms\", timeout = \"0ms\" }",
        "tenant[0] (\"acme\").pool[0] (\"web\").health.timeout",
        "timeout must be between 1ms and 24h; \"0ms\" is too short",
    ),
    (
        Slot::Pool,
        "health = { kind = \"tcp\", interval = \"24h\", timeout = \"86399999ms\" }",
        "health = { kind = \"tcp\", interval = \"24h\", timeout = \"25h\" }",
        "tenant[0] (\"acme\").pool[0] (\"web\").health.timeout",
        "timeout must be between 1ms and 24h",
    ),
    (
        Slot::Pool,
        "health = { kind = \"tcp\", rise = 1000 }",
        "health = { kind = \"tcp\", rise = 1001 }",
        "tenant[0] (\"acme\").pool[0] (\"web\").health.rise",
        "rise must be between 1 and 1000",
    ),
    (
        Slot::Pool,
        "health = { kind = \"tcp\", fall = 1000 }",
        "health = { kind = \"tcp\", fall = 1001 }",
        "tenant[0] (\"acme\").pool[0] (\"web\").health.fall",
        "fall must be between 1 and 1000",
    ),
    (
        Slot::Pool,
        "health = { kind = \"tcp\", fall = 1 }",
        "health = { kind = \"tcp\", fall = 0 }",
        "tenant[0] (\"acme\").pool[0] (\"web\").health.fall",
        "fall must be at least 1 (and at most 1000)",
    ),
    (
        Slot::Pool,
        "outlier = { consecutive_failures = 1000 }",
        "outlier = { consecutive_failures = 1001 }",
        "tenant[0] (\"acme\").pool[0] (\"web\").outlier.consecutive_failures",
        "consecutive_failures must be between 1 and 1000",
    ),
    (
        Slot::Pool,
        "outlier = { consecutive_failures = 1 }",
        "outlier = { consecutive_failures = 0 }",
        "tenant[0] (\"acme\").pool[0] (\"web\").outlier.consecutive_failures",
        "consecutive_failures must be between 1 and 1000",
    ),
    (
        Slot::Pool,
        "outlier = { ejection = \"5m\" }",
        "outlier = { ejection = \"300001ms\" }",
        "tenant[0] (\"acme\").pool[0] (\"web\").outlier.ejection",
        "ejection must be between 1ms and 5m",
    ),
    // [[tenant.l4]] and [[listener]] packet limits
    (
        Slot::Vip,
        "limits = { bytes_per_second = 1000000000000 }",
        "limits = { bytes_per_second = 1000000000001 }",
        "tenant[0] (\"acme\").l4[0].limits.bytes_per_second",
        "bytes_per_second must be at most 1000000000000",
    ),
    (
        Slot::Listener,
        "limits = { packets_per_second = 1000000000 }",
        "limits = { packets_per_second = 1000000001 }",
        "listener[0].limits.packets_per_second",
        "packets_per_second must be at most 1000000000",
    ),
    (
        Slot::Listener,
        "limits = { syn_per_second = 1000000000 }",
        "limits = { syn_per_second = 1000000001 }",
        "listener[0].limits.syn_per_second",
        "syn_per_second must be at most 1000000000",
    ),
    // [[tenant.l7]]
    (
        Slot::Site,
        "timeouts = { connect = \"24h\" }",
        "timeouts = { connect = \"86400001ms\" }",
        "tenant[0] (\"acme\").l7[0].timeouts.connect",
        "connect must be between 1ms and 24h",
    ),
    (
        Slot::Site,
        "timeouts = { header = \"1440m\" }",
        "timeouts = { header = \"1441m\" }",
        "tenant[0] (\"acme\").l7[0].timeouts.header",
        "header must be between 1ms and 24h",
    ),
    (
        Slot::Site,
        "timeouts = { idle = \"86400s\" }",
        "timeouts = { idle = \"18446744073709551615s\" }",
        "tenant[0] (\"acme\").l7[0].timeouts.idle",
        "idle must be between 1ms and 24h; \"18446744073709551615s\" is too long",
    ),
    (
        Slot::Site,
        "timeouts = { idle = \"1ms\" }",
        "timeouts = { idle = \"0s\" }",
        "tenant[0] (\"acme\").l7[0].timeouts.idle",
        "idle must be between 1ms and 24h; \"0s\" is too short",
    ),
    (
        Slot::Site,
        "timeouts = { request = \"24h\" }",
        "timeouts = { request = \"25h\" }",
        "tenant[0] (\"acme\").l7[0].timeouts.request",
        "request must be between 1ms and 24h",
    ),
    (
        Slot::Site,
        "max_header_bytes = 1048576",
        "max_header_bytes = 1048577",
        "tenant[0] (\"acme\").l7[0].max_header_bytes",
        "max_header_bytes must be between 1024 and 1048576 (1 MiB)",
    ),
    (
        Slot::Site,
        "max_header_bytes = 1024",
        "max_header_bytes = 1023",
        "tenant[0] (\"acme\").l7[0].max_header_bytes",
        "max_header_bytes must be between 1024 and 1048576 (1 MiB); 1023 is too small",
    ),
    (
        Slot::Site,
        "max_body_bytes = 68719476736",
        "max_body_bytes = 68719476737",
        "tenant[0] (\"acme\").l7[0].max_body_bytes",
        "max_body_bytes must be at most 68719476736 (64 GiB)",
    ),
    (
        Slot::Site,
        "retries = 10",
        "retries = 11",
        "tenant[0] (\"acme\").l7[0].retries",
        "retries must be at most 10",
    ),
];

#[test]
fn each_bound_is_accepted_and_one_past_it_refused() {
    for &(slot, accepted, refused, field, fragment) in CASES {
        let good = config(slot, accepted);
        if let Err(e) = parse(&good, "lb.toml") {
            panic!("the bound {accepted:?} was refused: {e}");
        }
        let bad = config(slot, refused);
        let Err(e) = parse(&bad, "lb.toml") else {
            panic!("{refused:?} was accepted")
        };
        let shown = e.to_string();
        let line = bad[..bad.find(refused).expect("snippet in the text")]
            .matches('\n')
            .count()
            + 1;
        assert_eq!(
            e.field(),
            Some(field),
            "wrong field for {refused:?}: {shown}"
        );
        assert_eq!(e.line(), Some(line), "wrong line for {refused:?}: {shown}");
        assert!(
            shown.starts_with(&format!("lb.toml:{line}:")),
            "no file:line:col in {shown}"
        );
        assert!(
            e.message().contains(fragment),
            "{refused:?}: message lacks {fragment:?}: {shown}"
        );
    }
}

#[test]
fn parse_duration_refuses_absurd_values_cleanly() {
    assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
    assert_eq!(parse_duration("525600m"), Ok(MAX_DURATION));
    for text in [
        "8761h",
        "31536000001ms",
        "18446744073709551615s",
        "18446744073709551615h",
        "99999999999999999999999999ms",
    ] {
        let e = parse_duration(text).expect_err(text);
        assert!(
            e.contains("is too long: at most 8760h (365 days)"),
            "{text}: {e}"
        );
    }
    // Malformed text keeps its own message, whatever its length.
    let e = parse_duration("99999999999999999999999999 parsecs").expect_err("parsecs");
    assert!(e.starts_with("invalid duration"), "{e}");
    assert!(parse_duration("").is_err());
    assert!(parse_duration("s").is_err());
}

#[test]
fn every_default_lies_within_its_bound() {
    assert!(FLOW_TABLE_SIZE_RANGE.contains(&lb_common::DEFAULT_FLOW_TABLE_ENTRIES));
    assert!((MIN_FLOW_IDLE_TIMEOUT..=MAX_FLOW_IDLE_TIMEOUT).contains(&DEFAULT_FLOW_IDLE_TIMEOUT));
    assert!(DRAIN_TIMEOUT_RANGE.contains(&DEFAULT_DRAIN_TIMEOUT));
    assert!(HEALTH_INTERVAL_RANGE.contains(&DEFAULT_HEALTH_INTERVAL));
    assert!(HEALTH_TIMEOUT_RANGE.contains(&DEFAULT_HEALTH_TIMEOUT));
    assert!(HEALTH_COUNT_RANGE.contains(&DEFAULT_HEALTH_RISE));
    assert!(HEALTH_COUNT_RANGE.contains(&DEFAULT_HEALTH_FALL));
    for d in [
        DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_HEADER_TIMEOUT,
        DEFAULT_IDLE_TIMEOUT,
        DEFAULT_REQUEST_TIMEOUT,
    ] {
        assert!(L7_TIMEOUT_RANGE.contains(&d), "{d:?}");
    }
    assert!(MAX_HEADER_BYTES_RANGE.contains(&DEFAULT_MAX_HEADER_BYTES));
    assert!(MAX_BODY_BYTES_RANGE.contains(&DEFAULT_MAX_BODY_BYTES));
    const { assert!(DEFAULT_RETRIES <= MAX_RETRIES) };
    assert!(OUTLIER_FAILURES_RANGE.contains(&DEFAULT_OUTLIER_FAILURES));
    assert!(OUTLIER_EJECTION_RANGE.contains(&DEFAULT_OUTLIER_EJECTION));
    assert!(DEFAULT_JWT_LEEWAY <= MAX_JWT_LEEWAY);
    // Every duration bound is one parse_duration reads.
    for d in [
        MAX_FLOW_IDLE_TIMEOUT,
        *DRAIN_TIMEOUT_RANGE.end(),
        *HEALTH_INTERVAL_RANGE.end(),
        *L7_TIMEOUT_RANGE.end(),
        *OUTLIER_EJECTION_RANGE.end(),
        MAX_JWT_LEEWAY,
    ] {
        assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
}
