//! The sim controllers' shared view of the cluster: one reflector per resource kind,
//! waking the controllers that depend on it after every change.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::log::DecisionLog;
use crate::error::{Error, Result};

/// The controllers' wake-ups. A notification while a controller is busy is kept (one
/// permit), so bursts of changes coalesce into one more reconcile.
#[derive(Clone)]
pub(super) struct Wakes {
    pub provisioner: Arc<Notify>,
    pub attacher: Arc<Notify>,
    pub kubelet: Arc<Notify>,
}

#[derive(Clone)]
pub(super) struct World {
    /// Scheduled pods only (`spec.nodeName` set).
    pub pods: Store<Pod>,
    pub pvcs: Store<PersistentVolumeClaim>,
    pub pvs: Store<PersistentVolume>,
    pub nodes: Store<Node>,
    pub vas: Store<VolumeAttachment>,
}

impl World {
    pub fn start(client: &Client, w: &Wakes, log: &DecisionLog) -> (World, Vec<JoinHandle<()>>) {
        let mut tasks = Vec::new();
        let all = || vec![w.provisioner.clone(), w.attacher.clone(), w.kubelet.clone()];
        let pods = reflect(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields("spec.nodeName!="),
            vec![w.kubelet.clone()],
            log,
            &mut tasks,
        );
        let pvcs = reflect(Api::all(client.clone()), Default::default(), vec![w.provisioner.clone(), w.kubelet.clone()], log, &mut tasks);
        let pvs = reflect(Api::all(client.clone()), Default::default(), all(), log, &mut tasks);
        let nodes = reflect(Api::all(client.clone()), Default::default(), all(), log, &mut tasks);
        let vas = reflect(Api::all(client.clone()), Default::default(), vec![w.provisioner.clone(), w.attacher.clone()], log, &mut tasks);
        (World { pods, pvcs, pvs, nodes, vas }, tasks)
    }

    /// Resolves once every reflector has listed its objects.
    pub async fn ready(&self) -> Result<()> {
        let dropped = |_| Error::Tool { what: "a sim cloud watch ended before it listed the cluster".into(), source: None };
        self.pods.wait_until_ready().await.map_err(dropped)?;
        self.pvcs.wait_until_ready().await.map_err(dropped)?;
        self.pvs.wait_until_ready().await.map_err(dropped)?;
        self.nodes.wait_until_ready().await.map_err(dropped)?;
        self.vas.wait_until_ready().await.map_err(dropped)?;
        Ok(())
    }

    /// Object counts, for a start timeout.
    pub fn describe(&self) -> String {
        format!(
            "{} scheduled pods, {} PVCs, {} PVs, {} nodes, {} VolumeAttachments listed",
            self.pods.len(),
            self.pvcs.len(),
            self.pvs.len(),
            self.nodes.len(),
            self.vas.len()
        )
    }
}

fn reflect<K>(api: Api<K>, config: watcher::Config, wake: Vec<Arc<Notify>>, log: &DecisionLog, tasks: &mut Vec<JoinHandle<()>>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&Default::default()).to_string();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let log = log.clone();
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                    for w in &wake {
                        w.notify_one();
                    }
                }
                Ok(_) => {}
                // The backoff retries; a broken watch only delays the controllers.
                Err(e) => log.record("watch", format!("{kind} watch failed, retrying: {e}")),
            }
        }
    }));
    store
}

/// A resource version as a number, to tell whether a store has caught up with a write.
/// (Opaque by contract; etcd revisions in practice. Unparseable means "unknown".)
pub(super) fn rv_of<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref().and_then(|s| s.parse().ok())
}

/// Whether the cached `obj` predates a write that returned resource version `written`.
pub(super) fn stale<K: Resource>(obj: &K, written: Option<u64>) -> bool {
    matches!((rv_of(obj), written), (Some(seen), Some(w)) if seen < w)
}
