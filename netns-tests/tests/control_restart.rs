//! Restarting portdistrictd keeps the tunnel (ARCHITECTURE.md, Operations). Alice runs
//! the daemon as systemd would (`NOTIFY_SOCKET` naming a datagram socket the test
//! bound); bob runs `--once` cycles. While bob pings alice over the overlay (every
//! 50 ms), alice's daemon gets SIGTERM: it says STOPPING=1 and exits 0, leaving its
//! dataplane running (under systemd, `KillMode=process` in portdistrictd.service keeps
//! it there too); a new daemon takes up the dataplane's shared-memory region and says
//! READY=1 after its first cycle. The pings lose at most a few packets across the
//! restart (none expected: the dataplane and its sessions never stop), and the tunnel
//! is still the same dataplane process afterwards.
//!
//! The kill switch is not the daemon's (`use` applies it and starts its own
//! dataplane; portdistrictd never touches its table), so a daemon restart cannot flush
//! it; `kill_switch.rs` and `consumer_boot.rs` cover the switch itself.

use portdistrict_netns_tests::{
    find_daemon_pids, next_notification, output_text, run, uut_binary, ChildGuard, ControlNode,
    Knot, Netns, TempDir,
};
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=";
/// Pings sent during the test (one per 50 ms: 16 s).
const PINGS: u32 = 320;
/// Pings that may go missing across the restart (0.5 s worth).
const MAX_LOST: u32 = 10;

/// The first notification on `sock` with the line `line` (others, such as a cycle's
/// `STATUS=`, are passed over), within `within`.
fn wait_for(sock: &UnixDatagram, line: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {line} within {within:?}; seen: {seen:?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 4096];
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("no {line} within {within:?} ({e}); seen: {seen:?}"),
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.lines().any(|l| l == line) {
            return text;
        }
        seen.push(text);
    }
}

/// Alice's long-running daemon, its log in `log`, notifying `notify`.
fn start_daemon(
    alice: &ControlNode,
    secret: &str,
    notify: &std::path::Path,
    log: &std::path::Path,
) -> ChildGuard {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("daemon log");
    let mut cmd = alice.daemon("pd-key", secret, &["--interval", "3s"]);
    cmd.env("NOTIFY_SOCKET", notify)
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    ChildGuard::spawn("alice's portdistrictd", &mut cmd)
}

/// `N packets transmitted, M received` of ping's summary.
fn ping_counts(text: &str) -> (u32, u32) {
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{text}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn restarting_the_daemon_keeps_the_tunnel_and_its_traffic() {
    portdistrict_netns_tests::require_root();
    let dns = Netns::new("cr-dns");
    dns.enable_forwarding();
    let (alice_ns, alice_link) = Netns::behind("cr-alice", &dns, 91);
    let (bob_ns, bob_link) = Netns::behind("cr-bob", &dns, 92);
    let _knot = Knot::start_with_updates(
        &dns,
        &[alice_link.v4(2).into(), bob_link.v4(2).into()],
        "pd.test",
        &[],
        Some(("pd-key", SECRET)),
    );
    let alice = ControlNode::new(alice_ns, "cr-alice", "pdr", alice_link.v4(2));
    let bob = ControlNode::new(bob_ns, "cr-bob", "pdr", bob_link.v4(2));
    let files = TempDir::new("cr-files");
    let secret = files
        .write_private("tsig", SECRET)
        .to_string_lossy()
        .into_owned();
    let notify_path = files.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let log = files.path().join("alice.log");
    let alice_log = || std::fs::read_to_string(&log).unwrap_or_default();

    alice.machine.init_identity("alice.pd.test", "laptop");
    bob.machine.init_identity("bob.pd.test", "desk");
    alice.machine.trust(&bob.machine);
    bob.machine.trust(&alice.machine);
    let bob_once = || {
        let out = bob.daemon_once("pd-key", &secret, &[]);
        assert!(out.status.success(), "bob: {}", output_text(&out));
    };

    bob_once();
    let mut daemon = start_daemon(&alice, &secret, &notify_path, &log);
    let ready = next_notification(&notify, Duration::from_secs(60));
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "{ready:?}\n{}",
        alice_log()
    );
    bob_once();
    let a = alice.overlay_addr();
    assert!(
        bob.pings(&a),
        "bob -> alice before the restart\n{}",
        alice_log()
    );
    let dataplane = find_daemon_pids(&uut_binary(), &alice.ifname);
    assert_eq!(dataplane.len(), 1, "alice's dataplane: {dataplane:?}");

    // Bob pings alice throughout; alice's daemon restarts in the middle.
    let mut ping = bob.machine.ns.command(&[
        "ping",
        "-6",
        "-n",
        "-q",
        "-i",
        "0.05",
        "-W",
        "1",
        "-c",
        &PINGS.to_string(),
        &a,
    ]);
    ping.stdout(Stdio::piped()).stderr(Stdio::piped());
    let pinger = std::thread::spawn(move || ping.output().expect("ping"));
    std::thread::sleep(Duration::from_secs(3));

    run(&["kill", "-TERM", &daemon.pid().to_string()]);
    wait_for(&notify, "STOPPING=1", Duration::from_secs(10));
    let status = daemon
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the daemon did not exit on SIGTERM\n{}", alice_log()));
    assert!(status.success(), "{status}\n{}", alice_log());
    assert_eq!(
        find_daemon_pids(&uut_binary(), &alice.ifname),
        dataplane,
        "the dataplane outlives the daemon"
    );
    std::thread::sleep(Duration::from_secs(2));

    let mut daemon = start_daemon(&alice, &secret, &notify_path, &log);
    let ready = next_notification(&notify, Duration::from_secs(60));
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "{ready:?}\n{}",
        alice_log()
    );
    assert!(ready.contains("1 peer devices connected"), "{ready:?}");
    assert!(
        !pinger.is_finished(),
        "the restart must happen while bob pings"
    );

    let out = pinger.join().expect("ping thread");
    let (sent, received) = ping_counts(&output_text(&out));
    eprintln!("pings across the restart: {received}/{sent} answered");
    assert_eq!(sent, PINGS);
    assert!(
        sent - received <= MAX_LOST,
        "{} of {sent} pings lost across the restart\n{}",
        sent - received,
        alice_log()
    );
    assert_eq!(
        find_daemon_pids(&uut_binary(), &alice.ifname),
        dataplane,
        "the same dataplane carries the tunnel"
    );
    assert!(bob.pings(&a), "bob -> alice after the restart");
    daemon.terminate(Duration::from_secs(10));
}
