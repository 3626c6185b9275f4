//! What every object carries: its API version, kind and metadata.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_ANNOTATIONS_BYTES, MAX_LABELS};
use crate::validate::{Errors, is_dns_label, is_label_key, is_label_value, shorten};

/// The one API version this release speaks.
pub const API_VERSION: &str = "wasmlet.io/v1";

/// Identity and bookkeeping of an object, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Assigned by the master when the object is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Bumped by the master on every write; a write naming an older one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
}

impl ObjectMeta {
    pub fn named(name: impl Into<String>) -> Self {
        ObjectMeta { name: name.into(), ..Default::default() }
    }

    pub(crate) fn validate(&self, errors: &mut Errors) {
        if !is_dns_label(&self.name) {
            errors.push(
                "metadata.name",
                format!(
                    "`{}` is not a valid name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
                    shorten(&self.name)
                ),
            );
        }
        if self.labels.len() > MAX_LABELS {
            errors.push("metadata.labels", format!("{} labels are more than the limit of {MAX_LABELS}", self.labels.len()));
        }
        for (key, value) in &self.labels {
            if !is_label_key(key) {
                errors.push(
                    format!("metadata.labels.{}", shorten(key)),
                    "label keys are up to 63 letters, digits, '-', '_' or '.', optionally prefixed by a DNS domain and '/'",
                );
            }
            if !is_label_value(value) {
                errors.push(
                    format!("metadata.labels.{}", shorten(key)),
                    format!("`{}` is not a valid label value: at most 63 letters, digits, '-', '_' or '.'", shorten(value)),
                );
            }
        }
        let annotations: usize = self.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
        if annotations > MAX_ANNOTATIONS_BYTES {
            errors.push(
                "metadata.annotations",
                format!("{annotations} bytes of keys and values are more than the limit of {MAX_ANNOTATIONS_BYTES} bytes"),
            );
        }
        for key in self.annotations.keys() {
            if !is_label_key(key) {
                errors.push(
                    format!("metadata.annotations.{}", shorten(key)),
                    "annotation keys are up to 63 letters, digits, '-', '_' or '.', optionally prefixed by a DNS domain and '/'",
                );
            }
        }
    }
}

/// Checks `apiVersion` and `kind` of a decoded object.
pub(crate) fn validate_type(api_version: &str, kind: &str, expected_kind: &str, errors: &mut Errors) {
    if api_version != API_VERSION {
        errors.push("apiVersion", format!("`{api_version}` is not supported; use `{API_VERSION}`"));
    }
    if kind != expected_kind {
        errors.push("kind", format!("expected `{expected_kind}`, found `{kind}`"));
    }
}

pub(crate) fn api_version() -> String {
    API_VERSION.to_string()
}
