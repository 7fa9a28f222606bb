//! Runs one compiled case: its own namespace and helm home, steps in order (each in a
//! tracing span), artifacts on failure, the scenario's catch and finally blocks, and the
//! normalised outcome.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::compile::{CasePlan, ScenarioPlan};
use super::env::Env;
use super::outcome::Outcome;
use super::steps::{self, CaseCx, CompiledStep, StepError};
use crate::error::{chain, Error, Result};
use crate::helm::Helm;
use crate::labels::ZONE_LABEL;
use crate::report::{CaseOutcome, CaseReport, Event, Reporter};
use crate::run::RUN_LABEL;

/// What running a case produced.
pub struct CaseRun {
    pub report: CaseReport,
    /// What was observed so far, normalised (also for a failed or cut-short case).
    pub observed: String,
    /// The case's variables at its end (`pod`, `claim`, saved names), with real names.
    pub vars: BTreeMap<String, String>,
    /// The normalised outcome, when the case has a `snapshot` step and passed.
    pub snapshot: Option<String>,
    pub namespace: String,
}

impl CaseRun {
    /// A case that ended before it ran a step (skipped, no environment, set-up failed).
    pub fn not_run(report: CaseReport) -> CaseRun {
        CaseRun { report, observed: String::new(), vars: BTreeMap::new(), snapshot: None, namespace: String::new() }
    }
}

/// A namespace name from a case name and the run id: lowercase, `-` separated, <= 63 chars.
pub fn namespace_for(case: &str, run: &str) -> String {
    let mut base: String = case.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    base.truncate(63 - run.len() - 1);
    format!("{}-{run}", base.trim_end_matches('-'))
}

/// How far to run a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Every step.
    End,
    /// The steps before the first `runbook` (`reproduce`: the failing state), no finally.
    FailingState,
}

/// Runs `case` of `plan` in `env`, reporting steps to `reporter`; `cancel` stops it between
/// or during steps (the outcome is then an error naming the step it was in).
pub async fn run_case(
    env: &Env,
    plan: &ScenarioPlan,
    case: &CasePlan,
    until: Until,
    reporter: &dyn Reporter,
    cancel: &CancellationToken,
) -> CaseRun {
    let span = tracing::info_span!("case", name = %case.name);
    async move {
        let started = Instant::now();
        let name = case.name.as_str();
        let namespace = namespace_for(name, env.run.id().as_str());
        let mut cx = match new_cx(env, plan, &namespace).await {
            Ok(c) => c,
            Err(e) => return CaseRun { namespace, ..CaseRun::not_run(CaseReport::errored(name, "set-up", chain(&e), started.elapsed())) },
        };
        let steps: &[CompiledStep] = match until {
            Until::End => &case.steps,
            Until::FailingState => &case.steps[..case.steps.iter().position(|s| s.kind == "runbook").unwrap_or(case.steps.len())],
        };
        let mut slowest: Option<(String, Duration)> = None;
        let mut timeline = crate::report::Timeline::default();
        let case_start = chrono::Utc::now();
        let mut failure: Option<(String, StepError)> = None;
        for step in steps {
            let label = step.label();
            reporter.on(&Event::StepStarted { case: name, step: &label });
            let t = Instant::now();
            let r = tokio::select! {
                r = step.op.run(&mut cx).instrument(tracing::info_span!("step", step = %label)) => r,
                _ = cancel.cancelled() => Err(StepError::Errored(Error::Interrupted)),
            };
            let took = t.elapsed();
            reporter.on(&Event::StepFinished { case: name, step: &label, took, ok: r.is_ok() });
            timeline.steps.push(crate::report::TimedStep {
                step: label.clone(),
                at: (t - started).as_secs_f64(),
                took: took.as_secs_f64(),
                ok: r.is_ok(),
            });
            if slowest.as_ref().is_none_or(|(_, d)| took > *d) {
                slowest = Some((step.kind.clone(), took));
            }
            if let Err(e) = r {
                failure = Some((label, e));
                break;
            }
        }
        let interrupted = cancel.is_cancelled();
        let mut artifacts = None;
        if failure.is_some() && !interrupted {
            artifacts = Some(collect_artifacts(&mut cx, name).await);
            for step in &plan.catch {
                if let Err(e) = step.op.run(&mut cx).await {
                    tracing::warn!("catch step {} failed: {}", step.kind, chain(&e));
                }
            }
        }
        if until == Until::End && !interrupted {
            for step in &plan.finally {
                if let Err(e) = step.op.run(&mut cx).await {
                    if failure.is_none() {
                        failure = Some((format!("finally ({})", step.kind), e));
                    }
                }
            }
        }
        if !interrupted {
            timeline.events = namespace_events(&cx, case_start).await;
        }
        let observed = cx.outcome.render(name);
        let snapshot = (failure.is_none() && cx.snapshot).then(|| observed.clone());
        if !env.keep && until == Until::End {
            // The database goes with the server at teardown.
            cx.db = None;
            let _ = Api::<Namespace>::all(cx.client()).delete(&cx.namespace, &DeleteParams::background()).await;
        }
        let outcome = match failure {
            None => CaseOutcome::Passed,
            Some((step, StepError::Failed(message))) => CaseOutcome::Failed { step, message },
            Some((step, StepError::Chart(finding))) => CaseOutcome::Failed { step, message: finding.to_string() },
            Some((step, StepError::Errored(e))) => CaseOutcome::Errored { step, message: chain(&e) },
        };
        CaseRun {
            report: CaseReport {
                name: name.to_string(),
                duration: started.elapsed(),
                outcome,
                slowest_step: slowest,
                artifacts,
                notes: std::mem::take(&mut cx.notes),
                findings: cx.outcome.finding_lines(),
                timeline,
            },
            snapshot,
            namespace,
            observed,
            vars: cx.vars.clone(),
        }
    }
    .instrument(span)
    .await
}

