//! Why a chart's pod never schedules: it asks for more CPU or memory than any node can
//! allocate. On simulated nodes (any size) that never happens; on real kubelets (kind) the
//! nodes are this machine's size, and a chart that hard-codes large requests cannot run
//! there whatever the operator's values say. That is the chart's finding, named with the
//! containers, their requests and the largest node, instead of a bare `--wait` timeout.

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use super::{CaseCx, StepError};
use crate::error::Error;

/// A quantity's value (cores for CPU, bytes for memory), or `None` when it does not parse.
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E').unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some(n * mult)
}

fn request(c: &Container, resource: &str) -> f64 {
    c.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get(resource)).and_then(|q| quantity(&q.0)).unwrap_or(0.0)
}

/// What the scheduler counts a pod as requesting: the larger of its largest init container
/// and the sum of its containers.
pub fn effective_request(pod: &Pod, resource: &str) -> f64 {
    let Some(spec) = &pod.spec else { return 0.0 };
    let init = spec.init_containers.iter().flatten().map(|c| request(c, resource)).fold(0.0, f64::max);
    let main: f64 = spec.containers.iter().map(|c| request(c, resource)).sum();
    init.max(main)
}

/// The largest allocatable `resource` of the nodes that take pods (not cordoned, no
/// NoSchedule or NoExecute taint).
pub fn largest_allocatable(nodes: &[Node], resource: &str) -> f64 {
    nodes
        .iter()
        .filter(|n| !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false))
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute"))
        })
        .filter_map(|n| n.status.as_ref()?.allocatable.as_ref()?.get(resource).and_then(|q: &Quantity| quantity(&q.0)))
        .fold(0.0, f64::max)
}

fn show(resource: &str, v: f64) -> String {
    if resource == "memory" {
        format!("{:.1}Gi", v / 1024f64.powi(3))
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

/// The finding for a pod that asks for more than any of `nodes` can allocate, if it does.
pub fn oversized(pod: &Pod, nodes: &[Node]) -> Option<(String, String, String)> {
    let spec = pod.spec.as_ref()?;
    let mut over = Vec::new();
    let mut largest = Vec::new();
    for resource in ["cpu", "memory"] {
        let have = largest_allocatable(nodes, resource);
        let want = effective_request(pod, resource);
        if have > 0.0 && want > have {
            let each: Vec<String> = spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| ("init container", c))
                .chain(spec.containers.iter().map(|c| ("container", c)))
                .filter(|(_, c)| request(c, resource) > have)
                .map(|(kind, c)| format!("{kind} {} requests {resource} {}", c.name, show(resource, request(c, resource))))
                .collect();
            over.push(if each.is_empty() {
                format!("its containers together request {resource} {}", show(resource, want))
            } else {
                each.join(", ")
            });
            largest.push(format!("{resource} {}", show(resource, have)));
        }
    }
    if over.is_empty() {
        return None;
    }
    let owner =
        pod.owner_references().first().map(|o| format!("{} {}", o.kind, o.name)).unwrap_or_else(|| format!("Pod {}", pod.name_any()));
    Some((
        format!("{owner} (pod {})", pod.name_any()),
        format!(
            "{}: more than any node can allocate (the largest: {}), so the pod never schedules",
            over.join("; "),
            largest.join(", ")
        ),
        "let the values size these containers (as `daemon.resources` sizes the daemon) or request less: operators cannot fit the pod to their nodes today".into(),
    ))
}

/// Whether the scheduler left `pod` unschedulable for want of CPU or memory.
fn insufficient(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| c.type_ == "PodScheduled" && c.status == "False" && c.message.as_deref().unwrap_or("").contains("Insufficient"))
    })
}

fn finding(pods: &[&Pod], nodes: &[Node]) -> Option<StepError> {
    pods.iter()
        .filter(|p| insufficient(p))
        .find_map(|p| oversized(p, nodes))
        .map(|(object, problem, fix)| StepError::chart(object, problem, fix))
}

/// The chart finding for the first pod of the case's namespace that the scheduler left
/// unschedulable for want of CPU or memory no node has, if there is one.
pub async fn unfit_pod(cx: &CaseCx<'_>) -> Result<Option<StepError>, Error> {
    let pods = Api::<Pod>::namespaced(cx.client(), &cx.namespace).list(&ListParams::default()).await.map_err(Error::kube("list pods"))?;
    if !pods.items.iter().any(insufficient) {
        return Ok(None);
    }
    let nodes = Api::<Node>::all(cx.client()).list(&ListParams::default()).await.map_err(Error::kube("list nodes"))?.items;
    Ok(finding(&pods.items.iter().collect::<Vec<_>>(), &nodes))
}

/// Watches the namespace's pods for `timeout` and resolves with the chart finding as soon as
/// one is unschedulable for want of what no node has (so `helm --wait` is not waited out);
/// `None` if none is within `timeout` or the watch cannot run (the wait it shortens still
/// reports).
pub async fn watch_unfit(client: kube::Client, namespace: String, timeout: std::time::Duration) -> Option<StepError> {
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.ok()?.items;
    let api = Api::<Pod>::namespaced(client, &namespace);
    let what = format!("a pod of namespace {namespace} that no node can fit");
    let pods =
        crate::wait::until_list(&api, kube::runtime::watcher::Config::default(), &what, timeout, |pods: &[std::sync::Arc<Pod>]| {
            finding(&pods.iter().map(|p| p.as_ref()).collect::<Vec<_>>(), &nodes).is_some()
        })
        .await
        .ok()?;
    finding(&pods.iter().collect::<Vec<_>>(), &nodes)
}

