//! NAT traversal end to end, in the NAT lab (`portdistrict_testkit::nat`): a "public"
//! namespace runs Knot (the zone `pd.test`) and `portdistrict facilitator serve` with
//! a relay; two hosts, each behind an nftables NAT router of a chosen kind, run
//! `portdistrictd --facilitator ...` with identities that trust each other. For each
//! pair of kinds the two hosts reach each other — ping over the overlay both ways and
//! a sha256-checked 10 MiB TCP transfer — over the path the kinds allow: direct where
//! a window can punch through, through the relay otherwise; the test asserts which,
//! from `tunnel show --json` on both sides, and that the relay forwarded (or did not
//! forward) the traffic, from the facilitator's counters.

use portdistrict_netns_tests::{
    output_text, require_root, tcp_transfer, wait_until, ChildGuard, ControlNode, Knot, NatKind,
    NatLab, NatRouter, Netns, TempDir, SERVICE,
};
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SECRET: &str = "bmF0LXRyYXZlcnNhbC1uYXQtdHJhdmVyc2FsLW5hdC0=";
const FACILITATOR_PORT: u16 = 7447;

/// A lab with Knot, a facilitator and two daemons running. Dropped in field order:
/// daemons first, then the hosts (their tunnels), the services, the routers and the
/// public namespace.
struct Scene {
    _daemons: Vec<ChildGuard>,
    a: ControlNode,
    b: ControlNode,
    logs: TempDir,
    facilitator_state: TempDir,
    _facilitator: ChildGuard,
    _knot: Knot,
    _routers: (NatRouter, NatRouter),
    _public: Netns,
}

