//! TLS passthrough: route a connection by the SNI of its `ClientHello`
//! without terminating TLS, then copy bytes both ways.
//!
//! Some tenants keep their own TLS: their keys never leave their backends
//! (an HSM, a compliance rule, client-certificate authentication end to
//! end). lbd still serves them on the shared address, so it has to learn
//! which tenant a connection is for without decrypting anything. The one
//! clear-text hint is the server name (SNI) in the client's first flight,
//! the TLS `ClientHello`. So for a passthrough tenant lbd:
//!
//! 1. reads the first flight with [`read_client_hello`] (bounded in size
//!    by [`MAX_CLIENT_HELLO`] and in time by a handshake timeout), keeping
//!    every byte it read;
//! 2. picks the tenant's backend from [`ClientHello::sni`];
//! 3. [`splice`]s: sends the backend an optional PROXY protocol v2 header
//!    ([`proxy_v2_header`], so the backend sees the client's address), then
//!    the bytes read in step 1 unchanged, then copies both ways.
//!
//! We *peek* rather than terminate: the backend's TLS stack must see the
//! client's `ClientHello` byte for byte (the handshake transcript covers it),
//! so nothing read is altered or dropped, only looked at.
//!
//! Until the hello is parsed, a connection belongs to no tenant, so no
//! tenant's budget protects lbd from it: reading is bounded in bytes and in
//! time, and a hello whose declared length cannot fit is refused before it
//! is read, so a client cannot hold a large buffer or a slot open cheaply.
//!
//! # What counts as malformed
//!
//! The SNI decides which tenant receives a connection, so the parser is
//! strict: a hello that two parsers could read differently could be routed
//! to one tenant while the backend's TLS stack believes it was meant for
//! another. Rather than guess, [`parse_client_hello`] refuses
//! ([`HelloError::Malformed`], naming the field) a TLS handshake that:
//!
//! - carries a record that is empty, longer than 16 KiB, or not a handshake
//!   record before the `ClientHello` is complete (TLS forbids interleaving);
//! - starts with a handshake message other than `ClientHello`;
//! - has a length anywhere (session id, cipher suites, compression methods,
//!   extensions and their contents) that runs past what encloses it, or
//!   bytes left over after it;
//! - has a session id longer than 32 bytes, no cipher suites or an odd
//!   number of their bytes, or no compression method;
//! - repeats an extension type, or names two `host_name`s;
//! - has a `host_name` that is not a DNS name: after dropping one trailing
//!   dot, 1 to 253 bytes of ASCII letters, digits, `-`, `_` and `.`, with
//!   no empty label and none longer than 63 bytes (internationalised names
//!   travel as `xn--` A-labels, so nothing else is legitimate);
//! - has an empty ALPN list or an empty protocol name in it.
//!
//! Anything that does not start like a TLS handshake record (plain HTTP on
//! the TLS port, SSLv2-compatible hellos, garbage) is
//! [`HelloError::NotTls`], recognised from its first bytes. Extensions other
//! than `server_name` and ALPN are skipped unread: checking them is the
//! backend's TLS stack's job. With Encrypted Client Hello the name read is
//! the outer (public) one, which is the one to route on.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// TLS record header: content type, legacy version (2 bytes), length (2).
const RECORD_HEADER_LEN: usize = 5;
/// Handshake message header: type, length (3 bytes).
const HANDSHAKE_HEADER_LEN: usize = 4;
/// The largest payload of a plaintext TLS record (RFC 8446, 5.1).
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const EXTENSION_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;
const MAX_SESSION_ID: usize = 32;
const MAX_HOST_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// The default size limit of [`read_client_hello`]: one full TLS record
/// (16 KiB of handshake data and its 5-byte header). Browsers' hellos take
/// under 2 KiB even with post-quantum key shares; a client that needs more
/// is broken or is trying to make lbd buffer for it.
pub(crate) const MAX_CLIENT_HELLO: usize = MAX_RECORD_PAYLOAD + RECORD_HEADER_LEN;

/// How much [`read_client_hello`] asks the socket for at a time.
const READ_CHUNK: usize = 4096;
/// Each direction's buffer in [`splice`]: one full TLS record.
const PIPE_BUFFER: usize = MAX_RECORD_PAYLOAD;
/// Reads one direction of [`splice`] does per wake-up before letting the
/// other direction (and other connections) run.
const READS_PER_POLL: usize = 16;
/// PROXY protocol v2 signature (spec section 2.2).
const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const PROXY_V2_VERSION_COMMAND: u8 = 0x21;
/// Address family and protocol: TCP over IPv4.
const PROXY_V2_TCP4: u8 = 0x11;
/// Address family and protocol: TCP over IPv6.
const PROXY_V2_TCP6: u8 = 0x21;
/// Version 2, command LOCAL (the proxy's own connection, e.g. a health
/// check).
const PROXY_V2_VERSION_LOCAL: u8 = 0x20;
/// Address family and protocol unspecified.
const PROXY_V2_UNSPEC: u8 = 0x00;
/// Signature, version and command, family, length: the fixed part of a
/// PROXY protocol v2 header.
const PROXY_V2_FIXED_LEN: usize = 16;
/// Address bytes of TCP over IPv4: two addresses and two ports.
const PROXY_V2_TCP4_LEN: u16 = 12;
/// Address bytes of TCP over IPv6.
const PROXY_V2_TCP6_LEN: u16 = 36;
/// The largest PROXY protocol v2 header [`read_proxy_v2`] accepts, TLVs
/// included: 536 bytes, the spec's bound for TCP (the minimum TCP segment
/// size a sender can rely on getting through in one piece).
pub(crate) const MAX_PROXY_V2_HEADER: usize = 536;

/// Why a first flight could not be read as a `ClientHello`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum HelloError {
    /// More bytes are needed (only from [`parse_client_hello`];
    /// [`read_client_hello`] turns it into reading more).
    #[error("the TLS ClientHello is incomplete: more bytes are needed")]
    Incomplete,
    /// Not a TLS handshake record (plain HTTP, an SSLv2-compatible hello,
    /// garbage): the first byte or the record version is wrong.
    #[error(
        "the client did not start a TLS handshake (plain HTTP or another protocol sent to a \
         TLS passthrough listener?)"
    )]
    NotTls,
    /// A TLS handshake that is not a well-formed `ClientHello`; the text names
    /// the field (see the module documentation for what counts).
    #[error("malformed TLS ClientHello: {0}")]
    Malformed(&'static str),
    /// The `ClientHello` is larger than the limit given to
    /// [`read_client_hello`].
    #[error(
        "the TLS ClientHello is larger than the passthrough limit (real clients' hellos fit in \
         16 KiB; this client is broken or hostile)"
    )]
    TooLarge,
    /// The client sent nothing complete in time.
    #[error("the client sent no complete TLS ClientHello within the handshake timeout")]
    Timeout,
    /// The client closed before a complete `ClientHello`.
    #[error("the client closed the connection before sending a complete TLS ClientHello")]
    Closed,
    /// Reading from the client failed (the I/O error as text).
    #[error("reading the TLS ClientHello from the client: {0}")]
    Io(String),
}

/// What routing needs from a `ClientHello`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientHello {
    /// The `server_name` extension's host name, normalised: ASCII lower
    /// case, no trailing dot. `None` when the client sent none (for example
    /// because it connected to an IP address).
    pub sni: Option<String>,
    /// The ALPN protocol names offered, in the client's order (`h2`,
    /// `http/1.1`, ...); empty without the extension.
    pub alpn: Vec<Vec<u8>>,
}

/// Parses the bytes received so far: one or more TLS records carrying a
/// `ClientHello` (which may span records). Bytes after the `ClientHello` are
/// ignored. Never panics, whatever `buf` holds.
///
/// # Errors
///
/// [`HelloError::Incomplete`] while `buf` is a strict prefix of a possible
/// `ClientHello`, [`HelloError::NotTls`] when it does not start like a TLS
/// handshake, [`HelloError::Malformed`] when it is a TLS handshake but not a
/// well-formed `ClientHello` (it is refused as soon as the offending byte has
/// arrived, where that is possible).
pub(crate) fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, HelloError> {
    parse_limited(buf, usize::MAX)
}

