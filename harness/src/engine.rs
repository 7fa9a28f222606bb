//! The Docker engine the container providers use: where it answers, whether it does, and
//! the containers a run left in it.
//!
//! Every container the harness starts carries the [`RUN_LABEL`] label, so that a run's
//! containers can be found and removed like its processes: by [`crate::reap::clean`] after a
//! crash, and by [`crate::reap::cleanup_live_runs`] where no destructor runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;

use crate::error::{Error, Result};
use crate::run::{RunId, OWNER_LABEL, RUN_LABEL};

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How long a blocking clean-up may spend on the engine.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A container that carries the run label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunContainer {
    pub id: String,
    /// Its run id.
    pub run: String,
    /// Its owner process ([`crate::run::Run::owner`]), when labelled.
    pub owner: Option<String>,
}

/// Where a Docker engine should answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    Unix(PathBuf),
    Tcp(String),
    /// A scheme this check cannot try (ssh://, npipe://): left to the client library.
    Other(String),
}

impl Engine {
    /// The configured engine (`DOCKER_HOST`, resolved by the command line), or the default
    /// socket; an empty value counts as unset, as the docker CLI treats it.
    pub fn configured() -> Self {
        match crate::settings::get().docker_host.as_deref().map(str::trim) {
            Some(h) if !h.is_empty() => Engine::parse(h),
            _ => Engine::Unix(PathBuf::from(DEFAULT_SOCKET)),
        }
    }

    /// A `DOCKER_HOST` value.
    pub fn parse(h: &str) -> Self {
        if let Some(p) = h.strip_prefix("unix://") {
            Engine::Unix(PathBuf::from(p))
        } else if let Some(a) = h.strip_prefix("tcp://") {
            Engine::Tcp(a.trim_end_matches('/').to_string())
        } else {
            Engine::Other(h.to_string())
        }
    }

    /// The host name or address of a TCP engine (where its published ports are).
    pub fn tcp_host(&self) -> Option<String> {
        match self {
            Engine::Tcp(addr) => addr.rsplit_once(':').map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_string()),
            _ => None,
        }
    }

    /// Fails at once, saying what to do, when nothing accepts a connection at the engine's
    /// address.
    pub fn check(&self) -> Result<()> {
        let unreachable = |e: std::io::Error| Error::Tool {
            what: "no docker engine is reachable (DOCKER_HOST or /var/run/docker.sock); start one with \
                   ci/docker.sh, or use --postgres local"
                .into(),
            source: Some(Box::new(e)),
        };
        match self {
            Engine::Unix(path) => std::os::unix::net::UnixStream::connect(path).map(drop).map_err(unreachable),
            Engine::Tcp(addr) => {
                use std::net::ToSocketAddrs;
                let sa =
                    addr.to_socket_addrs().map_err(unreachable)?.next().ok_or_else(|| {
                        unreachable(std::io::Error::new(std::io::ErrorKind::NotFound, "DOCKER_HOST resolves to no address"))
                    })?;
                std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2)).map(drop).map_err(unreachable)
            }
            Engine::Other(_) => Ok(()),
        }
    }

    fn client(&self) -> Result<Docker> {
        let docker = match self {
            Engine::Unix(p) => Docker::connect_with_unix(&p.to_string_lossy(), 30, bollard::API_DEFAULT_VERSION),
            Engine::Tcp(a) => Docker::connect_with_http(&format!("tcp://{a}"), 30, bollard::API_DEFAULT_VERSION),
            Engine::Other(_) => Docker::connect_with_defaults(),
        };
        docker.map_err(|e| Error::Tool { what: "cannot make a docker client".into(), source: Some(Box::new(e)) })
    }

    /// Containers (running or not) that carry the run label, and the node containers of the
    /// kind clusters the kind provider made (kind labels them with their cluster's name,
    /// which carries the run id; they have no owner label).
    pub async fn run_containers(&self) -> Result<Vec<RunContainer>> {
        let docker = self.client()?;
        let list = |label: &str| {
            let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
            let docker = docker.clone();
            async move {
                docker
                    .list_containers(Some(ListContainersOptions { all: true, filters: Some(filters), ..Default::default() }))
                    .await
                    .map_err(|e| Error::Tool { what: "cannot list containers".into(), source: Some(Box::new(e)) })
            }
        };
        let mut out: Vec<RunContainer> = list(RUN_LABEL)
            .await?
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.as_ref()?;
                let run = labels.get(RUN_LABEL)?.clone();
                let owner = labels.get(OWNER_LABEL).cloned();
                Some(RunContainer { id: c.id?, run, owner })
            })
            .collect();
        let kind = crate::cluster::kind::KIND_CLUSTER_LABEL;
        out.extend(list(kind).await?.into_iter().filter_map(|c| {
            let run = crate::cluster::kind::run_of_cluster(c.labels.as_ref()?.get(kind)?)?.to_string();
            Some(RunContainer { id: c.id?, run, owner: None })
        }));
        Ok(out)
    }

    /// The labels of image `image`, or `None` when the engine has no such image.
    pub async fn image_labels(&self, image: &str) -> Result<Option<HashMap<String, String>>> {
        match self.client()?.inspect_image(image).await {
            Ok(i) => Ok(Some(i.config.and_then(|c| c.labels).unwrap_or_default())),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(Error::Tool { what: format!("cannot inspect image {image}"), source: Some(Box::new(e)) }),
        }
    }

    /// Makes sure the engine has image `image` (`name:tag`), pulling it if it has not; a pull
    /// that fails is an error carrying the engine's words.
    pub async fn ensure_image(&self, image: &str) -> Result<()> {
        use futures::TryStreamExt;
        if self.image_labels(image).await?.is_some() {
            return Ok(());
        }
        let options = bollard::query_parameters::CreateImageOptionsBuilder::new().from_image(image).build();
        self.client()?.create_image(Some(options), None, None).try_collect::<Vec<_>>().await.map(drop).map_err(|e| Error::Tool {
            what: format!("image {image} is not in the engine and cannot be pulled"),
            source: Some(Box::new(e)),
        })
    }

    /// Force-removes (with their anonymous volumes) the run containers `which` selects;
    /// returns them.
    pub async fn remove_containers(&self, which: impl Fn(&RunContainer) -> bool) -> Result<Vec<RunContainer>> {
        let docker = self.client()?;
        let mut removed = Vec::new();
        for c in self.run_containers().await? {
            if !which(&c) {
                continue;
            }
            let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            match docker.remove_container(&c.id, Some(opts)).await {
                Ok(()) => removed.push(c),
                // Gone in the meantime (its own teardown): nothing to do.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(e) => return Err(Error::Tool { what: format!("cannot remove container {}", c.id), source: Some(Box::new(e)) }),
            }
        }
        Ok(removed)
    }
}

