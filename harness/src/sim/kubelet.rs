// Over 500 lines on purpose: one controller, its pure plan and the apply that performs it, read together.
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
mod tests;
