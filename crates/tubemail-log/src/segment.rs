//! Segments: one file of frames (or a buffer, in memory), named by its base offset, with a sparse
//! offset index and a time index.
//!
//! ```text
//! 00000000000000000000.log        frames (see crate::record), offsets base..
//! 00000000000000000000.index      every 4 KiB of frames: u32 offset - base, u32 byte position
//! 00000000000000000000.timeindex  with each index entry: i64 newest timestamp so far, u32 offset - base
//! ```
//!
//! Index entries are appended as frames are written, without a sync of their own: an entry is only
//! trusted below the partition's recovery checkpoint, and recovery rebuilds the rest from the frames.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::record::{self, Decoded, Record};
use crate::LogError;

/// Bytes of frames between two index entries.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;
/// Bytes read at a time when scanning.
const READ_CHUNK: usize = 256 << 10;
/// One entry of the offset index or the time index, in bytes.
pub(crate) const INDEX_ENTRY: usize = 8;
pub(crate) const TIME_ENTRY: usize = 12;

/// Where a segment's bytes live.
pub(crate) enum Data {
    File(File),
    Memory(RwLock<Chunks>),
}

/// Bytes of one chunk of a memory segment.
pub(crate) const MEMORY_CHUNK: usize = 1 << 20;

/// A memory segment's bytes: chunks of [`MEMORY_CHUNK`], every one full but the last. Growing never
/// moves what is written: one buffer grown by doubling copied the whole segment (up to
/// `segment_bytes`) under the write lock at each doubling, stalling readers, and touched twice the
/// memory it kept, in blocks large enough to be backed by huge pages whose first touch is slow.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    chunks: Vec<Vec<u8>>,
}

impl Chunks {
    pub(crate) fn len(&self) -> usize {
        self.chunks.last().map_or(0, |last| (self.chunks.len() - 1) * MEMORY_CHUNK + last.len())
    }

    pub(crate) fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        let (full, rest) = (len / MEMORY_CHUNK, len % MEMORY_CHUNK);
        self.chunks.truncate(full + usize::from(rest > 0));
        if rest > 0 {
            self.chunks[full].truncate(rest);
        }
    }

    pub(crate) fn extend(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.chunks.last().is_none_or(|last| last.len() == MEMORY_CHUNK) {
                self.chunks.push(Vec::new());
            }
            let first = self.chunks.len() == 1;
            let last = self.chunks.last_mut().expect("a chunk");
            let n = (MEMORY_CHUNK - last.len()).min(bytes.len());
            if last.capacity() - last.len() < n {
                // The first chunk grows as a small segment needs (doubling, up to a chunk); the
                // others are whole chunks at once.
                let want = if first { (last.capacity() * 2).max(last.len() + n) } else { MEMORY_CHUNK };
                last.reserve_exact(want.min(MEMORY_CHUNK) - last.len());
            }
            last.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
    }

    /// Copies bytes from `pos` into `buf`; returns how many (fewer at the end).
    pub(crate) fn read_at(&self, buf: &mut [u8], pos: usize) -> usize {
        let len = self.len();
        let start = pos.min(len);
        let n = buf.len().min(len - start);
        let mut done = 0;
        while done < n {
            let at = start + done;
            let chunk = &self.chunks[at / MEMORY_CHUNK];
            let offset = at % MEMORY_CHUNK;
            let m = (chunk.len() - offset).min(n - done);
            buf[done..done + m].copy_from_slice(&chunk[offset..offset + m]);
            done += m;
        }
        n
    }
}

impl Data {
    fn write_at(&self, bytes: &[u8], pos: u64) -> io::Result<()> {
        match self {
            Data::File(f) => f.write_all_at(bytes, pos),
            Data::Memory(buf) => {
                let mut buf = buf.write().expect("segment buffer");
                buf.truncate(pos as usize);
                buf.extend(bytes);
                Ok(())
            }
        }
    }