/// What keeps each of the namespace's pods from being ready, in a line, for a wait that ran
/// out (helm's own message says only "context deadline exceeded"): its phase and each
/// unready container's state, and a container held by its postStart hook named as such (the
/// kubelet counts a container started only once that hook returns).
pub fn unready(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let spec = pod.spec.as_ref()?;
    let inits_done = status
        .init_container_statuses
        .iter()
        .flatten()
        .all(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code == 0));
    let mut parts = Vec::new();
    for c in status.container_statuses.iter().flatten().filter(|c| !c.ready) {
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref()).map(|w| w.reason.clone().unwrap_or_default());
        let post_start =
            spec.containers.iter().find(|x| x.name == c.name).and_then(|x| x.lifecycle.as_ref()).and_then(|l| l.post_start.as_ref());
        parts.push(match (waiting, post_start) {
            (Some(r), Some(_)) if inits_done && (r == "PodInitializing" || r == "ContainerCreating") => {
                format!("container {} is held by its postStart hook (it counts as started once the hook returns)", c.name)
            }
            (Some(r), _) => format!("container {} waiting ({r})", c.name),
            (None, _) => format!("container {} not ready", c.name),
        });
    }
    for c in status.init_container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            parts.push(format!("init container {} waiting ({})", c.name, w.reason.clone().unwrap_or_default()));
        } else if c.state.as_ref().and_then(|s| s.running.as_ref()).is_some() {
            parts.push(format!("init container {} running", c.name));
        }
    }
    let phase = status.phase.clone().unwrap_or_default();
    (!parts.is_empty() || phase != "Running").then(|| format!("pod {} {phase}: {}", pod.name_any(), parts.join(", ")))
}

/// [`unready`] for every pod of the case's namespace, `; `-separated (empty when all are ready).
pub async fn unready_pods(cx: &CaseCx<'_>) -> String {
    match Api::<Pod>::namespaced(cx.client(), &cx.namespace).list(&ListParams::default()).await {
        Ok(pods) => pods.items.iter().filter_map(unready).collect::<Vec<_>>().join("; "),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(quantity("4000m"), Some(4.0));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("16Gi"), Some(16.0 * 1024f64.powi(3)));
        assert_eq!(quantity("24565404Ki"), Some(24565404.0 * 1024.0));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("lots"), None);
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "lily-daemon-0", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "lily-daemon", "uid": "u"}]},
            "spec": {
                "initContainers": [
                    {"name": "init-datastore", "resources": {"requests": {"cpu": "4000m", "memory": "16Gi"}}},
                    {"name": "init-sync", "resources": {"requests": {"cpu": "4000m", "memory": "16Gi"}}},
                ],
                "containers": [{"name": "daemon", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
            }
        }))
        .unwrap()
    }

    fn node(name: &str, cpu: &str, memory: &str, taint: bool) -> Node {
        let taints = if taint {
            serde_json::json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}])
        } else {
            serde_json::json!([])
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": cpu, "memory": memory}},
        }))
        .unwrap()
    }

    #[test]
    fn init_containers_larger_than_every_node_are_the_charts_finding() {
        let nodes = [node("cp", "8", "64Gi", true), node("w1", "2", "24Gi", false), node("w2", "2", "24Gi", false)];
        assert_eq!(effective_request(&pod(), "cpu"), 4.0);
        let (object, problem, _fix) = oversized(&pod(), &nodes).expect("a finding");
        assert_eq!(object, "StatefulSet lily-daemon (pod lily-daemon-0)");
        assert_eq!(
            problem,
            "init container init-datastore requests cpu 4, init container init-sync requests cpu 4: more than any node can allocate (the largest: cpu 2), so the pod never schedules"
        );
        // Nodes large enough: no finding.
        assert!(oversized(&pod(), &[node("big", "32", "256Gi", false)]).is_none());
    }

    #[test]
    fn a_container_held_by_its_post_start_hook_is_named() {
        let mut p = pod();
        p.spec.as_mut().unwrap().containers[0].lifecycle =
            Some(serde_json::from_value(serde_json::json!({"postStart": {"exec": {"command": ["/bin/sh", "-c", "sleep 180"]}}})).unwrap());
        let done = serde_json::json!({"terminated": {"exitCode": 0}});
        p.status = Some(
            serde_json::from_value(serde_json::json!({
                "phase": "Pending",
                "initContainerStatuses": [
                    {"name": "init-datastore", "ready": true, "restartCount": 0, "image": "i", "imageID": "", "state": done},
                    {"name": "init-sync", "ready": true, "restartCount": 0, "image": "i", "imageID": "", "state": done},
                ],
                "containerStatuses": [{"name": "daemon", "ready": false, "restartCount": 0, "image": "i", "imageID": "", "state": {"waiting": {"reason": "PodInitializing"}}}],
            }))
            .unwrap(),
        );
        assert_eq!(
            unready(&p).as_deref(),
            Some("pod lily-daemon-0 Pending: container daemon is held by its postStart hook (it counts as started once the hook returns)")
        );
        // Without the hook, it is only waiting.
        p.spec.as_mut().unwrap().containers[0].lifecycle = None;
        assert_eq!(unready(&p).as_deref(), Some("pod lily-daemon-0 Pending: container daemon waiting (PodInitializing)"));
    }
}
