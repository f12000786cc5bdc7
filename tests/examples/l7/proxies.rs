//! The three candidates, each configured for the same two tenants: their
//! configuration files, starting one pinned to the proxy CPU in the LB
//! namespace, its processes' CPU time and resident memory, and stopping it
//! (also on error: `Drop`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::netns::spawn_in_netns;

use crate::certs::TenantCert;

/// A candidate in the proxy's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Lbd,
    Nginx,
    Haproxy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Lbd, Kind::Nginx, Kind::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Self::Lbd => "lbd",
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One tenant as every proxy serves it.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: &'static str,
    pub host: &'static str,
    pub cert: TenantCert,
    pub backends: Vec<SocketAddr>,
    /// Lines (each ending in a newline) for the tenant's table in lbd's
    /// configuration, such as its `[tenant.limits]` (the isolation bench's
    /// request limit). nginx and `HAProxy` get no equivalent, so the L7
    /// bench leaves it empty.
    pub lbd_policy: String,
}

/// What every candidate's configuration is made from.
#[derive(Clone, Debug)]
pub struct Env {
    /// The bench's work directory; each candidate writes under `work/NAME`.
    pub work: PathBuf,
    /// The LB namespace (`/run/netns/...`).
    pub lb_ns: PathBuf,
    /// The LB namespace's interface (lbd attaches its XDP program there).
    pub lb_if: String,
    pub listen: SocketAddr,
    pub tenants: Vec<Tenant>,
    pub lbd: PathBuf,
    /// lbd's private pin directory on bpffs.
    pub pin_path: PathBuf,
    /// The proxy's CPU.
    pub cpu: usize,
    /// Client connections every candidate must accept at once.
    pub max_conns: usize,
}

/// A running candidate; dropping it stops it.
pub struct Proxy {
    pub kind: Kind,
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    config: PathBuf,
    lbd: Option<(PathBuf, PathBuf)>,
    /// Every process seen in the candidate's tree: pid -> start time (so a
    /// reused pid is never signalled).
    seen: BTreeMap<i32, u64>,
}

impl Proxy {
    /// Writes the candidate's configuration and starts it in the LB
    /// namespace on the proxy CPU.
    pub fn start(kind: Kind, env: &Env) -> Result<Proxy> {
        let dir = env.work.join(kind.name());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join(format!("{}.log", kind.name()));
        let (config, mut cmd) = match kind {
            Kind::Nginx => {
                let tmp = dir.join("tmp");
                std::fs::create_dir_all(&tmp)?;
                let config = dir.join("nginx.conf");
                std::fs::write(&config, nginx_conf(env, &dir))?;
                let mut cmd = Command::new("nginx");
                cmd.arg("-p")
                    .arg(&dir)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-c")
                    .arg(&config);
                (config, cmd)
            }
            Kind::Haproxy => {
                let config = dir.join("haproxy.cfg");
                std::fs::write(&config, haproxy_conf(env, &dir)?)?;
                let mut cmd = Command::new("haproxy");
                cmd.arg("-db").arg("-f").arg(&config);
                (config, cmd)
            }
            Kind::Lbd => {
                if !env.lbd.is_file() {
                    bail!(
                        "lbd not found at {} (build it with `cargo build --release -p lb-userspace`, \
                         or leave it out with --proxies nginx,haproxy)",
                        env.lbd.display()
                    );
                }
                let config = dir.join("lb.toml");
                std::fs::write(&config, lbd_conf(env, &dir))?;
                let mut cmd = Command::new(&env.lbd);
                cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
                if lbd_has_workers_flag(&env.lbd) {
                    cmd.args(["--workers", "1"]);
                }
                (config, cmd)
            }
        };
        let out = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .current_dir(&dir);
        confine(&mut cmd, env.cpu);
        let child = spawn_in_netns(&env.lb_ns, &mut cmd)?;
        let mut p = Proxy {
            kind,
            seen: BTreeMap::new(),
            child: Some(child),
            dir,
            log,
            config: config.clone(),
            lbd: (kind == Kind::Lbd).then(|| (env.lbd.clone(), env.pin_path.clone())),
        };
        p.pids();
        Ok(p)
    }

