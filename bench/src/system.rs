//! Facts about the machine and small process helpers.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Serialize;

/// What the report says about where it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub postgres: String,
    pub pgbench: String,
    pub pgbouncer: String,
    pub rustc: String,
    pub commit: String,
}

impl Machine {
    pub fn probe(pg_bin_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, name)| name.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib / (1024.0 * 1024.0))
            })
            .unwrap_or(0.0);
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("PRETTY_NAME="))?;
                Some(
                    line.trim_start_matches("PRETTY_NAME=")
                        .trim_matches('"')
                        .to_string(),
                )
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            kernel: first_line("uname", &["-r"]),
            os,
            postgres: first_line(
                &pg_bin_dir.join("postgres").display().to_string(),
                &["--version"],
            ),
            pgbench: first_line("pgbench", &["--version"]),
            pgbouncer: first_line(crate::pgbouncer::BINARY, &["--version"]),
            rustc: first_line("rustc", &["--version"]),
            commit: first_line("git", &["rev-parse", "--short", "HEAD"]),
        }
    }
}

/// First line of a command's stdout, or "unknown".
pub fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .map(|line| line.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average: the machine is shared, so the report records how busy it was.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .with_context(|| format!("no VmRSS for process {pid}"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("malformed VmRSS line {line:?}"))
}

/// Raises this process's open-file limit to its hard limit (children inherit it): thousands of
/// idle client connections need as many descriptors in the harness and in the target.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A base port such that `count` consecutive ports at base, base+1000 and base+2000 are free
/// (a local cluster's PostgreSQL, pooler and gRPC ports).
pub fn free_port_block(count: u16) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let base: u16 = rand::random_range(41_000..60_000);
        let all_free = (0..count).all(|i| {
            [0u16, 1000, 2000]
                .iter()
                .all(|offset| TcpListener::bind(("127.0.0.1", base + offset + i)).is_ok())
        });
        if all_free {
            return Ok(base);
        }
    }
    bail!("no free block of {count} ports found")
}

/// Creates the work directory: short (unix socket paths are limited to 107 bytes) and
/// enterable by the unprivileged account that runs PostgreSQL and PgBouncer.
pub fn create_work_dir(requested: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match requested {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from(format!("/tmp/tbench-{}", std::process::id())),
    };
    if dir.exists() {
        bail!(
            "work dir {} already exists; remove it or pass another --work-dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(std::path::absolute(&dir)?)
}

/// The unprivileged account that runs PostgreSQL and PgBouncer when the harness runs as root.
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    /// `None` when not running as root (servers then run as the current user).
    pub fn unprivileged() -> anyhow::Result<Option<Account>> {
        if !nix::unistd::Uid::effective().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name("postgres")?
            .context("running as root needs a `postgres` system user to run PgBouncer")?;
        Ok(Some(Account {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }

    /// Gives `path` to this account.
    pub fn own(&self, path: &Path) -> anyhow::Result<()> {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(self.uid)),
            Some(nix::unistd::Gid::from_raw(self.gid)),
        )
        .with_context(|| format!("chown {}", path.display()))
    }
}

/// Cores available to this process.
pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}
