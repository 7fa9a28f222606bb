//! The values-contract step, `values-contract`: the scheduling and storage knobs an operator
//! sets in a values file, each checked on its own.
//!
//! For each knob (`nodeSelector`, `affinity`, `tolerations`, an instance type's `resources`,
//! its datastore volume's `storageClassName` and `size`; the keys are in
//! [`crate::contract::values`]) the chart is rendered with `helm template` with the knob set
//! on top of the scenario's values files, and the step checks that
//!
//! 1. helm renders it;
//! 2. the value lands where Kubernetes reads it: the pod spec's `nodeSelector`, `affinity`
//!    and `tolerations` of every Lily StatefulSet (a StatefulSet whose pods run the
//!    [`MAIN_CONTAINER`]), the main container's `resources`, the datastore claim template's
//!    `storageClassName` and `resources.requests.storage`;
//! 3. the API server accepts every rendered object (a server-side dry-run apply,
//!    [`crate::helm::validate`]).
//!
//! The chart is also rendered once without any knob: a knob whose value is already there
//! without it proves nothing, and the step says so. Every knob is checked and recorded in
//! the outcome; the knobs the chart gets wrong fail the step once, as one chart finding that
//! lists each of them (the template and helm's words, the object and the path, or the API
//! server's message). Nothing is installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};

use super::{CaseCx, Cx, Install, Operation, StepError, StepResult, Tpl};
use crate::contract::{self, DATASTORE_CLAIM_TEMPLATE, MAIN_CONTAINER};
use crate::error::Error;
use crate::helm::validate::{dry_run_apply, CrdPolicy, Outcome as DryRun};
use crate::helm::{ChartMeta, ChartRef, ChartSource, TemplateOpts, Values};
use crate::scenario::compile::LoadError;
use crate::scenario::model::{self, Knob};

/// Where the step takes its chart from.
#[derive(Debug)]
enum Chart {
    /// The served repository's chart at `version` (default: the candidate, the newest served).
    Repo { version: Option<Tpl> },
    /// A chart directory or .tgz (and `fixture@X.Y.Z`, as a directory at that version).
    Source(ChartSource),
}

#[derive(Debug)]
pub struct ValuesContract {
    chart: Chart,
    instance_type: String,
    knobs: Vec<Knob>,
}

impl ValuesContract {
    pub fn compile(s: &model::ValuesContract, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        let chart = match &s.chart {
            Some(src) => {
                if s.version.is_some() {
                    return Err(cx.site.error("version", "give `version` for the served repository's chart, not with `chart`"));
                }
                Chart::Source(chart_source(src, cx)?)
            }
            None => Chart::Repo { version: cx.opt_tpl("version", &s.version)? },
        };
        let instance_type = s.instance_type.clone().unwrap_or_else(|| "daemon".into());
        let known = all_instance_types();
        if !known.contains(&instance_type.as_str()) {
            return Err(cx.site.error("instance-type", format!("`{instance_type}` is not an instance type (known: {})", known.join(", "))));
        }
        if s.knobs.is_empty() {
            return Err(cx.site.error("knobs", "give at least one knob"));
        }
        for (i, k) in s.knobs.iter().enumerate() {
            if let Some(why) = knob_problem(k) {
                return Err(cx.site.error(&format!("knobs[{i}].{}", k.kind()), why));
            }
        }
        Ok(Box::new(ValuesContract { chart, instance_type, knobs: s.knobs.clone() }))
    }

