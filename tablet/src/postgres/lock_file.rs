//! `postmaster.pid`: who owns a data dir, and whether the server is ready.
//!
//! PostgreSQL writes the lock file at startup and keeps its last line updated with the postmaster
//! status (`starting`, `ready`, `standby`, `stopping`); `pg_ctl` reads the same file to decide
//! readiness, and so does Tessera, which avoids needing a connection (and a password) just to
//! poll.
//!
//! After a crash the file stays behind. PostgreSQL itself ignores a stale file whose pid is dead,
//! but a pid can be reused: on a machine running many PostgreSQL servers as the same user, the
//! recorded pid may now belong to another server's backend, and PostgreSQL would then refuse to
//! start ("lock file already exists"). Tessera decides ownership precisely instead: a data dir is
//! in use iff some live process has it as its working directory (the postmaster and every one of
//! its children `chdir` into the data dir). Only when no process does is the stale file removed;
//! while orphaned backends of a killed postmaster still run, the file stays, so PostgreSQL's own
//! shared-memory interlock keeps protecting the data.

use std::path::{Path, PathBuf};

/// Name of the lock file inside the data dir.
pub(crate) const LOCK_FILE_NAME: &str = "postmaster.pid";

/// The lines of `postmaster.pid` Tessera uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LockFile {
    /// Line 1: the postmaster's pid (absent if the file is empty or garbled).
    pub pid: Option<i32>,
    /// Line 8: the postmaster status, trimmed (absent until PostgreSQL writes it).
    pub status: Option<String>,
}

impl LockFile {
    /// Parses the file's text; never fails, since a crash may leave it truncated.
    pub fn parse(text: &str) -> LockFile {
        let lines: Vec<&str> = text.lines().collect();
        LockFile {
            pid: lines.first().and_then(|line| line.trim().parse().ok()),
            status: lines
                .get(7)
                .map(|line| line.trim().to_string())
                .filter(|status| !status.is_empty()),
        }
    }

    /// Whether the server accepts connections (`standby` is a hot standby that does).
    pub fn is_ready(&self) -> bool {
        matches!(self.status.as_deref(), Some("ready") | Some("standby"))
    }
}

/// Reads the data dir's lock file, `None` if there is none.
pub(crate) fn read(data_dir: &Path) -> std::io::Result<Option<LockFile>> {
    match std::fs::read_to_string(data_dir.join(LOCK_FILE_NAME)) {
        Ok(text) => Ok(Some(LockFile::parse(&text))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Pids of live processes whose working directory is `directory`. Processes whose `cwd` cannot
/// be read (other users' when Tessera is not root) are skipped: they cannot be our servers.
pub(crate) fn processes_in_directory(directory: &Path) -> Vec<i32> {
    let Ok(canonical) = std::fs::canonicalize(directory) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own_pid = std::process::id() as i32;
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own_pid)
        .filter(|pid| {
            std::fs::read_link(PathBuf::from(format!("/proc/{pid}/cwd")))
                .is_ok_and(|cwd| cwd == canonical)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the pid and padded status of a PostgreSQL 15 lock file are read; garbage is tolerated.
    #[test]
    fn parses_lock_file_lines() {
        let text =
            "4242\n/data\n1700000000\n5432\n/run\n127.0.0.1\n  5432001    131072\nready   \n";
        let lock = LockFile::parse(text);
        assert_eq!(lock.pid, Some(4242));
        assert_eq!(lock.status.as_deref(), Some("ready"));
        assert!(lock.is_ready());
        let starting = LockFile::parse("4242\n/data\n1\n5432\n/run\n*\n 1 2\nstarting\n");
        assert!(!starting.is_ready());
        assert_eq!(
            LockFile::parse(""),
            LockFile {
                pid: None,
                status: None
            }
        );
        assert_eq!(LockFile::parse("12ab\n").pid, None);
        assert!(!LockFile::parse("4242\n/data\n").is_ready());
    }

    /// Goal: a process working in a directory is found, and only there.
    #[test]
    fn finds_processes_by_working_directory() {
        let directory = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(directory.path())
            .spawn()
            .unwrap();
        let found = processes_in_directory(directory.path());
        let elsewhere = processes_in_directory(&directory.path().join("missing"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found, vec![child.id() as i32]);
        assert!(elsewhere.is_empty());
    }
}
