//! `lbd` as a child process in the LB namespace, and the guard that
//! removes its pins.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The daemon under test.
const LBD: &str = env!("CARGO_BIN_EXE_lbd");
/// How long a stopping `lbd` gets before SIGKILL (its drain timeout in
/// these tests is shorter).
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How much of its log a failing test prints.
const LOG_TAIL: usize = 8000;

/// `lbd` run under `nsenter --net` (only the network namespace switched,
/// so bpffs pins are the host's), stopped with SIGTERM on drop. If the
/// test is failing, the end of its log is printed.
pub struct Lbd {
    child: Child,
    log: PathBuf,
}

impl Lbd {
    /// Starts `lbd --config config` in the namespace at `ns`, its output
    /// going to `log`.
    pub fn start(ns: &Path, config: &Path, log: PathBuf) -> Lbd {
        let file = std::fs::File::create(&log).expect("lbd log file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .arg(LBD)
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("starting lbd");
        Lbd { child, log }
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for lbd")
    }

    /// Panics with its log if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("lbd exited ({status}):\n{}", self.log_tail());
        }
    }

    /// Waits up to `limit` for it to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(LOG_TAIL);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    fn terminate(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if self.wait_exit(STOP_GRACE).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            eprintln!(
                "---- lbd log ({}) ----\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

/// Removes the pins of `lbd` (the attached program, the maps) on drop.
pub struct Pins(pub PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = lb::dataplane::cleanup(&self.0);
    }
}

/// Removes a directory tree on drop.
pub struct WorkDir(pub PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
