//! Server-side validation of rendered manifests: a dry-run server-side apply of every
//! object against a real API server.
//!
//! Kinds the server does not know (no CRD installed, e.g. prometheus-operator's
//! `ServiceMonitor`) are reported as [`Outcome::NeedsCrd`] rather than as failures, or, with
//! [`CrdPolicy::InstallMinimal`], get a permissive CRD (`x-kubernetes-preserve-unknown-fields`)
//! installed first so that the rest of the object (names, namespace, metadata) is still
//! checked by the server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::Client;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::wait::WaitError;

/// The field manager used for dry-run applies and CRD installs.
pub const FIELD_MANAGER: &str = "lily-e2e";

/// What the API server said about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The dry-run apply succeeded.
    Accepted,
    /// The server rejected the object (its message, e.g. a validation error).
    Rejected { code: u16, reason: String, message: String },
    /// The server does not serve this kind: a CRD is missing.
    NeedsCrd { group: String, version: String, kind: String },
}

/// One rendered object and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectResult {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub outcome: Outcome,
}

impl ObjectResult {
    /// `Kind namespace/name` (or `Kind name` when cluster-scoped).
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// What to do about kinds the server does not serve.
#[derive(Debug, Clone, Default)]
pub enum CrdPolicy {
    /// Report them as [`Outcome::NeedsCrd`] and skip them.
    #[default]
    Report,
    /// Install these minimal CRDs when an object needs one of them, then validate; other
    /// unknown kinds are still reported.
    InstallMinimal(Vec<MinimalCrd>),
}

/// A permissive CRD: one served, stored version whose schema accepts any object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinimalCrd {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl MinimalCrd {
    /// prometheus-operator's `monitoring.coreos.com/v1` `ServiceMonitor`.
    pub fn service_monitor() -> Self {
        MinimalCrd {
            group: "monitoring.coreos.com".into(),
            version: "v1".into(),
            kind: "ServiceMonitor".into(),
            plural: "servicemonitors".into(),
            namespaced: true,
        }
    }

    /// `<plural>.<group>`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// The CRD object; `labels` go on its metadata (e.g. the run label).
    pub fn to_crd(&self, labels: &BTreeMap<String, String>) -> CustomResourceDefinition {
        let v = serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": { "name": self.name(), "labels": labels },
            "spec": {
                "group": self.group,
                "names": {
                    "kind": self.kind,
                    "listKind": format!("{}List", self.kind),
                    "plural": self.plural,
                    "singular": self.kind.to_lowercase(),
                },
                "scope": if self.namespaced { "Namespaced" } else { "Cluster" },
                "versions": [{
                    "name": self.version,
                    "served": true,
                    "storage": true,
                    "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } },
                }],
            },
        });
        serde_json::from_value(v).expect("a well-formed CustomResourceDefinition")
    }

    fn matches(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind == kind
    }
}

/// Installs `crd` by server-side apply and waits until it is Established.
pub async fn install_crd(client: &Client, crd: &MinimalCrd, labels: &BTreeMap<String, String>, timeout: Duration) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.name();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd.to_crd(labels)))
        .await
        .map_err(Error::kube(format!("install CustomResourceDefinition {name}")))?;
    crate::wait::until(&api, &name, &format!("CustomResourceDefinition {name} to be Established"), timeout, |c| {
        c.is_some_and(crd_established)
    })
    .await?;
    Ok(())
}

fn crd_established(c: &CustomResourceDefinition) -> bool {
    c.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}

/// The group/version/kind of a rendered object.
pub fn gvk_of(doc: &Value) -> Result<GroupVersionKind> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || kind.is_empty() {
        return Err(Error::Invalid(format!("a rendered object has no apiVersion or kind (name {})", name_of(doc))));
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Ok(GroupVersionKind::gvk(group, version, kind))
}

fn name_of(doc: &Value) -> String {
    doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_string()
}

