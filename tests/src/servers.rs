//! In-process TCP/UDP "name" servers and the client helpers that ask them,
//! for checking which backend a connection or datagram landed on.
//!
//! Servers run on their own thread inside a namespace (entered with
//! `setns`, see [`crate::netns::in_netns`]); a socket keeps the namespace it
//! was created in, so accepted connections and client sockets can be used
//! from any thread afterwards.
//!
//! * [`TcpNameServer`] writes `name\n` on every accepted connection, then
//!   echoes whatever the client sends until the client closes.
//! * [`UdpNameServer`] answers every datagram with `name`.
//! * [`tcp_ask_name`] / [`udp_ask_name`] ask once (call them from a thread
//!   inside the client namespace); [`spread`] asks many times from fresh
//!   ephemeral ports and counts the answers; [`LongLived`] keeps one
//!   connection open and probes it.
//!
//! Every loop is bounded: servers poll a stop flag every
//! [`POLL_INTERVAL`], clients use timeouts and deadlines.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::mem::size_of;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::netns::{enter_netns_current_thread, in_netns, join_netns};

/// How often server loops look at their stop flag.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long `start` waits for a server thread to bind.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest name line a client accepts.
const MAX_NAME: usize = 256;
/// Key under which [`spread`] counts failed attempts.
pub const ERROR_KEY: &str = "<error>";

/// Transport for [`spread`] and [`ask_name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// A TCP connection per attempt ([`tcp_ask_name`]).
    Tcp,
    /// A UDP socket per attempt ([`udp_ask_name`]).
    Udp,
}

/// Shared state of a server thread.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// Connections accepted (TCP) or datagrams answered (UDP).
    count: AtomicU64,
    /// Open connections (TCP).
    active: AtomicUsize,
}

