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
    assert_eq!(p.actions[0], note("sim-a1", "node sim-a1: volume v no longer used by a running pod; unmount is stuck: it stays in use"));
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
