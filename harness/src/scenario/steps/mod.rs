//! Step kinds, one family per file; each step is compiled from the scenario file before
//! anything starts, then run against a case's [`CaseCx`].
//!
//! To add a step kind: a variant in [`crate::scenario::model::Step`], a struct implementing
//! [`Operation`] in the family file it belongs to, and one arm in [`compile`].
//!
//! - [`helm`]: repo add, upgrade/install, rollback, uninstall, release and rollout checks;
//! - [`objects`]: pods, claims, attachments, deletes, saved node names;
//! - [`events`]: expected (and unexpected) events, matched against the catalogue;
//! - [`faults`]: the simulated cloud's faults (zones, heartbeats, unmounts) and node actions;
//! - [`runbook`]: the guide's runbooks, run with the pinned kubectl;
//! - [`postgres`]: the storage Secret and the database contract check;
//! - [`snapshot`]: recording the normalised outcome;
//! - [`values`]: the values contract (scheduling and storage knobs, rendered and dry-run).

pub mod events;
pub mod faults;
pub mod helm;
pub mod objects;
pub mod postgres;
pub mod runbook;
pub mod scheduling;
pub mod snapshot;
pub mod values;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::compile::{Scope, StepSite};
use super::env::Env;
use super::model::Step;
use super::outcome::Outcome;
use crate::error::Error;
use crate::layout::Layout;
use crate::wait::WaitError;

/// The default deadline of a step that waits.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// Why a step did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The chart or the cluster did not do what the scenario expects.
    #[error("{0}")]
    Failed(String),
    /// What the chart gets wrong, with the object and the fix: fails the case.
    #[error(transparent)]
    Chart(ChartFinding),
    /// The harness or its infrastructure broke (a tool, a port, a process, the API).
    #[error(transparent)]
    Errored(Error),
}

impl StepError {
    pub fn failed(msg: impl Into<String>) -> StepError {
        StepError::Failed(msg.into())
    }

    /// A chart finding: `object` (kind/name, or the template) got `problem` wrong; `fix`
    /// says what the chart should do instead.
    pub fn chart(object: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> StepError {
        StepError::Chart(ChartFinding { object: object.into(), problem: problem.into(), fix: fix.into() })
    }
}

/// What the chart gets wrong: the object, what is wrong with it, and the fix. Its message
/// starts with "chart finding" so a reader of a failed case knows whose it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chart finding: {object}: {problem}; fix: {fix}")]
pub struct ChartFinding {
    pub object: String,
    pub problem: String,
    pub fix: String,
}

impl From<Error> for StepError {
    /// A wait that ran out and a helm command the chart made fail are the chart's or the
    /// cluster's doing; everything else is the harness's.
    fn from(e: Error) -> StepError {
        match e {
            Error::Wait(WaitError::Timeout { .. } | WaitError::Settled { .. }) => StepError::Failed(crate::error::chain(&e)),
            Error::Helm(ref h) if h.render_failure().is_some() => {
                let (template, said) = h.render_failure().unwrap_or_default();
                StepError::chart(
                    format!("template {template}"),
                    format!("helm cannot render the chart: {said}"),
                    "make the template render valid YAML for these values (`helm template` shows the line)",
                )
            }
            Error::Helm(ref h) if h.is_chart_failure() => StepError::Failed(crate::error::chain(&e)),
            e => StepError::Errored(e),
        }
    }
}

pub type StepResult = Result<(), StepError>;

/// What a step may need of the cluster beyond the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Need {
    /// Kubelets whose volume unmounts and heartbeats the harness controls (the local
    /// provider's simulated kubelets and kwok).
    SimulatedKubelets,
    /// A volume driver that attaches volumes to nodes (VolumeAttachments, the attach/detach
    /// controller), as cloud block storage does.
    AttachingVolumes,
}

