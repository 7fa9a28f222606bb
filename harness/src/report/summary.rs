//! The one-screen summary: a line per case, then the count of each outcome.

use super::{CaseOutcome, CaseReport, Counts};

pub fn summary(results: &[CaseReport]) -> String {
    let mut s = String::new();
    for r in results {
        let slow = r.slowest_step.as_ref().map(|(n, d)| format!("  (slowest: {n} {:.1}s)", d.as_secs_f64())).unwrap_or_default();
        s.push_str(&format!("{:<5} {:<52} {:>6.1}s{slow}\n", r.outcome.word(), r.name, r.duration.as_secs_f64()));
        for n in &r.notes {
            s.push_str(&format!("      {n}\n"));
        }
        for f in &r.findings {
            s.push_str(&format!("      {f}\n"));
        }
        match &r.outcome {
            CaseOutcome::Failed { step, message } | CaseOutcome::Errored { step, message } => {
                // The first line says what failed; a tool's own words (helm's stderr) end the message.
                let mut lines = message.lines().filter(|l| !l.trim().is_empty());
                s.push_str(&format!("      step {step}: {}\n", lines.next().unwrap_or("")));
                let rest: Vec<&str> = lines.collect();
                // helm's and kubectl's words start with `Error:`; else the last line.
                if let Some(last) = rest.iter().rev().find(|l| l.trim_start().starts_with("Error:")).or(rest.last()) {
                    s.push_str(&format!("        {}\n", last.trim()));
                }
                if let Some(a) = &r.artifacts {
                    s.push_str(&format!("      artifacts: {}\n", a.display()));
                }
            }
            CaseOutcome::Skipped { reason } => s.push_str(&format!("      {reason}\n")),
            CaseOutcome::Passed => {}
        }
    }
    let c = Counts::of(results);
    s.push_str(&format!("{} passed, {} failed, {} errored, {} skipped\n", c.passed, c.failed, c.errored, c.skipped));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_summary_counts_every_outcome() {
        let mk = |name: &str, outcome| CaseReport {
            name: name.into(),
            duration: Duration::from_secs(1),
            outcome,
            slowest_step: None,
            artifacts: None,
            notes: vec![],
            timeline: Default::default(),
            findings: vec!["guide drift: runbook multi-attach names <pod> `lily-lily-0`; the chart's is `lily-x-0`".into()],
        };
        let s = summary(&[
            mk("install", CaseOutcome::Passed),
            mk("upgrade", CaseOutcome::Failed { step: "3 (expect-claim)".into(), message: "timed out\nmore".into() }),
            mk("x", CaseOutcome::Errored { step: "set-up".into(), message: "etcd exited".into() }),
            mk("y", CaseOutcome::Skipped { reason: "needs the fixture".into() }),
        ]);
        assert!(s.ends_with("1 passed, 1 failed, 1 errored, 1 skipped\n"), "{s}");
        assert!(s.contains("FAIL  upgrade") && s.contains("step 3 (expect-claim): timed out\n        more\n"), "{s}");
        assert!(s.contains("SKIP  y") && s.contains("needs the fixture"), "{s}");
        assert!(s.contains("      guide drift: runbook multi-attach"), "{s}");
    }
}
