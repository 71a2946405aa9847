//! Child processes with bounded waits, Ctrl-C handling and cleanup on every exit path.
//!
//! Every child starts in a process group of its own, so a Ctrl-C in the terminal reaches
//! only the harness: the signal handler sets a flag, every waiting loop looks at it
//! within [`POLL`] and returns [`Error::Interrupted`], and the RAII guards clean up while
//! the error propagates. The release profile aborts on panic, so destructors would not
//! run then: every guard also registers what it owns in a global [`Registry`], which a
//! panic hook tears down (best effort) before the abort.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{tail, Error};

/// How often waiting loops look at children and at the interrupt flag.
pub(crate) const POLL: Duration = Duration::from_millis(20);
/// How much of a command's output an error message shows.
const OUTPUT_TAIL: usize = 2000;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT, SIGTERM and SIGHUP to the interrupt flag, and installs the panic
/// hook that tears down everything registered.
pub(crate) fn install_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and
        // `on_signal` has the `extern "C" fn(c_int)` signature `signal` expects.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        teardown_all();
        default(info);
    }));
}

/// Fails with [`Error::Interrupted`] once a signal has been received.
pub(crate) fn check_interrupt() -> Result<(), Error> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// Sleeps `d`, waking early (with an error) on Ctrl-C.
pub(crate) fn sleep(d: Duration) -> Result<(), Error> {
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

/// Polls `cond` until it is true (`Ok(true)`), `limit` passes (`Ok(false)`) or Ctrl-C.
pub(crate) fn wait_for(
    limit: Duration,
    mut cond: impl FnMut() -> Result<bool, Error>,
) -> Result<bool, Error> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        sleep(POLL * 2)?;
    }
}

/// Something the panic hook must undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resource {
    /// A process group to SIGKILL.
    Group(u32),
    /// A network namespace to delete.
    Netns(String),
    /// A file or directory to remove.
    Path(PathBuf),
}

/// The registry of live resources, keyed by a serial number.
type Registry = Vec<(u64, Resource)>;

static REGISTRY: Mutex<Registry> = Mutex::new(Vec::new());
static SERIAL: AtomicU64 = AtomicU64::new(0);

/// Records `r` for the panic hook; the returned key removes it again.
pub(crate) fn register(r: Resource) -> u64 {
    let key = SERIAL.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut reg) = REGISTRY.lock() {
        reg.push((key, r));
    }
    key
}

/// Forgets the resource registered under `key` (its guard cleaned it up).
pub(crate) fn unregister(key: u64) {
    if let Ok(mut reg) = REGISTRY.lock() {
        reg.retain(|(k, _)| *k != key);
    }
}

/// Undoes every registered resource, newest first. Never blocks on the registry lock
/// (a panic while it is held skips the teardown rather than deadlocking).
fn teardown_all() {
    if let Ok(mut reg) = REGISTRY.try_lock() {
        teardown(&mut reg);
    }
}

