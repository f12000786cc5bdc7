//! The tenants' certificates: per tenant a CA and a leaf for its host name,
//! ECDSA P-256 (rcgen), written as PEM files every proxy reads.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;

/// One tenant's files.
#[derive(Clone, Debug)]
pub struct TenantCert {
    /// The leaf certificate (PEM), for nginx and lbd.
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Certificate and key in one file, as `HAProxy` reads them.
    pub combined: PathBuf,
    /// The tenant's CA, the trust anchor of the clients that verify.
    pub ca_der: CertificateDer<'static>,
}

/// Generates a CA and a leaf for `host` and writes them under `dir` as
/// `NAME.pem`, `NAME.key` and `NAME.combined.pem`.
pub fn generate(dir: &Path, name: &str, host: &str) -> Result<TenantCert> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} bench CA"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![host.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, host);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &ca, &ca_key)?;

    let files = TenantCert {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        combined: dir.join(format!("{name}.combined.pem")),
        ca_der: ca.der().clone(),
    };
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(&files.cert, &leaf.pem())?;
    write(&files.key, &key.serialize_pem())?;
    write(
        &files.combined,
        &format!("{}{}", leaf.pem(), key.serialize_pem()),
    )?;
    Ok(files)
}
