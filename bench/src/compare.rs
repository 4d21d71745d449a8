//! `tessera-bench compare`: starts every target, loads the same data, runs the workload grid
//! interleaved (each cell runs every target once per round, in a rotating order), measures
//! idle-connection memory and the micro-benchmarks, and writes the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tessera_tablet::postgres::DEFAULT_BIN_DIR;

use crate::memory::{self, MemoryResult};
use crate::micro::{self, MicroResult};
use crate::pgbench::{self, Measurement, Run};
use crate::pgbouncer::{self, PoolMode};
use crate::report;
use crate::schema;
use crate::system::{self, Account, Machine};
use crate::targets::{Fleet, Kind, POOL_SIZE, Target};
use crate::workload::{self, Workload};

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Development mode: 16 clients only, shorter runs, fewer idle clients, no micro-benchmarks,
    /// and no report file unless --output is given.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of every cell (default 3).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seconds per pgbench run (default 4; 3 with --quick).
    #[arg(long)]
    pub duration_s: Option<u32>,
    /// Client counts, comma-separated (default 1,16,64; 16 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub clients: Option<Vec<u32>>,
    /// pgbench scale: 100,000 accounts per unit.
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// Report file (default docs/benchmarks.md; none with --quick). Only the generated part
    /// between its markers is replaced; hand-written analysis around it is kept.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Raw results as JSON (optional).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Idle client connections for the memory measurement (default 5000; 1000 with --quick).
    #[arg(long)]
    pub idle_clients: Option<usize>,
    /// Also run a 1-shard cluster with 2 tablets (synchronous replication) on the main grid.
    #[arg(long)]
    pub replicated: bool,
    /// Only these targets (labels: direct, pgbouncer, pgbouncer-session, tessera-1sh,
    /// tessera-2sh, tessera-1sh-2rep).
    #[arg(long, value_delimiter = ',')]
    pub targets: Option<Vec<String>>,
    /// Only these workloads (select-simple, select-extended, select-prepared, write-simple,
    /// scatter-count-simple, scatter-empty-simple).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Option<Vec<String>>,
    #[arg(long)]
    pub skip_memory: bool,
    #[arg(long)]
    pub skip_scatter: bool,
    #[arg(long)]
    pub skip_micro: bool,
    /// Where servers keep their data (default /tmp/tbench-<pid>); removed afterwards unless --keep.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[arg(long)]
    pub keep: bool,
    /// Directory holding PostgreSQL 15's initdb and postgres.
    #[arg(long, env = "TESSERA_PG_BIN_DIR", default_value = DEFAULT_BIN_DIR)]
    pub pg_bin_dir: PathBuf,
}

/// The settings a run actually used (defaults resolved).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub duration_s: u32,
    pub scatter_duration_s: u32,
    pub clients: Vec<u32>,
    pub scatter_clients: Vec<u32>,
    pub scale: u32,
    pub idle_clients: usize,
    pub command: String,
}

/// One pgbench run of the grid.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub workload: Workload,
    pub clients: u32,
    pub target: Kind,
    pub round: usize,
    pub measurement: Option<Measurement>,
    pub error: Option<String>,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub settings: Settings,
    pub machine: Machine,
    pub targets: Vec<Target>,
    pub records: Vec<Record>,
    pub memory: Vec<MemoryResult>,
    pub micro: Option<MicroResult>,
    pub micro_error: Option<String>,
    pub load_average_start: f64,
    pub load_average_end: f64,
    pub started_at: String,
    pub elapsed_s: f64,
}

