//! Tessera's benchmark harness.
//!
//! `tessera-bench compare` runs the same pgbench workloads, interleaved in one run on one
//! machine, against direct PostgreSQL, PgBouncer (transaction mode) in front of that same
//! server, and Tessera (gate -> tablet pool -> PostgreSQL) with 1 and 2 shards, then writes the
//! medians, spreads and Tessera/direct and Tessera/PgBouncer ratios to `docs/benchmarks.md`.
//! It also measures gate memory per idle client connection, scatter overhead and the
//! parse-cache effect (Criterion micro-benchmark of parse + route).
//!
//! Every target is a process of its own, so none of them shares a runtime or an allocator
//! with the harness: PostgreSQL and PgBouncer as usual, and Tessera as a child process of this
//! binary (the hidden `cluster` subcommand runs the same `LocalCluster` as `tessera up`).
//!
//! ```text
//!  compare ─┬─ pgbench ──▶ PostgreSQL (direct)
//!           ├─ pgbench ──▶ PgBouncer ──unix──▶ same PostgreSQL
//!           ├─ pgbench ──▶ [child: gate ──in-process tablet pool──unix──▶ PostgreSQL]  1 shard
//!           └─ pgbench ──▶ [child: gate ──▶ 2 tablets ──▶ 2 PostgreSQL]                2 shards
//! ```

pub mod child;
pub mod compare;
pub mod memory;
pub mod micro;
pub mod pgbench;
pub mod pgbouncer;
pub mod report;
pub mod schema;
pub mod stats;
pub mod system;
pub mod targets;
pub mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tessera-bench", about = "Tessera benchmark harness")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compare direct PostgreSQL, PgBouncer and Tessera with pgbench; write docs/benchmarks.md.
    Compare(compare::CompareArgs),
    /// Start the selected targets with data and keep them running until Ctrl-C (profiling).
    Serve(compare::CompareArgs),
    /// Internal: run a local Tessera cluster in this process until stdin closes.
    #[command(hide = true)]
    Cluster(child::ClusterArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("TESSERA_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Compare(args) => compare::run(args).await,
            Command::Serve(args) => compare::serve(args).await,
            Command::Cluster(args) => child::run(args).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
