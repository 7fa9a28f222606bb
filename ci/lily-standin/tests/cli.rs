//! The built `lily` stand-in, run as the chart's containers run it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const LILY: &str = env!("CARGO_BIN_EXE_lily");

/// `lily ARGS` with the config at `config` and no LILY_*/GOLOG_* variables of the caller.
fn lily(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(LILY);
    c.args(args).env("LILY_CONFIG", config).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("LILY_") || k.starts_with("GOLOG_") {
            c.env_remove(k);
        }
    }
    c.env("LILY_CONFIG", config);
    c
}

fn run(config: &Path, args: &[&str]) -> (Output, String) {
    let out = lily(config, args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > within {
            child.kill().unwrap();
            panic!("lily did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn daemon_serves_the_api_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (api, p2p) = (free_port(), free_port());
    let cfg = config(
        &dir,
        &format!("[API]\n  ListenAddress = \"/ip4/127.0.0.1/tcp/{api}/http\"\n[Libp2p]\n  ListenAddresses = [\"/ip4/127.0.0.1/tcp/{p2p}\"]\n  ConnMgrLow = 400\n"),
    );
    let mut daemon = lily(&cfg, &["daemon", "--bootstrap=false"]).stdout(Stdio::piped()).spawn().unwrap();

    let (out, text) = run(&cfg, &["wait-api", "--timeout=10s"]);
    assert!(out.status.success(), "wait-api: {text}");
    let (out, text) = run(&cfg, &["sync", "wait"]);
    assert!(out.status.success(), "sync wait: {text}");
    let (out, text) = run(&cfg, &["log", "set-level-regex", "chain.*", "debug"]);
    assert!(out.status.success(), "log set-level-regex: {text}");

    let mut s = TcpStream::connect(("127.0.0.1", api)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body, serde_json::json!({"standin": true, "synced": true, "storage": [], "version": "0.0.0+standin"}));
    TcpStream::connect(("127.0.0.1", p2p)).expect("the libp2p port accepts");

    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut daemon, Duration::from_secs(10));
    let mut log = String::new();
    daemon.stdout.take().unwrap().read_to_string(&mut log).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains(&format!("api: listening on 127.0.0.1:{api}")), "{log}");
    assert!(log.contains("ignoring daemon arguments: --bootstrap=false"), "{log}");
    assert!(log.contains("api: GET /sync/wait"), "{log}");
    assert!(log.contains("received SIGTERM"), "{log}");
}

#[test]
fn daemon_exits_0_on_sigint_and_logs_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let cfg = config(&dir, &format!("[API]\nListenAddress = \"/ip4/127.0.0.1/tcp/{api}/http\"\n"));
    let mut daemon = lily(&cfg, &["daemon"]).env("GOLOG_LOG_FMT", "json").stdout(Stdio::piped()).spawn().unwrap();
    let (out, text) = run(&cfg, &["wait-api", "--timeout", "10s"]);
    assert!(out.status.success(), "{text}");
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGINT) }, 0);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(10)).code(), Some(0));
    let mut log = String::new();
    daemon.stdout.take().unwrap().read_to_string(&mut log).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 3, "{log}");
    assert!(lines.iter().all(|l| l["level"] == "info" && l["msg"].is_string()), "{log}");
    assert!(lines.last().unwrap()["msg"].as_str().unwrap().starts_with("received SIGINT"), "{log}");
}

#[test]
fn wait_api_fails_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let cfg = config(&dir, &format!("[API]\nListenAddress = \"/ip4/0.0.0.0/tcp/{api}/http\"\n"));
    let start = Instant::now();
    let (out, text) = run(&cfg, &["wait-api", "--timeout=1s"]);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("api not ready after 1s: connecting to 127.0.0.1:{api}:")), "{text}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "took {took:?}");

    let (out, text) = run(&cfg, &["sync", "wait"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("connecting to 127.0.0.1:{api}")), "{text}");
}

#[test]
fn daemon_without_its_storage_url_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &dir,
        &format!(
            "[API]\nListenAddress = \"/ip4/127.0.0.1/tcp/{}/http\"\n[Storage]\n  [Storage.Postgresql]\n    [Storage.Postgresql.db]\n      SchemaName = \"lily\"\n      URLEnv = \"LILY_STORAGE_POSTGRESQL_DB_URL\"\n      PoolSize = 20\n",
            free_port()
        ),
    );
    let mut cmd = lily(&cfg, &["daemon"]);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "[Storage.Postgresql.db]: environment variable LILY_STORAGE_POSTGRESQL_DB_URL (named by its URLEnv) is not set or empty"
        ),
        "{err}"
    );
    // Set but empty is the same.
    let (out, text) = {
        let out = lily(&cfg, &["daemon"]).env("LILY_STORAGE_POSTGRESQL_DB_URL", "").output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        (out, text)
    };
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("LILY_STORAGE_POSTGRESQL_DB_URL"), "{text}");
}

#[test]
fn migrate_against_a_refusing_host_hides_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "");
    let port = free_port();
    for mode in ["disable", "require", "prefer"] {
        let url = format!("postgres://lily:hunter2-s3cret@127.0.0.1:{port}/lily?sslmode={mode}");
        let out = lily(&cfg, &["migrate", "--schema", "lily"]).env("LILY_DB", &url).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains(&format!("database postgres://lily:***@127.0.0.1:{port}/lily?sslmode={mode}: connecting (sslmode={mode}): error connecting to server")),
            "{text}"
        );
    }
    // verify-full is refused before any connection, also without a password shown.
    let url = format!("postgres://lily:hunter2-s3cret@127.0.0.1:{port}/lily?sslmode=verify-full");
    let out = lily(&cfg, &["migrate", "--schema=lily"]).env("LILY_DB", &url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("sslmode=verify-full is not supported by the stand-in") && !text.contains("hunter2"), "{text}");
    // No URL at all.
    let (out, text) = run(&cfg, &["migrate", "--schema=lily"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("set LILY_DB"), "{text}");
}

#[test]
fn the_other_commands() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "");
    for args in [&["--version"][..], &["version"][..]] {
        let (out, text) = run(&cfg, args);
        assert!(out.status.success(), "{text}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "lily version 0.0.0+standin (lily-e2e stand-in)\n");
    }
    let (out, text) = run(&cfg, &["job", "run", "--tasks=blocks", "watch"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("the stand-in runs no jobs; ignoring: lily job run --tasks=blocks watch"), "{text}");
    let (out, text) = run(&cfg, &["init", "--import-snapshot=/x.car"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("the stand-in cannot import snapshots; set importSnapshot.enabled=false"), "{text}");
    for args in [&["frobnicate"][..], &[][..], &["sync", "status"][..]] {
        let (out, text) = run(&cfg, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains("usage: lily <command>"), "{text}");
    }
    let (out, text) = run(&cfg, &["wait-api", "--timeout=soon"]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("invalid duration \"soon\""), "{text}");
}
