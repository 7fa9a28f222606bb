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
//!
//! Each pass is a plan and its application: [`plan`] decides, from a [`Snapshot`] of the
//! cache, the knobs and the time, what to write ([`Action`]s) and when to look again;
//! `Kubelet::apply` makes the API calls and records what they wrote.

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

/// What the sim kubelet remembers between reconciles.
#[derive(Default)]
struct Memory {
    nodes: HashMap<String, NodeState>,
    /// Simulated nodes seen dead (heartbeat stopped).
    dead: HashSet<String>,
    /// Pod uid -> resource version after the sim annotated it (mounted, or unmounted).
    mounted: HashMap<String, Option<u64>>,
    unmounted: HashMap<String, Option<u64>>,
    /// What was last said under a key (a wait, a failure), so it is logged once.
    said: HashMap<String, String>,
}

impl Memory {
    fn once(&mut self, log: &DecisionLog, key: &str, msg: String) {
        if self.said.get(key) != Some(&msg) {
            log.record("kubelet", &msg);
            self.said.insert(key.to_string(), msg);
        }
    }
}

/// The cluster as one reconcile sees it.
struct Snapshot<'a> {
    now: Instant,
    nodes: Vec<Arc<Node>>,
    /// The scheduled pods, each with its CSI volumes (or why they are not known yet).
    pods: Vec<PodVolumes>,
    knobs: &'a Knobs,
}

impl<'a> Snapshot<'a> {
    fn of(world: &World, knobs: &'a Knobs, now: Instant) -> Self {
        let pvc = |ns: &str, name: &str| world.pvcs.get(&ObjectRef::new(name).within(ns));
        let pv = |name: &str| world.pvs.get(&ObjectRef::new(name));
        let pods = world.pods.state().into_iter().map(|pod| (pod.clone(), pod_volumes(&pod, pvc, pv))).collect();
        Snapshot { now, nodes: world.nodes.state(), pods, knobs }
    }
}

/// A pod an action is about.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRef {
    namespace: String,
    name: String,
    uid: String,
}

impl PodRef {
    fn of(pod: &Pod) -> Option<Self> {
        Some(PodRef { namespace: pod.namespace().unwrap_or_default(), name: pod.name_any(), uid: pod.uid()? })
    }
    /// The key its messages are said once under.
    fn key(&self) -> String {
        format!("pod:{}", self.uid)
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the sim kubelet intends to do, in order. Each action is about one node; when the
/// node's [`Action::ReportInUse`] fails, its later actions are skipped (pods are torn down
/// and mounted only once volumesInUse is written).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// A decision to log (a volume's state changed, a heartbeat stopped or came back).
    Note { node: String, line: String },
    /// Write the node's `status.volumesInUse`.
    ReportInUse { node: String, in_use: BTreeSet<String> },
    /// Annotate a terminating pod [`UNMOUNTED_ANNOTATION`]: its deletion may complete.
    MarkUnmounted { node: String, pod: PodRef, volumes: usize },
    /// Annotate a pod [`MOUNTED_ANNOTATION`]: kwok may start it.
    MarkMounted { node: String, pod: PodRef, volumes: BTreeSet<String> },
    /// A pod cannot be mounted yet, and why (logged once until the reason changes).
    WaitToMount { node: String, pod: PodRef, why: String },
}

impl Action {
    fn node(&self) -> &str {
        match self {
            Action::Note { node, .. }
            | Action::ReportInUse { node, .. }
            | Action::MarkUnmounted { node, .. }
            | Action::MarkMounted { node, .. }
            | Action::WaitToMount { node, .. } => node,
        }
    }
}

/// A reconcile's actions, and when to reconcile again at the latest (a pending unmount).
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    actions: Vec<Action>,
    next: Option<Instant>,
}

