//! The node labels and annotations the simulated nodes carry, shared by the cluster that
//! creates those nodes ([`crate::cluster`]) and the simulated cloud that acts on them
//! ([`crate::sim`]). A leaf: it uses nothing of the harness.
//!
//! The run labels ([`crate::run::RUN_LABEL`], [`crate::run::OWNER_LABEL`]) stay with the run.

/// The well-known zone label; the sim's storage pins volumes to it.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// A simulated node's pool (one per zone).
pub const POOL_LABEL: &str = "lily-e2e.io/node-pool";
/// kwok manages (heartbeats) nodes carrying this label; removing it stops one node's
/// heartbeat, as if its kubelet died.
pub const KWOK_LABEL: (&str, &str) = ("lily-e2e.io/kwok", "managed");
/// The annotation on every Node the harness simulates (kwok's fake-node marker).
pub const SIMULATED_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
