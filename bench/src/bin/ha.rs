//! `ha`: high-availability benchmarks of one shard (three tablets in three zones, one
//! coordinator per zone, the gate; what `tessera up --shards 1` runs, in this process), under
//! a steady writer through the gate that records every acknowledgement:
//!
//! - unplanned failover: `kill -9` of the primary's postmaster until the first write
//!   acknowledged by the new primary, with the coordinator's steps timed from its logs;
//! - planned switchover: the longest gap between two acknowledged writes around
//!   `tessera_coordinator::operations::switchover`;
//! - commit latency under the default policy `at_least_n(2)` (one standby acknowledges each
//!   commit) against `at_least_n(1)` (no standby waits: asynchronous replication).
//!
//! The runs reuse one cluster: after each failover or switchover the shard settles (the old
//! primary rejoins) before the next run. Results go to stdout and to `--output` (markdown).
//!
//! ```text
//! cargo run --release -p tessera-bench --bin ha -- --runs 5
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use nix::sys::signal::Signal;
use tessera_bench::stats::Spread;
use tessera_bench::system::{Machine, load_average};
use tessera_tests::ha::{HaCluster, SETTLE_TIMEOUT, log_lines_containing, signal_postgres};
use tessera_tests::workload::{Workload, WorkloadOptions, create_table};

#[derive(Debug, Parser)]
#[command(
    name = "ha",
    about = "Failover, switchover and commit-latency benchmarks of one shard"
)]
struct Args {
    /// Failovers and switchovers measured (each).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds of writing per policy for the commit-latency comparison (split in two rounds).
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Markdown report.
    #[arg(long, default_value = "docs/benchmarks-ha.md")]
    output: PathBuf,
    /// Run PostgreSQL with fsync=off (what the tests do); the default keeps fsync on.
    #[arg(long)]
    no_fsync: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Table written by the benchmark writer.
const TABLE: &str = "ha_bench";
/// A write to a dead or fenced primary is abandoned after this (it would hang otherwise).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one failover or switchover before the run counts as failed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// One steady writer: no pause between writes, so gaps between acknowledgements are the
/// service's, not the client's.
fn writer_options() -> WorkloadOptions {
    WorkloadOptions {
        writers: 1,
        pause: Duration::ZERO,
        attempt_timeout: ATTEMPT_TIMEOUT,
        ..WorkloadOptions::new(TABLE)
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    tessera_tests::ha::capture_logs();
    let machine = Machine::probe(std::path::Path::new(
        tessera_tablet::postgres::DEFAULT_BIN_DIR,
    ));
    let load_before = load_average();
    let fsync = !args.no_fsync;
    eprintln!(
        "starting a 3-tablet shard (fsync {})",
        if fsync { "on" } else { "off" }
    );
    let cluster = HaCluster::start(|options| {
        if fsync {
            options.pg_settings.remove("fsync");
        }
    })
    .await;
    let gate = cluster.test.client().await;
    create_table(&gate, TABLE)
        .await
        .context("creating the benchmark table")?;
    let mut next_id = 1;

    let mut failovers = Vec::new();
    for run in 1..=args.runs {
        let measured = unplanned_failover(&cluster, &mut next_id)
            .await
            .with_context(|| format!("failover run {run}"))?;
        eprintln!("failover {run}: {measured}");
        failovers.push(measured);
    }
    let mut switchovers = Vec::new();
    for run in 1..=args.runs {
        let measured = planned_switchover(&cluster, &mut next_id)
            .await
            .with_context(|| format!("switchover run {run}"))?;
        eprintln!("switchover {run}: {measured}");
        switchovers.push(measured);
    }
    let half = Duration::from_secs(args.latency_seconds.max(2) / 2);
    let mut sync = Vec::new();
    let mut asynchronous = Vec::new();
    for _ in 0..2 {
        sync.extend(commit_latencies(&cluster, "at_least_n(2)", half, &mut next_id).await?);
        asynchronous.extend(commit_latencies(&cluster, "at_least_n(1)", half, &mut next_id).await?);
    }
    let load_after = load_average();
    cluster.stop().await;

    let report = Report {
        machine,
        fsync,
        load: (load_before, load_after),
        failovers,
        switchovers,
        latency: [
            ("at_least_n(2)", half * 2, sync),
            ("at_least_n(1)", half * 2, asynchronous),
        ],
    }
    .markdown();
    print!("{report}");
    std::fs::write(&args.output, &report)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

/// One unplanned failover, from the kill to the first write the new primary acknowledged.
struct Failover {
    from: String,
    to: String,
    total: Duration,
    /// Coordinator steps, from its logs: (step, time since the kill).
    steps: Vec<(&'static str, Option<Duration>)>,
    in_doubt: usize,
}

impl std::fmt::Display for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} in {:.2} s",
            self.from,
            self.to,
            self.total.as_secs_f64()
        )?;
        for (step, at) in &self.steps {
            match at {
                Some(at) => write!(f, ", {step} +{:.2} s", at.as_secs_f64())?,
                None => write!(f, ", {step} ?")?,
            }
        }
        Ok(())
    }
}

