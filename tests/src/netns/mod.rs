//! Network-namespace test topology: clients, one load balancer and backends
//! joined by a Linux bridge, built with `ip` (iproute2) and sysctl writes.
//!
//! ```text
//!            fabric namespace (br0, MTU 1600)
//!    p-c1      p-lb       p-a1  p-a2 ...   <- bridge ports (veth peers)
//!     |         |          |     |
//!   eth0      eth0       eth0  eth0        <- one veth end per namespace
//!  client c1   lb       backend a1, a2 ...
//!  10.77.0.10  10.77.0.2 10.77.0.100, .101 ...
//!  fd77::a     fd77::2   fd77::64, ::65 ...
//! ```
//!
//! * Clients route the VIP ranges ([`VIP_NET_V4`], [`VIP_NET_V6`]) via the
//!   LB, so everything a client sends to a VIP reaches the LB's `eth0`.
//! * The LB has forwarding enabled because `bpf_fib_lookup` only resolves
//!   routes in a namespace that forwards.
//! * Backends get the DSR sysctls (`arp_ignore=1`, `arp_announce=2`,
//!   `rp_filter=0`) so a VIP on `lo` ([`Topology::add_vip_to_backends`]) is
//!   accepted but never announced, and replies go straight to the client.
//! * The LB, backends, the bridge and every bridge port use MTU
//!   [`FABRIC_MTU`]; clients keep [`CLIENT_MTU`], leaving room for the
//!   IPIP header the balancer adds (veth silently drops `XDP_TX`'d frames
//!   larger than the peer MTU).
//! * Clients run `ethtool -K eth0 tx off`: a frame that XDP re-sends loses
//!   the checksum-offload state veth relies on, so senders must put full
//!   checksums on the wire.
//!
//! **XDP on the bridge ports.** A veth only takes frames its peer sent with
//! `XDP_TX`/`XDP_REDIRECT` when it runs an XDP program itself. This crate
//! cannot load BPF (it must build before the eBPF toolchain exists), so the
//! caller attaches a plain `XDP_PASS` program to every port listed by
//! [`Topology::fabric_ports`] (at least [`Topology::lb_fabric_port`]),
//! from a thread inside the fabric namespace ([`in_netns`]).
//!
//! Namespace names are `lbt<pid><letters>-<role>` (e.g. `lbt4242a-lb`), unique
//! per process and run. [`Topology`]'s `Drop` deletes everything it created,
//! also while a panicking test unwinds; [`cleanup_stale`] removes what
//! crashed runs (whose pid is gone) left behind.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

mod line;
pub use line::{
    LINE_GEN_MAC, LINE_GEN_V4, LINE_GEN_V6, LINE_LB_MAC, LINE_LB_V4, LINE_LB_V6, LINE_MTU,
    LineTopology, Side, line_v4, line_v6, napi_threads, pin_thread, set_fifo, thread_cpu_ns,
};

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Prefix of every namespace this module creates (followed by the pid).
pub const NAME_PREFIX: &str = "lbt";
/// The bridge in the fabric namespace.
pub const BRIDGE: &str = "br0";
/// The interface name inside every host namespace.
pub const HOST_IF: &str = "eth0";
/// MTU of client interfaces.
pub const CLIENT_MTU: u32 = 1500;
/// MTU of the LB, the backends, the bridge and every bridge port: room for
/// the 20/40-byte IPIP/IP6IP6 header the balancer adds to a 1500-byte packet.
pub const FABRIC_MTU: u32 = 1600;
/// The LB's fabric address.
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The LB's fabric IPv6 address.
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// IPv4 VIP range `(network, prefix length)`, routed by clients via the LB.
pub const VIP_NET_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 77, 100, 0), 24);
/// IPv6 VIP range `(network, prefix length)`, routed by clients via the LB.
pub const VIP_NET_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd77, 0x100, 0, 0, 0, 0, 0, 0), 64);

/// Last octet (v4) / last group (v6) of the first client.
const FIRST_CLIENT: u8 = 10;
/// Last octet (v4) / last group (v6) of the first backend.
const FIRST_BACKEND: u8 = 100;
/// How long to wait for IPv6 addresses to leave the tentative state.
const DAD_WAIT: Duration = Duration::from_secs(10);
/// How long a spawned child gets between SIGTERM and SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(1);
/// Longest bridge-side port name is `p-` + this many characters (IFNAMSIZ 16
/// including the NUL).
const MAX_HOST_NAME: usize = 13;

/// Per-process topology counter, so topologies built by parallel tests of
/// one test binary get distinct namespace names.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `10.77.100.n`, a VIP in the range the clients route via the LB.
#[must_use]
pub const fn vip_v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 100, n)
}

