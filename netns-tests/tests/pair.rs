//! (a) Two implementations under test in separate namespaces: ping and TCP transfers
//! with payload checksums through the tunnel, over IPv4 and IPv6 inside, for each outer
//! transport family, with and without a preshared key.

use portdistrict_netns_tests::{assert_ping, tcp_transfer, Family, Pair, PairOptions};

fn uut_pair(outer: Family, psk: bool) {
    let pair = Pair::new(&PairOptions {
        outer,
        psk,
        ..PairOptions::default()
    });
    for family in Family::ALL {
        assert_ping(&pair.left.ns, pair.right.tunnel_addr(family), 5);
        assert_ping(&pair.right.ns, pair.left.tunnel_addr(family), 5);
    }
    let to_right = pair.right.tunnel_addr(Family::V4);
    tcp_transfer(&pair.left.ns, &pair.right.ns, to_right, 5001, 20, 1);
    let to_left = pair.left.tunnel_addr(Family::V6);
    tcp_transfer(&pair.right.ns, &pair.left.ns, to_left, 5002, 20, 2);

    // The traffic really used the requested underlay, and a session exists.
    let expected = pair.endpoint_of(&pair.right, outer).to_string();
    let dump = pair.left.daemon.dump();
    let peer = dump.peer(&pair.right.keys.public);
    assert_eq!(peer.endpoint.as_deref(), Some(expected.as_str()));
    assert!(
        peer.latest_handshake > 0 && peer.rx_bytes > 20 << 20,
        "{peer:?}"
    );
}

#[test]
fn outer_v4_without_psk() {
    uut_pair(Family::V4, false);
}

#[test]
fn outer_v4_with_psk() {
    uut_pair(Family::V4, true);
}

#[test]
fn outer_v6_without_psk() {
    uut_pair(Family::V6, false);
}

#[test]
fn outer_v6_with_psk() {
    uut_pair(Family::V6, true);
}
