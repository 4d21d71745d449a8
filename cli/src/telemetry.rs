//! Structured logs (`tracing`) and Prometheus metrics for every `tessera` command.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct TelemetryArgs {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TESSERA_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `tessera_gate=debug`.
    #[arg(long, global = true, default_value = "info", env = "TESSERA_LOG")]
    pub log: String,
}

/// Keeps telemetry alive for the process lifetime.
pub struct TelemetryGuard;

pub fn init(args: &TelemetryArgs) -> Result<TelemetryGuard, String> {
    let filter = EnvFilter::try_new(&args.log)
        .map_err(|e| format!("invalid --log filter {:?}: {e}", args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| format!("cannot initialise logging: {e}"))?;
    Ok(TelemetryGuard)
}

/// Serves Prometheus metrics at `http://<address>/metrics`.
pub fn serve_metrics(address: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .install()
        .map_err(|e| format!("cannot serve metrics on {address}: {e}"))
}
