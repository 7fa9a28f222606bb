//! The guide's runbooks as data (`scenarios/runbooks/*.yaml`), filled in with the real names
//! found in the cluster and run with the pinned kubectl.
//!
//! Each placeholder carries the name the guide documents (`<releasename>-visor-0`) and how
//! the harness finds the real object. A documented name that matches nothing the chart
//! created is guide drift, reported next to the real name. Commands run as the guide writes
//! them; one that does not complete is guide drift too, with what an operator must do instead.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    pub name: String,
    pub symptom: String,
    pub placeholders: BTreeMap<String, Placeholder>,
    pub steps: Vec<RunbookStep>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Placeholder {
    /// The name as the guide writes it, with `<release>` / `<releasename>`.
    pub documented: String,
    /// How the harness finds the real object.
    pub resolve: Resolve,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Resolve {
    /// The release's StatefulSet pod (`${pod}`).
    ReleasePod,
    /// The release's pod stuck Pending (`${pod}`, checked to be Pending).
    PendingPod,
    /// The claim the pod mounts (found from the pod's spec, as `kubectl describe` shows it).
    ClaimOfPod,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunbookStep {
    pub say: String,
    pub kubectl: Vec<String>,
    /// Regexes over the command's output; group 1 becomes the placeholder of that name.
    #[serde(default)]
    pub capture: BTreeMap<String, String>,
    /// What an operator must do when the command, as the guide writes it, does not complete.
    #[serde(default)]
    pub instead: Option<String>,
}

impl Runbook {
    pub fn load(dir: &Path, name: &str) -> Result<Runbook> {
        let p = dir.join(format!("{name}.yaml"));
        if !p.is_file() {
            return Err(Error::Invalid(format!("runbook {name} not found (looked for {})", p.display())));
        }
        crate::yaml::from_file(&p)
    }
}

/// Fills `<name>` placeholders in a command's arguments.
pub fn fill(args: &[String], values: &BTreeMap<String, String>) -> Result<Vec<String>> {
    args.iter()
        .map(|a| {
            let mut out = a.clone();
            for (k, v) in values {
                out = out.replace(&format!("<{k}>"), v);
            }
            if let Some(start) = out.find('<') {
                if out[start..].contains('>') {
                    return Err(Error::Invalid(format!("runbook argument `{a}` has a placeholder nothing filled in")));
                }
            }
            Ok(out)
        })
        .collect()
}

/// The guide's documented name with the release filled in; `<N>` (a StatefulSet ordinal)
/// takes the ordinal of the `real` name it is compared with.
pub fn documented_name(doc: &str, release: &str, real: &str) -> String {
    let ordinal = real.rsplit_once('-').map(|(_, n)| n).filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())).unwrap_or("0");
    doc.replace("<releasename>", release).replace("<release>", release).replace("<N>", ordinal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_runbooks_parse() {
        let dir = crate::layout::Layout::embedded_in(&tempfile::tempdir().unwrap().keep()).unwrap().runbooks_dir();
        for name in ["volume-node-affinity-conflict", "multi-attach"] {
            let rb = Runbook::load(&dir, name).unwrap();
            assert!(!rb.steps.is_empty());
            assert!(rb.placeholders.contains_key("pod"));
        }
    }

    #[test]
    fn placeholders_are_filled_or_refused() {
        let mut v = BTreeMap::new();
        v.insert("pod".to_string(), "lily-x-0".to_string());
        assert_eq!(fill(&["describe".into(), "pod".into(), "<pod>".into()], &v).unwrap()[2], "lily-x-0");
        assert!(fill(&["<claim>".into()], &v).is_err());
        assert_eq!(documented_name("<releasename>-visor-0", "lily", "x"), "lily-visor-0");
        assert_eq!(documented_name("<releasename>-visor-<N>", "lily", "lily-rel-dev-mainnet-daemon-2"), "lily-visor-2");
    }
}
