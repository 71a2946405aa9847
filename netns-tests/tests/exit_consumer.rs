//! Consumer system mode end to end: `portdistrict use` against `portdistrict exit
//! serve`, with an "internet" namespace between consumers and provider that hosts a
//! TCP/UDP echo service answering with the source address it sees (198.51.100.1 and
//! 2001:db8:100::1 on its loopback) and a real DNS server (Knot) for `pd.test`.
//!
//! ```text
//!  consumer  --51--+
//!  consumer2 --53--+-- internet (router, echo, Knot) --52-- provider (exit serve)
//!  consumer3 --54--+
//! ```
//!
//! One test walks the issue's list in order, because every step depends on the state
//! the one before left: (a) v4/v6 TCP, UDP and ICMP show the provider's uplink
//! address; (b) DNS through the tunnel, direct DNS blocked; (c) a capture of what the
//! consumer sends into the internet while the tunnel is up, after SIGKILL of its
//! dataplane, after SIGKILL of the CLI in the middle of `use`, with the provider down
//! and after the provider's address changed: only WireGuard to the provider, ARP and
//! neighbour discovery, and TCP/UDP/ICMP/DNS fail while the tunnel is down; (d) `use
//! off` restores rules, routes, nftables, sysctls and the resolver file exactly; (e)
//! expired, used-up, revoked, tampered and foreign invites are refused with a clear
//! error and change nothing; (f) two consumers at once, neither reaching the other.

use portdistrict_netns_tests::{
    unique_ifname, uut_binary, wait_until, ChildGuard, Knot, Netns, TempDir, Veth,
};
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const ECHO_V4: &str = "198.51.100.1";
const ECHO_V6: &str = "2001:db8:100::1";
/// A server on the consumers' LAN side (a route via their gateway), for `--allow-lan`.
const LAN_SERVER: &str = "10.77.99.1";

fn cli() -> String {
    uut_binary()
        .with_file_name("portdistrict")
        .to_string_lossy()
        .into_owned()
}

/// TCP and UDP port 7000 on each address given (bound to it, so that UDP answers
/// come from the address asked): answers with the client's address.
const ECHO_SERVER: &str = r#"
import socket, threading, sys
def sock(fam, kind):
    s = socket.socket(fam, kind)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return s
def udp(fam, addr):
    s = sock(fam, socket.SOCK_DGRAM)
    s.bind((addr, 7000))
    while True:
        d, a = s.recvfrom(128)
        s.sendto(a[0].encode(), a)
def tcp(fam, addr):
    s = sock(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 7000))
    s.listen(16)
    while True:
        c, a = s.accept()
        c.sendall(a[0].encode())
        c.close()
for addr in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    for f in (udp, tcp):
        threading.Thread(target=f, args=(fam, addr), daemon=True).start()
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

/// Resolves `NAME` with the system resolver (resolv.conf): prints the address or `none`.
const LOOKUP: &str = r#"
import socket, sys
try:
    print(socket.getaddrinfo(sys.argv[1], 7000, socket.AF_INET)[0][4][0])
except OSError as e:
    print("none", e)
"#;

fn echo(ns: &Netns, mode: &str, host: &str) -> String {
    let out = ns.exec(&["python3", "-c", ECHO_CLIENT, mode, host, "7000"]);
    out.split_whitespace().next().unwrap_or("none").to_owned()
}

fn pings(ns: &Netns, host: &str) -> bool {
    ns.try_exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", host])
        .status
        .success()
}

