//! The L7 tier of `lbd`, end to end, in network namespaces: a client
//! namespace, the LB namespace where `lbd` terminates TLS on one address
//! shared by three tenants (alpha, beta, gamma, each with its own rcgen CA
//! and ECDSA P-256 certificate), and backend namespaces running real hyper
//! servers that echo what they received ([`World`] draws the layout).
//!
//! Covered:
//! * `each_sni_gets_its_tenants_certificate`: certificate per SNI,
//!   checked by verifying against each tenant's CA; a wildcard name; an
//!   unknown SNI, or none, fails the handshake with an alert.
//! * `routes_by_host_path_and_header_over_h1_h2_and_websocket`: routing
//!   by host, by path prefix (stripped), by header, round robin over a
//!   pool; HTTP/1.1 and h2 clients; a WebSocket echo through the proxy.
//! * `refuses_cross_tenant_requests_and_owns_forwarding_headers`: SNI of
//!   one tenant with the Host of another -> 421; `X-Tenant-ID` of another
//!   tenant -> 403; client copies of `X-Forwarded-For` (and the other
//!   headers the proxy sets) are replaced; `X-Request-ID` is kept or made;
//!   alpha's answers (its backends' and lbd's own, HTTP/1.1 and h2) carry
//!   its `hsts` as `Strict-Transport-Security`, beta's do not.
//! * `a_dead_backend_is_retried_around_and_a_dead_pool_answers_503`: GETs
//!   never fail while one backend is down (connect failure -> retry on
//!   another); all of a pool's backends down -> 503 with its JSON body.
//! * `certificate_rotation_keeps_open_connections`: rewritten
//!   certificate files are served to new handshakes while an open
//!   connection keeps working; a broken file keeps the current certificate.
//! * `passthrough_keeps_the_backends_tls_and_refuses_garbage_cleanly`:
//!   TLS passthrough to a backend with its own certificate, with and without
//!   PROXY protocol v2; garbage or a truncated `ClientHello` is closed
//!   cleanly (FIN, no answer), logged as `bad_client_hello` and counted.
//! * `passthrough_logs_the_clients_sni`: a wildcard passthrough name, and
//!   the access log's `sni` of a passthrough connection.
//! * `a_restart_under_h2_load_loses_no_request`,
//!   `a_restart_under_http1_keep_alive_load_loses_no_request` and
//!   `a_restart_under_new_connection_load_loses_no_request`: a second
//!   `lbd` takes over the listening socket while clients keep sending
//!   (pooled h2 or HTTP/1.1 connections, or a new TLS connection per
//!   request); the first drains and exits by itself; every request gets
//!   200.
//! * `a_draining_http1_connection_ends_after_a_response_that_says_so`: a
//!   keep-alive connection busy across a hand-over is ended by the old
//!   `lbd` with `Connection: close` on a response, never by a close
//!   between two requests.
//!
//! * `backend_tls_body_limit_and_https_redirect`: TLS to a backend
//!   verified against the backends' own CA (a relative `backend_tls.ca`),
//!   413 for a body over `max_body_bytes`, and a plain listener's 308 to
//!   HTTPS (without `Strict-Transport-Security`).
//! * `lbctl_lists_and_edits_the_sni_map`: `lbctl sni list` shows every
//!   host's FNV-1a hash and tenant in the map; `sni add` and `sni remove`
//!   change it; a name of another tenant is refused.
//!
//! Where `lbd` exports them, the per-tenant and per-listener `lb_l7_*`
//! metrics are checked along the way (requests by class, latency count,
//! handshake failures, bad `ClientHello`s).
//!
//! Needs root (namespaces, BPF). Each test builds its own world and tears
//! it down, also when it fails.

#[path = "common/l7/mod.rs"]
mod l7;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use l7::{
    client::{self, Conn, Http, tls_connect, tls_error},
    world::{ALPHA_HSTS, LISTEN, World, join},
};
use rustls::{AlertDescription, CertificateError, pki_types::CertificateDer};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const H1: &[&[u8]] = &[b"http/1.1"];
/// The header a site's `hsts` sets.
const HSTS: &str = "strict-transport-security";

/// Whether a handshake failed because the client did not trust the
/// server's certificate.
fn untrusted(e: &std::io::Error) -> bool {
    matches!(
        tls_error(e),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature
        ))
    )
}

/// Whether a handshake failed because the server refused the SNI.
fn refused_by_alert(e: &std::io::Error) -> bool {
    matches!(
        tls_error(e),
        Some(rustls::Error::AlertReceived(
            AlertDescription::AccessDenied | AlertDescription::UnrecognisedName
        ))
    )
}

