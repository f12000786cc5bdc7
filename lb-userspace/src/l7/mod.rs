//! The L7 tier inside `lbd`: TLS termination with per-tenant certificates,
//! tenant identification, the HTTP reverse proxy, and TLS passthrough.
//!
//! * [`tls`]: the certificates of every tenant, chosen by SNI, reloaded
//!   when their files change.
//! * [`passthrough`]: the ClientHello's SNI read without terminating TLS,
//!   the PROXY protocol v2 header, and the byte copy both ways.
//! * [`upstream`]: which backend of a pool serves a request (Maglev,
//!   least request, weighted round robin) and passive outlier detection.

pub mod passthrough;
pub mod tls;
pub mod upstream;