impl Need {
    pub fn describe(self) -> &'static str {
        match self {
            Need::SimulatedKubelets => {
                "kubelets whose unmounts and heartbeats the harness controls (the local provider's simulated kubelets)"
            }
            Need::AttachingVolumes => "an attaching volume driver (VolumeAttachments, the attach/detach controller)",
        }
    }
}

/// One compiled step.
pub trait Operation: Send + Sync + std::fmt::Debug {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult>;

    /// A rough idea of how long the step takes, for scheduling the longest cases first:
    /// a second, unless the step is known to wait (an observation window, an unmount delay).
    fn estimate(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// What the step installs, so the suite can render it with helm before anything starts.
    fn install(&self) -> Option<Install<'_>> {
        None
    }

    /// The runbook a `runbook` step runs (for `reproduce` to print its commands).
    fn runbook(&self) -> Option<&super::runbook::Runbook> {
        None
    }

    /// What the step needs of the cluster beyond the Kubernetes API; a case with a step whose
    /// need the cluster provider cannot meet is skipped, saying which (see [`Need`]).
    fn needs(&self) -> Option<Need> {
        None
    }
}

/// A chart and values a step installs.
#[derive(Debug)]
pub struct Install<'a> {
    /// `None`: the served repository's chart (at `version`); otherwise a local chart.
    pub source: Option<&'a crate::helm::ChartSource>,
    pub version: Option<&'a Tpl>,
    /// The step's own values files (after the scenario's).
    pub values: &'a [PathBuf],
    /// Inline values, applied last.
    pub set: Option<&'a serde_json::Value>,
}

/// A step, ready to run.
#[derive(Debug)]
pub struct CompiledStep {
    /// From 1, as shown to users.
    pub index: usize,
    /// The step's kind as written in the file (`helm-upgrade`).
    pub kind: String,
    pub op: Box<dyn Operation>,
}

impl CompiledStep {
    pub fn label(&self) -> String {
        format!("{} ({})", self.index, self.kind)
    }
}

/// A string that may hold `${var}` placeholders, checked at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tpl(String);

impl Tpl {
    /// The raw text (before substitution).
    pub fn raw(&self) -> &str {
        &self.0
    }

    /// Fills the placeholders from the case's variables.
    pub fn fill(&self, vars: &BTreeMap<String, String>) -> Result<String, StepError> {
        let mut out = String::new();
        let mut rest = self.0.as_str();
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start..].find('}') else { break };
            let name = &rest[start + 2..start + len];
            out.push_str(&rest[..start]);
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None if name == "chart.latest" => {
                    return Err(StepError::failed(
                        "every served chart version is a prerelease, so `${chart.latest}` (what helm installs without --version) has no value: helm installs nothing without --version or --devel",
                    ))
                }
                // The chart did not create what defines it (e.g. no StatefulSet: no `pod`).
                None => {
                    return Err(StepError::failed(format!(
                        "`${{{name}}}` is not known at this step (known: {})",
                        vars.keys().cloned().collect::<Vec<_>>().join(", ")
                    )))
                }
            }
            rest = &rest[start + len + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Fills the placeholders with their values regex-escaped, then compiles the result: a
    /// regex field that names `${chart.versions}` matches those versions literally.
    pub fn fill_regex(&self, vars: &BTreeMap<String, String>) -> Result<regex::Regex, StepError> {
        let escaped: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.clone(), regex::escape(v))).collect();
        let text = self.fill(&escaped)?;
        regex::Regex::new(&text).map_err(|e| StepError::failed(format!("/{text}/ is not a valid regex once filled in: {e}")))
    }
}

impl std::fmt::Display for Tpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The names a string refers to with `${name}`.
pub fn refs(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else { break };
        out.push(&rest[start + 2..start + len]);
        rest = &rest[start + len + 1..];
    }
    out
}

/// What compiling a step can see and check.
pub struct Cx<'a> {
    pub layout: &'a Layout,
    pub scope: &'a mut Scope,
    pub site: StepSite<'a>,
}

