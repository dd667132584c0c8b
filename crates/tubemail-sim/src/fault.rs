//! Fault plans: which faults to inject, how often, and how long delays last.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use tubemail::probe::FaultKind;

/// A range of simulated milliseconds, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsRange {
    /// The least.
    pub min: u64,
    /// The most.
    pub max: u64,
}

/// Which faults to inject and how often: each probability applies at every opportunity (a delivery
/// for drop, duplicate, delay, crash and slow handlers; a settlement for ack loss; a confirm for
/// confirm loss; a batch taken in by a queue for a queue restart). Plain data: print it, save it,
/// load it (serde), replay it with the same seed.
///
/// In TOML, fields are spelled as fault kinds are everywhere else, in kebab-case (`ack-loss = 0.1`,
/// `delay-ms = { min = 1, max = 50 }`); the snake-case spelling of older plans is read too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct FaultPlan {
    /// A delivery vanishes on the queue → subscriber link.
    pub drop: f64,
    /// A delivery arrives twice.
    pub duplicate: f64,
    /// A delivery arrives late (`delay_ms`), so later ones overtake it.
    pub delay: f64,
    /// How late a delayed delivery arrives.
    #[serde(alias = "delay_ms")]
    pub delay_ms: MsRange,
    /// A settlement (ack or nack) vanishes on the subscriber → queue link.
    #[serde(alias = "ack_loss")]
    pub ack_loss: f64,
    /// The subscriber crashes before running its handler.
    #[serde(alias = "crash_before")]
    pub crash_before: f64,
    /// The subscriber crashes after its handler ran, before its ack.
    #[serde(alias = "crash_after")]
    pub crash_after: f64,
    /// The queue actor restarts, losing its in-memory state.
    #[serde(alias = "queue_restart")]
    pub queue_restart: f64,
    /// The publisher's confirm is lost; the publisher publishes again (a duplicate, same id).
    #[serde(alias = "confirm_loss")]
    pub confirm_loss: f64,
    /// A handler takes `slow_ms` of simulated time.
    pub slow: f64,
    /// How long a slow handler takes.
    #[serde(alias = "slow_ms")]
    pub slow_ms: MsRange,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self::none()
    }
}

impl FaultPlan {
    /// No faults.
    pub fn none() -> Self {
        Self {
            drop: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            delay_ms: MsRange { min: 1, max: 50 },
            ack_loss: 0.0,
            crash_before: 0.0,
            crash_after: 0.0,
            queue_restart: 0.0,
            confirm_loss: 0.0,
            slow: 0.0,
            slow_ms: MsRange { min: 10, max: 300 },
        }
    }

    /// Every fault kind at its default probability.
    pub fn all() -> Self {
        Self::only(&FaultKind::ALL)
    }

    /// The given kinds at their default probabilities, the others off.
    pub fn only(kinds: &[FaultKind]) -> Self {
        let mut plan = Self::none();
        for kind in kinds {
            *plan.probability_mut(*kind) = default_probability(*kind);
        }
        plan
    }

    /// The probability of one kind.
    pub fn probability(&self, kind: FaultKind) -> f64 {
        let mut plan = self.clone();
        *plan.probability_mut(kind)
    }

    /// Sets the probability of one kind.
    pub fn set_probability(&mut self, kind: FaultKind, p: f64) {
        *self.probability_mut(kind) = p;
    }

    fn probability_mut(&mut self, kind: FaultKind) -> &mut f64 {
        match kind {
            FaultKind::Drop => &mut self.drop,
            FaultKind::Duplicate => &mut self.duplicate,
            FaultKind::Delay => &mut self.delay,
            FaultKind::AckLoss => &mut self.ack_loss,
            FaultKind::CrashBefore => &mut self.crash_before,
            FaultKind::CrashAfter => &mut self.crash_after,
            FaultKind::QueueRestart => &mut self.queue_restart,
            FaultKind::ConfirmLoss => &mut self.confirm_loss,
            FaultKind::Slow => &mut self.slow,
        }
    }

    /// Checks that probabilities are within 0 to 1 and ranges are ordered.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        for kind in FaultKind::ALL {
            let p = self.probability(kind);
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{kind}: probability {p} is not within 0 to 1"));
            }
        }
        for (name, r) in [("delay_ms", self.delay_ms), ("slow_ms", self.slow_ms)] {
            if r.min > r.max {
                return Err(format!("{name}: min {} is over max {}", r.min, r.max));
            }
        }
        Ok(())
    }
}

fn default_probability(kind: FaultKind) -> f64 {
    match kind {
        FaultKind::Drop => 0.02,
        FaultKind::Duplicate => 0.02,
        FaultKind::Delay => 0.05,
        FaultKind::AckLoss => 0.02,
        FaultKind::CrashBefore => 0.01,
        FaultKind::CrashAfter => 0.01,
        FaultKind::QueueRestart => 0.002,
        FaultKind::ConfirmLoss => 0.02,
        FaultKind::Slow => 0.02,
    }
}

/// Parses `all`, `none`, or a comma-separated list of fault kinds, each at its default probability
/// or at one given after `=` (`drop,duplicate=0.1,delay`): the form [`FaultPlan`]'s `Display` prints.
impl FromStr for FaultPlan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => return Ok(Self::all()),
            "none" | "" => return Ok(Self::none()),
            _ => {}
        }
        let mut plan = Self::none();
        for item in s.split(',') {
            let (kind, p) = match item.split_once('=') {
                Some((kind, p)) => (kind, Some(p)),
                None => (item, None),
            };
            let kind: FaultKind =
                kind.trim().parse().map_err(|e: tubemail::probe::ParseFaultKindError| e.to_string())?;
            let p = match p {
                Some(p) => {
                    p.trim().parse::<f64>().map_err(|_| format!("{kind}: {p:?} is not a probability"))?
                }
                None => default_probability(kind),
            };
            plan.set_probability(kind, p);
        }
        plan.validate()?;
        Ok(plan)
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on: Vec<String> = FaultKind::ALL
            .iter()
            .filter(|k| self.probability(**k) > 0.0)
            .map(|k| format!("{k}={}", self.probability(*k)))
            .collect();
        if on.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&on.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_plan_parses_back_to_itself() {
        for text in ["all", "none", "drop", "drop=0.5,slow", "duplicate=0.02,crash-after=0.01"] {
            let plan: FaultPlan = text.parse().unwrap();
            assert_eq!(plan.to_string().parse::<FaultPlan>().unwrap(), plan, "{text}");
        }
    }

    #[test]
    fn bad_plans_are_refused_with_the_field() {
        assert!("drop=2".parse::<FaultPlan>().unwrap_err().contains("drop"));
        assert!("dorp".parse::<FaultPlan>().unwrap_err().contains("dorp"));
        assert!("drop=x".parse::<FaultPlan>().unwrap_err().contains("drop"));
    }

    #[test]
    fn plans_round_trip_through_toml() {
        let plan = FaultPlan::all();
        let text = toml::to_string(&plan).unwrap();
        assert_eq!(toml::from_str::<FaultPlan>(&text).unwrap(), plan);
    }
}
