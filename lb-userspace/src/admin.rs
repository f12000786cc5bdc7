//! The admin API: HTTP/1.1 and JSON on a Unix socket (mode 0600), and
//! optionally on TCP (over TLS with `node.admin_tls`) where every request
//! needs `Authorization: Bearer TOKEN`. The token must be at least
//! [`MIN_TOKEN_BYTES`] long and its file readable by its owner only.
//!
//! This module only speaks HTTP: it maps each route to an [`api::Request`],
//! sends it to the daemon as an [`api::Command`] on a channel and turns the
//! daemon's [`api::Response`] into the HTTP answer. It never touches the
//! maps or the configuration itself, so a request it refuses (bad token,
//! unknown route, malformed body) cannot change anything.
//!
//! The routes, their methods and what they answer are the table in the
//! README ("Admin API"); a test checks that table against [`route`].
//!
//! Every error is `{"error": "message"}` with a 4xx/5xx status: 400 for a
//! malformed body or query (the message names the field), 401 for a TCP
//! request without the right token, 404 for an unknown route or object, 405
//! for a method the route does not take (with `Allow`), 413 for a body over
//! [`MAX_BODY_BYTES`], 503 when the daemon does not answer within the reply
//! timeout (default [`REPLY_TIMEOUT`]), and whatever status the daemon's
//! [`ApiError`] carries.

use std::{
    convert::Infallible,
    io,
    net::{IpAddr, SocketAddr},
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileTypeExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderMap, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, de::DeserializeOwned};
use subtle::ConstantTimeEq as _;
use tokio::{
    net::{TcpListener, UnixListener, UnixSocket},
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
};
use tracing::{debug, info, warn};

use crate::{
    api::{self, ApiError, BackendSelector, Command, FlowFilter, Request},
    config::{self, BackendConf, Protocol},
};

/// How long the daemon gets to answer one request before the client gets
/// 503.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long a client gets to send a request's headers, and then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish their request when the server
/// stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors), so that the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Backlog of the listening sockets.
const BACKLOG: i32 = 128;
/// The shortest bearer token accepted (a token of 32 random bytes, or
/// `head -c 32 /dev/urandom | base64`, cannot be guessed).
pub const MIN_TOKEN_BYTES: usize = 32;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket's directory could not be created.
    #[error("creating {path}, the directory of the admin socket: {error}")]
    CreateDir { path: PathBuf, error: io::Error },
    /// A live process answers on the socket path.
    #[error(
        "another process is serving the admin socket {0} (is another lbd running? stop it, or \
         set another node.admin_socket)"
    )]
    InUse(PathBuf),
    /// Something other than a socket is at the socket path.
    #[error("{0} exists and is not a socket: remove it or set another node.admin_socket")]
    NotASocket(PathBuf),
    /// An I/O step on the Unix socket failed; `what` says which.
    #[error("admin socket {path}: {what}: {error}")]
    Unix {
        path: PathBuf,
        what: &'static str,
        error: io::Error,
    },
    /// The token file could not be read.
    #[error("reading the admin token file {path}: {error}")]
    TokenFile { path: PathBuf, error: io::Error },
    /// The token file holds nothing but whitespace.
    #[error(
        "the admin token file {0} is empty: put a long random secret in it, e.g. \
         `head -c 32 /dev/urandom | base64 > FILE`"
    )]
    EmptyToken(PathBuf),
    /// The token is shorter than [`MIN_TOKEN_BYTES`].
    #[error(
        "the admin token in {path} is {len} bytes long; it must be at least {MIN_TOKEN_BYTES}: \
         put a long random secret in it, e.g. `head -c 32 /dev/urandom | base64 > FILE`"
    )]
    ShortToken { path: PathBuf, len: usize },
    /// Users other than the file's owner may read the token file.
    #[error(
        "the admin token file {path} has mode {mode:04o}: group and others must not have any \
         access to it; run `chmod 600 {path}`",
        path = path.display()
    )]
    TokenFileMode { path: PathBuf, mode: u32 },
    /// The certificate or key of `node.admin_tls` cannot be used.
    #[error("node.admin_tls: {0}")]
    Tls(#[from] crate::l7::CertError),
    /// `node.admin_listen` without `node.admin_token_file`.
    #[error("node.admin_listen is set but node.admin_token_file is not: TCP needs a token")]
    NoTokenFile,
    /// The TCP listener could not be opened.
    #[error("admin API on TCP {addr}: {error}")]
    Tcp { addr: SocketAddr, error: io::Error },
}

/// The admin API's sockets, bound and listening but not yet served:
/// [`AdminListener::bind`] can run before the async runtime starts (so that
/// `lbd` fails early on a bad path or a busy port); clients that connect
/// before [`serve`] runs wait in the backlog.
pub struct AdminListener {
    /// Bound, mode 0600, listening; accepted by [`serve`].
    unix: Option<(UnixSocket, PathBuf)>,
    tcp: Option<(std::net::TcpListener, SocketAddr)>,
    token: Option<Token>,
    /// TLS on the TCP listener.
    tls: Option<tokio_rustls::TlsAcceptor>,
    reply_timeout: Duration,
}

impl std::fmt::Debug for AdminListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminListener")
            .field("unix", &self.unix)
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.is_some())
            .field("reply_timeout", &self.reply_timeout)
            .finish_non_exhaustive()
    }
}

impl AdminListener {
    /// Binds what `node` asks for: the Unix socket `admin_socket`, and the
    /// TCP listener `admin_listen` with the token read from
    /// `admin_token_file` when set, over TLS with `admin_tls`. A TCP listener on an address that is not
    /// loopback without TLS is logged as a warning.
    ///
    /// # Errors
    ///
    /// See [`AdminListener::unix`], [`AdminListener::with_tcp`] and
    /// [`AdminListener::with_tls`].
    pub fn bind(node: &config::Node) -> Result<Self, AdminError> {
        let tls = match &node.admin_tls {
            Some(files) => Some(tls_acceptor(files)?),
            None => None,
        };
        let listener = Self::unix(&node.admin_socket)?;
        let listener = match (node.admin_listen, node.admin_token_file.as_deref()) {
            (None, _) => return Ok(listener),
            (Some(addr), Some(token_file)) => listener.with_tcp(addr, token_file)?,
            (Some(_), None) => return Err(AdminError::NoTokenFile),
        };
        if let Some(tls) = tls {
            return Ok(listener.with_tls(tls));
        }
        if let Some(addr) = node.admin_listen.filter(|a| !a.ip().is_loopback()) {
            warn!(
                %addr,
                "the admin API listens on TCP beyond loopback without TLS: its bearer token and \
                 answers cross the network in clear; set node.admin_tls"
            );
        }
        Ok(listener)
    }

