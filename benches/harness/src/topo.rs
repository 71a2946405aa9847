//! The namespace topology of one implementation: namespaces `left` and `right` joined by
//! a veth pair (MTU 1500, `10.77.1.1/24` and `10.77.1.2/24`), and, for a tunnel, one
//! daemon of the implementation in each, peered with each other over the veth, with
//! tunnel addresses `10.99.0.1/24` / `10.99.0.2/24` and tunnel MTU 1420. iperf3 clients
//! and ping run on the left, servers on the right.
//!
//! Names carry the harness's pid (`pdb-<pid>-<impl>-l`, interfaces `pb<pid>-<i>l`), so
//! concurrent runs never collide; every object is a guard that removes it on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use portdistrict_testkit::names::stale_owner;
use portdistrict_testkit::netns::{self, uapi_socket, Namespace};
use portdistrict_testkit::registry::{self, Resource};

use crate::error::{tail, Error};
use crate::impls::Impl;
use crate::proc::{self, capture, check_interrupt, cmd, run, Guard};

pub(crate) use portdistrict_testkit::{write_new_private as write_private, TempDir};

/// Bound for small commands (`ip`, `wg`).
const SHORT: Duration = Duration::from_secs(20);
/// How long a daemon gets to create its interface and UAPI socket.
const DAEMON_READY: Duration = Duration::from_secs(10);
/// How long the first handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(15);
const LISTEN_PORT: [&str; 2] = ["51820", "51821"];
const UNDERLAY: [&str; 2] = ["10.77.1.1", "10.77.1.2"];
/// The attacker's link to the right node (attacker, right).
const ATTACK_LINK: [&str; 2] = ["10.78.1.1", "10.78.1.2"];
/// Where the attacker's spoofed sources live (routed back through it).
pub(crate) const SPOOF_NET: &str = "10.66";
const TUNNEL: [&str; 2] = ["10.99.0.1", "10.99.0.2"];
/// The tunnel interfaces' MTU.
pub(crate) const TUNNEL_MTU: &str = "1420";

/// A network namespace with `lo` up, deleted (with every process in it, SIGKILLed) on
/// drop.
#[derive(Debug)]
pub(crate) struct Netns(Namespace);

impl Netns {
    /// Creates namespace `name`.
    pub(crate) fn new(name: &str) -> Result<Netns, Error> {
        Ok(Netns(Namespace::create(name, Duration::ZERO)?))
    }

    /// The namespace's name.
    pub(crate) fn name(&self) -> &str {
        self.0.name()
    }

    /// `ip netns exec NAME argv...`, ready to run or spawn.
    pub(crate) fn command(&self, argv: &[&str]) -> Command {
        self.0.command(argv)
    }

    /// Runs `argv` inside the namespace within [`SHORT`]; fails unless it exits 0.
    pub(crate) fn run(&self, argv: &[&str]) -> Result<String, Error> {
        Ok(run(&mut self.command(argv), SHORT)?)
    }
}

/// Deletes namespaces `pdb-<pid>-...` and UAPI sockets `pb<pid>-...` whose pid no
/// longer runs (left by a harness that was SIGKILLed before its guards ran).
pub(crate) fn sweep_stale() {
    netns::sweep_stale_namespaces("pdb-");
    netns::sweep_sockets(|name, _| stale_owner(name, "pb").is_some());
}

/// A WireGuard daemon in the foreground, owning interface `ifname`; stopped on drop
/// (SIGTERM, then SIGKILL) and its UAPI socket removed.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Guard,
    ifname: String,
    implementation: Impl,
    log: PathBuf,
    socket_key: u64,
}

