//! The reverse proxy: one request from identification to the backend's
//! answer.
//!
//! For every request: find the tenant ([`routing`](super::routing)), apply
//! its request policy ([`policy`](super::policy): 401, 403, 429, 503),
//! refuse what must be refused (421, 403, 404, 413, 431), pick the route and a
//! backend of the tenant's pool, rewrite the headers the proxy owns
//! ([`headers`](super::headers)), send it with the pool's pooled client,
//! and stream the answer back. An idempotent request without a body whose
//! backend gives no response (cannot be connected to, or closes or resets
//! the connection first) is retried on another backend (never the same one
//! twice), up to the site's `retries`. Every outcome feeds the
//! pool's outlier detection, the tenant's counters and one access-log line,
//! written when the response body is finished so that it carries the bytes
//! actually sent.
//!
//! Errors produced by the proxy itself are small JSON documents,
//! `{"error": "...", "request_id": "..."}`, with the statuses in
//! [`Rejection`].

use std::{
    borrow::Cow,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Instant,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
    uri::{PathAndQuery, Scheme},
};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;

use crate::config::{BackendProtocol, L7Protocol};

use super::{
    access_log::{self, AccessLogger, Entry},
    admission::{
        self, Ask, ConnectionGuard, InflightGuard, Policy, Proof, auth::Credentials, bucket::Quota,
    },
    body::{BoxError, ProxyBody, empty, full},
    headers::{self, Forwarding},
    path,
    routing::{self, Identified, ListenerRouting, PoolRouting, Refusal, RequestFacts, Routing},
    stats::TenantStats,
    tunnel,
};

/// What a connection knows about itself.
pub(crate) struct ConnInfo {
    pub client: SocketAddr,
    pub listen: SocketAddr,
    /// Normalised SNI of the TLS session.
    pub sni: Option<String>,
    pub https: bool,
    /// `client`'s `X-Forwarded-For` value.
    pub forwarded_for: HeaderValue,
    /// The TCP peer is one of the listener's `trusted_proxies`: its
    /// `X-Forwarded-For` is extended rather than replaced.
    pub from_trusted_proxy: bool,
    /// The connection's place in its tenant's `max_connections`, taken
    /// when the tenant is first known (at the TLS accept from the SNI,
    /// else at the first request).
    pub slot: OnceLock<ConnSlot>,
    /// The connection's place in the drain's count of open connections,
    /// released with the last reference (a tunnel's included).
    open: Option<Box<dyn Send + Sync>>,
    /// The responses being sent, for [`ConnInfo::abandon_stalled`].
    sending: std::sync::Mutex<Vec<std::sync::Weak<Sending>>>,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("client", &self.client)
            .field("listen", &self.listen)
            .field("sni", &self.sni)
            .field("https", &self.https)
            .field("slot", &self.slot)
            .field("open", &self.open.is_some())
            .finish_non_exhaustive()
    }
}

impl ConnInfo {
    #[must_use]
    pub(crate) fn new(
        client: SocketAddr,
        listen: SocketAddr,
        sni: Option<String>,
        https: bool,
    ) -> Self {
        Self {
            client,
            listen,
            sni,
            https,
            forwarded_for: headers::forwarded_for(client.ip()),
            from_trusted_proxy: false,
            slot: OnceLock::new(),
            open: None,
            sending: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Responses whose body the connection still holds.
    #[must_use]
    pub(crate) fn responses_open(&self) -> usize {
        self.sending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Lets [`ConnInfo::abandon_stalled`] see a response.
    fn watch(&self, s: &Arc<Sending>) {
        let mut list = self
            .sending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Finished responses are forgotten as new ones come, so the list
        // stays as long as the requests in flight.
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(s));
    }

    /// Abandons every response that has waited on the client for `send`
    /// or longer (the client stopped reading: a zero TCP or h2 window).
    /// Its backend body, in-flight places and counters are released at
    /// once. Returns what was abandoned, for the connection to act on.
    pub(crate) fn abandon_stalled(&self, send: std::time::Duration) -> Abandoned {
        let now = now_ms();
        let list: Vec<Arc<Sending>> = self
            .sending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        let mut out = Abandoned::default();
        for s in list {
            if s.abandon_if_stalled(now, send) {
                if s.h2 {
                    out.h2_streams += 1;
                } else {
                    out.http1 += 1;
                }
            }
        }
        out
    }
}

/// What [`ConnInfo::abandon_stalled`] abandoned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Abandoned {
    /// HTTP/1 responses: their connection must close.
    pub http1: usize,
    /// h2 streams: reset when the connection next polls them.
    pub h2_streams: usize,
}

impl ConnInfo {
    /// Keeps `guard` for as long as the connection (or a tunnel made of
    /// it) lives.
    #[must_use]
    pub(crate) fn holding(mut self, guard: impl Send + Sync + 'static) -> Self {
        self.open = Some(Box::new(guard));
        self
    }
}

/// Whose connection it is, for `max_connections`.
#[derive(Debug)]
pub(crate) enum ConnSlot {
    /// Counted against `tenant` until the connection closes.
    Held {
        tenant: String,
        _guard: ConnectionGuard,
    },
    /// Over `tenant`'s limit: its requests get 429 and the connection
    /// closes.
    Refused { tenant: String },
}

impl ConnSlot {
    /// The tenant the connection counts against.
    #[must_use]
    pub(crate) fn tenant(&self) -> &str {
        match self {
            Self::Held { tenant, .. } | Self::Refused { tenant } => tenant,
        }
    }

