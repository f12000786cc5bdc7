//! A TLS configuration scan of `lbd`'s shared HTTPS listener with
//! testssl.sh (Debian's package `testssl.sh`, whose command is `testssl`;
//! `scripts/bootstrap.sh` installs it), run from inside the client
//! namespace of the L7 fixture ([`World`]) against the listener only, with
//! alpha's SNI so that alpha's certificate (and its `hsts`) is served, and
//! alpha's CA added to testssl's trust stores (`--add-ca`) so that the
//! served chain is verified rather than reported untrusted.
//!
//! `the_shared_listener_passes_a_tls_configuration_scan` asserts from
//! testssl's JSON findings:
//! * no protocol below TLS 1.2 is offered (SSL 2, SSL 3, TLS 1.0 and 1.1
//!   not offered), TLS 1.2 and 1.3 are;
//! * every cipher suite the listener accepts (testssl's `-e` tries each of
//!   its ciphers) has forward secrecy: ECDHE or DHE, or TLS 1.3;
//! * the checks that matter here ran and passed: the server's own cipher
//!   order, the chain of trust, forward secrecy, alpha's HSTS, secure
//!   renegotiation signalled (see below);
//! * no finding is rated HIGH or CRITICAL (or FATAL: the scan failed),
//!   except the ids in [`EXPECTED`], which are about the test CA's
//!   certificates, not about the server's configuration.
//!
//! The JSON is kept in `target/tmp/tls_scan/testssl.json` (with testssl's
//! own report in `testssl.log`), and the findings above INFO are printed.
//! `the_checks_catch_a_weak_configuration` feeds those checks the findings
//! of a weak server, without a scan.
//!
//! testssl's `secure_renego` check connects without SNI ("no SNI needed
//! here") and this listener, which has no `default_tenant`, refuses such
//! handshakes, so that check reports WARN "OpenSSL handshake didn't
//! succeed". rustls never renegotiates; that the server signals RFC 5746
//! is asserted from the extensions of its `ServerHello` instead.
//!
//! The selection `-p -s -f -P -S -h -U -e` (protocols, cipher categories,
//! forward secrecy, server preferences, server defaults, HTTP headers,
//! vulnerabilities, each cipher) leaves out client simulation (`-c`, about
//! 30 s more, nothing this test asserts) and takes about 40 s here. No DNS
//! (`-n none`, `--ip`), no OCSP or CRL fetches (testssl's default): the
//! scan's only peer is the listener.
//!
//! Needs root (namespaces, BPF) and `testssl`.

#[path = "common/l7/mod.rs"]
#[expect(
    dead_code,
    reason = "the shared L7 harness: this test uses its world, not its clients for every protocol"
)]
mod l7;

use std::{
    collections::BTreeMap,
    fs::File,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use l7::world::{LISTEN, World};
use serde::Deserialize;

/// Debian's name for testssl.sh's command.
const TESTSSL: &str = "testssl";
/// The tenant whose SNI the scan sends (the one with `hsts`).
const SNI: &str = "alpha.example";
/// What the scan checks: see the module documentation.
const CHECKS: &[&str] = &["-p", "-s", "-f", "-P", "-S", "-h", "-U", "-e"];
/// The scan is stopped (and the test fails) after this; it takes about
/// 40 s.
const SCAN_LIMIT: Duration = Duration::from_mins(5);

/// Findings rated HIGH or CRITICAL that are expected of the fixture's
/// certificates, by id, with the reason. Nothing else may be.
const EXPECTED: &[(&str, &str)] = &[
    (
        "cert_validityPeriod",
        "the test CA (rcgen) issues certificates valid from 1975 to 4096, its default; \
         the lifetime is the issuer's choice, not lbd's",
    ),
    (
        "cert_revocation",
        "the private test CA publishes no CRL and runs no OCSP responder, so its \
         certificates name neither (testssl: \"Neither CRL nor OCSP URI provided\")",
    ),
];

/// Findings that must be there and rated OK: the checks this test relies
/// on ran and passed.
const MUST_PASS: &[(&str, &str)] = &[
    (
        "cipher_order",
        "the server's cipher order, not the client's",
    ),
    (
        "cert_chain_of_trust",
        "the chain verifies against alpha's CA",
    ),
    ("PFS", "forward secrecy offered"),
    ("HSTS_time", "alpha's Strict-Transport-Security"),
    ("secure_client_renego", "no client-initiated renegotiation"),
];

/// One entry of testssl's flat JSON (`--jsonfile`).
#[derive(Debug, Deserialize)]
struct Finding {
    id: String,
    severity: String,
    #[serde(rename = "finding")]
    text: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}] {}", self.id, self.severity, self.text)
    }
}

