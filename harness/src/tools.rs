//! Pinned external tools: the lock file, the per-version cache, and `tools install`.
//!
//! Every binary the harness runs (helm, kubectl, etcd, kube-*, kwok) comes from
//! `tools.lock.toml`, built from the Go module proxy into
//! `<cache>/tools/<name>-<version>/bin/`. A tool directory is trusted only once it holds
//! the `.complete` marker written after every binary built and reported its version, so an
//! install that fails part-way leaves nothing a later run would use.

use futures::StreamExt;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The lock file, compiled in so the binary and the tests agree on the pins.
pub const LOCK: &str = include_str!("../../tools.lock.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub tool: Vec<ToolPin>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolPin {
    pub name: String,
    /// Empty in the file when `like` names the tool it is taken from.
    #[serde(default)]
    pub module: String,
    #[serde(default)]
    pub version: String,
    /// A tool whose module, version, staging versions and flags this one shares (another
    /// set of binaries of the same module): `kubernetes-node` is `like = "kubernetes"`.
    #[serde(default)]
    pub like: Option<String>,
    /// The set a tool belongs to when a plain install does not build it (`kind`).
    #[serde(default)]
    pub set: Option<String>,
    #[serde(default)]
    pub staging_version: Option<String>,
    /// Staging modules taken at another version than `staging_version` (one the module
    /// proxy does not serve, whose code is the same in the version named here).
    #[serde(default)]
    pub staging_overrides: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub ldflags: Vec<String>,
    pub binaries: Vec<BinaryPin>,
    /// Other versions of the same tool, built on request (`--kubernetes VERSION`).
    #[serde(default)]
    pub other: Vec<OtherVersion>,
}

/// Another pinned version of a tool: the same module, binaries and flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtherVersion {
    pub version: String,
    #[serde(default)]
    pub staging_version: Option<String>,
    #[serde(default)]
    pub staging_overrides: std::collections::BTreeMap<String, String>,
    /// An etcd version of its own, when the default etcd does not serve it.
    #[serde(default)]
    pub etcd: Option<String>,
}

/// The tool whose versions `--kubernetes` chooses between.
pub const KUBERNETES: &str = "kubernetes";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryPin {
    pub name: String,
    pub package: String,
    pub version_args: Vec<String>,
}

/// The optional sets of tools (`ToolPin::set`), each built on request.
pub const SETS: [&str; 1] = ["kind"];

impl Lock {
    pub fn load() -> Self {
        Self::parse(LOCK).expect("tools.lock.toml is valid (checked by a unit test)")
    }