/// `fd77:100::n`, a VIP in the range the clients route via the LB.
#[must_use]
pub const fn vip_v6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0x100, 0, 0, 0, 0, 0, n)
}

/// `/run/netns/NAME`: the path `setns`, `nsenter --net=` and aya-free callers
/// use to reach a namespace by its full name (e.g. `lbt4242a-lb`).
#[must_use]
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// What to build. `Default` is one client and no backends.
#[derive(Clone, Debug)]
pub struct TopologySpec {
    /// Number of client namespaces (`c1`, `c2`, ...), at least 1, at most 90.
    pub clients: usize,
    /// `(tenant label, count)`: `[("a", 3), ("b", 2)]` creates backends
    /// `a1 a2 a3 b1 b2`, addressed in this order from `.100` / `::64`.
    pub backends: Vec<(String, usize)>,
    /// Further backends by full name (e.g. `"a4"`), created and addressed
    /// after those of [`TopologySpec::backends`]: a test can leave them out
    /// of the LB's configuration first and add them later, knowing their
    /// addresses in advance.
    pub extra_backends: Vec<String>,
}

impl Default for TopologySpec {
    fn default() -> Self {
        Self {
            clients: 1,
            backends: Vec::new(),
            extra_backends: Vec::new(),
        }
    }
}

impl TopologySpec {
    /// One client, no backends.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the number of clients.
    #[must_use]
    pub fn with_clients(mut self, n: usize) -> Self {
        self.clients = n;
        self
    }

    /// Adds `count` backends named `label1..=labelN`.
    #[must_use]
    pub fn with_tenant(mut self, label: &str, count: usize) -> Self {
        self.backends.push((label.to_owned(), count));
        self
    }

    /// Adds one backend by full name, after the tenants' backends.
    #[must_use]
    pub fn with_extra_backend(mut self, name: &str) -> Self {
        self.extra_backends.push(name.to_owned());
        self
    }
}

/// One backend namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendHost {
    /// Short name, e.g. `a1`.
    pub name: String,
    /// Full namespace name, e.g. `lbt4242a-a1`.
    pub ns: String,
    /// Fabric address of its `eth0`.
    pub v4: Ipv4Addr,
    /// Fabric IPv6 address of its `eth0`.
    pub v6: Ipv6Addr,
    /// Its veth peer (a bridge port) in the fabric namespace.
    pub fabric_port: String,
}

impl BackendHost {
    /// `/run/netns/<ns>`.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        netns_path(&self.ns)
    }

    /// The backend's fabric address of the given family.
    #[must_use]
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }
}

/// A built topology; dropping it deletes every namespace it created and
/// kills the processes started with [`Topology::spawn`].
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    fabric: String,
    lb: String,
    clients: Vec<String>,
    backends: Vec<BackendHost>,
    /// Bridge ports created, deleted explicitly on teardown so the veths go
    /// away even if a stray thread keeps a namespace alive.
    ports: Vec<String>,
    /// Every namespace created, in creation order.
    namespaces: Vec<String>,
    children: Mutex<Vec<Child>>,
    next_backend: u8,
    torn_down: bool,
}

