//! The Tessera-managed configuration file.
//!
//! Tessera never rewrites `postgresql.conf`: operators may edit it, and their edits must survive
//! restarts and upgrades of Tessera. Instead Tessera owns `tessera.conf` in the data dir, rewrites
//! it whole (atomically) whenever its settings change, and makes sure `postgresql.conf` ends with
//! `include_if_exists = 'tessera.conf'`. Because the include comes last, Tessera's values win for
//! the settings it manages; operators change those through the tablet's settings instead.
//! `ALTER SYSTEM` (postgresql.auto.conf) is read after both and still overrides everything.
//!
//! The replication role settings (`primary_conninfo`, `synchronous_standby_names`) live in a
//! second file, `tessera-replication.conf`, included at the end of `tessera.conf`. They change
//! at runtime (failover, repointing, durability policy) rather than with the tablet's
//! configuration, so they must survive a tablet restart on their own: `tessera.conf` is
//! rewritten from the configuration at every start, the replication file only by the
//! replication operations. `pg_basebackup` and `pg_rewind` copy both files from their source;
//! Tessera replaces the copies with this server's own right afterwards.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::account::ServerAccount;
use super::config::PostgresConfig;
use super::error::PostgresError;

/// Name of the managed file, relative to the data dir.
pub(crate) const MANAGED_FILE_NAME: &str = "tessera.conf";

/// The line appended to `postgresql.conf`. A relative include is resolved against the directory
/// of the including file, i.e. the data dir.
pub(crate) const INCLUDE_LINE: &str = "include_if_exists = 'tessera.conf'";

/// Name of the replication settings file, relative to the data dir.
pub(crate) const REPLICATION_FILE_NAME: &str = "tessera-replication.conf";

/// Settings derived from [`PostgresConfig`] fields; extra settings may not override them, since
/// the tablet relies on them to reach its server.
const CONFIG_OWNED_SETTINGS: [&str; 3] = ["listen_addresses", "port", "unix_socket_directories"];

/// Settings owned by the replication operations (the replication file); extra settings would
/// be silently overridden by that file, so they are refused.
const REPLICATION_OWNED_SETTINGS: [&str; 2] = ["primary_conninfo", "synchronous_standby_names"];

