//! Consumer system mode across a reboot, lockdown mode, and a first `use` that fails.
//!
//! ```text
//!  consumer --61-- internet (router, echo on 198.51.100.1 / 2001:db8:100::1) --62-- provider
//! ```
//!
//! A reboot is simulated in the consumer's namespace: the dataplane is killed (its
//! tunnel goes with it), the nftables ruleset, the `ip rule`s and table 51820 are
//! flushed back to a fresh boot's, `src_valid_mark` is reset and the run directory
//! emptied; the resolver file (on disk) stays. Then the boot unit's command, `use
//! restore`, must block everything (judged by traffic and by a capture on the
//! internet side: nothing leaves), `use` must bring the tunnel back, and `use off` must
//! leave the machine exactly as before the first `use`.

use portdistrict_netns_tests::{
    find_daemon_pids, unique_ifname, uut_binary, wait_until, ChildGuard, Netns, TempDir, Veth,
};
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const ECHO_V4: &str = "198.51.100.1";
const ECHO_V6: &str = "2001:db8:100::1";

fn cli() -> String {
    uut_binary()
        .with_file_name("portdistrict")
        .to_string_lossy()
        .into_owned()
}

/// UDP and TCP on ports 7000 and 53 of each address given: answers with the client's
/// address.
const ECHO_SERVER: &str = r#"
import socket, threading, sys
def sock(fam, kind):
    s = socket.socket(fam, kind)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return s
def udp(fam, addr, port):
    s = sock(fam, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        d, a = s.recvfrom(128)
        s.sendto(a[0].encode(), a)
def tcp(fam, addr, port):
    s = sock(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    while True:
        c, a = s.accept()
        c.sendall(a[0].encode())
        c.close()
for addr in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    for port in (7000, 53):
        for f in (udp, tcp):
            threading.Thread(target=f, args=(fam, addr, port), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// `udp|tcp HOST PORT`: prints what the echo service answered, or `none`.
const ECHO_CLIENT: &str = r#"
import socket, sys
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if mode == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(1)
        for _ in range(3):
            s.sendto(b"who", (host, port))
            try:
                print(s.recv(128).decode())
                break
            except socket.timeout:
                pass
        else:
            print("none")
    else:
        s = socket.create_connection((host, port), timeout=2)
        print(s.recv(128).decode())
except OSError as e:
    print("none", e)
"#;

fn echo_port(ns: &Netns, mode: &str, host: &str, port: &str) -> String {
    let out = ns.exec(&["python3", "-c", ECHO_CLIENT, mode, host, port]);
    out.split_whitespace().next().unwrap_or("none").to_owned()
}

fn echo(ns: &Netns, mode: &str, host: &str) -> String {
    echo_port(ns, mode, host, "7000")
}

fn pings(ns: &Netns, host: &str) -> bool {
    ns.try_exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", host])
        .status
        .success()
}

/// Everything the consumer might send to the internet fails.
fn assert_all_blocked(ns: &Netns, when: &str) {
    for mode in ["udp", "tcp"] {
        for host in [ECHO_V4, ECHO_V6] {
            assert_eq!(
                echo(ns, mode, host),
                "none",
                "{when}: {mode} to {host} got out"
            );
        }
    }
    assert_eq!(
        echo_port(ns, "udp", ECHO_V4, "53"),
        "none",
        "{when}: direct DNS got out"
    );
    assert!(!pings(ns, ECHO_V4), "{when}: ping v4 got out");
    assert!(!pings(ns, ECHO_V6), "{when}: ping v6 got out");
}

/// The internet: routes between the veths, the echo service on its loopback.
struct Internet {
    ns: Netns,
    _echo: ChildGuard,
}

impl Internet {
    fn new() -> Internet {
        let ns = Netns::new("cb-internet");
        ns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
        ns.exec(&["ip", "addr", "add", &format!("{ECHO_V4}/32"), "dev", "lo"]);
        ns.exec(&["ip", "addr", "add", &format!("{ECHO_V6}/128"), "dev", "lo"]);
        let mut cmd = ns.command(&["python3", "-c", ECHO_SERVER, ECHO_V4, ECHO_V6]);
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        let mut echo = ChildGuard::spawn("echo server", &mut cmd);
        let mut ready = String::new();
        std::io::BufReader::new(echo.child_mut().stdout.take().expect("piped"))
            .read_line(&mut ready)
            .expect("echo server output");
        assert_eq!(ready.trim(), "ready");
        Internet { ns, _echo: echo }
    }
}

/// Stops `exit serve` with SIGTERM (it takes its plan back), SIGKILL after 5 s.
struct Serve(ChildGuard);

impl Drop for Serve {
    fn drop(&mut self) {
        if self.0.try_status().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.pid().to_string()])
                .status();
            let _ = self.0.wait_timeout(Duration::from_secs(5));
        }
    }
}