/// The log steps of a failover, each the first matching line at or after the kill.
const FAILOVER_STEPS: [(&str, &str); 5] = [
    ("detected", "problem detected"),
    ("recovering", "recovering"),
    ("decided", "leadership change: decided"),
    ("established", "term established"),
    ("serving", "serving as primary"),
];

async fn unplanned_failover(cluster: &HaCluster, next_id: &mut i64) -> anyhow::Result<Failover> {
    let before = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    let workload = start_writer(cluster, next_id);
    workload
        .wait_for_more(20, CHANGE_TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;
    let old = cluster.watch.tablet(&before.primary).await;
    let pid = old.status.as_ref().map_or(0, |s| s.postgres_pid);
    if pid == 0 {
        bail!("the primary {} reports no PostgreSQL pid", before.primary);
    }
    let killed_wall = SystemTime::now();
    let killed = Instant::now();
    signal_postgres(pid, Signal::SIGKILL);
    let (primary, term) = cluster
        .watch
        .wait_for_primary(before.term, CHANGE_TIMEOUT)
        .await;
    let new_port = cluster.tablet(&primary).config().postgres.port;
    workload
        .wait_for_more(10, CHANGE_TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;
    let history = workload.stop().await;
    let first = history
        .acknowledged()
        .filter(|a| a.port() == Some(new_port) && a.ended > killed)
        .map(|a| a.ended)
        .min()
        .context("no write acknowledged by the new primary")?;
    let since_kill = seconds_since_epoch(killed_wall);
    let steps = FAILOVER_STEPS
        .iter()
        .map(|(name, needle)| {
            let at = log_lines_containing(needle)
                .iter()
                .filter(|line| {
                    !needle.starts_with("term") || line.contains(&format!("term={term}"))
                })
                .filter_map(|line| log_time(line))
                .filter(|time| *time >= since_kill)
                .map(|time| time - since_kill)
                .reduce(f64::min)
                .map(Duration::from_secs_f64);
            (*name, at)
        })
        .collect();
    Ok(Failover {
        from: before.primary,
        to: primary,
        total: first.duration_since(killed),
        steps,
        in_doubt: history.in_doubt().count(),
    })
}

/// One planned switchover and the write pause it caused.
struct Switchover {
    from: String,
    to: String,
    /// Longest time without an acknowledged write, from the start of the switchover to the
    /// first acknowledgement after it returned.
    pause: Duration,
    /// How long the switchover call took (drain, recruit, promote, establish, delegate).
    call: Duration,
    client_errors: usize,
}

impl std::fmt::Display for Switchover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {}: pause {:.3} s, call {:.3} s, {} client errors",
            self.from,
            self.to,
            self.pause.as_secs_f64(),
            self.call.as_secs_f64(),
            self.client_errors
        )
    }
}

