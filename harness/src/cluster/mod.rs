//! Cluster providers: where the chart is installed.
//!
//! A [`ClusterProvider`] starts a [`Cluster`]: a kube [`Client`], a kubeconfig file, the
//! Kubernetes version, and an explicit async [`Cluster::teardown`], [`Teardown::Fast`] for
//! a throwaway cluster or [`Teardown::Graceful`] for a kept one (dropping it is a
//! best-effort fallback that still stops every child process).
//!
//! - [`local::Local`], the embedded default: etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler and kwok as child processes on loopback, with simulated nodes.
//! - [`kind::Kind`]: real kubelets in Docker containers (kind), from the project's node image.
//! - [`existing::Existing`]: a cluster someone else runs, reached by kubeconfig and context.
//!
//! Their failures are [`ClusterError`]s.

pub mod error;
pub mod existing;
pub mod kind;
pub mod kubeconfig;
pub mod local;
pub mod nodes;
pub mod ports;

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use kube::Client;

use crate::error::Result;
use crate::run::Run;

pub use error::ClusterError;
pub use nodes::{NodePlan, SimNode};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Simulated nodes (local provider).
    pub nodes: usize,
    /// Zones the nodes are spread across, round robin; one node pool per zone.
    pub zones: usize,
    /// Allocatable CPU cores per simulated node.
    pub node_cpu: u32,
    /// Allocatable memory per simulated node, in GiB.
    pub node_memory_gib: u32,
    /// A fixed API server port; `None` picks a free one.
    pub apiserver_port: Option<u16>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec { nodes: 3, zones: 2, node_cpu: 64, node_memory_gib: 512, apiserver_port: None }
    }
}

/// How a cluster is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// A throwaway cluster (the default run): nothing in it is worth a clean shutdown, so
    /// its processes are killed at once (KILL to every process group, all together).
    Fast,
    /// A kept cluster (`--keep`), stopped when its user is done with it: each process gets
    /// its stop signal and a grace period before KILL, so it can shut down cleanly.
    Graceful,
}

impl Teardown {
    /// [`Teardown::Graceful`] for a kept run, [`Teardown::Fast`] otherwise.
    pub fn for_kept(kept: bool) -> Self {
        if kept {
            Teardown::Graceful
        } else {
            Teardown::Fast
        }
    }
}

/// Something that can start clusters.
pub trait ClusterProvider: Send + Sync {
    fn name(&self) -> &'static str;
    fn start<'a>(&'a self, spec: &'a ClusterSpec, run: &'a Run) -> BoxFuture<'a, Result<Cluster>>;
}

/// The provider-specific part of a running cluster.
pub trait Running: Send + Sync {
    /// Stops everything the provider started, as `how` says (for processes: KILL at once,
    /// or TERM, grace, KILL).
    fn teardown(self: Box<Self>, how: Teardown) -> BoxFuture<'static, Result<()>>;
    /// Log files of the cluster's components, for artifacts.
    fn logs(&self) -> Vec<PathBuf>;
    /// The simulated nodes, if the provider simulates nodes.
    fn sim_nodes(&self) -> Option<&[SimNode]>;
    /// The label whose presence keeps kwok managing (heartbeating) a simulated node.
    fn heartbeat_label(&self) -> Option<(&str, &str)> {
        None
    }
    /// The simulated cloud (storage driver, kubelet volume state), if the provider runs one.
    fn sim(&self) -> Option<&crate::sim::SimCloud> {
        None
    }
    /// Turns node `node`'s machine off, where the provider has machines (kind's node
    /// containers); `None` where a node is only its Node object (simulated nodes).
    fn power_off<'a>(&'a self, _node: &'a str) -> Option<BoxFuture<'a, Result<()>>> {
        None
    }
}

/// A started cluster.
pub struct Cluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub version: String,
    pub provider: &'static str,
    running: Option<Box<dyn Running>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("provider", &self.provider)
            .field("kubeconfig", &self.kubeconfig)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn new(client: Client, kubeconfig: PathBuf, version: String, provider: &'static str, running: Box<dyn Running>) -> Self {
        Cluster { client, kubeconfig, version, provider, running: Some(running) }
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn logs(&self) -> Vec<PathBuf> {
        self.running.as_ref().map(|r| r.logs()).unwrap_or_default()
    }

    pub fn sim_nodes(&self) -> Option<&[SimNode]> {
        self.running.as_ref().and_then(|r| r.sim_nodes())
    }

    pub fn heartbeat_label(&self) -> Option<(&str, &str)> {
        self.running.as_ref().and_then(|r| r.heartbeat_label())
    }

    /// The simulated cloud and its fault knobs (local provider).
    pub fn sim(&self) -> Option<&crate::sim::SimCloud> {
        self.running.as_ref().and_then(|r| r.sim())
    }

    /// Turns node `node`'s machine off where the provider has one (see [`Running::power_off`]).
    pub async fn power_off(&self, node: &str) -> Result<()> {
        match self.running.as_ref().and_then(|r| r.power_off(node)) {
            Some(f) => f.await,
            None => Ok(()),
        }
    }

    /// Stops the cluster, as `how` says, and waits for it.
    pub async fn teardown(mut self, how: Teardown) -> Result<()> {
        match self.running.take() {
            Some(r) => r.teardown(how).await,
            None => Ok(()),
        }
    }
}

/// The provider named on the command line.
pub fn provider(name: &str, existing: existing::Existing) -> Result<Box<dyn ClusterProvider>> {
    match name {
        "local" => Ok(Box::new(local::Local::new(crate::tools::Tools::new()))),
        "existing" => Ok(Box::new(existing)),
        "kind" => Ok(Box::new(kind::Kind::new(crate::tools::Tools::new()))),
        other => Err(ClusterError::UnknownProvider { name: other.to_string() }.into()),
    }
}
