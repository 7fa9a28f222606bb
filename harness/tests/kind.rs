//! The kind provider on real kubelets: a cluster of one control plane and two workers from
//! lily-e2e's node image, labelled like the local provider's nodes, with a pod network across
//! the nodes, Services, DNS and node-bound volumes; deleted on teardown; a killed run's
//! cluster removed by `lily-e2e clean`.
//!
//! And the scenarios on kind: the install scenario with the chart's pod running from the
//! stand-in Lily image (`ci/lily-image.sh`) and PostgreSQL on the kind network, whose outcome
//! this machine's size decides; the multi-attach cases skipped with their reason.
//!
//! They need a Docker engine that runs privileged containers (`ci/docker.sh`) and the node
//! image (`ci/node-image.sh`); `./ci/test.sh` builds both and sets `LILY_E2E_TEST_KIND=1`.
//! Without it these trials are ignored, and a line says why; with it, a missing image or
//! engine fails them.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, PostParams};
use libtest_mimic::{Arguments, Failed, Trial};
use lily_e2e::cluster::kind::{cluster_name, Kind, KIND_CLUSTER_LABEL, STORAGE_CLASS};
use lily_e2e::cluster::{ClusterProvider, ClusterSpec, Teardown};
use lily_e2e::labels::{POOL_LABEL, ZONE_LABEL};
use lily_e2e::run::{Run, RUN_LABEL};
use lily_e2e::tools::Tools;

/// An image every node has (the volume helper: a slim Debian with bash).
const POD_IMAGE: &str = "lily-e2e/local-path-helper:bookworm";

fn main() {
    let args = Arguments::from_args();
    let enabled = std::env::var("LILY_E2E_TEST_KIND").is_ok_and(|v| v == "1");
    if !enabled {
        eprintln!("kind: trials ignored: set LILY_E2E_TEST_KIND=1 where a Docker engine runs privileged containers and ./ci/node-image.sh has built the node image (./ci/test.sh does)");
    }
    let trial = |name: &str, f: fn() -> Result<(), Failed>| Trial::test(name, f).with_kind("kind").with_ignored_flag(!enabled);
    let trials = vec![
        trial("a kind cluster is labelled, networked across nodes, has node-bound volumes, and is deleted", cluster_up),
        trial("a killed run's kind cluster is removed by clean", killed_run_is_cleaned),
        trial("a missing node image is an error naming the image and how to build it", missing_image),
        trial(
            "the install scenario runs on kind: the chart's pod from the stand-in, or the chart finding when no node fits it",
            install_on_kind,
        ),
        trial("the multi-attach cases are skipped on kind, saying why", multi_attach_skipped_on_kind),
    ];
    libtest_mimic::run(&args, trials).exit();
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

fn fail(what: impl std::fmt::Display) -> Failed {
    Failed::from(what.to_string())
}

/// The ids of the node containers of kind cluster `name`, running or not.
fn node_containers(name: &str) -> Result<Vec<String>, Failed> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={KIND_CLUSTER_LABEL}={name}")])
        .output()
        .map_err(|e| fail(format!("docker ps: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!("docker ps failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
}

fn pod(name: &str, node: &str, script: &str, claim: Option<&str>) -> Pod {
    let mut spec = serde_json::json!({
        "restartPolicy": "Never",
        "nodeName": node,
        "containers": [{"name": "c", "image": POD_IMAGE, "imagePullPolicy": "Never", "command": ["bash", "-c", script]}],
    });
    if let Some(c) = claim {
        spec["containers"][0]["volumeMounts"] = serde_json::json!([{"name": "d", "mountPath": "/data"}]);
        spec["volumes"] = serde_json::json!([{"name": "d", "persistentVolumeClaim": {"claimName": c}}]);
        // The claim binds where the scheduler puts the pod (WaitForFirstConsumer): no nodeName.
        spec["nodeSelector"] = serde_json::json!({"kubernetes.io/hostname": node});
        spec.as_object_mut().expect("an object").remove("nodeName");
    }
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec})).expect("a pod")
}

