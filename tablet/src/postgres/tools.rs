//! Running PostgreSQL's command-line tools (`initdb`, `pg_basebackup`, `pg_rewind`,
//! `pg_controldata`) as the server's account, and giving them a password safely.
//!
//! Passwords never appear on a command line (anyone can read `/proc/<pid>/cmdline`) or in the
//! environment (`/proc/<pid>/environ` is readable by the same user and ends up in core dumps):
//! tools that connect to a server get a libpq password file (`PGPASSFILE`), mode 0600, owned by
//! the account, which exists only while the tool runs.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tracing::{debug, warn};

use super::account::ServerAccount;
use super::conf_files;
use super::error::PostgresError;

/// How long a tool may take to open a connection (libpq's `PGCONNECT_TIMEOUT`, seconds).
const CONNECT_TIMEOUT_SECONDS: &str = "10";

/// What a tool run produced.
pub(crate) struct ToolOutput {
    /// Whether it exited with status 0 in time.
    pub success: bool,
    /// How it ended, for error messages ("exit code 1", "no result within 5000 ms").
    pub status: String,
    /// Its stdout followed by its stderr.
    pub text: String,
}

/// Runs `tool` from `bin_dir` as `account` with `args`, a clean environment (C locale, so the
/// output can be parsed) and, if given, the password file. Waits at most `timeout`, then kills
/// it. Fails only if the tool cannot be run at all.
pub(crate) async fn run(
    account: &ServerAccount,
    bin_dir: &Path,
    tool: &str,
    args: Vec<OsString>,
    password_file: Option<&PasswordFile>,
    timeout: Duration,
) -> Result<ToolOutput, PostgresError> {
    let binary = bin_dir.join(tool);
    let executable = std::fs::metadata(&binary)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0);
    if !executable {
        return Err(PostgresError::BinaryMissing { path: binary });
    }
    let mut command = tokio::process::Command::new(&binary);
    command
        .args(args)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECONDS)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(password_file) = password_file {
        command.env("PGPASSFILE", &password_file.path);
    }
    account.apply_tokio(&mut command);
    debug!(binary = %binary.display(), "running a PostgreSQL tool");
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Ok(output) => output.map_err(|source| PostgresError::Spawn {
            binary: binary.clone(),
            source,
        })?,
        Err(_) => {
            warn!(
                tool,
                timeout_ms = timeout.as_millis() as u64,
                "PostgreSQL tool timed out and was killed"
            );
            return Ok(ToolOutput {
                success: false,
                status: format!("no result within {} ms", timeout.as_millis()),
                text: String::new(),
            });
        }
    };
    Ok(ToolOutput {
        success: output.status.success(),
        status: super::exit_of(output.status).to_string(),
        text: format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

/// A libpq password file that is removed when dropped.
pub(crate) struct PasswordFile {
    path: PathBuf,
}

impl PasswordFile {
    /// Writes a password file at `path` that offers `password` for every host, port, database
    /// and user, readable only by `account` (libpq ignores group- or world-readable files).
    pub fn create(
        path: PathBuf,
        password: &str,
        account: &ServerAccount,
    ) -> Result<PasswordFile, PostgresError> {
        conf_files::write_atomically(&path, &password_file_contents(password), account)?;
        Ok(PasswordFile { path })
    }
}

/// A libpq password file offering `password` for every host, port, database and user.
pub(crate) fn password_file_contents(password: &str) -> String {
    format!("*:*:*:*:{}\n", escape_password_file_field(password))
}

impl Drop for PasswordFile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), %error, "could not remove a temporary password file");
        }
    }
}

/// libpq's password file separates fields with `:` and escapes with `\`.
fn escape_password_file_field(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

/// A libpq connection string from `(keyword, value)` pairs; every value is single-quoted with
/// `\` and `'` escaped, so any value is safe.
pub(crate) fn conninfo(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(keyword, value)| {
            format!(
                "{keyword}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: separators and escapes inside a password cannot split the password file's fields.
    #[test]
    fn password_file_fields_are_escaped() {
        assert_eq!(escape_password_file_field(r"a:b\c"), r"a\:b\\c");
        assert_eq!(escape_password_file_field("plain"), "plain");
    }

    /// Goal: quotes, backslashes and spaces in values stay inside their conninfo value.
    #[test]
    fn conninfo_values_are_quoted() {
        assert_eq!(
            conninfo(&[("host", "127.0.0.1"), ("password", r"it's a \ test")]),
            r"host='127.0.0.1' password='it\'s a \\ test'"
        );
    }
}
