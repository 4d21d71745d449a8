//! Errors: `SqlError` is what PostgreSQL clients see (an ErrorResponse with a SQLSTATE);
//! `WireError` is what goes wrong on a connection.

use std::fmt;
use std::io;

use bytes::{BufMut, BytesMut};

/// An error as carried by an ErrorResponse: severity, SQLSTATE and the human-facing fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// `ERROR` or `FATAL` (FATAL closes the connection).
    pub severity: &'static str,
    /// Five-character SQLSTATE code.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl SqlError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        SqlError {
            severity: "ERROR",
            code: code.to_string(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        SqlError {
            severity: "FATAL",
            ..SqlError::new(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// True for SQLSTATEs after which retrying on another connection can succeed: the
    /// connection-exception class (08) and Tessera's own "tablet is not serving" (57P01/57P03).
    pub fn is_retryable(&self) -> bool {
        self.code.starts_with("08") || self.code == "57P01" || self.code == "57P03"
    }

    /// Parses the body of an ErrorResponse (or NoticeResponse).
    pub fn from_body(body: &[u8]) -> SqlError {
        let mut error = SqlError::new("XX000", "");
        for field in body.split(|b| *b == 0) {
            let Some((&kind, value)) = field.split_first() else {
                break;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'V' => {
                    error.severity = match value.as_str() {
                        "FATAL" => "FATAL",
                        "PANIC" => "PANIC",
                        "WARNING" => "WARNING",
                        "NOTICE" => "NOTICE",
                        _ => "ERROR",
                    }
                }
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        error
    }

    /// Appends this error as an ErrorResponse frame.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(b'E');
        out.put_i32(0);
        let mut field = |kind: u8, value: &str| {
            out.put_u8(kind);
            // NUL would end the field early; PostgreSQL never sends one either.
            out.extend(value.bytes().filter(|b| *b != 0));
            out.put_u8(0);
        };
        field(b'S', self.severity);
        field(b'V', self.severity);
        field(b'C', &self.code);
        field(b'M', &self.message);
        if let Some(detail) = &self.detail {
            field(b'D', detail);
        }
        if let Some(hint) = &self.hint {
            field(b'H', hint);
        }
        out.put_u8(0);
        let len = (out.len() - start - 1) as i32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " DETAIL: {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SqlError {}

/// What can go wrong on a protocol connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("server error: {0}")]
    Server(SqlError),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
}

impl WireError {
    pub fn protocol(message: impl Into<String>) -> Self {
        WireError::Protocol(message.into())
    }

    /// The SQL error to show a client for this failure of a connection to a backend.
    pub fn to_sql_error(&self, context: &str) -> SqlError {
        match self {
            WireError::Server(error) => error.clone(),
            other => SqlError::new("08006", format!("{context}: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trips_through_encode_and_parse() {
        let error = SqlError::new("28P01", "password authentication failed for user \"bob\"")
            .with_detail("d")
            .with_hint("h");
        let mut buf = BytesMut::new();
        error.encode(&mut buf);
        assert_eq!(buf[0], b'E');
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        assert_eq!(SqlError::from_body(&buf[5..]), error);
    }

    #[test]
    fn connection_class_errors_are_retryable_and_others_are_not() {
        assert!(SqlError::new("08006", "x").is_retryable());
        assert!(SqlError::new("57P03", "x").is_retryable());
        assert!(!SqlError::new("23505", "x").is_retryable());
    }
}
