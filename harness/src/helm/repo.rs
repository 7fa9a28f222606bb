//! A local chart repository: several versions of one chart, packaged, indexed with
//! `helm repo index`, and served over loopback HTTP, so that `helm repo add` and
//! `--version M.N.R` go through helm's real repository code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::chart::{ChartMeta, ChartSource, Version};
use super::{ChartRef, Helm};
use crate::error::{Error, Result};

/// The name a served repository is added to helm under.
pub const DEFAULT_REPO_NAME: &str = "lily-e2e";

/// A running local chart repository. Dropping it stops the server.
pub struct ChartRepo {
    url: String,
    name: String,
    chart_name: String,
    dir: PathBuf,
    archives: BTreeMap<Version, PathBuf>,
    versions: Vec<Version>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ChartRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChartRepo")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("chart_name", &self.chart_name)
            .field("dir", &self.dir)
            .field("versions", &self.versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .finish()
    }
}

impl ChartRepo {
    /// Packages every source into `dir` (created; must be empty), indexes it, and serves it
    /// on `127.0.0.1:<free port>`. All sources must be versions of one chart, no version twice.
    pub async fn serve(helm: &Helm, sources: &[ChartSource], dir: &Path) -> Result<ChartRepo> {
        Self::serve_named(helm, sources, dir, DEFAULT_REPO_NAME).await
    }

    /// [`ChartRepo::serve`] with a repository name other than [`DEFAULT_REPO_NAME`].
    pub async fn serve_named(helm: &Helm, sources: &[ChartSource], dir: &Path, name: &str) -> Result<ChartRepo> {
        if sources.is_empty() {
            return Err(Error::Invalid("no chart sources to serve; give at least one chart directory or .tgz".into()));
        }
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let not_empty = std::fs::read_dir(dir).map_err(Error::io(format!("list {}", dir.display())))?.next().is_some();
        if not_empty {
            return Err(Error::Invalid(format!("chart repository directory {} is not empty", dir.display())));
        }

        let staging = dir.join(".staging");
        let packaged = package_all(helm, sources, dir, &staging).await;
        let _ = std::fs::remove_dir_all(&staging);
        let (chart_name, archives) = packaged?;

        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| Error::Tool { what: "cannot start the local chart repository server on 127.0.0.1".into(), source: Some(e) })?;
        let addr = server.server_addr().to_ip().expect("a TCP listener has an IP address");
        let url = format!("http://{addr}");
        let server = Arc::new(server);
        helm.repo_index(dir, &url).await?;
        let thread = {
            let server = server.clone();
            let dir = dir.to_path_buf();
            std::thread::Builder::new()
                .name("chart-repo".into())
                .spawn(move || serve_files(&server, &dir))
                .map_err(Error::io("start the chart repository thread"))?
        };
        let versions = archives.keys().cloned().collect();
        tracing::debug!(%url, chart = %chart_name, "serving chart repository");
        Ok(ChartRepo { url, name: name.to_string(), chart_name, dir: dir.to_path_buf(), archives, versions, server, thread: Some(thread) })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }
    /// The name to `helm repo add` it under.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The chart's name (`lily`).
    pub fn chart_name(&self) -> &str {
        &self.chart_name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Every version served, lowest first (semver order).
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }
    /// The highest version served: the candidate under test (maybe a prerelease).
    pub fn latest(&self) -> &Version {
        self.versions.last().expect("a repository serves at least one version")
    }
    /// What helm installs without `--version`: the highest version that is not a prerelease;
    /// `None` when every version is one (helm then installs nothing without `--devel`).
    pub fn latest_stable(&self) -> Option<&Version> {
        self.versions.iter().rev().find(|v| v.pre.is_empty())
    }
    /// The version just below the highest, if there is one.
    pub fn previous(&self) -> Option<&Version> {
        self.versions.len().checked_sub(2).map(|i| &self.versions[i])
    }
    /// The scenarios' built-in chart variables: `chart.latest` (what helm installs without
    /// `--version`; absent when every version is a prerelease), `chart.candidate` (the
    /// highest version), `chart.previous` (the one below it), `chart.oldest` and
    /// `chart.versions` (all, lowest first, as helm and the harness list them).
    pub fn chart_vars(&self) -> std::collections::BTreeMap<String, String> {
        let mut vars = std::collections::BTreeMap::new();
        if let Some(v) = self.latest_stable() {
            vars.insert("chart.latest".to_string(), v.to_string());
        }
        vars.insert("chart.candidate".to_string(), self.latest().to_string());
        if let Some(v) = self.previous() {
            vars.insert("chart.previous".to_string(), v.to_string());
        }
        if let Some(v) = self.versions.first() {
            vars.insert("chart.oldest".to_string(), v.to_string());
        }
        vars.insert("chart.versions".to_string(), self.versions.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
        vars
    }
    /// `v` if the repository has it, else an error that lists the versions it has.
    pub fn version(&self, v: &str) -> Result<&Version> {
        let want = super::chart::parse_version(v)?;
        self.versions.iter().find(|x| **x == want).ok_or_else(|| {
            super::HelmError::UnknownVersion {
                chart: self.chart_name.clone(),
                version: v.to_string(),
                known: self.versions.iter().map(ToString::to_string).collect(),
            }
            .into()
        })
    }
    /// The packaged chart of a version.
    pub fn archive(&self, v: &Version) -> Option<&Path> {
        self.archives.get(v).map(PathBuf::as_path)
    }
    /// `NAME/CHART`, for after [`ChartRepo::add_to`].
    pub fn chart_ref(&self) -> ChartRef {
        ChartRef::Repo { repo: self.name.clone(), chart: self.chart_name.clone() }
    }
    /// `helm repo add NAME URL` on `helm`.
    pub async fn add_to(&self, helm: &Helm) -> Result<()> {
        helm.repo_add(&self.name, &self.url).await
    }
}

