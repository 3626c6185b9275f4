//! Rollouts: how a changed workload reaches its instances, step by step, and
//! what the master records of it.
//!
//! - [`RolloutSpec`] (`spec.rollout` of a workload): `Canary` for services (a
//!   share of the ingress traffic per step) or `Waves` for `placement:
//!   everyNode` workloads (a share of the nodes per wave), each step held for a
//!   while and checked by [`Gates`]. Without it a changed spec rolls over one
//!   replica at a time, as it always did.
//! - [`Rollout`] (stored by the master, one per workload, named after it): the
//!   revision being rolled out, its step, the readings of its gates, the
//!   revision to go back to, and the history of revisions with their modules.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::duration::Duration;
use crate::instance::RequestFigures;
use crate::meta::{ObjectMeta, api_version};
use crate::validate::{Errors, shorten};
use crate::workload::WorkloadSpec;

pub const ROLLOUT_KIND: &str = "Rollout";

/// The most steps (or waves) one rollout may have.
pub const MAX_ROLLOUT_STEPS: usize = 20;
/// How many revisions a rollout's history keeps (the oldest go first).
pub const MAX_ROLLOUT_HISTORY: usize = 10;
/// How long new instances may take to be Running before the step fails, by default.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(120);
/// Requests the new revision must have answered in a step before its error rate and latency count, by default.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// The header a gray release pins requests with when `canaryHeader` gives only its name.
pub const DEFAULT_CANARY_HEADER_VALUE: &str = "always";

/// `spec.rollout`: how a changed spec reaches the instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    pub strategy: Strategy,
    /// Canary: the traffic weight of the new revision per step, each held a while; 100 % follows the last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<CanaryStep>,
    /// Waves: the nodes of each wave (a count or a share), in order; every node follows the last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
    /// Canary: a header that sends a request to the new revision whatever the
    /// weight, as `name: value` (or `name`, meaning the value `always`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_header: Option<String>,
    /// Waves: a node label whose value orders the nodes (e.g. a ring or a site), then the node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    /// Waves: how many nodes of a wave change at once (default: the whole wave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// How long the new instances of a step may take to be Running before the step fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Duration>,
    #[serde(default)]
    pub gates: Gates,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// A share of the traffic to the new revision, step by step (services).
    Canary,
    /// A share of the nodes to the new revision, wave by wave (`placement: everyNode`).
    Waves,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Canary => "Canary",
            Strategy::Waves => "Waves",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percent of the requests the new revision gets, 1–99.
    pub weight: u32,
    /// How long the step lasts once its instances are Running.
    pub hold: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wave {
    /// The nodes this wave adds: a count (`1`) or a share of all the workload's nodes (`"30%"`).
    pub nodes: NodeShare,
    /// How long the wave is watched once its instances are Running.
    #[serde(default)]
    pub hold: Duration,
}

/// A number of nodes, or a share of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NodeShare {
    Count(u32),
    Percent(Percent),
}

impl NodeShare {
    /// How many of `total` nodes this is: at least one (of a non-empty fleet), at most all.
    pub fn of(self, total: usize) -> usize {
        let n = match self {
            NodeShare::Count(n) => n as usize,
            NodeShare::Percent(p) => (total as f64 * p.get() / 100.0).ceil() as usize,
        };
        n.clamp(1.min(total), total)
    }
}

/// What keeps a step going: each gate that is given must hold over the step.
/// A Failed (crash-looping) new instance, or one not Running within the
/// progress deadline, always fails the step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gates {
    /// Most share of the new revision's answers that may be server errors (5xx), e.g. `1%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<Percent>,
    /// Most the new revision's 99th percentile latency may be, e.g. `200ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<Duration>,
    /// Most restarts of the new revision's instances in the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// Answers the new revision must give in a step before its error rate and
    /// latency count (20 by default); the step waits for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
}

impl Gates {
    /// Whether a gate reads the ingress's figures.
    pub fn needs_traffic(&self) -> bool {
        self.max_error_rate.is_some() || self.max_p99.is_some()
    }

    pub fn min_requests(&self) -> u64 {
        self.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS)
    }
}

