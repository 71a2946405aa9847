//! (issue 6) The XDP program under attack, validated by traffic: a third namespace
//! floods the right node's WireGuard port with a million malformed datagrams and
//! with handshake initiations from 256 spoofed sources while the two peers run
//! iperf3 TCP and ping through the tunnel. With `--xdp filter` (the default) the
//! dataplane's user-space receive path sees none of the malformed datagrams (its own
//! counters), the kernel drops them (the program's counters), the per-source rate
//! limit engages once the dataplane is under load, and ping loses under 1%. The same
//! run with `PD_XDP=off` shows the flood does reach user space without the program;
//! the throughput under flood in both runs and their ratio are reported, not
//! asserted. A second test carries data through the AF_XDP sockets of `--xdp steer`.

use portdistrict_netns_tests::{
    assert_ping, iperf3_tcp, ping_fast, tcp_transfer, wait_until, Family, Netns, Pair, PairOptions,
    Veth,
};
use std::collections::HashMap;
use std::time::Duration;

const MALFORMED: u64 = 1_000_000;
const INITIATIONS: u64 = 200_000;
const PINGS: u32 = 200;

struct Outcome {
    /// Counter deltas of the flooded (right) dataplane.
    delta: HashMap<String, u64>,
    flood: HashMap<String, f64>,
    ping_received: u32,
    mbit: f64,
}

fn pair(xdp: &str) -> Pair {
    Pair::new(&PairOptions {
        env: vec![("PD_XDP".into(), xdp.into())],
        ..PairOptions::default()
    })
}

/// Waits until the right node's XDP program is on `n` interfaces.
fn wait_attached(pair: &Pair, n: usize) {
    let mut seen = String::new();
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        seen = pair
            .right
            .daemon
            .stats_text()
            .get("xdp_interfaces")
            .cloned()
            .unwrap_or_default();
        seen.split(',').filter(|s| !s.is_empty()).count() == n
    });
    assert!(
        ok,
        "XDP on {n} interfaces expected, have {seen:?}; log:\n{}",
        pair.right.daemon.log()
    );
}

fn flood_run(xdp: &str) -> Outcome {
    let pair = pair(xdp);
    let attacker = Netns::new("attacker");
    let link = Veth::new(&attacker, &pair.right.ns, 2);
    // The spoofed sources route back through the attacker, and nothing filters by
    // reverse path: the initiations reach the socket as they would on a server.
    let right = &pair.right.ns;
    right.exec(&[
        "ip",
        "route",
        "add",
        "10.66.0.0/16",
        "via",
        &link.v4(1).to_string(),
    ]);
    for conf in ["all", "default", link.b_name()] {
        right.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{conf}.rp_filter=0"),
        ]);
    }
    if xdp != "off" {
        wait_attached(&pair, 2);
    }
    let dst = pair.right.tunnel_addr(Family::V4);
    assert_ping(&pair.left.ns, dst, 3);
    let before = pair.right.daemon.stats();
    let target = format!("{}:{}", link.v4(2), pair.right.port);
    let (flood, ping_received, report) = std::thread::scope(|s| {
        let iperf = s.spawn(|| iperf3_tcp(&pair.left.ns, right, dst, 8));
        std::thread::sleep(Duration::from_millis(1500));
        let flood = s.spawn(|| {
            attacker.exec(&[
                &flood_binary(),
                "--to",
                &target,
                "--malformed",
                &MALFORMED.to_string(),
                "--initiations",
                &INITIATIONS.to_string(),
                "--sources",
                "256",
                "--spoof-net",
                "10.66",
                "--min-seconds",
                "5",
                "--public-key",
                &pair.right.keys.public,
            ])
        });
        std::thread::sleep(Duration::from_millis(300));
        let got = ping_fast(&pair.left.ns, dst, PINGS, 20);
        (flood.join().unwrap(), got, iperf.join().unwrap())
    });
    let after = pair.right.daemon.stats();
    let delta = after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .collect();
    let flood = flood
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect();
    Outcome {
        delta,
        flood,
        ping_received,
        mbit: report.bits_per_second / 1e6,
    }
}

