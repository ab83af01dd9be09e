//! Fixed usage windows in UTC: calendar minute, hour, day and month.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

const MINUTE_MILLIS: i64 = 60_000;
const HOUR_MILLIS: i64 = 3_600_000;
const DAY_MILLIS: i64 = 86_400_000;

/// A fixed window of time over which usage is counted.
///
/// Every window is fixed and aligned to UTC: a minute window starts at second 0, a day
/// window at 00:00 UTC, a month window at 00:00 UTC on the first day of the month. Fixed
/// windows give an exact retry-after (the seconds until the window ends) and one counter row
/// per scope and window. The price is that a caller can spend a full minute's allowance at
/// the end of one minute and again at the start of the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// The current UTC minute.
    Minute,
    /// The current UTC hour.
    Hour,
    /// The current UTC calendar day.
    Day,
    /// The current UTC calendar month.
    Month,
}

impl Window {
    /// Every window, in the order used by counters and output.
    pub const ALL: [Window; 4] = [Window::Minute, Window::Hour, Window::Day, Window::Month];

    /// Returns the window's name as written in policies and the context (`minute`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Window::Minute => 0,
            Window::Hour => 1,
            Window::Day => 2,
            Window::Month => 3,
        }
    }

    /// Returns the start (milliseconds since the epoch) of the window that contains `millis`.
    pub fn start(self, millis: i64) -> i64 {
        match self {
            Window::Minute => millis.div_euclid(MINUTE_MILLIS) * MINUTE_MILLIS,
            Window::Hour => millis.div_euclid(HOUR_MILLIS) * HOUR_MILLIS,
            Window::Day => millis.div_euclid(DAY_MILLIS) * DAY_MILLIS,
            Window::Month => month_bounds(millis).0,
        }
    }

    /// Returns the end (exclusive, milliseconds since the epoch) of the window that contains
    /// `millis`.
    pub fn end(self, millis: i64) -> i64 {
        match self {
            Window::Minute => self.start(millis).saturating_add(MINUTE_MILLIS),
            Window::Hour => self.start(millis).saturating_add(HOUR_MILLIS),
            Window::Day => self.start(millis).saturating_add(DAY_MILLIS),
            Window::Month => month_bounds(millis).1,
        }
    }

    /// Returns the whole seconds from `millis` until the window ends, rounded up, and at
    /// least 1.
    pub fn seconds_until_end(self, millis: i64) -> u64 {
        let remaining = self.end(millis).saturating_sub(millis).max(1);
        let seconds = (remaining + 999) / 1000;
        u64::try_from(seconds).unwrap_or(1)
    }
}

/// Returns the start and end of the UTC calendar month that contains `millis`.
fn month_bounds(millis: i64) -> (i64, i64) {
    let Some(time) = Utc.timestamp_millis_opt(millis).single() else {
        // Outside chrono's range (hundreds of thousands of years away): one fixed day.
        let start = millis.div_euclid(DAY_MILLIS) * DAY_MILLIS;
        return (start, start.saturating_add(DAY_MILLIS));
    };
    let (year, month) = (time.year(), time.month());
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let first_millis = |y: i32, m: u32| {
        NaiveDate::from_ymd_opt(y, m, 1)
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(|naive| naive.and_utc().timestamp_millis())
    };
    match (
        first_millis(year, month),
        first_millis(next_year, next_month),
    ) {
        (Some(start), Some(end)) => (start, end),
        _ => {
            let start = millis.div_euclid(DAY_MILLIS) * DAY_MILLIS;
            (start, start.saturating_add(DAY_MILLIS))
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Window {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "minute" => Ok(Window::Minute),
            "hour" => Ok(Window::Hour),
            "day" => Ok(Window::Day),
            "month" => Ok(Window::Month),
            other => Err(format!(
                "unknown window `{other}`; expected `minute`, `hour`, `day` or `month`"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse_rfc3339_millis;

    fn at(text: &str) -> i64 {
        parse_rfc3339_millis(text).unwrap_or_default()
    }

    #[test]
    fn day_window_is_utc_calendar_day() {
        let now = at("2026-12-04T23:59:30Z");
        assert_eq!(Window::Day.start(now), at("2026-12-04T00:00:00Z"));
        assert_eq!(Window::Day.end(now), at("2026-12-05T00:00:00Z"));
        assert_eq!(Window::Day.seconds_until_end(now), 30);
    }

    #[test]
    fn month_window_crosses_year() {
        let now = at("2026-12-31T12:00:00Z");
        assert_eq!(Window::Month.start(now), at("2026-12-01T00:00:00Z"));
        assert_eq!(Window::Month.end(now), at("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn february_month_window_ends_on_march_first() {
        let now = at("2028-02-29T08:00:00Z");
        assert_eq!(Window::Month.end(now), at("2028-03-01T00:00:00Z"));
    }

    #[test]
    fn minute_retry_after_rounds_up() {
        let now = at("2026-12-04T12:00:59.200Z");
        assert_eq!(Window::Minute.seconds_until_end(now), 1);
        let now = at("2026-12-04T12:00:00Z");
        assert_eq!(Window::Minute.seconds_until_end(now), 60);
    }

    #[test]
    fn window_names_parse() {
        for window in Window::ALL {
            assert_eq!(window.name().parse::<Window>(), Ok(window));
        }
        assert!("week".parse::<Window>().is_err());
    }
}
