//! WireGuard implementation processes as RAII guards.
//!
//! [`Daemon`] starts an implementation in the foreground inside a namespace (it is our
//! child: SIGTERM then SIGKILL on drop). [`Detached`] tracks one that daemonized itself
//! (launched without `--foreground`, or by `wg-quick`), found by its executable and
//! interface name in `/proc`. Both remove the UAPI socket
//! `/var/run/wireguard/IFNAME.sock` if the process left it behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use portdistrict_testkit::process::signal;
use portdistrict_testkit::wait_until;

use crate::cmd::{run, ChildGuard};
use crate::names::{unique_ifname, TempDir};
use crate::netns::Netns;
use crate::wg::{Keypair, Peer, WgDump};

/// How long a process gets to start (interface + UAPI socket) or to exit.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// A WireGuard implementation the harness can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// The implementation under test: `$PD_DATAPLANE`, default
    /// `<workspace>/target/release/portdistrict-dataplane`.
    Uut,
    /// `wireguard-go` from `$PATH` (Debian package `wireguard-go`).
    WireguardGo,
    /// `boringtun-cli` from `$PATH` or `~/.cargo/bin`.
    Boringtun,
}

impl Implementation {
    /// The executable's path; panics with what to install or set if it is missing.
    pub fn binary(self) -> PathBuf {
        match self {
            Implementation::Uut => uut_binary(),
            Implementation::WireguardGo => find_program("wireguard-go")
                .expect("wireguard-go not found: apt-get install wireguard-go"),
            Implementation::Boringtun => find_program("boringtun-cli")
                .expect("boringtun-cli not found: cargo install boringtun-cli"),
        }
    }

    /// A short name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Implementation::Uut => "uut",
            Implementation::WireguardGo => "wireguard-go",
            Implementation::Boringtun => "boringtun",
        }
    }

    /// Arguments (before IFNAME) that keep the process in the foreground.
    fn foreground_args(self) -> &'static [&'static str] {
        match self {
            Implementation::Uut | Implementation::WireguardGo => &["--foreground"],
            Implementation::Boringtun => &["--foreground", "--disable-drop-privileges"],
        }
    }
}

/// The implementation under test: `$PD_DATAPLANE` or
/// `<workspace>/target/release/portdistrict-dataplane`; panics if it is not a file.
pub fn uut_binary() -> PathBuf {
    let path = match std::env::var_os("PD_DATAPLANE") {
        Some(p) => PathBuf::from(p),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/portdistrict-dataplane")
        }
    };
    assert!(
        path.is_file(),
        "implementation under test {} not found: build it \
         (`cargo build --release -p portdistrict-dataplane`) or set PD_DATAPLANE",
        path.display()
    );
    path.canonicalize()
        .unwrap_or_else(|e| panic!("cannot resolve {}: {e}", path.display()))
}

fn find_program(name: &str) -> Option<PathBuf> {
    portdistrict_testkit::process::find_program(name, &[])
}

fn socket_path(ifname: &str) -> PathBuf {
    portdistrict_testkit::netns::uapi_socket(ifname)
}

/// A foreground implementation process owning interface `pdw<pid><n>`.
#[derive(Debug)]
pub struct Daemon {
    child: ChildGuard,
    implementation: Implementation,
    ifname: String,
    link_ns: String,
    files: TempDir,
}

