//! Tiered (GFS) retention: which backups an instance's policies keep, and until when.
//!
//! The rules, in one place for the scheduler (the expiry a new automatic backup is given), the garbage collector
//! (what it deletes) and `ddsvault retention --dry-run` (what it would delete):
//! - Every backup is kept until its recorded expiry (`BackupExpireTime`: the retention it was taken with, or a
//!   later time set by ModifyBackupExpireTime). Nothing here ever deletes a backup before it.
//! - A backup of a standard slot (the `PreferredBackupTime` window) belongs to every advanced data policy whose
//!   days contain the slot's UTC day (its *tiers*: daily, weekly, monthly, yearly); it is kept until the slot
//!   plus the longest of their retentions (`never`: forever). Policies are read as they are now, so lengthening
//!   a policy lengthens the backups it covers; shortening one never shortens a recorded expiry.
//! - A high-frequency snapshot is kept `all` long after its slot; with `PreserveOneEachHour`, the first
//!   snapshot of each UTC hour is kept `hourly` long (see [`HighFrequency`]).
//! - Manual backups have only their recorded expiry.
//!
//! [`plan_retention`] is a pure function of the backups, the rules and `now`; the order of its input does not
//! matter.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use ddsvault_catalog::advanced::{Retention, Schedule};
use ddsvault_catalog::{permanent_expiry, AdvancedPolicy, BackupPolicy};

/// One advanced data policy that takes backups on some days.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    /// The advanced policy's `PolicyId`.
    pub policy_id: String,
    /// The days it takes backups on.
    pub schedule: Schedule,
    /// How long its backups are kept.
    pub retention: Retention,
}

/// High-frequency snapshots: taken every `interval_minutes`; all kept `all` long after their slot; with
/// `hourly`, the first snapshot of each UTC hour is kept that long instead (PreserveOneEachHour).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HighFrequency {
    /// Minutes between snapshots (`BackupInterval`).
    pub interval_minutes: i64,
    /// How long every snapshot is kept after its slot.
    pub all: Retention,
    /// How long the first snapshot of each UTC hour is kept (PreserveOneEachHour); `None`: off.
    pub hourly: Option<Retention>,
}

/// The retention rules of an instance, derived from its standard and advanced policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionRules {
    /// Advanced day-based data policies; empty = the standard policy decides the days.
    pub tiers: Vec<Tier>,
    /// High-frequency snapshots, when they are on.
    pub high_frequency: Option<HighFrequency>,
}

impl RetentionRules {
    /// The rules of the policies as stored. Records that do not parse (never written by the API) are ignored.
    ///
    /// High-frequency snapshots need `SnapshotBackupType = Flash`. They come from an advanced `backupInterval`
    /// policy if there is one (then: without
    /// PreserveOneEachHour, all are kept for its retention; with it, all for `HighFrequencyBackupRetention` days
    /// and the first of each hour for its retention), else from the standard policy when
    /// `SnapshotBackupType = Flash` and `BackupInterval > 0` (all kept `HighFrequencyBackupRetention` days; with
    /// PreserveOneEachHour, the first of each hour for `BackupRetentionPeriod`).
    pub fn from_policies(standard: &BackupPolicy, advanced: Option<&AdvancedPolicy>) -> Self {
        let dense = Retention::Days(standard.high_frequency_backup_retention.max(1));
        let mut rules = RetentionRules::default();
        for p in advanced
            .filter(|a| a.enabled)
            .map_or(&[][..], |a| &a.data_policies)
        {
            let Some((schedule, retention)) = p.parsed() else {
                continue;
            };
            if let Schedule::Interval(minutes) = schedule {
                // High-frequency backup needs Flash snapshots, whichever policy asks for it.
                if standard.snapshot_backup_type != "Flash" {
                    continue;
                }
                rules.high_frequency = Some(if p.preserve_one_each_hour {
                    HighFrequency {
                        interval_minutes: minutes,
                        all: dense,
                        hourly: Some(retention),
                    }
                } else {
                    HighFrequency {
                        interval_minutes: minutes,
                        all: retention,
                        hourly: None,
                    }
                });
            } else {
                rules.tiers.push(Tier {
                    policy_id: p.policy_id.clone(),
                    schedule,
                    retention,
                });
            }
        }
        if rules.high_frequency.is_none()
            && standard.snapshot_backup_type == "Flash"
            && standard.backup_interval > 0
        {
            let long = if standard.backup_retention_period < 0 {
                Retention::Never
            } else {
                Retention::Days(standard.backup_retention_period)
            };
            rules.high_frequency = Some(HighFrequency {
                interval_minutes: standard.backup_interval,
                all: dense,
                hourly: standard.preserve_one_each_hour.then_some(long),
            });
        }
        rules
    }

