//! The database contract check: the chart's `init-database` step, performed by the harness.
//!
//! Pods on simulated nodes run no containers, so the harness does what the chart's
//! `init-database` init container would: it reads the container's
//! `LILY_STORAGE_POSTGRESQL_<NAME>_URL` env (a `secretKeyRef`), follows it to the Secret and
//! key, decodes the URL, connects (TLS as `sslmode` says) with the application name of the
//! chart's rendered config, and runs the step's effect: `lily migrate --schema <schema>`
//! becomes `CREATE SCHEMA IF NOT EXISTS`. It then confirms that its session shows in
//! `pg_stat_activity` under that application name, whether the session is encrypted, and
//! that the schema exists.
//!
//! [`check_pod`] is the Kubernetes part; [`check_url`] is the core (URL in, summary out) and
//! needs no cluster. The [`ContractSummary`] is redacted for snapshots: no password, no
//! host or port (the port is random), only the [`HostKind`].

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::Api;
use kube::Client;
use serde::Serialize;

use super::dsn::{DbUrl, HostKind, SslMode};
use super::secret::env_name;
use super::{tls, PostgresError};
use crate::error::{Error, Result};

/// The init container the chart runs the database step in.
pub const INIT_CONTAINER: &str = "init-database";
const ENV_PREFIX: &str = "LILY_STORAGE_POSTGRESQL_";
const ENV_SUFFIX: &str = "_URL";
/// How long a contract connection may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a URL came from: a Secret and a key. Every error of the check names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "secret {}/{} key `{}`", self.namespace, self.name, self.key)
    }
}

/// What the database step must achieve.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The schema `lily migrate --schema` names.
    pub schema: String,
    /// The `applicationName` of the storage entry: the session must show under it.
    pub application_name: String,
    /// The CA for `sslmode=verify-ca`/`verify-full`.
    pub ca_pem: Option<String>,
    pub timeout: Duration,
}

/// The redacted outcome, for scenario snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContractSummary {
    pub secret_name: String,
    pub secret_key: String,
    /// The init container's env the URL came through (from a pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    pub user: String,
    pub database: String,
    pub host: HostKind,
    pub schema: String,
    pub sslmode: SslMode,
    pub tls_in_use: bool,
    pub application_name: String,
}

fn fail(what: String) -> Error {
    PostgresError::Contract(what).into()
}

fn sql(what: String) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| PostgresError::Sql { what, source }.into()
}

/// The core of the check: `url_text` as read from `source`, connected to and migrated as
/// `expect` says. Errors name the Secret and key and what failed, never the password.
pub async fn check_url(source: &SecretRef, url_text: &str, expect: &Expect) -> Result<ContractSummary> {
    let url = DbUrl::parse(url_text).map_err(|e| PostgresError::SecretUrl { secret: source.clone(), source: Box::new(e) })?;
    let target = format!("database `{}` on {}:{} as `{}` (sslmode={})", url.database, url.host, url.port, url.user, url.sslmode);
    let client = tls::connect(&url, Some(&expect.application_name), expect.ca_pem.as_deref(), expect.timeout).await.map_err(|e| {
        let hint = if tls::is_bad_password(&e) {
            ": the password was refused"
        } else if tls::is_hba_refusal(&e) && url.sslmode == SslMode::Disable {
            ": the server accepts only TLS connections and sslmode=disable does not use TLS"
        } else if tls::is_hba_refusal(&e) {
            ": the server's pg_hba.conf refused the connection"
        } else {
            ""
        };
        e.into_error(format!("{source}: cannot connect to {target}{hint}"))
    })?;

    let create = format!("CREATE SCHEMA IF NOT EXISTS {}", super::quote_ident(&expect.schema));
    client.batch_execute(&create).await.map_err(sql(format!("{source}: cannot create schema `{}` in {target}", expect.schema)))?;

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
        secret_name: source.name.clone(),
        secret_key: source.key.clone(),
        env: None,
        user: url.user.clone(),
        database: url.database.clone(),
        host: url.host_kind(),
        schema: expect.schema.clone(),
        sslmode: url.sslmode,
        tls_in_use,
        application_name: seen,
    })
}

