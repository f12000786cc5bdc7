//! `lbd` as a child process in the LB namespace, and the guards that
//! remove its pins and files.

use std::{
    os::unix::process::CommandExt as _,
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
        Lbd::start_with_env(ns, config, log, &[])
    }

    /// [`Lbd::start`] with extra environment variables (test hooks).
    pub fn start_with_env(ns: &Path, config: &Path, log: PathBuf, env: &[(&str, &str)]) -> Lbd {
        let file = std::fs::File::create(&log).expect("lbd log file");
        let mut cmd = Command::new("nsenter");
        // SAFETY: only the async-signal-safe prctl(2) runs between fork and
        // exec. If the test process dies without unwinding (killed), lbd
        // gets SIGTERM instead of living on in a deleted namespace.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .arg(format!("--net={}", ns.display()))
            .arg(LBD)
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("starting lbd");
        Lbd { child, log }
    }

    /// Its process id (of `nsenter`, which execs `lbd`).
    #[allow(dead_code, reason = "only the soak reads it")]
    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// Sends it `signal` (SIGTERM: a stop that drains), unless it has
    /// exited.
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let text = self.log();
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
        self.signal(libc::SIGTERM);
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

/// Removes what test processes that no longer run (killed before their
/// guards ran) left: pins under `/sys/fs/bpf/lbt<pid>...-lb` and work
/// directories `<tmp>/<work_prefix>lbt<pid>...`.
pub fn cleanup_stale(work_prefix: &str) {
    for pins in stale(Path::new("/sys/fs/bpf"), "", "-lb") {
        let _ = lb::dataplane::cleanup(&pins);
    }
    for dir in stale(&std::env::temp_dir(), work_prefix, "") {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Entries `<prefix>lbt<pid>...<suffix>` of `dir` whose pid is gone.
fn stale(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(suffix)
                && name
                    .strip_prefix(prefix)
                    .and_then(test_pid)
                    .is_some_and(|pid| !alive(pid))
        })
        .map(|e| e.path())
        .collect()
}

/// The pid in a topology prefix such as `lbt4242a-lb`.
fn test_pid(name: &str) -> Option<i32> {
    let digits: String = name
        .strip_prefix(lb_tests::netns::NAME_PREFIX)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes a directory tree on drop.
pub struct WorkDir(pub PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
