//! Reviewed outcomes kept outside this repository (`suite --outcomes DIR`): each case's
//! normalised outcome is compared with `DIR/<case>.yaml` (`/` in a case name becomes `__`),
//! as `cargo test` compares them with `snapshots/scenarios/`. A difference fails the case
//! with a diff; a missing file fails it too, with the new outcome written beside as
//! `<case>.yaml.new` to review (insta's way); `--accept` writes the files instead.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where reviewed outcomes live, and whether to accept new ones.
#[derive(Debug, Clone)]
pub struct OutcomeCheck {
    pub dir: PathBuf,
    pub accept: bool,
}

impl OutcomeCheck {
    fn file(&self, case: &str) -> PathBuf {
        self.dir.join(format!("{}.yaml", case.replace('/', "__")))
    }

    /// Compares (or accepts) one case's outcome; `Ok(None)` when it matches or was accepted,
    /// `Ok(Some(why))` when the case must fail.
    pub fn check(&self, case: &str, outcome: &str) -> Result<Option<String>> {
        let file = self.file(case);
        let new = PathBuf::from(format!("{}.new", file.display()));
        if self.accept {
            std::fs::create_dir_all(&self.dir).map_err(Error::io(format!("create {}", self.dir.display())))?;
            std::fs::write(&file, outcome).map_err(Error::io(format!("write {}", file.display())))?;
            let _ = std::fs::remove_file(&new);
            return Ok(None);
        }
        let reviewed = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_new(&new, outcome)?;
                return Ok(Some(format!(
                    "no reviewed outcome {}; the new one is written beside it as {}: review it and rename it, or run with --accept",
                    file.display(),
                    new.display()
                )));
            }
            Err(e) => return Err(Error::Io { what: format!("read {}", file.display()), source: e }),
        };
        if reviewed == outcome {
            let _ = std::fs::remove_file(&new);
            return Ok(None);
        }
        write_new(&new, outcome)?;
        Ok(Some(format!(
            "the outcome differs from the reviewed {} (new one in {}; accept with --accept):\n{}",
            file.display(),
            new.display(),
            diff(&reviewed, outcome)
        )))
    }
}

fn write_new(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(Error::io(format!("create {}", d.display())))?;
    }
    std::fs::write(path, text).map_err(Error::io(format!("write {}", path.display())))
}

/// A unified diff, reviewed (-) against new (+).
pub fn diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new).unified_diff().context_radius(2).header("reviewed", "new").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_differing_matching_and_accepted_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let check = OutcomeCheck { dir: dir.path().to_path_buf(), accept: false };
        let why = check.check("multi-attach/node-gone", "a: 1\n").unwrap().unwrap();
        assert!(why.contains("no reviewed outcome") && why.contains("multi-attach__node-gone.yaml.new"), "{why}");
        assert_eq!(std::fs::read_to_string(dir.path().join("multi-attach__node-gone.yaml.new")).unwrap(), "a: 1\n");
        let accept = OutcomeCheck { accept: true, ..check.clone() };
        assert_eq!(accept.check("multi-attach/node-gone", "a: 1\n").unwrap(), None);
        assert!(!dir.path().join("multi-attach__node-gone.yaml.new").exists());
        assert_eq!(check.check("multi-attach/node-gone", "a: 1\n").unwrap(), None);
        let why = check.check("multi-attach/node-gone", "a: 2\n").unwrap().unwrap();
        assert!(why.contains("-a: 1") && why.contains("+a: 2"), "{why}");
    }
}
