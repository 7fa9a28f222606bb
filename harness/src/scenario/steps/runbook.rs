//! `runbook`: one of the guide's runbooks (`runbooks/NAME.yaml`), its placeholders filled
//! with the real names, run with the pinned kubectl.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use regex::Regex;

use super::{CaseCx, Cx, Operation, StepError, StepResult};
use crate::error::Error;
use crate::scenario::compile::LoadError;
use crate::scenario::model;
use crate::scenario::runbook::{self, Resolve, Runbook};

#[derive(Debug)]
pub struct RunRunbook {
    book: Runbook,
    /// Per runbook step: (placeholder, compiled capture regex).
    captures: Vec<Vec<(String, Regex)>>,
    command_timeout: Duration,
}

impl RunRunbook {
    pub fn compile(s: &model::RunbookStep, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        let book = Runbook::load(&cx.layout.runbooks_dir(), &s.name).map_err(|e| cx.site.error("name", e.to_string()))?;
        let mut captures = Vec::new();
        for st in &book.steps {
            let mut c = Vec::new();
            for (ph, re) in &st.capture {
                let r = Regex::new(re)
                    .map_err(|e| cx.site.error("name", format!("runbook {}: bad capture regex for <{ph}>: {e}", book.name)))?;
                c.push((ph.clone(), r));
            }
            captures.push(c);
        }
        if book.placeholders.values().any(|p| matches!(p.resolve, Resolve::ReleasePod | Resolve::PendingPod)) {
            cx.scope.require("pod", &cx.site, "name")?;
        }
        Ok(Box::new(RunRunbook {
            book,
            captures,
            command_timeout: cx.duration("command-timeout", &s.command_timeout, Duration::from_secs(60))?,
        }))
    }

    async fn apply(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let rb = &self.book;
        let mut values = BTreeMap::new();
        let mut findings = Vec::new();
        let mut timing = Vec::new();
        for (ph, p) in &rb.placeholders {
            let real = match p.resolve {
                Resolve::ReleasePod | Resolve::PendingPod => cx.var("pod")?,
                Resolve::ClaimOfPod => continue, // captured from `describe`
            };
            let documented = runbook::documented_name(&p.documented, &cx.release, &real);
            if documented != real {
                findings.push(serde_json::json!({"runbook": rb.name, "placeholder": ph, "documented": documented, "real": real}));
            }
            values.insert(ph.clone(), real);
        }
        let kubectl = cx.env.tools.path("kubectl")?;
        let mut commands = Vec::new();
        for (st, captures) in rb.steps.iter().zip(&self.captures) {
            let mut args = runbook::fill(&st.kubectl, &values).map_err(StepError::Errored)?;
            args.extend(["--namespace".to_string(), cx.namespace.clone()]);
            let env = [(std::ffi::OsString::from("KUBECONFIG"), cx.env.cluster.kubeconfig().as_os_str().to_owned())];
            let os: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            let shown = format!("kubectl {}", args[..args.len() - 2].join(" "));
            let command = crate::process::run_command(&kubectl, &os, &env, None, self.command_timeout);
            // A literal command that does not complete is guide drift: what happened, and what
            // an operator must do instead.
            let mut stuck = |why: String, timed: bool| {
                let instead = st.instead.as_deref().map(|i| format!("; an operator must instead: {i}")).unwrap_or_default();
                let list = if timed { &mut timing } else { &mut findings };
                list.push(serde_json::json!({"drift": format!(
                    "runbook {}: `{shown}`, as the guide writes it, does not complete ({why}){instead}",
                    rb.name
                )}));
                // The record is snapshotted: a timing-dependent outcome stays out of it.
                commands.push(if timed {
                    serde_json::json!({"command": shown})
                } else {
                    serde_json::json!({"command": shown, "completed": false, "note": why})
                });
            };
            let out = tokio::select! {
                r = command => r,
                // A command that waits for what nothing will do is stopped as soon as that is
                // known, rather than at its timeout.
                why = cannot_complete(cx, &args, self.command_timeout) => {
                    stuck(why, false);
                    continue;
                }
            };
            let out = match out {
                Ok(o) => o,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    // Whether it completes in the window may depend on the controllers' timing.
                    stuck(format!("stopped after {}s", self.command_timeout.as_secs()), true);
                    continue;
                }
                Err(e) => {
                    return Err(Error::Tool { what: format!("cannot run kubectl {}", args.join(" ")), source: Some(Box::new(e)) }.into())
                }
            };
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            if !out.status.success() {
                return Err(StepError::failed(format!(
                    "runbook {} step `kubectl {}` failed: {}",
                    rb.name,
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            for (ph, re) in captures {
                let v = re.captures(&stdout).and_then(|c| c.get(1)).map(|m| m.as_str().to_string()).ok_or_else(|| {
                    StepError::failed(format!("runbook {}: `kubectl {}` printed no match for /{re}/", rb.name, args.join(" ")))
                })?;
                if let Some(p) = rb.placeholders.get(ph) {
                    let documented = runbook::documented_name(&p.documented, &cx.release, &v);
                    if documented != v {
                        findings.push(serde_json::json!({"runbook": rb.name, "placeholder": ph, "documented": documented, "real": v}));
                    }
                }
                values.insert(ph.clone(), v);
            }
            commands.push(serde_json::json!({"command": shown}));
        }
        for f in &findings {
            cx.outcome.finding(f);
        }
        for f in &timing {
            cx.outcome.timing_finding(f);
        }
        cx.outcome.record("runbook", serde_json::json!({"name": rb.name, "commands": commands}));
        cx.last_runbook = Some((rb.name.clone(), Instant::now()));
        Ok(())
    }
}

/// Resolves, with the reason, once `kubectl ARGS` is known never to complete; otherwise
/// never. `kubectl delete pod P` waits until P is gone, and only P's kubelet (or a force
/// delete, or pod garbage collection for an out-of-service node) removes a terminating pod:
/// when P is terminating on a node whose kubelet no longer reports (Ready is not True), the
/// command cannot complete.
async fn cannot_complete(cx: &CaseCx<'_>, args: &[String], within: Duration) -> String {
    use k8s_openapi::api::core::v1::{Node, Pod};
    let (Some("delete"), Some("pod"), Some(pod)) = (args.first().map(String::as_str), args.get(1).map(String::as_str), args.get(2)) else {
        return std::future::pending().await;
    };
    let pods = kube::Api::<Pod>::namespaced(cx.client(), &cx.namespace);
    let terminating = crate::wait::until(&pods, pod, &format!("pod {pod} to be terminating"), within, |p: Option<&Pod>| {
        p.is_some_and(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await;
    let node = match terminating {
        Ok(Some(p)) => p.spec.and_then(|s| s.node_name),
        _ => None,
    };
    let Some(node) = node else { return std::future::pending().await };
    let nodes = kube::Api::<Node>::all(cx.client());
    let gone = crate::wait::until(&nodes, &node, &format!("node {node}'s kubelet to stop reporting"), within, |n: Option<&Node>| {
        n.is_some_and(|n| {
            let ready = n.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            ready.is_some_and(|r| r.status != "True")
        })
    })
    .await;
    match gone {
        Ok(_) => format!("stopped: pod {pod} is terminating on node {node}, whose kubelet does not report (Ready is not True); only it, a force delete or the out-of-service taint can finish the deletion"),
        Err(_) => std::future::pending().await,
    }
}

impl Operation for RunRunbook {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.apply(cx).boxed()
    }

    fn runbook(&self) -> Option<&Runbook> {
        Some(&self.book)
    }
}
