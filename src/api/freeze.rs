//! Change-freeze windows as validated: one period, or a weekly window, in a time zone; and
//! whether one is open at a moment.
//!
//! Contract: pure. [`ValidFreeze::open_at`] judges a moment in the window's own time zone
//! (civil times, daylight-saving aware); `validate` reads `limits.freeze` into these.

/// A change-freeze window, read.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidFreeze {
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub when: FreezeWhen,
    /// In which time zone.
    pub time_zone: jiff::tz::TimeZone,
}

/// When a freeze is open.
#[derive(Clone, Debug, PartialEq)]
pub enum FreezeWhen {
    /// One period, `start` inclusive to `end` exclusive.
    Between(jiff::civil::DateTime, jiff::civil::DateTime),
    /// Every week on `days`, from `from` to `to` (past midnight when `to` ≤ `from`).
    Weekly(Vec<jiff::civil::Weekday>, jiff::civil::Time, jiff::civil::Time),
}

impl ValidFreeze {
    /// Whether the freeze is open at `now`.
    pub fn open_at(&self, now: jiff::Timestamp) -> bool {
        let local = now.to_zoned(self.time_zone.clone()).datetime();
        match &self.when {
            FreezeWhen::Between(start, end) => *start <= local && local < *end,
            FreezeWhen::Weekly(days, from, to) => {
                let (day, time) = (local.date().weekday(), local.time());
                if from < to {
                    days.contains(&day) && *from <= time && time < *to
                } else {
                    // Past midnight: the evening of a listed day, or the morning after it.
                    (days.contains(&day) && time >= *from) || (days.contains(&day.previous()) && time < *to)
                }
            }
        }
    }

    /// How it reads to a person: `2026-12-24T00:00 to 2026-12-27T00:00 Europe/Berlin` or
    /// `Fri, Sat 16:00-23:59 UTC`, with the reason.
    pub fn describe(&self) -> String {
        let zone = self.time_zone.iana_name().unwrap_or("UTC");
        let when = match &self.when {
            FreezeWhen::Between(a, b) => format!("{a} to {b} {zone}"),
            FreezeWhen::Weekly(days, from, to) => {
                let days: Vec<String> = days.iter().map(|d| format!("{d:?}")[..3].to_owned()).collect();
                format!("{} {}-{} {zone}", days.join(", "), from.strftime("%H:%M"), to.strftime("%H:%M"))
            }
        };
        match &self.reason {
            Some(r) => format!("{when} ({r})"),
            None => when,
        }
    }
}

pub(super) fn weekday(name: &str) -> Option<jiff::civil::Weekday> {
    use jiff::civil::Weekday::*;
    Some(match name.to_ascii_lowercase().get(..3)? {
        "mon" => Monday,
        "tue" => Tuesday,
        "wed" => Wednesday,
        "thu" => Thursday,
        "fri" => Friday,
        "sat" => Saturday,
        "sun" => Sunday,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use crate::api::policy::RemediationPolicySpec;
    use crate::api::validate::ValidPolicy;

    fn policy(freeze: serde_json::Value) -> Result<ValidPolicy, String> {
        let spec: RemediationPolicySpec = serde_json::from_value(serde_json::json!({
            "match": {"alertnames": ["A"]}, "target": {"kind": "Deployment", "name": "x"}, "playbook": "p",
            "limits": {"freeze": freeze}}))
        .unwrap();
        ValidPolicy::from_spec(&spec).map_err(|e| e.to_string())
    }

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_freeze_period_is_open_from_its_start_to_its_end_in_its_time_zone() {
        let p = policy(serde_json::json!([{"start": "2026-12-24T00:00", "end": "2026-12-27T00:00", "timeZone": "Europe/Berlin", "reason": "holidays"}])).unwrap();
        let f = &p.limits.freeze[0];
        assert!(!f.open_at(at("2026-12-23T22:59:00Z")), "23:59 in Berlin on the 23rd");
        assert!(f.open_at(at("2026-12-23T23:00:00Z")), "midnight in Berlin");
        assert!(f.open_at(at("2026-12-26T22:59:59Z")));
        assert!(!f.open_at(at("2026-12-26T23:00:00Z")), "the end is exclusive");
        assert_eq!(f.describe(), "2026-12-24T00:00:00 to 2026-12-27T00:00:00 Europe/Berlin (holidays)");
    }

    #[test]
    fn a_weekly_freeze_repeats_and_may_run_past_midnight() {
        let p = policy(serde_json::json!([{"days": ["Fri"], "from": "18:00", "to": "06:00"}])).unwrap();
        let f = &p.limits.freeze[0];
        // 2026-12-04 is a Friday.
        assert!(!f.open_at(at("2026-12-04T17:59:00Z")));
        assert!(f.open_at(at("2026-12-04T18:00:00Z")));
        assert!(f.open_at(at("2026-12-05T05:59:00Z")), "Saturday morning is still Friday night's freeze");
        assert!(!f.open_at(at("2026-12-05T06:00:00Z")));
        assert!(f.open_at(at("2026-12-11T20:00:00Z")), "every week");
    }

    #[test]
    fn a_malformed_freeze_window_is_refused_naming_the_field() {
        let cases = [
            (
                serde_json::json!([{"start": "2026-12-24T00:00", "end": "2026-12-27T00:00", "timeZone": "Mars/Olympus"}]),
                "spec.limits.freeze[0].timeZone",
            ),
            (serde_json::json!([{"start": "christmas", "end": "2026-12-27T00:00"}]), "spec.limits.freeze[0].start"),
            (serde_json::json!([{"start": "2026-12-27T00:00", "end": "2026-12-24T00:00"}]), "must be after start"),
            (
                serde_json::json!([{"days": ["Friday", "Caturday"], "from": "18:00", "to": "20:00"}]),
                "\"Caturday\" is not a day",
            ),
            (serde_json::json!([{"days": ["Fri"], "from": "6pm", "to": "20:00"}]), "spec.limits.freeze[0].from"),
            (
                serde_json::json!([{"start": "2026-12-24T00:00", "days": ["Fri"]}]),
                "give either start and end, or days with from and to",
            ),
        ];
        for (freeze, want) in cases {
            let err = policy(freeze.clone()).unwrap_err();
            assert!(err.contains(want), "{freeze}: {err}");
        }
    }
}
