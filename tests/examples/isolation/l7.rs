//! The L7 half: tenant B's HTTPS keep-alive requests through lbd, alone
//! and while tenant A floods lbd at ten times its `requests_per_second`,
//! on the L7 bench's world: the same two-namespace line, certificates,
//! backends, lbd configuration and placement (`l7/`), lbd pinned to CPU 0
//! and everything else on CPU 1.
//!
//! Both tenants' clients are the bench's own rustls + hyper clients
//! (HTTP/1.1 keep-alive, paced open loop, see `paced.rs`). A's client runs
//! with `SCHED_IDLE`, so on the shared client core it only ever takes what
//! B's client and the backends leave (on a real network A's clients are
//! other machines).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, client::conn::http1::SendRequest, header::HOST};
use hyper_util::rt::TokioIo;
use lb_tests::netns::{LINE_GEN_V4, LINE_LB_V4, LineTopology, Side, write_sysctls};
use rustls::ClientConfig;

use crate::{
    Plan, Stop,
    backend::{self, BackendSpec, Backends},
    certs,
    cleanup::{DirGuard, NsProcesses},
    cpu::core_ticks,
    load::{self, Gen, client_config, connect, on_gen},
    paced::{self, Exchange, Pace, Tally},
    proxies::{Env, Kind, Proxy, Tenant},
    report::{Compared, L7Flood, L7Result, PhaseRun},
    run_queue_wait_ns, set_idle,
};

