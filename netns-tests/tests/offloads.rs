//! The same transfers with every offload forced off (`PD_OFFLOAD=off`: no virtio-net
//! header on the TUN fd, no UDP GSO/GRO), on the default `poll(2)` receive path and on
//! the io_uring one (`PD_IO=uring`), and proof from the
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
fn transfers_with_fast_paths_on_and_off() {
    // (PD_OFFLOAD, PD_IO, expected tun_vnet_hdr, tx_gso, io_uring)
    let configs = [
        (None, None, (1, 1, 0)),
        (None, Some("uring"), (1, 1, 1)),
        (Some("off"), None, (0, 0, 0)),
    ];
    for (offload, io, expected) in configs {
        // Each test file is its own process: these variables reach only our daemons.
        match offload {
            Some(v) => std::env::set_var("PD_OFFLOAD", v),
            None => std::env::remove_var("PD_OFFLOAD"),
        }
        match io {
            Some(v) => std::env::set_var("PD_IO", v),
            None => std::env::remove_var("PD_IO"),
        }
        let pair = Pair::new(&PairOptions::default());
        transfers(&pair);
        for side in [&pair.left, &pair.right] {
            let s = side.daemon.stats();
            let got = (s["tun_vnet_hdr"], s["tx_gso"], s["io_uring"]);
            assert_eq!(got, expected, "PD_OFFLOAD={offload:?} PD_IO={io:?}: {s:?}");
            assert_eq!(s["tx_offload_malformed"], 0, "{s:?}");
        }
    }
}
