//! The `tessera` command: `up` runs a local cluster; `gate`, `tablet` and `coordinator` run one
//! component each as its own process; admin verbs inspect and change a running cluster. Each
//! command is a module with its own arguments and a `run` function.

pub mod admin;
pub mod components;
pub mod ha;
pub mod layout;
pub mod status;
pub mod telemetry;
pub mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Sharded, highly available PostgreSQL"
)]
pub struct Cli {
    #[command(flatten)]
    pub telemetry: telemetry::TelemetryArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a complete local cluster in the foreground until Ctrl-C.
    Up(up::UpArgs),
    /// Show keyspaces, shards, tablets and policies of a running cluster.
    Status(status::StatusArgs),
    /// Run one gate (PostgreSQL clients connect here) as its own process.
    Gate(components::gate::GateArgs),
    /// Run one tablet (a PostgreSQL server with its pooler) as its own process; `tablet list`
    /// lists registered tablets.
    Tablet(Box<components::tablet::TabletCommandArgs>),
    /// Run the coordinator (failover agent) of one zone as its own process.
    Coordinator(components::coordinator::CoordinatorArgs),
    /// Create and list keyspaces.
    Keyspace(admin::keyspace::KeyspaceArgs),
    /// List the shards of a keyspace.
    Shard(admin::shard::ShardArgs),
    /// Planned primary change for a shard: drains the primary, loses nothing.
    Switchover(ha::SwitchoverArgs),
    /// Emergency primary change for a shard, now.
    Failover(ha::FailoverArgs),
    /// Durability policy of a shard.
    Policy(ha::PolicyArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _guard = match telemetry::init(&cli.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
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
            Command::Up(args) => up::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Gate(args) => components::gate::run(args).await,
            Command::Tablet(args) => components::tablet::command(*args).await,
            Command::Coordinator(args) => components::coordinator::run(args).await,
            Command::Keyspace(args) => admin::keyspace::run(args).await,
            Command::Shard(args) => admin::shard::run(args).await,
            Command::Switchover(args) => ha::switchover(args).await,
            Command::Failover(args) => ha::failover(args).await,
            Command::Policy(args) => ha::policy(args).await,
        }
    });
    // Background tasks (status streams, watches) must not delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, whatever the causes' messages contain: scripts and log scrapers read
            // the first line of stderr.
            let message = format!("{error:#}");
            eprintln!(
                "error: {}",
                message.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            ExitCode::FAILURE
        }
    }
}
