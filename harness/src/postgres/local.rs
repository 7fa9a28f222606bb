//! The embedded default: Debian's PostgreSQL binaries as a supervised child on loopback.
//!
//! `initdb` makes a cluster in `<run dir>/postgres/data`; the server listens on
//! 127.0.0.1 only (no Unix socket), on a free port, with password authentication
//! (scram-sha-256) over TLS only: its certificate is issued per run by a [`pki::Ca`] for
//! 127.0.0.1 and localhost, and pg_hba.conf rejects every connection without TLS, so
//! `sslmode=require` is honoured and `sslmode=disable` is refused.
//!
//! PostgreSQL refuses to run as root: when the harness is root, initdb and the server run
//! as `nobody`, which then owns the data directory and the key.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use nix::sys::signal::Signal;

use super::{dsn::DbUrl, tls, Endpoint, Password, Postgres, PostgresProvider, PostgresSpec, Running};
use super::{PostgresError, HARNESS_APPLICATION_NAME, START_TIMEOUT};
use crate::error::{Error, Result};
use crate::fsutil::write_private;
use crate::pki::{self, Usage};
use crate::process::{ChildSpec, ProcessError, Supervised};
use crate::run::{Run, RUN_ENV};
use crate::wait::WaitError;

/// Where Debian installs PostgreSQL: `<root>/<version>/bin`.
pub const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// Overrides the binary directory (one holding `initdb` and `postgres`).
pub const BIN_ENV: &str = "LILY_E2E_POSTGRES_BIN";
/// The user the server runs as when the harness is root.
pub const UNPRIVILEGED_USER: &str = "nobody";

const SUPERUSER: &str = "postgres";
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const PORT_ATTEMPTS: usize = 3;

/// The local provider.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The directory holding `initdb` and `postgres`; `None` finds the newest installed.
    pub bin_dir: Option<PathBuf>,
}

impl Local {
    pub fn new() -> Self {
        Local { bin_dir: crate::settings::get().postgres_bin.clone() }
    }

    pub fn with_bin_dir(dir: impl Into<PathBuf>) -> Self {
        Local { bin_dir: Some(dir.into()) }
    }

    /// The binary directory to use and its major version.
    pub fn binaries(&self) -> Result<(PathBuf, String)> {
        match &self.bin_dir {
            Some(d) => {
                if !(d.join("initdb").is_file() && d.join("postgres").is_file()) {
                    return Err(PostgresError::NoBinariesIn { dir: d.clone() }.into());
                }
                let v = d.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                Ok((d.clone(), v))
            }
            None => newest_installed(Path::new(DEBIAN_ROOT)),
        }
    }
}

/// The newest `<root>/<version>/bin` that holds `initdb` and `postgres`.
pub fn newest_installed(root: &Path) -> Result<(PathBuf, String)> {
    let missing = || Error::from(PostgresError::NotInstalled { root: root.to_path_buf() });
    let entries = std::fs::read_dir(root).map_err(|_| missing())?;
    let mut found: Vec<(Vec<u32>, String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key: Vec<u32> = name.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((key, name, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, v, b)| (b, v)).ok_or_else(missing)
}

/// `Some((uid, gid))` of [`UNPRIVILEGED_USER`] when the harness runs as root.
fn unprivileged() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(UNPRIVILEGED_USER)
        .map_err(|e| Error::Tool { what: format!("cannot look up user `{UNPRIVILEGED_USER}`"), source: Some(Box::new(e)) })?
        .ok_or(PostgresError::NoUnprivilegedUser)?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(path, Some(uid.into()), Some(gid.into()))
            .map_err(|e| Error::Io { what: format!("give {} to user `{UNPRIVILEGED_USER}`", path.display()), source: e.into() })?;
    }
    Ok(())
}