    /// Counts a connection of `tenant`.
    #[must_use]
    pub(crate) fn take(policy: &Policy, tenant: &str) -> Self {
        match policy.connect(tenant) {
            Ok(guard) => Self::Held {
                tenant: tenant.to_owned(),
                _guard: guard,
            },
            Err(_) => Self::Refused {
                tenant: tenant.to_owned(),
            },
        }
    }
}

/// Shared by every connection of every listener.
pub(crate) struct Proxy {
    pub routing: Arc<ArcSwap<Routing>>,
    /// Swapped when `node.access_log` changes on a reload.
    pub log: ArcSwap<AccessLogger>,
    /// Per-tenant request policy (its state outlives routing snapshots).
    pub policy: Arc<Policy>,
}

/// Why the proxy answers a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    Misdirected,
    TenantMismatch,
    UnknownHost,
    NoRoute,
    PayloadTooLarge,
    HeadersTooLarge,
    NoBackend,
    UpstreamError,
    UpstreamTimeout,
    ListenerGone,
    /// The client's upload went wrong (malformed chunking, an aborted
    /// body): 400. Never counted against the backend.
    BadRequestBody,
    /// The client's upload did not finish within `timeouts.request`: 408.
    /// Never counted against the backend.
    RequestBodyTimeout,
    /// A request the proxy will not read as it stands (duplicate or
    /// disagreeing hosts, duplicate credential headers, a malformed path):
    /// 400, with this code.
    Malformed(&'static str),
}

impl Rejection {
    #[must_use]
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::TenantMismatch => StatusCode::FORBIDDEN,
            Self::UnknownHost | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoBackend | Self::ListenerGone => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Malformed(_) | Self::BadRequestBody => StatusCode::BAD_REQUEST,
            Self::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The `error` of the JSON body and the access log's `decision`.
    #[must_use]
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::Misdirected => "misdirected",
            Self::TenantMismatch => "tenant_mismatch",
            Self::UnknownHost => "unknown_host",
            Self::NoRoute => "no_route",
            Self::PayloadTooLarge => "body_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::NoBackend => "no_backend",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::ListenerGone => "listener_removed",
            Self::BadRequestBody => "bad_request_body",
            Self::RequestBodyTimeout => "request_body_timeout",
            Self::Malformed(code) => code,
        }
    }
}

