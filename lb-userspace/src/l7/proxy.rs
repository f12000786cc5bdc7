//! The reverse proxy: one request from identification to the backend's
//! answer.
//!
//! For every request: find the tenant ([`routing`](super::routing)), apply
//! its request policy ([`policy`](super::policy): 401, 403, 429, 503),
//! refuse what must be refused (421, 403, 404, 413, 431), pick the route and a
//! backend of the tenant's pool, rewrite the headers the proxy owns
//! ([`headers`](super::headers)), send it with the pool's pooled client,
//! and stream the answer back. An idempotent request without a body whose
//! backend cannot be connected to is retried on another backend (never the
//! same one twice), up to the site's `retries`. Every outcome feeds the
//! pool's outlier detection, the tenant's counters and one access-log line,
//! written when the response body is finished so that it carries the bytes
//! actually sent.
//!
//! Errors produced by the proxy itself are small JSON documents,
//! `{"error": "...", "request_id": "..."}`, with the statuses in
//! [`Rejection`].

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
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
use http_body_util::{BodyExt as _, Empty, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;

use crate::config::{BackendProtocol, L7Protocol};

use super::{
    access_log::{self, AccessLogger, Entry},
    headers::{self, Forwarding},
    policy::{self, Ask, ConnectionGuard, InflightGuard, Policy, Proof, bucket::Quota},
    routing::{self, Identified, ListenerRouting, PoolRouting, Refusal, RequestFacts, Routing},
    stats::TenantStats,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies in both directions.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// What a connection knows about itself.
#[derive(Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub listen: SocketAddr,
    /// Normalised SNI of the TLS session.
    pub sni: Option<String>,
    pub https: bool,
    /// `client`'s `X-Forwarded-For` value.
    pub forwarded_for: HeaderValue,
    /// The connection's place in its tenant's `max_connections`, taken
    /// when the tenant is first known (at the TLS accept from the SNI,
    /// else at the first request).
    pub slot: OnceLock<ConnSlot>,
}

impl ConnInfo {
    #[must_use]
    pub fn new(client: SocketAddr, listen: SocketAddr, sni: Option<String>, https: bool) -> Self {
        Self {
            client,
            listen,
            sni,
            https,
            forwarded_for: headers::forwarded_for(client.ip()),
            slot: OnceLock::new(),
        }
    }
}

/// Whose connection it is, for `max_connections`.
#[derive(Debug)]
pub enum ConnSlot {
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
    /// Counts a connection of `tenant`.
    #[must_use]
    pub fn take(policy: &Policy, tenant: &str) -> Self {
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
pub struct Proxy {
    pub routing: Arc<ArcSwap<Routing>>,
    /// Swapped when `node.access_log` changes on a reload.
    pub log: ArcSwap<AccessLogger>,
    /// Per-tenant request policy (its state outlives routing snapshots).
    pub policy: Arc<Policy>,
}

/// Why the proxy answers a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
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
}

impl Rejection {
    #[must_use]
    pub fn status(self) -> StatusCode {
        match self {
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::TenantMismatch => StatusCode::FORBIDDEN,
            Self::UnknownHost | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoBackend | Self::ListenerGone => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `error` of the JSON body and the access log's `decision`.
    #[must_use]
    pub fn code(self) -> &'static str {
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

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
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
fn policy_answer(r: &policy::Refusal, request_id: &str, close: bool) -> Response<ProxyBody> {
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
    tenant: String,
    stats: Arc<TenantStats>,
    pool: Arc<PoolRouting>,
    /// `None` when the rewritten path is not a valid URI path.
    backend_path: Option<PathAndQuery>,
    /// The index of the route in the site's `routes` (the log's rule).
    route: usize,
    retries: u32,
    timeout: std::time::Duration,
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
    /// Serves one request of a connection.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> Response<Tracked> {
        let start = Instant::now();
        let routing = self.routing.load_full();
        let request_id = headers::request_id(req.headers());
        let host = request_authority(&req).map(|a| routing::request_host(&a));
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        // The log line's texts are only made when the log is on.
        let logging = self.log.load().enabled();
        let mut entry = if logging {
            Entry {
                time: access_log::now(),
                request_id: Some(request_id.clone()),
                client: Some(conn.client),
                listener: Some(conn.listen),
                sni: conn.sni.clone(),
                host: host.clone(),
                method: Some(req.method().as_str().to_owned()),
                path: Some(path_and_query.clone()),
                protocol: Some(if req.version() == Version::HTTP_2 {
                    "HTTP/2"
                } else {
                    "HTTP/1.1"
                }),
                ..Entry::default()
            }
        } else {
            Entry::default()
        };

        let admitted = admit(
            &routing,
            &self.policy,
            &conn,
            &req,
            host.as_deref(),
            &path_and_query,
            &mut entry,
        );
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

        let upgrade = headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let bytes_in = Arc::new(AtomicU64::new(0));
        let forwarded = forward(req, &conn, &admitted, &request_id, upgrade, &bytes_in).await;
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
                    Some(bytes_in),
                    start,
                    inflight,
                );
            }
        };
        entry.decision = "route";

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && let Some(client_upgrade) = client_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(client), Ok(backend)) = (client_upgrade.await, backend_upgrade.await) {
                    let mut client = hyper_util::rt::TokioIo::new(client);
                    let mut backend = hyper_util::rt::TokioIo::new(backend);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                }
            });
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
            Some(bytes_in),
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

    /// The response with the body that records the request when done (and
    /// releases its place in the in-flight counts then).
    fn finish(
        &self,
        resp: Response<ProxyBody>,
        mut entry: Entry,
        stats: Option<Arc<TenantStats>>,
        bytes_in: Option<Arc<AtomicU64>>,
        start: Instant,
        inflight: Option<InflightGuard>,
    ) -> Response<Tracked> {
        let (parts, body) = resp.into_parts();
        entry.status = parts.status.as_u16();
        Response::from_parts(
            parts,
            Tracked {
                inner: body,
                sent: 0,
                done: Some(Box::new(Done {
                    log: AccessLogger::clone(&self.log.load()),
                    stats,
                    entry,
                    start,
                    bytes_in,
                    _inflight: inflight,
                })),
            },
        )
    }
}