fn write_owned(path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    write_private(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(Error::io(format!("chmod {}", path.display())))?;
    chown(path, owner)
}

impl PostgresProvider for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start<'a>(&'a self, spec: &'a PostgresSpec, run: &'a Run) -> BoxFuture<'a, Result<Postgres>> {
        Box::pin(async move {
            let (bin, major) = self.binaries()?;
            let owner = unprivileged()?;
            if let Some((_, gid)) = owner {
                // The server runs as that user: it must pass through the private run directory.
                run.let_group_through(gid)?;
            }
            let dir = run.subdir("postgres")?;
            let data = dir.join("data");
            std::fs::create_dir_all(&data).map_err(Error::io(format!("create {}", data.display())))?;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
                .map_err(Error::io(format!("chmod {}", data.display())))?;
            chown(&data, owner)?;

            let password = Password::generate();
            initdb(&bin, &dir, &data, &password, owner, run).await?;

            let ca_pem = if spec.tls {
                let ca = pki::Ca::new("lily-e2e-postgres-ca")?;
                let pair = ca.issue("lily-e2e-postgres", &[], &["127.0.0.1", "localhost"], Usage::Server)?;
                write_owned(&data.join("server.crt"), pair.cert_pem.as_bytes(), 0o644, owner)?;
                write_owned(&data.join("server.key"), pair.key_pem.as_bytes(), 0o600, owner)?;
                Some(ca.cert_pem())
            } else {
                None
            };
            write_owned(&data.join("pg_hba.conf"), pg_hba(spec.tls).as_bytes(), 0o600, owner)?;
            append_conf(&data.join("postgresql.conf"), &server_conf(spec.tls))?;

            let mut last_err = None;
            for _ in 0..PORT_ATTEMPTS {
                // Held until just before the server binds it (no other bind(0) in this
                // process is handed it meanwhile); a loss in the short window left is retried.
                let mut reserved = crate::cluster::ports::Reservation::new();
                let port = reserved.take(None, "postgresql")?;
                let child = ChildSpec::new("postgres", bin.join("postgres"))
                    .args([OsString::from("-D"), data.clone().into(), "-p".into(), port.to_string().into()])
                    .env("LC_ALL", "C")
                    .stop_signal(Signal::SIGINT);
                let mut child = ChildSpec { cwd: Some(data.clone()), ..child };
                if let Some((uid, gid)) = owner {
                    child = child.user(uid, gid);
                }
                let logs = run.subdir("logs")?;
                reserved.release("postgresql");
                let mut server = Supervised::spawn(child, run.id(), &logs)?;
                let endpoint = Endpoint {
                    host: "127.0.0.1".into(),
                    port,
                    tls: spec.tls,
                    ca_pem: ca_pem.clone(),
                    superuser: SUPERUSER.into(),
                    superuser_password: password.clone(),
                    version: major.clone(),
                    pod_address: None,
                };
                match ready(&mut server, &endpoint, START_TIMEOUT).await {
                    Ok(version) => {
                        let endpoint = Endpoint { version, ..endpoint };
                        tracing::debug!(port, pid = server.pid(), "postgresql is ready");
                        return Ok(Postgres::new("local", endpoint, Box::new(LocalServer { server })));
                    }
                    Err(Error::Process(ProcessError::Exited { tail, .. }))
                        if tail.contains("could not bind") || tail.contains("already in use") =>
                    {
                        // Someone took the port between our probe and the server's bind.
                        last_err = Some(PostgresError::PortBusy { port });
                        server.terminate().await?;
                    }
                    Err(e) => {
                        server.terminate().await?;
                        return Err(e);
                    }
                }
            }
            Err(last_err.unwrap_or(PostgresError::DidNotStart).into())
        })
    }
}

/// pg_hba.conf: passwords (scram-sha-256) over TCP on loopback; without TLS refused when
/// TLS is on. No Unix socket lines: the server has none.
pub fn pg_hba(tls: bool) -> String {
    let mut s = String::from("# written by lily-e2e\n# TYPE     DATABASE USER ADDRESS      METHOD\n");
    if tls {
        s.push_str("hostssl    all      all  127.0.0.1/32 scram-sha-256\n");
        s.push_str("hostssl    all      all  ::1/128      scram-sha-256\n");
        s.push_str("hostnossl  all      all  0.0.0.0/0    reject\n");
        s.push_str("hostnossl  all      all  ::/0         reject\n");
    } else {
        s.push_str("host       all      all  127.0.0.1/32 scram-sha-256\n");
        s.push_str("host       all      all  ::1/128      scram-sha-256\n");
    }
    s
}

/// The settings appended to postgresql.conf (the port is on the command line).
pub fn server_conf(tls: bool) -> String {
    let mut s = String::from(
        "\n# lily-e2e\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = ''\n\
         password_encryption = 'scram-sha-256'\n\
         max_connections = 100\n\
         shared_buffers = '32MB'\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         log_destination = 'stderr'\n\
         logging_collector = off\n\
         log_connections = on\n",
    );
    if tls {
        s.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    } else {
        s.push_str("ssl = off\n");
    }
    s
}

fn append_conf(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).map_err(Error::io(format!("open {}", path.display())))?;
    f.write_all(text.as_bytes()).map_err(Error::io(format!("write {}", path.display())))
}

