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
    output_text, require_root, tcp_transfer, wait_until, ChildGuard, ControlNode, Knot,
    LabNamespace, NatKind, NatLab, NatRouter, Netns, TempDir, SERVICE,
};
use std::net::{IpAddr, SocketAddr};
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
    routers: (NatRouter, NatRouter),
    _public: Netns,
}

impl Scene {
    fn new(tag: &str, ka: NatKind, kb: NatKind, extra: [&[&str]; 2]) -> Scene {
        Scene::with(tag, ka, kb, extra, true)
    }

    /// A scene whose daemons name the facilitator (`named`) or not (it runs all the
    /// same).
    fn with(tag: &str, ka: NatKind, kb: NatKind, extra: [&[&str]; 2], named: bool) -> Scene {
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
        for ((n, node), extra) in [("a", &a), ("b", &b)].into_iter().zip(extra) {
            let mut args = vec![
                "--interval",
                "2s",
                "--record-lifetime",
                "60s",
                "--first-wait",
                "2s",
            ];
            if named {
                args.extend_from_slice(&["--facilitator", &facilitator_opt]);
            }
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
            routers,
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
        let ct = |r: &NatRouter| {
            format!(
                "{}\n{}",
                r.listing().unwrap_or_else(|e| e.to_string()),
                r.conntrack().unwrap_or_else(|e| e.to_string())
            )
        };
        format!(
            "--- router a ---\n{}\n--- router b ---\n{}\n--- a ---\n{}\n{}\n--- b ---\n{}\n{}\n--- facilitator ---\n{}\n--- facilitator stats ---\n{}",
            ct(&self.routers.0),
            ct(&self.routers.1),
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

/// The path both sides settle on must be `expect`; then pings both ways and a
/// sha256-checked 10 MiB TCP transfer over it, and the relay's counters must show
/// whether it carried them. Returns the scene for more checks.
fn connects(s: &Scene, what: &str, expect: &str, started: Instant) {
    let (pa, pb) = s.settle(Duration::from_secs(60));
    let settled = started.elapsed();
    assert_eq!(
        (pa.as_str(), pb.as_str()),
        (expect, expect),
        "{what}: paths\n{}",
        s.logs()
    );
    let (a, b) = (s.a.overlay_addr(), s.b.overlay_addr());
    assert!(s.a.pings(&b), "{what}: a -> b\n{}", s.logs());
    assert!(s.b.pings(&a), "{what}: b -> a\n{}", s.logs());
    let before = s.forwarded();
    let t = tcp_transfer(
        &s.a.machine.ns,
        &s.b.machine.ns,
        b.parse().unwrap(),
        5201,
        10,
        7,
    );
    // The facilitator writes its counters once a second.
    if expect == "relay" {
        wait_until(Duration::from_secs(4), Duration::from_millis(200), || {
            s.forwarded() - before >= 10 << 20
        });
    } else {
        std::thread::sleep(Duration::from_millis(1500));
    }
    let relayed = s.forwarded() - before;
    let show = s.show(&s.a);
    eprintln!(
        "FIGURES {what}: {expect} after {:.1}s (direct handshake {} ms after the window start, relay {} ms after the failed window); 10 MiB in {:.2}s ({:.0} Mbit/s), relay forwarded {relayed} B",
        settled.as_secs_f64(),
        show["last_direct_ms"],
        show["last_relay_ms"],
        t.elapsed.as_secs_f64(),
        t.mbit_per_s()
    );
    if expect == "relay" {
        assert!(
            relayed >= 10 << 20,
            "{what}: the transfer did not go through the relay: {relayed} B"
        );
    } else {
        assert!(
            relayed < 1 << 20,
            "{what}: a direct pair's transfer went through the relay: {relayed} B"
        );
    }
    assert_eq!(show["path"], expect, "{show}");
    assert!(show["windows_tried"].as_u64().unwrap() >= 1, "{show}");
    // The facilitator's answers came in through the filter that keeps it to them.
    let table = format!("portdistrict_facilitator_{}", s.a.ifname);
    let listed =
        s.a.machine
            .ns
            .exec(&["nft", "list", "table", "inet", &table]);
    let accepted = listed
        .lines()
        .find(|l| l.contains("udp sport") && l.trim_end().ends_with("accept"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        accepted >= 1,
        "{what}: no answer passed the facilitator filter:\n{listed}"
    );
}

impl Scene {
    fn forwarded(&self) -> u64 {
        self.facilitator_stats()["relay_forwarded_bytes"]
            .as_u64()
            .unwrap_or(0)
    }

    /// `tunnel show --json` of `node`'s one tunnel.
    fn show(&self, node: &ControlNode) -> serde_json::Value {
        let name = Scene::tunnel(node)
            .and_then(|t| t["name"].as_str().map(str::to_owned))
            .unwrap_or_default();
        serde_json::from_str(&node.machine.run_ok(&["tunnel", "show", &name, "--json"])).unwrap()
    }
}

const FULL_CONE: NatKind = NatKind::FullCone { port: 51820 };
use NatKind::{AcceptsInput as ACCEPTS, PortRestricted as RESTRICTED, Symmetric as SYMMETRIC};

/// One pair of NAT kinds, both daemons with default settings.
fn pair(tag: &str, ka: NatKind, kb: NatKind, expect: &str) {
    let started = Instant::now();
    let s = Scene::new(tag, ka, kb, [&[], &[]]);
    connects(&s, &format!("{ka:?} x {kb:?}"), expect, started);
}

#[test]
fn restricted_x_restricted_direct() {
    pair("nt-rr", RESTRICTED, RESTRICTED, "direct");
}

#[test]
fn restricted_x_full_cone_direct() {
    pair("nt-rf", RESTRICTED, FULL_CONE, "direct");
}

#[test]
fn restricted_x_accepts_input_direct() {
    pair("nt-ra", RESTRICTED, ACCEPTS, "direct");
}

#[test]
fn full_cone_x_full_cone_direct() {
    pair("nt-ff", FULL_CONE, FULL_CONE, "direct");
}

#[test]
fn full_cone_x_symmetric_direct() {
    pair("nt-fs", FULL_CONE, SYMMETRIC, "direct");
}

#[test]
fn full_cone_x_accepts_input_direct() {
    pair("nt-fa", FULL_CONE, ACCEPTS, "direct");
}

#[test]
fn accepts_input_x_accepts_input_direct_thanks_to_the_primer() {
    pair("nt-aa", ACCEPTS, ACCEPTS, "direct");
}

#[test]
fn symmetric_x_symmetric_relay() {
    pair("nt-ss", SYMMETRIC, SYMMETRIC, "relay");
}

#[test]
fn symmetric_x_accepts_input_relay() {
    pair("nt-sa", SYMMETRIC, ACCEPTS, "relay");
}

/// Symmetric against port-restricted: the relay. A stranger in the public
/// namespace sending to the allocation's ports gets nothing forwarded. Then B's
/// NAT is relaxed to port-restricted: the first window after that (10 s backoff,
/// doubling) goes direct.
#[test]
fn restricted_x_symmetric_relay_strangers_get_nothing_and_relaxing_goes_direct() {
    let started = Instant::now();
    let backoff = ["--window-backoff", "10s"];
    let mut s = Scene::new("nt-rs", RESTRICTED, SYMMETRIC, [&backoff, &backoff]);
    // Conntrack keeps a flow's mapping across a rule change (routers commonly flush
    // it; the lab's does not): B's router forgets unanswered flows after 5 s, so
    // that the failed window's probes towards A, mapped by the symmetric rule, are
    // gone by the window after the relaxing. Answered flows (the facilitator's, the
    // relay's) keep a 120 s timeout.
    s.routers
        .1
        .set_udp_timeouts(Duration::from_secs(5), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    connects(&s, "PortRestricted x Symmetric", "relay", started);
    let relay: SocketAddr = s.show(&s.a)["pinned"].as_str().unwrap().parse().unwrap();
    // The baseline once the relay is quiet (the transfer's last datagrams may reach
    // the counters, written once a second, late).
    let count = |k: &str| s.facilitator_stats()[k].as_u64().unwrap();
    let mut forwarded = count("relay_forwarded");
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(1200));
        let now = count("relay_forwarded");
        if now == forwarded {
            break;
        }
        forwarded = now;
    }
    let unregistered = count("relay_unregistered");
    let stranger = s
        ._public
        .udp_bind((SERVICE, 0).into())
        .unwrap_or_else(|e| panic!("{e}"));
    for port in relay.port().saturating_sub(1)..=relay.port() + 1 {
        for _ in 0..20 {
            let _ = stranger.send_to(b"\x04\0\0\0stranger", (relay.ip(), port));
        }
    }
    assert!(
        wait_until(Duration::from_secs(4), Duration::from_millis(200), || {
            s.facilitator_stats()["relay_unregistered"]
                .as_u64()
                .unwrap()
                >= unregistered + 40
        }),
        "the stranger's datagrams were not refused as unregistered: {}",
        s.facilitator_stats()
    );
    // Nothing of the stranger's was forwarded (the pair's keepalives may be).
    let now = s.facilitator_stats()["relay_forwarded"].as_u64().unwrap();
    assert!(
        now - forwarded < 10,
        "forwarded {} datagrams meanwhile",
        now - forwarded
    );

    // Relaxed: the first window that starts after the relaxing goes direct. A
    // window is counted when the facilitator announces it (two seconds before it
    // starts), so one counted before the relaxing may still be under way, with
    // probes B's router mapped by the symmetric rule: it may fail; the next may not.
    let tried = |s: &Scene| {
        let n = |n: &ControlNode| s.show(n)["windows_tried"].as_u64().unwrap();
        (n(&s.a), n(&s.b))
    };
    let before = tried(&s);
    let relaxed_at = Instant::now();
    s.routers
        .1
        .set_kind(RESTRICTED)
        .unwrap_or_else(|e| panic!("{e}"));
    // A router whose NAT rule is changed forgets its flows (as a reload or reboot
    // does): otherwise Linux keeps mapping new flows of B's socket to the port an
    // existing flow of it got under the symmetric rule, one the facilitator has not
    // seen.
    s.routers
        .1
        .ns()
        .run_in(|| portdistrict_netlink::Handle::flush_conntrack(portdistrict_netlink::Family::V4))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("flushing B's conntrack table: {e}"));
    let direct = wait_until(Duration::from_secs(75), Duration::from_millis(250), || {
        [&s.a, &s.b]
            .iter()
            .all(|n| Scene::tunnel(n).is_some_and(|t| t["path"] == "direct"))
    });
    assert!(direct, "still relayed after relaxing the NAT\n{}", s.logs());
    let after = tried(&s);
    eprintln!(
        "FIGURES relaxed NAT: relay -> direct {:.1}s after relaxing; windows tried (a, b) {before:?} before, {after:?} after",
        relaxed_at.elapsed().as_secs_f64()
    );
    assert!(
        after.0 <= before.0 + 1 && after.1 <= before.1 + 1,
        "the first window after relaxing did not go direct: windows tried {before:?} -> {after:?}\n{}",
        s.logs()
    );
    let before = s.forwarded();
    let (a, b) = (s.a.overlay_addr(), s.b.overlay_addr());
    assert!(
        s.a.pings(&b) && s.b.pings(&a),
        "after the upgrade\n{}",
        s.logs()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        s.forwarded() - before < 2_000,
        "the upgraded pair still goes through the relay"
    );
}

/// 20 % loss on one NAT (both directions of its forwarding): the pair still
/// connects and pings pass.
#[test]
fn twenty_percent_loss_on_one_nat_still_connects() {
    let started = Instant::now();
    // DNS under loss makes each daemon cycle slow (records come late; traversal
    // goes on meanwhile on its own thread); a longer interval spares the lossy
    // link repeated publications.
    let slow = ["--interval", "10s"];
    let mut s = Scene::new("nt-loss", RESTRICTED, RESTRICTED, [&slow, &slow]);
    s.routers.0.set_loss(20).unwrap_or_else(|e| panic!("{e}"));
    let (pa, pb) = s.settle(Duration::from_secs(90));
    assert!(
        pa != "none" && pb != "none",
        "not connected under loss\n{}",
        s.logs()
    );
    let (a, b) = (s.a.overlay_addr(), s.b.overlay_addr());
    let ok = |from: &ControlNode, to: &str| {
        let out = from
            .machine
            .ns
            .try_exec(&["ping", "-6", "-c", "20", "-i", "0.1", "-W", "1", to]);
        out.status.success()
    };
    assert!(
        ok(&s.a, &b) && ok(&s.b, &a),
        "pings under 20 % loss\n{}",
        s.logs()
    );
    eprintln!(
        "FIGURES 20% loss: {pa} after {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Conntrack forgets idle UDP flows after 30 s on both NATs; WireGuard's 25 s
/// keepalives keep the direct path's mappings: after 40 s without traffic pings
/// pass at once and no new window was needed.
#[test]
fn keepalives_survive_a_short_conntrack_timeout() {
    let started = Instant::now();
    let s = Scene::new("nt-ka", RESTRICTED, RESTRICTED, [&[], &[]]);
    for r in [&s.routers.0, &s.routers.1] {
        r.set_udp_timeouts(Duration::from_secs(30), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let (pa, pb) = s.settle(Duration::from_secs(60));
    assert_eq!(
        (pa.as_str(), pb.as_str()),
        ("direct", "direct"),
        "\n{}",
        s.logs()
    );
    let tried = s.show(&s.a)["windows_tried"].as_u64().unwrap();
    eprintln!("idle for 40 s (conntrack UDP timeout 30 s, keepalive 25 s)");
    std::thread::sleep(Duration::from_secs(40));
    let (a, b) = (s.a.overlay_addr(), s.b.overlay_addr());
    assert!(
        s.a.pings(&b) && s.b.pings(&a),
        "after 40 s idle\n{}",
        s.logs()
    );
    let show = s.show(&s.a);
    assert_eq!(show["path"], "direct", "{show}");
    assert_eq!(
        show["windows_tried"].as_u64().unwrap(),
        tried,
        "a new window was needed: {show}"
    );
    eprintln!(
        "FIGURES keepalive: direct for {:.0}s",
        started.elapsed().as_secs_f64()
    );
}

/// Clock skew between the peers, emulated by starting one side's windows late
/// (`--window-skew`), on NATs whose input accepts (where naive punching fails):
/// below the primer's length (500 ms) the window goes direct; above it, it fails
/// cleanly, falls back to the relay and backs off before the next window.
#[test]
fn skew_below_the_primer_goes_direct_above_it_falls_back_and_backs_off() {
    let started = Instant::now();
    let s = Scene::new(
        "nt-skew1",
        ACCEPTS,
        ACCEPTS,
        [&[], &["--window-skew", "300ms"]],
    );
    connects(&s, "skew 300 ms, primer 500 ms", "direct", started);
    drop(s);
    let started = Instant::now();
    let s = Scene::new(
        "nt-skew2",
        ACCEPTS,
        ACCEPTS,
        [&[], &["--window-skew", "1500ms"]],
    );
    let (pa, pb) = s.settle(Duration::from_secs(60));
    assert_eq!(
        (pa.as_str(), pb.as_str()),
        ("relay", "relay"),
        "\n{}",
        s.logs()
    );
    let show = s.show(&s.b);
    assert_eq!(show["last_window"], "failed", "{show}");
    let next = show["next_window"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        next >= now + 20,
        "the next window is not backed off: {show}"
    );
    let (a, b) = (s.a.overlay_addr(), s.b.overlay_addr());
    assert!(
        s.a.pings(&b) && s.b.pings(&a),
        "over the relay after the failed window\n{}",
        s.logs()
    );
    eprintln!(
        "FIGURES skew 1500 ms: relay after {:.1}s, next window in {}s",
        started.elapsed().as_secs_f64(),
        next - now
    );
}

/// No facilitator: windows come from the pair's shared secret (every 20 s here),
/// between two NATs whose routers accept input, where naive punching fails
/// (nat-lab.md), each device publishing its NAT's WAN address (`--endpoint`).
/// Both sides send to each other from the start (a ping every half second), so
/// WireGuard initiates: its first initiations leave a conntrack entry on the peer's
/// router that remaps the peer's own packets, and its retries (every 5 s) would
/// keep it alive (the routers forget unanswered flows after 10 s here). After the
/// first wait the daemons hold them: the first window after the entries are gone
/// goes direct at the published endpoint, proved by a handshake, and pings pass
/// both ways.
#[test]
fn without_a_facilitator_shared_secret_windows_go_direct() {
    let started = Instant::now();
    let common = ["--secret-windows-every", "20s", "--window-backoff", "10s"];
    let a: Vec<&str> = ["--endpoint", "198.51.100.10:51820"]
        .into_iter()
        .chain(common)
        .collect();
    let b: Vec<&str> = ["--endpoint", "198.51.100.20:51820"]
        .into_iter()
        .chain(common)
        .collect();
    let s = Scene::with("nt-sec", ACCEPTS, ACCEPTS, [&a, &b], false);
    for r in [&s.routers.0, &s.routers.1] {
        r.set_udp_timeouts(Duration::from_secs(10), Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let (a, b) = (s.a.overlay_addr(), s.b.overlay_addr());
    let traffic = |from: &ControlNode, to: &str| {
        let script = format!(
            "for i in $(seq 240); do ping -6 -c 1 -W 1 {to} >/dev/null 2>&1; sleep 0.5; done"
        );
        ChildGuard::spawn(
            "traffic",
            from.machine
                .ns
                .command(&["sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let _traffic = (traffic(&s.a, &b), traffic(&s.b, &a));
    let (pa, pb) = s.settle(Duration::from_secs(100));
    assert_eq!(
        (pa.as_str(), pb.as_str()),
        ("direct", "direct"),
        "\n{}",
        s.logs()
    );
    let show_a = s.show(&s.a);
    let show_b = s.show(&s.b);
    for (show, peer) in [
        (&show_a, "198.51.100.20:51820"),
        (&show_b, "198.51.100.10:51820"),
    ] {
        assert!(show["windows_succeeded"].as_u64().unwrap() >= 1, "{show}");
        assert_eq!(show["last_window"], format!("direct via {peer}"), "{show}");
    }
    assert!(s.a.pings(&b), "a -> b\n{}", s.logs());
    assert!(s.b.pings(&a), "b -> a\n{}", s.logs());
    // The facilitator (running, but named by neither) was never asked.
    assert_eq!(s.facilitator_stats()["requests"].as_u64().unwrap_or(0), 0);
    eprintln!(
        "FIGURES shared-secret windows (accepts input x accepts input, no facilitator): direct after {:.1}s, {} windows tried, handshake {} ms after the window start",
        started.elapsed().as_secs_f64(),
        show_a["windows_tried"],
        show_a["last_direct_ms"]
    );
}