    /// The tiers a backup of a standard slot on `day` belongs to.
    pub fn tiers_on(&self, day: NaiveDate) -> Vec<&Tier> {
        self.tiers
            .iter()
            .filter(|t| t.schedule.matches(day))
            .collect()
    }

    /// For a standard slot on `day` under advanced policies: the longest retention of its tiers and their
    /// names. `None` if no tier takes a backup that day.
    pub fn slot_retention(&self, day: NaiveDate) -> Option<(Retention, Vec<&'static str>)> {
        let tiers = self.tiers_on(day);
        let longest = tiers.iter().map(|t| t.retention).max()?;
        let mut names: Vec<&'static str> = tiers.iter().map(|t| t.schedule.tier()).collect();
        names.sort_unstable();
        names.dedup();
        Some((longest, names))
    }
}

/// Which schedule took a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKind {
    /// The standard schedule: the policy window (`PreferredBackupTime`) on the policy days.
    Standard,
    /// The high-frequency schedule (`BackupInterval`).
    HighFrequency,
}

/// What retention needs to know of one successful backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The backup set.
    pub backup_id: i64,
    /// The recorded expiry; `None` only for a backup that never completed (kept: not ours to judge).
    pub expire_time: Option<DateTime<Utc>>,
    /// The schedule slot that took it; `None` for manual backups.
    pub slot: Option<(SlotKind, DateTime<Utc>)>,
}

/// A backup kept, until when (`None`: forever) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keep {
    /// The backup set.
    pub backup_id: i64,
    /// The new expiry; `None`: forever.
    pub until: Option<DateTime<Utc>>,
    /// Which rule keeps it.
    pub reason: String,
}

/// A backup to delete, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// The backup set.
    pub backup_id: i64,
    /// Why no rule keeps it.
    pub reason: String,
}

/// The outcome of [`plan_retention`], each list sorted by backup id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Backups kept longer than their recorded expiry.
    pub keep: Vec<Keep>,
    /// Backups to delete.
    pub delete: Vec<Delete>,
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A reason to keep a backup until a time (`None`: forever); the longest wins.
struct Hold {
    until: Option<DateTime<Utc>>,
    reason: String,
}

impl Hold {
    fn longer(self, other: Hold) -> Hold {
        match (self.until, other.until) {
            (None, _) => self,
            (_, None) => other,
            (Some(a), Some(b)) if b > a => other,
            _ => self,
        }
    }
}

