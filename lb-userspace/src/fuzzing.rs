//! The fuzz targets' entry points (`fuzz/`, cargo-fuzz; see the README's
//! "Robustness"). Each function takes the fuzzer's bytes, runs one parser
//! of outside input the way `lbd` runs it, and panics when an invariant
//! breaks; a panic is what libFuzzer reports as a crash. They live here,
//! not in `fuzz/`, so that the committed corpora and reproducers run
//! through the very same code in `cargo test` on stable (`mod tests`).
//!
//! Not an API: hidden from the docs and free to change with the targets.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::LazyLock,
};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

use crate::{
    admin, config,
    l7::{
        admission::auth::Credentials,
        passthrough::{self, HelloError, MAX_PROXY_V2_HEADER, ProxyHeader, ProxyHeaderError},
        path, proxy,
        routing::{RequestFacts, Routing},
    },
};

/// A fuzz target's name and function.
pub type Target = (&'static str, fn(&[u8]));

/// The fuzz targets, by name: `fuzz/fuzz_targets/NAME.rs` calls `run`.
/// `config_structured` generates `lb.toml` text in `fuzz/` and ends in
/// [`config`].
pub const TARGETS: [Target; 5] = [
    ("client_hello", client_hello),
    ("proxy_v2", proxy_v2),
    ("config", config_bytes),
    ("admin_request", admin_request),
    ("request_head", request_head),
];

/// Every strict prefix of `data[..len]` must be `incomplete`: a reader
/// that gets the bytes in pieces never refuses what a valid message
/// starts with. Checked at up to 64 cut points so that long inputs stay
/// fast.
fn prefixes_incomplete<T: std::fmt::Debug, E: PartialEq + std::fmt::Debug>(
    data: &[u8],
    len: usize,
    parse: impl Fn(&[u8]) -> Result<T, E>,
    incomplete: &E,
) {
    let step = (len / 64).max(1);
    for cut in (0..len).step_by(step) {
        let got = parse(&data[..cut]);
        assert!(
            got.as_ref().err() == Some(incomplete),
            "the first {cut} of {len} accepted bytes gave {got:?}, not {incomplete:?}"
        );
    }
}

/// The passthrough listener's `ClientHello` reader: never panics, a
/// strict prefix of an accepted hello is only incomplete, and the SNI it
/// returns is a normalised DNS name (what the SNI map and the routing
/// compare).
pub fn client_hello(data: &[u8]) {
    let Ok(hello) = passthrough::parse_client_hello(data) else {
        return;
    };
    // The shortest prefix that parses: the whole hello, without what
    // follows. Found by bisection, which is right when prefixes parse
    // monotonically; `prefixes_incomplete` then checks that they do.
    let (mut lo, mut hi) = (0, data.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if passthrough::parse_client_hello(&data[..mid]).is_ok() {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let len = hi;
    prefixes_incomplete(
        data,
        len,
        passthrough::parse_client_hello,
        &HelloError::Incomplete,
    );
    assert_eq!(
        passthrough::parse_client_hello(&data[..len]),
        Ok(hello.clone()),
        "the hello read from its own bytes differs"
    );
    if let Some(sni) = &hello.sni {
        assert!(
            !sni.is_empty() && sni.len() <= 253 && !sni.ends_with('.'),
            "SNI {sni:?} is not a normalised host name"
        );
        assert!(
            sni.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'-' | b'_' | b'.')),
            "SNI {sni:?} has a byte the normalisation should have refused or lowered"
        );
        assert_eq!(config::normalise_host(sni), *sni, "SNI not normalised");
    }
    assert!(
        hello.alpn.iter().all(|p| !p.is_empty()),
        "empty ALPN name accepted"
    );
}

/// A socket address from up to 19 bytes of `data` (a family byte, the
/// address, the port); `None` when `data` runs out.
fn socket_addr(data: &mut &[u8]) -> Option<SocketAddr> {
    let (&family, rest) = data.split_first()?;
    let ip = if family & 1 == 0 {
        let (octets, rest) = rest.split_first_chunk::<4>()?;
        *data = rest;
        IpAddr::V4(Ipv4Addr::from(*octets))
    } else {
        let (octets, rest) = rest.split_first_chunk::<16>()?;
        *data = rest;
        // Half the IPv6 addresses IPv4-mapped: the writer folds those.
        let v6 = Ipv6Addr::from(*octets);
        if family & 2 == 0 {
            IpAddr::V6(v6)
        } else {
            let [.., a, b, c, d] = *octets;
            IpAddr::V6(Ipv4Addr::new(a, b, c, d).to_ipv6_mapped())
        }
    };
    let (port, rest) = data.split_first_chunk::<2>()?;
    *data = rest;
    Some(SocketAddr::new(ip, u16::from_be_bytes(*port)))
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The PROXY protocol v2 reader on any bytes, and the round trip: what
/// [`passthrough::proxy_v2_header`] writes, [`passthrough::parse_proxy_v2`]
/// reads back as the same addresses, stopping at the header's last byte.
pub fn proxy_v2(data: &[u8]) {
    // 1. The reader on the raw bytes.
    match passthrough::parse_proxy_v2(data) {
        Ok((header, len)) => {
            assert!(
                len <= data.len() && len <= MAX_PROXY_V2_HEADER,
                "header length {len} beyond the input ({}) or the limit",
                data.len()
            );
            prefixes_incomplete(
                data,
                len,
                passthrough::parse_proxy_v2,
                &ProxyHeaderError::Incomplete,
            );
            // What it read, written again, reads back the same (up to the
            // IPv4-mapped form, which the writer sends as IPv4).
            if let ProxyHeader::Proxy {
                source,
                destination,
            } = header
            {
                let again = passthrough::proxy_v2_header(source, destination);
                match passthrough::parse_proxy_v2(&again) {
                    Ok((
                        ProxyHeader::Proxy {
                            source: s,
                            destination: d,
                        },
                        n,
                    )) => {
                        assert_eq!(n, again.len(), "rewritten header's length");
                        assert_eq!(
                            (canonical(s), canonical(d)),
                            (canonical(source), canonical(destination)),
                            "rewritten header's addresses"
                        );
                    }
                    other => panic!("{source} -> {destination} rewritten reads as {other:?}"),
                }
            }
        }
        Err(
            e @ (ProxyHeaderError::Timeout | ProxyHeaderError::Closed | ProxyHeaderError::Io(_)),
        ) => panic!("the parser returned an I/O error: {e:?}"),
        Err(_) => {}
    }

    // 2. Writer, then reader, for addresses from the input, followed by the
    //    input's other bytes (the start of the client's own stream).
    let mut rest = data;
    let (Some(client), Some(local)) = (socket_addr(&mut rest), socket_addr(&mut rest)) else {
        return;
    };
    let mut wire = passthrough::proxy_v2_header(client, local);
    let header_len = wire.len();
    wire.extend_from_slice(rest);
    let expected = match (client.ip().to_canonical(), local.ip().to_canonical()) {
        (c @ IpAddr::V4(_), l @ IpAddr::V4(_)) => (
            SocketAddr::new(c, client.port()),
            SocketAddr::new(l, local.port()),
        ),
        (c, l) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                v6 @ IpAddr::V6(_) => v6,
            };
            (
                SocketAddr::new(v6(c), client.port()),
                SocketAddr::new(v6(l), local.port()),
            )
        }
    };
    match passthrough::parse_proxy_v2(&wire) {
        Ok((
            ProxyHeader::Proxy {
                source,
                destination,
            },
            len,
        )) => {
            assert_eq!(len, header_len, "the reader must stop at the header's end");
            assert_eq!((source, destination), expected, "addresses read back");
        }
        other => panic!("the header for {client} -> {local} reads back as {other:?}"),
    }
}