    pub(crate) fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        match self {
            Data::File(f) => {
                let mut read = 0;
                while read < buf.len() {
                    match f.read_at(&mut buf[read..], pos + read as u64) {
                        Ok(0) => break,
                        Ok(n) => read += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(read)
            }
            Data::Memory(data) => Ok(data.read().expect("segment buffer").read_at(buf, pos as usize)),
        }
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        match self {
            Data::File(f) => f.sync_data(),
            Data::Memory(_) => Ok(()),
        }
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        match self {
            Data::File(f) => f.set_len(len),
            Data::Memory(buf) => {
                buf.write().expect("segment buffer").truncate(len as usize);
                Ok(())
            }
        }
    }

    fn physical_len(&self) -> io::Result<u64> {
        match self {
            Data::File(f) => Ok(f.metadata()?.len()),
            Data::Memory(buf) => Ok(buf.read().expect("segment buffer").len() as u64),
        }
    }
}

/// What the writer knows of a segment beyond its bytes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Meta {
    pub(crate) records: u64,
    pub(crate) first_timestamp: Option<i64>,
    pub(crate) max_timestamp: i64,
    pub(crate) last_offset: Option<u64>,
    bytes_since_index: u64,
}

/// One segment.
pub(crate) struct Segment {
    pub(crate) base: u64,
    pub(crate) data: Data,
    pub(crate) path: Option<PathBuf>,
    /// Bytes of whole frames.
    len: AtomicU64,
    /// Bytes of frames an `fdatasync` of this process covered (what a power loss would keep; read by
    /// the simulator through [`crate::sim`]).
    synced: AtomicU64,
    /// (offset - base, byte position), every [`INDEX_INTERVAL_BYTES`].
    index: RwLock<Vec<(u32, u32)>>,
    /// (newest timestamp so far, offset - base), beside each index entry.
    times: RwLock<Vec<(i64, u32)>>,
    pub(crate) meta: Mutex<Meta>,
    /// The index files, appended to while this is the active segment.
    index_files: Mutex<Option<(File, File)>>,
}