impl Topology {
    /// Builds the topology described by `spec` (after [`cleanup_stale`]).
    /// On error everything created so far is deleted again.
    ///
    /// # Errors
    /// Invalid spec, missing `ip`/`ethtool`, or any failing `ip` command.
    pub fn create(spec: &TopologySpec) -> Result<Topology> {
        ensure!(
            (1..=90).contains(&spec.clients),
            "TopologySpec::clients must be 1..=90, got {}",
            spec.clients
        );
        find_in_path("ip").context("iproute2's `ip` is required for test topologies")?;
        find_in_path("ethtool").context(
            "`ethtool` is required for test topologies (clients turn off tx checksum offload); \
             install it with `apt-get install ethtool`",
        )?;
        if let Err(e) = cleanup_stale() {
            eprintln!("lb-tests: cleaning up stale namespaces failed: {e:#}");
        }

        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_PREFIX}{}{}", std::process::id(), letters(n));
        let mut topo = Topology {
            fabric: format!("{prefix}-fabric"),
            lb: format!("{prefix}-lb"),
            prefix,
            clients: Vec::new(),
            backends: Vec::new(),
            ports: Vec::new(),
            namespaces: Vec::new(),
            children: Mutex::new(Vec::new()),
            next_backend: FIRST_BACKEND,
            torn_down: false,
        };
        // On `?` below, `topo` is dropped and deletes what exists so far.
        topo.build(spec)?;
        Ok(topo)
    }

    fn build(&mut self, spec: &TopologySpec) -> Result<()> {
        let mut backend_names = Vec::new();
        for (label, count) in &spec.backends {
            for i in 1..=*count {
                backend_names.push(format!("{label}{i}"));
            }
        }
        backend_names.extend(spec.extra_backends.iter().cloned());
        for name in &backend_names {
            self.check_new_backend_name(name)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in &backend_names {
            ensure!(
                seen.insert(name.as_str()),
                "duplicate backend name {name:?}"
            );
        }

        // Fabric: the bridge, with STP and multicast snooping off so ports
        // forward at once and neighbour discovery is always flooded.
        self.add_namespace(&self.fabric.clone())?;
        ip_batch(
            Some(&self.fabric),
            &format!(
                "link set lo up\n\
                 link add {BRIDGE} mtu {FABRIC_MTU} type bridge stp_state 0 mcast_snooping 0\n\
                 link set {BRIDGE} up\n"
            ),
        )?;

        let lb = self.lb.clone();
        self.add_host(&lb, "lb", FABRIC_MTU)?;
        configure_host(&lb, LB_V4, LB_V6, FABRIC_MTU, "")?;
        write_sysctls(
            &netns_path(&lb),
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                // Packets the stack would forward back out of eth0 must not
                // trigger redirects to clients.
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.eth0.send_redirects", "0"),
            ],
        )?;

        for i in 0..spec.clients {
            let short = format!("c{}", i + 1);
            let ns = format!("{}-{short}", self.prefix);
            self.add_host(&ns, &short, CLIENT_MTU)?;
            let (v4, v6) = host_addrs(client_octet(i));
            let routes = format!(
                "route add {}/{} via {LB_V4}\n\
                 route add {}/{} via {LB_V6}\n",
                VIP_NET_V4.0, VIP_NET_V4.1, VIP_NET_V6.0, VIP_NET_V6.1
            );
            configure_host(&ns, v4, v6, CLIENT_MTU, &routes)?;
            run_checked(
                Command::new("ip")
                    .args(["netns", "exec", &ns, "ethtool", "-K", HOST_IF, "tx", "off"]),
            )?;
            self.clients.push(ns);
        }

        for name in &backend_names {
            self.add_backend_inner(name)?;
        }

        self.bridge_mtu()?;
        for ns in self.namespaces.clone() {
            if ns != self.fabric {
                wait_not_tentative(&ns)?;
            }
        }
        Ok(())
    }

    /// Creates one more backend namespace (addressed after the existing ones)
    /// and returns it. Its bridge port also needs the caller's `XDP_PASS`
    /// program (see the module docs).
    ///
    /// # Errors
    /// Bad or duplicate name, addresses exhausted, or a failing `ip` command.
    pub fn add_backend(&mut self, name: &str) -> Result<BackendHost> {
        self.check_new_backend_name(name)?;
        let host = self.add_backend_inner(name)?;
        self.bridge_mtu()?;
        wait_not_tentative(&host.ns)?;
        Ok(host)
    }

    fn check_new_backend_name(&self, name: &str) -> Result<()> {
        ensure!(
            !name.is_empty()
                && name.len() <= MAX_HOST_NAME
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "backend name {name:?} must be 1..={MAX_HOST_NAME} lowercase letters/digits"
        );
        let is_client_name = name
            .strip_prefix('c')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
        ensure!(
            name != "lb" && name != "fabric" && !is_client_name,
            "backend name {name:?} collides with the LB, fabric or client names"
        );
        ensure!(
            self.backends.iter().all(|b| b.name != name),
            "backend {name:?} already exists"
        );
        Ok(())
    }

    fn add_backend_inner(&mut self, name: &str) -> Result<BackendHost> {
        let octet = self.next_backend;
        ensure!(octet < 255, "backend addresses exhausted");
        let ns = format!("{}-{name}", self.prefix);
        self.add_host(&ns, name, FABRIC_MTU)?;
        self.next_backend += 1;
        let (v4, v6) = host_addrs(octet);
        configure_host(&ns, v4, v6, FABRIC_MTU, "")?;
        // DSR: accept VIP traffic on lo without announcing the VIP; accept
        // decapsulated packets whose source the reverse path check would
        // question.
        let mut sysctls = Vec::new();
        for dev in ["all", "default", "lo", HOST_IF] {
            sysctls.push((format!("net.ipv4.conf.{dev}.arp_ignore"), "1"));
            sysctls.push((format!("net.ipv4.conf.{dev}.arp_announce"), "2"));
            sysctls.push((format!("net.ipv4.conf.{dev}.rp_filter"), "0"));
        }
        let refs: Vec<(&str, &str)> = sysctls.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        write_sysctls(&netns_path(&ns), &refs)?;
        let host = BackendHost {
            name: name.to_owned(),
            ns,
            v4,
            v6,
            fabric_port: port_name(name),
        };
        self.backends.push(host.clone());
        Ok(host)
    }

    /// Creates namespace `ns` with a veth pair: `eth0` (MTU `mtu`) inside,
    /// `p-<short>` (MTU 1600) enslaved to the bridge.
    fn add_host(&mut self, ns: &str, short: &str, mtu: u32) -> Result<()> {
        self.add_namespace(ns)?;
        // Before eth0 arrives: a device moved into a namespace takes the
        // namespace's `default` devconf, so DAD is off for its link-local
        // address too and nothing stays tentative.
        write_sysctls(
            &netns_path(ns),
            &[
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
            ],
        )?;
        let port = port_name(short);
        ip_batch(
            Some(&self.fabric),
            &format!(
                "link add {port} mtu {FABRIC_MTU} type veth peer name {HOST_IF} mtu {mtu} netns {ns}\n"
            ),
        )?;
        self.ports.push(port.clone());
        ip_batch(
            Some(&self.fabric),
            &format!("link set {port} master {BRIDGE}\nlink set {port} up\n"),
        )?;
        Ok(())
    }

    fn add_namespace(&mut self, ns: &str) -> Result<()> {
        run_checked(Command::new("ip").args(["netns", "add", ns]))?;
        self.namespaces.push(ns.to_owned());
        Ok(())
    }

    /// Enslaving a port can lower the bridge's MTU; pin it back.
    fn bridge_mtu(&self) -> Result<()> {
        ip_batch(
            Some(&self.fabric),
            &format!("link set {BRIDGE} mtu {FABRIC_MTU}\n"),
        )
    }

    /// The unique prefix of this topology's namespace names, e.g. `lbt4242a`.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Full names of every namespace of this topology (fabric first).
    #[must_use]
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The fabric namespace (holds `br0` and the bridge ports).
    #[must_use]
    pub fn fabric_ns(&self) -> &str {
        &self.fabric
    }

    /// `/run/netns/<fabric>`.
    #[must_use]
    pub fn fabric_path(&self) -> PathBuf {
        netns_path(&self.fabric)
    }

    /// The LB namespace.
    #[must_use]
    pub fn lb_ns(&self) -> &str {
        &self.lb
    }

    /// `/run/netns/<lb>`.
    #[must_use]
    pub fn lb_path(&self) -> PathBuf {
        netns_path(&self.lb)
    }

    /// The LB's fabric address.
    #[must_use]
    pub fn lb_addr_v4(&self) -> Ipv4Addr {
        LB_V4
    }

    /// The LB's fabric IPv6 address.
    #[must_use]
    pub fn lb_addr_v6(&self) -> Ipv6Addr {
        LB_V6
    }

    /// `(fabric namespace, interface)` of the LB's bridge port: the port
    /// that receives the LB's `XDP_TX` frames and must run an XDP program.
    #[must_use]
    pub fn lb_fabric_port(&self) -> (String, String) {
        (self.fabric.clone(), port_name("lb"))
    }

    /// `(fabric namespace, interface)` of the bridge ports of the LB and of
    /// every backend (including ones added later): attach an `XDP_PASS`
    /// program to each, from a thread in the fabric namespace, so frames
    /// the LB sends with `XDP_TX` get through the bridge.
    #[must_use]
    pub fn fabric_ports(&self) -> Vec<(String, String)> {
        std::iter::once(port_name("lb"))
            .chain(self.backends.iter().map(|b| b.fabric_port.clone()))
            .map(|p| (self.fabric.clone(), p))
            .collect()
    }

    /// Number of clients.
    #[must_use]
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Namespace of client `i` (zero-based: client 0 is `c1`).
    ///
    /// # Panics
    /// If there is no client `i`.
    #[must_use]
    pub fn client_ns(&self, i: usize) -> &str {
        &self.clients[i]
    }

    /// `/run/netns/<client i>`.
    ///
    /// # Panics
    /// If there is no client `i`.
    #[must_use]
    pub fn client_path(&self, i: usize) -> PathBuf {
        netns_path(&self.clients[i])
    }

    /// Address of client `i` (zero-based): `10.77.0.(10 + i)`.
    #[must_use]
    pub fn client_addr_v4(&self, i: usize) -> Ipv4Addr {
        host_addrs(client_octet(i)).0
    }

    /// IPv6 address of client `i` (zero-based): `fd77::(10 + i)`.
    #[must_use]
    pub fn client_addr_v6(&self, i: usize) -> Ipv6Addr {
        host_addrs(client_octet(i)).1
    }

    /// All backends, in address order.
    #[must_use]
    pub fn backends(&self) -> &[BackendHost] {
        &self.backends
    }

    /// The backend with short name `name` (e.g. `a1`).
    ///
    /// # Panics
    /// If there is no such backend.
    #[must_use]
    pub fn backend(&self, name: &str) -> &BackendHost {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name:?} in topology {}", self.prefix))
    }

    /// Puts `vips` on `lo` (as /32 or /128) of every backend, so backends
    /// accept decapsulated VIP traffic and reply from the VIP. Idempotent.
    ///
    /// # Errors
    /// A failing `ip` command.
    pub fn add_vip_to_backends(&self, vips: &[IpAddr]) -> Result<()> {
        for b in &self.backends {
            add_vips(&b.ns, vips)?;
        }
        Ok(())
    }

    /// Puts `vips` on `lo` of one backend. Idempotent.
    ///
    /// # Errors
    /// Unknown backend or a failing `ip` command.
    pub fn add_vip_to_backend(&self, name: &str, vips: &[IpAddr]) -> Result<()> {
        let b = self
            .backends
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| anyhow!("no backend {name:?}"))?;
        add_vips(&b.ns, vips)
    }

    /// Runs `args` in namespace `ns` (a full name) with `ip netns exec`
    /// (which also gives the command a fresh `/sys`). The exit status is
    /// not checked: see [`Topology::run_ok`].
    ///
    /// # Errors
    /// `ns` is not one of this topology's, or the command cannot be started.
    pub fn run(&self, ns: &str, args: &[&str]) -> Result<Output> {
        self.check_ns(ns)?;
        ensure!(!args.is_empty(), "run: empty command");
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("ip netns exec {ns} {}", args.join(" ")))
    }

    /// Like [`Topology::run`], but fails on a non-zero exit and returns stdout.
    ///
    /// # Errors
    /// As [`Topology::run`], or the command exited unsuccessfully.
    pub fn run_ok(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = self.run(ns, args)?;
        ensure!(
            out.status.success(),
            "`ip netns exec {ns} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `cmd` with only its network namespace switched to `ns` (so it
    /// keeps the host's mounts, e.g. bpffs pins) and keeps it as a child of
    /// the topology: it is stopped with SIGTERM, then SIGKILL, on teardown.
    /// Returns its pid.
    ///
    /// # Errors
    /// `ns` is not one of this topology's, or the command cannot be started.
    ///
    /// # Panics
    /// If the child list's mutex is poisoned.
    pub fn spawn(&self, ns: &str, cmd: &mut Command) -> Result<u32> {
        self.check_ns(ns)?;
        let child = spawn_in_netns(&netns_path(ns), cmd)?;
        let pid = child.id();
        self.children.lock().expect("children mutex").push(child);
        Ok(pid)
    }

    /// Stops a child started with [`Topology::spawn`] (SIGTERM, SIGKILL after
    /// one second) and returns its exit status.
    ///
    /// # Errors
    /// `pid` is not a child of this topology, or waiting for it failed.
    ///
    /// # Panics
    /// If the child list's mutex is poisoned.
    pub fn stop_child(&self, pid: u32) -> Result<ExitStatus> {
        let mut child = {
            let mut children = self.children.lock().expect("children mutex");
            let idx = children
                .iter()
                .position(|c| c.id() == pid)
                .ok_or_else(|| anyhow!("pid {pid} is not a child of topology {}", self.prefix))?;
            children.swap_remove(idx)
        };
        terminate(&mut child)
    }

    fn check_ns(&self, ns: &str) -> Result<()> {
        ensure!(
            self.namespaces.iter().any(|n| n == ns),
            "{ns:?} is not a namespace of topology {} (use the full name, e.g. lb_ns())",
            self.prefix
        );
        Ok(())
    }

    /// Deletes everything now and reports what failed (`Drop` only logs).
    ///
    /// # Errors
    /// Some namespace or link could not be deleted.
    pub fn destroy(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        let children = std::mem::take(
            &mut *self
                .children
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for mut child in children {
            if let Err(e) = terminate(&mut child) {
                errors.push(format!("child {}: {e:#}", child.id()));
            }
        }
        // Deleting a veth end deletes its peer. Do it explicitly: a thread
        // still inside a namespace (e.g. a leaked server) would keep the
        // namespace, and so its veth, alive after `ip netns del`.
        if self.namespaces.contains(&self.fabric) && !self.ports.is_empty() {
            let script: String = self.ports.iter().fold(String::new(), |mut s, p| {
                let _ = writeln!(s, "link del {p}");
                s
            });
            if let Err(e) = ip_batch_force(&self.fabric, &script) {
                errors.push(format!("{e:#}"));
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", &ns])) {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "tearing down topology {}: {}",
                self.prefix,
                errors.join("; ")
            ))
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("lb-tests: {e:#}");
        }
    }
}

/// Deletes `lbt<pid>*` namespaces whose pid is no longer alive (left behind
/// by test processes that were killed before `Drop` ran).
///
/// # Errors
/// `/run/netns` is unreadable or a namespace could not be deleted.
pub fn cleanup_stale() -> Result<()> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context(NETNS_DIR),
    };
    let mut errors = Vec::new();
    for entry in entries {
        let name = entry.context(NETNS_DIR)?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = stale_pid(name) else { continue };
        if pid_alive(pid) {
            continue;
        }
        if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", name])) {
            errors.push(format!("{e:#}"));
        }
    }
    ensure!(errors.is_empty(), "{}", errors.join("; "));
    Ok(())
}