/// A percentage, 0–100, written `1%`, `0.5%` or as a bare number.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    pub fn new(value: f64) -> Option<Percent> {
        (value.is_finite() && (0.0..=100.0).contains(&value)).then_some(Percent(value))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl std::str::FromStr for Percent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = s.trim().strip_suffix('%').unwrap_or(s.trim());
        number
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(Percent::new)
            .ok_or_else(|| format!("`{}` is not a percentage from 0 to 100 (write it like `1%` or `0.5%`)", shorten(s)))
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A number or a string, as YAML and JSON give a percentage or a count.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(deserializer)? {
            NumberOrText::Number(n) => Percent::new(n).ok_or_else(|| de::Error::custom(format!("{n} is not a percentage from 0 to 100"))),
            NumberOrText::Text(text) => text.parse().map_err(de::Error::custom),
        }
    }
}

impl Serialize for NodeShare {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            NodeShare::Count(n) => serializer.serialize_u32(*n),
            NodeShare::Percent(p) => serializer.collect_str(p),
        }
    }
}

impl<'de> Deserialize<'de> for NodeShare {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(deserializer)? {
            NumberOrText::Number(n) if n.fract() == 0.0 && (1.0..=u32::MAX as f64).contains(&n) => Ok(NodeShare::Count(n as u32)),
            NumberOrText::Number(n) => Err(de::Error::custom(format!("{n} is not a number of nodes (write `2`, or a share like `30%`)"))),
            NumberOrText::Text(text) if text.trim().ends_with('%') => text.parse().map(NodeShare::Percent).map_err(de::Error::custom),
            NumberOrText::Text(text) => {
                Err(de::Error::custom(format!("`{}` is not a number of nodes nor a share (write `2`, or `30%`)", shorten(&text))))
            }
        }
    }
}

impl RolloutSpec {
    /// A Canary of `steps`, with no header and no gates.
    pub fn canary(steps: Vec<CanaryStep>) -> RolloutSpec {
        RolloutSpec::of(Strategy::Canary, steps, Vec::new())
    }

    /// Waves of `waves`, in node-name order, with no gates.
    pub fn waves(waves: Vec<Wave>) -> RolloutSpec {
        RolloutSpec::of(Strategy::Waves, Vec::new(), waves)
    }

    fn of(strategy: Strategy, steps: Vec<CanaryStep>, waves: Vec<Wave>) -> RolloutSpec {
        RolloutSpec {
            strategy,
            steps,
            waves,
            canary_header: None,
            order_by: None,
            max_unavailable: None,
            progress_deadline: None,
            gates: Gates::default(),
        }
    }

    /// The header that pins requests to the new revision: its lowercased name and its value.
    pub fn canary_header(&self) -> Option<(String, String)> {
        let text = self.canary_header.as_deref()?;
        let (name, value) = match text.split_once(':') {
            Some((name, value)) => (name.trim(), value.trim()),
            None => (text.trim(), DEFAULT_CANARY_HEADER_VALUE),
        };
        Some((name.to_ascii_lowercase(), value.to_string()))
    }

    /// How long new instances may take to be Running.
    pub fn progress_deadline(&self) -> std::time::Duration {
        self.progress_deadline.unwrap_or(DEFAULT_PROGRESS_DEADLINE).get()
    }

    /// The steps of the rollout: canary steps or waves.
    pub fn step_count(&self) -> usize {
        match self.strategy {
            Strategy::Canary => self.steps.len(),
            Strategy::Waves => self.waves.len(),
        }
    }

    /// How long step `step` is held once its instances are Running (nothing for the final one).
    pub fn hold(&self, step: usize) -> std::time::Duration {
        let hold = match self.strategy {
            Strategy::Canary => self.steps.get(step).map(|s| s.hold),
            Strategy::Waves => self.waves.get(step).map(|w| w.hold),
        };
        hold.unwrap_or_default().get()
    }

    /// The traffic weight of the new revision at `step` (100 after the last step).
    pub fn weight(&self, step: usize) -> u32 {
        self.steps.get(step).map_or(100, |s| s.weight)
    }

