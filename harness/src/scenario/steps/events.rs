//! Event steps: `expect-event` and `expect-no-event`, matched against a catalogued wording
//! (for the running Kubernetes version) or a regex.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Event;
use kube::api::Api;
use kube::runtime::watcher;
use regex::Regex;

use super::{object_ref, CaseCx, Cx, Operation, StepError, StepResult, Tpl, DEFAULT_WAIT};
use crate::error::Error;
use crate::scenario::catalogue;
use crate::scenario::compile::LoadError;
use crate::scenario::model;
use crate::wait::WaitError;

#[derive(Debug)]
enum Match {
    /// A catalogue entry: its wording for the cluster's version.
    Catalogue(String),
    Regex(Regex),
    Any,
}

#[derive(Debug)]
pub struct ExpectEvent {
    kind: String,
    name: Tpl,
    reason: String,
    matcher: Match,
    timeout: Duration,
    timeout_text: Option<String>,
    /// `expect-no-event`: no such event may arrive within the timeout.
    absent: bool,
}

impl ExpectEvent {
    pub fn compile(s: &model::ExpectEvent, absent: bool, cx: &mut Cx<'_>) -> Result<Box<dyn Operation>, LoadError> {
        let (kind, name) = object_ref(&s.object)
            .ok_or_else(|| cx.site.error("object", format!("`{}` is not an object reference like Pod/NAME", s.object)))?;
        let matcher = match (&s.catalogue, &s.message) {
            (Some(entry), _) => {
                let reason = catalogue::reason(entry).ok_or_else(|| {
                    cx.site.error("catalogue", format!("no catalogue entry `{entry}` (known: {})", catalogue::names().join(", ")))
                })?;
                if reason != s.reason {
                    return Err(cx.site.error("reason", format!("catalogue entry {entry} is a {reason} event, not {}", s.reason)));
                }
                Match::Catalogue(entry.clone())
            }
            (None, Some(re)) => Match::Regex(cx.regex("message", re)?),
            (None, None) => Match::Any,
        };
        Ok(Box::new(ExpectEvent {
            kind,
            name: cx.tpl("object", &name)?,
            reason: s.reason.clone(),
            matcher,
            timeout: cx.duration("timeout", &s.timeout, DEFAULT_WAIT)?,
            timeout_text: s.timeout.clone(),
            absent,
        }))
    }

    /// Which wording (if any) a message matches.
    fn wording(&self, version: &str, message: &str) -> Option<Matched> {
        match &self.matcher {
            Match::Catalogue(entry) => catalogue::matching(entry, version, message).map(Matched::Catalogued),
            Match::Regex(r) => r.is_match(message).then_some(Matched::Other("regex")),
            Match::Any => Some(Matched::Other("any")),
        }
    }