/// Removes the containers of the runs `which` selects, from any context (a signal handler's
/// task, a destructor, plain sync code): on a thread of its own with its own runtime, under
/// a deadline. Does nothing, quickly, when no engine answers. Returns what it removed.
pub fn remove_containers_blocking(which: impl Fn(&RunContainer) -> bool + Send + 'static) -> Vec<RunContainer> {
    let engine = Engine::configured();
    if engine.check().is_err() {
        return Vec::new();
    }
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        rt.block_on(async { tokio::time::timeout(CLEANUP_TIMEOUT, engine.remove_containers(which)).await.ok()?.ok() })
    });
    worker.join().ok().flatten().unwrap_or_default()
}

/// The containers of one run, removed as [`remove_containers_blocking`] does.
pub fn remove_run_containers_blocking(id: &RunId) -> Vec<String> {
    let id = id.as_str().to_string();
    remove_containers_blocking(move |c| c.run == id).into_iter().map(|c| c.id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_values_are_read() {
        assert_eq!(Engine::parse("unix:///tmp/d.sock"), Engine::Unix("/tmp/d.sock".into()));
        assert_eq!(Engine::parse("tcp://10.0.0.5:2375/"), Engine::Tcp("10.0.0.5:2375".into()));
        assert_eq!(Engine::parse("tcp://10.0.0.5:2375").tcp_host().as_deref(), Some("10.0.0.5"));
        assert_eq!(Engine::parse("tcp://[::1]:2375").tcp_host().as_deref(), Some("::1"));
        assert_eq!(Engine::parse("ssh://me@host"), Engine::Other("ssh://me@host".into()));
    }

    #[test]
    fn an_engine_that_is_not_there_fails_at_once_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        let e = Engine::Unix(dir.path().join("docker.sock")).check().unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(e.to_string().starts_with("no docker engine is reachable"), "{e}");
        assert!(e.to_string().contains("ci/docker.sh"), "{e}");
    }
}
