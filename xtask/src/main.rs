//! `cargo xtask`: bootstrap, CI, the demo and the benchmarks.
//!
//! xtask compiles before anything is bootstrapped, so it depends on nothing
//! that needs the eBPF toolchain (no aya-build, no lb-ebpf, no lb-userspace):
//! it drives cargo and the built binaries instead.

mod demo;
mod demo_l7;
mod fuzz;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building the eBPF programs needs (idempotent): bpffs,
    /// rust-src for the nightly, llvm-22-dev, bpf-linker.
    Bootstrap,
    /// Everything CI checks: bootstrap, rustfmt, clippy (userspace and
    /// eBPF), unit tests, `BPF_PROG_TEST_RUN` tests, namespace end-to-end tests.
    Ci,
    /// The edit-compile-test loop, without root or BPF: rustfmt, clippy
    /// (userspace and eBPF), and the tests that need neither (unit tests,
    /// the config bounds and connection-cap tests on loopback). Needs the
    /// toolchain `cargo xtask bootstrap` installs.
    Check,
    /// A multi-tenant demo in network namespaces: two tenants, three
    /// backends each, a few hundred connections per VIP.
    Demo {
        /// Connections per tenant VIP.
        #[arg(long, default_value_t = 300)]
        connections: usize,
    },
    /// Runs the cargo-fuzz targets in `fuzz/` (nightly, libFuzzer), each for
    /// a bounded time, and fails on a crash with the reproducer's path.
    Fuzz {
        /// One target (`client_hello`, `proxy_v2`, `config`,
        /// `config_structured`, `admin_request`, `request_head`); all when
        /// left out.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Targets fuzzed at once (default: one per CPU).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// The soak: L4 TCP/UDP and L7 HTTPS load for two tenants in network
    /// namespaces while backends are killed, drained, a tenant is added and
    /// removed, certificates rotate and `lbd` is handed over and killed;
    /// checks failures, RSS, fds and counters. Writes results/soak.json.
    Soak {
        /// Length of the run (20 s cycles; at least 2 minutes are run).
        #[arg(long, default_value_t = 30)]
        minutes: u64,
    },
    /// Benchmarks; results go to `results/` (JSON) and are printed as tables.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Nanoseconds per packet of the balancer (established flow, new flow)
    /// under `BPF_PROG_TEST_RUN`, as ratios to an `XDP_DROP` floor.
    Xdp {
        /// Fewer iterations (a smoke run: the figures are noisy).
        #[arg(long)]
        quick: bool,
    },
    /// Packets per second through the balancer (ipip, l2dsr) next to an
    /// `XDP_TX` ceiling and nftables DNAT, and ns/packet inside the
    /// balancer for 1k, 100k and 1M live flows; live-frames generator in
    /// network namespaces. Writes results/bench-l4.{json,md,svg}.
    L4 {
        /// Tiny counts (a smoke run, under a minute: the figures are noisy).
        #[arg(long)]
        quick: bool,
    },
    /// Control-plane costs: Maglev build (M=65537 and 655373, 1000
    /// backends), ring write, applying and reloading 10,000 tenants (peak
    /// memory), health failure to removal.
    Control {
        /// 200 tenants instead of 10,000 (a smoke run).
        #[arg(long)]
        quick: bool,
    },
    /// lbd's L7 proxy next to nginx and `HAProxy` (two TLS tenants, one core
    /// each): HTTPS keep-alive requests/s and p50/p99 (HTTP/1.1 with wrk,
    /// h2 with h2load), full TLS 1.3 handshakes per second and per proxy
    /// CPU-second, memory per idle TLS connection. Installs nginx, haproxy,
    /// wrk and nghttp2-client when missing. Writes
    /// results/bench-l7.{json,md,svg}.
    L7 {
        /// Short windows, one round, 500 idle connections (a smoke run,
        /// under two minutes: the figures are noisy).
        #[arg(long)]
        quick: bool,
    },
    /// Tenant B's p50/p99 latency and throughput at a steady rate, alone
    /// and while tenant A floods, as ratios from one run: L4 (B's TCP
    /// exchanges through its XDP VIP while the live-frames generator
    /// floods A's VIP over A's packet and new-flow limits) and L7 (B's
    /// HTTPS requests through lbd while A sends 10x its request limit).
    /// Writes results/bench-isolation.{json,md,svg}.
    Isolation {
        /// Short windows, one round (a smoke run, under a minute: the
        /// figures are noisy).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Task::Bootstrap => bootstrap(),
        Task::Ci => ci(),
        Task::Check => check(),
        Task::Demo { connections } => {
            bootstrap()?;
            demo::run(connections)
        }
        Task::Fuzz { target, time, jobs } => {
            bootstrap()?;
            fuzz::run(target.as_deref(), time, jobs.unwrap_or_else(cpus))
        }
        Task::Soak { minutes } => {
            bootstrap()?;
            soak(minutes, "results/soak.json")
        }
        Task::Bench {
            bench: Bench::Xdp { quick },
        } => {
            bootstrap()?;
            bench_xdp(quick, "results/bench-xdp.json")
        }
        Task::Bench {
            bench: Bench::L4 { quick },
        } => {
            bootstrap()?;
            bench_l4(quick, "results/bench-l4.json")
        }
        Task::Bench {
            bench: Bench::Control { quick },
        } => {
            bootstrap()?;
            bench_control(quick, "results/bench-control.json")
        }
        Task::Bench {
            bench: Bench::L7 { quick },
        } => {
            bootstrap()?;
            bench_l7(quick, "results/bench-l7.json")
        }
        Task::Bench {
            bench: Bench::Isolation { quick },
        } => {
            bootstrap()?;
            bench_isolation(quick, "results/bench-isolation.json")
        }
    }
}

