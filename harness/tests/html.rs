//! The HTML report renders in a real browser (Debian's chromium, headless): the page's
//! script draws each case's steps and events, and the rendered DOM holds them.

use std::time::Duration;

use lily_e2e::report::{CaseOutcome, CaseReport, TimedEvent, TimedStep, Timeline};

fn chromium() -> std::path::PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .expect("chromium is not installed: `apt-get install chromium` (./ci/test.sh installs it)")
}

fn case(name: &str, outcome: CaseOutcome, events: &[(&str, f64)]) -> CaseReport {
    let mut r = CaseReport::skipped(name, "");
    r.outcome = outcome;
    r.duration = Duration::from_secs(30);
    r.timeline = Timeline {
        steps: vec![
            TimedStep { step: "1 (helm-upgrade)".into(), at: 0.0, took: 3.0, ok: true },
            TimedStep { step: "2 (runbook)".into(), at: 10.0, took: 1.0, ok: true },
            TimedStep { step: "3 (expect-pod)".into(), at: 11.0, took: 19.0, ok: true },
        ],
        events: events
            .iter()
            .map(|(reason, at)| TimedEvent {
                at: *at,
                reason: reason.to_string(),
                object: "Pod/lily-0".into(),
                message: format!("{reason} </script> <b>not markup</b>"),
                warning: true,
            })
            .collect(),
    };
    r.notes.push("pod Running 20.1s after runbook multi-attach".into());
    r
}

#[test]
fn the_report_renders_each_case_and_event_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let cases = [
        case("multi-attach/slow-unmount", CaseOutcome::Passed, &[("FailedAttachVolume", 5.5), ("SuccessfulAttachVolume", 25.0)]),
        case(
            "pvc-node-affinity-conflict/upgrade-moves-pod",
            CaseOutcome::Failed { step: "3 (expect-pod)".into(), message: "timed out".into() },
            &[("FailedScheduling", 4.0)],
        ),
    ];
    lily_e2e::report::html::write_html(&page, &cases, Duration::from_secs(60)).unwrap();
    let profile = dir.path().join("profile");
    let out = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    // Elements only the page's script creates:
    assert!(dom.contains(r#"data-rendered="2""#), "the script did not run:\n{dom}");
    for c in &cases {
        assert!(dom.contains(&format!(r#"data-case="{}""#, c.name)), "{} not rendered", c.name);
    }
    for reason in ["FailedAttachVolume", "SuccessfulAttachVolume", "FailedScheduling"] {
        assert!(dom.contains(&format!(r#"data-reason="{reason}""#)), "event {reason} not drawn");
    }
    assert!(dom.contains(r#"data-step="2 (runbook)""#) && dom.contains("pod Running 20.1s after runbook"), "steps or notes missing");
    assert!(!dom.contains("<b>not markup</b>"), "an event message was inserted as markup");
}
