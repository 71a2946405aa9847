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

use portdistrict_netns_tests::exit::{
    assert_echo_blocked, echo, echo_port, internet, leaks, start_echo, tcpdump_endpoint, Capture,
    Consumer, Provider, Serve, ECHO_V4, ECHO_V6,
};
use portdistrict_netns_tests::{
    find_daemon_pids, unique_ifname, uut_binary, wait_until, ChildGuard, CliMachine, Netns,
    TempDir, Veth,
};
use std::path::PathBuf;
use std::time::Duration;

/// Everything the consumer might send to the internet fails.
fn assert_all_blocked(ns: &Netns, when: &str) {
    assert_echo_blocked(ns, when);
    assert_eq!(
        echo_port(ns, "udp", ECHO_V4, "53"),
        "none",
        "{when}: direct DNS got out"
    );
}

/// The internet: routes between the veths, the echo service (ports 7000 and 53) on
/// its loopback.
struct Internet {
    ns: Netns,
    _echo: ChildGuard,
}

impl Internet {
    fn new() -> Internet {
        let ns = internet("cb-internet");
        let echo = start_echo(&ns, &[7000, 53], &[ECHO_V4, ECHO_V6]);
        Internet { ns, _echo: echo }
    }
}

/// The provider running `exit serve` (IPv6 offered) behind veth 62.
struct BootProvider {
    _serve: Serve,
    p: Provider,
    uplink: Veth,
}

impl BootProvider {
    fn new(internet: &Internet) -> BootProvider {
        let (ns, uplink) = Netns::behind("cb-provider", &internet.ns, 62);
        let p = Provider {
            machine: CliMachine::with_run_dir(
                ns,
                TempDir::new("cb-pstate"),
                TempDir::new("cb-prun"),
            ),
            ifname: unique_ifname("pdx"),
            uplink: uplink.a_name().to_owned(),
        };
        let endpoint = format!("{}:51820", uplink.v4(1));
        let serve = p.serve(ECHO_V4, &["--endpoint", &endpoint]);
        BootProvider {
            _serve: serve,
            p,
            uplink,
        }
    }

    fn endpoint(&self) -> String {
        format!("{}:51820", self.uplink.v4(1))
    }

    fn invite(&self) -> String {
        self.p.invite()
    }
}

/// The consumer on uplink veth 61; `use off` and `use lockdown off` on drop.
struct BootConsumer {
    c: Consumer,
    link: Veth,
}

impl std::ops::Deref for BootConsumer {
    type Target = Consumer;
    fn deref(&self) -> &Consumer {
        &self.c
    }
}

impl BootConsumer {
    fn new(internet: &Internet) -> BootConsumer {
        let (c, link) = Consumer::new(
            "cb-consumer",
            &internet.ns,
            61,
            &format!("nameserver {ECHO_V4}\n"),
        );
        BootConsumer { c, link }
    }

    fn resolv(&self) -> PathBuf {
        self.c.etc.resolv()
    }

    /// Rules, routes of every table, the nftables ruleset, the sysctl, the resolver file.
    fn snapshot(&self) -> String {
        self.c.snapshot(&["-s"])
    }

