//! Fault steps and node actions: `lose-zone`, `stop-heartbeat`, `cordon`, `uncordon`, `drain`,
//! `unmount-delay`, `out-of-service`.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;

use super::{CaseCx, Cx, Operation, StepError, StepResult, Tpl, DEFAULT_WAIT};
use crate::error::Error;
use crate::labels::KWOK_LABEL;
use crate::scenario::compile::LoadError;
use crate::scenario::model;

async fn patch_node(cx: &CaseCx<'_>, node: &str, patch: serde_json::Value, what: &str) -> Result<(), Error> {
    Api::<Node>::all(cx.client())
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(Error::kube(format!("{what} {node}")))?;
    Ok(())
}

/// The patch that makes kwok stop managing (heartbeating) a node.
fn stop_heartbeat_patch() -> serde_json::Value {
    serde_json::json!({"metadata": {"labels": {KWOK_LABEL.0: null}}})
}

#[derive(Debug)]
pub struct LoseZone {
    zone: Tpl,
}

impl LoseZone {
    pub fn compile(s: &model::ZoneRef, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        Ok(Box::new(LoseZone { zone: cx.tpl("zone", &s.zone)? }))
    }

    async fn apply(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let zone = self.zone.fill(&cx.vars)?;
        let nodes: Vec<String> = cx.zones.iter().filter(|(_, z)| **z == zone).map(|(n, _)| n.clone()).collect();
        if nodes.is_empty() {
            return Err(StepError::Errored(Error::Invalid(format!("no node in zone {zone}"))));
        }
        let api = Api::<Node>::all(cx.client());
        for n in &nodes {
            // A real machine (kind's node container) goes down first; a simulated node stops
            // being heartbeated. Then the cloud's node lifecycle controller deletes the Node.
            cx.env.cluster.power_off(n).await?;
            patch_node(cx, n, stop_heartbeat_patch(), "stop node").await?;
            api.delete(n, &DeleteParams::default()).await.map_err(Error::kube(format!("delete node {n}")))?;
        }
        for n in &nodes {
            crate::wait::until(&api, n, &format!("node {n} to be gone"), DEFAULT_WAIT, |x: Option<&Node>| x.is_none()).await?;
        }
        cx.outcome.record("lose-zone", serde_json::json!({"zone": zone, "nodes": nodes}));
        Ok(())
    }
}

impl Operation for LoseZone {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.apply(cx).boxed()
    }
}

#[derive(Debug)]
pub struct StopHeartbeat {
    node: Tpl,
}

impl StopHeartbeat {
    pub fn compile(s: &model::NodeRef, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        Ok(Box::new(StopHeartbeat { node: cx.tpl("node", &s.node)? }))
    }
}

impl Operation for StopHeartbeat {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let node = self.node.fill(&cx.vars)?;
            patch_node(cx, &node, stop_heartbeat_patch(), "stop the heartbeat of node").await?;
            cx.outcome.record("stop-heartbeat", serde_json::json!({"node": node}));
            Ok(())
        }
        .boxed()
    }

    fn needs(&self) -> Option<super::Need> {
        Some(super::Need::SimulatedKubelets)
    }
}

/// Which nodes a `cordon`/`uncordon` names.
#[derive(Debug)]
enum Nodes {
    One(Tpl),
    Zone(Tpl),
}

#[derive(Debug)]
pub struct Cordon {
    nodes: Nodes,
    /// `cordon` (true) or `uncordon` (false).
    on: bool,
}

impl Cordon {
    pub fn compile(s: &model::NodeSet, on: bool, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        let nodes = match (&s.node, &s.zone) {
            (Some(n), None) => Nodes::One(cx.tpl("node", n)?),
            (None, Some(z)) => Nodes::Zone(cx.tpl("zone", z)?),
            _ => return Err(cx.site.error("node", "give exactly one of `node` and `zone`")),
        };
        Ok(Box::new(Cordon { nodes, on }))
    }
}

async fn cordon(cx: &mut CaseCx<'_>, node: &str) -> Result<(), Error> {
    set_unschedulable(cx, node, true).await?;
    cx.outcome.record("cordon", serde_json::json!({"node": node}));
    Ok(())
}

async fn set_unschedulable(cx: &CaseCx<'_>, node: &str, on: bool) -> Result<(), Error> {
    let what = if on { "cordon node" } else { "uncordon node" };
    patch_node(
        cx,
        node,
        serde_json::json!({"spec": {"unschedulable": if on { serde_json::json!(true) } else { serde_json::Value::Null }}}),
        what,
    )
    .await
}

impl Operation for Cordon {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let kind = if self.on { "cordon" } else { "uncordon" };
            match &self.nodes {
                Nodes::One(n) => {
                    let node = n.fill(&cx.vars)?;
                    set_unschedulable(cx, &node, self.on).await?;
                    cx.outcome.record(kind, serde_json::json!({"node": node}));
                }
                Nodes::Zone(z) => {
                    let zone = z.fill(&cx.vars)?;
                    let nodes: Vec<String> = cx.zones.iter().filter(|(_, nz)| **nz == zone).map(|(n, _)| n.clone()).collect();
                    if nodes.is_empty() {
                        let known: std::collections::BTreeSet<&String> = cx.zones.values().collect();
                        return Err(StepError::Errored(Error::Invalid(format!(
                            "no node in zone {zone} (zones: {})",
                            known.into_iter().cloned().collect::<Vec<_>>().join(", ")
                        ))));
                    }
                    for n in &nodes {
                        set_unschedulable(cx, n, self.on).await?;
                    }
                    cx.outcome.record(kind, serde_json::json!({"zone": zone, "nodes": nodes}));
                }
            }
            Ok(())
        }
        .boxed()
    }
}

