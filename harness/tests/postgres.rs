//! PostgreSQL against a real server, for each provider: `local` (Debian's binaries, run as
//! `nobody` when the tests run as root) and `container` (testcontainers on a Docker engine),
//! the documented Secret, and the database contract check.
//!
//! Which providers run: `LILY_E2E_TEST_POSTGRES`, a comma-separated list (default `local`).
//! A provider it does not name is skipped, saying so; one it names must work. `ci/test.sh`
//! sets `local,container` once `ci/docker.sh` has an engine answering and
//! `ci/postgres-image.sh` has built the image named by `LILY_E2E_POSTGRES_IMAGE`.
//!
//! The contract check's synthetic objects follow the real chart's shape: Lily containers
//! `init-datastore`, `init-sync` and `daemon`, each with `LILY_STORAGE_POSTGRESQL_DB_URL`
//! from the Secret, and the config map mounted as `config-volume` whose `config.toml` holds
//! the `[Storage.Postgresql.db]` table. The Kubernetes half of the check needs the local
//! control plane's tools; that test skips, saying why, when they are not installed.

use std::error::Error as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use lily_e2e::engine::Engine;
use lily_e2e::postgres::contract::{self, ContractSummary, Expect, PodCheck, SecretRef};
use lily_e2e::postgres::secret::StorageBinding;
use lily_e2e::postgres::{container, DbUrl, HostKind, Password, Postgres, PostgresError, PostgresProvider, PostgresSpec, SslMode};
use lily_e2e::reap;
use lily_e2e::run::{self, Run};
use rstest::rstest;

mod common;

/// The env var that names the providers under test.
const PROVIDERS_ENV: &str = "LILY_E2E_TEST_POSTGRES";

/// The provider, when [`PROVIDERS_ENV`] names it; otherwise `None`, after saying why.
fn under_test(name: &str) -> Option<Box<dyn PostgresProvider>> {
    common::install_settings();
    let wanted = std::env::var(PROVIDERS_ENV).unwrap_or_else(|_| "local".into());
    if !wanted.split(',').any(|w| w.trim() == name) {
        eprintln!(
            "skipping the {name} postgres provider: {PROVIDERS_ENV}={wanted} does not name it \
             (ci/test.sh sets local,container when ci/docker.sh has a docker engine answering)"
        );
        return None;
    }
    Some(lily_e2e::postgres::provider(name).expect("a known provider"))
}

/// The containers of a run in the Docker engine.
async fn containers_of(run: &Run) -> Vec<String> {
    common::install_settings();
    Engine::configured()
        .run_containers()
        .await
        .expect("the docker engine lists containers")
        .into_iter()
        .filter(|c| c.run == run.id().as_str())
        .map(|c| c.id)
        .collect()
}

/// Nothing of the run is left: no process, no container.
async fn assert_nothing_left(provider: &str, run: &Run) {
    assert_eq!(reap::processes_of(run.id()), Vec::<i32>::new());
    if provider == "container" {
        assert_eq!(containers_of(run).await, Vec::<String>::new());
    }
}

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
    Expect {
        storage: "db".into(),
        schema: "lily".into(),
        application_name: "lily".into(),
        ca_pem: ca.map(str::to_string),
        timeout: Duration::from_secs(10),
        pod_session: false,
    }
}

/// The (object, problem, fix) of a contract violation (a chart finding in a scenario).
fn violation(e: &lily_e2e::Error) -> (&str, &str, &str) {
    match e {
        lily_e2e::Error::Postgres(PostgresError::ContractViolation { object, problem, fix }) => (object, problem, fix),
        other => panic!("expected a contract violation, got {other:?}"),
    }
}

/// Whether schema `schema` exists in database `database` (asked as the superuser).
async fn schema_exists(pg: &Postgres, database: &str, schema: &str) -> bool {
    let url = DbUrl { database: database.into(), ..pg.superuser_url() };
    let admin = lily_e2e::postgres::tls::connect(&url, None, None, Duration::from_secs(10)).await.unwrap();
    admin.query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&schema]).await.unwrap().get(0)
}

