//! The pgbench workloads: what each one runs and which targets it applies to.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::targets::Kind;

/// pgbench's `-M` query mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    Simple,
    Extended,
    Prepared,
}

impl Protocol {
    pub fn flag(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
            Protocol::Prepared => "prepared",
        }
    }
}

/// What one pgbench transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Script {
    /// pgbench's built-in `-S`: `SELECT abalance FROM pgbench_accounts WHERE aid = :aid`.
    SelectOnly,
    /// Single-row UPDATE and INSERT by sharding key (two autocommit statements).
    Write,
    /// `SELECT count(*) FROM pgbench_accounts`: every shard scans its part, the gate sums.
    ScatterCount,
    /// A count that every shard answers from an empty index range: the fan-out cost alone.
    ScatterEmpty,
}

impl Script {
    /// Custom script text, or `None` for a built-in script.
    fn text(self) -> Option<&'static str> {
        match self {
            Script::SelectOnly => None,
            Script::Write => Some(
                "\\set aid random(1, 100000 * :scale)\n\
                 \\set delta random(-5000, 5000)\n\
                 UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\
                 INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);\n",
            ),
            Script::ScatterCount => Some("SELECT count(*) FROM pgbench_accounts;\n"),
            Script::ScatterEmpty => Some("SELECT count(*) FROM pgbench_accounts WHERE aid < 0;\n"),
        }
    }

    /// pgbench arguments selecting this script (writes custom scripts under `dir` as needed).
    pub fn args(self, dir: &Path, scale: u32) -> std::io::Result<Vec<String>> {
        match self.text() {
            None => Ok(vec!["-S".into()]),
            Some(text) => {
                let path: PathBuf = dir.join(format!("{self:?}.sql").to_lowercase());
                if !path.exists() {
                    std::fs::write(&path, text)?;
                }
                // Custom scripts do not read the scale from pgbench_branches.
                Ok(vec![
                    "-f".into(),
                    path.display().to_string(),
                    "-s".into(),
                    scale.to_string(),
                ])
            }
        }
    }
}

/// A script run with a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub script: Script,
    pub protocol: Protocol,
}

impl Workload {
    pub const fn new(script: Script, protocol: Protocol) -> Workload {
        Workload { script, protocol }
    }

    pub fn name(self) -> String {
        let script = match self.script {
            Script::SelectOnly => "select",
            Script::Write => "write",
            Script::ScatterCount => "scatter-count",
            Script::ScatterEmpty => "scatter-empty",
        };
        format!("{script}-{}", self.protocol.flag())
    }

    pub fn title(self) -> String {
        match self.script {
            Script::SelectOnly => format!("Point select (pgbench -S -M {})", self.protocol.flag()),
            Script::Write => format!(
                "Write-heavy: single-row UPDATE + INSERT by sharding key (custom script, -M {})",
                self.protocol.flag()
            ),
            Script::ScatterCount => "Scatter: SELECT count(*) FROM pgbench_accounts".into(),
            Script::ScatterEmpty => {
                "Scatter, fan-out only: SELECT count(*) FROM pgbench_accounts WHERE aid < 0".into()
            }
        }
    }

    /// Whether this workload runs against `kind`. PgBouncer in transaction mode cannot keep
    /// named prepared statements (1.18 has no `max_prepared_statements`), so `-M prepared` goes
    /// to a session-mode PgBouncer instead; that instance runs nothing else.
    pub fn applies_to(self, kind: Kind) -> bool {
        match kind {
            Kind::PgBouncer { session } => match self.script {
                Script::ScatterCount | Script::ScatterEmpty => false,
                _ => session == (self.protocol == Protocol::Prepared),
            },
            _ => true,
        }
    }
}

/// The main grid: point selects in the three protocols and the write script.
pub const MAIN: [Workload; 4] = [
    Workload::new(Script::SelectOnly, Protocol::Simple),
    Workload::new(Script::SelectOnly, Protocol::Extended),
    Workload::new(Script::SelectOnly, Protocol::Prepared),
    Workload::new(Script::Write, Protocol::Simple),
];

/// Scatter overhead (2 shards vs 1 shard vs direct).
pub const SCATTER: [Workload; 2] = [
    Workload::new(Script::ScatterCount, Protocol::Simple),
    Workload::new(Script::ScatterEmpty, Protocol::Simple),
];
