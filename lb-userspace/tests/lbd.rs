//! The `lbd` and `lbctl` binaries, end to end, in network namespaces:
//! `--check` exit codes and messages, `lbd` programming the balancer from a
//! file, traffic that keeps flowing after `lbd` stops (the program stays
//! attached, the maps pinned), a restarted `lbd` adopting the pins,
//! `--cleanup` detaching everything, and the warning at start for a TCP
//! admin API beyond loopback without TLS (not for loopback, nor with
//! `admin_tls`).

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{LBCTL, lbctl_in, wait_for};
use lb_tests::{
    netns::{Topology, TopologySpec, netns_path},
    servers::{Proto, SpreadOptions, TcpNameServer, spread, spread_with},
};

const LBD: &str = env!("CARGO_BIN_EXE_lbd");
const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);

fn write_config(dir: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("config dir");
    let path = dir.join("lb.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

fn lbd(args: &[&str]) -> Output {
    Command::new(LBD).args(args).output().expect("running lbd")
}

#[test]
fn check_reports_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("lbd-check-{}", std::process::id()));
    let good = write_config(
        &dir,
        "[node]\ninterface = \"eth0\"\n[[tenant]]\nname = \"acme\"\n[[tenant.pool]]\nname = \"web\"\n\
         backends = [{ address = \"10.0.0.1\" }]\n[[tenant.l4]]\nvip = \"10.1.0.1\"\nport = 80\n\
         protocol = \"tcp\"\npool = \"web\"\n",
    );
    let out = lbd(&["--config", good.to_str().expect("utf-8"), "--check"]);
    assert!(out.status.success(), "valid config rejected: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (1 tenants"),
        "{out:?}"
    );

    let bad = write_config(
        &dir,
        "[node]\ninterface = \"eth0\"\n[[tenant]]\nname = \"acme\"\n[[tenant.pool]]\nname = \"web\"\n\
         backends = [{ address = \"10.0.0.1\" }]\n[[tenant.l4]]\nvip = \"10.1.0.1\"\nport = 80\n\
         protocol = \"tcp\"\npool = \"wbe\"\n",
    );
    let out = lbd(&["--config", bad.to_str().expect("utf-8"), "--check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lb.toml:12:"),
        "error should name file and line 12: {err}"
    );
    assert!(err.contains("pool"), "error should name the field: {err}");
    assert!(
        err.contains("wbe"),
        "error should name the bad value: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_refuses_a_weak_admin_token() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("lbd-check-token-{}", std::process::id()));
    let token = dir.join("admin.token");
    let config = write_config(
        &dir,
        &format!(
            "[node]\ninterface = \"eth0\"\nadmin_listen = \"127.0.0.1:9465\"\n\
             admin_token_file = \"{}\"\n",
            token.display()
        ),
    );
    let check = |text: &str, mode: u32| {
        std::fs::write(&token, text).expect("token");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).expect("chmod");
        lbd(&["--config", config.to_str().expect("utf-8"), "--check"])
    };
    let long = "0123456789abcdef0123456789abcdef";
    let out = check(long, 0o600);
    assert!(
        out.status.success(),
        "a 32-byte token in a 0600 file: {out:?}"
    );
    let out = check(&long[1..], 0o600);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("31 bytes") && err.contains("at least 32"),
        "{err}"
    );
    let out = check(long, 0o644);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_example_production_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/lb.example.toml");
    let out = lbd(&["--config", example, "--check"]);
    assert!(out.status.success(), "packaging/lb.example.toml: {out:?}");
}

/// lbd run under `nsenter --net`, stopped with SIGTERM on drop.
struct Daemon(Child);

impl Daemon {
    fn start(lb_ns: &Path, config: &Path, log: &Path) -> Daemon {
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", lb_ns.display()))
            .arg(LBD)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting lbd");
        Daemon(child)
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child.
        #[expect(clippy::cast_possible_wrap, reason = "pids fit in i32")]
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.terminate();
        }
    }
}

