//! lily-e2e: an end-to-end test harness and conformance suite for the Lily Helm chart.
//!
//! The crate is built from small pieces:
//! - [`tools`]: the pinned external tools and `tools install`;
//! - [`run`]: run ids, labels, run directories and the run registry (a leaf);
//! - [`process`]: process supervision;
//! - [`reap`]: stopping what runs left behind (on a signal, and `lily-e2e clean`);
//! - [`cluster`]: cluster providers (the local control plane, an existing cluster);
//! - [`contract`]: what the harness expects of any Lily chart (names, containers, storage
//!   wiring, values keys), written down once;
//! - [`helm`]: the helm driver, chart sources and the local chart repository;
//! - [`engine`]: the Docker engine the container providers use, and the containers of a run;
//! - [`postgres`]: PostgreSQL providers, the storage Secret and the database contract check;
//! - [`labels`]: the labels of simulated nodes, shared by [`cluster`] and [`sim`];
//! - [`sim`]: the simulated cloud (zonal block storage) and kubelet volume state;
//! - [`scenario`]: the scenario model, its compilation into checked plans, step kinds (one
//!   family per file under `scenario/steps/`), the case runner, runbooks and outcomes;
//! - [`suite`]: the suite engine (plan, environment pool, event stream); [`report`]: outcomes,
//!   events and their reporters (progress, summary, JUnit);
//! - [`layout`]: where scenarios, values, runbooks and the fixture chart come from (built in,
//!   or `--scenarios DIR`); [`interrupt`]: the one cancellation mechanism;
//! - [`snapshot`]: normalisation of rendered manifests;
//! - [`settings`]: what the command line resolved (cache, registry, engine, PostgreSQL);
//! - [`pki`], [`wait`], [`yaml`], [`fsutil`]: shared plumbing.

pub mod cluster;
pub mod contract;
pub mod engine;
pub mod error;
pub mod fsutil;
pub mod helm;
pub mod interrupt;
pub mod labels;
pub mod layout;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod reap;
pub mod report;
pub mod run;
pub mod scenario;
pub mod settings;
pub mod sim;
pub mod snapshot;
pub mod standin;
pub mod suite;
pub mod tools;
pub mod wait;
pub mod yaml;

pub use error::{Error, Result};