    async fn check(&self, cx: &mut CaseCx<'_>) -> StepResult {
        let (kind, name) = (&self.kind, self.name.fill(&cx.vars)?);
        let version = cx.env.cluster.version.clone();
        let catalogue = match &self.matcher {
            Match::Catalogue(entry) => {
                let (_, ws) = catalogue::wordings(entry, &version).unwrap_or_default();
                if ws.is_empty() {
                    return Err(StepError::Errored(Error::Invalid(format!(
                        "catalogue entry {entry} has no wording for Kubernetes {version}"
                    ))));
                }
                Some(entry.clone())
            }
            _ => None,
        };
        let api = Api::<Event>::namespaced(cx.client(), &cx.namespace);
        let cfg = watcher::Config::default().fields(&format!("involvedObject.kind={kind},involvedObject.name={name}"));
        let what = format!(
            "a {} event on {kind}/{name}{}",
            self.reason,
            catalogue.as_ref().map(|c| format!(" worded as catalogue entry {c} for Kubernetes {version}")).unwrap_or_default()
        );
        let reason = self.reason.clone();
        let hit = |e: &Event| e.reason.as_deref() == Some(&reason) && self.wording(&version, e.message.as_deref().unwrap_or("")).is_some();
        // The messages of the reason last seen, for a timeout to say which wording came instead.
        let seen = std::sync::Mutex::new(Vec::<String>::new());
        let found = crate::wait::until_list(&api, cfg, &what, self.timeout, |evs: &[Arc<Event>]| {
            *seen.lock().expect("not poisoned") =
                evs.iter().filter(|e| e.reason.as_deref() == Some(&reason)).filter_map(|e| e.message.clone()).collect();
            evs.iter().any(|e| hit(e))
        })
        .await;
        match (self.absent, found) {
            (false, Ok(evs)) => {
                let e = evs.iter().find(|e| hit(e)).expect("the condition found one");
                let msg = e.message.clone().unwrap_or_default();
                let mut norm = msg.clone();
                let vol_re = Regex::new(r#"volume "(pvc-[0-9a-f-]+)""#).expect("static regex");
                if let Some(c) = vol_re.captures(&msg) {
                    let p = cx.outcome.generated("volume", &c[1]);
                    norm = norm.replace(&c[1], &p);
                }
                let object = format!("{kind}/{name}");
                match (self.wording(&version, &msg), &catalogue) {
                    (Some(Matched::Catalogued(w)), Some(entry)) => {
                        // The snapshot holds what is the same on every version (which
                        // component, which case); the version's own wording and the message,
                        // which differ between versions, go to the case's notes.
                        cx.outcome.record(
                            "event",
                            serde_json::json!({"object": object, "reason": self.reason, "catalogue": entry, "wording": w.origin}),
                        );
                        cx.notes.push(format!(
                            "{} on {object}: Kubernetes {version} words it as {}, {}: {norm}",
                            self.reason, w.origin, w.versions
                        ));
                        if !w.as_guide {
                            let guide = catalogue::entry(entry).map(|e| e.guide).unwrap_or_default();
                            cx.outcome.version_finding(serde_json::json!({"drift": format!(
                                "the guide quotes \"{guide}\"; Kubernetes {version} says \"{norm}\" ({}, {})",
                                w.origin, w.versions
                            )}));
                        }
                    }
                    (m, _) => {
                        let how = match m {
                            Some(Matched::Other(h)) => h,
                            _ => "any",
                        };
                        cx.outcome
                            .record("event", serde_json::json!({"object": object, "reason": self.reason, "wording": how, "message": norm}));
                    }
                }
                Ok(())
            }
            (false, Err(Error::Wait(WaitError::Timeout { what, after, last_seen }))) if catalogue.is_some() => {
                let entry = catalogue.as_deref().expect("a catalogue entry");
                // Events of the reason whose wording this version's catalogue does not know:
                // the case fails with the text seen, and says which version's wording it is.
                let messages = std::mem::take(&mut *seen.lock().expect("not poisoned"));
                if let Some(why) = unknown_wording(entry, &version, &format!("{kind}/{name}"), &messages) {
                    return Err(StepError::failed(why));
                }
                Err(StepError::failed(format!(
                    "the fault did not reproduce: no {what} within {}s (events seen on the object: {last_seen})",
                    after.as_secs()
                )))
            }
            (false, Err(e)) => Err(e.into()),
            (true, Ok(evs)) => {
                let e = evs.iter().find(|e| e.reason.as_deref() == Some(&self.reason)).map(|e| e.message.clone().unwrap_or_default());
                Err(StepError::failed(format!("did not expect {what}, but saw: {}", e.unwrap_or_default())))
            }
            (true, Err(Error::Wait(WaitError::Timeout { .. }))) => {
                cx.outcome.record(
                    "no-event",
                    serde_json::json!({"object": format!("{kind}/{name}"), "reason": self.reason, "within": self.timeout_text}),
                );
                Ok(())
            }
            (true, Err(e)) => Err(e.into()),
        }
    }
}

/// What a message matched.
enum Matched {
    Catalogued(catalogue::Wording),
    Other(&'static str),
}

/// Why the case fails when the events of an entry's reason on `object` (their `messages`)
/// include one about what the entry catalogues in a wording it does not know for `version`:
/// the text seen, and which versions use that wording if another does.
pub fn unknown_wording(entry: &str, version: &str, object: &str, messages: &[String]) -> Option<String> {
    let e = catalogue::entry(entry)?;
    let m = messages.iter().find(|m| {
        catalogue::matching(entry, version, m).is_none() && (catalogue::matching_elsewhere(entry, m).is_some() || looks_like(e.reason, m))
    })?;
    let elsewhere = catalogue::matching_elsewhere(entry, m)
        .map(|w| format!("; it is the wording catalogued for {} ({})", w.versions, w.origin))
        .unwrap_or_else(|| "; no version's wording in the catalogue matches it".to_string());
    Some(format!(
        "Kubernetes {version} reported {} on {object} as \"{m}\", which no wording of catalogue entry {entry} for {} matches{elsewhere}: add the wording to the catalogue (src/scenario/catalogue.rs) with the versions that use it",
        e.reason,
        catalogue::major_minor(version)
    ))
}

/// Whether a message of `reason` is about what the entry catalogues even if no wording
/// matches it (a rewording): the scheduler's volume conflicts, the attach controller's
/// refusals to attach.
fn looks_like(reason: &str, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    match reason {
        "FailedScheduling" => {
            m.contains("volume node affinity")
                || (m.contains("persistentvolume") && ["affinity", "zone", "topology"].iter().any(|w| m.contains(w)))
        }
        "FailedAttachVolume" => m.contains("already") && (m.contains("attached") || m.contains("used by")),
        _ => false,
    }
}

impl Operation for ExpectEvent {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        self.check(cx).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_older_wording_on_a_newer_version_fails_naming_both() {
        let old =
            r#"Multi-Attach error for volume "pvc-1" Volume is already exclusively attached to one node and can't be attached to another"#;
        let why = unknown_wording("multi-attach", "v1.37.2", "Pod/lily-0", &msgs(&[old])).expect("a failure");
        assert!(why.contains("Kubernetes v1.37.2 reported FailedAttachVolume on Pod/lily-0"), "{why}");
        assert!(why.contains(old) && why.contains("for 1.37 matches") && why.contains("catalogued for up to 1.36"), "{why}");
        // The same text on a version that uses it is no failure.
        assert_eq!(unknown_wording("multi-attach", "v1.34.4", "Pod/lily-0", &msgs(&[old])), None);
    }

    #[test]
    fn a_wording_no_version_uses_fails_with_the_text_seen() {
        let new = "0/3 nodes are available: 3 node(s) had a PersistentVolume zone mismatch.";
        let why = unknown_wording(
            "volume-node-affinity-conflict",
            "v1.34.4",
            "Pod/p",
            &msgs(&["0/3 nodes are available: 3 Insufficient cpu.", new]),
        )
        .expect("a failure");
        assert!(why.contains(new) && why.contains("no version's wording in the catalogue matches it"), "{why}");
    }

    #[test]
    fn unrelated_events_of_the_reason_are_no_wording() {
        let other = &["0/3 nodes are available: 3 node(s) were unschedulable.", "pod has unbound immediate PersistentVolumeClaims"];
        assert_eq!(unknown_wording("volume-node-affinity-conflict", "v1.32.13", "Pod/p", &msgs(other)), None);
        assert_eq!(unknown_wording("multi-attach", "v1.37.2", "Pod/p", &msgs(&[r#"AttachVolume.Attach failed for volume "pvc-1""#])), None);
    }
}
