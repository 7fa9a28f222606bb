//! Rendered-manifest snapshots of the fixture chart, and the helm driver / chart repository
//! against the real (pinned) helm. No cluster needed.
//!
//! Snapshots live in `<repo>/snapshots/manifests/lily-<version>__<values>.snap`, one per
//! fixture chart version x `scenarios/values/*.yaml`. To accept changes:
//! `INSTA_UPDATE=always cargo test -p lily-e2e --test manifests`, then review the diff.
//! CI (`CI=true`) never writes snapshots: a missing or changed one fails.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use base64::Engine;
use rstest::rstest;

mod common;
use serde_json::Value;

use common::{default_sources, fixture_chart_dir, repo_root, values_files};
use lily_e2e::helm::{ChartMeta, ChartRepo, ChartSource, Helm, TemplateOpts, Values, FIXTURE_VERSIONS};
use lily_e2e::snapshot::{self, RenderRequest};

fn snapshot_dir() -> PathBuf {
    repo_root().join("snapshots").join("manifests")
}

fn helm(tmp: &Path) -> Helm {
    Helm::new(tmp.join("helm")).expect("the pinned helm is installed (`lily-e2e tools install helm`)")
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

fn snapshot_name(version: &str, values: &Path) -> String {
    format!("lily-{version}__{}", stem(values))
}

fn insta_settings(version: &str, values: &Path) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(snapshot_dir());
    s.set_prepend_module_to_snapshot(false);
    s.set_omit_expression(true);
    s.set_description(format!(
        "fixture chart lily {version}, release rel, namespace lily, values scenarios/values/{}",
        values.file_name().unwrap().to_string_lossy()
    ));
    s
}

