//! Kubeconfig files and clients made from them.

use std::path::Path;

use base64::Engine;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::ClusterError;
use crate::error::{Error, Result};
use crate::fsutil::write_private;

/// Writes a kubeconfig for `server` with client-certificate credentials, readable by the
/// owner only.
pub fn write(path: &Path, cluster: &str, server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<()> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": "lily-e2e-admin", "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": "lily-e2e-admin"}}],
        "current-context": cluster,
    });
    let text = crate::yaml::to_string(&doc)?;
    write_private(path, text.as_bytes())
}

/// A client for the kubeconfig at `path`, with `context` (or its current context).
pub async fn client(path: &Path, context: Option<&str>) -> Result<Client> {
    Ok(client_and_server(path, context).await?.0)
}

/// A client for a kubeconfig's context, and the server URL that context names.
pub async fn client_and_server(path: &Path, context: Option<&str>) -> Result<(Client, String)> {
    let kc = Kubeconfig::read_from(path).map_err(|e| ClusterError::ReadKubeconfig { path: path.to_path_buf(), source: Box::new(e) })?;
    let opts = KubeConfigOptions { context: context.map(str::to_string), ..Default::default() };
    let config = Config::from_custom_kubeconfig(kc, &opts).await.map_err(|e| ClusterError::UseKubeconfig {
        path: path.to_path_buf(),
        context: context.map(str::to_string),
        source: Box::new(e),
    })?;
    let server = config.cluster_url.to_string();
    Ok((Client::try_from(config).map_err(Error::kube("build a client"))?, server))
}
