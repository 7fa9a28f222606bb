//! The simulated cloud against the real local control plane: the zonal block-storage driver
//! (provision, attach, detach, delete), the kubelet's volumesInUse and mount gating, and a
//! real Multi-Attach error from kube-controller-manager's attach/detach controller.
//!
//! Each test starts its own local cluster (the pinned tools must be installed: `lily-e2e
//! tools install`; without them the tests say so and pass vacuously). The tests take a
//! lock so that only one cluster runs at a time. Observed timings are printed (run with
//! `--nocapture` to see them); they are not asserted. `LILY_E2E_KEEP=1` keeps each run's
//! directory (logs, including `logs/sim-cloud.log`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, PodSpec, PodTemplateSpec,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use lily_e2e::cluster::local::Local;
use lily_e2e::cluster::{Cluster, ClusterProvider, ClusterSpec};
use lily_e2e::labels::{POOL_LABEL, ZONE_LABEL};
use lily_e2e::run::{Run, RUN_LABEL};
use lily_e2e::sim::{self, SimCloud};
use lily_e2e::tools::Tools;
use lily_e2e::wait::{until, until_list};
use lily_e2e::Error;

const T: Duration = Duration::from_secs(60);

static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Env {
    run: Run,
    cluster: Cluster,
    ns: String,
    t0: Instant,
}

impl Env {
    /// A local cluster (3 nodes, 2 zones) and a namespace; `None` if the tools are missing.
    async fn start(ns: &str) -> Option<Env> {
        let run = Run::create(std::env::var_os("LILY_E2E_KEEP").is_some()).expect("create run");
        let t0 = Instant::now();
        let cluster = match Local::new(Tools::new()).start(&ClusterSpec::default(), &run).await {
            Ok(c) => c,
            Err(e @ Error::ToolMissing { .. }) => {
                eprintln!("skipped: {e}");
                return None;
            }
            Err(e) => panic!("local cluster did not start: {e:#?}"),
        };
        eprintln!("[timing] cluster + sim cloud ready in {:.1}s", t0.elapsed().as_secs_f64());
        let nss: Api<Namespace> = Api::all(cluster.client.clone());
        let obj = Namespace {
            metadata: ObjectMeta { name: Some(ns.into()), labels: Some(run_labels(&run)), ..Default::default() },
            ..Default::default()
        };
        nss.create(&PostParams::default(), &obj).await.expect("create namespace");
        Some(Env { run, cluster, ns: ns.into(), t0: Instant::now() })
    }

    fn client(&self) -> Client {
        self.cluster.client.clone()
    }

    fn sim(&self) -> &SimCloud {
        self.cluster.sim().expect("the local provider runs the sim cloud")
    }

    fn mark(&self, what: &str) {
        eprintln!("[timing] {:>6.1}s  {what}", self.t0.elapsed().as_secs_f64());
    }

