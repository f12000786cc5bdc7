//! The admin API client `lbctl` uses: one HTTP/1.1 request per connection,
//! over the Unix socket or over TCP with a bearer token.

use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    HeaderMap, Method, StatusCode,
    body::Bytes,
    header::{self, HeaderName, HeaderValue},
};
use hyper_util::rt::TokioIo;

use crate::api::Request;

/// The default admin socket (`node.admin_socket`'s default).
pub const DEFAULT_SOCKET: &str = crate::config::DEFAULT_ADMIN_SOCKET;
/// How long one call may take: longer than the server's 10 s wait for the
/// daemon, so that its 503 arrives instead of a client-side timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read (a flow dump of many entries is big).
const MAX_ANSWER_BYTES: usize = 256 << 20;

/// Where the admin API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The Unix socket at this path.
    Unix(PathBuf),
    /// TCP at `host:port`, sending `token` as `Authorization: Bearer`.
    Tcp {
        authority: String,
        token: Option<String>,
    },
}

impl Target {
    /// A TCP target from `http://HOST:PORT` and the file holding the token
    /// (trimmed, like the server reads it).
    ///
    /// # Errors
    ///
    /// When the URL is not `http://HOST:PORT[/]` or the token file cannot be
    /// read or is empty.
    pub fn from_url(url: &str, token_file: &Path) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("expected http://HOST:PORT (the admin API does not speak TLS)"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad("expected http://HOST:PORT with nothing after the port"));
        }
        let port = authority
            .rsplit_once(':')
            .map(|(_, p)| p)
            .filter(|p| !p.contains(']'));
        if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
            return Err(bad("expected a port, as in http://127.0.0.1:9465"));
        }
        let token = std::fs::read_to_string(token_file).map_err(|error| ClientError::Token {
            path: token_file.to_owned(),
            error,
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(ClientError::Token {
                path: token_file.to_owned(),
                error: io::Error::new(io::ErrorKind::InvalidData, "the file is empty"),
            });
        }
        Ok(Self::Tcp {
            authority: authority.to_owned(),
            token: Some(token.to_owned()),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "the admin socket {}", path.display()),
            Self::Tcp { authority, .. } => write!(f, "the admin API at http://{authority}"),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the target.
    #[error("cannot connect to {target}: {error}{hint}")]
    Connect {
        target: String,
        error: io::Error,
        hint: &'static str,
    },
    /// The connection broke or the answer was not HTTP.
    #[error("talking to {target}: {message}")]
    Http { target: String, message: String },
    /// No answer within the timeout.
    #[error("no answer from {target} within {secs} s")]
    Timeout { target: String, secs: u64 },
    /// The API answered with an error status; `message` is its `error`.
    #[error("{message}")]
    Api { status: u16, message: String },
    /// A `--url` that is not `http://HOST:PORT`.
    #[error("invalid admin URL {url:?}: {why}")]
    Url { url: String, why: String },
    /// The token file could not be read.
    #[error("reading the token file {path}: {error}")]
    Token { path: PathBuf, error: io::Error },
}

/// An admin API client.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    timeout: Duration,
}

impl Client {
    /// A client of `target` with the [`DEFAULT_TIMEOUT`].
    #[must_use]
    pub fn new(target: Target) -> Self {
        Self {
            target,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Where this client connects.
    #[must_use]
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends an admin [`Request`] (see [`encode`]) and returns the JSON
    /// answer.
    ///
    /// # Errors
    ///
    /// See [`Client::send`].
    pub async fn call(&self, request: &Request) -> Result<serde_json::Value, ClientError> {
        let (method, path, body) = encode(request);
        self.send(method, &path, body).await
    }

    /// `GET path`: the JSON answer.
    ///
    /// # Errors
    ///
    /// See [`Client::send`].
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// Sends a request with an optional `(content type, body)`. A 2xx
    /// answer is returned as JSON (a text answer as a JSON string);
    /// anything else is [`ClientError::Api`] with the answer's `error`.
    ///
    /// # Errors
    ///
    /// When the API cannot be reached, does not answer in time, or answers
    /// with an error status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<serde_json::Value, ClientError> {
        let (status, headers, bytes) = self.raw(method, path, body, &[]).await?;
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let text = || String::from_utf8_lossy(&bytes).into_owned();
        let value = if is_json {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Http {
                target: self.target.to_string(),
                message: format!("undecodable JSON answer ({e}): {}", text()),
            })?
        } else {
            serde_json::Value::String(text())
        };
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = if let Some(m) = value.get("error").and_then(serde_json::Value::as_str) {
            m.to_owned()
        } else {
            let reason = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error");
            format!("HTTP {status} {reason}: {}", text().trim())
        };
        Err(ClientError::Api { status, message })
    }

