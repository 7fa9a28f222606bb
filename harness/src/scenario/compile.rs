//! Scenario files compiled into checked plans, before anything starts.
//!
//! Loading a scenario parses the YAML, then compiles every step: durations parsed, regexes
//! compiled, catalogue entries and runbooks resolved, values files found, and every `${var}`
//! checked against the built-in names and what earlier steps define. A mistake is a
//! [`LoadError`] naming the file, the case, the step (index and kind) and the field, found
//! in milliseconds rather than after a control plane booted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::model::{self, Scenario, Step};
use super::steps::{self, CompiledStep};
use crate::layout::Layout;

/// A scenario file that cannot be used, and exactly where.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read scenario file {}", .file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Invalid YAML, or a document that does not fit the format (unknown step or field).
    #[error("{}: {message}", .file.display())]
    Parse { file: PathBuf, message: String },
    /// The scenario as a whole (no steps, a case twice, a missing values file of its own).
    #[error("{}: {message}", .file.display())]
    Scenario { file: PathBuf, message: String },
    /// One step.
    #[error("{0}")]
    Step(Box<StepProblem>),
    #[error("two scenario files are named {name}: {} and {}", .first.display(), .second.display())]
    Duplicate { name: String, first: PathBuf, second: PathBuf },
    #[error("cannot read scenario directory {}", .dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with one step, and where.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}step {index} ({kind}), field `{field}`: {message}", .file.display(), .case.as_ref().map(|c| format!("case {c}, ")).unwrap_or_default())]
pub struct StepProblem {
    pub file: PathBuf,
    pub case: Option<String>,
    pub index: usize,
    pub kind: String,
    pub field: String,
    pub message: String,
}

/// Where in a file a step is, for its errors.
#[derive(Debug, Clone, Copy)]
pub struct StepSite<'a> {
    pub file: &'a Path,
    pub case: Option<&'a str>,
    pub index: usize,
    pub kind: &'a str,
}

impl StepSite<'_> {
    pub fn error(&self, field: &str, message: impl Into<String>) -> LoadError {
        LoadError::Step(Box::new(StepProblem {
            file: self.file.to_path_buf(),
            case: self.case.map(str::to_string),
            index: self.index,
            kind: self.kind.to_string(),
            field: field.to_string(),
            message: message.into(),
        }))
    }
}

/// The variables defined at a point of a case.
#[derive(Debug, Clone)]
pub struct Scope {
    names: BTreeSet<String>,
    /// Whether a `helm-repo-add` came before.
    pub repo_added: bool,
}

impl Scope {
    fn new() -> Scope {
        Scope { names: steps::builtin_vars().into_iter().map(str::to_string).collect(), repo_added: false }
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.names.iter().cloned().collect()
    }

    pub fn define(&mut self, name: &str) {
        self.names.insert(name.to_string());
    }

    pub fn define_all<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for n in names {
            self.define(n);
        }
    }

    /// A step that uses `${name}` implicitly (its default) needs it defined before it.
    pub fn require(&self, name: &str, site: &StepSite<'_>, field: &str) -> Result<(), LoadError> {
        if self.has(name) {
            Ok(())
        } else {
            Err(site.error(
                field,
                format!("defaults to `${{{name}}}`, which no earlier step defines (a helm-upgrade defines instance, pod and claim)"),
            ))
        }
    }
}

/// A compiled scenario.
#[derive(Debug)]
pub struct ScenarioPlan {
    pub file: PathBuf,
    pub name: String,
    pub summary: String,
    pub exclusive: bool,
    pub fixture_only: bool,
    pub release: String,
    /// The scenario's values files, resolved.
    pub values: Vec<PathBuf>,
    pub cases: Vec<CasePlan>,
    pub catch: Vec<CompiledStep>,
    pub finally: Vec<CompiledStep>,
}

/// One test case of a scenario.
#[derive(Debug)]
pub struct CasePlan {
    /// `install`, or `scenario/case`.
    pub name: String,
    pub summary: String,
    pub steps: Vec<CompiledStep>,
    /// Built-in variables the case uses (`chart.previous` needs two served versions).
    pub uses: BTreeSet<String>,
}

impl CasePlan {
    /// A rough idea of how long the case runs (the sum of its steps' estimates).
    pub fn estimate(&self) -> std::time::Duration {
        self.steps.iter().map(|s| s.op.estimate()).sum()
    }

    /// What the case's steps need of the cluster beyond the Kubernetes API.
    pub fn needs(&self) -> BTreeSet<crate::scenario::steps::Need> {
        self.steps.iter().filter_map(|s| s.op.needs()).collect()
    }
}

impl ScenarioPlan {
    /// Reads and compiles a scenario file.
    pub fn load(file: &Path, layout: &Layout) -> Result<ScenarioPlan, LoadError> {
        let text = std::fs::read_to_string(file).map_err(|source| LoadError::Read { file: file.to_path_buf(), source })?;
        let sc: Scenario =
            crate::yaml::from_str(&text).map_err(|e| LoadError::Parse { file: file.to_path_buf(), message: crate::error::chain(&e) })?;
        Self::compile(&sc, file, layout)
    }

