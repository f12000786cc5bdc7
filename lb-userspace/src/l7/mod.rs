//! The L7 tier inside `lbd`: TLS termination with per-tenant certificates,
//! tenant identification, the HTTP reverse proxy, and TLS passthrough.
//!
//! * [`caps`]: connection caps counted from `accept`, before a tenant is known.
//! * [`routing`]: the snapshot of which tenant and pool serve a request.
//! * [`proxy`]: one request, from identification to the backend's answer.
//! * [`body`]: the body type of both directions.
//! * [`headers`]: the headers the proxy owns.
//! * [`path`]: the request path normalised before routing.
//! * [`tls`]: the certificates of every tenant, chosen by SNI, reloaded
//!   when their files change.
//! * [`tunnel`]: an upgraded connection's bytes, with an idle timeout.
//! * [`passthrough`]: the `ClientHello`'s SNI read without terminating TLS,
//!   the PROXY protocol v2 header, and the byte copy both ways.
//! * [`upstream`]: which backend of a pool serves a request (Maglev,
//!   least request, weighted round robin) and passive outlier detection.
//! * [`admission`]: per-tenant request policy (ACLs, rate and concurrency
//!   limits, API keys and JWTs, shedding by tier), kept across reloads.
//! * [`stats`], [`access_log`]: per-tenant counters and the JSON log.

pub(crate) mod access_log;
pub(crate) mod admission;
pub(crate) mod backend_client;
pub(crate) mod body;
pub(crate) mod caps;
pub mod handoff;
pub(crate) mod headers;
pub(crate) mod passthrough;
pub(crate) mod path;
pub(crate) mod proxy;
pub(crate) mod routing;
pub(crate) mod server;
pub(crate) mod stats;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub(crate) mod upstream;

// What the rest of `lb`, `lbd` and the tests use; everything else of the
// L7 tier is private to it.
pub use admission::{Reason, check_key_files};
pub use passthrough::proxy_v2_header;
pub use server::L7;
pub use stats::{TenantStats, TenantStatsView};
pub use tls::{CertError, load_pair};
