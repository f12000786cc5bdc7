//! The harness of the L7 end-to-end tests (`tests/l7.rs`): one concern
//! per module.
//!
//! * [`world`]: the fixture (namespaces, tenants, backends, `lbd`).
//! * [`certs`]: the tenants' CAs and certificates (rcgen, ECDSA P-256).
//! * [`backend`]: echoing HTTP, TLS and PROXY v2 backends.
//! * [`client`]: TLS, HTTP/1.1, h2 and WebSocket clients.
//! * [`daemon`]: `lbd` as a child process, and cleanup guards.
//! * [`metrics`]: `lbd`'s `/metrics`, scraped and read.

pub mod backend;
pub mod certs;
pub mod client;
pub mod daemon;
pub mod metrics;
pub mod world;
