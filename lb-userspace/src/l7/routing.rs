//! The L7 routing state: which tenant a request belongs to and which pool
//! serves it.
//!
//! [`Routing`] is an immutable snapshot built from the effective
//! configuration and the backends' health every time either changes, and
//! published with `arc-swap`: a request reads one consistent snapshot from
//! start to end, and never takes a lock. The live state that must outlive a
//! snapshot (in-flight counts, outlier ejections, per-tenant counters) is
//! carried from the previous one.
//!
//! Identification ([`ListenerRouting::identify`]) follows the listener's
//! `identify` order (SNI, Host, path prefix, `X-Tenant-ID`, a JWT's tenant
//! claim). The first method that names a tenant decides; a later SNI, Host
//! or path that names a *different* tenant makes the request misdirected
//! (421), because a client that reached tenant A's TLS session must never
//! be served by tenant B. A client-sent `X-Tenant-ID` (or a JWT claim) that
//! names another tenant is refused (403): the header is an assertion the
//! proxy checks, never a way in. When the header or a JWT claim is what
//! identified the tenant, that is only a candidate: the policy
//! ([`super::policy`]) then requires the request to authenticate as that
//! tenant (`Identified::by` says so).

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Method};

use crate::{
    config::{self, Config, HashOn, Identify, L7Protocol, L7Site, Listener, PoolL7},
    reconcile::BackendKey,
};

use super::{
    admission::auth::UnverifiedJwt,
    backend_client::{UpstreamClient, client_for},
    stats::TenantStats,
    upstream::{self, PoolBalancer, UpstreamSpec},
};

/// Index of a site in [`ListenerRouting::sites`].
pub(crate) type SiteId = usize;

/// One tenant's site on a listener, with what the request path needs.
#[derive(Debug)]
pub struct Site {
    pub tenant: String,
    pub config: L7Site,
    pub stats: Arc<TenantStats>,
    /// The tenant's `auth.jwt.tenant_claim`, when it accepts JWTs.
    pub jwt_claim: Option<String>,
    /// The site's `hsts` as the `Strict-Transport-Security` value of its
    /// responses (`https` sites only; validated with the configuration).
    pub hsts: Option<HeaderValue>,
}

/// Everything about one listen address.
#[derive(Debug)]
pub struct ListenerRouting {
    pub listener: Listener,
    /// TLS (terminated or passthrough) rather than plain HTTP.
    pub tls: bool,
    /// What a connection gets before its tenant is known: the longest
    /// header and idle timeouts and the largest request head of the sites.
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub max_header_bytes: usize,
    pub sites: Vec<Site>,
    /// Exact host name -> its site. Compared by name, not by the SNI hash
    /// the BPF map uses: a name that merely collides with a configured
    /// host's hash must not reach that host's tenant.
    hosts: HashMap<String, SiteId>,
    /// `x.example` of a `*.x.example` wildcard -> its site.
    wildcards: HashMap<String, SiteId>,
    /// (path prefix, site), longest prefix first.
    prefixes: Vec<(String, SiteId)>,
    /// The default tenant's first site here.
    default_site: Option<SiteId>,
    /// Each tenant's first site here.
    tenant_sites: HashMap<String, SiteId>,
}

/// A tenant's pool as the proxy uses it.
#[derive(Debug)]
pub struct PoolRouting {
    pub tenant: String,
    pub name: String,
    pub l7: PoolL7,
    pub balancer: PoolBalancer,
    /// Pooled connections to the backends (kept across snapshots while the
    /// pool's L7 settings stay the same).
    pub client: UpstreamClient,
    /// The connect timeout of `client`: the shortest `timeouts.connect` of
    /// the sites that route to the pool.
    connect_timeout: Duration,
    /// Each configured backend's URI authority, made once per snapshot
    /// rather than formatted and parsed for every request.
    pub authorities: HashMap<SocketAddr, http::uri::Authority>,
}

/// The snapshot.
#[derive(Debug, Default)]
pub struct Routing {
    pub listeners: HashMap<SocketAddr, Arc<ListenerRouting>>,
    /// (tenant, pool) -> pool.
    pub pools: HashMap<(String, String), Arc<PoolRouting>>,
    /// Per-tenant counters, by tenant name.
    pub tenants: HashMap<String, Arc<TenantStats>>,
}

