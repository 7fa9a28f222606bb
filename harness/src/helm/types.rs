//! The helm driver's plain types: what it is asked (charts, values, options) and what it
//! reads back (release status and history, search hits, lint findings), with their parsing.
//! [`super::driver`] turns them into command lines.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A chart as helm's command line takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChartRef {
    /// A chart directory or a packaged `.tgz`.
    Path(PathBuf),
    /// `repo/chart` from a repository added with [`Helm::repo_add`](super::Helm::repo_add).
    Repo { repo: String, chart: String },
    /// A chart in a repository given by URL (`helm ... CHART --repo URL`), without `repo add`.
    Url { url: String, chart: String },
}

impl fmt::Display for ChartRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChartRef::Path(p) => write!(f, "{}", p.display()),
            ChartRef::Repo { repo, chart } => write!(f, "{repo}/{chart}"),
            ChartRef::Url { url, chart } => write!(f, "{url}#{chart}"),
        }
    }
}

/// Values for a render or a release: `-f` files (in order) then `--set` / `--set-string`.
/// Its `Debug` shows file names and keys only.
#[derive(Clone, Default)]
pub struct Values {
    pub files: Vec<PathBuf>,
    pub set: Vec<(String, String)>,
    pub set_string: Vec<(String, String)>,
}

impl Values {
    pub fn files<I: IntoIterator<Item = P>, P: Into<PathBuf>>(files: I) -> Self {
        Values { files: files.into_iter().map(Into::into).collect(), ..Default::default() }
    }
    pub fn file(mut self, f: impl Into<PathBuf>) -> Self {
        self.files.push(f.into());
        self
    }
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set.push((key.into(), value.into()));
        self
    }
    pub fn set_string(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_string.push((key.into(), value.into()));
        self
    }

    /// Parses a command-line `KEY=VALUE` (as `--set` takes it) into a pair.
    pub fn parse_set(s: &str) -> Result<(String, String)> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            // Name the key only: the value may be a secret.
            _ => Err(Error::Invalid(format!(
                "--set expects KEY=VALUE, got {:?}",
                s.split_once('=').map(|(k, _)| format!("{k}=…")).unwrap_or_else(|| "a value without =".into())
            ))),
        }
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = |v: &[(String, String)]| v.iter().map(|(k, _)| format!("{k}=[redacted]")).collect::<Vec<_>>();
        f.debug_struct("Values")
            .field("files", &self.files)
            .field("set", &keys(&self.set))
            .field("set_string", &keys(&self.set_string))
            .finish()
    }
}

/// `helm template` options.
#[derive(Debug, Clone, Default)]
pub struct TemplateOpts {
    pub namespace: Option<String>,
    /// `--version`: only meaningful for repository charts.
    pub version: Option<String>,
    pub values: Values,
    /// `--kube-version` (`.Capabilities.KubeVersion`); helm's built-in default when `None`.
    pub kube_version: Option<String>,
    /// `--api-versions` (`.Capabilities.APIVersions` additions).
    pub api_versions: Vec<String>,
}

/// `helm upgrade --install` options.
#[derive(Debug, Clone, Default)]
pub struct InstallOpts {
    pub namespace: String,
    pub version: Option<String>,
    pub values: Values,
    /// `--wait --timeout T`.
    pub wait: Option<Duration>,
    /// `--create-namespace`.
    pub create_namespace: bool,
    /// `--reset-values` (ignore the previous release's values on upgrade).
    pub reset_values: bool,
}

/// `helm rollback` / `helm uninstall` options.
#[derive(Debug, Clone, Default)]
pub struct ReleaseOpts {
    pub namespace: String,
    /// `--wait --timeout T`.
    pub wait: Option<Duration>,
}

/// A release's state as helm reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReleaseState {
    Deployed,
    Failed,
    Superseded,
    Uninstalled,
    Uninstalling,
    PendingInstall,
    PendingUpgrade,
    PendingRollback,
    Unknown,
    /// A state this driver does not know (newer helm).
    Other(String),
}

