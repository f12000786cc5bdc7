//! Admission: the per-tenant request policy, what `lbd` checks once it
//! knows a request's tenant and before the request may reach a backend.
//!
//! In order ([`Policy::admit`]), each refusal with its status and reason
//! code (the access log's `decision`, the `reason` label of
//! `lb_l7_policy_refusals_total`):
//!
//! 1. the tenant's source ACL (`[tenant.acl]`, the same longest-prefix rule
//!    as XDP, which cannot apply it on a shared L7 address): 403
//!    `acl_denied`;
//! 2. the per-client-address bucket (IPv6 clients by /64): 429
//!    `client_ip_rate_limit`;
//! 3. the per-credential bucket (the presented API key or bearer token,
//!    valid or not, so guessing keys is rate limited too): 429
//!    `api_key_rate_limit`;
//! 4. credentials ([`auth`]): any credential of another tenant among those
//!    the request carries (`X-API-Key`, a bearer key or JWT) is refused
//!    first (403 `foreign_credentials`), then a presented credential the
//!    tenant checks must be valid (401 `api_key_invalid`, `jwt_*`),
//!    `auth.required` needs one (401 `credentials_missing`), and a request
//!    whose tenant came from `X-Tenant-ID` must prove it (403
//!    `tenant_unproven`);
//! 5. the tenant's bucket: 429 `rate_limit` (after authentication, so
//!    requests with bad credentials never spend a tenant's quota);
//! 6. shedding by tier when the node is loaded: 503 `shed`;
//! 7. the tenant's concurrent requests: 429 `inflight_limit`.
//!
//! Connections count against `max_connections` from the moment their
//! tenant is known (the SNI, else the first request): 429
//! `connection_limit` (a TLS connection over the limit is closed before
//! its handshake).
//!
//! **Shedding.** With `node.max_inflight_requests = N`, a request is
//! admitted only while the requests `lbd` is proxying, itself included,
//! stay within its tier's share: free up to 50 % of N, standard up to 80 %,
//! premium up to N. So under overload free traffic goes first, standard
//! next, and 20 % of the capacity is only ever used by premium tenants.
//!
//! **State across reloads.** The state lives here, keyed by tenant name,
//! outside the routing snapshot: a reload rescales buckets to the new rate
//! and burst keeping the tokens they have ([`bucket`]), keyed tables and
//! counters carry over, and only a removed tenant's state goes. A request
//! racing a reload may be judged by the old limits once.
//!
//! The request path takes no lock: atomics, and one `ArcSwap` load of the
//! tenant's settings.

pub(crate) mod auth;
pub(crate) mod bucket;

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use http::StatusCode;

use crate::config::{Acl, Config, Identify, RequestLimits, Tenant, Tier};

use self::{
    auth::{ApiKeys, Credentials, JwtError, JwtVerifier, UnverifiedJwt},
    bucket::{KeyedBuckets, Quota, Rate, Take, TokenBucket},
};

/// Why the policy refused a request or a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    AclDenied,
    ConnectionLimit,
    ClientIpRateLimit,
    ApiKeyRateLimit,
    CredentialsMissing,
    ApiKeyInvalid,
    JwtMalformed,
    JwtAlgorithm,
    JwtSignature,
    JwtExpired,
    JwtNotYetValid,
    JwtAudience,
    JwtIssuer,
    JwtMissingClaim,
    ForeignCredentials,
    TenantUnproven,
    RateLimit,
    Shed,
    InflightLimit,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 19] = [
        Reason::AclDenied,
        Reason::ConnectionLimit,
        Reason::ClientIpRateLimit,
        Reason::ApiKeyRateLimit,
        Reason::CredentialsMissing,
        Reason::ApiKeyInvalid,
        Reason::JwtMalformed,
        Reason::JwtAlgorithm,
        Reason::JwtSignature,
        Reason::JwtExpired,
        Reason::JwtNotYetValid,
        Reason::JwtAudience,
        Reason::JwtIssuer,
        Reason::JwtMissingClaim,
        Reason::ForeignCredentials,
        Reason::TenantUnproven,
        Reason::RateLimit,
        Reason::Shed,
        Reason::InflightLimit,
    ];

    /// The short code of logs, metrics and error bodies.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Self::AclDenied => "acl_denied",
            Self::ConnectionLimit => "connection_limit",
            Self::ClientIpRateLimit => "client_ip_rate_limit",
            Self::ApiKeyRateLimit => "api_key_rate_limit",
            Self::CredentialsMissing => "credentials_missing",
            Self::ApiKeyInvalid => "api_key_invalid",
            Self::JwtMalformed => "jwt_malformed",
            Self::JwtAlgorithm => "jwt_algorithm",
            Self::JwtSignature => "jwt_signature",
            Self::JwtExpired => "jwt_expired",
            Self::JwtNotYetValid => "jwt_not_yet_valid",
            Self::JwtAudience => "jwt_audience",
            Self::JwtIssuer => "jwt_issuer",
            Self::JwtMissingClaim => "jwt_missing_claim",
            Self::ForeignCredentials => "foreign_credentials",
            Self::TenantUnproven => "tenant_unproven",
            Self::RateLimit => "rate_limit",
            Self::Shed => "shed",
            Self::InflightLimit => "inflight_limit",
        }
    }

    /// The status the client gets.
    #[must_use]
    pub fn status(self) -> StatusCode {
        match self {
            Self::AclDenied | Self::ForeignCredentials | Self::TenantUnproven => {
                StatusCode::FORBIDDEN
            }
            Self::ConnectionLimit
            | Self::ClientIpRateLimit
            | Self::ApiKeyRateLimit
            | Self::RateLimit
            | Self::InflightLimit => StatusCode::TOO_MANY_REQUESTS,
            Self::Shed => StatusCode::SERVICE_UNAVAILABLE,
            Self::CredentialsMissing
            | Self::ApiKeyInvalid
            | Self::JwtMalformed
            | Self::JwtAlgorithm
            | Self::JwtSignature
            | Self::JwtExpired
            | Self::JwtNotYetValid
            | Self::JwtAudience
            | Self::JwtIssuer
            | Self::JwtMissingClaim => StatusCode::UNAUTHORIZED,
        }
    }

    /// Its index in [`Reason::ALL`].
    #[must_use]
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }

    fn of_jwt(e: JwtError) -> Self {
        match e {
            JwtError::Malformed => Self::JwtMalformed,
            JwtError::Algorithm => Self::JwtAlgorithm,
            JwtError::Signature => Self::JwtSignature,
            JwtError::Expired => Self::JwtExpired,
            JwtError::NotYetValid => Self::JwtNotYetValid,
            JwtError::Audience => Self::JwtAudience,
            JwtError::Issuer => Self::JwtIssuer,
            JwtError::MissingClaim => Self::JwtMissingClaim,
            JwtError::OtherTenant => Self::ForeignCredentials,
        }
    }
}

