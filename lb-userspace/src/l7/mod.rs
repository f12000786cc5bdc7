//! The L7 tier inside `lbd`: TLS termination with per-tenant certificates,
//! tenant identification, the HTTP reverse proxy, and TLS passthrough.
//!
//! * [`caps`]: connection caps counted from `accept`, before a tenant is known.
//! * [`routing`]: the snapshot of which tenant and pool serve a request.
//! * [`proxy`]: one request, from identification to the backend's answer.
//! * [`headers`]: the headers the proxy owns.
//! * [`path`]: the request path normalised before routing.
//! * [`tls`]: the certificates of every tenant, chosen by SNI, reloaded
//!   when their files change.
//! * [`tunnel`]: an upgraded connection's bytes, with an idle timeout.
//! * [`passthrough`]: the `ClientHello`'s SNI read without terminating TLS,
//!   the PROXY protocol v2 header, and the byte copy both ways.
//! * [`upstream`]: which backend of a pool serves a request (Maglev,
//!   least request, weighted round robin) and passive outlier detection.
//! * [`policy`]: per-tenant request policy (ACLs, rate and concurrency
//!   limits, API keys and JWTs, shedding by tier), kept across reloads.
//! * [`stats`], [`access_log`]: per-tenant counters and the JSON log.

pub mod access_log;
pub mod backend_client;
pub mod caps;
pub mod handoff;
pub mod headers;
pub mod passthrough;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod stats;
pub mod tls;
pub mod tunnel;
pub mod upstream;