/// Why a request cannot be served by any tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// SNI, Host or path name two different tenants: 421.
    Misdirected { identified: String, other: String },
    /// `X-Tenant-ID` names another tenant than the one identified: 403,
    /// an answer of the identified tenant's `site`.
    TenantMismatch {
        identified: String,
        site: SiteId,
        claimed: String,
    },
    /// Nothing names a tenant and the listener has no default: 404.
    UnknownHost,
}

/// What identification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identified {
    pub site: SiteId,
    /// The method that decided (for the access log).
    pub by: Option<Identify>,
}

/// The request facts identification and routing look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Normalised SNI of the TLS connection.
    pub sni: Option<&'a str>,
    /// Normalised host of the Host header or `:authority`, without port.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// The bearer JWT, if any (decoded once for the whole request).
    pub jwt: Option<&'a UnverifiedJwt<'a>>,
}

impl ListenerRouting {
    /// The site of the exact host, else of the wildcard one label up.
    #[must_use]
    pub fn site_for_host(&self, host: &str) -> Option<SiteId> {
        if let Some(&s) = self.hosts.get(host) {
            return Some(s);
        }
        let (label, parent) = host.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcards.get(parent).copied()
    }

    fn site_for_path(&self, path: &str) -> Option<SiteId> {
        self.prefixes
            .iter()
            .find(|(p, _)| path_has_prefix(path, p))
            .map(|&(_, s)| s)
    }

    /// The request's site, or why there is none.
    ///
    /// # Errors
    /// A [`Refusal`] saying which status to answer.
    pub fn identify(&self, req: &RequestFacts<'_>) -> Result<Identified, Refusal> {
        // Looked up once: identification and the session check use both.
        let sni_site = req.sni.and_then(|s| self.site_for_host(s));
        let host_site = req.host.and_then(|h| self.site_for_host(h));
        let mut found: Option<Identified> = None;
        for &method in &self.listener.identify {
            if method == Identify::Jwt && found.is_some() {
                // Already identified: a JWT naming another tenant is the
                // policy's to refuse (403 when it is that tenant's, 401
                // when it is not valid at all).
                continue;
            }
            let site = match method {
                Identify::Sni => sni_site,
                Identify::Host => host_site,
                Identify::Path => self.site_for_path(req.path),
                Identify::Header => req
                    .headers
                    .get(super::headers::X_TENANT_ID)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|t| self.tenant_sites.get(t).copied()),
                Identify::Jwt => req.jwt.and_then(|jwt| self.site_for_jwt(jwt)),
            };
            let Some(site) = site else { continue };
            match found {
                None => {
                    found = Some(Identified {
                        site,
                        by: Some(method),
                    });
                }
                Some(first) if self.sites[first.site].tenant != self.sites[site].tenant => {
                    let identified = self.sites[first.site].tenant.clone();
                    let other = self.sites[site].tenant.clone();
                    return Err(match method {
                        Identify::Header | Identify::Jwt => Refusal::TenantMismatch {
                            identified,
                            site: first.site,
                            claimed: other,
                        },
                        Identify::Sni | Identify::Host | Identify::Path => {
                            Refusal::Misdirected { identified, other }
                        }
                    });
                }
                Some(_) => {}
            }
        }
        let identified = match (found, self.default_site) {
            (Some(f), _) => f,
            (None, Some(site)) => Identified { site, by: None },
            (None, None) => return Err(Refusal::UnknownHost),
        };
        let tenant = &self.sites[identified.site].tenant;
        self.check_connection_tenant(sni_site, host_site, tenant)?;
        for claimed in req.headers.get_all(super::headers::X_TENANT_ID) {
            if claimed.as_bytes() != tenant.as_bytes() {
                return Err(Refusal::TenantMismatch {
                    identified: tenant.clone(),
                    site: identified.site,
                    claimed: String::from_utf8_lossy(claimed.as_bytes()).into_owned(),
                });
            }
        }
        Ok(identified)
    }

    /// Whatever `identify` says, a TLS session belongs to the tenant its
    /// SNI names: the request must be that tenant's, and its host must not
    /// be another tenant's name on this listener (a name nobody has here,
    /// an IP address for one, stays with the session's tenant, who is the
    /// only one it can reach). Browsers coalesce h2
    /// connections across names a certificate covers, so a request for
    /// tenant B's host on tenant A's session is normal traffic, and must
    /// be sent back (421, which makes the client retry on a new
    /// connection) rather than served by A.
    fn check_connection_tenant(
        &self,
        sni_site: Option<SiteId>,
        host_site: Option<SiteId>,
        tenant: &str,
    ) -> Result<(), Refusal> {
        let Some(sni_site) = sni_site else {
            return Ok(());
        };
        let sni_tenant = &self.sites[sni_site].tenant;
        if sni_tenant != tenant {
            return Err(Refusal::Misdirected {
                identified: sni_tenant.clone(),
                other: tenant.to_owned(),
            });
        }
        if let Some(site) = host_site
            && self.sites[site].tenant != *sni_tenant
        {
            return Err(Refusal::Misdirected {
                identified: sni_tenant.clone(),
                other: self.sites[site].tenant.clone(),
            });
        }
        Ok(())
    }

    /// The site of the tenant a bearer JWT's tenant claim names (unverified:
    /// the policy verifies it with that tenant's keys).
    fn site_for_jwt(&self, jwt: &UnverifiedJwt<'_>) -> Option<SiteId> {
        self.sites.iter().position(|s| {
            s.jwt_claim
                .as_deref()
                .is_some_and(|claim| jwt.claim(claim) == Some(s.tenant.as_str()))
        })
    }

    /// The first route of `site` whose conditions all hold.
    #[must_use]
    pub fn route<'a>(&'a self, site: SiteId, req: &RequestFacts<'_>) -> Option<&'a config::Route> {
        let s = &self.sites[site].config;
        let path = strip_site_prefix(s, req.path);
        s.routes.iter().find(|r| {
            r.host
                .as_deref()
                .is_none_or(|h| req.host.is_some_and(|rh| host_matches(h, rh)))
                && r.path_prefix
                    .as_deref()
                    .is_none_or(|p| path_has_prefix(path, p))
                && r.method.as_deref().is_none_or(|m| m == req.method.as_str())
                && r.header.as_ref().is_none_or(|(name, value)| {
                    req.headers
                        .get_all(name.as_str())
                        .iter()
                        .any(|v| v.as_bytes() == value.as_bytes())
                })
        })
    }
}

