//! Reaping: stopping what runs left behind, and `lily-e2e clean`.
//!
//! A run ([`crate::run`]) records itself in the run registry and tags what it starts with
//! its id: processes by [`RUN_ENV`], containers by a run label and an owner label. This
//! module finds those again, for this process's live runs where no destructor
//! will run ([`cleanup_live_runs`]), or from `lily-e2e clean` ([`clean`]) for runs whose owner is gone,
//! as far as its [`Scope`] reaches, and stops them through [`crate::process`] and [`crate::engine`].

use std::path::PathBuf;

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

/// What `clean` did for one run.
#[derive(Debug, Serialize)]
pub struct Cleaned {
    pub id: RunId,
    pub killed: Vec<i32>,
    pub removed: Vec<PathBuf>,
    /// Containers (ids) of the run removed from the Docker engine.
    pub containers: Vec<String>,
    pub skipped_live: bool,
}

/// How far `clean` reaches. Each scope does everything the one before it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `clean`: the runs of its own registry whose owner is gone, and run directories no
    /// registry of its own knows whose owner file names a dead process of the same user
    /// (the directory belongs to the current uid); with each, its processes and containers.
    Own,
    /// `clean --force`: also its own registry's runs whose owner still runs. Another
    /// registry's live runs are never touched.
    Force,
    /// `clean --all`: everything labelled: also the run directories of any user whose
    /// owner is gone, and every container with the run label, whatever its owner.
    All,
}

impl Scope {
    /// The scope the `clean` command's flags ask for.
    pub fn of(force: bool, all: bool) -> Self {
        match (force, all) {
            (_, true) => Scope::All,
            (true, false) => Scope::Force,
            (false, false) => Scope::Own,
        }
    }
}

/// Where `clean` looks, and as whom.
#[derive(Debug, Clone)]
pub struct Places {
    /// The run registry it owns.
    pub registry: PathBuf,
    /// Where run directories (`lily-e2e-<id>`) live.
    pub tmp: PathBuf,
    /// The user whose unregistered run directories are its own.
    pub uid: u32,
}

impl Places {
    /// This process's registry, temporary directory and user.
    pub fn here() -> Self {
        Places { registry: registry_dir(), tmp: std::env::temp_dir(), uid: nix::unistd::getuid().as_raw() }
    }
}

/// Which containers `clean` removes: those of the runs it cleans, or with
/// [`Scope::All`] every container with the run label.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub all: bool,
    pub runs: std::collections::BTreeSet<String>,
}

impl ContainerFilter {
    pub fn selects(&self, c: &crate::engine::RunContainer) -> bool {
        self.all || self.runs.contains(&c.run)
    }
}

/// Removes what killed runs left, as far as `scope` reaches (see [`Scope`]): their
/// processes (TERM, a grace period, KILL), their directories, their registry entries and
/// their containers. Directories without an owner file are never touched: the built-in
/// scenarios' cache (`lily-e2e-scenarios-<hash>`) is one.
pub fn clean(scope: Scope, grace: std::time::Duration) -> Result<Vec<Cleaned>> {
    clean_in(&Places::here(), scope, grace, |filter| crate::engine::remove_containers_blocking(move |c| filter.selects(c)))
}

/// A run `clean` acts on: its id, its directories and, if registered, its registry file.
struct Target {
    id: RunId,
    dirs: Vec<PathBuf>,
    entry: Option<PathBuf>,
}

/// [`clean`] over `places`, with `remove_containers` removing the containers a filter
/// selects (the Docker engine's, for [`clean`]) and returning them.
pub fn clean_in(
    places: &Places,
    scope: Scope,
    grace: std::time::Duration,
    remove_containers: impl FnOnce(ContainerFilter) -> Vec<crate::engine::RunContainer>,
) -> Result<Vec<Cleaned>> {
    let mut out = Vec::new();
    let mut targets = Vec::new();
    let mut known = std::collections::BTreeSet::new();
    // The registry, read once: unreadable entries are dropped.
    for e in std::fs::read_dir(&places.registry).into_iter().flatten().flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Ok(text) = std::fs::read(&path) else { continue };
        let Ok(entry) = serde_json::from_slice::<RegistryEntry>(&text) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        known.insert(entry.id.as_str().to_string());
        if owner_alive(&entry) && scope == Scope::Own {
            out.push(Cleaned { id: entry.id, killed: vec![], removed: vec![], containers: vec![], skipped_live: true });
            continue;
        }
        targets.push(Target { id: entry.id, dirs: entry.dirs, entry: Some(path) });
    }
    targets.extend(unregistered_dirs(places, scope, &known));

    let filter = ContainerFilter { all: scope == Scope::All, runs: targets.iter().map(|t| t.id.as_str().to_string()).collect() };
    let mut containers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for c in remove_containers(filter) {
        containers.entry(c.run).or_default().push(c.id);
    }
    for t in targets {
        let killed = processes_of(&t.id);
        crate::process::terminate_pids(&killed, grace);
        let mut removed = Vec::new();
        for d in &t.dirs {
            if d.exists() && std::fs::remove_dir_all(d).is_ok() {
                removed.push(d.clone());
            }
        }
        if let Some(entry) = &t.entry {
            let _ = std::fs::remove_file(entry);
        }
        let containers = containers.remove(t.id.as_str()).unwrap_or_default();
        out.push(Cleaned { id: t.id, killed, removed, containers, skipped_live: false });
    }
    out.extend(orphan_containers(containers));
    Ok(out)
}

/// Run directories under `places.tmp` that no entry of the registry names (`known`):
/// another registry's runs, e.g. a test's. One is a target when its [`OWNER_FILE`] names a
/// process that is gone and, short of [`Scope::All`], the directory is the user's own.
/// Live owners' directories are left alone in every scope: their runs clean up after
/// themselves.
fn unregistered_dirs(places: &Places, scope: Scope, known: &std::collections::BTreeSet<String>) -> Vec<Target> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&places.tmp) else { return out };
    for e in entries.flatten() {
        let dir = e.path();
        let Some(id) = e.file_name().to_str().and_then(|n| n.strip_prefix("lily-e2e-")).map(str::to_string) else { continue };
        if known.contains(&id) {
            continue;
        }
        // Not a directory (or a symlink to one): not a run's.
        let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue };
        if !meta.is_dir() || (scope != Scope::All && meta.uid() != places.uid) {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(dir.join(OWNER_FILE)) else { continue };
        if owner_label_alive(owner.trim()) {
            continue;
        }
        out.push(Target { id: RunId::from_string(id), dirs: vec![dir], entry: None });
    }
    out
}

/// Containers of runs `clean` did not otherwise act on ([`Scope::All`]), as results.
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

#[cfg(test)]
mod clean_tests;