/// The Host of a request: h2's `:authority`, else the Host header.
fn request_authority<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// Identification and every check before the request may go to a
/// backend: the tenant, its policy, the route and the pool.
fn admit<B: Body>(
    routing: &Routing,
    policy: &Policy,
    conn: &ConnInfo,
    req: &Request<B>,
    host: Option<&str>,
    path_and_query: &str,
    entry: &mut Entry,
) -> Result<Admitted, Box<Refused>> {
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
    let facts = RequestFacts {
        sni: conn.sni.as_deref(),
        host,
        path,
        method: req.method(),
        headers: req.headers(),
    };
    let identified = listener.identify(&facts).map_err(|refusal| {
        let (rejection, tenant) = match refusal {
            Refusal::Misdirected { identified, .. } => (Rejection::Misdirected, Some(identified)),
            Refusal::TenantMismatch { identified, .. } => {
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
    let admission = check_policy(policy, conn, req, identified, site, entry)?;
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
        tenant: site.tenant.clone(),
        stats: Arc::clone(&site.stats),
        pool,
        backend_path: PathAndQuery::from_maybe_shared(Bytes::from(routing::backend_path(
            &site.config,
            route,
            path_and_query,
        )))
        .ok()
        // What followed the authority in the URI this replaces.
        .filter(|p| p.as_str().starts_with('/')),
        route: index,
        retries: site.config.retries,
        timeout: site.config.timeouts.request,
        max_body: site.config.max_body_bytes,
        quota: admission.quota,
        inflight: admission.guard,
    })
}

/// The tenant's request policy: its connection slot, then
/// [`Policy::admit`]. A refusal is counted, logged with its reason and
/// rule, and answered here.
fn check_policy<B>(
    policy: &Policy,
    conn: &ConnInfo,
    req: &Request<B>,
    identified: Identified,
    site: &routing::Site,
    entry: &mut Entry,
) -> Result<policy::Admission, Box<Refused>> {
    let slot = conn
        .slot
        .get_or_init(|| ConnSlot::take(policy, &site.tenant));
    let over_connections = matches!(slot, ConnSlot::Refused { tenant } if *tenant == site.tenant);
    let checked = if over_connections {
        Err(policy::Refusal::connection_limit())
    } else {
        policy.admit(
            &site.tenant,
            &Ask {
                client: conn.client.ip(),
                headers: req.headers(),
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
    upgrade: bool,
) {
    if parts.version == Version::HTTP_2
        && !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    headers::set_forwarding(
        &mut parts.headers,
        &Forwarding {
            forwarded_for: &conn.forwarded_for,
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

/// Sends the request to a backend of the pool: another one on a connect
/// failure while retries are left and the request can be sent again.
async fn forward(
    req: Request<Incoming>,
    conn: &ConnInfo,
    to: &Admitted,
    request_id: &str,
    upgrade: bool,
    bytes_in: &Arc<AtomicU64>,
) -> Forwarded {
    let hash_key = if to.pool.l7.balance == crate::config::Balance::Maglev {
        routing::hash_key(&to.pool.l7.hash_on, conn.client, req.headers())
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    backend_head(&mut parts, conn, to, request_id, upgrade);
    // Only a request without a body can be sent twice: a streamed body is
    // gone once sent.
    let retryable = idempotent(&parts.method) && body.is_end_stream() && !upgrade;
    let limit = usize::try_from(to.max_body).unwrap_or(usize::MAX);
    let mut body = Some(
        Counted {
            inner: Limited::new(body, limit).map_err(BoxError::from).boxed(),
            count: Arc::clone(bytes_in),
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
            Ok(Err(e)) if e.is_connect() => {
                picked.failure();
                tracing::debug!(backend = %picked.addr, error = %e, "backend connect failed");
                out.response = Err(Rejection::UpstreamError);
                if out.attempts > retries {
                    break;
                }
            }
            Ok(Err(e)) => {
                picked.failure();
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.to_string().contains("length limit exceeded"));
                tracing::debug!(backend = %picked.addr, error = %e, "backend request failed");
                out.response = Err(if too_large {
                    Rejection::PayloadTooLarge
                } else {
                    Rejection::UpstreamError
                });
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

/// A request body that counts its bytes.
struct Counted {
    inner: ProxyBody,
    count: Arc<AtomicU64>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Relaxed);
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
    bytes_in: Option<Arc<AtomicU64>>,
    /// Released when the response is done.
    _inflight: Option<InflightGuard>,
}

/// A response body that records the request (counters, access log) when it
/// is finished or dropped.
pub struct Tracked {
    inner: ProxyBody,
    sent: u64,
    done: Option<Box<Done>>,
}

impl Body for Tracked {
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
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
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

impl Tracked {
    fn finish(&mut self) {
        let Some(done) = self.done.take() else { return };
        let Done {
            log,
            stats,
            mut entry,
            start,
            bytes_in,
            _inflight,
        } = *done;
        let elapsed = start.elapsed();
        let bytes_in = bytes_in.map_or(0, |b| b.load(Relaxed));
        if let Some(stats) = &stats {
            stats.record(entry.status, elapsed);
            stats.bytes_in.fetch_add(bytes_in, Relaxed);
            stats.bytes_out.fetch_add(self.sent, Relaxed);
        }
        if log.enabled() {
            entry.bytes_in = bytes_in;
            entry.bytes_out = self.sent;
            entry.total_ms = elapsed.as_secs_f64() * 1e3;
            log.log(&entry);
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}