/// The path after the site's `path_prefix` when the site strips it.
#[must_use]
pub(crate) fn strip_site_prefix<'a>(site: &L7Site, path: &'a str) -> &'a str {
    match &site.path_prefix {
        Some(p) if site.strip_path_prefix && path_has_prefix(path, p) => {
            let rest = &path[p.len()..];
            if rest.is_empty() { "/" } else { rest }
        }
        _ => path,
    }
}

/// Each configured backend's URI authority (backends without a port are
/// not L7 backends).
fn authorities(backends: &[config::BackendConf]) -> HashMap<SocketAddr, http::uri::Authority> {
    backends
        .iter()
        .filter_map(|b| {
            let addr = SocketAddr::new(b.address, b.port?);
            let authority = addr.to_string().parse().ok()?;
            Some((addr, authority))
        })
        .collect()
}

/// The path the backend sees: the site's prefix and the route's prefix
/// removed when they are stripped. `path` may carry a query.
#[must_use]
pub(crate) fn backend_path(site: &L7Site, route: &config::Route, path_and_query: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut p = strip_site_prefix(site, path);
    if route.strip_prefix
        && let Some(prefix) = &route.path_prefix
        && path_has_prefix(p, prefix)
        && prefix != "/"
    {
        p = &p[prefix.len()..];
        if p.is_empty() {
            p = "/";
        }
    }
    match query {
        Some(q) => format!("{p}?{q}"),
        None => p.to_owned(),
    }
}

/// Whether `path` is `prefix` or continues it with a new segment.
#[must_use]
pub(crate) fn path_has_prefix(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// `pattern` (exact or `*.parent`) against a normalised host.
#[must_use]
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == host,
    }
}