async fn start(provider: &dyn PostgresProvider, run: &Run, tls: bool) -> Postgres {
    provider.start(&PostgresSpec { tls }, run).await.unwrap_or_else(|e| panic!("the {} postgresql starts: {e:?}", provider.name()))
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

#[rstest]
#[case::local("local")]
#[case::container("container")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_serves_the_contract_over_tls_and_tears_down_clean(#[case] provider: &str) {
    let Some(provider) = under_test(provider) else {
        return;
    };
    let run = Run::create(false).unwrap();
    let run_dir = run.dir().to_path_buf();
    let pg = start(provider.as_ref(), &run, true).await;
    assert_eq!(pg.provider, provider.name());
    assert_eq!(HostKind::of(pg.host()), HostKind::Loopback, "{}", pg.host());
    assert!(pg.version().starts_with(char::is_numeric), "{}", pg.version());
    if pg.provider == "local" {
        local_server_runs_unprivileged(&run);
    } else {
        assert_eq!(containers_of(&run).await.len(), 1, "one container carries the run label");
    }
    serves_the_contract(&pg, &run).await;

    // Neither the server's log nor anything in the run directory holds the password
    // (checked in serves_the_contract); teardown leaves no process or container of the run,
    // and the run's directory goes with it.
    pg.teardown().await.unwrap();
    assert_nothing_left(provider.name(), &run).await;
    drop(run);
    assert!(!run_dir.exists());
}

/// The local server runs as `nobody` when we are root; its key is its own and private; the
/// superuser's password file is gone.
fn local_server_runs_unprivileged(run: &Run) {
    let pids = reap::processes_of(run.id());
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
}