impl Cx<'_> {
    /// A template field: every `${var}` must be defined by the scenario or an earlier step.
    pub fn tpl(&self, field: &str, s: &str) -> Result<Tpl, super::compile::LoadError> {
        for name in refs(s) {
            if !self.scope.has(name) {
                return Err(self
                    .site
                    .error(field, format!("`${{{name}}}` is not defined here (defined: {})", self.scope.names().join(", "))));
            }
        }
        Ok(Tpl(s.to_string()))
    }

    pub fn opt_tpl(&self, field: &str, s: &Option<String>) -> Result<Option<Tpl>, super::compile::LoadError> {
        s.as_deref().map(|s| self.tpl(field, s)).transpose()
    }

    /// A duration field (`90s`, `2m`, `500ms`), or the default.
    pub fn duration(&self, field: &str, s: &Option<String>, default: Duration) -> Result<Duration, super::compile::LoadError> {
        match s {
            None => Ok(default),
            Some(s) => super::model::duration(s).map_err(|e| self.site.error(field, e.to_string())),
        }
    }

    pub fn regex(&self, field: &str, s: &str) -> Result<regex::Regex, super::compile::LoadError> {
        regex::Regex::new(s).map_err(|e| self.site.error(field, format!("not a valid regex: {e}")))
    }

    /// A regex field that may name variables (filled in regex-escaped when the step runs):
    /// checked now with every placeholder standing for a literal.
    pub fn regex_tpl(&self, field: &str, s: &str) -> Result<Tpl, super::compile::LoadError> {
        let t = self.tpl(field, s)?;
        let probe: BTreeMap<String, String> = refs(s).into_iter().map(|n| (n.to_string(), "x".to_string())).collect();
        let text = t.fill(&probe).map_err(|e| self.site.error(field, e.to_string()))?;
        self.regex(field, &text)?;
        Ok(t)
    }
}

/// Compiles one step of the scenario file.
pub fn compile(step: &Step, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, super::compile::LoadError> {
    Ok(match step {
        Step::Postgres(s) => postgres::CreateStorage::compile(s, cx)?,
        Step::ContractCheck(s) => postgres::ContractCheck::compile(s, cx)?,
        Step::HelmRepoAdd(s) => helm::RepoAdd::compile(s, cx)?,
        Step::HelmUpgrade(s) => helm::Upgrade::compile(s, cx)?,
        Step::HelmRollback(s) => helm::Rollback::compile(s, cx)?,
        Step::HelmUninstall(_) => Box::new(helm::Uninstall),
        Step::ExpectRelease(s) => helm::ExpectRelease::compile(s, cx)?,
        Step::WaitRollout(s) => helm::WaitRollout::compile(s, cx)?,
        Step::ExpectPod(s) => objects::ExpectPod::compile(s, cx)?,
        Step::ExpectClaim(s) => objects::ExpectClaim::compile(s, cx)?,
        Step::ExpectAttachment(s) => objects::ExpectAttachment::compile(s, cx)?,
        Step::Delete(s) => objects::Delete::compile(s, cx)?,
        Step::SaveNode(s) => objects::SaveNode::compile(s, cx)?,
        Step::ExpectEvent(s) => events::ExpectEvent::compile(s, false, cx)?,
        Step::ExpectNoEvent(s) => events::ExpectEvent::compile(s, true, cx)?,
        Step::Runbook(s) => runbook::RunRunbook::compile(s, cx)?,
        Step::Snapshot(_) => Box::new(snapshot::Snapshot),
        Step::LoseZone(s) => faults::LoseZone::compile(s, cx)?,
        Step::StopHeartbeat(s) => faults::StopHeartbeat::compile(s, cx)?,
        Step::Cordon(s) => faults::Cordon::compile(s, true, cx)?,
        Step::Uncordon(s) => faults::Cordon::compile(s, false, cx)?,
        Step::Drain(s) => faults::Drain::compile(s, cx)?,
        Step::UnmountDelay(s) => faults::UnmountDelay::compile(s, cx)?,
        Step::OutOfService(s) => faults::OutOfService::compile(s, cx)?,
        Step::ValuesContract(s) => values::ValuesContract::compile(s, cx)?,
    })
}

/// The state of one running case, shared by its steps.
pub struct CaseCx<'e> {
    pub env: &'e Env,
    pub release: String,
    pub namespace: String,
    /// The case's own directory (helm home, packaged charts, inline values).
    pub dir: PathBuf,
    /// The scenario's values files, given to every install/upgrade before the step's own.
    pub values: Vec<PathBuf>,
    /// `${var}` values: built-in names, names the release's objects define, saved names.
    pub vars: BTreeMap<String, String>,
    pub outcome: Outcome,
    /// Facts for the summary that vary run to run (timings): never in the snapshot.
    pub notes: Vec<String>,
    /// Whether a `snapshot` step ran.
    pub snapshot: bool,
    pub helm: helm::Session,
    pub db: Option<crate::postgres::Database>,
    /// node -> zone, as the case started.
    pub zones: BTreeMap<String, String>,
    /// The last runbook run and when, for time-to-recovery notes and findings.
    pub last_runbook: Option<(String, Instant)>,
}

