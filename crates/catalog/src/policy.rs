//! Parsing of the standard Dds backup policy fields that both the API layer (validation) and the scheduler
//! (timing) need: the one-hour UTC window `HH:mmZ-HH:mmZ` and the weekday list `Monday,…,Sunday`.

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc, Weekday};

/// Dds weekday names, Monday first.
pub const WEEKDAYS: [(&str, Weekday); 7] = [
    ("Monday", Weekday::Mon),
    ("Tuesday", Weekday::Tue),
    ("Wednesday", Weekday::Wed),
    ("Thursday", Weekday::Thu),
    ("Friday", Weekday::Fri),
    ("Saturday", Weekday::Sat),
    ("Sunday", Weekday::Sun),
];

/// Parses `HH:mmZ-HH:mmZ` (UTC) whose end is exactly one hour after its start (`23:00Z-00:00Z` wraps), and
/// returns the start time of day.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn parse_backup_window(s: &str) -> Result<NaiveTime, String> {
    let bad = || format!("{s:?} is not a one-hour UTC window HH:mmZ-HH:mmZ, e.g. 03:00Z-04:00Z.");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start = parse_hhmmz(a).ok_or_else(bad)?;
    let end = parse_hhmmz(b).ok_or_else(bad)?;
    if (start + Duration::hours(1)) != end {
        return Err(format!(
            "{s:?}: the window must last exactly one hour (end = start + 1 hour), e.g. 03:00Z-04:00Z."
        ));
    }
    Ok(start)
}

fn parse_hhmmz(s: &str) -> Option<NaiveTime> {
    let t = s.strip_suffix('Z')?;
    let (h, m) = t.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// Parses a comma list of `Monday`…`Sunday` (at least one, no repeats; spaces around names are tolerated) and
/// returns the days in week order.
///
/// # Errors
/// A sentence naming the offending entry.
pub fn parse_backup_period(s: &str) -> Result<Vec<Weekday>, String> {
    let mut days: Vec<Weekday> = Vec::new();
    for raw in s.split(',') {
        let name = raw.trim();
        if name.is_empty() {
            return Err(format!(
                "{s:?}: an empty entry; give a comma-separated list of Monday..Sunday."
            ));
        }
        let day = WEEKDAYS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| *d)
            .ok_or_else(|| {
                format!(
                    "{name:?} is not a weekday; valid values: Monday..Sunday (comma-separated)."
                )
            })?;
        if days.contains(&day) {
            return Err(format!("{name:?} appears twice."));
        }
        days.push(day);
    }
    days.sort_by_key(Weekday::num_days_from_monday);
    Ok(days)
}

/// The canonical text of a weekday set (week order, comma-separated, no spaces).
pub fn format_backup_period(days: &[Weekday]) -> String {
    WEEKDAYS
        .iter()
        .filter(|(_, d)| days.contains(d))
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// The start of the policy window on the calendar day of `t` (UTC).
pub fn slot_on_day(day: chrono::NaiveDate, start: NaiveTime) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_time(start))
}

/// The first window start at or after `from` on one of `days`; `None` if `days` is empty.
pub fn next_slot_at_or_after(
    from: DateTime<Utc>,
    start: NaiveTime,
    days: &[Weekday],
) -> Option<DateTime<Utc>> {
    let mut day = from.date_naive();
    for _ in 0..8 {
        let slot = slot_on_day(day, start);
        if slot >= from && days.contains(&slot.weekday()) {
            return Some(slot);
        }
        day = day.succ_opt()?;
    }
    None
}

/// The latest window start at or before `at` on one of `days`; `None` if `days` is empty.
pub fn last_slot_at_or_before(
    at: DateTime<Utc>,
    start: NaiveTime,
    days: &[Weekday],
) -> Option<DateTime<Utc>> {
    let mut day = at.date_naive();
    for _ in 0..8 {
        let slot = slot_on_day(day, start);
        if slot <= at && days.contains(&slot.weekday()) {
            return Some(slot);
        }
        day = day.pred_opt()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn windows() {
        assert_eq!(
            parse_backup_window("03:00Z-04:00Z"),
            Ok(NaiveTime::from_hms_opt(3, 0, 0).expect("t"))
        );
        assert!(parse_backup_window("23:00Z-00:00Z").is_ok());
        assert!(parse_backup_window("10:30Z-11:30Z").is_ok());
        for bad in [
            "",
            "03:00Z",
            "03:00-04:00",
            "03:00Z-05:00Z",
            "3:00Z-4:00Z",
            "24:00Z-01:00Z",
            "03:60Z-04:60Z",
            "04:00Z-03:00Z",
            "aa:bbZ-cc:ddZ",
        ] {
            assert!(parse_backup_window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn periods() {
        assert_eq!(
            parse_backup_period("Sunday, Monday"),
            Ok(vec![Weekday::Mon, Weekday::Sun])
        );
        assert_eq!(
            format_backup_period(&[Weekday::Sun, Weekday::Mon]),
            "Monday,Sunday"
        );
        for bad in ["", "Monday,", "monday", "Mon", "Monday,Monday", "Funday"] {
            assert!(parse_backup_period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slots() {
        let start = NaiveTime::from_hms_opt(3, 0, 0).expect("t");
        // 2026-11-27 is a Friday.
        let days = [Weekday::Mon, Weekday::Fri];
        assert_eq!(
            next_slot_at_or_after(t("2026-11-27T02:00:00Z"), start, &days),
            Some(t("2026-11-27T03:00:00Z"))
        );
        assert_eq!(
            next_slot_at_or_after(t("2026-11-27T03:00:01Z"), start, &days),
            Some(t("2026-11-30T03:00:00Z"))
        );
        assert_eq!(
            last_slot_at_or_before(t("2026-11-27T03:30:00Z"), start, &days),
            Some(t("2026-11-27T03:00:00Z"))
        );
        assert_eq!(
            last_slot_at_or_before(t("2026-11-27T02:59:00Z"), start, &days),
            Some(t("2026-11-23T03:00:00Z"))
        );
        assert_eq!(
            next_slot_at_or_after(t("2026-11-27T02:00:00Z"), start, &[]),
            None
        );
    }
}
