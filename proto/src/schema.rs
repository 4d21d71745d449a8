//! SQL objects Tessera keeps inside every shard's database, in the `tessera` schema.
//!
//! The tablet creates them when it initialises a shard's first primary; the gate relies on
//! `twopc_decisions` for two-phase commit, and consensus records every establishment in `terms`
//! (the term and rules under which the WAL that follows was written). They travel with the data through replication, which is the point: a decision
//! recorded here is exactly as durable as the shard's own writes.

/// Creates the `tessera` schema and its tables if missing (idempotent).
pub const CREATE_TESSERA_SCHEMA: &str = "\
CREATE SCHEMA IF NOT EXISTS tessera;
CREATE TABLE IF NOT EXISTS tessera.twopc_decisions (
    gid text PRIMARY KEY,
    decision text NOT NULL CHECK (decision IN ('commit', 'abort')),
    decided_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS tessera.terms (
    term bigint NOT NULL,
    seq integer NOT NULL DEFAULT 0,
    leader text NOT NULL,
    agent text NOT NULL,
    policy text NOT NULL,
    ruleset bytea NOT NULL,
    established_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (term, seq)
);";

/// The last two rules entries a node's WAL holds (newest first): term, policy and the
/// protobuf-encoded ruleset (`tessera.tablet.Ruleset`). `seq` 0 is a term's establishment;
/// higher ones are rule changes the leader made within the term.
pub const LAST_TERMS: &str =
    "SELECT term, policy, ruleset FROM tessera.terms ORDER BY term DESC, seq DESC LIMIT 2";

/// Prefix of every two-phase-commit transaction id Tessera creates.
pub const TWOPC_GID_PREFIX: &str = "tessera:";