    /// Serves the TCP listener over TLS (see [`tls_acceptor`]).
    #[must_use]
    pub fn with_tls(mut self, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Binds the Unix socket at `path`: creates its directory, removes a
    /// stale socket left by a process that died (but refuses to replace a
    /// live one or a file that is not a socket), binds, sets mode 0600, and
    /// listens.
    ///
    /// # Errors
    ///
    /// When any of these steps fails; the error names the path.
    pub fn unix(path: &Path) -> Result<Self, AdminError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| AdminError::CreateDir {
                path: dir.to_owned(),
                error,
            })?;
        }
        remove_stale_socket(path)?;
        let unix_err = |what| {
            let path = path.to_owned();
            move |error| AdminError::Unix { path, what, error }
        };
        let socket = UnixSocket::new_stream().map_err(unix_err("creating the socket"))?;
        socket.bind(path).map_err(unix_err("binding"))?;
        // Connecting to a Unix socket needs write permission on its file,
        // checked once, at connect time: a connection made while the file
        // still had the umask's mode would stay open after a chmod. Nobody
        // can connect before `listen` (connect() gets ECONNREFUSED), so
        // setting 0600 between bind and listen leaves no window in which
        // another local user could reach the API.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(unix_err("setting mode 0600"))?;
        // Listen now, so that clients queue in the backlog from here on
        // (`serve` registers the socket with the runtime and accepts them).
        // SAFETY: listen(2) on a socket this function owns; no memory is
        // passed.
        let listened = unsafe { libc::listen(socket.as_raw_fd(), BACKLOG) };
        if listened != 0 {
            return Err(unix_err("listening")(io::Error::last_os_error()));
        }
        Ok(Self {
            unix: Some((socket, path.to_owned())),
            tcp: None,
            token: None,
            tls: None,
            reply_timeout: REPLY_TIMEOUT,
        })
    }

    /// Also serves TCP on `addr`; every request there must carry
    /// `Authorization: Bearer TOKEN` with the content of `token_file`
    /// (surrounding whitespace ignored).
    ///
    /// # Errors
    ///
    /// When the token file cannot be read, may be read by group or others,
    /// or holds a token shorter than [`MIN_TOKEN_BYTES`], or when the
    /// address cannot be bound.
    pub fn with_tcp(mut self, addr: SocketAddr, token_file: &Path) -> Result<Self, AdminError> {
        self.token = Some(Token::read(token_file)?);
        let tcp_err = |error| AdminError::Tcp { addr, error };
        let listener = std::net::TcpListener::bind(addr).map_err(tcp_err)?;
        listener.set_nonblocking(true).map_err(tcp_err)?;
        let local = listener.local_addr().map_err(tcp_err)?;
        self.tcp = Some((listener, local));
        Ok(self)
    }

    /// How long the daemon gets to answer one request (default
    /// [`REPLY_TIMEOUT`]).
    #[must_use]
    pub fn with_reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// The Unix socket's path.
    #[must_use]
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, p)| p.as_path())
    }

    /// The TCP listener's address (with the port the kernel chose for port
    /// 0).
    #[must_use]
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().map(|(_, a)| *a)
    }
}

/// Removes the socket file a dead process left at `path`. A socket that
/// accepts a connection belongs to a live server and is kept.
fn remove_stale_socket(path: &Path) -> Result<(), AdminError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(AdminError::Unix {
                path: path.to_owned(),
                what: "inspecting the existing file",
                error,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(AdminError::NotASocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(AdminError::InUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "removing the stale admin socket of a previous lbd");
            std::fs::remove_file(path).map_err(|error| AdminError::Unix {
                path: path.to_owned(),
                what: "removing the stale socket",
                error,
            })
        }
        Err(error) => Err(AdminError::Unix {
            path: path.to_owned(),
            what: "checking whether the existing socket is in use",
            error,
        }),
    }
}

