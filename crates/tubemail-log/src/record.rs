//! Records and their framing on disk.
//!
//! ```text
//! offset  size  field
//! 0       4     length: the bytes after the CRC (little endian u32)
//! 4       4     CRC-32C (Castagnoli) of those bytes
//! 8       1     version (1)
//! 9       1     flags: bit 0 a key is present, bit 1 a value is present (a keyed record without a
//!               value is a tombstone)
//! 10      8     offset (u64)
//! 18      8     timestamp, milliseconds since the Unix epoch (i64)
//! 26      4     key length (u32; 0 without a key)
//! 30      k     key
//! 30+k    v     value (the rest of the frame)
//! ```
//!
//! Every integer is little endian. A frame is written with one `write` call, so a crash leaves at
//! most the tail of the last frame torn; recovery truncates it (see [`crate::segment`]).

use bytes::Bytes;

/// The record format's version, in every frame.
pub const VERSION: u8 = 1;
/// The frame's length and CRC.
pub const FRAME_HEADER: usize = 8;
/// The fixed part of a record's body (version, flags, offset, timestamp, key length).
pub const BODY_FIXED: usize = 22;
/// The smallest frame.
pub const FRAME_MIN: usize = FRAME_HEADER + BODY_FIXED;

const HAS_KEY: u8 = 1;
const HAS_VALUE: u8 = 2;

/// One record of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset in the partition: dense from 0, never reused (compaction leaves gaps).
    pub offset: u64,
    /// Milliseconds since the Unix epoch, given by the appender.
    pub timestamp: i64,
    /// The key: the partition and, in a compacted stream, what a later record replaces.
    pub key: Option<Bytes>,
    /// The value; `None` with a key is a tombstone.
    pub value: Option<Bytes>,
}

impl Record {
    /// Whether this record deletes its key (a key and no value).
    pub fn is_tombstone(&self) -> bool {
        self.key.is_some() && self.value.is_none()
    }

    /// The bytes of its frame.
    pub fn frame_len(&self) -> usize {
        frame_len(self.key.as_deref(), self.value.as_deref())
    }
}

/// The bytes of a frame with this key and value.
pub fn frame_len(key: Option<&[u8]>, value: Option<&[u8]>) -> usize {
    FRAME_MIN + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len)
}

/// Appends the frame of a record to `out`.
pub fn encode(out: &mut Vec<u8>, offset: u64, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
    let start = out.len();
    let body_len = frame_len(key, value) - FRAME_HEADER;
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let flags = if key.is_some() { HAS_KEY } else { 0 } | if value.is_some() { HAS_VALUE } else { 0 };
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
    let key = key.unwrap_or_default();
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value.unwrap_or_default());
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What the bytes at a position hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, intact frame of this many bytes.
    Record(Record, usize),
    /// The bytes end before the frame does (a torn write, or simply the end of what was read).
    Short {
        /// The frame's length, when its header was there.
        need: Option<usize>,
    },
    /// Only zero bytes from here: space a file system allocated but no write filled.
    Zeros,
    /// A whole frame whose CRC or structure does not check.
    Damaged(&'static str),
}