fn kdig(ns: &Netns, server: &str, name: &str) -> String {
    let at = format!("@{server}");
    let out = ns.try_exec(&["kdig", &at, "+short", "+timeout=1", "+retry=0", "A", name]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything a consumer might send to the internet fails.
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
    assert!(!pings(ns, ECHO_V4), "{when}: ping v4 got out");
    assert!(!pings(ns, ECHO_V6), "{when}: ping v6 got out");
    assert_eq!(
        kdig(ns, ECHO_V4, "echo.pd.test"),
        "",
        "{when}: direct DNS got out"
    );
    assert_eq!(
        kdig(ns, "100.64.0.1", "echo.pd.test"),
        "",
        "{when}: DNS answered with the tunnel down"
    );
}

/// `/etc/netns/NS/resolv.conf`, which `ip netns exec NS` shows as /etc/resolv.conf;
/// the directory is removed on drop.
struct EtcNetns {
    dir: PathBuf,
    /// /etc/netns did not exist before: removed again when empty.
    created_parent: bool,
}

impl EtcNetns {
    fn new(ns: &Netns, resolv: &str) -> EtcNetns {
        let parent = PathBuf::from("/etc/netns");
        let created_parent = !parent.exists();
        let dir = parent.join(ns.name());
        std::fs::create_dir_all(&dir).expect("/etc/netns dir");
        std::fs::write(dir.join("resolv.conf"), resolv).expect("resolv.conf");
        EtcNetns {
            dir,
            created_parent,
        }
    }

    fn resolv(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.created_parent {
            // Fails (harmlessly) while another test still has its directory there.
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
}

/// One consumer: its namespace, state, run dir, tunnel name and resolver file.
struct Consumer {
    ns: Netns,
    state: TempDir,
    run: TempDir,
    ifname: String,
    etc: EtcNetns,
}

impl Consumer {
    fn new(role: &str, internet: &Netns, subnet: u8) -> (Consumer, Veth) {
        let ns = Netns::new(role);
        let link = Veth::new(&ns, internet, subnet);
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
        // The link-local address arrives after DAD; snapshots must not race it.
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
        let etc = EtcNetns::new(
            &ns,
            &format!("nameserver {ECHO_V4}\noptions timeout:1 attempts:1\n"),
        );
        let c = Consumer {
            ns,
            state: TempDir::new("xc-state"),
            run: TempDir::new("xc-run"),
            ifname: unique_ifname("pdu"),
            etc,
        };
        (c, link)
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

    fn use_args(&self, invite: &str) -> Vec<String> {
        self.use_args_with(invite, &[])
    }

    fn use_args_with(&self, invite: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "use",
            invite,
            "--mode",
            "system",
            "--interface",
            &self.ifname,
            "--resolv-conf",
            &self.etc.resolv().to_string_lossy(),
            "--timeout",
            "8s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    fn try_use(&self, invite: &str) -> Output {
        let args = self.use_args(invite);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(&refs).output().expect("portdistrict use")
    }

    fn use_ok(&self, invite: &str) -> String {
        self.use_ok_with(invite, &[])
    }

    fn use_ok_with(&self, invite: &str, extra: &[&str]) -> String {
        let args = self.use_args_with(invite, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.command(&refs).output().expect("portdistrict use");
        assert!(
            out.status.success(),
            "use failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn use_err(&self, invite: &str, needle: &str) {
        let out = self.try_use(invite);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "use must fail ({needle})");
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("portdistrict");
        assert!(
            out.status.success(),
            "portdistrict {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What `use off` must restore.
    fn snapshot(&self) -> String {
        let mut s = String::new();
        for argv in [
            &["ip", "-4", "rule"][..],
            &["ip", "-6", "rule"],
            &["ip", "-4", "route", "show", "table", "all"],
            &["ip", "-6", "route", "show", "table", "all"],
            &["nft", "list", "ruleset"],
            &["sysctl", "net.ipv4.conf.all.src_valid_mark"],
        ] {
            s.push_str(&format!("$ {}\n{}", argv.join(" "), self.ns.exec(argv)));
        }
        s.push_str(&std::fs::read_to_string(self.etc.resolv()).unwrap_or_default());
        s
    }

    fn dataplane_pids(&self) -> Vec<u32> {
        portdistrict_netns_tests::find_daemon_pids(&uut_binary(), &self.ifname)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Takes the dataplane down with its interface (and its UAPI socket).
        let _ = self.command(&["use", "off"]).output();
    }
}

/// tcpdump of what arrives on one interface (`-Q in`), read back as text lines.
struct Capture {
    child: ChildGuard,
    file: PathBuf,
    ns_name: String,
    _dir: TempDir,
}

impl Capture {
    fn start(ns: &Netns, ifname: &str) -> Capture {
        let dir = TempDir::new("xc-pcap");
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

    fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.pid().to_string()])
            .status();
        let _ = self.child.wait_timeout(Duration::from_secs(3));
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "tcpdump", "-nn", "-r"])
            .arg(&self.file)
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Stops `exit serve` with SIGTERM (so it takes its plan back), SIGKILL after 5 s.
struct Serve(ChildGuard);

impl Serve {
    fn stop(&mut self) {
        if self.0.try_status().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.pid().to_string()])
                .status();
            let _ = self.0.wait_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Provider {
    ns: Netns,
    state: TempDir,
    run: TempDir,
    ifname: String,
    uplink: String,
}

impl Provider {
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

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("portdistrict");
        assert!(
            out.status.success(),
            "portdistrict {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn serve(&self, endpoint: &str) -> Serve {
        let mut cmd = self.command(&[
            "exit",
            "serve",
            "--uplink",
            &self.uplink,
            "--interface",
            &self.ifname,
            "--endpoint",
            endpoint,
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
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Serve(child)
    }
}

/// Lines of a capture of what a consumer sent that are neither WireGuard to the
/// provider's endpoint, nor ARP, nor neighbour/router discovery, nor DHCP.
fn leaks(lines: &[String], endpoint: &str) -> Vec<String> {
    let wg = format!("> {endpoint}: UDP");
    lines
        .iter()
        .filter(|l| {
            !(l.contains(&wg)
                || l.contains(" ARP,")
                || l.contains("ICMP6, neighbor solicitation")
                || l.contains("ICMP6, neighbor advertisement")
                || l.contains("ICMP6, router solicitation")
                || l.contains(".68 > ")
                || l.contains(".546 > "))
        })
        .cloned()
        .collect()
}

#[test]
fn system_mode_end_to_end() {
    let internet = Netns::new("xc-internet");
    internet.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    internet.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    internet.exec(&["ip", "addr", "add", &format!("{ECHO_V4}/32"), "dev", "lo"]);
    internet.exec(&["ip", "addr", "add", &format!("{ECHO_V6}/128"), "dev", "lo"]);
    internet.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{LAN_SERVER}/32"),
        "dev",
        "lo",
    ]);
    let _knot = Knot::start(
        &internet,
        &[ECHO_V4.parse().unwrap(), LAN_SERVER.parse().unwrap()],
        "pd.test",
        &[&format!("echo A {ECHO_V4}")],
    );
    let mut echo_server = internet
        .command(&["python3", "-c", ECHO_SERVER, ECHO_V4, ECHO_V6, LAN_SERVER])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("python3");
    let mut ready = String::new();
    std::io::BufReader::new(echo_server.stdout.take().expect("piped"))
        .read_line(&mut ready)
        .unwrap();
    let _echo = EchoGuard(echo_server);
    assert_eq!(ready.trim(), "ready");

    let pns = Netns::new("xc-provider");
    let uplink = Veth::new(&pns, &internet, 52);
    pns.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &uplink.v4(2).to_string(),
    ]);
    pns.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        &uplink.v6(2).to_string(),
    ]);
    let provider = Provider {
        ns: pns,
        state: TempDir::new("xc-pstate"),
        run: TempDir::new("xc-prun"),
        ifname: unique_ifname("pdx"),
        uplink: uplink.a_name().to_owned(),
    };
    let endpoint = format!("{}:51820", uplink.v4(1));
    let mut serve = provider.serve(&endpoint);
    let invite = |extra: &[&str]| {
        let mut a = vec!["exit", "invite"];
        a.extend_from_slice(extra);
        provider.run(&a)
    };
    let inv1 = invite(&[]);
    let inv2 = invite(&[]);
    let inv_expiring = invite(&["--expires", "1s"]);

    let (c1, c1_link) = Consumer::new("xc-consumer", &internet, 51);
    let before = c1.snapshot();
    // Before system mode, DNS goes straight to the internet's server.
    assert_eq!(kdig(&c1.ns, ECHO_V4, "echo.pd.test"), ECHO_V4);
    assert!(c1.run(&["use", "off"]).contains("nothing to do"));

    let said = c1.use_ok(&inv1);
    assert!(said.contains("system mode on"), "{said}");
    let status = c1.run(&["use", "status"]);
    assert!(status.contains("system mode: on"), "{status}");
    assert!(status.contains("kill switch: on"), "{status}");
    let inner_v4 = status
        .lines()
        .find_map(|l| l.strip_prefix("inner IPv4: "))
        .expect("inner IPv4 in status")
        .to_owned();
    let inner_v6 = status
        .lines()
        .find_map(|l| l.strip_prefix("inner IPv6: "))
        .expect("inner IPv6 in status")
        .to_owned();
    assert!(inner_v6.starts_with("fd"), "a ULA address: {inner_v6}");
    // What the consumer sends into the internet, and what the provider sends there.
    let capture = Capture::start(&internet, c1_link.b_name());
    let from_provider = Capture::start(&internet, uplink.b_name());

    // (a) Everything leaves through the provider, v4 and v6.
    for mode in ["udp", "tcp"] {
        assert_eq!(
            echo(&c1.ns, mode, ECHO_V4),
            uplink.v4(1).to_string(),
            "{mode} v4"
        );
        assert_eq!(
            echo(&c1.ns, mode, ECHO_V6),
            uplink.v6(1).to_string(),
            "{mode} v6"
        );
    }
    assert!(pings(&c1.ns, ECHO_V4), "ping v4 through the provider");
    assert!(pings(&c1.ns, ECHO_V6), "ping v6 through the provider");

    // (b) DNS through the tunnel (the system resolver now points at it); direct DNS
    // to the internet's server is blocked.
    let looked_up = c1.ns.exec(&["python3", "-c", LOOKUP, "echo.pd.test"]);
    assert_eq!(looked_up.trim(), ECHO_V4);
    assert_eq!(kdig(&c1.ns, "100.64.0.1", "echo.pd.test"), ECHO_V4);
    assert_eq!(kdig(&c1.ns, ECHO_V4, "echo.pd.test"), "", "direct DNS");

    // `use` again is idempotent.
    let snapshot_on = c1.snapshot();
    assert!(c1.use_ok(&inv1).contains("already on"));
    assert_eq!(c1.snapshot(), snapshot_on);
    c1.use_err(&inv2, "use off");

    // (c) SIGKILL of the dataplane: blocked, not open.
    for pid in c1.dataplane_pids() {
        c1.ns.exec(&["kill", "-KILL", &pid.to_string()]);
    }
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || !c1.ns.has_link(&c1.ifname)
    ));
    assert_all_blocked(&c1.ns, "after SIGKILL of the dataplane");
    assert!(c1.run(&["use", "status"]).contains("tunnel: down"));
    // `use` again brings the tunnel back.
    assert!(c1.use_ok(&inv1).contains("system mode on"));
    assert_eq!(echo(&c1.ns, "udp", ECHO_V4), uplink.v4(1).to_string());

    // The provider's address changes: nothing leaks while the endpoint is gone.
    let old = format!("{}/24", uplink.v4(1));
    provider
        .ns
        .exec(&["ip", "addr", "del", &old, "dev", &provider.uplink]);
    provider.ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", uplink.v4(3)),
        "dev",
        &provider.uplink,
    ]);
    assert_all_blocked(&c1.ns, "with the provider's endpoint moved");
    let moved = format!("{}/24", uplink.v4(3));
    provider
        .ns
        .exec(&["ip", "addr", "del", &moved, "dev", &provider.uplink]);
    provider
        .ns
        .exec(&["ip", "addr", "add", &old, "dev", &provider.uplink]);
    provider.ns.exec(&[
        "ip",
        "route",
        "replace",
        "default",
        "via",
        &uplink.v4(2).to_string(),
    ]);

    // The provider down, and the CLI SIGKILLed in the middle of `use`.
    serve.stop();
    assert_all_blocked(&c1.ns, "with the provider down");
    let args = c1.use_args(&inv1);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out_path = c1.run.path().join("pending-use.out");
    let out = std::fs::File::create(&out_path).expect("create the output file");
    let mut pending = ChildGuard::spawn(
        "portdistrict use",
        c1.command(&refs)
            .stdout(out.try_clone().expect("dup"))
            .stderr(out),
    );
    // 3 s for its check that the tunnel is still fine, then it rebuilds the tunnel
    // and waits for the provider: killed in the middle of that.
    std::thread::sleep(Duration::from_millis(5000));
    let status = pending.try_status();
    assert!(
        status.is_none(),
        "use should still wait for the provider; it exited ({status:?}) saying:\n{}",
        std::fs::read_to_string(&out_path).unwrap_or_default()
    );
    pending.kill();
    assert_all_blocked(&c1.ns, "after SIGKILL of the CLI");
    serve = provider.serve(&endpoint);
    let said = c1.use_ok(&inv1);
    assert!(said.contains("system mode on"), "{said}");
    assert_eq!(echo(&c1.ns, "tcp", ECHO_V4), uplink.v4(1).to_string());

    let lines = capture.stop();
    let wg_endpoint = format!("{}.51820", uplink.v4(1));
    assert!(
        lines.iter().any(|l| l.contains(&wg_endpoint)),
        "the capture saw no WireGuard: {lines:#?}"
    );
    let leaked = leaks(&lines, &wg_endpoint);
    assert!(
        leaked.is_empty(),
        "packets left the consumer outside the tunnel: {leaked:#?}"
    );

    // (f) A second consumer at the same time; neither reaches the other.
    let (c2, _c2_link) = Consumer::new("xc-consumer2", &internet, 53);
    c2.use_ok(&inv2);
    assert_eq!(echo(&c2.ns, "udp", ECHO_V4), uplink.v4(1).to_string());
    assert_eq!(echo(&c1.ns, "udp", ECHO_V4), uplink.v4(1).to_string());
    let c2_status = c2.run(&["use", "status"]);
    let c2_v4 = c2_status
        .lines()
        .find_map(|l| l.strip_prefix("inner IPv4: "))
        .expect("inner IPv4")
        .to_owned();
    assert_ne!(c2_v4, inner_v4);
    assert!(!pings(&c2.ns, &inner_v4), "consumer 2 reached consumer 1");
    assert!(!pings(&c1.ns, &c2_v4), "consumer 1 reached consumer 2");

    // The internet saw the consumers' pings from the provider's address, and never an
    // inner address of either.
    let seen = from_provider.stop();
    for (v, dst) in [
        (uplink.v4(1).to_string(), ECHO_V4),
        (uplink.v6(1).to_string(), ECHO_V6),
    ] {
        let request = format!(" {v} > {dst}: ICMP");
        assert!(
            seen.iter().any(|l| l.contains(&request)),
            "no {request:?} in {seen:#?}"
        );
    }
    let v6_prefix: String = inner_v6
        .rsplit_once("::")
        .map_or(inner_v6.clone(), |(p, _)| p.to_owned());
    for inner in [
        inner_v4.as_str(),
        c2_v4.as_str(),
        v6_prefix.as_str(),
        " 100.64.",
        " 100.127.",
    ] {
        assert!(
            seen.iter().all(|l| !l.contains(inner)),
            "an inner address ({inner}) reached the internet: {seen:#?}"
        );
    }

    // (e) Bad invites: refused with a clear error, nothing changed.
    let (c3, c3_link) = Consumer::new("xc-consumer3", &internet, 54);
    let untouched = c3.snapshot();
    c3.use_err(&inv2, "used up");
    assert_eq!(
        c3.snapshot(),
        untouched,
        "a refused invite changed the machine"
    );
    std::thread::sleep(Duration::from_millis(1100));
    c3.use_err(&inv_expiring, "expired");
    let mut tampered = inv1.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    c3.use_err(&String::from_utf8(tampered).unwrap(), "invite");
    let foreign_state = TempDir::new("xc-foreign");
    let foreign = provider.run(&[
        "--state-dir",
        &foreign_state.path().to_string_lossy(),
        "exit",
        "invite",
        "--endpoint",
        &endpoint,
    ]);
    c3.use_err(&foreign, "no answer from the provider");
    let inv_revoked = invite(&[]);
    let token = portdistrict_exitnode::invite::Invite::decode(&inv_revoked)
        .expect("invite decodes")
        .token;
    let prefix: String = token[..4].iter().map(|b| format!("{b:02x}")).collect();
    provider.run(&["exit", "revoke", &prefix]);
    c3.use_err(&inv_revoked, "revoked");
    assert_eq!(
        c3.snapshot(),
        untouched,
        "a refused invite changed the machine"
    );
    assert_eq!(
        echo(&c3.ns, "udp", ECHO_V4),
        c3_link.v4(1).to_string(),
        "c3 is open again"
    );

    // --allow-lan: the LAN (a route via the consumer's gateway) is reached directly,
    // the rest goes through the provider, and DNS to the LAN stays blocked.
    let gateway = c3_link.v4(2).to_string();
    c3.ns
        .exec(&["ip", "route", "add", "10.77.99.0/24", "via", &gateway]);
    assert_eq!(
        kdig(&c3.ns, LAN_SERVER, "echo.pd.test"),
        ECHO_V4,
        "LAN DNS before"
    );
    let lan_untouched = c3.snapshot();
    let inv_lan = invite(&[]);
    c3.use_ok_with(&inv_lan, &["--allow-lan"]);
    assert!(c3.run(&["use", "status"]).contains("LAN: allowed"));
    assert_eq!(
        echo(&c3.ns, "udp", LAN_SERVER),
        c3_link.v4(1).to_string(),
        "LAN direct"
    );
    assert_eq!(
        echo(&c3.ns, "tcp", ECHO_V4),
        uplink.v4(1).to_string(),
        "internet via the provider"
    );
    assert_eq!(
        kdig(&c3.ns, LAN_SERVER, "echo.pd.test"),
        "",
        "DNS to the LAN must stay blocked"
    );
    assert_eq!(kdig(&c3.ns, "100.64.0.1", "echo.pd.test"), ECHO_V4);
    c3.run(&["use", "off"]);
    assert_eq!(c3.snapshot(), lan_untouched, "use off after --allow-lan");

    // Revocation takes effect at once: consumer 2 is cut off, and stays blocked.
    provider.run(&["exit", "revoke", &c2_v4]);
    assert!(
        wait_until(Duration::from_secs(3), Duration::from_millis(100), || echo(
            &c2.ns, "udp", ECHO_V4
        )
            == "none"),
        "a revoked consumer still gets through"
    );
    c2.use_err(&inv2, "revoked");
    assert_all_blocked(&c2.ns, "after revocation");
    assert_eq!(
        echo(&c1.ns, "udp", ECHO_V4),
        uplink.v4(1).to_string(),
        "others unaffected"
    );

    // (d) `use off` puts everything back exactly.
    let off = c1.run(&["use", "off"]);
    assert!(off.contains("system mode off"), "{off}");
    assert_eq!(c1.snapshot(), before, "use off did not restore the machine");
    assert_eq!(
        kdig(&c1.ns, ECHO_V4, "echo.pd.test"),
        ECHO_V4,
        "direct DNS again"
    );
    assert!(c1.run(&["use", "off"]).contains("nothing to do"));
    drop(serve);
}

/// Kills the echo service.
struct EchoGuard(std::process::Child);

impl Drop for EchoGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