#[test]
fn each_sni_gets_its_tenants_certificate() {
    let world = World::start();
    let pki = world.pki.clone();
    world.client(move || async move {
        let tenants = [
            ("alpha.example", &pki.alpha),
            ("beta.example", &pki.beta),
            ("gamma.example", &pki.gamma),
        ];
        for (sni, own) in tenants {
            tls_connect(LISTEN, sni, own, H1)
                .await
                .unwrap_or_else(|e| panic!("{sni}, verified against its own CA: {e}"));
            for (other, ca) in tenants.iter().filter(|(other, _)| *other != sni) {
                let e = tls_connect(LISTEN, sni, ca, H1)
                    .await
                    .expect_err("another tenant's CA must not verify");
                assert!(untrusted(&e), "{sni} verified against {other}'s CA: {e}");
            }
        }

        // *.alpha.example covers one label.
        tls_connect(LISTEN, "www.alpha.example", &pki.alpha, H1)
            .await
            .unwrap_or_else(|e| panic!("wildcard name www.alpha.example: {e}"));
        let e = tls_connect(LISTEN, "www.alpha.example", &pki.beta, H1)
            .await
            .expect_err("the wildcard certificate is alpha's");
        assert!(untrusted(&e), "{e}");

        // An IP address as the server name: rustls then sends no SNI.
        let e = tls_connect(LISTEN, &LISTEN.ip().to_string(), &pki.alpha, H1)
            .await
            .expect_err("a handshake without SNI must fail without a default tenant");
        assert!(refused_by_alert(&e), "no SNI: {e}");

        for unknown in ["nobody.example", "a.b.alpha.example"] {
            let e = tls_connect(LISTEN, unknown, &pki.alpha, H1)
                .await
                .expect_err("an SNI of no tenant must fail the handshake");
            assert!(refused_by_alert(&e), "SNI {unknown}: {e}");
        }
    });
    // 10 failed handshakes, 3 of them on alpha's certificate (2 wrong CAs
    // for alpha.example, 1 for the wildcard).
    world.wait_for_metric(
        &format!("lb_l7_listener_tls_handshake_failures_total{{listener=\"{LISTEN}\"}}"),
        |v| v >= 10.0,
    );
    world.wait_for_metric(
        "lb_l7_tls_handshake_failures_total{tenant=\"alpha\"}",
        |v| v >= 3.0,
    );
}

#[test]
fn routes_by_host_path_and_header_over_h1_h2_and_websocket() {
    let world = World::start();
    let ca = world.pki.alpha.clone();
    world.client(move || async move {
        for (http, version) in [(Http::H1, Version::HTTP_11), (Http::H2, Version::HTTP_2)] {
            let mut conn = Conn::open(LISTEN, "alpha.example", &ca, http)
                .await
                .expect("connecting to alpha.example");
            let mut web = BTreeSet::new();
            for _ in 0..4 {
                let r = conn.fetch("alpha.example", "/", &[]).await;
                assert_eq!(r.version, version, "{r}");
                assert_eq!(r.seen("host"), ["alpha.example"], "{r}");
                web.insert(r.backend());
            }
            assert_eq!(
                web,
                BTreeSet::from(["a1".to_owned(), "a2".to_owned()]),
                "{http:?}: pool web is a1 and a2, round robin"
            );

            let r = conn.fetch("ALPHA.example:443", "/", &[]).await;
            assert!(
                web.contains(&r.backend()),
                "{http:?}: a host is matched without its port and case"
            );

            let r = conn
                .fetch("alpha.example", "/x", &[("X-Canary", "1")])
                .await;
            assert_eq!(r.backend(), "a3", "{http:?}: X-Canary: 1 routes to api");
            let r = conn
                .fetch("alpha.example", "/x", &[("X-Canary", "0")])
                .await;
            assert!(web.contains(&r.backend()), "{http:?}: X-Canary: 0 is web");

            let r = conn.fetch("alpha.example", "/v2/users?id=7", &[]).await;
            assert_eq!(r.backend(), "a3", "{http:?}: /v2 routes to api");
            assert_eq!(r.json()["path"], "/users?id=7", "{http:?}: /v2 is stripped");
            let r = conn.fetch("alpha.example", "/v2x", &[]).await;
            assert!(web.contains(&r.backend()), "{http:?}: /v2x is not /v2");
            assert_eq!(r.json()["path"], "/v2x");

            let mut api = Conn::open(LISTEN, "api.alpha.example", &ca, http)
                .await
                .expect("connecting to api.alpha.example");
            let r = api.fetch("api.alpha.example", "/", &[]).await;
            assert_eq!(r.backend(), "a3", "{http:?}: host api.alpha.example");
        }

        let echoed =
            client::websocket_echo(LISTEN, "alpha.example", &ca, "/ws", &["hello", "world"]).await;
        assert_eq!(echoed, ["hello", "world"], "WebSocket echo through lbd");
    });
}

