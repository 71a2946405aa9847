//! (b) Interop: the implementation under test against wireguard-go and boringtun-cli,
//! each side initiating (only the initiator knows the other's endpoint), validated by
//! ping and 100 MiB TCP transfers in both directions with payload checksums.

use portdistrict_netns_tests::{
    assert_ping, tcp_transfer, Endpoints, Family, Implementation, Pair, PairOptions,
};

const MIB: u64 = 100;

fn interop(peer: Implementation, uut_initiates: bool) {
    let endpoints = if uut_initiates {
        Endpoints::LeftKnowsRight
    } else {
        Endpoints::RightKnowsLeft
    };
    let opts = PairOptions {
        left: Implementation::Uut,
        right: peer,
        endpoints,
        ..PairOptions::default()
    };
    let pair = Pair::new(&opts);
    let (init, resp) = if uut_initiates {
        (&pair.left, &pair.right)
    } else {
        (&pair.right, &pair.left)
    };

    assert_ping(&init.ns, resp.tunnel_addr(Family::V4), 5);
    // The responder learned the initiator's endpoint from the handshake.
    let learned = resp.daemon.dump().peer(&init.keys.public).endpoint.clone();
    let expected = pair.endpoint_of(init, Family::V4).to_string();
    assert_eq!(learned.as_deref(), Some(expected.as_str()));
    assert_ping(&resp.ns, init.tunnel_addr(Family::V6), 5);

    tcp_transfer(
        &pair.left.ns,
        &pair.right.ns,
        pair.right.tunnel_addr(Family::V4),
        5001,
        MIB,
        11,
    );
    tcp_transfer(
        &pair.right.ns,
        &pair.left.ns,
        pair.left.tunnel_addr(Family::V4),
        5002,
        MIB,
        12,
    );
}

#[test]
fn uut_initiates_to_wireguard_go() {
    interop(Implementation::WireguardGo, true);
}

#[test]
fn wireguard_go_initiates_to_uut() {
    interop(Implementation::WireguardGo, false);
}

#[test]
fn uut_initiates_to_boringtun() {
    interop(Implementation::Boringtun, true);
}

#[test]
fn boringtun_initiates_to_uut() {
    interop(Implementation::Boringtun, false);
}