/// Undoes and empties `reg`, newest first.
fn teardown(reg: &mut Registry) {
    while let Some((_, r)) = reg.pop() {
        match r {
            Resource::Group(pid) => signal_group(pid, libc::SIGKILL),
            Resource::Netns(name) => delete_netns(&name),
            Resource::Path(path) => {
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
}

/// Kills every process inside namespace `name`, then deletes it (errors ignored: used
/// on teardown paths).
pub(crate) fn delete_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: kill(2) only sends a signal; the pid is inside a namespace
                // this harness created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Sends `signal` to the process group led by `pid` (ignored if it is gone).
pub(crate) fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid only sends a signal to that process group,
    // which this harness created for its own child.
    unsafe { libc::kill(-pid, signal) };
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A child process in its own group, killed (SIGTERM, then SIGKILL) and reaped on drop.
#[derive(Debug)]
pub(crate) struct Guard {
    command: String,
    child: Child,
    key: u64,
    reaped: bool,
}

impl Guard {
    /// Starts `cmd` in a new process group.
    pub(crate) fn spawn(cmd: &mut Command) -> Result<Guard, Error> {
        use std::os::unix::process::CommandExt as _;
        let command = describe(cmd);
        let child = cmd
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
        let key = register(Resource::Group(child.id()));
        Ok(Guard {
            command,
            child,
            key,
            reaped: false,
        })
    }

    /// The process id (also the process group id).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub(crate) fn command(&self) -> &str {
        &self.command
    }

    /// The child's stdout pipe, if it was piped and not yet taken.
    pub(crate) fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's stderr pipe, if it was piped and not yet taken.
    pub(crate) fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// The exit status if the child has exited (reaping it), without blocking.
    pub(crate) fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        self.reaped |= status.is_some();
        status
    }

    /// Waits at most `limit` for the child to exit.
    pub(crate) fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus, Error> {
        let mut status = None;
        let done = wait_for(limit, || {
            status = self.try_status();
            Ok(status.is_some())
        })?;
        match status {
            Some(s) if done => Ok(s),
            _ => Err(Error::Timeout {
                what: format!("`{}`", self.command),
                limit,
            }),
        }
    }

    /// Stops the group: SIGTERM, up to `grace` to exit, then SIGKILL; reaps the child.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if !self.reaped {
            signal_group(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.try_status().is_none() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        signal_group(self.pid(), libc::SIGKILL);
        if !self.reaped {
            let _ = self.child.wait();
            self.reaped = true;
        }
        unregister(self.key);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// A finished command's output.
#[derive(Debug)]
pub(crate) struct Output {
    /// Exit status.
    pub(crate) status: std::process::ExitStatus,
    /// Standard output.
    pub(crate) stdout: String,
    /// Standard error.
    pub(crate) stderr: String,
}

impl Output {
    /// The failure description of this output for `command`.
    pub(crate) fn failure(&self, command: &str) -> Error {
        Error::CommandFailed {
            command: command.to_owned(),
            status: self.status.to_string(),
            output: tail(
                &format!("{}\n{}", self.stdout.trim_end(), self.stderr.trim_end()),
                OUTPUT_TAIL,
            ),
        }
    }
}

/// Reads a pipe to its end on a thread.
fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let mut bytes = Vec::new();
            let _ = p.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// Runs `cmd` to completion within `limit`, capturing stdout and stderr, whatever the
/// exit status.
pub(crate) fn capture(cmd: &mut Command, limit: Duration) -> Result<Output, Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = Guard::spawn(cmd)?;
    collect(&mut guard, limit)
}

/// Waits at most `limit` for `guard` (spawned with piped stdout and stderr) and
/// returns its output.
pub(crate) fn collect(guard: &mut Guard, limit: Duration) -> Result<Output, Error> {
    let out = reader(guard.take_stdout());
    let err = reader(guard.take_stderr());
    let status = guard.wait(limit);
    if status.is_err() {
        guard.stop(Duration::ZERO);
    }
    let status = status?;
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs `cmd` within `limit` and returns its stdout; fails unless it exits 0.
pub(crate) fn run(cmd: &mut Command, limit: Duration) -> Result<String, Error> {
    let out = capture(cmd, limit)?;
    if !out.status.success() {
        return Err(out.failure(&describe(cmd)));
    }
    Ok(out.stdout)
}

/// A [`Command`] from an argv.
pub(crate) fn cmd(argv: &[&str]) -> Command {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    c
}

/// `name` on `$PATH`, else in `~/.cargo/bin`.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails with [`Error::NotRoot`] unless the effective uid is 0.
pub(crate) fn require_root() -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(Error::NotRoot(euid.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_and_run() {
        let out = capture(
            &mut cmd(&["sh", "-c", "echo hi; echo err >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.status.code(), Some(3));
        let e = run(
            &mut cmd(&["sh", "-c", "echo boom; exit 1"]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(
            run(&mut cmd(&["echo", "ok"]), Duration::from_secs(5)).unwrap(),
            "ok\n"
        );
    }

    #[test]
    fn timeout_kills_the_child() {
        let start = Instant::now();
        let e = capture(&mut cmd(&["sleep", "30"]), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn guards_unregister_on_drop() {
        let g = Guard::spawn(&mut cmd(&["sleep", "30"])).unwrap();
        let pid = g.pid();
        assert!(REGISTRY
            .lock()
            .unwrap()
            .iter()
            .any(|(_, r)| *r == Resource::Group(pid)));
        drop(g);
        assert!(!REGISTRY
            .lock()
            .unwrap()
            .iter()
            .any(|(_, r)| *r == Resource::Group(pid)));
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn teardown_kills_groups_and_removes_paths() {
        let dir = std::env::temp_dir().join(format!("pd-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let mut child = cmd(&["sleep", "30"]);
        let mut child = {
            use std::os::unix::process::CommandExt as _;
            child.process_group(0).spawn().unwrap()
        };
        let mut reg: Registry = vec![
            (1, Resource::Path(dir.clone())),
            (2, Resource::Group(child.id())),
        ];
        teardown(&mut reg);
        assert!(reg.is_empty());
        assert!(!dir.exists());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn finds_programs() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-pd-bench").is_none());
    }
}
