//! Known wordings of the events the guide's failures produce, per Kubernetes version.
//!
//! Kubernetes rewords messages between releases; a scenario names a catalogue entry and the
//! wording for the running version is matched, so a silent rewording is caught rather than
//! papered over by a loose regex.

use regex::Regex;

/// One wording, valid for minor versions `from..=until` of Kubernetes 1.x.
#[derive(Debug, Clone, Copy)]
pub struct Wording {
    pub from_minor: u32,
    pub until_minor: u32,
    pub pattern: &'static str,
    /// Where the wording comes from, for the failure message.
    pub source: &'static str,
}

/// Every catalogued event: `(entry name, reason, wordings)`.
pub const CATALOGUE: &[(&str, &str, &[Wording])] = &[
    (
        "volume-node-affinity-conflict",
        "FailedScheduling",
        &[
            Wording {
                from_minor: 0,
                until_minor: 32,
                pattern: r"\d+ node\(s\) had volume node affinity conflict",
                source: "kube-scheduler VolumeBinding, up to 1.32",
            },
            Wording {
                from_minor: 33,
                until_minor: u32::MAX,
                pattern: r"\d+ node\(s\) didn't match PersistentVolume's node affinity",
                source: "kube-scheduler VolumeBinding, from 1.33",
            },
        ],
    ),
    (
        "multi-attach",
        "FailedAttachVolume",
        &[
            Wording {
                from_minor: 0,
                until_minor: u32::MAX,
                pattern: r#"Multi-Attach error for volume "[^"]+" Volume is already exclusively attached to one node and can't be attached to another"#,
                source: "attach/detach controller, old pod gone",
            },
            Wording {
                from_minor: 0,
                until_minor: u32::MAX,
                pattern: r#"Multi-Attach error for volume "[^"]+" Volume is already used by (pod\(s\) [^ ]+|\d+ pod\(s\) in different namespaces)"#,
                source: "attach/detach controller, old pod still scheduled",
            },
        ],
    ),
];

/// The minor version of a `v1.34.4`-style version string.
pub fn minor(version: &str) -> Option<u32> {
    version.trim_start_matches('v').split('.').nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The reason and the wordings of `entry` that apply to `version`.
pub fn wordings(entry: &str, version: &str) -> Option<(&'static str, Vec<Wording>)> {
    let m = minor(version)?;
    let (_, reason, ws) = CATALOGUE.iter().find(|(n, _, _)| *n == entry)?;
    Some((reason, ws.iter().copied().filter(|w| w.from_minor <= m && m <= w.until_minor).collect()))
}

/// Which wording of `entry` for `version` `message` matches, if any.
pub fn matching(entry: &str, version: &str, message: &str) -> Option<Wording> {
    let (_, ws) = wordings(entry, version)?;
    ws.into_iter().find(|w| Regex::new(w.pattern).map(|r| r.is_match(message)).unwrap_or(false))
}

/// The event reason of a catalogue entry, if there is such an entry.
pub fn reason(entry: &str) -> Option<&'static str> {
    CATALOGUE.iter().find(|(n, _, _)| *n == entry).map(|(_, r, _)| *r)
}

pub fn names() -> Vec<&'static str> {
    CATALOGUE.iter().map(|(n, _, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        "v1.32.1",
        "0/3 nodes are available: 1 node(s) had volume node affinity conflict, 2 node(s) didn't match Pod's node affinity/selector.",
        true
    )]
    #[case("v1.34.4", "0/3 nodes are available: 1 node(s) had volume node affinity conflict.", false)]
    #[case("v1.34.4", "0/3 nodes are available: 2 node(s) didn't match PersistentVolume's node affinity, 1 node(s) didn't match Pod's node affinity/selector.", true)]
    #[case("v1.33.0", "0/3 nodes are available: 3 node(s) didn't match PersistentVolume's node affinity.", true)]
    #[case("v1.34.4", "0/3 nodes are available: 3 Insufficient cpu.", false)]
    fn node_affinity_wording_follows_the_version(#[case] v: &str, #[case] msg: &str, #[case] hit: bool) {
        assert_eq!(matching("volume-node-affinity-conflict", v, msg).is_some(), hit);
    }

    #[rstest]
    #[case(
        r#"Multi-Attach error for volume "pvc-123" Volume is already exclusively attached to one node and can't be attached to another"#,
        true
    )]
    #[case(r#"Multi-Attach error for volume "pvc-123" Volume is already used by pod(s) lily-0"#, true)]
    #[case(r#"AttachVolume.Attach failed for volume "pvc-123""#, false)]
    fn multi_attach_wordings(#[case] msg: &str, #[case] hit: bool) {
        assert_eq!(matching("multi-attach", "v1.34.4", msg).is_some(), hit);
    }

    #[test]
    fn every_pattern_compiles() {
        for (_, _, ws) in CATALOGUE {
            for w in *ws {
                Regex::new(w.pattern).unwrap();
            }
        }
    }
}