impl Scene {
    fn new(tag: &str, ka: NatKind, kb: NatKind, extra: &[&str]) -> Scene {
        require_root();
        let lab = NatLab::new(ka, kb).unwrap_or_else(|e| panic!("the NAT lab: {e}"));
        let knot = Knot::start_with_updates(
            &lab.public,
            &[IpAddr::V4(SERVICE)],
            "pd.test",
            &[],
            Some(("pd-key", SECRET)),
        );
        let fstate = TempDir::new(&format!("{tag}-facilitator"));
        let cli = |args: &[&str]| {
            let mut argv = vec![
                portdistrict_netns_tests::control_binary("portdistrict"),
                "--state-dir".into(),
                fstate.path().join("state").to_string_lossy().into_owned(),
                "--run-dir".into(),
                fstate.path().join("run").to_string_lossy().into_owned(),
            ];
            argv.extend(args.iter().map(|s| s.to_string()));
            argv
        };
        let show = lab.public.try_exec(
            &cli(&["facilitator", "show", "--json"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert!(
            show.status.success(),
            "facilitator show: {}",
            output_text(&show)
        );
        let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
        let fkey = shown["public_key"].as_str().unwrap().to_owned();
        let listen = format!("{SERVICE}:{FACILITATOR_PORT}");
        let serve = cli(&[
            "facilitator",
            "serve",
            "--listen",
            &listen,
            "--relay-ports",
            "40000-40099",
        ]);
        let logs = TempDir::new(&format!("{tag}-logs"));
        let facilitator = ChildGuard::spawn(
            "facilitator",
            lab.public
                .command(&serve.iter().map(String::as_str).collect::<Vec<_>>())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(logs.path().join("facilitator.log")).unwrap()),
        );
        let secret = logs
            .write_private("tsig", SECRET)
            .to_string_lossy()
            .into_owned();
        let NatLab { public, a, b } = lab;
        let lab_public = public;
        let routers = (a.router, b.router);
        let a = ControlNode::new(a.host, &format!("{tag}-a"), "pdn", SERVICE);
        let b = ControlNode::new(b.host, &format!("{tag}-b"), "pdn", SERVICE);
        a.machine.init_identity("alice.pd.test", "laptop");
        b.machine.init_identity("bob.pd.test", "desk");
        a.machine.trust(&b.machine);
        b.machine.trust(&a.machine);
        let facilitator_opt = format!("{listen}:{fkey}");
        let mut daemons = Vec::new();
        for (n, node) in [("a", &a), ("b", &b)] {
            let mut args = vec![
                "--interval",
                "3s",
                "--record-lifetime",
                "60s",
                "--first-wait",
                "3s",
                "--facilitator",
                &facilitator_opt,
            ];
            args.extend_from_slice(extra);
            daemons.push(ChildGuard::spawn(
                &format!("portdistrictd ({n})"),
                node.daemon("pd-key", &secret, &args)
                    .env("RUST_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(logs.path().join(format!("{n}.log"))).unwrap()),
            ));
        }
        Scene {
            _daemons: daemons,
            a,
            b,
            logs,
            facilitator_state: fstate,
            _facilitator: facilitator,
            _knot: knot,
            _routers: routers,
            _public: lab_public,
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let state = |n: &ControlNode, peer: &str| {
            let show = n
                .machine
                .command("portdistrict", &["tunnel", "show", peer])
                .output()
                .map(|o| output_text(&o))
                .unwrap_or_default();
            let ns = &n.machine.ns;
            let sock = format!("/var/run/wireguard/{}.sock", n.ifname);
            let stats = std::process::Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "printf 'stats=1\\n\\n' | ip netns exec {} ncat -U {sock}",
                        ns.name()
                    ),
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', " "))
                .unwrap_or_default();
            format!(
                "{show}stats: {stats}\n{}{}",
                output_text(&ns.try_exec(&["ip", "-6", "addr"])),
                output_text(&ns.try_exec(&["ip", "-6", "route"]))
            )
        };
        format!(
            "--- a ---\n{}\n{}\n--- b ---\n{}\n{}\n--- facilitator ---\n{}\n--- facilitator stats ---\n{}",
            self.log("a"),
            state(&self.a, "desk.bob.pd.test"),
            self.log("b"),
            state(&self.b, "laptop.alice.pd.test"),
            self.log("facilitator"),
            self.facilitator_stats()
        )
    }

    fn facilitator_stats(&self) -> serde_json::Value {
        std::fs::read_to_string(
            self.facilitator_state
                .path()
                .join("run/facilitator-stats.json"),
        )
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
    }

    /// The one tunnel `node` has, as `tunnel list --json` prints it.
    fn tunnel(node: &ControlNode) -> Option<serde_json::Value> {
        let out = node
            .machine
            .command("portdistrict", &["tunnel", "list", "--json"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.first().cloned()
    }

    /// Waits until both sides report a path other than `none`; returns both paths.
    fn settle(&self, limit: Duration) -> (String, String) {
        let path = |n: &ControlNode| {
            Scene::tunnel(n)
                .and_then(|t| t["path"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "none".into())
        };
        wait_until(limit, Duration::from_millis(250), || {
            path(&self.a) != "none" && path(&self.b) != "none"
        });
        (path(&self.a), path(&self.b))
    }
}

/// One pair of NAT kinds: the path both sides settle on, then traffic over it.
fn pair(tag: &str, ka: NatKind, kb: NatKind, expect: &str) {
    let started = Instant::now();
    let s = Scene::new(tag, ka, kb, &[]);
    let (pa, pb) = s.settle(Duration::from_secs(60));
    let settled = started.elapsed();
    assert_eq!(
        (pa.as_str(), pb.as_str()),
        (expect, expect),
        "{ka:?} x {kb:?}: paths\n{}",
        s.logs()
    );
    let (a, b) = (s.a.overlay_addr(), s.b.overlay_addr());
    assert!(s.a.pings(&b), "{ka:?} x {kb:?}: a -> b\n{}", s.logs());
    assert!(s.b.pings(&a), "{ka:?} x {kb:?}: b -> a\n{}", s.logs());
    let before = s.facilitator_stats()["relay_forwarded_bytes"]
        .as_u64()
        .unwrap_or(0);
    let t = tcp_transfer(
        &s.a.machine.ns,
        &s.b.machine.ns,
        b.parse().unwrap(),
        5201,
        10,
        7,
    );
    // The facilitator writes its counters once a second.
    let forwarded = || {
        s.facilitator_stats()["relay_forwarded_bytes"]
            .as_u64()
            .unwrap_or(0)
            - before
    };
    if expect == "relay" {
        wait_until(Duration::from_secs(4), Duration::from_millis(200), || {
            forwarded() >= 10 << 20
        });
    } else {
        std::thread::sleep(Duration::from_millis(1500));
    }
    let relayed = forwarded();
    eprintln!(
        "{ka:?} x {kb:?}: {expect} after {:.1}s; 10 MiB in {:.2}s ({:.0} Mbit/s), relay forwarded {relayed} B",
        settled.as_secs_f64(),
        t.elapsed.as_secs_f64(),
        t.mbit_per_s()
    );
    if expect == "relay" {
        assert!(
            relayed >= 10 << 20,
            "the transfer did not go through the relay: {relayed} B"
        );
    } else {
        assert!(
            relayed < 1 << 20,
            "a direct pair's transfer went through the relay: {relayed} B"
        );
    }
    // `tunnel show --json` names the path and what the last window did.
    let show: serde_json::Value = serde_json::from_str(&s.a.machine.run_ok(&[
        "tunnel",
        "show",
        "desk.bob.pd.test",
        "--json",
    ]))
    .unwrap();
    assert_eq!(show["path"], expect, "{show}");
    assert!(show["windows_tried"].as_u64().unwrap() >= 1, "{show}");
}

#[test]
fn port_restricted_pair_goes_direct() {
    pair(
        "nt-pr",
        NatKind::PortRestricted,
        NatKind::PortRestricted,
        "direct",
    );
}

#[test]
fn symmetric_against_port_restricted_goes_through_the_relay() {
    pair(
        "nt-sym",
        NatKind::PortRestricted,
        NatKind::Symmetric,
        "relay",
    );
}
