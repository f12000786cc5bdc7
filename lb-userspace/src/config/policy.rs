//! The request-policy part of `lb.toml`, enforced by `lbd`'s L7 tier:
//! a tenant's `tier`, the request keys of `[tenant.limits]`, its
//! credentials (`[tenant.auth]`), and the node's shedding threshold
//! (`node.max_inflight_requests`).
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `tenant.tier` | `standard` | `premium`, `standard` or `free`: who is shed first when the node is overloaded |
//! | `tenant.limits.requests_per_second` | none | the tenant's request rate (token bucket), 1 to 10^9 |
//! | `tenant.limits.requests_burst` | the rate | the bucket's size (1 to 10^9): requests admitted at once after an idle second |
//! | `tenant.limits.requests_per_second_per_client_ip` | none | per client address (IPv6: per /64), burst = rate, 1 to 10^6 |
//! | `tenant.limits.requests_per_second_per_api_key` | none | per presented credential (API key or bearer token), burst = rate, 1 to 10^6 |
//! | `tenant.limits.max_connections` | none | client connections open at once, 1 to 10^8 |
//! | `tenant.limits.max_inflight_requests` | none | requests being proxied at once, 1 to 10^8 |
//! | `tenant.auth.api_keys` | none | `[ { name, sha256 } ]`: SHA-256 (hex) of each key, never the key |
//! | `tenant.auth.jwt` | none | `{ jwks_file, hs256_secret_file, issuer, audience, tenant_claim, leeway }` (leeway at most 5m) |
//! | `tenant.auth.required` | `false` | every request must carry a valid credential of the tenant |
//! | `node.max_inflight_requests` | none | the node's in-flight requests at which tiers are shed, 1 to 10^8 |
//!
//! Key files are paths only here (relative to the configuration file's
//! directory); the L7 tier reads them ([`crate::l7::admission`]), and `lbd
//! --check` and every reload read them before anything is applied.

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize, Serializer};

use super::{
    ConfigError, Ctx, FieldPath, Tenant, duration::serialize_duration, validate::check_name,
};

// ---- Defaults and limits (the README lists these) ----

/// Default `auth.jwt.tenant_claim`.
pub const DEFAULT_TENANT_CLAIM: &str = "tenant";
/// Default `auth.jwt.leeway`: clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
/// Longest `auth.jwt.leeway`.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_mins(5);
/// Highest per-client-IP or per-API-key rate: their buckets count in
/// microseconds.
pub const MAX_KEYED_RATE: u64 = 1_000_000;
/// Highest tenant request rate and burst: the tenant bucket counts in
/// nanoseconds.
pub const MAX_REQUEST_RATE: u64 = 1_000_000_000;
/// Highest `tenant.limits.max_connections`: far more than one process can
/// hold open (each connection is a file descriptor).
pub const MAX_CONNECTIONS: u64 = 100_000_000;
/// Highest `tenant.limits.max_inflight_requests` and
/// `node.max_inflight_requests`.
pub const MAX_INFLIGHT_REQUESTS: u64 = 100_000_000;

/// The request keys of `[tenant.limits]` (the others are XDP's).
pub const REQUEST_LIMIT_KEYS: [&str; 6] = [
    "requests_per_second",
    "requests_burst",
    "requests_per_second_per_client_ip",
    "requests_per_second_per_api_key",
    "max_connections",
    "max_inflight_requests",
];

// ---- Public types ----

/// `tenant.tier`: the order in which an overloaded node sheds requests
/// (free first, premium last).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Shed last: only when the node is at `max_inflight_requests`.
    Premium,
    /// Shed from 80 % of `max_inflight_requests`.
    #[default]
    Standard,
    /// Shed from 50 % of `max_inflight_requests`.
    Free,
}

impl Tier {
    /// The value as written in `lb.toml`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Premium => "premium",
            Self::Standard => "standard",
            Self::Free => "free",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request keys of `[tenant.limits]`, typed (absent = unlimited).
/// Serialized under the configuration's key names, absent keys left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestLimits {
    /// Requests per second of the whole tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u64>,
    /// Size of the tenant's bucket (default: one second's worth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_burst: Option<u64>,
    /// Requests per second of one client address (IPv6: one /64).
    #[serde(
        rename = "requests_per_second_per_client_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_client_ip: Option<u64>,
    /// Requests per second of one presented credential.
    #[serde(
        rename = "requests_per_second_per_api_key",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_api_key: Option<u64>,
    /// Client connections of the tenant open at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    /// Requests of the tenant being proxied at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight_requests: Option<u64>,
}

