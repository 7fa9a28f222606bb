//! The suite engine: a plan of cases, a pool of environments, and a run that reports every
//! step of it as [`Event`]s to a [`Reporter`].
//!
//! Cases of non-exclusive scenarios share one environment and run concurrently, each in its
//! own namespace; an exclusive scenario's case (it breaks nodes or zones) gets an
//! environment of its own. At most [`Suite::parallel`] environments run at once. One
//! [`CancellationToken`] stops everything (Ctrl-C, SIGTERM, a deadline): running cases end
//! as errors naming the step they were in, cases not started as errors saying so.

pub mod outcomes;
pub mod preflight;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::error::chain;
use crate::report::{CaseOutcome, CaseReport, Event, Reporter};
use crate::scenario::case::{self, CaseRun, Until};
use crate::scenario::compile::{CasePlan, ScenarioPlan};
use crate::scenario::env::{Env, EnvOptions};

/// One case of the plan.
#[derive(Debug, Clone)]
pub struct PlannedCase {
    pub scenario: Arc<ScenarioPlan>,
    /// Index into `scenario.cases`.
    pub index: usize,
    /// Set when the case cannot apply here.
    pub skip: Option<String>,
}

impl PlannedCase {
    pub fn case(&self) -> &CasePlan {
        &self.scenario.cases[self.index]
    }
    pub fn name(&self) -> &str {
        &self.case().name
    }
}

/// A name given on the command line that matches no scenario or case.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("no scenario named `{name}` (known: {})", .known.join(", "))]
    NoScenario { name: String, known: Vec<String> },
    #[error("scenario {scenario} has no case `{case}` (its cases: {})", .known.join(", "))]
    NoCase { scenario: String, case: String, known: Vec<String> },
    #[error("scenario {scenario} has no cases; run it as `{scenario}`")]
    NoCases { scenario: String },
}

/// What to run, in order.
#[derive(Debug, Clone, Default)]
pub struct SuitePlan {
    pub cases: Vec<PlannedCase>,
}

impl SuitePlan {
    /// The cases of `scenarios` named by `names` (`NAME` or `NAME/CASE`; none: all).
    /// `fixture-only` scenarios are skipped when the charts are not the fixture's, and cases
    /// that use `${chart.previous}` when only one chart version is served.
    pub fn select(
        scenarios: &[Arc<ScenarioPlan>],
        names: &[String],
        custom_charts: bool,
        versions: usize,
    ) -> Result<SuitePlan, SelectError> {
        for n in names {
            let (scen, case) = n.split_once('/').map(|(s, c)| (s, Some(c))).unwrap_or((n.as_str(), None));
            let Some(sc) = scenarios.iter().find(|s| s.name == scen) else {
                return Err(SelectError::NoScenario { name: scen.to_string(), known: scenarios.iter().map(|s| s.name.clone()).collect() });
            };
            if let Some(c) = case {
                if sc.cases.len() == 1 && !sc.cases[0].name.contains('/') {
                    return Err(SelectError::NoCases { scenario: scen.to_string() });
                }
                if !sc.cases.iter().any(|x| x.name == *n) {
                    let known = sc.cases.iter().map(|x| x.name.rsplit('/').next().unwrap_or(&x.name).to_string()).collect();
                    return Err(SelectError::NoCase { scenario: scen.to_string(), case: c.to_string(), known });
                }
            }
        }
        let mut cases = Vec::new();
        for sc in scenarios {
            for (index, c) in sc.cases.iter().enumerate() {
                let wanted = names.is_empty() || names.iter().any(|n| *n == c.name || *n == sc.name);
                if !wanted {
                    continue;
                }
                let skip = if sc.fixture_only && custom_charts {
                    Some("it needs the fixture chart's versions (fixture-only); the suite runs other charts".to_string())
                } else if c.uses.contains("chart.previous") && versions < 2 {
                    Some("needs a previous version: add --chart OLD".to_string())
                } else {
                    None
                };
                cases.push(PlannedCase { scenario: sc.clone(), index, skip });
            }
        }
        Ok(SuitePlan { cases })
    }

    /// Skips, saying why, the cases whose steps need what `provider`'s clusters do not give
    /// (multi-attach's attaching volumes on kind).
    pub fn skip_unmet(mut self, provider: crate::scenario::env::ProviderKind) -> SuitePlan {
        for c in self.cases.iter_mut().filter(|c| c.skip.is_none()) {
            c.skip = provider.unmet(&c.case().needs()).map(|why| format!("cannot apply on --provider {}: it {why}", provider.name()));
        }
        self
    }