    async fn check(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let work = tempfile::Builder::new()
            .prefix("values-contract-")
            .tempdir_in(&cx.dir)
            .map_err(Error::io(format!("create a directory in {}", cx.dir.display())))?;
        let chart = self.chart_path(cx, work.path()).await?;
        let meta = ChartMeta::read(&chart)?;
        cx.outcome.record(
            "values-contract",
            json!({"chart": format!("{}-{}", meta.name, meta.version), "instance-type": self.instance_type, "knobs": self.knobs.len()}),
        );
        // Without any knob: what the scenario's values alone render (a chart that cannot
        // render them fails here, as the install would).
        let baseline = documents(&render(cx, &chart, None).await?)?;
        let mut findings: Vec<Finding> = Vec::new();
        let mut vacuous: Vec<String> = Vec::new();
        for (i, knob) in self.knobs.iter().enumerate() {
            let key = values_key(knob, &self.instance_type);
            let label = format!("{}={}", key, compact(&knob.value()));
            let file = work.path().join(format!("knob-{i}.yaml"));
            let text = crate::yaml::to_string(&knob_values(knob, &self.instance_type)).map_err(Error::from)?;
            std::fs::write(&file, text).map_err(Error::io(format!("write {}", file.display())))?;
            let mut entry = json!({"knob": knob.kind(), "values-key": key, "value": knob.value()});
            let docs = match render(cx, &chart, Some(&file)).await {
                Ok(text) => documents(&text)?,
                Err(Error::Helm(h)) if h.is_chart_failure() => {
                    let f = match h.render_failure() {
                        Some((template, said)) => Finding::render(&label, &key, &template, &said),
                        None => Finding::refused(&label, &key, &last_line(&h.to_string())),
                    };
                    entry["problem"] = json!(f.problem);
                    cx.outcome.record("values-knob", entry);
                    findings.push(f);
                    continue;
                }
                Err(e) => return Err(StepError::Errored(e)),
            };
            let (sites, mut problems) = landing(knob, &self.instance_type, &label, &key, &docs);
            entry["rendered"] = json!(sites.iter().filter(|s| s.landed).map(Site::id).collect::<Vec<_>>());
            if problems.is_empty() {
                let before = landing(knob, &self.instance_type, &label, &key, &baseline).0;
                if let Some(s) = before.iter().find(|s| s.landed) {
                    vacuous.push(format!(
                        "knob {label} proves nothing: the chart renders it at {} without the knob (the scenario's values or the chart's defaults); pick another value",
                        s.id()
                    ));
                }
            }
            let results = dry_run_apply(&cx.client(), &docs, &cx.namespace, &CrdPolicy::Report).await?;
            let accepted = results.iter().filter(|r| r.outcome == DryRun::Accepted).count();
            let mut dry = json!({"accepted": accepted, "objects": results.len()});
            let needs_crd: BTreeSet<String> = results
                .iter()
                .filter_map(|r| match &r.outcome {
                    DryRun::NeedsCrd { group, kind, .. } => Some(format!("{kind}.{group}")),
                    _ => None,
                })
                .collect();
            if !needs_crd.is_empty() {
                dry["not-checked-needs-crd"] = json!(needs_crd);
            }
            for r in &results {
                if let DryRun::Rejected { message, .. } = &r.outcome {
                    problems.push(Finding::rejected(&label, &key, &format!("{}/{}", r.kind, r.name), message));
                }
            }
            entry["dry-run"] = dry;
            if !problems.is_empty() {
                entry["problem"] = json!(problems.iter().map(|p| p.problem.clone()).collect::<Vec<_>>().join("; "));
            }
            cx.outcome.record("values-knob", entry);
            findings.extend(problems);
        }
        if !findings.is_empty() {
            return Err(combine(&findings, self.knobs.len()));
        }
        if !vacuous.is_empty() {
            return Err(StepError::failed(vacuous.join("; ")));
        }
        Ok(())
    }

    /// The chart as a local path helm can render: the served archive, a packaged directory,
    /// or the directory or archive itself.
    async fn chart_path(&self, cx: &CaseCx<'_>, work: &Path) -> Result<PathBuf, StepError> {
        Ok(match &self.chart {
            Chart::Repo { version } => {
                let repo = &cx.env.repo;
                let v = match cx.fill_opt(version)? {
                    Some(v) => repo.version(&v)?.clone(),
                    // The candidate under test, as every scenario but `install` takes it.
                    None => repo.latest().clone(),
                };
                repo.archive(&v).ok_or_else(|| Error::Invalid(format!("the chart repository has no archive of {v}")))?.to_path_buf()
            }
            Chart::Source(ChartSource::Dir { path, version: Some(v) }) => {
                cx.helm.helm.package(path, Some(&v.to_string()), &work.join("chart")).await?
            }
            Chart::Source(ChartSource::Dir { path, version: None } | ChartSource::Archive { path }) => path.clone(),
            Chart::Source(ChartSource::Remote { .. }) => unreachable!("refused at compile time"),
        })
    }
}

impl Operation for ValuesContract {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.check(cx).boxed()
    }

    fn estimate(&self) -> Duration {
        // A render and a dry-run per knob, and the render without any.
        Duration::from_secs(1 + self.knobs.len() as u64)
    }

    /// Only the render without any knob: a knob the chart cannot render is this step's
    /// finding, reported with every other knob, not a pre-flight failure of the case.
    fn install(&self) -> Option<Install<'_>> {
        let (source, version) = match &self.chart {
            Chart::Repo { version } => (None, version.as_ref()),
            Chart::Source(s) => (Some(s), None),
        };
        Some(Install { source, version, values: &[], set: None })
    }
}

