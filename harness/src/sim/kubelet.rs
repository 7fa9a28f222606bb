//! The kubelet's share of volume state on simulated nodes, which kwok does not keep:
//! `node.status.volumesInUse` and mount gating.
//!
//! A CSI volume is in use on node N while a running (not terminating) pod bound to N uses
//! it, and for N's unmount delay after the last such pod terminated (never, if N's unmount
//! is stuck). The attach/detach
//! controller does not detach a volume its node still reports in use; that is what makes
//! a replacement pod on another node hit a real "Multi-Attach error".
//!
//! A pod is mounted (annotated [`MOUNTED_ANNOTATION`]) once all its CSI volumes are in its
//! node's `status.volumesAttached`; kwok starts no pod before that. A terminating pod is
//! annotated [`UNMOUNTED_ANNOTATION`] once the node's volumesInUse reflects its end (with no
//! unmount delay: without its volumes); kwok deletes no pod before that, as a real kubelet
//! keeps the pod object until its volumes are torn down. So with no delay the node stops
//! reporting the volume in use before the pod is gone and a replacement can appear.
//!
//! A simulated node whose kwok management label is gone is dead: its kubelet state freezes
//! (no volumesInUse updates, no mounts) until the label returns.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::log::DecisionLog;
use super::world::{rv_of, stale, World};
use super::{csi_unique_name, Knobs, NodeKnobs, MOUNTED_ANNOTATION, UNMOUNTED_ANNOTATION};
use crate::labels::{KWOK_LABEL, SIMULATED_NODE_ANNOTATION as SIMULATED_NODE};

const RETRY: Duration = Duration::from_secs(1);

/// A node as the sim kubelet sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    /// Not a simulated node: some other kubelet's business.
    NotSimulated,
    Live,
    /// Heartbeat stopped (management label removed): the kubelet is gone.
    Dead,
}

pub(super) fn life(node: &Node) -> Life {
    if node.annotations().get(SIMULATED_NODE.0).map(String::as_str) != Some(SIMULATED_NODE.1) {
        return Life::NotSimulated;
    }
    if node.labels().get(KWOK_LABEL.0).map(String::as_str) == Some(KWOK_LABEL.1) {
        Life::Live
    } else {
        Life::Dead
    }
}