#[test]
fn the_shared_listener_passes_a_tls_configuration_scan() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls_scan");
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
    let world = World::start();
    let ca = out.join("alpha-ca.pem");
    std::fs::write(&ca, world.alpha_ca_pem()).expect("writing alpha's CA");

    let started = Instant::now();
    let scan = scan(&world.client_netns(), &ca, &out);
    let took = started.elapsed();
    let findings: Vec<Finding> = serde_json::from_str(&scan.json).unwrap_or_else(|e| {
        panic!(
            "{} is not testssl's JSON ({e}); its report:\n{}",
            scan.json_path.display(),
            scan.log
        )
    });
    println!(
        "testssl {} against {SNI} at {LISTEN}: {} findings in {took:.0?} (kept in {})",
        CHECKS.join(" "),
        findings.len(),
        scan.json_path.display()
    );
    for f in findings
        .iter()
        .filter(|f| !matches!(&*f.severity, "OK" | "INFO"))
    {
        let excluded = EXPECTED.iter().find(|(id, _)| *id == f.id);
        match excluded {
            Some((_, why)) => println!("  {f}  (expected: {why})"),
            None => println!("  {f}"),
        }
    }

    if !scan.status.success() {
        // testssl's status adds up the checks that could not finish (a WARN
        // finding each); the ones asserted below must have finished.
        println!("  testssl exited with {}", scan.status);
    }
    let mut problems = check_protocols(&findings);
    problems.extend(check_forward_secrecy(&findings));
    problems.extend(check_must_pass(&findings));
    problems.extend(check_renegotiation(&findings));
    problems.extend(
        findings
            .iter()
            .filter(|f| matches!(&*f.severity, "HIGH" | "CRITICAL" | "FATAL"))
            .filter(|f| EXPECTED.iter().all(|(id, _)| *id != f.id))
            // Those must be OK, which check_must_pass has said.
            .filter(|f| MUST_PASS.iter().all(|(id, _)| *id != f.id))
            .map(|f| format!("rated {}: {f}", f.severity)),
    );
    assert!(
        problems.is_empty(),
        "the TLS scan of {LISTEN} (SNI {SNI}) found {} problem(s):\n  {}\nall findings: {}; \
         testssl's report:\n{}",
        problems.len(),
        problems.join("\n  "),
        scan.json_path.display(),
        scan.log
    );
}

/// What a finished scan left.
struct Scan {
    status: ExitStatus,
    json_path: PathBuf,
    json: String,
    log: String,
}

/// Runs testssl in the namespace `netns` against the listener, trusting
/// `ca`, writing its JSON and report into `out`.
fn scan(netns: &Path, ca: &Path, out: &Path) -> Scan {
    let json_path = out.join("testssl.json");
    let log_path = out.join("testssl.log");
    // testssl refuses to overwrite a JSON file.
    let _ = std::fs::remove_file(&json_path);
    let log =
        File::create(&log_path).unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(TESTSSL)
        .args(["--quiet", "--warnings", "off", "--color", "0"])
        // Against hangs only: a loaded machine must not cut a check short.
        .args(["--openssl-timeout", "10", "--connect-timeout", "10"])
        .args(["-n", "none", "--ip", &LISTEN.ip().to_string()])
        .arg("--add-ca")
        .arg(ca)
        .arg("--jsonfile")
        .arg(&json_path)
        .args(CHECKS)
        .arg(format!("{SNI}:{}", LISTEN.port()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the report file"))
        .stderr(log)
        // Its own process group, so that a scan over time is stopped with
        // every openssl it started.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `nsenter ... {TESTSSL}` ({e}): install it with scripts/bootstrap.sh \
                 (cargo xtask bootstrap; Debian package testssl.sh)"
            )
        });
    let deadline = Instant::now() + SCAN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for testssl") {
            break status;
        }
        if Instant::now() > deadline {
            let pgid = i32::try_from(child.id()).expect("a pid");
            // SAFETY: kill(2) on the process group this test started; no
            // memory is involved.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "testssl did not finish within {SCAN_LIMIT:?}; its report so far:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let json = std::fs::read_to_string(&json_path).unwrap_or_else(|e| {
        panic!(
            "testssl ({status}) left no {}: {e}; its report:\n{log}",
            json_path.display()
        )
    });
    Scan {
        status,
        json_path,
        json,
        log,
    }
}

/// The findings by id (the last one of an id, which testssl writes once
/// for the checks asserted here).
fn by_id(findings: &[Finding]) -> BTreeMap<&str, &Finding> {
    findings.iter().map(|f| (f.id.as_str(), f)).collect()
}

