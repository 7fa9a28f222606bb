//! The simulated cloud: what a cloud provider and a kubelet would do for the local cluster,
//! and nothing else; the control plane stays real.
//!
//! Small controllers run as tokio tasks against the cluster, on kube-runtime reflectors:
//!
//! - a zonal block-storage CSI driver, [`DRIVER`]: a StorageClass (default `gp2`, the
//!   cluster's default class, `WaitForFirstConsumer`), an external provisioner that creates
//!   PVs pinned to the selected node's zone and deletes released ones, and an external
//!   attacher that acknowledges the VolumeAttachments the (real) attach/detach controller
//!   creates. No CSIDriver object exists, so attach is required and kube-controller-manager
//!   drives attach and detach, writing `node.status.volumesAttached` itself;
//! - the kubelet's share of volume state for simulated nodes, which kwok does not touch:
//!   `node.status.volumesInUse` (a volume stays in use for the node's unmount delay after
//!   its last pod on the node terminated, which is what produces a real "Multi-Attach
//!   error" when a replacement pod lands elsewhere), and mount gating: a pod is annotated
//!   [`MOUNTED_ANNOTATION`] once its volumes are attached, and only then does kwok (see
//!   [`kwok_config`]) start it; a terminating pod is annotated [`UNMOUNTED_ANNOTATION`]
//!   once its volumes are torn down, and only then does kwok finalise its deletion.
//!
//! Fault knobs ([`Knobs`]) change per-node behaviour while the controllers run. A node
//! whose kwok management label was removed (its heartbeat stopped) counts as dead: its
//! kubelet state freezes.
//!
//! Every decision is logged to `<run dir>/logs/sim-cloud.log` ([`SimCloud::log_path`]).

mod kubelet;
mod kwok;
mod log;
mod storage;
mod world;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::run::Run;
use crate::wait::WaitError;

pub use kwok::kwok_config;
pub use log::DecisionLog;

/// The simulated CSI driver (provisioner and attacher name).
pub const DRIVER: &str = "block.sim.lily-e2e.io";
/// The StorageClass the sim registers by default (the chart's default class name).
pub const DEFAULT_STORAGE_CLASS: &str = "gp2";
/// Set to `"true"` on a pod by the sim kubelet once all its volumes are attached and
/// mounted; kwok starts no pod without it.
pub const MOUNTED_ANNOTATION: &str = "sim.lily-e2e.io/volumes-mounted";
/// Set to `"true"` on a terminating pod by the sim kubelet once it has torn down the pod's
/// volumes (and, with no unmount delay, dropped them from `volumesInUse`); kwok finalises
/// no pod deletion without it, as a real kubelet keeps the pod object until then.
pub const UNMOUNTED_ANNOTATION: &str = "sim.lily-e2e.io/volumes-unmounted";
/// The finalizer the sim attacher puts on VolumeAttachments it attached (the name the
/// real external-attacher would use for this driver).
pub const ATTACHER_FINALIZER: &str = "external-attacher/block-sim-lily-e2e-io";
/// The annotation an external provisioner puts on the PVs it created.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// How long [`SimCloud::start`] waits for its watches to list the cluster.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The kubelet's unique name of a CSI volume, as in `node.status.volumesInUse` and
/// `node.status.volumesAttached`.
pub fn csi_unique_name(driver: &str, volume_handle: &str) -> String {
    format!("kubernetes.io/csi/{driver}^{volume_handle}")
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Name of the StorageClass to register for [`DRIVER`].
    pub storage_class: String,
    /// Whether to annotate it as the cluster's default StorageClass.
    pub default_class: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { storage_class: DEFAULT_STORAGE_CLASS.into(), default_class: true }
    }
}

/// Per-node fault settings of the simulated kubelet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeKnobs {
    /// How long a volume stays in `volumesInUse` after the last pod using it on the node
    /// is gone (default 0: released at once).
    pub unmount_delay: Duration,
    /// Never release volumes no longer used on the node (an unmount that hangs).
    pub unmount_stuck: bool,
}

