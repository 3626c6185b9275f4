//! The Event object: something noteworthy that happened to another object.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, api_version};

pub const EVENT_KIND: &str = "Event";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "event_kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub time: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind_of_event: EventType,
    /// One CamelCase word: `NodeNotReady`, `HandedOff`, `FailedScheduling`, …
    pub reason: String,
    pub involved_object: ObjectReference,
    pub message: String,
    /// Who reports it: `master`, or `agent/<node>`.
    pub source: String,
}

fn event_kind() -> String {
    EVENT_KIND.to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    pub kind: String,
    pub name: String,
}

impl Event {
    pub fn new(
        name: impl Into<String>,
        kind_of_event: EventType,
        reason: impl Into<String>,
        involved_object: ObjectReference,
        message: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        Event {
            api_version: api_version(),
            kind: event_kind(),
            metadata: ObjectMeta::named(name),
            time: Utc::now(),
            kind_of_event,
            reason: reason.into(),
            involved_object,
            message: message.into(),
            source: source.into(),
        }
    }
}
