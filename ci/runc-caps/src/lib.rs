//! `runc-caps`: an OCI runtime wrapper for Docker engines whose own capability bounding set
//! is short (a sandbox without `CAP_SYS_RESOURCE`, say).
//!
//! `docker run --privileged` asks runc for every capability the engine knows. runc cannot
//! grant a capability outside its own bounding set, so the container fails to start ("unable
//! to apply caps: operation not permitted"); `docker exec --privileged` fails the same way.
//! Registered as the engine's default runtime, this wrapper removes from the container's
//! process (`BUNDLE/config.json` on `create` and `run`, the `--process FILE` on `exec`) every
//! capability outside its own bounding set, then execs the real runc with its arguments
//! unchanged. A container that asks only for capabilities the engine has (every
//! non-privileged one) is left byte for byte as it was.

use std::path::{Path, PathBuf};

/// Linux capabilities by number (`include/uapi/linux/capability.h`).
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The sets of an OCI process's `capabilities` object.
const SETS: [&str; 5] = ["bounding", "effective", "inheritable", "permitted", "ambient"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the bounding set `{0}` is not a hexadecimal capability mask")]
    Mask(String),
    #[error("no CapBnd line in /proc/self/status")]
    NoBoundingSet,
}

/// A capability bounding set, as the mask `/proc/PID/status` shows in `CapBnd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounding(pub u64);

impl Bounding {
    /// `000001fffeffffff` (CapBnd's form).
    pub fn parse(hex: &str) -> Result<Self, Error> {
        u64::from_str_radix(hex.trim(), 16).map(Bounding).map_err(|_| Error::Mask(hex.trim().to_string()))
    }

    /// This process's own, from `/proc/self/status`.
    pub fn own() -> Result<Self, Error> {
        let path = Path::new("/proc/self/status");
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        let line = text.lines().find_map(|l| l.strip_prefix("CapBnd:")).ok_or(Error::NoBoundingSet)?;
        Self::parse(line)
    }

    /// Whether the capability `name` (`CAP_SYS_ADMIN`) is in the set. A name this table does
    /// not know is kept: runc decides about it, as it would without the wrapper.
    pub fn allows(&self, name: &str) -> bool {
        match CAPABILITIES.iter().position(|c| c.eq_ignore_ascii_case(name)) {
            Some(bit) => self.0 & (1u64 << bit) != 0,
            None => true,
        }
    }

    /// The known capabilities outside the set.
    pub fn missing(&self) -> Vec<&'static str> {
        CAPABILITIES.iter().copied().filter(|c| !self.allows(c)).collect()
    }
}

/// Removes from an OCI process object's capability sets every capability `bounding` lacks.
/// Returns the names removed (each once), in the order first seen.
pub fn trim_process(process: &mut serde_json::Value, bounding: Bounding) -> Vec<String> {
    let mut removed: Vec<String> = Vec::new();
    let Some(caps) = process.get_mut("capabilities").and_then(|c| c.as_object_mut()) else {
        return removed;
    };
    for set in SETS {
        let Some(list) = caps.get_mut(set).and_then(|l| l.as_array_mut()) else { continue };
        list.retain(|cap| match cap.as_str() {
            Some(name) if !bounding.allows(name) => {
                if !removed.iter().any(|r| r == name) {
                    removed.push(name.to_string());
                }
                false
            }
            _ => true,
        });
    }
    removed
}

/// What a runc invocation asks of the wrapper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `create` or `run`: the bundle's `config.json` (its `process`).
    Bundle(PathBuf),
    /// `exec --process FILE`: that file (a process object).
    Process(PathBuf),
    /// Anything else: nothing to change.
    None,
}

/// runc's global options that take a value (`runc --root DIR create ...`).
const GLOBAL_WITH_VALUE: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];