/// Decides, at `now`, which of `backups` (the successful backups of one instance) the `rules` keep and which are
/// to be deleted. See the module documentation for the rules.
pub fn plan_retention(backups: &[Candidate], rules: &RetentionRules, now: DateTime<Utc>) -> Plan {
    let first_of_hour = first_high_frequency_of_each_hour(backups);
    let permanent = permanent_expiry();
    let mut plan = Plan::default();
    for b in backups {
        let Some(expire) = b.expire_time else {
            plan.keep.push(Keep {
                backup_id: b.backup_id,
                until: None,
                reason: "not completed: no expiry yet".into(),
            });
            continue;
        };
        let mut hold = Hold {
            until: (expire < permanent).then_some(expire),
            reason: if expire < permanent {
                format!("recorded expiry {}", fmt_time(expire))
            } else {
                "kept permanently (recorded expiry 9999-01-01T00:00:00Z)".into()
            },
        };
        match b.slot {
            Some((SlotKind::Standard, slot)) => {
                for t in rules.tiers_on(slot.date_naive()) {
                    hold = hold.longer(Hold {
                        until: t.retention.until(slot),
                        reason: format!(
                            "{} policy {} ({} slot {})",
                            t.schedule.tier(),
                            t.policy_id,
                            slot.format("%A %Y-%m-%d"),
                            match t.retention {
                                Retention::Never => "kept forever".to_string(),
                                Retention::Days(d) => format!("kept {d} days"),
                            }
                        ),
                    });
                }
            }
            Some((SlotKind::HighFrequency, slot)) => {
                if let Some(hf) = &rules.high_frequency {
                    hold = hold.longer(Hold {
                        until: hf.all.until(slot),
                        reason: format!("high-frequency snapshot of {}", fmt_time(slot)),
                    });
                    if let Some(hourly) = hf.hourly {
                        if first_of_hour.contains(&b.backup_id) {
                            hold = hold.longer(Hold {
                                until: hourly.until(slot),
                                reason: format!(
                                    "first high-frequency snapshot of the hour {} (PreserveOneEachHour)",
                                    slot.format("%Y-%m-%dT%H:00Z")
                                ),
                            });
                        }
                    }
                }
            }
            None => {}
        }
        match hold.until {
            Some(until) if until <= now => plan.delete.push(Delete {
                backup_id: b.backup_id,
                reason: format!("expired {}; last hold: {}", fmt_time(until), hold.reason),
            }),
            until => plan.keep.push(Keep {
                backup_id: b.backup_id,
                until,
                reason: hold.reason,
            }),
        }
    }
    plan.keep.sort_by_key(|k| k.backup_id);
    plan.delete.sort_by_key(|d| d.backup_id);
    plan
}

