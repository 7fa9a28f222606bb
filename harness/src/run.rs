//! A run: its id, its temporary directory, and its entry in the run registry.
//!
//! Every object and process a run creates carries its id: Kubernetes objects as the label
//! [`RUN_LABEL`], child processes as the environment variable [`RUN_ENV`]. The registry
//! (`~/.cache/lily-e2e/runs/<id>.json`) lets `lily-e2e clean` find what a killed run left.
//!
//! This module is a leaf: it uses nothing of the harness but errors. Finding and stopping
//! what runs left behind (signal clean-up, `clean`) is the `reap` module's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::write_private;

/// Label put on every Kubernetes object the harness creates.
pub const RUN_LABEL: &str = "lily-e2e.io/run-id";
/// The file in a run directory naming its owner process (see [`Run::owner`]), so that
/// `clean` (`reap::clean`) can tell a dead run's directory from a live one whatever
/// registry holds it.
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
    /// A run id read back from a name (a run directory's, a label's); not checked.
    pub(crate) fn from_string(id: String) -> Self {
        RunId(id)
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

/// Where the harness keeps state between runs: tool cache and run registry
/// (`LILY_E2E_CACHE`, resolved by the command line), or `~/.cache/lily-e2e`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = &crate::settings::get().cache {
        return dir.clone();
    }
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("lily-e2e")
}

/// The run registry (`LILY_E2E_RUNS`, resolved by the command line), or `<cache>/runs`.
pub fn registry_dir() -> PathBuf {
    match &crate::settings::get().runs {
        Some(d) => d.clone(),
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
    /// Creates a run with a fresh id, a temporary directory only its owner can enter (it
    /// holds keys, kubeconfigs, passwords and etcd's socket), and a registry entry.
    pub fn create(keep: bool) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let id = RunId::new();
        let dir = std::env::temp_dir().join(format!("lily-e2e-{id}"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io(format!("create run directory {}", dir.display())))?;
        // Whatever the umask (or an earlier directory of that name) made it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io(format!("chmod run directory {}", dir.display())))?;
        let me = std::process::id();
        let entry = RegistryEntry { id: id.clone(), owner_pid: me, owner_start: process_start(me).unwrap_or(0), dirs: vec![dir.clone()] };
        let run = Run { id, dir, keep, entry };
        let owner_file = run.dir.join(OWNER_FILE);
        write_private(&owner_file, run.owner().as_bytes())?;
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
    /// containers: `clean` (`reap::clean`) removes a container whose owner is gone,
    /// whatever registry the container's run was recorded in.
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

    /// Lets group `gid` pass through the run directory (mode 0710, that group), for a
    /// server that runs as another user (PostgreSQL as `nobody` when the harness is root).
    /// It still cannot list it, nor open what is not its own or group-readable.
    pub fn let_group_through(&self, gid: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        nix::unistd::chown(&self.dir, None, Some(gid.into()))
            .map_err(|e| Error::Io { what: format!("give run directory {} to group {gid}", self.dir.display()), source: e.into() })?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o710))
            .map_err(Error::io(format!("chmod run directory {}", self.dir.display())))
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

/// Runs of this process that are still live, for `reap::cleanup_live_runs`.
static LIVE: std::sync::Mutex<Vec<RunId>> = std::sync::Mutex::new(Vec::new());

/// The runs of this process that are still live (created, not yet dropped).
pub fn live_runs() -> Vec<RunId> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests;
