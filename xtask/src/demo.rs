//! `cargo xtask demo`: two tenants behind one XDP balancer, in network
//! namespaces, with real TCP servers that answer with their own name; then
//! the same two tenants on one shared HTTPS address served by `lbd`'s L7
//! tier ([`crate::demo_l7`]).
//!
//! Every resource (namespaces, the `lbd` process, pins) is owned by a guard
//! whose `Drop` removes it, so the demo cleans up on success, on error and on
//! Ctrl-C (which only raises a flag; the demo stops at the next step).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_tests::{
    netns::{Topology, TopologySpec, netns_path},
    servers::{Proto, TcpNameServer, spread},
};

use crate::{cargo, root};

const VIP_A: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
const VIP_B: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 2);
const PORT: u16 = 80;

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        #[expect(clippy::cast_possible_wrap, reason = "pids fit in i32")]
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `lbd --cleanup` and removes the link pins and the demo's working
/// directory when dropped.
struct PinGuard {
    lbd: PathBuf,
    config: PathBuf,
    links: PathBuf,
    work: PathBuf,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.lbd)
            .arg("--config")
            .arg(&self.config)
            .arg("--cleanup")
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.links);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

pub fn run(connections: usize) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            eprintln!("\ninterrupted: cleaning up");
            stop.store(true, Ordering::SeqCst);
        })
        .context("installing the Ctrl-C handler")?;
    }
    let check = |stop: &AtomicBool| -> anyhow::Result<()> {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    };

    crate::run(
        "building lbd and lbctl (release)",
        cargo().args(["build", "--release", "-p", "lb-userspace", "--bins"]),
    )?;
    let bin = root().join("target/release");
    let lbd = bin.join("lbd");
    let lbctl = bin.join("lbctl");

    println!(
        "==> creating namespaces: a client, the LB node, backends a1-a3 (tenant acme) and b1-b3 (tenant globex)"
    );
    let topo = Topology::create(
        &TopologySpec::new()
            .with_clients(1)
            .with_tenant("a", 3)
            .with_tenant("b", 3),
    )?;
    let work = std::env::temp_dir().join(format!("lb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let pin_path = PathBuf::from(format!("/sys/fs/bpf/lb-demo-{}", std::process::id()));
    let links = PathBuf::from(format!("/sys/fs/bpf/lb-demo-links-{}", std::process::id()));
    let config_path = work.join("lb.toml");
    crate::demo_l7::make_certificates(&work)?;
    std::fs::write(&config_path, demo_config(&topo, &pin_path, &work))?;
    let _pins = PinGuard {
        lbd: lbd.clone(),
        config: config_path.clone(),
        links: links.clone(),
        work: work.clone(),
    };

    let servers = prepare_backends(&topo, &lbctl, &links)?;
    let http_servers = crate::demo_l7::prepare(&topo)?;
    check(&stop)?;

    println!("==> starting lbd in the LB namespace");
    let log = std::fs::File::create(work.join("lbd.log"))?;
    let child = Command::new("nsenter")
        .arg(format!("--net={}", topo.lb_path().display()))
        .arg(&lbd)
        .arg("--config")
        .arg(&config_path)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting lbd under nsenter")?;
    let _lbd = ChildGuard(child);
    wait_attached(&pin_path, &work.join("lbd.log"))?;
    wait_neighbours(&topo)?;
    check(&stop)?;

    let client = topo.client_path(0);
    for (tenant, vip, prefix) in [("acme", VIP_A, 'a'), ("globex", VIP_B, 'b')] {
        let addr = SocketAddr::new(IpAddr::V4(vip), PORT);
        let counts = spread(&client, addr, connections, Proto::Tcp)?;
        print_spread(tenant, addr, connections, &counts, prefix);
        check(&stop)?;
    }

    crate::demo_l7::show(&client, &work)?;
    check(&stop)?;

    println!("\n==> per-tenant counters (lbctl stats, from lbd's admin socket)");
    let out = Command::new(&lbctl)
        .arg("--socket")
        .arg(work.join("admin.sock"))
        .arg("stats")
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("==> tearing down (lbd, pins, namespaces)");
    drop(servers);
    drop(http_servers);
    Ok(())
}

/// Readies the fabric and the backends: the bridge ports towards the LB and
/// the backends accept frames sent with `XDP_TX` only with an XDP program attached;
/// backends hold the VIPs, decapsulate IPIP in XDP and run name servers.
fn prepare_backends(
    topo: &Topology,
    lbctl: &Path,
    links: &Path,
) -> anyhow::Result<Vec<TcpNameServer>> {
    for (ns, iface) in topo.fabric_ports() {
        lbctl_in(
            lbctl,
            &netns_path(&ns),
            &["pass", "attach", &iface, "--pin-dir"],
            links,
        )?;
    }
    let mut servers = Vec::new();
    topo.add_vip_to_backends(&[IpAddr::V4(VIP_A), IpAddr::V4(VIP_B)])?;
    for host in topo.backends() {
        lbctl_in(
            lbctl,
            &host.path(),
            &["decap", "attach", "eth0", "--pin-dir"],
            links,
        )?;
        servers.push(TcpNameServer::start(
            &host.path(),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT),
            &host.name,
        )?);
    }
    Ok(servers)
}

