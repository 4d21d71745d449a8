//! Running pgbench and reading its results: TPS and average latency from its summary, p99
//! latency from its per-transaction log.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::child::DATABASE;
use crate::targets::{PASSWORD, Target, USER};
use crate::workload::Workload;

/// One pgbench invocation.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub workload: Workload,
    pub clients: u32,
    pub duration_s: u32,
    pub scale: u32,
}

/// What one pgbench run measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Measurement {
    pub tps: f64,
    pub latency_avg_ms: f64,
    pub latency_p99_ms: f64,
    pub transactions: u64,
}

/// Runs pgbench against `target`; `scratch` receives scripts and transaction logs.
pub async fn run(target: &Target, run: &Run, scratch: &Path) -> anyhow::Result<Measurement> {
    let logs = scratch.join("logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs)?;
    }
    std::fs::create_dir_all(&logs)?;
    // One pgbench thread per core at most: pgbench shares the machine with the target.
    let threads = run.clients.min(crate::system::cores());
    let mut command = tokio::process::Command::new("pgbench");
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &target.port.to_string(),
            "-U",
            USER,
        ])
        .args(["-n", "-T", &run.duration_s.to_string()])
        .args(["-c", &run.clients.to_string(), "-j", &threads.to_string()])
        .args(["-M", run.workload.protocol.flag()])
        .args(run.workload.script.args(scratch, run.scale)?)
        .arg("-l")
        .arg(format!("--log-prefix={}", logs.join("tx").display()))
        .arg(DATABASE)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = command
        .output()
        .await
        .context("running pgbench (is it installed?)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}): {}",
            output.status,
            last_lines(&stderr, 3)
        );
    }
    let summary =
        Summary::parse(&stdout).with_context(|| format!("unreadable pgbench output:\n{stdout}"))?;
    if summary.failed > 0 {
        bail!(
            "{} transactions failed: {}",
            summary.failed,
            last_lines(&stderr, 3)
        );
    }
    let mut latencies_us = read_latencies(&logs)?;
    if latencies_us.is_empty() {
        bail!("pgbench logged no transactions");
    }
    let p99 = percentile(&mut latencies_us, 0.99);
    Ok(Measurement {
        tps: summary.tps,
        latency_avg_ms: summary.latency_avg_ms,
        latency_p99_ms: p99 as f64 / 1000.0,
        transactions: summary.processed,
    })
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
}

/// The figures pgbench prints at the end of a run.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub tps: f64,
    pub latency_avg_ms: f64,
    pub processed: u64,
    pub failed: u64,
}

impl Summary {
    pub fn parse(stdout: &str) -> Option<Summary> {
        let mut summary = Summary::default();
        let mut saw_tps = false;
        for line in stdout.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("tps = ") {
                summary.tps = rest.split_whitespace().next()?.parse().ok()?;
                saw_tps = true;
            } else if let Some(rest) = line.strip_prefix("latency average = ") {
                summary.latency_avg_ms = rest.split_whitespace().next()?.parse().ok()?;
            } else if let Some(rest) =
                line.strip_prefix("number of transactions actually processed: ")
            {
                summary.processed = rest.split(['/', ' ']).next()?.parse().ok()?;
            } else if let Some(rest) = line.strip_prefix("number of failed transactions: ") {
                summary.failed = rest.split_whitespace().next()?.parse().ok()?;
            }
        }
        saw_tps.then_some(summary)
    }
}

/// Latencies (µs) of every logged transaction. Log lines are
/// `client_id transaction_no time script_no time_epoch time_us`; failed transactions carry a
/// word instead of a time and are skipped.
fn read_latencies(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        latencies.extend(
            text.lines()
                .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    Ok(latencies)
}

/// The `fraction` quantile (nearest rank) of `values`, reordering them.
pub fn percentile(values: &mut [u64], fraction: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = ((values.len() as f64 * fraction).ceil() as usize).clamp(1, values.len()) - 1;
    *values.select_nth_unstable(rank).1
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the summary parser reads the figures of a real PostgreSQL 15 pgbench run.
    #[test]
    fn parses_pgbench_15_summary() {
        let stdout = "pgbench (15.18 (Debian 15.18-0+deb12u1))\n\
            transaction type: <builtin: select only>\n\
            scaling factor: 1\n\
            query mode: prepared\n\
            number of clients: 16\n\
            number of threads: 2\n\
            maximum number of tries: 1\n\
            duration: 5 s\n\
            number of transactions actually processed: 104521\n\
            number of failed transactions: 0 (0.000%)\n\
            latency average = 0.764 ms\n\
            initial connection time = 41.352 ms\n\
            tps = 20941.570744 (without initial connection time)\n";
        let summary = Summary::parse(stdout).expect("parses");
        assert_eq!(summary.processed, 104_521);
        assert_eq!(summary.failed, 0);
        assert!((summary.tps - 20_941.570_744).abs() < 1e-6);
        assert!((summary.latency_avg_ms - 0.764).abs() < 1e-9);
        assert_eq!(Summary::parse("pgbench: error: connection refused\n"), None);
    }

    // Goal: nearest-rank percentiles pick an observed value at the right rank.
    #[test]
    fn nearest_rank_percentile() {
        let mut values: Vec<u64> = (1..=1000).rev().collect();
        assert_eq!(percentile(&mut values, 0.99), 990);
        assert_eq!(percentile(&mut values, 0.5), 500);
        assert_eq!(percentile(&mut [7], 0.99), 7);
        assert_eq!(percentile(&mut [], 0.99), 0);
    }
}