async fn serves_the_contract(pg: &Postgres, run: &Run) {
    let run_dir = run.dir().to_path_buf();
    // A scenario's own database, role and password; the Secret's URL parses back.
    let db = pg.create_database("scenario_a").await.unwrap();
    assert_eq!(db.user, "scenario_a_user");
    for c in lily_e2e::postgres::PASSWORD_SPECIALS {
        assert!(db.password.expose().contains(c));
    }
    let binding = StorageBinding::new("lily-db");
    let url = db.pod_url(SslMode::Require);
    let sec = binding.secret("lily", run.id(), &url);
    let text = String::from_utf8(sec.object().data.as_ref().unwrap()["url"].0.clone()).unwrap();
    assert!(
        text.starts_with("postgres://scenario_a_user:")
            && text.ends_with(&format!("@{}:{}/scenario_a?sslmode=require", pg.host(), pg.port()))
    );
    assert!(!text.contains(db.password.expose()), "the password is percent-encoded in the url");
    let back = DbUrl::parse(&text).unwrap();
    assert_eq!(back, url);
    assert_eq!(back.password.as_ref().unwrap(), &db.password);

    // The contract holds, twice (the step is idempotent), and the summary is redacted.
    let summary = contract::check_url(&source(), &text, &expect(None)).await.unwrap();
    assert_eq!(
        summary,
        ContractSummary {
            storage: "db".into(),
            config_map: None,
            env: None,
            containers: vec![],
            secret_name: "lily-db".into(),
            secret_key: "url".into(),
            user: "scenario_a_user".into(),
            database: "scenario_a".into(),
            host: HostKind::Loopback,
            schema: "lily".into(),
            sslmode: SslMode::Require,
            tls_in_use: true,
            application_name: "lily".into(),
            migration: "performed by the harness (lily migrate --schema lily: CREATE SCHEMA IF NOT EXISTS)".into(),
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
    let owner: String =
        admin.query_one("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'lily'", &[]).await.unwrap().get(0);
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

    // sslmode=disable is refused before any session: a finding on the Secret's key that
    // never quotes the url.
    let e = contract::check_url(&source(), &db.url(SslMode::Disable).expose(), &expect(None)).await.unwrap_err();
    let (object, problem, fix) = violation(&e);
    assert_eq!(object, "Secret lily/lily-db key `url`");
    assert_eq!(problem, "the url has sslmode=disable: Lily's session would not be encrypted");
    assert!(fix.contains("?sslmode=require"), "{fix}");
    errors.push(everything(&e));

    // Bad input: each error names the Secret and key and what failed.
    let wrong_password = DbUrl::new(&db.user, Some(Password::new("wr@ng/p%ss:word")), pg.host(), pg.port(), &db.name, SslMode::Require);
    let closed = DbUrl::new(&db.user, Some(db.password.clone()), "127.0.0.1", closed_port(), &db.name, SslMode::Require);
    let cases = [
        ("wrong password", wrong_password.expose(), "the password was refused"),
        ("unreachable host", closed.expose(), "cannot connect to database `scenario_a`"),
        ("no such database", DbUrl { database: "nope".into(), ..url.clone() }.expose(), "cannot connect to database `nope`"),
        ("not a url", format!("{}{}", db.password.expose(), "garbage"), "is not a usable postgresql url"),
    ];
    for (what, u, needle) in cases {
        let e = contract::check_url(&source(), &u, &expect(None)).await.expect_err(what);
        let all = everything(&e);
        assert!(e.to_string().starts_with("Secret lily/lily-db key `url`: "), "{what}: {e}");
        assert!(all.contains(needle), "{what}: {all}");
        errors.push(all);
    }
    assert!(errors[errors.len() - 4].contains("password authentication failed"), "{}", errors[errors.len() - 4]);
    assert!(errors[errors.len() - 3].to_lowercase().contains("connection refused"), "{}", errors[errors.len() - 3]);
    for e in &errors {
        assert_hidden(&db.password, e);
        assert!(!e.contains("wr@ng/p%ss:word") && !e.contains("wr%40ng"), "{e}");
    }

    // Neither the server's log nor anything in the run directory holds the password.
    for log in pg.current_logs().await {
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(log.contains("connection authorized") || log.contains("connection received"), "{log}");
        assert_hidden(&db.password, &log);
    }
    assert_eq!(pg.logs().len(), 1, "one log file, for artifacts");
    for entry in walk(&run_dir) {
        if let Ok(bytes) = std::fs::read(&entry) {
            assert_hidden(&db.password, &String::from_utf8_lossy(&bytes));
        }
    }
    drop(admin);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
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

#[rstest]
#[case::local("local")]
#[case::container("container")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_refuses_a_server_without_tls(#[case] provider: &str) {
    let Some(provider) = under_test(provider) else {
        return;
    };
    let run = Run::create(false).unwrap();
    let pg = start(provider.as_ref(), &run, false).await;
    assert!(!pg.tls() && pg.ca_pem().is_none());
    let db = pg.create_database("plain").await.unwrap();

    let e = contract::check_url(&source(), &db.url(SslMode::Require).expose(), &expect(None)).await.unwrap_err();
    let all = everything(&e);
    assert!(e.to_string().starts_with("Secret lily/lily-db key `url`: cannot connect to database `plain`"), "{e}");
    assert!(all.contains("TLS"), "{all}");
    assert_hidden(&db.password, &all);

    // sslmode=disable would connect to this server, but the check refuses it as a finding
    // before any session: the schema is not created.
    let e = contract::check_url(&source(), &db.url(SslMode::Disable).expose(), &expect(None)).await.unwrap_err();
    assert_eq!(violation(&e).0, "Secret lily/lily-db key `url`");
    assert!(violation(&e).1.contains("sslmode=disable"), "{e}");
    assert_hidden(&db.password, &everything(&e));
    assert!(!schema_exists(&pg, "plain", "lily").await, "the check connected with sslmode=disable");

    // sslmode=prefer falls back to a plain session here; the summary says so.
    let s = contract::check_url(&source(), &db.url(SslMode::Prefer).expose(), &expect(None)).await.unwrap();
    assert!(!s.tls_in_use);
    assert_eq!(s.sslmode, SslMode::Prefer);
    assert!(schema_exists(&pg, "plain", "lily").await);

    pg.teardown().await.unwrap();
    assert_nothing_left(provider.name(), &run).await;
}

/// A role that may connect but not create schemas (CREATE on the database revoked): the
/// check reports it as a finding on the storage entry's role, with PostgreSQL's SQLSTATE and
/// message, and never the password.
#[rstest]
#[case::local("local")]
#[case::container("container")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_cannot_create_the_schema_is_a_finding(#[case] provider: &str) {
    let Some(provider) = under_test(provider) else {
        return;
    };
    let run = Run::create(false).unwrap();
    let pg = start(provider.as_ref(), &run, true).await;
    let db = pg.create_database("nocreate").await.unwrap();
    let admin = pg.superuser_client().await.unwrap();
    admin.batch_execute("REVOKE CREATE ON DATABASE nocreate FROM nocreate_user").await.unwrap();

    let e = contract::check_url(&source(), &db.url(SslMode::Require).expose(), &expect(None)).await.unwrap_err();
    let (object, problem, fix) = violation(&e);
    assert_eq!(object, "storage entry `db` (role `nocreate_user` of Secret lily/lily-db key `url`)");
    assert_eq!(
        problem,
        "the role cannot create schema `lily` in database `nocreate`: permission denied for database nocreate (SQLSTATE 42501)"
    );
    assert!(fix.starts_with("grant the role CREATE on database `nocreate`"), "{fix}");
    assert_hidden(&db.password, &everything(&e));
    assert!(!schema_exists(&pg, "nocreate", "lily").await);

    // Given CREATE back, the same url passes.
    admin.batch_execute("GRANT CREATE ON DATABASE nocreate TO nocreate_user").await.unwrap();
    let s = contract::check_url(&source(), &db.url(SslMode::Require).expose(), &expect(None)).await.unwrap();
    assert!(s.tls_in_use);
    assert!(schema_exists(&pg, "nocreate", "lily").await);
    drop(admin);
    pg.teardown().await.unwrap();
    assert_nothing_left(provider.name(), &run).await;
}

/// Each scenario's role reaches its own database only: CONNECT to another scenario's is
/// refused with "permission denied".
#[rstest]
#[case::local("local")]
#[case::container("container")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenarios_role_connects_to_its_own_database_only(#[case] provider: &str) {
    let Some(provider) = under_test(provider) else {
        return;
    };
    let run = Run::create(false).unwrap();
    let pg = start(provider.as_ref(), &run, true).await;
    let a = pg.create_database("isolated_a").await.unwrap();
    let b = pg.create_database("isolated_b").await.unwrap();
    let connect = |url: DbUrl| async move { lily_e2e::postgres::tls::connect(&url, None, None, Duration::from_secs(10)).await };

    let own = connect(a.url(SslMode::Require)).await.unwrap_or_else(|e| panic!("a's role connects to a: {}", e.summary()));
    let db: String = own.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    assert_eq!(db, "isolated_a");
    for (who, to) in [(&a, &b), (&b, &a)] {
        let url = DbUrl { database: to.name.clone(), ..who.url(SslMode::Require) };
        let e = connect(url).await.err().unwrap_or_else(|| panic!("{}'s role connected to {}", who.name, to.name));
        let msg = e.summary();
        assert!(msg.contains(&format!("permission denied for database \"{}\"", to.name)), "{msg}");
        assert_hidden(&who.password, &msg);
    }
    drop(own);
    pg.teardown().await.unwrap();
    assert_nothing_left(provider.name(), &run).await;
}