/// Runs `p` in `default` and waits until it succeeds; its phase and log on failure.
async fn succeeds(pods: &Api<Pod>, p: Pod) -> Result<(), Failed> {
    let name = p.metadata.name.clone().expect("named");
    pods.create(&PostParams::default(), &p).await.map_err(|e| fail(format!("create pod {name}: {e}")))?;
    let what = format!("pod {name} to finish");
    let done = lily_e2e::wait::until(pods, &name, &what, Duration::from_secs(120), |p| {
        matches!(p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
    })
    .await
    .map_err(|e| fail(format!("{e:#}")))?;
    let phase = done.and_then(|p| p.status).and_then(|s| s.phase).unwrap_or_default();
    if phase != "Succeeded" {
        let log = pods.logs(&name, &Default::default()).await.unwrap_or_default();
        return Err(fail(format!("pod {name} ended {phase}: {log}")));
    }
    Ok(())
}

fn cluster_up() -> Result<(), Failed> {
    rt().block_on(async {
        let run = Run::create(false).map_err(fail)?;
        let name = cluster_name(run.id());
        let spec = ClusterSpec { nodes: 2, zones: 2, ..Default::default() };
        let cluster = Kind::new(Tools::new()).start(&spec, &run).await.map_err(|e| fail(format!("start: {e:#}")))?;
        let checks = async {
            let client = cluster.client.clone();
            let nodes: Vec<Node> = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.map_err(fail)?.items;
            if nodes.len() != 3 {
                return Err(fail(format!("{} nodes, want 3", nodes.len())));
            }
            let labels = |n: &Node| n.metadata.labels.clone().unwrap_or_default();
            if !nodes.iter().all(|n| labels(n).get(RUN_LABEL).map(String::as_str) == Some(run.id().as_str())) {
                return Err(fail("a node lacks the run label"));
            }
            let mut by_zone: BTreeMap<String, String> = BTreeMap::new();
            for n in &nodes {
                if let Some(z) = labels(n).get(ZONE_LABEL) {
                    by_zone.insert(z.clone(), n.metadata.name.clone().unwrap_or_default());
                    let pool = labels(n).get(POOL_LABEL).cloned().unwrap_or_default();
                    if pool != z.replace("zone-", "pool-") {
                        return Err(fail(format!("node in {z} is in pool `{pool}`")));
                    }
                }
            }
            if by_zone.keys().map(String::as_str).collect::<Vec<_>>() != ["zone-a", "zone-b"] {
                return Err(fail(format!("worker zones: {by_zone:?}")));
            }
            let sc = Api::<StorageClass>::all(client.clone()).get(STORAGE_CLASS).await.map_err(fail)?;
            let default = sc.metadata.annotations.unwrap_or_default().get("storageclass.kubernetes.io/is-default-class").cloned();
            if default.as_deref() != Some("true") {
                return Err(fail(format!("StorageClass {STORAGE_CLASS} is not the default: {default:?}")));
            }

            let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
            // A node-bound volume: written on zone-a's worker, its PV pinned to that node.
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
            let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }))
            .expect("a claim");
            claims.create(&PostParams::default(), &claim).await.map_err(fail)?;
            let a = &by_zone["zone-a"];
            succeeds(&pods, pod("writer", a, "echo kept > /data/f && cat /data/f", Some("data"))).await?;
            let bound = claims.get("data").await.map_err(fail)?;
            let pv_name = bound.spec.and_then(|s| s.volume_name).ok_or_else(|| fail("the claim has no volume"))?;
            let pv = Api::<PersistentVolume>::all(client.clone()).get(&pv_name).await.map_err(fail)?;
            let affinity = serde_json::to_string(&pv.spec.and_then(|s| s.node_affinity)).map_err(fail)?;
            if !affinity.contains(a.as_str()) {
                return Err(fail(format!("PV {pv_name} is not bound to {a}: {affinity}")));
            }

            // Pod to pod across nodes (the cluster DNS pod, from a worker it is not on), and
            // Services through kube-proxy (the DNS and API Services), and names.
            let dns = pods_in(&client, "kube-system", "k8s-app=kube-dns").await?;
            let (dns_ip, dns_node) = dns.first().cloned().ok_or_else(|| fail("no DNS pod"))?;
            let other = by_zone.values().find(|n| **n != dns_node).ok_or_else(|| fail("no worker without a DNS pod"))?;
            let script = format!(
                "timeout 5 bash -c 'exec 3<>/dev/tcp/{dns_ip}/53' && timeout 5 bash -c 'exec 3<>/dev/tcp/10.96.0.10/53' \
                 && timeout 5 bash -c 'exec 3<>/dev/tcp/10.96.0.1/443' && getent hosts kubernetes.default.svc.cluster.local"
            );
            succeeds(&pods, pod("network", other, &script, None)).await?;
            Ok::<_, Failed>(())
        };
        let result = checks.await;
        let down = cluster.teardown(Teardown::Fast).await.map_err(|e| fail(format!("teardown: {e:#}")));
        result?;
        down?;
        let left = node_containers(&name)?;
        if !left.is_empty() {
            return Err(fail(format!("teardown left node containers of {name}: {left:?}")));
        }
        Ok(())
    })
}

