//! kind: real kubelets, containerd and kube-proxy in Docker containers, one control-plane
//! node and a worker per planned node, from the project's own node image
//! (`ci/node-image.sh`, `lily-e2e/kind-node:<kubernetes version>`).
//!
//! The cluster is named `lily-e2e-<run id>` (kind labels its node containers with
//! `io.x-k8s.kind.cluster=<name>`, which is how `clean` finds a killed run's nodes); every
//! node carries the run label, the workers the zone, region and pool labels of the local
//! provider's plan. kindnetd cannot be had offline, so the default CNI is off and the
//! provider does what kindnetd does: one bridge network per node on its pod CIDR
//! (Debian's CNI plugins: bridge, host-local, portmap) and, on every node, a route to each
//! other node's pod CIDR via that node's address.

mod network;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use kube::runtime::watcher;

use super::nodes::{self, NodePlan, SimNode};
use super::{kubeconfig, Cluster, ClusterError, ClusterProvider, ClusterSpec, Running, Teardown};
use crate::error::{Error, Result};
use crate::labels::{POOL_LABEL, REGION_LABEL, ZONE_LABEL};
use crate::run::{Run, RunId, RUN_LABEL};
use crate::tools::Tools;

/// The prefix of every cluster this provider creates; the rest is the run id.
pub const CLUSTER_PREFIX: &str = "lily-e2e-";
/// The label kind puts on a cluster's node containers, its value the cluster name.
pub const KIND_CLUSTER_LABEL: &str = "io.x-k8s.kind.cluster";
/// The repository of lily-e2e's own node images (`ci/node-image.sh`).
pub const OWN_IMAGE_REPO: &str = "lily-e2e/kind-node";
/// The node image's label naming the etcd image tag it carries (kubeadm is told to use it).
const ETCD_TAG_LABEL: &str = "io.lily-e2e.etcd-image-tag";
/// The StorageClass the node image installs (local-path-provisioner, node-bound volumes).
pub const STORAGE_CLASS: &str = "standard";
/// The provisioner of [`STORAGE_CLASS`] (rancher's local-path-provisioner).
pub const LOCAL_PATH_PROVISIONER: &str = "rancher.io/local-path";

/// How long `kind create cluster` may take (image boot, kubeadm init and joins).
const CREATE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the nodes may take to be Ready once the network is set up.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The kind provider.
#[derive(Debug, Clone)]
pub struct Kind {
    tools: Tools,
    /// The node image; default `lily-e2e/kind-node:<kubernetes version>`.
    pub image: Option<String>,
    /// Images of the engine to load into every node's containerd once the cluster is up
    /// (`kind load docker-image`): what pods run that no registry serves here.
    pub load: Vec<String>,
    /// StorageClasses to add beside `standard`, on the same local-path provisioner
    /// (node-bound volumes, bound when the first consumer is scheduled): the classes the
    /// operators' values name (`gp2`).
    pub storage_classes: Vec<String>,
}

impl Kind {
    pub fn new(tools: Tools) -> Self {
        Kind { tools, image: None, load: Vec::new(), storage_classes: Vec::new() }
    }

    /// The node image: set here, else `--kind-image` (`LILY_E2E_KIND_IMAGE`), else
    /// lily-e2e's own for the pinned Kubernetes.
    pub fn image(&self) -> String {
        self.image
            .clone()
            .or_else(|| crate::settings::get().kind_image.clone())
            .unwrap_or_else(|| format!("{OWN_IMAGE_REPO}:{}", self.tools.kubernetes_version()))
    }
}

/// Which kind of node image a cluster boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeImage {
    /// lily-e2e's own (`ci/node-image.sh`): no kindnetd, so the provider sets up the pod
    /// network; kubeadm is told the etcd image tag it carries.
    Own { etcd_tag: String },
    /// An upstream image (`kindest/node:...`, where a registry serves it): kind's own CNI
    /// (kindnetd) and images.
    Upstream,
}

/// The kind cluster name of a run.
pub fn cluster_name(run: &RunId) -> String {
    format!("{CLUSTER_PREFIX}{run}")
}

/// The run id in a cluster name this provider made, if it is one.
pub fn run_of_cluster(name: &str) -> Option<&str> {
    let id = name.strip_prefix(CLUSTER_PREFIX)?;
    let ok = id.len() == 9 && id.starts_with('r') && id[1..].bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some(id)
}

