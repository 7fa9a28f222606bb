//! The built wrapper end to end: a bundle and a process file in, capabilities out, and the
//! real runtime (a stand-in script here) run with the arguments unchanged.

use std::path::Path;
use std::process::Command;

/// A stand-in runc that writes its arguments, one per line, to `$OUT`.
fn fake_runc(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("runc");
    std::fs::write(&p, "#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" > \"$OUT\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn wrapper(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runc-caps"));
    c.env("RUNC_CAPS_RUNC", fake_runc(dir)).env("OUT", dir.join("args")).env("RUNC_CAPS_BOUNDING", "000001fffeffffff");
    c
}

fn caps(all: bool) -> serde_json::Value {
    let list: Vec<&str> = if all { runc_caps::CAPABILITIES.to_vec() } else { vec!["CAP_CHOWN", "CAP_KILL"] };
    serde_json::json!({"bounding": list, "effective": list, "permitted": list})
}

#[test]
fn privileged_create_loses_what_the_engine_lacks_and_runc_gets_the_same_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), serde_json::json!({"process": {"capabilities": caps(true)}}).to_string()).unwrap();
    let args = ["--root", "/r", "--log-format", "json", "create", "--bundle", bundle.to_str().unwrap(), "--pid-file", "/p", "c1"];
    let st = wrapper(dir.path()).args(args).status().unwrap();
    assert!(st.success());
    let seen = std::fs::read_to_string(dir.path().join("args")).unwrap();
    // The first line is the script's own path (a script's $0), then the arguments.
    assert_eq!(seen.lines().skip(1).collect::<Vec<_>>(), args.to_vec());
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    for set in ["bounding", "effective", "permitted"] {
        let list = config["process"]["capabilities"][set].as_array().unwrap();
        assert!(!list.contains(&"CAP_SYS_RESOURCE".into()), "{set}: {list:?}");
        assert!(list.contains(&"CAP_SYS_ADMIN".into()), "{set}: {list:?}");
    }
}

#[test]
fn privileged_exec_process_file_is_trimmed_and_a_plain_one_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let process = dir.path().join("process.json");
    std::fs::write(&process, serde_json::json!({"args": ["sh"], "capabilities": caps(true)}).to_string()).unwrap();
    let st = wrapper(dir.path()).args(["exec", "--process", process.to_str().unwrap(), "--detach", "c1"]).status().unwrap();
    assert!(st.success());
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&process).unwrap()).unwrap();
    assert!(!p["capabilities"]["effective"].as_array().unwrap().contains(&"CAP_SYS_RESOURCE".into()));

    let plain = serde_json::json!({"args": ["sh"], "capabilities": caps(false)}).to_string();
    std::fs::write(&process, &plain).unwrap();
    let st = wrapper(dir.path()).args(["exec", "-p", process.to_str().unwrap(), "c1"]).status().unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read_to_string(&process).unwrap(), plain, "a non-privileged process is byte for byte the same");
}

#[test]
fn the_runtime_exit_status_is_the_wrappers_and_errors_name_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    // runc's own failure passes through (exec replaces the wrapper).
    let failing = dir.path().join("failing-runc");
    std::fs::write(&failing, "#!/bin/sh\necho 'runc: boom' >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = wrapper(dir.path()).env("RUNC_CAPS_RUNC", &failing).args(["state", "c1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "runc: boom\n");

    // A bundle without config.json: the wrapper says which file, and runc is not run.
    let out = wrapper(dir.path()).args(["create", "--bundle", "/nonexistent/bundle", "c1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("runc-caps: read /nonexistent/bundle/config.json: "), "{err}");
    assert!(!dir.path().join("args").exists());

    let out = wrapper(dir.path()).env("RUNC_CAPS_RUNC", dir.path().join("missing")).args(["state", "c1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot exec"), "{}", String::from_utf8_lossy(&out.stderr));
}
