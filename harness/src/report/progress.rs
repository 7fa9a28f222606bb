//! The live display for a terminal: one line per running case (its current step and how
//! long it has run), above a bar of finished cases; log lines and case results print above
//! it, never on it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{Event, Reporter};

/// The display of this process, once one exists: log lines go above it ([`LogWriter`]).
static ACTIVE: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();

/// A writer for log lines (a `tracing_subscriber` `MakeWriter`): above the live display when
/// there is one, else straight to stderr.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match ACTIVE.get() {
            Some(m) => m.suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

pub struct Progress {
    multi: MultiProgress,
    total: ProgressBar,
    running: Mutex<BTreeMap<String, (ProgressBar, Instant)>>,
}

impl Progress {
    /// `cases` is the number of cases the run will report.
    pub fn new(cases: usize) -> Progress {
        let multi = MultiProgress::new();
        let total = multi.add(ProgressBar::new(cases as u64));
        total.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}").expect("static template"),
        );
        total.enable_steady_tick(Duration::from_millis(200));
        let _ = ACTIVE.set(multi.clone());
        Progress { multi, total, running: Mutex::new(BTreeMap::new()) }
    }

    /// Prints a line above the display.
    pub fn println(&self, line: &str) {
        let _ = self.multi.println(line);
    }

    /// A writer for log lines that prints above the display.
    pub fn multi(&self) -> &MultiProgress {
        &self.multi
    }

    pub fn finish(&self) {
        for (_, (b, _)) in std::mem::take(&mut *self.running.lock().unwrap_or_else(|e| e.into_inner())) {
            b.finish_and_clear();
        }
        self.total.finish_and_clear();
    }
}

impl Reporter for Progress {
    fn on(&self, event: &Event<'_>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::EnvStarting { cases, .. } => self.total.set_message(format!("starting an environment for {} case(s)", cases.len())),
            Event::EnvUp { .. } => self.total.set_message(""),
            Event::CaseStarted { case } => {
                let b = self.multi.insert_before(&self.total, ProgressBar::new_spinner());
                b.set_style(ProgressStyle::with_template("  {spinner} {prefix:.bold} [{elapsed}] {wide_msg}").expect("static template"));
                b.set_prefix(case.to_string());
                b.enable_steady_tick(Duration::from_millis(200));
                running.insert(case.to_string(), (b, Instant::now()));
            }
            Event::StepStarted { case, step } => {
                if let Some((b, _)) = running.get(*case) {
                    b.set_message(step.to_string());
                }
            }
            Event::CaseFinished { report } => {
                if let Some((b, _)) = running.remove(&report.name) {
                    b.finish_and_clear();
                    self.multi.remove(&b);
                }
                self.total.inc(1);
                let _ = self.multi.println(format!("{} {} ({:.1}s)", report.outcome.word(), report.name, report.duration.as_secs_f64()));
            }
            Event::EnvDown { .. } | Event::StepFinished { .. } => {}
        }
    }
}
