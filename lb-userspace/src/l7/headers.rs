//! The headers the proxy owns: what it removes from requests and responses
//! and what it sets on the way to the backend.
//!
//! Clients cannot be trusted with `X-Forwarded-For`, `X-Forwarded-Proto`,
//! `X-Tenant-ID` or `Forwarded`: a backend that reads them would believe a
//! forged client address or tenant. The proxy removes every client-sent copy
//! and writes its own. `X-Forwarded-Host`, `X-Forwarded-Port`,
//! `X-Forwarded-Prefix` and `X-Real-IP` are removed and not written: the
//! backend has the true host in `Host` and the client in
//! `X-Forwarded-For`. Only a connection from one of the listener's
//! `trusted_proxies` has its `X-Forwarded-For` extended rather than
//! replaced: the proxy in front of `lbd` already wrote its own client
//! there. `X-Request-ID` is kept when it looks like an id (so a caller can
//! trace its own ids through), and generated otherwise.
//! `traceparent`/`tracestate` pass through untouched.

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{CONNECTION, STRICT_TRANSPORT_SECURITY, TE, TRAILER, TRANSFER_ENCODING, UPGRADE},
};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// The h2c upgrade's settings (RFC 7540 section 3.2), hop-by-hop.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Longest `X-Request-ID` kept from a client.
const MAX_REQUEST_ID: usize = 128;

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1), including those the
/// `Connection` header names. An upgrade keeps `Connection: upgrade` and
/// `Upgrade`, which the next hop needs to upgrade too.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names first: most messages carry none of these,
    // and a `remove` hashes its name whether it is there or not.
    let hop = [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        HTTP2_SETTINGS,
    ];
    let any = headers
        .keys()
        .any(|n| n == CONNECTION || n == UPGRADE || hop.contains(n));
    if !any && !keep_upgrade {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in hop {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
}

/// Puts a site's `hsts` on a response as `Strict-Transport-Security`,
/// replacing a backend's own: the site's setting is the operator's word.
/// Without one the response is left as it is.
pub(crate) fn set_hsts(headers: &mut HeaderMap, hsts: Option<HeaderValue>) {
    if let Some(v) = hsts {
        headers.insert(STRICT_TRANSPORT_SECURITY, v);
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket).
#[must_use]
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The first protocol of the request's `Upgrade` that `allowed` names
/// (lower-case tokens, a version after `/` ignored), when the request asks
/// for an upgrade at all. Any other upgrade, `h2c` above all, is not
/// proxied: its tunnel would carry a protocol the proxy cannot see into.
#[must_use]
pub(crate) fn allowed_upgrade(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    if !is_upgrade(headers) {
        return None;
    }
    headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|offered| {
            let name = offered.split_once('/').map_or(*offered, |(n, _)| n);
            allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
        .and_then(|t| HeaderValue::from_str(t).ok())
}

/// The client's `X-Request-ID` when it is 1 to 128 characters of
/// `[A-Za-z0-9._:-]`, else a new UUID.
#[must_use]
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// What the proxy tells the backend about the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding<'a> {
    /// The client's address as `X-Forwarded-For` carries it
    /// ([`forwarded_for`]: made once per connection, not per request).
    pub forwarded_for: &'a HeaderValue,
    /// The connection comes from one of the listener's `trusted_proxies`:
    /// the `X-Forwarded-For` it sent is kept and `forwarded_for` appended
    /// (see [`forwarded_chain`]).
    pub extend_forwarded_for: bool,
    pub https: bool,
    pub request_id: &'a str,
    pub tenant: &'a str,
}

/// The `X-Forwarded-For` value of a client address.
#[must_use]
pub(crate) fn forwarded_for(client_ip: std::net::IpAddr) -> HeaderValue {
    // An address prints as digits, dots, colons and hex letters only.
    HeaderValue::try_from(client_ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// A trusted proxy's `X-Forwarded-For` with `own` (the address `lbd` saw)
/// appended: every copy in order, each list's entries trimmed and joined
/// with `", "`, empty entries dropped, as nginx and Envoy do. The entries
/// are kept as sent; which of them to believe is the backend's choice.
#[must_use]
pub(crate) fn forwarded_chain(headers: &HeaderMap, own: &HeaderValue) -> HeaderValue {
    let mut chain = Vec::new();
    let entries = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty());
    for entry in entries {
        chain.extend_from_slice(entry);
        chain.extend_from_slice(b", ");
    }
    if chain.is_empty() {
        return own.clone();
    }
    chain.extend_from_slice(own.as_bytes());
    // Parts of header values joined by ", " are a header value; should that
    // ever fail, the proxy's own address is the one it can vouch for.
    HeaderValue::from_bytes(&chain).unwrap_or_else(|_| own.clone())
}

/// Replaces the client's copies of the headers the proxy owns with its own
/// (`X-Forwarded-For` from a trusted proxy is extended instead).
pub(crate) fn set_forwarding(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    let forged = [
        FORWARDED,
        X_FORWARDED_HOST,
        X_FORWARDED_PORT,
        X_FORWARDED_PREFIX,
        X_REAL_IP,
    ];
    // Removed only when present: one pass over the names is cheaper than
    // five lookups that almost always miss.
    if headers.keys().any(|n| forged.contains(n)) {
        for name in forged {
            headers.remove(name);
        }
    }
    // `insert` drops every copy the client sent; a value that cannot be a
    // header leaves none.
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        } else {
            headers.remove(name);
        }
    };
    let forwarded_for = if f.extend_forwarded_for {
        forwarded_chain(headers, f.forwarded_for)
    } else {
        f.forwarded_for.clone()
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if f.https { "https" } else { "http" }),
    );
    set(headers, X_REQUEST_ID, f.request_id);
    set(headers, X_TENANT_ID, f.tenant);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_replace_client_copies() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, "6.6.6.6".parse().expect("v"));
        h.append(X_FORWARDED_FOR, "7.7.7.7".parse().expect("v"));
        h.insert(X_TENANT_ID, "other".parse().expect("v"));
        h.insert("forwarded", "for=6.6.6.6".parse().expect("v"));
        h.insert("x-forwarded-host", "evil.example".parse().expect("v"));
        h.insert("x-forwarded-port", "8443".parse().expect("v"));
        h.insert("x-forwarded-prefix", "/admin".parse().expect("v"));
        h.insert("x-real-ip", "6.6.6.6".parse().expect("v"));
        h.insert("traceparent", "00-abc-def-01".parse().expect("v"));
        set_forwarding(
            &mut h,
            &Forwarding {
                forwarded_for: &forwarded_for("192.0.2.7".parse().expect("ip")),
                extend_forwarded_for: false,
                https: true,
                request_id: "req-1",
                tenant: "acme",
            },
        );
        let all = |n| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().expect("ascii"))
                .collect::<Vec<_>>()
        };
        assert_eq!(all(X_FORWARDED_FOR), ["192.0.2.7"]);
        assert_eq!(all(X_TENANT_ID), ["acme"]);
        assert_eq!(all(X_FORWARDED_PROTO), ["https"]);
        assert_eq!(all(X_REQUEST_ID), ["req-1"]);
        assert!(!h.contains_key("forwarded"));
        for forged in [
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-real-ip",
        ] {
            assert!(!h.contains_key(forged), "{forged} kept");
        }
        assert_eq!(
            all(HeaderName::from_static("traceparent")),
            ["00-abc-def-01"]
        );
    }

    #[test]
    fn a_trusted_proxy_s_forwarded_for_is_extended() {
        let own = forwarded_for("10.0.0.5".parse().expect("ip"));
        let chain = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(X_FORWARDED_FOR, v.parse().expect("v"));
            }
            h.insert("x-real-ip", "6.6.6.6".parse().expect("v"));
            set_forwarding(
                &mut h,
                &Forwarding {
                    forwarded_for: &own,
                    extend_forwarded_for: true,
                    https: false,
                    request_id: "r",
                    tenant: "acme",
                },
            );
            assert!(!h.contains_key("x-real-ip"), "still removed");
            let all: Vec<_> = h
                .get_all(X_FORWARDED_FOR)
                .iter()
                .map(|v| v.to_str().expect("ascii").to_owned())
                .collect();
            all
        };
        assert_eq!(chain(&[]), ["10.0.0.5"]);
        assert_eq!(chain(&["203.0.113.9"]), ["203.0.113.9, 10.0.0.5"]);
        assert_eq!(
            chain(&["203.0.113.9, 198.51.100.1", "2001:db8::1"]),
            ["203.0.113.9, 198.51.100.1, 2001:db8::1, 10.0.0.5"],
            "every copy, in order, as one header"
        );
        assert_eq!(
            chain(&[" 203.0.113.9 ,, ", ""]),
            ["203.0.113.9, 10.0.0.5"],
            "empty entries dropped"
        );
        // Kept as sent: deciding which entries to believe is the backend's.
        assert_eq!(chain(&["unknown"]), ["unknown, 10.0.0.5"]);
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "abc-123_x.y".parse().expect("v"));
        assert_eq!(request_id(&h), "abc-123_x.y");
        h.insert(X_REQUEST_ID, "bad id with spaces".parse().expect("v"));
        let generated = request_id(&h);
        assert_eq!(generated.len(), 36);
        h.insert(X_REQUEST_ID, "a".repeat(129).parse().expect("v"));
        assert_ne!(request_id(&h).len(), 129);
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, x-secret".parse().expect("v"));
        h.insert("x-secret", "1".parse().expect("v"));
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert("x-kept", "1".parse().expect("v"));
        remove_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret") && !h.contains_key(CONNECTION));
        assert!(!h.contains_key("keep-alive") && h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "Upgrade".parse().expect("v"));
        h.insert(UPGRADE, "websocket".parse().expect("v"));
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get(UPGRADE).map(HeaderValue::as_bytes),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get(CONNECTION).map(HeaderValue::as_bytes),
            Some(&b"upgrade"[..])
        );
    }

    #[test]
    fn only_allowed_upgrades_are_proxied() {
        let allowed = vec!["websocket".to_owned()];
        let ask = |upgrade: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, "Upgrade, HTTP2-Settings".parse().expect("v"));
            h.insert(UPGRADE, upgrade.parse().expect("v"));
            allowed_upgrade(&h, &allowed).map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(ask("WebSocket").as_deref(), Some("WebSocket"));
        assert_eq!(ask("h2c"), None);
        assert_eq!(ask("h2c, websocket").as_deref(), Some("websocket"));
        assert_eq!(ask("foo/2"), None);
        // No `Connection: upgrade`: no upgrade at all.
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, "websocket".parse().expect("v"));
        assert_eq!(allowed_upgrade(&h, &allowed), None);

        // An upgrade that is not proxied leaves nothing of itself.
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "Upgrade, HTTP2-Settings".parse().expect("v"));
        h.insert(UPGRADE, "h2c".parse().expect("v"));
        h.insert("http2-settings", "AAMAAABkAAQAAP__".parse().expect("v"));
        remove_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn hsts_replaces_the_backends_and_is_optional() {
        let mut h = HeaderMap::new();
        h.insert(STRICT_TRANSPORT_SECURITY, "max-age=1".parse().expect("v"));
        set_hsts(&mut h, None);
        assert_eq!(h.get_all(STRICT_TRANSPORT_SECURITY).iter().count(), 1);
        assert_eq!(h[STRICT_TRANSPORT_SECURITY], "max-age=1", "left alone");
        set_hsts(
            &mut h,
            Some(HeaderValue::from_static("max-age=600; preload")),
        );
        assert_eq!(h.get_all(STRICT_TRANSPORT_SECURITY).iter().count(), 1);
        assert_eq!(h[STRICT_TRANSPORT_SECURITY], "max-age=600; preload");
    }
}
