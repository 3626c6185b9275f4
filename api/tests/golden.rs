//! Golden copies of every message of the master ↔ agent protocol, version 4,
//! and of those version 5 changed.
//!
//! NEVER EDIT A GOLDEN FILE OF A RELEASED VERSION: they are what peers of
//! that version send, and every later build must still read them. A new
//! version adds a folder of its own (`golden/v5/`) and a line per message below.
//!
//! Each message is decoded as a peer decodes it (`decode::from_wire`) and
//! encoded again, which must give the golden back (so a change of how a type
//! serializes is noticed here); decoded again with unknown fields added to
//! every object, it must be the same value; and each of those fields alone
//! is named by the strict decoder, with its path (so no type hides fields
//! from it, as `#[serde(flatten)]` or untagged enums would).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use wasmlet_api::protocol::{
    ApiError, Assignment, CredentialRenewal, HeldCredentials, InstanceStatusBatch, LeaseRenewal, LeaseResponse, List, MasterStatus,
    RegisterRequest, RegisterResponse, RenewedCredential, ServiceEndpoints,
};
use wasmlet_api::{Instance, Node, NodeStatus};

/// Keys whose object is a map of the user's (labels, environment): any key there is data, not a field.
const MAPS: [&str; 4] = ["labels", "annotations", "env", "nodeSelector"];

fn golden(version: &str, name: &str) -> (String, Value) {
    let path = format!("{}/tests/golden/{version}/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    (text, value)
}

/// What a newer peer might add: a scalar, an object, an array of both, nested.
fn future_fields(value: &mut Value) {
    if let Value::Object(map) = value {
        map.insert("futureScalar".into(), json!(7));
        map.insert("futureText".into(), json!("from a newer peer"));
        map.insert("futureObject".into(), json!({"nested": {"deeper": [1, {"x": null}]}, "flag": true}));
        map.insert("futureList".into(), json!([{"a": 1}, "b", [2.5], null]));
    }
}

/// Calls `visit` with the path and every object of `value` that is a type's
/// (not a user's map), deepest first.
fn objects(value: &mut Value, path: &str, parent_key: &str, visit: &mut dyn FnMut(&str, &mut Value)) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                objects(child, &at, key, visit);
            }
            if !MAPS.contains(&parent_key) {
                visit(path, value);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let at = if path.is_empty() { i.to_string() } else { format!("{path}.{i}") };
                objects(item, &at, "", visit);
            }
        }
        _ => {}
    }
}

/// Where `encoded` first differs from `golden`, said for people.
fn first_difference(golden: &Value, encoded: &Value, path: &str) -> Option<String> {
    let at = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match (golden, encoded) {
        (Value::Object(g), Value::Object(e)) => g
            .iter()
            .find_map(|(k, v)| match e.get(k) {
                Some(w) => first_difference(v, w, &at(k)),
                None => Some(format!("`{}` is in the golden, not in the encoding", at(k))),
            })
            .or_else(|| e.keys().find(|k| !g.contains_key(*k)).map(|k| format!("`{}` is in the encoding, not in the golden", at(k)))),
        (Value::Array(g), Value::Array(e)) if g.len() == e.len() => {
            g.iter().zip(e).enumerate().find_map(|(i, (v, w))| first_difference(v, w, &at(&i.to_string())))
        }
        _ => (golden != encoded).then(|| format!("`{path}` is {golden} in the golden, {encoded} in the encoding")),
    }
}

fn check<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(version: &str, name: &str) {
    let (text, value) = golden(version, name);
    let decoded: T = wasmlet_api::decode::from_wire(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = serde_json::to_value(&decoded).expect("encodes");
    if let Some(difference) = first_difference(&value, &again, "") {
        panic!("{name}: encoding the decoded golden gives another message: {difference}");
    }
    assert!(wasmlet_api::from_json::<T>(text.as_bytes()).is_ok(), "{name}: the golden has no field its type does not know");

    let mut extended = value.clone();
    let mut count = 0;
    objects(&mut extended, "", "", &mut |_, object| {
        future_fields(object);
        count += 1;
    });
    assert!(count > 0, "{name}: no object");
    let bytes = serde_json::to_vec(&extended).expect("encodes");
    let tolerant: T = wasmlet_api::decode::from_wire(&bytes).unwrap_or_else(|e| panic!("{name} with unknown fields: {e}"));
    assert_eq!(tolerant, decoded, "{name}: unknown fields changed what was decoded");

    // Each object alone with one unknown field: the strict decoder names it, where it is.
    let mut paths = Vec::new();
    objects(&mut value.clone(), "", "", &mut |path, _| paths.push(path.to_string()));
    for target in paths {
        let mut one = value.clone();
        objects(&mut one, "", "", &mut |path, object| {
            if path == target
                && let Value::Object(map) = object
            {
                map.insert("futureField".into(), json!({"nested": [1]}));
            }
        });
        let bytes = serde_json::to_vec(&one).expect("encodes");
        let err = wasmlet_api::from_json::<T>(&bytes).expect_err(&format!("{name}: `futureField` at `{target}` went unnoticed"));
        assert_eq!(
            err.to_string(),
            if target.is_empty() { "unknown field `futureField`".to_string() } else { format!("{target}: unknown field `futureField`") }
        );
    }
}

#[test]
fn every_message_of_version_4_reads_back_the_same_with_or_without_unknown_fields() {
    let v = "v4";
    check::<RegisterRequest>(v, "register-request");
    check::<RegisterResponse>(v, "register-response");
    check::<LeaseRenewal>(v, "lease-renewal");
    check::<LeaseResponse>(v, "lease-response");
    check::<NodeStatus>(v, "node-status");
    check::<Node>(v, "node");
    check::<Assignment>(v, "assignment");
    check::<InstanceStatusBatch>(v, "instance-status-batch");
    check::<CredentialRenewal>(v, "credential-renewal");
    check::<RenewedCredential>(v, "renewed-credential");
    check::<List<ServiceEndpoints>>(v, "service-endpoints");
    check::<ApiError>(v, "api-error");
    check::<Vec<MasterStatus>>(v, "master-status");
    check::<HeldCredentials>(v, "held-credentials");
    // The agent's own API, which the master relays to operators (`describe node`, `top`).
    check::<Node>(v, "agent-status");
    check::<Vec<Instance>>(v, "agent-instances");
}

/// Version 5 adds gray releases: a service's canary split, an instance's request figures.
#[test]
fn the_messages_version_5_changed_read_back_the_same_with_or_without_unknown_fields() {
    let v = "v5";
    check::<List<ServiceEndpoints>>(v, "service-endpoints");
    check::<Vec<Instance>>(v, "agent-instances");
}

#[test]
fn every_golden_file_is_checked() {
    let source = include_str!("golden.rs");
    for version in ["v4", "v5"] {
        let dir = format!("{}/tests/golden/{version}", env!("CARGO_MANIFEST_DIR"));
        let test = source.split(&format!("let v = \"{version}\";")).nth(1).and_then(|rest| rest.split("\n}\n").next()).unwrap_or_default();
        for entry in std::fs::read_dir(&dir).expect("the golden folder") {
            let name = entry.expect("an entry").file_name().to_string_lossy().trim_end_matches(".json").to_string();
            assert!(test.contains(&format!("(v, \"{name}\")")), "golden/{version}/{name}.json is checked by no line of its version's test");
        }
    }
}
