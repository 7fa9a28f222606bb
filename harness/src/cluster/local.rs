//! The embedded default: a real control plane as local child processes on loopback.
//!
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the pinned upstream
//! binaries; kwok simulates the nodes' kubelets. Authentication is by client certificate
//! from a per-run CA (no anonymous access); the API server listens on 127.0.0.1 only,
//! etcd on a Unix socket in the run's owner-only directory (see [`security`]).
//!
//! Somewhat over 500 lines: start, readiness, retry and teardown of one control plane stay
//! together; each component's arguments are small builders here, tested in `local/tests.rs`.

mod security;
mod trim;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::Api;
use kube::runtime::watcher;
use kube::Client;

use super::nodes::{self, NodePlan, SimNode};
use super::ports::{self, AfterExit, Reservation};
use super::{kubeconfig, Cluster, ClusterError, ClusterProvider, ClusterSpec, Running};
use crate::error::{Error, Result};
use crate::fsutil::write_private;
use crate::labels::KWOK_LABEL;
use crate::pki::{self, Usage};
use crate::process::{ChildSpec, ProcessError, Supervised};
use crate::run::{Run, RunId, RUN_LABEL};
use crate::tools::Tools;
use crate::wait::WaitError;

/// How long the control plane may take to become ready before start fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Node-failure timings, kept short so a test sees a dead node within seconds.
#[derive(Debug, Clone)]
pub struct Timings {
    /// kwok's node lease duration; it renews well within it.
    pub node_lease_seconds: u32,
    pub node_monitor_period: &'static str,
    pub node_monitor_grace_period: &'static str,
    pub not_ready_toleration_seconds: u32,
    pub unreachable_toleration_seconds: u32,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            node_lease_seconds: 8,
            node_monitor_period: "1s",
            node_monitor_grace_period: "6s",
            not_ready_toleration_seconds: 5,
            unreachable_toleration_seconds: 5,
        }
    }
}

/// The local provider.
#[derive(Debug, Clone)]
pub struct Local {
    tools: Tools,
    pub timings: Timings,
}

impl Local {
    pub fn new(tools: Tools) -> Self {
        Local { tools, timings: Timings::default() }
    }
}

impl ClusterProvider for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start<'a>(&'a self, spec: &'a ClusterSpec, run: &'a Run) -> BoxFuture<'a, Result<Cluster>> {
        Box::pin(async move {
            let plan = NodePlan::new(spec.nodes, spec.zones, spec.node_cpu, spec.node_memory_gib)?;
            let bins = Binaries::resolve(&self.tools)?;
            let mut cp = ControlPlane { children: Vec::new(), nodes: plan.nodes.clone(), sim: None };
            // On any error below, `cp` drops and stops what was started.
            let (client, kubeconfig) = cp.boot(self, spec, run, &bins, &plan).await?;
            let version = self.tools.kubernetes_version().to_string();
            Ok(Cluster::new(client, kubeconfig, version, "local", Box::new(cp)))
        })
    }
}

struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: PathBuf,
    scheduler: PathBuf,
    kwok: PathBuf,
}

impl Binaries {
    fn resolve(t: &Tools) -> Result<Self> {
        Ok(Binaries {
            etcd: t.path("etcd")?,
            apiserver: t.path("kube-apiserver")?,
            controller_manager: t.path("kube-controller-manager")?,
            scheduler: t.path("kube-scheduler")?,
            kwok: t.path("kwok")?,
        })
    }
}

/// What the API server's port is reserved as (and named in a busy-port error).
const APISERVER_PORT: &str = "kube-apiserver --secure-port";

/// The loopback TCP ports of one control plane: the API server's only (etcd listens on a
/// Unix socket, kwok serves nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    apiserver: u16,
}

