//! `lb.toml`: the schema, its defaults, and its validation.
//!
//! [`parse`] turns the text into a [`Config`] or into the first
//! [`ConfigError`], which always names the file and, whenever the problem
//! can be pinned to a place, the line, column and field path, e.g.
//! `lb.toml:14:8: tenant[0] ("acme").l4[1].pool: no pool named "wbe" in
//! tenant "acme" (pools: web, api)`. Nothing is applied before the whole
//! file has been checked, so an invalid reload changes nothing.
//!
//! The text is read twice. `toml_edit` keeps the byte span of every key and
//! value; that span tree ([`span`]) turns a byte offset into `line:col` and
//! a field path (for the errors serde reports: syntax, unknown keys, wrong
//! types), and a field path into a position (for the errors validation
//! reports). serde then decodes the text into private `Raw*` structures
//! ([`raw`], `deny_unknown_fields` everywhere), and validation
//! ([`validate`]) turns those into the public types ([`schema`]), filling
//! in defaults. Keeping spans out of the public types keeps those plain
//! values that the rest of the daemon can compare and clone freely.
//!
//! The L7 sections (`[[tenant.l7]]`, `[[listener]]` and the pool keys only
//! the proxy reads) have their schema, raw types and validation in
//! [`l7`]; the request policy (`tier`, the request keys of
//! `[tenant.limits]`, `[tenant.auth]`, `node.max_inflight_requests`) in
//! [`policy`]. Durations (`"500ms"`, `"2s"`) are read and written by
//! [`duration`].

use std::{
    fmt::Write as _,
    ops::Range,
    path::{Path, PathBuf},
};

use toml_edit::ImDocument;

mod duration;
mod l7;
mod policy;
mod raw;
mod schema;
mod span;
mod validate;

pub use duration::{format_duration, parse_duration};
pub use l7::{
    AccessLog, BackendProtocol, BackendTls, Balance, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_OUTLIER_EJECTION, DEFAULT_OUTLIER_FAILURES,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRIES, DRAIN_TIMEOUT_RANGE, HashOn, Identify,
    L7_TIMEOUT_RANGE, L7Protocol, L7Site, Listener, MAX_BODY_BYTES_RANGE, MAX_HEADER_BYTES_RANGE,
    MAX_OUTLIER_EJECTION, MAX_RETRIES, OUTLIER_EJECTION_RANGE, OUTLIER_FAILURES_RANGE, Outlier,
    PoolL7, Route, Timeouts, TlsFiles, normalise_host, sni_hash,
};
pub use policy::{
    ApiKey, Auth, DEFAULT_JWT_LEEWAY, DEFAULT_TENANT_CLAIM, JwtAuth, MAX_CONNECTIONS,
    MAX_INFLIGHT_REQUESTS, MAX_JWT_LEEWAY, MAX_KEYED_RATE, MAX_REQUEST_RATE, REQUEST_LIMIT_KEYS,
    RequestLimits, Tier, hex,
};
use raw::RawConfig;
pub use schema::{
    Acl, BackendConf, Config, DEFAULT_ADMIN_SOCKET, DEFAULT_FLOW_IDLE_TIMEOUT,
    DEFAULT_HEALTH_EXPECT, DEFAULT_HEALTH_FALL, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_PATH,
    DEFAULT_HEALTH_RISE, DEFAULT_HEALTH_TIMEOUT, DEFAULT_METRICS_LISTEN,
    DEFAULT_NODE_MAX_CONNECTIONS, DEFAULT_PIN_PATH, DEFAULT_STATE_DIR, FLOW_TABLE_SIZE_RANGE,
    Forwarding, HEALTH_COUNT_RANGE, HEALTH_INTERVAL_RANGE, HEALTH_TIMEOUT_RANGE, HealthCheck,
    HealthKind, L4Vip, MAX_BYTE_RATE, MAX_DURATION, MAX_FLOW_IDLE_TIMEOUT, MAX_FLOW_RATE,
    MAX_PACKET_RATE, MAX_WEIGHT, MIN_FLOW_IDLE_TIMEOUT, NODE_MAX_CONNECTIONS_RANGE, Node, Pool,
    Protocol, RING_PER_BACKEND, RING_SIZE_RANGE, TENANT_LIMIT_KEYS, Tenant, TenantLimits,
    VipLimits, XdpMode,
};
use span::{FieldPath, line_col, one_line};
use validate::Ctx;