    /// Compiles a parsed scenario (tests change a scenario's steps, then compile it).
    pub fn compile(sc: &Scenario, file: &Path, layout: &Layout) -> Result<ScenarioPlan, LoadError> {
        let scenario_err = |message: String| LoadError::Scenario { file: file.to_path_buf(), message };
        if sc.steps.is_empty() == sc.cases.is_empty() {
            return Err(scenario_err("give either `try` steps or `cases`, not both or neither".into()));
        }
        let mut seen = BTreeSet::new();
        for c in &sc.cases {
            if !seen.insert(c.name.as_str()) {
                return Err(scenario_err(format!("case `{}` appears twice", c.name)));
            }
        }
        let mut values = Vec::new();
        for v in &sc.values {
            let p = layout.values_file(v);
            if !p.is_file() {
                return Err(scenario_err(format!(
                    "values file {} does not exist (values are relative to {})",
                    p.display(),
                    layout.values_dir().display()
                )));
            }
            values.push(p);
        }
        let mut cases = Vec::new();
        let mut defined_anywhere = Scope::new();
        for (name, case, model_steps) in sc.cases() {
            let mut scope = Scope::new();
            let steps = compile_steps(model_steps, file, case.as_deref(), layout, &mut scope)?;
            let uses = model_steps.iter().flat_map(step_refs).filter(|r| steps::builtin_vars().contains(r.as_str())).collect();
            defined_anywhere.names.extend(scope.names);
            defined_anywhere.repo_added |= scope.repo_added;
            let summary = sc.cases.iter().find(|c| Some(&c.name) == case.as_ref()).map(|c| c.summary.clone()).unwrap_or_default();
            cases.push(CasePlan { name, summary, steps, uses });
        }
        // catch and finally may run after any step: they see every name some case defines.
        let catch = compile_steps(&sc.catch, file, Some("catch"), layout, &mut defined_anywhere.clone())?;
        let finally = compile_steps(&sc.finally, file, Some("finally"), layout, &mut defined_anywhere.clone())?;
        Ok(ScenarioPlan {
            file: file.to_path_buf(),
            name: sc.name.clone(),
            summary: sc.summary.clone(),
            exclusive: sc.exclusive,
            fixture_only: sc.fixture_only,
            release: sc.release.clone(),
            values,
            cases,
            catch,
            finally,
        })
    }
}

fn compile_steps(
    model_steps: &[Step],
    file: &Path,
    case: Option<&str>,
    layout: &Layout,
    scope: &mut Scope,
) -> Result<Vec<CompiledStep>, LoadError> {
    let mut out = Vec::new();
    for (i, s) in model_steps.iter().enumerate() {
        let kind = s.kind();
        let site = StepSite { file, case, index: i + 1, kind: &kind };
        let op = steps::compile(s, &mut steps::Cx { layout, scope, site })?;
        out.push(CompiledStep { index: i + 1, kind: kind.clone(), op });
    }
    Ok(out)
}

/// Every `${name}` a step refers to.
fn step_refs(s: &Step) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.extend(steps::refs(s).into_iter().map(str::to_string)),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::to_value(s).unwrap_or_default(), &mut out);
    out
}

/// Every scenario file in the layout, compiled, sorted by name. The first broken file
/// stops the load; [`check`] reports them all.
pub fn discover(layout: &Layout) -> Result<Vec<Arc<ScenarioPlan>>, LoadError> {
    let (plans, mut errors) = load_all(layout)?;
    match errors.is_empty() {
        true => Ok(plans),
        false => Err(errors.remove(0)),
    }
}

/// Every scenario file compiled, and every error found (one per broken file).
pub fn check(layout: &Layout) -> Result<(Vec<Arc<ScenarioPlan>>, Vec<LoadError>), LoadError> {
    load_all(layout)
}

fn load_all(layout: &Layout) -> Result<(Vec<Arc<ScenarioPlan>>, Vec<LoadError>), LoadError> {
    let dir = layout.root();
    let rd = std::fs::read_dir(dir).map_err(|source| LoadError::Dir { dir: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> =
        rd.flatten().map(|e| e.path()).filter(|p| p.extension().and_then(|x| x.to_str()) == Some("yaml") && p.is_file()).collect();
    files.sort();
    let (mut plans, mut errors) = (Vec::new(), Vec::new());
    for f in files {
        match ScenarioPlan::load(&f, layout) {
            Ok(p) => plans.push(Arc::new(p)),
            Err(e) => errors.push(e),
        }
    }
    plans.sort_by(|a, b| a.name.cmp(&b.name));
    for w in plans.windows(2) {
        if w[0].name == w[1].name {
            errors.push(LoadError::Duplicate { name: w[0].name.clone(), first: w[0].file.clone(), second: w[1].file.clone() });
        }
    }
    Ok((plans, errors))
}

/// The scenario model's own entry points, kept for callers that only need the data.
pub use model::schema;
