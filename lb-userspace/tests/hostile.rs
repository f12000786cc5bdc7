//! A hostile client: every attack that once crossed tenants, starved a
//! neighbour or slipped past policy on the shared listener, replayed end to end with a real client against the [`World`]
//! (namespaces, three tenants with their own CAs, echoing hyper backends,
//! `lbd` on one shared HTTPS listener). Requests a well-behaved client
//! library refuses to send (two Host headers, dot-segments, an absolute
//! form that disagrees with Host, `Upgrade: h2c`) are written by hand over
//! rustls; the h2 ones use the h2 crate, which lets the client choose its
//! stream window, send PINGs and put a Host beside `:authority`.
//!
//! * `a_session_never_reaches_another_tenant`: with `identify = ["sni"]`,
//!   alpha owning `*.alpha.example` and beta `b.alpha.example`: SNI
//!   `a.alpha.example` with Host `b.alpha.example` (HTTP/1.1, and h2's
//!   `:authority`) is 421 `misdirected`, never alpha's backend; SNI
//!   `b.alpha.example` reaches beta (the exact name beats the wildcard);
//!   Host `a.alpha.example` on beta's session is 421.
//! * `a_client_that_stops_reading_loses_its_response_not_the_tenant`:
//!   alpha allows one request in flight; a response whose client stopped
//!   reading (HTTP/1.1 through a 4 KiB receive buffer; h2 with a zero
//!   stream window) holds that place until `timeouts.send` and no longer:
//!   then another request gets it, the HTTP/1.1 connection is closed with
//!   the response cut, the h2 stream is reset while its connection keeps
//!   serving, and the access log says `client_send_timeout`. Meanwhile, on
//!   other tenants: an h2 connection whose client sends PINGs but no
//!   request (after one, or from its start) idles out after
//!   `timeouts.idle`, and a keep-alive HTTP/1.1 connection lives for
//!   `timeouts.idle` (3 s), not `timeouts.header` (1 s).
//! * `oversized_uploads_do_not_eject_the_tenants_backends`: a dozen
//!   chunked POSTs over `max_body_bytes` get 413 and do not count as
//!   backend failures: both of alpha's `web` backends serve afterwards.
//! * `only_the_sites_upgrades_are_tunnelled`: `Upgrade: h2c` (with
//!   `HTTP2-Settings`) and an unlisted upgrade are answered as plain
//!   requests, the backend sees neither header and the connection stays
//!   HTTP/1.1; a WebSocket still works, idles out after the site's
//!   `timeouts.idle`, and its bytes show in `lb_l7_bytes_total`.
//! * `forwarding_headers_from_the_client_never_reach_the_backend`:
//!   `X-Forwarded-Host`, `-Port`, `-Prefix`, `X-Real-IP` and `Forwarded`
//!   (in any case, repeated, or named in `Connection`) are removed, over
//!   HTTP/1.1 and h2; `X-Forwarded-For` and `-Proto` are the proxy's.
//! * `hosts_that_disagree_are_refused`: an absolute form naming another
//!   host (or port) than Host, two Host headers, and an h2 `:authority`
//!   other than its Host are 400 (`host_mismatch`, `duplicate_host`); the
//!   backend sees the host that was checked.
//! * `dot_segments_and_encoded_slashes_do_not_dodge_routes`: on a site
//!   whose only route is `/public`, `/public/../admin` and its
//!   percent-encoded forms are 404 `no_route` (HTTP/1.1 and h2), `%2F` and
//!   `%5C` are 400 `encoded_slash` unless the site sets
//!   `allow_encoded_slashes`, and the backend receives the normalised path.
//! * `check_refuses_an_absurd_timeout`: the `lbd` binary's `--check`
//!   refuses `timeouts.* = "18446744073709551615s"` (which made every
//!   connection task panic) with the file, line, key and bound.
//!
//! Needs root (namespaces, BPF), except the last. Each test builds its own
//! world and tears it down, also when it fails; every wait is bounded.

#[path = "common/l7/mod.rs"]
#[expect(
    dead_code,
    reason = "the shared L7 harness: these tests use its world and TLS client, not every helper"
)]
mod l7;

use std::{
    collections::BTreeSet,
    fmt, io,
    process::Command,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, StatusCode};
use l7::{
    certs,
    client::{self, Conn, Http, TlsStream, tls_connect},
    world::{LISTEN, Pki, World, timeouts_everywhere},
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    sync::oneshot,
};
use tokio_tungstenite::tungstenite::Message;

/// How long any single step (a connect, a read) may take.
const STEP: Duration = Duration::from_secs(10);
const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2"];

// ---- Raw HTTP/1.1 over rustls ----

/// A response read off a [`RawConn`].
struct Raw {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }

    /// The `error` of one of `lbd`'s JSON refusals.
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }

    /// The backend that answered (its echo).
    fn backend(&self) -> String {
        assert_eq!(self.status, 200, "{self}");
        self.json()["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("no backend in {self}"))
            .to_owned()
    }

    /// The path and query the backend received.
    fn path(&self) -> String {
        assert_eq!(self.status, 200, "{self}");
        self.json()["path"].as_str().unwrap_or_default().to_owned()
    }

    /// The values of request header `name` as the backend received it.
    fn seen(&self, name: &str) -> Vec<String> {
        client::echoed(&self.json(), name)
    }
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body[..self.body.len().min(2000)])
        )
    }
}

