//! Before any environment starts: every install of every planned case is rendered with
//! `helm template` (its chart at its version, the scenario's and the step's values, inline
//! values last). A chart or values file that does not render is found in a second, not after
//! a control plane booted; the case fails there, with helm's own words, as the chart's
//! failure it is (the install would fail the same way).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{PlannedCase, SuitePlan};
use crate::error::{chain, Error, Result};
use crate::helm::{ChartRef, ChartRepo, ChartSource, Helm, TemplateOpts, Values};
use crate::scenario::env::EnvOptions;

/// A case whose install does not render: (case name, step label, what helm said).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderFailure {
    pub case: String,
    pub step: String,
    pub message: String,
}

/// Renders every install of `plan`; returns the cases that do not render. An error is the
/// harness's (helm missing, a chart source that cannot be packaged).
pub async fn render_all(opts: &EnvOptions, plan: &SuitePlan) -> Result<Vec<RenderFailure>> {
    let dir = tempfile::Builder::new()
        .prefix("lily-e2e-preflight-")
        .tempdir()
        .map_err(Error::io("create a directory for the pre-flight render"))?;
    let helm = Helm::new(dir.path().join("helm"))?;
    let repo = ChartRepo::serve(&helm, &opts.chart_sources(), &dir.path().join("repo")).await?;
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.extend(repo.chart_vars());
    let mut rendered: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut packaged: BTreeMap<String, PathBuf> = BTreeMap::new();
    for case in plan.cases.iter().filter(|c| c.skip.is_none()) {
        if let Some(f) = render_case(&helm, &repo, &vars, case, dir.path(), &mut rendered, &mut packaged).await? {
            failures.push(f);
        }
    }
    Ok(failures)
}

async fn render_case(
    helm: &Helm,
    repo: &ChartRepo,
    vars: &BTreeMap<String, String>,
    case: &PlannedCase,
    dir: &std::path::Path,
    rendered: &mut BTreeMap<String, Option<String>>,
    packaged: &mut BTreeMap<String, PathBuf>,
) -> Result<Option<RenderFailure>> {
    let mut vars = vars.clone();
    vars.insert("release".into(), case.scenario.release.clone());
    vars.insert("namespace".into(), "preflight".into());
    for step in &case.case().steps {
        let Some(install) = step.op.install() else { continue };
        let chart = match install.source {
            None => {
                let Ok(version) = install.version.map(|t| t.fill(&vars)).transpose() else { continue };
                let v = match &version {
                    Some(v) => match repo.version(v) {
                        Ok(v) => v.clone(),
                        // An unknown version is the install step's to report.
                        Err(_) => continue,
                    },
                    // Nothing stable: helm installs nothing without --version; the case says so.
                    None => match repo.latest_stable() {
                        Some(v) => v.clone(),
                        None => continue,
                    },
                };
                repo.archive(&v).expect("a served version has an archive").to_path_buf()
            }
            Some(ChartSource::Archive { path }) => path.clone(),
            Some(ChartSource::Dir { path, version }) => {
                let key = format!("{}@{version:?}", path.display());
                match packaged.get(&key) {
                    Some(p) => p.clone(),
                    None => {
                        let dest = dir.join(format!("pkg-{}", packaged.len()));
                        let p = helm.package(path, version.as_ref().map(|v| v.to_string()).as_deref(), &dest).await?;
                        packaged.insert(key, p.clone());
                        p
                    }
                }
            }
            Some(ChartSource::Remote { .. }) => continue,
        };
        let mut values: Vec<PathBuf> = case.scenario.values.clone();
        values.extend(install.values.iter().cloned());
        let set_text = install.set.map(crate::yaml::to_string).transpose()?;
        let key = format!("{}|{values:?}|{set_text:?}", chart.display());
        if !rendered.contains_key(&key) {
            let mut v = Values::files(values.clone());
            if let Some(text) = &set_text {
                let p = dir.join(format!("inline-{}.yaml", rendered.len()));
                std::fs::write(&p, text).map_err(Error::io(format!("write {}", p.display())))?;
                v = v.file(p);
            }
            let opts = TemplateOpts { namespace: Some("preflight".into()), values: v, ..Default::default() };
            let r = helm.template(&case.scenario.release, &ChartRef::Path(chart.clone()), &opts).await;
            let failed = match r {
                Ok(_) => None,
                Err(Error::Helm(h)) if h.is_chart_failure() => Some(chain(&Error::Helm(h))),
                Err(e) => return Err(e),
            };
            rendered.insert(key.clone(), failed);
        }
        if let Some(Some(message)) = rendered.get(&key) {
            return Ok(Some(RenderFailure {
                case: case.name().to_string(),
                step: step.label(),
                message: format!(
                    "the chart does not render with this step's values (helm template, before the cluster started): {message}"
                ),
            }));
        }
    }
    Ok(None)
}