    /// A lock file's text, with each `like` tool filled in from the tool it names.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut lock: Lock = toml::from_str(text).map_err(|e| e.to_string())?;
        let base = lock.clone();
        for t in lock.tool.iter_mut() {
            if let Some(like) = &t.like {
                let from = base.tool(like).ok_or_else(|| format!("tool `{}`: like = \"{like}\" names no tool", t.name))?;
                if from.like.is_some() {
                    return Err(format!("tool `{}`: like = \"{like}\" names a tool that is itself `like` another", t.name));
                }
                if !t.module.is_empty() || !t.version.is_empty() {
                    return Err(format!("tool `{}`: a `like` tool takes module and version from `{like}`; drop them", t.name));
                }
                t.module = from.module.clone();
                t.version = from.version.clone();
                t.staging_version = from.staging_version.clone();
                t.staging_overrides = from.staging_overrides.clone();
                t.ldflags = from.ldflags.clone();
            }
            if t.module.is_empty() || t.version.is_empty() {
                return Err(format!("tool `{}` needs a module and a version (or `like`)", t.name));
            }
            if let Some(set) = &t.set {
                if !SETS.contains(&set.as_str()) {
                    return Err(format!("tool `{}`: set `{set}` is not one of {}", t.name, SETS.join(", ")));
                }
            }
        }
        Ok(lock)
    }

    /// The pin that provides binary `bin`.
    pub fn pin_for(&self, bin: &str) -> Option<(&ToolPin, &BinaryPin)> {
        self.tool.iter().find_map(|t| t.binaries.iter().find(|b| b.name == bin).map(|b| (t, b)))
    }

    fn tool(&self, name: &str) -> Option<&ToolPin> {
        self.tool.iter().find(|t| t.name == name)
    }

    /// The Kubernetes version this lock pins: the default for [`Lock::load`], the chosen
    /// one for [`Lock::at_kubernetes`].
    pub fn kubernetes_version(&self) -> &str {
        self.tool(KUBERNETES).map(|t| t.version.as_str()).unwrap_or("unknown")
    }

    /// Every pinned Kubernetes version, oldest first.
    pub fn kubernetes_versions(&self) -> Vec<String> {
        let Some(k) = self.tool(KUBERNETES) else { return Vec::new() };
        let mut v: Vec<String> = std::iter::once(k.version.clone()).chain(k.other.iter().map(|o| o.version.clone())).collect();
        v.sort_by_key(|s| version_key(s));
        v
    }

    /// The pinned Kubernetes version `spec` names: exact (`v1.32.13`, `1.32.13`) or by minor
    /// (`1.32`, `v1.32`) when one pinned version has that minor.
    pub fn resolve_kubernetes(&self, spec: &str) -> Result<String> {
        let want = spec.trim().trim_start_matches('v');
        let pinned = self.kubernetes_versions();
        let hits: Vec<&String> = pinned
            .iter()
            .filter(|v| {
                let v = v.trim_start_matches('v');
                v == want || v.strip_prefix(want).is_some_and(|rest| rest.starts_with('.')) && want.matches('.').count() == 1
            })
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(Error::Invalid(format!(
                "--kubernetes {spec}: not a pinned Kubernetes version; pinned: {} (default {}); add a `[[tool.other]]` to tools.lock.toml for another",
                pinned.join(", "),
                self.kubernetes_version()
            ))),
        }
    }

    /// This lock with Kubernetes at `version` (a pinned one): the kubernetes tool's version
    /// and staging version replaced, and etcd too if that version names its own.
    pub fn at_kubernetes(&self, version: &str) -> Result<Lock> {
        let version = self.resolve_kubernetes(version)?;
        let mut lock = self.clone();
        if version == self.kubernetes_version() {
            return Ok(lock);
        }
        let k = lock.tool.iter_mut().find(|t| t.name == KUBERNETES).expect("resolve found kubernetes");
        let other = k.other.iter().find(|o| o.version == version).cloned().expect("resolve found the version");
        k.version = other.version.clone();
        k.staging_version = other.staging_version.clone();
        k.staging_overrides = other.staging_overrides.clone();
        for t in lock.tool.iter_mut().filter(|t| t.like.as_deref() == Some(KUBERNETES)) {
            t.version = other.version.clone();
            t.staging_version = other.staging_version.clone();
            t.staging_overrides = other.staging_overrides.clone();
        }
        if let Some(e) = &other.etcd {
            if let Some(etcd) = lock.tool.iter_mut().find(|t| t.name == "etcd") {
                etcd.version = e.clone();
            }
        }
        Ok(lock)
    }
}

/// The command that installs `tool` at its version.
fn install_command(tool: &ToolPin) -> String {
    let mut cmd = "lily-e2e tools install".to_string();
    if let Some(set) = &tool.set {
        cmd.push_str(&format!(" --{set}"));
    }
    let is_kubernetes = tool.name == KUBERNETES || tool.like.as_deref() == Some(KUBERNETES);
    if is_kubernetes && tool.version != Lock::load().kubernetes_version() {
        cmd.push_str(&format!(" --kubernetes {}", tool.version));
    }
    cmd
}