impl Daemon {
    /// Starts `binary` for `implementation` in `ns` and waits until its interface and
    /// UAPI socket exist.
    pub(crate) fn start(
        ns: &Netns,
        implementation: Impl,
        binary: &Path,
        ifname: &str,
        log: PathBuf,
    ) -> Result<Daemon, Error> {
        let file = File::create(&log).map_err(|source| Error::Io {
            action: "cannot create",
            path: log.clone(),
            source,
        })?;
        let err_file = file.try_clone().map_err(|source| Error::Io {
            action: "cannot duplicate",
            path: log.clone(),
            source,
        })?;
        let mut c = ns.command(&[]);
        c.arg(binary)
            .args(implementation.daemon_args())
            .arg(ifname)
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file);
        let socket = uapi_socket(ifname);
        let socket_key = registry::register(Resource::Path(socket.clone()));
        let mut daemon = Daemon {
            child: Guard::spawn_group(&mut c)?.with_grace(Duration::from_secs(3)),
            ifname: ifname.to_owned(),
            implementation,
            log,
            socket_key,
        };
        let ready = proc::wait_for(DAEMON_READY, || {
            daemon.check_alive()?;
            Ok(socket.exists() && ns.run(&["ip", "link", "show", ifname]).is_ok())
        })?;
        if !ready {
            return Err(daemon.failure(format!(
                "no interface or {} after {DAEMON_READY:?}",
                socket.display()
            )));
        }
        Ok(daemon)
    }

    /// Fails with the daemon's log if it has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), Error> {
        match self.child.try_status() {
            Some(status) => Err(self.failure(format!("exited ({status})"))),
            None => Ok(()),
        }
    }

    fn failure(&self, problem: String) -> Error {
        Error::Daemon {
            implementation: self.implementation.name().to_owned(),
            ifname: self.ifname.clone(),
            problem,
            log: tail(
                &std::fs::read_to_string(&self.log).unwrap_or_default(),
                3000,
            ),
        }
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `wg ARGS...` (the UAPI socket is reachable from any namespace).
    pub(crate) fn wg(&self, args: &[&str]) -> Result<String, Error> {
        let mut c = cmd(&["wg"]);
        c.args(args);
        Ok(run(&mut c, SHORT)?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.terminate(Duration::from_secs(3));
        let _ = std::fs::remove_file(uapi_socket(&self.ifname));
        registry::unregister(self.socket_key);
    }
}

/// Everything one implementation's measurements run on. Fields drop in order: daemons,
/// then namespaces (with the veth), then the temp dir.
#[derive(Debug)]
pub(crate) struct Topology {
    /// Left then right daemon; empty for bare veth.
    pub(crate) daemons: Vec<Daemon>,
    /// Client side (iperf3 client, ping).
    pub(crate) left: Netns,
    /// Server side.
    pub(crate) right: Netns,
    /// The address the client targets in `right`.
    pub(crate) target: &'static str,
    /// Which implementation.
    pub(crate) implementation: Impl,
    /// A third namespace linked to `right` only, for the flood scenario; spoofed
    /// sources in [`SPOOF_NET`] route back through it.
    pub(crate) attacker: Netns,
    /// The right node's WireGuard port and public key as the attacker sees it
    /// (`ATTACK_LINK[1]:51821`; no key for bare veth).
    pub(crate) flood_target: String,
    /// The right daemon's public key (for MAC1 on the attacker's initiations).
    pub(crate) right_public: Option<String>,
    files: TempDir,
}

impl Topology {
    /// Builds the topology for `implementation` (`binary` is its daemon, `None` for
    /// bare veth); `index` makes interface names distinct between implementations.
    pub(crate) fn build(
        implementation: Impl,
        binary: Option<&Path>,
        index: usize,
    ) -> Result<Topology, Error> {
        let pid = std::process::id();
        let base = format!("pdb-{pid}-{}", implementation.name());
        let files = TempDir::replacing(&base)?;
        let left = Netns::new(&format!("{base}-l"))?;
        let right = Netns::new(&format!("{base}-r"))?;
        veth(&left, &right, &format!("pv{pid}-{index}"))?;
        let attacker = Netns::new(&format!("{base}-a"))?;
        let attack_if = format!("pa{pid}-{index}");
        veth_with(&attacker, &right, &attack_if, ATTACK_LINK)?;
        right.run(&[
            "ip",
            "route",
            "add",
            &format!("{SPOOF_NET}.0.0/16"),
            "via",
            ATTACK_LINK[0],
        ])?;
        let right_if = format!("{attack_if}b");
        for conf in ["all", "default", right_if.as_str()] {
            right.run(&[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{conf}.rp_filter=0"),
            ])?;
        }
        let mut topo = Topology {
            daemons: Vec::new(),
            left,
            right,
            target: UNDERLAY[1],
            implementation,
            attacker,
            flood_target: format!("{}:{}", ATTACK_LINK[1], LISTEN_PORT[1]),
            right_public: None,
            files,
        };
        if let Some(binary) = binary {
            topo.start_tunnel(binary, &format!("pb{pid}-{index}"))?;
            topo.target = TUNNEL[1];
        }
        Ok(topo)
    }

    fn start_tunnel(&mut self, binary: &Path, base: &str) -> Result<(), Error> {
        for (i, (ns, side)) in [(&self.left, "l"), (&self.right, "r")]
            .into_iter()
            .enumerate()
        {
            let ifname = format!("{base}{side}");
            let log = self.files.path().join(format!("{ifname}.log"));
            let daemon = Daemon::start(ns, self.implementation, binary, &ifname, log)?;
            self.daemons.push(daemon);
            let key = self.files.path().join(format!("{side}.key"));
            write_private(&key, &run(&mut cmd(&["wg", "genkey"]), SHORT)?)?;
            let key = key.to_string_lossy();
            self.daemons[i].wg(&[
                "set",
                &ifname,
                "listen-port",
                LISTEN_PORT[i],
                "private-key",
                &key,
            ])?;
        }
        let public = [
            pubkey(&self.files.path().join("l.key"))?,
            pubkey(&self.files.path().join("r.key"))?,
        ];
        self.right_public = Some(public[1].clone());
        for (i, ns) in [&self.left, &self.right].into_iter().enumerate() {
            let o = 1 - i;
            let d = &self.daemons[i];
            let endpoint = format!("{}:{}", UNDERLAY[o], LISTEN_PORT[o]);
            let allowed = format!("{}/32", TUNNEL[o]);
            d.wg(&[
                "set",
                &d.ifname,
                "peer",
                &public[o],
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ])?;
            ns.run(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", TUNNEL[i]),
                "dev",
                &d.ifname,
            ])?;
            ns.run(&["ip", "link", "set", &d.ifname, "mtu", TUNNEL_MTU, "up"])?;
        }
        self.wait_handshake()
    }

    /// Pings across the tunnel until a reply comes back (the first handshake).
    fn wait_handshake(&mut self) -> Result<(), Error> {
        let ok = proc::wait_for(HANDSHAKE, || {
            for d in &mut self.daemons {
                d.check_alive()?;
            }
            let out = capture(
                &mut self
                    .left
                    .command(&["ping", "-c", "1", "-W", "1", TUNNEL[1]]),
                SHORT,
            )?;
            Ok(out.status.success())
        })?;
        if ok {
            return Ok(());
        }
        Err(self.daemons[0].failure(format!(
            "no ping reply from {} within {HANDSHAKE:?}",
            TUNNEL[1]
        )))
    }

    /// Fails if a daemon has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), Error> {
        check_interrupt()?;
        for d in &mut self.daemons {
            d.check_alive()?;
        }
        Ok(())
    }
}

