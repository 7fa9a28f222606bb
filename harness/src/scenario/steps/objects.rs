//! Object steps: `expect-pod`, `expect-claim`, `expect-attachment`, `delete`, `save-node`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{Api, DeleteParams};
use kube::runtime::watcher;
use kube::ResourceExt;

use super::{object_ref, CaseCx, Cx, Operation, StepError, StepResult, Tpl, DEFAULT_WAIT};
use crate::error::Error;
use crate::labels::{HOSTNAME_LABEL, ZONE_LABEL};
use crate::scenario::compile::LoadError;
use crate::scenario::model;
use crate::wait::{Part, WaitError};

#[derive(Debug)]
pub struct ExpectPod {
    name: Option<Tpl>,
    phase: Option<String>,
    container: Option<String>,
    zone: Option<Tpl>,
    node: Option<Tpl>,
    not_node: Option<Tpl>,
    timeout: Duration,
    /// As written, for the outcome.
    timeout_text: Option<String>,
    observe: bool,
    gone: bool,
}

impl ExpectPod {
    pub fn compile(s: &model::ExpectPod, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        if s.name.is_none() {
            cx.scope.require("pod", &cx.site, "name")?;
        }
        if s.gone
            && (s.phase.is_some() || s.container.is_some() || s.zone.is_some() || s.node.is_some() || s.not_node.is_some() || s.observe)
        {
            return Err(cx
                .site
                .error("gone", "a pod that is gone has no phase, container, zone or node: give `gone` with `name` and `timeout` only"));
        }
        Ok(Box::new(ExpectPod {
            name: cx.opt_tpl("name", &s.name)?,
            phase: s.phase.clone(),
            container: s.container.clone(),
            zone: cx.opt_tpl("zone", &s.zone)?,
            node: cx.opt_tpl("node", &s.node)?,
            not_node: cx.opt_tpl("not-node", &s.not_node)?,
            timeout: cx.duration("timeout", &s.timeout, DEFAULT_WAIT)?,
            timeout_text: s.timeout.clone(),
            observe: s.observe,
            gone: s.gone,
        }))
    }

    async fn check(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let name = cx.fill_or(&self.name, "pod")?;
        let (zone, node, not_node) = (cx.fill_opt(&self.zone)?, cx.fill_opt(&self.node)?, cx.fill_opt(&self.not_node)?);
        let api = Api::<Pod>::namespaced(cx.client(), &cx.namespace);
        if self.gone {
            crate::wait::until(&api, &name, &format!("pod {name} to be gone"), self.timeout, |p: Option<&Pod>| p.is_none()).await?;
            cx.outcome.record("pod", serde_json::json!({"pod": name, "gone": true}));
            return Ok(());
        }
        let zones = cx.zones.clone();
        let mut what = format!("pod {name}");
        for (k, v) in [("phase", &self.phase), ("zone", &zone), ("node", &node), ("not on node", &not_node), ("container", &self.container)]
        {
            if let Some(v) = v {
                what.push_str(&format!(" {k}={v}"));
            }
        }
        let started = Instant::now();
        let (want_phase, want_container) = (self.phase.clone(), self.container.clone());
        let (want_zone, want_node, want_not_node) = (zone.clone(), node.clone(), not_node.clone());
        let waited = crate::wait::until(&api, &name, &what, self.timeout, move |p: Option<&Pod>| {
            let Some(p) = p else { return false };
            if p.metadata.deletion_timestamp.is_some() {
                return false;
            }
            let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let zone = zones.get(&node).cloned().unwrap_or_default();
            want_phase.as_ref().is_none_or(|w| *w == phase)
                && want_zone.as_ref().is_none_or(|w| *w == zone)
                && want_node.as_ref().is_none_or(|w| *w == node)
                && want_not_node.as_ref().is_none_or(|w| *w != node)
                && want_container.as_ref().is_none_or(|c| p.spec.as_ref().is_some_and(|s| s.containers.iter().any(|x| &x.name == c)))
        })
        .await;
        let pod = match (waited, self.observe) {
            (Ok(p), _) => p.expect("condition needs the object"),
            (Err(Error::Wait(WaitError::Timeout { .. })), true) => {
                cx.outcome.record(
                    "observe-pod",
                    serde_json::json!({"pod": name, "wanted": what.replace(&name, "<pod>"), "reached": false, "within": self.timeout_text}),
                );
                if let Some((rb, _)) = &cx.last_runbook {
                    let finding = serde_json::json!({
                        "runbook": rb,
                        "recovered": false,
                        "finding": format!("the guide's runbook did not get the pod to `{}` within {}s", what.replace(&name, "<pod>"), self.timeout.as_secs()),
                    });
                    cx.outcome.finding(finding);
                }
                return Ok(());
            }
            (Err(e), _) => return Err(e.into()),
        };
        if self.observe {
            tracing::info!("{what}: reached after {}s", started.elapsed().as_secs());
            cx.outcome.record(
                "observe-pod",
                serde_json::json!({"pod": name, "wanted": what.replace(&name, "<pod>"), "reached": true, "within": self.timeout_text}),
            );
            return Ok(());
        }
        let on = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        if self.phase.as_deref() == Some("Running") {
            if let Some((rb, at)) = &cx.last_runbook {
                let note = format!("pod Running {:.1}s after runbook {rb}", at.elapsed().as_secs_f64());
                cx.notes.push(note);
            }
        }
        // Only what the step asked about: where an unconstrained pod lands is the scheduler's
        // choice and would make the outcome flaky.
        let mut rec = serde_json::json!({"pod": name, "phase": pod.status.as_ref().and_then(|s| s.phase.clone())});
        if zone.is_some() {
            rec["zone"] = serde_json::json!(cx.zones.get(&on));
        }
        if let Some(c) = &self.container {
            rec["container"] = serde_json::json!(c);
        }
        if node.is_some() || not_node.is_some() {
            rec["node"] = serde_json::json!(on);
        }
        cx.outcome.record("pod", rec);
        Ok(())
    }
}