/// The (pod IP, node) of the pods matching `selector` in `ns`.
async fn pods_in(client: &kube::Client, ns: &str, selector: &str) -> Result<Vec<(String, String)>, Failed> {
    let list = Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default().labels(selector)).await.map_err(fail)?;
    Ok(list.items.into_iter().filter_map(|p| Some((p.status?.pod_ip?, p.spec?.node_name?))).collect())
}

fn killed_run_is_cleaned() -> Result<(), Failed> {
    let registry = tempfile::tempdir().map_err(fail)?;
    let bin = env!("CARGO_BIN_EXE_lily-e2e");
    let mut child = Command::new(bin)
        .args(["cluster", "exec", "--provider", "kind", "--nodes", "1", "--zones", "1", "--", "sleep", "600"])
        .env("LILY_E2E_RUNS", registry.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    // On stderr, "cluster up: ..., KUBECONFIG=/tmp/lily-e2e-<id>/cluster/kubeconfig" once it is up.
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped");
    let line = std::io::BufReader::new(stderr).lines().map_while(Result::ok).find(|l| l.starts_with("cluster up:"));
    let id = line.as_deref().and_then(|l| l.split("/lily-e2e-").nth(1)).and_then(|rest| rest.split('/').next()).map(str::to_string);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let id = id.ok_or_else(|| fail(format!("cluster exec printed no `cluster up` line: {line:?}")))?;
    let name = format!("lily-e2e-{id}");
    let before = node_containers(&name)?;
    if before.len() != 2 {
        return Err(fail(format!(
            "after SIGKILL, {name} has {} node containers, want 2 (the test cannot tell clean did anything)",
            before.len()
        )));
    }
    let out = Command::new(bin).arg("clean").env("LILY_E2E_RUNS", registry.path()).output().map_err(fail)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let after = node_containers(&name)?;
    if !out.status.success() || !after.is_empty() {
        return Err(fail(format!("clean ({}): {text}; left {after:?}", out.status)));
    }
    if !text.contains(&id) {
        return Err(fail(format!("clean does not name run {id}: {text}")));
    }
    Ok(())
}

fn missing_image() -> Result<(), Failed> {
    rt().block_on(async {
        let run = Run::create(false).map_err(fail)?;
        let mut kind = Kind::new(Tools::new());
        kind.image = Some("lily-e2e/kind-node:v0.0.0-missing".into());
        let e = match kind.start(&ClusterSpec { nodes: 1, zones: 1, ..Default::default() }, &run).await {
            Ok(c) => {
                let _ = c.teardown(Teardown::Fast).await;
                return Err(fail("a missing image started a cluster"));
            }
            Err(e) => e.to_string(),
        };
        let want = "the kind node image lily-e2e/kind-node:v0.0.0-missing is not in the docker engine";
        if !e.starts_with(want) || !e.contains("./ci/node-image.sh") {
            return Err(fail(format!("error: {e}")));
        }
        let left = node_containers(&cluster_name(run.id()))?;
        if !left.is_empty() {
            return Err(fail(format!("left {left:?}")));
        }
        Ok(())
    })
}

/// Runs `lily-e2e ARGS` with its artifacts in a temporary directory; its exit status, its
/// output, and the parsed `outcomes.json`.
fn lily_e2e(args: &[&str]) -> Result<(bool, String, serde_json::Value), Failed> {
    let artifacts = tempfile::tempdir().map_err(fail)?;
    let out = Command::new(env!("CARGO_BIN_EXE_lily-e2e"))
        .args(args)
        .arg("--artifacts")
        .arg(artifacts.path())
        .stdin(Stdio::null())
        .output()
        .map_err(fail)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let json = std::fs::read_to_string(artifacts.path().join("outcomes.json"))
        .map_err(|e| fail(format!("no outcomes.json ({e}); the run said:\n{text}")))?;
    Ok((out.status.success(), text, serde_json::from_str(&json).map_err(fail)?))
}

/// Whether a node of this machine can allocate `cpu` cores and `memory_gib` GiB (kind's
/// nodes report the machine's own; kubelet keeps 100Mi back for eviction).
fn machine_fits(cpu: usize, memory_gib: u64) -> bool {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0);
    cores >= cpu && mem_kib.saturating_sub(100 * 1024) >= memory_gib * 1024 * 1024
}

