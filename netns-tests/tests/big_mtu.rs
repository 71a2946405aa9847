//! (f) A 34816-byte tunnel MTU: unfragmented 30000-byte pings, iperf3 TCP, and iperf3
//! UDP with 30000-byte datagrams (under 5 % loss in the best of up to three runs),
//! every data message sealed (no hard
//! drop counted). The underlay stays at 1500, so the outer datagrams are IP-fragmented
//! and reassembled.

use portdistrict_netns_tests::{assert_ping, iperf3_tcp, iperf3_udp, Family, Pair, PairOptions};

const MTU: u32 = 34816;

#[test]
fn jumbo_tunnel_mtu_carries_tcp_and_udp() {
    let pair = Pair::new(&PairOptions::default());
    pair.left.daemon.set_mtu(MTU);
    pair.right.daemon.set_mtu(MTU);
    let shown = pair
        .left
        .daemon
        .ip(&["link", "show", "dev", pair.left.daemon.ifname()]);
    assert!(
        shown.contains(&format!("mtu {MTU}")),
        "MTU not applied: {shown}"
    );

    let dst = pair.right.tunnel_addr(Family::V4);
    assert_ping(&pair.left.ns, dst, 3);
    let big = pair.left.ns.exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        "30000",
        &dst.to_string(),
    ]);
    assert!(
        big.contains("3 received"),
        "30000-byte pings with DF did not all pass:\n{big}"
    );

    let tcp = iperf3_tcp(&pair.left.ns, &pair.right.ns, dst, 3);
    assert!(tcp.bits_per_second > 0.0 && tcp.bytes > 0, "{tcp:?}");
    eprintln!(
        "tcp over mtu {MTU}: {:.0} Mbit/s",
        tcp.bits_per_second / 1e6
    );

    // Each 30000-byte datagram is 21 fragments on the underlay: losing any of them
    // loses it, so a busy machine (CI runs two suites at once on two cores) can lose a
    // tenth in one run. Jumbo datagrams that are not handled lose all. Up to three runs;
    // the best must stay under 5 %.
    let mut runs = Vec::new();
    for _ in 0..3 {
        let udp = iperf3_udp(&pair.left.ns, &pair.right.ns, dst, 3, 30000, "100M");
        let lost = udp.lost_percent.expect("udp report has loss");
        runs.push((lost, udp));
        if lost < 5.0 {
            break;
        }
        eprintln!("udp over mtu {MTU}: {lost}% lost, measuring again");
    }
    let (lost, udp) = runs
        .into_iter()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .expect("one run");
    // Jumbo messages and GSO batches all sealed: the hard drop for what cannot be
    // sealed never fired (and both counters are there).
    for d in [&pair.left.daemon, &pair.right.daemon] {
        let s = d.stats();
        assert_eq!(
            (s.get("tx_seal_dropped"), s.get("tx_batch_seal_dropped")),
            (Some(&0), Some(&0)),
            "{s:?}"
        );
    }
    assert!(udp.bits_per_second > 0.0 && udp.bytes > 0, "{udp:?}");
    assert!(lost < 5.0, "UDP loss {lost}% over mtu {MTU}: {udp:?}");
    eprintln!(
        "udp over mtu {MTU}: {:.0} Mbit/s, {lost}% lost",
        udp.bits_per_second / 1e6
    );
}
