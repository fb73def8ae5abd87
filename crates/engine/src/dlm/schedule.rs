//! When a lifecycle policy's schedule is due. Two kinds, as Amazon Data Lifecycle Manager has them:
//!
//! * **Interval**: every 1, 2, 3, 4, 6, 8, 12 or 24 hours, anchored at a time of day (`Times`,
//!   `hh:mm` UTC). Every supported interval divides a day, so the slots are the same every day:
//!   `anchor + k × interval` for every integer `k`. Without `Times` AWS picks a time within the
//!   next 24 hours; we anchor at the policy's creation, so the first slot is one interval later.
//! * **Cron**: `cron(Minutes Hours Day-of-month Month Day-of-week Year)` in EventBridge's syntax:
//!   `, - * /` in every field, `?` in exactly one of the two day fields, `L`, `W` and `LW` in
//!   Day-of-month, `L`, `nL` and `n#k` in Day-of-week (1 = SUN … 7 = SAT, or `SUN`…`SAT`),
//!   `JAN`…`DEC`, years 1970–2199. DLM allows schedules between one hour and one year apart.
//!
//! Pure functions over milliseconds since the Unix epoch (UTC); the runner calls
//! [`Schedule::next_after`] with the last slot it claimed.

use time::{Date, Month, OffsetDateTime, Weekday};

use crate::model::Millis;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The intervals (hours) DLM supports.
pub const INTERVAL_HOURS: &[u32] = &[1, 2, 3, 4, 6, 8, 12, 24];
const FIRST_YEAR: i32 = 1970;
const LAST_YEAR: i32 = 2199;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Slots at `anchor + k × period` (both in ms).
    Every {
        period: i64,
        anchor: i64,
    },
    Cron(Box<Cron>),
}

impl Schedule {
    /// An interval schedule. `time_of_day` is `Times`' `hh:mm`; without it the slots are anchored
    /// at `created`.
    pub fn interval(hours: u32, time_of_day: Option<&str>, created: Millis) -> Result<Schedule, String> {
        if !INTERVAL_HOURS.contains(&hours) {
            return Err(format!("Interval {hours} is not supported: use one of 1, 2, 3, 4, 6, 8, 12 or 24 hours."));
        }
        let anchor = match time_of_day {
            Some(t) => parse_time_of_day(t)?,
            None => created,
        };
        let period = i64::from(hours) * HOUR_MS;
        Ok(Schedule::Every { period, anchor: anchor.rem_euclid(period) })
    }

    /// A `cron(...)` schedule, checked to fire at most hourly and at least yearly (from `now`).
    pub fn cron(expr: &str, now: Millis) -> Result<Schedule, String> {
        let c = Cron::parse(expr)?;
        if c.minutes.count_ones() != 1 {
            return Err(format!(
                "The cron expression {expr} runs more than once an hour: the schedule interval must be between 1 hour and 1 year."
            ));
        }
        let s = Schedule::Cron(Box::new(c));
        let first = s.next_after(now).ok_or_else(|| format!("The cron expression {expr} never runs after now."))?;
        let second = s.next_after(first);
        if first - now > 366 * DAY_MS || second.is_none_or(|n| n - first > 366 * DAY_MS) {
            return Err(format!(
                "The cron expression {expr} runs less than once a year: the schedule interval must be between 1 hour and 1 year."
            ));
        }
        Ok(s)
    }

    /// The first slot strictly after `t`, if any (a cron may have no more years to run in).
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        match self {
            Schedule::Every { period, anchor } => Some(anchor + ((t - anchor).div_euclid(*period) + 1) * period),
            Schedule::Cron(c) => c.next_after(t),
        }
    }
}

/// `hh:mm` (UTC) as milliseconds after midnight.
pub fn parse_time_of_day(t: &str) -> Result<Millis, String> {
    let bad = || format!("Time {t} is not valid: use hh:mm (UTC), e.g. 09:00.");
    let (h, m) = t.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(h * HOUR_MS + m * MINUTE_MS)
}