/// An empty directory for the files `lb.toml` names (certificates, token
/// and key files): the check must refuse missing files, not panic.
static CONFIG_DIR: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("lb-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the fuzz config directory");
    dir
});

fn config_bytes(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        config(text);
    }
}

/// `lbd --check` on `text`: parse and validate, then the key, token and
/// certificate files. An error names a position inside the text; a valid
/// configuration builds the L7 routing snapshot without a panic.
pub fn config(text: &str) {
    let parsed = config::parse_in(text, "lb.toml", &CONFIG_DIR);
    let config = match parsed {
        Ok(c) => c,
        Err(e) => {
            if let Some(line) = e.line() {
                let lines = text.lines().count().max(1);
                assert!(
                    (1..=lines + 1).contains(&line),
                    "error line {line} outside the text's {lines} lines: {e}"
                );
            }
            assert!(e.column().is_none_or(|c| c >= 1), "error column 0: {e}");
            assert!(!e.message().is_empty(), "an error without a message");
            return;
        }
    };
    // As lbd --check: both checks run on a configuration that parsed. Not
    // on text naming device or kernel files: reading /dev/zero as a key
    // file never ends, which is the operator's to avoid, not a parser bug.
    if !["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        let _ = crate::l7::check_key_files(&config);
        let _ = admin::check_files(&config.node);
    }
    // What lbd builds from it next for the L7 tier.
    let _routing = Routing::build(&config, &BTreeSet::new(), None, 0);
}

