//! Credentials: which ones a request carries, API keys compared as SHA-256
//! digests in constant time, and JWTs verified against a tenant's keys.
//!
//! A request's credentials come from `X-API-Key: KEY` and `Authorization:
//! Bearer VALUE`; a bearer value shaped like a JWT (three base64url parts,
//! the first starting `eyJ`) is a JWT, anything else an API key. A request
//! with two of either header is refused before identification (400,
//! [`duplicated`]), and every credential it carries is looked at, so a
//! junk first header cannot hide another tenant's credential in the
//! second. Keys are never stored or logged: the configuration holds their
//! SHA-256, and a presented key is hashed and compared with every digest of
//! the tenant (`subtle`, no early exit). A JWT's header and claims are
//! decoded once per request ([`UnverifiedJwt`]).
//!
//! JWTs: HS256, RS256 and ES256 only. The header's `alg` must be one of
//! those *and* the algorithm of the key that verifies it (an RS256 key is
//! never used as an HMAC secret, `none` is refused); `kid` picks among
//! several keys. `exp` is required; `nbf`, `iss` (when configured) and
//! `aud` (when configured) are checked with the configured leeway; and the
//! tenant claim must name the tenant.

use std::{cell::OnceCell, path::Path, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{HeaderMap, header::AUTHORIZATION};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

use crate::config::JwtAuth;

/// `X-API-Key`.
pub(crate) const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
/// Longest JWT looked at: bigger ones are refused before any parsing.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Shortest HS256 secret (RFC 7518 §3.2: at least the hash's size).
pub(crate) const MIN_HS256_SECRET: usize = 32;
/// Keys tried for one token (when `kid` does not single one out).
const MAX_KEYS_TRIED: usize = 4;

/// The credentials a request carries. Every one of them is checked for
/// belonging to another tenant; the tenant then checks its API key (the
/// `X-API-Key`, else a bearer key) and its JWT.
#[derive(Debug, Default)]
pub(crate) struct Credentials<'a> {
    /// The value of `X-API-Key`.
    pub header_key: Option<&'a str>,
    /// A bearer value that is not shaped like a JWT: an API key.
    pub bearer_key: Option<&'a str>,
    /// A bearer value shaped like a JWT.
    pub jwt: Option<UnverifiedJwt<'a>>,
}

impl<'a> Credentials<'a> {
    /// The credentials of `headers` (the first `X-API-Key` and
    /// `Authorization`: the proxy refuses requests with two of either).
    #[must_use]
    pub(crate) fn of(headers: &'a HeaderMap) -> Self {
        let (jwt, bearer_key) = match bearer(headers) {
            Some(b) if looks_like_jwt(b) => (Some(UnverifiedJwt::new(b)), None),
            other => (None, other),
        };
        let header_key = headers
            .get(X_API_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty());
        Self {
            header_key,
            bearer_key,
            jwt,
        }
    }

    #[cfg(test)]
    /// Whether there is anything to check.
    #[must_use]
    pub(crate) fn is_empty(&self) -> bool {
        self.header_key.is_none() && self.bearer_key.is_none() && self.jwt.is_none()
    }

    /// The API key the tenant checks: `X-API-Key`, else a bearer key.
    #[must_use]
    pub(crate) fn api_key(&self) -> Option<&'a str> {
        self.header_key.or(self.bearer_key)
    }

    /// The credential a per-key rate limit counts: the API key, else the
    /// token.
    #[must_use]
    pub(crate) fn limit_key(&self) -> Option<&'a str> {
        self.api_key()
            .or_else(|| self.jwt.as_ref().map(UnverifiedJwt::token))
    }
}

/// Whether `headers` carry `X-API-Key` or `Authorization` more than once:
/// such a request is refused (400) rather than judged on one of them.
#[must_use]
pub(crate) fn duplicated(headers: &HeaderMap) -> bool {
    [X_API_KEY, AUTHORIZATION]
        .iter()
        .any(|name| headers.get_all(name).iter().nth(1).is_some())
}

/// The value of `Authorization: Bearer VALUE` (scheme case-insensitive).
#[must_use]
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Three non-empty base64url parts, a JSON object first.
#[must_use]
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let shaped = (0..3).all(|_| {
        parts.next().is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    });
    shaped && parts.next().is_none() && token.starts_with("eyJ")
}

