//! A cluster someone else runs, reached by a kubeconfig and an optional context.
//! The harness starts and stops nothing here; teardown only removes what it created, which
//! the scenario runner does by run-id label.

use std::path::PathBuf;

use futures::future::BoxFuture;

use super::{kubeconfig, Cluster, ClusterError, ClusterProvider, ClusterSpec, Running, SimNode, Teardown};
use crate::error::{Error, Result};
use crate::run::Run;

#[derive(Debug, Clone, Default)]
pub struct Existing {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

impl ClusterProvider for Existing {
    fn name(&self) -> &'static str {
        "existing"
    }

    fn start<'a>(&'a self, _spec: &'a ClusterSpec, _run: &'a Run) -> BoxFuture<'a, Result<Cluster>> {
        Box::pin(async move {
            let path =
                self.kubeconfig.clone().or_else(|| dirs::home_dir().map(|h| h.join(".kube/config"))).ok_or(ClusterError::NoKubeconfig)?;
            if !path.is_file() {
                return Err(ClusterError::KubeconfigMissing { path }.into());
            }
            let (client, server) = kubeconfig::client_and_server(&path, self.context.as_deref()).await?;
            let context = self.context.as_deref().map(|c| format!("context `{c}`")).unwrap_or_else(|| "its current context".into());
            let version = client.apiserver_version().await.map_err(Error::kube(format!(
                "reach the cluster at {server} ({context} of kubeconfig {}); check that it is up, or pass --kubeconfig/--context for another",
                path.display()
            )))?;
            Ok(Cluster::new(client, path, version.git_version, "existing", Box::new(Nothing)))
        })
    }
}

struct Nothing;

impl Running for Nothing {
    fn teardown(self: Box<Self>, _how: Teardown) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn logs(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn sim_nodes(&self) -> Option<&[SimNode]> {
        None
    }
}
