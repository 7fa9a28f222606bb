//! A typed driver over the real `helm` binary.
//!
//! Every invocation is built from typed arguments (no shell), runs in its own process group
//! under a deadline ([`crate::process::run_command`]), and keeps stdout and stderr apart so
//! that helm's warnings never end up in parsed YAML or JSON.
//!
//! Isolation: a [`Helm`] owns a home directory. `HELM_CONFIG_HOME`, `HELM_CACHE_HOME`,
//! `HELM_DATA_HOME` and the derived repository/registry/plugin paths all point inside it,
//! every other `HELM_*` variable helm reads is set explicitly (empty = helm's default), and
//! `KUBECONFIG` is always set (to the cluster's kubeconfig, or to a file in the home that
//! does not exist), so neither the user's helm setup nor their kubeconfig is read or changed.
//!
//! Secrets: errors and logs show the command with `-f` file names but never values content;
//! `--set` values are shown as `key=[redacted]`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::types::{parse_status, RawMeta};
use super::{ChartRef, HelmError, HistoryEntry, InstallOpts, LintReport, ReleaseOpts, ReleaseStatus, SearchHit, TemplateOpts, Values};
use crate::error::{Error, Result};

/// How long a helm command that does not wait for a cluster may take.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Extra time given to a `--wait --timeout T` command beyond `T` before it is killed.
const WAIT_MARGIN: Duration = Duration::from_secs(60);

/// A helm command line: the arguments passed, and how they are shown (values redacted).
#[derive(Debug, Default, Clone)]
pub(crate) struct Cmd {
    args: Vec<OsString>,
    shown: Vec<String>,
}

impl Cmd {
    pub(crate) fn new<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Self {
        let mut c = Cmd::default();
        for a in args {
            c.arg(a);
        }
        c
    }
    pub(crate) fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        let a = a.as_ref();
        self.shown.push(a.to_string_lossy().into_owned());
        self.args.push(a.to_os_string());
        self
    }
    fn secret_pair(&mut self, flag: &str, key: &str, value: &str) -> &mut Self {
        self.args.push(flag.into());
        self.args.push(format!("{key}={value}").into());
        self.shown.push(flag.to_string());
        self.shown.push(format!("{key}=[redacted]"));
        self
    }
    fn wait(&mut self, wait: Option<Duration>) -> &mut Self {
        if let Some(t) = wait {
            self.arg("--wait");
            self.arg("--timeout");
            self.arg(format!("{}s", t.as_secs().max(1)));
        }
        self
    }
    pub(crate) fn shown(&self) -> String {
        format!("helm {}", self.shown.join(" "))
    }
}

impl ChartRef {
    fn push(&self, cmd: &mut Cmd) {
        match self {
            ChartRef::Path(p) => {
                cmd.arg(p.as_os_str());
            }
            ChartRef::Repo { repo, chart } => {
                cmd.arg(format!("{repo}/{chart}"));
            }
            ChartRef::Url { url, chart } => {
                cmd.arg(chart.as_str()).arg("--repo").arg(url.as_str());
            }
        }
    }
}

impl Values {
    fn push(&self, cmd: &mut Cmd) {
        for f in &self.files {
            cmd.arg("-f");
            cmd.arg(f.as_os_str());
        }
        for (k, v) in &self.set {
            cmd.secret_pair("--set", k, v);
        }
        for (k, v) in &self.set_string {
            cmd.secret_pair("--set-string", k, v);
        }
    }
}

/// What a helm command printed.
#[derive(Debug, Clone)]
pub struct HelmOutput {
    pub stdout: String,
    pub stderr: String,
}

/// The helm driver. Cheap to clone; clones share the home directory.
#[derive(Debug, Clone)]
pub struct Helm {
    bin: PathBuf,
    home: PathBuf,
    kubeconfig: PathBuf,
    kube_context: Option<String>,
    timeout: Duration,
}

impl Helm {
    /// The pinned helm (`lily-e2e tools install`), with its state under `home`.
    pub fn new(home: impl Into<PathBuf>) -> Result<Self> {
        let bin = crate::tools::Tools::new().path("helm")?;
        Self::with_binary(bin, home)
    }

