//! PostgreSQL providers, the documented storage Secret, and the database contract check.
//!
//! Lily stores what it indexes in PostgreSQL. The operators' guide has operators put
//! `postgres://USER:PASS@HOST:PORT/DB?sslmode=require` in a Secret (key `url`) and point the
//! chart's `daemon.storage.postgresql[]` at it. This module gives a scenario all of that:
//!
//! - a [`PostgresProvider`] starts a [`Postgres`] server for the run, serving TLS only:
//!   [`local::Local`] (the embedded default: Debian's PostgreSQL binaries as a supervised
//!   child on loopback) or [`container::Container`] (testcontainers, when a Docker engine is
//!   reachable);
//! - [`Postgres::create_database`] gives each scenario its own database, role and random
//!   [`Password`] (which prints as `***` everywhere);
//! - [`secret`] builds the Secret exactly as `kubectl create secret generic` would and the
//!   matching chart values;
//! - [`contract`] follows the storage wiring of the chart's pod (the `config.toml` table of
//!   its `config-volume`, the `URLEnv` env every Lily container takes from the Secret, the
//!   Secret's URL and its `sslmode`) to the database, connects as the pod would, performs
//!   the schema creation of `lily migrate` itself (pods on simulated nodes run no containers,
//!   and the chart runs no migration) and returns a redacted summary; what the chart's objects
//!   get wrong is a [`PostgresError::ContractViolation`] naming the object and the fix.
//!
//! Passwords never reach a log, an error, a `Debug` print or a snapshot: roles get their
//! password as a SCRAM verifier computed here, so not even the server's log can hold it.
//!
//! Failures are [`PostgresError`]s.

pub mod container;
pub mod contract;
pub mod dsn;
pub mod error;
pub mod local;
pub mod secret;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::error::Result;
use crate::run::Run;

pub use dsn::{DbUrl, HostKind, SslMode};
pub use error::PostgresError;

/// Characters every generated password holds at least one of, so that percent-encoding is
/// exercised on every run (each is special in a URL's userinfo).
pub const PASSWORD_SPECIALS: [char; 4] = ['@', '/', '%', ':'];

/// How long a provider may take to bring its server up before `start` fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The application name the harness's own sessions (readiness probe, setup) use.
pub const HARNESS_APPLICATION_NAME: &str = "lily-e2e";

/// A password. Its `Debug`, `Display` and `Serialize` all print `***`; only
/// [`Password::expose`] gives the text, and only code that must send it calls that.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Password(String);

impl Password {
    pub fn new(text: impl Into<String>) -> Self {
        Password(text.into())
    }

    /// 24 random characters: alphanumerics plus each of [`PASSWORD_SPECIALS`] once, at
    /// random places.
    pub fn generate() -> Self {
        use rand::distr::{Alphanumeric, SampleString};
        use rand::seq::SliceRandom;
        let mut rng = rand::rng();
        let mut chars: Vec<char> = Alphanumeric.sample_string(&mut rng, 24 - PASSWORD_SPECIALS.len()).chars().collect();
        chars.extend(PASSWORD_SPECIALS);
        chars.shuffle(&mut rng);
        Password(chars.into_iter().collect())
    }

