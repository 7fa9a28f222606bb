//! The database contract check: what a Lily container would do with the chart's storage
//! wiring, performed by the harness.
//!
//! Pods on simulated nodes run no containers, so the harness does it for them. The chart
//! wires storage into every Lily container (see [`crate::contract`]): the env
//! `LILY_STORAGE_POSTGRESQL_<NAME>_URL` from a `secretKeyRef` to the operator's Secret, and
//! the config map mounted as volume `config-volume`, whose `config.toml` has one
//! `[Storage.Postgresql.<name>]` table per storage entry (`SchemaName`, `URLEnv`,
//! `ApplicationName`, `PoolSize`, `AllowUpsert`). The chart itself runs no `lily migrate`.
//! From the pod the check reads:
//!
//! - the config map(s) its `config-volume` (or any configMap volume holding `config.toml`)
//!   names, and there the table of the storage entry (named by the step, or the only one);
//!   `SchemaName` and `ApplicationName` must be set;
//! - the env the table's `URLEnv` names: every Lily container (`init-datastore`,
//!   `init-sync`, `daemon`, `debug`) must have it from a `secretKeyRef`, all from the same
//!   Secret and key;
//! - that Secret's key: a PostgreSQL URL whose `sslmode` is set and is not `disable`.
//!
//! Then it connects as the pod would (TLS as `sslmode` says, the certificate verified for
//! `verify-ca` and `verify-full`) with the table's `ApplicationName`, creates the schema as
//! `lily migrate --schema <SchemaName>` would (`CREATE SCHEMA IF NOT EXISTS`), and confirms
//! that its session shows in `pg_stat_activity` under that name, encrypted where `sslmode`
//! requires it, and that the schema exists.
//!
//! Whatever the chart's objects get wrong is a [`PostgresError::ContractViolation`] naming
//! the object (a pod's container, a config map's table, a Secret's key, a storage entry's
//! role), the problem and the fix; the `contract-check` step reports it as a chart finding.
//! [`storage_wiring`] and [`secret_url`] are the pure parts (objects in, what to check out),
//! [`check_url`] is the database part and needs no cluster, [`check_pod`] reads the objects
//! through the API and runs them all. The [`ContractSummary`] is redacted for snapshots: no
//! password, no host or port (the port is random), only the [`HostKind`].

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, SecretKeySelector};
use kube::api::Api;
use kube::Client;
use serde::Serialize;

use super::dsn::{self, DbUrl, HostKind, SslMode};
use super::{quote_ident, tls, PostgresError};
use crate::contract::{self as chart, config};
use crate::error::{Error, Result};

/// How long a contract connection may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the summary says of the schema: the harness migrated, not the chart.
pub fn migration_note(schema: &str) -> String {
    format!("performed by the harness (lily migrate --schema {schema}: CREATE SCHEMA IF NOT EXISTS)")
}

/// What the summary says of the schema when the chart's own pod made it (real kubelets):
/// the schema was there before the harness looked, and the pod's session shows.
pub fn pod_migration_note(schema: &str) -> String {
    format!(
        "performed by the chart's pod (schema {schema} existed before the check; the pod's own session shows in pg_stat_activity under the ApplicationName, over TLS)"
    )
}

/// Where a URL came from: a Secret and a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl SecretRef {
    /// `Secret ns/name`, the object of findings about the Secret itself.
    pub fn object(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for SecretRef {
    /// `Secret ns/name key `key``, the object of findings about its value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret {}/{} key `{}`", self.namespace, self.name, self.key)
    }
}

fn violation(object: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> PostgresError {
    PostgresError::ContractViolation { object: object.into(), problem: problem.into(), fix: fix.into() }
}

/// What the database step must achieve.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The storage entry (its table's name), to name it in findings.
    pub storage: String,
    /// The schema `lily migrate --schema` names (`SchemaName`).
    pub schema: String,
    /// `ApplicationName`: the session must show under it.
    pub application_name: String,
    /// The CA for `sslmode=verify-ca`/`verify-full`.
    pub ca_pem: Option<String>,
    pub timeout: Duration,
    /// The chart's pods really run (kind): their own session must already show, over TLS,
    /// under `application_name`, and the schema must already exist (the pod migrated).
    pub pod_session: bool,
}

/// The redacted outcome, for scenario snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContractSummary {
    /// The storage entry.
    pub storage: String,
    /// The config map whose `config.toml` holds the entry's table (from a pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// The env (`URLEnv`) the URL came through (from a pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The Lily containers that have it (from a pod).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    pub secret_name: String,
    pub secret_key: String,
    pub user: String,
    pub database: String,
    pub host: HostKind,
    pub schema: String,
    pub sslmode: SslMode,
    pub tls_in_use: bool,
    /// As the session shows in `pg_stat_activity`.
    pub application_name: String,
    /// Who created the schema, and how ([`migration_note`]).
    pub migration: String,
}

fn fail(what: String) -> Error {
    PostgresError::Contract(what).into()
}

fn sql(what: String) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| PostgresError::Sql { what, source }.into()
}

const URL_FIX: &str =
    "store postgres://USER:PASS@HOST:PORT/DB?sslmode=require in the key (the password percent-encoded), as the guide does";
const SSLMODE_FIX: &str = "end the url with ?sslmode=require (or verify-full, with the server's CA), as the guide's url does";