/// A JSON error answer.
fn reject(rejection: Rejection, request_id: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": rejection.code(), "request_id": request_id });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = rejection.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(headers::X_REQUEST_ID, v);
    }
    if rejection == Rejection::NoBackend {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Whether a request may be sent twice: RFC 9110's idempotent methods.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The size of a request head as it arrived (approximately: names,
/// values and separators).
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// The answer of a request the policy refused: the JSON error, with
/// `Retry-After`, the `RateLimit-*` headers or `WWW-Authenticate` as the
/// refusal says; `close` asks an HTTP/1.1 client to close the connection.
fn policy_answer(r: &admission::Refusal, request_id: &str, close: bool) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": r.reason.code(), "request_id": request_id });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = r.reason.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(headers::X_REQUEST_ID, v);
    }
    if let Some(secs) = r.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(q) = &r.quota {
        quota_headers(h, q);
    }
    if let Some(challenge) = r
        .www_authenticate
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert(header::WWW_AUTHENTICATE, challenge);
    }
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The `RateLimit-Limit`, `-Remaining`, `-Reset` headers (IETF
/// httpapi-ratelimit-headers draft): the bucket's size, the requests left,
/// the seconds until it is full again; and `RateLimit-Policy` with the
/// window it fills over.
fn quota_headers(h: &mut http::HeaderMap, q: &Quota) {
    let secs = |d: std::time::Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    h.insert("ratelimit-limit", HeaderValue::from(q.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(q.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(secs(q.reset)));
    if let Ok(v) = HeaderValue::from_str(&format!("{};w={}", q.limit, secs(q.window).max(1))) {
        h.insert("ratelimit-policy", v);
    }
}

/// Where an admitted request goes.
struct Admitted {
    /// The `Upgrade` token the request asks for, when the site allows it.
    upgrade: Option<HeaderValue>,
    /// The Host the backend receives.
    authority: Option<HeaderValue>,
    tenant: String,
    stats: Arc<TenantStats>,
    pool: Arc<PoolRouting>,
    /// `None` when the rewritten path is not a valid URI path.
    backend_path: Option<PathAndQuery>,
    /// The index of the route in the site's `routes` (the log's rule).
    route: usize,
    retries: u32,
    timeout: std::time::Duration,
    /// The site's idle timeout (for a tunnel).
    idle: std::time::Duration,
    max_body: u64,
    /// The quota to tell the client about.
    quota: Option<Quota>,
    /// Its place in the tenant's and the node's in-flight counts, held
    /// until the response is finished.
    inflight: Option<InflightGuard>,
}

/// Why a request was answered by the proxy, and whose it was.
struct Refused {
    rejection: Option<Rejection>,
    tenant: Option<String>,
    stats: Option<Arc<TenantStats>>,
    /// A ready answer instead of a rejection (the HTTPS redirect).
    answer: Option<Response<ProxyBody>>,
}

impl Refused {
    fn with(rejection: Rejection, tenant: Option<String>, stats: Option<Arc<TenantStats>>) -> Self {
        Self {
            rejection: Some(rejection),
            tenant,
            stats,
            answer: None,
        }
    }
}

/// What the request loop tells the response side.
struct Forwarded {
    response: Result<Response<Incoming>, Rejection>,
    attempts: u32,
    upstream: Option<SocketAddr>,
    upstream_ms: Option<f64>,
}

impl Proxy {
    /// Serves one request of a connection. Every answer of an identified
    /// site, the backend's or the proxy's own, carries the site's `hsts`.
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> Response<Tracked> {
        let mut hsts = None;
        let mut resp = self.respond(req, Arc::clone(&conn), &mut hsts).await;
        headers::set_hsts(resp.headers_mut(), hsts);
        conn.watch(&resp.body().sending);
        resp
    }

    /// [`Proxy::handle`]; `hsts` gets the identified site's.
    #[expect(
        clippy::too_many_lines,
        reason = "one request from identification to the answer, read top to bottom"
    )]
    async fn respond(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<ConnInfo>,
        hsts: &mut Option<HeaderValue>,
    ) -> Response<Tracked> {
        let start = Instant::now();
        let routing = self.routing.load_full();
        let request_id = headers::request_id(req.headers());
        let target = request_target(&req, conn.https);
        // The log line's texts are only made when the log is on.
        let logging = self.log.load().enabled();
        let mut entry = if logging {
            log_entry(&req, &conn, &request_id, target.as_ref().ok())
        } else {
            Entry::default()
        };

        let target = match target {
            Ok(t) => t,
            Err(rejection) => {
                return self.refused(
                    Refused::with(rejection, None, None),
                    entry,
                    &request_id,
                    start,
                );
            }
        };
        let admitted = admit(
            &routing,
            &self.policy,
            &conn,
            &req,
            &target,
            &mut entry,
            hsts,
        );
        // Not needed past admission: dropped here, it takes no room in the
        // future that awaits the backend.
        drop(target);
        drop(routing);
        let mut admitted = match admitted {
            Ok(a) => a,
            Err(refused) => return self.refused(*refused, entry, &request_id, start),
        };
        let inflight = admitted.inflight.take();
        if logging {
            entry.tenant = Some(admitted.tenant.clone());
            entry.pool = Some(admitted.pool.name.clone());
            entry.rule = Some(format!("routes[{}]", admitted.route));
        }

        let client_upgrade = admitted
            .upgrade
            .is_some()
            .then(|| hyper::upgrade::on(&mut req));
        let upload = Arc::new(Upload::default());
        let forwarded = forward(req, &conn, &admitted, &request_id, &upload).await;
        entry.attempts = forwarded.attempts;
        entry.upstream = forwarded.upstream;
        entry.upstream_ms = forwarded.upstream_ms;
        let mut resp = match forwarded.response {
            Ok(resp) => resp,
            Err(rejection) => {
                entry.decision = rejection.code();
                return self.finish(
                    reject(rejection, &request_id),
                    entry,
                    Some(admitted.stats),
                    Some(Arc::clone(&upload)),
                    start,
                    inflight,
                );
            }
        };
        entry.decision = "route";

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let Some(client_upgrade) = client_upgrade else {
                // A backend switching protocols nobody asked it for.
                entry.decision = Rejection::UpstreamError.code();
                return self.finish(
                    reject(Rejection::UpstreamError, &request_id),
                    entry,
                    Some(admitted.stats),
                    Some(upload),
                    start,
                    inflight,
                );
            };
            spawn_tunnel(
                client_upgrade,
                hyper::upgrade::on(&mut resp),
                Arc::clone(&conn),
                Arc::clone(&admitted.stats),
                admitted.idle,
            );
        }
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, switching);
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            parts.headers.insert(headers::X_REQUEST_ID, v);
        }
        if let Some(q) = &admitted.quota {
            quota_headers(&mut parts.headers, q);
        }
        self.finish(
            Response::from_parts(parts, body.map_err(BoxError::from).boxed()),
            entry,
            Some(admitted.stats),
            Some(upload),
            start,
            inflight,
        )
    }

    /// The answer to a request the proxy refused.
    fn refused(
        &self,
        refused: Refused,
        mut entry: Entry,
        request_id: &str,
        start: Instant,
    ) -> Response<Tracked> {
        entry.tenant = refused.tenant;
        let answer = match (refused.answer, refused.rejection) {
            (Some(answer), _) => answer,
            (None, Some(r)) => {
                entry.decision = r.code();
                reject(r, request_id)
            }
            (None, None) => reject(Rejection::NoRoute, request_id),
        };
        self.finish(answer, entry, refused.stats, None, start, None)
    }
}

/// The access-log line of a request, before anything is decided.
fn log_entry<B>(
    req: &Request<B>,
    conn: &ConnInfo,
    request_id: &str,
    target: Option<&Target>,
) -> Entry {
    Entry {
        time: access_log::now(),
        request_id: Some(request_id.to_owned()),
        client: Some(conn.client),
        listener: Some(conn.listen),
        sni: conn.sni.clone(),
        host: target.and_then(|t| t.host.clone()),
        method: Some(req.method().as_str().to_owned()),
        path: Some(target.map_or_else(
            || {
                req.uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned()
            },
            |t| t.path_and_query.clone(),
        )),
        protocol: Some(if req.version() == Version::HTTP_2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        }),
        ..Entry::default()
    }
}

