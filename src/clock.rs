//! The engine's source of the current time, injectable so that tests move time without
//! sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch (UTC).
    fn now_millis(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            // A clock set before 1970 is misconfigured; report the epoch rather than panic.
            Err(_) => 0,
        }
    }
}

/// A clock that stays where it is set, for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicI64,
}

impl ManualClock {
    /// Creates a clock at an RFC 3339 time such as `2026-12-04T12:00:00Z`.
    pub fn at(rfc3339: &str) -> Option<Self> {
        let time = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
        Some(Self {
            millis: AtomicI64::new(time.timestamp_millis()),
        })
    }

    /// Moves the clock forward by `millis` milliseconds.
    pub fn advance_millis(&self, millis: i64) {
        self.millis.fetch_add(millis, Ordering::SeqCst);
    }

    /// Sets the clock to `millis` milliseconds since the epoch.
    pub fn set_millis(&self, millis: i64) {
        self.millis.store(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.millis.load(Ordering::SeqCst)
    }
}

/// Formats milliseconds since the epoch as a Cedar `datetime` string (RFC 3339, UTC).
pub fn format_millis(millis: i64) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write as _;

    let Some(time) = chrono::DateTime::from_timestamp_millis(millis) else {
        return "1970-01-01T00:00:00.000Z".to_string();
    };
    // Written field by field: chrono's strftime-style formatting parses its format string on
    // every call, which showed up in the profile of a check.
    let mut text = String::with_capacity(24);
    let _ = write!(
        text,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.timestamp_subsec_millis()
    );
    text
}

/// Parses an RFC 3339 time into milliseconds since the epoch.
pub fn parse_rfc3339_millis(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_round_trips_through_parse() {
        for text in [
            "2026-12-04T12:00:00.000Z",
            "1999-01-31T23:59:59.999Z",
            "2028-02-29T00:00:00.001Z",
        ] {
            let millis = parse_rfc3339_millis(text).expect("valid time");
            assert_eq!(format_millis(millis), text);
        }
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        let millis = parse_rfc3339_millis("2026-12-04T13:30:00+01:30").expect("valid time");
        assert_eq!(format_millis(millis), "2026-12-04T12:00:00.000Z");
    }
}
