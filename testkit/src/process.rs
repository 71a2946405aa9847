//! Child processes with bounded waits, stopped on every exit path, and Ctrl-C.
//!
//! A [`Guard`] owns a child and stops it on drop: SIGTERM, a grace period, SIGKILL (for
//! a child in its own process group, the whole group, so that grandchildren go too);
//! with no grace, SIGKILL at once. Commands run to completion within a bound
//! ([`capture`], [`run`]); one that hangs is stopped and reported as
//! [`Error::Timeout`].
//!
//! A program that wants Ctrl-C to clean up rather than kill it calls
//! [`install_interrupt_handler`]: SIGINT, SIGTERM and SIGHUP then set a flag, every
//! interruptible wait here looks at it within [`POLL`] and fails with
//! [`Error::Interrupted`], and the guards clean up while that error propagates. Its
//! children run in their own process groups ([`Guard::spawn_group`]), so the terminal's
//! Ctrl-C reaches only the program itself.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::registry::{self, Resource};
use crate::Error;

/// How often waiting loops look at children and at the interrupt flag.
pub const POLL: Duration = Duration::from_millis(20);
/// How long a [`Guard::spawn_group`] child gets between SIGTERM and SIGKILL on drop.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT, SIGTERM and SIGHUP to the interrupt flag instead of ending the
/// program.
pub fn install_interrupt_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and
        // `on_signal` has the `extern "C" fn(c_int)` signature `signal` expects.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether Ctrl-C (or SIGTERM/SIGHUP) has been received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with [`Error::Interrupted`] once a signal has been received.
pub fn check_interrupt() -> Result<(), Error> {
    if interrupted() {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// Sleeps `d`, waking early (with [`Error::Interrupted`]) on Ctrl-C.
pub fn sleep(d: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// Polls `cond` every `poll` until it returns true or `timeout` has passed; returns
/// whether it became true. `cond` is always evaluated at least once, and once more at
/// the deadline, so a condition that turns true during the last sleep is not missed.
/// Not interruptible.
pub fn wait_until(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// Polls the fallible `cond` every `poll` until it is true (`Ok(true)`), `limit` passes
/// (`Ok(false)`), it fails, or Ctrl-C ([`Error::Interrupted`]).
pub fn wait_for<E: From<Error>>(
    limit: Duration,
    poll: Duration,
    mut cond: impl FnMut() -> Result<bool, E>,
) -> Result<bool, E> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        sleep(poll)?;
    }
}

/// Sends `sig` to process `pid` (ignored if it is gone).
pub fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) only sends a signal; a positive pid names one process.
    unsafe { libc::kill(pid, sig) };
}

/// Sends `sig` to the process group led by `pid` (ignored if it is gone).
pub fn signal_group(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid only sends a signal to that process group.
    unsafe { libc::kill(-pid, sig) };
}

