//! Decoding objects from JSON or YAML with errors that say where the problem is.

use serde::de::DeserializeOwned;

/// A document that could not be decoded: the path of the offending field
/// (`spec.resources.limits.memory`) and what serde found wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() || path == "." { String::new() } else { format!("{path}: ") })]
pub struct DecodeError {
    pub path: String,
    pub message: String,
}

pub fn from_json<T: DeserializeOwned>(text: &[u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| DecodeError { path: e.path().to_string(), message: e.into_inner().to_string() })?;
    de.end().map_err(|e| DecodeError { path: String::new(), message: e.to_string() })?;
    Ok(value)
}

pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|e| DecodeError { path: e.path().to_string(), message: e.into_inner().to_string() })
}

/// The Workload documents of a manifest file: one JSON object when `json`,
/// else YAML with `---` between documents. The error names the document
/// (from the second on) and the field.
pub fn workloads(text: &str, json: bool) -> Result<Vec<crate::Workload>, String> {
    if json {
        return from_json(text.as_bytes()).map(|w| vec![w]).map_err(|e| e.to_string());
    }
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let workload = serde_path_to_error::deserialize(document).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." { String::new() } else { format!("{path}: ") };
            let doc = if i == 0 { String::new() } else { format!("document {}: ", i + 1) };
            format!("{doc}{at}{}", e.into_inner())
        })?;
        out.push(workload);
    }
    if out.is_empty() {
        return Err("no Workload documents in the file".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Node;

    #[test]
    fn json_errors_carry_the_path() {
        let err = from_json::<Node>(br#"{"metadata":{"name":"a"},"spec":{"unschedulable":"yes"}}"#).unwrap_err();
        assert_eq!(err.path, "spec.unschedulable");
        let err = from_json::<Node>(br#"{"metadata":{"name":"a","colour":"red"}}"#).unwrap_err();
        assert!(err.to_string().starts_with("metadata"), "{err}");
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        let err = from_json::<Node>(b"{\"metadata\":").unwrap_err();
        assert!(err.message.contains("EOF"), "{err}");
    }
}
