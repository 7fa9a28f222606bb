//! helm steps: `helm-repo-add`, `helm-upgrade`, `helm-rollback`, `helm-uninstall`,
//! `expect-release`, `wait-rollout`.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use super::{CaseCx, Cx, Operation, StepError, StepResult, Tpl, DEFAULT_WAIT};
use crate::error::Error;
use crate::helm::{ChartRef, ChartSource, Helm, InstallOpts, ReleaseOpts, Values};
use crate::scenario::compile::LoadError;
use crate::scenario::model;

/// The case's helm: its own home, and the repository name once added.
pub struct Session {
    pub helm: Helm,
    pub repo: Option<String>,
}

#[derive(Debug)]
pub struct RepoAdd {
    name: String,
}

impl RepoAdd {
    pub fn compile(s: &model::HelmRepoAdd, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        cx.scope.repo_added = true;
        Ok(Box::new(RepoAdd { name: s.name.clone() }))
    }
}

impl Operation for RepoAdd {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            cx.helm.helm.repo_add(&self.name, cx.env.repo.url()).await?;
            cx.helm.helm.repo_update(&[self.name.as_str()]).await?;
            cx.helm.repo = Some(self.name.clone());
            let versions: Vec<String> = cx.env.repo.versions().iter().map(|v| v.to_string()).collect();
            cx.outcome.record("helm-repo-add", serde_json::json!({"repo": self.name, "versions": versions}));
            Ok(())
        }
        .boxed()
    }
}

/// Where a `helm-upgrade` takes its chart from.
#[derive(Debug)]
enum Chart {
    /// The added repository, at `--version` (or the newest).
    Repo { version: Option<Tpl> },
    /// A chart directory or .tgz (and `fixture@X.Y.Z`, as a directory at that version).
    Source(ChartSource),
}

#[derive(Debug)]
pub struct Upgrade {
    chart: Chart,
    values: Vec<PathBuf>,
    set: Option<serde_json::Value>,
    wait: Option<Duration>,
    expect_failure: Option<Tpl>,
}

impl Upgrade {
    pub fn compile(s: &model::HelmUpgrade, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        let chart = match &s.chart {
            Some(src) => match src.strip_prefix("fixture@") {
                Some(v) => Chart::Source(ChartSource::Dir {
                    path: cx.layout.fixture_chart(),
                    version: Some(crate::helm::chart::parse_version(v).map_err(|e| cx.site.error("chart", e.to_string()))?),
                }),
                None => {
                    let source = ChartSource::parse(src).map_err(|e| cx.site.error("chart", e.to_string()))?;
                    if matches!(source, ChartSource::Remote { .. }) {
                        return Err(cx.site.error("chart", format!("`{src}`: use a chart directory or .tgz")));
                    }
                    source.check().map_err(|e| cx.site.error("chart", e.to_string()))?;
                    Chart::Source(source)
                }
            },
            None => {
                if !cx.scope.repo_added {
                    return Err(cx.site.error("chart", "helm-upgrade from the repository needs a helm-repo-add step before it"));
                }
                Chart::Repo { version: cx.opt_tpl("version", &s.version)? }
            }
        };
        let mut values = Vec::new();
        for f in &s.values {
            let p = cx.layout.values_file(f);
            if !p.is_file() {
                return Err(cx.site.error("values", format!("values file {} does not exist", p.display())));
            }
            values.push(p);
        }
        let expect_failure = s.expect_failure.as_deref().map(|re| cx.regex_tpl("expect-failure", re)).transpose()?;
        if expect_failure.is_none() {
            // The release's StatefulSet defines these once installed.
            cx.scope.define_all(["instance", "pod", "claim"]);
        }
        Ok(Box::new(Upgrade {
            chart,
            values,
            set: s.set.clone(),
            wait: if s.wait { Some(cx.duration("timeout", &s.timeout, DEFAULT_WAIT)?) } else { None },
            expect_failure,
        }))
    }

