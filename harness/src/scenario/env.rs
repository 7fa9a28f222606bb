//! What scenario cases share: the run, a cluster, a PostgreSQL server, and the chart
//! repository serving the chart versions under test.
//!
//! Scenarios that are not `exclusive` share one [`Env`] and run in parallel, each in its own
//! namespace; an `exclusive` scenario (it breaks nodes or zones) gets an [`Env`] of its own.

use std::path::PathBuf;

use crate::cluster::{self, Cluster, ClusterSpec};
use crate::error::Result;
use crate::helm::{ChartRepo, ChartSource, Helm};
use crate::layout::Layout;
use crate::postgres::{self, Postgres, PostgresSpec};
use crate::run::Run;
use crate::scenario::steps::Need;
use crate::tools::Tools;

/// The fixture versions the suite serves by default, shaped like a chart release under
/// test: a stable release and a release candidate after it (as the real chart's 0.1.4 and
/// 0.1.5-rc1), so `${chart.latest}` (what helm installs without `--version`) is 0.1.0 and
/// `${chart.candidate}` is 0.2.0-rc1. The fixture's 0.0.1 (a StatefulSet rename before
/// 0.1.0) and 0.3.0 (a forbidden volumeClaimTemplates change) are reached only by name
/// (`fixture@X`) from the `fixture-only` scenarios and the tests that expect their hazards.
pub const SUITE_FIXTURE_VERSIONS: [&str; 2] = ["0.1.0", "0.2.0-rc1"];

/// The layout's fixture chart at [`SUITE_FIXTURE_VERSIONS`].
pub fn suite_sources(layout: &Layout) -> Vec<ChartSource> {
    crate::helm::chart::fixture_sources(&layout.fixture_chart(), &SUITE_FIXTURE_VERSIONS)
}

/// The Docker network kind puts its nodes on; PostgreSQL joins it on `--provider kind`.
pub const KIND_NETWORK: &str = "kind";

/// The PostgreSQL of a kind run: the container provider, on the kind network.
fn kind_postgres() -> Result<postgres::container::Container> {
    let mut c = postgres::container::Container::configured()?;
    c.network = Some(KIND_NETWORK.to_string());
    Ok(c)
}

/// What a kind run needs from the Docker engine, checked before anything starts: the engine,
/// the stand-in Lily image, and the PostgreSQL image (pulled where a registry serves it).
pub async fn kind_preflight() -> Result<()> {
    let engine = crate::engine::Engine::configured();
    engine.check().map_err(|e| {
        let cause = match &e {
            crate::error::Error::Tool { source: Some(s), .. } => s.to_string(),
            other => other.to_string(),
        };
        crate::error::Error::Invalid(format!(
            "--provider kind needs a Docker engine that runs privileged containers, and none is reachable (DOCKER_HOST or \
             /var/run/docker.sock: {cause}); start one with ./ci/docker.sh"
        ))
    })?;
    crate::standin::check(&engine).await?;
    kind_postgres()?.prepare().await
}

/// The cluster provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProviderKind {
    /// The embedded control plane with simulated nodes.
    #[default]
    Local,
    /// A cluster given by kubeconfig and context.
    Existing,
    /// kind, from the project's node image.
    Kind,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Existing => "existing",
            ProviderKind::Kind => "kind",
        }
    }

    /// Whether this provider's clusters give what a step needs beyond the API. The local
    /// provider simulates both; a cluster of one's own attaches volumes (cloud block
    /// storage) but its kubelets are not the harness's; kind's kubelets are real and its
    /// local-path volumes are node-bound, never attached.
    pub fn meets(self, need: Need) -> bool {
        match (self, need) {
            (ProviderKind::Local, _) => true,
            (ProviderKind::Existing, Need::AttachingVolumes) => true,
            (ProviderKind::Existing, Need::SimulatedKubelets) => false,
            (ProviderKind::Kind, _) => false,
        }
    }

    /// Why a case that needs `needs` cannot run on this provider, if it cannot.
    pub fn unmet(self, needs: &std::collections::BTreeSet<Need>) -> Option<String> {
        let missing: Vec<&str> = needs.iter().filter(|n| !self.meets(**n)).map(|n| n.describe()).collect();
        if missing.is_empty() {
            return None;
        }
        let why = match self {
            ProviderKind::Kind => "; kind's kubelets are real and its local-path volumes are node-bound, never attached",
            _ => "",
        };
        Some(format!("needs {}{why}: run it with --provider local", missing.join(" and ")))
    }
}

/// The PostgreSQL provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostgresKind {
    /// Debian's PostgreSQL binaries, as child processes.
    #[default]
    Local,
    /// A container, through testcontainers.
    Container,
}

impl PostgresKind {
    pub fn name(self) -> &'static str {
        match self {
            PostgresKind::Local => "local",
            PostgresKind::Container => "container",
        }
    }
}

/// How to build an environment: every setting, resolved.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    pub layout: Layout,
    pub provider: ProviderKind,
    pub existing: cluster::existing::Existing,
    pub cluster: ClusterSpec,
    /// The local control plane's Kubernetes version (a pinned one); `None` is the default.
    pub kubernetes: Option<String>,
    /// Chart sources; empty means the layout's fixture chart at its suite versions.
    pub charts: Vec<ChartSource>,
    pub postgres: PostgresKind,
    /// Where failure artifacts go.
    pub artifacts: PathBuf,
    /// Keep everything after the run (until the process exits or Ctrl-C).
    pub keep: bool,
}

