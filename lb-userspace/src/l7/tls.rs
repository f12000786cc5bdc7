//! TLS termination for L7 tenants: which certificate a listener presents
//! for an SNI, loaded from PEM files and reloaded when they change.
//!
//! A [`CertStore`] holds every certificate of every listener as one
//! immutable table behind an [`ArcSwap`]. The resolver that rustls calls on
//! each handshake reads the current table without a lock, so a reload (a
//! new table, swapped in whole) never rebuilds a [`rustls::ServerConfig`]
//! and never blocks a handshake. Connections already established keep the
//! keys they negotiated: they never resolve again.
//!
//! # Choosing a certificate
//!
//! The SNI is compared in lower case without a trailing dot: first the exact
//! name, then the wildcard one label up (`*.acme.example` covers
//! `a.acme.example`, but neither `acme.example` nor `a.b.acme.example`, as
//! RFC 6125 wildcards do). A listener built with a default tenant presents
//! that tenant's first certificate on it for an SNI it does not know and for
//! a `ClientHello` without SNI; without one the handshake fails.
//!
//! **What a client sees for an SNI nobody serves: a fatal `access_denied`
//! alert.** rustls 0.23 aborts with `access_denied` whenever a certificate
//! resolver returns no certificate (`server/hs.rs`); the resolver trait has
//! no way to choose the alert, and rustls never sends `unrecognized_name`.
//! Sending that one would mean reading the `ClientHello` ourselves (rustls'
//! `Acceptor`) and writing the alert record by hand; RFC 6066 lets a server
//! abort with any fatal alert here, so `lbd` keeps rustls' handshake. A
//! rustls client reports `Error::AlertReceived(AlertDescription::AccessDenied)`,
//! OpenSSL `tlsv1 alert access denied`; on the server side
//! [`handshake_failure_reason`] labels the failure `no_certificate_for_sni`.
//!
//! # Loading and reloading
//!
//! [`CertStore::load`] takes the whole desired set of [`CertSpec`]s (after
//! a configuration reload) and [`CertStore::refresh`] re-reads the files of
//! the current set (from a file watcher or a timer). Both read every file,
//! and parse again only the pairs whose path, modification time, size or
//! content hash changed. They check what clients would otherwise find out
//! one handshake at a time: the certificate parses, the key belongs to it,
//! and its `subjectAltName` DNS names cover every name of the site (with
//! the same matcher rustls' clients use). A spec that fails keeps serving
//! the certificate it had (for the names that certificate covers), so a
//! botched renewal does not take a site down; a spec that never loaded is
//! not served. An expired (or not yet valid) certificate is only a warning:
//! it keeps the handshake working for clients that do not check dates, and
//! the fix, renewing it, is the operator's. The [`LoadReport`] says what
//! happened; this module logs nothing above `debug`, its caller logs the
//! report.
//!
//! Rotate by writing the new certificate and key, then refreshing. A
//! refresh that runs between the two writes reports a key mismatch and
//! keeps the old pair serving; the next one picks up both. Loading reads
//! files: call it from blocking code (`spawn_blocking`), not a runtime
//! thread.
//!
//! # Resumption
//!
//! Each listener has one session cache (TLS 1.2 session ids) and one ticket
//! key rotator (TLS 1.3 and 1.2 tickets), shared by every `ServerConfig`
//! built for that listener, so a config rebuilt after a reload still
//! resumes its sessions, while a ticket from one listener never opens a
//! session on another. rustls resolves the certificate before it considers
//! resumption, so a name removed from the configuration cannot be resumed
//! either. 0-RTT data stays off (rustls' default): it could be replayed.

use std::borrow::Cow;
use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;
use std::{fmt, fs, io};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, PeerIncompatible, ServerConfig};
use tracing::{debug, warn};
use webpki::EndEntityCert;

/// Sessions each listener's cache remembers for TLS 1.2 session-id
/// resumption (rustls evicts the oldest beyond this).
const SESSION_CACHE_SIZE: usize = 64 * 1024;

/// The message of the `rustls::Error::General` that rustls 0.23 returns
/// when the resolver finds no certificate (`server/hs.rs`); the test
/// `unknown_sni_gets_access_denied` notices if rustls changes it.
const NO_CERTIFICATE: &str = "no server certificate chain resolved";

/// One certificate the store serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CertSpec {
    /// The listener that presents it; the store only uses it as a key.
    pub listen: SocketAddr,
    /// The tenant whose site this is.
    pub tenant: String,
    /// Host names (`api.acme.example`) and wildcards (`*.acme.example`),
    /// ASCII lower case without a trailing dot.
    pub names: Vec<String>,
    /// PEM file: the site's certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Why a spec's certificate could not be (re)loaded, or a name not served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error(
        "cannot read {}: {source}; check the path in the site's TLS settings and that lbd may read it",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("{} is not valid PEM: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate file has no certificate in it.
    #[error(
        "{} holds no certificate; it must hold PEM 'CERTIFICATE' blocks, the site's certificate first, then its intermediates",
        path.display()
    )]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The site's certificate (the first one in the file) does not parse as
    /// an X.509 v3 certificate.
    #[error(
        "the first certificate in {} is not a valid X.509 v3 certificate ({reason}); put the site's certificate first",
        path.display()
    )]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// The key file has no private key in it.
    #[error(
        "{} holds no private key; it must hold a PEM 'PRIVATE KEY', 'EC PRIVATE KEY' or 'RSA PRIVATE KEY' block",
        path.display()
    )]
    NoKey {
        /// The key file.
        path: PathBuf,
    },
    /// The private key is of a kind lbd cannot sign with.
    #[error(
        "the private key in {} cannot be used ({reason}); use an ECDSA P-256 or P-384, Ed25519 or RSA (2048 bits or more) key",
        path.display()
    )]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// rustls' complaint.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error(
        "the private key in {} does not belong to the certificate in {}; install the key the certificate was issued for (were the two files rotated separately?)",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A site name is neither a host name nor a wildcard.
    #[error(
        "tenant {tenant}: {name:?} is neither a host name nor a wildcard like *.example.com; fix the site's names"
    )]
    InvalidName {
        /// The tenant.
        tenant: String,
        /// The name as configured.
        name: String,
    },
    /// The certificate's `subjectAltName` does not cover some of the site's
    /// names: clients would reject it for them.
    #[error(
        "the certificate in {} does not cover {}: its DNS names are [{}]; reissue it with them in subjectAltName, or remove them from tenant {tenant}'s site",
        path.display(),
        names.join(", "),
        presented.join(", ")
    )]
    NamesNotCovered {
        /// The certificate file.
        path: PathBuf,
        /// The tenant.
        tenant: String,
        /// The site's names it does not cover.
        names: Vec<String>,
        /// The DNS names it does carry.
        presented: Vec<String>,
    },
    /// Two tenants claim one name on one listener; the first one serves it.
    #[error(
        "{name} on {listen} is claimed by tenants {served} and {other}; {served} serves it; remove it from one of the two sites"
    )]
    NameConflict {
        /// The listener.
        listen: SocketAddr,
        /// The name (`*.` for a wildcard).
        name: String,
        /// The tenant that serves it (the first spec that claims it).
        served: String,
        /// The tenant that does not.
        other: String,
    },
}