/// Reads and validates the configuration file at `path` ([`parse_in`]
/// its directory).
///
/// # Errors
///
/// When the file cannot be read (the error names the path) or is invalid
/// (see [`parse`]).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: None,
        column: None,
        field: None,
        message: format!("cannot read the configuration: {e}"),
    })?;
    parse_in(&text, &file, base_dir(path))
}

/// The directory the relative paths of the configuration file at `path`
/// are relative to: the file's own (`.` for a bare file name).
#[must_use]
pub fn base_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// [`parse`], then the relative paths of the files the configuration names
/// (certificates and keys, backend CAs, JWT key files) made relative to
/// `dir`, once, so that every reader of the [`Config`] opens the same file
/// whatever its working directory.
///
/// # Errors
///
/// As [`parse`].
pub fn parse_in(text: &str, file: &str, dir: &Path) -> Result<Config, ConfigError> {
    let mut config = parse(text, file)?;
    resolve_paths(&mut config, dir);
    Ok(config)
}

/// Every file path of `config` that is relative, joined to `dir`.
fn resolve_paths(config: &mut Config, dir: &Path) {
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    if let Some(tls) = &mut config.node.admin_tls {
        resolve(&mut tls.cert);
        resolve(&mut tls.key);
    }
    for t in &mut config.tenants {
        for tls in t.l7.iter_mut().filter_map(|s| s.tls.as_mut()) {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
        for tls in t.pools.iter_mut().filter_map(|p| p.l7.backend_tls.as_mut()) {
            resolve(&mut tls.ca);
        }
        if let Some(jwt) = &mut t.auth.jwt {
            for file in [&mut jwt.jwks_file, &mut jwt.hs256_secret_file]
                .into_iter()
                .flatten()
            {
                resolve(file);
            }
        }
    }
}

/// Parses and validates the text of a configuration; `file` is the name used
/// in error messages.
///
/// # Errors
///
/// The first syntax error, unknown key, wrongly typed value or failed
/// validation rule, with its position and field path.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let doc = ImDocument::parse(text).map_err(|e| {
        let mut err = ConfigError::at(file, text, e.span(), None, one_line(e.message()));
        err.message = format!("syntax error: {}", err.message);
        err
    })?;
    let ctx = Ctx {
        file,
        text,
        root: doc.as_item(),
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.serde_error(&e))?;
    ctx.validate(raw)
}

/// Why a configuration was rejected, and where.
///
/// Displays as `FILE:LINE:COL: FIELD: message`, leaving out the parts that
/// are unknown (`FILE: message` when the problem has no position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    field: Option<String>,
    message: String,
}

impl ConfigError {
    /// The file name given to [`parse`] (or the path given to [`load`]).
    #[must_use]
    pub fn file(&self) -> &str {
        &self.file
    }

    /// 1-based line of the offending key or value, when known.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// 1-based column (in characters) of the offending key or value, when
    /// known.
    #[must_use]
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// Field path, e.g. `tenant[0] ("acme").l4[1].pool`, when known.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// What is wrong, without the position.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    fn at(
        file: &str,
        text: &str,
        span: Option<Range<usize>>,
        field: Option<String>,
        message: String,
    ) -> Self {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = line_col(text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Self {
            file: file.to_owned(),
            line,
            column,
            field,
            message,
        }
    }

    fn render(&self) -> String {
        let mut out = self.file.clone();
        if let Some(line) = self.line {
            let _ = write!(out, ":{line}");
            if let Some(col) = self.column {
                let _ = write!(out, ":{col}");
            }
        }
        out.push_str(": ");
        if let Some(field) = self.field.as_deref().filter(|f| !f.is_empty()) {
            out.push_str(field);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

#[cfg(test)]
mod bounds_tests;

#[cfg(test)]
mod tests;
