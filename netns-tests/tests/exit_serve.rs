//! `portdistrict exit serve` end to end with a hand-driven consumer: a provider
//! namespace (underlay veth to the consumer, uplink veth to an "internet" namespace)
//! runs `exit invite` and `exit serve`; the consumer asks for its grant over the exit
//! channel (TCP, Noise), gets its inner address, brings up a real dataplane with its
//! own key and reaches the internet, which sees only the provider's uplink address. A
//! second consumer with the single-use invite is refused. SIGTERM takes everything
//! back.

use portdistrict_control::consumer::channel::{Asked, Pins};
use portdistrict_exitnode::channel::{Answer, Request};
use portdistrict_exitnode::invite::Invite;
use portdistrict_exitnode::negotiate;
use portdistrict_exitnode::store::Refusal;
use portdistrict_exitnode::wire::Message;
use portdistrict_netns_tests::{
    exit, metrics, wait_until, ChildGuard, CliMachine, Daemon, Implementation, Keypair, Netns,
    TempDir, Veth,
};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

fn b64(bytes: &[u8; 32]) -> String {
    PublicKey(*bytes).to_base64()
}

/// Sends `request` from `src` to the provider's negotiation port and returns the
/// answer (retrying while the first handshake completes).
const EXCHANGE: &str = r#"
import socket, sys
src, req = sys.argv[1], bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.settimeout(0.5)
for _ in range(20):
    s.sendto(req, ("100.64.0.1", 51821))
    try:
        print(s.recv(512).hex())
        break
    except socket.timeout:
        pass
"#;

/// Prints the source address of the first datagram on port 7000 (5 s at most).
const WHO: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7000))
s.settimeout(5)
print("ready", flush=True)
try:
    print(s.recvfrom(64)[1][0], flush=True)
except socket.timeout:
    print("none", flush=True)
"#;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The exit request for `invite` as `me`, with its proof of key ownership.
fn request_as(invite: &Invite, me: &Keypair) -> Message {
    let key = PrivateKey::from_base64(&me.private).expect("a generated key");
    negotiate::request(invite.token, key.as_bytes(), &invite.wg_key)
}

fn exchange(ns: &Netns, src: &str, msg: &Message) -> Message {
    exchange_bytes(ns, src, &msg.emit())
}

fn exchange_bytes(ns: &Netns, src: &str, bytes: &[u8]) -> Message {
    let out = ns.exec(&["python3", "-c", EXCHANGE, src, &hex(bytes)]);
    let bytes: Vec<u8> = (0..out.trim().len() / 2)
        .map(|i| u8::from_str_radix(&out.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    Message::parse(&bytes).unwrap_or_else(|e| panic!("answer {out:?}: {e}"))
}

/// Configures the consumer's tunnel `dev` as `key`, at `addr/32`, with the provider
/// as its one peer for `allowed`.
fn consumer_as(c: &Daemon, key: &str, addr: &str, provider: &str, endpoint: &str, allowed: &str) {
    let f = c.private_file("key", key);
    let f = f.to_string_lossy();
    c.set(&[
        "private-key",
        &f,
        "peer",
        provider,
        "endpoint",
        endpoint,
        "allowed-ips",
        allowed,
    ]);
    c.ip(&["addr", "flush", "dev", c.ifname()]);
    c.add_address(&format!("{addr}/32"));
}

/// Asks for a grant over the exit channel as `me`, nothing pinned.
fn ask(ns: &Netns, invite: &Invite, me: &Keypair) -> Result<Asked, String> {
    exit::ask(
        ns,
        invite,
        &me.private,
        &Pins::default(),
        Duration::from_secs(10),
    )
}

/// A provider `<prefix>-provider` (its CLI's state and run directories of its own), a
/// consumer `<prefix>-consumer` on the underlay veth (`underlay_subnet`, the provider
/// at `.2`) and an internet `<prefix>-internet` on the uplink veth (`uplink_subnet`,
/// the provider at `.1`): (provider, consumer, internet, underlay, uplink).
fn exit_topology(
    prefix: &str,
    underlay_subnet: u8,
    uplink_subnet: u8,
) -> (CliMachine, Netns, Netns, Veth, Veth) {
    let provider = CliMachine::with_run_dir(
        Netns::new(&format!("{prefix}-provider")),
        TempDir::new(&format!("{prefix}-state")),
        TempDir::new(&format!("{prefix}-run")),
    );
    let consumer = Netns::new(&format!("{prefix}-consumer"));
    let internet = Netns::new(&format!("{prefix}-internet"));
    let underlay = Veth::new(&consumer, &provider.ns, underlay_subnet);
    let uplink = Veth::new(&provider.ns, &internet, uplink_subnet);
    (provider, consumer, internet, underlay, uplink)
}

/// `exit invite` on the provider with `args`, decoded.
fn new_invite(provider: &CliMachine, args: &[&str]) -> Invite {
    let mut argv = vec!["exit", "invite"];
    argv.extend_from_slice(args);
    Invite::decode(&provider.run_ok(&argv)).expect("the CLI's invite decodes")
}

/// `exit serve` on `uplink` with tunnel `ifname`, then `extra`.
fn serve_args<'a>(uplink: &'a str, ifname: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["exit", "serve", "--uplink", uplink, "--interface", ifname];
    args.extend_from_slice(extra);
    args
}

/// Whether the provider's `portdistrict_exit` table is in place.
fn exit_table(provider: &Netns) -> bool {
    provider
        .try_exec(&["nft", "list", "table", "inet", "portdistrict_exit"])
        .status
        .success()
}

/// Starts `portdistrict args` (`exit serve ...`) on the provider and waits (15 s at
/// most) until its table is in place.
fn start_serve(provider: &CliMachine, args: &[&str]) -> TermFirst {
    let mut cmd = provider.command("portdistrict", args);
    let serve = TermFirst(ChildGuard::spawn("portdistrict exit serve", &mut cmd));
    let up = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        exit_table(&provider.ns)
    });
    assert!(up, "exit serve did not come up");
    serve
}