/// A veth pair `<base>a` in `a`, `<base>b` in `b`, addressed and up (MTU 1500).
fn veth(a: &Netns, b: &Netns, base: &str) -> Result<(), Error> {
    veth_with(a, b, base, UNDERLAY)
}

fn veth_with(a: &Netns, b: &Netns, base: &str, addrs: [&str; 2]) -> Result<(), Error> {
    let (na, nb) = (format!("{base}a"), format!("{base}b"));
    let mut c = cmd(&[
        "ip",
        "link",
        "add",
        &na,
        "netns",
        a.name(),
        "mtu",
        "1500",
        "type",
        "veth",
    ]);
    c.args(["peer", "name", &nb, "netns", b.name(), "mtu", "1500"]);
    run(&mut c, SHORT)?;
    for (ns, name, addr) in [(a, &na, addrs[0]), (b, &nb, addrs[1])] {
        ns.run(&["ip", "addr", "add", &format!("{addr}/24"), "dev", name])?;
        ns.run(&["ip", "link", "set", name, "up"])?;
    }
    Ok(())
}

/// `wg pubkey < key_file` (not asked of the daemon: not every implementation reports
/// its public key over UAPI).
fn pubkey(key_file: &Path) -> Result<String, Error> {
    let file = File::open(key_file).map_err(|source| Error::Io {
        action: "cannot open",
        path: key_file.to_owned(),
        source,
    })?;
    let mut c = cmd(&["wg", "pubkey"]);
    c.stdin(file).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Guard::spawn_group(&mut c)?;
    let out = child.collect(SHORT)?;
    if !out.status.success() {
        return Err(out.failure(child.label().to_owned()).into());
    }
    Ok(out.stdout.trim().to_owned())
}
