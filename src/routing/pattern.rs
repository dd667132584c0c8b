//! Words, pattern checks and the reference matcher.

use smallvec::SmallVec;

/// The words of a routing key or pattern: `""` has none, and empty segments are words.
pub(super) fn words(key: &str) -> impl Iterator<Item = &str> {
    // `"".split('.')` yields one empty word; the empty key must have zero.
    key.split('.').filter(move |_| !key.is_empty())
}

/// What is wrong with a topic pattern, if anything.
pub(super) fn topic_pattern_fault(pattern: &str) -> Option<&'static str> {
    let mixed = words(pattern).any(|word| word.contains(['*', '#']) && word != "*" && word != "#");
    mixed.then_some("a word holding `*` or `#` must be exactly `*` or `#`")
}

/// The reference matcher behind `pattern_matches`.
///
/// The pattern is cut at its `#` words into segments of fixed length (words and `*`s). Without a
/// `#`, the one segment must match the whole key. Otherwise the first segment must match a prefix of
/// the key, the last a suffix, and each segment between them somewhere in order in what is left. It
/// is enough to place each middle segment at its leftmost match: any later placement leaves less key
/// for the segments after it. This is the classic glob matcher, in words, and costs at most
/// `pattern words x key words` comparisons instead of the exponential blow-up of trying every split
/// of every `#`.
pub(super) fn matches(pattern: &str, key: &str) -> bool {
    if !words(pattern).any(|word| word == "#") {
        // The common case: walk both in step.
        let (mut pattern, mut key) = (words(pattern), words(key));
        loop {
            match (pattern.next(), key.next()) {
                (None, None) => return true,
                (Some(p), Some(k)) if word_matches(p, k) => {}
                _ => return false,
            }
        }
    }
    let key: SmallVec<[&str; 16]> = words(key).collect();
    let pattern: SmallVec<[&str; 16]> = words(pattern).collect();
    let mut segments = pattern.split(|word| *word == "#");
    // There is at least one `#`, so at least two segments.
    let (Some(first), Some(last)) = (segments.next(), segments.next_back()) else {
        return false;
    };
    if first.len() + last.len() > key.len()
        || !segment_matches(first, &key[..first.len()])
        || !segment_matches(last, &key[key.len() - last.len()..])
    {
        return false;
    }
    let mut rest = &key[first.len()..key.len() - last.len()];
    for segment in segments {
        match leftmost_match(segment, rest) {
            Some(at) => rest = &rest[at + segment.len()..],
            None => return false,
        }
    }
    true
}

fn word_matches(pattern_word: &str, key_word: &str) -> bool {
    pattern_word == "*" || pattern_word == key_word
}

fn segment_matches(segment: &[&str], key: &[&str]) -> bool {
    segment.len() == key.len() && segment.iter().zip(key).all(|(p, k)| word_matches(p, k))
}

fn leftmost_match(segment: &[&str], key: &[&str]) -> Option<usize> {
    if segment.is_empty() {
        return Some(0);
    }
    key.windows(segment.len()).position(|window| segment_matches(segment, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, word by word: exponential in the worst case, so only for small inputs.
    fn naive(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| naive(rest, &key[skip..])),
            Some((word, rest)) => match key.split_first() {
                Some((first, key_rest)) => word_matches(word, first) && naive(rest, key_rest),
                None => false,
            },
        }
    }

    fn all_strings(alphabet: &[&str], words_max: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut layer: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..words_max {
            let mut next = Vec::new();
            for prefix in &layer {
                for word in alphabet {
                    let mut longer = prefix.clone();
                    longer.push(word);
                    out.push(longer.join("."));
                    next.push(longer);
                }
            }
            layer = next;
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn words_split_on_dots_with_empty_key_having_none() {
        assert_eq!(words("").count(), 0);
        assert_eq!(words("a").collect::<Vec<_>>(), ["a"]);
        assert_eq!(words("a..b").collect::<Vec<_>>(), ["a", "", "b"]);
        assert_eq!(words(".").collect::<Vec<_>>(), ["", ""]);
        assert_eq!(words("a.").collect::<Vec<_>>(), ["a", ""]);
    }

    #[test]
    fn semantics_examples_hold() {
        for key in ["a.b", "a..b", "a.x.b", "a.x.y.b"] {
            assert!(matches("a.#.b", key), "{key}");
        }
        assert!(!matches("a.#.b", "a.b.c"));
        assert!(matches("#", ""));
        assert!(matches("#.#", ""));
        assert!(matches("", ""));
        assert!(!matches("*", ""));
        assert!(!matches("#.*.#", ""));
        assert!(matches("*", "oneword"));
        assert!(!matches("*.*", "oneword"));
    }

    #[test]
    fn empty_words_are_words() {
        assert!(matches("*.*", "."));
        assert!(matches("a.*.b", "a..b"));
        assert!(!matches("a.b", "a..b"));
        assert!(matches("", ""));
        assert!(!matches("", "."));
        assert!(!matches("*", "."));
        assert!(matches("#", "."));
        assert!(matches("#", "a..."));
    }

    #[test]
    fn words_that_are_not_exactly_wildcards_match_literally() {
        assert!(matches("pa*d", "pa*d"));
        assert!(!matches("pa*d", "paid"));
        assert!(matches("a#", "a#"));
        assert!(!matches("a#", "a"));
    }

    #[test]
    fn topic_pattern_faults() {
        assert!(topic_pattern_fault("a.*.#").is_none());
        assert!(topic_pattern_fault("").is_none());
        assert!(topic_pattern_fault("a*").is_some());
        assert!(topic_pattern_fault("x.##").is_some());
    }

    #[test]
    fn agrees_with_the_definition_on_every_small_input() {
        let mut patterns = all_strings(&["a", "b", "", "*", "#"], 4);
        // Five words reach patterns with two segments between `#`s, like `#.a.#.b.#`.
        patterns.extend(all_strings(&["a", "b", "*", "#"], 5));
        let keys = all_strings(&["a", "b", ""], 5);
        for pattern in &patterns {
            let p: Vec<&str> = words(pattern).collect();
            for key in &keys {
                let k: Vec<&str> = words(key).collect();
                assert_eq!(matches(pattern, key), naive(&p, &k), "{pattern:?} {key:?}");
            }
        }
    }

    #[test]
    fn many_hashes_stay_polynomial() {
        // The definition would try about C(200, 60) splits here.
        let pattern = "#.a.".repeat(60) + "#.b";
        let key = vec!["a"; 200].join(".");
        assert!(!matches(&pattern, &key));
        assert!(matches(&pattern, &(key.clone() + ".b")));
        assert!(!matches("#.#.#.#.#.#.#.#.#.#.#.#.x", &key));
    }
}