/// `v1.32.13` as (1, 32, 13), for ordering.
fn version_key(v: &str) -> Vec<u64> {
    v.trim_start_matches('v').split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

impl ToolPin {
    pub fn dir(&self) -> PathBuf {
        tools_root().join(format!("{}-{}", self.name, self.version))
    }

    fn ldflags(&self) -> String {
        let v = self.version.trim_start_matches('v');
        let mut parts = v.split('.');
        let major = parts.next().unwrap_or("0");
        let minor = parts.next().unwrap_or("0");
        let mut flags = vec!["-s".to_string(), "-w".to_string()];
        flags
            .extend(self.ldflags.iter().map(|f| f.replace("{version}", &self.version).replace("{major}", major).replace("{minor}", minor)));
        flags.join(" ")
    }

    fn is_installed(&self) -> bool {
        self.dir().join(".complete").is_file() && self.binaries.iter().all(|b| self.dir().join("bin").join(&b.name).is_file())
    }
}

pub fn tools_root() -> PathBuf {
    crate::run::cache_root().join("tools")
}

/// Paths to the pinned binaries, each checked to be installed.
#[derive(Debug, Clone)]
pub struct Tools {
    lock: Lock,
}

impl Tools {
    /// The tools at their default versions.
    pub fn new() -> Self {
        Tools { lock: Lock::load() }
    }

    /// The tools with Kubernetes at `version` (a pinned one; `None` is the default).
    pub fn at_kubernetes(version: Option<&str>) -> Result<Self> {
        let lock = Lock::load();
        Ok(Tools {
            lock: match version {
                Some(v) => lock.at_kubernetes(v)?,
                None => lock,
            },
        })
    }

    /// The path of binary `bin`, or an error naming the command that installs it.
    pub fn path(&self, bin: &str) -> Result<PathBuf> {
        let (tool, _) = self.lock.pin_for(bin).ok_or_else(|| Error::Invalid(format!("{bin} is not a tool lily-e2e pins")))?;
        let p = tool.dir().join("bin").join(bin);
        if tool.is_installed() {
            Ok(p)
        } else {
            Err(Error::ToolMissing { tool: bin.to_string(), version: tool.version.clone(), path: p, install: install_command(tool) })
        }
    }

    /// Every binary of the cluster's control plane (the kubernetes pin's and etcd's), checked
    /// installed (the first missing one is the error).
    pub fn check_kubernetes(&self) -> Result<()> {
        for tool in [KUBERNETES, "etcd"] {
            for b in self.lock.tool(tool).map(|t| t.binaries.as_slice()).unwrap_or_default() {
                self.path(&b.name)?;
            }
        }
        Ok(())
    }

    /// The directory to put first on PATH so `kubectl` and `helm` are the pinned ones.
    pub fn bin_dirs(&self) -> Vec<PathBuf> {
        self.lock.tool.iter().map(|t| t.dir().join("bin")).collect()
    }

    pub fn kubernetes_version(&self) -> &str {
        self.lock.kubernetes_version()
    }

    pub fn lock(&self) -> &Lock {
        &self.lock
    }
}

impl Default for Tools {
    fn default() -> Self {
        Self::new()
    }
}

/// What `install` did for one tool.
#[derive(Debug)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub built: bool,
    pub seconds: f64,
}

/// Which Kubernetes versions `install` builds besides the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KubernetesVersions {
    /// Only the default.
    #[default]
    Default,
    /// The default and these (each a pinned version, `1.32` or `v1.32.13`).
    Also(Vec<String>),
    /// Every pinned version.
    All,
}

