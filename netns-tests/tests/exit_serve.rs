//! `portdistrict exit serve` end to end with a hand-driven consumer: a provider
//! namespace (underlay veth to the consumer, uplink veth to an "internet" namespace)
//! runs `exit invite` and `exit serve`; the consumer, a real dataplane, takes the
//! invite's negotiation identity, sends its exit request through the tunnel, gets an
//! ack with its inner address, switches to its own key and reaches the internet,
//! which sees only the provider's uplink address. A second consumer with the
//! single-use invite is refused. SIGTERM takes everything back.

use portdistrict_exitnode::invite::Invite;
use portdistrict_exitnode::store::Refusal;
use portdistrict_exitnode::wire::Message;
use portdistrict_netns_tests::{
    uut_binary, wait_until, ChildGuard, Daemon, Implementation, Keypair, Netns, TempDir, Veth,
};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

fn cli() -> String {
    uut_binary()
        .with_file_name("portdistrict")
        .to_string_lossy()
        .into_owned()
}

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

fn exchange(ns: &Netns, src: &str, msg: &Message) -> Message {
    let out = ns.exec(&["python3", "-c", EXCHANGE, src, &hex(&msg.emit())]);
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

/// Configures the consumer as the invite's negotiation identity, able to reach only
/// the provider's negotiation address.
fn as_negotiator(c: &Daemon, key: &str, addr: &str, provider: &str, endpoint: &str) {
    consumer_as(c, key, addr, provider, endpoint, "100.64.0.1/32");
    c.ip(&["route", "replace", "100.64.0.1/32", "dev", c.ifname()]);
}

#[test]
fn serve_negotiates_forwards_masquerades_and_cleans_up() {
    let provider = Netns::new("xs-provider");
    let consumer = Netns::new("xs-consumer");
    let internet = Netns::new("xs-internet");
    let underlay = Veth::new(&consumer, &provider, 41);
    let uplink = Veth::new(&provider, &internet, 42);
    // The internet is a public address behind the uplink (the uplink's own subnet and
    // private ranges are not for consumers).
    internet.exec(&["ip", "addr", "add", "198.51.100.7/32", "dev", "lo"]);
    provider.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &uplink.v4(2).to_string(),
    ]);
    let state = TempDir::new("xs-state");
    let run_dir = TempDir::new("xs-run");
    let (st, rd) = (
        state.path().to_string_lossy(),
        run_dir.path().to_string_lossy(),
    );
    let endpoint = format!("{}:51820", underlay.v4(2));

    let line = provider.exec(&[
        &cli(),
        "--state-dir",
        &st,
        "--run-dir",
        &rd,
        "exit",
        "invite",
        "--endpoint",
        &endpoint,
    ]);
    let invite = Invite::decode(&line).expect("the CLI's invite decodes");

    let ifname = portdistrict_netns_tests::unique_ifname("pdx");
    let serve_cmd = || {
        let mut c = provider.command(&[
            &cli(),
            "--state-dir",
            &st,
            "--run-dir",
            &rd,
            "exit",
            "serve",
            "--uplink",
            uplink.a_name(),
            "--interface",
            &ifname,
        ]);
        c.env("PD_DATAPLANE", uut_binary()).stdin(Stdio::null());
        c
    };
    let mut cmd = serve_cmd();
    let mut serve = TermFirst(ChildGuard::spawn("portdistrict exit serve", &mut cmd));
    let up = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        provider
            .try_exec(&["nft", "list", "table", "inet", "portdistrict_exit"])
            .status
            .success()
    });
    assert!(up, "exit serve did not come up");

    let c = Daemon::start(&consumer, Implementation::Uut);
    c.ip(&["link", "set", c.ifname(), "up"]);
    let provider_key = b64(&invite.wg_key);
    let neg_key = PrivateKey::from_bytes(invite.negotiation_key).to_base64();
    let neg_addr = invite.negotiation_addr.to_string();
    as_negotiator(&c, &neg_key, &neg_addr, &provider_key, &endpoint);

    let me = Keypair::generate();
    let my_key = *PublicKey::from_base64(&me.public).unwrap().as_bytes();
    let request = Message::Request {
        token: invite.token,
        wg_key: my_key,
    };
    let Message::Ack {
        inner_v4, resolver, ..
    } = exchange(&consumer, &neg_addr, &request)
    else {
        panic!("the exit request was not acked");
    };
    assert_eq!(resolver, IpAddr::from([100, 64, 0, 1]));

    // Now as itself, with all of IPv4 through the provider.
    consumer_as(
        &c,
        &me.private,
        &inner_v4.to_string(),
        &provider_key,
        &endpoint,
        "0.0.0.0/0",
    );
    c.ip(&["route", "add", "198.51.100.0/24", "dev", c.ifname()]);
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
    if line.trim() == "none" {
        for argv in [
            &["wg", "show", "all"][..],
            &["nft", "list", "ruleset"],
            &["sysctl", "-a", "--pattern", "forwarding"],
            &["ip", "-s", "link"],
            &["ip", "route"],
        ] {
            eprintln!(
                "provider $ {argv:?}\n{}",
                String::from_utf8_lossy(&provider.try_exec(argv).stdout)
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
        line.trim(),
        uplink.v4(1).to_string(),
        "the internet must see the provider's uplink address, not {inner_v4}"
    );

    // The single-use invite is spent: another consumer is refused.
    let other = Keypair::generate();
    let again = Message::Request {
        token: invite.token,
        wg_key: *PublicKey::from_base64(&other.public).unwrap().as_bytes(),
    };
    as_negotiator(&c, &neg_key, &neg_addr, &provider_key, &endpoint);
    assert_eq!(
        exchange(&consumer, &neg_addr, &again),
        Message::Nak(Refusal::UsedUp)
    );

    // SIGKILL leaves the plan and the interface; the next `exit serve` takes them
    // back before it starts (and comes up).
    provider.exec(&["kill", "-KILL", &serve.0.pid().to_string()]);
    let _ = serve.0.wait_timeout(Duration::from_secs(5));
    assert!(provider
        .try_exec(&["nft", "list", "table", "inet", "portdistrict_exit"])
        .status
        .success());
    assert!(provider.has_link(&ifname));
    let mut again = serve_cmd();
    again.stderr(Stdio::piped());
    serve = TermFirst(ChildGuard::spawn("portdistrict exit serve", &mut again));
    let stderr = serve.0.child_mut().stderr.take().expect("piped");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let log: Vec<String> = lines
        .by_ref()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("exit node up"))
        .collect();
    // Keep draining its log so that it never writes to a closed pipe.
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("exit serve: {l}");
        }
    });
    assert!(
        log.iter().any(|l| l.contains("did not stop cleanly")),
        "no recovery: {log:#?}"
    );

    // SIGTERM: the provider takes its plan back and deletes the interface.
    provider.exec(&["kill", "-TERM", &serve.0.pid().to_string()]);
    let status = serve.0.wait_timeout(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit serve: {status:?}"
    );
    let tables = provider.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("portdistrict_exit"), "{tables}");
    assert!(!provider.has_link(&ifname));
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