/// A presented JWT, not verified. Its header and claims are decoded on
/// first use and at most once, however many tenants' claims identification
/// and the policy look up in it; nothing read here is trusted, it only
/// chooses the keys that verify the token.
#[derive(Debug)]
pub struct UnverifiedJwt<'a> {
    token: &'a str,
    decoded: OnceCell<Option<Decoded>>,
}

/// The JSON objects of a token's first two parts.
#[derive(Debug)]
struct Decoded {
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

#[cfg(test)]
thread_local! {
    /// Tokens decoded by this thread (tests count them).
    pub(crate) static DECODED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<'a> UnverifiedJwt<'a> {
    #[must_use]
    pub fn new(token: &'a str) -> Self {
        Self {
            token,
            decoded: OnceCell::new(),
        }
    }

    /// The token as presented.
    #[must_use]
    pub fn token(&self) -> &'a str {
        self.token
    }

    /// Its header and claims, or `None` when it is not a well-formed token.
    fn decoded(&self) -> Option<&Decoded> {
        self.decoded
            .get_or_init(|| {
                #[cfg(test)]
                DECODED.with(|n| n.set(n.get() + 1));
                Some(Decoded {
                    header: part(self.token, 0)?,
                    claims: part(self.token, 1)?,
                })
            })
            .as_ref()
    }

    /// A string claim (for choosing which tenant's keys to verify the
    /// token with, never for trusting it).
    #[must_use]
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.decoded()?.claims.get(name)?.as_str()
    }
}

/// One base64url JSON object of a token (0 = header, 1 = claims), without
/// verifying anything.
fn part(token: &str, index: usize) -> Option<Map<String, Value>> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let text = token.split('.').nth(index)?;
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// SHA-256 of a presented key.
#[must_use]
pub(crate) fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A tenant's API keys: (digest, name).
#[derive(Debug, Clone, Default)]
pub(crate) struct ApiKeys(Vec<([u8; 32], String)>);

impl ApiKeys {
    #[must_use]
    pub(crate) fn new(keys: &[crate::config::ApiKey]) -> Self {
        Self(keys.iter().map(|k| (k.sha256, k.name.clone())).collect())
    }

    #[must_use]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the key whose digest is `digest`. Every digest is
    /// compared in full whatever matches, so the time taken says nothing
    /// about which key (or how much of one) matched.
    #[must_use]
    pub(crate) fn find(&self, digest: &[u8; 32]) -> Option<&str> {
        let mut found = u32::MAX;
        for (i, (d, _)) in self.0.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&i, d.ct_eq(digest));
        }
        self.0
            .get(usize::try_from(found).ok()?)
            .map(|(_, n)| n.as_str())
    }
}

/// Why a JWT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtError {
    /// Not a well-formed token.
    Malformed,
    /// `alg` is not HS256, RS256 or ES256, or not the algorithm of any of
    /// the tenant's keys.
    Algorithm,
    /// No key of the tenant verifies the signature.
    Signature,
    /// Past `exp` (plus leeway).
    Expired,
    /// Before `nbf` (minus leeway).
    NotYetValid,
    /// `aud` is not the configured audience.
    Audience,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `exp`, a configured `iss`/`aud`, or the tenant claim is missing.
    MissingClaim,
    /// A valid token of the tenant's issuer whose tenant claim names
    /// another tenant.
    OtherTenant,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// Its `sub`, for the access log.
    pub subject: Option<String>,
}

/// One verification key.
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    decoding: DecodingKey,
}

/// A tenant's JWT keys and checks.
pub(crate) struct JwtVerifier {
    tenant: String,
    claim: String,
    keys: Vec<VerifyKey>,
    /// The checks for each algorithm (HS256, RS256, ES256).
    validations: [Validation; 3],
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("tenant", &self.tenant)
            .field("claim", &self.claim)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

const ALGORITHMS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];