impl ReleaseState {
    pub fn parse(s: &str) -> Self {
        match s {
            "deployed" => Self::Deployed,
            "failed" => Self::Failed,
            "superseded" => Self::Superseded,
            "uninstalled" => Self::Uninstalled,
            "uninstalling" => Self::Uninstalling,
            "pending-install" => Self::PendingInstall,
            "pending-upgrade" => Self::PendingUpgrade,
            "pending-rollback" => Self::PendingRollback,
            "unknown" | "" => Self::Unknown,
            other => Self::Other(other.to_string()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Self::Deployed => "deployed",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
            Self::Uninstalled => "uninstalled",
            Self::Uninstalling => "uninstalling",
            Self::PendingInstall => "pending-install",
            Self::PendingUpgrade => "pending-upgrade",
            Self::PendingRollback => "pending-rollback",
            Self::Unknown => "unknown",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for ReleaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReleaseState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// `helm status -o json`, reduced to what tests look at (the release's values are not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseStatus {
    pub name: String,
    pub namespace: String,
    pub revision: u32,
    pub status: ReleaseState,
    /// `<name>-<version>`, as `helm history` prints it, e.g. `lily-0.2.0`.
    pub chart: String,
    pub chart_name: String,
    pub chart_version: String,
    pub app_version: String,
    pub description: String,
    pub notes: String,
    pub first_deployed: String,
    pub last_deployed: String,
}

/// One line of `helm history -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HistoryEntry {
    pub revision: u32,
    #[serde(default)]
    pub updated: String,
    pub status: ReleaseState,
    /// e.g. `lily-0.2.0`.
    pub chart: String,
    #[serde(default)]
    pub app_version: String,
    #[serde(default)]
    pub description: String,
}

/// One line of `helm search repo -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SearchHit {
    /// `repo/chart`.
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub app_version: String,
    #[serde(default)]
    pub description: String,
}

/// `helm lint` findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LintReport {
    /// `(severity, message)`, e.g. `("INFO", "Chart.yaml: icon is recommended")`.
    pub messages: Vec<(String, String)>,
}

impl LintReport {
    pub fn errors(&self) -> impl Iterator<Item = &str> {
        self.messages.iter().filter(|(s, _)| s == "ERROR").map(|(_, m)| m.as_str())
    }
    pub fn warnings(&self) -> impl Iterator<Item = &str> {
        self.messages.iter().filter(|(s, _)| s == "WARNING").map(|(_, m)| m.as_str())
    }

    /// Parses lint's `[SEVERITY] message` lines.
    pub fn parse(stdout: &str) -> Self {
        let re = regex::Regex::new(r"^\[(INFO|WARNING|ERROR)\]\s*(.*)$").expect("static regex");
        let messages = stdout.lines().filter_map(|l| re.captures(l.trim()).map(|c| (c[1].to_string(), c[2].trim().to_string()))).collect();
        LintReport { messages }
    }
}

#[derive(Deserialize)]
struct RawRelease {
    name: String,
    #[serde(default)]
    namespace: String,
    version: u32,
    info: RawInfo,
    /// Absent from newer helm's `status` output.
    #[serde(default)]
    chart: Option<RawChart>,
}

#[derive(Deserialize)]
struct RawInfo {
    #[serde(default)]
    first_deployed: String,
    #[serde(default)]
    last_deployed: String,
    #[serde(default)]
    description: String,
    status: ReleaseState,
    #[serde(default)]
    notes: String,
}

#[derive(Deserialize)]
struct RawChart {
    metadata: RawMeta,
}

/// A chart's metadata in `status` (`name`), or `helm get metadata` (`chart`; there `name`
/// is the release's).
#[derive(Deserialize)]
pub(super) struct RawMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    chart: Option<String>,
    pub(super) version: String,
    #[serde(default, rename = "appVersion")]
    pub(super) app_version: String,
}

impl RawMeta {
    pub(super) fn name_or_chart(&self) -> &str {
        self.chart.as_deref().unwrap_or(&self.name)
    }
}

