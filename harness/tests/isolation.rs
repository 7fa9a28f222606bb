//! The local control plane is closed to the machine's other users: a Secret written through
//! the API cannot be read by another local user (`nobody`) from etcd's client endpoint nor
//! from the run directory's files, and etcd's data directory does not hold it in plain text.
//!
//! Runs as root (it starts a probe as `nobody`); needs the pinned tools. The probe is this
//! test binary itself, run again as `nobody` with [`PROBE_ENV`] set: it tries what another
//! user would try and prints what got through as JSON.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use libtest_mimic::{Arguments, Failed, Trial};
use lily_e2e::cluster::local::Local;
use lily_e2e::cluster::{ClusterProvider, ClusterSpec};
use lily_e2e::reap::processes_of;
use lily_e2e::run::Run;
use lily_e2e::tools::Tools;
use serde::{Deserialize, Serialize};

/// Set (to the probe's request, JSON) when this binary runs as the probe.
const PROBE_ENV: &str = "LILY_E2E_ISOLATION_PROBE";
/// The user the probe runs as.
const NOBODY: u32 = 65534;
const SECRET: &str = "isolation-marker";
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    if let Ok(req) = std::env::var(PROBE_ENV) {
        let req: ProbeRequest = serde_json::from_str(&req).expect("a probe request");
        println!("{}", serde_json::to_string(&probe(&req)).expect("findings encode"));
        return;
    }
    let args = Arguments::from_args();
    let root = nix::unistd::geteuid().is_root();
    let trial = Trial::test("another local user cannot read a secret from etcd, the run directory or etcd's data", move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
        rt.block_on(secret_stays_private())
    })
    .with_ignored_flag(!root);
    if !root {
        eprintln!("isolation: ignored, it must run as root (it starts a probe as uid {NOBODY})");
    }
    libtest_mimic::run(&args, vec![trial]).exit();
}

/// What the probe tries.
#[derive(Debug, Serialize, Deserialize)]
struct ProbeRequest {
    /// etcd's client URL, as etcd was given it (`--listen-client-urls`).
    etcd_url: String,
    /// The etcd key of the Secret.
    key: String,
    run_dir: PathBuf,
    /// Every file under the run directory (as root saw it).
    files: Vec<PathBuf>,
}

/// Whether an attempt got through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Outcome {
    /// Refused; how.
    Denied(String),
    /// Got through; what it got.
    Allowed(String),
}