/// The host of a Host header or `:authority`: the port removed, normalised.
#[must_use]
pub(crate) fn request_host(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(h, _)| h)
    };
    config::normalise_host(host)
}

impl ListenerRouting {
    /// The sites of every tenant on `l`'s address.
    fn build(config: &Config, l: &Listener, tenants: &HashMap<String, Arc<TenantStats>>) -> Self {
        let mut sites = Vec::new();
        let mut hosts = HashMap::new();
        let mut wildcards = HashMap::new();
        let mut prefixes = Vec::new();
        let mut tenant_sites = HashMap::new();
        for t in &config.tenants {
            for s in t.l7.iter().filter(|s| s.listen == l.address) {
                let id = sites.len();
                tenant_sites.entry(t.name.clone()).or_insert(id);
                for h in &s.hosts {
                    match h.strip_prefix("*.") {
                        Some(parent) => wildcards.insert(parent.to_owned(), id),
                        None => hosts.insert(h.clone(), id),
                    };
                }
                if let Some(p) = &s.path_prefix {
                    prefixes.push((p.clone(), id));
                }
                sites.push(Site {
                    tenant: t.name.clone(),
                    config: s.clone(),
                    stats: tenants
                        .get(&t.name)
                        .map_or_else(|| Arc::new(TenantStats::default()), Arc::clone),
                    jwt_claim: t.auth.jwt.as_ref().map(|j| j.tenant_claim.clone()),
                    hsts: s
                        .hsts
                        .as_deref()
                        .and_then(|v| HeaderValue::from_str(v).ok()),
                });
            }
        }
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let default_site = l
            .default_tenant
            .as_ref()
            .and_then(|d| sites.iter().position(|s| &s.tenant == d));
        let tls = sites.iter().any(|s| s.config.protocol != L7Protocol::Http);
        let configs = || sites.iter().map(|s| &s.config);
        let header_timeout = configs()
            .map(|c| c.timeouts.header)
            .max()
            .unwrap_or(config::DEFAULT_HEADER_TIMEOUT);
        let idle_timeout = configs()
            .map(|c| c.timeouts.idle)
            .max()
            .unwrap_or(config::DEFAULT_IDLE_TIMEOUT);
        let send_timeout = configs()
            .map(|c| c.timeouts.send)
            .max()
            .unwrap_or(config::DEFAULT_IDLE_TIMEOUT);
        let max_header_bytes = configs().map(|c| c.max_header_bytes).max().unwrap_or(0);
        ListenerRouting {
            listener: l.clone(),
            tls,
            header_timeout,
            idle_timeout,
            send_timeout,
            max_header_bytes,
            sites,
            hosts,
            wildcards,
            prefixes,
            default_site,
            tenant_sites,
        }
    }
}