/// `fixture@X.Y.Z`, a chart directory, `DIR@X.Y.Z` or a `.tgz`.
fn chart_source(src: &str, cx: &Cx<'_>) -> Result<ChartSource, LoadError> {
    if let Some(v) = src.strip_prefix("fixture@") {
        let version = crate::helm::chart::parse_version(v).map_err(|e| cx.site.error("chart", e.to_string()))?;
        return Ok(ChartSource::Dir { path: cx.layout.fixture_chart(), version: Some(version) });
    }
    let source = ChartSource::parse(src).map_err(|e| cx.site.error("chart", e.to_string()))?;
    if matches!(source, ChartSource::Remote { .. }) {
        return Err(cx.site.error("chart", format!("`{src}`: use a chart directory or .tgz")));
    }
    source.check().map_err(|e| cx.site.error("chart", e.to_string()))?;
    Ok(source)
}

fn all_instance_types() -> Vec<&'static str> {
    ["daemon", "cluster"].into_iter().filter_map(contract::instance_types).flatten().copied().collect()
}

/// Why a knob's value cannot prove anything (empty), or does not look like what the key takes.
fn knob_problem(k: &Knob) -> Option<String> {
    let empty = match k {
        Knob::NodeSelector(m) => m.is_empty(),
        Knob::Affinity(v) => v.as_object().is_none_or(|o| o.is_empty()),
        Knob::Tolerations(v) => v.is_empty() || v.iter().any(|t| t.as_object().is_none_or(|o| o.is_empty())),
        Knob::Resources(v) => {
            let Some(o) = v.as_object().filter(|o| !o.is_empty()) else { return Some("give `requests` and/or `limits`".into()) };
            if let Some(other) = o.keys().find(|k| *k != "requests" && *k != "limits") {
                return Some(format!("`{other}` is not a key of resources (requests, limits)"));
            }
            o.values().any(|x| x.as_object().is_none_or(|m| m.is_empty()))
        }
        Knob::StorageClassName(s) => s.trim().is_empty(),
        Knob::Size(s) => {
            let re = regex::Regex::new(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$").expect("static regex");
            if !re.is_match(s) {
                return Some(format!("`{s}` is not a storage quantity like 20Gi"));
            }
            false
        }
    };
    empty.then(|| "an empty value renders nothing to check; give a value".to_string())
}

/// The values key the knob sets, as an operator writes it.
pub fn values_key(k: &Knob, instance_type: &str) -> String {
    match k {
        Knob::NodeSelector(_) => contract::values::SCHEDULING[0].to_string(),
        Knob::Affinity(_) => contract::values::SCHEDULING[1].to_string(),
        Knob::Tolerations(_) => contract::values::SCHEDULING[2].to_string(),
        Knob::Resources(_) => contract::values::resources(instance_type),
        Knob::StorageClassName(_) => format!("{}.storageClassName", contract::values::datastore(instance_type)),
        Knob::Size(_) => format!("{}.size", contract::values::datastore(instance_type)),
    }
}

/// The values file that sets the knob: its dotted key, nested.
pub fn knob_values(k: &Knob, instance_type: &str) -> Value {
    values_key(k, instance_type).rsplit('.').fold(k.value(), |inner, part| json!({ part: inner }))
}

/// One place a knob must land, and whether it did.
#[derive(Debug, Clone, PartialEq)]
struct Site {
    /// `StatefulSet/name`.
    object: String,
    /// Where in the object, as `kubectl explain` names it.
    path: String,
    landed: bool,
    /// What is there (for the finding).
    got: Option<Value>,
}

impl Site {
    fn id(&self) -> String {
        format!("{} {}", self.object, self.path)
    }
}

/// The rendered objects, with the `---` documents helm prints split out.
fn documents(text: &str) -> Result<Vec<Value>, StepError> {
    Ok(crate::yaml::documents(text).map_err(|e| Error::from(e.context("helm template output")))?)
}

/// The rendered StatefulSets whose pods run Lily (the [`MAIN_CONTAINER`]).
fn lily_statefulsets(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| d["kind"] == "StatefulSet")
        .filter(|d| {
            d.pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .is_some_and(|c| c.iter().any(|c| c["name"] == MAIN_CONTAINER))
        })
        .collect()
}