/// Options of [`check_pod`].
#[derive(Debug, Clone)]
pub struct PodCheck {
    /// The storage entry (`daemon.storage.postgresql[].name`); `None` when the init
    /// container has exactly one.
    pub storage: Option<String>,
    /// The entry's `applicationName`; `None` reads it from the `config.toml` of the pod's
    /// ConfigMap volumes (the entry whose `URLEnv` is the env).
    pub application_name: Option<String>,
    pub ca_pem: Option<String>,
    pub timeout: Duration,
}

impl Default for PodCheck {
    fn default() -> Self {
        PodCheck { storage: None, application_name: None, ca_pem: None, timeout: DEFAULT_TIMEOUT }
    }
}

/// What the pod's `init-database` container says about one storage entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseStep {
    /// `LILY_STORAGE_POSTGRESQL_<NAME>_URL`.
    pub env: String,
    pub secret: SecretRef,
    /// From `lily migrate --schema <schema>`.
    pub schema: String,
    /// ConfigMaps the pod mounts (where the rendered config lives).
    pub config_maps: Vec<String>,
}

/// Reads the database step of `pod` for storage entry `storage` (or its only one).
pub fn database_step(pod: &Pod, storage: Option<&str>) -> Result<DatabaseStep> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let pod_name = format!("pod {}/{}", ns, pod.metadata.name.as_deref().unwrap_or("?"));
    let spec = pod.spec.as_ref().ok_or_else(|| fail(format!("{pod_name} has no spec")))?;
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let init: &Container = inits.iter().find(|c| c.name == INIT_CONTAINER).ok_or_else(|| {
        let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
        fail(format!(
            "{pod_name} has no `{INIT_CONTAINER}` init container (it has: {})",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ))
    })?;
    let envs = init.env.as_deref().unwrap_or_default();
    let env_name = match storage {
        Some(s) => env_name(s),
        None => {
            let found: Vec<&str> = envs
                .iter()
                .map(|e| e.name.as_str())
                .filter(|n| n.starts_with(ENV_PREFIX) && n.ends_with(ENV_SUFFIX) && n.len() > ENV_PREFIX.len() + ENV_SUFFIX.len())
                .collect();
            match found.as_slice() {
                [one] => one.to_string(),
                [] => return Err(fail(format!("`{INIT_CONTAINER}` in {pod_name} has no {ENV_PREFIX}<NAME>{ENV_SUFFIX} env"))),
                many => {
                    return Err(PostgresError::Ambiguous(format!(
                        "`{INIT_CONTAINER}` in {pod_name} has several storage urls ({}); name the storage entry",
                        many.join(", ")
                    ))
                    .into())
                }
            }
        }
    };
    let var =
        envs.iter().find(|e| e.name == env_name).ok_or_else(|| fail(format!("`{INIT_CONTAINER}` in {pod_name} has no env {env_name}")))?;
    let key_ref = var.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).ok_or_else(|| {
        fail(format!("env {env_name} of `{INIT_CONTAINER}` in {pod_name} does not come from a Secret (valueFrom.secretKeyRef)"))
    })?;
    if key_ref.name.is_empty() {
        return Err(fail(format!("env {env_name} of `{INIT_CONTAINER}` in {pod_name} names no Secret")));
    }
    let script: Vec<String> = init.command.iter().flatten().chain(init.args.iter().flatten()).cloned().collect();
    let schema = schema_from_script(&script.join("\n"), &env_name)
        .ok_or_else(|| fail(format!("`{INIT_CONTAINER}` in {pod_name} runs no `lily migrate --schema <schema>` for {env_name}")))?;
    let config_maps = spec.volumes.iter().flatten().filter_map(|v| v.config_map.as_ref().map(|c| c.name.clone())).collect();
    Ok(DatabaseStep {
        env: env_name,
        secret: SecretRef { namespace: ns, name: key_ref.name.clone(), key: key_ref.key.clone() },
        schema,
        config_maps,
    })
}

