//! Slow clients of one tenant do not starve another: while
//! `slowhttptest` attacks tenant alpha's HTTPS site in one of its three
//! modes, tenant beta sends a steady HTTPS load through the same listener.
//!
//! * `slowloris_against_alpha_leaves_beta_whole`: `-H`, request heads sent
//!   a header line at a time; alpha's `timeouts.header` closes them.
//! * `slow_bodies_against_alpha_leave_beta_whole`: `-B`, POST bodies sent a
//!   few bytes at a time; alpha's `timeouts.request` answers 408 and closes.
//! * `slow_readers_against_alpha_leave_beta_whole`: `-X`, pipelined GETs
//!   whose responses are read a few bytes at a time through a tiny TCP
//!   window. The answers fit in the kernel's socket buffers, so lbd has
//!   written them all and the connection is idle: alpha's `timeouts.idle`
//!   closes it with a reset, since its answers are still unread. (A client
//!   that takes nothing at all is closed by `timeouts.send`.)
//!
//! Each test measures beta's latency alone first (the baseline), then
//! during the attack, in the same world, and asserts:
//! * beta loses no request (every one 200, none refused or cut);
//! * beta's p99 during the attack is at most twice its baseline p99 (or
//!   [`P99_FLOOR`], whichever is larger: below it, on this two-core machine,
//!   scheduler noise rather than lbd decides);
//! * every slow connection is closed within its timeout plus 2 s:
//!   `slowhttptest`'s per-second statistics (its CSV) show no connection
//!   still open once the last one was opened more than that long ago.
//!
//! `slowhttptest` (Debian package, installed by the bootstrap) runs inside
//! the client namespace against the listener; the attack's connections are
//! bounded in count (`-c`) and time (`-l`), the steady load in count.

#[path = "common/l7/mod.rs"]
#[expect(
    dead_code,
    reason = "the shared L7 harness: these tests use its world and TLS client, not every helper"
)]
mod l7;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use l7::{
    client::{Conn, Http},
    world::{LISTEN, World},
};

/// Alpha's timeouts in these tests (the attack's limits).
const HEADER: Duration = Duration::from_secs(2);
const REQUEST: Duration = Duration::from_secs(3);
const SEND: Duration = Duration::from_secs(3);
const IDLE: Duration = Duration::from_secs(5);
/// Slack allowed past a timeout before a slow connection must be closed.
const SLACK: Duration = Duration::from_secs(2);
/// Connections of the attack, opened at `RATE` per second.
const CONNECTIONS: u32 = 150;
const RATE: u32 = 75;
/// How long the attack runs: past the last connection's open (2 s) and
/// the longest limit (`IDLE`) plus `SLACK`, so that the statistics show
/// them all closed.
const ATTACK: Duration = Duration::from_secs(12);
/// Beta's steady load: one request every `PACE` on each of `STREAMS`
/// keep-alive connections.
const STREAMS: usize = 4;
const PACE: Duration = Duration::from_millis(20);
/// How long beta's baseline is measured.
const BASELINE: Duration = Duration::from_secs(4);
/// The p99 below which a doubling is noise, not starvation.
const P99_FLOOR: Duration = Duration::from_millis(25);

/// The world with short timeouts on every site of the shared listener
/// (alpha's decide the attack; the others' must not lengthen the
/// listener's), and alpha as the default tenant, so that the attack needs
/// no name resolution.
fn world() -> World {
    let timeouts = format!(
        "timeouts = {{ connect = \"1s\", header = \"{}s\", idle = \"{}s\", request = \"{}s\", send = \"{}s\" }}",
        HEADER.as_secs(),
        IDLE.as_secs(),
        REQUEST.as_secs(),
        SEND.as_secs()
    );
    World::start_with(move |config| {
        let out = l7::world::timeouts_everywhere(&config, &timeouts);
        format!("{out}\n[[listener]]\naddress = \"{LISTEN}\"\ndefault_tenant = \"alpha\"\n")
    })
}

