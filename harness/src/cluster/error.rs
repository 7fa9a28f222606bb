//! What can go wrong with a cluster provider: the asked shape, its ports, its kubeconfig.

use std::path::PathBuf;

use kube::config::KubeconfigError;

/// A cluster provider's failure. A child that exits early is a
/// [`crate::process::ProcessError`]; a readiness wait that runs out, a
/// [`crate::wait::WaitError`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `--provider` names no provider.
    #[error("unknown cluster provider `{name}`; choose local, kind or existing")]
    UnknownProvider { name: String },
    /// The kind provider's node image is not in the Docker engine.
    #[error("the kind node image {image} is not in the docker engine{}; build it with ./ci/node-image.sh (as root)", if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
    KindImageMissing { image: String, detail: String },
    /// `kind create cluster` failed; `tail` is the end of its output.
    #[error("kind create cluster {name} failed ({status}): {tail}")]
    KindCreate { name: String, status: String, tail: String },
    /// `--zones` outside 1..=26 (zones are lettered).
    #[error("--zones must be between 1 and 26, not {zones}")]
    BadZones { zones: usize },
    /// `--nodes 0`.
    #[error("--nodes must be at least 1")]
    NoNodes,
    /// A loopback port a component needs is taken.
    #[error("port {port} on 127.0.0.1 is already in use ({what}); free it or pick another port")]
    PortBusy { port: u16, what: String },
    /// The existing provider found no kubeconfig to use.
    #[error("no kubeconfig: pass --kubeconfig or set KUBECONFIG")]
    NoKubeconfig,
    /// The existing provider's kubeconfig is not a file.
    #[error("kubeconfig {} does not exist; pass --kubeconfig FILE for the existing provider", .path.display())]
    KubeconfigMissing { path: PathBuf },
    /// The kubeconfig could not be read or parsed.
    #[error("cannot read kubeconfig {}", .path.display())]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: Box<KubeconfigError>,
    },
    /// The kubeconfig (with `context`, if given) does not make a client configuration, e.g.
    /// an unknown context.
    #[error("cannot use kubeconfig {}{}", .path.display(), .context.as_ref().map(|c| format!(" with context `{c}`")).unwrap_or_default())]
    UseKubeconfig {
        path: PathBuf,
        context: Option<String>,
        #[source]
        source: Box<KubeconfigError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_errors_name_the_file_and_the_context() {
        let source = Box::new(KubeconfigError::CurrentContextNotSet);
        let e = ClusterError::UseKubeconfig { path: "/k/config".into(), context: Some("prod".into()), source };
        assert_eq!(e.to_string(), "cannot use kubeconfig /k/config with context `prod`");
        let source = Box::new(KubeconfigError::CurrentContextNotSet);
        let e = ClusterError::UseKubeconfig { path: "/k/config".into(), context: None, source };
        assert_eq!(e.to_string(), "cannot use kubeconfig /k/config");
        assert!(std::error::Error::source(&e).is_some());
    }
}