/// The file names of a segment.
pub(crate) fn file_name(base: u64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

impl Segment {
    /// A new, empty segment in memory.
    pub(crate) fn memory(base: u64) -> Self {
        Self::with(base, Data::Memory(RwLock::new(Chunks::default())), None, None)
    }

    /// Creates a new, empty segment file in `dir`.
    pub(crate) fn create(dir: &Path, base: u64) -> Result<Self, LogError> {
        let path = dir.join(file_name(base, "log"));
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .map_err(|e| LogError::io("create", p, e))
        };
        let data = open(&path)?;
        let index = open(&dir.join(file_name(base, "index")))?;
        let times = open(&dir.join(file_name(base, "timeindex")))?;
        Ok(Self::with(base, Data::File(data), Some(path), Some((index, times))))
    }

    fn with(base: u64, data: Data, path: Option<PathBuf>, index_files: Option<(File, File)>) -> Self {
        Self {
            base,
            data,
            path,
            len: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            index: RwLock::default(),
            times: RwLock::default(),
            meta: Mutex::default(),
            index_files: Mutex::new(index_files),
        }
    }

    /// Bytes of whole frames.
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// The file's name or `memory`.
    pub(crate) fn describe(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| format!("memory segment {}", self.base), |p| p.display().to_string())
    }

    /// Appends frames whose records are `first..=last` with timestamps up to `max_timestamp`. On an
    /// error the segment is cut back to what it held, so that nothing half-written stays.
    pub(crate) fn append(
        &self,
        frames: &[u8],
        first: u64,
        last: u64,
        first_timestamp: i64,
        max_timestamp: i64,
    ) -> Result<(), LogError> {
        let pos = self.len();
        if let Err(e) = self.data.write_at(frames, pos) {
            let _ = self.data.truncate(pos);
            return Err(LogError::io("write", self.path.as_deref().unwrap_or(Path::new("memory")), e));
        }
        self.len.store(pos + frames.len() as u64, Ordering::Release);
        let mut meta = self.meta.lock().expect("segment meta");
        meta.records += last - first + 1;
        meta.first_timestamp.get_or_insert(first_timestamp);
        meta.max_timestamp = meta.max_timestamp.max(max_timestamp);
        meta.last_offset = Some(last);
        if meta.bytes_since_index == 0 || meta.bytes_since_index + frames.len() as u64 > INDEX_INTERVAL_BYTES
        {
            // Index the first frame of this write: a reader looking for `first` starts here.
            meta.bytes_since_index = 0;
            self.add_index((first - self.base) as u32, pos as u32, meta.max_timestamp);
        }
        meta.bytes_since_index += frames.len() as u64;
        Ok(())
    }

    fn add_index(&self, rel: u32, pos: u32, max_timestamp: i64) {
        self.index.write().expect("index").push((rel, pos));
        self.times.write().expect("time index").push((max_timestamp, rel));
        if let Some((index, times)) = &*self.index_files.lock().expect("index files") {
            let mut entry = [0; INDEX_ENTRY];
            entry[..4].copy_from_slice(&rel.to_le_bytes());
            entry[4..].copy_from_slice(&pos.to_le_bytes());
            let n = self.index.read().expect("index").len() as u64 - 1;
            // Index files are hints: a failed write is repaired by the next recovery's scan.
            let _ = index.write_all_at(&entry, n * INDEX_ENTRY as u64);
            let mut entry = [0; TIME_ENTRY];
            entry[..8].copy_from_slice(&max_timestamp.to_le_bytes());
            entry[8..].copy_from_slice(&rel.to_le_bytes());
            let _ = times.write_all_at(&entry, n * TIME_ENTRY as u64);
        }
    }

    /// Syncs the segment's frames (and its index files, which a closed segment's open relies on).
    pub(crate) fn sync(&self) -> Result<(), LogError> {
        let path = self.path.as_deref().unwrap_or(Path::new("memory"));
        // Every byte written before the call is covered.
        let len = self.len();
        self.data.sync().map_err(|e| LogError::io("fdatasync", path, e))?;
        self.synced.fetch_max(len, Ordering::AcqRel);
        Ok(())
    }

    /// Bytes of frames an `fdatasync` of this process covered.
    pub(crate) fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Closes the segment for writing: its index files are synced and let go.
    pub(crate) fn seal(&self, sync: bool) -> Result<(), LogError> {
        if let Some((index, times)) = self.index_files.lock().expect("index files").take() {
            if sync {
                let path = self.path.as_deref().unwrap_or(Path::new("memory"));
                index.sync_data().map_err(|e| LogError::io("fdatasync", path, e))?;
                times.sync_data().map_err(|e| LogError::io("fdatasync", path, e))?;
            }
        }
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    /// The byte position to start reading at for `offset`: the last index entry at or below it.
    fn position_for(&self, offset: u64) -> u64 {
        let rel = offset.saturating_sub(self.base).min(u64::from(u32::MAX)) as u32;
        let index = self.index.read().expect("index");
        let i = index.partition_point(|&(r, _)| r <= rel);
        if i == 0 {
            0
        } else {
            u64::from(index[i - 1].1)
        }
    }

    /// The first offset whose record may have a timestamp at or after `timestamp`, from the time
    /// index (a reader then skips older records).
    pub(crate) fn offset_for_time(&self, timestamp: i64) -> Option<u64> {
        let times = self.times.read().expect("time index");
        let i = times.partition_point(|&(t, _)| t < timestamp);
        // Entry i-1's newest timestamp is older: start from its offset, the last known to be before.
        Some(self.base + u64::from(times.get(i.checked_sub(1)?)?.1))
    }

    /// Reads records at or after `from` and below `end`, up to `max_records` and (past the first)
    /// `max_bytes`. Returns whether the segment's end (as far as written) was reached.
    pub(crate) fn read(
        &self,
        from: u64,
        end: u64,
        max_records: usize,
        max_bytes: usize,
        max_frame: usize,
        out: &mut Vec<Record>,
    ) -> Result<bool, LogError> {
        let len = self.len();
        let mut pos = self.position_for(from);
        let mut bytes = 0;
        let mut buf = Vec::new();
        while pos < len {
            let want = ((len - pos) as usize).min(READ_CHUNK.max(max_frame));
            buf.resize(want, 0);
            let n = self.data.read_at(&mut buf, pos).map_err(|e| self.io_error("read", e))?;
            buf.truncate(n);
            let mut at = 0;
            while at < buf.len() {
                match record::decode(&buf[at..], max_frame) {
                    Decoded::Record(r, size) => {
                        if r.offset >= end {
                            return Ok(false);
                        }
                        if r.offset >= from {
                            bytes += size;
                            out.push(r);
                            if out.len() >= max_records || bytes >= max_bytes {
                                return Ok(false);
                            }
                        }
                        at += size;
                    }
                    Decoded::Short { .. } if at > 0 => break,
                    Decoded::Short { .. } | Decoded::Zeros => {
                        return Err(self.corrupt(pos + at as u64, "a frame runs past the segment's end"))
                    }
                    Decoded::Damaged(why) => return Err(self.corrupt(pos + at as u64, why)),
                }
            }
            pos += at as u64;
        }
        Ok(true)
    }

    fn io_error(&self, op: &'static str, e: io::Error) -> LogError {
        LogError::io(op, self.path.as_deref().unwrap_or(Path::new("memory")), e)
    }

    fn corrupt(&self, position: u64, why: &'static str) -> LogError {
        LogError::Corrupt { file: self.describe(), position, why }
    }

    /// Opens a segment file of a partition being recovered. A closed segment (`active` false) takes
    /// its index files as they are when they check; the active one is scanned from `trusted` (a byte
    /// position the recovery checkpoint vouches for), and a torn last frame is cut off. Returns the
    /// segment and how many torn bytes were cut.
    pub(crate) fn open(
        dir: &Path,
        base: u64,
        active: bool,
        trusted: u64,
        strict: u64,
        max_frame: usize,
    ) -> Result<(Self, u64), LogError> {
        let path = dir.join(file_name(base, "log"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        let physical = file.metadata().map_err(|e| LogError::io("stat", &path, e))?.len();
        let index_path = dir.join(file_name(base, "index"));
        let times_path = dir.join(file_name(base, "timeindex"));
        let (index, times) = read_indexes(&index_path, &times_path);
        let segment = Self::with(base, Data::File(file), Some(path), None);
        // Index entries are trusted below the trusted position (and, for a closed segment, up to
        // its end), and only when ascending.
        let limit = if active { trusted.min(physical) } else { physical };
        let good = index
            .iter()
            .zip(times.iter())
            .enumerate()
            .take_while(|(i, (&(rel, pos), &(_, trel)))| {
                u64::from(pos) < limit
                    && rel == trel
                    && (*i == 0 || (rel > index[i - 1].0 && pos > index[i - 1].1))
            })
            .count();
        let (index, times): (Vec<_>, Vec<_>) = (index[..good].to_vec(), times[..good].to_vec());
        let scan_from = if active { index.last().map_or(0, |&(_, pos)| u64::from(pos)) } else { 0 };
        *segment.index.write().expect("index") = index;
        *segment.times.write().expect("time index") = times;
        let mut rebuilt = !active && good == 0;
        let scanned = if !active && good > 0 {
            // A closed segment with a sound index: trust it, and read only its last frames. An index
            // that does not match its frames (a crash between compaction's renames) is rebuilt.
            let last = segment.index.read().expect("index").last().expect("one").1.into();
            match segment.scan(last, physical, max_frame, false) {
                Ok(scanned) => scanned,
                Err(_) => {
                    rebuilt = true;
                    segment.index.write().expect("index").clear();
                    segment.times.write().expect("time index").clear();
                    *segment.meta.lock().expect("segment meta") = Meta::default();
                    segment.scan_closed(physical, max_frame)
                }
            }
        } else if active {
            let scanned = segment.scan(scan_from, physical, max_frame, true)?;
            if scanned.end < strict.min(physical) || (strict > physical) {
                // The checkpoint vouched for synced bytes that are not there, or not whole.
                return Err(segment.corrupt(
                    scanned.end,
                    "a frame the recovery checkpoint vouched for (synced) is damaged or missing",
                ));
            }
            scanned
        } else {
            segment.scan_closed(physical, max_frame)
        };
        segment.len.store(scanned.end, Ordering::Release);
        {
            // Records before the scan's start are counted by their offsets' span (exact unless
            // compaction left gaps), and timed by the time index.
            let mut meta = segment.meta.lock().expect("segment meta");
            if let Some(last) = meta.last_offset {
                meta.records = last - base + 1;
            }
            let times = segment.times.read().expect("time index");
            if let (Some(&(first, _)), Some(&(newest, _))) = (times.first(), times.last()) {
                meta.first_timestamp = Some(first.min(meta.first_timestamp.unwrap_or(first)));
                meta.max_timestamp = meta.max_timestamp.max(newest);
            }
        }
        let torn = physical - scanned.end;
        if torn > 0 {
            segment.data.truncate(scanned.end).map_err(|e| segment.io_error("truncate", e))?;
        }
        if rebuilt {
            segment.persist_index(&index_path, &times_path)?;
        }
        if active {
            let index_file = |p: &Path, entries: usize, size: usize| -> Result<File, LogError> {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(p)
                    .map_err(|e| LogError::io("open", p, e))?;
                f.set_len((entries * size) as u64).map_err(|e| LogError::io("truncate", p, e))?;
                Ok(f)
            };
            let n = segment.index.read().expect("index").len();
            let files = (index_file(&index_path, 0, INDEX_ENTRY)?, index_file(&times_path, 0, TIME_ENTRY)?);
            *segment.index_files.lock().expect("index files") = Some(files);
            // Write back the whole index (the trusted entries and those the scan rebuilt).
            let entries = segment.index.read().expect("index").clone();
            let times = segment.times.read().expect("time index").clone();
            segment.index.write().expect("index").clear();
            segment.times.write().expect("time index").clear();
            for ((rel, pos), (ts, _)) in entries.into_iter().zip(times) {
                segment.add_index(rel, pos, ts);
            }
            debug_assert_eq!(segment.index.read().expect("index").len(), n);
        }
        Ok((segment, torn))
    }

    /// Scans frames from `from` to the file's end, rebuilding index entries past the last one and
    /// the segment's meta. In the active segment (`tail`) a torn last frame ends the scan; anywhere
    /// else, or followed by more bytes, damage is corruption.
    fn scan(&self, from: u64, physical: u64, max_frame: usize, tail: bool) -> Result<Scanned, LogError> {
        let mut pos = from;
        let mut buf = Vec::new();
        let mut meta = self.meta.lock().expect("segment meta");
        let last_indexed = self.index.read().expect("index").last().map(|&(_, p)| u64::from(p));
        let mut index_at = last_indexed;
        loop {
            if pos >= physical {
                break;
            }
            let want = ((physical - pos) as usize).min(READ_CHUNK.max(max_frame + record::FRAME_HEADER));
            buf.resize(want, 0);
            let n = self.data.read_at(&mut buf, pos).map_err(|e| self.io_error("read", e))?;
            buf.truncate(n);
            let mut at = 0;
            let mut stop = false;
            while at < buf.len() {
                let here = pos + at as u64;
                match record::decode(&buf[at..], max_frame) {
                    Decoded::Record(r, size) => {
                        if r.offset < self.base || meta.last_offset.is_some_and(|last| r.offset <= last) {
                            return Err(self.corrupt(here, "offsets out of order"));
                        }
                        if Some(here) == last_indexed {
                            let rel = self.index.read().expect("index").last().map(|&(rel, _)| rel);
                            if rel != Some((r.offset - self.base) as u32) {
                                return Err(self.corrupt(here, "the index names another offset here"));
                            }
                        }
                        if index_at.is_none_or(|p| here >= p + INDEX_INTERVAL_BYTES) {
                            index_at = Some(here);
                            let ts = meta.max_timestamp.max(r.timestamp);
                            self.push_index((r.offset - self.base) as u32, here as u32, ts);
                        }
                        meta.records += 1;
                        meta.first_timestamp.get_or_insert(r.timestamp);
                        meta.max_timestamp = meta.max_timestamp.max(r.timestamp);
                        meta.last_offset = Some(r.offset);
                        at += size;
                    }
                    Decoded::Short { need }
                        if here + need.unwrap_or(record::FRAME_HEADER) as u64 > physical =>
                    {
                        if !tail {
                            return Err(self.corrupt(here, "a frame runs past the end of a closed segment"));
                        }
                        return Ok(Scanned { end: here });
                    }
                    Decoded::Short { .. } => {
                        // The chunk ends inside a frame that the file holds whole: read on from it.
                        stop = true;
                        break;
                    }
                    Decoded::Zeros if tail => return Ok(Scanned { end: here }),
                    Decoded::Zeros => return Err(self.corrupt(here, "zero bytes inside a closed segment")),
                    Decoded::Damaged(why) => {
                        let frame_end = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
                            as u64
                            + record::FRAME_HEADER as u64;
                        if tail
                            && here + frame_end == physical
                            && why == "CRC-32C mismatch"
                            && crate::broken::bug(|b| b.recovery_keeps_torn_record)
                        {
                            // Broken: the torn frame's CRC is "repaired" and the frame kept.
                            let end = at + frame_end as usize;
                            let crc = crc32c::crc32c(&buf[at + record::FRAME_HEADER..end]).to_le_bytes();
                            buf[at + 4..at + 8].copy_from_slice(&crc);
                            self.data.write_at(&crc, here + 4).map_err(|e| self.io_error("write", e))?;
                            continue;
                        }
                        if tail && here + frame_end >= physical {
                            // The last frame, written in part: torn.
                            return Ok(Scanned { end: here });
                        }
                        return Err(self.corrupt(here, why));
                    }
                }
            }
            if at == 0 && stop {
                return Err(self.corrupt(pos, "a frame larger than max_record_bytes"));
            }
            pos += at as u64;
        }
        meta.bytes_since_index = index_at.map_or(0, |at| pos - at);
        Ok(Scanned { end: pos })
    }

    /// Writes a closed segment's index files whole and syncs them (after a rebuild).
    fn persist_index(&self, index_path: &Path, times_path: &Path) -> Result<(), LogError> {
        let mut index = Vec::new();
        for &(rel, pos) in self.index.read().expect("index").iter() {
            index.extend_from_slice(&rel.to_le_bytes());
            index.extend_from_slice(&pos.to_le_bytes());
        }
        let mut times = Vec::new();
        for &(ts, rel) in self.times.read().expect("time index").iter() {
            times.extend_from_slice(&ts.to_le_bytes());
            times.extend_from_slice(&rel.to_le_bytes());
        }
        for (path, bytes) in [(index_path, index), (times_path, times)] {
            let file = File::create(path).map_err(|e| LogError::io("create", path, e))?;
            file.write_all_at(&bytes, 0)
                .and_then(|()| file.sync_data())
                .map_err(|e| LogError::io("write", path, e))?;
        }
        Ok(())
    }

    /// Scans a closed segment whole. Damage does not stop the open: the segment keeps its whole
    /// length, and a read or `verify` that reaches the damage reports it with its position (a
    /// damaged byte in an old segment must not make the whole log unreadable).
    fn scan_closed(&self, physical: u64, max_frame: usize) -> Scanned {
        match self.scan(0, physical, max_frame, false) {
            Ok(scanned) => scanned,
            Err(_) => {
                self.meta.lock().expect("segment meta").last_offset = None;
                Scanned { end: physical }
            }
        }
    }

    fn push_index(&self, rel: u32, pos: u32, ts: i64) {
        self.index.write().expect("index").push((rel, pos));
        self.times.write().expect("time index").push((ts, rel));
    }

    /// Index entries held in memory (for the index-memory figure).
    pub(crate) fn index_entries(&self) -> usize {
        self.index.read().expect("index").len()
    }

    /// Deletes the segment's files.
    pub(crate) fn remove_files(&self) -> Result<(), LogError> {
        if let Some(path) = &self.path {
            // The index files first: a crash between leaves a segment without them, which the next
            // open re-indexes, rather than index files without a segment.
            for ext in ["index", "timeindex", "log"] {
                let p = path.with_extension(ext);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io("remove", &p, e)),
                }
            }
        }
        Ok(())
    }

    /// The physical length (for tests and inspection).
    #[allow(dead_code)]
    pub(crate) fn physical_len(&self) -> io::Result<u64> {
        self.data.physical_len()
    }
}

