//! Durations as people write them in manifests and flags: `500ms`, `2s`, `1m`, `1h30m`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A non-negative span of time, written `500ms`, `2s`, `1m`, `1h30m`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{text}`: {reason} (write it like `500ms`, `2s`, `1m` or `1h30m`)")]
pub struct DurationError {
    pub text: String,
    pub reason: String,
}

impl Duration {
    /// The longest duration wasmlet accepts from input: 100 years (`876600h`).
    /// Anything longer means "never" to a person and overflows a clock to a
    /// program; bounding it where it is parsed keeps every deadline computed
    /// from it representable.
    pub const MAX: Duration = Duration(std::time::Duration::from_secs(100 * 365 * 86_400 + 25 * 86_400));

    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

/// The instant `wait` after `start`, for a deadline. A wait the clock cannot
/// hold counts as [`Duration::MAX`] (which it can), so a duration from input
/// never makes a deadline overflow.
pub fn deadline(start: std::time::Instant, wait: std::time::Duration) -> std::time::Instant {
    start.checked_add(wait).or_else(|| start.checked_add(Duration::MAX.0)).unwrap_or(start)
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.starts_with('-') {
            return Err(DurationError { text: s.to_string(), reason: "negative durations are not allowed".into() });
        }
        let parsed = humantime::parse_duration(text).map_err(|e| DurationError { text: s.to_string(), reason: e.to_string() })?;
        if parsed > Duration::MAX.0 {
            return Err(DurationError {
                text: s.to_string(),
                reason: format!("longer than {}, the longest duration wasmlet accepts", Duration::MAX),
            });
        }
        Ok(Duration(parsed))
    }
}

impl fmt::Display for Duration {
    /// Compact and exact, so it parses back to the same duration: `1h30m`,
    /// `2s`, `500ms`, `1m2s500ms`, `15ms215us`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        let nanos = self.0.subsec_nanos() % 1_000_000;
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        let parts = [
            (total_ms / 3_600_000, "h"),
            (total_ms / 60_000 % 60, "m"),
            (total_ms / 1000 % 60, "s"),
            (total_ms % 1000, "ms"),
            (u128::from(nanos / 1000), "us"),
            (u128::from(nanos % 1000), "ns"),
        ];
        for (value, unit) in parts {
            if value != 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("500ms".parse::<Duration>().unwrap().get().as_millis(), 500);
        assert_eq!("2s".parse::<Duration>().unwrap().get().as_secs(), 2);
        assert_eq!("1m".parse::<Duration>().unwrap().get().as_secs(), 60);
        assert_eq!("1h30m".parse::<Duration>().unwrap().get().as_secs(), 5400);
    }

    #[test]
    fn prints_compactly_and_round_trips() {
        for s in ["500ms", "2s", "1m", "1h30m", "1m2s500ms", "0s", "15ms215us", "1ns", "876600h"] {
            assert_eq!(s.parse::<Duration>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn the_longest_accepted_is_a_hundred_years() {
        assert_eq!(Duration::MAX.to_string(), "876600h");
        assert_eq!("100y".parse::<Duration>(), Ok(Duration::MAX));
        assert_eq!("876600h".parse::<Duration>(), Ok(Duration::MAX));
        let err = "300000y".parse::<Duration>().unwrap_err().to_string();
        assert!(err.contains("longer than 876600h"), "{err}");
    }

    #[test]
    fn refuses_garbage_naming_it() {
        for s in ["", "2 parsecs", "-1s", "fast", "300000y", "101y", "876601h"] {
            let err = s.parse::<Duration>().expect_err(s);
            assert!(err.to_string().contains(&format!("`{s}`")), "{err}");
        }
    }
}