/// kind's cluster configuration: a control plane and one worker per planned node (with the
/// plan's zone, region and pool labels), every node with the run label; for lily-e2e's own
/// node image, no default CNI and kubeadm told the etcd image tag the image carries. JSON,
/// which kind reads as YAML.
pub fn config(plan: &NodePlan, run: &RunId, image: &NodeImage) -> String {
    let mut nodes = vec![serde_json::json!({"role": "control-plane", "labels": {RUN_LABEL: run.as_str()}})];
    for n in &plan.nodes {
        nodes.push(serde_json::json!({"role": "worker", "labels": {
            RUN_LABEL: run.as_str(), ZONE_LABEL: n.zone, REGION_LABEL: "kind-region", POOL_LABEL: n.pool,
        }}));
    }
    let mut c = serde_json::json!({
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"apiServerAddress": "127.0.0.1"},
        "nodes": nodes,
    });
    if let NodeImage::Own { etcd_tag } = image {
        c["networking"]["disableDefaultCNI"] = true.into();
        c["kubeadmConfigPatches"] =
            serde_json::json!([format!("kind: ClusterConfiguration\netcd:\n  local:\n    imageTag: \"{etcd_tag}\"\n")]);
    }
    c.to_string()
}

impl ClusterProvider for Kind {
    fn name(&self) -> &'static str {
        "kind"
    }

    fn start<'a>(&'a self, spec: &'a ClusterSpec, run: &'a Run) -> BoxFuture<'a, Result<Cluster>> {
        Box::pin(async move {
            let plan = NodePlan::new(spec.nodes, spec.zones, spec.node_cpu, spec.node_memory_gib)?;
            let kind = self.tools.path("kind")?;
            let image = self.image();
            let node_image = node_image(&image, image.starts_with(OWN_IMAGE_REPO)).await?;
            let dir = run.subdir("cluster")?;
            let logs = run.subdir("logs")?;
            let name = cluster_name(run.id());
            let kubeconfig = dir.join("kubeconfig");
            let config_path = dir.join("kind.json");
            crate::fsutil::write_private(&config_path, config(&plan, run.id(), &node_image).as_bytes())?;
            // From here on, a failure (or a drop) deletes the cluster.
            let up = KindCluster { kind: kind.clone(), name: name.clone(), kubeconfig: kubeconfig.clone(), logs, deleted: false };
            let args: Vec<OsString> = [
                "create",
                "cluster",
                "--name",
                &name,
                "--image",
                &image,
                "--config",
                &config_path.to_string_lossy(),
                "--kubeconfig",
                &kubeconfig.to_string_lossy(),
                "--wait",
                "0s",
            ]
            .iter()
            .map(OsString::from)
            .collect();
            let out = crate::process::run_command(&kind, &args, &[], None, CREATE_TIMEOUT)
                .await
                .map_err(|e| Error::Tool { what: format!("kind create cluster {name} did not finish"), source: Some(Box::new(e)) })?;
            let log = up.logs.join("kind-create.log");
            let _ = crate::fsutil::write_private(&log, &[out.stdout.as_slice(), out.stderr.as_slice()].concat());
            if !out.status.success() {
                return Err(ClusterError::KindCreate {
                    name,
                    status: out.status.to_string(),
                    tail: crate::process::tail_of(&String::from_utf8_lossy(&out.stderr), 15, 2000),
                }
                .into());
            }
            let client = kubeconfig::client(&kubeconfig, None).await?;
            if matches!(node_image, NodeImage::Own { .. }) {
                network::connect(&client, run.id(), plan.nodes.len() + 1).await?;
            }
            settled(&client, run.id(), plan.nodes.len() + 1).await?;
            if !self.load.is_empty() {
                let mut args: Vec<OsString> = vec!["load".into(), "docker-image".into()];
                args.extend(self.load.iter().map(OsString::from));
                args.extend(["--name".into(), OsString::from(&name)]);
                run_ok(&kind, &args, &format!("kind load docker-image {}", self.load.join(" ")), CREATE_TIMEOUT).await?;
            }
            for class in &self.storage_classes {
                local_path_class(&client, class, run.id()).await?;
            }
            let version = client.apiserver_version().await.map_err(Error::kube("read the kind cluster's version"))?.git_version;
            Ok(Cluster::new(client, kubeconfig, version, "kind", Box::new(up)))
        })
    }
}

