//! Runs a private single-member etcd for tests and local experiments: free loopback ports, a
//! data directory the caller owns, killed when dropped.
//!
//! Tests that need etcd must fail loudly when the binary is missing (never skip silently), so
//! [`EtcdProcess::start`] reports exactly how to install it.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::etcd::{EtcdConfig, EtcdTopo};

/// Environment variable naming the etcd binary to use instead of searching `PATH`.
pub const ETCD_BINARY_ENV: &str = "TESSERA_ETCD_BIN";

/// How long a fresh etcd may take to answer.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Starting or controlling the test etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdProcessError {
    #[error(
        "etcd binary not found (looked at ${ETCD_BINARY_ENV}, PATH, /usr/bin/etcd): install it with \
         `apt-get update && apt-get install -y etcd-server`, or point {ETCD_BINARY_ENV} at it"
    )]
    BinaryMissing,
    #[error("{action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error(
        "etcd did not become ready within {timeout:?}; last error: {last_error}; log tail:\n{log_tail}"
    )]
    NotReady {
        timeout: Duration,
        last_error: String,
        log_tail: String,
    },
}

/// A running etcd child process.
pub struct EtcdProcess {
    binary: PathBuf,
    base_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// `None` while stopped.
    child: Option<Child>,
    /// Set when the last launch ended because etcd exited during startup.
    exited_early: bool,
}

impl EtcdProcess {
    /// The etcd binary: `$TESSERA_ETCD_BIN`, else `etcd` on `PATH`, else `/usr/bin/etcd`.
    pub fn binary() -> Result<PathBuf, EtcdProcessError> {
        if let Some(path) = std::env::var_os(ETCD_BINARY_ENV) {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(EtcdProcessError::BinaryMissing)
            };
        }
        let on_path = std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("etcd"))
                    .find(|candidate| candidate.is_file())
            })
            .unwrap_or_default();
        on_path
            .or_else(|| {
                let fallback = PathBuf::from("/usr/bin/etcd");
                fallback.is_file().then_some(fallback)
            })
            .ok_or(EtcdProcessError::BinaryMissing)
    }

    /// Starts etcd with its data and log under `base_dir` and waits until it answers.
    ///
    /// The child gets `PR_SET_PDEATHSIG`, so it dies with the *thread* that started it: start it
    /// from the test's own thread or runtime, not from a short-lived helper thread.
    pub async fn start(base_dir: &Path) -> Result<EtcdProcess, EtcdProcessError> {
        let binary = EtcdProcess::binary()?;
        // A port found free can be taken by someone else before etcd binds it; then etcd exits
        // at once and we retry with other ports.
        let mut attempt = 1;
        loop {
            let (client_port, peer_port) = two_free_ports()?;
            let mut process = EtcdProcess {
                binary: binary.clone(),
                base_dir: base_dir.to_path_buf(),
                client_port,
                peer_port,
                child: None,
                exited_early: false,
            };
            match process.launch().await {
                Ok(()) => return Ok(process),
                Err(EtcdProcessError::NotReady { .. }) if attempt < 3 && process.exited_early => {
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// A topology URL for this etcd; `prefix` is empty or like `/test`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}{prefix}", self.endpoint())
    }

    /// The operating-system process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills etcd (SIGKILL, like a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory after [`EtcdProcess::stop`].
    pub async fn restart(&mut self) -> Result<(), EtcdProcessError> {
        self.stop();
        self.launch().await
    }

    /// Freezes etcd (SIGSTOP) without closing its sockets: clients see a hang, not a refusal.
    /// Returns once the kernel reports the process stopped (signal delivery is asynchronous).
    pub fn suspend(&self) -> Result<(), EtcdProcessError> {
        self.signal(nix::sys::signal::Signal::SIGSTOP)?;
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let stat_path = format!("/proc/{pid}/stat");
        for _ in 0..200 {
            // The state is the first field after the parenthesised command name.
            let stat = std::fs::read_to_string(&stat_path).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if matches!(state, Some('T' | 't')) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(EtcdProcessError::Io {
            action: "waiting for etcd to stop after SIGSTOP".to_string(),
            source: std::io::Error::other("process did not reach the stopped state within 1 s"),
        })
    }

    /// Thaws etcd after [`EtcdProcess::suspend`].
    pub fn resume(&self) -> Result<(), EtcdProcessError> {
        self.signal(nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), EtcdProcessError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, signal).map_err(|errno| EtcdProcessError::Io {
            action: format!("sending {signal} to etcd"),
            source: errno.into(),
        })
    }

    fn log_path(&self) -> PathBuf {
        self.base_dir.join("etcd.log")
    }

    async fn launch(&mut self) -> Result<(), EtcdProcessError> {
        let io = |action: &str| {
            let action = action.to_string();
            move |source| EtcdProcessError::Io { action, source }
        };
        std::fs::create_dir_all(&self.base_dir).map_err(io("creating the etcd directory"))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io("opening the etcd log"))?;
        let log_for_stderr = log.try_clone().map_err(io("duplicating the etcd log"))?;
        let client_url = format!("http://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.binary);
        command
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.base_dir.join("data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            // Short raft timing lowers the minimum lease TTL to one second, keeping lock-expiry
            // tests fast; a single member has no elections to destabilise.
            .arg("--heartbeat-interval=10")
            .arg("--election-timeout=50")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr);
        // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(command.spawn().map_err(io("starting etcd"))?);

        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        let mut config = EtcdConfig::new(vec![self.endpoint()], "");
        config.connect_timeout = Duration::from_secs(1);
        config.request_timeout = Duration::from_secs(1);
        loop {
            let last_error = match EtcdTopo::connect(config.clone()).await {
                Ok(_) => return Ok(()),
                Err(error) => error.to_string(),
            };
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                _ => None,
            };
            if exited.is_some() || tokio::time::Instant::now() >= deadline {
                self.exited_early = exited.is_some();
                self.stop();
                return Err(EtcdProcessError::NotReady {
                    timeout: STARTUP_TIMEOUT,
                    last_error: match exited {
                        Some(status) => format!("etcd exited: {status}"),
                        None => last_error,
                    },
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        // SIGKILL also ends a suspended (SIGSTOPped) etcd.
        self.stop();
    }
}

/// Two distinct loopback ports that were free a moment ago (both listeners are held until both
/// are chosen, so they cannot coincide).
fn two_free_ports() -> Result<(u16, u16), EtcdProcessError> {
    let io = |source| EtcdProcessError::Io {
        action: "finding a free port".to_string(),
        source,
    };
    let first = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let second = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let first_port = first.local_addr().map_err(io)?.port();
    let second_port = second.local_addr().map_err(io)?.port();
    Ok((first_port, second_port))
}