/// The pid in a name made by this module: `lbt<digits><letter>...`.
fn stale_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits_end = rest.find(|c: char| !c.is_ascii_digit())?;
    if digits_end == 0 || !rest[digits_end..].starts_with(|c: char| c.is_ascii_lowercase()) {
        return None;
    }
    rest[..digits_end].parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Runs `f` on a new thread whose network namespace is `path`
/// (`/run/netns/NAME`); only that thread switches. Sockets it creates stay
/// in that namespace and may be used from any thread afterwards.
///
/// # Panics
/// If the OS cannot create a thread.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<Result<T>> {
    let path = path.to_path_buf();
    let name = format!(
        "netns:{}",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            enter_netns_current_thread(&path)?;
            Ok(f())
        })
        .expect("spawning a thread")
}

/// [`in_netns`] and wait for the result; a panic in `f` becomes an error.
///
/// # Errors
/// Entering the namespace failed or `f` panicked.
pub fn run_in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    join_netns(in_netns(path, f))
}

/// Joins an [`in_netns`] thread, turning a panic into an error.
///
/// # Errors
/// Entering the namespace failed or the thread panicked.
pub fn join_netns<T>(handle: JoinHandle<Result<T>>) -> Result<T> {
    match handle.join() {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_owned());
            Err(anyhow!("thread in namespace panicked: {msg}"))
        }
    }
}

