//! Children are tied to the harness's life, not to the thread that asked for them.

use std::time::Duration;

use super::*;

/// A child asked for by a thread that then exits (as tokio's blocking-pool threads do) runs
/// on: the death signal is tied to the spawner thread, which lives as long as the process.
#[test]
fn a_child_outlives_the_thread_that_asked_for_it() {
    let pid = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut cmd = tokio::process::Command::new("/bin/sleep");
            cmd.arg("600").process_group(0).kill_on_drop(false);
            spawn_tied(cmd).unwrap().id().unwrap() as i32
        })
    })
    .join()
    .unwrap();
    // Had the exited thread been the child's parent, the kernel would have sent it KILL by
    // now; give that signal a second to land before concluding it was not sent.
    let died = wait_pid_exit(pid, Duration::from_secs(1));
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
    assert!(!died, "the child died with the thread that asked for it");
}

/// Outside a tokio runtime there is no runtime to hand the child to: an error, not a panic.
#[test]
fn spawning_outside_a_runtime_is_an_error_not_a_panic() {
    let e = spawn_tied(tokio::process::Command::new("/bin/true")).unwrap_err();
    assert!(e.to_string().contains("runtime"), "{e}");
}
