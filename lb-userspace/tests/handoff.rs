//! The restart hand-off of `lbd` when it goes wrong, end to end in the L7
//! world of `tests/l7.rs` (three tenants on one HTTPS address).
//!
//! * `a_successor_that_dies_before_confirming_leaves_the_old_lbd_serving`:
//!   new `lbd`s that exit in the middle of the hand-off (the test hook
//!   `LB_TEST_HANDOFF_ABORT`: right after receiving the sockets, and after
//!   a full start but before confirming it) leave the running one serving,
//!   with its admin API, while clients open a new TLS connection for every
//!   request: not one connection is refused or fails. A real successor
//!   takes over afterwards.
//! * `a_silent_hand_off_client_does_not_delay_the_admin_api`: a client that
//!   connects to the hand-off socket (mode 0600) and sends nothing does not
//!   hold up `lbctl status`, and does not keep a successor from taking
//!   over.
//!
//! Needs root (namespaces, BPF).

#[path = "common/l7/mod.rs"]
#[expect(
    dead_code,
    reason = "the shared L7 harness: these tests use its world, daemon and TLS client, not \
              every helper"
)]
mod l7;

use std::{
    os::unix::fs::PermissionsExt as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use http::StatusCode;
use l7::{
    client::{Conn, Http},
    world::{LISTEN, World, join},
};
use rustls::pki_types::CertificateDer;

/// The longest the whole load may run.
const LOAD_LIMIT: Duration = Duration::from_secs(90);
/// Requests the load sends between two steps of a test, at least.
const PER_STEP: usize = 40;
/// How long a failing successor gets to exit, and a replaced `lbd` to
/// drain and exit.
const EXIT_LIMIT: Duration = Duration::from_mins(1);
/// The exit status of an `lbd` stopped by the test hook.
const HOOK_EXIT: i32 = 3;

/// Counts of the load's requests; `stop` ends it.
#[derive(Default)]
struct Load {
    done: AtomicUsize,
    stop: AtomicUsize,
}

impl Load {
    /// Waits until `n` more requests than now have finished.
    fn wait_for_more(
        &self,
        n: usize,
        handle: &std::thread::JoinHandle<anyhow::Result<Vec<String>>>,
    ) {
        let target = self.done.load(Relaxed) + n;
        let deadline = Instant::now() + LOAD_LIMIT;
        while self.done.load(Relaxed) < target {
            assert!(!handle.is_finished(), "the load stopped early");
            assert!(Instant::now() < deadline, "the load does not progress");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `senders` clients, each opening a new TLS connection to alpha for every
/// request, until `load.stop` is set (or [`LOAD_LIMIT`]). Returns every
/// failure (a refused connection, a failed handshake, a status not 200).
async fn run_load(senders: usize, ca: CertificateDer<'static>, load: Arc<Load>) -> Vec<String> {
    let deadline = Instant::now() + LOAD_LIMIT;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let (ca, load) = (ca.clone(), Arc::clone(&load));
        tasks.spawn(async move {
            let mut failures = Vec::new();
            while load.stop.load(Relaxed) == 0 && Instant::now() < deadline {
                match fresh_get(&ca).await {
                    Ok(StatusCode::OK) => {}
                    Ok(status) => failures.push(format!("status {status}")),
                    Err(e) => failures.push(e),
                }
                let n = load.done.fetch_add(1, Relaxed) + 1;
                if !failures.is_empty() && failures.len() < 3 {
                    eprintln!("request {n} failed: {failures:?}");
                }
            }
            failures
        });
    }
    let mut all = Vec::new();
    while let Some(failures) = tasks.join_next().await {
        all.extend(failures.expect("a load task panicked"));
    }
    all
}

/// A GET of alpha's `/` on a new TLS connection.
async fn fresh_get(ca: &CertificateDer<'static>) -> Result<StatusCode, String> {
    let mut conn = Conn::open(LISTEN, "alpha.example", ca, Http::H1)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = conn.get("alpha.example", "/", &[]);
    conn.send(req)
        .await
        .map(|r| r.status)
        .map_err(|e| format!("request: {e:?}"))
}

/// Polls `f` every 50 ms until it holds, failing after `limit`.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lbctl status` against the world's admin socket: its pid, and how long
/// it took.
fn status_pid(world: &World) -> (u64, Duration) {
    try_status_pid(world).unwrap_or_else(|e| panic!("{e}"))
}

fn try_status_pid(world: &World) -> Result<(u64, Duration), String> {
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .arg("--socket")
        .arg(world.dir.join("admin.sock"))
        .args(["--json", "status"])
        .output()
        .expect("running lbctl");
    let took = started.elapsed();
    if !out.status.success() {
        return Err(format!("lbctl status: {out:?}"));
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    let pid = status["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {status}"));
    Ok((pid, took))
}

#[test]
fn a_successor_that_dies_before_confirming_leaves_the_old_lbd_serving() {
    let mut world = World::start();
    let load = Arc::new(Load::default());
    let handle = world.spawn_client({
        let (ca, load) = (world.pki.alpha.clone(), Arc::clone(&load));
        move || run_load(3, ca, load)
    });
    load.wait_for_more(PER_STEP, &handle);
    let (first_pid, _) = status_pid(&world);

    for (i, hook) in ["after_receive", "before_confirm"].into_iter().enumerate() {
        let failing = world.start_lbd_with_env(&[("LB_TEST_HANDOFF_ABORT", hook)]);
        let status = world.lbd(failing).wait_exit(EXIT_LIMIT);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(HOOK_EXIT),
            "the successor with {hook} must exit through the hook:\n{}",
            world.lbd(failing).log_tail()
        );
        world.lbd(0).assert_running();
        load.wait_for_more(PER_STEP, &handle);
        world.lbd(0).assert_running();
        // The old lbd still owns its control plane.
        let (pid, _) = status_pid(&world);
        assert_eq!(
            pid, first_pid,
            "the admin API is still the first lbd's after attempt {i} ({hook})"
        );
        let log = world.lbd(0).log_tail();
        assert!(
            log.contains("hand-off abandoned; this lbd keeps serving"),
            "the first lbd says why it keeps serving ({hook}):\n{log}"
        );
    }

    // A real successor still takes over.
    let second = world.start_lbd();
    let status = world
        .lbd(0)
        .wait_exit(EXIT_LIMIT)
        .expect("the first lbd must hand over to a real successor, drain and exit");
    assert!(status.success(), "the first lbd exited with {status}");
    load.wait_for_more(PER_STEP, &handle);
    load.stop.store(1, Relaxed);
    let failures = join(handle);
    world.lbd(second).assert_running();
    // The successor's admin API answers.
    wait_for("the successor's admin API", Duration::from_secs(10), || {
        try_status_pid(&world).is_ok_and(|(pid, _)| pid != first_pid)
    });
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the failed and the real hand-offs: {failures:?}",
        failures.len(),
        load.done.load(Relaxed)
    );
}

#[test]
fn a_silent_hand_off_client_does_not_delay_the_admin_api() {
    let mut world = World::start();
    let path = world.dir.join("state").join("lbd.handoff.sock");
    let mode = std::fs::metadata(&path)
        .expect("the hand-off socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the hand-off socket's mode");

    let (first_pid, _) = status_pid(&world);
    let _silent = std::os::unix::net::UnixStream::connect(&path).expect("connecting");
    // Let lbd accept it and start waiting for its request.
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let (pid, took) = status_pid(&world);
        assert_eq!(pid, first_pid);
        assert!(
            took < Duration::from_secs(2),
            "lbctl status took {took:?} while a hand-off client sends nothing"
        );
    }

    // A successor is not held up by the silent client either.
    let second = world.start_lbd();
    let status = world
        .lbd(0)
        .wait_exit(EXIT_LIMIT)
        .expect("the first lbd must hand over, drain and exit");
    assert!(status.success(), "the first lbd exited with {status}");
    world.lbd(second).assert_running();
    wait_for(
        "the successor's hand-off socket",
        Duration::from_secs(10),
        || std::fs::metadata(&path).is_ok(),
    );
    let mode = std::fs::metadata(&path)
        .expect("the successor's hand-off socket")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the successor's hand-off socket's mode"
    );
}
