// Over 500 lines on purpose: one driver (StorageClass, provisioner, attacher) sharing its PersistentVolume helpers.
//! The zonal block-storage driver: its StorageClass, an external provisioner and an
//! external attacher, as the real sidecars of a cloud CSI driver would behave.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::log::DecisionLog;
use super::world::{rv_of, stale, World};
use super::{SimOptions, ATTACHER_FINALIZER, DRIVER, PROVISIONED_BY};
use crate::error::{Error, Result};
use crate::labels::ZONE_LABEL;
use crate::run::{RunId, RUN_LABEL};

/// Annotations the PV controller (kube-controller-manager) puts on a claim it hands to an
/// external provisioner; the beta one for older controllers.
const STORAGE_PROVISIONER: [&str; 2] = ["volume.kubernetes.io/storage-provisioner", "volume.beta.kubernetes.io/storage-provisioner"];
/// Set by the scheduler on a `WaitForFirstConsumer` claim once it picked a node.
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const FIELD_MANAGER: &str = "lily-e2e-sim";
/// How soon a failed API call is retried when no watch event comes first.
const RETRY: Duration = Duration::from_secs(1);

/// Registers (server-side applies) the driver's StorageClass.
pub(super) async fn apply_storage_class(client: &Client, run: &RunId, opts: &SimOptions, log: &DecisionLog) -> Result<()> {
    let sc = storage_class(run, opts);
    let api: Api<StorageClass> = Api::all(client.clone());
    api.patch(&opts.storage_class, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&sc))
        .await
        .map_err(Error::kube(format!("register StorageClass {}", opts.storage_class)))?;
    log.record(
        "storage",
        format!(
            "registered StorageClass {} (provisioner {DRIVER}, WaitForFirstConsumer, reclaim Delete{})",
            opts.storage_class,
            if opts.default_class { ", default class" } else { "" }
        ),
    );
    Ok(())
}

pub(super) fn storage_class(run: &RunId, opts: &SimOptions) -> StorageClass {
    let mut annotations = BTreeMap::new();
    if opts.default_class {
        annotations.insert(DEFAULT_CLASS.to_string(), "true".to_string());
    }
    StorageClass {
        metadata: ObjectMeta {
            name: Some(opts.storage_class.clone()),
            labels: Some([(RUN_LABEL.to_string(), run.to_string())].into()),
            annotations: Some(annotations),
            ..Default::default()
        },
        provisioner: DRIVER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        parameters: Some([("type".to_string(), "gp2".to_string()), ("csi.storage.k8s.io/fstype".to_string(), "ext4".to_string())].into()),
        ..Default::default()
    }
}

/// Waits for a wake-up, or until `retry` if a reconcile asked to be retried.
async fn wait(wake: &Notify, retry: Option<Instant>) {
    match retry {
        Some(at) => tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(at) => {}
        },
        None => wake.notified().await,
    }
}

/// Logs `msg` for `key` unless it is what was last logged for it (failing reconciles
/// repeat; the log should not).
fn once(seen: &mut HashMap<String, String>, log: &DecisionLog, component: &str, key: &str, msg: String) {
    if seen.get(key) != Some(&msg) {
        log.record(component, &msg);
        seen.insert(key.to_string(), msg);
    }
}

// ---------------------------------------------------------------------------------------
// Provisioner

/// What the provisioner needs of a claim handed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Claim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub storage_class: String,
    pub selected_node: Option<String>,
}

/// The claim, if it waits for this driver to provision it.
pub(super) fn claim_to_provision(pvc: &PersistentVolumeClaim) -> Option<Claim> {
    let ann = pvc.metadata.annotations.as_ref()?;
    if !STORAGE_PROVISIONER.iter().any(|k| ann.get(*k).map(String::as_str) == Some(DRIVER)) {
        return None;
    }
    if pvc.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pvc.spec.as_ref()?;
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return None;
    }
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
        return None;
    }
    Some(Claim {
        namespace: pvc.namespace()?,
        name: pvc.name_any(),
        uid: pvc.uid()?,
        storage_class: spec.storage_class_name.clone()?,
        selected_node: ann.get(SELECTED_NODE).cloned(),
    })
}

/// The PV name an external provisioner uses for a claim.
pub(super) fn pv_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// A fresh EBS-style volume id.
fn volume_handle() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("vol-{:017x}", n & ((1u128 << 68) - 1))
}

