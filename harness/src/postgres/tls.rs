//! Connecting with tokio-postgres the way libpq's `sslmode` says.
//!
//! - `disable`: no TLS at all;
//! - `allow`/`prefer`: TLS if the server offers it, the certificate not verified;
//! - `require`: TLS or nothing, the certificate not verified (libpq's behaviour without a
//!   root certificate: encryption, no authentication of the server);
//! - `verify-ca`: TLS, the chain verified against the given CA, the name not checked;
//! - `verify-full`: TLS, the chain and the host name verified.
//!
//! tokio-postgres itself knows only disable/prefer/require; the verification is ours.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::error::SqlState;

use super::dsn::{DbUrl, SslMode};
use super::PostgresError;
use crate::error::Error;

/// Why a connection failed. Nothing in it holds the password.
#[derive(Debug)]
pub enum ConnectError {
    /// The URL or the CA could not be turned into a client configuration.
    Setup(PostgresError),
    /// The server, the network or the handshake refused.
    Postgres(tokio_postgres::Error),
    /// No answer (connection, TLS handshake and authentication) within the timeout.
    TimedOut(Duration),
}

impl ConnectError {
    /// The SQLSTATE of a server-side refusal (`28P01` wrong password, `28000` no
    /// pg_hba.conf entry, `3D000` no such database...).
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            ConnectError::Postgres(e) => e.code(),
            _ => None,
        }
    }

    /// One line for "last seen" messages.
    pub fn summary(&self) -> String {
        match self {
            ConnectError::Setup(e) => e.to_string(),
            ConnectError::Postgres(e) => chain(e),
            ConnectError::TimedOut(d) => format!("no answer within {}s", d.as_secs()),
        }
    }

    /// The crate error: `what` as the message, this as its source.
    pub fn into_error(self, what: String) -> Error {
        match self {
            ConnectError::Setup(e) => PostgresError::Setup { what, source: Box::new(e) },
            ConnectError::Postgres(source) => PostgresError::Connect { what, source },
            ConnectError::TimedOut(after) => PostgresError::NoAnswer { what, after },
        }
        .into()
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Connects as `url` says. `application_name` overrides the URL's own parameter; `ca_pem`
/// is the root for `verify-ca`/`verify-full`. The connection task runs on the current
/// runtime until the returned client is dropped.
pub async fn connect(
    url: &DbUrl,
    application_name: Option<&str>,
    ca_pem: Option<&str>,
    timeout: Duration,
) -> std::result::Result<tokio_postgres::Client, ConnectError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.user(&url.user).host(&url.host).port(url.port).dbname(&url.database).connect_timeout(timeout).ssl_mode(match url.sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    if let Some(p) = &url.password {
        cfg.password(p.expose());
    }
    if let Some(app) = application_name.or_else(|| url.param("application_name")) {
        cfg.application_name(app);
    }
    let fut = async {
        if url.sslmode == SslMode::Disable {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(ConnectError::Postgres)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        } else {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(url.sslmode, ca_pem).map_err(ConnectError::Setup)?);
            let (client, conn) = cfg.connect(tls).await.map_err(ConnectError::Postgres)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
    };
    // connect_timeout covers the TCP connect only; this covers the handshake and the
    // authentication too.
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::TimedOut(timeout)),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `mode` (not used for `disable`).
pub fn client_config(mode: SslMode, ca_pem: Option<&str>) -> Result<ClientConfig, PostgresError> {
    let provider = provider();
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(PostgresError::TlsConfig)?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => Arc::new(NoVerification(provider)),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let ca = ca_pem.ok_or(PostgresError::NeedsCa { mode })?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider).build().map_err(PostgresError::Verifier)?;
            if mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// A root store holding every certificate in `pem`.
pub fn roots(pem: &str) -> Result<RootCertStore, PostgresError> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        store.add(cert.map_err(PostgresError::CaPem)?).map_err(PostgresError::CaCertificate)?;
    }
    if store.is_empty() {
        return Err(PostgresError::NoCertificate);
    }
    Ok(store)
}

/// `sslmode=require`: the handshake is checked (so the session is really encrypted with
/// the key of the certificate presented), the certificate is not.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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

/// `sslmode=verify-ca`: the chain must lead to the CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
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

/// Whether `e` is the server refusing for lack of a pg_hba.conf entry (e.g. no TLS).
pub fn is_hba_refusal(e: &ConnectError) -> bool {
    e.sqlstate() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
}

/// Whether `e` is a failed password authentication.
pub fn is_bad_password(e: &ConnectError) -> bool {
    e.sqlstate() == Some(&SqlState::INVALID_PASSWORD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_verify_modes_need_a_ca() {
        assert!(client_config(SslMode::Require, None).is_ok());
        let e = client_config(SslMode::VerifyFull, None).unwrap_err();
        assert!(e.to_string().contains("sslmode=verify-full needs the CA certificate"), "{e}");
        let ca = crate::pki::Ca::new("t").unwrap();
        assert!(client_config(SslMode::VerifyCa, Some(&ca.cert_pem())).is_ok());
        assert!(roots("nothing here").is_err());
    }
}