fn lbctl_in(lbctl: &Path, ns: &Path, args: &[&str], pin_dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg(lbctl)
        .args(args)
        .arg(pin_dir)
        .output()
        .context("running lbctl under nsenter")?;
    if !out.status.success() {
        bail!(
            "lbctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Waits for lbd to pin its XDP link: it does so after programming the maps.
fn wait_attached(pin_path: &Path, log: &Path) -> anyhow::Result<()> {
    let link = pin_path.join("link_xdp_eth0");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if link.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "lbd did not attach within 20 s; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

/// lbd resolves the backends' MAC addresses when it starts (the XDP program
/// cannot); wait until the LB node has them all.
fn wait_neighbours(topo: &Topology) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let table = topo.run_ok(topo.lb_ns(), &["ip", "neigh", "show"])?;
        let missing: Vec<String> = topo
            .backends()
            .iter()
            .map(|b| b.v4.to_string())
            .filter(|a| {
                !table
                    .lines()
                    .any(|l| l.starts_with(&format!("{a} ")) && l.contains("lladdr"))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the LB node did not resolve backends {missing:?} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_spread(
    tenant: &str,
    vip: SocketAddr,
    n: usize,
    counts: &BTreeMap<String, usize>,
    prefix: char,
) {
    println!("\ntenant {tenant}: {n} connections to {vip}");
    for (name, count) in counts {
        #[expect(clippy::cast_precision_loss, reason = "display only")]
        let pct = *count as f64 * 100.0 / n as f64;
        let own = if name.starts_with(prefix) {
            ""
        } else {
            "  <-- NOT this tenant's backend"
        };
        println!(
            "  {name:<10} {count:>5}  {pct:5.1}%  {}{own}",
            "#".repeat(count * 40 / n.max(1))
        );
    }
}

/// The demo's configuration; every path is private to this run, so the
/// demo never touches a real lbd's pins, socket or state on the machine.
fn demo_config(topo: &Topology, pin_path: &Path, work: &Path) -> String {
    let mut s = format!(
        "# Generated by `cargo xtask demo`.\n[node]\ninterface = \"eth0\"\nforwarding = \"ipip\"\n\
         pin_path = \"{}\"\nstate_dir = \"{}\"\nadmin_socket = \"{}\"\n\
         access_log = \"{}\"\n",
        pin_path.display(),
        work.join("state").display(),
        work.join("admin.sock").display(),
        work.join("access.log").display()
    );
    for (tenant, prefix, vip) in [("acme", 'a', VIP_A), ("globex", 'b', VIP_B)] {
        let _ = write!(
            s,
            "\n[[tenant]]\nname = \"{tenant}\"\n\n[[tenant.pool]]\nname = \"web\"\nbackends = [\n"
        );
        for host in topo
            .backends()
            .iter()
            .filter(|h| h.name.starts_with(prefix))
        {
            let _ = writeln!(s, "  {{ address = \"{}\", weight = 1 }},", host.v4);
        }
        let _ = write!(
            s,
            "]\n\n[[tenant.l4]]\nvip = \"{vip}\"\nport = {PORT}\nprotocol = \"tcp\"\npool = \"web\"\n"
        );
        s.push_str(&crate::demo_l7::tenant_config(topo, tenant, prefix, work));
    }
    s
}
