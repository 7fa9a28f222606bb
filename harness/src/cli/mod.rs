//! Command-line interface.

mod bench;
mod scenarios;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

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
    #[command(flatten)]
    settings: SettingsArgs,
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
        #[command(flatten)]
        scenarios: ScenariosArg,
    },
    /// Compile every scenario file (steps, durations, regexes, variables, runbooks, values
    /// files) and report every mistake, in milliseconds, without starting anything.
    Check {
        #[command(flatten)]
        scenarios: ScenariosArg,
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
    /// Measure the local cluster (`bench cluster`) or PostgreSQL providers (`bench postgres`),
    /// min/median/max over N runs. `ci/bench.sh` also times the suite.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Remove what earlier, killed runs left behind (processes, temporary directories,
    /// containers labelled with their run id).
    Clean {
        /// Also clean runs of this registry whose owning process still runs.
        #[arg(long)]
        force: bool,
        /// Clean everything labelled: what --force does, dead runs of any user or registry, and
        /// every labelled container whatever its owner (other registries' live runs keep their
        /// directories and processes).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Cold start to all nodes Ready, teardown, and peak RSS of the local cluster (and of
    /// kind's, with --providers local,kind: runs interleaved).
    Cluster {
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// The cluster providers to measure (local, kind).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ProviderArg::Local])]
        providers: Vec<ProviderArg>,
        /// Nodes (kind: workers, besides the control plane).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 2)]
        zones: usize,
        /// Kubernetes version (a pinned one, e.g. 1.32); default the pinned default.
        #[arg(long, value_name = "VERSION", env = "LILY_E2E_KUBERNETES")]
        kubernetes: Option<String>,
    },
    /// Start to ready (a TLS session accepted) and teardown of PostgreSQL providers, runs
    /// interleaved.
    Postgres {
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// The providers to measure.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [PostgresArg::Local, PostgresArg::Container])]
        providers: Vec<PostgresArg>,
    },
}

#[derive(Subcommand, Debug)]
enum ToolsCommand {
    /// Build every pinned tool into the cache (skips what is there).
    Install {
        /// Also build these pinned Kubernetes versions (comma-separated, `v1.32.13` or `1.32`),
        /// or `all` of them; the default version is always built.
        #[arg(long, value_name = "VERSION,...|all", value_delimiter = ',')]
        kubernetes: Vec<String>,
        /// Also build the tools of `--provider kind` and its node image (kind, kubelet, kubeadm,
        /// kube-proxy, coredns, local-path-provisioner, crictl).
        #[arg(long)]
        kind: bool,
        /// Only these tools (kubernetes, etcd, helm, kwok; with the kind set: kind,
        /// kubernetes-node, coredns, local-path-provisioner, cri-tools).
        names: Vec<String>,
    },
    /// Print each pinned tool, its version and where it is installed.
    List,
    /// Print the path of each named pinned binary (one per line); fails, naming the install
    /// command, if one is not installed. For scripts (ci/node-image.sh).
    Path {
        /// Binaries (kubelet, etcd, ...).
        #[arg(required = true)]
        binaries: Vec<String>,
        /// Print `BINARY VERSION` (the pinned version) instead of the path.
        #[arg(long)]
        version: bool,
    },
    /// Print the hash of the pinned tool versions (a CI cache key for the tool cache).
    Hash,
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

/// Settings the library reads, each from a flag or its environment variable.
#[derive(Args, Debug, Clone)]
struct SettingsArgs {
    /// Tool cache and run registry root. Default: ~/.cache/lily-e2e.
    #[arg(long, global = true, value_name = "DIR", env = "LILY_E2E_CACHE", hide_short_help = true)]
    cache_dir: Option<PathBuf>,
    /// The run registry `clean` reads. Default: <cache>/runs.
    #[arg(long, global = true, value_name = "DIR", env = "LILY_E2E_RUNS", hide_short_help = true)]
    runs_dir: Option<PathBuf>,
    /// The Docker engine for the container provider (unix:///PATH or tcp://HOST:PORT); empty
    /// means the default socket, as for the docker CLI.
    #[arg(long, global = true, value_name = "URL", env = "DOCKER_HOST", hide_short_help = true)]
    docker_host: Option<String>,
    /// The directory holding PostgreSQL's initdb and postgres. Default: the newest installed.
    #[arg(long, global = true, value_name = "DIR", env = "LILY_E2E_POSTGRES_BIN", hide_short_help = true)]
    postgres_bin: Option<PathBuf>,
    /// The container provider's image, name:tag. Default: postgres:15-alpine.
    #[arg(long, global = true, value_name = "IMAGE", env = "LILY_E2E_POSTGRES_IMAGE", hide_short_help = true)]
    postgres_image: Option<String>,
    /// The kind provider's node image. Default: lily-e2e's own (./ci/node-image.sh); an
    /// upstream kindest/node image (where a registry serves it) keeps kind's own network.
    #[arg(long, global = true, value_name = "IMAGE", env = "LILY_E2E_KIND_IMAGE", hide_short_help = true)]
    kind_image: Option<String>,
    /// testcontainers' switch: `keep` leaves the PostgreSQL container after the run.
    #[arg(long, global = true, value_name = "keep", env = "TESTCONTAINERS_COMMAND", hide = true)]
    testcontainers_command: Option<String>,
}

impl SettingsArgs {
    fn resolve(self) -> anyhow::Result<lily_e2e::settings::Settings> {
        let nonempty = |s: Option<String>| s.filter(|v| !v.trim().is_empty());
        let image = nonempty(self.postgres_image);
        if let Some(i) = &image {
            lily_e2e::postgres::container::parse_image(i.trim())?;
        }
        Ok(lily_e2e::settings::Settings {
            cache: self.cache_dir,
            runs: self.runs_dir,
            docker_host: nonempty(self.docker_host),
            postgres_bin: self.postgres_bin,
            postgres_image: image,
            keep_containers: self.testcontainers_command.as_deref() == Some("keep"),
            kind_image: nonempty(self.kind_image),
        })
    }
}

/// The cluster provider.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderArg {
    /// The embedded control plane (child processes on 127.0.0.1, kwok nodes).
    Local,
    /// A cluster you already have (`--kubeconfig`, `--context`).
    Existing,
    /// kind: real kubelets in Docker containers, from lily-e2e's node image (./ci/node-image.sh);
    /// scenarios run the chart's pod from the stand-in Lily image (./ci/lily-image.sh), with
    /// PostgreSQL as a container on the kind network, and skip multi-attach.
    Kind,
}

impl From<ProviderArg> for lily_e2e::scenario::env::ProviderKind {
    fn from(p: ProviderArg) -> Self {
        match p {
            ProviderArg::Local => Self::Local,
            ProviderArg::Existing => Self::Existing,
            ProviderArg::Kind => Self::Kind,
        }
    }
}

/// The PostgreSQL provider.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostgresArg {
    /// Debian's PostgreSQL binaries, as child processes.
    Local,
    /// A container on a Docker engine (testcontainers).
    Container,
}

