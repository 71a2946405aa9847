//! The exit-node topology: an "internet" namespace routing between consumers and a
//! provider running `portdistrict exit serve`, with an echo service on its loopback
//! that answers with the source address it sees; consumers in system mode (`use`),
//! and captures of what a consumer sends, filtered down to what leaked.

use portdistrict_testkit::process::signal;

use crate::{wait_until, ChildGuard, CliMachine, Netns, TempDir, Veth};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

/// The echo service's IPv4 address (on the internet's loopback).
pub const ECHO_V4: &str = "198.51.100.1";
/// The echo service's IPv6 address (on the internet's loopback).
pub const ECHO_V6: &str = "2001:db8:100::1";

/// `PORTS ADDR...`: TCP and UDP on each of the comma-separated ports of each address
/// (bound to it, so that UDP answers come from the address asked): answers with the
/// client's address.
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
ports = [int(p) for p in sys.argv[1].split(",")]
for addr in sys.argv[2:]:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    for port in ports:
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

/// The internet: a router (forwarding on) with [`ECHO_V4`] and [`ECHO_V6`] on its
/// loopback.
pub fn internet(role: &str) -> Netns {
    let ns = Netns::new(role);
    ns.enable_forwarding();
    ns.exec(&["ip", "addr", "add", &format!("{ECHO_V4}/32"), "dev", "lo"]);
    ns.exec(&["ip", "addr", "add", &format!("{ECHO_V6}/128"), "dev", "lo"]);
    ns
}

/// Starts the echo service in `ns` on `ports` of each of `addrs`; returns once it
/// listens. Killed when the guard drops.
pub fn start_echo(ns: &Netns, ports: &[u16], addrs: &[&str]) -> ChildGuard {
    use std::io::BufRead as _;
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let ports = ports.join(",");
    let mut argv = vec!["python3", "-c", ECHO_SERVER, &ports];
    argv.extend_from_slice(addrs);
    let mut cmd = ns.command(&argv);
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut echo = ChildGuard::spawn("echo server", &mut cmd);
    let mut ready = String::new();
    std::io::BufReader::new(echo.child_mut().stdout.take().expect("piped"))
        .read_line(&mut ready)
        .expect("echo server output");
    assert_eq!(ready.trim(), "ready");
    echo
}

/// What the echo service at `host:port` answered over `mode` (`udp`, `tcp`): the
/// address it saw, or `none`.
pub fn echo_port(ns: &Netns, mode: &str, host: &str, port: &str) -> String {
    let out = ns.exec(&["python3", "-c", ECHO_CLIENT, mode, host, port]);
    out.split_whitespace().next().unwrap_or("none").to_owned()
}

/// [`echo_port`] on the echo port, 7000.
pub fn echo(ns: &Netns, mode: &str, host: &str) -> String {
    echo_port(ns, mode, host, "7000")
}

/// Whether two pings from `ns` to `host` get an answer.
pub fn pings(ns: &Netns, host: &str) -> bool {
    ns.try_exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", host])
        .status
        .success()
}

/// Nothing from `ns` reaches the echo service (UDP and TCP, IPv4 and IPv6) and no
/// ping gets through; `when` names the moment in the failure message.
pub fn assert_echo_blocked(ns: &Netns, when: &str) {
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
}

/// `portdistrict exit serve`, stopped with SIGTERM (so that it takes its plan back),
/// SIGKILLed if still running 10 s later.
pub struct Serve(ChildGuard);

impl Serve {
    /// Stops it; its exit status, unless it outlived the 10 s.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.0.try_status().is_none() {
            signal(self.0.pid(), libc::SIGTERM);
        }
        self.0.wait_timeout(Duration::from_secs(10))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The provider's CLI with its uplink and its exit interface.
pub struct Provider {
    /// The provider's machine.
    pub machine: CliMachine,
    /// Its exit interface (`--interface`).
    pub ifname: String,
    /// Its uplink interface (`--uplink`).
    pub uplink: String,
}

impl Provider {
    /// `portdistrict args`, which must succeed; its stdout, trimmed.
    pub fn run(&self, args: &[&str]) -> String {
        self.machine.run_ok(args).trim().to_owned()
    }

