//! TLS with libpq's `sslmode` meanings, shared by the replication client and
//! the host's connection pools.
//!
//! - `disable`: plain.
//! - `prefer`: TLS when the server offers it, plain otherwise; the
//!   certificate is not checked (as libpq).
//! - `require`: TLS or nothing; the certificate is not checked, unless a root
//!   certificate is given, which makes it `verify-ca` (as libpq).
//! - `verify-ca`: the chain must lead to a trusted root; any host name.
//! - `verify-full`: the chain, and the certificate must name the host.
//!
//! Trusted roots: the `sslrootcert` file (PEM, one or more certificates), or
//! `sslrootcert=system` / no file: the operating system's store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;

use crate::error::{Error, Result};

/// libpq's `sslmode`; `allow` is read as `prefer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    #[serde(alias = "allow")]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// Parses a libpq `sslmode` value.
    pub fn parse(text: &str) -> Result<SslMode> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a plain connection is acceptable when the server has no TLS.
    pub fn allows_plain(self) -> bool {
        matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The certificate checks a mode asks for, with the roots to check against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system` for the operating system's store.
    pub root_cert: Option<PathBuf>,
}

impl TlsSettings {
    pub fn new(mode: SslMode, root_cert: Option<PathBuf>) -> TlsSettings {
        TlsSettings { mode, root_cert }
    }

    /// What is checked: libpq's `require` with a root certificate is `verify-ca`.
    pub fn effective_mode(&self) -> SslMode {
        match self.mode {
            SslMode::Require if self.root_cert.as_deref().is_some_and(|p| p != Path::new("system")) => {
                SslMode::VerifyCa
            }
            mode => mode,
        }
    }

    /// The rustls configuration, `None` for `disable`. Reads the root file.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
        let config = match self.effective_mode() {
            SslMode::Disable => return Ok(None),
            SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCertCheck(provider)))
                .with_no_client_auth(),
            mode @ (SslMode::VerifyCa | SslMode::VerifyFull) => {
                let roots = Arc::new(self.roots()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| Error::Config(format!("TLS: {e}")))?;
                let verifier: Arc<dyn ServerCertVerifier> =
                    if mode == SslMode::VerifyCa { Arc::new(AnyHostName(webpki)) } else { webpki };
                builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
            }
        };
        Ok(Some(Arc::new(config)))
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match self.root_cert.as_deref() {
            Some(path) if path != Path::new("system") => {
                let shown = path.display();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| Error::Config(format!("sslrootcert {shown}: {e}")))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::Config(format!("sslrootcert {shown}: {e}")))?;
                if certs.is_empty() {
                    return Err(Error::Config(format!("sslrootcert {shown} holds no PEM certificate")));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| Error::Config(format!("sslrootcert {shown}: a certificate is unusable: {e}")))?;
                }
            }
            _ => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(Error::Config(format!(
                        "sslmode={}: no trusted root certificates in the system store; set sslrootcert to a CA file",
                        self.mode
                    )));
                }
            }
        }
        Ok(roots)
    }
}

/// The server name to present and check, from a host name or IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| Error::Config(format!("{host:?} is not a valid TLS server name")))
}

/// `require`/`prefer`: encryption without authentication of the server.
/// Handshake signatures are still checked, so the session keys are sound.
#[derive(Debug)]
struct NoCertCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full chain check, but any host name.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_require_with_a_root_is_verify_ca() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            assert_eq!(SslMode::parse(mode).unwrap().as_str(), mode);
        }
        assert_eq!(SslMode::parse("allow").unwrap(), SslMode::Prefer);
        let e = SslMode::parse("verify_full").unwrap_err().to_string();
        assert!(e.contains("verify_full") && e.contains("verify-full"), "{e}");
        let with_root = TlsSettings::new(SslMode::Require, Some("/ca.pem".into()));
        assert_eq!(with_root.effective_mode(), SslMode::VerifyCa);
        assert_eq!(TlsSettings::new(SslMode::Require, None).effective_mode(), SslMode::Require);
        assert!(TlsSettings::new(SslMode::Disable, None).client_config().unwrap().is_none());
        assert!(TlsSettings::new(SslMode::Require, None).client_config().unwrap().is_some());
    }

    #[test]
    fn a_missing_root_file_is_named() {
        let e = TlsSettings::new(SslMode::VerifyFull, Some("/nonexistent/ca.pem".into()))
            .client_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
