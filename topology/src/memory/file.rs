//! The on-disk form of a persistent [`super::MemoryTopo`]: one JSON snapshot of the whole store,
//! rewritten atomically on every mutation.
//!
//! Why a whole-file snapshot: the topology holds hundreds of small records and changes a few
//! times per minute, so rewriting everything is cheap, and a single file that is always complete
//! (temp file, fsync, rename, fsync the directory) cannot be left half-written by a crash.
//! An exclusive `flock` on a sibling `.lock` file keeps a second `tessera up` from writing the
//! same store concurrently.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::TopoError;
use crate::store::{Version, Versioned, validate_key};

/// Bumped on incompatible changes of the file layout.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContents {
    format: u32,
    /// Last version handed out; the next mutation uses `revision + 1`.
    revision: u64,
    entries: Vec<FileEntry>,
}

/// One key. Values are stored as text when they are UTF-8 (records are JSON, so an operator can
/// read the file) and as hex otherwise.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    key: String,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
}

/// The loaded state of a store file.
pub(super) struct Loaded {
    pub revision: u64,
    pub entries: BTreeMap<String, Versioned>,
}

/// An open, exclusively locked store file.
pub(super) struct StoreFile {
    path: PathBuf,
    temporary_path: PathBuf,
    directory: PathBuf,
    /// Held for the lifetime of the store; released by the kernel when the process dies.
    _lock: Flock<File>,
}

impl StoreFile {
    /// Locks and loads `path`, creating an empty store file when none exists.
    pub(super) fn open(path: &Path) -> Result<(StoreFile, Loaded), TopoError> {
        let file_name = path
            .file_name()
            .ok_or_else(|| TopoError::io(path, "path has no file name"))?
            .to_string_lossy()
            .into_owned();
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&directory).map_err(|error| TopoError::io(&directory, error))?;

        let lock_path = directory.join(format!("{file_name}.lock"));
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| TopoError::io(&lock_path, error))?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                TopoError::io(
                    path,
                    format!(
                        "already in use by another process (lock {}: {errno})",
                        lock_path.display()
                    ),
                )
            })?;

        let store_file = StoreFile {
            path: path.to_path_buf(),
            temporary_path: directory.join(format!("{file_name}.tmp")),
            directory,
            _lock: lock,
        };
        let loaded = match std::fs::read(path) {
            Ok(bytes) => parse(path, &bytes)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let empty = Loaded {
                    revision: 0,
                    entries: BTreeMap::new(),
                };
                store_file.write(empty.revision, &empty.entries)?;
                empty
            }
            Err(error) => return Err(TopoError::io(path, error)),
        };
        Ok((store_file, loaded))
    }

    /// Replaces the file with this state, durably: temp file, fsync, rename, fsync directory.
    pub(super) fn write(
        &self,
        revision: u64,
        entries: &BTreeMap<String, Versioned>,
    ) -> Result<(), TopoError> {
        let contents = FileContents {
            format: FORMAT,
            revision,
            entries: entries
                .iter()
                .map(|(key, versioned)| {
                    let (text, hex) = match std::str::from_utf8(&versioned.value) {
                        Ok(text) => (Some(text.to_string()), None),
                        Err(_) => (None, Some(hex::encode(&versioned.value))),
                    };
                    FileEntry {
                        key: key.clone(),
                        version: versioned.version.0,
                        text,
                        hex,
                    }
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&contents)
            .map_err(|error| TopoError::io(&self.path, error))?;
        let temporary = &self.temporary_path;
        let mut file = File::create(temporary).map_err(|error| TopoError::io(temporary, error))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|error| TopoError::io(temporary, error))?;
        drop(file);
        std::fs::rename(temporary, &self.path).map_err(|error| TopoError::io(&self.path, error))?;
        File::open(&self.directory)
            .and_then(|directory| directory.sync_all())
            .map_err(|error| TopoError::io(&self.directory, error))?;
        Ok(())
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Loaded, TopoError> {
    let corrupt = |reason: String| TopoError::Corrupt {
        key: path.display().to_string(),
        reason,
    };
    let contents: FileContents =
        serde_json::from_slice(bytes).map_err(|error| corrupt(error.to_string()))?;
    if contents.format != FORMAT {
        return Err(corrupt(format!(
            "unsupported format {} (this build reads format {FORMAT})",
            contents.format
        )));
    }
    let mut entries = BTreeMap::new();
    for entry in contents.entries {
        validate_key(&entry.key).map_err(|error| corrupt(error.to_string()))?;
        if entry.version == 0 || entry.version > contents.revision {
            return Err(corrupt(format!(
                "key {} has version {} outside 1..={}",
                entry.key, entry.version, contents.revision
            )));
        }
        let value = match (entry.text, entry.hex) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(hex)) => hex::decode(&hex)
                .map_err(|error| corrupt(format!("key {}: bad hex value: {error}", entry.key)))?,
            _ => {
                return Err(corrupt(format!(
                    "key {} must have exactly one of \"text\" and \"hex\"",
                    entry.key
                )));
            }
        };
        let versioned = Versioned {
            value,
            version: Version(entry.version),
        };
        if entries.insert(entry.key.clone(), versioned).is_some() {
            return Err(corrupt(format!("key {} appears twice", entry.key)));
        }
    }
    Ok(Loaded {
        revision: contents.revision,
        entries,
    })
}
