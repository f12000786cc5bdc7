//! Connection caps counted from `accept`, before any tenant is known (issue
//! 10, item 8), and a plain keep-alive connection that switches tenants.
//!
//! * `a_source_over_its_cap_is_closed_at_accept_and_others_are_served`:
//!   with `max_connections_per_source = 3`, a fourth connection from one
//!   loopback address is closed at once without a byte (it has not sent
//!   any), while another address is served; a closed connection gives its
//!   place back; the refusals are counted.
//! * `the_node_cap_holds_across_sources`: with `node.max_connections = 4`,
//!   the fifth open connection is closed whatever its source.
//! * `a_keep_alive_connection_stays_with_its_first_tenant`: on a plain
//!   HTTP listener shared by two tenants (identified by Host), a second
//!   request for the other tenant on the same connection gets 421; the
//!   connection counts against its first tenant only.
//!
//! The L7 tier runs in-process on loopback addresses (127.0.0.0/8 is all
//! on `lo`, so each address is a source of its own); the backend is a
//! loopback hyper server. No root needed.

use std::{
    collections::{BTreeSet, HashMap},
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use lb::{config, l7::L7};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

/// The longest any step may take.
const STEP: Duration = Duration::from_secs(10);

/// A backend that answers every request with `name`.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the backend");
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        name.as_bytes(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A free loopback port for the listener.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address")
}

/// Two tenants on one plain listener, `acme.example` and `globex.example`.
fn config(
    listen: SocketAddr,
    a: SocketAddr,
    b: SocketAddr,
    node: &str,
    listener: &str,
) -> config::Config {
    let text = format!(
        r#"[node]
interface = "lo"
access_log = "off"
{node}

[[tenant]]
name = "acme"
[[tenant.pool]]
name = "web"
backends = [ {{ address = "{a_ip}", port = {a_port} }} ]
[[tenant.l7]]
listen = "{listen}"
protocol = "http"
hosts = ["acme.example"]
routes = [ {{ path_prefix = "/", pool = "web" }} ]

[[tenant]]
name = "globex"
[[tenant.pool]]
name = "web"
backends = [ {{ address = "{b_ip}", port = {b_port} }} ]
[[tenant.l7]]
listen = "{listen}"
protocol = "http"
hosts = ["globex.example"]
routes = [ {{ path_prefix = "/", pool = "web" }} ]

[[listener]]
address = "{listen}"
{listener}
"#,
        a_ip = a.ip(),
        a_port = a.port(),
        b_ip = b.ip(),
        b_port = b.port(),
    );
    config::parse(&text, "lb.toml").unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// Starts the L7 tier of a two-tenant config.
async fn start(node: &str, listener: &str) -> (L7, SocketAddr) {
    let listen = free_port();
    let a = backend("acme").await;
    let b = backend("globex").await;
    let config = config(listen, a, b, node, listener);
    let l7 = L7::start(&config, &BTreeSet::new(), HashMap::new(), false).expect("L7 starts");
    (l7, listen)
}

/// A connection to `listen` from `127.0.0.<last>`.
async fn connect_from(last: u8, listen: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
            0,
        ))
        .expect("bind a loopback source");
    tokio::time::timeout(STEP, socket.connect(listen))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// One keep-alive GET of `host`: the status and body.
async fn get(stream: &mut TcpStream, host: &str) -> Result<(u16, String), String> {
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(STEP, stream.read(&mut buf))
            .await
            .map_err(|_| "no answer in time".to_owned())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&got)));
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| format!("no content-length in {head:?}"))?;
        if body.len() >= length {
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line in {head:?}"))?;
            return Ok((status, body[..length].to_owned()));
        }
    }
}

/// Whether the server closes `stream` without sending a byte.
async fn closed_at_once(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(STEP, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Connections closed at accept, all listeners.
fn refused(l7: &L7) -> u64 {
    l7.listener_stats()
        .iter()
        .map(|(_, s)| {
            s.refused_connections
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum()
}

#[tokio::test]
async fn a_source_over_its_cap_is_closed_at_accept_and_others_are_served() {
    let (l7, listen) = start("", "max_connections_per_source = 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(2, listen).await;
        assert_eq!(
            get(&mut s, "acme.example").await,
            Ok((200, "acme".into())),
            "a connection within the cap"
        );
        held.push(s);
    }
    let mut fourth = connect_from(2, listen).await;
    assert!(
        closed_at_once(&mut fourth).await,
        "the fourth connection from 127.0.0.2 was not closed at accept"
    );
    let mut other = connect_from(3, listen).await;
    assert_eq!(
        get(&mut other, "acme.example").await,
        Ok((200, "acme".into())),
        "another source is not affected"
    );
    assert_eq!(refused(&l7), 1);

    // A closed connection gives its place back.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let mut again = connect_from(2, listen).await;
        if get(&mut again, "acme.example").await == Ok((200, "acme".into())) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_node_cap_holds_across_sources() {
    let (l7, listen) = start("max_connections = 4", "").await;
    let mut held = Vec::new();
    for last in 2..6 {
        let mut s = connect_from(last, listen).await;
        assert_eq!(
            get(&mut s, "globex.example").await,
            Ok((200, "globex".into()))
        );
        held.push(s);
    }
    let mut fifth = connect_from(9, listen).await;
    assert!(
        closed_at_once(&mut fifth).await,
        "a fifth connection over node.max_connections = 4 was served"
    );
    assert_eq!(refused(&l7), 1);
    assert_eq!(l7.open_connections(), 4);
}

#[tokio::test]
async fn a_keep_alive_connection_stays_with_its_first_tenant() {
    let (_l7, listen) = start("", "").await;
    let mut s = connect_from(2, listen).await;
    assert_eq!(get(&mut s, "acme.example").await, Ok((200, "acme".into())));
    let (status, body) = get(&mut s, "globex.example")
        .await
        .expect("an answer to the switch");
    assert_eq!(status, 421, "a switch of tenants was served: {body}");
    assert!(body.contains("misdirected"), "{body}");
    // The connection still serves its own tenant.
    assert_eq!(get(&mut s, "acme.example").await, Ok((200, "acme".into())));
    // And a connection of its own serves the other one.
    let mut t = connect_from(2, listen).await;
    assert_eq!(
        get(&mut t, "globex.example").await,
        Ok((200, "globex".into()))
    );
}