/// The workspace root (xtask's parent directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command in the workspace root, failing with its description.
fn run(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    println!("==> {what}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("{what}: could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Usable CPUs (1 when unknown).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn bootstrap() -> anyhow::Result<()> {
    run(
        "bootstrap (scripts/bootstrap.sh)",
        Command::new("bash").arg(root().join("scripts/bootstrap.sh")),
    )
}

/// Runs the soak (`lb-userspace/tests/soak.rs`, ignored by a plain
/// `cargo test`) for `minutes`, writing its JSON report to `out`.
fn soak(minutes: u64, out: &str) -> anyhow::Result<()> {
    let out = root().join(out);
    run(
        &format!("soak ({minutes} min)"),
        cargo()
            .args(["test", "-p", "lb-userspace", "--test", "soak", "--"])
            .args(["--ignored", "--exact", "soak", "--nocapture"])
            .env("LB_SOAK_MINUTES", minutes.to_string())
            .env("LB_SOAK_RESULTS", &out),
    )
}

/// Runs one benchmark: an example of the tests crate (it needs the eBPF
/// objects, so it is built after the bootstrap, unlike xtask), writing its
/// JSON to `out` (and, for some, a report next to it).
fn bench(example: &str, quick: bool, out: &str) -> anyhow::Result<()> {
    let out = root().join(out);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "lb-tests",
        "--example",
        example,
        "--",
    ])
    .arg("--out")
    .arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    run(&example.replace('_', " "), &mut cmd)
}

fn bench_xdp(quick: bool, out: &str) -> anyhow::Result<()> {
    bench("bench_xdp", quick, out)
}

fn bench_control(quick: bool, out: &str) -> anyhow::Result<()> {
    bench("bench_control", quick, out)
}

fn bench_l4(quick: bool, out: &str) -> anyhow::Result<()> {
    bench("bench_l4", quick, out)
}

/// The L7 bench runs `target/release/lbd` as one of its candidates.
fn bench_l7(quick: bool, out: &str) -> anyhow::Result<()> {
    run(
        "building lbd (release)",
        cargo().args(["build", "--release", "-p", "lb-userspace", "--bins"]),
    )?;
    bench("bench_l7", quick, out)
}

/// The isolation bench runs `target/release/lbd` for its L7 half.
fn bench_isolation(quick: bool, out: &str) -> anyhow::Result<()> {
    run(
        "building lbd (release)",
        cargo().args(["build", "--release", "-p", "lb-userspace", "--bins"]),
    )?;
    bench("bench_isolation", quick, out)
}