impl Routing {
    /// Builds the snapshot of `config` with the backends in `down` left out.
    /// `previous` lends its live state.
    #[must_use]
    pub fn build(
        config: &Config,
        down: &BTreeSet<BackendKey>,
        previous: Option<&Routing>,
        seed: u32,
    ) -> Routing {
        let mut tenants = HashMap::new();
        let mut pools = HashMap::new();
        for t in &config.tenants {
            let stats = previous
                .and_then(|p| p.tenants.get(&t.name).cloned())
                .unwrap_or_else(|| Arc::new(TenantStats::default()));
            tenants.insert(t.name.clone(), stats);
            if t.l7.is_empty() {
                continue;
            }
            for p in &t.pools {
                let healthy: Vec<UpstreamSpec> = p
                    .backends
                    .iter()
                    .filter(|b| b.weight > 0)
                    .filter(|b| {
                        let key = (
                            t.name.clone(),
                            p.name.clone(),
                            b.address,
                            b.port.unwrap_or(0),
                        );
                        !down.contains(&key)
                    })
                    .filter_map(|b| {
                        Some(UpstreamSpec {
                            addr: SocketAddr::new(b.address, b.port?),
                            weight: b.weight,
                        })
                    })
                    .collect();
                let key = (t.name.clone(), p.name.clone());
                let prev_pool = previous.and_then(|r| r.pools.get(&key));
                let prev = prev_pool.map(|p| &p.balancer);
                let connect_timeout =
                    t.l7.iter()
                        .filter(|s| {
                            s.routes.iter().any(|r| r.pool == p.name)
                                || s.pool.as_deref() == Some(p.name.as_str())
                        })
                        .map(|s| s.timeouts.connect)
                        .min()
                        .unwrap_or(config::DEFAULT_CONNECT_TIMEOUT);
                let reusable = prev_pool
                    .filter(|old| old.l7 == p.l7 && old.connect_timeout == connect_timeout);
                let client = if let Some(old) = reusable {
                    old.client.clone()
                } else {
                    let (client, error) = client_for(&p.l7, connect_timeout);
                    if let Some(e) = error {
                        tracing::error!(tenant = %t.name, pool = %p.name, error = %e,
                            "cannot set up TLS to the pool's backends; requests to it will fail");
                    }
                    client
                };
                let mut params = upstream::BuildParams::new(
                    balance_of(p.l7.balance),
                    upstream::OutlierConfig {
                        consecutive_failures: p.l7.outlier.consecutive_failures,
                        base_ejection: p.l7.outlier.ejection,
                        ..upstream::OutlierConfig::default()
                    },
                    seed,
                );
                // Sized for every configured backend, so that health
                // changes never resize the ring (which would move keys).
                params.ring_backends = p.backends.len();
                let balancer = PoolBalancer::build_with(prev, &healthy, &params);
                pools.insert(
                    key,
                    Arc::new(PoolRouting {
                        tenant: t.name.clone(),
                        name: p.name.clone(),
                        l7: p.l7.clone(),
                        balancer,
                        client,
                        connect_timeout,
                        authorities: authorities(&p.backends),
                    }),
                );
            }
        }

        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                (
                    l.address,
                    Arc::new(ListenerRouting::build(config, l, &tenants)),
                )
            })
            .collect();
        Routing {
            listeners,
            pools,
            tenants,
        }
    }

    /// The pool `name` of `tenant`.
    #[must_use]
    pub fn pool(&self, tenant: &str, name: &str) -> Option<&Arc<PoolRouting>> {
        self.pools.get(&(tenant.to_owned(), name.to_owned()))
    }
}

fn balance_of(b: config::Balance) -> upstream::Balance {
    match b {
        config::Balance::RoundRobin => upstream::Balance::RoundRobin,
        config::Balance::LeastRequest => upstream::Balance::LeastRequest,
        config::Balance::Maglev => upstream::Balance::Maglev,
    }
}