    /// Shard `k` of `n` (from 1), as `cargo nextest run --partition count:K/N` splits tests:
    /// unit `i` (in name order) goes to shard `i % n + 1`, where a unit is what shares an
    /// environment (all shared cases together, each exclusive case alone) or a skipped case.
    pub fn partition(&self, k: usize, n: usize) -> SuitePlan {
        let mut units: Vec<Vec<PlannedCase>> = Vec::new();
        let mut shared: Vec<PlannedCase> = Vec::new();
        for c in &self.cases {
            if c.skip.is_none() && !c.scenario.exclusive {
                shared.push(c.clone());
            } else {
                units.push(vec![c.clone()]);
            }
        }
        if !shared.is_empty() {
            units.push(shared);
        }
        units.sort_by(|a, b| a[0].name().cmp(b[0].name()));
        let cases = units.into_iter().enumerate().filter(|(i, _)| i % n + 1 == k).flat_map(|(_, u)| u).collect();
        SuitePlan { cases }
    }

    /// Groups of cases that share an environment: all shared cases together (they run
    /// concurrently), and each exclusive case alone; the longest first (by the steps'
    /// estimates), so that the suite is not left waiting for a long case started last.
    /// Skipped cases are in no group.
    pub fn batches(&self) -> Vec<Vec<PlannedCase>> {
        let runnable = self.cases.iter().filter(|c| c.skip.is_none()).cloned();
        let (exclusive, shared): (Vec<_>, Vec<_>) = runnable.partition(|c| c.scenario.exclusive);
        let mut out: Vec<Vec<PlannedCase>> = exclusive.into_iter().map(|c| vec![c]).collect();
        if !shared.is_empty() {
            out.push(shared);
        }
        let cost = |b: &Vec<PlannedCase>| b.iter().map(|c| c.case().estimate()).max().unwrap_or_default();
        // Stable: equal estimates keep the plan's (name) order.
        out.sort_by_key(|b| std::cmp::Reverse(cost(b)));
        out
    }
}

/// Environments: one shared (started on first use), and one per exclusive case.
pub struct EnvPool {
    opts: EnvOptions,
    shared: tokio::sync::Mutex<Option<Result<Arc<Env>, String>>>,
    next: AtomicUsize,
    /// The Kubernetes version the first environment reported.
    kubernetes: std::sync::Mutex<Option<String>>,
}

/// An environment lent to cases.
pub enum Lease {
    Shared(Arc<Env>),
    Own(Box<Env>),
}

impl std::ops::Deref for Lease {
    type Target = Env;
    fn deref(&self) -> &Env {
        match self {
            Lease::Shared(e) => e,
            Lease::Own(e) => e,
        }
    }
}

impl EnvPool {
    pub fn new(opts: EnvOptions) -> EnvPool {
        EnvPool { opts, shared: tokio::sync::Mutex::new(None), next: AtomicUsize::new(1), kubernetes: Default::default() }
    }

    pub fn options(&self) -> &EnvOptions {
        &self.opts
    }

    /// The Kubernetes version the cases ran on: what a started environment reported, else
    /// the version the local provider would run.
    pub fn kubernetes(&self) -> Option<String> {
        let seen = self.kubernetes.lock().expect("not poisoned").clone();
        seen.or_else(|| match self.opts.provider {
            crate::scenario::env::ProviderKind::Local => {
                Some(self.opts.kubernetes.clone().unwrap_or_else(|| crate::tools::Lock::load().kubernetes_version().to_string()))
            }
            _ => None,
        })
    }

