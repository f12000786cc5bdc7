//! The test client, run inside the client namespace: TLS to the listener
//! with a chosen SNI, trust anchor and ALPN, then HTTP/1.1 or h2 (hyper),
//! or a WebSocket.

use std::{io, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::certs;

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The HTTP version a connection negotiates by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http {
    H1,
    H2,
}

impl Http {
    fn alpn(self) -> &'static [u8] {
        match self {
            Http::H1 => b"http/1.1",
            Http::H2 => b"h2",
        }
    }
}

/// Connects to `addr` and completes a TLS handshake for `sni`, trusting
/// only `ca`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(certs::client_config(ca, alpn))
        .connect(name, tcp)
        .await
}

/// The rustls error inside a failed handshake's I/O error.
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref()
}

/// The leaf certificate the server presented.
pub fn peer_leaf(tls: &TlsStream) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
}

/// The values of request header `name` in a backend's echo (its JSON
/// `headers`).
pub fn echoed(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A response, read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The backend that answered (from its echo).
    pub fn backend(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "{self}");
        self.json()["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("no backend in {self}"))
            .to_owned()
    }

    /// The values of request header `name` as the backend received it.
    pub fn seen(&self, name: &str) -> Vec<String> {
        echoed(&self.json(), name)
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} {:?} {}",
            self.status,
            self.version,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// One client connection (keep-alive for HTTP/1.1, multiplexed for h2).
pub struct Conn {
    sender: Sender,
    http: Http,
    /// The leaf certificate the server presented.
    pub leaf: CertificateDer<'static>,
    /// The client's own address.
    pub local: SocketAddr,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// A TLS connection for `sni` trusting `ca`, speaking `http` (which the
    /// server must have chosen by ALPN).
    pub async fn open(
        addr: SocketAddr,
        sni: &str,
        ca: &CertificateDer<'static>,
        http: Http,
    ) -> io::Result<Conn> {
        let tls = tls_connect(addr, sni, ca, &[http.alpn()]).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(
            alpn.as_deref(),
            Some(http.alpn()),
            "ALPN: the listener must choose what the client offered"
        );
        let leaf = peer_leaf(&tls);
        let local = tls.get_ref().0.local_addr()?;
        let io = TokioIo::new(tls);
        let sender = match http {
            Http::H1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(io::Error::other)?;
                tokio::spawn(conn.with_upgrades());
                Sender::H1(sender)
            }
            Http::H2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(io::Error::other)?;
                tokio::spawn(conn);
                Sender::H2(sender)
            }
        };
        Ok(Conn {
            sender,
            http,
            leaf,
            local,
        })
    }

    /// A GET of `path` on `host` with extra `headers`.
    pub fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
        let mut req = request(self.http, host, path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(Full::new(Bytes::new())).expect("request")
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> hyper::Result<Reply> {
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// [`Conn::get`] then [`Conn::send`], panicking on a transport error.
    pub async fn fetch(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let req = self.get(host, path, headers);
        self.send(req)
            .await
            .unwrap_or_else(|e| panic!("GET https://{host}{path}: {e:?}"))
    }
}

/// A request builder for `host` and `path`: h2 carries the host in the
/// URI (`:authority`), HTTP/1.1 in the `Host` header.
pub fn request(http: Http, host: &str, path: &str) -> http::request::Builder {
    match http {
        Http::H1 => Request::get(path).header(http::header::HOST, host),
        Http::H2 => Request::get(format!("https://{host}{path}")).version(Version::HTTP_2),
    }
}

/// A GET on a new connection.
pub async fn get(
    addr: SocketAddr,
    host: &str,
    ca: &CertificateDer<'static>,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut conn = Conn::open(addr, host, ca, Http::H1)
        .await
        .unwrap_or_else(|e| panic!("connecting to {host} at {addr}: {e}"));
    conn.fetch(host, path, headers).await
}

/// Opens a WebSocket to `wss://host/path` (HTTP/1.1 upgrade), sends each
/// of `messages` and returns what came back for each.
pub async fn websocket_echo(
    addr: SocketAddr,
    host: &str,
    ca: &CertificateDer<'static>,
    path: &str,
    messages: &[&str],
) -> Vec<String> {
    let tls = tls_connect(addr, host, ca, &[b"http/1.1"])
        .await
        .expect("TLS for the WebSocket");
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{host}{path}"), tls)
        .await
        .expect("WebSocket handshake through lbd");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut echoed = Vec::new();
    for m in messages {
        ws.send(Message::text(*m)).await.expect("sending");
        let back = ws
            .next()
            .await
            .expect("an answer before the stream ends")
            .expect("a message");
        echoed.push(back.into_text().expect("text").to_string());
    }
    let _ = ws.close(None).await;
    echoed
}

/// hyper-util's pooled client, with TLS to the listener.
pub type Pooled = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A pooled hyper-util client (the kind that retries a request whose
/// pooled connection closed before it was sent) that presents SNI `sni`
/// and trusts only `ca`, speaking `http`. Requests name the listener by
/// address (`https://ADDR/...`, no resolver involved); HTTP/1.1 requests
/// need a `Host` header.
pub fn pooled(sni: &str, ca: &CertificateDer<'static>, http: Http) -> Pooled {
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(certs::client_config_no_alpn(ca)))
        .https_only()
        .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    let connector = match http {
        Http::H1 => builder.enable_http1().build(),
        Http::H2 => builder.enable_http2().build(),
    };
    let mut client = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    client.http2_only(http == Http::H2);
    client.build(connector)
}