/// The admin API on a request: the first line is `METHOD TARGET`, the rest
/// the body. Whatever it is, the answer is a daemon request or an error
/// with a client error status, and a daemon request survives the JSON
/// trip to the daemon.
pub fn admin_request(data: &[u8]) {
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return;
    };
    let (Ok(method), Ok(uri)) = (
        Method::from_bytes(&line[..space]),
        Uri::try_from(&line[space + 1..]),
    ) else {
        // hyper answers 400 before the admin API sees it.
        return;
    };
    match admin::parse_request(&method, uri.path(), uri.query(), body) {
        Ok(None) => {}
        Ok(Some(request)) => {
            let json = serde_json::to_string(&request).expect("a request serialises");
            let back: crate::api::Request =
                serde_json::from_str(&json).expect("a request deserialises");
            assert_eq!(back, request, "the request changed on its way to JSON");
        }
        Err(e) => assert!(
            matches!(e.status, 400 | 404 | 405 | 409 | 413),
            "status {} for a bad request: {}",
            e.status,
            e.message
        ),
    }
}

/// Two tenants sharing one TLS listener, identified by SNI, Host, path
/// prefix and `X-Tenant-ID`.
const ROUTING_TOML: &str = r#"[node]
interface = "eth0"

[[tenant]]
name = "acme"
[[tenant.pool]]
name = "web"
backends = [ { address = "10.0.1.11", port = 8080 } ]
[[tenant.l7]]
listen = "203.0.113.20:443"
hosts = ["acme.example", "*.acme.example"]
tls = { cert = "a.pem", key = "a.key" }
path_prefix = "/acme"
strip_path_prefix = true
routes = [
  { host = "api.acme.example", pool = "web" },
  { header = { name = "X-Canary", value = "1" }, pool = "web" },
  { path_prefix = "/v2", pool = "web", strip_prefix = true },
]

[[tenant]]
name = "globex"
auth.api_keys = [ { name = "ci", sha256 = "0f40e5bd8b1bd29d8a4bc8cc1b1b4cbd0cfa69d0b0be5c6bb2ec4e9e24b4ac8d" } ]
[[tenant.pool]]
name = "app"
backends = [ { address = "10.0.2.11", port = 8080 } ]
[[tenant.l7]]
listen = "203.0.113.20:443"
hosts = ["globex.example"]
tls = { cert = "g.pem", key = "g.key" }
routes = [ { path_prefix = "/", pool = "app" } ]

