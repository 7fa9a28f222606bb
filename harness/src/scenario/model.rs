//! The scenario file format.
//!
//! A scenario is a YAML file in `scenarios/`: a name, what it proves, and steps in
//! `try` / `catch` / `finally` blocks (chainsaw's shape). Steps are an externally tagged
//! enum: each step is a map with exactly one key, the step's kind. Unknown keys are errors.
//! `lily-e2e schema` prints the JSON schema generated from these types, for editors.
//!
//! Strings in steps may use `${var}` placeholders, filled in when the step runs:
//! `release`, `namespace`, `instance` (the StatefulSet the release created), `pod`
//! (`<instance>-0`), `claim` (its datastore claim), `chart.latest`, `chart.previous`,
//! `chart.oldest`, `zone-a`/`zone-b` (simulated zones), and names saved by earlier steps.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One scenario file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scenario {
    /// Unique name; also the test name (`cargo test <name>`) and the snapshot name.
    pub name: String,
    /// One line for `lily-e2e list`.
    pub summary: String,
    /// Longer description: what the guide says, what this proves.
    #[serde(default)]
    pub description: String,
    /// Needs a cluster of its own (it breaks nodes or zones). Others share one cluster and
    /// run in parallel, each in its own namespace.
    #[serde(default)]
    pub exclusive: bool,
    /// Uses fixture chart versions by name (`fixture@0.3.0`): skipped, with the reason
    /// printed, when the suite runs against other chart sources.
    #[serde(default)]
    pub fixture_only: bool,
    /// The helm release name (default `lily`).
    #[serde(default = "default_release")]
    pub release: String,
    /// Values files (relative to `scenarios/values/`, or absolute) given to every helm
    /// install/upgrade step, before the step's own.
    #[serde(default)]
    pub values: Vec<String>,
    /// Steps, when the scenario has one case.
    #[serde(default, rename = "try")]
    pub steps: Vec<Step>,
    /// Several cases, each its own test (`<scenario>/<case>`).
    #[serde(default)]
    pub cases: Vec<Case>,
    /// Steps run only if a step failed (after artifacts are collected).
    #[serde(default)]
    pub catch: Vec<Step>,
    /// Steps always run at the end.
    #[serde(default)]
    pub finally: Vec<Step>,
}

fn default_release() -> String {
    "lily".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub summary: String,
    #[serde(rename = "try")]
    pub steps: Vec<Step>,
}