    /// How many of `total` nodes run the new revision once wave `step` is under way (all after the last wave).
    pub fn nodes_through(&self, step: usize, total: usize) -> usize {
        if step >= self.waves.len() {
            return total;
        }
        self.waves[..=step].iter().map(|w| w.nodes.of(total)).sum::<usize>().min(total)
    }

    /// What step `step` does, for people.
    pub fn describe_step(&self, step: usize) -> String {
        let of = self.step_count() + 1;
        match self.strategy {
            Strategy::Canary if step >= self.step_count() => format!("step {of} of {of}: every request to the new revision"),
            Strategy::Canary => format!("step {} of {of}: {}% of the requests to the new revision", step + 1, self.weight(step)),
            Strategy::Waves if step >= self.step_count() => format!("wave {of} of {of}: every node"),
            Strategy::Waves => format!("wave {} of {of}", step + 1),
        }
    }

    pub(crate) fn validate(&self, errors: &mut Errors, kind: crate::workload::WorkloadType, every_node: bool) {
        use crate::workload::WorkloadType;
        let field = "spec.rollout";
        match self.strategy {
            Strategy::Canary => {
                if kind != WorkloadType::Service {
                    errors.push(format!("{field}.strategy"), "Canary splits a service's traffic: use `Waves` for daemons and jobs");
                } else if every_node {
                    errors.push(
                        format!("{field}.strategy"),
                        "Canary adds instances beside the old ones, which `placement: everyNode` has one per node of: use `Waves`, or `replicas`",
                    );
                }
                if self.steps.is_empty() {
                    errors.push(format!("{field}.steps"), "a Canary rollout needs at least one step, e.g. `- {weight: 10, hold: 1m}`");
                }
                if !self.waves.is_empty() {
                    errors.push(format!("{field}.waves"), "waves belong to `strategy: Waves`");
                }
                let mut last = 0;
                for (i, step) in self.steps.iter().enumerate() {
                    if !(1..=99).contains(&step.weight) {
                        errors.push(
                            format!("{field}.steps[{i}].weight"),
                            format!("{} is not a weight from 1 to 99 (100 % follows the last step)", step.weight),
                        );
                    } else if step.weight <= last {
                        errors.push(
                            format!("{field}.steps[{i}].weight"),
                            format!("{} must be more than the step before ({last})", step.weight),
                        );
                    }
                    last = step.weight;
                }
                if let Some((name, value)) = self.canary_header() {
                    let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                    if !valid_name
                        || name.starts_with("x-wasmlet-")
                        || value.is_empty()
                        || value.len() > 256
                        || !value.bytes().all(|b| (0x20..0x7f).contains(&b))
                    {
                        errors.push(
                            format!("{field}.canaryHeader"),
                            format!(
                                "`{}` is not a header to pin requests with: write `name: value` (a header name of letters, digits and `-`, not `x-wasmlet-…`, and a printable value)",
                                shorten(self.canary_header.as_deref().unwrap_or_default())
                            ),
                        );
                    }
                }
                if self.order_by.is_some() || self.max_unavailable.is_some() {
                    errors.push(field, "`orderBy` and `maxUnavailable` belong to `strategy: Waves`");
                }
            }
            Strategy::Waves => {
                if !every_node {
                    errors.push(format!("{field}.strategy"), "Waves rolls over nodes, one instance each: it needs `placement: everyNode` (for `replicas`, use the default or Canary)");
                }
                if self.waves.is_empty() {
                    errors.push(format!("{field}.waves"), "a Waves rollout needs at least one wave, e.g. `- {nodes: 1, hold: 1m}`");
                }
                if !self.steps.is_empty() || self.canary_header.is_some() {
                    errors.push(field, "`steps` and `canaryHeader` belong to `strategy: Canary`");
                }
                if self.gates.needs_traffic() {
                    errors.push(
                        format!("{field}.gates"),
                        "`maxErrorRate` and `maxP99` read a service's traffic, which Waves does not split: use `maxRestarts`",
                    );
                }
                if let Some(key) = &self.order_by
                    && !crate::validate::is_label_key(key)
                {
                    errors.push(format!("{field}.orderBy"), format!("`{}` is not a label key", shorten(key)));
                }
                if self.max_unavailable == Some(0) {
                    errors.push(format!("{field}.maxUnavailable"), "must be at least 1");
                }
            }
        }
        if self.step_count() > MAX_ROLLOUT_STEPS {
            errors.push(field, format!("{} steps are more than the limit of {MAX_ROLLOUT_STEPS}", self.step_count()));
        }
        let holds = self.steps.iter().map(|s| s.hold).chain(self.waves.iter().map(|w| w.hold));
        for (what, duration) in holds
            .map(|d| ("a hold", d))
            .chain(self.progress_deadline.map(|d| ("progressDeadline", d)))
            .chain(self.gates.max_p99.map(|d| ("gates.maxP99", d)))
        {
            if duration.get() > crate::limits::MAX_DURATION {
                errors.push(
                    field,
                    format!("{what} of {duration} is longer than the limit of {}", Duration::from(crate::limits::MAX_DURATION)),
                );
            }
        }
        if self.gates.min_requests.is_some() && !self.gates.needs_traffic() {
            errors.push(format!("{field}.gates.minRequests"), "counts only with `maxErrorRate` or `maxP99`");
        }
    }
}