#[rstest]
#[case::local("local")]
#[case::container("container")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_server_without_teardown_still_stops_it(#[case] provider: &str) {
    let Some(provider) = under_test(provider) else {
        return;
    };
    let run = Run::create(false).unwrap();
    let pg = start(provider.as_ref(), &run, true).await;
    if provider.name() == "local" {
        assert!(!reap::processes_of(run.id()).is_empty());
    } else {
        assert_eq!(containers_of(&run).await.len(), 1);
    }
    drop(pg);
    assert_nothing_left(provider.name(), &run).await;
}

/// `lily-e2e clean` leaves the container of a run whose owner is alive alone (here: this
/// test process), whatever registry it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_leaves_a_live_runs_container_alone() {
    let Some(provider) = under_test("container") else {
        return;
    };
    let run = Run::create(false).unwrap();
    let pg = start(provider.as_ref(), &run, true).await;
    let ids = containers_of(&run).await;
    assert_eq!(ids.len(), 1);
    let other_registry = tempfile::tempdir().unwrap();
    common::clean(other_registry.path()).await;
    assert_eq!(containers_of(&run).await, ids, "clean removed a live run's container");
    pg.teardown().await.unwrap();
    assert_nothing_left("container", &run).await;
}

/// The image the container provider uses starts like the official one: testcontainers'
/// Postgres module, with only its name and tag overridden, waits for it with its own
/// readiness conditions, and the official environment variables are honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_image_starts_like_the_official_image() {
    use testcontainers::core::IntoContainerPort;
    use testcontainers::runners::AsyncRunner;
    use testcontainers::ImageExt;
    use testcontainers_modules::postgres::Postgres as Module;

    if under_test("container").is_none() {
        return;
    }
    let c = container::Container::configured().unwrap();
    let run = Run::create(false).unwrap();
    let node = Module::default()
        .with_user("lily")
        .with_password("not-a-secret")
        .with_db_name("chain")
        .with_name(&c.image)
        .with_tag(&c.tag)
        .with_label(run::RUN_LABEL, run.id().as_str())
        .with_startup_timeout(Duration::from_secs(60))
        .start()
        .await
        .unwrap_or_else(|e| panic!("{}:{} starts with the module's defaults: {e:?}", c.image, c.tag));
    let port = node.get_host_port_ipv4(5432.tcp()).await.unwrap();
    let url = DbUrl::new("lily", Some(Password::new("not-a-secret")), "127.0.0.1", port, "chain", SslMode::Require);
    let client = lily_e2e::postgres::tls::connect(&url, None, None, Duration::from_secs(10)).await.expect("connects over tls");
    let row = client.query_one("SELECT current_user::text, current_database()::text, current_setting('ssl')", &[]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2)), ("lily".into(), "chain".into(), "on".into()));
    let fsync: String = client.query_one("SHOW fsync", &[]).await.unwrap().get(0);
    assert_eq!(fsync, "off", "the module's `-c fsync=off` reaches the server");
    node.rm().await.unwrap();
    assert_nothing_left("container", &run).await;
}