fn install_on_kind() -> Result<(), Failed> {
    // Where no registry serves postgres:15-alpine, ./ci/test.sh points at lily-e2e's image.
    let (ok, text, outcomes) = lily_e2e(&["run", "install", "--provider", "kind", "--nodes", "2"])?;
    let case = &outcomes["cases"][0];
    let (outcome, message) = (case["outcome"].as_str().unwrap_or(""), case["message"].as_str().unwrap_or(""));
    // The chart's init-datastore and init-sync request 4 CPUs and 16Gi, whatever the values
    // say (the fixture mirrors the real chart): on a smaller machine that is the chart finding.
    if machine_fits(4, 16) {
        if !ok || outcome != "passed" {
            return Err(fail(format!("install on kind: {outcome}: {message}\n{text}")));
        }
    } else {
        let want = [
            "chart finding: StatefulSet lily-lily-dev-mainnet-daemon (pod lily-lily-dev-mainnet-daemon-0)",
            "init container init-datastore requests cpu 4",
            "more than any node can allocate",
        ];
        if ok || outcome != "failed" || !want.iter().all(|w| message.contains(w)) {
            return Err(fail(format!(
                "install on kind, a machine too small for the chart: want the chart finding, got {outcome}: {message}\n{text}"
            )));
        }
        // Found while helm waited, not after its 120s timeout.
        let step = case["slowest-step"]["seconds"].as_f64().unwrap_or(f64::MAX);
        if step > 60.0 {
            return Err(fail(format!("the finding took {step:.0}s: the wait was not cut short")));
        }
    }
    Ok(())
}

fn multi_attach_skipped_on_kind() -> Result<(), Failed> {
    let (ok, text, outcomes) = lily_e2e(&["run", "multi-attach", "--provider", "kind"])?;
    let cases = outcomes["cases"].as_array().cloned().unwrap_or_default();
    let skipped = cases.iter().filter(|c| c["outcome"] == "skipped").count();
    if !ok || cases.len() != 2 || skipped != 2 || !text.contains("needs") || !text.contains("an attaching volume driver") {
        return Err(fail(format!("multi-attach on kind: {skipped} of {} skipped (exit ok: {ok}):\n{text}", cases.len())));
    }
    Ok(())
}