impl Operation for ExpectPod {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.check(cx).boxed()
    }

    fn estimate(&self) -> Duration {
        // An observation that expects nothing to happen waits out its window.
        if self.observe {
            self.timeout
        } else {
            Duration::from_secs(3)
        }
    }
}

#[derive(Debug)]
pub struct ExpectClaim {
    name: Option<Tpl>,
    phase: Option<String>,
    save_volume: Option<String>,
    volume: Option<Tpl>,
    not_volume: Option<Tpl>,
    zone: Option<Tpl>,
    timeout: Duration,
}

impl ExpectClaim {
    pub fn compile(s: &model::ExpectClaim, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        if s.name.is_none() {
            cx.scope.require("claim", &cx.site, "name")?;
        }
        let op = ExpectClaim {
            name: cx.opt_tpl("name", &s.name)?,
            phase: s.phase.clone(),
            save_volume: s.save_volume.clone(),
            volume: cx.opt_tpl("volume", &s.volume)?,
            not_volume: cx.opt_tpl("not-volume", &s.not_volume)?,
            zone: cx.opt_tpl("zone", &s.zone)?,
            timeout: cx.duration("timeout", &s.timeout, DEFAULT_WAIT)?,
        };
        if let Some(v) = &s.save_volume {
            cx.scope.define(v);
        }
        Ok(Box::new(op))
    }

