//! The same transfers with every offload forced off (`PD_OFFLOAD=off`: no virtio-net
//! header on the TUN fd, no UDP GSO/GRO) as with them on, and proof from the
//! dataplane's own counters that each run used the path it claims.
//!
//! Each test file is its own process, so the environment variable set here reaches
//! only the daemons this file starts.

use portdistrict_netns_tests::{assert_ping, iperf3_tcp, tcp_transfer, Family, Pair, PairOptions};

fn transfers(pair: &Pair) {
    for family in Family::ALL {
        assert_ping(&pair.left.ns, pair.right.tunnel_addr(family), 3);
    }
    tcp_transfer(
        &pair.left.ns,
        &pair.right.ns,
        pair.right.tunnel_addr(Family::V4),
        5101,
        30,
        11,
    );
    tcp_transfer(
        &pair.right.ns,
        &pair.left.ns,
        pair.left.tunnel_addr(Family::V6),
        5102,
        30,
        12,
    );
    let r = iperf3_tcp(
        &pair.left.ns,
        &pair.right.ns,
        pair.right.tunnel_addr(Family::V4),
        2,
    );
    eprintln!(
        "iperf3 TCP through the tunnel: {:.0} Mbit/s",
        r.bits_per_second / 1e6
    );
    assert!(r.bytes > 0);
}

#[test]
fn transfers_with_offloads_on_and_off() {
    // On (the default).
    let pair = Pair::new(&PairOptions::default());
    transfers(&pair);
    let s = pair.right.daemon.stats();
    assert_eq!(
        (s["tun_vnet_hdr"], s["tx_gso"]),
        (1, 1),
        "offloads should be on: {s:?}"
    );
    assert_eq!(s["tx_offload_malformed"], 0, "{s:?}");
    drop(pair);

    // Off.
    std::env::set_var("PD_OFFLOAD", "off");
    let pair = Pair::new(&PairOptions::default());
    transfers(&pair);
    let s = pair.right.daemon.stats();
    assert_eq!(
        (s["tun_vnet_hdr"], s["tx_gso"]),
        (0, 0),
        "offloads should be off: {s:?}"
    );
}
