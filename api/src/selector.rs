//! Label selectors: `k=v`, `k==v`, `k!=v`, `k` (exists), `!k` (absent),
//! comma-separated; all terms must hold. The master filters lists with them,
//! the CLI checks `-l` before sending anything.

use std::collections::BTreeMap;
use std::fmt;

use crate::validate::{is_label_key, is_label_value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed selector; prints back in the canonical form the master accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Term>);

impl Selector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let term = if let Some((k, v)) = part.split_once("!=") {
                Term::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Term::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Term::Absent(k.trim().into())
            } else {
                Term::Exists(part.into())
            };
            let (key, value) = match &term {
                Term::Equals(k, v) | Term::NotEquals(k, v) => (k, Some(v)),
                Term::Exists(k) | Term::Absent(k) => (k, None),
            };
            if !is_label_key(key) {
                return Err(format!("`{part}`: `{key}` is not a label key (write `k=v`, `k!=v`, `k` or `!k`, comma-separated)"));
            }
            if let Some(value) = value
                && !is_label_value(value)
            {
                return Err(format!("`{part}`: `{value}` is not a label value (at most 63 letters, digits, '-', '_' or '.')"));
            }
            terms.push(term);
        }
        Ok(Selector(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|term| match term {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match term {
                Term::Equals(k, v) => write!(f, "{k}={v}")?,
                Term::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Term::Exists(k) => write!(f, "{k}")?,
                Term::Absent(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_labels() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string()), ("tier".to_string(), "edge".to_string())].into();
        let m = |s: &str| Selector::parse(s).unwrap().matches(&labels);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("zone!=a"));
        assert!(!m("zone"));
        assert!(m("!zone"));
        assert!(m(""));
        assert!(Selector::parse("bad key=1").unwrap_err().contains("bad key"));
    }

    #[test]
    fn selectors_parse_and_print_canonically() {
        let s = Selector::parse("app = web, tier==edge ,zone!=a,gpu,!old").unwrap();
        assert_eq!(
            s.0,
            [
                Term::Equals("app".into(), "web".into()),
                Term::Equals("tier".into(), "edge".into()),
                Term::NotEquals("zone".into(), "a".into()),
                Term::Exists("gpu".into()),
                Term::Absent("old".into()),
            ]
        );
        assert_eq!(s.to_string(), "app=web,tier=edge,zone!=a,gpu,!old");
        assert_eq!(Selector::parse("node-role.wasmlet.io/edge").unwrap().to_string(), "node-role.wasmlet.io/edge");
        assert!(Selector::parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_selectors_name_the_term() {
        let err = Selector::parse("app=web,bad key=1").unwrap_err();
        assert!(err.contains("`bad key=1`") && err.contains("not a label key"), "{err}");
        let err = Selector::parse("app=has space").unwrap_err();
        assert!(err.contains("not a label value"), "{err}");
    }
}