impl EnvOptions {
    /// The defaults: local cluster, local PostgreSQL, the layout's fixture chart, artifacts
    /// under the system temp dir.
    pub fn new(layout: Layout) -> EnvOptions {
        EnvOptions {
            layout,
            provider: ProviderKind::Local,
            existing: Default::default(),
            cluster: ClusterSpec::default(),
            kubernetes: None,
            charts: Vec::new(),
            postgres: PostgresKind::Local,
            artifacts: std::env::temp_dir().join("lily-e2e-artifacts"),
            keep: false,
        }
    }

    /// The chart sources the environment serves.
    pub fn chart_sources(&self) -> Vec<ChartSource> {
        if self.charts.is_empty() {
            suite_sources(&self.layout)
        } else {
            self.charts.clone()
        }
    }
}

/// A started environment. Tear it down with [`Env::teardown`]; dropping it still stops
/// every process (each part's own Drop).
pub struct Env {
    pub cluster: Cluster,
    pub postgres: Postgres,
    pub repo: ChartRepo,
    pub tools: Tools,
    pub artifacts: PathBuf,
    pub keep: bool,
    /// Values files the provider adds after every case's own (kind: the stand-in image).
    pub values: Vec<PathBuf>,
    /// Last, so it is dropped (its directory removed) after the parts above stopped.
    pub run: Run,
}

impl Env {
    /// Starts the cluster, PostgreSQL and the chart repository, concurrently.
    pub async fn start(opts: &EnvOptions) -> Result<Env> {
        let tools = Tools::at_kubernetes(opts.kubernetes.as_deref())?;
        // Fail fast, before starting anything, on what the user can fix.
        tools.path("helm")?;
        tools.path("kubectl")?;
        if opts.provider == ProviderKind::Local {
            tools.check_kubernetes()?;
        }
        let charts = opts.chart_sources();
        for c in &charts {
            c.check()?;
        }
        let provider: Box<dyn cluster::ClusterProvider> = match opts.provider {
            ProviderKind::Local => Box::new(cluster::local::Local::new(tools.clone())),
            ProviderKind::Existing => Box::new(opts.existing.clone()),
            ProviderKind::Kind => {
                kind_preflight().await?;
                let mut kind = cluster::kind::Kind::new(tools.clone());
                kind.load = vec![crate::standin::image()];
                kind.storage_classes = vec![crate::sim::DEFAULT_STORAGE_CLASS.to_string()];
                Box::new(kind)
            }
        };
        // On kind, pods reach PostgreSQL only on the kind network: the container provider,
        // started there once the cluster made the network.
        let pg_provider: Box<dyn postgres::PostgresProvider> = match opts.provider {
            ProviderKind::Kind => Box::new(kind_postgres()?),
            _ => postgres::provider(opts.postgres.name())?,
        };
        let mut run = Run::create(opts.keep)?;
        let helm = Helm::new(run.subdir("helm-repo")?)?;
        let repo_dir = run.subdir("chart-repo")?;
        let pg_spec = PostgresSpec::default();
        // The chart repository first: a bad chart source fails before any process starts.
        let repo = ChartRepo::serve(&helm, &charts, &repo_dir).await?;
        let (cluster, pg) = if opts.provider == ProviderKind::Kind {
            match provider.start(&opts.cluster, &run).await {
                Ok(c) => {
                    let pg = pg_provider.start(&pg_spec, &run).await;
                    (Ok(c), pg)
                }
                Err(e) => (Err(e), Err(crate::error::Error::Invalid("not started: the cluster did not start".into()))),
            }
        } else {
            tokio::join!(provider.start(&opts.cluster, &run), pg_provider.start(&pg_spec, &run))
        };
        // Whatever started is stopped by its Drop if the other part failed; when a component
        // failed (rather than the input), the run directory (its logs) is kept and named.
        let (cluster, postgres) = match (cluster, pg) {
            (Ok(c), Ok(p)) => (c, p),
            (c, p) => {
                let err = [c.err(), p.err()].into_iter().flatten().next().expect("one part failed");
                if let Some(dir) = err.is_component_failure().then(|| run.keep_logs()).flatten() {
                    eprintln!("lily-e2e: logs kept in {} (`lily-e2e clean` removes them)", dir.display());
                }
                return Err(err);
            }
        };
        let mut values = Vec::new();
        if opts.provider == ProviderKind::Kind {
            let p = run.subdir("values")?.join("kind.yaml");
            crate::fsutil::write_private(&p, crate::standin::values_overlay().as_bytes())?;
            values.push(p);
        }
        Ok(Env { cluster, postgres, repo, tools, artifacts: opts.artifacts.clone(), keep: opts.keep, values, run })
    }

    /// Stops everything, in reverse order of dependence, and removes the run directory
    /// (also a kept one: an explicit teardown means the user is done with it). A kept
    /// environment's cluster stops gracefully, a throwaway one's at once.
    pub async fn teardown(self) -> Result<()> {
        let Env { cluster, postgres, repo, mut run, keep, .. } = self;
        run.set_keep(false);
        drop(repo);
        let how = cluster::Teardown::for_kept(keep);
        let (a, b) = tokio::join!(cluster.teardown(how), postgres.teardown());
        drop(run);
        a.and(b)
    }
}
