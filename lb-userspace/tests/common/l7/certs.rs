//! Test certificates: one CA per tenant (rcgen, ECDSA P-256) issuing leaf
//! certificates, and the rustls configurations that trust or serve them.

use std::{path::Path, sync::Arc};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority that signs leaves.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its private key.
#[derive(Clone)]
pub struct Leaf {
    pub der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    key_der: Vec<u8>,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signing the CA");
        Ca { cert, key }
    }

    /// The CA certificate: a client's only trust anchor.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The CA certificate as PEM (for files the proxy reads).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (exact or `*.` wildcard) with a
    /// fresh key.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing the leaf");
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

impl Leaf {
    /// Writes the PEM certificate and key the way a deployment rotates
    /// them: each to a temporary file renamed over the old one, key first.
    pub fn write(&self, cert: &Path, key: &Path) {
        for (path, text) in [(key, &self.key_pem), (cert, &self.cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
            std::fs::rename(&tmp, path)
                .unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
        }
    }

    /// A rustls server configuration serving this leaf (for backends that
    /// terminate TLS themselves), ALPN `http/1.1`.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .expect("backend certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// rustls' ring provider (the only one built in).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts only `ca` and offers `alpn`.
pub fn client_config(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = client_config_no_alpn(ca);
    Arc::make_mut(&mut config).alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A client configuration that trusts only `ca`, without ALPN (for
/// connectors that set it themselves).
pub fn client_config_no_alpn(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA certificate");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