/// The bearer token of the TCP listener.
struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    fn read(path: &Path) -> Result<Self, AdminError> {
        let failed = |error| AdminError::TokenFile {
            path: path.to_owned(),
            error,
        };
        let file = std::fs::File::open(path).map_err(failed)?;
        // The mode of the file opened, not of whatever the path names a
        // moment later.
        let mode = file.metadata().map_err(failed)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(AdminError::TokenFileMode {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        let text = io::read_to_string(file).map_err(failed)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(AdminError::EmptyToken(path.to_owned()));
        }
        if token.len() < MIN_TOKEN_BYTES {
            return Err(AdminError::ShortToken {
                path: path.to_owned(),
                len: token.len(),
            });
        }
        Ok(Self(token.as_bytes().to_vec()))
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`. The
    /// comparison takes the same time whatever the bytes (it only reveals
    /// whether the lengths match), so the token cannot be guessed byte by
    /// byte from response times.
    fn accepts(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or("missing Authorization header")?
            .as_bytes();
        let (scheme, presented) = match value.iter().position(|b| *b == b' ') {
            Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
            None => (value, &[][..]),
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err("the Authorization header is not `Bearer TOKEN`");
        }
        if bool::from(presented.ct_eq(&self.0)) {
            Ok(())
        } else {
            Err("wrong bearer token")
        }
    }
}

/// Checks the files of the TCP admin API that `node` names, as a start
/// would (`lbd --check`): the token file (owner-only mode, a token of at
/// least [`MIN_TOKEN_BYTES`]) and the `admin_tls` certificate and key.
/// Nothing is bound.
///
/// # Errors
///
/// The first problem found, saying what to fix.
pub fn check_files(node: &config::Node) -> Result<(), AdminError> {
    if node.admin_listen.is_none() {
        return Ok(());
    }
    let token_file = node
        .admin_token_file
        .as_deref()
        .ok_or(AdminError::NoTokenFile)?;
    Token::read(token_file)?;
    if let Some(files) = &node.admin_tls {
        tls_acceptor(files)?;
    }
    Ok(())
}

/// The TLS server of the TCP admin API: the certificate chain and key of
/// `files` (checked like a site's certificate: see
/// [`crate::l7::load_pair`]), TLS 1.2 and 1.3, ALPN `http/1.1`.
///
/// # Errors
///
/// When the files cannot be read or do not hold a matching certificate
/// and key.
///
/// # Panics
///
/// Only if rustls' ring provider lacked TLS 1.2 or 1.3, which it has.
pub fn tls_acceptor(files: &config::TlsFiles) -> Result<tokio_rustls::TlsAcceptor, AdminError> {
    let certified = crate::l7::load_pair(&files.cert, &files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("rustls' ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Sends `request` to the daemon and waits for its answer, at most
/// `timeout` (waiting for room in the channel included).
///
/// # Errors
///
/// The daemon's error, or 503 when the daemon is gone or too slow.
pub async fn ask(
    commands: &mpsc::Sender<Command>,
    request: Request,
    timeout: Duration,
) -> api::Response {
    let (reply, answer) = oneshot::channel();
    let exchange = async {
        commands
            .send(Command { request, reply })
            .await
            .map_err(|_| unavailable("lbd is shutting down (its command loop has stopped)"))?;
        answer
            .await
            .map_err(|_| ApiError::internal("lbd dropped the request without answering"))?
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(response) => response,
        Err(_) => Err(unavailable(format!(
            "lbd did not answer within {}; it may be busy or stuck (see its log)",
            config::format_duration(timeout)
        ))),
    }
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError {
        status: 503,
        message: message.into(),
    }
}

/// Serves the admin API on `listener` until `shutdown` completes, sending
/// each request to the daemon on `commands`. Then it stops accepting, lets
/// open connections finish their current request (at most 5 s), and removes
/// the socket file.
///
/// Must run inside a tokio runtime (it spawns one task per connection).
///
/// # Errors
///
/// When the bound sockets cannot start listening; errors of single
/// connections are logged, never returned.
pub async fn serve(
    listener: AdminListener,
    commands: mpsc::Sender<Command>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    let AdminListener {
        unix,
        tcp,
        token,
        tls,
        reply_timeout,
    } = listener;
    let unix = match unix {
        Some((socket, path)) => {
            // Already listening (see `AdminListener::unix`): this only
            // hands the socket to the runtime.
            let listener =
                socket
                    .listen(BACKLOG.unsigned_abs())
                    .map_err(|error| AdminError::Unix {
                        path: path.clone(),
                        what: "listening",
                        error,
                    })?;
            info!(path = %path.display(), "admin API listening");
            Some((listener, path))
        }
        None => None,
    };
    let tcp = match tcp {
        Some((listener, addr)) => {
            let listener =
                TcpListener::from_std(listener).map_err(|error| AdminError::Tcp { addr, error })?;
            if tls.is_some() {
                info!(%addr, "admin API listening on TCP with TLS (bearer token required)");
            } else {
                info!(%addr, "admin API listening on TCP (bearer token required)");
            }
            Some(listener)
        }
        None => None,
    };
    let handler = Arc::new(Admin {
        commands,
        token,
        reply_timeout,
    });
    let listeners = Listeners {
        unix: unix.as_ref().map(|(l, _)| l),
        tcp: tcp.as_ref(),
        tls: tls.as_ref(),
    };
    run(listeners, handler, shutdown).await;
    if let Some((_, path)) = unix
        && let Err(e) = std::fs::remove_file(&path)
    {
        debug!(path = %path.display(), error = %e, "removing the admin socket");
    }
    Ok(())
}

/// Binds the admin API as `config.node` says ([`AdminListener::bind`])
/// and serves it in a background task
/// ([`serve`]) until the daemon drops the receiving end of `commands`.
///
/// Must be called inside a tokio runtime.
///
/// # Errors
///
/// When the sockets cannot be bound (see [`AdminListener::bind`]).
pub fn spawn(
    config: &config::Config,
    commands: mpsc::Sender<Command>,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    let listener = AdminListener::bind(&config.node)?;
    let closed = commands.clone();
    Ok(tokio::spawn(async move {
        let stopped = async move { closed.closed().await };
        if let Err(e) = serve(listener, commands, stopped).await {
            tracing::error!(error = %e, "the admin API stopped");
        }
    }))
}

// ---- HTTP plumbing shared with `metrics` ----

/// An HTTP answer.
pub(crate) type HttpResponse = hyper::Response<Full<Bytes>>;

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peer {
    /// The Unix socket: its mode already limits who can connect.
    Unix,
    /// TCP, from this address.
    Tcp(SocketAddr),
}

/// Answers the requests of one server.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: hyper::Request<Incoming>,
        peer: Peer,
    ) -> impl Future<Output = HttpResponse> + Send;
}

/// The sockets one server accepts on.
pub(crate) struct Listeners<'a> {
    pub(crate) unix: Option<&'a UnixListener>,
    pub(crate) tcp: Option<&'a TcpListener>,
    /// TLS on `tcp`.
    pub(crate) tls: Option<&'a tokio_rustls::TlsAcceptor>,
}

/// Accepts connections until `shutdown`, each served by `handler` in its own
/// task; then lets open connections finish (at most [`DRAIN_TIMEOUT`]).
pub(crate) async fn run<H: Handler>(
    listeners: Listeners<'_>,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = accept_unix(listeners.unix) => match accepted {
                Ok(stream) => {
                    let io = TokioIo::new(stream);
                    connections.spawn(connection(io, handler.clone(), Peer::Unix, stop_rx.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "accepting on the Unix socket");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            accepted = accept_tcp(listeners.tcp) => match accepted {
                Ok((stream, addr)) => {
                    let peer = Peer::Tcp(addr);
                    let (handler, stop) = (handler.clone(), stop_rx.clone());
                    match listeners.tls {
                        None => {
                            connections.spawn(connection(TokioIo::new(stream), handler, peer, stop));
                        }
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            connections.spawn(async move {
                                match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await {
                                    Ok(Ok(tls)) => {
                                        connection(TokioIo::new(tls), handler, peer, stop).await;
                                    }
                                    Ok(Err(e)) => debug!(%addr, error = %e, "admin TLS handshake failed"),
                                    Err(_) => debug!(%addr, "admin TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "accepting on TCP");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            left = connections.len(),
            "closing connections still open after the drain timeout"
        );
        connections.shutdown().await;
    }
}

async fn accept_unix(listener: Option<&UnixListener>) -> io::Result<tokio::net::UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves one connection (HTTP/1.1, keep-alive) until the peer closes it or
/// the server stops.
async fn connection<I, H>(io: I, handler: Arc<H>, peer: Peer, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Handler,
{
    let service = service_fn(move |request| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.handle(request, peer).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(?peer, error = %e, "connection ended with an error");
    }
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> HttpResponse {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    body.push(b'\n');
    response(status, "application/json", body)
}

/// A plain-text answer.
pub(crate) fn text_response(status: StatusCode, content_type: &str, text: String) -> HttpResponse {
    response(status, content_type, text.into_bytes())
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> HttpResponse {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// `{"error": message}` with the error's status (500 if it is not an error
/// status).
pub(crate) fn error_response(e: &ApiError) -> HttpResponse {
    let status = StatusCode::from_u16(e.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &serde_json::json!({ "error": e.message }))
}

// ---- The admin API ----

struct Admin {
    commands: mpsc::Sender<Command>,
    token: Option<Token>,
    reply_timeout: Duration,
}

impl Handler for Admin {
    async fn handle(&self, request: hyper::Request<Incoming>, peer: Peer) -> HttpResponse {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let response = self.respond(request, peer).await;
        debug!(?peer, %method, %path, status = response.status().as_u16(), "admin request");
        response
    }
}

impl Admin {
    async fn respond(&self, request: hyper::Request<Incoming>, peer: Peer) -> HttpResponse {
        if let Peer::Tcp(addr) = peer {
            let verdict = match &self.token {
                Some(token) => token.accepts(request.headers()),
                None => Err("no token is configured"),
            };
            if let Err(why) = verdict {
                warn!(%addr, method = %request.method(), path = %request.uri().path(), why,
                      "admin request refused");
                let mut r = error_response(&ApiError {
                    status: 401,
                    message: format!(
                        "{why}: requests over TCP need `Authorization: Bearer TOKEN` with the \
                         token in node.admin_token_file"
                    ),
                });
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"lb\""),
                );
                return r;
            }
        }
        let route = match route(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        ) {
            Ok(route) => route,
            Err(Refusal::Error(e)) => return error_response(&e),
            Err(Refusal::MethodNotAllowed { allow }) => {
                let mut r = error_response(&ApiError {
                    status: 405,
                    message: format!(
                        "method {} is not allowed on {} (allowed: {allow})",
                        request.method(),
                        request.uri().path()
                    ),
                });
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                return r;
            }
        };
        let request = match route {
            Route::Healthz => {
                return text_response(StatusCode::OK, "text/plain", "ok\n".into());
            }
            Route::Readyz => {
                return match ask(&self.commands, Request::Status, self.reply_timeout).await {
                    Ok(_) => text_response(StatusCode::OK, "text/plain", "ok\n".into()),
                    Err(e) => error_response(&unavailable(format!("not ready: {}", e.message))),
                };
            }
            Route::Plain(request) => request,
            Route::WithBody(kind) => {
                let body = match read_body(request).await {
                    Ok(body) => body,
                    Err(e) => return error_response(&e),
                };
                match kind.request(&body) {
                    Ok(request) => request,
                    Err(e) => return error_response(&e),
                }
            }
        };
        match ask(&self.commands, request, self.reply_timeout).await {
            Ok(value) => json_response(StatusCode::OK, &value),
            Err(e) => error_response(&e),
        }
    }
}

/// Reads a request body of at most [`MAX_BODY_BYTES`] within
/// [`READ_TIMEOUT`].
async fn read_body(request: hyper::Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large = || ApiError {
        status: 413,
        message: format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(READ_TIMEOUT, body.collect()).await {
        Err(_) => Err(ApiError {
            status: 408,
            message: format!(
                "the request body did not arrive within {}",
                config::format_duration(READ_TIMEOUT)
            ),
        }),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// What the admin API makes of a request without asking the daemon: the
/// daemon request it would send (`None` for `/healthz` and `/readyz`), or
/// the error it answers itself (405 included). The fuzz targets' way in
/// ([`crate::fuzzing`]); [`Admin::respond`] does the same in steps.
pub(crate) fn parse_request(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Option<Request>, ApiError> {
    match route(method, path, query) {
        Ok(Route::Healthz | Route::Readyz) => Ok(None),
        Ok(Route::Plain(request)) => Ok(Some(request)),
        Ok(Route::WithBody(kind)) => kind.request(body).map(Some),
        Err(Refusal::Error(e)) => Err(e),
        Err(Refusal::MethodNotAllowed { allow }) => Err(ApiError {
            status: 405,
            message: format!("method {method} is not allowed on {path} (allowed: {allow})"),
        }),
    }
}

/// What a path and method resolve to.
#[derive(Debug, PartialEq)]
enum Route {
    Healthz,
    Readyz,
    /// Fully described by the path and query.
    Plain(Request),
    /// Needs the body.
    WithBody(BodyRoute),
}

/// Routes whose request is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyRoute {
    AddTenant,
    AddBackend,
    RemoveBackend,
    DrainBackend,
    EnableBackend,
    AddSni,
}

/// Why a path and method do not resolve.
#[derive(Debug, PartialEq)]
enum Refusal {
    Error(ApiError),
    MethodNotAllowed { allow: &'static str },
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Self::Error(e)
    }
}

/// Maps a method, path and query to a [`Route`].
fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Route, Refusal> {
    let segments = path_segments(path)?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let owned = |s: &str| s.to_owned();
    // (allowed methods, the route for this method if it is one of them)
    let (allow, found): (&'static str, Option<Route>) = match segs.as_slice() {
        ["healthz"] => ("GET", get(method, || Route::Healthz)),
        ["readyz"] => ("GET", get(method, || Route::Readyz)),
        ["status"] => ("GET", get(method, || Route::Plain(Request::Status))),
        ["tenants"] => (
            "GET, POST",
            match *method {
                Method::GET => Some(Route::Plain(Request::ListTenants)),
                Method::POST => Some(Route::WithBody(BodyRoute::AddTenant)),
                _ => None,
            },
        ),
        ["tenants", name] => (
            "GET, DELETE",
            match *method {
                Method::GET => Some(Route::Plain(Request::ShowTenant { name: owned(name) })),
                Method::DELETE => Some(Route::Plain(Request::RemoveTenant { name: owned(name) })),
                _ => None,
            },
        ),
        ["vips"] => ("GET", get(method, || Route::Plain(Request::ListVips))),
        ["pools"] => ("GET", get(method, || Route::Plain(Request::ListPools))),
        ["pools", tenant, pool] => (
            "GET",
            get(method, || {
                Route::Plain(Request::ShowPool {
                    tenant: owned(tenant),
                    pool: owned(pool),
                })
            }),
        ),
        ["backends"] => (
            "GET, POST, DELETE",
            match *method {
                Method::GET => Some(Route::Plain(Request::ListBackends)),
                Method::POST => Some(Route::WithBody(BodyRoute::AddBackend)),
                Method::DELETE => Some(Route::WithBody(BodyRoute::RemoveBackend)),
                _ => None,
            },
        ),
        ["backends", "drain"] => (
            "POST",
            post(method, || Route::WithBody(BodyRoute::DrainBackend)),
        ),
        ["backends", "enable"] => (
            "POST",
            post(method, || Route::WithBody(BodyRoute::EnableBackend)),
        ),
        ["backends", tenant, pool, address, rest @ ..] if rest.len() <= 1 => {
            if *method != Method::DELETE {
                return Err(Refusal::MethodNotAllowed { allow: "DELETE" });
            }
            let backend = path_selector(tenant, pool, address, rest.first().copied())?;
            (
                "DELETE",
                Some(Route::Plain(Request::RemoveBackend { backend })),
            )
        }
        ["stats"] => ("GET", get(method, || Route::Plain(Request::Stats))),
        ["flows"] => {
            if *method != Method::GET {
                return Err(Refusal::MethodNotAllowed { allow: "GET" });
            }
            let filter = flow_filter(query)?;
            ("GET", Some(Route::Plain(Request::Flows { filter })))
        }
        ["explain"] => {
            if *method != Method::GET {
                return Err(Refusal::MethodNotAllowed { allow: "GET" });
            }
            ("GET", Some(Route::Plain(explain(query)?)))
        }
        ["reload"] => ("POST", post(method, || Route::Plain(Request::Reload))),
        ["sni", rest @ ..] if rest.len() <= 1 => sni_route(method, rest.first().copied()),
        ["overrides"] => (
            "GET, DELETE",
            match *method {
                Method::GET => Some(Route::Plain(Request::ListOverrides)),
                Method::DELETE => Some(Route::Plain(Request::ClearOverrides)),
                _ => None,
            },
        ),
        _ => {
            return Err(Refusal::Error(ApiError::not_found(format!(
                "no route {path}; see the route table in the README (e.g. GET /status)"
            ))));
        }
    };
    found.ok_or(Refusal::MethodNotAllowed { allow })
}

/// `/sni` (list, add) and `/sni/{name}` (remove).
fn sni_route(method: &Method, name: Option<&str>) -> (&'static str, Option<Route>) {
    match name {
        None => (
            "GET, POST",
            match *method {
                Method::GET => Some(Route::Plain(Request::ListSni)),
                Method::POST => Some(Route::WithBody(BodyRoute::AddSni)),
                _ => None,
            },
        ),
        Some(name) => (
            "DELETE",
            (*method == Method::DELETE).then(|| {
                Route::Plain(Request::RemoveSni {
                    name: name.to_owned(),
                })
            }),
        ),
    }
}

/// `/backends/{tenant}/{pool}/{address}[/{port}]`.
fn path_selector(
    tenant: &str,
    pool: &str,
    address: &str,
    port: Option<&str>,
) -> Result<BackendSelector, ApiError> {
    Ok(BackendSelector {
        tenant: tenant.to_owned(),
        pool: pool.to_owned(),
        address: parse_ip(address, "address")?,
        port: port.map(|p| parse_port(p, "port")).transpose()?,
    })
}

fn get(method: &Method, route: impl FnOnce() -> Route) -> Option<Route> {
    (*method == Method::GET).then(route)
}

fn post(method: &Method, route: impl FnOnce() -> Route) -> Option<Route> {
    (*method == Method::POST).then(route)
}

/// The path's segments, percent-decoded; a trailing `/` is ignored.
fn path_segments(path: &str) -> Result<Vec<String>, ApiError> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let trimmed = trimmed.strip_prefix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    trimmed
        .split('/')
        .map(|s| {
            percent_decode(s, false)
                .ok_or_else(|| ApiError::bad_request(format!("bad percent-encoding in {path:?}")))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` as a space in queries); `None` when an
/// escape is malformed or the result is not UTF-8.
fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query's `name=value` pairs, decoded; only `allowed` names, each at
/// most once.
fn query_pairs(query: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let bad = || ApiError::bad_request(format!("bad percent-encoding in query part {part:?}"));
        let name = percent_decode(name, true).ok_or_else(bad)?;
        let value = percent_decode(value, true).ok_or_else(bad)?;
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {name:?} (accepted: {})",
                allowed.join(", ")
            )));
        }
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad_request(format!(
                "query parameter {name:?} is given twice"
            )));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

