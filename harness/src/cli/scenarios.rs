//! `list`, `run`, `suite`, `reproduce`, `render`, `schema`: the scenario commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures::StreamExt as _;

use lily_e2e::helm::ChartSource;
use lily_e2e::report::{self, CaseResult};
use lily_e2e::scenario::env::{Env, EnvOptions};
use lily_e2e::scenario::{self, model, runner};

use super::{interrupted, ClusterArgs};

/// Options shared by `suite`, `run` and `reproduce`.
#[derive(Args, Debug, Clone)]
pub struct SuiteArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// A chart source: DIR, DIR@X.Y.Z (package DIR as that version), FILE.tgz, or
    /// https://REPO#CHART[@X.Y.Z]. Repeat to serve several versions of one chart as one
    /// repository. Default: the fixture chart at 0.1.0 and 0.2.0.
    #[arg(long = "chart", value_name = "SRC")]
    pub charts: Vec<String>,
    /// Extra values files given to every install/upgrade, after the scenario's own.
    #[arg(long = "values", short = 'f', value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// PostgreSQL provider: `local` (Debian's binaries, the default) or `container`
    /// (testcontainers on a Docker engine; image postgres:15-alpine, or
    /// LILY_E2E_POSTGRES_IMAGE=name:tag, e.g. the one ci/postgres-image.sh builds).
    #[arg(long, default_value = "local", env = "LILY_E2E_POSTGRES")]
    pub postgres: String,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Where failure artifacts go.
    #[arg(long, default_value = "target/lily-e2e/artifacts")]
    pub artifacts: PathBuf,
    /// The scenario directory.
    #[arg(long, default_value_os_t = scenario::scenarios_dir())]
    pub scenarios: PathBuf,
}

impl SuiteArgs {
    fn env_options(&self, keep: bool) -> anyhow::Result<EnvOptions> {
        let charts = self.charts.iter().map(|c| ChartSource::parse(c)).collect::<Result<Vec<_>, _>>()?;
        Ok(EnvOptions {
            provider: self.cluster.provider.clone(),
            existing: lily_e2e::cluster::existing::Existing {
                kubeconfig: self.cluster.kubeconfig.clone(),
                context: self.cluster.context.clone(),
            },
            cluster: self.cluster.spec(),
            charts,
            postgres: self.postgres.clone(),
            artifacts: self.artifacts.clone(),
            keep,
        })
    }
}

