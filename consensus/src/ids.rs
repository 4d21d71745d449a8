//! Identities, terms and log positions: the small value types every other module speaks.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid node or agent identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Identities are never empty.
    #[error("an identity must not be empty")]
    Empty,
    /// Identities appear in policy text and in `synchronous_standby_names`, so they are limited
    /// to characters that need no quoting rules of their own.
    #[error(
        "identity {text:?} contains {character:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
    )]
    InvalidCharacter {
        /// The rejected identity.
        text: String,
        /// The first character that is not allowed.
        character: char,
    },
}

fn validate_identity(text: &str) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    match text
        .chars()
        .find(|character| !(character.is_ascii_alphanumeric() || "-_.".contains(*character)))
    {
        Some(character) => Err(IdError::InvalidCharacter {
            text: text.to_owned(),
            character,
        }),
        None => Ok(()),
    }
}

/// Identity of a cohort member or observer; in Tessera this is the tablet id, e.g. `zone1-101`.
///
/// Why validated: node ids are embedded in operator-written policy text and compiled into
/// PostgreSQL's `synchronous_standby_names`; restricting the alphabet keeps both unambiguous.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// Validates and wraps a node id.
    pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
        let text = text.into();
        validate_identity(&text)?;
        Ok(Self(text))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

impl TryFrom<&str> for NodeId {
    type Error = IdError;

    fn try_from(text: &str) -> Result<Self, Self::Error> {
        Self::new(text)
    }
}

/// Identity of an agent: a coordinator running a leadership change, or a leader handing its
/// term over in a planned change.
///
/// Why it exists: a node joins a term for exactly one agent, so two agents that picked the same
/// term can never both assemble the nodes they need.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(String);

impl AgentId {
    /// Validates and wraps an agent id.
    pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
        let text = text.into();
        validate_identity(&text)?;
        Ok(Self(text))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl FromStr for AgentId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

/// A consensus term. Every node persists the highest term it has joined; it never decreases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

impl Term {
    /// The term that follows this one.
    pub fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

/// Where a log ends: the term of its last entry, then the position of that entry (on
/// PostgreSQL the LSN as a `u64`).
///
/// Ordering is by term first, then index, which is exactly "most progressed timeline" in
/// discovery: a log whose last entry is from a newer term wins over a longer log from an older
/// term, because the newer term's agent already honoured everything that could have been
/// durable before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    /// Term of the last entry in the log (not the node's current term).
    pub term: Term,
    /// Position of the last entry (an LSN on PostgreSQL, an entry count in simulations).
    pub index: u64,
}

impl LogPosition {
    /// Builds a position from the last entry's term and index.
    pub fn new(term: Term, index: u64) -> Self {
        Self { term, index }
    }
}

impl fmt::Display for LogPosition {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}@{}", self.term, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_term_before_index() {
        // Goal: a shorter log with a newer last term is more progressed than a longer older one.
        let newer_short = LogPosition::new(Term(7), 3);
        let older_long = LogPosition::new(Term(6), 90);
        assert!(newer_short > older_long);
        assert!(LogPosition::new(Term(6), 91) > older_long);
    }

    #[test]
    fn identities_reject_characters_that_would_need_quoting() {
        // Goal: ids that could break policy text or synchronous_standby_names are refused.
        assert!(NodeId::new("zone1-101").is_ok());
        assert_eq!(NodeId::new(""), Err(IdError::Empty));
        assert!(matches!(
            NodeId::new("a\"b"),
            Err(IdError::InvalidCharacter { character: '"', .. })
        ));
        assert!(matches!(
            AgentId::new("coordinator zone1"),
            Err(IdError::InvalidCharacter { character: ' ', .. })
        ));
    }
}
