//! The control plane end to end, in network namespaces with real servers:
//! health checks taking backends out and back, restarts of `lbd` (SIGTERM,
//! SIGKILL) under continuous traffic, reloads that add and remove tenants
//! without disturbing a third, refused broken reloads, draining (with no
//! new flow dropped while a backend is drained and enabled again), the
//! admin API's refusals, and `lbctl --maps` without a daemon.

mod common;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{LBCTL, lbctl_in, wait_for};
use lb_tests::{
    netns::{Topology, TopologySpec, netns_path, run_in_netns},
    servers::{LongLived, Proto, TcpNameServer, ask_name, spread},
};

const LBD: &str = env!("CARGO_BIN_EXE_lbd");
/// The TCP admin API's bearer token (lbd wants at least 32 bytes).
const ADMIN_TOKEN: &str = "control-plane-test-token-0123456789";

/// A topology with the backends' programs and name servers, an `lbd` config
/// in a private directory, and pins cleaned up on drop.
struct Node {
    topo: Topology,
    work: PathBuf,
    pin_path: PathBuf,
    links: PathBuf,
    config: PathBuf,
    servers: BTreeMap<String, TcpNameServer>,
    lbd: Option<Child>,
    log_no: usize,
}

fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 100, n)
}

impl Node {
    fn new(tenants: &[(&str, usize)]) -> Node {
        let mut spec = TopologySpec::new().with_clients(1);
        for (label, n) in tenants {
            spec = spec.with_tenant(label, *n);
        }
        let topo = Topology::create(&spec).expect("topology");
        let work = std::env::temp_dir().join(format!("lb-cp-{}", topo.prefix()));
        std::fs::create_dir_all(&work).expect("work dir");
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/{}-lb", topo.prefix()));
        let links = PathBuf::from(format!("/sys/fs/bpf/{}-links", topo.prefix()));
        let links_arg = links.to_str().expect("utf-8").to_string();
        for (ns, iface) in topo.fabric_ports() {
            lbctl_in(
                &netns_path(&ns),
                &["pass", "attach", &iface, "--pin-dir", &links_arg],
            );
        }
        let vips: Vec<IpAddr> = (1..=8).map(|n| IpAddr::V4(vip(n))).collect();
        topo.add_vip_to_backends(&vips).expect("VIPs on backends");
        let mut servers = BTreeMap::new();
        for b in topo.backends() {
            lbctl_in(
                &b.path(),
                &["decap", "attach", "eth0", "--pin-dir", &links_arg],
            );
            servers.insert(
                b.name.clone(),
                TcpNameServer::start(&b.path(), "0.0.0.0:80".parse().expect("addr"), &b.name)
                    .expect("server"),
            );
        }
        let config = work.join("lb.toml");
        Node {
            topo,
            pin_path,
            links,
            config,
            servers,
            lbd: None,
            log_no: 0,
            work,
        }
    }

    fn socket(&self) -> PathBuf {
        self.work.join("admin.sock")
    }

    /// `[node]` plus one tenant per (name, backend label, VIP number).
    fn write_config(&self, tenants: &[(&str, &str, u8)], health: &str, extra_node: &str) {
        let mut s = format!(
            "[node]\ninterface = \"eth0\"\npin_path = \"{}\"\nstate_dir = \"{}\"\nadmin_socket = \"{}\"\n\
             metrics_listen = \"127.0.0.1:0\"\n{extra_node}\n",
            self.pin_path.display(),
            self.work.join("state").display(),
            self.socket().display()
        );
        for (name, label, n) in tenants {
            let backends: Vec<String> = self
                .topo
                .backends()
                .iter()
                .filter(|b| b.name.starts_with(label))
                .map(|b| format!("{{ address = \"{}\" }}", b.v4))
                .collect();
            let _ = write!(
                s,
                "\n[[tenant]]\nname = \"{name}\"\n[[tenant.pool]]\nname = \"web\"\nbackends = [{}]\n{health}\n\
                 [[tenant.l4]]\nvip = \"{}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n",
                backends.join(", "),
                vip(*n)
            );
        }
        std::fs::write(&self.config, s).expect("writing the config");
    }