/// The `--schema` of the `lily migrate` line that uses `$ENV` (the chart writes
/// `LILY_DB=$LILY_STORAGE_POSTGRESQL_DB_URL lily migrate --schema "lily"`). If no line
/// names the env and the script migrates once, that one.
pub fn schema_from_script(script: &str, env: &str) -> Option<String> {
    let mentions = |line: &str| {
        [format!("${env}"), format!("${{{env}}}")].iter().any(|needle| {
            line.match_indices(needle.as_str()).any(|(i, _)| {
                let next = line[i + needle.len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        })
    };
    let schema_of = |line: &str| -> Option<String> {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let migrate = tokens.windows(2).any(|w| w[0].ends_with("lily") && w[1] == "migrate");
        if !migrate {
            return None;
        }
        tokens.iter().enumerate().find_map(|(i, t)| {
            let raw = if *t == "--schema" { tokens.get(i + 1).copied() } else { t.strip_prefix("--schema=") };
            raw.map(|r| r.trim_matches(|c| c == '"' || c == '\'').to_string()).filter(|s| !s.is_empty())
        })
    };
    let lines: Vec<&str> = script.lines().collect();
    if let Some(s) = lines.iter().filter(|l| mentions(l)).find_map(|l| schema_of(l)) {
        return Some(s);
    }
    // No line names the env: accept a script (or a plain argument list) that migrates
    // exactly once and names no storage env at all.
    let flat = script.split_whitespace().collect::<Vec<_>>().join(" ");
    if script.contains(ENV_PREFIX) || flat.matches(" migrate").count() != 1 {
        return None;
    }
    schema_of(&flat)
}

/// The `ApplicationName` of the `[Storage.Postgresql.<name>]` table whose `URLEnv` is
/// `env` (or whose name, upper-cased, makes `env`) in a rendered Lily `config.toml`.
pub fn application_name_from_config(config_toml: &str, env: &str) -> Option<String> {
    let doc: toml::Table = config_toml.parse().ok()?;
    let tables = doc.get("Storage")?.get("Postgresql")?.as_table()?;
    tables.iter().find_map(|(name, t)| {
        let matches = t.get("URLEnv").and_then(|v| v.as_str()).map_or_else(|| env_name(name) == env, |u| u == env);
        if matches {
            t.get("ApplicationName").and_then(|v| v.as_str()).map(str::to_string)
        } else {
            None
        }
    })
}

/// The whole check for `pod` in `namespace`: its database step, the Secret it points at,
/// the application name (given, or from the rendered config), then [`check_url`].
pub async fn check_pod(client: &Client, namespace: &str, pod: &str, opts: &PodCheck) -> Result<ContractSummary> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let p = pods
        .get_opt(pod)
        .await
        .map_err(Error::kube(format!("read pod {namespace}/{pod}")))?
        .ok_or_else(|| fail(format!("pod {namespace}/{pod} does not exist")))?;
    let step = database_step(&p, opts.storage.as_deref())?;
    let source = &step.secret;
    let via = format!("env {} of `{INIT_CONTAINER}` in pod {namespace}/{pod}", step.env);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get_opt(&source.name)
        .await
        .map_err(Error::kube(format!("read secret {namespace}/{}", source.name)))?
        .ok_or_else(|| fail(format!("secret {namespace}/{} (named by {via}) does not exist", source.name)))?;
    let data = secret.data.unwrap_or_default();
    let value = data.get(&source.key).ok_or_else(|| {
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        fail(format!(
            "secret {namespace}/{} (named by {via}) has no key `{}` (it has: {})",
            source.name,
            source.key,
            if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
        ))
    })?;
    let text = std::str::from_utf8(&value.0).map_err(|_| fail(format!("{source}: the value is not utf-8 text")))?;

    let application_name = match &opts.application_name {
        Some(a) => a.clone(),
        None => {
            let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
            let mut found = None;
            for name in &step.config_maps {
                let Some(cm) = maps.get_opt(name).await.map_err(Error::kube(format!("read configmap {namespace}/{name}")))? else {
                    continue;
                };
                found = cm
                    .data
                    .iter()
                    .flatten()
                    .filter(|(k, _)| k.ends_with(".toml"))
                    .find_map(|(_, v)| application_name_from_config(v, &step.env));
                if found.is_some() {
                    break;
                }
            }
            found.ok_or_else(|| {
                PostgresError::Ambiguous(format!(
                    "cannot tell the application name for {via}: no config.toml in the pod's configmaps ({}) names it; pass it",
                    step.config_maps.join(", ")
                ))
            })?
        }
    };
    let expect = Expect { schema: step.schema.clone(), application_name, ca_pem: opts.ca_pem.clone(), timeout: opts.timeout };
    let mut summary = check_url(source, text, &expect).await?;
    summary.env = Some(step.env);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    pub(crate) fn chart_pod(env: &str, secret: &str, key: &str, script: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "lily-daemon-0", "namespace": "lily"},
            "spec": {
                "initContainers": [
                    {"name": "init-datastore", "image": "lily"},
                    {"name": "init-database", "image": "lily", "command": ["/bin/sh", "-c"], "args": [script],
                     "env": [
                        {"name": "GOLOG_LOG_FMT", "value": "json"},
                        {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                     ]}
                ],
                "containers": [{"name": "daemon", "image": "lily"}],
                "volumes": [{"name": "config-volume", "configMap": {"name": "lily-daemon-config"}}]
            }
        }))
        .unwrap()
    }

    const SCRIPT: &str =
        "echo \"Checking for database readiness for db...\"\nLILY_DB=$LILY_STORAGE_POSTGRESQL_DB_URL lily migrate --schema \"lily\"\n";

    #[test]
    fn postgres_database_step_is_read_from_the_chart_pod() {
        let pod = chart_pod("LILY_STORAGE_POSTGRESQL_DB_URL", "lily-db", "url", SCRIPT);
        let step = database_step(&pod, None).unwrap();
        assert_eq!(step.env, "LILY_STORAGE_POSTGRESQL_DB_URL");
        assert_eq!(step.secret, SecretRef { namespace: "lily".into(), name: "lily-db".into(), key: "url".into() });
        assert_eq!(step.schema, "lily");
        assert_eq!(step.config_maps, vec!["lily-daemon-config".to_string()]);
        assert_eq!(database_step(&pod, Some("db")).unwrap(), step);
    }

    #[test]
    fn postgres_database_step_errors_name_what_is_missing() {
        let pod = chart_pod("LILY_STORAGE_POSTGRESQL_DB_URL", "lily-db", "url", SCRIPT);
        let e = database_step(&pod, Some("other")).unwrap_err().to_string();
        assert!(e.contains("has no env LILY_STORAGE_POSTGRESQL_OTHER_URL"), "{e}");

        let mut no_init = pod.clone();
        no_init.spec.as_mut().unwrap().init_containers.as_mut().unwrap().retain(|c| c.name != INIT_CONTAINER);
        let e = database_step(&no_init, None).unwrap_err().to_string();
        assert!(e.contains("pod lily/lily-daemon-0 has no `init-database` init container (it has: init-datastore)"), "{e}");

        let mut plain = pod.clone();
        let init = &mut plain.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[1];
        let env = &mut init.env.as_mut().unwrap()[1];
        env.value_from = None;
        env.value = Some("postgres://x".into());
        let e = database_step(&plain, None).unwrap_err().to_string();
        assert!(e.contains("does not come from a Secret (valueFrom.secretKeyRef)"), "{e}");
        assert!(!e.contains("postgres://x"));

        let none = chart_pod("OTHER", "lily-db", "url", SCRIPT);
        let e = database_step(&none, None).unwrap_err().to_string();
        assert!(e.contains("has no LILY_STORAGE_POSTGRESQL_<NAME>_URL env"), "{e}");

        let no_migrate = chart_pod("LILY_STORAGE_POSTGRESQL_DB_URL", "lily-db", "url", "echo hi");
        let e = database_step(&no_migrate, None).unwrap_err().to_string();
        assert!(e.contains("runs no `lily migrate --schema <schema>` for LILY_STORAGE_POSTGRESQL_DB_URL"), "{e}");
    }

    #[rstest]
    #[case::chart(SCRIPT, "LILY_STORAGE_POSTGRESQL_DB_URL", Some("lily"))]
    #[case::braces(
        "LILY_DB=${LILY_STORAGE_POSTGRESQL_DB_URL} lily migrate --schema=visor",
        "LILY_STORAGE_POSTGRESQL_DB_URL",
        Some("visor")
    )]
    #[case::single_quotes(
        "LILY_DB=$LILY_STORAGE_POSTGRESQL_DB_URL /usr/bin/lily migrate --schema 'x'",
        "LILY_STORAGE_POSTGRESQL_DB_URL",
        Some("x")
    )]
    #[case::picks_its_line(
        "LILY_DB=$LILY_STORAGE_POSTGRESQL_DB2_URL lily migrate --schema \"two\"\nLILY_DB=$LILY_STORAGE_POSTGRESQL_DB_URL lily migrate --schema \"one\"",
        "LILY_STORAGE_POSTGRESQL_DB_URL",
        Some("one")
    )]
    #[case::prefix_is_not_a_match(
        "LILY_DB=$LILY_STORAGE_POSTGRESQL_DB_URL_X lily migrate --schema a",
        "LILY_STORAGE_POSTGRESQL_DB_URL",
        None
    )]
    #[case::direct_args("lily\nmigrate\n--schema\nlily", "LILY_STORAGE_POSTGRESQL_DB_URL", Some("lily"))]
    #[case::single_migrate_without_env("lily migrate --schema only", "LILY_STORAGE_POSTGRESQL_DB_URL", Some("only"))]
    #[case::no_migrate("echo --schema x $LILY_STORAGE_POSTGRESQL_DB_URL", "LILY_STORAGE_POSTGRESQL_DB_URL", None)]
    fn postgres_schema_is_read_from_the_migrate_line(#[case] script: &str, #[case] env: &str, #[case] want: Option<&str>) {
        assert_eq!(schema_from_script(script, env).as_deref(), want);
    }

    #[test]
    fn postgres_application_name_is_read_from_the_rendered_config() {
        let cfg = r#"
[API]
  ListenAddress = "/ip4/0.0.0.0/tcp/1234/http"
[Storage]
  [Storage.Postgresql]
    [Storage.Postgresql.db]
      SchemaName = "lily"
      URLEnv = "LILY_STORAGE_POSTGRESQL_DB_URL"
      ApplicationName = "lily-app"
      PoolSize = 20
      AllowUpsert = false
    [Storage.Postgresql.other]
      ApplicationName = "other-app"
"#;
        assert_eq!(application_name_from_config(cfg, "LILY_STORAGE_POSTGRESQL_DB_URL").as_deref(), Some("lily-app"));
        assert_eq!(application_name_from_config(cfg, "LILY_STORAGE_POSTGRESQL_OTHER_URL").as_deref(), Some("other-app"));
        assert_eq!(application_name_from_config(cfg, "LILY_STORAGE_POSTGRESQL_NONE_URL"), None);
        assert_eq!(application_name_from_config("not toml [", "X"), None);
    }

    #[test]
    fn postgres_summary_serializes_without_host_or_password() {
        let s = ContractSummary {
            secret_name: "lily-db".into(),
            secret_key: "url".into(),
            env: Some("LILY_STORAGE_POSTGRESQL_DB_URL".into()),
            user: "s_user".into(),
            database: "s".into(),
            host: HostKind::Loopback,
            schema: "lily".into(),
            sslmode: SslMode::Require,
            tls_in_use: true,
            application_name: "lily".into(),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["host"], "loopback");
        assert_eq!(v["sslmode"], "require");
        assert_eq!(v["tls_in_use"], true);
        assert!(v.get("port").is_none() && v.get("password").is_none());
    }
}
