//! TLS for DERP: server configs (given PEM files or a self-signed cert), the
//! fast-start meta-certificate, and client verification modes.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use weft_key::NodePublic;

use crate::client::{Error, TlsMode};

/// Errors building TLS configs.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or parsing a PEM file failed.
    #[error("{path}: {msg}")]
    Pem {
        /// File.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Gen(String),
    /// rustls rejected the config.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct CertKey {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl CertKey {
    /// Loads PEM `cert` (chain) and `key` files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pem = |p: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
            path: p.display().to_string(),
            msg: e.to_string(),
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(cert, &e))?;
        if chain.is_empty() {
            return Err(pem(cert, &"no certificates"));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, &e))?;
        Ok(Self {
            chain,
            key: key_der,
        })
    }

    /// A self-signed certificate for `names` (DNS names or IP literals), for tests.
    pub fn self_signed(names: &[String]) -> Result<Self, TlsError> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| TlsError::Gen(e.to_string()))?;
        Ok(Self {
            chain: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into()),
        })
    }

    /// SHA-256 of the leaf (for `CertName: "sha256-raw:<hex>"`).
    pub fn leaf_sha256(&self) -> [u8; 32] {
        sha256(&self.chain[0])
    }
}

/// The fast-start meta-certificate: Ed25519, CN `derpkey<hex>`, serial 2.
pub fn meta_cert(server: NodePublic) -> Result<CertificateDer<'static>, TlsError> {
    let gen = |e: rcgen::Error| TlsError::Gen(e.to_string());
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(gen)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("derpkey{}", server.to_hex()),
    );
    params.serial_number = Some(rcgen::SerialNumber::from(vec![2u8]));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now + time::Duration::days(30);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let cert = params.self_signed(&kp).map_err(gen)?;
    Ok(cert.der().clone())
}

/// A rustls server config for DERP: ALPN `http/1.1`, and when `meta_key` is
/// given the meta-certificate appended to the chain (enables fast start).
pub fn server_config(
    ck: CertKey,
    meta_key: Option<NodePublic>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut chain = ck.chain;
    if let Some(k) = meta_key {
        chain.push(meta_cert(k)?);
    }
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, ck.key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let h = suite
        .tls13()
        .expect("TLS 1.3 suite")
        .common
        .hash_provider
        .hash(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(h.as_ref());
    out
}

/// Finds a meta-certificate server key in a peer chain (`derpkey` + 64 hex).
pub(crate) fn find_meta_key(certs: &[CertificateDer<'_>]) -> Option<NodePublic> {
    const PREFIX: &[u8] = b"derpkey";
    for c in certs {
        let d: &[u8] = c.as_ref();
        let mut i = 0;
        while let Some(p) = d[i..].windows(PREFIX.len()).position(|w| w == PREFIX) {
            let start = i + p + PREFIX.len();
            if let Some(hex) = d.get(start..start + 64) {
                if let Ok(s) = std::str::from_utf8(hex) {
                    if let Ok(k) = NodePublic::parse(&format!("nodekey:{s}")) {
                        return Some(k);
                    }
                }
            }
            i = start;
        }
    }
    None
}

pub(crate) async fn connect(
    tcp: TcpStream,
    host: &str,
    mode: &TlsMode,
) -> Result<
    (
        tokio_rustls::client::TlsStream<TcpStream>,
        Option<NodePublic>,
    ),
    Error,
> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = match mode {
        TlsMode::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        TlsMode::RootsPemFile(path) => {
            let bad = |e: &dyn std::fmt::Display| Error::Tls(format!("{}: {e}", path.display()));
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::InsecureForTests => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny {
                pin: None,
                provider,
            }))
            .with_no_client_auth(),
        TlsMode::PinnedSha256(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny {
                pin: Some(*pin),
                provider,
            }))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.to_owned()).map_err(|e| Error::Tls(e.to_string()))?;
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| Error::Tls(e.to_string()))?;
    let conn = s.get_ref().1;
    let meta = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        conn.peer_certificates().and_then(find_meta_key)
    } else {
        None
    };
    Ok((s, meta))
}

#[derive(Debug)]
struct AcceptAny {
    pin: Option<[u8; 32]>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if sha256(end_entity) != pin => Err(rustls::Error::General(
                "certificate does not match pinned sha256".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_cert_carries_the_server_key() {
        let k = NodePublic::from_bytes([0xab; 32]);
        let c = meta_cert(k).unwrap();
        assert_eq!(find_meta_key(&[c]), Some(k));
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