/// The high-frequency snapshots that are the first (earliest slot, then lowest id) of their UTC hour.
fn first_high_frequency_of_each_hour(backups: &[Candidate]) -> HashSet<i64> {
    let mut first: BTreeMap<DateTime<Utc>, (DateTime<Utc>, i64)> = BTreeMap::new();
    for b in backups {
        if let Some((SlotKind::HighFrequency, slot)) = b.slot {
            let hour = slot
                .with_minute(0)
                .and_then(|t| t.with_second(0))
                .and_then(|t| t.with_nanosecond(0))
                .unwrap_or(slot);
            let entry = first.entry(hour).or_insert((slot, b.backup_id));
            if (slot, b.backup_id) < *entry {
                *entry = (slot, b.backup_id);
            }
        }
    }
    first.values().map(|(_, id)| *id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddsvault_catalog::DataPolicy;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn data(id: &str, kind: &str, period: &str, retention: Option<i64>) -> DataPolicy {
        DataPolicy {
            policy_id: id.into(),
            backup_policy: kind.into(),
            preferred_backup_period: period.into(),
            retention_type: if retention.is_some() {
                "delay"
            } else {
                "never"
            }
            .into(),
            retention_period: retention.unwrap_or(0),
            ..DataPolicy::default()
        }
    }

    /// Daily (7 days), weekly on Sunday (8 weeks), monthly on the 1st (1 year), yearly on 01-01 (forever).
    fn gfs() -> RetentionRules {
        RetentionRules::from_policies(
            &BackupPolicy::default(),
            Some(&AdvancedPolicy {
                enabled: true,
                data_policies: vec![
                    data("1", "dayOfWeek", "1,2,3,4,5,6,7", Some(7)),
                    data("2", "dayOfWeek", "6,7", Some(56)),
                    data("3", "dayOfMonth", "1", Some(365)),
                    data("4", "dayOfYear", "01-01", None),
                ],
                log_policies: Vec::new(),
                last_policy_id: 4,
            }),
        )
    }

    /// A standard-slot backup of `day` at 03:00Z whose recorded expiry is 7 days later.
    fn daily(id: i64, day: &str) -> Candidate {
        let slot = at(&format!("{day}T03:00:00Z"));
        Candidate {
            backup_id: id,
            expire_time: Some(slot + chrono::Duration::days(7)),
            slot: Some((SlotKind::Standard, slot)),
        }
    }

    fn ids(plan: &Plan) -> (Vec<i64>, Vec<i64>) {
        (
            plan.keep.iter().map(|k| k.backup_id).collect(),
            plan.delete.iter().map(|d| d.backup_id).collect(),
        )
    }

    #[test]
    fn gfs_keeps_the_right_set() {
        let rules = gfs();
        // Every day of 2026 (2026-01-01 is a Thursday), looked at on 2027-01-01T12:00Z.
        let start = NaiveDate::from_ymd_opt(2026, 1, 1).expect("d");
        let backups: Vec<Candidate> = (0..365)
            .map(|i| {
                let day = start + chrono::Duration::days(i);
                daily(i + 1, &day.format("%Y-%m-%d").to_string())
            })
            .collect();
        let plan = plan_retention(&backups, &rules, at("2027-01-01T12:00:00Z"));
        let kept: Vec<String> = plan
            .keep
            .iter()
            .map(|k| {
                (start + chrono::Duration::days(k.backup_id - 1))
                    .format("%m-%d")
                    .to_string()
            })
            .collect();
        // Yearly: 01-01 forever. Monthly: the 1st of each month within 365 days (2026-01-01 is 365 days old
        // at 03:00, so only the yearly tier keeps it). Weekly: Saturdays and Sundays of the last 56 days.
        // Daily: the last 7 days.
        let mut expected: Vec<&str> = vec![
            "01-01", "02-01", "03-01", "04-01", "05-01", "06-01", "07-01", "08-01", "09-01",
            "10-01", "11-01", "11-07", "11-08", "11-14", "11-15", "11-21", "11-22", "11-28",
            "11-29", "12-01", "12-05", "12-06", "12-12", "12-13", "12-19", "12-20", "12-26",
            "12-27", "12-28", "12-29", "12-30", "12-31",
        ];
        expected.sort_unstable();
        assert_eq!(kept, expected);
        assert_eq!(plan.keep.len() + plan.delete.len(), 365);
        let yearly = &plan.keep[0];
        assert_eq!((yearly.backup_id, yearly.until), (1, None));
        assert!(
            yearly.reason.contains("yearly policy 4"),
            "{}",
            yearly.reason
        );
        let dec1 = plan
            .keep
            .iter()
            .find(|k| k.backup_id == 335)
            .expect("2026-12-01");
        assert_eq!(dec1.until, Some(at("2027-12-01T03:00:00Z")));
        assert!(dec1.reason.contains("monthly policy 3"), "{}", dec1.reason);
        let gone = plan
            .delete
            .iter()
            .find(|d| d.backup_id == 2)
            .expect("2026-01-02");
        assert!(
            gone.reason.starts_with("expired 2026-01-09T03:00:00Z"),
            "{}",
            gone.reason
        );
    }

    #[test]
    fn recorded_expiry_and_manual_backups() {
        let rules = gfs();
        let now = at("2026-06-10T00:00:00Z");
        let backups = vec![
            // Manual, expired.
            Candidate {
                backup_id: 1,
                expire_time: Some(at("2026-06-09T00:00:00Z")),
                slot: None,
            },
            // Manual, extended by ModifyBackupExpireTime.
            Candidate {
                backup_id: 2,
                expire_time: Some(at("2026-07-01T00:00:00Z")),
                slot: None,
            },
            // Permanent.
            Candidate {
                backup_id: 3,
                expire_time: Some(permanent_expiry()),
                slot: None,
            },
            // A Tuesday slot whose recorded expiry is longer than its daily tier: the record wins.
            Candidate {
                backup_id: 4,
                expire_time: Some(at("2026-06-20T00:00:00Z")),
                slot: Some((SlotKind::Standard, at("2026-05-26T03:00:00Z"))),
            },
            Candidate {
                backup_id: 5,
                expire_time: None,
                slot: None,
            },
        ];
        let plan = plan_retention(&backups, &rules, now);
        assert_eq!(ids(&plan), (vec![2, 3, 4, 5], vec![1]));
        assert_eq!(plan.keep[1].until, None);
        assert_eq!(plan.keep[2].until, Some(at("2026-06-20T00:00:00Z")));
        // Without advanced policies only the recorded expiry counts.
        let plain = plan_retention(&backups, &RetentionRules::default(), now);
        assert_eq!(ids(&plain), (vec![2, 3, 4, 5], vec![1]));
    }

    #[test]
    fn high_frequency_thinning_keeps_the_first_of_each_hour() {
        let standard = BackupPolicy {
            snapshot_backup_type: "Flash".into(),
            backup_interval: 15,
            high_frequency_backup_retention: 1,
            preserve_one_each_hour: true,
            backup_retention_period: 7,
            ..BackupPolicy::default()
        };
        let rules = RetentionRules::from_policies(&standard, None);
        assert_eq!(
            rules.high_frequency,
            Some(HighFrequency {
                interval_minutes: 15,
                all: Retention::Days(1),
                hourly: Some(Retention::Days(7)),
            })
        );
        // Snapshots every 15 minutes from 10:00 to 11:45, except 10:00 itself (failed): 10:15 is the first of
        // its hour.
        let base = at("2026-03-01T10:00:00Z");
        let backups: Vec<Candidate> = (1..8)
            .map(|i| {
                let slot = base + chrono::Duration::minutes(15 * i);
                Candidate {
                    backup_id: i,
                    expire_time: Some(slot + chrono::Duration::days(1)),
                    slot: Some((SlotKind::HighFrequency, slot)),
                }
            })
            .collect();
        // Within a day: all kept.
        let plan = plan_retention(&backups, &rules, at("2026-03-02T09:00:00Z"));
        assert!(plan.delete.is_empty());
        // After the day: the first of each hour (10:15 → id 1, 11:00 → id 4) stays for 7 days.
        let plan = plan_retention(&backups, &rules, at("2026-03-03T00:00:00Z"));
        assert_eq!(ids(&plan), (vec![1, 4], vec![2, 3, 5, 6, 7]));
        assert_eq!(plan.keep[0].until, Some(at("2026-03-08T10:15:00Z")));
        assert!(plan.keep[0].reason.contains("PreserveOneEachHour"));
        let plan = plan_retention(&backups, &rules, at("2026-03-08T10:15:00Z"));
        assert_eq!(ids(&plan), (vec![4], vec![1, 2, 3, 5, 6, 7]));
        // Without PreserveOneEachHour: all go after the day.
        let plain = RetentionRules::from_policies(
            &BackupPolicy {
                preserve_one_each_hour: false,
                ..standard
            },
            None,
        );
        let plan = plan_retention(&backups, &plain, at("2026-03-03T00:00:00Z"));
        assert!(plan.keep.is_empty());
    }

    #[test]
    fn rules_from_policies() {
        // Standard snapshots: no high-frequency rule; a disabled advanced policy is not applied.
        let mut adv = AdvancedPolicy {
            enabled: false,
            data_policies: vec![
                data("1", "dayOfMonth", "1", Some(30)),
                data("2", "backupInterval", "30", Some(14)),
            ],
            log_policies: Vec::new(),
            last_policy_id: 2,
        };
        assert_eq!(
            RetentionRules::from_policies(&BackupPolicy::default(), Some(&adv)),
            RetentionRules::default()
        );
        adv.enabled = true;
        // Standard snapshots: the interval policy takes no snapshots.
        let rules = RetentionRules::from_policies(&BackupPolicy::default(), Some(&adv));
        assert_eq!((rules.tiers.len(), rules.high_frequency.clone()), (1, None));
        let flash = BackupPolicy {
            snapshot_backup_type: "Flash".into(),
            ..BackupPolicy::default()
        };
        let rules = RetentionRules::from_policies(&flash, Some(&adv));
        assert_eq!(rules.tiers.len(), 1);
        assert_eq!(
            rules.high_frequency,
            Some(HighFrequency {
                interval_minutes: 30,
                all: Retention::Days(14),
                hourly: None,
            })
        );
        adv.data_policies[1].preserve_one_each_hour = true;
        let rules = RetentionRules::from_policies(&flash, Some(&adv));
        assert_eq!(
            rules.high_frequency,
            Some(HighFrequency {
                interval_minutes: 30,
                all: Retention::Days(1),
                hourly: Some(Retention::Days(14)),
            })
        );
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).expect("d");
        assert_eq!(
            rules.slot_retention(day),
            Some((Retention::Days(30), vec!["monthly"]))
        );
        assert_eq!(rules.slot_retention(day.succ_opt().expect("d")), None);
        let all = gfs();
        assert_eq!(
            all.slot_retention(NaiveDate::from_ymd_opt(2027, 1, 1).expect("d")),
            Some((Retention::Never, vec!["daily", "monthly", "yearly"]))
        );
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        // Two years of minutes from 2026-01-01, a retention of 0..400 days or permanent, and a slot kind.
        let base = at("2026-01-01T00:00:00Z");
        (
            0i64..(2 * 365 * 24 * 60),
            prop_oneof![(0i64..400).prop_map(Some), Just(None)],
            0u8..3,
        )
            .prop_map(move |(minute, days, kind)| {
                let slot = base + chrono::Duration::minutes(minute);
                Candidate {
                    backup_id: 0,
                    expire_time: Some(match days {
                        Some(d) => slot + chrono::Duration::days(d),
                        None => permanent_expiry(),
                    }),
                    slot: match kind {
                        0 => None,
                        1 => Some((SlotKind::Standard, slot)),
                        _ => Some((SlotKind::HighFrequency, slot)),
                    },
                }
            })
    }

    fn hf_rules() -> RetentionRules {
        let mut r = gfs();
        r.high_frequency = Some(HighFrequency {
            interval_minutes: 15,
            all: Retention::Days(2),
            hourly: Some(Retention::Days(20)),
        });
        r
    }

    proptest! {
        #[test]
        fn plan_properties(
            mut backups in proptest::collection::vec(arb_candidate(), 0..60),
            now_minute in 0i64..(3 * 365 * 24 * 60),
            rotate in 0usize..60,
        ) {
            for (i, b) in backups.iter_mut().enumerate() {
                b.backup_id = i as i64 + 1;
            }
            let rules = hf_rules();
            let now = at("2026-01-01T00:00:00Z") + chrono::Duration::minutes(now_minute);
            let plan = plan_retention(&backups, &rules, now);
            // Every backup is decided exactly once.
            let (keep, delete) = ids(&plan);
            let mut all: Vec<i64> = keep.iter().chain(delete.iter()).copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, backups.iter().map(|b| b.backup_id).collect::<Vec<_>>());
            for b in &backups {
                let deleted = delete.contains(&b.backup_id);
                let expire = b.expire_time.unwrap_or_else(permanent_expiry);
                // Never before the recorded expiry; permanent backups never.
                if expire > now {
                    prop_assert!(!deleted, "deleted before its expiry: {:?}", b);
                }
                // A standard-slot backup within the period of a tier matching its day is never deleted.
                if let Some((SlotKind::Standard, slot)) = b.slot {
                    for t in rules.tiers_on(slot.date_naive()) {
                        if !matches!(t.retention.until(slot), Some(u) if u <= now) {
                            prop_assert!(!deleted, "deleted inside tier {}: {:?}", t.policy_id, b);
                        }
                    }
                }
                if let Some((SlotKind::HighFrequency, slot)) = b.slot {
                    if slot + chrono::Duration::days(2) > now {
                        prop_assert!(!deleted, "high-frequency snapshot deleted early: {:?}", b);
                    }
                }
            }
            // Independent of the input order.
            let mut shuffled = backups.clone();
            shuffled.reverse();
            let len = shuffled.len().max(1);
            shuffled.rotate_left(rotate % len);
            prop_assert_eq!(plan_retention(&shuffled, &rules, now), plan);
        }
    }
}
