//! Per-run certificates (rcgen): one CA, then serving and client certificates signed by it.
//! Used by the local control plane and the local PostgreSQL's TLS.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::{Error, Result};

fn pki_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Tool { what: format!("cannot generate {what}"), source: Some(Box::new(e)) }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pair { .. }")
    }
}

/// A run's certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca { .. }")
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

impl Ca {
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(pki_err("a CA key"))?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(pki_err("the CA certificate"))?;
        Ok(Ca { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate. `sans` may hold DNS names and IP addresses.
    pub fn issue(&self, common_name: &str, organizations: &[&str], sans: &[&str], usage: Usage) -> Result<Pair> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, organizations);
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => s.to_string().try_into().map(SanType::DnsName).map_err(pki_err("a subject alternative name")),
            })
            .collect::<Result<_>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let key = KeyPair::generate().map_err(pki_err("a key"))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(pki_err("a certificate"))?;
        Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A bare key pair as (PKCS#8 private key PEM, public key PEM), e.g. the service-account
/// signing key.
pub fn key_pair_pem() -> Result<(String, String)> {
    let k = KeyPair::generate().map_err(pki_err("a key"))?;
    Ok((k.serialize_pem(), k.public_key_pem()))
}

fn dn(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_pairs_signed_by_the_ca() {
        let ca = Ca::new("test-ca").unwrap();
        let p = ca.issue("admin", &["system:masters"], &["127.0.0.1", "localhost"], Usage::Server).unwrap();
        assert!(p.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(p.key_pem.contains("PRIVATE KEY"));
        assert_ne!(p.cert_pem, ca.cert_pem());
        assert_eq!(format!("{p:?}"), "Pair { .. }", "keys never reach a Debug print");
    }
}
