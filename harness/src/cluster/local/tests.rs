use super::*;

const PORTS: Ports = Ports { apiserver: 6443 };

fn layout() -> Layout {
    Layout::new(Path::new("/tmp/lily-e2e-r0/cluster"))
}

fn strings(v: Vec<OsString>) -> Vec<String> {
    v.into_iter().map(|a| a.into_string().unwrap()).collect()
}

/// The value of `--flag=value`, asserting the flag is given exactly once.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let prefix = format!("--{name}=");
    let found: Vec<&str> = args.iter().filter_map(|a| a.strip_prefix(&prefix)).collect();
    assert_eq!(found.len(), 1, "--{name} in {args:?}");
    found[0]
}

#[test]
fn files_live_in_the_cluster_directory() {
    let l = layout();
    assert_eq!(l.ca_crt, Path::new("/tmp/lily-e2e-r0/cluster/ca.crt"));
    assert_eq!(l.kubeconfig, Path::new("/tmp/lily-e2e-r0/cluster/kubeconfig"));
    assert_eq!(l.etcd_data, Path::new("/tmp/lily-e2e-r0/cluster/etcd"));
    assert_eq!(server_url(&PORTS), "https://127.0.0.1:6443");
}

#[test]
fn etcd_is_one_member_without_fsync() {
    let a = strings(etcd_args(&layout()));
    assert_eq!(flag(&a, "data-dir"), "/tmp/lily-e2e-r0/cluster/etcd");
    assert_eq!(flag(&a, "unsafe-no-fsync"), "true");
}

#[test]
fn the_apiserver_is_loopback_only_with_client_certificates_and_no_anonymous_access() {
    let t = Timings::default();
    let a = strings(apiserver_args(&layout(), &PORTS, &t));
    assert_eq!(flag(&a, "bind-address"), "127.0.0.1");
    assert_eq!(flag(&a, "advertise-address"), "127.0.0.1");
    assert_eq!(flag(&a, "secure-port"), "6443");
    assert_eq!(flag(&a, "anonymous-auth"), "false");
    assert_eq!(flag(&a, "authorization-mode"), "RBAC");
    assert_eq!(flag(&a, "client-ca-file"), "/tmp/lily-e2e-r0/cluster/ca.crt");
    assert_eq!(flag(&a, "tls-cert-file"), "/tmp/lily-e2e-r0/cluster/apiserver.crt");
    assert_eq!(flag(&a, "tls-private-key-file"), "/tmp/lily-e2e-r0/cluster/apiserver.key");
    assert_eq!(flag(&a, "service-account-key-file"), "/tmp/lily-e2e-r0/cluster/sa.pub");
    assert_eq!(flag(&a, "service-account-signing-key-file"), "/tmp/lily-e2e-r0/cluster/sa.key");
    assert_eq!(flag(&a, "default-not-ready-toleration-seconds"), t.not_ready_toleration_seconds.to_string());
    assert_eq!(flag(&a, "default-unreachable-toleration-seconds"), t.unreachable_toleration_seconds.to_string());
}

#[test]
fn the_controller_manager_gets_its_flags_in_order() {
    let t = Timings { node_monitor_period: "2s", node_monitor_grace_period: "9s", ..Timings::default() };
    assert_eq!(
        strings(controller_manager_args(&layout(), &t, 34)),
        [
            "--kubeconfig=/tmp/lily-e2e-r0/cluster/kubeconfig",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--service-account-private-key-file=/tmp/lily-e2e-r0/cluster/sa.key",
            "--root-ca-file=/tmp/lily-e2e-r0/cluster/ca.crt",
            "--use-service-account-credentials=false",
            "--node-monitor-period=2s",
            "--node-monitor-grace-period=9s",
            "--allocate-node-cidrs=false",
            "--profiling=false",
            &format!("--controllers={}", trim::controllers(34)),
        ]
    );
}

#[test]
fn the_scheduler_shares_the_component_flags() {
    assert_eq!(
        strings(scheduler_args(&layout())),
        [
            "--kubeconfig=/tmp/lily-e2e-r0/cluster/kubeconfig",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--profiling=false"
        ]
    );
}

#[test]
fn kwok_manages_only_labelled_nodes() {
    let t = Timings { node_lease_seconds: 11, ..Timings::default() };
    let a = strings(kwok_args(&layout(), &t));
    assert_eq!(flag(&a, "kubeconfig"), "/tmp/lily-e2e-r0/cluster/kubeconfig");
    assert_eq!(flag(&a, "config"), "/tmp/lily-e2e-r0/cluster/kwok.yaml");
    assert_eq!(flag(&a, "manage-all-nodes"), "false");
    assert_eq!(flag(&a, "manage-nodes-with-label-selector"), format!("{}={}", KWOK_LABEL.0, KWOK_LABEL.1));
    assert_eq!(flag(&a, "node-lease-duration-seconds"), "11");
    assert!(!a.iter().any(|x| x.starts_with("--server-address")), "kwok listens on no port: {a:?}");
}
