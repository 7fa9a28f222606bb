//! Simulated nodes: Node objects that kwok keeps alive (heartbeats, pod status), spread
//! across zones, one node pool per zone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use super::ClusterError;
use crate::error::{Error, Result};
use crate::labels::SIMULATED_NODE_ANNOTATION;
use crate::run::{RunId, RUN_LABEL};

/// The node labels, defined in [`crate::labels`] (shared with `sim`); re-exported here.
pub use crate::labels::{HOSTNAME_LABEL, KWOK_LABEL, POOL_LABEL, REGION_LABEL, ZONE_LABEL};

/// One planned simulated node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SimNode {
    pub name: String,
    pub zone: String,
    pub pool: String,
}

/// Names and places `count` nodes across `zones` zones: zone `zone-a`, pool `pool-a`,
/// nodes `sim-a1`, `sim-b1`, `sim-a2`, ... (round robin).
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub nodes: Vec<SimNode>,
    pub cpu: u32,
    pub memory_gib: u32,
}

impl NodePlan {
    pub fn new(count: usize, zones: usize, cpu: u32, memory_gib: u32) -> Result<Self> {
        if zones == 0 || zones > 26 {
            return Err(ClusterError::BadZones { zones }.into());
        }
        if count == 0 {
            return Err(ClusterError::NoNodes.into());
        }
        if zones > count {
            return Err(Error::Invalid(format!(
                "--zones {zones} is more than --nodes {count}: every zone needs a node; give --nodes {zones} or more, or fewer zones"
            )));
        }
        let nodes = (0..count)
            .map(|i| {
                let z = (b'a' + (i % zones) as u8) as char;
                let n = i / zones + 1;
                SimNode { name: format!("sim-{z}{n}"), zone: format!("zone-{z}"), pool: format!("pool-{z}") }
            })
            .collect();
        Ok(NodePlan { nodes, cpu, memory_gib })
    }

    pub fn node_object(&self, n: &SimNode, run: &RunId, k8s_version: &str) -> Node {
        let labels: BTreeMap<String, String> = [
            (HOSTNAME_LABEL, n.name.as_str()),
            (ZONE_LABEL, n.zone.as_str()),
            (REGION_LABEL, "sim-region"),
            (POOL_LABEL, n.pool.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("type", "kwok"),
            (KWOK_LABEL.0, KWOK_LABEL.1),
            (RUN_LABEL, run.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let annotations: BTreeMap<String, String> = [
            ("node.alpha.kubernetes.io/ttl", "0"),
            SIMULATED_NODE_ANNOTATION,
            ("volumes.kubernetes.io/controller-managed-attach-detach", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let resources: BTreeMap<String, Quantity> = [
            ("cpu", self.cpu.to_string()),
            ("memory", format!("{}Gi", self.memory_gib)),
            ("pods", "110".to_string()),
            ("ephemeral-storage", "1Ti".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v)))
        .collect();
        Node {
            metadata: ObjectMeta { name: Some(n.name.clone()), labels: Some(labels), annotations: Some(annotations), ..Default::default() },
            spec: None,
            status: Some(NodeStatus {
                allocatable: Some(resources.clone()),
                capacity: Some(resources),
                node_info: Some(NodeSystemInfo {
                    architecture: "amd64".into(),
                    operating_system: "linux".into(),
                    kubelet_version: k8s_version.into(),
                    kube_proxy_version: k8s_version.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    /// Creates the Node objects (kwok then takes them over and marks them Ready).
    pub async fn create(&self, client: &Client, run: &RunId, k8s_version: &str) -> Result<()> {
        let api: Api<Node> = Api::all(client.clone());
        for n in &self.nodes {
            api.create(&PostParams::default(), &self.node_object(n, run, k8s_version))
                .await
                .map_err(Error::kube(format!("create simulated node {}", n.name)))?;
        }
        Ok(())
    }
}

/// Whether a node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(3, 2, &["sim-a1/zone-a", "sim-b1/zone-b", "sim-a2/zone-a"])]
    #[case(4, 2, &["sim-a1/zone-a", "sim-b1/zone-b", "sim-a2/zone-a", "sim-b2/zone-b"])]
    #[case(2, 1, &["sim-a1/zone-a", "sim-a2/zone-a"])]
    fn nodes_are_spread_round_robin(#[case] n: usize, #[case] z: usize, #[case] want: &[&str]) {
        let plan = NodePlan::new(n, z, 64, 512).unwrap();
        let got: Vec<String> = plan.nodes.iter().map(|n| format!("{}/{}", n.name, n.zone)).collect();
        assert_eq!(got, want);
    }

    #[rstest]
    #[case(3, 0)]
    #[case(0, 1)]
    #[case(3, 27)]
    fn bad_shapes_are_rejected(#[case] n: usize, #[case] z: usize) {
        assert!(NodePlan::new(n, z, 1, 1).is_err());
    }

    #[test]
    fn node_objects_carry_zone_pool_kwok_and_run_labels() {
        let plan = NodePlan::new(1, 1, 64, 512).unwrap();
        let node = plan.node_object(&plan.nodes[0], &RunId::new(), "v1.34.4");
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels[ZONE_LABEL], "zone-a");
        assert_eq!(labels[POOL_LABEL], "pool-a");
        assert_eq!(labels[KWOK_LABEL.0], KWOK_LABEL.1);
        assert!(labels.contains_key(RUN_LABEL));
        assert_eq!(node.metadata.annotations.unwrap()["volumes.kubernetes.io/controller-managed-attach-detach"], "true");
        assert_eq!(node.status.unwrap().allocatable.unwrap()["memory"].0, "512Gi");
    }
}