    /// The password's text. Never format it into a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The SCRAM-SHA-256 verifier PostgreSQL stores for this password. `CREATE ROLE ...
    /// PASSWORD '<verifier>'` sets the password without the server ever seeing it.
    pub fn scram_verifier(&self) -> String {
        postgres_protocol::password::scram_sha_256(self.0.as_bytes())
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl serde::Serialize for Password {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct PostgresSpec {
    /// Serve TLS (and refuse connections without it). On by default; a test turns it off to
    /// check that `sslmode=require` refuses a server without TLS.
    pub tls: bool,
}

impl Default for PostgresSpec {
    fn default() -> Self {
        PostgresSpec { tls: true }
    }
}

/// Something that can start PostgreSQL servers.
pub trait PostgresProvider: Send + Sync {
    fn name(&self) -> &'static str;
    fn start<'a>(&'a self, spec: &'a PostgresSpec, run: &'a Run) -> BoxFuture<'a, Result<Postgres>>;
}

/// The provider-specific part of a running server.
pub trait Running: Send + Sync {
    /// Stops the server (fast shutdown, then KILL for a process; removal for a container).
    fn teardown(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    /// The server's log files, for artifacts.
    fn logs(&self) -> Vec<PathBuf>;
    /// Brings the log files up to date (a container's log lives in the engine until copied
    /// out); by default there is nothing to do.
    fn refresh_logs(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Where a started server listens and how the harness's superuser reaches it.
#[derive(Clone)]
pub struct Endpoint {
    /// The host as the harness reaches it (an address or a name).
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// The PEM certificate of the CA that issued the server's certificate (with TLS).
    pub ca_pem: Option<String>,
    pub superuser: String,
    pub superuser_password: Password,
    /// The server's version as it reports it, e.g. `15.14`.
    pub version: String,
    /// Where pods reach the server, when that is not where the harness does (a container on
    /// the kind network: its address there and its own port).
    pub pod_address: Option<(String, u16)>,
}

/// A started server. Tear it down with [`Postgres::teardown`]; dropping it is a
/// best-effort fallback that still stops the server.
pub struct Postgres {
    pub provider: &'static str,
    endpoint: Endpoint,
    running: Option<Box<dyn Running>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("provider", &self.provider)
            .field("host", &self.endpoint.host)
            .field("port", &self.endpoint.port)
            .field("tls", &self.endpoint.tls)
            .field("version", &self.endpoint.version)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    pub fn new(provider: &'static str, endpoint: Endpoint, running: Box<dyn Running>) -> Self {
        Postgres { provider, endpoint, running: Some(running) }
    }

    /// The host as the harness reaches it. For what to put in a Secret, see
    /// [`Database::pod_url`].
    pub fn host(&self) -> &str {
        &self.endpoint.host
    }
    pub fn port(&self) -> u16 {
        self.endpoint.port
    }
    pub fn tls(&self) -> bool {
        self.endpoint.tls
    }
    /// The CA certificate (PEM) that `sslmode=verify-ca`/`verify-full` clients need.
    pub fn ca_pem(&self) -> Option<&str> {
        self.endpoint.ca_pem.as_deref()
    }
    pub fn version(&self) -> &str {
        &self.endpoint.version
    }
    /// Where pods reach the server, when that differs from [`Postgres::host`] and
    /// [`Postgres::port`] (see [`Database::pod_url`]).
    pub fn pod_address(&self) -> Option<(&str, u16)> {
        self.endpoint.pod_address.as_ref().map(|(h, p)| (h.as_str(), *p))
    }

    /// The server's log files, for artifacts.
    pub fn logs(&self) -> Vec<PathBuf> {
        self.running.as_ref().map(|r| r.logs()).unwrap_or_default()
    }

    /// The server's log files, brought up to date first (for artifacts).
    pub async fn current_logs(&self) -> Vec<PathBuf> {
        if let Some(r) = &self.running {
            r.refresh_logs().await;
        }
        self.logs()
    }

    /// The superuser's URL (`sslmode=require` with TLS, `disable` without).
    pub fn superuser_url(&self) -> DbUrl {
        let e = &self.endpoint;
        let mode = if e.tls { SslMode::Require } else { SslMode::Disable };
        DbUrl::new(&e.superuser, Some(e.superuser_password.clone()), &e.host, e.port, "postgres", mode)
    }

    /// A session as the superuser, for setup and inspection.
    pub async fn superuser_client(&self) -> Result<tokio_postgres::Client> {
        let url = self.superuser_url();
        tls::connect(&url, Some(HARNESS_APPLICATION_NAME), self.ca_pem(), Duration::from_secs(10))
            .await
            .map_err(|e| e.into_error(format!("cannot connect to postgresql at {}:{} as the superuser", url.host, url.port)))
    }

    /// A scenario's own database: a role `<name>_user` with a fresh random password that
    /// owns database `<name>`. `name` is a lowercase identifier (`[a-z][a-z0-9_]*`, at most
    /// 40 characters). Only that role (and the superuser) may connect to it: CONNECT is
    /// revoked from PUBLIC, so no other scenario's role reaches it.
    pub async fn create_database(&self, name: &str) -> Result<Database> {
        validate_identifier(name, "database name")?;
        let user = format!("{name}_user");
        let password = Password::generate();
        let client = self.superuser_client().await?;
        let verifier = password.scram_verifier();
        // The verifier is base64, digits and `$:=+/`: no quote can end the literal.
        debug_assert!(!verifier.contains('\''));
        let role_sql = format!("CREATE ROLE {} LOGIN PASSWORD '{verifier}'", quote_ident(&user));
        client
            .batch_execute(&role_sql)
            .await
            .map_err(|source| PostgresError::Sql { what: format!("cannot create role `{user}`"), source })?;
        let db_sql = format!("CREATE DATABASE {} OWNER {}", quote_ident(name), quote_ident(&user));
        client
            .batch_execute(&db_sql)
            .await
            .map_err(|source| PostgresError::Sql { what: format!("cannot create database `{name}`"), source })?;
        // Every role may connect to a new database by default (PUBLIC holds CONNECT).
        let (db, role) = (quote_ident(name), quote_ident(&user));
        let acl_sql = format!("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {role}");
        client
            .batch_execute(&acl_sql)
            .await
            .map_err(|source| PostgresError::Sql { what: format!("cannot restrict who connects to database `{name}`"), source })?;
        Ok(Database {
            name: name.to_string(),
            user,
            password,
            host: self.endpoint.host.clone(),
            port: self.endpoint.port,
            pod_address: self.endpoint.pod_address.clone(),
        })
    }

    /// Stops the server and waits for it.
    pub async fn teardown(mut self) -> Result<()> {
        match self.running.take() {
            Some(r) => r.teardown().await,
            None => Ok(()),
        }
    }
}

/// A scenario's database and the role that owns it.
#[derive(Clone)]
pub struct Database {
    pub name: String,
    pub user: String,
    pub password: Password,
    /// The host and port as the harness reaches them.
    pub host: String,
    pub port: u16,
    /// Where pods reach the server, when that differs (see [`Postgres::pod_address`]).
    pub pod_address: Option<(String, u16)>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

impl Database {
    /// The database's URL as the harness reaches it.
    pub fn url(&self, sslmode: SslMode) -> DbUrl {
        DbUrl::new(&self.user, Some(self.password.clone()), &self.host, self.port, &self.name, sslmode)
    }

    /// The database's URL as the chart's pods reach it, what the Secret holds: the server's
    /// pod address where it has one (the kind network), else the harness's (simulated pods
    /// run no containers; an existing cluster runs next to the harness).
    pub fn pod_url(&self, sslmode: SslMode) -> DbUrl {
        match &self.pod_address {
            Some((host, port)) => DbUrl::new(&self.user, Some(self.password.clone()), host, *port, &self.name, sslmode),
            None => self.url(sslmode),
        }
    }
}

/// The provider named on the command line (`--postgres local|container`).
pub fn provider(name: &str) -> Result<Box<dyn PostgresProvider>> {
    match name {
        "local" => Ok(Box::new(local::Local::new())),
        "container" => Ok(Box::new(container::Container::configured()?)),
        other => Err(PostgresError::UnknownProvider { name: other.to_string() }.into()),
    }
}

/// Checks a name used as an SQL identifier: `[a-z][a-z0-9_]*`, at most 40 characters.
pub fn validate_identifier(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(PostgresError::BadIdentifier { what: what.to_string(), name: name.to_string() }.into())
    }
}

/// `name` as a double-quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_password_prints_as_stars_everywhere() {
        let p = Password::generate();
        assert_eq!(format!("{p}"), "***");
        assert_eq!(format!("{p:?}"), "***");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"***\"");
        let db =
            Database { name: "d".into(), user: "d_user".into(), password: p.clone(), host: "127.0.0.1".into(), port: 1, pod_address: None };
        assert!(!format!("{db:?}").contains(p.expose()));
    }

    #[test]
    fn postgres_generated_passwords_hold_every_special_and_differ() {
        let a = Password::generate();
        let b = Password::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().chars().count(), 24);
        for c in PASSWORD_SPECIALS {
            assert!(a.expose().contains(c), "missing {c:?}");
        }
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric() || PASSWORD_SPECIALS.contains(&c)));
    }

    #[test]
    fn postgres_scram_verifier_hides_the_password_and_cannot_end_a_literal() {
        let p = Password::generate();
        let v = p.scram_verifier();
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains(p.expose()));
        assert!(!v.contains('\''));
    }

    #[test]
    fn postgres_identifiers_are_checked_and_quoted() {
        assert!(validate_identifier("scenario_1", "x").is_ok());
        for bad in ["", "1abc", "Abc", "a-b", "a\"b", &"a".repeat(41)] {
            assert!(validate_identifier(bad, "x").is_err(), "{bad}");
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
