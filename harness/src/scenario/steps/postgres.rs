//! Storage steps: `postgres` (the scenario's database and the guide's storage Secret) and
//! `contract-check` (the database contract, checked from the objects the chart created: the
//! pod's storage wiring followed to the database, where the harness performs the schema
//! creation of `lily migrate`; see [`crate::postgres::contract`]).

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{CaseCx, Cx, Operation, StepError, StepResult, Tpl};
use crate::error::Error;
use crate::postgres::secret::StorageBinding;
use crate::postgres::PostgresError;
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
        // The URL the chart's pods use: on kind, the server's address on the kind network.
        let url = db.pod_url(crate::postgres::dsn::SslMode::Require);
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
    storage: Option<String>,
    application_name: Option<String>,
}

impl ContractCheck {
    pub fn compile(s: &model::ContractCheck, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        if s.pod.is_none() {
            cx.scope.require("pod", &cx.site, "pod")?;
        }
        Ok(Box::new(ContractCheck {
            pod: cx.opt_tpl("pod", &s.pod)?,
            storage: s.storage.clone(),
            application_name: s.application_name.clone(),
        }))
    }
}

impl Operation for ContractCheck {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let pod = cx.fill_or(&self.pod, "pod")?;
            let opts = crate::postgres::contract::PodCheck {
                storage: self.storage.clone(),
                application_name: self.application_name.clone(),
                ca_pem: cx.env.postgres.ca_pem().map(str::to_string),
                // On kind the chart's pod itself connected and migrated: checked too.
                pod_session: cx.env.cluster.provider == "kind",
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

/// What the chart's objects wire up is the chart's to get right: a contract violation (the
/// object, the problem, the fix) is a chart finding; any other
/// [`PostgresError`] (the session the Secret's URL leads to cannot be opened, or is not what
/// it should be) fails the case; the Kubernetes API or the machine breaking is an error.
fn contract_step_error(e: Error) -> StepError {
    match e {
        Error::Postgres(PostgresError::ContractViolation { object, problem, fix }) => StepError::chart(object, problem, fix),
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

    #[test]
    fn contract_mismatches_fail_the_case_and_breakdowns_are_errors() {
        let violation = contract_step_error(
            PostgresError::ContractViolation {
                object: "Secret lily/lily-db key `url`".into(),
                problem: "the url has sslmode=disable".into(),
                fix: "end the url with ?sslmode=require".into(),
            }
            .into(),
        );
        assert!(
            matches!(&violation, StepError::Chart(f) if f.to_string()
                == "chart finding: Secret lily/lily-db key `url`: the url has sslmode=disable; fix: end the url with ?sslmode=require"),
            "{violation:?}"
        );
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
