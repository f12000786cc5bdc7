//! `cargo xtask`: bootstrap, CI, the demo and the benchmarks.
//!
//! xtask compiles before anything is bootstrapped, so it depends on nothing
//! that needs the eBPF toolchain (no aya-build, no lb-ebpf, no lb-userspace):
//! it drives cargo and the built binaries instead.

mod demo;

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
    /// A multi-tenant demo in network namespaces: two tenants, three
    /// backends each, a few hundred connections per VIP.
    Demo {
        /// Connections per tenant VIP.
        #[arg(long, default_value_t = 300)]
        connections: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Task::Bootstrap => bootstrap(),
        Task::Ci => ci(),
        Task::Demo { connections } => {
            bootstrap()?;
            demo::run(connections)
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

fn bootstrap() -> anyhow::Result<()> {
    run(
        "bootstrap (scripts/bootstrap.sh)",
        Command::new("bash").arg(root().join("scripts/bootstrap.sh")),
    )
}

fn ci() -> anyhow::Result<()> {
    bootstrap()?;
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
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "-p",
                "lb-ebpf",
                "--release",
            ])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--bins",
            ])
            .args(["--", "-D", "warnings"])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )?;
    // The namespace and test-run tests need root (BPF, netns): CI runs as root.
    run(
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
    println!("==> ci: all checks passed");
    Ok(())
}
