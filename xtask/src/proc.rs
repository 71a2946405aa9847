//! Running child processes with bounded waits, and reacting to Ctrl-C.
//!
//! Every child is started in its own process group, so a Ctrl-C in the terminal reaches
//! only xtask: the signal handler sets a flag, the waiting loop sees it within
//! [`POLL`], stops the child's whole group and returns an error, and the RAII guards of
//! the caller clean up while the error propagates.

use anyhow::{bail, Context as _, Result};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often waiting loops look at the child and at the interrupt flag.
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// How long a stopped process group gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT, SIGTERM and SIGHUP to the interrupt flag instead of killing xtask.
pub(crate) fn install_interrupt_handler() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and
        // `on_signal` has the `extern "C" fn(c_int)` signature `signal` expects.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether Ctrl-C (or SIGTERM/SIGHUP) has been received.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with "interrupted" once a signal has been received.
pub(crate) fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
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

/// Starts `cmd` in a process group of its own.
pub(crate) fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.process_group(0)
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// Sends `signal` to the process group led by `pid` (ignored if it is gone).
pub(crate) fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid only sends a signal to that process group.
    unsafe { libc::kill(-pid, signal) };
}

/// Waits for `child` until `deadline`, polling every [`POLL`]; `None` on timeout.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// Runs a cleanup command: bounded by [`TERM_GRACE`] twice, not cut short by Ctrl-C
/// (cleanup is what Ctrl-C is waiting for), errors printed as warnings and otherwise
/// ignored. Returns whether it exited 0.
pub(crate) fn cleanup(argv: &[&str]) -> bool {
    let mut c = cmd(argv);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = match spawn(&mut c) {
        Ok(child) => child,
        Err(e) => {
            eprintln!("warning: cleanup: {e:#}");
            return false;
        }
    };
    match wait_until(&mut child, Instant::now() + 2 * TERM_GRACE) {
        Ok(Some(status)) => status.success(),
        _ => {
            eprintln!("warning: cleanup `{}` hung and was killed", argv.join(" "));
            stop_group(&mut child);
            false
        }
    }
}

/// Waits for `child` to exit at most `limit`, ignoring Ctrl-C; whether it exited.
pub(crate) fn exits_within(child: &mut Child, limit: Duration) -> bool {
    matches!(wait_until(child, Instant::now() + limit), Ok(Some(_)))
}

/// Stops `child`'s process group: SIGTERM, then SIGKILL after [`TERM_GRACE`].
pub(crate) fn stop_group(child: &mut Child) {
    signal_group(child.id(), libc::SIGTERM);
    let exited = matches!(wait_until(child, Instant::now() + TERM_GRACE), Ok(Some(_)));
    // Whatever else is left in the group (grandchildren) goes too.
    signal_group(child.id(), libc::SIGKILL);
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits for `child` at most `limit`; on timeout or Ctrl-C it stops the child's group
/// and fails. `what` names the command in the error.
pub(crate) fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{what}`"))?
        {
            check_interrupt()?;
            return Ok(status);
        }
        if interrupted() {
            stop_group(child);
            bail!("interrupted while running `{what}`");
        }
        if Instant::now() >= deadline {
            stop_group(child);
            bail!(
                "`{what}` did not finish within {} s and was stopped",
                limit.as_secs()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Runs `cmd` with inherited stdout/stderr, at most `limit`; fails unless it exits 0.
pub(crate) fn run_streamed(cmd: &mut Command, limit: Duration) -> Result<()> {
    let what = describe(cmd);
    let mut child = spawn(cmd.stdin(Stdio::null()))?;
    let status = wait_bounded(&mut child, limit, &what)?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Captured {
    /// Its exit status.
    pub(crate) status: ExitStatus,
    /// Its standard output, lossily decoded.
    pub(crate) stdout: String,
    /// Its standard error, lossily decoded.
    pub(crate) stderr: String,
}

fn reader(mut stream: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        buf
    })
}

/// Runs `cmd` at most `limit`, capturing its output whatever its exit status.
pub(crate) fn capture(cmd: &mut Command, limit: Duration) -> Result<Captured> {
    let what = describe(cmd);
    let mut child = spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let out = reader(child.stdout.take().context("child stdout")?);
    let err = reader(child.stderr.take().context("child stderr")?);
    let status = wait_bounded(&mut child, limit, &what)?;
    let text = |h: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
    };
    Ok(Captured {
        status,
        stdout: text(out),
        stderr: text(err),
    })
}

/// Runs `cmd` at most `limit` and returns its stdout; fails with its output unless it
/// exits 0.
pub(crate) fn output(cmd: &mut Command, limit: Duration) -> Result<String> {
    let what = describe(cmd);
    let c = capture(cmd, limit)?;
    if !c.status.success() {
        bail!("`{what}` failed ({}):\n{}{}", c.status, c.stdout, c.stderr);
    }
    Ok(c.stdout)
}

/// Shorthand: a [`Command`] for `argv[0]` with the remaining arguments.
pub(crate) fn cmd(argv: &[&str]) -> Command {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    c
}

/// The path of executable `name` as a shell's `command -v` would find it, also looking
/// in the sbin directories and in cargo's bin directory, which some PATHs lack.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .chain(cargo_bin_dir())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `$CARGO_HOME/bin`, or `~/.cargo/bin`.
pub(crate) fn cargo_bin_dir() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => Some(PathBuf::from(home).join("bin")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    }
}

/// Appends cargo's bin directory and the sbin directories to this process's PATH (so
/// that children, e.g. the netns tests looking for `boringtun-cli`, find what setup
/// installed there).
pub(crate) fn complete_path() {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    let extra = cargo_bin_dir()
        .into_iter()
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    for dir in extra {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    if let Ok(joined) = std::env::join_paths(dirs) {
        std::env::set_var("PATH", joined);
    }
}

/// Whether the effective user is root (read from `/proc/self/status`).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| effective_uid(&s) == Some(0))
        .unwrap_or(false)
}

/// The effective uid from the text of `/proc/PID/status` (second field of `Uid:`).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Fails with what to do unless running as root.
pub(crate) fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask {what}` must run as root (it installs packages and creates network namespaces): run it again as root");
    }
    Ok(())
}

/// `d` as seconds with one decimal, e.g. `12.3 s`.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t0\t0\n"), Some(1000));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn capture_returns_output_and_status() {
        let c = capture(
            &mut cmd(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(
            (c.stdout.as_str(), c.stderr.as_str(), c.status.code()),
            ("out\n", "err\n", Some(3))
        );
    }

    #[test]
    fn output_fails_on_nonzero_exit_with_the_output() {
        let err = output(
            &mut cmd(&["sh", "-c", "echo broken; exit 1"]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(format!("{err}").contains("broken"), "{err}");
    }

    #[test]
    fn a_hanging_command_is_stopped_at_its_limit() {
        let start = Instant::now();
        let err = capture(&mut cmd(&["sleep", "30"]), Duration::from_millis(300)).unwrap_err();
        assert!(format!("{err}").contains("did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn which_finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some());
        assert!(which("no-such-program-pd-xtask").is_none());
    }

    #[test]
    fn secs_has_one_decimal() {
        assert_eq!(secs(Duration::from_millis(12345)), "12.3 s");
    }
}