/// A refusal and what the answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub reason: Reason,
    /// The configuration key that decided, e.g. `limits.requests_per_second`.
    pub rule: String,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
    /// The `RateLimit-*` headers of a rate refusal.
    pub quota: Option<Quota>,
    /// `WWW-Authenticate` of a 401.
    pub www_authenticate: Option<String>,
}

impl Refusal {
    fn new(reason: Reason, rule: impl Into<String>) -> Self {
        Self {
            reason,
            rule: rule.into(),
            retry_after: matches!(
                reason,
                Reason::Shed | Reason::InflightLimit | Reason::ConnectionLimit
            )
            .then_some(1),
            quota: None,
            www_authenticate: None,
        }
    }

    /// The refusal of a connection over `max_connections`.
    #[must_use]
    pub(crate) fn connection_limit() -> Self {
        Self::new(Reason::ConnectionLimit, "limits.max_connections")
    }

    fn rate(reason: Reason, rule: &str, quota: Quota, retry_in: Duration) -> Self {
        Self {
            retry_after: Some(auth::ceil_secs(retry_in)),
            quota: Some(quota),
            ..Self::new(reason, rule)
        }
    }

    fn unauthorized(reason: Reason, rule: &str, tenant: &str) -> Self {
        let realm = format!("Bearer realm=\"{tenant}\"");
        let challenge = if reason == Reason::CredentialsMissing {
            realm
        } else {
            format!(
                "{realm}, error=\"invalid_token\", error_description=\"{}\"",
                reason.code()
            )
        };
        Self {
            www_authenticate: Some(challenge),
            ..Self::new(reason, rule)
        }
    }
}

/// How the request's tenant was found, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proof {
    /// SNI, Host, path or the listener's default: nothing to prove.
    None,
    /// `X-Tenant-ID`: the request must authenticate as the tenant.
    Header,
    /// A JWT's claim: the JWT must verify with the tenant's keys.
    Jwt,
}

impl Proof {
    /// What identification by `by` requires.
    #[must_use]
    pub(crate) fn of(by: Option<Identify>) -> Self {
        match by {
            Some(Identify::Header) => Self::Header,
            Some(Identify::Jwt) => Self::Jwt,
            _ => Self::None,
        }
    }
}

/// What [`Policy::admit`] looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub client: IpAddr,
    /// The request's credentials (made once per request: identification
    /// looks at the same JWT).
    pub credentials: &'a Credentials<'a>,
    pub proof: Proof,
}

/// An admitted request: its guards (held until the response is finished)
/// and what it may be told about its quota.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// The tightest quota that applied (for `RateLimit-*` headers).
    pub quota: Option<Quota>,
    /// Who the request authenticated as: `api_key:NAME` or `jwt[:SUB]`.
    pub principal: Option<String>,
    pub guard: Option<InflightGuard>,
}

/// Holds a request's place in the tenant's and the node's in-flight
/// counts.
#[derive(Debug)]
pub(crate) struct InflightGuard {
    tenant: Arc<TenantAdmission>,
    node: Arc<AtomicU64>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.tenant.inflight.fetch_sub(1, Relaxed);
        self.node.fetch_sub(1, Relaxed);
    }
}

/// Holds a connection's place in its tenant's `max_connections`.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(Option<Arc<TenantAdmission>>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.connections.fetch_sub(1, Relaxed);
        }
    }
}

/// One tenant's live state.
#[derive(Debug)]
pub(crate) struct TenantAdmission {
    name: String,
    settings: ArcSwap<Settings>,
    bucket: TokenBucket,
    connections: AtomicU64,
    inflight: AtomicU64,
}

impl TenantAdmission {
    #[cfg(test)]
    /// Connections counted now.
    #[must_use]
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    #[cfg(test)]
    /// Requests in flight now.
    #[must_use]
    pub(crate) fn inflight(&self) -> u64 {
        self.inflight.load(Relaxed)
    }
}

/// One tenant's settings, replaced whole on reload.
#[derive(Debug, Default)]
struct Settings {
    tier: Tier,
    rate: Option<Rate>,
    per_ip: Option<(Rate, Arc<KeyedBuckets>)>,
    per_key: Option<(Rate, Arc<KeyedBuckets>)>,
    max_connections: Option<u64>,
    max_inflight: Option<u64>,
    acl: AclRules,
    auth: Arc<TenantAuth>,
}

/// A tenant's credentials.
#[derive(Debug, Default)]
struct TenantAuth {
    api_keys: ApiKeys,
    jwt: Option<Arc<JwtVerifier>>,
    required: bool,
    /// The configuration it was built from (to reuse it across reloads).
    source: crate::config::Auth,
}

/// `[tenant.acl]`, ready to match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AclRules {
    /// (network, prefix length, allow, index in its list)
    entries: Vec<(IpAddr, u8, bool, usize)>,
    has_allow: bool,
}

impl AclRules {
    fn new(acl: &Acl) -> Self {
        let mut entries = Vec::new();
        for (list, allow) in [(&acl.allow, true), (&acl.deny, false)] {
            for (i, &(net, len)) in list.iter().enumerate() {
                entries.push((net.to_canonical(), len, allow, i));
            }
        }
        Self {
            entries,
            has_allow: !acl.allow.is_empty(),
        }
    }

