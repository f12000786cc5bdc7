//! A two-namespace benchmark line: a generator namespace and an LB
//! namespace joined by one veth pair, no bridge in between (a bridge would
//! turn every frame into an skb and become the bottleneck).
//!
//! ```text
//!   generator namespace                 LB namespace
//!   g<pid><letters>  <---- veth ---->   l<pid><letters>
//!   10.78.0.1/24, fd78::1/64            10.78.0.2/24, fd78::2/64
//!   + the backends' addresses           forwarding on, one-arm
//! ```
//!
//! The LB is one-armed, like a balancer hanging off a top-of-rack switch:
//! clients and backends are both behind its one interface, so the balancer
//! sends with `XDP_TX`, exactly like the `XDP_TX` ceiling it is compared
//! with. The generator's side holds the backends' addresses
//! ([`LineTopology::add_addresses`]), so the LB's kernel resolves their MAC
//! to the generator's veth, where a counting program stands in for the
//! backends.
//!
//! Interface names embed the pid, so the threaded-NAPI kernel threads
//! (`napi/<ifname>-<id>`) of this line can be found and pinned
//! ([`napi_threads`]). Both ends use MTU [`LINE_MTU`], room for an IPIP
//! header on a 1500-byte packet. Dropping the line deletes both namespaces
//! (and with them the veth); [`super::cleanup_stale`] removes lines of dead
//! processes like any other topology.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, ensure};

use super::{COUNTER, NAME_PREFIX, cleanup_stale, ip_batch, letters, netns_path, run_checked};

/// MTU of both ends of the line.
pub const LINE_MTU: u32 = 1600;
/// The generator's own address.
pub const LINE_GEN_V4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// The generator's own IPv6 address.
pub const LINE_GEN_V6: Ipv6Addr = Ipv6Addr::new(0xfd78, 0, 0, 0, 0, 0, 0, 1);
/// The LB's address.
pub const LINE_LB_V4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// The LB's IPv6 address.
pub const LINE_LB_V6: Ipv6Addr = Ipv6Addr::new(0xfd78, 0, 0, 0, 0, 0, 0, 2);
/// MAC of the generator's end.
pub const LINE_GEN_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0x00, 0x00, 0x01];
/// MAC of the LB's end.
pub const LINE_LB_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0x00, 0x00, 0x02];

/// `10.78.0.n` on the line's subnet.
#[must_use]
pub const fn line_v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 0, n)
}

/// `fd78::n` on the line's subnet.
#[must_use]
pub const fn line_v6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd78, 0, 0, 0, 0, 0, 0, n)
}

/// Which end of the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The generator (and backends) namespace.
    Gen,
    /// The LB namespace.
    Lb,
}

/// A built line; dropping it deletes the namespaces it created (both,
/// unless built with [`LineTopology::create_into`]).
#[derive(Debug)]
pub struct LineTopology {
    prefix: String,
    gen_ns: String,
    lb_ns: String,
    gen_if: String,
    lb_if: String,
    namespaces: Vec<String>,
}

impl LineTopology {
    /// Builds the line (after [`cleanup_stale`]). On error everything
    /// created so far is deleted again.
    ///
    /// # Errors
    /// A failing `ip` command or sysctl write.
    pub fn create() -> Result<LineTopology> {
        Self::create_with(None)
    }

    /// A line whose LB end goes into `lb_ns`, an existing namespace (e.g.
    /// the LB of a bridge [`super::Topology`], which then takes a
    /// generator's frames on an interface of their own, without the
    /// bridge). Only the generator namespace is created, and dropping the
    /// line deletes only that (the veth pair goes with it). The LB end gets
    /// the line's addresses and the one-armed sysctls.
    ///
    /// # Errors
    /// A failing `ip` command or sysctl write.
    pub fn create_into(lb_ns: &str) -> Result<LineTopology> {
        Self::create_with(Some(lb_ns))
    }

