//! What an exit-node provider lets through, and what it leaves behind: a consumer in
//! system mode (`portdistrict use`) reaches the internet through `exit serve` but gets
//! no answer from a cloud metadata address (169.254.169.254, fd00:ec2::254), from a
//! host on the uplink's subnet (also one added while serving), from the provider's
//! other network or from private ranges; `--allow-dest` opens one exception. A
//! neighbour on the uplink that routes through the provider into the network behind it
//! gets nothing forwarded (IPv4 one way, IPv6 both ways). SIGTERM restores every
//! interface's `forwarding` and `accept_ra` exactly. State files are 0600 and state and
//! run directories 0700, and opening them fixes looser modes.
//!
//! ```text
//!  consumer --61-- internet (router; echo, metadata on its lo) --62-- provider --63-- lan
//! ```

use portdistrict_netns_tests::exit::{pings, system_use_args, Provider};
use portdistrict_netns_tests::{unique_ifname, wait_until, CliMachine, Netns, TempDir, Veth};
use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// "The internet": public addresses on the internet namespace's loopback.
const PUBLIC_V4: &str = "198.51.100.1";
const PUBLIC_V6: &str = "2001:db8:100::1";
/// Cloud metadata services, also on the internet namespace's loopback (as they are
/// reachable from a cloud VM's uplink).
const METADATA_V4: &str = "169.254.169.254";
const METADATA_V6: &str = "fd00:ec2::254";

/// Pings `host` until it answers (10 s at most: the first handshake).
fn reaches(ns: &Netns, host: &str) -> bool {
    wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        pings(ns, host)
    })
}

/// Prints the source of the first datagram on port 7000 (IPv4 and IPv6), or "none"
/// after 3 s.
const RECEIVER: &str = r#"
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 7000))
s.settimeout(3)
print("ready", flush=True)
try:
    print(s.recvfrom(64)[1][0], flush=True)
except socket.timeout:
    print("none", flush=True)
"#;

/// Sends a few datagrams to `dst`:7000.
const SENDER: &str = r#"
import socket, sys, time
dst = sys.argv[1]
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
for _ in range(10):
    try:
        s.sendto(b"hi", (dst, 7000))
    except OSError:
        pass
    time.sleep(0.1)
"#;

/// Whether a datagram from `from` to `dst` (an address of `to`) arrives.
fn arrives(from: &Netns, to: &Netns, dst: &str) -> bool {
    let mut rx = to
        .command(&["python3", "-c", RECEIVER])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("python3");
    let mut out = std::io::BufReader::new(rx.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    from.exec(&["python3", "-c", SENDER, dst]);
    line.clear();
    out.read_line(&mut line).unwrap();
    let _ = rx.wait();
    line.trim() != "none"
}

/// Independent findings, reported together (so that one run shows every one).
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            eprintln!("PROBLEM: {what}");
            self.0.push(what);
        }
    }

    fn assert_none(&self) {
        assert!(self.0.is_empty(), "{:#?}", self.0);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Every interface's (and `default`'s) IPv4 and IPv6 `forwarding` and IPv6