    /// `Err(rule)` when `ip` is refused: the longest matching prefix
    /// decides, deny winning a tie; with an allow list, no match refuses.
    fn check(&self, ip: IpAddr) -> Result<(), String> {
        let ip = ip.to_canonical();
        let mut best: Option<(u8, bool, usize)> = None;
        for &(net, len, allow, i) in &self.entries {
            if !prefix_contains(net, len, ip) {
                continue;
            }
            let better = match best {
                None => true,
                Some((l, a, _)) => len > l || (len == l && a && !allow),
            };
            if better {
                best = Some((len, allow, i));
            }
        }
        match best {
            Some((_, false, i)) => Err(format!("acl.deny[{i}]")),
            None if self.has_allow => Err("acl.allow".to_owned()),
            _ => Ok(()),
        }
    }
}

/// Whether `ip` is in the prefix `net`/`len` (same family only).
pub(super) fn prefix_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let shift = 32 - u32::from(len.min(32));
            shift == 32 || (u32::from(n) ^ u32::from(a)) >> shift == 0
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let shift = 128 - u32::from(len.min(128));
            shift == 128 || (u128::from(n) ^ u128::from(a)) >> shift == 0
        }
        _ => false,
    }
}

/// The key of the per-client-address bucket: an IPv4 address, or the /64
/// of an IPv6 one (a client owns a whole /64).
fn client_key(ip: IpAddr) -> ([u8; 9], usize) {
    let mut key = [0; 9];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            key[0] = 4;
            key[1..5].copy_from_slice(&v4.octets());
            (key, 5)
        }
        IpAddr::V6(v6) => {
            key[0] = 6;
            key[1..9].copy_from_slice(&v6.octets()[..8]);
            (key, 9)
        }
    }
}

/// The node's in-flight requests a tier may reach with `limit` configured.
#[must_use]
pub(crate) fn shed_threshold(tier: Tier, limit: u64) -> u64 {
    match tier {
        Tier::Premium => limit,
        Tier::Standard => (limit.saturating_mul(4) / 5).max(1),
        Tier::Free => (limit / 2).max(1),
    }
}

/// The policy of every tenant, shared by all connections; lives as long
/// as the L7 tier.
#[derive(Debug)]
pub(crate) struct Policy {
    clock: Instant,
    tenants: ArcSwap<HashMap<String, Arc<TenantAdmission>>>,
    /// Digest of every API key -> its tenant (to tell "another tenant's
    /// key", 403, from "no key", 401).
    key_owners: ArcSwap<HashMap<[u8; 32], String>>,
    /// The tenant claim names in use (to find the tenant a foreign JWT
    /// names).
    jwt_claims: ArcSwap<Vec<String>>,
    /// Requests being proxied by this `lbd`.
    node_inflight: Arc<AtomicU64>,
    /// `node.max_inflight_requests` (0: none).
    node_limit: AtomicU64,
}

impl Default for Policy {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads every tenant's key files, to refuse a configuration whose files
/// are broken before anything is applied.
///
/// # Errors
/// The first file that cannot be used, with its tenant.
pub fn check_key_files(config: &Config) -> Result<(), String> {
    for t in &config.tenants {
        if let Some(jwt) = &t.auth.jwt {
            JwtVerifier::load(&t.name, jwt)
                .map_err(|e| format!("tenant {:?} auth.jwt: {e}", t.name))?;
        }
    }
    Ok(())
}

impl Policy {
    #[must_use]
    pub(crate) fn new() -> Self {
        Self {
            clock: Instant::now(),
            tenants: ArcSwap::from_pointee(HashMap::new()),
            key_owners: ArcSwap::from_pointee(HashMap::new()),
            jwt_claims: ArcSwap::from_pointee(Vec::new()),
            node_inflight: Arc::new(AtomicU64::new(0)),
            node_limit: AtomicU64::new(0),
        }
    }

