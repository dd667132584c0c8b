//! The routing index of one topic: which queues a routing key reaches.
//!
//! A topic holds a [`RoutingTable`] of its bindings, each a queue with a binding key (a pattern for
//! [`TopicKind::Topic`]) and a weight (used by [`TopicKind::Hash`] only). Publishing asks the table for
//! the queues a routing key reaches with [`RoutingTable::route`]. The table is plain data: no actors,
//! no async, no clock and no randomness, so the topic actor, the simulator and the tests all drive the
//! same code.
//!
//! # Matching rules
//!
//! tubemail routes as RabbitMQ's exchanges do, so users who know those get no surprises.
//!
//! A routing key is split on `.` into words. The empty key has zero words, and empty segments are
//! words: `a..b` is the three words `a`, `""`, `b`. Keys and binding keys longer than
//! [`KEY_BYTES_MAX`] bytes are refused ([`validate_key`], [`validate_pattern`]).
//!
//! - [`TopicKind::Topic`] (RabbitMQ's topic exchange): a binding key is a pattern of words, where `*`
//!   matches exactly one word and `#` matches zero or more words. A word that mixes `*` or `#` with
//!   other characters, such as `pa*d` or `a#`, is refused as [`RoutingError::InvalidPattern`]: RabbitMQ
//!   would match it literally, which is almost surely not what was meant.
//! - [`TopicKind::Direct`]: the routing key must equal the binding key.
//! - [`TopicKind::Fanout`]: every bound queue gets the message; the key is ignored.
//! - [`TopicKind::Hash`] (RabbitMQ's consistent-hash exchange): each message goes to exactly one
//!   bound queue, picked by a consistent hash of its routing key, with each binding's weight as its
//!   share. The same key keeps its queue while the bindings do not change.
//!
//! Whatever the kind, a message reaches a queue at most once per publish, however many of that
//! queue's bindings match.
//!
//! ```
//! use tubemail::routing::pattern_matches;
//!
//! assert!(pattern_matches("orders.*.paid", "orders.eu.paid"));
//! assert!(!pattern_matches("orders.*.paid", "orders.paid"));
//! // `#` matches zero or more words, empty words included.
//! for key in ["a.b", "a..b", "a.x.b", "a.x.y.b"] {
//!     assert!(pattern_matches("a.#.b", key));
//! }
//! assert!(!pattern_matches("a.#.b", "a.b.c"));
//! // The empty key has zero words.
//! assert!(pattern_matches("#", "") && pattern_matches("#.#", "") && pattern_matches("", ""));
//! assert!(!pattern_matches("*", "") && !pattern_matches("#.*.#", ""));
//! assert!(pattern_matches("*", "oneword") && !pattern_matches("*.*", "oneword"));
//! ```
//!
//! A table routes each queue once, in ascending [`QueueId`] order:
//!
//! ```
//! use smallvec::SmallVec;
//! use tubemail::ids::QueueId;
//! use tubemail::routing::{RoutingTable, TopicKind};
//!
//! let mut table = RoutingTable::new(TopicKind::Topic);
//! table.bind(QueueId(2), "orders.#", 1)?;
//! table.bind(QueueId(1), "orders.*.paid", 1)?;
//! table.bind(QueueId(2), "*.eu.*", 1)?;
//!
//! let mut out = SmallVec::new();
//! table.route("orders.eu.paid", &mut out);
//! assert_eq!(out.as_slice(), &[QueueId(1), QueueId(2)]);
//! table.route("invoices.us", &mut out);
//! assert!(out.is_empty());
//! # Ok::<(), tubemail::routing::RoutingError>(())
//! ```
//!
//! # Cost
//!
//! Routing does not scan the bindings. With `n` the number of words in the key:
//!
//! - Topic: the patterns live in a trie over words (exact-word children, a `*` child and a `#`
//!   child per node). Routing walks only the branches that can still match, and visits each
//!   (node, word position) pair at most once, so patterns with many `#`s, like `#.#.#.#.#.x`, stay
//!   polynomial: at most `(n + 1)` visits per trie node reached, each a map look-up, plus sorting the
//!   matches. A table of a million bindings that a key cannot reach costs that key nothing.
//! - Direct: one map look-up. Fanout: one step per bound queue. Hash: hashing the key, about
//!   `ln(total weight)` steps of jump consistent hash, and a binary search over the bindings.
//!
//! [`RoutingTable::route`] fills a caller-owned [`SmallVec`] that it clears first, and keeps its own
//! scratch space on the stack, so in the common case (a key of up to 16 words, up to 8 matching
//! bindings, a few wildcard branches) routing allocates nothing; past those sizes the scratch
//! spills to the heap for that call only. [`RoutingTable::route`] does not check the key's length:
//! the publish path refuses long keys with [`validate_key`] first.
//!
//! Binding and unbinding cost one trie path (Topic) or one map entry (Direct), plus, for Hash, a
//! rebuild of the bucket table when a binding other than a new last one changes. Unbinding removes
//! trie nodes that no longer lead to a binding, so churn does not leak memory.
//!
//! # Determinism
//!
//! Nothing here depends on a random seed, the process, the platform or the Rust version. Every map
//! is ordered, [`RoutingTable::route`] returns queues in ascending order, and
//! [`RoutingTable::bindings`] lists bindings in insertion order. The Hash kind hashes a key with
//! 64-bit FNV-1a followed by a fixed bit mixer, then picks a bucket with the integer form of
//! Lamping and Veach's jump consistent hash, as RabbitMQ's consistent-hash exchange does. A binding
//! of weight `w` owns `w` consecutive buckets, in binding insertion order: adding a binding at the
//! end moves only the keys that the new binding takes (about `w / total` of them), while removing or
//! re-weighting an earlier binding also shifts the buckets after it. The unit tests pin the hash
//! values so that a change which would move keys between queues cannot go unnoticed.
//!
//! [`SmallVec`]: smallvec::SmallVec
//! [`QueueId`]: crate::ids::QueueId

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub(crate) mod hash;
mod pattern;
mod table;
mod trie;