/// Beta's latencies over `how_long`, and its failures.
#[derive(Debug, Default)]
struct Load {
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

impl Load {
    fn p99(&mut self) -> Duration {
        self.latencies.sort();
        let i = (self.latencies.len() * 99).div_ceil(100).saturating_sub(1);
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

/// Beta's steady load for `how_long`, from the client namespace.
fn beta_load(world: &World, how_long: Duration) -> std::thread::JoinHandle<anyhow::Result<Load>> {
    let ca = world.pki.beta.clone();
    world.spawn_client(move || async move {
        let mut tasks = Vec::new();
        for stream in 0..STREAMS {
            let ca = ca.clone();
            tasks.push(tokio::spawn(async move {
                let mut load = Load::default();
                let mut conn = match Conn::open(LISTEN, "beta.example", &ca, Http::H1).await {
                    Ok(c) => c,
                    Err(e) => {
                        load.failures.push(format!("stream {stream}: connect: {e}"));
                        return load;
                    }
                };
                let end = Instant::now() + how_long;
                let mut tick = tokio::time::interval(PACE);
                let mut i = 0u64;
                while Instant::now() < end {
                    tick.tick().await;
                    i += 1;
                    let req = conn.get("beta.example", &format!("/?s={stream}&i={i}"), &[]);
                    let started = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(5), conn.send(req)).await {
                        Ok(Ok(r)) if r.status == http::StatusCode::OK => {
                            load.latencies.push(started.elapsed());
                        }
                        Ok(Ok(r)) => load.failures.push(format!("stream {stream} #{i}: {r}")),
                        Ok(Err(e)) => {
                            load.failures.push(format!("stream {stream} #{i}: {e:?}"));
                            break;
                        }
                        Err(_) => {
                            load.failures
                                .push(format!("stream {stream} #{i}: no answer in 5 s"));
                            break;
                        }
                    }
                }
                load
            }));
        }
        let mut all = Load::default();
        for t in tasks {
            let l = t.await.expect("a load task");
            all.latencies.extend(l.latencies);
            all.failures.extend(l.failures);
        }
        all
    })
}

/// One per-second row of slowhttptest's CSV: seconds, closed, pending,
/// connected.
#[derive(Debug, Clone, Copy)]
struct Row {
    second: u64,
    pending: u64,
    connected: u64,
}

/// Established connections to the listener, seen from the LB namespace,
/// sampled every 250 ms while `slowhttptest` runs: (seconds since it
/// started, how many).
type Samples = Vec<(f64, usize)>;

fn established(world: &World) -> usize {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", world.lb_netns().display()))
        .args(["ss", "-Htn", "state", "established"])
        .arg(format!("( sport = :{} )", LISTEN.port()))
        .output()
        .expect("ss in the LB namespace");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Runs slowhttptest in the client namespace with `mode` and extra
/// arguments; returns its per-second rows and the server-side samples.
fn slowhttptest(world: &World, mode: &str, extra: &[&str]) -> (Vec<Row>, Samples) {
    let prefix = world.dir.join(format!("slow{mode}"));
    // The slow bodies go to a backend path that reads them.
    let path = if mode == "-B" { "upload" } else { "" };
    let url = format!("https://{}:{}/{path}", LISTEN.ip(), LISTEN.port());
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", world.client_netns().display()))
        .arg("slowhttptest")
        .arg(mode)
        .args(["-c", &CONNECTIONS.to_string()])
        .args(["-r", &RATE.to_string()])
        .args(["-l", &ATTACK.as_secs().to_string()])
        .args(["-i", "1"])
        .args(["-p", "2"])
        .args(["-u", &url])
        .args(["-g", "-o"])
        .arg(&prefix)
        .args(extra);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!("running slowhttptest (is it installed? the bootstrap installs it): {e}")
    });
    let mut samples = Vec::new();
    // Bounded: slowhttptest ends by itself after `-l` seconds.
    while started.elapsed() < ATTACK + Duration::from_secs(1) {
        samples.push((started.elapsed().as_secs_f64(), established(world)));
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = child.wait_with_output().expect("slowhttptest's output");
    let csv_path = PathBuf::from(format!("{}.csv", prefix.display()));
    let csv = std::fs::read_to_string(&csv_path).unwrap_or_else(|e| {
        panic!(
            "slowhttptest wrote no {} ({e}); it said:\n{}\n{}",
            csv_path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (parse_csv(&csv), samples)
}

/// `Seconds,Closed,Pending,Connected,Service Available` rows.
fn parse_csv(csv: &str) -> Vec<Row> {
    csv.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split(',')
                .take(4)
                .map(|x| x.trim().parse().ok())
                .collect::<Option<_>>()?;
            (f.len() == 4).then(|| Row {
                second: f[0],
                pending: f[2],
                connected: f[3],
            })
        })
        .collect()
}

/// Asserts that no slow connection outlived `limit` + [`SLACK`], as lbd's
/// side of the sockets shows: once every attack connection has been
/// opened (by second `CONNECTIONS / RATE`, +1 for rounding) and
/// `limit + SLACK` more have passed, only beta's connections (and
/// slowhttptest's probe, at most two) are still established.
/// slowhttptest's own "connected" count is not used for that: a slow
/// reader notices a reset only at its next read.
fn assert_closed_in_time(rows: &[Row], samples: &Samples, limit: Duration, mode: &str) {
    let most = rows.iter().map(|r| r.connected).max().unwrap_or(0);
    assert!(
        most >= u64::from(CONNECTIONS) / 2,
        "{mode}: slowhttptest had at most {most} connections open, the attack did not happen: {rows:?}"
    );
    let peak = samples.iter().map(|&(_, n)| n).max().unwrap_or(0);
    assert!(
        peak >= usize::try_from(CONNECTIONS / 2).unwrap_or(usize::MAX),
        "{mode}: lbd never held the attack's connections: {samples:?}"
    );
    let opened_by = f64::from(CONNECTIONS.div_ceil(RATE) + 1);
    let closed_by = opened_by + (limit + SLACK).as_secs_f64();
    assert!(
        samples.iter().any(|&(t, _)| t >= closed_by),
        "{mode}: no sample after {closed_by} s: {samples:?}"
    );
    let late: Vec<&(f64, usize)> = samples
        .iter()
        .filter(|&&(t, n)| t >= closed_by && n > STREAMS + 2)
        .collect();
    assert!(
        late.is_empty(),
        "{mode}: connections still established at {late:?} (seconds, count), past {closed_by} s \
         (all opened by {opened_by} s, each to close within {limit:?} + {SLACK:?}); all samples: {samples:?}"
    );
}

/// The whole test for one attack.
fn under_attack(mode: &str, extra: &[&str], limit: Duration) {
    let world = world();
    let mut baseline = l7::world::join(beta_load(&world, BASELINE));
    assert!(
        baseline.failures.is_empty(),
        "beta failed alone: {:?}",
        baseline.failures
    );
    let base_p99 = baseline.p99();

    let load = beta_load(&world, ATTACK);
    let (rows, samples) = slowhttptest(&world, mode, extra);
    let mut during = l7::world::join(load);
    let p99 = during.p99();
    eprintln!(
        "{mode}: beta p99 {base_p99:?} alone, {p99:?} under attack ({} and {} requests)",
        baseline.latencies.len(),
        during.latencies.len()
    );
    assert!(
        during.failures.is_empty(),
        "{mode}: beta lost requests under the attack: {:?}",
        during.failures
    );
    assert!(
        during.latencies.len() > 100,
        "{mode}: beta sent too few requests to judge: {}",
        during.latencies.len()
    );
    let allowed = (base_p99 * 2).max(P99_FLOOR);
    assert!(
        p99 <= allowed,
        "{mode}: beta's p99 rose from {base_p99:?} to {p99:?} (allowed {allowed:?})"
    );
    assert_closed_in_time(&rows, &samples, limit, mode);
}

/// The attacks share the machine's two cores with everything else: one at
/// a time, so that none measures another's load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serially(f: impl FnOnce()) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f();
}

#[test]
fn slowloris_against_alpha_leaves_beta_whole() {
    serially(|| under_attack("-H", &["-x", "24"], HEADER));
}

#[test]
fn slow_bodies_against_alpha_leave_beta_whole() {
    serially(|| under_attack("-B", &["-s", "100000", "-x", "10"], REQUEST));
}

#[test]
fn slow_readers_against_alpha_leave_beta_whole() {
    serially(|| {
        under_attack(
            "-X",
            &["-k", "8", "-w", "16", "-y", "32", "-n", "2", "-z", "16"],
            // The answers fit in the kernel's buffers, so lbd has
            // written them all and the connection is idle: the idle
            // timeout closes it (with a reset: its answers are unread).
            IDLE,
        );
    });
}

#[test]
fn csv_rows_parse() {
    let rows =
        parse_csv("Seconds,Closed,Pending,Connected,Service Available\n0,0,10,0,1\n1,2,0,8,1\n");
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[1].second, rows[1].pending, rows[1].connected),
        (1, 0, 8)
    );
}