/// The core of the check: `url_text` as read from `source`, connected to and migrated as
/// `expect` says. What the URL gets wrong (not a URL, no `sslmode`, `sslmode=disable`) and a
/// schema the role cannot create are [`PostgresError::ContractViolation`]s; a session that
/// cannot be opened is a connection error naming `source`. Nothing holds the password.
pub async fn check_url(source: &SecretRef, url_text: &str, expect: &Expect) -> Result<ContractSummary> {
    let url = DbUrl::parse(url_text)
        .map_err(|e| violation(source.to_string(), format!("is not a usable postgresql url ({})", crate::error::chain(&e)), URL_FIX))?;
    if !dsn::names_sslmode(url_text) {
        return Err(violation(
            source.to_string(),
            "the url sets no sslmode, so the client's default applies (libpq's `prefer` falls back to an unencrypted session)",
            SSLMODE_FIX,
        )
        .into());
    }
    if url.sslmode == SslMode::Disable {
        return Err(violation(source.to_string(), "the url has sslmode=disable: Lily's session would not be encrypted", SSLMODE_FIX).into());
    }
    let target = format!("database `{}` on {}:{} as `{}` (sslmode={})", url.database, url.host, url.port, url.user, url.sslmode);
    let client = tls::connect(&url, Some(&expect.application_name), expect.ca_pem.as_deref(), expect.timeout).await.map_err(|e| {
        let hint = if tls::is_bad_password(&e) {
            ": the password was refused"
        } else if tls::is_hba_refusal(&e) {
            ": the server's pg_hba.conf refused the connection"
        } else {
            ""
        };
        e.into_error(format!("{source}: cannot connect to {target}{hint}"))
    })?;

    // Where pods really run (kind), the chart's pod migrated and keeps its session open:
    // that is checked before the harness creates anything.
    if expect.pod_session {
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), \
                        EXISTS (SELECT 1 FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
                                WHERE a.pid <> pg_backend_pid() AND a.datname = current_database() \
                                  AND a.application_name = $2 AND s.ssl)",
                &[&expect.schema, &expect.application_name],
            )
            .await
            .map_err(sql(format!("{source}: cannot read pg_stat_activity in {target}")))?;
        let (schema, session): (bool, bool) = (row.get(0), row.get(1));
        if !session {
            return Err(fail(format!(
                "{source}: no session of the chart's pod shows in pg_stat_activity of {target} under application_name `{}` over TLS",
                expect.application_name
            )));
        }
        if !schema {
            return Err(fail(format!("{source}: the chart's pod is connected, but schema `{}` does not exist in {target}", expect.schema)));
        }
    }
    let create = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&expect.schema));
    client.batch_execute(&create).await.map_err(|e| -> Error {
        match e.as_db_error() {
            Some(db) => violation(
                format!("storage entry `{}` (role `{}` of {source})", expect.storage, url.user),
                format!(
                    "the role cannot create schema `{}` in database `{}`: {} (SQLSTATE {})",
                    expect.schema,
                    url.database,
                    db.message(),
                    db.code().code()
                ),
                format!(
                    "grant the role CREATE on database `{}`, or point the storage entry at a role that may create schema `{}` (lily migrate creates it)",
                    url.database, expect.schema
                ),
            )
            .into(),
            None => PostgresError::Sql { what: format!("{source}: cannot create schema `{}` in {target}", expect.schema), source: e }.into(),
        }
    })?;

    let row = client
        .query_opt(
            "SELECT a.application_name, COALESCE(s.ssl, false), \
                    EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) \
             FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s ON s.pid = a.pid \
             WHERE a.pid = pg_backend_pid()",
            &[&expect.schema],
        )
        .await
        .map_err(sql(format!("{source}: cannot read pg_stat_activity in {target}")))?
        .ok_or_else(|| fail(format!("{source}: the session is missing from pg_stat_activity in {target}")))?;
    let seen: String = row.get(0);
    let tls_in_use: bool = row.get(1);
    let schema_exists: bool = row.get(2);

    if url.sslmode.requires_tls() && !tls_in_use {
        return Err(fail(format!("{source}: the session to {target} is not encrypted")));
    }
    if seen != expect.application_name {
        return Err(fail(format!(
            "{source}: the session shows in pg_stat_activity as application_name `{seen}`, expected `{}`",
            expect.application_name
        )));
    }
    if !schema_exists {
        return Err(fail(format!("{source}: schema `{}` does not exist in {target} after creating it", expect.schema)));
    }
    Ok(ContractSummary {
        storage: expect.storage.clone(),
        config_map: None,
        env: None,
        containers: Vec::new(),
        secret_name: source.name.clone(),
        secret_key: source.key.clone(),
        user: url.user.clone(),
        database: url.database.clone(),
        host: url.host_kind(),
        schema: expect.schema.clone(),
        sslmode: url.sslmode,
        tls_in_use,
        application_name: seen,
        migration: if expect.pod_session { pod_migration_note(&expect.schema) } else { migration_note(&expect.schema) },
    })
}

/// Options of [`check_pod`].
#[derive(Debug, Clone)]
pub struct PodCheck {
    /// The storage entry (`storage.postgresql[].name`, the table's name); `None` when the
    /// pod's `config.toml` has exactly one.
    pub storage: Option<String>,
    /// The entry's `applicationName` as the values give it; when set, the table's
    /// `ApplicationName` must be it.
    pub application_name: Option<String>,
    pub ca_pem: Option<String>,
    pub timeout: Duration,
    /// The pod really runs (kind): its own session and migration are checked too.
    pub pod_session: bool,
}

impl Default for PodCheck {
    fn default() -> Self {
        PodCheck { storage: None, application_name: None, ca_pem: None, timeout: DEFAULT_TIMEOUT, pod_session: false }
    }
}