impl CaseCx<'_> {
    pub fn client(&self) -> kube::Client {
        self.env.cluster.client.clone()
    }

    pub fn var(&self, name: &str) -> Result<String, StepError> {
        Tpl(format!("${{{name}}}")).fill(&self.vars)
    }

    /// A template, or the default variable.
    pub fn fill_or(&self, t: &Option<Tpl>, default_var: &str) -> Result<String, StepError> {
        match t {
            Some(t) => t.fill(&self.vars),
            None => self.var(default_var),
        }
    }

    pub fn fill_opt(&self, t: &Option<Tpl>) -> Result<Option<String>, StepError> {
        t.as_ref().map(|t| t.fill(&self.vars)).transpose()
    }
}

/// The variables every case starts with; helm-upgrade adds `instance`, `pod`, `claim`.
pub fn builtin_vars() -> BTreeSet<&'static str> {
    ["release", "namespace", "chart.latest", "chart.candidate", "chart.oldest", "chart.previous", "chart.versions"].into_iter().collect()
}

/// `Kind/name` -> (kind, name).
pub fn object_ref(s: &str) -> Option<(String, String)> {
    s.split_once('/').map(|(k, n)| (k.to_string(), n.to_string())).filter(|(k, n)| !k.is_empty() && !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_known_names_and_name_the_unknown() {
        let vars: BTreeMap<String, String> = [("pod".to_string(), "lily-0".to_string())].into();
        assert_eq!(Tpl("Pod/${pod}".into()).fill(&vars).unwrap(), "Pod/lily-0");
        assert_eq!(Tpl("plain".into()).fill(&vars).unwrap(), "plain");
        let e = Tpl("${claim}".into()).fill(&vars).unwrap_err().to_string();
        assert!(e.contains("`${claim}` is not known") && e.contains("pod"), "{e}");
        assert_eq!(refs("${a}-${b.c} ${"), vec!["a", "b.c"]);
    }

    #[test]
    fn regex_fields_match_variables_literally() {
        let vars: BTreeMap<String, String> = [("chart.versions".to_string(), "0.1.4, 0.1.5-rc1".to_string())].into();
        let re = Tpl("has no version 9\\.9\\.9.*${chart.versions}$".into()).fill_regex(&vars).unwrap();
        assert!(re.is_match("chart lily has no version 9.9.9; the repository has 0.1.4, 0.1.5-rc1"));
        // The dots are literal: another digit where a dot is does not match.
        assert!(!re.is_match("chart lily has no version 9.9.9; the repository has 0x1x4, 0.1.5-rc1"));
        let e = Tpl("${chart.latest}".into()).fill(&BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("every served chart version is a prerelease"), "{e}");
    }
}
