//! Tiered ("advanced") backup policies (dds-api.md §6.15–6.16) and the retention lock: the stored records and
//! the parsing of their fields that the API layer (validation), the scheduler (which days run) and retention
//! (how long a backup is kept) all need.

use chrono::{DateTime, Datelike, NaiveDate, Utc, Weekday};
use serde::{Deserialize, Serialize};

/// The advanced policies of an instance. Stored as JSON so later fields need no migration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct AdvancedPolicy {
    /// `ModifyAdvancedBackupStatus` or a first `ModifyAdvancedBackupPolicy` turned advanced backup on.
    pub enabled: bool,
    /// The data (full backup) policies, in `PolicyId` order of creation.
    pub data_policies: Vec<DataPolicy>,
    /// The log backup policies.
    pub log_policies: Vec<LogPolicy>,
    /// The last number used for a `PolicyId`; ids are never reused, even after a DELETE.
    pub last_policy_id: u64,
}

/// One data (full backup) policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DataPolicy {
    /// `PolicyId`: assigned from `last_policy_id`, never reused.
    pub policy_id: String,
    /// `dayOfWeek` | `dayOfMonth` | `dayOfYear` | `backupInterval`.
    pub backup_policy: String,
    /// `PreferredBackupPeriod`, read according to `backup_policy` (see [`Schedule::parse`]).
    pub preferred_backup_period: String,
    /// `never` | `delay`.
    pub retention_type: String,
    /// `RetentionPeriod`: days the backups are kept when `retention_type` is `delay` (7–7300).
    pub retention_period: i64,
    /// `SrcType`: only `db` is accepted.
    pub src_type: String,
    /// `SrcRegion`: only this server's region (or absent) is accepted.
    pub src_region: String,
    /// `DestType`: only `level1` is accepted.
    pub dest_type: String,
    /// `DestRegion`: only this server's region (or absent) is accepted.
    pub dest_region: String,
    /// `PreserveOneEachHour`: whether one high-frequency backup per hour is kept.
    pub preserve_one_each_hour: bool,
}

/// One log backup policy (stored and validated; log backup itself is not implemented).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct LogPolicy {
    /// `PolicyId`: assigned from `last_policy_id`, never reused.
    pub policy_id: String,
    /// `EnableLogBackup` as requested.
    pub enable_log_backup: i64,
    /// `RetentionType`: `never` | `delay`.
    pub retention_type: String,
    /// `RetentionPeriod`: days kept when `retention_type` is `delay`.
    pub retention_period: i64,
    /// `SrcType` as requested.
    pub src_type: String,
    /// `SrcRegion` as requested.
    pub src_region: String,
    /// `DestType` as requested.
    pub dest_type: String,
    /// `DestRegion` as requested.
    pub dest_region: String,
}

/// When a data policy takes backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Days of the week (`dayOfWeek`, `1`..`7` = Monday..Sunday).
    Weekly(Vec<Weekday>),
    /// Days of the month (`dayOfMonth`, `1`..`31`, `-1` = the last day).
    Monthly(Vec<i32>),
    /// One day of the year (`dayOfYear`, `MM-DD`).
    Yearly {
        /// The month, 1–12.
        month: u32,
        /// The day of the month, 1–31.
        day: u32,
    },
    /// High-frequency snapshots every that many minutes (`backupInterval`).
    Interval(i64),
}

/// High-frequency intervals in minutes accepted by advanced policies of replica sets (sharded clusters: not 15).
pub const ADVANCED_INTERVALS: [i64; 9] = [15, 30, 60, 120, 180, 240, 360, 480, 720];