/// Finds runc's subcommand in `args` (without argv\[0\]) and what it asks to change.
/// `cwd` is the bundle when `create`/`run` names none (runc's own default).
pub fn target(args: &[String], cwd: &Path) -> Target {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a.starts_with('-') {
            if GLOBAL_WITH_VALUE.contains(&a.as_str()) {
                i += 1;
            }
            i += 1;
            continue;
        }
        let rest = &args[i + 1..];
        return match a.as_str() {
            "create" | "run" => Target::Bundle(option(rest, &["--bundle", "-b"]).map(PathBuf::from).unwrap_or_else(|| cwd.to_path_buf())),
            "exec" => option(rest, &["--process", "-p"]).map(|p| Target::Process(PathBuf::from(p))).unwrap_or(Target::None),
            _ => Target::None,
        };
    }
    Target::None
}

/// The value of the first of `names` in `args`: `--name VALUE` or `--name=VALUE`.
fn option<'a>(args: &'a [String], names: &[&str]) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            return None;
        }
        for n in names {
            if a == n {
                return it.next().map(String::as_str);
            }
            if let Some(v) = a.strip_prefix(n).and_then(|v| v.strip_prefix('=')) {
                return Some(v);
            }
        }
    }
    None
}

/// Applies [`trim_process`] to what `target` names, rewriting the file (atomically, same
/// permissions) only when something was removed. Returns the names removed.
pub fn apply(target: &Target, bounding: Bounding) -> Result<Vec<String>, Error> {
    let (path, in_config) = match target {
        Target::Bundle(dir) => (dir.join("config.json"), true),
        Target::Process(file) => (file.clone(), false),
        Target::None => return Ok(Vec::new()),
    };
    let text = std::fs::read(&path).map_err(|source| Error::Read { path: path.clone(), source })?;
    let mut doc: serde_json::Value = serde_json::from_slice(&text).map_err(|source| Error::Json { path: path.clone(), source })?;
    let removed = if in_config {
        match doc.get_mut("process") {
            Some(p) => trim_process(p, bounding),
            None => Vec::new(),
        }
    } else {
        trim_process(&mut doc, bounding)
    };
    if removed.is_empty() {
        return Ok(removed);
    }
    let out = serde_json::to_vec(&doc).expect("a JSON value serialises");
    let tmp = path.with_extension("runc-caps.tmp");
    let write = |source| Error::Write { path: path.clone(), source };
    std::fs::write(&tmp, out).map_err(write)?;
    if let Ok(meta) = std::fs::metadata(&path) {
        std::fs::set_permissions(&tmp, meta.permissions()).map_err(write)?;
    }
    std::fs::rename(&tmp, &path).map_err(write)?;
    Ok(removed)
}

