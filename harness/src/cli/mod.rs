//! Command-line interface.

mod bench;
mod scenarios;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use lily_e2e::cluster::{self, ClusterSpec};
use lily_e2e::run::Run;
use lily_e2e::tools::Tools;

#[derive(Parser, Debug)]
#[command(
    name = "lily-e2e",
    version,
    about = "End-to-end tests and conformance suite for the Lily Helm chart.",
    long_about = "End-to-end tests and conformance suite for the Lily Helm chart.\n\n\
    By default it runs a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, \
    kube-scheduler) as local child processes with kwok-simulated nodes: no Docker needed. \
    Run `lily-e2e tools install` once to build the pinned tools."
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `lily_e2e=debug`.
    #[arg(long, global = true, env = "LILY_E2E_LOG", default_value = "lily_e2e=info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pinned external tools (helm, kubectl, etcd, kube-*, kwok).
    Tools {
        #[command(subcommand)]
        command: ToolsCommand,
    },
    /// Bring a cluster up for a command.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// List the scenarios, one line each.
    List {
        #[arg(long, default_value_os_t = lily_e2e::scenario::scenarios_dir())]
        scenarios: PathBuf,
    },
    /// Run the whole conformance suite.
    Suite {
        #[command(flatten)]
        args: scenarios::SuiteArgs,
    },
    /// Run some scenarios (`NAME` or `NAME/CASE`).
    Run {
        #[command(flatten)]
        args: scenarios::SuiteArgs,
        /// Keep the cluster, PostgreSQL and release up afterwards (pass or fail) until Ctrl-C,
        /// and print how to reach them.
        #[arg(long)]
        keep: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Drive a failure scenario (pvc-node-affinity-conflict, multi-attach) into its failing
    /// state and stop there, with everything kept and the runbook's commands printed.
    Reproduce {
        #[command(flatten)]
        args: scenarios::SuiteArgs,
        /// The case number (from 1), for scenarios with several cases.
        #[arg(long)]
        case: Option<usize>,
        name: String,
    },
    /// Render a chart with helm and print the normalised manifests (what the snapshots hold).
    Render {
        /// DIR, DIR@X.Y.Z, FILE.tgz or https://REPO#CHART[@X.Y.Z].
        #[arg(long)]
        chart: String,
        #[arg(long)]
        version: Option<String>,
        #[arg(long = "values", short = 'f')]
        values: Vec<PathBuf>,
        #[arg(long, default_value = "lily")]
        release: String,
    },
    /// Print the JSON schema of scenario files.
    Schema,
    /// Measure the local cluster: cold start to all nodes Ready, teardown, peak RSS
    /// (min/median/max over N runs); or, with `--postgres`, PostgreSQL providers' start to
    /// ready. `ci/bench.sh` also times the suite.
    Bench {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 2)]
        zones: usize,
        /// Measure these PostgreSQL providers instead (comma-separated: local,container),
        /// runs interleaved.
        #[arg(long, value_delimiter = ',')]
        postgres: Vec<String>,
    },
    /// Remove what earlier, killed runs left behind (processes, temporary directories,
    /// containers labelled with their run id).
    Clean {
        /// Also clean runs whose owning process still runs.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ToolsCommand {
    /// Build every pinned tool into the cache (skips what is there).
    Install {
        /// Only these tools (kubernetes, etcd, helm, kwok).
        names: Vec<String>,
    },
    /// Print each pinned tool, its version and where it is installed.
    List,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Start a cluster, run CMD with KUBECONFIG set and the pinned kubectl/helm first on PATH,
    /// tear the cluster down, and exit with CMD's status.
    Exec {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Leave the cluster up after CMD until Ctrl-C, and print how to reach it.
        #[arg(long)]
        keep: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<OsString>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Cluster provider: `local` (embedded control plane, the default) or `existing`.
    #[arg(long, default_value = "local", env = "LILY_E2E_PROVIDER")]
    pub provider: String,
    /// Simulated nodes (local provider).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Zones the simulated nodes are spread across (local provider).
    #[arg(long, default_value_t = 2)]
    pub zones: usize,
    /// API server port (local provider); a free one when omitted.
    #[arg(long)]
    pub apiserver_port: Option<u16>,
    /// Kubeconfig of an existing cluster (existing provider).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig (existing provider).
    #[arg(long)]
    pub context: Option<String>,
}

impl ClusterArgs {
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec { nodes: self.nodes, zones: self.zones, apiserver_port: self.apiserver_port, ..Default::default() }
    }
    pub fn provider(&self) -> lily_e2e::Result<Box<dyn cluster::ClusterProvider>> {
        cluster::provider(
            &self.provider,
            cluster::existing::Existing { kubeconfig: self.kubeconfig.clone(), context: self.context.clone() },
        )
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "lily_e2e=info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match rt.block_on(async {
        listen_for_interrupts();
        dispatch(cli.command).await
    }) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Tools { command: ToolsCommand::Install { names } } => {
            let mp = indicatif::MultiProgress::new();
            let done = lily_e2e::tools::install(&names, &mp).await.context("tools install failed")?;
            for d in done {
                if d.built {
                    println!("{} {}: built in {:.0}s", d.name, d.version, d.seconds);
                } else {
                    println!("{} {}: already installed", d.name, d.version);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tools { command: ToolsCommand::List } => {
            let tools = Tools::new();
            for t in &tools.lock().tool {
                for b in &t.binaries {
                    match tools.path(&b.name) {
                        Ok(p) => println!("{:<24} {:<10} {}", b.name, t.version, p.display()),
                        Err(_) => println!("{:<24} {:<10} not installed", b.name, t.version),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster { command: ClusterCommand::Exec { cluster, keep, cmd } } => cluster_exec(cluster, keep, cmd).await,
        Command::List { scenarios } => scenarios::list(&scenarios),
        Command::Schema => scenarios::schema(),
        Command::Bench { runs, postgres, .. } if !postgres.is_empty() => bench::postgres(runs.max(1), &postgres).await,
        Command::Bench { runs, nodes, zones, .. } => bench::cluster(runs.max(1), ClusterSpec { nodes, zones, ..Default::default() }).await,
        Command::Suite { args } => scenarios::suite(args, Vec::new(), false).await,
        Command::Run { args, keep, names } => scenarios::suite(args, names, keep).await,
        Command::Reproduce { args, case, name } => scenarios::reproduce(args, name, case).await,
        Command::Render { chart, version, values, release } => scenarios::render(chart, version, values, release).await,
        Command::Clean { force } => {
            let cleaned = lily_e2e::reap::clean(force, lily_e2e::process::GRACE)?;
            if cleaned.is_empty() {
                println!("nothing to clean");
            }
            for c in cleaned {
                if c.skipped_live {
                    println!("{}: still running (its owner is alive); use --force to clean it anyway", c.id);
                } else {
                    println!(
                        "{}: stopped {} process(es), removed {} dir(s), {} container(s)",
                        c.id,
                        c.killed.len(),
                        c.removed.len(),
                        c.containers.len()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

static INTERRUPT: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> = std::sync::OnceLock::new();

/// Listens for Ctrl-C and SIGTERM from the start of the program, so a signal that arrives
/// between two waits is not lost (tokio keeps the handler installed but only tells
/// listeners that exist when the signal comes).
fn listen_for_interrupts() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    let int = tokio::signal::ctrl_c();
    tokio::spawn(async move {
        tokio::select! {
            _ = int => {},
            _ = term.recv() => {},
        }
        let _ = tx.send(true);
        // Keep the sender alive so receivers see `true`, not a closed channel.
        std::future::pending::<()>().await;
    });
    let _ = INTERRUPT.set(rx);
}

/// Resolves once Ctrl-C or SIGTERM has arrived (at any time since the program started).
pub async fn interrupted() {
    match INTERRUPT.get() {
        Some(rx) => {
            let mut rx = rx.clone();
            let _ = rx.wait_for(|v| *v).await;
        }
        None => std::future::pending().await,
    }
}

async fn cluster_exec(args: ClusterArgs, keep: bool, cmd: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let provider = args.provider()?;
    let mut run = Run::create(false)?;
    let spec = args.spec();
    let started = tokio::select! {
        c = provider.start(&spec, &run) => c,
        _ = interrupted() => { eprintln!("interrupted; stopping"); return Ok(ExitCode::from(130)); }
    };
    let cluster = match started {
        Ok(c) => c,
        Err(e) => {
            if let Some(dir) = e.is_component_failure().then(|| run.keep_logs()).flatten() {
                eprintln!("lily-e2e: logs kept in {} (`lily-e2e clean` removes them)", dir.display());
            }
            return Err(anyhow::Error::new(e).context(format!("cannot start the {} cluster", provider.name())));
        }
    };
    eprintln!("cluster up: Kubernetes {} ({}), KUBECONFIG={}", cluster.version, cluster.provider, cluster.kubeconfig.display());

    let tools = Tools::new();
    let mut path: Vec<PathBuf> = tools.bin_dirs();
    if let Some(p) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&p));
    }
    let path = std::env::join_paths(path).context("cannot build PATH")?;
    let mut child = tokio::process::Command::new(&cmd[0]);
    // The run id marks CMD too, so `lily-e2e clean` stops it if this process is killed.
    child
        .args(&cmd[1..])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("PATH", path)
        .env(lily_e2e::run::RUN_ENV, run.id().as_str())
        .kill_on_drop(true);
    let status = match child.spawn() {
        Ok(mut c) => tokio::select! {
            s = c.wait() => Some(s.context("waiting for the command")?),
            _ = interrupted() => { let _ = c.kill().await; None }
        },
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", cmd[0].to_string_lossy());
            Some(std::os::unix::process::ExitStatusExt::from_raw(127 << 8))
        }
    };
    if keep && status.is_some() {
        eprintln!(
            "cluster kept; reach it with:\n  export KUBECONFIG={}\n  kubectl get nodes\nPress Ctrl-C to tear it down.",
            cluster.kubeconfig.display()
        );
        interrupted().await;
    }
    cluster.teardown().await.context("teardown failed")?;
    drop(run);
    Ok(match status {
        None => ExitCode::from(130),
        Some(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
    })
}
