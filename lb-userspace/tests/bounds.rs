//! Bounds on every value, as a property: random
//! durations, sizes and counts for the L7 site's, pool's, tenant's and
//! node's keys (zero, the bounds themselves, one step past them, huge and
//! absurd ones) go through `lb::config::parse`, the validation `lbd
//! --check` runs. A configuration is accepted exactly when every value lies
//! within its bound; a refused one names the offending key's line and
//! field. Every accepted one is served: the L7 tier starts in-process on a
//! loopback port and proxies one HTTP request to a loopback hyper backend,
//! which must answer (status 200, its body). Before the bounds, an accepted
//! `timeouts.idle = "18446744073709551615s"` made every connection task
//! panic on its deadline.
//!
//! Accepted timeouts are generated from 1s up: shorter ones are valid (the
//! unit tests in `config/bounds_tests.rs` accept 1ms) but may expire
//! legitimately on a loaded machine, which would make the request fail for
//! a reason that is not a bug.
//!
//! Loopback only, no root needed; 32 cases, each bounded by timeouts.

use std::{
    collections::{BTreeSet, HashMap},
    convert::Infallible,
    net::SocketAddr,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lb::{config, l7::L7};
use proptest::{
    prelude::*,
    strategy::Union,
    test_runner::{Config as RunnerConfig, TestRunner},
};

/// What the backend answers.
const BODY: &[u8] = b"from the backend";
/// The longest any step of a case may take.
const STEP: Duration = Duration::from_secs(10);
/// The longest duration `parse_duration` reads: 365 days.
const YEAR_MS: u64 = 365 * 24 * 3_600_000;

/// Where a key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Node,
    Tenant,
    Limits,
    Outlier,
    Site,
    Timeouts,
}

/// A key, with values inside its bound (`good`) and outside it (`bad`),
/// each as TOML text.
struct Key {
    name: &'static str,
    place: Place,
    good: BoxedStrategy<String>,
    bad: BoxedStrategy<String>,
}

/// Milliseconds written as the config would be: in the largest exact unit,
/// or plainly in `ms`.
fn duration_text(ms: u64, plain: bool) -> String {
    if plain {
        format!("\"{ms}ms\"")
    } else {
        format!("\"{}\"", config::format_duration(Duration::from_millis(ms)))
    }
}

/// A duration key bounded by `lo..=hi` (milliseconds); good values start at
/// `floor`.
fn duration(name: &'static str, place: Place, (lo, hi): (u64, u64), floor: u64) -> Key {
    let floor = floor.max(lo);
    let good = prop_oneof![
        Just(duration_text(hi, false)),
        (floor..=hi, any::<bool>()).prop_map(|(ms, plain)| duration_text(ms, plain)),
    ]
    .boxed();
    let mut bad: Vec<BoxedStrategy<String>> = vec![
        Just(duration_text(hi + 1, true)).boxed(),
        (hi + 1..=YEAR_MS, any::<bool>())
            .prop_map(|(ms, plain)| duration_text(ms, plain))
            .boxed(),
        // Beyond what parse_duration reads, or what u64 holds.
        Just("\"18446744073709551615s\"".to_owned()).boxed(),
        Just("\"18446744073709551615h\"".to_owned()).boxed(),
        Just("\"99999999999999999999999ms\"".to_owned()).boxed(),
        (YEAR_MS / 3_600_000 + 1..=u64::MAX / 3600)
            .prop_map(|h| format!("\"{h}h\""))
            .boxed(),
    ];
    if lo > 0 {
        bad.push(Just("\"0s\"".to_owned()).boxed());
        bad.push((0..lo).prop_map(|ms| duration_text(ms, true)).boxed());
    }
    Key {
        name,
        place,
        good,
        bad: Union::new(bad).boxed(),
    }
}

/// A count or size key bounded by `lo..=hi`.
fn count(name: &'static str, place: Place, lo: u64, hi: u64) -> Key {
    let good = prop_oneof![Just(lo), Just(hi), lo..=hi]
        .prop_map(|n| n.to_string())
        .boxed();
    let top = u64::try_from(i64::MAX).unwrap_or(u64::MAX);
    let mut bad: Vec<BoxedStrategy<String>> = vec![
        Just((hi + 1).to_string()).boxed(),
        (hi + 1..=top).prop_map(|n| n.to_string()).boxed(),
        // Not an integer TOML can hold, and not a count at all.
        Just("18446744073709551615".to_owned()).boxed(),
        Just("-1".to_owned()).boxed(),
    ];
    if lo > 0 {
        bad.push(Just("0".to_owned()).boxed());
        bad.push((0..lo).prop_map(|n| n.to_string()).boxed());
    }
    Key {
        name,
        place,
        good,
        bad: Union::new(bad).boxed(),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).expect("a bound in milliseconds")
}

fn range_ms(r: &std::ops::RangeInclusive<Duration>) -> (u64, u64) {
    (ms(*r.start()), ms(*r.end()))
}

fn size(n: usize) -> u64 {
    u64::try_from(n).expect("a size")
}

