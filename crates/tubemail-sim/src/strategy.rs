//! proptest strategies for users' own property tests: fault plans and workloads.
//!
//! ```
//! use proptest::prelude::*;
//! use proptest::test_runner::TestRunner;
//! use tubemail_sim::strategy::{fault_plan, keyed_workload};
//!
//! let mut runner = TestRunner::default();
//! runner
//!     .run(&(fault_plan(), keyed_workload(4, 20)), |(plan, workload)| {
//!         prop_assert!(plan.validate().is_ok());
//!         prop_assert!(workload.len() <= 20);
//!         Ok(())
//!     })
//!     .unwrap();
//! ```

use proptest::prelude::*;

use super::fault::{FaultPlan, MsRange};
use tubemail::probe::FaultKind;

/// The largest probability the strategies give one fault kind: higher rates mostly test the
/// delivery limit rather than the consumer.
pub const PROBABILITY_MAX: f64 = 0.2;

/// Fault plans: each kind off or on with a probability up to [`PROBABILITY_MAX`], delays and slow
/// handlers up to half a second. Shrinks towards fewer kinds and lower probabilities.
pub fn fault_plan() -> impl Strategy<Value = FaultPlan> {
    let kind = prop_oneof![Just(0.0), 0.0..PROBABILITY_MAX];
    (prop::collection::vec(kind, FaultKind::ALL.len()), 1..200_u64, 1..500_u64).prop_map(
        |(ps, delay, slow)| {
            let mut plan = FaultPlan::none();
            for (kind, p) in FaultKind::ALL.iter().zip(ps) {
                plan.set_probability(*kind, p);
            }
            plan.delay_ms = MsRange { min: 1, max: delay };
            plan.slow_ms = MsRange { min: 1, max: slow };
            plan
        },
    )
}

/// Workloads of up to `messages_max` messages, each a routing key `k0`..`k{keys-1}` and a distinct
/// sequence number. Shrinks towards fewer messages and fewer keys.
pub fn keyed_workload(keys: u32, messages_max: usize) -> impl Strategy<Value = Vec<(String, u32)>> {
    prop::collection::vec(0..keys.max(1), 0..=messages_max)
        .prop_map(|ks| ks.into_iter().enumerate().map(|(i, k)| (format!("k{k}"), i as u32)).collect())
}

/// Seeds.
pub fn seed() -> impl Strategy<Value = u64> {
    any::<u64>()
}