fn parse_query_value<T: FromStr>(name: &str, value: &str, expected: &str) -> Result<T, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid query parameter {name}={value:?}: expected {expected}"
        ))
    })
}

fn parse_ip(text: &str, field: &str) -> Result<IpAddr, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid {field} {text:?}: expected an IPv4 or IPv6 address"
        ))
    })
}

fn parse_port(text: &str, field: &str) -> Result<u16, ApiError> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ApiError::bad_request(format!(
            "invalid {field} {text:?}: expected a port from 1 to 65535"
        ))),
    }
}

/// `GET /flows?tenant=&vip=IP:PORT&backend=IP&limit=N`.
fn flow_filter(query: Option<&str>) -> Result<FlowFilter, ApiError> {
    let mut filter = FlowFilter::default();
    for (name, value) in query_pairs(query, &["tenant", "vip", "backend", "limit"])? {
        match name.as_str() {
            "tenant" => filter.tenant = Some(value),
            "vip" => {
                filter.vip = Some(parse_query_value(
                    &name,
                    &value,
                    "IP:PORT, like 203.0.113.10:80 or [2001:db8::1]:443",
                )?);
            }
            "backend" => {
                filter.backend = Some(parse_query_value(&name, &value, "an IP address")?);
            }
            _ => {
                let limit: usize = parse_query_value(&name, &value, "a positive number")?;
                if limit == 0 {
                    return Err(ApiError::bad_request(
                        "invalid query parameter limit=\"0\": expected a positive number",
                    ));
                }
                filter.limit = Some(limit);
            }
        }
    }
    Ok(filter)
}