    async fn start(&self, cases: &[String], reporter: &dyn Reporter) -> Result<Env, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        reporter.on(&Event::EnvStarting { env: id, cases });
        let env = Env::start(&self.opts).await.map_err(|e| format!("cannot start the environment: {}", chain(&e)))?;
        reporter.on(&Event::EnvUp { env: id, run_id: env.run.id().as_str(), kubeconfig: env.cluster.kubeconfig() });
        self.kubernetes.lock().expect("not poisoned").get_or_insert_with(|| env.cluster.version.clone());
        Ok(env)
    }

    /// An environment for `cases`: the shared one (started by the first caller), or a new one.
    pub async fn lease(&self, exclusive: bool, cases: &[String], reporter: &dyn Reporter) -> Result<Lease, String> {
        if exclusive {
            return self.start(cases, reporter).await.map(|e| Lease::Own(Box::new(e)));
        }
        let mut slot = self.shared.lock().await;
        if slot.is_none() {
            *slot = Some(self.start(cases, reporter).await.map(Arc::new));
        }
        slot.as_ref().expect("just set").clone().map(Lease::Shared)
    }

    /// Gives an environment back: an own one is torn down (unless kept).
    pub async fn give_back(&self, lease: Lease) -> Option<Env> {
        match lease {
            Lease::Shared(_) => None,
            Lease::Own(env) => self.finish(*env).await,
        }
    }

    /// Tears down the shared environment (or hands it back, when kept).
    pub async fn release_shared(&self) -> Option<Env> {
        let taken = self.shared.lock().await.take();
        match taken {
            Some(Ok(arc)) => match Arc::try_unwrap(arc) {
                Ok(env) => self.finish(env).await,
                Err(_) => {
                    tracing::warn!("the shared environment is still in use; it stops when its last user drops it");
                    None
                }
            },
            _ => None,
        }
    }

    async fn finish(&self, env: Env) -> Option<Env> {
        if self.opts.keep {
            return Some(env);
        }
        if let Err(e) = env.teardown().await {
            tracing::warn!("teardown failed: {}", chain(&e));
        }
        None
    }
}

/// What a suite run leaves.
pub struct SuiteRun {
    /// Every planned case, sorted by name.
    pub reports: Vec<CaseReport>,
    /// Per case run: (case, namespace, kubeconfig), for `--keep`.
    pub namespaces: Vec<(String, String, String)>,
    /// Environments kept (`--keep`); tear them down when done.
    pub kept: Vec<Env>,
    pub wall: Duration,
    /// The Kubernetes version the cases ran on, when known.
    pub kubernetes: Option<String>,
}

/// The engine.
pub struct Suite {
    pub pool: EnvPool,
    pub cancel: CancellationToken,
    /// Environments at a time (the machine this was made for has 2 cores).
    pub parallel: usize,
    /// A case that runs longer ends as an error naming where it was.
    pub case_deadline: Duration,
    /// Cases of one shared environment at a time. Simulated nodes are as large as a case
    /// needs; kind's are this machine's size, and every Lily pod reserves a CPU (the chart's
    /// init-database asks for one, and a pod keeps its largest init request), so there its
    /// cases run one after the other.
    pub shared_concurrency: usize,
    /// Render every install with helm before any environment starts ([`preflight`]).
    pub preflight: bool,
    /// Compare each case's normalised outcome with a reviewed one ([`outcomes`]).
    pub outcomes: Option<outcomes::OutcomeCheck>,
}

impl Suite {
    pub fn new(opts: EnvOptions, cancel: CancellationToken) -> Suite {
        // On real kubelets every pod start of the real chart takes over three minutes (its
        // postStart hook sleeps 180s), and a case starts up to three.
        let kind = opts.provider == crate::scenario::env::ProviderKind::Kind;
        Suite {
            pool: EnvPool::new(opts),
            cancel,
            parallel: 2,
            case_deadline: Duration::from_secs(if kind { 1500 } else { 600 }),
            shared_concurrency: if kind { 1 } else { usize::MAX },
            preflight: true,
            outcomes: None,
        }
    }

    /// Runs one case on an environment it is lent, reporting its start, steps and end.
    pub async fn run_case_on(&self, env: &Env, case: &PlannedCase, until: Until, reporter: &dyn Reporter) -> CaseRun {
        let name = case.name().to_string();
        reporter.on(&Event::CaseStarted { case: &name });
        let started = Instant::now();
        let run =
            tokio::time::timeout(self.case_deadline, case::run_case(env, &case.scenario, case.case(), until, reporter, &self.cancel)).await;
        let mut run = run.unwrap_or_else(|_| {
            let why = format!("{name} did not finish within {}s", self.case_deadline.as_secs());
            CaseRun::not_run(CaseReport::errored(&name, "deadline", why, started.elapsed()))
        });
        if let (Some(check), Some(text), true) = (&self.outcomes, &run.snapshot, run.report.passed()) {
            match check.check(&name, text) {
                Ok(None) => {}
                Ok(Some(why)) => run.report.outcome = CaseOutcome::Failed { step: "outcome".into(), message: why },
                Err(e) => run.report.outcome = CaseOutcome::Errored { step: "outcome".into(), message: chain(&e) },
            }
        }
        reporter.on(&Event::CaseFinished { report: &run.report });
        run
    }

