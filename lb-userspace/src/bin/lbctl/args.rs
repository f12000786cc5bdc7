//! `lbctl`'s command line: the commands, their arguments and how a backend
//! or a VIP is written on it.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::{anyhow, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use lb::{
    api::BackendSelector,
    client,
    config::{self, Protocol},
    decap,
};

/// Manage lb: a running lbd through its admin API, the pinned maps without
/// a daemon (--maps), and the backends' XDP programs.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version)]
pub(crate) struct Args {
    /// lbd's admin socket (`node.admin_socket`).
    #[arg(long, global = true, value_name = "PATH", default_value = client::DEFAULT_SOCKET)]
    pub(crate) socket: PathBuf,
    /// Use lbd's TCP admin listener (`node.admin_listen`) instead of the
    /// socket; needs --token-file.
    #[arg(
        long,
        global = true,
        value_name = "http://HOST:PORT",
        requires = "token_file"
    )]
    pub(crate) url: Option<String>,
    /// File holding the bearer token for --url (`node.admin_token_file`).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Print the raw JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Read and edit the maps pinned under DIR (`node.pin_path`) directly,
    /// without lbd: stats, flows, explain, tenant/vip/pool/backend list and
    /// show, backend drain|enable.
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) maps: Option<PathBuf>,
    /// lbd's state directory (`node.state_dir`), for --maps: the id
    /// assignment and the override store that drain/enable record into.
    #[arg(long, global = true, value_name = "DIR", default_value = config::DEFAULT_STATE_DIR)]
    pub(crate) state_dir: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The daemon: version, configuration, object counts, last reload.
    Status,
    /// Tenants.
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
    /// L4 VIPs.
    Vip {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Backend pools.
    Pool {
        #[command(subcommand)]
        action: PoolAction,
    },
    /// Backends.
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// L7 host names (SNI) and the tenants they map to: the SNI-derived
    /// tenant hash map that keys the L7 path and the XDP maps alike.
    Sni {
        #[command(subcommand)]
        action: SniAction,
    },
    /// Counters per tenant, VIP and backend, and drops by reason.
    Stats {
        /// Refresh every SECS seconds (with per-second rates) until Ctrl-C.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
    },
    /// Dump the flow table.
    Flows {
        /// Only this tenant's flows.
        #[arg(long)]
        tenant: Option<String>,
        /// Only flows to this VIP (IP:PORT).
        #[arg(long, value_name = "IP:PORT")]
        vip: Option<SocketAddr>,
        /// Only flows to this backend address.
        #[arg(long, value_name = "IP")]
        backend: Option<IpAddr>,
        /// At most N entries (default 1000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Which backend a flow hits, and why (flow-table entry or ring slot).
    Explain {
        /// The client's address, e.g. 198.51.100.7:40000.
        #[arg(value_name = "CLIENT_IP:PORT")]
        client: SocketAddr,
        /// The VIP, e.g. 203.0.113.10:80/tcp (the protocol defaults to tcp).
        #[arg(value_name = "VIP_IP:PORT/PROTO", value_parser = parse_vip)]
        vip: (SocketAddr, Protocol),
    },
    /// Reload the configuration file (and re-apply the overrides).
    Reload,
    /// Runtime changes kept apart from the configuration file.
    Overrides {
        #[command(subcommand)]
        action: OverridesAction,
    },
    /// The IPIP / IP6IP6 decapsulator for backends without a kernel ipip module.
    Decap {
        #[command(subcommand)]
        action: AttachAction,
    },
    /// A plain `XDP_PASS` program: a veth accepts frames its peer sent with
    /// `XDP_TX` only when it runs an XDP program itself (test topologies).
    Pass {
        #[command(subcommand)]
        action: AttachAction,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TenantAction {
    /// Every tenant with its counters.
    List,
    /// One tenant: VIPs, pools, drops by reason.
    Show { name: String },
    /// Add a tenant from a TOML file holding one [[tenant]] (with its
    /// [[tenant.pool]] and [[tenant.l4]] tables); `-` reads stdin.
    Add {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Remove a tenant with its VIPs, pools and backends.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SniAction {
    /// Every host name with its hash and tenant (with --maps: hashes only).
    List,
    /// Add a host name to one of a tenant's L7 sites (a runtime override;
    /// the site's certificate must cover it).
    Add {
        /// The host name, e.g. shop.acme.example or *.acme.example.
        name: String,
        /// The tenant that owns the name.
        #[arg(long)]
        tenant: String,
        /// Which of the tenant's [[tenant.l7]] sites, in file order.
        #[arg(long, default_value_t = 0)]
        site: usize,
    },
    /// Remove a host name from its site (a runtime override).
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ListAction {
    /// All of them.
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PoolAction {
    /// Every pool.
    List,
    /// One pool: its backends and their share of the ring.
    Show { tenant: String, pool: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BackendAction {
    /// Every backend with its state, flows and counters.
    List,
    /// One backend, with the flows still pointing at it (is a drain done?).
    Show(Selector),
    /// Add a backend to a pool.
    Add {
        #[command(flatten)]
        backend: Selector,
        /// Share of new flows, 0 (draining) to 1000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend from its pool.
    Remove(Selector),
    /// Stop new flows to a backend (weight 0); established flows continue.
    Drain(Selector),
    /// Undo a drain.
    Enable {
        #[command(flatten)]
        backend: Selector,
        /// With --maps: the weight to restore (lbd restores the configured
        /// weight by itself; lbctl --maps cannot know it and uses 1).
        #[arg(long)]
        weight: Option<u32>,
    },
}

/// A backend: tenant, pool, address (and port).
#[derive(Debug, Clone, ClapArgs)]
pub(crate) struct Selector {
    pub(crate) tenant: String,
    pub(crate) pool: String,
    /// The backend's address (IP, or IP:PORT).
    #[arg(value_name = "ADDR")]
    pub(crate) address: String,
    /// The backend's own port, when it has one.
    #[arg(long)]
    pub(crate) port: Option<u16>,
}

impl Selector {
    pub(crate) fn resolve(&self) -> anyhow::Result<BackendSelector> {
        let (address, port) = if let Ok(sa) = self.address.parse::<SocketAddr>() {
            if self.port.is_some_and(|p| p != sa.port()) {
                bail!(
                    "{} has port {} but --port says {}",
                    self.address,
                    sa.port(),
                    self.port.unwrap_or(0)
                );
            }
            (sa.ip(), Some(sa.port()))
        } else {
            let ip = self.address.parse::<IpAddr>().map_err(|_| {
                anyhow!(
                    "invalid backend address {:?}: expected an IP address (or IP:PORT)",
                    self.address
                )
            })?;
            (ip, self.port)
        };
        if port == Some(0) {
            bail!("port 0 is not a port: leave --port out for the VIP's port");
        }
        Ok(BackendSelector {
            tenant: self.tenant.clone(),
            pool: self.pool.clone(),
            address,
            port,
        })
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum OverridesAction {
    /// The runtime changes in force, oldest first.
    List,
    /// Forget every runtime change (back to the configuration file).
    Clear,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AttachAction {
    /// Attach to an interface of the current network namespace and pin the link.
    Attach {
        /// Interface name.
        iface: String,
        /// Directory on bpffs for the link pin.
        #[arg(long, value_name = "DIR", default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach from an interface (removes the link pin).
    Detach {
        /// Interface name.
        iface: String,
        /// Directory on bpffs for the link pin.
        #[arg(long, value_name = "DIR", default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

/// `203.0.113.10:80/tcp`, `[2001:db8::1]:53/udp`, or without `/PROTO` (tcp).
pub(crate) fn parse_vip(text: &str) -> Result<(SocketAddr, Protocol), String> {
    let (addr, proto) = match text.rsplit_once('/') {
        Some((a, p)) => (a, p),
        None => (text, "tcp"),
    };
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(format!("unknown protocol {proto:?}: expected tcp or udp")),
    };
    let addr = addr.parse().map_err(|_| {
        format!("invalid VIP {addr:?}: expected IP:PORT/PROTO, like 203.0.113.10:80/tcp")
    })?;
    Ok((addr, protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_arguments() {
        assert_eq!(
            parse_vip("203.0.113.10:80/tcp"),
            Ok(("203.0.113.10:80".parse().expect("addr"), Protocol::Tcp))
        );
        assert_eq!(
            parse_vip("[2001:db8::1]:53/udp"),
            Ok(("[2001:db8::1]:53".parse().expect("addr"), Protocol::Udp))
        );
        assert_eq!(
            parse_vip("203.0.113.10:80"),
            Ok(("203.0.113.10:80".parse().expect("addr"), Protocol::Tcp))
        );
        assert!(parse_vip("203.0.113.10:80/sctp").is_err());
        assert!(parse_vip("203.0.113.10/tcp").is_err());
    }

    #[test]
    fn selectors() {
        let s = |address: &str, port: Option<u16>| Selector {
            tenant: "t".into(),
            pool: "p".into(),
            address: address.into(),
            port,
        };
        let r = s("10.0.0.1:80", None).resolve().expect("ip:port");
        assert_eq!(
            (r.address.to_string(), r.port),
            ("10.0.0.1".into(), Some(80))
        );
        let r = s("2001:db8::1", Some(443)).resolve().expect("ip --port");
        assert_eq!(r.port, Some(443));
        assert!(s("10.0.0.1:80", Some(81)).resolve().is_err());
        assert!(s("10.0.0.x", None).resolve().is_err());
        assert!(s("10.0.0.1", Some(0)).resolve().is_err());
    }

    #[test]
    fn arguments_parse() {
        let a = Args::try_parse_from([
            "lbctl", "backend", "add", "acme", "web", "10.0.0.1", "--port", "80", "--weight", "3",
            "--json",
        ])
        .expect("backend add");
        assert!(a.json);
        assert!(matches!(
            a.command,
            Command::Backend {
                action: BackendAction::Add { weight: 3, .. }
            }
        ));
        let a = Args::try_parse_from(["lbctl", "stats", "--maps", "/sys/fs/bpf/lb", "--json"])
            .expect("stats --maps");
        assert_eq!(a.maps, Some(PathBuf::from("/sys/fs/bpf/lb")));
        assert!(Args::try_parse_from(["lbctl", "stats", "--watch", "0"]).is_err());
        assert!(
            Args::try_parse_from(["lbctl", "--url", "http://127.0.0.1:9465", "status"]).is_err()
        );
        let a = Args::try_parse_from(["lbctl", "explain", "10.0.0.1:5555", "203.0.113.10:80/udp"])
            .expect("explain");
        assert!(matches!(
            a.command,
            Command::Explain {
                vip: (_, Protocol::Udp),
                ..
            }
        ));
    }
}
