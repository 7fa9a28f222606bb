//! Helpers shared by integration tests that drive the `lily-e2e` binary.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use lily_e2e::run::RunId;
use tokio::io::AsyncBufReadExt;

/// Starts `lily-e2e ARGS` with its own run registry `runs`; returns the child once a stderr
/// line starts with `ready` (panicking with what it printed otherwise), and its run id.
pub async fn spawn_until(args: &[&str], runs: &Path, ready: &str, timeout: Duration) -> (tokio::process::Child, RunId) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lily-e2e"))
        .args(args)
        .env("LILY_E2E_RUNS", runs)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let seen = tokio::time::timeout(timeout, async {
        let mut seen = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with(ready) {
                return Ok(());
            }
            seen.push(l);
        }
        Err(seen.join("\n"))
    })
    .await
    .unwrap_or_else(|_| panic!("`lily-e2e {}` did not print `{ready}` within {timeout:?}", args.join(" ")));
    seen.unwrap_or_else(|out| panic!("`lily-e2e {}` ended before printing `{ready}`:\n{out}", args.join(" ")));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let entries = lily_e2e::run::registered_in(runs);
    assert_eq!(entries.len(), 1);
    (child, entries[0].id.clone())
}

/// Runs `lily-e2e clean` against the run registry `registry`; asserts it succeeds and returns
/// what it printed.
pub async fn clean(registry: &Path) -> String {
    let out =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_lily-e2e")).arg("clean").env("LILY_E2E_RUNS", registry).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository root (tests read the source tree; the library never does).
pub fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("harness/ is inside the repository").to_path_buf()
}

/// The repository's `scenarios/`, as the binary's `--scenarios` would take it.
pub fn layout() -> lily_e2e::layout::Layout {
    lily_e2e::layout::Layout::at(repo_root().join("scenarios")).expect("scenarios/ exists")
}

pub fn fixture_chart_dir() -> std::path::PathBuf {
    layout().fixture_chart()
}

/// The fixture chart at every version in `FIXTURE_VERSIONS`.
pub fn default_sources() -> Vec<lily_e2e::helm::ChartSource> {
    lily_e2e::helm::fixture_sources(&fixture_chart_dir(), &lily_e2e::helm::FIXTURE_VERSIONS)
}

pub fn values_files() -> Vec<std::path::PathBuf> {
    layout().values_files().expect("scenarios/values lists")
}

/// Environment options as the CLI resolves them from the environment, for the test binaries:
/// `LILY_E2E_POSTGRES` picks the PostgreSQL provider.
pub fn env_options() -> lily_e2e::scenario::env::EnvOptions {
    let mut o = lily_e2e::scenario::env::EnvOptions::new(layout());
    o.artifacts = repo_root().join("target/lily-e2e/artifacts");
    if std::env::var("LILY_E2E_POSTGRES").is_ok_and(|v| v == "container") {
        o.postgres = lily_e2e::scenario::env::PostgresKind::Container;
    }
    o
}

/// The settings the command line would resolve from this process's environment, installed
/// for in-process use (the library itself never reads the environment).
pub fn install_settings() {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    lily_e2e::settings::install(lily_e2e::settings::Settings {
        cache: var("LILY_E2E_CACHE").map(Into::into),
        runs: var("LILY_E2E_RUNS").map(Into::into),
        docker_host: var("DOCKER_HOST"),
        postgres_bin: var("LILY_E2E_POSTGRES_BIN").map(Into::into),
        postgres_image: var("LILY_E2E_POSTGRES_IMAGE"),
        keep_containers: var("TESTCONTAINERS_COMMAND").is_some_and(|v| v == "keep"),
        kind_image: var("LILY_E2E_KIND_IMAGE"),
    });
}

/// What a libtest-mimic harness of scenario cases starts with: a 2-thread runtime, the
/// interrupt token installed on it, test logging (`LILY_E2E_LOG`, default warnings), and
/// every scenario of the layout compiled.
pub fn scenario_harness() -> (
    std::sync::Arc<tokio::runtime::Runtime>,
    tokio_util::sync::CancellationToken,
    Vec<std::sync::Arc<lily_e2e::scenario::compile::ScenarioPlan>>,
) {
    let rt = std::sync::Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime"));
    let cancel = lily_e2e::interrupt::install(rt.handle());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("LILY_E2E_LOG").unwrap_or_else(|_| "lily_e2e=warn".into()))
        .with_test_writer()
        .try_init();
    let plans = lily_e2e::scenario::compile::discover(&layout()).expect("the scenario files compile");
    (rt, cancel, plans)
}

/// Runs one planned case on the suite and checks its outcome against
/// `snapshots/scenarios/<case>.snap`: a libtest trial's body.
pub async fn run_and_snapshot(suite: &lily_e2e::suite::Suite, case: &lily_e2e::suite::PlannedCase) -> Result<(), libtest_mimic::Failed> {
    use libtest_mimic::Failed;
    use lily_e2e::report::{CaseOutcome, Silent};
    let name = case.name().to_string();
    let run = suite.run_one(case, &Silent).await;
    for n in &run.report.notes {
        eprintln!("{name}: {n}");
    }
    let artifacts = run.report.artifacts.as_ref().map(|a| format!("\nartifacts: {}", a.display())).unwrap_or_default();
    match &run.report.outcome {
        CaseOutcome::Failed { step, message } => return Err(Failed::from(format!("step {step} failed: {message}{artifacts}"))),
        CaseOutcome::Errored { step, message } => {
            return Err(Failed::from(format!("error (harness) in step {step}: {message}{artifacts}")))
        }
        CaseOutcome::Skipped { reason } => return Err(Failed::from(format!("{name} was skipped: {reason}"))),
        CaseOutcome::Passed => {}
    }
    let Some(text) = run.snapshot else {
        return Err(Failed::from(format!("{name} has no snapshot step: every scenario must record its outcome")));
    };
    let snap_name = name.replace('/', "__");
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(repo_root().join("snapshots/scenarios"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(snap_name.as_str(), text.as_str()));
    }));
    if outcome.is_err() {
        return Err(Failed::from(format!(
            "the outcome of {name} differs from snapshots/scenarios/{snap_name}.snap (review with `cargo insta review`)"
        )));
    }
    Ok(())
}
