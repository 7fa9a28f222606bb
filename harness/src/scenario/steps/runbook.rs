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
        for (ph, p) in &rb.placeholders {
            let real = match p.resolve {
                Resolve::ReleasePod | Resolve::PendingPod => cx.var("pod")?,
                Resolve::ClaimOfPod => continue, // captured from `describe`
            };
            let documented = runbook::documented_name(&p.documented, &cx.release);
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
            let out = match crate::process::run_command(&kubectl, &os, &env, None, self.command_timeout).await {
                Ok(o) => o,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    commands.push(serde_json::json!({"command": shown, "completed": false, "note": format!("stopped after {}s", self.command_timeout.as_secs())}));
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
                    let documented = runbook::documented_name(&p.documented, &cx.release);
                    if documented != v {
                        findings.push(serde_json::json!({"runbook": rb.name, "placeholder": ph, "documented": documented, "real": v}));
                    }
                }
                values.insert(ph.clone(), v);
            }
            commands.push(serde_json::json!({"command": shown, "completed": true}));
        }
        for f in &findings {
            cx.outcome.finding(f);
        }
        cx.outcome.record("runbook", serde_json::json!({"name": rb.name, "commands": commands}));
        cx.last_runbook = Some((rb.name.clone(), Instant::now()));
        Ok(())
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