fn alg_of(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

impl JwtVerifier {
    /// Reads the key files of `config` (their paths resolved when the
    /// configuration was loaded).
    ///
    /// # Errors
    /// A message naming the file and what is wrong with it.
    pub(crate) fn load(tenant: &str, config: &JwtAuth) -> Result<Self, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let jwks = match &config.jwks_file {
            Some(p) => Some(
                String::from_utf8(read(p)?)
                    .map_err(|_| format!("{}: not UTF-8 text", p.display()))?,
            ),
            None => None,
        };
        let secret = match &config.hs256_secret_file {
            Some(p) => Some(read(p)?),
            None => None,
        };
        Self::new(tenant, config, jwks.as_deref(), secret.as_deref()).map_err(|e| {
            let file = match (&config.jwks_file, &config.hs256_secret_file) {
                (Some(j), _) if e.starts_with("JWKS") => j.display().to_string(),
                (_, Some(s)) => s.display().to_string(),
                (Some(j), None) => j.display().to_string(),
                (None, None) => String::new(),
            };
            format!("{file}: {e}")
        })
    }

    /// A verifier from key material: a JWKS document and an HS256 secret
    /// (one trailing newline is ignored).
    ///
    /// # Errors
    /// When the JWKS is not valid, holds no usable key, or a key is unfit.
    pub(crate) fn new(
        tenant: &str,
        config: &JwtAuth,
        jwks: Option<&str>,
        secret: Option<&[u8]>,
    ) -> Result<Self, String> {
        let mut keys = Vec::new();
        if let Some(text) = jwks {
            keys.extend(parse_jwks(text)?);
        }
        if let Some(secret) = secret {
            let secret = secret
                .strip_suffix(b"\n")
                .map_or(secret, |s| s.strip_suffix(b"\r").unwrap_or(s));
            if secret.len() < MIN_HS256_SECRET {
                return Err(format!(
                    "the HS256 secret has {} bytes; it needs at least {MIN_HS256_SECRET}",
                    secret.len()
                ));
            }
            keys.push(VerifyKey {
                kid: None,
                alg: Algorithm::HS256,
                decoding: DecodingKey::from_secret(secret),
            });
        }
        let leeway = config.leeway.as_secs();
        let validations = ALGORITHMS.map(|alg| {
            let mut v = Validation::new(alg);
            v.leeway = leeway;
            v.validate_exp = true;
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            match &config.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    required.push("aud");
                }
                None => v.validate_aud = false,
            }
            v.set_required_spec_claims(&required);
            v
        });
        Ok(Self {
            tenant: tenant.to_owned(),
            claim: config.tenant_claim.clone(),
            keys,
            validations,
        })
    }

    /// A verifier that refuses every token (its keys could not be read).
    #[must_use]
    pub(crate) fn refusing(tenant: &str, config: &JwtAuth) -> Self {
        let mut v = Self::new(tenant, config, None, None).unwrap_or_else(|_| Self {
            tenant: tenant.to_owned(),
            claim: config.tenant_claim.clone(),
            keys: Vec::new(),
            validations: ALGORITHMS.map(Validation::new),
        });
        v.keys.clear();
        v
    }

    /// The claim that names the tenant.
    #[must_use]
    pub(crate) fn claim(&self) -> &str {
        &self.claim
    }

    #[cfg(test)]
    /// How many keys it holds.
    #[must_use]
    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `token`: signature, algorithm, times, issuer, audience, and
    /// the tenant claim.
    ///
    /// # Errors
    /// Why the token is refused.
    pub(crate) fn verify(&self, jwt: &UnverifiedJwt<'_>) -> Result<Verified, JwtError> {
        let header = &jwt.decoded().ok_or(JwtError::Malformed)?.header;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::Malformed)?;
        let alg = alg_of(alg).ok_or(JwtError::Algorithm)?;
        let kid = header.get("kid").and_then(Value::as_str);
        let of_alg = || self.keys.iter().filter(move |k| k.alg == alg);
        if of_alg().next().is_none() {
            return Err(JwtError::Algorithm);
        }
        let validation = &self.validations[ALGORITHMS
            .iter()
            .position(|&a| a == alg)
            .unwrap_or_default()];
        let candidates = of_alg()
            .filter(|k| match (kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .take(MAX_KEYS_TRIED);
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(jwt.token, &key.decoding, validation) {
                Ok(data) => {
                    return match data.claims.get(&self.claim) {
                        Some(Value::String(t)) if *t == self.tenant => Ok(Verified {
                            subject: data
                                .claims
                                .get("sub")
                                .and_then(Value::as_str)
                                .map(|s| s.chars().take(64).collect()),
                        }),
                        None => Err(JwtError::MissingClaim),
                        Some(_) => Err(JwtError::OtherTenant),
                    };
                }
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
                Err(e) => return Err(error_of(e.kind())),
            }
        }
        Err(JwtError::Signature)
    }
}