/// `accept_ra`, and `net.ipv4.ip_forward`.
fn forwarding_sysctls(ns: &Netns) -> String {
    let out = ns.exec(&[
        "sysctl",
        "net.ipv4.conf",
        "net.ipv6.conf",
        "net.ipv4.ip_forward",
    ]);
    out.lines()
        .filter(|l| {
            l.contains(".forwarding = ") || l.contains(".accept_ra = ") || l.contains("ip_forward")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A provider namespace `<prefix>-provider` with an uplink to `internet` on
/// `uplink_subnet` and a LAN namespace `<prefix>-lan` behind it on `lan_subnet`: both
/// route by default through the other end, and the internet routes the LAN via the
/// provider (a neighbour on the uplink that would use the provider as its router).
fn provider_with_lan(
    internet: &Netns,
    prefix: &str,
    uplink_subnet: u8,
    lan_subnet: u8,
) -> (Netns, Veth, Netns, Veth) {
    let pns = Netns::new(&format!("{prefix}-provider"));
    let uplink = Veth::new(&pns, internet, uplink_subnet);
    let lan_ns = Netns::new(&format!("{prefix}-lan"));
    let lan = Veth::new(&pns, &lan_ns, lan_subnet);
    for (ns, flag, via) in [
        (&pns, "-4", uplink.v4(2).to_string()),
        (&pns, "-6", uplink.v6(2).to_string()),
        (&lan_ns, "-4", lan.v4(1).to_string()),
        (&lan_ns, "-6", lan.v6(1).to_string()),
    ] {
        ns.exec(&["ip", flag, "route", "add", "default", "via", &via]);
    }
    internet.exec(&[
        "ip",
        "route",
        "add",
        &format!("{}/24", lan.v4(0)),
        "via",
        &uplink.v4(1).to_string(),
    ]);
    internet.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        &format!("{}/64", lan.v6(0)),
        "via",
        &uplink.v6(1).to_string(),
    ]);
    (pns, uplink, lan_ns, lan)
}

/// A consumer in system mode; `use off` on drop.
struct Consumer {
    machine: CliMachine,
    ifname: String,
    on: bool,
}

impl Consumer {
    fn use_on(&mut self, invite: &str) {
        let args = system_use_args(invite, &self.ifname, "none", "10s");
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self
            .machine
            .command("portdistrict", &refs)
            .output()
            .expect("portdistrict use");
        self.on = true;
        assert!(
            out.status.success(),
            "use failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn use_off(&mut self) {
        if std::mem::take(&mut self.on) {
            let out = self
                .machine
                .command("portdistrict", &["use", "off"])
                .output()
                .expect("use off");
            assert!(
                out.status.success(),
                "use off: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.on {
            let _ = self
                .machine
                .command("portdistrict", &["use", "off"])
                .output();
        }
    }
}

#[test]
fn provider_isolates_consumers_and_neighbours_and_restores_the_machine() {
    let internet = Netns::new("xi-internet");
    internet.enable_forwarding();
    for a in [
        format!("{PUBLIC_V4}/32"),
        format!("{PUBLIC_V6}/128"),
        format!("{METADATA_V4}/32"),
        format!("{METADATA_V6}/128"),
    ] {
        let mut argv = vec!["ip", "addr", "add", &a, "dev", "lo"];
        if a.contains(':') {
            argv.push("nodad");
        }
        internet.exec(&argv);
    }

    let (pns, uplink, lan_ns, lan) = provider_with_lan(&internet, "xi", 62, 63);
    // A public-looking subnet on the uplink too: blocked only as the uplink's own.
    pns.exec(&[
        "ip",
        "addr",
        "add",
        "203.0.113.1/24",
        "dev",
        uplink.a_name(),
    ]);
    internet.exec(&[
        "ip",
        "addr",
        "add",
        "203.0.113.2/24",
        "dev",
        uplink.b_name(),
    ]);
    // Per-interface values that `net.ipv6.conf.all.forwarding` would overwrite.
    pns.exec(&[
        "sysctl",
        "-q",
        "-w",
        &format!("net.ipv6.conf.{}.forwarding=1", lan.a_name()),
        &format!("net.ipv6.conf.{}.accept_ra=0", lan.a_name()),
        &format!("net.ipv6.conf.{}.accept_ra=1", uplink.a_name()),
        "net.ipv6.conf.lo.accept_ra=2",
    ]);
    let sysctls_before = forwarding_sysctls(&pns);
    assert!(
        !arrives(&internet, &lan_ns, &lan.v4(2).to_string()),
        "the provider forwarded before exit serve"
    );

    let provider = Provider {
        machine: CliMachine::with_run_dir(pns, TempDir::new("xi-pstate"), TempDir::new("xi-prun")),
        ifname: unique_ifname("pdx"),
        uplink: uplink.a_name().to_owned(),
    };
    let endpoint = format!("{}:51820", uplink.v4(1));

    let mut problems = Problems::default();
    // (5) State files 0600, directories 0700; opening them fixes looser modes.
    let invite = provider.run(&["exit", "invite", "--endpoint", &endpoint, "--uses", "2"]);
    let exit_dir = provider.machine.state.path().join("exit");
    let store = exit_dir.join("store.json");
    let m = mode(&store);
    problems.check(m == 0o600, format!("store.json (invite tokens) is {m:o}"));
    problems.check(mode(&exit_dir) == 0o700, "exit dir not 0700");
    chmod(&store, 0o644);
    chmod(&exit_dir, 0o755);
    chmod(provider.machine.state.path(), 0o755);
    provider.run(&["exit", "list"]);
    let modes = (
        mode(&store),
        mode(&exit_dir),
        mode(provider.machine.state.path()),
    );
    problems.check(
        modes == (0o600, 0o700, 0o700),
        format!(
            "opening the state left store.json, exit/, state/ at {:o}, {:o}, {:o}",
            modes.0, modes.1, modes.2
        ),
    );
    chmod(&provider.machine.run_dir(), 0o755);

    let mut serve = provider.serve(PUBLIC_V4, &[]);
    let modes = (
        mode(&provider.machine.run_dir()),
        mode(&provider.machine.run_dir().join("exit-undo.json")),
    );
    problems.check(
        modes == (0o700, 0o600),
        format!("run dir and exit-undo.json at {:o}, {:o}", modes.0, modes.1),
    );

    // (2) The uplink's neighbour routes into the provider's LAN: nothing is forwarded,
    // IPv4 or IPv6, nor IPv6 from the LAN to the neighbour.
    problems.check(
        !arrives(&internet, &lan_ns, &lan.v4(2).to_string()),
        "IPv4 from the uplink forwarded into the provider's LAN",
    );
    problems.check(
        !arrives(&internet, &lan_ns, &lan.v6(2).to_string()),
        "IPv6 from the uplink forwarded into the provider's LAN",
    );
    problems.check(
        !arrives(&lan_ns, &internet, &uplink.v6(2).to_string()),
        "IPv6 from the provider's LAN forwarded to the uplink",
    );

    // (1) A consumer reaches the internet, and nothing behind the provider's uplink.
    let (cns, _link) = Netns::behind("xi-consumer", &internet, 61);
    let mut consumer = Consumer {
        machine: CliMachine::with_run_dir(cns, TempDir::new("xi-cstate"), TempDir::new("xi-crun")),
        ifname: unique_ifname("pdu"),
        on: false,
    };
    consumer.use_on(&invite);
    let c = &consumer.machine.ns;
    assert!(
        reaches(c, PUBLIC_V4),
        "the consumer reaches the internet (v4)"
    );
    assert!(
        reaches(c, PUBLIC_V6),
        "the consumer reaches the internet (v6)"
    );
    for blocked in [
        METADATA_V4.to_owned(),
        METADATA_V6.to_owned(),
        "203.0.113.2".to_owned(),
        uplink.v4(2).to_string(),
        uplink.v6(2).to_string(),
        lan.v4(2).to_string(),
        lan.v6(2).to_string(),
    ] {
        problems.check(
            !pings(c, &blocked),
            format!("the consumer reached {blocked}"),
        );
    }
    // An address the uplink gets while serving is blocked at the next sync.
    internet.exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", uplink.b_name()]);
    assert!(
        reaches(c, "192.0.2.2"),
        "192.0.2.2 is the internet until then"
    );
    provider
        .machine
        .ns
        .exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", uplink.a_name()]);
    assert!(
        pings(&provider.machine.ns, "192.0.2.2"),
        "192.0.2.2 is now on the uplink's subnet"
    );
    let cut = wait_until(Duration::from_secs(15), Duration::from_millis(500), || {
        !pings(c, "192.0.2.2")
    });
    problems.check(cut, "the uplink's new subnet stays reachable");

    // SIGTERM: every interface's forwarding and accept_ra as they were, table gone.
    let status = serve.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit serve: {status:?}"
    );
    let after = forwarding_sysctls(&provider.machine.ns);
    problems.check(
        after == sysctls_before,
        format!("sysctls not restored:\nbefore:\n{sysctls_before}after:\n{after}"),
    );
    let tables = provider.machine.ns.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("portdistrict_exit"), "{tables}");
    problems.assert_none();

    // --allow-dest opens one exception, and only that one.
    let mut serve = provider.serve(PUBLIC_V4, &["--allow-dest", "169.254.169.254/32"]);
    // The consumer's session died with the old dataplane: WireGuard hands shake again
    // once data has gone unanswered for 15 s.
    let back = wait_until(Duration::from_secs(40), Duration::from_millis(500), || {
        pings(c, PUBLIC_V4)
    });
    assert!(back, "the consumer is back");
    assert!(
        reaches(c, METADATA_V4),
        "--allow-dest opens the metadata address"
    );
    assert!(
        !pings(c, "203.0.113.2"),
        "the uplink's subnet stays blocked"
    );
    assert!(
        !pings(c, METADATA_V6),
        "the IPv6 metadata address stays blocked"
    );
    let status = serve.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit serve: {status:?}"
    );
    assert_eq!(forwarding_sysctls(&provider.machine.ns), sysctls_before);
    consumer.use_off();
}

