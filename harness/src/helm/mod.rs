//! The helm driver, chart sources, and the local chart repository.
//!
//! - [`driver`]: [`Helm`], a typed driver over the pinned `helm` binary with its own
//!   isolated helm home and an explicit kubeconfig;
//! - [`types`]: what the driver is asked ([`ChartRef`], [`Values`], the options) and what it
//!   reads back ([`ReleaseStatus`], [`HistoryEntry`], [`LintReport`], ...);
//! - [`chart`]: [`ChartSource`] (`DIR`, `DIR@X.Y.Z`, `FILE.tgz`, `https://REPO#CHART[@X.Y.Z]`),
//!   the fixture chart's location and versions;
//! - [`repo`]: [`ChartRepo`], several versions of one chart served as a chart repository on
//!   loopback HTTP;
//! - [`validate`]: server-side dry-run validation of rendered manifests.

pub mod chart;
pub mod driver;
pub mod error;
pub mod repo;
pub mod types;
pub mod validate;

pub use chart::{fixture_sources, ChartMeta, ChartSource, Version, FIXTURE_VERSIONS};
pub use driver::{Helm, HelmOutput};
pub use error::HelmError;
pub use repo::{ChartRepo, DEFAULT_REPO_NAME};
pub use types::{
    parse_status, ChartRef, HistoryEntry, InstallOpts, LintReport, ReleaseOpts, ReleaseState, ReleaseStatus, SearchHit, TemplateOpts,
    Values,
};
