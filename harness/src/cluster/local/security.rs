//! What keeps a local control plane closed to the machine's other users.
//!
//! - etcd has no TCP port: it serves its clients on a Unix socket in the run's cluster
//!   directory, which only its owner may enter (0700, in a 0700 run directory); another
//!   user cannot reach the socket, let alone connect (connecting needs write permission on
//!   the socket too, which etcd gives its owner only). Its peer listener, which a
//!   one-member cluster never dials, is a Unix socket there too. TLS with client
//!   certificates on that socket would keep out no one the directory does not, and cost
//!   the API server a TLS handshake for each of its dozens of etcd connections at start.
//! - The API server encrypts Secrets at rest (secretbox, a random key per run), so etcd's
//!   data directory holds no Secret in plain text.
//! - Every file the control plane's set-up writes is readable by its owner only.

use std::path::Path;

use base64::Engine;

use crate::error::{Error, Result};
use crate::fsutil::write_private;

/// The name of etcd's client socket in the cluster directory.
pub(super) const ETCD_SOCKET: &str = "etcd.sock";

/// etcd's peer URL. etcd wants `host:port` for peer URLs and listens on a `unix://` one's
/// host part as a path relative to its working directory (the cluster directory).
pub(super) const ETCD_PEER_URL: &str = "unix://etcd-peer.sock:0";

/// etcd's advertised client URL: etcd wants `host:port` here and only records it (nothing
/// dials it; the API server is given the socket's path).
pub(super) const ETCD_ADVERTISE_URL: &str = "unix://localhost:0";

/// The longest path a Unix socket address holds (`sun_path`, less its NUL).
const SUN_PATH_MAX: usize = 107;

/// Fails early, with what to do, if etcd's socket path is too long to bind.
pub(super) fn check_socket_path(socket: &Path) -> Result<()> {
    let len = socket.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(Error::Invalid(format!(
            "etcd's socket path {} is {len} bytes, longer than a Unix socket address holds ({SUN_PATH_MAX}); \
             point TMPDIR at a shorter directory",
            socket.display()
        )));
    }
    Ok(())
}

/// The API server's encryption configuration: Secrets sealed with secretbox (XSalsa20 and
/// Poly1305) under `key`; nothing else is encrypted, and there is no plain-text fallback.
pub(super) fn encryption_config(key: &[u8; 32]) -> String {
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\n\
         kind: EncryptionConfiguration\n\
         resources:\n\
         - resources: [secrets]\n\
         \x20 providers:\n\
         \x20 - secretbox:\n\
         \x20     keys:\n\
         \x20     - name: run\n\
         \x20       secret: {key}\n"
    )
}

/// Writes [`encryption_config`] with a fresh random key, owner-only.
pub(super) fn write_encryption_config(path: &Path) -> Result<()> {
    let mut key = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut key);
    write_private(path, encryption_config(&key).as_bytes())
}

/// Makes `dir` (the cluster directory) owner-only, whatever the umask made it.
pub(super) fn make_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(Error::io(format!("chmod {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::super::{apiserver_args, etcd_args, Layout, Ports, Timings};
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::fs::PermissionsExt;

    fn layout() -> Layout {
        Layout::new(Path::new("/tmp/lily-e2e-r0/cluster"))
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
        let prefix = format!("--{name}=");
        let found: Vec<&str> = args.iter().filter_map(|a| a.strip_prefix(&prefix)).collect();
        assert!(found.len() <= 1, "--{name} given twice in {args:?}");
        found.first().copied()
    }

    #[test]
    fn etcd_listens_only_on_sockets_in_the_cluster_directory() {
        let a = strings(etcd_args(&layout()));
        assert_eq!(flag(&a, "listen-client-urls"), Some("unix:///tmp/lily-e2e-r0/cluster/etcd.sock"));
        assert_eq!(flag(&a, "listen-peer-urls"), Some(ETCD_PEER_URL));
        assert_eq!(flag(&a, "initial-cluster"), Some(format!("lily-e2e={ETCD_PEER_URL}").as_str()));
        assert!(!a.iter().any(|x| x.contains("http://") || x.contains("127.0.0.1")), "no TCP listener: {a:?}");
    }

    #[test]
    fn the_apiserver_reaches_etcd_by_its_socket_and_encrypts_secrets() {
        let a = strings(apiserver_args(&layout(), &Ports { apiserver: 6443 }, &Timings::default()));
        assert_eq!(flag(&a, "etcd-servers"), Some("unix:///tmp/lily-e2e-r0/cluster/etcd.sock"));
        assert_eq!(flag(&a, "encryption-provider-config"), Some("/tmp/lily-e2e-r0/cluster/encryption.yaml"));
    }

    #[test]
    fn the_encryption_config_seals_secrets_with_the_key_and_has_no_plain_fallback() {
        let text = encryption_config(&[7u8; 32]);
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(doc["kind"], "EncryptionConfiguration");
        let rule = &doc["resources"][0];
        assert_eq!(rule["resources"], serde_yaml::from_str::<serde_yaml::Value>("[secrets]").unwrap());
        let providers = rule["providers"].as_sequence().unwrap();
        assert_eq!(providers.len(), 1, "secretbox only, no identity fallback: {text}");
        let secret = providers[0]["secretbox"]["keys"][0]["secret"].as_str().unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(secret).unwrap(), [7u8; 32]);
    }

    #[test]
    fn each_run_gets_its_own_key_in_an_owner_only_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a.yaml"), tmp.path().join("b.yaml"));
        write_encryption_config(&a).unwrap();
        write_encryption_config(&b).unwrap();
        assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn the_cluster_directory_becomes_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        make_private(tmp.path()).unwrap();
        assert_eq!(std::fs::metadata(tmp.path()).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_socket_path_too_long_to_bind_is_refused_with_what_to_do() {
        check_socket_path(&layout().etcd_socket).unwrap();
        let long = Path::new("/tmp").join("d".repeat(100)).join(ETCD_SOCKET);
        let err = check_socket_path(&long).unwrap_err().to_string();
        assert!(err.contains("TMPDIR"), "{err}");
    }
}
