//! The Tessera-managed configuration file.
//!
//! Tessera never rewrites `postgresql.conf`: operators may edit it, and their edits must survive
//! restarts and upgrades of Tessera. Instead Tessera owns `tessera.conf` in the data dir, rewrites
//! it whole (atomically) whenever its settings change, and makes sure `postgresql.conf` ends with
//! `include_if_exists = 'tessera.conf'`. Because the include comes last, Tessera's values win for
//! the settings it manages; operators change those through the tablet's settings instead.
//! `ALTER SYSTEM` (postgresql.auto.conf) is read after both and still overrides everything.

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

/// Settings derived from [`PostgresConfig`] fields; extra settings may not override them, since
/// the tablet relies on them to reach its server.
const CONFIG_OWNED_SETTINGS: [&str; 3] = ["listen_addresses", "port", "unix_socket_directories"];

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
        text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    Ok(text)
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