/// Where the control plane's files live in the run's `cluster` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    dir: PathBuf,
    etcd_data: PathBuf,
    etcd_socket: PathBuf,
    encryption: PathBuf,
    apiserver_certs: PathBuf,
    ca_crt: PathBuf,
    tls_crt: PathBuf,
    tls_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    kubeconfig: PathBuf,
    kwok_config: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
            etcd_data: dir.join("etcd"),
            etcd_socket: dir.join(security::ETCD_SOCKET),
            encryption: dir.join("encryption.yaml"),
            apiserver_certs: dir.join("apiserver-certs"),
            ca_crt: dir.join("ca.crt"),
            tls_crt: dir.join("apiserver.crt"),
            tls_key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            kubeconfig: dir.join("kubeconfig"),
            kwok_config: dir.join("kwok.yaml"),
        }
    }

    /// Writes the PKI: a CA, the API server's serving certificate, service-account keys.
    /// Returns the admin credentials for [`Layout::write_kubeconfig`].
    fn write_pki(&self) -> Result<Admin> {
        let ca = pki::Ca::new("lily-e2e-ca")?;
        let serving = ca.issue(
            "kube-apiserver",
            &[],
            &["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1"],
            Usage::Server,
        )?;
        let admin = ca.issue("lily-e2e-admin", &["system:masters"], &[], Usage::Client)?;
        write_private(&self.ca_crt, ca.cert_pem().as_bytes())?;
        write_private(&self.tls_crt, serving.cert_pem.as_bytes())?;
        write_private(&self.tls_key, serving.key_pem.as_bytes())?;
        let (sa_private, sa_public) = pki::key_pair_pem()?;
        write_private(&self.sa_key, sa_private.as_bytes())?;
        write_private(&self.sa_pub, sa_public.as_bytes())?;
        Ok(Admin { ca_pem: ca.cert_pem(), pair: admin })
    }

    /// Writes the kubeconfig for `server` with the admin client certificate.
    fn write_kubeconfig(&self, cluster: &str, server: &str, admin: &Admin) -> Result<()> {
        kubeconfig::write(&self.kubeconfig, cluster, server, &admin.ca_pem, &admin.pair.cert_pem, &admin.pair.key_pem)
    }
}

/// The run's CA certificate and the admin client certificate, for kubeconfigs.
struct Admin {
    ca_pem: String,
    pair: pki::Pair,
}

fn args(v: Vec<String>) -> Vec<OsString> {
    v.into_iter().map(OsString::from).collect()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// The API server's URL.
fn server_url(ports: &Ports) -> String {
    format!("https://127.0.0.1:{}", ports.apiserver)
}

/// etcd: one member on a Unix socket in the (owner-only) cluster directory, no TCP port;
/// no fsync (a throwaway cluster). Runs in the cluster directory (its peer socket's path
/// is relative).
fn etcd_args(l: &Layout) -> Vec<OsString> {
    let peer = security::ETCD_PEER_URL;
    args(vec![
        "--name=lily-e2e".to_string(),
        format!("--data-dir={}", p(&l.etcd_data)),
        format!("--listen-client-urls=unix://{}", p(&l.etcd_socket)),
        format!("--advertise-client-urls={}", security::ETCD_ADVERTISE_URL),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=lily-e2e={peer}"),
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ])
}

/// kube-apiserver: loopback only, client certificates from the run's CA, no anonymous
/// access, RBAC, etcd by its socket, Secrets encrypted at rest, the short node-failure
/// tolerations of `t`, and without the API groups and admission plugins nothing uses
/// ([`trim`]).
fn apiserver_args(l: &Layout, ports: &Ports, t: &Timings) -> Vec<OsString> {
    args(vec![
        format!("--etcd-servers=unix://{}", p(&l.etcd_socket)),
        format!("--encryption-provider-config={}", p(&l.encryption)),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.apiserver),
        format!("--cert-dir={}", p(&l.apiserver_certs)),
        format!("--tls-cert-file={}", p(&l.tls_crt)),
        format!("--tls-private-key-file={}", p(&l.tls_key)),
        format!("--client-ca-file={}", p(&l.ca_crt)),
        format!("--service-account-key-file={}", p(&l.sa_pub)),
        format!("--service-account-signing-key-file={}", p(&l.sa_key)),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        "--authorization-mode=RBAC".into(),
        "--anonymous-auth=false".into(),
        "--enable-priority-and-fairness=false".into(),
        "--endpoint-reconciler-type=none".into(),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
        format!("--default-not-ready-toleration-seconds={}", t.not_ready_toleration_seconds),
        format!("--default-unreachable-toleration-seconds={}", t.unreachable_toleration_seconds),
        format!("--runtime-config={}", trim::runtime_config()),
        format!("--disable-admission-plugins={}", trim::ADMISSION_OFF.join(",")),
    ])
}

