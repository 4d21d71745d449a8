//! The one error type of the SQL layer: a PostgreSQL error the gate can send to the client as is.

use std::fmt;

/// SQLSTATE `42601`: syntax error (carries the parser's message).
pub const SYNTAX_ERROR: &str = "42601";
/// SQLSTATE `0A000`: the gate cannot execute this statement correctly (never a wrong answer).
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE `42P01`: the relation is not known to the gate's vschema.
pub const UNDEFINED_TABLE: &str = "42P01";
/// SQLSTATE `42703`: a column the statement needs (e.g. the sharding column) is missing.
pub const UNDEFINED_COLUMN: &str = "42703";
/// SQLSTATE `42501`: the user may not do this (e.g. change `synchronous_commit`).
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE `22P02`: a sharding value does not parse as the column's type.
pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
/// SQLSTATE `22003`: a value is out of range for its type (e.g. a summed bigint).
pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
/// SQLSTATE `23502`: a NULL sharding value in an INSERT (the row would belong to no shard).
pub const NOT_NULL_VIOLATION: &str = "23502";
/// SQLSTATE `08P01`: the client sent parameters that do not match the statement.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE `42P18`: a parameter's type cannot be used for routing.
pub const INDETERMINATE_DATATYPE: &str = "42P18";
/// SQLSTATE `XX000`: a shard sent a row the merger cannot read (a bug, not user input).
pub const INTERNAL_ERROR: &str = "XX000";

/// An error the gate reports to the client as an ErrorResponse.
///
/// Every planning, routing and merging failure ends up here with a SQLSTATE chosen so that a
/// client can act on it: `42601` for syntax, `0A000` for statements the gate refuses because it
/// cannot run them correctly across shards (the message says what and why), `42P01`/`42703` for
/// unknown tables/columns, `22P02` for sharding values that do not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// Five-character SQLSTATE code.
    pub sqlstate: &'static str,
    /// Primary human-readable message (PostgreSQL style: lower case, no final period).
    pub message: String,
    /// Optional DETAIL field.
    pub detail: Option<String>,
    /// Optional HINT field.
    pub hint: Option<String>,
}

impl PlanError {
    /// An error with a SQLSTATE and message, no detail or hint.
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        PlanError {
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// `42601` with the parser's message.
    pub fn syntax(message: impl Into<String>) -> Self {
        Self::new(SYNTAX_ERROR, message)
    }

    /// `0A000`: something the gate cannot execute correctly.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(FEATURE_NOT_SUPPORTED, message)
    }

    /// Adds a DETAIL field.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a HINT field.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} (SQLSTATE {})", self.message, self.sqlstate)?;
        if let Some(detail) = &self.detail {
            write!(formatter, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(formatter, "; hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanError {}
