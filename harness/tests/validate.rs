//! Every rendered manifest (each fixture version x values case) is validated by a real API
//! server: a server-side dry-run apply against the local control plane. A kind the bare
//! cluster lacks (ServiceMonitor) is reported as "needs CRD", then validated after a minimal
//! CRD is installed; a typo'd field is rejected.

use common::values_files;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use lily_e2e::cluster::local::Local;
use lily_e2e::cluster::{ClusterProvider, ClusterSpec};
use lily_e2e::helm::validate::{dry_run_apply, CrdPolicy, MinimalCrd, Outcome};
use lily_e2e::helm::{ChartSource, Helm, Values, FIXTURE_VERSIONS};
use lily_e2e::run::Run;
use lily_e2e::snapshot::RenderRequest;
use lily_e2e::tools::Tools;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_manifest_is_accepted_by_a_real_api_server() {
    let run = Run::create(false).unwrap();
    let cluster = Local::new(Tools::new()).start(&ClusterSpec { nodes: 1, zones: 1, ..Default::default() }, &run).await.unwrap();
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "lily"}})).unwrap();
    Api::<Namespace>::all(cluster.client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    let helm = Helm::new(run.subdir("helm").unwrap()).unwrap();
    let mut problems = Vec::new();
    let mut needed_crd = false;
    for version in FIXTURE_VERSIONS {
        for values in values_files() {
            let source = ChartSource::parse(&format!("{}@{version}", common::fixture_chart_dir().display())).unwrap();
            let req = RenderRequest::new(source).values(Values::files([values.clone()]));
            let text = lily_e2e::snapshot::render_raw(&helm, &req).await.unwrap();
            let docs = lily_e2e::yaml::documents(&text).unwrap();
            let report = dry_run_apply(&cluster.client, &docs, "lily", &CrdPolicy::Report).await.unwrap();
            for r in &report {
                match &r.outcome {
                    Outcome::Accepted => {}
                    Outcome::NeedsCrd { kind, .. } if kind == "ServiceMonitor" => needed_crd = true,
                    other => problems.push(format!("{version} {}: {} {other:?}", values.display(), r.id())),
                }
            }
            if report.iter().any(|r| matches!(r.outcome, Outcome::NeedsCrd { .. })) {
                let again = dry_run_apply(&cluster.client, &docs, "lily", &CrdPolicy::InstallMinimal(vec![MinimalCrd::service_monitor()]))
                    .await
                    .unwrap();
                for r in again.iter().filter(|r| r.outcome != Outcome::Accepted) {
                    problems.push(format!("{version} {} with the minimal CRD: {} {:?}", values.display(), r.id(), r.outcome));
                }
            }
        }
    }
    assert!(needed_crd, "the servicemonitor values case should need the ServiceMonitor CRD on a bare cluster");
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // A typo'd field is rejected by the server's field validation.
    let bad =
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "lily"}, "dta": {"a": "b"}});
    let r = dry_run_apply(&cluster.client, &[bad], "lily", &CrdPolicy::Report).await.unwrap();
    assert!(matches!(&r[0].outcome, Outcome::Rejected { message, .. } if message.contains("dta")), "{:?}", r[0].outcome);
    cluster.teardown(lily_e2e::cluster::Teardown::Fast).await.unwrap();
}