/// What the controller manager and the scheduler share: the admin kubeconfig, no leader
/// election, no serving port.
fn component_args(l: &Layout) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", p(&l.kubeconfig)),
        "--leader-elect=false".to_string(),
        "--bind-address=127.0.0.1".to_string(),
        "--secure-port=0".to_string(),
    ]
}

/// kube-controller-manager: signs service-account tokens, and notices dead nodes within
/// the periods of `t`; without the controllers of the API groups turned off ([`trim`]).
fn controller_manager_args(l: &Layout, t: &Timings, minor: u32) -> Vec<OsString> {
    let mut v = component_args(l);
    v.extend([
        format!("--service-account-private-key-file={}", p(&l.sa_key)),
        format!("--root-ca-file={}", p(&l.ca_crt)),
        "--use-service-account-credentials=false".to_string(),
        format!("--node-monitor-period={}", t.node_monitor_period),
        format!("--node-monitor-grace-period={}", t.node_monitor_grace_period),
        "--allocate-node-cidrs=false".to_string(),
        "--profiling=false".to_string(),
        format!("--controllers={}", trim::controllers(minor)),
    ]);
    args(v)
}

fn scheduler_args(l: &Layout) -> Vec<OsString> {
    let mut v = component_args(l);
    v.push("--profiling=false".to_string());
    args(v)
}

/// kwok: manages only the nodes carrying [`KWOK_LABEL`], with the lease of `t`. No
/// `--server-address`: nothing uses kwok's server (the nodes' kubelet endpoints are not
/// reachable anyway), so kwok listens on no port.
fn kwok_args(l: &Layout, t: &Timings) -> Vec<OsString> {
    args(vec![
        format!("--kubeconfig={}", p(&l.kubeconfig)),
        format!("--config={}", p(&l.kwok_config)),
        "--manage-all-nodes=false".to_string(),
        format!("--manage-nodes-with-label-selector={}={}", KWOK_LABEL.0, KWOK_LABEL.1),
        format!("--node-lease-duration-seconds={}", t.node_lease_seconds),
        "--cidr=10.244.0.1/16".to_string(),
        "--node-ip=10.0.0.1".to_string(),
    ])
}

/// How far [`ControlPlane::api`] waits for the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Up {
    /// It answers requests (its post-start hooks may still run).
    Serving,
    /// `/readyz` is `ok`.
    Ready,
}

struct ControlPlane {
    /// In start order; stopped in reverse.
    children: Vec<Supervised>,
    nodes: Vec<SimNode>,
    /// The simulated cloud (storage driver, kubelet volume state); stopped first.
    sim: Option<crate::sim::SimCloud>,
}

