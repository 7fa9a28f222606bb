//! The local control plane, for real: start, nodes across zones, a StatefulSet's pods
//! Running on simulated nodes, a node failing, and teardown leaving nothing behind, also
//! when the harness is interrupted or killed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use lily_e2e::cluster::local::Local;
use lily_e2e::cluster::{ClusterProvider, ClusterSpec, Teardown};
use lily_e2e::labels::{KWOK_LABEL, ZONE_LABEL};
use lily_e2e::reap::processes_of;
use lily_e2e::run::Run;
use lily_e2e::tools::Tools;

mod common;

const T: Duration = Duration::from_secs(60);

async fn start(run: &Run) -> lily_e2e::cluster::Cluster {
    Local::new(Tools::new()).start(&ClusterSpec::default(), run).await.expect("the local cluster starts")
}

/// The API server logs this when it shuts down gracefully (after TERM); KILLed, it cannot.
const GRACEFUL_STOP: &str = "Stopped listening on 127.0.0.1:";

/// Whether the API server shut down gracefully, by its log (read after teardown: the run
/// directory lives until the run is dropped).
fn apiserver_stopped_gracefully(logs: &[std::path::PathBuf]) -> bool {
    let log = logs.iter().find(|l| l.ends_with("kube-apiserver.log")).expect("the API server's log");
    std::fs::read_to_string(log).unwrap().contains(GRACEFUL_STOP)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_spread_across_zones_and_a_statefulset_runs() {
    let run = Run::create(false).unwrap();
    let cluster = start(&run).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let list = nodes.list(&Default::default()).await.unwrap();
    let mut zones: Vec<(String, String)> = list.items.iter().map(|n| (n.name_any(), n.labels()[ZONE_LABEL].clone())).collect();
    zones.sort();
    assert_eq!(zones, [("sim-a1".into(), "zone-a".into()), ("sim-a2".into(), "zone-a".into()), ("sim-b1".into(), "zone-b".into())]);
    assert!(list.items.iter().all(lily_e2e::cluster::nodes::is_ready));

    let sts: StatefulSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "labels": {"lily-e2e.io/run-id": run.id().as_str()}},
        "spec": {
            "replicas": 2, "serviceName": "web", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "example/none:1"}]}}
        }
    }))
    .unwrap();
    let api: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), "default");
    api.create(&PostParams::default(), &sts).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let running =
        lily_e2e::wait::until_list(&pods, watcher::Config::default().labels("app=web"), "2 web pods Running", T, |ps: &[Arc<Pod>]| {
            ps.len() == 2 && ps.iter().all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        })
        .await
        .unwrap();
    assert!(running.iter().all(|p| p.spec.as_ref().unwrap().node_name.as_deref().unwrap().starts_with("sim-")));

    let logs = cluster.logs();
    cluster.teardown(Teardown::Fast).await.unwrap();
    assert!(processes_of(run.id()).is_empty(), "a process of the run survived teardown");
    assert!(!apiserver_stopped_gracefully(&logs), "a throwaway cluster's API server is KILLed, not drained");
    let dir = run.dir().to_path_buf();
    drop(run);
    assert!(!dir.exists(), "the run directory survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_heartbeat_stops_goes_not_ready_and_is_tainted_unreachable() {
    let run = Run::create(false).unwrap();
    let cluster = start(&run).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let patch = serde_json::json!({"metadata": {"labels": {KWOK_LABEL.0: null}}});
    nodes.patch("sim-b1", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let started = std::time::Instant::now();
    let node =
        lily_e2e::wait::until(&nodes, "sim-b1", "sim-b1 NotReady and tainted unreachable", Duration::from_secs(45), |n: Option<&Node>| {
            n.is_some_and(|n| {
                !lily_e2e::cluster::nodes::is_ready(n)
                    && n.spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|ts| ts.iter().any(|t| t.key == "node.kubernetes.io/unreachable"))
            })
        })
        .await
        .unwrap()
        .unwrap();
    eprintln!("sim-b1 unreachable after {:.1}s", started.elapsed().as_secs_f64());
    assert!(!lily_e2e::cluster::nodes::is_ready(&node));
    // The other nodes are unaffected.
    assert!(lily_e2e::cluster::nodes::is_ready(&nodes.get("sim-a1").await.unwrap()));
    let logs = cluster.logs();
    cluster.teardown(Teardown::Graceful).await.unwrap();
    assert!(processes_of(run.id()).is_empty());
    assert!(apiserver_stopped_gracefully(&logs), "a graceful teardown gives the API server TERM and time to stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_api_server_port_is_a_clear_error_and_nothing_is_left() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let run = Run::create(false).unwrap();
    let spec = ClusterSpec { apiserver_port: Some(port), ..Default::default() };
    let err = Local::new(Tools::new()).start(&spec, &run).await.expect_err("the port is taken");
    let msg = err.to_string();
    assert!(msg.contains(&format!("port {port}")) && msg.contains("in use"), "{msg}");
    assert!(processes_of(run.id()).is_empty());
}

/// Starts `lily-e2e cluster exec -- sleep 600` with its own run registry; returns the child
/// once the cluster is up, with its run id.
async fn harness_with_cluster(runs: &std::path::Path) -> (tokio::process::Child, lily_e2e::run::RunId) {
    let (child, id) = common::spawn_until(&["cluster", "exec", "--", "sleep", "600"], runs, "cluster up", T).await;
    assert!(processes_of(&id).len() >= 5, "etcd, kube-*, kwok run");
    (child, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_to_the_harness_stops_everything() {
    let runs = tempfile::tempdir().unwrap();
    let (mut child, id) = harness_with_cluster(runs.path()).await;
    let dir = std::env::temp_dir().join(format!("lily-e2e-{id}"));
    assert!(dir.exists());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(T, child.wait()).await.expect("the harness exits after SIGINT").unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(processes_of(&id).is_empty(), "a process survived SIGINT: {:?}", processes_of(&id));
    assert!(!dir.exists(), "the run directory survived SIGINT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_clean_removes_what_the_run_left() {
    let runs = tempfile::tempdir().unwrap();
    let (mut child, id) = harness_with_cluster(runs.path()).await;
    let dir = std::env::temp_dir().join(format!("lily-e2e-{id}"));
    child.kill().await.unwrap();
    let _ = child.wait().await;
    // The children die with the harness (tests/lifecycle.rs); the directory is what is left.
    assert!(dir.exists(), "the run directory outlives a SIGKILLed harness (that is what clean is for)");
    let text = common::clean(runs.path()).await;
    assert!(text.contains(id.as_str()) && text.contains("stopped"), "{text}");
    assert!(processes_of(&id).is_empty(), "clean left processes: {:?}", processes_of(&id));
    assert!(!dir.exists(), "clean left the run directory");
}

/// A run recorded in another registry (a test's own, say) is still found by `clean`: by its
/// directory's owner file, once that owner is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_finds_a_dead_run_of_another_registry_by_its_owner_file() {
    let runs = tempfile::tempdir().unwrap();
    let (mut child, id) = harness_with_cluster(runs.path()).await;
    let dir = std::env::temp_dir().join(format!("lily-e2e-{id}"));
    child.kill().await.unwrap();
    let _ = child.wait().await;
    let other = tempfile::tempdir().unwrap();
    let text = common::clean(other.path()).await;
    assert!(text.contains(&format!("{id}: stopped")), "{text}");
    assert!(processes_of(&id).is_empty(), "clean left processes: {:?}", processes_of(&id));
    assert!(!dir.exists(), "clean left the run directory");
}
