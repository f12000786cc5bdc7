//! WebSocket tunnels through `lbd` stay their tenant's connections for
//! their whole life, end to end in the L7 world of
//! `tests/l7.rs` (namespaces, three tenants with their own CAs, echoing
//! hyper backends, `lbd` on one shared HTTPS address).
//!
//! * `a_tunnel_keeps_its_place_in_max_connections`: with alpha's
//!   `max_connections = 1`, an open WebSocket of alpha (the exchange that
//!   upgraded it long finished) keeps alpha's only place: new TLS
//!   connections for alpha are closed before their handshake and logged as
//!   `connection_limit`, again and again while the tunnel echoes, beta
//!   meanwhile being served, and the tunnel shows in alpha's
//!   `lb_l7_active_connections` and the listener's open connections; once
//!   the tunnel closes, a new connection of alpha is served.
//! * `a_tunnel_lives_through_a_stop_until_the_drain_timeout`: a WebSocket
//!   echoing a message every 500 ms keeps the `lbd` it goes through
//!   running after a successor has taken over, and then (through the
//!   successor) after a SIGTERM: both times it keeps echoing during the
//!   drain, and that `lbd` exits by itself at `node.drain_timeout` (5 s),
//!   saying that it cut one connection, which ends the tunnel.
//!
//! Needs root (namespaces, BPF). Each test builds its own world and tears
//! it down, also when it fails; every wait is bounded.

#[path = "common/l7/mod.rs"]
#[expect(
    dead_code,
    reason = "the shared L7 harness: these tests use its world, daemon and TLS client, not \
              every helper"
)]
mod l7;

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use l7::{
    client::{self, TlsStream, tls_connect},
    world::{LISTEN, World, join},
};
use rustls::pki_types::CertificateDer;
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

/// How long any single step (a connect, an echo) may take.
const STEP: Duration = Duration::from_secs(10);
/// The world's `node.drain_timeout`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How late after its drain timeout a stopping `lbd` may exit.
const EXIT_SLACK: Duration = Duration::from_secs(3);
/// Well into the drain, when `lbd` must still run and the tunnel echo.
const WELL_INTO_THE_DRAIN: Duration = Duration::from_millis(3500);
/// The earliest a drain with a tunnel open may end (the drain timeout,
/// give or take when the test saw the drain start).
const DRAIN_END_EARLIEST: Duration = Duration::from_millis(4500);
/// How long a successor gets to start and take over.
const TAKEOVER_LIMIT: Duration = Duration::from_mins(1);
/// How often a [`Tunnel`] sends a message.
const ECHO_EVERY: Duration = Duration::from_millis(500);
/// The longest a [`Tunnel`] runs.
const TUNNEL_LIMIT: Duration = Duration::from_mins(2);
/// What a stopping `lbd` logs when connections are open, and when its
/// drain timeout cut some (`src/bin/lbd.rs`).
const DRAINING: &str = "draining L7 connections";
const CUT: &str = "drain timeout: closing the connections still open";

type Ws = WebSocketStream<TlsStream>;

/// A WebSocket to alpha's `/ws` (which its backends echo), through `lbd`.
async fn open_ws(ca: &CertificateDer<'static>) -> Ws {
    let tls = tls_connect(LISTEN, "alpha.example", ca, &[b"http/1.1"])
        .await
        .expect("TLS for the WebSocket");
    let (ws, resp) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async("wss://alpha.example/ws", tls),
    )
    .await
    .expect("a WebSocket handshake in time")
    .expect("WebSocket handshake through lbd");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Sends `text` and reads its echo: `Err` says how the tunnel failed.
async fn echo(ws: &mut Ws, text: &str) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("sending: {e}"))?;
    match tokio::time::timeout(STEP, ws.next()).await {
        Err(_) => Err(format!("no echo within {STEP:?}")),
        Ok(None) => Err("the tunnel ended".to_owned()),
        Ok(Some(Err(e))) => Err(format!("the tunnel failed: {e}")),
        Ok(Some(Ok(Message::Text(back)))) if back.as_str() == text => Ok(()),
        Ok(Some(Ok(other))) => Err(format!("not the echo: {other:?}")),
    }
}