    fn start_lbd(&mut self) {
        self.log_no += 1;
        let log =
            std::fs::File::create(self.work.join(format!("lbd{}.log", self.log_no))).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.topo.lb_path().display()))
            .arg(LBD)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting lbd");
        self.lbd = Some(child);
        let sock = self.socket();
        wait_for("lbd's admin socket", Duration::from_secs(20), || {
            lbctl(&sock, &["status"]).status.success()
        });
    }

    fn signal_lbd(&mut self, sig: i32) {
        if let Some(mut child) = self.lbd.take() {
            // SAFETY: kill(2) on our own child.
            #[expect(clippy::cast_possible_wrap, reason = "pids fit in i32")]
            unsafe {
                libc::kill(child.id() as i32, sig);
            }
            let _ = child.wait();
        }
    }

    fn lbctl(&self, args: &[&str]) -> Output {
        lbctl(&self.socket(), args)
    }

    fn lbctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.lbctl(&all);
        assert!(out.status.success(), "lbctl {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("lbctl {args:?}: not JSON ({e}): {out:?}"))
    }

    fn backend_state(&self, name: &str) -> String {
        let addr = self.topo.backend(name).v4.to_string();
        let list = self.lbctl_json(&["backend", "list"]);
        list.as_array()
            .expect("a list")
            .iter()
            .find(|b| b["address"] == addr.as_str())
            .map_or_else(
                || "absent".into(),
                |b| b["state"].as_str().unwrap_or("").to_string(),
            )
    }

    fn wait_neighbours(&self) {
        self.wait_neighbours_of("");
    }

    /// Waits until the LB node resolved the backends whose names start
    /// with one of the characters of `labels` (all when empty): lbd warms
    /// only the backends its configuration names.
    fn wait_neighbours_of(&self, labels: &str) {
        wait_for("backend MACs", Duration::from_secs(10), || {
            let table = self
                .topo
                .run_ok(self.topo.lb_ns(), &["ip", "neigh", "show"])
                .unwrap_or_default();
            self.topo
                .backends()
                .iter()
                .filter(|b| labels.is_empty() || labels.contains(&b.name[..1]))
                .all(|b| {
                    table
                        .lines()
                        .any(|l| l.starts_with(&format!("{} ", b.v4)) && l.contains("lladdr"))
                })
        });
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal_lbd(libc::SIGTERM);
        // The library, not `lbd --cleanup`: a test may leave a broken
        // configuration file behind on purpose.
        let _ = lb::dataplane::cleanup(&self.pin_path);
        let _ = std::fs::remove_dir_all(&self.links);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn lbctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(LBCTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("running lbctl")
}

const FAST_HEALTH: &str =
    "health = { kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2 }";

#[test]
fn health_checks_take_a_dead_backend_out_and_back() {
    let mut node = Node::new(&[("a", 3)]);
    node.write_config(&[("acme", "a", 1)], FAST_HEALTH, "");
    node.start_lbd();
    node.wait_neighbours();
    let client = node.topo.client_path(0);
    let addr = SocketAddr::new(vip(1).into(), 80);
    let before = spread(&client, addr, 90, Proto::Tcp).expect("spread");
    assert_eq!(before.len(), 3, "{before:?}");

    // Kill a2's server: out within fall x interval + interval (+ slack).
    let killed_at = Instant::now();
    node.servers.remove("a2").expect("a2").stop();
    wait_for("a2 marked down", Duration::from_secs(3), || {
        node.backend_state("a2") == "down"
    });
    // fall x interval + one interval + the check timeout, plus 0.5 s slack.
    let bound = Duration::from_millis(2 * 200 + 200 + 150) + Duration::from_millis(500);
    assert!(
        killed_at.elapsed() <= bound,
        "took {:?} (bound {bound:?})",
        killed_at.elapsed()
    );
    let during = spread(&client, addr, 90, Proto::Tcp).expect("spread without a2");
    assert!(
        !during.contains_key("a2"),
        "a2 is down but got connections: {during:?}"
    );

    // Restart it: back after `rise` checks.
    let a2 = node.topo.backend("a2").clone();
    node.servers.insert(
        "a2".into(),
        TcpNameServer::start(&a2.path(), "0.0.0.0:80".parse().expect("addr"), "a2")
            .expect("server"),
    );
    wait_for("a2 back up", Duration::from_secs(3), || {
        node.backend_state("a2") == "up"
    });
    let after = spread(&client, addr, 90, Proto::Tcp).expect("spread with a2 back");
    assert!(
        after.contains_key("a2"),
        "a2 rejoined but got nothing: {after:?}"
    );
}

#[test]
fn restarts_and_kills_of_lbd_lose_no_connection() {
    let mut node = Node::new(&[("a", 3)]);
    node.write_config(&[("acme", "a", 1)], FAST_HEALTH, "");
    node.start_lbd();
    node.wait_neighbours();
    let client = node.topo.client_path(0);
    let addr = SocketAddr::new(vip(1).into(), 80);
    let long: Vec<LongLived> = (0..8)
        .map(|_| LongLived::open(&client, addr).expect("long-lived"))
        .collect();

    // New connections, one after another, for as long as the restarts last
    // (bounded by `stop` and a hard cap).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            run_in_netns(&client, move || {
                let deadline = Instant::now() + Duration::from_mins(1);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match ask_name(Proto::Tcp, addr, Duration::from_secs(2)) {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
    };
    let wait_some = |n: usize| {
        let target = ok.load(Ordering::SeqCst) + n;
        wait_for("traffic to progress", Duration::from_secs(10), || {
            ok.load(Ordering::SeqCst) >= target
        });
    };
    wait_some(20);
    node.signal_lbd(libc::SIGTERM);
    wait_some(20);
    node.start_lbd();
    wait_some(20);
    node.signal_lbd(libc::SIGKILL);
    wait_some(20);
    node.start_lbd();
    wait_some(20);
    stop.store(true, Ordering::SeqCst);
    traffic
        .join()
        .expect("traffic thread")
        .expect("client namespace");
    for (i, l) in long.iter().enumerate() {
        l.probe()
            .unwrap_or_else(|e| panic!("long-lived connection {i} broke: {e}"));
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed new connections ({} ok)",
        ok.load(Ordering::SeqCst)
    );
}

/// The maps as `lbctl` lists them, without counters and flows.
fn state_dump(node: &Node) -> String {
    let mut v = serde_json::json!({
        "vips": node.lbctl_json(&["vip", "list"]),
        "pools": node.lbctl_json(&["pool", "list"]),
        "backends": node.lbctl_json(&["backend", "list"]),
    });
    strip(&mut v);
    v.to_string()
}

fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for k in ["counters", "flows", "last_seen_secs_ago", "health"] {
                m.remove(k);
            }
            m.values_mut().for_each(strip);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

#[test]
fn reloads_add_and_remove_tenants_without_disturbing_others() {
    // ("c" would collide with the client namespaces' names.)
    let mut node = Node::new(&[("a", 2), ("b", 2), ("e", 2), ("d", 2)]);
    node.write_config(&[("acme", "a", 1), ("carol", "e", 3)], "", "");
    node.start_lbd();
    node.wait_neighbours_of("ae");
    let client = node.topo.client_path(0);
    let carol = SocketAddr::new(vip(3).into(), 80);
    let long: Vec<LongLived> = (0..6)
        .map(|_| LongLived::open(&client, carol).expect("carol long-lived"))
        .collect();

    // Add dave, remove acme; SIGHUP-free: the file change triggers it.
    node.write_config(&[("carol", "e", 3), ("dave", "d", 4)], "", "");
    wait_for("the reload", Duration::from_secs(10), || {
        let t = node.lbctl_json(&["tenant", "list"]);
        let names: Vec<&str> = t
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        names == ["carol", "dave"] || names == ["dave", "carol"]
    });
    node.wait_neighbours_of("de");
    for (i, l) in long.iter().enumerate() {
        l.probe()
            .unwrap_or_else(|e| panic!("carol's connection {i} broke during the reload: {e}"));
    }
    let dave = spread(&client, SocketAddr::new(vip(4).into(), 80), 40, Proto::Tcp).expect("dave");
    assert!(dave.keys().all(|k| k.starts_with('d')), "{dave:?}");
    let flows = node.lbctl_json(&["flows", "--tenant", "acme"]);
    assert_eq!(
        flows.as_array().map(Vec::len),
        Some(0),
        "acme's flows must be gone: {flows}"
    );

    // A broken file changes nothing.
    let before = state_dump(&node);
    std::fs::write(
        &node.config,
        "[node]\ninterface = \"eth0\"\n[[tenant]]\nname = \"BAD NAME\"\n",
    )
    .expect("write");
    let out = node.lbctl(&["reload"]);
    assert!(!out.status.success(), "a broken reload must fail: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lb.toml:"),
        "{out:?}"
    );
    assert_eq!(
        state_dump(&node),
        before,
        "a refused reload must leave the maps unchanged"
    );
    for (i, l) in long.iter().enumerate() {
        l.probe()
            .unwrap_or_else(|e| panic!("carol's connection {i} broke after a refused reload: {e}"));
    }
}