/// What the pod's objects say about one storage entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wiring {
    /// `pod ns/name`.
    pub pod: String,
    /// The storage entry: its table's name.
    pub storage: String,
    /// The config map whose `config.toml` holds the table.
    pub config_map: String,
    /// `URLEnv`.
    pub url_env: String,
    /// `SchemaName`.
    pub schema: String,
    /// `ApplicationName`.
    pub application_name: String,
    /// Where every Lily container takes `url_env` from.
    pub secret: SecretRef,
    /// The Lily containers, in the pod's order (init containers first).
    pub containers: Vec<String>,
}

impl Wiring {
    /// The entry's table, as the object of findings about it.
    pub fn table(&self) -> String {
        table_object(&self.secret.namespace, &self.config_map, &self.storage)
    }
}

/// `ConfigMap ns/name config.toml [Storage.Postgresql.<storage>]`.
fn table_object(namespace: &str, config_map: &str, storage: &str) -> String {
    format!("ConfigMap {namespace}/{config_map} {} {}", chart::CONFIG_KEY, config::storage_table(storage))
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// `container a` or `containers a, b`.
fn containers_phrase(names: &[&str]) -> String {
    match names {
        [one] => format!("container {one}"),
        many => format!("containers {}", many.join(", ")),
    }
}

/// The config maps `pod` mounts that may hold `config.toml`, without repeats: the
/// `config-volume`'s first, then every other configMap volume that mounts all its keys or
/// `config.toml`.
pub fn config_map_names(pod: &Pod) -> Vec<String> {
    let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    let mut found: Vec<(bool, String)> = volumes
        .filter_map(|v| {
            let cm = v.config_map.as_ref()?;
            let main = v.name == chart::CONFIG_VOLUME;
            let holds = cm.items.as_ref().is_none_or(|items| items.iter().any(|i| i.key == chart::CONFIG_KEY));
            (main || holds).then(|| (!main, cm.name.clone()))
        })
        .collect();
    found.sort_by_key(|(other, _)| *other);
    let mut names: Vec<String> = Vec::new();
    for (_, n) in found {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// A TOML error in one line, with its line number (the config holds no secret, but the
/// message stays short).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => format!("{message} (line {})", text[..span.start.min(text.len())].matches('\n').count() + 1),
        None => message,
    }
}

/// One `[Storage.Postgresql.<name>]` table and where it was found.
struct Entry {
    config_map: String,
    name: String,
    table: toml::Table,
}

/// The storage tables of the config maps `pod` mounts (`maps`: those that exist).
fn storage_entries(namespace: &str, pod_obj: &str, pod: &Pod, maps: &[ConfigMap]) -> std::result::Result<Vec<Entry>, PostgresError> {
    let names = config_map_names(pod);
    if names.is_empty() {
        return Err(violation(
            pod_obj,
            format!("mounts no configMap volume holding {} (expected volume `{}`)", chart::CONFIG_KEY, chart::CONFIG_VOLUME),
            format!(
                "mount the instance's config map (`<instance>-<type>-config`, key `{}`) as volume `{}` in every Lily container",
                chart::CONFIG_KEY,
                chart::CONFIG_VOLUME
            ),
        ));
    }
    let mut entries = Vec::new();
    let mut configs = 0;
    let mut first_problem = None;
    for name in &names {
        let object = format!("ConfigMap {namespace}/{name}");
        let Some(cm) = maps.iter().find(|m| m.metadata.name.as_deref() == Some(name.as_str())) else {
            first_problem.get_or_insert_with(|| {
                violation(
                    &object,
                    format!("does not exist ({pod_obj} mounts it as its config)"),
                    format!("render the config map the pod's `{}` volume names in the same release", chart::CONFIG_VOLUME),
                )
            });
            continue;
        };
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(chart::CONFIG_KEY)) else {
            first_problem.get_or_insert_with(|| {
                violation(
                    &object,
                    format!("has no key `{}`", chart::CONFIG_KEY),
                    format!("render Lily's configuration under the key `{}`", chart::CONFIG_KEY),
                )
            });
            continue;
        };
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            violation(
                format!("{object} {}", chart::CONFIG_KEY),
                format!("is not valid TOML: {}", toml_error(text, &e)),
                "render valid TOML (`helm template` shows the config map)",
            )
        })?;
        configs += 1;
        let tables = doc.get(config::STORAGE_TABLE[0]).and_then(|v| v.get(config::STORAGE_TABLE[1])).and_then(|v| v.as_table());
        for (entry, t) in tables.into_iter().flatten() {
            if let Some(t) = t.as_table() {
                entries.push(Entry { config_map: name.clone(), name: entry.clone(), table: t.clone() });
            }
        }
    }
    match first_problem {
        Some(p) if configs == 0 => Err(p),
        _ => Ok(entries),
    }
}

