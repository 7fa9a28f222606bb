//! One test per scenario case (`cargo test --test scenarios install`,
//! `cargo test --test scenarios pvc-node-affinity-conflict/`), checked against
//! `snapshots/scenarios/`. Non-exclusive scenarios share one local cluster and run in
//! parallel, each in its own namespace; exclusive ones get a cluster of their own.

use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use lily_e2e::report::CaseOutcome;
use lily_e2e::scenario::env::{Env, EnvOptions};
use lily_e2e::scenario::{self, model, runner};

/// A case that runs longer than this fails (it names where it was).
const CASE_DEADLINE: Duration = Duration::from_secs(600);

type Shared = Arc<tokio::sync::OnceCell<Result<Env, String>>>;

fn main() {
    let args = Arguments::from_args();
    let rt = Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime"));
    lily_e2e::reap::cleanup_on_signal(rt.handle());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("LILY_E2E_LOG").unwrap_or_else(|_| "lily_e2e=warn".into()))
        .with_test_writer()
        .try_init();
    let scenarios = model::discover(&scenario::scenarios_dir()).expect("the scenario files load");
    let shared: Shared = Arc::default();
    let mut trials = Vec::new();
    for (_, sc) in scenarios {
        for (name, _case, _) in sc.cases() {
            let (rt, shared, sc) = (rt.clone(), shared.clone(), sc.clone());
            let test_name = name.clone();
            trials.push(Trial::test(name, move || rt.block_on(run_one(sc, test_name, shared))).with_kind("scenario"));
        }
    }
    let expected: Vec<String> = trials.iter().map(|t| format!("{}.snap", t.name().replace('/', "__"))).collect();
    trials.push(Trial::test("snapshots/scenarios holds a snapshot for each case and nothing else", move || {
        let dir = lily_e2e::helm::repo_root().join("snapshots/scenarios");
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
    if let Some(Ok(env)) = Arc::try_unwrap(shared).ok().and_then(|c| c.into_inner()) {
        if let Err(e) = rt.block_on(env.teardown()) {
            eprintln!("teardown of the shared environment failed: {e}");
        }
    }
    conclusion.exit();
}

async fn run_one(sc: model::Scenario, test_name: String, shared: Shared) -> Result<(), Failed> {
    let steps: Vec<model::Step> = sc.cases().into_iter().find(|(n, _, _)| *n == test_name).map(|(_, _, s)| s.to_vec()).unwrap_or_default();
    let opts = EnvOptions::default();
    let result = if sc.exclusive {
        let env = Env::start(&opts).await.map_err(|e| Failed::from(format!("cannot start the environment: {}", runner::chain(&e))))?;
        let r = execute(&env, &sc, &test_name, &steps).await;
        if let Err(e) = env.teardown().await {
            eprintln!("teardown of {test_name}'s environment failed: {e}");
        }
        r?
    } else {
        let r = shared.get_or_init(|| async { Env::start(&opts).await.map_err(|e| runner::chain(&e)) }).await;
        match r {
            Ok(env) => execute(env, &sc, &test_name, &steps).await?,
            Err(e) => return Err(Failed::from(format!("cannot start the shared environment: {e}"))),
        }
    };
    for n in &result.result.notes {
        eprintln!("{test_name}: {n}");
    }
    match &result.result.outcome {
        CaseOutcome::Failed { step, message } => {
            let artifacts = result.result.artifacts.as_ref().map(|a| format!("\nartifacts: {}", a.display())).unwrap_or_default();
            return Err(Failed::from(format!("step {step} failed: {message}{artifacts}")));
        }
        CaseOutcome::Passed => {}
    }
    if let Some(text) = result.snapshot {
        let snap_name = test_name.replace('/', "__");
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(lily_e2e::helm::repo_root().join("snapshots/scenarios"));
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            settings.bind(|| insta::assert_snapshot!(snap_name.as_str(), text.as_str()));
        }));
        if outcome.is_err() {
            return Err(Failed::from(format!(
                "the outcome of {test_name} differs from snapshots/scenarios/{snap_name}.snap (review with `cargo insta review`)"
            )));
        }
    } else {
        return Err(Failed::from(format!("{test_name} has no snapshot step: every scenario must record its outcome")));
    }
    Ok(())
}

async fn execute(env: &Env, sc: &model::Scenario, test_name: &str, steps: &[model::Step]) -> Result<runner::CaseRun, Failed> {
    tokio::time::timeout(CASE_DEADLINE, runner::run_case(env, sc, test_name, steps))
        .await
        .map_err(|_| Failed::from(format!("{test_name} did not finish within {}s", CASE_DEADLINE.as_secs())))
}