/// Day-of-month.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dom {
    /// `?` or `*`.
    Any,
    /// Bit `d` for day `d` (1..=31).
    Days(u32),
    /// `L`: the month's last day.
    Last,
    /// `LW`: the month's last weekday.
    LastWeekday,
    /// `nW`: the weekday nearest to day `n`, within the month.
    NearestWeekday(u8),
}

/// Day-of-week (1 = Sunday … 7 = Saturday).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dow {
    Any,
    /// Bit `d` for weekday `d` (1..=7).
    Days(u8),
    /// `nL`: the month's last weekday `n`.
    LastOf(u8),
    /// `n#k`: the month's `k`-th weekday `n`.
    Nth(u8, u8),
}

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    dom: Dom,
    /// Bit `m` for month `m` (1..=12).
    months: u16,
    dow: Dow,
    /// `None`: every year.
    years: Option<Vec<i32>>,
}

const MONTHS: &[&str] = &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One field's values (a bit per value) from its `, - * /` syntax; `names[i]` spells `lo + i`.
fn field(text: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<Vec<u32>, String> {
    let value = |s: &str| -> Result<u32, String> {
        let up = s.to_ascii_uppercase();
        if let Some(i) = names.iter().position(|n| *n == up) {
            return Ok(lo + i as u32);
        }
        match s.parse::<u32>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(v),
            _ => Err(format!("'{s}' is not a valid {what} ({lo}-{hi}).")),
        }
    };
    let mut out = Vec::new();
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 =
                    s.parse().ok().filter(|s| *s > 0).ok_or_else(|| format!("'{item}': bad step in {what}."))?;
                (r, step)
            }
            None => (item, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            // `a/n` runs from a to the end of the range.
            (a, if item.contains('/') { hi } else { a })
        };
        // A range may wrap (`FRI-MON`, `NOV-FEB`).
        let span = if b >= a { b - a } else { hi - a + 1 + b - lo };
        let mut k = 0;
        while k <= span {
            let v = a + k;
            out.push(if v > hi { v - (hi - lo + 1) } else { v });
            k += step;
        }
    }
    Ok(out)
}

