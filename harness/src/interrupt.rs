//! One cancellation mechanism for the whole program: SIGINT and SIGTERM cancel a
//! [`CancellationToken`] that the suite engine, the case runner and the commands select on.
//!
//! The handlers are installed once, at program start ([`install`]), so a signal that
//! arrives between two waits is not lost.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

static TOKEN: OnceLock<CancellationToken> = OnceLock::new();
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Installs the SIGINT/SIGTERM handlers on `handle`'s runtime (once) and returns the token
/// they cancel.
pub fn install(handle: &tokio::runtime::Handle) -> CancellationToken {
    TOKEN
        .get_or_init(|| {
            let token = CancellationToken::new();
            let t = token.clone();
            let _guard = handle.enter();
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
            let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("a SIGINT handler");
            handle.spawn(async move {
                let sig = tokio::select! {
                    _ = int.recv() => libc::SIGINT,
                    _ = term.recv() => libc::SIGTERM,
                };
                SIGNAL.store(sig, Ordering::SeqCst);
                tracing::warn!("interrupted; stopping");
                t.cancel();
            });
            token
        })
        .clone()
}

/// The token, once [`install`]ed; otherwise one that is never cancelled.
pub fn token() -> CancellationToken {
    TOKEN.get().cloned().unwrap_or_default()
}

/// The signal that cancelled the run, if one did.
pub fn signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The conventional exit status after a signal: 128 + its number (130, 143).
pub fn exit_status() -> Option<u8> {
    signal().map(|s| (128 + s) as u8)
}