/// The tool pins `install` builds: every pinned tool (or those `only` names) at its
/// default version, plus the kubernetes tool at each further version asked for.
///
/// A tool of an optional set (`kind`) is in the plan when `sets` names its set or `only`
/// names the tool.
pub fn install_plan(only: &[String], kubernetes: &KubernetesVersions, sets: &[String]) -> Result<Vec<ToolPin>> {
    let lock = Lock::load();
    for name in only {
        if lock.tool(name).is_none() {
            let names: Vec<&str> = lock.tool.iter().map(|t| t.name.as_str()).collect();
            return Err(Error::Invalid(format!("`{name}` is not a pinned tool; pinned: {}", names.join(", "))));
        }
    }
    for set in sets {
        if !SETS.contains(&set.as_str()) {
            return Err(Error::Invalid(format!("`{set}` is not a set of tools; sets: {}", SETS.join(", "))));
        }
    }
    let wanted = |t: &ToolPin| {
        if only.is_empty() {
            t.set.as_ref().is_none_or(|s| sets.contains(s))
        } else {
            only.contains(&t.name)
        }
    };
    let mut plan: Vec<ToolPin> = lock.tool.iter().filter(|t| wanted(t)).cloned().collect();
    let extra: Vec<String> = match kubernetes {
        KubernetesVersions::Default => Vec::new(),
        KubernetesVersions::All => lock.kubernetes_versions(),
        KubernetesVersions::Also(specs) => specs.iter().map(|s| lock.resolve_kubernetes(s)).collect::<Result<_>>()?,
    };
    for v in extra {
        // The kubernetes tool at that version, and its own etcd if it names one.
        let at = lock.at_kubernetes(&v)?;
        for t in at.tool {
            let differs = lock.tool(&t.name).is_none_or(|d| d.version != t.version);
            if differs && wanted(&t) && !plan.iter().any(|p| p.name == t.name && p.version == t.version) {
                plan.push(t);
            }
        }
    }
    Ok(plan)
}

/// Builds every tool of [`install_plan`] that is not in the cache yet.
pub async fn install(
    only: &[String],
    kubernetes: &KubernetesVersions,
    sets: &[String],
    progress: &indicatif::MultiProgress,
) -> Result<Vec<Installed>> {
    let plan = install_plan(only, kubernetes, sets)?;
    let go = which("go").ok_or_else(|| {
        Error::Invalid("the Go toolchain (`go`) is not on PATH; install Go 1.24 or newer, then run `lily-e2e tools install` again".into())
    })?;
    // Two builds at a time: a build spends much of its time downloading modules and linking,
    // which leave cores free for the other's compiles; the longest (kubernetes) start first.
    let mut tools: Vec<&ToolPin> = plan.iter().collect();
    tools.sort_by_key(|t| std::cmp::Reverse(t.binaries.len()));
    let builds = tools.into_iter().map(|tool| {
        let go = go.clone();
        async move {
            let bar = progress.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix:>20} {wide_msg} [{elapsed}]").expect("static template"),
            );
            bar.set_prefix(format!("{} {}", tool.name, tool.version));
            bar.enable_steady_tick(Duration::from_millis(200));
            let start = Instant::now();
            if tool.is_installed() {
                bar.finish_with_message("already installed".to_string());
                return Ok(Installed { name: tool.name.clone(), version: tool.version.clone(), built: false, seconds: 0.0 });
            }
            match build_tool(&go, tool, &bar).await {
                Ok(()) => {
                    let secs = start.elapsed().as_secs_f64();
                    bar.finish_with_message(format!("built in {secs:.0}s"));
                    Ok(Installed { name: tool.name.clone(), version: tool.version.clone(), built: true, seconds: secs })
                }
                Err(e) => {
                    bar.abandon_with_message("failed".to_string());
                    Err(e)
                }
            }
        }
    });
    let results: Vec<Result<Installed>> = futures::stream::iter(builds).buffered(2).collect().await;
    let mut done = Vec::new();
    for r in results {
        done.push(r?);
    }
    done.sort_by_key(|d| (plan.iter().position(|t| t.name == d.name), version_key(&d.version)));
    Ok(done)
}