#[test]
fn draining_keeps_established_flows_and_stops_new_ones() {
    let mut node = Node::new(&[("a", 3)]);
    node.write_config(&[("acme", "a", 1)], "", "");
    node.start_lbd();
    node.wait_neighbours();
    let client = node.topo.client_path(0);
    let addr = SocketAddr::new(vip(1).into(), 80);
    let long = LongLived::open(&client, addr).expect("long-lived");
    let target = long.backend_name().to_string();
    let ip = node.topo.backend(&target).v4.to_string();

    let out = node.lbctl(&["backend", "drain", "acme", "web", &ip]);
    assert!(out.status.success(), "{out:?}");
    long.probe()
        .expect("the drained backend's connection continues");
    let new = spread(&client, addr, 60, Proto::Tcp).expect("spread");
    assert!(
        !new.contains_key(&target),
        "drained {target} got new connections: {new:?}"
    );
    let show = node.lbctl_json(&["backend", "show", "acme", "web", &ip]);
    assert!(
        show["flows"].as_u64().unwrap_or(0) >= 1,
        "show must count its flows: {show}"
    );
    assert_eq!(show["state"], "draining", "{show}");

    let out = node.lbctl(&["backend", "enable", "acme", "web", &ip]);
    assert!(out.status.success(), "{out:?}");
    let again = spread(&client, addr, 60, Proto::Tcp).expect("spread");
    assert!(
        again.contains_key(&target),
        "enabled {target} got nothing: {again:?}"
    );
}