pub fn list(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    for (_, sc) in model::discover(dir)? {
        let mut tags = Vec::new();
        if sc.exclusive {
            tags.push("exclusive");
        }
        if sc.fixture_only {
            tags.push("fixture-only");
        }
        let tags = if tags.is_empty() { String::new() } else { format!(" [{}]", tags.join(", ")) };
        println!("{:<28} {}{tags}", sc.name, sc.summary);
        for c in &sc.cases {
            println!("  {:<26} {}", format!("/{}", c.name), c.summary);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn schema() -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(&model::schema())?);
    Ok(ExitCode::SUCCESS)
}

/// The cases selected by `names` (scenario names, or `scenario/case`); all when empty.
fn select(
    dir: &std::path::Path,
    names: &[String],
    custom_charts: bool,
) -> anyhow::Result<Vec<(model::Scenario, String, Vec<model::Step>)>> {
    let all = model::discover(dir)?;
    for n in names {
        let scen = n.split('/').next().unwrap_or(n);
        if !all.iter().any(|(_, s)| s.name == scen) {
            let known: Vec<&str> = all.iter().map(|(_, s)| s.name.as_str()).collect();
            anyhow::bail!("no scenario named `{scen}` (known: {})", known.join(", "));
        }
    }
    let mut out = Vec::new();
    for (_, sc) in all {
        if sc.fixture_only && custom_charts {
            eprintln!("skipping {}: it needs the fixture chart's versions (fixture-only)", sc.name);
            continue;
        }
        for (name, _, steps) in sc.cases() {
            let scen = name.split('/').next().unwrap_or(&name).to_string();
            if names.is_empty() || names.iter().any(|n| *n == name || *n == scen) {
                out.push((sc.clone(), name.clone(), steps.to_vec()));
            }
        }
    }
    Ok(out)
}

/// Runs cases: shared-cluster ones concurrently on one environment, exclusive ones each on
/// their own, with a progress bar and a summary.
pub async fn suite(args: SuiteArgs, names: Vec<String>, keep: bool) -> anyhow::Result<ExitCode> {
    let cases = select(&args.scenarios, &names, !args.charts.is_empty())?;
    if cases.is_empty() {
        anyhow::bail!("no scenario case selected");
    }
    let mut opts = args.env_options(keep)?;
    let extra_values: Vec<String> = args
        .values
        .iter()
        .map(|v| std::fs::canonicalize(v).map(|p| p.display().to_string()))
        .collect::<Result<_, _>>()
        .context("a --values file does not exist")?;
    opts.artifacts = std::path::absolute(&opts.artifacts).unwrap_or(opts.artifacts.clone());
    let bar = indicatif::ProgressBar::new(cases.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}").expect("static template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar.set_message("starting the environment");
    let started = std::time::Instant::now();
    let work = async {
        // One batch shares an environment: all non-exclusive cases together (in parallel);
        // each exclusive case alone on a cluster of its own.
        let (exclusive, shared): (Vec<_>, Vec<_>) = cases.into_iter().partition(|(sc, _, _)| sc.exclusive);
        let mut batches: Vec<Vec<_>> = Vec::new();
        if !shared.is_empty() {
            batches.push(shared);
        }
        batches.extend(exclusive.into_iter().map(|c| vec![c]));
        // Two environments at a time: the machine this runs on has 2 cores.
        let run_batch = |batch: Vec<(model::Scenario, String, Vec<model::Step>)>| {
            let (opts, extra_values, bar) = (&opts, &extra_values, &bar);
            async move {
                let env = Env::start(opts).await.context("cannot start the environment")?;
                let runs = batch.iter().map(|(sc, name, steps)| {
                    let mut sc = sc.clone();
                    sc.values.extend(extra_values.iter().cloned());
                    let env = &env;
                    async move {
                        let r = runner::run_case(env, &sc, name, steps).await;
                        bar.inc(1);
                        bar.println(format!("{} {}", if r.result.passed() { "PASS" } else { "FAIL" }, name));
                        r
                    }
                });
                let done = futures::future::join_all(runs).await;
                let kubeconfig = env.cluster.kubeconfig.display().to_string();
                let env = if keep {
                    Some(env)
                } else {
                    env.teardown().await?;
                    None
                };
                Ok::<_, anyhow::Error>((done, kubeconfig, env))
            }
        };
        let mut results: Vec<CaseResult> = Vec::new();
        let mut namespaces: Vec<(String, String, String)> = Vec::new();
        let mut envs_kept = Vec::new();
        let mut batches = futures::stream::iter(batches.into_iter().map(run_batch)).buffer_unordered(2);
        while let Some(b) = futures::StreamExt::next(&mut batches).await {
            let (done, kubeconfig, env) = b?;
            for r in done {
                namespaces.push((r.result.name.clone(), r.namespace.clone(), kubeconfig.clone()));
                results.push(r.result);
            }
            envs_kept.extend(env);
        }
        drop(batches);
        // Batches finish in any order; reports list cases by name.
        results.sort_by(|a, b| a.name.cmp(&b.name));
        Ok::<_, anyhow::Error>((results, envs_kept, namespaces))
    };
    let (results, kept, namespaces) = tokio::select! {
        r = work => r?,
        _ = interrupted() => { bar.abandon_with_message("interrupted; stopping"); return Ok(ExitCode::from(130)); }
    };
    bar.finish_and_clear();
    print!("{}", report::summary(&results));
    println!("wall time {:.1}s", started.elapsed().as_secs_f64());
    if let Some(j) = &args.junit {
        report::write_junit(j, &results)?;
        println!("junit report: {}", j.display());
    }
    if !kept.is_empty() {
        for env in &kept {
            print_reach(env);
        }
        for (case, ns, kubeconfig) in &namespaces {
            println!("\n{case}:\n  export KUBECONFIG={kubeconfig}\n  kubectl -n {ns} get pods,pvc,events\n  helm -n {ns} history lily\n  helm -n {ns} status lily");
        }
        eprintln!("kept; press Ctrl-C to tear everything down");
        interrupted().await;
        for env in kept {
            let _ = env.teardown().await;
        }
    }
    Ok(if results.iter().all(|r| r.passed()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
    let all = select(&args.scenarios, std::slice::from_ref(&name), !args.charts.is_empty())?;
    let (sc, test_name, steps) = match case {
        Some(n) => all.into_iter().nth(n.saturating_sub(1)).context("no such case number (cases count from 1)")?,
        None => all.into_iter().next().context("no case")?,
    };
    let upto = steps.iter().position(|s| matches!(s, model::Step::Runbook(_))).unwrap_or(steps.len());
    let failing: Vec<model::Step> = steps[..upto].to_vec();
    let opts = args.env_options(true)?;
    let env = tokio::select! {
        e = Env::start(&opts) => e.context("cannot start the environment")?,
        _ = interrupted() => return Ok(ExitCode::from(130)),
    };
    let mut sc = sc.clone();
    sc.finally.clear();
    let r = tokio::select! {
        r = runner::run_case(&env, &sc, &test_name, &failing) => r,
        _ = interrupted() => { let _ = env.teardown().await; return Ok(ExitCode::from(130)); }
    };
    println!(
        "{} driven to its failing state in namespace {} ({})",
        test_name,
        r.namespace,
        if r.result.passed() { "reproduced" } else { "NOT reproduced" }
    );
    if let report::CaseOutcome::Failed { step, message } = &r.result.outcome {
        println!("step {step} failed: {message}");
    }
    println!("\nwhat was observed (normalised):\n{}", r.observed);
    print_reach(&env);
    println!("  kubectl -n {} get pods,pvc,events", r.namespace);
    if let Some(model::Step::Runbook(rb)) = steps.get(upto) {
        println!("\nthe guide's runbook ({}), with this run's names:", rb.name);
        if let Ok(book) = lily_e2e::scenario::runbook::Runbook::load(&scenario::scenarios_dir().join("runbooks"), &rb.name) {
            for s in &book.steps {
                let mut args = s.kubectl.join(" ");
                for (k, v) in &r.vars {
                    args = args.replace(&format!("<{k}>"), v);
                }
                println!("  # {}\n  kubectl -n {} {}", s.say, r.namespace, args);
            }
        }
    }
    eprintln!("\nkept; press Ctrl-C to tear everything down");
    interrupted().await;
    env.teardown().await?;
    Ok(ExitCode::SUCCESS)
}

/// Renders a chart with helm and prints the normalised manifests (what the snapshots hold).
pub async fn render(chart: String, version: Option<String>, values: Vec<PathBuf>, release: String) -> anyhow::Result<ExitCode> {
    let source = ChartSource::parse(&chart)?;
    let run = lily_e2e::run::Run::create(false)?;
    let helm = lily_e2e::helm::Helm::new(run.subdir("helm")?)?;
    let mut req = lily_e2e::snapshot::RenderRequest::new(source).values(lily_e2e::helm::Values::files(values));
    req.release = release;
    req.version = version;
    let text = lily_e2e::snapshot::render(&helm, &req).await?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