async fn planned_switchover(cluster: &HaCluster, next_id: &mut i64) -> anyhow::Result<Switchover> {
    let before = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    let workload = start_writer(cluster, next_id);
    workload
        .wait_for_more(20, CHANGE_TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let (outcome, call) = tessera_coordinator::operations::switchover(
        &cluster.test.cluster.topology,
        &cluster.watch.keyspace,
        &cluster.watch.shard,
        None,
        Duration::from_secs(2),
    )
    .await?;
    let returned = Instant::now();
    workload
        .wait_for_more(10, CHANGE_TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;
    let history = workload.stop().await;
    let resumed = history
        .first_acknowledged_after(returned)
        .map(|a| a.ended)
        .context("no write after the switchover")?;
    Ok(Switchover {
        from: before.primary,
        to: outcome.leader,
        pause: history.longest_gap(started, resumed),
        call,
        client_errors: history.client_errors().len(),
    })
}

/// Sets the shard's policy and waits until the primary runs it and the shard is settled.
async fn apply_policy(cluster: &HaCluster, policy: &str) -> anyhow::Result<()> {
    cluster
        .test
        .cluster
        .topology
        .update_shard(&cluster.watch.keyspace, &cluster.watch.shard, |record| {
            record.policy = policy.to_string();
            Ok::<(), tessera_topology::TopoError>(())
        })
        .await?;
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    loop {
        let settled = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
        let primary = cluster.watch.tablet(&settled.primary).await;
        if primary.status.as_ref().is_some_and(|s| s.policy == policy) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the primary does not run {policy} after {CHANGE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Commit latencies (seconds) of one steady writer under `policy` for `duration`.
async fn commit_latencies(
    cluster: &HaCluster,
    policy: &str,
    duration: Duration,
    next_id: &mut i64,
) -> anyhow::Result<Vec<f64>> {
    apply_policy(cluster, policy).await?;
    let workload = start_writer(cluster, next_id);
    tokio::time::sleep(duration).await;
    let history = workload.stop().await;
    let errors = history.client_errors();
    if !errors.is_empty() {
        bail!(
            "{} writes failed under {policy}: {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
    }
    Ok(history
        .acknowledged()
        .map(|a| a.ended.duration_since(a.started).as_secs_f64())
        .collect())
}

fn start_writer(cluster: &HaCluster, next_id: &mut i64) -> Workload {
    let first = *next_id;
    *next_id += 10_000_000;
    Workload::start(&cluster.test.url(), writer_options(), first)
}

fn seconds_since_epoch(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The UTC timestamp a captured log line starts with (`2026-11-22T18:53:01.813005Z ...`), in
/// seconds since the epoch.
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>());
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let mut time = time.split(':');
    let (hour, minute) = (
        time.next()?.parse::<f64>().ok()?,
        time.next()?.parse::<f64>().ok()?,
    );
    let second = time.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days as f64 * 86_400.0 + hour * 3_600.0 + minute * 60.0 + second)
}

/// Percentile `p` (0..=100) of sorted values, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(values: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    values
}

struct Report {
    machine: Machine,
    fsync: bool,
    load: (f64, f64),
    failovers: Vec<Failover>,
    switchovers: Vec<Switchover>,
    latency: [(&'static str, Duration, Vec<f64>); 2],
}

impl Report {
    fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "# HA benchmarks (issue 4)\n");
        let _ = writeln!(
            out,
            "Produced by `cargo run --release -p tessera-bench --bin ha -- --runs {}`{} at commit {}.\n",
            self.failovers.len(),
            if self.fsync { "" } else { " --no-fsync" },
            m.commit
        );
        let _ = writeln!(
            out,
            "Machine: {} ({} cores, {:.1} GiB), {}, {}; {}. PostgreSQL fsync {}. Load average {:.2} before, {:.2} after \
             (the machine is shared: other builds and tests ran meanwhile).\n",
            m.cpu,
            m.cores,
            m.memory_gib,
            m.os,
            m.kernel,
            m.postgres,
            if self.fsync { "on" } else { "off" },
            self.load.0,
            self.load.1
        );
        let _ = writeln!(
            out,
            "One shard, three tablets in three zones, one coordinator per zone (default settings: failover grace \
             800 ms, jitter up to 400 ms, status every 250 ms, probe timeout 1.5 s), the gate; all in one process. \
             One client writes through the gate without pausing and records every acknowledgement.\n"
        );

        let totals = sorted(self.failovers.iter().map(|f| f.total.as_secs_f64()));
        let _ = writeln!(
            out,
            "## Unplanned failover: kill -9 of the primary's PostgreSQL\n"
        );
        let _ = writeln!(
            out,
            "From `kill -9` of the primary's postmaster to the first write acknowledged by the new primary \
             ({} runs; target p50 < 3 s):\n",
            totals.len()
        );
        let _ = writeln!(out, "| p50 | p90 | max |\n|---|---|---|");
        let _ = writeln!(
            out,
            "| {:.2} s | {:.2} s | {:.2} s |\n",
            percentile(&totals, 50.0),
            percentile(&totals, 90.0),
            percentile(&totals, 100.0)
        );
        let _ = writeln!(
            out,
            "Where the time goes (median time after the kill at which each step was first logged):\n"
        );
        let _ = writeln!(
            out,
            "| step | log line | median | min | max |\n|---|---|---|---|---|"
        );
        for (index, (step, needle)) in FAILOVER_STEPS.iter().enumerate() {
            let times: Vec<f64> = self
                .failovers
                .iter()
                .filter_map(|f| f.steps.get(index).and_then(|(_, at)| *at))
                .map(|d| d.as_secs_f64())
                .collect();
            if let Some(spread) = Spread::of(&times) {
                let _ = writeln!(
                    out,
                    "| {step} | `{needle}` | {:.2} s | {:.2} s | {:.2} s |",
                    spread.median, spread.min, spread.max
                );
            }
        }
        let _ = writeln!(
            out,
            "| first write acknowledged | (client) | {:.2} s | {:.2} s | {:.2} s |\n",
            percentile(&totals, 50.0),
            totals[0],
            totals[totals.len() - 1]
        );
        let _ = writeln!(out, "Runs:\n");
        for (run, failover) in self.failovers.iter().enumerate() {
            let _ = writeln!(
                out,
                "- {}: {failover}; {} writes in doubt",
                run + 1,
                failover.in_doubt
            );
        }

        let pauses = sorted(self.switchovers.iter().map(|s| s.pause.as_secs_f64()));
        let calls = sorted(self.switchovers.iter().map(|s| s.call.as_secs_f64()));
        let errors: usize = self.switchovers.iter().map(|s| s.client_errors).sum();
        let _ = writeln!(out, "\n## Planned switchover\n");
        let _ = writeln!(
            out,
            "Longest time between two acknowledged writes from the start of `operations::switchover` to the first \
             acknowledgement after it returned ({} runs; target < 1 s). Client errors in all runs: {errors}.\n",
            pauses.len()
        );
        let _ = writeln!(out, "| | p50 | p90 | max |\n|---|---|---|---|");
        let _ = writeln!(
            out,
            "| write pause | {:.3} s | {:.3} s | {:.3} s |",
            percentile(&pauses, 50.0),
            percentile(&pauses, 90.0),
            percentile(&pauses, 100.0)
        );
        let _ = writeln!(
            out,
            "| switchover call | {:.3} s | {:.3} s | {:.3} s |\n",
            percentile(&calls, 50.0),
            percentile(&calls, 90.0),
            percentile(&calls, 100.0)
        );
        let _ = writeln!(out, "Runs:\n");
        for (run, switchover) in self.switchovers.iter().enumerate() {
            let _ = writeln!(out, "- {}: {switchover}", run + 1);
        }

        let _ = writeln!(
            out,
            "\n## Commit latency: synchronous vs asynchronous replication\n"
        );
        let _ = writeln!(
            out,
            "One writer, single-row INSERT through the gate, autocommit, two alternating rounds per policy. \
             `at_least_n(2)` (default) waits for one standby's flush; `at_least_n(1)` waits for none.\n"
        );
        let _ = writeln!(
            out,
            "| policy | commits | commits/s | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|"
        );
        for (policy, duration, latencies) in &self.latency {
            let values = sorted(latencies.iter().copied());
            let _ = writeln!(
                out,
                "| `{policy}` | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
                values.len(),
                values.len() as f64 / duration.as_secs_f64(),
                percentile(&values, 50.0) * 1e3,
                percentile(&values, 90.0) * 1e3,
                percentile(&values, 99.0) * 1e3,
                percentile(&values, 100.0) * 1e3
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_and_percentiles() {
        // Goal: a captured log line's UTC timestamp is read as epoch seconds (the epoch itself
        // is 0; a leap day and a new year are crossed correctly), and nearest-rank percentiles
        // pick members of the data.
        assert_eq!(
            log_time("1970-01-01T00:00:00.000000Z  INFO x: y"),
            Some(0.0)
        );
        let before = log_time("2024-02-28T23:59:59.250000Z  WARN a: b").expect("time");
        let after = log_time("2024-03-01T00:00:00.250000Z  WARN a: b").expect("time");
        assert!(
            (after - before - 86_401.0).abs() < 1e-6,
            "{}",
            after - before
        );
        let old_year = log_time("2025-12-31T23:59:59.000000Z  INFO x: y").expect("time");
        let new_year = log_time("2026-01-01T00:00:00.000000Z  INFO x: y").expect("time");
        assert!((new_year - old_year - 1.0).abs() < 1e-6);
        assert_eq!(log_time("not a log line"), None);
        let values = sorted([5.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!(
            (
                percentile(&values, 50.0),
                percentile(&values, 90.0),
                percentile(&values, 100.0)
            ),
            (3.0, 5.0, 5.0)
        );
    }
}
