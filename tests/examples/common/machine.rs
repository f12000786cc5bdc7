//! Where a bench ran, for every report: CPU model, cores, kernel, date and
//! the load average at the start and the end (other work on a shared
//! machine makes every figure worse). Shared by the benches' report modules.

use std::process::Command;

/// Where the bench ran.
#[derive(Clone, Debug)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub date: String,
    /// `/proc/loadavg` when the bench started and ended.
    pub load_start: String,
    pub load_end: String,
}

impl Machine {
    pub fn probe() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Self {
            kernel,
            cpu,
            cores,
            date,
            load_start: loadavg(),
            load_end: String::new(),
        }
    }

    /// Records the load average at the end of the run.
    pub fn finish(&mut self) {
        self.load_end = loadavg();
    }

    pub fn label(&self) -> String {
        format!(
            "{}, {} cores, Linux {}",
            self.cpu.trim(),
            self.cores,
            self.kernel
        )
    }
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