/// Switches the calling thread (only) into the network namespace at `path`.
/// The thread's sockets, `if_nametoindex` and netlink then see that
/// namespace; `/sys/class/net` still shows the host's (use netlink/ioctl).
///
/// # Errors
/// The namespace file cannot be opened or `setns` fails.
pub fn enter_netns_current_thread(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: plain syscall on a valid, open namespace fd.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns({})", path.display()));
    }
    Ok(())
}

/// Spawns `cmd` with its network namespace switched to `path` between fork
/// and exec (mounts stay the host's, unlike `ip netns exec`). The caller
/// owns the child.
///
/// # Errors
/// The namespace cannot be opened or the command cannot be started.
pub fn spawn_in_netns(path: &Path, cmd: &mut Command) -> Result<Child> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let fd = file.as_raw_fd();
    // SAFETY: the closure only makes the async-signal-safe setns syscall;
    // `file` outlives `spawn` so the fd is valid in the forked child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "spawning {} in {}",
            cmd.get_program().display(),
            path.display()
        )
    })?;
    drop(file);
    Ok(child)
}

/// Writes sysctls (`net.ipv4.ip_forward` style keys) in the namespace at
/// `path`, via `/proc/sys` from a thread inside it: `/proc/sys/net` shows
/// the namespace of the thread that opens it.
///
/// # Errors
/// Entering the namespace or a write failed.
pub fn write_sysctls(path: &Path, settings: &[(&str, &str)]) -> Result<()> {
    let owned: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let ns = path.display().to_string();
    run_in_netns(path, move || -> Result<()> {
        for (key, value) in &owned {
            let file = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&file, value)
                .with_context(|| format!("sysctl {key}={value} in {ns}"))?;
        }
        Ok(())
    })?
}