async fn new_cx<'e>(env: &'e Env, plan: &ScenarioPlan, namespace: &str) -> Result<CaseCx<'e>> {
    let client = env.cluster.client.clone();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": namespace, "labels": {RUN_LABEL: env.run.id().as_str(), "lily-e2e.io/scenario": plan.name}}
    }))
    .map_err(Error::json("a namespace"))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(Error::kube(format!("create namespace {namespace}")))?;
    let dir = env.run.subdir(&format!("case-{namespace}"))?;
    let helm = Helm::new(dir.join("helm"))?.kubeconfig(env.cluster.kubeconfig());
    let mut vars = BTreeMap::new();
    vars.insert("release".into(), plan.release.clone());
    vars.insert("namespace".into(), namespace.to_string());
    vars.extend(env.repo.chart_vars());
    let mut zones = BTreeMap::new();
    for n in Api::<Node>::all(client).list(&ListParams::default()).await.map_err(Error::kube("list nodes"))?.items {
        if let Some(z) = n.labels().get(ZONE_LABEL) {
            zones.insert(n.name_any(), z.clone());
        }
    }
    let mut outcome = Outcome::default();
    outcome.name(namespace, "<namespace>");
    outcome.name(env.run.id().as_str(), "<run-id>");
    Ok(CaseCx {
        env,
        release: plan.release.clone(),
        namespace: namespace.to_string(),
        dir,
        values: plan.values.iter().chain(&env.values).cloned().collect(),
        vars,
        outcome,
        notes: Vec::new(),
        snapshot: false,
        helm: steps::helm::Session { helm, repo: None },
        db: None,
        zones,
        last_runbook: None,
    })
}

/// The events of the case's namespace, in seconds from the case's start (best effort).
async fn namespace_events(cx: &CaseCx<'_>, start: chrono::DateTime<chrono::Utc>) -> Vec<crate::report::TimedEvent> {
    use k8s_openapi::api::core::v1::Event as KubeEvent;
    let Ok(list) = Api::<KubeEvent>::namespaced(cx.client(), &cx.namespace).list(&ListParams::default()).await else {
        return Vec::new();
    };
    let mut out: Vec<crate::report::TimedEvent> = list
        .items
        .into_iter()
        .filter_map(|e| {
            let when = e
                .event_time
                .as_ref()
                .map(|t| t.0)
                .or(e.last_timestamp.as_ref().map(|t| t.0))
                .or(e.first_timestamp.as_ref().map(|t| t.0))?;
            let when = chrono::DateTime::<chrono::Utc>::from_timestamp(when.as_second(), when.subsec_nanosecond() as u32)?;
            Some(crate::report::TimedEvent {
                at: (when - start).num_milliseconds() as f64 / 1000.0,
                reason: e.reason.unwrap_or_default(),
                object: format!("{}/{}", e.involved_object.kind.unwrap_or_default(), e.involved_object.name.unwrap_or_default()),
                message: e.message.unwrap_or_default(),
                warning: e.type_.as_deref() == Some("Warning"),
            })
        })
        .collect();
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    out
}

async fn collect_artifacts(cx: &mut CaseCx<'_>, test_name: &str) -> std::path::PathBuf {
    let dir = super::artifacts::dir_for(&cx.env.artifacts, test_name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut helm_files = Vec::new();
    if let Ok(h) = cx.helm.helm.history(&cx.release, &cx.namespace).await {
        let text: String =
            h.iter().map(|e| format!("{}\t{}\t{}\t{}\t{}\n", e.revision, e.updated, e.status.as_str(), e.chart, e.description)).collect();
        helm_files.push(("helm-history.txt".to_string(), text));
    }
    if let Ok(s) = cx.helm.helm.status(&cx.release, &cx.namespace).await {
        helm_files.push(("helm-status.txt".to_string(), format!("{s:#?}")));
    }
    let mut logs = cx.env.cluster.logs();
    logs.extend(cx.env.postgres.current_logs().await);
    let client = cx.client();
    match super::artifacts::Collector::new(&client, &cx.namespace, dir.clone()) {
        Ok(c) => c.collect(helm_files, &logs).await,
        Err(_) => dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_valid_dns_labels() {
        let ns = namespace_for("pvc-node-affinity-conflict/release-deleted-without-its-claims-and-more", "r0123abcd");
        assert!(ns.len() <= 63, "{ns}");
        assert!(ns.ends_with("-r0123abcd"));
        assert!(ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{ns}");
    }
}