/// lbd's core (the L7 bench's proxy core).
pub const PROXY_CPU: usize = 0;
/// The clients' and the backends' core.
pub const GEN_CPU: usize = 1;
const LISTEN_PORT: u16 = 443;
/// `(tenant, host)`: A floods, B is the steady neighbour.
const A: (&str, &str) = ("alpha", "alpha.example");
const B: (&str, &str) = ("beta", "beta.example");
const BACKENDS_PER_TENANT: u16 = 2;
/// How long lbd gets to serve after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Every request (and a reconnect) must finish within this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One keep-alive HTTPS connection of a tenant: one request per token,
/// reconnecting after a failure.
struct HttpsExchange {
    target: SocketAddr,
    host: &'static str,
    tenant: &'static str,
    cfg: Arc<ClientConfig>,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl HttpsExchange {
    async fn open(&self) -> Result<SendRequest<Empty<Bytes>>> {
        let tls = connect(self.target, self.host, &self.cfg).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

impl Exchange for HttpsExchange {
    /// `GET /`: the status; a 200 must come from a backend of this tenant.
    async fn once(&mut self) -> Result<u16> {
        let sender = match self.sender.take() {
            Some(s) => s,
            None => self.open().await?,
        };
        let mut sender = sender;
        let req = Request::get("/")
            .header(HOST, self.host)
            .header("user-agent", "bench-isolation")
            .body(Empty::new())?;
        let fut = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(IO_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("no response within {IO_TIMEOUT:?}"))??;
        // Only a connection that answered goes back for the next token.
        self.sender = Some(sender);
        if status == 200 {
            let marker = format!("tenant={} ", self.tenant);
            ensure!(
                body.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "a 200 for {} not from its backends: {:?}",
                self.tenant,
                String::from_utf8_lossy(&body)
            );
        }
        Ok(status)
    }
}

/// A's tally over B's window, and what A's backends served per second.
type AFlood = (Tally, f64);

/// The line, the backends and lbd. Field order is drop order: lbd first,
/// the namespaces last.
pub struct L7 {
    proxy: Proxy,
    backends: Backends,
    clients: Gen,
    plan: Plan,
    lbd: PathBuf,
    _procs: NsProcesses,
    _work: DirGuard,
    line: LineTopology,
}

impl L7 {
    /// Builds the line, starts the backends and lbd, and waits until lbd
    /// serves both tenants with their own certificates over TLS 1.3.
    pub fn start(plan: &Plan, lbd: PathBuf) -> Result<L7> {
        let line = LineTopology::create().context("building the namespaces")?;
        let procs = NsProcesses(vec![
            line.ns(Side::Gen).to_owned(),
            line.ns(Side::Lb).to_owned(),
        ]);
        write_sysctls(
            &line.path(Side::Gen),
            &[
                ("net.ipv4.ip_local_port_range", "10000 65000"),
                ("net.ipv4.tcp_tw_reuse", "1"),
            ],
        )?;
        let work = std::env::temp_dir().join(format!("lb-bench-isolation-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let work_guard = DirGuard(work.clone());
        let mut tenants = Vec::new();
        let mut specs = Vec::new();
        let mut port = 8081;
        for (name, host) in [A, B] {
            let cert = certs::generate(&work, name, host)?;
            let mut addrs = Vec::new();
            for i in 1..=BACKENDS_PER_TENANT {
                let addr = SocketAddr::new(IpAddr::V4(LINE_GEN_V4), port);
                port += 1;
                specs.push(BackendSpec {
                    tenant: name,
                    host,
                    name: format!("{name}-{i}"),
                    addr,
                });
                addrs.push(addr);
            }
            let lbd_policy = if name == A.0 {
                format!(
                    "[tenant.limits]\nrequests_per_second = {}\n",
                    plan.l7_a_limit
                )
            } else {
                String::new()
            };
            tenants.push(Tenant {
                name,
                host,
                cert,
                backends: addrs,
                lbd_policy,
            });
        }
        let backends = Backends::start(line.path(Side::Gen), GEN_CPU, specs)?;
        let listen = SocketAddr::new(IpAddr::V4(LINE_LB_V4), LISTEN_PORT);
        let env = Env {
            work: work.clone(),
            lb_ns: line.path(Side::Lb),
            lb_if: line.ifname(Side::Lb).to_owned(),
            listen,
            tenants,
            lbd,
            pin_path: PathBuf::from(format!("/sys/fs/bpf/{}-l7", line.prefix())),
            cpu: PROXY_CPU,
            max_conns: 1000,
        };
        let clients = Gen {
            ns: line.ns(Side::Gen).to_owned(),
            ns_path: line.path(Side::Gen),
            cpu: GEN_CPU,
            target: listen,
        };
        let lbd = env.lbd.clone();
        let mut proxy = Proxy::start(Kind::Lbd, &env)?;
        let mut checked = Vec::new();
        proxy.wait_ready(START_TIMEOUT, || {
            checked = load::check(&clients, &env.tenants)?;
            Ok(())
        })?;
        for c in &checked {
            ensure!(
                c.version == "TLSv1_3",
                "tenant {} negotiated {} instead of TLS 1.3",
                c.tenant,
                c.version
            );
        }
        Ok(L7 {
            proxy,
            backends,
            clients,
            plan: plan.clone(),
            lbd,
            _procs: procs,
            _work: work_guard,
            line,
        })
    }

    /// `conns` connections of `tenant`, opened before the pacing starts.
    async fn workers(
        clients: &Gen,
        (tenant, host): (&'static str, &'static str),
        conns: usize,
    ) -> Result<Vec<HttpsExchange>> {
        let cfg = client_config(None, &[b"http/1.1"])?;
        let mut out = Vec::with_capacity(conns);
        for _ in 0..conns {
            let mut w = HttpsExchange {
                target: clients.target,
                host,
                tenant,
                cfg: cfg.clone(),
                sender: None,
            };
            w.sender = Some(
                tokio::time::timeout(IO_TIMEOUT, w.open())
                    .await
                    .map_err(|_| anyhow!("connecting {tenant}: timed out"))??,
            );
            out.push(w);
        }
        Ok(out)
    }

    /// One window of B's requests, with A's flood (`flood`) or without:
    /// B's tally with lbd's CPU figures over B's window, and A's tally
    /// with what A's backends served per second.
    fn phase(&mut self, flood: bool, stop: &Stop) -> Result<(PhaseRun, Option<AFlood>)> {
        stop.check()?;
        let plan = &self.plan;
        let pace = |rate: f64| Pace {
            rate,
            duration: plan.warm + plan.window,
            measure_from: plan.warm,
        };
        let clients = &self.clients;
        #[expect(clippy::cast_precision_loss, reason = "a small request rate")]
        let flood_rate = (plan.l7_a_limit * plan.l7_flood_factor) as f64;
        let (proxy, backends) = (&mut self.proxy, &self.backends);
        let (b, a, busy, cores, served, wall) = std::thread::scope(|s| -> Result<_> {
            let a_thread = flood.then(|| {
                s.spawn(|| {
                    on_gen(clients, || async {
                        set_idle(0)?;
                        let w = Self::workers(clients, A, plan.l7_a_conns).await?;
                        Ok(paced::run(w, pace(flood_rate)).await)
                    })
                })
            });
            let b_thread = s.spawn(|| {
                on_gen(clients, || async {
                    let w = Self::workers(clients, B, plan.l7_b_conns).await?;
                    Ok(paced::run(w, pace(plan.l7_b_rate)).await)
                })
            });
            std::thread::sleep(plan.warm);
            let t0 = Instant::now();
            let cpu0 = proxy.cpu_seconds();
            let wait0 = run_queue_wait_ns(&proxy.pids(), &[]);
            let cores0 = [core_ticks(0), core_ticks(1)];
            let served0 = backends.snapshot();
            std::thread::sleep(plan.window);
            let cpu1 = proxy.cpu_seconds();
            let wait1 = run_queue_wait_ns(&proxy.pids(), &[]);
            let cores1 = [core_ticks(0), core_ticks(1)];
            let served1 = backends.snapshot();
            let wall = t0.elapsed();
            let b = b_thread
                .join()
                .map_err(|_| anyhow!("B's client panicked"))??;
            let a = match a_thread {
                Some(t) => Some(t.join().map_err(|_| anyhow!("A's client panicked"))??),
                None => None,
            };
            let busy = (cpu1 - cpu0) / wall.as_secs_f64().max(1e-9);
            #[expect(clippy::cast_precision_loss, reason = "nanoseconds far below 2^52")]
            let wait = wait1.saturating_sub(wait0) as f64 / wall.as_nanos().max(1) as f64;
            let cores = [
                cores1[0].busy_since(&cores0[0]),
                cores1[1].busy_since(&cores0[1]),
            ];
            Ok((b, a, (busy, wait), cores, (served0, served1), wall))
        })?;
        let (per, misrouted) = backend::delta(&served.0, &served.1);
        ensure!(
            misrouted == 0,
            "{misrouted} requests reached a backend of another tenant"
        );
        let a_served: u64 = backends
            .specs
            .iter()
            .zip(&per)
            .filter(|(s, _)| s.tenant == A.0)
            .map(|(_, n)| *n)
            .sum();
        Ok((
            PhaseRun {
                tally: b,
                busy: busy.0,
                wait: busy.1,
                cores,
            },
            a.map(|a| (a, crate::loadgen::per_second(a_served, wall))),
        ))
    }

    /// `plan.rounds` pairs of windows (baseline and flood, alternating
    /// which goes first), pooled per phase.
    pub fn run(&mut self, stop: &Stop) -> Result<L7Result> {
        let mut rounds = Vec::new();
        let mut a_total = Tally::default();
        let mut a_served = Vec::new();
        for r in 0..self.plan.rounds {
            let (mut base, mut fl) = (None, None);
            let order = if r % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for flood in order {
                let (run, a) = self.phase(flood, stop)?;
                let p = run.phase();
                println!(
                    "  L7 round {} {:<9} B: {:>6.0} requests/s  p50 {:>6.3} ms  p99 {:>7.3} ms  errors {}  lbd {:>3.0}% of its core (waited {:.1} ms/s){}",
                    r + 1,
                    if flood { "flood" } else { "baseline" },
                    p.per_s(),
                    p.p50_ms,
                    p.p99_ms,
                    p.errors,
                    run.busy * 100.0,
                    run.wait * 1000.0,
                    a.as_ref().map_or_else(String::new, |(a, _)| {
                        #[expect(clippy::cast_precision_loss, reason = "small counts")]
                        let share = a.refused.get(&429).copied().unwrap_or(0) as f64
                            / a.attempts().max(1) as f64;
                        format!(
                            "  A: {:.0} requests/s, {:.0}% 429",
                            crate::loadgen::per_second(
                                a.attempts(),
                                Duration::from_secs_f64(a.seconds)
                            ),
                            share * 100.0
                        )
                    })
                );
                if let Some(e) = &run.tally.first_error {
                    println!("    first error of B: {e}");
                }
                if flood {
                    if let Some((a, served)) = a {
                        a_total.merge(&a);
                        a_served.push(served);
                    }
                    fl = Some(run);
                } else {
                    base = Some(run);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            let (Some(base), Some(fl)) = (base, fl) else {
                anyhow::bail!("a round without both windows");
            };
            rounds.push((base, fl));
        }
        #[expect(clippy::cast_precision_loss, reason = "a few rounds")]
        let served = a_served.iter().sum::<f64>() / a_served.len().max(1) as f64;
        Ok(L7Result {
            b_rate: self.plan.l7_b_rate,
            b_conns: self.plan.l7_b_conns,
            b: Compared::from_rounds(&rounds),
            a: L7Flood::from_tally(&a_total, &self.plan, served),
            lbd_version: crate::lbd_version(&self.lbd),
        })
    }

    /// The namespace prefix (for the "removed" line).
    pub fn prefix(&self) -> String {
        self.line.prefix().to_owned()
    }

    /// lbd's log, when something went wrong.
    pub fn log_tail(&self) -> String {
        self.proxy.log_tail()
    }
}
