//! PostgreSQL against a real server: the local provider (Debian's binaries, run as `nobody`
//! when the tests run as root), the documented Secret, and the database contract check.
//!
//! The Kubernetes half of the contract check needs the local control plane's tools; that
//! test skips, saying why, when they are not installed.

use std::error::Error as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use lily_e2e::postgres::contract::{self, ContractSummary, Expect, PodCheck, SecretRef};
use lily_e2e::postgres::local::Local;
use lily_e2e::postgres::secret::{self, StorageBinding};
use lily_e2e::postgres::{container, DbUrl, HostKind, Password, Postgres, PostgresProvider, PostgresSpec, SslMode};
use lily_e2e::run::{self, Run};

/// The whole chain of an error, Display and Debug, as a user (or a log) could see it.
fn everything(e: &lily_e2e::Error) -> String {
    let mut s = format!("{e}\n{e:?}");
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!("\n{c}\n{c:?}"));
        cur = c.source();
    }
    s
}

fn assert_hidden(password: &Password, text: &str) {
    let raw = password.expose();
    let encoded = percent_encoding::utf8_percent_encode(raw, lily_e2e::postgres::dsn::COMPONENT).to_string();
    assert!(!text.contains(raw), "the password appears in:\n{text}");
    assert!(!text.contains(&encoded), "the encoded password appears in:\n{text}");
}

fn source() -> SecretRef {
    SecretRef { namespace: "lily".into(), name: "lily-db".into(), key: "url".into() }
}

fn expect(ca: Option<&str>) -> Expect {
    Expect { schema: "lily".into(), application_name: "lily".into(), ca_pem: ca.map(str::to_string), timeout: Duration::from_secs(10) }
}

async fn start(run: &Run, tls: bool) -> Postgres {
    Local::new().start(&PostgresSpec { tls }, run).await.expect("the local postgresql starts")
}

fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_server_serves_the_contract_over_tls_and_tears_down_clean() {
    let run = Run::create(false).unwrap();
    let run_dir = run.dir().to_path_buf();
    let pg = start(&run, true).await;
    assert_eq!(pg.provider, "local");
    assert_eq!(pg.host(), "127.0.0.1");
    assert!(pg.version().starts_with(char::is_numeric), "{}", pg.version());

    // The server runs as `nobody` when we are root; its key is its own and private; the
    // superuser's password file is gone.
    let pids = run::processes_of(run.id());
    assert!(!pids.is_empty(), "the server's processes carry the run id");
    let data = run.dir().join("postgres/data");
    let key = std::fs::metadata(data.join("server.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid.as_raw();
        for p in &pids {
            if let Some(uid) = uid_of(*p) {
                assert_eq!(uid, nobody, "pid {p} runs as uid {uid}");
            }
        }
        assert_eq!(key.uid(), nobody);
        assert_eq!(std::fs::metadata(&data).unwrap().uid(), nobody);
    }
    assert!(!run.dir().join("postgres/pwfile").exists());

    // A scenario's own database, role and password; the Secret's URL parses back.
    let db = pg.create_database("scenario_a").await.unwrap();
    assert_eq!(db.user, "scenario_a_user");
    for c in lily_e2e::postgres::PASSWORD_SPECIALS {
        assert!(db.password.expose().contains(c));
    }
    let binding = StorageBinding::new("lily-db");
    let host = secret::pod_host("local", &pg).unwrap();
    let url = db.url_with_host(&host, SslMode::Require);
    let sec = binding.secret("lily", run.id(), &url);
    let text = String::from_utf8(sec.object().data.as_ref().unwrap()["url"].0.clone()).unwrap();
    assert!(text.starts_with("postgres://scenario_a_user:") && text.ends_with(&format!("@127.0.0.1:{}/scenario_a?sslmode=require", pg.port())));
    assert!(!text.contains(db.password.expose()), "the password is percent-encoded in the url");
    let back = DbUrl::parse(&text).unwrap();
    assert_eq!(back, url);
    assert_eq!(back.password.as_ref().unwrap(), &db.password);

    // The contract holds, twice (the step is idempotent), and the summary is redacted.
    let summary = contract::check_url(&source(), &text, &expect(None)).await.unwrap();
    assert_eq!(
        summary,
        ContractSummary {
            secret_name: "lily-db".into(),
            secret_key: "url".into(),
            env: None,
            user: "scenario_a_user".into(),
            database: "scenario_a".into(),
            host: HostKind::Loopback,
            schema: "lily".into(),
            sslmode: SslMode::Require,
            tls_in_use: true,
            application_name: "lily".into(),
        }
    );
    contract::check_url(&source(), &text, &expect(None)).await.unwrap();
    let shown = format!("{summary:?}\n{}", serde_json::to_string(&summary).unwrap());
    assert_hidden(&db.password, &shown);
    assert!(!shown.contains(&pg.port().to_string()), "no port in the summary: {shown}");
    assert_hidden(&db.password, &format!("{db:?}\n{url:?}\n{url}\n{sec:?}\n{pg:?}"));

    // The schema really is there, owned by the scenario's role.
    let admin_url = DbUrl { database: "scenario_a".into(), ..pg.superuser_url() };
    let admin = lily_e2e::postgres::tls::connect(&admin_url, None, None, Duration::from_secs(10)).await.unwrap();
    let owner: String = admin
        .query_one("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'lily'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "scenario_a_user");

    // verify-full and verify-ca with the run's CA; verify-full without it, or with another CA, fails.
    let ca = pg.ca_pem().unwrap().to_string();
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
        let u = db.url(mode).expose();
        let s = contract::check_url(&source(), &u, &expect(Some(&ca))).await.unwrap();
        assert_eq!(s.sslmode, mode);
        assert!(s.tls_in_use);
    }
    let other_ca = lily_e2e::pki::Ca::new("another").unwrap().cert_pem();
    let mut errors = Vec::new();
    for (what, u, ca, needle) in [
        ("verify-full without a CA", db.url(SslMode::VerifyFull).expose(), None, "needs the CA certificate"),
        ("verify-full with another CA", db.url(SslMode::VerifyFull).expose(), Some(other_ca.as_str()), "UnknownIssuer"),
        ("verify-ca with another CA", db.url(SslMode::VerifyCa).expose(), Some(other_ca.as_str()), "UnknownIssuer"),
    ] {
        let e = contract::check_url(&source(), &u, &expect(ca)).await.expect_err(what);
        let all = everything(&e);
        assert!(all.contains(needle), "{what}: {all}");
        errors.push(all);
    }

    // Bad input: each error names the Secret and key and what failed.
    let wrong_password = DbUrl::new(&db.user, Some(Password::new("wr@ng/p%ss:word")), "127.0.0.1", pg.port(), &db.name, SslMode::Require);
    let closed = DbUrl::new(&db.user, Some(db.password.clone()), "127.0.0.1", closed_port(), &db.name, SslMode::Require);
    let cases = [
        ("wrong password", wrong_password.expose(), "the password was refused"),
        ("unreachable host", closed.expose(), "cannot connect to database `scenario_a`"),
        ("sslmode=disable", db.url(SslMode::Disable).expose(), "the server accepts only TLS connections and sslmode=disable does not use TLS"),
        ("no such database", DbUrl { database: "nope".into(), ..url.clone() }.expose(), "cannot connect to database `nope`"),
        ("not a url", format!("{}{}", db.password.expose(), "garbage"), "is not a usable postgresql url"),
    ];
    for (what, u, needle) in cases {
        let e = contract::check_url(&source(), &u, &expect(None)).await.expect_err(what);
        let all = everything(&e);
        assert!(e.to_string().starts_with("secret lily/lily-db key `url`: "), "{what}: {e}");
        assert!(all.contains(needle), "{what}: {all}");
        errors.push(all);
    }
    assert!(errors[errors.len() - 5].contains("password authentication failed"), "{}", errors[errors.len() - 5]);
    assert!(errors[errors.len() - 4].to_lowercase().contains("connection refused"), "{}", errors[errors.len() - 4]);
    assert!(errors[errors.len() - 3].contains("no encryption"), "{}", errors[errors.len() - 3]);
    for e in &errors {
        assert_hidden(&db.password, e);
        assert!(!e.contains("wr@ng/p%ss:word") && !e.contains("wr%40ng"), "{e}");
    }

    // Neither the server's log nor anything in the run directory holds the password.
    let logs = pg.logs();
    assert_eq!(logs.len(), 1);
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(log.contains("connection authorized") || log.contains("connection received"), "{log}");
    assert_hidden(&db.password, &log);
    for entry in walk(&run_dir) {
        if let Ok(bytes) = std::fs::read(&entry) {
            assert_hidden(&db.password, &String::from_utf8_lossy(&bytes));
        }
    }

    // Teardown: no process of the run is left, and the run's directory goes with it.
    drop(admin);
    pg.teardown().await.unwrap();
    assert_eq!(run::processes_of(run.id()), Vec::<i32>::new());
    drop(run);
    assert!(!run_dir.exists());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_refuses_a_server_without_tls() {
    let run = Run::create(false).unwrap();
    let pg = start(&run, false).await;
    assert!(!pg.tls() && pg.ca_pem().is_none());
    let db = pg.create_database("plain").await.unwrap();

    let e = contract::check_url(&source(), &db.url(SslMode::Require).expose(), &expect(None)).await.unwrap_err();
    let all = everything(&e);
    assert!(e.to_string().starts_with("secret lily/lily-db key `url`: cannot connect to database `plain`"), "{e}");
    assert!(all.contains("TLS"), "{all}");
    assert_hidden(&db.password, &all);

    // Without TLS on both sides it connects, and says so.
    let s = contract::check_url(&source(), &db.url(SslMode::Disable).expose(), &expect(None)).await.unwrap();
    assert!(!s.tls_in_use);
    assert_eq!(s.sslmode, SslMode::Disable);

    pg.teardown().await.unwrap();
    assert!(run::processes_of(run.id()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_server_without_teardown_still_stops_it() {
    let run = Run::create(false).unwrap();
    let pg = start(&run, true).await;
    assert!(!run::processes_of(run.id()).is_empty());
    drop(pg);
    assert_eq!(run::processes_of(run.id()), Vec::<i32>::new());
}

#[tokio::test]
async fn container_provider_fails_fast_without_a_docker_engine() {
    if container::check_engine().is_ok() {
        eprintln!("skipping: a docker engine answers here, so the no-engine error cannot be checked");
        return;
    }
    let run = Run::create(false).unwrap();
    let t = Instant::now();
    let e = container::Container::from_env().unwrap().start(&PostgresSpec::default(), &run).await.unwrap_err();
    assert_eq!(e.to_string(), "no docker engine is reachable (DOCKER_HOST or /var/run/docker.sock); use --postgres local");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    let e = lily_e2e::postgres::provider("sideways").err().expect("an unknown provider is refused");
    assert!(e.to_string().contains("choose local or container"));
}

/// The Kubernetes half: the chart's pod, its Secret and ConfigMap in a real API server;
/// the check follows them to the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_check_follows_the_chart_pod_to_its_secret() {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::{Api, PostParams};
    use lily_e2e::cluster::{self, ClusterProvider, ClusterSpec};
    use lily_e2e::tools::Tools;

    let tools = Tools::new();
    for bin in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"] {
        if let Err(e) = tools.path(bin) {
            eprintln!("skipping the kubernetes contract test: {e}");
            return;
        }
    }
    let run = Run::create(false).unwrap();
    let spec = ClusterSpec { nodes: 1, zones: 1, ..Default::default() };
    let cluster = cluster::local::Local::new(tools).start(&spec, &run).await.expect("the local control plane starts");
    let pg = start(&run, true).await;
    let db = pg.create_database("scenario_k").await.unwrap();
    let client = cluster.client.clone();
    let ns = "default";

    let binding = StorageBinding { application_name: "lily-k".into(), ..StorageBinding::new("lily-db") };
    let url = db.url_with_host(&secret::pod_host(cluster.provider, &pg).unwrap(), SslMode::Require);
    binding.secret(ns, run.id(), &url).create(&client).await.unwrap();
    let config = format!(
        "[Storage]\n  [Storage.Postgresql]\n    [Storage.Postgresql.db]\n      SchemaName = \"lily\"\n      URLEnv = \"{}\"\n      ApplicationName = \"lily-k\"\n      PoolSize = 20\n",
        binding.env_name()
    );
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "lily-config", "labels": {run::RUN_LABEL: run.id().as_str()}},
        "data": {"config.toml": config}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns).create(&PostParams::default(), &cm).await.unwrap();
    let pod = |name: &str, secret: &str, key: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {run::RUN_LABEL: run.id().as_str()}},
            "spec": {
                "initContainers": [{
                    "name": "init-database", "image": "lily", "command": ["/bin/sh", "-c"],
                    "args": ["echo \"Checking for database readiness for db...\"\nLILY_DB=$LILY_STORAGE_POSTGRESQL_DB_URL lily migrate --schema \"lily\"\n"],
                    "env": [{"name": "LILY_STORAGE_POSTGRESQL_DB_URL", "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}]
                }],
                "containers": [{"name": "daemon", "image": "lily"}],
                "volumes": [{"name": "config-volume", "configMap": {"name": "lily-config"}}]
            }
        }))
        .unwrap()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for (name, secret, key) in [("lily-daemon-0", "lily-db", "url"), ("wrong-key", "lily-db", "uri"), ("no-secret", "absent", "url")] {
        pods.create(&PostParams::default(), &pod(name, secret, key)).await.unwrap();
    }

    let s = contract::check_pod(&client, ns, "lily-daemon-0", &PodCheck::default()).await.unwrap();
    assert_eq!(s.env.as_deref(), Some("LILY_STORAGE_POSTGRESQL_DB_URL"));
    assert_eq!((s.secret_name.as_str(), s.secret_key.as_str()), ("lily-db", "url"));
    assert_eq!(s.application_name, "lily-k", "read from the rendered config");
    assert!(s.tls_in_use);
    assert_eq!(s.host, HostKind::Loopback);

    let mut errors = Vec::new();
    for (pod_name, opts, needle) in [
        ("wrong-key", PodCheck::default(), "secret default/lily-db (named by env LILY_STORAGE_POSTGRESQL_DB_URL of `init-database` in pod default/wrong-key) has no key `uri` (it has: url)"),
        ("no-secret", PodCheck::default(), "secret default/absent (named by env LILY_STORAGE_POSTGRESQL_DB_URL of `init-database` in pod default/no-secret) does not exist"),
        ("missing-pod", PodCheck::default(), "pod default/missing-pod does not exist"),
        ("lily-daemon-0", PodCheck { storage: Some("other".into()), ..Default::default() }, "has no env LILY_STORAGE_POSTGRESQL_OTHER_URL"),
    ] {
        let e = contract::check_pod(&client, ns, pod_name, &opts).await.unwrap_err();
        assert!(e.to_string().contains(needle), "{pod_name}: {e}");
        errors.push(everything(&e));
    }
    for e in &errors {
        assert_hidden(&db.password, e);
    }

    pg.teardown().await.unwrap();
    cluster.teardown().await.unwrap();
    assert!(run::processes_of(run.id()).is_empty());
}
