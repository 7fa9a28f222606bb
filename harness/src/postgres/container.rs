//! PostgreSQL in a container (testcontainers), when a Docker engine is reachable.
//!
//! The official image, TLS on like the local provider: a per-run certificate is copied in,
//! and an init script (run by the image's entrypoint as the `postgres` user, before the
//! real server starts) installs it in the data directory with mode 0600, turns `ssl` on and
//! writes a pg_hba.conf that takes passwords over TLS only and rejects the rest. (Passing
//! `-c ssl=on -c ssl_key_file=...` on the command line does not work with that image: the
//! copied key belongs to root, and the entrypoint's temporary server would start with those
//! flags before anything could fix the key's owner.)
//!
//! The superuser's password never enters the container's environment: the container starts
//! with `trust` for its temporary setup server, and the init script sets the password as a
//! SCRAM verifier. Readiness is a real TLS session from the harness, never a log line.
//!
//! The image is the official `postgres:15-alpine` unless `LILY_E2E_POSTGRES_IMAGE=name:tag`
//! says otherwise. Where no registry is reachable, `ci/postgres-image.sh` builds
//! `lily-e2e/postgres:15-bookworm` from Debian packages: it starts like the official image
//! (same environment, init scripts and log lines), so nothing here depends on which it is.
//!
//! The container carries the run label, so `lily-e2e clean` removes it after a crash. It is
//! removed at teardown, and by its `Drop` otherwise, unless `TESTCONTAINERS_COMMAND=keep`
//! (testcontainers' own switch) asks to keep it for debugging.
//!
//! Unlike the harness's child processes ([`crate::process::spawn_tied`]), a container
//! cannot be given a death signal: the engine runs it, not the harness, so it outlives a
//! SIGKILLed harness. For that case `lily-e2e clean` remains, finding it by its run label
//! (and, for `clean --all`, by its owner label naming a dead process).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use testcontainers::core::IntoContainerPort;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, CopyTargetOptions, ImageExt};
use testcontainers_modules::postgres::Postgres as PostgresImage;

use super::{dsn::DbUrl, Endpoint, Password, Postgres, PostgresError, PostgresProvider, PostgresSpec, Running, SslMode, START_TIMEOUT};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::pki::{self, Usage};
use crate::run::{Run, OWNER_LABEL, RUN_LABEL};

/// Overrides the image: `name:tag`.
pub const IMAGE_ENV: &str = "LILY_E2E_POSTGRES_IMAGE";
pub const DEFAULT_IMAGE: (&str, &str) = ("postgres", "15-alpine");
const TLS_DIR: &str = "/lily-e2e-tls";

/// The container provider.
#[derive(Debug, Clone)]
pub struct Container {
    pub image: String,
    pub tag: String,
    /// Where the engine answers (`DOCKER_HOST` by default).
    pub engine: Engine,
    /// A Docker network to put the container on (the kind provider's `kind`), whose address
    /// becomes the server's address for pods ([`Postgres::pod_address`]).
    pub network: Option<String>,
}

impl Default for Container {
    fn default() -> Self {
        Container { image: DEFAULT_IMAGE.0.into(), tag: DEFAULT_IMAGE.1.into(), engine: Engine::configured(), network: None }
    }
}

impl Container {
    /// The default image, or the configured one (`LILY_E2E_POSTGRES_IMAGE`).
    pub fn configured() -> Result<Self> {
        match crate::settings::get().postgres_image.as_deref() {
            Some(v) if !v.trim().is_empty() => {
                let (image, tag) = parse_image(v.trim())?;
                Ok(Container { image, tag, ..Container::default() })
            }
            _ => Ok(Container::default()),
        }
    }
}

impl Container {
    /// Makes sure the engine has the image (pulling it where a registry serves it), so that
    /// a run that starts PostgreSQL after its cluster (kind) fails before the cluster boots
    /// when it cannot.
    pub async fn prepare(&self) -> Result<()> {
        self.engine.check()?;
        let image = format!("{}:{}", self.image, self.tag);
        self.engine.ensure_image(&image).await.map_err(|e| Error::Tool { what: start_failure(&image, true), source: Some(Box::new(e)) })
    }
}

