//! The operating-system account that runs PostgreSQL.
//!
//! PostgreSQL refuses to run as root. Tessera does run as root on our machines and in CI, so it
//! then runs every PostgreSQL binary as an unprivileged account (default `postgres`), hands the
//! directories PostgreSQL writes to that account, and checks up front that the account can reach
//! them: a data dir under a 0700 directory (a tempdir, `/root`) would otherwise fail deep inside
//! initdb with a message that names neither the directory nor the fix.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{Gid, Uid, User};

use super::error::PostgresError;

/// Who PostgreSQL runs as.
#[derive(Debug, Clone)]
pub(crate) struct ServerAccount {
    /// Account name, for messages.
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// True when Tessera is root and switches to this account for every PostgreSQL binary.
    pub switch_user: bool,
}

impl ServerAccount {
    /// Resolves the account: `run_as_user` when Tessera is root, Tessera's own user otherwise.
    pub fn resolve(run_as_user: &str) -> Result<ServerAccount, PostgresError> {
        if !Uid::effective().is_root() {
            let uid = Uid::effective();
            let name = User::from_uid(uid)
                .ok()
                .flatten()
                .map_or_else(|| uid.to_string(), |user| user.name);
            return Ok(ServerAccount {
                name,
                uid,
                gid: Gid::effective(),
                switch_user: false,
            });
        }
        let user = User::from_name(run_as_user)
            .map_err(|errno| {
                PostgresError::io(
                    format!("looking up user {run_as_user}"),
                    std::io::Error::from(errno),
                )
            })?
            .ok_or_else(|| PostgresError::RunAsUserMissing {
                user: run_as_user.to_string(),
            })?;
        if user.uid.is_root() {
            return Err(PostgresError::RunAsUserIsRoot {
                user: run_as_user.to_string(),
            });
        }
        Ok(ServerAccount {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            switch_user: true,
        })
    }

    /// Makes a command run as this account (no-op when Tessera is not root). std drops the
    /// supplementary groups when it switches uid, so only the primary group applies.
    pub fn apply_std(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        if self.switch_user {
            command.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
    }

    /// [`ServerAccount::apply_std`] for a tokio command.
    pub fn apply_tokio(&self, command: &mut tokio::process::Command) {
        if self.switch_user {
            command.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
    }

    /// Hands `path` to this account (no-op when Tessera is not root).
    pub fn chown(&self, path: &Path) -> Result<(), PostgresError> {
        if !self.switch_user {
            return Ok(());
        }
        nix::unistd::chown(path, Some(self.uid), Some(self.gid)).map_err(|errno| {
            PostgresError::io(
                format!("changing the owner of {} to {}", path.display(), self.name),
                std::io::Error::from(errno),
            )
        })
    }

    /// Hands a whole tree to this account, without following symbolic links.
    pub fn chown_tree(&self, root: &Path) -> Result<(), PostgresError> {
        if !self.switch_user {
            return Ok(());
        }
        let mut pending = vec![root.to_path_buf()];
        while let Some(path) = pending.pop() {
            let metadata = std::fs::symlink_metadata(&path)
                .map_err(|error| PostgresError::io(format!("reading {}", path.display()), error))?;
            if metadata.file_type().is_symlink() {
                std::os::unix::fs::lchown(&path, Some(self.uid.as_raw()), Some(self.gid.as_raw()))
                    .map_err(|error| {
                        PostgresError::io(
                            format!("changing the owner of {}", path.display()),
                            error,
                        )
                    })?;
                continue;
            }
            self.chown(&path)?;
            if metadata.is_dir() {
                let entries = std::fs::read_dir(&path).map_err(|error| {
                    PostgresError::io(format!("listing {}", path.display()), error)
                })?;
                for entry in entries {
                    let entry = entry.map_err(|error| {
                        PostgresError::io(format!("listing {}", path.display()), error)
                    })?;
                    pending.push(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Checks that this account may enter every existing ancestor directory of `path` (not
    /// `path` itself, which Tessera hands to the account). Judged from the permission bits;
    /// ACLs are not consulted.
    pub fn check_can_reach(&self, path: &Path) -> Result<(), PostgresError> {
        if !self.switch_user {
            // Tessera's own user: if it cannot reach the path, creating it fails with a clear
            // error naming the path.
            return Ok(());
        }
        let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
        ancestors.reverse();
        for directory in ancestors {
            let Ok(metadata) = std::fs::metadata(directory) else {
                // Not created yet: Tessera creates it, and the next check covers it.
                break;
            };
            let mode = metadata.permissions().mode();
            let search_bit = if metadata.uid() == self.uid.as_raw() {
                0o100
            } else if metadata.gid() == self.gid.as_raw() {
                0o010
            } else {
                0o001
            };
            if mode & search_bit == 0 {
                return Err(PostgresError::DirectoryNotTraversable {
                    user: self.name.clone(),
                    directory: directory.to_path_buf(),
                    mode: mode & 0o7777,
                });
            }
        }
        Ok(())
    }
}
