//! Running external commands with context: every failure names the command line and
//! shows its stdout and stderr; spawned children are guarded and killed on drop.

use std::io::BufRead as _;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use portdistrict_testkit::Guard;

/// Runs `argv` to completion and returns its output, whatever the exit status.
///
/// Panics only if the program cannot be started at all (missing binary), naming it.
pub fn try_run(argv: &[&str]) -> Output {
    let (program, args) = argv.split_first().expect("try_run needs a program name");
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", argv.join(" ")))
}

/// Runs `argv`, panics with the command line, exit status, stdout and stderr unless it
/// exits 0, and returns stdout as text.
pub fn run(argv: &[&str]) -> String {
    let out = try_run(argv);
    if !out.status.success() {
        panic!("{}", describe_failure(argv, &out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A multi-line description of a failed command, for panic messages.
pub(crate) fn describe_failure(argv: &[&str], out: &Output) -> String {
    format!(
        "command failed: `{}` ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        argv.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// A spawned child process that is killed (SIGKILL) and reaped when dropped: the
/// testkit's [`Guard`], with constructors and waits that panic with context.
#[derive(Debug)]
pub struct ChildGuard(Guard);

impl ChildGuard {
    /// Spawns `cmd`; `label` names it in panic messages.
    pub fn spawn(label: &str, cmd: &mut Command) -> ChildGuard {
        let guard = Guard::spawn(label, cmd)
            .unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        ChildGuard(guard)
    }

    /// Spawns `cmd` with its stderr piped and reads that up to the first line containing
    /// `marker`. Returns the guard, the lines before the marker, and whether the marker
    /// came (else stderr ended first). A thread echoes the rest of stderr to the test's
    /// as `<label>: <line>`, so that the child never blocks on a full pipe.
    pub fn spawn_until_line(
        label: &str,
        cmd: &mut Command,
        marker: &str,
    ) -> (ChildGuard, Vec<String>, bool) {
        cmd.stderr(Stdio::piped());
        let mut guard = ChildGuard::spawn(label, cmd);
        let stderr = guard.child_mut().stderr.take().expect("piped");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut before = Vec::new();
        let mut seen = false;
        for line in lines.by_ref().map_while(Result::ok) {
            if line.contains(marker) {
                seen = true;
                break;
            }
            before.push(line);
        }
        let label = label.to_owned();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                eprintln!("{label}: {l}");
            }
        });
        (guard, before, seen)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Mutable access to the child (to take its pipes).
    pub fn child_mut(&mut self) -> &mut Child {
        self.0.child_mut()
    }

    /// Whether the child has exited (reaping it if so), without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.0.try_status()
    }

    /// Waits at most `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.0.wait_timeout(timeout)
    }

    /// Waits at most `timeout` for a clean exit (status 0) and panics otherwise, killing
    /// the child first if it is still running.
    pub fn expect_success_within(&mut self, timeout: Duration) {
        match self.wait_timeout(timeout) {
            Some(status) if status.success() => {}
            Some(status) => panic!("{} exited with {status}", self.0.label()),
            None => {
                self.kill();
                panic!(
                    "{} did not finish within {timeout:?} (killed)",
                    self.0.label()
                )
            }
        }
    }

    /// Sends SIGTERM, waits at most `grace` for the child to exit, then SIGKILLs it;
    /// reaps it.
    pub fn terminate(&mut self, grace: Duration) {
        self.0.terminate(grace);
    }

    /// Sends SIGKILL (if still running) and reaps the child.
    pub fn kill(&mut self) {
        self.0.kill();
    }
}

/// The next sd_notify datagram on `sock` (a `NOTIFY_SOCKET` the test bound), within
/// `within`; panics when none came.
pub fn next_notification(
    sock: &std::os::unix::net::UnixDatagram,
    within: std::time::Duration,
) -> String {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {within:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
