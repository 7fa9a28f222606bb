//! Scenarios: the operators' guide as scripted, repeatable checks.
//!
//! - [`model`]: the scenario file format (and its JSON schema);
//! - [`compile`]: scenario files into checked plans, before anything starts;
//! - [`steps`]: the step kinds, one family per file (the file to edit for a new step kind);
//! - [`case`]: runs one case in its own namespace, with try/catch/finally;
//! - [`env`]: what cases share: cluster, PostgreSQL, the served chart repository;
//! - [`catalogue`]: the event wordings per Kubernetes version;
//! - [`runbook`]: the guide's runbooks as data;
//! - [`outcome`]: the normalised outcome that `snapshots/scenarios/` holds;
//! - [`artifacts`]: what is collected when a case fails.

pub mod artifacts;
pub mod case;
pub mod catalogue;
pub mod compile;
pub mod env;
pub mod model;
pub mod outcome;
pub mod runbook;
pub mod steps;

pub use compile::{CasePlan, LoadError, ScenarioPlan};
pub use model::{Scenario, Step};