#[test]
fn draining_and_enabling_drop_no_new_flow() {
    // A backend leaves its pool's ring before it is marked draining (and
    // is marked up before it joins again): the data plane refuses a new
    // flow the ring gives to a backend that is not up, so the other order
    // drops every new flow hashed to it while the new ring is built.
    let mut node = Node::new(&[("a", 3)]);
    node.write_config(&[("acme", "a", 1)], "", "");
    node.start_lbd();
    node.wait_neighbours();
    let client = node.topo.client_path(0);
    let addr = SocketAddr::new(vip(1).into(), 80);
    let ip = node.topo.backends()[0].v4.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    // New connections as fast as one thread opens them: each is a new flow.
    let sender = {
        let (stop, attempts) = (Arc::clone(&stop), Arc::clone(&attempts));
        std::thread::spawn(move || {
            run_in_netns(&client, move || {
                let deadline = Instant::now() + Duration::from_mins(1);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
                    attempts.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("the sender's namespace");
        })
    };
    wait_for("the first connections", Duration::from_secs(10), || {
        attempts.load(Ordering::Relaxed) > 100
    });
    let before = attempts.load(Ordering::Relaxed);
    for _ in 0..10 {
        for verb in ["drain", "enable"] {
            let out = node.lbctl(&["backend", verb, "acme", "web", &ip]);
            assert!(out.status.success(), "{verb}: {out:?}");
        }
    }
    let during = attempts.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("the sender");
    assert!(
        during >= 100,
        "only {during} new connections overlapped the drains"
    );
    let detail = node.lbctl_json(&["tenant", "show", "acme"]);
    let drops = &detail["drops_by_reason"];
    assert_eq!(
        drops["no_backend"].as_u64().unwrap_or(0),
        0,
        "new flows dropped while backends were drained and enabled \
         ({during} new connections): {drops}"
    );
}

fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn admin_api_refuses_without_the_token_and_rejects_bad_requests() {
    let mut node = Node::new(&[("a", 1)]);
    let token = node.work.join("token");
    // The daemon refuses tokens under 32 bytes and files others may read.
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // The TCP listener lives in the LB namespace; reach it from a thread there.
    node.write_config(
        &[("acme", "a", 1)],
        "",
        &format!(
            "admin_listen = \"127.0.0.1:9465\"\nadmin_token_file = \"{}\"",
            token.display()
        ),
    );
    node.start_lbd();
    let api: SocketAddr = "127.0.0.1:9465".parse().expect("addr");
    let results = run_in_netns(&node.topo.lb_path(), move || {
        let no_token = http(api, "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let wrong = http(
            api,
            "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n",
        );
        let right = http(
            api,
            &format!(
                "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
            ),
        );
        let unknown = http(
            api,
            &format!(
                "GET /nope HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
            ),
        );
        let body = "{\"tenant\": \"acme\", \"pool\": ";
        let malformed = http(
            api,
            &format!(
                "POST /backends HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        (no_token, wrong, right, unknown, malformed)
    })
    .expect("LB namespace");
    let before = state_dump(&node);
    assert_eq!(results.0.0, 401, "no token: {}", results.0.1);
    assert_eq!(results.1.0, 401, "wrong token: {}", results.1.1);
    assert_eq!(results.2.0, 200, "right token: {}", results.2.1);
    assert_eq!(results.3.0, 404, "unknown route: {}", results.3.1);
    assert!(
        results.3.1.contains("error"),
        "404 carries a message: {}",
        results.3.1
    );
    assert_eq!(results.4.0, 400, "malformed JSON: {}", results.4.1);
    assert!(
        results.4.1.contains("error"),
        "400 carries a message: {}",
        results.4.1
    );
    assert_eq!(state_dump(&node), before, "refused requests change nothing");
    let overrides = node.lbctl_json(&["overrides", "list"]);
    assert_eq!(overrides.as_array().map(Vec::len), Some(0), "{overrides}");
}

#[test]
fn lbctl_maps_works_without_a_daemon_and_the_next_lbd_keeps_its_edits() {
    let mut node = Node::new(&[("a", 2)]);
    node.write_config(&[("acme", "a", 1)], "", "");
    node.start_lbd();
    node.wait_neighbours();
    let client = node.topo.client_path(0);
    let addr = SocketAddr::new(vip(1).into(), 80);
    spread(&client, addr, 20, Proto::Tcp).expect("traffic");
    let live = node.lbctl_json(&["tenant", "show", "acme"]);
    node.signal_lbd(libc::SIGTERM);

    let maps = node.pin_path.to_str().expect("utf-8").to_string();
    let state = node.work.join("state");
    let state = state.to_str().expect("utf-8").to_string();
    let offline = |args: &[&str]| {
        let mut all = vec![
            "--maps",
            maps.as_str(),
            "--state-dir",
            state.as_str(),
            "--json",
        ];
        all.extend_from_slice(args);
        let out = Command::new(LBCTL).args(&all).output().expect("lbctl");
        assert!(out.status.success(), "lbctl {all:?}: {out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    // One answer, two transports: the maps read without lbd say what lbd
    // said (no traffic has passed since).
    assert_eq!(offline(&["tenant", "show", "acme"]), live);
    let refused = Command::new(LBCTL)
        .args([
            "--maps",
            maps.as_str(),
            "--state-dir",
            state.as_str(),
            "reload",
        ])
        .output()
        .expect("lbctl");
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("needs lbd"),
        "{refused:?}"
    );
    let counters = offline(&["stats"]);
    assert!(
        counters["tenants"].to_string().contains("acme"),
        "{counters}"
    );
    let flows = offline(&["flows"]);
    assert!(!flows.as_array().expect("list").is_empty(), "{flows}");
    // Port 999 is below the kernel's ephemeral range, so none of the flows
    // `spread` opened can have it: the answer is the ring's.
    let explain = offline(&["explain", "10.77.0.10:999", "10.77.100.1:80/tcp"]);
    assert_eq!(explain["decision"], "ring", "{explain}");

    let a1 = node.topo.backend("a1").v4.to_string();
    offline(&["backend", "drain", "acme", "web", &a1]);
    let new = spread(&client, addr, 40, Proto::Tcp).expect("traffic with no daemon");
    assert!(
        !new.contains_key("a1"),
        "a1 drained offline but got connections: {new:?}"
    );

    node.start_lbd();
    assert_eq!(
        node.backend_state("a1"),
        "draining",
        "the next lbd keeps the offline drain"
    );
}