    /// Sends a request with extra headers and returns the raw status,
    /// headers and body, whatever the status.
    ///
    /// # Errors
    ///
    /// When the API cannot be reached or does not answer in time.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, String)],
    ) -> Result<(u16, HeaderMap, Bytes), ClientError> {
        let target = self.target.to_string();
        let http_err = |message: String| ClientError::Http {
            target: target.clone(),
            message,
        };
        let host = match &self.target {
            Target::Unix(_) => "localhost",
            Target::Tcp { authority, .. } => authority.as_str(),
        };
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host);
        if let Target::Tcp {
            token: Some(token), ..
        } = &self.target
        {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| http_err(format!("header {name}: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| http_err(format!("header {name}: {e}")))?;
            builder = builder.header(name, value);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|e| http_err(format!("building the request: {e}")))?;
        let exchange = async {
            match &self.target {
                Target::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| self.connect_error(e))?;
                    exchange(TokioIo::new(stream), request).await
                }
                Target::Tcp { authority, .. } => {
                    let stream = tokio::net::TcpStream::connect(authority.as_str())
                        .await
                        .map_err(|e| self.connect_error(e))?;
                    exchange(TokioIo::new(stream), request).await
                }
            }
            .map_err(http_err)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                target: target.clone(),
                secs: self.timeout.as_secs(),
            })?
    }

    fn connect_error(&self, error: io::Error) -> ClientError {
        let hint = match (&self.target, error.kind()) {
            (Target::Unix(_), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
                " (lbd may not be running; start it, point --socket at its node.admin_socket, \
                 or use --maps DIR where that works without a daemon)"
            }
            (Target::Unix(_), io::ErrorKind::PermissionDenied) => {
                " (the socket is mode 0600: run lbctl as the user lbd runs as, usually root)"
            }
            (Target::Tcp { .. }, io::ErrorKind::ConnectionRefused) => {
                " (lbd may not be running, or node.admin_listen is not set)"
            }
            _ => "",
        };
        ClientError::Connect {
            target: self.target.to_string(),
            error,
            hint,
        }
    }
}