/// `GET /explain?client=IP:PORT&vip=IP:PORT&protocol=tcp|udp`.
fn explain(query: Option<&str>) -> Result<Request, ApiError> {
    let (mut client, mut vip, mut protocol) = (None, None, Protocol::Tcp);
    for (name, value) in query_pairs(query, &["client", "vip", "protocol"])? {
        match name.as_str() {
            "client" => {
                client = Some(parse_query_value(
                    &name,
                    &value,
                    "IP:PORT, like 198.51.100.7:40000",
                )?);
            }
            "vip" => {
                vip = Some(parse_query_value(
                    &name,
                    &value,
                    "IP:PORT, like 203.0.113.10:80",
                )?);
            }
            _ => {
                protocol = match value.as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "invalid query parameter protocol={value:?}: expected tcp or udp"
                        )));
                    }
                };
            }
        }
    }
    let missing =
        |name: &str| ApiError::bad_request(format!("missing query parameter {name} (IP:PORT)"));
    Ok(Request::Explain {
        client: client.ok_or_else(|| missing("client"))?,
        vip: vip.ok_or_else(|| missing("vip"))?,
        protocol,
    })
}

/// Parses a JSON body, naming the offending field in errors.
fn parse_json<T: DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "missing JSON body: expected {expected}"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("invalid JSON body: {inner} (expected {expected})"))
        } else {
            ApiError::bad_request(format!("invalid JSON body: field {path}: {inner}"))
        }
    })?;
    de.end().map_err(|e| {
        ApiError::bad_request(format!("invalid JSON body: {e} (expected one object)"))
    })?;
    Ok(value)
}