    fn create_with(lb_ns: Option<&str>) -> Result<LineTopology> {
        if let Err(e) = cleanup_stale() {
            eprintln!("lb-tests: cleaning up stale namespaces failed: {e:#}");
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{}", std::process::id(), letters(n));
        let prefix = format!("{NAME_PREFIX}{id}");
        let mut line = LineTopology {
            gen_ns: format!("{prefix}-gen"),
            lb_ns: lb_ns.map_or_else(|| format!("{prefix}-lb"), str::to_owned),
            gen_if: format!("g{id}"),
            lb_if: format!("l{id}"),
            prefix,
            namespaces: Vec::new(),
        };
        // On `?` below, `line` is dropped and deletes what exists so far.
        line.build(lb_ns.is_none())?;
        Ok(line)
    }

    fn build(&mut self, own_lb: bool) -> Result<()> {
        let mut create = vec![self.gen_ns.clone()];
        if own_lb {
            create.push(self.lb_ns.clone());
        }
        for ns in create {
            run_checked(Command::new("ip").args(["netns", "add", &ns]))?;
            self.namespaces.push(ns.clone());
            // Before the veth arrives, so its link-local address is never
            // tentative.
            super::write_sysctls(
                &netns_path(&ns),
                &[
                    ("net.ipv6.conf.default.accept_dad", "0"),
                    ("net.ipv6.conf.all.accept_dad", "0"),
                ],
            )?;
        }
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        ip_batch(
            Some(&self.gen_ns),
            &format!(
                "link add {g} mtu {LINE_MTU} address {gm} type veth peer name {l} mtu {LINE_MTU} \
                 address {lm} netns {lb}\n",
                g = self.gen_if,
                gm = mac(LINE_GEN_MAC),
                l = self.lb_if,
                lm = mac(LINE_LB_MAC),
                lb = self.lb_ns,
            ),
        )?;
        for (ns, ifname, v4, v6) in [
            (&self.gen_ns, &self.gen_if, LINE_GEN_V4, LINE_GEN_V6),
            (&self.lb_ns, &self.lb_if, LINE_LB_V4, LINE_LB_V6),
        ] {
            ip_batch(
                Some(ns),
                &format!(
                    "link set lo up\n\
                     addr add {v4}/24 dev {ifname}\n\
                     addr add {v6}/64 dev {ifname} nodad\n\
                     link set {ifname} up\n"
                ),
            )?;
        }
        let lb_if = &self.lb_if;
        super::write_sysctls(
            &netns_path(&self.lb_ns),
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                // One-armed: the kernel forwards back out of the same
                // interface (the nftables peer) and must not send redirects.
                ("net.ipv4.conf.all.send_redirects", "0"),
                (&format!("net.ipv4.conf.{lb_if}.send_redirects"), "0"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                (&format!("net.ipv4.conf.{lb_if}.rp_filter"), "0"),
            ],
        )?;
        Ok(())
    }

    /// The unique prefix of the namespace names, e.g. `lbt4242a`.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Full name of a side's namespace.
    #[must_use]
    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::Gen => &self.gen_ns,
            Side::Lb => &self.lb_ns,
        }
    }

    /// `/run/netns/<namespace of side>`.
    #[must_use]
    pub fn path(&self, side: Side) -> PathBuf {
        netns_path(self.ns(side))
    }

    /// A side's end of the veth.
    #[must_use]
    pub fn ifname(&self, side: Side) -> &str {
        match side {
            Side::Gen => &self.gen_if,
            Side::Lb => &self.lb_if,
        }
    }

    /// A side's MAC address.
    #[must_use]
    pub fn mac(&self, side: Side) -> [u8; 6] {
        match side {
            Side::Gen => LINE_GEN_MAC,
            Side::Lb => LINE_LB_MAC,
        }
    }

    /// Adds addresses (as /24 or /64, on the line's subnets) to a side's
    /// interface, e.g. the backends' on the generator's side.
    ///
    /// # Errors
    /// A failing `ip` command.
    pub fn add_addresses(&self, side: Side, addrs: &[IpAddr]) -> Result<()> {
        let ifname = self.ifname(side);
        let script: String = addrs
            .iter()
            .map(|a| match a {
                IpAddr::V4(a) => format!("addr replace {a}/24 dev {ifname}\n"),
                IpAddr::V6(a) => format!("addr replace {a}/64 dev {ifname} nodad\n"),
            })
            .collect();
        ip_batch(Some(self.ns(side)), &script)
    }

    /// Switches a side's NAPI to threaded mode (its poll, and the XDP
    /// program in it, then runs in a `napi/<ifname>-<id>` kernel thread
    /// that can be pinned). veth has NAPI only while an XDP program is
    /// attached, so attach first.
    ///
    /// # Errors
    /// The sysfs write fails (e.g. no NAPI yet).
    pub fn set_threaded(&self, side: Side, on: bool) -> Result<()> {
        // `ip netns exec` mounts the namespace's own /sys.
        let path = format!("/sys/class/net/{}/threaded", self.ifname(side));
        self.run_ok(
            side,
            &["sh", "-c", &format!("echo {} > {path}", u8::from(on))],
        )
        .map(|_| ())
    }

    /// The threaded-NAPI kernel threads of a side's interface.
    ///
    /// # Errors
    /// `/proc` is unreadable.
    pub fn napi_threads(&self, side: Side) -> Result<Vec<i32>> {
        napi_threads(self.ifname(side))
    }

    /// Runs `args` in a side's namespace with `ip netns exec`; fails on a
    /// non-zero exit and returns stdout.
    ///
    /// # Errors
    /// The command cannot start or exits unsuccessfully.
    pub fn run_ok(&self, side: Side, args: &[&str]) -> Result<String> {
        ensure!(!args.is_empty(), "run_ok: empty command");
        let ns = self.ns(side);
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("ip netns exec {ns} {}", args.join(" ")))?;
        ensure!(
            out.status.success(),
            "`ip netns exec {ns} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", &ns])) {
                errors.push(format!("{e:#}"));
            }
        }
        ensure!(
            errors.is_empty(),
            "tearing down line {}: {}",
            self.prefix,
            errors.join("; ")
        );
        Ok(())
    }

    /// Deletes both namespaces now and reports what failed (`Drop` only logs).
    ///
    /// # Errors
    /// A namespace could not be deleted.
    pub fn destroy(mut self) -> Result<()> {
        self.teardown()
    }
}