/// Sends a close frame on `ws` and waits for the connection to end
/// (bounded). The test backends drop a WebSocket on its close frame
/// without answering it, so the end is an EOF, not a close handshake.
async fn close_ws(ws: &mut Ws) -> Result<(), String> {
    ws.close(None).await.map_err(|e| format!("closing: {e}"))?;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(format!("still open {STEP:?} after its close frame")),
            Ok(None | Some(Err(_))) => return Ok(()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A WebSocket of alpha echoing a message every [`ECHO_EVERY`] on a client
/// thread, until it fails, ends or is closed ([`Tunnel::close`]).
struct Tunnel {
    /// When each echo came back.
    echoes: Arc<Mutex<Vec<Instant>>>,
    /// Set to close the WebSocket.
    close: Arc<AtomicBool>,
    /// When and how the tunnel ended.
    handle: std::thread::JoinHandle<anyhow::Result<(Instant, String)>>,
}

impl Tunnel {
    /// Opens the tunnel and waits for its first echoes.
    fn open(world: &World) -> Tunnel {
        let echoes = Arc::new(Mutex::new(Vec::new()));
        let close = Arc::new(AtomicBool::new(false));
        let (ca, seen, closing) = (
            world.pki.alpha.clone(),
            Arc::clone(&echoes),
            Arc::clone(&close),
        );
        let handle = world.spawn_client(move || async move {
            let mut ws = open_ws(&ca).await;
            let deadline = Instant::now() + TUNNEL_LIMIT;
            let mut i = 0_u64;
            loop {
                if closing.load(Relaxed) {
                    let closed = close_ws(&mut ws).await;
                    return (Instant::now(), format!("closed by the client: {closed:?}"));
                }
                if let Err(e) = echo(&mut ws, &format!("message {i}")).await {
                    return (Instant::now(), e);
                }
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Instant::now());
                if Instant::now() > deadline {
                    return (Instant::now(), format!("still open after {TUNNEL_LIMIT:?}"));
                }
                i += 1;
                tokio::time::sleep(ECHO_EVERY).await;
            }
        });
        let tunnel = Tunnel {
            echoes,
            close,
            handle,
        };
        let deadline = Instant::now() + STEP;
        while tunnel.echoes_since(None) < 2 {
            assert!(
                !tunnel.handle.is_finished(),
                "the tunnel ended at its start"
            );
            assert!(Instant::now() < deadline, "no echoes within {STEP:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        tunnel
    }

    /// Closes the WebSocket (a close handshake) and waits for its thread.
    fn close(self) {
        self.close.store(true, Relaxed);
        let (_, why) = join(self.handle);
        assert_eq!(why, "closed by the client: Ok(())");
    }

    /// Echoes that came back after `since` (all of them without).
    fn echoes_since(&self, since: Option<Instant>) -> usize {
        self.echoes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|&&t| since.is_none_or(|s| t > s))
            .count()
    }
}

// ---- max_connections ----

#[test]
fn a_tunnel_keeps_its_place_in_max_connections() {
    /// Probes of alpha's place while the tunnel is open, a second apart.
    const PROBES: usize = 3;
    const ACTIVE: &str = "lb_l7_active_connections{tenant=\"alpha\"}";
    let world = World::start_with(|config| {
        let limited = config.replacen(
            "name = \"alpha\"\n",
            "name = \"alpha\"\n[tenant.limits]\nmax_connections = 1\n",
            1,
        );
        assert_ne!(limited, config, "alpha's [[tenant]] in lb.toml:\n{config}");
        limited
    });
    let listener_open = format!("lb_l7_listener_open_connections{{listener=\"{LISTEN}\"}}");
    let tunnel = Tunnel::open(&world);
    let since = Instant::now();
    for probe in 0..PROBES {
        // The upgrade's HTTP exchange is over: only the tunnel holds
        // alpha's place, and it must not give it up.
        std::thread::sleep(Duration::from_secs(1));
        let pki = world.pki.clone();
        world.client(move || async move {
            let refused = tokio::time::timeout(
                STEP,
                tls_connect(LISTEN, "alpha.example", &pki.alpha, &[b"http/1.1"]),
            )
            .await
            .expect("lbd answers the connection in time");
            assert!(
                refused.is_err(),
                "probe {probe}: a second connection of alpha completed its handshake while \
                 alpha's tunnel holds its max_connections = 1"
            );
            let beta = client::get(LISTEN, "beta.example", &pki.beta, "/", &[]).await;
            assert_eq!(beta.status, StatusCode::OK, "beta meanwhile: {beta}");
        });
        // The tunnel is alpha's connection in the counts too.
        world.wait_for_metric(ACTIVE, |v| (v - 1.0).abs() < 0.5);
        world.wait_for_metric(&listener_open, |v| v >= 1.0);
    }
    let echoes = tunnel.echoes_since(Some(since));
    assert!(
        echoes >= PROBES,
        "{echoes} echoes of the tunnel during {PROBES} probes"
    );

    // Closing the tunnel gives the place back (lbd notices the close
    // asynchronously: poll, bounded).
    tunnel.close();
    let pki = world.pki.clone();
    let served_after = world.client(move || async move {
        let closed = Instant::now();
        loop {
            if let Ok(mut conn) =
                client::Conn::open(LISTEN, "alpha.example", &pki.alpha, client::Http::H1).await
            {
                let req = conn.get("alpha.example", "/", &[]);
                if let Ok(reply) = conn.send(req).await {
                    assert_eq!(reply.status, StatusCode::OK, "{reply}");
                    break closed.elapsed();
                }
            }
            assert!(
                closed.elapsed() < STEP,
                "no connection of alpha served within {STEP:?} of its tunnel's close"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    eprintln!("alpha served again {served_after:?} after its tunnel closed");
    world.wait_for_metric(ACTIVE, |v| v.abs() < 0.5);
    let refusals = world
        .access_log()
        .iter()
        .filter(|l| {
            l["tenant"] == "alpha"
                && l["decision"] == "connection_limit"
                && l["rule"] == "limits.max_connections"
        })
        .count();
    assert!(
        refusals >= PROBES,
        "{refusals} connection_limit lines of alpha in the access log, not {PROBES}"
    );
}

// ---- Stops ----

/// After `lbd` `i` was asked to stop (a successor took over, or SIGTERM),
/// with `tunnel` open through it: it drains for the drain timeout while
/// the tunnel keeps echoing, then exits by itself, and the tunnel ends
/// with it.
fn drains_for_the_tunnel(world: &mut World, i: usize, tunnel: Tunnel, stop: &str) {
    let deadline = Instant::now() + TAKEOVER_LIMIT;
    let drain_line = loop {
        if let Some(line) = world.lbd(i).log().lines().find(|l| l.contains(DRAINING)) {
            break line.to_owned();
        }
        if let Some(status) = world.lbd(i).exited() {
            panic!(
                "{stop}: lbd {i} exited ({status}) without draining the tunnel:\n{}",
                world.lbd(i).log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{stop}: lbd {i} did not start draining within {TAKEOVER_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let drain_start = Instant::now();
    assert!(
        drain_line.contains("connections=1"),
        "{stop}: lbd {i} drains other than the one tunnel: {drain_line}"
    );

    // Well into the drain: still running, the tunnel still echoing.
    std::thread::sleep(WELL_INTO_THE_DRAIN);
    assert!(
        world.lbd(i).exited().is_none(),
        "{stop}: lbd {i} exited {:?} into its drain with a tunnel open",
        drain_start.elapsed()
    );
    let during = tunnel.echoes_since(Some(drain_start));
    assert!(
        during >= 4,
        "{stop}: {during} echoes in the first {:?} of the drain",
        drain_start.elapsed()
    );

    let status = world
        .lbd(i)
        .wait_exit((DRAIN_TIMEOUT + EXIT_SLACK).saturating_sub(drain_start.elapsed()))
        .unwrap_or_else(|| {
            panic!("{stop}: lbd {i} still runs {DRAIN_TIMEOUT:?} + {EXIT_SLACK:?} into its drain")
        });
    let exited = drain_start.elapsed();
    assert!(status.success(), "{stop}: lbd {i} exited with {status}");
    assert!(
        exited >= DRAIN_END_EARLIEST,
        "{stop}: lbd {i} exited {exited:?} into its drain of {DRAIN_TIMEOUT:?}"
    );
    let log = world.lbd(i).log();
    assert!(
        log.lines()
            .any(|l| l.contains(CUT) && l.contains("connections=1")),
        "{stop}: lbd {i} did not say it cut the tunnel:\n{}",
        world.lbd(i).log_tail()
    );

    let (ended, why) = join(tunnel.handle);
    let echoes: Vec<Instant> = tunnel
        .echoes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let last = echoes.last().copied().expect("echoes");
    assert!(
        last > drain_start + WELL_INTO_THE_DRAIN,
        "{stop}: the last echo came {:?} into the drain of {DRAIN_TIMEOUT:?}",
        last - drain_start
    );
    assert!(
        ended >= drain_start + DRAIN_END_EARLIEST,
        "{stop}: the tunnel ended ({why}) {:?} into the drain, before its timeout",
        ended - drain_start
    );
    eprintln!(
        "{stop}: lbd {i} exited {exited:?} into its drain; {} echoes during it; the tunnel \
         ended {:?} into it: {why}",
        echoes.iter().filter(|&&t| t > drain_start).count(),
        ended - drain_start
    );
}

#[test]
fn a_tunnel_lives_through_a_stop_until_the_drain_timeout() {
    let mut world = World::start();

    let tunnel = Tunnel::open(&world);
    let second = world.start_lbd();
    drains_for_the_tunnel(&mut world, 0, tunnel, "hand-off");
    world.lbd(second).assert_running();

    let tunnel = Tunnel::open(&world);
    world.lbd(second).signal(libc::SIGTERM);
    drains_for_the_tunnel(&mut world, second, tunnel, "SIGTERM");
}