/// The provider running `exit serve` (IPv6 offered) behind veth 62.
struct Provider {
    ns: Netns,
    state: TempDir,
    run: TempDir,
    uplink: Veth,
    _serve: Option<Serve>,
}

impl Provider {
    fn new(internet: &Internet) -> Provider {
        let ns = Netns::new("cb-provider");
        let uplink = Veth::new(&ns, &internet.ns, 62);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &uplink.v4(2).to_string(),
        ]);
        ns.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &uplink.v6(2).to_string(),
        ]);
        let mut p = Provider {
            ns,
            state: TempDir::new("cb-pstate"),
            run: TempDir::new("cb-prun"),
            uplink,
            _serve: None,
        };
        let ifname = unique_ifname("pdx");
        let (uplink_name, endpoint) = (p.uplink.a_name().to_owned(), p.endpoint());
        let mut cmd = p.command(&[
            "exit",
            "serve",
            "--uplink",
            &uplink_name,
            "--interface",
            &ifname,
            "--endpoint",
            &endpoint,
            "--ipv6",
            "on",
            "--dns-upstream",
            ECHO_V4,
        ]);
        cmd.stderr(Stdio::piped());
        let mut child = ChildGuard::spawn("portdistrict exit serve", &mut cmd);
        let stderr = child.child_mut().stderr.take().expect("piped");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut log = String::new();
        let up = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    log.push_str(&l);
                    log.push('\n');
                    if l.contains("exit node up") {
                        break true;
                    }
                }
                _ => break false,
            }
        };
        assert!(up, "exit serve did not come up:\n{log}");
        std::thread::spawn(move || for _ in lines.by_ref() {});
        p._serve = Some(Serve(child));
        p
    }

    fn endpoint(&self) -> String {
        format!("{}:51820", self.uplink.v4(1))
    }

    fn command(&self, args: &[&str]) -> Command {
        let (st, rd) = (
            self.state.path().to_string_lossy().into_owned(),
            self.run.path().to_string_lossy().into_owned(),
        );
        let mut argv = vec![cli(), "--state-dir".into(), st, "--run-dir".into(), rd];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = self.ns.command(&refs);
        cmd.env("PD_DATAPLANE", uut_binary()).stdin(Stdio::null());
        cmd
    }

    fn invite(&self) -> String {
        let out = self
            .command(&["exit", "invite"])
            .output()
            .expect("exit invite");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// `/etc/netns/NS/resolv.conf` (what `ip netns exec NS` shows as /etc/resolv.conf).
struct EtcNetns {
    dir: PathBuf,
    created_parent: bool,
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.created_parent {
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
}

/// The consumer: namespace, uplink veth 61, state and run dirs, resolver file.
struct Consumer {
    ns: Netns,
    link: Veth,
    state: TempDir,
    run: TempDir,
    ifname: String,
    etc: EtcNetns,
}

impl Consumer {
    fn new(internet: &Internet) -> Consumer {
        let ns = Netns::new("cb-consumer");
        let link = Veth::new(&ns, &internet.ns, 61);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &link.v4(2).to_string(),
        ]);
        ns.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &link.v6(2).to_string(),
        ]);
        let settled = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let out = ns.exec(&[
                "ip",
                "-6",
                "addr",
                "show",
                "dev",
                link.a_name(),
                "scope",
                "link",
            ]);
            out.contains("fe80::") && !out.contains("tentative")
        });
        assert!(settled, "no link-local address on the consumer's uplink");
        let parent = PathBuf::from("/etc/netns");
        let created_parent = !parent.exists();
        let dir = parent.join(ns.name());
        std::fs::create_dir_all(&dir).expect("/etc/netns dir");
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {ECHO_V4}\n")).expect("resolv");
        Consumer {
            ns,
            link,
            state: TempDir::new("cb-state"),
            run: TempDir::new("cb-run"),
            ifname: unique_ifname("pdu"),
            etc: EtcNetns {
                dir,
                created_parent,
            },
        }
    }

    fn resolv(&self) -> PathBuf {
        self.etc.dir.join("resolv.conf")
    }

    fn command(&self, args: &[&str]) -> Command {
        let (st, rd) = (
            self.state.path().to_string_lossy().into_owned(),
            self.run.path().to_string_lossy().into_owned(),
        );
        let mut argv = vec![cli(), "--state-dir".into(), st, "--run-dir".into(), rd];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = self.ns.command(&refs);
        cmd.env("PD_DATAPLANE", uut_binary()).stdin(Stdio::null());
        cmd
    }

    fn try_use(&self, invite: &str) -> Output {
        let resolv = self.resolv().to_string_lossy().into_owned();
        self.command(&[
            "use",
            invite,
            "--mode",
            "system",
            "--interface",
            &self.ifname,
            "--resolv-conf",
            &resolv,
            "--timeout",
            "8s",
        ])
        .output()
        .expect("portdistrict use")
    }

    fn use_ok(&self, invite: &str) -> String {
        let out = self.try_use(invite);
        assert!(
            out.status.success(),
            "use failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("portdistrict");
        assert!(
            out.status.success(),
            "portdistrict {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Rules, routes of every table, the nftables ruleset, the sysctl, the resolver file.
    fn snapshot(&self) -> String {
        let mut s = String::new();
        for argv in [
            &["ip", "-4", "rule"][..],
            &["ip", "-6", "rule"],
            &["ip", "-4", "route", "show", "table", "all"],
            &["ip", "-6", "route", "show", "table", "all"],
            &["nft", "-s", "list", "ruleset"],
            &["sysctl", "net.ipv4.conf.all.src_valid_mark"],
        ] {
            s.push_str(&format!("$ {}\n{}", argv.join(" "), self.ns.exec(argv)));
        }
        s.push_str(&std::fs::read_to_string(self.resolv()).unwrap_or_default());
        s
    }

    /// What a reboot takes: the dataplane and its tunnel, the ruleset, the rules (back
    /// to the kernel's defaults), table 51820, the sysctl, the run directory.
    fn reboot(&self) {
        for pid in find_daemon_pids(&uut_binary(), &self.ifname) {
            self.ns.exec(&["kill", "-KILL", &pid.to_string()]);
        }
        assert!(
            wait_until(Duration::from_secs(5), Duration::from_millis(50), || !self
                .ns
                .has_link(&self.ifname)),
            "the tunnel outlived its dataplane"
        );
        self.ns.exec(&["nft", "flush", "ruleset"]);
        for (fam, defaults) in [
            ("-4", &["32766 main", "32767 default"][..]),
            ("-6", &["32766 main"]),
        ] {
            self.ns.exec(&["ip", fam, "rule", "flush"]);
            for d in defaults {
                let (prio, table) = d.split_once(' ').unwrap();
                self.ns
                    .exec(&["ip", fam, "rule", "add", "priority", prio, "table", table]);
            }
            let _ = self
                .ns
                .try_exec(&["ip", fam, "route", "flush", "table", "51820"]);
        }
        self.ns
            .exec(&["sysctl", "-q", "-w", "net.ipv4.conf.all.src_valid_mark=0"]);
        for e in std::fs::read_dir(self.run.path()).expect("run dir") {
            let p = e.expect("entry").path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.command(&["use", "off"]).output();
        let _ = self.command(&["use", "lockdown", "off"]).output();
    }
}

/// tcpdump of what arrives on one interface (`-Q in`).
struct Capture {
    child: ChildGuard,
    file: PathBuf,
    ns_name: String,
    _dir: TempDir,
}

impl Capture {
    fn start(ns: &Netns, ifname: &str) -> Capture {
        let dir = TempDir::new("cb-pcap");
        let file = dir.path().join("in.pcap");
        let f = file.to_string_lossy().into_owned();
        let mut cmd = ns.command(&[
            "tcpdump",
            "--immediate-mode",
            "-Q",
            "in",
            "-i",
            ifname,
            "-U",
            "-n",
            "-w",
            &f,
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = ChildGuard::spawn("tcpdump", &mut cmd);
        assert!(
            wait_until(Duration::from_secs(5), Duration::from_millis(50), || file
                .metadata()
                .is_ok_and(|m| m.len() > 0)),
            "tcpdump did not start"
        );
        Capture {
            child,
            file,
            ns_name: ns.name().to_owned(),
            _dir: dir,
        }
    }

    /// The packets that are neither WireGuard to `endpoint`, nor ARP, neighbour or
    /// router discovery, nor DHCP.
    fn leaks(mut self, endpoint: &str) -> Vec<String> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.pid().to_string()])
            .status();
        let _ = self.child.wait_timeout(Duration::from_secs(3));
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "tcpdump", "-nn", "-r"])
            .arg(&self.file)
            .output()
            .expect("tcpdump -r");
        let wg = format!("> {}: UDP", endpoint.replace(':', "."));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                !(l.contains(&wg)
                    || l.contains(" ARP,")
                    || l.contains("ICMP6, neighbor solicitation")
                    || l.contains("ICMP6, neighbor advertisement")
                    || l.contains("ICMP6, router solicitation")
                    || l.contains(".68 > ")
                    || l.contains(".546 > "))
            })
            .map(str::to_owned)
            .collect()
    }
}