/// Removes the pins left by `lbd` and by `lbctl` on drop.
struct Pins {
    config: PathBuf,
    pin_path: PathBuf,
    links: PathBuf,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new(LBD)
            .arg("--config")
            .arg(&self.config)
            .arg("--cleanup")
            .output();
        // Also through the library, in case the test failed before the
        // configuration file was written.
        let _ = lb::dataplane::cleanup(&self.pin_path);
        let _ = std::fs::remove_dir_all(&self.links);
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, step by step: start, stop, restart, clean up"
)]
fn lbd_programs_survives_restart_and_cleans_up() {
    let topo = Topology::create(&TopologySpec::new().with_clients(1).with_tenant("a", 3))
        .expect("topology");
    let work = std::env::temp_dir().join(format!("lbd-e2e-{}", topo.prefix()));
    let pin_path = PathBuf::from(format!("/sys/fs/bpf/{}-lb", topo.prefix()));
    let links = PathBuf::from(format!("/sys/fs/bpf/{}-links", topo.prefix()));
    let backends: Vec<String> = topo
        .backends()
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.v4))
        .collect();
    let config = write_config(
        &work,
        &format!(
            "[node]\ninterface = \"eth0\"\npin_path = \"{}\"\nstate_dir = \"{}\"\n\
             admin_socket = \"{}\"\n[[tenant]]\nname = \"acme\"\n\
             [[tenant.pool]]\nname = \"web\"\nbackends = [{}]\n[[tenant.l4]]\nvip = \"{VIP}\"\n\
             port = 80\nprotocol = \"tcp\"\npool = \"web\"\n",
            pin_path.display(),
            work.join("state").display(),
            work.join("admin.sock").display(),
            backends.join(", ")
        ),
    );
    let _pins = Pins {
        config: config.clone(),
        pin_path: pin_path.clone(),
        links: links.clone(),
    };
    let links_arg = links.to_str().expect("utf-8");
    for (ns, iface) in topo.fabric_ports() {
        lbctl_in(
            &netns_path(&ns),
            &["pass", "attach", &iface, "--pin-dir", links_arg],
        );
    }
    topo.add_vip_to_backends(&[IpAddr::V4(VIP)])
        .expect("VIP on backends");
    let mut servers = Vec::new();
    for b in topo.backends() {
        lbctl_in(
            &b.path(),
            &["decap", "attach", "eth0", "--pin-dir", links_arg],
        );
        servers.push(
            TcpNameServer::start(&b.path(), "0.0.0.0:80".parse().expect("addr"), &b.name)
                .expect("server"),
        );
    }
    let vip = SocketAddr::new(VIP.into(), 80);
    let client = topo.client_path(0);
    let link_pin = pin_path.join("link_xdp_eth0");

    let daemon = Daemon::start(&topo.lb_path(), &config, &work.join("lbd.log"));
    wait_for("lbd to attach", Duration::from_secs(20), || {
        link_pin.exists()
    });
    let neigh_ok = |topo: &Topology| {
        let table = topo
            .run_ok(topo.lb_ns(), &["ip", "neigh", "show"])
            .unwrap_or_default();
        topo.backends().iter().all(|b| {
            table
                .lines()
                .any(|l| l.starts_with(&format!("{} ", b.v4)) && l.contains("lladdr"))
        })
    };
    wait_for(
        "lbd to resolve the backends",
        Duration::from_secs(20),
        || neigh_ok(&topo),
    );
    let counts = spread(&client, vip, 300, Proto::Tcp).expect("traffic through lbd");
    assert_eq!(counts.len(), 3, "all three backends serve: {counts:?}");

    // SIGTERM: lbd exits, the program and maps stay, traffic keeps flowing.
    daemon.stop();
    assert!(
        link_pin.exists(),
        "the XDP link must stay pinned after lbd stops"
    );
    let counts = spread(&client, vip, 200, Proto::Tcp).expect("traffic with lbd stopped");
    assert_eq!(counts.values().sum::<usize>(), 200, "{counts:?}");

    // A new lbd adopts the pinned maps and link.
    let daemon = Daemon::start(&topo.lb_path(), &config, &work.join("lbd2.log"));
    let stats = || {
        Command::new(LBCTL)
            .args(["stats", "--json", "--maps"])
            .arg(&pin_path)
            .output()
            .expect("lbctl stats")
    };
    wait_for(
        "the restarted lbd to program the maps",
        Duration::from_secs(20),
        || stats().status.success(),
    );
    let counts = spread(&client, vip, 200, Proto::Tcp).expect("traffic after restart");
    assert_eq!(counts.values().sum::<usize>(), 200, "{counts:?}");
    let out = stats();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"tenants\""), "lbctl stats --json: {json}");
    daemon.stop();

    // --cleanup detaches: the VIP is no longer served.
    let out = lbd(&["--config", config.to_str().expect("utf-8"), "--cleanup"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!link_pin.exists(), "cleanup must remove the link pin");
    let after = spread_with(
        &client,
        vip,
        3,
        Proto::Tcp,
        &SpreadOptions {
            attempt_timeout: Duration::from_millis(500),
            max_failures: Some(3),
            ..SpreadOptions::default()
        },
    )
    .expect("attempts after cleanup");
    assert_eq!(
        after.get(lb_tests::servers::ERROR_KEY),
        Some(&3),
        "nothing may answer the VIP after cleanup: {after:?}"
    );
    drop(servers);
    let _ = std::fs::remove_dir_all(&work);
}

