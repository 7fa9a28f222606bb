//! Bad input gets a clear error naming the input and what to do, before anything starts,
//! and leaves nothing behind (no run directory, no process).

use rstest::rstest;

mod common;

/// Runs `lily-e2e ARGS` with its own temp dir, run registry and environment; returns
/// (success, stderr, what was left in the temp dir besides the extracted scenarios).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lily-e2e"));
    cmd.args(args).current_dir(tmp.path()).env("TMPDIR", tmp.path()).env("LILY_E2E_RUNS", tmp.path().join("runs"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("lily-e2e-scenarios-") && n != "runs")
        .collect();
    let runs_left = std::fs::read_dir(tmp.path().join("runs")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(runs_left, 0, "a run was registered for bad input {args:?}");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), left)
}

fn fixture() -> String {
    common::fixture_chart_dir().display().to_string()
}

#[rstest]
#[case::unknown_case(&["run", "multi-attach/nope"], &[], &["multi-attach has no case `nope`", "slow-unmount", "node-gone"])]
#[case::case_of_a_single_case_scenario(&["run", "install/nope"], &[], &["install has no cases; run it as `install`"])]
#[case::unknown_scenario(&["run", "nope"], &[], &["no scenario named `nope`", "install"])]
#[case::chart_version_not_semver(&["suite", "--chart", "FIXTURE@not-a-semver"], &[], &["\"not-a-semver\"", "is not a chart version", "@X.Y.Z"])]
#[case::more_zones_than_nodes(&["cluster", "exec", "--zones", "5", "--nodes", "2", "--", "true"], &[], &["--zones 5 is more than --nodes 2"])]
#[case::missing_values_file(&["suite", "-f", "missing.yaml"], &[], &["missing.yaml", "-f/--values"])]
#[case::junit_parent_is_a_file(&["suite", "--junit", "FILE/junit.xml"], &[], &["--junit", "cannot create its directory"])]
#[case::bad_log_filter(&["--log", "lily_e2e=[", "list"], &[], &["is not a log filter"])]
#[case::unknown_provider(&["suite", "--provider", "sideways"], &[], &["invalid value 'sideways'", "local", "existing"])]
#[case::bad_postgres_image(&["suite", "--postgres", "container"], &[("LILY_E2E_POSTGRES_IMAGE", "no-tag")], &["`no-tag` is not name:tag"])]
#[case::kubernetes_not_pinned(&["suite", "--kubernetes", "1.33"], &[], &["--kubernetes 1.33: not a pinned Kubernetes version", "v1.32.13", "v1.37.2"])]
#[case::kubernetes_not_built(&["run", "install", "--kubernetes", "1.37"], &[("LILY_E2E_CACHE", "/nonexistent/lily-e2e-cache")], &["v1.37.2 is not installed", "lily-e2e tools install --kubernetes v1.37.2"])]
#[case::kubernetes_on_an_existing_cluster(&["cluster", "exec", "--provider", "existing", "--kubernetes", "1.32", "--", "true"], &[], &["an existing cluster runs its own"])]
#[case::suite_on_kind_without_an_engine(&["suite", "--provider", "kind"], &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")], &["--provider kind needs a Docker engine", "none is reachable", "./ci/docker.sh"])]
#[case::kubernetes_on_kind(&["cluster", "exec", "--provider", "kind", "--kubernetes", "1.32", "--", "true"], &[], &["the kind provider runs the node image's Kubernetes", "drop --kubernetes"])]
#[case::tools_path_not_installed(&["tools", "path", "kubelet"], &[("LILY_E2E_CACHE", "/nonexistent/lily-e2e-cache")], &["kubelet v1.34.4 is not installed", "lily-e2e tools install --kind"])]
#[case::bench_existing_provider(&["bench", "cluster", "--providers", "existing"], &[], &["nothing to time"])]
#[case::tools_install_unknown_kubernetes(&["tools", "install", "--kubernetes", "1.99"], &[], &["--kubernetes 1.99: not a pinned Kubernetes version"])]
#[case::bench_kubernetes_not_pinned(&["bench", "cluster", "--kubernetes", "2.0"], &[], &["--kubernetes 2.0: not a pinned"])]
#[case::missing_scenarios_dir(&["suite", "--scenarios", "/nonexistent/dir"], &[], &["/nonexistent/dir does not exist", "--scenarios"])]
fn bad_input_is_named_before_anything_starts(#[case] args: &[&str], #[case] env: &[(&str, &str)], #[case] expected: &[&str]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    let args: Vec<String> =
        args.iter().map(|a| a.replace("FIXTURE", &fixture()).replace("FILE", &file.path().display().to_string())).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stderr, left) = run(&args, env);
    assert!(!ok, "{args:?} succeeded");
    for e in expected {
        assert!(stderr.contains(e), "{args:?}: `{e}` missing from:\n{stderr}");
    }
    assert!(left.is_empty(), "{args:?} left {left:?}");
}

#[test]
fn a_kubeconfig_whose_server_is_down_names_the_server_and_context() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: down\n  cluster: {{server: 'https://127.0.0.1:{port}', insecure-skip-tls-verify: true}}\nusers:\n- name: u\n  user: {{token: x}}\ncontexts:\n- name: gone\n  context: {{cluster: down, user: u}}\ncurrent-context: gone\n"
        ),
    )
    .unwrap();
    let (ok, stderr, left) =
        run(&["cluster", "exec", "--provider", "existing", "--kubeconfig", kc.to_str().unwrap(), "--context", "gone", "--", "true"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("context `gone`") && stderr.contains("check that it is up"),
        "{stderr}"
    );
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_empty_docker_host_means_the_default_socket() {
    // The docker CLI treats DOCKER_HOST= as unset; so does lily-e2e: the error is about the
    // engine not answering (or it answers), never about a URL.
    let (_, stderr, left) = run(
        &["bench", "postgres", "--providers", "container", "--runs", "1"],
        &[("DOCKER_HOST", ""), ("LILY_E2E_POSTGRES_IMAGE", "none/such:1")],
    );
    assert!(!stderr.contains("relative URL without a base"), "{stderr}");
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn values_that_do_not_render_fail_the_case_before_any_cluster_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "daemon: \"not-a-map\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lily-e2e"))
        .args(["run", "install", "-f"])
        .arg(&bad)
        .env("LILY_E2E_RUNS", dir.path().join("runs"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL  install") && stdout.contains("does not render") && stdout.contains("Error: template:"), "{stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
    // No environment was started for it: no run was registered, nothing is left running.
    assert_eq!(std::fs::read_dir(dir.path().join("runs")).map(|d| d.count()).unwrap_or(0), 0);
}
