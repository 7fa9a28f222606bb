//! `list`, `check`, `run`, `suite`, `reproduce`, `render`, `schema`: the scenario commands,
//! on the library's suite engine and reporters.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use lily_e2e::helm::ChartSource;
use lily_e2e::layout::Layout;
use lily_e2e::report::{self, progress::Progress, Reporter, Reporters};
use lily_e2e::scenario::case::Until;
use lily_e2e::scenario::compile::{self, ScenarioPlan};
use lily_e2e::scenario::env::{Env, EnvOptions};
use lily_e2e::scenario::model;
use lily_e2e::suite::{Suite, SuitePlan};

use super::{ClusterArgs, PostgresArg, ScenariosArg};

/// Options shared by `suite`, `run` and `reproduce`.
#[derive(Args, Debug, Clone)]
pub struct SuiteArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// A chart source: DIR, DIR@X.Y.Z (package DIR as that version), FILE.tgz, or
    /// https://REPO#CHART[@X.Y.Z]. Repeat to serve several versions of one chart as one
    /// repository. Default: the fixture chart at 0.1.0 and 0.2.0-rc1 (a stable release and a candidate).
    #[arg(long = "chart", value_name = "SRC")]
    pub charts: Vec<String>,
    /// Extra values files given to every install/upgrade, after the scenario's own.
    #[arg(long = "values", short = 'f', value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// PostgreSQL provider: `local` (Debian's binaries) or `container` (testcontainers on a
    /// Docker engine; image postgres:15-alpine, or LILY_E2E_POSTGRES_IMAGE=name:tag, e.g.
    /// the one ci/postgres-image.sh builds). On --provider kind always a container on the
    /// kind network, where pods reach it.
    #[arg(long, value_enum, default_value_t = PostgresArg::Local, env = "LILY_E2E_POSTGRES")]
    pub postgres: PostgresArg,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Where failure artifacts and outcomes.json go. Default: lily-e2e-artifacts in the
    /// system temp dir (printed at the end).
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Compare each case's normalised outcome with a reviewed DIR/<case>.yaml (chart CI keeps
    /// them in its own repository): a difference fails the case with a diff; a missing one
    /// fails it with the new outcome written beside as <case>.yaml.new.
    #[arg(long, value_name = "DIR")]
    pub outcomes: Option<PathBuf>,
    /// With --outcomes: write the outcomes instead of comparing them.
    #[arg(long, requires = "outcomes")]
    pub accept: bool,
    /// Stop the run after this long (e.g. 40m), as Ctrl-C would: tear down, then report the
    /// unfinished cases as errors. Set it below a CI job's own timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub deadline: Option<std::time::Duration>,
    /// Run shard K of N (from 1), e.g. 2/3: environments are kept whole, as
    /// `cargo nextest run --partition count:K/N` splits tests.
    #[arg(long, value_name = "K/N", value_parser = parse_partition)]
    pub partition: Option<(usize, usize)>,
    #[command(flatten)]
    pub scenarios: ScenariosArg,
    /// Set by GitHub Actions: log groups per case, ::error annotations, a step summary.
    #[arg(long, env = "GITHUB_ACTIONS", hide = true)]
    pub github_actions: Option<String>,
    /// Set by GitHub Actions: where the Markdown step summary goes.
    #[arg(long, env = "GITHUB_STEP_SUMMARY", hide = true)]
    pub github_step_summary: Option<PathBuf>,
}

impl SuiteArgs {
    /// Every setting resolved, and every input checked, before anything starts.
    fn env_options(&self, layout: Layout, keep: bool) -> anyhow::Result<EnvOptions> {
        let charts = self.charts.iter().map(|c| ChartSource::parse(c)).collect::<Result<Vec<_>, _>>()?;
        for c in &charts {
            c.check()?;
        }
        let mut opts = EnvOptions::new(layout);
        opts.provider = self.cluster.provider.into();
        opts.existing =
            lily_e2e::cluster::existing::Existing { kubeconfig: self.cluster.kubeconfig.clone(), context: self.cluster.context.clone() };
        opts.cluster = self.cluster.spec();
        opts.kubernetes = self.cluster.kubernetes()?;
        opts.charts = charts;
        opts.postgres = self.postgres.into();
        opts.artifacts = self.artifacts_dir();
        opts.keep = keep;
        Ok(opts)
    }