/// Starts `run` on a thread in `ns_path` after `bind` succeeded there;
/// returns once bound (or failed), with the bound address.
fn start_server<S: Send + 'static>(
    ns_path: &Path,
    what: &str,
    bind: impl FnOnce() -> Result<(S, SocketAddr)> + Send + 'static,
    run: impl FnOnce(S, &Shared) + Send + 'static,
) -> Result<(Arc<Shared>, SocketAddr, JoinHandle<()>)> {
    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::sync_channel(1);
    let path: PathBuf = ns_path.to_path_buf();
    let thread_shared = Arc::clone(&shared);
    let handle = std::thread::Builder::new()
        .name(what.chars().take(15).collect())
        .spawn(move || {
            let bound = enter_netns_current_thread(&path).and_then(|()| bind());
            match bound {
                Ok((sock, addr)) => {
                    let _ = tx.send(Ok(addr));
                    run(sock, &thread_shared);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .context("spawning server thread")?;
    let addr = match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => {
            let _ = handle.join();
            return Err(e.context(format!("{what} in {}", ns_path.display())));
        }
        Err(_) => {
            shared.stop.store(true, Ordering::Relaxed);
            bail!(
                "{what} in {} did not start within {START_TIMEOUT:?}",
                ns_path.display()
            );
        }
    };
    Ok((shared, addr, handle))
}

/// An HTTP/1.1 server that answers every request with its name: status
/// 200, body `NAME\n`, and the `X-Forwarded-For` and `X-Tenant-ID` it
/// received as response headers `X-Seen-Forwarded-For` and
/// `X-Seen-Tenant-ID` (what a proxy in front told it). Keep-alive and
/// pipelining work; request bodies are not supported (GET and HEAD).
#[derive(Debug)]
pub struct HttpNameServer {
    inner: TcpNameServer,
}

impl HttpNameServer {
    /// Like [`TcpNameServer::start`].
    ///
    /// # Errors
    /// Entering the namespace or binding failed.
    pub fn start(ns_path: &Path, bind: SocketAddr, name: &str) -> Result<HttpNameServer> {
        let inner = TcpNameServer::start_mode(ns_path, bind, name, Mode::Http(name.to_owned()))?;
        Ok(HttpNameServer { inner })
    }

    /// The bound address (with the actual port).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn accepted(&self) -> u64 {
        self.inner.accepted()
    }
}

/// What a TCP server does with a connection.
#[derive(Debug, Clone)]
enum Mode {
    /// Write the greeting, then echo.
    Echo(Vec<u8>),
    /// Answer each HTTP request head with this name.
    Http(String),
}

/// A TCP server that tells each client its name, then echoes.
#[derive(Debug)]
pub struct TcpNameServer {
    name: String,
    local: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TcpNameServer {
    /// Binds `bind` inside the namespace at `ns_path` (an IPv6 bind such as
    /// `[::]:80` is IPv6-only, so a `0.0.0.0:80` server can run beside it)
    /// and serves from a thread there. Returns once the listener is bound.
    /// Port 0 picks a free port: see [`TcpNameServer::local_addr`].
    ///
    /// # Errors
    /// Entering the namespace or binding failed.
    pub fn start(ns_path: &Path, bind: SocketAddr, name: &str) -> Result<TcpNameServer> {
        let greeting = format!("{name}\n").into_bytes();
        Self::start_mode(ns_path, bind, name, Mode::Echo(greeting))
    }

    fn start_mode(
        ns_path: &Path,
        bind: SocketAddr,
        name: &str,
        mode: Mode,
    ) -> Result<TcpNameServer> {
        let (shared, local, thread) = start_server(
            ns_path,
            &format!("tcp {name} {bind}"),
            move || {
                let fd = bound_socket(bind, libc::SOCK_STREAM)?;
                // SAFETY: listen on a valid, bound socket.
                if unsafe { libc::listen(fd.as_raw_fd(), 4096) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("listen");
                }
                let listener = TcpListener::from(fd);
                listener.set_nonblocking(true)?;
                let addr = listener.local_addr()?;
                Ok((listener, addr))
            },
            move |listener, shared| tcp_serve(&listener, &mode, shared),
        )?;
        Ok(TcpNameServer {
            name: name.to_owned(),
            local,
            shared,
            thread: Some(thread),
        })
    }

    /// The bound address (with the actual port).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The name it answers with.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn accepted(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Connections currently open.
    #[must_use]
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes every open connection (within
    /// [`POLL_INTERVAL`]); `Drop` does the same.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TcpNameServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One accepted connection and the bytes still to write to it.
struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    /// HTTP mode: bytes of request heads not answered yet.
    pending: Vec<u8>,
    closed: bool,
}

impl Conn {
    /// Writes as much pending output as the socket takes.
    fn flush(&mut self) {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Reads what is there and queues the answer: the bytes themselves
    /// (echo) or one response per complete request head (HTTP).
    fn read_answer(&mut self, buf: &mut [u8], mode: &Mode) {
        match self.stream.read(buf) {
            Ok(0) => self.closed = true,
            Ok(n) => {
                match mode {
                    Mode::Echo(_) => self.out.extend_from_slice(&buf[..n]),
                    Mode::Http(name) => {
                        self.pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = find_head_end(&self.pending) {
                            let head: Vec<u8> = self.pending.drain(..end).collect();
                            self.out.extend_from_slice(&http_answer(name, &head));
                        }
                        if self.pending.len() > 64 * 1024 {
                            self.closed = true;
                        }
                    }
                }
                self.flush();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => self.closed = true,
        }
    }
}

/// The length of the first complete request head in `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The response to one request head.
fn http_answer(name: &str, head: &[u8]) -> Vec<u8> {
    use std::fmt::Write as _;
    let text = String::from_utf8_lossy(head);
    let header = |wanted: &str| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(wanted))
            .map(|(_, v)| v.trim().to_owned())
    };
    let mut extra = String::new();
    for (from, to) in [
        ("x-forwarded-for", "X-Seen-Forwarded-For"),
        ("x-tenant-id", "X-Seen-Tenant-ID"),
    ] {
        if let Some(v) = header(from) {
            let _ = write!(extra, "{to}: {v}\r\n");
        }
    }
    let body = format!("{name}\n");
    let head_only = text.starts_with("HEAD ");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{}",
        body.len(),
        if head_only { "" } else { body.as_str() }
    )
    .into_bytes()
}

/// Single-threaded poll loop: one thread per server whatever the number of
/// connections (idle-connection tests open thousands).
fn tcp_serve(listener: &TcpListener, mode: &Mode, shared: &Shared) {
    let greeting: &[u8] = match mode {
        Mode::Echo(g) => g,
        Mode::Http(_) => &[],
    };
    let mut conns: Vec<Conn> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        fds.clear();
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // Backpressure: a connection with pending output is not read.
        fds.extend(conns.iter().map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: if c.out.is_empty() {
                libc::POLLIN
            } else {
                libc::POLLOUT
            },
            revents: 0,
        }));
        let timeout = i32::try_from(POLL_INTERVAL.as_millis()).unwrap_or(50);
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `fds` is a valid array of `nfds` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout) };
        if n <= 0 {
            continue;
        }
        for (conn, pfd) in conns.iter_mut().zip(&fds[1..]) {
            if pfd.revents == 0 {
                continue;
            }
            if conn.out.is_empty() {
                conn.read_answer(&mut buf, mode);
            } else {
                conn.flush();
            }
        }
        let before = conns.len();
        conns.retain(|c| !c.closed);
        shared
            .active
            .fetch_sub(before - conns.len(), Ordering::Relaxed);
        if fds[0].revents != 0 {
            // Bounded per round so a connect storm cannot starve echoing.
            for _ in 0..1024 {
                match listener.accept() {
                    Ok((stream, _)) => {
                        shared.count.fetch_add(1, Ordering::Relaxed);
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        let mut conn = Conn {
                            stream,
                            out: greeting.to_vec(),
                            pending: Vec::new(),
                            closed: false,
                        };
                        conn.flush();
                        if !conn.closed {
                            shared.active.fetch_add(1, Ordering::Relaxed);
                            conns.push(conn);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }
    shared.active.store(0, Ordering::Relaxed);
    // Dropping `conns` closes every connection.
}

/// A UDP server that answers every datagram with its name.
#[derive(Debug)]
pub struct UdpNameServer {
    name: String,
    local: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl UdpNameServer {
    /// Binds `bind` (IPv6 binds are IPv6-only) inside the namespace at
    /// `ns_path` and serves from a thread there. Returns once bound.
    ///
    /// # Errors
    /// Entering the namespace or binding failed.
    pub fn start(ns_path: &Path, bind: SocketAddr, name: &str) -> Result<UdpNameServer> {
        let reply = name.as_bytes().to_vec();
        let (shared, local, thread) = start_server(
            ns_path,
            &format!("udp {name} {bind}"),
            move || {
                let sock = UdpSocket::from(bound_socket(bind, libc::SOCK_DGRAM)?);
                sock.set_read_timeout(Some(POLL_INTERVAL))?;
                let addr = sock.local_addr()?;
                Ok((sock, addr))
            },
            move |sock, shared| {
                let mut buf = [0u8; 2048];
                while !shared.stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = sock.recv_from(&mut buf)
                        && sock.send_to(&reply, peer).is_ok()
                    {
                        shared.count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            },
        )?;
        Ok(UdpNameServer {
            name: name.to_owned(),
            local,
            shared,
            thread: Some(thread),
        })
    }

    /// The bound address (with the actual port).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The name it answers with.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Datagrams answered so far.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Stops the server (within [`POLL_INTERVAL`]); `Drop` does the same.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpNameServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A socket of type `ty` bound to `addr`, with `SO_REUSEADDR` (restarting a
/// server on the same port must not wait for `TIME_WAIT`) and, for IPv6,
/// `IPV6_V6ONLY` (std cannot set it before `bind`).
fn bound_socket(addr: SocketAddr, ty: libc::c_int) -> Result<OwnedFd> {
    let domain = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket syscall; the fd is owned right below.
    let raw = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let rc = match addr {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: family(libc::AF_INET),
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sa` is a valid sockaddr_in of the given length.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sa).cast(),
                    socklen::<libc::sockaddr_in>(),
                )
            }
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: family(libc::AF_INET6),
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: `sa` is a valid sockaddr_in6 of the given length.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sa).cast(),
                    socklen::<libc::sockaddr_in6>(),
                )
            }
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bind {addr}"));
    }
    Ok(fd)
}

fn family(af: libc::c_int) -> libc::sa_family_t {
    libc::sa_family_t::try_from(af).expect("address family fits sa_family_t")
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("sockaddr size fits socklen_t")
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> Result<()> {
    // SAFETY: `value` is a c_int and the length says so.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&raw const value).cast(),
            socklen::<libc::c_int>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setsockopt {level}/{opt}"));
    }
    Ok(())
}

/// Reads one `\n`-terminated line (at most [`MAX_NAME`] bytes) byte by
/// byte, so nothing after the newline is consumed.
fn read_line(stream: &mut &TcpStream, deadline: Instant) -> Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_NAME {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "timed out reading the name line");
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut byte) {
            Ok(0) => bail!("connection closed before the name line ended"),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the name line"),
        }
    }
    bail!("name line longer than {MAX_NAME} bytes")
}

/// Connects to `addr`, reads the server's name line and closes. Call from
/// a thread inside the client namespace. `timeout` bounds the whole call.
///
/// # Errors
/// Connect or read failed or timed out.
pub fn tcp_ask_name(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    read_line(&mut &stream, deadline).with_context(|| format!("from {addr}"))
}

/// Sends one datagram to `addr` from a fresh ephemeral port and returns the
/// reply. Call from a thread inside the client namespace. One attempt, no
/// retry: a lost datagram is an error.
///
/// # Errors
/// Socket errors or no reply within `timeout`.
pub fn udp_ask_name(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let local: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(addr)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send(b"?").with_context(|| format!("send to {addr}"))?;
    let mut buf = [0u8; MAX_NAME];
    let n = sock
        .recv(&mut buf)
        .with_context(|| format!("no reply from {addr}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// [`tcp_ask_name`] or [`udp_ask_name`].
///
/// # Errors
/// As the function called.
pub fn ask_name(proto: Proto, addr: SocketAddr, timeout: Duration) -> Result<String> {
    match proto {
        Proto::Tcp => tcp_ask_name(addr, timeout),
        Proto::Udp => udp_ask_name(addr, timeout),
    }
}

/// Knobs for [`spread_with`].
#[derive(Clone, Debug)]
pub struct SpreadOptions {
    /// Timeout of one attempt. Default 2 s.
    pub attempt_timeout: Duration,
    /// Bound on the whole run; attempts not made by then count as failures.
    /// Default 60 s.
    pub total_timeout: Duration,
    /// Attempts in flight at once (threads). Default 4.
    pub concurrency: usize,
    /// Most failures tolerated before the call returns an error (it stops
    /// early once exceeded). `None` means 1 % of the attempts, rounded
    /// down (so none for fewer than 100 attempts).
    pub max_failures: Option<usize>,
}

impl Default for SpreadOptions {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_mins(1),
            concurrency: 4,
            max_failures: None,
        }
    }
}

/// [`spread_with`] with [`SpreadOptions::default`]: `n` attempts, each a
/// new connection/socket and so a new ephemeral source port, returning how
/// many answers each backend name gave. Failures are counted under
/// [`ERROR_KEY`]; more than 1 % failures (none below 100 attempts) is an
/// error.
///
/// # Errors
/// Entering the namespace failed or too many attempts failed.
pub fn spread(
    ns_path: &Path,
    addr: SocketAddr,
    n: usize,
    proto: Proto,
) -> Result<BTreeMap<String, usize>> {
    spread_with(ns_path, addr, n, proto, &SpreadOptions::default())
}

/// Like [`spread`] with explicit options. To get the counts even when many
/// attempts fail (e.g. while a backend is being removed), set
/// `max_failures: Some(n)`.
///
/// # Errors
/// Entering the namespace failed or more than `max_failures` attempts
/// failed (the message includes the counts and the first failure).
pub fn spread_with(
    ns_path: &Path,
    addr: SocketAddr,
    n: usize,
    proto: Proto,
    opts: &SpreadOptions,
) -> Result<BTreeMap<String, usize>> {
    let max_failures = opts.max_failures.unwrap_or(n / 100);
    let deadline = Instant::now() + opts.total_timeout;
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let workers = opts.concurrency.clamp(1, n.max(1));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let next = Arc::clone(&next);
            let failures = Arc::clone(&failures);
            let attempt_timeout = opts.attempt_timeout;
            in_netns(ns_path, move || {
                let mut counts = BTreeMap::<String, usize>::new();
                let mut first_error = None;
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || failures.load(Ordering::Relaxed) > max_failures {
                        // Not attempted: counted as failures below.
                        break;
                    }
                    match ask_name(proto, addr, attempt_timeout.min(left)) {
                        Ok(name) => *counts.entry(name).or_default() += 1,
                        Err(e) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            *counts.entry(ERROR_KEY.to_owned()).or_default() += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (counts, first_error)
            })
        })
        .collect();
    let mut total = BTreeMap::<String, usize>::new();
    let mut first_error = None;
    for h in handles {
        let (counts, err) = join_netns(h)?;
        for (k, v) in counts {
            *total.entry(k).or_default() += v;
        }
        if first_error.is_none() {
            first_error = err;
        }
    }
    let done: usize = total.values().sum();
    if done < n {
        *total.entry(ERROR_KEY.to_owned()).or_default() += n - done;
        first_error.get_or_insert_with(|| {
            "total timeout or too many failures before all attempts".to_owned()
        });
    }
    let failed = total.get(ERROR_KEY).copied().unwrap_or(0);
    if failed > max_failures {
        return Err(anyhow!(
            "{failed} of {n} {proto:?} attempts to {addr} failed (max {max_failures}); counts {total:?}; first error: {}",
            first_error.unwrap_or_default()
        ));
    }
    Ok(total)
}

/// A TCP connection to a [`TcpNameServer`] (through the LB or not) kept open
/// for probing across configuration changes. The socket was created in the
/// client namespace and stays there; it can be used from any thread.
#[derive(Debug)]
pub struct LongLived {
    stream: TcpStream,
    backend: String,
    seq: AtomicU64,
    timeout: Duration,
}

impl LongLived {
    /// Default timeout for connect, the name line and each probe.
    pub const TIMEOUT: Duration = Duration::from_secs(5);

    /// Connects from the namespace at `ns_path` and reads the backend's name.
    ///
    /// # Errors
    /// Entering the namespace, connecting or reading the name failed.
    pub fn open(ns_path: &Path, addr: SocketAddr) -> Result<LongLived> {
        Self::open_with_timeout(ns_path, addr, Self::TIMEOUT)
    }

    /// [`LongLived::open`] with a custom timeout (used for every later probe too).
    ///
    /// # Errors
    /// As [`LongLived::open`].
    pub fn open_with_timeout(
        ns_path: &Path,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<LongLived> {
        let stream = join_netns(in_netns(ns_path, move || {
            TcpStream::connect_timeout(&addr, timeout)
        }))?
        .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        let backend = read_line(&mut &stream, Instant::now() + timeout)
            .with_context(|| format!("from {addr}"))?;
        Ok(LongLived {
            stream,
            backend,
            seq: AtomicU64::new(0),
            timeout,
        })
    }

    /// The name the backend greeted this connection with.
    #[must_use]
    pub fn backend_name(&self) -> &str {
        &self.backend
    }

    /// The client side's address (its source port identifies the flow).
    ///
    /// # Errors
    /// The socket is unusable.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    /// Sends a numbered `ping` line and expects it echoed back in full
    /// within the timeout: the connection still reaches the same backend.
    ///
    /// # Errors
    /// Write or read failed (e.g. reset), timed out, or the echo differs.
    pub fn probe(&self) -> Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let msg = format!("ping {seq}\n");
        let mut s = &self.stream;
        s.write_all(msg.as_bytes()).context("probe write")?;
        let deadline = Instant::now() + self.timeout;
        let mut got = vec![0u8; msg.len()];
        let mut filled = 0;
        while filled < got.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(!left.is_zero(), "probe: no echo within {:?}", self.timeout);
            s.set_read_timeout(Some(left))?;
            match s.read(&mut got[filled..]) {
                Ok(0) => bail!("probe: connection closed by the peer"),
                Ok(k) => filled += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("probe read"),
            }
        }
        ensure!(
            got == msg.as_bytes(),
            "probe: echo {:?} differs from {msg:?}",
            String::from_utf8_lossy(&got)
        );
        Ok(())
    }

    /// Closes the connection (FIN); dropping does the same.
    pub fn close(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