/// The master's record of a workload's revisions and of the rollout under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "rollout_kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub status: RolloutStatus,
}

fn rollout_kind() -> String {
    ROLLOUT_KIND.to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision of the workload's spec now.
    pub revision: u64,
    pub phase: RolloutPhase,
    /// The strategy of the rollout under way (None: one replica at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The step under way, from 0; the number of steps means the final one (everything to the new revision).
    #[serde(default)]
    pub step: u32,
    #[serde(default)]
    pub step_count: u32,
    /// When the step began, and when its new instances were all Running (its hold counts from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ready_at: Option<DateTime<Utc>>,
    /// Canary: the new revision's share of the requests now, in percent.
    #[serde(default)]
    pub weight: u32,
    /// The revision to go back to: the one serving before this rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Revision>,
    /// The gates' readings in the step under way (or the one that failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateReading>,
    /// The new revision's ingress figures when the step began: the step's own are what came after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<RequestFigures>,
    /// What the rollout does or why it stopped, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The revisions of the workload, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RevisionRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutPhase {
    /// Steps are under way.
    Progressing,
    /// Held at its step by `wasmlet rollout pause`; the gates still watch.
    Paused,
    /// Every instance runs the revision; nothing under way.
    Complete,
    /// A gate failed (or `wasmlet rollout undo`): back on the previous revision.
    RolledBack,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Complete => "Complete",
            RolloutPhase::RolledBack => "RolledBack",
        }
    }

    /// Whether steps are under way (progressing or paused).
    pub fn active(self) -> bool {
        matches!(self, RolloutPhase::Progressing | RolloutPhase::Paused)
    }
}

impl fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A revision of a workload's spec, kept to go back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub revision: u64,
    pub spec: WorkloadSpec,
}

/// One revision in a rollout's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    pub revision: u64,
    /// The module's digest, and where it comes from as the manifest says.
    pub digest: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module: String,
    pub at: DateTime<Utc>,
    /// `Progressing`, `Complete`, `RolledBack`, `Superseded` (changed again before it completed).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One gate's reading over the step under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateReading {
    /// `maxErrorRate`, `maxP99`, `maxRestarts`, `crashLoop`, `progressDeadline`.
    pub gate: String,
    /// What was measured, as people read it (`4.1%`, `<= 20ms`, `2`); empty before anything is.
    #[serde(default)]
    pub value: String,
    pub limit: String,
    pub passed: bool,
}

impl Rollout {
    /// The first record of a workload: revision 1, complete.
    pub fn first(name: &str, spec: &WorkloadSpec, now: DateTime<Utc>) -> Rollout {
        let mut rollout = Rollout {
            api_version: api_version(),
            kind: rollout_kind(),
            metadata: ObjectMeta::named(name),
            status: RolloutStatus {
                revision: 1,
                phase: RolloutPhase::Complete,
                strategy: None,
                step: 0,
                step_count: 0,
                step_started_at: None,
                step_ready_at: None,
                weight: 100,
                previous: None,
                gates: Vec::new(),
                baseline: None,
                message: String::new(),
                history: Vec::new(),
            },
        };
        rollout.status.record(1, spec, now, "Complete", "");
        rollout
    }