/// Parses `helm status -o json` (a whole release; its `config` — the user's values — is
/// skipped). Newer helm omits the chart: then the chart fields are empty.
pub fn parse_status(json: &str) -> serde_json::Result<ReleaseStatus> {
    let r: RawRelease = serde_json::from_str(json)?;
    let (chart_name, chart_version, app_version) = match r.chart {
        Some(c) => (c.metadata.name_or_chart().to_string(), c.metadata.version, c.metadata.app_version),
        None => Default::default(),
    };
    Ok(ReleaseStatus {
        chart: if chart_name.is_empty() { String::new() } else { format!("{chart_name}-{chart_version}") },
        name: r.name,
        namespace: r.namespace,
        revision: r.version,
        status: r.info.status,
        chart_name,
        chart_version,
        app_version,
        description: r.info.description,
        notes: r.info.notes,
        first_deployed: r.info.first_deployed,
        last_deployed: r.info.last_deployed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_pairs_parse_and_errors_hide_values() {
        assert_eq!(Values::parse_set("a.b=c=d").unwrap(), ("a.b".to_string(), "c=d".to_string()));
        assert_eq!(Values::parse_set("a=").unwrap(), ("a".to_string(), String::new()));
        let e = Values::parse_set("hunter2").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(Values::parse_set("=x").is_err());
    }

    #[test]
    fn status_and_history_parse_helm_json() {
        let status = r#"{"name":"rel","info":{"first_deployed":"2025-01-01T00:00:00Z","last_deployed":"2025-01-01T00:01:00Z","deleted":"","description":"Upgrade complete","status":"deployed","notes":"hi"},
            "chart":{"metadata":{"name":"lily","version":"0.2.0","appVersion":"0.17.0","apiVersion":"v2"},"templates":[]},
            "config":{"password":"hunter2"},"manifest":"---","version":2,"namespace":"ns"}"#;
        let s = parse_status(status).unwrap();
        assert_eq!(
            (s.revision, s.status.clone(), s.chart.as_str(), s.app_version.as_str()),
            (2, ReleaseState::Deployed, "lily-0.2.0", "0.17.0")
        );
        assert_eq!(s.description, "Upgrade complete");
        assert!(!format!("{s:?}").contains("hunter2"));

        let newer =
            r#"{"name":"rel","info":{"status":"failed","description":"Upgrade \"rel\" failed"},"config":{},"version":3,"namespace":"ns"}"#;
        let s = parse_status(newer).unwrap();
        assert_eq!((s.revision, s.status.clone(), s.chart.as_str()), (3, ReleaseState::Failed, ""));
        let meta: RawMeta = serde_json::from_str(
            r#"{"name":"rel","chart":"lily","version":"0.1.0","appVersion":"0.17.0","namespace":"lily","revision":1,"status":"deployed"}"#,
        )
        .unwrap();
        assert_eq!((meta.name_or_chart(), meta.version.as_str(), meta.app_version.as_str()), ("lily", "0.1.0", "0.17.0"));

        let history = r#"[{"revision":2,"updated":"t2","status":"deployed","chart":"lily-0.2.0","app_version":"0.17.0","description":"Upgrade complete"},
            {"revision":1,"updated":"t1","status":"superseded","chart":"lily-0.1.0","app_version":"0.17.0","description":"Install complete"},
            {"revision":3,"updated":"t3","status":"pending-rollback","chart":"lily-0.1.0","app_version":"0.17.0","description":"x"}]"#;
        let h: Vec<HistoryEntry> = serde_json::from_str(history).unwrap();
        assert_eq!(h[1].status, ReleaseState::Superseded);
        assert_eq!(h[2].status, ReleaseState::PendingRollback);
        assert_eq!(ReleaseState::parse("brand-new"), ReleaseState::Other("brand-new".into()));
    }

    #[test]
    fn lint_lines_are_parsed() {
        let out = "==> Linting lily\n[INFO] Chart.yaml: icon is recommended\n[ERROR] templates/: parse error\n\nError: 1 chart(s) linted, 1 chart(s) failed\n";
        let r = LintReport::parse(out);
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.errors().collect::<Vec<_>>(), vec!["templates/: parse error"]);
    }
}