/// Fault knobs, shared with the controllers; set them from scenario steps at any time.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    nodes: Arc<Mutex<HashMap<String, NodeKnobs>>>,
    /// Wakes the kubelet controller when a knob changes.
    wake: Arc<Notify>,
}

impl Knobs {
    /// The settings of `node` (defaults unless set).
    pub fn node(&self, node: &str) -> NodeKnobs {
        self.nodes.lock().unwrap().get(node).copied().unwrap_or_default()
    }

    fn update(&self, node: &str, f: impl FnOnce(&mut NodeKnobs)) {
        f(self.nodes.lock().unwrap().entry(node.to_string()).or_default());
        self.wake.notify_one();
    }

    pub fn set_unmount_delay(&self, node: &str, delay: Duration) {
        self.update(node, |k| k.unmount_delay = delay);
    }

    pub fn set_unmount_stuck(&self, node: &str, stuck: bool) {
        self.update(node, |k| k.unmount_stuck = stuck);
    }

    /// Back to defaults on every node.
    pub fn reset(&self) {
        self.nodes.lock().unwrap().clear();
        self.wake.notify_one();
    }
}

/// The running sim cloud. Dropping it aborts its controllers; [`SimCloud::stop`] also waits
/// for them to end.
#[derive(Debug)]
pub struct SimCloud {
    knobs: Knobs,
    log: DecisionLog,
    storage_class: String,
    tasks: Vec<JoinHandle<()>>,
}

impl SimCloud {
    /// Registers the StorageClass and starts the controllers; returns once their watches
    /// have listed the cluster.
    pub async fn start(client: &Client, run: &Run, opts: SimOptions) -> Result<SimCloud> {
        let log = DecisionLog::open(run.subdir("logs")?.join("sim-cloud.log"))?;
        storage::apply_storage_class(client, run.id(), &opts, &log).await?;
        let knobs = Knobs::default();
        let wakes = world::Wakes { provisioner: Arc::default(), attacher: Arc::default(), kubelet: knobs.wake.clone() };
        let (world, mut tasks) = world::World::start(client, &wakes, &log);
        // From here on `sim` owns the tasks, so an early return aborts them.
        let mut sim = SimCloud { knobs: knobs.clone(), log: log.clone(), storage_class: opts.storage_class.clone(), tasks: Vec::new() };
        sim.tasks.append(&mut tasks);
        tokio::time::timeout(START_TIMEOUT, world.ready()).await.map_err(|_| WaitError::Timeout {
            what: "the sim cloud's watches to list the cluster".into(),
            after: START_TIMEOUT,
            last_seen: world.describe(),
        })??;
        sim.tasks.push(tokio::spawn(storage::provisioner(
            client.clone(),
            world.clone(),
            wakes.provisioner.clone(),
            log.clone(),
            run.id().clone(),
        )));
        sim.tasks.push(tokio::spawn(storage::attacher(client.clone(), world.clone(), wakes.attacher.clone(), log.clone())));
        sim.tasks.push(tokio::spawn(kubelet::kubelet(client.clone(), world, wakes.kubelet.clone(), knobs, log.clone())));
        log.record("sim", format!("started: driver {DRIVER}, storage class {}", opts.storage_class));
        Ok(sim)
    }

    /// The fault knobs.
    pub fn knobs(&self) -> &Knobs {
        &self.knobs
    }

    /// Shorthand for `knobs().set_unmount_delay(node, delay)`.
    pub fn set_unmount_delay(&self, node: &str, delay: Duration) {
        self.knobs.set_unmount_delay(node, delay);
    }

    /// Shorthand for `knobs().set_unmount_stuck(node, stuck)`.
    pub fn set_unmount_stuck(&self, node: &str, stuck: bool) {
        self.knobs.set_unmount_stuck(node, stuck);
    }

    /// The decision log file.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// The StorageClass registered for [`DRIVER`].
    pub fn storage_class(&self) -> &str {
        &self.storage_class
    }

    /// Stops the controllers and waits for them to end.
    pub async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            // An aborted task ends at its next await; don't let one stuck elsewhere hold
            // teardown.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        self.log.record("sim", "stopped");
    }
}

impl Drop for SimCloud {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
