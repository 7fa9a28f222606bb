//! The embedded default: a real control plane as local child processes on loopback.
//!
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the pinned upstream
//! binaries; kwok simulates the nodes' kubelets. Authentication is by client certificate
//! from a per-run CA (no anonymous access); everything listens on 127.0.0.1 only.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::Api;
use kube::runtime::watcher;
use kube::Client;

use super::nodes::{self, NodePlan, SimNode};
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

/// A free loopback port, or the requested one if it is free.
fn port(requested: Option<u16>, what: &str) -> Result<u16> {
    match TcpListener::bind(("127.0.0.1", requested.unwrap_or(0))) {
        Ok(l) => Ok(l.local_addr().map_err(Error::io("read a socket address"))?.port()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(ClusterError::PortBusy { port: requested.unwrap_or(0), what: what.to_string() }.into())
        }
        Err(e) => Err(Error::Io { what: format!("bind a loopback port for {what}"), source: e }),
    }
}

/// The loopback ports of one control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    apiserver: u16,
    etcd_client: u16,
    etcd_peer: u16,
    kwok: u16,
}

impl Ports {
    /// Free loopback ports; the API server's the requested one, if given (and free).
    fn allocate(apiserver: Option<u16>) -> Result<Self> {
        Ok(Ports {
            apiserver: port(apiserver, "kube-apiserver --secure-port")?,
            etcd_client: port(None, "etcd client")?,
            etcd_peer: port(None, "etcd peer")?,
            kwok: port(None, "kwok server")?,
        })
    }
}

/// Where the control plane's files live in the run's `cluster` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    etcd_data: PathBuf,
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
            etcd_data: dir.join("etcd"),
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

    /// Writes the PKI: a CA, the API server's serving certificate, service-account keys,
    /// and a kubeconfig for `server` with one admin client certificate.
    fn write_pki(&self, cluster: &str, server: &str) -> Result<()> {
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
        kubeconfig::write(&self.kubeconfig, cluster, server, &ca.cert_pem(), &admin.cert_pem, &admin.key_pem)
    }
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

/// etcd: one member on loopback, no fsync (a throwaway cluster).
fn etcd_args(l: &Layout, ports: &Ports) -> Vec<OsString> {
    let (client, peer) = (ports.etcd_client, ports.etcd_peer);
    args(vec![
        "--name=lily-e2e".to_string(),
        format!("--data-dir={}", p(&l.etcd_data)),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=lily-e2e=http://127.0.0.1:{peer}"),
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ])
}

