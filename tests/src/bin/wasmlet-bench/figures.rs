//! The bench's output: one JSON object per figure, one per line.

use std::fmt;
use std::io::Write;

use anyhow::Context;
use serde::{Serialize, Serializer};

/// A bound a figure is judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    /// False for a value that is not a number (a ratio over zero, say).
    pub fn is_met(self, value: f64) -> bool {
        match self {
            Goal::AtMost(bound) => value <= bound,
            Goal::AtLeast(bound) => value >= bound,
        }
    }
}

/// `<= 1.0`, `<= 0.2`, `>= 10000`.
impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, bound) = match *self {
            Goal::AtMost(bound) => ("<=", bound),
            Goal::AtLeast(bound) => (">=", bound),
        };
        if bound.fract() == 0.0 && bound.abs() >= 10.0 { write!(f, "{op} {bound:.0}") } else { write!(f, "{op} {bound:?}") }
    }
}

/// A figure's value: a count stays an integer, a measure is rounded to four
/// decimals (more is noise) and is `null` when it is not a finite number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Count(u64),
    Measure(f64),
}

impl From<u64> for Value {
    fn from(count: u64) -> Self {
        Value::Count(count)
    }
}

impl From<f64> for Value {
    fn from(measure: f64) -> Self {
        Value::Measure(measure)
    }
}

impl Value {
    fn as_f64(self) -> f64 {
        match self {
            Value::Count(count) => count as f64,
            Value::Measure(measure) => measure,
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Value::Count(count) => serializer.serialize_u64(count),
            Value::Measure(measure) if measure.is_finite() => serializer.serialize_f64((measure * 1e4).round() / 1e4),
            Value::Measure(_) => serializer.serialize_none(),
        }
    }
}

/// One figure, as printed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// What was measured: `agent`, `prometheus-node-exporter`, ...
    pub subject: String,
    /// What of it, with the unit as suffix: `idle_rss_bytes`, `status_p99_ms`, ...
    pub metric: String,
    pub value: Value,
    /// The subject a ratio is taken against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "goal_text")]
    pub goal: Option<Goal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meets_goal: Option<bool>,
    /// How to read the figure, when its name does not say it all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn goal_text<S: Serializer>(goal: &Option<Goal>, serializer: S) -> Result<S::Ok, S::Error> {
    match goal {
        Some(goal) => serializer.collect_str(goal),
        None => serializer.serialize_none(),
    }
}

impl Figure {
    pub fn new(subject: &str, metric: &str, value: impl Into<Value>) -> Self {
        Figure {
            subject: subject.to_string(),
            metric: metric.to_string(),
            value: value.into(),
            reference: None,
            goal: None,
            meets_goal: None,
            note: None,
        }
    }

    /// `value / reference_value` as the figure `<metric>_ratio` of `subject`,
    /// judged against `goal`.
    pub fn ratio(subject: &str, metric: &str, value: f64, reference: &str, reference_value: f64, goal: Goal) -> Self {
        let mut figure = Figure::new(subject, &format!("{metric}_ratio"), value / reference_value).goal(goal);
        figure.reference = Some(reference.to_string());
        figure
    }

    /// Judges the figure's value against `goal`.
    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self.meets_goal = Some(goal.is_met(self.value.as_f64()));
        self
    }

    pub fn note(mut self, note: &str) -> Self {
        self.note = Some(note.to_string());
        self
    }
}

/// Where a scenario's figures go: JSON lines, flushed one by one so a reader
/// sees each figure as soon as it is measured.
pub struct Figures {
    scenario: &'static str,
    out: Box<dyn Write>,
}

#[derive(Serialize)]
struct Line<'a> {
    scenario: &'a str,
    #[serde(flatten)]
    figure: &'a Figure,
}

impl Figures {
    pub fn new(scenario: &'static str, out: Box<dyn Write>) -> Self {
        Figures { scenario, out }
    }

    pub fn emit(&mut self, figure: Figure) -> anyhow::Result<()> {
        let line = serde_json::to_string(&Line { scenario: self.scenario, figure: &figure }).context("encoding a figure")?;
        writeln!(self.out, "{line}").and_then(|()| self.out.flush()).context("writing a figure to stdout")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(figure: Figure) -> String {
        serde_json::to_string(&Line { scenario: "report", figure: &figure }).expect("encodes")
    }

    #[test]
    fn a_plain_figure_has_four_fields_in_order() {
        assert_eq!(
            line(Figure::new("agent", "idle_rss_bytes", 12_345_678_u64)),
            r#"{"scenario":"report","subject":"agent","metric":"idle_rss_bytes","value":12345678}"#
        );
    }

    #[test]
    fn a_ratio_names_its_reference_and_goal() {
        let figure = Figure::ratio("agent", "idle_rss_bytes", 5.0, "prometheus-node-exporter", 10.0, Goal::AtMost(1.0));
        assert_eq!(
            line(figure),
            r#"{"scenario":"report","subject":"agent","metric":"idle_rss_bytes_ratio","value":0.5,"reference":"prometheus-node-exporter","goal":"<= 1.0","meets_goal":true}"#
        );
    }

    #[test]
    fn an_absolute_goal_and_a_note() {
        let figure = Figure::new("agent", "status_rps", 9_999.123_456).goal(Goal::AtLeast(10_000.0)).note("n");
        assert_eq!(
            line(figure),
            r#"{"scenario":"report","subject":"agent","metric":"status_rps","value":9999.1235,"goal":">= 10000","meets_goal":false,"note":"n"}"#
        );
    }

    #[test]
    fn a_ratio_over_zero_is_null_and_misses_its_goal() {
        let figure = Figure::ratio("agent", "p99_ms", 1.0, "x", 0.0, Goal::AtMost(0.2));
        assert_eq!(figure.meets_goal, Some(false));
        assert!(line(figure).contains(r#""value":null"#));
    }

    #[test]
    fn goals_print_as_written() {
        assert_eq!(Goal::AtMost(1.0).to_string(), "<= 1.0");
        assert_eq!(Goal::AtMost(0.2).to_string(), "<= 0.2");
        assert_eq!(Goal::AtLeast(10_000.0).to_string(), ">= 10000");
    }
}
