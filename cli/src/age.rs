//! Ages as kubectl prints them: `45s`, `5m10s`, `3h`, `2d`, `1y30d`.

use chrono::{DateTime, Utc};

/// How long ago `then` was, in kubectl's short form; `<unknown>` without a time.
pub fn since(now: DateTime<Utc>, then: Option<DateTime<Utc>>) -> String {
    match then {
        Some(then) => human(now.signed_duration_since(then)),
        None => "<unknown>".into(),
    }
}

/// kubectl's `HumanDuration`: more precision while it matters, less when it is long ago.
pub fn human(d: chrono::TimeDelta) -> String {
    let seconds = d.num_seconds();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    let with = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 { format!("{big}{big_unit}") } else { format!("{big}{big_unit}{small}{small_unit}") }
    };
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    if seconds < 60 * 2 {
        format!("{seconds}s")
    } else if minutes < 10 {
        with(minutes, "m", seconds % 60, "s")
    } else if minutes < 60 * 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        with(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        with(days, "d", hours % 24, "h")
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        with(years, "y", days % 365, "d")
    } else {
        format!("{years}y")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(seconds: i64) -> String {
        human(chrono::TimeDelta::seconds(seconds))
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(-1), "0s");
        assert_eq!(age(-5), "<invalid>");
        assert_eq!(age(45), "45s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(300), "5m");
        assert_eq!(age(310), "5m10s");
        assert_eq!(age(45 * 60), "45m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(3 * 3600 + 20 * 60), "3h20m");
        assert_eq!(age(30 * 3600), "30h");
        assert_eq!(age(2 * 86400), "2d");
        assert_eq!(age(2 * 86400 + 5 * 3600), "2d5h");
        assert_eq!(age(40 * 86400), "40d");
        assert_eq!(age(3 * 365 * 86400 + 86400), "3y1d");
        assert_eq!(age(10 * 365 * 86400), "10y");
    }

    #[test]
    fn a_missing_time_is_unknown() {
        assert_eq!(since(Utc::now(), None), "<unknown>");
    }
}
