//! One line per action: plain text, or JSON lines `{"level","logger","msg"}` when
//! `GOLOG_LOG_FMT=json` (as the chart sets it for Lily's go-log). Information goes to
//! stdout, the error that ends a command to stderr.

use std::io::Write;

pub fn info(msg: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{}", line("info", msg));
}

pub fn warn(msg: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{}", line("warn", msg));
}

pub fn error(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", line("error", msg));
}

fn line(level: &str, msg: &str) -> String {
    if std::env::var("GOLOG_LOG_FMT").is_ok_and(|f| f == "json") {
        serde_json::json!({"level": level, "logger": "lily-standin", "msg": msg}).to_string()
    } else {
        format!("{:<5} lily-standin: {msg}", level.to_uppercase())
    }
}