/// HTTP/1.1 written and read by hand over TLS, for requests no client
/// library sends.
struct RawConn {
    tls: TlsStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// A TLS connection for `sni` trusting `ca`, ALPN `http/1.1`.
    async fn open(sni: &str, ca: &CertificateDer<'static>) -> RawConn {
        let tls = tls_connect(LISTEN, sni, ca, H1)
            .await
            .unwrap_or_else(|e| panic!("TLS to {sni}: {e}"));
        RawConn {
            tls,
            buf: Vec::new(),
        }
    }

    /// TLS for `sni` over a TCP connection made by the caller.
    async fn over(tcp: TcpStream, sni: &str, ca: &CertificateDer<'static>) -> RawConn {
        tcp.set_nodelay(true).expect("nodelay");
        let name = ServerName::try_from(sni.to_owned()).expect("server name");
        let tls = tokio_rustls::TlsConnector::from(certs::client_config(ca, H1))
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS to {sni}: {e}"));
        RawConn {
            tls,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, request: &[u8]) {
        self.tls
            .write_all(request)
            .await
            .expect("writing a request");
        self.tls.flush().await.expect("flushing a request");
    }

    /// Reads more into the buffer; how much (0 at the end).
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(16 * 1024);
        tokio::time::timeout(STEP, self.tls.read_buf(&mut self.buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no bytes within STEP"))?
    }

    /// Reads until `self.buf` holds `n` bytes.
    async fn fill_to(&mut self, n: usize) {
        while self.buf.len() < n {
            let got = self.fill().await.expect("reading a response");
            assert!(got > 0, "the connection ended inside a response");
        }
    }

    /// The next response's status line and headers.
    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let got = self.fill().await.expect("reading a response head");
            assert!(got > 0, "the connection ended before a response head");
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        (status, headers)
    }

    /// The next whole response (Content-Length, chunked or to the end).
    async fn reply(&mut self) -> Raw {
        let (status, headers) = self.head().await;
        let mut raw = Raw {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = raw.header("content-length") {
            let len: usize = len.parse().expect("Content-Length");
            self.fill_to(len).await;
            raw.body = self.buf.drain(..len).collect();
        } else if raw
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    let got = self.fill().await.expect("reading a chunk");
                    assert!(got > 0, "the connection ended inside a chunk");
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .unwrap_or_else(|_| panic!("not a chunk size: {size_text:?}"));
                self.buf.drain(..line_end + 2);
                self.fill_to(size + 2).await;
                raw.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill().await.unwrap_or(0) > 0 {}
            raw.body = std::mem::take(&mut self.buf);
        }
        raw
    }

    /// Discards whatever arrives until the connection ends (EOF or an
    /// error); how long that took and how many bytes came, or `None` if
    /// it is still open after `limit`.
    async fn ends_within(&mut self, limit: Duration) -> Option<(Duration, usize)> {
        let start = Instant::now();
        let mut bytes = std::mem::take(&mut self.buf).len();
        let mut chunk = vec![0_u8; 64 * 1024];
        loop {
            let left = limit.checked_sub(start.elapsed())?;
            match tokio::time::timeout(left, self.tls.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some((start.elapsed(), bytes)),
                Ok(Ok(n)) => bytes += n,
            }
        }
    }
}

/// One request on a new connection, and its response.
async fn exchange(sni: &str, ca: &CertificateDer<'static>, request: &str) -> Raw {
    let mut conn = RawConn::open(sni, ca).await;
    conn.send(request.as_bytes()).await;
    conn.reply().await
}

// ---- h2 with the h2 crate ----

/// An h2 client connection whose driver runs on its own task.
struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    /// The connection's PINGs (one owner: taken by whoever sends them).
    pings: Option<h2::PingPong>,
    /// Asks the driver to set a new initial stream window (applied to the
    /// open streams too, RFC 9113 section 6.9.2).
    window: Option<oneshot::Sender<u32>>,
    /// Ends when the connection does.
    driver: tokio::task::JoinHandle<()>,
}

impl H2Conn {
    /// h2 for `sni` trusting `ca`, with `window` as the initial stream
    /// window it grants the server.
    async fn open(sni: &str, ca: &CertificateDer<'static>, window: u32) -> H2Conn {
        let tls = tls_connect(LISTEN, sni, ca, H2)
            .await
            .unwrap_or_else(|e| panic!("TLS to {sni}: {e}"));
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(window)
            .handshake::<_, Bytes>(tls)
            .await
            .expect("h2 handshake");
        let pings = conn.ping_pong().expect("the connection's PingPong");
        let (window_tx, mut window_rx) = oneshot::channel::<u32>();
        let driver = tokio::spawn(async move {
            let mut asked = false;
            loop {
                tokio::select! {
                    _ = &mut conn => return,
                    size = &mut window_rx, if !asked => {
                        asked = true;
                        if let Ok(size) = size {
                            conn.set_initial_window_size(size).expect("a new initial window");
                        }
                    }
                }
            }
        });
        H2Conn {
            send,
            pings: Some(pings),
            window: Some(window_tx),
            driver,
        }
    }

