//! Slow clients of one tenant do not starve another (issue 10): while
//! `slowhttptest` attacks tenant alpha's HTTPS site in one of its three
//! modes, tenant beta sends a steady HTTPS load through the same listener.
//!
//! * `slowloris_against_alpha_leaves_beta_whole`: `-H`, request heads sent
//!   a header line at a time; alpha's `timeouts.header` closes them.
//! * `slow_bodies_against_alpha_leave_beta_whole`: `-B`, POST bodies sent a
//!   few bytes at a time; alpha's `timeouts.request` answers 408 and closes.
//! * `slow_readers_against_alpha_leave_beta_whole`: `-X`, pipelined GETs
//!   whose responses are read a few bytes at a time through a tiny TCP
//!   window; alpha's `timeouts.send` abandons them.
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
/// Slack allowed past a timeout before a slow connection must be closed.
const SLACK: Duration = Duration::from_secs(2);
/// Connections of the attack, opened at `RATE` per second.
const CONNECTIONS: u32 = 150;
const RATE: u32 = 75;
/// How long the attack runs.
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
        "timeouts = {{ connect = \"1s\", header = \"{}s\", idle = \"10s\", request = \"{}s\", send = \"{}s\" }}",
        HEADER.as_secs(),
        REQUEST.as_secs(),
        SEND.as_secs()
    );
    World::start_with(move |config| {
        let listen_line = format!("listen = \"{LISTEN}\"");
        let mut out = String::new();
        for line in config.lines() {
            if line.starts_with("timeouts = ") {
                // alpha's own: replaced by the one below.
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if line == listen_line {
                out.push_str(&timeouts);
                out.push('\n');
            }
        }
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

/// Runs slowhttptest in the client namespace with `mode` and extra
/// arguments; returns its per-second rows.
fn slowhttptest(world: &World, mode: &str, extra: &[&str]) -> Vec<Row> {
    let prefix = world.dir.join(format!("slow{mode}"));
    let url = format!("https://{}:{}/", LISTEN.ip(), LISTEN.port());
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
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("running slowhttptest (is it installed? the bootstrap installs it): {e}")
    });
    let csv_path = PathBuf::from(format!("{}.csv", prefix.display()));
    let csv = std::fs::read_to_string(&csv_path).unwrap_or_else(|e| {
        panic!(
            "slowhttptest wrote no {} ({e}); it said:\n{}\n{}",
            csv_path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    parse_csv(&csv)
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

/// Asserts that no slow connection outlived `limit` + [`SLACK`]: from the
/// second by which every connection was opened (`CONNECTIONS / RATE`,
/// plus the time the last one needed to be accepted) on, none is open
/// longer than that.
fn assert_closed_in_time(rows: &[Row], limit: Duration, mode: &str) {
    assert!(
        rows.iter().any(|r| r.connected > 0),
        "{mode}: slowhttptest never had a connection open: {rows:?}"
    );
    // The last connection is opened by second CONNECTIONS / RATE (+1 for
    // rounding); after limit + slack, it and every earlier one is closed.
    let opened_by = u64::from(CONNECTIONS.div_ceil(RATE)) + 1;
    let closed_by = opened_by + (limit + SLACK).as_secs();
    let late: Vec<&Row> = rows
        .iter()
        .filter(|r| r.second >= closed_by && r.connected + r.pending > 0)
        .collect();
    assert!(
        late.is_empty(),
        "{mode}: connections still open at {late:?}, past second {closed_by} \
         (all opened by second {opened_by}, closed within {limit:?} + {SLACK:?}); all rows: {rows:?}"
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
    let rows = slowhttptest(&world, mode, extra);
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
    assert_closed_in_time(&rows, limit, mode);
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
            SEND,
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
