//! A scenario's normalised outcome: what each step observed, with everything that varies
//! between runs (namespaces, generated volume names, run ids, ports) replaced by stable
//! placeholders. It is what `snapshots/scenarios/` holds.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Observations, in step order, plus the replacements that make them stable.
#[derive(Debug, Default)]
pub struct Outcome {
    entries: Vec<Value>,
    /// real text -> placeholder
    names: BTreeMap<String, String>,
    counters: BTreeMap<String, usize>,
    pub findings: Vec<Value>,
    /// Findings whose occurrence depends on timing (a command that did not complete in its
    /// window): reported with the others, never in the snapshot.
    pub timing_findings: Vec<Value>,
    /// Findings that hold for some Kubernetes versions only (the guide's wording no longer
    /// used): reported, never in the snapshot, which holds for every version.
    pub version_findings: Vec<Value>,
}

impl Outcome {
    /// Records one observation (`{"step-kind": {...}}`).
    pub fn record(&mut self, kind: &str, value: impl Serialize) {
        let v = serde_json::to_value(value).unwrap_or(Value::Null);
        self.entries.push(serde_json::json!({ kind: v }));
    }

    /// Replaces `real` by `placeholder` everywhere in the outcome.
    pub fn name(&mut self, real: &str, placeholder: &str) {
        if !real.is_empty() {
            self.names.insert(real.to_string(), placeholder.to_string());
        }
    }

    /// A stable placeholder for a generated name of some class, numbered in order of first
    /// appearance: the first volume seen is `<volume-1>`, the next `<volume-2>`.
    pub fn generated(&mut self, class: &str, real: &str) -> String {
        if let Some(p) = self.names.get(real) {
            return p.clone();
        }
        let n = self.counters.entry(class.to_string()).or_insert(0);
        *n += 1;
        let p = format!("<{class}-{n}>");
        self.names.insert(real.to_string(), p.clone());
        p
    }

    pub fn finding(&mut self, value: impl Serialize) {
        self.findings.push(serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// A finding that a run may or may not see, depending on timing: reported, not snapshotted.
    pub fn timing_finding(&mut self, value: impl Serialize) {
        self.timing_findings.push(serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// A finding that depends on the cluster's Kubernetes version: reported, not snapshotted.
    pub fn version_finding(&mut self, value: impl Serialize) {
        self.version_findings.push(serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// The conformance findings, one line each, normalised like the outcome.
    pub fn finding_lines(&self) -> Vec<String> {
        let reps = self.replacements();
        self.findings
            .iter()
            .chain(&self.timing_findings)
            .chain(&self.version_findings)
            .map(|f| {
                let line = finding_line(f);
                let mut v = Value::String(line);
                normalise_value(&mut v, &reps);
                v.as_str().unwrap_or_default().to_string()
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The outcome as stable YAML.
    pub fn render(&self, scenario: &str) -> String {
        let mut doc = serde_json::json!({ "scenario": scenario, "observed": self.entries });
        if !self.findings.is_empty() {
            doc["conformance-findings"] = Value::Array(self.findings.clone());
        }
        normalise_value(&mut doc, &self.replacements());
        crate::yaml::to_string(&doc).unwrap_or_default()
    }

    fn replacements(&self) -> Vec<(String, String)> {
        let mut r: Vec<(String, String)> = self.names.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
        // Longest first, so a name that contains another is replaced whole.
        r.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        r
    }
}

/// One line for a finding: its own sentence, or what the guide documents against what the
/// chart created.
fn finding_line(f: &Value) -> String {
    if let Some(s) = f.get("finding").and_then(Value::as_str) {
        return format!("finding: {s}");
    }
    if let Some(s) = f.get("drift").and_then(Value::as_str) {
        return format!("guide drift: {s}");
    }
    match (f.get("runbook"), f.get("placeholder"), f.get("documented"), f.get("real")) {
        (Some(rb), Some(ph), Some(doc), Some(real)) => format!(
            "guide drift: runbook {} names <{}> `{}`; the chart's is `{}`",
            rb.as_str().unwrap_or_default(),
            ph.as_str().unwrap_or_default(),
            doc.as_str().unwrap_or_default(),
            real.as_str().unwrap_or_default()
        ),
        _ => format!("finding: {f}"),
    }
}

fn normalise_value(v: &mut Value, reps: &[(String, String)]) {
    match v {
        Value::String(s) => {
            for (real, ph) in reps {
                if s.contains(real.as_str()) {
                    *s = s.replace(real.as_str(), ph);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalise_value(x, reps)),
        Value::Object(o) => o.values_mut().for_each(|x| normalise_value(x, reps)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_become_stable_placeholders() {
        let mut o = Outcome::default();
        o.name("install-r1234abcd", "<namespace>");
        let v1 = o.generated("volume", "pvc-0a1b");
        let v2 = o.generated("volume", "pvc-9f9f");
        assert_eq!((v1.as_str(), v2.as_str()), ("<volume-1>", "<volume-2>"));
        assert_eq!(o.generated("volume", "pvc-0a1b"), "<volume-1>");
        o.record(
            "claim",
            serde_json::json!({"volume": "pvc-0a1b", "ns": "install-r1234abcd", "msg": "volume \"pvc-9f9f\" in install-r1234abcd"}),
        );
        let text = o.render("x");
        assert!(!text.contains("pvc-0a1b") && !text.contains("r1234abcd"), "{text}");
        assert!(text.contains("<volume-2>\\\" in <namespace>") || text.contains("<volume-2>\" in <namespace>"), "{text}");
    }

    #[test]
    fn two_outcomes_with_different_generated_names_render_identically() {
        let make = |vol: &str, ns: &str| {
            let mut o = Outcome::default();
            o.name(ns, "<namespace>");
            let p = o.generated("volume", vol);
            o.record("claim", serde_json::json!({"volume": p, "namespace": ns}));
            o.render("s")
        };
        assert_eq!(make("pvc-1", "a-r1"), make("pvc-2", "a-r2"));
    }
}
