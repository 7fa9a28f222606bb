//! Runs one scenario case: its own namespace and helm home, steps in order, artifacts on
//! failure, catch and finally blocks, and the normalised outcome.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use regex::Regex;

use super::catalogue;
use super::env::Env;
use super::model::{self, duration, Scenario, Step};
use super::outcome::Outcome;
use super::runbook::{self, Resolve, Runbook};
use crate::cluster::nodes::{KWOK_LABEL, ZONE_LABEL};
use crate::error::{Error, Result};
use crate::helm::{ChartRef, Helm, InstallOpts, ReleaseOpts, Values};
use crate::report::{CaseOutcome, CaseResult};
use crate::run::RUN_LABEL;

const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// What running a case produced.
pub struct CaseRun {
    pub result: CaseResult,
    /// What was observed so far, normalised (also for a failed or cut-short case).
    pub observed: String,
    /// The case's variables at its end (`pod`, `claim`, saved names), with real names.
    pub vars: BTreeMap<String, String>,
    /// The normalised outcome, when the case has a `snapshot` step and passed.
    pub snapshot: Option<String>,
    pub namespace: String,
}

/// The mutable state of one case.
pub struct Ctx<'e> {
    pub env: &'e Env,
    pub scenario: &'e Scenario,
    pub namespace: String,
    pub helm: Helm,
    pub vars: BTreeMap<String, String>,
    pub outcome: Outcome,
    pub snapshot: bool,
    dir: PathBuf,
    repo: Option<String>,
    db: Option<crate::postgres::Database>,
    zones: BTreeMap<String, String>,
    /// The last runbook run and when, for time-to-recovery notes and findings.
    last_runbook: Option<(String, Instant)>,
    /// Facts for the summary that vary run to run (timings): never in the snapshot.
    pub notes: Vec<String>,
}

/// A namespace name from a case name and the run id: lowercase, `-` separated, <= 63 chars.
pub fn namespace_for(case: &str, run: &str) -> String {
    let mut base: String = case.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    base.truncate(63 - run.len() - 1);
    format!("{}-{run}", base.trim_end_matches('-'))
}

/// Runs one case (`test_name`, steps) of `scenario` in `env`.
pub async fn run_case(env: &Env, scenario: &Scenario, test_name: &str, steps: &[Step]) -> CaseRun {
    let started = Instant::now();
    let namespace = namespace_for(test_name, env.run.id().as_str());
    let mut slowest: Option<(String, Duration)> = None;
    let mut ctx = match Ctx::new(env, scenario, &namespace).await {
        Ok(c) => c,
        Err(e) => {
            return CaseRun {
                result: CaseResult {
                    name: test_name.to_string(),
                    duration: started.elapsed(),
                    outcome: CaseOutcome::Failed { step: "set-up".into(), message: chain(&e) },
                    slowest_step: None,
                    artifacts: None,
                    notes: Vec::new(),
                },
                snapshot: None,
                namespace,
                observed: String::new(),
                vars: BTreeMap::new(),
            }
        }
    };
    let mut failure: Option<(String, String)> = None;
    for (i, step) in steps.iter().enumerate() {
        let label = format!("{} ({})", i + 1, step.kind());
        let t = Instant::now();
        tracing::info!(case = test_name, step = %label, "step");
        let r = ctx.step(step).await;
        let took = t.elapsed();
        if slowest.as_ref().is_none_or(|(_, d)| took > *d) {
            slowest = Some((step.kind(), took));
        }
        if let Err(e) = r {
            failure = Some((label, chain(&e)));
            break;
        }
    }
    let mut artifacts = None;
    if failure.is_some() {
        artifacts = Some(ctx.collect_artifacts(test_name).await);
        for step in &scenario.catch {
            if let Err(e) = ctx.step(step).await {
                tracing::warn!("catch step {} failed: {}", step.kind(), chain(&e));
            }
        }
    }
    for step in &scenario.finally {
        if let Err(e) = ctx.step(step).await {
            if failure.is_none() {
                failure = Some((format!("finally ({})", step.kind()), chain(&e)));
            }
        }
    }
    let observed = ctx.outcome.render(test_name);
    let snapshot = (failure.is_none() && ctx.snapshot).then(|| observed.clone());
    if !env.keep {
        ctx.cleanup().await;
    }
    CaseRun {
        result: CaseResult {
            name: test_name.to_string(),
            duration: started.elapsed(),
            outcome: match failure {
                None => CaseOutcome::Passed,
                Some((step, message)) => CaseOutcome::Failed { step, message },
            },
            slowest_step: slowest,
            artifacts,
            notes: std::mem::take(&mut ctx.notes),
        },
        snapshot,
        namespace,
        observed,
        vars: ctx.vars.clone(),
    }
}

/// Which wording (if any) an event message matches.
type Matcher = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// An error and its causes, one line each.
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

fn timeout(t: &Option<String>) -> Result<Duration> {
    t.as_deref().map(duration).transpose().map(|d| d.unwrap_or(DEFAULT_WAIT))
}

/// `Kind/name` -> (kind, name).
fn object_ref(s: &str) -> Result<(String, String)> {
    s.split_once('/')
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .ok_or_else(|| Error::Invalid(format!("`{s}` is not an object reference like Pod/NAME")))
}

