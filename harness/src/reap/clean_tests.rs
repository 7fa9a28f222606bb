//! What `clean` may touch: its own registry's runs, its own user's dead runs, and with
//! `--all` everything labelled; never another registry's live run.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::engine::RunContainer;

const GRACE: Duration = Duration::from_secs(5);

/// A registry and a temporary directory of the test's own, cleaned as this user.
struct World {
    _root: tempfile::TempDir,
    places: Places,
}

impl World {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let places = Places { registry: root.path().join("runs"), tmp: root.path().join("tmp"), uid: nix::unistd::getuid().as_raw() };
        std::fs::create_dir_all(&places.registry).unwrap();
        std::fs::create_dir_all(&places.tmp).unwrap();
        World { _root: root, places }
    }

    /// A run directory with an owner file naming this process, alive or (with another
    /// start time: a reused pid) dead.
    fn run_dir(&self, id: &RunId, owner_alive: bool) -> PathBuf {
        let dir = self.places.tmp.join(format!("lily-e2e-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(OWNER_FILE), owner(owner_alive)).unwrap();
        dir
    }

    /// A run of this world's registry, with its directory.
    fn registered(&self, id: &RunId, owner_alive: bool) -> (PathBuf, PathBuf) {
        let dir = self.run_dir(id, owner_alive);
        let (pid, start) = owner(owner_alive).split_once('.').map(|(p, s)| (p.parse().unwrap(), s.parse().unwrap())).unwrap();
        let entry = RegistryEntry { id: id.clone(), owner_pid: pid, owner_start: start, dirs: vec![dir.clone()] };
        let file = self.places.registry.join(format!("{id}.json"));
        std::fs::write(&file, serde_json::to_vec(&entry).unwrap()).unwrap();
        (dir, file)
    }

    fn clean(&self, scope: Scope, containers: &[RunContainer]) -> (Vec<Cleaned>, Vec<String>) {
        clean(&self.places, scope, containers)
    }
}

/// Cleans `places` with `scope`; the engine holds `containers`. Returns what was done and
/// the containers removed.
fn clean(places: &Places, scope: Scope, containers: &[RunContainer]) -> (Vec<Cleaned>, Vec<String>) {
    let mut removed = Vec::new();
    let out = clean_in(places, scope, GRACE, |filter| {
        let gone: Vec<RunContainer> = containers.iter().filter(|c| filter.selects(c)).cloned().collect();
        removed = gone.iter().map(|c| c.id.clone()).collect();
        gone
    })
    .unwrap();
    (out, removed)
}

/// `PID.START` of this process, or of a dead process (the same pid, another start time).
fn owner(alive: bool) -> String {
    let me = std::process::id();
    let start = process_start(me).unwrap();
    format!("{me}.{}", if alive { start } else { start + 1 })
}

/// A process carrying the run id, as a run's children do.
struct RunProcess(std::process::Child);

impl RunProcess {
    fn start(id: &RunId) -> Self {
        let child = std::process::Command::new("/bin/sleep").arg("600").env(RUN_ENV, id.as_str()).spawn().unwrap();
        RunProcess(child)
    }
    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for RunProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn container(id: &str, run: &RunId) -> RunContainer {
    RunContainer { id: id.to_string(), run: run.as_str().to_string(), owner: Some(owner(false)) }
}

fn ids(out: &[Cleaned]) -> Vec<&str> {
    let mut v: Vec<&str> = out.iter().filter(|c| !c.skipped_live).map(|c| c.id.as_str()).collect();
    v.sort();
    v
}

#[test]
fn scopes_come_from_the_flags() {
    assert_eq!(Scope::of(false, false), Scope::Own);
    assert_eq!(Scope::of(true, false), Scope::Force);
    assert_eq!(Scope::of(false, true), Scope::All);
    assert_eq!(Scope::of(true, true), Scope::All);
}

#[test]
fn a_dead_run_of_its_own_registry_is_cleaned_whole() {
    let w = World::new();
    let id = RunId::new();
    let (dir, entry) = w.registered(&id, false);
    let mut p = RunProcess::start(&id);
    let (out, removed) = w.clean(Scope::Own, &[container("c1", &id)]);
    assert_eq!(ids(&out), [id.as_str()]);
    assert_eq!(out[0].killed, [p.0.id() as i32]);
    assert!(!p.running(), "its process was stopped");
    assert!(!dir.exists() && !entry.exists(), "its directory and registry entry are gone");
    assert_eq!(removed, ["c1"]);
    assert_eq!(out[0].containers, ["c1"]);
}

#[test]
fn a_live_run_of_its_own_registry_needs_force() {
    let w = World::new();
    let id = RunId::new();
    let (dir, entry) = w.registered(&id, true);
    let mut p = RunProcess::start(&id);
    let (out, removed) = w.clean(Scope::Own, &[container("c1", &id)]);
    assert!(out.len() == 1 && out[0].skipped_live, "{out:?}");
    assert!(p.running() && dir.exists() && entry.exists() && removed.is_empty());
    let (out, removed) = w.clean(Scope::Force, &[container("c1", &id)]);
    assert_eq!(ids(&out), [id.as_str()]);
    assert!(!p.running() && !dir.exists() && !entry.exists());
    assert_eq!(removed, ["c1"]);
}

/// Another registry's live run (a test's, another session's) is left whole by `clean`,
/// `clean --force` and `clean --all` alike; only `--all` removes its containers (they are
/// labelled, and `--all` removes every labelled container).
#[test]
fn another_registrys_live_run_is_left_alone() {
    let w = World::new();
    let id = RunId::new();
    let dir = w.run_dir(&id, true);
    let mut p = RunProcess::start(&id);
    for scope in [Scope::Own, Scope::Force, Scope::All] {
        let (out, removed) = w.clean(scope, &[container("c1", &id)]);
        assert!(p.running() && dir.exists(), "{scope:?} touched a live run of another registry: {out:?}");
        assert!(out.iter().all(|c| c.killed.is_empty() && c.removed.is_empty()), "{scope:?}: {out:?}");
        assert_eq!(removed.is_empty(), scope != Scope::All, "{scope:?}");
    }
}

#[test]
fn an_unregistered_run_dir_of_a_dead_owner_of_this_user_is_cleaned() {
    let w = World::new();
    let id = RunId::new();
    let dir = w.run_dir(&id, false);
    let mut p = RunProcess::start(&id);
    let other = RunId::new();
    let (out, removed) = w.clean(Scope::Own, &[container("c1", &id), container("c2", &other)]);
    assert_eq!(ids(&out), [id.as_str()]);
    assert!(!p.running() && !dir.exists());
    assert_eq!(removed, ["c1"], "its container goes; an unknown run's container stays (that is --all's)");
}

/// The same directory, owned by another user: cleaning as another uid stands in for it.
#[test]
fn another_users_dead_run_dir_is_left_to_all() {
    let w = World::new();
    let id = RunId::new();
    let dir = w.run_dir(&id, false);
    let as_other = Places { uid: w.places.uid + 1, ..w.places.clone() };
    let mut p = RunProcess::start(&id);
    for scope in [Scope::Own, Scope::Force] {
        let (out, _) = clean(&as_other, scope, &[]);
        assert!(out.is_empty() && dir.exists() && p.running(), "{scope:?}: {out:?}");
    }
    let (out, _) = clean(&as_other, Scope::All, &[]);
    assert_eq!(ids(&out), [id.as_str()]);
    assert!(!dir.exists() && !p.running());
}

/// `--all`: every labelled container, whoever owns it, and dead runs of any user; still
/// no live run's directory or processes, and never a directory without an owner file.
#[test]
fn all_cleans_everything_labelled() {
    let w = World::new();
    let (dead, live, unknown) = (RunId::new(), RunId::new(), RunId::new());
    let dead_dir = w.run_dir(&dead, false);
    let live_dir = w.run_dir(&live, true);
    let mut live_p = RunProcess::start(&live);
    let cache = w.places.tmp.join("lily-e2e-scenarios-0123456789abcdef");
    let no_owner = w.places.tmp.join(format!("lily-e2e-{}", RunId::new()));
    for d in [&cache, &no_owner] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("file"), "x").unwrap();
    }
    let live_container = RunContainer { owner: Some(owner(true)), ..container("c2", &live) };
    let all = [container("c1", &dead), live_container, container("c3", &unknown)];
    for scope in [Scope::Own, Scope::Force] {
        let (_, removed) = w.clean(scope, &all);
        assert!(!removed.contains(&"c2".to_string()) && !removed.contains(&"c3".to_string()), "{scope:?}: {removed:?}");
    }
    assert!(!dead_dir.exists());
    let (out, mut removed) = w.clean(Scope::All, &all);
    removed.sort();
    assert_eq!(removed, ["c1", "c2", "c3"]);
    assert!(out.iter().any(|c| c.id == unknown && c.containers == ["c3"]), "{out:?}");
    assert!(live_dir.exists() && live_p.running(), "a live run's directory and processes stay");
    assert!(cache.join("file").exists() && no_owner.join("file").exists(), "directories without an owner file stay");
}

#[test]
fn a_path_that_is_not_a_directory_is_never_a_run() {
    let w = World::new();
    let target = w.places.tmp.join("elsewhere");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join(OWNER_FILE), owner(false)).unwrap();
    let link = w.places.tmp.join(format!("lily-e2e-{}", RunId::new()));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (out, _) = w.clean(Scope::All, &[]);
    assert!(out.is_empty() && target.exists() && link.exists(), "{out:?}");
}
