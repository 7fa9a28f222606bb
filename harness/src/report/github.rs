//! GitHub Actions: a log group per finished case (its steps with timings, findings, notes),
//! an `::error` annotation per failed or errored case, and a Markdown summary for
//! `$GITHUB_STEP_SUMMARY` (cases, findings, slowest steps, time to recovery).
//!
//! Cases run in parallel, so a group is printed when its case finishes, from what the
//! reporter collected, rather than around interleaved log lines.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{CaseOutcome, CaseReport, Counts, Event, Reporter};

/// A finished step: its label, how long it took, whether it succeeded.
type StepLine = (String, Duration, bool);

#[derive(Default)]
pub struct GitHub {
    steps: Mutex<BTreeMap<String, Vec<StepLine>>>,
}

/// Escapes a workflow command's message (`%`, CR, LF).
pub fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

impl GitHub {
    /// The lines for one finished case: a group, and an annotation when it did not pass.
    pub fn case_lines(&self, r: &CaseReport) -> Vec<String> {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner()).remove(&r.name).unwrap_or_default();
        let mut out = vec![format!("::group::{} {} ({:.1}s)", r.outcome.word(), r.name, r.duration.as_secs_f64())];
        for (step, took, ok) in steps {
            out.push(format!("  {} {step} {:.1}s", if ok { "ok  " } else { "FAIL" }, took.as_secs_f64()));
        }
        out.extend(r.findings.iter().map(|f| format!("  {f}")));
        out.extend(r.notes.iter().map(|n| format!("  {n}")));
        match &r.outcome {
            CaseOutcome::Failed { step, message } | CaseOutcome::Errored { step, message } => out.push(format!("  step {step}: {message}")),
            CaseOutcome::Skipped { reason } => out.push(format!("  skipped: {reason}")),
            CaseOutcome::Passed => {}
        }
        out.push("::endgroup::".into());
        match &r.outcome {
            CaseOutcome::Failed { step, message } => {
                out.push(format!("::error title={}::{}", escape(&format!("{} failed", r.name)), escape(&format!("step {step}: {message}"))))
            }
            CaseOutcome::Errored { step, message } => out.push(format!(
                "::error title={}::{}",
                escape(&format!("{} errored (harness)", r.name)),
                escape(&format!("step {step}: {message}"))
            )),
            _ => {}
        }
        out
    }
}

impl Reporter for GitHub {
    fn on(&self, event: &Event<'_>) {
        match event {
            Event::StepFinished { case, step, took, ok } => {
                self.steps.lock().unwrap_or_else(|e| e.into_inner()).entry(case.to_string()).or_default().push((
                    step.to_string(),
                    *took,
                    *ok,
                ))
            }
            Event::CaseFinished { report } => {
                for l in self.case_lines(report) {
                    println!("{l}");
                }
            }
            _ => {}
        }
    }
}

/// The Markdown summary of a run.
pub fn markdown(results: &[CaseReport], wall: Duration) -> String {
    let c = Counts::of(results);
    let mut s = format!(
        "## lily-e2e: {} passed, {} failed, {} errored, {} skipped ({:.0}s)\n\n| case | outcome | time | slowest step |\n|---|---|---|---|\n",
        c.passed,
        c.failed,
        c.errored,
        c.skipped,
        wall.as_secs_f64()
    );
    for r in results {
        let slow = r.slowest_step.as_ref().map(|(k, d)| format!("{k} {:.1}s", d.as_secs_f64())).unwrap_or_default();
        s.push_str(&format!("| `{}` | {} | {:.1}s | {slow} |\n", r.name, r.outcome.word(), r.duration.as_secs_f64()));
    }
    let failures: Vec<&CaseReport> =
        results.iter().filter(|r| matches!(r.outcome, CaseOutcome::Failed { .. } | CaseOutcome::Errored { .. })).collect();
    if !failures.is_empty() {
        s.push_str("\n### Failures\n\n");
        for r in failures {
            if let CaseOutcome::Failed { step, message } | CaseOutcome::Errored { step, message } = &r.outcome {
                s.push_str(&format!("- `{}` step {step}:\n  ```\n  {}\n  ```\n", r.name, message.replace('\n', "\n  ")));
            }
        }
    }
    let findings: Vec<String> = results.iter().flat_map(|r| r.findings.iter().map(move |f| format!("- `{}`: {f}", r.name))).collect();
    if !findings.is_empty() {
        s.push_str("\n### Conformance findings\n\n");
        s.push_str(&findings.join("\n"));
        s.push('\n');
    }
    let recovery: Vec<String> = results.iter().flat_map(|r| r.notes.iter().map(move |n| format!("- `{}`: {n}", r.name))).collect();
    if !recovery.is_empty() {
        s.push_str("\n### Time to recovery\n\n");
        s.push_str(&recovery.join("\n"));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_annotations_and_summary() {
        let gh = GitHub::default();
        gh.on(&Event::StepFinished { case: "upgrade", step: "3 (helm-upgrade)", took: Duration::from_secs(3), ok: false });
        let mut r = CaseReport::errored("upgrade", "3 (helm-upgrade)", "helm failed\nError: 50% off", Duration::from_secs(4));
        r.outcome = CaseOutcome::Failed { step: "3 (helm-upgrade)".into(), message: "helm failed\nError: 50% off".into() };
        r.findings.push("finding: the runbook did not recover".into());
        let lines = gh.case_lines(&r);
        assert_eq!(lines[0], "::group::FAIL upgrade (4.0s)");
        assert!(lines.contains(&"  FAIL 3 (helm-upgrade) 3.0s".to_string()), "{lines:?}");
        assert!(
            lines.iter().any(|l| l == "::error title=upgrade failed::step 3 (helm-upgrade): helm failed%0AError: 50%25 off"),
            "{lines:?}"
        );
        let md = markdown(&[r], Duration::from_secs(9));
        assert!(
            md.contains("0 passed, 1 failed") && md.contains("| `upgrade` | FAIL |") && md.contains("### Conformance findings"),
            "{md}"
        );
    }
}