fn name(doc: &Value) -> String {
    doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_string()
}

/// Where the knob must land in `docs`, and the findings for the places it did not.
fn landing(knob: &Knob, instance_type: &str, label: &str, key: &str, docs: &[Value]) -> (Vec<Site>, Vec<Finding>) {
    let want = knob.value();
    let all = lily_statefulsets(docs);
    let mut sites = Vec::new();
    let mut targets: Vec<&Value> = match knob {
        Knob::NodeSelector(_) | Knob::Affinity(_) | Knob::Tolerations(_) => all.clone(),
        _ => all.iter().copied().filter(|d| name(d).ends_with(&format!("-{instance_type}"))).collect(),
    };
    targets.sort_by_key(|d| name(d));
    if targets.is_empty() {
        let what = match knob {
            Knob::NodeSelector(_) | Knob::Affinity(_) | Knob::Tolerations(_) => "no StatefulSet".to_string(),
            _ => format!("no StatefulSet of instance type {instance_type} (`<instance>-{instance_type}`)"),
        };
        return (sites, vec![Finding::no_instance(label, &what)]);
    }
    for sts in targets {
        let object = format!("StatefulSet/{}", name(sts));
        let (path, got) = match knob {
            Knob::NodeSelector(_) | Knob::Affinity(_) | Knob::Tolerations(_) => {
                let field = key;
                (format!("spec.template.spec.{field}"), sts.pointer(&format!("/spec/template/spec/{field}")).cloned())
            }
            Knob::Resources(_) => {
                let c = sts
                    .pointer("/spec/template/spec/containers")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c["name"] == MAIN_CONTAINER));
                (format!("spec.template.spec.containers[{MAIN_CONTAINER}].resources"), c.and_then(|c| c.get("resources")).cloned())
            }
            Knob::StorageClassName(_) | Knob::Size(_) => {
                let vct = sts
                    .pointer("/spec/volumeClaimTemplates")
                    .and_then(Value::as_array)
                    .and_then(|v| v.iter().find(|t| t.pointer("/metadata/name").and_then(Value::as_str) == Some(DATASTORE_CLAIM_TEMPLATE)));
                let (field, pointer) = match knob {
                    Knob::Size(_) => ("resources.requests.storage", "/spec/resources/requests/storage"),
                    _ => ("storageClassName", "/spec/storageClassName"),
                };
                (
                    format!("spec.volumeClaimTemplates[{DATASTORE_CLAIM_TEMPLATE}].spec.{field}"),
                    vct.and_then(|t| t.pointer(pointer)).cloned(),
                )
            }
        };
        let landed = got.as_ref().is_some_and(|g| contains(g, &want));
        sites.push(Site { object, path, landed, got });
    }
    let findings = sites.iter().filter(|s| !s.landed).map(|s| Finding::not_landed(label, key, s)).collect();
    (sites, findings)
}

/// Whether `got` holds everything in `want`: maps key by key (the chart may add its own),
/// lists item by item (in any order), scalars by their text (`2` is `"2"`).
pub fn contains(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w.iter().all(|(k, wv)| g.get(k).is_some_and(|gv| contains(gv, wv))),
        (Value::Array(g), Value::Array(w)) => w.iter().all(|wv| g.iter().any(|gv| contains(gv, wv))),
        (g, w) => scalar(g).is_some() && scalar(g) == scalar(w),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn last_line(s: &str) -> String {
    s.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default().trim_start_matches("Error: ").to_string()
}

/// `helm template` of the chart with the scenario's values, then `knob` (if any).
async fn render(cx: &CaseCx<'_>, chart: &Path, knob: Option<&Path>) -> Result<String, Error> {
    let mut values = Values::files(cx.values.iter().cloned());
    if let Some(k) = knob {
        values = values.file(k);
    }
    let opts = TemplateOpts { namespace: Some(cx.namespace.clone()), values, ..Default::default() };
    cx.helm.helm.template(&cx.release, &ChartRef::Path(chart.to_path_buf()), &opts).await
}

/// What the chart gets wrong about one knob.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    object: String,
    problem: String,
    fix: String,
}

impl Finding {
    fn render(label: &str, key: &str, template: &str, said: &str) -> Finding {
        let mut fix = format!("make {template} render valid YAML when `{key}` is set");
        if said.contains("YAML parse error") {
            fix.push_str(" (an include starts on a line of its own, with `nindent`, not glued onto the key before it)");
        }
        Finding { object: format!("template {template}"), problem: format!("helm cannot render knob {label}: {said}"), fix }
    }

