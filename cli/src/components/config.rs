//! Loading a component's configuration: defaults, then the TOML file, then environment and
//! flags, then validation — the same way for every runner.
//!
//! Why the file is merged over the defaults as a TOML tree rather than deserialized directly:
//! the embedded structs (`TabletConfig`, `PostgresConfig`) have required fields, so a partial
//! file (`[tablet]` with only `id`) would fail with "missing field". Merging first lets a file
//! say only what differs, while `deny_unknown_fields` still rejects every key the structs do
//! not know, because unknown keys survive the merge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_topology::TopoUrl;

/// One component's whole configuration (what `--config FILE` holds): the component's own
/// section plus the settings every runner process has (topology URL, metrics endpoint).
pub trait ComponentConfig: Serialize + DeserializeOwned {
    /// The subcommand name (`gate`, `tablet`, `coordinator`), used in messages.
    const COMPONENT: &'static str;

    /// Every default, in one place. Fallible only so that defaults owned by other crates can be
    /// obtained through their own serde defaults without an `unwrap`.
    fn defaults() -> Result<Self, ConfigError>;

    /// The topology URL (`topo`).
    fn topology_url(&mut self) -> &mut String;

    /// The Prometheus endpoint (`metrics_listen`); `None` = no endpoint.
    fn metrics_listen(&mut self) -> &mut Option<SocketAddr>;

    /// Checks the component's own settings without touching the network (the topology URL is
    /// checked by [`CommonArgs::resolve`]).
    fn validate(&self) -> Result<(), ConfigError>;
}

/// The default topology of the runners: a local etcd, as `deploy/local` runs it.
pub const DEFAULT_TOPOLOGY_URL: &str = "etcd://127.0.0.1:2379";

/// A configuration that cannot be loaded or cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is `source`; `{:#}` prints it after the path.
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}{location}: {message}")]
    Parse {
        path: PathBuf,
        /// `:line:column` when known, else empty.
        location: String,
        message: String,
    },
    #[error("invalid {component} configuration: {field}: {reason}")]
    Invalid {
        component: &'static str,
        field: String,
        reason: String,
    },
    #[error("cannot render the {component} configuration: {reason}")]
    Render {
        component: &'static str,
        reason: String,
    },
}

impl ConfigError {
    pub fn invalid(
        component: &'static str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            component,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An error of the embedded component config, whose `field` is relative to its section.
    pub fn in_section(
        component: &'static str,
        field: &str,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::invalid(component, format!("{component}.{field}"), reason)
    }
}

/// Flags every runner shares: the configuration file, the topology and the metrics endpoint.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// TOML configuration file; flags and environment variables override its values.
    #[arg(long, env = "TESSERA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// Load and validate the configuration (file, environment, flags), print one line and exit:
    /// 0 when valid, 1 with the reason otherwise. Does not contact the topology.
    #[arg(long)]
    pub check_config: bool,
    /// Topology URL (`topo`): etcd://host:port[,host:port...][/prefix], or grpc://host:port
    /// for the embedded store of a running `tessera up`.
    #[arg(long, env = "TESSERA_TOPO")]
    pub topo: Option<String>,
    /// Prometheus endpoint address (`metrics_listen`).
    #[arg(long, env = "TESSERA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl CommonArgs {
    /// Resolves the configuration: defaults, file, then these flags and `apply_overrides` (the
    /// runner's own flags), then validation. `None` means the command is done
    /// (`--print-default-config` or a successful `--check-config` already printed its answer).
    pub fn resolve<T: ComponentConfig>(
        &self,
        apply_overrides: impl FnOnce(&mut T),
    ) -> Result<Option<T>, ConfigError> {
        if self.print_default_config {
            print!("{}", render(&T::defaults()?)?);
            return Ok(None);
        }
        let mut config: T = load(self.config.as_deref())?;
        if let Some(topo) = &self.topo {
            *config.topology_url() = topo.clone();
        }
        if self.metrics_listen.is_some() {
            *config.metrics_listen() = self.metrics_listen;
        }
        apply_overrides(&mut config);
        validate_topology_url(T::COMPONENT, config.topology_url())?;
        config.validate()?;
        if self.check_config {
            let source = match &self.config {
                Some(path) => format!("{} with flags and environment", path.display()),
                None => "defaults with flags and environment".to_string(),
            };
            println!("ok: {} configuration is valid ({source})", T::COMPONENT);
            return Ok(None);
        }
        Ok(Some(config))
    }
}

/// The configuration as TOML, as `--print-default-config` shows it.
pub fn render<T: ComponentConfig>(config: &T) -> Result<String, ConfigError> {
    toml::to_string_pretty(config).map_err(|error| ConfigError::Render {
        component: T::COMPONENT,
        reason: error.to_string(),
    })
}

/// The defaults, with `file` (if any) merged over them.
pub fn load<T: ComponentConfig>(file: Option<&Path>) -> Result<T, ConfigError> {
    let defaults = T::defaults()?;
    let Some(path) = file else {
        return Ok(defaults);
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_over(defaults, path, &text)
}

/// Merges the TOML `text` (from `path`, for messages) over `defaults`.
pub fn parse_over<T: ComponentConfig>(
    defaults: T,
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let parse_error = |error: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        location: error
            .span()
            .map(|span| location_of(text, span.start))
            .unwrap_or_default(),
        message: one_line(error.message()),
    };
    let file: toml::Table = toml::from_str(text).map_err(parse_error)?;
    let mut merged = toml::Table::try_from(&defaults).map_err(|error| ConfigError::Render {
        component: T::COMPONENT,
        reason: error.to_string(),
    })?;
    merge(&mut merged, file);
    T::deserialize(toml::Value::Table(merged)).map_err(|error| {
        // Errors of the merged tree carry no position (the tree has no source text). Reading
        // the file alone usually stops at the same key (unknown field, wrong type) and knows
        // where it is; use its position when it reports the same problem.
        let location = match toml::from_str::<T>(text) {
            Err(direct) if direct.message() == error.message() => direct
                .span()
                .map(|span| location_of(text, span.start))
                .unwrap_or_default(),
            _ => String::new(),
        };
        ConfigError::Parse {
            path: path.to_path_buf(),
            location,
            message: one_line(error.message()),
        }
    })
}

/// Overlays `top` on `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(top_table)) => {
                merge(base_table, top_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `:line:column` (1-based) of a byte offset.
fn location_of(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(":{line}:{column}")
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks a topology URL for a component that runs as its own process.
pub fn validate_topology_url(component: &'static str, url: &str) -> Result<(), ConfigError> {
    match TopoUrl::parse(url) {
        Ok(TopoUrl::Memory) => Err(ConfigError::invalid(
            component,
            "topo",
            "`memory` lives inside one process and cannot be shared with other components; \
             use etcd://host:port/prefix (or grpc://host:port for the store of a running `tessera up`)",
        )),
        Ok(_) => Ok(()),
        Err(error) => Err(ConfigError::invalid(component, "topo", error.to_string())),
    }
}