/// A step. Later issues add kinds here; the enum is the extension point.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Step {
    /// Create the scenario's database and role, and the storage Secret exactly as the
    /// guide's `kubectl create secret generic NAME --from-literal=url=postgres://...` does.
    Postgres(PostgresStep),
    /// `helm repo add NAME URL` (the served chart repository) and `helm repo update`.
    HelmRepoAdd(HelmRepoAdd),
    /// `helm upgrade --install RELEASE REPO/CHART [--version V] -f values... [--wait --timeout]`.
    HelmUpgrade(HelmUpgrade),
    /// `helm rollback RELEASE REVISION`.
    HelmRollback(HelmRollback),
    /// `helm uninstall RELEASE`.
    HelmUninstall(Empty),
    /// Check `helm status -o json` / `helm history`.
    ExpectRelease(ExpectRelease),
    /// Wait until the release's StatefulSet has rolled out (updated, ready, current ==
    /// update revision): helm's `--wait` does not cover StatefulSet rollouts.
    WaitRollout(WaitRollout),
    /// Wait until a pod matches (phase, container present, zone, node).
    ExpectPod(ExpectPod),
    /// Wait until a PersistentVolumeClaim matches; optionally save its volume name.
    ExpectClaim(ExpectClaim),
    /// Wait for an event on an object whose message matches a catalogued wording or regex.
    ExpectEvent(ExpectEvent),
    /// Assert that no matching event arrives within a window (for negative tests).
    ExpectNoEvent(ExpectEvent),
    /// The database contract check: the pod's storage wiring (config map table, env from the
    /// Secret in every Lily container, the URL's sslmode) followed to the database, where the
    /// harness performs `lily migrate`'s schema creation.
    ContractCheck(ContractCheck),
    /// Run a documented runbook from `scenarios/runbooks/` with the pinned kubectl.
    Runbook(RunbookStep),
    /// Record the scenario's normalised outcome (checked against `snapshots/scenarios/`).
    Snapshot(Empty),
    /// Fault: nodes of a zone are lost (heartbeat stops, then the Node objects go).
    LoseZone(ZoneRef),
    /// Fault: a node's kubelet stops heartbeating (kwok stops managing it).
    StopHeartbeat(NodeRef),
    /// `kubectl cordon NODE`, or every node of a zone: places pods by cluster-side means,
    /// whatever values the chart reads.
    Cordon(NodeSet),
    /// `kubectl uncordon NODE`, or every node of a zone.
    Uncordon(NodeSet),
    /// `kubectl drain NODE` (evicts the release's pods).
    Drain(NodeRef),
    /// Fault knob: how long the node's simulated kubelet takes to unmount a volume after its
    /// pod is gone; `stuck: true` never unmounts.
    UnmountDelay(UnmountDelay),
    /// Taint a node `node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`.
    OutOfService(NodeRef),
    /// Delete an object (`kubectl delete` equivalent), optionally waiting until it is gone.
    Delete(DeleteStep),
    /// Save the node a pod runs on under a name, for later steps (`${name}`).
    SaveNode(SaveNode),
    /// Wait until a volume's VolumeAttachments are exactly on the given nodes (none: detached
    /// everywhere).
    ExpectAttachment(ExpectAttachment),
    /// The scheduling and storage knobs an operator sets, each on its own: the chart renders
    /// with it, it lands where Kubernetes reads it, and the API server accepts every rendered
    /// object (server-side dry-run). Installs nothing.
    ValuesContract(ValuesContract),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ValuesContract {
    /// A chart source instead of the served repository's chart: a directory, `DIR@X.Y.Z`, a
    /// .tgz, or `fixture@X.Y.Z` (as `helm-upgrade`'s `chart`).
    #[serde(default)]
    pub chart: Option<String>,
    /// The served repository's chart version (default: the candidate, the newest version served). Placeholders such
    /// as `${chart.previous}` work.
    #[serde(default)]
    pub version: Option<String>,
    /// The instance type whose `resources` and datastore volume the knobs set (default
    /// `daemon`; `notifier` or `worker` with `deploymentType: cluster`).
    #[serde(default)]
    pub instance_type: Option<String>,
    /// The knobs, each rendered on its own on top of the scenario's values files.
    pub knobs: Vec<Knob>,
}

/// One values knob and its value (a map with one key, the knob).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Knob {
    /// `nodeSelector`: in every Lily StatefulSet's `spec.template.spec.nodeSelector`.
    NodeSelector(std::collections::BTreeMap<String, String>),
    /// `affinity`: in every Lily StatefulSet's `spec.template.spec.affinity`.
    Affinity(serde_json::Value),
    /// `tolerations`: in every Lily StatefulSet's `spec.template.spec.tolerations`.
    Tolerations(Vec<serde_json::Value>),
    /// `<instance type>.resources` (`daemon.resources`, `cluster.worker.resources`): the
    /// `daemon` container's `resources`.
    Resources(serde_json::Value),
    /// `<instance type>.volumes.datastore.storageClassName`: the datastore claim template's
    /// `spec.storageClassName`.
    StorageClassName(String),
    /// `<instance type>.volumes.datastore.size`: the datastore claim template's
    /// `spec.resources.requests.storage`.
    Size(String),
}

impl Knob {
    /// The knob as written in the file (`node-selector`).
    pub fn kind(&self) -> String {
        let v = serde_json::to_value(self).unwrap_or_default();
        v.as_object().and_then(|m| m.keys().next().cloned()).unwrap_or_else(|| "knob".into())
    }

