//! The failure scenarios must be able to fail: without the fault, the expected event does
//! not appear and the case reports that the fault did not reproduce, rather than passing.

use lily_e2e::report::{CaseOutcome, Silent};
use lily_e2e::scenario::case::{run_case, Until};
use lily_e2e::scenario::env::Env;
use lily_e2e::scenario::model::{Case, Scenario, Step};
use lily_e2e::scenario::ScenarioPlan;

mod common;

fn case(file: &str, case: &str) -> (Scenario, Vec<Step>) {
    let text = std::fs::read_to_string(common::layout().root().join(file)).unwrap();
    let sc: Scenario = lily_e2e::yaml::from_str(&text).unwrap();
    let steps = sc.cases.iter().find(|c| c.name == case).unwrap().steps.clone();
    (sc, steps)
}

/// Runs the changed steps as case `name` and returns (failing step, message).
async fn failure_of(sc: &Scenario, name: &str, steps: &[Step]) -> (String, String) {
    let mut sc = sc.clone();
    sc.cases = vec![Case { name: name.rsplit('/').next().unwrap().to_string(), summary: String::new(), steps: steps.to_vec() }];
    match outcome_of(&sc, "changed.yaml", &common::env_options()).await {
        CaseOutcome::Failed { step, message } => (step, message),
        other => panic!("{name} did not fail without its fault: {other:?}"),
    }
}

/// Compiles `sc` (as if from `file`), runs its first case on a fresh environment of `opts`,
/// tears it down, and returns how the case ended.
async fn outcome_of(sc: &Scenario, file: &str, opts: &lily_e2e::scenario::env::EnvOptions) -> CaseOutcome {
    let layout = common::layout();
    let plan = ScenarioPlan::compile(sc, &layout.root().join(file), &layout).expect("the scenario compiles");
    let env = Env::start(opts).await.expect("the environment starts");
    let r = run_case(&env, &plan, &plan.cases[0], Until::End, &Silent, &Default::default()).await;
    env.teardown().await.unwrap();
    r.report.outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_attach_without_a_slow_unmount_does_not_reproduce() {
    let (sc, mut steps) = case("multi-attach.yaml", "slow-unmount");
    for s in steps.iter_mut() {
        match s {
            Step::UnmountDelay(u) => u.delay = Some("0s".into()),
            Step::ExpectEvent(e) => e.timeout = Some("20s".into()),
            _ => {}
        }
    }
    let (step, message) = failure_of(&sc, "multi-attach/no-fault", &steps).await;
    assert!(step.contains("expect-event"), "failed at {step}: {message}");
    assert!(message.contains("the fault did not reproduce") && message.contains("FailedAttachVolume"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_affinity_conflict_without_a_zone_change_does_not_reproduce() {
    let (sc, mut steps) = case("pvc-node-affinity-conflict.yaml", "upgrade-moves-pod");
    // zone-a stays schedulable, so the upgrade's new pod goes back to zone-a: nothing conflicts.
    let before = steps.len();
    steps.retain(|s| !matches!(s, Step::Cordon(n) if n.zone.as_deref() == Some("zone-a")));
    assert_eq!(steps.len(), before - 1, "the case cordons zone-a once");
    for s in steps.iter_mut() {
        if let Step::ExpectEvent(e) = s {
            e.timeout = Some("20s".into());
        }
    }
    let (step, message) = failure_of(&sc, "pvc-node-affinity-conflict/no-fault", &steps).await;
    assert!(step.contains("expect-event"), "failed at {step}: {message}");
    assert!(message.contains("the fault did not reproduce") && message.contains("FailedScheduling"), "{message}");
}

/// The upgrade hazard the fixture's 0.0.1 -> 0.1.0 reproduces (as the real chart's 0.1.0 ->
/// 0.1.1 did): the StatefulSet is renamed, so the datastore claim changes. The `upgrade`
/// scenario, unchanged, must end in the chart finding that names the rename, the orphaned
/// claim and its volume, and the new claim; not in a bare timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_renames_the_statefulset_orphans_the_datastore() {
    let text = std::fs::read_to_string(common::layout().root().join("upgrade.yaml")).unwrap();
    let sc: Scenario = lily_e2e::yaml::from_str(&text).unwrap();
    let mut opts = common::env_options();
    opts.charts = lily_e2e::helm::fixture_sources(&common::fixture_chart_dir(), &["0.0.1", "0.1.0"]);
    let outcome = outcome_of(&sc, "upgrade.yaml", &opts).await;
    let CaseOutcome::Failed { step, message } = outcome else { panic!("the rename was not caught: {outcome:?}") };
    assert!(step.contains("expect-claim"), "failed at {step}: {message}");
    assert!(message.starts_with("chart finding: StatefulSet lily-lily-dev-mainnet-daemon (was lily-lily)"), "{message}");
    assert!(message.contains("the upgrade orphans the datastore"), "{message}");
    assert!(message.contains("renamed StatefulSet lily-lily to lily-lily-dev-mainnet-daemon"), "{message}");
    assert!(message.contains("claim datastore-volume-lily-lily-0 (volume pvc-"), "{message}");
    assert!(message.contains("the new claim datastore-volume-lily-lily-dev-mainnet-daemon-0 is on a new volume (pvc-"), "{message}");
}

/// The values-contract scenario must be able to fail: on the fixture's 0.0.1 (the real
/// chart's scheduling defect) the nodeSelector knob cannot render, and the case fails as a
/// chart finding with helm's own words, the template and the line, while affinity and
/// tolerations render (0.0.1 also predates the contract's StatefulSet name, so the knobs
/// checked on the `daemon` StatefulSet are reported too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_values_contract_fails_on_the_nodeselector_defect() {
    let text = std::fs::read_to_string(common::layout().root().join("values-contract.yaml")).unwrap();
    let mut sc: Scenario = lily_e2e::yaml::from_str(&text).unwrap();
    let mut knobs = 0;
    for s in sc.steps.iter_mut() {
        if let Step::ValuesContract(v) = s {
            v.chart = Some("fixture@0.0.1".into());
            knobs = v.knobs.len();
        }
    }
    assert_eq!(knobs, 6, "the scenario sets six knobs");
    let outcome = outcome_of(&sc, "values-contract.yaml", &common::env_options()).await;
    let CaseOutcome::Failed { step, message } = outcome else { panic!("the defect was not caught: {outcome:?}") };
    assert!(step.contains("values-contract"), "failed at {step}: {message}");
    assert!(message.starts_with("chart finding: template lily/templates/statefulset.yaml"), "{message}");
    assert!(message.contains("knob nodeSelector"), "{message}");
    assert!(message.contains("YAML parse error on lily/templates/statefulset.yaml") && message.contains("line "), "{message}");
    assert!(message.contains("mapping values are not allowed in this context"), "{message}");
    assert!(!message.contains("knob affinity") && !message.contains("tolerations="), "only the nodeSelector breaks: {message}");
}