impl Schedule {
    /// Parses `BackupPolicy` + `PreferredBackupPeriod` with the Dds rules (at least 2 weekdays, one day of the
    /// year, the interval list).
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(kind: &str, period: &str) -> Result<Self, String> {
        let entries: Vec<&str> = period.split(',').map(str::trim).collect();
        if period.trim().is_empty() || entries.iter().any(|e| e.is_empty()) {
            return Err(format!(
                "PreferredBackupPeriod {period:?} has an empty entry."
            ));
        }
        match kind {
            "dayOfWeek" => {
                let mut days = Vec::new();
                for e in &entries {
                    let n: u8 = e.parse().map_err(|_| {
                        format!("dayOfWeek entry {e:?} is not 1..7 (1 = Monday, 7 = Sunday).")
                    })?;
                    let day = match n {
                        1 => Weekday::Mon,
                        2 => Weekday::Tue,
                        3 => Weekday::Wed,
                        4 => Weekday::Thu,
                        5 => Weekday::Fri,
                        6 => Weekday::Sat,
                        7 => Weekday::Sun,
                        _ => {
                            return Err(format!(
                                "dayOfWeek entry {e:?} is not 1..7 (1 = Monday, 7 = Sunday)."
                            ))
                        }
                    };
                    if days.contains(&day) {
                        return Err(format!("dayOfWeek entry {e:?} appears twice."));
                    }
                    days.push(day);
                }
                if days.len() < 2 {
                    return Err("dayOfWeek needs at least 2 days per week.".into());
                }
                days.sort_by_key(Weekday::num_days_from_monday);
                Ok(Schedule::Weekly(days))
            }
            "dayOfMonth" => {
                let mut days = Vec::new();
                for e in &entries {
                    let n: i32 = e
                        .parse()
                        .ok()
                        .filter(|n| *n == -1 || (1..=31).contains(n))
                        .ok_or_else(|| {
                            format!("dayOfMonth entry {e:?} is not 1..31 or -1 (the last day).")
                        })?;
                    if days.contains(&n) {
                        return Err(format!("dayOfMonth entry {e:?} appears twice."));
                    }
                    days.push(n);
                }
                days.sort_unstable();
                Ok(Schedule::Monthly(days))
            }
            "dayOfYear" => {
                let [one] = entries.as_slice() else {
                    return Err("dayOfYear takes exactly one day, MM-DD.".into());
                };
                let bad = || format!("dayOfYear {one:?} is not a day MM-DD, e.g. 01-07.");
                let (m, d) = one.split_once('-').ok_or_else(bad)?;
                if m.len() != 2 || d.len() != 2 {
                    return Err(bad());
                }
                let month: u32 = m.parse().map_err(|_| bad())?;
                let day: u32 = d.parse().map_err(|_| bad())?;
                // 2000 is a leap year: 02-29 is a valid (leap-years-only) day.
                NaiveDate::from_ymd_opt(2000, month, day).ok_or_else(bad)?;
                Ok(Schedule::Yearly { month, day })
            }
            "backupInterval" => {
                let [one] = entries.as_slice() else {
                    return Err("backupInterval takes one number of minutes.".into());
                };
                let n: i64 = one
                    .parse()
                    .ok()
                    .filter(|n| ADVANCED_INTERVALS.contains(n))
                    .ok_or_else(|| {
                        format!(
                            "backupInterval {one:?} is not one of 15, 30, 60, 120, 180, 240, 360, 480, 720 (minutes)."
                        )
                    })?;
                Ok(Schedule::Interval(n))
            }
            other => Err(format!(
                "BackupPolicy {other:?} is not one of dayOfWeek, dayOfMonth, dayOfYear, backupInterval."
            )),
        }
    }

    /// Whether a backup taken on `day` (UTC) belongs to this policy. Interval policies match no day.
    pub fn matches(&self, day: NaiveDate) -> bool {
        match self {
            Schedule::Weekly(days) => days.contains(&day.weekday()),
            Schedule::Monthly(days) => {
                let last = !matches!(day.succ_opt(), Some(next) if next.month() == day.month());
                days.iter()
                    .any(|d| (*d == -1 && last) || u32::try_from(*d) == Ok(day.day()))
            }
            Schedule::Yearly { month, day: d } => day.month() == *month && day.day() == *d,
            Schedule::Interval(_) => false,
        }
    }

    /// The tier name a matching backup gets: `daily` (every weekday), `weekly`, `monthly`, `yearly`, or
    /// `high-frequency`.
    pub fn tier(&self) -> &'static str {
        match self {
            Schedule::Weekly(days) if days.len() == 7 => "daily",
            Schedule::Weekly(_) => "weekly",
            Schedule::Monthly(_) => "monthly",
            Schedule::Yearly { .. } => "yearly",
            Schedule::Interval(_) => "high-frequency",
        }
    }
}