    /// The value it sets.
    pub fn value(&self) -> serde_json::Value {
        let v = serde_json::to_value(self).unwrap_or_default();
        v.as_object().and_then(|m| m.values().next().cloned()).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExpectAttachment {
    /// The PersistentVolume's name (e.g. `${vol}`).
    pub volume: String,
    /// Nodes the volume must be attached to (status.attached), and to no other.
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PostgresStep {
    /// The Secret's name (the guide's `<deployed_secret_name>`); must match the values.
    #[serde(default = "default_secret")]
    pub secret: String,
    /// The storage entry's name (`storage.postgresql[].name`).
    #[serde(default = "default_storage_name")]
    pub name: String,
}

fn default_secret() -> String {
    "lily-db".into()
}
fn default_storage_name() -> String {
    "db".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HelmRepoAdd {
    /// Local name of the repository (the guide uses `filecoin`).
    #[serde(default = "default_repo")]
    pub name: String,
}

fn default_repo() -> String {
    "filecoin".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HelmUpgrade {
    /// `--version`; omitted means the newest version (as in the guide). Placeholders such as
    /// `${chart.previous}` work.
    #[serde(default)]
    pub version: Option<String>,
    /// Install from this chart source instead of the added repository: `fixture@X.Y.Z` is
    /// the fixture chart packaged as that version (for `fixture-only` scenarios).
    #[serde(default)]
    pub chart: Option<String>,
    /// More values files, after the scenario's.
    #[serde(default)]
    pub values: Vec<String>,
    /// Inline values (as a values file would hold them), applied last.
    #[serde(default)]
    pub set: Option<serde_json::Value>,
    /// `--wait`.
    #[serde(default)]
    pub wait: bool,
    /// `--timeout` and the step's own deadline, e.g. `120s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// The upgrade is expected to fail with a message matching this regex.
    #[serde(default)]
    pub expect_failure: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HelmRollback {
    pub revision: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExpectRelease {
    #[serde(default)]
    pub revision: Option<u32>,
    /// Chart version deployed, e.g. `0.2.0` or `${chart.latest}`.
    #[serde(default)]
    pub chart_version: Option<String>,
    /// `deployed`, `failed`, ...
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WaitRollout {
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExpectPod {
    /// Default `${pod}`.
    #[serde(default)]
    pub name: Option<String>,
    /// `Running`, `Pending`, ...
    #[serde(default)]
    pub phase: Option<String>,
    /// A container that must exist in the pod spec.
    #[serde(default)]
    pub container: Option<String>,
    /// The zone of the node it runs on (`zone-a`), or `${...}`.
    #[serde(default)]
    pub zone: Option<String>,
    /// The node it runs on.
    #[serde(default)]
    pub node: Option<String>,
    /// The node it must NOT run on.
    #[serde(default)]
    pub not_node: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    /// Observe instead of assert: record whether the pod got there within the timeout (for
    /// findings such as "the runbook did not recover within 60s") and go on either way.
    #[serde(default)]
    pub observe: bool,
    /// The pod no longer exists (a deleted release's pod has terminated); alone, with `name`
    /// and `timeout` only.
    #[serde(default)]
    pub gone: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExpectClaim {
    /// Default `${claim}`.
    #[serde(default)]
    pub name: Option<String>,
    /// `Bound` or `Pending`.
    #[serde(default)]
    pub phase: Option<String>,
    /// Save the bound volume's name as `${<save-volume>}`.
    #[serde(default)]
    pub save_volume: Option<String>,
    /// The bound volume must be this one (e.g. `${before}`) ...
    #[serde(default)]
    pub volume: Option<String>,
    /// ... or must not be this one.
    #[serde(default)]
    pub not_volume: Option<String>,
    /// The zone the bound volume is pinned to.
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExpectEvent {
    /// `Pod/${pod}` style reference to the involved object.
    pub object: String,
    pub reason: String,
    /// A catalogue entry (`volume-node-affinity-conflict`, `multi-attach`) whose wording for
    /// the running Kubernetes version must match ...
    #[serde(default)]
    pub catalogue: Option<String>,
    /// ... or a regex.
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
}

/// The database contract check. From the pod: the `[Storage.Postgresql.<storage>]` table
/// of the `config.toml` its `config-volume` mounts (`SchemaName`, `ApplicationName` set),
/// the env its `URLEnv` names in every Lily container (`init-datastore`, `init-sync`,
/// `daemon`, `debug`; from a `secretKeyRef`), and that Secret key's URL (`sslmode` set, not
/// `disable`). The harness then connects as the pod would, with the table's
/// `ApplicationName`, creates its `SchemaName` as `lily migrate` would (the chart runs no
/// migration) and sees the session in `pg_stat_activity`. What the chart's objects get wrong
/// fails the case as a chart finding naming the object and key.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContractCheck {
    /// The pod (default `${pod}`).
    #[serde(default)]
    pub pod: Option<String>,
    /// The storage entry (`storage.postgresql[].name`); default: the only one.
    #[serde(default)]
    pub storage: Option<String>,
    /// The entry's `applicationName` as the values give it: the table's `ApplicationName`
    /// must be it. Unset: whatever the table says.
    #[serde(default)]
    pub application_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunbookStep {
    /// A file in `scenarios/runbooks/` without `.yaml`.
    pub name: String,
    /// How long one of its kubectl commands may take (default 60s); one that takes longer
    /// is stopped and recorded as not completed (e.g. `kubectl delete pod` of a pod on a dead
    /// node waits forever).
    #[serde(default)]
    pub command_timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ZoneRef {
    pub zone: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeRef {
    pub node: String,
}

/// One node, or every node of a zone (exactly one of the two).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSet {
    #[serde(default)]
    pub node: Option<String>,
    /// A simulated zone (`zone-a`): every node labelled `topology.kubernetes.io/zone` with it.
    #[serde(default)]
    pub zone: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UnmountDelay {
    pub node: String,
    /// e.g. `20s`.
    #[serde(default)]
    pub delay: Option<String>,
    #[serde(default)]
    pub stuck: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeleteStep {
    /// `Pod/NAME`, `PersistentVolumeClaim/NAME`, `Node/NAME`.
    pub object: String,
    #[serde(default)]
    pub wait: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SaveNode {
    /// Default `${pod}`.
    #[serde(default)]
    pub pod: Option<String>,
    /// The variable to save the node name as.
    #[serde(rename = "as")]
    pub as_: String,
}

impl Step {
    /// The step's kind, as written in the file.
    pub fn kind(&self) -> String {
        let v = serde_json::to_value(self).unwrap_or_default();
        v.as_object().and_then(|m| m.keys().next().cloned()).unwrap_or_else(|| "step".into())
    }
}

impl Scenario {
    /// The test cases: `(test name, steps)`.
    pub fn cases(&self) -> Vec<(String, Option<String>, &[Step])> {
        if self.cases.is_empty() {
            vec![(self.name.clone(), None, &self.steps[..])]
        } else {
            self.cases.iter().map(|c| (format!("{}/{}", self.name, c.name), Some(c.name.clone()), &c.steps[..])).collect()
        }
    }
}

/// The JSON schema of scenario files.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Scenario)).unwrap_or_default()
}

/// Parses `90s`, `2m`, `500ms`.
pub fn duration(s: &str) -> Result<std::time::Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| Error::Invalid(format!("`{s}` is not a duration like 90s or 2m")))?;
    Ok(match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" | "" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        _ => return Err(Error::Invalid(format!("`{s}` is not a duration like 90s or 2m"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn steps_are_externally_tagged_and_strict() {
        let s: Scenario =
            crate::yaml::from_str("name: x\nsummary: y\ntry:\n  - helm-upgrade: {version: '0.1.0', wait: true}\n  - snapshot: {}\n")
                .unwrap();
        assert_eq!(s.steps[0].kind(), "helm-upgrade");
        let bad = crate::yaml::from_str::<Scenario>("name: x\nsummary: y\ntry:\n  - helm-upgrade: {versoin: '0.1.0'}\n");
        assert!(bad.is_err(), "a typo'd field must be rejected");
        let two = crate::yaml::from_str::<Scenario>("name: x\nsummary: y\ntry:\n  - {snapshot: {}, helm-uninstall: {}}\n");
        assert!(two.is_err(), "a step has exactly one kind");
    }

    #[rstest]
    #[case("90s", 90_000)]
    #[case("2m", 120_000)]
    #[case("250ms", 250)]
    #[case("7", 7_000)]
    fn durations(#[case] s: &str, #[case] ms: u128) {
        assert_eq!(duration(s).unwrap().as_millis(), ms);
    }

    #[test]
    fn bad_durations_are_errors() {
        assert!(duration("soon").is_err());
        assert!(duration("5h").is_err());
    }

    fn repo_root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    #[test]
    fn the_committed_schema_is_current() {
        let path = repo_root().join("scenarios/scenario.schema.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
        assert!(committed == generated, "{} is stale: run `lily-e2e schema > scenarios/scenario.schema.json`", path.display());
    }

    #[test]
    fn every_shipped_scenario_loads() {
        let layout = crate::layout::Layout::at(repo_root().join("scenarios")).unwrap();
        let all = crate::scenario::compile::discover(&layout).unwrap();
        assert!(all.len() >= 7, "{} scenarios", all.len());
    }

    #[test]
    fn schema_names_the_step_kinds() {
        let text = schema().to_string();
        for k in ["helm-upgrade", "expect-event", "runbook", "lose-zone"] {
            assert!(text.contains(k), "{k} missing from schema");
        }
    }
}