/// testcontainers' switch: `keep` leaves containers in place after the run, for debugging.
pub const KEEP_ENV: &str = "TESTCONTAINERS_COMMAND";

fn keep_requested() -> bool {
    crate::settings::get().keep_containers
}

/// `name:tag` (the name may carry a registry with a port: the tag is after the last `:`
/// that follows the last `/`).
pub fn parse_image(s: &str) -> Result<(String, String)> {
    let slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[slash..].rfind(':') {
        Some(i) if i > 0 && slash + i + 1 < s.len() => Ok((s[..slash + i].to_string(), s[slash + i + 1..].to_string())),
        _ => Err(PostgresError::BadImage { value: s.to_string() }.into()),
    }
}

/// What to say when a container does not start; when its image could not be pulled, how to
/// do without a registry.
pub fn start_failure(image: &str, pull_failed: bool) -> String {
    if pull_failed {
        format!(
            "cannot start a postgresql container: {image} is not in the engine and cannot be pulled; \
             without a registry, build lily-e2e's image with ci/postgres-image.sh and set \
             {IMAGE_ENV}=lily-e2e/postgres:15-bookworm"
        )
    } else {
        format!("cannot start a postgresql container from {image}")
    }
}

/// The init script: certificate, `ssl = on`, pg_hba.conf, the superuser's password as a
/// SCRAM verifier. Runs as `postgres` with `$PGDATA` set, the temporary server up.
pub fn init_script(tls: bool, verifier: &str) -> String {
    let mut s = String::from("#!/bin/sh\n# written by lily-e2e\nset -e\necho \"log_connections = on\" >> \"$PGDATA/postgresql.conf\"\n");
    if tls {
        s.push_str(&format!(
            "cp {TLS_DIR}/server.crt \"$PGDATA/server.crt\"\n\
             cp {TLS_DIR}/server.key \"$PGDATA/server.key\"\n\
             chmod 0600 \"$PGDATA/server.key\"\n\
             cat >> \"$PGDATA/postgresql.conf\" <<'CONF'\n\
             ssl = on\n\
             ssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\n\
             CONF\n\
             cat > \"$PGDATA/pg_hba.conf\" <<'HBA'\n\
             local     all all     trust\n\
             hostssl   all all all scram-sha-256\n\
             hostnossl all all all reject\n\
             HBA\n"
        ));
    } else {
        // Off even where the image turns it on by itself (lily-e2e's own image does).
        s.push_str(
            "echo \"ssl = off\" >> \"$PGDATA/postgresql.conf\"\n\
             cat > \"$PGDATA/pg_hba.conf\" <<'HBA'\n\
             local all all     trust\n\
             host  all all all scram-sha-256\n\
             HBA\n",
        );
    }
    s.push_str(&format!(
        "psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres <<'SQL'\n\
         ALTER ROLE postgres PASSWORD '{verifier}';\n\
         SQL\n"
    ));
    s
}

