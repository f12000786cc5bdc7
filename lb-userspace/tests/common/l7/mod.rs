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

use std::{future::Future, net::SocketAddr, path::Path, thread::JoinHandle};

/// Runs `f` to completion on a new thread inside the network namespace at
/// `ns` (a single-threaded runtime, so every socket it makes is there);
/// [`world::join`] the handle.
pub fn spawn_in<T, F, Fut>(ns: &Path, f: F) -> JoinHandle<anyhow::Result<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    lb_tests::netns::in_netns(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime in the namespace")
            .block_on(f())
    })
}

/// `lbd`'s `/metrics` at `addr`, scraped from inside the namespace `ns`.
pub fn scrape_in(ns: &Path, addr: SocketAddr) -> String {
    world::join(spawn_in(ns, move || metrics::scrape(addr)))
}