/// `pd-flood` (package pd-bench), built next to the dataplane under test.
fn flood_binary() -> String {
    let p = portdistrict_netns_tests::uut_binary().with_file_name("pd-flood");
    assert!(
        p.is_file(),
        "{} missing: build it with `cargo build --release -p pd-bench`",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

fn get(m: &HashMap<String, u64>, k: &str) -> u64 {
    *m.get(k).unwrap_or(&0)
}

#[test]
fn filter_keeps_a_flood_out_of_user_space_while_peers_keep_talking() {
    portdistrict_netns_tests::require_root();
    let on = flood_run("filter");
    let off = flood_run("off");
    let d = &on.delta;
    let show = |o: &Outcome| {
        let mut v: Vec<_> = o.delta.iter().filter(|(_, v)| **v > 0).collect();
        v.sort();
        format!("flood {:?}, counters {v:?}", o.flood)
    };
    println!("XDP filter: {}", show(&on));
    println!("XDP off:    {}", show(&off));
    println!(
        "flood: TCP through the tunnel under flood: XDP filter {:.0} Mbit/s, off {:.0} Mbit/s, ratio {:.2}; ping {}/{PINGS} and {}/{PINGS}",
        on.mbit,
        off.mbit,
        on.mbit / off.mbit.max(1e-9),
        on.ping_received,
        off.ping_received
    );
    assert!(on.flood["malformed"] >= MALFORMED as f64, "{}", show(&on));
    assert!(
        on.flood["initiations"] >= INITIATIONS as f64,
        "{}",
        show(&on)
    );
    // Not one malformed datagram reached the user-space receive path.
    assert_eq!(get(d, "rx_malformed"), 0, "{}", show(&on));
    assert_eq!(get(d, "rx_unknown_index"), 0, "{}", show(&on));
    assert_eq!(get(d, "rx_inner_malformed"), 0, "{}", show(&on));
    // The kernel dropped them, by reason.
    let kernel_drops = get(d, "xdp_drop_bad_type")
        + get(d, "xdp_drop_bad_length")
        + get(d, "xdp_drop_truncated")
        + get(d, "xdp_drop_unknown_receiver");
    assert!(
        kernel_drops as f64 >= 0.9 * on.flood["malformed"],
        "XDP dropped {kernel_drops} of {} malformed; {}",
        on.flood["malformed"],
        show(&on)
    );
    for reason in [
        "xdp_drop_bad_type",
        "xdp_drop_bad_length",
        "xdp_drop_truncated",
        "xdp_drop_unknown_receiver",
    ] {
        assert!(get(d, reason) > 0, "{reason} never counted; {}", show(&on));
    }
    // The initiations put the dataplane under load; the kernel then rate-limited them
    // per source.
    assert!(get(d, "xdp_drop_rate_limited") > 0, "{}", show(&on));
    assert!(
        (get(d, "xdp_pass_initiation") as f64) < on.flood["initiations"] * 0.9,
        "{}",
        show(&on)
    );
    // The peers kept talking.
    assert!(
        on.ping_received * 100 >= PINGS * 99,
        "ping under flood with XDP: {}/{PINGS}",
        on.ping_received
    );
    assert!(on.mbit > 0.0);
    // Without the program the same flood reaches user space (the test floods for real).
    assert!(
        get(&off.delta, "rx_malformed") + get(&off.delta, "rx_unknown_index") > 100_000,
        "{}",
        show(&off)
    );
}

#[test]
fn steer_carries_data_messages_through_af_xdp_sockets() {
    portdistrict_netns_tests::require_root();
    let pair = pair("steer");
    wait_attached(&pair, 1);
    // The veth arrives after the dataplanes start: the program attaches to it (native,
    // which steering needs) and opens its AF_XDP sockets within a second.
    let stats = pair.right.daemon.stats_text();
    let dst = pair.right.tunnel_addr(Family::V4);
    assert_ping(&pair.left.ns, dst, 3);
    tcp_transfer(&pair.left.ns, &pair.right.ns, dst, 5003, 30, 31);
    tcp_transfer(
        &pair.right.ns,
        &pair.left.ns,
        pair.left.tunnel_addr(Family::V4),
        5004,
        30,
        32,
    );
    let after = pair.right.daemon.stats();
    assert!(
        get(&after, "xdp_redirect_data") > 1000,
        "{stats:?} {after:?}"
    );
    assert!(get(&after, "xsk_received") > 1000, "{after:?}");
    assert_eq!(get(&after, "xsk_unparsed"), 0);
    assert_eq!(get(&after, "rx_decrypt_failed"), 0, "{after:?}");
    assert_eq!(get(&after, "rx_malformed"), 0, "{after:?}");
    assert_eq!(get(&after, "xsk_bad_descriptors"), 0);
}
