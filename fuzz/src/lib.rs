//! The properties every parser of untrusted input in wasmlet holds, one
//! function per fuzz target. Each takes arbitrary bytes and panics when a
//! property fails:
//! - nothing panics on any input (decoders, validation, arithmetic on what
//!   was parsed);
//! - what decodes encodes, and decodes again to the same value (JSON and YAML);
//! - validation is total and gives the same answer after a round trip;
//! - a value parsed from text prints as text that parses to the same value.
//!
//! The cargo-fuzz project beside this crate (`fuzz/libfuzzer/`) calls these
//! functions from libFuzzer (`make fuzz`); this crate's tests replay every
//! file of the checked-in corpus (`fuzz/corpus/<target>/`) through them, so
//! `make test` runs what the fuzzers found.
#![forbid(unsafe_code)]

use std::fmt::{Debug, Display};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wasmlet_api::protocol::{
    ApiError, Assignment, InstanceStatusBatch, LeaseRenewal, LeaseResponse, List, RegisterRequest, RegisterResponse, ServiceEndpoints,
};
use wasmlet_api::{Bytes, Cpu, Duration, Event, Instance, Node, NodeStatus, Since, Workload};
use wasmlet_security::{JoinToken, Token};

/// A target: arbitrary bytes in, a panic when a property fails.
pub type Target = fn(&[u8]);

/// Every target by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] =
    &[("manifest", manifest), ("quantity", quantity), ("duration", duration), ("protocol", protocol), ("join_token", join_token)];

/// Workload manifests as the agent reads them from its manifests dir (YAML
/// documents or one JSON object), as the CLI reads them (YAML values first)
/// and as the master decodes them (JSON):
/// decoding never panics, validation is total, and a decoded workload
/// survives a JSON and a YAML round trip unchanged, validation included.
pub fn manifest(data: &[u8]) {
    let mut decoded: Vec<Workload> = wasmlet_api::from_json(data).into_iter().collect();
    if let Ok(text) = std::str::from_utf8(data) {
        decoded.extend(wasmlet_api::decode::workloads(text, false).unwrap_or_default());
        // The CLI reads each document as a YAML value first (to name its kind), then as a Workload.
        for document in serde_yaml::Deserializer::from_str(text) {
            let Ok(value) = serde_yaml::Value::deserialize(document) else { break };
            decoded.extend(serde_yaml::from_value::<Workload>(value).ok());
        }
    }
    for workload in decoded {
        let verdict = workload.validate();
        let again: Workload = json_round_trip(&workload);
        assert_eq!(again.validate(), verdict, "validation changed over a JSON round trip");
        let yaml = serde_yaml::to_string(&workload).unwrap_or_else(|e| panic!("a decoded workload does not encode as YAML: {e}"));
        let again: Workload = wasmlet_api::from_yaml(&yaml).unwrap_or_else(|e| panic!("encoded YAML does not decode: {e}\n{yaml}"));
        assert_eq!(again, workload, "a workload changed over a YAML round trip:\n{yaml}");
    }
}

/// CPU and byte quantities (`250m`, `128Mi`, `1e3`), from flags and manifests:
/// parsing never panics, and a parsed quantity prints as text that parses
/// to the same quantity, also as a JSON string.
pub fn quantity(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cpu) = text.parse::<Cpu>() {
        text_round_trip(&cpu);
        assert_eq!(json_round_trip(&cpu), cpu);
    }
    if let Ok(bytes) = text.parse::<Bytes>() {
        text_round_trip(&bytes);
        assert_eq!(json_round_trip(&bytes), bytes);
    }
}

/// Durations (`500ms`, `1h30m`) and log cut-offs (`5m`, RFC 3339 times), from
/// flags, manifests and query parameters: parsing never panics, what parses
/// is at most [`Duration::MAX`] and prints as text that parses to the same
/// value, and deadlines and cut-offs computed from it never overflow a clock.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(duration) = text.parse::<Duration>() {
        assert!(duration <= Duration::MAX, "{duration} is longer than the longest duration");
        text_round_trip(&duration);
        let _ = wasmlet_api::duration::deadline(std::time::Instant::now(), duration.get());
    }
    if let Ok(since) = text.parse::<Since>() {
        text_round_trip(&since);
        for now in [Utc::now(), DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
            let _ = since.cutoff(now);
        }
    }
}

/// The master ↔ agent protocol's messages (the master decodes what agents
/// send, an agent what the master answers): decoding never panics, and a
/// decoded message survives a JSON round trip unchanged.
pub fn protocol(data: &[u8]) {
    fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
        if let Ok(message) = wasmlet_api::from_json::<T>(data) {
            assert_eq!(json_round_trip(&message), message, "a message changed over a JSON round trip");
        }
    }
    check::<RegisterRequest>(data);
    check::<RegisterResponse>(data);
    check::<LeaseRenewal>(data);
    check::<LeaseResponse>(data);
    check::<NodeStatus>(data);
    check::<Node>(data);
    check::<Assignment>(data);
    check::<InstanceStatusBatch>(data);
    check::<List<Instance>>(data);
    check::<List<Event>>(data);
    check::<List<ServiceEndpoints>>(data);
    check::<ApiError>(data);
}

/// Join tokens (`wasmlet-join:<sha256>:<id>.<secret>`) and bearer tokens, as
/// the agent and the master's auth read them: parsing never panics, and a
/// parsed token prints as text that parses to the same token.
pub fn join_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(join) = text.parse::<JoinToken>() {
        text_round_trip(&join);
    }
    if let Ok(token) = text.parse::<Token>() {
        text_round_trip(&token);
    }
    if let Ok(token) = Token::from_bearer(text) {
        text_round_trip(&token);
    }
}

/// Encodes `value` as JSON and decodes it again with the decoder the daemons use.
fn json_round_trip<T: Serialize + DeserializeOwned + Debug>(value: &T) -> T {
    let json = serde_json::to_vec(value).unwrap_or_else(|e| panic!("{value:?} does not encode as JSON: {e}"));
    wasmlet_api::from_json(&json)
        .unwrap_or_else(|e| panic!("{value:?} encodes as JSON that does not decode: {e}\n{}", String::from_utf8_lossy(&json)))
}

/// Asserts that `value` prints as text that parses to `value`.
fn text_round_trip<T: Display + FromStr + PartialEq + Debug>(value: &T)
where
    T::Err: Display,
{
    let text = value.to_string();
    match text.parse::<T>() {
        Ok(again) => assert_eq!(&again, value, "`{text}` parses to another value"),
        Err(e) => panic!("{value:?} prints as `{text}`, which does not parse: {e}"),
    }
}
