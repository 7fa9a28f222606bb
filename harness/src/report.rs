//! Reports: JUnit XML for chart CI and a one-screen summary.

use std::path::Path;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::error::{Error, Result};

/// The result of one scenario case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// `install`, `pvc-node-affinity-conflict/upgrade-moves-pod`.
    pub name: String,
    pub duration: Duration,
    pub outcome: CaseOutcome,
    /// The slowest step and how long it took.
    pub slowest_step: Option<(String, Duration)>,
    pub artifacts: Option<std::path::PathBuf>,
    /// Facts that vary run to run (time to recovery); shown, never snapshotted.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum CaseOutcome {
    Passed,
    /// `step` names the failing step, `message` what was expected and the last state seen.
    Failed {
        step: String,
        message: String,
    },
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        matches!(self.outcome, CaseOutcome::Passed)
    }
}

/// Writes a JUnit file: one testsuite `lily-e2e`, one testcase per scenario case, with a
/// stable classname (`lily-e2e.<scenario>`) and name (the case, or the scenario).
pub fn write_junit(path: &Path, results: &[CaseResult]) -> Result<()> {
    let mut report = Report::new("lily-e2e");
    let mut suite = TestSuite::new("lily-e2e");
    for r in results {
        let (scenario, case) = r.name.split_once('/').unwrap_or((&r.name, &r.name));
        let status = match &r.outcome {
            CaseOutcome::Passed => TestCaseStatus::success(),
            CaseOutcome::Failed { step, message } => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!("step {step} failed"));
                s.set_description(message.clone());
                s
            }
        };
        let mut tc = TestCase::new(case.to_string(), status);
        tc.set_classname(format!("lily-e2e.{scenario}"));
        tc.set_time(r.duration);
        if let Some(a) = &r.artifacts {
            tc.set_system_out(format!("artifacts: {}", a.display()));
        }
        suite.add_test_case(tc);
    }
    report.add_test_suite(suite);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    }
    let xml = report.to_string().map_err(|e| Error::Tool { what: "cannot render the junit report".into(), source: Some(Box::new(e)) })?;
    std::fs::write(path, xml).map_err(Error::io(format!("write {}", path.display())))
}

/// A one-screen summary: a line per case, then the totals.
pub fn summary(results: &[CaseResult]) -> String {
    let mut s = String::new();
    for r in results {
        let mark = if r.passed() { "PASS" } else { "FAIL" };
        let slow = r.slowest_step.as_ref().map(|(n, d)| format!("  (slowest: {n} {:.1}s)", d.as_secs_f64())).unwrap_or_default();
        s.push_str(&format!("{mark} {:<52} {:>6.1}s{slow}\n", r.name, r.duration.as_secs_f64()));
        for n in &r.notes {
            s.push_str(&format!("     {n}\n"));
        }
        if let CaseOutcome::Failed { step, message } = &r.outcome {
            s.push_str(&format!("     step {step}: {}\n", message.lines().next().unwrap_or("")));
            if let Some(a) = &r.artifacts {
                s.push_str(&format!("     artifacts: {}\n", a.display()));
            }
        }
    }
    let passed = results.iter().filter(|r| r.passed()).count();
    s.push_str(&format!("{} passed, {} failed\n", passed, results.len() - passed));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_has_one_case_per_scenario_and_names_the_failing_step() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.xml");
        let results = vec![
            CaseResult {
                name: "install".into(),
                duration: Duration::from_secs(3),
                outcome: CaseOutcome::Passed,
                slowest_step: None,
                artifacts: None,
                notes: vec![],
            },
            CaseResult {
                name: "multi-attach/node-gone".into(),
                duration: Duration::from_secs(9),
                outcome: CaseOutcome::Failed { step: "expect-event".into(), message: "timed out".into() },
                slowest_step: None,
                artifacts: None,
                notes: vec![],
            },
        ];
        write_junit(&p, &results).unwrap();
        let xml = std::fs::read_to_string(&p).unwrap();
        assert!(xml.contains(r#"classname="lily-e2e.install""#), "{xml}");
        assert!(xml.contains(r#"name="node-gone""#) && xml.contains(r#"classname="lily-e2e.multi-attach""#), "{xml}");
        assert!(xml.contains("step expect-event failed"), "{xml}");
        assert!(xml.contains(r#"tests="2""#) && xml.contains(r#"failures="1""#), "{xml}");
        let s = summary(&results);
        assert!(s.ends_with("1 passed, 1 failed\n"), "{s}");
    }
}
