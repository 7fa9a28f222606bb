//! The kwok configuration of the simulated kubelets: which Stages kwok plays on nodes and
//! pods.
//!
//! The standalone `kwok` binary (v0.8.0) has no built-in stages: `kwokctl` injects its
//! defaults, `kwok` itself refuses to start without any ("no stages found") and ignores a
//! resource kind it has no stages for. So this config carries node stages too (initialise,
//! then heartbeat by lease, as kwokctl's defaults do) next to the pod stages that make the
//! simulated kubelet honour volume mounts:
//!
//! - `lily-e2e-pod-ready` only starts a pod (phase Running, containers running and ready,
//!   init containers Completed, host and pod IPs) once the sim cloud's kubelet has
//!   annotated it [`MOUNTED_ANNOTATION`](super::MOUNTED_ANNOTATION)`: "true"`, i.e. once
//!   every CSI volume it uses is attached to its node;
//! - `lily-e2e-pod-complete` completes Running pods owned by a Job;
//! - `lily-e2e-pod-delete` finalises the deletion (grace 0) of pods with a deletionTimestamp
//!   once the sim kubelet has annotated them [`UNMOUNTED_ANNOTATION`](super::UNMOUNTED_ANNOTATION)`:
//!   "true"` (their volumes torn down; a real kubelet keeps the pod object until then).

use super::{MOUNTED_ANNOTATION, UNMOUNTED_ANNOTATION};

/// The KwokConfiguration and Stage documents, as one multi-document YAML stream.
pub fn kwok_config() -> String {
    let mut out = String::from(KWOK_CONFIGURATION);
    for stage in [NODE_INITIALIZE, NODE_HEARTBEAT, POD_READY, POD_COMPLETE, POD_DELETE] {
        out.push_str("---\n");
        out.push_str(&stage.replace("@MOUNTED@", MOUNTED_ANNOTATION).replace("@UNMOUNTED@", UNMOUNTED_ANNOTATION));
    }
    out
}

/// kwok applies its option defaults only when the config has no KwokConfiguration at all;
/// with one, unset parallelism options stay 0 and kwok refuses to start ("node leases
/// parallelism must be greater than 0"). So every option the controllers need is explicit
/// (kwok v0.8.0's defaults). Command-line flags (node selection, lease duration, CIDR,
/// server address) still override these.
const KWOK_CONFIGURATION: &str = r#"apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
metadata:
  name: lily-e2e
options:
  manageAllNodes: false
  enableDebuggingHandlers: true
  enableContentionProfiling: false
  enableProfilingHandler: false
  podPlayStageParallelism: 4
  nodePlayStageParallelism: 4
  nodeLeaseParallelism: 4
  podsOnNodeSyncParallelism: 1
  enablePodsOnNodeSyncListPager: true
  enablePodsOnNodeSyncStreamWatch: false
"#;

/// Nodes that are not Ready yet: conditions, addresses, allocatable/capacity as created,
/// node info, phase Running.
const NODE_INITIALIZE: &str = r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lily-e2e-node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - jq:
        key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
        operator: NotIn
        values: ['True']
  steps:
  - patch:
      subresource: status
      root: status
      template: |
        {{ $now := Now }}
        {{ $since := or .metadata.creationTimestamp $now }}
        conditions:
        {{ range NodeConditions }}
        - lastHeartbeatTime: {{ $now | Quote }}
          lastTransitionTime: {{ $since | Quote }}
          message: {{ .message | Quote }}
          reason: {{ .reason | Quote }}
          status: {{ .status | Quote }}
          type: {{ .type | Quote }}
        {{ end }}
        addresses:
        {{ with NodeIP }}
        - address: {{ . | Quote }}
          type: InternalIP
        {{ end }}
        {{ with NodeName }}
        - address: {{ . | Quote }}
          type: Hostname
        {{ end }}
        {{ with NodePort }}
        daemonEndpoints:
          kubeletEndpoint:
            Port: {{ . }}
        {{ end }}
        allocatable:
        {{ with .status.allocatable }}
        {{ YAML . 1 }}
        {{ else }}
          cpu: 1k
          memory: 1Ti
          pods: 1M
        {{ end }}
        capacity:
        {{ with .status.capacity }}
        {{ YAML . 1 }}
        {{ else }}
          cpu: 1k
          memory: 1Ti
          pods: 1M
        {{ end }}
        {{ $info := .status.nodeInfo }}
        {{ $kwok := printf "kwok-%s" Version }}
        nodeInfo:
          architecture: {{ or $info.architecture "amd64" }}
          bootID: {{ or $info.bootID `""` }}
          containerRuntimeVersion: {{ or $info.containerRuntimeVersion $kwok }}
          kernelVersion: {{ or $info.kernelVersion $kwok }}
          kubeProxyVersion: {{ or $info.kubeProxyVersion $kwok }}
          kubeletVersion: {{ or $info.kubeletVersion $kwok }}
          machineID: {{ or $info.machineID `""` }}
          operatingSystem: {{ or $info.operatingSystem "linux" }}
          osImage: {{ or $info.osImage `""` }}
          systemUUID: {{ or $info.systemUUID `""` }}
        phase: Running
