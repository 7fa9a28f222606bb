//! Reaping: stopping what runs left behind, and `lily-e2e clean`.
//!
//! A run ([`crate::run`]) records itself in the run registry and tags what it starts with
//! its id: processes by [`RUN_ENV`], containers by a run label and an owner label. This
//! module finds those again, for this process's live runs where no destructor
//! will run ([`cleanup_live_runs`]), or from `lily-e2e clean` ([`clean`]) for runs whose owner is gone,
//! and stops them through [`crate::process`] and [`crate::engine`].

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::run::{live_runs, process_start, registry_dir, RegistryEntry, RunId, OWNER_FILE, RUN_ENV};

/// Stops every live run of this process (its processes: TERM, grace, KILL; its directories
/// and registry entries), e.g. from a signal handler where no destructor will run.
pub fn cleanup_live_runs(grace: std::time::Duration) {
    let ids = live_runs();
    let reg = registry_dir();
    if !ids.is_empty() {
        let live = ids.iter().map(|i| i.as_str().to_string()).collect::<Vec<_>>();
        crate::engine::remove_containers_blocking(move |c| live.contains(&c.run));
    }
    for id in ids {
        crate::process::terminate_pids(&processes_of(&id), grace);
        if let Ok(text) = std::fs::read(reg.join(format!("{id}.json"))) {
            if let Ok(entry) = serde_json::from_slice::<RegistryEntry>(&text) {
                for d in &entry.dirs {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
        let _ = std::fs::remove_file(reg.join(format!("{id}.json")));
    }
}

fn owner_alive(e: &RegistryEntry) -> bool {
    e.owner_pid != 0 && process_start(e.owner_pid).is_some_and(|s| s == e.owner_start)
}

/// Whether the owner an [`OWNER_LABEL`](crate::run::OWNER_LABEL) value (`PID.START`)
/// names is still running.
pub fn owner_label_alive(owner: &str) -> bool {
    let Some((pid, start)) = owner.split_once('.') else { return false };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => pid != 0 && process_start(pid).is_some_and(|s| s == start),
        _ => false,
    }
}

/// Pids of live processes whose environment carries `LILY_E2E_RUN_ID=<id>`.
pub fn processes_of(id: &RunId) -> Vec<i32> {
    let needle = format!("{RUN_ENV}={id}");
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(e.path().join("environ")) {
            if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// What `clean` did for one registered run.
#[derive(Debug, Serialize)]
pub struct Cleaned {
    pub id: RunId,
    pub killed: Vec<i32>,
    pub removed: Vec<PathBuf>,
    /// Containers (ids) of the run removed from the Docker engine.
    pub containers: Vec<String>,
    pub skipped_live: bool,
}

/// Removes what runs whose owner is gone left behind: their processes (TERM, a grace
/// period, KILL), their directories and their containers (also those of runs the registry
/// no longer knows). Runs whose owner still lives are left alone unless `force` is set.
pub fn clean(force: bool, grace: std::time::Duration) -> Result<Vec<Cleaned>> {
    let reg = registry_dir();
    let mut out = Vec::new();
    // The registry, read once: unreadable entries are dropped.
    let mut entries = Vec::new();
    for e in std::fs::read_dir(&reg).into_iter().flatten().flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Ok(text) = std::fs::read(&path) else { continue };
        match serde_json::from_slice::<RegistryEntry>(&text) {
            Ok(entry) => entries.push((path, entry)),
            Err(_) => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    // Containers: those whose owner is gone (by their owner label), or all with `force`.
    // One without an owner label (an older harness's) only when this registry knows its run
    // and that run's owner is gone: another registry's live run must not lose its server.
    let dead: Vec<String> = entries.iter().filter(|(_, e)| !owner_alive(e)).map(|(_, e)| e.id.as_str().to_string()).collect();
    let mut containers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let stale = move |c: &crate::engine::RunContainer| {
        force
            || match &c.owner {
                Some(owner) => !owner_label_alive(owner),
                None => dead.contains(&c.run),
            }
    };
    for c in crate::engine::remove_containers_blocking(stale) {
        containers.entry(c.run).or_default().push(c.id);
    }
    for (path, entry) in entries {
        if owner_alive(&entry) && !force {
            out.push(Cleaned { id: entry.id, killed: vec![], removed: vec![], containers: vec![], skipped_live: true });
            continue;
        }
        let killed = processes_of(&entry.id);
        crate::process::terminate_pids(&killed, grace);
        let mut removed = Vec::new();
        for d in &entry.dirs {
            if d.exists() && std::fs::remove_dir_all(d).is_ok() {
                removed.push(d.clone());
            }
        }
        let _ = std::fs::remove_file(&path);
        let containers = containers.remove(entry.id.as_str()).unwrap_or_default();
        out.push(Cleaned { id: entry.id, killed, removed, containers, skipped_live: false });
    }
    out.extend(unregistered_dirs(&std::env::temp_dir(), force, grace, &mut containers));
    out.extend(orphan_containers(containers));
    Ok(out)
}

/// Run directories under `tmp` that this registry does not know (another registry's runs,
/// e.g. a test's), cleaned when the owner their [`OWNER_FILE`] names is gone (or `force`):
/// their processes stopped, the directory removed.
fn unregistered_dirs(
    tmp: &Path,
    force: bool,
    grace: std::time::Duration,
    containers: &mut std::collections::BTreeMap<String, Vec<String>>,
) -> Vec<Cleaned> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(tmp) else { return out };
    for e in entries.flatten() {
        let dir = e.path();
        let Some(id) = e.file_name().to_str().and_then(|n| n.strip_prefix("lily-e2e-")).map(str::to_string) else { continue };
        let Ok(owner) = std::fs::read_to_string(dir.join(OWNER_FILE)) else { continue };
        if !force && owner_label_alive(owner.trim()) {
            continue;
        }
        let id = RunId::from_string(id);
        let killed = processes_of(&id);
        crate::process::terminate_pids(&killed, grace);
        let removed = if std::fs::remove_dir_all(&dir).is_ok() { vec![dir] } else { vec![] };
        let containers = containers.remove(id.as_str()).unwrap_or_default();
        out.push(Cleaned { id, killed, removed, containers, skipped_live: false });
    }
    out
}

/// Containers of runs the registry does not know (any more), as clean-up results.
fn orphan_containers(containers: std::collections::BTreeMap<String, Vec<String>>) -> Vec<Cleaned> {
    containers
        .into_iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(run, ids)| Cleaned { id: RunId::from_string(run), killed: vec![], removed: vec![], containers: ids, skipped_live: false })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_removes_an_unregistered_run_dir_only_when_its_owner_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let live = tmp.path().join("lily-e2e-rlive0001");
        let dead = tmp.path().join("lily-e2e-rdead0001");
        let unmarked = tmp.path().join("lily-e2e-rnoowner1");
        let other = tmp.path().join("something-else");
        for d in [&live, &dead, &unmarked, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(live.join(OWNER_FILE), format!("{me}.{}", process_start(me).unwrap())).unwrap();
        std::fs::write(dead.join(OWNER_FILE), format!("{me}.{}", process_start(me).unwrap() + 1)).unwrap();
        std::fs::write(other.join(OWNER_FILE), "1.1").unwrap();
        let mut containers = Default::default();
        let cleaned = unregistered_dirs(tmp.path(), false, std::time::Duration::from_millis(10), &mut containers);
        assert_eq!(cleaned.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["rdead0001"]);
        assert!(!dead.exists() && live.exists() && unmarked.exists() && other.exists());
        let forced = unregistered_dirs(tmp.path(), true, std::time::Duration::from_millis(10), &mut containers);
        assert_eq!(forced.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["rlive0001"]);
        assert!(!live.exists() && unmarked.exists());
    }

    #[test]
    fn owner_labels_name_a_live_process_only_while_it_runs() {
        let me = std::process::id();
        let mine = format!("{me}.{}", process_start(me).unwrap());
        assert!(owner_label_alive(&mine));
        // The same pid with another start time is a reused pid, not the owner.
        assert!(!owner_label_alive(&format!("{me}.{}", process_start(me).unwrap() + 1)));
        for bad in ["", "garbage", "0.0", "4194304000.1", "12"] {
            assert!(!owner_label_alive(bad), "{bad}");
        }
    }
}
