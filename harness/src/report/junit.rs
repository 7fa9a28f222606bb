//! JUnit XML for chart CI: one testsuite `lily-e2e`, one testcase per scenario case, with a
//! stable classname (`lily-e2e.<scenario>`) and name (the case, or the scenario, with the
//! Kubernetes version it ran on: `slow-unmount@1.32`). Failed
//! cases are `<failure>`, errored ones `<error>`, skipped ones `<skipped>` with the reason.

use std::path::Path;

use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::{CaseOutcome, CaseReport};
use crate::error::{Error, Result};

/// When and where a run happened, for the testsuite's attributes.
#[derive(Debug, Clone)]
pub struct RunMeta {
    pub started: chrono::DateTime<chrono::FixedOffset>,
    pub wall: Duration,
    pub hostname: String,
    /// The Kubernetes version the cases ran on (`v1.32.13`), when known.
    pub kubernetes: Option<String>,
}

impl RunMeta {
    /// A run that started `wall` ago, on this host.
    pub fn now(wall: Duration) -> RunMeta {
        let now = chrono::Local::now().fixed_offset();
        let started = now - chrono::Duration::from_std(wall).unwrap_or_default();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        RunMeta { started, wall, hostname, kubernetes: None }
    }

    pub fn on_kubernetes(mut self, version: Option<String>) -> RunMeta {
        self.kubernetes = version;
        self
    }

    /// `NAME@1.32`, or `NAME` when the version is not known.
    pub fn test_name(&self, name: &str) -> String {
        match &self.kubernetes {
            Some(v) => format!("{name}@{}", crate::scenario::catalogue::major_minor(v)),
            None => name.to_string(),
        }
    }
}

pub fn write_junit(path: &Path, results: &[CaseReport], meta: &RunMeta) -> Result<()> {
    let mut report = Report::new("lily-e2e");
    let mut suite = TestSuite::new("lily-e2e");
    suite.set_timestamp(meta.started);
    suite.set_time(meta.wall);
    if !meta.hostname.is_empty() {
        suite.extra.insert("hostname".into(), meta.hostname.clone().into());
    }
    if let Some(v) = &meta.kubernetes {
        suite.add_property(Property::new("kubernetes", v.clone()));
    }
    report.set_timestamp(meta.started);
    report.set_time(meta.wall);
    for r in results {
        let (scenario, case) = r.name.split_once('/').unwrap_or((&r.name, &r.name));
        let status = match &r.outcome {
            CaseOutcome::Passed => TestCaseStatus::success(),
            CaseOutcome::Failed { step, message } | CaseOutcome::Errored { step, message } => {
                let (kind, verb) = match r.outcome {
                    CaseOutcome::Failed { .. } => (NonSuccessKind::Failure, "failed"),
                    _ => (NonSuccessKind::Error, "errored"),
                };
                let mut s = TestCaseStatus::non_success(kind);
                s.set_message(format!("step {step} {verb}"));
                s.set_description(message.clone());
                s
            }
            CaseOutcome::Skipped { reason } => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(reason.clone());
                s
            }
        };
        let mut tc = TestCase::new(meta.test_name(case), status);
        tc.set_classname(format!("lily-e2e.{scenario}"));
        tc.set_time(r.duration);
        // What a reader of the CI report needs besides the verdict: findings (also as
        // properties, for tools), notes such as time to recovery, where artifacts are.
        let mut out = Vec::new();
        for (i, f) in r.findings.iter().enumerate() {
            tc.properties.push(Property::new(format!("finding.{}", i + 1), f.clone()));
            out.push(f.clone());
        }
        out.extend(r.notes.iter().cloned());
        if let Some(a) = &r.artifacts {
            out.push(format!("artifacts: {}", a.display()));
        }
        if !out.is_empty() {
            tc.set_system_out(out.join("\n"));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, outcome: CaseOutcome) -> CaseReport {
        CaseReport {
            name: name.into(),
            duration: Duration::from_secs(3),
            outcome,
            slowest_step: None,
            artifacts: None,
            notes: vec![],
            findings: vec![],
            timeline: Default::default(),
        }
    }

    #[test]
    fn each_outcome_maps_to_its_junit_element() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.xml");
        let results = vec![
            case("install", CaseOutcome::Passed),
            case("multi-attach/node-gone", CaseOutcome::Failed { step: "expect-event".into(), message: "timed out".into() }),
            case("upgrade", CaseOutcome::Errored { step: "set-up".into(), message: "etcd exited".into() }),
            case("upgrade-forbidden-vct", CaseOutcome::Skipped { reason: "it needs the fixture chart".into() }),
        ];
        let mut results = results;
        results[0].findings = vec!["guide drift: runbook multi-attach names <pod> `lily-lily-0`; the chart's is `lily-x-0`".into()];
        results[0].notes = vec!["pod Running 1.2s after runbook multi-attach".into()];
        write_junit(&p, &results, &RunMeta::now(Duration::from_secs(9))).unwrap();
        let xml = std::fs::read_to_string(&p).unwrap();
        assert!(xml.contains(r#"classname="lily-e2e.install""#), "{xml}");
        assert!(xml.contains(r#"name="node-gone""#) && xml.contains(r#"classname="lily-e2e.multi-attach""#), "{xml}");
        assert!(xml.contains("step expect-event failed") && xml.contains("<failure"), "{xml}");
        assert!(xml.contains("step set-up errored") && xml.contains("<error"), "{xml}");
        assert!(xml.contains("<skipped") && xml.contains("it needs the fixture chart"), "{xml}");
        assert!(xml.contains(r#"tests="4""#) && xml.contains(r#"failures="1""#) && xml.contains(r#"errors="1""#), "{xml}");
        assert!(xml.contains("timestamp=") && xml.contains(r#"time="9"#), "{xml}");
        assert!(xml.contains(r#"<property name="finding.1""#) && xml.contains("<system-out>guide drift"), "{xml}");
        assert!(xml.contains("pod Running 1.2s after runbook"), "{xml}");
    }

    #[test]
    fn test_names_carry_the_kubernetes_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.xml");
        let results = vec![case("install", CaseOutcome::Passed), case("multi-attach/slow-unmount", CaseOutcome::Passed)];
        let meta = RunMeta::now(Duration::from_secs(9)).on_kubernetes(Some("v1.32.13".into()));
        write_junit(&p, &results, &meta).unwrap();
        let xml = std::fs::read_to_string(&p).unwrap();
        assert!(xml.contains(r#"name="install@1.32""#) && xml.contains(r#"name="slow-unmount@1.32""#), "{xml}");
        assert!(xml.contains(r#"classname="lily-e2e.multi-attach""#), "{xml}");
        assert!(xml.contains(r#"<property name="kubernetes" value="v1.32.13""#), "{xml}");
    }
}
