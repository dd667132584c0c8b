//! A log directory: its marker, its lock, and a folder per stream.
//!
//! ```text
//! DIR/tubemail-log          marker: "tubemail log format 1"
//! DIR/.lock                 held (flock, exclusive) by the process that opened DIR
//! DIR/streams/NAME/stream.toml   the stream's settings (replaced whole: written to stream.toml.new,
//!                                synced, renamed over it)
//! DIR/streams/NAME/P/            partition P's segments and recovery-point
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::config::StreamConfig;
use crate::stream::Stream;
use crate::LogError;

/// The marker file's name and contents.
pub const MARKER_FILE: &str = "tubemail-log";
const MARKER: &str = "tubemail log format 1\n";
/// A stream name's longest.
pub const NAME_MAX: usize = 200;

/// Where streams live: a locked directory, or memory.
#[derive(Debug)]
pub struct LogDir {
    root: Option<PathBuf>,
    _lock: Option<File>,
}

impl LogDir {
    /// Streams in memory: the same code, no files, nothing survives the process.
    pub fn memory() -> Self {
        Self { root: None, _lock: None }
    }

    /// Opens `path` as a log directory, creating it (and its marker) when missing or empty, and
    /// locks it for this process.
    ///
    /// # Errors
    /// [`LogError::NotALog`] for a directory that holds other things, [`LogError::Locked`] when
    /// another process (or another open in this one) holds it, [`LogError::Io`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogError> {
        Self::open_with(path.as_ref(), true)
    }

    /// Opens an existing log directory (for inspection): never creates one.
    ///
    /// # Errors
    /// As [`LogDir::open`], and [`LogError::NotALog`] when `path` is missing.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, LogError> {
        Self::open_with(path.as_ref(), false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Self, LogError> {
        let marker = path.join(MARKER_FILE);
        if !path.exists() {
            if !create {
                return Err(LogError::NotALog { path: path.to_owned(), why: "no such directory".into() });
            }
            std::fs::create_dir_all(path).map_err(|e| LogError::io("create", path, e))?;
        }
        if !path.is_dir() {
            return Err(LogError::NotALog { path: path.to_owned(), why: "not a directory".into() });
        }
        match std::fs::read_to_string(&marker) {
            Ok(text) if text == MARKER => {}
            // A crash while the directory was made can cut the marker, which is written first: with
            // nothing else in the directory, it is written again.
            Ok(text) if create && MARKER.starts_with(&text) && holds_only(path, MARKER_FILE)? => {
                std::fs::write(&marker, MARKER).map_err(|e| LogError::io("write", &marker, e))?;
            }
            Ok(_) => {
                return Err(LogError::NotALog {
                    path: marker,
                    why: "an unknown marker (another format?)".into(),
                })
            }
            Err(_) => {
                let empty =
                    std::fs::read_dir(path).map_err(|e| LogError::io("list", path, e))?.next().is_none();
                if !empty || !create {
                    return Err(LogError::NotALog {
                        path: path.to_owned(),
                        why: "it holds other files and no tubemail-log marker".into(),
                    });
                }
                std::fs::write(&marker, MARKER).map_err(|e| LogError::io("write", &marker, e))?;
            }
        }
        let lock_path = path.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| LogError::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LogError::Locked { path: path.to_owned() }),
            Err(std::fs::TryLockError::Error(e)) => return Err(LogError::io("lock", &lock_path, e)),
        }
        Ok(Self { root: Some(path.to_owned()), _lock: Some(lock) })
    }

    /// The directory, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn stream_dir(&self, name: &str) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join("streams").join(name))
    }

    /// Opens stream `name` with `config`, creating it if it does not exist. Its settings are stored
    /// with it; a later open may change all but `partitions`.
    ///
    /// # Errors
    /// [`LogError::InvalidName`], [`LogError::InvalidConfig`], [`LogError::PartitionsChanged`],
    /// and what opening its partitions finds.
    pub fn stream(&self, name: &str, config: StreamConfig) -> Result<Stream, LogError> {
        validate_name(name)?;
        if let Some((field, why)) = config.problems().into_iter().next() {
            return Err(LogError::InvalidConfig { field, why });
        }
        let dir = self.stream_dir(name);
        if let Some(dir) = &dir {
            let settings = dir.join("stream.toml");
            if let Some(stored) = read_settings(&settings)? {
                if stored.partitions != config.partitions {
                    return Err(LogError::PartitionsChanged {
                        stream: name.to_owned(),
                        on_disk: stored.partitions,
                        asked: config.partitions,
                    });
                }
            }
            std::fs::create_dir_all(dir).map_err(|e| LogError::io("create", dir, e))?;
            let text = toml::to_string(&config).expect("settings serialize");
            if std::fs::read_to_string(&settings).ok().as_deref() != Some(text.as_str()) {
                write_settings(dir, &settings, &text)?;
            }
        }
        Stream::open(name, dir, config)
    }

    /// Opens stream `name` with the settings stored with it.
    ///
    /// # Errors
    /// [`LogError::UnknownStream`], and as [`LogDir::stream`].
    pub fn open_stream(&self, name: &str) -> Result<Stream, LogError> {
        validate_name(name)?;
        let config = match self.stream_dir(name) {
            Some(dir) => read_settings(&dir.join("stream.toml"))?,
            None => None,
        };
        let config = config.ok_or_else(|| LogError::UnknownStream(name.to_owned()))?;
        self.stream(name, config)
    }

    /// The streams on disk, by name.
    ///
    /// # Errors
    /// [`LogError::Io`].
    pub fn stream_names(&self) -> Result<Vec<String>, LogError> {
        let Some(root) = &self.root else { return Ok(Vec::new()) };
        let streams = root.join("streams");
        if !streams.exists() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&streams).map_err(|e| LogError::io("list", &streams, e))? {
            let entry = entry.map_err(|e| LogError::io("list", &streams, e))?;
            if entry.path().join("stream.toml").exists() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Replaces a stream's settings file as a whole: a new file, synced, renamed over the old one, so
/// that a crash leaves the old settings or the new ones, never a truncated file.
fn write_settings(dir: &Path, settings: &Path, text: &str) -> Result<(), LogError> {
    let staged = dir.join(SETTINGS_STAGING);
    std::fs::File::create(&staged)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_data()
        })
        .map_err(|e| LogError::io("write", &staged, e))?;
    std::fs::rename(&staged, settings).map_err(|e| LogError::io("rename", &staged, e))?;
    crate::partition::sync_dir(dir)
}