impl Drop for LineTopology {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("lb-tests: {e:#}");
        }
    }
}

/// The kernel threads named `napi/<ifname>-<id>` (the name is cut to 15
/// bytes, so compare that much).
///
/// # Errors
/// `/proc` is unreadable.
pub fn napi_threads(ifname: &str) -> Result<Vec<i32>> {
    let mut want = format!("napi/{ifname}-");
    want.truncate(15);
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end().starts_with(&want) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Pins thread `tid` (any thread, e.g. a NAPI kernel thread) to `cpu`.
///
/// # Errors
/// `sched_setaffinity` fails.
pub fn pin_thread(tid: i32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET bounds-checks.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning thread {tid} to CPU {cpu}"));
    }
    Ok(())
}

/// Gives thread `tid` the real-time FIFO policy at `priority` (1..=99), or
/// back `SCHED_OTHER` with `None`: a NAPI thread then runs as soon as it
/// has frames, ahead of builds and other load sharing its CPU.
///
/// # Errors
/// `sched_setscheduler` fails.
pub fn set_fifo(tid: i32, priority: Option<i32>) -> Result<()> {
    let (policy, prio) = match priority {
        Some(p) => (libc::SCHED_FIFO, p),
        None => (libc::SCHED_OTHER, 0),
    };
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: plain syscall with a valid parameter block.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &raw const param) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setting the scheduling policy of thread {tid}"));
    }
    Ok(())
}

/// CPU time a thread has run, in nanoseconds (`/proc/<tid>/schedstat`).
///
/// # Errors
/// The thread is gone or the file is malformed.
pub fn thread_cpu_ns(tid: i32) -> Result<u64> {
    let path = format!("/proc/{tid}/schedstat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("{path}: unexpected contents {text:?}"))
}