    /// A specific helm binary, with its state under `home`.
    pub fn with_binary(bin: impl Into<PathBuf>, home: impl Into<PathBuf>) -> Result<Self> {
        let home = home.into();
        for d in ["config", "cache", "data", "data/plugins"] {
            let p = home.join(d);
            std::fs::create_dir_all(&p).map_err(Error::io(format!("create {}", p.display())))?;
        }
        let kubeconfig = home.join("no-kubeconfig");
        Ok(Helm { bin: bin.into(), home, kubeconfig, kube_context: None, timeout: DEFAULT_COMMAND_TIMEOUT })
    }

    /// Talk to the cluster of this kubeconfig (the default is none: only offline commands work).
    pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubeconfig = path.into();
        self
    }
    /// `--kube-context` for cluster commands.
    pub fn kube_context(mut self, context: Option<String>) -> Self {
        self.kube_context = context;
        self
    }
    /// The deadline for commands that do not `--wait`.
    pub fn command_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn binary(&self) -> &Path {
        &self.bin
    }
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The environment every helm invocation gets.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        let h = &self.home;
        let p = |s: &str| h.join(s).into_os_string();
        let mut env: Vec<(OsString, OsString)> = vec![
            ("HELM_CONFIG_HOME".into(), p("config")),
            ("HELM_CACHE_HOME".into(), p("cache")),
            ("HELM_DATA_HOME".into(), p("data")),
            ("HELM_REPOSITORY_CONFIG".into(), p("config/repositories.yaml")),
            ("HELM_REPOSITORY_CACHE".into(), p("cache/repository")),
            ("HELM_REGISTRY_CONFIG".into(), p("config/registry/config.json")),
            ("HELM_PLUGINS".into(), p("data/plugins")),
            ("KUBECONFIG".into(), self.kubeconfig.clone().into_os_string()),
        ];
        // Everything else helm reads from the environment: empty means helm's default.
        for k in [
            "HELM_NAMESPACE",
            "HELM_KUBECONTEXT",
            "HELM_KUBETOKEN",
            "HELM_KUBEASUSER",
            "HELM_KUBEASGROUPS",
            "HELM_KUBEAPISERVER",
            "HELM_KUBECAFILE",
            "HELM_KUBETLS_SERVER_NAME",
            "HELM_KUBEINSECURE_SKIP_TLS_VERIFY",
            "HELM_DRIVER",
            "HELM_DRIVER_SQL_CONNECTION_STRING",
            "HELM_MAX_HISTORY",
            "HELM_DEBUG",
            "HELM_BURST_LIMIT",
            "HELM_QPS",
            "HELM_NO_PLUGINS",
            "HELM_POST_RENDERER",
        ] {
            env.push((k.into(), OsString::new()));
        }
        env
    }

    /// Runs `helm ARGS` and returns its output, or an error with the (redacted) command line,
    /// the exit status and helm's stderr.
    pub(crate) async fn exec(&self, cmd: &Cmd, timeout: Duration) -> Result<HelmOutput> {
        let mut args = cmd.args.clone();
        if let Some(ctx) = &self.kube_context {
            args.push("--kube-context".into());
            args.push(ctx.into());
        }
        tracing::debug!(cmd = %cmd.shown(), "helm");
        let out = crate::process::run_command(&self.bin, &args, &self.env(), None, timeout)
            .await
            .map_err(|source| HelmError::Run { command: cmd.shown(), source })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            // Only stderr: stdout may hold rendered manifests, secrets included.
            let said = crate::process::tail_of(&stderr, 30, 6000);
            let said = if said.is_empty() { "(helm printed nothing on stderr)".to_string() } else { said };
            return Err(HelmError::Failed { command: cmd.shown(), status: out.status.to_string(), stderr: said }.into());
        }
        if !stderr.trim().is_empty() {
            tracing::debug!(cmd = %cmd.shown(), stderr = %stderr.trim(), "helm warnings");
        }
        Ok(HelmOutput { stdout, stderr })
    }

    fn wait_timeout(&self, wait: Option<Duration>) -> Duration {
        wait.map(|w| w + WAIT_MARGIN).unwrap_or(self.timeout).max(self.timeout)
    }

    /// `helm version --short`.
    pub async fn version(&self) -> Result<String> {
        Ok(self.exec(&Cmd::new(["version", "--short"]), self.timeout).await?.stdout.trim().to_string())
    }

    /// `helm repo add NAME URL --force-update`.
    pub async fn repo_add(&self, name: &str, url: &str) -> Result<()> {
        self.exec(&Cmd::new(["repo", "add", name, url, "--force-update"]), self.timeout).await?;
        Ok(())
    }

    /// `helm repo update [NAMES]`.
    pub async fn repo_update(&self, names: &[&str]) -> Result<()> {
        let mut cmd = Cmd::new(["repo", "update"]);
        for n in names {
            cmd.arg(n);
        }
        self.exec(&cmd, self.timeout).await?;
        Ok(())
    }

    /// `helm repo index DIR --url URL`.
    pub async fn repo_index(&self, dir: &Path, url: &str) -> Result<()> {
        let mut cmd = Cmd::new(["repo", "index"]);
        cmd.arg(dir.as_os_str()).arg("--url").arg(url);
        self.exec(&cmd, self.timeout).await?;
        Ok(())
    }

    /// `helm search repo QUERY --versions -o json` (`--devel` includes pre-releases).
    pub async fn search_repo_versions(&self, query: &str, devel: bool) -> Result<Vec<SearchHit>> {
        let mut cmd = Cmd::new(["search", "repo", query, "--versions", "-o", "json"]);
        if devel {
            cmd.arg("--devel");
        }
        let out = self.exec(&cmd, self.timeout).await?;
        serde_json::from_str(&out.stdout).map_err(Error::json(format!("`{}` output", cmd.shown())))
    }

    /// `helm pull CHART [--version V] -d DEST`; returns the archive it wrote. DEST should be
    /// empty (the archive is the `.tgz` that appears in it).
    pub async fn pull(&self, chart: &ChartRef, version: Option<&str>, dest: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dest).map_err(Error::io(format!("create {}", dest.display())))?;
        let before = tgz_files(dest);
        let mut cmd = Cmd::new(["pull"]);
        chart.push(&mut cmd);
        if let Some(v) = version {
            cmd.arg("--version").arg(v);
        }
        cmd.arg("-d").arg(dest.as_os_str());
        self.exec(&cmd, self.timeout).await?;
        let new: Vec<PathBuf> = tgz_files(dest).into_iter().filter(|p| !before.contains(p)).collect();
        match new.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(HelmError::Unexpected(format!("`{}` did not leave exactly one new .tgz in {}", cmd.shown(), dest.display())).into()),
        }
    }

    /// `helm package CHART_DIR [--version V] -d DEST`; returns the archive's path.
    pub async fn package(&self, chart_dir: &Path, version: Option<&str>, dest: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dest).map_err(Error::io(format!("create {}", dest.display())))?;
        let mut cmd = Cmd::new(["package"]);
        cmd.arg(chart_dir.as_os_str());
        if let Some(v) = version {
            cmd.arg("--version").arg(v);
        }
        cmd.arg("-d").arg(dest.as_os_str());
        let out = self.exec(&cmd, self.timeout).await?;
        // "Successfully packaged chart and saved it to: /dest/lily-0.2.0.tgz"
        let path = out
            .stdout
            .lines()
            .rev()
            .find_map(|l| l.split_once("saved it to:").map(|(_, p)| PathBuf::from(p.trim())))
            .filter(|p| p.is_file())
            .ok_or_else(|| HelmError::Unexpected(format!("`{}` did not say where it saved the chart", cmd.shown())))?;
        Ok(path)
    }

    /// `helm lint CHART [-f ...] [--strict]`. Lint failures are errors that carry lint's
    /// `[ERROR]` lines; a passing lint returns its findings.
    pub async fn lint(&self, chart: &Path, values: &Values, strict: bool) -> Result<LintReport> {
        let mut cmd = Cmd::new(["lint"]);
        cmd.arg(chart.as_os_str());
        values.push(&mut cmd);
        if strict {
            cmd.arg("--strict");
        }
        let mut args = cmd.args.clone();
        if let Some(ctx) = &self.kube_context {
            args.push("--kube-context".into());
            args.push(ctx.into());
        }
        let out = crate::process::run_command(&self.bin, &args, &self.env(), None, self.timeout)
            .await
            .map_err(|source| HelmError::Run { command: cmd.shown(), source })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = LintReport::parse(&stdout);
        if !out.status.success() {
            let mut said: Vec<String> = report
                .messages
                .iter()
                .filter(|(s, _)| s == "ERROR" || (strict && s == "WARNING"))
                .map(|(s, m)| format!("[{s}] {m}"))
                .collect();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.trim().is_empty() {
                said.push(stderr.trim().to_string());
            }
            return Err(HelmError::Failed { command: cmd.shown(), status: out.status.to_string(), stderr: said.join("\n") }.into());
        }
        Ok(report)
    }

    /// `helm template RELEASE CHART ...`: the rendered manifests (stdout only).
    pub async fn template(&self, release: &str, chart: &ChartRef, opts: &TemplateOpts) -> Result<String> {
        let mut cmd = Cmd::new(["template", release]);
        chart.push(&mut cmd);
        if let Some(ns) = &opts.namespace {
            cmd.arg("--namespace").arg(ns);
        }
        if let Some(v) = &opts.version {
            cmd.arg("--version").arg(v);
        }
        opts.values.push(&mut cmd);
        if let Some(kv) = &opts.kube_version {
            cmd.arg("--kube-version").arg(kv);
        }
        for a in &opts.api_versions {
            cmd.arg("--api-versions").arg(a);
        }
        let out = self.exec(&cmd, self.timeout).await;
        Ok(self.explain_missing_version(out, chart, opts.version.as_deref()).await?.stdout)
    }

    /// `helm upgrade --install RELEASE CHART --namespace NS ...` (install or upgrade).
    pub async fn upgrade_install(&self, release: &str, chart: &ChartRef, opts: &InstallOpts) -> Result<HelmOutput> {
        self.release_cmd(&["upgrade", "--install"], release, chart, opts).await
    }

    /// `helm install RELEASE CHART --namespace NS ...` (fails if the release exists).
    pub async fn install(&self, release: &str, chart: &ChartRef, opts: &InstallOpts) -> Result<HelmOutput> {
        self.release_cmd(&["install"], release, chart, opts).await
    }

    /// `helm upgrade RELEASE CHART --namespace NS ...` (fails if the release does not exist).
    pub async fn upgrade(&self, release: &str, chart: &ChartRef, opts: &InstallOpts) -> Result<HelmOutput> {
        self.release_cmd(&["upgrade"], release, chart, opts).await
    }

    async fn release_cmd(&self, verb: &[&str], release: &str, chart: &ChartRef, opts: &InstallOpts) -> Result<HelmOutput> {
        let mut cmd = Cmd::new(verb);
        cmd.arg(release);
        chart.push(&mut cmd);
        cmd.arg("--namespace").arg(&opts.namespace);
        if opts.create_namespace {
            cmd.arg("--create-namespace");
        }
        if let Some(v) = &opts.version {
            cmd.arg("--version").arg(v);
        }
        if opts.reset_values {
            cmd.arg("--reset-values");
        }
        opts.values.push(&mut cmd);
        cmd.wait(opts.wait);
        let out = self.exec(&cmd, self.wait_timeout(opts.wait)).await;
        self.explain_missing_version(out, chart, opts.version.as_deref()).await
    }

    /// `helm rollback RELEASE [REVISION]` (the previous revision when `None`).
    pub async fn rollback(&self, release: &str, revision: Option<u32>, opts: &ReleaseOpts) -> Result<()> {
        let mut cmd = Cmd::new(["rollback", release]);
        if let Some(r) = revision {
            cmd.arg(r.to_string());
        }
        cmd.arg("--namespace").arg(&opts.namespace);
        cmd.wait(opts.wait);
        self.exec(&cmd, self.wait_timeout(opts.wait)).await?;
        Ok(())
    }

    /// `helm uninstall RELEASE`.
    pub async fn uninstall(&self, release: &str, opts: &ReleaseOpts) -> Result<()> {
        let mut cmd = Cmd::new(["uninstall", release]);
        cmd.arg("--namespace").arg(&opts.namespace);
        cmd.wait(opts.wait);
        self.exec(&cmd, self.wait_timeout(opts.wait)).await?;
        Ok(())
    }

    /// `helm status RELEASE -o json`, completed by `helm get metadata RELEASE -o json` (newer
    /// helm leaves the chart out of `status`).
    pub async fn status(&self, release: &str, namespace: &str) -> Result<ReleaseStatus> {
        let cmd = Cmd::new(["status", release, "--namespace", namespace, "-o", "json"]);
        let out = self.exec(&cmd, self.timeout).await?;
        let mut status = parse_status(&out.stdout).map_err(Error::json(format!("`{}` output", cmd.shown())))?;
        if status.chart_name.is_empty() {
            let cmd = Cmd::new(["get", "metadata", release, "--namespace", namespace, "-o", "json"]);
            let out = self.exec(&cmd, self.timeout).await?;
            let meta: RawMeta = serde_json::from_str(&out.stdout).map_err(Error::json(format!("`{}` output", cmd.shown())))?;
            status.chart = format!("{}-{}", meta.name_or_chart(), meta.version);
            status.chart_name = meta.name_or_chart().to_string();
            status.chart_version = meta.version;
            status.app_version = meta.app_version;
        }
        Ok(status)
    }

    /// `helm history RELEASE -o json`, oldest first.
    pub async fn history(&self, release: &str, namespace: &str) -> Result<Vec<HistoryEntry>> {
        let cmd = Cmd::new(["history", release, "--namespace", namespace, "--max", "256", "-o", "json"]);
        let out = self.exec(&cmd, self.timeout).await?;
        let mut h: Vec<HistoryEntry> = serde_json::from_str(&out.stdout).map_err(Error::json(format!("`{}` output", cmd.shown())))?;
        h.sort_by_key(|e| e.revision);
        Ok(h)
    }

    /// When helm could not find a repository chart at the asked version, adds the versions
    /// the repository does have to the error.
    async fn explain_missing_version(&self, out: Result<HelmOutput>, chart: &ChartRef, version: Option<&str>) -> Result<HelmOutput> {
        let err = match out {
            Ok(o) => return Ok(o),
            Err(e) => e,
        };
        let (Some(version), ChartRef::Repo { repo, chart: name }) = (version, chart) else {
            return Err(err);
        };
        let Error::Helm(helm) = err else {
            return Err(err);
        };
        let said = helm.to_string();
        if !(said.contains("no chart version found") || said.contains("not found in")) {
            return Err(helm.into());
        }
        let query = format!("{repo}/{name}");
        let mut known: Vec<String> = match self.search_repo_versions(&query, true).await {
            Ok(hits) => hits.into_iter().filter(|h| h.name == query).map(|h| h.version).collect(),
            Err(_) => return Err(helm.into()),
        };
        known.sort_by_cached_key(|v| semver::Version::parse(v.trim_start_matches('v')).ok());
        Err(HelmError::NoSuchVersion { chart: query, version: version.to_string(), known, helm: Box::new(helm) }.into())
    }
}