    /// Sends a request without a body; its response head.
    async fn start(&mut self, req: Request<()>) -> http::Response<h2::RecvStream> {
        let send = tokio::time::timeout(STEP, self.send.clone().ready())
            .await
            .expect("h2 ready in time");
        let mut send = send.expect("h2 connection ready");
        let (resp, _) = send.send_request(req, true).expect("sending an h2 request");
        tokio::time::timeout(STEP, resp)
            .await
            .expect("an h2 response head in time")
            .expect("an h2 response head")
    }

    /// A whole exchange: status and body.
    async fn fetch(&mut self, req: Request<()>) -> (StatusCode, Bytes) {
        let resp = self.start(req).await;
        let status = resp.status();
        let body = read_h2(resp.into_body())
            .await
            .unwrap_or_else(|(e, _)| panic!("h2 body: {e}"));
        (status, body)
    }
}

/// Reads an h2 body to its end, giving the window back as it goes; on an
/// error, the error and how many bytes came before it.
async fn read_h2(mut body: h2::RecvStream) -> Result<Bytes, (h2::Error, usize)> {
    let mut out = Vec::new();
    loop {
        let frame = tokio::time::timeout(STEP, body.data())
            .await
            .expect("h2 body data within STEP");
        match frame {
            None => return Ok(Bytes::from(out)),
            Some(Err(e)) => return Err((e, out.len())),
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
                out.extend_from_slice(&data);
            }
        }
    }
}

fn h2_get(authority: &str, path: &str) -> http::request::Builder {
    Request::get(format!("https://{authority}{path}"))
}

// ---- Configuration edits ----

/// `text` with `insert` on a new line after the first line equal to
/// `after` (which must exist).
fn insert_after(text: &str, after: &str, insert: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if !done && line == after {
            out.push_str(insert);
            out.push('\n');
            done = true;
        }
    }
    assert!(done, "no line {after:?} in lb.toml:\n{text}");
    out
}

/// A line that only alpha's HTTPS site has.
const ALPHA_SITE_LINE: &str = "retries = 2";

/// Another HTTPS site of alpha on the shared listener for `host` (a name
/// its wildcard certificate covers), with `extra` keys.
fn alpha_site(host: &str, extra: &str) -> String {
    format!(
        "[[tenant.l7]]\nlisten = \"{LISTEN}\"\nhosts = [\"{host}\"]\n\
         tls = {{ cert = \"alpha.pem\", key = \"alpha.key\" }}\n{extra}\n"
    )
}

/// Adds `sites` to alpha (before its plain-HTTP site).
fn with_alpha_sites(config: &str, sites: &str) -> String {
    let marker = "[[tenant.l7]]\nlisten = \"";
    let plain = config
        .match_indices(marker)
        .map(|(i, _)| i)
        .find(|&i| !config[i + marker.len()..].starts_with(&LISTEN.to_string()))
        .expect("alpha's plain-HTTP site");
    format!("{}{sites}\n{}", &config[..plain], &config[plain..])
}

// ---- 1. Cross-tenant delivery ----

#[test]
fn a_session_never_reaches_another_tenant() {
    let world = World::start_with(|config| {
        let config = config.replace(
            "hosts = [\"beta.example\"]",
            "hosts = [\"beta.example\", \"b.alpha.example\"]",
        );
        format!("{config}\n[[listener]]\naddress = \"{LISTEN}\"\nidentify = [\"sni\"]\n")
    });
    let pki = world.pki.clone();
    world.client(move || async move {
        let alphas = BTreeSet::from(["a1".to_owned(), "a2".to_owned()]);
        let betas = BTreeSet::from(["b1".to_owned(), "b2".to_owned()]);

        for http in [Http::H1, Http::H2] {
            // alpha's session (its wildcard): its own name is served...
            let mut a = Conn::open(LISTEN, "a.alpha.example", &pki.alpha, http)
                .await
                .expect("alpha's session for a.alpha.example");
            let own = a.fetch("a.alpha.example", "/", &[]).await;
            assert!(alphas.contains(&own.backend()), "{http:?}: {own}");
            // ...beta's exact name under alpha's wildcard is not.
            let r = a.fetch("b.alpha.example", "/", &[]).await;
            assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{http:?}: {r}");
            assert_eq!(r.json()["error"], "misdirected", "{http:?}: {r}");
            // Nor a name of beta's that no certificate of alpha's covers.
            let r = a.fetch("beta.example", "/", &[]).await;
            assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{http:?}: {r}");

            // SNI b.alpha.example: beta's certificate, beta's backends.
            let mut b = Conn::open(LISTEN, "b.alpha.example", &pki.beta, http)
                .await
                .expect("beta's session for b.alpha.example (the exact name)");
            let r = b.fetch("b.alpha.example", "/", &[]).await;
            assert!(betas.contains(&r.backend()), "{http:?}: {r}");
            for host in ["a.alpha.example", "alpha.example"] {
                let r = b.fetch(host, "/", &[]).await;
                assert_eq!(
                    r.status,
                    StatusCode::MISDIRECTED_REQUEST,
                    "{http:?} {host}: {r}"
                );
                assert_eq!(r.json()["error"], "misdirected", "{http:?}: {r}");
            }
        }
        // With alpha's CA, b.alpha.example does not verify: the name is
        // beta's and so is the certificate presented for it.
        let e = tls_connect(LISTEN, "b.alpha.example", &pki.alpha, H1)
            .await
            .expect_err("b.alpha.example presents beta's certificate");
        assert!(client::tls_error(&e).is_some(), "{e}");
    });
    let misdirected = world
        .access_log()
        .into_iter()
        .filter(|l| l["status"] == 421)
        .count();
    assert_eq!(misdirected, 8, "every misdirected request is logged as one");
}