/// Every fixture version x values file: lint, render, normalise, compare with its snapshot.
/// All cases run; the failure lists every (version, values file) that failed.
#[rstest]
#[case::v0_0_1("0.0.1")]
#[case::v0_1_0("0.1.0")]
#[case::v0_2_0("0.2.0")]
#[case::v0_3_0("0.3.0")]
#[tokio::test]
async fn rendered_manifests_match_snapshots(#[case] version: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let tgz = helm.package(&fixture_chart_dir(), Some(version), &tmp.path().join("pkg")).await.expect("package the fixture chart");
    assert_eq!(ChartMeta::read(&tgz).unwrap().version, version);
    let cases = values_files();
    assert!(!cases.is_empty(), "no values files in scenarios/values");

    let mut failures = Vec::new();
    for values in &cases {
        let case = format!("lily {version} with {}", values.file_name().unwrap().to_string_lossy());
        if let Err(e) = helm.lint(&tgz, &Values::files([values]), true).await {
            failures.push(format!("{case}: helm lint failed: {e:#}"));
            continue;
        }
        let req = RenderRequest::new(ChartSource::Archive { path: tgz.clone() }).values(Values::files([values]));
        let text = match snapshot::render(&helm, &req).await {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{case}: render failed: {e:#}"));
                continue;
            }
        };
        let name = snapshot_name(version, values);
        let settings = insta_settings(version, values);
        let res = std::panic::catch_unwind(AssertUnwindSafe(|| settings.bind(|| insta::assert_snapshot!(name.clone(), text))));
        if res.is_err() {
            if snapshot_dir().join(format!("{name}.snap")).is_file() {
                failures.push(format!("{case}: rendered manifests differ from snapshots/manifests/{name}.snap"));
            } else {
                failures.push(format!("{case}: snapshots/manifests/{name}.snap does not exist yet"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n  {}", failures.len(), cases.len(), failures.join("\n  "));
}

/// No stale snapshots (for removed values files or versions) and no unreviewed `.snap.new`.
#[test]
fn snapshot_set_is_exactly_versions_times_values_files() {
    let want: BTreeSet<String> =
        FIXTURE_VERSIONS.iter().flat_map(|v| values_files().into_iter().map(move |f| format!("{}.snap", snapshot_name(v, &f)))).collect();
    let have: BTreeSet<String> = std::fs::read_dir(snapshot_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".snap") || n.ends_with(".snap.new") || n.ends_with(".pending-snap"))
        .collect();
    let pending: Vec<&String> = have.iter().filter(|n| !n.ends_with(".snap")).collect();
    assert!(pending.is_empty(), "unreviewed snapshots (review with `cargo insta review`, or delete): {pending:?}");
    let missing: Vec<&String> = want.difference(&have).collect();
    let stale: Vec<&String> = have.difference(&want).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "snapshots/manifests is out of date; missing {missing:?} (run INSTA_UPDATE=always cargo test -p lily-e2e --test manifests), stale {stale:?} (delete them)"
    );
}

fn secret_values(rendered: &str) -> Vec<String> {
    let docs = lily_e2e::yaml::documents(rendered).unwrap();
    let mut out = Vec::new();
    for d in docs.iter().filter(|d| d["kind"] == "Secret") {
        for v in d["data"].as_object().into_iter().flat_map(|m| m.values()) {
            let b64 = v.as_str().unwrap().to_string();
            let plain = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(&b64).unwrap()).unwrap();
            out.push(b64);
            out.push(plain);
        }
    }
    out
}

/// The fixture's redis subchart renders a fresh random password every time; the normalised
/// output must not change, and must not contain it.
#[rstest]
#[case::redis("cluster-redis.yaml")]
#[tokio::test]
async fn rendering_twice_is_byte_identical_and_shows_no_secret(#[case] values: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let src: ChartSource = format!("{}@0.2.0", fixture_chart_dir().display()).parse().unwrap();
    let req = RenderRequest::new(src).values(Values::files([repo_root().join("scenarios/values").join(values)]));
    let raw1 = snapshot::render_raw(&helm, &req).await.unwrap();
    let raw2 = snapshot::render_raw(&helm, &req).await.unwrap();
    let secrets: Vec<String> = secret_values(&raw1).into_iter().chain(secret_values(&raw2)).collect();
    assert!(!secrets.is_empty(), "the fixture renders a Secret");
    assert_ne!(raw1, raw2, "the fixture's secrets are random, so raw renders differ");
    let n1 = snapshot::normalize_manifests(&raw1).unwrap();
    let n2 = snapshot::normalize_manifests(&raw2).unwrap();
    assert_eq!(n1, n2);
    assert_eq!(snapshot::render(&helm, &req).await.unwrap(), n1);
    for s in &secrets {
        assert!(!n1.contains(s.as_str()), "secret value {s:?} appears in the normalised manifests");
    }
    assert!(n1.contains("[redacted: ") && n1.contains("[checksum]"));
}

/// A repository of the fixture versions behaves like a real chart repository.
#[tokio::test]
async fn served_repo_answers_repo_add_search_pull_and_pinned_template() {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let repo = ChartRepo::serve(&helm, &default_sources(), &tmp.path().join("repo")).await.unwrap();
    let versions: Vec<String> = repo.versions().iter().map(ToString::to_string).collect();
    assert_eq!(versions, FIXTURE_VERSIONS);
    assert_eq!(repo.latest().to_string(), "0.3.0");
    assert_eq!(repo.previous().unwrap().to_string(), "0.2.0");
    assert_eq!(repo.chart_name(), "lily");
    assert!(repo.url().starts_with("http://127.0.0.1:"));

    repo.add_to(&helm).await.unwrap();
    let repos = std::fs::read_to_string(helm.home().join("config/repositories.yaml")).unwrap();
    assert!(repos.contains(repo.url()), "repo added to the driver's own helm home:\n{repos}");
    helm.repo_update(&[repo.name()]).await.unwrap();

    let query = format!("{}/lily", repo.name());
    let hits = helm.search_repo_versions(&query, false).await.unwrap();
    let found: BTreeSet<String> = hits.iter().filter(|h| h.name == query).map(|h| h.version.clone()).collect();
    assert_eq!(found, FIXTURE_VERSIONS.iter().map(|s| s.to_string()).collect());
    assert!(hits.iter().all(|h| h.app_version == "0.17.0"), "{hits:?}");

    let pulled = helm.pull(&repo.chart_ref(), Some("0.2.0"), &tmp.path().join("pulled")).await.unwrap();
    assert_eq!(pulled.file_name().unwrap(), "lily-0.2.0.tgz");
    assert_eq!(ChartMeta::read(&pulled).unwrap().version, "0.2.0");

    let opts = TemplateOpts {
        namespace: Some("lily".into()),
        version: Some("0.1.0".into()),
        values: Values::files([repo_root().join("scenarios/values/daemon-default.yaml")]),
        ..Default::default()
    };
    let rendered = helm.template("rel", &repo.chart_ref(), &opts).await.unwrap();
    let docs = lily_e2e::yaml::documents(&rendered).unwrap();
    let labels: BTreeSet<&str> = docs.iter().filter_map(|d| d.pointer("/metadata/labels/helm.sh~1chart").and_then(Value::as_str)).collect();
    assert_eq!(labels, BTreeSet::from(["lily-0.1.0"]));
    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    assert!(sts.pointer("/spec/template/spec/terminationGracePeriodSeconds").is_none(), "0.1.0 predates the grace period of 0.2.0");
}

async fn render_fixture(helm: &Helm, version: &str, set: &[&str]) -> Result<Vec<Value>, String> {
    let src: ChartSource = format!("{}@{version}", fixture_chart_dir().display()).parse().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut values = Values::files([repo_root().join("scenarios/values/daemon-default.yaml")]);
    if !set.is_empty() {
        let p = tmp.path().join("set.yaml");
        std::fs::write(&p, set.join("\n")).unwrap();
        values = values.file(p);
    }
    let req = RenderRequest::new(src).values(values);
    match snapshot::render_raw(helm, &req).await {
        Ok(raw) => Ok(lily_e2e::yaml::documents(&raw).unwrap()),
        Err(e) => Err(lily_e2e::error::chain(&e)),
    }
}

fn statefulset(docs: &[Value]) -> &Value {
    docs.iter().find(|d| d["kind"] == "StatefulSet").expect("a StatefulSet")
}

/// The upgrade hazard of the fixture's history: 0.0.1 names the StatefulSet `<release>-lily`
/// (as the real chart's 0.1.0 did), 0.1.0 `<short-instance>-daemon`, so its claims change.
#[tokio::test]
async fn the_statefulset_is_renamed_between_0_0_1_and_0_1_0() {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let old = render_fixture(&helm, "0.0.1", &[]).await.unwrap();
    let new = render_fixture(&helm, "0.1.0", &[]).await.unwrap();
    assert_eq!(statefulset(&old)["metadata"]["name"], "rel-lily");
    assert_eq!(statefulset(&new)["metadata"]["name"], "lily-rel-dev-mainnet-daemon");
    for d in [&old, &new] {
        assert_eq!(
            statefulset(d).pointer("/spec/volumeClaimTemplates/0/metadata/name").unwrap(),
            lily_e2e::contract::DATASTORE_CLAIM_TEMPLATE
        );
    }
}

/// The scheduling knobs: 0.1.0 renders each into the pod spec; 0.0.1 has the real chart's
/// defect (the block glued onto `spec:`), so a nodeSelector fails to parse; affinity and
/// tolerations start on a line of their own and render, as in the real chart.
#[tokio::test]
async fn scheduling_knobs_render_from_0_1_0_and_break_0_0_1() {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let knobs: [(&str, &[&str]); 3] = [
        ("nodeSelector", &["nodeSelector:", "  lily-e2e.io/node-pool: pool-a"]),
        (
            "affinity",
            &[
                "affinity:",
                "  nodeAffinity:",
                "    requiredDuringSchedulingIgnoredDuringExecution:",
                "      nodeSelectorTerms:",
                "        - matchExpressions:",
                "            - {key: topology.kubernetes.io/zone, operator: In, values: [zone-a]}",
            ],
        ),
        ("tolerations", &["tolerations:", "  - {key: dedicated, operator: Equal, value: lily, effect: NoSchedule}"]),
    ];
    for (knob, set) in knobs {
        let good = render_fixture(&helm, "0.1.0", set).await.unwrap_or_else(|e| panic!("0.1.0 with {knob}: {e}"));
        let spec = statefulset(&good).pointer("/spec/template/spec").unwrap();
        assert!(spec.get(knob).is_some_and(|v| !v.is_null()), "0.1.0 renders {knob} into the pod spec: {spec}");
        let old = render_fixture(&helm, "0.0.1", set).await;
        if knob == "nodeSelector" {
            let e = old.expect_err("0.0.1 cannot render a nodeSelector");
            assert!(
                e.contains("YAML parse error on lily/templates/statefulset.yaml")
                    && e.contains("mapping values are not allowed in this context"),
                "{knob}: {e}"
            );
        } else {
            // As in the real chart, only the first block of the glued include breaks.
            let docs = old.unwrap_or_else(|e| panic!("0.0.1 renders {knob}: {e}"));
            assert!(statefulset(&docs).pointer("/spec/template/spec").unwrap().get(knob).is_some(), "{knob}");
        }
    }
    render_fixture(&helm, "0.0.1", &[]).await.expect("0.0.1 renders without knobs");
}

/// The storage wiring of the real chart: every Lily container carries
/// LILY_STORAGE_POSTGRESQL_<NAME>_URL from the operator's Secret, and the config map's
/// [Storage.Postgresql.<name>] names that env.
#[tokio::test]
async fn every_lily_container_reads_the_storage_url_from_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let docs = render_fixture(&helm, "0.2.0", &[]).await.unwrap();
    let spec = statefulset(&docs).pointer("/spec/template/spec").unwrap();
    let env = lily_e2e::contract::storage_url_env("db");
    let mut names = Vec::new();
    for group in ["initContainers", "containers"] {
        for c in spec[group].as_array().unwrap() {
            names.push(c["name"].as_str().unwrap().to_string());
            let var = c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == env.as_str())
                .unwrap_or_else(|| panic!("{} lacks {env}", c["name"]));
            assert_eq!(var.pointer("/valueFrom/secretKeyRef/name").unwrap(), "lily-db");
            assert_eq!(var.pointer("/valueFrom/secretKeyRef/key").unwrap(), "url");
        }
    }
    assert_eq!(names, ["init-datastore", "init-sync", lily_e2e::contract::MAIN_CONTAINER]);
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "lily-rel-dev-mainnet-daemon-config").unwrap();
    let toml: toml::Table = cm["data"]["config.toml"].as_str().unwrap().parse().unwrap();
    let table = &toml["Storage"]["Postgresql"]["db"];
    assert_eq!(table["URLEnv"].as_str(), Some(env.as_str()));
    assert_eq!(table["SchemaName"].as_str(), Some("lily"));
    assert_eq!(table["ApplicationName"].as_str(), Some("lily"));
}