pub use self::hash::fnv1a64;
pub use self::table::{Binding, RoutingTable};

/// The longest routing key, binding key or pattern, in bytes (RabbitMQ's limit, as AMQP's short
/// strings).
pub const KEY_BYTES_MAX: usize = 255;

/// The largest weight of a [`TopicKind::Hash`] binding. A binding of weight `w` owns `w` buckets, so
/// the cap bounds the bucket table a single binding can grow.
pub const WEIGHT_MAX: u32 = 1000;

/// How a topic picks the queues a message reaches. See the [module docs](self#matching-rules).
///
/// Written as `topic`, `direct`, `fanout` and `hash`, by [`Display`](fmt::Display),
/// [`FromStr`] and serde alike.
///
/// ```
/// use tubemail::routing::TopicKind;
///
/// assert_eq!("fanout".parse::<TopicKind>(), Ok(TopicKind::Fanout));
/// assert_eq!(TopicKind::Hash.to_string(), "hash");
/// assert!("Topic".parse::<TopicKind>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopicKind {
    /// Binding keys are patterns of words with `*` (one word) and `#` (zero or more words).
    Topic,
    /// The routing key must equal the binding key.
    Direct,
    /// Every bound queue, whatever the key.
    Fanout,
    /// Exactly one bound queue, by consistent hash of the key, weighted by binding.
    Hash,
}

impl TopicKind {
    /// The kind's name, as [`Display`](fmt::Display) writes it and [`FromStr`] reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Topic => "topic",
            TopicKind::Direct => "direct",
            TopicKind::Fanout => "fanout",
            TopicKind::Hash => "hash",
        }
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TopicKind {
    type Err = ParseTopicKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "topic" => Ok(TopicKind::Topic),
            "direct" => Ok(TopicKind::Direct),
            "fanout" => Ok(TopicKind::Fanout),
            "hash" => Ok(TopicKind::Hash),
            _ => Err(ParseTopicKindError { input: s.to_owned() }),
        }
    }
}

/// The error of parsing a [`TopicKind`] from a string that names none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown topic kind {input:?}, expected topic, direct, fanout or hash")]
pub struct ParseTopicKindError {
    input: String,
}