fn tgz_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tgz"))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_are_passed_but_never_shown() {
        let mut cmd = Cmd::new(["template", "rel"]);
        ChartRef::Repo { repo: "r".into(), chart: "lily".into() }.push(&mut cmd);
        Values::files(["a.yaml"]).set("db.password", "hunter2").set_string("x", "s3cret").push(&mut cmd);
        assert!(cmd.args.iter().any(|a| a == "db.password=hunter2"));
        let shown = cmd.shown();
        assert_eq!(shown, "helm template rel r/lily -f a.yaml --set db.password=[redacted] --set-string x=[redacted]");
        let dbg = format!("{:?}", Values::default().set("k", "hunter2"));
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn url_charts_use_the_repo_flag() {
        let mut cmd = Cmd::new(["pull"]);
        ChartRef::Url { url: "https://charts.example/x".into(), chart: "lily".into() }.push(&mut cmd);
        assert_eq!(cmd.shown(), "helm pull lily --repo https://charts.example/x");
    }

    #[test]
    fn env_isolates_every_helm_path_and_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let h = Helm::with_binary("/bin/false", dir.path()).unwrap();
        let env = h.env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| PathBuf::from(v)).unwrap_or_else(|| panic!("{k} unset"));
        for k in [
            "HELM_CONFIG_HOME",
            "HELM_CACHE_HOME",
            "HELM_DATA_HOME",
            "HELM_REPOSITORY_CONFIG",
            "HELM_REPOSITORY_CACHE",
            "HELM_REGISTRY_CONFIG",
            "HELM_PLUGINS",
            "KUBECONFIG",
        ] {
            assert!(get(k).starts_with(dir.path()), "{k} = {}", get(k).display());
        }
        assert_eq!(get("HELM_KUBECONTEXT"), PathBuf::new());
        let h = h.kubeconfig("/k/config");
        assert_eq!(h.env().iter().find(|(k, _)| k == "KUBECONFIG").unwrap().1, "/k/config");
    }
}