#[tokio::test]
async fn container_provider_fails_fast_without_a_docker_engine() {
    let dir = tempfile::tempdir().unwrap();
    let provider = container::Container { engine: Engine::Unix(dir.path().join("docker.sock")), ..Default::default() };
    let run = Run::create(false).unwrap();
    let t = Instant::now();
    let e = provider.start(&PostgresSpec::default(), &run).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "no docker engine is reachable (DOCKER_HOST or /var/run/docker.sock); start one with ci/docker.sh, or use --postgres local"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    let e = lily_e2e::postgres::provider("sideways").err().expect("an unknown provider is refused");
    assert!(e.to_string().contains("choose local or container"));
}

/// The Kubernetes half: the chart's pod, its Secret and ConfigMap in a real API server;
/// the check follows them to the database.
#[rstest]
#[case::local("local")]
#[case::container("container")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_check_follows_the_chart_pod_to_its_secret(#[case] provider: &str) {
    let Some(provider) = under_test(provider) else {
        return;
    };
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
    let pg = start(provider.as_ref(), &run, true).await;
    let db = pg.create_database("scenario_k").await.unwrap();
    let client = cluster.client.clone();
    let ns = "default";

    let binding = StorageBinding { application_name: "lily-k".into(), ..StorageBinding::new("lily-db") };
    let url = db.pod_url(SslMode::Require);
    binding.secret(ns, run.id(), &url).create(&client).await.unwrap();
    let plain = StorageBinding { secret_name: "lily-db-plain".into(), ..binding.clone() };
    plain.secret(ns, run.id(), &db.pod_url(SslMode::Disable)).create(&client).await.unwrap();

    // The instance's config map, as the chart renders it for storage entry `db`.
    let env = binding.env_name();
    let config = format!(
        "[API]\n  ListenAddress = \"/ip4/0.0.0.0/tcp/1234/http\"\n[Storage]\n  [Storage.Postgresql]\n    [Storage.Postgresql.db]\n      SchemaName = \"lily\"\n      URLEnv = \"{env}\"\n      ApplicationName = \"lily-k\"\n      PoolSize = 20\n      AllowUpsert = false\n"
    );
    let config_map = lily_e2e::contract::config_map_name("lily-rel-dev-mainnet", "daemon");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": config_map, "labels": {run::RUN_LABEL: run.id().as_str()}},
        "data": {"config.toml": config}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns).create(&PostParams::default(), &cm).await.unwrap();

    // The chart's pod: every Lily container takes the env from the Secret and mounts the
    // config; `lacking` names containers that do not get the env.
    let pod = |name: &str, secret: &str, key: &str, lacking: &[&str]| -> Pod {
        let container = |c: &str| {
            let mut envs = vec![serde_json::json!({"name": "LILY_CONFIG", "value": "/var/lib/lily/config.toml"})];
            if !lacking.contains(&c) {
                envs.push(serde_json::json!({"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}));
            }
            serde_json::json!({
                "name": c, "image": "filecoin/lily", "env": envs,
                "volumeMounts": [{"name": "config-volume", "mountPath": "/var/lib/lily/config.toml", "subPath": "config.toml", "readOnly": true}]
            })
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {run::RUN_LABEL: run.id().as_str()}},
            "spec": {
                "initContainers": [container("init-datastore"), container("init-sync")],
                "containers": [container("daemon")],
                "volumes": [
                    {"name": "config-volume", "configMap": {"name": config_map, "items": [{"key": "config.toml", "path": "config.toml"}]}},
                    {"name": "repo-volume", "emptyDir": {}}
                ]
            }
        }))
        .unwrap()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for (name, secret, key, lacking) in [
        ("lily-rel-dev-mainnet-daemon-0", "lily-db", "url", &[][..]),
        ("wrong-key", "lily-db", "uri", &[]),
        ("no-secret", "absent", "url", &[]),
        ("plain", "lily-db-plain", "url", &[]),
        ("daemon-lacks", "lily-db", "url", &["daemon"]),
    ] {
        pods.create(&PostParams::default(), &pod(name, secret, key, lacking)).await.unwrap();
    }

    // The happy path: the session shows under the table's ApplicationName, over TLS, and the
    // schema exists.
    let s = contract::check_pod(&client, ns, "lily-rel-dev-mainnet-daemon-0", &PodCheck::default()).await.unwrap();
    assert_eq!(s.env.as_deref(), Some(env.as_str()));
    assert_eq!(s.config_map.as_deref(), Some(config_map.as_str()));
    assert_eq!(s.containers, ["init-datastore", "init-sync", "daemon"]);
    assert_eq!((s.secret_name.as_str(), s.secret_key.as_str()), ("lily-db", "url"));
    assert_eq!(s.application_name, "lily-k", "seen in pg_stat_activity under the table's ApplicationName");
    assert!(s.tls_in_use);
    assert_eq!((s.storage.as_str(), s.schema.as_str()), ("db", "lily"));
    assert_eq!(s.migration, "performed by the harness (lily migrate --schema lily: CREATE SCHEMA IF NOT EXISTS)");
    assert_eq!(s.host, HostKind::Loopback);
    assert!(schema_exists(&pg, "scenario_k", "lily").await);
    let named = PodCheck { storage: Some("db".into()), application_name: Some("lily-k".into()), ..Default::default() };
    assert_eq!(contract::check_pod(&client, ns, "lily-rel-dev-mainnet-daemon-0", &named).await.unwrap(), s);

    let table = format!("ConfigMap default/{config_map} config.toml [Storage.Postgresql.db]");
    let mut errors = Vec::new();
    for (pod_name, opts, object, problem) in [
        ("wrong-key", PodCheck::default(), "Secret default/lily-db key `uri`".to_string(), "is missing (the Secret has: url)".to_string()),
        (
            "no-secret",
            PodCheck::default(),
            "Secret default/absent".into(),
            format!("does not exist (env {env} of pod default/no-secret takes the storage url from it)"),
        ),
        (
            "plain",
            PodCheck::default(),
            "Secret default/lily-db-plain key `url`".into(),
            "the url has sslmode=disable: Lily's session would not be encrypted".into(),
        ),
        (
            "daemon-lacks",
            PodCheck::default(),
            "pod default/daemon-lacks container daemon".into(),
            format!("lacks env {env}, the URLEnv of [Storage.Postgresql.db] in ConfigMap default/{config_map}"),
        ),
        (
            "lily-rel-dev-mainnet-daemon-0",
            PodCheck { storage: Some("other".into()), ..Default::default() },
            format!("ConfigMap default/{config_map} config.toml"),
            "has no [Storage.Postgresql.other] table (it has: db)".into(),
        ),
        (
            "lily-rel-dev-mainnet-daemon-0",
            PodCheck { application_name: Some("lily".into()), ..Default::default() },
            table.clone(),
            "ApplicationName is `lily-k`, the storage entry's applicationName is `lily`".into(),
        ),
    ] {
        let e = contract::check_pod(&client, ns, pod_name, &opts).await.unwrap_err();
        let (o, p, fix) = violation(&e);
        assert_eq!((o, p), (object.as_str(), problem.as_str()), "{pod_name}");
        assert!(!fix.is_empty(), "{pod_name}");
        errors.push(everything(&e));
    }
    let e = contract::check_pod(&client, ns, "missing-pod", &PodCheck::default()).await.unwrap_err();
    assert!(matches!(&e, lily_e2e::Error::Postgres(PostgresError::Contract(m)) if m == "pod default/missing-pod does not exist"), "{e:?}");
    for e in &errors {
        assert_hidden(&db.password, e);
    }

    pg.teardown().await.unwrap();
    cluster.teardown(lily_e2e::cluster::Teardown::Fast).await.unwrap();
    assert!(reap::processes_of(run.id()).is_empty());
}

