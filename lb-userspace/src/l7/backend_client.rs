//! The pooled HTTP client of each pool: hyper-util's client over plain TCP
//! or rustls, HTTP/1.1 or h2 as the pool says. A pool keeps its client (and
//! so its idle backend connections) across reloads while its settings stay
//! the same.

use std::{sync::Arc, time::Duration};

use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};

use crate::config::{BackendProtocol, PoolL7};

use super::body::ProxyBody;

/// The pooled client of one pool.
pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// How long pooled backend connections may idle.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The client of `pool`. When its `backend_tls.ca` cannot be read, the
/// client trusts no CA (every TLS connection to the pool fails, visibly, as
/// 502s) and the error says which file to fix.
#[must_use]
pub(crate) fn client_for(
    pool: &PoolL7,
    connect_timeout: Duration,
) -> (UpstreamClient, Option<String>) {
    let (roots, error) = match &pool.backend_tls {
        None => (RootCertStore::empty(), None),
        Some(tls) => match load_roots(&tls.ca) {
            Ok(roots) => (roots, None),
            Err(e) => (
                RootCertStore::empty(),
                Some(format!("backend_tls.ca {}: {e}", tls.ca.display())),
            ),
        },
    };
    (build(pool, connect_timeout, roots), error)
}

fn load_roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".to_owned());
    }
    Ok(roots)
}

/// # Panics
/// Only if rustls' ring provider lacked TLS 1.2 and 1.3, which it has.
fn build(pool: &PoolL7, connect_timeout: Duration, roots: RootCertStore) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("rustls' ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http();
    // The configuration checked the name; by default the backend's IP
    // address is verified.
    let name = pool
        .backend_tls
        .as_ref()
        .and_then(|t| t.server_name.clone())
        .and_then(|n| ServerName::try_from(n).ok());
    let builder = match name {
        Some(name) => {
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    // hyper-rustls sets ALPN from the enabled protocols: only the pool's.
    let connector = match pool.backend_protocol {
        BackendProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        BackendProtocol::H2 => builder.enable_http2().wrap_connector(http),
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if pool.backend_protocol == BackendProtocol::H2 {
        client.http2_only(true);
    }
    client.build(connector)
}