    /// Nanoseconds of the policy's clock.
    fn now(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Follows a new configuration: new tenants start with full buckets,
    /// kept ones keep their tokens under the new limits, removed ones go.
    /// Key files are read from `dir`; a tenant whose files cannot be read
    /// keeps its previous keys (or, new, refuses every JWT). Returns what
    /// could not be loaded.
    pub(crate) fn update(&self, config: &Config) -> Vec<String> {
        let now = self.now();
        let old = self.tenants.load_full();
        let mut errors = Vec::new();
        let mut tenants = HashMap::with_capacity(config.tenants.len());
        let mut owners = HashMap::new();
        let mut claims = BTreeSet::new();
        for t in &config.tenants {
            let policy = old.get(&t.name).cloned().unwrap_or_else(|| {
                Arc::new(TenantAdmission {
                    name: t.name.clone(),
                    settings: ArcSwap::from_pointee(Settings::default()),
                    bucket: TokenBucket::new(),
                    connections: AtomicU64::new(0),
                    inflight: AtomicU64::new(0),
                })
            });
            let prev = policy.settings.load_full();
            let (auth, error) = tenant_auth(t, &prev.auth);
            errors.extend(error);
            let settings = settings(t, &prev, auth, &policy.bucket, now);
            policy.settings.store(Arc::new(settings));
            for k in &t.auth.api_keys {
                owners.insert(k.sha256, t.name.clone());
            }
            if let Some(j) = &t.auth.jwt {
                claims.insert(j.tenant_claim.clone());
            }
            tenants.insert(t.name.clone(), policy);
        }
        self.tenants.store(Arc::new(tenants));
        self.key_owners.store(Arc::new(owners));
        self.jwt_claims
            .store(Arc::new(claims.into_iter().collect()));
        self.node_limit
            .store(config.node.max_inflight_requests.unwrap_or(0), Relaxed);
        errors
    }

    /// The state of `tenant`.
    #[must_use]
    pub(crate) fn tenant(&self, tenant: &str) -> Option<Arc<TenantAdmission>> {
        self.tenants.load().get(tenant).cloned()
    }

    #[cfg(test)]
    /// Requests `lbd` is proxying now.
    #[must_use]
    pub(crate) fn inflight(&self) -> u64 {
        self.node_inflight.load(Relaxed)
    }

    /// Counts a connection of `tenant` against its `max_connections`.
    ///
    /// # Errors
    /// `connection_limit` when the tenant is at its limit.
    pub(crate) fn connect(&self, tenant: &str) -> Result<ConnectionGuard, Refusal> {
        let Some(t) = self.tenant(tenant) else {
            return Ok(ConnectionGuard(None));
        };
        let max = t.settings.load().max_connections;
        let n = t.connections.fetch_add(1, Relaxed) + 1;
        if max.is_some_and(|max| n > max) {
            t.connections.fetch_sub(1, Relaxed);
            return Err(Refusal::connection_limit());
        }
        Ok(ConnectionGuard(Some(t)))
    }

    /// Whether `tenant`'s ACL lets `client` in (for connections that carry
    /// no request: passthrough).
    ///
    /// # Errors
    /// `acl_denied` with the deciding rule.
    pub(crate) fn check_acl(&self, tenant: &str, client: IpAddr) -> Result<(), Refusal> {
        let Some(t) = self.tenant(tenant) else {
            return Ok(());
        };
        t.settings
            .load()
            .acl
            .check(client)
            .map_err(|rule| Refusal::new(Reason::AclDenied, rule))
    }

    /// Every check of a request of `tenant` (see the module documentation).
    ///
    /// # Errors
    /// The first check that refuses.
    pub(crate) fn admit(&self, tenant: &str, ask: &Ask<'_>) -> Result<Admission, Refusal> {
        let Some(t) = self.tenant(tenant) else {
            return Ok(Admission::default());
        };
        let s = t.settings.load();
        let now = self.now();
        s.acl
            .check(ask.client)
            .map_err(|rule| Refusal::new(Reason::AclDenied, rule))?;
        let mut tightest: Option<Quota> = None;
        let mut tighten = |q: Quota| {
            if tightest.is_none_or(|t| q.remaining < t.remaining) {
                tightest = Some(q);
            }
        };
        if let Some((rate, table)) = &s.per_ip {
            let (key, len) = client_key(ask.client);
            match table.take(&key[..len], rate, now) {
                Take::Allowed(q) => tighten(q),
                Take::Refused { quota, retry_in } => {
                    return Err(Refusal::rate(
                        Reason::ClientIpRateLimit,
                        "limits.requests_per_second_per_client_ip",
                        quota,
                        retry_in,
                    ));
                }
            }
        }
        let creds = ask.credentials;
        if let (Some((rate, table)), Some(key)) = (&s.per_key, creds.limit_key()) {
            match table.take(key.as_bytes(), rate, now) {
                Take::Allowed(q) => tighten(q),
                Take::Refused { quota, retry_in } => {
                    return Err(Refusal::rate(
                        Reason::ApiKeyRateLimit,
                        "limits.requests_per_second_per_api_key",
                        quota,
                        retry_in,
                    ));
                }
            }
        }
        let principal = self.authenticate(&t.name, &s.auth, creds, ask.proof)?;
        if let Some(rate) = &s.rate {
            match t.bucket.take(rate, now) {
                Take::Allowed(q) => tighten(q),
                Take::Refused { quota, retry_in } => {
                    return Err(Refusal::rate(
                        Reason::RateLimit,
                        "limits.requests_per_second",
                        quota,
                        retry_in,
                    ));
                }
            }
        }
        let limit = self.node_limit.load(Relaxed);
        let in_flight = self.node_inflight.fetch_add(1, Relaxed) + 1;
        if limit > 0 && in_flight > shed_threshold(s.tier, limit) {
            self.node_inflight.fetch_sub(1, Relaxed);
            return Err(Refusal::new(
                Reason::Shed,
                format!(
                    "node.max_inflight_requests ({} tier: {} of {limit})",
                    s.tier,
                    shed_threshold(s.tier, limit)
                ),
            ));
        }
        let mine = t.inflight.fetch_add(1, Relaxed) + 1;
        let guard = InflightGuard {
            tenant: Arc::clone(&t),
            node: Arc::clone(&self.node_inflight),
        };
        if s.max_inflight.is_some_and(|max| mine > max) {
            drop(guard);
            return Err(Refusal::new(
                Reason::InflightLimit,
                "limits.max_inflight_requests",
            ));
        }
        Ok(Admission {
            quota: tightest,
            principal,
            guard: Some(guard),
        })
    }

    /// Who the request is, if anyone (see the module documentation, step 4).
    /// Every credential the request carries is first checked for belonging
    /// to another tenant (403 whatever else it carries), then the tenant
    /// checks its own: the API key (`X-API-Key`, else a bearer key) and the
    /// JWT.
    fn authenticate(
        &self,
        tenant: &str,
        auth: &TenantAuth,
        creds: &Credentials<'_>,
        proof: Proof,
    ) -> Result<Option<String>, Refusal> {
        let header_key = creds.header_key.map(auth::digest);
        let bearer_key = creds.bearer_key.map(auth::digest);
        let owners = self.key_owners.load();
        if [&header_key, &bearer_key]
            .into_iter()
            .flatten()
            .any(|d| owners.get(d).is_some_and(|owner| owner != tenant))
        {
            return Err(Refusal::new(Reason::ForeignCredentials, "auth.api_keys"));
        }
        if creds
            .jwt
            .as_ref()
            .is_some_and(|jwt| self.jwt_of_another_tenant(tenant, jwt))
        {
            return Err(Refusal::new(Reason::ForeignCredentials, "auth.jwt"));
        }
        let mut principal = None;
        let mut failure: Option<(Reason, &str)> = None;
        if let Some(digest) = header_key.or(bearer_key) {
            if let Some(name) = auth.api_keys.find(&digest) {
                principal = Some(format!("api_key:{name}"));
            } else if !auth.api_keys.is_empty() {
                failure = Some((Reason::ApiKeyInvalid, "auth.api_keys"));
            }
        }
        if let (Some(jwt), Some(verifier)) = (&creds.jwt, &auth.jwt) {
            match verifier.verify(jwt) {
                Ok(v) => {
                    principal = principal.or_else(|| {
                        Some(
                            v.subject
                                .map_or_else(|| "jwt".to_owned(), |s| format!("jwt:{s}")),
                        )
                    });
                }
                Err(JwtError::OtherTenant) => {
                    return Err(Refusal::new(Reason::ForeignCredentials, "auth.jwt"));
                }
                Err(e) => failure = failure.or(Some((Reason::of_jwt(e), "auth.jwt"))),
            }
        }
        if let Some((reason, rule)) = failure {
            return Err(Refusal::unauthorized(reason, rule, tenant));
        }
        if principal.is_none() {
            match proof {
                Proof::Header => {
                    return Err(Refusal::new(
                        Reason::TenantUnproven,
                        "listener.identify (header)",
                    ));
                }
                Proof::Jwt => {
                    return Err(Refusal::unauthorized(
                        Reason::CredentialsMissing,
                        "listener.identify (jwt)",
                        tenant,
                    ));
                }
                Proof::None if auth.required => {
                    return Err(Refusal::unauthorized(
                        Reason::CredentialsMissing,
                        "auth.required",
                        tenant,
                    ));
                }
                Proof::None => {}
            }
        }
        Ok(principal)
    }

    /// Whether `jwt` is a valid JWT of a tenant other than `tenant`: its
    /// claim names that tenant and it verifies with that tenant's keys.
    fn jwt_of_another_tenant(&self, tenant: &str, jwt: &UnverifiedJwt<'_>) -> bool {
        let tenants = self.tenants.load();
        self.jwt_claims.load().iter().any(|claim| {
            jwt.claim(claim)
                .filter(|&named| named != tenant)
                .and_then(|named| tenants.get(named))
                .is_some_and(|other| {
                    let s = other.settings.load();
                    s.auth
                        .jwt
                        .as_ref()
                        .is_some_and(|v| v.claim() == claim && v.verify(jwt).is_ok())
                })
        })
    }
}

/// A tenant's credentials. Key files are read again on every update (a
/// reload is how rotated keys are taken in). When they cannot be read, the
/// previous keys stay if the tenant's JWT settings did not change, like a
/// certificate that fails to load; a new or changed configuration then
/// refuses every JWT. The error is returned beside.
fn tenant_auth(t: &Tenant, prev: &TenantAuth) -> (Arc<TenantAuth>, Option<String>) {
    let mut error = None;
    let jwt = t
        .auth
        .jwt
        .as_ref()
        .map(|j| match JwtVerifier::load(&t.name, j) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                error = Some(format!("tenant {:?} auth.jwt: {e}", t.name));
                match &prev.jwt {
                    Some(old) if prev.source.jwt.as_ref() == Some(j) => Arc::clone(old),
                    _ => Arc::new(JwtVerifier::refusing(&t.name, j)),
                }
            }
        });
    let auth = TenantAuth {
        api_keys: ApiKeys::new(&t.auth.api_keys),
        jwt,
        required: t.auth.required,
        source: t.auth.clone(),
    };
    (Arc::new(auth), error)
}