/// Starts `lily-e2e run install --postgres container --keep` with its own run registry;
/// returns the child once the run is kept, with its run id and its container's id.
async fn kept_container_run(runs: &std::path::Path) -> Option<(tokio::process::Child, run::RunId, String)> {
    under_test("container")?;
    if let Err(e) = lily_e2e::tools::Tools::new().path("kube-apiserver") {
        eprintln!("skipping: {e}");
        return None;
    }
    let (child, id) =
        common::spawn_until(&["run", "install", "--postgres", "container", "--keep"], runs, "kept; press Ctrl-C", CHILD_TIMEOUT).await;
    let mine = run_containers_of(&id).await;
    assert_eq!(mine.len(), 1, "the kept run's container");
    Some((child, id, mine[0].clone()))
}

const CHILD_TIMEOUT: Duration = Duration::from_secs(180);

async fn run_containers_of(id: &run::RunId) -> Vec<String> {
    common::install_settings();
    Engine::configured().run_containers().await.unwrap().into_iter().filter(|c| c.run == id.as_str()).map(|c| c.id).collect()
}

/// Ctrl-C to a kept run (`lily-e2e run install --postgres container --keep`) removes the
/// PostgreSQL container with everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_to_a_kept_run_removes_its_postgres_container() {
    let runs = tempfile::tempdir().unwrap();
    let Some((mut child, id, _)) = kept_container_run(runs.path()).await else { return };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(CHILD_TIMEOUT, child.wait()).await.expect("the harness exits after SIGINT").unwrap();
    assert!(status.code().is_some(), "{status:?}");
    assert_eq!(run_containers_of(&id).await, Vec::<String>::new(), "the container survived SIGINT");
    assert!(reap::processes_of(&id).is_empty(), "a process survived SIGINT");
}