/// Reads what `pod` (with the config maps it mounts that exist, `maps`) wires up for
/// storage entry `storage` (or its only one), checking it as the module docs say. Pure: the
/// objects in, what to connect with out.
pub fn storage_wiring(pod: &Pod, maps: &[ConfigMap], storage: Option<&str>) -> std::result::Result<Wiring, PostgresError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let pod_obj = format!("pod {namespace}/{}", pod.metadata.name.as_deref().unwrap_or("?"));
    let spec = pod.spec.as_ref().ok_or_else(|| PostgresError::Contract(format!("{pod_obj} has no spec")))?;
    let all: Vec<&Container> = spec.init_containers.iter().flatten().chain(spec.containers.iter()).collect();
    let lily: Vec<&Container> = all.iter().copied().filter(|c| chart::is_lily_container(&c.name)).collect();
    let lily_names: Vec<&str> = lily.iter().map(|c| c.name.as_str()).collect();
    let expected_names = {
        let mut n: Vec<&str> = chart::INIT_CONTAINERS.to_vec();
        n.extend([chart::MAIN_CONTAINER, chart::DEBUG_CONTAINER]);
        n.join(", ")
    };
    if !lily_names.contains(&chart::MAIN_CONTAINER) {
        let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
        return Err(violation(
            &pod_obj,
            format!("has no `{}` container (it has: {})", chart::MAIN_CONTAINER, list(&names)),
            format!("run Lily's daemon in a container named `{}`", chart::MAIN_CONTAINER),
        ));
    }

    // The entry's table.
    let entries = storage_entries(&namespace, &pod_obj, pod, maps)?;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let config_obj = || {
        let first = entries.first().map(|e| e.config_map.clone()).or_else(|| config_map_names(pod).into_iter().next()).unwrap_or_default();
        format!("ConfigMap {namespace}/{first} {}", chart::CONFIG_KEY)
    };
    let table_fix = "render one [Storage.Postgresql.<name>] table for each storage.postgresql[] entry";
    let entry = match storage {
        Some(s) => entries.iter().find(|e| e.name == s).ok_or_else(|| {
            violation(config_obj(), format!("has no {} table (it has: {})", config::storage_table(s), list(&names)), table_fix)
        })?,
        None => match entries.as_slice() {
            [one] => one,
            [] => return Err(violation(config_obj(), "has no [Storage.Postgresql.<name>] table", table_fix)),
            _ => {
                return Err(PostgresError::Ambiguous(format!(
                    "{} has several storage entries ({}); name the one to check (`storage`)",
                    config_obj(),
                    names.join(", ")
                )))
            }
        },
    };
    let table_obj = table_object(&namespace, &entry.config_map, &entry.name);

    // Its keys.
    let mut problems = Vec::new();
    let mut text = |key: &str| -> String {
        match entry.table.get(key) {
            Some(toml::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(toml::Value::String(_)) => {
                problems.push(format!("{key} is empty"));
                String::new()
            }
            Some(v) => {
                problems.push(format!("{key} is not a string (it is {})", v.type_str()));
                String::new()
            }
            None => {
                problems.push(format!("{key} is missing"));
                String::new()
            }
        }
    };
    let url_env = text(config::URL_ENV);
    let schema = text(config::SCHEMA_NAME);
    let application_name = text(config::APPLICATION_NAME);
    if !problems.is_empty() {
        return Err(violation(
            &table_obj,
            problems.join(", "),
            format!(
                "render {} = \"{}\", {} = the entry's schema (default \"{}\") and {} = its applicationName (default the instance name)",
                config::URL_ENV,
                chart::storage_url_env(&entry.name),
                config::SCHEMA_NAME,
                chart::values::DEFAULT_SCHEMA,
                config::APPLICATION_NAME
            ),
        ));
    }

    // The env it names, in every Lily container.
    let mut from_secret: Vec<(&str, &SecretKeySelector)> = Vec::new();
    let mut not_secret = Vec::new();
    let mut lacking = Vec::new();
    for c in &lily {
        match c.env.iter().flatten().find(|e| e.name == url_env) {
            None => lacking.push(c.name.as_str()),
            Some(e) => match e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()) {
                Some(r) => from_secret.push((c.name.as_str(), r)),
                None => not_secret.push(c.name.as_str()),
            },
        }
    }
    if from_secret.is_empty() && not_secret.is_empty() {
        let mut others: Vec<&str> =
            lily.iter().flat_map(|c| c.env.iter().flatten()).map(|e| e.name.as_str()).filter(|n| chart::is_storage_url_env(n)).collect();
        others.sort_unstable();
        others.dedup();
        return Err(violation(
            &table_obj,
            format!(
                "{} `{url_env}` names an env no Lily container of {pod_obj} has (containers: {}; their storage envs: {})",
                config::URL_ENV,
                list(&lily_names),
                list(&others)
            ),
            format!(
                "set {} to the env the containers take from the entry's Secret ({}), or give them that env",
                config::URL_ENV,
                chart::storage_url_env(&entry.name)
            ),
        ));
    }
    if !not_secret.is_empty() {
        return Err(violation(
            format!("{pod_obj} {} env {url_env}", containers_phrase(&not_secret)),
            "does not come from a Secret (valueFrom.secretKeyRef): the url, password included, would sit in the pod spec",
            format!(
                "take it from the storage entry's Secret: valueFrom.secretKeyRef {{name: <secretName>, key: <secretKey, default {}>}}",
                chart::values::DEFAULT_SECRET_KEY
            ),
        ));
    }
    if !lacking.is_empty() {
        return Err(violation(
            format!("{pod_obj} {}", containers_phrase(&lacking)),
            format!(
                "lacks env {url_env}, the {} of {} in ConfigMap {namespace}/{}",
                config::URL_ENV,
                config::storage_table(&entry.name),
                entry.config_map
            ),
            format!("give every Lily container ({expected_names}) the env from the entry's Secret (valueFrom.secretKeyRef)"),
        ));
    }
    let (first, r) = from_secret[0];
    if from_secret.iter().any(|(_, o)| o.name != r.name || o.key != r.key) {
        let each: Vec<String> =
            from_secret.iter().map(|(c, o)| format!("{c} from Secret {namespace}/{} key `{}`", o.name, o.key)).collect();
        return Err(violation(
            format!("{pod_obj} env {url_env}"),
            format!("the containers take it from different Secrets: {}", each.join(", ")),
            "take it from the storage entry's secretName and secretKey in every container",
        ));
    }
    if r.name.is_empty() || r.key.is_empty() {
        let what = if r.name.is_empty() { "name" } else { "key" };
        return Err(violation(
            format!("{pod_obj} container {first} env {url_env}"),
            format!("its secretKeyRef has no {what}"),
            format!(
                "set secretKeyRef.name to the entry's secretName and .key to its secretKey (default {})",
                chart::values::DEFAULT_SECRET_KEY
            ),
        ));
    }
    Ok(Wiring {
        pod: pod_obj,
        storage: entry.name.clone(),
        config_map: entry.config_map.clone(),
        url_env,
        schema,
        application_name,
        secret: SecretRef { namespace, name: r.name.clone(), key: r.key.clone() },
        containers: lily_names.iter().map(|n| n.to_string()).collect(),
    })
}