async fn build_tool(go: &Path, tool: &ToolPin, bar: &indicatif::ProgressBar) -> Result<()> {
    let root = tools_root();
    let src = root.join("src").join(format!("{}-{}", tool.name, tool.version));
    let staging = root.join(format!(".build-{}-{}-{}", tool.name, tool.version, std::process::id()));
    std::fs::create_dir_all(&src).map_err(Error::io(format!("create {}", src.display())))?;
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("bin")).map_err(Error::io(format!("create {}", staging.display())))?;
    let result = async {
        bar.set_message("writing wrapper module");
        write_wrapper_module(go, tool, &src).await?;
        bar.set_message("resolving modules");
        go_cmd(go, &src, &["mod", "tidy", "-e"], Duration::from_secs(900)).await?;
        // One `go build` for all of a tool's binaries: they share most packages, and go links
        // them in parallel while it compiles the rest (one build per binary linked one by one).
        let names: Vec<&str> = tool.binaries.iter().map(|b| b.name.as_str()).collect();
        bar.set_message(format!("building {}", names.join(", ")));
        let out_dir = staging.join("out");
        std::fs::create_dir_all(&out_dir).map_err(Error::io(format!("create {}", out_dir.display())))?;
        let mut args: Vec<String> = vec!["build".into(), "-trimpath".into(), "-ldflags".into(), tool.ldflags(), "-o".into()];
        if tool.binaries.len() == 1 {
            args.push(out_dir.join(&tool.binaries[0].name).display().to_string());
        } else {
            args.push(format!("{}/", out_dir.display()));
        }
        args.extend(tool.binaries.iter().map(|b| b.package.clone()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        go_cmd(go, &src, &args, Duration::from_secs(3600)).await?;
        for b in &tool.binaries {
            let built = if tool.binaries.len() == 1 { out_dir.join(&b.name) } else { out_dir.join(go_binary_name(&b.package)) };
            let out = staging.join("bin").join(&b.name);
            std::fs::rename(&built, &out).map_err(Error::io(format!("move {} to {}", built.display(), out.display())))?;
            bar.set_message(format!("checking {} version", b.name));
            check_version(&out, b, &tool.version).await?;
        }
        let _ = std::fs::remove_dir(&out_dir);
        std::fs::write(staging.join(".complete"), format!("{} {}\n", tool.module, tool.version))
            .map_err(Error::io("write the completion marker"))?;
        let dest = tool.dir();
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&staging, &dest).map_err(Error::io(format!("move the build into {}", dest.display())))?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// The file name `go build -o DIR/` gives a main package: its last path element, or the one
/// before a major-version suffix (`example.com/cmd/v2` -> `cmd`).
fn go_binary_name(package: &str) -> &str {
    let mut parts = package.rsplit('/');
    let last = parts.next().unwrap_or(package);
    let is_major = last.len() > 1 && last.starts_with('v') && last[1..].bytes().all(|c| c.is_ascii_digit());
    if is_major {
        parts.next().unwrap_or(last)
    } else {
        last
    }
}

async fn write_wrapper_module(go: &Path, tool: &ToolPin, src: &Path) -> Result<()> {
    let mut gomod = format!("module lilye2e/tools/{}\n\ngo 1.24\n\nrequire {} {}\n", tool.name, tool.module, tool.version);
    if let Some(staging) = &tool.staging_version {
        let modules = staging_modules(go, src, &tool.module, &tool.version).await?;
        gomod.push_str("\nreplace (\n");
        for m in modules {
            let v = tool.staging_overrides.get(&m).unwrap_or(staging);
            gomod.push_str(&format!("\t{m} => {m} {v}\n"));
        }
        gomod.push_str(")\n");
    }
    let imports: String = tool.binaries.iter().map(|b| format!("\t_ \"{}\"\n", b.package)).collect();
    let tools_go = format!("//go:build tools\n\npackage tools\n\nimport (\n{imports})\n");
    std::fs::write(src.join("go.mod"), gomod).map_err(Error::io("write the wrapper go.mod"))?;
    std::fs::write(src.join("tools.go"), tools_go).map_err(Error::io("write the wrapper tools.go"))?;
    Ok(())
}

/// The modules that `module@version`'s go.mod replaces with `./staging/...` paths.
async fn staging_modules(go: &Path, cwd: &Path, module: &str, version: &str) -> Result<Vec<String>> {
    let out = go_cmd(go, cwd, &["mod", "download", "-json", &format!("{module}@{version}")], Duration::from_secs(900)).await?;
    let info: serde_json::Value = serde_json::from_slice(&out).map_err(Error::json("go mod download output"))?;
    let gomod = info["GoMod"]
        .as_str()
        .ok_or_else(|| Error::Tool { what: format!("`go mod download {module}@{version}` did not name a go.mod"), source: None })?;
    let text = std::fs::read_to_string(gomod).map_err(Error::io(format!("read {gomod}")))?;
    Ok(parse_staging_replaces(&text))
}

/// `k8s.io/api => ./staging/src/k8s.io/api` lines of a go.mod, as module paths.
pub fn parse_staging_replaces(gomod: &str) -> Vec<String> {
    gomod
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once("=>")?;
            right.trim().starts_with("./staging/").then(|| left.trim().trim_start_matches("replace").trim().to_string())
        })
        .collect()
}