struct Scanned {
    end: u64,
}

/// An offset index (offset - base, position) and a time index (newest timestamp, offset - base).
type Indexes = (Vec<(u32, u32)>, Vec<(i64, u32)>);

fn read_indexes(index: &Path, times: &Path) -> Indexes {
    let read = |p: &Path| {
        let mut bytes = Vec::new();
        let _ = File::open(p).and_then(|mut f| f.read_to_end(&mut bytes));
        bytes
    };
    let index = read(index)
        .chunks_exact(INDEX_ENTRY)
        .map(|c| {
            (
                u32::from_le_bytes(c[..4].try_into().expect("4")),
                u32::from_le_bytes(c[4..].try_into().expect("4")),
            )
        })
        .collect();
    let times = read(times)
        .chunks_exact(TIME_ENTRY)
        .map(|c| {
            (
                i64::from_le_bytes(c[..8].try_into().expect("8")),
                u32::from_le_bytes(c[8..].try_into().expect("4")),
            )
        })
        .collect();
    (index, times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a memory segment's chunks must behave as: one buffer.
    #[derive(Debug, Clone)]
    enum Op {
        Extend(usize),
        Truncate(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // Small writes, and writes that cross one or more chunk boundaries.
            (0..3 * MEMORY_CHUNK / 2).prop_map(Op::Extend),
            (0..300_usize).prop_map(Op::Extend),
            (0..4 * MEMORY_CHUNK).prop_map(Op::Truncate),
        ]
    }

    #[test]
    fn chunks_are_whole_but_the_last_and_never_above_a_chunk() {
        let mut chunks = Chunks::default();
        for i in 0..(3 * MEMORY_CHUNK / 134) {
            chunks.extend(&[i as u8; 134]);
        }
        assert_eq!(chunks.len(), 3 * MEMORY_CHUNK / 134 * 134);
        let (last, whole) = chunks.chunks.split_last().expect("chunks");
        assert!(whole.iter().all(|c| c.len() == MEMORY_CHUNK && c.capacity() == MEMORY_CHUNK));
        assert!(last.capacity() <= MEMORY_CHUNK);
        chunks.truncate(MEMORY_CHUNK);
        assert_eq!((chunks.len(), chunks.chunks.len()), (MEMORY_CHUNK, 1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn chunks_read_back_what_one_buffer_would(ops in proptest::collection::vec(op(), 1..12),
            reads in proptest::collection::vec((0..4 * MEMORY_CHUNK, 0..2 * MEMORY_CHUNK), 1..6)) {
            let (mut chunks, mut model) = (Chunks::default(), Vec::new());
            let mut next = 0_u8;
            for op in ops {
                match op {
                    Op::Extend(n) => {
                        let bytes: Vec<u8> = (0..n).map(|_| { next = next.wrapping_add(1); next }).collect();
                        chunks.extend(&bytes);
                        model.extend_from_slice(&bytes);
                    }
                    Op::Truncate(n) => {
                        chunks.truncate(n);
                        model.truncate(n);
                    }
                }
                prop_assert_eq!(chunks.len(), model.len());
            }
            for (pos, len) in reads {
                let mut buf = vec![0; len];
                let n = chunks.read_at(&mut buf, pos);
                let start = pos.min(model.len());
                let want = &model[start..(start + len).min(model.len())];
                prop_assert_eq!(&buf[..n], want);
            }
        }
    }
}
