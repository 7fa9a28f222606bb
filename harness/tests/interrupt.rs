//! An interrupted run still reports: SIGTERM (a CI job's timeout) or SIGINT mid-run tears
//! down, writes the JUnit file with the unfinished cases as errors naming the step they were
//! in, prints the summary, and exits 143 (SIGTERM) or 130 (SIGINT).

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

mod common;

async fn interrupt_mid_run(signal: nix::sys::signal::Signal) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lily-e2e"))
        .args(["run", "upgrade", "--artifacts"])
        .arg(dir.path().join("artifacts"))
        .arg("--junit")
        .arg(&junit)
        .env("LILY_E2E_RUNS", dir.path().join("runs"))
        .env("LILY_E2E_LOG", "lily_e2e=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    // Wait until the case is in its steps (past the helm install), then interrupt.
    let reached = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("wait-rollout") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(reached, "the run never reached its wait-rollout step");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), signal).unwrap();
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.expect("it exits after the signal").unwrap();
    drain.abort();
    // Torn down: the run unregistered itself (its processes stopped, its directory removed).
    let left = std::fs::read_dir(dir.path().join("runs")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the interrupted run left its registry entry");
    let junit = std::fs::read_to_string(&junit).unwrap_or_default();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), junit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_writes_junit_with_the_unfinished_case_as_an_error_and_exits_143() {
    let (code, stdout, junit) = interrupt_mid_run(nix::sys::signal::Signal::SIGTERM).await;
    assert_eq!(code, Some(143), "{stdout}");
    assert!(stdout.contains("ERROR upgrade") && stdout.contains("0 passed, 0 failed, 1 errored"), "{stdout}");
    assert!(junit.contains("<error") && junit.contains("errored") && junit.contains("interrupted"), "{junit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_run_exits_130_with_the_report() {
    let (code, stdout, junit) = interrupt_mid_run(nix::sys::signal::Signal::SIGINT).await;
    assert_eq!(code, Some(130), "{stdout}");
    assert!(junit.contains("<error"), "{junit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_stops_the_run_and_it_still_reports() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lily-e2e"))
        .args(["run", "upgrade", "--deadline", "6s", "--artifacts"])
        .arg(dir.path().join("artifacts"))
        .arg("--junit")
        .arg(&junit)
        .env("LILY_E2E_RUNS", dir.path().join("runs"))
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.expect("the deadline stops it").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("1 errored"), "{stdout}");
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(junit.contains("<error") && junit.contains("interrupted"), "{junit}");
    assert_eq!(std::fs::read_dir(dir.path().join("runs")).map(|d| d.count()).unwrap_or(0), 0, "the run was not torn down");
}
