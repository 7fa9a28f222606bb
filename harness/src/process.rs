//! Process supervision: every child in its own process group, its output in a log file,
//! and teardown by TERM, a grace period, then KILL, on every exit path; and every child
//! dies with the harness, even a SIGKILLed one ([`spawn_tied`]).

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::run::{RunId, RUN_ENV};

/// What can go wrong with a supervised child.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The child exited before it was ready; `tail` is the end of its log.
    #[error("{name} exited before it was ready ({status}); its log is {}{}", .log.display(), tail_suffix(.tail))]
    Exited { name: String, status: String, log: PathBuf, tail: String },
}

/// The end of a tool's output: its last `max_lines` non-empty lines, at most `max_chars`
/// characters (cut at a line start), trimmed. What a failed tool's message carries.
pub fn tail_of(text: &str, max_lines: usize, max_chars: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out: Vec<&str> = Vec::new();
    let mut len = 0;
    for l in lines.iter().rev().take(max_lines) {
        if len + l.len() + 1 > max_chars && !out.is_empty() {
            break;
        }
        len += l.len() + 1;
        out.push(l);
    }
    out.reverse();
    out.join("\n").trim().to_string()
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; it ended with:\n{}", tail.trim_end())
    }
}

/// The default grace period between TERM and KILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// How to start one supervised child.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Run as this uid/gid (PostgreSQL refuses to run as root).
    pub user: Option<(u32, u32)>,
    /// The signal that asks the child to stop; TERM for most, INT for a fast PostgreSQL shutdown.
    pub stop_signal: Signal,
    /// How long to wait after the stop signal before KILL.
    pub grace: Duration,
}

impl ChildSpec {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        ChildSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            user: None,
            stop_signal: Signal::SIGTERM,
            grace: GRACE,
        }
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, it: I) -> Self {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }
    pub fn stop_signal(mut self, s: Signal) -> Self {
        self.stop_signal = s;
        self
    }
    pub fn grace(mut self, g: Duration) -> Self {
        self.grace = g;
        self
    }
}

/// A running child. Dropping it without [`Supervised::terminate`] still stops its whole
/// process group (TERM, grace, KILL), so a panic leaks nothing.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    child: tokio::process::Child,
    pgid: Pid,
    log: PathBuf,
    stop_signal: Signal,
    grace: Duration,
    done: bool,
}

impl Supervised {
    /// Starts `spec` in a new process group, stdout and stderr appended to
    /// `<log_dir>/<name>.log` (the directory created if need be), with `run_id` in its
    /// environment ([`RUN_ENV`]). Callers pass their run's id and `<run dir>/logs`.
    pub fn spawn(spec: ChildSpec, run_id: &RunId, log_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(log_dir).map_err(Error::io(format!("create {}", log_dir.display())))?;
        let log = log_dir.join(format!("{}.log", spec.name));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log)
            .map_err(Error::io(format!("open {}", log.display())))?;
        let err = out.try_clone().map_err(Error::io("duplicate a log file handle"))?;
        if let Some((uid, gid)) = spec.user {
            let _ = nix::unistd::chown(&log, Some(uid.into()), Some(gid.into()));
        }
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env(RUN_ENV, run_id.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &spec.cwd {
            cmd.current_dir(dir);
        }
        if let Some((uid, gid)) = spec.user {
            cmd.uid(uid).gid(gid);
        }
        let child = spawn_tied(cmd).map_err(Error::io(format!("start {} ({})", spec.name, spec.program.display())))?;
        let pid = child.id().expect("a just-spawned child has a pid") as i32;
        tracing::debug!(name = %spec.name, pid, log = %log.display(), "started");
        Ok(Supervised {
            name: spec.name,
            child,
            pgid: Pid::from_raw(pid),
            log,
            stop_signal: spec.stop_signal,
            grace: spec.grace,
            done: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn pid(&self) -> i32 {
        self.pgid.as_raw()
    }
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// If the child has exited, an error naming it, its status and its log's tail.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.done = true;
                // Members of its group may still run.
                let _ = killpg(self.pgid, Signal::SIGKILL);
                Err(ProcessError::Exited {
                    name: self.name.clone(),
                    status: status.to_string(),
                    log: self.log.clone(),
                    tail: log_tail(&self.log, 15),
                }
                .into())
            }
            _ => Ok(()),
        }
    }

    /// Resolves when the child exits (for racing against readiness waits).
    pub async fn exited(&mut self) -> Error {
        let status = self.child.wait().await;
        self.done = true;
        let _ = killpg(self.pgid, Signal::SIGKILL);
        ProcessError::Exited {
            name: self.name.clone(),
            status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            log: self.log.clone(),
            tail: log_tail(&self.log, 15),
        }
        .into()
    }

    /// Stops the process group: the stop signal, up to the grace period, then KILL.
    pub async fn terminate(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let _ = killpg(self.pgid, self.stop_signal);
        let exited = tokio::time::timeout(self.grace, self.child.wait()).await;
        if exited.is_err() {
            tracing::warn!(name = %self.name, "did not stop within {:?}; killing", self.grace);
        }
        // KILL the group in either case: children of the leader may outlive it.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let _ = self.child.wait().await;
        self.done = true;
        Ok(())
    }