#[test]
fn reboot_restores_the_kill_switch_and_use_off_leaves_nothing() {
    let internet = Internet::new();
    let provider = Provider::new(&internet);
    let c = Consumer::new(&internet);
    let before = c.snapshot();
    let own = c.link.v4(1).to_string();
    let via_provider = provider.uplink.v4(1).to_string();
    let invite = provider.invite();

    assert!(c.use_ok(&invite).contains("system mode on"));
    assert_eq!(echo(&c.ns, "udp", ECHO_V4), via_provider);

    // Without the boot unit a reboot leaves the machine open: what the issue found.
    c.reboot();
    assert_eq!(
        echo(&c.ns, "udp", ECHO_V4),
        own,
        "the simulated reboot opened the machine"
    );

    // The boot unit's command: blocked again, with no tunnel and no dataplane.
    let capture = Capture::start(&internet.ns, c.link.b_name());
    let said = c.run(&["use", "restore"]);
    assert!(said.contains("kill switch restored"), "{said}");
    assert_all_blocked(&c.ns, "after the reboot and `use restore`");
    let status = c.run(&["use", "status"]);
    assert!(status.contains("kill switch: on"), "{status}");
    assert!(status.contains("tunnel: down"), "{status}");
    // `use restore` again changes nothing (the rules are not stacked).
    let restored = c.snapshot();
    c.run(&["use", "restore"]);
    assert_eq!(
        c.snapshot(),
        restored,
        "a second `use restore` changed the machine"
    );
    let leaked = capture.leaks(&provider.endpoint());
    assert!(
        leaked.is_empty(),
        "left the consumer after `use restore`: {leaked:#?}"
    );

    // `use` again brings the tunnel back: its rules are replayed, or nothing flows.
    assert!(c.use_ok(&invite).contains("system mode on"));
    assert_eq!(echo(&c.ns, "tcp", ECHO_V4), via_provider);
    assert_eq!(
        echo(&c.ns, "udp", ECHO_V6),
        provider.uplink.v6(1).to_string()
    );

    // Another reboot, and `use off` straight after the boot unit: nothing left behind,
    // the resolver file back.
    c.reboot();
    c.run(&["use", "restore"]);
    assert_all_blocked(&c.ns, "after the second reboot");
    let off = c.run(&["use", "off"]);
    assert!(off.contains("system mode off"), "{off}");
    assert_eq!(
        c.snapshot(),
        before,
        "use off after a reboot did not restore the machine"
    );
    assert_eq!(echo(&c.ns, "udp", ECHO_V4), own, "open again");
    assert!(c.run(&["use", "off"]).contains("nothing to do"));
    // With nothing on, the boot unit does nothing.
    assert!(c.run(&["use", "restore"]).contains("nothing to restore"));
    assert_eq!(c.snapshot(), before);
}