impl RequestLimits {
    /// The tenant bucket's size: `requests_burst`, else the rate.
    #[must_use]
    pub fn burst(&self) -> Option<u64> {
        self.requests_per_second
            .map(|rate| self.requests_burst.unwrap_or(rate))
    }
}

/// `[tenant.auth]`: the credentials that authenticate a tenant's requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Auth {
    /// Keys sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    pub api_keys: Vec<ApiKey>,
    /// JSON Web Tokens sent as `Authorization: Bearer JWT`.
    pub jwt: Option<JwtAuth>,
    /// Every request must authenticate (401 otherwise).
    pub required: bool,
}

impl Auth {
    /// Whether the tenant has any credential at all.
    #[must_use]
    pub fn is_configured(&self) -> bool {
        !self.api_keys.is_empty() || self.jwt.is_some()
    }
}

/// One of `auth.api_keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    /// Shown in the access log and errors instead of the key.
    pub name: String,
    /// SHA-256 of the key.
    #[serde(serialize_with = "serialize_hex")]
    pub sha256: [u8; 32],
}

/// `auth.jwt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JwtAuth {
    /// A JWKS (`{"keys": [...]}`) with RSA (RS256), EC P-256 (ES256) or
    /// `oct` (HS256) keys.
    pub jwks_file: Option<PathBuf>,
    /// A file holding the HS256 secret (one trailing newline is ignored).
    pub hs256_secret_file: Option<PathBuf>,
    /// Required value of `iss`.
    pub issuer: Option<String>,
    /// Required value (or member) of `aud`.
    pub audience: Option<String>,
    /// The claim that must name the tenant.
    pub tenant_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in whole seconds.
    #[serde(serialize_with = "serialize_duration")]
    pub leeway: Duration,
}

fn serialize_hex<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(bytes))
}

/// Lower-case hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// 64 hex digits -> 32 bytes.
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

// ---- What serde decodes ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    api_keys: Vec<RawApiKey>,
    jwt: Option<RawJwt>,
    required: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    name: String,
    sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    jwks_file: Option<PathBuf>,
    hs256_secret_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: Option<String>,
    leeway: Option<String>,
}

// ---- Validation ----