impl ParseTopicKindError {
    /// The string that was not a kind.
    pub fn input(&self) -> &str {
        &self.input
    }
}

/// Why a routing key or a binding was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RoutingError {
    /// The routing key is longer than [`KEY_BYTES_MAX`].
    #[error("routing key is {len} bytes, over the {max}-byte maximum", max = KEY_BYTES_MAX)]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// The binding key or pattern is longer than [`KEY_BYTES_MAX`].
    #[error("binding key is {len} bytes, over the {max}-byte maximum", max = KEY_BYTES_MAX)]
    PatternTooLong {
        /// The binding key's length in bytes.
        len: usize,
    },
    /// A topic pattern has a word that mixes `*` or `#` with other characters.
    #[error("invalid pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The refused pattern.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A hash binding has weight 0, so it would own no bucket.
    #[error("hash binding weight is 0, it must be at least 1")]
    ZeroWeight,
    /// A hash binding's weight is over [`WEIGHT_MAX`].
    #[error("hash binding weight {weight} is over the maximum of {max}", max = WEIGHT_MAX)]
    WeightTooLarge {
        /// The refused weight.
        weight: u32,
    },
}

/// Checks that `key` can be published: at most [`KEY_BYTES_MAX`] bytes. Any characters are allowed,
/// `*` and `#` included: only patterns give them a meaning.
///
/// # Errors
///
/// [`RoutingError::KeyTooLong`] if `key` is longer than [`KEY_BYTES_MAX`] bytes.
///
/// ```
/// use tubemail::routing::{validate_key, RoutingError};
///
/// assert_eq!(validate_key("orders.eu.paid"), Ok(()));
/// assert_eq!(validate_key(&"k".repeat(256)), Err(RoutingError::KeyTooLong { len: 256 }));
/// ```
pub fn validate_key(key: &str) -> Result<(), RoutingError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(RoutingError::KeyTooLong { len: key.len() });
    }
    Ok(())
}

/// Checks that `pattern` can be a binding key of a topic of this kind: at most [`KEY_BYTES_MAX`]
/// bytes, and for [`TopicKind::Topic`], every word is either exactly `*`, exactly `#`, or holds
/// neither character. Other kinds give `*` and `#` no meaning, so they check the length only.
///
/// # Errors
///
/// [`RoutingError::PatternTooLong`] if `pattern` is too long; [`RoutingError::InvalidPattern`] if a
/// topic pattern has a word such as `pa*d` or `a#`.
///
/// ```
/// use tubemail::routing::{validate_pattern, RoutingError, TopicKind};
///
/// assert_eq!(validate_pattern(TopicKind::Topic, "orders.*.#"), Ok(()));
/// assert!(matches!(
///     validate_pattern(TopicKind::Topic, "orders.pa*d"),
///     Err(RoutingError::InvalidPattern { .. })
/// ));
/// assert_eq!(validate_pattern(TopicKind::Direct, "orders.pa*d"), Ok(()));
/// ```
pub fn validate_pattern(kind: TopicKind, pattern: &str) -> Result<(), RoutingError> {
    if pattern.len() > KEY_BYTES_MAX {
        return Err(RoutingError::PatternTooLong { len: pattern.len() });
    }
    if kind == TopicKind::Topic {
        if let Some(reason) = pattern::topic_pattern_fault(pattern) {
            return Err(RoutingError::InvalidPattern { pattern: pattern.to_owned(), reason });
        }
    }
    Ok(())
}