fn http_get(url: &str, path: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn repo_server_serves_only_its_files_and_stops_on_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let src: ChartSource = format!("{}@0.2.0", fixture_chart_dir().display()).parse().unwrap();
    let repo = ChartRepo::serve(&helm, &[src], &tmp.path().join("repo")).await.unwrap();
    let url = repo.url().to_string();
    assert!(http_get(&url, "/index.yaml").contains("200"));
    assert!(http_get(&url, "/lily-0.2.0.tgz").contains("200"));
    for bad in ["/../repo/index.yaml", "/%2e%2e/etc/passwd", "/nope.tgz", "/", "/.staging"] {
        assert!(http_get(&url, bad).contains("404"), "{bad}");
    }
    drop(repo);
    // tiny_http closes its listener from its accept thread, shortly after the drop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(url.trim_start_matches("http://")).is_ok() {
        assert!(std::time::Instant::now() < deadline, "the repository server still listens after drop");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn unknown_version_lists_the_versions_that_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let repo = ChartRepo::serve(&helm, &default_sources(), &tmp.path().join("repo")).await.unwrap();
    let e = repo.version("9.9.9").unwrap_err().to_string();
    assert_eq!(e, "chart lily has no version 9.9.9 in the local repository; it has 0.0.1, 0.1.0, 0.2.0, 0.3.0");
    assert_eq!(repo.version("v0.2.0").unwrap().to_string(), "0.2.0");

    repo.add_to(&helm).await.unwrap();
    let opts = TemplateOpts { version: Some("9.9.9".into()), ..Default::default() };
    let e = format!("{:#}", helm.template("rel", &repo.chart_ref(), &opts).await.unwrap_err());
    assert!(e.starts_with("chart lily-e2e/lily has no version 9.9.9; the repository has 0.0.1, 0.1.0, 0.2.0, 0.3.0"), "{e}");
    assert!(e.contains("helm template rel lily-e2e/lily --version 9.9.9"), "{e}");
}