    fn artifacts_dir(&self) -> PathBuf {
        match &self.artifacts {
            Some(a) => std::path::absolute(a).unwrap_or(a.clone()),
            None => std::env::temp_dir().join("lily-e2e-artifacts"),
        }
    }

    /// The extra `-f` files, made absolute (each must exist).
    fn extra_values(&self) -> anyhow::Result<Vec<PathBuf>> {
        self.values
            .iter()
            .map(|v| {
                std::fs::canonicalize(v).with_context(|| format!("values file {} (given with -f/--values) cannot be read", v.display()))
            })
            .collect()
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    lily_e2e::scenario::model::duration(s).map_err(|e| e.to_string())
}

/// `K/N` with 1 <= K <= N.
fn parse_partition(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{s}` is not K/N with 1 <= K <= N (e.g. 1/3)");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// Loads and compiles every scenario, with the extra values appended to each.
fn load(layout: &Layout, extra_values: &[PathBuf]) -> anyhow::Result<Vec<Arc<ScenarioPlan>>> {
    let plans = compile::discover(layout)?;
    if extra_values.is_empty() {
        return Ok(plans);
    }
    Ok(plans
        .into_iter()
        .map(|p| {
            let mut p = Arc::try_unwrap(p).unwrap_or_else(|_| unreachable!("freshly loaded plans are not shared"));
            p.values.extend(extra_values.iter().cloned());
            Arc::new(p)
        })
        .collect())
}

pub fn list(scenarios: &ScenariosArg) -> anyhow::Result<ExitCode> {
    let layout = scenarios.layout()?;
    for sc in compile::discover(&layout)? {
        let mut tags = Vec::new();
        if sc.exclusive {
            tags.push("exclusive");
        }
        if sc.fixture_only {
            tags.push("fixture-only");
        }
        let tags = if tags.is_empty() { String::new() } else { format!(" [{}]", tags.join(", ")) };
        println!("{:<28} {}{tags}", sc.name, sc.summary);
        if sc.cases.len() > 1 || sc.cases.first().is_some_and(|c| c.name.contains('/')) {
            for c in &sc.cases {
                println!("  {:<26} {}", format!("/{}", c.name.rsplit('/').next().unwrap_or(&c.name)), c.summary);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Compiles every scenario file and reports every mistake, without starting anything.
pub fn check(scenarios: &ScenariosArg) -> anyhow::Result<ExitCode> {
    let layout = scenarios.layout()?;
    let (plans, errors) = compile::check(&layout)?;
    for e in &errors {
        eprintln!("error: {}", lily_e2e::error::chain(e));
    }
    let steps: usize = plans.iter().flat_map(|p| &p.cases).map(|c| c.steps.len()).sum();
    let cases: usize = plans.iter().map(|p| p.cases.len()).sum();
    println!("{} scenario file(s) ok ({cases} cases, {steps} steps), {} with errors", plans.len(), errors.len());
    Ok(if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn schema() -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(&model::schema())?);
    Ok(ExitCode::SUCCESS)
}

/// The reporters of an interactive, a GitHub Actions or a logged run.
fn reporters(cases: usize, github: bool) -> (Reporters, Option<Arc<Progress>>) {
    if github {
        return (Reporters(vec![Box::new(report::github::GitHub::default()), Box::new(report::Log)]), None);
    }
    if std::io::stderr().is_terminal() {
        let p = Arc::new(Progress::new(cases));
        struct Shared(Arc<Progress>);
        impl Reporter for Shared {
            fn on(&self, e: &report::Event<'_>) {
                self.0.on(e)
            }
        }
        (Reporters(vec![Box::new(Shared(p.clone()))]), Some(p))
    } else {
        struct Lines;
        impl Reporter for Lines {
            fn on(&self, e: &report::Event<'_>) {
                if let report::Event::CaseFinished { report } = e {
                    eprintln!("{} {} ({:.1}s)", report.outcome.word(), report.name, report.duration.as_secs_f64());
                }
            }
        }
        (Reporters(vec![Box::new(Lines), Box::new(report::Log)]), None)
    }
}

/// Runs cases: shared-cluster ones concurrently on one environment, exclusive ones each on
/// their own, with a live display and a summary.
pub async fn suite(args: SuiteArgs, names: Vec<String>, keep: bool) -> anyhow::Result<ExitCode> {
    let layout = args.scenarios.layout()?;
    let plans = load(&layout, &args.extra_values()?)?;
    let opts = args.env_options(layout, keep)?;
    if opts.provider == lily_e2e::scenario::env::ProviderKind::Kind {
        lily_e2e::scenario::env::kind_preflight().await?;
    }
    if let Some(j) = &args.junit {
        super::check_writable_parent(j, "--junit")?;
    }
    let outcomes_json = opts.artifacts.join("outcomes.json");
    super::check_writable_parent(&outcomes_json, "--artifacts")?;
    if let Some(o) = &args.outcomes {
        super::check_writable_parent(&o.join("x.yaml"), "--outcomes")?;
    }
    let versions = opts.chart_sources().len();
    let mut plan = SuitePlan::select(&plans, &names, !args.charts.is_empty(), versions)?.skip_unmet(opts.provider);
    if let Some((k, n)) = args.partition {
        plan = plan.partition(k, n);
        eprintln!("partition {k}/{n}: {} case(s)", plan.cases.len());
    }
    if plan.cases.is_empty() {
        anyhow::bail!("no scenario case selected");
    }
    let cancel = lily_e2e::interrupt::token();
    if let Some(d) = args.deadline {
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            tracing::warn!("the --deadline of {}s has passed; stopping", d.as_secs());
            c.cancel();
        });
    }
    let mut suite = Suite::new(opts, cancel.clone());
    suite.outcomes = args.outcomes.clone().map(|dir| lily_e2e::suite::outcomes::OutcomeCheck { dir, accept: args.accept });
    let github = args.github_actions.as_deref() == Some("true");
    let (reporter, progress) = reporters(plan.cases.len(), github);
    let run = suite.run(&plan, &reporter).await;
    if let Some(p) = &progress {
        p.finish();
    }
    print!("{}", report::summary(&run.reports));
    match &run.kubernetes {
        Some(v) => println!("wall time {:.1}s on Kubernetes {v}", run.wall.as_secs_f64()),
        None => println!("wall time {:.1}s", run.wall.as_secs_f64()),
    }
    let meta = report::junit::RunMeta::now(run.wall).on_kubernetes(run.kubernetes.clone());
    if let Some(j) = &args.junit {
        report::write_junit(j, &run.reports, &meta)?;
        println!("junit report: {}", j.display());
    }
    report::json::write_outcomes(&outcomes_json, &run.reports, &meta)?;
    let html = match &args.junit {
        Some(j) => j.with_file_name("report.html"),
        None => suite.pool.options().artifacts.join("report.html"),
    };
    report::html::write_html(&html, &run.reports, run.wall)?;
    if let (true, Some(summary)) = (github, &args.github_step_summary) {
        use std::io::Write;
        let text = report::github::markdown(&run.reports, run.wall);
        let written = std::fs::OpenOptions::new().create(true).append(true).open(summary).and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            eprintln!("warning: cannot write the step summary to {}: {e}", summary.display());
        }
    }
    println!("outcomes: {}", outcomes_json.display());
    println!("report: {}", html.display());
    if run.reports.iter().any(|r| r.artifacts.is_some()) {
        println!("artifacts: {}", suite.pool.options().artifacts.display());
    }
    if let Some(code) = lily_e2e::interrupt::exit_status() {
        for env in run.kept {
            let _ = env.teardown().await;
        }
        return Ok(ExitCode::from(code));
    }
    if !run.kept.is_empty() {
        for env in &run.kept {
            print_reach(env);
        }
        for (case, ns, kubeconfig) in &run.namespaces {
            println!("\n{case}:\n  export KUBECONFIG={kubeconfig}\n  kubectl -n {ns} get pods,pvc,events\n  helm -n {ns} history lily\n  helm -n {ns} status lily");
        }
        eprintln!("kept; press Ctrl-C to tear everything down");
        cancel.cancelled().await;
        for env in run.kept {
            let _ = env.teardown().await;
        }
    }
    Ok(if report::Counts::of(&run.reports).ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_reach(env: &Env) {
    let path: Vec<String> = env.tools.bin_dirs().iter().map(|b| b.display().to_string()).collect();
    println!("\nreach the cluster with the pinned kubectl and helm:");
    println!("  export KUBECONFIG={}", env.cluster.kubeconfig.display());
    println!("  export PATH={}:$PATH", path.join(":"));
    println!("  kubectl get nodes -L topology.kubernetes.io/zone");
    println!("  kubectl get pv,volumeattachments");
}

/// Drives a scenario case to its failing state (every step before the first `runbook`),
/// stops there with everything kept, prints what a maintainer needs, waits for Ctrl-C.
pub async fn reproduce(args: SuiteArgs, name: String, case: Option<usize>) -> anyhow::Result<ExitCode> {
    let layout = args.scenarios.layout()?;
    let plans = load(&layout, &args.extra_values()?)?;
    let opts = args.env_options(layout, true)?;
    if opts.provider == lily_e2e::scenario::env::ProviderKind::Kind {
        lily_e2e::scenario::env::kind_preflight().await?;
    }
    let versions = opts.chart_sources().len();
    let all = SuitePlan::select(&plans, std::slice::from_ref(&name), !args.charts.is_empty(), versions)?.skip_unmet(opts.provider).cases;
    let count = all.len();
    let planned = match case {
        Some(n) => all.into_iter().nth(n.saturating_sub(1)).with_context(|| format!("{name} has {count} case(s); --case counts from 1"))?,
        None => all.into_iter().next().context("no case")?,
    };
    if let Some(reason) = &planned.skip {
        anyhow::bail!("{} cannot run here: {reason}", planned.name());
    }
    let cancel = lily_e2e::interrupt::token();
    let suite = Suite::new(opts, cancel.clone());
    let env = tokio::select! {
        e = Env::start(suite.pool.options()) => e.context("cannot start the environment")?,
        _ = cancel.cancelled() => return Ok(ExitCode::from(lily_e2e::interrupt::exit_status().unwrap_or(130))),
    };
    let r = suite.run_case_on(&env, &planned, Until::FailingState, &report::Log).await;
    if cancel.is_cancelled() {
        let _ = env.teardown().await;
        return Ok(ExitCode::from(lily_e2e::interrupt::exit_status().unwrap_or(130)));
    }
    println!(
        "{} driven to its failing state in namespace {} ({})",
        planned.name(),
        r.namespace,
        if r.report.passed() { "reproduced" } else { "NOT reproduced" }
    );
    if let report::CaseOutcome::Failed { step, message } | report::CaseOutcome::Errored { step, message } = &r.report.outcome {
        println!("step {step} failed: {message}");
    }
    println!("\nwhat was observed (normalised):\n{}", r.observed);
    print_reach(&env);
    println!("  kubectl -n {} get pods,pvc,events", r.namespace);
    let model_steps = reproduce_runbook(&planned);
    if let Some(book) = model_steps {
        println!("\nthe guide's runbook ({}), with this run's names:", book.name);
        for s in &book.steps {
            let mut args = s.kubectl.join(" ");
            for (k, v) in &r.vars {
                args = args.replace(&format!("<{k}>"), v);
            }
            println!("  # {}\n  kubectl -n {} {}", s.say, r.namespace, args);
        }
    }
    eprintln!("\nkept; press Ctrl-C to tear everything down");
    cancel.cancelled().await;
    env.teardown().await?;
    Ok(ExitCode::SUCCESS)
}

/// The runbook the case runs after its failing state.
fn reproduce_runbook(planned: &lily_e2e::suite::PlannedCase) -> Option<lily_e2e::scenario::runbook::Runbook> {
    planned.case().steps.iter().find_map(|s| s.op.runbook()).cloned()
}

/// Renders a chart with helm and prints the normalised manifests (what the snapshots hold).
pub async fn render(chart: String, version: Option<String>, values: Vec<PathBuf>, release: String) -> anyhow::Result<ExitCode> {
    let source = ChartSource::parse(&chart)?;
    source.check()?;
    for v in &values {
        anyhow::ensure!(v.is_file(), "values file {} (given with -f/--values) does not exist", v.display());
    }
    let run = lily_e2e::run::Run::create(false)?;
    let helm = lily_e2e::helm::Helm::new(run.subdir("helm")?)?;
    let mut req = lily_e2e::snapshot::RenderRequest::new(source).values(lily_e2e::helm::Values::files(values));
    req.release = release;
    req.version = version;
    let text = lily_e2e::snapshot::render(&helm, &req).await?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
