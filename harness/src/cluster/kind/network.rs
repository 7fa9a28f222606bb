//! What kindnetd would do, without its image: a bridge network on each node's pod CIDR and
//! routes between the nodes' pod CIDRs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher;

use crate::error::Result;
use crate::run::{RunId, RUN_LABEL};

/// Where the node's containerd looks for CNI configuration (its default).
const CONFLIST: &str = "/etc/cni/net.d/10-lily-e2e-bridge.conflist";
const NODES_TIMEOUT: Duration = Duration::from_secs(120);

/// One node's part of the pod network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    pub name: String,
    pub address: String,
    pub pod_cidr: String,
}

/// The node's network from its Node object, once the controller manager gave it a pod CIDR.
pub fn node_net(n: &Node) -> Option<NodeNet> {
    let name = n.metadata.name.clone()?;
    let pod_cidr = n.spec.as_ref()?.pod_cidr.clone()?;
    let address = n.status.as_ref()?.addresses.as_ref()?.iter().find(|a| a.type_ == "InternalIP")?.address.clone();
    Some(NodeNet { name, address, pod_cidr })
}

/// The CNI configuration of a node: a bridge with host-local addresses from its pod CIDR,
/// masquerading what leaves the pod network, and portmap.
pub fn conflist(pod_cidr: &str) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "lily-e2e",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]},
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

/// The routes node `on` needs: each other node's pod CIDR via that node's address.
pub fn routes<'a>(on: &NodeNet, all: &'a [NodeNet]) -> Vec<(&'a str, &'a str)> {
    all.iter().filter(|o| o.name != on.name).map(|o| (o.pod_cidr.as_str(), o.address.as_str())).collect()
}

/// Waits for the `want` nodes of the run to have pod CIDRs and addresses and for kube-proxy
/// to be ready on each, then writes each node's CNI configuration and routes (in its
/// container, with `docker exec`). kube-proxy first: a node is Ready, and takes pods, once
/// its CNI configuration is there, and a pod that reaches for the API's Service address
/// before kube-proxy's rules are in place goes out of the node instead (here, to whatever
/// answers outside: local-path-provisioner then fails on a foreign certificate).
pub async fn connect(client: &kube::Client, run: &RunId, want: usize) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let sel = watcher::Config::default().labels(&format!("{RUN_LABEL}={run}"));
    let seen = crate::wait::until_list(
        &api,
        sel,
        &format!("{want} kind node(s) with a pod CIDR and an address"),
        NODES_TIMEOUT,
        |ns: &[Arc<Node>]| ns.len() == want && ns.iter().all(|n| node_net(n).is_some()),
    )
    .await?;
    let nets: Vec<NodeNet> = seen.iter().filter_map(node_net).collect();
    let proxies: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let what = format!("DaemonSet kube-system/kube-proxy to be ready on {want} node(s)");
    crate::wait::until(&proxies, "kube-proxy", &what, NODES_TIMEOUT, |d| {
        d.and_then(|d| d.status.as_ref()).map(|s| s.number_ready >= want as i32).unwrap_or(false)
    })
    .await?;
    for n in &nets {
        let script = format!("mkdir -p /etc/cni/net.d && printf '%s' \"$1\" > {CONFLIST}");
        docker_exec(&n.name, &["sh", "-c", &script, "sh", &conflist(&n.pod_cidr)]).await?;
        for (cidr, via) in routes(n, &nets) {
            docker_exec(&n.name, &["ip", "route", "replace", cidr, "via", via]).await?;
        }
    }
    Ok(())
}

async fn docker_exec(container: &str, cmd: &[&str]) -> Result<()> {
    let mut args: Vec<OsString> = vec!["exec".into(), container.into()];
    args.extend(cmd.iter().map(OsString::from));
    let what = format!("docker exec {container} {}", cmd.first().copied().unwrap_or(""));
    super::run_ok(&PathBuf::from("docker"), &args, &what, Duration::from_secs(30)).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, address: &str, cidr: &str) -> NodeNet {
        NodeNet { name: name.into(), address: address.into(), pod_cidr: cidr.into() }
    }

    #[test]
    fn every_node_routes_to_every_other_nodes_pods() {
        let all = vec![
            net("cp", "172.18.0.2", "10.244.0.0/24"),
            net("w1", "172.18.0.3", "10.244.1.0/24"),
            net("w2", "172.18.0.4", "10.244.2.0/24"),
        ];
        assert_eq!(routes(&all[1], &all), vec![("10.244.0.0/24", "172.18.0.2"), ("10.244.2.0/24", "172.18.0.4")]);
        assert!(routes(&all[0], &all).iter().all(|(c, _)| *c != "10.244.0.0/24"));
    }

    #[test]
    fn the_bridge_takes_addresses_from_the_nodes_pod_cidr() {
        let c: serde_json::Value = serde_json::from_str(&conflist("10.244.3.0/24")).unwrap();
        assert_eq!(c["plugins"][0]["type"], "bridge");
        assert_eq!(c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.244.3.0/24");
        assert_eq!(c["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn a_node_without_its_cidr_or_address_is_not_ready_for_the_network() {
        let mut n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "Hostname", "address": "w1"}, {"type": "InternalIP", "address": "172.18.0.3"}]},
        }))
        .unwrap();
        assert_eq!(node_net(&n), Some(net("w1", "172.18.0.3", "10.244.1.0/24")));
        n.spec.as_mut().unwrap().pod_cidr = None;
        assert_eq!(node_net(&n), None);
    }
}