    /// Runs one case with an environment from the pool (the libtest adapter's entry).
    pub async fn run_one(&self, case: &PlannedCase, reporter: &dyn Reporter) -> CaseRun {
        if let Some(reason) = &case.skip {
            let report = CaseReport::skipped(case.name(), reason.clone());
            reporter.on(&Event::CaseFinished { report: &report });
            return CaseRun::not_run(report);
        }
        let names = [case.name().to_string()];
        let lease = tokio::select! {
            l = self.pool.lease(case.scenario.exclusive, &names, reporter) => l,
            _ = self.cancel.cancelled() => Err("interrupted before the environment was up".to_string()),
        };
        match lease {
            Err(e) => {
                let report = CaseReport::errored(case.name(), "set-up", e, Duration::ZERO);
                reporter.on(&Event::CaseFinished { report: &report });
                CaseRun::not_run(report)
            }
            Ok(lease) => {
                let run = self.run_case_on(&lease, case, Until::End, reporter).await;
                // A kept environment (only with --keep) is dropped here: a single case has no
                // caller to hand it to.
                drop(self.pool.give_back(lease).await);
                run
            }
        }
    }

    /// Runs the whole plan.
    pub async fn run(&self, plan: &SuitePlan, reporter: &dyn Reporter) -> SuiteRun {
        let started = Instant::now();
        let mut reports: Vec<CaseReport> = Vec::new();
        for c in plan.cases.iter().filter(|c| c.skip.is_some()) {
            let report = CaseReport::skipped(c.name(), c.skip.clone().unwrap_or_default());
            reporter.on(&Event::CaseFinished { report: &report });
            reports.push(report);
        }
        let mut plan = plan.clone();
        if self.preflight {
            let failed = match preflight::render_all(self.pool.options(), &plan).await {
                Ok(f) => f,
                Err(e) => {
                    let why = format!("the pre-flight render could not run: {}", chain(&e));
                    let runnable: Vec<PlannedCase> = plan.cases.iter().filter(|c| c.skip.is_none()).cloned().collect();
                    reports.extend(not_started(&runnable, &why, reporter));
                    reports.sort_by(|a, b| a.name.cmp(&b.name));
                    return SuiteRun {
                        reports,
                        namespaces: Vec::new(),
                        kept: Vec::new(),
                        wall: started.elapsed(),
                        kubernetes: self.pool.kubernetes(),
                    };
                }
            };
            for f in &failed {
                let report = CaseReport {
                    name: f.case.clone(),
                    duration: Duration::ZERO,
                    outcome: CaseOutcome::Failed { step: f.step.clone(), message: f.message.clone() },
                    slowest_step: None,
                    artifacts: None,
                    notes: Vec::new(),
                    findings: Vec::new(),
                    timeline: Default::default(),
                };
                reporter.on(&Event::CaseFinished { report: &report });
                reports.push(report);
            }
            plan.cases.retain(|c| !failed.iter().any(|f| f.case == c.name()));
        }
        let plan = &plan;
        let run_batch = |batch: Vec<PlannedCase>| async move {
            let names: Vec<String> = batch.iter().map(|c| c.name().to_string()).collect();
            let exclusive = batch.iter().any(|c| c.scenario.exclusive);
            if self.cancel.is_cancelled() {
                return (not_started(&batch, "interrupted before it started", reporter), None, Vec::new());
            }
            let lease = tokio::select! {
                l = self.pool.lease(exclusive, &names, reporter) => l,
                _ = self.cancel.cancelled() => Err("interrupted while the environment started".to_string()),
            };
            let lease = match lease {
                Ok(l) => l,
                Err(e) => return (not_started(&batch, &e, reporter), None, Vec::new()),
            };
            let runs: Vec<CaseRun> = futures::stream::iter(batch.iter().map(|c| self.run_case_on(&lease, c, Until::End, reporter)))
                .buffered(self.shared_concurrency.max(1))
                .collect()
                .await;
            let kubeconfig = lease.cluster.kubeconfig().display().to_string();
            let namespaces = runs.iter().map(|r| (r.report.name.clone(), r.namespace.clone(), kubeconfig.clone())).collect();
            let kept = match lease {
                Lease::Own(_) => self.pool.give_back(lease).await,
                Lease::Shared(_) => {
                    drop(lease);
                    self.pool.release_shared().await
                }
            };
            (runs.into_iter().map(|r| r.report).collect::<Vec<_>>(), kept, namespaces)
        };
        let mut batches = futures::stream::iter(plan.batches().into_iter().map(run_batch)).buffer_unordered(self.parallel.max(1));
        let mut kept = Vec::new();
        let mut namespaces = Vec::new();
        while let Some((done, env, ns)) = batches.next().await {
            reports.extend(done);
            kept.extend(env);
            namespaces.extend(ns);
        }
        drop(batches);
        // Batches finish in any order; reports list cases by name.
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        SuiteRun { reports, namespaces, kept, wall: started.elapsed(), kubernetes: self.pool.kubernetes() }
    }
}