/// Runs the tunnel of an upgraded request once both sides have switched.
/// It holds the client's connection (`conn`: its place in the tenant's
/// `max_connections` and in the drain) until it ends, and adds its bytes
/// to the tenant's counters.
fn spawn_tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    conn: Arc<ConnInfo>,
    stats: Arc<TenantStats>,
    idle: std::time::Duration,
) {
    tokio::spawn(async move {
        let (Ok(client), Ok(backend)) = (client.await, backend.await) else {
            return;
        };
        let carried = tunnel::run(
            hyper_util::rt::TokioIo::new(client),
            hyper_util::rt::TokioIo::new(backend),
            idle,
        )
        .await;
        stats.bytes_in.fetch_add(carried.client_to_backend, Relaxed);
        stats
            .bytes_out
            .fetch_add(carried.backend_to_client, Relaxed);
        tracing::debug!(client = %conn.client, ?carried, "tunnel closed");
    });
}

impl Proxy {
    /// The response with the body that records the request when done (and
    /// releases its place in the in-flight counts then).
    fn finish(
        &self,
        resp: Response<ProxyBody>,
        mut entry: Entry,
        stats: Option<Arc<TenantStats>>,
        upload: Option<Arc<Upload>>,
        start: Instant,
        inflight: Option<InflightGuard>,
    ) -> Response<Tracked> {
        let (parts, body) = resp.into_parts();
        entry.status = parts.status.as_u16();
        let h2 = entry.protocol == Some("HTTP/2");
        Response::from_parts(
            parts,
            Tracked::new(
                body,
                Done {
                    log: AccessLogger::clone(&self.log.load()),
                    stats,
                    entry,
                    start,
                    upload,
                    _inflight: inflight,
                },
                h2,
            ),
        )
    }
}

/// What a request asks for, once checked: its authority, host and path.
struct Target {
    /// The authority as the client wrote it (the URI's, else Host), which
    /// the backend receives as its Host header.
    authority: Option<HeaderValue>,
    /// The authority's host, normalised, without the port.
    host: Option<String>,
    /// The normalised path ([`path::normalise`]) and the query.
    path_and_query: String,
}

/// The request's target, or 400 when its parts disagree: the URI's
/// authority (HTTP/1.1 absolute form, h2's `:authority`) and the Host
/// header must name the same host and port, a request has at most one
/// Host (and at most one `X-API-Key` and one `Authorization`: which of two
/// would count is not for a client to play with), and its path must
/// normalise. Identification, routes and the backend then all see this one
/// host and path.
fn request_target<B>(req: &Request<B>, https: bool) -> Result<Target, Rejection> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::Malformed("duplicate_host"));
    }
    if admission::auth::duplicated(req.headers()) {
        return Err(Rejection::Malformed("duplicate_credentials"));
    }
    let authority = match (req.uri().authority(), host_header) {
        (Some(uri), Some(h)) => {
            let h_text = h.to_str().map_err(|_| Rejection::Malformed("bad_host"))?;
            if !same_authority(uri.as_str(), h_text, https) {
                return Err(Rejection::Malformed("host_mismatch"));
            }
            Some(h.clone())
        }
        (Some(uri), None) => Some(
            HeaderValue::from_str(uri.as_str()).map_err(|_| Rejection::Malformed("bad_host"))?,
        ),
        (None, Some(h)) => Some(h.clone()),
        (None, None) => None,
    };
    let host = match &authority {
        Some(a) => {
            let text = a.to_str().map_err(|_| Rejection::Malformed("bad_host"))?;
            Some(checked_host(text).ok_or(Rejection::Malformed("bad_host"))?)
        }
        None => None,
    };
    let raw_path = req.uri().path();
    let normalised = path::normalise(raw_path).map_err(|e| Rejection::Malformed(e.code()))?;
    let path_and_query = match req.uri().query() {
        Some(q) => {
            let mut pq = String::with_capacity(normalised.len() + 1 + q.len());
            pq.push_str(&normalised);
            pq.push('?');
            pq.push_str(q);
            pq
        }
        None => normalised.into_owned(),
    };
    Ok(Target {
        authority,
        host,
        path_and_query,
    })
}

/// The normalised host of a Host value (or a URI's authority) that is
/// `host[:port]` with a host of non-empty labels, or empty (RFC 9110 7.2
/// allows an empty Host for a target without authority); `None` for any
/// other value, user info included. RFC 9112 3.2 makes an invalid Host a
/// 400; and a name such as `acme.example..` or `a/b` would reach the
/// backend as its Host after matching no site (found by the `request_head`
/// fuzz target: such a host also did not normalise to itself). The host is
/// normalised once, here, for both the check and the caller.
fn checked_host(text: &str) -> Option<String> {
    if text.is_empty() {
        return Some(routing::request_host(text));
    }
    if text.contains('@') || text.parse::<http::uri::Authority>().is_err() {
        return None;
    }
    // `Authority` does not check the port: what follows the host is
    // nothing, or `:` and an optional port number.
    let after_host = match text.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(_, p)| p),
        None => text.rfind(':').map_or("", |i| &text[i..]),
    };
    if !after_host.is_empty()
        && !after_host
            .strip_prefix(':')
            .is_some_and(|p| p.is_empty() || p.parse::<u16>().is_ok())
    {
        return None;
    }
    let host = routing::request_host(text);
    (!host.is_empty() && !host.split('.').any(str::is_empty)).then_some(host)
}

/// [`request_target`] for the fuzz targets ([`crate::fuzzing`]): the
/// normalised host and the path with its query, or the 400's code.
pub(crate) fn checked_target<B>(
    req: &Request<B>,
    https: bool,
) -> Result<(Option<String>, String), &'static str> {
    request_target(req, https)
        .map(|t| (t.host, t.path_and_query))
        .map_err(Rejection::code)
}

