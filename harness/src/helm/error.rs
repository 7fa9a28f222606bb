//! What can go wrong with helm: the chart or the release (helm ran and said no), or the
//! harness's use of it.

/// A helm failure. Messages are lowercase fragments; helm's own words are the end of its
/// stderr (never stdout: it may hold rendered manifests, secrets included).
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// helm ran and exited non-zero.
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Failed { command: String, status: String, stderr: String },
    /// helm could not find the asked version; `known` is what the repository has.
    #[error("chart {chart} has no version {version}; the repository has {}\n{helm}", list(.known))]
    NoSuchVersion { chart: String, version: String, known: Vec<String>, helm: Box<HelmError> },
    /// The local chart repository does not serve the asked version.
    #[error("chart {chart} has no version {version} in the local repository; it has {}", .known.join(", "))]
    UnknownVersion { chart: String, version: String, known: Vec<String> },
    /// helm could not be started.
    #[error("cannot run `{command}`")]
    Run {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// helm succeeded but did not do what the harness relies on.
    #[error("{0}")]
    Unexpected(String),
}

fn list(known: &[String]) -> String {
    if known.is_empty() {
        "no versions".to_string()
    } else {
        known.join(", ")
    }
}

impl HelmError {
    /// When helm could not render the chart (a template that does not parse or execute, or
    /// renders invalid YAML): the template helm names and helm's words about it.
    pub fn render_failure(&self) -> Option<(String, String)> {
        let HelmError::Failed { stderr, .. } = self else { return None };
        let re = regex::Regex::new(
            r"(?m)(?:YAML parse error on |template: |parse error (?:at|in) \(?)([A-Za-z0-9_.-]+/templates/[A-Za-z0-9_./-]+?)(?::\d+(?::\d+)?)?[:)\s]",
        )
        .expect("static regex");
        let line = stderr.lines().rev().find(|l| re.is_match(l))?;
        let template = re.captures(line)?.get(1)?.as_str().to_string();
        Some((template, line.trim().trim_start_matches("Error: ").to_string()))
    }

    /// Whether this is helm (or the repository) refusing what the scenario asked of the
    /// chart, rather than the harness failing to run helm.
    pub fn is_chart_failure(&self) -> bool {
        matches!(self, HelmError::Failed { .. } | HelmError::NoSuchVersion { .. } | HelmError::UnknownVersion { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_helms_words_and_say_whose_they_are() {
        let f = HelmError::Failed { command: "helm upgrade lily".into(), status: "exit status: 1".into(), stderr: "Error: boom".into() };
        assert_eq!(f.to_string(), "`helm upgrade lily` failed (exit status: 1):\nError: boom");
        assert!(f.is_chart_failure());
        let v = HelmError::UnknownVersion { chart: "lily".into(), version: "9.9.9".into(), known: vec!["0.1.0".into(), "0.2.0".into()] };
        assert_eq!(v.to_string(), "chart lily has no version 9.9.9 in the local repository; it has 0.1.0, 0.2.0");
        let parse = HelmError::Failed {
            command: "helm upgrade lily".into(),
            status: "exit status: 1".into(),
            stderr: "Error: UPGRADE FAILED: YAML parse error on lily/templates/app.yaml: error converting YAML to JSON: yaml: line 33: mapping values are not allowed in this context".into(),
        };
        let (template, said) = parse.render_failure().expect("a render failure");
        assert_eq!(template, "lily/templates/app.yaml");
        assert!(said.starts_with("UPGRADE FAILED: YAML parse error on lily/templates/app.yaml") && said.contains("line 33"), "{said}");
        let exec = HelmError::Failed {
            command: "helm template".into(),
            status: "exit status: 1".into(),
            stderr:
                "Error: template: lily/templates/app.yaml:2:4: executing \"lily/templates/app.yaml\" at <include>: error calling include"
                    .into(),
        };
        assert_eq!(exec.render_failure().map(|(t, _)| t).as_deref(), Some("lily/templates/app.yaml"));
        assert!(f.render_failure().is_none());
        let r = HelmError::Run { command: "helm version".into(), source: std::io::Error::other("gone") };
        assert!(!r.is_chart_failure());
    }
}