/// The PV for `pvc`, pinned to `zone`.
pub(super) fn build_pv(
    pvc: &PersistentVolumeClaim,
    sc: &StorageClass,
    zone: &str,
    handle: &str,
    run: Option<&str>,
) -> std::result::Result<PersistentVolume, String> {
    let spec = pvc.spec.as_ref().ok_or("the claim has no spec")?;
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .ok_or("the claim requests no storage size")?;
    let block = spec.volume_mode.as_deref() == Some("Block");
    let fs_type = sc.parameters.as_ref().and_then(|p| p.get("csi.storage.k8s.io/fstype")).cloned().unwrap_or_else(|| "ext4".into());
    let mut labels = BTreeMap::new();
    if let Some(run) = run {
        labels.insert(RUN_LABEL.to_string(), run.to_string());
    }
    Ok(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name(&pvc.uid().unwrap_or_default())),
            labels: Some(labels),
            annotations: Some([(PROVISIONED_BY.to_string(), DRIVER.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: Some([("storage".to_string(), size)].into()),
            csi: Some(CSIPersistentVolumeSource {
                driver: DRIVER.into(),
                volume_handle: handle.into(),
                fs_type: if block { None } else { Some(fs_type) },
                ..Default::default()
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: pvc.namespace(),
                name: Some(pvc.name_any()),
                uid: pvc.uid(),
                resource_version: pvc.resource_version(),
                ..Default::default()
            }),
            persistent_volume_reclaim_policy: Some(sc.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())),
            storage_class_name: Some(sc.name_any()),
            mount_options: sc.mount_options.clone(),
            volume_mode: spec.volume_mode.clone(),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: ZONE_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![zone.into()]),
                        }]),
                        ..Default::default()
                    }],
                }),
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// The zones a PV is pinned to (empty: anywhere).
pub(super) fn pv_zones(pv: &PersistentVolume) -> Vec<String> {
    let terms = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default();
    terms
        .iter()
        .flat_map(|t| t.match_expressions.clone().unwrap_or_default())
        .filter(|e| e.key == ZONE_LABEL && e.operator == "In")
        .flat_map(|e| e.values.unwrap_or_default())
        .collect()
}

fn node_zone(node: &Node) -> Option<String> {
    node.labels().get(ZONE_LABEL).cloned()
}

/// Whether `pv` was provisioned by this driver, was released by its claim and is to be
/// deleted.
pub(super) fn released_for_deletion(pv: &PersistentVolume) -> bool {
    pv.metadata.deletion_timestamp.is_none()
        && pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(DRIVER)
        && pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
        && pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete")
}

fn handle_of(pv: &PersistentVolume) -> String {
    pv.spec.as_ref().and_then(|s| s.csi.as_ref()).map(|c| c.volume_handle.clone()).unwrap_or_default()
}

struct Provisioner {
    pvs: Api<PersistentVolume>,
    scs: Api<StorageClass>,
    run: Option<String>,
    /// Last message logged per claim / PV, so a retried failure logs once.
    said: HashMap<String, String>,
}

pub(super) async fn provisioner(client: Client, world: World, wake: Arc<Notify>, log: DecisionLog, run: RunId) {
    let mut p = Provisioner { pvs: Api::all(client.clone()), scs: Api::all(client), run: Some(run.to_string()), said: HashMap::new() };
    loop {
        let retry = p.reconcile(&world, &log).await;
        wait(&wake, retry).await;
    }
}