/// Whether two authorities name the same host and port (a missing port
/// being the scheme's).
fn same_authority(a: &str, b: &str, https: bool) -> bool {
    let default = if https { 443 } else { 80 };
    let port = |x: &str| -> Option<u16> {
        let after_host = match x.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map_or("", |(_, p)| p),
            None => x.rfind(':').map_or("", |i| &x[i..]),
        };
        match after_host.strip_prefix(':') {
            None | Some("") => Some(default),
            Some(p) => p.parse().ok(),
        }
    };
    routing::request_host(a) == routing::request_host(b) && port(a).is_some() && port(a) == port(b)
}

/// Identification and every check before the request may go to a
/// backend: the tenant, its policy, the route and the pool. `hsts` gets
/// the identified site's, whether the request is admitted or not.
fn admit<B: Body>(
    routing: &Routing,
    policy: &Policy,
    conn: &ConnInfo,
    req: &Request<B>,
    target: &Target,
    entry: &mut Entry,
    hsts: &mut Option<HeaderValue>,
) -> Result<Admitted, Box<Refused>> {
    let host = target.host.as_deref();
    let path_and_query = target.path_and_query.as_str();
    let Some(listener) = routing.listeners.get(&conn.listen) else {
        return Err(Box::new(Refused::with(Rejection::ListenerGone, None, None)));
    };
    if listener.listener.redirect_https {
        entry.decision = "redirect_https";
        return Err(Box::new(Refused {
            rejection: None,
            tenant: None,
            stats: None,
            answer: Some(redirect(host, path_and_query)),
        }));
    }
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    let credentials = Credentials::of(req.headers());
    let facts = RequestFacts {
        sni: conn.sni.as_deref(),
        host,
        path,
        method: req.method(),
        headers: req.headers(),
        jwt: credentials.jwt.as_ref(),
    };
    let identified = listener.identify(&facts).map_err(|refusal| {
        let (rejection, tenant) = match refusal {
            Refusal::Misdirected { identified, .. } => (Rejection::Misdirected, Some(identified)),
            Refusal::TenantMismatch {
                identified, site, ..
            } => {
                hsts.clone_from(&listener.sites[site].hsts);
                (Rejection::TenantMismatch, Some(identified))
            }
            Refusal::UnknownHost => (Rejection::UnknownHost, None),
        };
        let stats = tenant
            .as_ref()
            .and_then(|t| routing.tenants.get(t).cloned());
        Box::new(Refused::with(rejection, tenant, stats))
    })?;
    let site = &listener.sites[identified.site];
    hsts.clone_from(&site.hsts);
    let refuse = |r: Rejection| {
        Box::new(Refused::with(
            r,
            Some(site.tenant.clone()),
            Some(Arc::clone(&site.stats)),
        ))
    };
    if site.config.protocol == L7Protocol::TlsPassthrough {
        // A Host naming a passthrough site on a terminated connection.
        return Err(refuse(Rejection::Misdirected));
    }
    let (path, path_and_query) = site_path(&site.config, path, path_and_query).map_err(&refuse)?;
    let facts = RequestFacts {
        path: &path,
        ..facts
    };
    let admission = check_policy(policy, conn, req, &credentials, identified, site, entry)?;
    if head_size(req) > site.config.max_header_bytes {
        return Err(refuse(Rejection::HeadersTooLarge));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > site.config.max_body_bytes) {
        return Err(refuse(Rejection::PayloadTooLarge));
    }
    let Some((index, route)) = route_of(listener, identified, &facts) else {
        return Err(refuse(Rejection::NoRoute));
    };
    let Some(pool) = routing.pool(&site.tenant, &route.pool).cloned() else {
        entry.rule = Some(format!("routes[{index}]"));
        return Err(refuse(Rejection::NoBackend));
    };
    Ok(Admitted {
        upgrade: headers::allowed_upgrade(req.headers(), &site.config.upgrades),
        authority: target.authority.clone(),
        tenant: site.tenant.clone(),
        stats: Arc::clone(&site.stats),
        pool,
        backend_path: PathAndQuery::from_maybe_shared(Bytes::from(routing::backend_path(
            &site.config,
            route,
            &path_and_query,
        )))
        .ok()
        // What followed the authority in the URI this replaces.
        .filter(|p| p.as_str().starts_with('/')),
        route: index,
        retries: site.config.retries,
        timeout: site.config.timeouts.request,
        idle: site.config.timeouts.idle,
        max_body: site.config.max_body_bytes,
        quota: admission.quota,
        inflight: admission.guard,
    })
}

/// The path and the path with its query as the site's routes see them:
/// `merge_slashes` applied, encoded slashes refused unless allowed.
fn site_path<'a>(
    site: &crate::config::L7Site,
    path: &'a str,
    path_and_query: &'a str,
) -> Result<(Cow<'a, str>, Cow<'a, str>), Rejection> {
    if !site.allow_encoded_slashes && path::has_encoded_slash(path) {
        return Err(Rejection::Malformed("encoded_slash"));
    }
    if site.merge_slashes {
        Ok((
            path::merge_slashes(path),
            path::merge_slashes(path_and_query),
        ))
    } else {
        Ok((Cow::Borrowed(path), Cow::Borrowed(path_and_query)))
    }
}