fn not_started(batch: &[PlannedCase], why: &str, reporter: &dyn Reporter) -> Vec<CaseReport> {
    batch
        .iter()
        .map(|c| {
            let report = CaseReport::errored(c.name(), "set-up", why, Duration::ZERO);
            reporter.on(&Event::CaseFinished { report: &report });
            report
        })
        .collect()
}

/// Whether a run succeeded (nothing failed, nothing errored).
pub fn succeeded(reports: &[CaseReport]) -> bool {
    reports.iter().all(|r| matches!(r.outcome, CaseOutcome::Passed | CaseOutcome::Skipped { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::scenario::model::Scenario;

    fn plan(layout: &Layout, yaml: &str) -> Arc<ScenarioPlan> {
        let sc: Scenario = crate::yaml::from_str(yaml).unwrap();
        Arc::new(ScenarioPlan::compile(&sc, &layout.root().join("t.yaml"), layout).unwrap())
    }

    fn scenarios() -> (tempfile::TempDir, Vec<Arc<ScenarioPlan>>) {
        let base = tempfile::tempdir().unwrap();
        let layout = Layout::embedded_in(base.path()).unwrap();
        let head = "summary: s\ntry:\n  - helm-repo-add: {}\n  - helm-upgrade: {}\n";
        let plans = vec![
            plan(&layout, &format!("name: a-shared\n{head}")),
            plan(&layout, &format!("name: b-short\nexclusive: true\n{head}")),
            plan(&layout, &format!("name: c-long\nexclusive: true\n{head}  - expect-pod: {{observe: true, timeout: 90s}}\n")),
            plan(&layout, &format!("name: d-upgrade\n{head}  - helm-upgrade: {{version: '${{chart.previous}}'}}\n")),
            plan(&layout, &format!("name: e-fixture\nfixture-only: true\n{head}")),
        ];
        (base, plans)
    }

    #[test]
    fn the_longest_case_runs_first_and_shared_cases_share_a_batch() {
        let (_d, plans) = scenarios();
        let plan = SuitePlan::select(&plans, &[], false, 2).unwrap();
        let order: Vec<Vec<String>> = plan.batches().iter().map(|b| b.iter().map(|c| c.name().to_string()).collect()).collect();
        assert_eq!(order[0], ["c-long"], "{order:?}");
        assert!(
            order.iter().any(|b| b.len() == 3 && b.contains(&"a-shared".to_string()) && b.contains(&"d-upgrade".to_string())),
            "{order:?}"
        );
    }

    #[test]
    fn cases_that_cannot_apply_are_skipped_with_their_reason() {
        let (_d, plans) = scenarios();
        let plan = SuitePlan::select(&plans, &[], true, 1).unwrap();
        let skip = |n: &str| plan.cases.iter().find(|c| c.name() == n).unwrap().skip.clone();
        assert_eq!(skip("d-upgrade").as_deref(), Some("needs a previous version: add --chart OLD"));
        assert!(skip("e-fixture").unwrap().contains("fixture-only"));
        assert_eq!(skip("a-shared"), None);
        assert!(plan.batches().iter().flatten().all(|c| c.skip.is_none()));
    }

    #[test]
    fn partitions_keep_environments_whole_and_cover_every_case_once() {
        let (_d, plans) = scenarios();
        let plan = SuitePlan::select(&plans, &[], true, 1).unwrap();
        let shards: Vec<Vec<String>> = (1..=3).map(|k| plan.partition(k, 3).cases.iter().map(|c| c.name().to_string()).collect()).collect();
        let mut all: Vec<String> = shards.iter().flatten().cloned().collect();
        all.sort();
        let mut want: Vec<String> = plan.cases.iter().map(|c| c.name().to_string()).collect();
        want.sort();
        assert_eq!(all, want, "{shards:?}");
        // a-shared runs (d-upgrade is skipped: one version): the shared unit is in one shard.
        assert_eq!(shards.iter().filter(|s| s.contains(&"a-shared".to_string())).count(), 1);
        assert_eq!(plan.partition(1, 1).cases.len(), plan.cases.len());
    }

    #[test]
    fn unknown_names_say_what_exists() {
        let (_d, plans) = scenarios();
        let e = SuitePlan::select(&plans, &["nope".into()], false, 2).unwrap_err().to_string();
        assert!(e.contains("no scenario named `nope`") && e.contains("c-long"), "{e}");
    }
}