    async fn teardown(self) {
        if std::env::var_os("LILY_E2E_KEEP").is_some() {
            let events: Api<Event> = Api::namespaced(self.client(), &self.ns);
            let mut evs = events.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
            evs.sort_by_key(|e| e.metadata.resource_version.clone().and_then(|r| r.parse::<u64>().ok()));
            for e in evs {
                let o = &e.involved_object;
                eprintln!(
                    "[event] {} {}/{} uid={} {} {}: {}",
                    e.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
                    o.kind.clone().unwrap_or_default(),
                    o.name.clone().unwrap_or_default(),
                    o.uid.clone().unwrap_or_default(),
                    e.source.as_ref().and_then(|s| s.component.clone()).unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default()
                );
            }
        }
        let log = self.sim().log_path().to_path_buf();
        eprintln!("--- {} ---\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
        self.cluster.teardown(lily_e2e::cluster::Teardown::Fast).await.expect("teardown");
        drop(self.run);
    }
}

fn run_labels(run: &Run) -> BTreeMap<String, String> {
    [(RUN_LABEL.to_string(), run.id().to_string())].into()
}

/// A 1-replica StatefulSet `db` with a 1Gi volumeClaimTemplate `data`, on pool `pool-a`.
fn statefulset(run: &Run, storage_class: Option<&str>) -> StatefulSet {
    let labels: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
    StatefulSet {
        metadata: ObjectMeta { name: Some("db".into()), labels: Some(run_labels(run)), ..Default::default() },
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some("db".into()),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    node_selector: Some([(POOL_LABEL.to_string(), "pool-a".to_string())].into()),
                    containers: vec![Container {
                        name: "db".into(),
                        image: Some("postgres:17".into()),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "data".into(),
                            mount_path: "/var/lib/postgresql/data".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta { name: Some("data".into()), ..Default::default() },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: storage_class.map(str::to_string),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some([("storage".to_string(), Quantity("1Gi".into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                status: None,
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn running(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn node_of(p: &Pod) -> String {
    p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
}

fn in_use(n: &Node) -> Vec<String> {
    n.status.as_ref().and_then(|s| s.volumes_in_use.clone()).unwrap_or_default()
}

fn attached(n: &Node) -> Vec<String> {
    n.status.as_ref().and_then(|s| s.volumes_attached.clone()).unwrap_or_default().into_iter().map(|a| a.name).collect()
}

/// Starts `db` and waits for db-0 to run; returns (pod, PV, the volume's unique name).
async fn start_db(env: &Env, storage_class: Option<&str>) -> (Pod, PersistentVolume, String) {
    let client = env.client();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &env.ns);
    sts.create(&PostParams::default(), &statefulset(&env.run, storage_class)).await.expect("create statefulset");
    env.mark("StatefulSet db created");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &env.ns);
    let pod = until(&pods, "db-0", "pod db-0 to be Running", T, running).await.expect("db-0 runs").unwrap();
    env.mark(&format!("db-0 Running on {}", node_of(&pod)));
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &env.ns);
    let pvc = pvcs.get("data-db-0").await.expect("claim data-db-0");
    let pv_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).expect("claim is bound");
    let pv = Api::<PersistentVolume>::all(client).get(&pv_name).await.expect("its PV");
    let csi = pv.spec.as_ref().and_then(|s| s.csi.as_ref()).expect("a CSI PV");
    let unique = sim::csi_unique_name(&csi.driver, &csi.volume_handle);
    (pod, pv, unique)
}

async fn cordon(client: &Client, node: &str, on: bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"unschedulable": on}}))).await.expect("cordon");
}

/// Deletes db-0 and waits for its replacement to be scheduled; returns it.
async fn replace_db0(env: &Env, old: &Pod) -> Pod {
    let pods: Api<Pod> = Api::namespaced(env.client(), &env.ns);
    pods.delete("db-0", &delete_exactly(old)).await.expect("delete db-0");
    env.mark(&format!("deleted db-0 on {}", node_of(old)));
    let old_uid = old.uid();
    let new = until(&pods, "db-0", "a replacement db-0 to be scheduled", T, |p| {
        p.is_some_and(|p| p.uid() != old_uid && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
    })
    .await
    .expect("replacement scheduled")
    .unwrap();
    env.mark(&format!("replacement db-0 scheduled on {}", node_of(&new)));
    new
}

/// Deletes exactly this pod, not a same-named replacement.
fn delete_exactly(p: &Pod) -> DeleteParams {
    DeleteParams { preconditions: Some(Preconditions { uid: p.uid(), resource_version: None }), ..Default::default() }
}

fn attach_events(env: &Env, pod: &Pod) -> (Api<Event>, watcher::Config) {
    let events: Api<Event> = Api::namespaced(env.client(), &env.ns);
    let cfg = watcher::Config::default().fields(&format!("involvedObject.uid={}", pod.uid().unwrap()));
    (events, cfg)
}

fn has_event(evs: &[Arc<Event>], reason: &str, needle: &str) -> bool {
    evs.iter().any(|e| e.reason.as_deref() == Some(reason) && e.message.as_deref().is_some_and(|m| m.contains(needle)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_volume_is_provisioned_in_zone_attached_and_mounted() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(env) = Env::start("sim-basic").await else {
        return;
    };
    let client = env.client();

    // The StorageClass: default, WaitForFirstConsumer, labelled with the run.
    let sc = Api::<StorageClass>::all(client.clone()).get(sim::DEFAULT_STORAGE_CLASS).await.expect("gp2 exists");
    assert_eq!(sc.provisioner, sim::DRIVER);
    assert_eq!(sc.volume_binding_mode.as_deref(), Some("WaitForFirstConsumer"));
    assert_eq!(sc.annotations().get("storageclass.kubernetes.io/is-default-class").map(String::as_str), Some("true"));
    assert_eq!(sc.labels().get(RUN_LABEL), Some(&env.run.id().to_string()));

    let (pod, pv, unique) = start_db(&env, Some("gp2")).await;
    let node = node_of(&pod);
    assert!(node.starts_with("sim-a"), "db-0 runs in pool-a, not on {node}");
    assert_eq!(pod.annotations().get(sim::MOUNTED_ANNOTATION).map(String::as_str), Some("true"));

    // The PV: ours, pinned to zone-a, bound to the claim.
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &env.ns).get("data-db-0").await.unwrap();
    assert_eq!(pv.name_any(), format!("pvc-{}", pvc.uid().unwrap()));
    assert_eq!(pv.annotations().get(sim::PROVISIONED_BY).map(String::as_str), Some(sim::DRIVER));
    let spec = pv.spec.as_ref().unwrap();
    assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, "1Gi");
    assert_eq!(spec.csi.as_ref().unwrap().fs_type.as_deref(), Some("ext4"));
    assert!(spec.csi.as_ref().unwrap().volume_handle.starts_with("vol-"));
    let terms = &spec.node_affinity.as_ref().unwrap().required.as_ref().unwrap().node_selector_terms;
    let expr = &terms[0].match_expressions.as_ref().unwrap()[0];
    assert_eq!((expr.key.as_str(), expr.values.as_ref().unwrap().as_slice()), (ZONE_LABEL, &["zone-a".to_string()][..]));
    assert_eq!(spec.claim_ref.as_ref().unwrap().uid, pvc.uid());
    assert_eq!(pvc.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Bound"));

    // The VolumeAttachment (created by the attach/detach controller, attached by the sim).
    let vas: Api<VolumeAttachment> = Api::all(client.clone());
    let pv_name = pv.name_any();
    let list = until_list(&vas, watcher::Config::default(), "the VolumeAttachment of db-0's PV", T, |vs: &[Arc<VolumeAttachment>]| {
        vs.iter().any(|v| v.spec.source.persistent_volume_name.as_deref() == Some(pv_name.as_str()))
    })
    .await
    .unwrap();
    let va = list.iter().find(|v| v.spec.source.persistent_volume_name.as_deref() == Some(pv_name.as_str())).unwrap();
    assert_eq!(va.spec.attacher, sim::DRIVER);
    assert_eq!(va.spec.node_name, node);
    assert!(va.status.as_ref().is_some_and(|s| s.attached));
    assert!(va.finalizers().iter().any(|f| f == sim::ATTACHER_FINALIZER));

    // The node lists the volume as attached (by kube-controller-manager) and in use (by the sim kubelet).
    let n = Api::<Node>::all(client.clone()).get(&node).await.unwrap();
    assert!(attached(&n).contains(&unique), "{unique} not in volumesAttached of {node}: {:?}", attached(&n));
    assert!(in_use(&n).contains(&unique), "{unique} not in volumesInUse of {node}: {:?}", in_use(&n));

    // A pod without volumes starts as soon as it is scheduled.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &env.ns);
    let plain = Pod {
        metadata: ObjectMeta { name: Some("plain".into()), labels: Some(run_labels(&env.run)), ..Default::default() },
        spec: Some(PodSpec {
            containers: vec![Container { name: "c".into(), image: Some("busybox".into()), ..Default::default() }],
            ..Default::default()
        }),
        status: None,
    };
    pods.create(&PostParams::default(), &plain).await.unwrap();
    until(&pods, "plain", "pod plain to be Running", T, running).await.unwrap();
    env.mark("pod without volumes Running");

    // Scale to zero: the volume leaves volumesInUse, the controller detaches it.
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &env.ns);
    sts.patch("db", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}}))).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    until(&nodes, &node, "the volume to be unmounted and detached from the node", T, |n| {
        n.is_some_and(|n| !in_use(n).contains(&unique) && !attached(n).contains(&unique))
    })
    .await
    .unwrap();
    env.mark("volume unmounted and detached after scale to 0");
    until_list(&vas, watcher::Config::default(), "the VolumeAttachment to be gone", T, |vs: &[Arc<VolumeAttachment>]| {
        !vs.iter().any(|v| v.spec.source.persistent_volume_name.as_deref() == Some(pv_name.as_str()))
    })
    .await
    .unwrap();
    env.mark("VolumeAttachment gone");

    // Deleting the claim releases the PV; the provisioner deletes it.
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &env.ns).delete("data-db-0", &DeleteParams::default()).await.unwrap();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    until(&pvs, &pv_name, "the released PV to be deleted", T, |p| p.is_none()).await.unwrap();
    env.mark("released PV deleted");

    env.teardown().await;
}