impl ControlPlane {
    async fn boot(
        &mut self,
        provider: &Local,
        spec: &ClusterSpec,
        run: &Run,
        bins: &Binaries,
        plan: &NodePlan,
    ) -> Result<(Client, PathBuf)> {
        let t = &provider.timings;
        let minor = crate::scenario::catalogue::minor(provider.tools.kubernetes_version()).unwrap_or(0);
        let dir = run.subdir("cluster")?;
        security::make_private(&dir)?;
        let layout = Layout::new(&dir);
        security::check_socket_path(&layout.etcd_socket)?;
        let logs = run.subdir("logs")?;
        security::make_private(&logs)?;
        // Held until the API server starts, so no other process is handed it meanwhile.
        let mut reserved = Reservation::new();
        let mut ports = Ports { apiserver: reserved.take(spec.apiserver_port, APISERVER_PORT)? };
        let admin = layout.write_pki()?;
        security::write_encryption_config(&layout.encryption)?;
        let cluster = format!("lily-e2e-{}", run.id());
        let spawn = |child: ChildSpec| Supervised::spawn(child, run.id(), &logs);

        let etcd = ChildSpec::new("etcd", &bins.etcd).args(etcd_args(&layout));
        self.children.push(spawn(ChildSpec { cwd: Some(layout.dir.clone()), ..etcd })?);
        let apiserver_log = logs.join("kube-apiserver.log");
        let mut attempt = 1;
        let client = loop {
            layout.write_kubeconfig(&cluster, &server_url(&ports), &admin)?;
            let log_from = ports::log_len(&apiserver_log);
            reserved.release(APISERVER_PORT);
            // The API server's graceful shutdown drains requests a throwaway cluster does not
            // need drained: a short grace before KILL keeps teardown fast.
            self.children.push(spawn(
                ChildSpec::new("kube-apiserver", &bins.apiserver).grace(Duration::from_secs(2)).args(apiserver_args(&layout, &ports, t)),
            )?);
            let client = kubeconfig::client(&layout.kubeconfig, None).await?;
            match self.api(&client, Up::Serving, START_TIMEOUT).await {
                Ok(()) => break client,
                Err(Error::Process(ProcessError::Exited { name, status, log, tail })) if name == "kube-apiserver" => {
                    match ports::after_exit(&apiserver_log, log_from, spec.apiserver_port.is_some(), attempt) {
                        AfterExit::Retry => {}
                        AfterExit::Busy => return Err(ClusterError::PortBusy { port: ports.apiserver, what: APISERVER_PORT.into() }.into()),
                        AfterExit::Failed => return Err(ProcessError::Exited { name, status, log, tail }.into()),
                    }
                    tracing::warn!(port = ports.apiserver, attempt, "kube-apiserver: address already in use; retrying with a fresh port");
                    self.children.pop();
                    ports.apiserver = reserved.take(None, APISERVER_PORT)?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };

        // Serving, the API server still runs its post-start hooks, most of its start (the
        // RBAC and PriorityClass bootstraps each wait a fixed second before they begin).
        // The scheduler and kwok start meanwhile, and the nodes are created: they need the
        // API only, as system:masters, which needs no RBAC role. The controller manager
        // waits until /readyz: it polls /healthz itself, once a second, from its start.
        self.children.push(spawn(ChildSpec::new("kube-scheduler", &bins.scheduler).args(scheduler_args(&layout)))?);
        write_private(&layout.kwok_config, crate::sim::kwok_config().as_bytes())?;
        self.children.push(spawn(ChildSpec::new("kwok", &bins.kwok).args(kwok_args(&layout, t)))?);
        self.race(plan.create(&client, run.id(), provider.tools.kubernetes_version())).await?;
        self.api(&client, Up::Ready, START_TIMEOUT).await?;
        self.children.push(spawn(
            ChildSpec::new("kube-controller-manager", &bins.controller_manager).args(controller_manager_args(&layout, t, minor)),
        )?);

        let sim = crate::sim::SimCloud::start(&client, run, crate::sim::SimOptions::default());
        let (_, sim) = self.race(futures::future::try_join(Self::settled(&client, run.id(), plan.nodes.len()), sim)).await?;
        self.sim = Some(sim);
        Ok((client, layout.kubeconfig))
    }

    /// Waits for the `default` ServiceAccount (it appears once the controller manager runs;
    /// pods cannot be created in `default` before it) and for the run's `want` simulated
    /// nodes to be Ready. The caller races it against the children exiting.
    async fn settled(client: &Client, run: &RunId, want: usize) -> Result<()> {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let nodes: Api<Node> = Api::all(client.clone());
        let node_sel = watcher::Config::default().labels(&format!("{RUN_LABEL}={run}"));
        let waits = async {
            crate::wait::until(&sas, "default", "the `default` ServiceAccount in namespace default", START_TIMEOUT, |sa| sa.is_some())
                .await?;
            crate::wait::until_list(
                &nodes,
                node_sel,
                &format!("{want} simulated node(s) to be Ready"),
                START_TIMEOUT,
                |ns: &[Arc<Node>]| ns.len() == want && ns.iter().all(|n| nodes::is_ready(n)),
            )
            .await?;
            Ok::<_, Error>(())
        };
        waits.await
    }

    /// Runs `fut`, failing early if any child exits meanwhile.
    async fn race<T>(&mut self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let exits = futures::future::select_all(self.children.iter_mut().map(|c| Box::pin(c.exited())));
        tokio::select! {
            r = fut => r,
            (e, _, _) = exits => Err(e),
        }
    }

    /// Waits until the API server is `up`: serving (any answer to `/readyz`) or ready
    /// (`/readyz` is `ok`). This is a readiness probe: the API has no watch until it is up,
    /// so it polls (every 25 ms: a request on a kept-alive connection costs little, and
    /// each poll's wait is on the start's critical path) under a deadline, racing against a
    /// child exiting.
    async fn api(&mut self, client: &Client, up: Up, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        let probe = async {
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            loop {
                tick.tick().await;
                let req = http::Request::get("/readyz").body(Vec::new()).expect("static request");
                match client.request_text(req).await {
                    Ok(body) if body.trim() == "ok" => return Ok(()),
                    Ok(_) | Err(kube::Error::Api(_)) if up == Up::Serving => return Ok(()),
                    Ok(body) => last = body.lines().filter(|l| l.contains("failed")).collect::<Vec<_>>().join(", "),
                    Err(e) => last = e.to_string(),
                }
                if Instant::now() >= deadline {
                    let what = match up {
                        Up::Serving => "kube-apiserver to answer /readyz",
                        Up::Ready => "kube-apiserver /readyz",
                    };
                    return Err(WaitError::Timeout { what: what.into(), after: timeout, last_seen: last.clone() }.into());
                }
            }
        };
        self.race(probe).await
    }

    /// The children, taken out, in the order a graceful stop goes: the reverse of start
    /// order (kwok and the controllers before the API server, the API server before etcd).
    fn stop_order(&mut self) -> Vec<Supervised> {
        let mut v = std::mem::take(&mut self.children);
        v.reverse();
        v
    }
}

impl Running for ControlPlane {
    /// The simulated cloud first (its controllers talk to the API server), then the
    /// processes: a throwaway cluster's ([`Teardown::Fast`](super::Teardown::Fast)) all
    /// KILLed at once, since nothing in it is worth a clean shutdown (the API server alone
    /// takes about a second to drain after TERM); a kept one's one by one, TERM, grace, KILL.
    fn teardown(mut self: Box<Self>, how: super::Teardown) -> BoxFuture<'static, Result<()>> {
        let sim = self.sim.take();
        let mut children = self.stop_order();
        Box::pin(async move {
            if let Some(sim) = sim {
                sim.stop().await;
            }
            match how {
                super::Teardown::Fast => {
                    // Each future sends its KILL when first polled: all go out together.
                    for r in futures::future::join_all(children.iter_mut().map(Supervised::kill)).await {
                        r?;
                    }
                }
                super::Teardown::Graceful => {
                    for c in &mut children {
                        c.terminate().await?;
                    }
                }
            }
            Ok(())
        })
    }

    fn logs(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = self.children.iter().map(|c| c.log().to_path_buf()).collect();
        logs.extend(self.sim.as_ref().map(|s| s.log_path().to_path_buf()));
        logs
    }

    fn sim_nodes(&self) -> Option<&[SimNode]> {
        Some(&self.nodes)
    }

    fn heartbeat_label(&self) -> Option<(&str, &str)> {
        Some(KWOK_LABEL)
    }

    fn sim(&self) -> Option<&crate::sim::SimCloud> {
        self.sim.as_ref()
    }
}

impl Drop for ControlPlane {
    /// Dropped without a teardown (a failed start, a panic): stopped like a throwaway
    /// cluster, at once.
    fn drop(&mut self) {
        // The sim cloud's controllers first (their Drop aborts the tasks).
        drop(self.sim.take());
        let mut children = self.stop_order();
        // KILL to every process group first, so they all go down together; then each
        // Supervised's Drop waits for its child (it is already gone or going).
        for c in &mut children {
            c.start_kill();
        }
        drop(children);
    }
}

#[cfg(test)]
mod tests;
