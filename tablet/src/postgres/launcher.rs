//! Spawning the postmaster so that it dies with the tablet.
//!
//! The postmaster is a direct child of the tablet, so its pid is known and its exit is noticed
//! at once (a waiter thread blocks in `waitpid`). If the tablet process dies without stopping it
//! (SIGKILL, panic with abort), the kernel sends the child `PR_SET_PDEATHSIG` = SIGQUIT, which is
//! PostgreSQL's immediate shutdown: no orphaned server keeps the port and data dir.
//!
//! Why a dedicated launcher thread: the parent-death signal fires when the *thread* that forked
//! the child exits, not the process. Tokio's `spawn_blocking` threads and even runtime workers
//! come and go (a test's runtime ends with the test), so forking from them would kill PostgreSQL
//! at a random later moment. Each [`Launcher`] owns one thread that does nothing but fork, and
//! lives exactly as long as the `PostgresServer` that owns it; dropping the server ends the
//! thread, which is one more guarantee that the server does not outlive its handle.
//!
//! The signal is set in `pre_exec`, which std runs in the child after `setgid`/`setuid`; that
//! order matters because the kernel clears the parent-death signal when credentials change.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// A request to the launcher thread.
struct LaunchRequest {
    command: Command,
    reply: oneshot::Sender<std::io::Result<Child>>,
}

/// The long-lived thread that forks PostgreSQL.
pub(crate) struct Launcher {
    /// Invariant: `Some` until `drop`, which closes it so the thread ends.
    requests: Option<mpsc::Sender<LaunchRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Launcher {
    /// Starts the launcher thread.
    pub fn new() -> std::io::Result<Launcher> {
        let (requests, receiver) = mpsc::channel::<LaunchRequest>();
        let thread = std::thread::Builder::new()
            .name("tessera-pg-launcher".to_string())
            .spawn(move || {
                while let Ok(LaunchRequest { mut command, reply }) = receiver.recv() {
                    set_parent_death_signal(&mut command);
                    if let Err(Ok(mut child)) = reply.send(command.spawn()) {
                        // The requester gave up (its future was dropped), so nobody would ever
                        // stop or reap this child: do not leave it running.
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            })?;
        Ok(Launcher {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Spawns `command` from the launcher thread, with the parent-death signal set.
    pub async fn spawn(&self, command: Command) -> std::io::Result<Child> {
        let (reply, response) = oneshot::channel();
        let request = LaunchRequest { command, reply };
        let sent = self
            .requests
            .as_ref()
            .map(|requests| requests.send(request).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(std::io::Error::other(
                "the PostgreSQL launcher thread has exited",
            ));
        }
        response
            .await
            .map_err(|_| std::io::Error::other("the PostgreSQL launcher thread has exited"))?
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Makes the child receive SIGQUIT when the forking thread exits.
fn set_parent_death_signal(command: &mut Command) {
    let parent_pid = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (prctl, getppid) without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGQUIT as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // If the tablet died between fork and prctl, the signal was never armed: refuse to
            // start an orphan.
            if libc::getppid() as u32 != parent_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Waits for `child` on its own thread and reports how it ended.
pub(crate) fn watch_exit(
    child: Child,
    on_exit: impl FnOnce(std::io::Result<ExitStatus>) + Send + 'static,
) -> std::io::Result<()> {
    let mut child = child;
    std::thread::Builder::new()
        .name("tessera-pg-waiter".to_string())
        .spawn(move || on_exit(child.wait()))
        .map(|_| ())
}