/// The settings of `t`, carrying keyed tables over and rescaling buckets
/// from `prev`'s rates.
fn settings(
    t: &Tenant,
    prev: &Settings,
    auth: Arc<TenantAuth>,
    bucket: &TokenBucket,
    now: u64,
) -> Settings {
    let l: &RequestLimits = &t.limits.requests;
    let rate = l
        .requests_per_second
        .map(|r| Rate::new(r, l.burst().unwrap_or(r)));
    if let (Some(from), Some(to)) = (&prev.rate, &rate)
        && from != to
    {
        bucket.rescale(from, to, now);
    }
    let keyed = |limit: Option<u64>, prev: &Option<(Rate, Arc<KeyedBuckets>)>| {
        limit.map(|r| {
            let rate = Rate::new(r, r);
            match prev {
                Some((from, table)) => {
                    if *from != rate {
                        table.rescale(from, &rate, now);
                    }
                    (rate, Arc::clone(table))
                }
                None => (rate, Arc::new(KeyedBuckets::new())),
            }
        })
    };
    Settings {
        tier: t.tier,
        rate,
        per_ip: keyed(l.per_client_ip, &prev.per_ip),
        per_key: keyed(l.per_api_key, &prev.per_key),
        max_connections: l.max_connections,
        max_inflight: l.max_inflight_requests,
        acl: AclRules::new(&t.acl),
        auth,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hex;
    use auth::tests::{now as unix_now, test_keys, token};
    use http::HeaderMap;
    use jsonwebtoken::Algorithm;
    use serde_json::json;
    use std::path::Path;

    /// Two tenants on one plain-HTTP address; `acme_extra` goes into acme's
    /// table (its limits, auth, acl, tier).
    fn config(acme_extra: &str, globex_extra: &str, node_extra: &str) -> Config {
        config_in(
            Path::new("/nonexistent"),
            acme_extra,
            globex_extra,
            node_extra,
        )
    }

    /// [`config`] as a file in `dir` (relative key files are in `dir`).
    fn config_in(dir: &Path, acme_extra: &str, globex_extra: &str, node_extra: &str) -> Config {
        let text = format!(
            r#"[node]
interface = "eth0"
{node_extra}
[[tenant]]
name = "acme"
{acme_extra}
[[tenant.pool]]
name = "web"
backends = [ {{ address = "10.0.1.11", port = 8080 }} ]
[[tenant.l7]]
listen = "203.0.113.20:80"
hosts = ["acme.example"]
routes = [ {{ pool = "web" }} ]

[[tenant]]
name = "globex"
{globex_extra}
[[tenant.pool]]
name = "app"
backends = [ {{ address = "10.0.2.11", port = 8080 }} ]
[[tenant.l7]]
listen = "203.0.113.20:80"
hosts = ["globex.example"]
routes = [ {{ pool = "app" }} ]
"#
        );
        crate::config::parse_in(&text, "lb.toml", dir).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn policy(c: &Config) -> Policy {
        let p = Policy::new();
        assert_eq!(p.update(c), Vec::<String>::new());
        p
    }

    fn ask<'a>(credentials: &'a Credentials<'a>) -> Ask<'a> {
        Ask {
            client: "192.0.2.7".parse().expect("ip"),
            credentials,
            proof: Proof::None,
        }
    }

    fn reason(r: Result<Admission, Refusal>) -> Option<Reason> {
        r.err().map(|e| e.reason)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn acl_longest_prefix_decides() {
        let c = config(
            "[tenant.acl]\nallow = [\"10.0.0.0/8\", \"2001:db8::/32\", \"10.1.2.0/24\"]\ndeny = [\"10.1.0.0/16\", \"10.1.2.0/24\"]",
            "[tenant.acl]\ndeny = [\"192.0.2.0/24\"]",
            "",
        );
        let p = policy(&c);
        let acl = |t: &str, ip: &str| p.check_acl(t, ip.parse().expect("ip")).map_err(|r| r.rule);
        assert_eq!(acl("acme", "10.9.9.9"), Ok(()));
        assert_eq!(acl("acme", "10.1.9.9"), Err("acl.deny[0]".into()));
        // The same prefix in both lists: denied.
        assert_eq!(acl("acme", "10.1.2.3"), Err("acl.deny[1]".into()));
        assert_eq!(acl("acme", "192.0.2.1"), Err("acl.allow".into()));
        assert_eq!(acl("acme", "2001:db8::1"), Ok(()));
        assert_eq!(acl("acme", "::ffff:10.9.9.9"), Ok(()), "IPv4-mapped");
        assert_eq!(acl("globex", "192.0.2.1"), Err("acl.deny[0]".into()));
        assert_eq!(acl("globex", "198.51.100.1"), Ok(()));
        let h = HeaderMap::new();
        let refused = p
            .admit("globex", &ask(&Credentials::of(&h)))
            .expect_err("denied");
        assert_eq!(
            (refused.reason, refused.reason.status()),
            (Reason::AclDenied, StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn tenant_rate_with_quota_headers_and_reload_without_reset() {
        let c = config(
            "[tenant.limits]\nrequests_per_second = 1\nrequests_burst = 10",
            "",
            "",
        );
        let p = policy(&c);
        let h = HeaderMap::new();
        for i in 0..6 {
            let a = p
                .admit("acme", &ask(&Credentials::of(&h)))
                .expect("within the burst");
            assert_eq!(a.quota.map(|q| q.remaining), Some(9 - i));
        }
        // Reload with a bigger burst: the 4 tokens left stay 4.
        let bigger = config(
            "[tenant.limits]\nrequests_per_second = 1\nrequests_burst = 100",
            "",
            "",
        );
        assert!(p.update(&bigger).is_empty());
        for _ in 0..4 {
            p.admit("acme", &ask(&Credentials::of(&h)))
                .expect("the tokens left");
        }
        let refused = p
            .admit("acme", &ask(&Credentials::of(&h)))
            .expect_err("spent");
        assert_eq!(refused.reason, Reason::RateLimit);
        assert_eq!(refused.reason.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.rule, "limits.requests_per_second");
        assert_eq!(refused.retry_after, Some(1));
        let q = refused.quota.expect("quota");
        assert_eq!((q.limit, q.remaining), (100, 0));
        // The neighbour is not limited at all.
        for _ in 0..50 {
            p.admit("globex", &ask(&Credentials::of(&h)))
                .expect("no limits");
        }
        // Removing the limit lets everything through; removing the tenant
        // drops its state.
        assert!(p.update(&config("", "", "")).is_empty());
        p.admit("acme", &ask(&Credentials::of(&h)))
            .expect("no limit now");
        let without = crate::config::parse(
            "[node]\ninterface = \"eth0\"\n[[tenant]]\nname = \"globex\"\n",
            "lb.toml",
        )
        .expect("valid");
        assert!(p.update(&without).is_empty());
        assert!(p.tenant("acme").is_none());
    }

    #[test]
    fn keyed_limits_per_client_and_per_key() {
        let c = config(
            "[tenant.limits]\nrequests_per_second_per_client_ip = 2\nrequests_per_second_per_api_key = 3",
            "",
            "",
        );
        let p = policy(&c);
        let h = HeaderMap::new();
        let none = Credentials::of(&h);
        let from = |ip: &str| Ask {
            client: ip.parse().expect("ip"),
            credentials: &none,
            proof: Proof::None,
        };
        p.admit("acme", &from("192.0.2.1")).expect("1");
        p.admit("acme", &from("192.0.2.1")).expect("2");
        assert_eq!(
            reason(p.admit("acme", &from("192.0.2.1"))),
            Some(Reason::ClientIpRateLimit)
        );
        p.admit("acme", &from("192.0.2.2")).expect("another client");
        // IPv6 clients count per /64.
        p.admit("acme", &from("2001:db8::1")).expect("1");
        p.admit("acme", &from("2001:db8::2")).expect("2");
        assert_eq!(
            reason(p.admit("acme", &from("2001:db8::3"))),
            Some(Reason::ClientIpRateLimit)
        );
        p.admit("acme", &from("2001:db8:0:1::1"))
            .expect("another /64");
        // Per key (anonymous tenants too: the key is just counted).
        let p = policy(&c);
        let key = |k: &str, ip: &str| {
            let h = headers(&[("x-api-key", k)]);
            reason(p.admit(
                "acme",
                &Ask {
                    client: ip.parse().expect("ip"),
                    credentials: &Credentials::of(&h),
                    proof: Proof::None,
                },
            ))
        };
        assert_eq!(key("k1", "192.0.2.1"), None);
        assert_eq!(key("k1", "192.0.2.2"), None);
        assert_eq!(key("k1", "192.0.2.3"), None);
        assert_eq!(key("k1", "192.0.2.4"), Some(Reason::ApiKeyRateLimit));
        assert_eq!(key("k2", "192.0.2.5"), None);
    }

    fn sha(key: &str) -> String {
        hex(&auth::digest(key))
    }

    #[test]
    fn api_keys_authenticate_and_stay_with_their_tenant() {
        let c = config(
            &format!(
                "[tenant.auth]\nrequired = true\napi_keys = [ {{ name = \"ci\", sha256 = \"{}\" }} ]",
                sha("acme-secret")
            ),
            &format!(
                "[tenant.auth]\napi_keys = [ {{ name = \"ops\", sha256 = \"{}\" }} ]",
                sha("globex-secret")
            ),
            "",
        );
        let p = policy(&c);
        let with = |t: &str, h: &[(&str, &str)]| p.admit(t, &ask(&Credentials::of(&headers(h))));
        let ok = with("acme", &[("x-api-key", "acme-secret")]).expect("valid key");
        assert_eq!(ok.principal.as_deref(), Some("api_key:ci"));
        let ok = with("acme", &[("authorization", "Bearer acme-secret")]).expect("bearer");
        assert_eq!(ok.principal.as_deref(), Some("api_key:ci"));
        let missing = with("acme", &[]).expect_err("required");
        assert_eq!(missing.reason, Reason::CredentialsMissing);
        assert_eq!(missing.reason.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.www_authenticate.as_deref(),
            Some("Bearer realm=\"acme\"")
        );
        let wrong = with("acme", &[("x-api-key", "guess")]).expect_err("invalid");
        assert_eq!(wrong.reason, Reason::ApiKeyInvalid);
        assert!(
            wrong
                .www_authenticate
                .is_some_and(|w| w.contains("invalid_token"))
        );
        // Another tenant's key: 403 on both sides.
        let foreign = with("acme", &[("x-api-key", "globex-secret")]).expect_err("foreign");
        assert_eq!(
            (foreign.reason, foreign.reason.status()),
            (Reason::ForeignCredentials, StatusCode::FORBIDDEN)
        );
        assert_eq!(
            reason(with("globex", &[("x-api-key", "acme-secret")])),
            Some(Reason::ForeignCredentials)
        );
        // globex does not require a key, but one it checks must be valid.
        assert_eq!(reason(with("globex", &[])), None);
        assert_eq!(
            reason(with("globex", &[("x-api-key", "guess")])),
            Some(Reason::ApiKeyInvalid)
        );
        // A tenant identified by X-Tenant-ID must prove it.
        let h = headers(&[]);
        let c = Credentials::of(&h);
        let header_only = Ask {
            proof: Proof::Header,
            ..ask(&c)
        };
        assert_eq!(
            reason(p.admit("globex", &header_only)),
            Some(Reason::TenantUnproven)
        );
        let h = headers(&[("x-api-key", "globex-secret")]);
        let c = Credentials::of(&h);
        let proven = Ask {
            proof: Proof::Header,
            ..ask(&c)
        };
        assert!(p.admit("globex", &proven).is_ok());
    }

    #[test]
    fn jwts_of_each_tenant() {
        let dir = std::env::temp_dir().join(format!("lb-policy-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let acme = test_keys();
        let globex = test_keys();
        std::fs::write(dir.join("acme.json"), &acme.jwks).expect("jwks");
        std::fs::write(dir.join("globex.secret"), &globex.secret).expect("secret");
        let c = config_in(
            &dir,
            "[tenant.auth]\njwt = { jwks_file = \"acme.json\", audience = \"api\" }",
            "[tenant.auth]\nrequired = true\njwt = { hs256_secret_file = \"globex.secret\", tenant_claim = \"org\" }",
            "",
        );
        let p = Policy::new();
        assert!(p.update(&c).is_empty());
        let claims = |claim: &str, tenant: &str, exp_in: i64| json!({ claim: tenant, "sub": "bob", "aud": "api", "exp": unix_now() + exp_in });
        let acme_token = token(
            Algorithm::ES256,
            Some("e1"),
            &acme.ec,
            &claims("tenant", "acme", 60),
        );
        let globex_token = token(
            Algorithm::HS256,
            None,
            &globex.hs,
            &claims("org", "globex", 60),
        );
        let bearer = |t: &str| headers(&[("authorization", &format!("Bearer {t}"))]);
        let admit = |tenant: &str, h: &HeaderMap| p.admit(tenant, &ask(&Credentials::of(h)));
        let ok = admit("acme", &bearer(&acme_token)).expect("valid");
        assert_eq!(ok.principal.as_deref(), Some("jwt:bob"));
        assert!(admit("globex", &bearer(&globex_token)).is_ok());
        // Each tenant's token on the other's routes.
        assert_eq!(
            reason(admit("globex", &bearer(&acme_token))),
            Some(Reason::ForeignCredentials)
        );
        assert_eq!(
            reason(admit("acme", &bearer(&globex_token))),
            Some(Reason::ForeignCredentials)
        );
        let expired = token(
            Algorithm::ES256,
            Some("e1"),
            &acme.ec,
            &claims("tenant", "acme", -600),
        );
        let refused = admit("acme", &bearer(&expired)).expect_err("expired");
        assert_eq!(refused.reason, Reason::JwtExpired);
        assert_eq!(refused.rule, "auth.jwt");
        assert!(
            refused
                .www_authenticate
                .is_some_and(|w| w.contains("error_description=\"jwt_expired\""))
        );
        // Signed with globex's keys but naming acme: not acme's, and not a
        // valid globex token either.
        let forged = token(
            Algorithm::HS256,
            None,
            &globex.hs,
            &claims("tenant", "acme", 60),
        );
        assert_eq!(
            reason(admit("acme", &bearer(&forged))),
            Some(Reason::JwtAlgorithm)
        );
        // Identified by its claim: the JWT must verify.
        let h = bearer(&forged);
        let creds = Credentials::of(&h);
        let by_jwt = Ask {
            proof: Proof::Jwt,
            ..ask(&creds)
        };
        assert!(p.admit("acme", &by_jwt).is_err());
        // A broken key file on reload keeps the keys that worked.
        std::fs::write(dir.join("acme.json"), "{").expect("break");
        let errors = p.update(&c);
        assert!(
            errors.len() == 1 && errors[0].contains("acme.json"),
            "{errors:?}"
        );
        assert!(admit("acme", &bearer(&acme_token)).is_ok());
        assert!(check_key_files(&c).is_err_and(|e| e.contains("tenant \"acme\"")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_credential_is_checked_for_another_tenant() {
        let dir = std::env::temp_dir().join(format!("lb-policy-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let acme = test_keys();
        let globex = test_keys();
        std::fs::write(dir.join("acme.json"), &acme.jwks).expect("jwks");
        std::fs::write(dir.join("globex.secret"), &globex.secret).expect("secret");
        let keys = |name: &str, key: &str| {
            format!(
                "api_keys = [ {{ name = \"{name}\", sha256 = \"{}\" }} ]",
                sha(key)
            )
        };
        let c = config_in(
            &dir,
            &format!(
                "[tenant.auth]\n{}\njwt = {{ jwks_file = \"acme.json\" }}",
                keys("ci", "acme-secret")
            ),
            &format!(
                "[tenant.auth]\n{}\njwt = {{ hs256_secret_file = \"globex.secret\", tenant_claim = \"org\" }}",
                keys("ops", "globex-secret")
            ),
            "",
        );
        let p = Policy::new();
        assert!(p.update(&c).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
        let exp = unix_now() + 60;
        let acme_jwt = token(
            Algorithm::ES256,
            Some("e1"),
            &acme.ec,
            &json!({ "tenant": "acme", "sub": "ann", "exp": exp }),
        );
        let globex_jwt = token(
            Algorithm::HS256,
            None,
            &globex.hs,
            &json!({ "org": "globex", "exp": exp }),
        );
        let (acme_bearer, globex_bearer) =
            (format!("Bearer {acme_jwt}"), format!("Bearer {globex_jwt}"));
        let admit = |tenant: &str, key: &str, authorization: &str| {
            let h = headers(&[("x-api-key", key), ("authorization", authorization)]);
            p.admit(tenant, &ask(&Credentials::of(&h)))
                .map(|a| a.principal.unwrap_or_default())
                .map_err(|r| (r.reason, r.rule))
        };
        let foreign = |rule: &str| Err((Reason::ForeignCredentials, rule.to_owned()));
        // Junk first, another tenant's credential second, and the reverse.
        assert_eq!(
            admit("acme", "junk", "Bearer globex-secret"),
            foreign("auth.api_keys")
        );
        assert_eq!(
            admit("acme", "globex-secret", "Bearer junk"),
            foreign("auth.api_keys")
        );
        assert_eq!(admit("globex", "junk", &acme_bearer), foreign("auth.jwt"));
        // The tenant's own valid key does not excuse another tenant's
        // credential beside it.
        assert_eq!(
            admit("acme", "acme-secret", &globex_bearer),
            foreign("auth.jwt")
        );
        assert_eq!(
            admit("acme", "acme-secret", "Bearer globex-secret"),
            foreign("auth.api_keys")
        );
        // Nothing foreign: the tenant checks X-API-Key (an unknown bearer
        // key beside it may be the backend's) and its JWT.
        assert_eq!(
            admit("acme", "acme-secret", "Bearer junk"),
            Ok("api_key:ci".into())
        );
        assert_eq!(
            admit("acme", "junk", "Bearer acme-secret"),
            Err((Reason::ApiKeyInvalid, "auth.api_keys".into()))
        );
        // One decode of the token per request, whatever the tenants whose
        // claims are looked up and keys tried.
        let decoded = || auth::DECODED.with(std::cell::Cell::get);
        let before = decoded();
        assert_eq!(
            admit("acme", "acme-secret", &acme_bearer),
            Ok("api_key:ci".into())
        );
        assert_eq!(decoded(), before + 1);
        assert_eq!(
            admit("globex", "globex-secret", &acme_bearer),
            foreign("auth.jwt")
        );
        assert_eq!(decoded(), before + 2);
    }

    #[test]
    fn tiers_are_shed_in_order_and_concurrency_is_bounded() {
        assert_eq!(shed_threshold(Tier::Free, 10), 5);
        assert_eq!(shed_threshold(Tier::Standard, 10), 8);
        assert_eq!(shed_threshold(Tier::Premium, 10), 10);
        assert_eq!(shed_threshold(Tier::Free, 1), 1);
        let c = config(
            "tier = \"free\"",
            "tier = \"premium\"\n[tenant.limits]\nmax_inflight_requests = 6",
            "max_inflight_requests = 10",
        );
        let p = policy(&c);
        let h = HeaderMap::new();
        let free: Vec<Admission> = (0..5)
            .map(|_| {
                p.admit("acme", &ask(&Credentials::of(&h)))
                    .expect("free below 50%")
            })
            .collect();
        let shed = p
            .admit("acme", &ask(&Credentials::of(&h)))
            .expect_err("free at 50%");
        assert_eq!(
            (shed.reason, shed.reason.status(), shed.retry_after),
            (Reason::Shed, StatusCode::SERVICE_UNAVAILABLE, Some(1))
        );
        let premium: Vec<Admission> = (0..5)
            .map(|_| {
                p.admit("globex", &ask(&Credentials::of(&h)))
                    .expect("premium up to 100%")
            })
            .collect();
        assert_eq!(p.inflight(), 10);
        assert_eq!(
            reason(p.admit("globex", &ask(&Credentials::of(&h)))),
            Some(Reason::Shed),
            "at the node's limit even premium waits"
        );
        drop(free);
        assert_eq!(p.inflight(), 5);
        let more = vec![
            p.admit("globex", &ask(&Credentials::of(&h)))
                .expect("6th of globex"),
        ];
        assert_eq!(
            reason(p.admit("globex", &ask(&Credentials::of(&h)))),
            Some(Reason::InflightLimit),
            "globex's own max_inflight_requests"
        );
        drop((premium, more));
        assert_eq!(p.inflight(), 0);
        assert_eq!(p.tenant("globex").expect("globex").inflight(), 0);
    }

    #[test]
    fn connections_are_counted_per_tenant() {
        let c = config("[tenant.limits]\nmax_connections = 2", "", "");
        let p = policy(&c);
        let a = p.connect("acme").expect("1");
        let b = p.connect("acme").expect("2");
        let refused = p.connect("acme").expect_err("3");
        assert_eq!(refused.reason, Reason::ConnectionLimit);
        let others: Vec<_> = (0..10)
            .map(|_| p.connect("globex").expect("no limit"))
            .collect();
        drop(a);
        let c3 = p.connect("acme").expect("a place freed");
        assert_eq!(p.tenant("acme").expect("acme").connections(), 2);
        drop((b, c3, others));
        assert_eq!(p.tenant("acme").expect("acme").connections(), 0);
        assert!(p.connect("nobody").is_ok());
    }

    #[test]
    fn reasons_have_codes_and_statuses() {
        let codes: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(matches!(r.status().as_u16(), 401 | 403 | 429 | 503));
        }
    }
}