/// The real runc: `$RUNC_CAPS_RUNC`, else the first of `/usr/sbin/runc`, `/usr/bin/runc`,
/// `/usr/local/sbin/runc`, `/usr/local/bin/runc` that is not this wrapper itself.
pub fn real_runc(own: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUNC_CAPS_RUNC").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let own = own.and_then(|o| o.canonicalize().ok());
    ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .find(|p| p.canonicalize().ok() != own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|a| a.to_string()).collect()
    }

    /// This sandbox's set: everything up to CAP_CHECKPOINT_RESTORE but CAP_SYS_RESOURCE.
    const SHORT: Bounding = Bounding(0x0000_01ff_feff_ffff);

    #[test]
    fn parses_capbnd_and_finds_what_is_missing() {
        let b = Bounding::parse("000001fffeffffff\n").unwrap();
        assert_eq!(b, SHORT);
        assert_eq!(b.missing(), vec!["CAP_SYS_RESOURCE"]);
        assert!(b.allows("CAP_SYS_ADMIN"));
        assert!(!b.allows("cap_sys_resource"));
        assert!(b.allows("CAP_FROM_THE_FUTURE"), "unknown names are runc's to judge");
        assert!(Bounding::parse("not hex").is_err());
        assert_eq!(Bounding::parse("1ffffffffff").unwrap().missing(), Vec::<&str>::new());
    }

    #[test]
    fn trims_every_set_and_names_each_removed_capability_once() {
        let mut p = json!({"args": ["sh"], "capabilities": {
            "bounding": ["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"],
            "effective": ["CAP_SYS_RESOURCE", "CAP_CHOWN"],
            "permitted": ["CAP_SYS_RESOURCE"],
            "inheritable": [],
        }});
        let removed = trim_process(&mut p, SHORT);
        assert_eq!(removed, vec!["CAP_SYS_RESOURCE"]);
        assert_eq!(p["capabilities"]["bounding"], json!(["CAP_CHOWN", "CAP_SYS_ADMIN"]));
        assert_eq!(p["capabilities"]["effective"], json!(["CAP_CHOWN"]));
        assert_eq!(p["capabilities"]["permitted"], json!([]));
        assert_eq!(p["args"], json!(["sh"]));
    }

    #[test]
    fn a_process_without_capabilities_is_left_alone() {
        let mut p = json!({"args": ["sh"]});
        assert!(trim_process(&mut p, SHORT).is_empty());
        assert_eq!(p, json!({"args": ["sh"]}));
    }

    #[test]
    fn finds_the_bundle_of_create_and_run() {
        let cwd = Path::new("/cwd");
        let shim = s(&[
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "--log",
            "/run/x/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/run/b",
            "--pid-file",
            "/run/b/init.pid",
            "id1",
        ]);
        assert_eq!(target(&shim, cwd), Target::Bundle("/run/b".into()));
        assert_eq!(target(&s(&["run", "-b", "/x", "id"]), cwd), Target::Bundle("/x".into()));
        assert_eq!(target(&s(&["--root=/r", "create", "--bundle=/y", "id"]), cwd), Target::Bundle("/y".into()));
        assert_eq!(target(&s(&["create", "id"]), cwd), Target::Bundle("/cwd".into()), "runc's default bundle is the working directory");
    }

    #[test]
    fn finds_the_process_file_of_exec_and_ignores_the_rest() {
        let cwd = Path::new("/cwd");
        let exec = s(&["--root", "/r", "exec", "--process", "/tmp/runc-process1", "--detach", "--pid-file", "/p", "id"]);
        assert_eq!(target(&exec, cwd), Target::Process("/tmp/runc-process1".into()));
        assert_eq!(target(&s(&["exec", "-p", "/f", "id"]), cwd), Target::Process("/f".into()));
        assert_eq!(target(&s(&["exec", "id", "sh"]), cwd), Target::None, "exec without a process file changes nothing");
        for other in [&["start", "id"][..], &["delete", "--force", "id"], &["features"], &["--version"], &[]] {
            assert_eq!(target(&s(other), cwd), Target::None, "{other:?}");
        }
        // A global option's value that looks like a subcommand is not one.
        assert_eq!(target(&s(&["--log-format", "json", "state", "id"]), cwd), Target::None);
    }

    #[test]
    fn rewrites_a_bundle_only_when_it_must() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        let asks_all = json!({"ociVersion": "1.0.2", "process": {"capabilities": {
            "bounding": &CAPABILITIES[..], "effective": &CAPABILITIES[..], "permitted": &CAPABILITIES[..]}}});
        std::fs::write(&config, serde_json::to_vec_pretty(&asks_all).unwrap()).unwrap();
        let removed = apply(&Target::Bundle(dir.path().into()), SHORT).unwrap();
        assert_eq!(removed, vec!["CAP_SYS_RESOURCE"]);
        let after: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        let bounding = after["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(bounding.len(), CAPABILITIES.len() - 1);
        assert!(!bounding.contains(&json!("CAP_SYS_RESOURCE")));
        assert_eq!(after["ociVersion"], "1.0.2");

        // Within the set: not rewritten at all.
        let plain = b"{\n  \"process\": {\"capabilities\": {\"bounding\": [\"CAP_CHOWN\"]}}\n}\n";
        std::fs::write(&config, plain).unwrap();
        assert!(apply(&Target::Bundle(dir.path().into()), SHORT).unwrap().is_empty());
        assert_eq!(std::fs::read(&config).unwrap(), plain);
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("process.json");
        std::fs::write(&f, "{not json").unwrap();
        let e = apply(&Target::Process(f.clone()), SHORT).unwrap_err();
        assert_eq!(e.to_string(), format!("{} is not JSON", f.display()));
        let e = apply(&Target::Bundle(dir.path().join("gone")), SHORT).unwrap_err();
        assert!(e.to_string().starts_with("read "), "{e}");
    }
}