/// Maps an API error for one object to an outcome: "no matches for kind" and a 404 for the
/// resource itself (kind vanished since discovery) mean a missing CRD.
pub fn classify(status: &kube::core::Status, gvk: &GroupVersionKind) -> Outcome {
    let msg = status.message.to_lowercase();
    let needs_crd = msg.contains("no matches for kind")
        || msg.contains("could not find the requested resource")
        || (status.code == 404 && status.reason == "NotFound" && status.details.is_none() && msg.is_empty());
    if needs_crd {
        Outcome::NeedsCrd { group: gvk.group.clone(), version: gvk.version.clone(), kind: gvk.kind.clone() }
    } else {
        Outcome::Rejected { code: status.code, reason: status.reason.clone(), message: status.message.clone() }
    }
}

/// Dry-run server-side applies every object (`PatchParams::apply("lily-e2e").dry_run()`,
/// forced so that fields another manager such as helm owns do not show as conflicts).
/// Namespaced objects without a namespace go to `default_namespace`, which must exist.
/// Returns one result per object, in input order; transport errors end the whole check.
pub async fn dry_run_apply(client: &Client, docs: &[Value], default_namespace: &str, policy: &CrdPolicy) -> Result<Vec<ObjectResult>> {
    dry_run_apply_with(client, docs, default_namespace, policy, &BTreeMap::new(), Duration::from_secs(60)).await
}

/// [`dry_run_apply`] with labels for installed CRDs and a deadline for their establishment.
pub async fn dry_run_apply_with(
    client: &Client,
    docs: &[Value],
    default_namespace: &str,
    policy: &CrdPolicy,
    crd_labels: &BTreeMap<String, String>,
    crd_timeout: Duration,
) -> Result<Vec<ObjectResult>> {
    let gvks: Vec<GroupVersionKind> = docs.iter().map(gvk_of).collect::<Result<_>>()?;
    let groups: BTreeSet<&str> = gvks.iter().map(|g| g.group.as_str()).collect();
    let groups: Vec<&str> = groups.into_iter().collect();
    let mut discovery = discover(client, &groups).await?;

    if let CrdPolicy::InstallMinimal(crds) = policy {
        let mut installed: Vec<&MinimalCrd> = Vec::new();
        for gvk in &gvks {
            if discovery.resolve_gvk(gvk).is_some() {
                continue;
            }
            if let Some(crd) = crds.iter().find(|c| c.matches(&gvk.group, &gvk.kind)) {
                if !installed.contains(&crd) {
                    install_crd(client, crd, crd_labels, crd_timeout).await?;
                    installed.push(crd);
                }
            }
        }
        if !installed.is_empty() {
            // An Established CRD can take a moment to show in discovery.
            let deadline = tokio::time::Instant::now() + crd_timeout;
            loop {
                discovery = discover(client, &groups).await?;
                let missing: Vec<String> = installed
                    .iter()
                    .filter(|c| discovery.resolve_gvk(&GroupVersionKind::gvk(&c.group, &c.version, &c.kind)).is_none())
                    .map(|c| c.name())
                    .collect();
                if missing.is_empty() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(WaitError::Timeout {
                        what: "installed CustomResourceDefinitions to show in API discovery".into(),
                        after: crd_timeout,
                        last_seen: format!("not yet served: {}", missing.join(", ")),
                    }
                    .into());
                }
                // Discovery has no watch: a probe, every 250 ms, under the deadline above.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    let params = PatchParams::apply(FIELD_MANAGER).dry_run().force();
    let mut results = Vec::with_capacity(docs.len());
    for (doc, gvk) in docs.iter().zip(&gvks) {
        let name = name_of(doc);
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let Some((ar, caps)) = discovery.resolve_gvk(gvk) else {
            let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
            results.push(ObjectResult {
                api_version,
                kind: gvk.kind.clone(),
                namespace,
                name,
                outcome: Outcome::NeedsCrd { group: gvk.group.clone(), version: gvk.version.clone(), kind: gvk.kind.clone() },
            });
            continue;
        };
        let (api, namespace): (Api<DynamicObject>, Option<String>) = match caps.scope {
            Scope::Namespaced => {
                let ns = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(default_namespace).to_string();
                (Api::namespaced_with(client.clone(), &ns, &ar), Some(ns))
            }
            Scope::Cluster => (Api::all_with(client.clone(), &ar), None),
        };
        let outcome = match api.patch(&name, &params, &Patch::Apply(doc)).await {
            Ok(_) => Outcome::Accepted,
            Err(kube::Error::Api(status)) => classify(&status, gvk),
            Err(e) => return Err(Error::Kube { what: format!("dry-run apply {} {name}", gvk.kind), source: e }),
        };
        results.push(ObjectResult { api_version, kind: gvk.kind.clone(), namespace, name, outcome });
    }
    Ok(results)
}

async fn discover(client: &Client, groups: &[&str]) -> Result<Discovery> {
    Discovery::new(client.clone()).filter(groups).run().await.map_err(Error::kube("discover the API server's resources"))
}

/// The distinct `(group, kind)` pairs that need a CRD.
pub fn missing_crds(results: &[ObjectResult]) -> Vec<(String, String)> {
    let set: BTreeSet<(String, String)> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::NeedsCrd { group, kind, .. } => Some((group.clone(), kind.clone())),
            _ => None,
        })
        .collect();
    set.into_iter().collect()
}

