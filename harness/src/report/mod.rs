//! What a run reports, and who it reports to.
//!
//! A suite run is a stream of [`Event`]s (environments up and down, cases and steps started
//! and finished); reporters turn it into what people and CI read: [`progress`] (the live
//! display), [`summary`] (one screen at the end), [`junit`] (for CI). The libtest adapter of
//! `tests/scenarios.rs` is one more reporter.
//!
//! Every case ends in one [`CaseOutcome`]: passed; failed (the chart or the cluster did not
//! do what the scenario expects); errored (the harness or its infrastructure broke); or
//! skipped, with the reason.

pub mod github;
pub mod html;
pub mod json;
pub mod junit;
pub mod progress;
pub mod summary;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use junit::write_junit;
pub use summary::summary;

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseOutcome {
    Passed,
    /// The chart or the cluster did not do what the scenario expects: `step` names the step,
    /// `message` what was expected, what was seen and the last state.
    Failed {
        step: String,
        message: String,
    },
    /// The harness or its infrastructure broke (a tool, a port, a process, the API).
    Errored {
        step: String,
        message: String,
    },
    /// The case cannot apply here; `reason` says why.
    Skipped {
        reason: String,
    },
}

impl CaseOutcome {
    /// `pass`, `fail`, `error`, `skip`.
    pub fn word(&self) -> &'static str {
        match self {
            CaseOutcome::Passed => "PASS",
            CaseOutcome::Failed { .. } => "FAIL",
            CaseOutcome::Errored { .. } => "ERROR",
            CaseOutcome::Skipped { .. } => "SKIP",
        }
    }
}

/// The result of one scenario case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// `install`, `pvc-node-affinity-conflict/upgrade-moves-pod`.
    pub name: String,
    pub duration: Duration,
    pub outcome: CaseOutcome,
    /// The slowest step and how long it took.
    pub slowest_step: Option<(String, Duration)>,
    pub artifacts: Option<PathBuf>,
    /// Facts that vary run to run (time to recovery); shown, never snapshotted.
    pub notes: Vec<String>,
    /// Conformance findings (guide drift, a runbook that did not recover), one line each;
    /// they do not fail the case.
    pub findings: Vec<String>,
    /// What happened when: the case's steps and its namespace's events.
    pub timeline: Timeline,
}

/// A case's steps and the cluster's events, in seconds from the case's start.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timeline {
    pub steps: Vec<TimedStep>,
    pub events: Vec<TimedEvent>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TimedStep {
    pub step: String,
    pub at: f64,
    pub took: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TimedEvent {
    pub at: f64,
    pub reason: String,
    pub object: String,
    pub message: String,
    pub warning: bool,
}

/// The name the reports used before the outcome taxonomy.
pub type CaseResult = CaseReport;

impl CaseReport {
    pub fn passed(&self) -> bool {
        matches!(self.outcome, CaseOutcome::Passed)
    }

    /// A case that never ran.
    pub fn skipped(name: &str, reason: impl Into<String>) -> CaseReport {
        CaseReport {
            name: name.to_string(),
            duration: Duration::ZERO,
            outcome: CaseOutcome::Skipped { reason: reason.into() },
            slowest_step: None,
            artifacts: None,
            notes: Vec::new(),
            findings: Vec::new(),
            timeline: Timeline::default(),
        }
    }

    /// A case the harness could not run (its environment did not start, it was interrupted).
    pub fn errored(name: &str, step: &str, message: impl Into<String>, duration: Duration) -> CaseReport {
        CaseReport {
            name: name.to_string(),
            duration,
            outcome: CaseOutcome::Errored { step: step.to_string(), message: message.into() },
            slowest_step: None,
            artifacts: None,
            notes: Vec::new(),
            findings: Vec::new(),
            timeline: Timeline::default(),
        }
    }
}

/// Counts per outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub errored: usize,
    pub skipped: usize,
}

impl Counts {
    pub fn of(reports: &[CaseReport]) -> Counts {
        let mut c = Counts::default();
        for r in reports {
            match r.outcome {
                CaseOutcome::Passed => c.passed += 1,
                CaseOutcome::Failed { .. } => c.failed += 1,
                CaseOutcome::Errored { .. } => c.errored += 1,
                CaseOutcome::Skipped { .. } => c.skipped += 1,
            }
        }
        c
    }

    /// Whether the run succeeded: nothing failed and nothing errored.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.errored == 0
    }
}

/// What happens during a suite run, in order.
#[derive(Debug)]
pub enum Event<'a> {
    /// An environment (cluster, PostgreSQL, chart repository) is starting for `cases`.
    EnvStarting {
        env: usize,
        cases: &'a [String],
    },
    EnvUp {
        env: usize,
        run_id: &'a str,
        kubeconfig: &'a Path,
    },
    EnvDown {
        env: usize,
    },
    CaseStarted {
        case: &'a str,
    },
    StepStarted {
        case: &'a str,
        step: &'a str,
    },
    StepFinished {
        case: &'a str,
        step: &'a str,
        took: Duration,
        ok: bool,
    },
    CaseFinished {
        report: &'a CaseReport,
    },
}

/// Something that listens to a run.
pub trait Reporter: Send + Sync {
    fn on(&self, event: &Event<'_>);
}

/// Several reporters as one.
#[derive(Default)]
pub struct Reporters(pub Vec<Box<dyn Reporter>>);

impl Reporter for Reporters {
    fn on(&self, event: &Event<'_>) {
        for r in &self.0 {
            r.on(event);
        }
    }
}

/// A reporter that ignores everything.
pub struct Silent;

impl Reporter for Silent {
    fn on(&self, _: &Event<'_>) {}
}

/// Log lines per event (tracing), for runs without a terminal.
pub struct Log;

impl Reporter for Log {
    fn on(&self, event: &Event<'_>) {
        match event {
            Event::EnvStarting { env, cases } => tracing::info!(env, cases = cases.len(), "starting an environment"),
            Event::EnvUp { env, run_id, .. } => tracing::info!(env, run_id, "environment up"),
            Event::EnvDown { env } => tracing::debug!(env, "environment down"),
            Event::CaseStarted { case } => tracing::debug!(case, "case started"),
            // Emitted inside the case's span, which names the case.
            Event::StepStarted { step, .. } => tracing::info!(step, "step"),
            Event::StepFinished { step, took, ok, .. } => tracing::debug!(step, ok, took_s = took.as_secs_f64(), "step done"),
            Event::CaseFinished { report } => tracing::debug!(case = report.name, outcome = report.outcome.word(), "case done"),
        }
    }
}