    /// The record once `spec` replaces `current` (revision `self.revision`):
    /// a new revision, rolled out by the strategy of `spec` (all at once into
    /// the default replica-by-replica update when it has none). During a
    /// rollout the revision to go back to stays the one that served before it.
    pub fn changed(&self, current: &WorkloadSpec, spec: &WorkloadSpec, now: DateTime<Utc>) -> Rollout {
        let mut next = self.clone();
        let status = &mut next.status;
        let revision = status.revision + 1;
        let previous = match (&status.previous, status.phase.active()) {
            (Some(previous), true) => previous.clone(),
            _ => Revision { revision: status.revision, spec: current.clone() },
        };
        // Changed back to the revision that served before: no steps to take.
        let back = status.previous.as_ref().filter(|p| p.spec.runs_like(spec)).map(|p| p.revision);
        if let Some(last) = status.history.last_mut()
            && last.outcome == RolloutPhase::Progressing.as_str()
        {
            last.outcome = "Superseded".into();
        }
        status.revision = revision;
        status.previous = Some(previous);
        status.gates.clear();
        status.baseline = None;
        status.step = 0;
        status.step_started_at = Some(now);
        status.step_ready_at = None;
        match &spec.rollout {
            // Changed back to what served before: nothing to roll out step by step.
            _ if back.is_some() => {
                status.phase = RolloutPhase::Complete;
                status.strategy = None;
                status.step_count = 0;
                status.weight = 100;
                status.message = format!("back to what revision {} ran", back.unwrap_or_default());
                status.record(revision, spec, now, "Complete", &status.message.clone());
            }
            Some(rollout) => {
                status.phase = RolloutPhase::Progressing;
                status.strategy = Some(rollout.strategy);
                status.step_count = rollout.step_count() as u32;
                status.weight = rollout.weight(0);
                status.message = format!("{}, {}", rollout.strategy.as_str(), rollout.describe_step(0));
                status.record(revision, spec, now, "Progressing", "");
            }
            None => {
                status.phase = RolloutPhase::Complete;
                status.strategy = None;
                status.step_count = 0;
                status.weight = 100;
                status.message = "rolling over one replica at a time".into();
                status.record(revision, spec, now, "Complete", "");
            }
        }
        next
    }

    /// Whether the rollout under way goes through steps (Canary or Waves, progressing or paused).
    pub fn stepping(&self) -> bool {
        self.status.phase.active() && self.status.strategy.is_some() && self.status.previous.is_some()
    }
}

impl RolloutStatus {
    /// Adds a revision to the history, keeping the newest [`MAX_ROLLOUT_HISTORY`].
    pub fn record(&mut self, revision: u64, spec: &WorkloadSpec, at: DateTime<Utc>, outcome: &str, message: &str) {
        self.history.push(RevisionRecord {
            revision,
            digest: spec.module.digest.clone(),
            module: spec.module.origin().to_string(),
            at,
            outcome: outcome.to_string(),
            message: message.to_string(),
        });
        let excess = self.history.len().saturating_sub(MAX_ROLLOUT_HISTORY);
        self.history.drain(..excess);
    }