    /// A new invite (`exit invite`).
    pub fn invite(&self) -> String {
        self.run(&["exit", "invite"])
    }

    /// Starts `exit serve` (IPv6 on, DNS upstream `dns_upstream`, then `extra`) and
    /// waits until it says the exit node is up.
    pub fn serve(&self, dns_upstream: &str, extra: &[&str]) -> Serve {
        let mut args = vec![
            "exit",
            "serve",
            "--uplink",
            &self.uplink,
            "--interface",
            &self.ifname,
            "--ipv6",
            "on",
            "--dns-upstream",
            dns_upstream,
        ];
        args.extend_from_slice(extra);
        let (child, log, up) = ChildGuard::spawn_until_line(
            "exit serve",
            &mut self.machine.command("portdistrict", &args),
            "exit node up",
        );
        assert!(up, "exit serve did not come up:\n{}", log.join("\n"));
        Serve(child)
    }
}

/// `/etc/netns/NS/resolv.conf`, which `ip netns exec NS` shows as /etc/resolv.conf;
/// the directory is removed on drop.
pub struct EtcNetns {
    dir: PathBuf,
    /// /etc/netns did not exist before: removed again when empty.
    created_parent: bool,
}

impl EtcNetns {
    /// Writes `resolv` as `ns`'s resolv.conf.
    pub fn new(ns: &Netns, resolv: &str) -> EtcNetns {
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

    /// The resolv.conf file.
    pub fn resolv(&self) -> PathBuf {
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

/// A consumer behind the internet: its machine (state and run directories of its
/// own), tunnel name and resolver file. `use off` on drop.
pub struct Consumer {
    /// The consumer's machine.
    pub machine: CliMachine,
    /// Its tunnel interface (`--interface`).
    pub ifname: String,
    /// Its resolver file.
    pub etc: EtcNetns,
}

impl Consumer {
    /// A consumer `role` behind `internet` on veth `subnet`, with `resolv` as its
    /// resolv.conf; waits until its uplink's link-local address is usable (it arrives
    /// after DAD, and snapshots must not race it).
    pub fn new(role: &str, internet: &Netns, subnet: u8, resolv: &str) -> (Consumer, Veth) {
        let (ns, link) = Netns::behind(role, internet, subnet);
        let settled = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let dev = link.a_name();
            let out = ns.exec(&["ip", "-6", "addr", "show", "dev", dev, "scope", "link"]);
            out.contains("fe80::") && !out.contains("tentative")
        });
        assert!(settled, "no link-local address on the consumer's uplink");
        let etc = EtcNetns::new(&ns, resolv);
        let machine = CliMachine::with_run_dir(
            ns,
            TempDir::new(&format!("{role}-state")),
            TempDir::new(&format!("{role}-run")),
        );
        let c = Consumer {
            machine,
            ifname: crate::unique_ifname("pdu"),
            etc,
        };
        (c, link)
    }

    /// The consumer's namespace.
    pub fn ns(&self) -> &Netns {
        &self.machine.ns
    }

    /// `portdistrict args` on the consumer, ready to run.
    pub fn command(&self, args: &[&str]) -> Command {
        self.machine.command("portdistrict", args)
    }

    /// `portdistrict args`, which must succeed; its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        self.machine.run_ok(args)
    }

