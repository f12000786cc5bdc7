//! Helpers shared by the binaries' end-to-end tests.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

/// The `lbctl` binary under test.
pub const LBCTL: &str = env!("CARGO_BIN_EXE_lbctl");

/// Runs `lbctl` with only its network namespace switched to `ns` (so bpffs
/// pins are the host's), asserting success.
pub fn lbctl_in(ns: &Path, args: &[&str]) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg(LBCTL)
        .args(args)
        .output()
        .expect("running lbctl");
    assert!(out.status.success(), "lbctl {args:?}: {out:?}");
}

/// Polls `f` every 50 ms until it holds, failing after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
