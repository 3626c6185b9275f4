//! Decoding objects from JSON or YAML, in two ways from one set of types.
//!
//! - Strict ([`from_json`], [`from_yaml`], [`workloads`], [`strict`]): what
//!   people write (manifests, bodies of the user API, the CLI's files). A
//!   field the type does not know is an error naming its path, so a typo
//!   never passes silently.
//! - Tolerant ([`from_wire`]): every message between the master and an
//!   agent. A field of a newer version is dropped, so peers of mixed
//!   versions keep working (`crate::protocol` says which versions meet).
//!
//! The types themselves accept unknown fields; strictness is the decoder's,
//! found with `serde_ignored`. No type may use `#[serde(flatten)]` or an
//! untagged or internally tagged enum: serde buffers those, and what is
//! buffered is neither reported nor refused (`api/tests/golden.rs` checks
//! that the strict decoder finds a field added to any object of any message).

use serde::de::{DeserializeOwned, Deserializer};

/// A document that could not be decoded: the path of the offending field
/// (`spec.resources.limits.memory`) and what serde found wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() || path == "." { String::new() } else { format!("{path}: ") })]
pub struct DecodeError {
    pub path: String,
    pub message: String,
}

/// Decodes strictly from any serde deserializer: a bad value names its path,
/// and so does the first field the type does not know (`spec.resources:
/// unknown field `colour``), once the rest decoded.
pub fn strict<'de, D, T>(deserializer: D) -> Result<T, DecodeError>
where
    D: Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: serde::Deserialize<'de>,
{
    let mut unknown: Option<DecodeError> = None;
    let value = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(deserializer, &mut |path: serde_ignored::Path| {
        if unknown.is_none() {
            unknown = Some(unknown_field(&path));
        }
    }))
    .map_err(|e| DecodeError { path: e.path().to_string(), message: e.into_inner().to_string() })?;
    match unknown {
        Some(error) => Err(error),
        None => Ok(value),
    }
}

/// The error for a field at `path` the type does not know: the path of the
/// object that holds it, dotted as `serde_path_to_error` prints paths.
fn unknown_field(path: &serde_ignored::Path) -> DecodeError {
    let mut segments = Vec::new();
    let mut at = path;
    loop {
        match at {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                segments.push(index.to_string());
                at = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                segments.push(key.clone());
                at = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => at = parent,
        }
    }
    segments.reverse();
    let field = segments.pop().unwrap_or_default();
    DecodeError { path: segments.join("."), message: format!("unknown field `{field}`") }
}

/// Decodes JSON people wrote, strictly.
pub fn from_json<T: DeserializeOwned>(text: &[u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = strict(&mut de)?;
    de.end().map_err(|e| DecodeError { path: String::new(), message: e.to_string() })?;
    Ok(value)
}

/// Decodes YAML people wrote, strictly.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, DecodeError> {
    strict(serde_yaml::Deserializer::from_str(text))
}

/// Decodes a message of the master ↔ agent protocol: fields this build does
/// not know (a newer peer's) are dropped; a bad value of a known field is
/// still an error naming its path.
pub fn from_wire<T: DeserializeOwned>(text: &[u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| DecodeError { path: e.path().to_string(), message: e.into_inner().to_string() })?;
    de.end().map_err(|e| DecodeError { path: String::new(), message: e.to_string() })?;
    Ok(value)
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
        let workload = strict(document).map_err(|e| {
            let doc = if i == 0 { String::new() } else { format!("document {}: ", i + 1) };
            format!("{doc}{e}")
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
        assert_eq!(err.to_string(), "metadata: unknown field `colour`");
        let err = from_json::<Node>(b"{\"metadata\":").unwrap_err();
        assert!(err.message.contains("EOF"), "{err}");
    }

    #[test]
    fn strict_decoders_name_the_first_unknown_field_with_its_path_and_the_wire_drops_it() {
        let text = br#"{"metadata":{"name":"a"},"spec":{"taints":[{"key":"k","effect":"NoSchedule","colour":"red"}]},"status":{"addresses":[],"shade":1}}"#;
        let err = from_json::<Node>(text).unwrap_err();
        assert_eq!(err.to_string(), "spec.taints.0: unknown field `colour`");
        let node: Node = from_wire(text).unwrap();
        assert_eq!(node.spec.taints[0].key, "k");
        let err = from_json::<Node>(br#"{"colour":"red","metadata":{"name":"a"}}"#).unwrap_err();
        assert_eq!(err.to_string(), "unknown field `colour`");
        let err =
            from_yaml::<Node>("metadata: {name: a, labels: {colour: red}}\nspec:\n  unschedulable: true\n  colour: red\n").unwrap_err();
        assert_eq!(err.to_string(), "spec: unknown field `colour`", "labels are a map: any key is known");
        // A bad value of a known field stays an error on the wire.
        let err = from_wire::<Node>(br#"{"metadata":{"name":"a"},"spec":{"unschedulable":"yes"},"more":1}"#).unwrap_err();
        assert_eq!(err.path, "spec.unschedulable");
        // So does trailing garbage.
        assert!(from_wire::<Node>(br#"{"metadata":{"name":"a"}} x"#).is_err());
    }

    #[test]
    fn manifests_stay_strict_in_every_document() {
        let workload = |extra: &str| {
            format!(
                "metadata: {{name: w}}\nspec:\n  type: daemon\n  module: {{source: m.wasm, digest: \"sha256:{}\"}}\n{extra}",
                "0".repeat(64)
            )
        };
        let text = format!("{}---\n{}", workload(""), workload("  resources:\n    requests: {cpu: 1, colour: red}\n"));
        assert_eq!(workloads(&text, false).unwrap_err(), "document 2: spec.resources.requests: unknown field `colour`");
        assert_eq!(workloads(&workload(""), false).map(|w| w.len()), Ok(1));
    }
}