fn bits<T: From<u8> + std::ops::Shl<u32, Output = T> + std::ops::BitOr<Output = T>>(vals: &[u32]) -> T {
    vals.iter().fold(T::from(0), |acc, v| acc | (T::from(1) << *v))
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let inner = expr.strip_prefix("cron(").and_then(|s| s.strip_suffix(')')).ok_or_else(|| {
            format!(
                "The cron expression {expr} must be written cron(Minutes Hours Day-of-month Month Day-of-week Year)."
            )
        })?;
        let f: Vec<&str> = inner.split_whitespace().collect();
        let [min, hour, dom, month, dow, year] = f.as_slice() else {
            return Err(format!(
                "The cron expression {expr} must have six fields: Minutes Hours Day-of-month Month Day-of-week Year."
            ));
        };
        let err = |m: String| format!("The cron expression {expr} is not valid: {m}");
        let minutes: u64 = bits(&field(min, "minute", 0, 59, &[]).map_err(err)?);
        let hours: u32 = bits(&field(hour, "hour", 0, 23, &[]).map_err(err)?);
        let months: u16 = bits(&field(month, "month", 1, 12, MONTHS).map_err(err)?);
        let years = match *year {
            "*" => None,
            y => Some(
                field(y, "year", FIRST_YEAR as u32, LAST_YEAR as u32, &[])
                    .map_err(err)?
                    .into_iter()
                    .map(|v| v as i32)
                    .collect(),
            ),
        };
        if (*dom == "?") == (*dow == "?") {
            return Err(err("exactly one of Day-of-month and Day-of-week must be '?'.".into()));
        }
        let dom = match *dom {
            "?" | "*" => Dom::Any,
            "L" => Dom::Last,
            "LW" => Dom::LastWeekday,
            d if d.ends_with('W') => {
                let n: u8 = d[..d.len() - 1]
                    .parse()
                    .ok()
                    .filter(|n| (1..=31).contains(n))
                    .ok_or_else(|| err(format!("'{d}' is not a valid day-of-month.")))?;
                Dom::NearestWeekday(n)
            }
            d => Dom::Days(bits(&field(d, "day-of-month", 1, 31, &[]).map_err(err)?)),
        };
        let weekday = |s: &str| -> Result<u8, String> {
            field(s, "day-of-week", 1, 7, WEEKDAYS)
                .ok()
                .filter(|v| v.len() == 1)
                .map(|v| v[0] as u8)
                .ok_or_else(|| err(format!("'{s}' is not a valid day-of-week.")))
        };
        let dow = match *dow {
            "?" | "*" => Dow::Any,
            "L" => Dow::Days(1 << 7),
            d if d.len() > 1 && d.ends_with('L') => Dow::LastOf(weekday(&d[..d.len() - 1])?),
            d if d.contains('#') => {
                let (w, k) = d.split_once('#').unwrap_or((d, ""));
                let k: u8 = k
                    .parse()
                    .ok()
                    .filter(|k| (1..=5).contains(k))
                    .ok_or_else(|| err(format!("'{d}': the week after '#' must be 1 to 5.")))?;
                Dow::Nth(weekday(w)?, k)
            }
            d => Dow::Days(bits(&field(d, "day-of-week", 1, 7, WEEKDAYS).map_err(err)?)),
        };
        Ok(Cron { minutes, hours, dom, months, dow, years })
    }

    fn year_ok(&self, y: i32) -> bool {
        self.years.as_ref().is_none_or(|ys| ys.contains(&y))
    }

    fn day_ok(&self, d: Date) -> bool {
        let last = d.month().length(d.year());
        let day = d.day();
        let weekday = d.weekday().number_from_sunday();
        let is_weekday = !matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday);
        let dom = match &self.dom {
            Dom::Any => true,
            Dom::Days(b) => b & (1 << day) != 0,
            Dom::Last => day == last,
            Dom::LastWeekday => {
                is_weekday
                    && (day + 1..=last).all(|later| {
                        Date::from_calendar_date(d.year(), d.month(), later)
                            .is_ok_and(|x| matches!(x.weekday(), Weekday::Saturday | Weekday::Sunday))
                    })
            }
            Dom::NearestWeekday(n) => nearest_weekday(d.year(), d.month(), *n) == Some(day),
        };
        let dow = match &self.dow {
            Dow::Any => true,
            Dow::Days(b) => b & (1 << weekday) != 0,
            Dow::LastOf(w) => weekday == *w && day + 7 > last,
            Dow::Nth(w, k) => weekday == *w && (day - 1) / 7 + 1 == *k,
        };
        dom && dow
    }

    /// The first slot strictly after `t` (minute resolution), up to the last year cron knows.
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        let start = (t.div_euclid(MINUTE_MS) + 1) * MINUTE_MS;
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(start) * 1_000_000).ok()?;
        let (mut date, first_minute) = (at.date(), at.hour() as u32 * 60 + at.minute() as u32);
        let mut from = first_minute;
        loop {
            if date.year() > LAST_YEAR {
                return None;
            }
            if !self.year_ok(date.year()) {
                date = Date::from_calendar_date(date.year() + 1, Month::January, 1).ok()?;
                from = 0;
                continue;
            }
            if self.months & (1 << date.month() as u8) == 0 {
                let (y, m) = match date.month() {
                    Month::December => (date.year() + 1, Month::January),
                    m => (date.year(), m.next()),
                };
                date = Date::from_calendar_date(y, m, 1).ok()?;
                from = 0;
                continue;
            }
            if self.day_ok(date) {
                for h in from / 60..24 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let m0 = if h == from / 60 { from % 60 } else { 0 };
                    if let Some(m) = (m0..60).find(|m| self.minutes & (1 << m) != 0) {
                        let day_ms = (date.to_julian_day() as i64 - UNIX_EPOCH_JULIAN) * DAY_MS;
                        return Some(day_ms + i64::from(h) * HOUR_MS + i64::from(m) * MINUTE_MS);
                    }
                }
            }
            date = date.next_day()?;
            from = 0;
        }
    }
}

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN: i64 = 2_440_588;

