//! Conversions between the wire types of `topo.proto` and the crate's domain types. Wire types
//! stay at this edge; anything missing or malformed is rejected here.

use bytes::Bytes;
use prost::Message;
use tessera_proto::topo as wire;
use tessera_proto::topo::topo_error_detail::Kind;
use tonic::{Code, Status};

use crate::error::TopoError;
use crate::store::{Version, Versioned, WatchEvent};

pub(crate) fn entry_to_wire(key: String, versioned: Versioned) -> wire::Entry {
    wire::Entry {
        key,
        value: versioned.value,
        version: versioned.version.0,
    }
}

pub(crate) fn entry_from_wire(entry: wire::Entry) -> (String, Versioned) {
    (
        entry.key,
        Versioned {
            value: entry.value,
            version: Version(entry.version),
        },
    )
}

pub(crate) fn event_to_wire(event: WatchEvent) -> wire::WatchEvent {
    use wire::watch_event::Event;
    let event = match event {
        WatchEvent::Snapshot(entries) => Event::Snapshot(wire::Snapshot {
            entries: entries
                .into_iter()
                .map(|(key, versioned)| entry_to_wire(key, versioned))
                .collect(),
        }),
        WatchEvent::Put {
            key,
            value,
            version,
        } => Event::Put(wire::Entry {
            key,
            value,
            version: version.0,
        }),
        WatchEvent::Delete { key } => Event::Delete(key),
    };
    wire::WatchEvent { event: Some(event) }
}

pub(crate) fn event_from_wire(event: wire::WatchEvent) -> Result<WatchEvent, TopoError> {
    use wire::watch_event::Event;
    match event.event {
        Some(Event::Snapshot(snapshot)) => Ok(WatchEvent::Snapshot(
            snapshot.entries.into_iter().map(entry_from_wire).collect(),
        )),
        Some(Event::Put(entry)) => Ok(WatchEvent::Put {
            key: entry.key,
            value: entry.value,
            version: Version(entry.version),
        }),
        Some(Event::Delete(key)) => Ok(WatchEvent::Delete { key }),
        None => Err(TopoError::Internal {
            reason: "topology server sent a watch event without content".to_string(),
        }),
    }
}

/// Encodes a typed error as a gRPC status whose details let the client rebuild it exactly.
pub(crate) fn error_to_status(error: TopoError) -> Status {
    let message = error.to_string();
    let mut detail = wire::TopoErrorDetail {
        reason: message.clone(),
        ..Default::default()
    };
    let code = match error {
        TopoError::NotFound { key } => {
            detail.kind = Kind::NotFound as i32;
            detail.key = key;
            Code::NotFound
        }
        TopoError::AlreadyExists { key } => {
            detail.kind = Kind::AlreadyExists as i32;
            detail.key = key;
            Code::AlreadyExists
        }
        TopoError::BadVersion {
            key,
            expected,
            actual,
        } => {
            detail.kind = Kind::BadVersion as i32;
            detail.key = key;
            detail.expected_version = expected.0;
            detail.actual_version = actual.0;
            Code::FailedPrecondition
        }
        TopoError::Corrupt { key, reason } => {
            detail.kind = Kind::Corrupt as i32;
            detail.key = key;
            detail.reason = reason;
            Code::DataLoss
        }
        TopoError::InvalidKey { key, reason } => {
            detail.kind = Kind::InvalidKey as i32;
            detail.key = key;
            detail.reason = reason;
            Code::InvalidArgument
        }
        TopoError::InvalidName { .. }
        | TopoError::InvalidUrl { .. }
        | TopoError::InvalidArgument { .. } => {
            detail.kind = Kind::InvalidArgument as i32;
            Code::InvalidArgument
        }
        TopoError::Unavailable { .. } => {
            detail.kind = Kind::Unavailable as i32;
            Code::Unavailable
        }
        TopoError::LockLost { key, reason } => {
            detail.kind = Kind::LockLost as i32;
            detail.key = key;
            detail.reason = reason;
            Code::FailedPrecondition
        }
        TopoError::Closed { reason } => {
            detail.kind = Kind::Closed as i32;
            detail.reason = reason;
            Code::Unavailable
        }
        TopoError::TooManyConflicts { .. } | TopoError::Io { .. } | TopoError::Internal { .. } => {
            detail.kind = Kind::Internal as i32;
            Code::Internal
        }
    };
    Status::with_details(code, message, Bytes::from(detail.encode_to_vec()))
}

/// Rebuilds the typed error from a status; statuses without our details (transport failures,
/// a proxy in between) become `Unavailable` when retryable and `Internal` otherwise.
pub(crate) fn status_to_error(status: &Status, endpoint: &str) -> TopoError {
    let detail = wire::TopoErrorDetail::decode(status.details())
        .ok()
        .filter(|detail| detail.kind != Kind::Unspecified as i32);
    let Some(detail) = detail else {
        return match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::ResourceExhausted => TopoError::Unavailable {
                endpoint: endpoint.to_string(),
                reason: status.message().to_string(),
            },
            _ => TopoError::Internal {
                reason: format!("topology server: {}", status.message()),
            },
        };
    };
    let key = detail.key;
    let reason = detail.reason;
    match Kind::try_from(detail.kind).unwrap_or(Kind::Internal) {
        Kind::NotFound => TopoError::NotFound { key },
        Kind::AlreadyExists => TopoError::AlreadyExists { key },
        Kind::BadVersion => TopoError::BadVersion {
            key,
            expected: Version(detail.expected_version),
            actual: Version(detail.actual_version),
        },
        Kind::Corrupt => TopoError::Corrupt { key, reason },
        Kind::InvalidKey => TopoError::InvalidKey { key, reason },
        Kind::InvalidArgument => TopoError::InvalidArgument { reason },
        Kind::Unavailable => TopoError::Unavailable {
            endpoint: endpoint.to_string(),
            reason,
        },
        Kind::LockLost => TopoError::LockLost { key, reason },
        Kind::Closed => TopoError::Closed { reason },
        Kind::Internal | Kind::Unspecified => TopoError::Internal { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every error kind the remote client must react to survives the trip through a gRPC
    /// status unchanged (notably BadVersion's actual version).
    #[test]
    fn typed_errors_survive_the_wire() {
        let errors = [
            TopoError::NotFound { key: "/a".into() },
            TopoError::AlreadyExists { key: "/a".into() },
            TopoError::BadVersion {
                key: "/a".into(),
                expected: Version(3),
                actual: Version(9),
            },
            TopoError::Corrupt {
                key: "/a".into(),
                reason: "bad json".into(),
            },
            TopoError::InvalidKey {
                key: "a".into(),
                reason: "must start with '/'".into(),
            },
            TopoError::LockLost {
                key: "/l".into(),
                reason: "expired".into(),
            },
            TopoError::Closed {
                reason: "gone".into(),
            },
        ];
        for error in errors {
            let status = error_to_status(error.clone());
            assert_eq!(status_to_error(&status, "server"), error);
        }
        let unavailable = status_to_error(&Status::unavailable("connection refused"), "server");
        assert!(matches!(unavailable, TopoError::Unavailable { .. }));
        assert!(unavailable.is_retryable());
    }
}