    /// Sets the outcome of revision `revision` in the history.
    pub fn conclude(&mut self, revision: u64, outcome: &str, message: &str) {
        if let Some(record) = self.history.iter_mut().rev().find(|r| r.revision == revision) {
            record.outcome = outcome.to_string();
            record.message = message.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::LATENCY_BUCKETS_MS;

    #[test]
    fn percentages_and_node_shares_read_as_people_write_them() {
        let gates: Gates = crate::from_json(br#"{"maxErrorRate":"1%","maxP99":"200ms"}"#).unwrap();
        assert_eq!(gates.max_error_rate, Percent::new(1.0));
        let gates: Gates = crate::from_json(br#"{"maxErrorRate":0.5}"#).unwrap();
        assert_eq!(gates.max_error_rate, Percent::new(0.5));
        let bad = crate::from_json::<Gates>(br#"{"maxErrorRate":"150%"}"#).unwrap_err().to_string();
        assert!(bad.contains("not a percentage from 0 to 100"), "{bad}");
        let wave: Wave = crate::from_json(br#"{"nodes":"34%","hold":"5s"}"#).unwrap();
        assert_eq!(wave.nodes.of(3), 2, "34 % of 3 nodes rounds up");
        let wave: Wave = crate::from_json(br#"{"nodes":1}"#).unwrap();
        assert_eq!(wave.nodes.of(3), 1);
        assert_eq!(NodeShare::Percent(Percent(1.0)).of(3), 1, "a wave is at least one node");
        assert_eq!(NodeShare::Count(9).of(3), 3, "and at most all of them");
        let bad = crate::from_json::<Wave>(br#"{"nodes":"two"}"#).unwrap_err().to_string();
        assert!(bad.contains("not a number of nodes"), "{bad}");
        assert!(crate::from_json::<Wave>(br#"{"nodes":0}"#).is_err());
        assert_eq!(serde_json::to_string(&NodeShare::Percent(Percent(30.0))).unwrap(), "\"30%\"");
    }

    #[test]
    fn the_p99_is_the_bound_of_the_bucket_that_holds_it() {
        let mut figures = RequestFigures { requests: 100, server_errors: 0, latency_buckets: vec![0; LATENCY_BUCKETS_MS.len()] };
        figures.latency_buckets[RequestFigures::bucket_of(std::time::Duration::from_micros(700))] = 98;
        figures.latency_buckets[RequestFigures::bucket_of(std::time::Duration::from_millis(150))] = 2;
        assert_eq!(figures.p99_ms(), Some(200), "the 99th of 100 answers took more than 100 ms");
        figures.latency_buckets[RequestFigures::bucket_of(std::time::Duration::from_millis(150))] = 1;
        figures.latency_buckets[0] = 99;
        assert_eq!(figures.p99_ms(), Some(1));
        assert_eq!(RequestFigures::default().p99_ms(), None);
        assert_eq!(RequestFigures::bucket_of(std::time::Duration::from_secs(60)), LATENCY_BUCKETS_MS.len() - 1);
    }

    #[test]
    fn figures_since_a_baseline_count_what_came_after_and_start_over_after_a_reset() {
        let earlier = RequestFigures { requests: 10, server_errors: 1, latency_buckets: vec![10] };
        let now = RequestFigures { requests: 30, server_errors: 11, latency_buckets: vec![30] };
        let step = now.since(&earlier);
        assert_eq!((step.requests, step.server_errors, step.latency_buckets.clone()), (20, 10, vec![20]));
        assert_eq!(step.error_rate(), Some(50.0));
        let restarted = RequestFigures { requests: 3, server_errors: 0, latency_buckets: vec![3] };
        assert_eq!(restarted.since(&earlier), restarted, "an agent restarted: its counters began again");
    }

    #[test]
    fn a_change_during_a_rollout_keeps_the_revision_that_served_before_it() {
        let spec = |digest: char| -> WorkloadSpec {
            crate::from_json(
                format!(r#"{{"module":{{"source":"m.wasm","digest":"sha256:{}"}},"type":"service"}}"#, digest.to_string().repeat(64))
                    .as_bytes(),
            )
            .unwrap()
        };
        let canary = RolloutSpec::canary(vec![CanaryStep { weight: 10, hold: Duration::from_secs(5) }]);
        let now = Utc::now();
        let first = Rollout::first("web", &spec('a'), now);
        let mut b = spec('b');
        b.rollout = Some(canary.clone());
        let second = first.changed(&spec('a'), &b, now);
        assert_eq!(second.status.revision, 2);
        assert_eq!(second.status.phase, RolloutPhase::Progressing);
        assert_eq!(second.status.weight, 10);
        assert_eq!(second.status.previous.as_ref().map(|p| p.revision), Some(1));
        let mut c = spec('c');
        c.rollout = Some(canary);
        let third = second.changed(&b, &c, now);
        assert_eq!(third.status.previous.as_ref().map(|p| (p.revision, p.spec.module.digest.clone())), Some((1, spec('a').module.digest)));
        let outcomes: Vec<_> = third.status.history.iter().map(|r| (r.revision, r.outcome.as_str())).collect();
        assert_eq!(outcomes, [(1, "Complete"), (2, "Superseded"), (3, "Progressing")]);
        // Without a strategy the change completes at once (the replica-by-replica update does the work).
        let fourth = third.changed(&c, &spec('d'), now);
        assert_eq!(fourth.status.phase, RolloutPhase::Complete);
        assert_eq!(fourth.status.previous.as_ref().map(|p| p.revision), Some(1), "still the one that served before");
    }

    /// Every problem of a rollout, named with its field.
    #[test]
    fn a_rollout_that_cannot_work_is_refused_naming_the_field() {
        let problems = |kind: &str, placement: &str, rollout: &str| -> String {
            let text = format!(
                "metadata: {{name: w}}\nspec:\n  type: {kind}\n  module: {{source: m.wasm, digest: sha256:{}}}\n{placement}  rollout:\n{rollout}",
                "0".repeat(64)
            );
            match crate::from_yaml::<crate::Workload>(&text) {
                Ok(w) => w.validate().err().map(|e| e.to_string()).unwrap_or_default(),
                Err(e) => e.to_string(),
            }
        };
        let steps = "    strategy: Canary\n    steps: [{weight: 10, hold: 1m}]\n";
        assert_eq!(problems("service", "", steps), "", "a valid canary");
        let waves = "    strategy: Waves\n    waves: [{nodes: 1, hold: 1m}]\n";
        assert_eq!(problems("daemon", "  placement: everyNode\n", waves), "", "valid waves");
        for (kind, placement, rollout, needle) in [
            ("daemon", "", steps, "Canary splits a service's traffic"),
            ("service", "  placement: everyNode\n", steps, "use `Waves`, or `replicas`"),
            ("daemon", "", waves, "it needs `placement: everyNode`"),
            ("service", "", "    strategy: Canary\n", "spec.rollout.steps: a Canary rollout needs at least one step"),
            (
                "service",
                "",
                "    strategy: Canary\n    steps: [{weight: 50, hold: 1m}, {weight: 20, hold: 1m}]\n",
                "spec.rollout.steps[1].weight: 20 must be more than the step before (50)",
            ),
            ("service", "", "    strategy: Canary\n    steps: [{weight: 100, hold: 1m}]\n", "100 is not a weight from 1 to 99"),
            (
                "service",
                "",
                "    strategy: Canary\n    steps: [{weight: 10, hold: 1m}]\n    canaryHeader: \"x-wasmlet-revision: new\"\n",
                "spec.rollout.canaryHeader",
            ),
            (
                "service",
                "",
                "    strategy: Canary\n    steps: [{weight: 10, hold: 1m}]\n    gates: {minRequests: 5}\n",
                "counts only with `maxErrorRate` or `maxP99`",
            ),
            (
                "daemon",
                "  placement: everyNode\n",
                "    strategy: Waves\n    waves: [{nodes: 1}]\n    gates: {maxErrorRate: 1%}\n",
                "use `maxRestarts`",
            ),
            (
                "daemon",
                "  placement: everyNode\n",
                "    strategy: Waves\n    waves: [{nodes: 1}]\n    maxUnavailable: 0\n",
                "spec.rollout.maxUnavailable: must be at least 1",
            ),
            (
                "service",
                "",
                "    strategy: Canary\n    steps: [{weight: 10, hold: 1m}]\n    surge: 2\n",
                "spec.rollout: unknown field `surge`",
            ),
            ("service", "", "    strategy: Blue\n", "spec.rollout.strategy"),
        ] {
            let got = problems(kind, placement, rollout);
            assert!(got.contains(needle), "{kind} {placement:?} {rollout:?}: wanted {needle:?} in {got:?}");
        }
    }

    #[test]
    fn the_canary_header_is_a_name_and_a_value() {
        let mut spec = RolloutSpec::canary(vec![]);
        spec.canary_header = Some("X-Canary: always".into());
        assert_eq!(spec.canary_header(), Some(("x-canary".into(), "always".into())));
        spec.canary_header = Some("x-beta".into());
        assert_eq!(spec.canary_header(), Some(("x-beta".into(), DEFAULT_CANARY_HEADER_VALUE.into())));
    }
}