impl Drop for ChartRepo {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Packages (or copies) every source into `dir` as `<chart>-<version>.tgz`, via `staging`;
/// returns the chart's name and the archives by version.
async fn package_all(helm: &Helm, sources: &[ChartSource], dir: &Path, staging: &Path) -> Result<(String, BTreeMap<Version, PathBuf>)> {
    let mut chart_name: Option<(String, String)> = None; // (name, from which source)
    let mut archives: BTreeMap<Version, PathBuf> = BTreeMap::new();
    let mut origin: BTreeMap<Version, String> = BTreeMap::new();
    for (i, src) in sources.iter().enumerate() {
        src.check()?;
        let stage = staging.join(i.to_string());
        std::fs::create_dir_all(&stage).map_err(Error::io(format!("create {}", stage.display())))?;
        let packaged = match src {
            ChartSource::Dir { path, version } => {
                let v = version.as_ref().map(ToString::to_string);
                helm.package(path, v.as_deref(), &stage).await?
            }
            ChartSource::Archive { path } => {
                let to = stage.join("chart.tgz");
                std::fs::copy(path, &to).map_err(Error::io(format!("copy {}", path.display())))?;
                to
            }
            // A published release (the upgrade base of chart CI): pulled with the pinned helm
            // and served beside the local candidate.
            ChartSource::Remote { url, chart, version } => {
                let v = version.as_ref().map(ToString::to_string);
                helm.pull(&ChartRef::Url { url: url.clone(), chart: chart.clone() }, v.as_deref(), &stage).await?
            }
        };
        let meta = ChartMeta::read(&packaged)?;
        let version = meta.semver()?;
        match &chart_name {
            None => chart_name = Some((meta.name.clone(), src.to_string())),
            Some((n, from)) if *n != meta.name => {
                return Err(Error::Invalid(format!(
                    "mixed chart names: {from} is chart {n} but {src} is chart {}; a repository serves versions of one chart",
                    meta.name
                )))
            }
            Some(_) => {}
        }
        if let Some(prev) = origin.get(&version) {
            return Err(Error::Invalid(format!("chart version {version} is given twice ({prev} and {src})")));
        }
        let dest = dir.join(format!("{}-{version}.tgz", meta.name));
        std::fs::rename(&packaged, &dest).map_err(Error::io(format!("move {} into {}", packaged.display(), dir.display())))?;
        origin.insert(version.clone(), src.to_string());
        archives.insert(version, dest);
    }
    let (chart_name, _) = chart_name.expect("at least one source");
    Ok((chart_name, archives))
}

/// Answers GET/HEAD for the plain files directly in `dir`; 404 for anything else.
fn serve_files(server: &tiny_http::Server, dir: &Path) {
    for req in server.incoming_requests() {
        let path = req.url().split(['?', '#']).next().unwrap_or("").trim_start_matches('/').to_string();
        let method_ok = matches!(req.method(), tiny_http::Method::Get | tiny_http::Method::Head);
        let safe = !path.is_empty() && !path.contains('/') && !path.contains('\\') && !path.starts_with('.');
        let file = if method_ok && safe {
            std::fs::File::open(dir.join(&path)).ok().filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
        } else {
            None
        };
        let res = match file {
            Some(f) => {
                let ctype = if path.ends_with(".yaml") { "application/x-yaml" } else { "application/gzip" };
                let header = tiny_http::Header::from_bytes("Content-Type", ctype).expect("static header");
                req.respond(tiny_http::Response::from_file(f).with_header(header))
            }
            None => req.respond(tiny_http::Response::empty(404)),
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "chart repository: cannot answer a request");
        }
    }
}