/// Smoke run of every benchmark: each completes and writes well-formed
/// results (no timing assertions).
fn bench_smoke() -> anyhow::Result<()> {
    bench_xdp(true, "target/bench-smoke/bench-xdp.json")?;
    let json = std::fs::read_to_string(root().join("target/bench-smoke/bench-xdp.json"))
        .context("reading the bench smoke results")?;
    for key in [
        "\"floor_ns\"",
        "\"established_ratio\"",
        "\"new_flow_ratio\"",
    ] {
        if !json.contains(key) {
            bail!("bench xdp smoke run: {key} missing from its results: {json}");
        }
    }
    bench_control(true, "target/bench-smoke/bench-control.json")?;
    let json = std::fs::read_to_string(root().join("target/bench-smoke/bench-control.json"))
        .context("reading the bench control smoke results")?;
    let v: serde_json::Value =
        serde_json::from_str(&json).context("bench control smoke run: its results are not JSON")?;
    for key in [
        "maglev_65537_ms",
        "first_apply_ms",
        "reload_apply_ms",
        "health_removal_s",
    ] {
        if !v[key].is_number() {
            bail!("bench control smoke run: {key} missing: {json}");
        }
    }
    bench_l4(true, "target/bench-smoke/bench-l4.json")?;
    let json = std::fs::read_to_string(root().join("target/bench-smoke/bench-l4.json"))
        .context("reading the bench l4 smoke results")?;
    let v: serde_json::Value =
        serde_json::from_str(&json).context("bench l4 smoke run: its results are not JSON")?;
    let rows = |key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len)
    };
    if rows("forwarding") != 4 || rows("ns_per_packet") < 3 {
        bail!("bench l4 smoke run: forwarding or ns_per_packet rows missing: {json}");
    }
    for key in ["ipip_vs_ceiling", "ipip_vs_nftables", "l2dsr_vs_ceiling"] {
        if !v["ratios"][key].is_number() {
            bail!("bench l4 smoke run: ratio {key} missing: {json}");
        }
    }
    for file in ["bench-l4.md", "bench-l4.svg"] {
        let path = root().join("target/bench-smoke").join(file);
        if !path.is_file() {
            bail!("bench l4 smoke run: {} was not written", path.display());
        }
    }
    bench_l7(true, "target/bench-smoke/bench-l7.json")?;
    check_l7_smoke(&root().join("target/bench-smoke"))?;
    bench_isolation(true, "target/bench-smoke/bench-isolation.json")?;
    check_isolation_smoke(&root().join("target/bench-smoke"))
}

/// The isolation smoke run's results: B's figures in both phases at both
/// layers, A's side, the ratios, and the report files.
fn check_isolation_smoke(dir: &Path) -> anyhow::Result<()> {
    let json = std::fs::read_to_string(dir.join("bench-isolation.json"))
        .context("reading the bench isolation smoke results")?;
    let v: serde_json::Value = serde_json::from_str(&json)
        .context("bench isolation smoke run: its results are not JSON")?;
    for key in [
        "/l4/b/phases/baseline/per_s",
        "/l4/b/phases/baseline/p99_ms",
        "/l4/b/phases/flood/per_s",
        "/l4/b/phases/flood/p99_ms",
        "/l4/a/sent_pps",
        "/l4/a/admitted_pps",
        "/l7/b/phases/baseline/per_s",
        "/l7/b/phases/baseline/p99_ms",
        "/l7/b/phases/flood/per_s",
        "/l7/b/phases/flood/p99_ms",
        "/l7/a/limited_share",
        "/ratios/l4_p99",
        "/ratios/l4_throughput",
        "/ratios/l7_p99",
        "/ratios/l7_throughput",
    ] {
        if !v.pointer(key).is_some_and(serde_json::Value::is_number) {
            bail!("bench isolation smoke run: {key} missing: {json}");
        }
    }
    if !v["l4"]["a"]["drops_per_s"].is_object() {
        bail!("bench isolation smoke run: A's drops by reason missing: {json}");
    }
    for file in ["bench-isolation.md", "bench-isolation.svg"] {
        if !dir.join(file).is_file() {
            bail!(
                "bench isolation smoke run: {} was not written",
                dir.join(file).display()
            );
        }
    }
    Ok(())
}