impl From<PostgresArg> for lily_e2e::scenario::env::PostgresKind {
    fn from(p: PostgresArg) -> Self {
        match p {
            PostgresArg::Local => Self::Local,
            PostgresArg::Container => Self::Container,
        }
    }
}

/// Where scenarios come from.
#[derive(Args, Debug, Clone)]
pub struct ScenariosArg {
    /// A scenario directory (scenario files, values/, runbooks/, charts/lily) that replaces
    /// the built-in scenarios wholesale. Default: the scenarios built into this binary.
    #[arg(long, value_name = "DIR", env = "LILY_E2E_SCENARIOS")]
    pub scenarios: Option<PathBuf>,
}

impl ScenariosArg {
    pub fn layout(&self) -> anyhow::Result<lily_e2e::layout::Layout> {
        Ok(match &self.scenarios {
            Some(dir) => lily_e2e::layout::Layout::at(dir)?,
            None => lily_e2e::layout::Layout::embedded()?,
        })
    }
}

/// A report's directory must exist or be creatable, and be writable: checked before anything
/// starts, so a long run does not end in an unwritable path.
pub fn check_writable_parent(path: &std::path::Path, flag: &str) -> anyhow::Result<()> {
    let abs = std::path::absolute(path).unwrap_or(path.to_path_buf());
    anyhow::ensure!(!abs.is_dir(), "{flag} {} is a directory; give a file path", path.display());
    let dir = abs.parent().unwrap_or(std::path::Path::new("/"));
    // The nearest ancestor that exists must be a writable directory; nothing is created here.
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(std::path::Path::new("/"));
    }
    anyhow::ensure!(
        existing.is_dir(),
        "{flag} {}: cannot create its directory {}: {} is not a directory",
        path.display(),
        dir.display(),
        existing.display()
    );
    let probe = tempfile::NamedTempFile::new_in(existing)
        .with_context(|| format!("{flag} {}: directory {} is not writable", path.display(), existing.display()))?;
    drop(probe);
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Cluster provider.
    #[arg(long, value_enum, default_value_t = ProviderArg::Local, env = "LILY_E2E_PROVIDER")]
    pub provider: ProviderArg,
    /// Simulated nodes (local provider); worker nodes (kind).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Zones the nodes are spread across (local and kind providers).
    #[arg(long, default_value_t = 2)]
    pub zones: usize,
    /// API server port (local provider); a free one when omitted.
    #[arg(long)]
    pub apiserver_port: Option<u16>,
    /// Kubeconfig of an existing cluster (existing provider).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig (existing provider).
    #[arg(long)]
    pub context: Option<String>,
    /// Kubernetes version of the local control plane: a pinned one (`lily-e2e tools list`),
    /// exact (v1.32.13) or by minor (1.32). Default: the pinned default.
    #[arg(long, value_name = "VERSION", env = "LILY_E2E_KUBERNETES")]
    pub kubernetes: Option<String>,
}