#[tokio::test]
async fn missing_chart_path_is_reported_with_the_accepted_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let missing = tmp.path().join("no-such-chart");
    let want = format!(
        "chart path {} does not exist; pass a chart directory, a .tgz, DIR@X.Y.Z, or https://REPO_URL#CHART[@X.Y.Z]",
        missing.display()
    );
    let src = ChartSource::parse(&format!("{}@0.2.0", missing.display())).unwrap();
    let e = ChartRepo::serve(&helm, std::slice::from_ref(&src), &tmp.path().join("repo")).await.unwrap_err();
    assert_eq!(e.to_string(), want);
    let e = snapshot::render(&helm, &RenderRequest::new(src)).await.unwrap_err();
    assert_eq!(e.to_string(), want);
    let tgz = ChartSource::parse(&format!("{}.tgz", missing.display())).unwrap();
    assert!(snapshot::render(&helm, &RenderRequest::new(tgz)).await.unwrap_err().to_string().contains("does not exist"));
}

fn broken_copy(tmp: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = tmp.join(name).join("lily");
    copy_dir(&fixture_chart_dir(), &dir);
    edit(&dir);
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn broken_charts_surface_helms_error_verbatim() {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());

    let bad_meta = broken_copy(tmp.path(), "meta", |d| {
        let f = d.join("Chart.yaml");
        let text = std::fs::read_to_string(&f).unwrap().replace("version: 0.3.0", "version: [broken");
        std::fs::write(f, text).unwrap();
    });
    let src = ChartSource::Dir { path: bad_meta.clone(), version: Some("0.2.0".parse().unwrap()) };
    let e = ChartRepo::serve(&helm, &[src], &tmp.path().join("repo1")).await.unwrap_err().to_string();
    assert!(e.starts_with(&format!("`helm package {} --version 0.2.0 -d ", bad_meta.display())), "{e}");
    assert!(e.contains("failed (exit status: 1):\nError: cannot load Chart.yaml: error converting YAML to JSON"), "{e}");

    let bad_template = broken_copy(tmp.path(), "tpl", |d| {
        let mut f = std::fs::OpenOptions::new().append(true).open(d.join("templates/configmap.yaml")).unwrap();
        writeln!(f, "{{{{ .Values.unclosed ").unwrap();
    });
    let e = snapshot::render(&helm, &RenderRequest::new(ChartSource::Dir { path: bad_template.clone(), version: None }))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("`helm template rel {} --namespace lily` failed (exit status: 1):\n", bad_template.display())), "{e}");
    assert!(e.contains("Error: parse error at (lily/templates/configmap.yaml:"), "{e}");
    assert!(e.contains("unclosed action"), "{e}");

    let e = helm.lint(&bad_template, &Values::default(), false).await.unwrap_err().to_string();
    assert!(e.contains("[ERROR] templates/: parse error"), "{e}");
}