impl Outcome {
    fn allowed(&self) -> bool {
        matches!(self, Outcome::Allowed(_))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Findings {
    etcd: Outcome,
    listing: Outcome,
    files: Vec<(PathBuf, Outcome)>,
}

/// Runs as `nobody`: asks etcd for the Secret without credentials, lists the run directory,
/// opens each file.
fn probe(req: &ProbeRequest) -> Findings {
    let etcd = etcd_range(&req.etcd_url, &req.key, None);
    let listing = match std::fs::read_dir(&req.run_dir) {
        Ok(rd) => Outcome::Allowed(format!("listed {} entries", rd.count())),
        Err(e) => denied(e),
    };
    let files = req
        .files
        .iter()
        .map(|f| {
            let o = match std::fs::read(f) {
                Ok(b) => Outcome::Allowed(format!("read {} bytes", b.len())),
                Err(e) => denied(e),
            };
            (f.clone(), o)
        })
        .collect();
    Findings { etcd, listing, files }
}

/// A refusal only if it is one: permission denied. Anything else (not found, say) is an
/// answer the test did not expect, reported as such.
fn denied(e: std::io::Error) -> Outcome {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        Outcome::Denied(e.to_string())
    } else {
        Outcome::Allowed(format!("not refused but {e}"))
    }
}

/// TLS credentials for etcd: the CA to trust, and a client certificate and key if any.
struct Tls {
    ca: Vec<u8>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

/// `POST /v3/kv/range` for `key` at etcd's `url` (`http(s)://host:port` or
/// `unix(s)://path`), in plain HTTP without `tls`, else over TLS. Allowed with the status
/// line (and whether the key's value came with it) if etcd answered, Denied with how it
/// refused otherwise.
fn etcd_range(url: &str, key: &str, tls: Option<&Tls>) -> Outcome {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let body = serde_json::json!({ "key": base64::engine::general_purpose::STANDARD.encode(key) }).to_string();
    let request = format!(
        "POST /v3/kv/range HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (stream, server_name): (Box<dyn ReadWrite>, String) = if scheme.starts_with("unix") {
        match std::os::unix::net::UnixStream::connect(rest) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let name = Path::new(rest).file_name().unwrap().to_string_lossy().into_owned();
                (Box::new(s), name)
            }
            Err(e) => return Outcome::Denied(format!("connect {rest}: {e}")),
        }
    } else {
        match std::net::TcpStream::connect(rest) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                (Box::new(s), rest.rsplit_once(':').unwrap().0.to_string())
            }
            Err(e) => return Outcome::Denied(format!("connect {rest}: {e}")),
        }
    };
    let answer = match tls {
        None => exchange(stream, &request),
        Some(t) => {
            let conn = rustls::ClientConnection::new(client_config(t), server_name.try_into().expect("a server name")).unwrap();
            exchange(Box::new(rustls::StreamOwned::new(conn, stream)), &request)
        }
    };
    match answer {
        Ok(text) if text.starts_with("HTTP/1.") => {
            let status = text.lines().next().unwrap_or_default();
            let value = if text.contains("\"kvs\"") { ", with the key's value" } else { "" };
            Outcome::Allowed(format!("{status} ({} bytes{value})", text.len()))
        }
        Ok(text) => Outcome::Denied(format!("no HTTP answer ({} bytes)", text.len())),
        Err(e) => Outcome::Denied(e.to_string()),
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn exchange(mut s: Box<dyn ReadWrite>, request: &str) -> std::io::Result<String> {
    s.write_all(request.as_bytes())?;
    s.flush()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn client_config(t: &Tls) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&t.ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match &t.client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert).map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_slice(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A process's command-line flag `--name=value`.
fn flag_of(pid: i32, name: &str) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let prefix = format!("--{name}=");
    cmdline.split(|b| *b == 0).filter_map(|a| std::str::from_utf8(a).ok()).find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

/// The pid of the run's process named `comm`.
fn pid_named(run: &Run, comm: &str) -> i32 {
    processes_of(run.id())
        .into_iter()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm))
        .unwrap_or_else(|| panic!("no {comm} process in run {}", run.id()))
}