#[test]
fn lockdown_blocks_without_a_tunnel_until_turned_off() {
    let internet = Internet::new();
    let provider = Provider::new(&internet);
    let c = Consumer::new(&internet);
    let before = c.snapshot();
    let own = c.link.v4(1).to_string();
    let via_provider = provider.uplink.v4(1).to_string();
    assert!(c
        .run(&["use", "lockdown", "status"])
        .contains("lockdown: off"));

    let capture = Capture::start(&internet.ns, c.link.b_name());
    assert!(c.run(&["use", "lockdown", "on"]).contains("lockdown on"));
    assert_all_blocked(&c.ns, "lockdown, no tunnel");
    let leaked = capture.leaks(&provider.endpoint());
    assert!(
        leaked.is_empty(),
        "left the consumer under lockdown: {leaked:#?}"
    );
    let status = c.run(&["use", "lockdown", "status"]);
    assert!(
        status.contains("lockdown: on (the firewall blocks)"),
        "{status}"
    );
    assert!(c.run(&["use", "status"]).contains("lockdown: on"));

    // A reboot: the boot unit puts lockdown back.
    c.reboot();
    assert_eq!(
        echo(&c.ns, "udp", ECHO_V4),
        own,
        "the simulated reboot opened the machine"
    );
    assert!(c.run(&["use", "restore"]).contains("lockdown restored"));
    assert_all_blocked(&c.ns, "lockdown after the reboot");

    // System mode works under lockdown; `use off` keeps everything blocked.
    assert!(c.use_ok(&provider.invite()).contains("system mode on"));
    assert_eq!(echo(&c.ns, "udp", ECHO_V4), via_provider);
    let off = c.run(&["use", "off"]);
    assert!(off.contains("lockdown is on"), "{off}");
    assert_all_blocked(&c.ns, "`use off` under lockdown");
    assert_eq!(
        std::fs::read_to_string(c.resolv()).unwrap(),
        format!("nameserver {ECHO_V4}\n"),
        "the resolver file is back"
    );

    let said = c.run(&["use", "lockdown", "off"]);
    assert!(said.contains("the machine is open"), "{said}");
    assert_eq!(
        c.snapshot(),
        before,
        "lockdown off did not restore the machine"
    );
    assert_eq!(echo(&c.ns, "udp", ECHO_V4), own);
    assert!(c
        .run(&["use", "lockdown", "status"])
        .contains("lockdown: off"));
}

