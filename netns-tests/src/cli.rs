//! Our control programs (`portdistrict`, `portdistrictd`) on a test machine: a
//! namespace with its own state and run directories, the dataplane under test named
//! by `PD_DATAPLANE`.

use crate::{unique_ifname, uut_binary, Netns, TempDir};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The path of our program `name` (`portdistrict`, `portdistrictd`), next to the
/// dataplane under test.
pub fn control_binary(name: &str) -> String {
    uut_binary()
        .with_file_name(name)
        .to_string_lossy()
        .into_owned()
}

/// `program` with its state in `state` and its run directory `run`, then `args`.
pub fn control_argv(program: &str, state: &Path, run: &Path, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        control_binary(program),
        "--state-dir".into(),
        state.to_string_lossy().into_owned(),
        "--run-dir".into(),
        run.to_string_lossy().into_owned(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

/// A command's stdout then stderr, as text (a daemon's log).
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A machine running our CLI: a namespace, a state directory and a run directory
/// (`<state>/run` unless given its own).
pub struct CliMachine {
    /// The machine's namespace.
    pub ns: Netns,
    /// Its state directory (`--state-dir`).
    pub state: TempDir,
    run: Option<TempDir>,
}

impl CliMachine {
    /// A machine whose run directory is `<state>/run`.
    pub fn new(ns: Netns, state: TempDir) -> CliMachine {
        CliMachine {
            ns,
            state,
            run: None,
        }
    }

    /// A machine with a run directory of its own.
    pub fn with_run_dir(ns: Netns, state: TempDir, run: TempDir) -> CliMachine {
        CliMachine {
            ns,
            state,
            run: Some(run),
        }
    }

    /// The run directory (`--run-dir`).
    pub fn run_dir(&self) -> PathBuf {
        match &self.run {
            Some(run) => run.path().to_owned(),
            None => self.state.path().join("run"),
        }
    }

    /// `program` (`portdistrict`, `portdistrictd`) with `args` in the namespace, with
    /// this machine's directories, `PD_DATAPLANE` set and no stdin.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let argv = control_argv(program, self.state.path(), &self.run_dir(), args);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = self.ns.command(&refs);
        cmd.env("PD_DATAPLANE", uut_binary()).stdin(Stdio::null());
        cmd
    }

    /// Runs `portdistrict args`, which must succeed (else panics with its stderr);
    /// returns its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self
            .command("portdistrict", args)
            .output()
            .expect("portdistrict");
        assert!(
            out.status.success(),
            "portdistrict {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates an identity for `namespace` (its seed in `<state>/seed.key`) and this
    /// machine's device `device` of it.
    pub fn init_identity(&self, namespace: &str, device: &str) {
        let key = self.state.path().join("seed.key");
        self.run_ok(&[
            "identity",
            "init",
            "--namespace",
            namespace,
            "--key-file",
            &key.to_string_lossy(),
        ]);
        self.run_ok(&["device", "init", "--name", device]);
    }

    /// Adds `other`'s identity bundle, verifies its fingerprint and trusts it; returns
    /// what `peer add` printed.
    pub fn trust(&self, other: &CliMachine) -> String {
        let bundle = other.run_ok(&["identity", "bundle"]);
        let shown: serde_json::Value =
            serde_json::from_str(&other.run_ok(&["identity", "show", "--json"])).unwrap();
        let node = shown["node_id"].as_str().unwrap().to_owned();
        let added = self.run_ok(&["peer", "add", bundle.trim()]);
        self.run_ok(&[
            "peer",
            "verify",
            &node,
            "--fingerprint",
            shown["fingerprint"].as_str().unwrap(),
        ]);
        self.run_ok(&["peer", "trust", &node]);
        added
    }
}

/// A person's device running `portdistrictd` against a DNS server: its machine, its
/// tunnel's name and its DNS server's address. Deletes the tunnel on drop.
pub struct ControlNode {
    /// The device's machine.
    pub machine: CliMachine,
    /// Its tunnel interface (`--interface`).
    pub ifname: String,
    /// Its DNS server (`--dns-server`).
    pub dns: String,
}

impl ControlNode {
    /// A device in `ns`, its state in a new directory named after `state_role`, its
    /// tunnel named `<ifname_prefix>...` (unique), its DNS server at `dns`.
    pub fn new(ns: Netns, state_role: &str, ifname_prefix: &str, dns: Ipv4Addr) -> ControlNode {
        ControlNode {
            machine: CliMachine::new(ns, TempDir::new(state_role)),
            ifname: unique_ifname(ifname_prefix),
            dns: dns.to_string(),
        }
    }

    /// `portdistrictd` for zone `pd.test`, with TSIG key `key` and its secret in
    /// `secret_file`, then `extra` arguments.
    pub fn daemon(&self, key: &str, secret_file: &str, extra: &[&str]) -> Command {
        let mut args = vec![
            "--dns-server",
            &self.dns,
            "--zone",
            "pd.test",
            "--tsig-key",
            key,
            "--tsig-secret-file",
            secret_file,
            "--interface",
            &self.ifname,
        ];
        args.extend_from_slice(extra);
        self.machine.command("portdistrictd", &args)
    }

    /// One `portdistrictd --once` cycle ([`ControlNode::daemon`]), then `extra`.
    pub fn daemon_once(&self, key: &str, secret_file: &str, extra: &[&str]) -> Output {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        self.daemon(key, secret_file, &args)
            .output()
            .expect("portdistrictd")
    }

    /// The device's overlay address (`<prefix>1`, from `device list`).
    pub fn overlay_addr(&self) -> String {
        let list = self.machine.run_ok(&["device", "list"]);
        let prefix = list
            .lines()
            .find_map(|l| l.trim().strip_prefix("overlay:"))
            .expect("overlay line")
            .trim()
            .trim_end_matches("/64")
            .to_owned();
        format!("{prefix}1")
    }

    /// Whether three IPv6 pings from the device to `addr` succeed.
    pub fn pings(&self, addr: &str) -> bool {
        self.machine
            .ns
            .try_exec(&["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", addr])
            .status
            .success()
    }

    /// The TXT records at `name`, one `kdig +short` line (quoted strings) each.
    pub fn txt(&self, name: &str) -> Vec<String> {
        let at = format!("@{}", self.dns);
        self.machine
            .ns
            .exec(&["kdig", &at, "+short", "TXT", name])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for ControlNode {
    fn drop(&mut self) {
        // The dataplane removes its socket when its interface goes.
        let _ = Command::new("ip")
            .args(["-n", self.machine.ns.name(), "link", "del", &self.ifname])
            .status();
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
