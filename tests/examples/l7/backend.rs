//! The backends: one hyper server (HTTP/1.1 and h2c) per backend address,
//! all on one current-thread runtime in the bench process, pinned to the
//! load generator's CPU. Each answers every request with a fixed body that
//! names its tenant and itself, and counts what it served and what reached
//! it with another tenant's host (a proxy that routed wrongly).

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, header::HOST, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use lb_tests::netns::{enter_netns_current_thread, pin_thread};
use tokio::sync::oneshot;

/// Body size of every response.
pub const BODY_BYTES: usize = 100;

/// One backend's address and identity.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub tenant: &'static str,
    /// The tenant's host name: requests for any other host are misrouted.
    pub host: &'static str,
    pub name: String,
    pub addr: SocketAddr,
}

/// What one backend served.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub misrouted: AtomicU64,
}

/// `(requests, misrouted)` per backend, in spec order.
pub type Snapshot = Vec<(u64, u64)>;

/// The running backends; dropping them stops the runtime.
pub struct Backends {
    pub specs: Vec<BackendSpec>,
    counters: Vec<Arc<Counters>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The response body of a backend: `tenant=NAME backend=NAME` padded to
/// [`BODY_BYTES`].
pub fn body(tenant: &str, name: &str) -> Bytes {
    let mut s = format!("tenant={tenant} backend={name} ");
    while s.len() < BODY_BYTES - 1 {
        s.push('.');
    }
    s.truncate(BODY_BYTES - 1);
    s.push('\n');
    Bytes::from(s)
}

impl Backends {
    /// Starts every backend in the namespace at `ns`, on `cpu`.
    pub fn start(ns: PathBuf, cpu: usize, specs: Vec<BackendSpec>) -> Result<Backends> {
        let counters: Vec<Arc<Counters>> = specs.iter().map(|_| Arc::default()).collect();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread_specs = specs.clone();
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("backends".into())
            .spawn(move || {
                let setup = || -> Result<tokio::runtime::Runtime> {
                    enter_netns_current_thread(&ns)?;
                    pin_thread(0, cpu)?;
                    Ok(tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?)
                };
                let rt = match setup() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut listeners = Vec::new();
                    for s in &thread_specs {
                        match tokio::net::TcpListener::bind(s.addr).await {
                            Ok(l) => listeners.push(l),
                            Err(e) => {
                                let _ = ready_tx
                                    .send(Err(anyhow!(e).context(format!("binding {}", s.addr))));
                                return;
                            }
                        }
                    }
                    for ((l, s), c) in listeners.into_iter().zip(thread_specs).zip(thread_counters)
                    {
                        tokio::spawn(serve(l, s, c));
                    }
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.await;
                });
            })
            .context("spawning the backends' thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the backends' thread died"))??;
        Ok(Backends {
            specs,
            counters,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        self.counters
            .iter()
            .map(|c| {
                (
                    c.requests.load(Ordering::Relaxed),
                    c.misrouted.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, spec: BackendSpec, counters: Arc<Counters>) {
    let body = body(spec.tenant, &spec.name);
    let host = spec.host;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                counters.requests.fetch_add(1, Ordering::Relaxed);
                let got = req
                    .headers()
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri().host())
                    .unwrap_or("");
                let got = got.rsplit_once(':').map_or(got, |(h, _)| h);
                if !got.eq_ignore_ascii_case(host) {
                    counters.misrouted.fetch_add(1, Ordering::Relaxed);
                }
                let resp = Response::builder()
                    .header("content-type", "text/plain")
                    .body(Full::new(body.clone()));
                async move { Ok::<_, Infallible>(resp.unwrap_or_default()) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Requests served between two snapshots: `(per backend, misrouted total)`.
pub fn delta(before: &Snapshot, after: &Snapshot) -> (Vec<u64>, u64) {
    let per: Vec<u64> = before
        .iter()
        .zip(after)
        .map(|(b, a)| a.0.saturating_sub(b.0))
        .collect();
    let mis = before
        .iter()
        .zip(after)
        .map(|(b, a)| a.1.saturating_sub(b.1))
        .sum();
    (per, mis)
}
