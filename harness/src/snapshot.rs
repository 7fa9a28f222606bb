//! Rendered-manifest normalisation, for snapshots and for `lily-e2e render`.
//!
//! `helm template` output is split into documents, sorted stably by (kind, namespace, name)
//! and normalised so that rendering twice gives byte-identical text and no secret appears:
//!
//! - every value under a Secret's `data` / `stringData` becomes `[redacted: N bytes]`
//!   (N = the decoded length, which is stable for generated tokens);
//! - every `checksum/*` annotation, at any depth (pod templates included), becomes
//!   `[checksum]`: they hash generated secrets;
//! - everything else (names, labels such as `helm.sh/chart: lily-0.2.0`, the release name
//!   and namespace) is kept as rendered: it is stable for a given chart version and input.
//!
//! Mapping keys come out sorted (`serde_json`'s map is ordered by key), one document per
//! `---`.

use std::cmp::Ordering;

use base64::Engine;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::helm::{ChartRef, ChartSource, Helm, TemplateOpts, Values, Version};

/// The release name snapshots are rendered with.
pub const DEFAULT_RELEASE: &str = "rel";
/// The namespace snapshots are rendered for.
pub const DEFAULT_NAMESPACE: &str = "lily";
/// What a `checksum/*` annotation becomes.
pub const CHECKSUM_PLACEHOLDER: &str = "[checksum]";

/// Normalises a `helm template` output into a YAML stream.
pub fn normalize_manifests(rendered: &str) -> Result<String> {
    let docs = crate::yaml::documents(rendered).map_err(|e| e.context("the rendered manifests"))?;
    to_stream(&normalize(docs))
}

/// Sorts and normalises parsed documents (see the module docs).
pub fn normalize(mut docs: Vec<Value>) -> Vec<Value> {
    for d in &mut docs {
        normalize_document(d);
    }
    sort_documents(&mut docs);
    docs
}

/// Sorts documents stably by (kind, namespace, name).
pub fn sort_documents(docs: &mut [Value]) {
    docs.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)).then(Ordering::Equal));
}

fn sort_key(d: &Value) -> (String, String, String) {
    let s = |p: &str| d.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    (s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
}

/// Redacts Secret values and replaces `checksum/*` annotations, in place.
pub fn normalize_document(doc: &mut Value) {
    if doc.get("kind").and_then(Value::as_str) == Some("Secret") {
        if let Some(Value::Object(data)) = doc.get_mut("data") {
            for v in data.values_mut() {
                let n = v
                    .as_str()
                    .map(|s| base64::engine::general_purpose::STANDARD.decode(s.trim()).map(|b| b.len()).unwrap_or(s.len()))
                    .unwrap_or(0);
                *v = Value::String(redacted(n));
            }
        }
        if let Some(Value::Object(data)) = doc.get_mut("stringData") {
            for v in data.values_mut() {
                let n = v.as_str().map(str::len).unwrap_or(0);
                *v = Value::String(redacted(n));
            }
        }
    }
    replace_checksums(doc);
}

fn redacted(n: usize) -> String {
    format!("[redacted: {n} bytes]")
}

fn replace_checksums(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "annotations" {
                    if let Value::Object(ann) = child {
                        for (name, value) in ann.iter_mut() {
                            if name.starts_with("checksum/") {
                                *value = Value::String(CHECKSUM_PLACEHOLDER.into());
                            }
                        }
                    }
                }
                replace_checksums(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(replace_checksums),
        _ => {}
    }
}

/// Writes documents as one YAML stream, each starting with `---`.
pub fn to_stream(docs: &[Value]) -> Result<String> {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&crate::yaml::to_string(d)?);
    }
    Ok(out)
}

/// What to render.
#[derive(Debug, Clone)]
pub struct RenderRequest {
    pub source: ChartSource,
    /// The chart version: for a directory it packages the chart as that version (like
    /// `DIR@X.Y.Z`), for a repository chart it is `--version`, for a `.tgz` it must match.
    pub version: Option<String>,
    pub release: String,
    pub namespace: String,
    pub values: Values,
    /// `--api-versions` (e.g. `monitoring.coreos.com/v1`).
    pub api_versions: Vec<String>,
}

impl RenderRequest {
    pub fn new(source: ChartSource) -> Self {
        RenderRequest {
            source,
            version: None,
            release: DEFAULT_RELEASE.into(),
            namespace: DEFAULT_NAMESPACE.into(),
            values: Values::default(),
            api_versions: Vec::new(),
        }
    }
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }
    pub fn values(mut self, values: Values) -> Self {
        self.values = values;
        self
    }
}

/// Renders with the real helm and normalises: what `lily-e2e render` prints.
pub async fn render(helm: &Helm, req: &RenderRequest) -> Result<String> {
    normalize_manifests(&render_raw(helm, req).await?)
}