impl<'e> Ctx<'e> {
    async fn new(env: &'e Env, scenario: &'e Scenario, namespace: &str) -> Result<Ctx<'e>> {
        let client = env.cluster.client.clone();
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {RUN_LABEL: env.run.id().as_str(), "lily-e2e.io/scenario": scenario.name}}
        }))
        .map_err(Error::json("a namespace"))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(Error::kube(format!("create namespace {namespace}")))?;
        let dir = env.run.subdir(&format!("case-{namespace}"))?;
        let helm = Helm::new(dir.join("helm"))?.kubeconfig(env.cluster.kubeconfig());
        let mut vars = BTreeMap::new();
        vars.insert("release".into(), scenario.release.clone());
        vars.insert("namespace".into(), namespace.to_string());
        vars.insert("chart.latest".into(), env.repo.latest().to_string());
        vars.insert("chart.oldest".into(), env.repo.versions().first().map(|v| v.to_string()).unwrap_or_default());
        if let Some(p) = env.repo.previous() {
            vars.insert("chart.previous".into(), p.to_string());
        }
        let mut zones = BTreeMap::new();
        for n in Api::<Node>::all(client).list(&ListParams::default()).await.map_err(Error::kube("list nodes"))?.items {
            if let Some(z) = n.labels().get(ZONE_LABEL) {
                zones.insert(n.name_any(), z.clone());
            }
        }
        let mut outcome = Outcome::default();
        outcome.name(namespace, "<namespace>");
        outcome.name(env.run.id().as_str(), "<run-id>");
        Ok(Ctx {
            env,
            scenario,
            namespace: namespace.to_string(),
            helm,
            vars,
            outcome,
            snapshot: false,
            dir,
            repo: None,
            db: None,
            zones,
            last_runbook: None,
            notes: Vec::new(),
        })
    }

    fn client(&self) -> kube::Client {
        self.env.cluster.client.clone()
    }

    fn var(&self, name: &str) -> Result<String> {
        self.vars.get(name).cloned().ok_or_else(|| {
            Error::Invalid(format!(
                "`${{{name}}}` is not known at this step (known: {})",
                self.vars.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Fills `${var}` placeholders in every string of a step.
    fn substitute(&self, step: &Step) -> Result<Step> {
        let mut v = serde_json::to_value(step).map_err(Error::json("a step"))?;
        fn walk(v: &mut serde_json::Value, ctx: &Ctx<'_>) -> Result<()> {
            match v {
                serde_json::Value::String(s) => {
                    let re = Regex::new(r"\$\{([A-Za-z0-9_.\-]+)\}").expect("static regex");
                    let mut out = String::new();
                    let mut last = 0;
                    for c in re.captures_iter(s) {
                        let m = c.get(0).expect("group 0");
                        out.push_str(&s[last..m.start()]);
                        out.push_str(&ctx.var(&c[1])?);
                        last = m.end();
                    }
                    out.push_str(&s[last..]);
                    *s = out;
                }
                serde_json::Value::Array(a) => a.iter_mut().try_for_each(|x| walk(x, ctx))?,
                serde_json::Value::Object(o) => o.values_mut().try_for_each(|x| walk(x, ctx))?,
                _ => {}
            }
            Ok(())
        }
        walk(&mut v, self)?;
        serde_json::from_value(v).map_err(Error::json("a step after substitution"))
    }

    fn values_path(&self, f: &str) -> PathBuf {
        let p = PathBuf::from(f);
        if p.is_absolute() {
            p
        } else {
            crate::helm::values_dir().join(p)
        }
    }

    pub async fn step(&mut self, step: &Step) -> Result<()> {
        let step = self.substitute(step)?;
        match &step {
            Step::Postgres(s) => self.postgres(s).await,
            Step::HelmRepoAdd(s) => {
                self.helm.repo_add(&s.name, self.env.repo.url()).await?;
                self.helm.repo_update(&[s.name.as_str()]).await?;
                self.repo = Some(s.name.clone());
                let versions: Vec<String> = self.env.repo.versions().iter().map(|v| v.to_string()).collect();
                self.outcome.record("helm-repo-add", serde_json::json!({"repo": s.name, "versions": versions}));
                Ok(())
            }
            Step::HelmUpgrade(s) => self.helm_upgrade(s).await,
            Step::HelmRollback(s) => {
                let opts = ReleaseOpts { namespace: self.namespace.clone(), wait: None };
                self.helm.rollback(&self.scenario.release, Some(s.revision), &opts).await?;
                let st = self.helm.status(&self.scenario.release, &self.namespace).await?;
                self.outcome.record("helm-rollback", serde_json::json!({"to": s.revision, "revision": st.revision, "chart": st.chart}));
                Ok(())
            }
            Step::HelmUninstall(_) => {
                let opts = ReleaseOpts { namespace: self.namespace.clone(), wait: None };
                self.helm.uninstall(&self.scenario.release, &opts).await?;
                let claims = self.claims().await?;
                self.outcome.record("helm-uninstall", serde_json::json!({"claims-left": claims}));
                Ok(())
            }
            Step::ExpectRelease(s) => self.expect_release(s).await,
            Step::WaitRollout(s) => self.wait_rollout(timeout(&s.timeout)?).await,
            Step::ExpectPod(s) => self.expect_pod(s).await,
            Step::ExpectClaim(s) => self.expect_claim(s).await,
            Step::ExpectEvent(s) => self.expect_event(s, false).await,
            Step::ExpectNoEvent(s) => self.expect_event(s, true).await,
            Step::ContractCheck(s) => self.contract_check(s).await,
            Step::Runbook(s) => {
                let t = s.command_timeout.as_deref().map(duration).transpose()?.unwrap_or(Duration::from_secs(60));
                self.runbook(&s.name, t).await
            }
            Step::ExpectAttachment(a) => self.expect_attachment(a).await,
            Step::Snapshot(_) => {
                self.snapshot = true;
                Ok(())
            }
            Step::LoseZone(z) => self.lose_zone(&z.zone).await,
            Step::StopHeartbeat(n) => self.stop_heartbeat(&n.node).await,
            Step::Cordon(n) => self.cordon(&n.node).await,
            Step::Drain(n) => self.drain(&n.node).await,
            Step::UnmountDelay(u) => {
                let sim = self
                    .env
                    .cluster
                    .sim()
                    .ok_or_else(|| Error::Invalid("unmount-delay needs the local provider's simulated kubelets".into()))?;
                let d = u.delay.as_deref().map(duration).transpose()?.unwrap_or_default();
                sim.set_unmount_delay(&u.node, d);
                sim.set_unmount_stuck(&u.node, u.stuck);
                self.outcome.record("unmount-delay", serde_json::json!({"node": u.node, "delay": u.delay, "stuck": u.stuck}));
                Ok(())
            }
            Step::OutOfService(n) => {
                let patch = serde_json::json!({"spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}]}});
                Api::<Node>::all(self.client())
                    .patch(&n.node, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(Error::kube(format!("taint node {} out-of-service", n.node)))?;
                self.outcome.record("out-of-service", serde_json::json!({"node": n.node}));
                Ok(())
            }
            Step::Delete(d) => self.delete(d).await,
            Step::SaveNode(s) => {
                let pod = match &s.pod {
                    Some(p) => p.clone(),
                    None => self.var("pod")?,
                };
                let p = Api::<Pod>::namespaced(self.client(), &self.namespace)
                    .get(&pod)
                    .await
                    .map_err(Error::kube(format!("get pod {pod}")))?;
                let node = p.spec.and_then(|s| s.node_name).ok_or_else(|| Error::Invalid(format!("pod {pod} is not on a node")))?;
                self.outcome.name(&node, &format!("<{}>", s.as_));
                self.vars.insert(s.as_.clone(), node);
                Ok(())
            }
        }
    }

    async fn postgres(&mut self, s: &model::PostgresStep) -> Result<()> {
        let db = self.env.postgres.create_database(&database_name(&self.namespace)).await?;
        let binding =
            crate::postgres::secret::StorageBinding { name: s.name.clone(), ..crate::postgres::secret::StorageBinding::new(&s.secret) };
        let url = db.url(crate::postgres::dsn::SslMode::Require);
        let secret = binding.secret(&self.namespace, self.env.run.id(), &url);
        secret.create(&self.client()).await?;
        self.outcome.name(&db.user, "<db-user>");
        self.outcome.name(&db.name, "<db-name>");
        self.outcome.name(&format!("{}:{}", url.host, url.port), "<host>:<port>");
        self.outcome.record(
            "postgres",
            serde_json::json!({"secret": s.secret, "key": binding.secret_key, "url": url.redacted(), "tls": self.env.postgres.tls()}),
        );
        self.db = Some(db);
        Ok(())
    }

    async fn helm_upgrade(&mut self, s: &model::HelmUpgrade) -> Result<()> {
        let mut values = Values::files(self.scenario.values.iter().chain(&s.values).map(|f| self.values_path(f)));
        if let Some(inline) = &s.set {
            let p = self.dir.join(format!("inline-values-{}.yaml", self.outcome_len()));
            std::fs::write(&p, crate::yaml::to_string(inline)?).map_err(Error::io(format!("write {}", p.display())))?;
            values = values.file(p);
        }
        let wait = if s.wait { Some(timeout(&s.timeout)?) } else { None };
        let (chart, version) = match &s.chart {
            Some(src) => (self.package_chart(src).await?, None),
            None => {
                let repo = self.repo.clone().ok_or_else(|| Error::Invalid("helm-upgrade needs a helm-repo-add step before it".into()))?;
                (ChartRef::Repo { repo, chart: self.env.repo.chart_name().to_string() }, s.version.clone())
            }
        };
        let opts = InstallOpts { namespace: self.namespace.clone(), version, values, wait, create_namespace: false, reset_values: false };
        // An unknown version fails before helm runs, listing the versions that exist.
        let known = match (&s.chart, &s.version) {
            (None, Some(v)) => self.env.repo.version(v).map(|_| ()),
            _ => Ok(()),
        };
        let r = match known {
            Ok(()) => self.helm.upgrade_install(&self.scenario.release, &chart, &opts).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match (&s.expect_failure, r) {
            (None, Ok(_)) => {}
            (None, Err(e)) => return Err(e),
            (Some(re), Ok(_)) => {
                return Err(Error::Invalid(format!("the upgrade was expected to fail with /{re}/ but succeeded")));
            }
            (Some(re), Err(e)) => {
                let msg = chain(&e);
                let r = Regex::new(re).map_err(|e| Error::Invalid(format!("bad expect-failure regex: {e}")))?;
                let m = r.find(&msg).ok_or_else(|| Error::Invalid(format!("the upgrade failed, but not with /{re}/: {msg}")))?;
                let st = self.helm.status(&self.scenario.release, &self.namespace).await.ok();
                self.outcome.record(
                    "helm-upgrade",
                    serde_json::json!({
                        "version": s.version,
                        "failed": true,
                        "reason": m.as_str(),
                        "revision": st.as_ref().map(|s| s.revision),
                        "status": st.as_ref().map(|s| s.status.as_str().to_string()),
                    }),
                );
                return Ok(());
            }
        }
        let st = self.helm.status(&self.scenario.release, &self.namespace).await?;
        self.discover_instance().await?;
        self.outcome.record(
            "helm-upgrade",
            serde_json::json!({"version": s.version.clone().unwrap_or_else(|| "(latest)".into()), "revision": st.revision, "chart": st.chart, "status": st.status.as_str()}),
        );
        Ok(())
    }

    /// Packages `fixture@X.Y.Z` (the fixture chart as that version) or a chart source into
    /// the case directory.
    async fn package_chart(&self, src: &str) -> Result<ChartRef> {
        let source = match src.strip_prefix("fixture@") {
            Some(v) => crate::helm::ChartSource::Dir {
                path: crate::helm::fixture_chart_dir(),
                version: Some(crate::helm::chart::parse_version(v)?),
            },
            None => crate::helm::ChartSource::parse(src)?,
        };
        source.check()?;
        match source {
            crate::helm::ChartSource::Dir { path, version } => {
                let v = version.map(|v| v.to_string());
                Ok(ChartRef::Path(self.helm.package(&path, v.as_deref(), &self.dir).await?))
            }
            crate::helm::ChartSource::Archive { path } => Ok(ChartRef::Path(path)),
            crate::helm::ChartSource::Remote { .. } => {
                Err(Error::Invalid(format!("helm-upgrade chart `{src}`: use a chart directory or .tgz")))
            }
        }
    }

    fn outcome_len(&self) -> usize {
        self.vars.len()
    }

    /// Finds the StatefulSet the release created (by helm's release annotations, so any chart
    /// works), and sets `instance`, `pod` and `claim`.
    async fn discover_instance(&mut self) -> Result<()> {
        let sts = Api::<StatefulSet>::namespaced(self.client(), &self.namespace)
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list statefulsets"))?;
        let mut mine: Vec<StatefulSet> =
            sts.items.into_iter().filter(|s| s.annotations().get("meta.helm.sh/release-name") == Some(&self.scenario.release)).collect();
        mine.sort_by_key(|s| (!s.name_any().ends_with("-daemon"), s.name_any()));
        if let Some(s) = mine.first() {
            let name = s.name_any();
            let pod = format!("{name}-0");
            self.vars.insert("instance".into(), name.clone());
            if let Some(vct) = s.spec.as_ref().and_then(|sp| sp.volume_claim_templates.as_ref()).and_then(|v| v.first()) {
                self.vars.insert("claim".into(), format!("{}-{pod}", vct.name_any()));
            }
            self.vars.insert("pod".into(), pod);
        }
        Ok(())
    }

    async fn expect_release(&mut self, s: &model::ExpectRelease) -> Result<()> {
        let st = self.helm.status(&self.scenario.release, &self.namespace).await?;
        let hist = self.helm.history(&self.scenario.release, &self.namespace).await?;
        let chart_version = st.chart_version.clone();
        let mut problems = Vec::new();
        if let Some(r) = s.revision {
            if st.revision != r {
                problems.push(format!("revision {} (expected {r})", st.revision));
            }
        }
        if let Some(v) = &s.chart_version {
            if &chart_version != v {
                problems.push(format!("chart version {chart_version} (expected {v})"));
            }
        }
        if let Some(want) = &s.status {
            if st.status.as_str() != want {
                problems.push(format!("status {} (expected {want})", st.status.as_str()));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Invalid(format!("release {}: {}", self.scenario.release, problems.join(", "))));
        }
        // The chart label on the StatefulSet agrees with a deployed release (a failed upgrade
        // leaves the objects of the revision before it).
        if let (Ok(inst), true) = (self.var("instance"), st.status.as_str() == "deployed") {
            if let Ok(sts) = Api::<StatefulSet>::namespaced(self.client(), &self.namespace).get(&inst).await {
                if let Some(label) = sts.labels().get("helm.sh/chart") {
                    if label != &st.chart {
                        return Err(Error::Invalid(format!("statefulset {inst} has helm.sh/chart={label}, helm status says {}", st.chart)));
                    }
                }
            }
        }
        let history: Vec<serde_json::Value> =
            hist.iter().map(|h| serde_json::json!({"revision": h.revision, "chart": h.chart, "status": h.status.as_str()})).collect();
        self.outcome.record(
            "release",
            serde_json::json!({"revision": st.revision, "chart": st.chart, "status": st.status.as_str(), "history": history}),
        );
        Ok(())
    }

    async fn wait_rollout(&mut self, t: Duration) -> Result<()> {
        let inst = self.var("instance")?;
        let api = Api::<StatefulSet>::namespaced(self.client(), &self.namespace);
        let sts = crate::wait::until(&api, &inst, &format!("statefulset {inst} to roll out"), t, |s: Option<&StatefulSet>| {
            s.is_some_and(rolled_out)
        })
        .await?
        .expect("condition needs the object");
        let st = sts.status.unwrap_or_default();
        self.outcome.record(
            "rollout",
            serde_json::json!({"statefulset": inst, "replicas": st.replicas, "ready": st.ready_replicas, "updated": st.updated_replicas}),
        );
        Ok(())
    }

    async fn expect_pod(&mut self, s: &model::ExpectPod) -> Result<()> {
        let name = match &s.name {
            Some(n) => n.clone(),
            None => self.var("pod")?,
        };
        let api = Api::<Pod>::namespaced(self.client(), &self.namespace);
        let zones = self.zones.clone();
        let want = s.clone();
        let mut what = format!("pod {name}");
        for (k, v) in [("phase", &s.phase), ("zone", &s.zone), ("node", &s.node), ("not on node", &s.not_node), ("container", &s.container)]
        {
            if let Some(v) = v {
                what.push_str(&format!(" {k}={v}"));
            }
        }
        let observe = s.observe;
        let t = timeout(&s.timeout)?;
        let started = Instant::now();
        let waited = crate::wait::until(&api, &name, &what, t, move |p: Option<&Pod>| {
            let Some(p) = p else { return false };
            if p.metadata.deletion_timestamp.is_some() {
                return false;
            }
            let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let zone = zones.get(&node).cloned().unwrap_or_default();
            want.phase.as_ref().is_none_or(|w| *w == phase)
                && want.zone.as_ref().is_none_or(|w| *w == zone)
                && want.node.as_ref().is_none_or(|w| *w == node)
                && want.not_node.as_ref().is_none_or(|w| *w != node)
                && want.container.as_ref().is_none_or(|c| p.spec.as_ref().is_some_and(|s| s.containers.iter().any(|x| &x.name == c)))
        })
        .await;
        let pod = match (waited, observe) {
            (Ok(p), _) => p.expect("condition needs the object"),
            (Err(Error::Timeout { .. }), true) => {
                self.outcome.record(
                    "observe-pod",
                    serde_json::json!({"pod": name, "wanted": what.replace(&name, "<pod>"), "reached": false, "within": s.timeout}),
                );
                if let Some((rb, _)) = &self.last_runbook {
                    self.outcome.finding(serde_json::json!({
                        "runbook": rb,
                        "recovered": false,
                        "finding": format!("the guide's runbook did not get the pod to `{}` within {}s", what.replace(&name, "<pod>"), t.as_secs()),
                    }));
                }
                return Ok(());
            }
            (Err(e), _) => return Err(e),
        };
        if observe {
            let secs = started.elapsed().as_secs();
            tracing::info!("{what}: reached after {secs}s");
            self.outcome.record(
                "observe-pod",
                serde_json::json!({"pod": name, "wanted": what.replace(&name, "<pod>"), "reached": true, "within": s.timeout}),
            );
            return Ok(());
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        if s.phase.as_deref() == Some("Running") {
            if let Some((rb, at)) = &self.last_runbook {
                self.notes.push(format!("pod Running {:.1}s after runbook {rb}", at.elapsed().as_secs_f64()));
            }
        }
        // Only what the step asked about: where an unconstrained pod lands is the scheduler's
        // choice and would make the outcome flaky.
        let mut rec = serde_json::json!({
            "pod": name,
            "phase": pod.status.as_ref().and_then(|s| s.phase.clone()),
        });
        if s.zone.is_some() {
            rec["zone"] = serde_json::json!(self.zones.get(&node));
        }
        if let Some(c) = &s.container {
            rec["container"] = serde_json::json!(c);
        }
        if s.node.is_some() || s.not_node.is_some() {
            rec["node"] = serde_json::json!(node);
        }
        self.outcome.record("pod", rec);
        Ok(())
    }

    async fn expect_claim(&mut self, s: &model::ExpectClaim) -> Result<()> {
        let name = match &s.name {
            Some(n) => n.clone(),
            None => self.var("claim")?,
        };
        let api = Api::<PersistentVolumeClaim>::namespaced(self.client(), &self.namespace);
        let want = s.clone();
        let what = format!("claim {name}{}", s.phase.as_ref().map(|p| format!(" phase={p}")).unwrap_or_default());
        let pvc = crate::wait::until(&api, &name, &what, timeout(&s.timeout)?, move |c: Option<&PersistentVolumeClaim>| {
            let Some(c) = c else { return false };
            let phase = c.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            let vol = c.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
            c.metadata.deletion_timestamp.is_none()
                && want.phase.as_ref().is_none_or(|w| *w == phase)
                && want.volume.as_ref().is_none_or(|w| *w == vol)
                && want.not_volume.as_ref().is_none_or(|w| *w != vol && !vol.is_empty())
        })
        .await?
        .expect("condition needs the object");
        let vol = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
        let mut zone = None;
        if !vol.is_empty() {
            let pv = Api::<PersistentVolume>::all(self.client()).get(&vol).await.map_err(Error::kube(format!("get volume {vol}")))?;
            zone = pv_zone(&pv);
        }
        if let Some(z) = &s.zone {
            if zone.as_deref() != Some(z) {
                return Err(Error::Invalid(format!("claim {name}'s volume is pinned to zone {zone:?}, expected {z}")));
            }
        }
        if let Some(var) = &s.save_volume {
            self.vars.insert(var.clone(), vol.clone());
        }
        let placeholder = if vol.is_empty() { String::new() } else { self.outcome.generated("volume", &vol) };
        let mut rec = serde_json::json!({"claim": name, "phase": pvc.status.as_ref().and_then(|s| s.phase.clone()), "volume": placeholder});
        if s.zone.is_some() {
            rec["volume-zone"] = serde_json::json!(zone);
        }
        if s.not_volume.is_some() {
            rec["datastore"] = serde_json::json!("replaced: a new volume; the data on the old one is discarded");
        } else if s.volume.is_some() {
            rec["datastore"] = serde_json::json!("kept: the same volume, no data lost");
        }
        self.outcome.record("claim", rec);
        Ok(())
    }

    async fn expect_event(&mut self, s: &model::ExpectEvent, absent: bool) -> Result<()> {
        let (kind, name) = object_ref(&s.object)?;
        let version = self.env.cluster.version.clone();
        let matcher: Matcher = match (&s.catalogue, &s.message) {
            (Some(entry), _) => {
                let (reason, ws) = catalogue::wordings(entry, &version)
                    .ok_or_else(|| Error::Invalid(format!("no catalogue entry `{entry}` (known: {})", catalogue::names().join(", "))))?;
                if reason != s.reason {
                    return Err(Error::Invalid(format!("catalogue entry {entry} is a {reason} event, not {}", s.reason)));
                }
                if ws.is_empty() {
                    return Err(Error::Invalid(format!("catalogue entry {entry} has no wording for Kubernetes {version}")));
                }
                let entry = entry.clone();
                let version = version.clone();
                Box::new(move |m: &str| catalogue::matching(&entry, &version, m).map(|w| w.source.to_string()))
            }
            (None, Some(re)) => {
                let r = Regex::new(re).map_err(|e| Error::Invalid(format!("bad message regex: {e}")))?;
                Box::new(move |m: &str| r.is_match(m).then(|| "regex".to_string()))
            }
            (None, None) => Box::new(|_: &str| Some("any".to_string())),
        };
        let api = Api::<Event>::namespaced(self.client(), &self.namespace);
        let cfg = watcher::Config::default().fields(&format!("involvedObject.kind={kind},involvedObject.name={name}"));
        let reason = s.reason.clone();
        let what = format!(
            "a {} event on {kind}/{name}{}",
            s.reason,
            s.catalogue.as_ref().map(|c| format!(" worded as catalogue entry {c} for Kubernetes {version}")).unwrap_or_default()
        );
        let t = timeout(&s.timeout)?;
        let found = crate::wait::until_list(&api, cfg, &what, t, |evs: &[Arc<Event>]| {
            evs.iter().any(|e| e.reason.as_deref() == Some(&reason) && matcher(e.message.as_deref().unwrap_or("")).is_some())
        })
        .await;
        match (absent, found) {
            (false, Ok(evs)) => {
                let e = evs
                    .iter()
                    .find(|e| e.reason.as_deref() == Some(&s.reason) && matcher(e.message.as_deref().unwrap_or("")).is_some())
                    .expect("the condition found one");
                let msg = e.message.clone().unwrap_or_default();
                let source = matcher(&msg);
                let mut norm = msg.clone();
                let vol_re = Regex::new(r#"volume "(pvc-[0-9a-f-]+)""#).expect("static regex");
                if let Some(c) = vol_re.captures(&msg) {
                    let p = self.outcome.generated("volume", &c[1]);
                    norm = norm.replace(&c[1], &p);
                }
                self.outcome.record(
                    "event",
                    serde_json::json!({"object": format!("{kind}/{name}"), "reason": s.reason, "catalogue": s.catalogue, "wording": source, "message": norm}),
                );
                Ok(())
            }
            (false, Err(Error::Timeout { what, after, last_seen })) if s.catalogue.is_some() => Err(Error::Invalid(format!(
                "the fault did not reproduce: no {what} within {}s (events seen on the object: {last_seen})",
                after.as_secs()
            ))),
            (false, Err(e)) => Err(e),
            (true, Ok(evs)) => {
                let e = evs.iter().find(|e| e.reason.as_deref() == Some(&s.reason)).map(|e| e.message.clone().unwrap_or_default());
                Err(Error::Invalid(format!("did not expect {what}, but saw: {}", e.unwrap_or_default())))
            }
            (true, Err(Error::Timeout { .. })) => {
                self.outcome
                    .record("no-event", serde_json::json!({"object": format!("{kind}/{name}"), "reason": s.reason, "within": s.timeout}));
                Ok(())
            }
            (true, Err(e)) => Err(e),
        }
    }

    async fn contract_check(&mut self, s: &model::ContractCheck) -> Result<()> {
        let pod = match &s.pod {
            Some(p) => p.clone(),
            None => self.var("pod")?,
        };
        let app = s.application_name.clone().unwrap_or_else(|| crate::postgres::secret::DEFAULT_APPLICATION_NAME.to_string());
        let opts = crate::postgres::contract::PodCheck {
            application_name: Some(app),
            ca_pem: self.env.postgres.ca_pem().map(str::to_string),
            ..Default::default()
        };
        let summary = crate::postgres::contract::check_pod(&self.client(), &self.namespace, &pod, &opts).await?;
        self.outcome.record("contract-check", summary);
        Ok(())
    }

    async fn claims(&self) -> Result<Vec<String>> {
        let l = Api::<PersistentVolumeClaim>::namespaced(self.client(), &self.namespace)
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list claims"))?;
        let mut v: Vec<String> = l.items.iter().map(|c| c.name_any()).collect();
        v.sort();
        Ok(v)
    }

    async fn expect_attachment(&mut self, a: &model::ExpectAttachment) -> Result<()> {
        use k8s_openapi::api::storage::v1::VolumeAttachment;
        let api = Api::<VolumeAttachment>::all(self.client());
        let mut want = a.nodes.clone();
        want.sort();
        let vol = a.volume.clone();
        let what = format!("volume {vol} attached to exactly {want:?}");
        crate::wait::until_list(&api, watcher::Config::default(), &what, timeout(&a.timeout)?, |vas: &[Arc<VolumeAttachment>]| {
            let mut on: Vec<String> = vas
                .iter()
                .filter(|va| va.spec.source.persistent_volume_name.as_deref() == Some(vol.as_str()))
                .filter(|va| va.metadata.deletion_timestamp.is_none() && va.status.as_ref().is_some_and(|s| s.attached))
                .map(|va| va.spec.node_name.clone())
                .collect();
            on.sort();
            on == want
        })
        .await?;
        let p = self.outcome.generated("volume", &a.volume);
        self.outcome.record("attachment", serde_json::json!({"volume": p, "attached-to": want}));
        Ok(())
    }

    async fn runbook(&mut self, name: &str, command_timeout: Duration) -> Result<()> {
        let rb = Runbook::load(&super::scenarios_dir().join("runbooks"), name)?;
        let release = self.scenario.release.clone();
        let mut values = BTreeMap::new();
        let mut findings = Vec::new();
        for (ph, p) in &rb.placeholders {
            let real = match p.resolve {
                Resolve::ReleasePod | Resolve::PendingPod => self.var("pod")?,
                Resolve::ClaimOfPod => continue, // captured from `describe`
            };
            let documented = runbook::documented_name(&p.documented, &release);
            if documented != real {
                findings.push(serde_json::json!({"runbook": rb.name, "placeholder": ph, "documented": documented, "real": real}));
            }
            values.insert(ph.clone(), real);
        }
        let kubectl = self.env.tools.path("kubectl")?;
        let mut commands = Vec::new();
        for st in &rb.steps {
            let mut args = runbook::fill(&st.kubectl, &values)?;
            args.extend(["--namespace".to_string(), self.namespace.clone()]);
            let env = [(std::ffi::OsString::from("KUBECONFIG"), self.env.cluster.kubeconfig().as_os_str().to_owned())];
            let os: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            let shown = format!("kubectl {}", args[..args.len() - 2].join(" "));
            let out = match crate::process::run_command(&kubectl, &os, &env, None, command_timeout).await {
                Ok(o) => o,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    commands.push(serde_json::json!({"command": shown, "completed": false, "note": format!("stopped after {}s", command_timeout.as_secs())}));
                    continue;
                }
                Err(e) => return Err(Error::Tool { what: format!("cannot run kubectl {}", args.join(" ")), source: Some(Box::new(e)) }),
            };
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            if !out.status.success() {
                return Err(Error::Tool {
                    what: format!(
                        "runbook {} step `kubectl {}` failed: {}",
                        rb.name,
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    source: None,
                });
            }
            for (ph, re) in &st.capture {
                let r = Regex::new(re).map_err(|e| Error::Invalid(format!("bad capture regex in runbook {}: {e}", rb.name)))?;
                let v = r.captures(&stdout).and_then(|c| c.get(1)).map(|m| m.as_str().to_string()).ok_or_else(|| {
                    Error::Invalid(format!("runbook {}: `kubectl {}` printed no match for /{re}/", rb.name, args.join(" ")))
                })?;
                if let Some(p) = rb.placeholders.get(ph) {
                    let documented = runbook::documented_name(&p.documented, &release);
                    if documented != v {
                        findings.push(serde_json::json!({"runbook": rb.name, "placeholder": ph, "documented": documented, "real": v}));
                    }
                }
                values.insert(ph.clone(), v);
            }
            commands.push(serde_json::json!({"command": shown, "completed": true}));
        }
        for f in &findings {
            self.outcome.finding(f);
        }
        self.outcome.record("runbook", serde_json::json!({"name": rb.name, "commands": commands}));
        self.last_runbook = Some((rb.name.clone(), Instant::now()));
        Ok(())
    }

    fn zone_nodes(&self, zone: &str) -> Vec<String> {
        self.zones.iter().filter(|(_, z)| *z == zone).map(|(n, _)| n.clone()).collect()
    }

    async fn stop_heartbeat(&mut self, node: &str) -> Result<()> {
        let patch = serde_json::json!({"metadata": {"labels": {KWOK_LABEL.0: null}}});
        Api::<Node>::all(self.client())
            .patch(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(Error::kube(format!("stop node {node}'s heartbeat")))?;
        self.outcome.record("stop-heartbeat", serde_json::json!({"node": node}));
        Ok(())
    }

    async fn lose_zone(&mut self, zone: &str) -> Result<()> {
        let nodes = self.zone_nodes(zone);
        if nodes.is_empty() {
            return Err(Error::Invalid(format!("no node in zone {zone}")));
        }
        let api = Api::<Node>::all(self.client());
        for n in &nodes {
            let patch = serde_json::json!({"metadata": {"labels": {KWOK_LABEL.0: null}}});
            api.patch(n, &PatchParams::default(), &Patch::Merge(patch)).await.map_err(Error::kube(format!("stop node {n}")))?;
            api.delete(n, &DeleteParams::default()).await.map_err(Error::kube(format!("delete node {n}")))?;
        }
        for n in &nodes {
            crate::wait::until(&api, n, &format!("node {n} to be gone"), DEFAULT_WAIT, |x: Option<&Node>| x.is_none()).await?;
        }
        self.outcome.record("lose-zone", serde_json::json!({"zone": zone, "nodes": nodes}));
        Ok(())
    }

    async fn cordon(&mut self, node: &str) -> Result<()> {
        Api::<Node>::all(self.client())
            .patch(node, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})))
            .await
            .map_err(Error::kube(format!("cordon node {node}")))?;
        self.outcome.record("cordon", serde_json::json!({"node": node}));
        Ok(())
    }

    async fn drain(&mut self, node: &str) -> Result<()> {
        self.cordon(node).await?;
        let api = Api::<Pod>::namespaced(self.client(), &self.namespace);
        let pods = api.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await.map_err(Error::kube("list pods"))?;
        let mut evicted = Vec::new();
        for p in pods.items {
            api.evict(&p.name_any(), &EvictParams::default()).await.map_err(Error::kube(format!("evict pod {}", p.name_any())))?;
            evicted.push(p.name_any());
        }
        self.outcome.record("drain", serde_json::json!({"node": node, "evicted": evicted}));
        Ok(())
    }

    async fn delete(&mut self, d: &model::DeleteStep) -> Result<()> {
        let (kind, name) = object_ref(&d.object)?;
        let c = self.client();
        let ns = self.namespace.clone();
        let dp = DeleteParams::default();
        let t = DEFAULT_WAIT;
        match kind.as_str() {
            "Pod" => {
                let api = Api::<Pod>::namespaced(c, &ns);
                let uid = api.get(&name).await.map_err(Error::kube(format!("get pod {name}")))?.uid();
                api.delete(&name, &dp).await.map_err(Error::kube(format!("delete pod {name}")))?;
                if d.wait {
                    // The same name comes back from the StatefulSet: wait for the old uid to go.
                    crate::wait::until(&api, &name, &format!("pod {name} (old incarnation) to be gone"), t, move |p: Option<&Pod>| {
                        p.is_none_or(|p| p.uid() != uid)
                    })
                    .await?;
                }
            }
            "PersistentVolumeClaim" => {
                let api = Api::<PersistentVolumeClaim>::namespaced(c, &ns);
                api.delete(&name, &dp).await.map_err(Error::kube(format!("delete claim {name}")))?;
                if d.wait {
                    crate::wait::until(&api, &name, &format!("claim {name} to be gone"), t, |p: Option<&PersistentVolumeClaim>| {
                        p.is_none()
                    })
                    .await?;
                }
            }
            "Node" => {
                let api = Api::<Node>::all(c);
                api.delete(&name, &dp).await.map_err(Error::kube(format!("delete node {name}")))?;
                if d.wait {
                    crate::wait::until(&api, &name, &format!("node {name} to be gone"), t, |p: Option<&Node>| p.is_none()).await?;
                }
            }
            other => return Err(Error::Invalid(format!("delete supports Pod, PersistentVolumeClaim and Node, not {other}"))),
        }
        self.outcome.record("delete", serde_json::json!({"object": format!("{kind}/{name}")}));
        Ok(())
    }

    async fn collect_artifacts(&mut self, test_name: &str) -> PathBuf {
        let dir = super::artifacts::dir_for(&self.env.artifacts, test_name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut helm_files = Vec::new();
        if let Ok(h) = self.helm.history(&self.scenario.release, &self.namespace).await {
            let text: String = h
                .iter()
                .map(|e| format!("{}\t{}\t{}\t{}\t{}\n", e.revision, e.updated, e.status.as_str(), e.chart, e.description))
                .collect();
            helm_files.push(("helm-history.txt".to_string(), text));
        }
        if let Ok(s) = self.helm.status(&self.scenario.release, &self.namespace).await {
            helm_files.push(("helm-status.txt".to_string(), format!("{s:#?}")));
        }
        let mut logs = self.env.cluster.logs();
        logs.extend(self.env.postgres.current_logs().await);
        let client = self.client();
        match super::artifacts::Collector::new(&client, &self.namespace, dir.clone()) {
            Ok(c) => c.collect(helm_files, &logs).await,
            Err(_) => dir,
        }
    }

    async fn cleanup(&mut self) {
        // The database goes with the server at teardown.
        self.db = None;
        let _ = Api::<Namespace>::all(self.client()).delete(&self.namespace, &DeleteParams::background()).await;
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

/// The zone a PV's node affinity pins it to.
pub fn pv_zone(pv: &PersistentVolume) -> Option<String> {
    pv.spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == ZONE_LABEL)
        .and_then(|e| e.values.as_ref()?.first().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_valid_dns_labels() {
        let ns = namespace_for("pvc-node-affinity-conflict/release-deleted-without-its-claims-and-more", "r0123abcd");
        assert!(ns.len() <= 63, "{ns}");
        assert!(ns.ends_with("-r0123abcd"));
        assert!(ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{ns}");
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