/// The HTTP form of an admin request: method, path with query, and body
/// (content type and bytes), as the admin API's routes take it.
#[must_use]
pub fn encode(request: &Request) -> (Method, String, Option<(&'static str, Vec<u8>)>) {
    let json = |v: serde_json::Value| Some(("application/json", v.to_string().into_bytes()));
    let seg = |s: &str| encode_component(s);
    match request {
        Request::Status => (Method::GET, "/status".into(), None),
        Request::ListTenants => (Method::GET, "/tenants".into(), None),
        Request::ShowTenant { name } => (Method::GET, format!("/tenants/{}", seg(name)), None),
        Request::AddTenant { toml } => (
            Method::POST,
            "/tenants".into(),
            Some(("application/toml", toml.clone().into_bytes())),
        ),
        Request::RemoveTenant { name } => (Method::DELETE, format!("/tenants/{}", seg(name)), None),
        Request::ListVips => (Method::GET, "/vips".into(), None),
        Request::ListPools => (Method::GET, "/pools".into(), None),
        Request::ShowPool { tenant, pool } => (
            Method::GET,
            format!("/pools/{}/{}", seg(tenant), seg(pool)),
            None,
        ),
        Request::ListBackends => (Method::GET, "/backends".into(), None),
        Request::AddBackend {
            tenant,
            pool,
            backend,
        } => (
            Method::POST,
            "/backends".into(),
            json(serde_json::json!({ "tenant": tenant, "pool": pool, "backend": backend })),
        ),
        Request::RemoveBackend { backend } => (
            Method::DELETE,
            "/backends".into(),
            json(serde_json::json!(backend)),
        ),
        Request::DrainBackend { backend } => (
            Method::POST,
            "/backends/drain".into(),
            json(serde_json::json!(backend)),
        ),
        Request::EnableBackend { backend } => (
            Method::POST,
            "/backends/enable".into(),
            json(serde_json::json!(backend)),
        ),
        Request::Stats => (Method::GET, "/stats".into(), None),
        Request::ListSni => (Method::GET, "/sni".into(), None),
        Request::AddSni { tenant, site, name } => (
            Method::POST,
            "/sni".into(),
            json(serde_json::json!({ "tenant": tenant, "site": site, "name": name })),
        ),
        Request::RemoveSni { name } => (Method::DELETE, format!("/sni/{}", seg(name)), None),
        Request::Flows { filter } => {
            let mut query = Vec::new();
            if let Some(t) = &filter.tenant {
                query.push(format!("tenant={}", seg(t)));
            }
            if let Some(v) = filter.vip {
                query.push(format!("vip={}", seg(&v.to_string())));
            }
            if let Some(b) = filter.backend {
                query.push(format!("backend={}", seg(&b.to_string())));
            }
            if let Some(n) = filter.limit {
                query.push(format!("limit={n}"));
            }
            let path = if query.is_empty() {
                "/flows".to_owned()
            } else {
                format!("/flows?{}", query.join("&"))
            };
            (Method::GET, path, None)
        }
        Request::Explain {
            client,
            vip,
            protocol,
        } => (
            Method::GET,
            format!(
                "/explain?client={}&vip={}&protocol={protocol}",
                seg(&client.to_string()),
                seg(&vip.to_string())
            ),
            None,
        ),
        Request::Reload => (Method::POST, "/reload".into(), None),
        Request::ListOverrides => (Method::GET, "/overrides".into(), None),
        Request::ClearOverrides => (Method::DELETE, "/overrides".into(), None),
    }
}

/// Percent-encodes everything but unreserved characters and `:`.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// One request and its whole answer on a fresh connection.
async fn exchange<I>(
    io: I,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, HeaderMap, Bytes), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let bytes = Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    drop(sender);
    let _ = driver.await;
    Ok((parts.status.as_u16(), parts.headers, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let dir = std::env::temp_dir().join(format!("lb-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let token = dir.join("token");
        std::fs::write(&token, "abc\n").expect("write");
        assert_eq!(
            Target::from_url("http://127.0.0.1:9465/", &token).expect("url"),
            Target::Tcp {
                authority: "127.0.0.1:9465".into(),
                token: Some("abc".into())
            }
        );
        assert!(Target::from_url("http://[::1]:9465", &token).is_ok());
        assert!(Target::from_url("http://lb.example:9465", &token).is_ok());
        for bad in [
            "https://127.0.0.1:9465",
            "127.0.0.1:9465",
            "http://127.0.0.1",
            "http://[::1]",
            "http://127.0.0.1:9465/status",
            "http://127.0.0.1:99999",
        ] {
            let e = Target::from_url(bad, &token).expect_err(bad);
            assert!(matches!(e, ClientError::Url { .. }), "{bad}: {e}");
        }
        std::fs::write(&token, "\n").expect("write");
        let e = Target::from_url("http://127.0.0.1:9465", &token).expect_err("empty token");
        assert!(e.to_string().contains("empty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn unreachable_socket_says_lbd_may_not_be_running() {
        let c = Client::new(Target::Unix("/nonexistent/lb/admin.sock".into()));
        let e = c.get("/status").await.expect_err("no socket");
        let text = e.to_string();
        assert!(
            text.starts_with("cannot connect to the admin socket /nonexistent/lb/admin.sock")
                && text.contains("lbd may not be running"),
            "{text}"
        );
    }
}
