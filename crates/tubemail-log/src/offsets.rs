//! Committed consumer-group offsets as records: the broker appends one per commit to the compacted
//! stream [`STREAM`], keyed by group, stream and partition, so that compaction keeps the latest.
//!
//! Key: `GROUP \0 STREAM \0 PARTITION` (UTF-8, the partition in decimal). Value: the committed offset
//! (the next to read) as a little-endian u64.

use std::collections::BTreeMap;

use crate::{LogError, Stream};

/// The internal stream of committed offsets.
pub const STREAM: &str = "__consumer_offsets";

/// The key of a commit.
pub fn key(group: &str, stream: &str, partition: u32) -> String {
    format!("{group}\0{stream}\0{partition}")
}

/// The value of a commit.
pub fn value(offset: u64) -> [u8; 8] {
    offset.to_le_bytes()
}

/// A commit's (group, stream, partition), if the key is one.
pub fn parse_key(key: &[u8]) -> Option<(String, String, u32)> {
    let text = std::str::from_utf8(key).ok()?;
    let mut parts = text.split('\0');
    let (group, stream, partition) = (parts.next()?, parts.next()?, parts.next()?.parse().ok()?);
    if parts.next().is_some() {
        return None;
    }
    Some((group.to_owned(), stream.to_owned(), partition))
}

/// Every commit in `offsets` (the stream [`STREAM`]), the latest of each key.
///
/// # Errors
/// The log's read errors.
pub fn read_all(offsets: &Stream) -> Result<BTreeMap<(String, String, u32), u64>, LogError> {
    let mut committed = BTreeMap::new();
    for p in offsets.partitions() {
        p.for_each_record(1 << 20, |r| {
            let (Some(key), Some(value)) = (r.key, r.value) else { return };
            if let (Some(k), Ok(v)) = (parse_key(&key), <[u8; 8]>::try_from(&value[..])) {
                committed.insert(k, u64::from_le_bytes(v));
            }
        })?;
    }
    Ok(committed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_and_others_do_not() {
        assert_eq!(
            parse_key(key("billing", "orders", 3).as_bytes()),
            Some(("billing".into(), "orders".into(), 3))
        );
        assert_eq!(parse_key(b"no separators"), None);
        assert_eq!(parse_key(b"g\0s\0x"), None);
        assert_eq!(parse_key(b"g\0s\x001\0extra"), None);
    }
}
