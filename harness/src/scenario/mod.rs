//! Scenarios: the operators' guide as scripted, repeatable checks.
//!
//! - [`model`]: the scenario file format (and its JSON schema);
//! - [`env`]: what scenarios share: cluster, PostgreSQL, the served chart repository;
//! - [`runner`]: runs one scenario case in its own namespace, with try/catch/finally;
//! - [`catalogue`]: the event wordings per Kubernetes version;
//! - [`runbook`]: the guide's runbooks as data;
//! - [`outcome`]: the normalised outcome that `snapshots/scenarios/` holds;
//! - [`artifacts`]: what is collected when a case fails.

pub mod artifacts;
pub mod catalogue;
pub mod env;
pub mod model;
pub mod outcome;
pub mod runbook;
pub mod runner;

pub use model::{Scenario, Step};

/// `scenarios/` in this repository.
pub fn scenarios_dir() -> std::path::PathBuf {
    crate::helm::repo_root().join("scenarios")
}