    /// The arguments of `use invite` in system mode (8 s timeout), then `extra`.
    pub fn use_args(&self, invite: &str, extra: &[&str]) -> Vec<String> {
        let resolv = self.etc.resolv().to_string_lossy().into_owned();
        let mut args = system_use_args(invite, &self.ifname, &resolv, "8s");
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// `use invite` (then `extra`), whatever it says.
    pub fn try_use_with(&self, invite: &str, extra: &[&str]) -> Output {
        let args = self.use_args(invite, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(&refs).output().expect("portdistrict use")
    }

    /// `use invite`, whatever it says.
    pub fn try_use(&self, invite: &str) -> Output {
        self.try_use_with(invite, &[])
    }

    /// `use invite` (then `extra`), which must succeed; its stdout.
    pub fn use_ok_with(&self, invite: &str, extra: &[&str]) -> String {
        let out = self.try_use_with(invite, extra);
        assert!(
            out.status.success(),
            "use failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `use invite`, which must succeed; its stdout.
    pub fn use_ok(&self, invite: &str) -> String {
        self.use_ok_with(invite, &[])
    }

    /// [`network_snapshot`] and the resolver file: what `use off` must restore.
    pub fn snapshot(&self, nft_flags: &[&str]) -> String {
        let mut s = network_snapshot(self.ns(), nft_flags);
        s.push_str(&std::fs::read_to_string(self.etc.resolv()).unwrap_or_default());
        s
    }

    /// The pids of the dataplane serving the consumer's tunnel.
    pub fn dataplane_pids(&self) -> Vec<u32> {
        crate::find_daemon_pids(&crate::uut_binary(), &self.ifname)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Takes the dataplane down with its interface (and its UAPI socket).
        let _ = self.command(&["use", "off"]).output();
    }
}

/// Rules, routes of every table, the nftables ruleset (`nft nft_flags list ruleset`)
/// and the `src_valid_mark` sysctl of `ns`: what system mode changes.
pub fn network_snapshot(ns: &Netns, nft_flags: &[&str]) -> String {
    let nft = [&["nft"][..], nft_flags, &["list", "ruleset"]].concat();
    let mut s = String::new();
    for argv in [
        &["ip", "-4", "rule"][..],
        &["ip", "-6", "rule"],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &nft,
        &["sysctl", "net.ipv4.conf.all.src_valid_mark"],
    ] {
        s.push_str(&format!("$ {}\n{}", argv.join(" "), ns.exec(argv)));
    }
    s
}

/// The arguments of `use invite --mode system` on tunnel `ifname`, with
/// `--resolv-conf resolv` and `--timeout timeout`.
pub fn system_use_args(invite: &str, ifname: &str, resolv: &str, timeout: &str) -> Vec<String> {
    [
        "use",
        invite,
        "--mode",
        "system",
        "--interface",
        ifname,
        "--resolv-conf",
        resolv,
        "--timeout",
        timeout,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// tcpdump of what arrives on one interface (`-Q in`), read back as text lines.
pub struct Capture {
    child: ChildGuard,
    file: PathBuf,
    ns_name: String,
    _dir: TempDir,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns`; returns once tcpdump writes its file.
    pub fn start(ns: &Netns, ifname: &str) -> Capture {
        let dir = TempDir::new("pcap");
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

    /// Stops the capture; what it saw, one `tcpdump -nn` line a packet.
    pub fn stop(mut self) -> Vec<String> {
        signal(self.child.pid(), libc::SIGINT);
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

/// The WireGuard endpoint `ip:port` as tcpdump prints it (`ip.port`).
pub fn tcpdump_endpoint(endpoint: &str) -> String {
    match endpoint.rsplit_once(':') {
        Some((ip, port)) => format!("{ip}.{port}"),
        None => endpoint.to_owned(),
    }
}

/// The lines of a capture of what a consumer sent that are neither WireGuard to
/// `wg_endpoint` (as tcpdump prints it, `ip.port`), nor the exit channel (TCP to the
/// same address and port, its default), nor ARP, nor neighbour/router discovery, nor
/// DHCP.
pub fn leaks(lines: &[String], wg_endpoint: &str) -> Vec<String> {
    let wg = format!("> {wg_endpoint}: UDP");
    let channel = format!("> {wg_endpoint}: Flags [");
    lines
        .iter()
        .filter(|l| {
            !(l.contains(&wg)
                || l.contains(&channel)
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

/// Asks the provider of `invite` for a grant over its exit channel from namespace
/// `ns`, as WireGuard key `private` (base64) with a fresh Noise key, requiring what
/// `pins` pins; `Err` carries the consumer's message. The same function `use` runs.
pub fn ask(
    ns: &Netns,
    invite: &portdistrict_exitnode::invite::Invite,
    private: &str,
    pins: &portdistrict_control::consumer::channel::Pins,
    timeout: Duration,
) -> Result<portdistrict_control::consumer::channel::Asked, String> {
    let key = portdistrict_wg::PrivateKey::from_base64(private).expect("a WireGuard key");
    let noise = portdistrict_exitnode::channel::NoiseSecretKey::from_bytes(
        *portdistrict_wg::PrivateKey::generate(&mut rand_core::OsRng).as_bytes(),
    );
    portdistrict_testkit::netns::run_in(ns.name(), || {
        portdistrict_control::consumer::channel::ask(invite, &key, &noise, pins, timeout, None)
            .map_err(|e| format!("{e:#}"))
    })
    .expect("entering the namespace")
}

/// Sends message 1 of the exit channel with `request` (any WireGuard key and proof,
/// e.g. a forged one) for `invite` from namespace `ns` and returns the provider's
/// reply, or the consumer's error. Confirms nothing.
pub fn hello(
    ns: &Netns,
    invite: &portdistrict_exitnode::invite::Invite,
    request: portdistrict_exitnode::channel::Request,
) -> Result<portdistrict_exitnode::channel::Reply, String> {
    use portdistrict_exitnode::channel::{
        FrameDecoder, Initiator, NoisePublicKey, NoiseSecretKey, ProviderRef,
    };
    use std::io::{Read as _, Write as _};
    let channel = invite.channel.expect("a version-2 invite");
    let addr = std::net::SocketAddr::new(invite.endpoints[0].ip(), channel.port);
    portdistrict_testkit::netns::run_in(ns.name(), || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let noise = NoiseSecretKey::from_bytes(
            *portdistrict_wg::PrivateKey::generate(&mut rand_core::OsRng).as_bytes(),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970");
        let mut out = Vec::new();
        let init = Initiator::start(
            &noise,
            &ProviderRef {
                key: NoisePublicKey(channel.noise_key),
                token: invite.token,
            },
            request,
            now,
            &mut out,
        )
        .map_err(|e| e.to_string())?;
        s.write_all(&out).map_err(|e| e.to_string())?;
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 32 * 1024];
        let mut have = 0;
        loop {
            let n = s.read(&mut buf[have..]).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the provider closed the connection".to_owned());
            }
            have += n;
            let mut input = &buf[..have];
            if let Some(f) = dec.decode(&mut input).map_err(|e| e.to_string())? {
                return init.read_reply(f).map(|r| r.0).map_err(|e| e.to_string());
            }
            have = 0;
        }
    })
    .expect("entering the namespace")
}

#[cfg(test)]
mod tests {
    use portdistrict_control::exit::attestation::{obtain, self_check, Source};
    use portdistrict_control_core::attest::{binding, synthetic};
    use portdistrict_exitnode::channel::NoisePublicKey;

    /// 2025-01-01T00:00:00Z: inside the synthetic chain's validity (2024 .. 2034).
    const NOW: u64 = 1_735_689_600;

    /// No root needed: a directory written by the synthetic chain is what
    /// `exit serve --attestation DIR` reads, and passes the provider's self-check
    /// for the keys it is bound to only.
    #[test]
    fn a_synthetic_attestation_dir_passes_the_providers_self_check() {
        let chain = synthetic::Chain::get();
        let (noise, wg) = (NoisePublicKey([5; 32]), [6; 32]);
        let spec = chain.spec([0x3e; 48], binding(&noise.0, &wg));
        let dir = crate::TempDir::new("synthetic-attestation");
        chain.write_dir(dir.path(), &spec).unwrap();
        for name in synthetic::FILES {
            use std::os::unix::fs::PermissionsExt as _;
            let m = std::fs::metadata(dir.path().join(name)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{name}");
        }
        let a = obtain(&Source::Dir(dir.path().to_owned()), &spec.report_data).unwrap();
        assert_eq!(a.report, chain.signed_report(&spec));
        assert_eq!(a.vcek, chain.vcek_der());
        assert_eq!(a.chain, chain.chain_pem());
        let roots = [chain.ark_fingerprint()];
        assert!(self_check(&a, &noise, &wg, &roots, NOW).unwrap().passed());
        // Other keys, or the root not added: refused.
        assert!(self_check(&a, &NoisePublicKey([7; 32]), &wg, &roots, NOW).is_err());
        assert!(self_check(&a, &noise, &wg, &[], NOW).is_err());
        // Written again over the files, with another spec: replaced.
        let other = chain.spec([0x3f; 48], spec.report_data);
        chain.write_dir(dir.path(), &other).unwrap();
        let a = obtain(&Source::Dir(dir.path().to_owned()), &spec.report_data).unwrap();
        assert_eq!(a.report, chain.signed_report(&other));
    }
}
