//! PostgreSQL as Lily's storage: the URL (its `sslmode` read as libpq reads it), the
//! connection, and the stand-in's migration (the schema and a marker table, none of Lily's
//! real tables).
//!
//! `sslmode`: `disable` connects in plain text; `allow` and `prefer` (the default) use TLS
//! if the server offers it; `require` uses TLS or fails. The certificate is never verified
//! (libpq's `require` without a root certificate), so `verify-ca` and `verify-full` are
//! refused rather than silently weakened.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::Client;

use crate::{log, Error, VERSION};

/// The table, in the migrated schema, that records the stand-in's migrations.
pub const MARKER_TABLE: &str = "lily_standin_migrations";

/// Connection, TLS handshake and authentication together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(format!("unknown sslmode {other:?}")),
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// `url` with its password (in the user information, or as a `password=` parameter)
/// replaced by `***`. When unsure where the password ends it hides more, never less.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(start) = url.find("://").map(|i| i + 3) {
        // The last '@' (a password may hold a raw '@'); the userinfo's first ':' starts the password.
        if let Some(at) = url[start..].rfind('@').map(|i| start + i) {
            if let Some(colon) = url[start..at].find(':').map(|i| start + i) {
                out = format!("{}***{}", &url[..=colon], &url[at..]);
            }
        }
    }
    let (mut result, mut rest) = (String::new(), out.as_str());
    while let Some(i) = rest.find("password=") {
        let v = i + "password=".len();
        result.push_str(&rest[..v]);
        result.push_str("***");
        rest = &rest[v..];
        rest = &rest[rest.find(['&', ' ']).unwrap_or(rest.len())..];
    }
    result.push_str(rest);
    result
}

/// A database URL, parsed.
pub struct DbUrl {
    config: tokio_postgres::Config,
    pub sslmode: SslMode,
    /// The URL as it may be shown.
    pub redacted: String,
    /// The password as tokio-postgres reads it, to scrub from any message.
    password: Option<String>,
}

impl DbUrl {
    /// Parses a `postgres://` or `postgresql://` URL. `sslmode` is taken out and read here
    /// (tokio-postgres knows only disable/prefer/require); the rest is tokio-postgres's.
    pub fn parse(url: &str) -> Result<DbUrl, Error> {
        let redacted = redact(url);
        let bad = |msg: String| Error::BadUrl { url: redacted.clone(), msg };
        let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) else {
            return Err(bad("expected a postgres:// or postgresql:// URL".into()));
        };
        // As tokio-postgres reads it: user information up to the first '@', then the query after the first '?'.
        let (userinfo, host_on) = rest.split_once('@').map_or(("", rest), |(u, h)| (u, h));
        let password = userinfo.split_once(':').map(|(_, p)| p.to_string()).filter(|p| !p.is_empty());
        let (base, query) = match host_on.find('?') {
            Some(q) => (&url[..url.len() - host_on.len() + q], &host_on[q + 1..]),
            None => (url, ""),
        };
        let mut sslmode = SslMode::Prefer;
        let mut kept = Vec::new();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            match param.strip_prefix("sslmode=") {
                Some(mode) => sslmode = SslMode::parse(mode).map_err(bad)?,
                None => kept.push(param),
            }
        }
        if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(Error::UnsupportedSslMode(sslmode.to_string()));
        }
        let without = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        let scrub = |m: String| scrub(m, password.as_deref());
        let config = without.parse::<tokio_postgres::Config>().map_err(|e| bad(scrub(chain(&e))))?;
        Ok(DbUrl { config, sslmode, redacted, password })
    }

    fn error(&self, msg: String) -> Error {
        Error::Db { url: self.redacted.clone(), msg: scrub(msg, self.password.as_deref()) }
    }
}

fn scrub(msg: String, secret: Option<&str>) -> String {
    match secret {
        Some(s) => msg.replace(s, "***"),
        None => msg,
    }
}

/// An error and its sources on one line (tokio-postgres's Display omits the cause).
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