/// Reads from `stream` until a full `ClientHello` is parsed, at most
/// `max_bytes` (normally [`MAX_CLIENT_HELLO`]), within `timeout`. Returns
/// every byte read (the `ClientHello` and whatever came with it), which must
/// be sent on to the backend, and the parsed hello.
///
/// # Errors
///
/// [`HelloError::Timeout`] when `timeout` passes first,
/// [`HelloError::Closed`] on end of stream, [`HelloError::TooLarge`] when
/// the hello cannot fit in `max_bytes` (reported as soon as its declared
/// length shows it), [`HelloError::Io`] when reading fails, and
/// [`HelloError::NotTls`] or [`HelloError::Malformed`] as
/// [`parse_client_hello`] finds them.
pub(crate) async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: usize,
    timeout: Duration,
) -> Result<(Vec<u8>, ClientHello), HelloError> {
    let mut buf = Vec::with_capacity(max_bytes.min(READ_CHUNK));
    let read = async {
        let mut chunk = [0; READ_CHUNK];
        loop {
            let room = max_bytes.saturating_sub(buf.len()).min(chunk.len());
            let Some(into) = chunk.get_mut(..room).filter(|into| !into.is_empty()) else {
                return Err(HelloError::TooLarge);
            };
            let n = match stream.read(into).await {
                Ok(0) => return Err(HelloError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HelloError::Io(e.to_string())),
            };
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            match parse_limited(&buf, max_bytes) {
                Err(HelloError::Incomplete) => {}
                done => return done,
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(hello)) => Ok((buf, hello)),
        Ok(Err(e)) => Err(e),
        Err(_elapsed) => Err(HelloError::Timeout),
    }
}

/// [`parse_client_hello`], also answering [`HelloError::TooLarge`] as soon
/// as the handshake header shows the hello cannot fit in `max_bytes`.
fn parse_limited(buf: &[u8], max_bytes: usize) -> Result<ClientHello, HelloError> {
    let body = reassemble(buf, max_bytes)?;
    parse_body(&body)
}

/// One record at the start of the buffer.
struct Record<'a> {
    /// The payload, or as much of it as has arrived.
    payload: &'a [u8],
    /// Whether all of the payload has arrived.
    complete: bool,
    /// What follows the record (empty when it is incomplete).
    rest: &'a [u8],
}

/// Splits the TLS record at the start of `buf`. Header bytes are checked as
/// they arrive, so that plain HTTP is refused at its first byte. `first`
/// says whether this is the first record, where a wrong header means "not
/// TLS" rather than "broken TLS".
fn split_record(buf: &[u8], first: bool) -> Result<Record<'_>, HelloError> {
    let wrong = |what| {
        if first {
            HelloError::NotTls
        } else {
            HelloError::Malformed(what)
        }
    };
    if buf.first().is_some_and(|&t| t != CONTENT_TYPE_HANDSHAKE) {
        return Err(wrong(
            "a non-handshake record before the end of the ClientHello",
        ));
    }
    if buf.get(1).is_some_and(|&major| major != 3) {
        return Err(wrong("record version is not 3.x"));
    }
    if buf.get(2).is_some_and(|&minor| minor > 4) {
        return Err(wrong("record version is above 3.4"));
    }
    let Some((&[.., hi, lo], body)) = buf.split_first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(HelloError::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len == 0 {
        return Err(HelloError::Malformed("empty handshake record"));
    }
    if len > MAX_RECORD_PAYLOAD {
        return Err(HelloError::Malformed("record longer than 16 KiB"));
    }
    Ok(match body.split_at_checked(len) {
        Some((payload, rest)) => Record {
            payload,
            complete: true,
            rest,
        },
        None => Record {
            payload: body,
            complete: false,
            rest: &[],
        },
    })
}

/// The `ClientHello`'s body (after the handshake header), gathered from the
/// records at the start of `buf`. Borrowed when one record holds it all
/// (the usual case), copied when it spans records.
fn reassemble(buf: &[u8], max_bytes: usize) -> Result<Cow<'_, [u8]>, HelloError> {
    let mut fragments: Vec<&[u8]> = Vec::new();
    let mut have = 0_usize;
    let mut rest = buf;
    loop {
        let record = split_record(rest, fragments.is_empty())?;
        fragments.push(record.payload);
        have = have.saturating_add(record.payload.len());
        if let Some(total) = message_len(&fragments, max_bytes)?
            && have >= total
        {
            return Ok(message_body(&fragments, total));
        }
        if !record.complete {
            return Err(HelloError::Incomplete);
        }
        rest = record.rest;
    }
}

/// The whole handshake message's length (header included) once its header
/// has arrived; checks the message type as soon as it has.
fn message_len(fragments: &[&[u8]], max_bytes: usize) -> Result<Option<usize>, HelloError> {
    let mut header = fragments.iter().flat_map(|f| f.iter().copied());
    match header.next() {
        None => return Ok(None),
        Some(HANDSHAKE_CLIENT_HELLO) => {}
        Some(_) => {
            return Err(HelloError::Malformed(
                "first handshake message is not a ClientHello",
            ));
        }
    }
    let (Some(a), Some(b), Some(c)) = (header.next(), header.next(), header.next()) else {
        return Ok(None);
    };
    let body_len = u32::from_be_bytes([0, a, b, c]);
    let total = usize::try_from(body_len)
        .unwrap_or(usize::MAX)
        .saturating_add(HANDSHAKE_HEADER_LEN);
    // The fewest bytes on the wire that can carry it: full records.
    let on_wire =
        total.saturating_add(RECORD_HEADER_LEN.saturating_mul(total.div_ceil(MAX_RECORD_PAYLOAD)));
    if on_wire > max_bytes {
        return Err(HelloError::TooLarge);
    }
    Ok(Some(total))
}

/// The message body (bytes `HANDSHAKE_HEADER_LEN..total` of the
/// concatenated fragments, which hold at least `total` bytes).
fn message_body<'a>(fragments: &[&'a [u8]], total: usize) -> Cow<'a, [u8]> {
    if let [only] = fragments
        && let Some(body) = only.get(HANDSHAKE_HEADER_LEN..total)
    {
        return Cow::Borrowed(body);
    }
    let mut message: Vec<u8> = fragments.concat();
    message.truncate(total);
    message.drain(..HANDSHAKE_HEADER_LEN.min(message.len()));
    Cow::Owned(message)
}

/// A cursor over a complete message: running out of bytes is a malformed
/// length, not a reason to wait.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or(HelloError::Malformed(what))?;
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        let (&byte, tail) = self.0.split_first().ok_or(HelloError::Malformed(what))?;
        self.0 = tail;
        Ok(byte)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let (&bytes, tail) = self
            .0
            .split_first_chunk::<2>()
            .ok_or(HelloError::Malformed(what))?;
        self.0 = tail;
        Ok(u16::from_be_bytes(bytes))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.u8(what)?;
        self.take(usize::from(len), what)
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    /// Fails with `what` unless everything has been read.
    fn finish(&self, what: &'static str) -> Result<(), HelloError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(HelloError::Malformed(what))
        }
    }
}

/// Walks a complete `ClientHello` body (RFC 8446, 4.1.2).
fn parse_body(body: &[u8]) -> Result<ClientHello, HelloError> {
    let mut r = Reader(body);
    let version = r.u16("truncated legacy_version")?;
    if version >> 8 != 3 {
        return Err(HelloError::Malformed("legacy_version is not 3.x"));
    }
    r.take(32, "truncated random")?;
    if r.vec8("truncated session_id")?.len() > MAX_SESSION_ID {
        return Err(HelloError::Malformed("session_id longer than 32 bytes"));
    }
    let suites = r.vec16("truncated cipher_suites")?;
    if suites.is_empty() {
        return Err(HelloError::Malformed("no cipher_suites"));
    }
    if suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher_suites of odd length"));
    }
    if r.vec8("truncated compression_methods")?.is_empty() {
        return Err(HelloError::Malformed("no compression_methods"));
    }
    let mut hello = ClientHello::default();
    if r.is_empty() {
        // SSL 3.0 and early TLS 1.0 clients may omit the extensions block.
        return Ok(hello);
    }
    let mut extensions = Reader(r.vec16("truncated extensions")?);
    r.finish("bytes after the extensions")?;
    let mut seen = HashSet::new();
    while !extensions.is_empty() {
        let kind = extensions.u16("truncated extension type")?;
        let data = extensions.vec16("truncated extension")?;
        if !seen.insert(kind) {
            return Err(HelloError::Malformed("an extension type appears twice"));
        }
        match kind {
            EXTENSION_SERVER_NAME => hello.sni = parse_server_name(data)?,
            EXTENSION_ALPN => hello.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    Ok(hello)
}

/// The `server_name` extension (RFC 6066, 3): its `host_name`, if any.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16("truncated server_name list")?);
    r.finish("bytes after the server_name list")?;
    if list.is_empty() {
        return Err(HelloError::Malformed("empty server_name list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8("truncated server_name entry")?;
        let name = list.vec16("truncated server_name entry")?;
        if name_type == NAME_TYPE_HOST_NAME {
            if host.is_some() {
                return Err(HelloError::Malformed("two host_names in server_name"));
            }
            host = Some(normalise_host_name(name)?);
        }
    }
    Ok(host)
}

/// Checks that `name` is a DNS name and returns it in lower case without a
/// trailing dot.
fn normalise_host_name(name: &[u8]) -> Result<String, HelloError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST_NAME {
        return Err(HelloError::Malformed(
            "server_name host_name is empty or longer than 253 bytes",
        ));
    }
    if !name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(HelloError::Malformed(
            "server_name host_name has a byte other than an ASCII letter, digit, '-', '_' or '.'",
        ));
    }
    if name
        .split(|&b| b == b'.')
        .any(|label| label.is_empty() || label.len() > MAX_LABEL)
    {
        return Err(HelloError::Malformed(
            "server_name host_name has an empty label or one longer than 63 bytes",
        ));
    }
    Ok(name
        .iter()
        .map(|&b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// The ALPN extension (RFC 7301, 3.1): the protocol names.
fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, HelloError> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16("truncated ALPN list")?);
    r.finish("bytes after the ALPN list")?;
    if list.is_empty() {
        return Err(HelloError::Malformed("empty ALPN list"));
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let protocol = list.vec8("truncated ALPN protocol name")?;
        if protocol.is_empty() {
            return Err(HelloError::Malformed("empty ALPN protocol name"));
        }
        protocols.push(protocol.to_vec());
    }
    Ok(protocols)
}

/// The PROXY protocol v2 header (command PROXY, TCP) for a connection from
/// `client` to `local` (lbd's address the client connected to).
///
/// Both addresses go out as IPv4 when both are IPv4, including IPv4-mapped
/// IPv6 addresses as a dual-stack listener reports them; otherwise both go
/// out as IPv6, an IPv4 one mapped to `::ffff:a.b.c.d`.
#[must_use]
pub fn proxy_v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut header = Vec::with_capacity(16 + 36);
    header.extend_from_slice(&PROXY_V2_SIGNATURE);
    header.push(PROXY_V2_VERSION_COMMAND);
    match (client.ip().to_canonical(), local.ip().to_canonical()) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            header.push(PROXY_V2_TCP4);
            header.extend_from_slice(&12_u16.to_be_bytes());
            header.extend_from_slice(&source.octets());
            header.extend_from_slice(&destination.octets());
        }
        (source, destination) => {
            header.push(PROXY_V2_TCP6);
            header.extend_from_slice(&36_u16.to_be_bytes());
            header.extend_from_slice(&as_ipv6(source).octets());
            header.extend_from_slice(&as_ipv6(destination).octets());
        }
    }
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&local.port().to_be_bytes());
    header
}