impl PostgresProvider for Container {
    fn name(&self) -> &'static str {
        "container"
    }

    fn start<'a>(&'a self, spec: &'a PostgresSpec, run: &'a Run) -> BoxFuture<'a, Result<Postgres>> {
        Box::pin(async move {
            self.engine.check()?;
            let password = Password::generate();
            let mut request = PostgresImage::default()
                .with_host_auth()
                .with_name(&self.image)
                .with_tag(&self.tag)
                .with_label(RUN_LABEL, run.id().as_str())
                .with_label(OWNER_LABEL, run.owner())
                .with_ready_conditions(Vec::new())
                .with_startup_timeout(START_TIMEOUT)
                .with_copy_to(
                    CopyTargetOptions::new("/docker-entrypoint-initdb.d/00-lily-e2e.sh").with_mode(0o755),
                    init_script(spec.tls, &password.scram_verifier()).into_bytes(),
                );
            if let Some(net) = &self.network {
                request = request.with_network(net.clone());
            }
            let mut ca_pem = None;
            if spec.tls {
                let ca = pki::Ca::new("lily-e2e-postgres-ca")?;
                let mut sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
                if let Some(host) = self.engine.tcp_host() {
                    sans.push(host);
                }
                let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
                let pair = ca.issue("lily-e2e-postgres", &[], &sans, Usage::Server)?;
                // Readable by `postgres` so the init script can copy it; the copy it uses
                // is 0600 and its own.
                request = request
                    .with_copy_to(CopyTargetOptions::new(format!("{TLS_DIR}/server.crt")).with_mode(0o644), pair.cert_pem.into_bytes())
                    .with_copy_to(CopyTargetOptions::new(format!("{TLS_DIR}/server.key")).with_mode(0o644), pair.key_pem.into_bytes());
                ca_pem = Some(ca.cert_pem());
            }
            let image = format!("{}:{}", self.image, self.tag);
            let log = run.subdir("postgres")?.join("postgres-container.log");
            let container = request.start().await.map_err(|e| {
                let pull_failed =
                    matches!(e, testcontainers::TestcontainersError::Client(testcontainers::core::error::ClientError::PullImage { .. }));
                Error::Tool { what: start_failure(&image, pull_failed), source: Some(Box::new(e)) }
            })?;
            let running = ContainerServer { container: Some(container), image: image.clone(), log };
            let (host, port) = {
                let c = running.container.as_ref().expect("just started");
                // An engine on a local socket publishes ports on this host: loopback
                // reaches them whether they are bound to 127.0.0.1 (ci/docker.sh) or to all
                // addresses. (testcontainers would pick the bridge gateway wherever
                // /.dockerenv exists, which some VMs have without being in a container.)
                let host = match &self.engine {
                    Engine::Unix(_) => "127.0.0.1".to_string(),
                    _ => c
                        .get_host()
                        .await
                        .map_err(|e| Error::Tool {
                            what: format!("cannot read the host of the {image} container"),
                            source: Some(Box::new(e)),
                        })?
                        .to_string(),
                };
                let port = c.get_host_port_ipv4(5432.tcp()).await.map_err(|e| Error::Tool {
                    what: format!("cannot read the port of the {image} container"),
                    source: Some(Box::new(e)),
                })?;
                (host, port)
            };
            // On a network, pods reach the server at its address there, on its own port.
            let pod_address = match &self.network {
                Some(net) => {
                    let c = running.container.as_ref().expect("just started");
                    let ip = c.get_bridge_ip_address().await.map_err(|e| Error::Tool {
                        what: format!("cannot read the address of the {image} container on network {net}"),
                        source: Some(Box::new(e)),
                    })?;
                    Some((ip.to_string(), 5432))
                }
                None => None,
            };
            let mode = if spec.tls { SslMode::Require } else { SslMode::Disable };
            let url = DbUrl::new("postgres", Some(password.clone()), &host, port, "postgres", mode);
            let exited = running.exited();
            match super::local::probe_until_ready(&url, ca_pem.as_deref(), START_TIMEOUT, exited).await {
                Ok(version) => {
                    let endpoint = Endpoint {
                        host: url.host.clone(),
                        port,
                        tls: spec.tls,
                        ca_pem,
                        superuser: "postgres".into(),
                        superuser_password: password,
                        version,
                        pod_address,
                    };
                    Ok(Postgres::new("container", endpoint, Box::new(running)))
                }
                Err(e) => {
                    let _ = Box::new(running).teardown().await;
                    Err(e)
                }
            }
        })
    }
}

struct ContainerServer {
    container: Option<ContainerAsync<PostgresImage>>,
    image: String,
    /// Where [`Running::refresh_logs`] copies the container's output (in the run directory).
    log: PathBuf,
}