/// Tessera's defaults, chosen for the later replication and 2PC work and for several servers
/// sharing one machine.
fn default_settings() -> BTreeMap<String, String> {
    [
        // Logical for resharding (publications with row filters); includes replica level.
        ("wal_level", "logical"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("hot_standby", "on"),
        // pg_rewind of a diverged old primary needs hint bits WAL-logged (checksums do too).
        ("wal_log_hints", "on"),
        // Without replication slots, a standby that stopped following (recruitment) or fell
        // behind needs the primary to keep recent WAL; pg_rewind needs the WAL back to the
        // last common checkpoint. WAL is only kept as it is generated.
        ("wal_keep_size", "512MB"),
        ("max_connections", "100"),
        // Two-phase commit for multi-shard writes: one slot per possible connection.
        ("max_prepared_transactions", "100"),
        // Durability is Tessera's contract; users may never weaken it (the gate enforces that).
        ("synchronous_commit", "on"),
        // Several servers share one machine in the local cluster.
        ("shared_buffers", "32MB"),
        ("password_encryption", "scram-sha-256"),
        // Tessera captures stderr into the tablet's log file.
        ("logging_collector", "off"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect()
}

/// Checks names and values of extra settings before anything is written.
pub(crate) fn validate_extra_settings(
    settings: &BTreeMap<String, String>,
) -> Result<(), PostgresError> {
    for (name, value) in settings {
        let invalid = |reason: &str| {
            Err(PostgresError::InvalidSetting {
                name: name.clone(),
                reason: reason.to_string(),
            })
        };
        if name.is_empty()
            || !name.chars().all(|character| {
                character.is_ascii_alphanumeric() || matches!(character, '_' | '.')
            })
        {
            return invalid("setting names contain only letters, digits, '_' and '.'");
        }
        if CONFIG_OWNED_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
            return invalid(
                "set by the PostgreSQL config fields (listen address, port, socket dir), not by extra settings",
            );
        }
        if REPLICATION_OWNED_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
            return invalid(
                "managed by the replication operations (follow, stop_following, set_synchronous_standby_names), not by extra settings",
            );
        }
        if value.contains(['\n', '\r', '\0']) {
            return invalid("values cannot contain line breaks or NUL");
        }
    }
    Ok(())
}

/// Contents of `tessera.conf` for `config` with `extra` settings overriding the defaults.
pub(crate) fn render(
    config: &PostgresConfig,
    extra: &BTreeMap<String, String>,
) -> Result<String, PostgresError> {
    validate_extra_settings(extra)?;
    let mut settings = default_settings();
    settings.insert("listen_addresses".into(), config.listen_address.clone());
    settings.insert("port".into(), config.port.to_string());
    settings.insert(
        "unix_socket_directories".into(),
        config.socket_dir.display().to_string(),
    );
    for (name, value) in extra {
        settings.insert(name.clone(), value.clone());
    }
    let mut text = String::from(
        "# Managed by Tessera: rewritten whenever the tablet's settings change; do not edit.\n\
         # Put your own settings in postgresql.conf (this file is included at its end).\n",
    );
    for (name, value) in &settings {
        text.push_str(&format!("{name} = {}\n", quote_value(value)));
    }
    text.push_str(&format!(
        "# Replication role settings, changed at runtime by the tablet (keep this line last).\n\
         include_if_exists = '{REPLICATION_FILE_NAME}'\n"
    ));
    Ok(text)
}

/// Quotes a value for a PostgreSQL configuration file: the parser turns `''` into `'` and
/// treats a backslash as an escape, so both are doubled.
fn quote_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// The replication role settings of one server, as stored in [`REPLICATION_FILE_NAME`].
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct ReplicationSettings {
    /// Where the WAL receiver streams from; empty: nowhere. Never contains a password
    /// (PostgreSQL logs changed values at reload): it names a password file.
    pub primary_conninfo: String,
    /// Standbys whose acknowledgement commits wait for; empty: none.
    pub synchronous_standby_names: String,
}

impl std::fmt::Debug for ReplicationSettings {
    /// Only whether the conninfo is set is shown: it is long and names files, and whoever
    /// writes one by hand might put a password in it.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReplicationSettings")
            .field("following", &!self.primary_conninfo.is_empty())
            .field("synchronous_standby_names", &self.synchronous_standby_names)
            .finish()
    }
}

/// Contents of the replication file. Both settings are always written, so the file alone
/// decides them whatever `postgresql.conf` says.
fn render_replication(settings: &ReplicationSettings) -> String {
    format!(
        "# Managed by Tessera: the replication role of this server; rewritten by the tablet, do not edit.\n\
         primary_conninfo = {}\n\
         synchronous_standby_names = {}\n",
        quote_value(&settings.primary_conninfo),
        quote_value(&settings.synchronous_standby_names)
    )
}

/// Reads back a file written by [`render_replication`]. Unknown lines are ignored, a missing
/// setting is empty.
fn parse_replication(text: &str) -> ReplicationSettings {
    let mut settings = ReplicationSettings::default();
    for line in text.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let Some(value) = unquote_value(value.trim()) else {
            continue;
        };
        match name.trim() {
            "primary_conninfo" => settings.primary_conninfo = value,
            "synchronous_standby_names" => settings.synchronous_standby_names = value,
            _ => {}
        }
    }
    settings
}

