//! Network namespaces and veth pairs as RAII guards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::Duration;

use portdistrict_testkit::nat::LabNamespace;
use portdistrict_testkit::netns::{self, listener_gone, Namespace};

use crate::cmd::{describe_failure, run, try_run};
use crate::names::{unique_ifname, unique_name, NAME_PREFIX};
use crate::Family;

/// How long processes still inside a namespace being deleted get between SIGTERM and
/// SIGKILL (so that a dataplane removes its UAPI socket and a provider or daemon takes
/// its changes back).
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Panics with a clear message unless the effective uid is 0: these suites create
/// namespaces, interfaces and TUN devices and cannot run otherwise.
pub fn require_root() {
    let euid = portdistrict_testkit::process::euid()
        .unwrap_or_else(|| panic!("cannot read the effective uid from /proc/self/status"));
    assert!(
        euid == 0,
        "the netns suites need root (they create network namespaces, veths and TUN \
         devices); euid is {euid}. Run as root: \
         `PD_DATAPLANE=... cargo test -p portdistrict-netns-tests --release -- --test-threads=2`"
    );
}

/// A network namespace `pd-<pid>-<n>-<role>` with `lo` up; deleted on drop, after
/// ending any process still inside it (SIGTERM, 3 s, SIGKILL).
#[derive(Debug)]
pub struct Netns(Namespace);

impl Netns {
    /// Creates the namespace (`ip netns add`) and brings its loopback up. The first
    /// namespace of a process sweeps what killed runs left behind
    /// ([`sweep_stale`]).
    pub fn new(role: &str) -> Netns {
        require_root();
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale);
        let name = unique_name(role);
        Netns(Namespace::create(&name, TERM_GRACE).unwrap_or_else(|e| panic!("{e}")))
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
        self.0.name()
    }

    /// `ip netns exec NAME argv...`, ready to spawn.
    pub fn command(&self, argv: &[&str]) -> Command {
        self.0.command(argv)
    }

    /// Runs `argv` inside the namespace and returns its output, whatever the status.
    pub fn try_exec(&self, argv: &[&str]) -> Output {
        let out = self.command(argv).output();
        out.unwrap_or_else(|e| panic!("cannot start ip netns exec {}: {e}", self.name()))
    }

    /// Runs `argv` inside the namespace; panics with the command, stdout and stderr
    /// unless it exits 0; returns stdout.
    pub fn exec(&self, argv: &[&str]) -> String {
        let out = self.try_exec(argv);
        if !out.status.success() {
            let full: Vec<&str> = ["ip", "netns", "exec", self.name()]
                .into_iter()
                .chain(argv.iter().copied())
                .collect();
            panic!("{}", describe_failure(&full, &out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether interface `ifname` exists in this namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        try_run(&["ip", "-n", self.name(), "link", "show", "dev", ifname])
            .status
            .success()
    }
}

/// The NAT lab ([`crate::NatLab`]) builds its namespaces as `Netns`, so that the
/// harness's helpers (daemons, Knot, CLI machines) take them directly.
impl LabNamespace for Netns {
    fn create(role: &str) -> Result<Netns, portdistrict_testkit::Error> {
        Ok(Netns::new(role))
    }

    fn name(&self) -> &str {
        Netns::name(self)
    }
}

/// Interface-name prefixes this harness uses (`unique_ifname`), whose UAPI sockets
/// [`sweep_stale`] may remove.
const HARNESS_PREFIXES: [&str; 6] = ["pdw", "pdx", "pdu", "pds", "pdh", "pdv"];

/// Deletes what earlier runs of this harness left when they were killed before their
/// guards ran: namespaces `pd-<pid>-...` whose pid no longer exists (SIGKILLing what
/// is inside), and `/var/run/wireguard/<harness prefix>*.sock` files nobody listens on
/// any more.
fn sweep_stale() {
    netns::sweep_stale_namespaces(&format!("{NAME_PREFIX}-"));
    netns::sweep_sockets(|name, path| {
        HARNESS_PREFIXES.iter().any(|p| name.starts_with(p)) && listener_gone(path)
    });
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