async fn go_cmd(go: &Path, cwd: &Path, args: &[&str], timeout: Duration) -> Result<Vec<u8>> {
    let env: Vec<(OsString, OsString)> =
        vec![("CGO_ENABLED".into(), "0".into()), ("GOFLAGS".into(), "-mod=mod".into()), ("GOWORK".into(), "off".into())];
    let args_os: Vec<OsString> = args.iter().map(OsString::from).collect();
    let out = crate::process::run_command(go, &args_os, &env, Some(cwd), timeout)
        .await
        .map_err(|e| Error::Tool { what: format!("cannot run `go {}`", args.join(" ")), source: Some(Box::new(e)) })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(Error::Tool {
            what: format!("`go {}` failed ({}) in {}:\n{}", args.join(" "), out.status, cwd.display(), tail.join("\n")),
            source: None,
        });
    }
    Ok(out.stdout)
}

async fn check_version(bin: &Path, pin: &BinaryPin, version: &str) -> Result<()> {
    let args: Vec<OsString> = pin.version_args.iter().map(OsString::from).collect();
    let out = crate::process::run_command(bin, &args, &[], None, Duration::from_secs(30))
        .await
        .map_err(|e| Error::Tool { what: format!("cannot run {} {}", pin.name, pin.version_args.join(" ")), source: Some(Box::new(e)) })?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !text.contains(version.trim_start_matches('v')) {
        return Err(Error::Tool {
            what: format!("{} reports `{}`, expected version {version}", pin.name, text.lines().next().unwrap_or("").trim()),
            source: None,
        });
    }
    Ok(())
}

