//! `outcomes.json`: every case of a run, machine-readable (outcome, the step and message of
//! a failure, findings, notes, timings), for CI tools and dashboards.

use std::path::Path;

use serde_json::json;

use super::junit::RunMeta;
use super::{CaseOutcome, CaseReport};
use crate::error::{Error, Result};

pub fn write_outcomes(path: &Path, results: &[CaseReport], meta: &RunMeta) -> Result<()> {
    let cases: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let (outcome, step, message) = match &r.outcome {
                CaseOutcome::Passed => ("passed", None, None),
                CaseOutcome::Failed { step, message } => ("failed", Some(step), Some(message)),
                CaseOutcome::Errored { step, message } => ("errored", Some(step), Some(message)),
                CaseOutcome::Skipped { reason } => ("skipped", None, Some(reason)),
            };
            json!({
                "name": r.name,
                "test": meta.test_name(&r.name),
                "outcome": outcome,
                "step": step,
                "message": message,
                "seconds": r.duration.as_secs_f64(),
                "slowest-step": r.slowest_step.as_ref().map(|(k, d)| json!({"kind": k, "seconds": d.as_secs_f64()})),
                "findings": r.findings,
                "notes": r.notes,
                "artifacts": r.artifacts,
            })
        })
        .collect();
    let c = super::Counts::of(results);
    let doc = json!({
        "started": meta.started.to_rfc3339(),
        "seconds": meta.wall.as_secs_f64(),
        "hostname": meta.hostname,
        "kubernetes": meta.kubernetes,
        "counts": {"passed": c.passed, "failed": c.failed, "errored": c.errored, "skipped": c.skipped},
        "cases": cases,
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    }
    let text = serde_json::to_string_pretty(&doc).map_err(Error::json("the outcomes"))?;
    std::fs::write(path, text + "\n").map_err(Error::io(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_case_with_its_outcome_and_findings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outcomes.json");
        let mut a = CaseReport::skipped("upgrade", "needs a previous version: add --chart OLD");
        a.findings.push("finding: x".into());
        let b = CaseReport::errored("install", "set-up", "etcd exited", Duration::from_secs(2));
        write_outcomes(&p, &[a, b], &RunMeta::now(Duration::from_secs(5))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["counts"]["skipped"], 1);
        assert_eq!(v["counts"]["errored"], 1);
        assert_eq!(v["cases"][0]["outcome"], "skipped");
        assert_eq!(v["cases"][0]["findings"][0], "finding: x");
        assert_eq!(v["cases"][1]["step"], "set-up");
    }
}