impl Provisioner {
    async fn reconcile(&mut self, world: &World, log: &DecisionLog) -> Option<Instant> {
        let mut retry = None;
        for pvc in world.pvcs.state() {
            let Some(claim) = claim_to_provision(&pvc) else {
                continue;
            };
            let name = pv_name(&claim.uid);
            if world.pvs.get(&ObjectRef::new(&name)).is_some() {
                continue;
            }
            if let Err(again) = self.provision(world, log, &pvc, &claim, &name).await {
                if again {
                    retry = Some(Instant::now() + RETRY);
                }
            }
        }
        for pv in world.pvs.state() {
            if !released_for_deletion(&pv) {
                continue;
            }
            let name = pv.name_any();
            let attached: Vec<String> = world
                .vas
                .state()
                .iter()
                .filter(|va| va.spec.source.persistent_volume_name.as_deref() == Some(name.as_str()))
                .map(|va| va.spec.node_name.clone())
                .collect();
            if !attached.is_empty() {
                let msg = format!("deferred deleting released PV {name} ({}): still attached to {}", handle_of(&pv), attached.join(", "));
                once(&mut self.said, log, "provisioner", &name, msg);
                continue;
            }
            match self.pvs.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    let claim = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                    let claim =
                        claim.map(|c| format!("{}/{}", c.namespace.clone().unwrap_or_default(), c.name.clone().unwrap_or_default()));
                    log.record(
                        "provisioner",
                        format!("deleted released PV {name} (volume {}, was claim {})", handle_of(&pv), claim.unwrap_or_default()),
                    );
                    self.said.remove(&name);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    once(&mut self.said, log, "provisioner", &name, format!("cannot delete released PV {name}: {e}"));
                    retry = Some(Instant::now() + RETRY);
                }
            }
        }
        retry
    }

    /// Creates the PV of one claim. `Err(true)`: retry on a timer; `Err(false)`: a watch
    /// event will bring the missing piece.
    async fn provision(
        &mut self,
        world: &World,
        log: &DecisionLog,
        pvc: &PersistentVolumeClaim,
        claim: &Claim,
        name: &str,
    ) -> std::result::Result<(), bool> {
        let key = format!("{}/{}", claim.namespace, claim.name);
        let (zone, node) = match &claim.selected_node {
            Some(node) => match world.nodes.get(&ObjectRef::new(node)) {
                Some(n) => match node_zone(&n) {
                    Some(z) => (z, node.clone()),
                    None => {
                        once(
                            &mut self.said,
                            log,
                            "provisioner",
                            &key,
                            format!("cannot provision claim {key}: selected node {node} has no {ZONE_LABEL} label"),
                        );
                        return Err(false);
                    }
                },
                None => return Err(false),
            },
            // Immediate binding: any zone with a node.
            None => {
                let mut nodes = world.nodes.state();
                nodes.sort_by_key(|n| n.name_any());
                match nodes.iter().find_map(|n| node_zone(n).map(|z| (z, n.name_any()))) {
                    Some((z, n)) => (z, format!("{n} (immediate binding)")),
                    None => return Err(false),
                }
            }
        };
        let sc = match self.scs.get_opt(&claim.storage_class).await {
            Ok(Some(sc)) => sc,
            Ok(None) => {
                once(
                    &mut self.said,
                    log,
                    "provisioner",
                    &key,
                    format!("cannot provision claim {key}: StorageClass {} not found", claim.storage_class),
                );
                return Err(true);
            }
            Err(e) => {
                once(&mut self.said, log, "provisioner", &key, format!("cannot provision claim {key}: get StorageClass: {e}"));
                return Err(true);
            }
        };
        let handle = volume_handle();
        let pv = match build_pv(pvc, &sc, &zone, &handle, self.run.as_deref()) {
            Ok(pv) => pv,
            Err(why) => {
                once(&mut self.said, log, "provisioner", &key, format!("cannot provision claim {key}: {why}"));
                return Err(false);
            }
        };
        match self.pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => {
                let spec = pv.spec.as_ref().expect("built with a spec");
                let size = spec.capacity.as_ref().and_then(|c| c.get("storage")).map(|q| q.0.clone()).unwrap_or_default();
                let modes = spec.access_modes.clone().unwrap_or_default().join(",");
                log.record(
                    "provisioner",
                    format!(
                        "provisioned PV {name} (volume {handle}, {size}, {modes}) for claim {key} in zone {zone} (selected node {node})"
                    ),
                );
                self.said.remove(&key);
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => {
                once(&mut self.said, log, "provisioner", &key, format!("cannot create PV {name} for claim {key}: {e}"));
                Err(true)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Attacher

/// What the cloud answers to "attach this volume to this instance".
pub(super) fn attach_verdict(
    va: &VolumeAttachment,
    pv: &PersistentVolume,
    node: Option<&Node>,
    all: &[Arc<VolumeAttachment>],
) -> std::result::Result<(), String> {
    let handle = handle_of(pv);
    let node_name = &va.spec.node_name;
    let Some(node) = node else {
        return Err(format!("instance {node_name} not found"));
    };
    let zones = pv_zones(pv);
    let zone = node_zone(node);
    if !zones.is_empty() && !zone.as_ref().is_some_and(|z| zones.contains(z)) {
        return Err(format!(
            "volume {handle} is in zone {} and cannot be attached to instance {node_name} in zone {}",
            zones.join(","),
            zone.unwrap_or_else(|| "(none)".into())
        ));
    }
    let pv_name = pv.name_any();
    if let Some(other) = all.iter().find(|o| {
        o.spec.attacher == DRIVER
            && o.spec.node_name != *node_name
            && o.spec.source.persistent_volume_name.as_deref() == Some(pv_name.as_str())
            && o.metadata.deletion_timestamp.is_none()
            && o.status.as_ref().is_some_and(|s| s.attached)
    }) {
        return Err(format!("volume {handle} is already attached to instance {}", other.spec.node_name));
    }
    Ok(())
}

struct Attacher {
    api: Api<VolumeAttachment>,
    /// The resource version each VolumeAttachment had after our last write to it: a cached
    /// copy older than that is not acted on again.
    written: HashMap<String, Option<u64>>,
    said: HashMap<String, String>,
}

pub(super) async fn attacher(client: Client, world: World, wake: Arc<Notify>, log: DecisionLog) {
    let mut a = Attacher { api: Api::all(client), written: HashMap::new(), said: HashMap::new() };
    loop {
        let retry = a.reconcile(&world, &log).await;
        wait(&wake, retry).await;
    }
}

impl Attacher {
    async fn reconcile(&mut self, world: &World, log: &DecisionLog) -> Option<Instant> {
        let all = world.vas.state();
        let live: HashSet<String> = all.iter().map(|v| v.name_any()).collect();
        self.written.retain(|k, _| live.contains(k));
        self.said.retain(|k, _| live.contains(k));
        let mut retry = None;
        for va in all.iter().filter(|v| v.spec.attacher == DRIVER) {
            let name = va.name_any();
            if self.written.get(&name).is_some_and(|w| stale(va.as_ref(), *w)) {
                continue;
            }
            match self.sync(world, log, va, &all).await {
                Ok(Some(rv)) => {
                    self.written.insert(name, rv);
                }
                Ok(None) => {}
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                Err(e) => {
                    once(&mut self.said, log, "attacher", &name, format!("VolumeAttachment {name}: {e}"));
                    retry = Some(Instant::now() + RETRY);
                }
            }
        }
        retry
    }

    /// Brings one VolumeAttachment in line; after a write, returns `Some` of the resource
    /// version it left.
    async fn sync(
        &mut self,
        world: &World,
        log: &DecisionLog,
        va: &VolumeAttachment,
        all: &[Arc<VolumeAttachment>],
    ) -> std::result::Result<Option<Option<u64>>, kube::Error> {
        let name = va.name_any();
        let node = &va.spec.node_name;
        let pv_name = va.spec.source.persistent_volume_name.clone().unwrap_or_default();
        let finalizers = va.finalizers().to_vec();
        let ours = finalizers.iter().any(|f| f == ATTACHER_FINALIZER);
        if va.metadata.deletion_timestamp.is_some() {
            if !ours {
                return Ok(None);
            }
            // Detach: the cloud detaches at once; then the finalizer goes.
            let rest: Vec<String> = finalizers.into_iter().filter(|f| f != ATTACHER_FINALIZER).collect();
            let patch = json!({"metadata": {"resourceVersion": va.resource_version(), "finalizers": rest}});
            let out = self.api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            log.record("attacher", format!("detached PV {pv_name} from node {node} (VolumeAttachment {name})"));
            return Ok(Some(rv_of(&out)));
        }
        // Inline volume specs (CSI migration) are not ours; without the PV there is nothing to attach yet.
        let Some(pv) = world.pvs.get(&ObjectRef::new(&pv_name)) else {
            return Ok(None);
        };
        let node_obj = world.nodes.get(&ObjectRef::new(node));
        let status = va.status.clone().unwrap_or_default();
        match attach_verdict(va, &pv, node_obj.as_deref(), all) {
            Err(why) => {
                if status.attach_error.as_ref().and_then(|e| e.message.as_deref()) == Some(why.as_str()) && !status.attached {
                    return Ok(None);
                }
                let patch = json!({"status": {"attached": false, "attachError": {"message": why, "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}}});
                let out = self.api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                log.record("attacher", format!("refused to attach PV {pv_name} to node {node} (VolumeAttachment {name}): {why}"));
                Ok(Some(rv_of(&out)))
            }
            Ok(()) => {
                let mut wrote = None;
                if !ours {
                    let mut fins = finalizers;
                    fins.push(ATTACHER_FINALIZER.to_string());
                    let patch = json!({"metadata": {"resourceVersion": va.resource_version(), "finalizers": fins}});
                    let out = self.api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                    wrote = Some(rv_of(&out));
                }
                if !status.attached || status.attach_error.is_some() {
                    let patch = json!({"status": {"attached": true, "attachError": null}});
                    let out = self.api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                    wrote = Some(rv_of(&out));
                    log.record(
                        "attacher",
                        format!("attached PV {pv_name} (volume {}) to node {node} (VolumeAttachment {name})", handle_of(&pv)),
                    );
                }
                Ok(wrote)
            }
        }
    }
}

#[cfg(test)]
mod tests;
