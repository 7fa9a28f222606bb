//! Watch-based waits, always under a deadline.
//!
//! Every wait names what it waits for; a timeout reports that name and a summary of the
//! last state the watch saw, so a failing test says where things got stuck.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::wait::{await_condition, Condition};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;

/// What can go wrong with a wait: it ran out of time, or its watch broke.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed; `last_seen` summarises the last state the watch saw.
    #[error("timed out after {}s waiting for {what}; last seen: {last_seen}", .after.as_secs())]
    Timeout { what: String, after: Duration, last_seen: String },
    /// The watch failed.
    #[error("watch failed while waiting for {what}")]
    Watch {
        what: String,
        #[source]
        source: watcher::Error,
    },
    /// The watch stream ended before the condition held.
    #[error("watch ended while waiting for {what}")]
    Ended { what: String },
    /// A part of the condition can no longer hold (e.g. a claim bound to another volume).
    #[error("{what} will not happen: {condition}")]
    Settled { what: String, condition: String },
}

/// A short, single-line summary of an object for "last seen" messages: its name and status.
pub fn summarize<K: Serialize + ResourceExt>(obj: &K) -> String {
    let v = serde_json::to_value(obj).unwrap_or_default();
    let status = match (v.get("status"), v.get("reason"), v.get("message")) {
        (Some(s), _, _) if !s.is_null() => s.to_string(),
        // Events carry what matters at the top level.
        (_, Some(r), Some(m)) => {
            format!("{}: {}", r.as_str().unwrap_or(""), m.as_str().unwrap_or(""))
        }
        _ => "no status".into(),
    };
    let mut s = format!("{} {}", obj.name_any(), status);
    truncate(&mut s, 800);
    s
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

/// Waits until object `name` satisfies `cond` (which sees `None` while it does not exist).
pub async fn until<K, C>(api: &Api<K>, name: &str, what: &str, timeout: Duration, cond: C) -> Result<Option<K>>
where
    K: Clone + Debug + Send + Sync + DeserializeOwned + Serialize + Resource + 'static,
    C: Fn(Option<&K>) -> bool,
{
    let last: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = last.clone();
    let recording = move |obj: Option<&K>| {
        *seen.lock().unwrap() = Some(obj.map(summarize).unwrap_or_else(|| format!("{name} does not exist")));
        cond(obj)
    };
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, Recording(recording))).await {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(kube::runtime::wait::Error::ProbeFailed(source))) => Err(WaitError::Watch { what: what.to_string(), source }.into()),
        Err(_) => Err(WaitError::Timeout {
            what: what.to_string(),
            after: timeout,
            last_seen: last.lock().unwrap().clone().unwrap_or_else(|| "nothing (no watch event arrived)".into()),
        }
        .into()),
    }
}

/// One part of a condition: what it wants, what was seen, whether it holds. A timeout of
/// [`until_parts`] lists every part, so the reader sees which one was not met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub want: String,
    pub seen: String,
    pub met: bool,
    /// Not met, and it never will be: the wait ends at once.
    pub settled: bool,
}

impl Part {
    /// `name` wants `want`; `seen` is what the object has.
    pub fn eq(name: &str, want: &str, seen: &str) -> Part {
        Part { name: name.to_string(), want: want.to_string(), seen: seen.to_string(), met: want == seen, settled: false }
    }
    /// `name` wants anything but `not`, and something.
    pub fn ne(name: &str, not: &str, seen: &str) -> Part {
        Part {
            name: name.to_string(),
            want: format!("not {not}"),
            seen: seen.to_string(),
            met: seen != not && !seen.is_empty(),
            settled: false,
        }
    }
    /// A yes/no part.
    pub fn holds(name: &str, met: bool, seen: &str) -> Part {
        Part { name: name.to_string(), want: "yes".into(), seen: seen.to_string(), met, settled: false }
    }
    /// When `settled`, an unmet part never will be met.
    pub fn settled_if(mut self, settled: bool) -> Part {
        self.settled = settled && !self.met;
        self
    }
}