impl Daemon {
    /// Starts `implementation` inside `ns` and waits (bounded) until its interface and
    /// UAPI socket exist; panics with its log if it exits or does not get there.
    pub fn start(ns: &Netns, implementation: Implementation) -> Daemon {
        Daemon::start_env(ns, implementation, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_env(
        ns: &Netns,
        implementation: Implementation,
        env: &[(String, String)],
    ) -> Daemon {
        Daemon::start_with(ns, implementation, &[], env)
    }

    /// [`Daemon::start`] with extra arguments before the interface name (e.g.
    /// `--shm PATH` for the UUT) and extra environment variables.
    pub fn start_with(
        ns: &Netns,
        implementation: Implementation,
        args: &[&str],
        env: &[(String, String)],
    ) -> Daemon {
        let ifname = unique_ifname("pdw");
        let files = TempDir::new("daemon");
        let log = File::create(files.path().join("log")).expect("create daemon log");
        let mut cmd = ns.command(&[]);
        cmd.arg(implementation.binary())
            .args(implementation.foreground_args())
            .args(args)
            .arg(&ifname)
            .env("WG_PROCESS_FOREGROUND", "1")
            .env("WG_SUDO", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        let label = format!("{} {ifname} in {}", implementation.label(), ns.name());
        let child = ChildGuard::spawn(&label, &mut cmd);
        let mut daemon = Daemon {
            child,
            implementation,
            ifname,
            link_ns: ns.name().to_owned(),
            files,
        };
        daemon.wait_ready(ns);
        daemon
    }

    fn wait_ready(&mut self, ns: &Netns) {
        let mut exited = None;
        let sock = self.socket_path();
        let ready = wait_until(PROCESS_TIMEOUT, POLL, || {
            exited = self.child.try_status();
            exited.is_some() || (sock.exists() && ns.has_link(&self.ifname))
        });
        let what = format!(
            "{} ({}) for {} in {}",
            self.implementation.label(),
            self.implementation.binary().display(),
            self.ifname,
            self.link_ns
        );
        if let Some(status) = exited {
            panic!(
                "{what} exited during startup ({status}); log:\n{}",
                self.log()
            );
        }
        assert!(
            ready,
            "{what}: interface or {} missing after {PROCESS_TIMEOUT:?}; log:\n{}",
            sock.display(),
            self.log()
        );
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Which implementation this is.
    pub fn implementation(&self) -> Implementation {
        self.implementation
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `/var/run/wireguard/IFNAME.sock`.
    pub fn socket_path(&self) -> PathBuf {
        socket_path(&self.ifname)
    }

    /// The namespace the interface is in now (changes with [`Daemon::move_to`]).
    pub fn link_ns(&self) -> &str {
        &self.link_ns
    }

    /// The process's stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.files.path().join("log")).unwrap_or_default()
    }

    /// `wg ARGS...` (talks to the UAPI socket, which is reachable from any namespace).
    pub fn wg(&self, args: &[&str]) -> String {
        let argv: Vec<&str> = std::iter::once("wg").chain(args.iter().copied()).collect();
        run(&argv)
    }

    /// `wg set IFNAME ARGS...`.
    pub fn set(&self, args: &[&str]) {
        let argv: Vec<&str> = ["set", &self.ifname]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        self.wg(&argv);
    }

    /// `wg show IFNAME WHAT` (e.g. `endpoints`, `latest-handshakes`).
    pub fn show(&self, what: &str) -> String {
        self.wg(&["show", &self.ifname, what])
    }

    /// Parsed `wg show IFNAME dump`.
    pub fn dump(&self) -> WgDump {
        WgDump::parse(&self.show("dump"))
    }

    /// The UUT's drop and event counters (`portdistrict-dataplane --stats IFNAME`),
    /// by name (the numeric lines; [`Daemon::stats_text`] has them all). Panics for
    /// other implementations, which have no such counters.
    pub fn stats(&self) -> std::collections::HashMap<String, u64> {
        self.stats_text()
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect()
    }

    /// Every line of `--stats` (`xdp: filter`, `xdp_interfaces: veth0:native`, ...).
    pub fn stats_text(&self) -> std::collections::HashMap<String, String> {
        assert_eq!(
            self.implementation,
            Implementation::Uut,
            "only the UUT has --stats"
        );
        let bin = self.implementation.binary();
        let out = run(&[bin.to_str().expect("utf-8 path"), "--stats", &self.ifname]);
        out.lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    /// Writes `contents` to a mode-0600 file owned by this guard and returns its path.
    pub fn private_file(&self, name: &str, contents: &str) -> PathBuf {
        self.files.write_private(name, contents)
    }

    /// Sets the private key and listen port, then adds `peers`.
    pub fn configure(&self, keys: &Keypair, listen_port: u16, peers: &[Peer]) {
        let key = self.private_file("private.key", &format!("{}\n", keys.private));
        let port = listen_port.to_string();
        self.set(&[
            "listen-port",
            &port,
            "private-key",
            &key.display().to_string(),
        ]);
        for peer in peers {
            self.set_peer(peer);
        }
    }

    /// Adds or updates one peer.
    pub fn set_peer(&self, peer: &Peer) {
        let psk_file = peer.preshared_key.as_ref().map(|psk| {
            let name = format!("psk-{}", crate::names::unique_name("peer"));
            self.private_file(&name, &format!("{psk}\n"))
        });
        let args = peer.wg_set_args(psk_file.as_deref());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.set(&args);
    }

    /// `ip -n LINK_NS ARGS...` (the namespace the interface is in now).
    pub fn ip(&self, args: &[&str]) -> String {
        let argv: Vec<&str> = ["ip", "-n", &self.link_ns]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        run(&argv)
    }

    /// Adds `cidr` to the interface (`nodad` for IPv6, so it is usable at once).
    pub fn add_address(&self, cidr: &str) {
        let mut args = vec!["addr", "add", cidr, "dev", &self.ifname];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args);
    }

    /// Sets the interface up.
    pub fn link_up(&self) {
        self.ip(&["link", "set", &self.ifname, "up"]);
    }

    /// Sets the interface MTU.
    pub fn set_mtu(&self, mtu: u32) {
        self.ip(&["link", "set", &self.ifname, "mtu", &mtu.to_string()]);
    }

    /// Moves the interface into `to` (the process and its UDP sockets stay behind).
    pub fn move_to(&mut self, to: &Netns) {
        self.ip(&["link", "set", &self.ifname, "netns", to.name()]);
        self.link_ns = to.name().to_owned();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_status().is_none()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.pid(), libc::SIGTERM);
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_timeout(timeout)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.terminate(Duration::from_secs(3));
        let _ = std::fs::remove_file(self.socket_path());
        if std::thread::panicking() {
            eprintln!(
                "--- log of {} {} ---\n{}",
                self.implementation.label(),
                self.ifname,
                tail(&self.log())
            );
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Pids of live processes whose executable is `exe` and whose last argument is `ifname`.
pub fn find_daemon_pids(exe: &Path, ifname: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_matches(*pid, exe, ifname))
        .collect()
}

fn process_matches(pid: u32, exe: &Path, ifname: &str) -> bool {
    let Ok(link) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false; // gone, a zombie, or a kernel thread
    };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let last = cmdline.split(|b| *b == 0).rfind(|a| !a.is_empty());
    link == exe && last == Some(ifname.as_bytes())
}

/// An implementation process that daemonized itself; SIGTERM then SIGKILL on drop if
/// it is still alive, and its socket removed.
#[derive(Debug)]
pub struct Detached {
    pid: u32,
    exe: PathBuf,
    ifname: String,
}

impl Detached {
    /// Runs `BINARY IFNAME` in `ns` without `--foreground`, as wg-quick does, asserts the
    /// launcher exits 0 within 10 s, and adopts the daemon it left behind.
    pub fn launch(ns: &Netns, implementation: Implementation) -> Detached {
        let ifname = unique_ifname("pdw");
        let exe = implementation.binary();
        let mut cmd = ns.command(&[]);
        cmd.arg(&exe)
            .arg(&ifname)
            .env_remove("WG_PROCESS_FOREGROUND")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let label = format!("{} {ifname} launcher", implementation.label());
        let mut launcher = ChildGuard::spawn(&label, &mut cmd);
        launcher.expect_success_within(PROCESS_TIMEOUT);
        Detached::adopt(implementation, &ifname)
    }

    /// Finds the single live process of `implementation` serving `ifname`; panics if
    /// there is none or more than one.
    pub fn adopt(implementation: Implementation, ifname: &str) -> Detached {
        let exe = implementation.binary();
        let pids = find_daemon_pids(&exe, ifname);
        assert!(
            pids.len() == 1,
            "expected one {} process for {ifname}, found {pids:?}",
            exe.display()
        );
        Detached {
            pid: pids[0],
            exe,
            ifname: ifname.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// `/var/run/wireguard/IFNAME.sock`.
    pub fn socket_path(&self) -> PathBuf {
        socket_path(&self.ifname)
    }

    /// Whether the process is still alive (not exited, not a zombie).
    pub fn is_alive(&self) -> bool {
        process_matches(self.pid, &self.exe, &self.ifname)
    }

    /// Waits at most `timeout` for the process to exit; returns whether it did.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        wait_until(timeout, POLL, || !self.is_alive())
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if self.is_alive() {
            signal(self.pid, libc::SIGTERM);
            if !self.wait_gone(Duration::from_secs(3)) && self.is_alive() {
                signal(self.pid, libc::SIGKILL);
                self.wait_gone(Duration::from_secs(3));
            }
        }
        let _ = std::fs::remove_file(self.socket_path());
    }
}