fn as_ipv6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A PROXY protocol v2 header received from a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyHeader {
    /// Command LOCAL (the proxy's own connection), or PROXY with an
    /// unspecified family: the connection's own addresses stand (as the
    /// spec requires).
    Local,
    /// Command PROXY over TCP: the original client and the address it
    /// connected to.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// Why a connection's first bytes are not an acceptable PROXY protocol v2
/// header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProxyHeaderError {
    /// More bytes are needed (only from [`parse_proxy_v2`];
    /// [`read_proxy_v2`] turns it into reading more).
    #[error("the PROXY protocol v2 header is incomplete: more bytes are needed")]
    Incomplete,
    /// The first 12 bytes are not the v2 signature (a client speaking HTTP
    /// or TLS straight away, a v1 text header, garbage).
    #[error(
        "no PROXY protocol v2 signature: this listener expects every connection from a trusted \
         proxy to start with a PROXY v2 header"
    )]
    Signature,
    /// The version and command byte is neither v2 PROXY (0x21) nor v2 LOCAL
    /// (0x20).
    #[error(
        "PROXY protocol version and command {0:#04x}: expected 0x21 (v2 PROXY) or 0x20 (v2 LOCAL)"
    )]
    Command(u8),
    /// A PROXY command for another family or transport than TCP over IPv4
    /// or IPv6 (UDP, Unix sockets, unknown values).
    #[error(
        "PROXY protocol v2 family and protocol {0:#04x}: expected TCP over IPv4 (0x11) or IPv6 \
         (0x21)"
    )]
    Family(u8),
    /// The declared length cannot hold the family's addresses.
    #[error("PROXY protocol v2 address block of {0} bytes is too short for its family")]
    Short(u16),
    /// The declared length makes the header larger than
    /// [`MAX_PROXY_V2_HEADER`].
    #[error(
        "PROXY protocol v2 header of {0} bytes is larger than the limit of {MAX_PROXY_V2_HEADER}"
    )]
    TooLarge(usize),
    /// The proxy sent no complete header in time.
    #[error("no complete PROXY protocol v2 header within the header timeout")]
    Timeout,
    /// The proxy closed before a complete header.
    #[error("the connection closed before a complete PROXY protocol v2 header")]
    Closed,
    /// Reading failed (the I/O error as text).
    #[error("reading the PROXY protocol v2 header: {0}")]
    Io(String),
}