    async fn apply(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let mut values = Values::files(cx.values.iter().chain(&self.values).cloned());
        if let Some(inline) = &self.set {
            let p = cx.dir.join(format!("inline-values-{}.yaml", cx.vars.len()));
            std::fs::write(&p, crate::yaml::to_string(inline).map_err(Error::from)?)
                .map_err(Error::io(format!("write {}", p.display())))?;
            values = values.file(p);
        }
        let (chart, version) = match &self.chart {
            Chart::Repo { version } => {
                let repo = cx.helm.repo.clone().ok_or_else(|| StepError::failed("helm-upgrade needs a helm-repo-add step before it"))?;
                (ChartRef::Repo { repo, chart: cx.env.repo.chart_name().to_string() }, cx.fill_opt(version)?)
            }
            Chart::Source(ChartSource::Dir { path, version }) => {
                let v = version.as_ref().map(|v| v.to_string());
                (ChartRef::Path(cx.helm.helm.package(path, v.as_deref(), &cx.dir).await?), None)
            }
            Chart::Source(ChartSource::Archive { path }) => (ChartRef::Path(path.clone()), None),
            Chart::Source(ChartSource::Remote { .. }) => unreachable!("refused at compile time"),
        };
        let opts = InstallOpts {
            namespace: cx.namespace.clone(),
            version: version.clone(),
            values,
            wait: self.wait,
            create_namespace: false,
            reset_values: false,
        };
        // An unknown version fails before helm runs, listing the versions that exist.
        let known = match (&self.chart, &version) {
            (Chart::Repo { .. }, Some(v)) => cx.env.repo.version(v).map(|_| ()),
            _ => Ok(()),
        };
        let r = match known {
            Ok(()) => {
                let install = cx.helm.helm.upgrade_install(&cx.release, &chart, &opts);
                match self.wait {
                    // While helm waits, a pod no node can fit ends the wait with the chart's finding.
                    Some(wait) => tokio::select! {
                        r = install => r.map(|_| ()),
                        Some(f) = super::scheduling::watch_unfit(cx.client(), cx.namespace.clone(), wait) => return Err(f),
                    },
                    None => install.await.map(|_| ()),
                }
            }
            Err(e) => Err(e),
        };
        match (&self.expect_failure, r) {
            (None, Ok(())) => {}
            // A pod the chart sized beyond every node never schedules: say that, not only
            // that helm's wait ran out.
            (None, Err(e)) if self.wait.is_some() => {
                if let Some(finding) = super::scheduling::unfit_pod(cx).await.ok().flatten() {
                    return Err(finding);
                }
                // helm says only that its deadline passed: add what kept the pods from ready.
                return Err(match StepError::from(e) {
                    StepError::Failed(m) => {
                        let seen = super::scheduling::unready_pods(cx).await;
                        StepError::Failed(if seen.is_empty() { m } else { format!("{m}\n  last seen: {seen}") })
                    }
                    other => other,
                });
            }
            (None, Err(e)) => return Err(e.into()),
            (Some(re), Ok(())) => return Err(StepError::failed(format!("the upgrade was expected to fail with /{re}/ but succeeded"))),
            (Some(re), Err(Error::Helm(h))) if h.is_chart_failure() => {
                let re = re.fill_regex(&cx.vars)?;
                let msg = h.to_string();
                let m = re.find(&msg).ok_or_else(|| StepError::failed(format!("the upgrade failed, but not with /{re}/: {msg}")))?;
                let st = cx.helm.helm.status(&cx.release, &cx.namespace).await.ok();
                cx.outcome.record(
                    "helm-upgrade",
                    serde_json::json!({
                        "version": version,
                        "failed": true,
                        "reason": m.as_str(),
                        "revision": st.as_ref().map(|s| s.revision),
                        "status": st.as_ref().map(|s| s.status.as_str().to_string()),
                    }),
                );
                return Ok(());
            }
            // Not helm refusing the chart: the harness broke.
            (Some(_), Err(e)) => return Err(StepError::Errored(e)),
        }
        let st = cx.helm.helm.status(&cx.release, &cx.namespace).await?;
        discover_instance(cx).await?;
        let installed = st.chart.strip_prefix(&format!("{}-", cx.env.repo.chart_name())).unwrap_or(&st.chart).to_string();
        if matches!(self.chart, Chart::Repo { .. }) && version.is_none() {
            // What helm took without --version: the newest stable version, never a prerelease.
            let candidate = cx.env.repo.latest();
            if !candidate.pre.is_empty() && installed != candidate.to_string() {
                cx.outcome.finding(serde_json::json!({"drift": format!(
                    "the guide says omitting --version installs the latest chart; helm installed {installed}, the newest stable version, not the candidate {candidate}, a prerelease (it needs --version {candidate} or --devel)"
                )}));
            }
        }
        cx.outcome.record(
            "helm-upgrade",
            serde_json::json!({
                "version": version.clone().unwrap_or_else(|| "(omitted)".into()),
                "installed": installed,
                "revision": st.revision,
                "chart": st.chart,
                "status": st.status.as_str(),
            }),
        );
        Ok(())
    }
}

impl Operation for Upgrade {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.apply(cx).boxed()
    }

    fn install(&self) -> Option<super::Install<'_>> {
        // An upgrade expected to fail may well not render.
        if self.expect_failure.is_some() {
            return None;
        }
        let (source, version) = match &self.chart {
            Chart::Repo { version } => (None, version.as_ref()),
            Chart::Source(s) => (Some(s), None),
        };
        Some(super::Install { source, version, values: &self.values, set: self.set.as_ref() })
    }
}