/// `nW`: the weekday nearest to day `n` of the month, never crossing into another month.
fn nearest_weekday(year: i32, month: Month, n: u8) -> Option<u8> {
    let last = month.length(year);
    let n = n.min(last);
    let d = Date::from_calendar_date(year, month, n).ok()?;
    Some(match d.weekday() {
        Weekday::Saturday if n == 1 => 3,
        Weekday::Saturday => n - 1,
        Weekday::Sunday if n == last => n - 2,
        Weekday::Sunday => n + 1,
        _ => n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `YYYY-MM-DDTHH:MM` (UTC) as milliseconds.
    fn at(s: &str) -> Millis {
        let f = time::format_description::well_known::Rfc3339;
        OffsetDateTime::parse(&format!("{s}:00Z"), &f).map(|t| t.unix_timestamp() * 1000).unwrap_or(i64::MIN)
    }

    fn next(s: &Schedule, t: &str) -> Option<Millis> {
        s.next_after(at(t))
    }

    fn cron(e: &str) -> Schedule {
        Schedule::cron(e, at("2026-11-30T00:00")).unwrap_or_else(|m| panic!("{e}: {m}"))
    }

    #[test]
    fn intervals_anchor_at_times() {
        let s = Schedule::interval(12, Some("09:30"), 0).unwrap_or_else(|m| panic!("{m}"));
        assert_eq!(next(&s, "2026-11-30T03:00"), Some(at("2026-11-30T09:30")));
        assert_eq!(next(&s, "2026-11-30T09:30"), Some(at("2026-11-30T21:30")));
        assert_eq!(next(&s, "2026-11-30T21:31"), Some(at("2026-12-01T09:30")));
        let daily = Schedule::interval(24, Some("00:00"), 0).unwrap_or_else(|m| panic!("{m}"));
        assert_eq!(next(&daily, "2026-12-31T23:59"), Some(at("2027-01-01T00:00")));
        let hourly = Schedule::interval(1, Some("23:15"), 0).unwrap_or_else(|m| panic!("{m}"));
        assert_eq!(next(&hourly, "2026-11-30T03:15"), Some(at("2026-11-30T04:15")));
    }

    #[test]
    fn intervals_without_times_start_one_interval_after_creation() {
        let created = at("2026-11-30T02:47");
        let s = Schedule::interval(2, None, created).unwrap_or_else(|m| panic!("{m}"));
        assert_eq!(s.next_after(created), Some(at("2026-11-30T04:47")));
        assert_eq!(s.next_after(at("2026-11-30T04:47")), Some(at("2026-11-30T06:47")));
    }

    #[test]
    fn bad_intervals_and_times_are_refused() {
        for h in [0, 5, 7, 9, 25, 48] {
            assert!(Schedule::interval(h, None, 0).is_err(), "{h}");
        }
        for t in ["9:00", "24:00", "12:60", "1200", "ab:cd", "12:5", ""] {
            assert!(Schedule::interval(24, Some(t), 0).is_err(), "{t}");
        }
    }

    #[test]
    fn cron_fields() {
        // Every day at 09:15.
        let s = cron("cron(15 9 * * ? *)");
        assert_eq!(next(&s, "2026-11-30T09:14"), Some(at("2026-11-30T09:15")));
        assert_eq!(next(&s, "2026-11-30T09:15"), Some(at("2026-12-01T09:15")));
        // Every 6 hours on the hour.
        let s = cron("cron(0 0/6 * * ? *)");
        assert_eq!(next(&s, "2026-11-30T06:00"), Some(at("2026-11-30T12:00")));
        assert_eq!(next(&s, "2026-11-30T19:00"), Some(at("2026-12-01T00:00")));
        // Weekdays at 18:00 (MON-FRI), from a Saturday.
        let s = cron("cron(0 18 ? * MON-FRI *)");
        assert_eq!(next(&s, "2026-11-28T12:00"), Some(at("2026-11-30T18:00")));
        // Lists and ranges of hours, months by name.
        let s = cron("cron(30 1,13-14 1 JAN,JUL ? *)");
        assert_eq!(next(&s, "2026-11-30T00:00"), Some(at("2027-01-01T01:30")));
        assert_eq!(next(&s, "2027-01-01T01:30"), Some(at("2027-01-01T13:30")));
        assert_eq!(next(&s, "2027-01-01T14:30"), Some(at("2027-07-01T01:30")));
        // Years (parsed without the one-year rule, which this schedule breaks).
        let s = Schedule::Cron(Box::new(Cron::parse("cron(0 0 1 1 ? 2028-2029)").unwrap_or_else(|m| panic!("{m}"))));
        assert_eq!(next(&s, "2026-11-30T00:00"), Some(at("2028-01-01T00:00")));
        assert_eq!(next(&s, "2029-01-01T00:00"), None);
    }

    #[test]
    fn cron_special_days() {
        // Last day of the month (February of a leap year).
        let s = cron("cron(0 12 L * ? *)");
        assert_eq!(next(&s, "2028-02-01T00:00"), Some(at("2028-02-29T12:00")));
        // Last weekday: 2026-10-31 is a Saturday, so Friday the 30th.
        let s = cron("cron(0 12 LW * ? *)");
        assert_eq!(next(&s, "2026-10-01T00:00"), Some(at("2026-10-30T12:00")));
        // Nearest weekday to the 1st: 2026-08-01 is a Saturday, so Monday the 3rd (not July 31).
        let s = cron("cron(0 12 1W * ? *)");
        assert_eq!(next(&s, "2026-07-15T00:00"), Some(at("2026-08-03T12:00")));
        // Nearest weekday to the 15th: 2026-11-15 is a Sunday, so Monday the 16th.
        let s = cron("cron(0 12 15W * ? *)");
        assert_eq!(next(&s, "2026-11-01T00:00"), Some(at("2026-11-16T12:00")));
        // Second Tuesday; last Friday; `L` alone is Saturday.
        let s = cron("cron(0 12 ? * 3#2 *)");
        assert_eq!(next(&s, "2026-12-01T00:00"), Some(at("2026-12-08T12:00")));
        let s = cron("cron(0 12 ? * 6L *)");
        assert_eq!(next(&s, "2026-12-01T00:00"), Some(at("2026-12-25T12:00")));
        let s = cron("cron(0 12 ? * L *)");
        assert_eq!(next(&s, "2026-11-30T00:00"), Some(at("2026-12-05T12:00")));
        // A wrapping day-of-week range: SAT-SUN.
        let s = cron("cron(0 8 ? * SAT-SUN *)");
        assert_eq!(next(&s, "2026-12-06T08:00"), Some(at("2026-12-12T08:00")));
    }

    #[test]
    fn cron_errors() {
        let now = at("2026-11-30T00:00");
        for e in [
            "0 12 * * ? *",
            "cron(0 12 * * ?)",
            "cron(0 12 * * * *)",
            "cron(0 12 ? * ? *)",
            "cron(60 12 * * ? *)",
            "cron(0 24 * * ? *)",
            "cron(0 12 32 * ? *)",
            "cron(0 12 * 13 ? *)",
            "cron(0 12 ? * 8 *)",
            "cron(0 12 ? * MON#6 *)",
            "cron(0 12 * FOO ? *)",
            "cron(0/0 12 * * ? *)",
            // More often than hourly.
            "cron(* * * * ? *)",
            "cron(0,30 * * * ? *)",
            // Less often than yearly, or never again.
            "cron(0 0 29 2 ? *)",
            "cron(0 0 1 1 ? 2020)",
        ] {
            assert!(Schedule::cron(e, now).is_err(), "{e} was accepted");
        }
    }
}