/// After SIGKILL (no teardown at all), `lily-e2e clean` finds the container by its labels
/// (run id, dead owner) and removes it with the rest of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_clean_removes_the_postgres_container() {
    let runs = tempfile::tempdir().unwrap();
    let Some((mut child, id, container)) = kept_container_run(runs.path()).await else { return };
    child.kill().await.unwrap();
    let _ = child.wait().await;
    assert_eq!(run_containers_of(&id).await, vec![container.clone()], "the container outlives a SIGKILLed harness");
    let text = common::clean(runs.path()).await;
    assert!(text.contains(&format!("{id}: stopped")) && text.contains("1 container(s)"), "{text}");
    assert_eq!(run_containers_of(&id).await, Vec::<String>::new(), "clean left the container");
    assert!(reap::processes_of(&id).is_empty(), "clean left processes");
}

/// An image the engine does not have and cannot pull is bad input: the error says how to do
/// without a registry, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_says_what_to_do_and_leaves_nothing() {
    if under_test("container").is_none() {
        return;
    }
    let run = Run::create(false).unwrap();
    let provider = container::Container { image: "lily-e2e/not-there".into(), tag: "0".into(), ..Default::default() };
    let e = provider.start(&PostgresSpec::default(), &run).await.unwrap_err();
    assert!(e.to_string().contains("lily-e2e/not-there:0 is not in the engine and cannot be pulled"), "{e}");
    assert!(e.to_string().contains("ci/postgres-image.sh"), "{e}");
    assert_nothing_left("container", &run).await;
}
