//! The Kubernetes version matrix: install and both of the guide's failures
//! (`pvc-node-affinity-conflict`, `multi-attach`) on every pinned Kubernetes version other
//! than the default (which `tests/scenarios.rs` runs whole), each checked against the same
//! reviewed snapshot as on the default: the snapshots hold only what every version shares,
//! and each version's own wording must be one the catalogue knows for it.
//!
//! Trials are named `CASE@MAJOR.MINOR` (`multi-attach/slow-unmount@1.32`). A version that
//! is not built is an error under CI (`CI=true`), which builds them all
//! (`lily-e2e tools install --kubernetes all`); elsewhere its trials are ignored, and a line
//! says why and how to build it.

use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};
use lily_e2e::scenario::catalogue::major_minor;
use lily_e2e::suite::{Suite, SuitePlan};
use lily_e2e::tools::{Lock, Tools};

mod common;

/// The scenarios every pinned version runs.
const MATRIX: [&str; 3] = ["install", "pvc-node-affinity-conflict", "multi-attach"];

fn main() {
    let args = Arguments::from_args();
    let (rt, cancel, plans) = common::scenario_harness();
    let names: Vec<String> = MATRIX.iter().map(|s| s.to_string()).collect();
    let plan = SuitePlan::select(&plans, &names, false, lily_e2e::scenario::env::SUITE_FIXTURE_VERSIONS.len()).expect("the matrix cases");
    let lock = Lock::load();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let mut trials = Vec::new();
    let mut suites = Vec::new();
    for version in lock.kubernetes_versions().into_iter().filter(|v| v != lock.kubernetes_version()) {
        let mm = major_minor(&version);
        let missing = Tools::at_kubernetes(Some(&version)).and_then(|t| t.check_kubernetes()).err().map(|e| e.to_string());
        if let (Some(why), false) = (&missing, ci) {
            eprintln!("matrix: Kubernetes {version} is not built, its cases are ignored: {why}");
        }
        let mut opts = common::env_options();
        opts.kubernetes = Some(version.clone());
        let suite = Arc::new(Suite::new(opts, cancel.clone()));
        suites.push(suite.clone());
        for case in &plan.cases {
            let (rt, suite, case, missing) = (rt.clone(), suite.clone(), case.clone(), missing.clone());
            let ignored = case.skip.is_some() || (missing.is_some() && !ci);
            trials.push(
                Trial::test(format!("{}@{mm}", case.name()), move || match missing {
                    Some(why) => Err(Failed::from(format!("Kubernetes is not built: {why}"))),
                    None => rt.block_on(common::run_and_snapshot(&suite, &case)),
                })
                .with_kind("matrix")
                .with_ignored_flag(ignored),
            );
        }
    }
    let covered: Vec<String> = plan.cases.iter().map(|c| c.name().to_string()).collect();
    trials.push(Trial::test("the matrix covers install and every case of both faults", move || {
        for s in MATRIX {
            if !covered.iter().any(|c| c == s || c.starts_with(&format!("{s}/"))) {
                return Err(Failed::from(format!("no case of {s} in the matrix: {covered:?}")));
            }
        }
        match Lock::load().kubernetes_versions().len() {
            n if n >= 3 => Ok(()),
            n => Err(Failed::from(format!("{n} pinned Kubernetes versions; the matrix wants the guide's era, the default and the newest"))),
        }
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    for suite in suites {
        if let Some(env) = rt.block_on(suite.pool.release_shared()) {
            drop(env);
        }
    }
    conclusion.exit();
}