#[test]
fn a_failed_first_use_says_what_the_machine_is() {
    let internet = Internet::new();
    let provider = Provider::new(&internet);
    let c = Consumer::new(&internet);
    let own = c.link.v4(1).to_string();
    // The provider offers IPv6; the consumer has it switched off.
    for k in ["all", "default"] {
        c.ns.exec(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
        ]);
    }
    let before = c.snapshot();

    let out = c.try_use(&provider.invite());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "use should fail without IPv6: {err}");
    assert!(!err.contains("kill switch stays on"), "{err}");
    assert!(err.contains("NOT protected"), "{err}");
    // ... and the machine is what the message says: open, as before.
    assert_eq!(
        c.snapshot(),
        before,
        "a failed first use changed the machine"
    );
    assert_eq!(echo(&c.ns, "udp", ECHO_V4), own, "the machine is open");
    assert!(c.run(&["use", "status"]).contains("system mode: off"));

    // Under lockdown the same failure leaves everything blocked, and says so.
    c.run(&["use", "lockdown", "on"]);
    let out = c.try_use(&provider.invite());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "use should fail without IPv6: {err}");
    assert!(err.contains("everything stays blocked"), "{err}");
    assert_all_blocked(&c.ns, "a failed first use under lockdown");
    c.run(&["use", "lockdown", "off"]);
    assert_eq!(c.snapshot(), before);
}
