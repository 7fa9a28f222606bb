//! Failure artifacts: what a maintainer needs to see why a scenario failed.
//!
//! Written to `<artifacts>/<scenario>/`: events, a describe-equivalent of every pod in the
//! namespace (status, conditions, events), StatefulSets, PVCs, PVs, VolumeAttachments,
//! nodes, `helm history` / `helm status`, and the control-plane component logs. Secrets are
//! never written (only their names and keys).

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::error::{Error, Result};

/// Collects artifacts; each part is best-effort (a failing part is noted, not fatal).
pub struct Collector<'a> {
    pub client: &'a Client,
    pub namespace: &'a str,
    pub dir: PathBuf,
    pub notes: Vec<String>,
}

impl<'a> Collector<'a> {
    pub fn new(client: &'a Client, namespace: &'a str, dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create artifacts directory {}", dir.display())))?;
        Ok(Collector { client, namespace, dir, notes: Vec::new() })
    }

    fn write(&mut self, name: &str, text: &str) {
        let p = self.dir.join(name);
        if let Err(e) = std::fs::write(&p, text) {
            self.notes.push(format!("cannot write {}: {e}", p.display()));
        }
    }

    fn write_yaml<T: Serialize>(&mut self, name: &str, value: &T) {
        match crate::yaml::to_string(value) {
            Ok(t) => self.write(name, &t),
            Err(e) => self.notes.push(format!("cannot encode {name}: {e}")),
        }
    }

    async fn list<K>(&mut self, api: Api<K>, name: &str) -> Vec<K>
    where
        K: Clone + std::fmt::Debug + serde::de::DeserializeOwned + Serialize + kube::Resource,
    {
        match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                self.notes.push(format!("cannot list {name}: {e}"));
                Vec::new()
            }
        }
    }

    /// Everything from the cluster. `helm` holds `(file name, text)` pairs the runner got
    /// from the helm driver; `logs` are component log files to copy.
    pub async fn collect(mut self, helm: Vec<(String, String)>, logs: &[PathBuf]) -> PathBuf {
        let c = self.client.clone();
        let ns = self.namespace;
        let mut events = self.list(Api::<Event>::namespaced(c.clone(), ns), "events").await;
        events.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0).or(e.event_time.as_ref().map(|t| t.0)));
        let ev_text: String = events
            .iter()
            .map(|e| {
                format!(
                    "{} {}/{} {} {}: {}\n",
                    e.type_.as_deref().unwrap_or(""),
                    e.involved_object.kind.as_deref().unwrap_or(""),
                    e.involved_object.name.as_deref().unwrap_or(""),
                    e.reason.as_deref().unwrap_or(""),
                    e.count.unwrap_or(1),
                    e.message.as_deref().unwrap_or("")
                )
            })
            .collect();
        self.write("events.txt", &ev_text);

        let pods = self.list(Api::<Pod>::namespaced(c.clone(), ns), "pods").await;
        let mut describe = String::new();
        for p in &pods {
            describe.push_str(&describe_pod(p, &events));
            describe.push('\n');
        }
        self.write("pods.txt", &describe);
        self.write_yaml("pods.yaml", &pods);
        let sts = self.list(Api::<StatefulSet>::namespaced(c.clone(), ns), "statefulsets").await;
        self.write_yaml("statefulsets.yaml", &sts);
        let pvcs = self.list(Api::<PersistentVolumeClaim>::namespaced(c.clone(), ns), "persistentvolumeclaims").await;
        self.write_yaml("persistentvolumeclaims.yaml", &pvcs);
        let pvs = self.list(Api::<PersistentVolume>::all(c.clone()), "persistentvolumes").await;
        self.write_yaml("persistentvolumes.yaml", &pvs);
        let vas = self.list(Api::<VolumeAttachment>::all(c.clone()), "volumeattachments").await;
        self.write_yaml("volumeattachments.yaml", &vas);
        let nodes = self.list(Api::<Node>::all(c.clone()), "nodes").await;
        self.write_yaml("nodes.yaml", &nodes);
        // Secrets: names and keys only.
        let secrets = self.list(Api::<Secret>::namespaced(c.clone(), ns), "secrets").await;
        let names: Vec<String> = secrets
            .iter()
            .map(|s| {
                format!("{} keys={:?}", s.name_any(), s.data.as_ref().map(|d| d.keys().cloned().collect::<Vec<_>>()).unwrap_or_default())
            })
            .collect();
        self.write("secrets.txt", &names.join("\n"));
        for (name, text) in helm {
            self.write(&name, &text);
        }
        let logdir = self.dir.join("logs");
        let _ = std::fs::create_dir_all(&logdir);
        for l in logs {
            if let Some(n) = l.file_name() {
                if let Err(e) = std::fs::copy(l, logdir.join(n)) {
                    self.notes.push(format!("cannot copy {}: {e}", l.display()));
                }
            }
        }
        if !self.notes.is_empty() {
            let notes = self.notes.join("\n");
            self.write("collection-notes.txt", &notes);
        }
        self.dir
    }
}

/// A `kubectl describe pod`-like text: phase, node, conditions, container states, events.
pub fn describe_pod(p: &Pod, events: &[Event]) -> String {
    let mut s = format!("Pod {}\n", p.name_any());
    let st = p.status.clone().unwrap_or_default();
    s.push_str(&format!("  Phase: {}\n", st.phase.as_deref().unwrap_or("?")));
    s.push_str(&format!("  Node: {}\n", p.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("<none>")));
    if let Some(vols) = p.spec.as_ref().and_then(|s| s.volumes.as_ref()) {
        for v in vols {
            if let Some(c) = &v.persistent_volume_claim {
                s.push_str(&format!("  Volume {}: ClaimName: {}\n", v.name, c.claim_name));
            }
        }
    }
    for c in st.conditions.unwrap_or_default() {
        s.push_str(&format!("  Condition {}={} {} {}\n", c.type_, c.status, c.reason.unwrap_or_default(), c.message.unwrap_or_default()));
    }
    for cs in st.init_container_statuses.unwrap_or_default().into_iter().chain(st.container_statuses.unwrap_or_default()) {
        s.push_str(&format!("  Container {} ready={} state={}\n", cs.name, cs.ready, serde_json::to_string(&cs.state).unwrap_or_default()));
    }
    for e in events
        .iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("Pod") && e.involved_object.name.as_deref() == Some(&p.name_any()))
    {
        s.push_str(&format!(
            "  Event {} {}: {}\n",
            e.type_.as_deref().unwrap_or(""),
            e.reason.as_deref().unwrap_or(""),
            e.message.as_deref().unwrap_or("")
        ));
    }
    s
}

/// `<base>/<scenario name with / replaced>`.
pub fn dir_for(base: &Path, test_name: &str) -> PathBuf {
    base.join(test_name.replace('/', "__"))
}
