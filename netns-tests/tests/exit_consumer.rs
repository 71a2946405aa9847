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

use portdistrict_netns_tests::exit::{
    assert_echo_blocked, echo, internet, leaks, pings, start_echo, Capture, Consumer, Provider,
    ECHO_V4, ECHO_V6,
};
use portdistrict_netns_tests::{
    unique_ifname, wait_until, ChildGuard, CliMachine, Knot, Netns, TempDir, Veth,
};
use std::time::Duration;

/// A server on the consumers' LAN side (a route via their gateway), for `--allow-lan`.
const LAN_SERVER: &str = "10.77.99.1";

/// Resolves `NAME` with the system resolver (resolv.conf): prints the address or `none`.
const LOOKUP: &str = r#"
import socket, sys
try:
    print(socket.getaddrinfo(sys.argv[1], 7000, socket.AF_INET)[0][4][0])
except OSError as e:
    print("none", e)
"#;

fn kdig(ns: &Netns, server: &str, name: &str) -> String {
    let at = format!("@{server}");
    let out = ns.try_exec(&["kdig", &at, "+short", "+timeout=1", "+retry=0", "A", name]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything a consumer might send to the internet fails.
fn assert_all_blocked(ns: &Netns, when: &str) {
    assert_echo_blocked(ns, when);
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

/// A consumer `role` behind the internet on veth `subnet`, its resolver pointing at
/// the internet's DNS server.
fn consumer(role: &str, internet: &Netns, subnet: u8) -> (Consumer, Veth) {
    Consumer::new(
        role,
        internet,
        subnet,
        &format!("nameserver {ECHO_V4}\noptions timeout:1 attempts:1\n"),
    )
}

/// `use invite` must fail, saying `needle`.
fn use_err(c: &Consumer, invite: &str, needle: &str) {
    let out = c.try_use(invite);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "use must fail ({needle})");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
}

#[test]
fn system_mode_end_to_end() {
    let internet = internet("xc-internet");
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
    let _echo = start_echo(&internet, &[7000], &[ECHO_V4, ECHO_V6, LAN_SERVER]);

    let (pns, uplink) = Netns::behind("xc-provider", &internet, 52);
    let provider = Provider {
        machine: CliMachine::with_run_dir(pns, TempDir::new("xc-pstate"), TempDir::new("xc-prun")),
        ifname: unique_ifname("pdx"),
        uplink: uplink.a_name().to_owned(),
    };
    let endpoint = format!("{}:51820", uplink.v4(1));
    let mut serve = provider.serve(ECHO_V4, &["--endpoint", &endpoint]);
    let invite = |extra: &[&str]| {
        let mut a = vec!["exit", "invite"];
        a.extend_from_slice(extra);
        provider.run(&a)
    };
    let inv1 = invite(&[]);
    let inv2 = invite(&[]);
    let inv_expiring = invite(&["--expires", "1s"]);

    let (c1, c1_link) = consumer("xc-consumer", &internet, 51);
    let before = c1.snapshot(&[]);
    // Before system mode, DNS goes straight to the internet's server.
    assert_eq!(kdig(c1.ns(), ECHO_V4, "echo.pd.test"), ECHO_V4);
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
            echo(c1.ns(), mode, ECHO_V4),
            uplink.v4(1).to_string(),
            "{mode} v4"
        );
        assert_eq!(
            echo(c1.ns(), mode, ECHO_V6),
            uplink.v6(1).to_string(),
            "{mode} v6"
        );
    }
    assert!(pings(c1.ns(), ECHO_V4), "ping v4 through the provider");
    assert!(pings(c1.ns(), ECHO_V6), "ping v6 through the provider");

    // (b) DNS through the tunnel (the system resolver now points at it); direct DNS
    // to the internet's server is blocked.
    let looked_up = c1.ns().exec(&["python3", "-c", LOOKUP, "echo.pd.test"]);
    assert_eq!(looked_up.trim(), ECHO_V4);
    assert_eq!(kdig(c1.ns(), "100.64.0.1", "echo.pd.test"), ECHO_V4);
    assert_eq!(kdig(c1.ns(), ECHO_V4, "echo.pd.test"), "", "direct DNS");

    // `use` again is idempotent.
    let snapshot_on = c1.snapshot(&[]);
    assert!(c1.use_ok(&inv1).contains("already on"));
    assert_eq!(c1.snapshot(&[]), snapshot_on);
    use_err(&c1, &inv2, "use off");

    // (c) SIGKILL of the dataplane: blocked, not open.
    for pid in c1.dataplane_pids() {
        c1.ns().exec(&["kill", "-KILL", &pid.to_string()]);
    }
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || !c1.ns().has_link(&c1.ifname)
    ));
    assert_all_blocked(c1.ns(), "after SIGKILL of the dataplane");
    assert!(c1.run(&["use", "status"]).contains("tunnel: down"));
    // `use` again brings the tunnel back.
    assert!(c1.use_ok(&inv1).contains("system mode on"));
    assert_eq!(echo(c1.ns(), "udp", ECHO_V4), uplink.v4(1).to_string());

    // The provider's address changes: nothing leaks while the endpoint is gone.
    let old = format!("{}/24", uplink.v4(1));
    provider
        .machine
        .ns
        .exec(&["ip", "addr", "del", &old, "dev", &provider.uplink]);
    provider.machine.ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", uplink.v4(3)),
        "dev",
        &provider.uplink,
    ]);
    assert_all_blocked(c1.ns(), "with the provider's endpoint moved");
    let moved = format!("{}/24", uplink.v4(3));
    provider
        .machine
        .ns
        .exec(&["ip", "addr", "del", &moved, "dev", &provider.uplink]);
    provider
        .machine
        .ns
        .exec(&["ip", "addr", "add", &old, "dev", &provider.uplink]);
    provider.machine.ns.exec(&[
        "ip",
        "route",
        "replace",
        "default",
        "via",
        &uplink.v4(2).to_string(),
    ]);

    // The provider down, and the CLI SIGKILLed in the middle of `use`.
    serve.stop();
    assert_all_blocked(c1.ns(), "with the provider down");
    let args = c1.use_args(&inv1, &[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out_path = c1.machine.run_dir().join("pending-use.out");
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
    assert_all_blocked(c1.ns(), "after SIGKILL of the CLI");
    serve = provider.serve(ECHO_V4, &["--endpoint", &endpoint]);
    let said = c1.use_ok(&inv1);
    assert!(said.contains("system mode on"), "{said}");
    assert_eq!(echo(c1.ns(), "tcp", ECHO_V4), uplink.v4(1).to_string());

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
    let (c2, _c2_link) = consumer("xc-consumer2", &internet, 53);
    c2.use_ok(&inv2);
    assert_eq!(echo(c2.ns(), "udp", ECHO_V4), uplink.v4(1).to_string());
    assert_eq!(echo(c1.ns(), "udp", ECHO_V4), uplink.v4(1).to_string());
    let c2_status = c2.run(&["use", "status"]);
    let c2_v4 = c2_status
        .lines()
        .find_map(|l| l.strip_prefix("inner IPv4: "))
        .expect("inner IPv4")
        .to_owned();
    assert_ne!(c2_v4, inner_v4);
    assert!(!pings(c2.ns(), &inner_v4), "consumer 2 reached consumer 1");
    assert!(!pings(c1.ns(), &c2_v4), "consumer 1 reached consumer 2");

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
    let (c3, c3_link) = consumer("xc-consumer3", &internet, 54);
    let untouched = c3.snapshot(&[]);
    use_err(&c3, &inv2, "used up");
    assert_eq!(
        c3.snapshot(&[]),
        untouched,
        "a refused invite changed the machine"
    );
    std::thread::sleep(Duration::from_millis(1100));
    use_err(&c3, &inv_expiring, "expired");
    let mut tampered = inv1.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    use_err(&c3, &String::from_utf8(tampered).unwrap(), "invite");
    let foreign_state = TempDir::new("xc-foreign");
    let foreign = provider.run(&[
        "--state-dir",
        &foreign_state.path().to_string_lossy(),
        "exit",
        "invite",
        "--endpoint",
        &endpoint,
    ]);
    // Another provider's invite: its channel key is not this provider's, and the
    // consumer hears so (a typed refusal, not a closed connection).
    use_err(&c3, &foreign, "the invite names another server key");
    let inv_revoked = invite(&[]);
    let token = portdistrict_exitnode::invite::Invite::decode(&inv_revoked)
        .expect("invite decodes")
        .token;
    let prefix: String = token[..4].iter().map(|b| format!("{b:02x}")).collect();
    provider.run(&["exit", "revoke", &prefix]);
    use_err(&c3, &inv_revoked, "revoked");
    assert_eq!(
        c3.snapshot(&[]),
        untouched,
        "a refused invite changed the machine"
    );
    assert_eq!(
        echo(c3.ns(), "udp", ECHO_V4),
        c3_link.v4(1).to_string(),
        "c3 is open again"
    );

    // --allow-lan: the LAN (a route via the consumer's gateway) is reached directly,
    // the rest goes through the provider, and DNS to the LAN stays blocked.
    let gateway = c3_link.v4(2).to_string();
    c3.ns()
        .exec(&["ip", "route", "add", "10.77.99.0/24", "via", &gateway]);
    assert_eq!(
        kdig(c3.ns(), LAN_SERVER, "echo.pd.test"),
        ECHO_V4,
        "LAN DNS before"
    );
    let lan_untouched = c3.snapshot(&[]);
    let inv_lan = invite(&[]);
    c3.use_ok_with(&inv_lan, &["--allow-lan"]);
    assert!(c3.run(&["use", "status"]).contains("LAN: allowed"));
    assert_eq!(
        echo(c3.ns(), "udp", LAN_SERVER),
        c3_link.v4(1).to_string(),
        "LAN direct"
    );
    assert_eq!(
        echo(c3.ns(), "tcp", ECHO_V4),
        uplink.v4(1).to_string(),
        "internet via the provider"
    );
    assert_eq!(
        kdig(c3.ns(), LAN_SERVER, "echo.pd.test"),
        "",
        "DNS to the LAN must stay blocked"
    );
    assert_eq!(kdig(c3.ns(), "100.64.0.1", "echo.pd.test"), ECHO_V4);
    c3.run(&["use", "off"]);
    assert_eq!(c3.snapshot(&[]), lan_untouched, "use off after --allow-lan");

    // Revocation takes effect at once: consumer 2 is cut off, and stays blocked.
    provider.run(&["exit", "revoke", &c2_v4]);
    assert!(
        wait_until(Duration::from_secs(3), Duration::from_millis(100), || echo(
            c2.ns(),
            "udp",
            ECHO_V4
        )
            == "none"),
        "a revoked consumer still gets through"
    );
    use_err(&c2, &inv2, "revoked");
    assert_all_blocked(c2.ns(), "after revocation");
    assert_eq!(
        echo(c1.ns(), "udp", ECHO_V4),
        uplink.v4(1).to_string(),
        "others unaffected"
    );

    // (d) `use off` puts everything back exactly.
    let off = c1.run(&["use", "off"]);
    assert!(off.contains("system mode off"), "{off}");
    assert_eq!(
        c1.snapshot(&[]),
        before,
        "use off did not restore the machine"
    );
    assert_eq!(
        kdig(c1.ns(), ECHO_V4, "echo.pd.test"),
        ECHO_V4,
        "direct DNS again"
    );
    assert!(c1.run(&["use", "off"]).contains("nothing to do"));
    drop(serve);
}
