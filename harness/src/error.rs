//! The library's error type.
//!
//! Messages are lowercase fragments that say what went wrong and, where the user can act,
//! what to do; the underlying cause is only ever a `#[source]`, never pasted into the
//! message, so that a chain prints once (`anyhow`'s `{:#}` at the binary edge).
//! No variant carries a secret: callers pass redacted text only.
//!
//! Modules with failures of their own have their own enums ([`WaitError`], [`ProcessError`],
//! [`crate::cluster::ClusterError`], [`crate::helm::HelmError`],
//! [`crate::postgres::PostgresError`]), wrapped here transparently so that callers can still
//! match, e.g., `Error::Wait(WaitError::Timeout { .. })`.

use std::path::PathBuf;

use crate::process::ProcessError;
use crate::wait::WaitError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Yaml(#[from] crate::yaml::YamlError),

    #[error("cannot encode {what} as json")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{tool} {version} is not installed (looked in {}); run `{install}`", .path.display())]
    ToolMissing { tool: String, version: String, path: PathBuf, install: String },

    #[error("{what}")]
    Tool {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    #[error("kubernetes api: cannot {what}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },

    #[error(transparent)]
    Wait(#[from] WaitError),

    #[error(transparent)]
    Process(#[from] ProcessError),

    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),

    #[error(transparent)]
    Helm(#[from] crate::helm::HelmError),

    #[error(transparent)]
    Postgres(#[from] crate::postgres::PostgresError),

    #[error("{0}")]
    Invalid(String),

    #[error("interrupted")]
    Interrupted,
}

/// An error and its causes, one line each (`a: b: c`).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl Error {
    /// A component that started and then failed (exited early, or never became ready): its
    /// logs explain more than the message, so a failed start keeps them.
    pub fn is_component_failure(&self) -> bool {
        matches!(self, Error::Process(ProcessError::Exited { .. }) | Error::Wait(WaitError::Timeout { .. }))
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }

    pub fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Error {
        let what = what.into();
        move |source| Error::Json { what, source }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::ClusterError;

    #[test]
    fn an_early_exit_and_a_timeout_are_component_failures_with_their_own_words() {
        let exited: Error = ProcessError::Exited {
            name: "etcd".into(),
            status: "exit status: 1".into(),
            log: "/r/logs/etcd.log".into(),
            tail: "bind: address in use\n".into(),
        }
        .into();
        assert!(exited.is_component_failure());
        assert_eq!(
            exited.to_string(),
            "etcd exited before it was ready (exit status: 1); its log is /r/logs/etcd.log; it ended with:\nbind: address in use"
        );
        let timeout: Error = WaitError::Timeout { what: "x".into(), after: Duration::from_secs(3), last_seen: "y pending".into() }.into();
        assert!(timeout.is_component_failure());
        assert_eq!(timeout.to_string(), "timed out after 3s waiting for x; last seen: y pending");
        let busy: Error = ClusterError::PortBusy { port: 6443, what: "kube-apiserver".into() }.into();
        assert!(!busy.is_component_failure());
        assert_eq!(busy.to_string(), "port 6443 on 127.0.0.1 is already in use (kube-apiserver); free it or pick another port");
    }
}
