//! The helm driver, chart sources, and the local chart repository.
//!
//! - [`driver`]: [`Helm`], a typed driver over the pinned `helm` binary with its own
//!   isolated helm home and an explicit kubeconfig;
//! - [`chart`]: [`ChartSource`] (`DIR`, `DIR@X.Y.Z`, `FILE.tgz`, `https://REPO#CHART[@X.Y.Z]`),
//!   the fixture chart's location and versions;
//! - [`repo`]: [`ChartRepo`], several versions of one chart served as a chart repository on
//!   loopback HTTP;
//! - [`validate`]: server-side dry-run validation of rendered manifests.

pub mod chart;
pub mod driver;
pub mod error;
pub mod repo;
pub mod validate;

pub use chart::{fixture_sources, ChartMeta, ChartSource, Version, FIXTURE_VERSIONS};
pub use driver::{
    ChartRef, Helm, HelmOutput, HistoryEntry, InstallOpts, LintReport, ReleaseOpts, ReleaseState, ReleaseStatus, SearchHit, TemplateOpts,
    Values,
};
pub use error::HelmError;
pub use repo::{ChartRepo, DEFAULT_REPO_NAME};
