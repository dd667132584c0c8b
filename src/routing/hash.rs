//! Consistent-hash routing: a stable key hash, jump consistent hash, and weighted buckets.

use crate::ids::QueueId;

/// A 64-bit hash of `key` that is the same in every process, on every platform and with every Rust
/// version: FNV-1a over the UTF-8 bytes, then the MurmurHash3 `fmix64` finalizer, because FNV-1a
/// alone leaves keys that differ only in their last byte close together in the high bits that jump
/// consistent hash reads first.
pub(super) fn stable_hash(key: &str) -> u64 {
    fmix64(fnv1a64(key.as_bytes()))
}

/// FNV-1a, 64 bits: a stable hash, the same in every process, platform and Rust version (used for
/// hash routing, the route cache and simulation histories).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}

pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Lamping and Veach's jump consistent hash, "A Fast, Minimal Memory, Consistent Hash Algorithm"
/// (2014): the bucket in `0..buckets` of `key`. Going from `n` to `n + 1` buckets moves only keys
/// into bucket `n`, about `1 / (n + 1)` of them.
///
/// The paper computes the next jump in floating point; this is the same step in exact integer
/// arithmetic, `floor((b + 1) * 2^31 / ((key >> 33) + 1))`, so no rounding mode can change a result.
/// Returns 0 when `buckets` is 0.
fn jump_consistent_hash(mut key: u64, buckets: u64) -> u64 {
    let mut bucket = 0;
    let mut next = 0;
    while next < buckets {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let jump = (u128::from(bucket) + 1) << 31;
        next = u64::try_from(jump / (u128::from(key >> 33) + 1)).unwrap_or(u64::MAX);
    }
    bucket
}

/// The buckets of a hash topic: each binding, in insertion order, owns `weight` consecutive buckets.
#[derive(Debug, Clone, Default)]
pub(super) struct HashRing {
    /// Per binding in insertion order: the end (exclusive) of its buckets, and its queue.
    ends: Vec<(u64, QueueId)>,
}

impl HashRing {
    /// Adds a binding after every other.
    pub(super) fn push(&mut self, queue: QueueId, weight: u32) {
        let start = self.total();
        self.ends.push((start + u64::from(weight), queue));
    }

    /// Replaces every binding, in insertion order.
    pub(super) fn rebuild(&mut self, bindings: impl Iterator<Item = (QueueId, u32)>) {
        self.ends.clear();
        for (queue, weight) in bindings {
            self.push(queue, weight);
        }
    }

    /// The queue that owns `key`'s bucket, if there is any binding of positive weight.
    pub(super) fn pick(&self, key: &str) -> Option<QueueId> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let bucket = jump_consistent_hash(stable_hash(key), total);
        let owner = self.ends.partition_point(|(end, _)| *end <= bucket);
        self.ends.get(owner).map(|(_, queue)| *queue)
    }

    fn total(&self) -> u64 {
        self.ends.last().map_or(0, |(end, _)| *end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// If this test fails, keys would move between queues across versions: don't update the values,
    /// fix the change.
    #[test]
    fn stable_hash_values_are_pinned() {
        let pinned = [("", PINNED_EMPTY), ("a", PINNED_A), ("orders.eu.paid", PINNED_ORDERS)];
        for (key, value) in pinned {
            assert_eq!(stable_hash(key), value, "{key:?}");
        }
    }

    const PINNED_EMPTY: u64 = 0xefd0_1f60_ba99_2926;
    const PINNED_A: u64 = 0x82a2_a958_a9be_ce5b;
    const PINNED_ORDERS: u64 = 0x5adc_611c_5cbb_e504;

    #[test]
    fn jump_hash_is_in_range_and_monotone() {
        for i in 0..2000u64 {
            let key = stable_hash(&format!("k{i}"));
            let mut previous = jump_consistent_hash(key, 1);
            assert_eq!(previous, 0);
            for buckets in 2..40 {
                let bucket = jump_consistent_hash(key, buckets);
                assert!(bucket < buckets);
                assert!(bucket == previous || bucket == buckets - 1);
                previous = bucket;
            }
        }
        assert_eq!(jump_consistent_hash(7, 0), 0);
    }

    #[test]
    fn jump_hash_survives_huge_bucket_counts() {
        for key in [0, 1, u64::MAX, 0x1234_5678_9abc_def0] {
            assert!(jump_consistent_hash(key, u64::MAX) < u64::MAX);
            assert!(jump_consistent_hash(key, 1 << 40) < 1 << 40);
        }
    }

    #[test]
    fn jump_hash_matches_the_floating_point_original_on_small_counts() {
        fn original(mut key: u64, buckets: i64) -> i64 {
            let (mut b, mut j) = (-1_i64, 0_i64);
            while j < buckets {
                b = j;
                key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
                j = ((b + 1) as f64 * ((1_i64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
            }
            b
        }
        for i in 0..2000u64 {
            let key = stable_hash(&i.to_string());
            for buckets in [1, 2, 3, 5, 10, 100, 1000] {
                assert_eq!(jump_consistent_hash(key, buckets as u64) as i64, original(key, buckets));
            }
        }
    }

    #[test]
    fn weights_set_the_shares() {
        let mut ring = HashRing::default();
        assert_eq!(ring.pick("x"), None);
        ring.push(QueueId(1), 1);
        ring.push(QueueId(2), 3);
        let to_two = (0..10_000).filter(|i| ring.pick(&format!("key-{i}")) == Some(QueueId(2))).count();
        assert!((7_000..8_000).contains(&to_two), "{to_two}");
    }
}