/// Moves db-0 from its node to the other zone-a node by cordoning and deleting it.
async fn move_db0(env: &Env, pod: &Pod) -> Pod {
    let from = node_of(pod);
    cordon(&env.client(), &from, true).await;
    let new = replace_db0(env, pod).await;
    let to = node_of(&new);
    assert_ne!(to, from);
    assert!(to.starts_with("sim-a"), "the replacement stays in zone-a (its PV's zone), not on {to}");
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_attach_error_while_the_old_node_still_has_the_volume_in_use() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(env) = Env::start("sim-multi").await else {
        return;
    };
    let client = env.client();
    // The chart's way: no storageClassName, so the default class (gp2) applies.
    let (pod, pv, unique) = start_db(&env, None).await;
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &env.ns).get("data-db-0").await.unwrap();
    assert_eq!(pvc.spec.as_ref().unwrap().storage_class_name.as_deref(), Some("gp2"));
    let old_node = node_of(&pod);
    env.sim().set_unmount_delay(&old_node, Duration::from_secs(20));

    let new = move_db0(&env, &pod).await;
    let deleted_at = Instant::now();
    let (events, cfg) = attach_events(&env, &new);
    let want = format!(
        "Multi-Attach error for volume \"{}\" Volume is already exclusively attached to one node and can't be attached to another",
        pv.name_any()
    );
    let evs =
        until_list(&events, cfg.clone(), "a FailedAttachVolume Multi-Attach event for the replacement pod", T, |evs: &[Arc<Event>]| {
            has_event(evs, "FailedAttachVolume", &want)
        })
        .await
        .unwrap();
    env.mark("FailedAttachVolume (Multi-Attach) event seen");
    let ev = evs.iter().find(|e| e.reason.as_deref() == Some("FailedAttachVolume")).unwrap();
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.source.as_ref().and_then(|s| s.component.as_deref()), Some("attachdetach-controller"));

    // Meanwhile the replacement is not started, and the volume is still in use on the old node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &env.ns);
    let now = pods.get("db-0").await.unwrap();
    assert!(!running(Some(&now)), "db-0 must not run before its volume is attached");
    assert!(now.annotations().get(sim::MOUNTED_ANNOTATION).is_none());
    let n = Api::<Node>::all(client.clone()).get(&old_node).await.unwrap();
    assert!(in_use(&n).contains(&unique));

    // After the unmount delay the old node lets go; the controller detaches, then attaches to the new node.
    let after = until(&pods, "db-0", "the replacement db-0 to be Running", T, running).await.unwrap().unwrap();
    assert_eq!(after.uid(), new.uid());
    let waited = deleted_at.elapsed();
    env.mark(&format!("replacement Running {:.1}s after the old pod was deleted", waited.as_secs_f64()));
    assert!(waited >= Duration::from_secs(15), "the replacement started after {waited:?}, before the 20s unmount delay ran out");
    let (events, cfg) = attach_events(&env, &new);
    until_list(&events, cfg, "a SuccessfulAttachVolume event for the replacement pod", T, |evs: &[Arc<Event>]| {
        has_event(evs, "SuccessfulAttachVolume", "AttachVolume.Attach succeeded")
    })
    .await
    .unwrap();
    let n = Api::<Node>::all(client.clone()).get(&old_node).await.unwrap();
    assert!(!attached(&n).contains(&unique) && !in_use(&n).contains(&unique));
    let n = Api::<Node>::all(client.clone()).get(&node_of(&new)).await.unwrap();
    assert!(attached(&n).contains(&unique) && in_use(&n).contains(&unique));

    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_multi_attach_error_when_the_old_node_unmounts_at_once() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(env) = Env::start("sim-nomulti").await else {
        return;
    };
    let (pod, _pv, unique) = start_db(&env, Some("gp2")).await;
    let old_node = node_of(&pod);
    assert_eq!(env.sim().knobs().node(&old_node).unmount_delay, Duration::ZERO);

    let new = move_db0(&env, &pod).await;
    let deleted_at = Instant::now();
    let pods: Api<Pod> = Api::namespaced(env.client(), &env.ns);
    until(&pods, "db-0", "the replacement db-0 to be Running", T, running).await.unwrap();
    env.mark(&format!("replacement Running {:.1}s after the old pod was deleted", deleted_at.elapsed().as_secs_f64()));
    // The attach/detach controller records events in order: once the successful attach is
    // recorded, a Multi-Attach error for this pod would have been recorded before it.
    let (events, cfg) = attach_events(&env, &new);
    let evs = until_list(&events, cfg, "a SuccessfulAttachVolume event for the replacement pod", T, |evs: &[Arc<Event>]| {
        has_event(evs, "SuccessfulAttachVolume", "AttachVolume.Attach succeeded")
    })
    .await
    .unwrap();
    let failed: Vec<String> =
        evs.iter().filter(|e| e.reason.as_deref() == Some("FailedAttachVolume")).map(|e| e.message.clone().unwrap_or_default()).collect();
    assert!(failed.is_empty(), "unexpected FailedAttachVolume events: {failed:?}");
    let n = Api::<Node>::all(env.client()).get(&node_of(&new)).await.unwrap();
    assert!(attached(&n).contains(&unique) && in_use(&n).contains(&unique));

    env.teardown().await;
}