// ---- 2. Clients that stop reading, and idle connections ----

/// Case 2's timeouts: the header timeout shorter than idle, so a
/// keep-alive connection that lived only for the header timeout shows.
const HEADER: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(3);
const SEND: Duration = Duration::from_secs(2);
/// How late after its deadline a connection or response may be closed
/// (the clock looks every second while a response is under way).
const LATE: Duration = Duration::from_millis(1500);
/// How early: timers run from a moment slightly before the client's.
const EARLY: Duration = Duration::from_millis(500);

/// Whether `d` is `deadline`, give or take [`EARLY`] and [`LATE`].
fn near(d: Duration, deadline: Duration) -> bool {
    d >= deadline.saturating_sub(EARLY) && d <= deadline + LATE
}

/// A response no client reads in time: far more than the buffers on the
/// way (the client's 4 KiB, lbd's socket's few MiB).
const STALLED_BYTES: usize = 24 << 20;

/// Status of a GET on a new connection to alpha.
async fn alpha_probe(pki: &Pki) -> StatusCode {
    client::get(LISTEN, "alpha.example", &pki.alpha, "/", &[])
        .await
        .status
}

/// Waits until alpha takes a request again (its one in-flight place is
/// free); how long after `since`.
async fn alpha_place_freed(pki: &Pki, since: Instant, what: &str) -> Duration {
    let limit = SEND + LATE + Duration::from_secs(2);
    loop {
        let status = alpha_probe(pki).await;
        if status == StatusCode::OK {
            return since.elapsed();
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{what}: probe");
        assert!(
            since.elapsed() < limit,
            "{what}: alpha's in-flight place still taken after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HTTP/1.1 through a 4 KiB receive buffer, read no further than the
/// head: alpha's place is held until `SEND`, then freed and the
/// connection closed with the response cut.
async fn stalled_http1(pki: &Pki) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = tokio::time::timeout(STEP, socket.connect(LISTEN))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut conn = RawConn::over(tcp, "alpha.example", &pki.alpha).await;
    conn.send(
        format!("GET /big/{STALLED_BYTES} HTTP/1.1\r\nHost: alpha.example\r\n\r\n").as_bytes(),
    )
    .await;
    let (status, headers) = conn.head().await;
    let stalled = Instant::now();
    assert_eq!(status, 200, "{headers:?}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        alpha_probe(pki).await,
        StatusCode::TOO_MANY_REQUESTS,
        "HTTP/1.1: the stalled response holds alpha's one place"
    );
    let freed = alpha_place_freed(pki, stalled, "HTTP/1.1").await;
    assert!(
        near(freed, SEND),
        "HTTP/1.1: freed after {freed:?}, not {SEND:?}"
    );

    // lbd closed the connection: what the kernel buffered still comes,
    // then the end, short of the whole body.
    let (_, bytes) = conn
        .ends_within(Duration::from_secs(10))
        .await
        .expect("HTTP/1.1: the stalled connection is closed");
    assert!(
        bytes < STALLED_BYTES,
        "HTTP/1.1: the whole response ({bytes} bytes) still arrived"
    );
}

/// h2 with a zero stream window, PINGs keeping the connection busy: the
/// stream is abandoned at `SEND` (alpha's place freed), reset when the
/// window opens, and the connection keeps serving.
async fn stalled_h2(pki: &Pki) {
    let mut conn = H2Conn::open("alpha.example", &pki.alpha, 0).await;
    let resp = conn
        .start(
            h2_get("alpha.example", &format!("/big/{STALLED_BYTES}"))
                .body(())
                .expect("request"),
        )
        .await;
    let stalled = Instant::now();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body();

    // PINGs: the connection moves, only the stream does not.
    let mut pings = conn.pings.take().expect("PINGs");
    let pinger = tokio::spawn(async move {
        let until = Instant::now() + SEND + LATE + Duration::from_secs(4);
        while Instant::now() < until && pings.ping(h2::Ping::opaque()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        alpha_probe(pki).await,
        StatusCode::TOO_MANY_REQUESTS,
        "h2: the stalled stream holds alpha's one place"
    );
    let freed = alpha_place_freed(pki, stalled, "h2").await;
    assert!(near(freed, SEND), "h2: freed after {freed:?}, not {SEND:?}");

    // The window opens: the stream is reset, not resumed.
    conn.window
        .take()
        .expect("window sender")
        .send(65_535)
        .expect("the driver runs");
    match read_h2(body).await {
        Ok(b) => panic!("h2: the abandoned stream delivered {} bytes", b.len()),
        Err((e, bytes)) => {
            assert!(e.is_reset(), "h2: a stream reset, not {e}");
            assert!(bytes < STALLED_BYTES, "h2: {bytes} bytes before the reset");
        }
    }
    // The connection survives its stream.
    let (status, _) = conn
        .fetch(h2_get("alpha.example", "/").body(()).expect("request"))
        .await;
    assert_eq!(status, StatusCode::OK, "h2: the connection after the reset");
    pinger.abort();
    conn.driver.abort();
}

/// An h2 connection on beta that sends only PINGs (after one request, or
/// none at all): it idles out after `IDLE`; how long after the request
/// (or the handshake) that took.
async fn pinging_h2_idles_out(pki: &Pki, request_first: bool) -> Duration {
    let mut conn = H2Conn::open("beta.example", &pki.beta, 65_535).await;
    if request_first {
        let (status, _) = conn
            .fetch(h2_get("beta.example", "/").body(()).expect("request"))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let last = Instant::now();
    let limit = IDLE + LATE + Duration::from_secs(2);
    let mut pings = conn.pings.take().expect("PINGs");
    let mut driver = conn.driver;
    loop {
        tokio::select! {
            _ = &mut driver => return last.elapsed(),
            pong = pings.ping(h2::Ping::opaque()) => {
                if pong.is_err() {
                    return last.elapsed();
                }
            }
        }
        assert!(
            last.elapsed() < limit,
            "h2: still open after {limit:?} of PINGs"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A keep-alive HTTP/1.1 connection on gamma: still serving after an
/// idle pause longer than `HEADER`, closed at `IDLE`; returns how long
/// after its last response it was closed.
async fn keep_alive_gets_idle_time(pki: &Pki) -> Duration {
    let get = b"GET / HTTP/1.1\r\nHost: gamma.example\r\n\r\n";
    let mut conn = RawConn::open("gamma.example", &pki.gamma).await;
    conn.send(get).await;
    assert_eq!(conn.reply().await.status, 200);
    tokio::time::sleep(HEADER + Duration::from_secs(1)).await;
    conn.send(get).await;
    let r = conn.reply().await;
    assert_eq!(
        r.status,
        200,
        "the keep-alive connection after {:?} idle",
        HEADER + Duration::from_secs(1)
    );
    let last = Instant::now();
    let (_, bytes) = conn
        .ends_within(IDLE + LATE + Duration::from_secs(2))
        .await
        .expect("the idle keep-alive connection is closed");
    assert_eq!(bytes, 0, "nothing more after the last response");
    last.elapsed()
}

#[test]
fn a_client_that_stops_reading_loses_its_response_not_the_tenant() {
    let timeouts = format!(
        "timeouts = {{ connect = \"1s\", header = \"{}s\", idle = \"{}s\", request = \"10s\", send = \"{}s\" }}",
        HEADER.as_secs(),
        IDLE.as_secs(),
        SEND.as_secs()
    );
    let world = World::start_with(move |config| {
        let config = timeouts_everywhere(&config, &timeouts);
        config.replace(
            "name = \"alpha\"\n",
            "name = \"alpha\"\n[tenant.limits]\nmax_inflight_requests = 1\n",
        )
    });
    let pki = world.pki.clone();
    let stalls = world.spawn_client(move || async move {
        stalled_http1(&pki).await;
        stalled_h2(&pki).await;
    });
    let pki = world.pki.clone();
    let pings = world.spawn_client(move || async move {
        tokio::join!(
            pinging_h2_idles_out(&pki, true),
            pinging_h2_idles_out(&pki, false)
        )
    });
    let pki = world.pki.clone();
    let keep_alive =
        world.spawn_client(move || async move { keep_alive_gets_idle_time(&pki).await });

    let (after_request, from_start) = l7::world::join(pings);
    for (pinged, how) in [
        (after_request, "after a request"),
        (from_start, "from its start"),
    ] {
        assert!(
            near(pinged, IDLE),
            "an h2 connection sending only PINGs {how} closed after {pinged:?}, not its idle {IDLE:?}"
        );
    }
    let kept = l7::world::join(keep_alive);
    assert!(
        near(kept, IDLE),
        "a keep-alive connection closed {kept:?} after its last response, not after {IDLE:?}"
    );
    l7::world::join(stalls);
    for protocol in ["HTTP/1.1", "HTTP/2"] {
        let line = world.wait_for_log(&format!("client_send_timeout ({protocol})"), |l| {
            l["decision"] == "client_send_timeout" && l["protocol"] == protocol
        });
        assert!(
            line["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/big/")),
            "{line}"
        );
        assert!(
            line["bytes_out"]
                .as_u64()
                .is_some_and(|b| b < STALLED_BYTES as u64),
            "{line}"
        );
    }
}

// ---- 3. Client faults do not eject backends ----

#[test]
fn oversized_uploads_do_not_eject_the_tenants_backends() {
    const LIMIT: usize = 1024;
    let world = World::start_with(|config| {
        insert_after(
            &config,
            ALPHA_SITE_LINE,
            &format!("max_body_bytes = {LIMIT}"),
        )
    });
    let pki = world.pki.clone();
    world.client(move || async move {
        let chunk = "x".repeat(2 * LIMIT);
        let mut answers = Vec::new();
        for i in 0..12 {
            // Head and body in one write: lbd has the whole upload at once.
            let post = format!(
                "POST /upload/{i} HTTP/1.1\r\nHost: alpha.example\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {:x}\r\n{chunk}\r\n0\r\n\r\n",
                chunk.len()
            );
            answers.push(exchange("alpha.example", &pki.alpha, &post).await);
        }
        // Both backends of the pool still take their turns (checked
        // before the answers: the ejection is the harm).
        let mut conn = Conn::open(LISTEN, "alpha.example", &pki.alpha, Http::H1)
            .await
            .expect("alpha");
        let mut served = BTreeSet::new();
        for _ in 0..10 {
            served.insert(conn.fetch("alpha.example", "/", &[]).await.backend());
        }
        assert_eq!(
            served,
            BTreeSet::from(["a1".to_owned(), "a2".to_owned()]),
            "a backend was ejected for the client's uploads"
        );
        for (i, r) in answers.iter().enumerate() {
            assert_eq!(r.status, 413, "chunked POST {i} over max_body_bytes: {r}");
            assert_eq!(r.error(), "body_too_large", "{r}");
        }
    });
    let refused = world
        .access_log()
        .into_iter()
        .filter(|l| l["status"] == 413)
        .count();
    assert_eq!(refused, 12, "each oversized upload is logged as a 413");
}

// ---- 4. Upgrades ----

#[test]
fn only_the_sites_upgrades_are_tunnelled() {
    /// alpha's idle timeout, which a tunnel gets.
    const TUNNEL_IDLE: Duration = Duration::from_secs(2);
    const MESSAGES: usize = 3;
    const MESSAGE_BYTES: usize = 10_000;
    let world = World::start_with(|config| {
        config.replace(
            "idle = \"30s\"",
            &format!("idle = \"{}s\"", TUNNEL_IDLE.as_secs()),
        )
    });
    let pki = world.pki.clone();
    world.client(move || async move {
        let mut conn = RawConn::open("alpha.example", &pki.alpha).await;
        for (upgrade, extra) in [
            (
                "h2c",
                "Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
            ),
            ("foo/2", "Connection: upgrade\r\n"),
        ] {
            conn.send(
                format!(
                    "GET /up HTTP/1.1\r\nHost: alpha.example\r\nUpgrade: {upgrade}\r\n{extra}\r\n"
                )
                .as_bytes(),
            )
            .await;
            let r = conn.reply().await;
            assert_eq!(r.status, 200, "Upgrade: {upgrade}: {r}");
            assert_eq!(r.header("upgrade"), None, "Upgrade: {upgrade}: {r}");
            for header in ["upgrade", "http2-settings"] {
                assert!(
                    r.seen(header).is_empty(),
                    "Upgrade: {upgrade}: the backend got {header}: {:?}",
                    r.seen(header)
                );
            }
            assert!(
                !r.seen("connection")
                    .iter()
                    .any(|c| c.to_ascii_lowercase().contains("upgrade")),
                "{r}"
            );
        }
        // Still HTTP/1.1 on the same connection, not a tunnel.
        conn.send(b"GET /after HTTP/1.1\r\nHost: alpha.example\r\n\r\n")
            .await;
        let r = conn.reply().await;
        assert_eq!(r.path(), "/after", "{r}");
    });

    let bytes = |direction: &str| {
        format!("lb_l7_bytes_total{{tenant=\"alpha\",direction=\"{direction}\"}}")
    };
    let before_in = world.wait_for_metric(&bytes("in"), |_| true);
    let before_out = world.wait_for_metric(&bytes("out"), |_| true);

    let pki = world.pki.clone();
    let idled = world.client(move || async move {
        let tls = tls_connect(LISTEN, "alpha.example", &pki.alpha, H1)
            .await
            .expect("TLS for the WebSocket");
        let (mut ws, resp) = tokio_tungstenite::client_async("wss://alpha.example/ws", tls)
            .await
            .expect("WebSocket handshake through lbd");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        for i in 0..MESSAGES {
            let text = format!("{i}").repeat(MESSAGE_BYTES);
            ws.send(Message::text(text.clone())).await.expect("sending");
            let back = tokio::time::timeout(STEP, ws.next())
                .await
                .expect("an echo in time")
                .expect("an echo")
                .expect("a message");
            assert_eq!(back.into_text().expect("text").as_str(), text);
        }
        let last = Instant::now();
        let end = tokio::time::timeout(TUNNEL_IDLE + Duration::from_secs(4), ws.next())
            .await
            .expect("the idle tunnel is closed");
        assert!(
            !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
            "{end:?}"
        );
        last.elapsed()
    });
    assert!(
        near(idled, TUNNEL_IDLE),
        "the WebSocket idled out after {idled:?}, not alpha's idle {TUNNEL_IDLE:?}"
    );
    // Frames add a few bytes to each message.
    let carried = f64::from(u32::try_from(MESSAGES * MESSAGE_BYTES).expect("a small count"));
    world.wait_for_metric(&bytes("in"), |v| v >= before_in + carried);
    world.wait_for_metric(&bytes("out"), |v| v >= before_out + carried);
}

// ---- 5. Forwarding headers ----

#[test]
fn forwarding_headers_from_the_client_never_reach_the_backend() {
    /// What lbd must never pass on from a client.
    const FORGED: [&str; 5] = [
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
        "forwarded",
    ];
    let world = World::start();
    let client_ip = world.client_ip().to_string();
    let pki = world.pki.clone();
    world.client(move || async move {
        let check = |echo: &serde_json::Value, how: &str| {
            for name in FORGED {
                assert!(
                    client::echoed(echo, name).is_empty(),
                    "{how}: {name} reached the backend: {echo}"
                );
            }
            assert_eq!(
                client::echoed(echo, "x-forwarded-for"),
                [client_ip.as_str()],
                "{how}"
            );
            assert_eq!(
                client::echoed(echo, "x-forwarded-proto"),
                ["https"],
                "{how}"
            );
            assert_eq!(client::echoed(echo, "x-tenant-id"), ["alpha"], "{how}");
        };
        // HTTP/1.1, odd cases, repeated, and named in Connection (which
        // must not remove the proxy's own).
        let r = exchange(
            "alpha.example",
            &pki.alpha,
            "GET / HTTP/1.1\r\nHost: alpha.example\r\n\
             X-Forwarded-Host: evil.example\r\nx-forwarded-host: evil2.example\r\n\
             X-FORWARDED-PORT: 8443\r\nX-Forwarded-Prefix: /admin\r\n\
             X-Real-IP: 6.6.6.6\r\nX-Real-Ip: 7.7.7.7\r\n\
             Forwarded: for=6.6.6.6;host=evil.example;proto=http\r\n\
             X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: http\r\n\
             Connection: keep-alive, X-Forwarded-For, X-Forwarded-Proto\r\n\r\n",
        )
        .await;
        check(&r.json(), "HTTP/1.1");

        // h2.
        let mut conn = Conn::open(LISTEN, "alpha.example", &pki.alpha, Http::H2)
            .await
            .expect("alpha over h2");
        let mut headers: Vec<(&str, &str)> = FORGED.iter().map(|n| (*n, "6.6.6.6")).collect();
        headers.push(("x-forwarded-for", "6.6.6.6"));
        headers.push(("x-forwarded-proto", "http"));
        let r = conn.fetch("alpha.example", "/", &headers).await;
        check(&r.json(), "h2");
    });
}

// ---- 6. Host disagreement ----

#[test]
fn hosts_that_disagree_are_refused() {
    let world = World::start();
    let pki = world.pki.clone();
    world.client(move || async move {
        for (what, request, code) in [
            (
                "absolute form of another host",
                "GET https://api.alpha.example/ HTTP/1.1\r\nHost: beta.example\r\n\r\n",
                "host_mismatch",
            ),
            (
                "absolute form of another port",
                "GET https://alpha.example:8443/ HTTP/1.1\r\nHost: alpha.example\r\n\r\n",
                "host_mismatch",
            ),
            (
                "two Host headers",
                "GET / HTTP/1.1\r\nHost: alpha.example\r\nHost: beta.example\r\n\r\n",
                "duplicate_host",
            ),
            (
                "the same Host twice",
                "GET / HTTP/1.1\r\nHost: alpha.example\r\nHost: alpha.example\r\n\r\n",
                "duplicate_host",
            ),
        ] {
            let r = exchange("alpha.example", &pki.alpha, request).await;
            assert_eq!(r.status, 400, "{what}: {r}");
            assert_eq!(r.error(), code, "{what}: {r}");
        }
        // Forms that agree are served, and the backend sees the host that
        // was checked (and routed on: api.alpha.example is pool api, a3).
        let r = exchange(
            "alpha.example",
            &pki.alpha,
            "GET https://api.alpha.example/x HTTP/1.1\r\nHost: api.alpha.example:443\r\n\r\n",
        )
        .await;
        assert_eq!(r.backend(), "a3", "{r}");
        assert_eq!(r.seen("host"), ["api.alpha.example:443"], "{r}");

        let mut conn = H2Conn::open("alpha.example", &pki.alpha, 65_535).await;
        let (status, body) = conn
            .fetch(
                h2_get("alpha.example", "/")
                    .header("host", "beta.example")
                    .body(())
                    .expect("request"),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "h2 :authority != host");
        let error: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(error["error"], "host_mismatch", "{error}");
        let (status, body) = conn
            .fetch(h2_get("api.alpha.example", "/").body(()).expect("request"))
            .await;
        assert_eq!(status, StatusCode::OK);
        let echo: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(echo["backend"], "a3", "{echo}");
        assert_eq!(
            client::echoed(&echo, "host"),
            ["api.alpha.example"],
            "{echo}"
        );
    });
}

// ---- 7. Paths ----

#[test]
fn dot_segments_and_encoded_slashes_do_not_dodge_routes() {
    let world = World::start_with(|config| {
        let only_public = "routes = [ { path_prefix = \"/public\", pool = \"web\" } ]";
        with_alpha_sites(
            &config,
            &format!(
                "{}\n{}",
                alpha_site("files.alpha.example", only_public),
                alpha_site(
                    "slashes.alpha.example",
                    &format!("{only_public}\nallow_encoded_slashes = true")
                )
            ),
        )
    });
    let pki = world.pki.clone();
    world.client(move || async move {
        let get = |host: &str, path: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        };
        let files = "files.alpha.example";
        // Dot-segments, plain or percent-encoded, do not climb out of
        // /public into a path no route allows.
        for path in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
            "/public/a/../../admin",
            "/admin",
        ] {
            let r = exchange(files, &pki.alpha, &get(files, path)).await;
            assert_eq!(r.status, 404, "{path}: {r}");
            assert_eq!(r.error(), "no_route", "{path}: {r}");
        }
        // What the backend receives is the normalised path.
        for (path, seen_as) in [
            ("/public/a", "/public/a"),
            ("/public/./x/../b?q=1", "/public/b?q=1"),
            ("/public/%61%62c", "/public/abc"),
            ("/../public/a", "/public/a"),
            ("/%2e%2e/public/a", "/public/a"),
            ("/public/%7euser", "/public/~user"),
        ] {
            let r = exchange(files, &pki.alpha, &get(files, path)).await;
            assert_eq!(r.path(), seen_as, "{path}: {r}");
        }
        for path in [
            "/public/a%2Fb",
            "/public/a%2fb",
            "/public/..%2Fadmin",
            "/public/a%5Cb",
        ] {
            let r = exchange(files, &pki.alpha, &get(files, path)).await;
            assert_eq!(r.status, 400, "{path}: {r}");
            assert_eq!(r.error(), "encoded_slash", "{path}: {r}");
        }
        // A site that allows them passes them on encoded, but still
        // removes dot-segments first.
        let slashes = "slashes.alpha.example";
        let r = exchange(slashes, &pki.alpha, &get(slashes, "/public/a%2fb")).await;
        assert_eq!(r.path(), "/public/a%2Fb", "{r}");
        let r = exchange(slashes, &pki.alpha, &get(slashes, "/public/%2e%2e/admin")).await;
        assert_eq!(r.status, 404, "{r}");

        // h2's :path is normalised the same way.
        let mut conn = H2Conn::open(files, &pki.alpha, 65_535).await;
        let (status, _) = conn
            .fetch(h2_get(files, "/public/../admin").body(()).expect("request"))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "h2 /public/../admin");
        let (status, body) = conn
            .fetch(h2_get(files, "/public/%2e/a").body(()).expect("request"))
            .await;
        assert_eq!(status, StatusCode::OK);
        let echo: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(echo["path"], "/public/a", "{echo}");
    });
}

// ---- 8. An absurd timeout ----

#[test]
fn check_refuses_an_absurd_timeout() {
    const LBD: &str = env!("CARGO_BIN_EXE_lbd");
    let dir = std::env::temp_dir().join(format!("lb-hostile-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    // Removed on drop, also when an assertion fails.
    let _dir = l7::daemon::WorkDir(dir.clone());
    let config = |key: &str, value: &str| {
        format!(
            "[node]\ninterface = \"eth0\"\n\n[[tenant]]\nname = \"acme\"\n[[tenant.pool]]\n\
             name = \"web\"\nbackends = [ {{ address = \"10.0.0.1\", port = 8080 }} ]\n\
             [[tenant.l7]]\nlisten = \"127.0.0.1:8080\"\nprotocol = \"http\"\n\
             routes = [ {{ path_prefix = \"/\", pool = \"web\" }} ]\n\
             timeouts = {{ {key} = \"{value}\" }}\n"
        )
    };
    let check = |text: &str| {
        let path = dir.join("lb.toml");
        std::fs::write(&path, text).expect("lb.toml");
        Command::new(LBD)
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .expect("running lbd --check")
    };
    for key in ["connect", "header", "idle", "request", "send"] {
        let out = check(&config(key, "24h"));
        assert!(out.status.success(), "{key} = 24h refused: {out:?}");

        let text = config(key, "18446744073709551615s");
        let out = check(&text);
        assert_eq!(out.status.code(), Some(2), "{key}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        // The file and line of `timeouts`, the key, the bound.
        let line = 1 + text
            .lines()
            .position(|l| l.starts_with("timeouts = "))
            .expect("the timeouts line");
        assert!(
            err.contains(&format!("lb.toml:{line}:")),
            "{key}: not at lb.toml:{line}: {err}"
        );
        assert!(
            err.contains(&format!("timeouts.{key}")),
            "{key}: the key is not named: {err}"
        );
        assert!(
            err.contains("must be between 1ms and 24h") && err.contains("is too long"),
            "{key}: no bound: {err}"
        );
    }
}
