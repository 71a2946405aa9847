//! The control plane end to end on a real DNS server: Knot in a "dns" namespace (the
//! primary for `pd.test`, accepting RFC 2136 updates signed with one TSIG key, and
//! routing between the others); alice (a laptop holding her identity, and a phone that
//! joins by `device request` / `device roster add` / `device join`, the roster add
//! going through the laptop's running daemon) and bob (a desk),
//! each device in its own namespace, create identities and devices, exchange bundles, verify fingerprints and trust each other;
//! `portdistrictd --once` publishes their records and connects to the other's device,
//! and the overlay (IPv6, derived prefixes) carries pings between every pair of devices,
//! both ways. Then bob revokes
//! alice: his next cycle republishes without her as a reader and disconnects her, her
//! pings fail, and her next cycle logs that bob's record is no longer readable.
//! `tunnel list|show` agree with `wg show`, and `tunnel disconnect` holds across a
//! cycle until `tunnel connect`. A wrong TSIG secret gets a clear refusal; a record altered in the zone by hand is
//! rejected with the reason and leaves the tunnel as it was; a daemon restarted while
//! a ping runs loses at most one; a device with no endpoint is published with a loud
//! warning.

use portdistrict_netns_tests::{
    metrics, output_text, uut_binary, ControlNode, Knot, Netns, TempDir, Veth,
};
use std::process::Stdio;

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=";

