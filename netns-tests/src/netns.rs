//! Network namespaces and veth pairs as RAII guards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};
use std::sync::Once;

use crate::cmd::{describe_failure, run, try_run};
use crate::names::{unique_ifname, unique_name};
use crate::Family;

/// Panics with a clear message unless the effective uid is 0: these suites create
/// namespaces, interfaces and TUN devices and cannot run otherwise.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_else(|e| panic!("cannot read /proc/self/status: {e}"));
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no Uid line in /proc/self/status"));
    assert!(
        euid == "0",
        "the netns suites need root (they create network namespaces, veths and TUN \
         devices); euid is {euid}. Run as root: \
         `PD_DATAPLANE=... cargo test -p portdistrict-netns-tests --release -- --test-threads=2`"
    );
}

/// A network namespace `pd-<pid>-<n>-<role>` with `lo` up; deleted on drop, after
/// killing any process still inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace (`ip netns add`) and brings its loopback up.
    pub fn new(role: &str) -> Netns {
        require_root();
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| {
            sweep_stale_namespaces();
            sweep_stale_sockets();
        });
        let name = unique_name(role);
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A namespace `role` joined to `router` by a veth on `subnet` (this side `.1`, the
    /// router `.2`), with its IPv4 and IPv6 default routes via the router.
    pub fn behind(role: &str, router: &Netns, subnet: u8) -> (Netns, Veth) {
        let ns = Netns::new(role);
        let link = Veth::new(&ns, router, subnet);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &link.v4(2).to_string(),
        ]);
        let v6 = link.v6(2).to_string();
        ns.exec(&["ip", "-6", "route", "add", "default", "via", &v6]);
        (ns, link)
    }

    /// Turns on IPv4 and IPv6 forwarding in this namespace (a router).
    pub fn enable_forwarding(&self) {
        self.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        self.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME argv...`, ready to spawn.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its output, whatever the status.
    pub fn try_exec(&self, argv: &[&str]) -> Output {
        let out = self.command(argv).output();
        out.unwrap_or_else(|e| panic!("cannot start ip netns exec {}: {e}", self.name))
    }

    /// Runs `argv` inside the namespace; panics with the command, stdout and stderr
    /// unless it exits 0; returns stdout.
    pub fn exec(&self, argv: &[&str]) -> String {
        let out = self.try_exec(argv);
        if !out.status.success() {
            let full: Vec<&str> = ["ip", "netns", "exec", &self.name]
                .into_iter()
                .chain(argv.iter().copied())
                .collect();
            panic!("{}", describe_failure(&full, &out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether interface `ifname` exists in this namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        try_run(&["ip", "-n", &self.name, "link", "show", "dev", ifname])
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        terminate_namespace_pids(&self.name);
        let out = try_run(&["ip", "netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: {}",
                describe_failure(&["ip", "netns", "del", &self.name], &out)
            );
        }
    }
}

/// The processes inside namespace `name`.
fn namespace_pids(name: &str) -> Vec<String> {
    let pids = try_run(&["ip", "netns", "pids", name]);
    String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// SIGKILLs every process inside namespace `name` (only ever one this harness created).
fn kill_namespace_pids(name: &str) {
    for pid in namespace_pids(name) {
        let _ = try_run(&["kill", "-KILL", &pid]);
    }
}

/// Ends every process inside namespace `name`: SIGTERM first, so that a dataplane
/// removes its UAPI socket and a provider or daemon takes its changes back, then,
/// after at most 3 s, SIGKILL for what is left.
fn terminate_namespace_pids(name: &str) {
    let pids = namespace_pids(name);
    if pids.is_empty() {
        return;
    }
    for pid in &pids {
        let _ = try_run(&["kill", "-TERM", pid]);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline && !namespace_pids(name).is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    kill_namespace_pids(name);
}

/// Deletes namespaces left by earlier runs of this harness that were killed before
/// their guards ran (`pd-<pid>-...` whose pid no longer exists).
fn sweep_stale_namespaces() {
    let list = try_run(&["ip", "netns", "list"]);
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("pd-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_namespace_pids(name);
            let _ = try_run(&["ip", "netns", "del", name]);
        }
    }
}

/// Interface-name prefixes this harness uses (`unique_ifname`), whose UAPI sockets
/// [`sweep_stale_sockets`] may remove.
const HARNESS_PREFIXES: [&str; 6] = ["pdw", "pdx", "pdu", "pds", "pdh", "pdv"];

/// Removes `/var/run/wireguard/<harness prefix>*.sock` files nobody listens on any more
/// (left by implementations SIGKILLed together with an earlier run of this harness).
fn sweep_stale_sockets() {
    let Ok(dir) = std::fs::read_dir("/var/run/wireguard") else {
        return;
    };
    for path in dir.filter_map(|e| Some(e.ok()?.path())) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let ours = HARNESS_PREFIXES.iter().any(|p| name.starts_with(p));
        if !(ours && name.ends_with(".sock")) {
            continue;
        }
        let refused = std::os::unix::net::UnixStream::connect(&path)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
        if refused {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// A veth pair between two namespaces, side `a` with `10.77.<subnet>.1/24` and
/// `fd77:0:0:<subnet>::1/64`, side `b` with `.2` / `::2` (IPv6 with `nodad`, usable at
/// once). Deleted on drop.
#[derive(Debug)]
pub struct Veth {
    a_ns: String,
    a_name: String,
    b_name: String,
    subnet: u8,
}

impl Veth {
    /// Creates the pair, addresses both ends and brings them up.
    pub fn new(a: &Netns, b: &Netns, subnet: u8) -> Veth {
        let base = unique_ifname("pdv");
        let veth = Veth {
            a_ns: a.name().to_owned(),
            a_name: format!("{base}a"),
            b_name: format!("{base}b"),
            subnet,
        };
        run(&[
            "ip",
            "link",
            "add",
            &veth.a_name,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &veth.b_name,
            "netns",
            b.name(),
        ]);
        veth.setup_end(a, &veth.a_name, 1);
        veth.setup_end(b, &veth.b_name, 2);
        veth
    }

    fn setup_end(&self, ns: &Netns, ifname: &str, host: u8) {
        let v4 = format!("{}/24", self.v4(host));
        let v6 = format!("{}/64", self.v6(host));
        ns.exec(&["ip", "addr", "add", &v4, "dev", ifname]);
        ns.exec(&["ip", "addr", "add", &v6, "dev", ifname, "nodad"]);
        ns.exec(&["ip", "link", "set", ifname, "up"]);
    }

    /// `10.77.<subnet>.<host>`.
    pub fn v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, host)
    }

    /// `fd77:0:0:<subnet>::<host>`.
    pub fn v6(&self, host: u8) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd77,
            0,
            0,
            u16::from(self.subnet),
            0,
            0,
            0,
            u16::from(host),
        )
    }

    /// An address in this pair's subnets: `host` 1 is side a, 2 is side b.
    pub fn addr(&self, family: Family, host: u8) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.v4(host)),
            Family::V6 => IpAddr::V6(self.v6(host)),
        }
    }

    /// Side a's address of `family`.
    pub fn a_addr(&self, family: Family) -> IpAddr {
        self.addr(family, 1)
    }

    /// Side b's address of `family`.
    pub fn b_addr(&self, family: Family) -> IpAddr {
        self.addr(family, 2)
    }

    /// Side a's interface name.
    pub fn a_name(&self) -> &str {
        &self.a_name
    }

    /// Side b's interface name.
    pub fn b_name(&self) -> &str {
        &self.b_name
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Fails harmlessly if the namespace is already gone (the pair went with it).
        let _ = try_run(&["ip", "-n", &self.a_ns, "link", "del", &self.a_name]);
    }
}