/// Decodes the frame at the start of `buf`. `max_frame` bounds what a length may claim, so that a
/// damaged length is not taken for a huge frame still being written.
pub fn decode(buf: &[u8], max_frame: usize) -> Decoded {
    if buf.len() < FRAME_HEADER {
        return if !buf.is_empty() && buf.iter().all(|&b| b == 0) {
            Decoded::Zeros
        } else {
            Decoded::Short { need: None }
        };
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if len == 0 && buf[4..8] == [0; 4] {
        return if buf.iter().all(|&b| b == 0) { Decoded::Zeros } else { Decoded::Damaged("zero length") };
    }
    if len < BODY_FIXED || FRAME_HEADER + len > max_frame {
        return Decoded::Damaged("length out of range");
    }
    if buf.len() < FRAME_HEADER + len {
        return Decoded::Short { need: Some(FRAME_HEADER + len) };
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let body = &buf[FRAME_HEADER..FRAME_HEADER + len];
    if crc32c::crc32c(body) != crc {
        return Decoded::Damaged("CRC-32C mismatch");
    }
    if body[0] != VERSION {
        return Decoded::Damaged("unknown record version");
    }
    let flags = body[1];
    let offset = u64::from_le_bytes(body[2..10].try_into().expect("8 bytes"));
    let timestamp = i64::from_le_bytes(body[10..18].try_into().expect("8 bytes"));
    let key_len = u32::from_le_bytes(body[18..22].try_into().expect("4 bytes")) as usize;
    if BODY_FIXED + key_len > len
        || (flags & HAS_KEY == 0 && key_len != 0)
        || flags & !(HAS_KEY | HAS_VALUE) != 0
    {
        return Decoded::Damaged("key length or flags out of range");
    }
    let key = (flags & HAS_KEY != 0).then(|| Bytes::copy_from_slice(&body[BODY_FIXED..BODY_FIXED + key_len]));
    let rest = &body[BODY_FIXED + key_len..];
    if flags & HAS_VALUE == 0 && !rest.is_empty() {
        return Decoded::Damaged("value bytes without a value flag");
    }
    let value = (flags & HAS_VALUE != 0).then(|| Bytes::copy_from_slice(rest));
    Decoded::Record(Record { offset, timestamp, key, value }, FRAME_HEADER + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(offset: u64, key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, offset, 1_700_000_000_000, key, value);
        out
    }

    #[test]
    fn a_frame_is_as_long_as_it_says() {
        let f = frame(7, Some(b"k"), Some(b"value"));
        assert_eq!(f.len(), frame_len(Some(b"k"), Some(b"value")));
    }

    #[test]
    fn a_tombstone_keeps_its_key_and_has_no_value() {
        let f = frame(3, Some(b"user-1"), None);
        let Decoded::Record(r, _) = decode(&f, 1 << 20) else { panic!("decodes") };
        assert!(r.is_tombstone());
        assert_eq!(r.key.as_deref(), Some(&b"user-1"[..]));
    }

    #[test]
    fn an_empty_value_is_not_a_tombstone() {
        let f = frame(3, Some(b"k"), Some(b""));
        let Decoded::Record(r, _) = decode(&f, 1 << 20) else { panic!("decodes") };
        assert!(!r.is_tombstone());
        assert_eq!(r.value.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn every_truncation_is_short_and_every_flipped_bit_is_damaged() {
        let f = frame(42, Some(b"key"), Some(b"some value"));
        for cut in 1..f.len() {
            assert!(matches!(decode(&f[..cut], 1 << 20), Decoded::Short { .. }), "cut at {cut}");
        }
        for byte in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[byte] ^= 1 << bit;
                match decode(&g, 1 << 20) {
                    Decoded::Record(..) => panic!("a flipped bit at {byte}.{bit} went unnoticed"),
                    Decoded::Short { .. } | Decoded::Damaged(_) | Decoded::Zeros => {}
                }
            }
        }
    }

    #[test]
    fn zeros_are_told_apart_from_a_frame() {
        assert_eq!(decode(&[0; 64], 1 << 20), Decoded::Zeros);
        assert_eq!(decode(&[0; 3], 1 << 20), Decoded::Zeros);
    }

    proptest! {
        #[test]
        fn what_is_encoded_decodes(offset: u64, timestamp: i64,
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200))) {
            let mut out = Vec::new();
            encode(&mut out, offset, timestamp, key.as_deref(), value.as_deref());
            let expected = Record { offset, timestamp, key: key.map(Bytes::from), value: value.map(Bytes::from) };
            prop_assert_eq!(decode(&out, 1 << 20), Decoded::Record(expected, out.len()));
        }
    }
}