/// `phase Bound: met; volume: wanted pvc-A, saw pvc-B`.
pub fn describe_parts(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| {
            if p.met {
                format!("{} {}: met", p.name, p.want)
            } else {
                let seen = if p.seen.is_empty() { "nothing" } else { p.seen.as_str() };
                format!("{}: wanted {}, saw {seen}", p.name, p.want)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Like [`until`], for a condition made of parts: `parts` returns them for the object
/// (`None` when it does not exist) and the wait ends when every part holds. A timeout says
/// the whole condition, which parts were not met, and the last state seen.
pub async fn until_parts<K, C>(api: &Api<K>, name: &str, what: &str, timeout: Duration, parts: C) -> Result<K>
where
    K: Clone + Debug + Send + Sync + DeserializeOwned + Serialize + Resource + 'static,
    C: Fn(&K) -> Vec<Part> + Send + Sync + 'static,
{
    let last: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = last.clone();
    let parts = Arc::new(parts);
    let parts_again = parts.clone();
    let r = until(api, name, what, timeout, move |obj: Option<&K>| {
        let Some(o) = obj else {
            *seen.lock().unwrap() = Some(format!("{name} does not exist"));
            return false;
        };
        let ps = parts(o);
        *seen.lock().unwrap() = Some(describe_parts(&ps));
        ps.iter().all(|p| p.met) || ps.iter().any(|p| p.settled)
    })
    .await;
    match r {
        Ok(Some(o)) => {
            let ps = (*parts_again)(&o);
            if ps.iter().any(|p| p.settled) {
                return Err(WaitError::Settled { what: what.to_string(), condition: describe_parts(&ps) }.into());
            }
            Ok(o)
        }
        Ok(None) => Err(WaitError::Ended { what: what.to_string() }.into()),
        Err(crate::Error::Wait(WaitError::Timeout { what, after, last_seen })) => {
            let condition = last.lock().unwrap().clone().unwrap_or_else(|| "not evaluated (no watch event arrived)".into());
            Err(WaitError::Timeout { what, after, last_seen: format!("condition: {condition}; object: {last_seen}") }.into())
        }
        Err(e) => Err(e),
    }
}

struct Recording<F>(F);
impl<K, F: Fn(Option<&K>) -> bool> Condition<K> for Recording<F> {
    fn matches_object(&self, obj: Option<&K>) -> bool {
        (self.0)(obj)
    }
}

/// Waits until the set of objects selected by `config` satisfies `cond`; returns that set.
pub async fn until_list<K, C>(api: &Api<K>, config: watcher::Config, what: &str, timeout: Duration, cond: C) -> Result<Vec<K>>
where
    K: Clone + Debug + Send + Sync + DeserializeOwned + Serialize + Resource + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    C: Fn(&[Arc<K>]) -> bool,
{
    let (store, writer) = reflector::store::<K>();
    // A failed watch (the API server restarting, a dropped connection, an expired resource
    // version) is retried with kube-runtime's default backoff, under the same deadline; the
    // last failure is part of what a timeout reports.
    let stream = reflector(writer, watcher(api.clone(), config).default_backoff());
    let mut last = String::from("nothing (no watch event arrived)");
    let fut = async {
        let mut stream = std::pin::pin!(stream);
        let mut listed = false;
        loop {
            match stream.next().await {
                Some(Ok(watcher::Event::InitDone)) => listed = true,
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {}
                Some(Ok(_)) => continue,
                None => return Err(WaitError::Ended { what: what.to_string() }.into()),
                Some(Err(source)) => {
                    tracing::debug!("watch for {what} failed, retrying: {source}");
                    last = format!("{} (the watch last failed: {source}; retried)", describe_set(&store.state()));
                    continue;
                }
            }
            if !listed {
                continue;
            }
            let state = store.state();
            last = describe_set(&state);
            if cond(&state) {
                return Ok(state.iter().map(|o| (**o).clone()).collect());
            }
        }
    };
    let res = tokio::time::timeout(timeout, fut).await;
    match res {
        Ok(r) => r,
        Err(_) => Err(WaitError::Timeout { what: what.to_string(), after: timeout, last_seen: last }.into()),
    }
}

fn describe_set<K: Serialize + ResourceExt>(objs: &[Arc<K>]) -> String {
    if objs.is_empty() {
        return "no objects".into();
    }
    let mut s = objs.iter().map(|o| summarize(o.as_ref())).collect::<Vec<_>>().join("; ");
    truncate(&mut s, 2000);
    s
}

/// Consumes a watch stream until `pred` holds for an event object, under a deadline.
pub async fn until_event<K, C>(
    stream: impl futures::Stream<Item = Result<K, watcher::Error>>,
    what: &str,
    timeout: Duration,
    pred: C,
) -> Result<K>
where
    K: Serialize + ResourceExt,
    C: Fn(&K) -> bool,
{
    let mut last = String::from("nothing (no watch event arrived)");
    let mut stream = std::pin::pin!(stream);
    let fut = async {
        while let Some(item) = stream.next().await {
            let obj = item.map_err(|source| WaitError::Watch { what: what.to_string(), source })?;
            last = summarize(&obj);
            if pred(&obj) {
                return Ok(obj);
            }
        }
        Err(WaitError::Ended { what: what.to_string() }.into())
    };
    let res = tokio::time::timeout(timeout, fut).await;
    match res {
        Ok(r) => r,
        Err(_) => Err(WaitError::Timeout { what: what.to_string(), after: timeout, last_seen: last }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_says_which_part_was_not_met() {
        let parts = [Part::eq("phase", "Bound", "Bound"), Part::eq("volume", "pvc-a", "pvc-b").settled_if(true)];
        assert_eq!(describe_parts(&parts), "phase Bound: met; volume: wanted pvc-a, saw pvc-b");
        assert!(parts[1].settled && !parts[1].met);
        // A met part is never settled; an empty value reads as "nothing".
        assert!(!Part::eq("phase", "Bound", "Bound").settled_if(true).settled);
        assert_eq!(describe_parts(&[Part::ne("volume", "pvc-a", "")]), "volume: wanted not pvc-a, saw nothing");
    }
}