fn terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The claims a pod's volumes name: `persistentVolumeClaim` volumes and generic ephemeral
/// volumes (claim `<pod>-<volume>`).
pub(super) fn claim_names(pod: &Pod) -> Vec<String> {
    let pod_name = pod.name_any();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(|vs| {
            vs.iter()
                .filter_map(|v| match (&v.persistent_volume_claim, &v.ephemeral) {
                    (Some(c), _) => Some(c.claim_name.clone()),
                    (None, Some(_)) => Some(format!("{pod_name}-{}", v.name)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The kubelet's unique names of a pod's CSI volumes, or why they cannot be known yet.
pub(super) fn pod_volumes(
    pod: &Pod,
    pvc: impl Fn(&str, &str) -> Option<Arc<PersistentVolumeClaim>>,
    pv: impl Fn(&str) -> Option<Arc<PersistentVolume>>,
) -> Result<BTreeSet<String>, String> {
    let ns = pod.namespace().unwrap_or_default();
    let mut out = BTreeSet::new();
    for claim in claim_names(pod) {
        let Some(c) = pvc(&ns, &claim) else {
            return Err(format!("claim {ns}/{claim} does not exist (yet)"));
        };
        let Some(vol) = c.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty()) else {
            return Err(format!("claim {ns}/{claim} is not bound yet"));
        };
        let Some(p) = pv(&vol) else {
            return Err(format!("PV {vol} of claim {ns}/{claim} is not known yet"));
        };
        if let Some(csi) = p.spec.as_ref().and_then(|s| s.csi.as_ref()) {
            out.insert(csi_unique_name(&csi.driver, &csi.volume_handle));
        }
    }
    Ok(out)
}

/// One node's volumes the kubelet considers in use: `None` while a pod uses it, or since
/// when no pod has.
#[derive(Debug, Default)]
pub(super) struct NodeVolumes {
    vols: BTreeMap<String, Option<Instant>>,
    adopted: bool,
}

/// What one [`NodeVolumes::step`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Step {
    /// The node's volumesInUse now.
    pub in_use: BTreeSet<String>,
    /// Newly used by a pod.
    pub added: Vec<String>,
    /// Used again before its release.
    pub reused: Vec<String>,
    /// No longer used by any pod; release pending.
    pub unused: Vec<String>,
    /// Released (unmounted): gone from volumesInUse.
    pub released: Vec<String>,
    /// When the next pending release is due.
    pub next: Option<Instant>,
}

impl NodeVolumes {
    /// Advances the node's state to `now`, given the volumes its pods use, what the node
    /// reported before the sim first saw it (adopted once, as unused), and its knobs.
    pub fn step(&mut self, used: &BTreeSet<String>, reported: &[String], now: Instant, knobs: NodeKnobs) -> Step {
        let mut s = Step::default();
        for v in used {
            match self.vols.insert(v.clone(), None) {
                None => s.added.push(v.clone()),
                Some(Some(_)) => s.reused.push(v.clone()),
                Some(None) => {}
            }
        }
        if !self.adopted {
            for v in reported {
                self.vols.entry(v.clone()).or_insert(Some(now));
            }
            self.adopted = true;
        }
        for (v, since) in self.vols.iter_mut() {
            if since.is_none() && !used.contains(v) {
                *since = Some(now);
                s.unused.push(v.clone());
            }
        }
        self.vols.retain(|v, since| match since {
            None => true,
            Some(_) if knobs.unmount_stuck => true,
            Some(t) => {
                let due = *t + knobs.unmount_delay;
                if now >= due {
                    s.released.push(v.clone());
                    false
                } else {
                    s.next = Some(s.next.map_or(due, |n| n.min(due)));
                    true
                }
            }
        });
        s.in_use = self.vols.keys().cloned().collect();
        s
    }
}

/// A scheduled pod and its CSI volumes (or why they are not known yet).
type PodVolumes = (Arc<Pod>, Result<BTreeSet<String>, String>);

#[derive(Default)]
struct NodeState {
    vols: NodeVolumes,
    /// What the sim last wrote to volumesInUse, and the node's resource version after.
    written: Option<(BTreeSet<String>, Option<u64>)>,
}

struct Kubelet {
    client: Client,
    nodes_api: Api<Node>,
    nodes: HashMap<String, NodeState>,
    dead: HashSet<String>,
    /// Pod uid -> resource version after the sim annotated it (mounted, or unmounted).
    mounted: HashMap<String, Option<u64>>,
    unmounted: HashMap<String, Option<u64>>,
    said: HashMap<String, String>,
}

pub(super) async fn kubelet(client: Client, world: World, wake: Arc<Notify>, knobs: Knobs, log: DecisionLog) {
    let mut k = Kubelet {
        nodes_api: Api::all(client.clone()),
        client,
        nodes: HashMap::new(),
        dead: HashSet::new(),
        mounted: HashMap::new(),
        unmounted: HashMap::new(),
        said: HashMap::new(),
    };
    loop {
        let next = k.reconcile(&world, &knobs, &log).await;
        match next {
            Some(at) => tokio::select! {
                _ = wake.notified() => {}
                // A scheduled unmount (simulated kubelet behaviour), or a retry.
                _ = tokio::time::sleep_until(at) => {}
            },
            None => wake.notified().await,
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Kubelet {
    fn once(&mut self, log: &DecisionLog, key: &str, msg: String) {
        if self.said.get(key) != Some(&msg) {
            log.record("kubelet", &msg);
            self.said.insert(key.to_string(), msg);
        }
    }

    async fn reconcile(&mut self, world: &World, knobs: &Knobs, log: &DecisionLog) -> Option<Instant> {
        let now = Instant::now();
        let mut next = None;
        let pvc = |ns: &str, name: &str| world.pvcs.get(&ObjectRef::new(name).within(ns));
        let pv = |name: &str| world.pvs.get(&ObjectRef::new(name));

        // Pods by node, with their volumes (or why those are not known yet).
        let mut pods_on: HashMap<String, Vec<PodVolumes>> = HashMap::new();
        for pod in world.pods.state() {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            if terminal(&pod) {
                continue;
            }
            let vols = pod_volumes(&pod, pvc, pv);
            pods_on.entry(node).or_default().push((pod, vols));
        }
        let live_pods: HashSet<String> = world.pods.state().iter().filter_map(|p| p.uid()).collect();
        self.mounted.retain(|uid, _| live_pods.contains(uid));
        self.unmounted.retain(|uid, _| live_pods.contains(uid));
        self.said.retain(|k, _| !k.starts_with("pod:") || live_pods.contains(&k[4..]));

        let nodes = world.nodes.state();
        let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        self.nodes.retain(|n, _| names.contains(n));

        for node in nodes {
            let name = node.name_any();
            match life(&node) {
                Life::NotSimulated => continue,
                Life::Dead => {
                    if self.dead.insert(name.clone()) {
                        log.record(
                            "kubelet",
                            format!("node {name}: heartbeat stopped; its kubelet state is frozen (no volumesInUse updates, no mounts)"),
                        );
                    }
                    continue;
                }
                Life::Live => {
                    if self.dead.remove(&name) {
                        log.record("kubelet", format!("node {name}: heartbeat back; its kubelet resumes"));
                    }
                }
            }
            let pods = pods_on.get(&name).map(Vec::as_slice).unwrap_or_default();
            let used: BTreeSet<String> = pods
                .iter()
                .filter(|(p, _)| p.metadata.deletion_timestamp.is_none())
                .filter_map(|(_, v)| v.as_ref().ok())
                .flatten()
                .cloned()
                .collect();
            let status = node.status.clone().unwrap_or_default();
            let reported = status.volumes_in_use.clone().unwrap_or_default();
            let k = knobs.node(&name);
            let st = self.nodes.entry(name.clone()).or_default();
            let step = st.vols.step(&used, &reported, now, k);
            next = earliest(next, step.next);
            let users = |v: &str| {
                pods.iter()
                    .filter(|(p, vs)| p.metadata.deletion_timestamp.is_none() && vs.as_ref().is_ok_and(|vs| vs.contains(v)))
                    .map(|(p, _)| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            for v in &step.added {
                log.record("kubelet", format!("node {name}: volume {v} in use (pod {})", users(v)));
            }
            for v in &step.reused {
                log.record("kubelet", format!("node {name}: volume {v} in use again before its unmount (pod {})", users(v)));
            }
            for v in &step.unused {
                let when = if k.unmount_stuck {
                    "unmount is stuck: it stays in use".to_string()
                } else {
                    format!("unmount delay {}s", k.unmount_delay.as_secs_f64())
                };
                log.record("kubelet", format!("node {name}: volume {v} no longer used by a running pod; {when}"));
            }
            for v in &step.released {
                log.record("kubelet", format!("node {name}: volume {v} unmounted; no longer in use"));
            }

            // Write volumesInUse (only that field, on the status subresource).
            let current: BTreeSet<String> = reported.iter().cloned().collect();
            let mut synced = step.in_use == current;
            if synced {
                st.written = None;
            } else if st.written.as_ref().is_some_and(|(w, rv)| *w == step.in_use && stale(node.as_ref(), *rv)) {
                // Our write is on its way to the cache.
                synced = true;
            } else {
                let list: Vec<&String> = step.in_use.iter().collect();
                let patch = json!({"status": {"volumesInUse": list}});
                match self.nodes_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(out) => {
                        log.record(
                            "kubelet",
                            format!("node {name}: volumesInUse = [{}]", step.in_use.iter().cloned().collect::<Vec<_>>().join(", ")),
                        );
                        st.written = Some((step.in_use.clone(), rv_of(&out)));
                        synced = true;
                    }
                    Err(e) => {
                        self.once(log, &format!("node:{name}"), format!("node {name}: cannot update volumesInUse: {e}"));
                        next = earliest(next, Some(now + RETRY));
                    }
                }
            }
            if !synced {
                continue;
            }

            // Unmount: terminating pods, now that volumesInUse reflects their end, may go.
            for (pod, vols) in pods {
                if pod.metadata.deletion_timestamp.is_none()
                    || pod.annotations().get(UNMOUNTED_ANNOTATION).map(String::as_str) == Some("true")
                {
                    continue;
                }
                let Some(uid) = pod.uid() else { continue };
                if self.unmounted.get(&uid).is_some_and(|rv| stale(pod.as_ref(), *rv)) {
                    continue;
                }
                let pod_ref = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
                let patch = json!({"metadata": {"annotations": {UNMOUNTED_ANNOTATION: "true"}}});
                match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(out) => {
                        let n = vols.as_ref().map(|v| v.len()).unwrap_or(0);
                        log.record(
                            "kubelet",
                            format!("node {name}: tore down pod {pod_ref} ({n} attachable volume(s)); its deletion may complete"),
                        );
                        self.unmounted.insert(uid, rv_of(&out));
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        self.once(log, &format!("pod:{uid}"), format!("pod {pod_ref}: cannot mark unmounted: {e}"));
                        next = earliest(next, Some(now + RETRY));
                    }
                }
            }

            // Mount: pods whose volumes are all attached to the node.
            let attached: BTreeSet<String> = status.volumes_attached.clone().unwrap_or_default().into_iter().map(|a| a.name).collect();
            for (pod, vols) in pods {
                if pod.annotations().get(MOUNTED_ANNOTATION).map(String::as_str) == Some("true")
                    || pod.metadata.deletion_timestamp.is_some()
                {
                    continue;
                }
                let Some(uid) = pod.uid() else { continue };
                if self.mounted.get(&uid).is_some_and(|rv| stale(pod.as_ref(), *rv)) {
                    continue;
                }
                let key = format!("pod:{uid}");
                let pod_ref = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
                let vols = match vols {
                    Ok(v) => v,
                    Err(why) => {
                        self.once(log, &key, format!("pod {pod_ref} on node {name} waits to mount: {why}"));
                        continue;
                    }
                };
                let missing: Vec<&String> = vols.iter().filter(|v| !attached.contains(*v)).collect();
                if !missing.is_empty() {
                    let m = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
                    self.once(log, &key, format!("pod {pod_ref} on node {name} waits to mount: not attached yet: {m}"));
                    continue;
                }
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
                let patch = json!({"metadata": {"annotations": {MOUNTED_ANNOTATION: "true"}}});
                match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(out) => {
                        let what = if vols.is_empty() {
                            "no attachable volumes".to_string()
                        } else {
                            vols.iter().cloned().collect::<Vec<_>>().join(", ")
                        };
                        log.record("kubelet", format!("node {name}: mounted pod {pod_ref} ({what})"));
                        self.mounted.insert(uid, rv_of(&out));
                        self.said.remove(&key);
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        self.once(log, &key, format!("pod {pod_ref}: cannot mark mounted: {e}"));
                        next = earliest(next, Some(now + RETRY));
                    }
                }
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EphemeralVolumeSource, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, PodSpec, Volume,
    };
    use kube::api::ObjectMeta;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn knobs(delay: u64, stuck: bool) -> NodeKnobs {
        NodeKnobs { unmount_delay: Duration::from_secs(delay), unmount_stuck: stuck }
    }

    #[test]
    fn a_volume_is_released_at_once_without_delay() {
        let mut n = NodeVolumes::default();
        let t = Instant::now();
        let s = n.step(&set(&["v"]), &[], t, knobs(0, false));
        assert_eq!((s.in_use, s.added), (set(&["v"]), vec!["v".to_string()]));
        let s = n.step(&set(&[]), &[], t + Duration::from_secs(1), knobs(0, false));
        assert_eq!(s.unused, ["v"]);
        assert_eq!(s.released, ["v"]);
        assert!(s.in_use.is_empty());
        assert_eq!(s.next, None);
    }

    #[test]
    fn a_volume_stays_in_use_for_the_unmount_delay() {
        let mut n = NodeVolumes::default();
        let t = Instant::now();
        n.step(&set(&["v"]), &[], t, knobs(20, false));
        let s = n.step(&set(&[]), &[], t + Duration::from_secs(1), knobs(20, false));
        assert_eq!(s.in_use, set(&["v"]));
        assert_eq!(s.next, Some(t + Duration::from_secs(21)));
        let s = n.step(&set(&[]), &[], t + Duration::from_secs(20), knobs(20, false));
        assert!(s.released.is_empty() && s.unused.is_empty());
        let s = n.step(&set(&[]), &[], t + Duration::from_secs(21), knobs(20, false));
        assert_eq!(s.released, ["v"]);
        assert!(s.in_use.is_empty());
    }

    #[test]
    fn a_delay_change_applies_to_pending_releases() {
        let mut n = NodeVolumes::default();
        let t = Instant::now();
        n.step(&set(&["v"]), &[], t, knobs(60, false));
        n.step(&set(&[]), &[], t, knobs(60, false));
        let s = n.step(&set(&[]), &[], t + Duration::from_secs(5), knobs(0, false));
        assert_eq!(s.released, ["v"]);
    }

    #[test]
    fn a_stuck_unmount_never_releases_until_unstuck() {
        let mut n = NodeVolumes::default();
        let t = Instant::now();
        n.step(&set(&["v"]), &[], t, knobs(0, true));
        let s = n.step(&set(&[]), &[], t + Duration::from_secs(3600), knobs(0, true));
        assert_eq!(s.in_use, set(&["v"]));
        assert_eq!(s.next, None);
        let s = n.step(&set(&[]), &[], t + Duration::from_secs(3601), knobs(0, false));
        assert_eq!(s.released, ["v"]);
    }

    #[test]
    fn reuse_before_release_cancels_it() {
        let mut n = NodeVolumes::default();
        let t = Instant::now();
        n.step(&set(&["v"]), &[], t, knobs(20, false));
        n.step(&set(&[]), &[], t, knobs(20, false));
        let s = n.step(&set(&["v"]), &[], t + Duration::from_secs(5), knobs(20, false));
        assert_eq!(s.reused, ["v"]);
        let s = n.step(&set(&["v"]), &[], t + Duration::from_secs(60), knobs(20, false));
        assert_eq!(s.in_use, set(&["v"]));
        assert!(s.released.is_empty());
    }

    #[test]
    fn volumes_reported_before_the_sim_started_are_adopted_once() {
        let mut n = NodeVolumes::default();
        let t = Instant::now();
        let s = n.step(&set(&[]), &["old".to_string()], t, knobs(10, false));
        assert_eq!(s.in_use, set(&["old"]));
        // A stale cache showing it again later is not re-adopted.
        let s = n.step(&set(&[]), &["old".to_string()], t + Duration::from_secs(10), knobs(10, false));
        assert_eq!(s.released, ["old"]);
        let s = n.step(&set(&[]), &["old".to_string()], t + Duration::from_secs(11), knobs(10, false));
        assert!(s.in_use.is_empty());
    }

    fn pod(volumes: Vec<Volume>) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some("db-0".into()), namespace: Some("lily".into()), ..Default::default() },
            spec: Some(PodSpec { volumes: Some(volumes), ..Default::default() }),
            status: None,
        }
    }

    fn claim_vol(name: &str, claim: &str) -> Volume {
        Volume {
            name: name.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim.into(), read_only: None }),
            ..Default::default()
        }
    }

    #[test]
    fn claims_come_from_pvc_and_ephemeral_volumes() {
        let p = pod(vec![
            claim_vol("data", "data-db-0"),
            Volume { name: "scratch".into(), ephemeral: Some(EphemeralVolumeSource::default()), ..Default::default() },
            Volume { name: "tmp".into(), empty_dir: Some(Default::default()), ..Default::default() },
        ]);
        assert_eq!(claim_names(&p), ["data-db-0", "db-0-scratch"]);
    }

    #[test]
    fn pod_volumes_resolve_through_bound_claims_to_csi_unique_names() {
        let p = pod(vec![claim_vol("data", "data-db-0")]);
        let bound = Arc::new(PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec { volume_name: Some("pvc-1".into()), ..Default::default() }),
            ..Default::default()
        });
        let csi_pv = Arc::new(PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                csi: Some(k8s_openapi::api::core::v1::CSIPersistentVolumeSource {
                    driver: super::super::DRIVER.into(),
                    volume_handle: "vol-1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let got =
            pod_volumes(&p, |ns, n| (ns == "lily" && n == "data-db-0").then(|| bound.clone()), |n| (n == "pvc-1").then(|| csi_pv.clone()));
        assert_eq!(got, Ok(set(&["kubernetes.io/csi/block.sim.lily-e2e.io^vol-1"])));
        let unbound = Arc::new(PersistentVolumeClaim::default());
        assert!(pod_volumes(&p, |_, _| Some(unbound.clone()), |_| None).unwrap_err().contains("not bound"));
        assert!(pod_volumes(&p, |_, _| None, |_| None).unwrap_err().contains("does not exist"));
        assert_eq!(pod_volumes(&pod(vec![]), |_, _| None, |_| None), Ok(BTreeSet::new()));
    }

    #[test]
    fn nodes_are_live_dead_or_not_ours() {
        let mut n = Node {
            metadata: ObjectMeta {
                annotations: Some([(SIMULATED_NODE.0.to_string(), SIMULATED_NODE.1.to_string())].into()),
                labels: Some([(KWOK_LABEL.0.to_string(), KWOK_LABEL.1.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(life(&n), Life::Live);
        n.metadata.labels = Some(Default::default());
        assert_eq!(life(&n), Life::Dead);
        n.metadata.annotations = None;
        assert_eq!(life(&n), Life::NotSimulated);
    }
}