#[test]
fn two_identities_find_each_other_in_dns_and_revocation_cuts_off() {
    let dns = Netns::new("cd-dns");
    dns.enable_forwarding();
    let (alice_ns, alice_link) = Netns::behind("cd-alice", &dns, 61);
    let (bob_ns, bob_link) = Netns::behind("cd-bob", &dns, 62);
    // Carol's machine has only link-scope addresses: nothing to publish as endpoint.
    let carol_ns = Netns::new("cd-carol");
    let carol_link = Veth::new(&carol_ns, &dns, 63);
    // Alice's second device, on a machine without her identity's secret.
    let (phone_ns, phone_link) = Netns::behind("cd-phone", &dns, 64);
    carol_ns.exec(&["ip", "addr", "flush", "dev", carol_link.a_name()]);
    carol_ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", carol_link.v4(1)),
        "dev",
        carol_link.a_name(),
        "scope",
        "link",
    ]);
    let _knot = Knot::start_with_updates(
        &dns,
        &[
            alice_link.v4(2).into(),
            bob_link.v4(2).into(),
            carol_link.v4(2).into(),
            phone_link.v4(2).into(),
        ],
        "pd.test",
        &[],
        Some(("pd-key", SECRET)),
    );
    let alice = ControlNode::new(alice_ns, "cd-alice", "pdo", alice_link.v4(2));
    let bob = ControlNode::new(bob_ns, "cd-bob", "pdo", bob_link.v4(2));
    let phone = ControlNode::new(phone_ns, "cd-phone", "pdo", phone_link.v4(2));
    let secrets = TempDir::new("cd-secrets");
    let secret = secrets
        .write_private("tsig", SECRET)
        .to_string_lossy()
        .into_owned();
    let wrong = secrets
        .write_private("wrong", "d3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmc=")
        .to_string_lossy()
        .into_owned();

    // Identities, devices, bundles exchanged, fingerprints verified, trust both ways.
    alice.machine.init_identity("alice.pd.test", "laptop");
    bob.machine.init_identity("bob.pd.test", "desk");
    // The phone asks to join; alice's laptop delegates it; the phone joins.
    let request = phone.machine.run_ok(&[
        "device",
        "request",
        "--name",
        "phone",
        "--namespace",
        "alice.pd.test",
    ]);
    // The laptop's daemon runs (with a long interval) while it delegates the phone:
    // `device roster add` goes through it, it signs with the seed it holds, writes the
    // roster and republishes at once.
    let alice_log = secrets.path().join("alice-daemon.log");
    let mut alice_daemon = portdistrict_netns_tests::ChildGuard::spawn(
        "portdistrictd (alice)",
        alice
            .daemon("pd-key", &secret, &["--interval", "600s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&alice_log).unwrap()),
    );
    let alice_read = || std::fs::read_to_string(&alice_log).unwrap_or_default();
    let alice_cycles = |n: usize| {
        portdistrict_netns_tests::wait_until(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(100),
            || alice_read().matches("cycle done").count() >= n,
        )
    };
    assert!(alice_cycles(1), "alice's daemon: {}", alice_read());
    let bundle_for_phone = alice
        .machine
        .run_ok(&["device", "roster", "add", request.trim()]);
    // The socket's message: the daemon watches no file any more (an offline write of
    // roster.json would go unnoticed for 600 s).
    assert!(
        alice_cycles(2)
            && alice_read().contains("trust, roster or tunnels changed: republishing now"),
        "the roster change did not reach alice's daemon through its socket: {}",
        alice_read()
    );
    alice
        .machine
        .ns
        .exec(&["kill", "-TERM", &alice_daemon.pid().to_string()]);
    assert!(alice_daemon
        .wait_timeout(std::time::Duration::from_secs(2))
        .is_some_and(|s| s.success()));
    assert!(phone
        .machine
        .run_ok(&["device", "join", bundle_for_phone.trim()])
        .contains("joined"));
    let devices: serde_json::Value =
        serde_json::from_str(&alice.machine.run_ok(&["device", "list", "--json"])).unwrap();
    assert_eq!(devices["this_device"]["name"], "laptop");
    assert_eq!(devices["roster"][1]["name"], "phone", "{devices}");
    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        assert!(me.machine.trust(&other.machine).contains("SEEN"));
    }

    // A wrong TSIG secret: refused, and said so.
    let out = alice.daemon_once("pd-key", &wrong, &[]);
    let log = output_text(&out);
    assert!(log.contains("NOTAUTH") || log.contains("refused"), "{log}");

    // Publish and connect: alice first (bob's records are not there yet), then bob,
    // then alice again.
    for n in [&alice, &bob, &phone, &alice, &bob, &phone] {
        let out = n.daemon_once("pd-key", &secret, &[]);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let (a, b, ph) = (
        alice.overlay_addr(),
        bob.overlay_addr(),
        phone.overlay_addr(),
    );
    for (from, to, what) in [
        (&alice, &b, "alice -> bob"),
        (&bob, &a, "bob -> alice"),
        (&alice, &ph, "alice's laptop -> her phone"),
        (&phone, &a, "alice's phone -> her laptop"),
        (&bob, &ph, "bob -> alice's phone"),
        (&phone, &b, "alice's phone -> bob"),
    ] {
        assert!(
            from.pings(to),
            "{what} over the overlay\n{}",
            output_text(&from.daemon_once("pd-key", &secret, &[]))
        );
    }

    // `portdistrict ping` probes the same tunnel and says how it goes.
    let pinged = alice.machine.run_ok(&["ping", "desk", "--count", "2"]);
    assert!(
        pinged.contains("desk.bob.pd.test")
            && pinged.contains("path direct")
            && pinged.contains("2 sent, 2 answered"),
        "{pinged}"
    );

    // The daemon programs the dataplane through shared memory; a corrupt region is
    // reported and counted by the dataplane, which keeps its last good configuration.
    let stats = |n: &ControlNode| {
        n.machine
            .ns
            .exec(&[&uut_binary().to_string_lossy(), "--stats", &n.ifname])
    };
    let counter = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.trim() == name)
                    .map(|(_, v)| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let before = stats(&alice);
    assert!(counter(&before, "shm_updates") >= 1, "{before}");
    assert_eq!(counter(&before, "shm_errors"), 0, "{before}");
    let region = alice
        .machine
        .state
        .path()
        .join("run")
        .join(format!("{}.shm", alice.ifname));
    let corrupt = r#"
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(128 + 64)            # first peer entry: endpoint family
    f.write(bytes([9]))
    f.seek(32)                  # configuration generation: a new even value
    g = struct.unpack("<Q", f.read(8))[0]
    f.seek(32)
    f.write(struct.pack("<Q", g + 2))
"#;
    alice
        .machine
        .ns
        .exec(&["python3", "-c", corrupt, &region.to_string_lossy()]);
    assert!(
        portdistrict_netns_tests::wait_until(
            std::time::Duration::from_secs(3),
            std::time::Duration::from_millis(100),
            || counter(&stats(&alice), "shm_errors") >= 1
        ),
        "the dataplane did not report the corrupt region: {}",
        stats(&alice)
    );
    assert!(
        alice.pings(&b),
        "a corrupt region must leave the last good configuration"
    );
    // The next cycle writes a good configuration again.
    assert!(alice.daemon_once("pd-key", &secret, &[]).status.success());
    assert!(alice.pings(&b));

    // tunnel list/show agree with `wg show`; disconnect by hand holds across a cycle.
    let list = alice.machine.run_ok(&["tunnel", "list"]);
    assert!(list.contains("desk.bob.pd.test"), "{list}");
    let shown = alice
        .machine
        .run_ok(&["tunnel", "show", "desk.bob.pd.test"]);
    let key = shown
        .lines()
        .find_map(|l| l.strip_prefix("public key:"))
        .expect("public key line")
        .trim()
        .to_owned();
    let dump = alice
        .machine
        .ns
        .exec(&["wg", "show", &alice.ifname, "dump"]);
    let peer_line = dump
        .lines()
        .find(|l| l.starts_with(&key))
        .unwrap_or_else(|| panic!("{key} not in wg show:\n{dump}"));
    let fields: Vec<&str> = peer_line.split('\t').collect();
    assert!(
        shown.contains(fields[0]),
        "public key: {shown} vs {peer_line}"
    );
    assert!(
        shown.contains(fields[3]),
        "allowed ips: {shown} vs {peer_line}"
    );
    assert!(
        shown.contains(fields[2]),
        "endpoint: {shown} vs {peer_line}"
    );
    let status = alice.machine.run_ok(&["status"]);
    assert!(status.contains("tunnels:  2"), "{status}");
    // The dataplane's XDP program guards the underlay, and status says so.
    assert!(status.contains("xdp:      filter on "), "{status}");
    alice
        .machine
        .run_ok(&["tunnel", "disconnect", "desk.bob.pd.test"]);
    assert!(
        !alice.pings(&b),
        "disconnected by hand, yet bob is reachable"
    );
    assert!(alice.daemon_once("pd-key", &secret, &[]).status.success());
    assert!(
        !alice.pings(&b),
        "the daemon reconnected a tunnel disconnected by hand"
    );
    alice
        .machine
        .run_ok(&["tunnel", "connect", "desk.bob.pd.test"]);
    assert!(alice.daemon_once("pd-key", &secret, &[]).status.success());
    assert!(
        alice.pings(&b),
        "tunnel connect did not bring it back:\n{}\n{}",
        alice.machine.ns.exec(&["wg", "show", &alice.ifname]),
        stats(&alice)
    );

    // A record altered in the zone by hand is rejected with the reason, and the tunnel
    // to that device stays as it was.
    let bob_dev = "_portdistrict.desk.bob.pd.test.";
    let at = format!("@{}", alice.dns);
    let txt = alice
        .machine
        .ns
        .exec(&["kdig", &at, "+short", "TXT", bob_dev]);
    let line = txt
        .lines()
        .find(|l| l.contains("pd1"))
        .unwrap_or_else(|| panic!("bob's device record in {txt:?}"))
        .to_owned();
    let mut altered = line.clone().into_bytes();
    // Inside the sealed body (its end), not in a key slot meant for someone else.
    assert!(line.contains("pd1 1/1"), "chunk prefix in {line:?}");
    let i = line.len() - 10;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let script = format!(
        "server {} 53\nzone pd.test.\nupdate delete {bob_dev} TXT\nupdate add {bob_dev} 60 TXT {altered}\nsend\n",
        alice.dns
    );
    let script_file = secrets.write_private("nsupdate", &script);
    alice.machine.ns.exec(&[
        "knsupdate",
        "-y",
        &format!("hmac-sha256:pd-key:{SECRET}"),
        &script_file.to_string_lossy(),
    ]);
    let out = alice.daemon_once("pd-key", &secret, &[]);
    let log = output_text(&out);
    assert!(
        log.contains("device record _portdistrict.desk.bob.pd.test rejected"),
        "{log}"
    );
    assert!(
        alice.pings(&b),
        "an altered record must leave the tunnel as it was"
    );
    assert!(
        bob.daemon_once("pd-key", &secret, &[]).status.success(),
        "bob republishes"
    );

    // portdistrictd restarted while a ping runs: at most one lost.
    let ping = alice
        .machine
        .ns
        .command(&["ping", "-6", "-c", "30", "-i", "0.2", "-W", "1", &b])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping");
    let mut d = portdistrict_netns_tests::ChildGuard::spawn(
        "portdistrictd",
        alice
            .daemon("pd-key", &secret, &["--interval", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let t0 = std::time::Instant::now();
    alice
        .machine
        .ns
        .exec(&["kill", "-TERM", &d.pid().to_string()]);
    assert!(
        d.wait_timeout(std::time::Duration::from_secs(1))
            .is_some_and(|s| s.success()),
        "portdistrictd did not exit within 1 s of SIGTERM"
    );
    eprintln!("portdistrictd exited {:?} after SIGTERM", t0.elapsed());
    let mut d = portdistrict_netns_tests::ChildGuard::spawn(
        "portdistrictd",
        alice
            .daemon(
                "pd-key",
                &secret,
                &["--interval", "1s", "--metrics-listen", "127.0.0.1:9587"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let out = ping.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let received: u32 = text
        .split(',')
        .find_map(|p| {
            p.trim()
                .strip_suffix(" received")
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("ping summary: {text}"));
    assert!(
        received >= 29,
        "more than one ping lost across the restart: {text}"
    );
    // Its metrics (`--metrics-listen`): cycles done, bob trusted, his device
    // configured and up (the pings just crossed it), records published.
    let scrape = metrics::scrape(&alice.machine.ns, "127.0.0.1:9587", "/metrics");
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    metrics::promtool_check(&scrape.body);
    let m = metrics::parse(&scrape.body);
    let get = |name: &str| {
        m.get(name, &[])
            .unwrap_or_else(|| panic!("no {name} in\n{}", scrape.body))
    };
    let ok = m.get("portdistrictd_cycles_total", &[("result", "ok")]);
    assert!(ok.is_some_and(|n| n >= 1.0), "{}", scrape.body);
    assert_eq!(get("portdistrictd_peers_trusted"), 1.0, "{}", scrape.body);
    assert!(
        get("portdistrictd_tunnels_configured") >= 1.0,
        "{}",
        scrape.body
    );
    assert!(get("portdistrictd_tunnels_up") >= 1.0, "{}", scrape.body);
    assert!(
        get("portdistrictd_records_published_total") >= 1.0,
        "{}",
        scrape.body
    );
    assert!(get("portdistrictd_last_successful_cycle_timestamp_seconds") > 1.7e9);
    alice
        .machine
        .ns
        .exec(&["kill", "-TERM", &d.pid().to_string()]);
    let _ = d.wait_timeout(std::time::Duration::from_secs(2));

    // A device record with no endpoint is published with a loud warning.
    let carol = ControlNode::new(carol_ns, "cd-carol", "pdo", carol_link.v4(2));
    carol.machine.init_identity("carol.pd.test", "tablet");
    let out = carol.daemon_once("pd-key", &secret, &[]);
    let log = output_text(&out);
    assert!(log.contains("with NO endpoint"), "{log}");
    assert!(
        log.contains("published _portdistrict.carol.pd.test"),
        "{log}"
    );

    // Bob revokes alice while his daemon runs with a long interval: it republishes at
    // once with the new key slots and cuts her off; she cannot read him any more.
    let bob_log = secrets.path().join("bob-daemon.log");
    let log_file = std::fs::File::create(&bob_log).unwrap();
    let mut bob_daemon = portdistrict_netns_tests::ChildGuard::spawn(
        "portdistrictd (bob)",
        bob.daemon("pd-key", &secret, &["--interval", "600s"])
            .stdout(Stdio::null())
            .stderr(log_file),
    );
    let read_log = || std::fs::read_to_string(&bob_log).unwrap_or_default();
    assert!(
        portdistrict_netns_tests::wait_until(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(100),
            || read_log().contains("cycle done")
        ),
        "bob's daemon did not complete a cycle: {}",
        read_log()
    );
    let alice_node: serde_json::Value =
        serde_json::from_str(&alice.machine.run_ok(&["identity", "show", "--json"])).unwrap();
    bob.machine
        .run_ok(&["peer", "revoke", alice_node["node_id"].as_str().unwrap()]);
    assert!(
        portdistrict_netns_tests::wait_until(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(100),
            || read_log().contains("disconnected")
        ),
        "revoking did not republish and disconnect at once: {}",
        read_log()
    );
    assert!(read_log().contains("republishing now"), "{}", read_log());
    bob.machine
        .ns
        .exec(&["kill", "-TERM", &bob_daemon.pid().to_string()]);
    let _ = bob_daemon.wait_timeout(std::time::Duration::from_secs(2));
    assert!(
        !alice.pings(&b),
        "alice still reaches bob after the revocation"
    );
    let out = alice.daemon_once("pd-key", &secret, &[]);
    let log = output_text(&out);
    assert!(
        log.contains("bob.pd.test") && log.contains("not readable with our key"),
        "{log}"
    );
}
