//! What the harness expects of any Lily chart, written down once.
//!
//! This is the contract of the real chart (github filecoin-project/helm-charts, `charts/lily`,
//! releases 0.1.1 to 0.1.5-rc1): its object names, labels, containers, storage wiring and the
//! values keys an operator sets. The fixture chart in `scenarios/charts/lily` honours it; the
//! database contract check, the runbook resolvers and the values-contract scenario read it
//! from here. Nothing here is specific to the fixture.
//!
//! Names (release `rel`, `release.environment: dev`, `release.network: mainnet`):
//! instance `lily-rel-dev-mainnet` (or `release.nameOverride`, lower-cased), cut to 32
//! characters with a trailing `-` trimmed; StatefulSet `<short-instance>-<type>` for each
//! instance type of the deployment type (`daemon`, or `notifier` and `worker`); pod
//! `<statefulset>-<N>`; datastore claim `datastore-volume-<statefulset>-<N>`; config map
//! `<short-instance>-<type>-config` holding `config.toml`.

/// The chart's name (`Chart.yaml`), the first part of the instance name.
pub const CHART_NAME: &str = "lily";

/// The container every Lily pod runs Lily in; the guide follows its logs.
pub const MAIN_CONTAINER: &str = "daemon";

/// The init containers of a Lily pod, in order. `init-sync` is absent when
/// `debug.disableNetworkSync` is true.
pub const INIT_CONTAINERS: &[&str] = &["init-datastore", "init-sync"];

/// The optional sidecar (`debug.sidecar.enabled`): Lily's image idling next to `daemon`, with
/// the same env and mounts.
pub const DEBUG_CONTAINER: &str = "debug";

/// Whether a container of a Lily pod runs Lily: the init containers, `daemon` and `debug`.
/// Each gets the chart's common env (the storage URLs among it) and mounts `config-volume`.
pub fn is_lily_container(name: &str) -> bool {
    name == MAIN_CONTAINER || name == DEBUG_CONTAINER || INIT_CONTAINERS.contains(&name)
}

/// The StatefulSet's claim template for the datastore, when `volumes.datastore.enabled`.
pub const DATASTORE_CLAIM_TEMPLATE: &str = "datastore-volume";

/// Where the datastore volume is mounted in every Lily container.
pub const DATASTORE_MOUNT: &str = "/var/lib/lily/datastore";

/// The config map key holding Lily's configuration, mounted at `LILY_CONFIG`.
pub const CONFIG_KEY: &str = "config.toml";

/// The config map volume of a Lily pod.
pub const CONFIG_VOLUME: &str = "config-volume";

/// Selector labels (daemon: name `lily`, instance the instance name; cluster types: name
/// `lily-<type>`, instance `<short-instance>-<type>`).
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";

/// `deploymentType` values and the instance types each renders.
pub fn instance_types(deployment_type: &str) -> Option<&'static [&'static str]> {
    match deployment_type {
        "daemon" => Some(&["daemon"]),
        "cluster" => Some(&["notifier", "worker"]),
        _ => None,
    }
}

/// The env var a container reads one `storage.postgresql[]` entry's URL from.
pub fn storage_url_env(name: &str) -> String {
    format!("{STORAGE_ENV_PREFIX}{}{STORAGE_ENV_SUFFIX}", name.to_uppercase())
}

pub const STORAGE_ENV_PREFIX: &str = "LILY_STORAGE_POSTGRESQL_";
pub const STORAGE_ENV_SUFFIX: &str = "_URL";

/// Whether `env` has the shape of a storage URL env (`LILY_STORAGE_POSTGRESQL_<NAME>_URL`).
pub fn is_storage_url_env(env: &str) -> bool {
    env.len() > STORAGE_ENV_PREFIX.len() + STORAGE_ENV_SUFFIX.len()
        && env.starts_with(STORAGE_ENV_PREFIX)
        && env.ends_with(STORAGE_ENV_SUFFIX)
}

/// The instance name: `release.nameOverride` lower-cased, or `lily-<release>-<env>-<network>`.
pub fn instance_name(release: &str, environment: &str, network: &str, name_override: Option<&str>) -> String {
    match name_override.filter(|o| !o.is_empty()) {
        Some(o) => o.to_lowercase(),
        None => format!("{CHART_NAME}-{release}-{environment}-{network}").to_lowercase(),
    }
}

