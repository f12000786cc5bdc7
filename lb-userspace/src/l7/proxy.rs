//! The reverse proxy: one request from identification to the backend's
//! answer.
//!
//! For every request: find the tenant ([`routing`](super::routing)), refuse
//! what must be refused (421, 403, 404, 413, 431), pick the route and a
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
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Empty, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::config::{BackendProtocol, L7Protocol, PoolL7};

use super::{
    access_log::{self, AccessLogger, Entry},
    headers::{self, Forwarding},
    routing::{self, Identified, ListenerRouting, PoolRouting, Refusal, RequestFacts, Routing},
    stats::TenantStats,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies in both directions.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
/// The pooled client of one pool.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// How long pooled backend connections may idle.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// What a connection knows about itself.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub listen: SocketAddr,
    /// Normalised SNI of the TLS session.
    pub sni: Option<String>,
    pub https: bool,
}

/// Shared by every connection of every listener.
pub struct Proxy {
    pub routing: Arc<ArcSwap<Routing>>,
    pub log: AccessLogger,
}

/// Builds the pooled client of a pool.
///
/// # Errors
/// When the pool's `backend_tls.ca` cannot be read.
pub fn client_for(pool: &PoolL7, connect_timeout: Duration) -> anyhow::Result<UpstreamClient> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let mut roots = rustls::RootCertStore::empty();
    if let Some(tls) = &pool.backend_tls {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let certs = CertificateDer::pem_file_iter(&tls.ca)
            .map_err(|e| anyhow::anyhow!("backend_tls.ca {}: {e}", tls.ca.display()))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| anyhow::anyhow!("backend_tls.ca {}: {e}", tls.ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("backend_tls.ca {}: {e}", tls.ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("backend TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http();
    let builder = match pool
        .backend_tls
        .as_ref()
        .and_then(|t| t.server_name.clone())
    {
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| anyhow::anyhow!("backend_tls.server_name: {e}"))?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    // ALPN offers only the pool's protocol.
    let connector = match pool.backend_protocol {
        BackendProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        BackendProtocol::H2 => builder.enable_http2().wrap_connector(http),
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new());
    if pool.backend_protocol == BackendProtocol::H2 {
        client.http2_only(true);
    }
    Ok(client.build(connector))
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
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    req.headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
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
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .map(|a| routing::request_host(&a));
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let mut entry = Entry {
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
        };
        let done = |resp: Response<ProxyBody>,
                    entry: Entry,
                    stats: Option<Arc<TenantStats>>,
                    bytes_in: Option<Arc<AtomicU64>>| {
            let (parts, body) = resp.into_parts();
            let mut entry = entry;
            entry.status = parts.status.as_u16();
            Response::from_parts(
                parts,
                Tracked {
                    inner: body,
                    sent: 0,
                    done: Some(Box::new(Done {
                        log: self.log.clone(),
                        stats,
                        entry,
                        start,
                        bytes_in,
                    })),
                },
            )
        };

        let Some(listener) = routing.listeners.get(&conn.listen).cloned() else {
            entry.decision = Rejection::ListenerGone.code();
            return done(
                reject(Rejection::ListenerGone, &request_id),
                entry,
                None,
                None,
            );
        };
        if listener.listener.redirect_https {
            entry.decision = "redirect_https";
            return done(
                redirect(host.as_deref(), &path_and_query),
                entry,
                None,
                None,
            );
        }
        let path = path_and_query
            .split_once('?')
            .map_or(path_and_query.as_str(), |(p, _)| p);
        let facts = RequestFacts {
            sni: conn.sni.as_deref(),
            host: host.as_deref(),
            path,
            method: req.method(),
            headers: req.headers(),
        };
        let identified = match listener.identify(&facts) {
            Ok(i) => i,
            Err(refusal) => {
                let (rejection, tenant) = match refusal {
                    Refusal::Misdirected { identified, .. } => {
                        (Rejection::Misdirected, Some(identified))
                    }
                    Refusal::TenantMismatch { identified, .. } => {
                        (Rejection::TenantMismatch, Some(identified))
                    }
                    Refusal::UnknownHost => (Rejection::UnknownHost, None),
                };
                let stats = tenant
                    .as_ref()
                    .and_then(|t| routing.tenants.get(t).cloned());
                entry.tenant = tenant;
                entry.decision = rejection.code();
                return done(reject(rejection, &request_id), entry, stats, None);
            }
        };
        let site = &listener.sites[identified.site];
        let stats = Arc::clone(&site.stats);
        entry.tenant = Some(site.tenant.clone());
        if site.config.protocol == L7Protocol::TlsPassthrough {
            // A Host naming a passthrough site on a terminated connection.
            entry.decision = Rejection::Misdirected.code();
            return done(
                reject(Rejection::Misdirected, &request_id),
                entry,
                Some(stats),
                None,
            );
        }
        if head_size(&req) > site.config.max_header_bytes {
            entry.decision = Rejection::HeadersTooLarge.code();
            return done(
                reject(Rejection::HeadersTooLarge, &request_id),
                entry,
                Some(stats),
                None,
            );
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > site.config.max_body_bytes) {
            entry.decision = Rejection::PayloadTooLarge.code();
            return done(
                reject(Rejection::PayloadTooLarge, &request_id),
                entry,
                Some(stats),
                None,
            );
        }
        let Some((route_index, route)) = route_of(&listener, identified, &facts) else {
            entry.decision = Rejection::NoRoute.code();
            return done(
                reject(Rejection::NoRoute, &request_id),
                entry,
                Some(stats),
                None,
            );
        };
        entry.rule = Some(format!("routes[{route_index}]"));
        entry.pool = Some(route.pool.clone());
        let Some(pool) = routing.pool(&site.tenant, &route.pool).cloned() else {
            entry.decision = Rejection::NoBackend.code();
            return done(
                reject(Rejection::NoBackend, &request_id),
                entry,
                Some(stats),
                None,
            );
        };
        let backend_path = routing::backend_path(&site.config, route, &path_and_query);
        let hash_key = routing::hash_key(&pool.l7.hash_on, conn.client, req.headers());
        let upgrade = headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        // The request as the backend sees it.
        let (mut parts, body) = req.into_parts();
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
                client_ip: conn.client.ip(),
                https: conn.https,
                request_id: &request_id,
                tenant: &site.tenant,
            },
        );
        let bytes_in = Arc::new(AtomicU64::new(0));
        let retryable = idempotent(&parts.method) && body.is_end_stream() && !upgrade;
        let mut body = Some(
            Counted {
                inner: Limited::new(
                    body,
                    usize::try_from(site.config.max_body_bytes).unwrap_or(usize::MAX),
                )
                .map_err(BoxError::from)
                .boxed(),
                count: Arc::clone(&bytes_in),
            }
            .boxed(),
        );

        let retries = if retryable { site.config.retries } else { 0 };
        let timeout = site.config.timeouts.request;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let outcome = loop {
            let Some(picked) = pool.balancer.pick(hash_key.as_deref(), &tried) else {
                break Err(if tried.is_empty() {
                    Rejection::NoBackend
                } else {
                    Rejection::UpstreamError
                });
            };
            let addr = picked.addr;
            tried.push(addr);
            entry.upstream = Some(addr);
            let uri = backend_uri(&pool, addr, &backend_path);
            let mut out = Request::from_parts(parts.clone(), body.take().unwrap_or_else(empty));
            *out.uri_mut() = uri;
            *out.version_mut() = match pool.l7.backend_protocol {
                BackendProtocol::Http1 => Version::HTTP_11,
                BackendProtocol::H2 => Version::HTTP_2,
            };
            let sent_at = Instant::now();
            let result = tokio::time::timeout(timeout, pool.client.request(out)).await;
            entry.upstream_ms = Some(sent_at.elapsed().as_secs_f64() * 1e3);
            match result {
                Ok(Ok(resp)) => {
                    if matches!(resp.status().as_u16(), 502..=504) {
                        picked.failure();
                    } else {
                        picked.success();
                    }
                    break Ok(resp);
                }
                Ok(Err(e)) if e.is_connect() => {
                    picked.failure();
                    tracing::debug!(backend = %addr, error = %e, "backend connect failed");
                    if u32::try_from(tried.len()).unwrap_or(u32::MAX) > retries {
                        break Err(Rejection::UpstreamError);
                    }
                }
                Ok(Err(e)) => {
                    picked.failure();
                    let too_large = std::error::Error::source(&e)
                        .is_some_and(|s| s.to_string().contains("length limit exceeded"));
                    break Err(if too_large {
                        Rejection::PayloadTooLarge
                    } else {
                        tracing::debug!(backend = %addr, error = %e, "backend request failed");
                        Rejection::UpstreamError
                    });
                }
                Err(_) => {
                    picked.failure();
                    break Err(Rejection::UpstreamTimeout);
                }
            }
        };
        entry.attempts = u32::try_from(tried.len()).unwrap_or(u32::MAX);
        let mut resp = match outcome {
            Ok(resp) => resp,
            Err(rejection) => {
                entry.decision = rejection.code();
                return done(
                    reject(rejection, &request_id),
                    entry,
                    Some(stats),
                    Some(bytes_in),
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
        done(
            Response::from_parts(parts, body.map_err(BoxError::from).boxed()),
            entry,
            Some(stats),
            Some(bytes_in),
        )
    }
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

fn backend_uri(pool: &PoolRouting, addr: SocketAddr, path: &str) -> Uri {
    let scheme = if pool.l7.backend_tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}{path}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
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