/// Connects as `db` says, with `application_name`. The connection runs on a task of the
/// current runtime until the client is dropped; `label` names it in the log if it breaks.
pub async fn connect(db: &DbUrl, application_name: &str, label: &str) -> Result<Client, Error> {
    let mut cfg = db.config.clone();
    cfg.application_name(application_name).connect_timeout(CONNECT_TIMEOUT);
    let attempt = async {
        if db.sslmode == SslMode::Disable {
            cfg.ssl_mode(PgSslMode::Disable);
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            watch(label, conn);
            Ok(client)
        } else {
            cfg.ssl_mode(if db.sslmode == SslMode::Require { PgSslMode::Require } else { PgSslMode::Prefer });
            let (client, conn) = cfg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config())).await?;
            watch(label, conn);
            Ok(client)
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(db.error(format!("connecting (sslmode={}): {}", db.sslmode, chain(&e as &tokio_postgres::Error)))),
        Err(_) => Err(db.error(format!("connecting (sslmode={}): no answer within {}s", db.sslmode, CONNECT_TIMEOUT.as_secs()))),
    }
}

fn watch(label: &str, conn: impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static) {
    let label = label.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::warn(&format!("storage {label}: connection lost: {}", chain(&e)));
        }
    });
}

/// What `lily migrate --schema S` leaves for the stand-in: schema S and, in it, a table
/// recording the stand-in's version.
pub async fn migrate(client: &Client, db: &DbUrl, schema: &str) -> Result<(), Error> {
    let s = format!("\"{}\"", schema.replace('"', "\"\""));
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.{MARKER_TABLE} (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO {s}.{MARKER_TABLE} (version) VALUES ('{VERSION}') ON CONFLICT (version) DO NOTHING;"
    );
    client.batch_execute(&sql).await.map_err(|e| db.error(format!("migrating schema {schema}: {}", chain(&e))))
}

fn tls_config() -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        .with_no_client_auth()
}

/// Accepts any certificate, but checks the handshake's signatures with it: the session is
/// encrypted with the key of the certificate presented, which nothing authenticates.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let cases = [
            ("postgres://lily:hunter2@db:5432/lily?sslmode=require", "postgres://lily:***@db:5432/lily?sslmode=require"),
            ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h:5432/db", "postgres://u@h:5432/db"),
            ("postgres://h:5432/db?sslmode=disable", "postgres://h:5432/db?sslmode=disable"),
            ("postgres://u@h/db?password=hunter2&sslmode=require", "postgres://u@h/db?password=***&sslmode=require"),
            ("host=h password=hunter2 user=u", "host=h password=*** user=u"),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
        }
        // An '@' in the query makes it hide more than the password, never less.
        let r = redact("postgres://u:hunter2@h:5432/db?options=a@b");
        assert!(!r.contains("hunter2") && r.starts_with("postgres://u:***@"), "{r}");
    }

    #[test]
    fn sslmodes() {
        for m in ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] {
            assert_eq!(SslMode::parse(m).unwrap().to_string(), m);
        }
        assert!(SslMode::parse("required").unwrap_err().contains("unknown sslmode"));
    }

    #[test]
    fn urls() {
        let u = DbUrl::parse("postgres://lily:hunter2@db.example:6432/lily?sslmode=require&connect_timeout=5").unwrap();
        assert_eq!(u.sslmode, SslMode::Require);
        assert_eq!(u.redacted, "postgres://lily:***@db.example:6432/lily?sslmode=require&connect_timeout=5");
        assert_eq!(u.config.get_user(), Some("lily"));
        assert_eq!(u.config.get_password(), Some(&b"hunter2"[..]));
        assert_eq!(u.config.get_ports(), [6432]);
        assert_eq!(u.config.get_dbname(), Some("lily"));
        assert_eq!(u.config.get_connect_timeout(), Some(&Duration::from_secs(5)));

        assert_eq!(DbUrl::parse("postgres://u@h/db").unwrap().sslmode, SslMode::Prefer, "libpq's default");
        assert_eq!(DbUrl::parse("postgresql://h/db?sslmode=disable").unwrap().sslmode, SslMode::Disable);
        assert_eq!(DbUrl::parse("postgres://u:p?q@h/db?sslmode=allow").unwrap().sslmode, SslMode::Allow);

        for mode in ["verify-ca", "verify-full"] {
            let e = DbUrl::parse(&format!("postgres://u:hunter2@h/db?sslmode={mode}")).err().unwrap();
            assert!(matches!(e, Error::UnsupportedSslMode(_)), "{e}");
            assert!(e.to_string().contains("not supported") && !e.to_string().contains("hunter2"), "{e}");
        }
        for bad in ["mysql://u:hunter2@h/db", "postgres://u:hunter2@h/db?sslmode=nope", "postgres://u:hunter2@h/db?bogus=1"] {
            let e = DbUrl::parse(bad).err().unwrap().to_string();
            assert!(e.starts_with("database URL ") && !e.contains("hunter2") && e.contains("***"), "{e}");
        }
    }
}
