//! A stand-in for the `lily` binary of the `filecoin/lily` image, for kind clusters that can
//! pull no upstream image and reach no Filecoin network.
//!
//! It does what the Lily Helm chart's containers run, just enough for the chart's pod to run
//! on real kubelets:
//!
//! - `lily daemon [ARGS...]` reads Lily's config.toml (`$LILY_CONFIG`, else
//!   `$LILY_REPO/config.toml`; missing: defaults), connects to every
//!   `[Storage.Postgresql.<name>]` (URL from the variable its `URLEnv` names, `sslmode` as
//!   libpq reads it, `application_name` = `ApplicationName`), creates its `SchemaName` as
//!   `lily migrate` would, keeps that connection open, serves a small JSON answer over HTTP
//!   on the API address and accepts (and closes) connections on the libp2p addresses, until
//!   SIGTERM or SIGINT (exit 0);
//! - `lily wait-api [--timeout=DUR]`, `lily sync wait`: ask that API;
//! - `lily migrate --schema S` (URL from `$LILY_DB`): the schema and a marker table;
//! - `lily log set-level-regex`, `lily job run`: accepted, and say they do nothing.
//!
//! What it does NOT do: sync or index a chain, speak libp2p or Lily's JSON-RPC API, run
//! jobs, import snapshots (`lily init` fails), create Lily's real tables, or verify TLS
//! certificates (`sslmode=verify-ca`/`verify-full` are refused). No database URL's password
//! is ever printed: URLs are shown through [`db::redact`].

mod api;
mod args;
mod config;
mod db;
mod log;

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

pub const VERSION: &str = "0.0.0+standin";

const USAGE: &str = "usage: lily <command> [args]
commands (lily-e2e stand-in):
  daemon [--config=PATH] [FLAGS...]    connect the storage, serve the API until SIGTERM
  wait-api [--timeout=DUR]             wait until the API answers (default 30s)
  sync wait                            the stand-in is always in sync
  migrate [--schema=S] [--db=URL]      create the schema (URL from LILY_DB)
  log set-level-regex SYSTEM LEVEL     accepted; logging has one level
  job run ...                          accepted; the stand-in runs no jobs
  version, --version                   print the version";

/// Why a command failed. Messages hold URLs only redacted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("config {path}: {msg}")]
    Config { path: String, msg: String },
    #[error("[Storage.Postgresql.{table}]: environment variable {var} (named by its URLEnv) is not set or empty")]
    MissingUrl { table: String, var: String },
    #[error("[Storage.Postgresql.{table}] sets neither URLEnv nor URL")]
    NoUrl { table: String },
    #[error("database URL {url}: {msg}")]
    BadUrl { url: String, msg: String },
    #[error("sslmode={0} is not supported by the stand-in (it verifies no certificate); use sslmode=require")]
    UnsupportedSslMode(String),
    #[error("database {url}: {msg}")]
    Db { url: String, msg: String },
    #[error("{0}")]
    Failed(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(msg)) => {
            eprintln!("lily: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(e) => {
            log::error(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), Error> {
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("version" | "--version" | "-v") => {
            println!("lily version {VERSION} (lily-e2e stand-in)");
            Ok(())
        }
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        Some("daemon") => block_on(daemon(&args[1..])),
        Some("wait-api") => {
            let text = args::flag(&args[1..], "timeout")?.unwrap_or_else(|| "30s".into());
            let timeout = args::parse_duration(&text).map_err(Error::Usage)?;
            let addr = api_addr()?;
            block_on(api::wait(addr, timeout, &text))?;
            log::info(&format!("api at {addr} is up"));
            Ok(())
        }
        Some("sync") if arg(1) == Some("wait") => {
            ask_api("/sync/wait")?;
            log::info("chain in sync (the stand-in is always in sync)");
            Ok(())
        }
        Some("migrate") => {
            let rest = &args[1..];
            let schema = args::flag(rest, "schema")?.unwrap_or_else(|| "public".into());
            let url = match args::flag(rest, "db")? {
                Some(u) => u,
                None => std::env::var("LILY_DB")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| Error::Failed("no database: set LILY_DB (or --db) to a postgres:// URL".into()))?,
            };
            block_on(async {
                let db = db::DbUrl::parse(&url)?;
                let client = db::connect(&db, "lily-migrate", "migrate").await?;
                db::migrate(&client, &db, &schema).await
            })?;
            log::info(&format!("migrate: schema {schema} ready (stand-in marker table {schema}.{})", db::MARKER_TABLE));
            Ok(())
        }
        Some("log") if matches!(arg(1), Some("set-level-regex" | "set-level")) => {
            let (Some(system), Some(level)) = (arg(2), arg(3)) else {
                return Err(Error::Usage(format!("lily log {} SYSTEM LEVEL", args[1])));
            };
            ask_api("/log/set-level")?;
            log::info(&format!("log {}: {system:?} {level:?} accepted (the stand-in logs at one level)", args[1]));
            Ok(())
        }
        Some("job") => {
            log::info(&format!("the stand-in runs no jobs; ignoring: lily {}", args.join(" ")));
            Ok(())
        }
        Some("init") => Err(Error::Failed("the stand-in cannot import snapshots; set importSnapshot.enabled=false".into())),
        Some(other) => Err(Error::Usage(format!("unknown command {other:?}"))),
        None => Err(Error::Usage("no command".into())),
    }
}

