//! The demo's L7 part: the two tenants also share one HTTPS address, served
//! by `lbd` itself. Each has its own certificate authority and certificate
//! (made with `openssl`), and `curl` in the client namespace shows that each
//! host name gets its own tenant's certificate and backends, and that a
//! request mixing the two tenants is refused.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, bail};
use lb_tests::{netns::Topology, servers::HttpNameServer};

/// The shared HTTPS address (on the LB node's loopback; clients route the
/// VIP range via the LB node).
pub const LISTEN: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 10);
/// Where the backends' HTTP servers listen.
pub const HTTP_PORT: u16 = 8080;
/// Requests per tenant.
const REQUESTS: usize = 6;

/// (tenant, its host name, the prefix of its backends' names)
pub const TENANTS: [(&str, &str, char); 2] = [
    ("acme", "www.acme.example", 'a'),
    ("globex", "app.globex.example", 'b'),
];

/// Makes each tenant's CA and a certificate for its host (ECDSA P-256).
///
/// # Errors
/// When `openssl` fails.
pub fn make_certificates(work: &Path) -> anyhow::Result<()> {
    for (tenant, host, _) in TENANTS {
        let file = |ext: &str| work.join(format!("{tenant}{ext}"));
        let domain = host.split_once('.').map_or(host, |(_, d)| d);
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={tenant} demo CA"),
            "-keyout",
            path(&file("-ca.key"))?,
            "-out",
            path(&file("-ca.pem"))?,
        ])?;
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={host}"),
            "-keyout",
            path(&file(".key"))?,
            "-out",
            path(&file(".csr"))?,
        ])?;
        let ext = file(".ext");
        std::fs::write(&ext, format!("subjectAltName=DNS:{host},DNS:*.{domain}\n"))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&file(".csr"))?,
            "-days",
            "2",
            "-CA",
            path(&file("-ca.pem"))?,
            "-CAkey",
            path(&file("-ca.key"))?,
            "-CAcreateserial",
            "-extfile",
            path(&ext)?,
            "-out",
            path(&file(".pem"))?,
        ])?;
    }
    Ok(())
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("the demo's work directory is not UTF-8")
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (the bootstrap installs it)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The L7 part of one tenant's configuration: a pool of its backends' HTTP
/// servers and its site on the shared address.
pub fn tenant_config(topo: &Topology, tenant: &str, prefix: char, work: &Path) -> String {
    let host = TENANTS
        .iter()
        .find(|(t, _, _)| *t == tenant)
        .map_or("", |(_, h, _)| *h);
    let mut s = String::from(
        "\n[[tenant.pool]]\nname = \"http\"\nbalance = \"round_robin\"\nbackends = [\n",
    );
    for b in topo
        .backends()
        .iter()
        .filter(|b| b.name.starts_with(prefix))
    {
        let _ = writeln!(s, "  {{ address = \"{}\", port = {HTTP_PORT} }},", b.v4);
    }
    let _ = write!(
        s,
        "]\n\n[[tenant.l7]]\nlisten = \"{LISTEN}:443\"\nhosts = [\"{host}\"]\n\
         tls = {{ cert = \"{}\", key = \"{}\" }}\nroutes = [ {{ path_prefix = \"/\", pool = \"http\" }} ]\n",
        work.join(format!("{tenant}.pem")).display(),
        work.join(format!("{tenant}.key")).display()
    );
    s
}

/// Starts an HTTP name server on every backend and puts the shared address
/// on the LB node.
///
/// # Errors
/// When a server cannot start or the address cannot be added.
pub fn prepare(topo: &Topology) -> anyhow::Result<Vec<HttpNameServer>> {
    topo.run_ok(
        topo.lb_ns(),
        &["ip", "addr", "add", &format!("{LISTEN}/32"), "dev", "lo"],
    )?;
    topo.backends()
        .iter()
        .map(|b| {
            HttpNameServer::start(
                &b.path(),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), HTTP_PORT),
                &b.name,
            )
        })
        .collect()
}

/// Asks as each tenant, then as a client mixing the tenants, and prints
/// what happened.
///
/// # Errors
/// When curl cannot run, or a tenant's request does not reach its own
/// backend.
pub fn show(client_ns: &Path, work: &Path) -> anyhow::Result<()> {
    println!(
        "\n==> L7: both tenants share https://{LISTEN}:443; lbd terminates TLS with each tenant's \
         certificate (chosen by SNI) and proxies to the tenant's backends"
    );
    for (tenant, host, prefix) in TENANTS {
        let ca = work.join(format!("{tenant}-ca.pem"));
        let mut answers = Vec::new();
        for _ in 0..REQUESTS {
            let out = curl(client_ns, &ca, host, &[])?;
            let body = out.body.trim().to_owned();
            if out.status != "200" || !body.starts_with(prefix) {
                bail!(
                    "https://{host}/ answered {} {body:?}; expected a backend of {tenant}",
                    out.status
                );
            }
            answers.push(body);
        }
        println!(
            "  https://{host}/  certificate verified with {tenant}'s CA only; {REQUESTS} requests \
             answered by: {}",
            answers.join(" ")
        );
    }
    // SNI of acme, Host of globex: one tenant's TLS session never reaches
    // another tenant.
    let (acme, acme_host, _) = TENANTS[0];
    let (_, globex_host, _) = TENANTS[1];
    let out = curl(
        client_ns,
        &work.join(format!("{acme}-ca.pem")),
        acme_host,
        &["-H", &format!("Host: {globex_host}")],
    )?;
    println!(
        "  SNI {acme_host} with Host {globex_host}: {} {}",
        out.status,
        out.body.trim()
    );
    // The other tenant's CA does not accept acme's certificate.
    let out = curl(client_ns, &work.join("globex-ca.pem"), acme_host, &[])?;
    println!(
        "  https://{acme_host}/ checked against globex's CA: {}",
        if out.status == "000" {
            "refused by the client (the certificate is acme's)".to_owned()
        } else {
            format!("unexpectedly answered {}", out.status)
        }
    );
    Ok(())
}

struct CurlOut {
    status: String,
    body: String,
}

fn curl(client_ns: &Path, ca: &Path, host: &str, extra: &[&str]) -> anyhow::Result<CurlOut> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", client_ns.display()))
        .args(["curl", "-sS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:443:{LISTEN}")])
        .args(extra)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{host}/"))
        .output()
        .context("running curl (the bootstrap installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok(CurlOut {
        status: status.trim().to_owned(),
        body: body.to_owned(),
    })
}