    /// Waits until `probe` succeeds (the proxy serves), failing early when
    /// the process exits.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited at start ({status}); its log ({}):\n{}",
                    self.kind.name(),
                    self.log.display(),
                    self.log_tail()
                );
            }
            let err = match probe() {
                Ok(()) => {
                    self.pids();
                    return Ok(());
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} does not serve after {timeout:?}: {err:#}; its log ({}):\n{}",
                    self.kind.name(),
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the candidate's log (and nginx's error log).
    pub fn log_tail(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let Ok(e) = std::fs::read_to_string(self.dir.join("error.log")) {
            text.push_str(&e);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The candidate's processes now: the one started and its descendants
    /// (nginx: master and worker).
    pub fn pids(&mut self) -> Vec<i32> {
        let Some(root) = self.child.as_ref().map(pid_of) else {
            return Vec::new();
        };
        let pids = descendants(root);
        for p in &pids {
            if let Some(st) = stat_fields(*p) {
                self.seen.insert(*p, st.start);
            }
        }
        pids
    }

    /// CPU time (user + system) of all its processes, in seconds, from
    /// `/proc/PID/stat` (whole processes: every thread, live or exited).
    pub fn cpu_seconds(&mut self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        #[expect(clippy::cast_precision_loss, reason = "tick counts far below 2^52")]
        let hz = hz as f64;
        #[expect(clippy::cast_precision_loss, reason = "tick counts far below 2^52")]
        self.pids()
            .into_iter()
            .filter_map(|p| stat_fields(p).map(|f| (f.utime + f.stime) as f64 / hz))
            .sum()
    }

    /// Resident memory of all its processes (`VmRSS`), in KiB.
    pub fn rss_kib(&mut self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|p| {
                let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// Threads of all its processes.
    pub fn threads(&mut self) -> usize {
        self.pids()
            .into_iter()
            .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).ok())
            .map(Iterator::count)
            .sum()
    }

    /// Stops it: SIGTERM, SIGKILL after 5 s, then whatever of its process
    /// tree is left; lbd's pins are removed.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        self.pids();
        let pid = pid_of(&child);
        if child.try_wait()?.is_none() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if child.try_wait()?.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Descendants outliving the parent (an nginx worker whose master
        // was killed): by pid, only the same processes (same start time).
        for (p, start) in &self.seen {
            if *p != pid && stat_fields(*p).is_some_and(|st| st.start == *start) {
                // SAFETY: a process of this candidate's tree; signal only.
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
        }
        if let Some((lbd, pin_path)) = self.lbd.take() {
            let _ = Command::new(&lbd)
                .arg("--config")
                .arg(&self.config)
                .arg("--cleanup")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = lb::dataplane::cleanup(&pin_path);
        }
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("bench l7: stopping {}: {e:#}", self.kind.name());
        }
    }
}

/// Whether this lbd takes `--workers N` (its tokio runtime's worker
/// threads); without it lbd runs its default runtime, all of it pinned to
/// the proxy CPU all the same.
pub fn lbd_has_workers_flag(lbd: &Path) -> bool {
    Command::new(lbd)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--workers"))
}

/// The nice value of everything the bench runs (the candidates, the load
/// tools, its own threads): other work on a shared machine (builds) then
/// takes less of the two cores during a window.
pub const NICE: i32 = -10;

/// A spawned command: pinned to `cpu` (what `taskset -c CPU` does), at
/// [`NICE`], its open-file limit raised to the hard limit, killed when the
/// bench dies.
pub fn confine(cmd: &mut Command, cpu: usize) {
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut lim: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
            }
            libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).unwrap_or(i32::MAX)
}

struct Stat {
    ppid: i32,
    utime: u64,
    stime: u64,
    /// Start time after boot, in ticks.
    start: u64,
}