fn error_of(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::InvalidSignature => JwtError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => JwtError::Algorithm,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidAudience => JwtError::Audience,
        ErrorKind::InvalidIssuer => JwtError::Issuer,
        ErrorKind::MissingRequiredClaim(_) => JwtError::MissingClaim,
        _ => JwtError::Malformed,
    }
}

/// The usable keys of a JWKS: RSA (RS256, at least 2048 bits), EC P-256
/// (ES256) and `oct` (HS256) keys for signatures. Keys for other
/// algorithms or uses are skipped (an identity provider's JWKS may list
/// them); none usable at all is an error.
fn parse_jwks(text: &str) -> Result<Vec<VerifyKey>, String> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no \"keys\" array")?;
    let mut keys = Vec::new();
    for (i, k) in list.iter().enumerate() {
        let field = |name: &str| k.get(name).and_then(Value::as_str);
        if field("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let bytes = |name: &str| -> Result<Vec<u8>, String> {
            let text = field(name).ok_or(format!("JWKS key {i} has no \"{name}\""))?;
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| format!("JWKS key {i}: \"{name}\" is not base64url"))
        };
        let (alg, key) = match (field("kty"), field("alg")) {
            (Some("RSA"), None | Some("RS256")) => {
                let n = bytes("n")?;
                let bits = n.iter().skip_while(|&&b| b == 0).count() * 8;
                if bits < 2048 {
                    return Err(format!(
                        "JWKS key {i}: RSA modulus of {bits} bits; RS256 needs at least 2048"
                    ));
                }
                bytes("e")?;
                let key = DecodingKey::from_rsa_components(
                    field("n").unwrap_or_default(),
                    field("e").unwrap_or_default(),
                )
                .map_err(|e| format!("JWKS key {i}: {e}"))?;
                (Algorithm::RS256, key)
            }
            (Some("EC"), None | Some("ES256")) => {
                if field("crv") != Some("P-256") {
                    continue;
                }
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(format!(
                        "JWKS key {i}: P-256 coordinates must be 32 bytes each"
                    ));
                }
                let mut point = vec![4];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (Algorithm::ES256, DecodingKey::from_ec_der(&point))
            }
            (Some("oct"), None | Some("HS256")) => {
                let secret = bytes("k")?;
                if secret.len() < MIN_HS256_SECRET {
                    return Err(format!(
                        "JWKS key {i}: an HS256 key needs at least {MIN_HS256_SECRET} bytes"
                    ));
                }
                (Algorithm::HS256, DecodingKey::from_secret(&secret))
            }
            _ => continue,
        };
        keys.push(VerifyKey {
            kid: field("kid").map(str::to_owned),
            alg,
            decoding: key,
        });
    }
    if keys.is_empty() {
        return Err(
            "JWKS holds no usable key (RSA for RS256, EC P-256 for ES256, oct for HS256)".into(),
        );
    }
    Ok(keys)
}