/// The URL `wiring` points at, read from `secret` (`None`: it does not exist). The text
/// holds the password: pass it to [`check_url`], never print it.
pub fn secret_url(wiring: &Wiring, secret: Option<&Secret>) -> std::result::Result<String, PostgresError> {
    let s = &wiring.secret;
    let secret = secret.ok_or_else(|| {
        violation(
            s.object(),
            format!("does not exist (env {} of {} takes the storage url from it)", wiring.url_env, wiring.pod),
            format!(
                "point the env's secretKeyRef at the storage entry's secretName, the Secret the operator created (kubectl create secret generic NAME --from-literal={}=postgres://...)",
                chart::values::DEFAULT_SECRET_KEY
            ),
        )
    })?;
    let empty = Default::default();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let value = data.get(&s.key).ok_or_else(|| {
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        violation(
            s.to_string(),
            format!("is missing (the Secret has: {})", list(&keys)),
            format!("take the key the storage entry's secretKey names (default `{}`)", chart::values::DEFAULT_SECRET_KEY),
        )
    })?;
    std::str::from_utf8(&value.0).map(str::to_string).map_err(|_| violation(s.to_string(), "is not utf-8 text", URL_FIX))
}

/// The whole check for `pod` in `namespace`: the config maps it mounts, [`storage_wiring`],
/// the table's `ApplicationName` against `opts.application_name`, the Secret
/// ([`secret_url`]), then [`check_url`].
pub async fn check_pod(client: &Client, namespace: &str, pod: &str, opts: &PodCheck) -> Result<ContractSummary> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let p = pods
        .get_opt(pod)
        .await
        .map_err(Error::kube(format!("read pod {namespace}/{pod}")))?
        .ok_or_else(|| fail(format!("pod {namespace}/{pod} does not exist")))?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut maps = Vec::new();
    for name in config_map_names(&p) {
        if let Some(cm) = config_maps.get_opt(&name).await.map_err(Error::kube(format!("read configmap {namespace}/{name}")))? {
            maps.push(cm);
        }
    }
    let wiring = storage_wiring(&p, &maps, opts.storage.as_deref())?;
    if let Some(want) = opts.application_name.as_deref().filter(|w| *w != wiring.application_name) {
        return Err(violation(
            wiring.table(),
            format!("{} is `{}`, the storage entry's applicationName is `{want}`", config::APPLICATION_NAME, wiring.application_name),
            format!("render {} from the entry's applicationName", config::APPLICATION_NAME),
        )
        .into());
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret =
        secrets.get_opt(&wiring.secret.name).await.map_err(Error::kube(format!("read secret {namespace}/{}", wiring.secret.name)))?;
    let text = secret_url(&wiring, secret.as_ref())?;
    let expect = Expect {
        storage: wiring.storage.clone(),
        schema: wiring.schema.clone(),
        application_name: wiring.application_name.clone(),
        ca_pem: opts.ca_pem.clone(),
        timeout: opts.timeout,
        pod_session: opts.pod_session,
    };
    let mut summary = check_url(&wiring.secret, &text, &expect).await?;
    summary.config_map = Some(wiring.config_map);
    summary.env = Some(wiring.url_env);
    summary.containers = wiring.containers;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    const ENV: &str = "LILY_STORAGE_POSTGRESQL_DB_URL";
    const CM: &str = "lily-rel-dev-mainnet-daemon-config";

    fn container(name: &str, env: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "name": name, "image": "filecoin/lily",
            "env": [{"name": "LILY_CONFIG", "value": "/var/lib/lily/config.toml"}, env],
            "volumeMounts": [{"name": "config-volume", "mountPath": "/var/lib/lily/config.toml", "subPath": "config.toml"}]
        })
    }

    fn from_secret(env: &str, secret: &str, key: &str) -> serde_json::Value {
        serde_json::json!({"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    }

    /// A pod shaped like the real chart's daemon pod: `init-datastore`, `init-sync`, `daemon`,
    /// each with the storage env from the Secret, and `config-volume`.
    pub(crate) fn chart_pod() -> Pod {
        let env = from_secret(ENV, "lily-db", "url");
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "lily-rel-dev-mainnet-daemon-0", "namespace": "lily"},
            "spec": {
                "initContainers": [container("init-datastore", env.clone()), container("init-sync", env.clone())],
                "containers": [container("daemon", env)],
                "volumes": [
                    {"name": "config-volume", "configMap": {"name": CM, "items": [{"key": "config.toml", "path": "config.toml"}]}},
                    {"name": "repo-volume", "emptyDir": {}}
                ]
            }
        }))
        .unwrap()
    }

    fn table(name: &str, url_env: &str, schema: &str, app: &str) -> String {
        format!(
            "[Storage.Postgresql.{name}]\nSchemaName = \"{schema}\"\nURLEnv = \"{url_env}\"\nApplicationName = \"{app}\"\nPoolSize = 20\nAllowUpsert = false\n"
        )
    }

    fn config(tables: &str) -> String {
        format!("[API]\n  ListenAddress = \"/ip4/0.0.0.0/tcp/1234/http\"\n[Storage]\n  [Storage.Postgresql]\n{tables}")
    }

    fn config_map(name: &str, toml: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "lily"}, "data": {"config.toml": toml}})).unwrap()
    }

    fn maps() -> Vec<ConfigMap> {
        vec![config_map(CM, &config(&table("db", ENV, "lily", "lily-app")))]
    }

    fn containers(pod: &mut Pod) -> Vec<&mut Container> {
        let spec = pod.spec.as_mut().unwrap();
        spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut()).collect()
    }

    /// The violation's (object, problem, fix).
    fn finding(r: std::result::Result<Wiring, PostgresError>) -> (String, String, String) {
        match r {
            Err(PostgresError::ContractViolation { object, problem, fix }) => (object, problem, fix),
            other => panic!("expected a contract violation, got {other:?}"),
        }
    }

    #[test]
    fn postgres_wiring_is_read_from_a_pod_shaped_like_the_real_chart() {
        let w = storage_wiring(&chart_pod(), &maps(), None).unwrap();
        assert_eq!(
            w,
            Wiring {
                pod: "pod lily/lily-rel-dev-mainnet-daemon-0".into(),
                storage: "db".into(),
                config_map: CM.into(),
                url_env: ENV.into(),
                schema: "lily".into(),
                application_name: "lily-app".into(),
                secret: SecretRef { namespace: "lily".into(), name: "lily-db".into(), key: "url".into() },
                containers: vec!["init-datastore".into(), "init-sync".into(), "daemon".into()],
            }
        );
        assert_eq!(w.table(), format!("ConfigMap lily/{CM} config.toml [Storage.Postgresql.db]"));
        assert_eq!(storage_wiring(&chart_pod(), &maps(), Some("db")).unwrap(), w);
    }

    #[test]
    fn postgres_wiring_picks_the_named_entry_and_counts_debug_as_lily() {
        let mut pod = chart_pod();
        let two = from_secret("LILY_STORAGE_POSTGRESQL_ARCHIVE_URL", "archive-db", "dsn");
        for c in containers(&mut pod) {
            c.env.as_mut().unwrap().push(serde_json::from_value(two.clone()).unwrap());
        }
        let debug: Container = serde_json::from_value(container("debug", from_secret(ENV, "lily-db", "url"))).unwrap();
        pod.spec.as_mut().unwrap().containers.insert(0, debug);
        // A container that is not Lily's is not asked for the env.
        pod.spec.as_mut().unwrap().containers.push(serde_json::from_value(serde_json::json!({"name": "exporter"})).unwrap());
        let maps = vec![config_map(
            CM,
            &config(&format!(
                "{}{}",
                table("db", ENV, "lily", "lily"),
                table("archive", "LILY_STORAGE_POSTGRESQL_ARCHIVE_URL", "archive", "lily-archive")
            )),
        )];
        // debug is a Lily container: it must have the env too.
        let (o, _, _) = finding(storage_wiring(&pod, &maps, Some("archive")));
        assert_eq!(o, "pod lily/lily-rel-dev-mainnet-daemon-0 container debug");
        pod.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap().push(serde_json::from_value(two).unwrap());
        let w = storage_wiring(&pod, &maps, Some("archive")).unwrap();
        assert_eq!(w.secret, SecretRef { namespace: "lily".into(), name: "archive-db".into(), key: "dsn".into() });
        assert_eq!((w.schema.as_str(), w.application_name.as_str()), ("archive", "lily-archive"));
        assert_eq!(w.containers, ["init-datastore", "init-sync", "debug", "daemon"]);
        match storage_wiring(&pod, &maps, None) {
            Err(PostgresError::Ambiguous(m)) => {
                assert_eq!(
                    m,
                    format!("ConfigMap lily/{CM} config.toml has several storage entries (archive, db); name the one to check (`storage`)")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn postgres_config_is_found_through_any_configmap_volume_holding_config_toml() {
        let mut pod = chart_pod();
        let vols = pod.spec.as_mut().unwrap().volumes.as_mut().unwrap();
        vols[0].name = "settings".into();
        vols.insert(
            0,
            serde_json::from_value(
                serde_json::json!({"name": "scripts", "configMap": {"name": "s", "items": [{"key": "run.sh", "path": "run.sh"}]}}),
            )
            .unwrap(),
        );
        assert_eq!(config_map_names(&pod), vec![CM.to_string()]);
        assert_eq!(storage_wiring(&pod, &maps(), None).unwrap().config_map, CM);
        let mut two = chart_pod();
        two.spec
            .as_mut()
            .unwrap()
            .volumes
            .as_mut()
            .unwrap()
            .insert(0, serde_json::from_value(serde_json::json!({"name": "extra", "configMap": {"name": "other"}})).unwrap());
        assert_eq!(config_map_names(&two), vec![CM.to_string(), "other".to_string()], "config-volume first");
    }

    /// What, the config maps, the storage entry, the object and the start of the problem.
    type Case<'a> = (&'a str, Vec<ConfigMap>, Option<&'a str>, &'a str, &'a str);

    #[test]
    fn postgres_config_map_findings_name_the_map_and_table() {
        let cases: Vec<Case<'_>> = vec![
            ("missing map", vec![], None, "ConfigMap lily/lily-rel-dev-mainnet-daemon-config", "does not exist (pod lily/lily-rel-dev-mainnet-daemon-0 mounts it as its config)"),
            ("no config.toml", vec![serde_json::from_value(serde_json::json!({"metadata": {"name": CM}, "data": {"lily.toml": ""}})).unwrap()], None, "ConfigMap lily/lily-rel-dev-mainnet-daemon-config", "has no key `config.toml`"),
            ("bad toml", vec![config_map(CM, "[API]\nListenAddress = \n")], None, "ConfigMap lily/lily-rel-dev-mainnet-daemon-config config.toml", "is not valid TOML: "),
            ("no storage", vec![config_map(CM, "[API]\n")], None, "ConfigMap lily/lily-rel-dev-mainnet-daemon-config config.toml", "has no [Storage.Postgresql.<name>] table"),
            ("other entry", maps(), Some("archive"), "ConfigMap lily/lily-rel-dev-mainnet-daemon-config config.toml", "has no [Storage.Postgresql.archive] table (it has: db)"),
            (
                "keys missing",
                vec![config_map(CM, &config("[Storage.Postgresql.db]\nURLEnv = \"LILY_STORAGE_POSTGRESQL_DB_URL\"\nSchemaName = \"\"\nPoolSize = 20\n"))],
                None,
                "ConfigMap lily/lily-rel-dev-mainnet-daemon-config config.toml [Storage.Postgresql.db]",
                "SchemaName is empty, ApplicationName is missing",
            ),
            (
                "url env not a string",
                vec![config_map(CM, &config("[Storage.Postgresql.db]\nURLEnv = 5\nSchemaName = \"lily\"\nApplicationName = \"lily\"\n"))],
                None,
                "ConfigMap lily/lily-rel-dev-mainnet-daemon-config config.toml [Storage.Postgresql.db]",
                "URLEnv is not a string (it is integer)",
            ),
            (
                "url env names no env",
                vec![config_map(CM, &config(&table("db", "LILY_STORAGE_POSTGRESQL_MAIN_URL", "lily", "lily")))],
                None,
                "ConfigMap lily/lily-rel-dev-mainnet-daemon-config config.toml [Storage.Postgresql.db]",
                "URLEnv `LILY_STORAGE_POSTGRESQL_MAIN_URL` names an env no Lily container of pod lily/lily-rel-dev-mainnet-daemon-0 has (containers: init-datastore, init-sync, daemon; their storage envs: LILY_STORAGE_POSTGRESQL_DB_URL)",
            ),
        ];
        for (what, maps, storage, object, problem) in cases {
            let (o, p, fix) = finding(storage_wiring(&chart_pod(), &maps, storage));
            assert_eq!(o, object, "{what}");
            assert!(p.starts_with(problem), "{what}: {p}");
            assert!(!fix.is_empty(), "{what}");
        }
        let (_, p, _) = finding(storage_wiring(&chart_pod(), &[config_map(CM, "[API]\nListenAddress = \n")], None));
        assert!(p.ends_with("(line 2)") && !p.contains('\n'), "{p}");
        let (_, _, fix) = finding(storage_wiring(&chart_pod(), &[config_map(CM, &config("[Storage.Postgresql.db]\n"))], None));
        assert!(fix.contains("URLEnv = \"LILY_STORAGE_POSTGRESQL_DB_URL\""), "{fix}");
    }

    #[test]
    fn postgres_container_findings_name_the_container() {
        // The daemon lacks the env; init-sync has it as a literal; the containers disagree.
        let mut lacking = chart_pod();
        for c in containers(&mut lacking) {
            if c.name != "init-datastore" {
                c.env.as_mut().unwrap().retain(|e| e.name != ENV);
            }
        }
        let (o, p, fix) = finding(storage_wiring(&lacking, &maps(), None));
        assert_eq!(o, "pod lily/lily-rel-dev-mainnet-daemon-0 containers init-sync, daemon");
        assert_eq!(p, format!("lacks env {ENV}, the URLEnv of [Storage.Postgresql.db] in ConfigMap lily/{CM}"));
        assert!(fix.contains("init-datastore, init-sync, daemon, debug"), "{fix}");

        let mut literal = chart_pod();
        let mut all = containers(&mut literal);
        let env = all[1].env.as_mut().unwrap().iter_mut().find(|e| e.name == ENV).unwrap();
        env.value_from = None;
        env.value = Some("postgres://u:s3cret@db/lily?sslmode=require".into());
        let (o, p, fix) = finding(storage_wiring(&literal, &maps(), None));
        assert_eq!(o, format!("pod lily/lily-rel-dev-mainnet-daemon-0 container init-sync env {ENV}"));
        assert!(p.starts_with("does not come from a Secret (valueFrom.secretKeyRef)"), "{p}");
        assert!(fix.contains("secretKeyRef"));
        assert!(!format!("{o}{p}{fix}").contains("s3cret"));

        let mut disagree = chart_pod();
        containers(&mut disagree)[2].env.as_mut().unwrap().retain(|e| e.name != ENV);
        containers(&mut disagree)[2].env.as_mut().unwrap().push(serde_json::from_value(from_secret(ENV, "other-db", "url")).unwrap());
        let (o, p, _) = finding(storage_wiring(&disagree, &maps(), None));
        assert_eq!(o, format!("pod lily/lily-rel-dev-mainnet-daemon-0 env {ENV}"));
        assert_eq!(p, "the containers take it from different Secrets: init-datastore from Secret lily/lily-db key `url`, init-sync from Secret lily/lily-db key `url`, daemon from Secret lily/other-db key `url`");

        let mut no_daemon = chart_pod();
        no_daemon.spec.as_mut().unwrap().containers[0].name = "lily".into();
        let (o, p, _) = finding(storage_wiring(&no_daemon, &maps(), None));
        assert_eq!(o, "pod lily/lily-rel-dev-mainnet-daemon-0");
        assert_eq!(p, "has no `daemon` container (it has: init-datastore, init-sync, lily)");

        let mut no_volume = chart_pod();
        no_volume.spec.as_mut().unwrap().volumes.as_mut().unwrap().retain(|v| v.config_map.is_none());
        let (o, p, _) = finding(storage_wiring(&no_volume, &maps(), None));
        assert_eq!(o, "pod lily/lily-rel-dev-mainnet-daemon-0");
        assert_eq!(p, "mounts no configMap volume holding config.toml (expected volume `config-volume`)");

        let mut unnamed = chart_pod();
        for c in containers(&mut unnamed) {
            let e = c.env.as_mut().unwrap().iter_mut().find(|e| e.name == ENV).unwrap();
            e.value_from.as_mut().unwrap().secret_key_ref.as_mut().unwrap().name = String::new();
        }
        let (o, p, _) = finding(storage_wiring(&unnamed, &maps(), None));
        assert_eq!(
            (o.as_str(), p.as_str()),
            (format!("pod lily/lily-rel-dev-mainnet-daemon-0 container init-datastore env {ENV}").as_str(), "its secretKeyRef has no name")
        );
    }

    fn secret(key: &str, value: &[u8]) -> Secret {
        Secret { data: Some(BTreeMap::from([(key.to_string(), ByteString(value.to_vec()))])), ..Default::default() }
    }

    #[test]
    fn postgres_secret_findings_name_the_secret_and_key() {
        let w = storage_wiring(&chart_pod(), &maps(), None).unwrap();
        let url = "postgres://u:s3cret@db:5432/lily?sslmode=require";
        assert_eq!(secret_url(&w, Some(&secret("url", url.as_bytes()))).unwrap(), url);
        let finding = |r: std::result::Result<String, PostgresError>| match r {
            Err(PostgresError::ContractViolation { object, problem, fix }) => (object, problem, fix),
            other => panic!("{:?}", other.map(|_| "a url")),
        };
        let (o, p, fix) = finding(secret_url(&w, None));
        assert_eq!(o, "Secret lily/lily-db");
        assert_eq!(p, format!("does not exist (env {ENV} of pod lily/lily-rel-dev-mainnet-daemon-0 takes the storage url from it)"));
        assert!(fix.contains("secretName"), "{fix}");
        let (o, p, _) = finding(secret_url(&w, Some(&secret("uri", url.as_bytes()))));
        assert_eq!((o.as_str(), p.as_str()), ("Secret lily/lily-db key `url`", "is missing (the Secret has: uri)"));
        let (o, p, _) = finding(secret_url(&w, Some(&Secret::default())));
        assert_eq!((o.as_str(), p.as_str()), ("Secret lily/lily-db key `url`", "is missing (the Secret has: none)"));
        let (o, p, _) = finding(secret_url(&w, Some(&secret("url", &[0xff, 0xfe]))));
        assert_eq!((o.as_str(), p.as_str()), ("Secret lily/lily-db key `url`", "is not utf-8 text"));
    }

    fn expect() -> Expect {
        Expect {
            storage: "db".into(),
            schema: "lily".into(),
            application_name: "lily".into(),
            ca_pem: None,
            timeout: Duration::from_secs(1),
            pod_session: false,
        }
    }

    /// URLs refused before any connection: nothing listens on the port, so a connection
    /// attempt would show as a connection error instead.
    #[tokio::test]
    async fn postgres_url_findings_never_quote_the_url() {
        let source = SecretRef { namespace: "lily".into(), name: "lily-db".into(), key: "url".into() };
        for (what, url, problem) in [
            ("no sslmode", "postgres://u:s3cret@127.0.0.1:1/lily", "the url sets no sslmode"),
            ("disable", "postgres://u:s3cret@127.0.0.1:1/lily?sslmode=disable", "the url has sslmode=disable"),
            ("not a url", "s3cret", "is not a usable postgresql url (the postgresql url cannot be parsed: relative URL without a base)"),
            ("bad sslmode", "postgres://u:s3cret@127.0.0.1:1/lily?sslmode=never", "is not a usable postgresql url (sslmode `never`"),
        ] {
            let e = check_url(&source, url, &expect()).await.unwrap_err();
            let Error::Postgres(PostgresError::ContractViolation { object, problem: p, fix }) = &e else { panic!("{what}: {e:?}") };
            assert_eq!(object, "Secret lily/lily-db key `url`", "{what}");
            assert!(p.starts_with(problem), "{what}: {p}");
            assert!(fix.contains("sslmode=require"), "{what}: {fix}");
            assert!(!format!("{e}{e:?}").contains("s3cret"), "{what}: {e}");
        }
        // A URL that passes goes on to connect.
        let e = check_url(&source, "postgres://u:s3cret@127.0.0.1:1/lily?sslmode=require", &expect()).await.unwrap_err();
        assert!(e.to_string().starts_with("Secret lily/lily-db key `url`: cannot connect to database `lily`"), "{e}");
    }

    #[test]
    fn postgres_summary_serializes_without_host_or_password() {
        let s = ContractSummary {
            storage: "db".into(),
            config_map: Some(CM.into()),
            env: Some(ENV.into()),
            containers: vec!["daemon".into()],
            secret_name: "lily-db".into(),
            secret_key: "url".into(),
            user: "s_user".into(),
            database: "s".into(),
            host: HostKind::Loopback,
            schema: "lily".into(),
            sslmode: SslMode::Require,
            tls_in_use: true,
            application_name: "lily".into(),
            migration: migration_note("lily"),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["host"], "loopback");
        assert_eq!(v["sslmode"], "require");
        assert_eq!(v["tls_in_use"], true);
        assert_eq!(v["migration"], "performed by the harness (lily migrate --schema lily: CREATE SCHEMA IF NOT EXISTS)");
        assert!(v.get("port").is_none() && v.get("password").is_none());
    }
}
