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
    /// What produces it, the same for every version (what an outcome snapshot holds).
    pub origin: &'static str,
    /// The versions that word it so, and where that was read.
    pub versions: &'static str,
    /// Whether it is the wording the operators' guide quotes.
    pub as_guide: bool,
}

impl Wording {
    /// `origin, versions`, for messages.
    pub fn source(&self) -> String {
        format!("{}, {}", self.origin, self.versions)
    }
}

/// One catalogued event: the guide's quote and every wording seen per version.
#[derive(Debug)]
pub struct Entry {
    pub name: &'static str,
    pub reason: &'static str,
    /// What the operators' guide quotes.
    pub guide: &'static str,
    pub wordings: &'static [Wording],
}

/// Every catalogued event. Each wording was read in the source of the versions it names and
/// seen by the suite on a pinned version of that range (`tools.lock.toml`).
pub const CATALOGUE: &[Entry] = &[
    Entry {
        name: "volume-node-affinity-conflict",
        reason: "FailedScheduling",
        guide: "N node(s) had volume node affinity conflict",
        wordings: &[
            Wording {
                from_minor: 0,
                until_minor: 32,
                pattern: r"\d+ node\(s\) had volume node affinity conflict",
                origin: "kube-scheduler VolumeBinding",
                versions: "up to 1.32",
                as_guide: true,
            },
            Wording {
                from_minor: 33,
                until_minor: u32::MAX,
                pattern: r"\d+ node\(s\) didn't match PersistentVolume's node affinity",
                origin: "kube-scheduler VolumeBinding",
                versions: "from 1.33 (kubernetes#129887)",
                as_guide: false,
            },
        ],
    },
    Entry {
        name: "multi-attach",
        reason: "FailedAttachVolume",
        guide: "Multi-Attach error for volume ... Volume is already exclusively attached to one node and can't be attached to another",
        wordings: &[
            Wording {
                from_minor: 0,
                until_minor: 36,
                pattern: r#"Multi-Attach error for volume "[^"]+" Volume is already exclusively attached to one node and can't be attached to another"#,
                origin: "attach/detach controller, old pod gone",
                versions: "up to 1.36 (read in 1.35.4 and 1.36.3)",
                as_guide: true,
            },
            Wording {
                from_minor: 0,
                until_minor: 36,
                pattern: r#"Multi-Attach error for volume "[^"]+" Volume is already used by (pod\(s\) [^ ]+|\d+ pod\(s\) in different namespaces)"#,
                origin: "attach/detach controller, old pod still scheduled",
                versions: "up to 1.36 (read in 1.35.4 and 1.36.3)",
                as_guide: false,
            },
            Wording {
                from_minor: 37,
                until_minor: u32::MAX,
                pattern: r#"Waiting for detach for volume "[^"]+" Volume is already exclusively attached to one node, waiting on detach before it can be attached to another node"#,
                origin: "attach/detach controller, old pod gone",
                versions: "from 1.37 (kubernetes#138837)",
                as_guide: false,
            },
            Wording {
                from_minor: 37,
                until_minor: u32::MAX,
                pattern: r#"Waiting for detach for volume "[^"]+" Volume is already used by (pod\(s\) [^ ]+|\d+ pod\(s\) in different namespaces)"#,
                origin: "attach/detach controller, old pod still scheduled",
                versions: "from 1.37 (kubernetes#138837)",
                as_guide: false,
            },
        ],
    },
];

/// The minor version of a `v1.34.4`-style version string.
pub fn minor(version: &str) -> Option<u32> {
    version.trim_start_matches('v').split('.').nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// `1.34` of `v1.34.4` (for test names), or the version as given.
pub fn major_minor(version: &str) -> String {
    let v = version.trim_start_matches('v');
    let mut parts = v.split('.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{a}.{}", b.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(b)),
        _ => v.to_string(),
    }
}

pub fn entry(name: &str) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|e| e.name == name)
}

/// The reason and the wordings of `entry` that apply to `version`.
pub fn wordings(entry: &str, version: &str) -> Option<(&'static str, Vec<Wording>)> {
    let m = minor(version)?;
    let e = self::entry(entry)?;
    Some((e.reason, e.wordings.iter().copied().filter(|w| w.from_minor <= m && m <= w.until_minor).collect()))
}

fn is_match(w: &Wording, message: &str) -> bool {
    Regex::new(w.pattern).map(|r| r.is_match(message)).unwrap_or(false)
}

/// Which wording of `entry` for `version` `message` matches, if any.
pub fn matching(entry: &str, version: &str, message: &str) -> Option<Wording> {
    let (_, ws) = wordings(entry, version)?;
    ws.into_iter().find(|w| is_match(w, message))
}

/// A wording of `entry` that `message` matches although it is catalogued for other versions.
pub fn matching_elsewhere(entry: &str, message: &str) -> Option<Wording> {
    self::entry(entry)?.wordings.iter().copied().find(|w| is_match(w, message))
}

/// The event reason of a catalogue entry, if there is such an entry.
pub fn reason(entry: &str) -> Option<&'static str> {
    self::entry(entry).map(|e| e.reason)
}

pub fn names() -> Vec<&'static str> {
    CATALOGUE.iter().map(|e| e.name).collect()
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

    #[rstest]
    #[case(
        "v1.36.3",
        r#"Multi-Attach error for volume "pvc-1" Volume is already exclusively attached to one node and can't be attached to another"#,
        Some(true)
    )]
    #[case("v1.37.2", r#"Waiting for detach for volume "pvc-1" Volume is already exclusively attached to one node, waiting on detach before it can be attached to another node"#, Some(false))]
    #[case("v1.37.2", r#"Waiting for detach for volume "pvc-1" Volume is already used by pod(s) lily-0"#, Some(false))]
    #[case(
        "v1.37.2",
        r#"Multi-Attach error for volume "pvc-1" Volume is already exclusively attached to one node and can't be attached to another"#,
        None
    )]
    #[case("v1.34.4", r#"Waiting for detach for volume "pvc-1" Volume is already used by pod(s) lily-0"#, None)]
    fn multi_attach_is_reworded_in_1_37(#[case] v: &str, #[case] msg: &str, #[case] as_guide: Option<bool>) {
        assert_eq!(matching("multi-attach", v, msg).map(|w| w.as_guide), as_guide, "{v}: {msg}");
        // Whatever the version, the message is one the catalogue knows.
        assert!(matching_elsewhere("multi-attach", msg).is_some());
    }

    #[test]
    fn every_version_has_exactly_one_wording_per_origin() {
        for e in CATALOGUE {
            for m in 20..=40 {
                let ws: Vec<&str> = e.wordings.iter().filter(|w| w.from_minor <= m && m <= w.until_minor).map(|w| w.origin).collect();
                let mut unique = ws.clone();
                unique.sort();
                unique.dedup();
                assert!(!ws.is_empty() && unique.len() == ws.len(), "{} at 1.{m}: {ws:?}", e.name);
            }
            assert!(e.wordings.iter().any(|w| w.as_guide), "{}: no wording is the guide's", e.name);
        }
    }

    #[test]
    fn test_names_carry_major_and_minor() {
        assert_eq!(major_minor("v1.32.13"), "1.32");
        assert_eq!(major_minor("v1.34.4-k3s1"), "1.34");
        assert_eq!(major_minor("1.37"), "1.37");
    }

    #[test]
    fn every_pattern_compiles() {
        for e in CATALOGUE {
            for w in e.wordings {
                Regex::new(w.pattern).unwrap();
            }
        }
    }
}