/// Every key the property varies, with its bound from `lb::config`.
fn keys() -> Vec<Key> {
    let mut keys = site_keys();
    keys.extend(tenant_keys());
    keys.extend(node_keys());
    keys
}

/// The site's and its pool's keys.
fn site_keys() -> Vec<Key> {
    let timeouts = range_ms(&config::L7_TIMEOUT_RANGE);
    let header = &config::MAX_HEADER_BYTES_RANGE;
    let body = &config::MAX_BODY_BYTES_RANGE;
    let failures = &config::OUTLIER_FAILURES_RANGE;
    vec![
        // [[tenant.l7]]
        duration("connect", Place::Timeouts, timeouts, 1000),
        duration("header", Place::Timeouts, timeouts, 1000),
        duration("idle", Place::Timeouts, timeouts, 1000),
        duration("request", Place::Timeouts, timeouts, 1000),
        count(
            "max_header_bytes",
            Place::Site,
            size(*header.start()),
            size(*header.end()),
        ),
        count("max_body_bytes", Place::Site, *body.start(), *body.end()),
        count("retries", Place::Site, 0, u64::from(config::MAX_RETRIES)),
        // The pool's outlier detection.
        count(
            "consecutive_failures",
            Place::Outlier,
            u64::from(*failures.start()),
            u64::from(*failures.end()),
        ),
        duration(
            "ejection",
            Place::Outlier,
            range_ms(&config::OUTLIER_EJECTION_RANGE),
            1,
        ),
    ]
}

/// `tier` and `[tenant.limits]`.
fn tenant_keys() -> Vec<Key> {
    vec![
        count(
            "requests_per_second",
            Place::Limits,
            1,
            config::MAX_REQUEST_RATE,
        ),
        count("requests_burst", Place::Limits, 1, config::MAX_REQUEST_RATE),
        count(
            "requests_per_second_per_client_ip",
            Place::Limits,
            1,
            config::MAX_KEYED_RATE,
        ),
        count(
            "requests_per_second_per_api_key",
            Place::Limits,
            1,
            config::MAX_KEYED_RATE,
        ),
        count("max_connections", Place::Limits, 1, config::MAX_CONNECTIONS),
        count(
            "max_inflight_requests",
            Place::Limits,
            1,
            config::MAX_INFLIGHT_REQUESTS,
        ),
        count(
            "packets_per_second",
            Place::Limits,
            1,
            config::MAX_PACKET_RATE,
        ),
        count("bytes_per_second", Place::Limits, 1, config::MAX_BYTE_RATE),
        count(
            "new_flows_per_second",
            Place::Limits,
            1,
            config::MAX_FLOW_RATE,
        ),
        Key {
            name: "tier",
            place: Place::Tenant,
            good: prop_oneof![
                Just("\"premium\"".to_owned()),
                Just("\"standard\"".to_owned()),
                Just("\"free\"".to_owned()),
            ]
            .boxed(),
            bad: Just("\"gold\"".to_owned()).boxed(),
        },
    ]
}

/// `[node]`.
fn node_keys() -> Vec<Key> {
    vec![
        duration(
            "drain_timeout",
            Place::Node,
            range_ms(&config::DRAIN_TIMEOUT_RANGE),
            0,
        ),
        duration(
            "flow_idle_timeout",
            Place::Node,
            (
                ms(config::MIN_FLOW_IDLE_TIMEOUT),
                ms(config::MAX_FLOW_IDLE_TIMEOUT),
            ),
            0,
        ),
        count(
            "max_inflight_requests",
            Place::Node,
            1,
            config::MAX_INFLIGHT_REQUESTS,
        ),
    ]
}

/// One case: a value (or none: the default) for every key, and at most one
/// key given a value outside its bound.
#[derive(Debug, Clone)]
struct Case {
    values: Vec<Option<String>>,
    bad: Option<(usize, String)>,
}

fn cases(keys: &[Key]) -> impl Strategy<Value = Case> + use<> {
    let values: Vec<_> = keys
        .iter()
        .map(|k| proptest::option::weighted(0.6, k.good.clone()))
        .collect();
    let bads: Vec<BoxedStrategy<(usize, String)>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| k.bad.clone().prop_map(move |v| (i, v)).boxed())
        .collect();
    (values, proptest::option::of(Union::new(bads))).prop_map(|(values, bad)| Case { values, bad })
}

