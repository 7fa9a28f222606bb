//! What can go wrong with PostgreSQL: starting a server, reaching it, its URLs and TLS, and
//! the database contract the chart's objects must meet.
//!
//! No variant holds a password: URLs are never quoted (only what is wrong with them), and
//! targets are named by database, host, port and user.

use std::path::PathBuf;
use std::time::Duration;

use super::container::IMAGE_ENV;
use super::dsn::SslMode;
use super::local::{BIN_ENV, UNPRIVILEGED_USER};

/// A PostgreSQL failure.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// `--postgres` names no provider.
    #[error("unknown postgres provider `{name}`; choose local or container")]
    UnknownProvider { name: String },
    /// The configured binary directory lacks `initdb` or `postgres`.
    #[error("{} holds no initdb and postgres (named by {BIN_ENV})", .dir.display())]
    NoBinariesIn { dir: PathBuf },
    /// No installed server binaries were found under `root`.
    #[error(
        "no PostgreSQL server binaries under {}/<version>/bin; install them with `apt-get install postgresql` (or set {BIN_ENV}), or use --postgres container",
        .root.display()
    )]
    NotInstalled { root: PathBuf },
    /// The harness runs as root and there is no unprivileged user to run the server as.
    #[error(
        "postgresql refuses to run as root and there is no user `{UNPRIVILEGED_USER}` to run it as; run the harness as an ordinary user"
    )]
    NoUnprivilegedUser,
    /// The server could not bind its port (someone took it after it was found free).
    #[error("port {port} on 127.0.0.1 is already in use (postgresql); free it or pick another port")]
    PortBusy { port: u16 },
    /// The server did not start, for no reason it reported.
    #[error("postgresql did not start")]
    DidNotStart,
    /// The image override is not `name:tag`.
    #[error("{IMAGE_ENV}=`{value}` is not name:tag (e.g. postgres:15-alpine)")]
    BadImage { value: String },
    /// A database or role name that is not a plain lowercase identifier.
    #[error("{what} `{name}` is not a lowercase identifier ([a-z][a-z0-9_]*, at most 40 characters)")]
    BadIdentifier { what: String, name: String },

    /// The server, the network or the handshake refused a session.
    #[error("{what}")]
    Connect {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// No answer (connection, TLS handshake, authentication) within `after`.
    #[error("{what}: no answer within {}s", .after.as_secs())]
    NoAnswer { what: String, after: Duration },
    /// A session could not be set up: the URL or the CA does not make a client configuration.
    #[error("{what}")]
    Setup {
        what: String,
        #[source]
        source: Box<PostgresError>,
    },
    /// A statement failed.
    #[error("{what}")]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// `sslmode=verify-ca`/`verify-full` without the CA to verify against.
    #[error("sslmode={mode} needs the CA certificate that issued the server's certificate")]
    NeedsCa { mode: SslMode },
    /// The CA PEM holds no certificate.
    #[error("the CA certificate pem holds no certificate")]
    NoCertificate,
    /// The CA PEM does not parse.
    #[error("cannot read the CA certificate (pem)")]
    CaPem(#[source] rustls::pki_types::pem::Error),
    /// The CA certificate cannot be a root.
    #[error("cannot use the CA certificate")]
    CaCertificate(#[source] rustls::Error),
    /// rustls refuses the protocol versions.
    #[error("cannot configure tls")]
    TlsConfig(#[source] rustls::Error),
    /// rustls refuses the roots for a verifier.
    #[error("cannot build a certificate verifier")]
    Verifier(#[source] rustls::client::VerifierBuilderError),

    /// The URL is not a URL (the input is never quoted: it may hold a password).
    #[error("the postgresql url cannot be parsed")]
    UrlSyntax(#[source] url::ParseError),
    /// The URL is a URL, but not a PostgreSQL one; `why` never quotes it.
    #[error("the postgresql url {why}")]
    BadUrl { why: String },
    /// An `sslmode` libpq does not know.
    #[error("sslmode `{mode}` is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    BadSslMode { mode: String },

    /// The chart's objects, or the Secret's URL they lead to, break the database contract:
    /// `object` (a pod's container, a config map's table, a Secret's key, a storage entry's
    /// role) gets `problem` wrong and `fix` says what to do instead. The `contract-check`
    /// step reports it as a chart finding. Neither part ever holds a URL or a password.
    #[error("{object}: {problem}; fix: {fix}")]
    ContractViolation { object: String, problem: String, fix: String },
    /// The session the chart's objects lead to is not what the check expects (the pod is
    /// gone, the session is not encrypted or shows under another name): an expectation not
    /// met, whoever is to blame.
    #[error("{0}")]
    Contract(String),
    /// The check cannot tell what to check without being told (which storage entry).
    #[error("{0}")]
    Ambiguous(String),
}