fn ready_status(n: &Node) -> Option<String> {
    n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_keeps_its_volume_until_it_is_marked_out_of_service() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(env) = Env::start("sim-dead").await else {
        return;
    };
    let client = env.client();
    let (pod, pv, unique) = start_db(&env, Some("gp2")).await;
    let dead = node_of(&pod);

    // Stop the node's heartbeat: kwok lets go of it, the sim kubelet freezes.
    let (label, _) = env.cluster.heartbeat_label().expect("the local provider simulates heartbeats");
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.patch(&dead, &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"labels": {label: null}}}))).await.unwrap();
    env.mark(&format!("heartbeat of {dead} stopped"));
    until(&nodes, &dead, "the node to turn NotReady", T, |n| n.is_some_and(|n| ready_status(n).as_deref() != Some("True"))).await.unwrap();
    env.mark(&format!("{dead} NotReady"));

    // Taint-based eviction marks db-0 for deletion; with no kubelet it stays Terminating,
    // and the dead node keeps the volume attached and in use.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &env.ns);
    until(&pods, "db-0", "db-0 to be evicted (deletionTimestamp set)", T, |p| p.is_some_and(|p| p.metadata.deletion_timestamp.is_some()))
        .await
        .unwrap();
    env.mark("db-0 Terminating on the dead node");
    let n = nodes.get(&dead).await.unwrap();
    assert!(in_use(&n).contains(&unique) && attached(&n).contains(&unique), "frozen: {:?} / {:?}", in_use(&n), attached(&n));
    let p = pods.get("db-0").await.unwrap();
    assert_eq!(p.uid(), pod.uid(), "the StatefulSet cannot replace a pod that is still Terminating");

    // Non-graceful node shutdown: the out-of-service taint lets the pod GC force-delete the
    // pod and the attach/detach controller force-detach its volume.
    nodes
        .patch(
            &dead,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"taints": [
                {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}
            ]}})),
        )
        .await
        .unwrap();
    env.mark(&format!("{dead} tainted out-of-service"));
    let old_uid = pod.uid();
    let new = until(&pods, "db-0", "a replacement db-0 to be Running", T, |p| p.is_some_and(|p| p.uid() != old_uid) && running(p))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(node_of(&new), dead);
    env.mark(&format!("replacement Running on {}", node_of(&new)));
    let n = nodes.get(&dead).await.unwrap();
    assert!(in_use(&n).contains(&unique), "the dead node's kubelet state is frozen: {:?}", in_use(&n));
    assert!(!attached(&n).contains(&unique), "the volume was force-detached from the dead node");
    let vas: Api<VolumeAttachment> = Api::all(client.clone());
    let pv_name = pv.name_any();
    let list = vas.list(&Default::default()).await.unwrap();
    let on: Vec<String> = list
        .items
        .iter()
        .filter(|v| v.spec.source.persistent_volume_name.as_deref() == Some(pv_name.as_str()))
        .map(|v| v.spec.node_name.clone())
        .collect();
    assert_eq!(on, [node_of(&new)]);

    env.teardown().await;
}