#[derive(Debug)]
pub struct Drain {
    node: Tpl,
}

impl Drain {
    pub fn compile(s: &model::NodeRef, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        Ok(Box::new(Drain { node: cx.tpl("node", &s.node)? }))
    }
}

impl Operation for Drain {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let node = self.node.fill(&cx.vars)?;
            cordon(cx, &node).await?;
            let api = Api::<Pod>::namespaced(cx.client(), &cx.namespace);
            let pods = api.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await.map_err(Error::kube("list pods"))?;
            let mut evicted = Vec::new();
            for p in pods.items {
                // A disruption budget that can never allow an eviction makes every drain hang:
                // say so at once instead of retrying an eviction nothing will allow.
                if let Some(finding) = blocking_budget(cx, &p).await? {
                    return Err(finding);
                }
                api.evict(&p.name_any(), &EvictParams::default()).await.map_err(Error::kube(format!("evict pod {}", p.name_any())))?;
                evicted.push(p.name_any());
            }
            cx.outcome.record("drain", serde_json::json!({"node": node, "evicted": evicted}));
            Ok(())
        }
        .boxed()
    }
}

#[derive(Debug)]
pub struct UnmountDelay {
    node: Tpl,
    delay: Duration,
    delay_text: Option<String>,
    stuck: bool,
}

impl UnmountDelay {
    pub fn compile(s: &model::UnmountDelay, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        Ok(Box::new(UnmountDelay {
            node: cx.tpl("node", &s.node)?,
            delay: cx.duration("delay", &s.delay, Duration::ZERO)?,
            delay_text: s.delay.clone(),
            stuck: s.stuck,
        }))
    }
}

impl Operation for UnmountDelay {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let node = self.node.fill(&cx.vars)?;
            let sim =
                cx.env.cluster.sim().ok_or_else(|| {
                    StepError::Errored(Error::Invalid("unmount-delay needs the local provider's simulated kubelets".into()))
                })?;
            sim.set_unmount_delay(&node, self.delay);
            sim.set_unmount_stuck(&node, self.stuck);
            cx.outcome.record("unmount-delay", serde_json::json!({"node": node, "delay": self.delay_text, "stuck": self.stuck}));
            Ok(())
        }
        .boxed()
    }

    fn estimate(&self) -> Duration {
        self.delay
    }

    fn needs(&self) -> Option<super::Need> {
        Some(super::Need::SimulatedKubelets)
    }
}

#[derive(Debug)]
pub struct OutOfService {
    node: Tpl,
}

impl OutOfService {
    pub fn compile(s: &model::NodeRef, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        Ok(Box::new(OutOfService { node: cx.tpl("node", &s.node)? }))
    }
}

impl Operation for OutOfService {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let node = self.node.fill(&cx.vars)?;
            let taint = serde_json::json!({"spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}]}});
            patch_node(cx, &node, taint, "taint out-of-service node").await?;
            cx.outcome.record("out-of-service", serde_json::json!({"node": node}));
            Ok(())
        }
        .boxed()
    }
}

/// A PodDisruptionBudget selecting `pod` that no eviction can ever satisfy: it wants at
/// least as many healthy pods as it expects (`minAvailable` >= the workload's replicas), so
/// `kubectl drain` never completes. That is the chart's doing: returned as its finding.
async fn blocking_budget(cx: &CaseCx<'_>, pod: &Pod) -> Result<Option<StepError>, Error> {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let pdbs = Api::<PodDisruptionBudget>::namespaced(cx.client(), &cx.namespace)
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list poddisruptionbudgets"))?;
    let labels = pod.labels();
    for pdb in pdbs.items {
        let Some(spec) = &pdb.spec else { continue };
        // policy/v1: a null selector selects no pod, an empty one every pod of the namespace.
        let Some(selector) = &spec.selector else { continue };
        if selector.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) {
            continue; // not what a Lily chart renders; the eviction itself will say
        }
        let match_labels = selector.match_labels.clone().unwrap_or_default();
        let empty = match_labels.is_empty();
        if !match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let Some(status) = &pdb.status else { continue };
        if status.expected_pods > 0 && status.desired_healthy >= status.expected_pods && status.disruptions_allowed == 0 {
            let budget = match &spec.min_available {
                Some(IntOrString::Int(n)) => format!("minAvailable {n}"),
                Some(IntOrString::String(s)) => format!("minAvailable {s}"),
                None => match &spec.max_unavailable {
                    Some(IntOrString::Int(n)) => format!("maxUnavailable {n}"),
                    Some(IntOrString::String(s)) => format!("maxUnavailable {s}"),
                    None => "no budget".into(),
                },
            };
            return Ok(Some(StepError::chart(
                format!("PodDisruptionBudget {}", pdb.name_any()),
                format!(
                    "{budget} with {} pod(s) expected: it needs {} healthy and allows no disruption, so pod {} can never be evicted and `kubectl drain` never completes{}",
                    status.expected_pods,
                    status.desired_healthy,
                    pod.name_any(),
                    if empty {
                        "; its selector is empty, so it selects every pod of the namespace (the selector labels are not under matchLabels)"
                    } else {
                        ""
                    }
                ),
                "keep the budget below the replicas (render the PodDisruptionBudget only when replicas exceed minAvailable, or use maxUnavailable: 1), and read the values key operators set for it",
            )));
        }
    }
    Ok(None)
}