/// A program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_parses_and_pins_every_binary_the_harness_runs() {
        let lock = Lock::load();
        for bin in ["helm", "kubectl", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"] {
            let (tool, _) = lock.pin_for(bin).unwrap_or_else(|| panic!("{bin} is not pinned"));
            assert!(tool.version.starts_with('v'), "{bin}: {}", tool.version);
        }
        let k8s = lock.tool.iter().find(|t| t.name == "kubernetes").unwrap();
        assert!(k8s.version.starts_with("v1.34."));
        assert_eq!(k8s.staging_version.as_deref().map(|s| &s[..5]), Some("v0.34"));
    }

    #[test]
    fn kubernetes_versions_resolve_exactly_or_by_minor() {
        let lock = Lock::load();
        let all = lock.kubernetes_versions();
        assert!(all.len() >= 3, "{all:?}");
        assert!(all.windows(2).all(|w| version_key(&w[0]) < version_key(&w[1])), "oldest first: {all:?}");
        assert_eq!(lock.resolve_kubernetes("1.32").unwrap(), "v1.32.13");
        assert_eq!(lock.resolve_kubernetes("v1.32.13").unwrap(), "v1.32.13");
        assert_eq!(lock.resolve_kubernetes("1.34.4").unwrap(), lock.kubernetes_version());
        for bad in ["1.33", "v1.3", "1", "1.32.1", "latest", ""] {
            let e = lock.resolve_kubernetes(bad).unwrap_err().to_string();
            assert!(e.contains("not a pinned Kubernetes version") && e.contains("v1.32.13"), "{bad}: {e}");
        }
    }

    #[test]
    fn another_kubernetes_replaces_only_the_kubernetes_pin() {
        let lock = Lock::load();
        let old = lock.at_kubernetes("1.32").unwrap();
        let k = old.tool(KUBERNETES).unwrap();
        assert_eq!((k.version.as_str(), k.staging_version.as_deref()), ("v1.32.13", Some("v0.32.13")));
        assert!(k.ldflags().contains("gitMinor=32 "), "{}", k.ldflags());
        for name in ["etcd", "helm", "kwok"] {
            assert_eq!(old.tool(name).unwrap().version, lock.tool(name).unwrap().version, "{name}");
        }
        // Every other version has the staging version that matches it.
        for o in &lock.tool(KUBERNETES).unwrap().other {
            assert_eq!(o.staging_version.as_deref().map(|s| &s[3..]), Some(&o.version[3..]), "{o:?}");
        }
    }

    #[test]
    fn install_plans_the_default_tools_plus_the_versions_asked_for() {
        let names = |p: Vec<ToolPin>| p.into_iter().map(|t| format!("{}-{}", t.name, t.version)).collect::<Vec<_>>();
        let none: &[String] = &[];
        let default = names(install_plan(&[], &KubernetesVersions::Default, none).unwrap());
        assert_eq!(default.len(), 4, "{default:?}");
        let all = names(install_plan(&[], &KubernetesVersions::All, none).unwrap());
        assert_eq!(all.len(), 4 + Lock::load().kubernetes_versions().len() - 1, "{all:?}");
        let one = names(install_plan(&["kubernetes".into()], &KubernetesVersions::Also(vec!["1.37".into()]), none).unwrap());
        assert_eq!(one, vec!["kubernetes-v1.34.4", "kubernetes-v1.37.2"]);
        let e = install_plan(&["kubelet".into()], &KubernetesVersions::Default, none).unwrap_err().to_string();
        assert!(e.contains("`kubelet` is not a pinned tool"), "{e}");
        assert!(install_plan(&[], &KubernetesVersions::Also(vec!["1.99".into()]), none).is_err());
    }

    #[test]
    fn the_kind_set_is_built_only_when_asked_for() {
        let names = |p: Vec<ToolPin>| p.into_iter().map(|t| t.name).collect::<Vec<_>>();
        let kind = vec!["kind".to_string()];
        let plain = names(install_plan(&[], &KubernetesVersions::Default, &[]).unwrap());
        assert!(!plain.contains(&"kind".to_string()) && !plain.contains(&"kubernetes-node".to_string()), "{plain:?}");
        let with = names(install_plan(&[], &KubernetesVersions::Default, &kind).unwrap());
        for t in ["kubernetes", "etcd", "helm", "kwok", "kind", "kubernetes-node", "coredns", "local-path-provisioner", "cri-tools"] {
            assert!(with.contains(&t.to_string()), "{t} missing from {with:?}");
        }
        // Named, a tool of a set is built without the set.
        assert_eq!(names(install_plan(&["kind".into()], &KubernetesVersions::Default, &[]).unwrap()), vec!["kind"]);
        let e = install_plan(&[], &KubernetesVersions::Default, &["gpu".into()]).unwrap_err().to_string();
        assert!(e.contains("`gpu` is not a set of tools; sets: kind"), "{e}");
        // Other Kubernetes versions bring their node binaries only with the set.
        let all = install_plan(&[], &KubernetesVersions::All, &kind).unwrap();
        let node: Vec<&str> = all.iter().filter(|t| t.name == "kubernetes-node").map(|t| t.version.as_str()).collect();
        assert_eq!(node.len(), Lock::load().kubernetes_versions().len(), "{node:?}");
    }

    #[test]
    fn a_like_tool_shares_its_module_version_and_flags() {
        let lock = Lock::load();
        let (node, _) = lock.pin_for("kubelet").unwrap();
        let k8s = lock.tool(KUBERNETES).unwrap();
        assert_eq!((node.module.as_str(), node.version.as_str()), (k8s.module.as_str(), k8s.version.as_str()));
        assert_eq!(node.ldflags(), k8s.ldflags());
        assert_eq!(node.staging_version, k8s.staging_version);
        assert_eq!(install_command(node), "lily-e2e tools install --kind");
        let old = lock.at_kubernetes("1.32").unwrap();
        let (node, _) = old.pin_for("kubeadm").unwrap();
        assert_eq!((node.version.as_str(), node.staging_version.as_deref()), ("v1.32.13", Some("v0.32.13")));
        assert!(node.staging_overrides.contains_key("k8s.io/endpointslice"));
        assert_eq!(install_command(node), "lily-e2e tools install --kind --kubernetes v1.32.13");

        let bad = |text: &str| Lock::parse(text).unwrap_err();
        let tool = |extra: &str| format!("[[tool]]\nname = \"a\"\n{extra}binaries = []\n");
        assert!(bad(&tool("like = \"zz\"\n")).contains("names no tool"));
        assert!(bad(&tool("")).contains("needs a module and a version"));
        assert!(bad(&tool("module = \"m\"\nversion = \"v1\"\nset = \"gpu\"\n")).contains("set `gpu` is not one of kind"));
        let twice =
            format!("{}[[tool]]\nname = \"b\"\nlike = \"a\"\nmodule = \"x\"\nbinaries = []\n", tool("module = \"m\"\nversion = \"v1\"\n"));
        assert!(bad(&twice).contains("drop them"), "{}", bad(&twice));
    }

    #[test]
    fn a_missing_other_kubernetes_names_its_install_command() {
        let t = Tools::at_kubernetes(Some("1.37")).unwrap();
        assert_eq!(install_command(t.lock.tool(KUBERNETES).unwrap()), "lily-e2e tools install --kubernetes v1.37.2");
        assert_eq!(install_command(t.lock.tool("helm").unwrap()), "lily-e2e tools install");
        assert_eq!(install_command(Lock::load().tool(KUBERNETES).unwrap()), "lily-e2e tools install");
        let e = Tools::at_kubernetes(Some("9.9")).unwrap_err().to_string();
        assert!(e.contains("--kubernetes 9.9"), "{e}");
    }

    #[test]
    fn go_names_a_binary_after_its_package() {
        assert_eq!(go_binary_name("k8s.io/kubernetes/cmd/kube-apiserver"), "kube-apiserver");
        assert_eq!(go_binary_name("go.etcd.io/etcd/server/v3"), "server");
        assert_eq!(go_binary_name("helm.sh/helm/v3/cmd/helm"), "helm");
        assert_eq!(go_binary_name("example.com/v"), "v");
    }

    #[test]
    fn ldflags_fill_in_the_version() {
        let lock = Lock::load();
        let k8s = lock.tool.iter().find(|t| t.name == "kubernetes").unwrap();
        let f = k8s.ldflags();
        assert!(f.contains(&format!("gitVersion={}", k8s.version)));
        assert!(f.contains("gitMajor=1 ") && f.contains("gitMinor=34 "), "{f}");
    }

    #[test]
    fn staging_replaces_are_read_from_go_mod() {
        let gomod = "replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tgithub.com/x/y => github.com/x/y v1.0.0\n)\nreplace k8s.io/kubectl => ./staging/src/k8s.io/kubectl\n";
        assert_eq!(parse_staging_replaces(gomod), vec!["k8s.io/api", "k8s.io/kubectl"]);
    }
}