/// Finds the StatefulSet the release created (by helm's release annotations, so any chart
/// works), and sets `instance`, `pod` and `claim`.
async fn discover_instance(cx: &mut CaseCx<'_>) -> Result<(), Error> {
    let sts = Api::<StatefulSet>::namespaced(cx.client(), &cx.namespace)
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list statefulsets"))?;
    let mut mine: Vec<StatefulSet> =
        sts.items.into_iter().filter(|s| s.annotations().get("meta.helm.sh/release-name") == Some(&cx.release)).collect();
    mine.sort_by_key(|s| (!s.name_any().ends_with("-daemon"), s.name_any()));
    if let Some(s) = mine.first() {
        let name = s.name_any();
        let pod = format!("{name}-0");
        cx.vars.insert("instance".into(), name.clone());
        if let Some(vct) = s.spec.as_ref().and_then(|sp| sp.volume_claim_templates.as_ref()).and_then(|v| v.first()) {
            cx.vars.insert("claim".into(), format!("{}-{pod}", vct.name_any()));
        }
        cx.vars.insert("pod".into(), pod);
    }
    Ok(())
}

#[derive(Debug)]
pub struct Rollback {
    revision: u32,
}

impl Rollback {
    pub fn compile(s: &model::HelmRollback, _cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        Ok(Box::new(Rollback { revision: s.revision }))
    }
}

impl Operation for Rollback {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let opts = ReleaseOpts { namespace: cx.namespace.clone(), wait: None };
            cx.helm.helm.rollback(&cx.release, Some(self.revision), &opts).await?;
            let st = cx.helm.helm.status(&cx.release, &cx.namespace).await?;
            cx.outcome.record("helm-rollback", serde_json::json!({"to": self.revision, "revision": st.revision, "chart": st.chart}));
            Ok(())
        }
        .boxed()
    }
}

#[derive(Debug)]
pub struct Uninstall;

impl Operation for Uninstall {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let opts = ReleaseOpts { namespace: cx.namespace.clone(), wait: None };
            cx.helm.helm.uninstall(&cx.release, &opts).await?;
            let l = Api::<PersistentVolumeClaim>::namespaced(cx.client(), &cx.namespace)
                .list(&ListParams::default())
                .await
                .map_err(Error::kube("list claims"))?;
            let mut claims: Vec<String> = l.items.iter().map(|c| c.name_any()).collect();
            claims.sort();
            cx.outcome.record("helm-uninstall", serde_json::json!({"claims-left": claims}));
            Ok(())
        }
        .boxed()
    }
}

#[derive(Debug)]
pub struct ExpectRelease {
    revision: Option<u32>,
    chart_version: Option<Tpl>,
    status: Option<String>,
}

impl ExpectRelease {
    pub fn compile(s: &model::ExpectRelease, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        Ok(Box::new(ExpectRelease {
            revision: s.revision,
            chart_version: cx.opt_tpl("chart-version", &s.chart_version)?,
            status: s.status.clone(),
        }))
    }

    async fn check(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let st = cx.helm.helm.status(&cx.release, &cx.namespace).await?;
        let hist = cx.helm.helm.history(&cx.release, &cx.namespace).await?;
        let mut problems = Vec::new();
        if let Some(r) = self.revision {
            if st.revision != r {
                problems.push(format!("revision {} (expected {r})", st.revision));
            }
        }
        if let Some(v) = cx.fill_opt(&self.chart_version)? {
            if st.chart_version != v {
                problems.push(format!("chart version {} (expected {v})", st.chart_version));
            }
        }
        if let Some(want) = &self.status {
            if st.status.as_str() != want {
                problems.push(format!("status {} (expected {want})", st.status.as_str()));
            }
        }
        if !problems.is_empty() {
            return Err(StepError::failed(format!("release {}: {}", cx.release, problems.join(", "))));
        }
        // The chart label on the StatefulSet agrees with a deployed release (a failed upgrade
        // leaves the objects of the revision before it).
        if let (Ok(inst), true) = (cx.var("instance"), st.status.as_str() == "deployed") {
            if let Ok(sts) = Api::<StatefulSet>::namespaced(cx.client(), &cx.namespace).get(&inst).await {
                if let Some(label) = sts.labels().get("helm.sh/chart") {
                    if label != &st.chart {
                        return Err(StepError::failed(format!(
                            "statefulset {inst} has helm.sh/chart={label}, helm status says {}",
                            st.chart
                        )));
                    }
                }
            }
        }
        let history: Vec<serde_json::Value> =
            hist.iter().map(|h| serde_json::json!({"revision": h.revision, "chart": h.chart, "status": h.status.as_str()})).collect();
        cx.outcome.record(
            "release",
            serde_json::json!({"revision": st.revision, "chart": st.chart, "status": st.status.as_str(), "history": history}),
        );
        Ok(())
    }
}