/// A [`Command`] for `argv[0]` with the remaining arguments.
pub fn cmd(argv: &[&str]) -> Command {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    c
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A child process, stopped and reaped when dropped.
#[derive(Debug)]
pub struct Guard {
    label: String,
    child: Child,
    group: bool,
    grace: Duration,
    reaped: bool,
    key: u64,
}

impl Guard {
    /// Starts `cmd` in the caller's process group; `label` names it in messages. On
    /// drop it is SIGKILLed (see [`Guard::with_grace`]).
    pub fn spawn(label: &str, cmd: &mut Command) -> Result<Guard, Error> {
        Guard::start(label.to_owned(), cmd, false, Duration::ZERO)
    }

    /// Starts `cmd` in a process group of its own, named by its command line. On drop
    /// the group gets SIGTERM, [`DEFAULT_GRACE`] to exit, then SIGKILL.
    pub fn spawn_group(cmd: &mut Command) -> Result<Guard, Error> {
        cmd.process_group(0);
        Guard::start(describe(cmd), cmd, true, DEFAULT_GRACE)
    }

    fn start(
        label: String,
        cmd: &mut Command,
        group: bool,
        grace: Duration,
    ) -> Result<Guard, Error> {
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            command: describe(cmd),
            source,
        })?;
        let key = registry::register(if group {
            Resource::Group(child.id())
        } else {
            Resource::Process(child.id())
        });
        Ok(Guard {
            label,
            child,
            group,
            grace,
            reaped: false,
            key,
        })
    }

    /// Sets how long the child gets between SIGTERM and SIGKILL when dropped (zero:
    /// SIGKILL at once).
    pub fn with_grace(mut self, grace: Duration) -> Guard {
        self.grace = grace;
        self
    }

    /// The process id (for a group child, also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The label or command line, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Mutable access to the child (to take its pipes).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the child has exited (reaping it), without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        self.reaped |= status.is_some();
        status
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits at most `timeout` for the child to exit; `None` if it is still running.
    /// Not interruptible (used on cleanup paths, which Ctrl-C is waiting for).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, POLL, || {
            status = self.try_status();
            status.is_some()
        });
        status
    }

    /// Waits at most `limit` for the child to exit. On timeout or Ctrl-C the child is
    /// stopped (SIGTERM, its grace, SIGKILL) and the wait fails.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus, Error> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status() {
                check_interrupt()?;
                return Ok(status);
            }
            if interrupted() {
                self.terminate(self.grace);
                return Err(Error::Interrupted);
            }
            if Instant::now() >= deadline {
                self.terminate(self.grace);
                return Err(Error::Timeout {
                    command: self.label.clone(),
                    limit,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits at most `limit` for the child (spawned with piped stdout and stderr) and
    /// returns what it printed, whatever its exit status.
    pub fn collect(&mut self, limit: Duration) -> Result<Output, Error> {
        let out = reader(self.child.stdout.take());
        let err = reader(self.child.stderr.take());
        let status = self.wait(limit)?;
        Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }

    /// Stops the child: SIGTERM, up to `grace` to exit, then SIGKILL; reaps it. For a
    /// group child the signals go to the whole group, and the SIGKILL is sent even if
    /// the child itself exited (whatever it left in its group goes too).
    pub fn terminate(&mut self, grace: Duration) {
        if !self.reaped && !grace.is_zero() {
            self.send(libc::SIGTERM);
            self.wait_timeout(grace);
        }
        self.kill();
    }

    /// Sends SIGKILL (to the group, for a group child) and reaps the child.
    pub fn kill(&mut self) {
        if self.group || !self.reaped {
            self.send(libc::SIGKILL);
        }
        if !self.reaped {
            let _ = self.child.wait();
            self.reaped = true;
        }
        registry::unregister(self.key);
    }

    fn send(&self, sig: libc::c_int) {
        if self.group {
            signal_group(self.pid(), sig);
        } else if !self.reaped {
            signal(self.pid(), sig);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.terminate(self.grace);
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output, lossily decoded.
    pub stdout: String,
    /// Its standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// [`Error::Failed`] for this output of `command`.
    pub fn failure(self, command: String) -> Error {
        Error::Failed {
            command,
            status: self.status,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// Reads a pipe to its end on a thread.
fn reader<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `cmd` (in its own process group, stdin empty) at most `limit`, capturing its
/// output whatever its exit status; stopped on timeout or Ctrl-C.
pub fn capture(cmd: &mut Command, limit: Duration) -> Result<Output, Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Guard::spawn_group(cmd)?.collect(limit)
}

/// Runs `cmd` at most `limit` and returns its stdout; fails with [`Error::Failed`]
/// (its output included) unless it exits 0.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<String, Error> {
    let out = capture(cmd, limit)?;
    if !out.status.success() {
        return Err(out.failure(describe(cmd)));
    }
    Ok(out.stdout)
}

/// Runs `cmd` at most `limit` with `input` on its standard input (`nft -f -`), and
/// returns its stdout; fails with [`Error::Failed`] unless it exits 0.
pub fn run_with_input(cmd: &mut Command, input: &str, limit: Duration) -> Result<String, Error> {
    use std::io::Write as _;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guard::spawn_group(cmd)?;
    if let Some(mut stdin) = child.child.stdin.take() {
        // A program that exits early closes the pipe: its status tells why.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.collect(limit)?;
    if !out.status.success() {
        return Err(out.failure(describe(cmd)));
    }
    Ok(out.stdout)
}

/// Runs `argv` for cleanup or inspection: stdin and stderr discarded, at most `limit`,
/// not cut short by Ctrl-C (cleanup is what Ctrl-C is waiting for), killed if it
/// hangs. Its output if it finished, `None` if it could not start or hung.
pub fn run_quietly(argv: &[&str], limit: Duration) -> Option<Output> {
    let mut c = cmd(argv);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Guard::spawn_group(&mut c).ok()?;
    let out = reader(child.child.stdout.take());
    let status = child.wait_timeout(limit);
    // A hung command is stopped by the guard's drop, which closes its stdout.
    drop(child);
    Some(Output {
        status: status?,
        stdout: out.join().unwrap_or_default(),
        stderr: String::new(),
    })
}

/// [`run_quietly`], reduced to whether the command exited 0.
pub fn run_cleanup(argv: &[&str], limit: Duration) -> bool {
    run_quietly(argv, limit).is_some_and(|o| o.status.success())
}

/// The effective uid from the text of `/proc/PID/status` (second field of `Uid:`).
pub fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// This process's effective uid, read from `/proc/self/status`.
pub fn euid() -> Option<u32> {
    effective_uid(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// `$CARGO_HOME/bin`, or `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => Some(PathBuf::from(home).join("bin")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    }
}

/// The first executable `name` in `$PATH`, then in `extra` (directories some PATHs
/// lack), then in cargo's bin directory.
pub fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .chain(cargo_bin_dir())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests;