/// Something clients will reject although the certificate loaded and is
/// served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertWarning {
    /// Past its `notAfter`.
    #[error(
        "the certificate in {} expired {} ago and clients reject it; renew it (lbd serves it until it is replaced)",
        path.display(),
        days(*secs)
    )]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Seconds since `notAfter`.
        secs: u64,
    },
    /// Before its `notBefore`.
    #[error(
        "the certificate in {} becomes valid only in {}; clients reject it until then (check the issuing host's clock)",
        path.display(),
        days(*secs)
    )]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Seconds until `notBefore`.
        secs: u64,
    },
    /// Another property of the certificate itself that clients check, such
    /// as an extended key usage without `serverAuth` or a CA certificate.
    #[error(
        "clients will reject the certificate in {} ({reason}); reissue it as a TLS server certificate",
        path.display()
    )]
    Rejected {
        /// The certificate file.
        path: PathBuf,
        /// The verifier's complaint.
        reason: String,
    },
}

/// "3 days", "less than a day".
fn days(secs: u64) -> String {
    match secs / 86_400 {
        0 => "less than a day".to_owned(),
        1 => "1 day".to_owned(),
        n => format!("{n} days"),
    }
}

/// What [`CertStore::load`] or [`CertStore::refresh`] did.
#[derive(Debug, Default)]
pub(crate) struct LoadReport {
    /// Specs whose certificate was (re)loaded and is served.
    pub loaded: usize,
    /// Specs served exactly as before: same spec, files unchanged.
    pub unchanged: usize,
    /// Specs that failed; each has an error, and keeps serving its previous
    /// certificate if it had one.
    pub failed: usize,
    /// Every failure, and every name two tenants claim on one listener.
    pub errors: Vec<CertError>,
    /// Certificates served although clients will reject them; reported
    /// by every load and refresh while they are served.
    pub warnings: Vec<CertWarning>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} loaded, {} unchanged, {} failed, {} warnings",
            self.loaded,
            self.unchanged,
            self.failed,
            self.warnings.len()
        )
    }
}

/// Every certificate of every listener; cheap to clone (an `Arc` inside).
/// Lookups are lock-free (an `ArcSwap` of an immutable table).
#[derive(Clone)]
pub(crate) struct CertStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the resolvers read on every handshake.
    table: Arc<ArcSwap<Table>>,
    /// What loading needs; the lock serialises loads and refreshes.
    state: Mutex<State>,
    /// Each listener's session cache and ticket keys, kept across configs.
    resumption: Mutex<HashMap<SocketAddr, Resumption>>,
    provider: Arc<CryptoProvider>,
}

/// What the last load left: the specs, the parsed pairs, what each spec
/// serves.
#[derive(Default)]
struct State {
    specs: Vec<CertSpec>,
    pairs: HashMap<PairKey, Parsed>,
    served: HashMap<SpecId, Arc<CertifiedKey>>,
}

/// (certificate file, key file).
type PairKey = (PathBuf, PathBuf);

/// A parsed certificate and key, with the stamps of the files they came
/// from.
struct Parsed {
    cert: Stamp,
    key: Stamp,
    certified: Arc<CertifiedKey>,
}

/// What tells whether a file changed since it was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    hash: u64,
}

/// A spec's identity across loads: its names may change, its previous
/// certificate is the one it falls back to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SpecId {
    listen: SocketAddr,
    tenant: String,
    cert: PathBuf,
    key: PathBuf,
}

impl SpecId {
    fn of(spec: &CertSpec) -> Self {
        Self {
            listen: spec.listen,
            tenant: spec.tenant.clone(),
            cert: spec.cert.clone(),
            key: spec.key.clone(),
        }
    }
}

#[derive(Clone)]
struct Resumption {
    sessions: Arc<dyn StoresServerSessions>,
    /// `None` if no ticket key could be made: TLS 1.3 then resumes through
    /// the session cache (rustls' stateful tickets).
    tickets: Option<Arc<dyn ProducesTickets>>,
}

/// The immutable lookup table: what each listener serves.
#[derive(Default)]
struct Table {
    listeners: HashMap<SocketAddr, Sites>,
}

/// One listener's names.
#[derive(Default)]
struct Sites {
    /// `api.acme.example` → its site.
    exact: HashMap<String, Site>,
    /// `acme.example` → the site of `*.acme.example`.
    wildcard: HashMap<String, Site>,
    /// Tenant → its first site on this listener (for a default tenant).
    first: HashMap<String, Site>,
}

#[derive(Clone)]
struct Site {
    tenant: Arc<str>,
    key: Arc<CertifiedKey>,
}

/// A site name as the table files it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SiteName<'a> {
    /// `api.acme.example`.
    Exact(&'a str),
    /// `*.acme.example`, holding `acme.example`.
    Wildcard(&'a str),
}

impl SiteName<'_> {
    /// `None` unless `name` is a DNS name, or `*.` and a DNS name.
    fn parse(name: &str) -> Option<SiteName<'_>> {
        let (site, host) = match name.strip_prefix("*.") {
            Some(parent) => (SiteName::Wildcard(parent), parent),
            None => (SiteName::Exact(name), name),
        };
        let valid = !host.contains('*') && !host.ends_with('.') && DnsName::try_from(host).is_ok();
        valid.then_some(site)
    }
}

/// Lower case, without one trailing dot; borrows when already so.
fn normalise(sni: &str) -> Cow<'_, str> {
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    if sni.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(sni.to_ascii_lowercase())
    } else {
        Cow::Borrowed(sni)
    }
}

impl Sites {
    /// The site an SNI resolves to: the exact name, else the wildcard one
    /// label up.
    fn lookup(&self, sni: &str) -> Option<&Site> {
        let sni = normalise(sni);
        if let Some(site) = self.exact.get(sni.as_ref()) {
            return Some(site);
        }
        let (label, parent) = sni.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent)
    }
}

impl Table {
    /// Files `names` of `spec` under its listener, serving `key`. A name
    /// another tenant already claims stays theirs, and is reported.
    fn add(
        &mut self,
        spec: &CertSpec,
        names: &[&String],
        key: &Arc<CertifiedKey>,
        errors: &mut Vec<CertError>,
    ) {
        let sites = self.listeners.entry(spec.listen).or_default();
        let site = Site {
            tenant: Arc::from(spec.tenant.as_str()),
            key: Arc::clone(key),
        };
        sites
            .first
            .entry(spec.tenant.clone())
            .or_insert_with(|| site.clone());
        for name in names {
            let name = name.to_ascii_lowercase();
            let entry = match SiteName::parse(&name) {
                Some(SiteName::Exact(host)) => sites.exact.entry(host.to_owned()),
                Some(SiteName::Wildcard(parent)) => sites.wildcard.entry(parent.to_owned()),
                // Already reported as `InvalidName`.
                None => continue,
            };
            match entry {
                Entry::Vacant(vacant) => {
                    vacant.insert(site.clone());
                }
                Entry::Occupied(taken) if *taken.get().tenant != *spec.tenant => {
                    errors.push(CertError::NameConflict {
                        listen: spec.listen,
                        name,
                        served: taken.get().tenant.to_string(),
                        other: spec.tenant.clone(),
                    });
                }
                // The same tenant twice: its first spec serves the name.
                Entry::Occupied(_) => {}
            }
        }
    }
}