impl Operation for ExpectRelease {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.check(cx).boxed()
    }
}

#[derive(Debug)]
pub struct WaitRollout {
    timeout: Duration,
}

impl WaitRollout {
    pub fn compile(s: &model::WaitRollout, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        cx.scope.require("instance", &cx.site, "statefulset")?;
        Ok(Box::new(WaitRollout { timeout: cx.duration("timeout", &s.timeout, DEFAULT_WAIT)? }))
    }
}

impl Operation for WaitRollout {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            let inst = cx.var("instance")?;
            let api = Api::<StatefulSet>::namespaced(cx.client(), &cx.namespace);
            let sts = crate::wait::until(&api, &inst, &format!("statefulset {inst} to roll out"), self.timeout, |s: Option<&StatefulSet>| {
                s.is_some_and(rolled_out)
            })
            .await?
            .expect("condition needs the object");
            let st = sts.status.unwrap_or_default();
            cx.outcome.record(
                "rollout",
                serde_json::json!({"statefulset": inst, "replicas": st.replicas, "ready": st.ready_replicas, "updated": st.updated_replicas}),
            );
            Ok(())
        }
        .boxed()
    }
}

/// Whether a StatefulSet has fully rolled out its current spec.
pub fn rolled_out(s: &StatefulSet) -> bool {
    let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &s.status else { return false };
    st.observed_generation.unwrap_or(0) >= s.metadata.generation.unwrap_or(0)
        && st.replicas == want
        && st.ready_replicas.unwrap_or(0) == want
        && st.updated_replicas.unwrap_or(0) == want
        && st.current_revision.is_some()
        && st.current_revision == st.update_revision
}

/// When the datastore claim `claim` does not hold `volume` (the volume it had before an
/// upgrade): if that volume is still bound to another claim of the namespace, the upgrade
/// renamed the StatefulSet and orphaned the datastore. Returns that chart finding, naming
/// the rename, the orphaned claim and its volume, and the new claim and its volume.
pub async fn orphaned_datastore(cx: &CaseCx<'_>, claim: &str, volume: &str) -> Result<Option<StepError>, Error> {
    use k8s_openapi::api::core::v1::PersistentVolume;
    let Some(pv) = Api::<PersistentVolume>::all(cx.client()).get_opt(volume).await.map_err(Error::kube(format!("get volume {volume}")))?
    else {
        return Ok(None);
    };
    let Some(old_claim) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.name.clone()) else {
        return Ok(None);
    };
    if old_claim == claim {
        return Ok(None);
    }
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(cx.client(), &cx.namespace);
    if pvcs.get_opt(&old_claim).await.map_err(Error::kube(format!("get claim {old_claim}")))?.is_none() {
        return Ok(None);
    }
    let new_volume = pvcs
        .get_opt(claim)
        .await
        .map_err(Error::kube(format!("get claim {claim}")))?
        .and_then(|c| c.spec.and_then(|s| s.volume_name))
        .unwrap_or_else(|| "none yet".into());
    let sts_of = |c: &str| {
        let rest = c.strip_prefix(&format!("{}-", crate::contract::DATASTORE_CLAIM_TEMPLATE)).unwrap_or(c);
        rest.rsplit_once('-').map(|(s, _)| s.to_string()).unwrap_or_else(|| rest.to_string())
    };
    let (old_sts, new_sts) = (sts_of(&old_claim), sts_of(claim));
    let renamed = if old_sts != new_sts {
        format!("the upgrade renamed StatefulSet {old_sts} to {new_sts}, so its datastore claim changed")
    } else {
        "the datastore claim changed".to_string()
    };
    Ok(Some(StepError::chart(
        format!("StatefulSet {new_sts} (was {old_sts})"),
        format!(
            "the upgrade orphans the datastore: {renamed}; claim {old_claim} (volume {volume}) is orphaned with its data, and the new claim {claim} is on a new volume ({new_volume})"
        ),
        format!("keep the StatefulSet's name stable across chart versions, or ship a migration that moves volume {volume}'s data to the new claim; until then, operators must not upgrade across the rename"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_needs_current_equal_update_revision() {
        let mut s: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"generation": 2},
            "spec": {"replicas": 1, "selector": {}, "serviceName": "x", "template": {}},
            "status": {"observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "b"}
        }))
        .unwrap();
        assert!(!rolled_out(&s));
        s.status.as_mut().unwrap().current_revision = Some("b".into());
        assert!(rolled_out(&s));
        s.status.as_mut().unwrap().observed_generation = Some(1);
        assert!(!rolled_out(&s));
    }
}
