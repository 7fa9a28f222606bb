//! A run: its id, its temporary directory, and its entry in the run registry.
//!
//! Every object and process a run creates carries its id: Kubernetes objects as the label
//! [`RUN_LABEL`], child processes as the environment variable [`RUN_ENV`]. The registry
//! (`~/.cache/lily-e2e/runs/<id>.json`) lets `lily-e2e clean` find what a killed run left.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Label put on every Kubernetes object the harness creates.
pub const RUN_LABEL: &str = "lily-e2e.io/run-id";
/// The file in a run directory naming its owner process (see [`Run::owner`]), so that
/// [`clean`] can tell a dead run's directory from a live one whatever registry holds it.
pub const OWNER_FILE: &str = ".lily-e2e-owner";
/// The label on a run's containers naming its owner process (see [`Run::owner`]).
pub const OWNER_LABEL: &str = "lily-e2e.io/owner";
/// Environment variable set on every child process the harness starts.
pub const RUN_ENV: &str = "LILY_E2E_RUN_ID";

/// A run id: short, random, valid as a label value and a DNS label part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunId(String);

impl RunId {
    pub fn new() -> Self {
        use rand::Rng;
        let n: u32 = rand::rng().random();
        RunId(format!("r{n:08x}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the harness keeps state between runs: tool cache and run registry.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("LILY_E2E_CACHE") {
        return PathBuf::from(dir);
    }
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("lily-e2e")
}

/// The run registry: `$LILY_E2E_RUNS`, or `<cache>/runs`.
pub fn registry_dir() -> PathBuf {
    match std::env::var_os("LILY_E2E_RUNS") {
        Some(d) => PathBuf::from(d),
        None => cache_root().join("runs"),
    }
}

/// The registry entries of every run (live or not).
pub fn registered() -> Vec<RegistryEntry> {
    registered_in(&registry_dir())
}

/// The registry entries in a registry directory (see `LILY_E2E_RUNS`).
pub fn registered_in(dir: &Path) -> Vec<RegistryEntry> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect()
}

/// What the registry records of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub id: RunId,
    pub owner_pid: u32,
    /// The owner's start time (clock ticks since boot), so a reused pid is not mistaken for it.
    pub owner_start: u64,
    pub dirs: Vec<PathBuf>,
}

/// A live run. Dropping it removes its directory (unless kept) and its registry entry;
/// the pieces that own processes tear those down themselves, before this is dropped.
#[derive(Debug)]
pub struct Run {
    id: RunId,
    dir: PathBuf,
    keep: bool,
    entry: RegistryEntry,
}

impl Run {
    /// Creates a run with a fresh id, a temporary directory, and a registry entry.
    pub fn create(keep: bool) -> Result<Self> {
        let id = RunId::new();
        let dir = std::env::temp_dir().join(format!("lily-e2e-{id}"));
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create run directory {}", dir.display())))?;
        let me = std::process::id();
        let entry = RegistryEntry { id: id.clone(), owner_pid: me, owner_start: process_start(me).unwrap_or(0), dirs: vec![dir.clone()] };
        let run = Run { id, dir, keep, entry };
        let owner_file = run.dir.join(OWNER_FILE);
        std::fs::write(&owner_file, run.owner()).map_err(Error::io(format!("write {}", owner_file.display())))?;
        run.save()?;
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(run.id.clone());
        Ok(run)
    }

    pub fn id(&self) -> &RunId {
        &self.id
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn keep(&self) -> bool {
        self.keep
    }
    /// `PID.START` of the process that owns this run, for the [`OWNER_LABEL`] label of its
    /// containers: [`clean`] removes a container whose owner is gone, whatever registry
    /// the container's run was recorded in.
    pub fn owner(&self) -> String {
        format!("{}.{}", self.entry.owner_pid, self.entry.owner_start)
    }

    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// After a failed start: keeps the run directory if a component wrote logs there (so
    /// the error's log paths stay readable) and returns it; otherwise (bad input caught
    /// before anything ran) the run leaves nothing behind.
    pub fn keep_logs(&mut self) -> Option<PathBuf> {
        let logs = self.dir.join("logs");
        let has_logs = std::fs::read_dir(&logs).map(|mut d| d.next().is_some()).unwrap_or(false);
        self.keep = has_logs;
        has_logs.then(|| self.dir.clone())
    }

    /// A subdirectory of the run directory, created on demand.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).map_err(Error::io(format!("create {}", d.display())))?;
        Ok(d)
    }

    /// Records another directory that belongs to this run (removed by `clean`).
    pub fn track_dir(&mut self, dir: PathBuf) -> Result<()> {
        self.entry.dirs.push(dir);
        self.save()
    }

    fn save(&self) -> Result<()> {
        let reg = registry_dir();
        std::fs::create_dir_all(&reg).map_err(Error::io(format!("create run registry {}", reg.display())))?;
        let path = reg.join(format!("{}.json", self.id));
        let tmp = reg.join(format!(".{}.json.tmp", self.id));
        let text = serde_json::to_vec_pretty(&self.entry).map_err(Error::json("registry entry"))?;
        std::fs::write(&tmp, text).map_err(Error::io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(Error::io(format!("write {}", path.display())))
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| r != &self.id);
        if self.keep {
            tracing::info!(run = %self.id, dir = %self.dir.display(), "run kept; `lily-e2e clean` removes it");
            return;
        }
        for d in &self.entry.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = std::fs::remove_file(registry_dir().join(format!("{}.json", self.id)));
    }
}

/// Runs of this process that are still live, for [`cleanup_on_signal`].
static LIVE: std::sync::Mutex<Vec<RunId>> = std::sync::Mutex::new(Vec::new());

/// Stops every live run of this process (its processes: TERM, grace, KILL; its directories
/// and registry entries), e.g. from a signal handler where no destructor will run.
pub fn cleanup_live_runs(grace: std::time::Duration) {
    let ids: Vec<RunId> = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
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

/// On SIGINT or SIGTERM, stops every live run of this process and exits with 130. For
/// test binaries, where the default action would leave children running.
pub fn cleanup_on_signal(handle: &tokio::runtime::Handle) {
    handle.spawn(async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        eprintln!("lily-e2e: interrupted; stopping what this process started");
        cleanup_live_runs(crate::process::GRACE);
        std::process::exit(130);
    });
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn owner_alive(e: &RegistryEntry) -> bool {
    e.owner_pid != 0 && process_start(e.owner_pid).is_some_and(|s| s == e.owner_start)
}

/// Whether the owner an [`OWNER_LABEL`] value (`PID.START`) names is still running.
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
        let id = RunId(id);
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
        .map(|(run, ids)| Cleaned { id: RunId(run), killed: vec![], removed: vec![], containers: ids, skipped_live: false })
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