/// The instance name cut to 32 characters, a trailing `-` trimmed (helm's `trunc 32 |
/// trimSuffix "-"`: one dash only).
pub fn short_instance_name(instance: &str) -> String {
    let cut: String = instance.chars().take(32).collect();
    cut.strip_suffix('-').map(str::to_string).unwrap_or(cut)
}

pub fn statefulset_name(short_instance: &str, instance_type: &str) -> String {
    format!("{short_instance}-{instance_type}")
}

pub fn config_map_name(short_instance: &str, instance_type: &str) -> String {
    format!("{short_instance}-{instance_type}-config")
}

pub fn pod_name(statefulset: &str, ordinal: u32) -> String {
    format!("{statefulset}-{ordinal}")
}

pub fn datastore_claim_name(statefulset: &str, ordinal: u32) -> String {
    format!("{DATASTORE_CLAIM_TEMPLATE}-{}", pod_name(statefulset, ordinal))
}

/// The values keys the harness and the guide rely on.
pub mod values {
    /// `storage.postgresql[]` of each deployment type.
    pub fn storage_postgresql(deployment_type: &str) -> &'static str {
        if deployment_type == "cluster" {
            "cluster.storage.postgresql"
        } else {
            "daemon.storage.postgresql"
        }
    }
    /// Keys of one `storage.postgresql[]` entry (the guide's five, then the chart's two).
    pub const STORAGE_KEYS: &[&str] = &["name", "secretName", "secretKey", "schema", "applicationName", "poolSize", "allowUpsert"];
    /// `secretKey` when not given.
    pub const DEFAULT_SECRET_KEY: &str = "url";
    /// `schema` when not given.
    pub const DEFAULT_SCHEMA: &str = "lily";
    /// Scheduling knobs applied to every instance.
    pub const SCHEDULING: &[&str] = &["nodeSelector", "affinity", "tolerations"];
    /// Resources of each instance type.
    pub fn resources(instance_type: &str) -> String {
        match instance_type {
            "daemon" => "daemon.resources".into(),
            t => format!("cluster.{t}.resources"),
        }
    }
    /// The datastore volume of each instance type.
    pub fn datastore(instance_type: &str) -> String {
        match instance_type {
            "daemon" => "daemon.volumes.datastore".into(),
            t => format!("cluster.{t}.volumes.datastore"),
        }
    }
}

/// The rendered `config.toml`: one table per storage entry.
pub mod config {
    /// `[Storage.Postgresql.<name>]`.
    pub const STORAGE_TABLE: [&str; 2] = ["Storage", "Postgresql"];
    pub const URL_ENV: &str = "URLEnv";
    pub const SCHEMA_NAME: &str = "SchemaName";
    pub const APPLICATION_NAME: &str = "ApplicationName";
    pub const POOL_SIZE: &str = "PoolSize";
    pub const ALLOW_UPSERT: &str = "AllowUpsert";

    /// The table of storage entry `name`, as written in `config.toml`.
    pub fn storage_table(name: &str) -> String {
        format!("[{}.{}.{name}]", STORAGE_TABLE[0], STORAGE_TABLE[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_real_chart() {
        let inst = instance_name("rel", "dev", "mainnet", None);
        assert_eq!(inst, "lily-rel-dev-mainnet");
        let short = short_instance_name(&inst);
        let sts = statefulset_name(&short, "daemon");
        assert_eq!(sts, "lily-rel-dev-mainnet-daemon");
        assert_eq!(datastore_claim_name(&sts, 0), "datastore-volume-lily-rel-dev-mainnet-daemon-0");
        assert_eq!(config_map_name(&short, "daemon"), "lily-rel-dev-mainnet-daemon-config");
        let long = instance_name("x", "y", "z", Some("Lily-Mainnet-Archive-Indexer-EU-West-1"));
        assert_eq!(short_instance_name(&long), "lily-mainnet-archive-indexer-eu");
        assert_eq!(storage_url_env("db"), "LILY_STORAGE_POSTGRESQL_DB_URL");
        assert!(is_storage_url_env("LILY_STORAGE_POSTGRESQL_DB_URL") && !is_storage_url_env("LILY_STORAGE_POSTGRESQL__URL"));
        assert_eq!(instance_types("cluster"), Some(&["notifier", "worker"][..]));
        assert_eq!(values::storage_postgresql("cluster"), "cluster.storage.postgresql");
        assert_eq!(config::storage_table("db"), "[Storage.Postgresql.db]");
        assert!(["init-datastore", "init-sync", "daemon", "debug"].into_iter().all(is_lily_container));
        assert!(!is_lily_container("init-database") && !is_lily_container("exporter"));
    }
}