#[tokio::test]
async fn a_repository_serves_one_chart_and_each_version_once() {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let lily: ChartSource = format!("{}@0.1.0", fixture_chart_dir().display()).parse().unwrap();
    let redis: ChartSource = fixture_chart_dir().join("charts/redis").display().to_string().parse().unwrap();
    let e = ChartRepo::serve(&helm, &[lily.clone(), redis], &tmp.path().join("r1")).await.unwrap_err().to_string();
    assert!(e.starts_with("mixed chart names: ") && e.contains("is chart lily but") && e.contains("is chart redis"), "{e}");

    let e = ChartRepo::serve(&helm, &[lily.clone(), lily.clone()], &tmp.path().join("r2")).await.unwrap_err().to_string();
    assert!(e.starts_with("chart version 0.1.0 is given twice"), "{e}");

    // A packaged chart keeps its own version; a directory without @ keeps Chart.yaml's.
    let tgz = helm.package(&fixture_chart_dir(), Some("0.1.0"), &tmp.path().join("pkg")).await.unwrap();
    let plain: ChartSource = fixture_chart_dir().display().to_string().parse().unwrap();
    let repo = ChartRepo::serve(&helm, &[ChartSource::Archive { path: tgz }, plain], &tmp.path().join("r3")).await.unwrap();
    let versions: Vec<String> = repo.versions().iter().map(ToString::to_string).collect();
    assert_eq!(versions, ["0.1.0", "0.3.0"]);
    assert_eq!(repo.previous().unwrap().to_string(), "0.1.0");
}

