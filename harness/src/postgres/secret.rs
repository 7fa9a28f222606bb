//! The storage Secret, exactly as the operators' guide documents it, and the chart values
//! that point at it.
//!
//! The guide has operators run
//! `kubectl create secret generic NAME --from-literal=url=postgres://USER:PASS@HOST:PORT/DB?sslmode=require`
//! in the release namespace, then set `daemon.storage.postgresql[]` to
//! `{name, secretName, secretKey: url, schema, applicationName}`. [`StorageSecret`] is that
//! Secret (type `Opaque`, one key `url`, the password percent-encoded), labelled with the
//! run id; [`StorageBinding::values`] is that values fragment.
//!
//! ## Which host goes in the URL
//! The URL must name a host the chart's pods would reach ([`Database::pod_url`](super::Database::pod_url)):
//! - cluster provider `local` (simulated nodes: pods run no containers, the harness performs
//!   their database step itself) and `existing` (the harness runs next to the cluster and
//!   the server is the one it reaches): the PostgreSQL host as the harness sees it,
//!   127.0.0.1 for the local PostgreSQL provider;
//! - `kind`: the PostgreSQL container's address on the kind network (and the server's own
//!   port, 5432), so that real pods reach it; the harness reaches that address too (the
//!   engine's networks are routed on its host).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::Client;
use serde::Serialize;

use super::dsn::DbUrl;

use crate::error::{Error, Result};
use crate::run::{RunId, RUN_LABEL};

/// The Secret key the guide uses.
pub const SECRET_KEY: &str = crate::contract::values::DEFAULT_SECRET_KEY;
/// The storage entry's name in the guide's values (`LILY_STORAGE_POSTGRESQL_DB_URL`).
pub const DEFAULT_STORAGE_NAME: &str = "db";
/// The schema and application name the guide's values use.
pub const DEFAULT_SCHEMA: &str = crate::contract::values::DEFAULT_SCHEMA;
pub const DEFAULT_APPLICATION_NAME: &str = "lily";

/// One `daemon.storage.postgresql[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageBinding {
    pub name: String,
    pub secret_name: String,
    pub secret_key: String,
    pub schema: String,
    pub application_name: String,
}

impl StorageBinding {
    /// The guide's entry: name `db`, key `url`, schema and application name `lily`.
    pub fn new(secret_name: impl Into<String>) -> Self {
        StorageBinding {
            name: DEFAULT_STORAGE_NAME.into(),
            secret_name: secret_name.into(),
            secret_key: SECRET_KEY.into(),
            schema: DEFAULT_SCHEMA.into(),
            application_name: DEFAULT_APPLICATION_NAME.into(),
        }
    }

    /// The environment variable the chart fills from the Secret:
    /// `LILY_STORAGE_POSTGRESQL_<NAME>_URL` (the chart's `upper`).
    pub fn env_name(&self) -> String {
        env_name(&self.name)
    }

    /// `{"daemon":{"storage":{"postgresql":[{...}]}}}`.
    pub fn values(&self) -> serde_json::Value {
        values(std::slice::from_ref(self))
    }

    /// This entry's Secret, holding `url`, in `namespace`, labelled with the run id.
    pub fn secret(&self, namespace: &str, run: &RunId, url: &DbUrl) -> StorageSecret {
        StorageSecret::new(&self.secret_name, namespace, &self.secret_key, run, url)
    }
}

/// `LILY_STORAGE_POSTGRESQL_<NAME>_URL` for storage entry `name`.
pub fn env_name(name: &str) -> String {
    crate::contract::storage_url_env(name)
}

/// The values fragment for several entries.
pub fn values(bindings: &[StorageBinding]) -> serde_json::Value {
    serde_json::json!({"daemon": {"storage": {"postgresql": bindings}}})
}

/// The Secret `kubectl create secret generic NAME --from-literal=KEY=URL -n NAMESPACE`
/// makes, plus the run-id label. Its `Debug` hides the data.
#[derive(Clone)]
pub struct StorageSecret {
    pub name: String,
    pub namespace: String,
    pub key: String,
    object: Secret,
}

impl std::fmt::Debug for StorageSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSecret")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("key", &self.key)
            .field("data", &"***")
            .finish()
    }
}

impl StorageSecret {
    pub fn new(name: &str, namespace: &str, key: &str, run: &RunId, url: &DbUrl) -> Self {
        let object = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(RUN_LABEL.to_string(), run.to_string())])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(key.to_string(), ByteString(url.expose().into_bytes()))])),
            ..Default::default()
        };
        StorageSecret { name: name.into(), namespace: namespace.into(), key: key.into(), object }
    }

    /// The object to create (it holds the password: never print it).
    pub fn object(&self) -> &Secret {
        &self.object
    }

    /// Creates it through the API. An existing Secret of that name is an error.
    pub async fn create(&self, client: &Client) -> Result<()> {
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        api.create(&PostParams::default(), &self.object)
            .await
            .map_err(Error::kube(format!("create secret {}/{}", self.namespace, self.name)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::{Password, SslMode};

    #[test]
    fn postgres_secret_is_what_kubectl_create_secret_generic_makes() {
        let run = RunId::new();
        let pw = Password::new("p@ss/w%rd:1");
        let url = DbUrl::new("scenario_user", Some(pw.clone()), "127.0.0.1", 40000, "scenario", SslMode::Require);
        let s = StorageBinding::new("lily-db").secret("lily", &run, &url);
        let v = serde_json::to_value(s.object()).unwrap();
        let b64 = v["data"]["url"].as_str().unwrap();
        use base64::Engine;
        let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(decoded, "postgres://scenario_user:p%40ss%2Fw%25rd%3A1@127.0.0.1:40000/scenario?sslmode=require");
        assert_eq!(DbUrl::parse(&decoded).unwrap(), url);
        assert_eq!(v["type"], "Opaque");
        assert_eq!(v["metadata"]["name"], "lily-db");
        assert_eq!(v["metadata"]["namespace"], "lily");
        assert_eq!(v["metadata"]["labels"][RUN_LABEL], run.as_str());
        assert_eq!(v["data"].as_object().unwrap().len(), 1);
        assert!(v.get("stringData").is_none());
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("p@ss") && !dbg.contains("p%40ss") && !dbg.contains(b64), "{dbg}");
    }

    #[test]
    fn postgres_values_match_the_guide() {
        let b = StorageBinding::new("lily-db");
        assert_eq!(
            b.values(),
            serde_json::json!({"daemon": {"storage": {"postgresql": [{
                "name": "db", "secretName": "lily-db", "secretKey": "url", "schema": "lily", "applicationName": "lily"
            }]}}})
        );
        assert_eq!(b.env_name(), "LILY_STORAGE_POSTGRESQL_DB_URL");
        assert_eq!(env_name("Main_Db"), "LILY_STORAGE_POSTGRESQL_MAIN_DB_URL");
    }
}