/// Every regular file and socket under `dir` (as this process sees it).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if !t.is_symlink() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Runs this binary as `nobody` with `req`; returns what it found. The binary is copied
/// into a directory `nobody` can enter, wherever the build tree is.
fn probe_as_nobody(req: &ProbeRequest) -> Findings {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("probe");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(&exe)
        .env(PROBE_ENV, serde_json::to_string(req).unwrap())
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .output()
        .expect("the probe starts as nobody");
    assert!(out.status.success(), "the probe failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("the probe's findings: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

async fn secret_stays_private() -> Result<(), Failed> {
    let run = Run::create(false).unwrap();
    let spec = ClusterSpec { nodes: 1, zones: 1, ..Default::default() };
    let cluster = Local::new(Tools::new()).start(&spec, &run).await.expect("the local cluster starts");
    let result = check(&cluster, &run).await;
    cluster.teardown(lily_e2e::cluster::Teardown::Fast).await.unwrap();
    assert!(processes_of(run.id()).is_empty(), "a process of the run survived teardown");
    result
}

async fn check(cluster: &lily_e2e::cluster::Cluster, run: &Run) -> Result<(), Failed> {
    let marker = format!("lily-e2e-marker-{:016x}", rand::random::<u64>());
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), "default");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": SECRET},
        "stringData": {"password": marker},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let back = secrets.get(SECRET).await.unwrap();
    assert_eq!(back.data.unwrap()["password"].0, marker.as_bytes(), "the API reads the Secret back as written");

    let etcd = pid_named(run, "etcd");
    let apiserver = pid_named(run, "kube-apiserver");
    let etcd_url = flag_of(etcd, "listen-client-urls").expect("etcd's --listen-client-urls");
    let data_dir = PathBuf::from(flag_of(etcd, "data-dir").expect("etcd's --data-dir"));
    let key = format!("/registry/secrets/default/{SECRET}");
    let mut failures = Vec::new();

    // Root, with the API server's etcd credentials if it has any, reaches the Secret: the
    // endpoint and the request are right, so a refusal below is a refusal.
    let ca = flag_of(apiserver, "etcd-cafile").map(|f| std::fs::read(f).unwrap());
    let client = match (flag_of(apiserver, "etcd-certfile"), flag_of(apiserver, "etcd-keyfile")) {
        (Some(c), Some(k)) => Some((std::fs::read(c).unwrap(), std::fs::read(k).unwrap())),
        _ => None,
    };
    let tls = ca.map(|ca| Tls { ca, client });
    match etcd_range(&etcd_url, &key, tls.as_ref()) {
        Outcome::Allowed(text) if text.starts_with("HTTP/1.1 200") && text.ends_with("with the key's value)") => {}
        other => panic!("etcd did not answer root (with the API server's credentials, if any) with the Secret: {other:?}"),
    }

    // (a) etcd's client endpoint refuses nobody. Served over TLS, it also refuses root
    // without a client certificate; a Unix socket in the owner-only cluster directory is
    // closed to other users by the directory alone.
    let req =
        ProbeRequest { etcd_url: etcd_url.clone(), key: key.clone(), run_dir: run.dir().to_path_buf(), files: files_under(run.dir()) };
    let found = probe_as_nobody(&req);
    eprintln!(
        "as nobody: etcd {:?}; listing {:?}; {} of {} files opened",
        found.etcd,
        found.listing,
        found.files.iter().filter(|(_, o)| o.allowed()).count(),
        found.files.len()
    );
    if found.etcd.allowed() {
        failures.push(format!("nobody asked etcd ({etcd_url}) for the Secret and it answered: {:?}", found.etcd));
    }
    if let Some(t) = &tls {
        let plain = etcd_range(&etcd_url, &key, None);
        eprintln!("as root, plain HTTP: {plain:?}");
        if plain.allowed() {
            failures.push(format!("root asked etcd ({etcd_url}) in plain HTTP and it answered: {plain:?}"));
        }
        let no_cert = etcd_range(&etcd_url, &key, Some(&Tls { ca: t.ca.clone(), client: None }));
        eprintln!("as root, TLS without a client certificate: {no_cert:?}");
        if no_cert.allowed() {
            failures.push(format!("root asked etcd ({etcd_url}) over TLS without a client certificate and it answered: {no_cert:?}"));
        }
    }

    // (b) nobody can neither list the run directory nor open any file in it.
    if found.listing.allowed() {
        failures.push(format!("nobody listed the run directory {}: {:?}", run.dir().display(), found.listing));
    }
    let opened: Vec<String> = found.files.iter().filter(|(_, o)| o.allowed()).map(|(f, o)| format!("{} ({o:?})", f.display())).collect();
    if !opened.is_empty() {
        failures.push(format!("nobody opened {} of {} files in the run directory: {}", opened.len(), found.files.len(), opened.join(", ")));
    }

    // (c) etcd's data directory holds the Secret's key but not its value in plain text.
    let mut data = Vec::new();
    for f in files_under(&data_dir) {
        data.extend(std::fs::read(&f).unwrap_or_default());
    }
    let holds = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
    assert!(holds(key.as_bytes()), "etcd's data directory {} does not hold the Secret's key: the wrong place", data_dir.display());
    if holds(marker.as_bytes()) {
        failures.push(format!("etcd's data directory {} holds the Secret's value in plain text", data_dir.display()));
    }

    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n").into())
    }
}
