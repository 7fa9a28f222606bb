//! The one place that parses or writes YAML.
//!
//! `serde_yaml` is archived upstream; keeping every use behind this module means a
//! replacement touches one file.

use serde::{de::DeserializeOwned, Serialize};

/// A YAML document could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("invalid yaml{}", .context.as_deref().map(|c| format!(" in {c}")).unwrap_or_default())]
pub struct YamlError {
    context: Option<String>,
    #[source]
    source: Cause,
}

/// Why: YAML syntax, or a document that does not fit the expected shape.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Syntax(#[from] serde_yaml::Error),
    #[error(transparent)]
    Shape(#[from] serde_json::Error),
}

impl YamlError {
    /// Names where the YAML came from (a file, a command's output).
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }
}

impl From<serde_yaml::Error> for YamlError {
    fn from(source: serde_yaml::Error) -> Self {
        Self { context: None, source: Cause::Syntax(source) }
    }
}

impl From<serde_json::Error> for YamlError {
    fn from(source: serde_json::Error) -> Self {
        Self { context: None, source: Cause::Shape(source) }
    }
}

/// Parses one YAML document into `T`.
///
/// The document is read as plain data first and then mapped onto `T`, so enums are written
/// as one-key maps (`- helm-upgrade: {...}`), as in JSON, rather than as YAML tags.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let value: serde_json::Value = serde_yaml::from_str(text)?;
    Ok(serde_json::from_value(value)?)
}

/// Parses one YAML document from a file, naming the file in the error.
pub fn from_file<T: DeserializeOwned>(path: &std::path::Path) -> Result<T, crate::Error> {
    let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Io { what: format!("read {}", path.display()), source })?;
    from_str(&text).map_err(|e| e.context(path.display().to_string()).into())
}

/// Writes `value` as YAML.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, YamlError> {
    Ok(serde_yaml::to_string(value)?)
}

/// Splits a multi-document YAML stream (as `helm template` prints it) into JSON values,
/// dropping empty documents.
pub fn documents(text: &str) -> Result<Vec<serde_json::Value>, YamlError> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize_yaml(doc)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

trait DeserializeYaml: Sized {
    fn deserialize_yaml(doc: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error>;
}

impl DeserializeYaml for serde_json::Value {
    fn deserialize_yaml(doc: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error> {
        serde::Deserialize::deserialize(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let docs = documents("---\n# only a comment\n---\na: 1\n---\nb: [x]\n").unwrap();
        assert_eq!(docs, vec![serde_json::json!({"a": 1}), serde_json::json!({"b": ["x"]})]);
    }

    #[test]
    fn errors_name_their_source() {
        let err = from_str::<serde_json::Value>("a: [").unwrap_err().context("values.yaml");
        assert_eq!(err.to_string(), "invalid yaml in values.yaml");
        assert!(std::error::Error::source(&err).is_some());
    }
}
