//! RAII guards for what the demo creates: a private temporary directory, network
//! namespaces, dataplane processes and background commands. Each cleans up in `Drop`,
//! so every exit path (error, Ctrl-C, panic) leaves nothing behind. The mechanics
//! (process groups, SIGTERM then SIGKILL, bounded cleanup commands) are the testkit's.

use crate::proc::{check_interrupt, cmd, output, POLL};
use anyhow::{bail, Context as _, Result};
use portdistrict_testkit::netns::{uapi_socket, Namespace};
use portdistrict_testkit::process::run_cleanup;
use portdistrict_testkit::Guard;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) use portdistrict_testkit::TempDir;

/// How long a dataplane gets to create its interface and socket, or to exit.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped process gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// Bound for a cleanup command (`ip link del`).
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

/// A named network namespace with its loopback up; deleted on drop (a process still
/// inside gets SIGTERM, [`TERM_GRACE`], then SIGKILL).
pub(crate) struct Netns(Namespace);

impl Netns {
    /// `ip netns add NAME` and `ip -n NAME link set lo up`.
    pub(crate) fn new(name: &str) -> Result<Self> {
        Ok(Netns(Namespace::create(name, TERM_GRACE)?))
    }

    /// The namespace's name.
    pub(crate) fn name(&self) -> &str {
        self.0.name()
    }

    /// A command that runs `argv` inside the namespace (`ip netns exec`).
    pub(crate) fn exec(&self, argv: &[&str]) -> Command {
        self.0.command(argv)
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = cmd(&["ip", "-n", self.name()]);
        c.args(args);
        output(&mut c, PROCESS_TIMEOUT)
    }
}

/// A `portdistrict-dataplane --foreground IFNAME` running in a namespace. Dropping it
/// deletes the interface (the dataplane exits when that happens), and falls back to
/// SIGTERM/SIGKILL if it does not exit in time.
pub(crate) struct Dataplane {
    ns: String,
    ifname: String,
    child: Guard,
    log: PathBuf,
}

impl Dataplane {
    /// Starts `binary` in `ns` with its log in `log`, and waits until its UAPI socket
    /// exists.
    pub(crate) fn start(ns: &Netns, binary: &Path, ifname: &str, log: PathBuf) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut c = ns.exec(&[&binary.to_string_lossy(), "--foreground", ifname]);
        c.env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = Guard::spawn_group(&mut c)?.with_grace(TERM_GRACE);
        let mut dp = Dataplane {
            ns: ns.name().to_owned(),
            ifname: ifname.to_owned(),
            child,
            log,
        };
        dp.wait_ready()?;
        Ok(dp)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let socket = uapi_socket(&self.ifname);
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        while !socket.exists() {
            check_interrupt()?;
            if let Some(status) = self.child.try_status() {
                bail!(
                    "portdistrict-dataplane {} exited ({status}) before it was ready:\n{}",
                    self.ifname,
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not appear within {:?}:\n{}",
                    socket.display(),
                    PROCESS_TIMEOUT,
                    self.log_text()
                );
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// The interface name.
    pub(crate) fn ifname(&self) -> &str {
        &self.ifname
    }

    /// What the dataplane logged so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        run_cleanup(
            &["ip", "-n", &self.ns, "link", "del", &self.ifname],
            CLEANUP_LIMIT,
        );
        if self.child.wait_timeout(PROCESS_TIMEOUT).is_none() {
            eprintln!(
                "warning: {} did not exit after its interface was deleted; stopping it",
                self.ifname
            );
            self.child.terminate(TERM_GRACE);
        }
        let socket = uapi_socket(&self.ifname);
        if socket.exists() {
            eprintln!("warning: {} was left behind; removing it", socket.display());
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// A command running in the background (e.g. an iperf3 server) in its own process
/// group; stopped on drop (SIGTERM, [`TERM_GRACE`], SIGKILL) if it is still running.
pub(crate) struct Background(Guard);

impl Background {
    /// Starts `c` with its output discarded.
    pub(crate) fn start(c: &mut Command) -> Result<Self> {
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(Background(Guard::spawn_group(c)?.with_grace(TERM_GRACE)))
    }

    /// Whether it is still running.
    pub(crate) fn running(&mut self) -> bool {
        self.0.running()
    }
}