/// The L7 smoke run's results: every candidate with every figure, and the
/// report files.
fn check_l7_smoke(dir: &Path) -> anyhow::Result<()> {
    let json = std::fs::read_to_string(dir.join("bench-l7.json"))
        .context("reading the bench l7 smoke results")?;
    let v: serde_json::Value =
        serde_json::from_str(&json).context("bench l7 smoke run: its results are not JSON")?;
    let candidates = v["candidates"].as_array().map_or(&[][..], Vec::as_slice);
    let names: Vec<&str> = candidates
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    if names != ["lbd", "nginx", "haproxy"] {
        bail!("bench l7 smoke run: candidates {names:?}, expected lbd, nginx, haproxy: {json}");
    }
    for c in candidates {
        for key in [
            "/h1/requests_per_s",
            "/h1/p99_ms",
            "/h2/requests_per_s",
            "/h2/p99_ms",
            "/handshakes/handshakes_per_s",
            "/handshakes/handshakes_per_proxy_cpu_s",
            "/memory/bytes_per_connection",
        ] {
            if !c.pointer(key).is_some_and(serde_json::Value::is_number) {
                bail!("bench l7 smoke run: {} has no {key}: {json}", c["name"]);
            }
        }
    }
    if !v["ratios"]["lbd_vs_nginx_handshakes_per_proxy_cpu_s"].is_number() {
        bail!("bench l7 smoke run: ratios missing: {json}");
    }
    for file in ["bench-l7.md", "bench-l7.svg"] {
        if !dir.join(file).is_file() {
            bail!(
                "bench l7 smoke run: {} was not written",
                dir.join(file).display()
            );
        }
    }
    Ok(())
}

/// `rustup run nightly cargo`: the eBPF crate and the fuzz targets need
/// nightly whatever toolchain runs xtask, and must not inherit the `RUSTC`
/// (and wrapper, and `CARGO`) that cargo set for xtask's own stable build.
pub(crate) fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO");
    cmd
}

fn ci() -> anyhow::Result<()> {
    bootstrap()?;
    lint()?;
    // The namespace and test-run tests need root (BPF, netns): CI runs as root.
    let (passed, failed) = run_tests(
        "tests (unit, BPF_PROG_TEST_RUN, network namespaces)",
        cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--",
            "--test-threads=1",
        ]),
    )?;
    // 25 s per target, two at a time on CI's two cores: about 1.5 min of
    // fuzzing after a build of about 4 min (README, "Fuzzing").
    fuzz::run(None, 25, 2)?;
    soak(3, "target/ci/soak.json")?;
    bench_smoke()?;
    println!("==> ci: all checks passed");
    // One summary line for whoever reads the end of the log: the per-binary
    // `test result` lines end with doc-test binaries that hold no tests.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// rustfmt and both clippy passes (userspace, and eBPF for the BPF target).
fn lint() -> anyhow::Result<()> {
    run("rustfmt", cargo().args(["fmt", "--all", "--check"]))?;
    run(
        "clippy (userspace, all targets)",
        cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "clippy (eBPF programs, bpfel target)",
        nightly_cargo()
            .args(["clippy", "-p", "lb-ebpf", "--release"])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--bins",
            ])
            .args(["--", "-D", "warnings"]),
    )
}

/// `cargo xtask check`: [`lint`], then the tests that need no root.
fn check() -> anyhow::Result<()> {
    lint()?;
    let (mut passed, mut failed) = run_tests(
        "unit tests",
        cargo().args([
            "test",
            "-p",
            "lb-common",
            "-p",
            "lb-userspace",
            "-p",
            "xtask",
            "--lib",
            "--bins",
        ]),
    )?;
    let (p, f) = run_tests(
        "config bounds and connection caps (loopback)",
        cargo().args([
            "test",
            "-p",
            "lb-userspace",
            "--test",
            "bounds",
            "--test",
            "caps",
        ]),
    )?;
    (passed, failed) = (passed + p, failed + f);
    println!("==> check: all checks passed");
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// (passed, failed) of a libtest summary line such as
/// `test result: ok. 60 passed; 0 failed; 1 ignored; ...`.
fn result_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.trim().rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((count(" passed"), count(" failed")))
}

/// Runs `cargo test`, echoing its output, and adds up the `test result`
/// lines of every test binary. Fails when the run fails.
fn run_tests(what: &str, cmd: &mut Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};

    println!("==> {what}");
    let mut child = cmd
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("could not start cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test's output")?;
            println!("{line}");
            if let Some((p, f)) = result_counts(&line) {
                passed += p;
                failed += f;
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        println!("tests: {passed} passed, {failed} failed");
        bail!("tests failed ({status})");
    }
    Ok((passed, failed))
}

#[cfg(test)]
mod tests {
    use super::result_counts;

    #[test]
    fn summary_lines_are_counted() {
        assert_eq!(
            result_counts(
                "test result: ok. 60 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 5.55s"
            ),
            Some((60, 0))
        );
        assert_eq!(
            result_counts("test result: FAILED. 5 passed; 1 failed; 0 ignored"),
            Some((5, 1))
        );
        assert_eq!(result_counts("running 3 tests"), None);
    }
}