/// `/proc/PID/stat`: the fields after the command name in parentheses.
fn stat_fields(pid: i32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime stime cutime cstime priority nice threads itrealvalue starttime
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// `root` and every live descendant.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(st) = stat_fields(pid) {
                parent.push((pid, st.ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.retain(|p| std::fs::metadata(format!("/proc/{p}")).is_ok());
    out
}

/// nginx: one worker, the tenants as two `server` blocks on one listener
/// (SNI picks the certificate, the Host header the block), upstream
/// keep-alive, the headers lbd sets, no access log.
fn nginx_conf(env: &Env, dir: &Path) -> String {
    let d = dir.display();
    let mut s = format!(
        "worker_processes 1;\n\
         worker_rlimit_nofile {nofile};\n\
         daemon off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections {conns}; }}\n\
         http {{\n\
         \taccess_log off;\n\
         \tclient_body_temp_path {d}/tmp/body;\n\
         \tproxy_temp_path {d}/tmp/proxy;\n\
         \tfastcgi_temp_path {d}/tmp/fastcgi;\n\
         \tuwsgi_temp_path {d}/tmp/uwsgi;\n\
         \tscgi_temp_path {d}/tmp/scgi;\n\
         \tkeepalive_timeout 300s;\n\
         \tkeepalive_requests 100000000;\n\
         \tssl_protocols TLSv1.2 TLSv1.3;\n",
        nofile = env.max_conns * 2 + 100,
        // nginx starts closing idle keep-alive connections once fewer than
        // 1/16 of its connections are free: leave plenty free.
        conns = env.max_conns * 2,
    );
    for t in &env.tenants {
        let servers = t.backends.iter().fold(String::new(), |mut acc, b| {
            let _ = writeln!(acc, "\t\tserver {b};");
            acc
        });
        let _ = write!(
            s,
            "\tupstream {name} {{\n{servers}\t\tkeepalive 64;\n\t\tkeepalive_requests 100000000;\n\t\tkeepalive_timeout 300s;\n\t}}\n",
            name = t.name
        );
    }
    for (i, t) in env.tenants.iter().enumerate() {
        let listen_opts = if i == 0 {
            " default_server backlog=4096"
        } else {
            ""
        };
        let _ = write!(
            s,
            "\tserver {{\n\
             \t\tlisten {listen} ssl http2{listen_opts};\n\
             \t\tserver_name {host};\n\
             \t\tssl_certificate {cert};\n\
             \t\tssl_certificate_key {key};\n\
             \t\tlocation / {{\n\
             \t\t\tproxy_pass http://{name};\n\
             \t\t\tproxy_http_version 1.1;\n\
             \t\t\tproxy_set_header Connection \"\";\n\
             \t\t\tproxy_set_header Host $host;\n\
             \t\t\tproxy_set_header X-Forwarded-For $remote_addr;\n\
             \t\t\tproxy_set_header X-Forwarded-Proto https;\n\
             \t\t\tproxy_set_header X-Request-ID $request_id;\n\
             \t\t\tproxy_set_header X-Tenant-ID {name};\n\
             \t\t}}\n\
             \t}}\n",
            listen = env.listen,
            host = t.host,
            cert = t.cert.cert.display(),
            key = t.cert.key.display(),
            name = t.name,
        );
    }
    s.push_str("}\n");
    s
}

/// `HAProxy`: one thread, one frontend whose certificates are chosen by SNI
/// (a crt-list), a backend per tenant chosen by SNI, round robin, server
/// connections reused across client connections, the headers lbd sets, no
/// log.
fn haproxy_conf(env: &Env, dir: &Path) -> Result<String> {
    let crt_list = dir.join("crt-list.txt");
    let list = env.tenants.iter().fold(String::new(), |mut acc, t| {
        let _ = writeln!(acc, "{} {}", t.cert.combined.display(), t.host);
        acc
    });
    std::fs::write(&crt_list, list)?;
    let mut s = format!(
        "global\n\
         \tnbthread 1\n\
         \tmaxconn {conns}\n\
         \tssl-default-bind-options ssl-min-ver TLSv1.2\n\
         defaults\n\
         \tmode http\n\
         \tmaxconn {conns}\n\
         \toption http-keep-alive\n\
         \thttp-reuse always\n\
         \ttimeout connect 5s\n\
         \ttimeout client 300s\n\
         \ttimeout server 300s\n\
         \ttimeout http-request 30s\n\
         \ttimeout http-keep-alive 300s\n\
         frontend tls\n\
         \tbind {listen} ssl crt-list {crt_list} alpn h2,http/1.1\n\
         \tbacklog 4096\n\
         \thttp-request set-header X-Forwarded-For %[src]\n\
         \thttp-request set-header X-Forwarded-Proto https\n\
         \thttp-request set-header X-Request-ID %[uuid]\n",
        conns = env.max_conns + 100,
        listen = env.listen,
        crt_list = crt_list.display(),
    );
    for t in &env.tenants {
        let _ = writeln!(
            s,
            "\tuse_backend {} if {{ ssl_fc_sni -i {} }}",
            t.name, t.host
        );
    }
    for t in &env.tenants {
        let _ = write!(
            s,
            "backend {name}\n\tbalance roundrobin\n\thttp-request set-header X-Tenant-ID {name}\n",
            name = t.name
        );
        for (i, b) in t.backends.iter().enumerate() {
            let _ = writeln!(s, "\tserver {}{} {b}", t.name, i + 1);
        }
    }
    Ok(s)
}

/// lbd: the tenants' L7 listeners on one address, a round-robin pool of
/// their two backends each, no access log; private pins, state and
/// sockets.
fn lbd_conf(env: &Env, dir: &Path) -> String {
    let d = dir.display();
    let mut s = format!(
        "[node]\n\
         interface = \"{lb_if}\"\n\
         pin_path = \"{pins}\"\n\
         state_dir = \"{d}/state\"\n\
         admin_socket = \"{d}/admin.sock\"\n\
         metrics_listen = \"127.0.0.1:19464\"\n\
         access_log = \"off\"\n",
        lb_if = env.lb_if,
        pins = env.pin_path.display(),
    );
    for t in &env.tenants {
        let backends: Vec<String> = t
            .backends
            .iter()
            .map(|b| format!("{{ address = \"{}\", port = {} }}", b.ip(), b.port()))
            .collect();
        let _ = write!(
            s,
            "\n[[tenant]]\n\
             name = \"{name}\"\n\
             {policy}\
             [[tenant.pool]]\n\
             name = \"web\"\n\
             backends = [ {backends} ]\n\
             balance = \"round_robin\"\n\
             [[tenant.l7]]\n\
             listen = \"{listen}\"\n\
             hosts = [\"{host}\"]\n\
             tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\
             routes = [ {{ path_prefix = \"/\", pool = \"web\" }} ]\n",
            name = t.name,
            policy = t.lbd_policy,
            backends = backends.join(", "),
            listen = env.listen,
            host = t.host,
            cert = t.cert.cert.display(),
            key = t.cert.key.display(),
        );
    }
    s
}