/// `fd77::` addresses reuse the v4 host number as their last group
/// (`10.77.0.100` <-> `fd77::64`).
fn host_addrs(octet: u8) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::new(10, 77, 0, octet),
        Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, u16::from(octet)),
    )
}

fn client_octet(i: usize) -> u8 {
    u8::try_from(i)
        .ok()
        .and_then(|i| FIRST_CLIENT.checked_add(i))
        .filter(|o| *o < FIRST_BACKEND)
        .unwrap_or_else(|| panic!("client index {i} out of range"))
}

fn port_name(short: &str) -> String {
    format!("p-{short}")
}

/// `0 -> a, 25 -> z, 26 -> ba, ...` (letters keep the pid parseable).
fn letters(mut n: u32) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + u8::try_from(n % 26).expect("< 26"));
        n /= 26;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// Addresses, MTU, routes (`extra` is more `ip -batch` lines) and links up.
fn configure_host(ns: &str, v4: Ipv4Addr, v6: Ipv6Addr, mtu: u32, extra: &str) -> Result<()> {
    ip_batch(
        Some(ns),
        &format!(
            "link set lo up\n\
             link set {HOST_IF} mtu {mtu}\n\
             addr add {v4}/24 dev {HOST_IF}\n\
             addr add {v6}/64 dev {HOST_IF} nodad\n\
             link set {HOST_IF} up\n\
             {extra}"
        ),
    )
}