"#;

/// Ready nodes: a status heartbeat every ~10 minutes; liveness comes from the node lease,
/// which kwok renews (`--node-lease-duration-seconds`) while the node carries its
/// management label.
const NODE_HEARTBEAT: &str = r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lily-e2e-node-heartbeat
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - jq:
        key: '.status.phase'
        operator: In
        values: ['Running']
    - jq:
        key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
        operator: In
        values: ['True']
  delay:
    durationMilliseconds: 600000
    jitterDurationMilliseconds: 610000
  steps:
  - patch:
      subresource: status
      root: status
      template: |
        {{ $now := Now }}
        {{ $since := or .metadata.creationTimestamp $now }}
        conditions:
        {{ range NodeConditions }}
        - lastHeartbeatTime: {{ $now | Quote }}
          lastTransitionTime: {{ $since | Quote }}
          message: {{ .message | Quote }}
          reason: {{ .reason | Quote }}
          status: {{ .status | Quote }}
          type: {{ .type | Quote }}
        {{ end }}
"#;

/// Scheduled, live, not yet started pods whose volumes the sim kubelet has mounted.
const POD_READY: &str = r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lily-e2e-pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - jq:
        key: '.spec.nodeName'
        operator: Exists
    - jq:
        key: '.metadata.deletionTimestamp'
        operator: DoesNotExist
    - jq:
        key: '.status.podIP'
        operator: DoesNotExist
    - jq:
        key: '.metadata.annotations["@MOUNTED@"]'
        operator: In
        values: ['true']
  steps:
  - patch:
      subresource: status
      root: status
      template: |
        {{ $now := Now }}
        conditions:
        - lastTransitionTime: {{ $now | Quote }}
          status: "True"
          type: PodReadyToStartContainers
        - lastTransitionTime: {{ $now | Quote }}
          status: "True"
          type: Initialized
        - lastTransitionTime: {{ $now | Quote }}
          status: "True"
          type: Ready
        - lastTransitionTime: {{ $now | Quote }}
          status: "True"
          type: ContainersReady
        - lastTransitionTime: {{ $now | Quote }}
          status: "True"
          type: PodScheduled
        {{ range .spec.readinessGates }}
        - lastTransitionTime: {{ $now | Quote }}
          status: "True"
          type: {{ .conditionType | Quote }}
        {{ end }}
        containerStatuses:
        {{ range .spec.containers }}
        - image: {{ .image | Quote }}
          name: {{ .name | Quote }}
          ready: true
          restartCount: 0
          started: true
          state:
            running:
              startedAt: {{ $now | Quote }}
        {{ end }}
        initContainerStatuses:
        {{ range .spec.initContainers }}
        - image: {{ .image | Quote }}
          name: {{ .name | Quote }}
          ready: true
          restartCount: 0
          {{ if eq .restartPolicy "Always" }}
          started: true
          state:
            running:
              startedAt: {{ $now | Quote }}
          {{ else }}
          started: false
          state:
            terminated:
              exitCode: 0
              finishedAt: {{ $now | Quote }}
              reason: Completed
              startedAt: {{ $now | Quote }}
          {{ end }}
        {{ end }}
        {{ $hostIPs := NodeIPsWith .spec.nodeName }}
        {{ with $hostIPs }}
        hostIP: {{ index . 0 | Quote }}
        hostIPs:
        {{ range . }}
        - ip: {{ . | Quote }}
        {{ end }}
        {{ end }}
        {{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
        {{ with $podIPs }}
        podIP: {{ index . 0 | Quote }}
        podIPs:
        {{ range . }}
        - ip: {{ . | Quote }}
        {{ end }}
        {{ end }}
        phase: Running
        startTime: {{ $now | Quote }}
"#;

/// Running pods owned by a Job run to completion.
const POD_COMPLETE: &str = r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lily-e2e-pod-complete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - jq:
        key: '.metadata.deletionTimestamp'
        operator: DoesNotExist
    - jq:
        key: '.status.phase'
        operator: In
        values: ['Running']
    - jq:
        key: '.metadata.ownerReferences.[].kind'
        operator: In
        values: ['Job']
  steps:
  - patch:
      subresource: status
      root: status
      template: |
        {{ $now := Now }}
        conditions:
        - lastTransitionTime: {{ $now | Quote }}
          reason: PodCompleted
          status: "False"
          type: Ready
        - lastTransitionTime: {{ $now | Quote }}
          reason: PodCompleted
          status: "False"
          type: ContainersReady
        containerStatuses:
        {{ range .spec.containers }}
        - image: {{ .image | Quote }}
          name: {{ .name | Quote }}
          ready: false
          restartCount: 0
          started: false
          state:
            terminated:
              exitCode: 0
              finishedAt: {{ $now | Quote }}
              reason: Completed
              startedAt: {{ $now | Quote }}
        {{ end }}
        phase: Succeeded
"#;

/// Pods being deleted whose volumes the sim kubelet has torn down: delete with grace 0.
const POD_DELETE: &str = r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lily-e2e-pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - jq:
        key: '.metadata.deletionTimestamp'
        operator: Exists
    - jq:
        key: '.metadata.annotations["@UNMOUNTED@"]'
        operator: In
        values: ['true']
  steps:
  - delete: true
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn stages() -> Vec<serde_json::Value> {
        crate::yaml::documents(&kwok_config()).unwrap()
    }

    #[test]
    fn is_a_kwok_configuration_followed_by_stages() {
        let docs = stages();
        assert_eq!(docs[0]["kind"], "KwokConfiguration");
        assert_eq!(docs[0]["apiVersion"], "config.kwok.x-k8s.io/v1alpha1");
        let names: Vec<&str> = docs[1..].iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["lily-e2e-node-initialize", "lily-e2e-node-heartbeat", "lily-e2e-pod-ready", "lily-e2e-pod-complete", "lily-e2e-pod-delete"]
        );
        for d in &docs[1..] {
            assert_eq!(d["apiVersion"], "kwok.x-k8s.io/v1alpha1");
            assert_eq!(d["kind"], "Stage");
        }
    }

    #[test]
    fn sets_the_options_kwok_only_defaults_without_a_configuration() {
        let docs = stages();
        let o = &docs[0]["options"];
        for k in ["podPlayStageParallelism", "nodePlayStageParallelism", "nodeLeaseParallelism", "podsOnNodeSyncParallelism"] {
            assert!(o[k].as_u64().is_some_and(|n| n > 0), "{k} must be positive");
        }
    }

    #[test]
    fn has_node_stages_because_standalone_kwok_has_no_defaults() {
        let docs = stages();
        let kinds: Vec<&str> = docs[1..].iter().map(|d| d["spec"]["resourceRef"]["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "Node").count(), 2);
    }

    #[test]
    fn pod_ready_is_gated_on_the_mount_annotation() {
        let docs = stages();
        let ready = docs.iter().find(|d| d["metadata"]["name"] == "lily-e2e-pod-ready").unwrap();
        let exprs = ready["spec"]["selector"]["matchExpressions"].as_array().unwrap();
        let keys: Vec<&str> = exprs.iter().map(|e| e["jq"]["key"].as_str().unwrap()).collect();
        assert!(keys.contains(&".spec.nodeName"));
        assert!(keys.contains(&".status.podIP"));
        assert!(keys.contains(&".metadata.deletionTimestamp"));
        let gate = exprs.iter().find(|e| e["jq"]["key"].as_str().unwrap().contains(MOUNTED_ANNOTATION)).unwrap();
        assert_eq!(gate["jq"]["key"], format!(".metadata.annotations[\"{MOUNTED_ANNOTATION}\"]"));
        assert_eq!(gate["jq"]["operator"], "In");
        assert_eq!(gate["jq"]["values"][0], "true");
        let template = ready["spec"]["steps"][0]["patch"]["template"].as_str().unwrap();
        for want in [
            "phase: Running",
            "type: Initialized",
            "type: Ready",
            "type: ContainersReady",
            "type: PodScheduled",
            "podIP:",
            "hostIP:",
            "reason: Completed",
        ] {
            assert!(template.contains(want), "pod-ready template lacks {want}");
        }
    }

    #[test]
    fn pod_delete_deletes_pods_being_deleted_once_unmounted() {
        let docs = stages();
        let del = docs.iter().find(|d| d["metadata"]["name"] == "lily-e2e-pod-delete").unwrap();
        let exprs = &del["spec"]["selector"]["matchExpressions"];
        assert_eq!(exprs[0]["jq"]["key"], ".metadata.deletionTimestamp");
        assert_eq!(exprs[0]["jq"]["operator"], "Exists");
        assert_eq!(exprs[1]["jq"]["key"], format!(".metadata.annotations[\"{UNMOUNTED_ANNOTATION}\"]"));
        assert_eq!(exprs[1]["jq"]["values"][0], "true");
        assert_eq!(del["spec"]["steps"][0]["delete"], true);
    }
}