/// How long a policy keeps its backups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Retention {
    /// `RetentionType = delay`: this many days after the backup.
    Days(i64),
    /// `RetentionType = never`: forever.
    Never,
}

impl Retention {
    /// Parses `RetentionType` + `RetentionPeriod` (same-region range 7..=7300 days when `delay`).
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(kind: &str, period: Option<i64>) -> Result<Self, String> {
        match kind {
            "never" => Ok(Retention::Never),
            "delay" => match period {
                Some(p) if (7..=7300).contains(&p) => Ok(Retention::Days(p)),
                Some(p) => Err(format!(
                    "RetentionPeriod {p} is out of range: 7..7300 days."
                )),
                None => Err("RetentionPeriod is required when RetentionType is delay.".into()),
            },
            other => Err(format!(
                "RetentionType {other:?} is not one of never, delay."
            )),
        }
    }

    /// The retention in the `retention_days` convention of backup jobs: -1 = forever.
    pub fn as_days(self) -> i64 {
        match self {
            Retention::Days(d) => d,
            Retention::Never => -1,
        }
    }

    /// Until when a backup taken at `t` is kept; `None` = forever.
    pub fn until(self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Retention::Days(d) => Some(t + chrono::Duration::days(d)),
            Retention::Never => None,
        }
    }
}

impl DataPolicy {
    /// The parsed schedule and retention; `None` for a stored record that does not parse (never written by the
    /// API, which validates).
    pub fn parsed(&self) -> Option<(Schedule, Retention)> {
        Some((
            Schedule::parse(&self.backup_policy, &self.preferred_backup_period).ok()?,
            Retention::parse(&self.retention_type, Some(self.retention_period)).ok()?,
        ))
    }
}

/// The retention lock of an instance: while active, backups can be neither deleted nor expire early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionLock {
    /// The instance the lock protects.
    pub instance_id: String,
    /// When the lock was switched on.
    pub enabled_at: DateTime<Utc>,
    /// When a requested unlock takes effect; `None` while no unlock is requested.
    pub unlock_at: Option<DateTime<Utc>>,
}

