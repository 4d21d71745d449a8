//! The one error type of the topology crate. Every backend maps its failures onto these variants
//! so that callers (and the gRPC bridge) can react to the *kind* of failure without knowing which
//! backend produced it.

use crate::store::Version;

/// A topology operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopoError {
    /// The key does not exist.
    #[error("topology key {key} not found")]
    NotFound { key: String },

    /// `create` of a key that already exists.
    #[error("topology key {key} already exists")]
    AlreadyExists { key: String },

    /// A compare-and-set found another version than the caller expected: someone else changed
    /// the key since the caller read it. Re-read and retry.
    #[error("topology key {key} changed concurrently: expected version {expected}, found {actual}")]
    BadVersion {
        key: String,
        expected: Version,
        actual: Version,
    },

    /// A stored value (or the embedded store's file) cannot be decoded. Nothing is overwritten
    /// on this error; an operator has to repair or delete the record.
    #[error("topology record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },

    /// The key or prefix is not a well-formed topology path.
    #[error("invalid topology key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },

    /// A name used to build a key (keyspace, shard, zone, tablet id) is not allowed.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: String,
    },

    /// The topology URL cannot be used.
    #[error("invalid topology URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// An argument other than a key is out of range (e.g. a zero lock TTL).
    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },

    /// The backend cannot be reached or did not answer in time. Usually transient.
    #[error("topology backend {endpoint} unavailable: {reason}")]
    Unavailable { endpoint: String, reason: String },

    /// A held lock's lease expired or was revoked; someone else may hold the lock now.
    #[error("lock {key} lost: {reason}")]
    LockLost { key: String, reason: String },

    /// A read-modify-write kept conflicting with concurrent writers and gave up.
    #[error("topology key {key} kept changing concurrently; gave up after {attempts} attempts")]
    TooManyConflicts { key: String, attempts: u32 },

    /// The store was shut down (or, for a watch, its backend is gone for good).
    #[error("topology store closed: {reason}")]
    Closed { reason: String },

    /// Reading or writing the embedded store's file failed.
    #[error("topology file {path}: {reason}")]
    Io { path: String, reason: String },

    /// Anything else the backend reported that fits no variant above.
    #[error("topology backend error: {reason}")]
    Internal { reason: String },
}

impl TopoError {
    /// True when retrying the same operation later may succeed without anyone fixing anything:
    /// the backend was unreachable, or a concurrent writer won a race.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TopoError::Unavailable { .. }
                | TopoError::BadVersion { .. }
                | TopoError::TooManyConflicts { .. }
        )
    }

    /// Shorthand used by the backends for I/O failures on the embedded store's file.
    pub(crate) fn io(path: &std::path::Path, error: impl std::fmt::Display) -> TopoError {
        TopoError::Io {
            path: path.display().to_string(),
            reason: error.to_string(),
        }
    }
}