/// The certificate resolver of one listener: reads the store's current
/// table on every handshake.
struct Resolver {
    table: Arc<ArcSwap<Table>>,
    listen: SocketAddr,
    default_tenant: Option<String>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("listen", &self.listen)
            .field("default_tenant", &self.default_tenant)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        // Returning `None` makes rustls abort with `access_denied` (see the
        // module documentation).
        let sites = table.listeners.get(&self.listen)?;
        let site = hello
            .server_name()
            .and_then(|sni| sites.lookup(sni))
            .or_else(|| sites.first.get(self.default_tenant.as_deref()?))?;
        Some(Arc::clone(&site.key))
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.inner.table.load();
        f.debug_struct("CertStore")
            .field("listeners", &table.listeners.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for CertStore {
    fn default() -> Self {
        Self::new()
    }
}

impl CertStore {
    /// An empty store: every handshake fails until [`load`](Self::load).
    #[must_use]
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                table: Arc::new(ArcSwap::from_pointee(Table::default())),
                state: Mutex::new(State::default()),
                resumption: Mutex::new(HashMap::new()),
                provider: Arc::new(rustls::crypto::ring::default_provider()),
            }),
        }
    }

    /// Loads the certificates for `specs`, the whole desired set (e.g.
    /// after a configuration reload): specs left out are no longer served.
    /// Files whose path, modification time, size and content hash did not
    /// change are not parsed again. A spec that fails (unreadable file, no
    /// certificate, no or unsupported key, key not the certificate's, a
    /// site name the certificate does not cover) is reported and keeps
    /// serving its previous certificate, if it had one, for the names that
    /// certificate covers. Reads files: call it from blocking code.
    #[must_use = "the report holds the errors and warnings to log"]
    pub(crate) fn load(&self, specs: &[CertSpec]) -> LoadReport {
        let mut state = lock(&self.inner.state);
        self.load_locked(&mut state, specs)
    }

    /// Re-reads the files of the current specs, parsing those that changed
    /// on disk (call it from a file watcher or a timer); same rules as
    /// [`load`](Self::load).
    #[must_use = "the report holds the errors and warnings to log"]
    pub(crate) fn refresh(&self) -> LoadReport {
        let mut state = lock(&self.inner.state);
        let specs = state.specs.clone();
        self.load_locked(&mut state, &specs)
    }

    /// Every file the store reads, sorted, so a caller can watch their
    /// directories.
    #[must_use]
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        let state = lock(&self.inner.state);
        let files: BTreeSet<&PathBuf> = state
            .specs
            .iter()
            .flat_map(|spec| [&spec.cert, &spec.key])
            .collect();
        files.into_iter().cloned().collect()
    }

    /// The rustls server config of one listener: TLS 1.2 and 1.3 with the
    /// server's cipher suite order (rustls' default, strongest first), ALPN
    /// `h2` then `http/1.1` (only `http/1.1` when `h2` is false), the
    /// listener's session cache and ticket keys, and a resolver that reads
    /// the store's current certificates on each handshake. With
    /// `default_tenant`, an unknown or missing SNI gets that tenant's first
    /// certificate on this listener; without one the handshake fails with
    /// an `access_denied` alert.
    ///
    /// # Panics
    ///
    /// Only if rustls' ring provider lacked TLS 1.2 or 1.3 cipher suites,
    /// which it has; every test builds a config.
    #[must_use]
    pub(crate) fn server_config(
        &self,
        listen: SocketAddr,
        default_tenant: Option<&str>,
        h2: bool,
    ) -> Arc<ServerConfig> {
        let resolver = Resolver {
            table: Arc::clone(&self.inner.table),
            listen,
            default_tenant: default_tenant.map(str::to_owned),
        };
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.inner.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("rustls' ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        // The server's order, not the client's: rustls' suites are listed
        // strongest first (AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305, all
        // with forward secrecy), so a client that lists a weaker suite
        // first still gets the strongest one both support.
        config.ignore_client_order = true;
        // One ticket per handshake instead of rustls' two: a client resumes
        // one connection with it and gets a fresh ticket on that one, and
        // each ticket costs an encryption, a record and random bytes.
        config.send_tls13_tickets = 1;
        let resumption = self.resumption(listen);
        config.session_storage = resumption.sessions;
        if let Some(tickets) = resumption.tickets {
            config.ticketer = tickets;
        }
        Arc::new(config)
    }

    #[cfg(test)]
    /// Which tenant's certificate `sni` resolves to on a listener, without
    /// a default tenant (for tests and tenant identification).
    #[must_use]
    pub(crate) fn tenant_for(&self, listen: SocketAddr, sni: &str) -> Option<String> {
        let table = self.inner.table.load();
        let site = table.listeners.get(&listen)?.lookup(sni)?;
        Some(site.tenant.to_string())
    }

    /// A listener's session cache and ticket keys, made on first use.
    fn resumption(&self, listen: SocketAddr) -> Resumption {
        lock(&self.inner.resumption)
            .entry(listen)
            .or_insert_with(|| {
                let tickets = rustls::crypto::ring::Ticketer::new()
                    .inspect_err(|e| {
                        warn!(
                            %listen,
                            error = %e,
                            "cannot make a TLS session ticket key; clients resume through the session cache only"
                        );
                    })
                    .ok();
                Resumption {
                    sessions: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
                    tickets,
                }
            })
            .clone()
    }

    fn load_locked(&self, state: &mut State, specs: &[CertSpec]) -> LoadReport {
        let now = UnixTime::now();
        let before: HashSet<&CertSpec> = state.specs.iter().collect();
        let mut report = LoadReport::default();
        let mut table = Table::default();
        let mut pairs = HashMap::new();
        let mut served = HashMap::new();
        for spec in specs {
            let id = SpecId::of(spec);
            let loaded = check_name_syntax(spec)
                .and_then(|()| self.load_pair(&state.pairs, &mut pairs, spec))
                .and_then(|certified| check_names(spec, &certified).map(|()| certified));
            match loaded {
                Ok(certified) => {
                    let same = before.contains(spec)
                        && state
                            .served
                            .get(&id)
                            .is_some_and(|old| Arc::ptr_eq(old, &certified));
                    if same {
                        report.unchanged += 1;
                    } else {
                        report.loaded += 1;
                    }
                    report
                        .warnings
                        .extend(validity_warning(&spec.cert, &certified, now));
                    let names: Vec<&String> = spec.names.iter().collect();
                    table.add(spec, &names, &certified, &mut report.errors);
                    served.insert(id, certified);
                }
                Err(e) => {
                    report.failed += 1;
                    report.errors.push(e);
                    if let Some(old) = state.served.get(&id) {
                        let names: Vec<&String> = match leaf(old) {
                            Some(leaf) => spec.names.iter().filter(|n| covers(&leaf, n)).collect(),
                            None => Vec::new(),
                        };
                        table.add(spec, &names, old, &mut report.errors);
                        served.insert(id, Arc::clone(old));
                    }
                }
            }
        }
        *state = State {
            specs: specs.to_vec(),
            pairs,
            served,
        };
        self.inner.table.store(Arc::new(table));
        report
    }

    /// The spec's certificate and key: parsed again only when a file
    /// changed since the last load (`old`), and once per load (`new`).
    fn load_pair(
        &self,
        old: &HashMap<PairKey, Parsed>,
        new: &mut HashMap<PairKey, Parsed>,
        spec: &CertSpec,
    ) -> Result<Arc<CertifiedKey>, CertError> {
        let pair = (spec.cert.clone(), spec.key.clone());
        if let Some(done) = new.get(&pair) {
            return Ok(Arc::clone(&done.certified));
        }
        let (cert_pem, cert) = read(&spec.cert)?;
        let (key_pem, key) = read(&spec.key)?;
        let certified = match old.get(&pair) {
            Some(parsed) if parsed.cert == cert && parsed.key == key => {
                Arc::clone(&parsed.certified)
            }
            _ => {
                debug!(
                    cert = %spec.cert.display(),
                    key = %spec.key.display(),
                    "parsing TLS certificate and key"
                );
                Arc::new(parse_pair(
                    &self.inner.provider,
                    &spec.cert,
                    &cert_pem,
                    &spec.key,
                    &key_pem,
                )?)
            }
        };
        new.insert(
            pair,
            Parsed {
                cert,
                key,
                certified: Arc::clone(&certified),
            },
        );
        Ok(certified)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing holding these locks leaves its data half-changed on a panic:
    // the state is replaced whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A file's bytes and stamp.
fn read(path: &Path) -> Result<(Vec<u8>, Stamp), CertError> {
    let failed = |source| CertError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(failed)?;
    let bytes = fs::read(path).map_err(failed)?;
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    let stamp = Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        hash: hasher.finish(),
    };
    Ok((bytes, stamp))
}

/// The certificate chain and key of a pair of PEM files, checked to
/// belong together.
fn parse_pair(
    provider: &CryptoProvider,
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, &e))?;
    let first = chain.first().ok_or_else(|| CertError::NoCertificate {
        path: cert_path.to_owned(),
    })?;
    EndEntityCert::try_from(first).map_err(|e| CertError::BadCertificate {
        path: cert_path.to_owned(),
        reason: e.to_string(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => CertError::NoKey {
            path: key_path.to_owned(),
        },
        e => pem_error(key_path, &e),
    })?;
    let signer =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertError::UnsupportedKey {
                path: key_path.to_owned(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // `Unknown`: a key that cannot tell its public half. ring's all
        // can; rustls itself accepts such keys, and so do we.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(CertError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            })
        }
        Err(e) => Err(CertError::BadCertificate {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Reads one certificate chain and its key from PEM files and checks that
/// they belong together (the rules of a site's certificate, without host
/// names): for TLS servers other than the L7 listeners (the admin API).
///
/// # Errors
/// When a file cannot be read or parsed, or the key is not the
/// certificate's.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let provider = rustls::crypto::ring::default_provider();
    let (cert_pem, _) = read(cert)?;
    let (key_pem, _) = read(key)?;
    parse_pair(&provider, cert, &cert_pem, key, &key_pem)
}

fn pem_error(path: &Path, e: &pem::Error) -> CertError {
    let reason = match e {
        pem::Error::MissingSectionEnd { .. } => {
            "a block has no END line (is the file truncated?)".to_owned()
        }
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(e) => format!("a block is not valid base64 ({e})"),
        e => e.to_string(),
    };
    CertError::Pem {
        path: path.to_owned(),
        reason,
    }
}

/// The site's certificate of a loaded pair, parsed.
fn leaf(certified: &CertifiedKey) -> Option<EndEntityCert<'_>> {
    EndEntityCert::try_from(certified.cert.first()?).ok()
}

fn check_name_syntax(spec: &CertSpec) -> Result<(), CertError> {
    match spec.names.iter().find(|n| SiteName::parse(n).is_none()) {
        Some(name) => Err(CertError::InvalidName {
            tenant: spec.tenant.clone(),
            name: name.clone(),
        }),
        None => Ok(()),
    }
}

/// Whether the certificate covers every name of the spec.
fn check_names(spec: &CertSpec, certified: &CertifiedKey) -> Result<(), CertError> {
    let leaf = leaf(certified).ok_or_else(|| CertError::BadCertificate {
        path: spec.cert.clone(),
        reason: "unparsable".to_owned(),
    })?;
    let missing: Vec<String> = spec
        .names
        .iter()
        .filter(|name| !covers(&leaf, name))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CertError::NamesNotCovered {
        path: spec.cert.clone(),
        tenant: spec.tenant.clone(),
        names: missing,
        presented: leaf.valid_dns_names().map(str::to_owned).collect(),
    })
}

/// Whether a client would accept `leaf` for `name`, or for every name
/// under a wildcard `name`.
fn covers(leaf: &EndEntityCert<'_>, name: &str) -> bool {
    if name.starts_with("*.") {
        // Only the same wildcard among its DNS names covers every name
        // one label under it.
        leaf.valid_dns_names()
            .any(|presented| presented.eq_ignore_ascii_case(name))
    } else {
        // webpki's own matcher, the one rustls' clients run: exact names
        // and wildcards one label deep, `subjectAltName` only.
        DnsName::try_from(name).is_ok_and(|dns| {
            leaf.verify_is_valid_for_subject_name(&ServerName::DnsName(dns))
                .is_ok()
        })
    }
}

/// What clients will reject about the certificate itself, now.
fn validity_warning(path: &Path, certified: &CertifiedKey, now: UnixTime) -> Option<CertWarning> {
    let leaf = leaf(certified)?;
    // Verifying against no trust anchor at all: webpki checks the
    // certificate's own properties (validity period, basic constraints,
    // extended key usage) before it looks for an issuer, so a certificate
    // without such a problem fails with `UnknownIssuer`.
    // `expired_certificate_is_only_a_warning` notices if that order changes.
    let verdict = leaf.verify_for_usage(
        &[],
        &[],
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    let path = path.to_owned();
    match verdict {
        Ok(_) | Err(webpki::Error::UnknownIssuer) => None,
        Err(webpki::Error::CertExpired { time, not_after }) => Some(CertWarning::Expired {
            path,
            secs: time.as_secs().saturating_sub(not_after.as_secs()),
        }),
        Err(webpki::Error::CertNotValidYet { time, not_before }) => {
            Some(CertWarning::NotYetValid {
                path,
                secs: not_before.as_secs().saturating_sub(time.as_secs()),
            })
        }
        Err(e) => Some(CertWarning::Rejected {
            path,
            reason: e.to_string(),
        }),
    }
}

/// A short label for a failed TLS accept (from tokio-rustls), for the log:
/// `no_certificate_for_sni` (nothing served for the SNI, and no default
/// tenant), `protocol_version` (the client offered neither TLS 1.2 nor
/// 1.3), `alert` (the client aborted, e.g. it rejected the certificate),
/// `eof` (the client closed mid-handshake), `io` (a socket error), `other`
/// (any other TLS error: not TLS at all, no common cipher suite or ALPN
/// protocol, a malformed message).
#[must_use]
pub(crate) fn handshake_failure_reason(e: &io::Error) -> &'static str {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::General(message)) if message == NO_CERTIFICATE => {
            "no_certificate_for_sni"
        }
        Some(rustls::Error::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::SupportedVersionsExtensionRequired,
        )) => "protocol_version",
        Some(rustls::Error::AlertReceived(_)) => "alert",
        Some(_) => "other",
        None if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SerialNumber, date_time_ymd,
    };
    use rustls::{
        AlertDescription, CertificateError, ClientConfig, HandshakeKind, ProtocolVersion,
        RootCertStore, SupportedProtocolVersion,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// The listener the specs name: the store uses it only as a key, the
    /// test servers listen on ephemeral ports.
    const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);
    const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

    /// A directory removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-tls-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            Self(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    /// A certificate rcgen made, as PEM and DER.
    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let key = KeyPair::generate().expect("a P-256 key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{name} test CA"));
            let cert = params.self_signed(&key).expect("a CA certificate");
            Self { cert, key }
        }

        fn issue(&self, names: &[&str], serial: u64) -> Leaf {
            self.issue_with(names, serial, |_| {})
        }

        fn issue_with(
            &self,
            names: &[&str],
            serial: u64,
            edit: impl FnOnce(&mut CertificateParams),
        ) -> Leaf {
            let key = KeyPair::generate().expect("a P-256 key");
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.serial_number = Some(SerialNumber::from(serial));
            edit(&mut params);
            let cert = params
                .signed_by(&key, &self.cert, &self.key)
                .expect("a leaf certificate");
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
            }
        }

        fn client(
            &self,
            versions: &[&'static SupportedProtocolVersion],
            alpn: &[&str],
        ) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            roots
                .add(self.cert.der().clone())
                .expect("the CA as a root");
            let mut config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            Arc::new(config)
        }
    }

    impl Leaf {
        fn write(&self, spec: &CertSpec) {
            fs::write(&spec.cert, &self.cert_pem).expect("write the certificate");
            fs::write(&spec.key, &self.key_pem).expect("write the key");
        }
    }

    fn spec(dir: &TempDir, tenant: &str, names: &[&str]) -> CertSpec {
        CertSpec {
            listen: LISTEN,
            tenant: tenant.to_owned(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            cert: dir.path(&format!("{tenant}.crt")),
            key: dir.path(&format!("{tenant}.key")),
        }
    }

    /// alpha: `api.alpha.example`, `*.shared.example`; beta:
    /// `www.beta.example`, `api.shared.example`; gamma: `*.gamma.example`.
    /// Each has its own CA.
    struct Tenants {
        dir: TempDir,
        store: CertStore,
        cas: [Ca; 3],
        leaves: [Leaf; 3],
    }

    fn three_tenants(test: &str) -> Tenants {
        let dir = TempDir::new(test);
        let names: [(&str, &[&str]); 3] = [
            ("alpha", &["api.alpha.example", "*.shared.example"]),
            ("beta", &["www.beta.example", "api.shared.example"]),
            ("gamma", &["*.gamma.example"]),
        ];
        let cas = names.map(|(tenant, _)| Ca::new(tenant));
        let mut specs = Vec::new();
        let leaves = std::array::from_fn(|i| {
            let (tenant, names) = names[i];
            let spec = spec(&dir, tenant, names);
            let leaf = cas[i].issue(names, 1);
            leaf.write(&spec);
            specs.push(spec);
            leaf
        });
        let store = CertStore::new();
        let report = store.load(&specs);
        assert!(report.errors.is_empty(), "load errors: {:?}", report.errors);
        assert_eq!((report.loaded, report.failed), (3, 0), "{report}");
        Tenants {
            dir,
            store,
            cas,
            leaves,
        }
    }

    /// Serves TLS with `config` on 127.0.0.1, echoing each connection;
    /// each handshake's result goes to the receiver.
    async fn serve(
        config: Arc<ServerConfig>,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<io::Result<()>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = mpsc::unbounded_channel();
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(()));
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        if tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// The server side's next failed handshake.
    async fn next_failure(rx: &mut mpsc::UnboundedReceiver<io::Result<()>>) -> io::Error {
        loop {
            match rx.recv().await.expect("the server is running") {
                Ok(()) => {}
                Err(e) => return e,
            }
        }
    }

    async fn connect(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        name: &str,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(name.to_owned()).expect("a valid server name");
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await
    }

    /// The certificate the server presented.
    fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
        let certs = tls.get_ref().1.peer_certificates().expect("a certificate");
        certs[0].clone().into_owned()
    }

    async fn echo(tls: &mut TlsStream<TcpStream>, message: &[u8]) {
        tls.write_all(message).await.expect("write");
        let mut back = vec![0; message.len()];
        tls.read_exact(&mut back).await.expect("read the echo");
        assert_eq!(back, message, "echo");
    }

    fn tls_error(e: &io::Error) -> &rustls::Error {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a TLS error: {e}"))
    }

    fn accept_any_client() -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(BOTH)
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::health::AcceptAnyCertificate(
                provider,
            )))
            .with_no_client_auth();
        Arc::new(config)
    }

    #[tokio::test]
    async fn each_sni_gets_its_tenants_certificate() {
        let t = three_tenants("each-sni");
        let (addr, mut rx) = serve(t.store.server_config(LISTEN, None, true)).await;
        for (i, name) in [
            (0, "api.alpha.example"),
            (1, "www.beta.example"),
            (2, "a.gamma.example"),
        ] {
            let client = t.cas[i].client(BOTH, &[]);
            let mut tls = connect(addr, &client, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(presented(&tls), t.leaves[i].der, "{name}: certificate");
            echo(&mut tls, name.as_bytes()).await;

            // A client that trusts only another tenant's CA refuses it.
            let other = t.cas[(i + 1) % 3].client(BOTH, &[]);
            let e = connect(addr, &other, name).await.expect_err(name);
            assert_eq!(
                tls_error(&e),
                &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "{name} with another tenant's CA"
            );
            let refused = next_failure(&mut rx).await;
            assert_eq!(handshake_failure_reason(&refused), "alert", "{refused}");
        }
        assert_eq!(
            t.store.tenant_for(LISTEN, "www.beta.example").as_deref(),
            Some("beta")
        );
        let elsewhere: SocketAddr = "127.0.0.1:9443".parse().expect("an address");
        assert_eq!(
            t.store.tenant_for(elsewhere, "www.beta.example"),
            None,
            "other listener"
        );
    }

    #[tokio::test]
    async fn wildcard_covers_one_label_and_exact_names_come_first() {
        let t = three_tenants("wildcard");
        let (addr, _rx) = serve(t.store.server_config(LISTEN, None, true)).await;
        let cases = [
            ("x.gamma.example", Some("gamma")),
            ("gamma.example", None),
            ("a.b.gamma.example", None),
            ("x.shared.example", Some("alpha")),
            // beta's exact name beats alpha's wildcard.
            ("api.shared.example", Some("beta")),
        ];
        for (name, tenant) in cases {
            assert_eq!(
                t.store.tenant_for(LISTEN, name).as_deref(),
                tenant,
                "tenant_for({name})"
            );
        }
        let alpha = t.cas[0].client(BOTH, &[]);
        let beta = t.cas[1].client(BOTH, &[]);
        let tls = connect(addr, &alpha, "x.shared.example")
            .await
            .expect("x.shared.example");
        assert_eq!(
            presented(&tls),
            t.leaves[0].der,
            "x.shared.example: alpha's"
        );
        let tls = connect(addr, &beta, "api.shared.example")
            .await
            .expect("api.shared.example");
        assert_eq!(
            presented(&tls),
            t.leaves[1].der,
            "api.shared.example: beta's"
        );
        let gamma = t.cas[2].client(BOTH, &[]);
        for name in ["gamma.example", "a.b.gamma.example"] {
            let e = connect(addr, &gamma, name).await.expect_err(name);
            assert_eq!(
                tls_error(&e),
                &rustls::Error::AlertReceived(AlertDescription::AccessDenied),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn sni_case_and_trailing_dot_do_not_matter() {
        let t = three_tenants("sni-case");
        let (addr, _rx) = serve(t.store.server_config(LISTEN, None, true)).await;
        // rustls' client strips the trailing dot from the SNI it sends and
        // its server lowercases it, so the handshakes check the path end to
        // end and `tenant_for` the resolver's own normalisation.
        for name in [
            "API.Alpha.Example",
            "api.alpha.example.",
            "Api.ALPHA.example.",
        ] {
            let client = t.cas[0].client(BOTH, &[]);
            let tls = connect(addr, &client, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(presented(&tls), t.leaves[0].der, "{name}");
            assert_eq!(
                t.store.tenant_for(LISTEN, name).as_deref(),
                Some("alpha"),
                "{name}"
            );
        }
        assert_eq!(
            t.store.tenant_for(LISTEN, "X.Gamma.Example.").as_deref(),
            Some("gamma")
        );
        assert_eq!(
            t.store.tenant_for(LISTEN, "api.alpha.example.."),
            None,
            "two dots"
        );
        assert_eq!(
            t.store.tenant_for(LISTEN, ".gamma.example"),
            None,
            "empty label"
        );
    }

    #[tokio::test]
    async fn unknown_sni_gets_access_denied() {
        let t = three_tenants("unknown-sni");
        let (addr, mut rx) = serve(t.store.server_config(LISTEN, None, true)).await;
        let client = t.cas[0].client(BOTH, &[]);
        // An unknown name, and no SNI at all (rustls sends none for an IP).
        for name in ["nobody.example", "127.0.0.1"] {
            let e = connect(addr, &client, name).await.expect_err(name);
            assert_eq!(
                tls_error(&e),
                &rustls::Error::AlertReceived(AlertDescription::AccessDenied),
                "{name}: what the client sees"
            );
            let failed = next_failure(&mut rx).await;
            assert_eq!(
                handshake_failure_reason(&failed),
                "no_certificate_for_sni",
                "{name}: server error {failed}"
            );
        }
        // TLS 1.2 takes the same path.
        let tls12 = t.cas[0].client(&[&rustls::version::TLS12], &[]);
        let e = connect(addr, &tls12, "nobody.example")
            .await
            .expect_err("TLS 1.2");
        assert_eq!(
            tls_error(&e),
            &rustls::Error::AlertReceived(AlertDescription::AccessDenied)
        );
    }

    #[tokio::test]
    async fn default_tenant_serves_unknown_and_missing_sni() {
        let t = three_tenants("default-tenant");
        let (addr, _rx) = serve(t.store.server_config(LISTEN, Some("beta"), true)).await;
        let client = accept_any_client();
        for name in ["nobody.example", "127.0.0.1"] {
            let tls = connect(addr, &client, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                presented(&tls),
                t.leaves[1].der,
                "{name}: beta's certificate"
            );
        }
        let tls = connect(addr, &client, "api.alpha.example")
            .await
            .expect("a known name");
        assert_eq!(
            presented(&tls),
            t.leaves[0].der,
            "a known name keeps its certificate"
        );

        // A default tenant without a certificate on the listener serves nothing.
        let (addr, _rx) = serve(t.store.server_config(LISTEN, Some("delta"), true)).await;
        let e = connect(addr, &client, "nobody.example")
            .await
            .expect_err("delta");
        assert_eq!(
            tls_error(&e),
            &rustls::Error::AlertReceived(AlertDescription::AccessDenied)
        );
    }

    #[tokio::test]
    async fn alpn_prefers_h2_unless_disabled() {
        let t = three_tenants("alpn");
        let (h2, _rx) = serve(t.store.server_config(LISTEN, None, true)).await;
        let (h1, _rx1) = serve(t.store.server_config(LISTEN, None, false)).await;
        let both = t.cas[0].client(BOTH, &["h2", "http/1.1"]);
        let cases = [(h2, Some(&b"h2"[..])), (h1, Some(&b"http/1.1"[..]))];
        for (addr, expected) in cases {
            let tls = connect(addr, &both, "api.alpha.example")
                .await
                .expect("handshake");
            assert_eq!(tls.get_ref().1.alpn_protocol(), expected, "ALPN");
        }
        // A client offering nothing gets nothing.
        let none = t.cas[0].client(BOTH, &[]);
        let tls = connect(h2, &none, "api.alpha.example")
            .await
            .expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), None, "no ALPN offered");
    }

    /// A client that lists its suites weakest first still gets the
    /// server's first choice (AES-256-GCM), over TLS 1.3 and 1.2.
    #[tokio::test]
    async fn the_servers_cipher_order_wins() {
        let t = three_tenants("cipher-order");
        let (addr, _rx) = serve(t.store.server_config(LISTEN, None, true)).await;
        let cases: [(&[&SupportedProtocolVersion], _); 2] = [
            (
                &[&rustls::version::TLS13],
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            ),
            (
                &[&rustls::version::TLS12],
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ),
        ];
        for (versions, expected) in cases {
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites.reverse();
            let mut roots = RootCertStore::empty();
            roots.add(t.cas[0].cert.der().clone()).expect("the CA");
            let client = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(versions)
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tls = connect(addr, &Arc::new(client), "api.alpha.example")
                .await
                .expect("handshake");
            let suite = tls.get_ref().1.negotiated_cipher_suite().expect("a suite");
            assert_eq!(suite.suite(), expected, "{versions:?}");
        }
    }

    #[tokio::test]
    async fn tls12_client_is_served() {
        let t = three_tenants("tls12");
        let (addr, _rx) = serve(t.store.server_config(LISTEN, None, true)).await;
        let client = t.cas[1].client(&[&rustls::version::TLS12], &["h2"]);
        let mut tls = connect(addr, &client, "www.beta.example")
            .await
            .expect("TLS 1.2");
        let conn = tls.get_ref().1;
        assert_eq!(
            conn.protocol_version(),
            Some(ProtocolVersion::TLSv1_2),
            "version"
        );
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]), "ALPN");
        assert_eq!(presented(&tls), t.leaves[1].der, "certificate");
        echo(&mut tls, b"over TLS 1.2").await;
    }

    #[tokio::test]
    async fn tls13_second_connection_resumes() {
        let t = three_tenants("resume");
        let store = &t.store;
        let (addr, _rx) = serve(store.server_config(LISTEN, None, true)).await;
        let client = t.cas[2].client(&[&rustls::version::TLS13], &[]);
        let mut first = connect(addr, &client, "a.gamma.example")
            .await
            .expect("first");
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
        // Reading the echo processes the tickets the server sent before it.
        echo(&mut first, b"ticket please").await;
        let second = connect(addr, &client, "a.gamma.example")
            .await
            .expect("second");
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "second"
        );

        // A config rebuilt for the same listener (after a reload) shares
        // the ticket keys: the session still resumes.
        let (again, _rx2) = serve(store.server_config(LISTEN, None, true)).await;
        let mut third = connect(addr, &client, "b.gamma.example")
            .await
            .expect("third");
        echo(&mut third, b"another ticket").await;
        let fourth = connect(again, &client, "b.gamma.example")
            .await
            .expect("fourth");
        assert_eq!(
            fourth.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "rebuilt"
        );
    }

    #[tokio::test]
    async fn rotation_serves_the_new_certificate_and_keeps_open_connections() {
        let dir = TempDir::new("rotation");
        let ca = Ca::new("alpha");
        let spec = spec(&dir, "alpha", &["api.alpha.example"]);
        let old = ca.issue(&["api.alpha.example"], 1);
        old.write(&spec);
        let store = CertStore::new();
        let report = store.load(std::slice::from_ref(&spec));
        assert_eq!(
            (report.loaded, report.failed),
            (1, 0),
            "{report}: {:?}",
            report.errors
        );
        let (addr, _rx) = serve(store.server_config(LISTEN, None, true)).await;
        let client = ca.client(BOTH, &[]);
        let mut before = connect(addr, &client, "api.alpha.example")
            .await
            .expect("before");
        assert_eq!(presented(&before), old.der, "before rotation");
        echo(&mut before, b"before").await;

        let new = ca.issue(&["api.alpha.example"], 2);
        new.write(&spec);
        let report = store.refresh();
        assert_eq!(
            (report.loaded, report.unchanged, report.failed),
            (1, 0, 0),
            "{report}"
        );

        // A fresh client: the first one would resume its old session.
        let client = ca.client(BOTH, &[]);
        let after = connect(addr, &client, "api.alpha.example")
            .await
            .expect("after");
        assert_eq!(presented(&after), new.der, "after rotation");
        assert_ne!(new.der, old.der);
        echo(&mut before, b"still open after rotation").await;

        let report = store.refresh();
        assert_eq!(
            (report.loaded, report.unchanged),
            (0, 1),
            "nothing changed: {report}"
        );
    }

    #[tokio::test]
    async fn a_bad_file_keeps_the_old_certificate_serving() {
        let dir = TempDir::new("bad-file");
        let ca = Ca::new("alpha");
        let spec = spec(&dir, "alpha", &["api.alpha.example"]);
        let good = ca.issue(&["api.alpha.example"], 1);
        good.write(&spec);
        let store = CertStore::new();
        let report = store.load(std::slice::from_ref(&spec));
        assert_eq!(report.loaded, 1, "{report}");
        let (addr, _rx) = serve(store.server_config(LISTEN, None, true)).await;
        let serving = async || {
            let client = ca.client(BOTH, &[]);
            let tls = connect(addr, &client, "api.alpha.example")
                .await
                .expect("handshake");
            presented(&tls)
        };

        let other = ca.issue(&["api.alpha.example"], 2);
        let cert = spec.cert.display().to_string();
        let key = spec.key.display().to_string();
        let cases: [(&str, &Path, &str, &str); 4] = [
            (
                "garbage certificate",
                &spec.cert,
                "not a certificate\n",
                &cert,
            ),
            (
                "truncated certificate",
                &spec.cert,
                &good.cert_pem[..100],
                &cert,
            ),
            ("another certificate's key", &spec.key, &other.key_pem, &key),
            ("no key", &spec.key, &good.cert_pem, &key),
        ];
        for (what, path, content, named) in cases {
            fs::write(path, content).expect("write");
            let report = store.refresh();
            assert_eq!((report.loaded, report.failed), (0, 1), "{what}: {report}");
            let message = report.errors[0].to_string();
            assert!(
                message.contains(named),
                "{what}: {message} should name {named}"
            );
            assert_eq!(
                serving().await,
                good.der,
                "{what}: the old certificate serves"
            );
            assert_eq!(
                store.tenant_for(LISTEN, "api.alpha.example").as_deref(),
                Some("alpha")
            );
            good.write(&spec);
        }
        let message = {
            fs::write(&spec.key, &other.key_pem).expect("write");
            store.refresh().errors[0].to_string()
        };
        assert!(message.contains("does not belong"), "{message}");
        assert!(message.contains(&cert), "{message}");

        // The spec's files move to a missing path: a new spec, nothing served.
        good.write(&spec);
        let mut moved = spec.clone();
        moved.cert = dir.path("missing.crt");
        let report = store.load(&[moved]);
        assert_eq!(report.failed, 1, "{report}");
        assert!(
            report.errors[0].to_string().contains("missing.crt"),
            "{}",
            report.errors[0]
        );
        assert_eq!(
            store.tenant_for(LISTEN, "api.alpha.example"),
            None,
            "moved spec"
        );
    }

    #[tokio::test]
    async fn a_spec_that_never_loaded_is_not_served() {
        let dir = TempDir::new("never-loaded");
        let ca = Ca::new("alpha");
        let good = spec(&dir, "alpha", &["api.alpha.example"]);
        ca.issue(&["api.alpha.example"], 1).write(&good);
        let bad = spec(&dir, "beta", &["www.beta.example"]);
        fs::write(&bad.cert, "garbage").expect("write");
        fs::write(&bad.key, "garbage").expect("write");
        let store = CertStore::new();
        let report = store.load(&[good, bad.clone()]);
        assert_eq!((report.loaded, report.failed), (1, 1), "{report}");
        let message = report.errors[0].to_string();
        assert!(
            message.contains(&bad.cert.display().to_string()),
            "{message}"
        );
        assert!(message.contains("holds no certificate"), "{message}");
        assert_eq!(store.tenant_for(LISTEN, "www.beta.example"), None);

        let (addr, _rx) = serve(store.server_config(LISTEN, None, true)).await;
        let e = connect(addr, &ca.client(BOTH, &[]), "www.beta.example")
            .await
            .expect_err("never loaded");
        assert_eq!(
            tls_error(&e),
            &rustls::Error::AlertReceived(AlertDescription::AccessDenied)
        );
    }

    #[test]
    fn names_the_certificate_does_not_cover_are_errors() {
        let dir = TempDir::new("names");
        let ca = Ca::new("alpha");
        let store = CertStore::new();
        let cases: [(&[&str], &[&str], Option<&str>); 5] = [
            (
                &["api.alpha.example"],
                &["api.alpha.example", "extra.alpha.example"],
                Some("extra.alpha.example"),
            ),
            (
                &["api.alpha.example"],
                &["*.alpha.example"],
                Some("*.alpha.example"),
            ),
            (
                &["*.alpha.example"],
                &["alpha.example"],
                Some("alpha.example"),
            ),
            (
                &["*.alpha.example"],
                &["x.y.alpha.example"],
                Some("x.y.alpha.example"),
            ),
            (
                &["*.alpha.example", "alpha.example"],
                &["alpha.example", "x.alpha.example", "*.alpha.example"],
                None,
            ),
        ];
        for (i, (sans, names, missing)) in cases.into_iter().enumerate() {
            let spec = spec(&dir, "alpha", names);
            ca.issue(sans, 1).write(&spec);
            let report = store.load(std::slice::from_ref(&spec));
            let Some(missing) = missing else {
                assert_eq!(
                    (report.loaded, report.failed),
                    (1, 0),
                    "case {i}: {:?}",
                    report.errors
                );
                continue;
            };
            assert_eq!(report.failed, 1, "case {i}: {report}");
            let message = report.errors[0].to_string();
            assert!(
                message.contains(&format!("does not cover {missing}")),
                "case {i}: {message}"
            );
            assert!(
                message.contains(&spec.cert.display().to_string()),
                "case {i}: {message}"
            );
            assert_eq!(
                store.tenant_for(LISTEN, names[0]),
                None,
                "case {i}: never loaded"
            );
        }

        let spec = spec(&dir, "alpha", &["bad name.example"]);
        let report = store.load(&[spec]);
        assert_eq!(report.failed, 1, "{report}");
        assert!(
            report.errors[0]
                .to_string()
                .contains("\"bad name.example\""),
            "{}",
            report.errors[0]
        );
    }

    #[test]
    fn expired_certificate_is_only_a_warning() {
        let dir = TempDir::new("expired");
        let ca = Ca::new("alpha");
        let spec = spec(&dir, "alpha", &["api.alpha.example"]);
        ca.issue_with(&["api.alpha.example"], 1, |p| {
            p.not_before = date_time_ymd(2000, 1, 1);
            p.not_after = date_time_ymd(2001, 1, 1);
        })
        .write(&spec);
        let store = CertStore::new();
        let report = store.load(std::slice::from_ref(&spec));
        assert_eq!((report.loaded, report.failed), (1, 0), "{report}");
        let [CertWarning::Expired { path, secs }] = &report.warnings[..] else {
            panic!("one Expired warning, not {:?}", report.warnings);
        };
        assert_eq!(*path, spec.cert, "the warning names the file");
        assert!(
            *secs > 86_400 * 365 * 20,
            "expired in 2001, not {secs} s ago"
        );
        assert!(
            report.warnings[0].to_string().contains("days ago"),
            "{}",
            report.warnings[0]
        );
        assert_eq!(
            store.tenant_for(LISTEN, "api.alpha.example").as_deref(),
            Some("alpha")
        );

        ca.issue(&["api.alpha.example"], 2).write(&spec);
        assert!(store.refresh().warnings.is_empty(), "a valid certificate");
    }

    #[test]
    fn unchanged_files_are_not_parsed_again() {
        let t = three_tenants("unchanged");
        let report = t.store.refresh();
        assert_eq!(
            (report.loaded, report.unchanged, report.failed),
            (0, 3, 0),
            "{report}"
        );
        assert_eq!(t.store.files().len(), 6, "{:?}", t.store.files());
        assert!(
            t.store.files().iter().all(|f| f.starts_with(&t.dir.0)),
            "{:?}",
            t.store.files()
        );

        // Dropping a spec stops serving its names.
        let state = lock(&t.store.inner.state).specs.clone();
        let report = t.store.load(&state[..2]);
        assert_eq!((report.loaded, report.unchanged), (0, 2), "{report}");
        assert_eq!(
            t.store.tenant_for(LISTEN, "a.gamma.example"),
            None,
            "gamma dropped"
        );
        assert_eq!(t.store.files().len(), 4);
    }

    #[test]
    fn two_tenants_claiming_a_name_is_an_error() {
        let dir = TempDir::new("conflict");
        let store = CertStore::new();
        let specs = [
            spec(&dir, "alpha", &["api.example"]),
            spec(&dir, "beta", &["api.example"]),
        ];
        for s in &specs {
            Ca::new(&s.tenant).issue(&["api.example"], 1).write(s);
        }
        let report = store.load(&specs);
        assert_eq!((report.loaded, report.failed), (2, 0), "{report}");
        let [CertError::NameConflict { served, other, .. }] = &report.errors[..] else {
            panic!("one NameConflict, not {:?}", report.errors);
        };
        assert_eq!(
            (served.as_str(), other.as_str()),
            ("alpha", "beta"),
            "first spec serves"
        );
        assert_eq!(
            store.tenant_for(LISTEN, "api.example").as_deref(),
            Some("alpha")
        );
    }

    #[tokio::test]
    async fn failure_reasons() {
        let t = three_tenants("reasons");
        let (addr, mut rx) = serve(t.store.server_config(LISTEN, None, true)).await;
        drop(TcpStream::connect(addr).await.expect("connect"));
        let e = next_failure(&mut rx).await;
        assert_eq!(handshake_failure_reason(&e), "eof", "{e}");

        let mut plain = TcpStream::connect(addr).await.expect("connect");
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let e = next_failure(&mut rx).await;
        assert_eq!(handshake_failure_reason(&e), "other", "{e}");

        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let cases = [
            (
                tls(PeerIncompatible::Tls12NotOffered.into()),
                "protocol_version",
            ),
            (
                tls(PeerIncompatible::SupportedVersionsExtensionRequired.into()),
                "protocol_version",
            ),
            (
                tls(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
                "alert",
            ),
            (
                tls(rustls::Error::General(NO_CERTIFICATE.to_owned())),
                "no_certificate_for_sni",
            ),
            (
                tls(PeerIncompatible::NoCipherSuitesInCommon.into()),
                "other",
            ),
            (io::ErrorKind::ConnectionReset.into(), "io"),
        ];
        for (e, reason) in cases {
            assert_eq!(handshake_failure_reason(&e), reason, "{e}");
        }
    }

    proptest! {
        #[test]
        fn lookup_ignores_case_and_one_trailing_dot(
            label in "[a-zA-Z0-9][a-zA-Z0-9-]{0,20}",
            upper in any::<bool>(),
            dot in any::<bool>(),
        ) {
            let store = fixture();
            let name = |host: String| {
                let host = if upper { host.to_ascii_uppercase() } else { host };
                if dot { format!("{host}.") } else { host }
            };
            let one_label = name(format!("{label}.gamma.example"));
            let two_labels = name(format!("{label}.x.gamma.example"));
            let exact = name("api.alpha.example".to_owned());
            prop_assert_eq!(store.tenant_for(LISTEN, &one_label), Some("gamma".to_owned()));
            prop_assert_eq!(store.tenant_for(LISTEN, &two_labels), None);
            prop_assert_eq!(store.tenant_for(LISTEN, &exact), Some("alpha".to_owned()));
        }
    }

    /// One loaded store for every proptest case (its files removed: the
    /// lookups only read the table).
    fn fixture() -> &'static CertStore {
        static FIXTURE: std::sync::OnceLock<CertStore> = std::sync::OnceLock::new();
        FIXTURE.get_or_init(|| three_tenants("proptest").store.clone())
    }
}