/// `POST /backends`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddSniBody {
    tenant: String,
    name: String,
    #[serde(default)]
    site: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBackendBody {
    tenant: String,
    pool: String,
    backend: BackendBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendBody {
    address: IpAddr,
    #[serde(default)]
    port: Option<u16>,
    /// Like in `lb.toml`, an absent weight is 1.
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A [`BackendSelector`] that refuses unknown fields (a typo such as
/// `adress` must not select something else).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorBody {
    tenant: String,
    pool: String,
    address: IpAddr,
    #[serde(default)]
    port: Option<u16>,
}

const SELECTOR_SHAPE: &str =
    r#"{"tenant": "...", "pool": "...", "address": "IP", "port": N (optional)}"#;

impl BodyRoute {
    fn request(self, body: &[u8]) -> Result<Request, ApiError> {
        let selector = |body: &[u8]| -> Result<BackendSelector, ApiError> {
            let s: SelectorBody = parse_json(body, SELECTOR_SHAPE)?;
            if s.port == Some(0) {
                return Err(ApiError::bad_request(
                    "invalid JSON body: field port: port 0 is not a port (leave it out instead)",
                ));
            }
            Ok(BackendSelector {
                tenant: s.tenant,
                pool: s.pool,
                address: s.address,
                port: s.port,
            })
        };
        Ok(match self {
            Self::AddTenant => {
                let toml = std::str::from_utf8(body).map_err(|_| {
                    ApiError::bad_request("the request body is not UTF-8 text (expected TOML)")
                })?;
                if toml.trim().is_empty() {
                    return Err(ApiError::bad_request(
                        "missing body: expected TOML text holding one [[tenant]] table",
                    ));
                }
                Request::AddTenant {
                    toml: toml.to_owned(),
                }
            }
            Self::AddBackend => {
                let b: AddBackendBody = parse_json(
                    body,
                    r#"{"tenant": "...", "pool": "...", "backend": {"address": "IP", "port": N, "weight": N}}"#,
                )?;
                if b.backend.port == Some(0) {
                    return Err(ApiError::bad_request(
                        "invalid JSON body: field backend.port: port 0 is not a port (leave it out \
                         for the VIP's port)",
                    ));
                }
                if b.backend.weight > config::MAX_WEIGHT {
                    return Err(ApiError::bad_request(format!(
                        "invalid JSON body: field backend.weight: {} is more than the maximum {}",
                        b.backend.weight,
                        config::MAX_WEIGHT
                    )));
                }
                Request::AddBackend {
                    tenant: b.tenant,
                    pool: b.pool,
                    backend: BackendConf {
                        address: b.backend.address,
                        port: b.backend.port,
                        weight: b.backend.weight,
                    },
                }
            }
            Self::RemoveBackend => Request::RemoveBackend {
                backend: selector(body)?,
            },
            Self::DrainBackend => Request::DrainBackend {
                backend: selector(body)?,
            },
            Self::EnableBackend => Request::EnableBackend {
                backend: selector(body)?,
            },
            Self::AddSni => {
                let b: AddSniBody = parse_json(
                    body,
                    r#"{"tenant": "...", "name": "host.example", "site": N (optional, default 0)}"#,
                )?;
                Request::AddSni {
                    tenant: b.tenant,
                    site: b.site,
                    name: b.name,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::client::{Client, ClientError, Target};
    use std::fmt::Write as _;

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    /// A token of [`MIN_TOKEN_BYTES`] bytes exactly.
    const TOKEN: &str = "s3cret-token-for-tests-32-bytes!";
    const _: () = assert!(TOKEN.len() == MIN_TOKEN_BYTES);

    /// Writes a token file with `mode`.
    fn write_token(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).expect("writing the token");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .expect("setting the token file's mode");
    }

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "lb-admin-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("creating a temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Every request the fake daemon received.
    type Seen = Arc<Mutex<Vec<Request>>>;

    /// A fake daemon: records each request and answers it with
    /// `{"echo": request}`, or with an error for a tenant called "missing",
    /// and never answers `Reload` (to test the timeout).
    fn fake_daemon() -> (mpsc::Sender<Command>, Seen) {
        let (tx, mut rx) = mpsc::channel::<Command>(16);
        let seen: Seen = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            let mut parked = Vec::new();
            while let Some(Command { request, reply }) = rx.recv().await {
                record.lock().expect("lock").push(request.clone());
                let answer = match &request {
                    Request::ShowTenant { name } if name == "missing" => {
                        Err(ApiError::not_found("no tenant named \"missing\""))
                    }
                    Request::Reload => {
                        parked.push(reply);
                        continue;
                    }
                    _ => Ok(json!({ "echo": request })),
                };
                let _ = reply.send(answer);
            }
        });
        (tx, seen)
    }

    struct Server {
        _dir: TempDir,
        socket: PathBuf,
        tcp: SocketAddr,
        token: String,
        seen: Seen,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), AdminError>>,
    }

    impl Server {
        fn start(tag: &str) -> Self {
            let dir = TempDir::new(tag);
            let socket = dir.0.join("run/admin.sock");
            let token_file = dir.0.join("admin.token");
            let token = TOKEN.to_owned();
            write_token(&token_file, &format!("  {token}\n"), 0o600);
            let listener = AdminListener::unix(&socket)
                .expect("binding the socket")
                .with_tcp("127.0.0.1:0".parse().expect("addr"), &token_file)
                .expect("binding TCP")
                .with_reply_timeout(Duration::from_millis(300));
            let tcp = listener.tcp_addr().expect("tcp address");
            let (commands, seen) = fake_daemon();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, commands, async {
                let _ = stopped.await;
            }));
            Self {
                _dir: dir,
                socket,
                tcp,
                token,
                seen,
                stop: Some(stop),
                task,
            }
        }

        fn unix(&self) -> Client {
            Client::new(Target::Unix(self.socket.clone()))
        }

        fn tcp(&self, token: Option<&str>) -> Client {
            Client::new(Target::Tcp {
                authority: self.tcp.to_string(),
                token: token.map(str::to_owned),
            })
        }

        fn seen(&self) -> Vec<Request> {
            self.seen.lock().expect("lock").clone()
        }

        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            (&mut self.task)
                .await
                .expect("server task")
                .expect("server result");
            assert!(!self.socket.exists(), "the socket is removed on stop");
        }
    }

    /// The status and the `error` message of a failed call.
    fn api_error(r: Result<serde_json::Value, ClientError>) -> (u16, String) {
        match r {
            Err(ClientError::Api { status, message }) => (status, message),
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unix_socket_reaches_the_daemon() {
        let s = Server::start("unix");
        let mode = std::fs::metadata(&s.socket)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode");
        let c = s.unix();
        let v = c.get("/status").await.expect("status");
        assert_eq!(v, json!({"echo": {"request": "status"}}));
        let v = c.get("/tenants/acme").await.expect("tenant");
        assert_eq!(v["echo"], json!({"request": "show_tenant", "name": "acme"}));
        assert_eq!(
            c.get("/healthz").await.expect("healthz"),
            json!("ok\n"),
            "healthz is plain text"
        );
        assert_eq!(c.get("/readyz").await.expect("readyz"), json!("ok\n"));
        // The daemon's own errors keep their status and message.
        let (status, message) = api_error(c.get("/tenants/missing").await);
        assert_eq!(
            (status, message.as_str()),
            (404, "no tenant named \"missing\"")
        );
        let v = c
            .send(Method::DELETE, "/backends/acme/web/2001:db8::1/80", None)
            .await
            .expect("remove by path");
        assert_eq!(
            v["echo"],
            json!({"request": "remove_backend", "backend":
                {"tenant": "acme", "pool": "web", "address": "2001:db8::1", "port": 80}})
        );
        let v = c
            .get("/flows?tenant=acme&vip=203.0.113.10%3A80&limit=5")
            .await
            .expect("flows");
        assert_eq!(
            v["echo"]["filter"],
            json!({"tenant": "acme", "vip": "203.0.113.10:80", "backend": null, "limit": 5})
        );
        assert_eq!(s.seen().len(), 6, "healthz is answered without the daemon");
        s.stop().await;
    }

    #[tokio::test]
    async fn tcp_needs_the_token_and_refusals_never_reach_the_daemon() {
        let s = Server::start("tcp");
        for (client, why) in [
            (s.tcp(None), "missing Authorization header"),
            (s.tcp(Some("wrong")), "wrong bearer token"),
            (
                s.tcp(Some("s3cret-token-for-tests-32-bytes!-and-more")),
                "wrong bearer token",
            ),
            (s.tcp(Some("")), "wrong bearer token"),
        ] {
            for path in ["/status", "/healthz", "/nope"] {
                let (status, message) = api_error(client.get(path).await);
                assert_eq!(status, 401, "{path}: {message}");
                assert!(message.starts_with(why), "{message}");
            }
            let (status, _) = api_error(client.send(Method::POST, "/reload", None).await);
            assert_eq!(status, 401);
        }
        // A token in another scheme is not a bearer token.
        let raw = s
            .tcp(None)
            .raw(
                Method::GET,
                "/status",
                None,
                &[("authorization", format!("Basic {}", s.token))],
            )
            .await
            .expect("raw request");
        assert_eq!(raw.0, 401);
        assert!(
            s.seen().is_empty(),
            "refused requests reached the daemon: {:?}",
            s.seen()
        );

        let ok = s.tcp(Some(&s.token));
        assert_eq!(
            ok.get("/status").await.expect("status"),
            json!({"echo": {"request": "status"}})
        );
        // The scheme is case-insensitive.
        let raw = s
            .tcp(None)
            .raw(
                Method::GET,
                "/vips",
                None,
                &[("authorization", format!("bearer {}", s.token))],
            )
            .await
            .expect("raw request");
        assert_eq!(raw.0, 200);
        assert_eq!(s.seen(), vec![Request::Status, Request::ListVips]);
        s.stop().await;
    }

    #[tokio::test]
    #[expect(clippy::too_many_lines, reason = "one table of cases")]
    async fn bad_requests_get_4xx_and_change_nothing() {
        let s = Server::start("bad");
        let c = s.unix();
        let (status, message) = api_error(c.get("/nope").await);
        assert_eq!(status, 404, "{message}");
        assert!(message.contains("no route /nope"), "{message}");
        let (status, message) = api_error(c.send(Method::POST, "/status", None).await);
        assert_eq!(status, 405, "{message}");
        assert!(message.contains("allowed: GET"), "{message}");
        let raw = c
            .raw(Method::PUT, "/tenants", None, &[])
            .await
            .expect("raw request");
        assert_eq!(raw.0, 405);
        assert_eq!(
            raw.1.get("allow").map(HeaderValue::as_bytes),
            Some(&b"GET, POST"[..])
        );

        let json = |text: &str| Some(("application/json", text.as_bytes().to_vec()));
        for (method, path, body, fragment) in [
            (Method::POST, "/backends", json("{"), "invalid JSON body"),
            (Method::POST, "/backends", json(""), "missing JSON body"),
            (
                Method::POST,
                "/backends",
                json(r#"{"tenant": "a", "pool": "p"}"#),
                "missing field `backend`",
            ),
            (
                Method::POST,
                "/backends",
                json(r#"{"tenant": "a", "pool": "p", "backend": {"address": "10.0.0.x"}}"#),
                "field backend.address",
            ),
            (
                Method::POST,
                "/backends",
                json(
                    r#"{"tenant": "a", "pool": "p", "backend": {"address": "10.0.0.1", "port": 70000}}"#,
                ),
                "field backend.port",
            ),
            (
                Method::POST,
                "/backends",
                json(
                    r#"{"tenant": "a", "pool": "p", "backend": {"address": "10.0.0.1", "weight": 1001}}"#,
                ),
                "field backend.weight",
            ),
            (
                Method::POST,
                "/backends/drain",
                json(r#"{"tenant": "a", "pool": "p", "adress": "10.0.0.1"}"#),
                "unknown field `adress`",
            ),
            (
                Method::POST,
                "/backends/enable",
                json(r#"{"tenant": "a", "pool": "p", "address": "10.0.0.1"} {}"#),
                "trailing characters",
            ),
            (
                Method::DELETE,
                "/backends",
                json(r#"["a"]"#),
                "invalid JSON body",
            ),
            (Method::POST, "/tenants", None, "missing body"),
            (
                Method::DELETE,
                "/backends/a/p/10.0.0.x",
                None,
                "invalid address",
            ),
            (
                Method::DELETE,
                "/backends/a/p/10.0.0.1/0",
                None,
                "invalid port",
            ),
            (
                Method::GET,
                "/flows?vip=10.0.0.1",
                None,
                "invalid query parameter vip",
            ),
            (
                Method::GET,
                "/flows?limit=-1",
                None,
                "invalid query parameter limit",
            ),
            (
                Method::GET,
                "/flows?color=red",
                None,
                "unknown query parameter \"color\"",
            ),
            (Method::GET, "/flows?tenant=a&tenant=b", None, "given twice"),
            (
                Method::GET,
                "/explain?client=10.0.0.1:5",
                None,
                "missing query parameter vip",
            ),
            (
                Method::GET,
                "/explain?client=10.0.0.1:5&vip=10.0.0.2:80&protocol=sctp",
                None,
                "expected tcp or udp",
            ),
            (Method::GET, "/tenants/%zz", None, "bad percent-encoding"),
        ] {
            let (status, message) = api_error(c.send(method.clone(), path, body).await);
            assert_eq!(status, 400, "{method} {path}: {message}");
            assert!(
                message.contains(fragment),
                "{method} {path}: {message:?} lacks {fragment:?}"
            );
        }
        let big = vec![b'x'; MAX_BODY_BYTES + 1];
        let (status, message) = api_error(
            c.send(Method::POST, "/tenants", Some(("text/plain", big)))
                .await,
        );
        assert_eq!(status, 413, "{message}");
        assert!(
            s.seen().is_empty(),
            "bad requests reached the daemon: {:?}",
            s.seen()
        );

        // Well-formed bodies arrive as requests.
        let v = c
            .send(
                Method::POST,
                "/backends",
                json(r#"{"tenant": "a", "pool": "p", "backend": {"address": "10.0.0.1"}}"#),
            )
            .await
            .expect("add backend");
        assert_eq!(
            v["echo"]["backend"],
            json!({"address": "10.0.0.1", "port": null, "weight": 1})
        );
        let v = c
            .send(
                Method::POST,
                "/tenants",
                Some(("application/toml", b"[[tenant]]\nname = \"x\"\n".to_vec())),
            )
            .await
            .expect("add tenant");
        assert_eq!(v["echo"]["toml"], "[[tenant]]\nname = \"x\"\n");
        s.stop().await;
    }

    /// Every request lbctl can send arrives at the daemon unchanged.
    #[tokio::test]
    async fn every_request_round_trips() {
        let s = Server::start("roundtrip");
        let c = s.unix();
        let sel = BackendSelector {
            tenant: "acme".into(),
            pool: "web".into(),
            address: "2001:db8::7".parse().expect("ip"),
            port: Some(443),
        };
        let requests = vec![
            Request::Status,
            Request::ListTenants,
            Request::ShowTenant {
                name: "acme".into(),
            },
            Request::AddTenant {
                toml: "[[tenant]]\nname = \"x\"\n".into(),
            },
            Request::RemoveTenant {
                name: "acme".into(),
            },
            Request::ListVips,
            Request::ListPools,
            Request::ShowPool {
                tenant: "acme".into(),
                pool: "web".into(),
            },
            Request::ListBackends,
            Request::AddBackend {
                tenant: "acme".into(),
                pool: "web".into(),
                backend: BackendConf {
                    address: "10.0.0.9".parse().expect("ip"),
                    port: None,
                    weight: 0,
                },
            },
            Request::RemoveBackend {
                backend: sel.clone(),
            },
            Request::DrainBackend {
                backend: sel.clone(),
            },
            Request::EnableBackend {
                backend: BackendSelector { port: None, ..sel },
            },
            Request::Stats,
            Request::Flows {
                filter: FlowFilter::default(),
            },
            Request::Flows {
                filter: FlowFilter {
                    tenant: Some("a-b_c".into()),
                    vip: Some("[2001:db8::1]:80".parse().expect("addr")),
                    backend: Some("10.0.0.1".parse().expect("ip")),
                    limit: Some(3),
                },
            },
            Request::Explain {
                client: "[2001:db8::99]:5555".parse().expect("addr"),
                vip: "[2001:db8::1]:80".parse().expect("addr"),
                protocol: Protocol::Udp,
            },
            Request::ListOverrides,
            Request::ClearOverrides,
        ];
        for r in &requests {
            c.call(r).await.unwrap_or_else(|e| panic!("{r:?}: {e}"));
        }
        assert_eq!(s.seen(), requests);
        s.stop().await;
    }

    #[tokio::test]
    async fn a_silent_daemon_gets_503() {
        let s = Server::start("slow");
        let c = s.unix();
        let (status, message) = api_error(c.send(Method::POST, "/reload", None).await);
        assert_eq!(status, 503, "{message}");
        assert!(message.contains("did not answer within 300ms"), "{message}");
        s.stop().await;

        // A daemon whose loop has ended.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let e = ask(&tx, Request::Status, Duration::from_secs(1))
            .await
            .expect_err("closed channel");
        assert_eq!(e.status, 503);
    }

    #[tokio::test]
    async fn stale_and_live_sockets() {
        let dir = TempDir::new("stale");
        let path = dir.0.join("admin.sock");
        // A socket nobody listens on any more (a crashed lbd) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        let first = AdminListener::unix(&path).expect("replaces a stale socket");
        // Listening (even before it is served): a second bind must fail.
        match AdminListener::unix(&path) {
            Err(AdminError::InUse(p)) => assert_eq!(p, path),
            other => panic!("expected InUse, got {other:?}"),
        }
        let (commands, _seen) = fake_daemon();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(first, commands, async {
            let _ = stopped.await;
        }));
        let client = Client::new(Target::Unix(path.clone()));
        assert_eq!(
            client.get("/healthz").await.expect("serving"),
            json!("ok\n")
        );
        match AdminListener::unix(&path) {
            Err(AdminError::InUse(p)) => assert_eq!(p, path),
            other => panic!("expected InUse, got {other:?}"),
        }
        let _ = stop.send(());
        task.await.expect("task").expect("serve");

        let file = dir.0.join("not-a-socket");
        std::fs::write(&file, "x").expect("write");
        assert!(matches!(
            AdminListener::unix(&file),
            Err(AdminError::NotASocket(_))
        ));

        let empty = dir.0.join("empty.token");
        write_token(&empty, " \n", 0o600);
        let l = AdminListener::unix(&dir.0.join("b.sock")).expect("bind");
        assert!(matches!(
            l.with_tcp("127.0.0.1:0".parse().expect("addr"), &empty),
            Err(AdminError::EmptyToken(_))
        ));
    }

    /// A `[node]` of a configuration file in `dir`, with `admin_tls` when
    /// `tls` is given (as written in the file: relative paths are relative
    /// to `dir`).
    fn tcp_node(dir: &Path, token_file: &Path, tls: Option<config::TlsFiles>) -> config::Node {
        let mut text = format!(
            "[node]\ninterface = \"eth0\"\nadmin_socket = \"{}\"\n\
             admin_listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n",
            dir.join("admin.sock").display(),
            token_file.display()
        );
        if let Some(tls) = tls {
            let _ = writeln!(
                text,
                "admin_tls = {{ cert = \"{}\", key = \"{}\" }}",
                tls.cert.display(),
                tls.key.display()
            );
        }
        config::parse_in(&text, "lb.toml", dir)
            .expect("config")
            .node
    }

    #[test]
    fn a_short_token_or_a_token_file_others_may_read_is_refused() {
        let dir = TempDir::new("token-rules");
        let file = dir.0.join("admin.token");
        let short = &TOKEN[..MIN_TOKEN_BYTES - 1];
        write_token(&file, &format!("{short}\n"), 0o600);
        let node = tcp_node(&dir.0, &file, None);
        let e = AdminListener::bind(&node).expect_err("a 31-byte token");
        assert!(matches!(e, AdminError::ShortToken { len: 31, .. }), "{e:?}");
        let shown = e.to_string();
        assert!(
            shown.contains("at least 32") && shown.contains("urandom"),
            "{shown}"
        );
        assert!(check_files(&node).is_err(), "--check refuses it too");

        for mode in [0o644, 0o640, 0o604, 0o660] {
            write_token(&file, TOKEN, mode);
            let e = AdminListener::bind(&node).expect_err("a readable token file");
            assert!(
                matches!(e, AdminError::TokenFileMode { mode: m, .. } if m == mode),
                "{mode:o}: {e:?}"
            );
            let shown = e.to_string();
            assert!(shown.contains("chmod 600"), "{shown}");
            assert!(check_files(&node).is_err(), "--check refuses {mode:o}");
        }

        write_token(&file, &format!("  {TOKEN}\n"), 0o400);
        check_files(&node).expect("an owner-only file with a 32-byte token");
        let l = AdminListener::bind(&node).expect("an owner-only file");
        assert!(l.tcp_addr().is_some());
    }

    /// An rcgen CA and a certificate for 127.0.0.1 and `localhost` written
    /// to `dir` (`admin.pem`, `admin.key`); returns the CA certificate.
    fn admin_certificate(dir: &Path) -> rustls::pki_types::CertificateDer<'static> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("a P-256 key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "admin test CA");
        let ca = params.self_signed(&ca_key).expect("a CA certificate");
        let key = KeyPair::generate().expect("a P-256 key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("leaf params")
            .signed_by(&key, &ca, &ca_key)
            .expect("a leaf certificate");
        std::fs::write(dir.join("admin.pem"), leaf.pem()).expect("writing the certificate");
        std::fs::write(dir.join("admin.key"), key.serialize_pem()).expect("writing the key");
        ca.der().clone()
    }

    /// One GET /status over TLS to `addr` (verified against `ca`), with
    /// `token`; the status and body.
    async fn tls_status(
        addr: SocketAddr,
        ca: &rustls::pki_types::CertificateDer<'static>,
        token: &str,
    ) -> (StatusCode, String) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).expect("the CA as a root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("a TLS handshake verified against the test CA");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn);
        let request = hyper::Request::get("/status")
            .header(header::HOST, "127.0.0.1")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("an answer");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn tcp_over_tls_needs_the_token() {
        let dir = TempDir::new("tls");
        let ca = admin_certificate(&dir.0);
        let token_file = dir.0.join("admin.token");
        write_token(&token_file, TOKEN, 0o600);
        // Relative paths start from the configuration's directory.
        let files = config::TlsFiles {
            cert: PathBuf::from("admin.pem"),
            key: PathBuf::from("admin.key"),
        };
        let node = tcp_node(&dir.0, &token_file, Some(files));
        check_files(&node).expect("--check accepts the files");
        let listener = AdminListener::bind(&node).expect("binding with TLS");
        let addr = listener.tcp_addr().expect("tcp address");
        let (commands, seen) = fake_daemon();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, commands, async {
            let _ = stopped.await;
        }));

        let (status, body) = tls_status(addr, &ca, TOKEN).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"status\""), "{body}");
        let (status, body) = tls_status(addr, &ca, "a-wrong-token-of-at-least-32-bytes").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body.contains("wrong bearer token"), "{body}");
        assert_eq!(
            seen.lock().expect("lock").len(),
            1,
            "only the right token reached the daemon"
        );
        // Plain HTTP on the TLS port gets no answer.
        let plain = Client::new(Target::Tcp {
            authority: addr.to_string(),
            token: Some(TOKEN.to_owned()),
        });
        assert!(
            plain.get("/status").await.is_err(),
            "plain HTTP must not be served"
        );

        let _ = stop.send(());
        task.await.expect("task").expect("serve");

        // A key that is not the certificate's is refused at start.
        let other = TempDir::new("tls-other");
        admin_certificate(&other.0);
        let files = config::TlsFiles {
            cert: PathBuf::from("admin.pem"),
            key: other.0.join("admin.key"),
        };
        let node = tcp_node(&dir.0, &token_file, Some(files));
        let e = AdminListener::bind(&node).expect_err("a key of another certificate");
        assert!(matches!(e, AdminError::Tls(_)), "{e:?}");
        assert!(e.to_string().starts_with("node.admin_tls: "), "{e}");
    }

    /// The README's route table is the API's one description: every path
    /// it lists takes exactly the methods its rows give it.
    #[test]
    fn the_readmes_route_table_is_the_router() {
        use std::collections::{BTreeMap, BTreeSet};

        let readme = include_str!("../../README.md");
        let table = readme
            .split("### Admin API")
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .expect("README has an Admin API section");
        // Path (placeholders filled in) -> the methods the table gives it.
        let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in table.lines().filter(|l| l.starts_with("| ")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (methods, paths) = (cells[1], cells[2]);
            if methods == "method" || methods.starts_with("---") {
                continue;
            }
            for pattern in paths.split(", ") {
                let bare = pattern.split('?').next().expect("path");
                let forms = match bare.split_once("[/{port}]") {
                    Some((without, _)) => vec![without.to_owned(), format!("{without}/80")],
                    None => vec![bare.to_owned()],
                };
                for form in forms {
                    let path = form
                        .replace("{name}", "acme.example")
                        .replace("{tenant}", "acme")
                        .replace("{pool}", "web")
                        .replace("{address}", "10.0.0.1");
                    listed
                        .entry(path)
                        .or_default()
                        .extend(methods.split(", ").map(str::to_owned));
                }
            }
        }
        assert!(
            listed.len() >= 20,
            "only {} paths in the README",
            listed.len()
        );
        for (path, methods) in &listed {
            for m in methods {
                let method = Method::from_bytes(m.as_bytes()).expect("a method");
                let r = route(&method, path, None);
                assert!(
                    !matches!(r, Err(Refusal::MethodNotAllowed { .. }))
                        && !matches!(&r, Err(Refusal::Error(e)) if e.status == 404),
                    "README: {m} {path} is not routed: {r:?}"
                );
            }
            let Err(Refusal::MethodNotAllowed { allow }) = route(&Method::PATCH, path, None) else {
                panic!("README: PATCH {path} is not refused with 405");
            };
            let allowed: BTreeSet<String> = allow.split(", ").map(str::to_owned).collect();
            assert_eq!(&allowed, methods, "README: the methods of {path}");
        }
    }

    #[test]
    fn routes() {
        let r = |m: Method, p: &str| {
            route(
                &m,
                p.split_once('?').map_or(p, |x| x.0),
                p.split_once('?').map(|x| x.1),
            )
        };
        assert_eq!(
            r(Method::GET, "/status/"),
            Ok(Route::Plain(Request::Status))
        );
        assert_eq!(
            r(Method::GET, "/pools/acme/web"),
            Ok(Route::Plain(Request::ShowPool {
                tenant: "acme".into(),
                pool: "web".into()
            }))
        );
        assert_eq!(
            r(
                Method::GET,
                "/explain?client=10.0.0.1:5555&vip=%5B2001:db8::1%5D:80&protocol=udp"
            ),
            Ok(Route::Plain(Request::Explain {
                client: "10.0.0.1:5555".parse().expect("addr"),
                vip: "[2001:db8::1]:80".parse().expect("addr"),
                protocol: Protocol::Udp,
            }))
        );
        assert_eq!(
            r(Method::DELETE, "/overrides"),
            Ok(Route::Plain(Request::ClearOverrides))
        );
        assert_eq!(
            r(Method::POST, "/backends/drain"),
            Ok(Route::WithBody(BodyRoute::DrainBackend))
        );
        assert_eq!(
            r(Method::GET, "/backends/drain"),
            Err(Refusal::MethodNotAllowed { allow: "POST" })
        );
        assert_eq!(
            r(Method::GET, "/backends/a/p/10.0.0.1"),
            Err(Refusal::MethodNotAllowed { allow: "DELETE" })
        );
        for p in [
            "/",
            "",
            "/tenants/a/b",
            "/pools/a",
            "/backends/a/p/10.0.0.1/80/x",
            "/metrics",
        ] {
            assert!(
                matches!(
                    r(Method::GET, p),
                    Err(Refusal::Error(ApiError { status: 404, .. }))
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c", true).as_deref(), Some("a b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        for bad in ["%", "%2", "%zz", "%ff", "%e2%82"] {
            assert_eq!(percent_decode(bad, true), None, "{bad}");
        }
    }
}
