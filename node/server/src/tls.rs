//! Mutual TLS between regions: a cluster CA, one certificate per region naming it, and the
//! quinn configurations that accept only peers signed by the CA and named in the config.
//!
//! One crypto provider (ring) serves rustls and quinn alike.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub const ALPN: &[u8] = b"allot/1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes `ca.pem`, `ca.key` and `<region>.pem`, `<region>.key` for every region into `out`.
pub fn generate(regions: &[String], out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "allot cluster CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    write(out, "ca.pem", &ca_cert.pem())?;
    write_secret(out, "ca.key", &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for r in regions {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![r.clone()])?;
        p.distinguished_name.push(DnType::CommonName, r.as_str());
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &issuer)?;
        write(out, &format!("{r}.pem"), &cert.pem())?;
        write_secret(out, &format!("{r}.key"), &key.serialize_pem())?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(name), text)
        .with_context(|| format!("writing {}", dir.join(name).display()))
}

fn write_secret(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// One region's certificate, key and the cluster CA.
pub struct Identity {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(dir: &Path, region: &str) -> anyhow::Result<Identity> {
        let ca = CertificateDer::from_pem_file(dir.join("ca.pem"))
            .with_context(|| format!("reading {}/ca.pem (run `allot certs`)", dir.display()))?;
        let chain = CertificateDer::pem_file_iter(dir.join(format!("{region}.pem")))
            .with_context(|| format!("reading {}/{region}.pem", dir.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("{region}.key")))
            .with_context(|| format!("reading {}/{region}.key", dir.display()))?;
        if chain.is_empty() {
            bail!("{}/{region}.pem holds no certificate", dir.display());
        }
        Ok(Identity { ca, chain, key })
    }

    fn roots(&self) -> anyhow::Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// The key quinn derives stateless-reset tokens from, the same at every start of this
    /// region (derived from its private key, which is secret and stable). A restarted node
    /// can then reset the connections its previous incarnation had: a survivor that sends on
    /// one learns at its next packet that the peer is gone, instead of sending into the void
    /// until the idle timeout.
    pub fn reset_key(&self) -> Arc<dyn quinn::crypto::HmacKey> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"allot quic stateless reset key v1");
        h.update(self.key.secret_der());
        Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &h.finalize()))
    }

    pub fn server_config(&self) -> anyhow::Result<quinn::ServerConfig> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
                .build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
    }

    pub fn client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}

/// Which configured region a peer's (CA-verified) certificate names, if any.
pub fn peer_region(conn: &quinn::Connection, regions: &[String]) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    let leaf = webpki::EndEntityCert::try_from(certs.first()?).ok()?;
    regions
        .iter()
        .find(|r| {
            ServerName::try_from(r.as_str())
                .is_ok_and(|name| leaf.verify_is_valid_for_subject_name(&name).is_ok())
        })
        .cloned()
}