/// The configuration of `case`, and the line of each key written.
fn render(
    keys: &[Key],
    case: &Case,
    listen: SocketAddr,
    backend: SocketAddr,
) -> (String, Vec<usize>) {
    let mut values = case.values.clone();
    let name = |i: usize| keys[i].name;
    let index = |n: &str, p: Place| {
        keys.iter()
            .position(|k| k.name == n && k.place == p)
            .expect("key")
    };
    // A burst needs a rate: without one, only a deliberately bad case may
    // have it (and is refused for that).
    let (rate, burst) = (
        index("requests_per_second", Place::Limits),
        index("requests_burst", Place::Limits),
    );
    if values[rate].is_none() && case.bad.as_ref().is_none_or(|(i, _)| *i != rate) {
        values[burst] = None;
    }
    if let Some((i, v)) = &case.bad {
        values[*i] = Some(v.clone());
    }
    let mut text = String::new();
    let mut lines = vec![0; keys.len()];
    let mut section = |text: &mut String, header: Option<&str>, place: Place| {
        let mine: Vec<usize> = (0..keys.len())
            .filter(|&i| keys[i].place == place && values[i].is_some())
            .collect();
        if mine.is_empty() {
            return;
        }
        if let Some(h) = header {
            write(text, h);
        }
        for i in mine {
            lines[i] = text.matches('\n').count() + 1;
            let v = values[i].as_deref().unwrap_or_default();
            write(text, &format!("{} = {v}", name(i)));
        }
    };
    write(
        &mut text,
        "[node]\ninterface = \"lo\"\naccess_log = \"off\"",
    );
    section(&mut text, None, Place::Node);
    write(&mut text, "[[tenant]]\nname = \"acme\"");
    section(&mut text, None, Place::Tenant);
    section(&mut text, Some("[tenant.limits]"), Place::Limits);
    write(
        &mut text,
        &format!(
            "[[tenant.pool]]\nname = \"web\"\nbackends = [ {{ address = \"{}\", port = {} }} ]",
            backend.ip(),
            backend.port()
        ),
    );
    section(&mut text, Some("[tenant.pool.outlier]"), Place::Outlier);
    write(
        &mut text,
        &format!(
            "[[tenant.l7]]\nlisten = \"{listen}\"\nhosts = [\"acme.example\"]\nroutes = [ {{ pool = \"web\" }} ]"
        ),
    );
    section(&mut text, None, Place::Site);
    section(&mut text, Some("[tenant.l7.timeouts]"), Place::Timeouts);
    (text, lines)
}

fn write(text: &mut String, line: &str) {
    text.push_str(line);
    text.push('\n');
}

/// A loopback port nobody listens on now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A hyper backend on loopback answering every request with [`BODY`].
async fn backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the backend");
    let addr = listener.local_addr().expect("backend address");
    let task = tokio::spawn(async move {
        // Runs until the test aborts it.
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// One GET through the proxy: its status and body.
async fn get(listen: SocketAddr) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(listen)
        .await
        .map_err(|e| format!("connect to {listen}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = Request::get("/")
        .header("host", "acme.example")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    drop(sender);
    conn.abort();
    Ok((status, body))
}

/// Starts the L7 tier of `config`, proxies one request, drains.
async fn serve_one(config: &config::Config, listen: SocketAddr) -> Result<(), String> {
    let mut l7 = L7::start(config, &BTreeSet::new(), HashMap::new(), false)
        .map_err(|e| format!("L7::start: {e:#}"))?;
    let result = tokio::time::timeout(STEP, get(listen))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {STEP:?}")));
    // The configured drain timeout (up to a day): with the client gone it
    // ends as soon as the connection closes.
    let _ = tokio::time::timeout(STEP, l7.drain(config.node.drain_timeout)).await;
    drop(l7);
    let (status, body) = result?;
    if status != StatusCode::OK || body != BODY {
        return Err(format!(
            "expected 200 {:?} from the backend, got {status} {:?}",
            String::from_utf8_lossy(BODY),
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}

#[test]
fn configs_within_bounds_serve_and_others_are_refused_at_their_key() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (backend_addr, backend_task) = rt.block_on(backend());
    let keys = keys();
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 32,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let served = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&cases(&keys), |case| {
        let listen = free_port();
        let (text, lines) = render(&keys, &case, listen, backend_addr);
        let parsed = config::parse(&text, "lb.toml");
        match (&case.bad, parsed) {
            (Some((i, value)), Ok(_)) => {
                return Err(TestCaseError::fail(format!(
                    "{} = {value} is outside its bound but was accepted:\n{text}",
                    keys[*i].name
                )));
            }
            (None, Err(e)) => {
                return Err(TestCaseError::fail(format!(
                    "every value is within its bound but the config was refused: {e}\n{text}"
                )));
            }
            (Some((i, value)), Err(e)) => {
                let shown = e.to_string();
                prop_assert_eq!(
                    e.line(),
                    Some(lines[*i]),
                    "{} = {}: wrong line in {}\n{}",
                    keys[*i].name,
                    value,
                    shown,
                    text
                );
                prop_assert!(
                    shown.starts_with(&format!("lb.toml:{}:", lines[*i])),
                    "{}",
                    shown
                );
                // A number TOML cannot hold is a syntax error, which has a
                // position but no field.
                if !e.message().starts_with("syntax error") {
                    let field = e.field().unwrap_or_default();
                    prop_assert!(
                        field.ends_with(keys[*i].name),
                        "{} = {}: wrong field in {}",
                        keys[*i].name,
                        value,
                        shown
                    );
                }
            }
            (None, Ok(config)) => {
                rt.block_on(serve_one(&config, listen))
                    .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    });
    backend_task.abort();
    if let Err(e) = result {
        panic!("{e}");
    }
    let served = served.into_inner();
    eprintln!("{served} of 32 configurations were within bounds and served a request");
    assert!(
        served >= 4,
        "only {served} of 32 cases were within bounds: the generator should make about half"
    );
}
