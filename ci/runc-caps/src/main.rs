//! `runc-caps [RUNC ARGS...]`: see the library's documentation. Environment:
//! - `RUNC_CAPS_RUNC`: the real runc (default: the first runc in /usr/sbin, /usr/bin, ...);
//! - `RUNC_CAPS_BOUNDING`: a bounding set to use instead of this process's own (tests);
//! - `RUNC_CAPS_LOG`: a file to append a line to for each container trimmed.

use std::io::Write;
use std::os::unix::process::CommandExt;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        let mut msg = format!("runc-caps: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        eprintln!("{msg}");
        std::process::exit(1);
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Caps(#[from] runc_caps::Error),
    #[error("no runc found (looked in /usr/sbin, /usr/bin, /usr/local/sbin, /usr/local/bin); set RUNC_CAPS_RUNC")]
    NoRunc,
    #[error("cannot exec {0}")]
    Exec(String, #[source] std::io::Error),
}

fn run(args: &[String]) -> Result<(), Error> {
    let own = std::env::current_exe().ok();
    let runc = runc_caps::real_runc(own.as_deref()).ok_or(Error::NoRunc)?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let target = runc_caps::target(args, &cwd);
    if target != runc_caps::Target::None {
        let bounding = match std::env::var("RUNC_CAPS_BOUNDING") {
            Ok(mask) if !mask.is_empty() => runc_caps::Bounding::parse(&mask)?,
            _ => runc_caps::Bounding::own()?,
        };
        let removed = runc_caps::apply(&target, bounding)?;
        if !removed.is_empty() {
            if let Some(log) = std::env::var_os("RUNC_CAPS_LOG").filter(|l| !l.is_empty()) {
                if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
                    let _ = writeln!(f, "{target:?}: removed {}", removed.join(","));
                }
            }
        }
    }
    let e = std::process::Command::new(&runc).arg0("runc").args(args).exec();
    Err(Error::Exec(runc.display().to_string(), e))
}