/// The tenant's request policy: its connection slot, then
/// [`Policy::admit`]. A refusal is counted, logged with its reason and
/// rule, and answered here.
fn check_policy<B>(
    policy: &Policy,
    conn: &ConnInfo,
    req: &Request<B>,
    credentials: &Credentials<'_>,
    identified: Identified,
    site: &routing::Site,
    entry: &mut Entry,
) -> Result<admission::Admission, Box<Refused>> {
    let slot = conn
        .slot
        .get_or_init(|| ConnSlot::take(policy, &site.tenant));
    // A connection counts against the first tenant it serves; a request of
    // another tenant on it (plain HTTP keep-alive) is sent to a connection
    // of its own, so every connection is in exactly one tenant's count.
    if slot.tenant() != site.tenant {
        entry.decision = Rejection::Misdirected.code();
        return Err(Box::new(Refused::with(
            Rejection::Misdirected,
            Some(site.tenant.clone()),
            Some(Arc::clone(&site.stats)),
        )));
    }
    let over_connections = matches!(slot, ConnSlot::Refused { .. });
    let checked = if over_connections {
        Err(admission::Refusal::connection_limit())
    } else {
        policy.admit(
            &site.tenant,
            &Ask {
                client: conn.client.ip(),
                credentials,
                proof: Proof::of(identified.by),
            },
        )
    };
    match checked {
        Ok(admission) => {
            entry.auth.clone_from(&admission.principal);
            Ok(admission)
        }
        Err(r) => {
            site.stats.refused(r.reason);
            entry.decision = r.reason.code();
            entry.rule = Some(r.rule.clone());
            let close = over_connections && req.version() < Version::HTTP_2;
            let request_id = entry.request_id.as_deref().unwrap_or_default();
            Err(Box::new(Refused {
                rejection: None,
                tenant: Some(site.tenant.clone()),
                stats: Some(Arc::clone(&site.stats)),
                answer: Some(policy_answer(&r, request_id, close)),
            }))
        }
    }
}

/// The request head as the backend sees it: a Host header for h2
/// clients, no hop-by-hop headers, the proxy's forwarding headers, the
/// pool's HTTP version.
fn backend_head(
    parts: &mut http::request::Parts,
    conn: &ConnInfo,
    to: &Admitted,
    request_id: &str,
) {
    // The host identification checked, whatever form the client used (an
    // origin-form request's Host is that host already).
    if let Some(a) = &to.authority
        && (parts.uri.authority().is_some() || !parts.headers.contains_key(header::HOST))
    {
        parts.headers.insert(header::HOST, a.clone());
    }
    headers::remove_hop_by_hop(&mut parts.headers, to.upgrade.is_some());
    if let Some(token) = &to.upgrade {
        parts.headers.insert(header::UPGRADE, token.clone());
    }
    headers::set_forwarding(
        &mut parts.headers,
        &Forwarding {
            forwarded_for: &conn.forwarded_for,
            extend_forwarded_for: conn.from_trusted_proxy,
            https: conn.https,
            request_id,
            tenant: &to.tenant,
        },
    );
    parts.version = match to.pool.l7.backend_protocol {
        BackendProtocol::Http1 => Version::HTTP_11,
        BackendProtocol::H2 => Version::HTTP_2,
    };
}

/// Sends the request to a backend of the pool: another one when the
/// backend gave no response (connect failure, connection closed or reset)
/// while retries are left and the request can be sent again.
async fn forward(
    req: Request<Incoming>,
    conn: &ConnInfo,
    to: &Admitted,
    request_id: &str,
    upload: &Arc<Upload>,
) -> Forwarded {
    let hash_key = if to.pool.l7.balance == crate::config::Balance::Maglev {
        routing::hash_key(&to.pool.l7.hash_on, conn.client, req.headers())
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    backend_head(&mut parts, conn, to, request_id);
    // Only a request without a body can be sent twice: a streamed body is
    // gone once sent.
    let retryable = idempotent(&parts.method) && body.is_end_stream() && to.upgrade.is_none();
    let limit = usize::try_from(to.max_body).unwrap_or(usize::MAX);
    if body.is_end_stream() {
        upload.finished.store(true, Relaxed);
    }
    let mut body = Some(
        Counted {
            inner: Limited::new(body, limit).map_err(BoxError::from).boxed(),
            upload: Arc::clone(upload),
        }
        .boxed(),
    );
    let retries = if retryable { to.retries } else { 0 };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut out = Forwarded {
        response: Err(Rejection::NoBackend),
        attempts: 0,
        upstream: None,
        upstream_ms: None,
    };
    loop {
        let Some(picked) = to.pool.balancer.pick(hash_key.as_deref(), &tried) else {
            if !tried.is_empty() {
                out.response = Err(Rejection::UpstreamError);
            }
            break;
        };
        tried.push(picked.addr);
        out.attempts += 1;
        out.upstream = Some(picked.addr);
        // The last attempt takes the request head instead of a copy.
        let head = if out.attempts > retries {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        } else {
            parts.clone()
        };
        let mut request = Request::from_parts(head, body.take().unwrap_or_else(empty));
        *request.uri_mut() = backend_uri(&to.pool, picked.addr, to.backend_path.as_ref());
        let sent_at = Instant::now();
        let result = tokio::time::timeout(to.timeout, to.pool.client.request(request)).await;
        out.upstream_ms = Some(sent_at.elapsed().as_secs_f64() * 1e3);
        // Only the backend's faults count toward its ejection: what the
        // client did wrong (an upload over the limit, malformed or cut
        // short, or slower than the timeout) says nothing about it.
        let client_fault = upload.fault();
        match result {
            Ok(Ok(resp)) => {
                // The backend's own overload and gateway errors count
                // against it, like failures to reach it.
                if matches!(resp.status().as_u16(), 502..=504) {
                    picked.failure();
                } else {
                    picked.success();
                }
                out.response = Ok(resp);
                break;
            }
            Ok(Err(_)) | Err(_) if client_fault.is_some() => {
                out.response = Err(client_fault.unwrap_or(Rejection::BadRequestBody));
                break;
            }
            Ok(Err(e)) => {
                // No response head came back: the connection could not be
                // made, or it closed or was reset first (a backend killed,
                // a pooled connection closed under the request). A
                // retryable request may go to another backend either way.
                picked.failure();
                tracing::debug!(
                    backend = %picked.addr,
                    error = %e,
                    connect = e.is_connect(),
                    "backend request failed"
                );
                out.response = Err(Rejection::UpstreamError);
                if out.attempts > retries {
                    break;
                }
            }
            Err(_) if !upload.finished.load(Relaxed) => {
                // Still uploading when the time was up: the backend could
                // not have answered yet.
                out.response = Err(Rejection::RequestBodyTimeout);
                break;
            }
            Err(_) => {
                picked.failure();
                out.response = Err(Rejection::UpstreamTimeout);
                break;
            }
        }
    }
    out
}

fn route_of<'a>(
    listener: &'a ListenerRouting,
    identified: Identified,
    facts: &RequestFacts<'_>,
) -> Option<(usize, &'a crate::config::Route)> {
    let route = listener.route(identified.site, facts)?;
    let index = listener.sites[identified.site]
        .config
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, route))?;
    Some((index, route))
}

