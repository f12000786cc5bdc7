//! `cargo xtask fuzz [TARGET] [--time S] [--jobs N]`: builds the cargo-fuzz
//! targets in `fuzz/` once, then runs each for a bounded time, `jobs` at a
//! time, and fails on the first crash with its reproducer's path.
//!
//! Each run grows a working corpus in `fuzz/work/TARGET/` (ignored by git)
//! from the committed seeds in `fuzz/corpus/TARGET/`, which libFuzzer only
//! reads, so a run never rewrites the committed files. Its output goes to
//! `fuzz/work/TARGET.log`, since two fuzzers writing to one terminal
//! interleave beyond reading.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};

/// Every target in `fuzz/Cargo.toml`, in the order they run.
pub const TARGETS: [&str; 6] = [
    "client_hello",
    "proxy_v2",
    "config",
    "config_structured",
    "admin_request",
    "request_head",
];

/// How the targets are built and run. `-s none`: the fuzzed code is safe
/// Rust, where `AddressSanitizer` has nothing to find that a bounds check
/// does not already turn into a panic, and it would make the build and
/// every execution slower. `-a`: debug assertions and overflow checks, so
/// that an arithmetic overflow on a length field is a crash, not a wrap.
const FLAGS: [&str; 3] = ["-s", "none", "-a"];

/// A fuzzer that is still running, in a process group of its own so that
/// stopping it stops cargo-fuzz and the fuzzing binary it started.
struct Running {
    target: &'static str,
    child: Child,
    started: SystemTime,
    log: PathBuf,
}

impl Running {
    /// SIGTERM to the whole group, then SIGKILL if it lingers.
    fn stop(&mut self) {
        let Ok(pgid) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) with a negative pid signals the process group
        // this process created for the child; it touches no memory.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn fuzz_dir() -> PathBuf {
    super::root().join("fuzz")
}

/// Where the fuzz crate builds: `fuzz/` under the workspace's target
/// directory (`CARGO_TARGET_DIR` when set), so that it is ignored and
/// cleaned like every other build.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| super::root().join("target"), PathBuf::from)
        .join("fuzz")
}

/// `cargo fuzz ...` on nightly ([`super::nightly_cargo`]) in `fuzz/`.
fn cargo_fuzz() -> Command {
    let mut cmd = super::nightly_cargo();
    cmd.arg("fuzz")
        .current_dir(fuzz_dir())
        .env("CARGO_TARGET_DIR", target_dir());
    cmd
}

/// Runs `targets` (all when empty) for `seconds` each, `jobs` at a time.
pub fn run(target: Option<&str>, seconds: u64, jobs: usize) -> anyhow::Result<()> {
    let targets: Vec<&'static str> = match target {
        None => TARGETS.to_vec(),
        Some(name) => match TARGETS.iter().find(|t| **t == name) {
            Some(t) => vec![*t],
            None => bail!("no fuzz target {name}; the targets: {}", TARGETS.join(", ")),
        },
    };
    let jobs = jobs.max(1);
    let started = Instant::now();
    println!(
        "==> fuzz: building the targets (nightly, cargo fuzz build {})",
        FLAGS.join(" ")
    );
    let status = cargo_fuzz()
        .arg("build")
        .args(FLAGS)
        .status()
        .context("could not start `cargo fuzz` (run `cargo xtask bootstrap`)")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    println!(
        "==> fuzz: built in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // Fails only when a handler is already installed: then that one
        // decides, and the fuzzers still stop at their time limit.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let mut queue = targets.into_iter();
    let mut running: Vec<Running> = Vec::new();
    let failure = loop {
        if stop.load(Ordering::SeqCst) {
            break Some("interrupted".to_owned());
        }
        while running.len() < jobs {
            let Some(t) = queue.next() else { break };
            match start(t, seconds) {
                Ok(r) => running.push(r),
                Err(e) => {
                    for r in &mut running {
                        r.stop();
                    }
                    return Err(e);
                }
            }
        }
        if running.is_empty() {
            break None;
        }
        let mut failed = None;
        let mut i = 0;
        while i < running.len() {
            match running[i].child.try_wait() {
                Ok(None) => i += 1,
                Ok(Some(status)) => {
                    let r = running.swap_remove(i);
                    if let Err(e) = finished(&r, status) {
                        failed = Some(format!("{e:#}"));
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(format!("waiting for the fuzzer: {e}"));
                    break;
                }
            }
        }
        if failed.is_some() {
            break failed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in &mut running {
        r.stop();
    }
    if let Some(why) = failure {
        bail!("fuzz: {why}");
    }
    println!(
        "==> fuzz: every target ran {seconds} s without a crash ({:.0} s in all)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts one fuzzer for `seconds`, its output to `fuzz/work/TARGET.log`.
fn start(target: &'static str, seconds: u64) -> anyhow::Result<Running> {
    let work = fuzz_dir().join("work").join(target);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let log = fuzz_dir().join("work").join(format!("{target}.log"));
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log file")?;
    println!("==> fuzz {target} ({seconds} s; log {})", log.display());
    let child = cargo_fuzz()
        .arg("run")
        .args(FLAGS)
        .arg(target)
        .arg(&work)
        .arg(Path::new("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes over 10 s or 2 GiB is a hang or a leak:
        // reported like a crash, with its reproducer.
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("could not start the fuzzer for {target}"))?;
    Ok(Running {
        target,
        child,
        started: SystemTime::now(),
        log,
    })
}

/// Reports a finished fuzzer: its executions, or the crash and where its
/// reproducer is.
fn finished(r: &Running, status: ExitStatus) -> anyhow::Result<()> {
    let log = fs::read_to_string(&r.log).unwrap_or_default();
    if status.success() {
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map_or("?", str::trim);
        println!("==> fuzz {}: ok, {runs} executions", r.target);
        return Ok(());
    }
    // The panic and its message, then the end of the log without the
    // backtrace's frames (libFuzzer's summary and the failing input).
    let lines: Vec<&str> = log.lines().collect();
    if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
        for line in lines.iter().skip(at).take(4) {
            println!("    {line}");
        }
    }
    let frame = |l: &&str| {
        let t = l.trim_start();
        t.starts_with("at ")
            || t.split_once(':')
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    };
    let tail: Vec<&str> = lines
        .iter()
        .rev()
        .filter(|l| !frame(l))
        .take(30)
        .copied()
        .collect();
    for line in tail.iter().rev() {
        println!("    {line}");
    }
    let artifacts = new_artifacts(r.target, r.started);
    if artifacts.is_empty() {
        bail!(
            "fuzz target {} failed ({status}) without a reproducer; its log: {}",
            r.target,
            r.log.display()
        );
    }
    let list: Vec<String> = artifacts.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "fuzz target {} crashed ({status}); reproducer: {}\n  reproduce: cd fuzz && cargo +nightly fuzz run {} {} {}\n  then fix it and commit the file under fuzz/regressions/{}/ (cargo test runs it)",
        r.target,
        list.join(", "),
        FLAGS.join(" "),
        r.target,
        list[0],
        if r.target == "config_structured" {
            "config"
        } else {
            r.target
        },
    )
}

/// The files cargo-fuzz wrote to `fuzz/artifacts/TARGET/` since `since`.
fn new_artifacts(target: &str, since: SystemTime) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("artifacts").join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m >= since)
        })
        .map(|e| e.path())
        .collect()
}