/// Whether the topic `pattern` matches the routing `key`, by the
/// [matching rules](self#matching-rules): the reference the routing trie is tested against, and a
/// way for users to check a pattern without a table.
///
/// Only words that are exactly `*` or `#` are wildcards here; any other word, including one that
/// [`validate_pattern`] would refuse, must equal the key's word. Lengths are not checked. The cost is
/// at most proportional to the product of the numbers of words in `pattern` and `key`, however many
/// `#`s the pattern has.
///
/// ```
/// use tubemail::routing::pattern_matches;
///
/// assert!(pattern_matches("#.error", "app.db.error"));
/// assert!(pattern_matches("*.*", "a."));
/// assert!(!pattern_matches("a.*", "a"));
/// ```
pub fn pattern_matches(pattern: &str, key: &str) -> bool {
    pattern::matches(pattern, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip_through_display_from_str_and_serde() {
        for kind in [TopicKind::Topic, TopicKind::Direct, TopicKind::Fanout, TopicKind::Hash] {
            let name = kind.to_string();
            assert_eq!(name.parse::<TopicKind>(), Ok(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
            let back: TopicKind = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, kind);
        }
        assert_eq!(TopicKind::Topic.as_str(), "topic");
        assert_eq!(TopicKind::Direct.as_str(), "direct");
        assert_eq!(TopicKind::Fanout.as_str(), "fanout");
        assert_eq!(TopicKind::Hash.as_str(), "hash");
    }

    #[test]
    fn unknown_kind_names_are_refused() {
        for name in ["", "Topic", "headers", "hash "] {
            let err = name.parse::<TopicKind>().unwrap_err();
            assert_eq!(err.input(), name);
        }
        assert_eq!(
            "x".parse::<TopicKind>().unwrap_err().to_string(),
            "unknown topic kind \"x\", expected topic, direct, fanout or hash"
        );
    }

    #[test]
    fn keys_up_to_255_bytes_are_accepted() {
        assert_eq!(validate_key(""), Ok(()));
        assert_eq!(validate_key(&"a".repeat(KEY_BYTES_MAX)), Ok(()));
        assert_eq!(validate_key("*.#.pa*d"), Ok(()));
        assert_eq!(validate_key(&"a".repeat(KEY_BYTES_MAX + 1)), Err(RoutingError::KeyTooLong { len: 256 }));
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert_eq!(validate_key(&"é".repeat(128)), Err(RoutingError::KeyTooLong { len: 256 }));
    }

    #[test]
    fn patterns_over_255_bytes_are_refused_for_every_kind() {
        for kind in [TopicKind::Topic, TopicKind::Direct, TopicKind::Fanout, TopicKind::Hash] {
            assert_eq!(validate_pattern(kind, &"a".repeat(KEY_BYTES_MAX)), Ok(()));
            assert_eq!(
                validate_pattern(kind, &"a".repeat(KEY_BYTES_MAX + 1)),
                Err(RoutingError::PatternTooLong { len: 256 })
            );
        }
    }

    #[test]
    fn topic_patterns_refuse_words_that_mix_wildcards_with_text() {
        for bad in ["orders.pa*d", "a#", "#a", "**", "##", "*#", "a.b*", "x.#.y*z"] {
            let err = validate_pattern(TopicKind::Topic, bad).unwrap_err();
            assert!(
                matches!(&err, RoutingError::InvalidPattern { pattern, .. } if pattern == bad),
                "{bad:?} gave {err:?}"
            );
        }
        for good in ["", "#", "*", "#.#", "a..b", ".", "*.#.*", "orders.paid", "a-b_c.d"] {
            assert_eq!(validate_pattern(TopicKind::Topic, good), Ok(()), "{good:?}");
        }
        for kind in [TopicKind::Direct, TopicKind::Fanout, TopicKind::Hash] {
            assert_eq!(validate_pattern(kind, "orders.pa*d.a#"), Ok(()));
        }
    }

    #[test]
    fn errors_display_lowercase_without_a_period() {
        let errors = [
            RoutingError::KeyTooLong { len: 300 },
            RoutingError::PatternTooLong { len: 300 },
            RoutingError::InvalidPattern { pattern: "a#".into(), reason: "x" },
            RoutingError::ZeroWeight,
            RoutingError::WeightTooLarge { weight: 5000 },
        ];
        for err in &errors {
            let text = err.to_string();
            assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
        assert_eq!(errors[0].to_string(), "routing key is 300 bytes, over the 255-byte maximum");
        assert_eq!(errors[4].to_string(), "hash binding weight 5000 is over the maximum of 1000");
    }

    #[test]
    fn errors_are_send_sync_static() {
        fn check<E: std::error::Error + Send + Sync + 'static>() {}
        check::<RoutingError>();
        check::<ParseTopicKindError>();
    }
}
