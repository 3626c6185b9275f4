//! wasmlet's objects as they travel on the wire and sit in manifests.
//!
//! # Layout
//! - `meta`: `apiVersion`, `kind` and `ObjectMeta`, shared by every object.
//! - `node`: the Node, its spec (taints, cordon) and the status an agent reports:
//!   capacity, conditions, addresses, machine facts, live usage and pressure.
//! - `workload`, `instance`, `event`: the desired state and what happened to it.
//! - `rollout`: how a changed workload reaches its instances (Canary, Waves,
//!   health gates), and the master's record of revisions and rollouts.
//! - `registry`: credentials for OCI registries the master holds for workloads.
//! - `quantity`, `duration`: `250m`, `128Mi`, `2s` — parsed exactly, printed canonically.
//! - `decode`: JSON/YAML decoding whose errors name the offending field: strict
//!   for what people write, tolerant of unknown fields for the master ↔ agent protocol.
//! - `selector`: label selectors, parsed once and matched by the master and the CLI.
//! - `since`: where a log read starts, a duration ago or a time.
//! - `validate`: rules serde cannot express; every problem is reported with its field.
//! - `limits`: the most one object may ask for (replicas, sizes, counts, durations).
//!
//! The crate does no I/O; the agent, the master and the CLI all speak through it.
#![forbid(unsafe_code)]

pub mod decode;
pub mod duration;
pub mod event;
pub mod instance;
pub mod limits;
pub mod meta;
pub mod node;
pub mod protocol;
pub mod quantity;
pub mod registry;
pub mod rollout;
pub mod selector;
pub mod since;
pub mod validate;
pub mod workload;

pub use decode::{DecodeError, from_json, from_yaml};
pub use duration::Duration;
pub use event::{Event, EventType, ObjectReference};
pub use instance::{Instance, InstanceSpec, InstanceStatus, InstanceUsage, Phase, PressureFigures, RequestFigures, Termination};
pub use meta::{API_VERSION, ObjectMeta};
pub use node::*;
pub use quantity::{Bytes, Cpu, QuantityError};
pub use registry::RegistryCredential;
pub use rollout::{Rollout, RolloutPhase, RolloutSpec, RolloutStatus, Strategy};
pub use selector::Selector;
pub use since::Since;
pub use validate::{FieldError, ValidationError};
pub use workload::*;