    fn refused(label: &str, key: &str, said: &str) -> Finding {
        Finding {
            object: "chart".into(),
            problem: format!("helm refuses knob {label}: {said}"),
            fix: format!("accept `{key}` as operators set it"),
        }
    }

    fn no_instance(label: &str, what: &str) -> Finding {
        Finding {
            object: "chart".into(),
            problem: format!("with knob {label} the chart renders {what} whose pods run container `{MAIN_CONTAINER}`"),
            fix: "render each instance as a StatefulSet `<instance>-<type>` running container `daemon`".into(),
        }
    }

    fn not_landed(label: &str, key: &str, s: &Site) -> Finding {
        let got = s.got.as_ref().map(compact).unwrap_or_else(|| "nothing".into());
        Finding {
            object: s.object.clone(),
            problem: format!("knob {label}: the value is not in {} (rendered: {got})", s.path),
            fix: format!("render `.Values.{key}` into {}", s.path),
        }
    }

    fn rejected(label: &str, key: &str, object: &str, message: &str) -> Finding {
        Finding {
            object: object.to_string(),
            problem: format!("with knob {label} the API server rejects it (server-side dry-run): {message}"),
            fix: format!("render `{key}` as the Kubernetes API takes it"),
        }
    }
}

/// One chart finding for all the knobs that fail, each listed.
fn combine(findings: &[Finding], knobs: usize) -> StepError {
    let distinct = |f: fn(&Finding) -> &String| {
        let mut seen = Vec::<&str>::new();
        for x in findings {
            if !seen.contains(&f(x).as_str()) {
                seen.push(f(x));
            }
        }
        seen.join(", ")
    };
    let problems: Vec<&str> = findings.iter().map(|f| f.problem.as_str()).collect();
    let problem = match findings {
        [one] => one.problem.clone(),
        _ => format!("{} problems over {knobs} knobs: {}", findings.len(), problems.join("; ")),
    };
    let mut fixes = Vec::<&str>::new();
    for f in findings {
        if !fixes.contains(&f.fix.as_str()) {
            fixes.push(&f.fix);
        }
    }
    StepError::chart(distinct(|f| &f.object), problem, fixes.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(name: &str, pod_spec: Value, vct: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {"template": {"spec": pod_spec}, "volumeClaimTemplates": vct}
        })
    }

    fn daemon_pod(extra: Value) -> Value {
        let mut p =
            json!({"containers": [{"name": "daemon", "resources": {"requests": {"cpu": 2, "memory": "4Gi"}, "limits": {"cpu": "2"}}}]});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    }

    fn claim(class: &str, size: &str) -> Value {
        json!([{"metadata": {"name": "datastore-volume"}, "spec": {"storageClassName": class, "resources": {"requests": {"storage": size}}}}])
    }

    #[test]
    fn containment_is_by_key_by_item_and_by_text() {
        assert!(contains(&json!({"a": "1", "b": 2}), &json!({"a": 1})));
        assert!(!contains(&json!({"a": "1"}), &json!({"a": "1", "b": "2"})));
        assert!(contains(&json!([{"k": "x", "e": "N"}, {"k": "y"}]), &json!([{"k": "y"}])));
        assert!(!contains(&json!([{"k": "x"}]), &json!([{"k": "y"}])));
        assert!(!contains(&json!({"a": {}}), &json!({"a": "x"})));
        assert!(!contains(&Value::Null, &Value::Null), "nothing rendered is not a value");
    }

    #[test]
    fn knob_values_nest_the_contract_key() {
        let k = Knob::StorageClassName("gp3".into());
        assert_eq!(values_key(&k, "daemon"), "daemon.volumes.datastore.storageClassName");
        assert_eq!(knob_values(&k, "daemon"), json!({"daemon": {"volumes": {"datastore": {"storageClassName": "gp3"}}}}));
        let r = Knob::Resources(json!({"limits": {"cpu": "1"}}));
        assert_eq!(knob_values(&r, "worker"), json!({"cluster": {"worker": {"resources": {"limits": {"cpu": "1"}}}}}));
        let n = Knob::NodeSelector([("lily-e2e.io/node-pool".to_string(), "pool-a".to_string())].into());
        assert_eq!(knob_values(&n, "daemon"), json!({"nodeSelector": {"lily-e2e.io/node-pool": "pool-a"}}));
    }

    #[test]
    fn each_knob_is_looked_for_where_kubernetes_reads_it() {
        let docs = vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            sts("lily-rel-dev-mainnet-daemon", daemon_pod(json!({"nodeSelector": {"pool": "a", "os": "linux"}})), claim("gp3", "20Gi")),
            // Not Lily's (no daemon container): never a target.
            sts("rel-redis", json!({"containers": [{"name": "redis"}]}), json!([])),
        ];
        let ns = Knob::NodeSelector([("pool".to_string(), "a".to_string())].into());
        let (sites, f) = landing(&ns, "daemon", "nodeSelector", "nodeSelector", &docs);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(
            sites.iter().map(Site::id).collect::<Vec<_>>(),
            ["StatefulSet/lily-rel-dev-mainnet-daemon spec.template.spec.nodeSelector"]
        );
        let res = Knob::Resources(json!({"requests": {"cpu": "2"}}));
        assert!(landing(&res, "daemon", "r", "daemon.resources", &docs).1.is_empty());
        assert!(landing(&Knob::Size("20Gi".into()), "daemon", "s", "k", &docs).1.is_empty());
        assert!(landing(&Knob::StorageClassName("gp3".into()), "daemon", "s", "k", &docs).1.is_empty());

        let tol = Knob::Tolerations(vec![json!({"key": "dedicated", "operator": "Exists"})]);
        let (_, f) = landing(&tol, "daemon", "tolerations=[..]", "tolerations", &docs);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].object, "StatefulSet/lily-rel-dev-mainnet-daemon");
        assert!(f[0].problem.contains("not in spec.template.spec.tolerations (rendered: nothing)"), "{}", f[0].problem);
        let (_, f) = landing(&Knob::StorageClassName("gp2".into()), "daemon", "sc=gp2", "k", &docs);
        assert!(f[0].problem.contains("(rendered: \"gp3\")"), "{}", f[0].problem);
        let (_, f) = landing(&Knob::Size("20Gi".into()), "worker", "size", "k", &docs);
        assert!(f[0].object == "chart" && f[0].problem.contains("instance type worker"), "{f:?}");
    }

    #[test]
    fn every_failing_knob_is_listed_in_one_finding() {
        let said = "YAML parse error on lily/templates/app.yaml: error converting YAML to JSON: yaml: line 33: mapping values are not allowed in this context";
        let f = [
            Finding::render("nodeSelector={}", "nodeSelector", "lily/templates/app.yaml", said),
            Finding::render("affinity={}", "affinity", "lily/templates/app.yaml", said),
            Finding::rejected("size=1", "daemon.volumes.datastore.size", "StatefulSet/x", "spec: Invalid value"),
        ];
        let msg = combine(&f, 6).to_string();
        assert!(msg.starts_with("chart finding: template lily/templates/app.yaml, StatefulSet/x: 3 problems over 6 knobs: "), "{msg}");
        assert!(msg.contains("knob nodeSelector={}") && msg.contains("knob affinity={}") && msg.contains("line 33"), "{msg}");
        assert_eq!(msg.matches("make lily/templates/app.yaml render").count(), 2, "one fix per knob key: {msg}");
        let one = combine(&f[..1], 6).to_string();
        assert!(
            one.starts_with("chart finding: template lily/templates/app.yaml: helm cannot render knob nodeSelector={}: YAML parse error"),
            "{one}"
        );
        assert!(one.contains("fix: make lily/templates/app.yaml render valid YAML when `nodeSelector` is set (an include"), "{one}");
    }

    #[test]
    fn empty_or_malformed_knobs_are_refused_at_load() {
        assert!(knob_problem(&Knob::NodeSelector(Default::default())).is_some());
        assert!(knob_problem(&Knob::Affinity(json!({}))).is_some());
        assert!(knob_problem(&Knob::Tolerations(vec![json!("x")])).is_some());
        assert!(knob_problem(&Knob::Resources(json!({"request": {"cpu": "1"}}))).unwrap().contains("`request`"));
        assert!(knob_problem(&Knob::Size("20 GB".into())).unwrap().contains("not a storage quantity"));
        assert!(knob_problem(&Knob::Size("20Gi".into())).is_none());
        assert!(knob_problem(&Knob::Resources(json!({"limits": {"memory": "2Gi"}}))).is_none());
        assert_eq!(all_instance_types(), ["daemon", "notifier", "worker"]);
    }
}
