//! `lily-e2e check`: a scenario author's mistakes are found when the file is loaded, with the
//! file, the step (index and kind) and the field named, before anything starts. The check
//! runs with an empty tool cache: it needs no cluster, no helm, no PostgreSQL.

use std::path::Path;

use rstest::rstest;

mod common;

/// A scenario directory with one scenario file, the repository's runbooks and one values file.
fn scenario_dir(file: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("values")).unwrap();
    std::fs::write(dir.path().join("values/daemon-default.yaml"), "{}\n").unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    for rb in ["multi-attach.yaml", "volume-node-affinity-conflict.yaml"] {
        std::fs::copy(common::repo_root().join("scenarios/runbooks").join(rb), dir.path().join("runbooks").join(rb)).unwrap();
    }
    std::fs::write(dir.path().join(file), text).unwrap();
    dir
}

fn check(dir: &Path) -> (bool, String, String) {
    let empty_cache = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lily-e2e"))
        .args(["check", "--scenarios"])
        .arg(dir)
        .env("LILY_E2E_CACHE", empty_cache.path())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const HEAD: &str =
    "name: broken\nsummary: a broken scenario\nvalues: [daemon-default.yaml]\ntry:\n  - helm-repo-add: {}\n  - postgres: {}\n";

#[rstest]
#[case::unknown_step("  - helm-upgrad: {}\n", &["broken.yaml", "unknown variant `helm-upgrad`"])]
#[case::unknown_field("  - helm-upgrade: {versoin: '0.1.0'}\n", &["broken.yaml", "unknown field `versoin`"])]
#[case::bad_duration("  - helm-upgrade: {wait: true, timeout: soon}\n", &["step 3 (helm-upgrade)", "field `timeout`", "`soon` is not a duration"])]
#[case::bad_regex("  - helm-upgrade: {version: 9.9.9, expect-failure: 'has no ('}\n", &["step 3 (helm-upgrade)", "field `expect-failure`", "not a valid regex"])]
#[case::undefined_variable(
    "  - helm-upgrade: {}\n  - expect-claim: {volume: '${before}'}\n",
    &["step 4 (expect-claim)", "field `volume`", "`${before}` is not defined here"]
)]
#[case::default_variable_before_its_definition("  - expect-pod: {phase: Running}\n", &["step 3 (expect-pod)", "`${pod}`", "no earlier step defines"])]
#[case::missing_runbook("  - helm-upgrade: {}\n  - runbook: {name: no-such-runbook}\n", &["step 4 (runbook)", "field `name`", "runbook no-such-runbook not found"])]
#[case::missing_values_file("  - helm-upgrade: {values: [nope.yaml]}\n", &["step 3 (helm-upgrade)", "field `values`", "nope.yaml does not exist"])]
#[case::unknown_catalogue_entry(
    "  - helm-upgrade: {}\n  - expect-event: {object: 'Pod/${pod}', reason: FailedScheduling, catalogue: no-such-entry}\n",
    &["step 4 (expect-event)", "field `catalogue`", "no catalogue entry `no-such-entry`"]
)]
fn a_broken_step_is_named_with_its_field(#[case] step: &str, #[case] expected: &[&str]) {
    let dir = scenario_dir("broken.yaml", &format!("{HEAD}{step}"));
    let (ok, stdout, stderr) = check(dir.path());
    assert!(!ok, "check passed a broken scenario:\n{stdout}{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "`{e}` missing from:\n{stderr}");
    }
    assert!(stdout.contains("1 with errors"), "{stdout}");
}

#[test]
fn invalid_yaml_is_reported_with_its_line() {
    let dir = scenario_dir("broken.yaml", &format!("{HEAD}  - helm-upgrade: {{version: [0.1.0}}\n"));
    let (ok, _, stderr) = check(dir.path());
    assert!(!ok);
    assert!(stderr.contains("broken.yaml") && stderr.contains("line 7"), "{stderr}");
}

#[test]
fn a_missing_scenario_values_file_is_named() {
    let dir = scenario_dir("broken.yaml", &HEAD.replace("daemon-default.yaml", "gone.yaml"));
    let (ok, _, stderr) = check(dir.path());
    assert!(!ok);
    assert!(stderr.contains("broken.yaml") && stderr.contains("gone.yaml does not exist"), "{stderr}");
}

#[test]
fn every_broken_file_is_reported_not_just_the_first() {
    let dir = scenario_dir("a.yaml", &format!("{HEAD}  - helm-upgrade: {{timeout: soon, wait: true}}\n"));
    std::fs::write(dir.path().join("b.yaml"), HEAD.replace("name: broken", "name: other").replace("postgres: {}", "postgress: {}"))
        .unwrap();
    let (ok, stdout, stderr) = check(dir.path());
    assert!(!ok);
    assert!(stderr.contains("a.yaml") && stderr.contains("b.yaml"), "{stderr}");
    assert!(stdout.contains("2 with errors"), "{stdout}");
}

#[test]
fn the_shipped_scenarios_check_clean_built_in_and_from_the_checkout() {
    for args in [vec!["check"], vec!["check", "--scenarios", common::layout().root().to_str().unwrap()]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lily-e2e")).args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(", 0 with errors"), "{stdout}");
    }
}