/// Seconds, rounded up, at least 1 (for `Retry-After` and friends).
#[must_use]
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    /// A 2048-bit RSA test key (PKCS#1 DER), made for these tests only.
    const RSA_DER_B64: &str = "MIIEpAIBAAKCAQEA0cSfbo5AKcqhBkw2hKiGJpWtxJ3h2RJ+3ilFNtD7eaWBie/II3hjP4qk3JjhCHr3yBmwOJKdgabBC3DZaH+SkVpfzR2KAalNP+3jmVtCgCcEJkWiJCvHCtUV3ZoLLQpKgflLFYPu16LgpE9NW1Nnb8EN5B7G4k3HOh6tx7lyUEQp8Vc3SsEn3wNGDhQD457C39zEsK0rBm10294beu7+6OnyMSdhOocIRQrMhSmOFI7BTaHShzRymNpgwXyHRdp8IRYC5FW9c2NsLGTNJh4bJTsi1HNAn1MTkcF7BJRNh9YnEIOt00ChO/Qzp3RNau74f47Qy0wBLrsQ0XoNs4GmoQIDAQABAoIBAAhjBF3S9alGFvSNwQNCSqTJyLoK9u/rH6PpwgDsT5WgQqLdcaLLaips9GT2fs7MPdJkBonogMAhhufacfLN4PILSzfD9dPVrUdAT2B/B9RgWvfdwlsQXgOmm9pxkX9SQULbkP8x+G9qLXGcUxMy7TiIXzIO8fQz2GKQPfH1jea8FGWAhhWoN0Gc9adv/9EYsIf2ncYpArz+YQ+daqH9YD464zI4mXNVmSKvmJ9jeEXq+qtlH16TKrw6eb8QKodOmpb/hxH4vgIxEWKmFWM21BrNMC794OVvGk6S9r1CZZDA17c4GR8GhkB82Gth/6pbBQ2tvN613/kXOooyFYch+C0CgYEA8pN9zxHI7RWKZ+KPFW7yYbyE4eC2lC6T6+rDiDzEiWdKq10cYM+FbzPROi/R4U4d2lY/eAT8ijXb7ZQ0VIngAXeN4UhdEZfYfz4G5zhkIq7InMSIBe0MeFWhbINM0nYK4rXO/M3VHGxAPMaO68iuo93CrLhzhuXq2mV97iOXkAUCgYEA3WBZMOgFD7F9bwVs68749tlrHBx1nCSbRRbeBoOnkPlqLwDPUHD2Ens7WVOZaV9qX0XCqRbqR1ylsP4/a6wEEFqghnw2a4c4NuTLkEPUEwZIaoq48uee1LbiTb6MczbhX/LeR1iMifa/0dPiqlyY2zH5naSEiPFgQmXEzYu2qu0CgYAYk7j7ceHZo4USYXH9ye/k1yTffdUBznZOQMru0rlW8pAuLJDjfiMW0TkxnAa3vSJpLLPhhR/RIQPXXlyu9AkuHN7TJHHJhoj421/3rU739J1+xKrDbvEEgCiKxgLSkAMqVSFTm8crygv4HGX+naaUE7PVrBqIYGMbHY1Uw2ZnwQKBgQC4+e3s8KJyB4PhBa6Kp0nesbNPLPSVAP2A0Ge7F70nZVD1b37LH2ht7uybakBRDPpMG3VZZp1h/acxanDB3l0S8TcayKWMWdN+AtWZeSO2tdRCuiFqTmGoKhyUi7i9+Mh/LOfQw8vC6BxGDv9iDLdoyKxjrflUmCQvtuuoOKrszQKBgQDSiEfWTxgVQ6niEm7SYNg8W89M4Sq9tu05tbAnYUQjep9Yg6gkbesfFJZk7PjDDoyckmNR/OPcUeNLXNALxkeReJlKqag7oG1qHzgY+A/luOn+vqNKllA0YShTaJhgs5jZUWzZ82cRCbfchZUq71piQ05iKsd1E+WhRhOVge6WUA==";

    /// The test keys of one tenant: RSA, EC and an HS256 secret, with
    /// their JWKS.
    pub(crate) struct TestKeys {
        pub rsa: EncodingKey,
        pub ec: EncodingKey,
        pub hs: EncodingKey,
        pub jwks: String,
        pub secret: Vec<u8>,
    }

    pub(crate) fn test_keys() -> TestKeys {
        let der = base64::engine::general_purpose::STANDARD
            .decode(RSA_DER_B64)
            .expect("test RSA key");
        // RSAPrivateKey: SEQUENCE, version, then INTEGER n (257 bytes with
        // its leading zero).
        assert_eq!(der[7..12], [0x02, 0x82, 0x01, 0x01, 0x00]);
        let n = URL_SAFE_NO_PAD.encode(&der[12..268]);
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
        let point = ec.public_key_raw();
        let secret = b"0123456789abcdef0123456789abcdef-test".to_vec();
        let jwks = json!({ "keys": [
            { "kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB" },
            { "kty": "EC", "kid": "e1", "crv": "P-256",
              "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]) },
            { "kty": "RSA", "kid": "enc", "use": "enc", "n": n, "e": "AQAB" },
            { "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
        ]})
        .to_string();
        TestKeys {
            rsa: EncodingKey::from_rsa_der(&der),
            ec: EncodingKey::from_ec_der(&ec.serialize_der()),
            hs: EncodingKey::from_secret(&secret),
            jwks,
            secret,
        }
    }

    pub(crate) fn now() -> i64 {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs(),
        )
        .expect("seconds")
    }

    pub(crate) fn token(
        alg: Algorithm,
        kid: Option<&str>,
        key: &EncodingKey,
        claims: &Value,
    ) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        encode(&h, claims, key).expect("signing")
    }

    fn verify(v: &JwtVerifier, token: &str) -> Result<Verified, JwtError> {
        v.verify(&UnverifiedJwt::new(token))
    }

    fn config() -> JwtAuth {
        JwtAuth {
            jwks_file: None,
            hs256_secret_file: None,
            issuer: Some("https://id.example".into()),
            audience: Some("api".into()),
            tenant_claim: "tenant".into(),
            leeway: Duration::from_secs(30),
        }
    }

    fn claims(tenant: &str, exp_in: i64) -> Value {
        json!({ "tenant": tenant, "sub": "alice", "iss": "https://id.example", "aud": "api",
                "exp": now() + exp_in, "nbf": now() - 10 })
    }

    #[test]
    fn each_algorithm_verifies_with_its_key() {
        let k = test_keys();
        let v = JwtVerifier::new("acme", &config(), Some(&k.jwks), Some(&k.secret)).expect("keys");
        assert_eq!(
            v.key_count(),
            3,
            "RSA, EC and the secret; enc and OKP skipped"
        );
        let c = claims("acme", 600);
        for (alg, kid, key) in [
            (Algorithm::RS256, Some("r1"), &k.rsa),
            (Algorithm::ES256, Some("e1"), &k.ec),
            (Algorithm::ES256, None, &k.ec),
            (Algorithm::HS256, None, &k.hs),
        ] {
            assert_eq!(
                verify(&v, &token(alg, kid, key, &c)),
                Ok(Verified {
                    subject: Some("alice".into())
                }),
                "{alg:?} {kid:?}"
            );
        }
    }

    #[test]
    fn times_issuer_audience_and_tenant_are_checked() {
        let k = test_keys();
        let v = JwtVerifier::new("acme", &config(), Some(&k.jwks), None).expect("keys");
        let sign = |c: &Value| token(Algorithm::ES256, Some("e1"), &k.ec, c);
        let mut c = claims("acme", -120);
        assert_eq!(verify(&v, &sign(&c)), Err(JwtError::Expired));
        // Within the leeway: accepted.
        c["exp"] = json!(now() - 10);
        assert!(verify(&v, &sign(&c)).is_ok());
        let mut c = claims("acme", 600);
        c["nbf"] = json!(now() + 120);
        assert_eq!(verify(&v, &sign(&c)), Err(JwtError::NotYetValid));
        let mut c = claims("acme", 600);
        c["aud"] = json!("other");
        assert_eq!(verify(&v, &sign(&c)), Err(JwtError::Audience));
        c["aud"] = json!(["other", "api"]);
        assert!(verify(&v, &sign(&c)).is_ok());
        let mut c = claims("acme", 600);
        c["iss"] = json!("https://evil.example");
        assert_eq!(verify(&v, &sign(&c)), Err(JwtError::Issuer));
        for missing in ["exp", "iss", "aud", "tenant"] {
            let mut c = claims("acme", 600);
            c.as_object_mut().expect("object").remove(missing);
            assert_eq!(
                verify(&v, &sign(&c)),
                Err(JwtError::MissingClaim),
                "{missing}"
            );
        }
        assert_eq!(
            verify(&v, &sign(&claims("globex", 600))),
            Err(JwtError::OtherTenant)
        );
    }

    #[test]
    fn signatures_and_algorithm_confusion_are_refused() {
        let k = test_keys();
        let v = JwtVerifier::new("acme", &config(), Some(&k.jwks), None).expect("keys");
        let c = claims("acme", 600);
        // Signed by another EC key.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let forged = token(
            Algorithm::ES256,
            Some("e1"),
            &EncodingKey::from_ec_der(&other.serialize_der()),
            &c,
        );
        assert_eq!(verify(&v, &forged), Err(JwtError::Signature));
        // A tampered payload.
        let good = token(Algorithm::RS256, Some("r1"), &k.rsa, &c);
        let mut parts: Vec<&str> = good.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(claims("acme", 99_999).to_string());
        parts[1] = &evil;
        assert_eq!(verify(&v, &parts.join(".")), Err(JwtError::Signature));
        // HS256 with the RSA public key as the secret: no HMAC key here.
        let jwks: Value = serde_json::from_str(&k.jwks).expect("jwks");
        let n = jwks["keys"][0]["n"].as_str().expect("n");
        let confused = token(
            Algorithm::HS256,
            Some("r1"),
            &EncodingKey::from_secret(n.as_bytes()),
            &c,
        );
        assert_eq!(verify(&v, &confused), Err(JwtError::Algorithm));
        // alg "none", and algorithms outside the three.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(c.to_string());
        assert_eq!(
            verify(&v, &format!("{header}.{body}.")),
            Err(JwtError::Algorithm)
        );
        let rs384 = token(Algorithm::RS384, Some("r1"), &k.rsa, &c);
        assert_eq!(verify(&v, &rs384), Err(JwtError::Algorithm));
        // ES256 header on an RSA signature, and an unknown kid.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[0] = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"e1"}"#);
        assert_eq!(verify(&v, &parts.join(".")), Err(JwtError::Signature));
        let unknown = token(Algorithm::RS256, Some("nope"), &k.rsa, &c);
        assert_eq!(verify(&v, &unknown), Err(JwtError::Signature));
        // Garbage and oversized tokens.
        assert_eq!(verify(&v, "eyJ.x.y"), Err(JwtError::Malformed));
        assert_eq!(
            verify(&v, &format!("eyJ{}", "a".repeat(MAX_TOKEN_BYTES))),
            Err(JwtError::Malformed)
        );
        // A verifier without keys refuses everything.
        let none = JwtVerifier::refusing("acme", &config());
        assert_eq!(verify(&none, &good), Err(JwtError::Algorithm));
    }

    #[test]
    fn key_files_are_checked() {
        let keys = test_keys();
        let short = JwtVerifier::new("acme", &config(), None, Some(b"short\n"));
        assert!(short.is_err_and(|e| e.contains("at least 32")));
        let newline = [keys.secret.as_slice(), b"\n"].concat();
        let verifier = JwtVerifier::new("acme", &config(), None, Some(&newline)).expect("secret");
        let hs = token(Algorithm::HS256, None, &keys.hs, &claims("acme", 60));
        assert!(
            verify(&verifier, &hs).is_ok(),
            "the trailing newline is not part of the secret"
        );
        for (jwks, fragment) in [
            ("not json", "not valid JSON"),
            ("{}", "no \"keys\""),
            (r#"{"keys":[{"kty":"OKP"}]}"#, "no usable key"),
            (
                r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
                "at least 2048",
            ),
            (r#"{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}"#, "at least 32"),
        ] {
            let e = JwtVerifier::new("acme", &config(), Some(jwks), None)
                .err()
                .unwrap_or_else(|| panic!("accepted {jwks}"));
            assert!(e.contains(fragment), "{fragment:?} not in {e}");
        }
        let mut missing = config();
        missing.jwks_file = Some(std::env::temp_dir().join("no-such-lb-jwks.json"));
        let e = JwtVerifier::load("acme", &missing).expect_err("missing file");
        assert!(e.contains("no-such-lb-jwks.json"), "{e}");
    }

    #[test]
    fn credentials_of_a_request() {
        let mut h = HeaderMap::new();
        assert!(Credentials::of(&h).is_empty());
        h.insert(AUTHORIZATION, "Bearer sk-123".parse().expect("v"));
        let c = Credentials::of(&h);
        assert_eq!(
            (c.header_key, c.bearer_key, c.api_key(), c.jwt.is_none()),
            (None, Some("sk-123"), Some("sk-123"), true)
        );
        // Both keys are kept (each is checked for another tenant's); the
        // tenant checks X-API-Key.
        h.insert(X_API_KEY, " junk ".parse().expect("v"));
        let c = Credentials::of(&h);
        assert_eq!(
            (c.header_key, c.bearer_key, c.api_key(), c.limit_key()),
            (Some("junk"), Some("sk-123"), Some("junk"), Some("junk"))
        );
        h.insert(AUTHORIZATION, "bearer eyJa.eyJb.c-_d".parse().expect("v"));
        h.insert(X_API_KEY, "k2".parse().expect("v"));
        let c = Credentials::of(&h);
        assert_eq!(
            (
                c.api_key(),
                c.jwt.as_ref().map(UnverifiedJwt::token),
                c.limit_key()
            ),
            (Some("k2"), Some("eyJa.eyJb.c-_d"), Some("k2"))
        );
        h.remove(X_API_KEY);
        assert_eq!(
            Credentials::of(&h).limit_key(),
            Some("eyJa.eyJb.c-_d"),
            "the token, without a key"
        );
        h.insert(AUTHORIZATION, "Basic dXNlcjpwdw==".parse().expect("v"));
        assert!(Credentials::of(&h).is_empty());
        assert!(!looks_like_jwt("eyJa.b"));
        assert!(!looks_like_jwt("eyJa.b.c.d"));
        assert!(!looks_like_jwt("abc.def.ghi"));
        assert!(!looks_like_jwt("eyJa.b!.c"));
    }

    #[test]
    fn duplicate_credential_headers_are_seen() {
        let mut h = HeaderMap::new();
        assert!(!duplicated(&h));
        h.append(X_API_KEY, "a".parse().expect("v"));
        h.append(AUTHORIZATION, "Bearer b".parse().expect("v"));
        assert!(!duplicated(&h), "one of each");
        let mut keys = h.clone();
        keys.append(X_API_KEY, "c".parse().expect("v"));
        assert!(duplicated(&keys));
        h.append(AUTHORIZATION, "Basic eA==".parse().expect("v"));
        assert!(duplicated(&h), "two Authorization headers, whatever scheme");
    }

    #[test]
    fn an_unverified_jwt_is_decoded_once() {
        let t = format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"tenant":"acme","n":1}"#)
        );
        let before = DECODED.with(std::cell::Cell::get);
        let jwt = UnverifiedJwt::new(&t);
        assert_eq!(DECODED.with(std::cell::Cell::get), before, "lazily");
        assert_eq!(jwt.claim("tenant"), Some("acme"));
        assert_eq!(jwt.claim("n"), None, "not a string");
        assert_eq!(jwt.claim("org"), None);
        assert_eq!(DECODED.with(std::cell::Cell::get), before + 1);
        let broken = UnverifiedJwt::new("eyJhbGciOiJIUzI1NiJ9.eyJ.sig");
        assert_eq!(broken.claim("tenant"), None);
        assert_eq!(broken.claim("tenant"), None);
        assert_eq!(DECODED.with(std::cell::Cell::get), before + 2);
    }

    #[test]
    fn api_keys_match_by_digest_in_constant_time() {
        let keys = ApiKeys::new(&[
            crate::config::ApiKey {
                name: "ci".into(),
                sha256: digest("secret-ci"),
            },
            crate::config::ApiKey {
                name: "deploy".into(),
                sha256: digest("secret-deploy"),
            },
        ]);
        assert_eq!(keys.find(&digest("secret-ci")), Some("ci"));
        assert_eq!(keys.find(&digest("secret-deploy")), Some("deploy"));
        assert_eq!(keys.find(&digest("secret-dep")), None);
        // Digests differing only in the first or the last byte.
        let mut d = digest("secret-ci");
        d[0] ^= 1;
        assert_eq!(keys.find(&d), None);
        let mut d = digest("secret-ci");
        d[31] ^= 0x80;
        assert_eq!(keys.find(&d), None);
        assert_eq!(ApiKeys::default().find(&digest("x")), None);
        // The configured form: SHA-256 hex of the key.
        assert_eq!(
            crate::config::hex(&digest("foo")),
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
    }
}