/// The absolute URI of a request to `addr` (the pooled client keys its
/// connections by scheme and authority); `/` when it cannot be made.
fn backend_uri(pool: &PoolRouting, addr: SocketAddr, path: Option<&PathAndQuery>) -> Uri {
    let Some(path) = path else {
        return Uri::from_static("/");
    };
    let authority = match pool.authorities.get(&addr) {
        Some(a) => a.clone(),
        None => match addr.to_string().parse() {
            Ok(a) => a,
            Err(_) => return Uri::from_static("/"),
        },
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if pool.l7.backend_tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    parts.authority = Some(authority);
    parts.path_and_query = Some(path.clone());
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// 308 to the same URL over HTTPS.
fn redirect(host: Option<&str>, path_and_query: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(empty());
    match host {
        Some(h) => {
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            if let Ok(v) = HeaderValue::from_str(&format!("https://{h}{path_and_query}")) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
        }
        None => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}

/// How a request's upload went, seen by its body as the backend reads it.
#[derive(Debug, Default)]
struct Upload {
    bytes: AtomicU64,
    /// The whole body was read from the client.
    finished: AtomicBool,
    /// [`Upload::TOO_LARGE`] or [`Upload::BROKEN`] once the client's body
    /// failed.
    fault: AtomicU8,
}

impl Upload {
    const TOO_LARGE: u8 = 1;
    const BROKEN: u8 = 2;

    /// The client's fault, if its body failed.
    fn fault(&self) -> Option<Rejection> {
        match self.fault.load(Relaxed) {
            Self::TOO_LARGE => Some(Rejection::PayloadTooLarge),
            Self::BROKEN => Some(Rejection::BadRequestBody),
            _ => None,
        }
    }
}

/// A request body that counts its bytes and records how it ended.
struct Counted {
    inner: ProxyBody,
    upload: Arc<Upload>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.upload.bytes.fetch_add(data.len() as u64, Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.upload.finished.store(true, Relaxed);
                }
            }
            Poll::Ready(None) => self.upload.finished.store(true, Relaxed),
            Poll::Ready(Some(Err(e))) => {
                let fault = if e.is::<http_body_util::LengthLimitError>() {
                    Upload::TOO_LARGE
                } else {
                    Upload::BROKEN
                };
                self.upload.fault.store(fault, Relaxed);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is recorded when a response is finished.
struct Done {
    log: AccessLogger,
    stats: Option<Arc<TenantStats>>,
    entry: Entry,
    start: Instant,
    upload: Option<Arc<Upload>>,
    /// Released when the response is done.
    _inflight: Option<InflightGuard>,
}

/// A response body that records the request (counters, access log) when it
/// is finished, dropped or abandoned.
pub(crate) struct Tracked {
    sending: Arc<Sending>,
    /// The body's `is_end_stream` and `size_hint` after the last poll,
    /// kept here so that hyper's frequent asks take no lock.
    end: bool,
    hint: SizeHint,
}

/// A response on its way to the client, shared with the connection's
/// watchdog ([`ConnInfo::abandon_stalled`]), which abandons it when the
/// client stops taking it.
pub(crate) struct Sending {
    /// `None` once the watchdog abandoned the response: its backend body,
    /// in-flight places and counters are released then, not when the
    /// client finally reads or goes away.
    state: std::sync::Mutex<Option<SendState>>,
    /// When a frame was last handed to the connection ([`now_ms`]) while
    /// the connection has not asked for the next one yet; 0 while the
    /// response waits on the backend, or is done.
    handed_ms: AtomicU64,
    /// An h2 stream (resettable on its own) rather than an HTTP/1 response
    /// (whose connection must close).
    h2: bool,
}

struct SendState {
    inner: ProxyBody,
    sent: u64,
    done: Option<Box<Done>>,
}

/// Milliseconds on the coarse monotonic clock (never 0). The connection
/// deadlines need milliseconds, not nanoseconds, and they read the clock
/// several times per request: `CLOCK_MONOTONIC_COARSE` is one memory read
/// (its resolution is the kernel's tick, a few ms), where the precise clock
/// reads the TSC.
#[must_use]
pub(crate) fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock always exists
    // on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let ms = u64::try_from(ts.tv_nsec / 1_000_000).unwrap_or(0);
    secs.saturating_mul(1000)
        .saturating_add(ms)
        .saturating_add(1)
}

impl Tracked {
    fn new(inner: ProxyBody, done: Done, h2: bool) -> Self {
        Self {
            end: inner.is_end_stream(),
            hint: inner.size_hint(),
            sending: Arc::new(Sending {
                state: std::sync::Mutex::new(Some(SendState {
                    inner,
                    sent: 0,
                    done: Some(Box::new(done)),
                })),
                // The head is handed over now.
                handed_ms: AtomicU64::new(now_ms()),
                h2,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Option<SendState>> {
        self.sending
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut state = this
            .sending
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(s) = state.as_mut() else {
            // An error, not the end: the client must not take a cut
            // response for a whole one (h2 resets the stream).
            return Poll::Ready(Some(Err(
                "response abandoned: the client stopped reading it".into(),
            )));
        };
        let polled = Pin::new(&mut s.inner).poll_frame(cx);
        let handed = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    s.sent += data.len() as u64;
                }
                now_ms()
            }
            Poll::Ready(None) => {
                s.finish(None);
                0
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => 0,
        };
        this.end = s.inner.is_end_stream();
        this.hint = s.inner.size_hint();
        drop(state);
        this.sending.handed_ms.store(handed, Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        // An abandoned response is not at its end: its next poll fails.
        self.end
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Sending {
    /// Abandons the response when it has waited on the client for `send`
    /// or longer; returns whether it did.
    fn abandon_if_stalled(&self, now: u64, send: std::time::Duration) -> bool {
        let handed = self.handed_ms.load(Relaxed);
        let send_ms = u64::try_from(send.as_millis()).unwrap_or(u64::MAX);
        if handed == 0 || now.saturating_sub(handed) < send_ms {
            return false;
        }
        let taken = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.handed_ms.store(0, Relaxed);
        match taken {
            Some(mut s) => {
                s.finish(Some("client_send_timeout"));
                true
            }
            None => false,
        }
    }
}

impl SendState {
    /// Records the request once: counters, and the access-log line
    /// (`decision` replaced when the response was abandoned).
    fn finish(&mut self, abandoned: Option<&'static str>) {
        let Some(done) = self.done.take() else { return };
        let Done {
            log,
            stats,
            mut entry,
            start,
            upload,
            _inflight,
        } = *done;
        let elapsed = start.elapsed();
        let bytes_in = upload.map_or(0, |u| u.bytes.load(Relaxed));
        if let Some(stats) = &stats {
            stats.record(entry.status, elapsed);
            stats.bytes_in.fetch_add(bytes_in, Relaxed);
            stats.bytes_out.fetch_add(self.sent, Relaxed);
        }
        if log.enabled() {
            if let Some(decision) = abandoned {
                entry.decision = decision;
            }
            entry.bytes_in = bytes_in;
            entry.bytes_out = self.sent;
            entry.total_ms = elapsed.as_secs_f64() * 1e3;
            log.log(&entry);
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(s) = self.state().as_mut() {
            s.finish(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `request_target`'s refusal of a request with `headers`, if any.
    fn refusal(headers: &[(&str, &str)]) -> Option<&'static str> {
        let mut b = Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(()).expect("request");
        match request_target(&req, false) {
            Ok(_) => None,
            Err(Rejection::Malformed(code)) => Some(code),
            Err(other) => panic!("{headers:?}: {other:?}"),
        }
    }

    #[test]
    fn one_host_and_one_of_each_credential_header() {
        let host = ("host", "acme.example");
        assert_eq!(
            refusal(&[host, ("x-api-key", "k"), ("authorization", "Bearer t")]),
            None
        );
        assert_eq!(refusal(&[host, host]), Some("duplicate_host"));
        for twice in [
            [("x-api-key", "junk"), ("x-api-key", "key")],
            [
                ("authorization", "Bearer junk"),
                ("authorization", "Bearer key"),
            ],
            [
                ("authorization", "Basic eA=="),
                ("Authorization", "Bearer key"),
            ],
        ] {
            assert_eq!(
                refusal(&[host, twice[0], twice[1]]),
                Some("duplicate_credentials"),
                "{twice:?}"
            );
        }
        assert_eq!(
            Rejection::Malformed("duplicate_credentials").status(),
            StatusCode::BAD_REQUEST
        );
    }

    /// A Host that is not `host[:port]` with non-empty labels is 400; the
    /// forms real clients send are not (the first case is the `request_head`
    /// fuzz target's reproducer, `fuzz/regressions/request_head/`).
    #[test]
    fn invalid_host_values_are_bad_requests() {
        for bad in [
            "P/1..",
            "acme.example..",
            ".acme.example",
            "a..b",
            "acme.example:80x",
            "[::1",
        ] {
            assert_eq!(refusal(&[("host", bad)]), Some("bad_host"), "{bad:?}");
        }
        for good in [
            "acme.example",
            "ACME.example.",
            "acme.example:8443",
            "203.0.113.20",
            "[2001:db8::1]:443",
            "[::ffff:192.0.2.1]",
            "localhost",
            "",
        ] {
            assert_eq!(refusal(&[("host", good)]), None, "{good:?}");
        }
    }
}