/// Decides what to do: advances each live simulated node's volume state to `snap.now` and
/// lists the writes that follow (volumesInUse, unmounted and mounted pods). No API calls;
/// `mem` is updated for what needs no write (forgotten pods and nodes, dead nodes, volume
/// state), [`Kubelet::apply`] records the writes.
fn plan(mem: &mut Memory, snap: &Snapshot) -> Plan {
    let now = snap.now;
    let mut out = Plan::default();

    // Pods by node, with their volumes (or why those are not known yet).
    let mut pods_on: HashMap<String, Vec<&PodVolumes>> = HashMap::new();
    for pv in &snap.pods {
        let pod = &pv.0;
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if terminal(pod) {
            continue;
        }
        pods_on.entry(node).or_default().push(pv);
    }
    let live_pods: HashSet<String> = snap.pods.iter().filter_map(|(p, _)| p.uid()).collect();
    mem.mounted.retain(|uid, _| live_pods.contains(uid));
    mem.unmounted.retain(|uid, _| live_pods.contains(uid));
    mem.said.retain(|k, _| !k.starts_with("pod:") || live_pods.contains(&k[4..]));

    let names: HashSet<String> = snap.nodes.iter().map(|n| n.name_any()).collect();
    mem.nodes.retain(|n, _| names.contains(n));

    for node in &snap.nodes {
        let name = node.name_any();
        let note = |line: String| Action::Note { node: name.clone(), line };
        match life(node) {
            Life::NotSimulated => continue,
            Life::Dead => {
                if mem.dead.insert(name.clone()) {
                    out.actions.push(note(format!(
                        "node {name}: heartbeat stopped; its kubelet state is frozen (no volumesInUse updates, no mounts)"
                    )));
                }
                continue;
            }
            Life::Live => {
                if mem.dead.remove(&name) {
                    out.actions.push(note(format!("node {name}: heartbeat back; its kubelet resumes")));
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
        let k = snap.knobs.node(&name);
        let st = mem.nodes.entry(name.clone()).or_default();
        let step = st.vols.step(&used, &reported, now, k);
        out.next = earliest(out.next, step.next);
        let users = |v: &str| {
            pods.iter()
                .filter(|(p, vs)| p.metadata.deletion_timestamp.is_none() && vs.as_ref().is_ok_and(|vs| vs.contains(v)))
                .map(|(p, _)| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for v in &step.added {
            out.actions.push(note(format!("node {name}: volume {v} in use (pod {})", users(v))));
        }
        for v in &step.reused {
            out.actions.push(note(format!("node {name}: volume {v} in use again before its unmount (pod {})", users(v))));
        }
        for v in &step.unused {
            let when = if k.unmount_stuck {
                "unmount is stuck: it stays in use".to_string()
            } else {
                format!("unmount delay {}s", k.unmount_delay.as_secs_f64())
            };
            out.actions.push(note(format!("node {name}: volume {v} no longer used by a running pod; {when}")));
        }
        for v in &step.released {
            out.actions.push(note(format!("node {name}: volume {v} unmounted; no longer in use")));
        }

        // volumesInUse: written unless it already holds, or our write is on its way to the cache.
        let current: BTreeSet<String> = reported.iter().cloned().collect();
        if step.in_use == current {
            st.written = None;
        } else if !st.written.as_ref().is_some_and(|(w, rv)| *w == step.in_use && stale(node.as_ref(), *rv)) {
            out.actions.push(Action::ReportInUse { node: name.clone(), in_use: step.in_use.clone() });
        }

        // Unmount: terminating pods, now that volumesInUse reflects their end, may go.
        for (pod, vols) in pods {
            if pod.metadata.deletion_timestamp.is_none() || pod.annotations().get(UNMOUNTED_ANNOTATION).map(String::as_str) == Some("true")
            {
                continue;
            }
            let Some(pod_ref) = PodRef::of(pod) else { continue };
            if mem.unmounted.get(&pod_ref.uid).is_some_and(|rv| stale(pod.as_ref(), *rv)) {
                continue;
            }
            let volumes = vols.as_ref().map(|v| v.len()).unwrap_or(0);
            out.actions.push(Action::MarkUnmounted { node: name.clone(), pod: pod_ref, volumes });
        }

        // Mount: pods whose volumes are all attached to the node.
        let attached: BTreeSet<String> = status.volumes_attached.clone().unwrap_or_default().into_iter().map(|a| a.name).collect();
        for (pod, vols) in pods {
            if pod.annotations().get(MOUNTED_ANNOTATION).map(String::as_str) == Some("true") || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(pod_ref) = PodRef::of(pod) else { continue };
            if mem.mounted.get(&pod_ref.uid).is_some_and(|rv| stale(pod.as_ref(), *rv)) {
                continue;
            }
            let vols = match vols {
                Ok(v) => v,
                Err(why) => {
                    out.actions.push(Action::WaitToMount { node: name.clone(), pod: pod_ref, why: why.clone() });
                    continue;
                }
            };
            let missing: Vec<&str> = vols.iter().filter(|v| !attached.contains(*v)).map(String::as_str).collect();
            if !missing.is_empty() {
                let why = format!("not attached yet: {}", missing.join(", "));
                out.actions.push(Action::WaitToMount { node: name.clone(), pod: pod_ref, why });
                continue;
            }
            out.actions.push(Action::MarkMounted { node: name.clone(), pod: pod_ref, volumes: vols.clone() });
        }
    }
    out
}

struct Kubelet {
    client: Client,
    nodes_api: Api<Node>,
    mem: Memory,
}

pub(super) async fn kubelet(client: Client, world: World, wake: Arc<Notify>, knobs: Knobs, log: DecisionLog) {
    let mut k = Kubelet { nodes_api: Api::all(client.clone()), client, mem: Memory::default() };
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
    /// One pass: plan against the world as it is now, then apply. Returns when to run
    /// again at the latest.
    async fn reconcile(&mut self, world: &World, knobs: &Knobs, log: &DecisionLog) -> Option<Instant> {
        let now = Instant::now();
        let plan = plan(&mut self.mem, &Snapshot::of(world, knobs, now));
        self.apply(plan, now, log).await
    }

    /// Performs a plan's actions in order, logging each decision and recording each write
    /// (so a stale cache does not repeat it). A failed write is said once and retried after
    /// [`RETRY`]; a node whose volumesInUse write failed gets no further actions this pass.
    async fn apply(&mut self, plan: Plan, now: Instant, log: &DecisionLog) -> Option<Instant> {
        let mut next = plan.next;
        let mut failed: HashSet<String> = HashSet::new();
        for action in plan.actions {
            if failed.contains(action.node()) {
                continue;
            }
            match action {
                Action::Note { line, .. } => log.record("kubelet", line),
                Action::ReportInUse { node, in_use } => {
                    // Only that field, on the status subresource.
                    let list: Vec<&String> = in_use.iter().collect();
                    let patch = json!({"status": {"volumesInUse": list}});
                    match self.nodes_api.patch_status(&node, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        Ok(out) => {
                            log.record(
                                "kubelet",
                                format!("node {node}: volumesInUse = [{}]", in_use.iter().cloned().collect::<Vec<_>>().join(", ")),
                            );
                            self.mem.nodes.entry(node).or_default().written = Some((in_use, rv_of(&out)));
                        }
                        Err(e) => {
                            self.mem.once(log, &format!("node:{node}"), format!("node {node}: cannot update volumesInUse: {e}"));
                            next = earliest(next, Some(now + RETRY));
                            failed.insert(node);
                        }
                    }
                }
                Action::MarkUnmounted { node, pod, volumes } => match self.annotate(&pod, UNMOUNTED_ANNOTATION).await {
                    Ok(Some(rv)) => {
                        log.record(
                            "kubelet",
                            format!("node {node}: tore down pod {pod} ({volumes} attachable volume(s)); its deletion may complete"),
                        );
                        self.mem.unmounted.insert(pod.uid, rv);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.mem.once(log, &pod.key(), format!("pod {pod}: cannot mark unmounted: {e}"));
                        next = earliest(next, Some(now + RETRY));
                    }
                },
                Action::MarkMounted { node, pod, volumes } => match self.annotate(&pod, MOUNTED_ANNOTATION).await {
                    Ok(Some(rv)) => {
                        let what = if volumes.is_empty() {
                            "no attachable volumes".to_string()
                        } else {
                            volumes.iter().cloned().collect::<Vec<_>>().join(", ")
                        };
                        log.record("kubelet", format!("node {node}: mounted pod {pod} ({what})"));
                        self.mem.said.remove(&pod.key());
                        self.mem.mounted.insert(pod.uid, rv);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.mem.once(log, &pod.key(), format!("pod {pod}: cannot mark mounted: {e}"));
                        next = earliest(next, Some(now + RETRY));
                    }
                },
                Action::WaitToMount { node, pod, why } => {
                    self.mem.once(log, &pod.key(), format!("pod {pod} on node {node} waits to mount: {why}"));
                }
            }
        }
        next
    }

    /// Sets `annotation` to `"true"` on a pod: the pod's resource version after, or `None`
    /// if the pod is gone.
    async fn annotate(&self, pod: &PodRef, annotation: &str) -> kube::Result<Option<Option<u64>>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let patch = json!({"metadata": {"annotations": {annotation: "true"}}});
        match api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(out) => Ok(Some(rv_of(&out))),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
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

    // The plan: what the kubelet decides, without an API server.

    fn sim_node(name: &str, live: bool, in_use: &[&str], attached: &[&str]) -> Arc<Node> {
        let labels = if live { [(KWOK_LABEL.0.to_string(), KWOK_LABEL.1.to_string())].into() } else { BTreeMap::new() };
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some("5".into()),
                annotations: Some([(SIMULATED_NODE.0.to_string(), SIMULATED_NODE.1.to_string())].into()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: None,
            status: Some(k8s_openapi::api::core::v1::NodeStatus {
                volumes_in_use: Some(in_use.iter().map(|s| s.to_string()).collect()),
                volumes_attached: Some(
                    attached
                        .iter()
                        .map(|a| k8s_openapi::api::core::v1::AttachedVolume { name: a.to_string(), device_path: String::new() })
                        .collect(),
                ),
                ..Default::default()
            }),
        })
    }

    fn bound_pod(uid: &str, node: &str, deleting: bool, annotations: &[&str]) -> Arc<Pod> {
        let deletion = deleting.then(|| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(format!("db-{uid}")),
                namespace: Some("lily".into()),
                uid: Some(uid.into()),
                resource_version: Some("5".into()),
                deletion_timestamp: deletion,
                annotations: Some(annotations.iter().map(|a| (a.to_string(), "true".to_string())).collect()),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: Some(node.into()), ..Default::default() }),
            status: None,
        })
    }

    fn pod_ref(uid: &str) -> PodRef {
        PodRef { namespace: "lily".into(), name: format!("db-{uid}"), uid: uid.into() }
    }

    fn snap<'a>(now: Instant, nodes: &[Arc<Node>], pods: &[(Arc<Pod>, &[&str])], knobs: &'a Knobs) -> Snapshot<'a> {
        Snapshot { now, nodes: nodes.to_vec(), pods: pods.iter().map(|(p, v)| (p.clone(), Ok(set(v)))).collect(), knobs }
    }

    fn note(node: &str, line: &str) -> Action {
        Action::Note { node: node.into(), line: line.into() }
    }

    /// The non-note actions of a plan.
    fn writes(p: &Plan) -> Vec<&Action> {
        p.actions.iter().filter(|a| !matches!(a, Action::Note { .. })).collect()
    }

    #[test]
    fn a_new_pod_is_reported_in_use_then_mounted_once_its_volume_is_attached() {
        let (knobs, t) = (Knobs::default(), Instant::now());
        let pod = bound_pod("u1", "sim-a1", false, &[]);
        let mut mem = Memory::default();
        let p = plan(&mut mem, &snap(t, &[sim_node("sim-a1", true, &[], &["v"])], &[(pod.clone(), &["v"])], &knobs));
        assert_eq!(
            p.actions,
            [
                note("sim-a1", "node sim-a1: volume v in use (pod lily/db-u1)"),
                Action::ReportInUse { node: "sim-a1".into(), in_use: set(&["v"]) },
                Action::MarkMounted { node: "sim-a1".into(), pod: pod_ref("u1"), volumes: set(&["v"]) },
            ]
        );
        assert_eq!(p.next, None);

        // Not attached yet: it waits, saying which volume it waits for.
        let mut mem = Memory::default();
        let p = plan(&mut mem, &snap(t, &[sim_node("sim-a1", true, &["v"], &[])], &[(pod, &["v", "w"])], &knobs));
        assert_eq!(
            writes(&p),
            [
                &Action::ReportInUse { node: "sim-a1".into(), in_use: set(&["v", "w"]) },
                &Action::WaitToMount { node: "sim-a1".into(), pod: pod_ref("u1"), why: "not attached yet: v, w".into() },
            ]
        );
    }

    #[test]
    fn a_pod_whose_volumes_are_unknown_waits_to_mount_and_uses_none() {
        let knobs = Knobs::default();
        let pod = bound_pod("u1", "sim-a1", false, &[]);
        let s = Snapshot {
            now: Instant::now(),
            nodes: vec![sim_node("sim-a1", true, &[], &[])],
            pods: vec![(pod, Err("claim lily/data is not bound yet".into()))],
            knobs: &knobs,
        };
        let p = plan(&mut Memory::default(), &s);
        assert_eq!(
            p.actions,
            [Action::WaitToMount { node: "sim-a1".into(), pod: pod_ref("u1"), why: "claim lily/data is not bound yet".into() }]
        );
    }

    #[test]
    fn a_terminating_pod_releases_its_volume_and_is_torn_down() {
        let (knobs, t) = (Knobs::default(), Instant::now());
        let mut mem = Memory::default();
        let running = bound_pod("u1", "sim-a1", false, &[MOUNTED_ANNOTATION]);
        let p = plan(&mut mem, &snap(t, &[sim_node("sim-a1", true, &["v"], &["v"])], &[(running, &["v"])], &knobs));
        assert_eq!(writes(&p), Vec::<&Action>::new(), "in use and mounted already");

        let ending = bound_pod("u1", "sim-a1", true, &[MOUNTED_ANNOTATION]);
        let p = plan(&mut mem, &snap(t + Duration::from_secs(1), &[sim_node("sim-a1", true, &["v"], &["v"])], &[(ending, &["v"])], &knobs));
        assert_eq!(
            p.actions,
            [
                note("sim-a1", "node sim-a1: volume v no longer used by a running pod; unmount delay 0s"),
                note("sim-a1", "node sim-a1: volume v unmounted; no longer in use"),
                Action::ReportInUse { node: "sim-a1".into(), in_use: set(&[]) },
                Action::MarkUnmounted { node: "sim-a1".into(), pod: pod_ref("u1"), volumes: 1 },
            ]
        );
    }

    #[test]
    fn with_an_unmount_delay_the_volume_stays_in_use_and_the_plan_wakes_when_it_is_due() {
        let (knobs, t) = (Knobs::default(), Instant::now());
        knobs.set_unmount_delay("sim-a1", Duration::from_secs(20));
        let mut mem = Memory::default();
        let node = sim_node("sim-a1", true, &["v"], &["v"]);
        plan(&mut mem, &snap(t, std::slice::from_ref(&node), &[(bound_pod("u1", "sim-a1", false, &[MOUNTED_ANNOTATION]), &["v"])], &knobs));
        let ending = bound_pod("u1", "sim-a1", true, &[MOUNTED_ANNOTATION]);
        let p = plan(&mut mem, &snap(t, std::slice::from_ref(&node), &[(ending.clone(), &["v"])], &knobs));
        assert_eq!(
            p.actions,
            [
                note("sim-a1", "node sim-a1: volume v no longer used by a running pod; unmount delay 20s"),
                Action::MarkUnmounted { node: "sim-a1".into(), pod: pod_ref("u1"), volumes: 1 },
            ]
        );
        assert_eq!(p.next, Some(t + Duration::from_secs(20)));
        // Due: released, and volumesInUse written without it.
        let p = plan(&mut mem, &snap(t + Duration::from_secs(20), &[node], &[(ending, &["v"])], &knobs));
        assert_eq!(p.actions[0], note("sim-a1", "node sim-a1: volume v unmounted; no longer in use"));
        assert_eq!(p.actions[1], Action::ReportInUse { node: "sim-a1".into(), in_use: set(&[]) });
        assert_eq!(p.next, None);
    }

    #[test]
    fn a_stuck_unmount_keeps_the_volume_in_use_with_no_wake_up() {
        let (knobs, t) = (Knobs::default(), Instant::now());
        knobs.set_unmount_stuck("sim-a1", true);
        let mut mem = Memory::default();
        let node = sim_node("sim-a1", true, &["v"], &["v"]);
        plan(&mut mem, &snap(t, std::slice::from_ref(&node), &[(bound_pod("u1", "sim-a1", false, &[MOUNTED_ANNOTATION]), &["v"])], &knobs));
        let p = plan(&mut mem, &snap(t + Duration::from_secs(3600), &[node], &[(bound_pod("u1", "sim-a1", true, &[]), &["v"])], &knobs));
        assert_eq!(
            p.actions[0],
            note("sim-a1", "node sim-a1: volume v no longer used by a running pod; unmount is stuck: it stays in use")
        );
        assert!(!p.actions.iter().any(|a| matches!(a, Action::ReportInUse { .. })));
        assert_eq!(p.next, None);
    }

    #[test]
    fn a_dead_node_is_frozen_until_its_heartbeat_returns() {
        let (knobs, t) = (Knobs::default(), Instant::now());
        let mut mem = Memory::default();
        let pods = [(bound_pod("u1", "sim-a1", false, &[]), &["v"][..])];
        let dead = sim_node("sim-a1", false, &[], &["v"]);
        let p = plan(&mut mem, &snap(t, std::slice::from_ref(&dead), &pods, &knobs));
        assert_eq!(
            p.actions,
            [note("sim-a1", "node sim-a1: heartbeat stopped; its kubelet state is frozen (no volumesInUse updates, no mounts)")]
        );
        assert_eq!(plan(&mut mem, &snap(t, &[dead], &pods, &knobs)), Plan::default(), "said once, then nothing");
        let p = plan(&mut mem, &snap(t, &[sim_node("sim-a1", true, &[], &["v"])], &pods, &knobs));
        assert_eq!(p.actions[0], note("sim-a1", "node sim-a1: heartbeat back; its kubelet resumes"));
        assert!(p.actions.contains(&Action::MarkMounted { node: "sim-a1".into(), pod: pod_ref("u1"), volumes: set(&["v"]) }));
    }

    #[test]
    fn nodes_not_simulated_and_finished_pods_are_left_alone() {
        let knobs = Knobs::default();
        let mut other = (*sim_node("real-1", true, &[], &[])).clone();
        other.metadata.annotations = None;
        let done = Arc::new(Pod {
            status: Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Succeeded".into()), ..Default::default() }),
            ..(*bound_pod("u2", "sim-a1", false, &[])).clone()
        });
        let s = snap(Instant::now(), &[Arc::new(other), sim_node("sim-a1", true, &[], &[])], &[(done, &["v"])], &knobs);
        assert_eq!(plan(&mut Memory::default(), &s), Plan::default());
    }

    #[test]
    fn writes_on_their_way_to_the_cache_are_not_repeated() {
        let (knobs, t) = (Knobs::default(), Instant::now());
        let mut mem = Memory::default();
        let pod = bound_pod("u1", "sim-a1", false, &[]);
        // The node (resource version 5) does not show our write (version 10) yet; nor the pod.
        mem.nodes.entry("sim-a1".into()).or_default().written = Some((set(&["v"]), Some(10)));
        mem.mounted.insert("u1".into(), Some(10));
        let p = plan(&mut mem, &snap(t, &[sim_node("sim-a1", true, &[], &["v"])], &[(pod.clone(), &["v"])], &knobs));
        assert_eq!(writes(&p), Vec::<&Action>::new());
        // Caught up, yet different (someone else wrote it): written again, mounted again.
        let mut caught_up = (*sim_node("sim-a1", true, &[], &["v"])).clone();
        caught_up.metadata.resource_version = Some("10".into());
        let pod = Arc::new(Pod { metadata: ObjectMeta { resource_version: Some("10".into()), ..pod.metadata.clone() }, ..(*pod).clone() });
        let p = plan(&mut mem, &snap(t, &[Arc::new(caught_up)], &[(pod, &["v"])], &knobs));
        assert_eq!(
            writes(&p),
            [
                &Action::ReportInUse { node: "sim-a1".into(), in_use: set(&["v"]) },
                &Action::MarkMounted { node: "sim-a1".into(), pod: pod_ref("u1"), volumes: set(&["v"]) },
            ]
        );
    }

    #[test]
    fn already_annotated_pods_need_nothing() {
        let knobs = Knobs::default();
        let pods = [
            (bound_pod("u1", "sim-a1", false, &[MOUNTED_ANNOTATION]), &["v"][..]),
            (bound_pod("u2", "sim-a1", true, &[MOUNTED_ANNOTATION, UNMOUNTED_ANNOTATION]), &["w"][..]),
        ];
        let p = plan(&mut Memory::default(), &snap(Instant::now(), &[sim_node("sim-a1", true, &["v"], &["v", "w"])], &pods, &knobs));
        assert_eq!(writes(&p), Vec::<&Action>::new());
    }

    #[test]
    fn memory_of_vanished_pods_and_nodes_is_dropped() {
        let knobs = Knobs::default();
        let mut mem = Memory::default();
        mem.nodes.insert("gone".into(), NodeState::default());
        mem.mounted.insert("old".into(), None);
        mem.unmounted.insert("old".into(), None);
        mem.said.insert("pod:old".into(), "x".into());
        mem.said.insert("node:gone".into(), "y".into());
        mem.mounted.insert("u1".into(), None);
        let pods = [(bound_pod("u1", "sim-a1", false, &[MOUNTED_ANNOTATION]), &[][..])];
        plan(&mut mem, &snap(Instant::now(), &[sim_node("sim-a1", true, &[], &[])], &pods, &knobs));
        assert_eq!(mem.nodes.keys().collect::<Vec<_>>(), ["sim-a1"]);
        assert_eq!(mem.mounted.keys().collect::<Vec<_>>(), ["u1"]);
        assert!(mem.unmounted.is_empty());
        assert_eq!(mem.said.keys().collect::<Vec<_>>(), ["node:gone"]);
    }

    // The apply step, against an API server that does not answer.

    #[tokio::test]
    async fn a_failed_in_use_write_skips_the_nodes_pods_and_is_retried() {
        let tmp = tempfile::tempdir().unwrap();
        let log = DecisionLog::open(tmp.path().join("sim-cloud.log")).unwrap();
        let client = Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let mut k = Kubelet { nodes_api: Api::all(client.clone()), client, mem: Memory::default() };
        let now = Instant::now();
        let plan = Plan {
            actions: vec![
                note("sim-a1", "node sim-a1: a decision"),
                Action::ReportInUse { node: "sim-a1".into(), in_use: set(&["v"]) },
                Action::MarkMounted { node: "sim-a1".into(), pod: pod_ref("u1"), volumes: set(&["v"]) },
                Action::WaitToMount { node: "sim-b1".into(), pod: pod_ref("u2"), why: "not attached yet: w".into() },
            ],
            next: Some(now + Duration::from_secs(30)),
        };
        let next = k.apply(plan, now, &log).await;
        assert_eq!(next, Some(now + RETRY));
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<&str> = text.lines().map(|l| l.split_once("kubelet").unwrap().1.trim()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "node sim-a1: a decision");
        assert!(lines[1].starts_with("node sim-a1: cannot update volumesInUse: "), "{}", lines[1]);
        assert_eq!(lines[2], "pod lily/db-u2 on node sim-b1 waits to mount: not attached yet: w");
        assert!(k.mem.mounted.is_empty() && k.mem.nodes.is_empty());
        assert!(k.mem.said.contains_key("node:sim-a1") && k.mem.said.contains_key("pod:u2"));
    }
}