#[test]
fn serve_negotiates_forwards_masquerades_and_cleans_up() {
    let (provider, consumer, internet, underlay, uplink) = exit_topology("xs", 41, 42);
    // The internet is a public address behind the uplink (the uplink's own subnet and
    // private ranges are not for consumers).
    internet.exec(&["ip", "addr", "add", "198.51.100.7/32", "dev", "lo"]);
    provider.ns.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &uplink.v4(2).to_string(),
    ]);
    let endpoint = format!("{}:51820", underlay.v4(2));

    let invite = new_invite(&provider, &["--endpoint", &endpoint]);

    let ifname = portdistrict_netns_tests::unique_ifname("pdx");
    let serve_args = serve_args(uplink.a_name(), &ifname, &["--metrics-listen", METRICS]);
    let mut serve = start_serve(&provider, &serve_args);

    let provider_key = b64(&invite.wg_key);
    let me = Keypair::generate();
    let asked = ask(&consumer, &invite, &me).expect("granted over the exit channel");
    let inner_v4 = asked.granted.inner_v4;
    assert_eq!(asked.granted.resolver, IpAddr::from([100, 64, 0, 1]));
    assert_eq!(asked.endpoint.to_string(), endpoint);
    assert_eq!(asked.measurement, None, "nothing was pinned");

    // Now as itself, with all of IPv4 through the provider.
    let c = Daemon::start(&consumer, Implementation::Uut);
    c.ip(&["link", "set", c.ifname(), "up"]);
    consumer_as(
        &c,
        &me.private,
        &inner_v4.to_string(),
        &provider_key,
        &endpoint,
        "0.0.0.0/0",
    );
    c.ip(&["route", "add", "198.51.100.0/24", "dev", c.ifname()]);
    let seen = seen_from(&internet, &consumer);
    if seen == "none" {
        for argv in [
            &["wg", "show", "all"][..],
            &["nft", "list", "ruleset"],
            &["sysctl", "-a", "--pattern", "forwarding"],
            &["ip", "-s", "link"],
            &["ip", "route"],
        ] {
            eprintln!(
                "provider $ {argv:?}\n{}",
                String::from_utf8_lossy(&provider.ns.try_exec(argv).stdout)
            );
        }
        eprintln!(
            "consumer wg: {}",
            String::from_utf8_lossy(&consumer.try_exec(&["wg", "show", "all"]).stdout)
        );
        eprintln!(
            "consumer ip: {}",
            String::from_utf8_lossy(&consumer.try_exec(&["ip", "addr"]).stdout)
        );
    }
    assert_eq!(
        seen,
        uplink.v4(1).to_string(),
        "the internet must see the provider's uplink address, not {inner_v4}"
    );

    // The single-use invite is spent: another consumer is refused, by name; the
    // first one asking again gets its grant again.
    let e = ask(&consumer, &invite, &Keypair::generate()).unwrap_err();
    assert!(e.contains(&Refusal::UsedUp.to_string()), "{e}");
    let again = ask(&consumer, &invite, &me).expect("the same grant again");
    assert_eq!(again.granted, asked.granted);

    // Its metrics say the same as `exit list --json`; two grants (the first ask and
    // the same consumer again) and one refusal (the spent invite) are counted (a
    // conversation is counted once its thread ends, just after the consumer has its
    // answer: a moment is allowed for that).
    let outcomes = || {
        let m = metrics::exit_metrics_match_the_list(&provider, METRICS);
        let outcome = |o: &str| {
            m.get(
                "portdistrict_exit_channel_conversations_total",
                &[("outcome", o)],
            )
        };
        (outcome("granted"), outcome("refused"))
    };
    let want = (Some(2.0), Some(1.0));
    wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        outcomes() == want
    });
    assert_eq!(outcomes(), want, "(granted, refused) conversations");

    // SIGKILL leaves the plan and the interface; the next `exit serve` takes them
    // back before it starts (and comes up).
    provider
        .ns
        .exec(&["kill", "-KILL", &serve.0.pid().to_string()]);
    let _ = serve.0.wait_timeout(Duration::from_secs(5));
    assert!(exit_table(&provider.ns));
    assert!(provider.ns.has_link(&ifname));
    let (guard, log, _) = ChildGuard::spawn_until_line(
        "exit serve",
        &mut provider.command("portdistrict", &serve_args),
        "exit node up",
    );
    serve = TermFirst(guard);
    assert!(
        log.iter().any(|l| l.contains("did not stop cleanly")),
        "no recovery: {log:#?}"
    );

    // SIGTERM: the provider takes its plan back and deletes the interface.
    provider
        .ns
        .exec(&["kill", "-TERM", &serve.0.pid().to_string()]);
    let status = serve.0.wait_timeout(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit serve: {status:?}"
    );
    let tables = provider.ns.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("portdistrict_exit"), "{tables}");
    assert!(!provider.ns.has_link(&ifname));
}