fn add_vips(ns: &str, vips: &[IpAddr]) -> Result<()> {
    if vips.is_empty() {
        return Ok(());
    }
    let script: String = vips.iter().fold(String::new(), |mut s, vip| {
        let _ = match vip {
            IpAddr::V4(a) => writeln!(s, "addr replace {a}/32 dev lo"),
            IpAddr::V6(a) => writeln!(s, "addr replace {a}/128 dev lo"),
        };
        s
    });
    ip_batch(Some(ns), &script)
}

/// Waits until `eth0` in `ns` has no tentative (or failed) IPv6 address.
fn wait_not_tentative(ns: &str) -> Result<()> {
    let deadline = Instant::now() + DAD_WAIT;
    loop {
        let out = run_checked(Command::new("ip").args([
            "-n",
            ns,
            "-6",
            "addr",
            "show",
            "dev",
            HOST_IF,
            "tentative",
        ]))?;
        let failed = run_checked(Command::new("ip").args([
            "-n",
            ns,
            "-6",
            "addr",
            "show",
            "dev",
            HOST_IF,
            "dadfailed",
        ]))?;
        ensure!(failed.trim().is_empty(), "DAD failed in {ns}: {failed}");
        if out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("IPv6 addresses in {ns} still tentative after {DAD_WAIT:?}: {out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `ip [-n ns] -batch -` with `script` on stdin.
fn ip_batch(ns: Option<&str>, script: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    run_with_stdin(&mut cmd, script)
}

/// Like [`ip_batch`] but goes on past failing lines (teardown).
fn ip_batch_force(ns: &str, script: &str) -> Result<()> {
    run_with_stdin(
        Command::new("ip").args(["-n", ns, "-force", "-batch", "-"]),
        script,
    )
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    let desc = format!("{cmd:?} <<< {input:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {desc}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {desc}"))?;
    let out = child.wait_with_output().with_context(|| desc.clone())?;
    ensure!(
        out.status.success(),
        "{desc} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Runs a command, failing on a non-zero exit; returns stdout.
fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn find_in_path(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Root's PATH normally has the sbin directories; add them for sudo-less
    // environments that drop them.
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("`{program}` not found in PATH"))
}

/// SIGTERM, wait up to [`CHILD_GRACE`], then SIGKILL.
fn terminate(child: &mut Child) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: `pid` is our own unreaped child, so it cannot be reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + CHILD_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().context("SIGKILL")?;
    Ok(child.wait()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::{
        LongLived, Proto, TcpNameServer, UdpNameServer, spread, tcp_ask_name, udp_ask_name,
    };
    use std::net::SocketAddr;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn listed_namespaces(prefix: &str) -> Vec<String> {
        let out = run_checked(Command::new("ip").args(["netns", "list"])).expect("ip netns list");
        out.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .map(ToOwned::to_owned)
            .collect()
    }

    #[test]
    fn names() {
        assert_eq!(letters(0), "a");
        assert_eq!(letters(25), "z");
        assert_eq!(letters(26), "ba");
        assert_eq!(stale_pid("lbt4242a-lb"), Some(4242));
        assert_eq!(stale_pid("lbt4242-lb"), None);
        assert_eq!(stale_pid("lbtx-lb"), None);
        assert_eq!(host_addrs(100).1, "fd77::64".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    #[expect(
        clippy::too_many_lines,
        reason = "one scenario: build, check each property, tear down"
    )]
    fn topology_routes_and_cleans_up() {
        if !is_root() {
            eprintln!("skipping: needs root for network namespaces");
            return;
        }
        let mut topo = Topology::create(&TopologySpec::new().with_clients(1).with_tenant("a", 2))
            .expect("create topology");
        let prefix = topo.prefix().to_owned();
        assert_eq!(
            listed_namespaces(&prefix).len(),
            5,
            "fabric, lb, c1, a1, a2"
        );

        // Configuration the balancer relies on.
        let lb = topo.lb_ns().to_owned();
        assert_eq!(
            topo.run_ok(&lb, &["cat", "/proc/sys/net/ipv4/ip_forward"])
                .unwrap()
                .trim(),
            "1"
        );
        let a1 = topo.backend("a1").clone();
        assert_eq!(a1.v4, Ipv4Addr::new(10, 77, 0, 100));
        assert_eq!(
            topo.backend("a2").v6,
            "fd77::65".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            topo.run_ok(&a1.ns, &["cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore"])
                .unwrap()
                .trim(),
            "1"
        );
        let c1 = topo.client_ns(0).to_owned();
        let route = topo
            .run_ok(&c1, &["ip", "route", "get", "10.77.100.7"])
            .unwrap();
        assert!(route.contains("via 10.77.0.2"), "{route}");
        let route = topo
            .run_ok(&c1, &["ip", "-6", "route", "get", "fd77:100::7"])
            .unwrap();
        assert!(route.contains("via fd77::2"), "{route}");
        let link = topo
            .run_ok(&a1.ns, &["ip", "link", "show", "eth0"])
            .unwrap();
        assert!(link.contains("mtu 1600"), "{link}");
        assert_eq!(topo.fabric_ports().len(), 3);
        let fabric = topo.fabric_ns().to_owned();
        let br = topo
            .run_ok(&fabric, &["ip", "link", "show", BRIDGE])
            .unwrap();
        assert!(br.contains("mtu 1600"), "{br}");
        let offload = topo.run_ok(&c1, &["ethtool", "-k", HOST_IF]).unwrap();
        assert!(offload.contains("tx-checksumming: off"), "{offload}");

        // Plain routed connectivity over the bridge, no BPF involved.
        let tcp4 = TcpNameServer::start(&a1.path(), "0.0.0.0:8080".parse().unwrap(), "a1").unwrap();
        let tcp6 = TcpNameServer::start(&a1.path(), "[::]:8080".parse().unwrap(), "a1-v6").unwrap();
        let a2 = topo.backend("a2").clone();
        let udp = UdpNameServer::start(&a2.path(), SocketAddr::new(IpAddr::V4(a2.v4), 5353), "a2")
            .unwrap();
        let client = topo.client_path(0);
        let v4 = SocketAddr::new(IpAddr::V4(a1.v4), 8080);
        let v6 = SocketAddr::new(IpAddr::V6(a1.v6), 8080);
        let u4 = SocketAddr::new(IpAddr::V4(a2.v4), 5353);
        let (n4, n6, nu) = run_in_netns(&client, move || {
            let t = Duration::from_secs(3);
            (
                tcp_ask_name(v4, t).unwrap(),
                tcp_ask_name(v6, t).unwrap(),
                udp_ask_name(u4, t).unwrap(),
            )
        })
        .unwrap();
        assert_eq!(
            (n4.as_str(), n6.as_str(), nu.as_str()),
            ("a1", "a1-v6", "a2")
        );

        let counts = spread(&client, v4, 20, Proto::Tcp).unwrap();
        assert_eq!(counts.get("a1"), Some(&20), "{counts:?}");
        let counts = spread(&client, u4, 10, Proto::Udp).unwrap();
        assert_eq!(counts.get("a2"), Some(&10), "{counts:?}");
        assert_eq!(tcp4.accepted(), 21);

        let conn = LongLived::open(&client, v6).unwrap();
        assert_eq!(conn.backend_name(), "a1-v6");
        conn.probe().unwrap();
        conn.probe().unwrap();

        // A backend added later is reachable at the next address.
        let a3 = topo.add_backend("a3").unwrap();
        assert_eq!(a3.v4, Ipv4Addr::new(10, 77, 0, 102));
        topo.add_vip_to_backends(&[IpAddr::V4(vip_v4(1)), IpAddr::V6(vip_v6(1))])
            .unwrap();
        let lo = topo
            .run_ok(&a3.ns, &["ip", "addr", "show", "dev", "lo"])
            .unwrap();
        assert!(
            lo.contains("10.77.100.1/32") && lo.contains("fd77:100::1/128"),
            "{lo}"
        );

        tcp6.stop();
        assert!(
            conn.probe().is_err(),
            "connection must close when its server stops"
        );
        tcp4.stop();
        udp.stop();
        drop(topo);
        assert!(
            listed_namespaces(&prefix).is_empty(),
            "namespaces left behind"
        );
    }

    #[test]
    fn panicking_test_still_cleans_up() {
        if !is_root() {
            eprintln!("skipping: needs root for network namespaces");
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let res = std::thread::spawn(move || {
            let topo = Topology::create(&TopologySpec::new()).expect("create topology");
            tx.send(topo.prefix().to_owned()).unwrap();
            panic!("test failure inside a topology");
        })
        .join();
        assert!(res.is_err());
        let prefix = rx.recv().unwrap();
        assert!(
            listed_namespaces(&prefix).is_empty(),
            "namespaces left behind"
        );
    }
}
