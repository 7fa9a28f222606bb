//! The decision log: one line per decision of a sim controller, in
//! `<run dir>/logs/sim-cloud.log` (so artifacts include it) and as `tracing` debug events.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Appends timestamped lines; cheap to clone.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl DecisionLog {
    pub fn open(path: PathBuf) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io(format!("open {}", path.display())))?;
        Ok(DecisionLog { path, file: Arc::new(Mutex::new(file)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one decision of `component` (provisioner, attacher, kubelet, ...).
    pub fn record(&self, component: &str, line: impl AsRef<str>) {
        let line = line.as_ref();
        tracing::debug!(target: "lily_e2e::sim", component, "{line}");
        let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        if let Ok(mut f) = self.file.lock() {
            // A failed write must not stop a controller; the tracing event above remains.
            let _ = writeln!(f, "{ts} {component:<11} {line}");
        }
    }
}