impl Ctx<'_> {
    /// The request keys of a tenant's `[tenant.limits]` (already checked
    /// to be known names with values of at least 1), with their bounds.
    pub(super) fn request_limits(
        &self,
        limits: &BTreeMap<String, u64>,
        path: &FieldPath,
    ) -> Result<RequestLimits, ConfigError> {
        let get = |key: &str| limits.get(key).copied();
        let out = RequestLimits {
            requests_per_second: get("requests_per_second"),
            requests_burst: get("requests_burst"),
            per_client_ip: get("requests_per_second_per_client_ip"),
            per_api_key: get("requests_per_second_per_api_key"),
            max_connections: get("max_connections"),
            max_inflight_requests: get("max_inflight_requests"),
        };
        if out.requests_burst.is_some() && out.requests_per_second.is_none() {
            return Err(self.error(
                &path.key("requests_burst"),
                "requests_burst needs requests_per_second (the rate that refills the bucket)",
            ));
        }
        for (key, value, max) in [
            (
                "requests_per_second",
                out.requests_per_second,
                MAX_REQUEST_RATE,
            ),
            ("requests_burst", out.requests_burst, MAX_REQUEST_RATE),
            (
                "requests_per_second_per_client_ip",
                out.per_client_ip,
                MAX_KEYED_RATE,
            ),
            (
                "requests_per_second_per_api_key",
                out.per_api_key,
                MAX_KEYED_RATE,
            ),
            ("max_connections", out.max_connections, MAX_CONNECTIONS),
            (
                "max_inflight_requests",
                out.max_inflight_requests,
                MAX_INFLIGHT_REQUESTS,
            ),
        ] {
            if value.is_some_and(|v| v > max) {
                return Err(self.error(&path.key(key), format!("{key} must be at most {max}")));
            }
        }
        Ok(out)
    }

    /// A tenant's `[tenant.auth]`.
    pub(super) fn auth(&self, raw: Option<RawAuth>, path: &FieldPath) -> Result<Auth, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Auth::default());
        };
        let mut api_keys: Vec<ApiKey> = Vec::with_capacity(raw.api_keys.len());
        for (i, k) in raw.api_keys.into_iter().enumerate() {
            let kpath = path.key("api_keys").index(i, Some(&k.name));
            check_name(&k.name, "API key").map_err(|m| self.error(&kpath.key("name"), m))?;
            if let Some(first) = api_keys.iter().position(|o| o.name == k.name) {
                return Err(self.error(
                    &kpath.key("name"),
                    format!(
                        "API key name {:?} is already used by api_keys[{first}]",
                        k.name
                    ),
                ));
            }
            let Some(sha256) = parse_sha256(&k.sha256) else {
                return Err(self.error(
                    &kpath.key("sha256"),
                    "sha256 must be the 64 hex digits of the key's SHA-256 (e.g. the output of \
                     `printf %s KEY | sha256sum`), never the key itself",
                ));
            };
            if let Some(first) = api_keys.iter().position(|o| o.sha256 == sha256) {
                return Err(self.error(
                    &kpath.key("sha256"),
                    format!("the same key is already listed as api_keys[{first}]"),
                ));
            }
            api_keys.push(ApiKey {
                name: k.name,
                sha256,
            });
        }
        let jwt = match raw.jwt {
            None => None,
            Some(j) => Some(self.jwt(j, &path.key("jwt"))?),
        };
        let required = raw.required.unwrap_or(false);
        if required && api_keys.is_empty() && jwt.is_none() {
            return Err(self.error(
                &path.key("required"),
                "required = true needs api_keys or jwt: with no credential nothing could pass",
            ));
        }
        Ok(Auth {
            api_keys,
            jwt,
            required,
        })
    }

    fn jwt(&self, raw: RawJwt, path: &FieldPath) -> Result<JwtAuth, ConfigError> {
        if raw.jwks_file.is_none() && raw.hs256_secret_file.is_none() {
            return Err(self.error(
                path,
                "jwt needs jwks_file (RS256, ES256 or HS256 keys) or hs256_secret_file",
            ));
        }
        for (key, value) in [
            ("jwks_file", &raw.jwks_file),
            ("hs256_secret_file", &raw.hs256_secret_file),
        ] {
            if value.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(self.error(&path.key(key), format!("{key} is empty")));
            }
        }
        for (key, value) in [
            ("issuer", &raw.issuer),
            ("audience", &raw.audience),
            ("tenant_claim", &raw.tenant_claim),
        ] {
            if value.as_ref().is_some_and(String::is_empty) {
                return Err(self.error(
                    &path.key(key),
                    format!("{key} is empty (leave it out for the default)"),
                ));
            }
        }
        let leeway = match raw.leeway {
            None => DEFAULT_JWT_LEEWAY,
            Some(text) => {
                let d = self.duration_in(
                    &path.key("leeway"),
                    "leeway",
                    &text,
                    &(Duration::ZERO..=MAX_JWT_LEEWAY),
                )?;
                // Whole seconds (JWT times are seconds), rounded up.
                Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
            }
        };
        Ok(JwtAuth {
            jwks_file: raw.jwks_file,
            hs256_secret_file: raw.hs256_secret_file,
            issuer: raw.issuer,
            audience: raw.audience,
            tenant_claim: raw
                .tenant_claim
                .unwrap_or_else(|| DEFAULT_TENANT_CLAIM.to_owned()),
            leeway,
        })
    }

    /// A key identifies one tenant: the same digest in two tenants is
    /// refused.
    pub(super) fn unique_api_keys(&self, tenants: &[Tenant]) -> Result<(), ConfigError> {
        let mut seen: BTreeMap<[u8; 32], (usize, usize)> = BTreeMap::new();
        for (ti, t) in tenants.iter().enumerate() {
            for (ki, k) in t.auth.api_keys.iter().enumerate() {
                if let Some(&(t0, k0)) = seen.get(&k.sha256) {
                    let here = FieldPath::default()
                        .key("tenant")
                        .index(ti, Some(&t.name))
                        .key("auth")
                        .key("api_keys")
                        .index(ki, Some(&k.name))
                        .key("sha256");
                    let there = FieldPath::default()
                        .key("tenant")
                        .index(t0, None)
                        .key("auth")
                        .key("api_keys")
                        .index(k0, None);
                    return Err(self.error(
                        &here,
                        format!(
                            "this key is also tenant {:?}'s {}; a key identifies exactly one tenant",
                            tenants[t0].name,
                            self.place(&format!("api_keys[{k0}]"), &there)
                        ),
                    ));
                }
                seen.insert(k.sha256, (ti, ki));
            }
        }
        Ok(())
    }

    /// `node.max_inflight_requests`.
    pub(super) fn max_inflight(
        &self,
        value: Option<u64>,
        path: &FieldPath,
    ) -> Result<Option<u64>, ConfigError> {
        let at = path.key("max_inflight_requests");
        match value {
            Some(0) => Err(self.error(
                &at,
                "max_inflight_requests must be at least 1 (leave it out for none)",
            )),
            Some(n) if n > MAX_INFLIGHT_REQUESTS => Err(self.error(
                &at,
                format!("max_inflight_requests must be at most {MAX_INFLIGHT_REQUESTS}"),
            )),
            _ => Ok(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Identify, parse};

    const KEY_A: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    const KEY_B: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

    fn config(acme_extra: &str, globex_extra: &str, node_extra: &str) -> String {
        format!(
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
        )
    }

    fn err(text: &str) -> ConfigError {
        match parse(text, "lb.toml") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn everything_parses() {
        let acme = format!(
            r#"tier = "premium"
[tenant.limits]
requests_per_second = 100
requests_burst = 250
requests_per_second_per_client_ip = 10
requests_per_second_per_api_key = 5
max_connections = 1000
max_inflight_requests = 50
[tenant.auth]
required = true
api_keys = [ {{ name = "ci", sha256 = "{KEY_A}" }} ]
jwt = {{ jwks_file = "keys.json", hs256_secret_file = "secret", issuer = "https://id.example", audience = "api", tenant_claim = "org", leeway = "1500ms" }}
"#
        );
        let c = parse(&config(&acme, "", "max_inflight_requests = 200"), "lb.toml").expect("valid");
        assert_eq!(c.node.max_inflight_requests, Some(200));
        let t = c.tenant("acme").expect("acme");
        assert_eq!(t.tier, Tier::Premium);
        assert_eq!(
            t.limits.requests,
            RequestLimits {
                requests_per_second: Some(100),
                requests_burst: Some(250),
                per_client_ip: Some(10),
                per_api_key: Some(5),
                max_connections: Some(1000),
                max_inflight_requests: Some(50),
            }
        );
        assert_eq!(t.limits.requests.burst(), Some(250));
        assert!(t.auth.required);
        assert_eq!(t.auth.api_keys[0].name, "ci");
        assert_eq!(hex(&t.auth.api_keys[0].sha256), KEY_A);
        let jwt = t.auth.jwt.as_ref().expect("jwt");
        assert_eq!(jwt.tenant_claim, "org");
        assert_eq!(jwt.leeway, Duration::from_secs(2));
        let g = c.tenant("globex").expect("globex");
        assert_eq!(g.tier, Tier::Standard);
        assert_eq!(g.auth, Auth::default());
        assert_eq!(g.limits.requests.burst(), None);
        // The digest, never a key, is what the config serialises.
        let json = serde_json::to_string(&t.auth).expect("json");
        assert!(json.contains(KEY_A), "{json}");
    }

    #[test]
    fn rules_name_the_field() {
        for (acme, globex, node, field, fragment) in [
            (
                "tier = \"gold\"",
                "",
                "",
                "tenant[0] (\"acme\").tier",
                "unknown variant",
            ),
            (
                "[tenant.limits]\nrequests_burst = 5",
                "",
                "",
                "tenant[0] (\"acme\").limits.requests_burst",
                "needs requests_per_second",
            ),
            (
                "[tenant.limits]\nrequests_per_second_per_client_ip = 2000000",
                "",
                "",
                "tenant[0] (\"acme\").limits.requests_per_second_per_client_ip",
                "at most 1000000",
            ),
            (
                "[tenant.limits]\nmax_connections = 0",
                "",
                "",
                "tenant[0] (\"acme\").limits.max_connections",
                "at least 1",
            ),
            (
                "[tenant.auth]\napi_keys = [ { name = \"ci\", sha256 = \"secret\" } ]",
                "",
                "",
                "tenant[0] (\"acme\").auth.api_keys[0] (\"ci\").sha256",
                "64 hex digits",
            ),
            (
                &format!(
                    "[tenant.auth]\napi_keys = [ {{ name = \"ci\", sha256 = \"{KEY_A}\" }}, {{ name = \"ci\", sha256 = \"{KEY_B}\" }} ]"
                ),
                "",
                "",
                "tenant[0] (\"acme\").auth.api_keys[1] (\"ci\").name",
                "already used",
            ),
            (
                &format!("[tenant.auth]\napi_keys = [ {{ name = \"ci\", sha256 = \"{KEY_A}\" }} ]"),
                &format!(
                    "[tenant.auth]\napi_keys = [ {{ name = \"deploy\", sha256 = \"{}\" }} ]",
                    KEY_A.to_uppercase()
                ),
                "",
                "tenant[1] (\"globex\").auth.api_keys[0] (\"deploy\").sha256",
                "tenant \"acme\"",
            ),
            (
                "[tenant.auth]\nrequired = true",
                "",
                "",
                "tenant[0] (\"acme\").auth.required",
                "needs api_keys or jwt",
            ),
            (
                "[tenant.auth]\njwt = { issuer = \"x\" }",
                "",
                "",
                "tenant[0] (\"acme\").auth.jwt",
                "needs jwks_file",
            ),
            (
                "[tenant.auth]\njwt = { jwks_file = \"k.json\", leeway = \"10m\" }",
                "",
                "",
                "tenant[0] (\"acme\").auth.jwt.leeway",
                "at most 5m",
            ),
            (
                "[tenant.auth]\njwt = { jwks_file = \"k.json\", tenant_claim = \"\" }",
                "",
                "",
                "tenant[0] (\"acme\").auth.jwt.tenant_claim",
                "is empty",
            ),
            (
                "",
                "",
                "max_inflight_requests = 0",
                "node.max_inflight_requests",
                "at least 1",
            ),
        ] {
            let e = err(&config(acme, globex, node));
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(e.message().contains(fragment), "{fragment:?} not in {e}");
            assert!(e.line().is_some(), "no line in {e}");
        }
    }

    #[test]
    fn header_and_jwt_identification_need_credentials() {
        let listener = |identify: &str| {
            format!("[[listener]]\naddress = \"203.0.113.20:80\"\nidentify = {identify}\n")
        };
        let e = err(&(config("", "", "") + &listener("[\"host\", \"header\"]")));
        assert!(e.message().contains("[tenant.auth]"), "{e}");
        let e = err(&(config("", "", "") + &listener("[\"jwt\"]")));
        assert!(e.message().contains("auth.jwt"), "{e}");
        let auth = "[tenant.auth]\njwt = { jwks_file = \"k.json\" }";
        let c = parse(
            &(config(auth, "", "") + &listener("[\"host\", \"header\", \"jwt\"]")),
            "lb.toml",
        )
        .expect("valid");
        assert_eq!(
            c.listeners[0].identify,
            [Identify::Host, Identify::Header, Identify::Jwt]
        );
    }

    #[test]
    fn sha256_hex() {
        assert_eq!(parse_sha256(KEY_A).map(|d| hex(&d)), Some(KEY_A.to_owned()));
        assert!(parse_sha256(&KEY_A[1..]).is_none());
        assert!(parse_sha256(&KEY_A.replace('2', "g")).is_none());
        assert!(parse_sha256(&"é".repeat(32)).is_none());
    }
}