    /// What a reboot takes: the dataplane and its tunnel, the ruleset, the rules (back
    /// to the kernel's defaults), table 51820, the sysctl, the run directory.
    fn reboot(&self) {
        let ns = self.ns();
        for pid in find_daemon_pids(&uut_binary(), &self.ifname) {
            ns.exec(&["kill", "-KILL", &pid.to_string()]);
        }
        assert!(
            wait_until(Duration::from_secs(5), Duration::from_millis(50), || !ns
                .has_link(&self.ifname)),
            "the tunnel outlived its dataplane"
        );
        ns.exec(&["nft", "flush", "ruleset"]);
        for (fam, defaults) in [
            ("-4", &["32766 main", "32767 default"][..]),
            ("-6", &["32766 main"]),
        ] {
            ns.exec(&["ip", fam, "rule", "flush"]);
            for d in defaults {
                let (prio, table) = d.split_once(' ').unwrap();
                ns.exec(&["ip", fam, "rule", "add", "priority", prio, "table", table]);
            }
            let _ = ns.try_exec(&["ip", fam, "route", "flush", "table", "51820"]);
        }
        ns.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.all.src_valid_mark=0"]);
        for e in std::fs::read_dir(self.machine.run_dir()).expect("run dir") {
            let p = e.expect("entry").path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }

    /// The packets that left the consumer in `capture` and are neither WireGuard to
    /// the provider nor link housekeeping.
    fn leaks(capture: Capture, provider: &BootProvider) -> Vec<String> {
        leaks(&capture.stop(), &tcpdump_endpoint(&provider.endpoint()))
    }
}

impl Drop for BootConsumer {
    fn drop(&mut self) {
        let _ = self.command(&["use", "off"]).output();
        let _ = self.command(&["use", "lockdown", "off"]).output();
    }
}

/// The internet, the provider serving, the consumer (dropped in reverse order).
fn setup() -> (Internet, BootProvider, BootConsumer) {
    let internet = Internet::new();
    let provider = BootProvider::new(&internet);
    let c = BootConsumer::new(&internet);
    (internet, provider, c)
}

#[test]
fn reboot_restores_the_kill_switch_and_use_off_leaves_nothing() {
    let (internet, provider, c) = setup();
    let before = c.snapshot();
    let own = c.link.v4(1).to_string();
    let via_provider = provider.uplink.v4(1).to_string();
    let invite = provider.invite();

    assert!(c.use_ok(&invite).contains("system mode on"));
    assert_eq!(echo(c.ns(), "udp", ECHO_V4), via_provider);

    // Without the boot unit a reboot leaves the machine open: what the issue found.
    c.reboot();
    assert_eq!(
        echo(c.ns(), "udp", ECHO_V4),
        own,
        "the simulated reboot opened the machine"
    );

    // The boot unit's command: blocked again, with no tunnel and no dataplane.
    let capture = Capture::start(&internet.ns, c.link.b_name());
    let said = c.run(&["use", "restore"]);
    assert!(said.contains("kill switch restored"), "{said}");
    assert_all_blocked(c.ns(), "after the reboot and `use restore`");
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
    let leaked = BootConsumer::leaks(capture, &provider);
    assert!(
        leaked.is_empty(),
        "left the consumer after `use restore`: {leaked:#?}"
    );

    // `use` again brings the tunnel back: its rules are replayed, or nothing flows.
    assert!(c.use_ok(&invite).contains("system mode on"));
    assert_eq!(echo(c.ns(), "tcp", ECHO_V4), via_provider);
    assert_eq!(
        echo(c.ns(), "udp", ECHO_V6),
        provider.uplink.v6(1).to_string()
    );

    // Another reboot, and `use off` straight after the boot unit: nothing left behind,
    // the resolver file back.
    c.reboot();
    c.run(&["use", "restore"]);
    assert_all_blocked(c.ns(), "after the second reboot");
    let off = c.run(&["use", "off"]);
    assert!(off.contains("system mode off"), "{off}");
    assert_eq!(
        c.snapshot(),
        before,
        "use off after a reboot did not restore the machine"
    );
    assert_eq!(echo(c.ns(), "udp", ECHO_V4), own, "open again");
    assert!(c.run(&["use", "off"]).contains("nothing to do"));
    // With nothing on, the boot unit does nothing.
    assert!(c.run(&["use", "restore"]).contains("nothing to restore"));
    assert_eq!(c.snapshot(), before);
}

#[test]
fn lockdown_blocks_without_a_tunnel_until_turned_off() {
    let (internet, provider, c) = setup();
    let before = c.snapshot();
    let own = c.link.v4(1).to_string();
    let via_provider = provider.uplink.v4(1).to_string();
    assert!(c
        .run(&["use", "lockdown", "status"])
        .contains("lockdown: off"));

    let capture = Capture::start(&internet.ns, c.link.b_name());
    assert!(c.run(&["use", "lockdown", "on"]).contains("lockdown on"));
    assert_all_blocked(c.ns(), "lockdown, no tunnel");
    let leaked = BootConsumer::leaks(capture, &provider);
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
        echo(c.ns(), "udp", ECHO_V4),
        own,
        "the simulated reboot opened the machine"
    );
    assert!(c.run(&["use", "restore"]).contains("lockdown restored"));
    assert_all_blocked(c.ns(), "lockdown after the reboot");

    // System mode works under lockdown; `use off` keeps everything blocked.
    assert!(c.use_ok(&provider.invite()).contains("system mode on"));
    assert_eq!(echo(c.ns(), "udp", ECHO_V4), via_provider);
    let off = c.run(&["use", "off"]);
    assert!(off.contains("lockdown is on"), "{off}");
    assert_all_blocked(c.ns(), "`use off` under lockdown");
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
    assert_eq!(echo(c.ns(), "udp", ECHO_V4), own);
    assert!(c
        .run(&["use", "lockdown", "status"])
        .contains("lockdown: off"));
}

#[test]
fn a_failed_first_use_says_what_the_machine_is() {
    let (_internet, provider, c) = setup();
    let own = c.link.v4(1).to_string();
    // The provider offers IPv6; the consumer has it switched off.
    for k in ["all", "default"] {
        c.ns().exec(&[
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
    assert_eq!(echo(c.ns(), "udp", ECHO_V4), own, "the machine is open");
    assert!(c.run(&["use", "status"]).contains("system mode: off"));

    // Under lockdown the same failure leaves everything blocked, and says so.
    c.run(&["use", "lockdown", "on"]);
    let out = c.try_use(&provider.invite());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "use should fail without IPv6: {err}");
    assert!(err.contains("everything stays blocked"), "{err}");
    assert_all_blocked(c.ns(), "a failed first use under lockdown");
    c.run(&["use", "lockdown", "off"]);
    assert_eq!(c.snapshot(), before);
}
