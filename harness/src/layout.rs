//! Where scenario files, values files, runbooks and the fixture chart come from.
//!
//! A [`Layout`] is rooted at one directory with the shape of this repository's `scenarios/`:
//! `*.yaml` scenario files, `values/`, `runbooks/` and `charts/lily`. The binary carries a
//! copy of the repository's `scenarios/` ([`Layout::embedded`]), written once to a
//! content-addressed directory under the system temp dir so helm can read the chart and
//! values files; `--scenarios DIR` ([`Layout::at`]) replaces it wholesale.

use std::path::{Path, PathBuf};

use include_dir::{include_dir, Dir};

use crate::error::{Error, Result};

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../scenarios");

/// A scenarios directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A scenarios directory on disk (`--scenarios DIR`). It must exist.
    pub fn at(root: impl Into<PathBuf>) -> Result<Layout> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::Invalid(format!(
                "scenario directory {} does not exist; pass a directory of scenario files with --scenarios, or omit it for the built-in scenarios",
                root.display()
            )));
        }
        Ok(Layout { root: std::path::absolute(&root).unwrap_or(root) })
    }

    /// The scenarios built into the binary, written (once per content) to
    /// `<temp>/lily-e2e-scenarios-<hash>/`.
    pub fn embedded() -> Result<Layout> {
        Self::embedded_in(&std::env::temp_dir())
    }

    /// As [`Layout::embedded`], under `base`.
    pub fn embedded_in(base: &Path) -> Result<Layout> {
        let mut files = Vec::new();
        collect(&EMBEDDED, &mut files);
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let hash = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for (p, data) in &files {
                h.update(p.to_string_lossy().as_bytes());
                h.update([0]);
                h.update((data.len() as u64).to_le_bytes());
                h.update(data);
            }
            hex::encode(h.finalize())
        };
        let root = base.join(format!("lily-e2e-scenarios-{}", &hash[..16]));
        if root.join(".complete").is_file() {
            return Ok(Layout { root });
        }
        // Written beside, then renamed into place: concurrent first runs cannot see half a tree.
        let tmp = tempfile::Builder::new()
            .prefix(".lily-e2e-scenarios-")
            .tempdir_in(base)
            .map_err(Error::io(format!("create a directory in {}", base.display())))?;
        for (p, data) in &files {
            let dest = tmp.path().join(p);
            if let Some(d) = dest.parent() {
                std::fs::create_dir_all(d).map_err(Error::io(format!("create {}", d.display())))?;
            }
            std::fs::write(&dest, data).map_err(Error::io(format!("write {}", dest.display())))?;
        }
        std::fs::write(tmp.path().join(".complete"), &hash).map_err(Error::io("mark the scenario directory complete"))?;
        let tmp = tmp.keep();
        if std::fs::rename(&tmp, &root).is_err() {
            // Another process put it there first; ours is not needed.
            let _ = std::fs::remove_dir_all(&tmp);
            if !root.join(".complete").is_file() {
                return Err(Error::Invalid(format!("cannot write the built-in scenarios to {}", root.display())));
            }
        }
        Ok(Layout { root })
    }

    /// The root: scenario files live here.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn values_dir(&self) -> PathBuf {
        self.root.join("values")
    }

    pub fn runbooks_dir(&self) -> PathBuf {
        self.root.join("runbooks")
    }

    /// The fixture Lily chart (`charts/lily`).
    pub fn fixture_chart(&self) -> PathBuf {
        self.root.join("charts").join("lily")
    }

    /// A values file named in a scenario: absolute, or relative to `values/`.
    pub fn values_file(&self, name: &str) -> PathBuf {
        let p = PathBuf::from(name);
        if p.is_absolute() {
            p
        } else {
            self.values_dir().join(p)
        }
    }

    /// The values files in `values/`, sorted by name.
    pub fn values_files(&self) -> Result<Vec<PathBuf>> {
        let dir = self.values_dir();
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(Error::io(format!("list {}", dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        v.sort();
        Ok(v)
    }
}

fn collect(dir: &'static Dir<'static>, out: &mut Vec<(PathBuf, &'static [u8])>) {
    for f in dir.files() {
        out.push((f.path().to_path_buf(), f.contents()));
    }
    for d in dir.dirs() {
        collect(d, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_scenarios_are_written_once_and_hold_every_part() {
        let base = tempfile::tempdir().unwrap();
        let a = Layout::embedded_in(base.path()).unwrap();
        let b = Layout::embedded_in(base.path()).unwrap();
        assert_eq!(a, b);
        assert!(a.fixture_chart().join("Chart.yaml").is_file());
        assert!(a.runbooks_dir().join("multi-attach.yaml").is_file());
        assert!(a.values_file("daemon-default.yaml").is_file());
        assert!(a.root().join("install.yaml").is_file());
        let dirs = std::fs::read_dir(base.path()).unwrap().count();
        assert_eq!(dirs, 1, "one directory per content, no leftovers");
    }

    #[test]
    fn a_missing_directory_is_refused_with_what_to_do() {
        let e = Layout::at("/nonexistent/scenarios").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/scenarios") && e.contains("--scenarios"), "{e}");
    }
}
