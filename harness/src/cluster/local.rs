//! The embedded default: a real control plane as local child processes on loopback.
//!
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the pinned upstream
//! binaries; kwok simulates the nodes' kubelets. Authentication is by client certificate
//! from a per-run CA (no anonymous access); everything listens on 127.0.0.1 only.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::Api;
use kube::runtime::watcher;
use kube::Client;

use super::nodes::{self, NodePlan, SimNode};
use super::{kubeconfig, Cluster, ClusterProvider, ClusterSpec, Running};
use crate::error::{Error, Result};
use crate::fsutil::write_private;
use crate::labels::KWOK_LABEL;
use crate::pki::{self, Usage};
use crate::process::{ChildSpec, Supervised};
use crate::run::Run;
use crate::tools::Tools;

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
            Err(Error::PortBusy { port: requested.unwrap_or(0), what: what.to_string() })
        }
        Err(e) => Err(Error::Io { what: format!("bind a loopback port for {what}"), source: e }),
    }
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
        let dir = run.subdir("cluster")?;
        let logs = run.dir().join("logs");
        let apiserver_port = port(spec.apiserver_port, "kube-apiserver --secure-port")?;
        let etcd_client = port(None, "etcd client")?;
        let etcd_peer = port(None, "etcd peer")?;
        let kwok_port = port(None, "kwok server")?;

        // PKI: a CA, the API server's serving certificate, one admin client certificate.
        let ca = pki::Ca::new("lily-e2e-ca")?;
        let serving = ca.issue(
            "kube-apiserver",
            &[],
            &["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1"],
            Usage::Server,
        )?;
        let admin = ca.issue("lily-e2e-admin", &["system:masters"], &[], Usage::Client)?;
        let write = |name: &str, data: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            write_private(&p, data.as_bytes())?;
            Ok(p)
        };
        let ca_crt = write("ca.crt", &ca.cert_pem())?;
        let tls_crt = write("apiserver.crt", &serving.cert_pem)?;
        let tls_key = write("apiserver.key", &serving.key_pem)?;
        let (sa_private, sa_public) = pki::key_pair_pem()?;
        let sa_key = write("sa.key", &sa_private)?;
        let sa_pub = write("sa.pub", &sa_public)?;
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let kcfg = dir.join("kubeconfig");
        kubeconfig::write(&kcfg, &format!("lily-e2e-{}", run.id()), &server, &ca.cert_pem(), &admin.cert_pem, &admin.key_pem)?;

        let p = |p: &PathBuf| p.display().to_string();
        self.children.push(Supervised::spawn(
            ChildSpec::new("etcd", &bins.etcd).args([
                "--name=lily-e2e".to_string(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=lily-e2e=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ]),
            run.id(),
            &logs,
        )?);
        // The API server's graceful shutdown drains requests a throwaway cluster does not
        // need drained: a short grace before KILL keeps teardown fast.
        self.children.push(Supervised::spawn(
            ChildSpec::new("kube-apiserver", &bins.apiserver).grace(Duration::from_secs(2)).args([
                format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={apiserver_port}"),
                format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                format!("--tls-cert-file={}", p(&tls_crt)),
                format!("--tls-private-key-file={}", p(&tls_key)),
                format!("--client-ca-file={}", p(&ca_crt)),
                format!("--service-account-key-file={}", p(&sa_pub)),
                format!("--service-account-signing-key-file={}", p(&sa_key)),
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
            ]),
            run.id(),
            &logs,
        )?);

        let client = kubeconfig::client(&kcfg, None).await?;
        self.ready(&client, START_TIMEOUT, etcd_client, apiserver_port).await?;

        let common = |name: &str, bin: &PathBuf| {
            ChildSpec::new(name, bin).args([
                format!("--kubeconfig={}", p(&kcfg)),
                "--leader-elect=false".to_string(),
                "--bind-address=127.0.0.1".to_string(),
                "--secure-port=0".to_string(),
            ])
        };
        self.children.push(Supervised::spawn(
            common("kube-controller-manager", &bins.controller_manager).args([
                format!("--service-account-private-key-file={}", p(&sa_key)),
                format!("--root-ca-file={}", p(&ca_crt)),
                "--use-service-account-credentials=false".to_string(),
                format!("--node-monitor-period={}", t.node_monitor_period),
                format!("--node-monitor-grace-period={}", t.node_monitor_grace_period),
                "--allocate-node-cidrs=false".to_string(),
                "--profiling=false".to_string(),
            ]),
            run.id(),
            &logs,
        )?);
        self.children.push(Supervised::spawn(common("kube-scheduler", &bins.scheduler).arg("--profiling=false"), run.id(), &logs)?);
        let kwok_cfg = dir.join("kwok.yaml");
        write_private(&kwok_cfg, crate::sim::kwok_config().as_bytes())?;
        self.children.push(Supervised::spawn(
            ChildSpec::new("kwok", &bins.kwok).args([
                format!("--kubeconfig={}", p(&kcfg)),
                format!("--config={}", p(&kwok_cfg)),
                "--manage-all-nodes=false".to_string(),
                format!("--manage-nodes-with-label-selector={}={}", KWOK_LABEL.0, KWOK_LABEL.1),
                format!("--node-lease-duration-seconds={}", t.node_lease_seconds),
                "--cidr=10.244.0.1/16".to_string(),
                "--node-ip=10.0.0.1".to_string(),
                format!("--server-address=127.0.0.1:{kwok_port}"),
            ]),
            run.id(),
            &logs,
        )?);

        plan.create(&client, run.id(), provider.tools.kubernetes_version()).await?;

        // The `default` ServiceAccount appears once the controller manager runs; pods cannot
        // be created in `default` before it.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let want = plan.nodes.len();
        let nodes: Api<Node> = Api::all(client.clone());
        let node_sel = watcher::Config::default().labels(&format!("{}={}", crate::run::RUN_LABEL, run.id()));
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
        self.race(waits).await?;
        let sim = self.race(crate::sim::SimCloud::start(&client, run, crate::sim::SimOptions::default())).await?;
        self.sim = Some(sim);
        Ok((client, kcfg))
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
                    return Err(Error::Timeout { what: "kube-apiserver /readyz".into(), after: timeout, last_seen: last.clone() });
                }
            }
        };
        match self.race(probe).await {
            Err(Error::ChildExited { name, status, log, tail }) => {
                if tail.contains("address already in use") {
                    let port = if name == "etcd" { etcd_port } else { api_port };
                    return Err(Error::PortBusy { port, what: name });
                }
                Err(Error::ChildExited { name, status, log, tail })
            }
            r => r,
        }
    }

    fn stop_order(&mut self) -> Vec<Supervised> {
        let mut v = std::mem::take(&mut self.children);
        v.reverse();
        v
    }
}

impl Running for ControlPlane {
    fn teardown(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let sim = self.sim.take();
        let children = self.stop_order();
        Box::pin(async move {
            if let Some(sim) = sim {
                sim.stop().await;
            }
            for mut c in children {
                c.terminate().await?;
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
    fn drop(&mut self) {
        // The sim cloud's controllers first (their Drop aborts the tasks).
        drop(self.sim.take());
        // Reverse start order; each Supervised's Drop stops its process group.
        for c in self.stop_order() {
            drop(c);
        }
    }
}