impl CompareArgs {
    fn settings(&self) -> Settings {
        let quick = self.quick;
        Settings {
            quick,
            rounds: self.rounds.unwrap_or(3).max(1),
            duration_s: self.duration_s.unwrap_or(if quick { 3 } else { 4 }).max(1),
            scatter_duration_s: self.duration_s.unwrap_or(3).clamp(1, 3),
            clients: self
                .clients
                .clone()
                .unwrap_or_else(|| if quick { vec![16] } else { vec![1, 16, 64] }),
            scatter_clients: if quick { vec![16] } else { vec![1, 16] },
            scale: self.scale.max(1),
            idle_clients: self.idle_clients.unwrap_or(if quick { 1000 } else { 5000 }),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }

    fn wants_target(&self, kind: Kind) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| *n == kind.label()))
    }

    fn wants_workload(&self, workload: Workload) -> bool {
        self.workloads
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| *n == workload.name()))
    }

    fn output(&self) -> Option<PathBuf> {
        match (&self.output, self.quick) {
            (Some(path), _) => Some(path.clone()),
            (None, true) => None,
            (None, false) => {
                Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md"))
            }
        }
    }
}

pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    let settings = args.settings();
    let started = Instant::now();
    let started_at = system::first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load_average_start = system::load_average();
    let open_files = system::raise_open_file_limit();
    if open_files < settings.idle_clients as u64 + 1000 && !args.skip_memory {
        eprintln!(
            "warning: open-file limit {open_files} is low for {} idle clients",
            settings.idle_clients
        );
    }
    let kinds = selected_kinds(&args);
    if kinds.iter().any(|k| matches!(k, Kind::PgBouncer { .. })) {
        pgbouncer::ensure_installed()?;
    }
    let machine = Machine::probe(&args.pg_bin_dir);
    let work_dir = system::create_work_dir(args.work_dir.as_deref())?;
    eprintln!("work dir: {}", work_dir.display());
    let mut fleet = Fleet::default();
    let outcome = measure_all(&args, &settings, &kinds, &work_dir, &mut fleet).await;
    let targets = fleet.targets.clone();
    fleet.stop().await;
    if args.keep {
        eprintln!("kept {}", work_dir.display());
    } else if let Err(error) = std::fs::remove_dir_all(&work_dir) {
        eprintln!("warning: cannot remove {}: {error}", work_dir.display());
    }
    let (records, memory) = outcome?;
    let (micro, micro_error) = if args.skip_micro || args.quick {
        (None, None)
    } else {
        eprintln!("micro-benchmarks: cargo bench -p tessera-gate --bench sql_route");
        match micro::run(false) {
            Ok(result) => (Some(result), None),
            Err(error) => (None, Some(format!("{error:#}"))),
        }
    };
    let results = Results {
        settings,
        machine,
        targets,
        records,
        memory,
        micro,
        micro_error,
        load_average_start,
        load_average_end: system::load_average(),
        started_at,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let markdown = report::render(&results);
    println!("{markdown}");
    if let Some(path) = args.output() {
        report::write_into(&path, &markdown)?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(())
}

/// `tessera-bench serve`: starts the selected targets with their data, prints how to reach
/// each one, and keeps them running until Ctrl-C: for profiling a target under a manual
/// pgbench.
pub async fn serve(args: CompareArgs) -> anyhow::Result<()> {
    let settings = args.settings();
    system::raise_open_file_limit();
    let kinds = selected_kinds(&args);
    if kinds.iter().any(|k| matches!(k, Kind::PgBouncer { .. })) {
        pgbouncer::ensure_installed()?;
    }
    let work_dir = system::create_work_dir(args.work_dir.as_deref())?;
    let mut fleet = Fleet::default();
    let started = start(&args, &settings, &kinds, &work_dir, &mut fleet).await;
    if started.is_ok() {
        for target in &fleet.targets {
            println!(
                "{:<18} pid {:<8} {}",
                target.label(),
                target.pid,
                target.url()
            );
        }
        println!("serving until Ctrl-C (work dir {})", work_dir.display());
        let _ = tokio::signal::ctrl_c().await;
    }
    fleet.stop().await;
    if !args.keep {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    started
}

fn selected_kinds(args: &CompareArgs) -> Vec<Kind> {
    let mut kinds = vec![
        Kind::Direct,
        Kind::PgBouncer { session: false },
        Kind::PgBouncer { session: true },
        Kind::Tessera {
            shards: 1,
            replicas: 1,
        },
        Kind::Tessera {
            shards: 2,
            replicas: 1,
        },
    ];
    if args.replicated {
        kinds.push(Kind::Tessera {
            shards: 1,
            replicas: 2,
        });
    }
    kinds.retain(|kind| args.wants_target(*kind));
    kinds
}

async fn start(
    args: &CompareArgs,
    settings: &Settings,
    kinds: &[Kind],
    work_dir: &Path,
    fleet: &mut Fleet,
) -> anyhow::Result<()> {
    let account = Account::unprivileged()?;
    let needs_direct = kinds
        .iter()
        .any(|k| matches!(k, Kind::Direct | Kind::PgBouncer { .. }));
    if needs_direct {
        eprintln!("starting direct PostgreSQL");
        let direct = fleet.start_direct(work_dir, &args.pg_bin_dir).await?;
        schema::load(&direct, settings.scale).await?;
    }
    for kind in kinds {
        match *kind {
            Kind::Direct => {}
            Kind::PgBouncer { session } => {
                eprintln!("starting {}", kind.label());
                // A session holds its server connection for its whole life, so session mode
                // serves N concurrent clients only with N server connections: with fewer,
                // the rest wait until query_wait_timeout (120 s) and pgbench aborts.
                let (mode, pool_size) = if session {
                    let most_clients = settings.clients.iter().copied().max().unwrap_or(16);
                    (PoolMode::Session, POOL_SIZE.max(most_clients as usize))
                } else {
                    (PoolMode::Transaction, POOL_SIZE)
                };
                fleet
                    .start_pgbouncer(
                        work_dir,
                        mode,
                        pool_size,
                        settings.idle_clients + 1000,
                        account.as_ref(),
                    )
                    .await?;
            }
            Kind::Tessera { shards, replicas } => {
                eprintln!(
                    "starting {} (local cluster in a child process)",
                    kind.label()
                );
                let target = fleet.start_tessera(work_dir, shards, replicas).await?;
                schema::load(&target, settings.scale)
                    .await
                    .with_context(|| format!("loading {}", kind.label()))?;
            }
        }
    }
    // The direct target is only measured if asked for (it may be running for PgBouncer).
    fleet.targets.retain(|t| kinds.contains(&t.kind));
    Ok(())
}

async fn measure_all(
    args: &CompareArgs,
    settings: &Settings,
    kinds: &[Kind],
    work_dir: &Path,
    fleet: &mut Fleet,
) -> anyhow::Result<(Vec<Record>, Vec<MemoryResult>)> {
    start(args, settings, kinds, work_dir, fleet).await?;
    let scratch = work_dir.join("pgbench");
    std::fs::create_dir_all(&scratch)?;
    let targets = fleet.targets.clone();
    let main: Vec<Workload> = workload::MAIN
        .into_iter()
        .filter(|w| args.wants_workload(*w))
        .collect();
    let scatter: Vec<Workload> = if args.skip_scatter {
        Vec::new()
    } else {
        workload::SCATTER
            .into_iter()
            .filter(|w| args.wants_workload(*w))
            .collect()
    };
    let main_cells = cells(&main, &settings.clients, &targets);
    let scatter_cells = cells(&scatter, &settings.scatter_clients, &targets);
    let planned_s = (main_cells.len() * settings.rounds) as f64
        * (settings.duration_s as f64 + 0.6)
        + (scatter_cells.len() * settings.rounds) as f64
            * (settings.scatter_duration_s as f64 + 0.6);
    eprintln!(
        "running {} pgbench runs ({} rounds), about {:.0} s",
        (main_cells.len() + scatter_cells.len()) * settings.rounds,
        settings.rounds,
        planned_s
    );
    // Warm-up: caches, plan caches and pools of every target, not recorded.
    for workload in &main {
        for target in targets.iter().filter(|t| workload.applies_to(t.kind)) {
            let run = Run {
                workload: *workload,
                clients: 16,
                duration_s: 1,
                scale: settings.scale,
            };
            if let Err(error) = pgbench::run(target, &run, &scratch).await {
                eprintln!(
                    "warm-up {} on {}: {error:#}",
                    workload.name(),
                    target.label()
                );
            }
        }
    }
    let mut records = Vec::new();
    for round in 0..settings.rounds {
        for (cells, duration_s) in [
            (&main_cells, settings.duration_s),
            (&scatter_cells, settings.scatter_duration_s),
        ] {
            for cell in cells.iter() {
                // Rotate the order of the targets each round so none always runs first.
                let mut order = cell.targets.clone();
                let shift = round % order.len().max(1);
                order.rotate_left(shift);
                for target in order {
                    let run = Run {
                        workload: cell.workload,
                        clients: cell.clients,
                        duration_s,
                        scale: settings.scale,
                    };
                    let result = pgbench::run(&target, &run, &scratch).await;
                    report::progress(round, settings.rounds, &run, &target, &result);
                    records.push(Record {
                        workload: cell.workload,
                        clients: cell.clients,
                        target: target.kind,
                        round,
                        error: result.as_ref().err().map(|e| format!("{e:#}")),
                        measurement: result.ok(),
                    });
                }
            }
        }
    }
    let mut memory = Vec::new();
    if !args.skip_memory {
        memory = measure_memory(settings, &targets, work_dir, fleet).await;
    }
    Ok((records, memory))
}

/// Idle-connection memory of PgBouncer (transaction mode) and of a Tessera 1-shard gate.
///
/// Tessera is measured in a fresh cluster process of its own, holding only the (empty) tables:
/// the benchmark cluster's heap has already grown through the data load and the grid, so the
/// allocator would serve new sessions from memory freed earlier and the resident set would
/// hardly move (a dishonest 0 bytes per client). PgBouncer is measured as it is: its own slab
/// allocator's growth is visible either way.
async fn measure_memory(
    settings: &Settings,
    targets: &[Target],
    work_dir: &Path,
    fleet: &mut Fleet,
) -> Vec<MemoryResult> {
    let mut measured: Vec<Target> = targets
        .iter()
        .filter(|t| t.kind == Kind::PgBouncer { session: false })
        .cloned()
        .collect();
    let wants_tessera = targets.iter().any(|t| {
        t.kind
            == Kind::Tessera {
                shards: 1,
                replicas: 1,
            }
    });
    if wants_tessera {
        eprintln!("memory: starting a fresh tessera-1sh cluster process");
        let fresh = async {
            let target = fleet.start_tessera(&work_dir.join("memory"), 1, 1).await?;
            // Stopped with the fleet, but not one of the grid's targets.
            fleet.targets.retain(|t| t.pid != target.pid);
            schema::create_tables(&target).await?;
            anyhow::Ok(target)
        };
        match fresh.await {
            Ok(target) => measured.push(target),
            Err(error) => eprintln!("memory: cannot start a fresh Tessera cluster: {error:#}"),
        }
    }
    let mut memory = Vec::new();
    for target in &measured {
        eprintln!(
            "memory: {} idle clients on {}",
            settings.idle_clients,
            target.label()
        );
        match memory::measure(target, settings.idle_clients).await {
            Ok(result) => memory.push(result),
            Err(error) => eprintln!("memory measurement on {} failed: {error:#}", target.label()),
        }
    }
    memory
}

/// One cell of the grid: a workload at a client count, run on several targets.
struct Cell {
    workload: Workload,
    clients: u32,
    targets: Vec<Target>,
}

fn cells(workloads: &[Workload], clients: &[u32], targets: &[Target]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for workload in workloads {
        for &count in clients {
            let applicable: Vec<Target> = targets
                .iter()
                .filter(|t| workload.applies_to(t.kind))
                .cloned()
                .collect();
            if !applicable.is_empty() {
                cells.push(Cell {
                    workload: *workload,
                    clients: count,
                    targets: applicable,
                });
            }
        }
    }
    cells
}