/// kube-apiserver: loopback only, client certificates from the run's CA, no anonymous
/// access, RBAC, and the short node-failure tolerations of `t`.
fn apiserver_args(l: &Layout, ports: &Ports, t: &Timings) -> Vec<OsString> {
    args(vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
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
/// the periods of `t`.
fn controller_manager_args(l: &Layout, t: &Timings) -> Vec<OsString> {
    let mut v = component_args(l);
    v.extend([
        format!("--service-account-private-key-file={}", p(&l.sa_key)),
        format!("--root-ca-file={}", p(&l.ca_crt)),
        "--use-service-account-credentials=false".to_string(),
        format!("--node-monitor-period={}", t.node_monitor_period),
        format!("--node-monitor-grace-period={}", t.node_monitor_grace_period),
        "--allocate-node-cidrs=false".to_string(),
        "--profiling=false".to_string(),
    ]);
    args(v)
}

fn scheduler_args(l: &Layout) -> Vec<OsString> {
    let mut v = component_args(l);
    v.push("--profiling=false".to_string());
    args(v)
}

/// kwok: manages only the nodes carrying [`KWOK_LABEL`], with the lease of `t`.
fn kwok_args(l: &Layout, ports: &Ports, t: &Timings) -> Vec<OsString> {
    args(vec![
        format!("--kubeconfig={}", p(&l.kubeconfig)),
        format!("--config={}", p(&l.kwok_config)),
        "--manage-all-nodes=false".to_string(),
        format!("--manage-nodes-with-label-selector={}={}", KWOK_LABEL.0, KWOK_LABEL.1),
        format!("--node-lease-duration-seconds={}", t.node_lease_seconds),
        "--cidr=10.244.0.1/16".to_string(),
        "--node-ip=10.0.0.1".to_string(),
        format!("--server-address=127.0.0.1:{}", ports.kwok),
    ])
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
        let layout = Layout::new(&run.subdir("cluster")?);
        let logs = run.dir().join("logs");
        let ports = Ports::allocate(spec.apiserver_port)?;
        layout.write_pki(&format!("lily-e2e-{}", run.id()), &server_url(&ports))?;
        let spawn = |child: ChildSpec| Supervised::spawn(child, run.id(), &logs);

        self.children.push(spawn(ChildSpec::new("etcd", &bins.etcd).args(etcd_args(&layout, &ports)))?);
        // The API server's graceful shutdown drains requests a throwaway cluster does not
        // need drained: a short grace before KILL keeps teardown fast.
        self.children.push(spawn(
            ChildSpec::new("kube-apiserver", &bins.apiserver).grace(Duration::from_secs(2)).args(apiserver_args(&layout, &ports, t)),
        )?);
        let client = kubeconfig::client(&layout.kubeconfig, None).await?;
        self.ready(&client, START_TIMEOUT, ports.etcd_client, ports.apiserver).await?;

        self.children
            .push(spawn(ChildSpec::new("kube-controller-manager", &bins.controller_manager).args(controller_manager_args(&layout, t)))?);
        self.children.push(spawn(ChildSpec::new("kube-scheduler", &bins.scheduler).args(scheduler_args(&layout)))?);
        write_private(&layout.kwok_config, crate::sim::kwok_config().as_bytes())?;
        self.children.push(spawn(ChildSpec::new("kwok", &bins.kwok).args(kwok_args(&layout, &ports, t)))?);

        plan.create(&client, run.id(), provider.tools.kubernetes_version()).await?;
        self.settled(&client, run.id(), plan.nodes.len()).await?;
        let sim = self.race(crate::sim::SimCloud::start(&client, run, crate::sim::SimOptions::default())).await?;
        self.sim = Some(sim);
        Ok((client, layout.kubeconfig))
    }

    /// Waits for the `default` ServiceAccount (it appears once the controller manager runs;
    /// pods cannot be created in `default` before it) and for the run's `want` simulated
    /// nodes to be Ready, failing early if a child exits.
    async fn settled(&mut self, client: &Client, run: &RunId, want: usize) -> Result<()> {
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
        self.race(waits).await
    }

    /// Runs `fut`, failing early if any child exits meanwhile.
    async fn race<T>(&mut self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let exits = futures::future::select_all(self.children.iter_mut().map(|c| Box::pin(c.exited())));
        tokio::select! {
            r = fut => r,
            (e, _, _) = exits => Err(e),
        }
    }

    /// Waits for `/readyz`. This is a readiness probe: the API has no watch until it is
    /// up, so it polls (every 100 ms) under a deadline, racing against etcd or the API
    /// server exiting.
    async fn ready(&mut self, client: &Client, timeout: Duration, etcd_port: u16, api_port: u16) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        let probe = async {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let req = http::Request::get("/readyz").body(Vec::new()).expect("static request");
                match client.request_text(req).await {
                    Ok(body) if body.trim() == "ok" => return Ok(()),
                    Ok(body) => last = body.lines().filter(|l| l.contains("failed")).collect::<Vec<_>>().join(", "),
                    Err(e) => last = e.to_string(),
                }
                if Instant::now() >= deadline {
                    return Err(
                        WaitError::Timeout { what: "kube-apiserver /readyz".into(), after: timeout, last_seen: last.clone() }.into()
                    );
                }
            }
        };
        match self.race(probe).await {
            Err(Error::Process(ProcessError::Exited { name, status, log, tail })) => {
                if tail.contains("address already in use") {
                    let port = if name == "etcd" { etcd_port } else { api_port };
                    return Err(ClusterError::PortBusy { port, what: name }.into());
                }
                Err(ProcessError::Exited { name, status, log, tail }.into())
            }
            r => r,
        }
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