/// What `lbd` logs at start when its TCP admin API would carry the token
/// in clear beyond the node (`src/admin.rs`).
const CLEAR_ADMIN_WARNING: &str = "the admin API listens on TCP beyond loopback without TLS";

#[test]
fn a_clear_admin_api_beyond_loopback_is_warned_about_at_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let topo = Topology::create(&TopologySpec::new()).expect("topology");
    let work = std::env::temp_dir().join(format!("lbd-admin-warning-{}", topo.prefix()));
    let pin_path = PathBuf::from(format!("/sys/fs/bpf/{}-lb", topo.prefix()));
    std::fs::create_dir_all(&work).expect("work dir");
    let pins = Pins {
        config: work.join("lb.toml"),
        pin_path: pin_path.clone(),
        links: work.join("links"),
    };
    let token = work.join("admin.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let cert = rcgen::generate_simple_self_signed(vec!["lb.test".to_owned()]).expect("cert");
    std::fs::write(work.join("admin.pem"), cert.cert.pem()).expect("admin.pem");
    std::fs::write(work.join("admin.key"), cert.key_pair.serialize_pem()).expect("admin.key");

    // Addresses of the LB's own namespace only: its fabric address,
    // every address (of that namespace), loopback.
    let lb = IpAddr::V4(topo.lb_addr_v4());
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for (i, (ip, tls, warned)) in [
        (lb, false, true),
        (any, false, true),
        (loopback, false, false),
        (lb, true, false),
    ]
    .into_iter()
    .enumerate()
    {
        let tls_line = if tls {
            "admin_tls = { cert = \"admin.pem\", key = \"admin.key\" }\n"
        } else {
            ""
        };
        let config = write_config(
            &work,
            &format!(
                "[node]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\npin_path = \"{}\"\n\
                 state_dir = \"{}\"\nadmin_socket = \"{}\"\n\
                 admin_listen = \"{}\"\nadmin_token_file = \"{}\"\n{tls_line}",
                pin_path.display(),
                work.join("state").display(),
                work.join("admin.sock").display(),
                SocketAddr::new(ip, 9465),
                token.display(),
            ),
        );
        let log = work.join(format!("lbd{i}.log"));
        let daemon = Daemon::start(&topo.lb_path(), &config, &log);
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_for(
            "lbd to serve its admin API on TCP",
            Duration::from_secs(20),
            || read().contains("admin API listening on TCP"),
        );
        daemon.stop();
        let text = read();
        let what = format!("admin_listen {ip}:9465, admin_tls {tls}");
        assert_eq!(
            text.contains(CLEAR_ADMIN_WARNING),
            warned,
            "{what}: the warning should be {}logged; lbd's log:\n{text}",
            if warned { "" } else { "not " }
        );
    }
    drop(pins);
    let _ = std::fs::remove_dir_all(&work);
}