    /// Sends KILL to the whole process group now, without waiting: for stopping several
    /// children at once (then [`Supervised::kill`] or dropping each waits for it).
    pub fn start_kill(&mut self) {
        if !self.done {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }

    /// Stops the process group at once, with no grace (KILL), and waits for the child.
    pub async fn kill(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.start_kill();
        let _ = self.child.wait().await;
        self.done = true;
        Ok(())
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = killpg(self.pgid, self.stop_signal);
        if !wait_pid_exit(self.pgid.as_raw(), self.grace) {
            tracing::warn!(name = %self.name, "did not stop within {:?}; killing", self.grace);
        }
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
        self.done = true;
    }
}

/// Starts `cmd` so that it dies with the harness: the child asks the kernel for SIGKILL
/// when its parent goes (`PR_SET_PDEATHSIG`, set before exec), and gives up if the harness
/// is already gone by then (`getppid()` no longer names it). That covers a SIGKILLed
/// harness, where no destructor, signal handler or `clean` runs.
///
/// The death signal fires when the *thread* that forked the child exits, not the process:
/// a child forked on a tokio worker or blocking-pool thread (which come and go: the pool
/// retires idle threads) would be killed when that thread retires, in mid-run. So every
/// child is forked by one dedicated thread that lives as long as the process (it waits on a
/// channel that is never closed), and the caller gets back a [`tokio::process::Child`] of
/// its own runtime. Call it from within a tokio runtime.
///
/// The kernel clears the setting when credentials change; std runs `pre_exec` after the
/// uid/gid switch, so a child run as another user (PostgreSQL as `nobody`) keeps it. A
/// set-uid or file-capability program would lose it at exec; none is started.
///
/// What the death signal does not reach: only the child itself gets it (the setting is not
/// inherited across fork), not its own children. The control plane's components (etcd,
/// kube-*, kwok) start none; PostgreSQL's backends exit on their own when their postmaster
/// dies; anything else a child started outlives a SIGKILLed harness until `lily-e2e clean`
/// (it inherits [`RUN_ENV`], so `clean` finds it). Containers get no death signal at all:
/// see [`crate::postgres::container`].
pub fn spawn_tied(mut cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: the closure runs between fork and exec: it only makes two async-signal-safe
    // system calls and allocates nothing (its error is a raw OS error).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The harness died before the death signal was set: the child was reparented.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let gone = || std::io::Error::other("the harness's spawner thread is gone");
    let (reply, answer) = mpsc::sync_channel(1);
    spawner().send(SpawnRequest { cmd, runtime, reply }).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// A child to fork on the spawner thread, in `runtime`'s context (tokio registers the
/// child with the runtime that is current when it is spawned).
struct SpawnRequest {
    cmd: tokio::process::Command,
    runtime: tokio::runtime::Handle,
    reply: mpsc::SyncSender<std::io::Result<tokio::process::Child>>,
}

/// The spawner thread's queue, started on first use. The sender is never dropped, so the
/// thread never leaves its loop: it lives exactly as long as the process.
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("lily-e2e-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    let _context = req.runtime.enter();
                    let _ = req.reply.send(req.cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        tx
    })
}

/// Blocks until `pid` exits or `timeout` passes, with a pidfd and `poll`: no sleep loop.
/// Returns whether it exited. Usable from `Drop` and from `clean`.
pub fn wait_pid_exit(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return true; // already gone
    }
    // SAFETY: the fd was just returned to us and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return true,
            Ok(_) if Instant::now() >= deadline => return false,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// TERM to each pid, up to `grace` for them all to exit, then KILL to those left.
/// Used by `clean` on processes of a run whose owner died.
pub fn terminate_pids(pids: &[i32], grace: Duration) {
    use nix::sys::signal::kill;
    for &p in pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    for &p in pids {
        let left = deadline.saturating_duration_since(Instant::now());
        if !wait_pid_exit(p, left) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
    for &p in pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// The last `lines` lines of a log file (reads at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a short-lived command to completion in its own process group, killing the group if
/// `timeout` passes. Returns its output. For tool invocations (helm, kubectl, go).
pub async fn run_command(
    program: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    cwd: Option<&Path>,
    timeout: Duration,
) -> std::io::Result<std::process::Output> {
    run_command_as(program, args, env, cwd, None, timeout).await
}

/// [`run_command`] as another uid/gid (PostgreSQL's `initdb` refuses to run as root).
pub async fn run_command_as(
    program: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    cwd: Option<&Path>,
    user: Option<(u32, u32)>,
    timeout: Duration,
) -> std::io::Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let child = spawn_tied(cmd)?;
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    let guard = GroupGuard(pid);
    let out = tokio::time::timeout(timeout, child.wait_with_output()).await;
    drop(guard);
    match out {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{} did not finish within {}s", program.display(), timeout.as_secs()),
        )),
    }
}

/// Kills a short-lived command's process group when dropped (timeout, cancellation, panic).
struct GroupGuard(Option<Pid>);
impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = killpg(p, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_logs_to_its_file_with_the_run_id_in_its_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        let id = RunId::new();
        let spec = ChildSpec::new("echo", "/bin/sh").args(["-c", "echo \"run=$LILY_E2E_RUN_ID\""]);
        let mut child = Supervised::spawn(spec, &id, &logs).unwrap();
        assert_eq!(child.log(), logs.join("echo.log"));
        let Error::Process(ProcessError::Exited { status, .. }) = child.exited().await else { panic!("not an exit") };
        assert!(status.contains("exit status: 0"), "{status}");
        assert_eq!(std::fs::read_to_string(logs.join("echo.log")).unwrap(), format!("run={id}\n"));
    }
}

#[cfg(test)]
mod tied_tests;
