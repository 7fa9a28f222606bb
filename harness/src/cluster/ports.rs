//! Loopback TCP ports for one control plane, chosen without races.
//!
//! Picking a port by binding port 0 and closing the socket at once lets two picks return
//! the same port. A [`Reservation`] keeps every chosen port bound until the caller releases
//! it just before the component that listens on it starts, so the ports of a run are
//! distinct, and no other process's `bind(0)` is handed one of them meanwhile. What is left
//! is the short window between the release and the component's own bind, in which another
//! process may take the port: [`bind_conflict`] recognises that failure in the component's
//! log, and the caller retries with a fresh port, at most [`ATTEMPTS`] times.

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::Path;

use super::ClusterError;
use crate::error::{Error, Result};

/// How many times a component is started with fresh ports before its port conflict is
/// reported.
pub const ATTEMPTS: usize = 3;

/// What a Go server (kube-apiserver, etcd, kwok) logs when its port was taken.
const IN_USE: &str = "address already in use";

/// Ports bound by this process until released.
#[derive(Debug, Default)]
pub struct Reservation {
    held: Vec<(String, TcpListener)>,
}

impl Reservation {
    pub fn new() -> Self {
        Reservation::default()
    }

    /// Binds `requested` on 127.0.0.1, or a free port if `None`, and holds it. `what` names
    /// its user, for errors and for [`Reservation::release`]. A requested port that is
    /// taken (also by this reservation) is [`ClusterError::PortBusy`].
    pub fn take(&mut self, requested: Option<u16>, what: &str) -> Result<u16> {
        let listener = match TcpListener::bind(("127.0.0.1", requested.unwrap_or(0))) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(ClusterError::PortBusy { port: requested.unwrap_or(0), what: what.to_string() }.into());
            }
            Err(e) => return Err(Error::Io { what: format!("bind a loopback port for {what}"), source: e }),
        };
        let port = listener.local_addr().map_err(Error::io("read a socket address"))?.port();
        self.held.push((what.to_string(), listener));
        Ok(port)
    }

    /// The held ports, in the order taken.
    pub fn ports(&self) -> Vec<u16> {
        self.held.iter().filter_map(|(_, l)| l.local_addr().ok()).map(|a| a.port()).collect()
    }

    /// Closes the port taken for `what`, just before its component binds it. Returns
    /// whether one was held.
    pub fn release(&mut self, what: &str) -> bool {
        let before = self.held.len();
        self.held.retain(|(w, _)| w != what);
        self.held.len() != before
    }
}

/// The length of a log file now (0 if it does not exist yet): where the next start's
/// output begins, for [`bind_conflict`].
pub fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// Whether what a component wrote to `log` from byte `from` on says its port was taken.
/// Only the output of the latest start counts: logs are appended to across retries.
pub fn bind_conflict(log: &Path, from: u64) -> bool {
    let Ok(mut f) = std::fs::File::open(log) else {
        return false;
    };
    let mut text = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut text).is_err() {
        return false;
    }
    String::from_utf8_lossy(&text).contains(IN_USE)
}

/// What to do after a component that listens on a reserved port exited while starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Its port was taken: start it again on a fresh one.
    Retry,
    /// Its port was taken and it is the one asked for, or the tries are used up.
    Busy,
    /// It failed for another reason.
    Failed,
}

/// Decides [`AfterExit`] for the `attempt`th start (from 1) of a component whose output
/// since that start begins at byte `from` of `log`; `fixed` if its port was asked for.
pub fn after_exit(log: &Path, from: u64, fixed: bool, attempt: usize) -> AfterExit {
    if !bind_conflict(log, from) {
        AfterExit::Failed
    } else if fixed || attempt >= ATTEMPTS {
        AfterExit::Busy
    } else {
        AfterExit::Retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_ports_are_distinct_and_stay_bound_until_released() {
        let mut r = Reservation::new();
        let ports: Vec<u16> = (0..32).map(|i| r.take(None, &format!("c{i}")).unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert_eq!(r.ports(), ports);
        // While held, nobody else can bind them.
        let busy = std::net::TcpListener::bind(("127.0.0.1", ports[5]));
        assert_eq!(busy.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::AddrInUse));
        // Released, the component can.
        assert!(r.release("c5"));
        assert!(!r.release("c5"), "released once");
        std::net::TcpListener::bind(("127.0.0.1", ports[5])).expect("a released port is free again");
        assert_eq!(r.ports().len(), 31);
    }

    #[test]
    fn a_requested_port_is_held_if_free() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let mut r = Reservation::new();
        assert_eq!(r.take(Some(port), "kube-apiserver --secure-port").unwrap(), port);
    }

    #[test]
    fn a_requested_busy_port_is_a_clear_error() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let err = Reservation::new().take(Some(port), "kube-apiserver --secure-port").unwrap_err();
        assert!(
            matches!(&err, Error::Cluster(ClusterError::PortBusy { port: p, what }) if *p == port && what == "kube-apiserver --secure-port"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("port {port} on 127.0.0.1 is already in use (kube-apiserver --secure-port); free it or pick another port")
        );
    }

    #[test]
    fn the_same_port_twice_in_one_reservation_is_busy() {
        let mut r = Reservation::new();
        let port = r.take(None, "a").unwrap();
        assert!(matches!(r.take(Some(port), "b"), Err(Error::Cluster(ClusterError::PortBusy { .. }))));
    }

    #[test]
    fn a_bind_conflict_counts_only_in_the_latest_start_s_output() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kube-apiserver.log");
        assert_eq!(log_len(&log), 0);
        assert!(!bind_conflict(&log, 0), "no log yet");
        std::fs::write(&log, "E1 run.go:72] \"command failed\" err=\"failed to listen on 127.0.0.1:6443: listen tcp 127.0.0.1:6443: bind: address already in use\"\n").unwrap();
        assert!(bind_conflict(&log, 0));
        let second = log_len(&log);
        std::fs::write(&log, format!("{}E2 etcd: connection refused\n", std::fs::read_to_string(&log).unwrap())).unwrap();
        assert!(!bind_conflict(&log, second), "the first start's conflict is not the second's");
    }

    #[test]
    fn a_taken_port_is_retried_a_bounded_number_of_times_unless_it_was_asked_for() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kube-apiserver.log");
        std::fs::write(&log, "listen tcp 127.0.0.1:40000: bind: address already in use\n").unwrap();
        assert_eq!(after_exit(&log, 0, false, 1), AfterExit::Retry);
        assert_eq!(after_exit(&log, 0, false, ATTEMPTS - 1), AfterExit::Retry);
        assert_eq!(after_exit(&log, 0, false, ATTEMPTS), AfterExit::Busy, "bounded");
        assert_eq!(after_exit(&log, 0, true, 1), AfterExit::Busy, "a port asked for is not swapped for another");
        std::fs::write(&log, "E etcd: context deadline exceeded\n").unwrap();
        assert_eq!(after_exit(&log, 0, false, 1), AfterExit::Failed);
    }
}
