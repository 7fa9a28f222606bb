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
    pub module: String,
    pub version: String,
    #[serde(default)]
    pub staging_version: Option<String>,
    #[serde(default)]
    pub ldflags: Vec<String>,
    pub binaries: Vec<BinaryPin>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryPin {
    pub name: String,
    pub package: String,
    pub version_args: Vec<String>,
}

impl Lock {
    pub fn load() -> Self {
        toml::from_str(LOCK).expect("tools.lock.toml is valid (checked by a unit test)")
    }

    /// The pin that provides binary `bin`.
    pub fn pin_for(&self, bin: &str) -> Option<(&ToolPin, &BinaryPin)> {
        self.tool.iter().find_map(|t| t.binaries.iter().find(|b| b.name == bin).map(|b| (t, b)))
    }
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
    pub fn new() -> Self {
        Tools { lock: Lock::load() }
    }

    /// The path of binary `bin`, or an error naming the command that installs it.
    pub fn path(&self, bin: &str) -> Result<PathBuf> {
        let (tool, _) = self.lock.pin_for(bin).ok_or_else(|| Error::Invalid(format!("{bin} is not a tool lily-e2e pins")))?;
        let p = tool.dir().join("bin").join(bin);
        if tool.is_installed() {
            Ok(p)
        } else {
            Err(Error::ToolMissing { tool: bin.to_string(), version: tool.version.clone(), path: p })
        }
    }

    /// The directory to put first on PATH so `kubectl` and `helm` are the pinned ones.
    pub fn bin_dirs(&self) -> Vec<PathBuf> {
        self.lock.tool.iter().map(|t| t.dir().join("bin")).collect()
    }

    pub fn kubernetes_version(&self) -> &str {
        self.lock.tool.iter().find(|t| t.name == "kubernetes").map(|t| t.version.as_str()).unwrap_or("unknown")
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

/// Builds every pinned tool that is not in the cache yet. `only` limits it to some names.
pub async fn install(only: &[String], progress: &indicatif::MultiProgress) -> Result<Vec<Installed>> {
    let go = which("go").ok_or_else(|| {
        Error::Invalid("the Go toolchain (`go`) is not on PATH; install Go 1.24 or newer, then run `lily-e2e tools install` again".into())
    })?;
    let lock = Lock::load();
    // Two builds at a time: a build spends much of its time downloading modules and linking,
    // which leave cores free for the other's compiles; the longest (kubernetes) starts first.
    let mut tools: Vec<&ToolPin> = lock.tool.iter().filter(|t| only.is_empty() || only.contains(&t.name)).collect();
    tools.sort_by_key(|t| std::cmp::Reverse(t.binaries.len()));
    let builds = tools.into_iter().map(|tool| {
        let go = go.clone();
        async move {
            let bar = progress.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix:>12} {wide_msg} [{elapsed}]").expect("static template"),
            );
            bar.set_prefix(tool.name.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            let start = Instant::now();
            if tool.is_installed() {
                bar.finish_with_message(format!("{} already installed", tool.version));
                return Ok(Installed { name: tool.name.clone(), version: tool.version.clone(), built: false, seconds: 0.0 });
            }
            match build_tool(&go, tool, &bar).await {
                Ok(()) => {
                    let secs = start.elapsed().as_secs_f64();
                    bar.finish_with_message(format!("{} built in {secs:.0}s", tool.version));
                    Ok(Installed { name: tool.name.clone(), version: tool.version.clone(), built: true, seconds: secs })
                }
                Err(e) => {
                    bar.abandon_with_message(format!("{} failed", tool.version));
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
    done.sort_by_key(|d| lock.tool.iter().position(|t| t.name == d.name));
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
        for b in &tool.binaries {
            bar.set_message(format!("building {}", b.name));
            let out = staging.join("bin").join(&b.name);
            let args: Vec<String> = vec![
                "build".into(),
                "-trimpath".into(),
                "-ldflags".into(),
                tool.ldflags(),
                "-o".into(),
                out.display().to_string(),
                b.package.clone(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            go_cmd(go, &src, &args, Duration::from_secs(3600)).await?;
            bar.set_message(format!("checking {} version", b.name));
            check_version(&out, b, &tool.version).await?;
        }
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

async fn write_wrapper_module(go: &Path, tool: &ToolPin, src: &Path) -> Result<()> {
    let mut gomod = format!("module lilye2e/tools/{}\n\ngo 1.24\n\nrequire {} {}\n", tool.name, tool.module, tool.version);
    if let Some(staging) = &tool.staging_version {
        let modules = staging_modules(go, src, &tool.module, &tool.version).await?;
        gomod.push_str("\nreplace (\n");
        for m in modules {
            gomod.push_str(&format!("\t{m} => {m} {staging}\n"));
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