    async fn check(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let name = cx.fill_or(&self.name, "claim")?;
        let (volume, not_volume, zone_want) = (cx.fill_opt(&self.volume)?, cx.fill_opt(&self.not_volume)?, cx.fill_opt(&self.zone)?);
        let api = Api::<PersistentVolumeClaim>::namespaced(cx.client(), &cx.namespace);
        let mut want = Vec::new();
        if let Some(p) = &self.phase {
            want.push(format!("phase {p}"));
        }
        if let Some(v) = &volume {
            want.push(format!("volume {v}"));
        }
        if let Some(v) = &not_volume {
            want.push(format!("a volume other than {v}"));
        }
        let what = format!("claim {name}{}", if want.is_empty() { String::new() } else { format!(" ({})", want.join(", ")) });
        let (want_phase, want_volume, want_not_volume) = (self.phase.clone(), volume.clone(), not_volume.clone());
        let waited = crate::wait::until_parts(&api, &name, &what, self.timeout, move |c: &PersistentVolumeClaim| {
            let phase = c.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            let vol = c.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
            let mut parts = vec![Part::holds("not being deleted", c.metadata.deletion_timestamp.is_none(), "a deletion timestamp")];
            parts.extend(want_phase.as_ref().map(|w| Part::eq("phase", w, &phase)));
            // A bound claim keeps its volume: bound to another one, it never gets this one.
            parts.extend(want_volume.as_ref().map(|w| Part::eq("volume", w, &vol).settled_if(!vol.is_empty())));
            parts.extend(want_not_volume.as_ref().map(|w| Part::ne("volume", w, &vol)));
            parts
        })
        .await;
        let pvc = match waited {
            Ok(p) => p,
            // The volume the datastore had is now another claim's business: say what the
            // upgrade did to it, not only that the wait ran out.
            Err(e @ Error::Wait(WaitError::Timeout { .. } | WaitError::Settled { .. })) if volume.is_some() => {
                return Err(match super::helm::orphaned_datastore(cx, &name, volume.as_deref().unwrap_or_default()).await? {
                    Some(finding) => finding,
                    None => e.into(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let vol = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
        let mut zone = None;
        if !vol.is_empty() {
            let pv = Api::<PersistentVolume>::all(cx.client()).get(&vol).await.map_err(Error::kube(format!("get volume {vol}")))?;
            zone = pv_zone(&pv, &cx.zones);
        }
        if let Some(z) = &zone_want {
            if zone.as_deref() != Some(z) {
                return Err(StepError::failed(format!("claim {name}'s volume is pinned to zone {zone:?}, expected {z}")));
            }
        }
        if let Some(var) = &self.save_volume {
            cx.vars.insert(var.clone(), vol.clone());
        }
        let placeholder = if vol.is_empty() { String::new() } else { cx.outcome.generated("volume", &vol) };
        let mut rec = serde_json::json!({"claim": name, "phase": pvc.status.as_ref().and_then(|s| s.phase.clone()), "volume": placeholder});
        if zone_want.is_some() {
            rec["volume-zone"] = serde_json::json!(zone);
        }
        if not_volume.is_some() {
            rec["datastore"] = serde_json::json!("replaced: a new volume; the data on the old one is discarded");
        } else if volume.is_some() {
            rec["datastore"] = serde_json::json!("kept: the same volume, no data lost");
        }
        cx.outcome.record("claim", rec);
        Ok(())
    }
}

impl Operation for ExpectClaim {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.check(cx).boxed()
    }
}

/// The zone a PV's node affinity pins it to: its zone term (zonal block storage), or the
/// zone of the node its hostname term names (node-bound volumes such as kind's local-path),
/// looked up in `zones` (node name -> zone).
pub fn pv_zone(pv: &PersistentVolume, zones: &BTreeMap<String, String>) -> Option<String> {
    let terms = &pv.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    let first = |key: &str| {
        terms
            .iter()
            .flat_map(|t| t.match_expressions.iter().flatten())
            .find(|e| e.key == key)
            .and_then(|e| e.values.as_ref()?.first().cloned())
    };
    first(ZONE_LABEL).or_else(|| first(HOSTNAME_LABEL).and_then(|node| zones.get(&node).cloned()))
}

#[derive(Debug)]
pub struct ExpectAttachment {
    volume: Tpl,
    nodes: Vec<Tpl>,
    timeout: Duration,
}

impl ExpectAttachment {
    pub fn compile(s: &model::ExpectAttachment, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        let nodes = s.nodes.iter().map(|n| cx.tpl("nodes", n)).collect::<Result<_, _>>()?;
        Ok(Box::new(ExpectAttachment {
            volume: cx.tpl("volume", &s.volume)?,
            nodes,
            timeout: cx.duration("timeout", &s.timeout, DEFAULT_WAIT)?,
        }))
    }

    async fn check(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let vol = self.volume.fill(&cx.vars)?;
        let mut want = self.nodes.iter().map(|n| n.fill(&cx.vars)).collect::<Result<Vec<_>, _>>()?;
        want.sort();
        let api = Api::<VolumeAttachment>::all(cx.client());
        let what = format!("volume {vol} attached to exactly {want:?}");
        let v = vol.clone();
        let w = want.clone();
        // Boxed: a list watch's future is large, and steps' futures live in the case's.
        Box::pin(crate::wait::until_list(&api, watcher::Config::default(), &what, self.timeout, move |vas: &[Arc<VolumeAttachment>]| {
            let mut on: Vec<String> = vas
                .iter()
                .filter(|va| va.spec.source.persistent_volume_name.as_deref() == Some(v.as_str()))
                .filter(|va| va.metadata.deletion_timestamp.is_none() && va.status.as_ref().is_some_and(|s| s.attached))
                .map(|va| va.spec.node_name.clone())
                .collect();
            on.sort();
            on == w
        }))
        .await?;
        let p = cx.outcome.generated("volume", &vol);
        cx.outcome.record("attachment", serde_json::json!({"volume": p, "attached-to": want}));
        Ok(())
    }
}

impl Operation for ExpectAttachment {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.check(cx).boxed()
    }

    /// Attached somewhere needs a driver that attaches; attached nowhere holds on any cluster.
    fn needs(&self) -> Option<super::Need> {
        (!self.nodes.is_empty()).then_some(super::Need::AttachingVolumes)
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Pod,
    Claim,
    Node,
}

#[derive(Debug)]
pub struct Delete {
    kind: Kind,
    kind_text: String,
    name: Tpl,
    wait: bool,
}

impl Delete {
    pub fn compile(s: &model::DeleteStep, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        let (k, n) = object_ref(&s.object)
            .ok_or_else(|| cx.site.error("object", format!("`{}` is not an object reference like Pod/NAME", s.object)))?;
        let kind = match k.as_str() {
            "Pod" => Kind::Pod,
            "PersistentVolumeClaim" => Kind::Claim,
            "Node" => Kind::Node,
            other => return Err(cx.site.error("object", format!("delete supports Pod, PersistentVolumeClaim and Node, not {other}"))),
        };
        Ok(Box::new(Delete { kind, kind_text: k, name: cx.tpl("object", &n)?, wait: s.wait }))
    }

    async fn apply(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let name = self.name.fill(&cx.vars)?;
        let (c, ns, dp, t) = (cx.client(), cx.namespace.clone(), DeleteParams::default(), DEFAULT_WAIT);
        match self.kind {
            Kind::Pod => {
                let api = Api::<Pod>::namespaced(c, &ns);
                let uid = api.get(&name).await.map_err(Error::kube(format!("get pod {name}")))?.uid();
                api.delete(&name, &dp).await.map_err(Error::kube(format!("delete pod {name}")))?;
                if self.wait {
                    // The same name comes back from the StatefulSet: wait for the old uid to go.
                    crate::wait::until(&api, &name, &format!("pod {name} (old incarnation) to be gone"), t, move |p: Option<&Pod>| {
                        p.is_none_or(|p| p.uid() != uid)
                    })
                    .await?;
                }
            }
            Kind::Claim => {
                let api = Api::<PersistentVolumeClaim>::namespaced(c, &ns);
                api.delete(&name, &dp).await.map_err(Error::kube(format!("delete claim {name}")))?;
                if self.wait {
                    crate::wait::until(&api, &name, &format!("claim {name} to be gone"), t, |p: Option<&PersistentVolumeClaim>| {
                        p.is_none()
                    })
                    .await?;
                }
            }
            Kind::Node => {
                let api = Api::<Node>::all(c);
                api.delete(&name, &dp).await.map_err(Error::kube(format!("delete node {name}")))?;
                if self.wait {
                    crate::wait::until(&api, &name, &format!("node {name} to be gone"), t, |p: Option<&Node>| p.is_none()).await?;
                }
            }
        }
        cx.outcome.record("delete", serde_json::json!({"object": format!("{}/{name}", self.kind_text)}));
        Ok(())
    }
}

impl Operation for Delete {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.apply(cx).boxed()
    }
}

#[derive(Debug)]
pub struct SaveNode {
    pod: Option<Tpl>,
    as_: String,
}

impl SaveNode {
    pub fn compile(s: &model::SaveNode, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        if s.pod.is_none() {
            cx.scope.require("pod", &cx.site, "pod")?;
        }
        let op = SaveNode { pod: cx.opt_tpl("pod", &s.pod)?, as_: s.as_.clone() };
        cx.scope.define(&s.as_);
        Ok(Box::new(op))
    }
}

impl Operation for SaveNode {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let pod = cx.fill_or(&self.pod, "pod")?;
            let p = Api::<Pod>::namespaced(cx.client(), &cx.namespace).get(&pod).await.map_err(Error::kube(format!("get pod {pod}")))?;
            let node = p.spec.and_then(|s| s.node_name).ok_or_else(|| StepError::failed(format!("pod {pod} is not on a node")))?;
            cx.outcome.name(&node, &format!("<{}>", self.as_));
            cx.vars.insert(self.as_.clone(), node);
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(key: &str, value: &str) -> PersistentVolume {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pv"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}
            ]}}}
        }))
        .unwrap()
    }

    #[test]
    fn a_volume_is_in_its_zone_term_or_its_nodes_zone() {
        let zones: BTreeMap<String, String> = [("kind-worker2".to_string(), "zone-b".to_string())].into();
        assert_eq!(pv_zone(&pv(ZONE_LABEL, "zone-a"), &zones).as_deref(), Some("zone-a"));
        // kind's local-path volumes name their node.
        assert_eq!(pv_zone(&pv(HOSTNAME_LABEL, "kind-worker2"), &zones).as_deref(), Some("zone-b"));
        assert_eq!(pv_zone(&pv(HOSTNAME_LABEL, "gone"), &zones), None);
        assert_eq!(pv_zone(&pv("other", "x"), &zones), None);
    }
}
