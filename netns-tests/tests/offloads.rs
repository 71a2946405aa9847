//! The same transfers with every offload forced off (`PD_OFFLOAD=off`: no virtio-net
//! header on the TUN fd, no UDP GSO/GRO), on the default io_uring receive path and on
//! the `poll(2)` + `recvmmsg` one (`PD_IO=poll`, also the fallback where io_uring is
//! unavailable), with crypto forced onto worker threads
//! (`PD_CRYPTO_THREADS=2`) and onto the loop thread alone (`=1`), with and without the
//! AVX-512 group crypto (`PD_CRYPTO_GROUP=off`), and proof from the dataplane's own
//! counters that each run used the path it claims.
//!
//! Each test file is its own process, so the environment variable set here reaches
//! only the daemons this file starts.

use portdistrict_netns_tests::{
    assert_ping, iperf3_tcp, tcp_reordering, tcp_transfer, Family, Pair, PairOptions,
};

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
    // Every path (parallel crypto, batched reads, coalesced writes) keeps the packets
    // of a flow in order: the senders' TCP saw no reordering. (32 TUN reads in flight
    // on io_uring once reordered thousands of segments in a few seconds.)
    for side in [&pair.left, &pair.right] {
        let reordering = tcp_reordering(&side.ns);
        assert!(
            reordering.iter().all(|(_, n)| *n == 0),
            "TCP through the tunnel was reordered, seen from {}: {reordering:?}",
            side.ns.name()
        );
    }
}

/// One daemon configuration and what its counters must show afterwards.
struct Config {
    offload: Option<&'static str>,
    io: Option<&'static str>,
    crypto_threads: Option<&'static str>,
    /// `PD_CRYPTO_GROUP` (`off`: ring one message at a time, no AVX-512 group code).
    group: Option<&'static str>,
    /// (tun_vnet_hdr, tx_gso, io_uring)
    expected: (u64, u64, u64),
}

fn set_env(name: &str, value: Option<&str>) {
    match value {
        Some(v) => std::env::set_var(name, v),
        None => std::env::remove_var(name),
    }
}

#[test]
fn transfers_with_fast_paths_on_and_off() {
    let configs = [
        Config {
            offload: None,
            io: None,
            crypto_threads: None,
            group: None,
            expected: (1, 1, 1),
        },
        // Parallel crypto forced on, on both receive paths.
        Config {
            offload: None,
            io: None,
            crypto_threads: Some("2"),
            group: None,
            expected: (1, 1, 1),
        },
        Config {
            offload: None,
            io: Some("poll"),
            crypto_threads: Some("2"),
            group: None,
            expected: (1, 1, 0),
        },
        // Everything off: no offloads, the poll(2) loop, one crypto thread, no group
        // crypto.
        Config {
            offload: Some("off"),
            io: Some("poll"),
            crypto_threads: Some("1"),
            group: Some("off"),
            expected: (0, 0, 0),
        },
    ];
    for c in configs {
        // Each test file is its own process: these variables reach only our daemons.
        set_env("PD_OFFLOAD", c.offload);
        set_env("PD_IO", c.io);
        set_env("PD_CRYPTO_THREADS", c.crypto_threads);
        set_env("PD_CRYPTO_GROUP", c.group);
        let what = format!(
            "PD_OFFLOAD={:?} PD_IO={:?} PD_CRYPTO_THREADS={:?} PD_CRYPTO_GROUP={:?}",
            c.offload, c.io, c.crypto_threads, c.group
        );
        let pair = Pair::new(&PairOptions::default());
        transfers(&pair);
        for side in [&pair.left, &pair.right] {
            let s = side.daemon.stats();
            let got = (s["tun_vnet_hdr"], s["tx_gso"], s["io_uring"]);
            assert_eq!(got, c.expected, "{what}: {s:?}");
            assert_eq!(s["tx_offload_malformed"], 0, "{s:?}");
            assert!(s["crypto_jobs"] > 10_000, "{what}: {s:?}");
            // The AVX-512 group code (where the CPU has it) sealed and opened the bulk
            // of the transfers; turned off, it did nothing.
            if c.group == Some("off") {
                assert_eq!(
                    (s["crypto_group_code"], s["crypto_grouped"]),
                    (0, 0),
                    "{what}"
                );
            } else if s["crypto_group_code"] == 1 {
                assert!(s["crypto_grouped"] > 20_000, "{what}: {s:?}");
            } else {
                eprintln!("this CPU has no AVX-512 IFMA: the group code is not used");
            }
            match c.crypto_threads {
                // Forced on: workers sealed and opened part of the traffic.
                Some("2") => {
                    assert_eq!(
                        (s["crypto_threads"], s["crypto_parallel"]),
                        (2, 1),
                        "{what}: {s:?}"
                    );
                    assert!(s["crypto_worker_jobs"] > 0, "{what}: {s:?}");
                }
                Some("1") => {
                    assert_eq!(s["crypto_threads"], 1, "{what}: {s:?}");
                    assert_eq!(s["crypto_worker_jobs"], 0, "{what}: {s:?}");
                }
                _ => {}
            }
        }
    }
}