/// The inverse of [`quote_value`] (and of PostgreSQL's own escapes that Tessera never writes:
/// a backslash takes the next character literally). `None` if `quoted` is not one quoted value.
fn unquote_value(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('\'')?;
    let mut value = String::with_capacity(inner.len());
    let mut characters = inner.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => value.push(characters.next()?),
            '\'' => {
                let rest = characters.as_str();
                if rest.starts_with('\'') {
                    characters.next();
                    value.push('\'');
                } else {
                    return rest.trim().is_empty().then_some(value);
                }
            }
            other => value.push(other),
        }
    }
    None
}

/// The replication settings stored in `data_dir`; all empty if there is no file yet.
pub(crate) fn read_replication(data_dir: &Path) -> Result<ReplicationSettings, PostgresError> {
    let path = data_dir.join(REPLICATION_FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(parse_replication(&text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Ok(ReplicationSettings::default())
        }
        Err(error) => Err(PostgresError::io(
            format!("reading {}", path.display()),
            error,
        )),
    }
}

/// Writes the replication settings into `data_dir` atomically, mode 0600.
pub(crate) fn write_replication(
    data_dir: &Path,
    settings: &ReplicationSettings,
    account: &ServerAccount,
) -> Result<(), PostgresError> {
    for (name, value) in [
        ("primary_conninfo", &settings.primary_conninfo),
        (
            "synchronous_standby_names",
            &settings.synchronous_standby_names,
        ),
    ] {
        if value.contains(['\n', '\r', '\0']) {
            return Err(PostgresError::InvalidSetting {
                name: name.to_string(),
                reason: "values cannot contain line breaks or NUL".to_string(),
            });
        }
    }
    write_atomically(
        &data_dir.join(REPLICATION_FILE_NAME),
        &render_replication(settings),
        account,
    )
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename, fsync of the
/// directory), owned by `account`, mode 0600.
pub(crate) fn write_atomically(
    path: &Path,
    contents: &str,
    account: &ServerAccount,
) -> Result<(), PostgresError> {
    use std::os::unix::fs::OpenOptionsExt;
    let directory = path.parent().unwrap_or(Path::new("/"));
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = directory.join(format!(".{file_name}.tmp"));
    let context = |what: &str| format!("{what} {}", temporary.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|error| PostgresError::io(context("creating"), error))?;
    file.write_all(contents.as_bytes())
        .map_err(|error| PostgresError::io(context("writing"), error))?;
    file.sync_all()
        .map_err(|error| PostgresError::io(context("syncing"), error))?;
    drop(file);
    account.chown(&temporary)?;
    std::fs::rename(&temporary, path).map_err(|error| {
        PostgresError::io(
            format!("renaming {} to {}", temporary.display(), path.display()),
            error,
        )
    })?;
    sync_directory(directory)
}

/// fsyncs a directory so a rename or create in it survives a crash.
pub(crate) fn sync_directory(directory: &Path) -> Result<(), PostgresError> {
    std::fs::File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| {
            PostgresError::io(format!("syncing directory {}", directory.display()), error)
        })
}

/// Appends the include line to `postgresql.conf` unless an active include of the managed file is
/// already there. Returns whether the file changed.
pub(crate) fn ensure_include(postgresql_conf: &Path) -> Result<bool, PostgresError> {
    let text = std::fs::read_to_string(postgresql_conf).map_err(|error| {
        PostgresError::io(format!("reading {}", postgresql_conf.display()), error)
    })?;
    let included = text.lines().any(|line| {
        let line = line.trim_start();
        !line.starts_with('#') && line.starts_with("include") && line.contains(MANAGED_FILE_NAME)
    });
    if included {
        return Ok(false);
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(postgresql_conf)
        .map_err(|error| {
            PostgresError::io(format!("opening {}", postgresql_conf.display()), error)
        })?;
    let separator = if text.ends_with('\n') || text.is_empty() {
        ""
    } else {
        "\n"
    };
    write!(
        file,
        "{separator}\n# Added by Tessera: its managed settings (keep this line last).\n{INCLUDE_LINE}\n"
    )
    .and_then(|()| file.sync_all())
    .map_err(|error| PostgresError::io(format!("appending to {}", postgresql_conf.display()), error))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PostgresConfig {
        PostgresConfig::under(Path::new("/t/x"), 5433)
    }

    /// Goal: config fields and extra settings land in the file, extras override defaults, quotes
    /// are escaped.
    #[test]
    fn render_merges_defaults_config_and_extras() {
        let extra = BTreeMap::from([
            ("shared_buffers".to_string(), "16MB".to_string()),
            ("application_name".to_string(), "it's".to_string()),
        ]);
        let text = render(&config(), &extra).unwrap();
        assert!(text.contains("port = '5433'\n"));
        assert!(text.contains("unix_socket_directories = '/t/x/run'\n"));
        assert!(text.contains("wal_level = 'logical'\n"));
        assert!(text.contains("shared_buffers = '16MB'\n"));
        assert!(!text.contains("shared_buffers = '32MB'"));
        assert!(text.contains("application_name = 'it''s'\n"));
    }

    /// Goal: settings that would break the file or the tablet's access are refused.
    #[test]
    fn extra_settings_are_validated() {
        for (name, value) in [
            ("port", "1"),
            ("Listen_Addresses", "*"),
            ("bad name", "1"),
            ("", "1"),
            ("work_mem", "1\ninclude '/etc/passwd'"),
        ] {
            let extra = BTreeMap::from([(name.to_string(), value.to_string())]);
            assert!(
                matches!(
                    render(&config(), &extra),
                    Err(PostgresError::InvalidSetting { .. })
                ),
                "{name:?} = {value:?} was accepted"
            );
        }
    }

    /// Goal: values with quotes and backslashes survive the configuration file's escaping, and
    /// the replication file reads back exactly what was written.
    #[test]
    fn replication_settings_round_trip_through_the_file() {
        let settings = ReplicationSettings {
            primary_conninfo: r"host='127.0.0.1' password='it\'s a \\ pass'".to_string(),
            synchronous_standby_names: r#"ANY 1 ("zone1-101", "zone2-201")"#.to_string(),
        };
        let text = render_replication(&settings);
        assert!(text.contains(r"password=''it\\''s a \\\\ pass''"), "{text}");
        assert_eq!(parse_replication(&text), settings);
        assert_eq!(parse_replication(""), ReplicationSettings::default());
        assert_eq!(unquote_value("'unterminated"), None);
        assert_eq!(unquote_value("'a' trailing"), None);
        let debug = format!("{settings:?}");
        assert!(!debug.contains("pass"), "{debug}");
    }

    /// Goal: tessera.conf ends with the include of the replication file, and extra settings
    /// cannot set what that file owns.
    #[test]
    fn replication_file_is_included_last_and_owned() {
        let text = render(&config(), &BTreeMap::new()).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(
            last,
            format!("include_if_exists = '{REPLICATION_FILE_NAME}'")
        );
        for name in ["primary_conninfo", "Synchronous_Standby_Names"] {
            let extra = BTreeMap::from([(name.to_string(), String::new())]);
            assert!(matches!(
                render(&config(), &extra),
                Err(PostgresError::InvalidSetting { .. })
            ));
        }
    }

    /// Goal: the include line is appended once, and operator content is preserved.
    #[test]
    fn include_is_appended_once() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("postgresql.conf");
        std::fs::write(
            &path,
            "work_mem = '8MB'  # operator edit\n#include 'tessera.conf'",
        )
        .unwrap();
        assert!(ensure_include(&path).unwrap());
        assert!(!ensure_include(&path).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("work_mem = '8MB'  # operator edit\n#include 'tessera.conf'\n"));
        assert_eq!(text.matches(INCLUDE_LINE).count(), 1);
        assert!(text.ends_with(&format!("{INCLUDE_LINE}\n")));
    }
}
