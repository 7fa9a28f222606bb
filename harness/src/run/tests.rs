use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_run_directory_and_its_owner_file_are_owner_only() {
    let run = Run::create(false).unwrap();
    assert_eq!(mode(run.dir()), 0o700, "{}", run.dir().display());
    assert_eq!(mode(&run.dir().join(OWNER_FILE)), 0o600);
    assert_eq!(std::fs::read_to_string(run.dir().join(OWNER_FILE)).unwrap(), run.owner());
}

#[test]
fn a_group_let_through_may_enter_but_not_list() {
    let run = Run::create(false).unwrap();
    let gid = std::fs::metadata(run.dir()).unwrap().gid();
    run.let_group_through(gid).unwrap();
    assert_eq!(mode(run.dir()), 0o710);
}