/// The driver never reads a user's helm setup: repositories added elsewhere are invisible.
#[tokio::test]
async fn drivers_have_separate_helm_homes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Helm::new(tmp.path().join("a")).unwrap();
    let b = Helm::new(tmp.path().join("b")).unwrap();
    let src: ChartSource = format!("{}@0.2.0", fixture_chart_dir().display()).parse().unwrap();
    let repo = ChartRepo::serve(&a, &[src], &tmp.path().join("repo")).await.unwrap();
    repo.add_to(&a).await.unwrap();
    let e = b.template("rel", &repo.chart_ref(), &TemplateOpts::default()).await.unwrap_err().to_string();
    assert!(e.contains("lily-e2e"), "{e}");
    assert!(a.template("rel", &repo.chart_ref(), &TemplateOpts::default()).await.is_ok());
    assert!(!b.home().join("config/repositories.yaml").exists());
}

/// Chart CI's upgrade base: a published release, pulled from its chart repository (here a
/// local one standing in for it), served beside the local candidate as one repository.
#[tokio::test]
async fn a_published_release_is_pulled_and_served_beside_the_candidate() {
    let tmp = tempfile::tempdir().unwrap();
    let helm = helm(tmp.path());
    let published =
        ChartRepo::serve(&helm, &[format!("{}@0.1.0", fixture_chart_dir().display()).parse().unwrap()], &tmp.path().join("published"))
            .await
            .unwrap();
    let remote: ChartSource = format!("{}#lily@0.1.0", published.url()).parse().unwrap();
    let candidate: ChartSource = format!("{}@0.2.0", fixture_chart_dir().display()).parse().unwrap();
    let served = ChartRepo::serve(&helm, &[remote, candidate], &tmp.path().join("served")).await.unwrap();
    let versions: Vec<String> = served.versions().iter().map(|v| v.to_string()).collect();
    assert_eq!(versions, ["0.1.0", "0.2.0"]);
    assert_eq!(served.previous().map(|v| v.to_string()).as_deref(), Some("0.1.0"));
    // A release the published repository does not have is helm's error, with its words.
    let missing: ChartSource = format!("{}#lily@9.9.9", published.url()).parse().unwrap();
    let e = ChartRepo::serve(&helm, &[missing], &tmp.path().join("none")).await.unwrap_err();
    let text = lily_e2e::error::chain(&e);
    assert!(text.contains("helm pull") && text.contains("9.9.9"), "{text}");
}