impl ClusterArgs {
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec { nodes: self.nodes, zones: self.zones, apiserver_port: self.apiserver_port, ..Default::default() }
    }

    /// The pinned Kubernetes version `--kubernetes` names (`None`: the default), checked to be
    /// pinned and installed before anything starts.
    pub fn kubernetes(&self) -> anyhow::Result<Option<String>> {
        let Some(spec) = self.kubernetes.as_deref().filter(|s| !s.trim().is_empty()) else { return Ok(None) };
        anyhow::ensure!(
            self.provider != ProviderArg::Existing,
            "--kubernetes {spec} chooses the local control plane's version; an existing cluster runs its own (drop --kubernetes)"
        );
        let lock = lily_e2e::tools::Lock::load();
        let version = lock.resolve_kubernetes(spec)?;
        if self.provider == ProviderArg::Kind {
            anyhow::ensure!(
                version == lock.kubernetes_version(),
                "--kubernetes {spec}: the kind provider runs the node image's Kubernetes, and ci/node-image.sh builds the default ({}) only; drop --kubernetes",
                lock.kubernetes_version()
            );
            return Ok(None);
        }
        Tools::at_kubernetes(Some(&version))?.check_kubernetes()?;
        Ok(Some(version))
    }

    /// The provider, with the local control plane at `kubernetes` (from [`Self::kubernetes`]).
    pub fn provider(&self, kubernetes: Option<&str>) -> anyhow::Result<Box<dyn cluster::ClusterProvider>> {
        Ok(match self.provider {
            ProviderArg::Local => Box::new(cluster::local::Local::new(Tools::at_kubernetes(kubernetes)?)),
            ProviderArg::Existing => {
                Box::new(cluster::existing::Existing { kubeconfig: self.kubeconfig.clone(), context: self.context.clone() })
            }
            ProviderArg::Kind => Box::new(cluster::kind::Kind::new(Tools::at_kubernetes(kubernetes)?)),
        })
    }
}

