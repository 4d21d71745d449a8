//! Deliberate mistakes the simulator must be able to catch.
//!
//! Each switch re-introduces a classic consensus bug into the agent's decisions. They exist so
//! the test suite can prove that the model checker and simulator would notice such a bug. The
//! module is public only in this crate's own tests and with the `fault-injection` feature,
//! which only this crate's dev-dependencies enable: production builds of other crates cannot
//! name it, and [`crate::agent::LeadershipChange::with_faults`] does not exist for them.

/// Which deliberate mistakes an agent makes. All off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults {
    /// Judge revocation and candidacy by counting a majority of each cohort instead of using
    /// the policy's groups.
    pub majority_quorums: bool,
    /// Only check that the primary the agent believes in is revoked, not every eligible one.
    pub revoke_only_believed_primary: bool,
    /// Choose the longest log in discovery instead of the one whose last entry is newest.
    pub longest_log_wins: bool,
}

impl Faults {
    /// No deliberate mistakes.
    pub const NONE: Faults = Faults {
        majority_quorums: false,
        revoke_only_believed_primary: false,
        longest_log_wins: false,
    };
}
