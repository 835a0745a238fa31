//! Allowed windows and blackouts in IANA time zones.
//!
//! Wall-clock rules, used everywhere here:
//! - a window is open from `start` (inclusive) to `end` (exclusive) on each listed day, in the
//!   window's zone; `start` after `end` wraps past midnight and the window belongs to the day it
//!   opens on; `24:00` is midnight at the end of the day;
//! - a wall time that a DST change skips (spring forward) means the instant the clock jumps to;
//!   a wall time that occurs twice (fall back) means its first occurrence;
//! - a blackout given as dates runs from the start day's midnight to the end of the end day; one
//!   given as date-times runs from `start` (inclusive) to `end` (exclusive).

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc,
};
use chrono_tz::Tz;

use crate::crd::deployment_policy::{Blackout, TimeWindow, Weekday};

/// The wall-clock time of `t` in `tz`; None for an instant whose local time no date represents
/// (the very ends of chrono's range), where `with_timezone` would panic.
pub fn local(t: DateTime<Utc>, tz: Tz) -> Option<NaiveDateTime> {
    use chrono::Offset;
    let offset = tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    t.naive_utc().checked_add_offset(offset)
}

/// A window with its zone and times parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    days: [bool; 7],
    start: NaiveTime,
    /// Minutes after the opening day's midnight at which the window closes (may exceed a day).
    end_offset: Duration,
    tz: Tz,
}

/// A blackout with its zone and bounds resolved to instants.
#[derive(Clone, Debug, PartialEq)]
pub struct Period {
    /// First instant inside.
    pub start: DateTime<Utc>,
    /// First instant after.
    pub end: DateTime<Utc>,
    /// Why.
    pub reason: String,
}

/// Parses an IANA zone name, with a message a user understands.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone {name:?} (use an IANA name such as Europe/London or America/New_York)"))
}

fn parse_hhmm(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("time {s:?} is not HH:MM");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m != 0) || h.to_string().len() > 2 {
        return Err(bad());
    }
    Ok((h, m))
}

fn weekday_index(d: Weekday) -> usize {
    match d {
        Weekday::Monday => 0,
        Weekday::Tuesday => 1,
        Weekday::Wednesday => 2,
        Weekday::Thursday => 3,
        Weekday::Friday => 4,
        Weekday::Saturday => 5,
        Weekday::Sunday => 6,
    }
}

/// The instant of a wall-clock time in `tz`, with the DST rules of this module.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    // A skipped wall time: walk forward to the first wall time that exists (the jump target).
    for _ in 0..=24 * 60 {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
            LocalResult::None => match probe.checked_add_signed(Duration::minutes(1)) {
                Some(next) => probe = next,
                None => break,
            },
        }
    }
    // No zone skips a whole day; treat the wall time as UTC rather than fail.
    Utc.from_utc_datetime(&local)
}

impl Window {
    /// Parses a window, with a message naming what is wrong.
    pub fn parse(w: &TimeWindow) -> Result<Window, String> {
        let tz = parse_tz(&w.time_zone)?;
        let (sh, sm) = parse_hhmm(&w.start)?;
        let (eh, em) = parse_hhmm(&w.end)?;
        if sh == 24 {
            return Err(format!("window start {:?} must be before 24:00", w.start));
        }
        if w.days.is_empty() {
            return Err("window has no days: list at least one day, e.g. [monday, tuesday]".into());
        }
        if (sh, sm) == (eh, em) || (eh, em) == (0, 0) && (sh, sm) == (0, 0) {
            return Err(format!(
                "window start {} and end {} are the same: use 00:00-24:00 for a whole day",
                w.start, w.end
            ));
        }
        // Hours and minutes are parsed as at most 24 and 59.
        let minutes = |h: u32, m: u32| i64::from(h).saturating_mul(60).saturating_add(i64::from(m));
        let start_min = minutes(sh, sm);
        let mut end_min = minutes(eh, em);
        if end_min <= start_min {
            end_min = end_min.saturating_add(24 * 60);
        }
        let mut days = [false; 7];
        for d in &w.days {
            if let Some(day) = days.get_mut(weekday_index(*d)) {
                *day = true;
            }
        }
        let start = NaiveTime::from_hms_opt(sh, sm, 0)
            .ok_or_else(|| format!("window start {} is not a time of day", w.start))?;
        Ok(Window {
            days,
            start,
            end_offset: Duration::minutes(end_min),
            tz,
        })
    }

    /// The interval of the window opening on local day `day`, if it opens that day.
    fn interval(&self, day: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let weekday = day.weekday().num_days_from_monday() as usize;
        if !self.days.get(weekday).copied().unwrap_or(false) {
            return None;
        }
        let midnight = day.and_time(NaiveTime::MIN);
        let open = resolve_local(self.tz, day.and_time(self.start));
        let close = resolve_local(self.tz, midnight.checked_add_signed(self.end_offset)?);
        (open < close).then_some((open, close))
    }

    /// Whether the window is open at `t`.
    pub fn is_open(&self, t: DateTime<Utc>) -> bool {
        self.next_open(t) == Some(t)
    }

    /// The first instant at or after `t` at which the window is open (None also for an instant
    /// beyond what dates represent).
    pub fn next_open(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = local(t, self.tz)?.date();
        (-1..=8)
            .filter_map(|d| self.interval(today.checked_add_signed(Duration::days(d))?))
            .find(|(_, close)| *close > t)
            .map(|(open, _)| open.max(t))
    }
}

fn parse_bound(s: &str, tz: Tz, is_end: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(day) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let day = if is_end {
            day.succ_opt().ok_or("date out of range")?
        } else {
            day
        };
        return Ok(resolve_local(tz, day.and_time(NaiveTime::MIN)));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M")
        .map(|local| resolve_local(tz, local))
        .map_err(|_| {
            format!("{s:?} is neither a date (YYYY-MM-DD) nor a date-time (YYYY-MM-DDTHH:MM)")
        })
}

impl Period {
    /// Parses a blackout, refusing one whose end is before its start.
    pub fn parse(b: &Blackout) -> Result<Period, String> {
        let tz = parse_tz(&b.time_zone)?;
        if (b.start.len() == 10) != (b.end.len() == 10) {
            return Err(format!(
                "blackout start {:?} and end {:?} must both be dates (YYYY-MM-DD) or both date-times (YYYY-MM-DDTHH:MM)",
                b.start, b.end
            ));
        }
        let start = parse_bound(&b.start, tz, false)?;
        let end = parse_bound(&b.end, tz, true)?;
        if end <= start {
            let relation = if b.end < b.start {
                "is before"
            } else {
                "is the same moment as"
            };
            return Err(format!(
                "blackout {:?}: end {} {relation} its start {}",
                b.reason, b.end, b.start
            ));
        }
        Ok(Period {
            start,
            end,
            reason: b.reason.clone(),
        })
    }

    /// Whether `t` is inside the blackout.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
}

#[cfg(test)]
#[path = "time_tests.rs"]
mod tests;
