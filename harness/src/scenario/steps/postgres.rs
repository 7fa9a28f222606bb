//! Storage steps: `postgres` (the scenario's database and the guide's storage Secret) and
//! `contract-check` (the database contract, checked from the objects the chart created).

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{CaseCx, Cx, Operation, StepError, StepResult, Tpl};
use crate::error::Error;
use crate::postgres::secret::{StorageBinding, DEFAULT_APPLICATION_NAME};
use crate::scenario::compile::LoadError;
use crate::scenario::model;

#[derive(Debug)]
pub struct CreateStorage {
    secret: String,
    name: String,
}

impl CreateStorage {
    pub fn compile(s: &model::PostgresStep, _cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        Ok(Box::new(CreateStorage { secret: s.secret.clone(), name: s.name.clone() }))
    }

    async fn apply(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let db = cx.env.postgres.create_database(&database_name(&cx.namespace)).await.map_err(StepError::Errored)?;
        let binding = StorageBinding { name: self.name.clone(), ..StorageBinding::new(&self.secret) };
        let url = db.url(crate::postgres::dsn::SslMode::Require);
        let secret = binding.secret(&cx.namespace, cx.env.run.id(), &url);
        secret.create(&cx.client()).await.map_err(StepError::Errored)?;
        cx.outcome.name(&db.user, "<db-user>");
        cx.outcome.name(&db.name, "<db-name>");
        cx.outcome.name(&format!("{}:{}", url.host, url.port), "<host>:<port>");
        cx.outcome.record(
            "postgres",
            serde_json::json!({"secret": self.secret, "key": binding.secret_key, "url": url.redacted(), "tls": cx.env.postgres.tls()}),
        );
        cx.db = Some(db);
        Ok(())
    }
}

impl Operation for CreateStorage {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.apply(cx).boxed()
    }
}

#[derive(Debug)]
pub struct ContractCheck {
    pod: Option<Tpl>,
    application_name: String,
}

impl ContractCheck {
    pub fn compile(s: &model::ContractCheck, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        if s.pod.is_none() {
            cx.scope.require("pod", &cx.site, "pod")?;
        }
        Ok(Box::new(ContractCheck {
            pod: cx.opt_tpl("pod", &s.pod)?,
            application_name: s.application_name.clone().unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string()),
        }))
    }
}

impl Operation for ContractCheck {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let pod = cx.fill_or(&self.pod, "pod")?;
            let opts = crate::postgres::contract::PodCheck {
                application_name: Some(self.application_name.clone()),
                ca_pem: cx.env.postgres.ca_pem().map(str::to_string),
                ..Default::default()
            };
            let summary =
                crate::postgres::contract::check_pod(&cx.client(), &cx.namespace, &pod, &opts).await.map_err(contract_step_error)?;
            cx.outcome.record("contract-check", summary);
            Ok(())
        }
        .boxed()
    }
}

/// What the chart's objects wire up is the chart's to get right: a
/// [`PostgresError`](crate::postgres::PostgresError) (the objects break the contract, or
/// the session their Secret's URL leads to does) fails the case; the Kubernetes API or the
/// machine breaking is an error.
fn contract_step_error(e: Error) -> StepError {
    match e {
        Error::Kube { .. } | Error::Io { .. } => StepError::Errored(e),
        e => StepError::failed(crate::error::chain(&e)),
    }
}

/// A database/role name for a namespace: a lowercase identifier of at most 40 characters,
/// unique per namespace (a hash keeps truncated names apart).
pub fn database_name(namespace: &str) -> String {
    use sha2::Digest;
    let mut slug: String = namespace.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    slug.truncate(20);
    let hash = hex::encode(sha2::Sha256::digest(namespace.as_bytes()));
    format!("e2e_{}_{}", slug.trim_end_matches('_'), &hash[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::PostgresError;

    #[test]
    fn contract_mismatches_fail_the_case_and_breakdowns_are_errors() {
        let mismatch = contract_step_error(PostgresError::Contract("pod lily/x does not exist".into()).into());
        assert!(matches!(&mismatch, StepError::Failed(m) if m == "pod lily/x does not exist"), "{mismatch:?}");
        let ambiguous = contract_step_error(PostgresError::Ambiguous("name the storage entry".into()).into());
        assert!(matches!(ambiguous, StepError::Failed(_)), "{ambiguous:?}");
        let io = contract_step_error(Error::Io { what: "read x".into(), source: std::io::Error::other("gone") });
        assert!(matches!(io, StepError::Errored(Error::Io { .. })), "{io:?}");
    }

    #[test]
    fn database_names_are_short_unique_identifiers() {
        let a = database_name("pvc-node-affinity-conflict-upgrade-moves-pod-r1");
        let b = database_name("pvc-node-affinity-conflict-release-deleted-r1");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() <= 40 && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{n}");
        }
    }
}
