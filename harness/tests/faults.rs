//! The failure scenarios must be able to fail: without the fault, the expected event does
//! not appear and the case reports that the fault did not reproduce, rather than passing.

use lily_e2e::report::CaseOutcome;
use lily_e2e::scenario::env::{Env, EnvOptions};
use lily_e2e::scenario::model::{Scenario, Step};
use lily_e2e::scenario::{runner, scenarios_dir};

fn case(file: &str, case: &str) -> (Scenario, Vec<Step>) {
    let sc = Scenario::load(&scenarios_dir().join(file)).unwrap();
    let steps = sc.cases.iter().find(|c| c.name == case).unwrap().steps.clone();
    (sc, steps)
}

/// Runs a case and returns (failing step, message).
async fn failure_of(sc: &Scenario, name: &str, steps: &[Step]) -> (String, String) {
    let env = Env::start(&EnvOptions::default()).await.expect("the environment starts");
    let r = runner::run_case(&env, sc, name, steps).await;
    env.teardown().await.unwrap();
    match r.result.outcome {
        CaseOutcome::Failed { step, message } => (step, message),
        CaseOutcome::Passed => panic!("{name} passed without its fault"),
    }
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
    // The upgrade keeps the pod in zone-a's pool: nothing conflicts.
    let mut upgrades = 0;
    for s in steps.iter_mut() {
        match s {
            Step::HelmUpgrade(h) => {
                upgrades += 1;
                if upgrades == 2 {
                    h.set = Some(serde_json::json!({"nodeSelector": {"lily-e2e.io/node-pool": "pool-a"}, "logLevel": "debug"}));
                }
            }
            Step::ExpectEvent(e) => e.timeout = Some("20s".into()),
            _ => {}
        }
    }
    let (step, message) = failure_of(&sc, "pvc-node-affinity-conflict/no-fault", &steps).await;
    assert!(step.contains("expect-event"), "failed at {step}: {message}");
    assert!(message.contains("the fault did not reproduce") && message.contains("FailedScheduling"), "{message}");
}
