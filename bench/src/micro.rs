//! The parse-cache micro-benchmarks: runs the gate's Criterion benchmark of parse + route (plan
//! cache miss vs hit) and its counting-allocator test, and reads their results.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use serde::Serialize;

/// One Criterion benchmark's estimate: [low, point, high] of the mean time per iteration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub name: String,
    pub low_ns: f64,
    pub point_ns: f64,
    pub high_ns: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MicroResult {
    pub command: String,
    pub estimates: Vec<Estimate>,
    /// Lines the counting-allocator tests print (`allocations: ...`).
    pub allocation_lines: Vec<String>,
    pub allocation_command: String,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `cargo bench -p tessera-gate --bench sql_route` and the allocation tests.
pub fn run(quick: bool) -> anyhow::Result<MicroResult> {
    let timing = if quick { ["1", "2"] } else { ["2", "5"] };
    let args = [
        "bench",
        "-p",
        "tessera-gate",
        "--bench",
        "sql_route",
        "--",
        "--warm-up-time",
        timing[0],
        "--measurement-time",
        timing[1],
    ];
    let output = Command::new(cargo())
        .args(args)
        .current_dir(workspace_root())
        .output()
        .context("running cargo bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "cargo bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let estimates = parse_criterion(&stdout);
    if estimates.is_empty() {
        bail!("no Criterion estimates in the output of cargo bench:\n{stdout}");
    }
    let allocation_args = [
        "test",
        "-p",
        "tessera-gate",
        "--test",
        "sql_plan_cache_alloc",
        "--",
        "--nocapture",
        "--test-threads",
        "1",
    ];
    let output = Command::new(cargo())
        .args(allocation_args)
        .current_dir(workspace_root())
        .output()
        .context("running the allocation tests")?;
    if !output.status.success() {
        bail!(
            "the allocation tests failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let allocation_lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        // With --nocapture a line may begin with the test's name (`test x ... allocations: ..`).
        .filter_map(|line| line.find("allocations:").map(|at| line[at..].to_string()))
        .collect();
    Ok(MicroResult {
        command: format!("cargo {}", args.join(" ")),
        estimates,
        allocation_lines,
        allocation_command: format!("cargo {}", allocation_args.join(" ")),
    })
}

/// Reads `name ... time: [low point high]` blocks from Criterion's output; the name is on the
/// line of `time:` or on the line before it.
pub fn parse_criterion(stdout: &str) -> Vec<Estimate> {
    let mut estimates = Vec::new();
    let mut previous = "";
    for line in stdout.lines() {
        if let Some((before, after)) = line.split_once("time:") {
            let name = if before.trim().is_empty() {
                previous.trim()
            } else {
                before.trim()
            };
            let inside = after.trim().trim_start_matches('[').trim_end_matches(']');
            let parts: Vec<&str> = inside.split_whitespace().collect();
            if parts.len() == 6
                && let (Some(low), Some(point), Some(high)) = (
                    to_ns(parts[0], parts[1]),
                    to_ns(parts[2], parts[3]),
                    to_ns(parts[4], parts[5]),
                )
            {
                estimates.push(Estimate {
                    name: name.to_string(),
                    low_ns: low,
                    point_ns: point,
                    high_ns: high,
                });
            }
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    estimates
}

fn to_ns(value: &str, unit: &str) -> Option<f64> {
    let value: f64 = value.parse().ok()?;
    let factor = match unit {
        "ps" => 1e-3,
        "ns" => 1.0,
        "µs" | "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    Some(value * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: both layouts Criterion uses (name above or beside `time:`) and all units are read.
    #[test]
    fn reads_criterion_estimates() {
        let stdout = "parse_and_route/miss: parse + plan + route (point select)\n\
                      \x20                       time:   [10.5 µs 10.6 µs 10.8 µs]\n\
                      Found 3 outliers\n\
                      parse_and_route/hit     time:   [51.2 ns 52.0 ns 53.1 ns]\n";
        let estimates = parse_criterion(stdout);
        assert_eq!(estimates.len(), 2);
        assert_eq!(
            estimates[0].name,
            "parse_and_route/miss: parse + plan + route (point select)"
        );
        assert!((estimates[0].point_ns - 10_600.0).abs() < 1e-6);
        assert_eq!(estimates[1].name, "parse_and_route/hit");
        assert!((estimates[1].low_ns - 51.2).abs() < 1e-9);
    }
}
