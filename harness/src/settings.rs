//! Settings that reach deep into the library (where tools are cached, where runs register,
//! which Docker engine and PostgreSQL binaries to use), resolved once at the edge.
//!
//! The command line resolves each from its flag or environment variable (clap's `env =`)
//! and [`install`]s them at start; the library reads them here and never reads the
//! environment itself. Without an install (a library user, a unit test), the defaults apply.

use std::path::PathBuf;
use std::sync::OnceLock;

/// Every setting the library reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Tool cache and run registry root (`LILY_E2E_CACHE`); default `~/.cache/lily-e2e`.
    pub cache: Option<PathBuf>,
    /// The run registry (`LILY_E2E_RUNS`); default `<cache>/runs`.
    pub runs: Option<PathBuf>,
    /// The Docker engine (`DOCKER_HOST`); default the local socket. Empty means unset.
    pub docker_host: Option<String>,
    /// The directory of `initdb` and `postgres` (`LILY_E2E_POSTGRES_BIN`); default the newest installed.
    pub postgres_bin: Option<PathBuf>,
    /// The container provider's image, `name:tag` (`LILY_E2E_POSTGRES_IMAGE`).
    pub postgres_image: Option<String>,
    /// Leave containers in place after the run (`TESTCONTAINERS_COMMAND=keep`).
    pub keep_containers: bool,
    /// The kind provider's node image (`LILY_E2E_KIND_IMAGE`); default lily-e2e's own
    /// (`ci/node-image.sh`). An upstream `kindest/node` image keeps kind's own network.
    pub kind_image: Option<String>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Installs the settings for the rest of the process; the first install wins (returns false
/// for a later, different one).
pub fn install(s: Settings) -> bool {
    let same = SETTINGS.get_or_init(|| s.clone()) == &s;
    same
}

/// The installed settings, or the defaults.
pub fn get() -> &'static Settings {
    static DEFAULT: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get().unwrap_or_else(|| DEFAULT.get_or_init(Settings::default))
}
