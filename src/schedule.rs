//! When `freshet sync --every` / `--cron` runs next.
//!
//! Invariant: runs never overlap. The next run is computed only after the previous one
//! finished, and ticks missed while it ran are skipped, not queued up.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local};

/// A fixed interval or a cron expression (5 fields, or 6 with seconds first; local time).
#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// Parses `--every` (`15m`, `1h30m`, `90s`).
    pub fn every(text: &str) -> Result<Self, String> {
        let interval = humantime::parse_duration(text)
            .map_err(|err| format!("--every {text:?}: {err} (examples: 30s, 15m, 1h)"))?;
        if interval < Duration::from_secs(1) {
            return Err(format!("--every {text:?} is shorter than one second"));
        }
        Ok(Self::Every(interval))
    }

    /// Parses `--cron` (`*/15 * * * *`, or with a leading seconds field).
    pub fn cron(text: &str) -> Result<Self, String> {
        // croner's default parser takes an optional leading seconds field.
        let cron = text.parse::<croner::Cron>().map_err(|err| {
            format!("--cron {text:?}: {err} (example: \"*/15 * * * *\", every 15 minutes)")
        })?;
        Ok(Self::Cron(Box::new(cron)))
    }

    /// When the run after one that started at `started` and finished at `now` begins:
    /// the first tick after `now` (a run that overran its interval skips the missed
    /// ticks instead of starting at once, again and again).
    pub fn next_start(&self, started: SystemTime, now: SystemTime) -> SystemTime {
        match self {
            Self::Every(interval) => {
                let mut next = started + *interval;
                if next <= now {
                    let behind = now.duration_since(next).unwrap_or_default();
                    let skipped = behind.as_nanos() / interval.as_nanos() + 1;
                    next += *interval * skipped as u32;
                }
                next
            }
            Self::Cron(cron) => {
                let now_local: DateTime<Local> = now.into();
                match cron.find_next_occurrence(&now_local, false) {
                    Ok(next) => next.into(),
                    // No future match (e.g. Feb 30): never run again on its own.
                    Err(_) => now + Duration::from_secs(365 * 24 * 3600),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_skip_missed_ticks_instead_of_piling_up() {
        let every = Schedule::every("10s").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        // A quick run: the next starts one interval after the last started.
        assert_eq!(
            every.next_start(t0, t0 + Duration::from_secs(2)),
            t0 + Duration::from_secs(10)
        );
        // A run that took 25 s: the ticks at 10 s and 20 s are skipped.
        assert_eq!(
            every.next_start(t0, t0 + Duration::from_secs(25)),
            t0 + Duration::from_secs(30)
        );
        assert!(Schedule::every("0s").is_err());
        assert!(Schedule::every("soon").unwrap_err().contains("soon"));
    }

    #[test]
    fn cron_expressions_give_the_next_matching_time() {
        let cron = Schedule::cron("*/15 * * * *").unwrap();
        let now = SystemTime::now();
        let next = cron.next_start(now, now);
        let wait = next.duration_since(now).unwrap();
        assert!(wait <= Duration::from_secs(15 * 60), "{wait:?}");
        let seconds = Schedule::cron("*/5 * * * * *").unwrap();
        let wait = seconds.next_start(now, now).duration_since(now).unwrap();
        assert!(wait <= Duration::from_secs(5), "{wait:?}");
        assert!(Schedule::cron("61 * * * *").is_err());
    }
}