/// A provider on a machine that routed before `exit serve`: its forwarding between the
/// uplink and its LAN goes on while serving, and its sysctls are as before afterwards.
#[test]
fn a_router_keeps_routing_while_it_serves() {
    let internet = Netns::new("xr-internet");
    let (pns, uplink, lan_ns, lan) = provider_with_lan(&internet, "xr", 72, 73);
    pns.enable_forwarding();
    let sysctls_before = forwarding_sysctls(&pns);
    let routes = |when: &str| {
        assert!(
            arrives(&internet, &lan_ns, &lan.v4(2).to_string()),
            "{when}: IPv4 uplink -> LAN"
        );
        assert!(
            arrives(&internet, &lan_ns, &lan.v6(2).to_string()),
            "{when}: IPv6 uplink -> LAN"
        );
        assert!(
            arrives(&lan_ns, &internet, &uplink.v6(2).to_string()),
            "{when}: IPv6 LAN -> uplink"
        );
    };
    routes("before exit serve");
    let provider = Provider {
        machine: CliMachine::with_run_dir(pns, TempDir::new("xr-pstate"), TempDir::new("xr-prun")),
        ifname: unique_ifname("pdx"),
        uplink: uplink.a_name().to_owned(),
    };
    let mut serve = provider.serve(PUBLIC_V4, &[]);
    routes("while serving");
    let status = serve.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit serve: {status:?}"
    );
    assert_eq!(forwarding_sysctls(&provider.machine.ns), sysctls_before);
    routes("after exit serve");
}
