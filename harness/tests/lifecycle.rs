//! Children die with the harness: within 2 s of a SIGKILL to `lily-e2e`, no process of its
//! run is left, without `lily-e2e clean` (which then only removes the run's directory).

use std::time::{Duration, Instant};

use lily_e2e::process::wait_pid_exit;
use lily_e2e::reap::processes_of;
use lily_e2e::run::RunId;

mod common;

const T: Duration = Duration::from_secs(180);
/// The bound: a SIGKILLed harness's children are gone within it.
const DEATH: Duration = Duration::from_secs(2);

/// A live (not zombie) process: its pid and start time, so a reused pid is not mistaken
/// for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    start: u64,
}

impl Proc {
    fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else { return false };
        let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
        state != Some('Z') && lily_e2e::run::process_start(self.pid as u32) == Some(self.start)
    }
}

/// The run's processes and all their descendants. PostgreSQL's backends and helpers carry
/// the run id too but overwrite their environment's memory with their process titles, so
/// `processes_of` cannot see them: they are found by parent instead.
fn family(id: &RunId) -> Vec<Proc> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let ppid = stat.rfind(')').and_then(|i| stat[i + 2..].split_whitespace().nth(1)?.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = processes_of(id);
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(c, pp)| *pp == p && !found.contains(c)).map(|(c, _)| *c).collect::<Vec<_>>());
        i += 1;
    }
    found.into_iter().filter_map(|pid| Some(Proc { pid, start: lily_e2e::run::process_start(pid as u32)? })).collect()
}

/// SIGKILLs the harness and waits (on pidfds) until none of `procs` and no process carrying
/// the run id is alive, or [`DEATH`] has passed; returns what is left.
async fn kill_and_wait(mut child: tokio::process::Child, id: &RunId, procs: &[Proc]) -> Vec<i32> {
    let deadline = Instant::now() + DEATH;
    child.kill().await.unwrap();
    loop {
        let mut left: Vec<i32> = procs.iter().filter(|p| p.alive()).map(|p| p.pid).collect();
        let more: Vec<i32> = processes_of(id).into_iter().filter(|p| !left.contains(p)).collect();
        left.extend(more);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        for p in left {
            wait_pid_exit(p, deadline.saturating_duration_since(Instant::now()));
        }
    }
}

/// The control plane and CMD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_cluster_exec_leaves_no_process() {
    let runs = tempfile::tempdir().unwrap();
    // CMD says when it runs (its stderr is the harness's).
    let cmd = ["cluster", "exec", "--", "sh", "-c", "echo cmd-up >&2; exec sleep 600"];
    let (child, id) = common::spawn_until(&cmd, runs.path(), "cmd-up", T).await;
    let before = family(&id);
    assert!(before.len() >= 6, "etcd, kube-*, kwok and CMD run: {before:?}");
    let left = kill_and_wait(child, &id, &before).await;
    // What clean is still for: the run directory.
    common::clean(runs.path()).await;
    assert!(left.is_empty(), "processes of the run outlived the SIGKILLed harness by {DEATH:?}: {left:?}");
}

/// A kept run: the control plane, PostgreSQL (whose backends are its own children, and not
/// the harness's) and what the scenario started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_kept_run_leaves_no_process() {
    let runs = tempfile::tempdir().unwrap();
    let (child, id) = common::spawn_until(&["run", "install", "--keep"], runs.path(), "kept; press Ctrl-C", T).await;
    let before = family(&id);
    assert!(before.len() > processes_of(&id).len(), "postgresql's own children run: {before:?}");
    let left = kill_and_wait(child, &id, &before).await;
    common::clean(runs.path()).await;
    assert!(left.is_empty(), "processes of the run outlived the SIGKILLed harness by {DEATH:?}: {left:?}");
}
