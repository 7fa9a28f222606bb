//! One test per scenario case (`cargo test --test scenarios install`,
//! `cargo test --test scenarios pvc-node-affinity-conflict/`), checked against
//! `snapshots/scenarios/`. This file is a reporter of the library's suite engine: the engine
//! plans the cases and lends environments (non-exclusive cases share one local cluster and
//! run in parallel, each in its own namespace; exclusive ones get a cluster of their own),
//! and each libtest trial runs one case and turns its outcome into pass, fail or ignored.

use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};
use lily_e2e::suite::{Suite, SuitePlan};

mod common;

fn main() {
    let args = Arguments::from_args();
    let (rt, cancel, plans) = common::scenario_harness();
    let plan = SuitePlan::select(&plans, &[], false, lily_e2e::scenario::env::SUITE_FIXTURE_VERSIONS.len()).expect("all cases");
    let suite = Arc::new(Suite::new(common::env_options(), cancel));
    let mut trials = Vec::new();
    for case in &plan.cases {
        let (rt, suite, case) = (rt.clone(), suite.clone(), case.clone());
        let ignored = case.skip.is_some();
        trials.push(
            Trial::test(case.name().to_string(), move || rt.block_on(common::run_and_snapshot(&suite, &case)))
                .with_kind("scenario")
                .with_ignored_flag(ignored),
        );
    }
    let expected: Vec<String> = plan.cases.iter().map(|c| format!("{}.snap", c.name().replace('/', "__"))).collect();
    trials.push(Trial::test("snapshots/scenarios holds a snapshot for each case and nothing else", move || {
        let dir = common::repo_root().join("snapshots/scenarios");
        let mut extra = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| Failed::from(format!("{}: {e}", dir.display())))?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !expected.contains(&n) {
                extra.push(n);
            }
        }
        let missing: Vec<&String> = expected.iter().filter(|n| !dir.join(n).exists()).collect();
        if extra.is_empty() && missing.is_empty() {
            Ok(())
        } else {
            Err(Failed::from(format!("unreferenced snapshots: {extra:?}; missing snapshots: {missing:?}")))
        }
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(env) = rt.block_on(suite.pool.release_shared()) {
        drop(env);
    }
    conclusion.exit();
}