/// Nothing below TLS 1.2 offered; TLS 1.2 and 1.3 offered.
fn check_protocols(findings: &[Finding]) -> Vec<String> {
    let by_id = by_id(findings);
    let mut problems = Vec::new();
    for (id, offered) in [
        ("SSLv2", false),
        ("SSLv3", false),
        ("TLS1", false),
        ("TLS1_1", false),
        ("TLS1_2", true),
        ("TLS1_3", true),
    ] {
        match by_id.get(id) {
            None => problems.push(format!("no finding {id}: did the scan reach the listener?")),
            Some(f) if f.text.starts_with("not offered") == offered => {
                let want = if offered { "offered" } else { "not offered" };
                problems.push(format!("{id} must be {want}: {f}"));
            }
            Some(_) => {}
        }
    }
    problems
}

/// Every cipher suite accepted (testssl's `cipher_xHEX` findings of `-e`:
/// `HEX  OPENSSL-NAME  KX  ENC  BITS  IANA-NAME`) has forward secrecy: a
/// TLS 1.3 suite (its IANA name has no `_WITH_`: the key exchange is
/// always ephemeral) or an ECDHE/DHE one.
fn check_forward_secrecy(findings: &[Finding]) -> Vec<String> {
    let ciphers: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.id.starts_with("cipher_x"))
        .collect();
    if ciphers.is_empty() {
        return vec![
            "no cipher_x* findings: testssl's -e did not list the accepted ciphers".into(),
        ];
    }
    let mut problems = Vec::new();
    for f in ciphers {
        let iana = f.text.split_whitespace().last().unwrap_or_default();
        let forward_secret = !iana.contains("_WITH_")
            || iana.starts_with("TLS_ECDHE_")
            || iana.starts_with("TLS_DHE_");
        if !forward_secret || !iana.starts_with("TLS_") {
            problems.push(format!("a cipher without forward secrecy is accepted: {f}"));
        }
    }
    problems
}

/// The findings of [`MUST_PASS`] are there and OK.
fn check_must_pass(findings: &[Finding]) -> Vec<String> {
    let by_id = by_id(findings);
    let mut problems = Vec::new();
    for (id, what) in MUST_PASS {
        match by_id.get(id) {
            Some(f) if f.severity == "OK" => {}
            Some(f) => problems.push(format!("{what}: {f}")),
            None => problems.push(format!("{what}: no finding {id}")),
        }
    }
    problems
}

/// The `ServerHello` carries `renegotiation_info` (RFC 5746): see the
/// module documentation for why testssl's own `secure_renego` cannot say.
fn check_renegotiation(findings: &[Finding]) -> Vec<String> {
    let by_id = by_id(findings);
    match by_id.get("TLS_extensions") {
        Some(f) if f.text.contains("renegotiation info/#65281") => Vec::new(),
        Some(f) => vec![format!("no renegotiation_info in the ServerHello: {f}")],
        None => vec!["no finding TLS_extensions (testssl's -S)".into()],
    }
}

/// The checks against findings of a weak server (testssl's wording): they
/// must not pass what the scan exists to catch.
#[test]
fn the_checks_catch_a_weak_configuration() {
    let finding = |id: &str, severity: &str, text: &str| Finding {
        id: id.to_owned(),
        severity: severity.to_owned(),
        text: text.to_owned(),
    };
    let weak = [
        finding("SSLv2", "OK", "not offered"),
        finding("SSLv3", "OK", "not offered"),
        finding("TLS1", "LOW", "offered (deprecated)"),
        finding("TLS1_2", "OK", "offered"),
        finding("cipher_order", "HIGH", "NOT a cipher order configured"),
        finding(
            "cipher_x9c",
            "INFO",
            "x9c     AES128-GCM-SHA256    RSA    AESGCM   128   TLS_RSA_WITH_AES_128_GCM_SHA256",
        ),
        finding(
            "cipher_xc02f",
            "INFO",
            "xc02f   ECDHE-RSA-AES128-GCM-SHA256   ECDH 253   AESGCM   128   TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ),
        finding(
            "cipher_x1301",
            "INFO",
            "x1301   TLS_AES_128_GCM_SHA256   ECDH 253   AESGCM   128   TLS_AES_128_GCM_SHA256",
        ),
    ];
    let protocols = check_protocols(&weak);
    assert_eq!(
        protocols.len(),
        3,
        "TLS1 offered, TLS1_1 and TLS1_3 missing: {protocols:?}"
    );
    assert!(
        protocols[0].starts_with("TLS1 must be not offered"),
        "{protocols:?}"
    );
    let fs = check_forward_secrecy(&weak);
    assert_eq!(fs.len(), 1, "only the RSA key exchange: {fs:?}");
    assert!(fs[0].contains("TLS_RSA_WITH_AES_128_GCM_SHA256"), "{fs:?}");
    let must = check_must_pass(&weak);
    assert!(
        must.iter().any(|p| p.contains("cipher_order [HIGH]")),
        "{must:?}"
    );
    assert_eq!(
        must.len(),
        MUST_PASS.len(),
        "none of the others is there: {must:?}"
    );
}