/// Runs initdb (as `owner`), the superuser's password given in a file that is removed
/// afterwards whatever happens.
async fn initdb(bin: &Path, dir: &Path, data: &Path, password: &Password, owner: Option<(u32, u32)>, run: &Run) -> Result<()> {
    let pwfile = dir.join("pwfile");
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _remove = Remove(&pwfile);
    write_owned(&pwfile, password.expose().as_bytes(), 0o600, owner)?;
    let args: Vec<OsString> = vec![
        "-D".into(),
        data.into(),
        "-U".into(),
        SUPERUSER.into(),
        format!("--pwfile={}", pwfile.display()).into(),
        "--auth=scram-sha-256".into(),
        "-E".into(),
        "UTF8".into(),
        "--no-locale".into(),
        "--no-sync".into(),
        "--no-instructions".into(),
    ];
    let out = run_as(&bin.join("initdb"), &args, owner, dir, run, INITDB_TIMEOUT)
        .await
        .map_err(|e| Error::Tool { what: format!("cannot run {}", bin.join("initdb").display()), source: Some(Box::new(e)) })?;
    if !out.status.success() {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(Error::Tool {
            what: format!("initdb failed ({}) for {}:\n{}", out.status, data.display(), tail.join("\n")),
            source: None,
        });
    }
    Ok(())
}

/// Like [`crate::process::run_command`], but as another user: its own process group,
/// killed whole on timeout or cancellation, the run id in its environment.
pub(crate) async fn run_as(
    program: &Path,
    args: &[OsString],
    user: Option<(u32, u32)>,
    cwd: &Path,
    run: &Run,
    timeout: Duration,
) -> std::io::Result<std::process::Output> {
    let env = [(OsString::from(RUN_ENV), OsString::from(run.id().as_str())), (OsString::from("LC_ALL"), OsString::from("C"))];
    crate::process::run_command_as(program, args, &env, Some(cwd), user, timeout).await
}

/// Readiness: a real session as the superuser (over TLS when TLS is on), polled every
/// 100 ms under a deadline and raced against the server exiting. Returns the server's
/// version.
async fn ready(server: &mut Supervised, endpoint: &Endpoint, timeout: Duration) -> Result<String> {
    let mode = if endpoint.tls { super::SslMode::Require } else { super::SslMode::Disable };
    let url = DbUrl::new(&endpoint.superuser, Some(endpoint.superuser_password.clone()), &endpoint.host, endpoint.port, "postgres", mode);
    probe_until_ready(&url, endpoint.ca_pem.as_deref(), timeout, server.exited()).await
}

/// Polls a session every 100 ms until one opens (then reads `server_version`), `timeout`
/// passes, or `exited` resolves first. Shared by both providers.
pub(crate) async fn probe_until_ready(
    url: &DbUrl,
    ca_pem: Option<&str>,
    timeout: Duration,
    exited: impl std::future::Future<Output = Error>,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let probe = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let last = match tls::connect(url, Some(HARNESS_APPLICATION_NAME), ca_pem, Duration::from_secs(2)).await {
                Ok(client) => match client.query_one("SHOW server_version", &[]).await {
                    Ok(row) => return Ok(row.get::<_, String>(0)),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.summary(),
            };
            if Instant::now() >= deadline {
                return Err(WaitError::Timeout {
                    what: format!("postgresql on {}:{} to accept a session", url.host, url.port),
                    after: timeout,
                    last_seen: last,
                }
                .into());
            }
        }
    };
    tokio::select! {
        r = probe => r,
        e = exited => Err(e),
    }
}

struct LocalServer {
    server: Supervised,
}

impl Running for LocalServer {
    fn teardown(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let mut server = self.server;
        Box::pin(async move { server.terminate().await })
    }

    fn logs(&self) -> Vec<PathBuf> {
        vec![self.server.log().to_path_buf()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_newest_installed_version_wins_and_missing_names_apt() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9.6", "15", "13", "notaversion"] {
            let bin = root.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
            std::fs::write(bin.join("postgres"), "").unwrap();
        }
        std::fs::create_dir_all(root.path().join("16/bin")).unwrap(); // no binaries: skipped
        let (bin, v) = newest_installed(root.path()).unwrap();
        assert_eq!(v, "15");
        assert_eq!(bin, root.path().join("15/bin"));

        let empty = tempfile::tempdir().unwrap();
        let e = newest_installed(empty.path()).unwrap_err().to_string();
        assert!(e.contains("apt-get install postgresql"), "{e}");
        let e = newest_installed(Path::new("/nonexistent/lily-e2e")).unwrap_err().to_string();
        assert!(e.contains("apt-get install postgresql"), "{e}");
    }

    #[test]
    fn postgres_hba_refuses_plain_connections_when_tls_is_on() {
        let on = pg_hba(true);
        assert!(on.contains("hostssl    all      all  127.0.0.1/32 scram-sha-256"));
        assert!(on.contains("hostnossl  all      all  0.0.0.0/0    reject"));
        assert!(!on.lines().any(|l| l.starts_with("host ") || l.starts_with("local")));
        assert!(pg_hba(false).contains("host       all      all  127.0.0.1/32 scram-sha-256"));
        assert!(server_conf(true).contains("ssl = on"));
        assert!(server_conf(true).contains("unix_socket_directories = ''"));
        assert!(server_conf(true).contains("listen_addresses = '127.0.0.1'"));
    }
}
