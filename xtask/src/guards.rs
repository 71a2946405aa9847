//! RAII guards for what the demo creates: a private temporary directory, network
//! namespaces, dataplane processes and background commands. Each cleans up in `Drop`,
//! so every exit path (error, Ctrl-C, panic) leaves nothing behind.

use crate::proc::{check_interrupt, cleanup, cmd, exits_within, spawn, stop_group, POLL};
use anyhow::{bail, Context as _, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a dataplane gets to create its interface and socket, or to exit.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(10);

/// A directory under the system temp dir, mode 0700, removed on drop.
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<name>` (which must not exist yet).
    pub(crate) fn new(name: &str) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let path = std::env::temp_dir().join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory with mode 0600.
    pub(crate) fn private_file(&self, name: &str, contents: &str) -> Result<PathBuf> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.path.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(contents.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}

/// A named network namespace with its loopback up; deleted on drop.
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME` and `ip -n NAME link set lo up`.
    pub(crate) fn new(name: &str) -> Result<Self> {
        crate::proc::output(&mut cmd(&["ip", "netns", "add", name]), PROCESS_TIMEOUT)?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `argv` inside the namespace (`ip netns exec`).
    pub(crate) fn exec(&self, argv: &[&str]) -> Command {
        let mut c = cmd(&["ip", "netns", "exec", &self.name]);
        c.args(argv);
        c
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = cmd(&["ip", "-n", &self.name]);
        c.args(args);
        crate::proc::output(&mut c, PROCESS_TIMEOUT)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !cleanup(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: `ip netns del {}` failed", self.name);
        }
    }
}

/// The UAPI socket of interface `ifname` (wg(8)'s convention).
pub(crate) fn uapi_socket(ifname: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"))
}

/// A `portdistrict-dataplane --foreground IFNAME` running in a namespace. Dropping it
/// deletes the interface (the dataplane exits when that happens), and falls back to
/// SIGTERM/SIGKILL if it does not exit in time.
pub(crate) struct Dataplane {
    ns: String,
    ifname: String,
    child: Child,
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
        let child = spawn(&mut c)?;
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
            if let Some(status) = self.child.try_wait()? {
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
        cleanup(&["ip", "-n", &self.ns, "link", "del", &self.ifname]);
        if !exits_within(&mut self.child, PROCESS_TIMEOUT) {
            eprintln!(
                "warning: {} did not exit after its interface was deleted; stopping it",
                self.ifname
            );
            stop_group(&mut self.child);
        }
        let socket = uapi_socket(&self.ifname);
        if socket.exists() {
            eprintln!("warning: {} was left behind; removing it", socket.display());
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// A command running in the background (e.g. an iperf3 server); stopped on drop if it
/// is still running.
pub(crate) struct Background {
    child: Child,
}

impl Background {
    /// Starts `c` with its output discarded.
    pub(crate) fn start(c: &mut Command) -> Result<Self> {
        let child = spawn(
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        Ok(Background { child })
    }

    /// Whether it is still running.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.running() {
            stop_group(&mut self.child);
        }
    }
}
