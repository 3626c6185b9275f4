//! Where a log read starts: a duration ago (`5m`) or an RFC 3339 time
//! (`2024-05-01T12:00:00Z`), as `wasmlet logs --since` and the `since`
//! parameter of the log endpoints take it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use crate::Duration;

/// The start of a log read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// That long before the moment the log is read.
    Ago(Duration),
    /// From that time on.
    At(DateTime<Utc>),
}

/// Why a `since` value was refused: the text and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is neither a duration nor a time: {reason} (write a duration such as `5m` or an RFC 3339 time such as `2024-05-01T12:00:00Z`)"
)]
pub struct SinceError {
    pub text: String,
    pub reason: String,
}

impl Since {
    /// The earliest time a line may have to be read, `now` being the time of
    /// the read. A duration reaching before the earliest time there is means
    /// every line.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Since::At(time) => *time,
            Since::Ago(ago) => {
                TimeDelta::from_std(ago.get()).ok().and_then(|ago| now.checked_sub_signed(ago)).unwrap_or(DateTime::<Utc>::MIN_UTC)
            }
        }
    }
}

impl FromStr for Since {
    type Err = SinceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(time) = DateTime::parse_from_rfc3339(text.trim()) {
            return Ok(Since::At(time.with_timezone(&Utc)));
        }
        match text.parse::<Duration>() {
            Ok(ago) => Ok(Since::Ago(ago)),
            Err(e) => Err(SinceError { text: text.to_string(), reason: e.reason }),
        }
    }
}

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Since::Ago(ago) => ago.fmt(f),
            Since::At(time) => f.write_str(&time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z").unwrap().with_timezone(&Utc);
        let five: Since = "5m".parse().unwrap();
        assert_eq!(five.cutoff(now).to_rfc3339(), "2024-05-01T11:55:00+00:00");
        let at: Since = "2024-05-01T13:00:00+02:00".parse().unwrap();
        assert_eq!(at.cutoff(now).to_rfc3339(), "2024-05-01T11:00:00+00:00");
        assert_eq!(at.to_string(), "2024-05-01T11:00:00Z");
        assert_eq!(at.to_string().parse::<Since>(), Ok(at));
        // The longest duration there is, from the earliest time there is: every line.
        assert_eq!(Since::Ago(Duration::MAX).cutoff(DateTime::<Utc>::MIN_UTC), DateTime::<Utc>::MIN_UTC);
    }

    #[test]
    fn absurd_values_are_refused_naming_them() {
        for text in ["300000y", "yesterday", "", "-5m", "2024-13-01T00:00:00Z"] {
            let err = text.parse::<Since>().unwrap_err().to_string();
            assert!(err.contains(&format!("`{text}`")) && err.contains("RFC 3339"), "{err}");
        }
        assert!("300000y".parse::<Since>().unwrap_err().reason.contains("longest duration"));
    }
}