impl ContainerServer {
    /// Resolves when the container stops running (checked every 500 ms), as an error
    /// carrying the end of its log.
    async fn exited(&self) -> Error {
        let c = self.container.as_ref().expect("running");
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(false) = c.is_running().await {
                let log = c.stderr_to_vec().await.unwrap_or_default();
                let text = String::from_utf8_lossy(&log);
                let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
                return Error::Tool {
                    what: format!(
                        "the postgresql container ({}) stopped {}s after it started; it ended with:\n{}",
                        self.image,
                        start.elapsed().as_secs(),
                        tail.join("\n")
                    ),
                    source: None,
                };
            }
        }
    }
}

impl Running for ContainerServer {
    fn teardown(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let container = self.container.take();
        let image = self.image.clone();
        Box::pin(async move {
            if let Some(c) = container {
                if keep_requested() {
                    eprintln!("lily-e2e: keeping postgresql container {} ({KEEP_ENV}=keep); `lily-e2e clean --all` removes it", c.id());
                    // testcontainers' Drop honours the same switch.
                    drop(c);
                    return Ok(());
                }
                c.rm().await.map_err(|e| Error::Tool {
                    what: format!("cannot remove the postgresql container ({image})"),
                    source: Some(Box::new(e)),
                })?;
            }
            Ok(())
        })
    }

    fn logs(&self) -> Vec<PathBuf> {
        if self.log.exists() {
            vec![self.log.clone()]
        } else {
            Vec::new()
        }
    }

    /// Copies the container's output so far (stdout: the temporary setup server; stderr:
    /// the server) into the run directory.
    fn refresh_logs(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(c) = self.container.as_ref() else {
                return;
            };
            let out = c.stdout_to_vec().await.unwrap_or_default();
            let err = c.stderr_to_vec().await.unwrap_or_default();
            let mut text = b"== stdout\n".to_vec();
            text.extend(out);
            text.extend(b"== stderr\n");
            text.extend(err);
            if let Err(e) = std::fs::write(&self.log, text) {
                tracing::warn!(log = %self.log.display(), error = %e, "cannot copy the postgresql container's log");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("postgres:15-alpine", "postgres", "15-alpine")]
    #[case("registry.local:5000/pg/postgres:16", "registry.local:5000/pg/postgres", "16")]
    fn postgres_image_override_is_name_and_tag(#[case] s: &str, #[case] name: &str, #[case] tag: &str) {
        assert_eq!(parse_image(s).unwrap(), (name.to_string(), tag.to_string()));
    }

    #[rstest]
    #[case("postgres")]
    #[case("registry.local:5000/postgres")]
    #[case("postgres:")]
    #[case(":15")]
    fn postgres_image_override_without_tag_is_refused(#[case] s: &str) {
        assert!(parse_image(s).unwrap_err().to_string().contains("is not name:tag"));
    }

    #[test]
    fn postgres_image_pull_failure_says_how_to_do_without_a_registry() {
        let m = start_failure("postgres:15-alpine", true);
        assert!(m.contains("postgres:15-alpine is not in the engine and cannot be pulled"), "{m}");
        assert!(m.contains("ci/postgres-image.sh") && m.contains("LILY_E2E_POSTGRES_IMAGE=lily-e2e/postgres:15-bookworm"), "{m}");
        assert_eq!(start_failure("x:1", false), "cannot start a postgresql container from x:1");
    }

    #[test]
    fn postgres_init_script_turns_tls_on_and_sets_a_verifier_only() {
        let p = Password::generate();
        let s = init_script(true, &p.scram_verifier());
        assert!(s.contains("ssl = on") && s.contains("hostnossl all all all reject") && s.contains("chmod 0600"));
        assert!(s.contains("ALTER ROLE postgres PASSWORD 'SCRAM-SHA-256$"));
        assert!(!s.contains(p.expose()));
        let plain = init_script(false, "v");
        assert!(!plain.contains("ssl = on") && plain.contains("ssl = off"), "{plain}");
    }
}