fn block_on<T>(fut: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Failed(format!("starting the runtime: {e}")))?
        .block_on(fut)
}

/// Where the client commands reach the daemon: the API address of the config, on loopback.
fn api_addr() -> Result<std::net::SocketAddr, Error> {
    let (cfg, _) = config::Config::load(None)?;
    Ok(api::client_addr(config::tcp_socket(&cfg.api.listen_address)?))
}

/// One GET of the daemon's API.
fn ask_api(path: &str) -> Result<String, Error> {
    let addr = api_addr()?;
    block_on(async { api::get(addr, path, Duration::from_secs(10)).await.map_err(Error::Failed) })
}

/// `lily daemon`: until SIGTERM or SIGINT.
async fn daemon(args: &[String]) -> Result<(), Error> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Failed(format!("SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Failed(format!("SIGINT handler: {e}")))?;
    let (cfg, source) = config::Config::load(args::flag(args, "config")?.as_deref())?;
    log::info(&format!("stand-in daemon {VERSION} starting; config: {source}"));
    if !args.is_empty() {
        log::info(&format!("ignoring daemon arguments: {}", args.join(" ")));
    }
    let sig = tokio::select! {
        r = serve(&cfg) => return r.map(|never| match never {}),
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    log::info(&format!("received {sig}; closing the storage connections and exiting"));
    Ok(())
}

/// The daemon's work: storage first (so the API answers only once it is ready), then the
/// listeners; never returns but on error.
async fn serve(cfg: &config::Config) -> Result<Infallible, Error> {
    let mut clients = Vec::new();
    for (name, entry) in &cfg.storage.postgresql {
        let db = db::DbUrl::parse(&entry.url(name)?)?;
        let app = entry.application_name();
        log::info(&format!("storage {name}: connecting to {} (sslmode={}, application_name={app})", db.redacted, db.sslmode));
        let client = db::connect(&db, app, name).await?;
        db::migrate(&client, &db, entry.schema_name()).await?;
        log::info(&format!("storage {name}: schema {} migrated; connection kept open", entry.schema_name()));
        clients.push(client);
    }
    let storage: Vec<&String> = cfg.storage.postgresql.keys().collect();
    let body = serde_json::json!({"standin": true, "synced": true, "version": VERSION, "storage": storage}).to_string();

    let api_listener = bind(&cfg.api.listen_address, "api").await?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(api::serve(api_listener, body));
    for ma in &cfg.libp2p.listen_addresses {
        tasks.spawn(api::accept_and_close(bind(ma, "libp2p").await?));
    }
    let _keep = clients;
    match tasks.join_next().await {
        Some(Ok(never)) => match never {},
        Some(Err(e)) => Err(Error::Failed(format!("a listener stopped: {e}"))),
        None => std::future::pending().await,
    }
}

async fn bind(multiaddr: &str, what: &str) -> Result<TcpListener, Error> {
    let addr = config::tcp_socket(multiaddr)?;
    let listener = TcpListener::bind(addr).await.map_err(|e| Error::Failed(format!("{what}: listening on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| Error::Failed(format!("{what}: {e}")))?;
    log::info(&format!("{what}: listening on {local} ({multiaddr})"));
    Ok(listener)
}