impl RetentionLock {
    /// Whether the lock holds at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        !matches!(self.unlock_at, Some(u) if now >= u)
    }

    /// The lock after an enable (`true`) or disable request at `now`: enabling starts a lock or cancels a pending
    /// unlock; disabling an active lock schedules the unlock `cooling_off` later, and never brings a scheduled
    /// unlock closer.
    pub fn transition(
        current: Option<RetentionLock>,
        instance_id: &str,
        enable: bool,
        now: DateTime<Utc>,
        cooling_off: chrono::Duration,
    ) -> Option<RetentionLock> {
        let active = current.filter(|l| l.is_active(now));
        match (active, enable) {
            (Some(l), true) => Some(RetentionLock {
                unlock_at: None,
                ..l
            }),
            (None, true) => Some(RetentionLock {
                instance_id: instance_id.to_string(),
                enabled_at: now,
                unlock_at: None,
            }),
            (Some(l), false) => {
                let unlock_at = l.unlock_at.unwrap_or(now + cooling_off);
                Some(RetentionLock {
                    unlock_at: Some(unlock_at),
                    ..l
                })
            }
            (None, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn schedules_parse_with_the_dds_rules() {
        assert_eq!(
            Schedule::parse("dayOfWeek", "7,1"),
            Ok(Schedule::Weekly(vec![Weekday::Mon, Weekday::Sun]))
        );
        assert_eq!(
            Schedule::parse("dayOfMonth", "-1,1, 3"),
            Ok(Schedule::Monthly(vec![-1, 1, 3]))
        );
        assert_eq!(
            Schedule::parse("dayOfYear", "02-29"),
            Ok(Schedule::Yearly { month: 2, day: 29 })
        );
        assert_eq!(
            Schedule::parse("backupInterval", "15"),
            Ok(Schedule::Interval(15))
        );
        for (k, p) in [
            ("dayOfWeek", "1"),
            ("dayOfWeek", "1,1"),
            ("dayOfWeek", "0,8"),
            ("dayOfWeek", "1,"),
            ("dayOfMonth", "0"),
            ("dayOfMonth", "32"),
            ("dayOfMonth", "-2"),
            ("dayOfYear", "01-07,02-01"),
            ("dayOfYear", "13-01"),
            ("dayOfYear", "02-30"),
            ("dayOfYear", "1-7"),
            ("backupInterval", "45"),
            ("backupInterval", "30,60"),
            ("hourly", "1"),
            ("dayOfWeek", ""),
        ] {
            assert!(Schedule::parse(k, p).is_err(), "{k} {p}");
        }
    }

    #[test]
    fn days_match() {
        let weekly = Schedule::parse("dayOfWeek", "1,5").expect("p");
        // 2026-11-27 is a Friday.
        assert!(weekly.matches(d("2026-11-27")));
        assert!(!weekly.matches(d("2026-11-28")));
        let monthly = Schedule::parse("dayOfMonth", "1,-1").expect("p");
        assert!(monthly.matches(d("2026-02-28")));
        assert!(!monthly.matches(d("2028-02-28")));
        assert!(monthly.matches(d("2028-02-29")));
        assert!(monthly.matches(d("2026-12-31")));
        assert!(monthly.matches(d("2026-12-01")));
        assert!(!monthly.matches(d("2026-12-02")));
        let yearly = Schedule::parse("dayOfYear", "01-07").expect("p");
        assert!(yearly.matches(d("2027-01-07")));
        assert!(!yearly.matches(d("2027-07-01")));
        assert!(!Schedule::Interval(30).matches(d("2027-01-07")));
        assert_eq!(
            Schedule::parse("dayOfWeek", "1,2,3,4,5,6,7")
                .expect("p")
                .tier(),
            "daily"
        );
        assert_eq!(weekly.tier(), "weekly");
    }

    #[test]
    fn retention_parses() {
        assert_eq!(Retention::parse("never", None), Ok(Retention::Never));
        assert_eq!(
            Retention::parse("delay", Some(7300)),
            Ok(Retention::Days(7300))
        );
        assert!(Retention::parse("delay", Some(6)).is_err());
        assert!(Retention::parse("delay", Some(7301)).is_err());
        assert!(Retention::parse("delay", None).is_err());
        assert!(Retention::parse("forever", Some(7)).is_err());
        assert!(Retention::Never > Retention::Days(7300));
    }

    #[test]
    fn lock_transitions() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("t");
        let day = chrono::Duration::hours(24);
        let on = RetentionLock::transition(None, "i", true, t0, day).expect("on");
        assert!(on.is_active(t0));
        assert_eq!(RetentionLock::transition(None, "i", false, t0, day), None);
        let t1 = t0 + chrono::Duration::hours(1);
        let off =
            RetentionLock::transition(Some(on.clone()), "i", false, t1, day).expect("unlocking");
        assert_eq!(off.unlock_at, Some(t1 + day));
        assert!(off.is_active(t1 + day - chrono::Duration::seconds(1)));
        assert!(!off.is_active(t1 + day));
        // A second disable never brings the unlock closer, even with a shorter cooling-off.
        let again = RetentionLock::transition(
            Some(off.clone()),
            "i",
            false,
            t1 + chrono::Duration::hours(2),
            chrono::Duration::seconds(1),
        )
        .expect("still unlocking");
        assert_eq!(again.unlock_at, off.unlock_at);
        // Enabling cancels the pending unlock and keeps the original start.
        let back = RetentionLock::transition(Some(off.clone()), "i", true, t1, day).expect("on");
        assert_eq!((back.enabled_at, back.unlock_at), (t0, None));
        // Once unlocked, enabling starts a new lock.
        let later = t1 + day + chrono::Duration::hours(1);
        let fresh = RetentionLock::transition(Some(off), "i", true, later, day).expect("on");
        assert_eq!((fresh.enabled_at, fresh.unlock_at), (later, None));
    }
}
