//! Retry policies: when a failed job runs again, and when it stops trying.
//!
//! The default is Sidekiq's: retry `count` (0 for the first retry) waits `count^4 + 15` seconds plus
//! a jitter of `rand(10 * (count + 1))` seconds, 25 retries (about 20 days in all), then the dead set.

use serde::{Deserialize, Serialize};

/// The most retries any policy may ask for: a bound, so that a typo cannot keep a job forever.
pub const RETRIES_MAX: u32 = 10_000;

/// The longest wait before a retry, whatever the policy computes: 365 days.
pub const RETRY_DELAY_MAX_MS: u64 = 365 * 86_400_000;

/// When a failed job runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryPolicy {
    /// Sidekiq's schedule: `count^4 + 15` s plus `rand(10 * (count + 1))` s; `retries` of them.
    Sidekiq {
        /// Retries before the dead set [25].
        retries: u32,
    },
    /// The same wait before every retry.
    Fixed {
        /// Retries before the dead set.
        retries: u32,
        /// The wait, in milliseconds.
        delay_ms: u64,
    },
    /// `base * factor^count`, capped.
    Exponential {
        /// Retries before the dead set.
        retries: u32,
        /// The first wait, in milliseconds.
        base_ms: u64,
        /// The growth per retry (2 doubles each wait).
        factor: u32,
        /// The longest wait, in milliseconds.
        cap_ms: u64,
    },
    /// Never retried: a failure goes to the dead set (`Kill` semantics), or is dropped when the job
    /// type says so with [`crate::JobOptions::dead`] = false.
    None,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::Sidekiq { retries: 25 }
    }
}

impl RetryPolicy {
    /// Sidekiq's schedule with `retries` retries.
    pub const fn sidekiq(retries: u32) -> Self {
        RetryPolicy::Sidekiq { retries }
    }

    /// How many retries the policy allows.
    pub fn retries(&self) -> u32 {
        match *self {
            RetryPolicy::Sidekiq { retries }
            | RetryPolicy::Fixed { retries, .. }
            | RetryPolicy::Exponential { retries, .. } => retries,
            RetryPolicy::None => 0,
        }
    }

    /// What is wrong with the policy, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.retries() > RETRIES_MAX {
            return Some(format!("{} retries asked, at most {RETRIES_MAX}", self.retries()));
        }
        if let RetryPolicy::Exponential { factor: 0, .. } = self {
            return Some("an exponential policy needs a factor of at least 1".into());
        }
        None
    }

    /// The wait before retry `count` (0 for the first retry), in milliseconds, at most
    /// [`RETRY_DELAY_MAX_MS`].
    pub fn delay_ms(&self, count: u32, rng: &mut fastrand::Rng) -> u64 {
        let ms = match *self {
            RetryPolicy::Sidekiq { .. } => {
                let c = u64::from(count);
                let jitter = rng.u64(0..10 * (c + 1));
                c.saturating_pow(4).saturating_add(15).saturating_add(jitter).saturating_mul(1_000)
            }
            RetryPolicy::Fixed { delay_ms, .. } => delay_ms,
            RetryPolicy::Exponential { base_ms, factor, cap_ms, .. } => {
                base_ms.saturating_mul(u64::from(factor).saturating_pow(count)).min(cap_ms)
            }
            RetryPolicy::None => 0,
        };
        ms.min(RETRY_DELAY_MAX_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidekiq_waits_count_to_the_fourth_plus_fifteen_plus_jitter() {
        let mut rng = fastrand::Rng::with_seed(7);
        let policy = RetryPolicy::default();
        for count in 0..25u32 {
            let c = u64::from(count);
            for _ in 0..50 {
                let ms = policy.delay_ms(count, &mut rng);
                let low = (c.pow(4) + 15) * 1_000;
                assert!(ms >= low && ms < low + 10 * (c + 1) * 1_000, "retry {count}: {ms} ms");
            }
        }
        assert_eq!(policy.retries(), 25);
    }

    #[test]
    fn twenty_five_sidekiq_retries_take_about_twenty_days() {
        let mut rng = fastrand::Rng::with_seed(1);
        let total: u64 = (0..25).map(|c| RetryPolicy::default().delay_ms(c, &mut rng)).sum();
        let days = total as f64 / 86_400_000.0;
        assert!((19.0..22.0).contains(&days), "{days} days");
    }

    #[test]
    fn exponential_is_capped_and_fixed_is_fixed() {
        let mut rng = fastrand::Rng::with_seed(1);
        let exp = RetryPolicy::Exponential { retries: 40, base_ms: 100, factor: 2, cap_ms: 60_000 };
        assert_eq!(exp.delay_ms(0, &mut rng), 100);
        assert_eq!(exp.delay_ms(3, &mut rng), 800);
        assert_eq!(exp.delay_ms(39, &mut rng), 60_000);
        assert_eq!(RetryPolicy::Fixed { retries: 3, delay_ms: 5 }.delay_ms(2, &mut rng), 5);
    }

    #[test]
    fn absurd_policies_are_refused() {
        assert!(RetryPolicy::sidekiq(RETRIES_MAX + 1).problem().is_some());
        assert!(RetryPolicy::Exponential { retries: 1, base_ms: 1, factor: 0, cap_ms: 1 }
            .problem()
            .is_some());
        assert!(RetryPolicy::default().problem().is_none());
    }
}