#[test]
fn refuses_cross_tenant_requests_and_owns_forwarding_headers() {
    let world = World::start();
    let pki = world.pki.clone();
    let client_ip = world.client_ip().to_string();
    world.client(move || async move {
        // One connection per check: a refusal must not depend on the
        // requests before it.
        let alpha = |host: &'static str, headers: &'static [(&'static str, &'static str)]| {
            let ca = pki.alpha.clone();
            async move {
                let mut conn = Conn::open(LISTEN, "alpha.example", &ca, Http::H1)
                    .await
                    .expect("connecting to alpha.example");
                conn.fetch(host, "/", headers).await
            }
        };

        let r = alpha("beta.example", &[("X-Request-ID", "req-421")]).await;
        assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{r}");
        assert_eq!(
            r.json(),
            json!({"error": "misdirected", "request_id": "req-421"})
        );

        assert_eq!(r.header(HSTS), None, "no site answered the 421: {r}");

        let r = alpha("alpha.example", &[("X-Tenant-ID", "beta")]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{r}");
        assert_eq!(r.json()["error"], "tenant_mismatch", "{r}");
        assert_eq!(r.header(HSTS), Some(ALPHA_HSTS), "lbd's own answer: {r}");

        let r = alpha(
            "alpha.example",
            &[
                ("X-Forwarded-For", "203.0.113.66"),
                ("X-Forwarded-For", "198.51.100.7"),
                ("X-Forwarded-Proto", "http"),
                ("Forwarded", "for=203.0.113.66"),
                ("X-Tenant-ID", "alpha"),
                ("X-Request-ID", "trace-me.1"),
            ],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{r}");
        assert_eq!(
            r.seen("x-forwarded-for"),
            [client_ip.as_str()],
            "only the real client address: {r}"
        );
        assert_eq!(r.seen("x-forwarded-proto"), ["https"], "{r}");
        assert!(r.seen("forwarded").is_empty(), "{r}");
        assert_eq!(r.seen("x-tenant-id"), ["alpha"], "{r}");
        assert_eq!(r.seen("x-request-id"), ["trace-me.1"], "a valid id is kept");
        assert_eq!(r.header("x-request-id"), Some("trace-me.1"));
        assert_eq!(
            r.header(HSTS),
            Some(ALPHA_HSTS),
            "the backend's answer: {r}"
        );

        let r = alpha("alpha.example", &[("X-Request-ID", "not an id!")]).await;
        let id = r.seen("x-request-id");
        assert!(
            id.len() == 1 && id[0].len() == 36 && id[0] != "not an id!",
            "an invalid id is replaced by a UUID: {r}"
        );
        assert_eq!(r.header("x-request-id"), Some(id[0].as_str()));

        // h2: the :authority of another tenant.
        let mut h2 = Conn::open(LISTEN, "alpha.example", &pki.alpha, Http::H2)
            .await
            .expect("h2 to alpha.example");
        let r = h2.fetch("beta.example", "/", &[]).await;
        assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{r}");
        let r = h2.fetch("alpha.example", "/", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{r}");
        assert_eq!(r.header(HSTS), Some(ALPHA_HSTS), "over h2: {r}");

        // beta has no hsts: nothing is added.
        let mut beta = Conn::open(LISTEN, "beta.example", &pki.beta, Http::H1)
            .await
            .expect("connecting to beta.example");
        let r = beta.fetch("beta.example", "/", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{r}");
        assert_eq!(r.header(HSTS), None, "beta has no hsts: {r}");
    });
    world.wait_for_log("for the 421", |l| {
        l["decision"] == "misdirected" && l["request_id"] == "req-421" && l["status"] == 421
    });
    world.wait_for_log("for the 403", |l| {
        l["decision"] == "tenant_mismatch" && l["tenant"] == "alpha" && l["status"] == 403
    });
    // The refusals count against the tenant the request was identified as.
    world.wait_for_metric(
        "lb_l7_requests_total{tenant=\"alpha\",class=\"4xx\"}",
        |v| v >= 3.0,
    );
    world.wait_for_metric(
        "lb_l7_requests_total{tenant=\"alpha\",class=\"2xx\"}",
        |v| v >= 2.0,
    );
    world.wait_for_metric(
        "lb_l7_request_duration_seconds_count{tenant=\"alpha\"}",
        |v| v >= 5.0,
    );
}

#[test]
fn a_dead_backend_is_retried_around_and_a_dead_pool_answers_503() {
    let mut world = World::start();
    world.stop_backend("a1");
    let ca = world.pki.alpha.clone();
    let served = world.client(move || async move {
        let mut served = Vec::new();
        for i in 0..20 {
            let r = client::get(LISTEN, "alpha.example", &ca, &format!("/item/{i}"), &[]).await;
            assert_eq!(r.status, StatusCode::OK, "GET {i} with a1 down: {r}");
            served.push(r.backend());
        }
        served
    });
    assert!(served.iter().all(|b| b == "a2"), "{served:?}");
    let a2 = world.backend_addr("a2", 8080).to_string();
    world.wait_for_log("of a GET retried on a2 after a1 refused", |l| {
        l["tenant"] == "alpha" && l["status"] == 200 && l["attempts"] == 2 && l["upstream"] == a2
    });

    world.stop_backend("b1");
    world.stop_backend("b2");
    let ca = world.pki.beta.clone();
    let r = world.client(move || async move {
        // 502 until the health checks mark both down, then 503.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = client::get(
                LISTEN,
                "beta.example",
                &ca,
                "/",
                &[("X-Request-ID", "down-1")],
            )
            .await;
            if r.status == StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                return r;
            }
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r}");
    assert_eq!(
        r.json(),
        json!({"error": "no_backend", "request_id": "down-1"}),
        "{r}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"), "{r}");
    assert!(r.header("retry-after").is_some(), "{r}");
    world.wait_for_metric("lb_l7_requests_total{tenant=\"beta\",class=\"5xx\"}", |v| {
        v >= 1.0
    });
}

#[test]
fn certificate_rotation_keeps_open_connections() {
    let mut world = World::start();
    let ca = world.pki.alpha.clone();
    let rotation = world.next_alpha_certificate();
    let new_leaf = rotation.leaf.der.clone();
    world.client({
        let new_leaf = new_leaf.clone();
        move || async move {
            let mut old = Conn::open(LISTEN, "alpha.example", &ca, Http::H1)
                .await
                .expect("the long-lived connection");
            let first = old.leaf.clone();
            assert_eq!(
                old.fetch("alpha.example", "/", &[]).await.status,
                StatusCode::OK
            );

            rotation.apply();
            // lbd looks at the files every 2 s; keep using the old connection
            // while waiting for a new handshake to show the new certificate.
            let deadline = Instant::now() + ROTATION_LIMIT;
            loop {
                let fresh = Conn::open(LISTEN, "alpha.example", &ca, Http::H1)
                    .await
                    .expect("a new connection during the rotation");
                if fresh.leaf == new_leaf {
                    break;
                }
                assert!(
                    fresh.leaf == first,
                    "neither the old nor the new certificate"
                );
                assert!(
                    Instant::now() < deadline,
                    "new handshakes still get the old certificate after {ROTATION_LIMIT:?}"
                );
                let r = old.fetch("alpha.example", "/", &[]).await;
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "old connection during rotation: {r}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for _ in 0..3 {
                let r = old.fetch("alpha.example", "/", &[]).await;
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "old connection after rotation: {r}"
                );
            }
            let mut h2 = Conn::open(LISTEN, "www.alpha.example", &ca, Http::H2)
                .await
                .expect("h2 after the rotation");
            assert_eq!(
                h2.leaf, new_leaf,
                "the wildcard name gets the new certificate"
            );
            assert_eq!(
                h2.fetch("www.alpha.example", "/", &[]).await.status,
                StatusCode::OK
            );
        }
    });

    // A broken certificate file is refused; the current one keeps serving.
    std::fs::write(
        world.dir.join("alpha.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .expect("breaking alpha.pem");
    let deadline = Instant::now() + ROTATION_LIMIT;
    while !world.lbd(0).log_tail().contains("certificate not reloaded") {
        assert!(
            Instant::now() < deadline,
            "lbd did not report the broken certificate file within {ROTATION_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ca = world.pki.alpha.clone();
    let leaf = world.client(move || async move {
        let mut conn = Conn::open(LISTEN, "alpha.example", &ca, Http::H1)
            .await
            .expect("a handshake after the broken file");
        assert_eq!(
            conn.fetch("alpha.example", "/", &[]).await.status,
            StatusCode::OK
        );
        conn.leaf
    });
    assert!(leaf == new_leaf, "the last good certificate keeps serving");
}

#[test]
fn passthrough_keeps_the_backends_tls_and_refuses_garbage_cleanly() {
    let world = World::start();
    let pki = world.pki.clone();
    let lb_ip = world.lb_ip();
    let (pp_client, garbage_client) = world.client(move || async move {
        // lbd has no certificate for raw.gamma.example: the handshake only
        // verifies against the backend's own CA, not gamma's.
        let mut raw = Conn::open(LISTEN, "raw.gamma.example", &pki.gamma_backend, Http::H1)
            .await
            .expect("TLS with the backend through lbd");
        let r = raw.fetch("raw.gamma.example", "/", &[]).await;
        assert_eq!(r.backend(), "g2-tls", "{r}");
        assert_eq!(r.json()["tls"], true, "the backend terminated TLS: {r}");
        let peer: std::net::SocketAddr = r.json()["peer"]
            .as_str()
            .expect("peer")
            .parse()
            .expect("addr");
        assert_eq!(peer.ip(), lb_ip, "without PROXY the backend sees lbd: {r}");
        let e = tls_connect(LISTEN, "raw.gamma.example", &pki.gamma, H1)
            .await
            .expect_err("gamma's lbd CA must not verify the backend's certificate");
        assert!(untrusted(&e), "{e}");

        let mut pp = Conn::open(LISTEN, "pp.gamma.example", &pki.gamma_backend, Http::H1)
            .await
            .expect("TLS with the PROXY v2 backend through lbd");
        let r = pp.fetch("pp.gamma.example", "/", &[]).await;
        assert_eq!(r.backend(), "g2-pp", "{r}");
        assert_eq!(
            r.json()["peer"],
            pp.local.to_string(),
            "the PROXY v2 header carries the client's address and port: {r}"
        );
        let pp_client = pp.local;

        drop((raw, pp));

        let garbage_client = closed_cleanly(b"\x00\xffthis is no ClientHello\r\n\r\n", false).await;
        // A ClientHello record cut short by the client's FIN.
        closed_cleanly(
            &[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
            true,
        )
        .await;
        let r = client::get(LISTEN, "gamma.example", &pki.gamma, "/", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "lbd serves after garbage: {r}");
        (pp_client, garbage_client)
    });
    let pp_upstream = world.backend_addr("g2", 9443).to_string();
    world.wait_for_log("for the PROXY v2 passthrough", |l| {
        l["decision"] == "passthrough"
            && l["tenant"] == "gamma"
            && l["client"] == pp_client.to_string()
            && l["upstream"] == pp_upstream
    });
    world.wait_for_log("for the garbage", |l| {
        l["decision"] == "bad_client_hello" && l["client"] == garbage_client.to_string()
    });
    world.wait_for_metric(
        &format!("lb_l7_listener_bad_client_hellos_total{{listener=\"{LISTEN}\"}}"),
        |v| v >= 2.0,
    );
}

#[test]
fn passthrough_logs_the_clients_sni() {
    let world = World::start();
    let ca = world.pki.gamma_backend.clone();
    let client = world.client(move || async move {
        let mut edge = Conn::open(LISTEN, "edge.raw.gamma.example", &ca, Http::H1)
            .await
            .expect("TLS with the backend for a wildcard passthrough name");
        let r = edge.fetch("edge.raw.gamma.example", "/", &[]).await;
        assert_eq!(r.backend(), "g2-tls", "{r}");
        edge.local
    });
    // The connection closed when the client thread ended.
    let line = world.wait_for_log("for the wildcard passthrough", |l| {
        l["decision"] == "passthrough" && l["client"] == client.to_string()
    });
    assert_eq!(
        line["sni"], "edge.raw.gamma.example",
        "the access log must carry the client's SNI, not the site's first host: {line}"
    );
}

/// Sends `bytes` as a connection's first bytes (then a FIN if `finish`)
/// to the TLS listener and checks that lbd closes the connection with a
/// FIN, not a reset, without answering. Returns the client's address.
async fn closed_cleanly(bytes: &[u8], finish: bool) -> std::net::SocketAddr {
    let mut tcp = TcpStream::connect(LISTEN).await.expect("connecting");
    let local = tcp.local_addr().expect("local address");
    tcp.write_all(bytes).await.expect("sending garbage");
    if finish {
        tcp.shutdown().await.expect("FIN");
    }
    let mut buf = [0; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("lbd must close the connection");
    match read {
        Ok(0) => local,
        Ok(n) => panic!("lbd answered {:?} to {bytes:?}", &buf[..n]),
        Err(e) => panic!("lbd did not close cleanly after {bytes:?}: {e}"),
    }
}

/// A restart test sends at least this many requests...
const RESTART_REQUESTS: usize = 300;
/// ...of which at least this many after the first `lbd` exited...
const AFTER_RESTART: usize = 60;
/// ...within this long.
const RESTART_LIMIT: Duration = Duration::from_mins(1);

/// One client of a restart test's load.
#[derive(Debug, Clone, Copy)]
enum Sender {
    /// hyper-util's pooled client over keep-alive connections (it retries a
    /// request whose pooled connection closed before the request was sent),
    /// asking for answers the backend delays by `delay_ms` (requests in
    /// flight while the old `lbd` drains), or not (connections idle
    /// between requests for the shortest time).
    Pooled { http: Http, delay_ms: u32 },
    /// A new TLS connection for each request.
    Fresh,
}

/// One request of the load: who sent it, its place in the load (in order
/// of completion), and its status or error.
type Outcome = (Sender, usize, Result<StatusCode, String>);

/// What the load has done, shared with the test's thread.
#[derive(Default)]
struct Progress {
    done: AtomicUsize,
    after_restart: AtomicUsize,
    restarted: AtomicBool,
}

impl Progress {
    /// Counts a finished request; returns its place in the load.
    fn record(&self) -> usize {
        if self.restarted.load(Relaxed) {
            self.after_restart.fetch_add(1, Relaxed);
        }
        self.done.fetch_add(1, Relaxed) + 1
    }

    fn enough(&self) -> bool {
        self.restarted.load(Relaxed)
            && self.after_restart.load(Relaxed) >= AFTER_RESTART
            && self.done.load(Relaxed) >= RESTART_REQUESTS
    }
}

#[test]
fn a_restart_under_h2_load_loses_no_request() {
    let h2 = Sender::Pooled {
        http: Http::H2,
        delay_ms: 10,
    };
    restart_under_load(&[h2, h2]);
}

#[test]
fn a_restart_under_http1_keep_alive_load_loses_no_request() {
    let h1 = Sender::Pooled {
        http: Http::H1,
        delay_ms: 0,
    };
    restart_under_load(&[h1, h1, h1, h1]);
}

#[test]
fn a_restart_under_new_connection_load_loses_no_request() {
    restart_under_load(&[Sender::Fresh, Sender::Fresh, Sender::Fresh]);
}

/// Starts `senders` against alpha, and once they are going a second `lbd`
/// with the same configuration; checks that the first hands over, drains
/// and exits by itself, and that every request before, during and after
/// got 200.
fn restart_under_load(senders: &[Sender]) {
    let mut world = World::start();
    let ca = world.pki.alpha.clone();
    let progress = Arc::new(Progress::default());
    let load = world.spawn_client({
        let (senders, progress) = (senders.to_vec(), Arc::clone(&progress));
        move || restart_load(senders, ca, progress)
    });

    let deadline = Instant::now() + RESTART_LIMIT;
    while progress.done.load(Relaxed) < RESTART_REQUESTS / 3 {
        assert!(!load.is_finished(), "the load stopped early");
        assert!(Instant::now() < deadline, "the load did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = progress.done.load(Relaxed);
    let second = hand_over(&mut world);
    let at_exit = progress.done.load(Relaxed);
    progress.restarted.store(true, Relaxed);
    let outcomes = join(load);

    world.lbd(second).assert_running();
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|(_, _, r)| r.as_ref().ok() != Some(&StatusCode::OK))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restart ({before} done when the second lbd \
         started, {at_exit} when the first exited): {failed:?}",
        failed.len(),
        outcomes.len()
    );
    assert!(
        at_exit > before && outcomes.len() >= at_exit + AFTER_RESTART,
        "requests must span the hand-over: {before} before, {at_exit} when the first lbd \
         exited, {} in all",
        outcomes.len()
    );
}

/// What one HTTP/1.1 keep-alive connection saw across a hand-over: each
/// request's status and whether its response said `Connection: close`,
/// then how the connection ended.
#[derive(Debug)]
struct KeptAlive {
    answers: Vec<(StatusCode, bool)>,
    /// The error of the request that found no answer (none: the
    /// connection closed after a response that said so, or the load
    /// stopped).
    cut: Option<String>,
    /// The connection closed after a `Connection: close` response.
    closed_cleanly: bool,
}

#[test]
fn a_draining_http1_connection_ends_after_a_response_that_says_so() {
    // One keep-alive connection sends a request every 50 ms, so it is never
    // quiet for the drain's grace period: the old lbd must end it by
    // answering its next request with `Connection: close`, never by
    // closing between two requests (which would cut the next one).
    let mut world = World::start();
    let ca = world.pki.alpha.clone();
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = world.spawn_client({
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        move || async move {
            let deadline = Instant::now() + RESTART_LIMIT;
            let mut conn = Conn::open(LISTEN, "alpha.example", &ca, Http::H1)
                .await
                .expect("connecting to alpha.example");
            let mut seen = KeptAlive {
                answers: Vec::new(),
                cut: None,
                closed_cleanly: false,
            };
            while !stop.load(Relaxed) && Instant::now() < deadline {
                let req = conn.get("alpha.example", "/", &[]);
                match conn.send(req).await {
                    Ok(r) => {
                        let close = r
                            .header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                        seen.answers.push((r.status, close));
                        done.fetch_add(1, Relaxed);
                        if close {
                            let req = conn.get("alpha.example", "/", &[]);
                            seen.closed_cleanly = conn
                                .send(req)
                                .await
                                .is_err_and(|e| e.is_canceled() || e.is_closed());
                            break;
                        }
                    }
                    Err(e) => {
                        seen.cut = Some(format!("{e:?}"));
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        }
    });
    let deadline = Instant::now() + RESTART_LIMIT;
    while done.load(Relaxed) < 3 {
        assert!(!load.is_finished(), "the connection stopped early");
        assert!(
            Instant::now() < deadline,
            "the connection did not get going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = hand_over(&mut world);
    stop.store(true, Relaxed);
    let seen = join(load);
    world.lbd(second).assert_running();
    assert!(
        seen.answers.iter().all(|(s, _)| *s == StatusCode::OK) && seen.cut.is_none(),
        "every request on the connection gets its answer: {seen:?}"
    );
    assert!(
        seen.answers.last().is_some_and(|(_, close)| *close) && seen.closed_cleanly,
        "the draining lbd ends the connection with `Connection: close` on a response, then \
         closes it: {seen:?}"
    );
}

/// Starts a second `lbd` and waits until the first has handed over,
/// drained and exited by itself (successfully); returns the second.
fn hand_over(world: &mut World) -> usize {
    let second = world.start_lbd();
    let status = world
        .lbd(0)
        .wait_exit(Duration::from_secs(30))
        .expect("the first lbd must hand over, drain and exit by itself");
    assert!(status.success(), "the first lbd exited with {status}");
    second
}

/// Runs every sender until [`Progress::enough`] (or [`RESTART_LIMIT`]).
async fn restart_load(
    senders: Vec<Sender>,
    ca: CertificateDer<'static>,
    progress: Arc<Progress>,
) -> Vec<Outcome> {
    let deadline = Instant::now() + RESTART_LIMIT;
    let mut tasks = tokio::task::JoinSet::new();
    for sender in senders {
        let (ca, progress) = (ca.clone(), Arc::clone(&progress));
        tasks.spawn(async move {
            let pooled = match sender {
                Sender::Pooled { http, delay_ms } => {
                    Some((client::pooled("alpha.example", &ca, http), http, delay_ms))
                }
                Sender::Fresh => None,
            };
            let mut outcomes = Vec::new();
            let mut i = 0_u64;
            while !progress.enough() && Instant::now() < deadline {
                i += 1;
                let result = match &pooled {
                    Some((client, http, delay_ms)) => pooled_get(client, *http, *delay_ms, i).await,
                    None => fresh_get(&ca).await,
                };
                outcomes.push((sender, progress.record(), result));
            }
            outcomes
        });
    }
    let mut all = Vec::new();
    while let Some(outcomes) = tasks.join_next().await {
        all.extend(outcomes.expect("a load task panicked"));
    }
    all
}

/// A GET of alpha's `/delay/MS` with a pooled client (by the listener's
/// address; the client presents SNI alpha.example).
async fn pooled_get(
    client: &client::Pooled,
    http: Http,
    delay_ms: u32,
    i: u64,
) -> Result<StatusCode, String> {
    let mut req = http::Request::get(format!("https://{LISTEN}/delay/{delay_ms}?i={i}"));
    if http == Http::H1 {
        req = req.header(http::header::HOST, "alpha.example");
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?;
    Ok(status)
}

/// A GET of alpha's `/` on a new TLS connection.
async fn fresh_get(ca: &CertificateDer<'static>) -> Result<StatusCode, String> {
    let mut conn = Conn::open(LISTEN, "alpha.example", ca, Http::H1)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = conn.get("alpha.example", "/", &[]);
    conn.send(req)
        .await
        .map(|r| r.status)
        .map_err(|e| format!("{e:?}"))
}

/// How long new handshakes may keep showing a replaced certificate (lbd
/// polls the files every 2 s).
const ROTATION_LIMIT: Duration = Duration::from_secs(15);

#[test]
fn backend_tls_body_limit_and_https_redirect() {
    let world = World::start();
    let pki = world.pki.clone();
    world.client(move || async move {
        // TLS to the backend, verified against the backends' own CA.
        let mut conn = Conn::open(LISTEN, "gamma.example", &pki.gamma, Http::H1)
            .await
            .expect("connecting to gamma.example");
        let r = conn.fetch("gamma.example", "/secure/x?y=1", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{r}");
        let echo = r.json();
        assert_eq!(echo["backend"], "g2-tls", "{r}");
        assert_eq!(echo["tls"], true, "the backend terminated TLS: {r}");
        assert_eq!(echo["path"], "/x?y=1", "{r}");

        // A body over the site's max_body_bytes (1024) is refused.
        let req = client::request(Http::H1, "gamma.example", "/upload")
            .method("PUT")
            .body(Full::new(Bytes::from(vec![b'x'; 2048])))
            .expect("request");
        let mut conn = Conn::open(LISTEN, "gamma.example", &pki.gamma, Http::H1)
            .await
            .expect("connecting to gamma.example");
        let r = conn.send(req).await.expect("an answer");
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{r}");
        assert_eq!(r.json()["error"], "body_too_large", "{r}");

        // The plain listener redirects to HTTPS, keeping host and path.
        let mut tcp = TcpStream::connect(l7::world::PLAIN)
            .await
            .expect("connecting to the plain listener");
        tcp.write_all(b"GET /a/b?c=d HTTP/1.1\r\nHost: alpha.example\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("location: https://alpha.example/a/b?c=d"),
            "{answer}"
        );
        assert!(
            !answer
                .to_ascii_lowercase()
                .contains("strict-transport-security"),
            "never over plain HTTP: {answer}"
        );
    });
}

/// `lbctl` against the daemon's admin socket, as JSON.
fn lbctl(world: &World, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .arg("--socket")
        .arg(world.dir.join("admin.sock"))
        .arg("--json")
        .args(args)
        .output()
        .expect("running lbctl")
}

#[test]
fn lbctl_lists_and_edits_the_sni_map() {
    let world = World::start();
    let list = |world: &World| -> Vec<serde_json::Value> {
        let out = lbctl(world, &["sni", "list"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("a JSON list")
    };
    let entry = |list: &[serde_json::Value], name: &str| {
        list.iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {list:?}"))
    };
    let all = list(&world);
    // Every configured name is in the map, under its tenant, keyed by the
    // FNV-1a 64 hash of the normalised name.
    let alpha = entry(&all, "alpha.example");
    assert_eq!(alpha["tenant"], "alpha");
    assert_eq!(alpha["in_map"], true);
    assert_eq!(
        alpha["hash"],
        format!("{:016x}", lb::config::sni_hash("alpha.example"))
    );
    assert_eq!(entry(&all, "*.raw.gamma.example")["tenant"], "gamma");
    assert!(all.iter().all(|e| e["in_map"] == true), "{all:?}");

    // Added at runtime: in the map, and served (the wildcard certificate
    // covers it).
    let out = lbctl(
        &world,
        &["sni", "add", "shop.alpha.example", "--tenant", "alpha"],
    );
    assert!(out.status.success(), "{out:?}");
    let added = entry(&list(&world), "shop.alpha.example");
    assert_eq!(
        (added["tenant"].clone(), added["in_map"].clone()),
        (json!("alpha"), json!(true))
    );
    // A name of another tenant is refused, naming the owner.
    let out = lbctl(&world, &["sni", "add", "beta.example", "--tenant", "alpha"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already used") && err.contains("beta"),
        "{err}"
    );
    // Removed again.
    let out = lbctl(&world, &["sni", "remove", "shop.alpha.example"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        list(&world)
            .iter()
            .all(|e| e["name"] != "shop.alpha.example"),
        "still listed"
    );
}
