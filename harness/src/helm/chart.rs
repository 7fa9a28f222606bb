//! Chart sources: where a chart comes from, as the command line names it.
//!
//! Syntax (see [`ChartSource::parse`]):
//!
//! | form | meaning |
//! |------|---------|
//! | `PATH` | a chart directory (its own `Chart.yaml` version) or a packaged `.tgz` |
//! | `PATH@X.Y.Z` | the chart directory `PATH`, packaged as version `X.Y.Z` (`helm package --version`) |
//! | `https://HOST/PATH#CHART` | chart `CHART` from the chart repository at that URL (`http://` too) |
//! | `https://HOST/PATH#CHART@X.Y.Z` | the same, pinned to version `X.Y.Z` |
//!
//! One fixture directory yields several versions with `@`: the default source is
//! `scenarios/charts/lily@0.1.0`, `@0.2.0`, `@0.3.0` (templates branch on `.Chart.Version`).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{Error, Result};

pub use semver::Version;

/// The versions the fixture chart is served at.
pub const FIXTURE_VERSIONS: [&str; 4] = ["0.0.1", "0.1.0", "0.2.0", "0.3.0"];

/// What to write after a bad chart argument.
const SYNTAX_HINT: &str = "pass a chart directory, a .tgz, DIR@X.Y.Z, or https://REPO_URL#CHART[@X.Y.Z]";

/// A fixture chart directory packaged at each of `versions`.
pub fn fixture_sources(dir: &Path, versions: &[&str]) -> Vec<ChartSource> {
    versions
        .iter()
        .map(|v| ChartSource::Dir { path: dir.to_path_buf(), version: Some(parse_version(v).expect("fixture versions are semver")) })
        .collect()
}

/// Parses a chart version (helm accepts a leading `v`).
pub fn parse_version(s: &str) -> Result<Version> {
    Version::parse(s.trim().trim_start_matches('v'))
        .map_err(|_| Error::Invalid(format!("{s:?} is not a chart version; versions look like 1.2.3 or 1.2.3-rc.1")))
}

/// Where a chart comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChartSource {
    /// A chart directory; packaged as `version` when given.
    Dir { path: PathBuf, version: Option<Version> },
    /// A packaged chart.
    Archive { path: PathBuf },
    /// A chart in a remote chart repository.
    Remote { url: String, chart: String, version: Option<Version> },
}

impl ChartSource {
    /// Parses the command-line form (see the module docs). Does not touch the file system;
    /// [`ChartSource::check`] does.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::Invalid(format!("empty chart source; {SYNTAX_HINT}")));
        }
        if s.starts_with("https://") || s.starts_with("http://") {
            let (url, frag) = s
                .split_once('#')
                .ok_or_else(|| Error::Invalid(format!("chart repository {s} names no chart; write {s}#CHART (e.g. {s}#lily)")))?;
            let (chart, version) = match frag.rsplit_once('@') {
                Some((c, v)) => (c, Some(parse_version(v)?)),
                None => (frag, None),
            };
            if chart.is_empty() || chart.contains('/') {
                return Err(Error::Invalid(format!("{chart:?} in {s} is not a chart name; {SYNTAX_HINT}")));
            }
            return Ok(ChartSource::Remote { url: url.trim_end_matches('/').to_string(), chart: chart.to_string(), version });
        }
        if s.contains("://") {
            return Err(Error::Invalid(format!("unsupported chart source {s}; {SYNTAX_HINT}")));
        }
        // PATH@X.Y.Z: only when the part after the last '@' is a version, so paths with '@' work.
        if let Some((path, v)) = s.rsplit_once('@') {
            if let Ok(version) = parse_version(v) {
                if is_tgz(Path::new(path)) {
                    return Err(Error::Invalid(format!(
                        "{path} is a packaged chart; @{v} only applies to a chart directory (a .tgz keeps the version it was packaged with)"
                    )));
                }
                return Ok(ChartSource::Dir { path: PathBuf::from(path), version: Some(version) });
            }
            // DIR@SOMETHING where DIR exists and SOMETHING is no version: the version is wrong,
            // not the path.
            if Path::new(path).is_dir() && !Path::new(s).exists() {
                return Err(Error::Invalid(format!(
                    "{v:?} in {s} is not a chart version; write {path}@X.Y.Z (e.g. {path}@0.1.0), or the directory alone"
                )));
            }
        }
        let path = PathBuf::from(s);
        if is_tgz(&path) {
            Ok(ChartSource::Archive { path })
        } else {
            Ok(ChartSource::Dir { path, version: None })
        }
    }

    /// Checks that a local source exists and looks like a chart.
    pub fn check(&self) -> Result<()> {
        match self {
            ChartSource::Dir { path, .. } => {
                if !path.exists() {
                    return Err(missing(path));
                }
                if !path.is_dir() {
                    return Err(Error::Invalid(format!("chart path {} is not a directory or a .tgz; {SYNTAX_HINT}", path.display())));
                }
                if !path.join("Chart.yaml").is_file() {
                    return Err(Error::Invalid(format!("{} is not a chart directory: it has no Chart.yaml", path.display())));
                }
                Ok(())
            }
            ChartSource::Archive { path } => {
                if !path.is_file() {
                    return Err(missing(path));
                }
                Ok(())
            }
            ChartSource::Remote { .. } => Ok(()),
        }
    }

    /// The version this source pins, if any (a directory's or archive's own version is only
    /// known after reading it: [`ChartMeta::read`]).
    pub fn pinned_version(&self) -> Option<&Version> {
        match self {
            ChartSource::Dir { version, .. } | ChartSource::Remote { version, .. } => version.as_ref(),
            ChartSource::Archive { .. } => None,
        }
    }
}