/// A one-line-per-object report; rejected objects carry the server's message.
pub fn report(results: &[ObjectResult]) -> String {
    results
        .iter()
        .map(|r| match &r.outcome {
            Outcome::Accepted => format!("ok        {}", r.id()),
            Outcome::NeedsCrd { group, kind, .. } => {
                format!("needs-crd {} ({kind}.{group} is not served)", r.id())
            }
            Outcome::Rejected { code, message, .. } => {
                format!("rejected  {} ({code}): {message}", r.id())
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> kube::core::Status {
        serde_json::from_value(serde_json::json!({"status": "Failure", "code": code, "reason": reason, "message": message})).unwrap()
    }

    #[test]
    fn missing_kinds_map_to_needs_crd() {
        let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
        for s in [
            status(404, "NotFound", "the server could not find the requested resource"),
            status(400, "BadRequest", "no matches for kind \"ServiceMonitor\" in version \"monitoring.coreos.com/v1\""),
        ] {
            assert_eq!(
                classify(&s, &gvk),
                Outcome::NeedsCrd { group: "monitoring.coreos.com".into(), version: "v1".into(), kind: "ServiceMonitor".into() }
            );
        }
        let invalid = status(422, "Invalid", "StatefulSet.apps \"x\" is invalid: spec.replicas: Invalid value: -1");
        assert!(matches!(classify(&invalid, &gvk), Outcome::Rejected { code: 422, .. }));
        let ns = status(404, "NotFound", "namespaces \"lily\" not found");
        assert!(matches!(classify(&ns, &gvk), Outcome::Rejected { code: 404, .. }), "a missing namespace is not a missing CRD");
    }

    #[test]
    fn gvk_is_read_from_api_version() {
        let g = gvk_of(&serde_json::json!({"apiVersion": "v1", "kind": "Secret"})).unwrap();
        assert_eq!((g.group.as_str(), g.version.as_str(), g.kind.as_str()), ("", "v1", "Secret"));
        let g = gvk_of(&serde_json::json!({"apiVersion": "apps/v1", "kind": "StatefulSet"})).unwrap();
        assert_eq!((g.group.as_str(), g.version.as_str()), ("apps", "v1"));
        assert!(gvk_of(&serde_json::json!({"kind": "Secret"})).is_err());
    }

    #[test]
    fn minimal_service_monitor_crd_is_permissive() {
        let labels = BTreeMap::from([("lily-e2e.io/run-id".to_string(), "r1".to_string())]);
        let crd = MinimalCrd::service_monitor().to_crd(&labels);
        assert_eq!(crd.metadata.name.as_deref(), Some("servicemonitors.monitoring.coreos.com"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "ServiceMonitor");
        let v = &crd.spec.versions[0];
        assert!(v.served && v.storage);
        let schema = v.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
        assert_eq!(schema.x_kubernetes_preserve_unknown_fields, Some(true));
        assert_eq!(crd.metadata.labels.unwrap()["lily-e2e.io/run-id"], "r1");
    }

    // The dry-run itself is tested against a real API server (tests/validate.rs), never a fake.
}
