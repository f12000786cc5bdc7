//! Guards that remove what a bench created, on success, on error and while
//! unwinding, and the removal of what killed runs left behind. Shared by
//! the benches that run processes in network namespaces.

use std::{path::PathBuf, process::Command};

/// Kills, by pid, whatever still runs in the bench's namespaces (only
/// processes the bench started can be there), before they are deleted.
pub struct NsProcesses(pub Vec<String>);

impl Drop for NsProcesses {
    fn drop(&mut self) {
        for ns in &self.0 {
            let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
                continue;
            };
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                if u32::try_from(pid).ok() != Some(std::process::id()) {
                    // SAFETY: signal only, to a process inside our own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// A directory removed with everything in it when dropped.
pub struct DirGuard(pub PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes leftovers of bench runs whose process is gone: hosts files
/// under `/etc/netns`, lbd pins (`lbt<pid>...-l7`) and backend-program link
/// pins (`lbt<pid>...-links`) under `/sys/fs/bpf` (namespaces are removed
/// by the topologies' own `create`).
pub fn cleanup_stale() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix("lbt") else {
            return false;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse::<u32>()
            .is_ok_and(|pid| std::fs::metadata(format!("/proc/{pid}")).is_err())
    };
    for dir in ["/etc/netns", "/sys/fs/bpf"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !dead(&name) {
                continue;
            }
            if dir == "/sys/fs/bpf" {
                if name.ends_with("-l7") {
                    let _ = lb::dataplane::cleanup(&e.path());
                } else if name.ends_with("-links") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            } else {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