/// What the node image is: lily-e2e's own (it carries the etcd tag label), or an upstream
/// one. One of lily-e2e's (`ours`, by name) missing from the engine is an error saying how
/// to build it; another image missing is kind's to pull.
async fn node_image(image: &str, ours: bool) -> Result<NodeImage> {
    let engine = crate::engine::Engine::configured();
    engine.check()?;
    let labels = engine.image_labels(image).await?;
    match labels.as_ref().and_then(|l| l.get(ETCD_TAG_LABEL)) {
        Some(tag) if !tag.is_empty() => Ok(NodeImage::Own { etcd_tag: tag.clone() }),
        _ if ours => {
            let detail = if labels.is_some() { format!("the image has no label {ETCD_TAG_LABEL}") } else { String::new() };
            Err(ClusterError::KindImageMissing { image: image.to_string(), detail }.into())
        }
        _ => Ok(NodeImage::Upstream),
    }
}

/// Runs `program args` (`what` names it in errors) and fails, with the end of its stderr, if
/// it does not exit 0.
async fn run_ok(program: &Path, args: &[OsString], what: &str, timeout: Duration) -> Result<std::process::Output> {
    let out = crate::process::run_command(program, args, &[], None, timeout)
        .await
        .map_err(|e| Error::Tool { what: format!("{what} did not finish"), source: Some(Box::new(e)) })?;
    if !out.status.success() {
        let tail = crate::process::tail_of(&String::from_utf8_lossy(&out.stderr), 10, 1500);
        return Err(Error::Tool { what: format!("{what} failed ({}): {tail}", out.status), source: None });
    }
    Ok(out)
}

/// Waits until the `want` nodes are Ready, the `default` ServiceAccount exists (the
/// controller manager runs), the node image's StorageClass is there, and the cluster DNS
/// and the volume provisioner serve (an available replica each).
async fn settled(client: &kube::Client, run: &RunId, want: usize) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let sel = watcher::Config::default().labels(&format!("{RUN_LABEL}={run}"));
    crate::wait::until_list(&nodes, sel, &format!("{want} kind node(s) to be Ready"), READY_TIMEOUT, |ns: &[Arc<Node>]| {
        ns.len() == want && ns.iter().all(|n| nodes::is_ready(n))
    })
    .await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    crate::wait::until(&sas, "default", "the `default` ServiceAccount in namespace default", READY_TIMEOUT, |sa| sa.is_some()).await?;
    let classes: Api<StorageClass> = Api::all(client.clone());
    crate::wait::until(&classes, STORAGE_CLASS, "the node image's StorageClass `standard`", READY_TIMEOUT, |c| c.is_some()).await?;
    for (ns, name) in [("kube-system", "coredns"), ("local-path-storage", "local-path-provisioner")] {
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let what = format!("Deployment {ns}/{name} to have an available replica");
        crate::wait::until(&api, name, &what, READY_TIMEOUT, |d| {
            d.and_then(|d| d.status.as_ref()).and_then(|s| s.available_replicas).unwrap_or(0) >= 1
        })
        .await?;
    }
    Ok(())
}

/// StorageClass `name` on the node image's local-path provisioner: node-bound volumes,
/// bound when the first consumer is scheduled, deleted with their claim.
pub fn local_path_class_object(name: &str, run: &RunId) -> StorageClass {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "labels": {RUN_LABEL: run.as_str()}},
        "provisioner": LOCAL_PATH_PROVISIONER,
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }))
    .expect("a StorageClass")
}

async fn local_path_class(client: &kube::Client, name: &str, run: &RunId) -> Result<()> {
    let api: Api<StorageClass> = Api::all(client.clone());
    match api.create(&Default::default(), &local_path_class_object(name, run)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(format!("create StorageClass {name}"))(e)),
    }
}

/// A created kind cluster: deleted on teardown, or on drop if teardown never ran.
#[derive(Debug)]
struct KindCluster {
    kind: PathBuf,
    name: String,
    kubeconfig: PathBuf,
    logs: PathBuf,
    deleted: bool,
}