[[listener]]
address = "203.0.113.20:443"
identify = ["sni", "host", "path", "header"]
"#;

static ROUTING: LazyLock<Routing> = LazyLock::new(|| {
    let config = config::parse(ROUTING_TOML, "lb.toml").expect("the fuzz routing is valid");
    Routing::build(&config, &BTreeSet::new(), None, 0)
});

/// The SNI of the request's TLS session, chosen by the input's first byte.
const SNIS: [Option<&str>; 4] = [
    None,
    Some("acme.example"),
    Some("www.acme.example"),
    Some("globex.example"),
];

/// The L7 identification of a request head: the first byte picks the
/// session's SNI and whether it is HTTPS, the rest is an HTTP/1.1 request
/// head, parsed as hyper parses it. Its target (one host, a normalised
/// path) and credentials are read as the proxy reads them, then the
/// tenant is identified. Invariants: the path the routes and the backend
/// see is normalised (normalising it again changes nothing, no dot
/// segment is left), and a request is never given to a tenant other than
/// the one its TLS session's SNI names.
pub fn request_head(data: &[u8]) {
    let Some((&flags, head)) = data.split_first() else {
        return;
    };
    let sni = SNIS[usize::from(flags & 3)];
    let https = flags & 4 == 0;
    let Some(req) = http1_request(head) else {
        return;
    };
    let Ok((host, path_and_query)) = proxy::checked_target(&req, https) else {
        return;
    };
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query.as_str(), |(p, _)| p);
    assert_eq!(
        path::normalise(path).ok().as_deref(),
        Some(path),
        "the normalised path {path:?} normalises to something else"
    );
    assert!(
        path == "*" || !path.split('/').any(|s| s == "." || s == ".."),
        "dot segment left in {path:?}"
    );
    if let Some(h) = &host {
        assert_eq!(config::normalise_host(h), *h, "host {h:?} not normalised");
    }
    let credentials = Credentials::of(req.headers());
    let facts = RequestFacts {
        sni,
        host: host.as_deref(),
        path,
        method: req.method(),
        headers: req.headers(),
        jwt: credentials.jwt.as_ref(),
    };
    let listener = ROUTING
        .listeners
        .values()
        .next()
        .expect("the fuzz routing has a listener");
    if let Ok(identified) = listener.identify(&facts) {
        let tenant = &listener.sites[identified.site].tenant;
        if let Some(sni_site) = sni.and_then(|s| listener.site_for_host(s)) {
            assert_eq!(
                &listener.sites[sni_site].tenant, tenant,
                "a session of one tenant served another"
            );
        }
        let _ = listener.route(identified.site, &facts);
    }
}

/// An HTTP/1.1 request head as hyper's server turns it into a request:
/// `httparse`, then the URI and every header checked by `http`.
fn http1_request(head: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = parsed.parse(head).ok()? else {
        return None;
    };
    let mut map = HeaderMap::new();
    for h in parsed.headers.iter() {
        map.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    let mut req = Request::builder()
        .method(Method::from_bytes(parsed.method?.as_bytes()).ok()?)
        .uri(Uri::try_from(parsed.path?).ok()?)
        .body(())
        .ok()?;
    *req.headers_mut() = map;
    Some(req)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::TARGETS;

    /// `fuzz/` beside this crate.
    fn fuzz_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// Every file of `fuzz/corpus/NAME/` (the seeds) and
    /// `fuzz/regressions/NAME/` (the reproducers of fixed crashes), fed to
    /// the target's function.
    fn run_committed(name: &str, run: fn(&[u8])) -> usize {
        let mut count = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("reading a fuzz directory").path();
                let data = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{name}: {} fails", path.display());
                count += 1;
            }
        }
        count
    }

    #[test]
    fn committed_corpora_and_reproducers_pass() {
        for (name, run) in TARGETS {
            let n = run_committed(name, run);
            assert!(n > 0, "no seed corpus for the fuzz target {name}");
        }
    }
}
