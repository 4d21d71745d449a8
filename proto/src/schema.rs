//! SQL objects Tessera keeps inside every shard's database, in the `tessera` schema.
//!
//! The tablet creates them when it becomes primary; the gate relies on them for two-phase
//! commit. They travel with the data through replication, which is the point: a decision
//! recorded here is exactly as durable as the shard's own writes.

/// Creates the `tessera` schema and its tables if missing (idempotent).
pub const CREATE_TESSERA_SCHEMA: &str = "\
CREATE SCHEMA IF NOT EXISTS tessera;
CREATE TABLE IF NOT EXISTS tessera.twopc_decisions (
    gid text PRIMARY KEY,
    decision text NOT NULL CHECK (decision IN ('commit', 'abort')),
    decided_at timestamptz NOT NULL DEFAULT now()
);";

/// Prefix of every two-phase-commit transaction id Tessera creates.
pub const TWOPC_GID_PREFIX: &str = "tessera:";
