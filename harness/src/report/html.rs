//! One self-contained HTML file per run: per case, a timeline of its steps and of its
//! namespace's events (when the pod went Pending, the FailedScheduling / FailedAttachVolume
//! events, the runbook, the recovery), so a maintainer sees at a glance where the time went
//! and what recovered when. The data is embedded as JSON; a small script draws it (no
//! network, no external files).

use std::path::Path;

use serde_json::json;

use super::{CaseOutcome, CaseReport, Counts};
use crate::error::{Error, Result};

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lily-e2e report</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.05em;margin:1.4em 0 .3em}
.PASS{color:#176b2c}.FAIL,.ERROR{color:#b3261e}.SKIP{color:#777}
svg{display:block;margin:.3em 0;background:#fafafa;border:1px solid #ddd}
.step rect{fill:#8ab4f8}.step.failed rect{fill:#f28b82}
.event line{stroke:#555}.event.warning line{stroke:#d93025}
table{border-collapse:collapse;margin:.3em 0 1em}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
.msg{font-family:monospace;font-size:12px;white-space:pre-wrap}
</style></head><body>
<h1 id="title"></h1><div id="cases"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
const data = JSON.parse(document.getElementById('data').textContent);
const NS = 'http://www.w3.org/2000/svg';
function el(tag, attrs, text, ns) {
  const e = ns ? document.createElementNS(NS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
document.getElementById('title').textContent = 'lily-e2e: ' + data.summary;
const root = document.getElementById('cases');
for (const c of data.cases) {
  const sec = el('section', {'class': 'case', 'data-case': c.name});
  sec.appendChild(el('h2', {'class': c.outcome}, c.outcome + ' ' + c.name + ' (' + c.seconds.toFixed(1) + 's)'));
  if (c.message) sec.appendChild(el('div', {'class': 'msg'}, c.message));
  const end = Math.max(c.seconds, ...c.timeline.steps.map(s => s.at + s.took), ...c.timeline.events.map(e => e.at), 1);
  const W = 900, rowH = 14, rows = c.timeline.steps.length, H = rows * rowH + 40;
  const x = t => 10 + (W - 20) * Math.max(0, t) / end;
  const svg = el('svg', {width: W, height: H, viewBox: '0 0 ' + W + ' ' + H}, undefined, true);
  c.timeline.steps.forEach((s, i) => {
    const g = el('g', {'class': 'step' + (s.ok ? '' : ' failed'), 'data-step': s.step}, undefined, true);
    const r = el('rect', {x: x(s.at), y: 4 + i * rowH, width: Math.max(2, x(s.at + s.took) - x(s.at)), height: rowH - 3}, undefined, true);
    r.appendChild(el('title', {}, s.step + ': ' + s.took.toFixed(1) + 's at ' + s.at.toFixed(1) + 's', true));
    g.appendChild(r);
    g.appendChild(el('text', {x: x(s.at + s.took) + 3, y: 4 + i * rowH + 10, 'font-size': 10}, s.step, true));
    svg.appendChild(g);
  });
  for (const e of c.timeline.events) {
    const g = el('g', {'class': 'event' + (e.warning ? ' warning' : ''), 'data-reason': e.reason}, undefined, true);
    const l = el('line', {x1: x(e.at), x2: x(e.at), y1: 2, y2: H - 2}, undefined, true);
    l.appendChild(el('title', {}, e.at.toFixed(1) + 's ' + e.reason + ' ' + e.object + ': ' + e.message, true));
    g.appendChild(l);
    svg.appendChild(g);
  }
  sec.appendChild(svg);
  const t = el('table', {'class': 'events'});
  t.appendChild(el('tr', {})).append(el('th', {}, 'at'), el('th', {}, 'event'), el('th', {}, 'object'), el('th', {}, 'message'));
  const rows2 = [...c.timeline.steps.map(s => ({at: s.at, what: 'step ' + s.step + (s.ok ? '' : ' (failed)'), obj: '', msg: s.took.toFixed(1) + 's'})),
                 ...c.timeline.events.map(e => ({at: e.at, what: e.reason, obj: e.object, msg: e.message}))].sort((a, b) => a.at - b.at);
  for (const r of rows2) t.appendChild(el('tr', {})).append(el('td', {}, r.at.toFixed(1) + 's'), el('td', {}, r.what), el('td', {}, r.obj), el('td', {'class': 'msg'}, r.msg));
  sec.appendChild(t);
  for (const f of c.findings.concat(c.notes)) sec.appendChild(el('div', {'class': 'note'}, f));
  root.appendChild(sec);
}
document.body.setAttribute('data-rendered', String(data.cases.length));
</script></body></html>
"#;

/// Writes the report for `results`.
pub fn write_html(path: &Path, results: &[CaseReport], wall: std::time::Duration) -> Result<()> {
    let c = Counts::of(results);
    let cases: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let message = match &r.outcome {
                CaseOutcome::Failed { step, message } | CaseOutcome::Errored { step, message } => Some(format!("step {step}: {message}")),
                CaseOutcome::Skipped { reason } => Some(reason.clone()),
                CaseOutcome::Passed => None,
            };
            json!({
                "name": r.name, "outcome": r.outcome.word(), "seconds": r.duration.as_secs_f64(), "message": message,
                "findings": r.findings, "notes": r.notes, "timeline": r.timeline,
            })
        })
        .collect();
    let summary =
        format!("{} passed, {} failed, {} errored, {} skipped in {:.0}s", c.passed, c.failed, c.errored, c.skipped, wall.as_secs_f64());
    let data = serde_json::to_string(&json!({"summary": summary, "cases": cases})).map_err(Error::json("the report"))?;
    // Inside a <script> element: no `</` may close it early.
    let html = PAGE.replace("__DATA__", &data.replace("</", "<\\/"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    }
    std::fs::write(path, html).map_err(Error::io(format!("write {}", path.display())))
}
