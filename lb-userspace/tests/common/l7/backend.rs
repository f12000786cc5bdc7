//! Backend servers, each on its own thread inside a backend namespace.
//!
//! Every backend speaks HTTP/1.1 and h2 (hyper's auto server) and answers
//! a request with a JSON echo of what it received: its own name, the peer
//! it believes it talks to, the method, path, HTTP version and headers.
//! `/healthz` answers `ok` (for `lbd`'s health checks),
//! `/delay/MS` answers after MS milliseconds, `/big/BYTES` answers BYTES
//! bytes of `x` (at most [`MAX_BIG`]; for clients that stop reading), and
//! a WebSocket upgrade is accepted and echoes every message. A backend may
//! terminate TLS itself, optionally after reading a PROXY protocol v2
//! header, whose source address then becomes the peer it reports.
//!
//! [`Backend::stop`] drops the server's runtime: the listening socket and
//! every connection close, as when a backend process dies.

use std::{
    convert::Infallible,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb_tests::netns::enter_netns_current_thread;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role},
};

/// The largest `/big/BYTES` body.
const MAX_BIG: usize = 64 << 20;

/// The PROXY protocol v2 signature.
const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What a backend speaks before HTTP.
pub enum Front {
    /// Plain HTTP/1.1 or h2 with prior knowledge.
    Plain,
    /// TLS, terminated by the backend with its own certificate.
    Tls(Arc<rustls::ServerConfig>),
    /// A PROXY protocol v2 header, then TLS as [`Front::Tls`].
    ProxyV2Tls(Arc<rustls::ServerConfig>),
}

/// A running backend; stopped on drop.
pub struct Backend {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What every request of a backend shares.
struct Shared {
    name: String,
}

/// What one connection knows.
struct Peer {
    /// The client's address as the backend believes it: the TCP peer, or
    /// the PROXY header's source.
    addr: SocketAddr,
    /// Whether the backend terminated TLS on this connection.
    tls: bool,
}

impl Peer {
    fn new(addr: SocketAddr, tls: bool) -> Peer {
        Peer { addr, tls }
    }
}

impl Backend {
    /// Starts a backend named `name` listening on `bind` inside the network
    /// namespace at `ns`; returns once it listens.
    pub fn start(ns: &Path, bind: SocketAddr, name: &str, front: Front) -> Backend {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let (stop_tx, stop_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
        });
        let ns = ns.to_path_buf();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                enter_netns_current_thread(&ns).expect("entering the backend's namespace");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("backend runtime");
                rt.block_on(accept_loop(bind, front, shared, ready_tx, stop_rx));
                // Dropping the runtime drops every connection task, which
                // closes their sockets.
                drop(rt);
            })
            .expect("spawning a backend thread");
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("backend {name} cannot listen on {bind}: {e}"),
            Err(e) => panic!("backend {name} did not start: {e}"),
        }
        Backend {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops the server and closes every connection; returns when they are
    /// closed.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shut_down();
    }
}

async fn accept_loop(
    bind: SocketAddr,
    front: Front,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match TcpListener::bind(bind).await {
        Ok(l) => {
            let _ = ready.send(Ok(()));
            l
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let front = Arc::new(front);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    tokio::spawn(connection(stream, peer, Arc::clone(&front), Arc::clone(&shared)));
                }
            }
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    front: Arc<Front>,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let tls =
        |config: &Arc<rustls::ServerConfig>| tokio_rustls::TlsAcceptor::from(Arc::clone(config));
    match &*front {
        Front::Plain => serve(stream, Peer::new(peer, false), shared).await,
        Front::Tls(config) => {
            if let Ok(stream) = tls(config).accept(stream).await {
                serve(stream, Peer::new(peer, true), shared).await;
            }
        }
        Front::ProxyV2Tls(config) => {
            let Ok(source) = read_proxy_v2(&mut stream).await else {
                return;
            };
            if let Ok(stream) = tls(config).accept(stream).await {
                serve(stream, Peer::new(source, true), shared).await;
            }
        }
    }
}

/// Reads a PROXY protocol v2 header (PROXY command, TCP over IPv4 or IPv6)
/// and returns its source address.
async fn read_proxy_v2(stream: &mut TcpStream) -> io::Result<SocketAddr> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut head = [0_u8; 16];
    stream.read_exact(&mut head).await?;
    if head[..12] != PROXY_V2_SIGNATURE || head[12] != 0x21 {
        return Err(bad("not a PROXY v2 PROXY header"));
    }
    let mut body = vec![0; usize::from(u16::from_be_bytes([head[14], head[15]]))];
    stream.read_exact(&mut body).await?;
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match head[13] {
        0x11 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(SocketAddr::new(IpAddr::V4(ip), port(8)))
        }
        0x21 if body.len() >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().map_err(|_| bad("short"))?;
            Ok(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port(32),
            ))
        }
        _ => Err(bad("not TCP over IPv4 or IPv6")),
    }
}

async fn serve<S>(io: S, peer: Peer, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let service = hyper::service::service_fn(move |req| {
        let peer = Arc::clone(&peer);
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(answer(req, &peer, &shared).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

async fn answer(req: Request<Incoming>, peer: &Peer, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return Response::new(Full::new(Bytes::from_static(b"ok")));
    }
    if is_websocket(&req) {
        return websocket_echo(req);
    }
    if path == "/upload" {
        // Reads the whole body first, as an application that takes
        // uploads does (the others answer without reading it).
        use http_body_util::BodyExt as _;
        let read = req.into_body().collect().await.map(|b| b.to_bytes().len());
        let echo = serde_json::json!({ "backend": shared.name, "body_bytes": read.ok() });
        return Response::new(Full::new(Bytes::from(echo.to_string())));
    }
    if let Some(n) = path
        .strip_prefix("/big/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header("x-backend", &shared.name)
            .body(Full::new(Bytes::from(vec![b'x'; n.min(MAX_BIG)])))
            .expect("big response");
    }
    if let Some(ms) = path.strip_prefix("/delay/").and_then(|ms| ms.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<serde_json::Value> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into())
            .collect();
        headers.insert(name.as_str().to_owned(), values.into());
    }
    let echo = serde_json::json!({
        "backend": shared.name,
        "peer": peer.addr.to_string(),
        "tls": peer.tls,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-backend", &shared.name)
        .body(Full::new(Bytes::from(echo.to_string())))
        .expect("echo response")
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Accepts the upgrade and echoes every text or binary message until the
/// client closes.
fn websocket_echo(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"no key")));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(Full::new(Bytes::new()))
        .expect("101 response")
}