impl KindCluster {
    fn delete_args(&self) -> Vec<OsString> {
        ["delete", "cluster", "--name", &self.name, "--kubeconfig", &self.kubeconfig.to_string_lossy()].iter().map(OsString::from).collect()
    }
}

impl Running for KindCluster {
    fn teardown(mut self: Box<Self>, _how: Teardown) -> BoxFuture<'static, Result<()>> {
        // kind's nodes are containers: `kind delete cluster` removes them at once whether the
        // cluster was kept or not; there is no graceful stop worth waiting for.
        Box::pin(async move {
            self.deleted = true;
            let what = format!("kind delete cluster {}", self.name);
            run_ok(&self.kind, &self.delete_args(), &what, Duration::from_secs(120)).await.map(drop)
        })
    }

    fn logs(&self) -> Vec<PathBuf> {
        let log = self.logs.join("kind-create.log");
        if log.is_file() {
            vec![log]
        } else {
            Vec::new()
        }
    }

    fn sim_nodes(&self) -> Option<&[SimNode]> {
        None
    }

    /// A node lost as a cloud loses an instance: its container stopped (kubelet, pods and
    /// all); the caller deletes its Node object, as a cloud's node lifecycle controller does.
    fn power_off<'a>(&'a self, node: &'a str) -> Option<BoxFuture<'a, Result<()>>> {
        Some(Box::pin(async move {
            let args: Vec<OsString> = ["stop", "--time", "0", node].iter().map(OsString::from).collect();
            run_ok(Path::new("docker"), &args, &format!("docker stop {node}"), Duration::from_secs(60)).await.map(drop)
        }))
    }
}

impl Drop for KindCluster {
    fn drop(&mut self) {
        if !self.deleted {
            // A best-effort fallback (start failed, or a panic): blocking, from any context.
            let _ = std::process::Command::new(&self.kind)
                .args(self.delete_args())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_carry_the_run_id_and_only_ours_are_read_back() {
        let id = RunId::new();
        let name = cluster_name(&id);
        assert_eq!(run_of_cluster(&name), Some(id.as_str()));
        assert!(name.len() <= 32, "kind's node names derive from it: {name}");
        for other in ["kind", "lily-e2e-", "lily-e2e-rzzzzzzzz", "lily-e2e-r0000000", "x-lily-e2e-r00000000"] {
            assert_eq!(run_of_cluster(other), None, "{other}");
        }
    }

    #[test]
    fn the_config_has_a_control_plane_and_labelled_workers_and_no_default_cni() {
        let id = RunId::new();
        let plan = NodePlan::new(2, 2, 4, 8).unwrap();
        let c: serde_json::Value = serde_json::from_str(&config(&plan, &id, &NodeImage::Own { etcd_tag: "3.6.16-0".into() })).unwrap();
        assert_eq!(c["apiVersion"], "kind.x-k8s.io/v1alpha4");
        assert_eq!(c["networking"]["disableDefaultCNI"], true);
        let nodes = c["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0]["role"], "control-plane");
        assert_eq!(nodes[0]["labels"][RUN_LABEL], id.as_str());
        assert_eq!(nodes[0]["labels"].get(ZONE_LABEL), None, "the control plane is in no zone");
        let zones: Vec<&str> = nodes[1..].iter().map(|n| n["labels"][ZONE_LABEL].as_str().unwrap()).collect();
        assert_eq!(zones, vec!["zone-a", "zone-b"]);
        assert!(nodes[1..].iter().all(|n| n["role"] == "worker" && n["labels"][RUN_LABEL] == id.as_str()));
        assert_eq!(nodes[2]["labels"][POOL_LABEL], "pool-b");
        assert!(c["kubeadmConfigPatches"][0].as_str().unwrap().contains("imageTag: \"3.6.16-0\""));
    }

    #[test]
    fn an_upstream_node_image_keeps_kinds_own_network_and_etcd() {
        let id = RunId::new();
        let plan = NodePlan::new(2, 2, 4, 8).unwrap();
        let c: serde_json::Value = serde_json::from_str(&config(&plan, &id, &NodeImage::Upstream)).unwrap();
        assert_eq!(c["networking"].get("disableDefaultCNI"), None);
        assert_eq!(c.get("kubeadmConfigPatches"), None);
        assert_eq!(c["nodes"].as_array().unwrap().len(), 3);
    }
}