/// Parses a PROXY protocol v2 header at the start of `buf`; returns it and
/// its length (TLVs after the addresses are skipped). Each field is checked
/// as soon as its bytes are there, so a client that speaks anything else is
/// refused at its first bytes. Never panics.
///
/// # Errors
/// [`ProxyHeaderError::Incomplete`] while `buf` is a strict prefix of an
/// acceptable header; the other variants say what is wrong.
pub(crate) fn parse_proxy_v2(buf: &[u8]) -> Result<(ProxyHeader, usize), ProxyHeaderError> {
    let signature = buf.get(..PROXY_V2_SIGNATURE.len()).unwrap_or(buf);
    if !PROXY_V2_SIGNATURE.starts_with(signature) {
        return Err(ProxyHeaderError::Signature);
    }
    let command = buf.get(12).copied();
    if let Some(c) = command
        && c != PROXY_V2_VERSION_COMMAND
        && c != PROXY_V2_VERSION_LOCAL
    {
        return Err(ProxyHeaderError::Command(c));
    }
    let family = buf.get(13).copied();
    let proxy = command == Some(PROXY_V2_VERSION_COMMAND);
    if let Some(f) = family
        && proxy
        && ![PROXY_V2_TCP4, PROXY_V2_TCP6, PROXY_V2_UNSPEC].contains(&f)
    {
        return Err(ProxyHeaderError::Family(f));
    }
    let (Some(command), Some(family), Some(&[hi, lo])) = (command, family, buf.get(14..16)) else {
        return Err(ProxyHeaderError::Incomplete);
    };
    let len = u16::from_be_bytes([hi, lo]);
    let total = PROXY_V2_FIXED_LEN + usize::from(len);
    if total > MAX_PROXY_V2_HEADER {
        return Err(ProxyHeaderError::TooLarge(total));
    }
    let needed = match family {
        _ if command == PROXY_V2_VERSION_LOCAL => 0,
        PROXY_V2_TCP4 => PROXY_V2_TCP4_LEN,
        PROXY_V2_TCP6 => PROXY_V2_TCP6_LEN,
        _ => 0,
    };
    if len < needed {
        return Err(ProxyHeaderError::Short(len));
    }
    let Some(block) = buf.get(PROXY_V2_FIXED_LEN..total) else {
        return Err(ProxyHeaderError::Incomplete);
    };
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    let header = match family {
        _ if command == PROXY_V2_VERSION_LOCAL => ProxyHeader::Local,
        PROXY_V2_TCP4 => {
            let ip =
                |at: usize| IpAddr::from([block[at], block[at + 1], block[at + 2], block[at + 3]]);
            ProxyHeader::Proxy {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        PROXY_V2_TCP6 => {
            let ip = |at: usize| {
                let mut octets = [0; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                IpAddr::from(octets)
            };
            ProxyHeader::Proxy {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        _ => ProxyHeader::Local,
    };
    Ok((header, total))
}

/// Reads a PROXY protocol v2 header from `stream` within `timeout`, and
/// not one byte more: what follows (HTTP, a TLS `ClientHello`) is left in
/// the stream.
///
/// # Errors
/// [`ProxyHeaderError::Timeout`], [`ProxyHeaderError::Closed`],
/// [`ProxyHeaderError::Io`], or what [`parse_proxy_v2`] finds wrong.
pub(crate) async fn read_proxy_v2<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyHeaderError> {
    let read = async {
        let mut buf = [0; MAX_PROXY_V2_HEADER];
        let mut have = 0;
        // The fixed part first; then the length it declares.
        let mut want = PROXY_V2_FIXED_LEN;
        loop {
            let Some(into) = buf.get_mut(have..want) else {
                return Err(ProxyHeaderError::TooLarge(want));
            };
            let n = match stream.read(into).await {
                Ok(0) => return Err(ProxyHeaderError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ProxyHeaderError::Io(e.to_string())),
            };
            have += n;
            let got = buf.get(..have).unwrap_or_default();
            match parse_proxy_v2(got) {
                Ok((header, _)) => return Ok(header),
                Err(ProxyHeaderError::Incomplete) => {
                    if let Some(&[hi, lo]) = got.get(14..16) {
                        want = PROXY_V2_FIXED_LEN + usize::from(u16::from_be_bytes([hi, lo]));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ProxyHeaderError::Timeout))
}

/// How a [`splice_report`] ended.
#[derive(Debug)]
pub(crate) enum SpliceEnd {
    /// Both sides closed their sending direction, and each close was passed
    /// on to the other side.
    Closed,
    /// Neither direction moved for the idle timeout; both sides were closed.
    Idle,
    /// Reading from or writing to one side failed; both sides were closed.
    Error(io::Error),
}

/// What a [`splice_report`] moved and how it ended.
#[derive(Debug)]
pub(crate) struct Spliced {
    /// Bytes written to the backend, the first bytes included, the PROXY
    /// header not.
    pub client_to_backend: u64,
    /// Bytes written to the client.
    pub backend_to_client: u64,
    /// Why it stopped.
    pub end: SpliceEnd,
}

#[cfg(test)]
/// Sends `proxy_header` (if any) and then `first_bytes` to `backend`, then
/// copies both ways until both sides have closed (a side's end of stream is
/// passed on with a write shutdown, so half-closed connections work), or
/// until neither direction moved for `idle`, whichever comes first. Returns
/// (bytes client to backend, bytes backend to client), counting
/// `first_bytes` but not the header. An idle timeout is a normal end.
///
/// # Errors
///
/// The first I/O error of either side; both sides are closed and the counts
/// are lost ([`splice_report`] keeps them, for accounting).
pub(crate) async fn splice<C, B>(
    client: C,
    backend: B,
    proxy_header: Option<&[u8]>,
    first_bytes: &[u8],
    idle: Duration,
) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let spliced = splice_report(client, backend, proxy_header, first_bytes, idle).await;
    match spliced.end {
        SpliceEnd::Closed | SpliceEnd::Idle => {
            Ok((spliced.client_to_backend, spliced.backend_to_client))
        }
        SpliceEnd::Error(e) => Err(e),
    }
}

/// [`splice`], reporting the byte counts however it ends (an error
/// included) and why it ended. The header and the first bytes go out in one
/// write: some PROXY protocol receivers expect the header in the first
/// segment.
pub(crate) async fn splice_report<C, B>(
    mut client: C,
    mut backend: B,
    proxy_header: Option<&[u8]>,
    first_bytes: &[u8],
    idle: Duration,
) -> Spliced
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pipe::new(proxy_header.unwrap_or_default(), first_bytes);
    let mut down = Pipe::new(&[], &[]);
    let mut timer = pin!(tokio::time::sleep_until(deadline(idle)));
    let end = std::future::poll_fn(|cx| {
        let mut moved = false;
        let up_state = up.poll_copy(cx, &mut client, &mut backend, &mut moved);
        let down_state = down.poll_copy(cx, &mut backend, &mut client, &mut moved);
        match (up_state, down_state) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => {
                return Poll::Ready(SpliceEnd::Error(e));
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(SpliceEnd::Closed),
            _ => {}
        }
        if moved {
            timer.as_mut().reset(deadline(idle));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(SpliceEnd::Idle),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    Spliced {
        client_to_backend: up.counted,
        backend_to_client: down.counted,
        end,
    }
}

/// `idle` from now; a timeout too long to represent waits for decades.
fn deadline(idle: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(idle)
        .unwrap_or_else(|| now + Duration::from_hours(30 * 365 * 24))
}

/// One direction of a splice: what was read from one side and not yet
/// written to the other.
struct Pipe {
    buf: Box<[u8]>,
    /// `buf[pos..end]` is still to be written.
    pos: usize,
    end: usize,
    /// Leading bytes not to count (the PROXY header) still to be written.
    uncounted: usize,
    /// Counted bytes written.
    counted: u64,
    /// The reading side reached end of stream.
    read_eof: bool,
    /// Bytes were written since the last flush.
    need_flush: bool,
    /// The writing side has been shut down: this direction is finished.
    done: bool,
}

impl Pipe {
    /// A pipe that first writes `uncounted` then `counted`.
    fn new(uncounted: &[u8], counted: &[u8]) -> Self {
        let queued = uncounted.len().saturating_add(counted.len());
        let mut buf = Vec::with_capacity(queued.max(PIPE_BUFFER));
        buf.extend_from_slice(uncounted);
        buf.extend_from_slice(counted);
        buf.resize(queued.max(PIPE_BUFFER), 0);
        Self {
            buf: buf.into_boxed_slice(),
            pos: 0,
            end: queued,
            uncounted: uncounted.len(),
            counted: 0,
            read_eof: false,
            need_flush: false,
            done: false,
        }
    }

    /// Copies until `reader` would block or this direction is finished;
    /// sets `moved` when bytes moved.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..READS_PER_POLL {
            while let Some(pending) = self.buf.get(self.pos..self.end).filter(|p| !p.is_empty()) {
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the peer stopped accepting bytes",
                    )));
                }
                self.wrote(n);
                *moved = true;
            }
            if self.read_eof {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut self.buf);
            match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => match read.filled().len() {
                    0 => self.read_eof = true,
                    n => {
                        (self.pos, self.end) = (0, n);
                        *moved = true;
                    }
                },
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
        // A side that always has data must not starve the other direction
        // or other connections: come back after everyone else had a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn wrote(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n);
        self.need_flush = true;
        let skipped = n.min(self.uncounted);
        self.uncounted -= skipped;
        self.counted = self
            .counted
            .saturating_add(u64::try_from(n - skipped).unwrap_or(u64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};
    use std::net::{Ipv4Addr, SocketAddrV6};
    use std::sync::{Arc, LazyLock};
    use tokio::io::{AsyncWriteExt, duplex};
    use tokio::net::{TcpListener, TcpStream};

    const H2: &[u8] = b"h2";
    const HTTP11: &[u8] = b"http/1.1";

    /// What rustls's client sends first for `name`, offering `alpn`.
    fn rustls_hello(
        name: &str,
        alpn: &[&[u8]],
        versions: &[&'static SupportedProtocolVersion],
    ) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = ServerName::try_from(name)
            .expect("a valid server name")
            .to_owned();
        let mut conn = ClientConnection::new(Arc::new(config), name).expect("client connection");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write to a Vec");
        }
        let record = split_record(&out, true).expect("rustls sends a handshake record");
        assert!(record.complete, "rustls's first record is complete");
        let record_len = out.len() - record.rest.len();
        out.truncate(record_len);
        out
    }

    /// rustls's hello for "Api.Example.COM." offering h2 and http/1.1.
    fn default_hello() -> Vec<u8> {
        rustls_hello("Api.Example.COM.", &[H2, HTTP11], rustls::DEFAULT_VERSIONS)
    }

    static HELLO: LazyLock<Vec<u8>> = LazyLock::new(default_hello);

    fn expected() -> ClientHello {
        ClientHello {
            sni: Some("api.example.com".to_owned()),
            alpn: vec![H2.to_vec(), HTTP11.to_vec()],
        }
    }

    /// The handshake message (header included) in a single-record hello.
    fn message_of(hello: &[u8]) -> &[u8] {
        &hello[RECORD_HEADER_LEN..]
    }

    fn be16(n: usize) -> [u8; 2] {
        u16::try_from(n).expect("fits in 16 bits").to_be_bytes()
    }

    /// `message` framed as handshake records, cut after each offset in `cuts`.
    fn frame_at(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([&message.len()]) {
            let fragment = &message[start..end];
            out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&be16(fragment.len()));
            out.extend_from_slice(fragment);
            start = end;
        }
        out
    }

    /// A `ClientHello` handshake message with `body`, in one record.
    fn hello_with_body(body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).expect("small").to_be_bytes();
        let mut message = vec![HANDSHAKE_CLIENT_HELLO, len[1], len[2], len[3]];
        message.extend_from_slice(body);
        frame_at(&message, &[])
    }

    fn vec8(data: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(data.len()).expect("fits in 8 bits")];
        out.extend_from_slice(data);
        out
    }

    fn vec16(data: &[u8]) -> Vec<u8> {
        let mut out = be16(data.len()).to_vec();
        out.extend_from_slice(data);
        out
    }

    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend(vec16(data));
        out
    }

    fn sni_extension(names: &[(u8, &[u8])]) -> Vec<u8> {
        let list: Vec<u8> = names
            .iter()
            .flat_map(|&(kind, name)| [vec![kind], vec16(name)].concat())
            .collect();
        extension(EXTENSION_SERVER_NAME, &vec16(&list))
    }

    fn alpn_extension(protocols: &[&[u8]]) -> Vec<u8> {
        let list: Vec<u8> = protocols.iter().flat_map(|p| vec8(p)).collect();
        extension(EXTENSION_ALPN, &vec16(&list))
    }

    /// A hand-built `ClientHello` body, valid until a test changes a part.
    #[derive(Clone)]
    struct Body {
        version: [u8; 2],
        session_id: Vec<u8>,
        suites: Vec<u8>,
        compression: Vec<u8>,
        /// `None`: no extensions block at all.
        extensions: Option<Vec<u8>>,
        trailing: Vec<u8>,
    }

    impl Default for Body {
        fn default() -> Self {
            Self {
                version: [3, 3],
                session_id: vec![7; 32],
                suites: vec![0x13, 0x01, 0xc0, 0x2b],
                compression: vec![0],
                extensions: Some(
                    [
                        sni_extension(&[(0, b"Example.com")]),
                        extension(43, &[2, 3, 4]),
                        alpn_extension(&[H2]),
                    ]
                    .concat(),
                ),
                trailing: vec![],
            }
        }
    }

    impl Body {
        fn with_extensions(extensions: &[Vec<u8>]) -> Self {
            Self {
                extensions: Some(extensions.concat()),
                ..Self::default()
            }
        }

        fn encode(&self) -> Vec<u8> {
            let mut out = self.version.to_vec();
            out.extend_from_slice(&[0x5a; 32]);
            out.extend(vec8(&self.session_id));
            out.extend(vec16(&self.suites));
            out.extend(vec8(&self.compression));
            if let Some(extensions) = &self.extensions {
                out.extend(vec16(extensions));
            }
            out.extend_from_slice(&self.trailing);
            out
        }

        fn parse(&self) -> Result<ClientHello, HelloError> {
            parse_client_hello(&hello_with_body(&self.encode()))
        }
    }

    fn sni_of(name: &[u8]) -> Result<Option<String>, HelloError> {
        Body::with_extensions(&[sni_extension(&[(0, name)])])
            .parse()
            .map(|hello| hello.sni)
    }

    /// The `client_hello` fuzz target's seeds (`fuzz/corpus/client_hello/`)
    /// are real rustls hellos, one record or split over records: each
    /// still parses with the SNI and ALPN it was made with. With
    /// `LB_WRITE_FUZZ_SEEDS=1` this test writes them afresh.
    #[test]
    #[expect(
        clippy::type_complexity,
        reason = "one table row per seed reads better than a struct"
    )]
    fn client_hello_fuzz_seeds_are_real_hellos() {
        let tls12: &[&'static SupportedProtocolVersion] = &[&rustls::version::TLS12];
        let cases: [(
            &str,
            &str,
            &[&[u8]],
            &[&'static SupportedProtocolVersion],
            bool,
        ); 5] = [
            (
                "rustls-tls13-h2",
                "Api.Example.COM.",
                &[H2, HTTP11],
                rustls::DEFAULT_VERSIONS,
                false,
            ),
            (
                "rustls-tls12-http11",
                "www.acme.example",
                &[HTTP11],
                tls12,
                false,
            ),
            (
                "rustls-no-alpn",
                "globex.example",
                &[],
                rustls::DEFAULT_VERSIONS,
                false,
            ),
            (
                "rustls-split-records",
                "a-b_c.example",
                &[H2],
                rustls::DEFAULT_VERSIONS,
                true,
            ),
            (
                "rustls-long-name",
                &format!("{}.example", "x".repeat(63)),
                &[H2],
                tls12,
                false,
            ),
        ];
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/client_hello");
        let write = std::env::var_os("LB_WRITE_FUZZ_SEEDS").is_some();
        for (file, name, alpn, versions, split) in cases {
            let path = dir.join(file);
            if write {
                let mut hello = rustls_hello(name, alpn, versions);
                if split {
                    let message = message_of(&hello).to_vec();
                    hello = frame_at(&message, &[3, 40, 41]);
                }
                std::fs::create_dir_all(&dir).expect("creating the seed directory");
                std::fs::write(&path, hello).expect("writing a seed");
            }
            let seed =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let hello =
                parse_client_hello(&seed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                hello.sni.as_deref(),
                Some(name.trim_end_matches('.').to_ascii_lowercase().as_str()),
                "{file}: SNI"
            );
            assert_eq!(hello.alpn, alpn.to_vec(), "{file}: ALPN");
        }
    }

    #[test]
    fn rustls_hello_gives_normalised_sni_and_alpn() {
        assert_eq!(parse_client_hello(&HELLO), Ok(expected()));
    }

    #[test]
    fn rustls_tls12_only_hello_parses() {
        let hello = rustls_hello("tls12.example", &[HTTP11], &[&rustls::version::TLS12]);
        assert_eq!(
            parse_client_hello(&hello),
            Ok(ClientHello {
                sni: Some("tls12.example".to_owned()),
                alpn: vec![HTTP11.to_vec()],
            })
        );
    }

    #[test]
    fn ip_address_server_name_has_no_sni() {
        for ip in ["192.0.2.10", "2001:db8::1"] {
            let hello = rustls_hello(ip, &[H2], rustls::DEFAULT_VERSIONS);
            assert_eq!(
                parse_client_hello(&hello),
                Ok(ClientHello {
                    sni: None,
                    alpn: vec![H2.to_vec()],
                }),
                "server name {ip}"
            );
        }
    }

    #[test]
    fn no_alpn_is_an_empty_list() {
        let hello = rustls_hello("example.org", &[], rustls::DEFAULT_VERSIONS);
        let parsed = parse_client_hello(&hello).expect("parses");
        assert_eq!(parsed.sni.as_deref(), Some("example.org"));
        assert!(parsed.alpn.is_empty(), "alpn: {:?}", parsed.alpn);
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for n in 0..HELLO.len() {
            assert_eq!(
                parse_client_hello(&HELLO[..n]),
                Err(HelloError::Incomplete),
                "prefix of {n} of {} bytes",
                HELLO.len()
            );
        }
    }

    #[test]
    fn bytes_after_the_hello_are_ignored() {
        // A TLS 1.3 client may follow its hello with ChangeCipherSpec.
        let mut bytes = HELLO.clone();
        bytes.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        assert_eq!(parse_client_hello(&bytes), Ok(expected()));
    }

    #[test]
    fn hello_split_across_two_records_parses_at_every_cut() {
        let message = message_of(&HELLO);
        for cut in 1..message.len() {
            let framed = frame_at(message, &[cut]);
            assert_eq!(parse_client_hello(&framed), Ok(expected()), "cut at {cut}");
            for n in 0..framed.len() {
                assert_eq!(
                    parse_client_hello(&framed[..n]),
                    Err(HelloError::Incomplete),
                    "cut at {cut}, prefix of {n}"
                );
            }
        }
    }

    #[test]
    fn hello_in_one_byte_records_parses() {
        let message = message_of(&HELLO);
        let cuts: Vec<usize> = (1..message.len()).collect();
        let framed = frame_at(message, &cuts);
        assert_eq!(framed.len(), message.len() * (RECORD_HEADER_LEN + 1));
        assert_eq!(parse_client_hello(&framed), Ok(expected()));
    }

    #[test]
    fn not_tls_is_recognised_from_the_first_bytes() {
        let cases: &[(&str, &[u8])] = &[
            ("plain HTTP", b"GET / HTTP/1.1\r\n"),
            ("first byte of plain HTTP", b"G"),
            ("SSLv2-compatible hello", &[0x80, 0x2e, 0x01, 0x03, 0x01]),
            ("application data record", &[23, 3, 3, 0, 5]),
            ("alert record", &[21, 3, 1]),
            ("record version 2.0", &[22, 2, 0]),
            ("record version 3.5", &[22, 3, 5, 0, 1, 1]),
            ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n"),
        ];
        for (what, bytes) in cases {
            assert_eq!(parse_client_hello(bytes), Err(HelloError::NotTls), "{what}");
        }
    }

    #[test]
    fn malformed_records_and_handshakes_name_the_problem() {
        let message = message_of(&HELLO);
        let mut interrupted = frame_at(message, &[10]);
        interrupted[RECORD_HEADER_LEN + 10] = 23;
        let mut server_hello = HELLO.clone();
        server_hello[RECORD_HEADER_LEN] = 2;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "empty record",
                vec![22, 3, 1, 0, 0],
                "empty handshake record",
            ),
            (
                "record over 16 KiB",
                vec![22, 3, 1, 0x40, 0x01],
                "record longer than 16 KiB",
            ),
            (
                "second record not handshake",
                interrupted,
                "a non-handshake record before the end of the ClientHello",
            ),
            (
                "ServerHello",
                server_hello,
                "first handshake message is not a ClientHello",
            ),
            (
                "empty ClientHello",
                hello_with_body(&[]),
                "truncated legacy_version",
            ),
        ];
        for (what, bytes, field) in cases {
            assert_eq!(
                parse_client_hello(&bytes),
                Err(HelloError::Malformed(field)),
                "{what}"
            );
        }
    }

    #[test]
    fn hand_built_hello_parses() {
        assert_eq!(
            Body::default().parse(),
            Ok(ClientHello {
                sni: Some("example.com".to_owned()),
                alpn: vec![H2.to_vec()],
            })
        );
        let bare = Body {
            extensions: None,
            ..Body::default()
        };
        assert_eq!(bare.parse(), Ok(ClientHello::default()), "no extensions");
        let empty = Body::with_extensions(&[]);
        assert_eq!(
            empty.parse(),
            Ok(ClientHello::default()),
            "empty extensions"
        );
    }

    /// The default body, changed by `edit`.
    fn edited(edit: impl FnOnce(&mut Body)) -> Body {
        let mut body = Body::default();
        edit(&mut body);
        body
    }

    #[test]
    fn malformed_fixed_fields_are_named() {
        let cases: Vec<(&str, Body, &str)> = vec![
            (
                "legacy_version 2.0",
                edited(|b| b.version = [2, 0]),
                "legacy_version is not 3.x",
            ),
            (
                "33-byte session id",
                edited(|b| b.session_id = vec![1; 33]),
                "session_id longer than 32 bytes",
            ),
            (
                "no cipher suites",
                edited(|b| b.suites.clear()),
                "no cipher_suites",
            ),
            (
                "odd cipher suites",
                edited(|b| b.suites = vec![0x13, 0x01, 0xc0]),
                "cipher_suites of odd length",
            ),
            (
                "no compression",
                edited(|b| b.compression.clear()),
                "no compression_methods",
            ),
            (
                "trailing bytes",
                edited(|b| b.trailing = vec![0]),
                "bytes after the extensions",
            ),
            (
                "half an extensions length",
                edited(|b| (b.extensions, b.trailing) = (None, vec![0])),
                "truncated extensions",
            ),
        ];
        for (what, body, field) in cases {
            assert_eq!(body.parse(), Err(HelloError::Malformed(field)), "{what}");
        }
    }

    #[test]
    fn malformed_extensions_are_named() {
        let mut too_long = extension(43, &[1, 2, 3]);
        too_long[3] = 9;
        let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
            (
                "extension longer than the block",
                vec![too_long],
                "truncated extension",
            ),
            (
                "duplicate extension",
                vec![extension(43, &[]), extension(43, &[])],
                "an extension type appears twice",
            ),
            (
                "duplicate server_name",
                vec![
                    sni_extension(&[(0, b"a.example")]),
                    sni_extension(&[(0, b"b.example")]),
                ],
                "an extension type appears twice",
            ),
            (
                "two host names",
                vec![sni_extension(&[(0, b"a.example"), (0, b"b.example")])],
                "two host_names in server_name",
            ),
            (
                "empty server_name list",
                vec![extension(0, &vec16(&[]))],
                "empty server_name list",
            ),
            (
                "server_name without a list",
                vec![extension(0, &[])],
                "truncated server_name list",
            ),
            (
                "bytes after the server_name list",
                vec![extension(0, &[vec16(&[0, 0, 1, b'a']), vec![0]].concat())],
                "bytes after the server_name list",
            ),
            (
                "host name longer than its entry",
                vec![extension(0, &vec16(&[0, 0, 9, b'a']))],
                "truncated server_name entry",
            ),
            (
                "empty ALPN list",
                vec![extension(EXTENSION_ALPN, &vec16(&[]))],
                "empty ALPN list",
            ),
            (
                "empty ALPN protocol",
                vec![alpn_extension(&[H2, b""])],
                "empty ALPN protocol name",
            ),
            (
                "ALPN protocol past its list",
                vec![extension(EXTENSION_ALPN, &vec16(&[5, b'h', b'2']))],
                "truncated ALPN protocol name",
            ),
        ];
        for (what, extensions, field) in cases {
            assert_eq!(
                Body::with_extensions(&extensions).parse(),
                Err(HelloError::Malformed(field)),
                "{what}"
            );
        }
    }

    #[test]
    fn host_names_are_validated_and_normalised() {
        let long_ok = [
            &[b'a'; 63][..],
            b".",
            &[b'b'; 63],
            b".",
            &[b'c'; 63],
            b".",
            &[b'd'; 61],
        ]
        .concat();
        assert_eq!(long_ok.len(), 253);
        let valid: &[(&[u8], &str)] = &[
            (b"Api.Example.COM.", "api.example.com"),
            (b"a", "a"),
            (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
            (
                b"_acme-challenge.my_host.example",
                "_acme-challenge.my_host.example",
            ),
            (b"192.0.2.1", "192.0.2.1"),
            (&long_ok, std::str::from_utf8(&long_ok).expect("ASCII")),
        ];
        for (name, normalised) in valid {
            assert_eq!(
                sni_of(name),
                Ok(Some((*normalised).to_owned())),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        let too_long = [&long_ok[..], b"d"].concat();
        let long_label = [&[b'a'; 64][..], b".example"].concat();
        let length = "server_name host_name is empty or longer than 253 bytes";
        let bytes =
            "server_name host_name has a byte other than an ASCII letter, digit, '-', '_' or '.'";
        let labels = "server_name host_name has an empty label or one longer than 63 bytes";
        let invalid: &[(&[u8], &str)] = &[
            (b"", length),
            (b".", length),
            (&too_long, length),
            (b"a b.example", bytes),
            (b"b\xc3\xbccher.example", bytes),
            (b"example.com\0.evil", bytes),
            (b"a*.example", bytes),
            (b"a..example", labels),
            (b".example", labels),
            (b"example..", labels),
            (&long_label, labels),
        ];
        for (name, field) in invalid {
            assert_eq!(
                sni_of(name),
                Err(HelloError::Malformed(field)),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn other_name_types_are_skipped() {
        assert_eq!(
            Body::with_extensions(&[sni_extension(&[(7, b"\xff\xfe"), (0, b"Host.example")])])
                .parse()
                .map(|hello| hello.sni),
            Ok(Some("host.example".to_owned()))
        );
        assert_eq!(
            Body::with_extensions(&[sni_extension(&[(7, b"opaque")])]).parse(),
            Ok(ClientHello::default())
        );
    }

    /// Whether `sni` is what the parser promises: a lower-case DNS name.
    fn is_normalised(sni: &str) -> bool {
        !sni.is_empty()
            && sni.len() <= MAX_HOST_NAME
            && sni
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            && sni
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= MAX_LABEL)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(hello) = parse_client_hello(&bytes) {
                prop_assert!(hello.sni.as_deref().is_none_or(is_normalised), "{hello:?}");
            }
        }

        #[test]
        fn arbitrary_body_in_a_well_framed_hello_is_parsed_or_malformed(
            body in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            match parse_client_hello(&hello_with_body(&body)) {
                Ok(hello) => prop_assert!(hello.sni.as_deref().is_none_or(is_normalised)),
                Err(HelloError::Malformed(_)) => {}
                Err(other) => prop_assert!(false, "complete hello gave {other:?}"),
            }
        }

        #[test]
        fn mutated_real_hello_never_panics(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            insert in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
        ) {
            let mut bytes = HELLO.clone();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            if let Some((at, byte)) = insert {
                let at = at.index(bytes.len());
                bytes.insert(at, byte);
            }
            bytes.truncate(cut.index(bytes.len() + 1).max(1));
            if let Ok(hello) = parse_client_hello(&bytes) {
                prop_assert!(hello.sni.as_deref().is_none_or(is_normalised), "{hello:?}");
            }
        }

        #[test]
        fn any_record_framing_parses_the_same(
            cuts in proptest::collection::btree_set(1..300_usize, 0..20),
        ) {
            let message = message_of(&HELLO);
            let cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < message.len()).collect();
            prop_assert_eq!(parse_client_hello(&frame_at(message, &cuts)), Ok(expected()));
        }
    }

    /// Hands out one byte per read, and makes every other read wait.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        wait: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.wait = !self.wait;
            if self.wait {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some(&byte) = self.data.get(self.pos) {
                buf.put_slice(&[byte]);
                self.pos += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn read_one_byte_at_a_time_returns_the_hello_and_its_bytes() {
        let mut bytes = HELLO.clone();
        bytes.extend_from_slice(b"not read");
        let mut trickle = Trickle {
            data: bytes,
            pos: 0,
            wait: false,
        };
        let (read, hello) = read_client_hello(&mut trickle, MAX_CLIENT_HELLO, LONG)
            .await
            .expect("reads the hello");
        assert_eq!(hello, expected());
        assert_eq!(read, *HELLO, "exactly the hello's bytes");
        assert_eq!(trickle.pos, HELLO.len(), "read no further than the hello");
    }

    #[tokio::test]
    async fn read_over_a_duplex_written_byte_by_byte() {
        let (mut client, mut server) = duplex(64);
        let writer = tokio::spawn(async move {
            for byte in HELLO.iter() {
                client.write_all(&[*byte]).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let (read, hello) = read_client_hello(&mut server, MAX_CLIENT_HELLO, LONG)
            .await
            .expect("reads the hello");
        assert_eq!(hello, expected());
        assert_eq!(read, *HELLO);
        drop(writer.await.expect("writer"));
    }

    #[tokio::test]
    async fn read_keeps_bytes_that_came_with_the_hello() {
        let mut bytes = HELLO.clone();
        bytes.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        let (read, hello) = read_client_hello(&mut bytes.as_slice(), MAX_CLIENT_HELLO, LONG)
            .await
            .expect("reads the hello");
        assert_eq!(hello, expected());
        assert_eq!(
            read, bytes,
            "the ChangeCipherSpec after it is kept for the backend"
        );
    }

    #[tokio::test]
    async fn read_times_out_on_a_stalled_partial_hello() {
        let (mut client, mut server) = duplex(4096);
        client
            .write_all(&HELLO[..HELLO.len() / 2])
            .await
            .expect("write");
        let timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let result = read_client_hello(&mut server, MAX_CLIENT_HELLO, timeout).await;
        assert_eq!(result, Err(HelloError::Timeout));
        assert!(
            started.elapsed() >= timeout,
            "gave up after {:?}",
            started.elapsed()
        );
        drop(client);
    }

    #[tokio::test]
    async fn read_reports_closed_on_end_of_stream() {
        for sent in [0, 1, HELLO.len() - 1] {
            let (mut client, mut server) = duplex(4096);
            client.write_all(&HELLO[..sent]).await.expect("write");
            drop(client);
            let result = read_client_hello(&mut server, MAX_CLIENT_HELLO, LONG).await;
            assert_eq!(result, Err(HelloError::Closed), "after {sent} bytes");
        }
    }

    #[tokio::test]
    async fn read_refuses_plain_http_at_once() {
        let (mut client, mut server) = duplex(4096);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await
            .expect("write");
        let result = read_client_hello(&mut server, MAX_CLIENT_HELLO, LONG).await;
        assert_eq!(result, Err(HelloError::NotTls));
        drop(client);
    }

    #[tokio::test]
    async fn read_refuses_a_hello_declared_too_large_without_waiting_for_it() {
        // A 20000-byte ClientHello announced; only the headers sent, the
        // connection left open: the answer must not wait for the rest.
        let (mut client, mut server) = duplex(4096);
        client
            .write_all(&[
                22,
                3,
                1,
                0x40,
                0x00,
                HANDSHAKE_CLIENT_HELLO,
                0x00,
                0x4e,
                0x20,
            ])
            .await
            .expect("write");
        let result = read_client_hello(&mut server, MAX_CLIENT_HELLO, LONG).await;
        assert_eq!(result, Err(HelloError::TooLarge));
        drop(client);
    }

    #[tokio::test]
    async fn read_refuses_a_hello_over_a_small_limit() {
        let result = read_client_hello(&mut HELLO.as_slice(), HELLO.len() - 1, LONG).await;
        assert_eq!(result, Err(HelloError::TooLarge));
        let (read, _) = read_client_hello(&mut HELLO.as_slice(), HELLO.len(), LONG)
            .await
            .expect("exactly the limit fits");
        assert_eq!(read, *HELLO);
    }

    #[tokio::test]
    async fn read_stops_at_the_limit_when_records_are_tiny() {
        // One-byte records take six times the message's size on the wire:
        // the declared length fits the limit, the bytes do not.
        let message = message_of(&HELLO);
        let cuts: Vec<usize> = (1..message.len()).collect();
        let framed = frame_at(message, &cuts);
        let limit = HELLO.len() + 100;
        assert!(framed.len() > limit);
        let (mut client, mut server) = duplex(framed.len());
        client.write_all(&framed).await.expect("write");
        let result = read_client_hello(&mut server, limit, LONG).await;
        assert_eq!(result, Err(HelloError::TooLarge));
        let (read, hello) = read_client_hello(&mut framed.as_slice(), MAX_CLIENT_HELLO, LONG)
            .await
            .expect("fits the default limit");
        assert_eq!((read, hello), (framed, expected()));
    }

    #[test]
    fn proxy_v2_ipv4_header_is_byte_exact() {
        let header = proxy_v2_header(
            "192.0.2.1:51234".parse().expect("address"),
            "198.51.100.7:443".parse().expect("address"),
        );
        let expected: &[u8] = &[
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54,
            0x0a, // signature
            0x21, // version 2, PROXY
            0x11, // TCP over IPv4
            0x00, 0x0c, // 12 address bytes
            192, 0, 2, 1, // source address
            198, 51, 100, 7, // destination address
            0xc8, 0x22, // source port 51234
            0x01, 0xbb, // destination port 443
        ];
        assert_eq!(header, expected);
    }

    #[test]
    fn proxy_v2_ipv6_header_is_byte_exact() {
        let header = proxy_v2_header(
            "[2001:db8::1]:40000".parse().expect("address"),
            "[2001:db8:ffff::2]:8443".parse().expect("address"),
        );
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        expected.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        ]);
        expected.extend_from_slice(&[0x9c, 0x40, 0x20, 0xfb]);
        assert_eq!(header, expected);
        assert_eq!(header.len(), 16 + 36);
    }

    #[test]
    fn proxy_v2_mixed_families_map_ipv4_into_ipv6() {
        let header = proxy_v2_header(
            "192.0.2.1:1000".parse().expect("address"),
            "[2001:db8::2]:443".parse().expect("address"),
        );
        assert_eq!(header[13], PROXY_V2_TCP6, "family");
        assert_eq!(&header[14..16], &[0, 36], "length");
        assert_eq!(
            &header[16..32],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1],
            "source as ::ffff:192.0.2.1"
        );
        assert_eq!(&header[48..52], &[0x03, 0xe8, 0x01, 0xbb], "ports");
    }

    #[test]
    fn proxy_v2_ipv4_mapped_pair_goes_out_as_ipv4() {
        // What a dual-stack listener reports for an IPv4 client.
        let mapped =
            |ip: Ipv4Addr, port| SocketAddr::V6(SocketAddrV6::new(ip.to_ipv6_mapped(), port, 0, 0));
        assert_eq!(
            proxy_v2_header(
                mapped(Ipv4Addr::new(192, 0, 2, 1), 51234),
                mapped(Ipv4Addr::new(198, 51, 100, 7), 443),
            ),
            proxy_v2_header(
                "192.0.2.1:51234".parse().expect("address"),
                "198.51.100.7:443".parse().expect("address"),
            )
        );
    }

    /// A connected pair of loopback TCP sockets: (connecting end, accepted end).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("listener address");
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.expect("connect"), accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn splice_sends_header_then_first_bytes_then_the_rest_and_half_closes() {
        let (mut client, client_side) = tcp_pair().await;
        let (backend_side, mut backend) = tcp_pair().await;
        let header = proxy_v2_header(
            client.local_addr().expect("client address"),
            client_side.local_addr().expect("local address"),
        );
        let first = HELLO.clone();
        let splicing = tokio::spawn({
            let (header, first) = (header.clone(), first.clone());
            async move {
                splice(
                    client_side,
                    backend_side,
                    Some(header.as_slice()),
                    &first,
                    LONG,
                )
                .await
            }
        });

        let rest = b"the rest of the client's bytes".repeat(1000);
        client.write_all(&rest).await.expect("client writes");
        client.shutdown().await.expect("client half-closes");

        let mut received = Vec::new();
        backend
            .read_to_end(&mut received)
            .await
            .expect("backend reads until the client's close arrives");
        assert_eq!(&received[..header.len()], header, "the PROXY header first");
        let after = &received[header.len()..];
        assert_eq!(&after[..first.len()], first, "then the first bytes");
        assert_eq!(&after[first.len()..], rest, "then the rest");

        // The client has half-closed; the other direction still works.
        let mut reply = after.to_vec();
        reply.extend_from_slice(b" and goodbye");
        backend.write_all(&reply).await.expect("backend echoes");
        backend.shutdown().await.expect("backend closes");
        let mut echoed = Vec::new();
        client
            .read_to_end(&mut echoed)
            .await
            .expect("client reads until the backend's close arrives");
        assert_eq!(echoed, reply);

        let counts = splicing.await.expect("splice task").expect("splice");
        let sent = u64::try_from(first.len() + rest.len()).expect("fits");
        let echoed = u64::try_from(reply.len()).expect("fits");
        assert_eq!(
            counts,
            (sent, echoed),
            "counts include the first bytes, not the header"
        );
    }

    #[tokio::test]
    async fn splice_without_header_starts_with_the_first_bytes() {
        let (mut client, client_side) = tcp_pair().await;
        let (backend_side, mut backend) = tcp_pair().await;
        let splicing =
            tokio::spawn(
                async move { splice(client_side, backend_side, None, b"first", LONG).await },
            );
        client.shutdown().await.expect("client half-closes");
        let mut received = Vec::new();
        backend
            .read_to_end(&mut received)
            .await
            .expect("backend reads");
        assert_eq!(received, b"first");
        drop(backend);
        let mut echoed = Vec::new();
        client.read_to_end(&mut echoed).await.expect("client reads");
        assert!(echoed.is_empty());
        assert_eq!(splicing.await.expect("task").expect("splice"), (5, 0));
    }

    #[tokio::test]
    async fn splice_closes_both_sides_when_idle() {
        let (mut client, client_side) = tcp_pair().await;
        let (backend_side, mut backend) = tcp_pair().await;
        let idle = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let splicing = tokio::spawn(async move {
            splice_report(client_side, backend_side, None, b"hello", idle).await
        });
        let mut received = Vec::new();
        backend
            .read_to_end(&mut received)
            .await
            .expect("backend sees the close");
        assert_eq!(received, b"hello");
        let mut echoed = Vec::new();
        client
            .read_to_end(&mut echoed)
            .await
            .expect("client sees the close");
        assert!(echoed.is_empty());
        let spliced = splicing.await.expect("task");
        assert!(matches!(spliced.end, SpliceEnd::Idle), "{:?}", spliced.end);
        assert_eq!(
            (spliced.client_to_backend, spliced.backend_to_client),
            (5, 0)
        );
        assert!(
            started.elapsed() >= idle,
            "closed after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn splice_traffic_keeps_the_idle_timer_from_firing() {
        let (mut client, client_side) = tcp_pair().await;
        let (backend_side, mut backend) = tcp_pair().await;
        let idle = Duration::from_millis(500);
        let splicing =
            tokio::spawn(
                async move { splice_report(client_side, backend_side, None, &[], idle).await },
            );
        // Eight round trips 100 ms apart: 800 ms in all, longer than `idle`.
        for round in 0..8_u8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(&[round]).await.expect("client writes");
            let mut byte = [0];
            backend.read_exact(&mut byte).await.expect("backend reads");
            backend.write_all(&byte).await.expect("backend echoes");
            client.read_exact(&mut byte).await.expect("client reads");
            assert_eq!(byte, [round]);
        }
        client.shutdown().await.expect("client closes");
        backend.shutdown().await.expect("backend closes");
        let spliced = splicing.await.expect("task");
        assert!(
            matches!(spliced.end, SpliceEnd::Closed),
            "{:?}",
            spliced.end
        );
        assert_eq!(
            (spliced.client_to_backend, spliced.backend_to_client),
            (8, 8)
        );
    }

    #[tokio::test]
    async fn splice_reports_a_failing_side_with_its_counts() {
        let (client, _client_peer) = duplex(64);
        let (backend, backend_peer) = duplex(64);
        drop(backend_peer);
        let result = splice(client, backend, None, b"first", LONG).await;
        let error = result.expect_err("writing to a closed backend fails");
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe, "{error}");

        let (mut client, client_side) = duplex(64);
        let (backend_side, mut backend) = duplex(64);
        let splicing = tokio::spawn(async move {
            splice_report(client_side, backend_side, None, b"ab", LONG).await
        });
        let mut first = [0; 2];
        backend.read_exact(&mut first).await.expect("backend reads");
        drop(backend);
        client.write_all(b"cd").await.expect("client writes");
        let spliced = splicing.await.expect("task");
        assert!(
            matches!(spliced.end, SpliceEnd::Error(_)),
            "{:?}",
            spliced.end
        );
        assert_eq!(spliced.client_to_backend, 2, "what reached the backend");
        drop(client);
    }

    #[test]
    fn proxy_v2_reader_round_trips_the_writer() {
        for (source, destination) in [
            ("192.0.2.77:51234", "198.51.100.7:443"),
            ("[2001:db8::77]:40000", "[2001:db8:ffff::2]:8443"),
        ] {
            let source: SocketAddr = source.parse().expect("address");
            let destination: SocketAddr = destination.parse().expect("address");
            let header = proxy_v2_header(source, destination);
            let mut with_request = header.clone();
            with_request.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                parse_proxy_v2(&with_request),
                Ok((
                    ProxyHeader::Proxy {
                        source,
                        destination
                    },
                    header.len()
                )),
                "{source}"
            );
        }
    }

    /// A v2 header: version and command, family, then `block` (its length
    /// as declared).
    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = PROXY_V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[command, family]);
        h.extend_from_slice(&u16::try_from(block.len()).expect("short").to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[test]
    fn proxy_v2_local_keeps_the_connection_addresses() {
        assert_eq!(
            parse_proxy_v2(&v2(0x20, 0x00, &[])),
            Ok((ProxyHeader::Local, 16))
        );
        // LOCAL ignores whatever addresses it carries.
        let block = [192, 0, 2, 1, 198, 51, 100, 7, 0, 1, 0, 2];
        assert_eq!(
            parse_proxy_v2(&v2(0x20, 0x11, &block)),
            Ok((ProxyHeader::Local, 28))
        );
        // PROXY with an unspecified family: the spec says to use the
        // connection's own addresses.
        assert_eq!(
            parse_proxy_v2(&v2(0x21, 0x00, &[])),
            Ok((ProxyHeader::Local, 16))
        );
    }

    #[test]
    fn proxy_v2_tlvs_are_skipped() {
        let mut block = vec![192, 0, 2, 1, 198, 51, 100, 7, 0xc8, 0x22, 0x01, 0xbb];
        // PP2_TYPE_AUTHORITY "a.example", then a NOOP TLV.
        block.extend_from_slice(&[0x02, 0x00, 0x09]);
        block.extend_from_slice(b"a.example");
        block.extend_from_slice(&[0x04, 0x00, 0x00]);
        let header = v2(0x21, 0x11, &block);
        let (parsed, len) = parse_proxy_v2(&header).expect("valid");
        assert_eq!(len, header.len());
        assert_eq!(
            parsed,
            ProxyHeader::Proxy {
                source: "192.0.2.1:51234".parse().expect("address"),
                destination: "198.51.100.7:443".parse().expect("address"),
            }
        );
    }

    #[test]
    fn proxy_v2_truncated_headers_are_incomplete() {
        let header = proxy_v2_header(
            "[2001:db8::77]:40000".parse().expect("address"),
            "[2001:db8::2]:443".parse().expect("address"),
        );
        for cut in 0..header.len() {
            assert_eq!(
                parse_proxy_v2(&header[..cut]),
                Err(ProxyHeaderError::Incomplete),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn proxy_v2_refuses_what_is_not_a_tcp_header() {
        let tcp4 = [0; 12];
        for (bytes, expected) in [
            (b"GET / HTTP/1.1\r\n".to_vec(), ProxyHeaderError::Signature),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\n".to_vec(),
                ProxyHeaderError::Signature,
            ),
            // A TLS record header fails at its first byte.
            (vec![0x16], ProxyHeaderError::Signature),
            (v2(0x11, 0x11, &tcp4), ProxyHeaderError::Command(0x11)),
            (v2(0x22, 0x11, &tcp4), ProxyHeaderError::Command(0x22)),
            // UDP over IPv4, a Unix stream, an unknown family.
            (v2(0x21, 0x12, &tcp4), ProxyHeaderError::Family(0x12)),
            (v2(0x21, 0x31, &[0; 216]), ProxyHeaderError::Family(0x31)),
            (v2(0x21, 0x41, &tcp4), ProxyHeaderError::Family(0x41)),
            (v2(0x21, 0x11, &[0; 11]), ProxyHeaderError::Short(11)),
            (v2(0x21, 0x21, &[0; 12]), ProxyHeaderError::Short(12)),
        ] {
            assert_eq!(parse_proxy_v2(&bytes), Err(expected), "{bytes:02x?}");
        }
        // Refused from the fixed part alone: nothing past it is needed.
        let oversized = v2(0x21, 0x11, &[0; MAX_PROXY_V2_HEADER - 15]);
        assert_eq!(
            parse_proxy_v2(&oversized[..16]),
            Err(ProxyHeaderError::TooLarge(MAX_PROXY_V2_HEADER + 1))
        );
        let largest = v2(0x21, 0x11, &[0; MAX_PROXY_V2_HEADER - 16]);
        assert!(parse_proxy_v2(&largest).is_ok());
        let mut max_len = v2(0x21, 0x21, &[]);
        max_len[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            parse_proxy_v2(&max_len),
            Err(ProxyHeaderError::TooLarge(16 + 65535))
        );
    }

    #[tokio::test]
    async fn proxy_v2_read_takes_the_header_and_no_more() {
        let header = proxy_v2_header(
            "192.0.2.77:5000".parse().expect("address"),
            "198.51.100.7:80".parse().expect("address"),
        );
        let (mut client, mut server) = duplex(1024);
        let mut sent = header.clone();
        sent.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        // In pieces: the reader waits for the rest.
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(7) {
                client.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let parsed = read_proxy_v2(&mut server, LONG).await.expect("a header");
        assert_eq!(
            parsed,
            ProxyHeader::Proxy {
                source: "192.0.2.77:5000".parse().expect("address"),
                destination: "198.51.100.7:80".parse().expect("address"),
            }
        );
        let _client = writer.await.expect("writer");
        let mut rest = [0; 18];
        server.read_exact(&mut rest).await.expect("the request");
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n\r\n", "left in the stream");
    }

    #[tokio::test]
    async fn proxy_v2_read_fails_closed() {
        let header = proxy_v2_header(
            "192.0.2.77:5000".parse().expect("address"),
            "198.51.100.7:80".parse().expect("address"),
        );
        assert_eq!(
            read_proxy_v2(&mut &header[..20], LONG).await,
            Err(ProxyHeaderError::Closed)
        );
        assert_eq!(
            read_proxy_v2(&mut &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], LONG).await,
            Err(ProxyHeaderError::Signature)
        );
        let (_client, mut server) = duplex(64);
        assert_eq!(
            read_proxy_v2(&mut server, Duration::from_millis(20)).await,
            Err(ProxyHeaderError::Timeout)
        );
    }
}