/// Where new settings are written before they replace `stream.toml`.
const SETTINGS_STAGING: &str = "stream.toml.new";

/// Whether `dir` holds nothing but `name`.
fn holds_only(dir: &Path, name: &str) -> Result<bool, LogError> {
    for entry in std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))? {
        if entry.map_err(|e| LogError::io("list", dir, e))?.file_name() != name {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_settings(path: &Path) -> Result<Option<StreamConfig>, LogError> {
    let refuse = |why: String| LogError::NotALog { path: path.to_owned(), why };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // Every field has a default, but the partition count must be stored: read as the
            // default, a lost count would hide every partition but the first.
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| refuse(format!("its stream.toml does not parse: {}", e.message())))?;
            if !table.contains_key("partitions") {
                return Err(refuse("its stream.toml does not name the stream's partitions".into()));
            }
            toml::from_str(&text)
                .map(Some)
                .map_err(|e| refuse(format!("its stream.toml does not parse: {}", e.message())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io("read", path, e)),
    }
}

/// Checks a stream name: 1 to 200 of `A-Z a-z 0-9 . _ -`, not `.` or `..`.
///
/// # Errors
/// [`LogError::InvalidName`].
pub fn validate_name(name: &str) -> Result<(), LogError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(LogError::InvalidName(name.to_owned()))
    }
}