/// Renders with the real helm; the output as helm printed it (secrets included).
pub async fn render_raw(helm: &Helm, req: &RenderRequest) -> Result<String> {
    req.source.check()?;
    let asked = req.version.as_deref().map(crate::helm::chart::parse_version).transpose()?;
    let pinned = req.source.pinned_version().cloned();
    let version: Option<Version> = match (pinned, asked) {
        (Some(p), Some(a)) if p != a => {
            return Err(Error::Invalid(format!("chart source {} pins version {p} but version {a} was asked for", req.source)))
        }
        (p, a) => p.or(a),
    };
    let opts = |version: Option<String>| TemplateOpts {
        namespace: Some(req.namespace.clone()),
        version,
        values: req.values.clone(),
        kube_version: None,
        api_versions: req.api_versions.clone(),
    };
    match &req.source {
        ChartSource::Dir { path, .. } => match version {
            Some(v) => {
                let tmp = tempfile::tempdir_in(helm.home()).map_err(Error::io("create a directory to package the chart in"))?;
                let tgz = helm.package(path, Some(&v.to_string()), tmp.path()).await?;
                helm.template(&req.release, &ChartRef::Path(tgz), &opts(None)).await
            }
            None => helm.template(&req.release, &ChartRef::Path(path.clone()), &opts(None)).await,
        },
        ChartSource::Archive { path } => {
            if let Some(v) = version {
                let meta = crate::helm::ChartMeta::read(path)?;
                if meta.semver()? != v {
                    return Err(Error::Invalid(format!("{} is {} version {}, not {v}", path.display(), meta.name, meta.version)));
                }
            }
            helm.template(&req.release, &ChartRef::Path(path.clone()), &opts(None)).await
        }
        ChartSource::Remote { url, chart, .. } => {
            let chart = ChartRef::Url { url: url.clone(), chart: chart.clone() };
            helm.template(&req.release, &chart, &opts(version.map(|v| v.to_string()))).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn secret_stream(token: &str, pw: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "---\n# Source: lily/templates/statefulset.yaml\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: lily-rel-daemon\n  labels:\n    helm.sh/chart: lily-0.2.0\nspec:\n  template:\n    metadata:\n      annotations:\n        checksum/secret: {sum}\n        checksum/config: abc\n        keep/me: yes\n\
             ---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: lily-rel-api-token\ndata:\n  token: {tok}\nstringData:\n  password: {pw}\n\
             ---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lily-rel-config\n  annotations:\n    checksum/values: {sum}\ndata:\n  a: b\n",
            sum = { use sha2::Digest; hex::encode(sha2::Sha256::digest(token.as_bytes())) },
            tok = b64(token),
        )
    }

    #[test]
    fn two_renders_with_different_random_secrets_normalise_identically() {
        let a = normalize_manifests(&secret_stream("Zq8sT0kLr1aB2cD3eF4gH5iJ6kL7mN8o", "hunter2hunter2")).unwrap();
        let b = normalize_manifests(&secret_stream("Xy7wV6uT5sR4qP3oN2mL1kJ0iH9gF8eD", "correct-horse1")).unwrap();
        assert_eq!(a, b);
        let token = "Zq8sT0kLr1aB2cD3eF4gH5iJ6kL7mN8o";
        let b64 = base64::engine::general_purpose::STANDARD.encode(token);
        let sum = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(token.as_bytes()))
        };
        for secret in [token, "hunter2hunter2", &b64, &sum[..16]] {
            assert!(!a.contains(secret), "{secret} leaked into:\n{a}");
        }
        assert!(a.contains("token: '[redacted: 32 bytes]'"), "{a}");
        assert!(a.contains("password: '[redacted: 14 bytes]'"), "{a}");
    }

    #[test]
    fn checksums_are_replaced_at_every_depth_and_other_annotations_kept() {
        let out = normalize_manifests(&secret_stream("t", "p")).unwrap();
        assert_eq!(out.matches("[checksum]").count(), 3, "{out}");
        assert!(out.contains("keep/me: yes") || out.contains("keep/me: 'yes'"), "{out}");
        assert!(out.contains("helm.sh/chart: lily-0.2.0"), "{out}");
        assert!(!out.contains("# Source"), "comments are dropped");
    }

    #[rstest]
    #[case(&[("Service", "b", "x"), ("ConfigMap", "a", "z"), ("Service", "a", "y"), ("ConfigMap", "", "q")],
           &["ConfigMap//q", "ConfigMap/a/z", "Service/a/y", "Service/b/x"])]
    #[case(&[("StatefulSet", "", "lily-rel-worker"), ("StatefulSet", "", "lily-rel-notifier")],
           &["StatefulSet//lily-rel-notifier", "StatefulSet//lily-rel-worker"])]
    fn documents_sort_by_kind_namespace_name(#[case] input: &[(&str, &str, &str)], #[case] want: &[&str]) {
        let docs: Vec<Value> = input
            .iter()
            .map(|(k, ns, n)| {
                let mut meta = serde_json::json!({"name": n});
                if !ns.is_empty() {
                    meta["namespace"] = (*ns).into();
                }
                serde_json::json!({"apiVersion": "v1", "kind": k, "metadata": meta})
            })
            .collect();
        let got: Vec<String> = normalize(docs)
            .iter()
            .map(|d| {
                let (k, ns, n) = sort_key(d);
                format!("{k}/{ns}/{n}")
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn output_is_a_stable_yaml_stream() {
        let text = "b: 1\na: {z: 1, y: [2, 1]}\nkind: ConfigMap\nmetadata: {name: x}\n";
        let once = normalize_manifests(text).unwrap();
        assert_eq!(once, "---\na:\n  y:\n  - 2\n  - 1\n  z: 1\nb: 1\nkind: ConfigMap\nmetadata:\n  name: x\n");
        assert_eq!(normalize_manifests(&once).unwrap(), once, "normalising is idempotent");
        assert_eq!(normalize_manifests("---\n# nothing\n").unwrap(), "");
    }

    #[test]
    fn invalid_yaml_is_an_error_not_a_panic() {
        let e = normalize_manifests("a: [").unwrap_err().to_string();
        assert_eq!(e, "invalid yaml in the rendered manifests");
    }

    #[test]
    fn non_base64_secret_data_is_still_redacted() {
        let out = normalize_manifests("kind: Secret\nmetadata: {name: s}\ndata: {k: not*base64}\n").unwrap();
        assert!(out.contains("'[redacted: 10 bytes]'") && !out.contains("not*base64"), "{out}");
    }
}
