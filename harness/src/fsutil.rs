//! Small file helpers shared across the harness. A leaf: it uses nothing of the harness
//! but errors.

use std::path::Path;

use crate::error::{Error, Result};

/// Writes a file only its owner can read (keys, kubeconfigs, passwords).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("write {}", path.display())))?;
    f.write_all(data).map_err(Error::io(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_owner_only_and_replaced_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("key");
        write_private(&p, b"a long first version").unwrap();
        write_private(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(write_private(&tmp.path().join("missing/key"), b"x").is_err());
    }
}