pub fn main() -> ExitCode {
    // The docker CLI treats an empty DOCKER_HOST as unset; testcontainers does not (it
    // fails on an empty URL). Unset it while this process is still single-threaded.
    if std::env::var_os("DOCKER_HOST").is_some_and(|v| v.is_empty()) {
        std::env::remove_var("DOCKER_HOST");
    }
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log (or LILY_E2E_LOG) `{}` is not a log filter: {e}; use e.g. `lily_e2e=debug` or `info`", cli.log);
            return ExitCode::from(2);
        }
    };
    // Colours only for a terminal: log files and CI logs get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(lily_e2e::report::progress::LogWriter)
        .with_ansi(ansi)
        .with_target(false)
        .init();
    match cli.settings.resolve() {
        Ok(s) => {
            lily_e2e::settings::install(s);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    lily_e2e::interrupt::install(rt.handle());
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Tools { command: ToolsCommand::Install { kubernetes, kind, names } } => {
            use lily_e2e::tools::KubernetesVersions;
            let versions = match kubernetes.as_slice() {
                [] => KubernetesVersions::Default,
                [all] if all == "all" => KubernetesVersions::All,
                v => KubernetesVersions::Also(v.to_vec()),
            };
            let sets: Vec<String> = if kind { vec!["kind".to_string()] } else { Vec::new() };
            let mp = indicatif::MultiProgress::new();
            let done = lily_e2e::tools::install(&names, &versions, &sets, &mp).await.context("tools install failed")?;
            for d in done {
                if d.built {
                    println!("{} {}: built in {:.0}s", d.name, d.version, d.seconds);
                } else {
                    println!("{} {}: already installed", d.name, d.version);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tools { command: ToolsCommand::Hash } => {
            use sha2::Digest;
            println!("{}", hex::encode(sha2::Sha256::digest(lily_e2e::tools::LOCK.as_bytes())));
            Ok(ExitCode::SUCCESS)
        }
        Command::Tools { command: ToolsCommand::Path { binaries, version } } => {
            let tools = Tools::new();
            for b in &binaries {
                let path = tools.path(b)?;
                if version {
                    let (tool, _) = tools.lock().pin_for(b).expect("path found the pin");
                    println!("{b} {}", tool.version);
                } else {
                    println!("{}", path.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tools { command: ToolsCommand::List } => {
            let lock = lily_e2e::tools::Lock::load();
            let default = lock.kubernetes_version().to_string();
            let tools = Tools::new();
            for t in &tools.lock().tool {
                for b in &t.binaries {
                    match tools.path(&b.name) {
                        Ok(p) => println!("{:<24} {:<10} {}", b.name, t.version, p.display()),
                        Err(_) => match &t.set {
                            Some(set) => println!("{:<24} {:<10} not installed (lily-e2e tools install --{set})", b.name, t.version),
                            None => println!("{:<24} {:<10} not installed", b.name, t.version),
                        },
                    }
                }
            }
            for v in lock.kubernetes_versions().into_iter().filter(|v| *v != default) {
                let state = match Tools::at_kubernetes(Some(&v))?.check_kubernetes() {
                    Ok(()) => "installed".to_string(),
                    Err(_) => format!("not installed (lily-e2e tools install --kubernetes {v})"),
                };
                println!("{:<24} {:<10} {state}", "kubernetes (--kubernetes)", v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster { command: ClusterCommand::Exec { cluster, keep, cmd } } => cluster_exec(cluster, keep, cmd).await,
        Command::List { scenarios } => scenarios::list(&scenarios),
        Command::Check { scenarios } => scenarios::check(&scenarios),
        Command::Schema => scenarios::schema(),
        Command::Bench { command: BenchCommand::Cluster { runs, providers, nodes, zones, kubernetes } } => {
            let tools = Tools::at_kubernetes(kubernetes.as_deref())?;
            let mut chosen: Vec<Box<dyn cluster::ClusterProvider>> = Vec::new();
            for p in providers {
                match p {
                    ProviderArg::Local => {
                        tools.check_kubernetes()?;
                        chosen.push(Box::new(cluster::local::Local::new(tools.clone())));
                    }
                    ProviderArg::Kind => chosen.push(Box::new(cluster::kind::Kind::new(tools.clone()))),
                    ProviderArg::Existing => {
                        anyhow::bail!("--providers existing: an existing cluster is not started, so there is nothing to time")
                    }
                }
            }
            bench::cluster(runs as usize, ClusterSpec { nodes, zones, ..Default::default() }, &chosen).await
        }
        Command::Bench { command: BenchCommand::Postgres { runs, providers } } => {
            let names: Vec<String> = providers.iter().map(|p| lily_e2e::scenario::env::PostgresKind::from(*p).name().to_string()).collect();
            bench::postgres(runs as usize, &names).await
        }
        Command::Suite { args } => scenarios::suite(args, Vec::new(), false).await,
        Command::Run { args, keep, names } => scenarios::suite(args, names, keep).await,
        Command::Reproduce { args, case, name } => scenarios::reproduce(args, name, case).await,
        Command::Render { chart, version, values, release } => scenarios::render(chart, version, values, release).await,
        Command::Clean { force, all } => {
            let cleaned = lily_e2e::reap::clean(lily_e2e::reap::Scope::of(force, all), lily_e2e::process::GRACE)?;
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

/// Resolves once Ctrl-C or SIGTERM has arrived (at any time since the program started).
pub async fn interrupted() {
    lily_e2e::interrupt::token().cancelled().await
}

/// The exit status after an interrupt: 130 for SIGINT, 143 for SIGTERM.
fn interrupted_status() -> ExitCode {
    ExitCode::from(lily_e2e::interrupt::exit_status().unwrap_or(130))
}

async fn cluster_exec(args: ClusterArgs, keep: bool, cmd: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let kubernetes = args.kubernetes()?;
    let provider = args.provider(kubernetes.as_deref())?;
    let mut run = Run::create(false)?;
    let spec = args.spec();
    let started = tokio::select! {
        c = provider.start(&spec, &run) => c,
        _ = interrupted() => { eprintln!("interrupted; stopping"); return Ok(interrupted_status()); }
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

    let tools = Tools::at_kubernetes(kubernetes.as_deref())?;
    let mut path: Vec<PathBuf> = tools.bin_dirs();
    if let Some(p) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&p));
    }
    let path = std::env::join_paths(path).context("cannot build PATH")?;
    let mut child = tokio::process::Command::new(&cmd[0]);
    // The run id marks CMD too, so `lily-e2e clean` finds it; it dies with this process.
    child
        .args(&cmd[1..])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("PATH", path)
        .env(lily_e2e::run::RUN_ENV, run.id().as_str())
        .kill_on_drop(true);
    let status = match lily_e2e::process::spawn_tied(child) {
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
    cluster.teardown(cluster::Teardown::for_kept(keep)).await.context("teardown failed")?;
    drop(run);
    Ok(match status {
        None => interrupted_status(),
        Some(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
    })
}