fn missing(path: &Path) -> Error {
    Error::Invalid(format!("chart path {} does not exist; {SYNTAX_HINT}", path.display()))
}

fn is_tgz(p: &Path) -> bool {
    let s = p.to_string_lossy();
    s.ends_with(".tgz") || s.ends_with(".tar.gz")
}

impl FromStr for ChartSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for ChartSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChartSource::Dir { path, version: Some(v) } => write!(f, "{}@{v}", path.display()),
            ChartSource::Dir { path, version: None } | ChartSource::Archive { path } => write!(f, "{}", path.display()),
            ChartSource::Remote { url, chart, version: Some(v) } => write!(f, "{url}#{chart}@{v}"),
            ChartSource::Remote { url, chart, version: None } => write!(f, "{url}#{chart}"),
        }
    }
}

/// The parts of `Chart.yaml` the harness reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChartMeta {
    pub name: String,
    pub version: String,
    #[serde(default, rename = "appVersion")]
    pub app_version: Option<String>,
}

impl ChartMeta {
    /// Reads `Chart.yaml` from a chart directory or from a packaged chart's top directory.
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let f = path.join("Chart.yaml");
            let text = std::fs::read_to_string(&f).map_err(Error::io(format!("read {}", f.display())))?;
            return crate::yaml::from_str(&text).map_err(|e| e.context(f.display().to_string()).into());
        }
        let file = std::fs::File::open(path).map_err(Error::io(format!("open {}", path.display())))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let entries = archive.entries().map_err(Error::io(format!("read {} as a gzipped tar", path.display())))?;
        for entry in entries {
            let mut entry = entry.map_err(Error::io(format!("read {} as a gzipped tar", path.display())))?;
            let name = entry.path().map_err(Error::io(format!("read {}", path.display())))?.into_owned();
            let parts: Vec<_> = name.components().collect();
            if parts.len() == 2 && parts[1].as_os_str() == "Chart.yaml" {
                let mut text = String::new();
                entry.read_to_string(&mut text).map_err(Error::io(format!("read Chart.yaml in {}", path.display())))?;
                return crate::yaml::from_str(&text).map_err(|e| e.context(format!("Chart.yaml in {}", path.display())).into());
            }
        }
        Err(Error::Invalid(format!("{} is not a packaged chart: it has no CHART/Chart.yaml", path.display())))
    }

    pub fn semver(&self) -> Result<Version> {
        parse_version(&self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn v(s: &str) -> Option<Version> {
        Some(Version::parse(s).unwrap())
    }

    #[rstest]
    #[case("charts/lily", ChartSource::Dir { path: "charts/lily".into(), version: None })]
    #[case("charts/lily@0.2.0", ChartSource::Dir { path: "charts/lily".into(), version: v("0.2.0") })]
    #[case("charts/lily@v0.3.0-rc.1", ChartSource::Dir { path: "charts/lily".into(), version: v("0.3.0-rc.1") })]
    #[case("/home/me@work/lily", ChartSource::Dir { path: "/home/me@work/lily".into(), version: None })]
    #[case("dist/lily-0.2.0.tgz", ChartSource::Archive { path: "dist/lily-0.2.0.tgz".into() })]
    #[case("https://charts.example/lily/#lily", ChartSource::Remote { url: "https://charts.example/lily".into(), chart: "lily".into(), version: None })]
    #[case("https://filecoin-project.github.io/helm-charts#lily@0.17.0", ChartSource::Remote { url: "https://filecoin-project.github.io/helm-charts".into(), chart: "lily".into(), version: v("0.17.0") })]
    fn sources_parse(#[case] input: &str, #[case] want: ChartSource) {
        let got = ChartSource::parse(input).unwrap();
        assert_eq!(got, want);
        assert_eq!(ChartSource::parse(&got.to_string()).unwrap(), want, "display round-trips");
    }

    #[rstest]
    #[case("", "empty chart source")]
    #[case("https://charts.example", "names no chart; write https://charts.example#CHART")]
    #[case("oci://ghcr.io/x/lily", "unsupported chart source")]
    #[case("lily-0.2.0.tgz@0.3.0", "only applies to a chart directory")]
    #[case("https://charts.example#lily@latest", "is not a chart version")]
    fn bad_sources_say_why(#[case] input: &str, #[case] msg: &str) {
        let e = ChartSource::parse(input).unwrap_err().to_string();
        assert!(e.contains(msg), "{e}");
    }

    #[test]
    fn missing_path_says_what_to_pass() {
        let e = ChartSource::parse("/nonexistent/lily@0.2.0").unwrap().check().unwrap_err().to_string();
        assert_eq!(e, format!("chart path /nonexistent/lily does not exist; {SYNTAX_HINT}"));
    }

    #[test]
    fn fixture_sources_are_one_directory_at_each_version() {
        let s = fixture_sources(Path::new("/x/lily"), &FIXTURE_VERSIONS);
        assert_eq!(s.len(), FIXTURE_VERSIONS.len());
        assert!(
            matches!(&s[0], ChartSource::Dir { path, version: Some(v) } if path.ends_with("lily") && v.to_string() == FIXTURE_VERSIONS[0])
        );
    }
}