/// Where `exit serve` serves its metrics, inside the provider's namespace.
const METRICS: &str = "127.0.0.1:9588";

/// Reads the source address the internet sees for a UDP datagram from `consumer` to
/// 198.51.100.7:7000 (`none` when nothing arrives).
fn seen_from(internet: &Netns, consumer: &Netns) -> String {
    let mut who = internet
        .command(&["python3", "-c", WHO])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = std::io::BufReader::new(who.stdout.take().expect("piped"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    consumer.exec(&["python3", "-c", "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b'hi', ('198.51.100.7', 7000)) for _ in range(20)]"]);
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = who.wait();
    line.trim().to_owned()
}

/// `wg-quick VERB CONF` in `ns` with Debian's wireguard-go as the implementation (a
/// stock client), bounded by `timeout 30`; its output when it fails.
fn stock_wg_quick(ns: &Netns, verb: &str, conf: &std::path::Path) -> std::process::Output {
    ns.try_exec(&[
        "env",
        "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go",
        "timeout",
        "30",
        "wg-quick",
        verb,
        &conf.to_string_lossy(),
    ])
}

/// `exit invite --format wg-quick` through a running `exit serve`: a stock client
/// (wg-quick with Debian's wireguard-go) brings the printed config up and its traffic
/// leaves through the provider; the config says it has no kill switch; the client's
/// key is a consumer at once, and revoking it cuts the client off.
#[test]
fn a_wg_quick_invite_brings_a_stock_client_through_the_exit() {
    let (provider, consumer, internet, underlay, uplink) = exit_topology("xw", 47, 48);
    internet.exec(&["ip", "addr", "add", "198.51.100.7/32", "dev", "lo"]);
    provider.ns.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &uplink.v4(2).to_string(),
    ]);
    let endpoint = format!("{}:51820", underlay.v4(2));
    let ifname = portdistrict_netns_tests::unique_ifname("pdw");
    let serve = start_serve(
        &provider,
        &serve_args(
            uplink.a_name(),
            &ifname,
            &["--endpoint", &endpoint, "--ipv6", "off"],
        ),
    );
    // Through the control socket of the running `exit serve`.
    let conf = provider.run_ok(&["exit", "invite", "--format", "wg-quick"]);
    assert!(conf.contains("NO KILL SWITCH"), "{conf}");
    assert!(conf.contains(&format!("Endpoint = {endpoint}")), "{conf}");
    assert!(conf.contains("DNS = 100.64.0.1"), "{conf}");
    assert!(conf.contains("AllowedIPs = 0.0.0.0/0"), "{conf}");
    let list = provider.run_ok(&["exit", "list"]);
    assert!(list.contains("consumers: 1"), "{list}");

    // The config as printed, but for DNS: wg-quick hands that line to resolvconf,
    // which this machine does not have (and must not get: it would manage the host's
    // resolver). Its resolver is the provider's, checked in other tests.
    let dir = TempDir::new("xw-conf");
    let client = portdistrict_netns_tests::unique_ifname("wgc");
    let path = dir.path().join(format!("{client}.conf"));
    let body: String = conf
        .lines()
        .filter(|l| !l.starts_with("DNS = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, body).unwrap();
    let up = stock_wg_quick(&consumer, "up", &path);
    assert!(
        up.status.success(),
        "wg-quick up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let seen = seen_from(&internet, &consumer);
    // Revoked (by its inner address): cut off at once.
    provider.run_ok(&["exit", "revoke", "100.64.0.2"]);
    std::thread::sleep(Duration::from_millis(500));
    let after = seen_from(&internet, &consumer);
    let down = stock_wg_quick(&consumer, "down", &path);
    assert_eq!(
        seen,
        uplink.v4(1).to_string(),
        "the internet must see the provider's uplink address"
    );
    assert_eq!(after, "none", "a revoked stock client still gets through");
    assert!(
        down.status.success(),
        "wg-quick down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!consumer.has_link(&client));
    drop(serve);
}

/// A DNS upstream on 10.77.44.2:53 that logs "source-port id" of each query to the
/// file argv[1] and answers each with two spoofs first — right ID and question from
/// another port, right ID and port with another question — then the real answer
/// (marked REAL).
const UPSTREAM: &str = r#"
import socket, sys, time
log = open(sys.argv[1], "a")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.77.44.2", 53))
other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
other.bind(("10.77.44.2", 5353))
print("ready", flush=True)
while True:
    q, src = s.recvfrom(512)
    print(src[1], int.from_bytes(q[:2], "big"), file=log, flush=True)
    a = bytearray(q); a[2] |= 0x80
    other.sendto(bytes(a) + b"SPOOF", src)
    b = bytearray(a); b[13] ^= 1
    s.sendto(bytes(b) + b"SPOOF", src)
    time.sleep(0.05)
    s.sendto(bytes(a) + b"REAL", src)
"#;

/// Asks 100.64.0.1:53 for each name in argv[2:] from argv[1]; prints "name ok" (the
/// real answer to its question), "name spoof", "name bad" or "name none".
const QUERY: &str = r#"
import socket, sys, os
def query(name):
    qid = os.urandom(2)
    return qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(
        bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00\x00\x01\x00\x01"
for name in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 0))
    s.settimeout(1)
    q = query(name)
    res = "none"
    for _ in range(5):
        s.sendto(q, ("100.64.0.1", 53))
        try:
            a = s.recv(600)
        except (socket.timeout, OSError):
            continue
        if a.endswith(b"SPOOF"):
            res = "spoof"
        elif a[:2] == q[:2] and a[12:len(q)] == q[12:] and a.endswith(b"REAL"):
            res = "ok"
        else:
            res = "bad"
        break
    print(name, res, flush=True)
"#;

/// From a host on the provider's uplink: a DNS query (UDP, TCP) and an exit request
/// (version 1, which today's provider would refuse with a nak) to 100.64.0.1; prints
/// what answered, or "silent".
const FROM_UPLINK: &str = r#"
import socket, sys
req = bytes.fromhex(sys.argv[1])
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03org\x00\x00\x01\x00\x01"
got = []
for port, msg, what in ((53, q, "dns"), (51821, req, "negotiation")):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    for _ in range(3):
        try:
            s.sendto(msg, ("100.64.0.1", port))
            s.recv(600)
            got.append(what)
            break
        except (socket.timeout, OSError):
            pass
try:
    t = socket.create_connection(("100.64.0.1", 53), timeout=2)
    t.sendall(len(q).to_bytes(2, "big") + q)
    t.settimeout(2)
    if t.recv(600):
        got.append("tcp-dns")
except OSError:
    pass
print(" ".join(got) or "silent")
"#;

/// Sends 300 copies of a datagram to the negotiation port from argv[1] as fast as it
/// can and prints how many were sent and how many answers came within 2 s after.
const FLOOD: &str = r#"
import socket, sys, time
src, req = sys.argv[1], bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.setblocking(False)
sent = got = 0
for _ in range(300):
    try:
        s.sendto(req, ("100.64.0.1", 51821))
        sent += 1
    except BlockingIOError:
        time.sleep(0.002)
    try:
        while True:
            s.recv(512)
            got += 1
    except BlockingIOError:
        pass
end = time.time() + 2
while time.time() < end:
    try:
        s.recv(512)
        got += 1
    except BlockingIOError:
        time.sleep(0.01)
print(sent, got)
"#;

/// Opens 300 TCP connections to argv[1] (HOST:PORT) as fast as it can, prints how
/// many opened and how many got the refusal "busy" (frame 00 02 04 05), and ends the
/// others with a frame of length 0 (which the provider refuses).
const CONNECT_FLOOD: &str = r#"
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
opened = busy = 0
socks = []
for _ in range(300):
    socks.append(socket.create_connection((host, int(port)), timeout=5))
    opened += 1
time.sleep(0.5)
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(8) == b"\x00\x02\x04\x05":
            busy += 1
    except OSError:
        pass
    try:
        s.sendall(b"\x00\x00")
    except OSError:
        pass
    s.close()
print(opened, busy)
"#;

/// The provider's resolver and negotiation port answer only on the tunnel, its DNS
/// forwarder cannot be spoofed by a wrong port or question and uses random ports and
/// IDs, a forged request for a victim's key is refused, a store that is unreadable
/// for a moment does not stop `exit serve`, and floods of negotiation datagrams and
/// of exit channel connections are rate limited while a legit consumer gets through.
#[test]
fn serve_is_closed_to_the_uplink_proves_keys_and_survives_abuse() {
    let (provider, consumer, internet, underlay, uplink) = exit_topology("xh", 43, 44);
    let logs = TempDir::new("xh-logs");
    let endpoint = format!("{}:51820", underlay.v4(2));
    let upstream_log = logs.path().join("upstream.log");
    let mut up_cmd = internet.command(&[
        "python3",
        "-u",
        "-c",
        UPSTREAM,
        &upstream_log.to_string_lossy(),
    ]);
    up_cmd.stdout(Stdio::piped());
    let mut upstream = ChildGuard::spawn("fake DNS upstream", &mut up_cmd);
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(upstream.child_mut().stdout.take().expect("piped")),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");

    let invite = new_invite(&provider, &["--endpoint", &endpoint, "--uses", "3"]);
    // The attacker's own, valid invite.
    let theirs = new_invite(&provider, &["--endpoint", &endpoint]);
    let ifname = portdistrict_netns_tests::unique_ifname("pdh");
    let serve_args = serve_args(uplink.a_name(), &ifname, &["--dns-upstream", "10.77.44.2"]);
    let mut serve = start_serve(&provider, &serve_args);
    // Let the forwarder, the negotiation socket and the exit channel bind.
    std::thread::sleep(Duration::from_millis(500));

    // (1) A host on the uplink routing the tunnel's addresses via the provider.
    internet.exec(&[
        "ip",
        "route",
        "add",
        "100.64.0.0/10",
        "via",
        &uplink.v4(1).to_string(),
    ]);
    let mut v1 = b"PDX\x01\x01".to_vec();
    v1.extend_from_slice(&[7; 48]);
    let heard = internet.exec(&["python3", "-c", FROM_UPLINK, &hex(&v1)]);
    assert_eq!(heard.trim(), "silent", "the uplink got answers: {heard}");

    // (2) The victim asks over the exit channel and uses the resolver through the
    // tunnel.
    let c = Daemon::start(&consumer, Implementation::Uut);
    c.ip(&["link", "set", c.ifname(), "up"]);
    let provider_key = b64(&invite.wg_key);
    let victim = Keypair::generate();
    let as_victim = |inner: &str| {
        consumer_as(
            &c,
            &victim.private,
            inner,
            &provider_key,
            &endpoint,
            "0.0.0.0/0",
        );
        c.ip(&["route", "replace", "100.64.0.1/32", "dev", c.ifname()]);
    };
    let inner_v4 = ask(&consumer, &invite, &victim)
        .expect("the victim is granted")
        .granted
        .inner_v4;
    let inner = inner_v4.to_string();
    as_victim(&inner);
    let names = [
        "a.pd.test",
        "b.pd.test",
        "c.pd.test",
        "d.pd.test",
        "e.pd.test",
    ];
    let mut argv = vec!["python3", "-c", QUERY, &inner];
    argv.extend(names);
    let answers = consumer.exec(&argv);
    for n in names {
        assert!(answers.contains(&format!("{n} ok")), "{answers}");
    }
    let log = std::fs::read_to_string(&upstream_log).unwrap();
    let seen: Vec<(u16, u16)> = log
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace().map(|x| x.parse::<u16>().unwrap());
            (w.next().unwrap(), w.next().unwrap())
        })
        .collect();
    assert!(seen.len() >= names.len(), "{log}");
    let ports: std::collections::BTreeSet<u16> = seen.iter().map(|s| s.0).collect();
    let ids: std::collections::BTreeSet<u16> = seen.iter().map(|s| s.1).collect();
    assert_eq!(
        ports.len(),
        seen.len(),
        "a fresh source port per query: {seen:?}"
    );
    assert_eq!(ids.len(), seen.len(), "distinct IDs: {seen:?}");
    let sequential = seen
        .windows(2)
        .filter(|w| w[1].1 == w[0].1.wrapping_add(1))
        .count();
    assert!(sequential < seen.len() - 1, "sequential IDs: {seen:?}");

    // (3) The holder of another invite puts the victim's key in a request proved
    // with its own key (without the proof, the provider would move the victim's
    // grant to this invite and give it another address): refused in message 2.
    let Message::Request { proof, .. } = request_as(&theirs, &Keypair::generate()) else {
        unreachable!()
    };
    let forged = Request {
        wg_key: *PublicKey::from_base64(&victim.public).unwrap().as_bytes(),
        proof,
    };
    let reply = exit::hello(&consumer, &theirs, forged).expect("message 2");
    assert_eq!(reply.answer, Answer::Nak(Refusal::BadProof));
    // An old consumer's in-tunnel request (no proof) is refused with a reason.
    assert_eq!(
        exchange_bytes(&consumer, &inner, &v1),
        Message::Nak(Refusal::Outdated)
    );

    // (4) The store is a directory for a moment: the channel answers "busy",
    // `exit serve` keeps running, and grants again once the store is back.
    let store = provider.state.path().join("exit/store.json");
    let aside = provider.state.path().join("exit/store.json.aside");
    std::fs::rename(&store, &aside).unwrap();
    std::fs::create_dir(&store).unwrap();
    let second = Keypair::generate();
    let e = exit::ask(
        &consumer,
        &invite,
        &second.private,
        &Pins::default(),
        Duration::from_secs(2),
    )
    .unwrap_err();
    assert!(e.contains("busy"), "{e}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        serve.0.try_status().is_none(),
        "exit serve died of a store error"
    );
    std::fs::remove_dir(&store).unwrap();
    std::fs::rename(&aside, &store).unwrap();
    ask(&consumer, &invite, &second).expect("granted once the store is back");

    // (5) Floods are held to their rates: in-tunnel requests from the victim's
    // address, and exit channel connections (beyond a source's burst they are
    // refused "busy" before any X25519 work).
    let flood = consumer.exec(&["python3", "-c", FLOOD, &inner, &hex(&v1)]);
    let (sent, got) = flood.trim().split_once(' ').expect("two numbers");
    let (sent, got): (u32, u32) = (sent.parse().unwrap(), got.parse().unwrap());
    assert!(sent >= 250, "{flood}");
    assert!(got <= 20, "{got} of {sent} flooded datagrams answered");
    let channel = format!("{}:{}", underlay.v4(2), invite.channel.unwrap().port);
    let flood = consumer.exec(&["python3", "-c", CONNECT_FLOOD, &channel]);
    let (opened, busy) = flood.trim().split_once(' ').expect("two numbers");
    let (opened, busy): (u32, u32) = (opened.parse().unwrap(), busy.parse().unwrap());
    assert_eq!(opened, 300, "{flood}");
    assert!(
        busy >= 150,
        "only {busy} of {opened} connections refused busy"
    );

    // ... while the victim, from its own address, still gets its grant (unchanged
    // by the forged request) and its resolver.
    std::thread::sleep(Duration::from_secs(1));
    let again = ask(&consumer, &invite, &victim).expect("the victim's grant");
    assert_eq!(again.granted.inner_v4, inner_v4);
    assert!(matches!(
        exchange(&consumer, &inner, &request_as(&invite, &victim)),
        Message::Ack { inner_v4: again, .. } if again == inner_v4
    ));
    let answers = consumer.exec(&["python3", "-c", QUERY, &inner, "f.pd.test"]);
    assert_eq!(answers.trim(), "f.pd.test ok");
    assert!(
        serve.0.try_status().is_none(),
        "exit serve is still running"
    );
    drop(serve);
    upstream.kill();
}

/// Stops `exit serve` with SIGTERM when the test ends early (a panic), so that it
/// takes its plan back and its dataplane removes its UAPI socket; SIGKILL (the
/// guard's own drop) only if that does not work within 5 s.
struct TermFirst(ChildGuard);

impl Drop for TermFirst {
    fn drop(&mut self) {
        if self.0.try_status().is_none() {
            let pid = self.0.pid().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            let _ = self.0.wait_timeout(Duration::from_secs(5));
        }
    }
}

/// `exit serve --attestation DIR` with a report that binds other keys (AMD's real
/// Milan report: its report data is a fixed pattern, not this provider's keys) does
/// not start: it names the failed check and how to get the right report data, and
/// leaves no interface or firewall table behind.
#[test]
fn serve_refuses_to_start_with_an_attestation_for_other_keys() {
    let (provider, _consumer, _internet, _underlay, uplink) = exit_topology("xa", 45, 46);
    let dir = TempDir::new("xa-attestation");
    let material =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/core/testdata/sev-snp");
    for (from, to) in [
        ("attestation.bin", "report.bin"),
        ("vcek.testcer", "vcek.der"),
        ("milan.testcer", "chain.pem"),
    ] {
        std::fs::copy(material.join(from), dir.path().join(to)).unwrap();
    }
    let ifname = portdistrict_netns_tests::unique_ifname("pda");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let args = serve_args(uplink.a_name(), &ifname, &["--attestation", &dir_arg]);
    let mut cmd = provider.command("portdistrict", &args);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut serve = ChildGuard::spawn("portdistrict exit serve", &mut cmd);
    let status = serve
        .wait_timeout(Duration::from_secs(20))
        .expect("exit serve kept running with an attestation for other keys");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(serve.child_mut().stderr.as_mut().expect("piped"), &mut err)
        .unwrap();
    assert!(err.contains("fails its check report_data"), "{err}");
    assert!(err.contains("exit attestation-data"), "{err}");
    assert!(!exit_table(&provider.ns), "a firewall table was left");
    let links = provider.ns.exec(&["ip", "-o", "link"]);
    assert!(
        !links.contains(&ifname),
        "the tunnel {ifname} was left:\n{links}"
    );
}