/// The bytes a Maglev pool hashes for a request (None: no key, which the
/// balancer treats as round robin).
#[must_use]
pub(crate) fn hash_key(
    hash_on: &HashOn,
    client: SocketAddr,
    headers: &HeaderMap,
) -> Option<Vec<u8>> {
    match hash_on {
        HashOn::ClientIp => Some(match client.ip() {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        }),
        HashOn::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
        HashOn::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.as_bytes().to_vec())
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(text_extra: &str, listener: &str) -> Routing {
        let text = routing_text(text_extra, listener);
        let config = config::parse(&text, "lb.toml").expect("valid");
        Routing::build(&config, &BTreeSet::new(), None, 0)
    }

    fn routing_text(text_extra: &str, listener: &str) -> String {
        format!(
            r#"[node]
interface = "eth0"

[[tenant]]
name = "acme"
[[tenant.pool]]
name = "web"
backends = [ {{ address = "10.0.1.11", port = 8080 }}, {{ address = "10.0.1.12", port = 8080 }} ]
[[tenant.pool]]
name = "api"
backends = [ {{ address = "10.0.1.21", port = 8080 }} ]
[[tenant.l7]]
listen = "203.0.113.20:443"
hosts = ["acme.example", "*.acme.example"]
tls = {{ cert = "a.pem", key = "a.key" }}
path_prefix = "/acme"
strip_path_prefix = true
routes = [
  {{ host = "api.acme.example", pool = "api" }},
  {{ path_prefix = "/v2", pool = "api", strip_prefix = true }},
  {{ method = "DELETE", pool = "api" }},
  {{ header = {{ name = "X-Canary", value = "1" }}, pool = "api" }},
  {{ path_prefix = "/", pool = "web" }},
]
[[tenant]]
name = "globex"
[[tenant.pool]]
name = "app"
backends = [ {{ address = "10.0.2.11", port = 8080 }} ]
[[tenant.l7]]
listen = "203.0.113.20:443"
hosts = ["globex.example"]
tls = {{ cert = "g.pem", key = "g.key" }}
routes = [ {{ path_prefix = "/", pool = "app" }} ]
{text_extra}
{listener}"#
        )
    }

    fn facts<'a>(
        sni: Option<&'a str>,
        host: Option<&'a str>,
        path: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestFacts<'a> {
        RequestFacts {
            sni,
            host,
            path,
            method: &Method::GET,
            headers,
            jwt: None,
        }
    }

    fn listener(r: &Routing) -> &ListenerRouting {
        &r.listeners[&"203.0.113.20:443".parse().expect("addr")]
    }

    #[test]
    fn sni_and_host_identify_and_conflicts_are_misdirected() {
        let r = routing("", "");
        let l = listener(&r);
        let h = HeaderMap::new();
        let tenant = |f: &RequestFacts<'_>| l.identify(f).map(|i| l.sites[i.site].tenant.clone());
        assert_eq!(
            tenant(&facts(Some("acme.example"), None, "/", &h)),
            Ok("acme".into())
        );
        assert_eq!(
            tenant(&facts(
                Some("x.acme.example"),
                Some("x.acme.example"),
                "/",
                &h
            )),
            Ok("acme".into())
        );
        assert_eq!(
            tenant(&facts(None, Some("globex.example"), "/", &h)),
            Ok("globex".into())
        );
        assert_eq!(
            tenant(&facts(
                Some("acme.example"),
                Some("globex.example"),
                "/",
                &h
            )),
            Err(Refusal::Misdirected {
                identified: "acme".into(),
                other: "globex".into()
            })
        );
        // A wildcard covers one label only.
        assert_eq!(
            tenant(&facts(Some("a.b.acme.example"), None, "/x", &h)),
            Err(Refusal::UnknownHost)
        );
        // Path prefix: on whole segments.
        assert_eq!(
            tenant(&facts(None, Some("unknown.example"), "/acme/x", &h)),
            Ok("acme".into())
        );
        assert_eq!(
            tenant(&facts(None, None, "/acmex", &h)),
            Err(Refusal::UnknownHost)
        );
    }

    #[test]
    fn a_tls_sessions_requests_belong_to_its_sni_tenant_whatever_identify_says() {
        // identify = ["sni"] alone: the Host is still checked.
        let r = routing(
            "",
            "[[listener]]\naddress = \"203.0.113.20:443\"\nidentify = [\"sni\"]\n",
        );
        let l = listener(&r);
        let h = HeaderMap::new();
        let tenant = |f: &RequestFacts<'_>| l.identify(f).map(|i| l.sites[i.site].tenant.clone());
        assert_eq!(
            tenant(&facts(
                Some("a.acme.example"),
                Some("api.acme.example"),
                "/",
                &h
            )),
            Ok("acme".into())
        );
        assert_eq!(
            tenant(&facts(
                Some("acme.example"),
                Some("globex.example"),
                "/",
                &h
            )),
            Err(Refusal::Misdirected {
                identified: "acme".into(),
                other: "globex".into()
            })
        );
        // A host that is nobody's here stays with the session's tenant.
        assert_eq!(
            tenant(&facts(Some("acme.example"), Some("10.0.0.1"), "/", &h)),
            Ok("acme".into())
        );
        // identify = ["path"]: a path of acme's on globex's session.
        let r = routing(
            "",
            "[[listener]]\naddress = \"203.0.113.20:443\"\nidentify = [\"path\"]\n",
        );
        let l = listener(&r);
        assert_eq!(
            l.identify(&facts(Some("globex.example"), None, "/acme/x", &h)),
            Err(Refusal::Misdirected {
                identified: "globex".into(),
                other: "acme".into()
            })
        );
    }

    #[test]
    fn overlapping_names_go_to_the_exact_owner_and_never_cross_sessions() {
        // globex owns b.acme.example under acme's *.acme.example.
        let text = routing_text("", "").replace(
            "hosts = [\"globex.example\"]",
            "hosts = [\"globex.example\", \"b.acme.example\"]",
        );
        let config = config::parse(&text, "lb.toml").expect("overlapping names are valid");
        let r = Routing::build(&config, &BTreeSet::new(), None, 0);
        let l = listener(&r);
        let h = HeaderMap::new();
        let tenant = |f: &RequestFacts<'_>| l.identify(f).map(|i| l.sites[i.site].tenant.clone());
        assert_eq!(
            tenant(&facts(Some("b.acme.example"), None, "/", &h)),
            Ok("globex".into())
        );
        assert_eq!(
            tenant(&facts(Some("c.acme.example"), None, "/", &h)),
            Ok("acme".into())
        );
        assert_eq!(
            tenant(&facts(
                Some("a.acme.example"),
                Some("b.acme.example"),
                "/",
                &h
            )),
            Err(Refusal::Misdirected {
                identified: "acme".into(),
                other: "globex".into()
            })
        );
        assert_eq!(
            tenant(&facts(
                Some("b.acme.example"),
                Some("a.acme.example"),
                "/",
                &h
            )),
            Err(Refusal::Misdirected {
                identified: "globex".into(),
                other: "acme".into()
            })
        );
    }

    #[test]
    fn host_names_are_compared_by_name_not_by_hash() {
        let r = routing("", "");
        let l = listener(&r);
        // Every name here is looked up by its text: a name whose SNI hash
        // collided with acme.example's would find nothing.
        assert!(l.site_for_host("acme.example").is_some());
        assert_eq!(l.site_for_host("acme.example.evil"), None);
        assert_eq!(l.site_for_host(".acme.example"), None);
        assert!(l.hosts.keys().all(|h| !h.starts_with("*.")));
    }

    #[test]
    fn x_tenant_id_must_match() {
        let r = routing("", "");
        let l = listener(&r);
        let mut h = HeaderMap::new();
        h.insert(
            super::super::headers::X_TENANT_ID,
            "globex".parse().expect("value"),
        );
        assert_eq!(
            l.identify(&facts(Some("acme.example"), None, "/", &h)),
            Err(Refusal::TenantMismatch {
                identified: "acme".into(),
                site: 0,
                claimed: "globex".into()
            })
        );
        h.insert(
            super::super::headers::X_TENANT_ID,
            "acme".parse().expect("value"),
        );
        assert!(
            l.identify(&facts(Some("acme.example"), None, "/", &h))
                .is_ok()
        );
    }

    #[test]
    fn header_and_jwt_name_candidates_and_never_override_the_host() {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        let r = routing(
            "[tenant.auth]\njwt = { jwks_file = \"k.json\", tenant_claim = \"org\" }",
            "[[listener]]\naddress = \"203.0.113.20:443\"\nidentify = [\"host\", \"header\", \"jwt\"]\n",
        );
        let l = listener(&r);
        let x_tenant = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(super::super::headers::X_TENANT_ID, t.parse().expect("v"));
            h
        };
        let who = |host: Option<&str>, h: &HeaderMap| {
            let creds = super::super::admission::auth::Credentials::of(h);
            let facts = RequestFacts {
                jwt: creds.jwt.as_ref(),
                ..facts(None, host, "/", h)
            };
            l.identify(&facts)
                .map(|i| (l.sites[i.site].tenant.clone(), i.by))
        };
        // The header names a candidate the policy must then see proven.
        assert_eq!(
            who(Some("unknown.example"), &x_tenant("acme")),
            Ok(("acme".into(), Some(Identify::Header)))
        );
        assert_eq!(
            who(Some("acme.example"), &x_tenant("globex")),
            Err(Refusal::TenantMismatch {
                identified: "acme".into(),
                site: 0,
                claimed: "globex".into()
            })
        );
        // A JWT's claim (unverified here) names globex, whose claim is
        // "org" (text_extra lands in the last tenant).
        let token = |claims: &str| {
            let mut h = HeaderMap::new();
            let t = format!(
                "eyJhbGciOiJFUzI1NiJ9.{}.c2ln",
                URL_SAFE_NO_PAD.encode(claims)
            );
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}").parse().expect("v"),
            );
            h
        };
        assert_eq!(
            who(Some("unknown.example"), &token(r#"{"org":"globex"}"#)),
            Ok(("globex".into(), Some(Identify::Jwt)))
        );
        // acme takes no JWTs; and the Host decides before any token.
        assert_eq!(
            who(Some("unknown.example"), &token(r#"{"org":"acme"}"#)),
            Err(Refusal::UnknownHost)
        );
        assert_eq!(
            who(Some("acme.example"), &token(r#"{"org":"globex"}"#)),
            Ok(("acme".into(), Some(Identify::Host)))
        );
    }

    #[test]
    fn default_tenant_catches_the_rest() {
        let r = routing(
            "",
            "[[listener]]\naddress = \"203.0.113.20:443\"\ndefault_tenant = \"globex\"\n",
        );
        let l = listener(&r);
        let h = HeaderMap::new();
        let id = l
            .identify(&facts(None, Some("nobody.example"), "/", &h))
            .expect("default");
        assert_eq!((l.sites[id.site].tenant.as_str(), id.by), ("globex", None));
    }

    #[test]
    fn routes_by_host_path_method_header() {
        let r = routing("", "");
        let l = listener(&r);
        let mut h = HeaderMap::new();
        let pool = |f: &RequestFacts<'_>| {
            let id = l.identify(f).expect("identified");
            l.route(id.site, f).map(|r| r.pool.clone())
        };
        assert_eq!(
            pool(&facts(
                Some("api.acme.example"),
                Some("api.acme.example"),
                "/",
                &h
            )),
            Some("api".into())
        );
        assert_eq!(
            pool(&facts(
                Some("acme.example"),
                Some("acme.example"),
                "/v2/items",
                &h
            )),
            Some("api".into())
        );
        assert_eq!(
            pool(&facts(
                Some("acme.example"),
                Some("acme.example"),
                "/v2x",
                &h
            )),
            Some("web".into())
        );
        // The site's prefix is stripped before routes see the path.
        assert_eq!(
            pool(&facts(None, None, "/acme/v2/items", &h)),
            Some("api".into())
        );
        let mut f = facts(Some("acme.example"), Some("acme.example"), "/", &h);
        f.method = &Method::DELETE;
        assert_eq!(pool(&f), Some("api".into()));
        h.insert("x-canary", "1".parse().expect("value"));
        assert_eq!(
            pool(&facts(Some("acme.example"), Some("acme.example"), "/", &h)),
            Some("api".into())
        );
    }

    #[test]
    fn backend_paths_strip_prefixes() {
        let r = routing("", "");
        let l = listener(&r);
        let site = &l.sites[0].config;
        let v2 = &site.routes[1];
        let web = &site.routes[4];
        assert_eq!(backend_path(site, v2, "/acme/v2/items?x=1"), "/items?x=1");
        assert_eq!(backend_path(site, v2, "/v2"), "/");
        assert_eq!(backend_path(site, web, "/acme"), "/");
        assert_eq!(backend_path(site, web, "/other?q"), "/other?q");
    }

    #[test]
    fn request_hosts() {
        assert_eq!(request_host("API.Example.com:8443"), "api.example.com");
        assert_eq!(request_host("example.com."), "example.com");
        assert_eq!(request_host("[2001:db8::1]:443"), "2001:db8::1");
        assert!(host_matches("*.a.example", "x.a.example"));
        assert!(!host_matches("*.a.example", "a.example"));
        assert!(!host_matches("*.a.example", ".a.example"));
    }

    #[test]
    fn down_and_draining_backends_are_left_out() {
        let r = routing("", "");
        let web = r.pool("acme", "web").expect("pool");
        assert_eq!(web.balancer.backends().len(), 2);
        let text = "";
        let _ = text;
    }

    #[test]
    fn cookie_and_header_keys() {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; sid=xyz".parse().expect("value"));
        let client: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        assert_eq!(
            hash_key(&HashOn::Cookie("sid".into()), client, &h),
            Some(b"xyz".to_vec())
        );
        assert_eq!(hash_key(&HashOn::Header("x-user".into()), client, &h), None);
        assert_eq!(
            hash_key(&HashOn::ClientIp, client, &h),
            Some(vec![192, 0, 2, 1])
        );
    }
}
